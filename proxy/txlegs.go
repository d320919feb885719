package proxy

import (
	"context"
	"encoding/binary"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgshard/pgshard/config"
	"github.com/pgshard/pgshard/router"
	"github.com/pgshard/pgshard/wire"
)

// A transaction over several shards. The session's attached backend (its
// home) holds the transaction where it began; a statement on another shard
// runs on a leg of that shard kept for the rest of the transaction, opened
// with the same BEGIN. Such statements run synchronously in the session
// loop once everything sent to the home backend is answered, so answers
// reach the client in order. COMMIT of a transaction with legs is a
// two-phase commit over the home backend and every leg (commitTxn); an
// error on a leg fails the home transaction too, so that COMMIT rolls
// everything back, as on PostgreSQL.

// txState is the session's multi-shard transaction (session loop only).
type txState struct {
	legs       map[string]*leg
	failed     bool // a statement failed on a leg
	savepoints bool // the transaction made a savepoint (it cannot span shards)
}

// waitAnswered waits until the home backend has answered everything sent
// to it. Called with s.cmu held, by the session loop.
func (s *session) waitAnswered(ctx context.Context) error {
	for {
		s.mu.Lock()
		if s.sc == nil || (s.q.len() == 0 && !s.unsynced) {
			s.mu.Unlock()
			return nil
		}
		if s.batchDone == nil {
			s.batchDone = make(chan struct{})
		}
		ch := s.batchDone
		s.mu.Unlock()
		s.flushServer()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// txLegFor returns the transaction's leg on shard, opening it (with the
// transaction's BEGIN) when needed.
func (s *session) txLegFor(ctx context.Context, shard string) (*leg, error) {
	if l := s.tx.legs[shard]; l != nil {
		return l, nil
	}
	begin := s.txnBegin
	if begin == "" {
		begin = "BEGIN"
	}
	l, err := s.openTxLeg(ctx, shard, begin)
	if err != nil {
		return nil, err
	}
	if s.tx.legs == nil {
		s.tx.legs = map[string]*leg{}
	}
	s.tx.legs[shard] = l
	return l, nil
}

// addTxLegs appends to legs the transaction's leg on each of shards that
// legs lack (opened as needed).
func (s *session) addTxLegs(ctx context.Context, legs []*leg, shards []string) ([]*leg, error) {
	for _, name := range shards {
		if slices.ContainsFunc(legs, func(l *leg) bool { return l.b.rt.name == name }) {
			continue
		}
		l, err := s.txLegFor(ctx, name)
		if err != nil {
			return legs, err
		}
		legs = append(legs, l)
	}
	return legs, nil
}

func (s *session) dropLeg(l *leg) {
	l.keep = false
	s.closeLegs([]*leg{l}, false)
}

// txMulti reports whether the open transaction has legs on other shards.
func (s *session) txMulti() bool { return len(s.tx.legs) > 0 }

// inTxnOnOtherShard reports whether a statement on shard must run on a
// leg: the session's transaction is open on another shard. Called by the
// session loop.
func (s *session) inTxnOnOtherShard(shard string) bool {
	if shard == "" {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sc != nil && s.att != nil && s.att.rt.name != shard && s.txStatus == 'T' && !s.tx.failed &&
		!s.pinned && s.mode == config.PoolTransaction && s.lazyBegin == ""
}

// failHome makes the home backend's transaction fail (a statement failed
// on a leg), so that its COMMIT rolls back like every leg's.
func (s *session) failHome() {
	s.tx.failed = true
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sc == nil {
		return
	}
	s.push(entry{kind: 'x', swallow: true, done: make(chan error, 1)}) // its error is the point
	s.sbuf = append(s.sbuf, queryMsg(raiseSQL(wire.Errorf(codeTransactionRollback, "pgshard: a statement of this transaction failed on another shard")))...)
}

// legQuery runs a simple Query on the transaction's leg of shard and
// relays its answers.
func (s *session) legQuery(ctx context.Context, shard string, msg []byte) error {
	if err := s.waitAnswered(ctx); err != nil {
		return err
	}
	l, err := s.txLegFor(ctx, shard)
	if err != nil {
		return s.legFailed(err, true)
	}
	if err := l.sc.Write(msg); err != nil {
		return s.legFailed(err, true)
	}
	s.setRunning([]*leg{l})
	defer s.clearRunning()
	return s.relayLeg(ctx, l, nil)
}

// legFailed answers the client when a leg could not be used: the
// transaction fails.
func (s *session) legFailed(err error, simple bool) error {
	s.emitError(err)
	s.failHome()
	if simple {
		s.emitStatus('E')
	}
	return nil
}

// emitStatus answers ReadyForQuery with status st.
func (s *session) emitStatus(st byte) {
	s.mu.Lock()
	s.out = append(s.out, readyForQuery(st)...)
	s.mu.Unlock()
	s.flushClient()
}

// relayLeg passes a leg's answers to the client up to its ReadyForQuery,
// except those in skip (answers to what pgshard added: ParseComplete of
// its Parse), and fails the home transaction if the leg's failed.
func (s *session) relayLeg(ctx context.Context, l *leg, skip map[byte]int) error {
	for {
		typ, msg, err := l.next(ctx)
		if err != nil {
			s.dropTxLeg(l)
			return s.legFailed(err, true)
		}
		if skip[typ] > 0 {
			skip[typ]--
			continue
		}
		if typ == 'Z' {
			st := msg[5]
			if st == 'E' && !s.tx.failed {
				s.failHome()
			}
			if st == 'I' {
				// The leg's transaction ended on its own (a COMMIT the
				// planner let through is handled before; this is a bug
				// guard): the transaction can no longer be atomic.
				st = 'E'
				s.failHome()
			}
			s.emitStatus(st)
			return nil
		}
		s.mu.Lock()
		s.out = append(s.out, msg...)
		big := len(s.out) > 64<<10
		s.mu.Unlock()
		if big {
			s.flushClient()
		}
	}
}

func (s *session) dropTxLeg(l *leg) {
	for k, v := range s.tx.legs {
		if v == l {
			delete(s.tx.legs, k)
		}
	}
	s.dropLeg(l)
}

// legGroup runs an extended-protocol batch (up to its Sync) on the
// transaction's leg of shard. Statements are sent unnamed, parsed again
// before each Bind and statement Describe, so that the leg needs none of
// the client's names; the client's Parse and Close are answered here.
func (s *session) legGroup(ctx context.Context, shard string, group []byte) (bool, error) {
	if !s.groupNamesKnown(group) {
		return false, nil // the home backend raises what PostgreSQL would
	}
	if err := s.waitAnswered(ctx); err != nil {
		return true, err
	}
	l, err := s.txLegFor(ctx, shard)
	if err != nil {
		s.emitError(err)
		s.failHome()
		s.emitStatus('E')
		return true, nil
	}
	buf, skip, pre, err := s.legMessages(group)
	if err != nil {
		return true, err
	}
	s.emitRaw(pre)
	if err := l.sc.Write(buf); err != nil {
		s.dropTxLeg(l)
		s.emitError(err)
		s.failHome()
		s.emitStatus('E')
		return true, nil
	}
	s.setRunning([]*leg{l})
	defer s.clearRunning()
	return true, s.relayLeg(ctx, l, skip)
}

// groupNamesKnown reports whether every statement a batch binds or
// describes exists (parsed in the batch or before).
func (s *session) groupNamesKnown(group []byte) bool {
	parsed := map[string]bool{}
	for b := group; len(b) >= 5; {
		n := 1 + int(binary.BigEndian.Uint32(b[1:]))
		typ, msg := b[0], b[:n]
		b = b[n:]
		var name string
		var ok bool
		switch {
		case typ == 'P':
			name, _, ok = cstring(msg[5:])
			parsed[name] = ok
			continue
		case typ == 'B':
			var rest []byte
			_, rest, ok = cstringBytes(msg[5:])
			if ok {
				name, _, ok = cstring(rest)
			}
		case typ == 'D' && len(msg) > 6 && msg[5] == 'S':
			name, _, ok = cstring(msg[6:])
		default:
			continue
		}
		if !ok {
			return false
		}
		if parsed[name] {
			continue
		}
		if name == "" {
			if len(s.unnamed) == 0 {
				return false
			}
		} else if _, known := s.lookupStmt(name); !known {
			return false
		}
	}
	return true
}

// isTxnEnd reports whether sql is a lone COMMIT/END or ROLLBACK/ABORT
// (not ROLLBACK TO SAVEPOINT, not PREPARE TRANSACTION), and which.
func isTxnEnd(sql string, fx router.Effects) (commit, ok bool) {
	if fx.Statements != 1 || !fx.TxnControl {
		return false, false
	}
	ops := router.Ops(sql)
	if len(ops) != 1 {
		return false, false
	}
	switch ops[0].Kind {
	case router.OpCommit:
		return true, firstWord(sql) != "prepare" // PREPARE TRANSACTION is no plain end
	case router.OpRollback:
		return false, true
	}
	return false, false
}

// endTxn ends a transaction with legs: ROLLBACK everywhere, or COMMIT by
// two-phase commit over the home backend and every leg; then it answers
// the client (tag and ReadyForQuery; ext adds the extended protocol's
// answers before the tag).
func (s *session) endTxn(ctx context.Context, commit bool, ext []byte) error {
	if err := s.waitAnswered(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	failed := s.txStatus == 'E' || s.tx.failed
	s.mu.Unlock()
	legs := make([]*leg, 0, len(s.tx.legs)+1)
	home, restore := s.borrowHome()
	if home != nil {
		legs = append(legs, home)
	}
	for _, l := range s.tx.legs {
		legs = append(legs, l)
	}
	var err error
	tag := "ROLLBACK"
	switch {
	case home == nil:
		// The transaction's home backend is gone, and with it what ran
		// there: nothing may commit elsewhere.
		_ = s.finishLegs(ctx, legs, "ROLLBACK")
		err = wire.Errorf(wire.CodeConnectionFailure, "pgshard: the transaction lost its backend on one shard; it was rolled back on the others")
	case !commit || failed:
		err = s.finishLegs(ctx, legs, "ROLLBACK")
	default:
		log := s.srv.txnLogger()
		if log == nil {
			err = wire.Errorf(wire.CodeFeatureNotSupported, "pgshard: this transaction wrote on %d shards and needs two-phase commit, but this node has no decision log (the Raft shard map)", len(legs))
			_ = s.finishLegs(ctx, legs, "ROLLBACK")
		} else if err = s.commitLegs(ctx, legs, log); err == nil {
			tag = "COMMIT"
		}
	}
	// Let the legs go; the home backend returns to the session.
	for _, l := range s.tx.legs {
		l.keep = false
		s.closeLegs([]*leg{l}, err == nil)
	}
	s.tx = txState{}
	restore()
	s.emitRaw(ext)
	if err != nil {
		s.emitError(err)
	} else {
		b, _ := (&pgproto3.CommandComplete{CommandTag: []byte(tag)}).Encode(nil)
		s.emitRaw(b)
	}
	s.mu.Lock()
	s.txStatus = 'I'
	s.txnFresh, s.txnBegin = false, ""
	if s.st != nil {
		s.st.unnamedOwner = nil // the commit's simple Queries dropped it
	}
	if tag == "COMMIT" {
		s.commitStaged()
	}
	s.staged = s.staged[:0]
	s.wroteAt = time.Now()
	s.busy = false
	s.maybeRelease()
	s.mu.Unlock()
	s.emitStatus('I')
	return nil
}

// closeTxLegs drops the legs of a transaction the session abandons.
func (s *session) closeTxLegs() {
	for _, l := range s.tx.legs {
		s.dropLeg(l)
	}
	s.tx = txState{}
}

// txBatch reports whether the next extended-protocol message starts a
// batch inside a transaction that may span shards: it is then read ahead
// to its Sync and routed as a whole (handleGroup).
func (s *session) txBatch() bool {
	if s.srv.owners() < 2 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sc != nil && (s.txStatus == 'T' || s.txStatus == 'E') && !s.unsynced && !s.pinned && s.mode == config.PoolTransaction
}

// txnLegRefusal says why the transaction cannot open a leg on another
// shard ("" when it can).
func (s *session) txnLegRefusal() string {
	if s.tx.savepoints {
		return "a transaction with savepoints cannot span shards (ROLLBACK TO SAVEPOINT would not undo the other shards)"
	}
	return ""
}

// noteSavepoints records a SAVEPOINT of the open transaction, and forgets
// savepoints once the session is outside a transaction.
func (s *session) noteSavepoints(sql string, fx router.Effects) {
	s.mu.Lock()
	idle := s.txStatus == 'I' && s.lazyBegin == ""
	s.mu.Unlock()
	if idle {
		s.tx.savepoints, s.tx.failed = false, false
	}
	if !fx.AnyTxnControl {
		return
	}
	for _, op := range router.Ops(sql) {
		if op.Kind == router.OpSavepoint {
			s.tx.savepoints = true
		}
	}
}

// groupTxnEnd ends a transaction with legs on a COMMIT or ROLLBACK sent
// through the extended protocol: [Parse] Bind [Describe] Execute Sync.
func (s *session) groupTxnEnd(ctx context.Context, group []byte) (bool, error) {
	if !s.txMulti() {
		return false, nil
	}
	g, ok := s.singleGroup(group)
	if !ok {
		return false, nil
	}
	commit, end := isTxnEnd(g.sql, router.Inspect(g.sql))
	if !end {
		return false, nil
	}
	var ext []byte
	if g.parse != nil {
		ext = append(ext, msgParseComplete...)
	}
	ext = append(ext, msgBindComplete...)
	if g.describe {
		ext = append(ext, msgNoData...)
	}
	return true, s.endTxn(ctx, commit, ext)
}

// txFailed reports whether the open transaction failed (its home said so,
// or a leg did and the home is being told): its statements go to the home
// backend, which answers 25P02 as PostgreSQL would.
func (s *session) txFailed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.txStatus == 'E' || (s.tx.failed && s.txStatus != 'I')
}

// txIdleReset forgets the last transaction's state once the session is
// outside a transaction (it ended on its home backend).
func (s *session) txIdleReset() {
	if !s.tx.failed && !s.tx.savepoints {
		return
	}
	s.mu.Lock()
	idle := s.txStatus == 'I' && s.lazyBegin == ""
	s.mu.Unlock()
	if idle && len(s.tx.legs) == 0 {
		s.tx.savepoints, s.tx.failed = false, false
	}
}

// legMessages translates an extended-protocol batch for a leg: statements
// are sent unnamed, parsed again before each Bind and statement Describe,
// so the leg needs none of the client's names. It returns the bytes to
// send, the answers of the leg to drop (ParseComplete of pgshard's
// Parses), and the answers pgshard gives before the leg's first (the
// client's Parse and Close at the start of the batch). The client's
// statements are recorded as a Parse would record them.
func (s *session) legMessages(group []byte) (buf []byte, skip map[byte]int, pre []byte, err error) {
	// Answers are relayed in order: pgshard's own go into out before the
	// leg's (the leg answers nothing before the batch is sent).
	skip = map[byte]int{}
	parsed := map[string]*pgproto3.Parse{}
	for b := group; len(b) >= 5; {
		n := 1 + int(binary.BigEndian.Uint32(b[1:]))
		typ, msg := b[0], b[:n]
		b = b[n:]
		switch typ {
		case 'P':
			var p pgproto3.Parse
			if p.Decode(msg[5:]) != nil {
				return nil, nil, nil, errMalformed("Parse")
			}
			parsed[p.Name] = &p
			if p.Name == "" {
				s.newUnnamed(msg)
			} else {
				s.mu.Lock()
				s.stmts[p.Name] = s.srv.stmts.intern(p.Query, p.ParameterOIDs, s.classify)
				s.mu.Unlock()
			}
			if len(buf) == 0 {
				pre = append(pre, msgParseComplete...)
			} else {
				// Answered by the leg's ParseComplete of a Parse sent in
				// its place.
				buf, _ = (&pgproto3.Parse{Query: p.Query, ParameterOIDs: p.ParameterOIDs}).Encode(buf)
			}
		case 'B', 'D':
			var name string
			if typ == 'B' {
				_, rest, ok := cstringBytes(msg[5:])
				nm, _, ok2 := cstring(rest)
				if !ok || !ok2 {
					return nil, nil, nil, errMalformed("Bind")
				}
				name = nm
			} else if len(msg) > 6 && msg[5] == 'S' {
				nm, _, ok := cstring(msg[6:])
				if !ok {
					return nil, nil, nil, errMalformed("Describe")
				}
				name = nm
			} else {
				buf = append(buf, msg...)
				continue
			}
			q, types, _ := s.stmtText(parsed, name)
			buf, _ = (&pgproto3.Parse{Query: q, ParameterOIDs: types}).Encode(buf)
			skip['1']++
			if typ == 'B' {
				portal, rest, _ := cstringBytes(msg[5:])
				_, rest, _ = cstringBytes(rest)
				buf = appendWithStmt(buf, 'B', append(append([]byte(nil), portal...), 0), "", rest)
			} else {
				buf = appendWithStmt(buf, 'D', []byte{'S'}, "", nil)
			}
		case 'C':
			if len(msg) > 6 && msg[5] == 'S' {
				if nm, _, ok := cstring(msg[6:]); ok {
					s.mu.Lock()
					delete(s.stmts, nm)
					s.mu.Unlock()
				}
			}
			if len(buf) == 0 {
				pre = append(pre, msgCloseComplete...)
			} else {
				buf = append(buf, msg...) // the leg answers CloseComplete
			}
		case 'E', 'S', 'H':
			buf = append(buf, msg...)
		default:
			return nil, nil, nil, errMalformed("extended-protocol batch")
		}
	}
	return buf, skip, pre, nil
}

// batchSegment is one statement of an extended-protocol batch: its
// messages up to its Execute, and its shard ("" for any).
type batchSegment struct {
	msgs  []byte
	shard string
}

// batchSegments cuts a batch (ending in its Sync) into statements and
// routes each; ok is false unless every statement is a single-shard or
// any-shard one and none controls transactions.
func (s *session) batchSegments(group []byte) (segs []batchSegment, ok bool) {
	parsed := map[string]*pgproto3.Parse{}
	start := 0
	var starts []int
	var shard string
	for off := 0; off+5 <= len(group); {
		n := 1 + int(binary.BigEndian.Uint32(group[off+1:]))
		typ, msg := group[off], group[off:off+n]
		off += n
		switch typ {
		case 'P':
			var p pgproto3.Parse
			if p.Decode(msg[5:]) != nil {
				return nil, false
			}
			parsed[p.Name] = &p
		case 'B':
			_, rest, ok1 := cstringBytes(msg[5:])
			name, rest, ok2 := cstring(rest)
			if !ok1 || !ok2 {
				return nil, false
			}
			sql, types, known := s.stmtText(parsed, name)
			if !known {
				return nil, false
			}
			if router.Inspect(sql).AnyTxnControl {
				return nil, false
			}
			pl, planned := s.planBind(sql, types, rest)
			if !planned {
				return nil, false
			}
			switch pl.Kind {
			case router.Single:
				shard = pl.Shard
			case router.AnyShard, router.Utility:
				shard = ""
			default:
				return nil, false
			}
		case 'E':
			segs = append(segs, batchSegment{msgs: group[start:off], shard: shard})
			starts = append(starts, start)
			start, shard = off, ""
		case 'S':
			if off != len(group) || len(segs) == 0 {
				return nil, false
			}
			// Messages after the last Execute (a Close) go with it.
			segs[len(segs)-1].msgs = group[starts[len(starts)-1] : off-n]
		}
	}
	return segs, len(segs) > 0
}

// groupAcrossShards runs, outside a transaction, an extended-protocol
// batch whose statements land on different shards (a pgx batch of keyed
// inserts, say). PostgreSQL runs such a batch as one implicit
// transaction; so does pgshard: each shard's statements run on a leg in a
// transaction of its own, one statement at a time in the client's order,
// and the Sync commits all legs together (two-phase commit). An error
// skips the rest of the batch and rolls every leg back.
func (s *session) groupAcrossShards(ctx context.Context, group []byte) (bool, error) {
	if s.srv.owners() < 2 || s.srv.txnLogger() == nil {
		return false, nil
	}
	if _, single := s.singleGroup(group); single {
		return false, nil // one statement: one shard, or a spread statement
	}
	segs, ok := s.batchSegments(group)
	if !ok || s.notSpreadable(router.Effects{Statements: 1}) != "" || !s.groupNamesKnown(group) {
		return false, nil
	}
	shards := map[string]bool{}
	for _, sg := range segs {
		if sg.shard != "" {
			shards[sg.shard] = true
		}
	}
	if len(shards) < 2 {
		// One shard (or any): planned already, every Bind of it.
		s.grp.batchKnown = true
		for sh := range shards {
			s.grp.batchShard = sh
		}
		return false, nil
	}
	legs := map[string]*leg{}
	var order []*leg
	defer func() {
		for _, l := range order {
			l.keep = false
		}
	}()
	var failed error
	for _, sg := range segs {
		shard := sg.shard
		if shard == "" && len(order) > 0 {
			shard = order[0].b.rt.name
		}
		for i := 0; shard == ""; i++ {
			shard = segs[i].shard // the first statement with a shard
		}
		l := legs[shard]
		if l == nil {
			nl, err := s.openTxLeg(ctx, shard, "BEGIN")
			if err != nil {
				failed = err
				s.emitError(err)
				break
			}
			l = nl
			legs[shard] = l
			order = append(order, l)
		}
		buf, skip, pre, err := s.legMessages(sg.msgs)
		if err != nil {
			s.closeLegs(order, false)
			return true, err
		}
		buf = append(buf, msgSync...)
		s.emitRaw(pre)
		if err := l.sc.Write(buf); err != nil {
			failed = err
			s.emitError(err)
			break
		}
		s.setRunning([]*leg{l})
		st, err := s.relaySegment(ctx, l, skip)
		s.clearRunning()
		if err != nil {
			failed = err
			s.emitError(err)
			break
		}
		if st == 'E' {
			failed = errBatchFailed
			break
		}
	}
	for _, l := range order {
		l.keep = false
	}
	if failed != nil {
		clean := s.finishLegs(ctx, order, "ROLLBACK") == nil
		s.closeLegs(order, clean)
	} else if err := s.commitLegs(ctx, order, s.srv.txnLogger()); err != nil {
		s.emitError(err)
		s.closeLegs(order, false)
	} else {
		s.closeLegs(order, true)
		s.noteSpreadWrite()
	}
	s.emitStatus('I')
	return true, nil
}

// errBatchFailed: a statement of a batch failed (its error was relayed).
var errBatchFailed = wire.Errorf(codeTransactionRollback, "pgshard: the batch failed")

// relaySegment relays a leg's answers to one statement of a batch, up to
// the ReadyForQuery of the Sync pgshard added (not relayed), and returns
// the leg's transaction status.
func (s *session) relaySegment(ctx context.Context, l *leg, skip map[byte]int) (byte, error) {
	for {
		typ, msg, err := l.next(ctx)
		if err != nil {
			return 0, err
		}
		if skip[typ] > 0 {
			skip[typ]--
			continue
		}
		if typ == 'Z' {
			return msg[5], nil
		}
		s.emitData(msg)
	}
}

// openTxLeg opens a leg on shard inside a transaction begun with begin.
func (s *session) openTxLeg(ctx context.Context, shard, begin string) (*leg, error) {
	legs, err := s.openLegs(ctx, []string{shard}, false)
	if err != nil {
		return nil, err
	}
	l := legs[0]
	l.keep = true
	buf, n := s.prelude(l)
	buf = append(buf, queryMsg(begin)...)
	if err := l.sc.Write(buf); err != nil {
		s.dropLeg(l)
		return nil, wire.Errorf(wire.CodeConnectionFailure, "pgshard: lost the connection to shard %s: %v", shard, err)
	}
	for i := 0; i <= n; i++ {
		first, err := l.untilReady(ctx)
		if err == nil {
			err = first
		}
		if err != nil {
			s.dropLeg(l)
			return nil, err
		}
	}
	return l, nil
}

// borrowHome makes the session's attached backend a leg for a while (its
// queue is empty: waitAnswered); restore gives it back to the session, or
// drops it if it was lost meanwhile.
func (s *session) borrowHome() (home *leg, restore func()) {
	s.mu.Lock()
	sc, att := s.sc, s.att
	s.mu.Unlock()
	if sc == nil {
		return nil, func() {}
	}
	home = &leg{b: att, sc: sc, node: -1, keep: true, ch: make(chan legMsg, 64), quit: make(chan struct{}), gone: make(chan struct{})}
	if !sc.SetHandler(home) {
		return nil, func() {}
	}
	return home, func() {
		close(home.quit)
		select {
		case <-home.gone:
			s.mu.Lock()
			if s.sc == sc {
				s.detach()
			}
			s.mu.Unlock()
			sc.Pool().Discard(sc)
		default:
			sc.SetHandler(s)
		}
	}
}

// spreadableInTxn reports whether a statement spanning shards may run in
// the open transaction (spreadInTxn): one statement, not DDL or COPY, in a
// transaction that has not failed, made no savepoint, on a session that
// does not keep its backend.
func (s *session) spreadableInTxn(pl *router.Plan, fx router.Effects) bool {
	if fx.Statements != 1 || fx.Schema || pl.Copy != nil || s.tx.savepoints || s.srv.txnLogger() == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.txStatus == 'T' && !s.tx.failed && !s.pinned && s.mode == config.PoolTransaction
}

// spreadInTxn runs a statement spanning shards inside the open
// transaction: over the home backend and a leg of the transaction on each
// other shard, without BEGIN or COMMIT of its own (COMMIT of the
// transaction commits them all). An error fails the transaction.
func (s *session) spreadInTxn(ctx context.Context, pl *router.Plan, sql string, x *extReq) error {
	if s.attached() == nil {
		if s.lazyBegin == "" {
			// The transaction's backend is gone (the client gets its
			// FATAL): nothing more runs in it.
			return s.legFailed(wire.Errorf(wire.CodeConnectionFailure, "pgshard: the transaction lost its backend"), true)
		}
		// A transaction pgshard opened lazily: its home is the default
		// shard, where its BEGIN goes now.
		s.want = target{}
		if !s.attachLocked(ctx, true) {
			return s.attachErr
		}
		s.txnFresh = false
		s.mu.Unlock()
		s.flushServer()
	}
	if err := s.waitAnswered(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	s.txnFresh = false
	s.mu.Unlock()
	home, restore := s.borrowHome()
	if home == nil {
		return s.legFailed(wire.Errorf(wire.CodeConnectionFailure, "pgshard: lost the transaction's backend"), true)
	}
	legs, err := s.addTxLegs(ctx, []*leg{home}, s.srv.spreadShards(pl))
	if h := testSpreadLegsHook.Load(); h != nil && err == nil {
		(*h)()
	}
	// A cut-over committed since pl was planned: the statement runs on the
	// current map's plan, on the transaction's legs it needs besides
	// (a few times at most; ownedTexts refuses what still differs).
	for tries := 0; tries < 3 && err == nil; tries++ {
		now := s.replanMoving(legs, pl, sql, x)
		if now == nil {
			break
		}
		pl = now
		legs, err = s.addTxLegs(ctx, legs, s.srv.spreadShards(pl))
	}
	if err != nil {
		restore()
		return s.legFailed(err, true)
	}
	errs := s.spreadErrs
	s.spreadTxn = true
	s.setRunning(legs)
	if x != nil {
		if x.parse {
			s.emitRaw(msgParseComplete)
		}
		s.emitRaw(msgBindComplete)
	}
	if pl.Read && pl.Kind != router.AllShards {
		err = s.spreadRead(ctx, legs, pl, sql, x)
	} else {
		err = s.spreadWrite(ctx, legs, pl, sql, x)
	}
	s.spreadTxn = false
	restore()
	if err != nil {
		return err
	}
	st := byte('T')
	if s.spreadErrs != errs {
		s.failHome()
		st = 'E'
	}
	s.emitStatus(st)
	return nil
}
