// Package topotest starts real PostgreSQL topologies for tests: one per
// test (Start) or one shared by a package (Main + Shared), with a fresh
// database per test (NewDatabase).
//
// When the PostgreSQL binaries are missing, tests are skipped, except when
// the environment has CI=true: then they fail.
package topotest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgshard/pgshard/topology"
)

// StartTimeout bounds how long starting a topology may take.
const StartTimeout = 3 * time.Minute

// InCI reports whether the environment says we run in CI (CI=true), where
// missing PostgreSQL binaries are a failure rather than a reason to skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// RequireBinaries skips (or, in CI, fails) the test when the PostgreSQL
// binaries are not installed.
func RequireBinaries(tb testing.TB, binDir string) {
	tb.Helper()
	if err := topology.Available(binDir); err != nil {
		if InCI() {
			tb.Fatalf("CI=true but %v", err)
		}
		tb.Skipf("skipping: %v", err)
	}
}

// Start starts a topology for one test and stops it in tb.Cleanup. The
// server logs are written to the test log when the test fails. cfg.Logf
// defaults to tb.Logf.
func Start(tb testing.TB, cfg topology.Config) *topology.Topology {
	tb.Helper()
	RequireBinaries(tb, cfg.BinDir)
	if cfg.Logf == nil {
		cfg.Logf = tb.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	topo, err := topology.Start(ctx, cfg)
	if err != nil {
		tb.Fatalf("start topology: %v", err)
	}
	tb.Cleanup(func() {
		if err := topo.Close(); err != nil {
			tb.Errorf("close topology: %v", err)
		}
	})
	// Registered after Close so that it runs before it (cleanups are LIFO).
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("server logs:\n%s", topo.LogTails(40))
		}
	})
	return topo
}

var shared struct {
	mu     sync.Mutex
	inMain bool
	cfg    topology.Config
	once   sync.Once
	topo   *topology.Topology
	err    error
}

// Main runs the package's tests with one topology shared by them and
// exits with their status (see Run). Use it from TestMain:
//
//	func TestMain(m *testing.M) {
//		topotest.Main(m, topology.Config{Shards: 2, Replicas: 1})
//	}
func Main(m *testing.M, cfg topology.Config) { os.Exit(Run(m, cfg)) }

// Run is Main without os.Exit, for a TestMain that does more (e.g. a
// goroutine-leak check): it runs the tests, stops the shared topology if
// one was started and returns the exit code. The topology starts lazily
// on the first Shared call, so a run that needs no server starts none.
// Set PGSHARD_TOPO_LOG=1 to see the topology's progress on stderr.
func Run(m *testing.M, cfg topology.Config) int {
	shared.mu.Lock()
	shared.inMain = true
	if cfg.Logf == nil && os.Getenv("PGSHARD_TOPO_LOG") != "" {
		cfg.Logf = log.New(os.Stderr, "topotest: ", log.Lmicroseconds).Printf
	}
	shared.cfg = cfg
	shared.mu.Unlock()
	code := m.Run()
	if topo := shared.topo; topo != nil {
		if code != 0 {
			fmt.Fprintf(os.Stderr, "topotest: tests failed; server logs:\n%s", topo.LogTails(40))
		}
		if err := topo.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "topotest: close topology: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// Shared returns the package's shared topology, starting it on first use.
// It skips the test (fails in CI) when the binaries are missing and fails
// it when the topology could not start or Main was not used.
func Shared(tb testing.TB) *topology.Topology {
	tb.Helper()
	shared.mu.Lock()
	inMain, cfg := shared.inMain, shared.cfg
	shared.mu.Unlock()
	if !inMain {
		tb.Fatal("topotest.Shared needs topotest.Main or Run in the package's TestMain")
	}
	RequireBinaries(tb, cfg.BinDir)
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
		defer cancel()
		shared.topo, shared.err = topology.Start(ctx, cfg)
	})
	if shared.err != nil {
		tb.Fatalf("start shared topology: %v", shared.err)
	}
	return shared.topo
}

// NewDatabase creates a fresh database owned by app on the primary of
// every shard and spare, waits until the replicas have it, and drops it in
// tb.Cleanup. Connect with Server.URL("app", "app", name).
func NewDatabase(tb testing.TB, topo *topology.Topology) string {
	tb.Helper()
	name := dbName(tb.Name())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, sh := range topo.AllShards() {
		if err := sh.Primary.Exec(ctx, "postgres", fmt.Sprintf(`CREATE DATABASE %q OWNER app`, name)); err != nil {
			tb.Fatalf("new database: %v", err)
		}
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, sh := range topo.AllShards() {
			if !sh.Primary.Running() {
				continue
			}
			if err := sh.Primary.Exec(ctx, "postgres", fmt.Sprintf(`DROP DATABASE IF EXISTS %q WITH (FORCE)`, name)); err != nil {
				tb.Errorf("drop database: %v", err)
			}
		}
	})
	for _, sh := range topo.AllShards() {
		if err := sh.WaitCaughtUp(ctx); err != nil {
			tb.Fatalf("new database: %v", err)
		}
	}
	return name
}

// dbName makes a database name (max 63 bytes) from a test name plus a
// random suffix.
func dbName(test string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(test) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	base := b.String()
	if len(base) > 45 {
		base = base[:45]
	}
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		panic(errors.Join(errors.New("topotest: random"), err))
	}
	return "t_" + base + "_" + hex.EncodeToString(rnd[:])
}
