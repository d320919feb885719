package shardmap

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// Commands: the only way the replicated map changes. Each is a typed,
// versioned envelope that travels through the Raft log as JSON:
//
//	{"v":1,"type":"add_shard","data":{"name":"s1","primary":"postgres://…","vnodes":16}}
//
// Map.Apply is deterministic: its result depends only on the map and the
// command (no clock, no randomness, no map iteration), so every member that
// applies the same log holds byte-identical maps.

// CommandVersion is the envelope version this code writes and applies.
// A change to the meaning or the fields of any command needs a new version
// (and, during a rolling upgrade, a leader that writes the old one).
const CommandVersion = 1

// CommandType names a command.
type CommandType string

// Command types.
const (
	CmdAddShard      CommandType = "add_shard"
	CmdRemoveShard   CommandType = "remove_shard"
	CmdSetRing       CommandType = "set_ring"
	CmdSetEndpoints  CommandType = "set_endpoints"
	CmdSetShardState CommandType = "set_shard_state"
	CmdAddTable      CommandType = "add_table"
	CmdRemoveTable   CommandType = "remove_table"
	CmdPutJob        CommandType = "put_job"
	CmdDeleteJob     CommandType = "delete_job"
	CmdDecideTxn     CommandType = "decide_txn"
	CmdForgetTxn     CommandType = "forget_txn"
	CmdSync          CommandType = "sync"
	CmdSeed          CommandType = "seed"
)

func knownCommand(t CommandType) bool {
	switch t {
	case CmdAddShard, CmdRemoveShard, CmdSetRing, CmdSetEndpoints, CmdSetShardState,
		CmdAddTable, CmdRemoveTable, CmdPutJob, CmdDeleteJob, CmdDecideTxn, CmdForgetTxn, CmdSync, CmdSeed:
		return true
	}
	return false
}

// Command is one change to the map. Build it with a constructor (AddShard,
// SetRing, …) or decode it with DecodeCommand; apply it with Map.Apply or
// Store.Apply.
type Command struct {
	V    int             `json:"v"`
	Type CommandType     `json:"type"`
	Data json.RawMessage `json:"data"`

	err error // a constructor could not encode its data
}

type addShardData struct {
	Name     string   `json:"name"`
	Primary  string   `json:"primary"`
	Replicas []string `json:"replicas,omitempty"`
	Vnodes   int      `json:"vnodes,omitempty"`
	Spare    bool     `json:"spare,omitempty"`
}

type nameData struct {
	Name string `json:"name"`
}

type setRingData struct {
	Tokens        []tokenJSON `json:"tokens"`
	IfRingVersion uint64      `json:"if_ring_version"`
}

type setEndpointsData struct {
	Name     string   `json:"name"`
	Primary  string   `json:"primary"`
	Replicas []string `json:"replicas,omitempty"`
}

type setShardStateData struct {
	Name  string     `json:"name"`
	State ShardState `json:"state"`
}

type putJobData struct {
	Job       Job    `json:"job"`
	IfUpdated uint64 `json:"if_updated,omitempty"`
}

type jobIDData struct {
	ID string `json:"id"`
}

type seedData struct {
	Shards []addShardData `json:"shards"`
}

type nodeData struct {
	Node string `json:"node"`
}

func newCommand(t CommandType, data any) Command {
	b, err := json.Marshal(data)
	if err != nil {
		return Command{V: CommandVersion, Type: t, err: fmt.Errorf("encode %s: %w: %w", t, ErrInvalidCommand, err)}
	}
	return Command{V: CommandVersion, Type: t, Data: b}
}

// Sync changes nothing but the map's version: a node that applied the
// map it produced has applied everything the cluster committed before it
// was written (a read through the log). node names who asked, for the
// log's reader.
func Sync(node string) Command {
	return newCommand(CmdSync, nodeData{Node: node})
}

// AddShard registers shard s and places it on the ring with vnodes tokens
// (0 means DefaultVnodes): the first placed shard gets InitialRing, later
// ones take 1/(N+1) of the hash space through Ring.AddShard. Its state
// becomes active; s.State is ignored. Rejected with ErrShardExists when the
// name is taken.
//
// Placing a shard that holds no data yet is only right for an empty
// cluster or for tests: data on the shards it takes ranges from is not
// moved. Online growth registers the shard with AddSpareShard and lets a
// reshard job move the data and commit the ring with SetRing.
func AddShard(s Shard, vnodes int) Command {
	return newCommand(CmdAddShard, addShardData{Name: s.Name, Primary: s.Primary, Replicas: s.Replicas, Vnodes: vnodes})
}

// Seed places shards on an empty map in one entry, as AddShard one after
// the other would (vnodes each, 0 meaning DefaultVnodes), so that no node
// ever routes by a map holding only some of them. Rejected with
// ErrShardExists when the map has a shard already.
func Seed(shards []Shard, vnodes int) Command {
	d := seedData{}
	for _, s := range shards {
		d.Shards = append(d.Shards, addShardData{Name: s.Name, Primary: s.Primary, Replicas: s.Replicas, Vnodes: vnodes})
	}
	return newCommand(CmdSeed, d)
}

// AddSpareShard registers shard s in state joining without placing it on
// the ring: it owns nothing until a SetRing gives it ranges.
func AddSpareShard(s Shard) Command {
	return newCommand(CmdAddShard, addShardData{Name: s.Name, Primary: s.Primary, Replicas: s.Replicas, Spare: true})
}

// RemoveShard unregisters a shard. It is rejected with ErrShardOnRing while
// the shard owns ranges: a reshard job must move them first (and commit a
// ring without it via SetRing).
func RemoveShard(name string) Command {
	return newCommand(CmdRemoveShard, nameData{Name: name})
}

// SetRing replaces the ring with r, if the map's RingVersion still equals
// ifRingVersion (the version r was planned against); otherwise it is
// rejected with ErrStaleVersion. Every owner on r must be a registered
// shard. This is how a reshard job commits its cut-over.
func SetRing(r *Ring, ifRingVersion uint64) Command {
	return newCommand(CmdSetRing, setRingData{Tokens: tokensJSON(r), IfRingVersion: ifRingVersion})
}

// SetEndpoints replaces a shard's primary and replica DSNs.
func SetEndpoints(name, primary string, replicas []string) Command {
	return newCommand(CmdSetEndpoints, setEndpointsData{Name: name, Primary: primary, Replicas: replicas})
}

// SetShardState changes a shard's state.
func SetShardState(name string, state ShardState) Command {
	return newCommand(CmdSetShardState, setShardStateData{Name: name, State: state})
}

// AddTable defines a table. A sharded table without KeyColumn gets
// DefaultKeyColumn, and without KeyType gets KeyInt. Kind defaults to
// sharded.
func AddTable(t Table) Command {
	return newCommand(CmdAddTable, normalizeTable(t))
}

// RemoveTable drops a table's definition (not its data).
func RemoveTable(name string) Command {
	return newCommand(CmdRemoveTable, nameData{Name: name})
}

// PutJob creates or replaces a reshard job. With ifUpdated != 0 the job
// must exist with Updated == ifUpdated (ErrStaleVersion otherwise), so two
// writers cannot overwrite each other's checkpoints unknowingly.
func PutJob(j Job, ifUpdated uint64) Command {
	j.Updated = 0
	return newCommand(CmdPutJob, putJobData{Job: j, IfUpdated: ifUpdated})
}

// DeleteJob removes a reshard job.
func DeleteJob(id string) Command {
	return newCommand(CmdDeleteJob, jobIDData{ID: id})
}

// Encode returns the command's log entry.
func (c Command) Encode() ([]byte, error) {
	if c.err != nil {
		return nil, c.err
	}
	return json.Marshal(c)
}

// DecodeCommand decodes a log entry written by Encode. It checks only the
// envelope; Map.Apply validates the data.
func DecodeCommand(b []byte) (Command, error) {
	var c Command
	if err := strictUnmarshal(b, &c); err != nil {
		return Command{}, fmt.Errorf("decode command: %w: %w", ErrInvalidCommand, err)
	}
	if c.V != CommandVersion {
		return Command{}, fmt.Errorf("decode command %s: version %d (this node applies %d): %w", c.Type, c.V, CommandVersion, ErrUnsupportedCommand)
	}
	return c, nil
}

func (c Command) String() string { return string(c.Type) }

// strictUnmarshal decodes exactly one JSON value with no unknown fields: a
// field this version does not know means the command is not for it.
func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data after JSON value")
	}
	return nil
}

// Apply returns the map that results from cmd, with Version one higher, or
// an error (and no change) when the command is rejected. m is not modified.
// Apply is deterministic.
func (m *Map) Apply(cmd Command) (*Map, error) {
	if cmd.err != nil {
		return nil, cmd.err
	}
	if m == nil {
		m = &Map{}
	}
	if cmd.V != CommandVersion {
		return nil, fmt.Errorf("apply %s: version %d: %w", cmd.Type, cmd.V, ErrUnsupportedCommand)
	}
	var (
		next *Map
		err  error
	)
	switch cmd.Type {
	case CmdAddShard:
		var d addShardData
		if err = decodeData(cmd, &d); err == nil {
			next, err = m.addShard(d)
		}
	case CmdRemoveShard:
		var d nameData
		if err = decodeData(cmd, &d); err == nil {
			next, err = m.removeShard(d.Name)
		}
	case CmdSetRing:
		var d setRingData
		if err = decodeData(cmd, &d); err == nil {
			next, err = m.setRing(d)
		}
	case CmdSetEndpoints:
		var d setEndpointsData
		if err = decodeData(cmd, &d); err == nil {
			next, err = m.setEndpoints(d)
		}
	case CmdSetShardState:
		var d setShardStateData
		if err = decodeData(cmd, &d); err == nil {
			next, err = m.setShardState(d)
		}
	case CmdAddTable:
		var d Table
		if err = decodeData(cmd, &d); err == nil {
			next, err = m.addTable(d)
		}
	case CmdRemoveTable:
		var d nameData
		if err = decodeData(cmd, &d); err == nil {
			next, err = m.removeTable(d.Name)
		}
	case CmdPutJob:
		var d putJobData
		if err = decodeData(cmd, &d); err == nil {
			next, err = m.putJob(d)
		}
	case CmdDeleteJob:
		var d jobIDData
		if err = decodeData(cmd, &d); err == nil {
			next, err = m.deleteJob(d.ID)
		}
	case CmdDecideTxn:
		var d decideTxnData
		if err = decodeData(cmd, &d); err == nil {
			next, err = m.decideTxn(d)
		}
	case CmdForgetTxn:
		var d gidData
		if err = decodeData(cmd, &d); err == nil {
			next, err = m.forgetTxn(d.GID)
		}
	case CmdSeed:
		var d seedData
		if err = decodeData(cmd, &d); err == nil {
			next, err = m.seed(d)
		}
	case CmdSync:
		var d nodeData
		if err = decodeData(cmd, &d); err == nil {
			next = m.with()
		}
	default:
		return nil, fmt.Errorf("apply: command type %q: %w", cmd.Type, ErrUnsupportedCommand)
	}
	if err != nil {
		return nil, fmt.Errorf("apply %s: %w", cmd.Type, err)
	}
	next.version = m.Version() + 1
	return next, nil
}

func decodeData(cmd Command, v any) error {
	if err := strictUnmarshal(cmd.Data, v); err != nil {
		return fmt.Errorf("data: %w: %w", ErrInvalidCommand, err)
	}
	return nil
}

// checkName accepts names of shards, tables and jobs: 1 to 128 printable
// ASCII characters other than space.
func checkName(kind, name string) error {
	if name == "" {
		return fmt.Errorf("empty %s name: %w", kind, ErrInvalidCommand)
	}
	if len(name) > 128 {
		return fmt.Errorf("%s name longer than 128 bytes: %w", kind, ErrInvalidCommand)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("%s name %q: only printable ASCII without spaces: %w", kind, name, ErrInvalidCommand)
		}
	}
	return nil
}

func checkEndpoints(name, primary string, replicas []string) error {
	if strings.TrimSpace(primary) == "" {
		return fmt.Errorf("shard %q: empty primary DSN: %w", name, ErrInvalidCommand)
	}
	for i, r := range replicas {
		if strings.TrimSpace(r) == "" {
			return fmt.Errorf("shard %q: empty replica DSN: %w", name, ErrInvalidCommand)
		}
		if r == primary || slices.Contains(replicas[:i], r) {
			return fmt.Errorf("shard %q: DSN %q listed twice: %w", name, r, ErrInvalidCommand)
		}
	}
	return nil
}

func checkShard(s Shard) error {
	if err := checkName("shard", s.Name); err != nil {
		return err
	}
	if err := checkEndpoints(s.Name, s.Primary, s.Replicas); err != nil {
		return err
	}
	if !s.State.valid() {
		return fmt.Errorf("shard %q: state %q: %w", s.Name, s.State, ErrInvalidCommand)
	}
	return nil
}

// NormalizeTable returns t as AddTable stores it: kind sharded when
// empty; for a sharded table, key column DefaultKeyColumn and key type
// KeyInt when empty. Compare a definition with a stored one through it.
func NormalizeTable(t Table) Table { return normalizeTable(t) }

func normalizeTable(t Table) Table {
	if t.Kind == "" {
		t.Kind = TableSharded
	}
	if t.Kind == TableSharded {
		if t.KeyColumn == "" {
			t.KeyColumn = DefaultKeyColumn
		}
		if t.KeyType == 0 {
			t.KeyType = KeyInt
		}
	}
	return t
}

func checkTable(t Table) error {
	if err := checkName("table", t.Name); err != nil {
		return err
	}
	switch t.Kind {
	case TableSharded:
		if t.KeyColumn == "" {
			return fmt.Errorf("table %q: empty key column: %w", t.Name, ErrInvalidCommand)
		}
		if t.KeyType < KeyInt || t.KeyType > KeyUUID {
			return fmt.Errorf("table %q: key type %d: %w", t.Name, int(t.KeyType), ErrInvalidCommand)
		}
		if t.KeyOrdinal < 0 || t.KeyOrdinal > 1600 {
			return fmt.Errorf("table %q: key ordinal %d: %w", t.Name, t.KeyOrdinal, ErrInvalidCommand)
		}
	case TableReference:
		if t.KeyColumn != "" || t.KeyType != 0 || t.KeyOrdinal != 0 {
			return fmt.Errorf("table %q: a reference table has no shard key: %w", t.Name, ErrInvalidCommand)
		}
	default:
		return fmt.Errorf("table %q: kind %q (want sharded or reference): %w", t.Name, t.Kind, ErrInvalidCommand)
	}
	return nil
}

// shardIndex returns the position of name in m.shards, or where it would go.
func (m *Map) shardIndex(name string) (int, bool) {
	return slices.BinarySearchFunc(m.shards, name, func(s Shard, n string) int { return strings.Compare(s.Name, n) })
}

func (m *Map) addShard(d addShardData) (*Map, error) {
	s := Shard{Name: d.Name, Primary: d.Primary, Replicas: nilIfEmpty(slices.Clone(d.Replicas)), State: ShardActive}
	if d.Spare {
		s.State = ShardJoining
	}
	if err := checkShard(s); err != nil {
		return nil, err
	}
	i, found := m.shardIndex(s.Name)
	if found {
		return nil, fmt.Errorf("shard %q: %w", s.Name, ErrShardExists)
	}
	next := m.with()
	next.shards = slices.Insert(slices.Clone(m.shards), i, s)
	if d.Spare {
		if d.Vnodes != 0 {
			return nil, fmt.Errorf("shard %q: a spare shard takes no vnodes: %w", s.Name, ErrInvalidCommand)
		}
		return next, nil
	}
	vnodes := d.Vnodes
	if vnodes == 0 {
		vnodes = DefaultVnodes
	}
	if vnodes < 1 || vnodes > MaxVnodes {
		return nil, fmt.Errorf("shard %q: vnodes %d not in [1, %d]: %w", s.Name, vnodes, MaxVnodes, ErrInvalidCommand)
	}
	if m.Ring() == nil {
		next.ring = InitialRing(s.Name, vnodes)
	} else {
		r, err := m.ring.AddShard(s.Name, vnodes)
		if err != nil {
			return nil, fmt.Errorf("place shard %q: %w", s.Name, err)
		}
		next.ring = r
	}
	next.ringVersion = m.Version() + 1
	return next, nil
}

func (m *Map) seed(d seedData) (*Map, error) {
	if len(m.shards) > 0 {
		return nil, fmt.Errorf("seed: the map has shards already: %w", ErrShardExists)
	}
	if len(d.Shards) == 0 {
		return nil, fmt.Errorf("seed: no shards: %w", ErrInvalidCommand)
	}
	next := m
	for _, sh := range d.Shards {
		if sh.Spare {
			return nil, fmt.Errorf("seed: shard %q: a seeded shard is placed on the ring: %w", sh.Name, ErrInvalidCommand)
		}
		n, err := next.addShard(sh)
		if err != nil {
			return nil, err
		}
		next = n
	}
	return next, nil
}

func (m *Map) removeShard(name string) (*Map, error) {
	i, found := m.shardIndex(name)
	if !found {
		return nil, fmt.Errorf("shard %q: %w", name, ErrUnknownShard)
	}
	if r := m.Ring(); r != nil {
		if n := len(r.Ranges(name)); n > 0 {
			return nil, fmt.Errorf("shard %q owns %d ranges; move them to other shards with a reshard job first: %w", name, n, ErrShardOnRing)
		}
	}
	next := m.with()
	next.shards = slices.Delete(slices.Clone(m.shards), i, i+1)
	return next, nil
}

func (m *Map) setRing(d setRingData) (*Map, error) {
	if d.IfRingVersion != m.RingVersion() {
		return nil, fmt.Errorf("ring planned at ring version %d, map is at %d: %w", d.IfRingVersion, m.RingVersion(), ErrStaleVersion)
	}
	if len(d.Tokens) == 0 {
		return nil, fmt.Errorf("no tokens: %w", ErrInvalidCommand)
	}
	r, err := ringFromJSON(d.Tokens)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidCommand, err)
	}
	for _, name := range r.shards {
		if _, ok := m.shardIndex(name); !ok {
			return nil, fmt.Errorf("ring owner %q: %w", name, ErrUnknownShard)
		}
	}
	next := m.with()
	next.ring = r
	next.ringVersion = m.Version() + 1
	return next, nil
}

// withShard returns a copy of m with shard i replaced by s.
func (m *Map) withShard(i int, s Shard) *Map {
	next := m.with()
	next.shards = slices.Clone(m.shards)
	next.shards[i] = s
	return next
}

func (m *Map) setEndpoints(d setEndpointsData) (*Map, error) {
	i, found := m.shardIndex(d.Name)
	if !found {
		return nil, fmt.Errorf("shard %q: %w", d.Name, ErrUnknownShard)
	}
	s := m.shards[i].clone()
	s.Primary, s.Replicas = d.Primary, nilIfEmpty(slices.Clone(d.Replicas))
	if err := checkShard(s); err != nil {
		return nil, err
	}
	return m.withShard(i, s), nil
}

func (m *Map) setShardState(d setShardStateData) (*Map, error) {
	i, found := m.shardIndex(d.Name)
	if !found {
		return nil, fmt.Errorf("shard %q: %w", d.Name, ErrUnknownShard)
	}
	if !d.State.valid() {
		return nil, fmt.Errorf("shard %q: state %q (want active, joining or draining): %w", d.Name, d.State, ErrInvalidCommand)
	}
	s := m.shards[i].clone()
	s.State = d.State
	return m.withShard(i, s), nil
}

func (m *Map) addTable(t Table) (*Map, error) {
	t = normalizeTable(t)
	if err := checkTable(t); err != nil {
		return nil, err
	}
	i, found := slices.BinarySearchFunc(m.tables, t.Name, func(x Table, n string) int { return strings.Compare(x.Name, n) })
	if found {
		return nil, fmt.Errorf("table %q: %w", t.Name, ErrTableExists)
	}
	next := m.with()
	next.tables = slices.Insert(slices.Clone(m.tables), i, t)
	return next, nil
}

func (m *Map) removeTable(name string) (*Map, error) {
	i, found := slices.BinarySearchFunc(m.tables, name, func(x Table, n string) int { return strings.Compare(x.Name, n) })
	if !found {
		return nil, fmt.Errorf("table %q: %w", name, ErrUnknownTable)
	}
	next := m.with()
	next.tables = slices.Delete(slices.Clone(m.tables), i, i+1)
	return next, nil
}

func (m *Map) putJob(d putJobData) (*Map, error) {
	j := d.Job
	if err := checkName("job", j.ID); err != nil {
		return nil, err
	}
	if len(j.Data) > 0 {
		var buf bytes.Buffer
		if err := json.Compact(&buf, j.Data); err != nil {
			return nil, fmt.Errorf("job %q: data: %w: %w", j.ID, ErrInvalidCommand, err)
		}
		j.Data = buf.Bytes()
	} else {
		j.Data = nil
	}
	jobs := m.jobs
	i, found := slices.BinarySearchFunc(jobs, j.ID, func(x Job, n string) int { return strings.Compare(x.ID, n) })
	if d.IfUpdated != 0 {
		if !found {
			return nil, fmt.Errorf("job %q: %w", j.ID, ErrUnknownJob)
		}
		if jobs[i].Updated != d.IfUpdated {
			return nil, fmt.Errorf("job %q last written at version %d, not %d: %w", j.ID, jobs[i].Updated, d.IfUpdated, ErrStaleVersion)
		}
	}
	j.Updated = m.Version() + 1
	next := m.with()
	next.jobs = slices.Clone(jobs)
	if found {
		next.jobs[i] = j
	} else {
		next.jobs = slices.Insert(next.jobs, i, j)
	}
	return next, nil
}

func (m *Map) deleteJob(id string) (*Map, error) {
	jobs := m.jobs
	i, found := slices.BinarySearchFunc(jobs, id, func(x Job, n string) int { return strings.Compare(x.ID, n) })
	if !found {
		return nil, fmt.Errorf("job %q: %w", id, ErrUnknownJob)
	}
	next := m.with()
	next.jobs = slices.Delete(slices.Clone(jobs), i, i+1)
	return next, nil
}
