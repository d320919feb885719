package proxy_test

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
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgshard/pgshard/config"
	"github.com/pgshard/pgshard/internal/testutil"
	"github.com/pgshard/pgshard/proxy"
	"github.com/pgshard/pgshard/topology"
	"github.com/pgshard/pgshard/topology/topotest"
	"github.com/prometheus/client_golang/prometheus"
)

// TestMain runs the tests on a shared topology, then fails the package if
// any goroutine is left: every proxy a test started has been shut down by
// its cleanup and must have stopped its sessions, pools and monitors.
func TestMain(m *testing.M) {
	os.Exit(testutil.NoLeaks(topotest.Run(m, topology.Config{Shards: 1, Replicas: 2})))
}

// harness is one proxy in front of the shared topology, with a database of
// its own.
type harness struct {
	t    *testing.T
	topo *topology.Topology
	db   string
	srv  *proxy.Server
	addr string
	reg  *prometheus.Registry
}

// startProxy starts a proxy for the test; mutate adjusts its configuration.
func startProxy(t *testing.T, mutate func(*config.Config)) *harness {
	t.Helper()
	return startProxyOn(t, topotest.Shared(t), mutate)
}

// startProxyOn is startProxy in front of a given topology.
func startProxyOn(t *testing.T, topo *topology.Topology, mutate func(*config.Config)) *harness {
	t.Helper()
	db := topotest.NewDatabase(t, topo)
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.AdminListen = ""
	cfg.Users = []config.User{
		{Name: "app", Password: "app"},
		{Name: "appmd5", Password: "app", Auth: "md5", BackendUser: "app", BackendPassword: "app"},
	}
	cfg.Shards = []config.Shard{{Name: "shard0", Primary: topo.Shards[0].Primary.DSN()}}
	cfg.Pool.Size = 4
	if mutate != nil {
		mutate(&cfg)
	}
	reg := prometheus.NewRegistry()
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	srv, err := proxy.New(cfg, logger, reg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	h := &harness{t: t, topo: topo, db: db, srv: srv, addr: ln.Addr().String(), reg: reg}
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
	return h
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (h *harness) url(user string) string {
	host, port, _ := net.SplitHostPort(h.addr)
	return fmt.Sprintf("postgres://%s:app@%s:%s/%s?sslmode=disable", user, host, port, h.db)
}

func (h *harness) connect(ctx context.Context) *pgx.Conn {
	h.t.Helper()
	c, err := pgx.Connect(ctx, h.url("app"))
	if err != nil {
		h.t.Fatalf("connect through pgshard: %v", err)
	}
	h.t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func (h *harness) pgconn(ctx context.Context) *pgconn.PgConn {
	h.t.Helper()
	c, err := pgconn.Connect(ctx, h.url("app"))
	if err != nil {
		h.t.Fatalf("connect through pgshard: %v", err)
	}
	h.t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func TestSimpleQueries(t *testing.T) {
	h := startProxy(t, nil)
	ctx := testCtx(t)
	c := h.pgconn(ctx)
	results, err := c.Exec(ctx, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b'); SELECT v FROM t ORDER BY id").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 3 {
		t.Fatalf("got %d results, want 3", len(results))
	}
	rows := results[2].Rows
	if len(rows) != 2 || string(rows[0][0]) != "a" || string(rows[1][0]) != "b" {
		t.Fatalf("rows = %q", rows)
	}
	// An error carries the backend's SQLSTATE and the session goes on.
	_, err = c.Exec(ctx, "SELECT 1/0").ReadAll()
	if sqlState(err) != "22012" {
		t.Fatalf("division by zero: got %v, want SQLSTATE 22012", err)
	}
	_, err = c.Exec(ctx, "INSERT INTO t VALUES (1, 'dup')").ReadAll()
	if sqlState(err) != "23505" {
		t.Fatalf("duplicate key: got %v, want 23505", err)
	}
	res, err := c.Exec(ctx, "SELECT count(*) FROM t").ReadAll()
	if err != nil || string(res[0].Rows[0][0]) != "2" {
		t.Fatalf("after errors: %v %v", res, err)
	}
	// An empty query answers EmptyQueryResponse.
	if _, err := c.Exec(ctx, "").ReadAll(); err != nil {
		t.Fatalf("empty query: %v", err)
	}
}

func TestExtendedProtocolAndStatementCache(t *testing.T) {
	// Pool size 2 and 8 clients: statements prepared by pgx's cache must
	// follow each client to whichever backend it gets.
	h := startProxy(t, func(c *config.Config) { c.Pool.Size = 2 })
	ctx := testCtx(t)
	setup := h.connect(ctx)
	if _, err := setup.Exec(ctx, "CREATE TABLE kv (k int PRIMARY KEY, v text)"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := pgx.Connect(ctx, h.url("app"))
			if err != nil {
				errs <- err
				return
			}
			defer c.Close(ctx)
			for i := 0; i < 100; i++ {
				k := w*1000 + i
				if _, err := c.Exec(ctx, "INSERT INTO kv VALUES ($1, $2)", k, fmt.Sprint("v", k)); err != nil {
					errs <- fmt.Errorf("insert %d: %w", k, err)
					return
				}
				var v string
				if err := c.QueryRow(ctx, "SELECT v FROM kv WHERE k = $1", k).Scan(&v); err != nil {
					errs <- fmt.Errorf("select %d: %w", k, err)
					return
				}
				if v != fmt.Sprint("v", k) {
					errs <- fmt.Errorf("key %d: got %q", k, v)
					return
				}
				var n int64
				if err := c.QueryRow(ctx, "SELECT $1::int8 * 2", int64(k)).Scan(&n); err != nil || n != int64(2*k) {
					errs <- fmt.Errorf("arith %d: %d %v", k, n, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var n int
	if err := setup.QueryRow(ctx, "SELECT count(*) FROM kv").Scan(&n); err != nil || n != 800 {
		t.Fatalf("count = %d, %v; want 800", n, err)
	}
}

func TestNamedStatementsAcrossBackends(t *testing.T) {
	h := startProxy(t, func(c *config.Config) { c.Pool.Size = 3 })
	ctx := testCtx(t)
	a := h.pgconn(ctx)
	b := h.pgconn(ctx)
	if _, err := a.Prepare(ctx, "s1", "SELECT $1::int + 1", nil); err != nil {
		t.Fatal(err)
	}
	// b prepares the same name for another query: names are per client.
	if _, err := b.Prepare(ctx, "s1", "SELECT $1::int + 100", nil); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 30; i++ {
		// Hold a backend in a transaction now and then so that a and b move.
		hold := h.pgconn(ctx)
		if i%3 == 0 {
			if _, err := hold.Exec(ctx, "BEGIN; SELECT 1").ReadAll(); err != nil {
				t.Fatal(err)
			}
		}
		ra := a.ExecPrepared(ctx, "s1", [][]byte{[]byte(fmt.Sprint(i))}, nil, nil).Read()
		rb := b.ExecPrepared(ctx, "s1", [][]byte{[]byte(fmt.Sprint(i))}, nil, nil).Read()
		if ra.Err != nil || rb.Err != nil {
			t.Fatalf("exec: %v %v", ra.Err, rb.Err)
		}
		if got := string(ra.Rows[0][0]); got != fmt.Sprint(i+1) {
			t.Fatalf("a: got %s want %d", got, i+1)
		}
		if got := string(rb.Rows[0][0]); got != fmt.Sprint(i+100) {
			t.Fatalf("b: got %s want %d", got, i+100)
		}
		hold.Close(ctx)
	}
	// Preparing a name twice is an error, as on PostgreSQL, and the session
	// recovers at Sync.
	_, err := a.Prepare(ctx, "s1", "SELECT 2", nil)
	if sqlState(err) != "42P05" {
		t.Fatalf("duplicate prepare: %v, want 42P05", err)
	}
	// Using an unknown name is 26000.
	rr := a.ExecPrepared(ctx, "nope", nil, nil, nil).Read()
	if sqlState(rr.Err) != "26000" {
		t.Fatalf("unknown statement: %v, want 26000", rr.Err)
	}
	// Deallocate through the protocol, then the name is free again.
	if err := a.Deallocate(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Prepare(ctx, "s1", "SELECT $1::int * 3", nil); err != nil {
		t.Fatal(err)
	}
	ra := a.ExecPrepared(ctx, "s1", [][]byte{[]byte("5")}, nil, nil).Read()
	if ra.Err != nil || string(ra.Rows[0][0]) != "15" {
		t.Fatalf("after re-prepare: %v %q", ra.Err, ra.Rows)
	}
}

func TestPipelineErrorRecovery(t *testing.T) {
	h := startProxy(t, nil)
	ctx := testCtx(t)
	c := h.pgconn(ctx)
	batch := &pgconn.Batch{}
	batch.ExecParams("SELECT 1", nil, nil, nil, nil)
	batch.ExecParams("SELECT 1/0", nil, nil, nil, nil)
	batch.ExecParams("SELECT 3", nil, nil, nil, nil)
	_, err := c.ExecBatch(ctx, batch).ReadAll()
	if sqlState(err) != "22012" {
		t.Fatalf("batch: %v, want 22012", err)
	}
	res := c.ExecParams(ctx, "SELECT 42", nil, nil, nil, nil).Read()
	if res.Err != nil || string(res.Rows[0][0]) != "42" {
		t.Fatalf("after failed batch: %v %q", res.Err, res.Rows)
	}
	// A pipeline of many statements in one write, answered in order.
	batch = &pgconn.Batch{}
	for i := 0; i < 500; i++ {
		batch.ExecParams("SELECT $1::int", [][]byte{[]byte(fmt.Sprint(i))}, nil, nil, nil)
	}
	results, err := c.ExecBatch(ctx, batch).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range results {
		if string(r.Rows[0][0]) != fmt.Sprint(i) {
			t.Fatalf("result %d = %q", i, r.Rows[0][0])
		}
	}
}

func TestSessionSettingsFollowTheClient(t *testing.T) {
	h := startProxy(t, func(c *config.Config) { c.Pool.Size = 1 })
	ctx := testCtx(t)
	a, err := pgx.Connect(ctx, h.url("app")+"&application_name=client_a")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(ctx)
	b := h.connect(ctx)
	show := func(c *pgx.Conn, name string) string {
		t.Helper()
		var v string
		if err := c.QueryRow(ctx, "SELECT current_setting('"+name+"')").Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	exec := func(c *pgx.Conn, sql string) {
		t.Helper()
		if _, err := c.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(a, "SET statement_timeout = '1234ms'")
	exec(a, "SET search_path TO pg_catalog, public")
	exec(b, "SET work_mem TO '7MB'")
	// One backend for both: each sees only its own settings.
	for i := 0; i < 3; i++ {
		if got := show(a, "statement_timeout"); got != "1234ms" {
			t.Fatalf("a statement_timeout = %q", got)
		}
		if got := show(a, "application_name"); got != "client_a" {
			t.Fatalf("a application_name = %q", got)
		}
		if got := show(b, "statement_timeout"); got != "0" {
			t.Fatalf("b statement_timeout = %q", got)
		}
		if got := show(b, "work_mem"); got != "7MB" {
			t.Fatalf("b work_mem = %q", got)
		}
		if got := show(a, "work_mem"); got != "4MB" {
			t.Fatalf("a work_mem = %q", got)
		}
	}
	// SET in a rolled-back transaction is undone; in a committed one kept.
	exec(a, "BEGIN")
	exec(a, "SET statement_timeout = '5s'")
	exec(a, "ROLLBACK")
	exec(b, "SELECT 1")
	if got := show(a, "statement_timeout"); got != "1234ms" {
		t.Fatalf("after rollback statement_timeout = %q", got)
	}
	exec(a, "BEGIN")
	exec(a, "SET statement_timeout = '6s'")
	exec(a, "COMMIT")
	exec(b, "SELECT 1")
	if got := show(a, "statement_timeout"); got != "6s" {
		t.Fatalf("after commit statement_timeout = %q", got)
	}
	exec(a, "RESET statement_timeout")
	exec(b, "SELECT 1")
	if got := show(a, "statement_timeout"); got != "0" {
		t.Fatalf("after reset statement_timeout = %q", got)
	}
	// A bad value fails and is not kept.
	if _, err := a.Exec(ctx, "SET statement_timeout = 'banana'", pgx.QueryExecModeSimpleProtocol); sqlState(err) != "22023" {
		t.Fatalf("bad SET: %v", err)
	}
	if got := show(a, "statement_timeout"); got != "0" {
		t.Fatalf("after bad SET statement_timeout = %q", got)
	}
}

func TestListenNotifyPinsTheSession(t *testing.T) {
	h := startProxy(t, func(c *config.Config) { c.Pool.Size = 2 })
	ctx := testCtx(t)
	cfg, err := pgconn.ParseConfig(h.url("app"))
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *pgconn.Notification, 4)
	cfg.OnNotification = func(_ *pgconn.PgConn, n *pgconn.Notification) { got <- n }
	listener, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close(ctx)
	if _, err := listener.Exec(ctx, "LISTEN chan1").ReadAll(); err != nil {
		t.Fatal(err)
	}
	// Other sessions come and go on the pool meanwhile.
	for i := 0; i < 5; i++ {
		c := h.pgconn(ctx)
		if _, err := c.Exec(ctx, fmt.Sprintf("NOTIFY chan1, 'hello%d'", i)).ReadAll(); err != nil {
			t.Fatal(err)
		}
		c.Close(ctx)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for i := 0; i < 5; i++ {
		select {
		case n := <-got:
			if n.Channel != "chan1" || n.Payload != fmt.Sprintf("hello%d", i) {
				t.Fatalf("notification %d = %+v", i, n)
			}
			continue
		default:
		}
		if err := listener.WaitForNotification(wctx); err != nil {
			t.Fatalf("waiting for notification %d: %v", i, err)
		}
		n := <-got
		if n.Channel != "chan1" || n.Payload != fmt.Sprintf("hello%d", i) {
			t.Fatalf("notification %d = %+v", i, n)
		}
	}
}

func TestTempTablePinsTheSession(t *testing.T) {
	h := startProxy(t, func(c *config.Config) { c.Pool.Size = 2 })
	ctx := testCtx(t)
	a := h.connect(ctx)
	if _, err := a.Exec(ctx, "CREATE TEMP TABLE scratch (x int)"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		other := h.connect(ctx)
		if _, err := other.Exec(ctx, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Exec(ctx, "INSERT INTO scratch VALUES ($1)", i); err != nil {
			t.Fatalf("insert %d: %v", i, err)
		}
		other.Close(ctx)
	}
	var n int
	if err := a.QueryRow(ctx, "SELECT count(*) FROM scratch").Scan(&n); err != nil || n != 20 {
		t.Fatalf("count = %d, %v", n, err)
	}
	// When the pinned client leaves, its backend is reset before reuse:
	// the temp table is gone for the next client.
	a.Close(ctx)
	for i := 0; i < 4; i++ {
		c := h.connect(ctx)
		var exists bool
		if err := c.QueryRow(ctx, "SELECT to_regclass('pg_temp.scratch') IS NOT NULL").Scan(&exists); err != nil {
			t.Fatal(err)
		}
		if exists {
			t.Fatal("temp table of a closed session is visible to another client")
		}
		c.Close(ctx)
	}
}

func TestCopy(t *testing.T) {
	h := startProxy(t, nil)
	ctx := testCtx(t)
	c := h.pgconn(ctx)
	if _, err := c.Exec(ctx, "CREATE TABLE c (id int, v text)").ReadAll(); err != nil {
		t.Fatal(err)
	}
	var in strings.Builder
	for i := 0; i < 20000; i++ {
		fmt.Fprintf(&in, "%d\tvalue %d\n", i, i)
	}
	tag, err := c.CopyFrom(ctx, strings.NewReader(strings.ReplaceAll(strings.ReplaceAll(in.String(), "\\t", "\t"), "\\n", "\n")), "COPY c FROM STDIN")
	if err != nil {
		t.Fatal(err)
	}
	if tag.RowsAffected() != 20000 {
		t.Fatalf("copied %d rows", tag.RowsAffected())
	}
	var out strings.Builder
	tag, err = c.CopyTo(ctx, &out, "COPY (SELECT * FROM c ORDER BY id) TO STDOUT")
	if err != nil {
		t.Fatal(err)
	}
	if tag.RowsAffected() != 20000 || !strings.HasPrefix(out.String(), "0\tvalue 0\n1\tvalue 1\n") {
		t.Fatalf("copy out: %d rows, starts %q", tag.RowsAffected(), out.String()[:30])
	}
	// A COPY that fails midway (bad data) reports the error; the session goes on.
	_, err = c.CopyFrom(ctx, strings.NewReader("1\tok\nnot-a-number\tx\n"), "COPY c FROM STDIN")
	if sqlState(err) != "22P02" {
		t.Fatalf("bad copy: %v, want 22P02", err)
	}
	res, err := c.Exec(ctx, "SELECT count(*) FROM c").ReadAll()
	if err != nil || string(res[0].Rows[0][0]) != "20000" {
		t.Fatalf("after failed copy: %v %v", res, err)
	}
}

func TestClientLeavesMidTransaction(t *testing.T) {
	h := startProxy(t, func(c *config.Config) { c.Pool.Size = 1 })
	ctx := testCtx(t)
	setup := h.connect(ctx)
	if _, err := setup.Exec(ctx, "CREATE TABLE m (x int)"); err != nil {
		t.Fatal(err)
	}
	setup.Close(ctx)
	a := h.pgconn(ctx)
	if _, err := a.Exec(ctx, "BEGIN; INSERT INTO m VALUES (1)").ReadAll(); err != nil {
		t.Fatal(err)
	}
	// Drop the socket without Terminate.
	if err := a.Conn().Close(); err != nil {
		t.Fatal(err)
	}
	// The single backend comes back rolled back and idle.
	b := h.connect(ctx)
	var n int
	if err := b.QueryRow(ctx, "SELECT count(*) FROM m").Scan(&n); err != nil || n != 0 {
		t.Fatalf("count = %d, %v; the abandoned insert must be rolled back", n, err)
	}
	var stuck int
	if err := b.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state LIKE 'idle in transaction%'").Scan(&stuck); err != nil || stuck != 0 {
		t.Fatalf("%d backends left idle in transaction (%v)", stuck, err)
	}
}

func TestPoolWaitTimeout(t *testing.T) {
	h := startProxy(t, func(c *config.Config) {
		c.Pool.Size = 1
		c.Pool.WaitTimeout = config.Duration{Duration: 300 * time.Millisecond}
	})
	ctx := testCtx(t)
	a := h.pgconn(ctx)
	b := h.pgconn(ctx)
	if _, err := a.Exec(ctx, "BEGIN; SELECT 1").ReadAll(); err != nil {
		t.Fatal(err)
	}
	_, err := b.Exec(ctx, "SELECT 2").ReadAll()
	if sqlState(err) != "53300" {
		t.Fatalf("waiting client: %v, want 53300", err)
	}
	if _, err := a.Exec(ctx, "COMMIT").ReadAll(); err != nil {
		t.Fatal(err)
	}
	res, err := b.Exec(ctx, "SELECT 2").ReadAll()
	if err != nil || string(res[0].Rows[0][0]) != "2" {
		t.Fatalf("after the backend freed: %v %v", res, err)
	}
	// The extended protocol gets the same error and recovers at Sync.
	if _, err := a.Exec(ctx, "BEGIN").ReadAll(); err != nil {
		t.Fatal(err)
	}
	r := b.ExecParams(ctx, "SELECT $1::int", [][]byte{[]byte("7")}, nil, nil, nil).Read()
	if sqlState(r.Err) != "53300" {
		t.Fatalf("extended waiting client: %v, want 53300", r.Err)
	}
	if _, err := a.Exec(ctx, "ROLLBACK").ReadAll(); err != nil {
		t.Fatal(err)
	}
	r = b.ExecParams(ctx, "SELECT $1::int", [][]byte{[]byte("7")}, nil, nil, nil).Read()
	if r.Err != nil || string(r.Rows[0][0]) != "7" {
		t.Fatalf("extended after the backend freed: %v", r.Err)
	}
}

func TestCancelRequest(t *testing.T) {
	h := startProxy(t, nil)
	ctx := testCtx(t)
	c := h.pgconn(ctx)
	start := time.Now()
	queryDone := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, "SELECT pg_sleep(60)").ReadAll()
		queryDone <- err
	}()
	// Cancel once the backend runs the query (asked on the primary
	// directly), so the cancel cannot arrive before it.
	running := testutil.Poll(30*time.Second, func() error {
		n, err := h.topo.Shards[0].Primary.QueryValue(ctx, h.db,
			"SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' AND query = 'SELECT pg_sleep(60)'")
		if err != nil {
			return err
		}
		if n != "1" {
			return fmt.Errorf("%s backends run it", n)
		}
		return nil
	})
	// Cancel even when the wait failed: the query must end before c closes.
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := c.CancelRequest(cctx); err != nil {
		t.Errorf("cancel request: %v", err)
	}
	err := <-queryDone
	if running != nil {
		t.Fatalf("the query never ran on the primary: %v", running)
	}
	if sqlState(err) != "57014" {
		t.Fatalf("cancelled query: %v after %s, want 57014", err, time.Since(start))
	}
	res, err := c.Exec(ctx, "SELECT 'still here'").ReadAll()
	if err != nil || string(res[0].Rows[0][0]) != "still here" {
		t.Fatalf("after cancel: %v", err)
	}
}

func TestNotices(t *testing.T) {
	h := startProxy(t, nil)
	ctx := testCtx(t)
	cfg, _ := pgconn.ParseConfig(h.url("app"))
	notices := make(chan string, 4)
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices <- n.Message }
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "DO $$ BEGIN RAISE NOTICE 'hi from %', 'plpgsql'; END $$").ReadAll(); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-notices:
		if m != "hi from plpgsql" {
			t.Fatalf("notice = %q", m)
		}
	default:
		t.Fatal("no notice")
	}
}

func TestAuthentication(t *testing.T) {
	h := startProxy(t, nil)
	ctx := testCtx(t)
	host, port, _ := net.SplitHostPort(h.addr)
	_, err := pgconn.Connect(ctx, fmt.Sprintf("postgres://app:wrong@%s:%s/%s?sslmode=disable", host, port, h.db))
	if sqlState(err) != "28P01" {
		t.Fatalf("wrong password: %v, want 28P01", err)
	}
	_, err = pgconn.Connect(ctx, fmt.Sprintf("postgres://nobody:app@%s:%s/%s?sslmode=disable", host, port, h.db))
	if sqlState(err) != "28P01" {
		t.Fatalf("unknown user: %v, want 28P01", err)
	}
	c, err := pgconn.Connect(ctx, h.url("appmd5"))
	if err != nil {
		t.Fatalf("md5 user: %v", err)
	}
	c.Close(ctx)
	// A database that does not exist is the backend's error, FATAL 3D000.
	_, err = pgconn.Connect(ctx, fmt.Sprintf("postgres://app:app@%s:%s/nosuchdb?sslmode=disable", host, port))
	if sqlState(err) != "3D000" {
		t.Fatalf("missing database: %v, want 3D000", err)
	}
}

func TestMalformedMessageClosesTheConnection(t *testing.T) {
	h := startProxy(t, nil)
	ctx := testCtx(t)
	c := h.pgconn(ctx)
	nc := c.Conn()
	// A Query whose length claims 3 bytes: impossible.
	if _, err := nc.Write([]byte{'Q', 0, 0, 0, 3}); err != nil {
		t.Fatal(err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(nc)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if len(b) == 0 || b[0] != 'E' || !strings.Contains(string(b), "08P01") {
		t.Fatalf("got %q, want an ErrorResponse 08P01 then EOF", b)
	}
	// An oversized message is refused the same way.
	h2 := startProxy(t, func(c *config.Config) { c.MaxMessageSize = 1024 })
	c2 := h2.pgconn(ctx)
	_, err = c2.Exec(ctx, "SELECT '"+strings.Repeat("x", 4096)+"'").ReadAll()
	if err == nil {
		t.Fatal("oversized query accepted")
	}
	if sqlState(err) != "54000" && !c2.IsClosed() {
		t.Fatalf("oversized: %v", err)
	}
	// The proxy still serves others.
	c3 := h2.pgconn(ctx)
	if _, err := c3.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
		t.Fatal(err)
	}
}

func TestSessionPooling(t *testing.T) {
	h := startProxy(t, func(c *config.Config) {
		c.Pool.Mode = config.PoolSession
		c.Pool.Size = 2
	})
	ctx := testCtx(t)
	a := h.connect(ctx)
	var pid1, pid2 int
	if err := a.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid1); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Exec(ctx, "CREATE TEMP TABLE s (x int)"); err != nil {
		t.Fatal(err)
	}
	if err := a.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid2); err != nil || pid1 != pid2 {
		t.Fatalf("session pooling moved the session: %d -> %d (%v)", pid1, pid2, err)
	}
	// A third client waits while two hold both backends, then gets one
	// once a session ends; the temp table is gone by then.
	b := h.connect(ctx)
	if _, err := b.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	a.Close(ctx)
	c := h.connect(ctx)
	var exists bool
	if err := c.QueryRow(ctx, "SELECT to_regclass('pg_temp.s') IS NOT NULL").Scan(&exists); err != nil || exists {
		t.Fatalf("temp table visible after session reset: %v %v", exists, err)
	}
}

func TestGracefulShutdown(t *testing.T) {
	h := startProxy(t, nil)
	ctx := testCtx(t)
	busy := h.pgconn(ctx)
	idle := h.pgconn(ctx)
	if _, err := busy.Exec(ctx, "CREATE TABLE g (x int)").ReadAll(); err != nil {
		t.Fatal(err)
	}
	if _, err := busy.Exec(ctx, "BEGIN; INSERT INTO g VALUES (1)").ReadAll(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		done <- h.srv.Shutdown(sctx)
	}()
	// The idle client is told to go.
	_, err := idle.Exec(ctx, "SELECT 1").ReadAll()
	if err == nil {
		// It may have raced the shutdown; it must be gone on the next try.
		_, err = idle.Exec(ctx, "SELECT 1").ReadAll()
	}
	if err == nil {
		t.Fatal("idle client still served after shutdown began")
	}
	// The open transaction can still finish.
	if _, err := busy.Exec(ctx, "INSERT INTO g VALUES (2); COMMIT").ReadAll(); err != nil {
		t.Fatalf("transaction cut by shutdown: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	v, err := h.topo.Shards[0].Primary.QueryValue(ctx, h.db, "SELECT count(*) FROM g")
	if err != nil || v != "2" {
		t.Fatalf("rows = %s, %v; want 2", v, err)
	}
	// New connections are refused.
	if _, err := pgconn.Connect(ctx, h.url("app")); err == nil {
		t.Fatal("connection accepted after shutdown")
	}
}

func TestOddTextsDoNotHurtTheSession(t *testing.T) {
	h := startProxy(t, nil)
	ctx := testCtx(t)
	c := h.pgconn(ctx)
	// Texts the scanner must survive (found by FuzzInspect: "/*/" once
	// crashed the routing-hint reader); the backend judges them.
	for _, q := range []string{"/*/", "/*", "'", "$$", "E'\\\\", "/* pgshard:primary", "SET", "RESET"} {
		_, err := c.Exec(ctx, q).ReadAll()
		if err == nil {
			continue
		}
		if sqlState(err) == "" {
			t.Fatalf("%q: %v", q, err)
		}
	}
	res, err := c.Exec(ctx, "SELECT 'alive'").ReadAll()
	if err != nil || string(res[0].Rows[0][0]) != "alive" {
		t.Fatalf("session after odd texts: %v", err)
	}
}
