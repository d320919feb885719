package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/pgshard/pgshard/topology/topotest"
)

// TestReshardMode runs the resharding mode on a small table and checks that
// the report has every figure (never their values: the machine is shared).
func TestReshardMode(t *testing.T) {
	topotest.RequireBinaries(t, "")
	if testing.Short() {
		t.Skip("starts PostgreSQL servers and a reshard job")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ro := reshardOptions{rows: 20000, writers: 2, pause: 2 * time.Millisecond, baselineReps: 1}
	rep, err := runReshard(ctx, ro, t.Logf, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) > 0 {
		t.Errorf("problems: %q", rep.Problems)
	}
	if rep.MovingRows <= 0 || rep.MovingRows >= int64(ro.rows) || len(rep.Baseline) != 2 || rep.Baseline[0].Rows != rep.MovingRows || rep.Baseline[1].Rows != rep.MovingRows {
		t.Errorf("moving rows %d, baseline %+v", rep.MovingRows, rep.Baseline)
	}
	if rep.Phase != "done" || rep.CopyRowsPerSec == nil || rep.Ratio == nil || rep.Cutover <= 0 || rep.Writes.Moving.N == 0 || rep.Writes.Failed != 0 {
		t.Errorf("report: %+v", rep)
	}
	var out bytes.Buffer
	rep.printText(&out)
	t.Log("\n" + out.String())
	for _, want := range []string{
		"plain COPY (SELECT … WHERE <moving ranges>) TO STDOUT | COPY … FROM STDIN, shard0 → spare0, before the job",
		"plain COPY (SELECT … WHERE <moving ranges>) TO STDOUT | COPY … FROM STDIN, spare0 → shard0, after the job",
		"plain COPY, median of the runs", "reshard job, copy phase", "rows/s", "MB/s", "job / plain COPY: ", "(target ≥ 0.5×: ",
		"job phases: prepare ", "whole job ", "2. cut-over: freeze ", "during the job, moving ranges", "during the job, other ranges",
		"moving ranges, in flight during the freeze", "started in the 1 s after the ring's commit", "stall on moving ranges during the job: p99 ", "check after the job: rows: shard0 ",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(out.String(), "problem:") {
		t.Errorf("output has problems")
	}
}

func TestLatencies(t *testing.T) {
	var v []float64
	for i := 100; i >= 1; i-- {
		v = append(v, float64(i))
	}
	l := latencies(v)
	if l.N != 100 || l.P50 != 50 || l.P99 != 99 || l.Max != 100 {
		t.Fatalf("%+v", l)
	}
	if l := latencies(nil); l.N != 0 || l.Max != 0 {
		t.Fatalf("empty: %+v", l)
	}
	if l := latencies([]float64{7}); l.P50 != 7 || l.P99 != 7 || l.Max != 7 {
		t.Fatalf("one: %+v", l)
	}
}

// TestReshardReportTiming checks the phase arithmetic on recorded commits.
func TestReshardReportTiming(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	r := &reshardReport{Rows: 1000, MovingRows: 500, Baseline: []baselineRun{
		{Rep: 1, Rows: 500, Bytes: 50000, RowsPerSec: 1000, MBPerSec: 0.1}, {Rep: 2, Rows: 500, Bytes: 50000, RowsPerSec: 2000, MBPerSec: 0.2}}}
	r.Phases = []phaseEvent{
		{Phase: "prepare", At: at(10)},
		{Phase: "copy", At: at(300), CopyStarted: at(290)},
		{Phase: "cutover", At: at(790)}, // synchronized; this attempt gives up
		{Phase: "copy", At: at(3000)},
		{Phase: "cutover", At: at(4000)},
		{Phase: "ring", At: at(4200)},
		{Phase: "cleanup", At: at(4300)},
		{Phase: "done", At: at(5000)},
	}
	r.timeJob(t0, at(5100))
	from, to := r.freezeWindow()
	if r.PrepareSec != 0.29 || r.CopySec != 0.5 || r.CutoverPhaseSec != 0.3 || r.CleanupSec != 0.7 || r.JobSec != 5 || !from.Equal(at(4000)) || !to.Equal(at(4200)) {
		t.Fatalf("timing: %+v, freeze %v–%v", r, from, to)
	}
	r.Writes.Failed, r.Writes.FailedSample = 2, []string{"key 7: boom"}
	r.summarize()
	if *r.BaselineRowsPerSec != 1500 || *r.CopyRowsPerSec != 1000 || *r.Ratio != 1000.0/1500 || *r.CopyMBPerSec != 0.1 || r.BaselineBytes != 50000 {
		t.Fatalf("rates: copy %v baseline %v ratio %v", *r.CopyRowsPerSec, *r.BaselineRowsPerSec, *r.Ratio)
	}
	r.summarize() // idempotent
	if len(r.Problems) != 1 || !strings.Contains(r.Problems[0], "2 writer statement(s) failed; first: key 7: boom") {
		t.Fatalf("problems %q", r.Problems)
	}
	var out bytes.Buffer
	r.printText(&out)
	for _, want := range []string{"0.67× (target ≥ 0.5×: met)", "copy 0.50s", "whole job 5.00s", "problem: 2 writer statement(s) failed"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestParseFlagsReshard(t *testing.T) {
	o, err := parseFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if ro := o.reshard; !ro.enabled() || ro.rows != 1000000 || ro.writers < 1 || ro.baselineReps < 1 {
		t.Fatalf("defaults: %+v", ro)
	}
	if o, err := parseFlags([]string{"-reshard-rows", "0"}); err != nil || o.reshard.enabled() {
		t.Fatalf("-reshard-rows 0: %+v, %v", o.reshard, err)
	}
	if o, err := parseFlags([]string{"-targets", "", "-sharded=false"}); err != nil || !o.reshard.enabled() {
		t.Fatalf("only the resharding mode: %+v, %v", o.reshard, err)
	}
	for _, args := range [][]string{{"-targets", "", "-sharded=false", "-reshard-rows", "0"}, {"-reshard-rows", "10"}, {"-reshard-baseline-reps", "0"}} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("parseFlags(%v) accepted", args)
		}
	}
}
