package proxy

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/pgshard/pgshard/internal/parking"
	"github.com/pgshard/pgshard/internal/rawio"
	"github.com/pgshard/pgshard/router"
)

// Idle clients are parked: a session that holds no backend and has waited
// for its client's next message through a whole sweep (parkSweep, so 0.5
// to 1 s) gives up its goroutine and its buffers, and its socket waits in
// the server's parking.Lot. When the client sends something (or hangs up),
// the Lot starts a goroutine that runs the session loop again.
//
// The sweeper asks a session to park by setting its connection's read
// deadline in the past. Only the session loop's wait for a new message
// sees that deadline: on a TCP client that wait is rawio.Serve's (run),
// and the loop's other reads go through a descriptor of their own
// (rawio.Inside.Read); otherwise (TLS) the reads other than the wait for
// a new message (clientSource.parkable) clear it and read on. The loop
// parks only if the session is still idle, nothing is buffered and no
// message is half read (park); otherwise it clears the deadline and waits
// as before. A parked session keeps its place in Server.wg: whoever ends
// it (drive) says Done.
//
// TLS sessions are not parked: crypto/tls buffers what it decrypted.

// parkSweep is the sweeper's period in nanoseconds (tests shorten it).
var parkSweep atomic.Int64

func init() { parkSweep.Store(int64(500 * time.Millisecond)) }

// errParked is returned by run when the session parked: its goroutine ends
// and the session lives on in the Lot.
var errParked = errors.New("session parked")

// clientSource is what a session's wire.Reader reads the client through: the
// connection, whose read deadline (the sweeper's request to park) only the
// session loop's wait for a new message sees.
type clientSource struct {
	rw       rawio.Conn   // the client connection; the session writes through it too
	in       rawio.Inside // how the session loop reads it inside rw.Serve
	parkable bool         // the session loop waits for a new message (session loop)
}

// Read reads the client. Inside the session loop's Serve (a TCP client)
// the loop's wait for a new message does not wait (the loop waits in
// Serve, where the sweeper's deadline ends it) and other reads wait on the
// Inside; otherwise the connection's deadline is the sweeper's request.
func (c *clientSource) Read(p []byte) (int, error) {
	if c.in.Active() {
		if c.parkable {
			return c.in.TryRead(p)
		}
		return c.in.Read(p)
	}
	for {
		n, err := c.rw.Read(p)
		if err == nil || c.parkable || !errors.Is(err, os.ErrDeadlineExceeded) {
			return n, err
		}
		_ = c.rw.NetConn().SetReadDeadline(time.Time{})
		if n > 0 {
			return n, nil
		}
	}
}

// idleLocked reports whether the session holds nothing that needs its
// goroutine: no backend, no leg running, no answer or retry pending, no
// output (park also checks the session loop's own state: a transaction's
// legs, a message read ahead). Called with s.mu held.
func (s *session) idleLocked() bool {
	return s.sc == nil && !s.busy && s.q.len() == 0 && len(s.out) == 0 &&
		!s.rt.pending && !s.rt.active && len(s.running) == 0 &&
		s.cancelling == 0 && !s.closing && !s.dead && !s.lost
}

// park hands the session's socket to the Lot when the session is idle and
// nothing of the client's is buffered, and reports whether it did; the
// session loop then returns errParked at once. Called by the session loop
// after its wait for a new message ended on the sweeper's deadline.
func (s *session) park() bool {
	lot := s.srv.lot
	if lot == nil || s.parkConn == nil || s.pushback != nil || len(s.tx.legs) > 0 || !s.cr.Release() {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.idleLocked() || s.srv.closing.Load() {
		return false
	}
	// The resumed loop's reads must block as usual.
	if err := s.conn.SetReadDeadline(time.Time{}); err != nil {
		return false
	}
	sp, err := lot.Park(s.parkConn, func() { s.srv.unparked(s) })
	if err != nil {
		return false
	}
	s.spot = sp
	s.out, s.spare, s.sbuf, s.gbuf = nil, nil, nil, nil
	s.q = queue{}
	s.grp = nil
	s.binds = nil // pools are the server's: bindingFor finds them again
	s.params = router.Params{}
	s.srv.metrics.parked.Inc()
	return true
}

// unparkLocked takes a parked session out of the Lot and reports whether
// it was parked; the caller then runs it (Server.drive). Called with s.mu
// held.
func (s *session) unparkLocked() bool {
	if s.spot == nil || !s.srv.lot.Unpark(s.spot) {
		return false
	}
	s.leftLotLocked()
	return true
}

// leftLotLocked notes that the session is no longer parked. Called with
// s.mu held.
func (s *session) leftLotLocked() {
	s.spot = nil
	s.srv.metrics.parked.Dec()
}

// unparked runs a session the Lot woke, on the Lot's goroutine for it.
func (s *Server) unparked(sess *session) {
	sess.mu.Lock()
	sess.leftLotLocked()
	sess.mu.Unlock()
	s.drive(sess)
}

// sweepIdle asks every session that stayed idle since the last sweep to
// park; started by Serve (startParking), it ends when done is closed
// (Shutdown's stopParking).
func (s *Server) sweepIdle(done <-chan struct{}) {
	t := time.NewTicker(time.Duration(parkSweep.Load()))
	defer t.Stop()
	var list []*session
	var rel releaser
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		s.mu.Lock()
		list = list[:0]
		for _, sess := range s.sessions {
			list = append(list, sess)
		}
		s.mu.Unlock()
		for _, sess := range list {
			sess.sweep()
		}
		parked := s.lot.Len()
		rel.after(len(list)-parked, parked, time.Now())
		clear(list)
	}
}

// releaseStep and releaseEvery bound how often the sweeper hands memory
// back to the operating system: when a wave ended in which at least
// releaseStep sessions gave up their goroutines (parked or ended), at most
// once per releaseEvery.
const (
	releaseStep  = 1000
	releaseEvery = 10 * time.Second
)

// releaser returns the memory of sessions that gave up their goroutines in
// bulk (a wave of clients going idle, or leaving) to the operating system
// at once: otherwise the Go runtime keeps it until its next collection,
// which an idle process makes only every two minutes, and returns it
// slowly after that.
type releaser struct {
	peak   int       // most running sessions since the last release
	parked int       // fewest parked sessions since the last release
	at     time.Time // of the last release
	prev   [2]int    // running and parked sessions at the last sweep
}

// after is told the sessions running and parked at a sweep.
func (r *releaser) after(running, parked int, now time.Time) bool {
	prev := r.prev
	r.prev = [2]int{running, parked}
	r.peak = max(r.peak, running)
	r.parked = min(r.parked, parked)
	// Once the wave is over (no fewer running, no more parked than at the
	// last sweep) if it was one: many stopped running, or parked (a slow
	// wave of logins that went idle may never have many running at once).
	wave := r.peak-running >= releaseStep || parked-r.parked >= releaseStep
	if running < prev[0] || parked > prev[1] || !wave || now.Sub(r.at) < releaseEvery {
		return false
	}
	debug.FreeOSMemory()
	r.peak, r.parked, r.at = running, parked, now
	return true
}

// sweep marks the session; one still marked at the next sweep received no
// message meanwhile and is asked to park if it is idle.
func (s *session) sweep() {
	if s.parkConn == nil || !s.idleMark.Swap(true) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Under mu, so that it cannot land after park cleared the deadline.
	if s.spot == nil && s.idleLocked() {
		_ = s.conn.SetReadDeadline(time.Unix(1, 0))
	}
}

// startParking starts the Lot and the sweeper; without epoll (not Linux)
// sessions keep their goroutines. Called by Serve with s.mu held.
func (s *Server) startParking() {
	lot, err := parking.New()
	if err != nil {
		s.log.Info("idle clients keep a goroutine each", "err", err)
		return
	}
	s.lot = lot
	s.lotDone, s.sweepStop, s.sweepDone = make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(s.lotDone)
		if err := lot.Run(); err != nil {
			s.log.Error("BUG: parking lot stopped; clients parked now are not woken", "err", err)
		}
	}()
	go func() {
		defer close(s.sweepDone)
		s.sweepIdle(s.sweepStop)
	}()
}

// stopParking stops the sweeper and the Lot once no session is left.
func (s *Server) stopParking() {
	s.mu.Lock()
	lot := s.lot
	stopped := s.parkStopped
	s.parkStopped = true
	s.mu.Unlock()
	if lot == nil || stopped {
		return
	}
	close(s.sweepStop)
	<-s.sweepDone
	_ = lot.Close()
	<-s.lotDone
}

// sessionLog logs with the session's user, database and client address,
// composed when a line is logged: an idle session holds no logger of its
// own.
type sessionLog struct{ s *session }

func (l sessionLog) with(args []any) []any {
	return append(args, "user", l.s.user, "db", l.s.db, "client", l.s.conn.RemoteAddr().String())
}

func (l sessionLog) Debug(msg string, args ...any) {
	if l.s.srv.log.Enabled(context.Background(), slog.LevelDebug) {
		l.s.srv.log.Debug(msg, l.with(args)...)
	}
}
func (l sessionLog) Info(msg string, args ...any) { l.s.srv.log.Info(msg, l.with(args)...) }
func (l sessionLog) Warn(msg string, args ...any) { l.s.srv.log.Warn(msg, l.with(args)...) }
