package main_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgshard/pgshard/internal/testutil"
	"github.com/pgshard/pgshard/topology"
	"github.com/pgshard/pgshard/topology/topotest"
)

func TestMain(m *testing.M) {
	topotest.Main(m, topology.Config{Shards: 1, Replicas: 0})
}

// builtBinary is a program of this repository built once per test binary.
type builtBinary struct {
	once sync.Once
	path string
	err  error
}

// get builds package pkg (relative to this directory) as name, once.
func (b *builtBinary) get(t *testing.T, pkg, name string) string {
	t.Helper()
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", name+"-bin-")
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, name)
		out, err := exec.Command("go", "build", "-o", b.path, pkg).CombinedOutput()
		if err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

var daemonBin, ctlBin builtBinary

// daemon returns the pgshard binary; ctl the pgshardctl binary.
func daemon(t *testing.T) string { return daemonBin.get(t, ".", "pgshard") }
func ctl(t *testing.T) string    { return ctlBin.get(t, "../pgshardctl", "pgshardctl") }

// usedPorts are the ports freePort handed out in this test binary: the
// kernel may offer a just-released port again, and two of our own servers
// must never be given the same one.
var usedPorts = struct {
	sync.Mutex
	m map[int]bool
}{m: map[int]bool{}}

// freePort returns a port in [20000, 32000) (below the ephemeral range)
// that is free now and was not handed out before in this process.
func freePort(t *testing.T) int {
	t.Helper()
	usedPorts.Lock()
	defer usedPorts.Unlock()
	for range 1000 {
		p := 20000 + rand.IntN(12000)
		if usedPorts.m[p] {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		ln.Close()
		usedPorts.m[p] = true
		return p
	}
	t.Fatal("no free port in [20000, 32000)")
	return 0
}

// syncBuffer collects the daemon's log.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type proc struct {
	cmd        *exec.Cmd
	log        *syncBuffer
	url, admin string
	conf       string
	done       chan error
}

const confTemplate = `
listen = "127.0.0.1:%d"
admin_listen = "127.0.0.1:%d"
shutdown_timeout = "20s"
[pool]
mode = "transaction"
size = %d
wait_timeout = "300ms"
[[users]]
name = "app"
password = "%s"
[[shards]]
name = "shard0"
primary = "%s"
`

func start(t *testing.T, poolSize int, extraEnv ...string) *proc {
	t.Helper()
	topo := topotest.Shared(t)
	db := topotest.NewDatabase(t, topo)
	port, aport := freePort(t), freePort(t)
	p := &proc{log: &syncBuffer{}, done: make(chan error, 1)}
	p.conf = filepath.Join(t.TempDir(), "pgshard.toml")
	p.write(t, port, aport, poolSize, "app", topo.Shards[0].Primary.DSN())
	p.url = fmt.Sprintf("postgres://app:app@127.0.0.1:%d/%s?sslmode=disable", port, db)
	p.admin = fmt.Sprintf("http://127.0.0.1:%d", aport)
	p.cmd = exec.Command(daemon(t), "-config", p.conf)
	p.cmd.Env = append(os.Environ(), extraEnv...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("pgshard log:\n%s", p.log.String())
		}
	})
	testutil.WaitFor(t, 15*time.Second, "pgshard healthy", func() error {
		resp, err := http.Get(p.admin + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("healthz: %s", resp.Status)
		}
		return nil
	})
	return p
}

func (p *proc) write(t *testing.T, port, aport, size int, password, dsn string) {
	t.Helper()
	if err := os.WriteFile(p.conf, []byte(fmt.Sprintf(confTemplate, port, aport, size, password, dsn)), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestDaemonServesMetricsReloadsAndShutsDownGracefully(t *testing.T) {
	p := start(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	a, err := pgconn.Connect(ctx, p.url)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(ctx)
	if _, err := a.Exec(ctx, "CREATE TABLE d (x int); INSERT INTO d VALUES (1)").ReadAll(); err != nil {
		t.Fatal(err)
	}

	// Pool size 1: a second client waiting on an open transaction times out.
	b, err := pgconn.Connect(ctx, p.url)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)
	if _, err := a.Exec(ctx, "BEGIN; SELECT 1").ReadAll(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Exec(ctx, "SELECT 1").ReadAll(); err == nil {
		t.Fatal("pool of 1 served two transactions at once")
	}
	// Metrics, after the timeout error above.
	resp, err := http.Get(p.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"pgshard_queries_total", "pgshard_client_connections 2", `pgshard_server_connections{pool=`,
		"pgshard_query_duration_seconds_bucket", "pgshard_pool_wait_seconds_count", "pgshard_errors_total"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// SIGHUP with pool size 2: the waiting client now gets a backend while
	// a's transaction stays open, and a is not dropped.
	port := strings.Split(strings.Split(p.url, "@127.0.0.1:")[1], "/")[0]
	aport := strings.TrimPrefix(p.admin, "http://127.0.0.1:")
	var pp, ap int
	fmt.Sscan(port, &pp)
	fmt.Sscan(aport, &ap)
	topo := topotest.Shared(t)
	p.write(t, pp, ap, 2, "app", topo.Shards[0].Primary.DSN())
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "queries served after SIGHUP", func() error {
		_, err := b.Exec(ctx, "SELECT 1").ReadAll()
		return err
	})

	// SIGTERM: new clients are refused, the open transaction finishes, the
	// process exits 0.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "new connections refused after SIGTERM", func() error {
		c, err := pgconn.Connect(ctx, p.url)
		if err == nil {
			c.Close(ctx)
			return fmt.Errorf("still accepting")
		}
		return nil
	})
	if _, err := a.Exec(ctx, "INSERT INTO d VALUES (2); COMMIT").ReadAll(); err != nil {
		t.Fatalf("open transaction cut by SIGTERM: %v", err)
	}
	select {
	case err := <-p.done:
		p.done <- err
		if err != nil {
			t.Fatalf("exit: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("pgshard did not exit after SIGTERM")
	}
	v, err := topo.Shards[0].Primary.QueryValue(ctx, strings.Split(strings.Split(p.url, "/")[3], "?")[0], "SELECT count(*) FROM d")
	if err != nil || v != "2" {
		t.Fatalf("rows = %s, %v; want 2", v, err)
	}
}

func TestDaemonRejectsBadConfig(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(conf, []byte("listen = \"127.0.0.1:0\"\nbogus = 1\n[pool]\nmode = \"statement\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(daemon(t), "-config", conf).CombinedOutput()
	if err == nil {
		t.Fatalf("bad config accepted:\n%s", out)
	}
	if !strings.Contains(string(out), "bogus") {
		t.Fatalf("error does not name the unknown key:\n%s", out)
	}
	if err := os.WriteFile(conf, []byte("[pool]\nmode = \"statement\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _ = exec.Command(daemon(t), "-config", conf).CombinedOutput()
	for _, want := range []string{"pool.mode", "no [[users]]", "no [[shards]]"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("error lacks %q:\n%s", want, out)
		}
	}
	// Several shards without the map in Raft would all route to the first.
	two := "listen = \"127.0.0.1:0\"\nadmin_listen = \"\"\n[[users]]\nname = \"app\"\npassword = \"app\"\n" +
		"[[shards]]\nname = \"a\"\nprimary = \"host=127.0.0.1 port=1\"\n[[shards]]\nname = \"b\"\nprimary = \"host=127.0.0.1 port=2\"\n"
	if err := os.WriteFile(conf, []byte(two), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(daemon(t), "-config", conf).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "2 [[shards]] without [cluster] data_dir") {
		t.Fatalf("two shards without a cluster: %v\n%s", err, out)
	}
}
