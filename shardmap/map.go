package shardmap

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// The replicated state: a pure, immutable value. Commands (command.go) turn
// one Map into the next; the Raft FSM (fsm.go) holds the current one.

// ShardState is the lifecycle state of a shard.
type ShardState string

// Shard states.
const (
	// ShardActive: serving its ranges (or ready to, when it owns none).
	ShardActive ShardState = "active"
	// ShardJoining: registered, being filled by a reshard job; owns no
	// ranges until the job commits a ring that gives it some.
	ShardJoining ShardState = "joining"
	// ShardDraining: its ranges are being moved away; removable once it
	// owns none.
	ShardDraining ShardState = "draining"
)

func (s ShardState) valid() bool {
	return s == ShardActive || s == ShardJoining || s == ShardDraining
}

// Shard is one PostgreSQL primary with its streaming replicas.
type Shard struct {
	Name     string     `json:"name"`
	Primary  string     `json:"primary"`            // DSN of the primary
	Replicas []string   `json:"replicas,omitempty"` // DSNs of the replicas, in the order given
	State    ShardState `json:"state"`
}

func (s Shard) clone() Shard {
	s.Replicas = slices.Clone(s.Replicas)
	return s
}

// TableKind says how a table's rows are placed.
type TableKind string

// Table kinds.
const (
	// TableSharded: each row lives on the shard that owns its key's hash.
	TableSharded TableKind = "sharded"
	// TableReference: every shard holds a full copy.
	TableReference TableKind = "reference"
)

// DefaultKeyColumn is the shard key column of a sharded table when none is
// given.
const DefaultKeyColumn = "user_id"

// Table is the definition of a sharded or reference table.
type Table struct {
	Name      string    `json:"name"` // as the router sees it, e.g. "orders" or "app.orders"
	Kind      TableKind `json:"kind"`
	KeyColumn string    `json:"key_column,omitempty"` // sharded only
	KeyType   KeyType   `json:"key_type,omitempty"`   // sharded only
	// KeyOrdinal is the key column's 1-based position among the table's
	// columns, for INSERT and COPY without a column list (0: unknown,
	// such statements are refused). Sharded only.
	KeyOrdinal int `json:"key_ordinal,omitempty"`
}

// Job is a reshard job as the map records it: its identity, the phase it
// reached and its checkpoints. The resharder defines Kind, the phases and the
// contents of Data; the map only stores them.
type Job struct {
	ID    string          `json:"id"`
	Kind  string          `json:"kind"`
	Phase string          `json:"phase"`
	Data  json.RawMessage `json:"data,omitempty"` // compact JSON, or empty
	// Moving are the ranges the job moves, set from the moment rows of
	// them may exist on a shard that does not own them (copies on a
	// target, moved rows not yet deleted from a source) until they are
	// gone. Scatter statements exclude, on every shard, the moving rows it
	// does not own on the current ring, so no row is counted twice.
	Moving []Range `json:"moving,omitempty"`
	// FrozenRing freezes the moving ranges while the map's RingVersion
	// equals it (0: not frozen): proxies hold statements on them, and
	// writes to reference tables, until the ring changes or the job
	// clears the freeze. This is the cut-over's pause.
	FrozenRing uint64 `json:"frozen_ring,omitempty"`
	// Updated is the map Version at which the job was last written. It is
	// set by Apply (any value given to PutJob is ignored) and lets a writer
	// make a conditional update (PutJob's ifUpdated).
	Updated uint64 `json:"updated"`
}

func (j Job) clone() Job {
	j.Data = slices.Clone(j.Data)
	j.Moving = slices.Clone(j.Moving)
	return j
}

// Map is the whole replicated state: shards, the ring, tables, reshard
// jobs and two-phase commit decisions, at a version. A *Map is never
// modified after it is built (Apply returns a new one), so it can be shared
// and read concurrently without locks. Accessors return copies of slices. The zero Map (and a nil *Map) is
// the empty map at version 0.
type Map struct {
	version     uint64
	ringVersion uint64
	shards      []Shard   // sorted by name
	ring        *Ring     // nil until a shard is placed
	tables      []Table   // sorted by name
	jobs        []Job     // sorted by ID
	txns        *txnTable // two-phase commit decisions (txn.go); nil when none
}

// Version counts the accepted commands: every command that Apply accepts
// yields a map whose Version is exactly one more; a rejected command changes
// nothing. Two maps of the same cluster with the same Version are identical,
// and a node whose Version is lower is behind.
func (m *Map) Version() uint64 {
	if m == nil {
		return 0
	}
	return m.version
}

// RingVersion is the Version of the command that last changed the ring (0
// while there is none). Routing decisions depend only on the ring, so a
// proxy can compare ring versions to know whether its placement is stale;
// SetRing takes the ring version it was planned against.
func (m *Map) RingVersion() uint64 {
	if m == nil {
		return 0
	}
	return m.ringVersion
}

// Ring returns the ring, or nil when no shard has been placed yet.
func (m *Map) Ring() *Ring {
	if m == nil {
		return nil
	}
	return m.ring
}

// Shards returns all shards, sorted by name.
func (m *Map) Shards() []Shard {
	if m == nil || len(m.shards) == 0 {
		return nil
	}
	out := make([]Shard, len(m.shards))
	for i, s := range m.shards {
		out[i] = s.clone()
	}
	return out
}

// Shard returns the named shard.
func (m *Map) Shard(name string) (Shard, bool) {
	if m == nil {
		return Shard{}, false
	}
	i, ok := slices.BinarySearchFunc(m.shards, name, func(s Shard, n string) int { return strings.Compare(s.Name, n) })
	if !ok {
		return Shard{}, false
	}
	return m.shards[i].clone(), true
}

// Tables returns all table definitions, sorted by name.
func (m *Map) Tables() []Table {
	if m == nil {
		return nil
	}
	return slices.Clone(m.tables)
}

// Table returns the named table's definition.
func (m *Map) Table(name string) (Table, bool) {
	if m == nil {
		return Table{}, false
	}
	i, ok := slices.BinarySearchFunc(m.tables, name, func(t Table, n string) int { return strings.Compare(t.Name, n) })
	if !ok {
		return Table{}, false
	}
	return m.tables[i], true
}

// Jobs returns all reshard jobs, sorted by ID.
func (m *Map) Jobs() []Job {
	if m == nil || len(m.jobs) == 0 {
		return nil
	}
	out := make([]Job, len(m.jobs))
	for i, j := range m.jobs {
		out[i] = j.clone()
	}
	return out
}

// Job returns the reshard job with the given ID.
func (m *Map) Job(id string) (Job, bool) {
	if m == nil {
		return Job{}, false
	}
	i, ok := slices.BinarySearchFunc(m.jobs, id, func(j Job, n string) int { return strings.Compare(j.ID, n) })
	if !ok {
		return Job{}, false
	}
	return m.jobs[i].clone(), true
}

// Moving returns the ranges all jobs are moving (Job.Moving), or nil.
func (m *Map) Moving() []Range {
	if m == nil {
		return nil
	}
	var out []Range
	for _, j := range m.jobs {
		out = append(out, j.Moving...)
	}
	return out
}

// Frozen returns the moving ranges of the jobs whose freeze is in force
// (Job.FrozenRing equal to the map's RingVersion), or nil.
func (m *Map) Frozen() []Range {
	if m == nil {
		return nil
	}
	var out []Range
	for _, j := range m.jobs {
		if j.FrozenRing != 0 && j.FrozenRing == m.ringVersion {
			out = append(out, j.Moving...)
		}
	}
	return out
}

// Locate parses key as the text form of a value of type t and returns its
// hash, the ring range holding that hash, and the shard owning the range.
// It fails with ErrNoRing before any shard is placed, and with
// ErrInvalidKey / ErrUnknownKeyType for a bad key or type.
func (m *Map) Locate(t KeyType, key string) (hash int64, rng Range, shard string, err error) {
	hash, err = HashKey(t, key)
	if err != nil {
		return 0, Range{}, "", fmt.Errorf("locate: %w", err)
	}
	r := m.Ring()
	if r == nil {
		return hash, Range{}, "", fmt.Errorf("locate %q: %w", key, ErrNoRing)
	}
	i := ringIndex(r, hash)
	return hash, r.rangeAt(i), r.owner[i], nil
}

// ringIndex is the index of the token owning hash (Lookup's search).
func ringIndex(r *Ring, hash int64) int {
	i, _ := slices.BinarySearch(r.pos, hash)
	if i == len(r.pos) {
		i = 0
	}
	return i
}

// with returns a shallow copy of m, the start of a copy-on-write change.
// Slices are shared with m until the caller replaces them.
func (m *Map) with() *Map {
	if m == nil {
		return &Map{}
	}
	c := *m
	return &c
}

// MarshalText encodes a KeyType as "int", "text" or "uuid".
func (t KeyType) MarshalText() ([]byte, error) {
	switch t {
	case KeyInt:
		return []byte("int"), nil
	case KeyText:
		return []byte("text"), nil
	case KeyUUID:
		return []byte("uuid"), nil
	}
	return nil, fmt.Errorf("marshal key type %d: %w", int(t), ErrUnknownKeyType)
}

// UnmarshalText accepts what ParseKeyType accepts ("int", "bigint", "text",
// "uuid", …).
func (t *KeyType) UnmarshalText(b []byte) error {
	k, err := ParseKeyType(string(b))
	if err != nil {
		return err
	}
	*t = k
	return nil
}

// MapFormat is the version of the JSON encoding of a Map (snapshots and the
// admin API). Decoding refuses other versions.
const MapFormat = 1

// mapJSON is the wire form of a Map. Field order and sorted slices make the
// encoding of a map deterministic: equal maps encode to equal bytes.
type mapJSON struct {
	Format      int         `json:"format"`
	Version     uint64      `json:"version"`
	RingVersion uint64      `json:"ring_version"`
	Shards      []Shard     `json:"shards"`
	Ring        []tokenJSON `json:"ring"`
	Tables      []Table     `json:"tables"`
	Jobs        []Job       `json:"jobs"`
	// Txns is left out when empty, so a map without decisions encodes
	// as before they existed.
	Txns []TxnDecision `json:"txns,omitempty"`
}

type tokenJSON struct {
	Pos   int64  `json:"pos"`
	Shard string `json:"shard"`
}

func tokensJSON(r *Ring) []tokenJSON {
	if r == nil {
		return []tokenJSON{}
	}
	out := make([]tokenJSON, len(r.pos))
	for i := range r.pos {
		out[i] = tokenJSON{r.pos[i], r.owner[i]}
	}
	return out
}

func ringFromJSON(ts []tokenJSON) (*Ring, error) {
	if len(ts) == 0 {
		return nil, nil
	}
	tokens := make([]Token, len(ts))
	for i, t := range ts {
		tokens[i] = Token{Pos: t.Pos, Shard: t.Shard}
	}
	return NewRing(tokens)
}

// MarshalJSON encodes the map with its format version. The ring is stored
// as its tokens, so decoding never recomputes placement.
func (m *Map) MarshalJSON() ([]byte, error) {
	if m == nil {
		m = &Map{}
	}
	j := mapJSON{
		Format:      MapFormat,
		Version:     m.version,
		RingVersion: m.ringVersion,
		Shards:      m.shards,
		Ring:        tokensJSON(m.ring),
		Tables:      m.tables,
		Jobs:        m.jobs,
		Txns:        m.txns.all(),
	}
	if j.Shards == nil {
		j.Shards = []Shard{}
	}
	if j.Tables == nil {
		j.Tables = []Table{}
	}
	if j.Jobs == nil {
		j.Jobs = []Job{}
	}
	return json.Marshal(j)
}

// UnmarshalJSON decodes and validates a map encoded by MarshalJSON. It
// replaces the receiver's contents; use it only on a new Map (maps are
// otherwise immutable).
func (m *Map) UnmarshalJSON(b []byte) error {
	nm, err := DecodeMap(b)
	if err != nil {
		return err
	}
	*m = *nm
	return nil
}

// DecodeMap decodes and validates a map encoded by MarshalJSON: the format
// version, sorted and unique names, valid states, a valid ring whose owners
// are all registered shards. Errors wrap ErrCorrupt.
func DecodeMap(b []byte) (*Map, error) {
	var j mapJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return nil, fmt.Errorf("decode map: %w: %w", ErrCorrupt, err)
	}
	if j.Format != MapFormat {
		return nil, fmt.Errorf("decode map: format %d, want %d: %w", j.Format, MapFormat, ErrCorrupt)
	}
	ring, err := ringFromJSON(j.Ring)
	if err != nil {
		return nil, fmt.Errorf("decode map: %w: %w", ErrCorrupt, err)
	}
	m := &Map{
		version:     j.Version,
		ringVersion: j.RingVersion,
		shards:      nilIfEmpty(j.Shards),
		ring:        ring,
		tables:      nilIfEmpty(j.Tables),
		jobs:        nilIfEmpty(j.Jobs),
	}
	if m.txns, err = newTxnTable(j.Txns, m.version); err != nil {
		return nil, fmt.Errorf("decode map: %w: %w", ErrCorrupt, err)
	}
	if err := m.check(); err != nil {
		return nil, fmt.Errorf("decode map: %w: %w", ErrCorrupt, err)
	}
	return m, nil
}

func nilIfEmpty[T any](s []T) []T {
	if len(s) == 0 {
		return nil
	}
	return s
}

// check verifies the invariants every Map produced by Apply holds.
func (m *Map) check() error {
	for i, s := range m.shards {
		if err := checkShard(s); err != nil {
			return err
		}
		if i > 0 && m.shards[i-1].Name >= s.Name {
			return fmt.Errorf("shards not sorted/unique at %q", s.Name)
		}
	}
	if m.ring != nil {
		for _, name := range m.ring.shards {
			if _, ok := m.Shard(name); !ok {
				return fmt.Errorf("ring owner %q is not a registered shard", name)
			}
		}
	}
	if m.ringVersion > m.version {
		return fmt.Errorf("ring version %d above version %d", m.ringVersion, m.version)
	}
	for i, t := range m.tables {
		if err := checkTable(t); err != nil {
			return err
		}
		if i > 0 && m.tables[i-1].Name >= t.Name {
			return fmt.Errorf("tables not sorted/unique at %q", t.Name)
		}
	}
	for i, j := range m.jobs {
		if j.ID == "" {
			return errors.New("job with an empty ID")
		}
		if i > 0 && m.jobs[i-1].ID >= j.ID {
			return fmt.Errorf("jobs not sorted/unique at %q", j.ID)
		}
	}
	return nil
}
