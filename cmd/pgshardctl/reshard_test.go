package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgshard/pgshard/admin"
	"github.com/pgshard/pgshard/resharder"
	"github.com/pgshard/pgshard/shardmap"
)

// scriptedResharder answers Status with its script, one step per call
// (the last step repeats); the other calls answer from fields.
type scriptedResharder struct {
	mu     sync.Mutex
	specs  []resharder.Spec
	script []step
	calls  int
	err    error // Plan, Start and Cancel fail with it when set
}

type step struct {
	st  *resharder.Status
	err error
}

func (f *scriptedResharder) Plan(_ context.Context, spec resharder.Spec) (*resharder.Plan, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.specs = append(f.specs, spec)
	if f.err != nil {
		return nil, f.err
	}
	to := spec.Add.Name
	return &resharder.Plan{Spec: spec, RingVersion: 4,
		Moves: []shardmap.Move{
			{Range: shardmap.Range{Start: -4611686018427387904, End: 0}, From: "s0", To: to},
			{Range: shardmap.Range{Start: 4611686018427387904, End: 6917529027641081856}, From: "s1", To: to},
		},
		Tables: []resharder.TableMove{
			{Table: "orders", Kind: "sharded", From: "s0", To: to, Rows: 1234567, Bytes: 3 << 20},
			{Table: "orders", Kind: "sharded", From: "s1", To: to, Rows: 1000, Bytes: 65536},
			{Table: "countries", Kind: "reference", From: "s0", To: to, Rows: 2, Bytes: 8192},
		},
		Ownership: map[string]float64{"s0": 1.0 / 3, "s1": 1.0 / 3, to: 1.0 / 3}}, nil
}

func (f *scriptedResharder) Start(_ context.Context, spec resharder.Spec) (*resharder.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.specs = append(f.specs, spec)
	if f.err != nil {
		return nil, f.err
	}
	return &resharder.Status{ID: "j1", Phase: "schema", Spec: spec, Started: time.Now()}, nil
}

func (f *scriptedResharder) Status(context.Context) (*resharder.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.script) == 0 {
		return nil, fmt.Errorf("status: %w", resharder.ErrNoJob)
	}
	s := f.script[min(f.calls, len(f.script)-1)]
	f.calls++
	return s.st, s.err
}

func (f *scriptedResharder) Cancel(context.Context) (*resharder.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	return &resharder.Status{ID: "j1", Phase: "cancelling", Spec: resharder.Spec{Remove: "s1", Database: "app"}}, nil
}

func (f *scriptedResharder) set(err error, script ...step) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err, f.script, f.calls = err, script, 0
}

// reshardAdmin serves a one-node cluster's admin API with f as its
// resharder, and points pgshardctl at it.
func reshardAdmin(t *testing.T, f admin.Resharder) {
	t.Helper()
	st := openStore(t)
	srv, err := admin.New(admin.Config{Store: st, Token: "tok", Resharder: f})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	srv.Register(mux)
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	t.Setenv("PGSHARD_ADMIN_URL", ts.URL)
	t.Setenv("PGSHARD_ADMIN_TOKEN", "tok")
}

func status(phase string, copied int64, finished bool) *resharder.Status {
	start := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	return &resharder.Status{ID: "j1", Phase: phase, Spec: resharder.Spec{Add: &resharder.NewShard{Name: "s2", Primary: "host=x port=1"}, Database: "app"},
		Started: start, Updated: start.Add(90 * time.Second),
		Tables: []resharder.TableProgress{
			{TableMove: resharder.TableMove{Table: "orders", Kind: "sharded", From: "s0", To: "s2", Rows: 1000}, Copied: copied},
			{TableMove: resharder.TableMove{Table: "countries", Kind: "reference", From: "s0", To: "s2", Rows: 2}, Copied: 2},
		},
		LagBytes: 2 << 20, RowsPerSec: 1500, ETA: 42 * time.Second, Finished: finished}
}

func TestReshardCommands(t *testing.T) {
	f := &scriptedResharder{}
	reshardAdmin(t, f)
	must := func(want string, args ...string) string {
		t.Helper()
		code, out, errs := ctlRun(t, args...)
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("pgshardctl %s: exit %d, want output containing %q\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, want, out, errs)
		}
		return out
	}
	fails := func(wantCode int, wantErr string, args ...string) {
		t.Helper()
		code, out, errs := ctlRun(t, args...)
		if code != wantCode || !strings.Contains(errs, wantErr) {
			t.Errorf("pgshardctl %s: exit %d (want %d), stderr %q (want %q), stdout %q", strings.Join(args, " "), code, wantCode, errs, wantErr, out)
		}
	}

	out := must("ranges that change owner: 2 (37.50% of the hash space)", "reshard", "plan", "--add", "s2", "--primary", "host=x port=1",
		"--replica", "host=y port=1", "--database", "shop")
	for _, want := range []string{
		"plan: add shard s2 (primary host=x port=1, 1 replica) in database shop, against ring version 4",
		"-4611686018427387904", "0                    25.000%  s0    s2", "6917529027641081856  12.500%  s1    s2",
		"orders     sharded    s0    s2  1,234,567  3.0 MiB",
		"countries  reference  s0    s2  2          8.0 KiB",
		"total                           1,235,569  3.1 MiB",
		"s2  33.33%",
		"nothing was changed",
		"pgshardctl reshard start --add s2 --primary 'host=x port=1' --replica 'host=y port=1' --database shop",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("plan output lacks %q:\n%s", want, out)
		}
	}
	if got := f.specs[0]; got.Add == nil || got.Add.Name != "s2" || got.Add.Replicas[0] != "host=y port=1" || got.Database != "shop" || got.Remove != "" {
		t.Errorf("spec the resharder got: %+v", got)
	}
	out = must(`"ring_version": 4`, "reshard", "plan", "--add", "s2", "--primary", "host=x port=1", "--json")
	var p resharder.Plan
	if err := json.Unmarshal([]byte(out), &p); err != nil || len(p.Tables) != 3 || p.Moves[1].From != "s1" {
		t.Errorf("plan --json: %v %+v", err, p)
	}

	fails(2, "not both", "reshard", "plan", "--add", "s2", "--primary", "p", "--remove", "s1")
	fails(2, "give --add NAME --primary DSN, or --remove NAME", "reshard", "start")
	fails(2, "--add needs --primary", "reshard", "start", "--add", "s2")
	fails(2, "go with --add", "reshard", "plan", "--remove", "s1", "--replica", "r")
	fails(2, "want only flags", "reshard", "plan", "--remove", "s1", "extra")
	fails(2, "unknown subcommand", "reshard", "frobnicate")

	must("reshard job j1 started: remove shard s1; phase schema", "reshard", "start", "--remove", "s1")
	f.set(fmt.Errorf("start: job j0 is in phase copy: %w", resharder.ErrJobRunning))
	fails(1, "one job at a time", "reshard", "start", "--remove", "s1")
	fails(1, "one job at a time", "reshard", "plan", "--add", "s2", "--primary", "p")
	f.set(fmt.Errorf("cancel: ring committed: %w", resharder.ErrPastCutover))
	fails(1, "can only finish", "reshard", "cancel")
	f.set(nil)
	must("reshard job j1 (remove shard s1 in database app) is being cancelled: phase cancelling", "reshard", "cancel")

	fails(1, "start one with `pgshardctl reshard start`", "reshard", "status")
	f.set(nil, step{st: status("copy", 500, false)})
	out = must("phase   copy (running)", "reshard", "status")
	for _, want := range []string{
		"reshard job j1: add shard s2 (primary host=x port=1) in database app",
		"orders     s0    s2  500     1,000   50%",
		"total                502     1,002   50%",
		"lag 2.0 MiB, 1,500 rows/s, ETA 42s",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	out = must(`"lag_bytes": 2097152`, "reshard", "status", "--json")
	var st resharder.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.ETA != 42*time.Second || st.Tables[0].Copied != 500 {
		t.Errorf("status --json: %v %+v", err, st)
	}
}

func TestReshardStatusWatch(t *testing.T) {
	f := &scriptedResharder{}
	reshardAdmin(t, f)
	failed := status("copy", 600, false)
	failed.Error = "connect to s2: connection refused"

	// Off a terminal: one line per change, exit 0 once the job is done;
	// an answer of the leader lost in an election is retried.
	f.set(nil,
		step{err: fmt.Errorf("read job: %w", shardmap.ErrLeadershipLost)},
		step{st: status("copy", 100, false)},
		step{st: status("copy", 100, false)},
		step{st: failed},
		step{st: status("catchup", 1000, false)},
		step{st: status("done", 1000, true)},
	)
	code, out, errs := ctlRun(t, "reshard", "status", "--watch", "--interval", "10ms")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 4 || !strings.Contains(errs, "reshard job j1 finished in 1m30s (phase done)") ||
		!strings.Contains(errs, "status unavailable, retrying") {
		t.Fatalf("watch: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	for i, want := range []string{
		"job j1 phase copy: 102/1,002 rows copied (10%), lag 2.0 MiB, 1,500 rows/s, ETA 42s",
		"phase copy: 602/1,002 rows copied (60%)",
		"; last error: connect to s2: connection refused",
		"phase done: 1,002/1,002 rows copied (100%)",
	} {
		if i == 2 {
			i = 1 // the same line, with the error
		}
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d %q lacks %q", i, lines[i], want)
		}
	}
	if strings.Contains(out, "\x1b[") {
		t.Error("cursor movement off a terminal")
	}

	// A cancelled job: exit 1, with its last error.
	cancelled := status("cancelled", 300, true)
	cancelled.Error = "cancelled by the user"
	f.set(nil, step{st: status("copy", 300, false)}, step{st: cancelled})
	code, out, errs = ctlRun(t, "reshard", "status", "--watch", "--interval", "10ms")
	if code != 1 || !strings.Contains(errs, "reshard job j1 was cancelled after 1m30s (phase cancelled); last error: cancelled by the user") {
		t.Errorf("watch a cancelled job: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	f.set(nil, step{st: status("mystery", 300, true)})
	if code, _, errs := ctlRun(t, "reshard", "status", "--watch", "--interval", "10ms"); code != 1 || !strings.Contains(errs, "ended after 1m30s (phase mystery)") {
		t.Errorf("watch a job that ended in an unknown phase: exit %d, %s", code, errs)
	}

	// --json: one object per change.
	f.set(nil, step{st: status("copy", 100, false)}, step{st: status("copy", 100, false)}, step{st: status("done", 1000, true)})
	code, out, errs = ctlRun(t, "reshard", "status", "--watch", "--interval", "10ms", "--json")
	lines = strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 2 {
		t.Fatalf("watch --json: exit %d\n%s\n%s", code, out, errs)
	}
	var last resharder.Status
	if err := json.Unmarshal([]byte(lines[1]), &last); err != nil || !last.Finished || last.Phase != "done" {
		t.Errorf("watch --json last object: %v %+v", err, last)
	}

	// The job disappears while watched; no job at all.
	f.set(nil, step{st: status("copy", 100, false)}, step{err: fmt.Errorf("status: %w", resharder.ErrNoJob)})
	if code, _, errs := ctlRun(t, "reshard", "status", "--watch", "--interval", "10ms"); code != 1 || !strings.Contains(errs, "no longer reported") {
		t.Errorf("watch a job that disappears: exit %d, %s", code, errs)
	}
	f.set(nil)
	if code, _, errs := ctlRun(t, "reshard", "status", "--watch", "--interval", "10ms"); code != 1 || !strings.Contains(errs, "no_job") && !strings.Contains(errs, "start one with") {
		t.Errorf("watch without a job: exit %d, %s", code, errs)
	}
}

func TestReshardTerminalDisplay(t *testing.T) {
	var b strings.Builder
	st := status("copy", 250, false)
	st.Waiting, st.CutoverAttempts = "the subscriptions to copy their tables", 2
	printStatus(&b, st, time.Date(2026, 12, 1, 9, 2, 0, 0, time.UTC), true)
	out := b.String()
	for _, want := range []string{"[######..................]", "25%", "total", "started 2026-12-01", "(2m0s ago), updated 30s ago",
		"now: the subscriptions to copy their tables", "cut-over: 2 attempt(s) so far"} {
		if !strings.Contains(out, want) {
			t.Errorf("display lacks %q:\n%s", want, out)
		}
	}
	b.Reset()
	st = status("done", 1000, true)
	st.Cutover, st.CutoverAttempts, st.Verified, st.Waiting = 43712*time.Microsecond, 3, "1000 rows in 16 ranges: same count and key sum on both sides", "ignored once finished"
	printStatus(&b, st, time.Date(2026, 12, 1, 9, 2, 0, 0, time.UTC), false)
	out = b.String()
	for _, want := range []string{"phase   done (finished)", "frozen for 44ms (attempt 3)", "verified: 1000 rows in 16 ranges"} {
		if !strings.Contains(out, want) {
			t.Errorf("display of a finished job lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "ignored once finished") || strings.Contains(out, "[#") {
		t.Errorf("display of a finished job without bars:\n%s", out)
	}
	if l := statusLine(st); !strings.Contains(l, "cut-over pause 44ms") || strings.Contains(l, "now:") {
		t.Errorf("status line: %s", l)
	}

	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -1234: "-1,234"} {
		if got := fmtCount(n); got != want {
			t.Errorf("fmtCount(%d) = %s, want %s", n, got, want)
		}
	}
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 5 << 30: "5.0 GiB"} {
		if got := fmtBytes(n); got != want {
			t.Errorf("fmtBytes(%d) = %s, want %s", n, got, want)
		}
	}
	for in, want := range map[string]string{"s2": "s2", "host=x port=1": "'host=x port=1'", "a'b": `'a'\''b'`, "": "''"} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestReshardWithoutCluster(t *testing.T) {
	m, err := admin.StaticMap([]shardmap.Shard{{Name: "a", Primary: "pa"}})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := admin.New(admin.Config{Store: &admin.StaticStore{NodeID: "solo", M: m}})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	srv.Register(mux)
	ts := httptest.NewServer(mux)
	defer ts.Close()
	t.Setenv("PGSHARD_ADMIN_URL", ts.URL)
	code, _, errs := ctlRun(t, "reshard", "plan", "--remove", "a")
	if code != 1 || !strings.Contains(errs, "runs without a cluster: resharding is not available") || !strings.Contains(errs, "data_dir") {
		t.Errorf("reshard without a cluster: exit %d, %s", code, errs)
	}
}

func TestVerifyCountsUnfinishedJobs(t *testing.T) {
	m := &shardmap.Map{}
	for _, j := range []shardmap.Job{{ID: "a", Phase: resharder.PhaseDone}, {ID: "b", Phase: resharder.PhaseCancelled}, {ID: "c", Phase: resharder.PhaseCopy}} {
		next, err := m.Apply(shardmap.PutJob(j, 0))
		if err != nil {
			t.Fatal(err)
		}
		m = next
	}
	if n := unfinishedJobs(m); n != 1 {
		t.Errorf("unfinished jobs: %d, want 1", n)
	}
}
