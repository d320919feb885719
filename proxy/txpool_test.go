package proxy_test

// Transaction pooling that clients cannot tell from PostgreSQL: each test
// here reproduces a way real client libraries' own suites broke through
// pgshard (issue 7), and runs enough rounds to catch a race.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgshard/pgshard/config"
	"github.com/pgshard/pgshard/topology"
	"github.com/pgshard/pgshard/topology/topotest"
)

// rounds is how many times a racy scenario is repeated: a few in make
// test, more with PGSHARD_STRESS=n.
func rounds(def int) int {
	if n, err := strconv.Atoi(os.Getenv("PGSHARD_STRESS")); err == nil && n > 0 {
		return n
	}
	return def
}

// direct connects to the shared topology's primary, to the test's database.
func (h *harness) direct(ctx context.Context) *pgx.Conn {
	h.t.Helper()
	c, err := pgx.Connect(ctx, h.topo.Shards[0].Primary.URL("app", "app", h.db))
	if err != nil {
		h.t.Fatalf("connect to the primary: %v", err)
	}
	h.t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// terminateBackends ends every backend pgshard holds on the test's
// database (as an administrator's pg_terminate_backend would) and returns
// how many it ended.
func (h *harness) terminateBackends(ctx context.Context, admin *pgx.Conn) int {
	h.t.Helper()
	var n int
	err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'`).Scan(&n)
	if err != nil {
		h.t.Fatal(err)
	}
	return n
}

// Item 5: in transaction pooling an idle client owns no backend, so a
// backend that an administrator terminates while it sits in the pool must
// not cost any client an error: the client's next query gets a fresh one.
func TestIdleClientsDoNotSeeTerminatedBackends(t *testing.T) {
	h := startProxy(t, func(c *config.Config) { c.Pool.Size = 6 })
	ctx := testCtx(t)
	admin := h.direct(ctx)
	const clients = 20
	conns := make([]*pgx.Conn, clients)
	for i := range conns {
		conns[i] = h.connect(ctx)
	}
	modes := []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement,
		pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec}
	runAll := func(round int) []error {
		var wg sync.WaitGroup
		errs := make([]error, clients)
		for i, c := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var v int
				errs[i] = c.QueryRow(ctx, "SELECT $1::int + 1", modes[(i+round)%len(modes)], i).Scan(&v)
				if errs[i] == nil && v != i+1 {
					errs[i] = fmt.Errorf("got %d, want %d", v, i+1)
				}
			}()
		}
		wg.Wait()
		return errs
	}
	terminated := 0
	for round := 0; round < rounds(10); round++ {
		for i, err := range runAll(round) {
			if err != nil {
				t.Fatalf("round %d: client %d: %v", round, i, err)
			}
		}
		terminated += h.terminateBackends(ctx, admin)
	}
	if terminated == 0 {
		t.Fatal("no backend was terminated: the test proved nothing")
	}
	t.Logf("%d pooled backends terminated between rounds; no client saw it; %v batches re-sent", terminated,
		metric(t, h, "pgshard_read_retries_total", map[string]string{"reason": "backend_terminated"}))
}

// Clients connecting while pooled backends are terminated get a working
// session: a backend that goes away while the session starts (its settings
// being applied) is replaced, never reported.
func TestConnectWhileBackendsAreTerminated(t *testing.T) {
	h := startProxy(t, func(c *config.Config) { c.Pool.Size = 3 })
	ctx := testCtx(t)
	admin := h.direct(ctx)
	stop := make(chan struct{})
	var killer sync.WaitGroup
	killer.Add(1)
	terminated := 0
	go func() {
		defer killer.Done()
		for {
			select {
			case <-stop:
				return
			// A pause long enough for a session to start on a loaded
			// machine now and then: a killer faster than any start would
			// test nothing but its own speed.
			case <-time.After(time.Duration(5+rand.IntN(45)) * time.Millisecond):
			}
			terminated += h.terminateBackends(ctx, admin)
		}
	}()
	n := 40 * rounds(1)
	for i := 0; i < n; i++ {
		// A startup parameter the pooled backends lack: it is applied on
		// attach, while the killer runs.
		c, err := pgx.Connect(ctx, h.url("app")+fmt.Sprintf("&application_name=client%d", i))
		if err != nil {
			close(stop)
			killer.Wait()
			t.Fatalf("connection %d: %v", i, err)
		}
		c.Close(ctx)
	}
	close(stop)
	killer.Wait()
	t.Logf("%d backends terminated during %d connections", terminated, n)
	if terminated == 0 {
		t.Fatal("no backend was terminated: the test proved nothing")
	}
}

// Item 5, second half: a client whose own backend ends (here: inside its
// transaction) gets the backend's FATAL once, and no second one of
// pgshard's.
func TestOwnBackendTerminatedGetsOneFatal(t *testing.T) {
	h := startProxy(t, func(c *config.Config) {
		c.Users = append(c.Users, config.User{Name: "trusty", Auth: "trust", BackendUser: "app", BackendPassword: "app"})
	})
	ctx := testCtx(t)
	admin := h.direct(ctx)
	nc, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
	fe := pgproto3.NewFrontend(nc, nc)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": "trusty", "database": h.db}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	readUntilReady := func() {
		t.Helper()
		for {
			m, err := fe.Receive()
			if err != nil {
				t.Fatal(err)
			}
			if e, ok := m.(*pgproto3.ErrorResponse); ok {
				t.Fatalf("error: %s %s", e.Code, e.Message)
			}
			if _, ok := m.(*pgproto3.ReadyForQuery); ok {
				return
			}
		}
	}
	readUntilReady()
	fe.Send(&pgproto3.Query{String: "BEGIN; SELECT 1"})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	readUntilReady()
	if n := h.terminateBackends(ctx, admin); n != 1 {
		t.Fatalf("terminated %d backends, want the client's one", n)
	}
	var fatals []string
	for {
		m, err := fe.Receive()
		if err != nil {
			break // the connection closed
		}
		if e, ok := m.(*pgproto3.ErrorResponse); ok {
			fatals = append(fatals, e.Severity+" "+e.Code+" "+e.Message)
		}
	}
	if len(fatals) != 1 || !strings.HasPrefix(fatals[0], "FATAL 57P01") {
		t.Fatalf("client got %q, want one FATAL 57P01 (the backend's own)", fatals)
	}
}

// Item 1: replicas killed while many clients read in every protocol mode:
// every client finishes and no transaction fails.
func TestReplicaKilledUnderLoadEveryMode(t *testing.T) {
	topo := topotest.Start(t, topology.Config{Shards: 1, Replicas: 2})
	h := startProxyOn(t, topo, withReplicas(topo, func(c *config.Config) { c.Pool.Size = 20 }))
	h.run("pgbench", "", "-i", "-s", "1", "-q")
	n := rounds(1)
	for round := 0; round < n; round++ {
		for _, mode := range []string{"simple", "extended", "prepared"} {
			victim := topo.Shards[0].Replicas[rand.IntN(2)]
			for _, r := range topo.Shards[0].Replicas {
				if !r.Running() {
					if err := r.Start(testCtx(t)); err != nil {
						t.Fatal(err)
					}
				}
			}
			c := h.connect(testCtx(t))
			waitReplicaReads(t, testCtx(t), c)
			c.Close(testCtx(t))
			kill := time.AfterFunc(time.Duration(1500+rand.IntN(1500))*time.Millisecond, func() {
				// As kill -9 of the postmaster does: its backends notice
				// and end on their own, some with a FATAL, some not.
				if err := syscall.Kill(victim.PID(), syscall.SIGKILL); err != nil {
					t.Errorf("kill replica: %v", err)
				}
			})
			watchdog := time.AfterFunc(40*time.Second, func() {
				t.Errorf("pgbench stuck; sessions:\n%s", h.srv.DebugSessions())
			})
			out := h.run("pgbench", "", "-S", "-M", mode, "-c", "16", "-j", "2", "-T", "5")
			watchdog.Stop()
			kill.Stop()
			if m := failedRe.FindStringSubmatch(out); m != nil && m[1] != "0" {
				t.Fatalf("round %d -M %s: %s failed transactions while a replica died\n%s", round, mode, m[1], out)
			}
			if strings.Contains(out, "aborted") || strings.Contains(out, "ERROR") {
				t.Fatalf("round %d -M %s: clients saw errors while a replica died\n%s", round, mode, out)
			}
			t.Logf("round %d -M %s: %s", round, mode, strings.TrimSpace(txRe.FindString(out)))
		}
	}
	t.Logf("reads re-sent after a replica died: %v", metric(t, h, "pgshard_read_retries_total", map[string]string{"reason": "replica_lost"}))
}

// Item 2: a prepared statement whose result type changed under it raises
// what PostgreSQL raises (0A000), whichever backend it lands on, and a
// re-prepare of the same text then works. Never rows decoded with the old
// description.
func TestStatementCacheInvalidation(t *testing.T) {
	for _, ddl := range []string{"through pgshard", "on the server directly"} {
		for _, backend := range []string{"same backend", "another backend"} {
			t.Run(ddl+"/"+backend, func(t *testing.T) {
				h := startProxy(t, func(c *config.Config) { c.Pool.Size = 2 })
				ctx := testCtx(t)
				c := h.connect(ctx)
				mustExec(t, c, "CREATE TABLE drop_cols (id serial PRIMARY KEY, f1 int NOT NULL, f2 int NOT NULL); INSERT INTO drop_cols (f1, f2) VALUES (1, 2)")
				const q = "SELECT * FROM drop_cols WHERE id = $1"
				rows, _ := c.Query(ctx, q, 1) // prepares and describes it
				rows.Close()
				if err := rows.Err(); err != nil {
					t.Fatal(err)
				}
				if backend == "another backend" {
					// Another client holds the backend c used (the pool hands
					// out the last released one first), so c's next
					// statements land on the other one.
					other := h.connect(ctx)
					tx, err := other.Begin(ctx)
					if err != nil {
						t.Fatal(err)
					}
					defer tx.Rollback(ctx)
				}
				if ddl == "through pgshard" {
					mustExec(t, c, "ALTER TABLE drop_cols DROP COLUMN f1")
				} else {
					mustExec(t, h.direct(ctx), "ALTER TABLE drop_cols DROP COLUMN f1")
				}
				rows, _ = c.Query(ctx, q, 1)
				for rows.Next() {
					t.Fatalf("a row decoded with the old description: %v", rows.RawValues())
				}
				rows.Close()
				if err := rows.Err(); sqlState(err) != "0A000" || !strings.Contains(err.Error(), "cached plan must not change result type") {
					t.Fatalf("stale statement: got %v, want 0A000 cached plan must not change result type", err)
				}
				// pgx has dropped it from its cache; the same text again works.
				for i := 0; i < 3; i++ {
					var id, f2 int
					if err := c.QueryRow(ctx, q, 1).Scan(&id, &f2); err != nil || id != 1 || f2 != 2 {
						t.Fatalf("re-prepared statement: %d %d %v", id, f2, err)
					}
				}
			})
		}
	}
}

// Item 2: a type dropped and created again: new clients' statements on it
// work at once (pgshard must not hand them a plan made for the old type).
func TestStatementsOnRecreatedType(t *testing.T) {
	h := startProxy(t, func(c *config.Config) { c.Pool.Size = 2 })
	ctx := testCtx(t)
	for round := 0; round < 4; round++ {
		c, err := pgx.Connect(ctx, h.url("app"))
		if err != nil {
			t.Fatal(err)
		}
		mustExec(t, c, "DROP TYPE IF EXISTS enum_test CASCADE; CREATE TYPE enum_test AS ENUM ('a', 'b', 'c')")
		var got []string
		if err := c.QueryRow(ctx, "SELECT array_agg(v::text) FROM unnest(enum_range(NULL::enum_test)) v WHERE v >= $1::enum_test", "b").Scan(&got); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if strings.Join(got, ",") != "b,c" {
			t.Fatalf("round %d: %v", round, got)
		}
		c.Close(ctx)
	}
}

func mustExec(t *testing.T, c *pgx.Conn, sql string) {
	t.Helper()
	if _, err := c.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// Item 3: the unnamed statement survives on the client's side until the
// client itself sends a simple Query, as on PostgreSQL, whatever other
// clients (and pgshard's settings replays) did on the backend meanwhile.
func TestUnnamedStatementAcrossSyncGroups(t *testing.T) {
	h := startProxy(t, func(c *config.Config) { c.Pool.Size = 1 })
	ctx := testCtx(t)
	a := h.pgconn(ctx)
	b, err := pgconn.Connect(ctx, h.url("app")+"&application_name=other")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)
	for i := 0; i < 20; i++ {
		if _, err := a.Prepare(ctx, "", "SELECT $1::int * 2", nil); err != nil {
			t.Fatal(err)
		}
		// b's settings differ: its query is preceded by a replay (a
		// simple Query) on the one backend, which drops its unnamed
		// statement.
		if _, err := b.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
			t.Fatal(err)
		}
		res := a.ExecPrepared(ctx, "", [][]byte{[]byte(strconv.Itoa(i))}, nil, nil).Read()
		if res.Err != nil || string(res.Rows[0][0]) != strconv.Itoa(2*i) {
			t.Fatalf("round %d: %v %q", i, res.Err, res.Rows)
		}
	}
	// The client's own simple Query drops it, as PostgreSQL does.
	if _, err := a.Prepare(ctx, "", "SELECT 1", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Exec(ctx, "SELECT 2").ReadAll(); err != nil {
		t.Fatal(err)
	}
	res := a.ExecPrepared(ctx, "", nil, nil, nil).Read()
	if sqlState(res.Err) != "26000" {
		t.Fatalf("unnamed statement after a simple Query: %v, want 26000 as PostgreSQL", res.Err)
	}
}

// Item 4: cancels at random moments by one client never reach another
// client's query, even though they share backends all the time.
func TestCancelStorm(t *testing.T) {
	h := startProxy(t, func(c *config.Config) { c.Pool.Size = 3 })
	ctx := testCtx(t)
	dur := 4 * time.Second
	if rounds(1) > 1 {
		dur = time.Duration(rounds(1)) * 2 * time.Second
	}
	stop := time.Now().Add(dur)
	var others, strays atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		c := h.pgconn(ctx)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				var err error
				if i%2 == 0 {
					_, err = c.Exec(ctx, "SELECT pg_sleep(0.002)").ReadAll()
				} else {
					err = c.ExecParams(ctx, "SELECT $1::int", [][]byte{[]byte("7")}, nil, nil, nil).Read().Err
				}
				others.Add(1)
				if err != nil {
					if sqlState(err) == "57014" {
						strays.Add(1)
						continue
					}
					t.Errorf("client %d: %v", i, err)
					return
				}
			}
		}()
	}
	canceller := h.pgconn(ctx)
	var cancelled, sent int
	for time.Now().Before(stop) {
		done := make(chan error, 1)
		go func() {
			_, err := canceller.Exec(ctx, fmt.Sprintf("SELECT pg_sleep(%f)", 0.005+rand.Float64()*0.03)).ReadAll()
			done <- err
		}()
		time.Sleep(time.Duration(rand.IntN(30_000)) * time.Microsecond)
		if err := canceller.CancelRequest(ctx); err != nil {
			t.Fatal(err)
		}
		sent++
		err := <-done
		switch {
		case err == nil:
		case sqlState(err) == "57014":
			cancelled++
		default:
			t.Fatal(err)
		}
		// A late cancel too: its query is over; it must hit nothing.
		if rand.IntN(3) == 0 {
			if err := canceller.CancelRequest(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	wg.Wait()
	t.Logf("%d cancel requests, %d of the canceller's queries cancelled; %d queries of other clients, %d cancelled by mistake",
		sent, cancelled, others.Load(), strays.Load())
	if strays.Load() > 0 {
		t.Fatalf("%d queries of other clients were cancelled", strays.Load())
	}
	if cancelled == 0 {
		t.Fatal("no cancel took effect: the test proved nothing")
	}
}

// Item 6: a list-valued startup parameter stays a list.
func TestListStartupParameter(t *testing.T) {
	h := startProxy(t, func(c *config.Config) { c.Pool.Size = 1 })
	ctx := testCtx(t)
	mustExec(t, h.direct(ctx), "CREATE SCHEMA a; CREATE SCHEMA b; CREATE TABLE b.only_in_b (v int); INSERT INTO b.only_in_b VALUES (42)")
	c, err := pgx.Connect(ctx, h.url("app")+"&search_path="+"a,%20b")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	other := h.connect(ctx) // other settings on the one backend: every query of c replays
	for i := 0; i < 3; i++ {
		mustExec(t, other, "SELECT 1")
		var sp string
		var v int
		if err := c.QueryRow(ctx, "SELECT current_setting('search_path'), (SELECT v FROM only_in_b)").Scan(&sp, &v); err != nil {
			t.Fatal(err)
		}
		if sp != "a, b" || v != 42 {
			t.Fatalf("search_path %q, v %d", sp, v)
		}
	}
}

// Item 7: a SET that its transaction rolled back, wholly or to a
// savepoint, is not replayed on the client's next backend; one that
// committed is.
func TestRolledBackSetsAreForgotten(t *testing.T) {
	h := startProxy(t, func(c *config.Config) { c.Pool.Size = 1 })
	ctx := testCtx(t)
	other, err := pgx.Connect(ctx, h.url("app")+"&application_name=other")
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(ctx)
	for _, c := range []struct {
		name  string
		sql   []string
		want  string
		fails bool
	}{
		{"one string", []string{"BEGIN; SET work_mem = '7MB'; ROLLBACK"}, "4MB", false},
		{"rollback then select", []string{"BEGIN", "SET work_mem = '7MB'", "ROLLBACK; SELECT 1"}, "4MB", false},
		{"to savepoint", []string{"BEGIN", "SAVEPOINT s", "SET work_mem = '7MB'", "ROLLBACK TO SAVEPOINT s", "COMMIT"}, "4MB", false},
		{"to savepoint in one string", []string{"BEGIN; SET work_mem = '5MB'; SAVEPOINT s; SET work_mem = '7MB'; ROLLBACK TO s; COMMIT"}, "5MB", false},
		{"released savepoint", []string{"BEGIN", "SAVEPOINT s", "SET work_mem = '6MB'", "RELEASE s", "COMMIT"}, "6MB", false},
		{"committed", []string{"BEGIN; SET work_mem = '8MB'", "COMMIT"}, "8MB", false},
		{"implicit transaction failed", []string{"SET work_mem = '9MB'; SELECT 1/0"}, "4MB", true},
		{"failed transaction", []string{"BEGIN; SET work_mem = '9MB'", "SELECT 1/0", "COMMIT"}, "4MB", true},
		{"committed before a failure", []string{"BEGIN; SET work_mem = '3MB'; COMMIT; SELECT 1/0"}, "3MB", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			conn := h.pgconn(ctx)
			for _, sql := range c.sql {
				_, err := conn.Exec(ctx, sql).ReadAll()
				if err != nil && !c.fails {
					t.Fatalf("%s: %v", sql, err)
				}
			}
			// Another client's settings take the backend; the next
			// query replays this client's own.
			mustExec(t, other, "SELECT 1")
			res, err := conn.Exec(ctx, "SHOW work_mem").ReadAll()
			if err != nil {
				t.Fatal(err)
			}
			if got := string(res[0].Rows[0][0]); got != c.want {
				t.Fatalf("work_mem = %s, want %s", got, c.want)
			}
		})
	}
}

// Item 8: SQL DEALLOCATE of a statement the client prepared through the
// protocol works, as it does on PostgreSQL; SQL PREPARE and DEALLOCATE
// still work together.
func TestDeallocateProtocolStatement(t *testing.T) {
	h := startProxy(t, nil)
	ctx := testCtx(t)
	c := h.connect(ctx)
	for i := 0; i < 3; i++ {
		if _, err := c.Prepare(ctx, "s1", "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(ctx, "DEALLOCATE s1", pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("DEALLOCATE s1: %v", err)
		}
		if err := c.Deallocate(ctx, "s1"); err != nil { // pgx's own bookkeeping
			t.Fatal(err)
		}
	}
	if _, err := c.Prepare(ctx, "s2", "SELECT 2"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "DEALLOCATE ALL", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatalf("DEALLOCATE ALL: %v", err)
	}
	if _, err := c.Exec(ctx, "DEALLOCATE nope", pgx.QueryExecModeSimpleProtocol); sqlState(err) != "26000" {
		t.Fatalf("DEALLOCATE of an unknown name: %v, want 26000", err)
	}
	p := h.pgconn(ctx)
	res, err := p.Exec(ctx, "PREPARE q AS SELECT 40 + 2; EXECUTE q; DEALLOCATE q").ReadAll()
	if err != nil || string(res[1].Rows[0][0]) != "42" {
		t.Fatalf("SQL PREPARE/EXECUTE/DEALLOCATE: %v", err)
	}
	var pe *pgconn.PgError
	if _, err := p.Exec(ctx, "EXECUTE q").ReadAll(); !errors.As(err, &pe) || pe.Code != "26000" {
		t.Fatalf("EXECUTE after DEALLOCATE: %v", err)
	}
}

// Statements retired by schema changes are closed on the backends, so that
// a backend does not pile up statements nobody runs again.
func TestRetiredStatementsAreClosed(t *testing.T) {
	h := startProxy(t, func(c *config.Config) { c.Pool.Size = 1 })
	ctx := testCtx(t)
	c := h.connect(ctx)
	for i := 0; i < 10; i++ {
		mustExec(t, c, fmt.Sprintf("DROP TABLE IF EXISTS r; CREATE TABLE r (a int, b%d int)", i))
		var n int
		// A text of its own each time: prepared once, never run again.
		if err := c.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM r WHERE a = $1 AND b%d IS NULL", i), i).Scan(&n); err != nil {
			t.Fatal(err)
		}
	}
	var n int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_prepared_statements", pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n > 2 {
		t.Fatalf("the backend holds %d prepared statements after 10 schema changes; want the current one", n)
	}
}

// A client that pipelines a write behind a read that went to a replica:
// the write waits for the read's answer and goes to the primary (never to
// the replica, which would refuse it with 25006).
func TestPipelinedWriteAfterReplicaRead(t *testing.T) {
	topo := topotest.Shared(t)
	h := startProxy(t, withReplicas(topo, func(c *config.Config) {
		c.Users = append(c.Users, config.User{Name: "trusty", Auth: "trust", BackendUser: "app", BackendPassword: "app"})
	}))
	ctx := testCtx(t)
	c := h.connect(ctx)
	waitReplicaReads(t, ctx, c)
	mustExec(t, c, "CREATE TABLE piped (v int)")
	nc, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(60 * time.Second))
	fe := pgproto3.NewFrontend(nc, nc)
	fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": "trusty", "database": h.db}})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	readyCount := func(n int) (rows []string, errs []string) {
		for n > 0 {
			m, err := fe.Receive()
			if err != nil {
				t.Fatal(err)
			}
			switch m := m.(type) {
			case *pgproto3.ReadyForQuery:
				n--
			case *pgproto3.ErrorResponse:
				errs = append(errs, m.Code+" "+m.Message)
			case *pgproto3.DataRow:
				rows = append(rows, string(m.Values[0]))
			}
		}
		return rows, errs
	}
	readyCount(1)
	const rounds = 50
	for i := 0; i < rounds; i++ {
		// One write of the socket: a read, then writes, then a read.
		fe.Send(&pgproto3.Query{String: "SELECT pg_is_in_recovery()::text"})
		fe.Send(&pgproto3.Query{String: fmt.Sprintf("INSERT INTO piped VALUES (%d)", i)})
		fe.Send(&pgproto3.Parse{Query: "INSERT INTO piped VALUES ($1)"})
		fe.Send(&pgproto3.Bind{Parameters: [][]byte{[]byte(strconv.Itoa(1000 + i))}})
		fe.Send(&pgproto3.Execute{})
		fe.Send(&pgproto3.Sync{})
		fe.Send(&pgproto3.Query{String: "SELECT count(*)::text FROM piped"})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		rows, errs := readyCount(4)
		if len(errs) > 0 {
			t.Fatalf("round %d: %v", i, errs)
		}
		if len(rows) != 2 || rows[1] != strconv.Itoa(2*(i+1)) {
			t.Fatalf("round %d: rows %v, want the count %d read back (read-your-writes)", i, rows, 2*(i+1))
		}
	}
}

// resetRelay forwards TCP connections to a backend and, when armed, answers
// the next bytes pgshard sends on a connection it had already made with a
// reset instead of forwarding them: what pgshard sees when a pooled
// backend was terminated and closed with its batch unread, the reset
// having discarded the backend's FATAL. A real server does this only in a
// narrow race, so the test makes it on demand.
type resetRelay struct {
	ln       net.Listener
	target   string
	accepted atomic.Int64
	mu       sync.Mutex
	armed    int   // resets still to make
	before   int64 // only on connections accepted before arming
	resets   atomic.Int32
	wg       sync.WaitGroup
}

func startResetRelay(t *testing.T, target string) *resetRelay {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &resetRelay{ln: ln, target: target}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			id := r.accepted.Add(1)
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				r.relay(c.(*net.TCPConn), id)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		r.wg.Wait()
	})
	return r
}

// arm makes the relay reset the next n batches sent on the connections it
// holds now (idle pooled backends); connections made later pass.
func (r *resetRelay) arm(n int) {
	r.mu.Lock()
	r.armed, r.before = n, r.accepted.Load()+1
	r.mu.Unlock()
}

func (r *resetRelay) takeReset(id int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.armed == 0 || id >= r.before {
		return false
	}
	r.armed--
	r.resets.Add(1)
	return true
}

func (r *resetRelay) relay(c *net.TCPConn, id int64) {
	defer c.Close()
	up, err := net.Dial("tcp", r.target)
	if err != nil {
		return
	}
	defer up.Close()
	go func() {
		// Backend to pgshard; ends when either side closes.
		buf := make([]byte, 32<<10)
		for {
			n, err := up.Read(buf)
			if n > 0 {
				if _, werr := c.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		c.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if r.takeReset(id) {
				c.SetLinger(0) // close with a reset, the bytes unread
				return
			}
			if _, werr := up.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// A pooled backend that resets the connection before answering a batch
// (terminated, its FATAL lost to the reset) cannot have run the batch's
// end: a batch that ends a transaction once, at its end, is re-sent on
// another backend in every protocol mode, and runs exactly once. A batch
// with two Syncs is not: its first transaction may have committed before
// the reset, so the client is told the connection was lost.
func TestResetBackendBeforeAnswerIsRetried(t *testing.T) {
	var relay *resetRelay
	h := startProxy(t, func(c *config.Config) {
		c.Pool.Size = 2
		p := strings.Fields(c.Shards[0].Primary) // host=... port=...
		relay = startResetRelay(t, net.JoinHostPort(strings.TrimPrefix(p[0], "host="), strings.TrimPrefix(p[1], "port=")))
		host, port, _ := net.SplitHostPort(relay.ln.Addr().String())
		c.Shards[0].Primary = fmt.Sprintf("host=%s port=%s", host, port)
	})
	ctx := testCtx(t)
	admin := h.direct(ctx)
	if _, err := admin.Exec(ctx, "CREATE TABLE resets (v int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	c := h.connect(ctx)
	modes := []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement,
		pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec}
	v := 0
	for round := 0; round < rounds(3); round++ {
		for _, mode := range modes {
			v++
			if _, err := c.Exec(ctx, "SELECT 1", mode); err != nil { // a pooled backend, idle
				t.Fatal(err)
			}
			before := relay.resets.Load()
			relay.arm(1)
			if _, err := c.Exec(ctx, "INSERT INTO resets VALUES ($1)", mode, v); err != nil {
				t.Fatalf("mode %v: %v", mode, err)
			}
			if relay.resets.Load() != before+1 {
				t.Fatalf("mode %v: the relay made no reset: the test proved nothing", mode)
			}
		}
	}
	var n, sum int
	if err := admin.QueryRow(ctx, "SELECT count(*), sum(v) FROM resets").Scan(&n, &sum); err != nil {
		t.Fatal(err)
	}
	if n != v || sum != v*(v+1)/2 {
		t.Fatalf("%d rows summing to %d after %d inserts: want each once", n, sum, v)
	}

	// Two transactions in one batch: not re-sent.
	pc := h.pgconn(ctx)
	if err := pc.Exec(ctx, "SELECT 1").Close(); err != nil {
		t.Fatal(err)
	}
	relay.arm(1)
	p := pc.StartPipeline(ctx)
	p.SendQueryParams("INSERT INTO resets VALUES (1000)", nil, nil, nil, nil)
	p.SendPipelineSync()
	p.SendQueryParams("INSERT INTO resets VALUES (1001)", nil, nil, nil, nil)
	p.SendPipelineSync()
	err := p.Flush()
	for err == nil {
		var res any
		if res, err = p.GetResults(); err == nil && res == nil {
			err = errors.New("the pipeline ended without an error")
		}
		if rr, ok := res.(*pgconn.ResultReader); ok {
			_, err = rr.Close()
		}
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "08006" {
		t.Fatalf("two-transaction batch on a reset backend: got %v, want SQLSTATE 08006", err)
	}
	if relay.resets.Load() != int32(len(modes)*rounds(3)+1) {
		t.Fatal("the relay made no reset on the pipeline")
	}
}
