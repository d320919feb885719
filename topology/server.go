package topology

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Server is one PostgreSQL server (a primary or a streaming replica).
// Its exported fields are set by Start/Open and must not be changed.
type Server struct {
	Name    string // e.g. "shard0-primary", "shard0-replica1", "spare0-primary"; also its cluster_name
	Shard   string // shard name, e.g. "shard0" or "spare0"
	Host    string // always 127.0.0.1
	Port    int
	Dir     string // server directory: data/ and postgres.log
	DataDir string
	LogFile string
	Primary bool // false for a replica (stays false after Promote)

	bin      string
	run      *runAs
	logf     func(format string, args ...any)
	autoPort bool
	keep     bool // Config.KeepOnExit: no parent-death signal

	mu   sync.Mutex
	conf map[string]string // per-server settings written to server.conf
	proc *process
}

// process is a running postmaster. cmd is nil when the process was
// adopted from a state file (Open) rather than started by us.
type process struct {
	pid  int
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd.Wait returns (only when cmd != nil)
}

// signal sends sig to the postmaster (through os.Process when we started
// it, which never signals a reaped and reused PID).
func (p *process) signal(sig syscall.Signal) {
	if p.cmd != nil {
		_ = p.cmd.Process.Signal(sig)
		return
	}
	if procAlive(p.pid) {
		_ = syscall.Kill(p.pid, sig)
	}
}

func (p *process) alive() bool {
	if p == nil {
		return false
	}
	if p.cmd != nil {
		select {
		case <-p.done:
			return false
		default:
			return true
		}
	}
	return procAlive(p.pid)
}

// Addr returns "127.0.0.1:port".
func (s *Server) Addr() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// DSN returns the keyword/value connection string without user and
// database: "host=127.0.0.1 port=15432".
func (s *Server) DSN() string { return fmt.Sprintf("host=%s port=%d", s.Host, s.Port) }

// URL returns postgres://user:password@127.0.0.1:port/db?sslmode=disable.
// An empty password is left out (the superuser postgres needs none).
func (s *Server) URL(user, password, db string) string {
	u := url.URL{Scheme: "postgres", Host: s.Addr(), Path: "/" + db, RawQuery: "sslmode=disable"}
	if password != "" {
		u.User = url.UserPassword(user, password)
	} else {
		u.User = url.User(user)
	}
	return u.String()
}

// superDSN is the connection string for the superuser on database db.
func (s *Server) superDSN(db string) string {
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=%s sslmode=disable connect_timeout=5", s.Host, s.Port, db)
}

// PID returns the postmaster's PID, or 0 when the server is not running.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.proc.alive() {
		return 0
	}
	return s.proc.pid
}

// Running reports whether the postmaster process is alive.
func (s *Server) Running() bool { return s.PID() != 0 }

// Start starts the stopped server again on the same data directory and
// port, and waits until it accepts connections. It is a no-op when the
// server is running.
func (s *Server) Start(ctx context.Context) error {
	return s.start(ctx, false)
}

// start launches postgres and waits for readiness. With allowNewPort (only
// during Topology Start with automatic ports) it moves to another free port
// when the chosen one was taken by someone else meanwhile.
func (s *Server) start(ctx context.Context, allowNewPort bool) error {
	s.mu.Lock()
	running := s.proc.alive()
	s.mu.Unlock()
	if running {
		return nil
	}
	for attempt := 0; ; attempt++ {
		p, off, err := s.launch()
		if err != nil {
			return err
		}
		err = s.waitReady(ctx, p, off)
		if err == nil {
			s.logf("%s: ready on %s (pid %d)", s.Name, s.Addr(), p.pid)
			return nil
		}
		s.killProc(p)
		if !errors.Is(err, errPortInUse) || !allowNewPort || attempt >= 10 {
			return err
		}
		old := s.Port
		port, perr := pickPort()
		if perr != nil {
			return perr
		}
		s.logf("%s: port %d taken, retrying on %d", s.Name, old, port)
		s.Port = port
		if err := s.writeServerConf(); err != nil {
			return err
		}
	}
}

// launch execs postgres with stderr appended to LogFile. It returns the
// process and the log offset where this run's output starts.
func (s *Server) launch() (*process, int64, error) {
	lf, err := os.OpenFile(s.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, 0, fmt.Errorf("topology: open log of %s: %w", s.Name, err)
	}
	defer lf.Close()
	off, _ := lf.Seek(0, io.SeekEnd)
	cmd := exec.Command(filepath.Join(s.bin, "postgres"), "-D", s.DataDir)
	cmd.Dir = s.Dir
	cmd.Env = ChildEnv()
	cmd.Stdout = lf
	cmd.Stderr = lf
	cmd.SysProcAttr = s.run.sysProcAttr(!s.keep)
	if err := cmd.Start(); err != nil {
		return nil, 0, fmt.Errorf("topology: start postgres %s: %w", s.Name, err)
	}
	p := &process{pid: cmd.Process.Pid, cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	s.mu.Lock()
	s.proc = p
	s.mu.Unlock()
	return p, off, nil
}

// errPortInUse marks a start that failed because the port was taken.
var errPortInUse = errors.New("port already in use")

// waitReady polls until the server accepts a superuser connection.
func (s *Server) waitReady(ctx context.Context, p *process, logOff int64) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	var lastErr error
	for {
		if !p.alive() {
			out := readFrom(s.LogFile, logOff)
			err := fmt.Errorf("topology: %s: postgres %w before accepting connections; log:\n%s", s.Name, errProcessExited, tail(out, 20))
			if strings.Contains(out, "Address already in use") || strings.Contains(out, "could not bind") {
				err = fmt.Errorf("%w: %w", errPortInUse, err)
			}
			return err
		}
		if postmasterReady(s.DataDir, p.pid) {
			// Connect and make sure it is this server answering on the
			// port, not another one that took it.
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			name, err := s.QueryValue(cctx, "postgres", "SHOW cluster_name")
			cancel()
			if err == nil && name == s.Name {
				return nil
			}
			if err == nil {
				err = fmt.Errorf("port %d answered by server %q", s.Port, name)
			}
			lastErr = err
		} else {
			lastErr = errors.New("postmaster.pid does not say ready")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("topology: wait for %s on %s: %w (last error: %v); log:\n%s",
				s.Name, s.Addr(), ctx.Err(), lastErr, tail(readFrom(s.LogFile, logOff), 20))
		case <-t.C:
		}
	}
}

// Stop shuts the server down with a fast shutdown (SIGINT) and waits for
// it to exit; when ctx ends first it kills the process group. Stopping a
// stopped server is not an error.
func (s *Server) Stop(ctx context.Context) error {
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	if !p.alive() {
		return nil
	}
	p.signal(syscall.SIGINT)
	if err := s.waitExit(ctx, p); err != nil {
		s.logf("%s: fast shutdown did not finish (%v); killing", s.Name, err)
		return s.killProc(p)
	}
	s.logf("%s: stopped", s.Name)
	return nil
}

// Kill crashes the server with SIGKILL to the postmaster and all its
// children and waits until every one of them is gone.
func (s *Server) Kill() error {
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	if p == nil {
		return nil
	}
	return s.killProc(p)
}

// killProc crashes the server: it stops the postmaster (SIGSTOP, so it
// forks nothing more), SIGKILLs its children and then itself, and waits
// until all of them are gone, so that a restart finds no process still
// attached to the old shared memory.
func (s *Server) killProc(p *process) error {
	if !p.alive() {
		return nil
	}
	p.signal(syscall.SIGSTOP)
	kids := childrenOf(p.pid)
	for _, k := range kids {
		_ = syscall.Kill(k, syscall.SIGKILL)
	}
	p.signal(syscall.SIGKILL)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.waitExit(ctx, p); err != nil {
		return fmt.Errorf("topology: kill %s (pid %d): %w", s.Name, p.pid, err)
	}
	err := waitGone(ctx, func() bool {
		for _, k := range kids {
			if procAlive(k) {
				return true
			}
		}
		return false
	})
	if err != nil {
		return fmt.Errorf("topology: kill %s (pid %d): children still alive: %w", s.Name, p.pid, err)
	}
	return nil
}

// waitExit waits until the postmaster exited. (After a fast shutdown its
// children are gone too: the postmaster waits for them.)
func (s *Server) waitExit(ctx context.Context, p *process) error {
	if p.cmd != nil {
		select {
		case <-p.done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return waitGone(ctx, func() bool { return procAlive(p.pid) })
}

// SetConf sets a per-server setting in server.conf (included last by
// postgresql.conf); an empty value removes it. It takes effect on Reload
// (for reloadable settings) or on the next Start.
func (s *Server) SetConf(key, value string) error {
	s.mu.Lock()
	if value == "" {
		delete(s.conf, key)
	} else {
		if s.conf == nil {
			s.conf = map[string]string{}
		}
		s.conf[key] = value
	}
	s.mu.Unlock()
	return s.writeServerConf()
}

// Reload makes the server re-read its configuration (SIGHUP).
func (s *Server) Reload() error {
	pid := s.PID()
	if pid == 0 {
		return fmt.Errorf("topology: reload %s: %w", s.Name, ErrNotRunning)
	}
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		return fmt.Errorf("topology: reload %s: %w", s.Name, err)
	}
	return nil
}

// Promote turns a replica into a primary (pg_promote) and waits for it.
// Server.Primary is not changed.
func (s *Server) Promote(ctx context.Context) error {
	v, err := s.QueryValue(ctx, "postgres", "SELECT pg_promote(true, 60)")
	if err != nil {
		return fmt.Errorf("topology: promote %s: %w", s.Name, err)
	}
	if v != "t" {
		return fmt.Errorf("topology: promote %s: pg_promote returned %q", s.Name, v)
	}
	return nil
}

// Exec runs sql (one or more statements, simple protocol) as the superuser
// on database db.
func (s *Server) Exec(ctx context.Context, db, sql string) error {
	c, err := pgconn.Connect(ctx, s.superDSN(db))
	if err != nil {
		return fmt.Errorf("topology: connect %s/%s: %w", s.Name, db, err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx, sql).ReadAll(); err != nil {
		return fmt.Errorf("topology: exec on %s/%s: %w", s.Name, db, err)
	}
	return nil
}

// QueryValue runs sql as the superuser on database db and returns the
// first column of the first row in text form ("" for NULL or no rows).
func (s *Server) QueryValue(ctx context.Context, db, sql string) (string, error) {
	c, err := pgconn.Connect(ctx, s.superDSN(db))
	if err != nil {
		return "", fmt.Errorf("topology: connect %s/%s: %w", s.Name, db, err)
	}
	defer c.Close(context.Background())
	res, err := c.Exec(ctx, sql).ReadAll()
	if err != nil {
		return "", fmt.Errorf("topology: query on %s/%s: %w", s.Name, db, err)
	}
	for _, r := range res {
		if len(r.Rows) > 0 && len(r.Rows[0]) > 0 {
			return string(r.Rows[0][0]), nil
		}
	}
	return "", nil
}

// LogTail returns the last n lines of the server's log.
func (s *Server) LogTail(n int) string { return tail(readFrom(s.LogFile, 0), n) }

// writeServerConf writes data/server.conf: port, cluster_name (which is
// also the application_name the replica streams with) and SetConf values.
func (s *Server) writeServerConf() error {
	s.mu.Lock()
	var b strings.Builder
	fmt.Fprintf(&b, "# written by pgshard topology; per-server settings\nport = %d\ncluster_name = %s\n", s.Port, quoteConf(s.Name))
	keys := make([]string, 0, len(s.conf))
	for k := range s.conf {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, quoteConf(s.conf[k]))
	}
	s.mu.Unlock()
	return s.run.writeFile(filepath.Join(s.DataDir, "server.conf"), []byte(b.String()), 0o600)
}

// quoteConf quotes a postgresql.conf value.
func quoteConf(v string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(v, `\`, `\\`), "'", "''") + "'"
}

// readFrom reads a file from offset off (at most the last 64 KiB).
func readFrom(path string, off int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size()-off > 64<<10 {
		off = fi.Size() - 64<<10
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
