package proxy_test

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgshard/pgshard/config"
	"github.com/pgshard/pgshard/topology"
	"github.com/pgshard/pgshard/topology/topotest"
)

var dbopsSeq atomic.Int64

// scratchDB creates a database owned by app directly on the primary, to be
// dropped (if still there) when the test ends.
func scratchDB(t *testing.T, topo *topology.Topology) string {
	t.Helper()
	name := fmt.Sprintf("dbops_%d_%d", time.Now().UnixNano()%1e9, dbopsSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := topo.Shards[0].Primary.Exec(ctx, "postgres", fmt.Sprintf(`CREATE DATABASE %q OWNER app`, name)); err != nil {
		t.Fatal(err)
	}
	dropAtEnd(t, topo, name)
	if err := topo.Shards[0].WaitCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	return name
}

func dropAtEnd(t *testing.T, topo *topology.Topology, name string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := topo.Shards[0].Primary.Exec(ctx, "postgres", fmt.Sprintf(`DROP DATABASE IF EXISTS %q WITH (FORCE)`, name)); err != nil {
			t.Errorf("drop %s: %v", name, err)
		}
	})
}

// connectDB connects through pgshard to database db.
func (h *harness) connectDB(ctx context.Context, db string) *pgconn.PgConn {
	h.t.Helper()
	host, port, _ := net.SplitHostPort(h.addr)
	c, err := pgconn.Connect(ctx, fmt.Sprintf("postgres://app:app@%s:%s/%s?sslmode=disable", host, port, db))
	if err != nil {
		h.t.Fatalf("connect to %s through pgshard: %v", db, err)
	}
	h.t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// backendsOn counts the sessions connected to db on the shard's primary.
func backendsOn(t *testing.T, topo *topology.Topology, db string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := topo.Shards[0].Primary.QueryValue(ctx, "postgres",
		fmt.Sprintf("SELECT count(*) FROM pg_stat_activity WHERE datname = '%s'", db))
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(v)
	return n
}

// warm runs queries on every client at once, so that pgshard opens several
// backends to their database (reads on replicas, writes on the primary)
// and keeps them idle in its pools.
func warm(t *testing.T, ctx context.Context, clients []*pgconn.PgConn) {
	t.Helper()
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, q := range []string{"SELECT pg_sleep(0.05)", "SELECT txid_current(), pg_sleep(0.05)"} {
				if _, err := c.Exec(ctx, q).ReadAll(); err != nil {
					t.Errorf("%s: %v", q, err)
				}
			}
		}()
	}
	wg.Wait()
}

// CREATE DATABASE ... TEMPLATE a, ALTER DATABASE ... RENAME and DROP
// DATABASE succeed through pgshard while its pools (primary and replicas,
// transaction pooling) hold idle connections to the database, as Django's
// test runner needs.
func TestDatabaseDDLWithIdlePooledConnections(t *testing.T) {
	topo := topotest.Shared(t)
	h := startProxyOn(t, topo, withReplicas(topo, nil))
	ctx := testCtx(t)
	a := scratchDB(t, h.topo)
	var clients []*pgconn.PgConn
	for range 4 {
		clients = append(clients, h.connectDB(ctx, a))
	}
	warm(t, ctx, clients)
	if n := backendsOn(t, h.topo, a); n < 2 {
		t.Fatalf("pgshard holds %d connections to %s on the primary; the test needs idle pooled ones", n, a)
	}
	admin := h.connectDB(ctx, h.db) // another database

	b := a + "_b"
	dropAtEnd(t, h.topo, b)
	if _, err := admin.Exec(ctx, fmt.Sprintf(`CREATE DATABASE %q TEMPLATE %q`, b, a)).ReadAll(); err != nil {
		t.Fatalf("CREATE DATABASE ... TEMPLATE with idle pooled connections on the template: %v", err)
	}
	// The pools on a work again afterwards.
	warm(t, ctx, clients)

	// Idle pooled connections on b, then rename it.
	cb := h.connectDB(ctx, b)
	if _, err := cb.Exec(ctx, "SELECT txid_current()").ReadAll(); err != nil {
		t.Fatal(err)
	}
	c := b + "_c"
	dropAtEnd(t, h.topo, c)
	if _, err := admin.Exec(ctx, fmt.Sprintf(`ALTER DATABASE %q RENAME TO %q`, b, c)).ReadAll(); err != nil {
		t.Fatalf("ALTER DATABASE ... RENAME with idle pooled connections: %v", err)
	}

	if n := backendsOn(t, h.topo, a); n < 1 {
		t.Fatalf("pgshard holds no connection to %s before the DROP", a)
	}
	start := time.Now()
	if _, err := admin.Exec(ctx, fmt.Sprintf(`DROP DATABASE %q`, a)).ReadAll(); err != nil {
		t.Fatalf("DROP DATABASE with idle pooled connections: %v", err)
	}
	t.Logf("DROP DATABASE took %s", time.Since(start).Round(time.Millisecond))
	// DROP DATABASE IF EXISTS ... WITH (FORCE) of the renamed one, with an
	// idle pooled connection on it again.
	cc := h.connectDB(ctx, c)
	if _, err := cc.Exec(ctx, "SELECT txid_current()").ReadAll(); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, fmt.Sprintf(`DROP DATABASE IF EXISTS %q WITH (FORCE)`, c)).ReadAll(); err != nil {
		t.Fatalf("DROP DATABASE ... WITH (FORCE): %v", err)
	}
	// A client of the dropped database gets PostgreSQL's error, not a hang.
	_, err := clients[0].Exec(ctx, "SELECT 1").ReadAll()
	if code := sqlState(err); code != "3D000" {
		t.Fatalf("query on the dropped database: %v (%s), want 3D000", err, code)
	}
}

// A client that holds a transaction open on the database keeps it busy:
// DROP DATABASE gets PostgreSQL's own 55006, nothing hangs, other clients
// of the database that asked for a backend meanwhile are served after it,
// and once the transaction ends the DROP succeeds. A DROP of the client's
// own database gets PostgreSQL's refusal at once.
func TestDropDatabaseBusyElsewhere(t *testing.T) {
	h := startProxy(t, func(c *config.Config) { c.Pool.WaitTimeout = config.Duration{Duration: 15 * time.Second} })
	ctx := testCtx(t)
	a := scratchDB(t, h.topo)
	tx := h.connectDB(ctx, a)
	idle := h.connectDB(ctx, a)
	late := h.connectDB(ctx, a)
	warm(t, ctx, []*pgconn.PgConn{tx, idle, late})
	if _, err := tx.Exec(ctx, "BEGIN; SELECT txid_current()").ReadAll(); err != nil {
		t.Fatal(err)
	}

	// The client's own database: refused by PostgreSQL, no wait.
	start := time.Now()
	_, err := idle.Exec(ctx, fmt.Sprintf(`DROP DATABASE %q`, a)).ReadAll()
	if code := sqlState(err); code != "55006" {
		t.Fatalf("DROP of the client's own database: %v, want 55006", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("DROP of the client's own database took %s", d)
	}

	admin := h.connectDB(ctx, h.db)
	dropErr := make(chan error, 1)
	start = time.Now()
	go func() {
		_, err := admin.Exec(ctx, fmt.Sprintf(`DROP DATABASE %q`, a)).ReadAll()
		dropErr <- err
	}()
	// While PostgreSQL waits for the busy session, another client of the
	// database asks for a backend: it waits for the statement to end.
	time.Sleep(500 * time.Millisecond)
	lateErr := make(chan error, 1)
	go func() {
		_, err := late.Exec(ctx, "SELECT 1").ReadAll()
		lateErr <- err
	}()
	select {
	case err := <-dropErr:
		if code := sqlState(err); code != "55006" {
			t.Fatalf("DROP DATABASE while another client is in a transaction there: %v, want 55006", err)
		}
		t.Logf("DROP DATABASE failed after %s: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(30 * time.Second):
		t.Fatalf("DROP DATABASE hangs\n%s", h.srv.DebugSessions())
	}
	select {
	case err := <-lateErr:
		if err != nil {
			t.Fatalf("a client of the database that waited during the DROP: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("a client of the database hangs after the DROP failed\n%s", h.srv.DebugSessions())
	}
	// The transaction goes on as if nothing happened, and ends.
	if _, err := tx.Exec(ctx, "SELECT 1; COMMIT").ReadAll(); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, fmt.Sprintf(`DROP DATABASE %q`, a)).ReadAll(); err != nil {
		t.Fatalf("DROP DATABASE once the transaction ended: %v", err)
	}
}
