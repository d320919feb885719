package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"unicode/utf8"
)

// runResult is one pgbench run (Round 0 is a warm-up, not reported).
type runResult struct {
	Round          int      `json:"round"`
	Mode           string   `json:"mode"`
	Target         string   `json:"target"`
	OK             bool     `json:"ok"`
	TPS            float64  `json:"tps"`
	Transactions   int64    `json:"transactions"`
	Failed         int64    `json:"failed_transactions"`
	AbortedClients int      `json:"aborted_clients"`
	ExitCode       int      `json:"exit_code"`
	ProxyCPUus     *float64 `json:"proxy_cpu_us_per_query,omitempty"`
	PGCPUus        *float64 `json:"postgres_cpu_us_per_query,omitempty"`
	Problem        string   `json:"problem,omitempty"`
	OutputTail     string   `json:"output_tail,omitempty"`
}

// summaryRow is the median over rounds of one (mode, target).
type summaryRow struct {
	Mode           string   `json:"mode"`
	Target         string   `json:"target"`
	Runs           int      `json:"runs"`
	OKRuns         int      `json:"ok_runs"`
	TPS            *float64 `json:"median_tps,omitempty"`
	VsDirect       *float64 `json:"tps_vs_direct,omitempty"`
	ProxyCPUus     *float64 `json:"median_proxy_cpu_us_per_query,omitempty"`
	VsPgbouncer    *float64 `json:"proxy_cpu_vs_pgbouncer,omitempty"`
	CPUBase        string   `json:"proxy_cpu_baseline,omitempty"`
	PGCPUus        *float64 `json:"median_postgres_cpu_us_per_query,omitempty"`
	Failed         int64    `json:"failed_transactions"`
	AbortedClients int      `json:"aborted_clients"`
	Note           string   `json:"note,omitempty"`
}

type machine struct {
	NProc      int    `json:"nproc"`
	CPUModel   string `json:"cpu_model"`
	Kernel     string `json:"kernel"`
	LoadBefore string `json:"loadavg_before"`
	LoadAfter  string `json:"loadavg_after"`
}

type reportConfig struct {
	Duration   string   `json:"duration"`
	Rounds     int      `json:"rounds"`
	Scale      int      `json:"scale"`
	Clients    int      `json:"clients"`
	Threads    int      `json:"threads"`
	PoolSize   int      `json:"pool_size"`
	Replicas   int      `json:"replicas"`
	Split      bool     `json:"split"`
	Modes      []string `json:"modes"`
	Targets    []string `json:"targets"`
	ClockTicks int64    `json:"clock_ticks"`
}

// report is everything the run prints.
type report struct {
	Machine  machine           `json:"machine"`
	Versions map[string]string `json:"versions"`
	Config   reportConfig      `json:"config"`
	// PgbouncerPrepared says how pgbouncer in transaction pooling failed
	// under -M prepared ("" when it did not fail or was not run).
	PgbouncerPrepared string       `json:"pgbouncer_prepared_failure,omitempty"`
	Summary           []summaryRow `json:"summary"`
	Runs              []runResult  `json:"runs"`
	// Sharded is the sharded mode (nil with -sharded=false).
	Sharded *shardedReport `json:"sharded,omitempty"`
	// Reshard is the resharding mode (nil with -reshard-rows 0).
	Reshard *reshardReport `json:"reshard,omitempty"`
	// Relay is the relay measurements (nil with -relay=false).
	Relay *relayReport `json:"relay,omitempty"`
	// Idle is the idle clients measurement (nil with -idle 0).
	Idle *idleReport `json:"idle,omitempty"`
}

// naPrepared is the table entry for pgbouncer -M prepared when it failed.
const naPrepared = "n/a (pgbouncer 1.18 has no prepared statements in transaction pooling)"

func median(v []float64) *float64 {
	if len(v) == 0 {
		return nil
	}
	s := slices.Clone(v)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return &m
}

func ratio(a, b *float64) *float64 {
	if a == nil || b == nil || *b == 0 {
		return nil
	}
	v := *a / *b
	return &v
}

// summarize fills Summary from Runs: per mode, the targets in the
// configured order, then the pgbouncer session reference.
func (r *report) summarize() {
	r.Summary = nil
	order := append(slices.Clone(r.Config.Targets), tPgbouncerSession)
	for _, mode := range r.Config.Modes {
		rows := map[string]*summaryRow{}
		for _, target := range order {
			var tps, cpu, pg []float64
			row := &summaryRow{Mode: mode, Target: target}
			var problems []string
			for _, run := range r.Runs {
				if run.Round == 0 || run.Mode != mode || run.Target != target {
					continue
				}
				row.Runs++
				row.Failed += run.Failed
				row.AbortedClients += run.AbortedClients
				if !run.OK {
					if !slices.Contains(problems, run.Problem) {
						problems = append(problems, run.Problem)
					}
					continue
				}
				row.OKRuns++
				tps = append(tps, run.TPS)
				if run.ProxyCPUus != nil {
					cpu = append(cpu, *run.ProxyCPUus)
				}
				if run.PGCPUus != nil {
					pg = append(pg, *run.PGCPUus)
				}
			}
			if row.Runs == 0 {
				continue
			}
			row.TPS, row.ProxyCPUus, row.PGCPUus = median(tps), median(cpu), median(pg)
			switch {
			case mode == "prepared" && target == tPgbouncer && row.OKRuns == 0:
				row.Note = naPrepared + ": " + strings.Join(problems, " | ")
			case target == tPgbouncerSession:
				row.Note = "reference: pgbouncer in SESSION pooling (not comparable with transaction pooling)"
				if len(problems) > 0 {
					row.Note += "; " + strings.Join(problems, " | ")
				}
			case len(problems) > 0:
				row.Note = fmt.Sprintf("%d of %d runs failed: %s", row.Runs-row.OKRuns, row.Runs, strings.Join(problems, " | "))
			}
			rows[target] = row
		}
		direct := rows[tDirect]
		base := rows[tPgbouncer]
		baseName := tPgbouncer
		if base == nil || base.ProxyCPUus == nil {
			base, baseName = rows[tPgbouncerSession], tPgbouncerSession
		}
		for _, target := range order {
			row := rows[target]
			if row == nil {
				continue
			}
			if direct != nil {
				row.VsDirect = ratio(row.TPS, direct.TPS)
			}
			if base != nil && row.ProxyCPUus != nil {
				row.VsPgbouncer = ratio(row.ProxyCPUus, base.ProxyCPUus)
				if row.VsPgbouncer != nil {
					row.CPUBase = baseName
				}
			}
			r.Summary = append(r.Summary, *row)
		}
	}
}

func fmtF(v *float64, format string) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf(format, *v)
}

// printText writes the human-readable report.
func (r *report) printText(w io.Writer) {
	fmt.Fprintf(w, "\npgshard benchmark: pgbench -S (select only), %d clients, %d threads, %s per run, %d round(s), scale %d, pool size %d, %d replica(s)\n",
		r.Config.Clients, r.Config.Threads, r.Config.Duration, r.Config.Rounds, r.Config.Scale, r.Config.PoolSize, r.Config.Replicas)
	fmt.Fprintf(w, "machine: %d CPU(s), %s, %s; load average before %s, after %s\n",
		r.Machine.NProc, r.Machine.CPUModel, r.Machine.Kernel, r.Machine.LoadBefore, r.Machine.LoadAfter)
	keys := make([]string, 0, len(r.Versions))
	for k := range r.Versions {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "  %-10s %s\n", k+":", r.Versions[k])
	}
	fmt.Fprintln(w)
	header := []string{"mode", "target", "TPS (median)", "vs direct", "proxy CPU µs/q", "vs pgbouncer", "Postgres CPU µs/q", "failed txns", "aborted clients"}
	rows := [][]string{header}
	var notes []string
	prev := ""
	for _, row := range r.Summary {
		if row.Mode != prev && prev != "" {
			rows = append(rows, nil)
		}
		prev = row.Mode
		target := row.Target
		if row.Target == tPgbouncerSession {
			target += " (ref)"
		}
		vsBouncer := fmtF(row.VsPgbouncer, "%.2f×")
		if row.CPUBase == tPgbouncerSession && row.VsPgbouncer != nil {
			vsBouncer += "*"
		}
		tps := fmtF(row.TPS, "%.0f")
		if row.Mode == "prepared" && row.Target == tPgbouncer && row.OKRuns == 0 {
			tps = "n/a"
		}
		rows = append(rows, []string{row.Mode, target, tps,
			fmtF(row.VsDirect, "%.2f"), fmtF(row.ProxyCPUus, "%.1f"), vsBouncer, fmtF(row.PGCPUus, "%.1f"),
			fmt.Sprint(row.Failed), fmt.Sprint(row.AbortedClients)})
		if row.Note != "" {
			notes = append(notes, fmt.Sprintf("%s/%s: %s", row.Mode, row.Target, row.Note))
		}
	}
	writeTable(w, rows, 2)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "TPS: median over rounds of pgbench's tps without initial connection time; vs direct: TPS / direct PostgreSQL's TPS.")
	fmt.Fprintln(w, "proxy CPU: utime+stime of the proxy's processes (all pgpool processes) during the run / transactions (one query each);")
	fmt.Fprintln(w, "  vs pgbouncer: that / pgbouncer's (transaction pooling) in the same mode; * = against the pgbouncer session-pooling reference.")
	fmt.Fprintln(w, "Postgres CPU: the same for all PostgreSQL server processes (backends, postmaster, background workers).")
	for _, n := range notes {
		fmt.Fprintln(w, "note:", n)
	}
}

// writeTable writes rows in aligned columns: the first left columns
// left-aligned, the rest right-aligned; a nil row is an empty line.
func writeTable(w io.Writer, rows [][]string, left int) {
	var width []int
	for _, r := range rows {
		for i, c := range r {
			if i >= len(width) {
				width = append(width, 0)
			}
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	for _, r := range rows {
		var b strings.Builder
		for i, c := range r {
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			if i > 0 {
				b.WriteString("  ")
			}
			if i < left {
				b.WriteString(c + pad)
			} else {
				b.WriteString(pad + c)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
}

// writeJSON writes the report as JSON to path ("-": w).
func (r *report) writeJSON(path string, w io.Writer) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode JSON report: %w", err)
	}
	b = append(b, '\n')
	if path == "-" {
		_, err = w.Write(b)
		return err
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("write JSON report: %w", err)
	}
	return nil
}

func machineInfo() machine {
	m := machine{NProc: runtime.NumCPU(), CPUModel: "unknown"}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(b))
	}
	return m
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// versions asks each program for its version (first line).
func versions(pgshardBin string) map[string]string {
	first := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil && len(out) == 0 {
			return "unknown (" + err.Error() + ")"
		}
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return line
	}
	v := map[string]string{
		"postgres":  first(filepath.Join(filepath.Dir(pgbenchBin), "postgres"), "--version"),
		"pgbench":   first(pgbenchBin, "--version"),
		"pgbouncer": first(pgbouncerBin, "--version"),
		"pgpool":    first(pgpoolBin, "--version"),
		"go":        runtime.Version(),
	}
	commit := "unknown"
	if root, err := moduleRoot(); err == nil {
		if out, err := exec.Command("git", "-C", root, "rev-parse", "--short", "HEAD").Output(); err == nil {
			commit = strings.TrimSpace(string(out))
		}
	}
	v["pgshard"] = "commit " + commit + " (" + pgshardBin + ")"
	return v
}
