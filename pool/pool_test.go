package pool

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/pgshard/pgshard/internal/testutil"
	"github.com/pgshard/pgshard/topology"
	"github.com/pgshard/pgshard/topology/topotest"
	"github.com/pgshard/pgshard/wire"
)

func TestMain(m *testing.M) {
	topotest.Main(m, topology.Config{Shards: 1})
}

func newPool(t *testing.T, cfg Config) *Pool {
	t.Helper()
	topo := topotest.Shared(t)
	cfg.ConnString = topo.Shards[0].Primary.DSN()
	cfg.User, cfg.Password, cfg.Database = "app", "app", "app"
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// waitFor waits up to 15 s for a condition on the pool's state.
func waitFor(t *testing.T, what string, f func() bool) {
	t.Helper()
	testutil.WaitFor(t, 15*time.Second, what, func() error {
		if !f() {
			return errors.New("not yet")
		}
		return nil
	})
}

func TestSizeWaitAndHandOff(t *testing.T) {
	p := newPool(t, Config{Size: 2, WaitTimeout: 200 * time.Millisecond})
	ctx := context.Background()
	a, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if a.PID == b.PID {
		t.Fatal("two acquisitions share a backend")
	}
	// Full: the third waits and times out with 53300.
	_, err = p.Acquire(ctx)
	var we *wire.Error
	if !errors.As(err, &we) || we.Code != wire.CodeTooManyConnections {
		t.Fatalf("full pool: %v, want 53300", err)
	}
	// A waiter gets the released connection.
	got := acquireAsync(ctx, t, p)
	waitFor(t, "a waiter", func() bool { return p.Stats().Waiting == 1 })
	p.Release(a)
	c := <-got
	if c.PID != a.PID {
		t.Fatalf("waiter got pid %d, want the released %d", c.PID, a.PID)
	}
	p.Release(b)
	p.Release(c)
	if st := p.Stats(); st.Idle != 2 || st.Active != 0 {
		t.Fatalf("stats after release: %+v", st)
	}
}

func TestIdleTimeoutAndLifetime(t *testing.T) {
	p := newPool(t, Config{Size: 2, IdleTimeout: 300 * time.Millisecond})
	ctx := context.Background()
	c, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p.Release(c)
	waitFor(t, "the idle connection to be closed", func() bool { return p.Stats().Idle == 0 })

	q := newPool(t, Config{Size: 1, MaxLifetime: 200 * time.Millisecond})
	c, err = q.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(250 * time.Millisecond) // let the lifetime pass; not a timing assertion
	q.Release(c)
	d, err := q.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d.PID == c.PID {
		t.Fatal("a connection past its lifetime was reused")
	}
	q.Release(d)
}

func TestDeadIdleConnectionIsNotHandedOut(t *testing.T) {
	topo := topotest.Shared(t)
	p := newPool(t, Config{Size: 1})
	ctx := context.Background()
	c, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pid := c.PID
	p.Release(c)
	// The server ends the idle backend.
	if err := topo.Shards[0].Primary.Exec(ctx, "postgres", "SELECT pg_terminate_backend("+strconv.Itoa(int(pid))+")"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the dead connection to leave the pool", func() bool { return p.Stats().Idle == 0 })
	d, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d.PID == pid {
		t.Fatal("a terminated backend was handed out")
	}
	p.Release(d)
}

func TestConnectErrorKeepsTheBackendsSQLSTATE(t *testing.T) {
	topo := topotest.Shared(t)
	p, err := New(Config{ConnString: topo.Shards[0].Primary.DSN(), User: "app", Password: "wrong", Database: "app", Size: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	_, err = p.Acquire(context.Background())
	var pe interface{ SQLState() string }
	if !errors.As(err, &pe) || pe.SQLState() != "28P01" {
		t.Fatalf("bad backend password: %v, want 28P01", err)
	}
	if st := p.Stats(); st.Active != 0 || st.Dialing != 0 {
		t.Fatalf("failed dial left counts: %+v", st)
	}
}

// acquireAsync acquires a connection from p on another goroutine; the
// channel gets it (nil after an error, which fails the test).
func acquireAsync(ctx context.Context, t *testing.T, p *Pool) <-chan *Conn {
	got := make(chan *Conn, 1)
	go func() {
		c, err := p.Acquire(ctx)
		if err != nil {
			t.Error(err)
		}
		got <- c
	}()
	return got
}
