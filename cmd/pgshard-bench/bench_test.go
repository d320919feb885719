package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgshard/pgshard/config"
)

func readTestdata(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestParsePgbenchOK(t *testing.T) {
	// Real output of pgbench 15 (-S -M simple) through pgshard.
	s, err := parsePgbench(readTestdata(t, "pgbench-ok.txt"))
	if err != nil {
		t.Fatal(err)
	}
	want := pgbenchStats{TPS: 22240.359215, Transactions: 43409, Scale: 2}
	if s != want {
		t.Fatalf("got %+v, want %+v", s, want)
	}
}

func TestParsePgbenchAborted(t *testing.T) {
	// Real output of pgbench 15 -M prepared through pgbouncer 1.18 in
	// transaction pooling: 14 clients abort, the run still reports.
	s, err := parsePgbench(readTestdata(t, "pgbench-aborted.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if s.Aborted != 14 || !s.RunAborted || s.Transactions != 31348 || s.Scale != 2 || s.Failed != 0 || s.TPS != 16391.453939 {
		t.Fatalf("got %+v", s)
	}
	if !strings.Contains(s.FirstError, `prepared statement "P_0" already exists`) {
		t.Fatalf("first error %q", s.FirstError)
	}
}

func TestParsePgbenchFailedAndMissing(t *testing.T) {
	out := "number of transactions actually processed: 10\nnumber of failed transactions: 3 (23.077%)\ntps = 5.5 (without initial connection time)\n"
	s, err := parsePgbench(out)
	if err != nil || s.Failed != 3 || s.Transactions != 10 || s.TPS != 5.5 {
		t.Fatalf("got %+v, %v", s, err)
	}
	_, err = parsePgbench("pgbench: error: connection to server at \"127.0.0.1\", port 1 failed: Connection refused\n")
	if !errors.Is(err, errNoReport) {
		t.Fatalf("err = %v, want errNoReport", err)
	}
}

func TestParseStat(t *testing.T) {
	// comm with spaces and a parenthesis, as /proc allows.
	line := "4242 (pgpool: wait (x)) S 4000 4000 18272 0 -1 4194304 103 0 0 0 120 35 7 9 20 0 1 0 100346 3133440 382\n"
	st, err := parseStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	want := procStat{ppid: 4000, pgrp: 4000, state: 'S', utime: 120, stime: 35, cutime: 7, cstime: 9}
	if st != want {
		t.Fatalf("got %+v, want %+v", st, want)
	}
	if _, err := parseStat([]byte("4242 (x) S 1 2")); err == nil {
		t.Fatal("short stat parsed")
	}
}

func TestTreeTicksSelf(t *testing.T) {
	own, err := readStat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	sum, err := treeTicks(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if sum < own.utime+own.stime {
		t.Fatalf("tree %d < own %d", sum, own.utime+own.stime)
	}
	if _, err := treeTicks(1 << 30); err == nil {
		t.Fatal("no error for a missing pid")
	}
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := median(c.in); got == nil || *got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
	if median(nil) != nil {
		t.Error("median(nil) not nil")
	}
}

func f(v float64) *float64 { return &v }

func TestSummarize(t *testing.T) {
	r := &report{Config: reportConfig{Modes: []string{"simple", "prepared"}, Targets: []string{tDirect, tPgbouncer, tPgshard}}}
	add := func(round int, mode, target string, ok bool, tps float64, cpu *float64) {
		r.Runs = append(r.Runs, runResult{Round: round, Mode: mode, Target: target, OK: ok, TPS: tps, ProxyCPUus: cpu, PGCPUus: f(10)})
	}
	add(0, "simple", tDirect, true, 1, nil) // warm-up: ignored
	for round, k := range []float64{1, 3, 2} {
		add(round+1, "simple", tDirect, true, 1000*k, nil)
		add(round+1, "simple", tPgbouncer, true, 500*k, f(10*k))
		add(round+1, "simple", tPgshard, true, 800*k, f(15*k))
		add(round+1, "prepared", tDirect, true, 1000*k, nil)
		add(round+1, "prepared", tPgshard, true, 900*k, f(12*k))
		add(round+1, "prepared", tPgbouncerSession, true, 1000*k, f(6*k))
	}
	r.Runs = append(r.Runs, runResult{Round: 1, Mode: "prepared", Target: tPgbouncer, AbortedClients: 14, Problem: "exit 2"})
	r.summarize()
	get := func(mode, target string) summaryRow {
		for _, s := range r.Summary {
			if s.Mode == mode && s.Target == target {
				return s
			}
		}
		t.Fatalf("no row %s/%s in %+v", mode, target, r.Summary)
		return summaryRow{}
	}
	sh := get("simple", tPgshard)
	if *sh.TPS != 1600 || *sh.VsDirect != 0.8 || *sh.ProxyCPUus != 30 || *sh.VsPgbouncer != 1.5 || sh.CPUBase != tPgbouncer || sh.Runs != 3 {
		t.Fatalf("simple/pgshard: %+v", sh)
	}
	if d := get("simple", tDirect); d.ProxyCPUus != nil || d.VsPgbouncer != nil || *d.VsDirect != 1 {
		t.Fatalf("simple/direct: %+v", d)
	}
	pb := get("prepared", tPgbouncer)
	if pb.TPS != nil || pb.OKRuns != 0 || pb.AbortedClients != 14 || !strings.HasPrefix(pb.Note, naPrepared) {
		t.Fatalf("prepared/pgbouncer: %+v", pb)
	}
	ps := get("prepared", tPgshard)
	if *ps.VsPgbouncer != 2 || ps.CPUBase != tPgbouncerSession {
		t.Fatalf("prepared/pgshard: %+v", ps)
	}
	if ref := get("prepared", tPgbouncerSession); !strings.Contains(ref.Note, "SESSION pooling") {
		t.Fatalf("reference row: %+v", ref)
	}
	var out bytes.Buffer
	r.printText(&out)
	for _, want := range []string{"prepared  pgbouncer-session (ref)", "2.00×*", "n/a"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
}

func TestPgshardConfigLoads(t *testing.T) {
	pc := peerConfig{poolSize: 20, clients: 16, split: true, be: backend{primaryPort: 25000, replicaPorts: []int{25001, 25002}}}
	path := filepath.Join(t.TempDir(), "pgshard.toml")
	if err := os.WriteFile(path, []byte(pgshardConfig(25010, 25011, pc)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:25010" || cfg.Pool.Mode != config.PoolTransaction || cfg.Pool.Size != 20 ||
		len(cfg.Shards) != 1 || cfg.Shards[0].Primary != "host=127.0.0.1 port=25000" || len(cfg.Shards[0].Replicas) != 2 {
		t.Fatalf("config: %+v", cfg)
	}
	pc.split = false
	if err := os.WriteFile(path, []byte(pgshardConfig(25010, 25011, pc)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err = config.Load(path, func(string) string { return "" })
	if err != nil || len(cfg.Shards[0].Replicas) != 0 {
		t.Fatalf("without -split: %+v, %v", cfg.Shards, err)
	}
}

func TestPgpoolConfigBackends(t *testing.T) {
	pc := peerConfig{poolSize: 20, clients: 16, be: backend{primaryPort: 25000, replicaPorts: []int{25001}}}
	c := pgpoolConfig("/tmp/x", 25020, 25021, 20, pc)
	for _, want := range []string{"backend_port0 = 25000", "backend_port1 = 25001", "load_balance_mode = on",
		"num_init_children = 20", "max_pool = 1", "connection_cache = on", "enable_pool_hba = off", "sr_check_period = 0"} {
		if !strings.Contains(c, want+"\n") {
			t.Errorf("pgpool.conf lacks %q", want)
		}
	}
	pc.be.replicaPorts = nil
	if c := pgpoolConfig("/tmp/x", 25020, 25021, 20, pc); !strings.Contains(c, "load_balance_mode = off\n") || strings.Contains(c, "backend_port1") {
		t.Errorf("single backend config:\n%s", c)
	}
}

func TestParseFlags(t *testing.T) {
	o, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if o.rounds != 3 || o.scale != 10 || o.clients != 16 || o.duration.Seconds() != 10 || len(o.modes) != 3 || len(o.targets) != 4 {
		t.Fatalf("defaults: %+v", o)
	}
	if o, err := parseFlags([]string{"-duration", "5", "-warmup", "1m"}); err != nil || o.duration.Seconds() != 5 || o.warmup.Minutes() != 1 {
		t.Fatalf("-duration 5 -warmup 1m: %v, %v", o.duration, err)
	}
	for _, args := range [][]string{{"-duration", "5x"}, {"-modes", "simple,bogus"}, {"-split"}, {"-rounds", "0"}, {"-targets", "pgcat"}} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("parseFlags(%v) accepted", args)
		}
	}
}
