package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgshard/pgshard/proxy"
	"github.com/pgshard/pgshard/shardmap"
)

// movingRow is one row of the test's table mv.
type movingRow struct{ k, g, v int64 }

// waitReplicas waits until every shard's replicas have replayed what its
// primary has written (rows planted directly on a primary, which
// read-your-writes does not know of).
func (sh *shardedHarness) waitReplicas(ctx context.Context) {
	sh.t.Helper()
	for i, s := range sh.topo.Shards {
		var lsn string
		if err := sh.shardConn(ctx, i).QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn); err != nil {
			sh.t.Fatal(err)
		}
		for _, r := range s.Replicas {
			c, err := pgx.Connect(ctx, r.URL("app", "app", sh.db))
			if err != nil {
				sh.t.Fatal(err)
			}
			for {
				var ok bool
				if err := c.QueryRow(ctx, "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn).Scan(&ok); err != nil {
					sh.t.Fatal(err)
				}
				if ok {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			c.Close(ctx)
		}
	}
}

// setMoving puts a reshard job moving ranges into the map (nil: deletes it).
func (sh *shardedHarness) setMoving(ranges []shardmap.Range) {
	sh.t.Helper()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	cmd := shardmap.DeleteJob("job-1")
	if ranges != nil {
		cmd = shardmap.PutJob(shardmap.Job{ID: "job-1", Kind: "add", Phase: "copy", Moving: ranges}, 0)
	}
	m, err := sh.m.Apply(cmd)
	if err != nil {
		sh.t.Fatal(err)
	}
	sh.m = m
	sh.srv.SetMap(m)
}

// The answers a scatter statement must give: those of one database
// holding model's rows.
type movingTruth struct {
	count, sum int64
	groups     string // "g:count:sum," in g order
	top        string // user_id:v of the 10 highest v (ties by user_id)
}

func truthOf(model map[int64]movingRow) movingTruth {
	var t movingTruth
	type agg struct{ n, s int64 }
	groups := map[int64]*agg{}
	var rows []movingRow
	for _, r := range model {
		t.count++
		t.sum += r.v
		if groups[r.g] == nil {
			groups[r.g] = &agg{}
		}
		groups[r.g].n++
		groups[r.g].s += r.v
		rows = append(rows, r)
	}
	var gs []int64
	for g := range groups {
		gs = append(gs, g)
	}
	slices.Sort(gs)
	for _, g := range gs {
		t.groups += fmt.Sprintf("%d:%d:%d,", g, groups[g].n, groups[g].s)
	}
	sort.Slice(rows, func(i, j int) bool {
		if rows[i].v != rows[j].v {
			return rows[i].v > rows[j].v
		}
		return rows[i].k < rows[j].k
	})
	for _, r := range rows[:min(10, len(rows))] {
		t.top += fmt.Sprintf("%d:%d,", r.k, r.v)
	}
	return t
}

// scatterAnswers asks pgshard the truth's questions in one mode.
func scatterAnswers(ctx context.Context, t *testing.T, c *pgx.Conn, mode pgx.QueryExecMode) (movingTruth, int64) {
	t.Helper()
	var a movingTruth
	if err := c.QueryRow(ctx, "SELECT count(*) FROM mv", mode).Scan(&a.count); err != nil {
		t.Fatalf("%v: count: %v", mode, err)
	}
	if err := c.QueryRow(ctx, "SELECT sum(v) FROM mv", mode).Scan(&a.sum); err != nil {
		t.Fatalf("%v: sum: %v", mode, err)
	}
	rows, err := c.Query(ctx, "SELECT g, count(*), sum(v) FROM mv GROUP BY g HAVING count(*) > $1 ORDER BY g", mode, 0)
	if err != nil {
		t.Fatalf("%v: group by: %v", mode, err)
	}
	for rows.Next() {
		var g, n, s int64
		if err := rows.Scan(&g, &n, &s); err != nil {
			t.Fatal(err)
		}
		a.groups += fmt.Sprintf("%d:%d:%d,", g, n, s)
	}
	if rows.Err() != nil {
		t.Fatalf("%v: group by: %v", mode, rows.Err())
	}
	rows, err = c.Query(ctx, "SELECT user_id, v FROM mv ORDER BY v DESC, user_id LIMIT $1", mode, 10)
	if err != nil {
		t.Fatalf("%v: order by: %v", mode, err)
	}
	for rows.Next() {
		var k, v int64
		if err := rows.Scan(&k, &v); err != nil {
			t.Fatal(err)
		}
		a.top += fmt.Sprintf("%d:%d,", k, v)
	}
	if rows.Err() != nil {
		t.Fatalf("%v: order by: %v", mode, rows.Err())
	}
	var distinct int64
	if err := c.QueryRow(ctx, "SELECT count(DISTINCT user_id) FROM mv", mode).Scan(&distinct); err != nil {
		t.Fatalf("%v: count distinct: %v", mode, err)
	}
	return a, distinct
}

// copyOut runs a COPY … TO STDOUT through pgshard and returns its rows
// (sorted) and its count.
func copyOut(ctx context.Context, t *testing.T, c *pgx.Conn, sql string) ([]string, int64) {
	t.Helper()
	var buf bytes.Buffer
	tag, err := c.PgConn().CopyTo(ctx, &buf, sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if buf.Len() == 0 {
		lines = nil
	}
	slices.Sort(lines)
	return lines, tag.RowsAffected()
}

// While a reshard job moves ranges, rows of them exist on two shards;
// every statement over several shards (scatter reads, merged aggregates,
// ORDER BY … LIMIT, count(DISTINCT key), keyed reads over several shards,
// UPDATE and DELETE without a key, COPY TO) answers exactly what one
// database would, in the simple and the extended protocol; without the
// job the same statements count the planted copies.
func TestScatterExcludesMovingRows(t *testing.T) {
	sh := startShardedWithLog(t, 2)
	ctx := testCtx(t)
	c := sh.connect(ctx)
	mustExec(t, c, "CREATE TABLE mv (user_id bigint NOT NULL PRIMARY KEY, g int NOT NULL, v bigint NOT NULL, doubled bigint GENERATED ALWAYS AS (v * 2) STORED)")
	const n = 300
	model := map[int64]movingRow{}
	var vals []string
	for k := int64(1); k <= n; k++ {
		model[k] = movingRow{k: k, g: k % 5, v: k}
		vals = append(vals, fmt.Sprintf("(%d, %d, %d)", k, k%5, k))
	}
	mustExec(t, c, "INSERT INTO mv (user_id, g, v) VALUES "+strings.Join(vals, ", "))
	mustExec(t, c, "CREATE TABLE mv_groups (g int PRIMARY KEY, label text)") // a reference table
	mustExec(t, c, "INSERT INTO mv_groups VALUES (0, 'zero'), (1, 'one'), (2, 'two'), (3, 'three'), (4, 'four')")

	// One moving range per shard: the one of its ranges holding the most
	// keys. Its rows get the highest values (so that ORDER BY … LIMIT
	// would show a copy), then are planted on the other shard.
	sh.mu.Lock()
	ring := sh.m.Ring()
	sh.mu.Unlock()
	var moving []shardmap.Range
	movingKeys := make([][]int64, 2)
	for i, name := range sh.dbs {
		var best shardmap.Range
		var bestKeys []int64
		for _, r := range ring.Ranges(name) {
			var ks []int64
			for k := int64(1); k <= n; k++ {
				if r.Contains(shardmap.HashInt64(k)) {
					ks = append(ks, k)
				}
			}
			if len(ks) > len(bestKeys) {
				best, bestKeys = r, ks
			}
		}
		if len(bestKeys) < 3 {
			t.Fatalf("shard %s: no range with keys", name)
		}
		moving = append(moving, best)
		movingKeys[i] = bestKeys
		if ring.Lookup(best.End) != name {
			t.Fatalf("range %v is not %s's", best, name)
		}
	}
	for i := range movingKeys {
		for _, k := range movingKeys[i] {
			r := model[k]
			r.v += 10000 * int64(i+1)
			model[k] = r
		}
		tag, err := c.Exec(ctx, "UPDATE mv SET v = v + $1 WHERE user_id = ANY($2)", 10000*(i+1), movingKeys[i])
		if err != nil || tag.RowsAffected() != int64(len(movingKeys[i])) {
			t.Fatalf("update of the moving keys: %v %v", tag, err)
		}
	}
	plant := func() {
		for i := range movingKeys {
			other := 1 - i
			for _, k := range movingKeys[i] {
				r := model[k]
				if _, err := sh.shardConn(ctx, other).Exec(ctx, "INSERT INTO mv (user_id, g, v) VALUES ($1, $2, $3)", r.k, r.g, r.v); err != nil {
					t.Fatal(err)
				}
			}
		}
		sh.waitReplicas(ctx)
	}
	plant()
	planted := int64(len(movingKeys[0]) + len(movingKeys[1]))

	truth := truthOf(model)
	modes := []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec}
	// keyed over two shards: one moving key of shard 0, one key of shard 1.
	k0, k1 := movingKeys[0][0], movingKeys[1][0]
	multi := func(mode pgx.QueryExecMode) int64 {
		var got int64
		if err := c.QueryRow(ctx, "SELECT count(*) FROM mv WHERE user_id IN ($1, $2)", mode, k0, k1).Scan(&got); err != nil {
			t.Fatalf("%v: keyed read over two shards: %v", mode, err)
		}
		return got
	}

	// Without the job, the copies are counted: the test can fail.
	got, distinct := scatterAnswers(ctx, t, c, pgx.QueryExecModeSimpleProtocol)
	if got.count != truth.count+planted || distinct != truth.count+planted || got.top == truth.top || multi(pgx.QueryExecModeSimpleProtocol) != 4 {
		t.Fatalf("without a job: %+v, distinct %d; want the %d planted copies counted", got, distinct, planted)
	}

	sh.setMoving(moving)
	check := func(when string) {
		t.Helper()
		truth := truthOf(model)
		for _, mode := range modes {
			got, distinct := scatterAnswers(ctx, t, c, mode)
			if got != truth || distinct != truth.count {
				t.Errorf("%s, %v:\n got %+v (distinct %d)\nwant %+v", when, mode, got, distinct, truth)
			}
			if m := multi(mode); m != 2 {
				t.Errorf("%s, %v: keyed read over two shards counted %d rows, want 2", when, mode, m)
			}
		}
		// Joined with a reference table, with an OR in WHERE.
		wantJoin := int64(0)
		for _, r := range model {
			if r.g == 3 || r.v%2 == 0 {
				wantJoin++
			}
		}
		for _, mode := range modes {
			var cnt int64
			if err := c.QueryRow(ctx, "SELECT count(*) FROM mv m JOIN mv_groups USING (g) WHERE mv_groups.label = $1 OR m.v % 2 = 0", mode, "three").Scan(&cnt); err != nil || cnt != wantJoin {
				t.Errorf("%s, %v: join with a reference table: %d (%v), want %d", when, mode, cnt, err, wantJoin)
			}
		}
		// Inside a transaction too.
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var cnt int64
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM mv").Scan(&cnt); err != nil || cnt != truth.count {
			t.Errorf("%s, in a transaction: count %d (%v), want %d", when, cnt, err, truth.count)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		// COPY TO: the table (generated columns left out, as COPY does),
		// a column list with options, a query.
		var want, wantCSV, wantQuery []string
		for _, r := range model {
			want = append(want, fmt.Sprintf("%d\t%d\t%d", r.k, r.g, r.v))
			wantCSV = append(wantCSV, fmt.Sprintf("%d;%d", r.v, r.k))
			if r.g == 4 {
				wantQuery = append(wantQuery, fmt.Sprintf("%d,%d", r.k, 2*r.v))
			}
		}
		slices.Sort(want)
		slices.Sort(wantCSV)
		wantCSV = append([]string{"v;user_id"}, wantCSV...)
		slices.Sort(wantCSV)
		slices.Sort(wantQuery)
		if lines, cnt := copyOut(ctx, t, c, "COPY mv TO STDOUT"); !slices.Equal(lines, want) || cnt != int64(len(want)) {
			t.Errorf("%s: COPY mv TO STDOUT: %d rows (tag %d), want %d", when, len(lines), cnt, len(want))
		}
		if lines, cnt := copyOut(ctx, t, c, "COPY mv (v, user_id) TO STDOUT WITH (FORMAT csv, HEADER, DELIMITER ';')"); !slices.Equal(lines, wantCSV) || cnt != int64(len(wantCSV)-1) {
			t.Errorf("%s: COPY mv (v, user_id) TO STDOUT CSV: %d lines (tag %d), want %d", when, len(lines), cnt, len(wantCSV))
		}
		if lines, cnt := copyOut(ctx, t, c, "COPY (SELECT user_id, doubled FROM mv WHERE g = 4) TO STDOUT (FORMAT csv)"); !slices.Equal(lines, wantQuery) || cnt != int64(len(wantQuery)) {
			t.Errorf("%s: COPY (SELECT …) TO STDOUT: %d rows (tag %d), want %d", when, len(lines), cnt, len(wantQuery))
		}
	}
	check("with the job")

	// UPDATE and DELETE without a key count (and change) only the owned
	// rows; the copies stay as they were.
	for i, mode := range modes {
		tag, err := c.Exec(ctx, "UPDATE mv SET v = v + 1 WHERE g <> $1", mode, 100+i)
		if err != nil || tag.String() != "UPDATE "+strconv.Itoa(len(model)) {
			t.Fatalf("%v: UPDATE without a key: %v %v, want UPDATE %d", mode, tag, err, len(model))
		}
		for k, r := range model {
			r.v++
			model[k] = r
		}
	}
	for _, mode := range modes {
		// Keyed over two shards, each holding a copy of the other's key.
		tag, err := c.Exec(ctx, "UPDATE mv SET v = v WHERE user_id IN ($1, $2)", mode, k0, k1)
		if err != nil || tag.String() != "UPDATE 2" {
			t.Fatalf("%v: keyed UPDATE over two shards: %v %v, want UPDATE 2", mode, tag, err)
		}
	}
	check("after UPDATE")
	var copyV int64
	if err := sh.shardConn(ctx, 1).QueryRow(ctx, "SELECT v FROM mv WHERE user_id = $1", k0).Scan(&copyV); err != nil || copyV != model[k0].v-int64(len(modes)) {
		t.Fatalf("the copy of %d on the other shard: v %d (%v), want it untouched (%d)", k0, copyV, err, model[k0].v-int64(len(modes)))
	}
	for i, mode := range modes {
		g := int64(i)
		want := 0
		for k, r := range model {
			if r.g == g {
				want++
				delete(model, k)
			}
		}
		tag, err := c.Exec(ctx, "DELETE FROM mv WHERE g = $1", mode, g)
		if err != nil || tag.String() != "DELETE "+strconv.Itoa(want) {
			t.Fatalf("%v: DELETE without a key: %v %v, want DELETE %d", mode, tag, err, want)
		}
	}
	sh.waitReplicas(ctx)
	check("after DELETE")

	// A shape that cannot exclude the moving rows is refused, not
	// answered wrongly.
	sh.setMoving(nil) // schema changes wait for the job's end
	mustExec(t, c, "CREATE TABLE mv_other (user_id bigint NOT NULL, w int)")
	sh.setMoving(moving)
	for _, mode := range modes {
		if _, err := c.Exec(ctx, "SELECT count(*) FROM mv FULL JOIN mv_other USING (user_id) WHERE mv.g <> $1", mode, 7); sqlState(err) != "55000" {
			t.Errorf("%v: FULL JOIN of sharded tables during a job: %v, want 55000", mode, err)
		}
	}

	// Job over: the copies are counted again (cleanup would delete them).
	sh.setMoving(nil)
	got, _ = scatterAnswers(ctx, t, c, pgx.QueryExecModeSimpleProtocol)
	if got.count <= truthOf(model).count {
		t.Fatalf("without the job: count %d, want more than %d", got.count, truthOf(model).count)
	}
}

// txnModes are the protocol modes the transaction tests below run in.
var txnModes = []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec}

// startMovingTxns starts pgshard over 3 shards with a table mv keyed by
// user_id and returns a client.
func startMovingTxns(t *testing.T) (*shardedHarness, context.Context, *pgx.Conn) {
	sh := startShardedWithLog(t, 3)
	ctx := testCtx(t)
	c := sh.connect(ctx)
	mustExec(t, c, "CREATE TABLE mv (user_id bigint NOT NULL PRIMARY KEY, v bigint NOT NULL)")
	return sh, ctx, c
}

// beginOn opens a transaction at home on the shard of key k: its first
// statement reads k.
func beginOn(ctx context.Context, t *testing.T, c *pgx.Conn, mode pgx.QueryExecMode, k int64) pgx.Tx {
	t.Helper()
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var v int64
	if err := tx.QueryRow(ctx, "SELECT v FROM mv WHERE user_id = $1", mode, k).Scan(&v); err != nil {
		t.Fatalf("%v: %v", mode, err)
	}
	return tx
}

// A statement spread over some shards inside a transaction, while a job
// moves rows: the transaction's home shard is a leg even when the
// statement's keys are elsewhere, and runs with the moving ranges it does
// not own excluded. It used to be refused (55000: legs and plan differ),
// and an extra leg is harmless: rows live on their owner, or in a moving
// range the leg excludes.
func TestSpreadInTransactionDuringAJob(t *testing.T) {
	sh, ctx, c := startMovingTxns(t)
	keys := map[int][]int64{}
	for k := int64(1); len(keys[0]) < 3 || len(keys[1]) < 3 || len(keys[2]) < 3; k++ {
		keys[sh.owner(k)] = append(keys[sh.owner(k)], k)
		if _, err := c.Exec(ctx, "INSERT INTO mv VALUES ($1, 0)", k); err != nil {
			t.Fatal(err)
		}
	}
	kA, kB, kC := keys[0][0], keys[1][0], keys[2][0]
	// kB's range moves to shard0, which holds a copy of its row already.
	sh.mu.Lock()
	ring := sh.m.Ring()
	sh.mu.Unlock()
	var moving shardmap.Range
	for _, r := range ring.Ranges(sh.dbs[1]) {
		if r.Contains(shardmap.HashInt64(kB)) {
			moving = r
		}
	}
	if _, err := sh.shardConn(ctx, 0).Exec(ctx, "INSERT INTO mv VALUES ($1, 0)", kB); err != nil {
		t.Fatal(err)
	}
	sh.waitReplicas(ctx)
	sh.setMoving([]shardmap.Range{moving})
	for round, mode := range txnModes {
		tx := beginOn(ctx, t, c, mode, kA) // home: shard0
		var v, n int64
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM mv WHERE user_id IN ($1, $2)", mode, kB, kC).Scan(&n); err != nil || n != 2 {
			t.Fatalf("%v: keyed read over shard1 and shard2 in a transaction homed on shard0: %d, %v; want 2", mode, n, err)
		}
		tag, err := tx.Exec(ctx, "UPDATE mv SET v = v + 1 WHERE user_id IN ($1, $2)", mode, kB, kC)
		if err != nil || tag.String() != "UPDATE 2" {
			t.Fatalf("%v: keyed update over shard1 and shard2 in a transaction homed on shard0: %v, %v; want UPDATE 2", mode, tag, err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		for _, k := range []int64{kB, kC} {
			if err := c.QueryRow(ctx, "SELECT v FROM mv WHERE user_id = $1", k).Scan(&v); err != nil || v != int64(round+1) {
				t.Fatalf("%v: key %d: v = %d (%v), want %d", mode, k, v, err, round+1)
			}
		}
	}
	// shard0's copy of kB was not touched: the update ran where kB lives.
	var copyV int64
	if err := sh.shardConn(ctx, 0).QueryRow(ctx, "SELECT v FROM mv WHERE user_id = $1", kB).Scan(&copyV); err != nil || copyV != 0 {
		t.Fatalf("shard0's copy of the moving key: v = %d (%v), want 0", copyV, err)
	}
}

// A cut-over that commits while a statement spread inside a transaction
// is being sent: the statement is planned again on the new ring and runs
// on the new owner too (a leg opened in the transaction), the old owner
// excluding the range it gave away. It used to fail the transaction
// (55000). Statements of the transaction before the cut-over stay where
// they ran.
func TestSpreadInTransactionAcrossACutOver(t *testing.T) {
	sh, ctx, c := startMovingTxns(t)
	var used []int64
	for round, mode := range txnModes {
		// A range of shard1 moves to shard2; shard2 already has its copy
		// of kB's row, as the job's copy phase leaves it.
		ring := sh.current().Ring()
		rng := ring.Ranges(sh.dbs[1])[round]
		kB := keyIn(t, rng, used...)
		kA := kB + 1
		for sh.owner(kA) != 0 || slices.Contains(used, kA) {
			kA++
		}
		used = append(used, kA, kB)
		for _, k := range []int64{kA, kB} {
			if _, err := c.Exec(ctx, "INSERT INTO mv VALUES ($1, 0)", k); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := sh.shardConn(ctx, 2).Exec(ctx, "INSERT INTO mv VALUES ($1, 0)", kB); err != nil {
			t.Fatal(err)
		}
		sh.waitReplicas(ctx)
		sh.moving([]shardmap.Range{rng}, false)

		tx := beginOn(ctx, t, c, mode, kA) // home: shard0
		var n int64
		var cut atomic.Bool
		proxy.SetSpreadLegsHook(func() {
			if cut.CompareAndSwap(false, true) {
				sh.giveRange(rng, sh.dbs[2]) // the cut-over
			}
		})
		tag, err := tx.Exec(ctx, "UPDATE mv SET v = v + 1 WHERE user_id IN ($1, $2)", mode, kA, kB)
		proxy.SetSpreadLegsHook(nil)
		if !cut.Load() {
			t.Fatalf("%v: the statement was not spread inside the transaction: the test proved nothing", mode)
		}
		if err != nil || tag.String() != "UPDATE 2" {
			t.Fatalf("%v: update across the cut-over: %v, %v; want UPDATE 2", mode, tag, err)
		}
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM mv WHERE user_id IN ($1, $2) AND v = 1", mode, kA, kB).Scan(&n); err != nil || n != 2 {
			t.Fatalf("%v: read after the cut-over in the transaction: %d, %v; want 2", mode, n, err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if got := [3]int{sh.rowsWith(ctx, 0, kA, 1), sh.rowsWith(ctx, 1, kB, 1), sh.rowsWith(ctx, 2, kB, 1)}; got != [3]int{1, 0, 1} {
			t.Fatalf("%v: updated rows on shard0 (kA), shard1 (kB, given away), shard2 (kB, its owner now): %v, want [1 0 1]", mode, got)
		}
		sh.moving(nil, false)
	}
}

// rowsWith counts the rows of mv with user_id k and v on shard i directly.
func (sh *shardedHarness) rowsWith(ctx context.Context, i int, k, v int64) int {
	sh.t.Helper()
	var n int
	if err := sh.shardConn(ctx, i).QueryRow(ctx, "SELECT count(*) FROM mv WHERE user_id = $1 AND v = $2", k, v).Scan(&n); err != nil {
		sh.t.Fatal(err)
	}
	return n
}

// While a reshard job moves ranges, an INSERT … SELECT that every shard
// runs still inserts each row once, on its key's owner on the current
// ring (the job copies what lands on a source); a co-located copy reads
// each moving row once, from its owner, though a copy of it sits on the
// other shard (planted here as the job's copy would be).
func TestInsertSelectDuringAJob(t *testing.T) {
	sh := startShardedWithLog(t, 2)
	ctx := testCtx(t)
	c := sh.connect(ctx)
	mustExec(t, c, "CREATE TABLE mv_src (user_id bigint NOT NULL PRIMARY KEY, v int)")
	mustExec(t, c, "CREATE TABLE mv_dst (user_id bigint NOT NULL PRIMARY KEY, v int)")
	sh.mu.Lock()
	ring := sh.m.Ring()
	sh.mu.Unlock()
	moving := ring.Ranges(sh.dbs[0])[:2]
	sh.setMoving(moving)
	defer sh.setMoving(nil)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		for i := range sh.topo.Shards {
			mustExec(t, sh.shardConn(ctx, i), "DELETE FROM mv_src; DELETE FROM mv_dst")
		}
		tag, err := c.Exec(ctx, "INSERT INTO mv_src (user_id, v) SELECT g, g % 7 FROM generate_series($1::bigint, $2::bigint) g", mode, 1, 300)
		if err != nil || tag.String() != "INSERT 0 300" {
			t.Fatalf("%v: %q %v, want INSERT 0 300", mode, tag, err)
		}
		placed := sh.placement(ctx, "mv_src")
		if len(placed) != 300 {
			t.Fatalf("%v: %d keys placed, want 300", mode, len(placed))
		}
		// The job's copies of the moving rows on the other shard.
		planted := 0
		for k := int64(1); k <= 300; k++ {
			h := shardmap.HashInt64(k)
			if slices.ContainsFunc(moving, func(r shardmap.Range) bool { return r.Contains(h) }) {
				mustExec(t, sh.shardConn(ctx, 1-placed[k]), fmt.Sprintf("INSERT INTO mv_src VALUES (%d, %d)", k, k%7))
				planted++
			}
		}
		if planted == 0 {
			t.Fatal("no key in the moving ranges: the test proves nothing")
		}
		if tag, err := c.Exec(ctx, "INSERT INTO mv_dst (user_id, v) SELECT user_id, v FROM mv_src", mode); err != nil || tag.String() != "INSERT 0 300" {
			t.Fatalf("%v: a co-located copy during a job (%d moving rows planted): %q %v, want INSERT 0 300", mode, planted, tag, err)
		}
		if n := len(sh.placement(ctx, "mv_dst")); n != 300 {
			t.Fatalf("%v: %d keys copied, want 300", mode, n)
		}
		if tag, err := c.Exec(ctx, "INSERT INTO mv_dst (user_id, v) SELECT user_id, v FROM mv_src WHERE user_id = $1 ON CONFLICT (user_id) DO UPDATE SET v = excluded.v + 1", mode, 5); err != nil || tag.String() != "INSERT 0 1" {
			t.Fatalf("%v: a keyed co-located copy during a job: %q %v, want INSERT 0 1", mode, tag, err)
		}
	}
}
