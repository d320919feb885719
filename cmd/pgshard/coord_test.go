package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgshard/pgshard/admin"
	"github.com/pgshard/pgshard/config"
	"github.com/pgshard/pgshard/internal/testutil"
	"github.com/pgshard/pgshard/proxy"
	"github.com/pgshard/pgshard/shardmap"
)

const coordToken = "t0ken"

// lockedLog writes to t.Log until the test ends (raft's goroutines may log
// a little after).
type lockedLog struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func (w *lockedLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func coordLogger(t testing.TB) *slog.Logger {
	w := &lockedLog{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// coordNode is a shard map member with its admin API and a mapCoord, all
// in this process.
type coordNode struct {
	store *shardmap.Store
	api   *admin.Server
	ts    *httptest.Server
	url   string
	coord *mapCoord
	down  bool
	// applied is what the node's admin API reports as the map version
	// its proxy routes by (GET /v1/map/applied).
	applied *atomic.Uint64
	dir     string // the Raft state
}

func (n *coordNode) stop() {
	if n.down {
		return
	}
	n.down = true
	n.ts.Close()
	n.api.Close()
	_ = n.store.Close(context.Background())
}

func startCoordNode(t *testing.T, id string, bootstrap bool, peers ...string) *coordNode {
	t.Helper()
	return openCoordNode(t, id, "127.0.0.1:0", t.TempDir(), bootstrap, peers...)
}

// openCoordNode starts a member on raftAddr with its state in dir (a
// restart when dir holds one).
func openCoordNode(t *testing.T, id, raftAddr, dir string, bootstrap bool, peers ...string) *coordNode {
	t.Helper()
	log := coordLogger(t)
	st, err := shardmap.NewStore(shardmap.StoreConfig{
		NodeID: id, RaftAddr: raftAddr, DataDir: dir, Bootstrap: bootstrap, Join: !bootstrap, Logger: log,
		HeartbeatTimeout: 250 * time.Millisecond, ElectionTimeout: 250 * time.Millisecond,
		LeaderLeaseTimeout: 250 * time.Millisecond, CommitTimeout: 5 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(nil)
	url := "http://" + ts.Listener.Addr().String()
	applied := &atomic.Uint64{}
	api, err := admin.New(admin.Config{Store: st, Token: coordToken, AdminURL: url, Peers: peers,
		SyncInterval: 100 * time.Millisecond, LeaderWait: 5 * time.Second, Logger: log, AppliedVersion: applied.Load})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	api.Register(mux)
	ts.Config.Handler = mux
	ts.Start()
	api.Start(context.Background())
	n := &coordNode{store: st, api: api, ts: ts, url: url, coord: newMapCoord(st, url, coordToken, log), applied: applied, dir: dir}
	t.Cleanup(n.stop)
	return n
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// coordCluster starts three members: n0 bootstraps, n1 and n2 join it.
func coordCluster(t *testing.T) []*coordNode {
	t.Helper()
	ctx := testCtx(t)
	nodes := []*coordNode{startCoordNode(t, "n0", true)}
	testutil.WaitFor(t, 10*time.Second, "n0 leads", func() error {
		if !nodes[0].store.IsLeader() {
			return errors.New("not yet")
		}
		return nil
	})
	c := admin.NewClient(nodes[0].url, coordToken)
	for i := 1; i < 3; i++ {
		nd := startCoordNode(t, fmt.Sprintf("n%d", i), false, nodes[0].url)
		for attempt := 0; ; attempt++ {
			_, err := c.Join(ctx, admin.JoinRequest{ID: nd.store.ID(), Addr: nd.store.Addr(), AdminURL: nd.url})
			if err == nil {
				break
			}
			// On a loaded machine a heartbeat can time out while the
			// cluster grows: the leader steps down mid-join. Joining again
			// is idempotent.
			if attempt < 5 && (strings.Contains(err.Error(), "leadership lost") || strings.Contains(err.Error(), "no Raft leader") || strings.Contains(err.Error(), "not the leader")) {
				time.Sleep(500 * time.Millisecond)
				continue
			}
			t.Fatalf("join n%d: %v", i, err)
		}
		nodes = append(nodes, nd)
	}
	for _, nd := range nodes {
		testutil.WaitFor(t, 10*time.Second, nd.store.ID()+" knows the leader", func() error {
			if sv, err := nd.store.Servers(); err != nil || len(sv) != 3 || nd.store.LeaderID() == "" {
				return fmt.Errorf("servers %v, leader %q, %v", sv, nd.store.LeaderID(), err)
			}
			return nil
		})
	}
	return nodes
}

// leaderAndFollowers splits the running nodes.
func leaderAndFollowers(t *testing.T, nodes []*coordNode) (*coordNode, []*coordNode) {
	t.Helper()
	var l *coordNode
	var fs []*coordNode
	testutil.WaitFor(t, 10*time.Second, "one leader", func() error {
		l, fs = nil, nil
		for _, n := range nodes {
			if n.down {
				continue
			}
			if n.store.IsLeader() {
				l = n
			} else {
				fs = append(fs, n)
			}
		}
		if l == nil {
			return errors.New("no leader")
		}
		return nil
	})
	return l, fs
}

func TestMapCoordDecisions(t *testing.T) {
	nodes := coordCluster(t)
	ctx := testCtx(t)
	l, fs := leaderAndFollowers(t, nodes)

	// From a follower (forwarded to the leader), then a contrary decision
	// from the other follower and the leader: the first stands.
	for i, n := range []*coordNode{fs[0], fs[1], l} {
		got, err := n.coord.Decide(ctx, "pgshard_aa", i != 0)
		if err != nil {
			t.Fatal(err)
		}
		if got {
			t.Fatalf("decide #%d answered commit; the first decision was rollback", i)
		}
	}
	if got, err := l.coord.Decide(ctx, "pgshard_bb", true); err != nil || !got {
		t.Fatalf("decide on the leader: %v %v", got, err)
	}
	v := l.store.Map().Version()
	for _, n := range nodes {
		if err := n.store.WaitForVersion(ctx, v); err != nil {
			t.Fatal(err)
		}
		if c, ok, err := n.coord.Decision(ctx, "pgshard_aa"); err != nil || !ok || c {
			t.Fatalf("%s: pgshard_aa decision %v %v %v", n.store.ID(), c, ok, err)
		}
		if c, ok, _ := n.coord.Decision(ctx, "pgshard_bb"); !ok || !c {
			t.Fatalf("%s: pgshard_bb decision %v %v", n.store.ID(), c, ok)
		}
		if _, ok, _ := n.coord.Decision(ctx, "pgshard_cc"); ok {
			t.Fatal("a decision nobody took")
		}
	}
	ds, _ := l.coord.TxnDecisions(ctx)
	if len(ds) != 2 || ds[0].GID != "pgshard_aa" || ds[1].GID != "pgshard_bb" || time.Since(ds[0].At) > time.Minute {
		t.Fatalf("decisions: %+v", ds)
	}

	// Forget through a follower; forgetting again is no error.
	for range 2 {
		if err := fs[1].coord.Forget(ctx, "pgshard_aa"); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok, _ := l.coord.Decision(ctx, "pgshard_aa"); ok {
		t.Fatal("forgotten decision still on the leader")
	}

	// The leader goes away: a decision from a follower waits for the new
	// one, and the earlier decision survived.
	testutil.WaitFor(t, 5*time.Second, "followers know each other's admin URL", func() error {
		if fs[0].api.AdminURLOf(fs[1].store.ID()) != fs[1].url || fs[1].api.AdminURLOf(fs[0].store.ID()) != fs[0].url {
			return errors.New("not yet")
		}
		return nil
	})
	l.stop()
	if got, err := fs[0].coord.Decide(ctx, "pgshard_bb", false); err != nil || !got {
		t.Fatalf("decide after leader loss: %v %v", got, err)
	}
	if got, err := fs[1].coord.Decide(ctx, "pgshard_dd", true); err != nil || !got {
		t.Fatalf("new decision after leader loss: %v %v", got, err)
	}
}

func TestMapCoordRegisterTable(t *testing.T) {
	nodes := coordCluster(t)
	ctx := testCtx(t)
	l, fs := leaderAndFollowers(t, nodes)

	// Through a follower: on return, the follower's own map has it.
	if err := fs[0].coord.RegisterTable(ctx, shardmap.Table{Name: "orders"}); err != nil {
		t.Fatal(err)
	}
	if tb, ok := fs[0].store.Map().Table("orders"); !ok || tb.KeyColumn != shardmap.DefaultKeyColumn || tb.KeyType != shardmap.KeyInt {
		t.Fatalf("follower's map after RegisterTable: %+v %v", tb, ok)
	}
	// The key's position travels through the admin API too.
	if err := fs[0].coord.RegisterTable(ctx, shardmap.Table{Name: "placed", Kind: shardmap.TableSharded, KeyColumn: "user_id", KeyType: shardmap.KeyText, KeyOrdinal: 3}); err != nil {
		t.Fatal(err)
	}
	if tb, ok := fs[0].store.Map().Table("placed"); !ok || tb.KeyOrdinal != 3 || tb.KeyType != shardmap.KeyText {
		t.Fatalf("follower's map after RegisterTable with a key position: %+v %v", tb, ok)
	}
	// The same definition again, spelled out or not, from anywhere: no-op.
	same := shardmap.Table{Name: "orders", Kind: shardmap.TableSharded, KeyColumn: "user_id", KeyType: shardmap.KeyInt}
	v := l.store.Map().Version()
	for _, n := range nodes {
		if err := n.coord.RegisterTable(ctx, same); err != nil {
			t.Fatalf("%s: same definition: %v", n.store.ID(), err)
		}
	}
	if l.store.Map().Version() != v {
		t.Fatal("registering an existing table changed the map")
	}
	// Another definition is an error, through the leader and followers.
	for _, n := range nodes {
		err := n.coord.RegisterTable(ctx, shardmap.Table{Name: "orders", KeyColumn: "account_id"})
		if err == nil || !strings.Contains(err.Error(), "already registered") {
			t.Fatalf("%s: other definition: %v", n.store.ID(), err)
		}
	}
	// Registered concurrently through both followers: both succeed and
	// each follower routes by it on return.
	var wg sync.WaitGroup
	errs := make([]error, len(fs))
	for i, f := range fs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f.coord.RegisterTable(ctx, shardmap.Table{Name: "plans", Kind: shardmap.TableReference})
		}()
	}
	wg.Wait()
	for i, f := range fs {
		if errs[i] != nil {
			t.Fatalf("%s: %v", f.store.ID(), errs[i])
		}
		if tb, ok := f.store.Map().Table("plans"); !ok || tb.Kind != shardmap.TableReference {
			t.Fatalf("%s: plans %+v %v", f.store.ID(), tb, ok)
		}
	}
	// An invalid definition is refused, not retried forever.
	if err := fs[1].coord.RegisterTable(ctx, shardmap.Table{Name: "bad name"}); err == nil {
		t.Fatal("invalid table registered")
	}
}

// A member restarted from a snapshot holds the snapshot's map, older than
// the cluster's, until a leader tells it what is committed; catchUp
// returns only once it holds everything committed before the call.
func TestCatchUpAfterRestartFromSnapshot(t *testing.T) {
	nodes := coordCluster(t)
	ctx := testCtx(t)
	l, fs := leaderAndFollowers(t, nodes)
	f := fs[0]
	if err := l.coord.RegisterTable(ctx, shardmap.Table{Name: "before"}); err != nil {
		t.Fatal(err)
	}
	if err := f.store.WaitForVersion(ctx, l.store.Map().Version()); err != nil {
		t.Fatal(err)
	}
	if err := f.store.Snapshot(); err != nil {
		t.Fatal(err)
	}
	id, addr, dir := f.store.ID(), f.store.Addr(), f.dir
	f.stop()
	for _, name := range []string{"after1", "after2"} {
		if err := l.coord.RegisterTable(ctx, shardmap.Table{Name: name}); err != nil {
			t.Fatal(err)
		}
	}
	want := l.store.Map().Version()

	r := openCoordNode(t, id, addr, dir, false, l.url)
	nodes[slices.Index(nodes, f)] = r
	if v := r.store.Map().Version(); v >= want {
		t.Fatalf("restarted from its snapshot, the member's map is at version %d already (the cluster's is %d): nothing to catch up", v, want)
	} else {
		t.Logf("restarted at map version %d; the cluster's is %d", v, want)
	}
	// The node's follow loop hands its proxy no map before it caught up.
	proxy := &mapRecorder{maps: make(chan *shardmap.Map, 64)}
	fctx, stopFollow := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		(&clusterNode{store: r.store, log: coordLogger(t)}).follow(fctx, proxy, r.coord)
	}()
	defer func() { stopFollow(); <-done }()
	var m *shardmap.Map
	select {
	case m = <-proxy.maps:
	case <-ctx.Done():
		t.Fatal("the proxy got no map")
	}
	if m.Version() <= want {
		t.Fatalf("the proxy's first map is at version %d, want more than %d (the sync's own entry)", m.Version(), want)
	}
	if _, ok := m.Table("after2"); !ok {
		t.Fatal("the proxy's first map lacks a table registered while the node was down")
	}
	// The leader and the other follower catch up at once.
	for _, n := range []*coordNode{l, fs[1]} {
		if err := n.coord.catchUp(ctx); err != nil {
			t.Fatalf("%s: %v", n.store.ID(), err)
		}
	}
}

// mapRecorder is a proxy that records the maps it is given.
type mapRecorder struct{ maps chan *shardmap.Map }

func (p *mapRecorder) SetMap(m *shardmap.Map)           { p.maps <- m }
func (p *mapRecorder) SetShards(s []config.Shard) error { return nil }

// countingRecoverer counts recovery passes.
type countingRecoverer struct{ n atomic.Int64 }

func (r *countingRecoverer) RecoverPrepared(context.Context, time.Duration) (proxy.RecoverStats, error) {
	r.n.Add(1)
	return proxy.RecoverStats{}, nil
}

func TestRecoverLoopRunsOnTheLeaderOnly(t *testing.T) {
	nodes := coordCluster(t)
	l, _ := leaderAndFollowers(t, nodes)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	recs := make([]*countingRecoverer, len(nodes))
	for i, n := range nodes {
		recs[i] = &countingRecoverer{}
		cn := &clusterNode{log: coordLogger(t), store: n.store}
		wg.Add(1)
		go func() { defer wg.Done(); cn.recoverLoop(ctx, recs[i], 10*time.Millisecond, time.Minute) }()
	}
	testutil.WaitFor(t, 10*time.Second, "a few passes on the leader", func() error {
		for i, n := range nodes {
			if n == l && recs[i].n.Load() < 3 {
				return fmt.Errorf("%d passes", recs[i].n.Load())
			}
		}
		return nil
	})
	cancel()
	wg.Wait() // the loops end with their context
	for i, n := range nodes {
		if n != l && recs[i].n.Load() != 0 {
			t.Errorf("follower %s ran %d passes", n.store.ID(), recs[i].n.Load())
		}
	}
}
