package main

import (
	"fmt"
	"io"
	"slices"
)

// shardedRun1 is one keyed pgbench run of the sharded mode (Round 0: warm-up).
type shardedRun1 struct {
	Round        int      `json:"round"`
	Workload     string   `json:"workload"`
	Mode         string   `json:"mode"`
	Target       string   `json:"target"`
	OK           bool     `json:"ok"`
	TPS          float64  `json:"tps"`
	Transactions int64    `json:"transactions"`
	ProxyCPUus   *float64 `json:"proxy_cpu_us_per_txn,omitempty"`
	PGCPUus      *float64 `json:"postgres_cpu_us_per_txn,omitempty"`
	Problem      string   `json:"problem,omitempty"`
}

// keyedRow is the median over rounds of one (workload, mode).
type keyedRow struct {
	Workload string   `json:"workload"`
	Mode     string   `json:"mode"`
	Direct   *float64 `json:"direct_tps,omitempty"`
	// Direct2 is half the clients directly on each of two servers (the
	// machine's own cost of two servers); Dir2VsDir its ratio to Direct.
	Direct2   *float64 `json:"direct_2servers_tps,omitempty"`
	Dir2VsDir *float64 `json:"direct_2servers_vs_direct,omitempty"`
	One       *float64 `json:"pgshard_1shard_tps,omitempty"`
	Two       *float64 `json:"pgshard_2shards_tps,omitempty"`
	TwoVsOne  *float64 `json:"two_vs_one,omitempty"`
	OneVsDir  *float64 `json:"one_vs_direct,omitempty"`
	TwoVsDir  *float64 `json:"two_vs_direct,omitempty"`
	OneCPUus  *float64 `json:"pgshard_1shard_cpu_us_per_txn,omitempty"`
	TwoCPUus  *float64 `json:"pgshard_2shards_cpu_us_per_txn,omitempty"`
	// CPU of the PostgreSQL servers behind each target per transaction.
	DirPGus    *float64 `json:"direct_postgres_cpu_us_per_txn,omitempty"`
	Dir2PGus   *float64 `json:"direct_2servers_postgres_cpu_us_per_txn,omitempty"`
	OnePGus    *float64 `json:"pgshard_1shard_postgres_cpu_us_per_txn,omitempty"`
	TwoPGus    *float64 `json:"pgshard_2shards_postgres_cpu_us_per_txn,omitempty"`
	FailedRuns int      `json:"failed_runs"`
}

// scanResult is one run of the scatter query (Rep 0: warm-up).
type scanResult struct {
	Rep        int     `json:"rep"`
	Mode       string  `json:"mode"`
	Target     string  `json:"target"`
	OK         bool    `json:"ok"`
	Rows       int64   `json:"rows"`
	Seconds    float64 `json:"seconds"`
	RowsPerSec float64 `json:"rows_per_sec"`
	// The proxy's memory (pgshard only), bytes.
	RSSBefore int64  `json:"rss_before,omitempty"`
	RSSPeak   int64  `json:"rss_peak,omitempty"`
	RSSGrowth *int64 `json:"rss_growth,omitempty"`
	HWMBefore int64  `json:"vmhwm_before,omitempty"`
	HWMAfter  int64  `json:"vmhwm_after,omitempty"`
	Problem   string `json:"problem,omitempty"`
}

// scanRow summarizes the scatter runs of one protocol mode.
type scanRow struct {
	Mode         string   `json:"mode"`
	Direct       *float64 `json:"direct_rows_per_sec,omitempty"`
	Pgshard      *float64 `json:"pgshard_rows_per_sec,omitempty"`
	Ratio        *float64 `json:"ratio,omitempty"`
	MaxRSSGrowth int64    `json:"max_rss_growth"`
	FailedRuns   int      `json:"failed_runs"`
}

// commitResult is the commit-cost measurement.
type commitResult struct {
	Statements int     `json:"statements_per_case"`
	CrossMs    latency `json:"two_shards_ms"`
	SameMs     latency `json:"one_shard_ms"`
	DirectMs   latency `json:"direct_ms"`
	Ratio      float64 `json:"two_vs_one_median"`
}

// shardedReport is what the sharded mode measured.
type shardedReport struct {
	Rows      int           `json:"keyed_rows"`
	ScanRows  int           `json:"scan_rows"`
	Duration  string        `json:"duration"`
	Rounds    int           `json:"rounds"`
	Clients   int           `json:"clients"`
	Threads   int           `json:"threads"`
	Modes     []string      `json:"modes"`
	Placement []string      `json:"placement"`
	Notes     []string      `json:"notes,omitempty"`
	Keyed     []keyedRow    `json:"keyed"`
	Scan      []scanRow     `json:"scan"`
	Commit    *commitResult `json:"commit,omitempty"`
	Runs      []shardedRun1 `json:"runs"`
	Scans     []scanResult  `json:"scans"`
	Elapsed   string        `json:"elapsed,omitempty"`
	Error     string        `json:"error,omitempty"`
	Problems  []string      `json:"problems,omitempty"`
}

// Targets of issue 8.
const (
	targetTwoVsOne  = 0.95
	targetReadVsDir = 0.55
	targetScan      = 0.7
	targetScanRSS   = 64 << 20
	targetCommit    = 3.0
)

// summarize fills Keyed and Scan from Runs and Scans (medians over the
// successful runs; warm-ups ignored) and lists failed runs in Problems.
func (r *shardedReport) summarize() {
	r.Keyed, r.Scan, r.Problems = nil, nil, nil
	for _, w := range workloads {
		for _, mode := range r.Modes {
			row := keyedRow{Workload: w, Mode: mode}
			tps := map[string][]float64{}
			cpu := map[string][]float64{}
			pg := map[string][]float64{}
			for _, run := range r.Runs {
				if run.Round == 0 || run.Workload != w || run.Mode != mode {
					continue
				}
				if !run.OK {
					row.FailedRuns++
					r.Problems = append(r.Problems, fmt.Sprintf("keyed %s %s round %d %s: %s", w, mode, run.Round, run.Target, run.Problem))
					continue
				}
				tps[run.Target] = append(tps[run.Target], run.TPS)
				if run.ProxyCPUus != nil {
					cpu[run.Target] = append(cpu[run.Target], *run.ProxyCPUus)
				}
				if run.PGCPUus != nil {
					pg[run.Target] = append(pg[run.Target], *run.PGCPUus)
				}
			}
			row.Direct, row.One, row.Two = median(tps[tDirect]), median(tps[tPgshard1]), median(tps[tPgshard2])
			row.OneCPUus, row.TwoCPUus = median(cpu[tPgshard1]), median(cpu[tPgshard2])
			row.DirPGus, row.OnePGus, row.TwoPGus = median(pg[tDirect]), median(pg[tPgshard1]), median(pg[tPgshard2])
			row.Direct2, row.Dir2PGus = median(tps[tDirect2]), median(pg[tDirect2])
			row.Dir2VsDir = ratio(row.Direct2, row.Direct)
			row.TwoVsOne, row.OneVsDir, row.TwoVsDir = ratio(row.Two, row.One), ratio(row.One, row.Direct), ratio(row.Two, row.Direct)
			if row.Direct != nil || row.One != nil || row.Two != nil || row.FailedRuns > 0 {
				r.Keyed = append(r.Keyed, row)
			}
		}
	}
	var modes []string
	for _, s := range r.Scans {
		if !slices.Contains(modes, s.Mode) {
			modes = append(modes, s.Mode)
		}
	}
	for _, mode := range modes {
		row := scanRow{Mode: mode}
		rate := map[string][]float64{}
		for _, s := range r.Scans {
			if s.Rep == 0 || s.Mode != mode {
				continue
			}
			if s.RSSGrowth != nil {
				row.MaxRSSGrowth = max(row.MaxRSSGrowth, *s.RSSGrowth)
			}
			if !s.OK {
				row.FailedRuns++
				r.Problems = append(r.Problems, fmt.Sprintf("scatter %s rep %d %s: %s", mode, s.Rep, s.Target, s.Problem))
				continue
			}
			rate[s.Target] = append(rate[s.Target], s.RowsPerSec)
		}
		row.Direct, row.Pgshard = median(rate[tDirect]), median(rate[tPgshard2])
		row.Ratio = ratio(row.Pgshard, row.Direct)
		r.Scan = append(r.Scan, row)
	}
}

// verdict says whether v meets a target (v ≥ min, or v < max when below).
func verdict(v *float64, target float64, below bool) string {
	switch {
	case v == nil:
		return "n/a"
	case below && *v < target, !below && *v >= target:
		return "met"
	default:
		return "MISSED"
	}
}

// printText writes the sharded-mode tables.
func (r *shardedReport) printText(w io.Writer) {
	fmt.Fprintf(w, "\nsharded mode: pgshard over 2 shards vs pgshard over 1 shard vs direct PostgreSQL (%s)\n", r.Elapsed)
	for _, p := range r.Placement {
		fmt.Fprintln(w, "  placement:", p)
	}
	for _, n := range r.Notes {
		fmt.Fprintln(w, "  note:", n)
	}
	fmt.Fprintf(w, "\n1. keyed pgbench scripts on %s (%d rows, user_id bigint primary key; uid = random(1, %d)), %d clients, %d threads, %s per run, %d round(s), medians\n",
		keyedTable, r.Rows, r.Rows, r.Clients, r.Threads, r.Duration, r.Rounds)
	fmt.Fprintf(w, "   read: SELECT v, name FROM %s WHERE user_id = :uid;  mix: that SELECT, then UPDATE %s SET v = v + 1 WHERE user_id = :uid (autocommit each)\n\n", keyedTable, keyedTable)
	rows := [][]string{{"workload", "mode", "direct TPS", "direct 2 servers", "1 shard TPS", "2 shards TPS", "2 shards / 1 shard", "direct 2 servers / 1",
		"1 shard / direct", "2 shards / direct", "proxy CPU µs/txn (1 / 2 shards)", "Postgres CPU µs/txn (direct / 2 servers / 1 / 2 shards)"}}
	for _, k := range r.Keyed {
		cpu := fmtF(k.OneCPUus, "%.1f") + " / " + fmtF(k.TwoCPUus, "%.1f")
		pg := fmtF(k.DirPGus, "%.1f") + " / " + fmtF(k.Dir2PGus, "%.1f") + " / " + fmtF(k.OnePGus, "%.1f") + " / " + fmtF(k.TwoPGus, "%.1f")
		rows = append(rows, []string{k.Workload, k.Mode, fmtF(k.Direct, "%.0f"), fmtF(k.Direct2, "%.0f"), fmtF(k.One, "%.0f"), fmtF(k.Two, "%.0f"),
			fmtF(k.TwoVsOne, "%.2f×"), fmtF(k.Dir2VsDir, "%.2f×"), fmtF(k.OneVsDir, "%.2f×"), fmtF(k.TwoVsDir, "%.2f×"), cpu, pg})
	}
	writeTable(w, rows, 2)
	var worstTwo, worstRead, worstDir2 *float64
	for _, k := range r.Keyed {
		if k.TwoVsOne != nil && (worstTwo == nil || *k.TwoVsOne < *worstTwo) {
			worstTwo = k.TwoVsOne
		}
		if k.Dir2VsDir != nil && (worstDir2 == nil || *k.Dir2VsDir < *worstDir2) {
			worstDir2 = k.Dir2VsDir
		}
		if k.Workload == "read" {
			for _, v := range []*float64{k.OneVsDir, k.TwoVsDir} {
				if v != nil && (worstRead == nil || *v < *worstRead) {
					worstRead = v
				}
			}
		}
	}
	fmt.Fprintln(w, "   direct 2 servers: half the clients directly on each of the 2 shards' servers, each on its own rows renumbered 1..n in "+localTable+" (every query finds its row):")
	fmt.Fprintf(w, "   what spreading the same load over two PostgreSQL servers costs this machine without pgshard (worst %s of one server).\n", fmtF(worstDir2, "%.2f×"))
	fmt.Fprintln(w, "   CPU: utime+stime of pgshard's process / of the PostgreSQL servers behind the target (both servers for 2 servers and 2 shards) during the run, per transaction.")
	fmt.Fprintf(w, "   targets: 2 shards ≥ %.2f× 1 shard: worst %s (%s); keyed reads ≥ %.2f× direct: worst %s (%s)\n",
		targetTwoVsOne, fmtF(worstTwo, "%.2f×"), verdict(worstTwo, targetTwoVsOne, false),
		targetReadVsDir, fmtF(worstRead, "%.2f×"), verdict(worstRead, targetReadVsDir, false))

	half := r.ScanRows / 2
	fmt.Fprintf(w, "\n2. scatter %q: %d rows, %d + %d on 2 shards through pgshard vs all on one PostgreSQL directly; pgx client reading every row; medians\n\n",
		scatterQuery, r.ScanRows, half, half)
	rows = [][]string{{"protocol", "direct rows/s", "pgshard rows/s", "pgshard / direct", "pgshard RSS growth (max)", "pgshard VmHWM (first → last run)"}}
	var worstScan *float64
	var maxRSS int64
	for _, s := range r.Scan {
		hwm := "-"
		var first, last *scanResult
		for i := range r.Scans {
			if x := &r.Scans[i]; x.Mode == s.Mode && x.Target == tPgshard2 && x.Rep > 0 {
				if first == nil {
					first = x
				}
				last = x
			}
		}
		if first != nil {
			hwm = mib(first.HWMBefore) + " → " + mib(last.HWMAfter)
		}
		rows = append(rows, []string{s.Mode, fmtF(s.Direct, "%.0f"), fmtF(s.Pgshard, "%.0f"), fmtF(s.Ratio, "%.2f×"), mib(s.MaxRSSGrowth), hwm})
		if s.Ratio != nil && (worstScan == nil || *s.Ratio < *worstScan) {
			worstScan = s.Ratio
		}
		maxRSS = max(maxRSS, s.MaxRSSGrowth)
	}
	writeTable(w, rows, 1)
	rss := float64(maxRSS)
	var rssp *float64
	if len(r.Scan) > 0 {
		rssp = &rss
	}
	fmt.Fprintf(w, "   targets: ≥ %.1f× direct: worst %s (%s); RSS growth < 64 MiB: max %s (%s)\n",
		targetScan, fmtF(worstScan, "%.2f×"), verdict(worstScan, targetScan, false), mib(maxRSS), verdict(rssp, targetScanRSS, true))
	fmt.Fprintln(w, "   RSS growth: peak VmRSS sampled every 5 ms during the query minus VmRSS just before it.")

	if c := r.Commit; c != nil {
		fmt.Fprintf(w, "\n3. commit cost: autocommit UPDATE %s SET v = v + 1 WHERE user_id IN (a, b) through pgshard over 2 shards, 1 client, %d statements per case, interleaved\n\n",
			keyedTable, c.Statements)
		rows = [][]string{{"case", "median ms", "p90 ms", "mean ms"},
			{"a, b on two shards (2PC + Raft decision)", fmt.Sprintf("%.3f", *c.CrossMs.Median), fmt.Sprintf("%.3f", c.CrossMs.P90), fmt.Sprintf("%.3f", c.CrossMs.Mean)},
			{"a, b on one shard", fmt.Sprintf("%.3f", *c.SameMs.Median), fmt.Sprintf("%.3f", c.SameMs.P90), fmt.Sprintf("%.3f", c.SameMs.Mean)},
			{"direct PostgreSQL (reference)", fmt.Sprintf("%.3f", *c.DirectMs.Median), fmt.Sprintf("%.3f", c.DirectMs.P90), fmt.Sprintf("%.3f", c.DirectMs.Mean)},
		}
		writeTable(w, rows, 1)
		fmt.Fprintf(w, "   two shards / one shard (medians): %.2f× (target < %.0f×: %s)\n", c.Ratio, targetCommit, verdict(&c.Ratio, targetCommit, true))
	}
	if r.Error != "" {
		fmt.Fprintln(w, "\nsharded mode stopped early:", r.Error)
	}
	for _, p := range r.Problems {
		fmt.Fprintln(w, "problem:", p)
	}
	if len(r.Problems) > 0 {
		fmt.Fprintln(w, "(failed runs are left out of the medians)")
	}
}
