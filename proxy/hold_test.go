package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgshard/pgshard/proxy"
	"github.com/pgshard/pgshard/shardmap"
)

// apply applies cmd to the harness's map and hands it to the proxy.
func (sh *shardedHarness) apply(cmd shardmap.Command) *shardmap.Map {
	sh.t.Helper()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	m, err := sh.m.Apply(cmd)
	if err != nil {
		sh.t.Fatal(err)
	}
	sh.m = m
	sh.srv.SetMap(m)
	return m
}

// current returns the harness's map.
func (sh *shardedHarness) current() *shardmap.Map {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.m
}

// giveRange commits a ring on which rng is owned by shard to (as a
// reshard job's cut-over does).
func (sh *shardedHarness) giveRange(rng shardmap.Range, to string) {
	sh.t.Helper()
	m := sh.current()
	toks := m.Ring().Tokens()
	found := false
	for i := range toks {
		if toks[i].Pos == rng.End {
			toks[i].Shard, found = to, true
		}
	}
	if !found {
		sh.t.Fatalf("no token ends %v", rng)
	}
	r, err := shardmap.NewRing(toks)
	if err != nil {
		sh.t.Fatal(err)
	}
	sh.apply(shardmap.SetRing(r, m.RingVersion()))
}

// moving starts (or updates) job j moving rng, frozen when freeze is set.
func (sh *shardedHarness) moving(rng []shardmap.Range, freeze bool) {
	sh.t.Helper()
	m := sh.current()
	j, ok := m.Job("j")
	if !ok {
		j = shardmap.Job{ID: "j", Kind: "add", Phase: "copy"}
	}
	j.Moving, j.FrozenRing = rng, 0
	if freeze {
		j.FrozenRing = m.RingVersion()
	}
	sh.apply(shardmap.PutJob(j, j.Updated))
}

// keyIn returns a key whose hash lies in rng, other than not.
func keyIn(t *testing.T, rng shardmap.Range, not ...int64) int64 {
	t.Helper()
next:
	for k := int64(1); k < 1_000_000; k++ {
		for _, n := range not {
			if k == n {
				continue next
			}
		}
		if rng.Contains(shardmap.HashInt64(k)) {
			return k
		}
	}
	t.Fatalf("no key in %v", rng)
	return 0
}

// keyOutside returns a key owned by shard but not in rng.
func (sh *shardedHarness) keyOutside(rng shardmap.Range, shard int) int64 {
	for k := int64(1); ; k++ {
		if !rng.Contains(shardmap.HashInt64(k)) && sh.owner(k) == shard {
			return k
		}
	}
}

// async runs f in a goroutine; the channel yields its error.
func async(f func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

// stillWaiting fails the test if ch yields within a grace period.
func stillWaiting(t *testing.T, what string, ch <-chan error) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("%s finished while its range was frozen (err %v)", what, err)
	case <-time.After(300 * time.Millisecond):
	}
}

// rowsOn counts the rows of orders with user_id k on shard i directly.
func (sh *shardedHarness) rowsOn(ctx context.Context, i int, k int64) int {
	sh.t.Helper()
	var n int
	if err := sh.shardConn(ctx, i).QueryRow(ctx, "SELECT count(*) FROM orders WHERE user_id = $1", k).Scan(&n); err != nil {
		sh.t.Fatal(err)
	}
	return n
}

// ordersAndKey1 starts two shards with a decision log and a table orders,
// and returns the ring's range that holds key 1.
func ordersAndKey1(t *testing.T) (*shardedHarness, context.Context, shardmap.Range) {
	t.Helper()
	sh := startSharded(t, 2)
	sh.srv.SetTxnLog(newMemTxnLog())
	ctx := testCtx(t)
	if _, err := sh.connect(ctx).Exec(ctx, "CREATE TABLE orders (user_id bigint PRIMARY KEY, v int)"); err != nil {
		t.Fatal(err)
	}
	_, rng, _, err := sh.current().Locate(shardmap.KeyInt, "1")
	if err != nil {
		t.Fatal(err)
	}
	return sh, ctx, rng
}

// A statement on a frozen range waits until the ring gives the range to
// its new owner and then runs there, in both protocols; statements on
// other ranges and other shards do not wait; scatter reads and writes
// wait; schema changes are refused while a job moves rows.
func TestFrozenRangeWaitsForTheNewRing(t *testing.T) {
	sh := startSharded(t, 2)
	sh.srv.SetTxnLog(newMemTxnLog())
	ctx := testCtx(t)
	admin := sh.connect(ctx)
	if _, err := admin.Exec(ctx, "CREATE TABLE orders (user_id bigint PRIMARY KEY, v int)"); err != nil {
		t.Fatal(err)
	}
	_, rng, _, err := sh.current().Locate(shardmap.KeyInt, "1")
	if err != nil {
		t.Fatal(err)
	}
	from := sh.owner(1)
	to := 1 - from
	other := sh.keyOutside(rng, from) // same shard, another range
	sh.moving([]shardmap.Range{rng}, true)

	for round, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		k := keyIn(t, rng, 1, int64(round*1000))
		if round == 0 {
			k = 1
		}
		c := sh.connect(ctx)
		ins := async(func() error {
			_, err := c.Exec(ctx, "INSERT INTO orders VALUES ($1, 1)", mode, k)
			return err
		})
		upd := async(func() error {
			_, err := sh.connect(ctx).Exec(ctx, "UPDATE orders SET v = v + 1", mode)
			return err
		})
		cnt := async(func() error {
			var n int
			return sh.connect(ctx).QueryRow(ctx, "SELECT count(*) FROM orders", mode).Scan(&n)
		})
		// Not held: another range of the same shard.
		if _, err := sh.connect(ctx).Exec(ctx, "INSERT INTO orders VALUES ($1, 1) ON CONFLICT (user_id) DO UPDATE SET v = orders.v + 1", mode, other); err != nil {
			t.Fatal(err)
		}
		stillWaiting(t, fmt.Sprintf("insert of key %d (%v)", k, mode), ins)
		stillWaiting(t, "scatter update", upd)
		stillWaiting(t, "scatter read", cnt)
		// The cut-over: the range now belongs to the other shard.
		sh.giveRange(rng, sh.dbs[to])
		if err := <-ins; err != nil {
			t.Fatalf("insert after the cut-over: %v", err)
		}
		if err := <-upd; err != nil {
			t.Fatalf("scatter update after the cut-over: %v", err)
		}
		if err := <-cnt; err != nil {
			t.Fatalf("scatter read after the cut-over: %v", err)
		}
		if got := sh.rowsOn(ctx, to, k); got != 1 {
			t.Fatalf("key %d: %d rows on its new owner %s, want 1", k, got, sh.dbs[to])
		}
		if got := sh.rowsOn(ctx, from, k); got != 0 {
			t.Fatalf("key %d: %d rows on its old owner %s", k, got, sh.dbs[from])
		}
		// Next round: freeze again and move the range back.
		from, to = to, from
		sh.moving([]shardmap.Range{rng}, true)
	}

	// Schema changes and TRUNCATE are refused while the job moves rows, in
	// both protocols.
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		for _, sql := range []string{"CREATE TABLE other (user_id bigint, v int)", "TRUNCATE orders", "truncate TABLE ONLY orders"} {
			_, err := sh.connect(ctx).Exec(ctx, sql, mode)
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "55000" {
				t.Fatalf("%s during a job (%v): %v, want SQLSTATE 55000", sql, mode, err)
			}
		}
	}
	sh.moving(nil, false)
	if _, err := sh.connect(ctx).Exec(ctx, "CREATE TABLE other (user_id bigint, v int)"); err != nil {
		t.Fatalf("CREATE TABLE after the job: %v", err)
	}
	if _, err := sh.connect(ctx).Exec(ctx, "TRUNCATE orders"); err != nil {
		t.Fatalf("TRUNCATE after the job: %v", err)
	}
}

// A scatter read on a node still frozen on the old ring waits for the new
// one: another node may already route by the new ring and acknowledge a
// write on the new owner, which the old ring would not count (the found
// bug: TestReshardUnderLoad's count, one row short around a cut-over).
// Here the other node's write is planted on the new owner directly, next
// to the job's copy of the range's existing row; the count must see both
// once, in both protocols.
func TestScatterReadWaitsForTheNewRing(t *testing.T) {
	sh, ctx, rng := ordersAndKey1(t)
	from := sh.owner(1)
	to := 1 - from
	stay := sh.keyOutside(rng, from)
	if _, err := sh.connect(ctx).Exec(ctx, "INSERT INTO orders VALUES (1, 1), ($1, 1)", stay); err != nil {
		t.Fatal(err)
	}
	// The job's copy of the moving range on the new owner.
	if _, err := sh.shardConn(ctx, to).Exec(ctx, "INSERT INTO orders VALUES (1, 1)"); err != nil {
		t.Fatal(err)
	}
	sh.moving([]shardmap.Range{rng}, true)
	planted := []int64{1}
	for round, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		want := int64(3 + round)
		var n int64
		cnt := async(func() error {
			return sh.connect(ctx).QueryRow(ctx, "/* pgshard:primary */ SELECT count(*) FROM orders", mode).Scan(&n)
		})
		stillWaiting(t, fmt.Sprintf("scatter count (%v)", mode), cnt)
		// Another node, on the new ring already, writes to the new owner.
		k := keyIn(t, rng, planted...)
		planted = append(planted, k)
		if _, err := sh.shardConn(ctx, to).Exec(ctx, "INSERT INTO orders VALUES ($1, 1)", k); err != nil {
			t.Fatal(err)
		}
		sh.giveRange(rng, sh.dbs[to])
		if err := <-cnt; err != nil {
			t.Fatalf("%v: count after the cut-over: %v", mode, err)
		}
		if n != want {
			t.Fatalf("%v: count(*) = %d after the cut-over, want %d", mode, n, want)
		}
		// Freeze again on the new ring for the next round, moving the
		// range back; copy the rows it has there to the old owner.
		if round == 0 {
			if _, err := sh.shardConn(ctx, from).Exec(ctx, "INSERT INTO orders VALUES ($1, 1)", k); err != nil {
				t.Fatal(err)
			}
			from, to = to, from
			sh.moving([]shardmap.Range{rng}, true)
		}
	}
}

// A freeze that does not lift within maxHold (the node never learns the
// cut-over's outcome: cut off from the leader) refuses the held statement
// with 55000 instead of running it by a ring that may be stale, reads and
// writes, keyed and scatter, in both protocols.
func TestFreezeThatNeverLiftsRefuses(t *testing.T) {
	defer proxy.SetMaxHold(300 * time.Millisecond)()
	sh, ctx, rng := ordersAndKey1(t)
	other := sh.keyOutside(rng, sh.owner(1))
	sh.moving([]shardmap.Range{rng}, true)
	c := sh.connect(ctx)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		for _, q := range []struct {
			sql  string
			args []any
		}{
			{"SELECT v FROM orders WHERE user_id = $1", []any{int64(1)}},
			{"INSERT INTO orders VALUES ($1, 1)", []any{int64(1)}},
			{"SELECT count(*) FROM orders", nil},
		} {
			start := time.Now()
			_, err := c.Exec(ctx, q.sql, append([]any{mode}, q.args...)...)
			if sqlState(err) != "55000" || !strings.Contains(err.Error(), "has not learned the outcome") {
				t.Fatalf("%v: %s on a freeze that never lifts: %v, want 55000", mode, q.sql, err)
			}
			if d := time.Since(start); d < 300*time.Millisecond {
				t.Fatalf("%v: %s refused after %v, before the hold's bound", mode, q.sql, d)
			}
		}
		// Statements off the frozen range still run at once.
		if _, err := c.Exec(ctx, "INSERT INTO orders VALUES ($1, 1) ON CONFLICT (user_id) DO NOTHING", mode, other); err != nil {
			t.Fatalf("%v: a key outside the freeze: %v", mode, err)
		}
	}
}

// A proxy whose map is stale sends a write to a range's old owner; the
// old owner's fence refuses it with shardmap.CodeFenced; an autocommit
// write is re-sent once the proxy's ring changes and lands on the new
// owner without the client seeing an error. Inside a transaction the
// refusal reaches the client.
func TestFencedWriteIsRetriedOnTheNewOwner(t *testing.T) {
	sh, ctx, rng := ordersAndKey1(t)
	from := sh.owner(1)
	to := 1 - from
	fence := fmt.Sprintf(`CREATE OR REPLACE FUNCTION fence() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF %s THEN RAISE EXCEPTION 'pgshard: key range moved to another shard; retry' USING ERRCODE = '%s'; END IF;
	RETURN NEW;
END$$`, rng.SQL("hashint8extended(NEW.user_id, 0)"), shardmap.CodeFenced)
	for i := range 2 {
		if _, err := sh.shardConn(ctx, i).Exec(ctx, fence); err != nil {
			t.Fatal(err)
		}
	}
	const trigger = "CREATE TRIGGER fence BEFORE INSERT OR UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION fence()"
	if _, err := sh.shardConn(ctx, from).Exec(ctx, trigger); err != nil {
		t.Fatal(err)
	}
	sh.moving([]shardmap.Range{rng}, false) // the job runs; this proxy never saw the freeze

	// Inside a transaction the refusal is the client's.
	tx, err := sh.connect(ctx).Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tx.Exec(ctx, "INSERT INTO orders VALUES (1, 1)")
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != shardmap.CodeFenced {
		t.Fatalf("fenced insert in a transaction: %v, want SQLSTATE %s", err, shardmap.CodeFenced)
	}
	_ = tx.Rollback(ctx)

	var used []int64
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec} {
		k := keyIn(t, rng, used...)
		used = append(used, k)
		c := sh.connect(ctx)
		ins := async(func() error {
			_, err := c.Exec(ctx, "INSERT INTO orders VALUES ($1, 1)", mode, k)
			return err
		})
		stillWaiting(t, fmt.Sprintf("fenced insert of key %d (%v)", k, mode), ins)
		sh.giveRange(rng, sh.dbs[to])
		if err := <-ins; err != nil {
			t.Fatalf("fenced insert (%v) after the ring changed: %v", mode, err)
		}
		if got := sh.rowsOn(ctx, to, k); got != 1 {
			t.Fatalf("key %d: %d rows on the new owner, want 1", k, got)
		}
		if got := sh.rowsOn(ctx, from, k); got != 0 {
			t.Fatalf("key %d: %d rows on the fenced old owner", k, got)
		}
		// Move it back for the next round: the fence now guards the other side.
		if _, err := sh.shardConn(ctx, to).Exec(ctx, trigger); err != nil {
			t.Fatal(err)
		}
		if _, err := sh.shardConn(ctx, from).Exec(ctx, "DROP TRIGGER fence ON orders"); err != nil {
			t.Fatal(err)
		}
		// The proxy's ring still sends the range to "to", which is now fenced.
		from, to = to, from
	}
}

// A scatter read hinted to the primaries still merges (the hint chose
// the backends, not the kind of statement), and reads them: rows a
// replica has not replayed yet are counted.
func TestPrimaryHintOnScatterRead(t *testing.T) {
	sh := startSharded(t, 2)
	sh.srv.SetTxnLog(newMemTxnLog())
	ctx := testCtx(t)
	c := sh.connect(ctx)
	if _, err := c.Exec(ctx, "CREATE TABLE orders (user_id bigint PRIMARY KEY, v int)"); err != nil {
		t.Fatal(err)
	}
	a, b := sh.keysOnTwoShards()
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		if _, err := c.Exec(ctx, "DELETE FROM orders"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exec(ctx, "INSERT INTO orders VALUES ($1, 1), ($2, 2)", mode, a, b); err != nil {
			t.Fatal(err)
		}
		var n, sum int64
		if err := sh.connect(ctx).QueryRow(ctx, "/* pgshard:primary */ SELECT count(*), sum(v) FROM orders", mode).Scan(&n, &sum); err != nil {
			t.Fatal(err)
		}
		if n != 2 || sum != 3 {
			t.Fatalf("%v: hinted scatter read: count %d sum %d, want 2 and 3", mode, n, sum)
		}
		var standby int64
		if err := sh.connect(ctx).QueryRow(ctx, "/* pgshard:primary */ SELECT max(pg_is_in_recovery()::int) FROM orders", mode).Scan(&standby); err != nil {
			t.Fatal(err)
		}
		if standby != 0 {
			t.Fatalf("%v: a scatter read hinted to the primaries ran on a replica", mode)
		}
	}
}

// When a job starts moving ranges, every shard gets idle backends for the
// logins this node serves, so that statements released at the cut-over
// do not all log in to a shard this node never used.
func TestJobWarmsEveryShard(t *testing.T) {
	sh := startSharded(t, 2)
	ctx := testCtx(t)
	c := sh.connect(ctx)
	var db string
	if err := c.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
		t.Fatal(err)
	}
	probes := []*pgx.Conn{sh.shardConn(ctx, 0), sh.shardConn(ctx, 1)} // one each: they count only others
	backends := func(i int) int {
		var n int
		if err := probes[i].QueryRow(ctx,
			"SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND datname = $1 AND pid <> pg_backend_pid()", db).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// The session used one shard; find the other.
	cold := -1
	for i := range 2 {
		if backends(i) == 0 {
			cold = i
		}
	}
	if cold < 0 {
		t.Skip("the session's start used both shards")
	}
	_, rng, _, err := sh.current().Locate(shardmap.KeyInt, "1")
	if err != nil {
		t.Fatal(err)
	}
	sh.moving([]shardmap.Range{rng}, false)
	deadline := time.Now().Add(10 * time.Second)
	for backends(cold) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("shard %d has no backend 10 s after a job started moving ranges", cold)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("shard %d warmed: %d backends", cold, backends(cold))
}

// What any shard may answer (a reference table's rows) is never answered
// by a shard a job is removing: at the ring's commit that shard stops
// getting reference-table writes, which a node a moment behind would not
// know yet. Nor by one a job is adding.
func TestAnyShardReadAvoidsShardsOfAJob(t *testing.T) {
	sh := startSharded(t, 2)
	sh.srv.SetTxnLog(newMemTxnLog())
	ctx := testCtx(t)
	if _, err := sh.connect(ctx).Exec(ctx, "CREATE TABLE kinds (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if _, err := sh.connect(ctx).Exec(ctx, "CREATE TABLE orders (user_id bigint PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	keyOn0 := int64(1)
	for sh.owner(keyOn0) != 0 {
		keyOn0++
	}
	// A row only on the second shard tells which shard answered.
	if _, err := sh.shardConn(ctx, 1).Exec(ctx, "INSERT INTO kinds VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	sh.waitReplicas(ctx)
	count := func() int {
		t.Helper()
		var n int
		if err := sh.connect(ctx).QueryRow(ctx, "SELECT count(*) FROM kinds").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(); n != 0 {
		t.Fatalf("with both shards active, the first (%s) should answer: %d rows", sh.dbs[0], n)
	}
	for _, state := range []shardmap.ShardState{shardmap.ShardDraining, shardmap.ShardJoining} {
		sh.apply(shardmap.SetShardState(sh.dbs[0], state))
		if n := count(); n != 1 {
			t.Fatalf("with %s %s, a reference read went to it (%d rows)", sh.dbs[0], state, n)
		}
		// Nor after the session's last statement ran there.
		c := sh.connect(ctx)
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
			if _, err := c.Exec(ctx, "SELECT * FROM orders WHERE user_id = $1", mode, keyOn0); err != nil {
				t.Fatal(err)
			}
			var n int
			if err := c.QueryRow(ctx, "SELECT count(*) FROM kinds", mode).Scan(&n); err != nil || n != 1 {
				t.Fatalf("with %s %s, a reference read after a keyed one there went to it (%d rows, %v)", sh.dbs[0], state, n, err)
			}
		}
	}
	sh.apply(shardmap.SetShardState(sh.dbs[0], shardmap.ShardActive))
	if n := count(); n != 0 {
		t.Fatalf("with %s active again, it should answer: %d rows", sh.dbs[0], n)
	}
}
