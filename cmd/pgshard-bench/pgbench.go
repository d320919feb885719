package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/pgshard/pgshard/topology"
)

// pgbenchStats is what we read from pgbench's report.
type pgbenchStats struct {
	TPS          float64 // "tps = N (without initial connection time)"
	Transactions int64   // "number of transactions actually processed: N"
	Failed       int64   // "number of failed transactions: N (x%)"
	Scale        int     // "scaling factor: N" (0 if missing)
	Aborted      int     // clients that aborted ("client N ... aborted")
	RunAborted   bool    // "Run was aborted; the state may be inconsistent."
	FirstError   string  // first "ERROR:" / "error:" line, if any
}

var (
	reTPS     = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \(without initial connection time\)`)
	reTxns    = regexp.MustCompile(`(?m)^number of transactions actually processed: ([0-9]+)`)
	reFailed  = regexp.MustCompile(`(?m)^number of failed transactions: ([0-9]+)`)
	reScale   = regexp.MustCompile(`(?m)^scaling factor: ([0-9]+)`)
	reAborted = regexp.MustCompile(`(?m)client [0-9]+ (?:script [0-9]+ )?aborted`)
	reError   = regexp.MustCompile(`(?m)^.*(?:ERROR|FATAL|error):.*$`)
)

// errNoReport means pgbench printed no transaction report.
var errNoReport = errors.New("pgbench printed no report")

// parsePgbench reads pgbench's (PostgreSQL 15) output.
func parsePgbench(out string) (pgbenchStats, error) {
	var s pgbenchStats
	s.Aborted = len(reAborted.FindAllString(out, -1))
	s.RunAborted = strings.Contains(out, "Run was aborted")
	if m := reError.FindString(out); m != "" {
		s.FirstError = strings.TrimSpace(m)
	}
	m := reTxns.FindStringSubmatch(out)
	if m == nil {
		return s, errNoReport
	}
	s.Transactions, _ = strconv.ParseInt(m[1], 10, 64)
	if m := reScale.FindStringSubmatch(out); m != nil {
		s.Scale, _ = strconv.Atoi(m[1])
	}
	if m := reFailed.FindStringSubmatch(out); m != nil {
		s.Failed, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reTPS.FindStringSubmatch(out); m != nil {
		v, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			return s, fmt.Errorf("parse tps %q: %w", m[1], err)
		}
		s.TPS = v
	} else {
		return s, fmt.Errorf("%w: no tps line", errNoReport)
	}
	return s, nil
}

// pgbenchRun runs `pgbench -n -S` against 127.0.0.1:port and returns its
// combined output and exit code (-1 when it did not run to an exit).
func pgbenchRun(ctx context.Context, port int, mode string, clients, threads int, d time.Duration) (string, int, error) {
	args := []string{
		"-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", appUser,
		"-n", "-S", "-M", mode,
		"-c", strconv.Itoa(clients), "-j", strconv.Itoa(threads),
		"-T", strconv.Itoa(max(1, int(d.Round(time.Second)/time.Second))),
		appDB,
	}
	return runPgbench(ctx, args)
}

// pgbenchInit runs `pgbench -i -s scale` directly on the primary.
func pgbenchInit(ctx context.Context, port, scale int) error {
	args := []string{"-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", appUser, "-i", "-q", "-s", strconv.Itoa(scale), appDB}
	out, code, err := runPgbench(ctx, args)
	if err != nil || code != 0 {
		return fmt.Errorf("pgbench -i -s %d: exit %d: %v\n%s", scale, code, err, tail(out, 20))
	}
	return nil
}

// runPgbench runs pgbench with args, and env added to its environment.
func runPgbench(ctx context.Context, args []string, env ...string) (string, int, error) {
	cmd := exec.CommandContext(ctx, pgbenchBin, args...)
	cmd.Env = append(topology.ChildEnv(), "PGPASSWORD="+appPassword, "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=5")
	cmd.Env = append(cmd.Env, env...)
	var buf bytes.Buffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	err := cmd.Run()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ctx.Err() == nil && ee.ExitCode() >= 0 {
			return buf.String(), ee.ExitCode(), nil
		}
		return buf.String(), -1, fmt.Errorf("run pgbench: %w", err)
	}
	return buf.String(), 0, nil
}
