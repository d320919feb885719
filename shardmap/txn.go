package shardmap

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Two-phase commit decisions. A coordinator that prepared a transaction on
// several shards records its outcome here (DecideTxn) before the first
// COMMIT PREPARED, so the decision outlives the coordinator: the leader's
// recovery pass reads it to finish what a crashed coordinator left
// prepared, and forgets it (ForgetTxn) once no shard holds the transaction.
//
// The first decision recorded for a gid wins: a later DecideTxn for the
// same gid is accepted (the map's Version grows, as for every accepted
// command) but keeps the recorded outcome, and its proposer reads that
// outcome from the map Apply returns. So a coordinator deciding commit and
// the recovery pass deciding rollback never both act on their own choice.

// MaxTxnDecisions bounds how many decisions the map holds. A decision for a
// new gid beyond it is refused with ErrTxnTableFull; deciding a gid already
// recorded, and forgetting, still work. Decisions are forgotten a grace
// period after their transaction is finished, so reaching the bound means
// the recovery pass is not running (or cannot reach a shard).
const MaxTxnDecisions = 100_000

// MaxGIDLen is the longest transaction identifier PostgreSQL accepts in
// PREPARE TRANSACTION (its GIDSIZE, 200 bytes, includes the terminating
// NUL).
const MaxGIDLen = 199

// TxnDecision is the recorded outcome of a prepared transaction.
type TxnDecision struct {
	GID    string `json:"gid"`
	Commit bool   `json:"commit"`
	// Version is the map Version of the command that recorded it.
	Version uint64 `json:"version"`
	// At is when the proposer decided, by its own clock (UTC, millisecond
	// precision). It is carried in the command, never read by Apply, so
	// every member records the same value.
	At time.Time `json:"at"`
}

// txnBuckets is the number of buckets of a txnTable.
const txnBuckets = 256

// txnTable is an immutable set of decisions, spread over buckets by a hash
// of the gid, each bucket sorted by gid. A change copies the bucket array
// and one bucket, not the whole table, so a map of many decisions still
// applies a decision cheaply (maps are copy-on-write).
type txnTable struct {
	n       int
	buckets [txnBuckets][]TxnDecision
}

// txnBucket is the bucket of gid: FNV-1a, so every member agrees.
func txnBucket(gid string) int {
	h := uint32(2166136261)
	for i := 0; i < len(gid); i++ {
		h ^= uint32(gid[i])
		h *= 16777619
	}
	return int(h % txnBuckets)
}

func cmpTxnGID(d TxnDecision, gid string) int { return strings.Compare(d.GID, gid) }

func (t *txnTable) len() int {
	if t == nil {
		return 0
	}
	return t.n
}

func (t *txnTable) get(gid string) (TxnDecision, bool) {
	if t == nil {
		return TxnDecision{}, false
	}
	b := t.buckets[txnBucket(gid)]
	i, ok := slices.BinarySearchFunc(b, gid, cmpTxnGID)
	if !ok {
		return TxnDecision{}, false
	}
	return b[i], true
}

// with returns a table that also holds d, whose gid t must not hold.
func (t *txnTable) with(d TxnDecision) *txnTable {
	next := &txnTable{}
	if t != nil {
		*next = *t
	}
	k := txnBucket(d.GID)
	i, _ := slices.BinarySearchFunc(next.buckets[k], d.GID, cmpTxnGID)
	next.buckets[k] = slices.Insert(slices.Clip(slices.Clone(next.buckets[k])), i, d)
	next.n++
	return next
}

// without returns a table without gid, which t must hold; nil when empty.
func (t *txnTable) without(gid string) *txnTable {
	if t.n == 1 {
		return nil
	}
	next := *t
	k := txnBucket(gid)
	i, _ := slices.BinarySearchFunc(next.buckets[k], gid, cmpTxnGID)
	next.buckets[k] = nilIfEmpty(slices.Delete(slices.Clone(next.buckets[k]), i, i+1))
	next.n--
	return &next
}

// all returns every decision sorted by gid, or nil.
func (t *txnTable) all() []TxnDecision {
	if t.len() == 0 {
		return nil
	}
	out := make([]TxnDecision, 0, t.n)
	for _, b := range t.buckets {
		out = append(out, b...)
	}
	slices.SortFunc(out, func(a, b TxnDecision) int { return strings.Compare(a.GID, b.GID) })
	return out
}

// newTxnTable builds a table from decisions sorted by gid (as all returns
// them), checking what Apply guarantees: valid, sorted, unique gids,
// recorded at or before the map's version.
func newTxnTable(ds []TxnDecision, version uint64) (*txnTable, error) {
	if len(ds) == 0 {
		return nil, nil
	}
	t := &txnTable{n: len(ds)}
	for i, d := range ds {
		if err := checkGID(d.GID); err != nil {
			return nil, err
		}
		if i > 0 && ds[i-1].GID >= d.GID {
			return nil, fmt.Errorf("transaction decisions not sorted/unique at %q", d.GID)
		}
		if d.Version == 0 || d.Version > version {
			return nil, fmt.Errorf("transaction %q decided at version %d, map is at %d", d.GID, d.Version, version)
		}
		k := txnBucket(d.GID)
		t.buckets[k] = append(t.buckets[k], d)
	}
	return t, nil
}

// checkGID accepts what the coordinator and PostgreSQL accept as a gid:
// 1 to MaxGIDLen printable ASCII characters other than space.
func checkGID(gid string) error {
	if gid == "" {
		return fmt.Errorf("empty transaction gid: %w", ErrInvalidCommand)
	}
	if len(gid) > MaxGIDLen {
		return fmt.Errorf("transaction gid longer than %d bytes: %w", MaxGIDLen, ErrInvalidCommand)
	}
	for i := 0; i < len(gid); i++ {
		if c := gid[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("transaction gid %q: only printable ASCII without spaces: %w", gid, ErrInvalidCommand)
		}
	}
	return nil
}

// TxnDecision returns the recorded outcome of the prepared transaction gid.
func (m *Map) TxnDecision(gid string) (TxnDecision, bool) {
	if m == nil {
		return TxnDecision{}, false
	}
	return m.txns.get(gid)
}

// TxnDecisions returns every recorded decision, sorted by gid.
func (m *Map) TxnDecisions() []TxnDecision {
	if m == nil {
		return nil
	}
	return m.txns.all()
}

// TxnCount returns how many decisions the map holds.
func (m *Map) TxnCount() int {
	if m == nil {
		return 0
	}
	return m.txns.len()
}

type decideTxnData struct {
	GID    string `json:"gid"`
	Commit bool   `json:"commit"`
	AtMs   int64  `json:"at_ms"`
}

type gidData struct {
	GID string `json:"gid"`
}

// DecideTxn records commit (true) or rollback for the prepared transaction
// gid, decided at time at (the proposer's clock; kept with millisecond
// precision), unless an outcome is already recorded: then the command is
// accepted and changes nothing but the Version, and the recorded outcome
// stands. Read the outcome from the returned map's TxnDecision. A decision
// for a new gid is refused with ErrTxnTableFull when the map holds
// MaxTxnDecisions.
func DecideTxn(gid string, commit bool, at time.Time) Command {
	return newCommand(CmdDecideTxn, decideTxnData{GID: gid, Commit: commit, AtMs: at.UnixMilli()})
}

// ForgetTxn drops gid's decision, once no shard holds the transaction
// prepared. It is rejected with ErrUnknownTxn when none is recorded.
func ForgetTxn(gid string) Command {
	return newCommand(CmdForgetTxn, gidData{GID: gid})
}

func (m *Map) decideTxn(d decideTxnData) (*Map, error) {
	if err := checkGID(d.GID); err != nil {
		return nil, err
	}
	if d.AtMs <= 0 {
		return nil, fmt.Errorf("transaction %q: no decision time: %w", d.GID, ErrInvalidCommand)
	}
	next := m.with()
	if _, ok := m.txns.get(d.GID); ok {
		return next, nil // the first decision stands
	}
	if n := m.txns.len(); n >= MaxTxnDecisions {
		return nil, fmt.Errorf("transaction %q: the map holds %d decisions, the most it keeps: %w", d.GID, n, ErrTxnTableFull)
	}
	next.txns = m.txns.with(TxnDecision{GID: d.GID, Commit: d.Commit, Version: m.Version() + 1, At: time.UnixMilli(d.AtMs).UTC()})
	return next, nil
}

func (m *Map) forgetTxn(gid string) (*Map, error) {
	if _, ok := m.txns.get(gid); !ok {
		return nil, fmt.Errorf("transaction %q: %w", gid, ErrUnknownTxn)
	}
	next := m.with()
	next.txns = m.txns.without(gid)
	return next, nil
}
