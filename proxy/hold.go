package proxy

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshard/pgshard/router"
	"github.com/pgshard/pgshard/shardmap"
	"github.com/pgshard/pgshard/wire"
)

// Reshard jobs and the proxy (see DESIGN.md, "Resharding").
//
// While a job cuts a range over to its new owner, the map freezes the
// range (shardmap.Map.Frozen): a statement whose key falls in it, every
// scatter (reads too: see touchesFrozen), and every write that spans
// shards (reference tables, COPY FROM), waits here until the ring moves
// it (or the job lifts the freeze), then is planned again on the new map.
// Other statements never wait.
//
// A proxy that has not applied the freeze yet (its map is stale) may still
// send a write to the old owner; the old owner's fence refuses it with
// shardmap.CodeFenced. An autocommit batch refused so, before anything of
// its answer reached the client, is re-sent once this node's ring has
// changed (see ServerMessage and startRetry): the client sees nothing.
//
// While any job moves rows, schema changes are refused (SQLSTATE 55000):
// the job copies the schema once, at its start. So is TRUNCATE: the job's
// publications do not carry it, so rows already copied to a new owner, or
// copied from a snapshot taken before it, would come back after the
// cut-over.

// maxHold bounds how long a statement waits for a freeze to lift. A
// cut-over takes well under a second and gives up after a few; past
// this the statement is refused (router.CodeMoving), as the node's ring
// may be stale.
var maxHold atomic.Int64 // a time.Duration: 10 s

func init() { maxHold.Store(int64(10 * time.Second)) }

// maxFenceWait bounds how long a batch the fence refused waits for this
// node's ring to change before it is re-sent anyway.
const maxFenceWait = 30 * time.Second

// mapSignal wakes goroutines waiting for the next map.
type mapSignal struct {
	mu sync.Mutex
	ch chan struct{}
}

// wait returns a channel closed at the next broadcast.
func (m *mapSignal) wait() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ch == nil {
		m.ch = make(chan struct{})
	}
	return m.ch
}

// broadcast wakes every waiter.
func (m *mapSignal) broadcast() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ch != nil {
		close(m.ch)
		m.ch = nil
	}
}

// frozenLocator is the ring for a planner that also notes whether a key
// fell in a frozen range.
type frozenLocator struct {
	ring   *shardmap.Ring
	frozen []shardmap.Range
	hit    bool
}

func (f *frozenLocator) Lookup(h int64) string {
	for _, r := range f.frozen {
		if r.Contains(h) {
			f.hit = true
		}
	}
	return f.ring.Lookup(h)
}

// touchesFrozen reports whether the statement must wait for rs's freeze:
// a key in a frozen range, a scatter (read or write: it reads every
// range, the frozen ones included), or a write that spans shards.
//
// A scatter read waits too because the nodes apply the ring's commit one
// after another: a node that already has the new ring may acknowledge a
// write on the new owner while this node, still frozen on the old ring,
// would count the range on the old owner and miss that row.
func touchesFrozen(rs *routingState, planner *router.Planner, sql string, params *router.Params) bool {
	loc := frozenLocator{ring: rs.ring, frozen: rs.frozen}
	pl := planner.Plan(sql, params, &loc)
	return loc.hit || pl.Kind == router.Scatter || (!pl.Read && (pl.Kind == router.AllShards || pl.Copy != nil))
}

// refusedWhileMoving reports whether a statement is refused while a
// reshard job moves rows: a schema change or a TRUNCATE.
func refusedWhileMoving(fx router.Effects) bool {
	return (fx.Schema && !fx.Pin) || fx.Truncate
}

// errSchemaWhileMoving refuses a schema change or TRUNCATE during a
// reshard job.
func errSchemaWhileMoving() *wire.Error {
	e := wire.Errorf("55000", "pgshard: schema changes and TRUNCATE are not allowed while a reshard job moves rows")
	e.Hint = "wait until `pgshardctl reshard status` shows the job finished, or cancel it"
	return e
}

// holdQuery waits while a simple Query touches a frozen range; it
// returns a refusal for a schema change during a job.
func (s *session) holdQuery(ctx context.Context, sql string, fx router.Effects) *wire.Error {
	return s.hold(ctx, func(rs *routingState) (bool, *wire.Error) {
		if refusedWhileMoving(fx) {
			return false, errSchemaWhileMoving()
		}
		return len(rs.frozen) > 0 && touchesFrozen(rs, s.planner(rs), sql, nil), nil
	})
}

// holdGroup is holdQuery for an extended-protocol batch: it waits while
// any of its Binds touches a frozen range.
func (s *session) holdGroup(ctx context.Context, group []byte) *wire.Error {
	return s.hold(ctx, func(rs *routingState) (wait bool, refuse *wire.Error) {
		s.eachBind(group, func(p *pgproto3.Parse) bool {
			if refusedWhileMoving(router.Inspect(p.Query)) {
				refuse = errSchemaWhileMoving()
			}
			return refuse == nil
		}, func(sql string, types []uint32, rest []byte) bool {
			if len(rs.frozen) == 0 {
				return true
			}
			s.params.Types = types
			wait = bindParams(rest, &s.params) && touchesFrozen(rs, s.planner(rs), sql, &s.params)
			return !wait
		})
		return wait && refuse == nil, refuse
	})
}

// hold waits while check says the statement must, on the map as it
// stands; it costs one atomic load when no job moves rows.
func (s *session) hold(ctx context.Context, check func(rs *routingState) (bool, *wire.Error)) *wire.Error {
	var start time.Time
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
			s.srv.metrics.holds.Observe(time.Since(start).Seconds())
		}
	}()
	for {
		if rs := s.srv.routing.Load(); rs == nil || len(rs.moving) == 0 {
			return nil
		}
		changed := s.srv.mapChanged.wait() // before the load: no missed wake-up
		rs := s.srv.routing.Load()
		if rs == nil || len(rs.moving) == 0 {
			return nil
		}
		wait, refuse := check(rs)
		if refuse != nil || !wait {
			return refuse
		}
		if timer == nil {
			start, timer = time.Now(), time.NewTimer(time.Duration(maxHold.Load()))
		}
		select {
		case <-changed:
		case <-timer.C:
			// The cut-over lasts seconds at most; a freeze this long means
			// this node has not heard its outcome (cut off from the Raft
			// leader?). The old ring may be stale: refuse, never guess.
			waited := time.Duration(maxHold.Load())
			s.logger.Warn("a statement on a frozen range waited too long; refused", "waited", waited)
			return wire.Errorf(router.CodeMoving, "pgshard: this statement's range is being moved to another shard and this node has not learned the outcome within %v (is it cut off from the Raft leader?); retry it", waited)
		case <-ctx.Done():
			return wire.Errorf(wire.CodeAdminShutdown, "pgshard: shutting down")
		}
	}
}

// waitRingChange waits, for a batch the fence refused, until this node's
// ring differs from the one at version ring.
func (s *Server) waitRingChange(ring uint64) {
	timer := time.NewTimer(maxFenceWait)
	defer timer.Stop()
	for {
		changed := s.mapChanged.wait()
		if rs := s.routing.Load(); rs == nil || rs.ringVersion != ring {
			return
		}
		select {
		case <-changed:
		case <-timer.C:
			return
		}
	}
}
