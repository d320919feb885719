package main

import (
	"fmt"
	"io"
	"slices"
	"time"
)

// Targets of issue 9.
const (
	targetCopyRatio = 0.5
	targetStallP99  = 100.0 // ms
	targetStallMax  = 500.0 // ms
)

// baselineRun is one plain COPY TO | COPY FROM of the moving rows.
type baselineRun struct {
	Rep        int     `json:"rep"`
	From       string  `json:"from"`
	To         string  `json:"to"`
	After      bool    `json:"after_job,omitempty"` // run after the job (the rows copied back)
	Rows       int64   `json:"rows"`
	Bytes      int64   `json:"bytes"` // of the COPY text stream
	Seconds    float64 `json:"seconds"`
	RowsPerSec float64 `json:"rows_per_sec"`
	MBPerSec   float64 `json:"mb_per_sec"`
}

// latencyStats is a statement latency distribution in ms.
type latencyStats struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50_ms"`
	P99 float64 `json:"p99_ms"`
	Max float64 `json:"max_ms"`
}

// latencies sums up v (ms); p99 is the value below which 99% lie
// (nearest rank).
func latencies(v []float64) latencyStats {
	s := slices.Clone(v)
	slices.Sort(s)
	l := latencyStats{N: len(s)}
	if len(s) == 0 {
		return l
	}
	rank := func(p float64) float64 {
		i := int(p*float64(len(s))+0.999999) - 1
		return s[max(0, min(len(s)-1, i))]
	}
	l.P50, l.P99, l.Max = rank(0.5), rank(0.99), s[len(s)-1]
	return l
}

// writeSummary is what the writers saw.
type writeSummary struct {
	Before   latencyStats `json:"reference"` // before the copies
	Moving   latencyStats `json:"during_job_moving"`
	Other    latencyStats `json:"during_job_other"`
	InFreeze latencyStats `json:"moving_in_flight_during_freeze"`
	// AfterRing is, for those, the time from the ring's commit to their
	// end (what the new owner took: connections, the statement).
	AfterRing latencyStats `json:"in_freeze_after_ring_commit"`
	// NewOwner: statements on moving ranges started in the second after
	// the ring's commit (not held: they go to the new owner at once).
	NewOwner latencyStats `json:"moving_first_second_after_ring_commit"`
	Inserted int64        `json:"inserted"`
	Updated  int64        `json:"updated"`
	Failed   int          `json:"failed"`
	// FailedSample holds the first few failures.
	FailedSample []string `json:"failed_sample,omitempty"`
	// Fenced counts PS001 answers that reached a client (the proxy
	// should re-send them itself); the writer retried them.
	Fenced int64 `json:"fenced_seen_by_clients"`
}

// reshardReport is what the resharding mode measured.
type reshardReport struct {
	Rows       int    `json:"rows"`
	Writers    int    `json:"writers"`
	Pause      string `json:"writer_pause"`
	Replicas   int    `json:"replicas"`
	Ranges     int    `json:"moving_ranges"`
	PlanRows   int64  `json:"plan_rows"`
	PlanBytes  int64  `json:"plan_bytes"`
	MovingRows int64  `json:"moving_rows"` // loaded rows of the moving ranges (what the plain COPYs copy)
	// JobRows is the rows of the moving ranges when the job starts: the
	// loaded ones and those the writers inserted so far.
	JobRows int64 `json:"job_rows"`

	Baseline []baselineRun `json:"baseline"`

	JobID  string       `json:"job_id,omitempty"`
	Phase  string       `json:"phase,omitempty"`
	Phases []phaseEvent `json:"phases,omitempty"`
	// Durations in seconds, from the job's commits as the in-memory
	// store saw them.
	PrepareSec      float64 `json:"prepare_s"`
	CopySec         float64 `json:"copy_s"` // subscriptions created → all synchronized (phase cutover)
	CutoverPhaseSec float64 `json:"cutover_phase_s"`
	CleanupSec      float64 `json:"cleanup_s"`
	JobSec          float64 `json:"job_s"` // Start → done
	// Cutover is Status.Cutover (freeze commit → ring commit), ms.
	Cutover         float64 `json:"cutover_ms"`
	CutoverAttempts int     `json:"cutover_attempts"`
	Verified        string  `json:"verified,omitempty"`
	JobError        string  `json:"job_last_error,omitempty"`

	CopyRowsPerSec     *float64 `json:"copy_rows_per_sec,omitempty"`
	CopyMBPerSec       *float64 `json:"copy_mb_per_sec,omitempty"`
	BaselineRowsPerSec *float64 `json:"baseline_rows_per_sec,omitempty"` // median
	BaselineMBPerSec   *float64 `json:"baseline_mb_per_sec,omitempty"`
	BaselineBytes      int64    `json:"baseline_bytes,omitempty"`
	Ratio              *float64 `json:"copy_vs_baseline,omitempty"`

	Writes writeSummary `json:"writes"`
	// ConnectMs is the median time of a new connection as app (SCRAM) to
	// the new shard, after the job.
	ConnectMs *float64 `json:"connect_new_shard_ms,omitempty"`
	Check     string   `json:"check,omitempty"`
	Elapsed   string   `json:"elapsed,omitempty"`
	Error     string   `json:"error,omitempty"`
	Problems  []string `json:"problems,omitempty"`
}

// event returns the first event of phase at or after from.
func (r *reshardReport) event(phase string, from time.Time) (phaseEvent, bool) {
	for _, e := range r.Phases {
		if e.Phase == phase && !e.At.Before(from) {
			return e, true
		}
	}
	return phaseEvent{}, false
}

// lastEvent returns the last event of phase.
func (r *reshardReport) lastEvent(phase string) (phaseEvent, bool) {
	for _, e := range slices.Backward(r.Phases) {
		if e.Phase == phase {
			return e, true
		}
	}
	return phaseEvent{}, false
}

// timeJob derives the phase durations from the recorded commits. The copy
// starts when the job created its subscriptions (its copy_started, just
// before it commits phase copy) and ends when it commits phase cutover for
// the first time: every table synchronized, the lag under MaxLag.
func (r *reshardReport) timeJob(jobStart, jobEnd time.Time) {
	sec := func(a, b time.Time) float64 { return b.Sub(a).Seconds() }
	r.JobSec = sec(jobStart, jobEnd)
	cp, ok := r.event("copy", jobStart)
	if !ok {
		return
	}
	copyFrom := cp.At
	if !cp.CopyStarted.IsZero() && cp.CopyStarted.Before(copyFrom) && cp.CopyStarted.After(jobStart) {
		copyFrom = cp.CopyStarted
	}
	r.PrepareSec = sec(jobStart, copyFrom)
	cut, ok := r.event("cutover", copyFrom)
	if !ok {
		return
	}
	r.CopySec = sec(copyFrom, cut.At)
	lastCut, _ := r.lastEvent("cutover")
	if cl, ok := r.event("cleanup", lastCut.At); ok {
		r.CutoverPhaseSec = sec(lastCut.At, cl.At)
		if d, ok := r.event("done", cl.At); ok {
			r.CleanupSec = sec(cl.At, d.At)
			r.JobSec = sec(jobStart, d.At)
		}
	}
}

// freezeWindow is from the last commit of phase cutover (the freeze) to
// the ring's commit (zero times when unknown).
func (r *reshardReport) freezeWindow() (from, to time.Time) {
	cut, ok := r.lastEvent("cutover")
	if !ok {
		return
	}
	ring, ok := r.event("ring", cut.At)
	if !ok {
		return
	}
	return cut.At, ring.At
}

// summarize computes the rates and the ratio, and lists problems.
func (r *reshardReport) summarize() {
	var rates, mbs, bytes []float64
	for _, b := range r.Baseline {
		rates = append(rates, b.RowsPerSec)
		mbs = append(mbs, b.MBPerSec)
		bytes = append(bytes, float64(b.Bytes))
	}
	r.BaselineRowsPerSec, r.BaselineMBPerSec = median(rates), median(mbs)
	if m := median(bytes); m != nil {
		r.BaselineBytes = int64(*m)
	}
	r.CopyRowsPerSec, r.CopyMBPerSec, r.Ratio = nil, nil, nil
	jobRows := r.JobRows
	if jobRows == 0 {
		jobRows = r.MovingRows
	}
	if r.CopySec > 0 && jobRows > 0 {
		v := float64(jobRows) / r.CopySec
		r.CopyRowsPerSec = &v
		if r.BaselineBytes > 0 && r.MovingRows > 0 {
			// the baseline's bytes per row times the job's rows
			mb := float64(r.BaselineBytes) * float64(jobRows) / float64(r.MovingRows) / 1e6 / r.CopySec
			r.CopyMBPerSec = &mb
		}
		r.Ratio = ratio(r.CopyRowsPerSec, r.BaselineRowsPerSec)
	}
	if r.Writes.Failed > 0 {
		msg := fmt.Sprintf("%d writer statement(s) failed", r.Writes.Failed)
		if len(r.Writes.FailedSample) > 0 {
			msg += "; first: " + r.Writes.FailedSample[0]
		}
		if !slices.Contains(r.Problems, msg) {
			r.Problems = append(r.Problems, msg)
		}
	}
}

func secs(v float64) string { return fmt.Sprintf("%.2fs", v) }

// printText writes the resharding mode's tables.
func (r *reshardReport) printText(w io.Writer) {
	fmt.Fprintf(w, "\nresharding mode: reshard job adding a shard to a 1-shard cluster vs plain COPY between the same two servers (%s)\n", r.Elapsed)
	fmt.Fprintf(w, "  %s: %d rows (user_id bigint PRIMARY KEY, v bigint, name text, pad text(32), created timestamptz) on shard0; job: add spare0 (%d replica(s) per server)\n",
		reshardTable, r.Rows, r.Replicas)
	fmt.Fprintf(w, "  moving: %d range(s), %d loaded rows (plan estimate %d rows, %.1f MB; as COPY text %.1f MB); %d with the writers' inserts when the job starts\n",
		r.Ranges, r.MovingRows, r.PlanRows, float64(r.PlanBytes)/1e6, float64(r.BaselineBytes)/1e6, r.JobRows)

	fmt.Fprintf(w, "\n1. copy rate: the same rows, the same two servers, the same run\n\n")
	rows := [][]string{{"copy", "rows", "seconds", "rows/s", "MB/s"}}
	for _, b := range r.Baseline {
		when := "before the job"
		if b.After {
			when = "after the job"
		}
		rows = append(rows, []string{fmt.Sprintf("plain COPY (SELECT … WHERE <moving ranges>) TO STDOUT | COPY … FROM STDIN, %s → %s, %s", b.From, b.To, when),
			fmt.Sprint(b.Rows), fmt.Sprintf("%.2f", b.Seconds), fmt.Sprintf("%.0f", b.RowsPerSec), fmt.Sprintf("%.1f", b.MBPerSec)})
	}
	rows = append(rows, []string{"plain COPY, median of the runs", "", "", fmtF(r.BaselineRowsPerSec, "%.0f"), fmtF(r.BaselineMBPerSec, "%.1f")})
	copyS := "-"
	if r.CopySec > 0 {
		copyS = fmt.Sprintf("%.2f", r.CopySec)
	}
	jobRows := r.JobRows
	if jobRows == 0 {
		jobRows = r.MovingRows
	}
	rows = append(rows, []string{"reshard job, copy phase (subscription created → synchronized)", fmt.Sprint(jobRows), copyS,
		fmtF(r.CopyRowsPerSec, "%.0f"), fmtF(r.CopyMBPerSec, "%.1f")})
	writeTable(w, rows, 1)
	fmt.Fprintf(w, "   job / plain COPY: %s (target ≥ %.1f×: %s)\n", fmtF(r.Ratio, "%.2f×"), targetCopyRatio, verdict(r.Ratio, targetCopyRatio, false))
	fmt.Fprintf(w, "   job phases: prepare %s, copy %s, cut-over phase %s, cleanup %s (deleting the moved rows from the source); whole job %s\n",
		secs(r.PrepareSec), secs(r.CopySec), secs(r.CutoverPhaseSec), secs(r.CleanupSec), secs(r.JobSec))
	fmt.Fprintln(w, "   MB/s: bytes of the rows as COPY text (the baseline's stream, per row; the job's initial sync sends the same text) over the copy's duration.")
	fmt.Fprintln(w, "   The plain COPY runs before the job and once after it (the same rows copied back the other way) to bracket the machine's noise.")

	ws := r.Writes
	fmt.Fprintf(w, "\n2. cut-over: freeze %s (Status.Cutover: freeze commit → ring commit), %d attempt(s)",
		fmt.Sprintf("%.0f ms", r.Cutover), r.CutoverAttempts)
	if r.Verified != "" {
		fmt.Fprintf(w, "; verification: %s", r.Verified)
	}
	fmt.Fprintf(w, "\n   %d writer(s) through an in-process pgshard proxy (1 node), autocommit INSERT of new keys and UPDATE … WHERE user_id = $1 of loaded keys,\n", r.Writers)
	fmt.Fprintf(w, "   3 in 4 on moving ranges, %s pause between statements; %d inserts and %d updates acknowledged\n\n", r.Pause, ws.Inserted, ws.Updated)
	rows = [][]string{{"statements", "n", "p50 ms", "p99 ms", "max ms"}}
	for _, x := range []struct {
		name string
		l    latencyStats
	}{{"reference, before the copies", ws.Before}, {"during the job, moving ranges", ws.Moving}, {"during the job, other ranges", ws.Other},
		{"moving ranges, in flight during the freeze", ws.InFreeze}, {"  of which after the ring's commit", ws.AfterRing},
		{"moving ranges, started in the 1 s after the ring's commit", ws.NewOwner}} {
		rows = append(rows, []string{x.name, fmt.Sprint(x.l.N), fmt.Sprintf("%.1f", x.l.P50), fmt.Sprintf("%.1f", x.l.P99), fmt.Sprintf("%.1f", x.l.Max)})
	}
	writeTable(w, rows, 1)
	var p99, mx *float64
	if ws.Moving.N > 0 {
		p99, mx = &ws.Moving.P99, &ws.Moving.Max
	}
	fmt.Fprintf(w, "   stall on moving ranges during the job: p99 %s (target < %.0f ms: %s), max %s (target < %.0f ms: %s); targets are for 3 nodes, this is 1\n",
		fmtF(p99, "%.1f ms"), targetStallP99, verdict(p99, targetStallP99, true), fmtF(mx, "%.1f ms"), targetStallMax, verdict(mx, targetStallMax, true))
	fmt.Fprintf(w, "   a new connection to %s (SCRAM login) takes %s after the job: the proxy's pool opens its first ones to the new owner after the ring's commit.\n",
		reshardTarget, fmtF(r.ConnectMs, "%.1f ms"))
	fmt.Fprintln(w, "   reference: the 2 s before the plain COPYs, from 1 s after the writers started (their first statements open the proxy's connections).")
	fmt.Fprintln(w, "   The writers run through the plain COPYs and the job alike, so both copies compete with the same load.")
	fmt.Fprintf(w, "   failed statements: %d; PS001 (fenced) answers that reached a client: %d\n", ws.Failed, ws.Fenced)
	if r.Check != "" {
		fmt.Fprintln(w, "   check after the job:", r.Check)
	}
	if r.JobError != "" {
		fmt.Fprintln(w, "   the job's last error (it retried):", r.JobError)
	}
	if r.Error != "" {
		fmt.Fprintln(w, "\nresharding mode stopped early:", r.Error)
	}
	for _, p := range r.Problems {
		fmt.Fprintln(w, "problem:", p)
	}
}
