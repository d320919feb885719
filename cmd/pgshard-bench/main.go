package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgshard/pgshard/topology"
)

// Binaries; set from flags.
var (
	pgbenchBin   string
	pgbouncerBin string
	pgpoolBin    string
)

// options are the command-line settings.
type options struct {
	duration, warmup         time.Duration
	rounds, scale, clients   int
	threads, poolSize, reps  int
	split, keep, verbose     bool
	pgshardBin, jsonOut, dir string
	modes, targets           []string
	sharded                  shardedOptions
	reshard                  reshardOptions
	relay                    relayOptions
	idle                     idleOptions
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgshard-bench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("pgshard-bench", flag.ContinueOnError)
	o.duration, o.warmup = 10*time.Second, 2*time.Second
	fs.Var((*seconds)(&o.duration), "duration", "length of each pgbench run (-T): 10s, 1m or plain seconds")
	fs.Var((*seconds)(&o.warmup), "warmup", "length of one unrecorded warm-up run per target before round 1 (0: none)")
	fs.IntVar(&o.rounds, "rounds", 3, "interleaved rounds; the table shows medians over them")
	fs.IntVar(&o.scale, "scale", 10, "pgbench -i scale factor")
	fs.IntVar(&o.clients, "clients", 16, "pgbench clients (-c)")
	fs.IntVar(&o.threads, "threads", 2, "pgbench threads (-j)")
	fs.IntVar(&o.poolSize, "pool-size", 20, "backend pool size of every proxy")
	fs.IntVar(&o.reps, "replicas", 0, "streaming replicas of the primary (pgpool load-balances over them)")
	fs.BoolVar(&o.split, "split", false, "give pgshard the replicas for read/write splitting (needs -replicas)")
	fs.StringVar(&o.pgshardBin, "pgshard", "", "pgshard binary (default: build ./cmd/pgshard)")
	fs.StringVar(&o.jsonOut, "json", "", "also write results as JSON to this file (- for stdout)")
	fs.StringVar(&o.dir, "dir", "", "parent of the run's temporary directory (default $TMPDIR)")
	fs.BoolVar(&o.keep, "keep", false, "keep the proxies' configs and logs (the temporary directory) after the run")
	fs.BoolVar(&o.verbose, "v", false, "print progress of the topology and every pgbench run")
	modes := fs.String("modes", "simple,extended,prepared", "pgbench protocol modes (-M)")
	targets := fs.String("targets", "direct,pgbouncer,pgpool,pgshard", "targets to measure")
	fs.BoolVar(&o.sharded.enabled, "sharded", true, "also measure the sharded mode (pgshard over 2 shards vs 1 shard vs direct; -sharded=false skips it)")
	o.sharded.duration = 4 * time.Second
	fs.Var((*seconds)(&o.sharded.duration), "sharded-duration", "sharded mode: length of each keyed pgbench run")
	fs.IntVar(&o.sharded.rounds, "sharded-rounds", 2, "sharded mode: interleaved rounds of the keyed pgbench runs")
	fs.IntVar(&o.sharded.rows, "sharded-rows", 100000, "sharded mode: rows of the keyed table (pgbench picks user_id in 1..rows)")
	fs.IntVar(&o.sharded.scanRows, "scan-rows", 1000000, "sharded mode: rows the scatter ORDER BY query returns (half on each shard)")
	fs.IntVar(&o.sharded.scanReps, "scan-reps", 5, "sharded mode: runs of the scatter query per protocol and target")
	fs.IntVar(&o.sharded.commits, "commits", 300, "sharded mode: statements per case of the two-shard commit measurement")
	fs.IntVar(&o.sharded.insertBatch, "insert-batch", 1000, "sharded mode: rows per multi-row INSERT when loading the keyed table through pgshard")
	fs.IntVar(&o.reshard.rows, "reshard-rows", 1000000, "resharding mode: rows of the table a reshard job splits from 1 shard to 2 (0 skips the mode)")
	fs.IntVar(&o.reshard.writers, "reshard-writers", 4, "resharding mode: writers through pgshard during the job")
	o.reshard.pause = 10 * time.Millisecond
	fs.DurationVar(&o.reshard.pause, "reshard-pause", o.reshard.pause, "resharding mode: each writer's pause between statements")
	fs.IntVar(&o.reshard.baselineReps, "reshard-baseline-reps", 2, "resharding mode: runs of the plain COPY baseline")
	fs.IntVar(&o.reshard.replicas, "reshard-replicas", 0, "resharding mode: streaming replicas of the shard and of the new shard")
	var relayParts, latencyClients string
	relayFlags(fs, &o.relay, &relayParts, &latencyClients)
	registerIdleFlags(fs, &o.idle)
	shardedModes := fs.String("sharded-modes", "simple,prepared", "sharded mode: pgbench protocol modes (-M) of the keyed runs")
	pgbin := os.Getenv("PGSHARD_PGBIN")
	if pgbin == "" {
		pgbin = topology.DefaultBinDir
	}
	fs.StringVar(&pgbenchBin, "pgbench", filepath.Join(pgbin, "pgbench"), "pgbench binary")
	fs.StringVar(&pgbouncerBin, "pgbouncer", "/usr/sbin/pgbouncer", "pgbouncer binary")
	fs.StringVar(&pgpoolBin, "pgpool", "/usr/sbin/pgpool", "pgpool binary")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	o.modes = splitList(*modes)
	o.targets = splitList(*targets)
	o.sharded.modes = splitList(*shardedModes)
	o.reshard.verbose = o.verbose
	var errs []error
	if err := o.relay.finish(relayParts, latencyClients); err != nil {
		errs = append(errs, err)
	}
	for _, m := range o.sharded.modes {
		if !slices.Contains([]string{"simple", "extended", "prepared"}, m) {
			errs = append(errs, fmt.Errorf("-sharded-modes: unknown mode %q", m))
		}
	}
	if so := o.sharded; so.enabled && (so.duration < time.Second || so.rounds < 1 || so.rows < 100 || so.scanRows < 2 ||
		so.scanReps < 1 || so.commits < 1 || so.insertBatch < 1 || len(so.modes) == 0 || 4*so.commits > so.rows/2) {
		errs = append(errs, errors.New("sharded mode: -sharded-duration must be ≥1s, -sharded-rounds, -scan-reps, -commits, -insert-batch ≥1, -sharded-rows ≥100 and ≥ 8×-commits, -scan-rows ≥2, -sharded-modes not empty"))
	}
	if len(o.targets) == 0 && !o.sharded.enabled && !o.reshard.enabled() {
		errs = append(errs, errors.New("nothing to measure: -targets is empty, -sharded=false and -reshard-rows 0"))
	}
	if ro := o.reshard; ro.rows < 0 || ro.enabled() && (ro.rows < 100 || ro.writers < 0 || ro.pause < 0 || ro.baselineReps < 1 || ro.replicas < 0) {
		errs = append(errs, errors.New("resharding mode: -reshard-rows must be 0 or ≥100, -reshard-baseline-reps ≥1, -reshard-writers, -reshard-pause, -reshard-replicas ≥0"))
	}
	for _, m := range o.modes {
		if !slices.Contains([]string{"simple", "extended", "prepared"}, m) {
			errs = append(errs, fmt.Errorf("-modes: unknown mode %q", m))
		}
	}
	for _, t := range o.targets {
		if !slices.Contains([]string{tDirect, tPgbouncer, tPgpool, tPgshard}, t) {
			errs = append(errs, fmt.Errorf("-targets: unknown target %q", t))
		}
	}
	if o.duration < time.Second || o.rounds < 1 || o.scale < 1 || o.clients < 1 || o.threads < 1 || o.poolSize < 1 || o.reps < 0 {
		errs = append(errs, errors.New("-duration must be ≥1s and -rounds, -scale, -clients, -threads, -pool-size ≥1, -replicas ≥0"))
	}
	if o.split && o.reps == 0 {
		errs = append(errs, errors.New("-split needs -replicas ≥1"))
	}
	errs = append(errs, o.finishIdle())
	return o, errors.Join(errs...)
}

// seconds is a duration flag that also takes plain seconds ("5").
type seconds time.Duration

func (s *seconds) String() string { return time.Duration(*s).String() }

func (s *seconds) Set(v string) error {
	if n, err := strconv.Atoi(v); err == nil {
		*s = seconds(time.Duration(n) * time.Second)
		return nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return fmt.Errorf("want a duration (10s) or seconds (10): %w", err)
	}
	*s = seconds(d)
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// run sets everything up, measures, prints the report and stops
// everything it started (also when ctx is cancelled by a signal).
func run(ctx context.Context, args []string, stdout io.Writer) (err error) {
	o, err := parseFlags(args)
	if err != nil {
		return err
	}
	logf := log.New(os.Stderr, "pgshard-bench: ", log.Ltime).Printf
	// Before any child starts: the proxies inherit the limit.
	fdSoft, fdHard, fdErr := raiseNofile()
	vlogf := func(string, ...any) {}
	if o.verbose {
		vlogf = logf
	}
	// Each binary is needed only by the targets that use it (the
	// resharding mode alone needs none of them; pgbench -i still loads
	// the main primary).
	bins := []string{pgbenchBin}
	if slices.Contains(o.targets, tPgbouncer) {
		bins = append(bins, pgbouncerBin)
	}
	if slices.Contains(o.targets, tPgpool) {
		bins = append(bins, pgpoolBin)
	}
	if len(o.targets) > 0 && o.relay.has(partSyscalls) {
		bins = append(bins, o.relay.straceBin)
	}
	for _, bin := range bins {
		if _, err := os.Stat(bin); err != nil {
			return fmt.Errorf("%s missing (run scripts/install-deps.sh bench): %w", bin, err)
		}
	}
	runAs, err := topology.PostgresOSUser()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp(o.dir, "pgshard-bench-")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		return fmt.Errorf("chmod %s: %w", dir, err)
	}
	defer func() {
		if o.keep {
			logf("kept configs and logs in %s", dir)
			return
		}
		os.RemoveAll(dir)
	}()

	bin := o.pgshardBin
	if bin != "" {
		// The proxy runs in its own directory: make the path absolute.
		if bin, err = filepath.Abs(bin); err != nil {
			return fmt.Errorf("-pgshard: %w", err)
		}
		if _, err := os.Stat(bin); err != nil {
			return fmt.Errorf("-pgshard: %w", err)
		}
	} else {
		logf("building pgshard")
		if bin, err = buildPgshard(ctx, dir); err != nil {
			return err
		}
	}

	logf("starting PostgreSQL (1 primary, %d replica(s))", o.reps)
	topo, err := topology.Start(ctx, topology.Config{Shards: 1, Replicas: o.reps, Logf: vlogf,
		Settings: o.relay.pgSettings(o.targets, o.poolSize)})
	if err != nil {
		return fmt.Errorf("start topology: %w", err)
	}
	defer func() {
		if cerr := topo.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("stop topology: %w", cerr))
		}
	}()
	shard := topo.Shards[0]
	be := backend{primaryPort: shard.Primary.Port}
	for _, r := range shard.Replicas {
		be.replicaPorts = append(be.replicaPorts, r.Port)
	}

	if !o.idle.only {
		logf("pgbench -i -s %d on the primary", o.scale)
		if err := pgbenchInit(ctx, be.primaryPort, o.scale); err != nil {
			return err
		}
	}
	if err := shard.WaitCaughtUp(ctx); err != nil {
		return err
	}

	// The peers.
	pc := peerConfig{dir: dir, runAs: runAs, poolSize: o.poolSize, clients: o.clients, split: o.split, be: be,
		maxClients: o.peerMaxClients()}
	var procs []*proc
	defer func() {
		for _, p := range slices.Backward(procs) {
			if serr := p.stop(10 * time.Second); serr != nil {
				err = errors.Join(err, serr)
			}
		}
	}()
	used := ports{}
	for _, s := range topo.Servers() {
		used[s.Port] = true
	}
	var targets []*target
	var session *target // pgbouncer in session pooling, the -M prepared reference
	for _, name := range o.targets {
		t := &target{name: name}
		if name == tDirect {
			t.port = be.primaryPort
			targets = append(targets, t)
			continue
		}
		port, err := used.pick()
		if err != nil {
			return err
		}
		t.port = port
		extra, err := used.pick() // pgpool's pcp port, pgshard's admin port
		if err != nil {
			return err
		}
		switch name {
		case tPgbouncer:
			t.proc, err = startPgbouncer(tPgbouncer, "transaction", t.port, pc)
		case tPgpool:
			t.proc, err = startPgpool(t.port, extra, pc)
		case tPgshard:
			t.proc, err = startPgshard(bin, t.port, extra, pc)
			t.adminPort = extra
		}
		if err != nil {
			return err
		}
		procs = append(procs, t.proc)
		targets = append(targets, t)
	}
	if slices.Contains(o.targets, tPgbouncer) && slices.Contains(o.modes, "prepared") {
		port, err := used.pick()
		if err != nil {
			return err
		}
		session = &target{name: tPgbouncerSession, port: port}
		if session.proc, err = startPgbouncer(tPgbouncerSession, "session", port, pc); err != nil {
			return err
		}
		procs = append(procs, session.proc)
	}
	all := slices.Clone(targets)
	if session != nil {
		all = append(all, session)
	}
	for _, t := range all {
		if err := waitAccepting(ctx, t.name, appDSN(t.port), t.proc, startTimeout); err != nil {
			return err
		}
		logf("%s accepting on 127.0.0.1:%d", t.name, t.port)
	}

	if err := os.MkdirAll(filepath.Join(dir, "pgbench"), 0o755); err != nil {
		return fmt.Errorf("mkdir: %w", err)
	}
	m := &measurer{o: o, dir: dir, topo: topo, ticks: clockTicks(), logf: logf, vlogf: vlogf}
	rep := &report{
		Machine:  machineInfo(),
		Versions: versions(bin),
		Config: reportConfig{
			Duration: o.duration.String(), Rounds: o.rounds, Scale: o.scale, Clients: o.clients,
			Threads: o.threads, PoolSize: o.poolSize, Replicas: o.reps, Split: o.split,
			Modes: o.modes, Targets: o.targets, ClockTicks: m.ticks,
		},
	}
	rep.Machine.LoadBefore = loadAvg()
	if o.idle.enabled() {
		rep.Idle = runIdle(ctx, o.idle, targets, o.poolSize, fdSoft, fdHard, fdErr, logf)
	}

	if o.warmup > 0 {
		logf("warm-up: %s per target", o.warmup)
		for _, t := range all {
			mode := "simple"
			if t.name == tPgbouncerSession {
				mode = "prepared"
			}
			if _, err := m.measure(ctx, t, mode, o.warmup, 0); err != nil {
				return err
			}
		}
	}

	if len(targets) == 0 {
		o.rounds = 0 // -targets "": only the sharded mode
	}
	total := o.rounds * len(o.modes) * len(targets)
	logf("measuring: %d rounds × %d modes × %d targets × %s ≈ %s", o.rounds, len(o.modes), len(targets), o.duration,
		(time.Duration(total) * (o.duration + time.Second)).Round(time.Second))
	bouncerPreparedNA := false
	for round := 1; round <= o.rounds; round++ {
		for _, mode := range o.modes {
			// Rotate the order each round so no target always runs
			// first (right after another target's load) or last.
			k := (round - 1) % len(targets)
			order := append(slices.Clone(targets[k:]), targets[:k]...)
			for _, t := range order {
				if mode == "prepared" && t.name == tPgbouncer && bouncerPreparedNA {
					continue
				}
				r, err := m.measure(ctx, t, mode, o.duration, round)
				if err != nil {
					return err
				}
				rep.Runs = append(rep.Runs, r)
				if mode == "prepared" && t.name == tPgbouncer && !r.OK {
					bouncerPreparedNA = true
					rep.PgbouncerPrepared = r.Problem
					logf("pgbouncer (transaction pooling) -M prepared failed: %s; skipping it in later rounds, measuring %s instead", r.Problem, tPgbouncerSession)
				}
			}
			if mode == "prepared" && bouncerPreparedNA && session != nil {
				r, err := m.measure(ctx, session, mode, o.duration, round)
				if err != nil {
					return err
				}
				rep.Runs = append(rep.Runs, r)
			}
		}
	}
	rep.Machine.LoadAfter = loadAvg()
	rep.summarize()
	if o.rounds > 0 {
		rep.printText(stdout)
	}
	if rep.Idle != nil {
		rep.Idle.printText(stdout)
	}
	// A proxy that died during the run is a failure of the run.
	for _, p := range procs {
		if p.exited() {
			err = errors.Join(err, fmt.Errorf("%s exited during the benchmark (%v); log:\n%s", p.name, p.err, p.logTail(30)))
		}
	}
	if o.relay.enabled && len(targets) > 0 && ctx.Err() == nil {
		lrep, lerr := runRelay(ctx, o.relay, relayEnv{m: m, targets: targets, session: session,
			primaryPort: be.primaryPort, dir: filepath.Join(dir, "relay")})
		if lrep != nil {
			if lerr != nil {
				lrep.Error = lerr.Error()
			}
			rep.Relay = lrep
			lrep.printText(stdout)
		}
		err = errors.Join(err, lerr)
	}
	if o.sharded.enabled {
		// The peers are done: stop them so that they take nothing from
		// the sharded mode (stop is safe to call again on exit).
		for _, p := range slices.Backward(procs) {
			if serr := p.stop(10 * time.Second); serr != nil {
				err = errors.Join(err, serr)
			}
		}
		srep, serr := runSharded(ctx, o, dir, bin, shard.Primary, used, logf, vlogf)
		if srep != nil {
			if serr != nil {
				srep.Error = serr.Error()
				srep.summarize()
			}
			rep.Sharded = srep
			srep.printText(stdout)
		}
		err = errors.Join(err, serr)
	}
	if o.reshard.enabled() && ctx.Err() == nil {
		// The peers (and the sharded mode's servers) are stopped by now.
		for _, p := range slices.Backward(procs) {
			if serr := p.stop(10 * time.Second); serr != nil {
				err = errors.Join(err, serr)
			}
		}
		rrep, rerr := runReshard(ctx, o.reshard, logf, vlogf)
		if rrep != nil {
			if rerr != nil {
				rrep.Error = rerr.Error()
				rrep.summarize()
			}
			rep.Reshard = rrep
			rrep.printText(stdout)
		}
		err = errors.Join(err, rerr)
	}
	if o.jsonOut != "" {
		if jerr := rep.writeJSON(o.jsonOut, stdout); jerr != nil {
			err = errors.Join(err, jerr)
		}
	}
	return err
}

// measurer runs one pgbench measurement with CPU accounting.
type measurer struct {
	o           options
	dir         string // pgbench outputs go to dir/pgbench
	topo        *topology.Topology
	ticks       int64
	logf, vlogf func(string, ...any)
}

// pgTicks sums the CPU ticks of every PostgreSQL server process tree.
func (m *measurer) pgTicks() int64 {
	var sum int64
	for _, s := range m.topo.Servers() {
		if pid := s.PID(); pid != 0 {
			v, _ := treeTicks(pid)
			sum += v
		}
	}
	return sum
}

// measure runs pgbench once against t. Only a cancelled context is an
// error; a failing pgbench is recorded in the result.
func (m *measurer) measure(ctx context.Context, t *target, mode string, d time.Duration, round int) (runResult, error) {
	r := runResult{Round: round, Mode: mode, Target: t.name}
	var proxyBefore int64
	var perr error
	if t.proc != nil {
		proxyBefore, perr = treeTicks(t.proc.pid())
	}
	pgBefore := m.pgTicks()
	out, code, err := pgbenchRun(ctx, t.port, mode, m.o.clients, m.o.threads, d)
	if ctx.Err() != nil {
		return r, ctx.Err()
	}
	pgAfter := m.pgTicks()
	var proxyAfter int64
	if t.proc != nil && perr == nil {
		proxyAfter, perr = treeTicks(t.proc.pid())
	}
	r.ExitCode = code
	if m.dir != "" {
		name := fmt.Sprintf("round%d-%s-%s.log", round, mode, t.name)
		_ = os.WriteFile(filepath.Join(m.dir, "pgbench", name), []byte(out), 0o644)
	}
	st, parseErr := parsePgbench(out)
	r.TPS, r.Transactions, r.Failed, r.AbortedClients = st.TPS, st.Transactions, st.Failed, st.Aborted
	var found []string
	if parseErr == nil && st.Scale != m.o.scale {
		found = append(found, fmt.Sprintf("pgbench reports scaling factor %d, want %d", st.Scale, m.o.scale))
	}
	if t.proc != nil && t.proc.exited() {
		found = append(found, fmt.Sprintf("%s exited: %v", t.name, t.proc.err))
	}
	r.Problem = pgbenchProblem(code, err, parseErr, st, m.o.clients, found...)
	r.OK = r.Problem == ""
	if !r.OK {
		r.OutputTail = tail(out, 15)
	}
	if r.Transactions > 0 {
		if t.proc != nil && perr == nil {
			r.ProxyCPUus = cpuPerTxn(proxyAfter-proxyBefore, m.ticks, r.Transactions)
		}
		r.PGCPUus = cpuPerTxn(pgAfter-pgBefore, m.ticks, r.Transactions)
	}
	what := fmt.Sprintf("round %d", round)
	if round == 0 {
		what = "warm-up"
	}
	line := fmt.Sprintf("%s %-8s %-17s tps=%.0f txns=%d", what, mode, t.name, r.TPS, r.Transactions)
	if r.ProxyCPUus != nil {
		line += fmt.Sprintf(" proxy=%.1fµs/q", *r.ProxyCPUus)
	}
	if !r.OK {
		line += " PROBLEM: " + r.Problem
	}
	if round == 0 || !r.OK {
		m.vlogf("%s", line)
	} else {
		m.logf("%s", line)
	}
	if !r.OK && round == 0 {
		m.logf("warm-up of %s failed: %s\n%s", t.name, r.Problem, r.OutputTail)
	}
	return r, nil
}

// cpuPerTxn turns CPU clock ticks (clock ticks per second: hz) spent over
// txns transactions into microseconds per transaction.
func cpuPerTxn(ticks, hz int64, txns int64) *float64 {
	v := float64(ticks) * 1e6 / float64(hz) / float64(txns)
	return &v
}
