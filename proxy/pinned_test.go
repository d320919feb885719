package proxy_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgshard/pgshard/config"
)

// TestTempTablesOverShards: with several shards, a temporary table lives
// on the backend its session is pinned to; writes and DDL on it (which the
// router, knowing only the map's tables, would spread over every shard)
// run there alone, in every protocol mode. A temporary table made from a
// query must come from one shard.
func TestTempTablesOverShards(t *testing.T) {
	sh := startShardedWithLog(t, 2)
	ctx := testCtx(t)
	sh.createSharded(ctx, "tu", "user_id bigint PRIMARY KEY, v int")
	c := sh.connect(ctx)
	var rows []string
	for k := 1; k <= 16; k++ {
		rows = append(rows, fmt.Sprintf("(%d, %d)", k, 10*k))
	}
	mustExec(t, c, "INSERT INTO tu (user_id, v) VALUES "+strings.Join(rows, ", "))
	mustExec(t, c, "CREATE TEMP TABLE scratch (a int)")
	for i, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec, pgx.QueryExecModeCacheStatement} {
		if _, err := c.Exec(ctx, "INSERT INTO scratch VALUES ($1)", mode, i); err != nil {
			t.Fatalf("%v: insert: %v", mode, err)
		}
		if _, err := c.Exec(ctx, "UPDATE scratch SET a = a + 100 WHERE a = $1", mode, i); err != nil {
			t.Fatalf("%v: update: %v", mode, err)
		}
	}
	for _, sql := range []string{"CREATE INDEX ON scratch (a)", "ALTER TABLE scratch ADD COLUMN b int", "ANALYZE scratch", "DELETE FROM scratch WHERE a = 100"} {
		mustExec(t, c, sql)
	}
	var n, sum int
	if err := c.QueryRow(ctx, "SELECT count(*), sum(a) FROM scratch").Scan(&n, &sum); err != nil || n != 2 || sum != 203 {
		t.Fatalf("scratch: count %d sum %d %v, want 2 and 203", n, sum, err)
	}
	// Exactly one shard holds it: the one the session is pinned to.
	holders, home := 0, -1
	for i := range sh.topo.Shards {
		var k int
		if err := sh.shardConn(ctx, i).QueryRow(ctx, "SELECT count(*) FROM pg_class WHERE relname = 'scratch' AND relpersistence = 't'").Scan(&k); err != nil {
			t.Fatal(err)
		}
		if k > 0 {
			home = i
		}
		holders += k
	}
	if holders != 1 {
		t.Fatalf("the temporary table is on %d shards, want 1", holders)
	}
	// From one shard's rows (that shard's): there; from several: refused.
	key := int64(1)
	for sh.owner(key) != home {
		key++
	}
	if _, err := c.Exec(ctx, "SELECT * INTO TEMP one_row FROM tu WHERE user_id = $1", pgx.QueryExecModeSimpleProtocol, key); err != nil {
		t.Fatal(err)
	}
	if err := c.QueryRow(ctx, "SELECT v FROM one_row").Scan(&n); err != nil || n != int(key)*10 {
		t.Fatalf("one_row: %d %v, want %d", n, err, key*10)
	}
	if _, err := c.Exec(ctx, "CREATE TEMP TABLE all_rows AS SELECT * FROM tu"); sqlState(err) != "0A000" {
		t.Fatalf("a temporary table from every shard's rows: %v, want 0A000", err)
	}
	// SQL PREPARE: the statement exists on the backend that prepared it, so
	// its shard is fixed then; a parameter key is refused (before, EXECUTE
	// answered from whichever shard the session was pinned to).
	p := sh.connect(ctx)
	if _, err := p.Exec(ctx, "PREPARE by_key (bigint) AS SELECT v FROM tu WHERE user_id = $1"); sqlState(err) != "0A000" {
		t.Fatalf("SQL PREPARE with the key as a parameter: %v, want 0A000", err)
	}
	for _, k := range []int64{1, 2, 3, 4, 5, 6} {
		p := sh.connect(ctx) // SQL PREPARE pins the session to its shard
		mustExec(t, p, fmt.Sprintf("PREPARE k%d AS SELECT v FROM tu WHERE user_id = %d", k, k))
		for range 2 {
			if err := p.QueryRow(ctx, fmt.Sprintf("EXECUTE k%d", k), pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil || n != int(k)*10 {
				t.Fatalf("EXECUTE k%d: %d %v, want %d", k, n, err, k*10)
			}
		}
		p.Close(ctx)
	}
	mustExec(t, c, "TRUNCATE scratch")
	mustExec(t, c, "DROP TABLE scratch, one_row")
	if _, err := c.Exec(ctx, "SELECT * FROM scratch"); sqlState(err) != "42P01" {
		t.Fatalf("after DROP: %v, want 42P01", err)
	}
}

// TestNotificationsOverShards: LISTEN, NOTIFY, pg_notify() and advisory
// locks of every client meet on one shard, whichever shard each client's
// other statements ran on (before, a notification went to the shard of the
// notifier's last statement and never reached a listener on another, and
// two clients could hold the same advisory lock).
func TestNotificationsOverShards(t *testing.T) {
	sh := startSharded(t, 2)
	ctx := testCtx(t)
	sh.createSharded(ctx, "nu", "user_id bigint PRIMARY KEY")
	a, b := sh.keysOnTwoShards()
	listener, notifier := sh.connect(ctx), sh.connect(ctx)
	for _, k := range []int64{a, b} {
		for _, c := range []*pgx.Conn{listener, notifier} {
			if _, err := c.Exec(ctx, "SELECT * FROM nu WHERE user_id = $1", k); err != nil {
				t.Fatal(err)
			}
		}
	}
	mustExec(t, listener, "LISTEN ch")
	for i, k := range []int64{a, b, a} {
		// The notifier's last statement ran on the shard of k.
		if _, err := notifier.Exec(ctx, "SELECT * FROM nu WHERE user_id = $1", k); err != nil {
			t.Fatal(err)
		}
		var err error
		if i < 2 {
			_, err = notifier.Exec(ctx, fmt.Sprintf("NOTIFY ch, 'n%d'", i))
		} else {
			_, err = notifier.Exec(ctx, "SELECT pg_notify('ch', $1)", fmt.Sprintf("n%d", i))
		}
		if err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		n, err := listener.WaitForNotification(wctx)
		cancel()
		if err != nil || n.Payload != fmt.Sprintf("n%d", i) {
			t.Fatalf("notification %d: %v %v", i, n, err)
		}
	}
	if _, err := notifier.Exec(ctx, "SELECT pg_notify('ch', 'x') FROM nu WHERE user_id = $1", a); sqlState(err) != "0A000" {
		t.Fatalf("pg_notify() over a sharded table: %v, want 0A000", err)
	}

	// Advisory locks exclude each other whichever shard each client's
	// last statement ran on (before, each took the lock on its own shard).
	one, two := sh.connect(ctx), sh.connect(ctx)
	for i, c := range []*pgx.Conn{one, two} {
		if _, err := c.Exec(ctx, "SELECT * FROM nu WHERE user_id = $1", []int64{a, b}[i]); err != nil {
			t.Fatal(err)
		}
	}
	var got bool
	if err := one.QueryRow(ctx, "SELECT pg_try_advisory_lock(7)").Scan(&got); err != nil || !got {
		t.Fatalf("first lock: %v %v", got, err)
	}
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		if err := two.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", mode, 7).Scan(&got); err != nil || got {
			t.Fatalf("%v: a second client took the lock another holds: %v %v", mode, got, err)
		}
	}
	if err := one.QueryRow(ctx, "SELECT pg_advisory_unlock(7)").Scan(&got); err != nil || !got {
		t.Fatalf("unlock: %v %v", got, err)
	}
	if err := two.QueryRow(ctx, "SELECT pg_try_advisory_lock(7)").Scan(&got); err != nil || !got {
		t.Fatalf("the lock, once free: %v %v", got, err)
	}
}

// TestSetConfigPinsTheSession: set_config(…, false) changes a session
// setting without SET, so pgshard cannot replay it: the session keeps its
// backend, and no other client gets that backend with the setting (before,
// the next client on it saw the first one's search_path). A setting local
// to the transaction (is_local true) pins nothing.
func TestSetConfigPinsTheSession(t *testing.T) {
	h := startProxy(t, func(c *config.Config) { c.Pool.Size = 2 })
	ctx := testCtx(t)
	show := func(c *pgx.Conn) string {
		var v string
		if err := c.QueryRow(ctx, "SHOW search_path").Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	a := h.connect(ctx)
	def := show(a)
	mustExec(t, a, "SELECT set_config('search_path', 'pg_catalog', true)") // local: gone after its transaction
	if v := show(a); v != def {
		t.Fatalf("a transaction-local set_config outlived its transaction: %q", v)
	}
	mustExec(t, a, "SELECT set_config('search_path', 'pg_catalog', false)")
	for range 6 {
		b := h.connect(ctx)
		if v := show(b); v != def {
			t.Fatalf("another client sees search_path %q, want %q", v, def)
		}
		if v := show(a); v != "pg_catalog" {
			t.Fatalf("the client that set it sees %q", v)
		}
		b.Close(ctx)
	}
	a.Close(ctx)
	for range 4 {
		c := h.connect(ctx)
		if v := show(c); v != def {
			t.Fatalf("after the client left, its backend still has search_path %q", v)
		}
		c.Close(ctx)
	}
}

// TestScatterAfterDDLRaisesStalePlan: a client's prepared statement whose
// result changes under it (ALTER TABLE … ADD COLUMN, then SELECT *) gets
// what PostgreSQL raises, "cached plan must not change result type"
// (0A000), also when it runs over every shard; then, prepared again, the
// new columns. Before, the shards' Bind error (08P01) reached the client,
// or, with one result format for all columns, rows it would decode with
// the old description.
func TestScatterAfterDDLRaisesStalePlan(t *testing.T) {
	sh := startShardedWithLog(t, 2)
	ctx := testCtx(t)
	c := sh.connect(ctx)
	mustExec(t, c, "CREATE TABLE stale (user_id bigint PRIMARY KEY, v int)")
	mustExec(t, c, "INSERT INTO stale (user_id, v) VALUES (1, 10), (2, 20), (3, 30), (4, 40)")
	const q = "SELECT * FROM stale ORDER BY user_id"
	count := func() (int, error) {
		rows, err := c.Query(ctx, q)
		if err != nil {
			return 0, err
		}
		vals, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([]any, error) { return r.Values() })
		if len(vals) > 0 && err == nil {
			return len(vals[0]), nil
		}
		return 0, err
	}
	pc := c.PgConn() // the same session: it reads its own DDL (replicas may lag for others)
	if _, err := pc.Prepare(ctx, "text_rows", q, nil); err != nil {
		t.Fatal(err)
	}
	textCols := func() (int, error) {
		res := pc.ExecPrepared(ctx, "text_rows", nil, nil, nil).Read() // one result format (text) for every column
		if res.Err != nil {
			return 0, res.Err
		}
		return len(res.Rows[0]), nil
	}
	if n, err := count(); err != nil || n != 2 {
		t.Fatalf("before: %d columns %v", n, err)
	}
	if n, err := textCols(); err != nil || n != 2 {
		t.Fatalf("before, text: %d columns %v", n, err)
	}
	mustExec(t, c, "ALTER TABLE stale ADD COLUMN w text DEFAULT 'x'")
	if _, err := count(); sqlState(err) != "0A000" {
		t.Fatalf("after ADD COLUMN: %v, want 0A000", err)
	}
	if n, err := count(); err != nil || n != 3 {
		t.Fatalf("prepared again: %d columns %v, want 3", n, err)
	}
	if _, err := textCols(); sqlState(err) != "0A000" {
		t.Fatalf("after ADD COLUMN, text: %v, want 0A000", err)
	}
}
