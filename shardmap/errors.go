package shardmap

import (
	"errors"
	"fmt"
)

// Errors of the replicated map, its commands and its store. Test with
// errors.Is. A command that Apply rejects returns one of these (wrapped
// with the command and the name involved); ErrShardExists and
// ErrUnknownShard (ring.go) are also used for the shard registry.
var (
	// ErrNotLeader reports a write (Apply, AddVoter, …) sent to a node that
	// is not the Raft leader. The error is a *NotLeaderError that carries
	// the leader's ID and Raft address when one is known.
	ErrNotLeader = errors.New("shardmap: not the Raft leader")
	// ErrLeadershipLost reports that the leader lost its leadership while a
	// command was in flight: the command may or may not be applied; read
	// the map (or retry a command that is safe to repeat).
	ErrLeadershipLost = errors.New("shardmap: leadership lost while applying; outcome unknown")
	// ErrShardOnRing reports removing a shard that still owns ranges: move
	// them to other shards with a reshard job first.
	ErrShardOnRing = errors.New("shardmap: shard still owns ranges of the ring")
	// ErrTableExists reports adding a table that is already defined.
	ErrTableExists = errors.New("shardmap: table already defined")
	// ErrUnknownTable reports a table that is not defined.
	ErrUnknownTable = errors.New("shardmap: unknown table")
	// ErrUnknownJob reports a reshard job that does not exist.
	ErrUnknownJob = errors.New("shardmap: unknown reshard job")
	// ErrUnknownTxn reports forgetting a two-phase commit decision that is
	// not recorded.
	ErrUnknownTxn = errors.New("shardmap: no decision recorded for the transaction")
	// ErrTxnTableFull reports a two-phase commit decision refused because
	// the map already holds MaxTxnDecisions.
	ErrTxnTableFull = errors.New("shardmap: too many two-phase commit decisions recorded (is the recovery pass forgetting finished ones?)")
	// ErrInvalidCommand reports a command whose contents are not valid
	// (empty name, bad state, bad ring, invalid JSON data, …).
	ErrInvalidCommand = errors.New("shardmap: invalid command")
	// ErrUnsupportedCommand reports a command envelope with an unknown
	// version or type (e.g. written by a newer pgshard).
	ErrUnsupportedCommand = errors.New("shardmap: unsupported command")
	// ErrStaleVersion reports a conditional command (SetRing, PutJob with
	// ifUpdated) whose expected version no longer matches the map.
	ErrStaleVersion = errors.New("shardmap: map changed since the command was prepared")
	// ErrNoRing reports a lookup before any shard is placed on the ring.
	ErrNoRing = errors.New("shardmap: no shard on the ring yet")
	// ErrCorrupt reports stored state (snapshot, map encoding, Raft log
	// file) that cannot be read back.
	ErrCorrupt = errors.New("shardmap: corrupt state")
	// ErrNoState reports opening a store whose data directory holds no Raft
	// state (or does not exist) without Bootstrap or Join.
	ErrNoState = errors.New("shardmap: no Raft state")
	// ErrUnknownServer reports removing a server that is not in the Raft
	// configuration.
	ErrUnknownServer = errors.New("shardmap: unknown Raft server")
	// ErrClosed reports using a store that is not open.
	ErrClosed = errors.New("shardmap: store not open")
)

// NotLeaderError is the ErrNotLeader of a node that is not the leader. The
// leader fields are empty when no leader is known (e.g. during an election).
type NotLeaderError struct {
	LeaderID   string
	LeaderAddr string // Raft address of the leader
}

func (e *NotLeaderError) Error() string {
	if e.LeaderID == "" {
		return ErrNotLeader.Error() + " (no leader known)"
	}
	return fmt.Sprintf("%s (leader is %s at %s)", ErrNotLeader, e.LeaderID, e.LeaderAddr)
}

// Is makes errors.Is(err, ErrNotLeader) true.
func (e *NotLeaderError) Is(target error) bool { return target == ErrNotLeader }

// CodeFenced is the SQLSTATE a source shard's fence raises for a write to a
// key range that a reshard job is cutting over (or has cut over) to another
// shard: the writer's map is stale. The proxy holds the statement until its
// map moves the range and retries it on the new owner.
const CodeFenced = "PS001"
