package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgshard/pgshard/admin"
	"github.com/pgshard/pgshard/internal/testutil"
	"github.com/pgshard/pgshard/topology/topotest"
)

const e2eToken = "e2e-token"

// clusterNodeProc is one pgshard process of the 3-node test cluster.
type clusterNodeProc struct {
	id                    string
	conf, dataDir         string
	port, aport, raftPort int
	cmd                   *exec.Cmd
	log                   *syncBuffer
	done                  chan error
}

func (n *clusterNodeProc) adminURL() string { return fmt.Sprintf("http://127.0.0.1:%d", n.aport) }
func (n *clusterNodeProc) client() *admin.Client {
	return admin.NewClient(n.adminURL(), e2eToken)
}

func (n *clusterNodeProc) start(t *testing.T) {
	t.Helper()
	n.log.Write([]byte("---- start\n"))
	n.cmd = exec.Command(daemon(t), "-config", n.conf)
	n.cmd.Stdout, n.cmd.Stderr = n.log, n.log
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.done = make(chan error, 1)
	go func(c *exec.Cmd, done chan error) { done <- c.Wait() }(n.cmd, n.done)
}

func (n *clusterNodeProc) running() bool {
	if n.cmd == nil {
		return false
	}
	select {
	case err := <-n.done:
		n.done <- err
		return false
	default:
		return true
	}
}

// stop sends sig and waits for the exit; with SIGTERM the exit must be clean.
func (n *clusterNodeProc) stop(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if !n.running() {
		return
	}
	_ = n.cmd.Process.Signal(sig)
	select {
	case err := <-n.done:
		n.done <- err
		if sig == syscall.SIGTERM && err != nil {
			t.Errorf("%s: exit after SIGTERM: %v", n.id, err)
		}
	case <-time.After(30 * time.Second):
		_ = n.cmd.Process.Kill()
		t.Fatalf("%s did not exit after %v", n.id, sig)
	}
}

// startClusterNodes writes the configurations of three pgshard nodes
// (node0 bootstraps, the others join it; extra is TOML put before
// [cluster], e.g. [[shards]]) and starts them. They are killed at the end
// of the test, and their logs printed if it failed.
func startClusterNodes(t *testing.T, extra string) []*clusterNodeProc {
	t.Helper()
	base := t.TempDir()
	nodes := make([]*clusterNodeProc, 3)
	for i := range nodes {
		nodes[i] = &clusterNodeProc{id: fmt.Sprintf("node%d", i), log: &syncBuffer{},
			port: freePort(t), aport: freePort(t), raftPort: freePort(t),
			conf: filepath.Join(base, fmt.Sprintf("node%d.toml", i)), dataDir: filepath.Join(base, fmt.Sprintf("data%d", i))}
	}
	for i, n := range nodes {
		join := "bootstrap = true"
		if i > 0 {
			join = fmt.Sprintf("join = [%q]", nodes[0].adminURL())
		}
		conf := fmt.Sprintf(`listen = "127.0.0.1:%d"
admin_listen = "127.0.0.1:%d"
admin_token = %q
shutdown_timeout = "5s"
[[users]]
name = "app"
password = "app"
%s[cluster]
node_id = %q
raft_listen = "127.0.0.1:%d"
data_dir = %q
heartbeat_timeout = "500ms"
election_timeout = "500ms"
%s
`, n.port, n.aport, e2eToken, extra, n.id, n.raftPort, n.dataDir, join)
		if err := os.WriteFile(n.conf, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		n.start(t)
	}
	t.Cleanup(func() {
		for _, n := range nodes {
			if n.running() {
				_ = n.cmd.Process.Kill()
				<-n.done
			}
			if t.Failed() {
				t.Logf("%s log:\n%s", n.id, n.log.String())
			}
		}
	})
	return nodes
}

// runCtl runs pgshardctl against a node and returns stdout.
func runCtl(t *testing.T, n *clusterNodeProc, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(ctl(t), args...)
	cmd.Env = append(os.Environ(), "PGSHARD_ADMIN_URL="+n.adminURL(), "PGSHARD_ADMIN_TOKEN="+e2eToken)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("pgshardctl %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// TestClusterEndToEnd runs three real pgshard processes in one Raft cluster:
// leader killed with SIGKILL, a new leader, a write on a survivor, the killed
// node restarted and caught up, all restarted with the same map, and map
// locate agreeing with PostgreSQL's hashint8extended.
func TestClusterEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three pgshard processes")
	}
	topo := topotest.Shared(t)
	dsn := topo.Shards[0].Primary.DSN()
	db := topotest.NewDatabase(t, topo)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ctl(t)

	nodes := startClusterNodes(t, fmt.Sprintf("[[shards]]\nname = \"shard0\"\nprimary = %q\n", dsn))

	// All three are voters, the map is seeded from [[shards]], every node
	// holds the same version.
	testutil.WaitFor(t, 30*time.Second, "three voters agreeing on the seeded map", func() error { return agree(ctx, nodes, 3, 0) })
	st, _ := nodes[0].client().Status(ctx)
	t.Logf("cluster formed: leader %s, map version %d", st.LeaderID, st.MapVersion)

	// Writes through followers (forwarded to the leader).
	if out, err := runCtl(t, nodes[1], "tables", "add", "orders"); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("tables add orders via node1: %s", strings.TrimSpace(out))
	}
	if _, err := runCtl(t, nodes[2], "tables", "add", "countries", "--reference"); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "every node holding the reference table", func() error { return agree(ctx, nodes, 3, 0) })

	// Kill the leader with SIGKILL; a survivor reports a new leader.
	st, err := nodes[1].client().Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var leader *clusterNodeProc
	var survivors []*clusterNodeProc
	for _, n := range nodes {
		if n.id == st.LeaderID {
			leader = n
		} else {
			survivors = append(survivors, n)
		}
	}
	if leader == nil {
		t.Fatalf("no leader among the nodes: %+v", st)
	}
	killed := time.Now()
	leader.stop(t, syscall.SIGKILL)
	var newLeader string
	testutil.WaitFor(t, 15*time.Second, "a new leader", func() error {
		out, err := runCtl(t, survivors[0], "cluster", "status", "--json")
		if err != nil {
			return err
		}
		var s admin.Status
		if err := json.Unmarshal([]byte(out), &s); err != nil {
			return err
		}
		if s.LeaderID == "" || s.LeaderID == leader.id {
			return fmt.Errorf("leader %q", s.LeaderID)
		}
		newLeader = s.LeaderID
		return nil
	})
	t.Logf("SIGKILL of leader %s: %s reports new leader %s after %s", leader.id, survivors[0].id, newLeader, time.Since(killed).Round(time.Millisecond))
	if out, err := runCtl(t, survivors[0], "cluster", "status"); err == nil {
		t.Logf("cluster status on %s:\n%s", survivors[0].id, out)
	}

	// shards add on a survivor succeeds (whichever of them leads).
	// A fresh leader on a loaded machine may lose its leadership again: the
	// command then says the outcome is unknown, and is retried.
	var added admin.AddShardResult
	uncertain := false
	for attempt := 0; ; attempt++ {
		out, err := runCtl(t, survivors[1], "shards", "add", "shard1", "--primary", dsn, "--place", "--json")
		if err == nil {
			if err := json.Unmarshal([]byte(out), &added); err != nil {
				t.Fatal(err)
			}
			break
		}
		if uncertain && strings.Contains(err.Error(), "already") {
			sl, err := survivors[1].client().Shards(ctx)
			if err != nil {
				t.Fatal(err)
			}
			added.MapVersion = sl.MapVersion
			for _, s := range sl.Shards {
				if s.Name == "shard1" {
					added.Shard = s
				}
			}
			break
		}
		if attempt < 5 && (strings.Contains(err.Error(), "leadership lost") || strings.Contains(err.Error(), "no Raft leader")) {
			t.Logf("shards add: %v; retrying", err)
			uncertain = true
			continue
		}
		t.Fatal(err)
	}
	t.Logf("shards add shard1 on %s: map version %d, owns %.3f", survivors[1].id, added.MapVersion, added.Shard.Ownership)
	if added.Shard.Ownership < 0.49 || added.Shard.Ownership > 0.51 {
		t.Errorf("shard1 owns %v of the ring, want 1/2", added.Shard.Ownership)
	}

	// The killed node, restarted, catches up to the same map version.
	restarted := time.Now()
	leader.start(t)
	testutil.WaitFor(t, 30*time.Second, "the restarted node at the new map version", func() error { return agree(ctx, nodes, 3, added.MapVersion) })
	t.Logf("%s restarted and at map version %d after %s", leader.id, added.MapVersion, time.Since(restarted).Round(time.Millisecond))

	// Every proxy follows the map: both shards have a runtime, and clients
	// are served.
	for _, n := range nodes {
		testutil.WaitFor(t, 10*time.Second, n.id+"'s proxy following the map to 2 shards", func() error {
			if !strings.Contains(n.log.String(), "shards=2") {
				return errors.New("not in its log")
			}
			return nil
		})
		url := fmt.Sprintf("postgres://app:app@127.0.0.1:%d/%s?sslmode=disable", n.port, db)
		c, err := pgconn.Connect(ctx, url)
		if err != nil {
			t.Fatalf("%s: connect through the proxy: %v", n.id, err)
		}
		if _, err := c.Exec(ctx, "SELECT 1").ReadAll(); err != nil {
			t.Errorf("%s: SELECT 1: %v", n.id, err)
		}
		c.Close(ctx)
	}

	before, err := nodes[0].client().Tables(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mapBefore := mapJSON(ctx, t, nodes[0])

	// Restart all nodes: map, tables and shards are as before.
	for _, n := range nodes {
		n.stop(t, syscall.SIGTERM)
	}
	// One node alone has no leader: it is alive but not ready, and its
	// clients are refused, never routed by its file's [[shards]].
	nodes[0].start(t)
	get := func(path string) (int, error) {
		resp, err := http.Get(nodes[0].adminURL() + path)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	testutil.WaitFor(t, 20*time.Second, "node0's /healthz", func() error {
		if code, err := get("/healthz"); err != nil || code != http.StatusOK {
			return fmt.Errorf("%d %v", code, err)
		}
		return nil
	})
	if code, err := get("/readyz"); err != nil || code != http.StatusServiceUnavailable {
		t.Errorf("/readyz of a node without a leader: %d %v, want 503", code, err)
	}
	if _, err := pgconn.Connect(ctx, fmt.Sprintf("postgres://app:app@127.0.0.1:%d/%s?sslmode=disable", nodes[0].port, db)); err == nil || !strings.Contains(err.Error(), "57P03") {
		t.Errorf("login on a node without a leader: %v, want 57P03", err)
	}
	for _, n := range nodes[1:] {
		n.start(t)
	}
	testutil.WaitFor(t, 30*time.Second, "the restarted cluster at the same map version", func() error { return agree(ctx, nodes, 3, added.MapVersion) })
	if resp, err := http.Get(nodes[0].adminURL() + "/readyz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("/readyz once the cluster is back: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	for _, n := range nodes {
		if got := mapJSON(ctx, t, n); got != mapBefore {
			t.Errorf("%s: map after restart differs:\n%s\nbefore:\n%s", n.id, got, mapBefore)
		}
	}
	after, err := nodes[2].client().Tables(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(after.Tables) != fmt.Sprint(before.Tables) || len(after.Tables) != 2 {
		t.Errorf("tables after restart %v, before %v", after.Tables, before.Tables)
	}
	sl, err := nodes[1].client().Shards(ctx)
	if err != nil || len(sl.Shards) != 2 || sl.Shards[0].Name != "shard0" || sl.Shards[1].Name != "shard1" {
		t.Errorf("shards after restart: %+v %v", sl, err)
	}

	// map locate KEY agrees with PostgreSQL for integer keys.
	for _, key := range []string{"42", "0", "-1", "9223372036854775807", "-9223372036854775808", "2147483648"} {
		out, err := runCtl(t, nodes[1], "map", "locate", key, "--json")
		if err != nil {
			t.Fatal(err)
		}
		var loc admin.Location
		if err := json.Unmarshal([]byte(out), &loc); err != nil {
			t.Fatal(err)
		}
		want, err := topo.Shards[0].Primary.QueryValue(ctx, "postgres", fmt.Sprintf("SELECT hashint8extended('%s'::bigint, 0)", key))
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(loc.Hash) != want {
			t.Errorf("map locate %s: hash %d, PostgreSQL hashint8extended: %s", key, loc.Hash, want)
		}
		if key == "42" {
			human, _ := runCtl(t, nodes[1], "map", "locate", key)
			t.Logf("map locate 42 (PostgreSQL: %s):\n%s", want, human)
		}
	}
}

// agree checks that every node sees want voters, one common leader, and the
// same map version (at least minVersion, and with shards).
func agree(ctx context.Context, nodes []*clusterNodeProc, voters int, minVersion uint64) error {
	return agreeWith(ctx, nodes, voters, minVersion, true)
}

// caughtUp is agree for a map that changes all the time (two-phase
// decisions under load): every node sees the voters and the same leader
// and has a map at least as new as the leader's when the check began.
func caughtUp(ctx context.Context, nodes []*clusterNodeProc, voters int) error {
	var floor uint64
	for _, n := range nodes {
		st, err := n.client().Status(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", n.id, err)
		}
		if st.LeaderID == n.id {
			floor = st.MapVersion
		}
	}
	if floor == 0 {
		return errors.New("no node reports itself the leader")
	}
	return agreeWith(ctx, nodes, voters, floor, false)
}

func agreeWith(ctx context.Context, nodes []*clusterNodeProc, voters int, minVersion uint64, exact bool) error {
	var version uint64
	var leader string
	for i, n := range nodes {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := n.client().Status(cctx)
		cancel()
		if err != nil {
			return fmt.Errorf("%s: %w", n.id, err)
		}
		v := 0
		for _, s := range st.Servers {
			if s.Suffrage == "voter" {
				v++
			}
		}
		switch {
		case v != voters:
			return fmt.Errorf("%s sees %d voters", n.id, v)
		case st.LeaderID == "":
			return fmt.Errorf("%s knows no leader", n.id)
		case st.MapVersion == 0 || st.MapVersion < minVersion:
			return fmt.Errorf("%s at map version %d", n.id, st.MapVersion)
		case i > 0 && ((exact && st.MapVersion != version) || st.LeaderID != leader):
			return fmt.Errorf("%s at version %d leader %s; %s at %d leader %s", n.id, st.MapVersion, st.LeaderID, nodes[0].id, version, leader)
		}
		version, leader = st.MapVersion, st.LeaderID
		if err := serving(ctx, n); err != nil {
			return err
		}
	}
	return nil
}

// serving returns an error while n's proxy refuses logins with 57P03
// (it has not caught up with the shard map yet); any other answer means
// it serves.
func serving(ctx context.Context, n *clusterNodeProc) error {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := pgconn.Connect(cctx, fmt.Sprintf("postgres://app:app@127.0.0.1:%d/app?sslmode=disable", n.port))
	if err == nil {
		c.Close(ctx)
		return nil
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Code == "57P03" {
		return fmt.Errorf("%s: %w", n.id, err)
	}
	return nil
}

// mapJSON returns n's map as JSON without its version: every node that
// starts writes a sync entry (its version goes up, nothing else changes).
func mapJSON(ctx context.Context, t *testing.T, n *clusterNodeProc) string {
	t.Helper()
	v, _, err := n.client().Map(ctx)
	if err != nil {
		t.Fatalf("%s: map: %v", n.id, err)
	}
	var m map[string]any
	if err := json.Unmarshal(v.Map, &m); err != nil {
		t.Fatalf("%s: map: %v", n.id, err)
	}
	delete(m, "version")
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestDaemonDataDirErrors: a missing or damaged data dir stops the daemon at
// start with an error that names the problem and what to do, never an
// empty map.
func TestDaemonDataDirErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(dataDir string, bootstrap bool) string {
		conf := filepath.Join(dir, "c.toml")
		body := fmt.Sprintf(`listen = "127.0.0.1:%d"
admin_listen = "127.0.0.1:%d"
[[users]]
name = "app"
password = "app"
[[shards]]
name = "shard0"
primary = "host=127.0.0.1 port=1"
[cluster]
node_id = "n0"
raft_listen = "127.0.0.1:%d"
data_dir = %q
bootstrap = %v
`, freePort(t), freePort(t), freePort(t), dataDir, bootstrap)
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return conf
	}
	run := func(conf string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, daemon(t), "-config", conf).CombinedOutput()
		if err == nil || ctx.Err() != nil {
			t.Fatalf("pgshard started (or hung) with a bad data dir: %v\n%s", err, out)
		}
		return string(out)
	}

	missing := filepath.Join(dir, "missing")
	out := run(write(missing, false))
	for _, want := range []string{"does not exist", "cluster.bootstrap = true", "cluster.join"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing data dir: output lacks %q:\n%s", want, out)
		}
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Errorf("missing data dir was created: %v", err)
	}

	// A real data dir, then its log store damaged.
	data := filepath.Join(dir, "data")
	conf := write(data, true)
	cmd := exec.Command(daemon(t), "-config", conf)
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 20*time.Second, "the shard map seeded", func() error {
		if !strings.Contains(log.String(), "seeded the shard map") {
			return fmt.Errorf("not seeded yet")
		}
		return nil
	})
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, log.String())
	}
	db := filepath.Join(data, "raft", "raft.db")
	if err := os.WriteFile(db, []byte("not a bolt database at all, but long enough to look like one"), 0o600); err != nil {
		t.Fatal(err)
	}
	out = run(conf)
	for _, want := range []string{db, "corrupt", "restore the data dir"} {
		if !strings.Contains(out, want) {
			t.Errorf("damaged raft.db: output lacks %q:\n%s", want, out)
		}
	}
}
