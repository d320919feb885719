package topology_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshard/pgshard/internal/testutil"
	"github.com/pgshard/pgshard/topology"
	"github.com/pgshard/pgshard/topology/topotest"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// query runs sql over a fresh connection to url and returns the first
// value of the first row.
func query(ctx context.Context, url, sql string) (string, error) {
	c, err := pgconn.Connect(ctx, url)
	if err != nil {
		return "", err
	}
	defer c.Close(context.Background())
	res, err := c.Exec(ctx, sql).ReadAll()
	if err != nil {
		return "", err
	}
	for _, r := range res {
		if len(r.Rows) > 0 {
			return string(r.Rows[0][0]), nil
		}
	}
	return "", nil
}

func mustQuery(t *testing.T, ctx context.Context, url, sql string) string {
	t.Helper()
	v, err := query(ctx, url, sql)
	if err != nil {
		t.Fatalf("%s on %s: %v", sql, url, err)
	}
	return v
}

func TestPrimaryReplica(t *testing.T) {
	topo := topotest.Start(t, topology.Config{Shards: 1, Replicas: 1})
	ctx := ctxT(t)
	if len(topo.Shards) != 1 || len(topo.Spares) != 0 || len(topo.Shards[0].Replicas) != 1 {
		t.Fatalf("shape: %d shards, %d spares", len(topo.Shards), len(topo.Spares))
	}
	sh := topo.Shards[0]
	p, r := sh.Primary, sh.Replicas[0]
	if p.Name != "shard0-primary" || r.Name != "shard0-replica0" || !p.Primary || r.Primary {
		t.Fatalf("names: %s %v, %s %v", p.Name, p.Primary, r.Name, r.Primary)
	}
	if p.Port == r.Port || p.Port < 20000 || p.Port >= 32000 {
		t.Fatalf("ports: %d %d", p.Port, r.Port)
	}
	if got := p.DSN(); got != "host=127.0.0.1 port="+itoa(p.Port) {
		t.Fatalf("DSN = %q", got)
	}

	// Settings every server must have.
	for _, s := range sh.Servers() {
		url := s.URL("postgres", "", "postgres")
		for setting, want := range map[string]string{
			"wal_level": "logical", "max_prepared_transactions": "64", "max_connections": "200",
			"listen_addresses": "127.0.0.1", "password_encryption": "scram-sha-256", "hot_standby": "on",
			"cluster_name": s.Name,
		} {
			if got := mustQuery(t, ctx, url, "SHOW "+setting); got != want {
				t.Errorf("%s: %s = %q, want %q", s.Name, setting, got, want)
			}
		}
	}
	if got := mustQuery(t, ctx, r.URL("postgres", "", "postgres"), "SELECT pg_is_in_recovery()"); got != "t" {
		t.Fatalf("replica in recovery = %q", got)
	}

	// app/app authenticates with SCRAM; a wrong password is refused.
	appURL := p.URL("app", "app", "app")
	if got := mustQuery(t, ctx, appURL, "SELECT current_user || '/' || current_database()"); got != "app/app" {
		t.Fatalf("app session = %q", got)
	}
	if got := mustQuery(t, ctx, p.URL("postgres", "", "postgres"),
		"SELECT left(rolpassword, 13) FROM pg_authid WHERE rolname = 'app'"); got != "SCRAM-SHA-256" {
		t.Fatalf("app password stored as %q", got)
	}
	var pgErr *pgconn.PgError
	if _, err := query(ctx, p.URL("app", "wrong", "app"), "SELECT 1"); !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Fatalf("wrong password: err = %v, want SQLSTATE 28P01", err)
	}

	// A write on the primary shows up on the replica.
	mustQuery(t, ctx, appURL, "CREATE TABLE kv (k int PRIMARY KEY, v text); INSERT INTO kv VALUES (1, 'one')")
	if err := sh.WaitCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	if got := mustQuery(t, ctx, r.URL("app", "app", "app"), "SELECT v FROM kv WHERE k = 1"); got != "one" {
		t.Fatalf("replica read = %q", got)
	}
	// The replica refuses writes.
	if _, err := query(ctx, r.URL("app", "app", "app"), "INSERT INTO kv VALUES (2, 'two')"); !errors.As(err, &pgErr) || pgErr.Code != "25006" {
		t.Fatalf("write on replica: err = %v, want SQLSTATE 25006", err)
	}
	// Two-phase commit works on the primary.
	mustQuery(t, ctx, appURL, "BEGIN; INSERT INTO kv VALUES (3, 'three'); PREPARE TRANSACTION 'tx3'")
	mustQuery(t, ctx, appURL, "COMMIT PREPARED 'tx3'")
	if got := mustQuery(t, ctx, appURL, "SELECT v FROM kv WHERE k = 3"); got != "three" {
		t.Fatalf("after 2PC = %q", got)
	}
}

func TestKillRestart(t *testing.T) {
	topo := topotest.Start(t, topology.Config{Shards: 1, Replicas: 1})
	ctx := ctxT(t)
	sh := topo.Shards[0]
	p, r := sh.Primary, sh.Replicas[0]
	appURL := p.URL("app", "app", "app")
	mustQuery(t, ctx, appURL, "CREATE TABLE t (x int); INSERT INTO t VALUES (42)")

	pid := p.PID()
	if pid == 0 || !p.Running() {
		t.Fatal("primary not running")
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if p.Running() || p.PID() != 0 {
		t.Fatal("primary still running after Kill")
	}
	if _, err := os.Stat("/proc/" + itoa(pid)); err == nil {
		if b, _ := os.ReadFile("/proc/" + itoa(pid) + "/stat"); !strings.Contains(string(b), ") Z ") {
			t.Fatalf("postmaster %d still exists: %s", pid, b)
		}
	}
	if _, err := query(ctx, appURL, "SELECT 1"); err == nil {
		t.Fatal("connected to a killed server")
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if p.PID() == pid {
		t.Fatal("same PID after restart")
	}
	if got := mustQuery(t, ctx, appURL, "SELECT x FROM t"); got != "42" {
		t.Fatalf("after crash restart: %q", got)
	}
	// The replica reconnects to the restarted primary.
	if err := sh.WaitStreaming(ctx); err != nil {
		t.Fatal(err)
	}
	mustQuery(t, ctx, appURL, "INSERT INTO t VALUES (43)")
	if err := sh.WaitCaughtUp(ctx); err != nil {
		t.Fatal(err)
	}
	if got := mustQuery(t, ctx, r.URL("app", "app", "app"), "SELECT sum(x) FROM t"); got != "85" {
		t.Fatalf("replica after primary restart: %q", got)
	}

	// Clean stop and start of the replica; per-server settings apply.
	if err := r.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if r.Running() {
		t.Fatal("replica running after Stop")
	}
	if err := r.SetConf("work_mem", "7MB"); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if got := mustQuery(t, ctx, r.URL("postgres", "", "postgres"), "SHOW work_mem"); got != "7MB" {
		t.Fatalf("work_mem after SetConf+Start = %q", got)
	}
	// SetConf + Reload on a running server.
	if err := p.SetConf("work_mem", "9MB"); err != nil {
		t.Fatal(err)
	}
	if err := p.Reload(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 30*time.Second, "work_mem = 9MB after the reload", func() error {
		if got, err := query(ctx, p.URL("postgres", "", "postgres"), "SHOW work_mem"); err != nil || got != "9MB" {
			return errors.New("work_mem = " + got)
		}
		return nil
	})

	// Promote the replica.
	if err := r.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	if got := mustQuery(t, ctx, r.URL("postgres", "", "postgres"), "SELECT pg_is_in_recovery()"); got != "f" {
		t.Fatalf("promoted replica in recovery = %q", got)
	}
	mustQuery(t, ctx, r.URL("app", "app", "app"), "INSERT INTO t VALUES (1)")
}

func TestShardsSparesDetach(t *testing.T) {
	topotest.RequireBinaries(t, "")
	dir, err := os.MkdirTemp("", "pgshard-topotest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = topology.StopDir(dir)
		os.RemoveAll(dir)
	})
	ctx := ctxT(t)
	topo, err := topology.Start(ctx, topology.Config{Dir: dir, Shards: 2, Replicas: 1, Spares: 1, Logf: t.Logf, KeepOnExit: true})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	ports := map[int]bool{}
	for _, s := range topo.Servers() {
		names = append(names, s.Name)
		ports[s.Port] = true
		if !strings.HasPrefix(s.DataDir, dir) {
			t.Errorf("%s data dir %s outside %s", s.Name, s.DataDir, dir)
		}
		if got := mustQuery(t, ctx, s.URL("app", "app", "app"), "SELECT current_database()"); got != "app" {
			t.Errorf("%s: %q", s.Name, got)
		}
	}
	want := "shard0-primary shard0-replica0 shard1-primary shard1-replica0 spare0-primary spare0-replica0"
	if got := strings.Join(names, " "); got != want {
		t.Fatalf("servers = %s, want %s", got, want)
	}
	if len(ports) != 6 {
		t.Fatalf("ports not distinct: %v", ports)
	}
	if !topo.Spares[0].Spare || topo.Shards[1].Spare {
		t.Fatal("Spare flags wrong")
	}
	if running, err := topology.Running(dir); err != nil || !running {
		t.Fatalf("Running = %v, %v", running, err)
	}
	if _, err := topology.Start(ctx, topology.Config{Dir: dir, Shards: 1}); !errors.Is(err, topology.ErrRunning) {
		t.Fatalf("second Start in same dir: %v, want ErrRunning", err)
	}

	if err := topo.Detach(); err != nil {
		t.Fatal(err)
	}
	pids := map[string]int{}
	for _, s := range topo.Servers() {
		pids[s.Name] = s.PID()
	}
	if err := topo.Close(); err != nil { // no-op after Detach
		t.Fatal(err)
	}
	for _, s := range topo.Servers() {
		if !s.Running() {
			t.Fatalf("%s stopped by Close after Detach", s.Name)
		}
	}

	// Another "process" finds them via the state file.
	t2, err := topology.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range t2.Servers() {
		if s.PID() != pids[s.Name] || s.Port != topo.Server(s.Name).Port {
			t.Fatalf("Open: %s pid %d port %d, want %d %d", s.Name, s.PID(), s.Port, pids[s.Name], topo.Server(s.Name).Port)
		}
	}
	if err := topology.StopDir(dir); err != nil {
		t.Fatal(err)
	}
	for name, pid := range pids {
		if b, err := os.ReadFile("/proc/" + itoa(pid) + "/stat"); err == nil && !strings.Contains(string(b), ") Z ") {
			t.Errorf("%s (pid %d) still running after StopDir", name, pid)
		}
	}
	if running, err := topology.Running(dir); err != nil || running {
		t.Fatalf("Running after StopDir = %v, %v", running, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "topology.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("state file after StopDir: %v", err)
	}
	if err := topology.StopDir(dir); err != nil {
		t.Fatalf("StopDir twice: %v", err)
	}
}

func TestSharedAndNewDatabase(t *testing.T) {
	topo := topotest.Shared(t)
	db := topotest.NewDatabase(t, topo)
	ctx := ctxT(t)
	for _, s := range topo.Servers() {
		if got := mustQuery(t, ctx, s.URL("app", "app", db), "SELECT current_database()"); got != db {
			t.Fatalf("%s: %q", s.Name, got)
		}
	}
	if topotest.Shared(t) != topo {
		t.Fatal("Shared returned another topology")
	}
}

// TestServersDieWithProcess: a process that starts a topology and exits
// without Close (a test binary killed by its timeout) leaves no server behind.
func TestServersDieWithProcess(t *testing.T) {
	if dir := os.Getenv("TOPOLOGY_TEST_CHILD_DIR"); dir != "" {
		// The child: start and exit without Close.
		topo, err := topology.Start(ctxT(t), topology.Config{Dir: dir, Shards: 1, Replicas: 1})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range topo.Servers() {
			fmt.Printf("PID %s %d\n", s.Name, s.PID())
		}
		os.Exit(0)
	}
	topotest.RequireBinaries(t, "")
	dir, err := os.MkdirTemp("", "pgshard-topotest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = topology.StopDir(dir)
		os.RemoveAll(dir)
	})
	cmd := exec.Command(os.Args[0], "-test.run=^TestServersDieWithProcess$", "-test.v")
	cmd.Env = append(os.Environ(), "TOPOLOGY_TEST_CHILD_DIR="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	pids := map[string]int{}
	for _, line := range strings.Split(string(out), "\n") {
		var name string
		var pid int
		if n, _ := fmt.Sscanf(line, "PID %s %d", &name, &pid); n == 2 {
			pids[name] = pid
		}
	}
	if len(pids) != 2 {
		t.Fatalf("PIDs of the child's servers: %v; output:\n%s", pids, out)
	}
	testutil.WaitFor(t, time.Minute, "the child's servers to exit", func() error {
		for name, pid := range pids {
			b, err := os.ReadFile("/proc/" + itoa(pid) + "/stat")
			cmdline, _ := os.ReadFile("/proc/" + itoa(pid) + "/cmdline")
			if err == nil && !strings.Contains(string(b), ") Z ") && strings.Contains(string(cmdline), dir) {
				return errors.New(name + " still running")
			}
		}
		return nil
	})
}

func TestMain(m *testing.M) {
	topotest.Main(m, topology.Config{Shards: 1, Replicas: 1})
}

func itoa(i int) string { return strconv.Itoa(i) }
