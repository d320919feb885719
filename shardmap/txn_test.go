package shardmap

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

var decidedAt = time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)

func TestTxnDecideFirstWins(t *testing.T) {
	m0 := apply(t, &Map{}, AddShard(shard("s1"), 4))
	m1 := apply(t, m0, DecideTxn("pgshard_a", true, decidedAt))
	d, ok := m1.TxnDecision("pgshard_a")
	want := TxnDecision{GID: "pgshard_a", Commit: true, Version: 2, At: decidedAt.Truncate(time.Millisecond)}
	if !ok || d != want {
		t.Fatalf("decision %+v %v, want %+v", d, ok, want)
	}
	if _, ok := m0.TxnDecision("pgshard_a"); ok || m0.TxnCount() != 0 {
		t.Fatal("Apply changed the map it was applied to")
	}
	// A second decision is accepted, bumps the version and keeps the first.
	m2 := apply(t, m1, DecideTxn("pgshard_a", false, decidedAt.Add(time.Hour)))
	if d2, _ := m2.TxnDecision("pgshard_a"); d2 != want {
		t.Fatalf("second decide changed the decision to %+v", d2)
	}
	if m2.Version() != 3 || m2.TxnCount() != 1 {
		t.Fatalf("version %d, count %d", m2.Version(), m2.TxnCount())
	}
	m3 := apply(t, m2, DecideTxn("pgshard_b", false, decidedAt))
	if d, _ := m3.TxnDecision("pgshard_b"); d.Commit || d.Version != 4 {
		t.Fatalf("pgshard_b: %+v", d)
	}
	// The rest of the map is untouched.
	if !equalTokens(m3.Ring().Tokens(), m0.Ring().Tokens()) || len(m3.Shards()) != 1 {
		t.Fatal("decide changed the ring or shards")
	}

	// Forget drops one; forgetting an unknown gid is rejected.
	m4 := apply(t, m3, ForgetTxn("pgshard_a"))
	if _, ok := m4.TxnDecision("pgshard_a"); ok || m4.TxnCount() != 1 {
		t.Fatal("forget kept the decision")
	}
	if _, ok := m3.TxnDecision("pgshard_a"); !ok {
		t.Fatal("forget changed the map it was applied to")
	}
	reject(t, m4, ForgetTxn("pgshard_a"), ErrUnknownTxn)
	m5 := apply(t, m4, ForgetTxn("pgshard_b"))
	if m5.TxnCount() != 0 || m5.TxnDecisions() != nil {
		t.Fatalf("decisions left: %+v", m5.TxnDecisions())
	}
	// Without decisions the encoding is the one from before they existed.
	if b := mustJSON(t, m5); bytes.Contains(b, []byte("txns")) {
		t.Fatalf("empty decisions encoded: %s", b)
	}
	// A forgotten gid can be decided again (the recovery pass forgets only
	// what no shard holds any more).
	m6 := apply(t, m5, DecideTxn("pgshard_a", false, decidedAt))
	if d, _ := m6.TxnDecision("pgshard_a"); d.Commit {
		t.Fatal("re-decided gid kept the forgotten outcome")
	}
}

func TestTxnDecideRejects(t *testing.T) {
	m := apply(t, &Map{}, DecideTxn("pgshard_x", true, decidedAt))
	for name, cmd := range map[string]Command{
		"empty gid":  DecideTxn("", true, decidedAt),
		"space":      DecideTxn("pgshard x", true, decidedAt),
		"non-ascii":  DecideTxn("pgshard_é", true, decidedAt),
		"too long":   DecideTxn(strings.Repeat("g", MaxGIDLen+1), true, decidedAt),
		"no time":    DecideTxn("pgshard_y", true, time.UnixMilli(0)),
		"bad forget": ForgetTxn(""),
		"unknown field": {V: CommandVersion, Type: CmdDecideTxn,
			Data: []byte(`{"gid":"pgshard_z","commit":true,"at_ms":1,"extra":1}`)},
	} {
		t.Run(name, func(t *testing.T) {
			want := ErrInvalidCommand
			if name == "bad forget" {
				want = ErrUnknownTxn
			}
			reject(t, m, cmd, want)
		})
	}
	// The longest gid PostgreSQL takes is fine.
	apply(t, m, DecideTxn(strings.Repeat("g", MaxGIDLen), true, decidedAt))
}

func TestTxnManyDecisions(t *testing.T) {
	m := &Map{}
	const n = 2000
	for i := range n {
		m = apply(t, m, DecideTxn(fmt.Sprintf("pgshard_%05d", i), i%3 == 0, decidedAt.Add(time.Duration(i)*time.Millisecond)))
	}
	all := m.TxnDecisions()
	if len(all) != n || m.TxnCount() != n {
		t.Fatalf("%d decisions listed, count %d", len(all), m.TxnCount())
	}
	for i, d := range all {
		if d.GID != fmt.Sprintf("pgshard_%05d", i) || d.Commit != (i%3 == 0) || d.Version != uint64(i+1) {
			t.Fatalf("decision %d: %+v", i, d)
		}
		if got, ok := m.TxnDecision(d.GID); !ok || got != d {
			t.Fatalf("lookup %s: %+v %v", d.GID, got, ok)
		}
	}
	for i := 0; i < n; i += 2 {
		m = apply(t, m, ForgetTxn(fmt.Sprintf("pgshard_%05d", i)))
	}
	if m.TxnCount() != n/2 {
		t.Fatalf("count %d after forgetting half", m.TxnCount())
	}
	for i := range n {
		if _, ok := m.TxnDecision(fmt.Sprintf("pgshard_%05d", i)); ok != (i%2 == 1) {
			t.Fatalf("gid %d: present %v", i, ok)
		}
	}
	// Round trip through the encoding.
	b := mustJSON(t, m)
	m2, err := DecodeMap(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mustJSON(t, m2), b) {
		t.Fatal("decode/encode differs")
	}
	if d, ok := m2.TxnDecision("pgshard_00003"); !ok || !d.Commit || d.At != decidedAt.Add(3*time.Millisecond).Truncate(time.Millisecond) {
		t.Fatalf("decoded decision %+v %v", d, ok)
	}
}

func TestTxnTableBound(t *testing.T) {
	// Fill the table directly: applying MaxTxnDecisions commands one by
	// one is needlessly slow under -race.
	ds := make([]TxnDecision, MaxTxnDecisions)
	for i := range ds {
		ds[i] = TxnDecision{GID: fmt.Sprintf("pgshard_%06d", i), Commit: true, Version: 1, At: decidedAt}
	}
	full, err := newTxnTable(ds, 1)
	if err != nil {
		t.Fatal(err)
	}
	m := &Map{version: 1, txns: full}
	reject(t, m, DecideTxn("pgshard_new", true, decidedAt), ErrTxnTableFull)
	// A gid already decided still answers, and forgetting makes room.
	m2 := apply(t, m, DecideTxn("pgshard_000007", false, decidedAt))
	if d, _ := m2.TxnDecision("pgshard_000007"); !d.Commit {
		t.Fatal("a full table changed a recorded decision")
	}
	m3 := apply(t, m2, ForgetTxn("pgshard_000007"), DecideTxn("pgshard_new", false, decidedAt))
	if d, ok := m3.TxnDecision("pgshard_new"); !ok || d.Commit || m3.TxnCount() != MaxTxnDecisions {
		t.Fatalf("after forgetting one: %+v %v, count %d", d, ok, m3.TxnCount())
	}
}

func txnLog() []Command {
	return append(historyLog(),
		DecideTxn("pgshard_0001", true, decidedAt),
		DecideTxn("pgshard_0002", false, decidedAt),
		DecideTxn("pgshard_0001", false, decidedAt), // keeps commit
		DecideTxn("pgshard_0003", true, decidedAt),
		ForgetTxn("pgshard_0003"),
		ForgetTxn("pgshard_0003"), // rejected: forgotten
	)
}

func TestTxnFSMSnapshotRestore(t *testing.T) {
	f1, snap := runFSM(t, txnLog())
	_, again := runFSM(t, txnLog())
	if !bytes.Equal(snap, again) {
		t.Fatalf("same log, different snapshots:\n%s\n%s", snap, again)
	}
	f2 := newFSM(nil)
	if err := f2.Restore(io.NopCloser(bytes.NewReader(snap))); err != nil {
		t.Fatal(err)
	}
	if got := persist(t, f2); !bytes.Equal(got, snap) {
		t.Fatalf("restore round trip differs:\n%s\n%s", snap, got)
	}
	m := f2.cur.Load()
	if m.Version() != f1.cur.Load().Version() || m.TxnCount() != 2 {
		t.Fatalf("restored version %d with %d decisions", m.Version(), m.TxnCount())
	}
	if d, ok := m.TxnDecision("pgshard_0001"); !ok || !d.Commit {
		t.Fatalf("restored pgshard_0001: %+v %v", d, ok)
	}
	// Snapshot + tail equals a full replay.
	tail := []Command{DecideTxn("pgshard_0002", true, decidedAt), ForgetTxn("pgshard_0001"), DecideTxn("pgshard_0004", true, decidedAt)}
	for i, c := range tail {
		b, _ := c.Encode()
		if r := f2.Apply(&raft.Log{Index: uint64(100 + i), Type: raft.LogCommand, Data: b}).(*applyResult); r.err != nil {
			t.Fatal(r.err)
		}
	}
	_, full := runFSM(t, append(txnLog(), tail...))
	if got := persist(t, f2); !bytes.Equal(got, full) {
		t.Fatalf("snapshot+tail differs from full replay:\n%s\n%s", got, full)
	}
}

func TestTxnDecodeRejectsCorrupt(t *testing.T) {
	_, snap := runFSM(t, txnLog())
	good := string(snap)
	if !strings.Contains(good, `"txns":[{"gid":"pgshard_0001"`) {
		t.Fatalf("snapshot without decisions: %s", good)
	}
	for name, in := range map[string]string{
		"unsorted":      strings.Replace(good, `"gid":"pgshard_0002"`, `"gid":"pgshard_0000"`, 1),
		"duplicate":     strings.Replace(good, `"gid":"pgshard_0002"`, `"gid":"pgshard_0001"`, 1),
		"bad gid":       strings.Replace(good, `"gid":"pgshard_0002"`, `"gid":"pgshard 0002"`, 1),
		"future":        strings.Replace(good, `"txns":[{"gid":"pgshard_0001","commit":true,"version":`, `"txns":[{"gid":"pgshard_0001","commit":true,"version":9`, 1),
		"unknown field": strings.Replace(good, `"gid":"pgshard_0002"`, `"gid":"pgshard_0002","x":1`, 1),
	} {
		if in == good {
			t.Fatalf("%s: replacement did not apply", name)
		}
		if _, err := DecodeMap([]byte(in)); err == nil || !strings.Contains(err.Error(), ErrCorrupt.Error()) {
			t.Errorf("%s: DecodeMap = %v, want ErrCorrupt", name, err)
		}
	}
}

// TestClusterTxnDecisionSurvives shows a decision outliving the leader that
// recorded it, and a node that restarts from a snapshot.
func TestClusterTxnDecisionSurvives(t *testing.T) {
	c := newCluster(t, 3, 3)
	c.apply(AddShard(shard("s1"), 8))
	m := c.apply(DecideTxn("pgshard_c0ffee", true, decidedAt))
	c.converge(m, c.nodes...)

	// The leader goes away; the new one holds the decision and keeps it
	// against a contrary one (first decision wins).
	old := c.leader()
	c.stop(old)
	var rest []*node
	for _, nd := range c.nodes {
		if nd != old {
			rest = append(rest, nd)
		}
	}
	m = c.apply(DecideTxn("pgshard_c0ffee", false, decidedAt.Add(time.Minute)), rest...)
	if d, ok := m.TxnDecision("pgshard_c0ffee"); !ok || !d.Commit || d.Version != 2 {
		t.Fatalf("after leader change: %+v %v", d, ok)
	}
	m = c.apply(DecideTxn("pgshard_abort", false, decidedAt), rest...)
	c.converge(m, rest...)

	// A follower snapshots (compacting what it can of its log), stops
	// and restarts: its map comes back through the snapshot.
	var f *node
	for _, nd := range rest {
		if !nd.s.IsLeader() {
			f = nd
		}
	}
	if err := f.s.Snapshot(); err != nil {
		t.Fatal(err)
	}
	c.stop(f)
	c.restart(f)
	// Open restores the snapshot before it returns; entries after it
	// would only replay once the leader tells the commit index, so what
	// the node holds now came from the snapshot.
	if d, ok := f.s.Map().TxnDecision("pgshard_abort"); !ok || d.Commit || f.s.Map().Version() != m.Version() {
		t.Fatalf("restarted node at version %d: %+v %v", f.s.Map().Version(), d, ok)
	}
	c.converge(m, f)

	// The old leader comes back and catches up; forgetting replicates.
	c.restart(old)
	m = c.apply(ForgetTxn("pgshard_c0ffee"))
	c.converge(m, c.nodes...)
	for _, nd := range c.nodes {
		if _, ok := nd.s.Map().TxnDecision("pgshard_c0ffee"); ok {
			t.Fatalf("%s still holds the forgotten decision", nd.id)
		}
		if d, ok := nd.s.Map().TxnDecision("pgshard_abort"); !ok || d.Commit {
			t.Fatalf("%s: pgshard_abort %+v %v", nd.id, d, ok)
		}
	}
}
