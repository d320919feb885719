package main

// pgshardctl dev: a local PostgreSQL topology (topology package) plus
// --nodes pgshard daemons forming one Raft cluster (node 0 bootstraps, the
// others join it), for trying pgshard by hand and for other tools' tests.
//
// Node i listens on --port+i (clients), --admin-port+i (admin API) and
// --raft-port+i (Raft). Files under --dir (default .dev):
//
//	pg/              the topology (data dirs, postgres.log files, topology.json);
//	                 a symlink to a temp dir when the postgres OS user cannot reach --dir
//	pgshard<i>.toml  node i's configuration
//	pgshard<i>.log   node i's stdout/stderr
//	pgshard<i>.pid   node i's PID
//	pgshard<i>-data/ node i's Raft log and snapshots (removed by the next up)
//	pgshard.{toml,log,pid}  symlinks to node 0's files
//	env              shell export lines: PGSHARD_URL, PGSHARD_ADMIN_URL,
//	                 PGSHARD<i>_URL, PGSHARD<i>_ADMIN_URL, SHARD<i>_PRIMARY_URL, ...,
//	                 and for --spare N: SPARE<i>_PRIMARY_URL, SPARE<i>_REPLICA<j>_URL,
//	                 SPARE<i>_PRIMARY and SPARE<i>_REPLICA<j> (the libpq DSNs
//	                 `pgshardctl reshard --add NAME --primary/--replica` takes)

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
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

	"github.com/pgshard/pgshard/admin"
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
	raftPort  int
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
		fs.IntVar(&o.shards, "shards", envInt("SHARDS", 2), "shards in the map (env SHARDS)")
		fs.IntVar(&o.replicas, "replicas", envInt("REPLICAS", 1), "streaming replicas per shard (env REPLICAS)")
		fs.IntVar(&o.spares, "spare", envInt("SPARE", 0), "spare shards started but not in the map (env SPARE)")
		fs.IntVar(&o.nodes, "nodes", envInt("NODES", 1), "pgshard nodes in one Raft cluster (env NODES)")
		fs.IntVar(&o.port, "port", 6432, "client port of pgshard node 0 on 127.0.0.1 (node i: port+i)")
		fs.IntVar(&o.adminPort, "admin-port", 6480, "admin HTTP port of node 0 on 127.0.0.1 (node i: admin-port+i)")
		fs.IntVar(&o.raftPort, "raft-port", 6490, "Raft port of node 0 on 127.0.0.1 (node i: raft-port+i)")
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
		case o.nodes > 9:
			return nil, fmt.Errorf("NODES=%d: at most 9 nodes in a dev cluster", o.nodes)
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
func (o *devOptions) envFile() string { return filepath.Join(o.dir, "env") }

// Files of node i.
func (o *devOptions) pidFile(i int) string {
	return filepath.Join(o.dir, fmt.Sprintf("pgshard%d.pid", i))
}
func (o *devOptions) logFile(i int) string {
	return filepath.Join(o.dir, fmt.Sprintf("pgshard%d.log", i))
}
func (o *devOptions) cfgFile(i int) string {
	return filepath.Join(o.dir, fmt.Sprintf("pgshard%d.toml", i))
}
func (o *devOptions) dataDir(i int) string {
	return filepath.Join(o.dir, fmt.Sprintf("pgshard%d-data", i))
}

// Addresses of node i.
func (o *devOptions) proxyURL(i int) string {
	return fmt.Sprintf("postgres://app:app@127.0.0.1:%d/app?sslmode=disable", o.port+i)
}
func (o *devOptions) adminURL(i int) string { return fmt.Sprintf("http://127.0.0.1:%d", o.adminPort+i) }

// legacyFiles are node 0's files under their single-node names (symlinks).
var legacyFiles = map[string]string{"pgshard.pid": "pgshard0.pid", "pgshard.log": "pgshard0.log", "pgshard.toml": "pgshard0.toml"}

// nodePIDFiles lists the PID files of every node a previous up left in dir.
func nodePIDFiles(dir string) []string {
	files, _ := filepath.Glob(filepath.Join(dir, "pgshard[0-9]*.pid"))
	return files
}

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
	for _, f := range nodePIDFiles(o.dir) {
		if pid := readPID(f); pid != 0 && processAlive(pid) && isPgshard(pid) {
			return fmt.Errorf("pgshard (pid %d) from %s is still running; stop it first with `pgshardctl dev down --dir %s` (make dev-down)", pid, f, o.dir)
		}
	}
	bin, err := pgshardBinary()
	if err != nil {
		return err
	}
	for i := range o.nodes {
		for _, p := range []int{o.port + i, o.adminPort + i, o.raftPort + i} {
			if !topology.PortFree(p) {
				return fmt.Errorf("port 127.0.0.1:%d is in use (another pgshard or pgbouncer?); choose other ones with --port/--admin-port/--raft-port", p)
			}
		}
	}
	_ = os.Remove(o.envFile())
	for _, f := range nodePIDFiles(o.dir) {
		_ = os.Remove(f)
	}
	for legacy := range legacyFiles {
		_ = os.Remove(filepath.Join(o.dir, legacy))
	}
	for i := range o.nodes {
		if err := os.RemoveAll(o.dataDir(i)); err != nil {
			return err
		}
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
	var daemons []*daemon
	defer func() {
		if err != nil {
			for i, d := range daemons {
				_ = d.stop()
				_ = os.Remove(o.pidFile(i))
			}
		}
	}()
	for i := range o.nodes {
		if err := os.WriteFile(o.cfgFile(i), []byte(pgshardConfig(o, i, topo, token)), 0o600); err != nil {
			return err
		}
		d, err := startPgshard(o, i, bin, foreground)
		if err != nil {
			return err
		}
		daemons = append(daemons, d)
		fmt.Fprintf(os.Stderr, "started pgshard node %d (pid %d), waiting until it serves on 127.0.0.1:%d ...\n", i, d.pid, o.port+i)
		if err := waitPgshard(ctx, o, i, d); err != nil {
			return err
		}
	}
	if err := waitCluster(ctx, o, token, daemons); err != nil {
		return err
	}
	for legacy, target := range legacyFiles {
		_ = os.Symlink(target, filepath.Join(o.dir, legacy))
	}
	if err := os.WriteFile(o.envFile(), []byte(devEnv(o, topo, token)), 0o644); err != nil {
		return err
	}
	printHowTo(o, topo, foreground)

	if !foreground {
		if err := topo.Detach(); err != nil {
			return err
		}
		for _, d := range daemons {
			_ = d.cmd.Process.Release()
		}
		return nil
	}

	// Foreground: wait for Ctrl-C or for a pgshard node to exit.
	exited := make(chan int, len(daemons))
	for i, d := range daemons {
		go func() { <-d.done; exited <- i }()
	}
	// With several nodes, one node's exit is part of trying failover (kill
	// the leader, watch another take over); everything stops at Ctrl-C or
	// when no node is left.
	var exitErr error
	for alive := len(daemons); exitErr == nil; {
		select {
		case <-ctx.Done():
			fmt.Fprintln(os.Stderr, "\nstopping pgshard and PostgreSQL ...")
		case i := <-exited:
			alive--
			if alive > 0 {
				fmt.Fprintf(os.Stderr, "pgshard node %d exited (%v); %d node(s) still running; log: %s; restart it by hand with: %s -config %s\n",
					i, daemons[i].err, alive, o.logFile(i), bin, o.cfgFile(i))
				continue
			}
			exitErr = fmt.Errorf("pgshard node %d exited unexpectedly (%v); log: %s", i, daemons[i].err, o.logFile(i))
			fmt.Fprintf(os.Stderr, "%v; stopping PostgreSQL ...\n", exitErr)
		}
		break
	}
	var errs []error
	for i, d := range daemons {
		errs = append(errs, d.stop())
		_ = os.Remove(o.pidFile(i))
	}
	for legacy := range legacyFiles {
		_ = os.Remove(filepath.Join(o.dir, legacy))
	}
	_ = os.Remove(o.envFile())
	errs = append(errs, exitErr, topo.Close())
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "stopped")
	return nil
}

// devDown stops every pgshard node and the topology recorded in --dir.
func devDown(args []string) error {
	o, err := parseDevFlags("down", args, false)
	if err != nil {
		return err
	}
	var errs []error
	files := nodePIDFiles(o.dir)
	if pid := readPID(filepath.Join(o.dir, "pgshard.pid")); pid != 0 {
		if fi, err := os.Lstat(filepath.Join(o.dir, "pgshard.pid")); err == nil && fi.Mode()&os.ModeSymlink == 0 {
			files = append(files, filepath.Join(o.dir, "pgshard.pid")) // written by an older pgshardctl
		}
	}
	for _, f := range files {
		if pid := readPID(f); pid != 0 && processAlive(pid) && isPgshard(pid) {
			fmt.Fprintf(os.Stderr, "stopping pgshard (pid %d, %s)\n", pid, filepath.Base(f))
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
	for _, f := range files {
		_ = os.Remove(f)
	}
	for legacy := range legacyFiles {
		_ = os.Remove(filepath.Join(o.dir, legacy))
	}
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

// startPgshard starts node i; in the foreground node 0's output is also relayed.
func startPgshard(o *devOptions, i int, bin string, foreground bool) (*daemon, error) {
	lf, err := os.OpenFile(o.logFile(i), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-config", o.cfgFile(i))
	cmd.Dir = o.dir
	// PGSHARD_* variables (e.g. from a sourced old .dev/env) would override the file.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PGSHARD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	switch {
	case foreground && i == 0: // node 0's log is relayed
		cmd.Stdout = io.MultiWriter(lf, os.Stdout)
		cmd.Stderr = io.MultiWriter(lf, os.Stderr)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // we deliver the signals
	case foreground:
		cmd.Stdout, cmd.Stderr = lf, lf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	default:
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
	if err := os.WriteFile(o.pidFile(i), []byte(strconv.Itoa(d.pid)+"\n"), 0o644); err != nil {
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

// waitPgshard waits until node i's /healthz answers 200 and SELECT 1 works
// through its proxy, or fails with the tail of its log.
func waitPgshard(ctx context.Context, o *devOptions, i int, d *daemon) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		last = probePgshard(ctx, client, o, i)
		if last == nil {
			return nil
		}
		select {
		case <-d.done:
			return fmt.Errorf("pgshard node %d exited (%v) before serving; last lines of %s:\n%s", i, d.err, o.logFile(i), logTail(o.logFile(i), 30))
		case <-ctx.Done():
			return fmt.Errorf("pgshard node %d not ready within %s (%v): %v; last lines of %s:\n%s",
				i, readyTimeout, ctx.Err(), last, o.logFile(i), logTail(o.logFile(i), 30))
		case <-tick.C:
		}
	}
}

func probePgshard(ctx context.Context, client *http.Client, o *devOptions, i int) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, o.adminURL(i)+"/healthz", nil)
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
	c, err := pgconn.Connect(cctx, o.proxyURL(i))
	if err != nil {
		return fmt.Errorf("connect %s: %w", o.proxyURL(i), err)
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

// waitCluster waits until every node sees every node in the Raft
// configuration, a leader, and the same map with the shards seeded.
func waitCluster(ctx context.Context, o *devOptions, token string, daemons []*daemon) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	var last error
	for {
		last = clusterFormed(ctx, o, token)
		if last == nil {
			return nil
		}
		for i, d := range daemons {
			select {
			case <-d.done:
				return fmt.Errorf("pgshard node %d exited (%v); last lines of %s:\n%s", i, d.err, o.logFile(i), logTail(o.logFile(i), 30))
			default:
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the pgshard nodes did not form a cluster within %s: %v; see %s/pgshard<i>.log", readyTimeout, last, o.dir)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func clusterFormed(ctx context.Context, o *devOptions, token string) error {
	var version uint64
	for i := range o.nodes {
		st, err := admin.NewClient(o.adminURL(i), token).Status(ctx)
		switch {
		case err != nil:
			return fmt.Errorf("node %d: %w", i, err)
		case len(st.Servers) != o.nodes:
			return fmt.Errorf("node %d sees %d of %d nodes in the Raft configuration", i, len(st.Servers), o.nodes)
		case st.LeaderID == "":
			return fmt.Errorf("node %d knows no leader yet", i)
		case st.MapVersion < uint64(o.shards):
			return fmt.Errorf("node %d: shard map not seeded yet (version %d)", i, st.MapVersion)
		case i > 0 && st.MapVersion != version:
			return fmt.Errorf("node %d at map version %d, node 0 at %d", i, st.MapVersion, version)
		}
		version = st.MapVersion
	}
	return nil
}

// pgshardConfig renders node i's TOML configuration (keys of package config).
func pgshardConfig(o *devOptions, i int, topo *topology.Topology, token string) string {
	var b strings.Builder
	b.WriteString("# written by pgshardctl dev; regenerated on every dev up/run\n")
	fmt.Fprintf(&b, "listen = %s\n", tomlString(fmt.Sprintf("127.0.0.1:%d", o.port+i)))
	fmt.Fprintf(&b, "admin_listen = %s\n", tomlString(fmt.Sprintf("127.0.0.1:%d", o.adminPort+i)))
	fmt.Fprintf(&b, "admin_token = %s\n", tomlString(token))
	fmt.Fprintf(&b, "\n[cluster]\nnode_id = %s\nraft_listen = %s\ndata_dir = %s\n",
		tomlString(fmt.Sprintf("node%d", i)), tomlString(fmt.Sprintf("127.0.0.1:%d", o.raftPort+i)), tomlString(o.dataDir(i)))
	if i == 0 {
		b.WriteString("bootstrap = true\n")
	} else {
		fmt.Fprintf(&b, "join = [%s]\n", tomlString(o.adminURL(0)))
	}
	fmt.Fprintf(&b, "\n[pool]\nmode = %s\nsize = %d\n", tomlString(o.poolMode), o.poolSize)
	b.WriteString("\n[[users]]\nname = \"app\"\npassword = \"app\"\nauth = \"scram-sha-256\"\n")
	// The topology's superuser postgres logs in from 127.0.0.1 without a
	// password; the tables live in database app.
	b.WriteString("\n[resharding]\nuser = \"postgres\"\ndatabase = \"app\"\n")
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
	line("PGSHARD_URL", o.proxyURL(0))
	line("PGSHARD_ADMIN_URL", o.adminURL(0))
	line("PGSHARD_ADMIN_TOKEN", token)
	for i := range o.nodes {
		line(fmt.Sprintf("PGSHARD%d_URL", i), o.proxyURL(i))
		line(fmt.Sprintf("PGSHARD%d_ADMIN_URL", i), o.adminURL(i))
	}
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
	// A spare's DSNs as `pgshardctl reshard --add` takes them.
	for i, sh := range topo.Spares {
		line(fmt.Sprintf("SPARE%d_PRIMARY", i), shellQuote(sh.Primary.DSN()))
		for j, r := range sh.Replicas {
			line(fmt.Sprintf("SPARE%d_REPLICA%d", i, j), shellQuote(r.DSN()))
		}
	}
	return b.String()
}

func printHowTo(o *devOptions, topo *topology.Topology, foreground bool) {
	rel := o.dir
	if wd, err := os.Getwd(); err == nil {
		if r, err := filepath.Rel(wd, o.dir); err == nil && !strings.HasPrefix(r, "..") {
			rel = r
		}
	}
	nodes := fmt.Sprintf("pgshard is ready on 127.0.0.1:%d (admin %s)", o.port, o.adminURL(0))
	if o.nodes > 1 {
		nodes = fmt.Sprintf("%d pgshard nodes in one Raft cluster are ready on 127.0.0.1:%d..%d (admin %s .. %s)",
			o.nodes, o.port, o.port+o.nodes-1, o.adminURL(0), o.adminURL(o.nodes-1))
	}
	fmt.Fprintf(os.Stderr, `
%s.

  . %s/env                # PGSHARD_URL, PGSHARD_ADMIN_URL, PGSHARD_ADMIN_TOKEN, SHARD0_PRIMARY_URL, ...
  psql "$PGSHARD_URL"
  bin/pgshardctl cluster status   # also: shards list, map show, map locate 42, tables list

  logs: %s/pgshard<i>.log, %s/pg/*/postgres.log
`, nodes, rel, rel, rel)
	if len(topo.Spares) > 0 {
		sh := topo.Spares[0]
		add := "--add " + sh.Name + " --primary \"$SPARE0_PRIMARY\""
		for j := range sh.Replicas {
			add += fmt.Sprintf(" --replica \"$SPARE0_REPLICA%d\"", j)
		}
		fmt.Fprintf(os.Stderr, `  resharding: %d spare shard(s) run outside the map (SPARE<i>_PRIMARY, SPARE<i>_REPLICA<j> in env):
    bin/pgshardctl reshard plan %s
    bin/pgshardctl reshard start %s && bin/pgshardctl reshard status --watch

`, len(topo.Spares), add, add)
	}
	if foreground {
		fmt.Fprintln(os.Stderr, "\nCtrl-C stops pgshard and PostgreSQL. pgshard (node 0)'s log follows:")
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
