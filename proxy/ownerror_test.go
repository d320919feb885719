package proxy_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgshard/pgshard/config"
)

// ownErrorTranscript runs, on c, statements that get an error pgshard
// raises itself (a Bind of a statement that does not exist, a Parse of a
// name in use) inside an explicit transaction, right after its BEGIN, and
// inside an extended batch's implicit transaction after a write; it
// returns what the client saw: tags, SQLSTATEs, transaction status, and
// the rows of table left at the end. PostgreSQL fails the transaction in
// each case: later statements get 25P02, COMMIT answers ROLLBACK, the
// batch's write is undone.
func ownErrorTranscript(ctx context.Context, t *testing.T, c *pgconn.PgConn, table string) []string {
	t.Helper()
	var out []string
	note := func(what string, tag pgconn.CommandTag, err error) {
		what = strings.ReplaceAll(what, table, "t")
		out = append(out, fmt.Sprintf("%s: %q %s %c", what, tag.String(), sqlState(err), c.TxStatus()))
	}
	simple := func(sql string) {
		res, err := c.Exec(ctx, sql).ReadAll()
		var tag pgconn.CommandTag
		if len(res) > 0 {
			tag = res[len(res)-1].CommandTag
		}
		note(sql, tag, err)
	}
	ext := func(what string, rr *pgconn.ResultReader) {
		res := rr.Read()
		note(what, res.CommandTag, res.Err)
	}
	if _, err := c.Prepare(ctx, "taken", "SELECT 1", nil); err != nil {
		t.Fatal(err)
	}
	for _, first := range []string{"INSERT INTO " + table + " (user_id) VALUES (1)", ""} {
		simple("BEGIN")
		if first != "" {
			simple(first)
		}
		ext("Bind nosuch", c.ExecPrepared(ctx, "nosuch", nil, nil, nil))
		ext("SELECT 1", c.ExecParams(ctx, "SELECT 1", nil, nil, nil, nil))
		simple("COMMIT")
	}
	simple("BEGIN")
	simple("INSERT INTO " + table + " (user_id) VALUES (2)")
	_, err := c.Prepare(ctx, "taken", "SELECT 2", nil)
	note("Parse taken", pgconn.CommandTag{}, err)
	simple("COMMIT")
	// One batch: a write, then a Bind of a statement that does not exist.
	got := request(t, c, &pgproto3.Parse{Query: "INSERT INTO " + table + " (user_id) VALUES (3)"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "nosuch"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	out = append(out, "batch: "+strings.Join(got, ","))
	res, err := c.Exec(ctx, "SELECT user_id FROM "+table+" ORDER BY 1").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	for _, r := range res[0].Rows {
		rows = append(rows, string(r[0]))
	}
	return append(out, "rows: "+strings.Join(rows, ","))
}

// request sends msgs on c's connection and returns the answers up to the
// first ReadyForQuery (appendAnswer's form), then its transaction status.
func request(t *testing.T, c *pgconn.PgConn, msgs ...pgproto3.FrontendMessage) []string {
	t.Helper()
	fe := c.Frontend()
	for _, m := range msgs {
		fe.Send(m)
	}
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		m, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		got = appendAnswer(got, m)
		if z, ok := m.(*pgproto3.ReadyForQuery); ok {
			return append(got, string(z.TxStatus))
		}
	}
}

// TestOwnErrorsFailTheTransaction: an error pgshard raises itself must
// fail the transaction it happens in, as PostgreSQL's own would; before,
// a later COMMIT committed what ran before the error.
func TestOwnErrorsFailTheTransaction(t *testing.T) {
	h := startProxy(t, nil)
	ctx := testCtx(t)
	direct := h.direct(ctx).PgConn()
	for _, sql := range []string{"CREATE TABLE own_err (user_id bigint PRIMARY KEY)", "CREATE TABLE own_err_direct (user_id bigint PRIMARY KEY)"} {
		if err := direct.Exec(ctx, sql).Close(); err != nil {
			t.Fatal(err)
		}
	}
	want := ownErrorTranscript(ctx, t, direct, "own_err_direct")
	got := ownErrorTranscript(ctx, t, h.pgconn(ctx), "own_err")
	if !slices.Equal(got, want) {
		t.Errorf("through pgshard:\n%s\nPostgreSQL:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// pgshard's own setting: PostgreSQL would take any value of a
	// placeholder variable, so the check is against what a failed SET
	// does to a transaction.
	c := h.pgconn(ctx)
	var seen []string
	for _, sql := range []string{"BEGIN", "INSERT INTO own_err (user_id) VALUES (9)", "SET pgshard.route = 'nowhere'", "SELECT 1", "COMMIT", "SELECT count(*) FROM own_err WHERE user_id = 9"} {
		res, err := c.Exec(ctx, sql).ReadAll()
		step := sqlState(err)
		if err == nil {
			step = res[0].CommandTag.String()
			if len(res[0].Rows) == 1 {
				step += " " + string(res[0].Rows[0][0])
			}
		}
		seen = append(seen, step+" "+string(c.TxStatus()))
	}
	for _, sql := range []string{"BEGIN", "SELECT 1/0", "SET pgshard.route = replica", "COMMIT"} {
		res, err := c.Exec(ctx, sql).ReadAll()
		step := sqlState(err)
		if err == nil {
			step = res[0].CommandTag.String()
			if len(res[0].Rows) == 1 {
				step += " " + string(res[0].Rows[0][0])
			}
		}
		seen = append(seen, step+" "+string(c.TxStatus()))
	}
	if g, w := strings.Join(seen, ", "), "BEGIN T, INSERT 0 1 T, 22023 E, 25P02 E, ROLLBACK I, SELECT 1 0 I, BEGIN T, 22012 E, 25P02 E, ROLLBACK I"; g != w {
		t.Fatalf("a bad SET pgshard.route in a transaction: %s, want %s", g, w)
	}
}

// TestOwnErrorsFailTheShardedTransaction is the same over two shards,
// where a BEGIN opens no backend until a statement picks a shard.
func TestOwnErrorsFailTheShardedTransaction(t *testing.T) {
	sh := startSharded(t, 2)
	ctx := testCtx(t)
	sh.createSharded(ctx, "own_err", "user_id bigint PRIMARY KEY")
	direct := sh.shardConn(ctx, 0).PgConn()
	if err := direct.Exec(ctx, "CREATE TABLE own_err_direct (user_id bigint PRIMARY KEY)").Close(); err != nil {
		t.Fatal(err)
	}
	want := ownErrorTranscript(ctx, t, direct, "own_err_direct")
	got := ownErrorTranscript(ctx, t, sh.pgconn(ctx), "own_err")
	if !slices.Equal(got, want) {
		t.Fatalf("through pgshard:\n%s\nPostgreSQL:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestCurrvalNeedsItsBackend: with transaction pooling, currval() and
// lastval() outside a transaction could read another client's nextval()
// (the backend's last one): refused with 0A000. In a transaction, a Query
// string or an extended batch with the nextval() they are exact.
func TestCurrvalNeedsItsBackend(t *testing.T) {
	h := startProxy(t, func(c *config.Config) { c.Pool.Size = 1 })
	ctx := testCtx(t)
	a, b := h.connect(ctx), h.connect(ctx)
	if _, err := a.Exec(ctx, "CREATE SEQUENCE cv"); err != nil {
		t.Fatal(err)
	}
	var x, y int64
	for _, c := range []*pgx.Conn{a, b} {
		if err := c.QueryRow(ctx, "SELECT nextval('cv')").Scan(&x); err != nil {
			t.Fatal(err)
		}
	}
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec} {
		for _, q := range []string{"SELECT currval('cv')", "SELECT lastval()", "select CURRVAL('cv') + 0"} {
			if err := a.QueryRow(ctx, q, mode).Scan(&y); sqlState(err) != "0A000" {
				t.Fatalf("%v: %s on its own: %d %v, want 0A000 (another client's nextval was %d)", mode, q, y, err, x)
			}
		}
	}
	// With the nextval, on the same backend.
	res, err := a.PgConn().Exec(ctx, "SELECT nextval('cv'); SELECT currval('cv')").ReadAll()
	if err != nil || len(res) != 2 || string(res[0].Rows[0][0]) != string(res[1].Rows[0][0]) {
		t.Fatalf("one Query string: %v %v", res, err)
	}
	br := a.SendBatch(ctx, &pgx.Batch{QueuedQueries: []*pgx.QueuedQuery{{SQL: "SELECT nextval('cv')"}, {SQL: "SELECT lastval()"}}})
	if err := br.QueryRow().Scan(&x); err != nil {
		t.Fatal(err)
	}
	if err := br.QueryRow().Scan(&y); err != nil || x != y {
		t.Fatalf("one batch: nextval %d, lastval %d %v", x, y, err)
	}
	br.Close()
	tx, err := a.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(ctx, "SELECT nextval('cv')").Scan(&x); err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(ctx, "SELECT currval('cv')").Scan(&y); err != nil || x != y {
		t.Fatalf("in a transaction: nextval %d, currval %d %v", x, y, err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestNoBackendFailsTheShardedTransaction: over several shards a BEGIN
// reaches a backend only with the transaction's first statement. When no
// backend is free for that statement, the client gets the pool's error,
// and the transaction must then be failed as PostgreSQL fails it after any
// error: later statements get 25P02 and COMMIT rolls back. Before, it went
// on as if nothing had happened, and COMMIT committed the statements that
// followed the error.
func TestNoBackendFailsTheShardedTransaction(t *testing.T) {
	sh := startSharded(t, 2, func(c *config.Config) {
		c.Pool.Size = 1
		c.Pool.WaitTimeout = config.Duration{Duration: 300 * time.Millisecond}
	})
	ctx := testCtx(t)
	sh.createSharded(ctx, "nobackend", "user_id bigint PRIMARY KEY")
	a, b := sh.keysOnTwoShards()
	a2 := a + 1 // another key of a's shard
	for sh.owner(a2) != sh.owner(a) {
		a2++
	}
	c := sh.pgconn(ctx) // (starting a session takes a backend too)
	// The only backend of a's shard's primary, held by another client.
	holder := sh.pgconn(ctx)
	for _, sql := range []string{"BEGIN", fmt.Sprintf("INSERT INTO nobackend (user_id) VALUES (%d)", a)} {
		if err := holder.Exec(ctx, sql).Close(); err != nil {
			t.Fatal(err)
		}
	}
	var seen []string
	step := func(err error, tag pgconn.CommandTag) {
		s := sqlState(err)
		if err == nil {
			s = tag.String()
		} else if s == "" {
			t.Fatalf("not a server error: %v", err)
		}
		seen = append(seen, s+" "+string(c.TxStatus()))
	}
	simple := func(sql string) {
		res, err := c.Exec(ctx, sql).ReadAll()
		var tag pgconn.CommandTag
		if len(res) > 0 {
			tag = res[len(res)-1].CommandTag
		}
		step(err, tag)
	}
	extended := func(sql string) {
		res := c.ExecParams(ctx, sql, nil, nil, nil, nil).Read()
		step(res.Err, res.CommandTag)
	}
	for _, run := range []func(string){simple, extended} {
		seen = seen[:0]
		simple("BEGIN")
		run(fmt.Sprintf("INSERT INTO nobackend (user_id) VALUES (%d)", a2))
		if len(seen) < 2 || !strings.HasPrefix(seen[1], "53300") {
			t.Fatalf("no free backend: got %v, want the pool's error", seen)
		}
		seen[1] = "pool error " + seen[1][len(seen[1])-1:]
		run(fmt.Sprintf("INSERT INTO nobackend (user_id) VALUES (%d)", b))
		run("SELECT 1")
		run("ROLLBACK TO SAVEPOINT s1")
		simple("COMMIT")
		if g, w := strings.Join(seen, ", "), "BEGIN T, pool error E, 25P02 E, 25P02 E, 3B001 E, ROLLBACK I"; g != w {
			t.Fatalf("a transaction whose first statement found no backend: %s, want %s", g, w)
		}
	}
	// A message that takes a backend without being routed (FunctionCall)
	// once one is free: the backend fails the transaction first.
	seen = seen[:0]
	simple("BEGIN")
	simple(fmt.Sprintf("INSERT INTO nobackend (user_id) VALUES (%d)", a2))
	if err := holder.Exec(ctx, "ROLLBACK").Close(); err != nil {
		t.Fatal(err)
	}
	fc := request(t, c, &pgproto3.FunctionCall{Function: 2026}) // pg_backend_pid()
	simple("COMMIT")
	if g, w := strings.Join(fc, ",")+" "+strings.Join(seen[2:], ", "), "ERROR 25P02,Z,E ROLLBACK I"; g != w {
		t.Fatalf("a FunctionCall in a transaction whose first statement found no backend: %s, want %s", g, w)
	}
	var n int
	for i := range sh.topo.Shards {
		var k int
		if err := sh.shardConn(ctx, i).QueryRow(ctx, "SELECT count(*) FROM nobackend").Scan(&k); err != nil {
			t.Fatal(err)
		}
		n += k
	}
	if n != 0 {
		t.Fatalf("%d rows committed by transactions that failed", n)
	}
}
