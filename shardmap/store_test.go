package shardmap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/pgshard/pgshard/internal/testutil"
)

// tlog is a slog handler target that writes to t.Log until the test ends
// (raft goroutines must not call t.Log after that).
type tlog struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *tlog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// testLogger routes logs (raft's too) to t.Log at Info and above; set
// PGSHARD_RAFT_DEBUG=1 for Debug.
func testLogger(t testing.TB) *slog.Logger {
	w := &tlog{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() }) // registered first, runs last
	level := slog.LevelInfo
	if testing.Verbose() && strings.Contains(fmt.Sprint(testingEnv("PGSHARD_RAFT_DEBUG")), "1") {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// fastTiming makes elections quick, as raft's own tests do.
func fastTiming(c *StoreConfig) {
	c.HeartbeatTimeout = 50 * time.Millisecond
	c.ElectionTimeout = 50 * time.Millisecond
	c.LeaderLeaseTimeout = 50 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
}

// node is one member of an in-memory test cluster.
type node struct {
	id     string
	addr   raft.ServerAddress
	trans  *raft.InmemTransport
	stores *InmemStores
	s      *Store
}

type cluster struct {
	t     *testing.T
	log   *slog.Logger
	nodes []*node
}

// newCluster starts n in-memory nodes: node 0 bootstraps, the others join
// as voters (the first `voters` nodes) or non-voters.
func newCluster(t *testing.T, n, voters int) *cluster {
	t.Helper()
	c := &cluster{t: t, log: testLogger(t)}
	for i := range n {
		addr, trans := raft.NewInmemTransport("")
		c.nodes = append(c.nodes, &node{id: fmt.Sprintf("n%d", i+1), addr: addr, trans: trans, stores: NewInmemStores()})
	}
	c.connectAll()
	for i, nd := range c.nodes {
		c.start(nd, i == 0)
	}
	ctx := ctxT(t, 10*time.Second)
	first := c.nodes[0].s
	if err := first.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	for i, nd := range c.nodes[1:] {
		var err error
		if i+1 < voters {
			err = first.AddVoter(ctx, nd.id, string(nd.addr))
		} else {
			err = first.AddNonvoter(ctx, nd.id, string(nd.addr))
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, nd := range c.nodes {
		if err := nd.s.WaitForLeader(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func (c *cluster) connectAll() {
	for _, a := range c.nodes {
		for _, b := range c.nodes {
			if a != b {
				a.trans.Connect(b.addr, b.trans)
			}
		}
	}
}

func (c *cluster) start(nd *node, bootstrap bool) {
	c.t.Helper()
	cfg := StoreConfig{NodeID: nd.id, Transport: nd.trans, Inmem: nd.stores, Bootstrap: bootstrap, Join: !bootstrap, Logger: c.log}
	fastTiming(&cfg)
	s, err := NewStore(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := s.Open(ctxT(c.t, 5*time.Second)); err != nil {
		c.t.Fatal(err)
	}
	nd.s = s
	c.t.Cleanup(func() {
		if err := s.Close(context.Background()); err != nil {
			c.t.Error(err)
		}
	})
}

// stop shuts a node down (like a killed process; its stores survive).
func (c *cluster) stop(nd *node) {
	c.t.Helper()
	if err := nd.s.Close(ctxT(c.t, 5*time.Second)); err != nil {
		c.t.Fatal(err)
	}
}

// restart brings a stopped node back on its stores with a fresh transport
// at the same address.
func (c *cluster) restart(nd *node) {
	c.t.Helper()
	_, nd.trans = raft.NewInmemTransport(nd.addr)
	c.connectAll()
	c.start(nd, false)
}

// isolate cuts nd off from every other node, both ways.
func (c *cluster) isolate(nd *node) {
	nd.trans.DisconnectAll()
	for _, o := range c.nodes {
		if o != nd {
			o.trans.Disconnect(nd.addr)
		}
	}
}

// leader waits until exactly one running node among nodes is leader and
// every running node agrees on it.
func (c *cluster) leader(running ...*node) *node {
	c.t.Helper()
	if len(running) == 0 {
		running = c.nodes
	}
	var l *node
	testutil.WaitFor(c.t, 10*time.Second, "a leader", func() error {
		l = nil
		for _, nd := range running {
			if nd.s.IsLeader() {
				if l != nil {
					return fmt.Errorf("two leaders: %s and %s", l.id, nd.id)
				}
				l = nd
			}
		}
		if l == nil {
			return errors.New("no leader")
		}
		for _, nd := range running {
			if nd.s.LeaderID() != l.id {
				return fmt.Errorf("%s thinks the leader is %q, not %s", nd.id, nd.s.LeaderID(), l.id)
			}
		}
		return nil
	})
	return l
}

// apply applies cmd on the current leader, retrying while leadership moves.
func (c *cluster) apply(cmd Command, running ...*node) *Map {
	c.t.Helper()
	var m *Map
	testutil.WaitFor(c.t, 10*time.Second, "apply "+string(cmd.Type), func() error {
		l := c.leader(running...)
		var err error
		m, err = l.s.Apply(ctxT(c.t, 2*time.Second), cmd)
		if errors.Is(err, ErrNotLeader) || errors.Is(err, ErrLeadershipLost) {
			return err
		}
		if err != nil {
			c.t.Fatalf("apply %s: %v", cmd.Type, err)
		}
		return nil
	})
	return m
}

// converge waits until every given node holds a map byte-identical to want.
func (c *cluster) converge(want *Map, nodes ...*node) {
	c.t.Helper()
	wantJSON := mustJSON(c.t, want)
	for _, nd := range nodes {
		if err := nd.s.WaitForVersion(ctxT(c.t, 10*time.Second), want.Version()); err != nil {
			c.t.Fatalf("%s: %v", nd.id, err)
		}
		if got := mustJSON(c.t, nd.s.Map()); !bytes.Equal(got, wantJSON) {
			c.t.Fatalf("%s holds a different map at version %d:\n%s\nwant\n%s", nd.id, want.Version(), got, wantJSON)
		}
	}
}

func TestStoreSingleNode(t *testing.T) {
	cfg := StoreConfig{NodeID: "solo", InMemory: true, Bootstrap: true, Logger: testLogger(t)}
	fastTiming(&cfg)
	_, cfg.Transport = raft.NewInmemTransport("")
	s, err := NewStore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if m := s.Map(); m == nil || m.Version() != 0 {
		t.Fatal("Map before Open must be the empty map")
	}
	if _, err := s.Apply(context.Background(), AddTable(Table{Name: "t"})); !errors.Is(err, ErrClosed) {
		t.Fatalf("Apply before Open: %v", err)
	}
	ctx := ctxT(t, 10*time.Second)
	if err := s.Open(ctx); err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	if err := s.WaitForLeader(ctx); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 5*time.Second, "leadership", func() error {
		if !s.IsLeader() {
			return errors.New("not leader")
		}
		return nil
	})
	w, cancel := s.Watch()
	if m := <-w; m.Version() != 0 {
		t.Fatalf("watch starts with version %d", m.Version())
	}
	m, err := s.Apply(ctx, AddShard(shard("s1"), 4))
	if err != nil {
		t.Fatal(err)
	}
	if m.Version() != 1 || s.Map() != m {
		t.Fatalf("Apply returned version %d; Map() is %p, result %p", m.Version(), s.Map(), m)
	}
	if got := <-w; got != m {
		t.Fatalf("watch got version %d", got.Version())
	}
	// A rejected command is an error for the caller, not for Raft.
	if _, err := s.Apply(ctx, AddShard(shard("s1"), 4)); !errors.Is(err, ErrShardExists) {
		t.Fatalf("duplicate AddShard: %v", err)
	}
	idx := s.LastIndex()
	if _, err := s.Apply(ctx, Command{V: 1, Type: "nope", Data: []byte("{}")}); !errors.Is(err, ErrUnsupportedCommand) {
		t.Fatalf("unknown command: %v", err)
	}
	if s.LastIndex() != idx {
		t.Fatal("an unknown command reached the log")
	}
	// A command the map rejects is committed and rejected by every member.
	if _, err := s.Apply(ctx, RemoveShard("nope")); !errors.Is(err, ErrUnknownShard) {
		t.Fatalf("RemoveShard(nope): %v", err)
	}
	if s.LastIndex() != idx+1 {
		t.Fatalf("rejected command: last index %d, want %d", s.LastIndex(), idx+1)
	}
	if s.Map().Version() != 1 {
		t.Fatal("rejected commands changed the version")
	}
	// A slow watcher skips to the latest map.
	for i := range 3 {
		if _, err := s.Apply(ctx, AddTable(Table{Name: fmt.Sprintf("t%d", i)})); err != nil {
			t.Fatal(err)
		}
	}
	if got := <-w; got.Version() != 4 {
		t.Fatalf("slow watcher got version %d, want the latest (4)", got.Version())
	}
	cancel()
	if _, ok := <-w; ok {
		t.Fatal("watch channel open after cancel")
	}
	cancel() // idempotent
	st := s.Stats()
	if st["state"] != "Leader" || st["map_version"] != "4" || st["node_id"] != "solo" || st["applied_index"] == "" {
		t.Fatalf("stats: %v", st)
	}
	srv, err := s.Servers()
	if err != nil || len(srv) != 1 || !srv[0].Leader || srv[0].Suffrage != "voter" || srv[0].ID != "solo" {
		t.Fatalf("servers: %+v %v", srv, err)
	}
	if err := s.WaitForIndex(ctx, s.LastIndex()); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveServer(ctx, "ghost"); !errors.Is(err, ErrUnknownServer) {
		t.Fatalf("RemoveServer(ghost): %v", err)
	}
	w2, _ := s.Watch()
	<-w2
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-w2; ok {
		t.Fatal("watch channel open after Close")
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal("second Close:", err)
	}
	if err := s.WaitForVersion(ctx, 100); !errors.Is(err, ErrClosed) {
		t.Fatalf("WaitForVersion after Close: %v", err)
	}
}

func TestClusterReplicates(t *testing.T) {
	c := newCluster(t, 3, 3)
	l := c.leader()
	var follower *node
	for _, nd := range c.nodes {
		if nd != l {
			follower = nd
		}
	}
	// Followers refuse writes and name the leader.
	_, err := follower.s.Apply(ctxT(t, time.Second), AddTable(Table{Name: "x"}))
	var nle *NotLeaderError
	if !errors.As(err, &nle) || !errors.Is(err, ErrNotLeader) || nle.LeaderID != l.id || nle.LeaderAddr != string(l.addr) {
		t.Fatalf("follower Apply: %v", err)
	}
	if err := follower.s.AddVoter(ctxT(t, time.Second), "n9", "x"); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("follower AddVoter: %v", err)
	}
	var m *Map
	for _, cmd := range historyLog() {
		if got, err := l.s.Apply(ctxT(t, 5*time.Second), cmd); err == nil {
			m = got
		}
	}
	c.converge(m, c.nodes...)
	srv, err := follower.s.Servers()
	if err != nil || len(srv) != 3 {
		t.Fatalf("servers: %+v %v", srv, err)
	}
	for _, s := range srv {
		if s.Suffrage != "voter" || s.Leader != (s.ID == l.id) {
			t.Fatalf("server %+v", s)
		}
	}
	// Adding a member again is a no-op.
	if err := l.s.AddVoter(ctxT(t, 5*time.Second), follower.id, string(follower.addr)); err != nil {
		t.Fatal(err)
	}
}

func TestClusterLeaderLoss(t *testing.T) {
	c := newCluster(t, 3, 3)
	m := c.apply(AddShard(shard("s1"), 8))
	c.converge(m, c.nodes...)

	old := c.leader()
	c.stop(old)
	var rest []*node
	for _, nd := range c.nodes {
		if nd != old {
			rest = append(rest, nd)
		}
	}
	nl := c.leader(rest...)
	if nl == old {
		t.Fatal("stopped node still leader")
	}
	m = c.apply(AddShard(shard("s2"), 8), rest...)
	m = c.apply(AddTable(Table{Name: "users"}), rest...)
	c.converge(m, rest...)

	// The old leader comes back on its stores and catches up.
	c.restart(old)
	c.converge(m, c.nodes...)
	m = c.apply(AddShard(shard("s3"), 8))
	c.converge(m, c.nodes...)
	if got := len(m.Ring().Shards()); got != 3 {
		t.Fatalf("ring has %d shards", got)
	}
}

func TestClusterPartition(t *testing.T) {
	c := newCluster(t, 3, 3)
	m := c.apply(AddShard(shard("s1"), 8))
	c.converge(m, c.nodes...)
	l := c.leader()
	var cut *node
	var majority []*node
	for _, nd := range c.nodes {
		if nd != l && cut == nil {
			cut = nd
		} else {
			majority = append(majority, nd)
		}
	}
	c.isolate(cut)
	for i := range 5 {
		m = c.apply(AddTable(Table{Name: fmt.Sprintf("t%d", i)}), majority...)
	}
	c.converge(m, majority...)
	if cut.s.Map().Version() >= m.Version() {
		t.Fatal("isolated follower got writes")
	}
	// The isolated node cannot write.
	if _, err := cut.s.Apply(ctxT(t, time.Second), AddTable(Table{Name: "lost"})); err == nil {
		t.Fatal("isolated node accepted a write")
	}
	c.connectAll()
	c.converge(m, c.nodes...)
	m = c.apply(AddShard(shard("s2"), 8))
	c.converge(m, c.nodes...)
}

func TestClusterNonvoter(t *testing.T) {
	c := newCluster(t, 3, 2) // n1, n2 voters; n3 non-voter
	nv := c.nodes[2]
	m := c.apply(AddShard(shard("s1"), 8))
	c.converge(m, c.nodes...)
	srv, err := c.nodes[0].s.Servers()
	if err != nil {
		t.Fatal(err)
	}
	if srv[2].ID != "n3" || srv[2].Suffrage != "nonvoter" || srv[0].Suffrage != "voter" || srv[1].Suffrage != "voter" {
		t.Fatalf("servers: %+v", srv)
	}
	// AddNonvoter does not demote a voter.
	l := c.leader()
	if err := l.s.AddNonvoter(ctxT(t, 5*time.Second), "n1", string(c.nodes[0].addr)); err != nil {
		t.Fatal(err)
	}
	// With one of the two voters gone, the non-voter does not make a
	// quorum: nothing commits, and the non-voter never becomes leader.
	other := c.nodes[0]
	if l == other {
		other = c.nodes[1]
	}
	c.stop(other)
	_, err = l.s.Apply(ctxT(t, time.Second), AddTable(Table{Name: "nope"}))
	if err == nil {
		t.Fatal("write committed without a quorum of voters")
	}
	if nv.s.IsLeader() {
		t.Fatal("non-voter became leader")
	}
	if v := nv.s.Map().Version(); v != m.Version() {
		t.Fatalf("non-voter at version %d", v)
	}
	// Voter back: the cluster recovers, the non-voter follows.
	c.restart(other)
	running := []*node{c.nodes[0], c.nodes[1]}
	m = c.apply(AddTable(Table{Name: "users"}), running...)
	// The uncommitted "nope" entry may or may not have survived the leader
	// change; compare the final maps.
	c.converge(c.leader(running...).s.Map(), c.nodes...)
	if nv.s.IsLeader() {
		t.Fatal("non-voter became leader")
	}
	if err := c.leader(running...).s.RemoveServer(ctxT(t, 5*time.Second), "n3"); err != nil {
		t.Fatal(err)
	}
	srv, _ = c.leader(running...).s.Servers()
	if len(srv) != 2 {
		t.Fatalf("servers after removal: %+v", srv)
	}
	_ = m
}

func testingEnv(k string) string { return os.Getenv(k) }
