package main

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgshard/pgshard/config"
	"github.com/pgshard/pgshard/shardmap"
)

func TestShardNodeConfigLoads(t *testing.T) {
	pc := peerConfig{poolSize: 20, clients: 16}
	path := filepath.Join(t.TempDir(), "pgshard.toml")
	body := shardNodeConfig(25010, 25011, 25012, "/tmp/x/raft", "tok", []int{25000, 25001}, pc)
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	if !cfg.Cluster.Enabled() || !cfg.Cluster.Bootstrap || cfg.Cluster.RaftListen != "127.0.0.1:25012" || cfg.AdminListen != "127.0.0.1:25011" ||
		cfg.AdminToken != "tok" || len(cfg.Shards) != 2 || cfg.Shards[1].Name != "shard1" || cfg.Shards[1].Primary != "host=127.0.0.1 port=25001" {
		t.Fatalf("config: %+v", cfg)
	}
}

// ring2 is a two-shard ring as pgshard builds it when a second shard joins.
func ring2(t *testing.T) func(int64) (int, error) {
	t.Helper()
	r, err := shardmap.InitialRing("shard0", shardmap.DefaultVnodes).AddShard("shard1", shardmap.DefaultVnodes)
	if err != nil {
		t.Fatal(err)
	}
	return func(k int64) (int, error) { return shardIndex(r.Lookup(shardmap.HashInt64(k))) }
}

func TestSplitKeys(t *testing.T) {
	owner := ring2(t)
	per, err := splitKeys(1000, 2, owner)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int64]bool{}
	for i, keys := range per {
		if len(keys) != 500 {
			t.Fatalf("shard %d: %d keys, want 500", i, len(keys))
		}
		for _, k := range keys {
			if o, _ := owner(k); o != i || seen[k] {
				t.Fatalf("key %d on shard %d (owner %d, seen %v)", k, i, o, seen[k])
			}
			seen[k] = true
		}
	}
	if _, err := splitKeys(10, 2, func(int64) (int, error) { return 0, nil }); err == nil {
		t.Fatal("a ring giving every key to one shard was accepted")
	}
}

func TestCommitPairs(t *testing.T) {
	owner := ring2(t)
	cross, same, err := commitPairs(1000, 100, owner)
	if err != nil {
		t.Fatal(err)
	}
	if len(cross) != 100 || len(same) != 100 {
		t.Fatalf("%d cross, %d same pairs", len(cross), len(same))
	}
	used := map[int64]bool{}
	perShard := [2]int{}
	for _, p := range append(cross, same...) {
		for _, k := range p {
			if used[k] || k < 1 || k > 1000 {
				t.Fatalf("key %d used twice or out of range", k)
			}
			used[k] = true
		}
	}
	for _, p := range cross {
		a, _ := owner(p[0])
		b, _ := owner(p[1])
		if a == b {
			t.Fatalf("cross pair %v on one shard", p)
		}
	}
	for _, p := range same {
		a, _ := owner(p[0])
		b, _ := owner(p[1])
		if a != b {
			t.Fatalf("same pair %v on two shards", p)
		}
		perShard[a]++
	}
	if perShard[0] != 50 || perShard[1] != 50 {
		t.Fatalf("same pairs per shard: %v", perShard)
	}
	if _, _, err := commitPairs(100, 100, owner); err == nil {
		t.Fatal("too few keys accepted")
	}
}

func TestInsertBatches(t *testing.T) {
	b := insertBatches(5, 2)
	if len(b) != 3 || !strings.HasSuffix(b[2], "VALUES (5,0,'user5')") ||
		b[0] != "INSERT INTO bench_users (user_id, v, name) VALUES (1,0,'user1'),(2,0,'user2')" {
		t.Fatalf("%q", b)
	}
}

func TestKeyedScripts(t *testing.T) {
	s := keyedScripts("bench_users", 100000)
	if !strings.HasPrefix(s["read"], "\\set uid random(1, 100000)\n") || strings.Contains(s["read"], "UPDATE") ||
		!strings.Contains(s["mix"], "WHERE user_id = :uid;\nUPDATE bench_users SET v = v + 1 WHERE user_id = :uid;\n") {
		t.Fatalf("%q", s)
	}
}

func TestParseMemStatus(t *testing.T) {
	in := "Name:\tpgshard\nVmPeak:\t 1300000 kB\nVmHWM:\t   40960 kB\nVmRSS:\t   30720 kB\nThreads:\t8\n"
	rss, hwm, err := parseMemStatus(bufio.NewScanner(strings.NewReader(in)))
	if err != nil || rss != 30<<20 || hwm != 40<<20 {
		t.Fatalf("rss %d hwm %d err %v", rss, hwm, err)
	}
	if _, _, err := parseMemStatus(bufio.NewScanner(strings.NewReader("Name:\tx\n"))); err == nil {
		t.Fatal("no error without VmRSS")
	}
	rss, hwm, err = memStatus(os.Getpid())
	if err != nil || rss <= 0 || hwm < rss {
		t.Fatalf("own status: rss %d hwm %d err %v", rss, hwm, err)
	}
}

func TestDecodeInt8(t *testing.T) {
	if v, err := decodeInt8([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe}, 1); err != nil || v != -2 {
		t.Fatalf("binary: %d %v", v, err)
	}
	if v, err := decodeInt8([]byte("-42"), 0); err != nil || v != -42 {
		t.Fatalf("text: %d %v", v, err)
	}
	if _, err := decodeInt8([]byte{1}, 1); err == nil {
		t.Fatal("short binary accepted")
	}
}

func TestShardedSummarize(t *testing.T) {
	r := &shardedReport{Rows: 1000, ScanRows: 100, Modes: []string{"simple", "prepared"}, Rounds: 2}
	add := func(round int, w, mode, target string, ok bool, tps float64) {
		r.Runs = append(r.Runs, shardedRun1{Round: round, Workload: w, Mode: mode, Target: target, OK: ok, TPS: tps, ProxyCPUus: f(10)})
	}
	add(0, "mix", "prepared", tDirect, true, 1) // warm-up: ignored
	for round := 1; round <= 2; round++ {
		for _, w := range workloads {
			for _, m := range r.Modes {
				add(round, w, m, tDirect, true, 1000*float64(round))
				add(round, w, m, tDirect2, true, 920*float64(round))
				add(round, w, m, tPgshard1, true, 600*float64(round))
				add(round, w, m, tPgshard2, true, 570*float64(round))
			}
		}
	}
	add(3, "read", "simple", tPgshard2, false, 0)
	r.Runs[len(r.Runs)-1].Problem = "exit 2"
	g := int64(10 << 20)
	r.Scans = []scanResult{
		{Rep: 0, Mode: "extended", Target: tDirect, OK: true, RowsPerSec: 1},
		{Rep: 1, Mode: "extended", Target: tDirect, OK: true, RowsPerSec: 2e6},
		{Rep: 1, Mode: "extended", Target: tPgshard2, OK: true, RowsPerSec: 1.5e6, RSSGrowth: &g},
	}
	r.Commit = &commitResult{Statements: 10, CrossMs: stats([]float64{2, 3, 4}), SameMs: stats([]float64{1, 1, 1}), DirectMs: stats([]float64{0.5})}
	r.Commit.Ratio = 3
	r.summarize()
	if len(r.Keyed) != 4 {
		t.Fatalf("keyed rows: %+v", r.Keyed)
	}
	k := r.Keyed[0]
	if k.Workload != "read" || k.Mode != "simple" || *k.Direct != 1500 || *k.One != 900 || *k.Two != 855 || *k.TwoVsOne != 0.95 || k.FailedRuns != 1 || *k.OneCPUus != 10 ||
		*k.Direct2 != 1380 || *k.Dir2VsDir != 0.92 {
		t.Fatalf("read/simple: %+v", k)
	}
	if len(r.Scan) != 1 || *r.Scan[0].Ratio != 0.75 || r.Scan[0].MaxRSSGrowth != g {
		t.Fatalf("scan: %+v", r.Scan)
	}
	var out bytes.Buffer
	r.printText(&out)
	for _, want := range []string{"read      simple", "0.95×", "worst 0.95× (met)", "0.92×", "(worst 0.92× of one server)", "0.75×", "10.0 MiB", "(met)", "3.00× (target < 3×: MISSED)", "problem: keyed read simple round 3 pgshard-2shards: exit 2"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestParseFlagsSharded(t *testing.T) {
	o, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	so := o.sharded
	if !so.enabled || so.rows != 100000 || so.scanRows != 1000000 || len(so.modes) != 2 || so.rounds < 1 {
		t.Fatalf("defaults: %+v", so)
	}
	if o, err := parseFlags([]string{"-sharded=false"}); err != nil || o.sharded.enabled {
		t.Fatalf("-sharded=false: %+v, %v", o.sharded, err)
	}
	if o, err := parseFlags([]string{"-targets", ""}); err != nil || len(o.targets) != 0 {
		t.Fatalf("-targets '': %v, %v", o.targets, err)
	}
	for _, args := range [][]string{{"-targets", "", "-sharded=false", "-reshard-rows", "0"}, {"-sharded-modes", "bogus"}, {"-commits", "20000"}, {"-sharded-duration", "0"}} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("parseFlags(%v) accepted", args)
		}
	}
}
