package proxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgshard/pgshard/merge"
	"github.com/pgshard/pgshard/pool"
	"github.com/pgshard/pgshard/router"
	"github.com/pgshard/pgshard/shardmap"
	"github.com/pgshard/pgshard/wire"
)

// A spread statement runs on several shards at once: a scatter read merged
// into one result, a write on several shards committed atomically, DDL on
// every shard. It runs outside the session's own backend, over one leg per
// shard, while the session holds no backend and is outside a transaction
// (see runSpread); proxy/DESIGN.md describes the flow.

// legMsg is one backend message, copied off the reader goroutine.
type legMsg struct {
	typ byte
	msg []byte
}

// leg is one backend of one shard used by a spread statement. Its
// messages arrive on ch; a full channel holds the backend's reader, so a
// slow client slows the shards instead of filling memory.
type leg struct {
	b    *shardBinding
	sc   *pool.Conn
	node int
	ch   chan legMsg
	quit chan struct{} // closed when the spread is done with the leg
	gone chan struct{} // closed by ServerGone
	err  error         // why it is gone (set before gone is closed)
	once sync.Once
	row  [][]byte // DataRow values, reused
	tag  []byte   // the last CommandComplete's tag
	keep bool     // a transaction's leg (txlegs.go): closeLegs leaves it
}

func (l *leg) ServerMessage(_ *pool.Conn, typ byte, msg []byte, _ bool) {
	m := legMsg{typ: typ, msg: append([]byte(nil), msg...)}
	select {
	case l.ch <- m:
	case <-l.quit:
	}
}

func (l *leg) ServerGone(_ *pool.Conn, err error) {
	l.once.Do(func() {
		l.err = err
		close(l.gone)
	})
}

// next returns the leg's next message that is not a notice or a parameter
// status.
func (l *leg) next(ctx context.Context) (byte, []byte, error) {
	for {
		var m legMsg
		select {
		case m = <-l.ch:
		case <-l.gone:
			select {
			case m = <-l.ch:
			default:
				return 0, nil, wire.Errorf(wire.CodeConnectionFailure, "pgshard: lost the connection to shard %s: %v", l.b.rt.name, l.err)
			}
		case <-ctx.Done():
			return 0, nil, ctx.Err()
		}
		switch m.typ {
		case 'N', 'S', 'A':
			continue
		}
		return m.typ, m.msg, nil
	}
}

// untilReady reads up to the leg's next ReadyForQuery and returns the
// first error the backend reported on the way, if any.
func (l *leg) untilReady(ctx context.Context) (error, error) {
	var first error
	for {
		typ, msg, err := l.next(ctx)
		if err != nil {
			return first, err
		}
		switch typ {
		case 'E':
			if first == nil {
				first = backendError(msg)
			}
		case 'C':
			l.tag = append(l.tag[:0], tagOf(msg)...)
		case 'Z':
			return first, nil
		}
	}
}

// shardError is a shard's ErrorResponse, passed to the client as it is.
type shardError []byte

func (e shardError) Error() string {
	var er pgproto3.ErrorResponse
	if er.Decode(e[5:]) != nil {
		return "malformed error from a shard"
	}
	return er.Message + " (SQLSTATE " + er.Code + ")"
}

// SQLState returns the error's SQLSTATE.
func (e shardError) SQLState() string { return errorCode(e) }

// backendError keeps an ErrorResponse.
func backendError(msg []byte) error { return shardError(append([]byte(nil), msg...)) }

// legSource reads a leg's rows for the merge.
type legSource struct {
	ctx context.Context
	l   *leg
}

func (src legSource) Next() ([][]byte, bool, error) {
	typ, msg, err := src.l.next(src.ctx)
	if err != nil {
		return nil, false, err
	}
	switch typ {
	case 'D':
		row, ok := decodeDataRow(msg[5:], src.l.row[:0])
		if !ok {
			return nil, false, wire.Errorf(wire.CodeProtocolViolation, "pgshard: malformed DataRow from shard %s", src.l.b.rt.name)
		}
		src.l.row = row
		return row, true, nil
	case 'C':
		src.l.tag = append(src.l.tag[:0], tagOf(msg)...)
		return nil, false, nil
	case 'E':
		return nil, false, backendError(msg)
	}
	return nil, false, wire.Errorf(wire.CodeProtocolViolation, "pgshard: unexpected message %q from shard %s in a result", typ, src.l.b.rt.name)
}

// tagOf returns a CommandComplete's tag.
func tagOf(msg []byte) []byte {
	b := msg[5:]
	if len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	return b
}

// decodeDataRow reads a DataRow body into row (values point into b).
func decodeDataRow(b []byte, row [][]byte) ([][]byte, bool) {
	if len(b) < 2 {
		return nil, false
	}
	n := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	for i := 0; i < n; i++ {
		if len(b) < 4 {
			return nil, false
		}
		l := int32(binary.BigEndian.Uint32(b))
		b = b[4:]
		if l < 0 {
			row = append(row, nil)
			continue
		}
		if int(l) > len(b) {
			return nil, false
		}
		row = append(row, b[:l:l])
		b = b[l:]
	}
	return row, true
}

// spreadShards returns the shards a spread plan runs on.
func (s *Server) spreadShards(pl *router.Plan) []string {
	if pl.Kind == router.Multi {
		return pl.Shards
	}
	if rs := s.routing.Load(); rs != nil && rs.ring != nil {
		return rs.ring.Shards()
	}
	return nil
}

// openLegs takes a backend on each shard (a replica for a read where the
// read rules allow) with the session's settings, and queues the settings
// replay where one is needed. The caller releases them (closeLegs).
func (s *session) openLegs(ctx context.Context, shards []string, read bool) ([]*leg, error) {
	legs := make([]*leg, 0, len(shards))
	s.mu.Lock()
	wroteAt := s.wroteAt
	s.mu.Unlock()
	if !s.srv.readYourWrites {
		wroteAt = time.Time{}
	}
	for _, name := range shards {
		b, err := s.bindingFor(name)
		if err != nil {
			s.closeLegs(legs, false)
			return nil, err
		}
		l := &leg{b: b, node: -1, ch: make(chan legMsg, 64), quit: make(chan struct{}), gone: make(chan struct{})}
		for tries := 0; ; tries++ {
			p := b.primary
			l.node = -1
			if read && s.split {
				if i, ok := b.rt.pick(wroteAt); ok {
					l.node, p = i, s.replicaPool(b, i)
				}
			}
			sc, err := p.Acquire(ctx)
			if err != nil {
				s.closeLegs(legs, false)
				return nil, err
			}
			if sc.SetHandler(l) {
				l.sc = sc
				break
			}
			sc.Pool().Discard(sc)
			if tries > 8 {
				s.closeLegs(legs, false)
				return nil, wire.Errorf(wire.CodeConnectionFailure, "pgshard: backend connections to shard %s keep failing", name)
			}
		}
		if l.node >= 0 {
			b.rt.outstanding[l.node].Add(1)
		}
		legs = append(legs, l)
	}
	return legs, nil
}

// prelude returns what goes to a leg before the statement: the session's
// settings where its backend's differ.
func (s *session) prelude(l *leg) (out []byte, answers int) {
	st := stateOf(l.sc)
	st.unnamedOwner = nil // the spread's simple Queries drop the unnamed statement
	if st.setsKey != s.setsKey {
		st.setsKey = s.setsKey
		return queryMsg(s.replaySQL()), 1
	}
	return nil, 0
}

// closeLegs lets the legs go: back to their pools when healthy and idle
// (clean), else closed.
func (s *session) closeLegs(legs []*leg, clean bool) {
	s.clearRunning()
	for _, l := range legs {
		if l.keep {
			continue
		}
		close(l.quit)
		if l.node >= 0 {
			l.b.rt.outstanding[l.node].Add(-1)
		}
		select {
		case <-l.gone:
			clean = false
		default:
		}
		if clean {
			l.sc.Pool().Release(l.sc)
		} else {
			l.sc.SetHandler(nil)
			l.sc.Pool().Discard(l.sc)
		}
	}
}

// send writes b to every leg (each its own bytes).
func sendLegs(legs []*leg, bufs [][]byte) error {
	for i, l := range legs {
		if len(bufs[i]) == 0 {
			continue
		}
		if err := l.sc.Write(bufs[i]); err != nil {
			return wire.Errorf(wire.CodeConnectionFailure, "pgshard: lost the connection to shard %s: %v", l.b.rt.name, err)
		}
	}
	return nil
}

// sendOnLegs sends each leg its bytes, then reads the answers to the
// first pre[i] Queries in them (the settings replay, BEGIN) up to their
// ReadyForQuery; what comes after is the caller's to read.
func sendOnLegs(ctx context.Context, legs []*leg, bufs [][]byte, pre []int) error {
	if err := sendLegs(legs, bufs); err != nil {
		return err
	}
	for i, l := range legs {
		for j := 0; j < pre[i]; j++ {
			if _, err := l.untilReady(ctx); err != nil {
				return err
			}
		}
	}
	return nil
}

// eachLeg reads every leg up to its ReadyForQuery n times and returns the
// first error a backend reported (in shard order) and whether any leg was
// lost.
func eachLeg(ctx context.Context, legs []*leg, n int) (error, error) {
	var first error
	var lost error
	for _, l := range legs {
		for i := 0; i < n; i++ {
			e, err := l.untilReady(ctx)
			if first == nil && e != nil {
				first = e
			}
			if err != nil {
				lost = err
				break
			}
		}
	}
	return first, lost
}

// emit appends a message to the client's output and flushes it when it is
// large (a spread result streams).
func (s *session) emit(m pgproto3.BackendMessage) {
	s.mu.Lock()
	s.out, _ = m.Encode(s.out)
	big := len(s.out) > 64<<10
	s.mu.Unlock()
	if big {
		s.flushClient()
	}
}

// emitRaw appends a ready message to the client's output.
func (s *session) emitRaw(b []byte) {
	s.mu.Lock()
	s.out = append(s.out, b...)
	s.mu.Unlock()
}

// emitError sends an error to the client: a shard's as it is, else
// pgshard's (see asWireError).
func (s *session) emitError(err error) {
	s.spreadErrs++
	s.srv.metrics.errors.WithLabelValues(sqlstate(err)).Inc()
	s.mu.Lock()
	if se, ok := err.(shardError); ok {
		s.out = append(s.out, se...)
	} else {
		s.out = wire.AppendError(s.out, asWireError(err))
	}
	s.mu.Unlock()
}

func (s *session) emitReady() {
	s.mu.Lock()
	s.out = append(s.out, readyForQuery(s.txStatus)...)
	s.mu.Unlock()
	s.flushClient()
}

// asWireError turns what a spread step returned into the client's error.
func asWireError(err error) *wire.Error {
	var we *wire.Error
	if errors.As(err, &we) {
		return we
	}
	var pe interface{ SQLState() string }
	if errors.As(err, &pe) {
		return wire.Errorf(pe.SQLState(), "%s", err.Error())
	}
	return wire.Errorf(wire.CodeConnectionFailure, "pgshard: %v", err)
}

// decideTimeout bounds recording a two-phase decision: well under the
// recovery loop's grace period (30 s in cmd/pgshard).
const decideTimeout = 10 * time.Second

// testCrashStage simulates a coordinator that dies at a stage of two-phase
// commit (tests only: SetCoordinatorCrash); empty in production.
var testCrashStage atomic.Pointer[string]

// testSpreadLegsHook runs when a statement spread inside a transaction has
// its legs, before they are checked against the current map (tests only:
// SetSpreadLegsHook, to commit a cut-over in that window); nil in
// production.
var testSpreadLegsHook atomic.Pointer[func()]

// testCrashAt reports whether a simulated crash happens at stage.
func testCrashAt(stage string) bool {
	p := testCrashStage.Load()
	return p != nil && *p == stage
}

// errCrashed is what a client of a simulated crash gets.
var errCrashed = wire.Errorf(wire.CodeConnectionFailure, "pgshard: coordinator crash simulated by a test")

// codeActiveSQLTransaction is SQLSTATE active_sql_transaction: "cannot
// run inside a transaction block".
const codeActiveSQLTransaction = "25001"

// codeTransactionRollback is SQLSTATE transaction_rollback.
const codeTransactionRollback = "40000"

// newGID names a two-phase transaction; the recovery loop recognises
// pgshard's by the prefix.
func newGID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return GIDPrefix + hex.EncodeToString(b[:])
}

// extReq is an extended-protocol batch run as a spread statement: one
// Bind and Execute (after an optional Parse and Describe) up to its Sync.
type extReq struct {
	types    []uint32
	params   router.Params // the Bind's values (copied)
	results  []int16       // the Bind's result formats
	describe bool          // the client described the portal
	parse    bool          // the batch had a Parse: answer ParseComplete
	def      *stmtDef      // the client's named statement, if it names one (see staleSpread)
}

// stmtMsg is what leg i is sent to run text: a Query, or for an
// extended-protocol batch the unnamed statement parsed, bound, described
// and executed, and a Sync. params maps the text's parameters to the
// Bind's (SplitInsert), nil for all of them in order.
func (x *extReq) stmtMsg(dst []byte, text, orig string, params []int, hidden int) []byte {
	if x == nil {
		return append(dst, queryMsg(text)...)
	}
	types, vals, formats := x.types, x.params.Values, x.params.Formats
	if params != nil {
		types, vals, formats = nil, nil, nil
		for _, p := range params {
			if p < len(x.types) {
				types = append(types, x.types[p])
			} else {
				types = append(types, 0)
			}
			vals = append(vals, x.params.Values[p])
			switch len(x.params.Formats) {
			case 0:
				formats = append(formats, 0)
			case 1:
				formats = append(formats, x.params.Formats[0])
			default:
				formats = append(formats, x.params.Formats[p])
			}
		}
	}
	if params != nil {
		orig = "" // renumbered: text uses every parameter it has
	}
	types = declareUnused(text, orig, types, len(vals), formats)
	results := x.results
	if len(results) > 1 && hidden > 0 {
		results = append(append([]int16(nil), results...), make([]int16, hidden)...)
	}
	dst, _ = (&pgproto3.Parse{Query: text, ParameterOIDs: types}).Encode(dst)
	dst, _ = (&pgproto3.Bind{ParameterFormatCodes: formats, Parameters: vals, ResultFormatCodes: results}).Encode(dst)
	dst, _ = (&pgproto3.Describe{ObjectType: 'P'}).Encode(dst)
	dst, _ = (&pgproto3.Execute{}).Encode(dst)
	return append(dst, msgSync...)
}

// declareUnused gives a type to each of n parameters that text does not
// use but the client's orig does (the shards' text drops HAVING, whose
// parameters the merge evaluates): PostgreSQL cannot infer one, and a Bind
// must still carry every value. Text values are declared text, binary ones
// bytea, whose input accepts them all. One orig does not use either is
// left undeclared, so that the shards refuse it (42P18) as PostgreSQL
// would ("" for orig: declare all).
func declareUnused(text, orig string, types []uint32, n int, formats []int16) []uint32 {
	if len(types) >= n && !slices.Contains(types, 0) {
		return types
	}
	out := make([]uint32, n)
	copy(out, types)
	for i := range out {
		if out[i] != 0 || usesParam(text, i+1) || (orig != "" && !usesParam(orig, i+1)) {
			continue
		}
		f := int16(0)
		switch {
		case len(formats) == 1:
			f = formats[0]
		case i < len(formats):
			f = formats[i]
		}
		out[i] = 25 // text
		if f == 1 {
			out[i] = 17 // bytea
		}
	}
	return out
}

// usesParam reports whether $n appears in text (a reference inside a
// string or comment counts too: the type is then left to PostgreSQL).
func usesParam(text string, n int) bool {
	p := "$" + strconv.Itoa(n)
	for i := 0; ; {
		j := strings.Index(text[i:], p)
		if j < 0 {
			return false
		}
		end := i + j + len(p)
		if end >= len(text) || text[end] < '0' || text[end] > '9' {
			return true
		}
		i = end
	}
}

// ownedTexts returns what each leg runs instead of text while a reshard
// job moves ranges: text rewritten to skip the rows of the moving ranges
// its shard does not own on the current ring (router.ExcludeMoving), so
// that no row on two shards is counted twice. nil (every leg runs text
// as it is, byte for byte) when nothing moves, when no leg excludes
// anything, for plans keyed to their rows' owners (Single, a split
// INSERT) and for AllShards. sql and x are the client's statement and
// Bind. columns, when set, gives the columns of a COPY's table
// (router.CopyPlan.NeedsColumns), asked only when a leg excludes rows. A
// statement that cannot be rewritten is refused with 55000.
func (s *session) ownedTexts(legs []*leg, pl *router.Plan, sql, text string, x *extReq, columns func() ([]string, error)) ([]string, error) {
	if pl.InsertSelect != nil {
		return s.insertSelectTexts(legs, pl.InsertSelect, text)
	}
	rs, excl, err := s.legExclusions(legs, pl, sql, x)
	if err != nil || excl == nil {
		return nil, err
	}
	var cols []string
	if columns != nil {
		if cols, err = columns(); err != nil {
			return nil, err
		}
	}
	out := make([]string, len(legs))
	for i := range legs {
		out[i] = text
		if len(excl[i]) == 0 {
			continue
		}
		t, rerr := s.planner(rs).ExcludeMoving(text, excl[i], cols)
		if rerr != nil {
			return nil, wire.Errorf(rerr.Code, "pgshard: %s", rerr.Message)
		}
		out[i] = t
	}
	return out, nil
}

// insertSelectTexts returns what each leg runs of an INSERT … SELECT
// that every shard runs (router.InsertSelect): text keeping the rows
// whose key its shard owns on the current ring. Every shard that owns a
// range must be among the legs, or its rows would go nowhere: when the
// ring changed since the legs were chosen (a cut-over), the statement is
// refused with 55000, to be retried.
func (s *session) insertSelectTexts(legs []*leg, is *router.InsertSelect, text string) ([]string, error) {
	rs := s.srv.routing.Load()
	if rs == nil || rs.ring == nil || rs.planner == nil {
		return nil, wire.Errorf(router.CodeMoving, "pgshard: the shard map changed while this statement started; retry it")
	}
	for _, owner := range rs.ring.Shards() {
		if !slices.ContainsFunc(legs, func(l *leg) bool { return l.b.rt.name == owner }) {
			return nil, wire.Errorf(router.CodeMoving, "pgshard: the shard map changed while this statement started (shard %s owns keys now); retry it", owner)
		}
	}
	out := make([]string, len(legs))
	for i, l := range legs {
		t, rerr := s.planner(rs).OwnRows(text, rs.ring.Ranges(l.b.rt.name), is)
		if rerr != nil {
			return nil, wire.Errorf(rerr.Code, "pgshard: %s", rerr.Message)
		}
		out[i] = t
	}
	return out, nil
}

// movingFor returns the routing state when a reshard job moves rows and
// pl spreads a statement whose legs skip the moving rows they do not own
// (a scatter or multi-shard statement, not an INSERT's rows or COPY FROM);
// nil otherwise.
func (s *Server) movingFor(pl *router.Plan) *routingState {
	rs := s.routing.Load()
	if rs == nil || len(rs.moving) == 0 || rs.ring == nil || rs.planner == nil {
		return nil
	}
	if (pl.Kind != router.Scatter && pl.Kind != router.Multi) || len(pl.Rows) > 0 || (pl.Copy != nil && pl.Copy.From) {
		return nil
	}
	return rs
}

// legExclusions returns, per leg, the moving ranges its shard does not
// own on the current ring, and that routing state; excl is nil when no
// leg excludes anything (see ownedTexts). The legs were chosen by the map
// the statement was planned on, the exclusions by the current one: they
// must agree, or a range whose owner changed in between could be read
// from no shard. When they do not (a cut-over committed meanwhile), the
// statement is refused with 55000, to be retried.
func (s *session) legExclusions(legs []*leg, pl *router.Plan, sql string, x *extReq) (*routingState, [][]shardmap.Range, error) {
	rs := s.srv.movingFor(pl)
	if rs == nil {
		return nil, nil, nil
	}
	var excl [][]shardmap.Range
	for i, l := range legs {
		e := router.Excluded(rs.moving, rs.ring, l.b.rt.name)
		if len(e) == 0 {
			continue
		}
		if excl == nil {
			excl = make([][]shardmap.Range, len(legs))
		}
		excl[i] = e
	}
	if excl == nil {
		return nil, nil, nil
	}
	if _, ok := s.legsMatch(rs, legs, sql, x); !ok {
		return nil, nil, wire.Errorf(router.CodeMoving, "pgshard: the shard map changed while this statement started, during a reshard job that moves rows; retry it")
	}
	return rs, excl, nil
}

// legsMatch plans sql again on rs and reports whether legs cover the
// shards that plan runs on, and the plan. A leg more is harmless: it runs
// the statement with the moving ranges its shard does not own excluded,
// and holds no other rows it does not own (a transaction's home shard is
// a leg of every statement spread inside it).
func (s *session) legsMatch(rs *routingState, legs []*leg, sql string, x *extReq) (router.Plan, bool) {
	var params *router.Params
	if x != nil {
		params = &x.params
	}
	now := s.planner(rs).Plan(sql, params, rs.ring)
	var want []string
	switch now.Kind {
	case router.Scatter:
		want = rs.ring.Shards()
	case router.Multi:
		want = slices.Clone(now.Shards)
	}
	for _, name := range want {
		if !slices.ContainsFunc(legs, func(l *leg) bool { return l.b.rt.name == name }) {
			return now, false
		}
	}
	return now, true
}

// replanMoving plans a spread statement again on the current map while a
// reshard job moves rows, when its legs no longer cover the shards that
// plan runs on (a cut-over committed since pl was planned). It returns the
// new plan, or nil when the legs stand.
func (s *session) replanMoving(legs []*leg, pl *router.Plan, sql string, x *extReq) *router.Plan {
	rs := s.srv.movingFor(pl)
	if rs == nil {
		return nil
	}
	now, ok := s.legsMatch(rs, legs, sql, x)
	if ok || (now.Kind != router.Scatter && now.Kind != router.Multi) || len(now.Rows) > 0 {
		return nil
	}
	return &now
}

// currentLegs makes sure, while a reshard job moves rows, that the legs
// of a spread statement are the shards the current map plans it on: a
// cut-over committed since the statement was planned changes the owner of
// a moving range, and the legs' exclusions (ownedTexts) follow the
// current map. Otherwise it plans the statement again and opens the legs
// of that plan (a few times at most; ownedTexts refuses what still
// differs). Without a job it returns legs and pl as they are.
func (s *session) currentLegs(ctx context.Context, legs []*leg, pl *router.Plan, sql string, x *extReq, read bool) ([]*leg, *router.Plan, error) {
	for tries := 0; tries < 3; tries++ {
		now := s.replanMoving(legs, pl, sql, x)
		if now == nil {
			return legs, pl, nil
		}
		s.closeLegs(legs, true)
		pl = now
		var err error
		if legs, err = s.openLegs(ctx, s.srv.spreadShards(pl), read); err != nil {
			return nil, pl, err
		}
	}
	return legs, pl, nil
}

// replicaAllowed reports whether a read spread over shards may go to
// replicas: not with a /* pgshard:primary */ hint or the session's
// pgshard.route = primary, as for a read on one shard (routeQuery).
func (s *session) replicaAllowed(sql string) bool {
	if s.forcePrimary {
		return false
	}
	hint := router.Inspect(sql).Route
	if hint == router.RouteAuto {
		hint = s.route
	}
	return hint != router.RoutePrimary
}

// runSpread runs a simple Query (x nil) or an extended-protocol batch
// whose plan spans several shards, and answers the client. The session
// is idle: outside a transaction, holding no backend.
func (s *session) runSpread(ctx context.Context, pl *router.Plan, sql string, x *extReq) error {
	shards := s.srv.spreadShards(pl)
	read := pl.Read && pl.Kind != router.AllShards
	replica := read && s.replicaAllowed(sql)
	legs, err := s.openLegs(ctx, shards, replica)
	if err != nil {
		if we := asWireError(err); we.Severity != "FATAL" {
			s.emitError(err)
			s.emitReady()
			return nil
		}
		return err
	}
	if legs, pl, err = s.currentLegs(ctx, legs, pl, sql, x, replica); err != nil {
		if we := asWireError(err); we.Severity != "FATAL" {
			s.emitError(err)
			s.emitReady()
			return nil
		}
		return err
	}
	s.setRunning(legs)
	start := time.Now()
	if x != nil {
		if x.parse {
			s.emitRaw(msgParseComplete)
		}
		s.emitRaw(msgBindComplete)
	}
	switch {
	case pl.Copy != nil && x != nil:
		s.closeLegs(legs, true)
		s.emitError(wire.Errorf(wire.CodeFeatureNotSupported, "pgshard: COPY across shards through the extended protocol is not supported; send it as a simple Query"))
	case pl.Copy != nil && pl.Copy.From:
		err = s.spreadCopyIn(ctx, legs, pl, sql)
	case pl.Copy != nil:
		err = s.spreadCopyOut(ctx, legs, pl, sql)
	case read:
		err = s.spreadRead(ctx, legs, pl, sql, x)
	default:
		err = s.spreadWrite(ctx, legs, pl, sql, x)
	}
	s.srv.metrics.queries.Inc()
	s.srv.metrics.latency.Observe(time.Since(start).Seconds())
	if err != nil {
		return err
	}
	s.emitReady()
	return nil
}

// spreadRead runs a read on every leg and merges the results.
func (s *session) spreadRead(ctx context.Context, legs []*leg, pl *router.Plan, sql string, x *extReq) error {
	text := sql
	if pl.ShardSQL != "" {
		text = pl.ShardSQL
	}
	clean := false
	defer func() { s.closeLegs(legs, clean) }()
	texts, err := s.ownedTexts(legs, pl, sql, text, x, nil)
	if err != nil {
		s.emitError(err)
		clean = true
		return nil
	}
	bufs := make([][]byte, len(legs))
	pre := make([]int, len(legs))
	askCollation := s.srv.collation(s.db) == ""
	var rels, askRels []string
	if pl.Merge != nil {
		rels = s.srv.relationsOf(sql)
		askRels = s.srv.unknownCollated(s.db, rels)
	}
	for i, l := range legs {
		bufs[i], pre[i] = s.prelude(l)
		if i == 0 && askCollation {
			bufs[i] = append(bufs[i], queryMsg(collationSQL)...)
		}
		if i == 0 && len(askRels) > 0 {
			bufs[i] = append(bufs[i], queryMsg(collatedSQL(askRels))...)
		}
		hidden := 0
		if pl.Merge != nil {
			hidden = pl.Merge.Hidden
		}
		t := text
		if texts != nil {
			t = texts[i]
		}
		bufs[i] = x.stmtMsg(bufs[i], t, sql, nil, hidden)
	}
	if err := sendOnLegs(ctx, legs, bufs, pre); err != nil {
		s.emitError(err)
		return nil
	}
	if askCollation {
		if err := s.readCollation(ctx, legs[0]); err != nil {
			s.emitError(err)
			return nil
		}
	}
	collKnown := true
	if len(askRels) > 0 {
		var err error
		if collKnown, err = s.readCollated(ctx, legs[0], askRels); err != nil {
			s.emitError(err)
			return nil
		}
	}
	// Each leg's first answer: a RowDescription, a command without rows,
	// or an error.
	var desc *pgproto3.RowDescription
	var first error
	tags := make([][]byte, len(legs))
	rowsFollow := make([]bool, len(legs))
	for i, l := range legs {
		typ, msg, err := l.next(ctx)
		for err == nil && (typ == '1' || typ == '2' || typ == 'n') {
			typ, msg, err = l.next(ctx)
		}
		if err != nil {
			s.emitError(err)
			return nil
		}
		switch typ {
		case 'T':
			rowsFollow[i] = true
			if desc == nil {
				desc = &pgproto3.RowDescription{}
				if desc.Decode(msg[5:]) != nil {
					s.emitError(wire.Errorf(wire.CodeProtocolViolation, "pgshard: malformed RowDescription from shard %s", l.b.rt.name))
					return nil
				}
			}
		case 'E':
			if first == nil {
				if first = s.staleSpread(x, nil, msg); first == nil {
					first = backendError(msg)
				}
			}
		case 'C':
			tags[i] = append([]byte(nil), tagOf(msg)...)
		case 'I':
		}
	}
	if first != nil {
		s.emitError(first)
		return nil
	}
	if desc == nil {
		// No rows from any shard (SHOW, a utility statement): one answer.
		if x != nil && x.describe {
			s.emitRaw(msgNoData)
		}
		if tag, err := merge.CombineTags(nonNil(tags)); err == nil && len(tag) > 0 {
			s.emit(&pgproto3.CommandComplete{CommandTag: tag})
		} else {
			s.emit(&pgproto3.EmptyQueryResponse{})
		}
		_, lost := eachLeg(ctx, legs, 1)
		clean = lost == nil
		return nil
	}
	var params *router.Params
	if x != nil {
		params = &x.params
	}
	coll := collatedUnknown
	if collKnown {
		coll = s.srv.collatedOf(s.db, rels)
	}
	spec, err := s.mergeSpec(pl, desc, params, coll)
	if err != nil {
		s.emitError(err)
		return nil
	}
	srcs := make([]merge.Source, len(legs))
	for i, l := range legs {
		srcs[i] = legSource{ctx: ctx, l: l}
	}
	m, err := merge.New(spec, srcs)
	if err != nil {
		s.emitError(err)
		return nil
	}
	if err := s.staleSpread(x, m.RowDescription(), nil); err != nil {
		s.emitError(err)
		return nil
	}
	if x == nil || x.describe {
		s.emit(m.RowDescription())
	}
	var dr pgproto3.DataRow
	for {
		row, ok, err := m.Next()
		if err != nil {
			s.emitError(err)
			return nil
		}
		if !ok {
			break
		}
		dr.Values = row
		s.emit(&dr)
	}
	s.emit(&pgproto3.CommandComplete{CommandTag: m.CommandTag()})
	// Drain what the merge left unread (LIMIT) up to each ReadyForQuery.
	_, lost := eachLeg(ctx, legs, 1)
	clean = lost == nil
	return nil
}

func nonNil(tags [][]byte) [][]byte {
	out := tags[:0:0]
	for _, t := range tags {
		if t != nil {
			out = append(out, t)
		}
	}
	return out
}

// spreadWrite runs a write (or DDL) on every leg in one transaction per
// shard and commits them atomically: with two-phase commit when more than
// one shard took part, the decision recorded in the TxnLog before the
// first COMMIT PREPARED.
func (s *session) spreadWrite(ctx context.Context, legs []*leg, pl *router.Plan, sql string, x *extReq) error {
	clean := false
	defer func() { s.closeLegs(legs, clean) }()
	if pl.Kind == router.AllShards {
		defer s.srv.forgetCollated() // DDL may change columns' collations (collated.go)
	}
	if !s.spreadTxn && firstWord(sql) == "lock" {
		// pgshard's own BEGIN around it would let it pass, locking
		// nothing the client holds; PostgreSQL refuses it.
		s.emitError(wire.Errorf(wire.CodeNoActiveSQLTransaction, "LOCK TABLE can only be used in transaction blocks"))
		clean = true
		return nil
	}
	log := s.srv.txnLogger()
	if len(legs) > 1 && log == nil {
		s.emitError(wire.Errorf(wire.CodeFeatureNotSupported, "pgshard: this statement writes on %d shards and needs two-phase commit, but this node has no decision log (the Raft shard map)", len(legs)))
		clean = true
		return nil
	}
	ddl, derr := s.tableDDL(pl, sql)
	if derr != nil {
		s.emitError(derr)
		clean = true
		return nil
	}
	// An autocommit write on several shards sends its PREPARE TRANSACTION
	// right behind the statement (one round trip less): a failed statement
	// turns it into a rollback.
	gid := ""
	if !s.spreadTxn && len(legs) > 1 && pl.Kind != router.AllShards {
		gid = newGID()
	}
	texts, err := s.ownedTexts(legs, pl, sql, sql, x, nil)
	if err != nil {
		s.emitError(err)
		clean = true
		return nil
	}
	bufs := make([][]byte, len(legs))
	pre := make([]int, len(legs))
	for i, l := range legs {
		text := sql
		if texts != nil {
			text = texts[i]
		}
		var params []int
		if pl.Rows != nil {
			t, ps, err := router.SplitInsert(sql, pl.Rows[i])
			if err != nil {
				s.emitError(wire.Errorf(wire.CodeFeatureNotSupported, "pgshard: %v", err))
				clean = true
				return nil
			}
			text, params = t, ps
			if params == nil {
				params = []int{}
			}
		}
		bufs[i], pre[i] = s.prelude(l)
		if !s.spreadTxn {
			bufs[i] = append(bufs[i], queryMsg("BEGIN")...)
			pre[i]++
		}
		bufs[i] = x.stmtMsg(bufs[i], text, sql, params, 0)
		if gid != "" {
			bufs[i] = append(bufs[i], queryMsg("PREPARE TRANSACTION "+quoteLiteral(gid))...)
		}
	}
	if err := sendOnLegs(ctx, legs, bufs, pre); err != nil {
		s.emitError(err)
		return nil
	}
	// The statement's answers: RETURNING rows pass through in shard
	// order, one RowDescription; the tags are added.
	var first error
	sentDesc := false
	tags := make([][]byte, 0, len(legs))
	for _, l := range legs {
		l.tag = l.tag[:0]
		for done := false; !done; {
			typ, msg, err := l.next(ctx)
			if err != nil {
				s.emitError(err)
				return nil
			}
			switch typ {
			case 'T':
				if !sentDesc && first == nil && (x == nil || x.describe) {
					sentDesc = true
					s.mu.Lock()
					s.out = append(s.out, msg...)
					s.mu.Unlock()
				}
			case 'D':
				if first == nil {
					s.mu.Lock()
					s.out = append(s.out, msg...)
					big := len(s.out) > 64<<10
					s.mu.Unlock()
					if big {
						s.flushClient()
					}
				}
			case 'C':
				l.tag = append(l.tag[:0], tagOf(msg)...)
			case 'E':
				if first == nil {
					first = backendError(msg)
				}
			case 'Z':
				done = true
			}
		}
		tags = append(tags, append([]byte(nil), l.tag...))
	}
	if first == nil && x != nil && x.describe && !sentDesc {
		s.emitRaw(msgNoData)
	}
	if gid != "" {
		// The PREPARE TRANSACTION answers: prepared, or rolled back.
		var prepared []*leg
		for _, l := range legs {
			e, err := l.untilReady(ctx)
			if err != nil {
				s.emitError(err)
				return nil
			}
			if e == nil && string(l.tag) == "PREPARE TRANSACTION" {
				prepared = append(prepared, l)
			} else if first == nil {
				first = e
				if first == nil {
					first = wire.Errorf(codeTransactionRollback, "pgshard: shard %s rolled the statement back", l.b.rt.name)
				}
			}
		}
		if first != nil {
			s.emitError(first)
			if len(prepared) > 0 {
				s.resolveLegs(ctx, prepared, gid, false)
			}
			clean = true
			return nil
		}
		if testCrashAt("prepared") {
			s.emitError(errCrashed)
			return nil // the legs are dropped, their transactions left prepared
		}
		if err := s.decideLegs(ctx, legs, log, gid); err != nil {
			s.emitError(err)
			return nil
		}
	}
	if first == nil {
		first = s.placeSequences(ctx, legs, ddl)
	}
	if first != nil && s.spreadTxn {
		// Inside the client's transaction: it fails (spreadInTxn).
		s.emitError(first)
		return nil
	}
	if first != nil && pl.Kind == router.AllShards && sqlstate(first) == codeActiveSQLTransaction && x == nil {
		// VACUUM, CREATE INDEX CONCURRENTLY and the like cannot run in a
		// transaction: they run on each shard on their own (not
		// atomically: a failure on one shard leaves the others done).
		if err := s.finishLegs(ctx, legs, "ROLLBACK"); err != nil {
			s.emitError(err)
			return nil
		}
		var tag []byte
		for _, l := range legs {
			if err := l.sc.Write(queryMsg(sql)); err != nil {
				s.emitError(err)
				return nil
			}
			e, err := l.untilReady(ctx)
			if err == nil {
				err = e
			}
			if err != nil {
				s.emitError(err)
				clean = true
				return nil
			}
			tag = append(tag[:0], l.tag...)
		}
		clean = true
		s.emit(&pgproto3.CommandComplete{CommandTag: tag})
		return nil
	}
	if first != nil {
		// Nothing committed anywhere: roll every shard back.
		s.emitError(first)
		clean = s.finishLegs(ctx, legs, "ROLLBACK") == nil
		return nil
	}
	if !s.spreadTxn && gid == "" {
		if err := s.commitLegs(ctx, legs, log); err != nil {
			s.emitError(err)
			return nil
		}
	}
	clean = true
	if ddl != nil {
		if err := s.registerTables(ctx, ddl); err != nil {
			s.emitError(err)
			return nil
		}
	}
	s.noteSpreadWrite()
	tag := tags[0] // every shard ran the same statement (DDL, reference tables)
	if pl.Kind != router.AllShards {
		var err error
		if tag, err = merge.CombineTags(tags); err != nil {
			s.emitError(err)
			return nil
		}
	}
	s.emit(&pgproto3.CommandComplete{CommandTag: tag})
	return nil
}

// staleSpread answers, for a spread read of the client's named statement
// whose result description the client was given, what PostgreSQL raises
// when a schema change altered it ("cached plan must not change result
// type"), and retires the statement: the merged result is described
// differently (desc), or the shards refuse the Bind's result formats for
// another number of columns (errMsg, 08P01). nil otherwise.
func (s *session) staleSpread(x *extReq, desc *pgproto3.RowDescription, errMsg []byte) error {
	if x == nil || x.def == nil || !x.def.described() {
		return nil
	}
	if errMsg != nil {
		if errorCode(errMsg) != wire.CodeProtocolViolation || !bytes.Contains(errMsg, []byte("result formats but query has")) {
			return nil
		}
	} else if msg, err := desc.Encode(nil); err != nil || x.def.noteDesc(msg) {
		return nil
	}
	s.srv.stmts.retire(x.def)
	return wire.Errorf(wire.CodeFeatureNotSupported, "cached plan must not change result type")
}

// finishLegs runs sql (COMMIT, ROLLBACK) on every leg.
func (s *session) finishLegs(ctx context.Context, legs []*leg, sql string) error {
	bufs := make([][]byte, len(legs))
	for i := range legs {
		bufs[i] = queryMsg(sql)
	}
	if err := sendLegs(legs, bufs); err != nil {
		return err
	}
	first, lost := eachLeg(ctx, legs, 1)
	if first == nil {
		first = lost
	}
	return first
}

// commitLegs commits the legs' transactions: COMMIT for one leg; for
// several, PREPARE TRANSACTION on each, the decision recorded in log, then
// COMMIT PREPARED on each. Once the decision to commit is recorded the
// statement has committed: a shard that cannot be told now is finished by
// the recovery loop.
func (s *session) commitLegs(ctx context.Context, legs []*leg, log TxnLog) error {
	if len(legs) == 1 {
		if e := s.finishLegs(ctx, legs, "COMMIT"); e != nil {
			return e
		}
		return nil
	}
	gid := newGID()
	if e := s.finishLegs(ctx, legs, "PREPARE TRANSACTION "+quoteLiteral(gid)); e != nil {
		// Some may have prepared: decide rollback (the recovery loop
		// would, too) and roll back what prepared.
		if _, err := log.Decide(ctx, gid, false); err == nil {
			s.resolveLegs(ctx, legs, gid, false)
		}
		return e
	}
	if testCrashAt("prepared") {
		return errCrashed
	}
	return s.decideLegs(ctx, legs, log, gid)
}

// decideLegs records the decision to commit gid, prepared on every leg,
// and commits it there.
func (s *session) decideLegs(ctx context.Context, legs []*leg, log TxnLog, gid string) error {
	// Decide well within the recovery loop's grace, so that recovery never
	// rolls back (and forgets) a transaction a coordinator still decides.
	dctx, cancel := context.WithTimeout(ctx, decideTimeout)
	commit, err := log.Decide(dctx, gid, true)
	cancel()
	if err == nil && testCrashAt("decided") {
		return errCrashed
	}
	if err != nil {
		// Maybe recorded, maybe not: the recovery loop finishes it either
		// way, by the recorded decision or by rolling back.
		return wire.Errorf(wire.CodeConnectionFailure, "pgshard: could not confirm the commit decision (%v); the outcome is unknown until recovery resolves transaction %s", err, gid)
	}
	s.resolveLegs(ctx, legs, gid, commit)
	if !commit {
		return wire.Errorf(codeTransactionRollback, "pgshard: the two-phase transaction was rolled back by recovery before it could commit")
	}
	return nil
}

// resolveLegs finishes a prepared transaction on every leg, and forgets
// the decision when all are done.
func (s *session) resolveLegs(ctx context.Context, legs []*leg, gid string, commit bool) {
	sql := "ROLLBACK PREPARED " + quoteLiteral(gid)
	if commit {
		sql = "COMMIT PREPARED " + quoteLiteral(gid)
	}
	bufs := make([][]byte, len(legs))
	for i := range legs {
		bufs[i] = queryMsg(sql)
	}
	if sendLegs(legs, bufs) != nil {
		return
	}
	first, lost := eachLeg(ctx, legs, 1)
	if first != nil || lost != nil {
		s.logger.Warn("two-phase transaction left for recovery", "gid", gid, "commit", commit, "err", fmt.Sprint(first, lost))
		return
	}
	s.srv.forgetLater(gid)
}

// noteSpreadWrite starts read-your-writes from the end of a spread write.
func (s *session) noteSpreadWrite() {
	s.mu.Lock()
	s.wroteAt = time.Now()
	s.mu.Unlock()
}

// setRunning makes the legs a cancel request of the client reaches.
func (s *session) setRunning(legs []*leg) {
	s.mu.Lock()
	s.running = legs
	s.mu.Unlock()
}

// clearRunning ends cancels' reach to the running legs, and waits for the
// cancel requests already sent to them (see Server.cancel): only then may
// their backends go back to the pool.
func (s *session) clearRunning() {
	s.mu.Lock()
	s.running = nil
	s.mu.Unlock()
	s.legCancels.Wait()
}

// legsToCancel returns the backends of the legs running the client's
// statement; done must be called once their cancel requests are sent.
func (s *session) legsToCancel() (conns []*pool.Conn, done func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.running) == 0 {
		return nil, nil
	}
	for _, l := range s.running {
		conns = append(conns, l.sc)
	}
	s.legCancels.Add(1)
	return conns, s.legCancels.Done
}
