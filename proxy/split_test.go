package proxy_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgshard/pgshard/config"
	"github.com/pgshard/pgshard/topology"
	"github.com/pgshard/pgshard/topology/topotest"
)

// withReplicas routes reads to the topology's replicas.
func withReplicas(topo *topology.Topology, more func(*config.Config)) func(*config.Config) {
	return func(c *config.Config) {
		for _, r := range topo.Shards[0].Replicas {
			c.Shards[0].Replicas = append(c.Shards[0].Replicas, r.DSN())
		}
		c.Routing.HealthInterval = config.Duration{Duration: 100 * time.Millisecond}
		if more != nil {
			more(c)
		}
	}
}

// inRecovery runs SELECT pg_is_in_recovery() through c: true means a
// replica answered.
func inRecovery(t *testing.T, ctx context.Context, c *pgx.Conn, sql string, mode pgx.QueryExecMode) bool {
	t.Helper()
	var v bool
	if err := c.QueryRow(ctx, sql, mode).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

// waitReplicaReads waits until a read through c lands on a replica (the
// health checks have run).
func waitReplicaReads(t *testing.T, ctx context.Context, c *pgx.Conn) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !inRecovery(t, ctx, c, "SELECT pg_is_in_recovery()", pgx.QueryExecModeSimpleProtocol) {
		if time.Now().After(deadline) {
			t.Fatal("reads never reached a replica")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestReadWriteSplit(t *testing.T) {
	topo := topotest.Shared(t)
	h := startProxy(t, withReplicas(topo, nil))
	ctx := testCtx(t)
	c := h.connect(ctx)
	waitReplicaReads(t, ctx, c)
	modes := []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec,
		pgx.QueryExecModeCacheStatement, pgx.QueryExecModeDescribeExec}
	for _, m := range modes {
		if !inRecovery(t, ctx, c, "SELECT pg_is_in_recovery()", m) {
			t.Errorf("mode %v: a plain read went to the primary", m)
		}
	}
	exec := func(sql string) {
		t.Helper()
		if _, err := c.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// Explicit transactions run on the primary; READ ONLY ones on a replica.
	exec("BEGIN")
	if inRecovery(t, ctx, c, "SELECT pg_is_in_recovery()", pgx.QueryExecModeSimpleProtocol) {
		t.Error("read inside BEGIN ... COMMIT went to a replica")
	}
	exec("COMMIT")
	// That transaction only read: it does not hold this session's reads on
	// the primary.
	exec("BEGIN READ ONLY")
	if !inRecovery(t, ctx, c, "SELECT pg_is_in_recovery()", pgx.QueryExecModeSimpleProtocol) {
		t.Error("BEGIN READ ONLY did not go to a replica")
	}
	exec("COMMIT")
	waitReplicaReads(t, ctx, c)
	tx, err := c.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		t.Fatal(err)
	}
	var rec bool
	if err := tx.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&rec); err != nil || !rec {
		t.Errorf("pgx read-only transaction: in recovery %v, %v", rec, err)
	}
	_ = tx.Commit(ctx)

	// A transaction that writes does: until the replicas have replayed it,
	// this session reads from the primary (read-your-writes).
	exec("CREATE TABLE ryw (x int)")
	exec("BEGIN")
	exec("INSERT INTO ryw VALUES (1)")
	exec("COMMIT")
	var seen int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM ryw", pgx.QueryExecModeSimpleProtocol).Scan(&seen); err != nil || seen != 1 {
		t.Fatalf("read after own write: %d, %v", seen, err)
	}

	// Writes that look like reads run on the primary, in both protocols.
	// Each runs on a fresh session whose reads reach a replica, so neither
	// read-your-writes nor a pin left by an earlier one can hide a misrouted
	// write; the advisory lock and unlock share one session (the unlock must
	// release the lock). A write sent to a replica fails there with 25006
	// and is re-run on the primary without an error: only the counters
	// tell, so none of them may move.
	exec("CREATE SEQUENCE s; CREATE TABLE w (id int PRIMARY KEY, v text); INSERT INTO w VALUES (1, 'a'), (2, 'b')")
	exec(`CREATE FUNCTION sneaky() RETURNS int LANGUAGE sql AS $$ INSERT INTO w VALUES (100, 'sneaky') RETURNING id $$`)
	for _, m := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		for _, group := range [][]string{
			{"SELECT nextval('s')"},
			{"SELECT * FROM w WHERE id = 1 FOR UPDATE"},
			{"WITH x AS (DELETE FROM w WHERE id = 2 RETURNING *) SELECT * FROM x"},
			{"SELECT pg_advisory_lock(1)", "SELECT pg_advisory_unlock(1)"},
			{"SELECT set_config('work_mem', '8MB', false)"},
		} {
			if strings.Contains(group[0], "DELETE") && m != pgx.QueryExecModeSimpleProtocol {
				continue // the row is gone after the first run
			}
			fresh := h.connect(ctx)
			waitReplicaReads(t, ctx, fresh)
			for _, sql := range group {
				retries := metric(t, h, "pgshard_read_retries_total", nil)
				onReplicas := metric(t, h, "pgshard_routed_queries_total", map[string]string{"role": "replica"})
				rows, err := fresh.Query(ctx, sql, m)
				if err == nil {
					for rows.Next() {
					}
					err = rows.Err()
				}
				if err != nil {
					t.Errorf("%s (%v): %v", sql, m, err)
				}
				if after := metric(t, h, "pgshard_read_retries_total", nil); after != retries {
					t.Errorf("%s (%v): read retries went from %v to %v: it was sent to a replica first", sql, m, retries, after)
				}
				if after := metric(t, h, "pgshard_routed_queries_total", map[string]string{"role": "replica"}); after != onReplicas {
					t.Errorf("%s (%v): queries on replicas went from %v to %v", sql, m, onReplicas, after)
				}
			}
			if err := fresh.Close(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A function that writes but is not known to: the replica refuses it
	// with 25006 and pgshard re-runs it on the primary, invisibly.
	before := metric(t, h, "pgshard_read_retries_total", map[string]string{"reason": "replica_refused"})
	waitReplicaReads(t, ctx, c)
	var id int
	if err := c.QueryRow(ctx, "SELECT sneaky()", pgx.QueryExecModeSimpleProtocol).Scan(&id); err != nil || id != 100 {
		t.Fatalf("sneaky(): %d, %v", id, err)
	}
	exec("DELETE FROM w WHERE id = 100")
	waitReplicaReads(t, ctx, c)
	if err := c.QueryRow(ctx, "SELECT sneaky()", pgx.QueryExecModeCacheStatement).Scan(&id); err != nil || id != 100 {
		t.Fatalf("sneaky() extended: %d, %v", id, err)
	}
	if after := metric(t, h, "pgshard_read_retries_total", map[string]string{"reason": "replica_refused"}); after < before+2 {
		t.Errorf("replica_refused retries went from %v to %v; want +2", before, after)
	}

	// Hints.
	if inRecovery(t, ctx, c, "/* pgshard:primary */ SELECT pg_is_in_recovery()", pgx.QueryExecModeSimpleProtocol) {
		t.Error("/* pgshard:primary */ went to a replica")
	}
	exec("SET pgshard.route = 'primary'")
	if inRecovery(t, ctx, c, "SELECT pg_is_in_recovery()", pgx.QueryExecModeSimpleProtocol) ||
		inRecovery(t, ctx, c, "SELECT pg_is_in_recovery()", pgx.QueryExecModeCacheStatement) {
		t.Error("pgshard.route = primary: a read went to a replica")
	}
	exec("SET pgshard.route = 'auto'")
	waitReplicaReads(t, ctx, c)
	if !inRecovery(t, ctx, c, "SELECT pg_is_in_recovery()", pgx.QueryExecModeSimpleProtocol) {
		t.Error("pgshard.route = auto: read went to the primary")
	}
	exec("RESET pgshard.route")
	_, err = c.Exec(ctx, "SET pgshard.nonsense = 1", pgx.QueryExecModeSimpleProtocol)
	if sqlState(err) != "42704" {
		t.Errorf("unknown pgshard setting: %v, want 42704", err)
	}
	_, err = c.Exec(ctx, "SET pgshard.route = 'sideways'", pgx.QueryExecModeSimpleProtocol)
	if sqlState(err) != "22023" {
		t.Errorf("bad pgshard.route: %v, want 22023", err)
	}

	// Metrics count reads per replica.
	var onReplicas float64
	for i := range topo.Shards[0].Replicas {
		onReplicas += metric(t, h, "pgshard_routed_queries_total", map[string]string{"role": "replica", "node": fmt.Sprintf("replica%d", i)})
	}
	if onReplicas == 0 {
		t.Error("no query counted on a replica")
	}
}

// metric returns the sum of the counters or gauges called name whose
// labels include the given ones (all of them for nil) from the harness's
// registry (0 when absent).
func metric(t *testing.T, h *harness, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue next
				}
			}
			if m.GetCounter() != nil {
				sum += m.GetCounter().GetValue()
			} else {
				sum += m.GetGauge().GetValue()
			}
		}
	}
	return sum
}

func TestReadYourWrites(t *testing.T) {
	topo := topotest.Shared(t)
	ctx := testCtx(t)
	// Replicas apply WAL half a second late.
	for _, r := range topo.Shards[0].Replicas {
		if err := r.SetConf("recovery_min_apply_delay", "500ms"); err != nil {
			t.Fatal(err)
		}
		if err := r.Reload(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = r.SetConf("recovery_min_apply_delay", "")
			_ = r.Reload()
		})
	}
	h := startProxy(t, withReplicas(topo, nil))
	if err := topo.Shards[0].Primary.Exec(ctx, h.db, "CREATE TABLE r (id int PRIMARY KEY); GRANT ALL ON r TO app"); err != nil {
		t.Fatal(err)
	}
	if err := topo.Shards[0].WaitCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	writer := h.connect(ctx)
	reader := h.connect(ctx)
	waitReplicaReads(t, ctx, reader)
	const n = 300
	missedOnReplica := 0
	for i := 0; i < n; i++ {
		if _, err := writer.Exec(ctx, "INSERT INTO r VALUES ($1)", i); err != nil {
			t.Fatal(err)
		}
		var found int
		if err := writer.QueryRow(ctx, "SELECT count(*) FROM r WHERE id = $1", i).Scan(&found); err != nil {
			t.Fatal(err)
		}
		if found != 1 {
			t.Fatalf("iteration %d: the writer does not see its own insert", i)
		}
		var rec bool
		var seen int
		if err := reader.QueryRow(ctx, "SELECT pg_is_in_recovery(), count(*) FROM r WHERE id = $1", i).Scan(&rec, &seen); err != nil {
			t.Fatal(err)
		}
		if rec && seen == 0 {
			missedOnReplica++
		}
	}
	t.Logf("%d/%d reads by the session that did not write came from a replica that had not replayed the insert yet", missedOnReplica, n)
	if missedOnReplica < n/2 {
		t.Fatalf("only %d of %d reads of the other session went to a lagging replica", missedOnReplica, n)
	}
	// With read-your-writes off, the writer reads from replicas too and
	// misses its own insert: the check above is what protects it.
	h2 := startProxy(t, withReplicas(topo, func(c *config.Config) { c.Routing.ReadYourWrites = false }))
	if err := topo.Shards[0].Primary.Exec(ctx, h2.db, "CREATE TABLE r (id int PRIMARY KEY); GRANT ALL ON r TO app"); err != nil {
		t.Fatal(err)
	}
	if err := topo.Shards[0].WaitCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	w2 := h2.connect(ctx)
	waitReplicaReads(t, ctx, w2)
	misses := 0
	for i := 0; i < 20; i++ {
		if _, err := w2.Exec(ctx, "INSERT INTO r VALUES ($1)", i); err != nil {
			t.Fatal(err)
		}
		var found int
		if err := w2.QueryRow(ctx, "SELECT count(*) FROM r WHERE id = $1", i).Scan(&found); err != nil {
			t.Fatal(err)
		}
		if found == 0 {
			misses++
		}
	}
	if misses == 0 {
		t.Fatal("with read_your_writes off the writer never missed its insert: the lag was not there, so the test above proved nothing")
	}
}

func TestReplicaKilledUnderLoad(t *testing.T) {
	topo := topotest.Start(t, topology.Config{Shards: 1, Replicas: 2})
	h := startProxyOn(t, topo, withReplicas(topo, func(c *config.Config) { c.Pool.Size = 20 }))
	h.run("pgbench", "", "-i", "-s", "1", "-q")
	victim := topo.Shards[0].Replicas[0]
	for _, mode := range []string{"simple", "prepared"} {
		if !victim.Running() {
			if err := victim.Start(testCtx(t)); err != nil {
				t.Fatal(err)
			}
		}
		c := h.connect(testCtx(t))
		waitReplicaReads(t, testCtx(t), c)
		c.Close(testCtx(t))
		kill := time.AfterFunc(3*time.Second, func() {
			if err := victim.Kill(); err != nil {
				t.Errorf("kill replica: %v", err)
			}
		})
		watchdog := time.AfterFunc(40*time.Second, func() {
			t.Logf("pgbench stuck; sessions:\n%s", h.srv.DebugSessions())
			for _, r := range topo.Shards[0].Servers() {
				v, err := r.QueryValue(context.Background(), "postgres", "SELECT string_agg(pid || ' ' || coalesce(state,'') || ' ' || coalesce(wait_event,'') || ' ' || backend_start::time || ' ' || state_change::time || ' ' || left(query, 40), E'\\n') FROM pg_stat_activity WHERE usename = 'app'")
				t.Logf("%s: %v\n%s", r.Name, err, v)
			}
		})
		out := h.run("pgbench", "", "-S", "-M", mode, "-c", "16", "-j", "2", "-T", "8")
		watchdog.Stop()
		kill.Stop()
		if m := failedRe.FindStringSubmatch(out); m != nil && m[1] != "0" {
			t.Fatalf("-M %s: %s failed transactions while a replica died\n%s", mode, m[1], out)
		}
		if strings.Contains(out, "aborted") || strings.Contains(out, "ERROR") {
			t.Fatalf("-M %s: clients saw errors while a replica died\n%s", mode, out)
		}
		t.Logf("-M %s: %s", mode, strings.TrimSpace(txRe.FindString(out)))
	}
	t.Logf("reads retried after the replica died: %v", metric(t, h, "pgshard_read_retries_total", map[string]string{"reason": "replica_lost"}))
	// The replica comes back and takes reads again.
	if err := victim.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	before := metric(t, h, "pgshard_routed_queries_total", map[string]string{"node": "replica0"})
	c := h.connect(testCtx(t))
	deadline := time.Now().Add(20 * time.Second)
	for metric(t, h, "pgshard_routed_queries_total", map[string]string{"node": "replica0"}) == before {
		if time.Now().After(deadline) {
			t.Fatal("the restarted replica never took reads again")
		}
		inRecovery(t, testCtx(t), c, "SELECT pg_is_in_recovery()", pgx.QueryExecModeSimpleProtocol)
	}
}

func TestSetShardsFollowsTheMap(t *testing.T) {
	topo := topotest.Shared(t)
	h := startProxy(t, nil)
	ctx := testCtx(t)
	c := h.connect(ctx)
	if inRecovery(t, ctx, c, "SELECT pg_is_in_recovery()", pgx.QueryExecModeSimpleProtocol) {
		t.Fatal("a read went to a replica that is not configured")
	}
	c.Close(ctx)
	var reps []string
	for _, r := range topo.Shards[0].Replicas {
		reps = append(reps, r.DSN())
	}
	if err := h.srv.SetShards([]config.Shard{{Name: "shard0", Primary: topo.Shards[0].Primary.DSN(), Replicas: reps}}); err != nil {
		t.Fatal(err)
	}
	// New sessions use the new shard list: their reads reach the replicas.
	waitReplicaReads(t, ctx, h.connect(ctx))
	if err := h.srv.SetShards(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := pgx.Connect(ctx, h.url("app")); sqlState(err) != "57P03" {
		t.Fatalf("connect with no shards: %v, want 57P03", err)
	}
}

// A cluster node's proxy refuses clients (57P03) from AwaitMap until the
// node hands it the map's shards, rather than routing by its file's
// [[shards]]; a list without shards keeps it waiting.
func TestAwaitMapRefusesUntilShards(t *testing.T) {
	topo := topotest.Shared(t)
	h := startProxy(t, nil)
	ctx := testCtx(t)
	h.srv.AwaitMap()
	refused := func(when string) {
		t.Helper()
		_, err := pgx.Connect(ctx, h.url("app"))
		if sqlState(err) != "57P03" || !strings.Contains(err.Error(), "caught up") {
			t.Fatalf("connect %s: %v, want 57P03 naming the shard map", when, err)
		}
	}
	refused("before the map")
	if err := h.srv.SetShards(nil); err != nil {
		t.Fatal(err)
	}
	refused("after a map without shards")
	if err := h.srv.SetShards([]config.Shard{{Name: "shard0", Primary: topo.Shards[0].Primary.DSN()}}); err != nil {
		t.Fatal(err)
	}
	c := h.connect(ctx)
	if _, err := c.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	c.Close(ctx)
}
