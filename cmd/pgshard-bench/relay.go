package main

// The relay measurements (issue 10): system calls per query under strace,
// latency percentiles at several client counts, and connection churn, for
// pgshard, pgbouncer and direct PostgreSQL. They run after the TPS/CPU
// rounds, with the same peers; relay_report.go prints them.

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// relayOptions are the -relay* flags.
type relayOptions struct {
	enabled        bool
	parts          []string // "syscalls", "latency", "churn"
	duration       time.Duration
	clients        int   // pgbench clients of the strace and churn runs
	latencyClients []int // pgbench clients of the latency runs
	latencyMode    string
	straceBin      string
}

const (
	partSyscalls = "syscalls"
	partLatency  = "latency"
	partChurn    = "churn"
)

// relayFlags registers the relay flags on fs.
func relayFlags(fs *flag.FlagSet, ro *relayOptions, parts, latencyClients *string) {
	fs.BoolVar(&ro.enabled, "relay", true, "after the TPS/CPU rounds, measure system calls per query, latency percentiles and connection churn of pgshard, pgbouncer and direct (-relay=false skips them)")
	*parts = partSyscalls + "," + partLatency + "," + partChurn
	fs.StringVar(parts, "relay-parts", *parts, "relay measurements to run: syscalls (strace), latency, churn (pgbench -C)")
	ro.duration = 3 * time.Second
	fs.Var((*seconds)(&ro.duration), "relay-duration", "length of each relay pgbench run (-T)")
	fs.IntVar(&ro.clients, "relay-clients", 16, "pgbench clients of the strace and churn runs")
	*latencyClients = "1,16,256"
	fs.StringVar(latencyClients, "latency-clients", *latencyClients, "pgbench client counts of the latency runs")
	fs.StringVar(&ro.latencyMode, "latency-mode", "simple", "pgbench protocol mode (-M) of the latency and churn runs")
	fs.StringVar(&ro.straceBin, "strace", "/usr/bin/strace", "strace binary (relay syscalls)")
}

// finish parses the list flags and checks the values.
func (ro *relayOptions) finish(parts, latencyClients string) error {
	var errs []error
	ro.parts = splitList(parts)
	for _, p := range ro.parts {
		if !slices.Contains([]string{partSyscalls, partLatency, partChurn}, p) {
			errs = append(errs, fmt.Errorf("-relay-parts: unknown part %q", p))
		}
	}
	ro.latencyClients = nil
	for _, s := range splitList(latencyClients) {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			errs = append(errs, fmt.Errorf("-latency-clients: %q is not a client count ≥1", s))
			continue
		}
		ro.latencyClients = append(ro.latencyClients, n)
	}
	if !slices.Contains([]string{"simple", "extended", "prepared"}, ro.latencyMode) {
		errs = append(errs, fmt.Errorf("-latency-mode: unknown mode %q", ro.latencyMode))
	}
	if ro.enabled && (ro.duration < time.Second || ro.clients < 1 || ro.has(partLatency) && len(ro.latencyClients) == 0) {
		errs = append(errs, errors.New("relay: -relay-duration must be ≥1s, -relay-clients ≥1, -latency-clients not empty"))
	}
	return errors.Join(errs...)
}

func (ro relayOptions) has(part string) bool { return ro.enabled && slices.Contains(ro.parts, part) }

// maxClients is the most clients a relay run opens at once (0 when none).
func (ro relayOptions) maxClients() int {
	n := 0
	if ro.has(partSyscalls) || ro.has(partChurn) {
		n = ro.clients
	}
	if ro.has(partLatency) {
		n = max(n, slices.Max(ro.latencyClients))
	}
	return n
}

// pgSettings returns the postgresql.conf settings the relay runs need on
// the primary: a max_connections that fits the most latency clients
// directly while every proxy holds its pool (topology's default is 200).
func (ro relayOptions) pgSettings(targets []string, poolSize int) map[string]string {
	if !ro.has(partLatency) || !slices.Contains(targets, tDirect) {
		return nil
	}
	// pgbouncer, its session-pooling reference, pgpool-II and pgshard may
	// each hold poolSize connections; some for superusers and the bench.
	need := slices.Max(ro.latencyClients) + 4*poolSize + 10
	if need <= 200 {
		return nil
	}
	return map[string]string{"max_connections": strconv.Itoa(need)}
}

// relayEnv is what the relay runs use from the main run.
type relayEnv struct {
	m           *measurer
	targets     []*target // direct, pgbouncer, pgshard (those measured)
	session     *target   // pgbouncer in session pooling, or nil
	primaryPort int
	dir         string // outputs go under dir
}

// runRelay runs the relay measurements. Only a cancelled context or a
// setup failure is an error; failed runs are recorded in the report.
func runRelay(ctx context.Context, ro relayOptions, env relayEnv) (*relayReport, error) {
	m := env.m
	var targets []*target
	for _, t := range env.targets {
		if t.name == tDirect || t.name == tPgbouncer || t.name == tPgshard {
			targets = append(targets, t)
		}
	}
	env.targets = targets
	rep := &relayReport{
		Duration: ro.duration.String(), Clients: ro.clients, LatencyMode: ro.latencyMode,
		LatencyClients: ro.latencyClients, Parts: ro.parts,
	}
	defer rep.summarize()
	if err := os.MkdirAll(env.dir, 0o755); err != nil {
		return rep, fmt.Errorf("mkdir: %w", err)
	}
	if ro.has(partSyscalls) {
		modes := m.o.modes
		m.logf("relay: system calls per query under strace, %d clients, %s per run", ro.clients, ro.duration)
		for _, mode := range modes {
			for _, t := range env.targets {
				tt := t
				if t.name == tPgbouncer && mode == "prepared" {
					// pgbouncer 1.18 cannot run -M prepared in
					// transaction pooling: trace the session reference.
					if env.session == nil {
						continue
					}
					tt = env.session
				}
				row, err := traceRun(ctx, ro, env, tt, mode)
				if err != nil {
					return rep, err
				}
				m.logf("relay: strace %-8s %-17s %s", mode, tt.name, row.logLine())
				rep.Syscalls = append(rep.Syscalls, row)
			}
		}
	}
	if ro.has(partLatency) {
		m.logf("relay: latency, -M %s, clients %v, %s per run", ro.latencyMode, ro.latencyClients, ro.duration)
		for _, n := range ro.latencyClients {
			for _, t := range env.targets {
				row, err := latencyRun(ctx, ro, env, t, n)
				if err != nil {
					return rep, err
				}
				m.logf("relay: latency %3d clients %-10s tps=%.0f p50=%s p99=%s%s", n, t.name, row.TPS,
					fmtF(row.P50us, "%.0fµs"), fmtF(row.P99us, "%.0fµs"), problemSuffix(row.Problem))
				rep.Latency = append(rep.Latency, row)
			}
		}
	}
	if ro.has(partChurn) {
		m.logf("relay: connection churn (pgbench -C), %d clients, %s per run", ro.clients, ro.duration)
		for _, t := range env.targets {
			row, err := churnRun(ctx, ro, env, t)
			if err != nil {
				return rep, err
			}
			m.logf("relay: churn %-10s tps=%.0f%s", t.name, row.TPS, problemSuffix(row.Problem))
			rep.Churn = append(rep.Churn, row)
		}
	}
	return rep, nil
}

func problemSuffix(p string) string {
	if p == "" {
		return ""
	}
	return " PROBLEM: " + p
}

// pgbenchArgs returns `pgbench -n -S` arguments against 127.0.0.1:port.
func pgbenchArgs(port int, mode string, clients, threads int, d time.Duration, extra ...string) []string {
	args := []string{
		"-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", appUser,
		"-n", "-S", "-M", mode,
		"-c", strconv.Itoa(clients), "-j", strconv.Itoa(max(1, min(clients, threads))),
		"-T", strconv.Itoa(max(1, int(d.Round(time.Second)/time.Second))),
	}
	return append(append(args, extra...), appDB)
}

// pgbenchProblem describes what went wrong in a pgbench run ("" if
// nothing did): how it ended, aborted clients (of clients, when known),
// failed transactions, the caller's own findings (extra), and then the
// first error pgbench printed.
func pgbenchProblem(code int, err, parseErr error, st pgbenchStats, clients int, extra ...string) string {
	var problems []string
	switch {
	case err != nil:
		problems = append(problems, err.Error())
	case parseErr != nil:
		problems = append(problems, fmt.Sprintf("exit %d, %v", code, parseErr))
	case code != 0:
		problems = append(problems, fmt.Sprintf("exit %d", code))
	}
	if st.Aborted > 0 {
		if clients > 0 {
			problems = append(problems, fmt.Sprintf("%d of %d clients aborted", st.Aborted, clients))
		} else {
			problems = append(problems, fmt.Sprintf("%d clients aborted", st.Aborted))
		}
	}
	if st.Failed > 0 {
		problems = append(problems, fmt.Sprintf("%d failed transactions", st.Failed))
	}
	problems = append(problems, extra...)
	if len(problems) > 0 && st.FirstError != "" {
		problems = append(problems, "first error: "+st.FirstError)
	}
	return strings.Join(problems, "; ")
}

// runDir makes a fresh directory for one run's pgbench logs.
func runDir(parent, name string) (string, error) {
	d := filepath.Join(parent, name)
	if err := os.RemoveAll(d); err != nil {
		return "", err
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		return "", fmt.Errorf("mkdir: %w", err)
	}
	return d, nil
}

// latencyRun runs pgbench with a per-transaction log and computes the
// latency percentiles from it.
func latencyRun(ctx context.Context, ro relayOptions, env relayEnv, t *target, clients int) (latencyRow, error) {
	row := latencyRow{Target: t.name, Clients: clients, Threads: max(1, min(clients, env.m.o.threads))}
	var d string
	var err error
	// pgbench's -T includes connecting its clients: when that took a
	// quarter of it or more (a direct PostgreSQL backend's start is slow),
	// run again with -T lengthened by 1.5 times the connecting time.
	run := ro.duration.Round(time.Second)
	var out string
	var code int
	var st pgbenchStats
	var parseErr error
	for attempt := 1; ; attempt++ {
		if d, err = runDir(env.dir, fmt.Sprintf("latency-%d-%s", clients, t.name)); err != nil {
			return row, err
		}
		args := pgbenchArgs(t.port, ro.latencyMode, clients, env.m.o.threads, run, "-l", "--log-prefix="+filepath.Join(d, "tx"))
		start := time.Now()
		out, code, err = runPgbench(ctx, args)
		if ctx.Err() != nil {
			return row, ctx.Err()
		}
		elapsed := time.Since(start)
		_ = os.WriteFile(filepath.Join(d, "pgbench.out"), []byte(out), 0o644)
		st, parseErr = parsePgbench(out)
		row.ConnectMs = nil
		if m := reInitConn.FindStringSubmatch(out); m != nil {
			if v, perr := strconv.ParseFloat(m[1], 64); perr == nil {
				row.ConnectMs = &v
			}
		}
		// Without a transaction pgbench prints no connection time:
		// connecting took the whole run, or longer.
		conn := elapsed
		if row.ConnectMs != nil {
			conn = time.Duration(*row.ConnectMs * float64(time.Millisecond))
		}
		if attempt == 2 || err != nil || conn < run/4 && st.Transactions > 0 {
			break
		}
		more := max(time.Second, (conn * 3 / 2).Round(time.Second))
		env.m.logf("relay: latency %d clients %s: connecting took %s of -T %s; again with -T %s", clients, t.name,
			conn.Round(time.Millisecond), run, run+more)
		run += more
	}
	row.RunSeconds = int(run / time.Second)
	row.TPS, row.Transactions = st.TPS, st.Transactions
	row.Problem = pgbenchProblem(code, err, parseErr, st, 0)
	if t.proc != nil && t.proc.exited() {
		row.Problem = strings.TrimPrefix(row.Problem+fmt.Sprintf("; %s exited: %v", t.name, t.proc.err), "; ")
	}
	txs, failed, lerr := readPgbenchLogs(d)
	if lerr != nil {
		row.Problem = strings.TrimPrefix(row.Problem+"; "+lerr.Error(), "; ")
		return row, nil
	}
	lat := make([]float64, len(txs))
	for i, tx := range txs {
		lat[i] = float64(tx.latencyUS)
	}
	row.Logged, row.LoggedFailed = len(lat), failed
	row.P50us, row.P99us = percentile(lat, 0.50), percentile(lat, 0.99)
	row.Meanus, row.Maxus = mean(lat), percentile(lat, 1)
	return row, nil
}

var reChurnTPS = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \(including reconnection times\)`)
var reInitConn = regexp.MustCompile(`(?m)^initial connection time = ([0-9.]+) ms`)
var reConnTime = regexp.MustCompile(`(?m)^average connection time = ([0-9.]+) ms`)

// parseChurn reads the report of `pgbench -C`: its tps line says
// "including reconnection times", and it prints the average time of a
// connection.
func parseChurn(out string) (st pgbenchStats, connMs float64, err error) {
	st, err = parsePgbench(out)
	if err != nil && !errors.Is(err, errNoReport) || st.Transactions == 0 && err != nil {
		return st, 0, err
	}
	m := reChurnTPS.FindStringSubmatch(out)
	if m == nil {
		return st, 0, fmt.Errorf("%w: no \"including reconnection times\" tps line", errNoReport)
	}
	if st.TPS, err = strconv.ParseFloat(m[1], 64); err != nil {
		return st, 0, fmt.Errorf("parse tps %q: %w", m[1], err)
	}
	if m := reConnTime.FindStringSubmatch(out); m != nil {
		connMs, _ = strconv.ParseFloat(m[1], 64)
	}
	return st, connMs, nil
}

// churnRun runs `pgbench -C` (a new connection per transaction) with the
// proxy's and PostgreSQL's CPU time per transaction.
func churnRun(ctx context.Context, ro relayOptions, env relayEnv, t *target) (churnRow, error) {
	m := env.m
	row := churnRow{Target: t.name, Clients: ro.clients}
	var proxyBefore, proxyAfter int64
	var perr error
	if t.proc != nil {
		proxyBefore, perr = treeTicks(t.proc.pid())
	}
	pgBefore := m.pgTicks()
	out, code, err := runPgbench(ctx, pgbenchArgs(t.port, ro.latencyMode, ro.clients, m.o.threads, ro.duration, "-C"))
	if ctx.Err() != nil {
		return row, ctx.Err()
	}
	pgAfter := m.pgTicks()
	if t.proc != nil && perr == nil {
		proxyAfter, perr = treeTicks(t.proc.pid())
	}
	_ = os.WriteFile(filepath.Join(env.dir, "churn-"+t.name+".out"), []byte(out), 0o644)
	st, connMs, parseErr := parseChurn(out)
	row.TPS, row.Transactions, row.ConnectMs = st.TPS, st.Transactions, connMs
	row.Problem = pgbenchProblem(code, err, parseErr, st, 0)
	if row.Transactions > 0 {
		if t.proc != nil && perr == nil {
			row.ProxyCPUus = cpuPerTxn(proxyAfter-proxyBefore, m.ticks, row.Transactions)
		}
		row.PGCPUus = cpuPerTxn(pgAfter-pgBefore, m.ticks, row.Transactions)
	}
	return row, nil
}

// pgbenchTx is one line of pgbench's per-transaction log.
type pgbenchTx struct {
	endUS     int64 // completion time, µs since the Unix epoch
	latencyUS int64
}

// parsePgbenchLog reads a pgbench (15) per-transaction log: lines of
// "client_id transaction_no time script_no time_epoch time_us [...]", time
// being the latency in µs, or "failed"/"skipped". It returns the completed
// transactions and the count of the others.
func parsePgbenchLog(r io.Reader) ([]pgbenchTx, int, error) {
	var txs []pgbenchTx
	failed := 0
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) < 6 {
			return txs, failed, fmt.Errorf("pgbench log line %d: %d fields, want ≥6: %q", n, len(f), sc.Text())
		}
		lat, err := strconv.ParseInt(f[2], 10, 64)
		if err != nil {
			if f[2] == "failed" || f[2] == "skipped" {
				failed++
				continue
			}
			return txs, failed, fmt.Errorf("pgbench log line %d: latency %q: %v", n, f[2], err)
		}
		sec, err1 := strconv.ParseInt(f[4], 10, 64)
		us, err2 := strconv.ParseInt(f[5], 10, 64)
		if err1 != nil || err2 != nil {
			return txs, failed, fmt.Errorf("pgbench log line %d: bad time stamp %q %q", n, f[4], f[5])
		}
		txs = append(txs, pgbenchTx{endUS: sec*1e6 + us, latencyUS: lat})
	}
	return txs, failed, sc.Err()
}

// readPgbenchLogs reads every log file pgbench wrote into dir (one per
// thread: tx.PID, tx.PID.1, ...).
func readPgbenchLogs(dir string) ([]pgbenchTx, int, error) {
	files, err := filepath.Glob(filepath.Join(dir, "tx.*"))
	if err != nil || len(files) == 0 {
		return nil, 0, fmt.Errorf("no pgbench log in %s (%v)", dir, err)
	}
	var all []pgbenchTx
	failed := 0
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return nil, 0, err
		}
		txs, n, err := parsePgbenchLog(f)
		f.Close()
		if err != nil {
			return nil, 0, fmt.Errorf("%s: %w", filepath.Base(name), err)
		}
		all = append(all, txs...)
		failed += n
	}
	return all, failed, nil
}

// percentile returns the nearest-rank p-quantile (0 < p ≤ 1) of v, nil
// for an empty v.
func percentile(v []float64, p float64) *float64 {
	if len(v) == 0 {
		return nil
	}
	s := slices.Clone(v)
	slices.Sort(s)
	k := int(math.Ceil(p*float64(len(s)))) - 1
	k = min(max(k, 0), len(s)-1)
	return &s[k]
}

func mean(v []float64) *float64 {
	if len(v) == 0 {
		return nil
	}
	var sum float64
	for _, x := range v {
		sum += x
	}
	m := sum / float64(len(v))
	return &m
}

// traceRun runs pgbench against t with strace -c -f attached to the
// proxy (all its threads) or, for direct PostgreSQL, to the pgbench
// backends, once pgbench has connected. The queries counted are those
// pgbench's log shows completed while strace was attached.
func traceRun(ctx context.Context, ro relayOptions, env relayEnv, t *target, mode string) (syscallRow, error) {
	m := env.m
	row := syscallRow{Mode: mode, Target: t.name}
	d, err := runDir(env.dir, fmt.Sprintf("strace-%s-%s", mode, t.name))
	if err != nil {
		return row, err
	}
	args := pgbenchArgs(t.port, mode, ro.clients, m.o.threads, ro.duration, "-l", "--log-prefix="+filepath.Join(d, "tx"))
	appName := fmt.Sprintf("pgshard-bench-strace-%s-%s", mode, t.name)
	bctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan pgbenchResult, 1)
	go func() {
		// The application_name tells its backends from those of the
		// proxies' pools (which take the clients' pgbench).
		out, code, err := runPgbench(bctx, args, "PGAPPNAME="+appName)
		done <- pgbenchResult{out, code, err}
	}()
	fail := func(problem string) (syscallRow, error) {
		cancel()
		<-done
		row.Problem = problem
		return row, ctx.Err()
	}

	// What to trace: the proxy, or the pgbench backends of direct.
	var pids []int
	if t.proc != nil {
		pids = []int{t.proc.pid()}
		// Let pgbench connect first, so that tracing covers queries.
		select {
		case <-time.After(min(500*time.Millisecond, ro.duration/4)):
		case r := <-done:
			done <- r
		}
	} else {
		pids, err = pgbenchBackends(ctx, env.primaryPort, appName, ro.clients, done)
		if err != nil {
			return fail(err.Error())
		}
	}
	tasks := 0
	for _, pid := range pids {
		tasks += countTasks(pid)
	}
	summary := filepath.Join(d, "strace.txt")
	sargs := []string{"-c", "-f", "-o", summary}
	for _, pid := range pids {
		sargs = append(sargs, "-p", strconv.Itoa(pid))
	}
	st, err := startStrace(ro.straceBin, sargs, len(pids))
	if err != nil {
		return fail(err.Error())
	}
	t0 := time.Now()
	var r pgbenchResult
	select {
	case r = <-done:
	case <-ctx.Done():
		st.stop()
		<-done
		return row, ctx.Err()
	}
	t1 := time.Now()
	serr := st.stop()
	_ = os.WriteFile(filepath.Join(d, "pgbench.out"), []byte(r.out), 0o644)
	_ = os.WriteFile(filepath.Join(d, "strace.stderr"), []byte(st.stderr()), 0o644)
	att := parseStraceAttach(st.stderr(), len(pids))
	row.Threads, row.NewThreads, row.TasksBefore = att.initial, att.later, tasks
	bst, parseErr := parsePgbench(r.out)
	var problems []string
	if p := pgbenchProblem(r.code, r.err, parseErr, bst, 0); p != "" {
		problems = append(problems, p)
	}
	if serr != nil {
		problems = append(problems, serr.Error())
	}
	if att.initial < tasks {
		problems = append(problems, fmt.Sprintf("strace attached to %d of %d threads", att.initial, tasks))
	}
	txs, _, lerr := readPgbenchLogs(d)
	if lerr != nil {
		problems = append(problems, lerr.Error())
	}
	for _, tx := range txs {
		if us := tx.endUS; us >= t0.UnixMicro() && us <= t1.UnixMicro() {
			row.Queries++
		}
	}
	row.TracedSeconds = t1.Sub(t0).Seconds()
	if row.TracedSeconds > 0 {
		row.TracedQPS = float64(row.Queries) / row.TracedSeconds
	}
	b, rerr := os.ReadFile(summary)
	if rerr != nil {
		problems = append(problems, rerr.Error())
	} else if calls, err := parseStraceSummary(string(b)); err != nil {
		problems = append(problems, err.Error())
	} else {
		row.Calls = calls
		if row.Queries > 0 {
			row.PerQuery = perQuery(calls, row.Queries)
		}
	}
	if row.Queries == 0 && lerr == nil {
		problems = append(problems, "no query completed while strace was attached")
	}
	row.Problem = strings.Join(problems, "; ")
	return row, nil
}

// pgbenchResult is the outcome of a pgbench run in the background.
type pgbenchResult struct {
	out  string
	code int
	err  error
}

// pgbenchBackends waits until clients pgbench backends are connected to
// the primary (pg_stat_activity, with the run's own application_name) and returns
// their PIDs. It gives up when pgbench ends first (done receives; the
// result is put back) or after 15 seconds.
func pgbenchBackends(ctx context.Context, port int, appName string, clients int, done chan pgbenchResult) ([]int, error) {
	deadline := time.Now().Add(15 * time.Second)
	c, err := pgconn.Connect(ctx, appDSN(port))
	if err != nil {
		return nil, fmt.Errorf("find pgbench backends: %w", err)
	}
	defer c.Close(context.Background())
	var pids []int
	for {
		rs, err := c.Exec(ctx, "SELECT pid FROM pg_stat_activity WHERE application_name = '"+appName+"' AND backend_type = 'client backend'").ReadAll()
		if err != nil {
			return nil, fmt.Errorf("find pgbench backends: %w", err)
		}
		pids = pids[:0]
		for _, row := range rs[0].Rows {
			if pid, err := strconv.Atoi(string(row[0])); err == nil {
				pids = append(pids, pid)
			}
		}
		if len(pids) >= clients {
			return pids, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("find pgbench backends: %d of %d connected after 15s", len(pids), clients)
		}
		select {
		case r := <-done:
			done <- r
			return nil, fmt.Errorf("find pgbench backends: pgbench ended with %d of %d seen", len(pids), clients)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// countTasks returns the number of threads of pid (0 if unknown).
func countTasks(pid int) int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0
	}
	return len(ents)
}

// stracer is a running strace.
type stracer struct {
	cmd  *exec.Cmd
	done chan struct{}
	out  strings.Builder // stderr, complete after done
}

var reAttached = regexp.MustCompile(`(?m)^\S*strace: Process [0-9]+ attached(?: with ([0-9]+) threads)?$`)

// startStrace starts strace and waits until it has attached to the n
// processes given with -p.
func startStrace(bin string, args []string, n int) (*stracer, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	pr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start strace: %w", err)
	}
	s := &stracer{cmd: cmd, done: make(chan struct{})}
	attached := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		seen := 0
		for sc.Scan() {
			line := sc.Text()
			s.out.WriteString(line + "\n")
			if seen < n && reAttached.MatchString(line) {
				if seen++; seen == n {
					close(attached)
				}
			}
		}
		_ = cmd.Wait()
		close(s.done)
	}()
	select {
	case <-attached:
		return s, nil
	case <-s.done:
		return nil, fmt.Errorf("strace exited before attaching (%v): %s", cmd.ProcessState, strings.TrimSpace(s.out.String()))
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-s.done
		return nil, fmt.Errorf("strace did not attach within 15s: %s", strings.TrimSpace(s.out.String()))
	}
}

// stop interrupts strace (it detaches and writes its summary) and waits
// for it; a strace whose tracees are all gone has exited already.
func (s *stracer) stop() error {
	select {
	case <-s.done:
		return nil
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.done:
		return nil
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
		return errors.New("strace did not exit within 30s of SIGINT: killed (no summary)")
	}
}

// stderr returns what strace wrote to stderr (complete after stop).
func (s *stracer) stderr() string {
	select {
	case <-s.done:
		return s.out.String()
	default:
		return ""
	}
}

// straceAttach is what strace's attach messages say.
type straceAttach struct {
	initial int // threads attached at the start (of the processes given with -p)
	later   int // threads and processes followed afterwards (-f)
}

// parseStraceAttach reads strace's stderr: one "Process P attached [with
// N threads]" line per process given with -p (nPids of them), then one
// "Process T attached" per thread or child created while tracing with -f.
func parseStraceAttach(stderr string, nPids int) straceAttach {
	var a straceAttach
	for i, m := range reAttached.FindAllStringSubmatch(stderr, -1) {
		if i >= nPids {
			a.later++
			continue
		}
		n := 1
		if m[1] != "" {
			n, _ = strconv.Atoi(m[1])
		}
		a.initial += n
	}
	return a
}

// straceCall is one row of strace -c's summary.
type straceCall struct {
	Syscall string  `json:"syscall"`
	Calls   int64   `json:"calls"`
	Errors  int64   `json:"errors"`
	Seconds float64 `json:"seconds"`
}

// parseStraceSummary reads strace -c's summary table:
//
//	% time     seconds  usecs/call     calls    errors syscall
//	------ ----------- ----------- --------- --------- ----------------
//	 58.09    0.027530           5      4783      2337 read
//	...
//	------ ----------- ----------- --------- --------- ----------------
//	100.00    0.047390           4     10538      2337 total
//
// (errors is blank when there were none). It returns the rows, most calls
// first, without the total, which must equal their sum. Rows of the same
// system call in several tables (one per personality) are added up.
func parseStraceSummary(s string) ([]straceCall, error) {
	byName := map[string]*straceCall{}
	var calls []*straceCall
	var total *straceCall
	tables := 0
	in := false
	for n, line := range strings.Split(s, "\n") {
		t := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(t, "% time"):
			f := strings.Fields(t)
			if len(f) != 7 || f[4] != "calls" || f[5] != "errors" || f[6] != "syscall" {
				return nil, fmt.Errorf("strace summary line %d: unexpected header %q", n+1, t)
			}
			tables++
			in = true
			continue
		case !in || t == "" || strings.HasPrefix(t, "---"):
			continue
		}
		f := strings.Fields(t)
		if len(f) != 5 && len(f) != 6 {
			// A line after the table ("System call usage summary for
			// 32 bit mode:", ...).
			if _, err := strconv.ParseFloat(f[0], 64); err != nil {
				in = false
				continue
			}
			return nil, fmt.Errorf("strace summary line %d: %d fields: %q", n+1, len(f), t)
		}
		var c straceCall
		var err error
		c.Syscall = f[len(f)-1]
		if c.Seconds, err = strconv.ParseFloat(f[1], 64); err != nil {
			return nil, fmt.Errorf("strace summary line %d: seconds %q: %v", n+1, f[1], err)
		}
		if c.Calls, err = strconv.ParseInt(f[3], 10, 64); err != nil {
			return nil, fmt.Errorf("strace summary line %d: calls %q: %v", n+1, f[3], err)
		}
		if len(f) == 6 {
			if c.Errors, err = strconv.ParseInt(f[4], 10, 64); err != nil {
				return nil, fmt.Errorf("strace summary line %d: errors %q: %v", n+1, f[4], err)
			}
		}
		if c.Syscall == "total" {
			if total == nil {
				total = &straceCall{Syscall: "total"}
			}
			total.Calls += c.Calls
			total.Errors += c.Errors
			total.Seconds += c.Seconds
			continue
		}
		if p := byName[c.Syscall]; p != nil {
			p.Calls += c.Calls
			p.Errors += c.Errors
			p.Seconds += c.Seconds
			continue
		}
		byName[c.Syscall] = &c
		calls = append(calls, &c)
	}
	if tables == 0 {
		return nil, errors.New("no strace -c summary table")
	}
	out := make([]straceCall, 0, len(calls))
	var sum, errs int64
	for _, c := range calls {
		out = append(out, *c)
		sum += c.Calls
		errs += c.Errors
	}
	if total == nil && len(out) > 0 {
		return nil, errors.New("strace summary without a total line")
	}
	if total != nil && (total.Calls != sum || total.Errors != errs) {
		return nil, fmt.Errorf("strace summary: total %d calls, %d errors; rows add up to %d, %d", total.Calls, total.Errors, sum, errs)
	}
	slices.SortStableFunc(out, func(a, b straceCall) int { return int(b.Calls - a.Calls) })
	return out, nil
}

// The system calls the table shows in their own columns.
var syscallGroups = []struct {
	name  string
	calls []string
}{
	{"read", []string{"read", "recvfrom", "recvmsg", "readv"}},
	{"write", []string{"write", "sendto", "sendmsg", "writev"}},
	{"poll", []string{"epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll", "select", "pselect6"}},
	{"futex", []string{"futex"}},
	{"nanosleep", []string{"nanosleep", "clock_nanosleep"}},
}

// perQuery divides the calls by the queries, grouped.
func perQuery(calls []straceCall, queries int64) *syscallsPerQuery {
	q := float64(queries)
	p := &syscallsPerQuery{}
	dst := map[string]*float64{"read": &p.Read, "write": &p.Write, "poll": &p.Poll, "futex": &p.Futex, "nanosleep": &p.Nanosleep}
	var topOther straceCall
	for _, c := range calls {
		v := float64(c.Calls) / q
		p.Total += v
		group := ""
		for _, g := range syscallGroups {
			if slices.Contains(g.calls, c.Syscall) {
				group = g.name
			}
		}
		if group == "" {
			p.Other += v
			if c.Calls > topOther.Calls {
				topOther = c
			}
			continue
		}
		*dst[group] += v
		if group == "read" {
			p.ReadErrors += float64(c.Errors) / q
		}
	}
	if topOther.Calls > 0 {
		p.TopOther = fmt.Sprintf("%s %.2f", topOther.Syscall, float64(topOther.Calls)/q)
	}
	return p
}
