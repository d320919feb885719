package replication

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"

	"github.com/pgshard/pgshard/internal/testutil"
	"github.com/pgshard/pgshard/topology"
	"github.com/pgshard/pgshard/topology/topotest"
)

func TestMain(m *testing.M) {
	topotest.Main(m, topology.Config{Shards: 1, Replicas: 2})
}

// defaults are the recommended lag bounds.
var defaults = Config{MaxLagBytes: DefaultMaxLagBytes, MaxLagTime: DefaultMaxLagTime}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// tlog writes a Monitor's log to the test log.
type tlog struct{ t *testing.T }

func (w tlog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// startMonitor watches shard sh (connecting as app to database app) and
// waits for two rounds of checks.
func startMonitor(t *testing.T, sh *topology.Shard, cfg Config) *Monitor {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(tlog{t}, nil))
	}
	var reps []Node
	for _, r := range sh.Replicas {
		reps = append(reps, Node{Name: r.Name, ConnString: r.URL("app", "app", "app")})
	}
	m, err := NewMonitor(cfg, Node{Name: sh.Primary.Name, ConnString: sh.Primary.URL("app", "app", "app")}, reps)
	if err != nil {
		t.Fatal(err)
	}
	m.Start(context.Background())
	t.Cleanup(m.Close)
	ctx := ctxT(t, 30*time.Second)
	for range 2 {
		if err := m.WaitChecked(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

func allUsable(m *Monitor) error {
	for i, st := range m.Status() {
		if st.Excluded || st.LagBytes != 0 || !m.Eligible(i, time.Time{}) {
			return fmt.Errorf("replica %d: %+v", i, st)
		}
	}
	return nil
}

// connect opens a connection closed at test end.
func connect(t *testing.T, url string) *pgconn.PgConn {
	t.Helper()
	c, err := pgconn.Connect(ctxT(t, 30*time.Second), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func exec(t *testing.T, c *pgconn.PgConn, sql string) [][][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := c.Exec(ctx, sql).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	var rows [][][]byte
	for _, r := range res {
		rows = append(rows, r.Rows...)
	}
	return rows
}

// setApplyDelay sets recovery_min_apply_delay on a replica and waits until
// it is in effect; "" restores the default.
func setApplyDelay(t *testing.T, s *topology.Server, delay string) {
	t.Helper()
	if err := s.SetConf("recovery_min_apply_delay", delay); err != nil {
		t.Fatal(err)
	}
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	want := delay
	if want == "" {
		want = "0"
	}
	ctx := ctxT(t, 30*time.Second)
	testutil.WaitFor(t, 20*time.Second, "recovery_min_apply_delay = "+want, func() error {
		v, err := s.QueryValue(ctx, "postgres", "SHOW recovery_min_apply_delay")
		if err != nil {
			return err
		}
		if v != want {
			return fmt.Errorf("is %q", v)
		}
		return nil
	})
}

// withApplyDelay sets the delay for the rest of the test and restores it
// (and waits until the shard caught up) at the end.
func withApplyDelay(t *testing.T, sh *topology.Shard, s *topology.Server, delay string) {
	t.Helper()
	setApplyDelay(t, s, delay)
	t.Cleanup(func() {
		setApplyDelay(t, s, "")
		if err := sh.WaitCaughtUp(ctxT(t, time.Minute)); err != nil {
			t.Errorf("restore apply delay: %v", err)
		}
	})
}

func TestHealthyReplicas(t *testing.T) {
	topo := topotest.Shared(t)
	sh := topo.Shards[0]
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	m := startMonitor(t, sh, defaults)
	defer m.Close()
	if m.Replicas() != 2 {
		t.Fatalf("Replicas() = %d", m.Replicas())
	}
	testutil.WaitFor(t, 20*time.Second, "replicas usable with no lag", func() error { return allUsable(m) })
	p := m.Primary()
	lsn, at := m.PrimaryLSN()
	if !p.Healthy || lsn == 0 || at.IsZero() || p.LSN != lsn {
		t.Fatalf("primary %+v, PrimaryLSN %v %v", p, lsn, at)
	}
	for _, st := range m.Status() {
		if !st.Healthy || st.ReplayLSN == 0 || st.LagTime != 0 || st.Checks == 0 || st.LastCheck.IsZero() {
			t.Fatalf("replica %+v", st)
		}
		t.Logf("%s: replay %v receive %v lag %d bytes %s", st.Name, st.ReplayLSN, st.ReceiveLSN, st.LagBytes, st.LagTime)
	}
	// A write: both replicas (no delay) become eligible for the writer
	// soon after, at a position past the write.
	c := connect(t, sh.Primary.URL("app", "app", "app"))
	exec(t, c, "CREATE TEMP TABLE t(x int); INSERT INTO t VALUES (1)")
	rows := exec(t, c, "SELECT pg_current_wal_insert_lsn()")
	after, err := ParseLSN(string(rows[0][0]))
	if err != nil {
		t.Fatal(err)
	}
	wrote := time.Now()
	d := testutil.WaitFor(t, 10*time.Second, "eligible after a write", func() error {
		for i := range 2 {
			if !m.Eligible(i, wrote) {
				return fmt.Errorf("replica %d not eligible: %+v", i, m.Status()[i])
			}
		}
		return nil
	})
	w, ok := m.Watermark(wrote)
	if !ok || w < recordEnd(after, 8192, 16<<20) {
		t.Fatalf("watermark %v, %v; the primary was at %v after the write", w, ok, after)
	}
	t.Logf("both replicas eligible for the writer %s after the write (watermark %v)", d, w)
	m.Close()
}

func TestReadYourWrites(t *testing.T) {
	topo := topotest.Shared(t)
	sh := topo.Shards[0]
	db := topotest.NewDatabase(t, topo)
	prim := connect(t, sh.Primary.URL("app", "app", db))
	exec(t, prim, "CREATE TABLE t(id int PRIMARY KEY)")
	if err := sh.WaitCaughtUp(ctxT(t, time.Minute)); err != nil {
		t.Fatal(err)
	}
	delayed, prompt := sh.Replicas[0], sh.Replicas[1]
	withApplyDelay(t, sh, delayed, "500ms")
	m := startMonitor(t, sh, defaults)
	reps := []*pgconn.PgConn{connect(t, delayed.URL("app", "app", db)), connect(t, prompt.URL("app", "app", db))}
	visible := func(r, id int) bool {
		rows := exec(t, reps[r], fmt.Sprintf("SELECT count(*) FROM t WHERE id = %d", id))
		return string(rows[0][0]) == "1"
	}
	sawHidden, sawOthersRead := 0, 0
	for id := range 5 {
		exec(t, prim, fmt.Sprintf("INSERT INTO t VALUES (%d)", id))
		wrote := time.Now() // the INSERT's ReadyForQuery has arrived
		var became [2]time.Duration
		done := [2]bool{}
		d := testutil.WaitFor(t, 15*time.Second, "eligible for the writer", func() error {
			for r := range 2 {
				if done[r] {
					continue
				}
				// Eligible first, then the query: replay only moves forward,
				// so a replica eligible before the query must show the row.
				e := m.Eligible(r, wrote)
				noWrite := m.Eligible(r, time.Time{})
				v := visible(r, id)
				if e && !v {
					t.Fatalf("replica %d eligible for the writer but row %d not visible (status %+v, watermark %v)",
						r, id, m.Status()[r], must(m.Watermark(wrote)))
				}
				if !v {
					sawHidden++
					if noWrite {
						sawOthersRead++ // a session that did not write still reads this replica
					}
				}
				if e {
					done[r], became[r] = true, time.Since(wrote)
				}
			}
			if !done[0] || !done[1] {
				return fmt.Errorf("eligible: %v", done)
			}
			return nil
		})
		t.Logf("row %d: eligible for the writer after %s (delayed replica) and %s (prompt), all within %s",
			id, became[0].Round(time.Millisecond), became[1].Round(time.Millisecond), d.Round(time.Millisecond))
	}
	if sawHidden == 0 {
		t.Fatal("never observed a row not yet replayed: the apply delay had no effect, the test proved nothing")
	}
	if sawOthersRead == 0 {
		t.Fatal("the delayed replica was never eligible for sessions that did not write while it lagged")
	}
	t.Logf("checks with the row not yet visible on a replica: %d (replica still serving other sessions: %d)", sawHidden, sawOthersRead)
}

func must[T any](v T, _ bool) T { return v }

func TestKillReplica(t *testing.T) {
	topo := topotest.Shared(t)
	sh := topo.Shards[0]
	victim := sh.Replicas[1]
	t.Cleanup(func() {
		if !victim.Running() {
			if err := victim.Start(ctxT(t, time.Minute)); err != nil {
				t.Errorf("restart %s: %v", victim.Name, err)
			}
		}
		if err := sh.WaitStreaming(ctxT(t, time.Minute)); err != nil {
			t.Errorf("streaming: %v", err)
		}
	})
	m := startMonitor(t, sh, defaults)
	testutil.WaitFor(t, 20*time.Second, "replicas usable", func() error { return allUsable(m) })

	killed := time.Now()
	if err := victim.Kill(); err != nil {
		t.Fatal(err)
	}
	gone := time.Since(killed)
	d := testutil.WaitFor(t, 10*time.Second, "killed replica excluded", func() error {
		if st := m.Status()[1]; !st.Excluded || m.Eligible(1, time.Time{}) {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	st := m.Status()[1]
	t.Logf("SIGKILL -> excluded in %s (processes gone after %s); reason %q", (gone + d).Round(time.Millisecond), gone.Round(time.Millisecond), st.Reason)
	if st.Healthy || !strings.HasPrefix(st.Reason, "check failed") {
		t.Fatalf("killed replica: %+v", st)
	}
	if !m.Eligible(0, time.Time{}) {
		t.Fatalf("the other replica was excluded too: %+v", m.Status()[0])
	}
	for range 20 {
		if i, ok := m.Pick(time.Time{}, PolicyRoundRobin, nil); !ok || i != 0 {
			t.Fatalf("Pick = %d, %v; want 0", i, ok)
		}
	}

	restarted := time.Now()
	if err := victim.Start(ctxT(t, time.Minute)); err != nil {
		t.Fatal(err)
	}
	d = testutil.WaitFor(t, 30*time.Second, "restarted replica eligible", func() error {
		if !m.Eligible(1, time.Time{}) {
			return fmt.Errorf("%+v", m.Status()[1])
		}
		return nil
	})
	t.Logf("restart -> eligible again %s after Start returned (%s after Start was called)", d.Round(time.Millisecond), time.Since(restarted).Round(time.Millisecond))
}

func TestLagBound(t *testing.T) {
	topo := topotest.Shared(t)
	sh := topo.Shards[0]
	db := topotest.NewDatabase(t, topo)
	exec(t, connect(t, sh.Primary.URL("app", "app", db)), "CREATE TABLE t(id serial PRIMARY KEY, pad text)")
	for _, c := range []struct {
		name  string
		cfg   Config
		check func(ReplicaStatus) bool
	}{
		{"bytes", Config{MaxLagBytes: 1}, func(st ReplicaStatus) bool { return st.LagBytes > 1 && strings.HasSuffix(st.Reason, "bytes > 1") }},
		{"time", Config{MaxLagTime: 200 * time.Millisecond}, func(st ReplicaStatus) bool {
			return st.LagTime > 200*time.Millisecond && strings.HasSuffix(st.Reason, "> 200ms")
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := sh.WaitCaughtUp(ctxT(t, time.Minute)); err != nil {
				t.Fatal(err)
			}
			withApplyDelay(t, sh, sh.Replicas[0], "1s")
			m := startMonitor(t, sh, c.cfg)
			// Idle: within the bound, delay or not.
			testutil.WaitFor(t, 20*time.Second, "idle replica usable", func() error {
				if st := m.Status()[0]; st.Excluded || !m.Eligible(0, time.Time{}) {
					return fmt.Errorf("%+v", st)
				}
				return nil
			})
			// Write continuously until the delayed replica is excluded. The
			// writes themselves are not cancelled (that would close the
			// connection mid-query).
			w := connect(t, sh.Primary.URL("app", "app", db))
			stopc := make(chan struct{})
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				tk := time.NewTicker(20 * time.Millisecond)
				defer tk.Stop()
				for {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					_, err := w.Exec(ctx, "INSERT INTO t(pad) VALUES (repeat('x', 100))").ReadAll()
					cancel()
					if err != nil {
						t.Errorf("insert: %v", err)
						return
					}
					select {
					case <-stopc:
						return
					case <-tk.C:
					}
				}
			}()
			stopped := false
			stop := func() {
				if !stopped {
					stopped = true
					close(stopc)
					wg.Wait()
				}
			}
			defer stop()
			var seen ReplicaStatus
			d := testutil.WaitFor(t, 15*time.Second, "lagging replica excluded", func() error {
				st := m.Status()[0]
				if !st.Excluded || !st.Healthy || !c.check(st) || m.Eligible(0, time.Time{}) {
					return fmt.Errorf("%+v", st)
				}
				seen = st
				return nil
			})
			stop()
			t.Logf("excluded after %s: %q (lag %d bytes, %s)", d.Round(time.Millisecond), seen.Reason, seen.LagBytes, seen.LagTime)
			d = testutil.WaitFor(t, 20*time.Second, "replica back after catching up", func() error {
				if st := m.Status()[0]; st.Excluded || !m.Eligible(0, time.Time{}) {
					return fmt.Errorf("%+v", st)
				}
				return nil
			})
			t.Logf("back %s after the writes stopped", d.Round(time.Millisecond))
		})
	}
}

// TestIdleAfterWALSwitch: after pg_switch_wal the primary's insert
// position is past the next segment's page header, while a replica that
// has replayed everything reports the segment boundary. With nothing else
// written, the replicas must still count as caught up.
func TestIdleAfterWALSwitch(t *testing.T) {
	topo := topotest.Shared(t)
	sh := topo.Shards[0]
	m := startMonitor(t, sh, Config{MaxLagBytes: 1})
	ctx := ctxT(t, time.Minute)
	if err := sh.Primary.Exec(ctx, "postgres", "SELECT pg_switch_wal()"); err != nil {
		t.Fatal(err)
	}
	raw, err := sh.Primary.QueryValue(ctx, "postgres", "SELECT pg_current_wal_insert_lsn()")
	if err != nil {
		t.Fatal(err)
	}
	insert, _ := ParseLSN(raw)
	wrote := time.Now()
	d := testutil.WaitFor(t, 5*time.Second, "replicas caught up after a WAL switch", func() error {
		for i, st := range m.Status() {
			if st.Excluded || st.LagBytes != 0 || !m.Eligible(i, wrote) {
				return fmt.Errorf("replica %d: %+v", i, st)
			}
		}
		return nil
	})
	lsn, _ := m.PrimaryLSN()
	t.Logf("insert position after the switch %v (segment offset %d); primary record end %v; replicas %v, %v; caught up in %s",
		insert, uint64(insert)%(16<<20), lsn, m.Status()[0].ReplayLSN, m.Status()[1].ReplayLSN, d.Round(time.Millisecond))
}

// TestHungNode: a server that accepts connections and never answers costs
// one timed-out check at a time, never a pile of them.
func TestHungNode(t *testing.T) {
	topo := topotest.Shared(t)
	sh := topo.Shards[0]
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	open, maxOpen, accepted := 0, 0, 0
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			open++
			accepted++
			maxOpen = max(maxOpen, open)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(io.Discard, c) // until the client gives up
				c.Close()
				mu.Lock()
				open--
				mu.Unlock()
			}()
		}
	}()
	defer func() { ln.Close(); wg.Wait() }()
	port := ln.Addr().(*net.TCPAddr).Port
	m, err := NewMonitor(Config{Interval: 50 * time.Millisecond, Timeout: 200 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(tlog{t}, nil))},
		Node{Name: "primary", ConnString: sh.Primary.URL("app", "app", "app")},
		[]Node{{Name: "hung", ConnString: fmt.Sprintf("host=127.0.0.1 port=%d user=app password=app dbname=app sslmode=disable", port)}})
	if err != nil {
		t.Fatal(err)
	}
	m.Start(context.Background())
	testutil.WaitFor(t, 20*time.Second, "several failed checks", func() error {
		if st := m.Status()[0]; st.Failures < 5 || !st.Excluded {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	closing := time.Now()
	m.Close()
	st := m.Status()[0]
	mu.Lock()
	defer mu.Unlock()
	t.Logf("hung node: %d checks, %d failed, %d connections accepted, at most %d open at once; Close took %s; reason %q",
		st.Checks, st.Failures, accepted, maxOpen, time.Since(closing).Round(time.Millisecond), st.Reason)
	if maxOpen > 2 || uint64(accepted) > st.Checks+1 {
		t.Fatalf("checks piled up: %d accepted, %d open at once, %d checks", accepted, maxOpen, st.Checks)
	}
	if !m.Primary().Healthy {
		t.Fatalf("primary: %+v", m.Primary())
	}
}

func TestPromotedReplica(t *testing.T) {
	if testing.Short() {
		t.Skip("starts its own topology")
	}
	topo := topotest.Start(t, topology.Config{Shards: 1, Replicas: 1})
	sh := topo.Shards[0]
	m := startMonitor(t, sh, defaults)
	testutil.WaitFor(t, 20*time.Second, "replica usable", func() error { return allUsable(m) })
	if err := sh.Replicas[0].Promote(ctxT(t, time.Minute)); err != nil {
		t.Fatal(err)
	}
	d := testutil.WaitFor(t, 10*time.Second, "promoted replica excluded", func() error {
		if st := m.Status()[0]; !st.Excluded || st.Reason != "not in recovery" || m.Eligible(0, time.Time{}) {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	t.Logf("promoted replica excluded %s after promotion", d.Round(time.Millisecond))
}
