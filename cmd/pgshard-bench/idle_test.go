package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseStatus(t *testing.T) {
	in := "Name:\tpgshard\nVmPeak:\t 1300000 kB\nVmHWM:\t   40960 kB\nVmRSS:\t   30720 kB\nRssAnon:\t 20000 kB\nThreads:\t8\nSigQ:\t0/94\n"
	m, err := parseStatus([]byte(in))
	if err != nil || m != (procMem{rssKB: 30720, hwmKB: 40960, threads: 8}) {
		t.Fatalf("parseStatus = %+v, %v", m, err)
	}
	for _, bad := range []string{
		"Name:\tx\nThreads:\t1\n",                                // a zombie: no VmRSS
		"VmHWM:\t1 kB\nVmRSS:\t1 kB\n",                           // no Threads
		"VmHWM:\t1 kB\nVmRSS:\t1 kB\nThreads:\tmany\n",           // bad Threads
		"VmHWM:\t1 kB\nVmRSS:\t1 MB\nThreads:\t1\n",              // unit
		"VmHWM:\t1 kB\nVmRSS:\t1 kB\nThreads:\t1 2\nVmRSS:\tx\n", // junk
	} {
		if m, err := parseStatus([]byte(bad)); err == nil {
			t.Errorf("parseStatus(%q) = %+v, want an error", bad, m)
		}
	}
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip(err)
	}
	m, err = parseStatus(b)
	if err != nil || m.rssKB <= 0 || m.hwmKB < m.rssKB || m.threads < 1 {
		t.Fatalf("own status: %+v, %v", m, err)
	}
}

func TestParseNofileLimit(t *testing.T) {
	in := `Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max processes             unlimited            unlimited            processes
Max open files            1024                 20000                files
Max locked memory         8388608              8388608              bytes
`
	soft, hard, err := parseNofileLimit([]byte(in))
	if err != nil || soft != 1024 || hard != 20000 {
		t.Fatalf("parseNofileLimit = %d, %d, %v", soft, hard, err)
	}
	soft, hard, err = parseNofileLimit([]byte("Max open files            unlimited            unlimited            files\n"))
	if err != nil || soft != -1 || hard != -1 {
		t.Fatalf("unlimited: %d, %d, %v", soft, hard, err)
	}
	for _, bad := range []string{"Max processes 1 1 processes\n", "Max open files 12\n", "Max open files x 12 files\n"} {
		if _, _, err := parseNofileLimit([]byte(bad)); err == nil {
			t.Errorf("parseNofileLimit(%q): no error", bad)
		}
	}
	if b, err := os.ReadFile("/proc/self/limits"); err == nil {
		if soft, hard, err := parseNofileLimit(b); err != nil || soft == 0 || hard != -1 && soft > hard {
			t.Fatalf("own limits: %d, %d, %v", soft, hard, err)
		}
	}
}

func TestBytesPerClient(t *testing.T) {
	if v := bytesPerClient(10000, 10000+40000, 10000); v == nil || *v != 4096 {
		t.Fatalf("40000 kB over 10000 clients = %v, want 4096 B", v)
	}
	if v := bytesPerClient(8708, 10672, 2000); v == nil || *v != 1005.568 {
		t.Fatalf("= %v, want 1005.568", *v)
	}
	if v := bytesPerClient(100, 90, 10); v == nil || *v != -1024 {
		t.Fatalf("shrinking RSS = %v, want -1024", v)
	}
	if v := bytesPerClient(1, 2, 0); v != nil {
		t.Fatalf("no clients = %v, want nil", *v)
	}
}

func TestIdleCap(t *testing.T) {
	// Fits: 10000 + 30 open + 20 pool + 64 spare ≤ 20000.
	if n, why := idleCap(10000, 20000, 40, 20000, 30, 20); n != 10000 || why != "" {
		t.Fatalf("10000 = %d, %q", n, why)
	}
	// The proxy's limit binds: 20000 - 30 - 20 - 64.
	n, why := idleCap(50000, 20000, 40, 20000, 30, 20)
	if n != 19886 || !strings.Contains(why, "50000 clients do not fit") || !strings.Contains(why, "proxy's RLIMIT_NOFILE is 20000") {
		t.Fatalf("50000 = %d, %q", n, why)
	}
	// The bench's limit binds.
	n, why = idleCap(50000, 30000, 100, 60000, 30, 20)
	if n != 30000-100-64 || strings.Contains(why, "proxy") || !strings.Contains(why, "bench's RLIMIT_NOFILE is 30000") {
		t.Fatalf("bench-bound = %d, %q", n, why)
	}
	// Unlimited.
	if n, why := idleCap(50000, -1, 100, -1, 30, 20); n != 50000 || why != "" {
		t.Fatalf("unlimited = %d, %q", n, why)
	}
	// Nothing fits.
	if n, why := idleCap(10, 50, 40, 1000, 0, 0); n != 0 || why == "" {
		t.Fatalf("tiny limit = %d, %q", n, why)
	}
}

func TestSourceAddr(t *testing.T) {
	for i, want := range map[int]string{0: "127.0.0.1", 19999: "127.0.0.1", 20000: "127.0.0.2", 49999: "127.0.0.3", 255 * 20000: "127.0.1.0"} {
		if got := sourceAddr(i).String(); got != want {
			t.Errorf("sourceAddr(%d) = %s, want %s", i, got, want)
		}
	}
}

func TestParseIdleCounts(t *testing.T) {
	for in, want := range map[string][]int{
		"10000":            {10000},
		"50000, 10_000,0":  {10000, 50000},
		"0":                nil,
		"":                 nil,
		"5000,5000,10000 ": {5000, 10000},
	} {
		got, err := parseIdleCounts(in)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("parseIdleCounts(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"-1", "ten", "1e4"} {
		if _, err := parseIdleCounts(bad); err == nil {
			t.Errorf("parseIdleCounts(%q): no error", bad)
		}
	}
}

func TestParseFlagsIdle(t *testing.T) {
	o, err := parseFlags(nil)
	if err != nil || !slices.Equal(o.idle.counts, []int{10000}) || o.idle.only || o.rounds != 3 {
		t.Fatalf("defaults: %+v, %v", o.idle, err)
	}
	if got := o.peerMaxClients(); got != 10000 {
		t.Fatalf("peerMaxClients = %d, want 10000", got)
	}
	if !strings.Contains(pgshardConfig(1, 2, peerConfig{clients: 16, maxClients: o.peerMaxClients()}), "max_clients = 10100\n") {
		t.Fatal("pgshard's max_clients does not allow 10000 idle clients")
	}
	o, err = parseFlags([]string{"-idle", "0"})
	if err != nil || o.idle.enabled() {
		t.Fatalf("-idle 0: %+v, %v", o.idle, err)
	}
	o, err = parseFlags([]string{"-idle-only", "-idle", "10000,50000"})
	if err != nil || !o.idle.only || o.rounds != 0 || o.warmup != 0 || o.sharded.enabled || o.reshard.enabled() || o.relay.enabled ||
		!slices.Equal(o.targets, []string{tPgbouncer, tPgshard}) || o.idle.maxCount() != 50000 {
		t.Fatalf("-idle-only: %+v, %v", o, err)
	}
	for _, args := range [][]string{
		{"-idle-only", "-idle", "0"},
		{"-idle-only", "-targets", "direct,pgpool"},
		{"-idle", "-5"},
		{"-idle-concurrency", "0"},
	} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("parseFlags(%v) accepted", args)
		}
	}
}

func TestIdleReport(t *testing.T) {
	bpc := func(v float64) *float64 { return &v }
	rep := &idleReport{BenchFDSoft: 20000, BenchFDHard: 20000, Concurrency: 32, Settle: "2s", Rows: []idleRow{
		{Target: tPgbouncer, Requested: 10000, Clients: 10000, Connected: 10000, RSSBeforeKB: 8708, RSSIdleKB: 17250,
			BytesPerClient: bpc(874.7), AcceptsAfter: true},
		{Target: tPgshard, Requested: 10000, Clients: 10000, Connected: 10000, RSSBeforeKB: 23000, RSSIdleKB: 230000,
			BytesPerClient: bpc(21196.8), AcceptsAfter: true},
		{Target: tPgshard, Requested: 50000, Clients: 19886, Connected: 19880, ConnectErrors: 6, Capped: "50000 clients do not fit: …",
			BytesPerClient: bpc(3000), AcceptsAfter: true},
	}}
	if v := rep.Rows[0].targetVerdict(); v != "" {
		t.Errorf("pgbouncer verdict %q", v)
	}
	if v := rep.Rows[1].targetVerdict(); v != "issue 10 target ≤ 4096 B/client at 10000: MISSED (21197)" {
		t.Errorf("pgshard 10000 verdict %q", v)
	}
	if v := rep.Rows[2].targetVerdict(); v != "issue 10 target 50000 held: not measured (capped at 19886 by the fd limit)" {
		t.Errorf("pgshard 50000 verdict %q", v)
	}
	ok := idleRow{Target: tPgshard, Requested: 10000, Clients: 10000, Connected: 10000, BytesPerClient: bpc(4000)}
	if v := ok.targetVerdict(); v != "issue 10 target ≤ 4096 B/client at 10000: met (4000)" {
		t.Errorf("met verdict %q", v)
	}
	var b bytes.Buffer
	rep.printText(&b)
	out := b.String()
	for _, want := range []string{"16.8 MiB", "875", "21197", "19880/19886 (of 50000)", "MISSED", "capped at 19886", "soft 20000, hard 20000"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}

// TestIdleDialerSource checks that a client past the first perSourceAddr
// dials from 127.0.0.2.
func TestIdleDialerSource(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Skip(err)
	}
	defer ln.Close()
	for _, i := range []int{0, perSourceAddr} {
		ctx := context.WithValue(context.Background(), srcKey{}, sourceAddr(i))
		c, err := idleDialer(ctx, "tcp", ln.Addr().String())
		if err != nil {
			t.Fatalf("dial as client %d: %v", i, err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		got := s.RemoteAddr().(*net.TCPAddr).IP.String()
		c.Close()
		s.Close()
		if want := sourceAddr(i).String(); got != want {
			t.Errorf("client %d came from %s, want %s", i, got, want)
		}
	}
}

func TestParseGoStats(t *testing.T) {
	in := `# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 10042
go_memstats_heap_inuse_bytes 1.1534336e+08
go_memstats_heap_idle_bytes 4.2e+06
go_memstats_stack_inuse_bytes 8.4e+07
pgshard_clients 10000
`
	g, err := parseGoStats([]byte(in))
	if err != nil || g != (goStats{Goroutines: 10042, HeapInuse: 115343360, StackInuse: 84000000}) {
		t.Fatalf("parseGoStats = %+v, %v", g, err)
	}
	if _, err := parseGoStats([]byte("go_goroutines 3\n")); err == nil {
		t.Fatal("no error without the memstats")
	}
	if _, err := parseGoStats([]byte("go_goroutines x\ngo_memstats_heap_inuse_bytes 1\ngo_memstats_stack_inuse_bytes 1\n")); err == nil {
		t.Fatal("no error for a bad value")
	}
	r := idleRow{Connected: 10000, GoBefore: &goStats{Goroutines: 42, HeapInuse: 10 << 20, StackInuse: 1 << 20},
		GoIdle: &goStats{Goroutines: 10042, HeapInuse: 10<<20 + 40960000, StackInuse: 1<<20 + 81920000}}
	if got := r.goroutines(); got != "42 → 10042" {
		t.Errorf("goroutines = %q", got)
	}
	if got, want := r.goNote(), "Go runtime per idle client: 1.00 goroutines, heap in use 4096 B, stacks 8192 B"; !strings.HasPrefix(got, want) {
		t.Errorf("goNote = %q, want prefix %q", got, want)
	}
	if (idleRow{}).goroutines() != "-" || (idleRow{}).goNote() != "" {
		t.Error("figures without a scrape")
	}
}

func TestStillMoving(t *testing.T) {
	// Grew by 100000 kB over before: a change of 5000 kB is 5%, not more.
	flat := []int64{110000, 108000, 105000, 105000, 105000, 105000, 105000, 105000}
	if e, ok := stillMoving(flat, 5000); ok || e != 105000 {
		t.Errorf("flat = %d, %v", e, ok)
	}
	// Dropped from 120000 to 60000 in the last 5 s.
	if e, ok := stillMoving([]int64{120000, 120000, 120000, 110000, 60000, 60000}, 20000); !ok || e != 120000 {
		t.Errorf("dropping = %d, %v", e, ok)
	}
	if _, ok := stillMoving([]int64{1}, 0); ok {
		t.Error("one reading is not moving")
	}
	if _, ok := stillMoving([]int64{10, 900}, 1000); ok {
		t.Error("no growth over before: not reported")
	}
}

func TestSampleRSS(t *testing.T) {
	series, early, last, err := sampleRSS(context.Background(), os.Getpid(), 1500*time.Millisecond)
	if err != nil || len(series) != 2 || early.rssKB <= 0 || last.rssKB != series[1] || early != last {
		t.Fatalf("sampleRSS = %v, %+v, %+v, %v", series, early, last, err)
	}
}
