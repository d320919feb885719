package admin_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgshard/pgshard/admin"
	"github.com/pgshard/pgshard/internal/testutil"
	"github.com/pgshard/pgshard/shardmap"
)

const token = "s3cret"

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

func testLogger(t testing.TB) *slog.Logger {
	w := &tlog{t: t}
	t.Cleanup(func() { w.mu.Lock(); w.done = true; w.mu.Unlock() })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type node struct {
	store  *shardmap.Store
	srv    *admin.Server
	ts     *httptest.Server
	url    string
	client *admin.Client
	closed bool
}

func (n *node) close() {
	if n.closed {
		return
	}
	n.closed = true
	n.ts.Close()
	n.srv.Close()
	_ = n.store.Close(context.Background())
}

// startNode opens a store on disk with TCP on 127.0.0.1 and serves its
// admin API; peers are admin URLs to sync the directory from.
func startNode(t *testing.T, id string, bootstrap bool, peers ...string) *node {
	t.Helper()
	return startNodeWith(t, id, bootstrap, nil, peers...)
}

// startNodeWith is startNode with mod applied to the admin configuration.
func startNodeWith(t *testing.T, id string, bootstrap bool, mod func(*admin.Config), peers ...string) *node {
	t.Helper()
	st, err := shardmap.NewStore(shardmap.StoreConfig{
		NodeID: id, RaftAddr: "127.0.0.1:0", DataDir: t.TempDir(), Bootstrap: bootstrap, Join: !bootstrap,
		Logger:           testLogger(t),
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
	cfg := admin.Config{Store: st, Token: token, AdminURL: url, Peers: peers,
		SyncInterval: 100 * time.Millisecond, LeaderWait: 5 * time.Second, Logger: testLogger(t)}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := admin.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	srv.Register(mux)
	ts.Config.Handler = mux
	ts.Start()
	srv.Start(context.Background())
	n := &node{store: st, srv: srv, ts: ts, url: url, client: admin.NewClient(url, token)}
	t.Cleanup(n.close)
	return n
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func apiCode(err error) admin.ErrorCode {
	var ae *admin.APIError
	if errors.As(err, &ae) {
		return ae.Code
	}
	return ""
}

// cluster starts n0 (bootstrapped) and joins the others through n0's API.
func cluster(t *testing.T, n int) []*node {
	t.Helper()
	return clusterWith(t, n, nil)
}

// clusterWith is cluster with mod(i, cfg) applied to node i's admin
// configuration.
func clusterWith(t *testing.T, n int, mod func(int, *admin.Config)) []*node {
	t.Helper()
	ctx := ctxT(t)
	modOf := func(i int) func(*admin.Config) {
		if mod == nil {
			return nil
		}
		return func(c *admin.Config) { mod(i, c) }
	}
	nodes := []*node{startNodeWith(t, "n0", true, modOf(0))}
	testutil.WaitFor(t, 10*time.Second, "n0 leads", func() error {
		if !nodes[0].store.IsLeader() {
			return errors.New("not yet")
		}
		return nil
	})
	for i := 1; i < n; i++ {
		nd := startNodeWith(t, fmt.Sprintf("n%d", i), false, modOf(i), nodes[0].url)
		// On a loaded machine the leader may lose its leadership while it
		// adds a member; adding one that is there already changes nothing.
		retry(t, fmt.Sprintf("join n%d", i), func() error {
			_, err := nodes[0].client.Join(ctx, admin.JoinRequest{ID: nd.store.ID(), Addr: nd.store.Addr(), AdminURL: nd.url})
			return err
		}, "-")
		nodes = append(nodes, nd)
	}
	for _, nd := range nodes {
		testutil.WaitFor(t, 10*time.Second, nd.store.ID()+" sees all members", func() error {
			sv, err := nd.store.Servers()
			if err != nil || len(sv) != n || nd.store.LeaderID() == "" {
				return fmt.Errorf("servers %v, leader %q, %v", sv, nd.store.LeaderID(), err)
			}
			return nil
		})
	}
	return nodes
}

func TestAuth(t *testing.T) {
	nodes := cluster(t, 1)
	for _, tok := range []string{"", "wrong", token + "x"} {
		_, err := admin.NewClient(nodes[0].url, tok).Status(ctxT(t))
		if apiCode(err) != admin.CodeUnauthorized {
			t.Errorf("token %q: err = %v, want unauthorized", tok, err)
		}
	}
	resp, err := http.Get(nodes[0].url + "/v1/shards")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 401 || !strings.Contains(string(b), `"code": "unauthorized"`) || !strings.Contains(string(b), "hint") {
		t.Errorf("GET without token: %s %s", resp.Status, b)
	}
	if _, err := nodes[0].client.Status(ctxT(t)); err != nil {
		t.Errorf("with token: %v", err)
	}
}

func TestClusterWritesForwardedAndErrors(t *testing.T) {
	nodes := cluster(t, 3)
	ctx := ctxT(t)
	f := nodes[2].client // a follower

	st, err := f.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.NodeID != "n2" || st.LeaderID != "n0" || st.IsLeader || len(st.Servers) != 3 {
		t.Fatalf("status of n2: %+v", st)
	}
	for _, s := range st.Servers {
		if s.Suffrage != "voter" {
			t.Errorf("server %s suffrage %s", s.ID, s.Suffrage)
		}
	}

	// The first shard is placed on the ring even without place.
	r, err := f.AddShard(ctx, admin.AddShardRequest{Name: "s0", Primary: "host=127.0.0.1 port=1"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Shard.Ownership != 1 || r.Shard.State != shardmap.ShardActive {
		t.Errorf("first shard: %+v", r)
	}
	// Read-your-writes on the follower that forwarded.
	if v := nodes[2].store.Map().Version(); v < r.MapVersion {
		t.Errorf("follower at version %d after a write that produced %d", v, r.MapVersion)
	}
	r, err = f.AddShard(ctx, admin.AddShardRequest{Name: "s1", Primary: "host=127.0.0.1 port=2", Place: true, Replicas: []string{"host=127.0.0.1 port=3"}})
	if err != nil {
		t.Fatal(err)
	}
	if r.Shard.Ownership < 0.49 || r.Shard.Ownership > 0.51 || r.Shard.Tokens == 0 {
		t.Errorf("second placed shard: %+v", r.Shard)
	}
	r, err = f.AddShard(ctx, admin.AddShardRequest{Name: "spare", Primary: "host=127.0.0.1 port=4"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Shard.State != shardmap.ShardJoining || r.Shard.Ownership != 0 {
		t.Errorf("spare: %+v", r.Shard)
	}
	if _, err := f.AddShard(ctx, admin.AddShardRequest{Name: "s1", Primary: "x"}); apiCode(err) != admin.CodeShardExists {
		t.Errorf("duplicate shard: %v", err)
	}
	if _, err := f.RemoveShard(ctx, "s1"); apiCode(err) != admin.CodeShardOnRing {
		t.Errorf("remove shard on ring: %v", err)
	}
	if _, err := f.RemoveShard(ctx, "spare"); err != nil {
		t.Errorf("remove spare: %v", err)
	}
	if _, err := f.SetEndpoints(ctx, "nope", admin.EndpointsRequest{Primary: "x"}); apiCode(err) != admin.CodeUnknownShard {
		t.Errorf("set-endpoints unknown: %v", err)
	}
	if _, err := f.SetEndpoints(ctx, "s1", admin.EndpointsRequest{Primary: "host=127.0.0.1 port=5"}); err != nil {
		t.Errorf("set-endpoints: %v", err)
	}
	if _, err := f.AddTable(ctx, admin.AddTableRequest{Name: "orders"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.AddTable(ctx, admin.AddTableRequest{Name: "users", KeyColumn: "id", KeyType: "text"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.AddTable(ctx, admin.AddTableRequest{Name: "countries", Kind: "reference"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.AddTable(ctx, admin.AddTableRequest{Name: "orders"}); apiCode(err) != admin.CodeTableExists {
		t.Errorf("duplicate table: %v", err)
	}
	if _, err := f.AddTable(ctx, admin.AddTableRequest{Name: "x", KeyType: "float"}); apiCode(err) != admin.CodeBadRequest {
		t.Errorf("bad key type: %v", err)
	}
	if _, err := f.RemoveTable(ctx, "countries"); err != nil {
		t.Error(err)
	}
	if _, err := f.RemoveTable(ctx, "countries"); apiCode(err) != admin.CodeUnknownTable {
		t.Errorf("remove unknown table: %v", err)
	}

	// Every node answers reads from its own copy and converges.
	lead := nodes[0].store.Map()
	for _, n := range nodes {
		testutil.WaitFor(t, 5*time.Second, n.store.ID()+" catches up", func() error {
			if v := n.store.Map().Version(); v != lead.Version() {
				return fmt.Errorf("version %d, leader %d", v, lead.Version())
			}
			return nil
		})
		tl, err := n.client.Tables(ctx)
		if err != nil || len(tl.Tables) != 2 || tl.Tables[0].Name != "orders" || tl.Tables[0].KeyColumn != "user_id" ||
			tl.Tables[1].KeyType != shardmap.KeyText {
			t.Errorf("%s tables: %+v %v", n.store.ID(), tl, err)
		}
		sl, err := n.client.Shards(ctx)
		if err != nil || len(sl.Shards) != 2 || sl.Shards[1].Primary != "host=127.0.0.1 port=5" || len(sl.Shards[1].Replicas) != 0 {
			t.Errorf("%s shards: %+v %v", n.store.ID(), sl, err)
		}
		v, m, err := n.client.Map(ctx)
		if err != nil || m.Version() != lead.Version() || m.Ring().Len() != lead.Ring().Len() || len(v.Ownership) != 2 {
			t.Errorf("%s map: %+v %v", n.store.ID(), v, err)
		}
		for _, key := range []string{"42", "-1", "0", "9223372036854775807"} {
			loc, err := n.client.Locate(ctx, key, "int")
			if err != nil {
				t.Fatal(err)
			}
			var k int64
			fmt.Sscan(key, &k)
			if loc.Hash != shardmap.HashInt64(k) || loc.Shard != lead.Ring().Lookup(loc.Hash) ||
				!(shardmap.Range{Start: loc.RangeStart, End: loc.RangeEnd}).Contains(loc.Hash) {
				t.Errorf("locate %s: %+v", key, loc)
			}
		}
	}
	if _, err := f.Locate(ctx, "abc", "int"); apiCode(err) != admin.CodeInvalidKey {
		t.Errorf("locate bad key: %v", err)
	}
	if loc, err := f.Locate(ctx, "héllo", "text"); err != nil || loc.Hash != shardmap.HashText("héllo") {
		t.Errorf("locate text: %+v %v", loc, err)
	}

	// A write through the leader is seen by the next read through a
	// follower (which catches up to the leader's version first).
	for i := range 10 {
		name := fmt.Sprintf("rw%d", i)
		if _, err := nodes[0].client.AddTable(ctx, admin.AddTableRequest{Name: name}); err != nil {
			t.Fatal(err)
		}
		tl, err := nodes[1+i%2].client.Tables(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.ContainsFunc(tl.Tables, func(tb shardmap.Table) bool { return tb.Name == name }) {
			t.Errorf("table %s written through the leader is not seen by the next read through n%d (version %d)", name, 1+i%2, tl.MapVersion)
		}
	}

	// Leave through a follower, then the status shows two servers.
	if _, err := f.Leave(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	nodes[1].close()
	if _, err := f.Leave(ctx, "n1"); apiCode(err) != admin.CodeUnknownServer {
		t.Errorf("leave twice: %v", err)
	}
	st, err = nodes[0].client.Status(ctx)
	if err != nil || len(st.Servers) != 2 {
		t.Errorf("status after leave: %+v %v", st, err)
	}
}

// TestForwardAfterLeaderLoss: n2 knows only n0's URL from its configuration;
// after n0 dies and n1 wins, n2 forwards to n1 thanks to the nodes directory.
func TestForwardAfterLeaderLoss(t *testing.T) {
	nodes := cluster(t, 3)
	ctx := ctxT(t)
	if _, err := nodes[2].client.AddShard(ctx, admin.AddShardRequest{Name: "s0", Primary: "p0"}); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 5*time.Second, "n1 and n2 learn each other's admin URL", func() error {
		if nodes[2].srv.AdminURLOf("n1") != nodes[1].url || nodes[1].srv.AdminURLOf("n2") != nodes[2].url {
			return errors.New("not yet")
		}
		return nil
	})
	nodes[0].close()
	// On a loaded machine a fresh leader may lose its leadership again; the
	// API says so (leadership_lost) and the change may or may not be there.
	var r *admin.AddShardResult
	retry(t, "add s1 through n2", func() (err error) {
		r, err = nodes[2].client.AddShard(ctx, admin.AddShardRequest{Name: "s1", Primary: "p1", Place: true})
		return err
	}, admin.CodeShardExists)
	retry(t, "add t1 through n1", func() error {
		_, err := nodes[1].client.AddTable(ctx, admin.AddTableRequest{Name: "t1"})
		return err
	}, admin.CodeTableExists)
	if r == nil {
		r = &admin.AddShardResult{}
	}
	st, err := nodes[2].client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.LeaderID == "n0" || st.LeaderID == "" || st.LeaderAdminURL == "" || st.MapVersion < r.MapVersion {
		t.Errorf("status after failover: %+v", st)
	}
}

// retry repeats a write that failed with leadership_lost (or no_leader);
// after such a failure, done (the change was applied after all) counts as
// success.
func retry(t *testing.T, what string, f func() error, done admin.ErrorCode) {
	t.Helper()
	uncertain := false
	for i := 0; ; i++ {
		err := f()
		switch code := apiCode(err); {
		case err == nil:
			return
		case uncertain && code == done:
			return
		case (code == admin.CodeLeadershipLost || code == admin.CodeNoLeader) && i < 5:
			t.Logf("%s: %v; retrying", what, err)
			uncertain = true
		default:
			t.Fatalf("%s: %v", what, err)
		}
	}
}

func TestStaticStoreReadsOnly(t *testing.T) {
	m, err := admin.StaticMap([]shardmap.Shard{{Name: "a", Primary: "pa"}, {Name: "b", Primary: "pb"}})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := admin.New(admin.Config{Store: &admin.StaticStore{NodeID: "solo", M: m}})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	srv.Register(mux)
	ts := httptest.NewServer(mux)
	defer ts.Close()
	c := admin.NewClient(ts.URL, "")
	loc, err := c.Locate(ctxT(t), "42", "")
	if err != nil || loc.Hash != shardmap.HashInt64(42) || loc.Shard != m.Ring().Lookup(loc.Hash) {
		t.Errorf("locate: %+v %v", loc, err)
	}
	if _, err := c.AddTable(ctxT(t), admin.AddTableRequest{Name: "t"}); apiCode(err) != admin.CodeNoCluster {
		t.Errorf("write without cluster: %v", err)
	}
	if _, err := c.Status(ctxT(t)); err != nil {
		t.Error(err)
	}
}
