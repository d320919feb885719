package shardedtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgshard/pgshard/config"
	"github.com/pgshard/pgshard/internal/testutil"
	"github.com/pgshard/pgshard/proxy"
	"github.com/pgshard/pgshard/shardmap"
	"github.com/pgshard/pgshard/topology"
	"github.com/pgshard/pgshard/topology/topotest"
)

// plainShard is the index of the topology shard whose primary plays the
// "plain PostgreSQL" the differential test compares pgshard against. It is
// never in pgshard's configuration or map.
const plainShard = 3

// vnodes is the number of ring tokens per shard.
const vnodes = 16

// TestMain runs the tests on one shared topology of four single-replica
// shards (shards 0..2 for pgshard, shard 3 as the plain server), then fails
// the package if any goroutine is left behind.
func TestMain(m *testing.M) {
	os.Exit(testutil.NoLeaks(topotest.Run(m, topology.Config{Shards: 4, Replicas: 1})))
}

// cluster is a pgshard proxy over n shards of the shared topology, with a
// fresh database on every server.
type cluster struct {
	t    *testing.T
	topo *topology.Topology
	n    int
	db   string
	srv  *proxy.Server
	addr string

	mu  sync.Mutex
	cur *shardmap.Map // the map the proxy routes by

	txns *memTxnLog
}

// shardName is the name of topology shard i in pgshard's config and map.
func shardName(i int) string { return fmt.Sprintf("shard%d", i) }

// startSharded starts a proxy whose map spreads the ring over the first n
// shards of the shared topology (n < plainShard+1 leaves the plain server
// out), with an in-memory table registrar and two-phase commit log.
func startSharded(t *testing.T, n int) *cluster {
	t.Helper()
	topo := topotest.Shared(t)
	if n < 1 || n > plainShard {
		t.Fatalf("startSharded: %d shards; the topology has %d for pgshard", n, plainShard)
	}
	db := topotest.NewDatabase(t, topo)

	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.AdminListen = ""
	cfg.Users = []config.User{{Name: "app", Password: "app"}}
	cfg.Pool.Size = 4
	m := &shardmap.Map{}
	for i := 0; i < n; i++ {
		sh := topo.Shards[i]
		var reps []string
		for _, r := range sh.Replicas {
			reps = append(reps, r.DSN())
		}
		cfg.Shards = append(cfg.Shards, config.Shard{Name: shardName(i), Primary: sh.Primary.DSN(), Replicas: reps})
		var err error
		m, err = m.Apply(shardmap.AddShard(shardmap.Shard{Name: shardName(i), Primary: sh.Primary.DSN(), Replicas: reps}, vnodes))
		if err != nil {
			t.Fatalf("map: add %s: %v", shardName(i), err)
		}
	}
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := proxy.New(cfg, logger, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, topo: topo, n: n, db: db, srv: srv, cur: m, txns: &memTxnLog{decided: map[string]bool{}}}
	srv.SetMap(m)
	srv.SetRegistrar(memRegistrar{c})
	srv.SetTxnLog(c.txns)

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	c.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		if err := srv.Shutdown(sctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return c
}

// Map returns the map the proxy currently routes by.
func (c *cluster) Map() *shardmap.Map {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

// addTable registers t in the map as pgshard would after CREATE TABLE (or
// as `pgshardctl tables add` does) and makes the proxy route by it. A
// table already registered with the same definition is not an error.
func (c *cluster) addTable(t shardmap.Table) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	next, err := c.cur.Apply(shardmap.AddTable(t))
	if errors.Is(err, shardmap.ErrTableExists) {
		if have, ok := c.cur.Table(t.Name); ok && sameTable(have, t) {
			return nil
		}
	}
	if err != nil {
		return err
	}
	c.cur = next
	c.srv.SetMap(next)
	return nil
}

// sameTable compares definitions, filling the defaults AddTable fills.
func sameTable(a, b shardmap.Table) bool {
	norm := func(t shardmap.Table) shardmap.Table {
		if t.Kind == "" {
			t.Kind = shardmap.TableSharded
		}
		if t.Kind == shardmap.TableSharded {
			if t.KeyColumn == "" {
				t.KeyColumn = shardmap.DefaultKeyColumn
			}
			if t.KeyType == 0 {
				t.KeyType = shardmap.KeyInt
			}
		}
		return t
	}
	return norm(a) == norm(b)
}

// memRegistrar is the Raft map's table registry, in memory.
type memRegistrar struct{ c *cluster }

func (r memRegistrar) RegisterTable(_ context.Context, t shardmap.Table) error {
	return r.c.addTable(t)
}

func (r memRegistrar) UnregisterTable(_ context.Context, name string) error {
	r.c.mu.Lock()
	defer r.c.mu.Unlock()
	next, err := r.c.cur.Apply(shardmap.RemoveTable(name))
	if errors.Is(err, shardmap.ErrUnknownTable) {
		return nil
	}
	if err != nil {
		return err
	}
	r.c.cur = next
	r.c.srv.SetMap(next)
	return nil
}

// memTxnLog is the Raft map's two-phase commit log, in memory: the first
// decision for a gid wins.
type memTxnLog struct {
	mu      sync.Mutex
	decided map[string]bool
	decides int // Decide calls, for the summary
}

func (l *memTxnLog) Decide(_ context.Context, gid string, commit bool) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.decides++
	if c, ok := l.decided[gid]; ok {
		return c, nil
	}
	l.decided[gid] = commit
	return commit, nil
}

func (l *memTxnLog) Decision(_ context.Context, gid string) (bool, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, ok := l.decided[gid]
	return c, ok, nil
}

func (l *memTxnLog) Forget(_ context.Context, gid string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.decided, gid)
	return nil
}

func (l *memTxnLog) stats() (decides, open int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.decides, len(l.decided)
}

// url is the connection URL through pgshard.
func (c *cluster) url() string {
	host, port, _ := net.SplitHostPort(c.addr)
	return fmt.Sprintf("postgres://app:app@%s:%s/%s?sslmode=disable", host, port, c.db)
}

// connect opens a connection through pgshard, closed at the test's end.
func (c *cluster) connect(ctx context.Context) *pgx.Conn {
	c.t.Helper()
	return dial(c.t, ctx, c.url(), "pgshard")
}

// connectShard opens a connection straight to shard i's primary.
func (c *cluster) connectShard(ctx context.Context, i int) *pgx.Conn {
	c.t.Helper()
	return dial(c.t, ctx, c.topo.Shards[i].Primary.URL("app", "app", c.db), shardName(i))
}

// connectPlain opens a connection to the plain PostgreSQL server.
func (c *cluster) connectPlain(ctx context.Context) *pgx.Conn {
	c.t.Helper()
	return dial(c.t, ctx, c.topo.Shards[plainShard].Primary.URL("app", "app", c.db), "plain PostgreSQL")
}

func dial(t *testing.T, ctx context.Context, url, what string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect to %s: %v", what, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// waitReplicas waits until every shard's replicas replayed their primary.
func (c *cluster) waitReplicas(ctx context.Context) {
	c.t.Helper()
	for i := 0; i < c.n; i++ {
		if err := c.topo.Shards[i].WaitCaughtUp(ctx); err != nil {
			c.t.Fatalf("%s: %v", shardName(i), err)
		}
	}
}

// owner returns the shard (by index) that the current ring assigns to a
// key of type kt given in text form.
func (c *cluster) owner(kt shardmap.KeyType, key string) int {
	c.t.Helper()
	h, err := shardmap.HashKey(kt, key)
	if err != nil {
		c.t.Fatalf("hash %q: %v", key, err)
	}
	name := c.Map().Ring().Lookup(h)
	for i := 0; i < c.n; i++ {
		if shardName(i) == name {
			return i
		}
	}
	c.t.Fatalf("ring owner %q of %q is not a shard of the cluster", name, key)
	return -1
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

var _ io.Writer = testWriter{}
