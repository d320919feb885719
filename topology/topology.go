package topology

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Sentinel errors.
var (
	// ErrNoBinaries means the PostgreSQL binaries (initdb, postgres,
	// pg_basebackup) were not found in the bin directory.
	ErrNoBinaries = errors.New("topology: PostgreSQL binaries not found")
	// ErrRunning means the directory already holds a running topology.
	ErrRunning = errors.New("topology: a topology is already running in this directory")
	// ErrNotRunning means the server is not running.
	ErrNotRunning = errors.New("topology: server not running")
	// ErrDirNotAccessible means the postgres OS user cannot reach the base
	// directory (a parent directory is not searchable by it).
	ErrDirNotAccessible = errors.New("topology: directory not accessible to the postgres OS user")
)

// DefaultBinDir is used when Config.BinDir and $PGSHARD_PGBIN are empty.
const DefaultBinDir = "/usr/lib/postgresql/15/bin"

// Config describes the topology to start.
type Config struct {
	// BinDir holds initdb, postgres and pg_basebackup.
	// "" means $PGSHARD_PGBIN, else DefaultBinDir.
	BinDir string
	// Dir is the base directory. "" means a new temporary directory that
	// Close removes. A given directory is kept by Close (logs, data).
	Dir string
	// Shards is the number of shards (named shard0, shard1, ...); Spares
	// the number of spare shards of the same shape (spare0, ...); Replicas
	// the number of streaming replicas per shard and spare.
	Shards, Replicas, Spares int
	// BasePort 0 picks random free ports in [20000,32000) and retries when
	// a port is taken meanwhile (for tests running in parallel). Otherwise
	// ports are BasePort, BasePort+1, ... in the order shard0 primary,
	// shard0 replicas, shard1 primary, ..., spare0 primary, ...
	BasePort int
	// Settings are extra postgresql.conf settings for every server; they
	// override the defaults. Per-server settings: Server.SetConf.
	Settings map[string]string
	// Logf receives progress messages; nil is silent.
	Logf func(format string, args ...any)
	// KeepOnExit lets the servers outlive this process (needed for
	// Detach). Otherwise each server gets SIGQUIT (immediate shutdown) when
	// the process that started it dies without calling Close, e.g. a test
	// binary killed by its timeout or by Ctrl-C.
	KeepOnExit bool
}

// Shard is a primary with its streaming replicas.
type Shard struct {
	Name     string // "shard0", ... or "spare0", ...
	Spare    bool
	Primary  *Server
	Replicas []*Server
}

// Servers returns the primary followed by the replicas.
func (sh *Shard) Servers() []*Server { return append([]*Server{sh.Primary}, sh.Replicas...) }

// Topology is a set of running shards.
type Topology struct {
	Dir    string
	Shards []*Shard
	Spares []*Shard

	bin     string
	run     *runAs
	logf    func(format string, args ...any)
	tempDir bool
	keep    bool

	mu       sync.Mutex
	detached bool
	closed   bool
}

// AllShards returns Shards followed by Spares.
func (t *Topology) AllShards() []*Shard {
	return append(append([]*Shard(nil), t.Shards...), t.Spares...)
}

// Servers returns every server: per shard (then spare) the primary and its replicas.
func (t *Topology) Servers() []*Server {
	var out []*Server
	for _, sh := range t.AllShards() {
		out = append(out, sh.Servers()...)
	}
	return out
}

// Server returns the server with the given name, or nil.
func (t *Topology) Server(name string) *Server {
	for _, s := range t.Servers() {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// LogTails returns the last n lines of every server's log, each headed by
// the server name (for test failure output).
func (t *Topology) LogTails(n int) string {
	var b strings.Builder
	for _, s := range t.Servers() {
		fmt.Fprintf(&b, "==> %s (%s) %s <==\n%s\n", s.Name, s.Addr(), s.LogFile, s.LogTail(n))
	}
	return b.String()
}

// Available reports whether the PostgreSQL binaries exist in binDir
// ("" = $PGSHARD_PGBIN or DefaultBinDir); the error wraps ErrNoBinaries.
func Available(binDir string) error {
	binDir = resolveBinDir(binDir)
	for _, p := range []string{"initdb", "postgres", "pg_basebackup"} {
		if _, err := exec.LookPath(filepath.Join(binDir, p)); err != nil {
			return fmt.Errorf("%w: %s: %v (install postgresql-15 or set PGSHARD_PGBIN)", ErrNoBinaries, filepath.Join(binDir, p), err)
		}
	}
	return nil
}

func resolveBinDir(binDir string) string {
	if binDir != "" {
		return binDir
	}
	if v := os.Getenv("PGSHARD_PGBIN"); v != "" {
		return v
	}
	return DefaultBinDir
}

// Start creates and starts the topology. It returns when every server
// accepts connections and every replica streams from its primary. On error
// everything started so far is stopped.
func Start(ctx context.Context, cfg Config) (*Topology, error) {
	if cfg.Shards < 0 || cfg.Replicas < 0 || cfg.Spares < 0 || cfg.Shards+cfg.Spares == 0 {
		return nil, fmt.Errorf("topology: invalid config: shards=%d replicas=%d spares=%d", cfg.Shards, cfg.Replicas, cfg.Spares)
	}
	if err := Available(cfg.BinDir); err != nil {
		return nil, err
	}
	run, err := lookupRunAs()
	if err != nil {
		return nil, err
	}
	t := &Topology{bin: resolveBinDir(cfg.BinDir), run: run, logf: cfg.Logf, keep: cfg.KeepOnExit}
	if t.logf == nil {
		t.logf = func(string, ...any) {}
	}
	if cfg.Dir == "" {
		dir, err := os.MkdirTemp("", "pgshard-topo-")
		if err != nil {
			return nil, fmt.Errorf("topology: temp dir: %w", err)
		}
		t.Dir, t.tempDir = dir, true
	} else {
		dir, err := filepath.Abs(cfg.Dir)
		if err != nil {
			return nil, fmt.Errorf("topology: dir: %w", err)
		}
		if running, _ := Running(dir); running {
			return nil, fmt.Errorf("%w: %s", ErrRunning, dir)
		}
		if err := run.checkTraversable(dir); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(dir, 0o711); err != nil {
			return nil, fmt.Errorf("topology: mkdir %s: %w", dir, err)
		}
		t.Dir = dir
	}
	if err := os.Chmod(t.Dir, 0o711); err != nil {
		t.removeTemp()
		return nil, fmt.Errorf("topology: chmod %s: %w", t.Dir, err)
	}
	if err := run.checkTraversable(t.Dir); err != nil {
		t.removeTemp()
		return nil, err
	}

	// Build the servers and assign ports.
	ports := newPortAssigner(cfg.BasePort)
	mk := func(shard string, spare bool) (*Shard, error) {
		sh := &Shard{Name: shard, Spare: spare}
		for i := 0; i <= cfg.Replicas; i++ {
			name := shard + "-primary"
			if i > 0 {
				name = fmt.Sprintf("%s-replica%d", shard, i-1)
			}
			port, err := ports.next()
			if err != nil {
				return nil, err
			}
			dir := filepath.Join(t.Dir, name)
			if _, err := os.Stat(dir); err == nil {
				return nil, fmt.Errorf("topology: %s already exists; remove it or use another directory", dir)
			}
			s := &Server{
				Name: name, Shard: shard, Host: "127.0.0.1", Port: port,
				Dir: dir, DataDir: filepath.Join(dir, "data"), LogFile: filepath.Join(dir, "postgres.log"),
				Primary: i == 0, bin: t.bin, run: run, logf: t.logf, autoPort: cfg.BasePort == 0, keep: cfg.KeepOnExit,
			}
			if i == 0 {
				sh.Primary = s
			} else {
				sh.Replicas = append(sh.Replicas, s)
			}
		}
		return sh, nil
	}
	for i := 0; i < cfg.Shards; i++ {
		sh, err := mk("shard"+strconv.Itoa(i), false)
		if err != nil {
			t.removeTemp()
			return nil, err
		}
		t.Shards = append(t.Shards, sh)
	}
	for i := 0; i < cfg.Spares; i++ {
		sh, err := mk("spare"+strconv.Itoa(i), true)
		if err != nil {
			t.removeTemp()
			return nil, err
		}
		t.Spares = append(t.Spares, sh)
	}

	// Start the shards in parallel.
	start := time.Now()
	all := t.AllShards()
	errs := make([]error, len(all))
	var wg sync.WaitGroup
	for i, sh := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = t.startShard(ctx, sh, cfg.Settings)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		_ = t.Close()
		return nil, err
	}
	if err := t.writeState(); err != nil {
		_ = t.Close()
		return nil, err
	}
	t.logf("topology: %d shard(s), %d spare(s), %d replica(s) each ready in %s (dir %s)",
		len(t.Shards), len(t.Spares), cfg.Replicas, time.Since(start).Round(time.Millisecond), t.Dir)
	return t, nil
}

// startShard initialises and starts the primary, creates the app role and
// database, clones and starts the replicas and waits until they stream.
func (t *Topology) startShard(ctx context.Context, sh *Shard, settings map[string]string) error {
	p := sh.Primary
	if err := t.initdb(ctx, p, settings); err != nil {
		return err
	}
	if err := p.start(ctx, p.autoPort); err != nil {
		return err
	}
	// CREATE DATABASE cannot run in the implicit transaction of a
	// multi-statement query: two round trips.
	if err := p.Exec(ctx, "postgres", "CREATE ROLE app LOGIN CREATEDB PASSWORD 'app'"); err != nil {
		return err
	}
	if err := p.Exec(ctx, "postgres", "CREATE DATABASE app OWNER app"); err != nil {
		return err
	}
	for _, r := range sh.Replicas {
		if err := t.basebackup(ctx, p, r); err != nil {
			return err
		}
		if err := r.start(ctx, r.autoPort); err != nil {
			return err
		}
	}
	return sh.WaitStreaming(ctx)
}

// initdb creates the primary's data directory and writes its configuration.
func (t *Topology) initdb(ctx context.Context, s *Server, settings map[string]string) error {
	if err := t.run.mkdir(s.Dir, 0o755); err != nil {
		return err
	}
	t.logf("%s: initdb", s.Name)
	if err := t.runTool(ctx, s, "initdb", "-D", s.DataDir, "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"); err != nil {
		return err
	}
	conf := map[string]string{
		"listen_addresses":                "127.0.0.1",
		"unix_socket_directories":         "",
		"wal_level":                       "logical",
		"max_prepared_transactions":       "64",
		"max_connections":                 "200",
		"max_wal_senders":                 "20",
		"max_replication_slots":           "20",
		"max_worker_processes":            "16",
		"max_logical_replication_workers": "8",
		"wal_keep_size":                   "256MB",
		"wal_retrieve_retry_interval":     "500ms",
		"hot_standby":                     "on",
		"hot_standby_feedback":            "on",
		"fsync":                           "off",
		"full_page_writes":                "off",
		"password_encryption":             "scram-sha-256",
		"shared_buffers":                  "32MB",
		"dynamic_shared_memory_type":      "mmap",
		"logging_collector":               "off",
		"log_line_prefix":                 "%m [%p] %q%u@%d ",
		"log_timezone":                    "UTC",
		"timezone":                        "UTC",
	}
	for k, v := range settings {
		conf[k] = v
	}
	keys := make([]string, 0, len(conf))
	for k := range conf {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("\n# ---- added by pgshard topology ----\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, quoteConf(conf[k]))
	}
	b.WriteString("include_if_exists = 'server.conf'\n")
	f, err := os.OpenFile(filepath.Join(s.DataDir, "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("topology: open postgresql.conf of %s: %w", s.Name, err)
	}
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return fmt.Errorf("topology: write postgresql.conf of %s: %w", s.Name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("topology: write postgresql.conf of %s: %w", s.Name, err)
	}
	hba := "# written by pgshard topology\n" +
		"# TYPE  DATABASE     USER      ADDRESS        METHOD\n" +
		"host    all          postgres  127.0.0.1/32   trust\n" +
		"host    replication  all       127.0.0.1/32   trust\n" +
		"host    all          all       127.0.0.1/32   scram-sha-256\n"
	if err := t.run.writeFile(filepath.Join(s.DataDir, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		return err
	}
	return s.writeServerConf()
}

// basebackup clones primary p into replica r (standby.signal and
// primary_conninfo written by -R).
func (t *Topology) basebackup(ctx context.Context, p, r *Server) error {
	if err := t.run.mkdir(r.Dir, 0o755); err != nil {
		return err
	}
	t.logf("%s: pg_basebackup from %s", r.Name, p.Name)
	if err := t.runTool(ctx, r, "pg_basebackup", "-D", r.DataDir, "-h", p.Host, "-p", strconv.Itoa(p.Port),
		"-U", "postgres", "-R", "-X", "stream", "-c", "fast", "--no-sync"); err != nil {
		return err
	}
	return r.writeServerConf()
}

// runTool runs a PostgreSQL program as the run-as user with output
// appended to s's log.
func (t *Topology) runTool(ctx context.Context, s *Server, tool string, args ...string) error {
	lf, err := os.OpenFile(s.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("topology: open log of %s: %w", s.Name, err)
	}
	defer lf.Close()
	off, _ := lf.Seek(0, 2)
	cmd := exec.CommandContext(ctx, filepath.Join(t.bin, tool), args...)
	cmd.Dir = s.Dir
	cmd.Env = ChildEnv()
	cmd.Stdout = lf
	cmd.Stderr = lf
	cmd.SysProcAttr = t.run.sysProcAttr(!t.keep)
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("topology: %s for %s: %w; output:\n%s", tool, s.Name, err, tail(readFrom(s.LogFile, off), 20))
	}
	return nil
}

// WaitStreaming waits until every replica of the shard shows as streaming
// in the primary's pg_stat_replication.
func (sh *Shard) WaitStreaming(ctx context.Context) error {
	if len(sh.Replicas) == 0 {
		return nil
	}
	return poll(ctx, func() (bool, error) {
		v, err := sh.Primary.QueryValue(ctx, "postgres",
			"SELECT string_agg(application_name, ',') FROM pg_stat_replication WHERE state = 'streaming'")
		if err != nil {
			return false, nil
		}
		have := map[string]bool{}
		for _, n := range strings.Split(v, ",") {
			have[n] = true
		}
		for _, r := range sh.Replicas {
			if !have[r.Name] {
				return false, nil
			}
		}
		return true, nil
	}, func() string { return "replicas of " + sh.Name + " streaming" })
}

// WaitCaughtUp waits until every replica of the shard has replayed the
// primary's current WAL position (e.g. after CREATE DATABASE on the primary).
func (sh *Shard) WaitCaughtUp(ctx context.Context) error {
	if len(sh.Replicas) == 0 {
		return nil
	}
	lsn, err := sh.Primary.QueryValue(ctx, "postgres", "SELECT pg_current_wal_lsn()")
	if err != nil {
		return err
	}
	for _, r := range sh.Replicas {
		q := fmt.Sprintf("SELECT pg_last_wal_replay_lsn() >= '%s'::pg_lsn", lsn)
		err := poll(ctx, func() (bool, error) {
			v, err := r.QueryValue(ctx, "postgres", q)
			return err == nil && v == "t", nil
		}, func() string { return r.Name + " replaying " + lsn })
		if err != nil {
			return err
		}
	}
	return nil
}

// poll calls f until it reports done, fails, or ctx ends.
func poll(ctx context.Context, f func() (bool, error), what func() string) error {
	tk := time.NewTicker(50 * time.Millisecond)
	defer tk.Stop()
	for {
		done, err := f()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("topology: wait for %s: %w", what(), ctx.Err())
		case <-tk.C:
		}
	}
}

// Close stops every server (replicas first, fast shutdown, then SIGKILL
// after 30s) and removes the base directory if Start created it. A given
// directory keeps data and logs but loses its state file. After Detach,
// Close does nothing. Close is idempotent.
func (t *Topology) Close() error {
	t.mu.Lock()
	if t.detached || t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	t.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	var mu sync.Mutex
	stopAll := func(servers []*Server) {
		var wg sync.WaitGroup
		for _, s := range servers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := s.Stop(ctx); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
	}
	var replicas, primaries []*Server
	for _, sh := range t.AllShards() {
		if sh == nil {
			continue
		}
		primaries = append(primaries, sh.Primary)
		replicas = append(replicas, sh.Replicas...)
	}
	stopAll(replicas)
	stopAll(primaries)
	if t.tempDir {
		if err := os.RemoveAll(t.Dir); err != nil {
			errs = append(errs, fmt.Errorf("topology: remove %s: %w", t.Dir, err))
		}
	} else if err := os.Remove(filepath.Join(t.Dir, stateFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("topology: remove state: %w", err))
	}
	return errors.Join(errs...)
}

func (t *Topology) removeTemp() {
	if t.tempDir {
		_ = os.RemoveAll(t.Dir)
	}
}

// Detach leaves the servers running after this process exits (it needs
// Config.KeepOnExit and a given Config.Dir): Close
// becomes a no-op and the state file in Dir (written by Start) lets
// StopDir or Open stop them later. It fails for a temporary directory.
func (t *Topology) Detach() error {
	if t.tempDir {
		return fmt.Errorf("topology: detach: the temporary directory %s would be lost; give Config.Dir", t.Dir)
	}
	if !t.keep {
		return errors.New("topology: detach: the servers die with this process; start with Config.KeepOnExit")
	}
	if err := t.writeState(); err != nil {
		return err
	}
	t.mu.Lock()
	t.detached = true
	t.mu.Unlock()
	return nil
}

// portAssigner hands out ports: sequential from a base, or random free ones.
type portAssigner struct {
	base, n int
}

func newPortAssigner(base int) *portAssigner { return &portAssigner{base: base} }

func (p *portAssigner) next() (int, error) {
	if p.base == 0 {
		return pickPort()
	}
	port := p.base + p.n
	p.n++
	if !PortFree(port) {
		return 0, fmt.Errorf("topology: port %d on 127.0.0.1 is in use", port)
	}
	return port, nil
}

var (
	portsMu   sync.Mutex
	portsUsed = map[int]bool{} // handed out by this process; never reused
)

// pickPort returns a random port in [20000,32000) that is free now on
// 127.0.0.1 and was not handed out before by this process. Other processes
// may still take it; Server.start retries on another port then.
func pickPort() (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 1000 {
		port := 20000 + rand.IntN(12000)
		if portsUsed[port] || !PortFree(port) {
			continue
		}
		portsUsed[port] = true
		return port, nil
	}
	return 0, errors.New("topology: no free port found in [20000,32000)")
}

// PortFree reports whether a TCP port on 127.0.0.1 can be listened on now.
func PortFree(port int) bool {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	_ = ln.Close()
	return true
}
