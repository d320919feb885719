package topology

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// runAs is the OS user PostgreSQL programs run as. A nil *runAs means the
// current user (the process is not root).
type runAs struct {
	name     string
	uid, gid uint32
}

// lookupRunAs returns the postgres OS user when the process runs as root,
// because initdb and postgres refuse to run as root.
func lookupRunAs() (*runAs, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("topology: running as root needs the postgres OS user: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("topology: parse uid of postgres: %w", err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("topology: parse gid of postgres: %w", err)
	}
	return &runAs{name: u.Username, uid: uint32(uid), gid: uint32(gid)}, nil
}

// sysProcAttr puts the child in its own process group (so a terminal's
// Ctrl-C does not reach it; we stop it in order) and switches to the
// run-as user. With dieWithUs the child gets SIGQUIT (immediate shutdown)
// when this process dies without stopping it (a test binary killed by a
// timeout or Ctrl-C), so no server is left behind.
func (r *runAs) sysProcAttr(dieWithUs bool) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true}
	if dieWithUs {
		a.Pdeathsig = syscall.SIGQUIT
	}
	if r != nil {
		a.Credential = &syscall.Credential{Uid: r.uid, Gid: r.gid}
	}
	return a
}

// chown gives path to the run-as user; a no-op when not root.
func (r *runAs) chown(path string) error {
	if r == nil {
		return nil
	}
	if err := os.Lchown(path, int(r.uid), int(r.gid)); err != nil {
		return fmt.Errorf("topology: chown %s: %w", path, err)
	}
	return nil
}

// mkdir creates dir (mode 0700, as PostgreSQL wants for data dirs and is
// fine for server dirs) owned by the run-as user.
func (r *runAs) mkdir(dir string, mode os.FileMode) error {
	if err := os.MkdirAll(dir, mode); err != nil {
		return fmt.Errorf("topology: mkdir %s: %w", dir, err)
	}
	if err := os.Chmod(dir, mode); err != nil {
		return fmt.Errorf("topology: chmod %s: %w", dir, err)
	}
	return r.chown(dir)
}

// writeFile writes a file owned by the run-as user.
func (r *runAs) writeFile(path string, data []byte, mode os.FileMode) error {
	if err := os.WriteFile(path, data, mode); err != nil {
		return fmt.Errorf("topology: write %s: %w", path, err)
	}
	return r.chown(path)
}

// checkTraversable reports whether the run-as user can reach dir: every
// ancestor must be searchable by "other" or owned by that user.
func (r *runAs) checkTraversable(dir string) error {
	if r == nil {
		return nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("topology: abs %s: %w", dir, err)
	}
	// dir itself is made mode 0711 by the caller; check its ancestors.
	for p := filepath.Dir(abs); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if errors.Is(err, os.ErrNotExist) && p != filepath.Dir(p) {
			continue // will be created with mode 0711
		}
		if err != nil {
			return fmt.Errorf("topology: stat %s: %w", p, err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		ok = ok && (st.Uid == r.uid || fi.Mode().Perm()&0o001 != 0 ||
			(st.Gid == r.gid && fi.Mode().Perm()&0o010 != 0))
		if !ok {
			return fmt.Errorf("%w: %s is not searchable by OS user %s (needed for %s)", ErrDirNotAccessible, p, r.name, abs)
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// ChildEnv is the environment for PostgreSQL programs (postgres, initdb,
// pgbench, pgbouncer...): ours without PG* variables (PGPORT, PGDATA...
// would change their behaviour) and locale variables, in the C locale.
func ChildEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LC_ALL=C", "LANG=C")
}

// procAlive reports whether pid is a live (not zombie) process.
func procAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	state, _, ok := procStat(pid)
	return ok && state != 'Z' && state != 'X'
}

// procStat returns the state letter and parent PID of pid from /proc.
func procStat(pid int) (state byte, ppid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	// pid (comm) state ppid pgrp ...; comm may contain spaces and parens.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, 0, false
	}
	pp, err := strconv.Atoi(f[1])
	if err != nil {
		return 0, 0, false
	}
	return f[0][0], pp, true
}

// childrenOf returns the live child processes of pid. PostgreSQL's
// backends and auxiliary processes each call setsid, so they are not in
// the postmaster's process group; they are found by parent PID.
func childrenOf(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var kids []int
	for _, e := range ents {
		c, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		state, pp, ok := procStat(c)
		if ok && pp == pid && state != 'Z' && state != 'X' {
			kids = append(kids, c)
		}
	}
	return kids
}

// waitGone polls until cond() is false or ctx ends.
func waitGone(ctx context.Context, cond func() bool) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for cond() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// readPostmasterPID returns the PID recorded in dataDir/postmaster.pid, or 0.
func readPostmasterPID(dataDir string) int {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		return 0
	}
	return pid
}

// isPostgres reports whether pid looks like a postgres postmaster (guards
// against signalling a recycled PID).
func isPostgres(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	argv0, _, _ := strings.Cut(string(b), "\x00")
	return filepath.Base(argv0) == "postgres" || strings.HasPrefix(argv0, "postgres:")
}

// errProcessExited is returned when a server exits before it became ready.
var errProcessExited = errors.New("process exited")

// postmasterReady reports whether dataDir/postmaster.pid belongs to pid and
// says the server accepts connections (line 8 is the status "ready").
func postmasterReady(dataDir string, pid int) bool {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return false
	}
	lines := strings.Split(string(b), "\n")
	return len(lines) >= 8 && strings.TrimSpace(lines[0]) == strconv.Itoa(pid) &&
		strings.TrimSpace(lines[7]) == "ready"
}
