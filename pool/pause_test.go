package pool

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pgshard/pgshard/wire"
)

// Pause closes idle connections, makes Acquire wait, closes connections
// released meanwhile, and Resume lets the waiters dial.
func TestPauseClosesIdleAndGatesAcquire(t *testing.T) {
	p := newPool(t, Config{Size: 3, WaitTimeout: 5 * time.Second})
	ctx := context.Background()
	a, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p.Release(a) // idle
	// b stays held: a busy connection the pause must not touch.
	p.Pause()
	if st := p.Stats(); st.Idle != 0 || st.Active != 1 {
		t.Fatalf("after Pause: %+v, want no idle and b still active", st)
	}
	got := acquireAsync(ctx, t, p)
	waitFor(t, "a waiter", func() bool { return p.Stats().Waiting == 1 })
	// Released while paused: closed, not handed to the waiter.
	p.Release(b)
	select {
	case c := <-got:
		t.Fatalf("Acquire returned pid %d while paused", c.PID)
	case <-time.After(200 * time.Millisecond):
	}
	if st := p.Stats(); st.Idle != 0 || st.Active != 0 || st.Waiting != 1 {
		t.Fatalf("after Release while paused: %+v", st)
	}
	p.Resume()
	select {
	case c := <-got:
		if c == nil {
			t.Fatal("no connection after Resume")
		}
		if c.PID == a.PID || c.PID == b.PID {
			t.Fatalf("got pid %d, a connection that should have been closed", c.PID)
		}
		p.Release(c)
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter was not served after Resume")
	}
	if st := p.Stats(); st.Idle != 1 || st.Active != 0 {
		t.Fatalf("after Resume: %+v", st)
	}
}

// A pause that outlasts the wait timeout fails Acquire with 55006 and a
// message that says why; pauses nest.
func TestPauseOutlastingWaitFailsWithObjectInUse(t *testing.T) {
	p := newPool(t, Config{Size: 2, WaitTimeout: 150 * time.Millisecond})
	ctx := context.Background()
	p.Pause()
	p.Pause()
	start := time.Now()
	_, err := p.Acquire(ctx)
	var we *wire.Error
	if !errors.As(err, &we) || we.Code != "55006" {
		t.Fatalf("Acquire while paused: %v, want 55006", err)
	}
	if d := time.Since(start); d < 100*time.Millisecond || d > 5*time.Second {
		t.Fatalf("Acquire failed after %s, want about the wait timeout", d)
	}
	p.Resume()
	if !p.isPaused() {
		t.Fatal("one Resume ended two Pauses")
	}
	p.Resume()
	c, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p.Release(c)
	if n := p.CloseIdle(); n != 1 {
		t.Fatalf("CloseIdle closed %d, want 1", n)
	}
	if st := p.Stats(); st.Idle != 0 {
		t.Fatalf("after CloseIdle: %+v", st)
	}
}
