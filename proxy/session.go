package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgshard/pgshard/config"
	"github.com/pgshard/pgshard/internal/parking"
	"github.com/pgshard/pgshard/internal/rawio"
	"github.com/pgshard/pgshard/pool"
	"github.com/pgshard/pgshard/router"
	"github.com/pgshard/pgshard/shardmap"
	"github.com/pgshard/pgshard/wire"
)

// Flush thresholds: output is written when the input that produced it is
// drained, or earlier once this much is pending.
const flushThreshold = 64 << 10

// entry is one expected answer from the backend (see the package doc).
type entry struct {
	kind    byte   // client message type; 'd' Describe of a statement; 'x' internal query
	swallow bool   // the answer is not passed to the client
	synth   []byte // answered by pgshard when at the head; nothing comes from the backend
	def     *stmtDef
	name    string // Parse: the client's statement name
	start   time.Time
	failed  bool
	done    chan error  // internal query: told the outcome at ReadyForQuery
	errMsg  []byte      // internal query: the first error
	check   chan error  // swallowed Describe of def: told whether the backend's description matches def's
	ops     []router.Op // Query: its settings and transaction statements (see settleOps)
	stmts   int         // Query: statements that completed (CommandComplete or EmptyQueryResponse)
	rolled  []int       // Query with ops: statements whose tag was ROLLBACK (a COMMIT of a failed transaction)
	schema  bool        // Query: DDL; prepared statements planned before it may not fit
	discard bool        // Query: the backend forgets its prepared statements (DISCARD, DEALLOCATE ALL)
	release func()      // Query: ends a database quiesce (dbops.go) at ReadyForQuery
	gen     uint64      // Describe of the unnamed statement: its generation
}

// target is the routing decision for the next attachment.
type target struct {
	shard     string // the shard ("": the session's last one, or the default)
	read      bool   // a replica may answer
	clean     bool   // transaction control only (BEGIN ...): writes nothing by itself
	anyLag    bool   // a hint asked for a replica: read-your-writes does not apply
	retryable bool   // the whole batch is known and nothing else is outstanding
}

// retryState tracks a batch that may still be re-sent on another backend:
// it was sent on a backend attached for it while the session was idle, and
// nothing of its answer has reached the client. Answers are held back in
// out from outStart meanwhile. gbuf holds the batch.
//
// On a replica (held), a read stays retryable until rows flow: a refusal
// (25006 and kin) re-sends it to the primary, a lost connection elsewhere.
// On any backend, a FATAL before the batch got any answer means the
// backend went away on its own (terminated while idle in the pool, server
// shutting down): the batch never ran there, so it is re-sent on a fresh
// backend; the client sees nothing of it. So does a reset connection
// before any answer when the batch ends a transaction at most once, at its
// end (see unreadBatch): the backend's FATAL may be lost to the reset.
type retryState struct {
	active   bool
	held     bool // a read on a replica: retryable until rows flow
	want     target
	outStart int
	failed   bool // the replica refused it (25006 and kin): re-send at ReadyForQuery
	// fence: a write on a primary while a reshard job moves rows stays
	// retryable, like a held read, until the backend sends more than
	// acknowledgements, for the fence's refusal (shardmap.CodeFenced,
	// fenced then set): it is re-sent once the ring is no longer the one
	// at version ring (hold.go). answered: acknowledgements came, so a
	// lost backend is not a reason to re-send it.
	fence    bool
	fenced   bool
	answered bool
	ring     uint64
	fatal    []byte // the backend's FATAL, swallowed while the batch is re-sent
	pending  bool   // a retry is running or about to
	done     chan struct{}
}

// maxStartTries and startBudget bound the backends a starting session
// tries: at least maxStartTries, and more while startBudget has not passed
// (a loaded machine can lose several backends in a row to a restart).
const (
	maxStartTries = 10
	startBudget   = 5 * time.Second
)

// maxRetries bounds the re-sends of one batch.
const maxRetries = 4

// connState is what a backend has been told, kept on pool.Conn.State.
type connState struct {
	prepared     map[*stmtDef]struct{}
	stmtGen      uint64 // stmtCache generation its retired statements were swept at
	unnamedOwner *session
	unnamedGen   uint64
	setsKey      string            // the session settings applied ("" = defaults)
	reported     map[string]string // ParameterStatus values last reported
	temps        map[string]bool   // temporary relations created on it through pgshard (tempOnly)
}

func stateOf(c *pool.Conn) *connState {
	if st, ok := c.State.(*connState); ok {
		return st
	}
	st := &connState{prepared: map[*stmtDef]struct{}{}, reported: map[string]string{}}
	for k, v := range c.Params {
		st.reported[k] = v
	}
	c.State = st
	return st
}

// session is one client connection.
type session struct {
	srv    *Server
	conn   net.Conn
	cr     *wire.Reader
	key    wire.CancelKey
	user   string
	db     string
	mode   config.PoolMode
	logger sessionLog

	// Routing (sharding and read/write splitting).
	binds         map[string]*shardBinding // by shard name (session loop; see bindingFor; nil until the first, and when parked)
	cuser         config.User
	split         bool          // reads may go to replicas
	route         router.Route  // SET pgshard.route
	want          target        // where the next attachment goes (session loop)
	forcePrimary  bool          // a retry after a replica refused
	replaying     bool          // the session loop is re-sending a group
	gbuf          []byte        // the group of messages being routed (session loop)
	cmu           sync.Mutex    // held while composing: the session loop or a retry
	retries       int           // re-sends of the current batch (under mu)
	deadConns     int           // connections found dead on attach, in a row
	pushback      []byte        // a message read ahead while a retry was pending (session loop)
	batchDone     chan struct{} // closed when the attached batch is answered or the backend let go (waitReplicaBatch; under mu)
	attachErr     error         // see attachLocked (session loop)
	lazyBegin     string        // a BEGIN answered by pgshard, sent with the transaction's first statement (lazyTxn)
	lazyReadOnly  bool          // lazyBegin opens a READ ONLY transaction
	lazyFailed    bool          // a statement of lazyBegin's transaction failed before any backend had it: it opens failed
	params        router.Params // a Bind's parameters being planned (session loop)
	unnamedTypes  []uint32      // the unnamed statement's parameter types as described (under mu)
	unnamedSQL    string        // the unnamed statement's text and types, decoded once (unnamedText)
	unnamedOIDs   []uint32
	unnamedSQLGen uint64
	txnBegin      string         // the BEGIN lazyTxn sent with the transaction's first message (under mu)
	txnFresh      bool           // ... and nothing that reads or writes ran in it yet (under mu)
	tx            txState        // the transaction's legs on other shards (txlegs.go; session loop)
	grp           *groupCache    // the extended-protocol batch being routed (handleGroup; session loop; nil while parked)
	running       []*leg         // legs running the client's statement (spread.go; under mu)
	legCancels    sync.WaitGroup // cancel requests being sent to running legs
	spreadErrs    int            // errors emitted by spread statements (session loop)
	spreadTxn     bool           // the spread statement runs inside the client's transaction

	// Owned by the session loop.
	sbuf          []byte // pending bytes for the backend
	unnamed       []byte // the client's last unnamed Parse
	unnamedGen    uint64
	skipUntilSync bool // after an error pgshard raised, drop messages up to Sync
	unnamedRead   bool // the unnamed statement is a read

	mu         sync.Mutex
	attWrite   bool          // the attachment is not a routed read: it may write
	att        *shardBinding // the shard of the attached backend (or of the last one)
	node       int           // attached node of att: -1 the primary, i replica i
	wroteAt    time.Time     // when the session's last write ended (read-your-writes)
	rt         retryState
	sc         *pool.Conn
	st         *connState
	q          queue
	busy       bool // the session loop is composing a batch for sc
	unsynced   bool // extended-protocol messages sent since the last Sync
	srvErr     bool // the backend reported an error and skips to the next Sync
	txStatus   byte
	pinned     bool
	closing    bool
	starting   bool // start is answering the client: a lost backend is replaced, not reported
	lost       bool // a backend went away with the client's work on it: the session ends
	resetReq   bool
	unnamedSeq bool // the client's unnamed statement calls currval() or lastval()
	stmts      map[string]*stmtDef
	sets       map[string]string // name -> SQL text of the value
	setsKey    string
	staged     []router.Op // SETs and savepoints of the open transaction (see settle)
	lastTag    string      // COMMIT or ROLLBACK when the last CommandComplete said so
	out        []byte      // pending bytes for the client
	dead       bool        // writing to the client failed
	gotFatal   bool        // the backend's own FATAL reached the client: pgshard adds none
	idleMark   atomic.Bool // set by the parking sweeper, cleared by each message (park.go)
	cancelling int         // cancel requests in flight for sc: it is not released meanwhile
	execDef    *stmtDef    // the named statement last bound (stale-plan errors at Execute)

	wmu     sync.Mutex
	spare   []byte
	retryWG sync.WaitGroup

	// Parking (park.go).
	ctx      context.Context // the server's, for the session loop
	src      clientSource    // what cr reads from
	parkConn parking.Conn    // the client's socket, when it can be parked
	spot     *parking.Spot   // where the session is parked (under mu)
}

func newSession(srv *Server, st *wire.Startup, u config.User, mode config.PoolMode, split bool) *session {
	s := &session{
		srv: srv, conn: st.Conn, cr: st.Reader, user: st.User, db: st.Database, mode: mode,
		txStatus: 'I', stmts: map[string]*stmtDef{}, sets: map[string]string{},
		cuser: u, node: -1, grp: new(groupCache),
	}
	if split && mode == config.PoolTransaction {
		for _, rt := range srv.shardList() {
			s.split = s.split || rt.monitor != nil
		}
	}
	s.logger = sessionLog{s}
	for k, v := range st.Params {
		switch {
		case k == "options":
			for name, val := range parseOptions(v) {
				s.sets[strings.ToLower(name)] = rawSetting + val
			}
		case strings.HasPrefix(k, "_pq_."), k == "replication":
		default:
			s.sets[strings.ToLower(k)] = rawSetting + v
		}
	}
	s.setsKey = settingsKey(s.sets)
	s.src.rw = rawio.New(st.Conn)
	st.Reader.SetSource(&s.src)
	if pc, ok := st.Conn.(parking.Conn); ok && srv.lot != nil {
		s.parkConn = pc
	}
	return s
}

// parseOptions reads "-c name=value" and "--name=value" from the startup
// options parameter.
func parseOptions(opts string) map[string]string {
	out := map[string]string{}
	f := strings.Fields(opts)
	for i := 0; i < len(f); i++ {
		a := f[i]
		switch {
		case a == "-c" && i+1 < len(f):
			i++
			a = f[i]
		case strings.HasPrefix(a, "-c"):
			a = a[2:]
		case strings.HasPrefix(a, "--"):
			a = a[2:]
		default:
			continue
		}
		if k, v, ok := strings.Cut(a, "="); ok {
			out[strings.ReplaceAll(k, "-", "_")] = v
		}
	}
	return out
}

func quoteLiteral(v string) string { return "'" + strings.ReplaceAll(v, "'", "''") + "'" }

func settingsKey(sets map[string]string) string {
	if len(sets) == 0 {
		return ""
	}
	names := make([]string, 0, len(sets))
	for k := range sets {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, k := range names {
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(sets[k])
		b.WriteByte('\n')
	}
	return b.String()
}

// replaySQL returns the query that puts a backend into this session's
// settings. Called with s.mu held.
func (s *session) replaySQL() string {
	names := make([]string, 0, len(s.sets))
	for k := range s.sets {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("RESET ALL")
	for _, k := range names {
		v := s.sets[k]
		if raw, ok := strings.CutPrefix(v, rawSetting); ok {
			// As PostgreSQL applies a startup parameter: the value is the
			// setting's own text (a list stays a list: search_path=a, b).
			b.WriteString("; SELECT pg_catalog.set_config(")
			b.WriteString(quoteLiteral(k))
			b.WriteString(", ")
			b.WriteString(quoteLiteral(raw))
			b.WriteString(", false)")
			continue
		}
		b.WriteString("; SET ")
		b.WriteString(quoteIdentPath(k))
		b.WriteString(" TO ")
		b.WriteString(v)
	}
	return b.String()
}

// rawSetting marks a value in session.sets that is a startup parameter's
// text rather than SQL (see replaySQL).
const rawSetting = "\x00"

// quoteIdentPath double-quotes each dotted part of a setting name.
func quoteIdentPath(name string) string {
	parts := strings.Split(name, ".")
	for i, p := range parts {
		parts[i] = `"` + strings.ReplaceAll(p, `"`, `""`) + `"`
	}
	return strings.Join(parts, ".")
}

var errTerminate = errors.New("client terminated")

// errRetrying is attach's answer while the batch is being re-sent: the
// message at hand is part of it (see retryState).
var errRetrying = errors.New("batch being re-sent")

// start brings a new session to ReadyForQuery: it applies the session's
// settings on a backend and tells the client the resulting parameters.
func (s *session) start(ctx context.Context) error {
	s.mu.Lock()
	s.starting = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.starting = false
		s.mu.Unlock()
	}()
	began := time.Now()
	for tries := 0; ; tries++ {
		err := s.startOnce(ctx)
		retry := errors.Is(err, errGone) || sqlstate(err) == wire.CodeConnectionFailure
		if !retry {
			return err
		}
		if tries >= maxStartTries && time.Since(began) > startBudget {
			if errors.Is(err, errGone) {
				err = wire.Fatalf(wire.CodeConnectionFailure, "pgshard: backends kept going away while the session started")
			}
			return err
		}
		// The backend went away before the client was answered, or as it
		// was being connected (terminated, server restarting): take
		// another.
		select {
		case <-time.After(time.Duration(min(tries, 10)*10) * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// startOnce attaches a backend, applies the startup settings and answers
// the client; errGone when the backend went away meanwhile.
func (s *session) startOnce(ctx context.Context) error {
	done := make(chan error, 1)
	replayed, err := s.attach(ctx, done)
	if err != nil {
		return err
	}
	if !replayed {
		done = nil
	}
	// The session stays busy (so the backend stays attached) until the
	// parameters are read.
	s.mu.Lock()
	sc := s.sc
	s.mu.Unlock()
	if sc != nil && len(s.sbuf) > 0 {
		if err := sc.Write(s.sbuf); err != nil {
			s.sbuf = s.sbuf[:0]
			s.dropStartBackend(sc)
			return errGone
		}
	}
	s.sbuf = s.sbuf[:0]
	if done != nil {
		select {
		case err := <-done:
			if err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.mu.Lock()
	if s.sc == nil {
		s.mu.Unlock()
		return errGone
	}
	params := map[string]string{}
	if s.st != nil {
		for k, v := range s.st.reported {
			params[k] = v
		}
	}
	s.busy = false
	s.maybeRelease()
	s.mu.Unlock()
	return wire.WriteReady(s.conn, params, s.key)
}

// run is the session loop. It returns when the client leaves or fails.
// The loop runs inside the client connection's rawio Serve, one turn per
// message, so that it waits for the client's next message without first
// reading until EAGAIN (see turn).
func (s *session) run(ctx context.Context) error {
	if s.grp == nil {
		s.grp = new(groupCache)
	}
	for {
		err := s.src.rw.Serve(&s.src.in, func() (bool, error) { return s.turn(ctx) })
		var h handled
		if errors.As(err, &h) {
			return h.err
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// The sweeper asks an idle session to park (park.go).
			if s.park() {
				return errParked
			}
			_ = s.conn.SetReadDeadline(time.Time{})
			continue
		}
		var pe *wire.ProtocolError
		if errors.As(err, &pe) {
			s.clientError(err)
		}
		if errors.Is(err, io.EOF) {
			s.answerHalfClosed(ctx)
			return nil
		}
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		return err
	}
}

// answerHalfClosed waits, after the client's end of stream, for the
// answer to what it sent last, as PostgreSQL answers a client that
// half-closed its connection behind a statement. It waits only for a
// whole request (a Query, a Sync, a function call, the end of a simple
// protocol COPY): after anything else the backend would wait for more of
// the client's messages, and the session ends at once (finish drops it).
func (s *session) answerHalfClosed(ctx context.Context) {
	switch s.cr.Last() {
	case 'Q', 'S', 'F', 'c', 'f':
	default:
		return
	}
	s.cmu.Lock()
	defer s.cmu.Unlock()
	s.mu.Lock()
	whole := !s.unsynced
	s.mu.Unlock()
	if whole && s.waitAnswered(ctx) == nil {
		s.flushClient()
	}
}

// handled ends the session loop after a message's handling failed: err
// is already reported to the client, nil when the client said Terminate.
type handled struct{ err error }

func (h handled) Error() string {
	if h.err == nil {
		return "client terminated the session"
	}
	return h.err.Error()
}

// turn reads one message from the client and handles it; a failure to
// read comes back as is (run sorts it out), one to handle as handled.
//
// It asks to wait (Serve then waits for the client's next bytes) when
// nothing is to be read: the read found nothing, or, without reading,
// when the last read drained the socket, nothing of the client's is
// buffered and its last message is one after which a client sends nothing
// more, and does not hang up, before it has our answer.
func (s *session) turn(ctx context.Context) (wait bool, err error) {
	var typ byte
	var msg []byte
	if s.pushback != nil {
		typ, msg, s.pushback = s.pushback[0], s.pushback, nil
	} else {
		if s.src.in.Drained() && s.cr.Drained() && awaitsAnswer(s.cr.Last()) {
			return true, nil
		}
		s.src.parkable = true
		typ, msg, err = s.cr.Next()
		s.src.parkable = false
		if err == rawio.ErrWouldBlock {
			return true, nil
		}
		if err != nil {
			return false, err
		}
	}
	if s.idleMark.Load() {
		s.idleMark.Store(false)
	}
	s.waitRetry()
	if s.split || s.srv.owners() > 1 {
		if err := s.waitReplicaBatch(ctx); err != nil {
			return false, handled{err}
		}
	}
	s.cmu.Lock()
	if isExtended(typ) && (s.newBatch() || s.txBatch()) {
		err = s.handleGroup(ctx, typ, msg)
	} else {
		s.want = target{}
		err = s.handle(ctx, typ, msg)
	}
	if err == nil && (s.cr.Buffered() == 0 || len(s.sbuf) > flushThreshold) {
		s.flushServer()
	}
	s.cmu.Unlock()
	switch {
	case err == nil:
		return false, nil
	case err == errTerminate:
		return false, handled{}
	}
	s.clientError(err)
	return false, handled{err}
}

// awaitsAnswer reports whether a client that sent a message of type typ
// waits for the answer before it sends anything more: a simple Query, a
// Sync or Flush, a function call, the end of its COPY data.
func awaitsAnswer(typ byte) bool {
	switch typ {
	case 'Q', 'S', 'H', 'F', 'c', 'f':
		return true
	}
	return false
}

func isExtended(typ byte) bool {
	switch typ {
	case 'P', 'B', 'D', 'E', 'C', 'S', 'H':
		return true
	}
	return false
}

// maxGroup bounds the bytes of an extended-protocol batch read ahead to
// route it as a whole.
const maxGroup = 256 << 10

// handleGroup reads the rest of an extended-protocol batch that is already
// buffered (up to its Sync), decides where the whole batch goes (a replica
// only when every statement in it is a read and it ends in Sync), then
// handles its messages in order.
func (s *session) handleGroup(ctx context.Context, typ byte, msg []byte) error {
	s.gbuf = append(s.gbuf[:0], msg...)
	last := typ
	var extra []byte // a non-extended message read while collecting
	for last != 'S' && last != 'H' && s.cr.Buffered() > 0 && len(s.gbuf) < maxGroup {
		t, m, err := s.cr.Next()
		if err != nil {
			return err
		}
		if !isExtended(t) {
			extra = m
			break
		}
		s.gbuf = append(s.gbuf, m...)
		last = t
	}
	*s.grp = groupCache{}
	defer func() { *s.grp = groupCache{} }()
	if e := s.holdGroup(ctx, s.gbuf); e != nil {
		return s.refuseGroup(ctx, e, extra)
	}
	s.want = s.routeGroup(s.gbuf, last == 'S')
	s.txIdleReset()
	if last == 'S' && extra == nil && s.groupLazyTxn(s.gbuf) {
		return nil
	}
	if s.lazyAborted() {
		e := errInFailedTxn
		if g, ok := s.singleGroup(s.gbuf); ok {
			e = lazyAbortError(g.sql)
		}
		return s.refuseGroup(ctx, e, extra)
	}
	if last == 'S' && extra == nil {
		if done, err := s.groupSpread(ctx, s.gbuf); done || err != nil {
			return err
		}
		if done, err := s.groupAcrossShards(ctx, s.gbuf); done || err != nil {
			return err
		}
	}
	if done, err := s.groupTxnEnd(ctx, s.gbuf); done || err != nil {
		return err
	}
	if s.want.shard = s.groupShard(s.gbuf); s.want.shard != "" {
		bound, _ := s.shardFor(ctx, s.want.shard) // moves a transaction that ran nothing yet
		if _, single := s.singleGroup(s.gbuf); (single || s.grp.batchKnown) && bound == "" && last == 'S' && extra == nil {
			// Routed here, as handleBind would: it need not plan it again.
			s.grp.routed = true
		}
		if s.inTxnOnOtherShard(s.want.shard) && last == 'S' && extra == nil {
			if why := s.txnLegRefusal(); why != "" {
				if err := s.refuseExtended(ctx, wire.Errorf(wire.CodeFeatureNotSupported, "pgshard: %s", why)); err != nil {
					return err
				}
				return s.replayGroup(ctx) // skipped up to its Sync, which is answered
			}
			if done, err := s.legGroup(ctx, s.want.shard, s.gbuf); done || err != nil {
				return err
			}
		}
	}
	if err := s.replayGroup(ctx); err != nil {
		return err
	}
	if extra != nil {
		if s.retryPending() {
			// The batch is being re-sent; what follows it waits its turn.
			s.pushback = append([]byte(nil), extra...)
			return nil
		}
		s.want = target{}
		return s.handle(ctx, extra[0], extra)
	}
	return nil
}

// refuseGroup answers the batch in gbuf with e (its messages skipped up to
// its Sync, which is answered), then handles extra, the message read
// after it.
func (s *session) refuseGroup(ctx context.Context, e *wire.Error, extra []byte) error {
	if err := s.refuseExtended(ctx, e); err != nil {
		return err
	}
	if err := s.replayGroup(ctx); err != nil {
		return err
	}
	if extra != nil {
		s.want = target{}
		return s.handle(ctx, extra[0], extra)
	}
	return nil
}

// retryPending reports whether a re-send of the current batch is scheduled
// or running.
func (s *session) retryPending() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rt.pending
}

// replayGroup handles the messages in gbuf.
func (s *session) replayGroup(ctx context.Context) error {
	for b := s.gbuf; len(b) >= 5; {
		n := 1 + int(uint32(b[1])<<24|uint32(b[2])<<16|uint32(b[3])<<8|uint32(b[4]))
		if err := s.handle(ctx, b[0], b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// idleForBatch reports whether the session is between transactions with
// nothing outstanding, so that the next batch gets a backend of its own and
// may be re-sent elsewhere.
func (s *session) idleForBatch() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.txStatus == 'I' && s.q.len() == 0 && !s.pinned && s.mode == config.PoolTransaction
}

// routeGroup decides where an extended-protocol batch goes.
func (s *session) routeGroup(group []byte, complete bool) target {
	if !complete || !s.idleForBatch() {
		return target{}
	}
	if !s.split || s.route == router.RoutePrimary || s.forcePrimary {
		return target{retryable: true}
	}
	hinted := s.route == router.RouteReplica
	unnamedRead := s.unnamedRead
	var parsed map[string]bool // statements parsed in this batch
	read := true
	for b := group; len(b) >= 5 && read; {
		n := 1 + int(uint32(b[1])<<24|uint32(b[2])<<16|uint32(b[3])<<8|uint32(b[4]))
		body := b[5:n]
		switch b[0] {
		case 'P':
			name, rest, ok := cstring(body)
			q, _, ok2 := cstringBytes(rest)
			if !ok || !ok2 {
				return target{}
			}
			r, _ := s.classify(string(q))
			read = read && r // even preparing a write belongs on the primary
			if name == "" {
				unnamedRead = r
			} else {
				if parsed == nil {
					parsed = map[string]bool{}
				}
				parsed[name] = r
			}
		case 'B':
			_, rest, ok := cstringBytes(body)
			stmt, _, ok2 := cstring(rest)
			if !ok || !ok2 {
				return target{}
			}
			switch r, inBatch := parsed[stmt]; {
			case stmt == "":
				read = unnamedRead
			case inBatch:
				read = r
			default:
				d, ok := s.lookupStmt(stmt)
				read = ok && d.read
			}
		}
		b = b[n:]
	}
	if hinted {
		read = true
	}
	return target{read: read, anyLag: hinted, retryable: true}
}

// classify says whether a statement text is a read, and whether it changes
// session state (which pins the session).
func (s *session) classify(q string) (read, pin bool) {
	fx := router.Inspect(q)
	pin = fx.Pin || len(fx.Sets) > 0 || fx.ResetAll || fx.Discard
	switch {
	case pin:
		return false, true
	case fx.Route == router.RoutePrimary:
		return false, false
	case fx.Route == router.RouteReplica, fx.Begin && fx.ReadOnly:
		return true, false
	}
	return s.srv.classifier.IsRead(q, fx.Shape), false
}

// clientError sends err to the client (best effort) before it is closed.
func (s *session) clientError(err error) {
	s.mu.Lock()
	s.out = wire.AppendError(s.out, err)
	s.mu.Unlock()
	s.flushClient()
}

// handle processes one client message.
func (s *session) handle(ctx context.Context, typ byte, msg []byte) error {
	if !s.replaying && s.retryPending() {
		// The backend went away while this batch was being composed: the
		// retry re-sends the whole batch (gbuf holds this message too).
		return nil
	}
	if s.skipUntilSync && typ != 'S' && typ != 'X' {
		switch typ {
		case 'P', 'B', 'D', 'E', 'C', 'H':
			return nil
		}
	}
	switch typ {
	case 'X':
		return errTerminate
	case 'Q':
		return s.handleQuery(ctx, msg)
	case 'P':
		return s.handleParse(ctx, msg)
	case 'B':
		return s.handleBind(ctx, msg)
	case 'D':
		return s.handleDescribe(ctx, msg)
	case 'E':
		return s.forwardExtended(ctx, 'E', msg)
	case 'C':
		return s.handleClose(ctx, msg)
	case 'S':
		return s.handleSync(ctx, msg)
	case 'H':
		s.mu.Lock()
		attached := s.sc != nil
		s.mu.Unlock()
		if attached {
			s.sbuf = append(s.sbuf, msg...)
		}
		return nil
	case 'F':
		if !s.attachLocked(ctx, true) {
			return s.attachErr
		}
		s.txnFresh = false
		s.push(entry{kind: 'F', start: time.Now()})
		s.mu.Unlock()
		s.sbuf = append(s.sbuf, msg...)
		return nil
	case 'd', 'c', 'f':
		s.mu.Lock()
		attached := s.sc != nil
		s.mu.Unlock()
		if attached {
			s.sbuf = append(s.sbuf, msg...)
		}
		return nil
	default:
		return &wire.Error{Severity: "FATAL", Code: wire.CodeProtocolViolation,
			Message: "invalid frontend message type " + strings.TrimSpace(string(rune(typ)))}
	}
}

func (s *session) handleQuery(ctx context.Context, msg []byte) error {
	body := msg[5:]
	if len(body) == 0 || body[len(body)-1] != 0 {
		return errMalformed("Query")
	}
	// The text is only scanned here; what Inspect keeps of it is cloned.
	sql := unsafe.String(&body[0], len(body)-1)
	fx := router.Inspect(sql)
	if done, err := s.localSet(ctx, fx); done || err != nil {
		return err
	}
	if fx.SessionSeq && fx.Statements == 1 {
		if e := s.sessionSeqRefusal(); e != nil {
			return s.refuseQuery(ctx, e)
		}
	}
	if s.localDeallocate(fx) {
		return nil
	}
	if e := s.holdQuery(ctx, sql, fx); e != nil {
		return s.refuseQuery(ctx, e)
	}
	shard, done, err := s.routeSimple(ctx, sql, fx)
	if done || err != nil {
		return err
	}
	if s.attached() == nil {
		s.want = s.routeQuery(sql, fx)
		s.want.shard = shard
		if s.lazyBegin != "" && s.lazyReadOnly && s.split {
			s.want.read = true
		}
		if s.want.retryable && !s.replaying {
			s.gbuf = append(s.gbuf[:0], msg...)
		}
	} else if s.split && !fx.TxnControl && !s.srv.classifier.IsRead(sql, fx.Shape) {
		s.noteWrite()
	}
	if fx.Schema && !fx.Pin {
		s.srv.stmts.bump() // (temporary objects pin the session: no bump)
	}
	if !s.attachLocked(ctx, true) {
		return s.attachErr
	}
	s.mu.Unlock()
	release := s.quiesceFor(sql) // DROP/CREATE/ALTER DATABASE: see dbops.go
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sc == nil {
		if release != nil {
			release()
		}
		return nil
	}
	s.txnFresh = false
	e := entry{kind: 'Q', start: time.Now(), release: release, schema: fx.Schema && !fx.Pin}
	if len(fx.Sets) > 0 || fx.ResetAll || fx.Discard || (fx.AnyTxnControl && len(s.staged) > 0) {
		e.ops = router.Ops(sql)
	}
	if fx.Discard || (fx.DeallocateAll && fx.Statements == 1) {
		// The backend forgets the statements pgshard prepared on it.
		e.discard = true
	}
	if fx.Pin && !s.pinned {
		s.pinned = true
		s.logger.Debug("session pinned to its backend", "reason", fx.PinReason)
	}
	s.noteTemps(sql, fx)
	// A simple Query destroys the unnamed statement, the client's and the
	// backend's (PostgreSQL's exec_simple_query).
	s.unnamed = s.unnamed[:0]
	s.st.unnamedOwner = nil
	s.push(e)
	s.sbuf = append(s.sbuf, msg...)
	return nil
}

// localDeallocate answers a lone SQL DEALLOCATE of the client's own
// protocol-level statements: they live under pgshard's names on the
// backends, so only the client's name is forgotten (as Close does).
// DEALLOCATE ALL on a pinned session also goes to the backend, for the
// statements prepared there with SQL PREPARE.
func (s *session) localDeallocate(fx router.Effects) bool {
	if fx.Statements != 1 || (fx.Deallocate == "" && !fx.DeallocateAll) {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.txStatus == 'E' {
		return false // the backend refuses it as PostgreSQL does
	}
	tag := "DEALLOCATE"
	if fx.DeallocateAll {
		clear(s.stmts)
		if s.pinned {
			return false
		}
		tag = "DEALLOCATE ALL"
	} else {
		if _, ok := s.stmts[fx.Deallocate]; !ok {
			return false
		}
		delete(s.stmts, fx.Deallocate)
	}
	b, _ := (&pgproto3.CommandComplete{CommandTag: []byte(tag)}).Encode(nil)
	s.push(entry{synth: b})
	s.push(entry{synth: readyForQuery(s.txStatus)})
	return true
}

// errLazyFailed is the error the backend raises (unseen by the client)
// to fail a transaction whose statement failed before it reached a backend.
var errLazyFailed = wire.Errorf(codeTransactionRollback, "pgshard: a statement of this transaction failed before reaching a backend")

// errInFailedTxn is PostgreSQL's answer to a statement in a failed
// transaction.
var errInFailedTxn = wire.Errorf(wire.CodeInFailedSQLTransaction, "current transaction is aborted, commands ignored until end of transaction block")

// lazyAbortError is what a statement gets in a transaction that failed
// before any backend had it: 25P02, or for ROLLBACK TO SAVEPOINT the
// error that no such savepoint exists (none could be made), as
// PostgreSQL answers in a failed transaction.
func lazyAbortError(sql string) *wire.Error {
	if ops := router.Ops(sql); len(ops) == 1 && ops[0].Kind == router.OpRollbackTo {
		return wire.Errorf(codeNoSavepoint, "savepoint \"%s\" does not exist", ops[0].Name)
	}
	return errInFailedTxn
}

// codeNoSavepoint is SQLSTATE invalid_savepoint_specification.
const codeNoSavepoint = "3B001"

// lazyAborted reports whether the session is in a transaction that failed
// before any backend had it (failLazyTxn): pgshard answers its statements
// itself, 25P02, and its COMMIT or ROLLBACK with ROLLBACK.
func (s *session) lazyAborted() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lazyFailed && s.sc == nil
}

// failLazyTxn marks the transaction pgshard opened lazily (its BEGIN not
// yet sent) failed: its first statement got no backend. The client is
// told so (ReadyForQuery 'E'); the backend that later takes the
// transaction is made to fail it too (attach). Called by the session loop.
func (s *session) failLazyTxn() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lazyBegin != "" && s.sc == nil {
		s.lazyFailed, s.txStatus = true, 'E'
	}
}

// attachLocked attaches a backend for the current message and returns
// true with s.mu held. It returns false, with nothing held, when no backend
// could be had (s.attachErr is then what the caller returns: nil after the
// client was answered, or an error that ends the session) or when the
// backend was lost before the message could be queued: the message is then
// dropped, as a retry re-sends the batch or the session ends.
func (s *session) attachLocked(ctx context.Context, simple bool) bool {
	s.attachErr = nil
	for tries := 0; ; tries++ {
		if _, err := s.attach(ctx, nil); err != nil {
			if err != errRetrying {
				s.failLazyTxn()
				s.attachErr = s.failBatch(err, simple)
			}
			return false
		}
		s.mu.Lock()
		if s.sc != nil {
			return true
		}
		again := !s.rt.pending && !s.dead && tries < maxRetries
		s.mu.Unlock()
		if !again {
			return false
		}
		// Lost before anything of this message was queued on it, with no
		// re-send pending (an idle backend ending): take another.
	}
}

// routeQuery decides where a simple query goes.
func (s *session) routeQuery(sql string, fx router.Effects) target {
	if !s.idleForBatch() {
		return target{}
	}
	t := target{retryable: true}
	if !s.split || fx.Pin || s.forcePrimary {
		return t
	}
	if fx.TxnControl && !fx.ReadOnly {
		t.clean = true
		return t
	}
	hint := fx.Route
	if hint == router.RouteAuto {
		hint = s.route
	}
	switch {
	case hint == router.RoutePrimary:
	case hint == router.RouteReplica:
		t.read, t.anyLag = true, true
	case fx.Begin && fx.ReadOnly && fx.Statements == 1:
		t.read = true
	case len(fx.Sets) > 0 || fx.ResetAll || fx.Discard:
	default:
		t.read = s.srv.classifier.IsRead(sql, fx.Shape)
	}
	return t
}

// noteWrite records that the attached primary backend ran something that
// may write (read-your-writes starts from its end).
func (s *session) noteWrite() {
	s.mu.Lock()
	if s.sc != nil && s.node < 0 {
		s.attWrite = true
	}
	s.mu.Unlock()
}

// localSet answers SET/RESET of pgshard's own settings (pgshard.route)
// without a backend. done is false when the query is not one of those.
func (s *session) localSet(ctx context.Context, fx router.Effects) (done bool, err error) {
	own := 0
	for _, set := range fx.Sets {
		if strings.HasPrefix(set.Name, "pgshard.") {
			own++
		}
	}
	if own == 0 {
		return false, nil
	}
	s.mu.Lock()
	failed := s.txStatus == 'E'
	s.mu.Unlock()
	var e *wire.Error
	switch {
	case failed:
		e = errInFailedTxn // as PostgreSQL answers any SET there
	case own != len(fx.Sets) || fx.Statements != 1:
		e = wire.Errorf(wire.CodeFeatureNotSupported, "SET pgshard.* must be sent alone, as its own query")
	default:
		set := fx.Sets[0]
		if set.Name != "pgshard.route" {
			e = wire.Errorf(wire.CodeUndefinedObject, "unrecognized configuration parameter %q", set.Name)
			e.Hint = "pgshard knows pgshard.route (primary, replica or auto)"
			break
		}
		r := router.RouteAuto
		if !set.Reset {
			var ok bool
			if r, ok = router.ParseRoute(set.Value); !ok {
				e = wire.Errorf(wire.CodeInvalidParameterValue, "invalid value for parameter \"pgshard.route\": %s", set.Value)
				e.Hint = "use primary, replica or auto"
				break
			}
		}
		s.route = r
	}
	if e != nil {
		// Inside a transaction the backend raises it: the transaction
		// fails, as with PostgreSQL's own SET errors.
		return true, s.refuseQuery(ctx, e)
	}
	tag := "SET"
	if fx.Sets[0].Reset {
		tag = "RESET"
	}
	b, _ := (&pgproto3.CommandComplete{CommandTag: []byte(tag)}).Encode(nil)
	s.mu.Lock()
	s.push(entry{synth: b})
	s.push(entry{synth: readyForQuery(s.txStatus)})
	s.mu.Unlock()
	return true, nil
}

// failBatch answers a message that could not get a backend. With
// simple set, the client gets the error and ReadyForQuery; otherwise the
// error, and the rest of the batch is skipped up to Sync.
func (s *session) failBatch(err error, simple bool) error {
	var we *wire.Error
	if errors.As(err, &we) && we.Severity == "FATAL" {
		return err
	}
	if !errors.As(err, &we) {
		var pe interface{ SQLState() string }
		if !errors.As(err, &pe) {
			return err
		}
	}
	s.srv.metrics.errors.WithLabelValues(sqlstate(err)).Inc()
	s.mu.Lock()
	s.push(entry{synth: wire.AppendError(nil, err)})
	if simple {
		s.push(entry{synth: readyForQuery(s.txStatus)})
	} else {
		s.skipUntilSync = true
	}
	s.mu.Unlock()
	return nil
}

func sqlstate(err error) string {
	var we *wire.Error
	if errors.As(err, &we) {
		return we.Code
	}
	var pe interface{ SQLState() string }
	if errors.As(err, &pe) {
		return pe.SQLState()
	}
	return wire.CodeInternalError
}

// raise answers the current extended-protocol message with an error, as
// PostgreSQL would, and skips to the next Sync (see refuseExtended: with a
// backend bound, the backend raises it, so that the transaction, explicit
// or the batch's implicit one, fails as on PostgreSQL).
func (s *session) raise(ctx context.Context, code, format string, args ...any) error {
	return s.refuseExtended(ctx, wire.Errorf(code, format, args...))
}

// raiseFree answers the current extended-protocol message with pgshard's
// own error and skips to the next Sync; only for a session with no
// backend bound and no transaction open (refuseExtended).
func (s *session) raiseFree(e *wire.Error) error {
	s.mu.Lock()
	if !s.srvErr {
		s.push(entry{synth: wire.AppendError(nil, e)})
	}
	s.mu.Unlock()
	s.srv.metrics.errors.WithLabelValues(e.Code).Inc()
	s.skipUntilSync = true
	return nil
}

func (s *session) handleParse(ctx context.Context, msg []byte) error {
	name, rest, ok := cstring(msg[5:])
	if !ok {
		return errMalformed("Parse")
	}
	if name == "" {
		// The unnamed statement: passed through, remembered for re-parsing.
		q, _, ok := cstringBytes(rest)
		if !ok {
			return errMalformed("Parse")
		}
		fx := router.Inspect(string(q))
		if fx.Schema {
			s.srv.stmts.bump()
		}
		s.newUnnamed(msg)
		s.unnamedSeq = fx.SessionSeq
		if s.split {
			s.unnamedRead, _ = s.classify(string(q))
		}
		if !s.attachLocked(ctx, false) {
			return s.attachErr
		}
		s.pinForExtended(fx)
		s.noteTemps(string(q), fx)
		if !s.srvErr {
			s.push(entry{kind: 'P'})
		}
		s.unsynced = true
		s.st.unnamedOwner, s.st.unnamedGen = s, s.unnamedGen
		s.mu.Unlock()
		s.sbuf = append(s.sbuf, msg...)
		return nil
	}
	var p pgproto3.Parse
	if err := p.Decode(msg[5:]); err != nil {
		return errMalformed("Parse")
	}
	def := s.srv.stmts.intern(p.Query, p.ParameterOIDs, s.classify)
	s.mu.Lock()
	prev, exists := s.stmts[name]
	pending := exists && !s.unsynced && s.parsing(name)
	s.mu.Unlock()
	if pending {
		// The name's Parse, in an earlier batch, is not answered yet: it
		// may fail, and then the name is free, as PostgreSQL would see it.
		if err := s.waitAnswered(ctx); err != nil {
			return err
		}
		s.mu.Lock()
		prev, exists = s.stmts[name]
		s.mu.Unlock()
	}
	if exists && !(s.replaying && prev == def) {
		// PostgreSQL parses and analyses the statement before it finds the
		// name taken: its errors come first. The backend checks it, as
		// the unnamed statement, before raising the duplicate.
		check, _ := (&pgproto3.Parse{Query: p.Query, ParameterOIDs: p.ParameterOIDs}).Encode(nil)
		return s.refuseExtendedAfter(ctx, wire.Errorf(wire.CodeDuplicatePreparedStmt, "prepared statement %q already exists", name), check)
	}
	fx := router.Inspect(p.Query)
	if fx.Schema {
		s.srv.stmts.bump()
	}
	if !s.attachLocked(ctx, false) {
		return s.attachErr
	}
	defer s.mu.Unlock()
	s.pinForExtended(fx)
	s.noteTemps(p.Query, fx)
	s.unsynced = true
	if s.srvErr {
		return nil // the backend skips this; so does PostgreSQL
	}
	s.stmts[name] = def
	if _, ok := s.st.prepared[def]; ok {
		s.push(entry{kind: 'P', synth: msgParseComplete, name: name})
		return nil
	}
	s.st.prepared[def] = struct{}{}
	s.push(entry{kind: 'P', def: def, name: name})
	s.sbuf = append(s.sbuf, def.parse...)
	return nil
}

// parsing reports whether a Parse of the statement name waits for the
// backend's answer. Called with s.mu held.
func (s *session) parsing(name string) bool {
	return s.q.any(func(e *entry) bool { return e.kind == 'P' && e.name == name })
}

// bindsSessionSeq reports whether the statement a Bind names calls
// currval() or lastval(). A named one is looked up only once some client
// prepared such a statement: a Bind costs nothing more until then.
func (s *session) bindsSessionSeq(stmt []byte) bool {
	if len(stmt) == 0 {
		return s.unnamedSeq
	}
	if !s.srv.stmts.sessionSeq.Load() {
		return false
	}
	d, ok := s.lookupStmt(string(stmt))
	return ok && d.sessionSeq
}

// sessionSeqRefusal refuses currval() and lastval() where they could read
// another client's value: in transaction pooling, on a session that is not
// pinned, outside a transaction, with nothing else of the request run
// before them on the backend. They read what the backend's session last
// drew from a sequence, and the client's earlier nextval() may have run on
// another backend, whose value another client's nextval() may since have
// replaced on this one.
func (s *session) sessionSeqRefusal() *wire.Error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mode != config.PoolTransaction || s.pinned || s.txStatus != 'I' || s.lazyBegin != "" {
		return nil
	}
	if s.q.any(func(e *entry) bool { return e.kind == 'E' || e.kind == 'Q' }) {
		return nil // after a statement of the same request, on the same backend
	}
	e := wire.Errorf(wire.CodeFeatureNotSupported, "pgshard: currval() and lastval() outside a transaction read what some backend last drew from a sequence, which with transaction pooling may be another client's value")
	e.Hint = "use INSERT … RETURNING, or call them in the same transaction (or Query string, or extended-protocol batch) as the nextval()"
	return e
}

// pinForExtended pins the session when a statement sent through the
// extended protocol changes session state: those effects are not replayed.
func (s *session) pinForExtended(fx router.Effects) {
	if (fx.Pin || len(fx.Sets) > 0 || fx.ResetAll || fx.Discard) && !s.pinned {
		s.pinned = true
		s.logger.Debug("session pinned to its backend", "reason", "session state changed through the extended protocol")
	}
}

// prepareOn makes sure the attached backend has def (injecting a Parse
// whose answer is swallowed). Called with s.mu held.
func (s *session) prepareOn(def *stmtDef) {
	if _, ok := s.st.prepared[def]; ok {
		return
	}
	s.st.prepared[def] = struct{}{}
	s.push(entry{kind: 'P', def: def, swallow: true})
	s.sbuf = append(s.sbuf, def.parse...)
}

// unnamedOn re-parses the client's unnamed statement on the attached
// backend if someone else parsed the backend's unnamed statement since.
// Called with s.mu held.
func (s *session) unnamedOn() {
	if len(s.unnamed) == 0 || (s.st.unnamedOwner == s && s.st.unnamedGen == s.unnamedGen) {
		return
	}
	s.st.unnamedOwner, s.st.unnamedGen = s, s.unnamedGen
	s.push(entry{kind: 'P', swallow: true})
	s.sbuf = append(s.sbuf, s.unnamed...)
}

// lookupStmt resolves a client statement name for Bind or Describe.
func (s *session) lookupStmt(name string) (*stmtDef, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.stmts[name]
	return d, ok
}

func (s *session) handleBind(ctx context.Context, msg []byte) error {
	body := msg[5:]
	portal, rest, ok := cstringBytes(body)
	if !ok {
		return errMalformed("Bind")
	}
	stmt, rest, ok := cstringBytes(rest)
	if !ok {
		return errMalformed("Bind")
	}
	if done, err := s.routeBind(ctx, stmt, rest); done || err != nil {
		return err
	}
	if s.bindsSessionSeq(stmt) {
		if e := s.sessionSeqRefusal(); e != nil {
			return s.refuseExtended(ctx, e)
		}
	}
	def, ok, err := s.useStatement(ctx, stmt)
	if !ok {
		return err
	}
	defer s.mu.Unlock()
	s.txnFresh = false
	if s.node < 0 && ((def == nil && !s.unnamedRead) || (def != nil && !def.read)) {
		s.attWrite = true
	}
	s.push(entry{kind: 'B', def: def})
	s.execDef = def
	if def == nil {
		s.sbuf = append(s.sbuf, msg...)
		return nil
	}
	s.sbuf = appendWithStmt(s.sbuf, 'B', body[:len(portal)+1], def.name, rest)
	return nil
}

// useStatement resolves the statement a Bind or Describe names (empty: the
// unnamed one), attaches a backend and makes sure the backend has the
// statement. When ok, it returns with s.mu held and the caller pushes its
// entry; when not ok, err (if any) ends the session and nothing is held.
//
// A named statement whose result description is known (a client described
// it) is prepared on a backend that lacks it with a round trip: Parse,
// Describe and Flush, and the answer compared with the known description
// before the client's message is sent. If the schema changed meanwhile, the
// client gets what PostgreSQL would raise for its own stale statement
// (0A000 cached plan must not change result type) instead of rows that do
// not match the description it decodes them with.
func (s *session) useStatement(ctx context.Context, name []byte) (def *stmtDef, ok bool, err error) {
	if len(name) > 0 {
		if def, ok = s.lookupStmt(string(name)); !ok {
			return nil, false, s.raise(ctx, wire.CodeInvalidSQLStatementNam, "prepared statement %q does not exist", string(name))
		}
	}
	if !s.attachLocked(ctx, false) {
		return nil, false, s.attachErr
	}
	s.unsynced = true
	if s.srvErr {
		s.mu.Unlock()
		return nil, false, nil // the backend skips to Sync; so does PostgreSQL
	}
	if def == nil {
		s.unnamedOn()
		return nil, true, nil
	}
	if _, has := s.st.prepared[def]; has || !def.described() {
		s.prepareOn(def)
		return def, true, nil
	}
	check := make(chan error, 1)
	s.st.prepared[def] = struct{}{}
	s.push(entry{kind: 'P', def: def, swallow: true})
	s.push(entry{kind: 'd', def: def, swallow: true, check: check})
	s.sbuf = append(s.sbuf, def.parse...)
	s.sbuf = appendWithStmt(s.sbuf, 'D', []byte{'S'}, def.name, nil)
	s.sbuf = append(s.sbuf, msgFlush...)
	sc := s.sc
	s.mu.Unlock()
	werr := sc.Write(s.sbuf)
	s.sbuf = s.sbuf[:0]
	if werr != nil {
		return nil, false, nil // the reader reports the loss
	}
	select {
	case err = <-check:
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
	s.mu.Lock()
	if s.sc != sc || s.srvErr {
		// Lost, or the Parse failed (the client has the error; the
		// backend skips to Sync).
		s.mu.Unlock()
		return nil, false, nil
	}
	if err == nil {
		return def, true, nil
	}
	// Planned against another schema: the backend must not keep it under
	// a name other clients of def would use.
	s.srv.stmts.retire(def)
	delete(s.st.prepared, def)
	s.push(entry{kind: 'C', swallow: true})
	s.sbuf = appendClose(s.sbuf, 'S', def.name)
	s.mu.Unlock()
	return nil, false, s.raise(ctx, wire.CodeFeatureNotSupported, "cached plan must not change result type")
}

func (s *session) handleDescribe(ctx context.Context, msg []byte) error {
	body := msg[5:]
	if len(body) < 2 {
		return errMalformed("Describe")
	}
	name, _, ok := cstringBytes(body[1:])
	if !ok {
		return errMalformed("Describe")
	}
	if body[0] != 'S' {
		return s.forwardExtended(ctx, 'D', msg)
	}
	def, ok, err := s.useStatement(ctx, name)
	if !ok {
		return err
	}
	defer s.mu.Unlock()
	s.push(entry{kind: 'd', def: def, gen: s.unnamedGen})
	if def == nil {
		s.sbuf = append(s.sbuf, msg...)
		return nil
	}
	s.sbuf = appendWithStmt(s.sbuf, 'D', []byte{'S'}, def.name, nil)
	return nil
}

func (s *session) handleClose(ctx context.Context, msg []byte) error {
	body := msg[5:]
	if len(body) < 2 {
		return errMalformed("Close")
	}
	name, _, ok := cstring(body[1:])
	if !ok {
		return errMalformed("Close")
	}
	if body[0] == 'S' && name != "" {
		// Statements are shared on the backends; closing only forgets the
		// client's name for it, as the client expects.
		if !s.attachLocked(ctx, false) {
			return s.attachErr
		}
		s.unsynced = true
		if !s.srvErr {
			delete(s.stmts, name)
			s.push(entry{kind: 'C', synth: msgCloseComplete})
		}
		s.mu.Unlock()
		return nil
	}
	if body[0] == 'S' {
		s.unnamed = s.unnamed[:0]
	}
	return s.forwardExtended(ctx, 'C', msg)
}

// forwardExtended passes an extended-protocol message through as it is.
func (s *session) forwardExtended(ctx context.Context, kind byte, msg []byte) error {
	if !s.attachLocked(ctx, false) {
		return s.attachErr
	}
	s.unsynced = true
	if !s.srvErr {
		e := entry{kind: kind}
		if kind == 'E' {
			e.def = s.execDef
		}
		s.push(e)
	}
	s.mu.Unlock()
	s.sbuf = append(s.sbuf, msg...)
	return nil
}

func (s *session) handleSync(ctx context.Context, msg []byte) error {
	wasSkipping := s.skipUntilSync
	s.skipUntilSync = false
	if err := s.ensureServer(ctx); err != nil {
		if err == errRetrying {
			return nil
		}
		if !wasSkipping {
			return s.failBatch(err, true)
		}
		// The error is already out; answer as an idle server would.
		s.mu.Lock()
		s.push(entry{synth: readyForQuery(s.txStatus)})
		s.mu.Unlock()
		return nil
	}
	s.mu.Lock()
	if s.sc == nil {
		s.mu.Unlock()
		return nil // lost meanwhile: re-sent by a retry, or the session ends
	}
	s.unsynced = false
	s.srvErr = false
	s.push(entry{kind: 'S', start: time.Now()})
	s.mu.Unlock()
	s.sbuf = append(s.sbuf, msg...)
	return nil
}

// ensureServer attaches a backend to the session for the current batch.
func (s *session) ensureServer(ctx context.Context) error {
	_, err := s.attach(ctx, nil)
	return err
}

// attach is ensureServer that also reports whether it queued a replay of
// the session's settings; done, if set, is told the replay's outcome.
// Where it attaches follows s.want.
func (s *session) attach(ctx context.Context, done chan error) (bool, error) {
	s.mu.Lock()
	if s.sc != nil {
		s.busy = true
		s.mu.Unlock()
		return false, nil
	}
	if s.rt.pending && !s.replaying {
		s.mu.Unlock()
		return false, errRetrying
	}
	if s.lost {
		// Its backend went away with the client's work on it (a
		// transaction): what the client sends next must not run
		// elsewhere as if nothing happened. The session is closing.
		s.mu.Unlock()
		return false, wire.Fatalf(wire.CodeConnectionFailure, "pgshard: the session lost its backend")
	}
	wroteAt := s.wroteAt
	s.mu.Unlock()
	b, err := s.bindingFor(s.want.shard)
	if err != nil {
		return false, err
	}
	node := -1
	if s.want.read && s.split {
		if s.want.anyLag || !s.srv.readYourWrites {
			wroteAt = time.Time{}
		}
		if i, ok := b.rt.pick(wroteAt); ok {
			node = i
		}
	}
	var sc *pool.Conn
	if node >= 0 {
		sc, err = s.replicaPool(b, node).Acquire(ctx)
		if err != nil {
			// The replica cannot take it: out it goes, the primary answers.
			b.rt.monitor.MarkDown(node, err)
			s.srv.metrics.retries.WithLabelValues("replica_connect").Inc()
			s.logger.Warn("replica unavailable; reading from the primary", "shard", b.rt.name, "replica", replicaName(node), "err", err)
			node = -1
		}
	}
	if node < 0 {
		sc, err = b.primary.Acquire(ctx)
	}
	if err != nil {
		return false, err
	}
	replayed := false
	s.mu.Lock()
	s.sc, s.st, s.busy, s.node, s.att = sc, stateOf(sc), true, node, b
	if !sc.SetHandler(s) {
		// It died in the pool just as we took it; nothing was sent yet.
		s.detach()
		s.mu.Unlock()
		sc.Pool().Discard(sc)
		if s.deadConns++; s.deadConns > 8 {
			return false, wire.Errorf(wire.CodeConnectionFailure, "pgshard: backend connections keep failing")
		}
		return s.attach(ctx, done)
	}
	s.deadConns = 0
	s.gotFatal = false
	s.attWrite = node < 0 && !s.want.read && !s.want.clean
	if node >= 0 {
		b.rt.outstanding[node].Add(1)
	}
	if s.want.retryable && s.q.len() == 0 && s.txStatus == 'I' {
		s.rt.active, s.rt.held, s.rt.want = true, node >= 0, s.want
		s.rt.outStart, s.rt.failed, s.rt.fatal = len(s.out), false, nil
		s.rt.fence, s.rt.fenced, s.rt.answered = false, false, false
		if rs := s.srv.routing.Load(); node < 0 && rs != nil && len(rs.moving) > 0 {
			s.rt.fence, s.rt.ring = true, rs.ringVersion
		}
	}
	s.sweepRetired()
	if s.st.setsKey != s.setsKey {
		replayed = true
		s.push(entry{kind: 'x', swallow: true, done: done})
		s.sbuf = append(s.sbuf, queryMsg(s.replaySQL())...)
		s.st.setsKey = s.setsKey
		s.st.unnamedOwner = nil // a simple Query drops the unnamed statement
	}
	if s.lazyBegin != "" {
		// The transaction pgshard answered BEGIN for starts here.
		s.push(entry{kind: 'x', swallow: true})
		s.sbuf = append(s.sbuf, queryMsg(s.lazyBegin)...)
		s.txnBegin, s.txnFresh = s.lazyBegin, true
		s.lazyBegin = ""
		s.st.unnamedOwner = nil
		if s.lazyFailed {
			// A statement of it failed while no backend had it: the
			// backend's transaction fails too, so that what follows gets
			// 25P02 and COMMIT rolls back, as on PostgreSQL.
			s.lazyFailed, s.txnFresh = false, false
			s.push(entry{kind: 'x', swallow: true})
			s.sbuf = append(s.sbuf, queryMsg(raiseSQL(errLazyFailed))...)
		}
	}
	s.mu.Unlock()
	return replayed, nil
}

// sweepRetired closes, on the attached backend, the statements pgshard no
// longer hands out (a schema change or a stale plan retired them), so that
// backends do not pile up statements nobody will run again. A client still
// holding one gets it prepared again, checked (see useStatement). Called
// with s.mu held.
func (s *session) sweepRetired() {
	g := s.srv.stmts.generation()
	if s.st.stmtGen == g {
		return
	}
	s.st.stmtGen = g
	closed := false
	for def := range s.st.prepared {
		if def.retired.Load() {
			delete(s.st.prepared, def)
			s.push(entry{kind: 'C', swallow: true})
			s.sbuf = appendClose(s.sbuf, 'S', def.name)
			closed = true
		}
	}
	if closed {
		// The backend answers a Close only at a Sync or Flush, and when a
		// session starts nothing of the client's follows: without this the
		// backend would stay attached, its answers owed.
		s.sbuf = append(s.sbuf, msgFlush...)
	}
}

// replicaPool returns the pool of replica i of b for the session's user
// and database.
func (s *session) replicaPool(b *shardBinding, i int) *pool.Pool {
	if p := b.replicas[i]; p != nil {
		return p
	}
	p, err := s.srv.poolFor(b.rt.replicas[i], s.cuser, s.db)
	if err != nil {
		return b.primary
	}
	b.replicas[i] = p
	return p
}

// waitRetry waits for a retry in progress, and ends the chance to retry
// the previous batch: the client is sending more.
func (s *session) waitRetry() {
	for {
		s.mu.Lock()
		done, pending := s.rt.done, s.rt.pending
		if !pending {
			s.rt.active = false
		}
		s.mu.Unlock()
		if !pending {
			return
		}
		<-done
	}
}

// startRetry re-sends the held batch on another backend. Called with s.mu
// held; the backend that failed is already detached.
func (s *session) startRetry(toPrimary bool, reason string) {
	if s.rt.outStart <= len(s.out) {
		s.out = s.out[:s.rt.outStart]
	}
	want := s.rt.want
	fenced, ring := s.rt.fenced, s.rt.ring
	s.rt = retryState{pending: true, done: make(chan struct{})}
	s.retries++
	if toPrimary || (want.read && s.retries > 2) {
		want.read, want.anyLag = false, false
	}
	s.srv.metrics.retries.WithLabelValues(reason).Inc()
	done := s.rt.done
	s.retryWG.Add(1)
	go func() {
		defer s.retryWG.Done()
		defer close(done)
		s.cmu.Lock()
		defer s.cmu.Unlock()
		if fenced {
			// This node's map is stale: the range moved. Wait for the
			// new ring; the batch is planned again on it.
			s.srv.waitRingChange(ring)
			*s.grp = groupCache{}
			want.shard = s.groupShard(s.gbuf) // "" for a simple Query: planned as it is handled
			*s.grp = groupCache{}
		}
		// Whatever the session loop composed for the lost backend after it
		// was lost is dropped: the batch is re-sent whole.
		s.sbuf = s.sbuf[:0]
		s.mu.Lock()
		s.q.clear()
		if sc := s.sc; sc != nil {
			// Attached by a composer that had not yet seen the loss: its
			// state is unknown.
			s.detach()
			sc.Pool().Discard(sc)
		}
		s.mu.Unlock()
		s.forcePrimary = !want.read
		s.replaying = true
		s.want = want
		err := s.replayGroup(context.Background())
		s.replaying, s.forcePrimary = false, false
		if err == nil {
			s.flushServer()
		} else {
			s.clientError(err)
			s.hangUp()
		}
		s.mu.Lock()
		if s.rt.done == done {
			s.rt.pending = false
		}
		s.mu.Unlock()
	}()
}

// push appends e to the queue; an answer pgshard makes itself goes out at
// once when nothing is ahead of it. Called with s.mu held.
func (s *session) push(e entry) {
	if e.synth != nil && s.q.len() == 0 {
		s.out = append(s.out, e.synth...)
		return
	}
	s.q.push(e)
}

// flushServer sends what the session loop composed, then lets the backend
// go if nothing is outstanding.
func (s *session) flushServer() {
	s.mu.Lock()
	sc := s.sc
	s.mu.Unlock()
	if len(s.sbuf) > 0 && sc != nil {
		if err := sc.Write(s.sbuf); err != nil {
			s.logger.Warn("write to backend failed", "err", err)
		}
	}
	s.sbuf = s.sbuf[:0]
	s.mu.Lock()
	s.busy = false
	s.maybeRelease()
	s.mu.Unlock()
	s.flushClient()
}

// flushClient writes pending output to the client.
func (s *session) flushClient() {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.mu.Lock()
	if len(s.out) == 0 || s.rt.active {
		// Answers of a read that may still be retried elsewhere are held
		// back (out is only flushed from offsets the retry knows).
		s.mu.Unlock()
		return
	}
	buf := s.out
	s.out = s.spare[:0]
	dead := s.dead
	s.mu.Unlock()
	if !dead {
		if _, err := s.src.rw.Write(buf); err != nil {
			s.mu.Lock()
			s.dead = true
			s.mu.Unlock()
			s.hangUp()
		}
	}
	s.mu.Lock()
	if cap(buf) <= 1<<20 {
		s.spare = buf[:0]
	} else {
		s.spare = nil
	}
	s.mu.Unlock()
}

// maybeRelease returns the backend to the pool when the session may let it
// go; a closing session first rolls back and resets it. Called with s.mu
// held.
func (s *session) maybeRelease() {
	sc := s.sc
	if sc == nil || s.busy || s.q.len() > 0 || s.cancelling > 0 {
		return
	}
	if s.closing {
		if s.unsynced {
			s.detach()
			sc.Pool().Discard(sc)
			return
		}
		if s.txStatus != 'I' {
			s.internalQuery("ROLLBACK")
			return
		}
		if (s.pinned || s.mode == config.PoolSession) && !s.resetReq {
			s.resetReq = true
			s.internalQuery("DISCARD ALL")
			s.st.prepared = map[*stmtDef]struct{}{}
			s.st.setsKey = ""
			s.st.unnamedOwner = nil
			return
		}
		s.detach()
		sc.Pool().Release(sc)
		return
	}
	if s.unsynced || s.txStatus != 'I' || s.pinned || s.mode == config.PoolSession {
		return
	}
	s.detach()
	sc.Pool().Release(sc)
	if s.srv.ShuttingDown() {
		s.out = wire.AppendError(s.out, wire.Fatalf(wire.CodeAdminShutdown, "terminating connection due to administrator command"))
		go s.closeAfterFlush()
	}
}

// hangUp ends the client connection from any goroutine: shutdown(2),
// which wakes the session loop, whose end closes it (endSession). A close
// here would wait for the loop's Serve to return, and the loop may be
// waiting for the caller.
func (s *session) hangUp() { _ = s.src.rw.Shutdown() }

func (s *session) closeAfterFlush() {
	s.flushClient()
	s.hangUp()
}

func (s *session) detach() {
	if s.node >= 0 {
		s.att.rt.outstanding[s.node].Add(-1)
	}
	s.sc, s.st, s.node = nil, nil, -1
	s.signalBatchDone()
}

// waitReplicaBatch is called by the session loop before a client message
// while a replica may still be answering the client's previous batch (a
// client pipelining): the new message starts a batch that may write, so it
// waits until that batch is answered and the replica released (or, if it
// opened a READ ONLY transaction, until the transaction's statements may
// go on there).
func (s *session) waitReplicaBatch(ctx context.Context) error {
	for {
		s.mu.Lock()
		// Only between batches outside a transaction: within an
		// extended-protocol batch (unsynced) the backend answers nothing
		// before the Sync, and a transaction stays where it began.
		if s.sc == nil || (s.node < 0 && s.srv.owners() < 2) || s.txStatus != 'I' || s.unsynced || s.pinned || s.mode != config.PoolTransaction {
			s.mu.Unlock()
			return nil
		}
		if s.batchDone == nil {
			s.batchDone = make(chan struct{})
		}
		ch := s.batchDone
		s.mu.Unlock()
		// What was composed for the replica goes out first.
		s.cmu.Lock()
		s.flushServer()
		s.cmu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// signalBatchDone wakes waitReplicaBatch. Called with s.mu held.
func (s *session) signalBatchDone() {
	if s.batchDone != nil {
		close(s.batchDone)
		s.batchDone = nil
	}
}

// internalQuery sends sql on the attached backend with its answer
// swallowed. Called with s.mu held, when nothing else is being composed.
func (s *session) internalQuery(sql string) {
	s.st.unnamedOwner = nil // a simple Query drops the unnamed statement
	s.push(entry{kind: 'x', swallow: true})
	if err := s.sc.Write(queryMsg(sql)); err != nil {
		sc := s.sc
		s.q.clear()
		s.detach()
		sc.Pool().Discard(sc)
	}
}

// finish is called when the session loop ends: the backend, if any, is
// rolled back, reset if needed and released, or closed when its state is
// unknown.
func (s *session) finish() {
	s.retryWG.Wait()
	s.closeTxLegs()
	s.mu.Lock()
	s.closing = true
	sc := s.sc
	if sc != nil && s.q.len() > 0 {
		// Mid-query: cancel is not enough to know the state; close it.
		s.q.clear()
		s.detach()
		s.mu.Unlock()
		sc.Pool().Discard(sc)
		return
	}
	s.busy = false
	s.maybeRelease()
	s.mu.Unlock()
}

// ServerMessage implements pool.Handler: one message from the attached
// backend.
func (s *session) ServerMessage(c *pool.Conn, typ byte, msg []byte, more bool) {
	s.mu.Lock()
	if s.sc != c {
		s.mu.Unlock()
		return
	}
	head := s.q.front()
	forward := head == nil || !head.swallow
	if typ == 'E' && isFatal(msg) {
		if s.rt.active && !s.closing && !s.rt.answered {
			// The backend is going away before the batch got any answer
			// (terminated while idle in the pool, shutting down): not
			// this client's backend. The batch is re-sent when the
			// connection closes (ServerGone).
			s.rt.fatal = append(s.rt.fatal[:0], msg...)
			s.mu.Unlock()
			return
		}
		if s.idleAttachment() {
			// Nothing of the client's is outstanding on it (the backend
			// was about to be released): not the client's concern.
			s.mu.Unlock()
			return
		}
		s.gotFatal = forward
	}
	if s.rt.active && forward {
		switch {
		case !s.rt.held && !s.rt.fence:
			s.rt.active = false // the backend answered: this attempt stands
		case typ == '1', typ == '2', typ == '3', typ == 't', typ == 'n', typ == 'T', typ == 'Z', typ == 'E':
			// Nothing the client could act on yet: still retryable.
			s.rt.answered = s.rt.answered || !s.rt.held
		default:
			s.rt.active = false // results are flowing: this answer stands
		}
	}
	switch typ {
	case 'S':
		var ps pgproto3.ParameterStatus
		if ps.Decode(msg[5:]) == nil {
			s.st.reported[ps.Name] = ps.Value
		}
	case 'N', 'A':
	case 'Z':
		if len(msg) >= 6 {
			s.txStatus = msg[5]
		}
		s.srvErr = false
		// Drop anything the backend skipped before this ReadyForQuery.
		for s.q.len() > 0 && !isTerminal(s.q.front().kind) {
			s.dropHead()
		}
		if s.q.len() > 0 {
			head = s.q.front()
			forward = !head.swallow
			s.completeZ(head)
			s.pop()
		}
	case 'E':
		code := errorCode(msg)
		fenced := s.rt.active && s.rt.fence && !s.rt.failed && code == shardmap.CodeFenced && s.retries < maxRetries
		if fenced || s.rt.active && s.rt.held && !s.rt.failed && retryOnPrimary(code) {
			// The replica refused a read (read-only, recovery conflict,
			// shutting down): answer nothing, re-send it to the primary
			// once this backend is back at ReadyForQuery.
			s.rt.failed, s.rt.fenced = true, fenced
			for i := s.q.head; i < len(s.q.buf); i++ {
				s.q.buf[i].swallow = true
			}
			forward = false
		} else if s.rt.active {
			s.rt.active = false
		}
		if head != nil && head.swallow && head.kind != 'x' && !s.rt.failed {
			forward = true // an injected Parse failed: the client must know
		}
		if head != nil && head.def != nil && stalePlan(code, msg) {
			s.srv.stmts.retire(head.def)
		}
		s.srv.metrics.errors.WithLabelValues(code).Inc()
		if head != nil && head.kind == 'x' && head.errMsg == nil {
			head.errMsg = append([]byte(nil), msg...)
		}
		if head == nil || isTerminal(head.kind) {
			if head != nil {
				head.failed = true
			}
			break
		}
		// Extended protocol: the backend now skips to the next Sync.
		for s.q.len() > 0 && s.q.front().kind != 'S' {
			s.dropHead()
		}
		if s.q.len() == 0 {
			s.srvErr = true
		}
	case '1', '2', '3':
		if head != nil && !isTerminal(head.kind) {
			s.pop()
		}
	case 't':
		// A statement's parameter types as PostgreSQL inferred them: a
		// spread statement needs them to read binary values.
		if head != nil && head.kind == 'd' {
			var pd pgproto3.ParameterDescription
			if pd.Decode(msg[5:]) == nil {
				if head.def != nil {
					head.def.inferred.Store(&pd.ParameterOIDs)
				} else if s.unnamedGen == head.gen {
					s.unnamedTypes = pd.ParameterOIDs
				}
			}
		}
	case 'T', 'n':
		if head != nil && (head.kind == 'D' || head.kind == 'd') {
			if head.kind == 'd' && head.def != nil {
				match := head.def.noteDesc(msg)
				if head.check != nil {
					if match {
						head.check <- nil
					} else {
						head.check <- errStaleDesc
					}
					head.check = nil
				}
			}
			s.pop()
		}
	case 'C', 'I':
		if typ == 'C' {
			s.lastTag = commandTag(msg)
		}
		if head != nil && head.kind == 'Q' {
			if head.ops != nil && s.lastTag == "ROLLBACK" && typ == 'C' {
				head.rolled = append(head.rolled, head.stmts)
			}
			head.stmts++
		}
		if head != nil && head.kind == 'E' {
			s.pop()
		}
	case 's':
		if head != nil && head.kind == 'E' {
			s.pop()
		}
	}
	if forward {
		s.out = append(s.out, msg...)
	}
	s.emitSynth()
	if typ == 'Z' {
		if s.q.len() == 0 {
			s.signalBatchDone()
		}
		failed := s.rt.active && s.rt.failed && s.q.len() == 0
		if !failed && s.q.len() == 0 {
			s.rt.active = false
			s.retries = 0
		}
		s.maybeRelease()
		if failed {
			if s.sc == c {
				// Still held (the session loop is finishing a write): let
				// it go now; the retry composes on a fresh backend.
				s.detach()
				c.Pool().Release(c)
			}
			reason := "replica_refused"
			if s.rt.fenced {
				reason = "fenced"
			}
			s.startRetry(true, reason)
		}
	} else if s.q.len() == 0 {
		// The last answer owed was not a ReadyForQuery (the Close of a
		// retired statement, flushed as a session started): the backend
		// may go, if nothing else holds it (maybeRelease checks).
		s.maybeRelease()
	}
	// What is buffered behind this message is for this session only while
	// it still holds the backend: once released at ReadyForQuery (or
	// lost), whatever follows (a FATAL as the server goes away, say) is
	// not this session's, so its answers go out now.
	flush := (!more || len(s.out) > flushThreshold || s.sc != c) && !s.rt.active
	s.mu.Unlock()
	if flush {
		s.flushClient()
	}
}

// errStaleDesc tells a checked prepare that the backend describes the
// statement differently from what its client was told.
var errStaleDesc = errors.New("statement description changed")

// errGone tells a checked prepare that its answer will not come.
var errGone = errors.New("no answer: the Parse failed or the backend is gone")

// stalePlan reports the errors with which a backend says that a prepared
// statement's plan no longer fits the schema.
func stalePlan(code string, msg []byte) bool {
	switch code {
	case wire.CodeFeatureNotSupported:
		return bytes.Contains(msg, []byte("cached plan must not change result type"))
	case wire.CodeInternalError:
		return bytes.Contains(msg, []byte("cache lookup failed for"))
	}
	return false
}

// isFatal reports whether a raw ErrorResponse ends the backend session.
func isFatal(msg []byte) bool {
	b := msg[5:]
	sev := ""
	for len(b) > 0 && b[0] != 0 {
		f := b[0]
		v, rest, ok := cstringBytes(b[1:])
		if !ok {
			break
		}
		if f == 'V' {
			sev = string(v) // not localized: preferred
			break
		}
		if f == 'S' {
			sev = string(v)
		}
		b = rest
	}
	return sev == "FATAL" || sev == "PANIC"
}

func isTerminal(kind byte) bool {
	return kind == 'Q' || kind == 'S' || kind == 'x' || kind == 'F'
}

// completeZ finishes a Query, Sync or internal entry at ReadyForQuery.
// Called with s.mu held.
func (s *session) completeZ(e *entry) {
	if e.release != nil {
		e.release()
	}
	if !e.start.IsZero() {
		now := time.Now()
		s.srv.metrics.queries.Inc()
		s.srv.metrics.latency.Observe(now.Sub(e.start).Seconds())
		if s.att != nil && s.node >= 0 {
			s.att.rt.routed[s.node].Inc()
		} else if s.att != nil {
			s.att.rt.routedPrim.Inc()
		}
		if s.attWrite && s.txStatus == 'I' {
			s.wroteAt = now
		}
	}
	if e.done != nil {
		var err error
		if e.errMsg != nil {
			var er pgproto3.ErrorResponse
			if er.Decode(e.errMsg[5:]) == nil {
				err = &wire.Error{Severity: "FATAL", Code: er.Code, Message: er.Message, Detail: er.Detail, Hint: er.Hint}
			}
		}
		e.done <- err
	} else if e.kind == 'x' && e.errMsg != nil {
		s.logger.Warn("internal query failed on backend", "code", errorCode(e.errMsg))
		s.st.setsKey = "?" // unknown: replay next time
	}
	if e.schema {
		s.srv.stmts.bump() // again, now that the change is visible
	}
	if e.discard && s.st != nil {
		s.st.prepared = map[*stmtDef]struct{}{}
		s.st.unnamedOwner = nil
	}
	if e.kind == 'Q' {
		s.settle(e)
	} else if s.txStatus == 'I' && len(s.staged) > 0 {
		// A transaction with SETs in it ended through the extended
		// protocol: its last command says how.
		if s.lastTag == "COMMIT" {
			s.commitStaged()
		}
		s.staged = s.staged[:0]
	}
}

// settle records what a finished Query did to the session's settings: the
// SETs of its first e.stmts statements (those that ran) are staged, and
// kept only when their transaction commits (an explicit one at COMMIT, the
// implicit one of a Query at its ReadyForQuery when nothing failed);
// ROLLBACK drops them, ROLLBACK TO SAVEPOINT those made since the
// savepoint. Called with s.mu held.
func (s *session) settle(e *entry) {
	for _, op := range e.ops {
		if op.Stmt >= e.stmts {
			break
		}
		switch op.Kind {
		case router.OpSet, router.OpResetAll, router.OpSavepoint:
			s.staged = append(s.staged, op)
		case router.OpCommit:
			if slices.Contains(e.rolled, op.Stmt) {
				s.staged = s.staged[:0] // COMMIT of a failed transaction rolls back
				break
			}
			s.commitStaged()
		case router.OpRollback:
			s.staged = s.staged[:0]
		case router.OpRelease, router.OpRollbackTo:
			i := len(s.staged) - 1
			for i >= 0 && !(s.staged[i].Kind == router.OpSavepoint && s.staged[i].Name == op.Name) {
				i--
			}
			if op.Kind == router.OpRelease {
				if i >= 0 {
					s.staged = append(s.staged[:i], s.staged[i+1:]...)
				}
				break
			}
			// Without its marker, the savepoint predates every staged SET.
			s.staged = s.staged[:i+1]
		}
	}
	if s.txStatus == 'I' {
		if !e.failed {
			s.commitStaged()
		}
		s.staged = s.staged[:0]
	}
}

// commitStaged applies the staged SETs to the session's record; the
// attached backend already has them. Called with s.mu held.
func (s *session) commitStaged() {
	changed := false
	for _, op := range s.staged {
		switch op.Kind {
		case router.OpResetAll:
			clear(s.sets)
			changed = true
		case router.OpSet:
			if op.Set.Reset {
				delete(s.sets, op.Set.Name)
			} else {
				s.sets[op.Set.Name] = op.Set.Value
			}
			changed = true
		}
	}
	s.staged = s.staged[:0]
	if !changed {
		return
	}
	s.setsKey = settingsKey(s.sets)
	if s.st != nil {
		s.st.setsKey = s.setsKey
	}
}

func commandTag(msg []byte) string {
	b := msg[5:]
	if len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	if len(b) == 8 && string(b) == "ROLLBACK" {
		return "ROLLBACK"
	}
	if len(b) == 6 && string(b) == "COMMIT" {
		return "COMMIT"
	}
	return ""
}

func (s *session) pop() { s.q.pop() }

// dropHead removes an entry the backend will not answer, undoing what it
// would have created.
func (s *session) dropHead() {
	e := s.q.front()
	if e.check != nil {
		e.check <- errGone // the Parse before it failed
		e.check = nil
	}
	if e.release != nil {
		e.release()
	}
	if e.kind == 'P' && e.def != nil && s.st != nil {
		delete(s.st.prepared, e.def)
	}
	if e.kind == 'P' && e.name != "" {
		delete(s.stmts, e.name)
	}
	if e.kind == 'P' && e.def == nil && e.synth == nil && s.st != nil {
		s.st.unnamedOwner = nil
	}
	s.pop()
}

// emitSynth sends the answers pgshard makes that are now at the head.
func (s *session) emitSynth() {
	for s.q.len() > 0 && s.q.front().synth != nil {
		s.out = append(s.out, s.q.front().synth...)
		s.pop()
	}
}

// ServerGone implements pool.Handler: the attached backend failed.
func (s *session) ServerGone(c *pool.Conn, err error) {
	s.mu.Lock()
	if s.sc != c {
		s.mu.Unlock()
		return
	}
	node, att := s.node, s.att
	idle := s.idleAttachment() && !s.rt.active
	unread := s.unreadBatch(err)
	s.detach()
	s.q.clear()
	if s.starting {
		// The client has not been answered yet: start takes another.
		s.mu.Unlock()
		c.Pool().Discard(c)
		return
	}
	if node >= 0 {
		att.rt.monitor.MarkDown(node, err)
	}
	if idle && !s.closing {
		// Lost between batches, with nothing of the client's on it: in
		// transaction pooling the next batch simply takes another backend.
		s.mu.Unlock()
		c.Pool().Discard(c)
		s.logger.Debug("backend lost between batches", "node", nodeName(node), "err", err)
		return
	}
	fatal := s.rt.fatal
	if s.rt.active && !s.closing && (s.rt.held || fatal != nil || unread) && s.retries < maxRetries {
		// The backend went away before the batch got an answer: a read
		// on a replica that died, or a backend that ended on its own
		// (its FATAL swallowed). Re-send the batch elsewhere.
		reason := "replica_lost"
		if !s.rt.held {
			reason = "backend_terminated"
		}
		s.logger.Info("backend lost before answering; re-sending the batch", "node", nodeName(node), "reason", reason, "err", err)
		s.startRetry(false, reason)
		s.mu.Unlock()
		c.Pool().Discard(c)
		return
	}
	s.rt.active = false
	s.lost = true // the session ends: nothing more of it may run on another backend
	closing := s.closing
	switch {
	case fatal != nil:
		s.out = append(s.out, fatal...) // the backend's own reason
	case !s.gotFatal:
		// The backend's own FATAL, when it sent one, already said why.
		s.out = wire.AppendError(s.out, wire.Fatalf(wire.CodeConnectionFailure, "pgshard: lost the connection to the backend: %v", err))
	}
	s.mu.Unlock()
	c.Pool().Discard(c)
	if !closing {
		s.logger.Warn("backend connection lost", "err", err)
		s.closeAfterFlush()
	}
}

// resetWindow bounds how long after a batch's last message was sent a
// reset connection still proves the backend did not read all of it: a
// reset that comes later may answer a TCP keepalive probe of a server that
// restarted after running the batch.
const resetWindow = time.Minute

// unreadBatch reports whether a backend lost with err cannot have committed
// anything of the retryable batch it was sent: the connection was reset
// (the backend closed with bytes of the batch unread, or before they
// arrived; pg_terminate_backend on a pooled backend does this, and the
// reset can discard its FATAL), nothing was answered, and the batch ends a
// transaction at most once, with its last message (a Sync, simple Query or
// FunctionCall). The last byte sent is then among those unread, so that
// message never ran. Called with s.mu held, before the queue is cleared.
func (s *session) unreadBatch(err error) bool {
	if !s.rt.active || s.rt.answered || !(errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)) {
		return false
	}
	for i := s.q.head; i < len(s.q.buf); i++ {
		// Only the last entry may end a transaction (its start: when it
		// was queued to be sent).
		if e := &s.q.buf[i]; e.kind == 'Q' || e.kind == 'S' || e.kind == 'F' {
			if i != len(s.q.buf)-1 || time.Since(e.start) > resetWindow {
				return false
			}
		}
	}
	return true
}

// idleAttachment reports whether the attached backend holds nothing of the
// client's: no answer outstanding, no transaction, no session state.
// Called with s.mu held.
func (s *session) idleAttachment() bool {
	return s.q.len() == 0 && s.txStatus == 'I' && !s.pinned && s.mode == config.PoolTransaction && !s.unsynced
}

// nodeName names node i of the session's shard for logs.
func nodeName(i int) string {
	if i < 0 {
		return "primary"
	}
	return replicaName(i)
}

// cancelTarget returns the backend running the session's query, if any,
// and keeps it attached until done is called (see Server.cancel).
func (s *session) cancelTarget() (sc *pool.Conn, done func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sc == nil || s.q.len() == 0 {
		return nil, nil
	}
	s.cancelling++
	return s.sc, func() {
		s.mu.Lock()
		s.cancelling--
		s.maybeRelease()
		s.mu.Unlock()
	}
}

// attached returns the backend the session holds now, if any.
func (s *session) attached() *pool.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sc
}

// queue is the FIFO of expected answers, kept by value so that relaying
// allocates nothing per message.
type queue struct {
	buf  []entry
	head int
}

func (q *queue) len() int { return len(q.buf) - q.head }

// front returns the head entry, valid until the next push; nil when empty.
func (q *queue) front() *entry {
	if q.head == len(q.buf) {
		return nil
	}
	return &q.buf[q.head]
}

func (q *queue) push(e entry) { q.buf = append(q.buf, e) }

// any reports whether f holds for an entry still waiting for its answer.
func (q *queue) any(f func(*entry) bool) bool {
	for i := q.head; i < len(q.buf); i++ {
		if f(&q.buf[i]) {
			return true
		}
	}
	return false
}

func (q *queue) pop() {
	q.buf[q.head] = entry{}
	q.head++
	if q.head == len(q.buf) {
		q.buf, q.head = q.buf[:0], 0
	}
}

func (q *queue) clear() {
	for i := q.head; i < len(q.buf); i++ {
		if r := q.buf[i].release; r != nil {
			r() // a database quiesce whose ReadyForQuery will not come
		}
		if c := q.buf[i].check; c != nil {
			c <- errGone // a checked prepare whose answer will not come
		}
		if d := q.buf[i].done; d != nil {
			select {
			case d <- errGone: // an internal query whose answer will not come
			default:
			}
		}
	}
	clear(q.buf)
	q.buf, q.head = q.buf[:0], 0
}

// retryOnPrimary reports the errors with which a replica refuses a read
// that the primary can answer.
func retryOnPrimary(code string) bool {
	switch code {
	case "25006", // read_only_sql_transaction: it writes after all
		"40001",                   // serialization_failure: a recovery conflict on a standby
		"57P01", "57P02", "57P03": // the replica is shutting down or starting
		return true
	}
	return false
}

// dropStartBackend lets go of a backend that failed during start.
func (s *session) dropStartBackend(sc *pool.Conn) {
	s.mu.Lock()
	if s.sc != sc {
		s.mu.Unlock()
		return // ServerGone did
	}
	s.detach()
	s.q.clear()
	s.mu.Unlock()
	sc.SetHandler(nil)
	sc.Pool().Discard(sc)
}
