// Command pgshard is the pgshard daemon: a PostgreSQL wire-protocol proxy
// that pools backend connections. It reads one TOML configuration file
// (-config), lets PGSHARD_* environment variables and flags override it,
// serves clients on the listen address, and serves /metrics, /healthz, /readyz and the
// admin API (package admin) on the admin address.
//
// With [cluster] data_dir set the node is a member of the Raft cluster that
// replicates the shard map (package shardmap): it bootstraps a new cluster
// (cluster.bootstrap) or asks a member to add it (cluster.join), the leader
// seeds an empty map from [[shards]], and the proxy follows the map's shards
// from then on. Two-phase commit decisions and tables created through
// pgshard are recorded in the map, and the leader finishes prepared
// transactions a crashed coordinator left in doubt. Without it the node
// routes to the file's one shard (several need the map: refused at start).
//
// On a cluster node the admin API also drives resharding (package
// resharder, pgshardctl reshard): the leader runs the jobs, logging in to
// the shards as [resharding] says; a node without Raft refuses them.
//
// Signals: SIGHUP reloads users and pool sizes from the file; SIGTERM and
// SIGINT stop accepting, let open transactions finish within
// shutdown_timeout, stop the admin API, close the shard map store, then exit.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/pgshard/pgshard/admin"
	"github.com/pgshard/pgshard/config"
	"github.com/pgshard/pgshard/proxy"
	"github.com/pgshard/pgshard/resharder"
	"github.com/pgshard/pgshard/shardmap"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "pgshard:", err)
		os.Exit(1)
	}
}

// flagSettings maps flags to configuration keys; a flag set on the command
// line wins over the file and the environment.
var flagSettings = []struct{ flag, key, usage string }{
	{"listen", "listen", "client address (host:port)"},
	{"admin-listen", "admin_listen", "admin HTTP address (host:port): admin API, /metrics, /healthz, /readyz"},
	{"admin-token", "admin_token", "bearer token for the admin API"},
	{"pool-mode", "pool.mode", "transaction or session"},
	{"pool-size", "pool.size", "backend connections per pool"},
	{"log-level", "log_level", "debug, info, warn or error"},
	{"node-id", "cluster.node_id", "Raft server ID of this node (default: host name)"},
	{"raft-listen", "cluster.raft_listen", "Raft address (host:port) other members dial"},
	{"data-dir", "cluster.data_dir", "directory of the Raft log and snapshots; enables the cluster"},
	{"bootstrap", "cluster.bootstrap", "true: create a new cluster when data-dir has no state"},
	{"join", "cluster.join", "comma-separated admin URLs of members to join"},
}

func run(args []string) error {
	fs := flag.NewFlagSet("pgshard", flag.ContinueOnError)
	path := fs.String("config", os.Getenv("PGSHARD_CONFIG"), "configuration file (TOML); env PGSHARD_CONFIG")
	vals := map[string]*string{}
	for _, f := range flagSettings {
		vals[f.flag] = fs.String(f.flag, "", f.usage)
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	load := func() (config.Config, error) {
		cfg, err := config.Load(*path, os.Getenv)
		if err != nil {
			return cfg, err
		}
		var ferr error
		fs.Visit(func(f *flag.Flag) {
			for _, s := range flagSettings {
				if s.flag == f.Name && ferr == nil {
					ferr = cfg.Set(s.key, *vals[f.Name])
				}
			}
		})
		if ferr != nil {
			return cfg, ferr
		}
		return cfg, cfg.Validate()
	}
	cfg, err := load()
	if err != nil {
		return err
	}
	if !cfg.Cluster.Enabled() && len(cfg.Shards) > 1 {
		// Without the map in Raft the proxy has no ring and no tables:
		// every row would land on the first shard.
		return fmt.Errorf("%d [[shards]] without [cluster] data_dir: placing rows by user_id over several shards needs the shard map in Raft; set [cluster] data_dir (and bootstrap = true on the first node), or list one shard", len(cfg.Shards))
	}
	log := newLogger(cfg)
	slog.SetDefault(log)
	if os.Getenv("GOMAXPROCS") == "" {
		// A proxy mostly waits on sockets; on a machine it shares with
		// PostgreSQL and clients, fewer threads cost less CPU per query
		// (see README, Benchmark).
		runtime.GOMAXPROCS(cfg.GoMaxProcs(runtime.NumCPU()))
	}
	log.Info("starting", "procs", runtime.GOMAXPROCS(0))

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	srv, err := proxy.New(cfg, log, reg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()

	// The shard map: in Raft when [cluster] data_dir is set, else a fixed
	// map of the file's [[shards]] that the admin API can only read.
	var node *clusterNode
	var mapStore admin.Store
	if cfg.Cluster.Enabled() {
		node, err = openCluster(ctx, cfg, log)
		if err != nil {
			ln.Close()
			return err
		}
		mapStore = node.store
	} else {
		var shards []shardmap.Shard
		for _, sh := range cfg.Shards {
			shards = append(shards, shardmap.Shard{Name: sh.Name, Primary: sh.Primary, Replicas: sh.Replicas})
		}
		m, err := admin.StaticMap(shards)
		if err != nil {
			ln.Close()
			return fmt.Errorf("shard map from [[shards]]: %w", err)
		}
		mapStore = &admin.StaticStore{NodeID: nodeID(cfg), M: m}
	}
	closeNode := func() {
		if node == nil {
			return
		}
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := node.close(cctx); err != nil {
			log.Warn("closing the shard map store", "err", err)
		}
	}

	var adminHTTP *http.Server
	var adminAPI *admin.Server
	var runner *resharder.Runner // nil without Raft or without the admin API
	adminURL := cfg.Cluster.AdminURL
	if cfg.AdminListen != "" {
		aln, err := net.Listen("tcp", cfg.AdminListen)
		if err != nil {
			ln.Close()
			stop()
			closeNode()
			return fmt.Errorf("admin listen on %s: %w", cfg.AdminListen, err)
		}
		if adminURL == "" {
			adminURL = "http://" + aln.Addr().String()
		}
		// Resharding needs the map in Raft: a node without it answers
		// the reshard endpoints no_cluster.
		var reshard admin.Resharder
		var members *raftNodes
		if node != nil {
			members = newRaftNodes(node.store, srv.MapVersion, cfg.AdminToken, log.With("component", "resharder"))
			runner = resharder.New(resharder.Config{
				Store: newReshardStore(node.store, adminURL, cfg.AdminToken, log.With("component", "resharder")),
				Nodes: members,
				Login: resharder.Login{User: cfg.Resharding.User, Password: cfg.Resharding.Password, Database: cfg.Resharding.Database},
				Log:   log, // the runner names its component
			})
			reshard = reshardService{Runner: runner, database: cfg.Resharding.Database}
		}
		adminAPI, err = admin.New(admin.Config{Store: mapStore, Token: cfg.AdminToken, AdminURL: adminURL,
			Peers: cfg.Cluster.Join, DataDir: cfg.Cluster.DataDir, Logger: log.With("component", "admin"),
			Resharder: reshard, AppliedVersion: srv.MapVersion})
		if members != nil && adminAPI != nil {
			members.setDirectory(adminAPI)
		}
		if err != nil {
			aln.Close()
			ln.Close()
			stop()
			closeNode()
			return err
		}
		if cfg.AdminToken == "" {
			log.Warn("admin_token is empty: anyone who can reach the admin address can change the shard map", "addr", aln.Addr().String())
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
			if srv.ShuttingDown() {
				http.Error(w, "shutting down", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintln(w, "ok")
		})
		// Readiness for load balancers: 503 also while the node has not
		// caught up with the shard map (its clients get 57P03 then).
		mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
			switch {
			case srv.ShuttingDown():
				http.Error(w, "shutting down", http.StatusServiceUnavailable)
			case srv.AwaitingMap():
				http.Error(w, "not caught up with the shard map yet", http.StatusServiceUnavailable)
			default:
				fmt.Fprintln(w, "ok")
			}
		})
		// Profiles for performance work, behind the admin token.
		mux.Handle("GET /debug/pprof/", adminAPI.Auth(http.HandlerFunc(pprof.Index)))
		mux.Handle("GET /debug/pprof/profile", adminAPI.Auth(http.HandlerFunc(pprof.Profile)))
		mux.Handle("GET /debug/pprof/trace", adminAPI.Auth(http.HandlerFunc(pprof.Trace)))
		adminAPI.Register(mux)
		adminHTTP = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := adminHTTP.Serve(aln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin server failed", "err", err)
			}
		}()
		adminAPI.Start(ctx)
		log.Info("admin API listening", "addr", aln.Addr().String(), "url", adminURL)
	}
	if node != nil {
		// Two-phase commit decisions and tables created through pgshard
		// go to the Raft map (through the leader); set before the first
		// client is served.
		coord := newMapCoord(node.store, adminURL, cfg.AdminToken, log.With("component", "coord"))
		srv.SetTxnLog(coord)
		srv.SetRegistrar(coord)
		// Clients wait for the map: the file's [[shards]] only seed it.
		srv.AwaitMap()
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	if node != nil {
		node.start(ctx, adminURL, srv)
		if runner != nil {
			// Jobs are driven by the leader only; a new leader resumes
			// (or rolls back) the job from its checkpoints in the map.
			node.lead(ctx, "resharder", runner.Run)
		}
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	for {
		select {
		case err := <-served:
			stop()
			if adminHTTP != nil {
				_ = adminHTTP.Close()
				adminAPI.Close()
			}
			closeNode()
			return err
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				next, err := load()
				if err != nil {
					log.Error("reload failed; keeping the running configuration", "err", err)
					continue
				}
				if err := srv.Reload(next); err != nil {
					log.Error("reload failed; keeping the running configuration", "err", err)
				}
				if next.Resharding != cfg.Resharding {
					// The resharder was built with the login at start.
					log.Warn("reload: these settings need a restart and were not applied", "settings", "resharding")
				}
				continue
			}
			log.Info("shutting down", "signal", sig.String(), "timeout", cfg.ShutdownTimeout.Duration.String())
			sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout.Duration)
			err := srv.Shutdown(sctx)
			cancel()
			if adminHTTP != nil {
				actx, acancel := context.WithTimeout(context.Background(), time.Second)
				_ = adminHTTP.Shutdown(actx)
				acancel()
				adminAPI.Close()
			}
			stop()
			<-served
			closeNode()
			if err != nil {
				log.Warn("shutdown", "err", err)
			}
			log.Info("stopped")
			return nil
		}
	}
}

func newLogger(cfg config.Config) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(strings.ToUpper(cfg.LogLevel)))
	opts := &slog.HandlerOptions{Level: lvl}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
