package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshard/pgshard/config"
	"github.com/pgshard/pgshard/topology"
	"github.com/pgshard/pgshard/topology/topotest"
)

// freePorts returns n consecutive ports in [20000,32000) that are free now.
func freePorts(t *testing.T, n int) int {
	t.Helper()
	for range 1000 {
		base := 20000 + rand.IntN(12000-n)
		ok := true
		for p := base; p < base+n && ok; p++ {
			ok = topology.PortFree(p)
		}
		if ok {
			return base
		}
	}
	t.Fatal("no free ports")
	return 0
}

// parseEnv reads export K=V lines.
func parseEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "="); ok && strings.HasPrefix(line, "export ") {
			if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' { // shellQuote's quoting (no quote inside here)
				v = v[1 : len(v)-1]
			}
			env[k] = v
		}
	}
	return env
}

func queryOne(ctx context.Context, url, sql string) (string, error) {
	c, err := pgconn.Connect(ctx, url)
	if err != nil {
		return "", err
	}
	defer c.Close(context.Background())
	res, err := c.Exec(ctx, sql).ReadAll()
	if err != nil {
		return "", err
	}
	if len(res) == 0 || len(res[0].Rows) == 0 {
		return "", errors.New("no rows")
	}
	return string(res[0].Rows[0][0]), nil
}

func execSQL(ctx context.Context, url, sql string) error {
	c, err := pgconn.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	_, err = c.Exec(ctx, sql).ReadAll()
	return err
}

// TestDevUpDown builds pgshard and pgshardctl and runs `dev up` and `dev
// down` as real processes.
func TestDevUpDown(t *testing.T) {
	topotest.RequireBinaries(t, "")
	if testing.Short() {
		t.Skip("builds binaries and starts a topology")
	}
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/",
		"github.com/pgshard/pgshard/cmd/pgshard", "github.com/pgshard/pgshard/cmd/pgshardctl")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dir, err := os.MkdirTemp("", "pgshardctl-dev-")
	if err != nil {
		t.Fatal(err)
	}
	// MkdirTemp makes 0700, which the postgres OS user cannot search
	// (dev would fall back to a temp dir; see TestDevUpDown's cleanup).
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	dev := filepath.Join(dir, ".dev")
	ctl := func(args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(bin, "pgshardctl"), args...)
		cmd.Dir = dir
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "PGSHARD_") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() {
		if out, err := ctl("dev", "down", "--dir", dev); err != nil {
			t.Errorf("cleanup dev down: %v\n%s", err, out)
		}
		if target, err := os.Readlink(filepath.Join(dev, "pg")); err == nil {
			os.RemoveAll(target)
		}
		os.RemoveAll(dir)
	})

	pgPort := freePorts(t, 4)
	port := freePorts(t, 3)
	up := []string{"dev", "up", "--dir", dev, "--shards", "1", "--replicas", "1", "--spare", "1",
		"--pg-port", strconv.Itoa(pgPort), "--port", strconv.Itoa(port), "--admin-port", strconv.Itoa(port + 1),
		"--raft-port", strconv.Itoa(port + 2)}
	if out, err := ctl(up...); err != nil {
		t.Fatalf("dev up: %v\n%s\npgshard.log:\n%s", err, out, logTail(filepath.Join(dev, "pgshard.log"), 30))
	}

	if fi, err := os.Lstat(filepath.Join(dev, "pg")); err != nil || !fi.IsDir() {
		t.Errorf("%s/pg should be the data directory itself: %v", dev, err)
	}

	env := parseEnv(t, filepath.Join(dev, "env"))
	want := map[string]string{
		"PGSHARD_URL":         "postgres://app:app@127.0.0.1:" + strconv.Itoa(port) + "/app?sslmode=disable",
		"PGSHARD_ADMIN_URL":   "http://127.0.0.1:" + strconv.Itoa(port+1),
		"SHARD0_PRIMARY_URL":  "postgres://app:app@127.0.0.1:" + strconv.Itoa(pgPort) + "/app?sslmode=disable",
		"SHARD0_REPLICA0_URL": "postgres://app:app@127.0.0.1:" + strconv.Itoa(pgPort+1) + "/app?sslmode=disable",
		"SPARE0_PRIMARY_URL":  "postgres://app:app@127.0.0.1:" + strconv.Itoa(pgPort+2) + "/app?sslmode=disable",
		"SPARE0_REPLICA0_URL": "postgres://app:app@127.0.0.1:" + strconv.Itoa(pgPort+3) + "/app?sslmode=disable",
		"SPARE0_PRIMARY":      "host=127.0.0.1 port=" + strconv.Itoa(pgPort+2),
		"SPARE0_REPLICA0":     "host=127.0.0.1 port=" + strconv.Itoa(pgPort+3),
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("env %s = %q, want %q", k, env[k], v)
		}
	}
	if len(env["PGSHARD_ADMIN_TOKEN"]) != 32 {
		t.Errorf("PGSHARD_ADMIN_TOKEN = %q", env["PGSHARD_ADMIN_TOKEN"])
	}

	// The daemon's own config loader accepts the file; spares are not in the map.
	cfg, err := config.Load(filepath.Join(dev, "pgshard.toml"), func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Shards) != 1 || cfg.Shards[0].Primary != "host=127.0.0.1 port="+strconv.Itoa(pgPort) ||
		len(cfg.Shards[0].Replicas) != 1 || cfg.AdminToken != env["PGSHARD_ADMIN_TOKEN"] ||
		cfg.Resharding != (config.Resharding{User: "postgres", Database: "app"}) {
		t.Errorf("config: %+v", cfg)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for url, want := range map[string]string{
		env["PGSHARD_URL"]:         "app",
		env["SHARD0_PRIMARY_URL"]:  "f",
		env["SHARD0_REPLICA0_URL"]: "t",
		env["SPARE0_REPLICA0_URL"]: "t",
	} {
		sql := "SELECT pg_is_in_recovery()"
		if want == "app" {
			sql = "SELECT current_user"
		}
		if got, err := queryOne(ctx, url, sql); err != nil || got != want {
			t.Errorf("%s on %s = %q, %v; want %q", sql, url, got, err, want)
		}
	}

	// README's resharding walkthrough: the spare joins the map by a
	// reshard job with the DSNs of .dev/env, then leaves it again.
	admin := []string{"--admin-url", env["PGSHARD_ADMIN_URL"], "--token", env["PGSHARD_ADMIN_TOKEN"]}
	reshard := func(args ...string) string {
		t.Helper()
		out, err := ctl(append(append([]string{"reshard"}, args...), admin...)...)
		if err != nil {
			t.Fatalf("pgshardctl reshard %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	var rows strings.Builder
	for i := range 200 {
		if i > 0 {
			rows.WriteString(", ")
		}
		fmt.Fprintf(&rows, "(%d)", i+1)
	}
	for _, sql := range []string{
		"CREATE TABLE orders (user_id bigint NOT NULL, id bigserial, PRIMARY KEY (user_id, id))",
		"INSERT INTO orders (user_id) VALUES " + rows.String(),
	} {
		if err := execSQL(ctx, env["PGSHARD_URL"], sql); err != nil {
			t.Fatalf("%.40s: %v", sql, err)
		}
	}
	add := []string{"--add", "spare0", "--primary", env["SPARE0_PRIMARY"], "--replica", env["SPARE0_REPLICA0"]}
	if out := reshard(append([]string{"plan"}, add...)...); !strings.Contains(out, "spare0  50.00%") || !strings.Contains(out, "in database app") {
		t.Errorf("reshard plan:\n%s", out)
	}
	reshard(append([]string{"start"}, add...)...)
	if out := reshard("status", "--watch", "--interval", "200ms"); !strings.Contains(out, "phase done") {
		t.Errorf("reshard status --watch after adding spare0:\n%s", out)
	}
	if out, err := ctl(append([]string{"verify"}, admin...)...); err != nil || !strings.Contains(out, "orders  sharded  spare0") {
		t.Errorf("verify after adding spare0: %v\n%s", err, out)
	}
	reshard("start", "--remove", "spare0")
	if out := reshard("status", "--watch", "--interval", "200ms"); !strings.Contains(out, "phase done") {
		t.Errorf("reshard status --watch after removing spare0:\n%s", out)
	}
	if n, err := queryOne(ctx, env["PGSHARD_URL"], "SELECT count(*) FROM orders"); err != nil || n != "200" {
		t.Errorf("rows after adding and removing spare0: %s %v", n, err)
	}

	// A second up refuses to start over the running one.
	if out, err := ctl(up...); err == nil || !strings.Contains(out, "already running") {
		t.Errorf("second dev up: err=%v out=%s", err, out)
	}

	daemonPID := readPID(filepath.Join(dev, "pgshard.pid"))
	if daemonPID == 0 || !processAlive(daemonPID) {
		t.Fatalf("pgshard pid %d not running", daemonPID)
	}
	if out, err := ctl("dev", "down", "--dir", dev); err != nil {
		t.Fatalf("dev down: %v\n%s", err, out)
	}
	if processAlive(daemonPID) {
		t.Error("pgshard still running after dev down")
	}
	for _, url := range []string{env["PGSHARD_URL"], env["SHARD0_PRIMARY_URL"], env["SPARE0_REPLICA0_URL"]} {
		if _, err := queryOne(ctx, url, "SELECT 1"); err == nil {
			t.Errorf("%s still answers after dev down", url)
		}
	}
	if _, err := os.Stat(filepath.Join(dev, "env")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("env file after dev down: %v", err)
	}
	// down twice is fine.
	if out, err := ctl("dev", "down", "--dir", dev); err != nil {
		t.Fatalf("second dev down: %v\n%s", err, out)
	}
}

// TestDevEnvSpares: .dev/env gives each spare's DSNs as a shell reads
// them, ready for `pgshardctl reshard --add NAME --primary "$SPARE0_PRIMARY"`,
// and the dev configuration names the resharding database.
func TestDevEnvSpares(t *testing.T) {
	srv := func(port int) *topology.Server { return &topology.Server{Host: "127.0.0.1", Port: port} }
	topo := &topology.Topology{
		Shards: []*topology.Shard{{Name: "shard0", Primary: srv(1000)}},
		Spares: []*topology.Shard{{Name: "spare0", Spare: true, Primary: srv(2000), Replicas: []*topology.Server{srv(2001), srv(2002)}}},
	}
	o := &devOptions{dir: t.TempDir(), nodes: 1, port: 6432, adminPort: 6480, raftPort: 6490, poolMode: "transaction", poolSize: 5}
	file := filepath.Join(o.dir, "env")
	if err := os.WriteFile(file, []byte(devEnv(o, topo, "tok")), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("sh", "-c", `. "$1" && printf '%s|%s|%s|%s|%s' "$SPARE0_PRIMARY" "$SPARE0_REPLICA0" "$SPARE0_REPLICA1" "$SPARE0_PRIMARY_URL" "$SHARD0_PRIMARY_URL"`, "sh", file).CombinedOutput()
	want := "host=127.0.0.1 port=2000|host=127.0.0.1 port=2001|host=127.0.0.1 port=2002|" +
		"postgres://app:app@127.0.0.1:2000/app?sslmode=disable|postgres://app:app@127.0.0.1:1000/app?sslmode=disable"
	if err != nil || string(out) != want {
		t.Errorf("sourcing the env file: %v\n got %s\nwant %s", err, out, want)
	}
	cfgFile := filepath.Join(o.dir, "pgshard0.toml")
	if err := os.WriteFile(cfgFile, []byte(pgshardConfig(o, 0, topo, "tok")), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgFile, func(string) string { return "" })
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil || cfg.Resharding.Database != "app" || cfg.Resharding.User != "postgres" || len(cfg.Shards) != 1 {
		t.Errorf("dev config: %+v %v", cfg.Resharding, err)
	}
}

func TestTOMLString(t *testing.T) {
	for in, want := range map[string]string{
		`host=127.0.0.1 port=1`: `"host=127.0.0.1 port=1"`,
		`a"b\c`:                 `"a\"b\\c"`,
		"x\ny":                  `"x\u000Ay"`,
	} {
		if got := tomlString(in); got != want {
			t.Errorf("tomlString(%q) = %s, want %s", in, got, want)
		}
	}
}

// TestDevUpThreeNodes: NODES=3 starts three pgshard nodes in one Raft
// cluster; .dev/env lists each; the admin commands work against any node;
// dev down stops them all.
func TestDevUpThreeNodes(t *testing.T) {
	topotest.RequireBinaries(t, "")
	if testing.Short() {
		t.Skip("builds binaries and starts a topology")
	}
	bin := t.TempDir()
	build := exec.Command("go", "build", "-o", bin+"/",
		"github.com/pgshard/pgshard/cmd/pgshard", "github.com/pgshard/pgshard/cmd/pgshardctl")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	dir, err := os.MkdirTemp("", "pgshardctl-dev3-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	dev := filepath.Join(dir, ".dev")
	ctl := func(env []string, args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(bin, "pgshardctl"), args...)
		cmd.Dir = dir
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, "PGSHARD_") {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		cmd.Env = append(cmd.Env, env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() {
		if out, err := ctl(nil, "dev", "down", "--dir", dev); err != nil {
			t.Errorf("cleanup dev down: %v\n%s", err, out)
		}
		if target, err := os.Readlink(filepath.Join(dev, "pg")); err == nil {
			os.RemoveAll(target)
		}
		os.RemoveAll(dir)
	})
	pgPort := freePorts(t, 2)
	port := freePorts(t, 3)
	aport := freePorts(t, 3)
	rport := freePorts(t, 3)
	out, err := ctl([]string{"NODES=3"}, "dev", "up", "--dir", dev, "--shards", "2", "--replicas", "0",
		"--pg-port", strconv.Itoa(pgPort), "--port", strconv.Itoa(port), "--admin-port", strconv.Itoa(aport),
		"--raft-port", strconv.Itoa(rport))
	if err != nil {
		t.Fatalf("dev up NODES=3: %v\n%s\nnode logs:\n%s", err, out, logTail(filepath.Join(dev, "pgshard0.log"), 30))
	}
	env := parseEnv(t, filepath.Join(dev, "env"))
	if env["PGSHARD_URL"] != env["PGSHARD0_URL"] || env["PGSHARD_ADMIN_URL"] != env["PGSHARD0_ADMIN_URL"] {
		t.Errorf("PGSHARD_URL/PGSHARD_ADMIN_URL are not node 0's: %v", env)
	}
	var pids []int
	for i := range 3 {
		u, a := env["PGSHARD"+strconv.Itoa(i)+"_URL"], env["PGSHARD"+strconv.Itoa(i)+"_ADMIN_URL"]
		if u != "postgres://app:app@127.0.0.1:"+strconv.Itoa(port+i)+"/app?sslmode=disable" ||
			a != "http://127.0.0.1:"+strconv.Itoa(aport+i) {
			t.Errorf("node %d: URL %q admin URL %q", i, u, a)
		}
		pid := readPID(filepath.Join(dev, "pgshard"+strconv.Itoa(i)+".pid"))
		if pid == 0 || !processAlive(pid) {
			t.Errorf("node %d: pid %d not running", i, pid)
		}
		pids = append(pids, pid)
		// Every node answers, and sees three voters.
		out, err := ctl([]string{"PGSHARD_ADMIN_URL=" + a, "PGSHARD_ADMIN_TOKEN=" + env["PGSHARD_ADMIN_TOKEN"]}, "cluster", "status")
		if err != nil || strings.Count(out, " voter ") != 3 || !strings.Contains(out, "leader   node") {
			t.Errorf("cluster status on node %d: %v\n%s", i, err, out)
		}
	}
	// Both shards are in the map, each owning half of the ring.
	out, err = ctl([]string{"PGSHARD_ADMIN_URL=" + env["PGSHARD2_ADMIN_URL"], "PGSHARD_ADMIN_TOKEN=" + env["PGSHARD_ADMIN_TOKEN"]}, "shards", "list")
	if err != nil || strings.Count(out, "50.00%") != 2 {
		t.Errorf("shards list: %v\n%s", err, out)
	}
	if out, err := ctl(nil, "dev", "down", "--dir", dev); err != nil {
		t.Fatalf("dev down: %v\n%s", err, out)
	}
	for i, pid := range pids {
		if processAlive(pid) {
			t.Errorf("node %d (pid %d) still running after dev down", i, pid)
		}
	}
}
