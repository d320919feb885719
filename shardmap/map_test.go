package shardmap

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

// apply applies cmds in order and fails the test on any rejection.
func apply(t *testing.T, m *Map, cmds ...Command) *Map {
	t.Helper()
	for _, c := range cmds {
		next, err := m.Apply(c)
		if err != nil {
			t.Fatalf("apply %s: %v", c.Type, err)
		}
		if next.Version() != m.Version()+1 {
			t.Fatalf("apply %s: version %d after %d", c.Type, next.Version(), m.Version())
		}
		m = next
	}
	return m
}

// reject applies cmd expecting a rejection wrapping want, and checks that m
// is unchanged.
func reject(t *testing.T, m *Map, cmd Command, want error) {
	t.Helper()
	before := mustJSON(t, m)
	next, err := m.Apply(cmd)
	if !errors.Is(err, want) {
		t.Fatalf("apply %s: got (%v, %v), want error %v", cmd.Type, next, err, want)
	}
	if next != nil {
		t.Fatalf("apply %s: rejected command returned a map", cmd.Type)
	}
	if !bytes.Equal(before, mustJSON(t, m)) {
		t.Fatalf("apply %s: rejected command changed the map", cmd.Type)
	}
}

func mustJSON(t *testing.T, m *Map) []byte {
	t.Helper()
	b, err := m.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func shard(name string) Shard {
	return Shard{Name: name, Primary: "postgres://" + name + "-p/app", Replicas: []string{"postgres://" + name + "-r1/app"}}
}

func TestEmptyMap(t *testing.T) {
	var nilMap *Map
	for _, m := range []*Map{nilMap, {}} {
		if m.Version() != 0 || m.RingVersion() != 0 || m.Ring() != nil || m.Shards() != nil || m.Tables() != nil || m.Jobs() != nil {
			t.Fatalf("empty map not empty: %+v", m)
		}
		if _, _, _, err := m.Locate(KeyInt, "42"); !errors.Is(err, ErrNoRing) {
			t.Fatalf("Locate on empty map: %v, want ErrNoRing", err)
		}
		if _, ok := m.Shard("s1"); ok {
			t.Fatal("Shard found in empty map")
		}
		b := mustJSON(t, m)
		want := `{"format":1,"version":0,"ring_version":0,"shards":[],"ring":[],"tables":[],"jobs":[]}`
		if string(b) != want {
			t.Fatalf("empty map JSON %s, want %s", b, want)
		}
	}
	// Apply works on a nil map too.
	m := apply(t, nil, AddTable(Table{Name: "t"}))
	if m.Version() != 1 {
		t.Fatalf("version %d", m.Version())
	}
}

func TestMapAddShardPlacesOnRing(t *testing.T) {
	m := apply(t, &Map{}, AddShard(shard("s1"), 0))
	if m.RingVersion() != 1 {
		t.Fatalf("ring version %d, want 1", m.RingVersion())
	}
	if got := m.Ring().Tokens(); len(got) != DefaultVnodes || got[len(got)-1].Pos != math.MaxInt64 {
		t.Fatalf("first shard ring: %v", got)
	}
	s, ok := m.Shard("s1")
	if !ok || s.State != ShardActive || s.Primary != "postgres://s1-p/app" || len(s.Replicas) != 1 {
		t.Fatalf("shard s1: %+v %v", s, ok)
	}
	m2 := apply(t, m, AddShard(shard("s2"), 8))
	want, err := m.Ring().AddShard("s2", 8)
	if err != nil {
		t.Fatal(err)
	}
	if !equalTokens(m2.Ring().Tokens(), want.Tokens()) {
		t.Fatal("AddShard placed s2 differently from Ring.AddShard")
	}
	if m2.RingVersion() != 2 {
		t.Fatalf("ring version %d", m2.RingVersion())
	}
	// The old map is untouched (copy-on-write).
	if len(m.Shards()) != 1 || m.Ring().Len() != DefaultVnodes || m.Version() != 1 {
		t.Fatal("Apply modified its receiver")
	}
	reject(t, m2, AddShard(shard("s2"), 0), ErrShardExists)
	reject(t, m2, AddShard(Shard{Name: "", Primary: "x"}, 0), ErrInvalidCommand)
	reject(t, m2, AddShard(Shard{Name: "has space", Primary: "x"}, 0), ErrInvalidCommand)
	reject(t, m2, AddShard(Shard{Name: "s3"}, 0), ErrInvalidCommand)
	reject(t, m2, AddShard(Shard{Name: "s3", Primary: "x", Replicas: []string{"x"}}, 0), ErrInvalidCommand)
	reject(t, m2, AddShard(shard("s3"), MaxVnodes+1), ErrInvalidCommand)
	reject(t, m2, AddShard(shard("s3"), -1), ErrInvalidCommand)
}

func equalTokens(a, b []Token) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestSpareShardAndSetRing(t *testing.T) {
	m := apply(t, &Map{}, AddShard(shard("s1"), 4), AddSpareShard(shard("s2")))
	s2, _ := m.Shard("s2")
	if s2.State != ShardJoining {
		t.Fatalf("spare shard state %q", s2.State)
	}
	if m.RingVersion() != 1 || len(m.Ring().Shards()) != 1 {
		t.Fatal("spare shard was placed on the ring")
	}
	// Spare shards own nothing and can be removed.
	m0 := apply(t, m, RemoveShard("s2"))
	if _, ok := m0.Shard("s2"); ok {
		t.Fatal("s2 still registered")
	}

	next, err := m.Ring().AddShard("s2", 4)
	if err != nil {
		t.Fatal(err)
	}
	reject(t, m, SetRing(next, 0), ErrStaleVersion)
	reject(t, m, SetRing(next, 7), ErrStaleVersion)
	m = apply(t, m, SetRing(next, m.RingVersion()), SetShardState("s2", ShardActive))
	if m.RingVersion() != 3 || !equalTokens(m.Ring().Tokens(), next.Tokens()) {
		t.Fatalf("SetRing: ring version %d", m.RingVersion())
	}
	// A ring naming an unregistered shard is refused.
	bad, _ := next.AddShard("s9", 4)
	reject(t, m, SetRing(bad, m.RingVersion()), ErrUnknownShard)
	// Planned against an old ring version: refused.
	reject(t, m, SetRing(next, 1), ErrStaleVersion)
	// Invalid tokens (unsorted) are refused.
	cmd := newCommand(CmdSetRing, setRingData{Tokens: []tokenJSON{{5, "s1"}, {1, "s2"}}, IfRingVersion: m.RingVersion()})
	reject(t, m, cmd, ErrInvalidCommand)
	reject(t, m, newCommand(CmdSetRing, setRingData{IfRingVersion: m.RingVersion()}), ErrInvalidCommand)
}

func TestMapRemoveShard(t *testing.T) {
	m := apply(t, &Map{}, AddShard(shard("s1"), 4), AddShard(shard("s2"), 4))
	reject(t, m, RemoveShard("s2"), ErrShardOnRing)
	reject(t, m, RemoveShard("nope"), ErrUnknownShard)
	_, err := m.Apply(RemoveShard("s1"))
	if err == nil || !strings.Contains(err.Error(), "reshard") {
		t.Fatalf("RemoveShard error should tell to reshard first: %v", err)
	}
	// After a ring without s2 is committed, s2 can go.
	r, err := m.Ring().RemoveShard("s2")
	if err != nil {
		t.Fatal(err)
	}
	m = apply(t, m, SetShardState("s2", ShardDraining), SetRing(r, m.RingVersion()), RemoveShard("s2"))
	if got := m.Shards(); len(got) != 1 || got[0].Name != "s1" {
		t.Fatalf("shards after removal: %+v", got)
	}
}

func TestSetEndpointsAndState(t *testing.T) {
	m := apply(t, &Map{}, AddShard(shard("s1"), 1))
	m = apply(t, m, SetEndpoints("s1", "postgres://new-p/app", []string{"postgres://r1/app", "postgres://r2/app"}))
	s, _ := m.Shard("s1")
	if s.Primary != "postgres://new-p/app" || len(s.Replicas) != 2 || s.State != ShardActive {
		t.Fatalf("after SetEndpoints: %+v", s)
	}
	m = apply(t, m, SetEndpoints("s1", "postgres://new-p/app", nil))
	if s, _ := m.Shard("s1"); s.Replicas != nil {
		t.Fatalf("replicas not cleared: %+v", s)
	}
	reject(t, m, SetEndpoints("nope", "x", nil), ErrUnknownShard)
	reject(t, m, SetEndpoints("s1", " ", nil), ErrInvalidCommand)
	reject(t, m, SetEndpoints("s1", "a", []string{"b", "b"}), ErrInvalidCommand)
	m = apply(t, m, SetShardState("s1", ShardDraining))
	if s, _ := m.Shard("s1"); s.State != ShardDraining {
		t.Fatalf("state %q", s.State)
	}
	reject(t, m, SetShardState("s1", "sleeping"), ErrInvalidCommand)
	reject(t, m, SetShardState("nope", ShardActive), ErrUnknownShard)
	// Returned shards are copies.
	s, _ = m.Shard("s1")
	s.Replicas = append(s.Replicas, "x")
	m.Shards()[0].Primary = "changed"
	if s2, _ := m.Shard("s1"); s2.Primary != "postgres://new-p/app" || len(s2.Replicas) != 0 {
		t.Fatal("accessor exposed internal state")
	}
}

func TestTables(t *testing.T) {
	m := apply(t, &Map{},
		AddTable(Table{Name: "orders"}),
		AddTable(Table{Name: "events", KeyColumn: "tenant", KeyType: KeyUUID}),
		AddTable(Table{Name: "countries", Kind: TableReference}),
	)
	o, ok := m.Table("orders")
	if !ok || o.Kind != TableSharded || o.KeyColumn != "user_id" || o.KeyType != KeyInt {
		t.Fatalf("orders: %+v", o)
	}
	names := []string{}
	for _, tb := range m.Tables() {
		names = append(names, tb.Name)
	}
	if strings.Join(names, ",") != "countries,events,orders" {
		t.Fatalf("tables not sorted: %v", names)
	}
	reject(t, m, AddTable(Table{Name: "orders"}), ErrTableExists)
	reject(t, m, AddTable(Table{Name: "x", Kind: "weird"}), ErrInvalidCommand)
	reject(t, m, AddTable(Table{Name: "x", Kind: TableReference, KeyColumn: "id"}), ErrInvalidCommand)
	reject(t, m, AddTable(Table{Name: "x", KeyType: 9}), ErrInvalidCommand)
	reject(t, m, RemoveTable("nope"), ErrUnknownTable)
	m = apply(t, m, RemoveTable("events"))
	if _, ok := m.Table("events"); ok {
		t.Fatal("events still defined")
	}
	b := mustJSON(t, m)
	if !bytes.Contains(b, []byte(`{"name":"orders","kind":"sharded","key_column":"user_id","key_type":"int"}`)) ||
		!bytes.Contains(b, []byte(`{"name":"countries","kind":"reference"}`)) {
		t.Fatalf("table JSON: %s", b)
	}
}

func TestJobs(t *testing.T) {
	j := Job{ID: "job-1", Kind: "add_shard", Phase: "copy", Data: json.RawMessage(`{ "ranges" : [1, 2] }`)}
	m := apply(t, &Map{}, AddTable(Table{Name: "t"}), PutJob(j, 0))
	got, ok := m.Job("job-1")
	if !ok || got.Phase != "copy" || string(got.Data) != `{"ranges":[1,2]}` || got.Updated != 2 {
		t.Fatalf("job: %+v (data %s)", got, got.Data)
	}
	// Conditional update: only against the version last written.
	j.Phase = "catchup"
	reject(t, m, PutJob(j, 1), ErrStaleVersion)
	reject(t, m, PutJob(Job{ID: "job-2"}, 5), ErrUnknownJob)
	m = apply(t, m, PutJob(j, got.Updated))
	if got, _ := m.Job("job-1"); got.Phase != "catchup" || got.Updated != 3 {
		t.Fatalf("job after update: %+v", got)
	}
	reject(t, m, PutJob(Job{ID: "bad", Data: json.RawMessage(`{`)}, 0), ErrInvalidCommand)
	reject(t, m, PutJob(Job{ID: ""}, 0), ErrInvalidCommand)
	reject(t, m, DeleteJob("nope"), ErrUnknownJob)
	m = apply(t, m, PutJob(Job{ID: "a", Kind: "k", Phase: "p"}, 0), DeleteJob("job-1"))
	if jobs := m.Jobs(); len(jobs) != 1 || jobs[0].ID != "a" || jobs[0].Data != nil {
		t.Fatalf("jobs: %+v", jobs)
	}
}

func TestCommandEnvelope(t *testing.T) {
	b, err := AddShard(shard("s1"), 4).Encode()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"v":1,"type":"add_shard","data":{"name":"s1","primary":"postgres://s1-p/app","replicas":["postgres://s1-r1/app"],"vnodes":4}}`
	if string(b) != want {
		t.Fatalf("encoded %s\nwant    %s", b, want)
	}
	c, err := DecodeCommand(b)
	if err != nil || c.Type != CmdAddShard {
		t.Fatalf("decode: %+v %v", c, err)
	}
	for _, tc := range []struct {
		in   string
		want error
	}{
		{`{"v":2,"type":"add_shard","data":{}}`, ErrUnsupportedCommand},
		{`{"v":1,"type":"add_shard","data":{},"extra":1}`, ErrInvalidCommand},
		{`not json`, ErrInvalidCommand},
		{`{"v":1,"type":"x"} {}`, ErrInvalidCommand},
	} {
		if _, err := DecodeCommand([]byte(tc.in)); !errors.Is(err, tc.want) {
			t.Errorf("DecodeCommand(%s) = %v, want %v", tc.in, err, tc.want)
		}
	}
	m := &Map{}
	reject(t, m, Command{V: 1, Type: "frobnicate", Data: json.RawMessage(`{}`)}, ErrUnsupportedCommand)
	reject(t, m, Command{V: 3, Type: CmdAddTable, Data: json.RawMessage(`{}`)}, ErrUnsupportedCommand)
	reject(t, m, Command{V: 1, Type: CmdAddTable, Data: json.RawMessage(`{"name":"t","colour":"red"}`)}, ErrInvalidCommand)
	// A constructor that cannot encode its data yields a command that
	// neither encodes nor applies.
	bad := PutJob(Job{ID: "j", Data: json.RawMessage(`{`)}, 0)
	if _, err := bad.Encode(); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("Encode of bad command: %v", err)
	}
}

func TestLocate(t *testing.T) {
	m := apply(t, &Map{}, AddShard(shard("s1"), 16), AddShard(shard("s2"), 16), AddShard(shard("s3"), 16))
	for _, tc := range []struct {
		t   KeyType
		key string
	}{
		{KeyInt, "42"}, {KeyInt, "-1"}, {KeyInt, "9223372036854775807"},
		{KeyText, ""}, {KeyText, "alice"}, {KeyUUID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"},
	} {
		h, rng, s, err := m.Locate(tc.t, tc.key)
		if err != nil {
			t.Fatalf("Locate(%v, %q): %v", tc.t, tc.key, err)
		}
		want, _ := HashKey(tc.t, tc.key)
		if h != want || !rng.Contains(h) || s != m.Ring().Lookup(h) {
			t.Fatalf("Locate(%v, %q) = %d %v %s", tc.t, tc.key, h, rng, s)
		}
		// The range is one of the owner's ranges.
		found := false
		for _, g := range m.Ring().Ranges(s) {
			found = found || g == rng
		}
		if !found {
			t.Fatalf("range %v is not one of %s's ranges", rng, s)
		}
	}
	// hashint8extended(42, 0) as PostgreSQL 15 computes it.
	if h, _, _, _ := m.Locate(KeyInt, "42"); h != HashInt64(42) {
		t.Fatal("Locate does not hash like HashInt64")
	}
	if _, _, _, err := m.Locate(KeyInt, "forty-two"); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("bad key: %v", err)
	}
	if _, _, _, err := m.Locate(KeyType(0), "1"); !errors.Is(err, ErrUnknownKeyType) {
		t.Fatalf("bad type: %v", err)
	}
}

// log returns the commands of a typical history.
func historyLog() []Command {
	return []Command{
		AddShard(shard("s1"), 16),
		AddTable(Table{Name: "users"}),
		AddTable(Table{Name: "plans", Kind: TableReference}),
		AddShard(shard("s2"), 16),
		AddShard(shard("s2"), 16), // rejected: exists
		AddSpareShard(shard("s3")),
		PutJob(Job{ID: "j1", Kind: "add_shard", Phase: "plan", Data: json.RawMessage(`{"to":"s3"}`)}, 0),
		SetEndpoints("s1", "postgres://s1-new/app", nil),
		RemoveShard("s1"), // rejected: on the ring
		PutJob(Job{ID: "j1", Kind: "add_shard", Phase: "copy"}, 6), // j1 was written at version 6
		SetShardState("s3", ShardActive),
		AddTable(Table{Name: "events", KeyColumn: "id", KeyType: KeyText}),
	}
}

// runFSM feeds the commands through a fresh FSM as Raft log entries and
// returns the persisted snapshot.
func runFSM(t *testing.T, cmds []Command) (*fsm, []byte) {
	t.Helper()
	f := newFSM(nil)
	for i, c := range cmds {
		b, err := c.Encode()
		if err != nil {
			t.Fatal(err)
		}
		res := f.Apply(&raft.Log{Index: uint64(i + 1), Term: 1, Type: raft.LogCommand, Data: b})
		if _, ok := res.(*applyResult); !ok {
			t.Fatalf("entry %d: response %T", i, res)
		}
	}
	return f, persist(t, f)
}

type memSink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }
func (s *memSink) Close() error  { s.closed = true; return nil }

func persist(t *testing.T, f *fsm) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	if !sink.closed || sink.cancelled {
		t.Fatal("Persist did not close the sink")
	}
	return sink.Bytes()
}

func TestFSMDeterministic(t *testing.T) {
	f1, snap1 := runFSM(t, historyLog())
	_, snap2 := runFSM(t, historyLog())
	if !bytes.Equal(snap1, snap2) {
		t.Fatalf("same log, different snapshots:\n%s\n%s", snap1, snap2)
	}
	m := f1.cur.Load()
	if m.Version() != 10 { // 12 commands, 2 rejected
		t.Fatalf("version %d, want 10", m.Version())
	}
	if j, _ := m.Job("j1"); j.Phase != "copy" || j.Data != nil {
		t.Fatalf("job j1: %+v", j)
	}
	// A rejected entry answers with its error and changes nothing.
	b, _ := RemoveShard("s2").Encode()
	res := f1.Apply(&raft.Log{Index: 99, Type: raft.LogCommand, Data: b}).(*applyResult)
	if !errors.Is(res.err, ErrShardOnRing) || res.m != nil || f1.cur.Load() != m {
		t.Fatalf("rejected entry: %+v", res)
	}
	res = f1.Apply(&raft.Log{Index: 100, Type: raft.LogCommand, Data: []byte("garbage")}).(*applyResult)
	if !errors.Is(res.err, ErrInvalidCommand) || f1.cur.Load() != m {
		t.Fatalf("garbage entry: %+v", res)
	}
	// Non-command entries are ignored.
	if res := f1.Apply(&raft.Log{Index: 101, Type: raft.LogNoop}); res != nil {
		t.Fatalf("noop response %v", res)
	}
}

func TestFSMSnapshotRestore(t *testing.T) {
	f1, snap := runFSM(t, historyLog())
	var seen []*Map
	f2 := newFSM(func(m *Map) { seen = append(seen, m) })
	if err := f2.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 1 {
		t.Fatalf("Restore notified %d times", len(seen))
	}
	if again := persist(t, f2); !bytes.Equal(again, snap) {
		t.Fatalf("restore round trip differs:\n%s\n%s", snap, again)
	}
	m1, m2 := f1.cur.Load(), f2.cur.Load()
	if m1.Version() != m2.Version() || m1.RingVersion() != m2.RingVersion() || !equalTokens(m1.Ring().Tokens(), m2.Ring().Tokens()) {
		t.Fatal("restored map differs")
	}
	// Restore replaces everything: restoring the empty map empties it.
	if err := f2.Restore(io.NopCloser(strings.NewReader(string(mustJSON(t, &Map{}))))); err != nil {
		t.Fatal(err)
	}
	if f2.cur.Load().Version() != 0 || f2.cur.Load().Ring() != nil {
		t.Fatal("restore of the empty map kept state")
	}
	// Later commands apply identically on the restored FSM.
	next := []Command{AddShard(shard("s4"), 8), DeleteJob("j1")}
	f3 := newFSM(nil)
	if err := f3.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatal(err)
	}
	_, full := runFSM(t, append(historyLog(), next...))
	for i, c := range next {
		b, _ := c.Encode()
		if r := f3.Apply(&raft.Log{Index: uint64(100 + i), Type: raft.LogCommand, Data: b}).(*applyResult); r.err != nil {
			t.Fatal(r.err)
		}
	}
	if got := persist(t, f3); !bytes.Equal(got, full) {
		t.Fatalf("snapshot+tail differs from full replay:\n%s\n%s", got, full)
	}
}

func TestDecodeMapRejectsCorrupt(t *testing.T) {
	_, snap := runFSM(t, historyLog())
	good := string(snap)
	for name, in := range map[string]string{
		"truncated":      good[:len(good)/2],
		"format":         strings.Replace(good, `"format":1`, `"format":2`, 1),
		"unknown field":  strings.Replace(good, `"format":1`, `"format":1,"x":1`, 1),
		"ring owner":     strings.Replace(good, `"shard":"s2"`, `"shard":"zz"`, 1),
		"unsorted ring":  strings.Replace(good, `"ring":[{"pos":`, `"ring":[{"pos":9223372036854775807,"shard":"s1"},{"pos":`, 1),
		"dup shard":      strings.Replace(good, `"shards":[`, `"shards":[{"name":"s1","primary":"x","state":"active"},`, 1),
		"bad state":      strings.Replace(good, `"state":"active"`, `"state":"zombie"`, 1),
		"ring version":   strings.Replace(good, `"ring_version":`, `"ring_version":1000`, 1),
		"empty":          "",
		"bad table kind": strings.Replace(good, `"kind":"reference"`, `"kind":"other"`, 1),
	} {
		if in == good {
			t.Fatalf("%s: replacement did not apply", name)
		}
		if _, err := DecodeMap([]byte(in)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: DecodeMap = %v, want ErrCorrupt", name, err)
		}
		f := newFSM(nil)
		if err := f.Restore(io.NopCloser(strings.NewReader(in))); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: Restore = %v, want ErrCorrupt", name, err)
		}
	}
	var m Map
	if err := json.Unmarshal(snap, &m); err != nil || m.Version() != 10 {
		t.Fatalf("json.Unmarshal into Map: %v, version %d", err, m.Version())
	}
}

func TestMovingAndFrozen(t *testing.T) {
	var m *Map
	var err error
	if m, err = m.Apply(AddShard(Shard{Name: "a", Primary: "host=a"}, 4)); err != nil {
		t.Fatal(err)
	}
	if m.Moving() != nil || m.Frozen() != nil {
		t.Fatalf("empty map: moving %v frozen %v", m.Moving(), m.Frozen())
	}
	mv := []Range{{Start: 1, End: 100}, {Start: 500, End: -500}}
	if m, err = m.Apply(PutJob(Job{ID: "j1", Kind: "add", Phase: "copy", Moving: mv}, 0)); err != nil {
		t.Fatal(err)
	}
	if got := m.Moving(); !slices.Equal(got, mv) {
		t.Fatalf("moving %v, want %v", got, mv)
	}
	if m.Frozen() != nil {
		t.Fatalf("frozen %v before a freeze", m.Frozen())
	}
	j, _ := m.Job("j1")
	j.FrozenRing = m.RingVersion()
	if m, err = m.Apply(PutJob(j, j.Updated)); err != nil {
		t.Fatal(err)
	}
	if got := m.Frozen(); !slices.Equal(got, mv) {
		t.Fatalf("frozen %v, want %v", got, mv)
	}
	// A new ring lifts the freeze by itself.
	if m, err = m.Apply(AddShard(Shard{Name: "b", Primary: "host=b"}, 4)); err != nil {
		t.Fatal(err)
	}
	if m.Frozen() != nil {
		t.Fatalf("frozen %v after the ring changed", m.Frozen())
	}
	// The fields survive a JSON round trip (snapshots).
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := DecodeMap(b)
	if err != nil {
		t.Fatal(err)
	}
	j2, _ := m2.Job("j1")
	if !slices.Equal(j2.Moving, mv) || j2.FrozenRing != j.FrozenRing {
		t.Fatalf("round trip: %+v", j2)
	}
}

// Sync changes nothing but the version, and round-trips through the log's
// encoding.
func TestSyncChangesOnlyTheVersion(t *testing.T) {
	m := apply(t, nil, AddShard(shard("s0"), 0), AddTable(Table{Name: "orders"}))
	enc, err := Sync("n1").Encode()
	if err != nil {
		t.Fatal(err)
	}
	cmd, err := DecodeCommand(enc)
	if err != nil {
		t.Fatal(err)
	}
	next := apply(t, m, cmd)
	strip := func(b []byte) []byte {
		var v map[string]any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		delete(v, "version")
		out, _ := json.Marshal(v)
		return out
	}
	if a, b := strip(mustJSON(t, m)), strip(mustJSON(t, next)); !bytes.Equal(a, b) {
		t.Fatalf("sync changed the map:\n%s\n%s", a, b)
	}
	reject(t, m, Command{V: CommandVersion, Type: CmdSync, Data: json.RawMessage(`{"nod":"x"}`)}, ErrInvalidCommand)
}

// Seed places several shards in one entry with the ring AddShard one
// after the other gives, and only on an empty map.
func TestSeedEqualsAddShardInTurn(t *testing.T) {
	seq := apply(t, nil, AddShard(shard("s0"), 0), AddShard(shard("s1"), 0), AddShard(shard("s2"), 0))
	one := apply(t, nil, Seed([]Shard{shard("s0"), shard("s1"), shard("s2")}, 0))
	if one.Version() != 1 {
		t.Fatalf("seed: version %d, want 1", one.Version())
	}
	if !slices.Equal(one.Ring().Tokens(), seq.Ring().Tokens()) || !slices.EqualFunc(one.Shards(), seq.Shards(), func(a, b Shard) bool {
		return a.Name == b.Name && a.Primary == b.Primary && slices.Equal(a.Replicas, b.Replicas) && a.State == b.State
	}) {
		t.Fatal("a seeded map differs from shards added in turn")
	}
	if one.RingVersion() != one.Version() {
		t.Fatalf("ring version %d, map version %d", one.RingVersion(), one.Version())
	}
	reject(t, one, Seed([]Shard{shard("s3")}, 0), ErrShardExists)
	reject(t, &Map{}, Seed(nil, 0), ErrInvalidCommand)
	reject(t, &Map{}, Seed([]Shard{shard("s0"), shard("s0")}, 0), ErrShardExists)
}
