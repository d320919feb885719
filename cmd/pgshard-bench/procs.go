package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/pgshard/pgshard/topology"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// proc is a long-running child (a proxy) in its own process group.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	stopSig syscall.Signal
	done    chan struct{} // closed when the process has exited
	err     error         // exit status, valid after done
	logFile *os.File
}

// startProc starts argv with stdout and stderr going to logPath, in its own
// process group (a terminal's Ctrl-C does not reach it; we stop it in
// order), as user u (the postgres user when we are root).
func startProc(name string, argv []string, dir, logPath string, u *topology.OSUser, stopSig syscall.Signal) (*proc, error) {
	lf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: open log: %w", name, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = topology.ChildEnv()
	cmd.Stdout = lf
	cmd.Stderr = lf
	cmd.SysProcAttr = u.SysProcAttr()
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, stopSig: stopSig, done: make(chan struct{}), logFile: lf}
	go func() {
		p.err = cmd.Wait()
		lf.Close()
		close(p.done)
	}()
	return p, nil
}

// pid returns the process ID.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends the stop signal, waits up to timeout, then kills the whole
// process group; finally it kills what is left of the group (children that
// outlived their parent). It is safe to call twice.
func (p *proc) stop(timeout time.Duration) error {
	pgid := p.pid()
	var err error
	if !p.exited() {
		_ = p.cmd.Process.Signal(p.stopSig)
		select {
		case <-p.done:
		case <-time.After(timeout):
			err = fmt.Errorf("stop %s: still running after %s, killed", p.name, timeout)
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-p.done
		}
	}
	// Children in the group that outlived the parent.
	deadline := time.Now().Add(timeout)
	for groupAlive(pgid) {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		if time.Now().After(deadline) {
			return errors.Join(err, fmt.Errorf("stop %s: process group %d survives SIGKILL", p.name, pgid))
		}
		time.Sleep(20 * time.Millisecond)
	}
	return err
}

// logTail returns the last n lines of the process's log.
func (p *proc) logTail(n int) string {
	b, _ := os.ReadFile(p.logPath)
	return tail(string(b), n)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitAccepting waits until dsn accepts a connection and answers SELECT 1,
// failing early when p (if not nil) exits.
func waitAccepting(ctx context.Context, name, dsn string, p *proc, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if p != nil && p.exited() {
			return fmt.Errorf("wait for %s: process exited (%v); log:\n%s", name, p.err, p.logTail(30))
		}
		cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
		c, err := pgconn.Connect(cctx, dsn)
		if err == nil {
			_, err = c.Exec(cctx, "SELECT 1").ReadAll()
			c.Close(context.Background())
		}
		ccancel()
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			msg := fmt.Sprintf("wait for %s to accept connections: %v (last error: %v)", name, ctx.Err(), last)
			if p != nil {
				msg += "; log:\n" + p.logTail(30)
			}
			return errors.New(msg)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ports hands out free loopback ports in [20000,32000), never twice.
type ports map[int]bool

func (used ports) pick() (int, error) {
	for range 1000 {
		port := 20000 + rand.IntN(12000)
		if used[port] {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		ln.Close()
		used[port] = true
		return port, nil
	}
	return 0, errors.New("pick port: no free port in [20000,32000)")
}

// procStat is the part of /proc/PID/stat we use.
type procStat struct {
	ppid, pgrp int
	state      byte
	// utime, stime, cutime, cstime in clock ticks.
	utime, stime, cutime, cstime int64
}

// parseStat parses the contents of /proc/PID/stat.
func parseStat(b []byte) (procStat, error) {
	// pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
	// majflt cmajflt utime stime cutime cstime ...; comm may hold spaces
	// and parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, errors.New("parse stat: no ')'")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("parse stat: %d fields after comm, want at least 15", len(f))
	}
	var st procStat
	st.state = f[0][0]
	nums := []*int64{&st.utime, &st.stime, &st.cutime, &st.cstime}
	for k, dst := range nums {
		v, err := strconv.ParseInt(f[11+k], 10, 64)
		if err != nil {
			return procStat{}, fmt.Errorf("parse stat field %d: %w", 14+k, err)
		}
		*dst = v
	}
	var err error
	if st.ppid, err = strconv.Atoi(f[1]); err != nil {
		return procStat{}, fmt.Errorf("parse stat ppid: %w", err)
	}
	if st.pgrp, err = strconv.Atoi(f[2]); err != nil {
		return procStat{}, fmt.Errorf("parse stat pgrp: %w", err)
	}
	return st, nil
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, err
	}
	return parseStat(b)
}

// allStats reads /proc/*/stat of every process.
func allStats() map[int]procStat {
	out := map[int]procStat{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := readStat(pid); err == nil {
			out[pid] = st
		}
	}
	return out
}

// treeTicks returns the CPU time in clock ticks of root and all its
// descendants: utime+stime of each, plus cutime+cstime (children that have
// exited and were reaped), so time moves within the sum, never out of it,
// when a child exits between two readings.
func treeTicks(root int) (int64, error) {
	stats := allStats()
	if _, ok := stats[root]; !ok {
		return 0, fmt.Errorf("cpu of pid %d: process not found", root)
	}
	children := map[int][]int{}
	for pid, st := range stats {
		children[st.ppid] = append(children[st.ppid], pid)
	}
	var sum int64
	queue := []int{root}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		st := stats[pid]
		sum += st.utime + st.stime + st.cutime + st.cstime
		queue = append(queue, children[pid]...)
	}
	return sum, nil
}

// groupAlive reports whether a live (not zombie) process is in group pgid.
func groupAlive(pgid int) bool {
	for _, st := range allStats() {
		if st.pgrp == pgid && st.state != 'Z' && st.state != 'X' {
			return true
		}
	}
	return false
}

// clockTicks returns sysconf(_SC_CLK_TCK) as `getconf CLK_TCK` reports it,
// or 100 (the Linux value everywhere in practice).
func clockTicks() int64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err != nil {
		return 100
	}
	v, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil || v <= 0 {
		return 100
	}
	return v
}
