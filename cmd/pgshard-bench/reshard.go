package main

// The resharding mode: a reshard job adding a shard to a one-shard cluster
// (about half the rows move), its copy rate side by side with a plain
// COPY … TO STDOUT | COPY … FROM STDIN of the same rows between the same
// two servers, and the stall of a keyed write load through an in-process
// pgshard proxy during the job (see doc.go).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshard/pgshard/config"
	"github.com/pgshard/pgshard/proxy"
	"github.com/pgshard/pgshard/resharder"
	"github.com/pgshard/pgshard/shardmap"
	"github.com/pgshard/pgshard/topology"
)

// Tables of the resharding mode.
const (
	reshardTable = "bench_reshard"
	// baselineTable receives the baseline's copy on the new shard; it is
	// dropped before the job starts.
	baselineTable = "bench_reshard_copy"
	reshardCols   = "user_id, v, name, pad, created"
)

// reshardDDL creates the moved table (or the baseline's copy of it).
func reshardDDL(table string) string {
	return "CREATE TABLE " + table + " (user_id bigint NOT NULL, v bigint NOT NULL DEFAULT 0, name text NOT NULL, " +
		"pad text NOT NULL, created timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (user_id))"
}

// Shard names in the resharding mode's map: the topology's.
const (
	reshardSource = "shard0"
	reshardTarget = "spare0"
)

// reshardOptions are the -reshard-* flags.
type reshardOptions struct {
	rows         int // 0: the mode is off
	writers      int
	pause        time.Duration // each writer's pause between statements
	baselineReps int
	replicas     int // streaming replicas of each of the two primaries
	verbose      bool
}

func (o reshardOptions) enabled() bool { return o.rows > 0 }

// reshardStore is the shard map in memory, as resharder.Store: commands
// applied under a mutex, as the Raft FSM would, each new map handed to the
// in-process proxy before Apply returns (so its MapVersion is at once the
// map's). It notes when the job's phase and the ring change.
type reshardStore struct {
	mu     sync.Mutex
	m      *shardmap.Map
	follow func(*shardmap.Map) // called under mu with every new map
	events []phaseEvent
	phase  string
	ring   uint64
}

// phaseEvent is a job phase (or "ring": the new ring) committed at At.
type phaseEvent struct {
	Phase string    `json:"phase"`
	At    time.Time `json:"at"`
	// CopyStarted is the job's own record of when its subscriptions were
	// created (the start of copying), when the record has it.
	CopyStarted time.Time `json:"-"`
}

func (s *reshardStore) Map() *shardmap.Map {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m
}

func (s *reshardStore) Apply(_ context.Context, cmd shardmap.Command) (*shardmap.Map, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.m.Apply(cmd)
	if err != nil {
		return nil, err
	}
	s.m = m
	now := time.Now()
	if jobs := m.Jobs(); len(jobs) > 0 {
		j := jobs[len(jobs)-1]
		if j.Phase != s.phase {
			ev := phaseEvent{Phase: j.Phase, At: now}
			var d struct {
				CopyStarted time.Time `json:"copy_started"`
			}
			if json.Unmarshal(j.Data, &d) == nil {
				ev.CopyStarted = d.CopyStarted
			}
			s.events = append(s.events, ev)
			s.phase = j.Phase
		}
	}
	if s.ring != 0 && m.RingVersion() != s.ring {
		s.events = append(s.events, phaseEvent{Phase: "ring", At: now})
	}
	s.ring = m.RingVersion()
	if s.follow != nil {
		s.follow(m)
	}
	return m, nil
}

func (s *reshardStore) phaseEvents() []phaseEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.events)
}

// proxyNodes is the cluster of one in-process proxy.
type proxyNodes struct{ srv *proxy.Server }

func (n proxyNodes) WaitApplied(ctx context.Context, v uint64) error {
	for n.srv.MapVersion() < v {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// logWriter sends a slog text handler's lines to a printf.
type logWriter struct{ logf func(string, ...any) }

func (w logWriter) Write(p []byte) (int, error) {
	w.logf("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// reshardRun holds what the resharding mode started.
type reshardRun struct {
	ro          reshardOptions
	topo        *topology.Topology
	src, tgt    *topology.Server
	store       *reshardStore
	srv         *proxy.Server
	proxyAddr   string
	ranges      []shardmap.Range // the ranges moving to the new shard
	logf, vlogf func(string, ...any)
}

// runReshard measures the resharding mode on its own topology: one shard
// primary and one spare primary (each with ro.replicas replicas).
func runReshard(ctx context.Context, ro reshardOptions, logf, vlogf func(string, ...any)) (rep *reshardReport, err error) {
	start := time.Now()
	rep = &reshardReport{Rows: ro.rows, Writers: ro.writers, Pause: ro.pause.String(), Replicas: ro.replicas}
	logf("reshard: starting PostgreSQL (a shard and a spare shard, %d replica(s) each)", ro.replicas)
	topo, err := topology.Start(ctx, topology.Config{Shards: 1, Spares: 1, Replicas: ro.replicas, Logf: vlogf})
	if err != nil {
		return nil, fmt.Errorf("reshard: start topology: %w", err)
	}
	defer func() {
		if cerr := topo.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("reshard: stop topology: %w", cerr))
		}
	}()
	r := &reshardRun{ro: ro, topo: topo, src: topo.Shards[0].Primary, tgt: topo.Spares[0].Primary, logf: logf, vlogf: vlogf}
	stop, err := r.startProxy(ctx)
	if err != nil {
		return rep, err
	}
	defer func() { err = errors.Join(err, stop()) }()
	if err := r.load(ctx); err != nil {
		return rep, err
	}
	level := slog.LevelWarn
	if ro.verbose {
		level = slog.LevelInfo
	}
	runner := resharder.New(resharder.Config{
		Store: r.store, Nodes: proxyNodes{r.srv},
		Login:        resharder.Login{User: "postgres", Database: appDB},
		Log:          slog.New(slog.NewTextHandler(logWriter{func(f string, a ...any) { logf("reshard: resharder: "+f, a...) }}, &slog.HandlerOptions{Level: level})),
		PollInterval: 50 * time.Millisecond,
	})
	spec := resharder.Spec{Add: &resharder.NewShard{Name: reshardTarget, Primary: r.tgt.DSN()}}
	for _, rr := range topo.Spares[0].Replicas {
		spec.Add.Replicas = append(spec.Add.Replicas, rr.DSN())
	}
	pl, err := runner.Plan(ctx, spec)
	if err != nil {
		return rep, fmt.Errorf("reshard: plan: %w", err)
	}
	for _, mv := range pl.Moves {
		r.ranges = append(r.ranges, mv.Range)
	}
	rep.Ranges = len(r.ranges)
	for _, t := range pl.Tables {
		rep.PlanRows += t.Rows
		rep.PlanBytes += t.Bytes
	}
	cond := shardmap.RangesSQL(r.ranges, "hashint8extended(user_id, 0)")
	if rep.MovingRows, err = queryInt(ctx, r.src.Port, "SELECT count(*) FROM "+reshardTable+" WHERE "+cond); err != nil {
		return rep, err
	}
	logf("reshard: plan: %d range(s) (of the ring's %d) move from %s to %s: %d of %d rows (plan estimate %d rows, %.1f MB)",
		len(r.ranges), len(r.store.Map().Ring().Ranges(reshardSource)), reshardSource, reshardTarget, rep.MovingRows, ro.rows, rep.PlanRows, float64(rep.PlanBytes)/1e6)

	// The writers run from here to the end, so that the plain COPYs and
	// the job's copy compete with the same load: 1 s of warm-up (the
	// proxy's first connections), 2 s of reference, the baselines, the
	// job, the last baseline.
	wl := newWriteLoad(r, ro)
	if err := wl.start(ctx); err != nil {
		return rep, err
	}
	stopped := false
	defer func() {
		if !stopped {
			wl.stop()
		}
	}()
	sleep := func(d time.Duration) error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
			return nil
		}
	}
	if err := sleep(3 * time.Second); err != nil {
		return rep, err
	}
	refEnd := time.Now()
	baseline := func(from, to *topology.Server, cond string, after bool) error {
		b, err := r.baseline(ctx, from, to, cond)
		if err != nil {
			return err
		}
		b.Rep, b.After = len(rep.Baseline)+1, after
		rep.Baseline = append(rep.Baseline, b)
		logf("reshard: baseline %d (%s → %s): COPY TO | COPY FROM of %d rows (%.1f MB) in %.2fs = %.0f rows/s, %.1f MB/s",
			b.Rep, b.From, b.To, b.Rows, float64(b.Bytes)/1e6, b.Seconds, b.RowsPerSec, b.MBPerSec)
		if b.Rows != rep.MovingRows {
			rep.Problems = append(rep.Problems, fmt.Sprintf("baseline %d copied %d rows, want %d", b.Rep, b.Rows, rep.MovingRows))
		}
		return nil
	}
	// 2. The baseline: the same rows between the same two servers.
	// The loaded rows of the moving ranges (the writers add others).
	loaded := fmt.Sprintf("%s AND user_id <= %d", cond, ro.rows)
	for range ro.baselineReps {
		if err := baseline(r.src, r.tgt, loaded, false); err != nil {
			return rep, err
		}
	}

	// 1 and 3. The job. It copies the rows of the moving ranges as they
	// are when it starts: the loaded ones and the writers' so far.
	if rep.JobRows, err = queryInt(ctx, r.src.Port, "SELECT count(*) FROM "+reshardTable+" WHERE "+cond); err != nil {
		return rep, err
	}
	logf("reshard: starting the job (add %s) with %d writer(s) through pgshard", reshardTarget, ro.writers)
	jobStart := time.Now()
	st, err := runner.Start(ctx, spec)
	if err != nil {
		return rep, fmt.Errorf("reshard: start: %w", err)
	}
	rep.JobID = st.ID
	if j, ok := r.store.Map().Job(st.ID); ok && !slices.Equal(j.Moving, r.ranges) {
		rep.Problems = append(rep.Problems, "the job moves other ranges than the plan said; the writers' moving/other split is off")
	}
	rctx, cancel := context.WithCancel(ctx)
	runDone := make(chan struct{})
	go func() { defer close(runDone); runner.Run(rctx) }()
	final, jobErr := r.waitJob(ctx, runner, st.ID)
	jobEnd := time.Now()
	cancel()
	<-runDone
	if final != nil {
		rep.Cutover = final.Cutover.Seconds() * 1000
		rep.CutoverAttempts = final.CutoverAttempts
		rep.Verified = final.Verified
		rep.JobError = final.Error
		rep.Phase = final.Phase
	}
	rep.Phases = r.store.phaseEvents()
	rep.timeJob(jobStart, jobEnd)
	freezeFrom, freezeTo := rep.freezeWindow()
	if jobErr != nil {
		wl.stop()
		stopped = true
		rep.Writes = wl.summary(refEnd, jobStart, jobEnd, freezeFrom, freezeTo)
		return rep, jobErr
	}
	// One more baseline after the job, to bracket the machine's noise: the
	// same rows (the loaded ones of the moved ranges), now on the new
	// shard, copied back the other way between the same two servers.
	if err := baseline(r.tgt, r.src, loaded, true); err != nil {
		return rep, err
	}
	wl.stop()
	stopped = true
	rep.Writes = wl.summary(refEnd, jobStart, jobEnd, freezeFrom, freezeTo)
	if err := r.check(ctx, rep, wl); err != nil {
		return rep, err
	}
	// What a new backend connection to the new shard costs (the pool of
	// each proxy opens its first ones when held statements go there).
	var conn []float64
	for range 3 {
		t0 := time.Now()
		c, err := pgconn.Connect(ctx, appDSN(r.tgt.Port))
		if err != nil {
			return rep, fmt.Errorf("reshard: connect to %s: %w", reshardTarget, err)
		}
		conn = append(conn, float64(time.Since(t0))/float64(time.Millisecond))
		c.Close(context.Background())
	}
	rep.ConnectMs = median(conn)
	rep.summarize()
	rep.Elapsed = time.Since(start).Round(time.Second).String()
	return rep, nil
}

// startProxy starts an in-process pgshard proxy over the map's shards and
// the map: the source shard, owning the whole ring, and the table.
func (r *reshardRun) startProxy(ctx context.Context) (stop func() error, err error) {
	cfg := config.Default()
	cfg.Listen = "127.0.0.1:0"
	cfg.AdminListen = ""
	cfg.LogLevel = "warn"
	cfg.Users = []config.User{{Name: appUser, Password: appPassword}}
	cfg.Pool.Size = r.ro.writers + 4
	cfg.Shards = []config.Shard{{Name: reshardSource, Primary: r.src.DSN()}}
	logger := slog.New(slog.NewTextHandler(logWriter{func(f string, a ...any) { r.logf("reshard: pgshard: "+f, a...) }}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := proxy.New(cfg, logger, nil)
	if err != nil {
		return nil, fmt.Errorf("reshard: proxy: %w", err)
	}
	r.srv = srv
	m := &shardmap.Map{}
	for _, cmd := range []shardmap.Command{
		shardmap.AddShard(shardmap.Shard{Name: reshardSource, Primary: r.src.DSN()}, shardmap.DefaultVnodes),
		shardmap.AddTable(shardmap.Table{Name: reshardTable, Kind: shardmap.TableSharded, KeyColumn: "user_id", KeyType: shardmap.KeyInt, KeyOrdinal: 1}),
	} {
		if m, err = m.Apply(cmd); err != nil {
			return nil, fmt.Errorf("reshard: map: %w", err)
		}
	}
	var shards []config.Shard
	follow := func(m *shardmap.Map) {
		var next []config.Shard
		for _, sh := range m.Shards() {
			next = append(next, config.Shard{Name: sh.Name, Primary: sh.Primary, Replicas: sh.Replicas})
		}
		if fmt.Sprint(next) != fmt.Sprint(shards) {
			if err := srv.SetShards(next); err != nil {
				r.logf("reshard: pgshard: following the map's shards failed: %v", err)
			} else {
				shards = next
			}
		}
		srv.SetMap(m)
	}
	r.store = &reshardStore{m: m, follow: follow, ring: m.RingVersion()}
	follow(m)
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("reshard: proxy: %w", err)
	}
	r.proxyAddr = ln.Addr().String()
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sctx, ln) }()
	return func() error {
		dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer dcancel()
		err := srv.Shutdown(dctx)
		cancel()
		if serr := <-done; serr != nil && !errors.Is(serr, net.ErrClosed) {
			err = errors.Join(err, serr)
		}
		if err != nil {
			return fmt.Errorf("reshard: proxy: %w", err)
		}
		return nil
	}, nil
}

func (r *reshardRun) proxyDSN() string {
	host, port, _ := net.SplitHostPort(r.proxyAddr)
	return fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=%s sslmode=disable connect_timeout=3", host, port, appUser, appPassword, appDB)
}

// load creates the table on the source and loads keys 1..rows by COPY.
func (r *reshardRun) load(ctx context.Context) error {
	t0 := time.Now()
	r.logf("reshard: loading %d rows into %s on %s (COPY)", r.ro.rows, reshardTable, reshardSource)
	cctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	c, err := pgx.Connect(cctx, appDSN(r.src.Port))
	if err != nil {
		return fmt.Errorf("reshard: load: %w", err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(cctx, reshardDDL(reshardTable)); err != nil {
		return fmt.Errorf("reshard: %w", err)
	}
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	k := int64(0)
	n, err := c.CopyFrom(cctx, pgx.Identifier{reshardTable}, strings.Split(reshardCols, ", "),
		pgx.CopyFromFunc(func() ([]any, error) {
			if k == int64(r.ro.rows) {
				return nil, nil
			}
			k++
			return []any{k, int64(0), fmt.Sprintf("user%d", k), scanPad(k), created.Add(time.Duration(k) * time.Second)}, nil
		}))
	if err != nil {
		return fmt.Errorf("reshard: load: %w", err)
	}
	if n != int64(r.ro.rows) {
		return fmt.Errorf("reshard: load: %d rows, want %d", n, r.ro.rows)
	}
	for _, sql := range []string{"VACUUM ANALYZE " + reshardTable, "CHECKPOINT"} {
		if err := r.src.Exec(ctx, appDB, sql); err != nil {
			return err
		}
	}
	for _, sh := range r.topo.AllShards() {
		if err := sh.WaitCaughtUp(ctx); err != nil {
			return err
		}
	}
	r.logf("reshard: loaded in %s", time.Since(t0).Round(100*time.Millisecond))
	return nil
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// baseline copies the rows of cond from server from into a fresh copy of
// the table on server to: COPY (SELECT … WHERE cond) TO STDOUT on one
// connection piped into COPY … FROM STDIN on the other, then drops it.
func (r *reshardRun) baseline(ctx context.Context, from, to *topology.Server, cond string) (baselineRun, error) {
	b := baselineRun{From: strings.TrimSuffix(from.Name, "-primary"), To: strings.TrimSuffix(to.Name, "-primary")}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	defer cancel()
	if _, err := execSQL(cctx, to.Port, "DROP TABLE IF EXISTS "+baselineTable+"; "+reshardDDL(baselineTable)); err != nil {
		return b, fmt.Errorf("reshard: baseline: %w", err)
	}
	if err := to.Exec(cctx, appDB, "CHECKPOINT"); err != nil {
		return b, fmt.Errorf("reshard: baseline: %w", err)
	}
	src, err := pgconn.Connect(cctx, appDSN(from.Port))
	if err != nil {
		return b, fmt.Errorf("reshard: baseline: %w", err)
	}
	defer src.Close(context.Background())
	tgt, err := pgconn.Connect(cctx, appDSN(to.Port))
	if err != nil {
		return b, fmt.Errorf("reshard: baseline: %w", err)
	}
	defer tgt.Close(context.Background())
	pr, pw := io.Pipe()
	cw := &countingWriter{w: pw}
	out := "COPY (SELECT " + reshardCols + " FROM " + reshardTable + " WHERE " + cond + ") TO STDOUT"
	in := "COPY " + baselineTable + " (" + reshardCols + ") FROM STDIN"
	t0 := time.Now()
	var outTag pgconn.CommandTag
	var outErr error
	outDone := make(chan struct{})
	go func() {
		defer close(outDone)
		outTag, outErr = src.CopyTo(cctx, cw, out)
		pw.CloseWithError(outErr) // nil: the reader sees EOF
	}()
	inTag, inErr := tgt.CopyFrom(cctx, pr, in)
	if inErr != nil {
		pr.CloseWithError(inErr) // unblocks the writer
	}
	<-outDone
	d := time.Since(t0)
	if err := errors.Join(outErr, inErr); err != nil {
		return b, fmt.Errorf("reshard: baseline %s | %s: %w", out, in, err)
	}
	if inTag.RowsAffected() != outTag.RowsAffected() {
		return b, fmt.Errorf("reshard: baseline: %d rows out, %d in", outTag.RowsAffected(), inTag.RowsAffected())
	}
	b.Rows, b.Bytes, b.Seconds = inTag.RowsAffected(), cw.n, d.Seconds()
	b.RowsPerSec = float64(b.Rows) / d.Seconds()
	b.MBPerSec = float64(b.Bytes) / 1e6 / d.Seconds()
	if _, err := execSQL(cctx, to.Port, "DROP TABLE "+baselineTable); err != nil {
		return b, fmt.Errorf("reshard: baseline: %w", err)
	}
	if err := to.Exec(cctx, appDB, "CHECKPOINT"); err != nil {
		return b, fmt.Errorf("reshard: baseline: %w", err)
	}
	return b, nil
}

// waitJob waits until the job is finished, logging its phases.
func (r *reshardRun) waitJob(ctx context.Context, runner *resharder.Runner, id string) (*resharder.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Minute)
	defer cancel()
	last, lastErr := "", ""
	for {
		j, ok := r.store.Map().Job(id)
		if !ok {
			return nil, fmt.Errorf("reshard: job %s left the map", id)
		}
		if j.Phase != last {
			r.logf("reshard: job %s: phase %s", id, j.Phase)
			last = j.Phase
		}
		if j.Phase == resharder.PhaseDone || j.Phase == resharder.PhaseCancelled {
			st, err := runner.Status(ctx)
			if err != nil {
				return nil, fmt.Errorf("reshard: status: %w", err)
			}
			if j.Phase != resharder.PhaseDone {
				return st, fmt.Errorf("reshard: job %s ended %s: %s", id, j.Phase, st.Error)
			}
			return st, nil
		}
		var d struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(j.Data, &d) == nil && d.Error != lastErr {
			if d.Error != "" {
				r.logf("reshard: job %s (%s) met an error and retries: %s", id, j.Phase, d.Error)
			}
			lastErr = d.Error
		}
		select {
		case <-ctx.Done():
			st, _ := runner.Status(context.Background())
			return st, fmt.Errorf("reshard: job %s not finished (phase %s): %w", id, j.Phase, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// check verifies the result: every row on its owner only, as many as were
// loaded plus the writers' acknowledged inserts, and sum(v) equal to their
// acknowledged updates, on the shards and through pgshard.
func (r *reshardRun) check(ctx context.Context, rep *reshardReport, wl *writeLoad) error {
	m := r.store.Map()
	want := int64(r.ro.rows) + wl.inserted.Load()
	var sum int64
	var per []string
	for _, s := range []struct {
		name string
		srv  *topology.Server
	}{{reshardSource, r.src}, {reshardTarget, r.tgt}} {
		own := shardmap.RangesSQL(m.Ring().Ranges(s.name), "hashint8extended(user_id, 0)")
		q := fmt.Sprintf("SELECT count(*), count(*) FILTER (WHERE NOT %s) FROM %s", own, reshardTable)
		res, err := execSQL(ctx, s.srv.Port, q)
		if err != nil {
			return fmt.Errorf("reshard: check %s: %w", s.name, err)
		}
		var n, bad int64
		fmt.Sscan(string(res[0].Rows[0][0]), &n)
		fmt.Sscan(string(res[0].Rows[0][1]), &bad)
		if bad != 0 {
			rep.Problems = append(rep.Problems, fmt.Sprintf("%d rows on %s that it does not own", bad, s.name))
		}
		sum += n
		per = append(per, fmt.Sprintf("%s %d", s.name, n))
	}
	c, err := pgx.Connect(ctx, r.proxyDSN())
	if err != nil {
		return fmt.Errorf("reshard: check: %w", err)
	}
	defer c.Close(context.Background())
	var through, v int64
	if err := c.QueryRow(ctx, "SELECT count(*), sum(v) FROM "+reshardTable).Scan(&through, &v); err != nil {
		return fmt.Errorf("reshard: check through pgshard: %w", err)
	}
	rep.Check = fmt.Sprintf("rows: %s (sum %d), through pgshard %d, want %d (loaded + acknowledged inserts); sum(v) %d, acknowledged updates %d",
		strings.Join(per, " + "), sum, through, want, v, wl.updated.Load())
	if sum != want || through != want || v != wl.updated.Load() {
		rep.Problems = append(rep.Problems, "check failed: "+rep.Check)
	}
	return nil
}

// ---- the write load ----

// stmtSample is one writer statement: when it started, how long it took,
// whether its key lay in a moving range.
type stmtSample struct {
	start  time.Time
	dur    time.Duration
	moving bool
}

// writeLoad is a few writers through the proxy, each inserting new keys
// and updating loaded ones, on moving ranges (3 in 4) and on others.
type writeLoad struct {
	r        *reshardRun
	ro       reshardOptions
	done     chan struct{}
	started  time.Time
	wg       sync.WaitGroup
	inserted atomic.Int64
	updated  atomic.Int64
	fenced   atomic.Int64 // PS001 seen by a client (the proxy should retry them)

	mu      sync.Mutex
	samples []stmtSample
	failed  []string
	nfailed int
}

func newWriteLoad(r *reshardRun, ro reshardOptions) *writeLoad {
	return &writeLoad{r: r, ro: ro, done: make(chan struct{})}
}

func (w *writeLoad) isMoving(k int64) bool {
	h := shardmap.HashInt64(k)
	for _, g := range w.r.ranges {
		if g.Contains(h) {
			return true
		}
	}
	return false
}

// start connects every writer and starts them.
func (w *writeLoad) start(ctx context.Context) error {
	var conns []*pgx.Conn
	for range w.ro.writers {
		c, err := pgx.Connect(ctx, w.r.proxyDSN())
		if err != nil {
			for _, c := range conns {
				c.Close(context.Background())
			}
			return fmt.Errorf("reshard: writer: connect through pgshard: %w", err)
		}
		conns = append(conns, c)
	}
	w.started = time.Now()
	for i, c := range conns {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			defer c.Close(context.Background())
			w.loop(i, c)
		}()
	}
	return nil
}

func (w *writeLoad) stop() {
	select {
	case <-w.done:
	default:
		close(w.done)
	}
	w.wg.Wait()
}

// loop runs writer i until stop: half inserts of new keys (above the
// loaded ones, each writer its own), half updates of loaded keys.
func (w *writeLoad) loop(i int, c *pgx.Conn) {
	rnd := rand.New(rand.NewPCG(uint64(i), 42))
	step := int64(w.ro.writers)
	// The next new key of each class (moving, other): keys above the
	// loaded ones, i modulo the number of writers, so none is used twice.
	next := [2]int64{int64(w.ro.rows) + 1 + int64(i), int64(w.ro.rows) + 1 + int64(i)}
	rows := int64(w.ro.rows)
	for {
		select {
		case <-w.done:
			return
		default:
		}
		wantMoving := rnd.IntN(4) != 0
		insert := rnd.IntN(2) == 0
		var k int64
		if insert {
			c := 0
			if wantMoving {
				c = 1
			}
			for k = next[c]; w.isMoving(k) != wantMoving; k += step {
			}
			next[c] = k + step
		} else {
			for k = 1 + rnd.Int64N(rows); w.isMoving(k) != wantMoving; k = 1 + rnd.Int64N(rows) {
			}
		}
		var err error
		var affected int64
		t0 := time.Now()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			var tag pgconn.CommandTag
			if insert {
				tag, err = c.Exec(ctx, "INSERT INTO "+reshardTable+" (user_id, name, pad) VALUES ($1, $2, '')", k, "w")
			} else {
				tag, err = c.Exec(ctx, "UPDATE "+reshardTable+" SET v = v + 1 WHERE user_id = $1", k)
			}
			cancel()
			affected = tag.RowsAffected()
			if pe := (*pgconn.PgError)(nil); errors.As(err, &pe) && pe.Code == shardmap.CodeFenced {
				w.fenced.Add(1)
				time.Sleep(time.Millisecond)
				continue
			}
			break
		}
		d := time.Since(t0)
		w.mu.Lock()
		w.samples = append(w.samples, stmtSample{start: t0, dur: d, moving: wantMoving})
		switch {
		case err != nil:
			w.nfailed++
			if len(w.failed) < 5 {
				w.failed = append(w.failed, fmt.Sprintf("key %d: %v", k, err))
			}
		case affected != 1:
			w.nfailed++
			if len(w.failed) < 5 {
				w.failed = append(w.failed, fmt.Sprintf("key %d: %d rows affected", k, affected))
			}
		case insert:
			w.inserted.Add(1)
		default:
			w.updated.Add(1)
		}
		w.mu.Unlock()
		if err != nil {
			time.Sleep(10 * time.Millisecond)
		}
		if w.ro.pause > 0 {
			time.Sleep(w.ro.pause)
		}
	}
}

// summary sums up the statements: the reference window (from 1 s after
// the start to refEnd), during the job (moving ranges and others) and
// those in flight while the ranges were frozen.
func (w *writeLoad) summary(refEnd, jobStart, jobEnd time.Time, freezeFrom, freezeTo time.Time) writeSummary {
	w.mu.Lock()
	defer w.mu.Unlock()
	var s writeSummary
	var before, moving, other, frozen, afterRing, firstSecond []float64
	toMs := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	for _, x := range w.samples {
		end := x.start.Add(x.dur)
		ms := toMs(x.dur)
		if x.moving && !freezeTo.IsZero() && !x.start.Before(freezeTo) && x.start.Before(freezeTo.Add(time.Second)) {
			firstSecond = append(firstSecond, ms) // also after the job's end
		}
		switch {
		case end.Before(jobStart):
			// The reference: after the warm-up (the first connections to
			// the shard), before the plain COPYs.
			if !x.start.Before(w.started.Add(time.Second)) && end.Before(refEnd) {
				before = append(before, ms)
			}
		case x.start.After(jobEnd):
		case x.moving:
			moving = append(moving, ms)
			if !freezeFrom.IsZero() && x.start.Before(freezeTo) && end.After(freezeFrom) {
				frozen = append(frozen, ms)
				afterRing = append(afterRing, toMs(max(0, end.Sub(freezeTo))))
			}
		default:
			other = append(other, ms)
		}
	}
	s.Before, s.Moving, s.Other, s.InFreeze = latencies(before), latencies(moving), latencies(other), latencies(frozen)
	s.AfterRing, s.NewOwner = latencies(afterRing), latencies(firstSecond)
	s.Failed, s.FailedSample = w.nfailed, slices.Clone(w.failed)
	s.Fenced = w.fenced.Load()
	s.Inserted, s.Updated = w.inserted.Load(), w.updated.Load()
	return s
}
