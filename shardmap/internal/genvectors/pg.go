package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// defaultBinDir is where Debian's postgresql-15 package installs the server.
const defaultBinDir = "/usr/lib/postgresql/15/bin"

// binDir returns the PostgreSQL bin directory: $PGSHARD_PG_BINDIR, else the
// Debian default.
func binDir() string {
	if d := os.Getenv("PGSHARD_PG_BINDIR"); d != "" {
		return d
	}
	return defaultBinDir
}

// server is one throwaway PostgreSQL server in a temporary directory, trusted
// logins for user postgres on 127.0.0.1. It is deliberately minimal: the
// generator needs one server for a few queries.
type server struct {
	bin  string
	base string // temp dir holding data/ and the socket dir
	port int
	cmd  *exec.Cmd
	done chan struct{}
	log  io.Writer
	cred *syscall.Credential // nil unless running as root
}

// startServer runs initdb and starts postgres, waiting (under ctx) until it
// answers a query. Server output goes to log.
func startServer(ctx context.Context, bin string, log io.Writer) (_ *server, err error) {
	s := &server{bin: bin, log: log, done: make(chan struct{})}
	if _, err := os.Stat(filepath.Join(bin, "postgres")); err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	var uid, gid int = -1, -1
	if os.Geteuid() == 0 {
		// initdb and postgres refuse to run as root.
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("start postgres: running as root needs the postgres user: %w", err)
		}
		uid, _ = strconv.Atoi(u.Uid)
		gid, _ = strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	s.base, err = os.MkdirTemp("", "pgshard-genvec-")
	if err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	defer func() {
		if err != nil {
			s.stop()
		}
	}()
	if err := os.Chmod(s.base, 0o711); err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	data := filepath.Join(s.base, "data")
	sock := filepath.Join(s.base, "s")
	for _, d := range []string{data, sock} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, fmt.Errorf("start postgres: %w", err)
		}
		if uid >= 0 {
			if err := os.Chown(d, uid, gid); err != nil {
				return nil, fmt.Errorf("start postgres: %w", err)
			}
		}
	}
	initdb := s.command(ctx, "initdb", "-D", data, "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync")
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("start postgres: initdb: %w\n%s", err, out)
	}
	s.port, err = freePort()
	if err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	// Not CommandContext: the server must outlive a short ctx; stop() ends it.
	s.cmd = s.command(context.Background(), "postgres", "-D", data, "-k", sock,
		"-p", strconv.Itoa(s.port), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off")
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	go func() { _ = s.cmd.Wait(); close(s.done) }()

	for {
		if _, err := s.query(ctx, "SELECT 1"); err == nil {
			return s, nil
		}
		select {
		case <-s.done:
			return nil, fmt.Errorf("start postgres: server exited during startup (see its log)")
		case <-ctx.Done():
			return nil, fmt.Errorf("start postgres: not ready: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (s *server) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(s.bin, name), args...)
	cmd.Dir = s.base
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: s.cred}
	return cmd
}

// freePort returns a TCP port below 32768 that was free on 127.0.0.1 a moment ago.
func freePort() (int, error) {
	for range 50 {
		p := 20000 + rand.IntN(12000)
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			continue
		}
		_ = l.Close()
		return p, nil
	}
	return 0, errors.New("no free port below 32768")
}

// query runs sql through psql over TCP and returns the rows, fields split on
// tabs. Only use it for results without tabs or newlines in values.
func (s *server) query(ctx context.Context, sql string) ([][]string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(s.bin, "psql"), "-X", "-q", "-A", "-t",
		"-F", "\t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", strconv.Itoa(s.port),
		"-U", "postgres", "-d", "postgres", "-f", "-")
	cmd.Stdin = strings.NewReader(sql)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("psql: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	var rows [][]string
	for _, line := range strings.Split(stdout.String(), "\n") {
		if line == "" {
			continue
		}
		rows = append(rows, strings.Split(line, "\t"))
	}
	return rows, nil
}

// stop ends the server (SIGINT: fast shutdown; SIGKILL after 10 s) and
// removes its directory.
func (s *server) stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(os.Interrupt)
		select {
		case <-s.done:
		case <-time.After(10 * time.Second):
			_ = s.cmd.Process.Kill()
			<-s.done
		}
	}
	if s.base != "" {
		_ = os.RemoveAll(s.base)
	}
}
