package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/pgshard/pgshard/internal/testutil"
)

// slowForgets is a TxnLog whose Forget takes a while and that counts the
// forgets in flight at once.
type slowForgets struct {
	mu             sync.Mutex
	inflight, most int
	forgotten      map[string]int
}

func (l *slowForgets) Decide(context.Context, string, bool) (bool, error) { return true, nil }

func (l *slowForgets) Decision(context.Context, string) (bool, bool, error) { return false, false, nil }

func (l *slowForgets) Forget(_ context.Context, gid string) error {
	l.mu.Lock()
	l.inflight++
	l.most = max(l.most, l.inflight)
	l.mu.Unlock()
	time.Sleep(10 * time.Millisecond)
	l.mu.Lock()
	l.inflight--
	l.forgotten[gid]++
	l.mu.Unlock()
	return nil
}

// Decisions to forget that arrive close together are forgotten together
// (so that the Raft leader appends them in one write), at most a batch at
// once, each exactly once; shutting down forgets what is queued.
func TestForgetsGoTogether(t *testing.T) {
	l := &slowForgets{forgotten: map[string]int{}}
	s := &Server{log: slog.New(slog.DiscardHandler)}
	s.SetTxnLog(l)
	for i := range 10 {
		s.forgetLater(fmt.Sprintf("a%d", i))
	}
	testutil.WaitFor(t, 10*time.Second, "10 decisions forgotten", func() error {
		l.mu.Lock()
		defer l.mu.Unlock()
		if len(l.forgotten) != 10 {
			return fmt.Errorf("%d forgotten", len(l.forgotten))
		}
		return nil
	})
	l.mu.Lock()
	if l.most < 2 {
		t.Errorf("at most %d forget in flight: forgotten one by one", l.most)
	}
	l.mu.Unlock()
	for i := range 3 * forgetBatch {
		s.forgetLater(fmt.Sprintf("b%d", i))
	}
	s.stopForgetting()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.forgotten) != 10+3*forgetBatch || l.inflight != 0 {
		t.Errorf("%d forgotten, %d in flight after shutdown, want %d and 0", len(l.forgotten), l.inflight, 10+3*forgetBatch)
	}
	if l.most > forgetBatch {
		t.Errorf("%d forgets in flight at once, over a batch (%d)", l.most, forgetBatch)
	}
	for gid, n := range l.forgotten {
		if n != 1 {
			t.Errorf("%s forgotten %d times", gid, n)
		}
	}
}
