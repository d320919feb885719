package main

import (
	"fmt"
	"io"
)

// relayReport is the relay measurements (relay.go).
type relayReport struct {
	Parts          []string     `json:"parts"`
	Duration       string       `json:"duration"`
	Clients        int          `json:"clients"` // of the strace and churn runs
	LatencyMode    string       `json:"latency_mode"`
	LatencyClients []int        `json:"latency_clients"`
	Syscalls       []syscallRow `json:"syscalls,omitempty"`
	Latency        []latencyRow `json:"latency,omitempty"`
	Churn          []churnRow   `json:"churn,omitempty"`
	// ChurnVsPgbouncer is pgshard's churn TPS / pgbouncer's.
	ChurnVsPgbouncer *float64 `json:"churn_tps_pgshard_vs_pgbouncer,omitempty"`
	Error            string   `json:"error,omitempty"`
}

// syscallRow is one pgbench run with strace attached.
type syscallRow struct {
	Mode   string `json:"mode"`
	Target string `json:"target"`
	// Threads is how many threads strace attached to at the start (of the
	// proxy, or of the pgbench backends for direct); TasksBefore how many
	// /proc listed just before; NewThreads those it followed afterwards.
	Threads       int               `json:"threads_attached"`
	TasksBefore   int               `json:"tasks_before_attach"`
	NewThreads    int               `json:"threads_followed_later"`
	Queries       int64             `json:"queries_traced"`
	TracedSeconds float64           `json:"traced_seconds"`
	TracedQPS     float64           `json:"traced_queries_per_second"`
	PerQuery      *syscallsPerQuery `json:"per_query,omitempty"`
	Calls         []straceCall      `json:"calls,omitempty"`
	Problem       string            `json:"problem,omitempty"`
}

// syscallsPerQuery is system calls per query, grouped.
type syscallsPerQuery struct {
	Read       float64 `json:"read_recvfrom"`
	ReadErrors float64 `json:"read_errors"` // failed reads: EAGAIN, in practice
	Write      float64 `json:"write_sendto"`
	Poll       float64 `json:"epoll_wait"`
	Futex      float64 `json:"futex"`
	Nanosleep  float64 `json:"nanosleep"`
	Other      float64 `json:"other"`
	TopOther   string  `json:"top_other,omitempty"`
	Total      float64 `json:"total"`
}

func (r syscallRow) logLine() string {
	s := fmt.Sprintf("threads=%d/%d(+%d) queries=%d (%.0f/s)", r.Threads, r.TasksBefore, r.NewThreads, r.Queries, r.TracedQPS)
	if p := r.PerQuery; p != nil {
		s += fmt.Sprintf(" read=%.2f (err %.2f) write=%.2f epoll=%.2f futex=%.2f nanosleep=%.2f other=%.2f total=%.2f",
			p.Read, p.ReadErrors, p.Write, p.Poll, p.Futex, p.Nanosleep, p.Other, p.Total)
	}
	return s + problemSuffix(r.Problem)
}

// latencyRow is one pgbench run with its per-transaction log.
type latencyRow struct {
	Target       string   `json:"target"`
	Clients      int      `json:"clients"`
	Threads      int      `json:"threads"`
	RunSeconds   int      `json:"run_seconds"` // pgbench -T
	ConnectMs    *float64 `json:"initial_connection_ms,omitempty"`
	TPS          float64  `json:"tps"`
	Transactions int64    `json:"transactions"`
	Logged       int      `json:"logged_transactions"`
	LoggedFailed int      `json:"logged_failed"`
	P50us        *float64 `json:"p50_us,omitempty"`
	P99us        *float64 `json:"p99_us,omitempty"`
	Meanus       *float64 `json:"mean_us,omitempty"`
	Maxus        *float64 `json:"max_us,omitempty"`
	Problem      string   `json:"problem,omitempty"`
}

// churnRow is one pgbench -C run.
type churnRow struct {
	Target       string   `json:"target"`
	Clients      int      `json:"clients"`
	TPS          float64  `json:"tps"` // including reconnection times
	Transactions int64    `json:"transactions"`
	ConnectMs    float64  `json:"average_connection_ms"`
	VsPgbouncer  *float64 `json:"tps_vs_pgbouncer,omitempty"`
	ProxyCPUus   *float64 `json:"proxy_cpu_us_per_connection,omitempty"`
	PGCPUus      *float64 `json:"postgres_cpu_us_per_connection,omitempty"`
	Problem      string   `json:"problem,omitempty"`
}

// summarize fills the ratios.
func (r *relayReport) summarize() {
	var bouncer *churnRow
	for i := range r.Churn {
		if r.Churn[i].Target == tPgbouncer && r.Churn[i].Problem == "" {
			bouncer = &r.Churn[i]
		}
	}
	r.ChurnVsPgbouncer = nil
	for i := range r.Churn {
		c := &r.Churn[i]
		c.VsPgbouncer = nil
		if bouncer != nil && c.Problem == "" {
			c.VsPgbouncer = ratio(&c.TPS, &bouncer.TPS)
			if c.Target == tPgshard {
				r.ChurnVsPgbouncer = c.VsPgbouncer
			}
		}
	}
}

// printText writes the relay tables.
func (r *relayReport) printText(w io.Writer) {
	var notes []string
	note := func(what, problem string) {
		if problem != "" {
			notes = append(notes, what+": "+problem)
		}
	}
	if len(r.Syscalls) > 0 {
		fmt.Fprintf(w, "\nSystem calls per query (strace -c -f; pgbench -S, %d clients, %s per run)\n", r.Clients, r.Duration)
		rows := [][]string{{"mode", "target", "threads", "queries", "q/s traced", "read/recv", "(failed)", "write/send", "epoll_wait", "futex", "nanosleep", "other", "total", "most frequent other"}}
		prev := ""
		for _, s := range r.Syscalls {
			if s.Mode != prev && prev != "" {
				rows = append(rows, nil)
			}
			prev = s.Mode
			threads := fmt.Sprint(s.Threads)
			if s.NewThreads > 0 {
				threads += fmt.Sprintf("+%d", s.NewThreads)
			}
			row := []string{s.Mode, s.Target, threads, fmt.Sprint(s.Queries), fmt.Sprintf("%.0f", s.TracedQPS)}
			if p := s.PerQuery; p != nil {
				row = append(row, f2(p.Read), f2(p.ReadErrors), f2(p.Write), f2(p.Poll), f2(p.Futex), f2(p.Nanosleep), f2(p.Other), f2(p.Total), p.TopOther)
			} else {
				row = append(row, "-", "-", "-", "-", "-", "-", "-", "-", "")
			}
			rows = append(rows, row)
			note("syscalls "+s.Mode+"/"+s.Target, s.Problem)
		}
		writeTable(w, rows, 2)
		fmt.Fprintln(w, "Separate runs from the TPS/CPU rounds above: strace stops the traced process at every system call, so these runs are many")
		fmt.Fprintln(w, "  times slower (q/s traced) and give counts only, no speed. Queries: those pgbench's log shows completed while strace was attached.")
		fmt.Fprintln(w, "threads: threads strace attached to at the start (+ threads or processes it followed later, -f); for direct PostgreSQL,")
		fmt.Fprintln(w, "  the pgbench backends (one process each; the proxies' counts include both their client and their server side).")
		fmt.Fprintln(w, "read/recv: read, recvfrom, recvmsg, readv; (failed): those that returned an error, EAGAIN in practice; write/send: write,")
		fmt.Fprintln(w, "  sendto, sendmsg, writev; epoll_wait: also epoll_pwait, poll, ppoll, select; nanosleep: also clock_nanosleep.")
		fmt.Fprintln(w, "pgbouncer in -M prepared: the session-pooling reference (pgbouncer 1.18 has no prepared statements in transaction pooling).")
	}
	if len(r.Latency) > 0 {
		fmt.Fprintf(w, "\nLatency per query (pgbench -S -M %s, %s per run, from pgbench's per-transaction log)\n", r.LatencyMode, r.Duration)
		rows := [][]string{{"clients", "target", "threads", "TPS", "p50 µs", "p99 µs", "mean µs", "max µs", "logged", "-T s", "connecting ms"}}
		prev := -1
		for _, l := range r.Latency {
			if l.Clients != prev && prev != -1 {
				rows = append(rows, nil)
			}
			prev = l.Clients
			rows = append(rows, []string{fmt.Sprint(l.Clients), l.Target, fmt.Sprint(l.Threads), fmt.Sprintf("%.0f", l.TPS),
				fmtF(l.P50us, "%.0f"), fmtF(l.P99us, "%.0f"), fmtF(l.Meanus, "%.0f"), fmtF(l.Maxus, "%.0f"), fmt.Sprint(l.Logged),
				fmt.Sprint(l.RunSeconds), fmtF(l.ConnectMs, "%.0f")})
			note(fmt.Sprintf("latency %d clients/%s", l.Clients, l.Target), l.Problem)
		}
		writeTable(w, rows, 2)
		fmt.Fprintln(w, "Latency: from the client's send to its last reply byte, as pgbench measures it; with many clients on this machine it")
		fmt.Fprintln(w, "  includes waiting for a CPU, for pgbench's own threads and for a pooled backend (pool size above). connecting: pgbench's")
		fmt.Fprintln(w, "  initial connection time, which -T includes: when it took a quarter of -T or more, the run was made again with a longer -T.")
	}
	if len(r.Churn) > 0 {
		fmt.Fprintf(w, "\nConnection churn (pgbench -S -C -M %s: a new connection, SCRAM authentication, per transaction; %d clients, %s)\n", r.LatencyMode, r.Clients, r.Duration)
		rows := [][]string{{"target", "TPS", "vs pgbouncer", "avg connection ms", "proxy CPU µs/conn", "Postgres CPU µs/conn"}}
		for _, c := range r.Churn {
			rows = append(rows, []string{c.Target, fmt.Sprintf("%.0f", c.TPS), fmtF(c.VsPgbouncer, "%.2f"), fmt.Sprintf("%.3f", c.ConnectMs),
				fmtF(c.ProxyCPUus, "%.0f"), fmtF(c.PGCPUus, "%.0f")})
			note("churn "+c.Target, c.Problem)
		}
		writeTable(w, rows, 1)
		fmt.Fprintln(w, "TPS: pgbench's, including reconnection times; CPU: utime+stime of the proxy / of all PostgreSQL processes per transaction.")
	}
	for _, n := range notes {
		fmt.Fprintln(w, "note:", n)
	}
	if r.Error != "" {
		fmt.Fprintln(w, "relay measurements stopped:", r.Error)
	}
}

func f2(v float64) string { return fmt.Sprintf("%.2f", v) }
