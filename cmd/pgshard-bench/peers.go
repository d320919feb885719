package main

import (
	"context"
	"fmt"
	"github.com/pgshard/pgshard/topology"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Target names.
const (
	tDirect    = "direct"
	tPgbouncer = "pgbouncer"
	tPgpool    = "pgpool"
	tPgshard   = "pgshard"
	// tPgbouncerSession is pgbouncer in session pooling, measured only for
	// -M prepared as a reference when transaction pooling cannot run it.
	tPgbouncerSession = "pgbouncer-session"
)

// The application login every target accepts (created by topology).
const (
	appUser     = "app"
	appPassword = "app"
	appDB       = "app"
)

// target is one thing pgbench connects to.
type target struct {
	name string
	port int
	// proc is the proxy process (nil for direct PostgreSQL).
	proc *proc
	// adminPort is pgshard's admin HTTP port (/metrics), 0 for the others.
	adminPort int
}

// backend describes the PostgreSQL servers the peers point at.
type backend struct {
	primaryPort  int
	replicaPorts []int
}

// peerConfig is what every peer shares.
type peerConfig struct {
	dir      string // base directory; each peer gets a subdirectory
	runAs    *topology.OSUser
	poolSize int
	clients  int
	// maxClients is the most clients of any run (the relay runs), if more.
	maxClients int
	split      bool // pgshard: give it the replicas (read/write splitting)
	be         backend
}

// peerDir creates dir/name owned by the unprivileged user.
func (pc peerConfig) peerDir(name string) (string, error) {
	d := filepath.Join(pc.dir, name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return "", fmt.Errorf("mkdir %s: %w", d, err)
	}
	return d, pc.runAs.Chown(d)
}

// pgbouncerConfig returns pgbouncer.ini for one database "app" on the
// primary, with the given pool mode.
func pgbouncerConfig(dir string, port int, poolMode string, pc peerConfig) string {
	return fmt.Sprintf(`[databases]
%[1]s = host=127.0.0.1 port=%[2]d dbname=%[1]s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %[3]d
unix_socket_dir =
auth_type = scram-sha-256
auth_file = %[4]s
pool_mode = %[5]s
default_pool_size = %[6]d
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = %[7]d
max_db_connections = 0
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
stats_period = 3600
`, appDB, pc.be.primaryPort, port, filepath.Join(dir, "userlist.txt"), poolMode, pc.poolSize, max(1000, 4*pc.clients, pc.maxClients+100))
}

// startPgbouncer starts pgbouncer (as the unprivileged user: it refuses
// root) in the given pool mode. The userlist holds the plaintext password,
// which pgbouncer uses for SCRAM on both sides.
func startPgbouncer(name, poolMode string, port int, pc peerConfig) (*proc, error) {
	dir, err := pc.peerDir(name)
	if err != nil {
		return nil, err
	}
	ini := filepath.Join(dir, "pgbouncer.ini")
	if err := pc.runAs.WriteFile(ini, []byte(pgbouncerConfig(dir, port, poolMode, pc)), 0o600); err != nil {
		return nil, err
	}
	userlist := fmt.Sprintf("%q %q\n", appUser, appPassword)
	if err := pc.runAs.WriteFile(filepath.Join(dir, "userlist.txt"), []byte(userlist), 0o600); err != nil {
		return nil, err
	}
	// SIGTERM is pgbouncer 1.18's immediate shutdown (SIGINT would wait for
	// clients); we stop it when no client is left anyway.
	return startProc(name, []string{pgbouncerBin, ini}, dir, filepath.Join(dir, "pgbouncer.log"), pc.runAs, syscall.SIGTERM)
}

// pgpoolConfig returns pgpool.conf for streaming-replication mode with
// connection caching: num_init_children children, each caching one
// backend connection (max_pool = 1), so the backend pool is
// num_init_children connections, like the others' pool size.
func pgpoolConfig(dir string, port, pcpPort, children int, pc peerConfig) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("backend_clustering_mode = 'streaming_replication'")
	w("listen_addresses = '127.0.0.1'")
	w("port = %d", port)
	w("socket_dir = '%s'", dir)
	w("pcp_listen_addresses = ''")
	w("pcp_port = %d", pcpPort)
	w("pcp_socket_dir = '%s'", dir)
	w("pid_file_name = '%s'", filepath.Join(dir, "pgpool.pid"))
	w("logdir = '%s'", dir)
	w("log_destination = 'stderr'")
	w("logging_collector = off")
	w("log_min_messages = warning")
	w("log_connections = off")
	w("log_statement = off")
	w("log_per_node_statement = off")
	ports := append([]int{pc.be.primaryPort}, pc.be.replicaPorts...)
	for i, p := range ports {
		w("backend_hostname%d = '127.0.0.1'", i)
		w("backend_port%d = %d", i, p)
		w("backend_weight%d = 1", i)
		w("backend_flag%d = 'DISALLOW_TO_FAILOVER'", i)
	}
	w("enable_pool_hba = off")
	w("pool_passwd = '%s'", filepath.Join(dir, "pool_passwd"))
	w("allow_clear_text_frontend_auth = off")
	w("num_init_children = %d", children)
	w("max_pool = 1")
	w("reserved_connections = 0")
	w("child_life_time = 0")
	w("child_max_connections = 0")
	w("connection_life_time = 0")
	w("client_idle_limit = 0")
	w("connection_cache = on")
	w("load_balance_mode = %s", onOff(len(pc.be.replicaPorts) > 0))
	w("sr_check_period = 0")
	w("sr_check_user = 'postgres'")
	w("sr_check_password = ''")
	w("health_check_period = 0")
	w("health_check_user = 'postgres'")
	w("health_check_password = ''")
	w("failover_on_backend_error = off")
	w("use_watchdog = off")
	w("wd_ipc_socket_dir = '%s'", dir)
	w("memory_cache_enabled = off")
	return b.String()
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// startPgpool starts pgpool-II in the foreground (-n), discarding any old
// node status (-D), as the unprivileged user.
func startPgpool(port, pcpPort int, pc peerConfig) (*proc, error) {
	dir, err := pc.peerDir(tPgpool)
	if err != nil {
		return nil, err
	}
	children := max(pc.clients, pc.poolSize)
	conf := filepath.Join(dir, "pgpool.conf")
	files := map[string]string{
		conf: pgpoolConfig(dir, port, pcpPort, children, pc),
		// TEXT prefix: a plaintext password, used for SCRAM on both sides.
		filepath.Join(dir, "pool_passwd"):   fmt.Sprintf("%s:TEXT%s\n", appUser, appPassword),
		filepath.Join(dir, "pcp.conf"):      "",
		filepath.Join(dir, "pool_hba.conf"): "",
	}
	for path, data := range files {
		if err := pc.runAs.WriteFile(path, []byte(data), 0o600); err != nil {
			return nil, err
		}
	}
	argv := []string{pgpoolBin, "-n", "-D", "-f", conf, "-F", filepath.Join(dir, "pcp.conf"), "-a", filepath.Join(dir, "pool_hba.conf")}
	// SIGINT is pgpool's fast shutdown.
	return startProc(tPgpool, argv, dir, filepath.Join(dir, "pgpool.log"), pc.runAs, syscall.SIGINT)
}

// pgshardConfig returns the pgshard TOML configuration.
func pgshardConfig(port, adminPort int, pc peerConfig) string {
	var b strings.Builder
	fmt.Fprintf(&b, "listen = \"127.0.0.1:%d\"\n", port)
	fmt.Fprintf(&b, "admin_listen = \"127.0.0.1:%d\"\n", adminPort)
	b.WriteString("log_level = \"warn\"\n")
	b.WriteString("shutdown_timeout = \"5s\"\n")
	fmt.Fprintf(&b, "max_clients = %d\n", max(1000, 4*pc.clients, pc.maxClients+100))
	fmt.Fprintf(&b, "\n[pool]\nmode = \"transaction\"\nsize = %d\n", pc.poolSize)
	fmt.Fprintf(&b, "\n[[users]]\nname = %q\npassword = %q\n", appUser, appPassword)
	fmt.Fprintf(&b, "\n[[shards]]\nname = \"shard0\"\nprimary = \"host=127.0.0.1 port=%d\"\n", pc.be.primaryPort)
	if pc.split && len(pc.be.replicaPorts) > 0 {
		var reps []string
		for _, p := range pc.be.replicaPorts {
			reps = append(reps, fmt.Sprintf("\"host=127.0.0.1 port=%d\"", p))
		}
		fmt.Fprintf(&b, "replicas = [%s]\n", strings.Join(reps, ", "))
	}
	return b.String()
}

// startPgshard starts the pgshard binary with a generated configuration.
func startPgshard(bin string, port, adminPort int, pc peerConfig) (*proc, error) {
	dir := filepath.Join(pc.dir, tPgshard)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("mkdir %s: %w", dir, err)
	}
	conf := filepath.Join(dir, "pgshard.toml")
	if err := os.WriteFile(conf, []byte(pgshardConfig(port, adminPort, pc)), 0o600); err != nil {
		return nil, fmt.Errorf("write %s: %w", conf, err)
	}
	return startProc(tPgshard, []string{bin, "-config", conf}, dir, filepath.Join(dir, "pgshard.log"), nil, syscall.SIGTERM)
}

// buildPgshard builds ./cmd/pgshard of the module containing the working
// directory into dir and returns the binary's path.
func buildPgshard(ctx context.Context, dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "bin", "pgshard")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/pgshard")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build pgshard in %s: %w\n%s", root, err, b)
	}
	return out, nil
}

// moduleRoot finds the directory holding go.mod, from the working
// directory upwards.
func moduleRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find module root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("find module root: no go.mod above the working directory; run from the pgshard repository or pass -pgshard")
		}
		d = parent
	}
}

// appDSN is the keyword/value DSN of the app login on 127.0.0.1:port.
func appDSN(port int) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=%s password=%s dbname=%s sslmode=disable connect_timeout=3", port, appUser, appPassword, appDB)
}

// startTimeout bounds how long a peer may take to accept connections.
const startTimeout = 30 * time.Second
