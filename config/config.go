// Package config loads pgshard's configuration: one TOML file, overridden by
// environment variables (PGSHARD_*), overridden in turn by command-line flags.
// It only parses and validates; it starts nothing.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// PoolMode says when a backend connection returns to the pool.
type PoolMode string

const (
	// PoolTransaction returns the backend after each transaction (default).
	PoolTransaction PoolMode = "transaction"
	// PoolSession keeps the backend for the whole client session.
	PoolSession PoolMode = "session"
)

// Duration is a time.Duration written as "5s" in TOML.
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

// MarshalText writes the duration as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Config is the whole configuration of one pgshard node.
type Config struct {
	Listen          string   `toml:"listen"`
	AdminListen     string   `toml:"admin_listen"`
	AdminToken      string   `toml:"admin_token"`
	TLSCertFile     string   `toml:"tls_cert_file"`
	TLSKeyFile      string   `toml:"tls_key_file"`
	AuthTimeout     Duration `toml:"auth_timeout"`
	MaxMessageSize  int      `toml:"max_message_size"`
	MaxClients      int      `toml:"max_clients"`
	ShutdownTimeout Duration `toml:"shutdown_timeout"`
	LogLevel        string   `toml:"log_level"`
	LogFormat       string   `toml:"log_format"`
	// Procs is how many cores pgshard's Go runtime may run on at once
	// (GOMAXPROCS); 0 means half the machine's cores, at least one. The
	// GOMAXPROCS environment variable, when set, wins.
	Procs   int     `toml:"procs"`
	Pool    Pool    `toml:"pool"`
	Routing Routing `toml:"routing"`
	Users   []User  `toml:"users"`
	Shards  []Shard `toml:"shards"`
	Cluster Cluster `toml:"cluster"`
	// Resharding is the login the resharder uses on the shards.
	Resharding Resharding `toml:"resharding"`
}

// Resharding configures how the resharder (pgshardctl reshard) logs in to
// every shard's primary, new shards included. It is read at start.
type Resharding struct {
	// User is a superuser on every shard primary (PostgreSQL 15 needs one
	// to create subscriptions); default "postgres".
	User string `toml:"user"`
	// Password is User's password ("" when the servers trust it).
	Password string `toml:"password"`
	// Database is the database whose tables a job moves when the request
	// names none (pgshardctl reshard --database). Empty: every request
	// must name one.
	Database string `toml:"database"`
}

// Cluster configures this node's membership in the Raft cluster that
// replicates the shard map. With DataDir empty the node runs alone without
// Raft and routes to the [[shards]] of the file; with DataDir set the map
// lives in Raft and [[shards]] only seed an empty map.
type Cluster struct {
	// NodeID is this node's Raft server ID, stable across restarts
	// (default: the host name).
	NodeID string `toml:"node_id"`
	// RaftListen is the host:port of the Raft TCP transport; other
	// members dial it, so it must be a concrete address, not 0.0.0.0.
	RaftListen string `toml:"raft_listen"`
	// DataDir holds the Raft log, stable store and snapshots.
	DataDir string `toml:"data_dir"`
	// Bootstrap creates a new one-node cluster when DataDir holds no
	// Raft state.
	Bootstrap bool `toml:"bootstrap"`
	// Join lists admin URLs of members (e.g. "http://10.0.0.1:6480") this
	// node asks to add it; any member forwards to the leader.
	Join []string `toml:"join"`
	// Suffrage is how this node joins: "voter" (default) or "nonvoter".
	Suffrage string `toml:"suffrage"`
	// AdminURL is the URL other members use to reach this node's admin
	// API (to forward writes to it when it leads); default
	// "http://" + admin_listen.
	AdminURL string `toml:"admin_url"`
	// HeartbeatTimeout and ElectionTimeout tune Raft (0: Raft's
	// defaults, 1s each); a leader lost is replaced after about the
	// election timeout.
	HeartbeatTimeout Duration `toml:"heartbeat_timeout"`
	ElectionTimeout  Duration `toml:"election_timeout"`
}

// Enabled reports whether the node keeps the shard map in Raft.
func (c Cluster) Enabled() bool { return c.DataDir != "" }

// Pool configures the backend pools (one per shard, role, user and database).
type Pool struct {
	Mode           PoolMode `toml:"mode"`
	Size           int      `toml:"size"`
	WaitTimeout    Duration `toml:"wait_timeout"`
	IdleTimeout    Duration `toml:"idle_timeout"`
	MaxLifetime    Duration `toml:"max_lifetime"`
	ConnectTimeout Duration `toml:"connect_timeout"`
}

// Routing configures read/write splitting.
type Routing struct {
	// ReadWriteSplit sends reads to a shard's replicas when it has any.
	ReadWriteSplit bool `toml:"read_write_split"`
	// ReadYourWrites keeps a session that wrote on replicas that have
	// replayed its writes (else on the primary).
	ReadYourWrites bool `toml:"read_your_writes"`
	// LoadBalance is "least_outstanding" or "round_robin".
	LoadBalance string `toml:"load_balance"`
	// MaxLagBytes and MaxLag bound how far behind a replica may be and
	// still take reads (0 = no bound).
	MaxLagBytes    int64    `toml:"max_lag_bytes"`
	MaxLag         Duration `toml:"max_lag"`
	HealthInterval Duration `toml:"health_interval"`
	HealthTimeout  Duration `toml:"health_timeout"`
	// WriteFunctions are functions, besides the built-in list, whose call
	// makes a statement a write ("name" or "prefix*").
	WriteFunctions []string `toml:"write_functions"`
	// ParseCacheSize bounds the classification cache.
	ParseCacheSize int `toml:"parse_cache_size"`
	// MonitorUser/MonitorPassword/MonitorDatabase is the login the health
	// checks use; default: the first user's backend login, database postgres.
	MonitorUser     string `toml:"monitor_user"`
	MonitorPassword string `toml:"monitor_password"`
	MonitorDatabase string `toml:"monitor_database"`
}

// User is a client login. Password is plaintext or a stored verifier
// ("SCRAM-SHA-256$…" for scram-sha-256, "md5…" for md5). The backend login
// uses BackendUser/BackendPassword, which default to Name/Password (a
// verifier cannot be used to log in to a backend, so set BackendPassword then).
type User struct {
	Name            string `toml:"name"`
	Password        string `toml:"password"`
	Auth            string `toml:"auth"`
	BackendUser     string `toml:"backend_user"`
	BackendPassword string `toml:"backend_password"`
	PoolSize        int    `toml:"pool_size"`
}

// Shard is a primary with its streaming replicas, as libpq connection
// strings without user, password or database (those come from the client).
type Shard struct {
	Name     string   `toml:"name"`
	Primary  string   `toml:"primary"`
	Replicas []string `toml:"replicas"`
}

// Default returns the configuration used when nothing is set.
func Default() Config {
	return Config{
		Listen:          "127.0.0.1:6432",
		AdminListen:     "127.0.0.1:6480",
		AuthTimeout:     Duration{time.Minute}, // PostgreSQL's authentication_timeout
		MaxMessageSize:  64 << 20,
		MaxClients:      10000,
		ShutdownTimeout: Duration{30 * time.Second},
		LogLevel:        "info",
		LogFormat:       "text",
		Pool: Pool{
			Mode:           PoolTransaction,
			Size:           20,
			WaitTimeout:    Duration{5 * time.Second},
			IdleTimeout:    Duration{5 * time.Minute},
			MaxLifetime:    Duration{time.Hour},
			ConnectTimeout: Duration{5 * time.Second},
		},
		Routing: Routing{
			ReadWriteSplit:  true,
			ReadYourWrites:  true,
			LoadBalance:     "least_outstanding",
			MaxLagBytes:     16 << 20,
			MaxLag:          Duration{5 * time.Second},
			HealthInterval:  Duration{250 * time.Millisecond},
			HealthTimeout:   Duration{time.Second},
			ParseCacheSize:  10000,
			MonitorDatabase: "postgres",
		},
		Cluster:    Cluster{RaftListen: "127.0.0.1:6490", Suffrage: "voter"},
		Resharding: Resharding{User: "postgres"},
	}
}

// Load reads the file at path (skipped when path is empty) over the
// defaults, then applies the environment (getenv, usually os.Getenv).
func Load(path string, getenv func(string) string) (Config, error) {
	c := Default()
	if path != "" {
		md, err := toml.DecodeFile(path, &c)
		if err != nil {
			return Config{}, fmt.Errorf("config: read %s: %w", path, err)
		}
		if und := md.Undecoded(); len(und) > 0 {
			keys := make([]string, len(und))
			for i, k := range und {
				keys[i] = k.String()
			}
			return Config{}, fmt.Errorf("config: %s: unknown keys: %s", path, strings.Join(keys, ", "))
		}
	}
	if getenv == nil {
		getenv = os.Getenv
	}
	if err := c.applyEnv(getenv); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Env lists the environment variables Load reads, with what they set.
var Env = map[string]string{
	"PGSHARD_LISTEN":              "listen",
	"PGSHARD_ADMIN_LISTEN":        "admin_listen",
	"PGSHARD_ADMIN_TOKEN":         "admin_token",
	"PGSHARD_POOL_MODE":           "pool.mode",
	"PGSHARD_POOL_SIZE":           "pool.size",
	"PGSHARD_LOG_LEVEL":           "log_level",
	"PGSHARD_READ_WRITE_SPLIT":    "routing.read_write_split",
	"PGSHARD_NODE_ID":             "cluster.node_id",
	"PGSHARD_RAFT_LISTEN":         "cluster.raft_listen",
	"PGSHARD_DATA_DIR":            "cluster.data_dir",
	"PGSHARD_BOOTSTRAP":           "cluster.bootstrap",
	"PGSHARD_JOIN":                "cluster.join",
	"PGSHARD_CLUSTER_ADMIN_URL":   "cluster.admin_url",
	"PGSHARD_RESHARDING_USER":     "resharding.user",
	"PGSHARD_RESHARDING_PASSWORD": "resharding.password",
	"PGSHARD_RESHARDING_DATABASE": "resharding.database",
}

func (c *Config) applyEnv(getenv func(string) string) error {
	for name, key := range Env {
		if v := getenv(name); v != "" {
			if err := c.Set(key, v); err != nil {
				return fmt.Errorf("config: %s: %w", name, err)
			}
		}
	}
	return nil
}

// Set sets one scalar setting by its TOML key (used for environment
// variables and flags).
func (c *Config) Set(key, v string) error {
	switch key {
	case "listen":
		c.Listen = v
	case "admin_listen":
		c.AdminListen = v
	case "admin_token":
		c.AdminToken = v
	case "pool.mode":
		c.Pool.Mode = PoolMode(v)
	case "pool.size":
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("pool.size %q: not a number", v)
		}
		c.Pool.Size = n
	case "log_level":
		c.LogLevel = v
	case "routing.read_write_split":
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("routing.read_write_split %q: want true or false", v)
		}
		c.Routing.ReadWriteSplit = b
	case "cluster.node_id":
		c.Cluster.NodeID = v
	case "cluster.raft_listen":
		c.Cluster.RaftListen = v
	case "cluster.data_dir":
		c.Cluster.DataDir = v
	case "cluster.bootstrap":
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("cluster.bootstrap %q: want true or false", v)
		}
		c.Cluster.Bootstrap = b
	case "cluster.join":
		c.Cluster.Join = nil
		for _, u := range strings.Split(v, ",") {
			if u = strings.TrimSpace(u); u != "" {
				c.Cluster.Join = append(c.Cluster.Join, u)
			}
		}
	case "cluster.admin_url":
		c.Cluster.AdminURL = v
	case "resharding.user":
		c.Resharding.User = v
	case "resharding.password":
		c.Resharding.Password = v
	case "resharding.database":
		c.Resharding.Database = v
	default:
		return fmt.Errorf("unknown setting %q", key)
	}
	return nil
}

// Validate reports every problem in the configuration at once.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.Listen == "" {
		bad("listen is empty")
	}
	if c.Procs < 0 {
		bad("procs %d: must be 0 (half the cores) or more", c.Procs)
	}
	switch c.Pool.Mode {
	case PoolTransaction, PoolSession:
	default:
		bad("pool.mode %q: want %q or %q", c.Pool.Mode, PoolTransaction, PoolSession)
	}
	if c.Pool.Size < 1 {
		bad("pool.size %d: must be at least 1", c.Pool.Size)
	}
	switch c.Routing.LoadBalance {
	case "least_outstanding", "round_robin":
	default:
		bad("routing.load_balance %q: want least_outstanding or round_robin", c.Routing.LoadBalance)
	}
	if c.Routing.HealthInterval.Duration <= 0 {
		bad("routing.health_interval must be positive")
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		bad("tls_cert_file and tls_key_file go together")
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		bad("log_format %q: want text or json", c.LogFormat)
	}
	if len(c.Users) == 0 {
		bad("no [[users]]: add at least one user")
	}
	seen := map[string]bool{}
	for i, u := range c.Users {
		if u.Name == "" {
			bad("users[%d]: name is empty", i)
		}
		if seen[u.Name] {
			bad("users[%d]: user %q appears twice", i, u.Name)
		}
		seen[u.Name] = true
		switch u.Auth {
		case "", "scram-sha-256", "md5", "trust":
		default:
			bad("user %q: auth %q: want scram-sha-256, md5 or trust", u.Name, u.Auth)
		}
		if u.Auth != "trust" && u.Password == "" {
			bad("user %q: password is empty (set auth = \"trust\" to allow no password)", u.Name)
		}
		if u.BackendPassword == "" && (strings.HasPrefix(u.Password, "SCRAM-SHA-256$") || strings.HasPrefix(u.Password, "md5")) && len(u.Password) > 3 {
			bad("user %q: password is a verifier, so backend_password must be set to log in to the backends", u.Name)
		}
	}
	if len(c.Shards) == 0 {
		bad("no [[shards]]: add at least one shard with a primary")
	}
	for i, s := range c.Shards {
		if s.Name == "" {
			bad("shards[%d]: name is empty", i)
		}
		if s.Primary == "" {
			bad("shard %q: primary is empty", s.Name)
		}
	}
	if c.AdminListen != "" && c.AdminToken == "" {
		if host, _, err := net.SplitHostPort(c.AdminListen); err == nil && !isLoopback(host) {
			bad("admin_listen %q is reachable from other hosts: set admin_token (the admin API changes the shard map)", c.AdminListen)
		}
	}
	c.validateCluster(bad)
	c.validateResharding(bad)
	return errors.Join(errs...)
}

func (c *Config) validateResharding(bad func(string, ...any)) {
	r := c.Resharding
	if r.User == "" {
		bad("resharding.user is empty: name a superuser of the shards' primaries (default postgres)")
	}
	for _, kv := range [][2]string{{"resharding.user", r.User}, {"resharding.database", r.Database}} {
		if strings.ContainsRune(kv[1], 0) || len(kv[1]) > 63 {
			bad("%s %q: not a PostgreSQL name (at most 63 bytes, no NUL)", kv[0], kv[1])
		}
	}
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (c *Config) validateCluster(bad func(string, ...any)) {
	cl := c.Cluster
	if !cl.Enabled() {
		if cl.Bootstrap || len(cl.Join) > 0 {
			bad("cluster: bootstrap/join need cluster.data_dir (where the Raft log is kept)")
		}
		return
	}
	if cl.Bootstrap && len(cl.Join) > 0 {
		bad("cluster: bootstrap and join exclude each other: bootstrap the first node, let the others join it")
	}
	if host, port, err := net.SplitHostPort(cl.RaftListen); err != nil {
		bad("cluster.raft_listen %q: want host:port (e.g. 127.0.0.1:6490)", cl.RaftListen)
	} else if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		bad("cluster.raft_listen %q: other members dial this address, so give a concrete host, not %q", cl.RaftListen, host)
	} else if port == "0" {
		bad("cluster.raft_listen %q: port 0 cannot be advertised to other members", cl.RaftListen)
	}
	switch cl.Suffrage {
	case "", "voter", "nonvoter":
	default:
		bad("cluster.suffrage %q: want voter or nonvoter", cl.Suffrage)
	}
	for _, u := range cl.Join {
		if pu, err := url.Parse(u); err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			bad("cluster.join %q: want an admin URL such as http://127.0.0.1:6480", u)
		}
	}
	if cl.AdminURL != "" {
		if pu, err := url.Parse(cl.AdminURL); err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			bad("cluster.admin_url %q: want a URL such as http://127.0.0.1:6480", cl.AdminURL)
		}
	} else if c.AdminListen == "" {
		bad("cluster needs the admin API (members forward writes to the leader's): set admin_listen")
	} else if host, _, err := net.SplitHostPort(c.AdminListen); err == nil {
		if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
			bad("admin_listen %q is not an address other members can dial: set cluster.admin_url (e.g. http://pgshard0:6480)", c.AdminListen)
		}
	}
	if cl.HeartbeatTimeout.Duration < 0 || cl.ElectionTimeout.Duration < 0 {
		bad("cluster: timeouts must not be negative")
	}
}

// MonitorLogin returns the login of the replica health checks.
func (c *Config) MonitorLogin() (user, password, database string) {
	user, password, database = c.Routing.MonitorUser, c.Routing.MonitorPassword, c.Routing.MonitorDatabase
	if user == "" && len(c.Users) > 0 {
		user, password = c.Users[0].BackendLogin()
	}
	if database == "" {
		database = "postgres"
	}
	return user, password, database
}

// BackendLogin returns the user and password pgshard uses on the backends
// for client user u.
func (u User) BackendLogin() (user, password string) {
	user, password = u.BackendUser, u.BackendPassword
	if user == "" {
		user = u.Name
	}
	if password == "" {
		password = u.Password
	}
	return user, password
}

// GoMaxProcs returns the GOMAXPROCS the daemon should use for Procs on a
// machine with ncpu cores.
func (c *Config) GoMaxProcs(ncpu int) int {
	if c.Procs > 0 {
		return c.Procs
	}
	return max(1, ncpu/2)
}
