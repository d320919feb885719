package main

import (
	"bytes"
	"errors"
	"math"
	"strings"
	"testing"
)

func TestParseStraceSummary(t *testing.T) {
	// Real strace 6.1 -c -f output: pgshard (7 threads), pgbouncer and
	// 16 PostgreSQL backends under pgbench -S -M simple, 16 clients.
	calls, err := parseStraceSummary(readTestdata(t, "strace-pgshard.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) != 9 || calls[0] != (straceCall{Syscall: "read", Calls: 14064, Errors: 7028, Seconds: 0.221286}) ||
		calls[1].Syscall != "write" || calls[1].Calls != 7027 || calls[1].Errors != 0 {
		t.Fatalf("pgshard: %+v", calls)
	}
	p := perQuery(calls, 3521)
	near := func(what string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 0.005 {
			t.Errorf("%s = %.4f, want %.4f", what, got, want)
		}
	}
	near("read", p.Read, 3.994)
	near("read errors", p.ReadErrors, 1.996)
	near("write", p.Write, 1.996)
	near("epoll", p.Poll, 1060.0/3521)
	near("futex", p.Futex, 26.0/3521)
	near("nanosleep", p.Nanosleep, 465.0/3521)
	near("other", p.Other, 27.0/3521)
	near("total", p.Total, 22668.0/3521)
	if p.TopOther != "epoll_ctl 0.00" {
		t.Errorf("top other %q", p.TopOther)
	}

	calls, err = parseStraceSummary(readTestdata(t, "strace-pgbouncer.txt"))
	if err != nil {
		t.Fatal(err)
	}
	p = perQuery(calls, 7195)
	near("pgbouncer recvfrom", p.Read, 15142.0/7195)
	near("pgbouncer recvfrom errors", p.ReadErrors, 732.0/7195)
	near("pgbouncer sendto", p.Write, 14401.0/7195)
	near("pgbouncer epoll_wait", p.Poll, 1983.0/7195)
	near("pgbouncer total", p.Total, 33059.0/7195)
	if !strings.HasPrefix(p.TopOther, "epoll_ctl ") {
		t.Errorf("pgbouncer top other %q", p.TopOther)
	}

	calls, err = parseStraceSummary(readTestdata(t, "strace-direct.txt"))
	if err != nil {
		t.Fatal(err)
	}
	p = perQuery(calls, 2633)
	near("direct other", p.Other, (3297.0+5264+12+24+2)/2633)
	if !strings.HasPrefix(p.TopOther, "lseek ") {
		t.Errorf("direct top other %q", p.TopOther)
	}
}

func TestParseStraceSummaryOddTables(t *testing.T) {
	// Two personalities, summed; a blank errors column.
	two := `System call usage summary for 64 bit mode:
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 60.00    0.000600           6       100        10 read
 40.00    0.000400           4       100           write
------ ----------- ----------- --------- --------- ----------------
100.00    0.001000           5       200        10 total
System call usage summary for 32 bit mode:
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
100.00    0.000100           1         5         1 read
------ ----------- ----------- --------- --------- ----------------
100.00    0.000100           1         5         1 total
`
	calls, err := parseStraceSummary(two)
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) != 2 || calls[0].Calls != 105 || calls[0].Errors != 11 || calls[1].Calls != 100 {
		t.Fatalf("got %+v", calls)
	}
	// No system call at all: an empty table.
	if calls, err := parseStraceSummary("% time     seconds  usecs/call     calls    errors syscall\n------ ----------- ----------- --------- --------- ----------------\n------ ----------- ----------- --------- --------- ----------------\n100.00    0.000000           0         0           total\n"); err != nil || len(calls) != 0 {
		t.Fatalf("empty table: %+v, %v", calls, err)
	}
	for name, bad := range map[string]string{
		"no table":     "strace: attach: ptrace(PTRACE_SEIZE, 1): Operation not permitted\n",
		"bad total":    strings.Replace(readTestdata(t, "strace-pgshard.txt"), "22668", "22669", 1),
		"bad calls":    strings.Replace(readTestdata(t, "strace-pgshard.txt"), "14064", "14x64", 1),
		"other header": "% time     seconds  usecs/call     calls syscall\n",
	} {
		if _, err := parseStraceSummary(bad); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

func TestParseStraceAttach(t *testing.T) {
	// pgshard: one process, all 7 threads attached at once.
	if a := parseStraceAttach(readTestdata(t, "strace-pgshard.stderr"), 1); a != (straceAttach{initial: 7}) {
		t.Errorf("pgshard: %+v", a)
	}
	// direct: the 16 pgbench backends, one thread each.
	if a := parseStraceAttach(readTestdata(t, "strace-direct.stderr"), 16); a != (straceAttach{initial: 16}) {
		t.Errorf("direct: %+v", a)
	}
	// A thread the process creates while traced (-f).
	s := "strace: Process 10 attached with 3 threads\nstrace: Process 17 attached\nstrace: Process 10 detached\n"
	if a := parseStraceAttach(s, 1); a != (straceAttach{initial: 3, later: 1}) {
		t.Errorf("later thread: %+v", a)
	}
}

func TestParsePgbenchLog(t *testing.T) {
	// pgbench 15 -l lines: client, transaction, latency µs, script,
	// epoch seconds, µs.
	log := "14 1 6619 0 1796125267 596270\n14 2 1351 0 1796125267 597641\n\n13 1 failed 0 1796125267 611912\n13 2 260 0 1796125268 000176\n"
	txs, failed, err := parsePgbenchLog(strings.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	want := []pgbenchTx{{1796125267596270, 6619}, {1796125267597641, 1351}, {1796125268000176, 260}}
	if failed != 1 || len(txs) != len(want) {
		t.Fatalf("got %+v, %d failed", txs, failed)
	}
	for i := range want {
		if txs[i] != want[i] {
			t.Errorf("tx %d: %+v, want %+v", i, txs[i], want[i])
		}
	}
	for _, bad := range []string{"14 1 6619 0 1796125267\n", "14 1 x 0 1796125267 1\n", "14 1 5 0 1796125267 y\n"} {
		if _, _, err := parsePgbenchLog(strings.NewReader(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestPercentile(t *testing.T) {
	var v []float64
	for i := 100; i >= 1; i-- {
		v = append(v, float64(i))
	}
	for p, want := range map[float64]float64{0.5: 50, 0.99: 99, 1: 100, 0.001: 1} {
		if got := percentile(v, p); got == nil || *got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
	if v[0] != 100 {
		t.Error("percentile sorted its input")
	}
	if got := percentile([]float64{7}, 0.99); got == nil || *got != 7 {
		t.Errorf("one value: %v", got)
	}
	if percentile(nil, 0.5) != nil || mean(nil) != nil {
		t.Error("empty: not nil")
	}
	if m := mean([]float64{1, 2, 6}); m == nil || *m != 3 {
		t.Errorf("mean %v", m)
	}
}

func TestParseChurn(t *testing.T) {
	// Real pgbench 15 -C output through pgshard.
	st, connMs, err := parseChurn(readTestdata(t, "pgbench-churn.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if st.TPS != 118.313423 || st.Transactions != 364 || connMs != 16.731 {
		t.Fatalf("got %+v, %v ms", st, connMs)
	}
	if _, _, err := parseChurn(readTestdata(t, "pgbench-ok.txt")); !errors.Is(err, errNoReport) {
		t.Errorf("a run without -C: %v", err)
	}
	if _, _, err := parseChurn("pgbench: error: connection refused\n"); !errors.Is(err, errNoReport) {
		t.Errorf("no report: %v", err)
	}
}

func TestRelayFlags(t *testing.T) {
	o, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	ro := o.relay
	if !ro.has(partSyscalls) || !ro.has(partLatency) || !ro.has(partChurn) || ro.clients != 16 ||
		len(ro.latencyClients) != 3 || ro.latencyClients[2] != 256 || ro.latencyMode != "simple" || ro.maxClients() != 256 {
		t.Fatalf("defaults: %+v", ro)
	}
	// 256 clients directly, with four pools of 20 held: above topology's 200.
	if s := ro.pgSettings([]string{tDirect, tPgshard}, 20); s["max_connections"] != "346" {
		t.Errorf("pgSettings: %v", s)
	}
	if s := ro.pgSettings([]string{tPgbouncer, tPgshard}, 20); s != nil {
		t.Errorf("pgSettings without direct: %v", s)
	}
	o, err = parseFlags([]string{"-relay=false"})
	if err != nil || o.relay.has(partSyscalls) || o.relay.maxClients() != 0 || o.relay.pgSettings([]string{tDirect}, 20) != nil {
		t.Fatalf("-relay=false: %+v, %v", o.relay, err)
	}
	o, err = parseFlags([]string{"-relay-parts", "latency", "-latency-clients", "1,8", "-relay-clients", "4"})
	if err != nil || o.relay.has(partSyscalls) || !o.relay.has(partLatency) || o.relay.maxClients() != 8 ||
		o.relay.pgSettings([]string{tDirect}, 20) != nil {
		t.Fatalf("-relay-parts latency: %+v, %v", o.relay, err)
	}
	for _, args := range [][]string{{"-relay-parts", "latency,bogus"}, {"-latency-clients", "1,0"}, {"-latency-clients", "x"},
		{"-latency-mode", "fast"}, {"-relay-duration", "0"}, {"-relay-clients", "0"}} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("parseFlags(%v) accepted", args)
		}
	}
}

func TestRelayReport(t *testing.T) {
	p50, p99 := 100.0, 900.0
	r := &relayReport{Parts: []string{partSyscalls, partLatency, partChurn}, Duration: "3s", Clients: 16, LatencyMode: "simple",
		Syscalls: []syscallRow{
			{Mode: "simple", Target: tPgshard, Threads: 7, Queries: 3521, PerQuery: perQuery([]straceCall{{Syscall: "read", Calls: 14064, Errors: 7028}}, 3521)},
			{Mode: "extended", Target: tPgbouncer, Problem: "strace did not attach"},
		},
		Latency: []latencyRow{{Target: tPgshard, Clients: 1, P50us: &p50, P99us: &p99}, {Target: tDirect, Clients: 256, Problem: "boom"}},
		Churn: []churnRow{{Target: tDirect, TPS: 10}, {Target: tPgbouncer, TPS: 100}, {Target: tPgshard, TPS: 150},
			{Target: "broken", TPS: 1, Problem: "exit 1"}},
	}
	r.summarize()
	if r.ChurnVsPgbouncer == nil || *r.ChurnVsPgbouncer != 1.5 || r.Churn[0].VsPgbouncer == nil || *r.Churn[0].VsPgbouncer != 0.1 || r.Churn[3].VsPgbouncer != nil {
		t.Fatalf("churn ratios: %+v", r.Churn)
	}
	var b bytes.Buffer
	r.printText(&b)
	out := b.String()
	for _, want := range []string{"System calls per query", "3.99", "1.00", "Latency per query", "Connection churn", "1.50",
		"note: syscalls extended/pgbouncer: strace did not attach", "note: latency 256 clients/direct: boom"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}
