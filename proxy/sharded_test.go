package proxy_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"math/rand"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgshard/pgshard/config"
	"github.com/pgshard/pgshard/internal/testutil"
	"github.com/pgshard/pgshard/proxy"
	"github.com/pgshard/pgshard/shardmap"
	"github.com/pgshard/pgshard/topology"
	"github.com/pgshard/pgshard/topology/topotest"
	"github.com/prometheus/client_golang/prometheus"
)

// shardedHarness is a proxy over n shards of a topology of their own,
// following an in-memory shard map.
type shardedHarness struct {
	*harness
	mu  sync.Mutex
	m   *shardmap.Map
	dbs []string // the shards' names in order
}

// startSharded starts a topology of n shards (one replica each) and a
// proxy whose shard map spreads the ring over all of them.
func startSharded(t *testing.T, n int, mutate ...func(*config.Config)) *shardedHarness {
	t.Helper()
	topo := topotest.Start(t, topology.Config{Shards: n, Replicas: 1})
	sh := &shardedHarness{m: &shardmap.Map{}}
	h := startProxyOn(t, topo, func(cfg *config.Config) {
		for _, m := range mutate {
			m(cfg)
		}
		cfg.Shards = nil
		for i, s := range topo.Shards {
			c := config.Shard{Name: fmt.Sprintf("shard%d", i), Primary: s.Primary.DSN()}
			for _, r := range s.Replicas {
				c.Replicas = append(c.Replicas, r.DSN())
			}
			cfg.Shards = append(cfg.Shards, c)
		}
	})
	sh.harness = h
	var err error
	for i, s := range topo.Shards {
		name := fmt.Sprintf("shard%d", i)
		sh.dbs = append(sh.dbs, name)
		if sh.m, err = sh.m.Apply(shardmap.AddShard(shardmap.Shard{Name: name, Primary: s.Primary.DSN()}, 16)); err != nil {
			t.Fatal(err)
		}
	}
	h.srv.SetMap(sh.m)
	h.srv.SetRegistrar(sh)
	return sh
}

// RegisterTable is the harness's in-memory proxy.TableRegistrar.
func (sh *shardedHarness) RegisterTable(_ context.Context, tb shardmap.Table) error {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	m, err := sh.m.Apply(shardmap.AddTable(tb))
	if err != nil {
		return err
	}
	sh.m = m
	sh.srv.SetMap(m)
	return nil
}

// UnregisterTable is the harness's in-memory proxy.TableRegistrar.
func (sh *shardedHarness) UnregisterTable(_ context.Context, name string) error {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	m, err := sh.m.Apply(shardmap.RemoveTable(name))
	if errors.Is(err, shardmap.ErrUnknownTable) {
		return nil
	}
	if err != nil {
		return err
	}
	sh.m = m
	sh.srv.SetMap(m)
	return nil
}

// shardConn connects to shard i's primary directly.
func (sh *shardedHarness) shardConn(ctx context.Context, i int) *pgx.Conn {
	sh.t.Helper()
	c, err := pgx.Connect(ctx, sh.topo.Shards[i].Primary.URL("app", "app", sh.db))
	if err != nil {
		sh.t.Fatal(err)
	}
	sh.t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// prepared counts the transactions left prepared on the shards.
func (sh *shardedHarness) prepared(ctx context.Context) int {
	sh.t.Helper()
	n := 0
	for i := range sh.topo.Shards {
		var k int
		if err := sh.shardConn(ctx, i).QueryRow(ctx, "SELECT count(*) FROM pg_prepared_xacts").Scan(&k); err != nil {
			sh.t.Fatal(err)
		}
		n += k
	}
	return n
}

// placement reads the user_id of every row of table on each shard
// directly, failing the test for a row not on its key's owner or on two
// shards; it returns each key's shard.
func (sh *shardedHarness) placement(ctx context.Context, table string) map[int64]int {
	sh.t.Helper()
	out := map[int64]int{}
	for i := range sh.topo.Shards {
		rows, err := sh.shardConn(ctx, i).Query(ctx, "SELECT user_id FROM "+table)
		if err != nil {
			sh.t.Fatal(err)
		}
		keys, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			sh.t.Fatal(err)
		}
		for _, k := range keys {
			if j, dup := out[k]; dup {
				sh.t.Fatalf("%s: key %d on shards %d and %d", table, k, j, i)
			}
			if sh.owner(k) != i {
				sh.t.Fatalf("%s: key %d on shard %d, owned by shard %d", table, k, i, sh.owner(k))
			}
			out[k] = i
		}
	}
	return out
}

// keysOnTwoShards returns two int keys owned by different shards.
func (sh *shardedHarness) keysOnTwoShards() (int64, int64) {
	a, b := int64(1), int64(2)
	for sh.owner(b) == sh.owner(a) {
		b++
	}
	return a, b
}

// batches reads a table of (user_id, batch) rows on every shard directly:
// the rows of each batch, and the batches that hold key a, and key b.
func (sh *shardedHarness) batches(ctx context.Context, table string, a, b int64) (rows map[int]int, withA, withB map[int]bool) {
	sh.t.Helper()
	rows, withA, withB = map[int]int{}, map[int]bool{}, map[int]bool{}
	for i := range sh.topo.Shards {
		rs, err := sh.shardConn(ctx, i).Query(ctx, "SELECT batch, user_id FROM "+table)
		if err != nil {
			sh.t.Fatal(err)
		}
		for rs.Next() {
			var batch int
			var key int64
			if err := rs.Scan(&batch, &key); err != nil {
				sh.t.Fatal(err)
			}
			rows[batch]++
			withA[batch] = withA[batch] || key == a
			withB[batch] = withB[batch] || key == b
		}
		if rs.Err() != nil {
			sh.t.Fatal(rs.Err())
		}
	}
	return rows, withA, withB
}

// onEveryShard runs sql on every shard directly.
func (sh *shardedHarness) onEveryShard(ctx context.Context, sql string) {
	sh.t.Helper()
	for i := range sh.topo.Shards {
		if _, err := sh.shardConn(ctx, i).Exec(ctx, sql); err != nil {
			sh.t.Fatalf("shard %d: %s: %v", i, sql, err)
		}
	}
}

// createSharded creates table name (columns) on every shard and
// registers it as sharded by its bigint user_id, as CREATE TABLE through
// pgshard would.
func (sh *shardedHarness) createSharded(ctx context.Context, name, columns string) {
	sh.t.Helper()
	sh.onEveryShard(ctx, "CREATE TABLE "+name+" ("+columns+")")
	if err := sh.RegisterTable(ctx, shardmap.Table{Name: name, Kind: shardmap.TableSharded, KeyColumn: "user_id", KeyType: shardmap.KeyInt}); err != nil {
		sh.t.Fatal(err)
	}
}

// owner returns the index of the shard that owns an int key.
func (sh *shardedHarness) owner(key int64) int {
	sh.mu.Lock()
	ring := sh.m.Ring()
	sh.mu.Unlock()
	name := ring.Lookup(shardmap.HashInt64(key))
	for i, n := range sh.dbs {
		if n == name {
			return i
		}
	}
	sh.t.Fatalf("no shard owns %d", key)
	return -1
}

var allModes = []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec, pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeDescribeExec}

// Keyed statements land on the shard that owns their key, in every
// protocol mode, and read back from there.
func TestKeyedStatementsLandOnTheirShard(t *testing.T) {
	sh := startSharded(t, 2)
	ctx := testCtx(t)
	sh.createSharded(ctx, "orders", "user_id bigint, v int")
	c := sh.connect(ctx)
	const keys = 60
	for k := int64(0); k < keys; k++ {
		mode := allModes[k%int64(len(allModes))]
		if _, err := c.Exec(ctx, "INSERT INTO orders (user_id, v) VALUES ($1, $2)", mode, k, k*10); err != nil {
			t.Fatalf("insert %d (%v): %v", k, mode, err)
		}
	}
	counts := make([]int, 2)
	for i := range counts {
		rows, err := sh.shardConn(ctx, i).Query(ctx, "SELECT user_id FROM orders")
		if err != nil {
			t.Fatal(err)
		}
		ks, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range ks {
			if o := sh.owner(k); o != i {
				t.Errorf("key %d is on shard %d, owned by shard %d", k, i, o)
			}
		}
		counts[i] = len(ks)
	}
	if counts[0]+counts[1] != keys || counts[0] == 0 || counts[1] == 0 {
		t.Fatalf("rows per shard %v, want %d in all and some on each", counts, keys)
	}
	for k := int64(0); k < keys; k++ {
		mode := allModes[(k+1)%int64(len(allModes))]
		var v int64
		if err := c.QueryRow(ctx, "SELECT v FROM orders WHERE user_id = $1", mode, k).Scan(&v); err != nil || v != k*10 {
			t.Fatalf("read %d (%v): %d, %v", k, mode, v, err)
		}
	}
	var v int64
	if err := c.QueryRow(ctx, "SELECT v FROM orders WHERE user_id = 7", pgx.QueryExecModeSimpleProtocol).Scan(&v); err != nil || v != 70 {
		t.Fatalf("literal key: %d, %v", v, err)
	}
}

// A transaction follows the shard of its first keyed statement (BEGIN is
// sent there lazily); statements on other shards run on legs opened there
// in the same transaction; COMMIT is atomic over all of them (two-phase
// commit), ROLLBACK and errors undo all of them.
func TestTransactionAcrossShards(t *testing.T) {
	sh := startShardedWithLog(t, 2)
	ctx := testCtx(t)
	sh.createSharded(ctx, "orders", "user_id bigint, v int")
	a, b := sh.keysOnTwoShards()
	c := sh.connect(ctx)
	count := func(mode pgx.QueryExecMode) int {
		var n int
		if err := c.QueryRow(ctx, "SELECT count(*) FROM orders WHERE user_id IN ($1, $2)", mode, a, b).Scan(&n); err != nil {
			t.Fatalf("%v: count: %v", mode, err)
		}
		return n
	}
	noneLeft := func() {
		if n := sh.prepared(ctx); n != 0 {
			t.Fatalf("%d prepared transactions left", n)
		}
	}
	for _, mode := range allModes {
		mustExec(t, c, fmt.Sprintf("DELETE FROM orders WHERE user_id IN (%d, %d)", a, b))
		// Commit: both rows, on their shards.
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []int64{a, b} {
			if _, err := tx.Exec(ctx, "INSERT INTO orders (user_id, v) VALUES ($1, 1)", mode, k); err != nil {
				t.Fatalf("%v: insert %d: %v", mode, k, err)
			}
		}
		var v int
		if err := tx.QueryRow(ctx, "SELECT v FROM orders WHERE user_id = $1", mode, b).Scan(&v); err != nil || v != 1 {
			t.Fatalf("%v: the transaction reads its own write on the other shard: %d %v", mode, v, err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatalf("%v: commit: %v", mode, err)
		}
		if n := count(mode); n != 2 {
			t.Fatalf("%v: %d rows after commit, want 2", mode, n)
		}
		for _, k := range []int64{a, b} {
			var n int
			if err := sh.shardConn(ctx, sh.owner(k)).QueryRow(ctx, "SELECT count(*) FROM orders WHERE user_id = $1", k).Scan(&n); err != nil || n != 1 {
				t.Fatalf("%v: key %d on its shard: %d %v", mode, k, n, err)
			}
		}
		noneLeft()
		// Rollback: nothing.
		tx, err = c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []int64{a, b} {
			if _, err := tx.Exec(ctx, "UPDATE orders SET v = 5 WHERE user_id = $1", mode, k); err != nil {
				t.Fatalf("%v: update %d: %v", mode, k, err)
			}
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatalf("%v: rollback: %v", mode, err)
		}
		var sum int
		if err := c.QueryRow(ctx, "SELECT sum(v) FROM orders WHERE user_id IN ($1, $2)", mode, a, b).Scan(&sum); err != nil || sum != 2 {
			t.Fatalf("%v: sum after rollback %d %v, want 2", mode, sum, err)
		}
		// An error on the second shard fails the whole transaction.
		tx, err = c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "UPDATE orders SET v = 7 WHERE user_id = $1", mode, a); err != nil {
			t.Fatalf("%v: %v", mode, err)
		}
		if _, err := tx.Exec(ctx, "UPDATE orders SET v = 1 / (v - 1) WHERE user_id = $1", mode, b); sqlState(err) != "22012" {
			t.Fatalf("%v: error on the other shard: %v, want 22012", mode, err)
		}
		if _, err := tx.Exec(ctx, "SELECT 1", mode); sqlState(err) != "25P02" {
			t.Fatalf("%v: after the error: %v, want 25P02", mode, err)
		}
		if err := tx.Commit(ctx); err != pgx.ErrTxCommitRollback {
			t.Fatalf("%v: commit after the error: %v, want a rollback", mode, err)
		}
		if err := c.QueryRow(ctx, "SELECT sum(v) FROM orders WHERE user_id IN ($1, $2)", mode, a, b).Scan(&sum); err != nil || sum != 2 {
			t.Fatalf("%v: sum after the failed transaction %d %v, want 2", mode, sum, err)
		}
		// Savepoints cannot span shards.
		tx, err = c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "UPDATE orders SET v = 3 WHERE user_id = $1", mode, a); err != nil {
			t.Fatalf("%v: %v", mode, err)
		}
		if _, err := tx.Exec(ctx, "SAVEPOINT s1"); err != nil {
			t.Fatalf("%v: savepoint: %v", mode, err)
		}
		if _, err := tx.Exec(ctx, "UPDATE orders SET v = 3 WHERE user_id = $1", mode, b); sqlState(err) != "0A000" {
			t.Fatalf("%v: other shard after a savepoint: %v, want 0A000", mode, err)
		}
		_ = tx.Rollback(ctx)
		tx, err = c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "SAVEPOINT s1"); err != nil {
			t.Fatalf("%v: savepoint: %v", mode, err)
		}
		var pe *pgconn.PgError
		if _, err := tx.Exec(ctx, "SELECT sum(v) FROM orders WHERE user_id IN ($1, $2)", mode, a, b); !errors.As(err, &pe) || pe.Code != "0A000" || !strings.Contains(pe.Message, "savepoints") {
			t.Fatalf("%v: a read over two shards after a savepoint: %v, want 0A000 naming the savepoints", mode, err)
		}
		_ = tx.Rollback(ctx)
		noneLeft()
	}
	// Statements spanning shards inside a transaction see its writes and
	// commit or roll back with it.
	for _, mode := range allModes {
		mustExec(t, c, fmt.Sprintf("DELETE FROM orders WHERE user_id IN (%d, %d)", a, b))
		for _, commit := range []bool{false, true} {
			tx, err := c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var before int
			if err := tx.QueryRow(ctx, "SELECT count(*) FROM orders", mode).Scan(&before); err != nil {
				t.Fatalf("%v: scatter first in a transaction: %v", mode, err)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO orders (user_id, v) VALUES ($1, 1), ($2, 1)", mode, a, b); err != nil {
				t.Fatalf("%v: split insert in a transaction: %v", mode, err)
			}
			var n int
			if err := tx.QueryRow(ctx, "SELECT count(*) FROM orders", mode).Scan(&n); err != nil || n != before+2 {
				t.Fatalf("%v: scatter sees the transaction's rows: %d (before %d) %v", mode, n, before, err)
			}
			if tag, err := tx.Exec(ctx, "UPDATE orders SET v = v + 10 WHERE v = $1", mode, 1); err != nil || tag.RowsAffected() < 2 {
				t.Fatalf("%v: scatter update in a transaction: %v %v", mode, tag, err)
			}
			if commit {
				err = tx.Commit(ctx)
			} else {
				err = tx.Rollback(ctx)
			}
			if err != nil {
				t.Fatalf("%v: end: %v", mode, err)
			}
			want := 0
			if commit {
				want = 2
			}
			if err := c.QueryRow(ctx, "SELECT count(*) FROM orders WHERE user_id IN ($1, $2) AND v = 11", a, b).Scan(&n); err != nil || n != want {
				t.Fatalf("%v (commit %v): %d rows, want %d (%v)", mode, commit, n, want, err)
			}
		}
	}
	noneLeft()
	// An empty transaction needs no backend.
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
}

// Tables created through pgshard exist on every shard and are registered;
// multi-row inserts split by shard with one command tag; statements
// without a key scatter and merge exactly.
func TestScatterAndSpreadWrites(t *testing.T) {
	sh := startShardedWithLog(t, 2)
	ctx := testCtx(t)
	c := sh.connect(ctx)
	mustExec(t, c, "CREATE TABLE events (user_id bigint NOT NULL, kind text, amount int, PRIMARY KEY (user_id, amount))")
	mustExec(t, c, "CREATE TABLE kinds (kind text PRIMARY KEY, label text)")
	for i := range sh.topo.Shards {
		var n int
		if err := sh.shardConn(ctx, i).QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE tablename IN ('events', 'kinds')").Scan(&n); err != nil || n != 2 {
			t.Fatalf("shard %d has %d of the tables (%v)", i, n, err)
		}
	}
	// Statements that cannot run in a transaction run on each shard alone.
	mustExec(t, c, "CREATE INDEX CONCURRENTLY events_kind ON events (kind)")
	mustExec(t, c, "VACUUM events")
	for i := range sh.topo.Shards {
		var n int
		if err := sh.shardConn(ctx, i).QueryRow(ctx, "SELECT count(*) FROM pg_indexes WHERE indexname = 'events_kind'").Scan(&n); err != nil || n != 1 {
			t.Fatalf("shard %d: index %d (%v)", i, n, err)
		}
	}
	if _, err := c.Exec(ctx, "CREATE TABLE bad (user_id bigint, email text UNIQUE)"); sqlState(err) != "0A000" {
		t.Fatalf("unique without the key: %v, want 0A000", err)
	}
	tag, err := c.Exec(ctx, "INSERT INTO kinds VALUES ('a', 'Alpha'), ('b', 'Beta')")
	if err != nil || tag.String() != "INSERT 0 2" {
		t.Fatalf("reference insert: %v %v", tag, err)
	}
	var vals []string
	want := map[int64][3]int64{} // per kind index: count, sum
	total, sum := int64(0), int64(0)
	for k := int64(1); k <= 40; k++ {
		for j := int64(0); j < 3; j++ {
			kind := []string{"a", "b"}[(k+j)%2]
			vals = append(vals, fmt.Sprintf("(%d, '%s', %d)", k, kind, k*10+j))
			total++
			sum += k*10 + j
			_ = want
		}
	}
	// Without a column list too: the key's position was registered.
	tag, err = c.Exec(ctx, "INSERT INTO events VALUES "+strings.Join(vals, ", "))
	if err != nil || tag.String() != fmt.Sprintf("INSERT 0 %d", total) {
		t.Fatalf("multi-row insert: %v %v", tag, err)
	}
	var n, s int64
	if err := c.QueryRow(ctx, "SELECT count(*), sum(amount) FROM events", pgx.QueryExecModeSimpleProtocol).Scan(&n, &s); err != nil || n != total || s != sum {
		t.Fatalf("count, sum: %d %d %v, want %d %d", n, s, err, total, sum)
	}
	// Column names as PostgreSQL gives them, avg's too (the shards compute
	// sum), aliases kept.
	nr, err := c.Query(ctx, "SELECT avg(amount), avg(amount) AS sum, avg(amount) AS a FROM events")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range nr.FieldDescriptions() {
		names = append(names, f.Name)
	}
	nr.Close()
	if fmt.Sprint(names) != "[avg sum a]" {
		t.Fatalf("avg column names %v, want [avg sum a]", names)
	}
	var users int64
	if err := c.QueryRow(ctx, "SELECT count(DISTINCT user_id) FROM events").Scan(&users); err != nil || users != 40 {
		t.Fatalf("count(DISTINCT user_id): %d %v, want 40", users, err)
	}
	rows, err := c.Query(ctx, "SELECT amount FROM events ORDER BY amount DESC LIMIT 5 OFFSET 2", pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil || fmt.Sprint(got) != "[400 392 391 390 382]" {
		t.Fatalf("ORDER BY LIMIT OFFSET: %v %v", got, err)
	}
	rows, err = c.Query(ctx, "SELECT user_id % 4 AS g, count(*), avg(amount) FROM events GROUP BY 1 HAVING count(*) > 29 ORDER BY 1", pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatal(err)
	}
	type grp struct {
		G   int64
		N   int64
		Avg float64
	}
	gs, err := pgx.CollectRows(rows, pgx.RowToStructByPos[grp])
	if err != nil || len(gs) != 4 || gs[0].N != 30 {
		t.Fatalf("GROUP BY HAVING: %+v %v", gs, err)
	}
	tag, err = c.Exec(ctx, "UPDATE events SET amount = amount + 1000 WHERE kind = 'a'")
	if err != nil || tag.String() != fmt.Sprintf("UPDATE %d", total/2) {
		t.Fatalf("scatter update: %v %v", tag, err)
	}
	if _, err := c.Exec(ctx, "SELECT user_id, row_number() OVER () FROM events", pgx.QueryExecModeSimpleProtocol); sqlState(err) != "0A000" {
		t.Fatalf("window function across shards: %v, want 0A000", err)
	}
	// A failure on one shard leaves no shard changed.
	if _, err := c.Exec(ctx, "UPDATE events SET kind = (1 / (user_id - 7))::text"); sqlState(err) != "22012" {
		t.Fatalf("division by zero on one shard: %v", err)
	}
	if err := c.QueryRow(ctx, "SELECT sum(amount) FROM events", pgx.QueryExecModeSimpleProtocol).Scan(&s); err != nil || s != sum+1000*total/2 {
		t.Fatalf("after the failed update: sum %d %v, want %d", s, err, sum+1000*total/2)
	}
	if n := sh.prepared(ctx); n != 0 {
		t.Fatalf("%d prepared transactions left", n)
	}
	// Every protocol mode, with parameters.
	for _, mode := range allModes {
		var n2, s2 int64
		if err := c.QueryRow(ctx, "SELECT count(*), sum(amount) FROM events WHERE amount > $1", mode, 0).Scan(&n2, &s2); err != nil || n2 != total || s2 != sum+1000*total/2 {
			t.Fatalf("%v: count, sum: %d %d %v", mode, n2, s2, err)
		}
		rows, err := c.Query(ctx, "SELECT user_id, amount FROM events WHERE amount < $1 ORDER BY amount LIMIT $2", mode, 1000, 3)
		if err != nil {
			t.Fatal(err)
		}
		type ua struct{ U, A int64 }
		got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[ua])
		if err != nil || fmt.Sprint(got) != "[{1 10} {1 12} {2 21}]" {
			t.Fatalf("%v: ORDER BY LIMIT $2: %v %v", mode, got, err)
		}
		tag, err := c.Exec(ctx, "INSERT INTO events (user_id, kind, amount) VALUES ($1, 'c', 5000), ($2, 'c', 5000), ($3, 'c', 5000) RETURNING user_id", mode, 101, 102, 103)
		if err != nil || tag.String() != "INSERT 0 3" {
			t.Fatalf("%v: split insert: %v %v", mode, tag, err)
		}
		tag, err = c.Exec(ctx, "DELETE FROM events WHERE kind = $1", mode, "c")
		if err != nil || tag.String() != "DELETE 3" {
			t.Fatalf("%v: scatter delete: %v %v", mode, tag, err)
		}
	}
	// A cancel reaches every shard of a scatter statement.
	start := time.Now()
	go func() {
		time.Sleep(300 * time.Millisecond)
		_ = c.PgConn().CancelRequest(ctx)
	}()
	_, err = c.Exec(ctx, "SELECT count(*) FROM events WHERE pg_sleep(0.2) IS NOT NULL")
	if sqlState(err) != "57014" || c.IsClosed() {
		t.Fatalf("cancelled scatter: %v (connection closed: %v)", err, c.IsClosed())
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("the cancelled scatter took %v", d)
	}
	if err := c.QueryRow(ctx, "SELECT count(*) FROM events", pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil || n != total {
		t.Fatalf("after the cancel: %d %v", n, err)
	}
	// DROP TABLE leaves the map; the table can come back with another key.
	mustExec(t, c, "CREATE TABLE scratch (user_id bigint)")
	mustExec(t, c, "DROP TABLE scratch")
	mustExec(t, c, "CREATE TABLE scratch (user_id uuid)")
	sh.mu.Lock()
	tb, ok := sh.m.Table("scratch")
	sh.mu.Unlock()
	if !ok || tb.KeyType != shardmap.KeyUUID {
		t.Fatalf("scratch recreated: %+v %v", tb, ok)
	}
	// Reference tables join on one shard.
	var label string
	if err := c.QueryRow(ctx, "SELECT k.label FROM events e JOIN kinds k USING (kind) WHERE e.user_id = 3 ORDER BY e.amount LIMIT 1").Scan(&label); err != nil || label != "Beta" {
		t.Fatalf("reference join: %q %v", label, err)
	}
}

// COPY FROM STDIN splits rows by key in text, CSV and binary formats,
// atomically and with the client's line numbers in errors; COPY TO STDOUT
// gathers every shard's rows.
func TestCopyAcrossShards(t *testing.T) {
	sh := startShardedWithLog(t, 2)
	ctx := testCtx(t)
	c := sh.connect(ctx)
	mustExec(t, c, "CREATE TABLE items (user_id bigint NOT NULL, note text)")
	mustExec(t, c, "CREATE TABLE tags (tag text PRIMARY KEY)")
	pc := c.PgConn()
	var text strings.Builder
	for k := 1; k <= 50; k++ {
		fmt.Fprintf(&text, "%d\tnote\\t%d\n", k, k) // an escaped tab in the note
	}
	if tag, err := pc.CopyFrom(ctx, strings.NewReader(text.String()), "COPY items FROM STDIN"); err != nil || tag.RowsAffected() != 50 {
		t.Fatalf("copy text: %v %v", tag, err)
	}
	csv := "user_id,note\n51,\"multi\nline\"\n52,\"quote \"\"x\"\"\"\n"
	if tag, err := pc.CopyFrom(ctx, strings.NewReader(csv), "COPY items (user_id, note) FROM STDIN WITH (FORMAT csv, HEADER)"); err != nil || tag.RowsAffected() != 2 {
		t.Fatalf("copy csv: %v %v", tag, err)
	}
	rows := [][]any{}
	for k := 53; k <= 60; k++ {
		rows = append(rows, []any{int64(k), "bin"})
	}
	if n, err := c.CopyFrom(ctx, pgx.Identifier{"items"}, []string{"user_id", "note"}, pgx.CopyFromRows(rows)); err != nil || n != 8 {
		t.Fatalf("copy binary: %d %v", n, err)
	}
	if tag, err := pc.CopyFrom(ctx, strings.NewReader("a\nb\n"), "COPY tags FROM STDIN"); err != nil || tag.RowsAffected() != 2 {
		t.Fatalf("copy into a reference table: %v %v", tag, err)
	}
	// Every row on its shard, every reference row on every shard.
	total := 0
	for i := range sh.topo.Shards {
		rows, err := sh.shardConn(ctx, i).Query(ctx, "SELECT user_id FROM items")
		if err != nil {
			t.Fatal(err)
		}
		ks, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range ks {
			if sh.owner(k) != i {
				t.Fatalf("key %d on shard %d", k, i)
			}
		}
		total += len(ks)
		var n int
		if err := sh.shardConn(ctx, i).QueryRow(ctx, "SELECT count(*) FROM tags").Scan(&n); err != nil || n != 2 {
			t.Fatalf("shard %d has %d tags (%v)", i, n, err)
		}
	}
	if total != 60 {
		t.Fatalf("%d rows copied, want 60", total)
	}
	var note string
	if err := c.QueryRow(ctx, "SELECT note FROM items WHERE user_id = 51").Scan(&note); err != nil || note != "multi\nline" {
		t.Fatalf("csv multi-line field: %q %v", note, err)
	}
	// A bad row: nothing applied, the client's line number.
	bad := "61\tok\n62\tok\nxx\tbad\n63\tok\n"
	if _, err := pc.CopyFrom(ctx, strings.NewReader(bad), "COPY items FROM STDIN"); sqlState(err) != "22P02" || !strings.Contains(fmt.Sprint(err), "line 3") && !strings.Contains(errDetail(err), "line 3") {
		t.Fatalf("bad key: %v (%s)", err, errDetail(err))
	}
	bad = "64\tok\n65\tok\n66\tok\t\textra\n"
	if _, err := pc.CopyFrom(ctx, strings.NewReader(bad), "COPY items FROM STDIN"); sqlState(err) != "22P04" || !strings.Contains(errWhere(err), "line 3") {
		t.Fatalf("bad row on a shard: %v (where %q)", err, errWhere(err))
	}
	var n int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM items").Scan(&n); err != nil || n != 60 {
		t.Fatalf("%d rows after failed copies (%v), want 60", n, err)
	}
	// Gather.
	for _, format := range []string{"text", "csv, HEADER", "binary"} {
		var out bytes.Buffer
		tag, err := pc.CopyTo(ctx, &out, "COPY items TO STDOUT (FORMAT "+format+")")
		if err != nil || tag.RowsAffected() != 60 {
			t.Fatalf("copy to (%s): %v %v", format, tag, err)
		}
		var direct bytes.Buffer
		if _, err := sh.shardConn(ctx, 0).PgConn().CopyTo(ctx, &direct, "COPY (SELECT 1 WHERE false) TO STDOUT (FORMAT "+format+")"); err != nil {
			t.Fatal(err)
		}
		switch format {
		case "text":
			// One line per row: the note with a newline is written \n.
			if n := strings.Count(out.String(), "\n"); n != 60 {
				t.Fatalf("text: %d lines, want 60", n)
			}
		case "binary":
			// One header and one trailer: the empty result's size plus the rows.
			if !bytes.HasPrefix(out.Bytes(), direct.Bytes()[:11]) || !bytes.HasSuffix(out.Bytes(), []byte{0xff, 0xff}) || bytes.Count(out.Bytes(), direct.Bytes()[:11]) != 1 {
				t.Fatalf("binary output is not one COPY stream")
			}
		}
	}
}

func errDetail(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Detail
	}
	return ""
}

func errWhere(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Where
	}
	return ""
}

// Sequences of sharded tables give values unique across shards: each
// shard draws from its own range.
func TestShardedSequences(t *testing.T) {
	sh := startShardedWithLog(t, 2)
	ctx := testCtx(t)
	c := sh.connect(ctx)
	mustExec(t, c, "CREATE TABLE posts (user_id bigint NOT NULL, id bigserial, n bigint GENERATED ALWAYS AS IDENTITY, PRIMARY KEY (user_id, id))")
	if _, err := c.Exec(ctx, "CREATE TABLE bad (user_id bigint, id serial)"); sqlState(err) != "0A000" {
		t.Fatalf("serial on a sharded table: %v, want 0A000", err)
	}
	for k := 1; k <= 20; k++ {
		mustExec(t, c, fmt.Sprintf("INSERT INTO posts (user_id) VALUES (%d), (%d)", k, k))
	}
	seen := map[int64]bool{}
	for i := range sh.topo.Shards {
		rows, err := sh.shardConn(ctx, i).Query(ctx, "SELECT id, n FROM posts")
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var id, n int64
			if err := rows.Scan(&id, &n); err != nil {
				t.Fatal(err)
			}
			if seen[id] || seen[-n] {
				t.Fatalf("value %d/%d twice across shards", id, n)
			}
			seen[id], seen[-n] = true, true
			// Each shard draws from its own range of 2^48 values, chosen
			// by a hash of its name.
			h := fnv.New32a()
			h.Write([]byte(sh.dbs[i]))
			lo := int64(h.Sum32()&(1<<15-1))<<48 + 1
			if id < lo || id >= lo+1<<48 || n < lo || n >= lo+1<<48 {
				t.Fatalf("shard %d: values %d, %d outside its range from %d", i, id, n, lo)
			}
		}
		if rows.Err() != nil {
			t.Fatal(rows.Err())
		}
	}
	if len(seen) != 80 {
		t.Fatalf("%d distinct values, want 80", len(seen))
	}
	// Run again (as migrations do), CREATE … IF NOT EXISTS must not
	// restart the sequences: the next values are new ones.
	mustExec(t, c, "CREATE TABLE IF NOT EXISTS posts (user_id bigint NOT NULL, id bigserial, n bigint GENERATED ALWAYS AS IDENTITY, PRIMARY KEY (user_id, id))")
	// A sequence of its own: each shard's copy has its own range too.
	mustExec(t, c, "CREATE SEQUENCE tickets")
	mustExec(t, c, "CREATE SEQUENCE IF NOT EXISTS tickets")
	mustExec(t, c, "CREATE TABLE stamps (user_id bigint NOT NULL, ticket bigint NOT NULL)")
	for k := 1; k <= 20; k++ {
		mustExec(t, c, fmt.Sprintf("INSERT INTO stamps (user_id, ticket) VALUES (%d, nextval('tickets'))", k))
		mustExec(t, c, fmt.Sprintf("INSERT INTO posts (user_id) VALUES (%d)", k))
	}
	for q, want := range map[string]int{"SELECT id FROM posts": 60, "SELECT ticket FROM stamps": 20} {
		rows, err := c.Query(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		vals, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			t.Fatal(err)
		}
		if distinct := len(slices.Compact(slices.Sorted(slices.Values(vals)))); len(vals) != want || distinct != want {
			t.Fatalf("%s: %d values, %d distinct, want %d", q, len(vals), distinct, want)
		}
	}
	for _, bad := range []string{"CREATE SEQUENCE s2 START 1000", "CREATE SEQUENCE s2 AS integer", "CREATE SEQUENCE s2 INCREMENT BY -1", "ALTER SEQUENCE tickets RESTART", "ALTER SEQUENCE posts_id_seq MAXVALUE 100"} {
		if _, err := c.Exec(ctx, bad); sqlState(err) != "0A000" {
			t.Errorf("%s: %v, want 0A000", bad, err)
		}
	}
}

// With one shard on the ring, CREATE TABLE still registers the table.
func TestOneShardRegistersTables(t *testing.T) {
	sh := startSharded(t, 1)
	ctx := testCtx(t)
	c := sh.connect(ctx)
	mustExec(t, c, "CREATE TABLE one (user_id bigint, v int)")
	mustExec(t, c, "CREATE TABLE ref (code text)")
	sh.mu.Lock()
	m := sh.m
	sh.mu.Unlock()
	if tb, ok := m.Table("one"); !ok || tb.Kind != shardmap.TableSharded || tb.KeyOrdinal != 1 {
		t.Fatalf("one: %+v %v", tb, ok)
	}
	if tb, ok := m.Table("ref"); !ok || tb.Kind != shardmap.TableReference {
		t.Fatalf("ref: %+v %v", tb, ok)
	}
	mustExec(t, c, "INSERT INTO one VALUES (1, 2)")
	// Dropped and created again with another key type.
	mustExec(t, c, "DROP TABLE one")
	mustExec(t, c, "CREATE TABLE one (v int, user_id text)")
	sh.mu.Lock()
	m = sh.m
	sh.mu.Unlock()
	if tb, ok := m.Table("one"); !ok || tb.KeyType != shardmap.KeyText || tb.KeyOrdinal != 2 {
		t.Fatalf("one again: %+v %v", tb, ok)
	}
	// Through the extended protocol (as JDBC sends everything) too.
	pc := c.PgConn()
	for _, sql := range []string{"DROP TABLE one", "CREATE TABLE one (user_id int, v int)", "CREATE TABLE ext_ref (code text)", "DROP TABLE ref"} {
		if err := pc.ExecParams(ctx, sql, nil, nil, nil, nil).Read().Err; err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	sh.mu.Lock()
	m = sh.m
	sh.mu.Unlock()
	if tb, ok := m.Table("one"); !ok || tb.KeyType != shardmap.KeyInt || tb.KeyOrdinal != 1 {
		t.Fatalf("one, created through the extended protocol: %+v %v", tb, ok)
	}
	if tb, ok := m.Table("ext_ref"); !ok || tb.Kind != shardmap.TableReference {
		t.Fatalf("ext_ref, created through the extended protocol: %+v %v", tb, ok)
	}
	if tb, ok := m.Table("ref"); ok {
		t.Fatalf("ref, dropped through the extended protocol, is still in the map: %+v", tb)
	}
}

// A batch (pgx SendBatch: one Sync) of keyed statements on several shards
// runs as one implicit transaction, as on PostgreSQL: all or nothing.
func TestBatchAcrossShards(t *testing.T) {
	sh := startShardedWithLog(t, 2)
	ctx := testCtx(t)
	c := sh.connect(ctx)
	mustExec(t, c, "CREATE TABLE kv (user_id bigint PRIMARY KEY, v int)")
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec} {
		mustExec(t, c, "DELETE FROM kv")
		b := &pgx.Batch{}
		for k := 1; k <= 10; k++ {
			b.Queue("INSERT INTO kv (user_id, v) VALUES ($1, $2)", k, k*10)
		}
		b.Queue("SELECT v FROM kv WHERE user_id = $1", 7)
		br := c.SendBatch(ctx, b)
		for k := 1; k <= 10; k++ {
			if tag, err := br.Exec(); err != nil || tag.String() != "INSERT 0 1" {
				t.Fatalf("%v: insert %d: %v %v", mode, k, tag, err)
			}
		}
		var v int
		if err := br.QueryRow().Scan(&v); err != nil || v != 70 {
			t.Fatalf("%v: read in the batch: %d %v", mode, v, err)
		}
		if err := br.Close(); err != nil {
			t.Fatalf("%v: %v", mode, err)
		}
		var n int
		if err := c.QueryRow(ctx, "SELECT count(*) FROM kv").Scan(&n); err != nil || n != 10 {
			t.Fatalf("%v: %d rows after the batch (%v)", mode, n, err)
		}
		// A duplicate key in the middle: nothing of the batch stays.
		b = &pgx.Batch{}
		for _, k := range []int{11, 12, 3, 13} {
			b.Queue("INSERT INTO kv (user_id, v) VALUES ($1, 0)", k)
		}
		err := c.SendBatch(ctx, b).Close()
		if sqlState(err) != "23505" {
			t.Fatalf("%v: batch with a duplicate: %v, want 23505", mode, err)
		}
		if err := c.QueryRow(ctx, "SELECT count(*) FROM kv").Scan(&n); err != nil || n != 10 {
			t.Fatalf("%v: %d rows after the failed batch (%v), want 10", mode, n, err)
		}
	}
	if n := sh.prepared(ctx); n != 0 {
		t.Fatalf("%d prepared transactions left", n)
	}
	// A batch whose statements all land on one shard runs there.
	var same []int64
	for k := int64(100); len(same) < 5; k++ {
		if sh.owner(k) == 1 {
			same = append(same, k)
		}
	}
	b := &pgx.Batch{}
	for _, k := range same {
		b.Queue("INSERT INTO kv (user_id, v) VALUES ($1, 1)", k)
	}
	if err := c.SendBatch(ctx, b).Close(); err != nil {
		t.Fatalf("one-shard batch: %v", err)
	}
	var n int
	if err := sh.shardConn(ctx, 1).QueryRow(ctx, "SELECT count(*) FROM kv WHERE user_id >= 100").Scan(&n); err != nil || n != len(same) {
		t.Fatalf("one-shard batch: %d rows on its shard (%v), want %d", n, err, len(same))
	}
}

// A coordinator that dies after every shard prepared leaves its
// transaction to the recovery loop, which rolls it back when no decision
// was recorded and commits it when one was; nothing stays prepared.
func TestCoordinatorCrashIsRecovered(t *testing.T) {
	sh := startShardedWithLog(t, 2)
	ctx := testCtx(t)
	c := sh.connect(ctx)
	mustExec(t, c, "CREATE TABLE kv (user_id bigint PRIMARY KEY, v int)")
	a, b := sh.keysOnTwoShards()
	prepared := func() int { return sh.prepared(ctx) }
	defer proxy.SetCoordinatorCrash("")
	for _, stage := range []string{"prepared", "decided"} {
		for _, inTxn := range []bool{false, true} {
			mustExec(t, c, "DELETE FROM kv")
			proxy.SetCoordinatorCrash(stage)
			var err error
			if inTxn {
				tx, berr := c.Begin(ctx)
				if berr != nil {
					t.Fatal(berr)
				}
				mustExecTx(t, tx, fmt.Sprintf("INSERT INTO kv VALUES (%d, 1)", a))
				mustExecTx(t, tx, fmt.Sprintf("INSERT INTO kv VALUES (%d, 1)", b))
				err = tx.Commit(ctx)
			} else {
				_, err = c.Exec(ctx, fmt.Sprintf("INSERT INTO kv VALUES (%d, 1), (%d, 1)", a, b))
			}
			proxy.SetCoordinatorCrash("")
			if sqlState(err) != "08006" {
				t.Fatalf("%s (transaction %v): %v, want the simulated crash", stage, inTxn, err)
			}
			if n := prepared(); n != 2 {
				t.Fatalf("%s (transaction %v): %d transactions left prepared, want 2", stage, inTxn, n)
			}
			st, err := sh.srv.RecoverPrepared(ctx, 0)
			if err != nil {
				t.Fatalf("recover: %v (%+v)", err, st)
			}
			if n := prepared(); n != 0 {
				t.Fatalf("%s: %d prepared after recovery (%+v)", stage, n, st)
			}
			want := 0
			if stage == "decided" {
				want = 2
			}
			var n int
			if err := c.QueryRow(ctx, "SELECT count(*) FROM kv").Scan(&n); err != nil || n != want {
				t.Fatalf("%s (transaction %v): %d rows after recovery, want %d (%v)", stage, inTxn, n, want, err)
			}
		}
	}
}

func mustExecTx(t *testing.T, tx pgx.Tx, sql string) {
	t.Helper()
	if _, err := tx.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// Transfers between accounts on different shards, from many clients at
// once, in every protocol mode, while backends are terminated at random:
// money is neither made nor lost (every transfer commits on both shards or
// on neither), nothing stays prepared once recovery ran, and every row
// stays on its shard.
func TestConcurrentTransfersKeepTheTotal(t *testing.T) {
	sh := startShardedWithLog(t, 2)
	ctx := testCtx(t)
	c := sh.connect(ctx)
	mustExec(t, c, "CREATE TABLE acct (user_id bigint PRIMARY KEY, balance bigint NOT NULL)")
	const accounts, start = 40, 1000
	var vals []string
	for k := 1; k <= accounts; k++ {
		vals = append(vals, fmt.Sprintf("(%d, %d)", k, start))
	}
	mustExec(t, c, "INSERT INTO acct VALUES "+strings.Join(vals, ", "))
	rounds := 150 * rounds(1)
	// A loaded machine runs fewer transfers, not past the test's context.
	budget := time.Now().Add(time.Minute)
	var wg, bg sync.WaitGroup
	var committed, failed atomic.Int64
	stop := make(chan struct{})
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			mode := allModes[w%len(allModes)]
			rng := rand.New(rand.NewSource(int64(w)))
			var conn *pgx.Conn
			for r := 0; r < rounds && time.Now().Before(budget); r++ {
				if conn == nil || conn.IsClosed() {
					var err error
					for attempt := 0; ; attempt++ {
						var trace string
						if conn, trace, err = connectTraced(ctx, sh.url("app")); err == nil {
							break
						}
						t.Logf("client %d: the failed connection's messages:\n%s", w, trace)
						if attempt == 2 || ctx.Err() != nil {
							t.Errorf("client %d: connect: %v", w, err)
							return
						}
						// Seen once in many runs while backends are
						// terminated: the client got an unexpected message
						// during startup. Logged with the connection's
						// messages above (not yet understood, see
						// TestConnectWhileBackendsAreTerminated); this test
						// is about the money.
						t.Logf("client %d: connect failed, retrying: %v", w, err)
					}
					if _, err := conn.Exec(ctx, "SET lock_timeout = '3s'"); err != nil {
						continue
					}
				}
				a, b := int64(rng.Intn(accounts)+1), int64(rng.Intn(accounts)+1)
				if a == b {
					continue
				}
				if a > b {
					a, b = b, a // one lock order: no deadlock across shards
				}
				amount := rng.Intn(10) + 1
				err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
					if _, err := tx.Exec(ctx, "UPDATE acct SET balance = balance - $1 WHERE user_id = $2", mode, amount, a); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, "UPDATE acct SET balance = balance + $1 WHERE user_id = $2", mode, amount, b)
					return err
				})
				if err != nil {
					failed.Add(1)
				} else {
					committed.Add(1)
				}
			}
			if conn != nil {
				conn.Close(ctx)
			}
		}(w)
	}
	// Scatter reads meanwhile, and backends terminated now and then.
	bg.Add(2)
	go func() {
		defer bg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			var sum int64
			_ = c.QueryRow(ctx, "SELECT sum(balance) FROM acct").Scan(&sum)
		}
	}()
	killed := 0
	go func() {
		defer bg.Done()
		admin := make([]*pgx.Conn, len(sh.topo.Shards))
		for i := range admin {
			admin[i] = sh.shardConn(ctx, i)
		}
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			case <-time.After(150 * time.Millisecond):
			}
			var k int
			if err := admin[n%len(admin)].QueryRow(ctx, `SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
				WHERE datname = current_database() AND usename = 'app' AND pid <> pg_backend_pid() AND random() < 0.3) t`).Scan(&k); err != nil {
				t.Errorf("terminate backends: %v", err)
				return
			}
			killed += k
		}
	}()
	wg.Wait()
	close(stop)
	bg.Wait()
	if _, err := sh.srv.RecoverPrepared(ctx, 0); err != nil {
		t.Fatalf("recover: %v", err)
	}
	total, rows := int64(0), 0
	for i := range sh.topo.Shards {
		conn := sh.shardConn(ctx, i)
		var left int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_prepared_xacts").Scan(&left); err != nil || left != 0 {
			t.Fatalf("shard %d: %d prepared transactions left (%v)", i, left, err)
		}
		rs, err := conn.Query(ctx, "SELECT user_id, balance FROM acct")
		if err != nil {
			t.Fatal(err)
		}
		for rs.Next() {
			var k, bal int64
			if err := rs.Scan(&k, &bal); err != nil {
				t.Fatal(err)
			}
			if sh.owner(k) != i {
				t.Fatalf("account %d on shard %d", k, i)
			}
			total += bal
			rows++
		}
	}
	t.Logf("%d transfers committed, %d failed, %d backends terminated", committed.Load(), failed.Load(), killed)
	if rows != accounts || total != accounts*start {
		t.Fatalf("%d accounts holding %d, want %d holding %d", rows, total, accounts, accounts*start)
	}
	if committed.Load() == 0 {
		t.Fatal("no transfer committed")
	}
}

// shardedTxnLog is an in-memory proxy.TxnLog (the real one is the Raft map).
type shardedTxnLog struct {
	mu sync.Mutex
	d  map[string]bool
}

func newShardedTxnLog() *shardedTxnLog { return &shardedTxnLog{d: map[string]bool{}} }

// startShardedWithLog is startSharded with a decision log: statements
// that write on several shards commit by two-phase commit.
func startShardedWithLog(t *testing.T, n int) *shardedHarness {
	sh := startSharded(t, n)
	sh.srv.SetTxnLog(newShardedTxnLog())
	return sh
}

func (l *shardedTxnLog) Decide(_ context.Context, gid string, commit bool) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c, ok := l.d[gid]; ok {
		return c, nil
	}
	l.d[gid] = commit
	return commit, nil
}

func (l *shardedTxnLog) Decision(_ context.Context, gid string) (bool, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, ok := l.d[gid]
	return c, ok, nil
}

func (l *shardedTxnLog) Forget(_ context.Context, gid string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.d, gid)
	return nil
}

var _ = slog.Default
var _ = net.Dial
var _ = time.Second
var _ = prometheus.NewRegistry
var _ proxy.TableRegistrar = (*shardedHarness)(nil)

// connectTraced connects like pgx.Connect and, when that fails, returns
// the protocol messages the connection exchanged.
func connectTraced(ctx context.Context, url string) (*pgx.Conn, string, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, "", err
	}
	var mu sync.Mutex
	var buf bytes.Buffer
	cfg.BuildFrontend = func(r io.Reader, w io.Writer) *pgproto3.Frontend {
		f := pgproto3.NewFrontend(r, w)
		f.Trace(lockedWriter{&mu, &buf}, pgproto3.TracerOptions{SuppressTimestamps: true})
		return f
	}
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		mu.Lock()
		defer mu.Unlock()
		return nil, buf.String(), err
	}
	c.PgConn().Frontend().Untrace()
	return c, "", nil
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestSessionStartClosesRetiredStatements: after a schema change retired
// the statements a backend holds, the next session that starts on that
// backend closes them there (with a Flush, since nothing of the client's
// follows yet) and its first statement runs, also with several shards,
// where a session waits for everything it sent to be answered.
func TestSessionStartClosesRetiredStatements(t *testing.T) {
	// One backend per pool: the next session starts on the backend that
	// holds the retired statements.
	sh := startSharded(t, 2, func(cfg *config.Config) { cfg.Pool.Size = 1 })
	sh.srv.SetTxnLog(newMemTxnLog())
	ctx := testCtx(t)
	a := sh.connect(ctx)
	if _, err := a.Exec(ctx, "CREATE TABLE keyed (user_id bigint, v int)"); err != nil {
		t.Fatal(err)
	}
	// Prepared on both shards' backends.
	for k := range 20 {
		var n int
		if err := a.QueryRow(ctx, "SELECT count(*) FROM keyed WHERE user_id = $1", k).Scan(&n); err != nil || n != 0 {
			t.Fatalf("prepared statement: %d, %v", n, err)
		}
	}
	if _, err := a.Exec(ctx, "CREATE TABLE retired_by (user_id bigint, v int)"); err != nil {
		t.Fatal(err)
	}
	for i := range 8 {
		c := sh.connect(ctx)
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		var v int
		err := c.QueryRow(qctx, "SELECT 41 + $1::int", i).Scan(&v)
		cancel()
		if err != nil || v != 41+i {
			t.Fatalf("session %d after the schema change: %d, %v\n%s", i, v, err, sh.srv.DebugSessions())
		}
	}
}

// TestShutdownGivesUpOnStuckSessions: a client pipelines a second query
// behind a long one (with several shards its session waits for the first
// answer before routing the second); a shutdown whose time runs out closes
// the connection and returns within a few seconds, not when the long query
// ends.
func TestShutdownGivesUpOnStuckSessions(t *testing.T) {
	sh := startSharded(t, 2)
	ctx := testCtx(t)
	c := sh.pgconn(ctx)
	var batch []byte
	batch, _ = (&pgproto3.Query{String: "/* pgshard:primary */ SELECT pg_sleep(30)"}).Encode(batch)
	batch, _ = (&pgproto3.Query{String: "SELECT 1"}).Encode(batch)
	if _, err := c.Conn().Write(batch); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "the long query to run", func() error {
		total := 0
		for _, s := range sh.topo.Shards {
			n, err := s.Primary.QueryValue(ctx, sh.db,
				"SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' AND state = 'active' AND pid <> pg_backend_pid()")
			if err != nil {
				return err
			}
			if n == "1" {
				total++
			}
		}
		if total != 1 {
			return fmt.Errorf("running on %d shards", total)
		}
		return nil
	})
	start := time.Now()
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	err := sh.srv.Shutdown(sctx)
	if took := time.Since(start); took > 15*time.Second {
		t.Fatalf("Shutdown returned after %s", took)
	}
	if err == nil {
		t.Fatal("Shutdown reported no stragglers")
	}
	t.Logf("Shutdown: %v after %s", err, time.Since(start).Round(time.Millisecond))
}

// INSERT … SELECT into a sharded table whose SELECT reads no sharded
// table runs on every shard, each keeping the rows whose key it owns (one
// from a sharded table copies co-located rows where they are): in
// every protocol mode each row lands once, on its owner, the tag counts
// all rows, RETURNING gives them all; a failure on one shard (a duplicate
// key, a NULL key) leaves no row anywhere; in a transaction the rows
// commit or roll back with it.
func TestInsertSelectAcrossShards(t *testing.T) {
	sh := startShardedWithLog(t, 2)
	ctx := testCtx(t)
	sh.createSharded(ctx, "ins_sel", "user_id bigint PRIMARY KEY, note text, mode int")
	c := sh.connect(ctx)
	placed := func() map[int64]int { return sh.placement(ctx, "ins_sel") }
	for m, mode := range allModes {
		lo := int64(100 * (m + 1))
		rows, err := c.Query(ctx, "INSERT INTO ins_sel (note, user_id, mode) SELECT 'n' || g, g, $1 FROM generate_series($2::bigint, $3::bigint) g RETURNING user_id", mode, m, lo, lo+19)
		if err != nil {
			t.Fatalf("%v: %v", mode, err)
		}
		keys, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil || len(keys) != 20 || rows.CommandTag().String() != "INSERT 0 20" {
			t.Fatalf("%v: RETURNING %d rows, tag %q, %v; want 20 rows, INSERT 0 20", mode, len(keys), rows.CommandTag(), err)
		}
		// A duplicate on one shard, a NULL key: nothing of either lands.
		if _, err := c.Exec(ctx, "INSERT INTO ins_sel (user_id, mode) SELECT g, $1 FROM generate_series($2::bigint, $3::bigint) g", mode, -1, lo+19, lo+40); sqlState(err) != "23505" {
			t.Fatalf("%v: a duplicate key: %v, want 23505", mode, err)
		}
		if _, err := c.Exec(ctx, "INSERT INTO ins_sel (user_id, mode) SELECT nullif(g, $2), $1 FROM generate_series($2::bigint, $3::bigint) g", mode, -1, lo+50, lo+60); sqlState(err) != "22P02" || !strings.Contains(err.Error(), "NULL shard key") {
			t.Fatalf("%v: a NULL key: %v, want 22P02 naming the NULL shard key", mode, err)
		}
	}
	got := placed()
	if len(got) != 20*len(allModes) {
		t.Fatalf("%d rows placed, want %d", len(got), 20*len(allModes))
	}
	shards := map[int]bool{}
	for _, i := range got {
		shards[i] = true
	}
	if len(shards) != 2 {
		t.Fatalf("rows on %d shards, want 2", len(shards))
	}
	for _, commit := range []bool{false, true} {
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if tag, err := tx.Exec(ctx, "INSERT INTO ins_sel (user_id) SELECT g FROM generate_series(1000, 1009) g"); err != nil || tag.String() != "INSERT 0 10" {
			t.Fatalf("in a transaction: %q %v", tag, err)
		}
		var n int
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM ins_sel WHERE user_id >= 1000").Scan(&n); err != nil || n != 10 {
			t.Fatalf("the transaction sees %d of its rows (%v), want 10", n, err)
		}
		if commit {
			err = tx.Commit(ctx)
		} else {
			err = tx.Rollback(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
		want := 20 * len(allModes)
		if commit {
			want += 10
		}
		if n := len(placed()); n != want {
			t.Fatalf("commit %v: %d rows, want %d", commit, n, want)
		}
	}
	// From a sharded table: a co-located copy, each shard inserting the
	// rows it has, on every shard or on the key's.
	sh.createSharded(ctx, "ins_copy", "user_id bigint PRIMARY KEY, note text")
	for m, mode := range allModes {
		tag, err := c.Exec(ctx, "INSERT INTO ins_copy (user_id, note) SELECT s.user_id, s.note FROM ins_sel s WHERE s.mode = $1", mode, m)
		if err != nil || tag.String() != "INSERT 0 20" {
			t.Fatalf("%v: a co-located copy: %q %v, want INSERT 0 20", mode, tag, err)
		}
		tag, err = c.Exec(ctx, "INSERT INTO ins_copy (user_id, note) SELECT user_id, 'keyed' FROM ins_sel WHERE user_id = $1 ON CONFLICT (user_id) DO UPDATE SET note = excluded.note", mode, 1000+m)
		if err != nil || tag.String() != "INSERT 0 1" {
			t.Fatalf("%v: a keyed copy: %q %v, want INSERT 0 1", mode, tag, err)
		}
	}
	if got := sh.placement(ctx, "ins_copy"); len(got) != 20*len(allModes)+len(allModes) {
		t.Fatalf("%d rows copied, want %d", len(got), 21*len(allModes))
	}
	// A constant key runs the whole SELECT on its shard: aggregates too.
	for m, mode := range allModes {
		var note string
		err := c.QueryRow(ctx, "INSERT INTO ins_copy (user_id, note) SELECT $1::bigint, string_agg(g::text, ',' ORDER BY g DESC) FROM generate_series(1, 3) g HAVING count(*) = 3 RETURNING note",
			mode, 5000+m).Scan(&note)
		if err != nil || note != "3,2,1" {
			t.Fatalf("%v: a keyed INSERT … SELECT with an aggregate: %q %v", mode, note, err)
		}
	}
	if got := sh.placement(ctx, "ins_copy"); len(got) != 22*len(allModes) {
		t.Fatalf("%d rows copied, want %d", len(got), 22*len(allModes))
	}
	if _, err := c.Exec(ctx, "INSERT INTO ins_copy (user_id) SELECT mode FROM ins_sel"); sqlState(err) != "0A000" {
		t.Fatalf("a copy whose key is not the source's key: %v, want 0A000", err)
	}
	if n := sh.prepared(ctx); n != 0 {
		t.Fatalf("%d prepared transactions left", n)
	}
}

// A statement over several shards whose text leaves a parameter unused is
// refused as PostgreSQL refuses it (42P18: its type cannot be inferred);
// pgshard declares only the parameters its own rewrite dropped (HAVING).
func TestScatterUnusedParameter(t *testing.T) {
	sh := startShardedWithLog(t, 2)
	ctx := testCtx(t)
	sh.createSharded(ctx, "unused_param", "user_id bigint PRIMARY KEY, v int")
	c := sh.connect(ctx)
	for _, sql := range []string{"SELECT count(*) FROM unused_param WHERE user_id > $2", "UPDATE unused_param SET v = 1 WHERE user_id > $2"} {
		if _, err := c.Exec(ctx, sql, pgx.QueryExecModeExec, 1, 0); sqlState(err) != "42P18" {
			t.Errorf("%s: %v, want 42P18", sql, err)
		}
	}
	if _, err := c.Exec(ctx, "INSERT INTO unused_param (user_id, v) VALUES (1, 1), (2, 1), (3, 2)"); err != nil {
		t.Fatal(err)
	}
	rows, err := c.Query(ctx, "SELECT v FROM unused_param WHERE user_id > $1 GROUP BY v HAVING count(*) > $2 ORDER BY v", pgx.QueryExecModeExec, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil || len(got) != 1 || got[0] != 1 {
		t.Fatalf("HAVING with a parameter the shards do not see: %v %v, want [1]", got, err)
	}
}

// Text merged across shards is ordered and compared as bytes. A merged read
// of a table with a column under another collation (ICU, or a
// nondeterministic one) is refused, not answered in another order or with
// other groups than PostgreSQL's; so is a COLLATE clause. Once the
// column's collation changes through pgshard, reads merge again.
func TestScatterRefusesOtherCollations(t *testing.T) {
	sh := startShardedWithLog(t, 2)
	ctx := testCtx(t)
	sh.onEveryShard(ctx, `CREATE COLLATION coll_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)`)
	sh.createSharded(ctx, "coll_icu", `user_id bigint PRIMARY KEY, s text COLLATE "und-x-icu", c text`)
	sh.createSharded(ctx, "coll_nd", `user_id bigint PRIMARY KEY, s text COLLATE coll_ci`)
	sh.createSharded(ctx, "coll_c", `user_id bigint PRIMARY KEY, s text`)
	c := sh.connect(ctx)
	words := []string{"a", "B", "b", "A", "_z", "Z", "é", "e"}
	for _, tbl := range []string{"coll_icu", "coll_nd", "coll_c"} {
		for i, w := range words {
			if _, err := c.Exec(ctx, "INSERT INTO "+tbl+" (user_id, s) VALUES ($1, $2)", i+1, w); err != nil {
				t.Fatal(err)
			}
		}
	}
	byteOrder := slices.Clone(words)
	slices.Sort(byteOrder)
	read := func(mode pgx.QueryExecMode, sql string) ([]string, error) {
		rows, err := c.Query(ctx, sql, mode)
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
			v, err := r.Values()
			if err != nil {
				return "", err
			}
			return fmt.Sprint(v[0]), nil
		})
	}
	refused := map[string]string{
		"SELECT s FROM coll_icu ORDER BY s":                                   "s (und-x-icu)",
		"SELECT min(s) FROM coll_icu":                                         "s (und-x-icu)",
		"SELECT c FROM coll_icu ORDER BY c":                                   "s (und-x-icu)", // per table, not per column
		"SELECT s FROM coll_nd GROUP BY s":                                    "s (coll_ci)",
		"SELECT count(DISTINCT s) FROM coll_nd":                               "s (coll_ci)",
		`SELECT s FROM coll_c ORDER BY s COLLATE "und-x-icu"`:                 `COLLATE "und-x-icu"`,
		`SELECT max(s COLLATE "und-x-icu") FROM coll_c WHERE user_id > 0`:     `COLLATE "und-x-icu"`,
		"SELECT c.s FROM coll_c c JOIN coll_icu i USING (user_id) ORDER BY 1": "s (und-x-icu)",
	}
	for _, mode := range allModes {
		for sql, want := range refused {
			if _, err := read(mode, sql); sqlState(err) != "0A000" || !strings.Contains(err.Error(), want) {
				t.Errorf("%v: %s: %v, want 0A000 naming %s", mode, sql, err, want)
			}
		}
		if got, err := read(mode, "SELECT s FROM coll_c ORDER BY s"); err != nil || !slices.Equal(got, byteOrder) {
			t.Errorf("%v: byte order: %q %v, want %q", mode, got, err, byteOrder)
		}
		if got, err := read(mode, "SELECT count(*) FROM coll_icu"); err != nil || !slices.Equal(got, []string{"8"}) {
			t.Errorf("%v: count over the ICU table: %q %v", mode, got, err)
		}
		if got, err := read(mode, "SELECT s FROM coll_icu WHERE user_id = 3 ORDER BY s"); err != nil || !slices.Equal(got, []string{"b"}) {
			t.Errorf("%v: a keyed read of the ICU table: %q %v", mode, got, err)
		}
	}
	// In a failed transaction the first merged read of a table (its
	// collations not read yet) fails as PostgreSQL fails it, and the
	// session goes on.
	sh.createSharded(ctx, "coll_fresh", `user_id bigint PRIMARY KEY, s text`)
	for _, mode := range allModes {
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "SELECT s FROM coll_c ORDER BY s"); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "SELECT 1/0"); sqlState(err) != "22012" {
			t.Fatalf("%v: %v", mode, err)
		}
		if _, err := read(mode, "SELECT s FROM coll_fresh ORDER BY s"); sqlState(err) != "25P02" {
			t.Errorf("%v: a merged read in a failed transaction: %v, want 25P02", mode, err)
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatalf("%v: %v", mode, err)
		}
		if got, err := read(mode, "SELECT count(*) FROM coll_c"); err != nil || !slices.Equal(got, []string{"8"}) {
			t.Fatalf("%v: after the failed transaction: %q %v", mode, got, err)
		}
		sh.srv.ForgetCollatedForTest()
	}
	if _, err := c.Exec(ctx, `ALTER TABLE coll_icu ALTER COLUMN s TYPE text COLLATE "C"`); err != nil {
		t.Fatal(err)
	}
	if got, err := read(pgx.QueryExecModeExec, "SELECT s FROM coll_icu ORDER BY s"); err != nil || !slices.Equal(got, byteOrder) {
		t.Errorf("after ALTER … COLLATE \"C\": %q %v, want %q", got, err, byteOrder)
	}
}

// An unqualified name is the table the session's search_path finds: a
// sharded table of another schema is routed as sharded under a path that
// starts there, the reference table of the same name in public under the
// default path; CREATE TABLE without a schema is refused under another
// path (pgshard registers the table under its schema).
func TestSearchPathRoutesBySchema(t *testing.T) {
	sh := startShardedWithLog(t, 2)
	ctx := testCtx(t)
	c := sh.connect(ctx)
	for _, sql := range []string{
		"CREATE SCHEMA sp",
		"CREATE TABLE sp.paths (user_id bigint PRIMARY KEY, v int)",
		"CREATE TABLE paths (id int PRIMARY KEY, v int)",
		"INSERT INTO sp.paths SELECT g, g FROM generate_series(1, 40) g",
		"INSERT INTO paths VALUES (1, -1)",
	} {
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	count := func(mode pgx.QueryExecMode, sql string, args ...any) int64 {
		t.Helper()
		var n int64
		if err := c.QueryRow(ctx, sql, append([]any{mode}, args...)...).Scan(&n); err != nil {
			t.Fatalf("%v: %s: %v", mode, sql, err)
		}
		return n
	}
	for _, set := range []string{"SET search_path = sp, public", `SET search_path TO "sp", "$user", public`, "SET search_path = 'sp', 'public'"} {
		if _, err := c.Exec(ctx, set); err != nil {
			t.Fatal(err)
		}
		for i, mode := range allModes {
			if n := count(mode, "SELECT count(*) FROM paths"); n != 40+int64(i) {
				t.Fatalf("%s, %v: count(*) of the schema's sharded table: %d, want %d", set, mode, n, 40+i)
			}
			if n := count(mode, "SELECT v FROM paths WHERE user_id = $1", 7); n != 7 {
				t.Fatalf("%s, %v: a keyed read: %d", set, mode, n)
			}
			if _, err := c.Exec(ctx, "INSERT INTO paths (user_id, v) VALUES ($1, $2)", mode, 100+i, i); err != nil {
				t.Fatalf("%s, %v: %v", set, mode, err)
			}
			if n := count(mode, "SELECT count(*) FROM public.paths"); n != 1 {
				t.Fatalf("%s, %v: the public table: %d rows", set, mode, n)
			}
		}
		if _, err := c.Exec(ctx, "DELETE FROM paths WHERE user_id >= 100"); err != nil {
			t.Fatal(err)
		}
	}
	if got := sh.placement(ctx, "sp.paths"); len(got) != 40 {
		t.Fatalf("sp.paths: %d rows placed, want 40", len(got))
	}
	if _, err := c.Exec(ctx, "CREATE TABLE unq (user_id bigint PRIMARY KEY)"); sqlState(err) != "0A000" || !strings.Contains(err.Error(), "name the schema") {
		t.Fatalf("CREATE TABLE without a schema under another path: %v, want 0A000", err)
	}
	if _, err := c.Exec(ctx, "CREATE TABLE sp.q (user_id bigint PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "RESET search_path"); err != nil {
		t.Fatal(err)
	}
	if n := count(pgx.QueryExecModeExec, "SELECT v FROM paths WHERE id = 1"); n != -1 {
		t.Fatalf("the default path: %d, want the public table's -1", n)
	}
}
