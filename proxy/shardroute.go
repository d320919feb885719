package proxy

import (
	"context"
	"encoding/binary"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgshard/pgshard/config"
	"github.com/pgshard/pgshard/pool"
	"github.com/pgshard/pgshard/router"
	"github.com/pgshard/pgshard/wire"
)

// shardBinding is a session's view of one shard: the shard at run time and
// the pools of its servers for the session's user and database.
type shardBinding struct {
	rt       *shardRT
	primary  *pool.Pool
	replicas []*pool.Pool // made on first use (replicaPool)
}

// defaultShard is the shard that answers what any shard may answer when
// the session has no shard of its own yet: the first active shard that
// owns ranges (routingState.stable), else the ring's owner while one
// shard owns the whole ring, else the first shard of the map.
func (s *Server) defaultShard() string {
	if rs := s.routing.Load(); rs != nil && rs.ring != nil {
		if len(rs.stable) > 0 {
			return rs.stable[0]
		}
		if sh := rs.ring.Shards(); len(sh) == 1 {
			return sh[0]
		}
	}
	if l := s.shardList(); len(l) > 0 {
		return l[0].name
	}
	return ""
}

// shardByName returns the run-time shard called name.
func (s *Server) shardByName(name string) *shardRT {
	for _, rt := range s.shardList() {
		if rt.name == name {
			return rt
		}
	}
	return nil
}

// stableShard reports whether name is an active shard that owns ranges
// (routingState.stable): one that may answer what any shard may.
func (s *Server) stableShard(name string) bool {
	rs := s.routing.Load()
	return rs != nil && slices.Contains(rs.stable, name)
}

// owners is the number of shards that own ranges of the ring.
func (s *Server) owners() int {
	if rs := s.routing.Load(); rs != nil {
		return rs.owners
	}
	return 0
}

// bindingFor returns the session's binding to the shard called name; ""
// means the shard of the session's last attachment while it is a stable
// one (Server.stableShard), else the default one.
// Called by whoever composes (s.cmu held).
func (s *session) bindingFor(name string) (*shardBinding, error) {
	if name == "" {
		s.mu.Lock()
		att := s.att
		s.mu.Unlock()
		if att != nil && s.srv.stableShard(att.rt.name) { // with one owner, defaultShard's too
			name = att.rt.name
		} else {
			name = s.srv.defaultShard()
		}
	}
	rt := s.srv.shardByName(name)
	if rt == nil {
		return nil, wire.Errorf(wire.CodeConnectionFailure, "pgshard: shard %q is in the shard map but not configured on this node yet", name)
	}
	if b := s.binds[name]; b != nil && b.rt == rt {
		return b, nil
	}
	p, err := s.srv.poolFor(rt.primary, s.cuser, s.db)
	if err != nil {
		return nil, wire.Errorf(wire.CodeInternalError, "pgshard: shard %s: %v", name, err)
	}
	b := &shardBinding{rt: rt, primary: p, replicas: make([]*pool.Pool, len(rt.replicas))}
	if s.binds == nil {
		s.binds = map[string]*shardBinding{}
	}
	s.binds[name] = b
	return b, nil
}

// plan plans sql when several shards own ranges of the ring; ok is false
// while one shard owns it all (every statement runs there, unplanned).
func (s *session) plan(sql string, params *router.Params) (router.Plan, bool) {
	rs := s.srv.routing.Load()
	if rs == nil || rs.owners < 2 {
		return router.Plan{}, false
	}
	pl := s.planner(rs).Plan(sql, params, rs.ring)
	if pl.Global && (pl.Kind == router.AnyShard || pl.Kind == router.Utility) {
		// LISTEN/NOTIFY and pg_notify() meet on one shard: the default
		// one, the first stable shard of the map (every node agrees).
		pl.Kind, pl.Shard = router.Single, s.srv.defaultShard()
	}
	return pl, true
}

// planError is a planner refusal as the client gets it.
func planError(e *router.Error) *wire.Error {
	if e == nil {
		return wire.Errorf(wire.CodeFeatureNotSupported, "pgshard: cannot route this statement")
	}
	return &wire.Error{Severity: "ERROR", Code: e.Code, Message: e.Message}
}

// crossShard is the refusal of a statement whose shard is not the one the
// session is bound to.
func crossShard(bound, want string, why string) *wire.Error {
	e := wire.Errorf(wire.CodeFeatureNotSupported,
		"pgshard: this statement runs on shard %s, but %s is bound to shard %s; statements on several shards in one transaction are not supported yet", want, why, bound)
	e.Hint = "keep each transaction (and each extended-protocol batch up to its Sync) on the keys of one shard"
	return e
}

// boundShard returns the shard the session's next statement must run on,
// or "" when it is free to go anywhere: the shard of its attached backend
// (an open transaction, a pinned session, session pooling, the rest of an
// extended-protocol batch), and why. With several owners, a batch outside
// a transaction never finds the previous one attached (waitBatch). Called
// with s.mu held.
func (s *session) boundShard() (string, string) {
	if s.sc == nil || s.att == nil {
		return "", ""
	}
	why := "the session"
	switch {
	case s.txStatus != 'I':
		why = "its transaction"
	case s.unsynced:
		why = "its extended-protocol batch"
	case s.pinned:
		why = "the session (pinned: " + "temporary objects, LISTEN, advisory locks or session settings through the extended protocol)"
	case s.mode == config.PoolSession:
		why = "the session (session pooling keeps one backend)"
	}
	return s.att.rt.name, why
}

// routeSimple plans a simple Query when several shards own the ring. It
// returns the shard the Query goes to ("" for any), or done when the Query
// was answered (a refusal, a lazily opened or empty transaction) or run
// over several shards.
func (s *session) routeSimple(ctx context.Context, sql string, fx router.Effects) (shard string, done bool, err error) {
	if s.lazyAborted() {
		if s.lazyTxn(sql, fx, nil) {
			return "", true, nil // its COMMIT or ROLLBACK: ROLLBACK
		}
		return "", true, s.refuseQuery(ctx, lazyAbortError(sql))
	}
	pl, ok := s.plan(sql, nil)
	if !ok {
		if fx.Schema && s.createsTables(sql) && s.notSpreadable(fx) == "" {
			// One shard owns the ring: CREATE TABLE still registers its
			// tables (and places sequences), so that they route right
			// once more shards are added.
			pl := router.Plan{Kind: router.AllShards}
			s.srv.stmts.bump()
			err := s.runSpread(ctx, &pl, sql, nil)
			s.srv.stmts.bump()
			return "", true, err
		}
		return "", false, nil
	}
	if commit, end := isTxnEnd(sql, fx); end && s.txMulti() {
		return "", true, s.endTxn(ctx, commit, nil)
	}
	s.noteSavepoints(sql, fx)
	switch pl.Kind {
	case router.Refuse:
		return "", true, s.refuseQuery(ctx, planError(pl.Err))
	case router.Single:
		shard = pl.Shard
	case router.AnyShard, router.Utility:
	default:
		if s.txFailed() {
			return "", false, nil // the transaction's home answers 25P02
		}
		if s.tempOnly(sql) {
			return "", false, nil // the session's temporary tables: on its own backend
		}
		if s.spreadableInTxn(&pl, fx) {
			return "", true, s.spreadInTxn(ctx, &pl, sql, nil)
		}
		if why := s.notSpreadable(fx); why != "" {
			return "", true, s.refuseQuery(ctx, wire.Errorf(wire.CodeFeatureNotSupported,
				"pgshard: this statement runs on several shards, which is not supported %s yet", why))
		}
		if fx.Schema {
			s.srv.stmts.bump()
		}
		err := s.runSpread(ctx, &pl, sql, nil)
		if fx.Schema {
			s.srv.stmts.bump()
		}
		return "", true, err
	}
	if s.lazyTxn(sql, fx, nil) {
		return "", true, nil
	}
	if s.txFailed() {
		return "", false, nil // the transaction's home answers 25P02
	}
	if bound, why := s.shardFor(ctx, shard); bound != "" {
		if s.inTxnOnOtherShard(shard) {
			if why := s.txnLegRefusal(); why != "" || fx.Statements > 1 {
				if why == "" {
					why = "a Query string with several statements in a transaction over several shards is not supported"
				}
				return "", true, s.refuseQuery(ctx, wire.Errorf(wire.CodeFeatureNotSupported, "pgshard: %s", why))
			}
			return "", true, s.legQuery(ctx, shard, queryMsg(sql))
		}
		return "", true, s.refuseQuery(ctx, crossShard(bound, shard, why))
	}
	return shard, false, nil
}

// lazyTxn opens a transaction without a backend: with several shards, a
// lone BEGIN cannot know its shard, so pgshard answers it and sends it to
// the shard of the transaction's first statement (attach). COMMIT or
// ROLLBACK of such a transaction that ran nothing is answered too. It
// reports whether sql was answered; ext is what goes before the tag (the
// extended protocol's ParseComplete, BindComplete, NoData).
func (s *session) lazyTxn(sql string, fx router.Effects, ext []byte) bool {
	if fx.Statements != 1 || !fx.TxnControl {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sc != nil || s.pinned || s.mode != config.PoolTransaction {
		return false
	}
	var tag string
	switch {
	case fx.Begin && s.txStatus == 'I':
		s.lazyBegin, s.lazyReadOnly = strings.Clone(sql), fx.ReadOnly
		s.txStatus = 'T'
		tag = "BEGIN"
		if firstWord(sql) == "start" {
			tag = "START TRANSACTION"
		}
	case s.lazyBegin != "":
		commit, end := isTxnEnd(sql, fx) // not ROLLBACK TO: the backend answers that
		if !end {
			return false
		}
		tag = "ROLLBACK"
		if commit && !s.lazyFailed {
			tag = "COMMIT"
		}
		s.lazyBegin, s.lazyFailed = "", false
		s.txStatus = 'I'
	default:
		return false
	}
	b, _ := (&pgproto3.CommandComplete{CommandTag: []byte(tag)}).Encode(ext)
	s.push(entry{synth: b})
	s.push(entry{synth: readyForQuery(s.txStatus)})
	return true
}

// groupLazyTxn is lazyTxn for a BEGIN, COMMIT or ROLLBACK sent through
// the extended protocol as a batch of its own.
func (s *session) groupLazyTxn(group []byte) bool {
	if s.srv.owners() < 2 {
		return false
	}
	g, ok := s.singleGroup(group)
	if !ok {
		return false
	}
	fx := router.Inspect(g.sql)
	var ext []byte
	if g.parse != nil {
		ext = append(ext, msgParseComplete...)
	}
	ext = append(ext, msgBindComplete...)
	if g.describe {
		ext = append(ext, msgNoData...)
	}
	if !s.lazyTxn(g.sql, fx, ext) {
		return false
	}
	if g.parse != nil {
		if g.p.Name == "" {
			s.newUnnamed(g.parse)
		} else {
			s.mu.Lock()
			if _, exists := s.stmts[g.p.Name]; !exists {
				s.stmts[g.p.Name] = s.srv.stmts.intern(g.p.Query, g.p.ParameterOIDs, s.classify)
			}
			s.mu.Unlock()
		}
	}
	return true
}

// firstWord returns the first word of sql, lower-cased, after spaces and
// comments.
func firstWord(sql string) string { return strings.ToLower(leadingWord(sql)) }

// leadingWord returns the first word of sql, after spaces and comments.
func leadingWord(sql string) string {
	for {
		sql = strings.TrimLeft(sql, " \t\r\n\f(")
		switch {
		case strings.HasPrefix(sql, "--"):
			if i := strings.IndexByte(sql, '\n'); i >= 0 {
				sql = sql[i+1:]
				continue
			}
			return ""
		case strings.HasPrefix(sql, "/*"):
			if i := strings.Index(sql, "*/"); i >= 0 {
				sql = sql[i+2:]
				continue
			}
			return ""
		}
		break
	}
	end := strings.IndexFunc(sql, func(r rune) bool {
		return !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
	})
	if end < 0 {
		end = len(sql)
	}
	return sql[:end]
}

// raiseSQL is a statement that makes the backend raise e, so that its
// transaction fails as PostgreSQL's would have for the refused statement.
func raiseSQL(e *wire.Error) string {
	clean := func(v string) string { return strings.ReplaceAll(v, "$pgshard$", "$ pgshard $") }
	sql := "DO $pgshard$BEGIN RAISE EXCEPTION USING ERRCODE = " + quoteLiteral(e.Code) + ", MESSAGE = " + quoteLiteral(clean(e.Message))
	if e.Hint != "" {
		sql += ", HINT = " + quoteLiteral(clean(e.Hint))
	}
	return sql + "; END$pgshard$"
}

// refuseQuery answers a simple Query with e. Outside a transaction the
// answer is pgshard's; inside one, or with a backend bound, the backend
// raises e itself, so that the transaction fails as it would have on
// PostgreSQL (a later COMMIT rolls back).
func (s *session) refuseQuery(ctx context.Context, e *wire.Error) error {
	s.srv.metrics.errors.WithLabelValues(e.Code).Inc()
	s.mu.Lock()
	if s.sc == nil && (s.txStatus == 'I' || s.lazyFailed) {
		s.push(entry{synth: wire.AppendError(nil, e)})
		s.push(entry{synth: readyForQuery(s.txStatus)})
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	s.want = target{}
	if !s.attachLocked(ctx, true) {
		return s.attachErr
	}
	defer s.mu.Unlock()
	s.unnamed = s.unnamed[:0]
	s.st.unnamedOwner = nil
	s.push(entry{kind: 'Q', start: time.Now()})
	s.sbuf = append(s.sbuf, queryMsg(raiseSQL(e))...)
	return nil
}

// refuseExtended answers an extended-protocol message with e and skips to
// the Sync. With a backend bound (a transaction, or earlier statements of
// the batch that ran in its implicit transaction), the backend raises e
// itself, so that what ran fails with it as it would on PostgreSQL.
func (s *session) refuseExtended(ctx context.Context, e *wire.Error) error {
	return s.refuseExtendedAfter(ctx, e, nil)
}

// refuseExtendedAfter is refuseExtended that first sends check, a Parse of
// the unnamed statement (answered only if it fails), on a backend: e is
// raised only if check passes.
func (s *session) refuseExtendedAfter(ctx context.Context, e *wire.Error, check []byte) error {
	s.mu.Lock()
	free := s.sc == nil && (s.txStatus == 'I' || s.lazyFailed)
	s.mu.Unlock()
	if free && check == nil {
		return s.raiseFree(e)
	}
	s.srv.metrics.errors.WithLabelValues(e.Code).Inc()
	s.skipUntilSync = true
	if !s.attachLocked(ctx, false) {
		return s.attachErr
	}
	defer s.mu.Unlock()
	s.unsynced = true
	if s.srvErr {
		return nil // the backend already failed the batch and skips to Sync
	}
	s.st.unnamedOwner = nil // the raise goes through the unnamed statement
	if check != nil {
		s.push(entry{kind: 'P', swallow: true}) // its error reaches the client
		s.sbuf = append(s.sbuf, check...)
	}
	s.push(entry{kind: 'P', swallow: true})
	s.push(entry{kind: 'B', swallow: true})
	s.push(entry{kind: 'E', swallow: true})
	s.sbuf, _ = (&pgproto3.Parse{Query: raiseSQL(e)}).Encode(s.sbuf)
	s.sbuf, _ = (&pgproto3.Bind{}).Encode(s.sbuf)
	s.sbuf, _ = (&pgproto3.Execute{}).Encode(s.sbuf)
	return nil
}

// bindParams reads a Bind's parameter formats and values (rest is the Bind
// body after the portal and statement names) into p, reusing its slices;
// the values point into rest.
func bindParams(rest []byte, p *router.Params) bool {
	p.Formats, p.Values = p.Formats[:0], p.Values[:0]
	if len(rest) < 2 {
		return false
	}
	n := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) < 2*n+2 {
		return false
	}
	for i := 0; i < n; i++ {
		p.Formats = append(p.Formats, int16(binary.BigEndian.Uint16(rest[2*i:])))
	}
	rest = rest[2*n:]
	n = int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	for i := 0; i < n; i++ {
		if len(rest) < 4 {
			return false
		}
		l := int32(binary.BigEndian.Uint32(rest))
		rest = rest[4:]
		if l < 0 {
			p.Values = append(p.Values, nil)
			continue
		}
		if int(l) > len(rest) {
			return false
		}
		p.Values = append(p.Values, rest[:l:l])
		rest = rest[l:]
	}
	return true
}

// planBind plans a Bind (rest: its body after the portal and statement
// names) of a statement with text sql and parameter types types.
func (s *session) planBind(sql string, types []uint32, rest []byte) (router.Plan, bool) {
	if s.srv.owners() < 2 {
		return router.Plan{}, false
	}
	s.params.Types = types
	if !bindParams(rest, &s.params) {
		return router.Plan{Kind: router.Refuse, Err: &router.Error{Code: wire.CodeProtocolViolation, Message: "pgshard: malformed Bind message"}}, true
	}
	return s.plan(sql, &s.params)
}

// unnamedText returns the text and parameter types of the client's unnamed
// statement.
func (s *session) unnamedText() (string, []uint32) {
	if len(s.unnamed) < 5 {
		return "", nil
	}
	if s.unnamedSQLGen == s.unnamedGen && s.unnamedSQL != "" {
		return s.unnamedSQL, s.unnamedOIDs
	}
	var p pgproto3.Parse
	if p.Decode(s.unnamed[5:]) != nil {
		return "", nil
	}
	s.unnamedSQL, s.unnamedOIDs, s.unnamedSQLGen = p.Query, p.ParameterOIDs, s.unnamedGen
	return p.Query, p.ParameterOIDs
}

// groupShard finds the shard of an extended-protocol batch: that of its
// first Bind with a single-shard plan ("" when none has one). Binds that
// disagree are refused when they are handled (handleBind).
func (s *session) groupShard(group []byte) string {
	if s.srv.owners() < 2 {
		return ""
	}
	if _, single := s.singleGroup(group); single {
		if pl, ok := s.singlePlan(); ok && pl.Kind == router.Single {
			return pl.Shard
		}
		return ""
	}
	if s.grp.batchKnown {
		return s.grp.batchShard
	}
	shard := ""
	s.eachBind(group, nil, func(sql string, types []uint32, rest []byte) bool {
		if pl, ok := s.planBind(sql, types, rest); ok && pl.Kind == router.Single {
			shard = pl.Shard
			return false
		}
		return true
	})
	return shard
}

// eachBind walks an extended-protocol batch: onParse (if set) gets each
// Parse, onBind each Bind of a known statement (its text, its parameter
// types, the Bind after the portal and statement names). It stops when
// either returns false, and at a malformed Parse or Bind.
func (s *session) eachBind(group []byte, onParse func(p *pgproto3.Parse) bool, onBind func(sql string, types []uint32, rest []byte) bool) {
	var parsed map[string]*pgproto3.Parse
	for b := group; len(b) >= 5; {
		n := 1 + int(binary.BigEndian.Uint32(b[1:]))
		typ, body := b[0], b[5:n]
		b = b[n:]
		switch typ {
		case 'P':
			p := new(pgproto3.Parse)
			if p.Decode(body) != nil {
				return
			}
			if parsed == nil {
				parsed = map[string]*pgproto3.Parse{}
			}
			parsed[p.Name] = p
			if onParse != nil && !onParse(p) {
				return
			}
		case 'B':
			_, rest, ok := cstringBytes(body)
			stmt, rest, ok2 := cstring(rest)
			if !ok || !ok2 {
				return
			}
			if sql, types, known := s.stmtText(parsed, stmt); known && !onBind(sql, types, rest) {
				return
			}
		}
	}
}

// routeBind plans a Bind when several shards own the ring (stmt: the
// statement it binds; rest: the Bind after the names) and steers the
// attachment to its shard; done when it was refused.
func (s *session) routeBind(ctx context.Context, stmt []byte, rest []byte) (done bool, err error) {
	if s.srv.owners() < 2 || s.skipUntilSync || (s.grp.valid && s.grp.routed) {
		return false, nil
	}
	sql, types, known := s.stmtText(nil, string(stmt))
	if !known {
		return false, nil // useStatement raises 26000
	}
	pl, ok := s.planBind(sql, types, rest)
	if !ok {
		return false, nil
	}
	switch pl.Kind {
	case router.Refuse:
		return true, s.refuseExtended(ctx, planError(pl.Err))
	case router.Single:
		if s.txFailed() {
			return false, nil // the transaction's home answers 25P02
		}
		if bound, why := s.shardFor(ctx, pl.Shard); bound != "" {
			return true, s.refuseExtended(ctx, crossShard(bound, pl.Shard, why))
		}
		s.mu.Lock()
		if s.sc == nil {
			s.want.shard = pl.Shard
		}
		s.mu.Unlock()
	case router.AnyShard, router.Utility:
	default:
		if s.tempOnly(sql) {
			return false, nil // the session's temporary tables: on its own backend
		}
		why := s.notSpreadable(router.Effects{Statements: 1})
		if why == "" {
			why = "in this extended-protocol batch (send it as a batch of its own, up to its Sync)"
		}
		return true, s.refuseExtended(ctx, wire.Errorf(wire.CodeFeatureNotSupported,
			"pgshard: this statement runs on several shards (%s plan), which is not supported %s", pl.Kind, why))
	}
	return false, nil
}

// shardFor checks that the session may run a statement on shard (""
// means any). It returns "" when it may, else the shard the session is
// bound to and why. A transaction that pgshard opened lazily on another
// shard and that ran nothing there yet (only statements were prepared or
// described) moves: it is rolled back there and opened again with the
// statement.
func (s *session) shardFor(ctx context.Context, shard string) (bound, why string) {
	if shard == "" {
		return "", ""
	}
	s.mu.Lock()
	bound, why = s.boundShard()
	movable := bound != "" && bound != shard && s.txnFresh && s.txStatus == 'T' && s.q.len() == 0 &&
		!s.unsynced && !s.pinned && s.cancelling == 0 && s.mode == config.PoolTransaction && len(s.sbuf) == 0
	sc := s.sc
	s.mu.Unlock()
	if bound == shard || !movable {
		if bound == shard {
			return "", ""
		}
		return bound, why
	}
	done := make(chan error, 1)
	s.mu.Lock()
	s.push(entry{kind: 'x', swallow: true, done: done})
	begin := s.txnBegin
	s.mu.Unlock()
	if sc.Write(queryMsg("ROLLBACK")) != nil {
		return bound, why // the reader reports the loss
	}
	select {
	case err := <-done:
		if err != nil {
			return bound, why
		}
	case <-ctx.Done():
		return bound, why
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sc == sc && s.q.len() == 0 && s.txStatus == 'I' {
		s.detach()
		sc.Pool().Release(sc)
	}
	if s.sc != nil {
		return bound, why
	}
	s.lazyBegin, s.txStatus, s.txnFresh = begin, 'T', false
	return "", ""
}

// newBatch reports whether the next extended-protocol message starts a
// batch that is routed as a whole (handleGroup): the session holds no
// backend, or holds one only for a transaction pgshard opened lazily that
// ran nothing yet (which may still move to the batch's shard).
func (s *session) newBatch() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sc == nil || (s.txnFresh && !s.unsynced && s.q.len() == 0)
}

// notSpreadable says why a statement spanning several shards cannot run
// now ("" when it can): spread statements run outside transactions, on a
// session that holds no backend, one statement at a time.
func (s *session) notSpreadable(fx router.Effects) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case fx.Statements > 1:
		return "in a Query string with several statements"
	case (s.txStatus != 'I' || s.lazyBegin != "") && s.tx.savepoints:
		return "in a transaction with savepoints (ROLLBACK TO SAVEPOINT would not undo the other shards)"
	case s.txStatus != 'I' || s.lazyBegin != "":
		return "inside a transaction block"
	case s.pinned || s.mode != config.PoolTransaction:
		return "on a session that keeps its backend (pinned or session pooling)"
	case s.sc != nil || s.q.len() > 0:
		return "while an earlier statement is outstanding"
	}
	return ""
}

// groupSpread runs an extended-protocol batch whose statement spans
// several shards: [Parse] Bind [Describe portal] Execute Sync, with the
// session idle. It reports false, having done nothing, for any other
// batch (its Binds are then routed one by one: handleBind refuses what
// spans shards).
func (s *session) groupSpread(ctx context.Context, group []byte) (bool, error) {
	one := s.srv.owners() < 2
	if one && !parsesTableDDL(group) {
		return false, nil
	}
	g, ok := s.singleGroup(group)
	if !ok {
		return false, nil
	}
	parse, describe, bd, p, sql, types := g.parse, g.describe, g.bd, g.p, g.sql, g.types
	x := &extReq{types: types, results: bd.ResultFormatCodes, describe: describe, parse: parse != nil,
		params: router.Params{Values: bd.Parameters, Formats: bd.ParameterFormatCodes, Types: types}}
	var pl router.Plan
	if one {
		// One shard owns the ring: CREATE TABLE still registers its
		// tables, as a simple Query's does (routeSimple).
		if !s.createsTables(sql) {
			return false, nil
		}
		pl = router.Plan{Kind: router.AllShards}
	} else if pl, ok = s.singlePlan(); !ok {
		return false, nil
	}
	switch pl.Kind {
	case router.Multi, router.Scatter, router.AllShards:
	default:
		return false, nil
	}
	fx := router.Inspect(sql)
	inTxn := s.spreadableInTxn(&pl, fx)
	if !inTxn && s.notSpreadable(fx) != "" {
		return false, nil
	}
	if parse != nil {
		// The statement is the client's from now on, as a Parse makes it.
		if p.Name == "" {
			s.newUnnamed(parse)
		} else {
			s.mu.Lock()
			_, exists := s.stmts[p.Name]
			s.mu.Unlock()
			if exists {
				return false, nil // the normal path raises 42P05
			}
			def := s.srv.stmts.intern(p.Query, p.ParameterOIDs, s.classify)
			s.mu.Lock()
			s.stmts[p.Name] = def
			s.mu.Unlock()
			x.def = def
		}
	} else if bd.PreparedStatement != "" {
		x.def, _ = s.lookupStmt(bd.PreparedStatement)
	}
	if inTxn {
		return true, s.spreadInTxn(ctx, &pl, sql, x)
	}
	if fx.Schema {
		s.srv.stmts.bump()
	}
	err := s.runSpread(ctx, &pl, sql, x)
	if fx.Schema {
		s.srv.stmts.bump()
	}
	return true, err
}

// parsesTableDDL reports, cheaply, whether an extended-protocol batch
// parses a statement that begins with CREATE or DROP (a table's, maybe).
func parsesTableDDL(group []byte) bool {
	for b := group; len(b) >= 5; {
		n := 1 + int(binary.BigEndian.Uint32(b[1:]))
		if n > len(b) {
			return false
		}
		if b[0] == 'P' {
			_, rest, ok := cstringBytes(b[5:n])
			if !ok {
				return false
			}
			q, _, ok := cstringBytes(rest)
			if !ok || len(q) == 0 {
				return false
			}
			w := leadingWord(unsafe.String(&q[0], len(q)))
			return strings.EqualFold(w, "create") || strings.EqualFold(w, "drop")
		}
		b = b[n:]
	}
	return false
}

// oneStmtGroup is an extended-protocol batch of one statement:
// [Parse] Bind [Describe portal] Execute Sync, to the unnamed portal.
type oneStmtGroup struct {
	parse    []byte // the Parse message, if any
	describe bool
	p        pgproto3.Parse
	bd       pgproto3.Bind
	sql      string
	types    []uint32
}

// singleGroup reads a batch of one statement; ok is false for any other
// batch, or one whose statement is unknown.
func (s *session) singleGroup(group []byte) (oneStmtGroup, bool) {
	if !s.grp.valid {
		g, ok := s.decodeSingleGroup(group)
		*s.grp = groupCache{valid: true, g: g, ok: ok}
	}
	return s.grp.g, s.grp.ok
}

// groupCache keeps what handleGroup learned of the batch at hand: it is
// decoded and planned once, however many routing steps ask.
type groupCache struct {
	valid   bool
	g       oneStmtGroup
	ok      bool // a batch of one statement
	planned bool
	pl      router.Plan
	plOK    bool // several shards own the ring: pl is a plan
	routed  bool // handleGroup routed its Bind: handleBind need not plan it again
	// batchKnown: a batch of several statements, every Bind planned
	// (groupAcrossShards) and all on batchShard ("" for any).
	batchKnown bool
	batchShard string
}

// singlePlan plans the batch of one statement at hand (see singleGroup).
func (s *session) singlePlan() (router.Plan, bool) {
	if !s.grp.planned {
		s.grp.planned = true
		g := &s.grp.g
		params := router.Params{Values: g.bd.Parameters, Formats: g.bd.ParameterFormatCodes, Types: g.types}
		s.grp.pl, s.grp.plOK = s.plan(g.sql, &params)
	}
	return s.grp.pl, s.grp.plOK
}

// decodeSingleGroup reads a batch of one statement (see singleGroup).
func (s *session) decodeSingleGroup(group []byte) (g oneStmtGroup, ok bool) {
	var bind []byte
	execs := 0
	for b := group; len(b) >= 5; {
		n := 1 + int(binary.BigEndian.Uint32(b[1:]))
		typ, msg := b[0], b[:n]
		b = b[n:]
		switch {
		case typ == 'P' && g.parse == nil && bind == nil:
			g.parse = msg
		case typ == 'B' && bind == nil:
			bind = msg
		case typ == 'D' && bind != nil && len(msg) > 5 && msg[5] == 'P':
			g.describe = true
		case typ == 'E':
			execs++
		case typ == 'S' && len(b) == 0:
		default:
			return g, false
		}
	}
	if bind == nil || execs != 1 {
		return g, false
	}
	if g.bd.Decode(bind[5:]) != nil || g.bd.DestinationPortal != "" {
		return g, false
	}
	if g.parse != nil {
		if g.p.Decode(g.parse[5:]) != nil || g.p.Name != g.bd.PreparedStatement {
			return g, false
		}
		g.sql, g.types = g.p.Query, g.p.ParameterOIDs
	} else if g.bd.PreparedStatement == "" {
		g.sql, g.types = s.unnamedText()
	} else if d, ok := s.lookupStmt(g.bd.PreparedStatement); ok {
		g.sql, g.types = d.sql, d.types
		if inf := d.inferred.Load(); inf != nil {
			g.types = *inf
		}
	} else {
		return g, false
	}
	if g.parse == nil && g.bd.PreparedStatement == "" {
		s.mu.Lock()
		if len(s.unnamedTypes) > 0 {
			g.types = s.unnamedTypes
		}
		s.mu.Unlock()
	}
	return g, g.sql != ""
}

// stmtText returns the text and parameter types of the statement a Bind
// or Describe names: one parsed earlier in the same batch (parsed), the
// client's unnamed one, or one of its named ones; known is false when
// there is none.
func (s *session) stmtText(parsed map[string]*pgproto3.Parse, name string) (sql string, types []uint32, known bool) {
	if p := parsed[name]; p != nil {
		return p.Query, p.ParameterOIDs, true
	}
	if name == "" {
		sql, types = s.unnamedText()
		return sql, types, sql != ""
	}
	d, ok := s.lookupStmt(name)
	if !ok {
		return "", nil, false
	}
	return d.sql, d.types, true
}

// newUnnamed records the client's Parse of the unnamed statement.
func (s *session) newUnnamed(parse []byte) {
	s.unnamed = append(s.unnamed[:0], parse...)
	s.mu.Lock()
	s.unnamedGen++
	s.unnamedTypes = nil
	s.mu.Unlock()
}

// createsTables reports whether sql creates a table the shard map should
// know, or drops one it knows (with one shard on the ring; with several,
// every CREATE or DROP TABLE is a spread statement anyway).
func (s *session) createsTables(sql string) bool {
	if w := firstWord(sql); (w != "create" && w != "drop") || s.srv.tableRegistrar() == nil {
		return false
	}
	rs := s.srv.routing.Load()
	if rs == nil || rs.owners != 1 {
		return false
	}
	ddl, err := router.AnalyzeTableDDL(sql, rs.catalog)
	if err != nil {
		return true // refused by runSpread, as with several shards
	}
	for _, d := range ddl {
		if d.Op == router.DDLCreateTable && !d.Temp {
			return true
		}
		for _, name := range d.Dropped {
			if rs.catalog[name].Kind != router.TableUnknown {
				return true
			}
		}
	}
	return false
}

// noteTemps records, with several shards on the ring, the temporary
// relations sql creates on the attached backend (a session that creates
// one is pinned to that backend). Called with s.mu held.
func (s *session) noteTemps(sql string, fx router.Effects) {
	if !fx.Pin || !strings.HasPrefix(fx.PinReason, "temporary") || s.st == nil || s.srv.owners() < 2 {
		return
	}
	rels, _ := router.Relations(sql)
	for _, r := range rels {
		if r.Temp || r.Schema == "pg_temp" {
			if s.st.temps == nil {
				s.st.temps = map[string]bool{}
			}
			s.st.temps[r.Name] = true
		}
	}
}

// tempOnly reports whether every relation sql names is a temporary one
// of the session's pinned backend: such a statement (a write, DDL) runs
// there alone, where the router, which knows only the shard map's tables,
// would spread it over every shard. An unqualified name is the session's
// temporary relation when one of that name was created (pg_temp comes
// first in PostgreSQL's search path).
func (s *session) tempOnly(sql string) bool {
	s.mu.Lock()
	st, pinned := s.st, s.pinned && s.sc != nil
	s.mu.Unlock()
	if !pinned || st == nil || len(st.temps) == 0 {
		return false
	}
	rels, ok := router.Relations(sql)
	if !ok || len(rels) == 0 {
		return false
	}
	for _, r := range rels {
		if !r.Temp && r.Schema != "pg_temp" && (r.Schema != "" || !st.temps[r.Name]) {
			return false
		}
	}
	return true
}
