// Command pgshard is the pgshard daemon: a PostgreSQL wire-protocol proxy
// that pools backend connections. It reads one TOML configuration file
// (-config), lets PGSHARD_* environment variables and flags override it,
// serves clients on the listen address, and serves /metrics and /healthz on
// the admin address.
//
// Signals: SIGHUP reloads users and pool sizes from the file; SIGTERM and
// SIGINT stop accepting, let open transactions finish within
// shutdown_timeout, then exit.
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
	"strings"
	"syscall"
	"time"

	"github.com/pgshard/pgshard/config"
	"github.com/pgshard/pgshard/proxy"
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
	{"admin-listen", "admin_listen", "admin HTTP address (host:port) for /metrics and /healthz"},
	{"admin-token", "admin_token", "bearer token for the admin API"},
	{"pool-mode", "pool.mode", "transaction or session"},
	{"pool-size", "pool.size", "backend connections per pool"},
	{"log-level", "log_level", "debug, info, warn or error"},
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
	log := newLogger(cfg)
	slog.SetDefault(log)

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
	var admin *http.Server
	if cfg.AdminListen != "" {
		aln, err := net.Listen("tcp", cfg.AdminListen)
		if err != nil {
			ln.Close()
			return fmt.Errorf("admin listen on %s: %w", cfg.AdminListen, err)
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
		// Profiles for performance work; the admin address is loopback by default.
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
		admin = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() {
			if err := admin.Serve(aln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin server failed", "err", err)
			}
		}()
		log.Info("admin API listening", "addr", aln.Addr().String())
	}

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	for {
		select {
		case err := <-served:
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
				continue
			}
			log.Info("shutting down", "signal", sig.String(), "timeout", cfg.ShutdownTimeout.Duration.String())
			sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout.Duration)
			err := srv.Shutdown(sctx)
			cancel()
			if admin != nil {
				actx, acancel := context.WithTimeout(context.Background(), time.Second)
				_ = admin.Shutdown(actx)
				acancel()
			}
			stop()
			<-served
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
