package main

// The idle clients measurement (issue 10): what an authenticated client
// that sits idle costs a proxy in memory. For each N of -idle and each of
// pgbouncer and pgshard (those of -targets), the bench opens N client
// connections through the proxy with SCRAM, runs SELECT 1 on each, and keeps
// them open, idle. The proxy's VmRSS and thread count (/proc/PID/status) are
// read before the first client connects and twice after the last one ran
// its query: every second for -idle-settle (30 s); bytes per client =
// (VmRSS idle - VmRSS before) / clients connected, at 2 s and at the end.
// (A proxy may return memory a while after a wave of clients went idle:
// pgshard sweeps every 10 s.) Then every client runs SELECT 1 again (are
// they all still held?), all are closed, and after -idle-settle the RSS is
// read once more.
//
// The bench holds the N client sockets itself, and the proxy holds N plus
// its backend pool: both need N + a few file descriptors under their
// RLIMIT_NOFILE. The bench raises its soft limit to the hard one at start
// (the proxies inherit it; pgshard raises its own too) and caps N when it
// does not fit, saying so.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// idleOptions are the -idle* flags.
type idleOptions struct {
	counts      []int         // N values, ascending; empty: skip the measurement
	only        bool          // -idle-only: measure nothing else
	concurrency int           // connects in flight at once
	settle      time.Duration // wait after the last client is idle / closed
}

func (iopt idleOptions) enabled() bool { return len(iopt.counts) > 0 }

// maxCount is the largest N asked for (0 when disabled).
func (iopt idleOptions) maxCount() int {
	if len(iopt.counts) == 0 {
		return 0
	}
	return slices.Max(iopt.counts)
}

// registerIdleFlags adds the -idle* flags to fs.
func registerIdleFlags(fs *flag.FlagSet, iopt *idleOptions) {
	iopt.counts = []int{10000}
	iopt.concurrency = 32
	iopt.settle = 30 * time.Second
	fs.Func("idle", "idle clients: comma-separated client counts N held idle through pgbouncer and pgshard (default 10000; 0 skips)", func(s string) error {
		c, err := parseIdleCounts(s)
		iopt.counts = c
		return err
	})
	fs.BoolVar(&iopt.only, "idle-only", false, "measure only the idle clients (no pgbench -i, pgbench rounds, sharded or resharding mode; only pgbouncer and pgshard of -targets are started)")
	fs.IntVar(&iopt.concurrency, "idle-concurrency", iopt.concurrency, "idle clients: connects in flight at once")
	fs.DurationVar(&iopt.settle, "idle-settle", iopt.settle, "idle clients: how long they stay idle (RSS read every second; reported at 2s and at the end), and the wait after they are closed")
}

// parseIdleCounts parses "10000,50000" (sorted, duplicates dropped); "0"
// or "" is no measurement.
func parseIdleCounts(s string) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		n, err := strconv.Atoi(strings.ReplaceAll(f, "_", ""))
		if err != nil || n < 0 {
			return nil, fmt.Errorf("want client counts ≥ 0 separated by commas, got %q", f)
		}
		if n > 0 && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out, nil
}

// finishIdle checks the -idle* flags and applies -idle-only: it turns off
// everything but the idle measurement and keeps only the targets it
// measures.
func (o *options) finishIdle() error {
	iopt := o.idle
	if iopt.only && !iopt.enabled() {
		return errors.New("-idle-only needs -idle > 0")
	}
	if iopt.enabled() && (iopt.concurrency < 1 || iopt.settle < 0) {
		return errors.New("-idle-concurrency must be ≥1 and -idle-settle ≥0")
	}
	if !iopt.only {
		return nil
	}
	o.targets = slices.DeleteFunc(o.targets, func(t string) bool { return !isIdleTarget(t) })
	o.modes = []string{"simple"} // no pgbouncer session-pooling reference
	o.rounds, o.warmup = 0, 0
	o.sharded.enabled = false
	o.reshard.rows = 0
	o.relay.enabled = false
	if len(o.targets) == 0 {
		return errors.New("-idle-only: -targets has neither pgbouncer nor pgshard")
	}
	return nil
}

// isIdleTarget reports whether the idle measurement covers target t.
// pgpool-II is left out: it serves one client per child process, at most
// num_init_children; direct PostgreSQL is a process per client.
func isIdleTarget(t string) bool { return t == tPgbouncer || t == tPgshard }

// peerMaxClients is the most clients the proxies must accept at once
// (peerConfig.maxClients): the relay runs' or the idle clients.
func (o options) peerMaxClients() int { return max(o.relay.maxClients(), o.idle.maxCount()) }

// raiseNofile raises this process's RLIMIT_NOFILE soft limit to the hard
// limit; the proxies, started later, inherit it (calling Setrlimit tells
// os/exec not to restore the original soft limit in children).
func raiseNofile() (soft, hard uint64, err error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, 0, fmt.Errorf("getrlimit NOFILE: %w", err)
	}
	want := lim
	want.Cur = want.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		return lim.Cur, lim.Max, fmt.Errorf("setrlimit NOFILE to %d: %w", want.Max, err)
	}
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, 0, fmt.Errorf("getrlimit NOFILE: %w", err)
	}
	return lim.Cur, lim.Max, nil
}

// procMem is what the measurement reads from /proc/PID/status.
type procMem struct {
	rssKB, hwmKB int64 // VmRSS, VmHWM in kB
	threads      int
}

// parseStatus parses VmRSS, VmHWM (parseMemStatus) and Threads from
// /proc/PID/status.
func parseStatus(b []byte) (procMem, error) {
	rss, hwm, err := parseMemStatus(bufio.NewScanner(bytes.NewReader(b)))
	if err != nil {
		return procMem{}, err
	}
	m := procMem{rssKB: rss >> 10, hwmKB: hwm >> 10, threads: -1}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			if m.threads, err = strconv.Atoi(strings.TrimSpace(v)); err != nil {
				return procMem{}, fmt.Errorf("status Threads: %w", err)
			}
		}
	}
	if m.threads < 0 {
		return procMem{}, errors.New("status: no Threads")
	}
	return m, nil
}

func readProcMem(pid int) (procMem, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return procMem{}, err
	}
	return parseStatus(b)
}

// parseNofileLimit returns the soft and hard "Max open files" of
// /proc/PID/limits (-1: unlimited).
func parseNofileLimit(b []byte) (soft, hard int64, err error) {
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "Max open files")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 2 {
			return 0, 0, fmt.Errorf("parse limits: %q", line)
		}
		var v [2]int64
		for i := range v {
			if f[i] == "unlimited" {
				v[i] = -1
				continue
			}
			if v[i], err = strconv.ParseInt(f[i], 10, 64); err != nil {
				return 0, 0, fmt.Errorf("parse limits %q: %w", line, err)
			}
		}
		return v[0], v[1], nil
	}
	return 0, 0, errors.New("parse limits: no \"Max open files\" line")
}

// nofileOf returns the soft RLIMIT_NOFILE of process pid ("self": this
// one).
func nofileOf(pid string) (int64, error) {
	b, err := os.ReadFile("/proc/" + pid + "/limits")
	if err != nil {
		return 0, err
	}
	soft, _, err := parseNofileLimit(b)
	return soft, err
}

// openFDs counts the open file descriptors of pid ("self" for this one).
func openFDs(pid string) (int, error) {
	ents, err := os.ReadDir("/proc/" + pid + "/fd")
	return len(ents), err
}

// fdMargin is how many descriptors beyond those counted we leave free in
// each process (logs, the odd admin or metrics connection, a new backend).
const fdMargin = 64

// idleCap returns how many of n idle clients fit under the descriptor
// limits: this process needs one per client beyond the benchOpen it has,
// the proxy one per client beyond its proxyOpen and pool more for its
// backends. A limit < 0 is unlimited. reason is "" when n fits.
func idleCap(n int, benchLimit int64, benchOpen int, proxyLimit int64, proxyOpen, pool int) (int, string) {
	room := func(limit int64, used int) int64 {
		if limit < 0 {
			return int64(n)
		}
		return limit - int64(used) - fdMargin
	}
	bench := room(benchLimit, benchOpen)
	proxy := room(proxyLimit, proxyOpen+pool)
	c := min(int64(n), bench, proxy)
	if c >= int64(n) {
		return n, ""
	}
	c = max(c, 0)
	var why []string
	if proxy < int64(n) {
		why = append(why, fmt.Sprintf("the proxy's RLIMIT_NOFILE is %d and it needs N + %d open + %d pool + %d spare", proxyLimit, proxyOpen, pool, fdMargin))
	}
	if bench < int64(n) {
		why = append(why, fmt.Sprintf("the bench's RLIMIT_NOFILE is %d and it needs N + %d open + %d spare", benchLimit, benchOpen, fdMargin))
	}
	return int(c), fmt.Sprintf("%d clients do not fit: %s; raise the hard limit (README: Benchmark)", n, strings.Join(why, "; "))
}

// bytesPerClient is (after - before) kB over n clients, in bytes (nil for
// no clients). It may be negative when the proxy returned memory.
func bytesPerClient(beforeKB, afterKB int64, n int) *float64 {
	if n <= 0 {
		return nil
	}
	v := float64(afterKB-beforeKB) * 1024 / float64(n)
	return &v
}

// perSourceAddr is how many clients dial from one loopback source address:
// one (source, destination) pair has ip_local_port_range's ports only
// (32768–60999 by default, about 28k).
const perSourceAddr = 20000

// sourceAddr is the loopback address client i dials from: 127.0.0.1 for
// the first perSourceAddr, then 127.0.0.2, … (all of 127/8 is loopback).
func sourceAddr(i int) net.IP {
	k := i/perSourceAddr + 1
	return net.IPv4(127, byte(k>>16), byte(k>>8), byte(k))
}

type srcKey struct{}

// idleDialer dials from the source address in the context, with
// IP_BIND_ADDRESS_NO_PORT so that the port is picked at connect() for the
// (source, destination) pair, not at bind() from the ports free on every
// destination (which TIME_WAIT sockets of an earlier run would deplete).
func idleDialer(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{KeepAlive: -1}
	if ip, ok := ctx.Value(srcKey{}).(net.IP); ok {
		d.LocalAddr = &net.TCPAddr{IP: ip}
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	return d.DialContext(ctx, network, addr)
}

// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT (linux/in.h).
const ipBindAddressNoPort = 24

// idleConn is one idle client: only its socket is kept (pgconn's buffers
// are dropped after the handshake and the first query), so the bench's own
// footprint stays small.
type idleConn struct{ net.Conn }

// dialIdle logs in through cfg from source address src, runs SELECT 1 and
// returns the bare connection.
func dialIdle(ctx context.Context, cfg *pgconn.Config, src net.IP) (idleConn, error) {
	c, err := pgconn.ConnectConfig(context.WithValue(ctx, srcKey{}, src), cfg)
	if err != nil {
		return idleConn{}, err
	}
	if _, err := c.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
		c.Close(context.Background())
		return idleConn{}, fmt.Errorf("SELECT 1: %w", err)
	}
	// pgconn may have started its background reader (a write that took
	// over 15 ms): stop it and drain its buffer first, or a read of it
	// still pending would steal the next answer on the socket.
	if err := c.SyncConn(ctx); err != nil {
		c.Close(context.Background())
		return idleConn{}, fmt.Errorf("sync: %w", err)
	}
	hc, err := c.Hijack()
	if err != nil {
		c.Close(context.Background())
		return idleConn{}, fmt.Errorf("hijack: %w", err)
	}
	if err := hc.Conn.SetDeadline(time.Time{}); err != nil {
		hc.Conn.Close()
		return idleConn{}, err
	}
	return idleConn{hc.Conn}, nil
}

// queryMsg is the simple-protocol message Query "SELECT 1".
var queryMsg = func() []byte {
	b, _ := (&pgproto3.Query{String: "SELECT 1"}).Encode(nil)
	return b
}()

// selectOne runs SELECT 1 on the idle connection and reads up to
// ReadyForQuery.
func (c idleConn) selectOne(timeout time.Duration) error {
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	defer c.SetDeadline(time.Time{})
	if _, err := c.Write(queryMsg); err != nil {
		return err
	}
	fe := pgproto3.NewFrontend(c, io.Discard)
	var rows int
	for {
		m, err := fe.Receive()
		if err != nil {
			return err
		}
		switch m := m.(type) {
		case *pgproto3.DataRow:
			rows++
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("SELECT 1: %s (SQLSTATE %s)", m.Message, m.Code)
		case *pgproto3.ReadyForQuery:
			if rows != 1 {
				return fmt.Errorf("SELECT 1: %d rows", rows)
			}
			return nil
		}
	}
}

// terminate sends Terminate and closes the socket.
func (c idleConn) terminate() {
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	var b [5]byte
	b[0] = 'X'
	binary.BigEndian.PutUint32(b[1:], 4)
	_, _ = c.Write(b[:])
	c.Close()
}

// errorSet counts errors and keeps the first few distinct messages.
type errorSet struct {
	mu    sync.Mutex
	n     int
	first []string
}

func (e *errorSet) add(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n++
	msg := err.Error()
	if len(e.first) < 3 && !slices.Contains(e.first, msg) {
		e.first = append(e.first, msg)
	}
}

func (e *errorSet) String() string { return strings.Join(e.first, " | ") }

// parallel runs f(i) for i in [0, n) on k goroutines and stops handing out
// work when ctx is done.
func parallel(ctx context.Context, n, k int, f func(i int)) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(k, n) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				f(i)
			}
		}()
	}
	wg.Wait()
}

// goStats is what pgshard's /metrics says of its Go runtime.
type goStats struct {
	Goroutines int64 `json:"goroutines"`
	HeapInuse  int64 `json:"heap_inuse_bytes"`
	StackInuse int64 `json:"stack_inuse_bytes"`
}

// parseGoStats reads go_goroutines, go_memstats_heap_inuse_bytes and
// go_memstats_stack_inuse_bytes from a Prometheus text exposition.
func parseGoStats(b []byte) (goStats, error) {
	var g goStats
	dst := map[string]*int64{
		"go_goroutines":                 &g.Goroutines,
		"go_memstats_heap_inuse_bytes":  &g.HeapInuse,
		"go_memstats_stack_inuse_bytes": &g.StackInuse,
	}
	seen := 0
	for _, line := range strings.Split(string(b), "\n") {
		name, v, ok := strings.Cut(line, " ")
		p := dst[name]
		if !ok || p == nil {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			return g, fmt.Errorf("metrics %s: %w", name, err)
		}
		*p = int64(f)
		seen++
	}
	if seen != len(dst) {
		return g, errors.New("metrics: go_goroutines, go_memstats_heap_inuse_bytes or go_memstats_stack_inuse_bytes missing")
	}
	return g, nil
}

// readGoStats scrapes pgshard's /metrics on 127.0.0.1:port.
func readGoStats(ctx context.Context, port int) (*goStats, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://127.0.0.1:%d/metrics", port), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	g, err := parseGoStats(b)
	return &g, err
}

// idleRow is one (target, N) measurement.
type idleRow struct {
	Target    string `json:"target"`
	Requested int    `json:"requested_clients"`
	// Clients is how many were attempted (Requested, or fewer when the
	// descriptor limits cap it: see Capped); Connected of them logged in
	// and ran SELECT 1.
	Clients        int     `json:"clients"`
	Connected      int     `json:"connected"`
	ConnectErrors  int     `json:"connect_errors"`
	ConnectError   string  `json:"first_connect_errors,omitempty"`
	ConnectSeconds float64 `json:"connect_seconds"`
	Capped         string  `json:"capped,omitempty"`
	ProxyFDLimit   int64   `json:"proxy_fd_limit"`
	FDsBefore      int     `json:"proxy_fds_before"`
	FDsIdle        int     `json:"proxy_fds_idle"`
	RSSBeforeKB    int64   `json:"rss_before_kb"`
	// RSSIdleEarlyKB is read idleEarly after the last client ran its
	// query, RSSIdleKB at the settle time; RSSIdleSeries every second.
	RSSIdleEarlyKB int64    `json:"rss_idle_early_kb"`
	RSSIdleKB      int64    `json:"rss_idle_kb"`
	RSSIdleSeries  []int64  `json:"rss_idle_series_kb"`
	BytesEarly     *float64 `json:"rss_bytes_per_idle_client_early,omitempty"`
	HWMKB          int64    `json:"vmhwm_idle_kb"`
	RSSClosedKB    int64    `json:"rss_after_close_kb"`
	ThreadsBefore  int      `json:"threads_before"`
	ThreadsIdle    int      `json:"threads_idle"`
	ThreadsClosed  int      `json:"threads_after_close"`
	BytesPerClient *float64 `json:"rss_bytes_per_idle_client,omitempty"`
	// RecheckErrors counts idle clients whose second SELECT 1 (after the
	// RSS readings) failed: clients the proxy did not hold.
	RecheckErrors int    `json:"recheck_errors"`
	RecheckError  string `json:"first_recheck_errors,omitempty"`
	// GoBefore and GoIdle are pgshard's Go runtime figures (/metrics),
	// scraped right after the RSS readings before and idle.
	GoBefore *goStats `json:"go_before,omitempty"`
	GoIdle   *goStats `json:"go_idle,omitempty"`
	// AcceptsAfter is whether the proxy took a new login after the idle
	// clients were closed.
	AcceptsAfter bool   `json:"accepts_after_close"`
	Note         string `json:"note,omitempty"`
	Error        string `json:"error,omitempty"`
}

// idleReport is the idle clients measurement.
type idleReport struct {
	BenchFDSoft uint64    `json:"bench_fd_limit_soft"`
	BenchFDHard uint64    `json:"bench_fd_limit_hard"`
	FDRaiseErr  string    `json:"bench_fd_limit_error,omitempty"`
	Concurrency int       `json:"connect_concurrency"`
	Settle      string    `json:"settle"`
	Rows        []idleRow `json:"rows"`
}

// idleTargetBytes is issue 10's target for pgshard: ≤ 4 KiB of RSS per idle
// client at idleTargetN clients.
const (
	idleTargetBytes = 4096
	idleTargetN     = 10000
)

// runIdle measures every N of iopt against each idle target of targets, in
// ascending N, the targets in turn.
func runIdle(ctx context.Context, iopt idleOptions, targets []*target, poolSize int, fdSoft, fdHard uint64, fdErr error, logf func(string, ...any)) *idleReport {
	rep := &idleReport{BenchFDSoft: fdSoft, BenchFDHard: fdHard, Concurrency: iopt.concurrency, Settle: iopt.settle.String()}
	if fdErr != nil {
		rep.FDRaiseErr = fdErr.Error()
	}
	prev := map[string][]int{}
	for _, n := range iopt.counts {
		for _, t := range targets {
			if !isIdleTarget(t.name) || t.proc == nil {
				continue
			}
			if ctx.Err() != nil {
				return rep
			}
			row := measureIdle(ctx, iopt, t, n, poolSize, logf)
			if p := prev[t.name]; len(p) > 0 {
				row.Note = joinNote(row.Note, fmt.Sprintf("same %s process already held %v idle clients (memory it kept may absorb part of these)", t.name, p))
			}
			prev[t.name] = append(prev[t.name], row.Connected)
			rep.Rows = append(rep.Rows, row)
		}
	}
	return rep
}

func joinNote(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// measureIdle holds n idle clients through t once.
func measureIdle(ctx context.Context, iopt idleOptions, t *target, n, poolSize int, logf func(string, ...any)) idleRow {
	row := idleRow{Target: t.name, Requested: n}
	pid := t.proc.pid()
	fail := func(format string, args ...any) idleRow {
		row.Error = fmt.Sprintf(format, args...)
		logf("idle clients, %s N=%d: %s", t.name, n, row.Error)
		return row
	}
	var err error
	if row.ProxyFDLimit, err = nofileOf(strconv.Itoa(pid)); err != nil {
		return fail("fd limit of %s: %v", t.name, err)
	}
	if row.FDsBefore, err = openFDs(strconv.Itoa(pid)); err != nil {
		return fail("open fds of %s: %v", t.name, err)
	}
	benchOpen, err := openFDs("self")
	if err != nil {
		return fail("open fds of the bench: %v", err)
	}
	benchLimit, err := nofileOf("self")
	if err != nil {
		return fail("fd limit of the bench: %v", err)
	}
	row.Clients, row.Capped = idleCap(n, benchLimit, benchOpen, row.ProxyFDLimit, row.FDsBefore, poolSize)
	if row.Capped != "" {
		logf("idle clients, %s: %s; measuring %d", t.name, row.Capped, row.Clients)
	}
	if row.Clients == 0 {
		return row
	}
	cfg, err := pgconn.ParseConfig(appDSN(t.port))
	if err != nil {
		return fail("%v", err)
	}
	cfg.ConnectTimeout = 30 * time.Second
	cfg.DialFunc = idleDialer
	cfg.RuntimeParams["application_name"] = "pgshard-bench-idle"

	before, err := readProcMem(pid)
	if err != nil {
		return fail("read %s's status: %v", t.name, err)
	}
	row.RSSBeforeKB, row.ThreadsBefore = before.rssKB, before.threads
	scrape := func() *goStats {
		if t.adminPort == 0 {
			return nil
		}
		g, err := readGoStats(ctx, t.adminPort)
		if err != nil {
			row.Note = joinNote(row.Note, "no Go runtime figures: "+err.Error())
			return nil
		}
		return g
	}
	row.GoBefore = scrape()

	logf("idle clients: connecting %d through %s (%d at a time)", row.Clients, t.name, iopt.concurrency)
	conns := make([]idleConn, row.Clients)
	var cerrs errorSet
	start := time.Now()
	parallel(ctx, row.Clients, iopt.concurrency, func(i int) {
		c, err := dialIdle(ctx, cfg, sourceAddr(i))
		if err != nil {
			cerrs.add(err)
			return
		}
		conns[i] = c
	})
	row.ConnectSeconds = time.Since(start).Seconds()
	held := slices.DeleteFunc(conns, func(c idleConn) bool { return c.Conn == nil })
	defer func() {
		for _, c := range held {
			c.terminate()
		}
	}()
	row.Connected = len(held)
	row.ConnectErrors, row.ConnectError = cerrs.n, cerrs.String()
	if ctx.Err() != nil {
		return fail("%v", ctx.Err())
	}

	series, early, idle, err := sampleRSS(ctx, pid, iopt.settle)
	if err != nil {
		return fail("read %s's status: %v", t.name, err)
	}
	row.FDsIdle, _ = openFDs(strconv.Itoa(pid))
	row.RSSIdleSeries = series
	row.RSSIdleEarlyKB, row.RSSIdleKB, row.HWMKB, row.ThreadsIdle = early.rssKB, idle.rssKB, idle.hwmKB, idle.threads
	row.BytesEarly = bytesPerClient(row.RSSBeforeKB, row.RSSIdleEarlyKB, row.Connected)
	row.BytesPerClient = bytesPerClient(row.RSSBeforeKB, row.RSSIdleKB, row.Connected)
	if row.GoBefore != nil {
		row.GoIdle = scrape()
	}
	if earlier, ok := stillMoving(series, row.RSSBeforeKB); ok {
		row.Note = joinNote(row.Note, fmt.Sprintf("RSS still moving at the end: %d kB 5 s before it, %d kB at %s (a longer -idle-settle may tell)",
			earlier, row.RSSIdleKB, iopt.settle))
	}
	logf("idle clients: %s holds %d idle clients (%d errors) after %.1fs: RSS %d → %d kB at %s, → %d kB at %s: %s B/client, %d threads",
		t.name, row.Connected, row.ConnectErrors, row.ConnectSeconds, row.RSSBeforeKB, row.RSSIdleEarlyKB, min(idleEarly, iopt.settle),
		row.RSSIdleKB, iopt.settle, fmtF(row.BytesPerClient, "%.0f"), row.ThreadsIdle)

	// Are they all still held?
	var rerrs errorSet
	parallel(ctx, len(held), iopt.concurrency, func(i int) {
		if err := held[i].selectOne(30 * time.Second); err != nil {
			rerrs.add(err)
		}
	})
	row.RecheckErrors, row.RecheckError = rerrs.n, rerrs.String()

	for _, c := range held {
		c.terminate()
	}
	held = nil
	sleep(ctx, iopt.settle)
	if closed, err := readProcMem(pid); err == nil {
		row.RSSClosedKB, row.ThreadsClosed = closed.rssKB, closed.threads
	}
	row.AcceptsAfter = waitAccepting(ctx, t.name, appDSN(t.port), t.proc, 10*time.Second) == nil
	if t.proc.exited() {
		row.Error = fmt.Sprintf("%s exited: %v", t.name, t.proc.err)
	}
	return row
}

// idleEarly is when the early idle reading is taken.
const idleEarly = 2 * time.Second

// sampleRSS reads pid's status every second for d (and at d) and returns
// the VmRSS series, the reading at idleEarly (or d if shorter) and the last.
func sampleRSS(ctx context.Context, pid int, d time.Duration) (series []int64, early, last procMem, err error) {
	start := time.Now()
	haveEarly := false
	for {
		el := time.Since(start)
		next := min(el.Truncate(time.Second)+time.Second, d)
		sleep(ctx, next-el)
		if ctx.Err() != nil {
			return series, early, last, ctx.Err()
		}
		if last, err = readProcMem(pid); err != nil {
			return series, early, last, err
		}
		series = append(series, last.rssKB)
		if !haveEarly && (time.Since(start) >= idleEarly || next >= d) {
			early, haveEarly = last, true
		}
		if next >= d {
			return series, early, last, nil
		}
	}
}

// stillMoving reports whether the last reading of a once-a-second RSS
// series differs from the one 5 s before by more than 5% of the growth
// over before; earlier is that reading.
func stillMoving(series []int64, beforeKB int64) (earlier int64, moving bool) {
	if len(series) < 2 {
		return 0, false
	}
	last := series[len(series)-1]
	earlier = series[max(0, len(series)-6)]
	d := last - beforeKB
	return earlier, d > 0 && abs64(last-earlier)*20 > d
}

func abs64(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// targetVerdict says how a row compares with issue 10's targets ("" when
// none applies).
func (r idleRow) targetVerdict() string {
	if r.Target != tPgshard {
		return ""
	}
	var v []string
	if r.Clients == idleTargetN && r.BytesPerClient != nil {
		ok := *r.BytesPerClient <= idleTargetBytes && r.ConnectErrors == 0
		early := ""
		if r.BytesEarly != nil {
			early = fmt.Sprintf("; %.0f at %s", *r.BytesEarly, idleEarly)
		}
		v = append(v, fmt.Sprintf("issue 10 target ≤ %d B/client at %d: %s (%.0f%s)", idleTargetBytes, idleTargetN, metMissed(ok), *r.BytesPerClient, early))
	}
	if r.Requested >= 50000 {
		if r.Clients < 50000 {
			v = append(v, fmt.Sprintf("issue 10 target 50000 held: not measured (capped at %d by the fd limit)", r.Clients))
		} else {
			v = append(v, "issue 10 target 50000 held without error: "+metMissed(r.ConnectErrors == 0 && r.RecheckErrors == 0 && r.Error == ""))
		}
	}
	return strings.Join(v, "; ")
}

func metMissed(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// printText writes the idle clients table.
func (r *idleReport) printText(w io.Writer) {
	fmt.Fprintf(w, "\nidle clients: N clients log in (SCRAM), run SELECT 1 and stay idle for %s; %d connects at a time\n",
		r.Settle, r.Concurrency)
	rows := [][]string{{"target", "N", "RSS before", "RSS idle " + idleEarly.String(), "RSS idle " + r.Settle, "bytes/client " + idleEarly.String(),
		"bytes/client " + r.Settle, "threads", "goroutines", "proxy fds", "connect errors", "lost", "RSS after close", "connect time"}}
	var notes []string
	for _, x := range r.Rows {
		n := fmt.Sprint(x.Clients)
		if x.Capped != "" {
			n += fmt.Sprintf(" (of %d)", x.Requested)
		}
		if x.Connected != x.Clients {
			n = fmt.Sprintf("%d/%s", x.Connected, n)
		}
		rows = append(rows, []string{x.Target, n, kb(x.RSSBeforeKB), kb(x.RSSIdleEarlyKB), kb(x.RSSIdleKB), fmtF(x.BytesEarly, "%.0f"), fmtF(x.BytesPerClient, "%.0f"),
			fmt.Sprintf("%d → %d", x.ThreadsBefore, x.ThreadsIdle), x.goroutines(), fmt.Sprintf("%d → %d", x.FDsBefore, x.FDsIdle),
			fmt.Sprint(x.ConnectErrors), fmt.Sprint(x.RecheckErrors), kb(x.RSSClosedKB), fmt.Sprintf("%.1f s", x.ConnectSeconds)})
		for _, s := range []string{x.Capped, x.Error, x.Note, x.goNote(), x.targetVerdict()} {
			if s != "" {
				notes = append(notes, fmt.Sprintf("%s N=%d: %s", x.Target, x.Requested, s))
			}
		}
		if x.ConnectError != "" {
			notes = append(notes, fmt.Sprintf("%s N=%d: connect errors: %s", x.Target, x.Requested, x.ConnectError))
		}
		if x.RecheckError != "" {
			notes = append(notes, fmt.Sprintf("%s N=%d: SELECT 1 on held clients failed: %s", x.Target, x.Requested, x.RecheckError))
		}
		if x.Connected > 0 && x.Error == "" && !x.AcceptsAfter {
			notes = append(notes, fmt.Sprintf("%s N=%d: did not accept a new login after the idle clients closed", x.Target, x.Requested))
		}
	}
	writeTable(w, rows, 1)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "RSS: VmRSS of the proxy process (/proc/PID/status), before the first client and after all are idle (2 s after the last query and at the end);")
	fmt.Fprintln(w, "  bytes/client = (idle - before) / connected; the issue 10 verdict uses the end.")
	fmt.Fprintln(w, "  Kernel socket memory is not in RSS. lost: held clients whose second SELECT 1, after the RSS readings, failed.")
	fmt.Fprintf(w, "  bench RLIMIT_NOFILE: soft %d, hard %d", r.BenchFDSoft, r.BenchFDHard)
	if r.FDRaiseErr != "" {
		fmt.Fprintf(w, " (raising it failed: %s)", r.FDRaiseErr)
	}
	fmt.Fprintln(w, "; each of the bench and the proxy needs one fd per client.")
	for _, n := range notes {
		fmt.Fprintln(w, "note:", n)
	}
}

// goroutines is the table entry "before → idle" ("-" without figures).
func (r idleRow) goroutines() string {
	if r.GoBefore == nil || r.GoIdle == nil {
		return "-"
	}
	return fmt.Sprintf("%d → %d", r.GoBefore.Goroutines, r.GoIdle.Goroutines)
}

// goNote spells out the Go runtime figures per client.
func (r idleRow) goNote() string {
	if r.GoBefore == nil || r.GoIdle == nil || r.Connected == 0 {
		return ""
	}
	per := func(a, b int64) float64 { return float64(b-a) / float64(r.Connected) }
	return fmt.Sprintf("Go runtime per idle client: %.2f goroutines, heap in use %.0f B, stacks %.0f B (heap %.1f → %.1f MiB, stacks %.1f → %.1f MiB)",
		per(r.GoBefore.Goroutines, r.GoIdle.Goroutines), per(r.GoBefore.HeapInuse, r.GoIdle.HeapInuse), per(r.GoBefore.StackInuse, r.GoIdle.StackInuse),
		float64(r.GoBefore.HeapInuse)/(1<<20), float64(r.GoIdle.HeapInuse)/(1<<20), float64(r.GoBefore.StackInuse)/(1<<20), float64(r.GoIdle.StackInuse)/(1<<20))
}

// kb formats kB as MiB with one decimal ("-" for 0: not read).
func kb(v int64) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f MiB", float64(v)/1024)
}
