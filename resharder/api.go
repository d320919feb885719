package resharder

import (
	"context"
	"time"

	"github.com/pgshard/pgshard/shardmap"
)

// FencedCode is the SQLSTATE the fence raises on a source shard for a write
// to a range that moved (or is moving past its cut-over) to another shard.
// The proxy recognises it (shardmap.CodeFenced) and retries on the new owner.
const FencedCode = shardmap.CodeFenced

// Store is the replicated shard map as the resharder uses it: read the
// local copy, and apply commands through the leader.
type Store interface {
	Map() *shardmap.Map
	Apply(ctx context.Context, cmd shardmap.Command) (*shardmap.Map, error)
}

// Nodes reaches every pgshard node of the cluster.
type Nodes interface {
	// WaitApplied returns once every node's proxy routes by a map at
	// version or later, or fails (a node unreachable, ctx done).
	WaitApplied(ctx context.Context, version uint64) error
}

// Login is the superuser login the resharder uses on every shard primary
// (PostgreSQL 15 needs a superuser to create subscriptions), and the
// database whose tables it moves.
type Login struct {
	User     string `json:"user"`
	Password string `json:"password,omitempty"`
	Database string `json:"database"`
}

// Spec is what a job is asked to do: add one shard or remove one.
type Spec struct {
	Add      *NewShard `json:"add,omitempty"`
	Remove   string    `json:"remove,omitempty"`
	Database string    `json:"database,omitempty"` // default: the Login's
}

// NewShard is a shard to add: a primary with its streaming replicas, as
// libpq connection strings without user, password or database.
type NewShard struct {
	Name     string   `json:"name"`
	Primary  string   `json:"primary"`
	Replicas []string `json:"replicas,omitempty"`
}

// Plan is what a Spec would move, against the map at RingVersion.
type Plan struct {
	Spec        Spec               `json:"spec"`
	RingVersion uint64             `json:"ring_version"`
	Moves       []shardmap.Move    `json:"moves"`
	Tables      []TableMove        `json:"tables"`
	Ownership   map[string]float64 `json:"ownership"` // share of the ring per shard after the job
}

// TableMove is one table's rows moving from one shard to another, with
// estimates. Reference tables are copied whole to a new shard (From is the
// shard they are copied from).
type TableMove struct {
	Table string `json:"table"`
	Kind  string `json:"kind"` // sharded or reference
	From  string `json:"from"`
	To    string `json:"to"`
	Rows  int64  `json:"rows"`  // estimated rows to move
	Bytes int64  `json:"bytes"` // estimated bytes to move
}

// Status is where the job is.
type Status struct {
	ID         string          `json:"id"`
	Phase      string          `json:"phase"`
	Spec       Spec            `json:"spec"`
	Started    time.Time       `json:"started"`
	Updated    time.Time       `json:"updated"`
	Tables     []TableProgress `json:"tables"`
	LagBytes   int64           `json:"lag_bytes"` // largest replication lag of the job's subscriptions
	RowsPerSec float64         `json:"rows_per_sec"`
	ETA        time.Duration   `json:"eta"`
	Error      string          `json:"error,omitempty"` // last error the job met (it retries)
	Finished   bool            `json:"finished"`        // done or cancelled
	// Waiting says what the job waits for right now (known on the node
	// running it).
	Waiting string `json:"waiting,omitempty"`
	// Cutover is how long the moving ranges were frozen: from the commit
	// of the freeze to the commit of the new ring (0 until known).
	Cutover         time.Duration `json:"cutover,omitempty"`
	CutoverAttempts int           `json:"cutover_attempts,omitempty"`
	// Verified is the result of the count check at cut-over.
	Verified string `json:"verified,omitempty"`
}

// TableProgress is one TableMove's copy progress.
type TableProgress struct {
	TableMove
	Copied int64 `json:"copied"`
}
