package main_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgshard/pgshard/internal/testutil"
	"github.com/pgshard/pgshard/resharder"
	"github.com/pgshard/pgshard/shardmap"
	"github.com/pgshard/pgshard/topology"
	"github.com/pgshard/pgshard/topology/topotest"
)

// reshardLoad is the workload that runs through a reshard job: writers
// inserting and updating rows of many keys and reading them back, a
// reference-table writer, and a loop counting the sharded table.
type reshardLoad struct {
	stop     chan struct{}
	wg       sync.WaitGroup
	started  atomic.Int64 // inserts sent
	acked    atomic.Int64 // inserts acknowledged
	counts   atomic.Int64 // scatter counts checked
	mu       sync.Mutex
	rows     map[[2]int64]int64 // acknowledged (user_id, seq) -> v
	refs     []int64            // acknowledged reference rows
	errs     []string
	nerrs    int
	began    time.Time
	samples  []latency
	moving   []shardmap.Range // set before a job starts
	movingMu sync.Mutex
	// Statements whose connection died with a killed node: their outcome
	// is unknown. maybe: inserts that may or may not have happened;
	// uncertain: rows whose value may lack the lost update.
	lost      atomic.Int64
	maybe     map[[2]int64]bool
	uncertain map[[2]int64]bool
}

// errLost tells a load client that its node went away: the statement's
// outcome is unknown, and the client has moved to another node.
var errLost = errors.New("connection lost with its node")

// loadConn is one client of the load: a connection that moves to the next
// node when its node is killed.
type loadConn struct {
	urls []string
	i    int
	c    *pgx.Conn
	l    *reshardLoad
}

func (lc *loadConn) connect(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := pgx.Connect(ctx, lc.urls[lc.i%len(lc.urls)])
		if err == nil {
			lc.c = c
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		lc.i++
		time.Sleep(100 * time.Millisecond)
	}
}

// do runs f on the connection; when the connection died (its node was
// killed) it reconnects elsewhere and returns errLost.
func (lc *loadConn) do(ctx context.Context, f func(c *pgx.Conn) error) error {
	err := f(lc.c)
	if err == nil || !lc.c.IsClosed() {
		return err
	}
	lc.l.lost.Add(1)
	lc.i++
	if err := lc.connect(ctx); err != nil {
		return fmt.Errorf("reconnecting after %v: %w", errLost, err)
	}
	return errLost
}

func (lc *loadConn) close() {
	if lc.c != nil {
		lc.c.Close(context.Background())
	}
}

type latency struct {
	d      time.Duration
	moving bool
}

func (l *reshardLoad) fail(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.nerrs++
	if len(l.errs) < 50 {
		l.errs = append(l.errs, fmt.Sprintf("%6.2fs: ", time.Since(l.began).Seconds())+fmt.Sprintf(format, args...))
	}
}

func (l *reshardLoad) setMoving(r []shardmap.Range) {
	l.movingMu.Lock()
	defer l.movingMu.Unlock()
	l.moving = append(l.moving, r...)
}

func (l *reshardLoad) isMoving(key int64) bool {
	l.movingMu.Lock()
	defer l.movingMu.Unlock()
	h := shardmap.HashInt64(key)
	for _, r := range l.moving {
		if r.Contains(h) {
			return true
		}
	}
	return false
}

func (l *reshardLoad) timed(key int64, f func() error) error {
	t0 := time.Now()
	err := f()
	d := time.Since(t0)
	mv := l.isMoving(key)
	l.mu.Lock()
	l.samples = append(l.samples, latency{d, mv})
	l.mu.Unlock()
	return err
}

// runReshardLoad starts the workload against the proxies at urls.
func runReshardLoad(ctx context.Context, t *testing.T, urls []string, writers int) *reshardLoad {
	l := &reshardLoad{stop: make(chan struct{}), rows: map[[2]int64]int64{}, began: time.Now(),
		maybe: map[[2]int64]bool{}, uncertain: map[[2]int64]bool{}}
	modes := []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec}
	for w := range writers {
		lc := &loadConn{urls: urls, i: w, l: l}
		if err := lc.connect(ctx); err != nil {
			t.Fatal(err)
		}
		mode := modes[w%len(modes)]
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer lc.close()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			next := map[int64]int64{}
			var mine [][2]int64
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				key := int64(w*100_000 + rng.IntN(60))
				seq := next[key]
				next[key]++
				l.started.Add(1)
				err := l.timed(key, func() error {
					return lc.do(ctx, func(c *pgx.Conn) error {
						_, err := c.Exec(ctx, "INSERT INTO accounts (user_id, seq, v) VALUES ($1, $2, 0)", mode, key, seq)
						return err
					})
				})
				if errors.Is(err, errLost) {
					l.mu.Lock()
					l.maybe[[2]int64{key, seq}] = true
					l.mu.Unlock()
					continue
				}
				if err != nil {
					l.fail("writer %d: insert (%d,%d): %v", w, key, seq, err)
					return
				}
				l.mu.Lock()
				l.rows[[2]int64{key, seq}] = 0
				l.mu.Unlock()
				l.acked.Add(1)
				mine = append(mine, [2]int64{key, seq})
				// Update an earlier row and read it back (read-your-writes).
				ri := rng.IntN(len(mine))
				r := mine[ri]
				var v int64
				err = l.timed(r[0], func() error {
					return lc.do(ctx, func(c *pgx.Conn) error {
						return c.QueryRow(ctx, "UPDATE accounts SET v = v + 1 WHERE user_id = $1 AND seq = $2 RETURNING v", mode, r[0], r[1]).Scan(&v)
					})
				})
				if errors.Is(err, errLost) {
					l.mu.Lock()
					l.uncertain[r] = true
					l.mu.Unlock()
					mine = append(mine[:ri], mine[ri+1:]...) // its value is unknown now
					continue
				}
				if err != nil {
					l.fail("writer %d: update (%d,%d): %v", w, r[0], r[1], err)
					return
				}
				l.mu.Lock()
				want := l.rows[r] + 1
				l.rows[r] = want
				l.mu.Unlock()
				if v != want {
					l.fail("writer %d: update (%d,%d) returned v=%d, want %d", w, r[0], r[1], v, want)
				}
				var got int64
				err = l.timed(r[0], func() error {
					return lc.do(ctx, func(c *pgx.Conn) error {
						return c.QueryRow(ctx, "SELECT v FROM accounts WHERE user_id = $1 AND seq = $2", mode, r[0], r[1]).Scan(&got)
					})
				})
				if errors.Is(err, errLost) {
					continue
				}
				if err != nil || got != want {
					l.fail("writer %d: read back (%d,%d): v=%d want %d, %v", w, r[0], r[1], got, want, err)
					return
				}
			}
		}()
	}
	// The reference-table writer.
	rc := &loadConn{urls: urls, l: l}
	if err := rc.connect(ctx); err != nil {
		t.Fatal(err)
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer rc.close()
		for id := int64(1); ; id++ {
			select {
			case <-l.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			err := rc.do(ctx, func(c *pgx.Conn) error {
				_, err := c.Exec(ctx, "INSERT INTO kinds (id, label) VALUES ($1, 'k')", id)
				return err
			})
			if errors.Is(err, errLost) {
				continue
			}
			if err != nil {
				l.fail("reference insert %d: %v", id, err)
				return
			}
			l.mu.Lock()
			l.refs = append(l.refs, id)
			l.mu.Unlock()
		}
	}()
	// The counting loop: never a row counted twice or missed. It reads the
	// primaries: a replica may lag (within the configured bounds).
	cc := &loadConn{urls: urls, i: len(urls) - 1, l: l}
	if err := cc.connect(ctx); err != nil {
		t.Fatal(err)
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		defer cc.close()
		for {
			select {
			case <-l.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			lo := l.acked.Load()
			var n int64
			err := cc.do(ctx, func(c *pgx.Conn) error {
				return c.QueryRow(ctx, "/* pgshard:primary */ SELECT count(*) FROM accounts").Scan(&n)
			})
			if errors.Is(err, errLost) {
				continue
			}
			if err != nil {
				l.fail("count: %v", err)
				return
			}
			hi := l.started.Load()
			if n < lo || n > hi {
				l.fail("count(*) = %d while between %d and %d rows were acknowledged or in flight", n, lo, hi)
			}
			l.counts.Add(1)
		}
	}()
	return l
}

func (l *reshardLoad) finish() {
	close(l.stop)
	l.wg.Wait()
}

// stalls returns the p99 and max latency of statements on moving ranges
// and on the others.
func (l *reshardLoad) stalls() (movP99, movMax, otherP99, otherMax time.Duration, nMov, nOther int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var mv, ot []time.Duration
	for _, s := range l.samples {
		if s.moving {
			mv = append(mv, s.d)
		} else {
			ot = append(ot, s.d)
		}
	}
	pct := func(ds []time.Duration) (time.Duration, time.Duration) {
		if len(ds) == 0 {
			return 0, 0
		}
		slices.Sort(ds)
		return ds[len(ds)*99/100], ds[len(ds)-1]
	}
	movP99, movMax = pct(mv)
	otherP99, otherMax = pct(ot)
	return movP99, movMax, otherP99, otherMax, len(mv), len(ot)
}

// TestReshardUnderLoad grows a 2-shard cluster of three pgshard processes
// to 3 shards and shrinks it back, while writers, readers and a counting
// loop run through the two nodes that do not lead; the leader (which runs
// the job) is killed with SIGKILL during the first job. Every acknowledged
// write must be present exactly once on its owner afterwards, no client
// statement may fail, and the count must never see a row twice or miss one.
func TestReshardUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three pgshard processes and five PostgreSQL servers")
	}
	topo := topotest.Start(t, topology.Config{Shards: 2, Replicas: 1, Spares: 1})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ctl(t)

	var shardsConf strings.Builder
	for _, sh := range topo.Shards {
		fmt.Fprintf(&shardsConf, "[[shards]]\nname = %q\nprimary = %q\n", sh.Name, sh.Primary.DSN())
		if len(sh.Replicas) > 0 {
			fmt.Fprintf(&shardsConf, "replicas = [%q]\n", sh.Replicas[0].DSN())
		}
	}
	nodes := startClusterNodes(t, "[resharding]\nuser = \"postgres\"\ndatabase = \"app\"\n"+shardsConf.String())
	testutil.WaitFor(t, 30*time.Second, "three voters agreeing on the seeded map", func() error { return agree(ctx, nodes, 3, 0) })
	url := func(n *clusterNodeProc) string {
		return fmt.Sprintf("postgres://app:app@127.0.0.1:%d/app?sslmode=disable", n.port)
	}
	setup, err := pgx.Connect(ctx, url(nodes[0]))
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		"CREATE TABLE accounts (user_id bigint NOT NULL, seq bigint NOT NULL, v bigint NOT NULL, PRIMARY KEY (user_id, seq))",
		"CREATE TABLE kinds (id bigint PRIMARY KEY, label text)",
	} {
		if _, err := setup.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	setup.Close(ctx)
	testutil.WaitFor(t, 10*time.Second, "every node holding the tables", func() error { return agree(ctx, nodes, 3, 0) })

	load := runReshardLoad(ctx, t, []string{url(nodes[0]), url(nodes[1]), url(nodes[2])}, 6)
	defer func() {
		select {
		case <-load.stop:
		default:
			load.finish()
		}
	}()
	time.Sleep(time.Second)
	// Where each job's node is SIGKILLed: PGSHARD_E2E_KILL lists a phase
	// per round (add, then remove); "-" kills nothing.
	killAt := []string{resharder.PhaseCopy, resharder.PhaseCutover}
	if v := os.Getenv("PGSHARD_E2E_KILL"); v != "" {
		killAt = strings.Split(v, ",")
	}
	leaderNode := func() *clusterNodeProc {
		for _, n := range nodes {
			if !n.running() {
				continue
			}
			if st, err := n.client().Status(ctx); err == nil && st.LeaderID != "" {
				for _, m := range nodes {
					if m.id == st.LeaderID {
						return m
					}
				}
			}
		}
		return nil
	}

	spare := topo.Spares[0]
	add := resharder.Spec{Add: &resharder.NewShard{Name: spare.Name, Primary: spare.Primary.DSN(), Replicas: []string{spare.Replicas[0].DSN()}}}
	remove := resharder.Spec{Remove: spare.Name}
	for round, spec := range []resharder.Spec{add, remove} {
		leader := leaderNode()
		var apiNode *clusterNodeProc
		for _, n := range nodes {
			if n != leader {
				apiNode = n
			}
		}
		api := apiNode.client()
		plan, err := api.ReshardPlan(ctx, spec)
		if err != nil {
			t.Fatalf("round %d: plan: %v", round, err)
		}
		var moving []shardmap.Range
		for _, mv := range plan.Moves {
			moving = append(moving, mv.Range)
		}
		load.setMoving(moving)
		t.Logf("round %d: job starts at %.2fs", round, time.Since(load.began).Seconds())
		t0 := time.Now()
		if _, err := api.ReshardStart(ctx, spec); err != nil {
			t.Fatalf("round %d: start (after %v): %v", round, time.Since(t0), err)
		}
		t.Logf("round %d: started in %v", round, time.Since(t0))
		// Watch the map for the job's phase and kill its node there.
		var killed atomic.Value
		killed.Store("")
		watchDone := make(chan struct{})
		stopWatch := make(chan struct{})
		go func() {
			defer close(watchDone)
			if round >= len(killAt) || leader == nil {
				return
			}
			witness := apiNode
			for {
				select {
				case <-stopWatch:
					return
				case <-time.After(5 * time.Millisecond):
				}
				_, m, err := witness.client().Map(ctx)
				if err != nil {
					continue
				}
				for _, j := range m.Jobs() {
					if j.Phase == killAt[round] {
						_ = leader.cmd.Process.Kill()
						killed.Store(j.Phase)
						<-leader.done
						leader.done <- nil
						time.Sleep(2 * time.Second)
						leader.start(t)
						return
					}
				}
			}
		}()
		began := time.Now()
		if _, err := api.ReshardStart(ctx, spec); err != nil {
			t.Fatalf("round %d: start (after %v): %v", round, time.Since(began), err)
		}
		t.Logf("round %d: started in %v", round, time.Since(began))
		var final *resharder.Status
		testutil.WaitFor(t, 150*time.Second, "the reshard job to finish", func() error {
			s, err := api.ReshardStatus(ctx)
			if err != nil {
				return err
			}
			if !s.Finished {
				return fmt.Errorf("phase %s (%s)", s.Phase, s.Error)
			}
			final = s
			return nil
		})
		close(stopWatch)
		<-watchDone
		if final.Phase != resharder.PhaseDone {
			t.Fatalf("round %d: the job ended %s: %s", round, final.Phase, final.Error)
		}
		what := map[bool]string{true: "add", false: "remove"}[spec.Add != nil]
		if k := killed.Load().(string); k != "" {
			t.Logf("round %d (%s): the job's node %s was SIGKILLed during %s; the job finished", round, what, leader.id, k)
		} else if round < len(killAt) && killAt[round] != "-" {
			t.Logf("round %d (%s): phase %s passed before the watcher saw it: nothing was killed", round, what, killAt[round])
		}
		t.Logf("round %d (%s): cut-over %v in %d attempt(s); %s", round, what, final.Cutover, final.CutoverAttempts, final.Verified)
		if _, m, err := api.Map(ctx); err == nil {
			var names []string
			for _, sh := range m.Shards() {
				names = append(names, sh.Name+"/"+string(sh.State))
			}
			t.Logf("round %d: map version %d, shards %v, ring owners %v", round, m.Version(), names, m.Ring().Ownership())
		}
		time.Sleep(500 * time.Millisecond)
		if killed.Load().(string) != "" {
			// The restarted node must be back before the next round's
			// checks lean on it.
			testutil.WaitFor(t, 30*time.Second, "the killed node back in the cluster", func() error { return caughtUp(ctx, nodes, 3) })
		}
	}
	load.finish()

	load.mu.Lock()
	errs, nerrs := slices.Clone(load.errs), load.nerrs
	load.mu.Unlock()
	if nerrs > 0 {
		t.Errorf("%d client statements failed or answered wrong; first ones:\n%s", nerrs, strings.Join(errs, "\n"))
	}
	mp99, mmax, op99, omax, nm, no := load.stalls()
	t.Logf("%d statements lost with a killed node (outcome unknown, allowed for)", load.lost.Load())
	t.Logf("%d inserts acknowledged, %d counts checked; statements on moving ranges: %d, p99 %v, max %v; on other ranges: %d, p99 %v, max %v",
		load.acked.Load(), load.counts.Load(), nm, mp99, mmax, no, op99, omax)

	// Every acknowledged row exactly once, on its owner, with its last value.
	_, m, err := nodes[0].client().Map(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[[2]int64]string{}
	for _, sh := range m.Shards() {
		c, err := pgx.Connect(ctx, sh.Primary+" user=postgres dbname=app sslmode=disable")
		if err != nil {
			t.Fatal(err)
		}
		rows, err := c.Query(ctx, "SELECT user_id, seq, v FROM accounts")
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var k, s, v int64
			if err := rows.Scan(&k, &s, &v); err != nil {
				t.Fatal(err)
			}
			id := [2]int64{k, s}
			if prev, dup := seen[id]; dup {
				t.Errorf("row %v on %s and %s", id, prev, sh.Name)
			}
			seen[id] = sh.Name
			if owner := m.Ring().Lookup(shardmap.HashInt64(k)); owner != sh.Name {
				t.Errorf("row %v on %s, owned by %s", id, sh.Name, owner)
			}
			if _, ok := load.rows[id]; !ok && !load.maybe[id] {
				t.Errorf("row %v on %s was never written", id, sh.Name)
			}
			if want, ok := load.rows[id]; ok && want != v && !load.uncertain[id] {
				t.Errorf("row %v: v=%d, the last acknowledged update made it %d", id, v, want)
			}
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		var refs []int64
		rr, err := c.Query(ctx, "SELECT id FROM kinds ORDER BY id")
		if err != nil {
			t.Fatal(err)
		}
		if refs, err = pgx.CollectRows(rr, pgx.RowTo[int64]); err != nil {
			t.Fatal(err)
		}
		for _, id := range load.refs {
			if _, ok := slices.BinarySearch(refs, id); !ok {
				t.Errorf("reference row %d missing on %s", id, sh.Name)
				break
			}
		}
		c.Close(ctx)
	}
	lost := 0
	for id := range load.rows {
		if _, ok := seen[id]; !ok {
			if lost < 10 {
				t.Errorf("acknowledged row %v is on no shard", id)
			}
			lost++
		}
	}
	if lost > 0 {
		t.Errorf("%d acknowledged rows lost", lost)
	}
	if out, err := runCtl(t, nodes[1], "verify"); err != nil {
		t.Errorf("pgshardctl verify: %v\n%s", err, out)
	}
	var names []string
	for _, sh := range m.Shards() {
		names = append(names, sh.Name)
	}
	sort.Strings(names)
	if !slices.Equal(names, []string{"shard0", "shard1"}) {
		t.Errorf("shards after add and remove: %v", names)
	}
	_ = errors.New
}
