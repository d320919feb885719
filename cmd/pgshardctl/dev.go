package main

// pgshardctl dev: a local PostgreSQL topology (topology package) plus one
// pgshard daemon, for trying pgshard by hand and for other tools' tests.
//
// Files under --dir (default .dev):
//
//	pg/            the topology (data dirs, postgres.log files, topology.json);
//	               a symlink to a temp dir when the postgres OS user cannot reach --dir
//	pgshard.toml   the daemon's configuration
//	pgshard.log    the daemon's stdout/stderr
//	pgshard.pid    the daemon's PID
//	env            shell export lines: PGSHARD_URL, PGSHARD_ADMIN_URL, ...

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshard/pgshard/topology"
)

// devBasePort is the first PostgreSQL port of the dev topology.
const devBasePort = 15432

// readyTimeout bounds the wait for pgshard to serve.
const readyTimeout = 30 * time.Second

type devOptions struct {
	dir       string
	pgPort    int
	shards    int
	replicas  int
	spares    int
	nodes     int
	port      int
	adminPort int
	poolMode  string
	poolSize  int
}

func runDev(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: pgshardctl dev up|down|run [flags]  (-h for flags)")
		return 2
	}
	var err error
	switch args[0] {
	case "up":
		err = devUp(args[1:], false)
	case "run":
		err = devUp(args[1:], true)
	case "down":
		err = devDown(args[1:])
	default:
		fmt.Fprintf(os.Stderr, "pgshardctl dev: unknown subcommand %q (want up, down or run)\n", args[0])
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgshardctl dev %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

// envInt returns the integer in environment variable name, or def.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return v
	}
	return def
}

func parseDevFlags(name string, args []string, withTopology bool) (*devOptions, error) {
	o := &devOptions{}
	fs := flag.NewFlagSet("pgshardctl dev "+name, flag.ContinueOnError)
	fs.StringVar(&o.dir, "dir", ".dev", "directory for data, logs, config, PID files and env")
	if withTopology {
		fs.IntVar(&o.shards, "shards", envInt("SHARDS", 1), "shards in the map (env SHARDS)")
		fs.IntVar(&o.replicas, "replicas", envInt("REPLICAS", 1), "streaming replicas per shard (env REPLICAS)")
		fs.IntVar(&o.spares, "spare", envInt("SPARE", 0), "spare shards started but not in the map (env SPARE)")
		fs.IntVar(&o.nodes, "nodes", envInt("NODES", 1), "pgshard nodes (env NODES; only 1 is supported yet)")
		fs.IntVar(&o.port, "port", 6432, "pgshard client port on 127.0.0.1")
		fs.IntVar(&o.adminPort, "admin-port", 6480, "pgshard admin HTTP port on 127.0.0.1")
		fs.IntVar(&o.pgPort, "pg-port", devBasePort, "first PostgreSQL port; servers use consecutive ports")
		fs.StringVar(&o.poolMode, "pool-mode", "transaction", "pool mode: transaction or session")
		fs.IntVar(&o.poolSize, "pool-size", 20, "backend connections per pool")
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	abs, err := filepath.Abs(o.dir)
	if err != nil {
		return nil, err
	}
	o.dir = abs
	if withTopology {
		switch {
		case o.nodes > 1:
			return nil, fmt.Errorf("NODES=%d: more than one pgshard node is not yet supported", o.nodes)
		case o.nodes < 1:
			return nil, fmt.Errorf("NODES=%d: need at least 1", o.nodes)
		case o.shards < 1:
			return nil, fmt.Errorf("SHARDS=%d: need at least 1", o.shards)
		case o.replicas < 0 || o.spares < 0:
			return nil, errors.New("REPLICAS and SPARE must not be negative")
		case o.pgPort < 1024 || o.pgPort > 65000:
			return nil, fmt.Errorf("--pg-port %d: out of range", o.pgPort)
		case o.poolMode != "transaction" && o.poolMode != "session":
			return nil, fmt.Errorf("--pool-mode %q: want transaction or session", o.poolMode)
		}
	}
	return o, nil
}

func (o *devOptions) pgDir() string   { return filepath.Join(o.dir, "pg") }
func (o *devOptions) pidFile() string { return filepath.Join(o.dir, "pgshard.pid") }
func (o *devOptions) logFile() string { return filepath.Join(o.dir, "pgshard.log") }
func (o *devOptions) cfgFile() string { return filepath.Join(o.dir, "pgshard.toml") }
func (o *devOptions) envFile() string { return filepath.Join(o.dir, "env") }
func (o *devOptions) proxyURL() string {
	return fmt.Sprintf("postgres://app:app@127.0.0.1:%d/app?sslmode=disable", o.port)
}
func (o *devOptions) adminURL() string { return fmt.Sprintf("http://127.0.0.1:%d", o.adminPort) }

// devUp starts the topology and pgshard. In the background (up) it detaches
// and returns; in the foreground (run) it relays pgshard's output and stops
// everything on SIGINT/SIGTERM or when pgshard exits.
func devUp(args []string, foreground bool) (err error) {
	name := "up"
	if foreground {
		name = "run"
	}
	o, err := parseDevFlags(name, args, true)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if err := os.MkdirAll(o.dir, 0o755); err != nil {
		return err
	}
	if running, err := topology.Running(o.pgDir()); err != nil {
		return fmt.Errorf("check %s: %w", o.pgDir(), err)
	} else if running {
		return fmt.Errorf("a dev topology is already running in %s; stop it first with `pgshardctl dev down --dir %s` (make dev-down)", o.dir, o.dir)
	}
	if pid := readPID(o.pidFile()); pid != 0 && processAlive(pid) {
		return fmt.Errorf("pgshard (pid %d) from %s is still running; stop it first with `pgshardctl dev down --dir %s` (make dev-down)", pid, o.pidFile(), o.dir)
	}
	bin, err := pgshardBinary()
	if err != nil {
		return err
	}
	for _, p := range []int{o.port, o.adminPort} {
		if !portFree(p) {
			return fmt.Errorf("port 127.0.0.1:%d is in use (another pgshard or pgbouncer?); choose another with --port/--admin-port", p)
		}
	}
	for _, f := range []string{o.envFile(), o.pidFile()} {
		_ = os.Remove(f)
	}
	if err := removePGDir(o.pgDir()); err != nil {
		return err
	}

	logf := func(format string, args ...any) { fmt.Fprintf(os.Stderr, "  "+format+"\n", args...) }
	fmt.Fprintf(os.Stderr, "starting %d shard(s) with %d replica(s) each and %d spare(s) on ports %d..\n",
		o.shards, o.replicas, o.spares, o.pgPort)
	cfg := topology.Config{Dir: o.pgDir(), Shards: o.shards, Replicas: o.replicas, Spares: o.spares, BasePort: o.pgPort, Logf: logf, KeepOnExit: !foreground}
	topo, err := topology.Start(ctx, cfg)
	if errors.Is(err, topology.ErrDirNotAccessible) {
		// Running as root in a directory the postgres user cannot reach
		// (e.g. a clone under /root): keep the data in a temp dir and
		// point pg/ at it.
		tmp, terr := os.MkdirTemp("", "pgshard-dev-")
		if terr != nil {
			return terr
		}
		fmt.Fprintf(os.Stderr, "  %v\n  keeping PostgreSQL data in %s instead (symlink %s)\n", err, tmp, o.pgDir())
		_ = os.Remove(o.pgDir()) // an empty leftover
		if serr := os.Symlink(tmp, o.pgDir()); serr != nil {
			return serr
		}
		cfg.Dir = tmp
		topo, err = topology.Start(ctx, cfg)
	}
	if err != nil {
		return fmt.Errorf("start topology: %w", err)
	}
	defer func() {
		if err != nil {
			_ = topo.Close()
		}
	}()

	token, err := randomHex(16)
	if err != nil {
		return err
	}
	if err := os.WriteFile(o.cfgFile(), []byte(pgshardConfig(o, topo, token)), 0o600); err != nil {
		return err
	}

	d, err := startPgshard(o, bin, foreground)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = d.stop()
			_ = os.Remove(o.pidFile())
		}
	}()
	fmt.Fprintf(os.Stderr, "started pgshard (pid %d), waiting until it serves on 127.0.0.1:%d ...\n", d.pid, o.port)
	if err := waitPgshard(ctx, o, d); err != nil {
		return err
	}
	if err := os.WriteFile(o.envFile(), []byte(devEnv(o, topo, token)), 0o644); err != nil {
		return err
	}
	printHowTo(o, foreground)

	if !foreground {
		if err := topo.Detach(); err != nil {
			return err
		}
		_ = d.cmd.Process.Release()
		return nil
	}

	// Foreground: wait for Ctrl-C or for pgshard to exit.
	var exitErr error
	select {
	case <-ctx.Done():
		fmt.Fprintln(os.Stderr, "\nstopping pgshard and PostgreSQL ...")
	case <-d.done:
		exitErr = fmt.Errorf("pgshard exited unexpectedly (%v); log: %s", d.err, o.logFile())
		fmt.Fprintf(os.Stderr, "%v; stopping PostgreSQL ...\n", exitErr)
	}
	stopErr := d.stop()
	_ = os.Remove(o.pidFile())
	_ = os.Remove(o.envFile())
	closeErr := topo.Close()
	if err := errors.Join(exitErr, stopErr, closeErr); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "stopped")
	return nil
}

// devDown stops pgshard and the topology recorded in --dir.
func devDown(args []string) error {
	o, err := parseDevFlags("down", args, false)
	if err != nil {
		return err
	}
	var errs []error
	if pid := readPID(o.pidFile()); pid != 0 {
		if processAlive(pid) && isPgshard(pid) {
			fmt.Fprintf(os.Stderr, "stopping pgshard (pid %d)\n", pid)
			errs = append(errs, stopProcess(pid, 15*time.Second))
		}
	}
	if running, _ := topology.Running(o.pgDir()); running {
		fmt.Fprintf(os.Stderr, "stopping PostgreSQL servers in %s\n", o.pgDir())
	}
	errs = append(errs, topology.StopDir(o.pgDir()))
	if err := errors.Join(errs...); err != nil {
		return err
	}
	_ = os.Remove(o.pidFile())
	_ = os.Remove(o.envFile())
	fmt.Fprintln(os.Stderr, "dev topology stopped")
	return nil
}

// removePGDir removes a previous run's PostgreSQL data (following a
// symlink to a temp dir).
func removePGDir(dir string) error {
	if target, err := os.Readlink(dir); err == nil {
		if err := os.RemoveAll(target); err != nil {
			return err
		}
		return os.Remove(dir)
	}
	return os.RemoveAll(dir)
}

// pgshardBinary finds the daemon: next to this executable, else on $PATH.
func pgshardBinary() (string, error) {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "pgshard")
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	p, err := exec.LookPath("pgshard")
	if err != nil {
		return "", errors.New("pgshard binary not found next to pgshardctl or on $PATH; run `make build`")
	}
	return p, nil
}

// daemon is a started pgshard process.
type daemon struct {
	pid  int
	cmd  *exec.Cmd
	done chan struct{} // closed when it exited
	err  error         // exit status, valid after done
	log  *os.File
}

func startPgshard(o *devOptions, bin string, foreground bool) (*daemon, error) {
	lf, err := os.OpenFile(o.logFile(), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-config", o.cfgFile())
	cmd.Dir = o.dir
	// PGSHARD_* variables (e.g. from a sourced old .dev/env) would override the file.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PGSHARD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if foreground {
		cmd.Stdout = io.MultiWriter(lf, os.Stdout)
		cmd.Stderr = io.MultiWriter(lf, os.Stderr)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // we deliver the signals
	} else {
		cmd.Stdout = lf
		cmd.Stderr = lf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	d := &daemon{pid: cmd.Process.Pid, cmd: cmd, done: make(chan struct{}), log: lf}
	go func() {
		d.err = cmd.Wait()
		lf.Close()
		close(d.done)
	}()
	if err := os.WriteFile(o.pidFile(), []byte(strconv.Itoa(d.pid)+"\n"), 0o644); err != nil {
		_ = d.stop()
		return nil, err
	}
	return d, nil
}

// stop sends SIGTERM, waits, then kills the process group.
func (d *daemon) stop() error {
	select {
	case <-d.done:
		return nil
	default:
	}
	_ = syscall.Kill(d.pid, syscall.SIGTERM)
	select {
	case <-d.done:
		return nil
	case <-time.After(15 * time.Second):
	}
	_ = syscall.Kill(-d.pid, syscall.SIGKILL)
	_ = syscall.Kill(d.pid, syscall.SIGKILL)
	<-d.done
	return fmt.Errorf("pgshard (pid %d) did not stop within 15s after SIGTERM; killed", d.pid)
}

// waitPgshard waits until /healthz answers 200 and SELECT 1 works through
// the proxy, or fails with the tail of pgshard's log.
func waitPgshard(ctx context.Context, o *devOptions, d *daemon) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		last = probePgshard(ctx, client, o)
		if last == nil {
			return nil
		}
		select {
		case <-d.done:
			return fmt.Errorf("pgshard exited (%v) before serving; last lines of %s:\n%s", d.err, o.logFile(), logTail(o.logFile(), 30))
		case <-ctx.Done():
			return fmt.Errorf("pgshard not ready within %s (%v): %v; last lines of %s:\n%s",
				readyTimeout, ctx.Err(), last, o.logFile(), logTail(o.logFile(), 30))
		case <-tick.C:
		}
	}
}

func probePgshard(ctx context.Context, client *http.Client, o *devOptions) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.adminURL()+"/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("GET /healthz: %w", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /healthz: %s", resp.Status)
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := pgconn.Connect(cctx, o.proxyURL())
	if err != nil {
		return fmt.Errorf("connect %s: %w", o.proxyURL(), err)
	}
	defer c.Close(context.Background())
	res, err := c.Exec(cctx, "SELECT 1").ReadAll()
	if err != nil {
		return fmt.Errorf("SELECT 1 through pgshard: %w", err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != "1" {
		return fmt.Errorf("SELECT 1 through pgshard: unexpected result %v", res)
	}
	return nil
}

// pgshardConfig renders the daemon's TOML configuration (keys of package config).
func pgshardConfig(o *devOptions, topo *topology.Topology, token string) string {
	var b strings.Builder
	b.WriteString("# written by pgshardctl dev; regenerated on every dev up/run\n")
	fmt.Fprintf(&b, "listen = %s\n", tomlString(fmt.Sprintf("127.0.0.1:%d", o.port)))
	fmt.Fprintf(&b, "admin_listen = %s\n", tomlString(fmt.Sprintf("127.0.0.1:%d", o.adminPort)))
	fmt.Fprintf(&b, "admin_token = %s\n", tomlString(token))
	fmt.Fprintf(&b, "\n[pool]\nmode = %s\nsize = %d\n", tomlString(o.poolMode), o.poolSize)
	b.WriteString("\n[[users]]\nname = \"app\"\npassword = \"app\"\nauth = \"scram-sha-256\"\n")
	for _, sh := range topo.Shards {
		fmt.Fprintf(&b, "\n[[shards]]\nname = %s\nprimary = %s\nreplicas = [", tomlString(sh.Name), tomlString(sh.Primary.DSN()))
		for i, r := range sh.Replicas {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(tomlString(r.DSN()))
		}
		b.WriteString("]\n")
	}
	if len(topo.Spares) > 0 {
		b.WriteString("\n# spare shards (running, not in the map):\n")
		for _, sh := range topo.Spares {
			fmt.Fprintf(&b, "#   %s primary %q", sh.Name, sh.Primary.DSN())
			for _, r := range sh.Replicas {
				fmt.Fprintf(&b, ", replica %q", r.DSN())
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

// tomlString quotes s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, "\\u%04X", r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// devEnv renders .dev/env: shell export lines per DESIGN.md.
func devEnv(o *devOptions, topo *topology.Topology, token string) string {
	var b strings.Builder
	b.WriteString("# written by pgshardctl dev; source it: . .dev/env\n")
	line := func(k, v string) { fmt.Fprintf(&b, "export %s=%s\n", k, v) }
	line("PGSHARD_URL", o.proxyURL())
	line("PGSHARD_ADMIN_URL", o.adminURL())
	line("PGSHARD_ADMIN_TOKEN", token)
	line("PGSHARD0_URL", o.proxyURL())
	line("PGSHARD0_ADMIN_URL", o.adminURL())
	servers := func(prefix string, shards []*topology.Shard) {
		for i, sh := range shards {
			line(fmt.Sprintf("%s%d_PRIMARY_URL", prefix, i), sh.Primary.URL("app", "app", "app"))
			for j, r := range sh.Replicas {
				line(fmt.Sprintf("%s%d_REPLICA%d_URL", prefix, i, j), r.URL("app", "app", "app"))
			}
		}
	}
	servers("SHARD", topo.Shards)
	servers("SPARE", topo.Spares)
	return b.String()
}

func printHowTo(o *devOptions, foreground bool) {
	rel := o.dir
	if wd, err := os.Getwd(); err == nil {
		if r, err := filepath.Rel(wd, o.dir); err == nil && !strings.HasPrefix(r, "..") {
			rel = r
		}
	}
	fmt.Fprintf(os.Stderr, `
pgshard is ready on 127.0.0.1:%d (admin %s).

  . %s/env                # PGSHARD_URL, PGSHARD_ADMIN_URL, SHARD0_PRIMARY_URL, ...
  psql "$PGSHARD_URL"

  logs: %s/pgshard.log, %s/pg/*/postgres.log
`, o.port, o.adminURL(), rel, rel, rel)
	if foreground {
		fmt.Fprintln(os.Stderr, "\nCtrl-C stops pgshard and PostgreSQL. pgshard's log follows:")
	} else {
		fmt.Fprintf(os.Stderr, "  stop: make dev-down (pgshardctl dev down --dir %s)\n\n", rel)
	}
}

func randomHex(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

func portFree(port int) bool {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	_ = ln.Close()
	return true
}

func readPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	return pid
}

// processAlive reports whether pid exists and is not a zombie.
func processAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return syscall.Kill(pid, 0) == nil
	}
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] != 'Z' && b[i+2] != 'X'
}

// isPgshard guards against signalling a recycled PID.
func isPgshard(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return true // cannot tell; the PID file is ours
	}
	argv0, _, _ := strings.Cut(string(b), "\x00")
	return filepath.Base(argv0) == "pgshard"
}

// stopProcess sends SIGTERM to pid, waits up to grace, then SIGKILLs its group.
func stopProcess(pid int, grace time.Duration) error {
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			_ = syscall.Kill(pid, syscall.SIGKILL)
			for end := time.Now().Add(10 * time.Second); processAlive(pid) && time.Now().Before(end); {
				time.Sleep(20 * time.Millisecond)
			}
			if processAlive(pid) {
				return fmt.Errorf("pgshard (pid %d) survived SIGKILL", pid)
			}
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
