package proxy

import (
	"fmt"
	"strings"
	"time"
)

// DebugSessions describes every session's state (tests only).
func (s *Server) DebugSessions() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for _, sess := range s.sessions {
		sess.mu.Lock()
		pid := uint32(0)
		var w, m, d uint64
		if sess.sc != nil {
			pid = sess.sc.PID
			w, m, d = sess.sc.Writes.Load(), sess.sc.Messages.Load(), sess.sc.Dropped.Load()
		}
		fmt.Fprintf(&b, "conn writes=%d messages=%d dropped-idle=%d\n", w, m, d)
		fmt.Fprintf(&b, "session %d: backend pid %d attached=%v node=%d q=%d busy=%v tx=%c unsynced=%v srvErr=%v rt=%+v out=%d want=%+v skip=%v\n",
			sess.key.ProcessID, pid, sess.sc != nil, sess.node, sess.q.len(), sess.busy, sess.txStatus, sess.unsynced, sess.srvErr,
			sess.rt, len(sess.out), sess.want, sess.skipUntilSync)
		for i := sess.q.head; i < len(sess.q.buf); i++ {
			e := sess.q.buf[i]
			fmt.Fprintf(&b, "   entry kind=%c swallow=%v synth=%d\n", e.kind, e.swallow, len(e.synth))
		}
		sess.mu.Unlock()
	}
	return b.String()
}

// SetSpreadLegsHook runs f each time a statement spread inside a
// transaction has its legs, before they are checked against the current
// map; nil removes it.
func SetSpreadLegsHook(f func()) {
	if f == nil {
		testSpreadLegsHook.Store(nil)
		return
	}
	testSpreadLegsHook.Store(&f)
}

// SetCoordinatorCrash makes the two-phase commit coordinator stop at stage
// ("prepared": every shard prepared, no decision; "decided": the commit
// recorded, no COMMIT PREPARED sent) as a crashed node would: it answers
// the client with an error and drops its backends, leaving the prepared
// transactions to the recovery loop. nil restores normal behaviour.
func SetCoordinatorCrash(stage string) { testCrashStage.Store(&stage) }

// SetParkSweep sets the idle sweeper's period for servers started after
// it and returns the previous one.
func SetParkSweep(d time.Duration) time.Duration {
	return time.Duration(parkSweep.Swap(int64(d)))
}

// Parked returns how many sessions are parked now.
func (s *Server) Parked() int {
	if s.lot == nil {
		return 0
	}
	return s.lot.Len()
}

// Clients returns how many client sessions are registered.
func (s *Server) Clients() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// ParkedHolding counts the parked sessions that still hold per-session
// state a parked session gives up (shard bindings, output buffers).
func (s *Server) ParkedHolding() (parked, holding int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sess := range s.sessions {
		sess.mu.Lock()
		if sess.spot != nil {
			parked++
			if sess.binds != nil || sess.out != nil || sess.grp != nil {
				holding++
			}
		}
		sess.mu.Unlock()
	}
	return parked, holding
}

// SetMaxHold shortens how long a statement waits for a freeze to lift
// (tests only); it returns the restore.
func SetMaxHold(d time.Duration) (restore func()) {
	old := maxHold.Swap(int64(d))
	return func() { maxHold.Store(old) }
}

// ForgetCollatedForTest drops what is known of columns' collations.
func (s *Server) ForgetCollatedForTest() { s.forgetCollated() }
