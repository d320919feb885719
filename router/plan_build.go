package router

import (
	"fmt"
	"slices"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/pgshard/pgshard/shardmap"
)

// builder analyses one parsed statement into a template.
type builder struct {
	p      *Planner
	sql    string
	sc     *planScan
	t      *tmpl
	occs   []*occ
	parent []int
	err    *Error // refuse always
	multi  *Error // refuse when spanning shards
	// cacheable is cleared when a key value was taken from the parse tree
	// rather than from a literal the fast path can read.
	cacheable bool
	// negated counts the NOTs around the expression being walked (a
	// semi-join under NOT is no semi-join: see semiJoin).
	negated int
}

// occ is one occurrence of a table in the statement.
type occ struct {
	id    int
	name  string // alias or relation name: what columns are qualified by
	table string // for messages
	info  TableInfo
	depth int
	keys  keySet
}

type scope struct {
	parent *scope
	depth  int
	occs   []*occ
	ctes   map[string]bool
}

func (s *scope) isCTE(name string) bool {
	for x := s; x != nil; x = x.parent {
		if x.ctes[name] {
			return true
		}
	}
	return false
}

func (b *builder) refuse(format string, a ...any) {
	if b.err == nil {
		b.err = refuse(fmt.Sprintf(format, a...))
	}
}

func (b *builder) multiRefuse(format string, a ...any) {
	if b.multi == nil {
		b.multi = refuse(fmt.Sprintf(format, a...))
	}
}

func (b *builder) find(i int) int {
	for b.parent[i] != i {
		b.parent[i] = b.parent[b.parent[i]]
		i = b.parent[i]
	}
	return i
}

func (b *builder) link(x, y *occ) {
	if x.info.KeyType != y.info.KeyType {
		return // different key types are never co-located
	}
	rx, ry := b.find(x.id), b.find(y.id)
	if rx != ry {
		b.parent[rx] = ry
	}
}

// build parses sql and analyses it.
func (p *Planner) build(sql string, sc *planScan) *tmpl {
	t := p.buildAll(sql, sc)
	if t.global && t.err == nil && (len(t.groups) > 0 || t.insert != nil || t.kind == AllShards) {
		t.kind, t.err = Refuse, refuse("LISTEN, UNLISTEN, NOTIFY, pg_notify() and advisory locks run on one shard for every client (so that notifications reach their listeners and locks exclude each other): send them apart from statements on sharded tables and writes to reference tables")
	}
	return t
}

// buildAll is build before the check of LISTEN/NOTIFY against the rest.
func (p *Planner) buildAll(sql string, sc *planScan) *tmpl {
	t := &tmpl{nlits: sc.n, cacheable: true}
	tree, err := parse(sql)
	if err != nil || len(tree.Stmts) == 0 {
		// The backend reports the syntax error; any shard will do.
		t.kind, t.read = AnyShard, false
		return t
	}
	// The Classifier's verdict, from this parse (as Classifier.Explain).
	read := true
	for _, raw := range tree.Stmts {
		if ok, _ := p.cls.isRead(raw.Stmt); !ok {
			read = false
			break
		}
	}
	var parts []*tmpl
	for _, raw := range tree.Stmts {
		b := &builder{p: p, sql: sql, sc: sc, cacheable: true}
		st := &tmpl{nlits: sc.n, read: read}
		b.t = st
		b.stmt(raw.Stmt)
		b.finish()
		if !b.cacheable {
			t.cacheable = false
		}
		t.global = t.global || st.global
		if st.kind != Utility {
			parts = append(parts, st)
		}
	}
	switch len(parts) {
	case 0:
		t.kind, t.read = Utility, read
		return t
	case 1:
		parts[0].cacheable = t.cacheable
		parts[0].global = t.global
		return parts[0]
	}
	// Several statements in one text: they must all run on one shard (any
	// one, when none reads a sharded table).
	t.read = read
	t.crossErr = refuse("several statements in one query string that do not all run on one shard: send them separately")
	for _, st := range parts {
		if st.kind == AnyShard && st.err == nil {
			continue // no sharded table: it runs wherever the others do
		}
		if st.err != nil || st.kind != Refuse || st.insert != nil || st.keyUpdate != nil {
			if st.err != nil && st.kind == Refuse {
				t.err = st.err
			} else {
				t.err = t.crossErr
			}
			return t
		}
		for _, g := range st.groups {
			if g.keys.all {
				t.err = t.crossErr
				return t
			}
			t.groups = append(t.groups, g)
		}
	}
	if len(t.groups) == 0 {
		t.kind = AnyShard
	}
	return t
}

// finish turns occurrences into groups.
func (b *builder) finish() {
	t := b.t
	if b.err != nil {
		t.kind, t.err = Refuse, b.err
		return
	}
	if t.kind != Refuse || t.insert != nil {
		return
	}
	type class struct {
		depth int
		g     group
	}
	classes := map[int]*class{}
	var order []int
	for _, o := range b.occs {
		if o.info.Kind != TableSharded {
			continue
		}
		r := b.find(o.id)
		c := classes[r]
		if c == nil {
			c = &class{depth: o.depth, g: group{ktype: o.info.KeyType, keys: o.keys}}
			classes[r] = c
			order = append(order, r)
		} else if o.depth < c.depth {
			c.depth, c.g.keys = o.depth, o.keys
		} else if o.depth == c.depth {
			c.g.keys = narrower(c.g.keys, o.keys)
		}
		c.g.names = append(c.g.names, o.table)
	}
	if t.refWrite && len(order) > 0 {
		t.kind, t.err = Refuse, refuse(fmt.Sprintf("write to a reference table that reads sharded table %s", classes[order[0]].g.names[0]))
		return
	}
	var names []string
	for _, r := range order {
		c := classes[r]
		if c.depth > 0 && c.g.keys.all {
			t.kind, t.err = Refuse, refuse(fmt.Sprintf("subquery on sharded table %s that is not pinned to one shard key value (nor joined on the shard key to the outer query)", c.g.names[0]))
			return
		}
		t.groups = append(t.groups, c.g)
		names = append(names, c.g.names...)
	}
	if len(t.groups) > 1 {
		t.crossErr = refuse(fmt.Sprintf("cross-shard join or subquery: sharded tables %s are neither joined on the shard key nor pinned to key values on one shard", strings.Join(names, ", ")))
	} else if len(t.groups) == 1 && len(b.occs) > 0 && t.groups[0].keys.all {
		// One group at depth 0: fine. A lone pinned subquery whose outer
		// query reads only reference tables must stay on one shard.
	}
	for _, r := range order {
		if c := classes[r]; c.depth > 0 && len(t.groups) == 1 {
			t.crossErr = refuse(fmt.Sprintf("subquery on sharded table %s spans several shards", c.g.names[0]))
			t.groups = append(t.groups, group{ktype: c.g.ktype, keys: c.g.keys}) // forces the one-shard check
		}
	}
	if t.refWrite {
		if len(t.groups) > 0 {
			t.kind, t.err = Refuse, refuse(fmt.Sprintf("write to a reference table that reads sharded table %s", names[0]))
			return
		}
		t.kind = AllShards
		return
	}
	if len(t.groups) == 0 {
		t.kind = AnyShard
		return
	}
	t.multiErr = b.multi
}

// stmt analyses one top-level statement.
func (b *builder) stmt(n *pg_query.Node) {
	t := b.t
	switch s := n.GetNode().(type) {
	case *pg_query.Node_SelectStmt:
		sel := s.SelectStmt
		if sel.IntoClause != nil {
			if isTemp(sel.IntoClause.GetRel()) {
				b.tempFrom(sel)
				return
			}
			b.selectStmt(sel, nil, 0)
			b.t.refWrite = true // creates a table on every shard; refused if it reads sharded data
			return
		}
		b.selectStmt(sel, nil, 0)
		b.mergeTop(sel)
	case *pg_query.Node_InsertStmt:
		b.insert(s.InsertStmt)
	case *pg_query.Node_UpdateStmt:
		u := s.UpdateStmt
		sc := &scope{}
		b.with(u.WithClause, sc)
		target := b.rangeVar(u.Relation, sc)
		for _, f := range u.FromClause {
			b.fromItem(f, sc, nil)
		}
		b.where(u.WhereClause, sc)
		for _, rt := range u.TargetList {
			r := rt.GetResTarget()
			if r == nil {
				continue
			}
			b.walk(r.Val, sc)
			if target.info.Kind == TableSharded && r.Name == target.info.KeyColumn {
				if len(r.Indirection) > 0 || r.Val.GetMultiAssignRef() != nil {
					b.refuse("UPDATE that sets the shard key column %s of %s with a subscript or row assignment", r.Name, target.table)
					continue
				}
				v, ok := b.value(r.Val, target.info.KeyType)
				if !ok || v.kind == srcParamArr {
					b.refuse("UPDATE that sets the shard key column %s of %s to an expression: only a constant or parameter can be checked to stay on its shard", r.Name, target.table)
					continue
				}
				t.keyUpdate = &v
			}
		}
		b.walkList(u.ReturningList, sc)
		b.writeTarget(target)
		if target.info.Kind == TableReference {
			for _, rt := range u.TargetList {
				b.sameEverywhere(target.table, rt)
			}
			b.sameEverywhere(target.table, u.WhereClause)
		}
	case *pg_query.Node_DeleteStmt:
		d := s.DeleteStmt
		sc := &scope{}
		b.with(d.WithClause, sc)
		target := b.rangeVar(d.Relation, sc)
		for _, f := range d.UsingClause {
			b.fromItem(f, sc, nil)
		}
		b.where(d.WhereClause, sc)
		b.walkList(d.ReturningList, sc)
		b.writeTarget(target)
		if target.info.Kind == TableReference {
			b.sameEverywhere(target.table, d.WhereClause)
		}
	case *pg_query.Node_ExplainStmt:
		b.stmt(s.ExplainStmt.Query)
		t.merge, t.rewrite = nil, false
		t.limit, t.offset = valSrc{}, valSrc{}
		b.multi = refuse("EXPLAIN of a statement that spans several shards")
		if t.insert != nil {
			b.refuse("EXPLAIN of INSERT into a sharded table")
		}
	case *pg_query.Node_DeclareCursorStmt:
		b.stmt(s.DeclareCursorStmt.Query)
		t.merge, t.rewrite = nil, false
		b.multi = refuse("cursor over a query that spans several shards")
	case *pg_query.Node_CopyStmt:
		b.copyStmt(s.CopyStmt)
	case *pg_query.Node_DoStmt:
		b.refuse("DO block: pgshard cannot tell which shards it touches")
	case *pg_query.Node_CallStmt:
		b.refuse("CALL of a procedure: pgshard cannot tell which shards it touches")
	case *pg_query.Node_MergeStmt:
		b.refuse("MERGE is not supported by pgshard")
	case *pg_query.Node_CreateStmt:
		if isTemp(s.CreateStmt.GetRelation()) {
			t.kind = AnyShard // the session's own: it pins the session where it runs
			return
		}
		t.kind = AllShards
	case *pg_query.Node_CreateSeqStmt:
		if isTemp(s.CreateSeqStmt.GetSequence()) {
			t.kind = AnyShard
			return
		}
		t.kind = AllShards
	case *pg_query.Node_ViewStmt:
		b.viewOver(s.ViewStmt)
		if isTemp(s.ViewStmt.GetView()) {
			t.kind = AnyShard
			return
		}
		t.kind = AllShards
	case *pg_query.Node_CreateSchemaStmt:
		for _, e := range s.CreateSchemaStmt.SchemaElts {
			if v := e.GetViewStmt(); v != nil {
				b.viewOver(v)
			}
		}
		t.kind = AllShards
	case *pg_query.Node_CreateTableAsStmt:
		if q := s.CreateTableAsStmt.Query; q != nil && isTemp(s.CreateTableAsStmt.GetInto().GetRel()) {
			if sel := q.GetSelectStmt(); sel != nil {
				b.tempFrom(sel)
				return
			}
		}
		if q := s.CreateTableAsStmt.Query; q != nil {
			if sel := q.GetSelectStmt(); sel != nil {
				b.selectStmt(sel, nil, 0)
				t.refWrite = true
				return
			}
		}
		t.kind = AllShards
	case *pg_query.Node_PrepareStmt:
		b.prepareStmt(s.PrepareStmt)
	case *pg_query.Node_ListenStmt, *pg_query.Node_UnlistenStmt, *pg_query.Node_NotifyStmt:
		t.kind, t.global = Utility, true
	case *pg_query.Node_TransactionStmt, *pg_query.Node_VariableSetStmt, *pg_query.Node_VariableShowStmt,
		*pg_query.Node_ExecuteStmt, *pg_query.Node_DeallocateStmt,
		*pg_query.Node_FetchStmt, *pg_query.Node_ClosePortalStmt, *pg_query.Node_DiscardStmt,
		*pg_query.Node_LoadStmt, *pg_query.Node_ConstraintsSetStmt:
		t.kind = Utility
	default:
		// DDL, TRUNCATE, GRANT, COMMENT, VACUUM, LOCK, ...: every shard.
		t.kind = AllShards
	}
}

// prepareStmt plans SQL PREPARE by the statement it prepares. The
// prepared statement exists only on the backend the PREPARE runs on (the
// session pins itself there) and every EXECUTE runs there, so the
// statement must be routable now, to one shard: one whose shard key is a
// parameter, that spans shards or writes to every shard is refused.
func (b *builder) prepareStmt(ps *pg_query.PrepareStmt) {
	b.stmt(ps.Query)
	t := b.t
	b.multi = refuse("SQL PREPARE of a statement that spans several shards: its EXECUTE runs on one backend")
	if t.refWrite || t.kind == AllShards {
		b.refuse("SQL PREPARE of a write to a reference table (or one pgshard does not know): its EXECUTE would run on one shard only")
		return
	}
	param := func(v valSrc) bool { return v.kind == srcParam || v.kind == srcParamArr }
	keyed := slices.ContainsFunc(t.insert, param) || t.keyUpdate != nil && param(*t.keyUpdate)
	for _, o := range b.occs { // (finish makes them groups)
		keyed = keyed || o.info.Kind == TableSharded && slices.ContainsFunc(o.keys.vals, param)
	}
	if keyed {
		b.refuse("SQL PREPARE of a statement whose shard key is a parameter: its EXECUTE runs on the one backend that prepared it, whatever the key; prepare it through the extended query protocol (as drivers do)")
	}
}

// viewOver refuses a view that reads a sharded table. pgshard routes a
// statement by the tables it names; a view hides its tables, so a query
// on the view would be routed as one on a reference table and read one
// shard's rows (with any number of shards: a shard added later would
// split them). Views over reference tables are fine: every shard has
// the same rows.
func (b *builder) viewOver(v *pg_query.ViewStmt) {
	ctes := map[string]bool{}
	anyNode(v.Query, func(m protoreflect.Message) (bool, bool) {
		if c, ok := m.Interface().(*pg_query.CommonTableExpr); ok {
			ctes[c.Ctename] = true
		}
		return false, true
	})
	var table string
	anyNode(v.Query, func(m protoreflect.Message) (bool, bool) {
		rv, ok := m.Interface().(*pg_query.RangeVar)
		if !ok || rv.Schemaname == "" && ctes[rv.Relname] {
			return false, true
		}
		if b.lookup(rv).Kind == TableSharded {
			table = rv.Relname
			return true, false
		}
		return false, true
	})
	if table != "" {
		b.refuse("a view over sharded table %s: pgshard routes a statement by the tables it names and cannot see through a view, so a query on it would read one shard's rows; query the table itself (views over reference tables are fine)", table)
	}
}

// isTemp reports whether rv names a temporary relation: TEMP, or created
// in pg_temp. It lives in the session's backend only.
func isTemp(rv *pg_query.RangeVar) bool {
	return rv.GetRelpersistence() == "t" || rv.GetSchemaname() == "pg_temp"
}

// tempFrom plans CREATE TEMP TABLE … AS / SELECT … INTO TEMP: the table is
// created where the query runs (the session pins itself there), so the
// query must run on one shard.
func (b *builder) tempFrom(sel *pg_query.SelectStmt) {
	b.selectStmt(sel, nil, 0)
	b.multi = refuse("a temporary table made from a query that spans several shards")
}

// writeTarget records the kind of an UPDATE or DELETE target.
func (b *builder) writeTarget(target *occ) {
	if target.info.Kind != TableSharded {
		b.t.refWrite = true
	}
}

// sameEverywhere refuses a write to reference table name whose values
// (the expressions ns) each shard would compute differently: a sequence,
// a random value, the clock.
func (b *builder) sameEverywhere(name string, ns ...*pg_query.Node) {
	for _, n := range ns {
		if f := VolatileCall(n); f != "" {
			b.refuse("write to reference table %s with %s: each shard would compute its own value, so the table's copies would differ; give the value explicitly", name, f)
			return
		}
	}
}

func (b *builder) lookup(rv *pg_query.RangeVar) TableInfo {
	if rv == nil || b.p.cat == nil {
		return TableInfo{}
	}
	return b.p.cat.Table(rv.Schemaname, rv.Relname)
}

// rangeVar adds a table occurrence to sc.
func (b *builder) rangeVar(rv *pg_query.RangeVar, sc *scope) *occ {
	o := &occ{id: len(b.occs), name: rv.Relname, table: rv.Relname, depth: sc.depth, keys: unconstrained}
	if rv.Schemaname != "" {
		o.table = rv.Schemaname + "." + rv.Relname
	}
	if rv.Alias != nil && rv.Alias.Aliasname != "" {
		o.name = rv.Alias.Aliasname
	}
	if rv.Schemaname != "" || !sc.isCTE(rv.Relname) {
		o.info = b.lookup(rv)
	}
	b.occs = append(b.occs, o)
	b.parent = append(b.parent, o.id)
	sc.occs = append(sc.occs, o)
	return o
}

func (b *builder) with(w *pg_query.WithClause, sc *scope) {
	if w == nil {
		return
	}
	if sc.ctes == nil {
		sc.ctes = map[string]bool{}
	}
	if w.Recursive { // a recursive CTE's query names itself
		for _, c := range w.Ctes {
			if cte := c.GetCommonTableExpr(); cte != nil {
				sc.ctes[cte.Ctename] = true
			}
		}
	}
	for _, c := range w.Ctes {
		cte := c.GetCommonTableExpr()
		if cte == nil {
			continue
		}
		switch q := cte.Ctequery.GetNode().(type) {
		case *pg_query.Node_SelectStmt:
			b.selectStmt(q.SelectStmt, sc, sc.depth+1)
		default:
			b.refuse("data-modifying statement in WITH (%s)", cte.Ctename)
		}
		sc.ctes[cte.Ctename] = true
	}
}

// selectStmt analyses a SELECT in a new scope below parent.
func (b *builder) selectStmt(s *pg_query.SelectStmt, parent *scope, depth int) *scope {
	sc := &scope{parent: parent, depth: depth}
	b.with(s.WithClause, sc)
	if s.Op != pg_query.SetOperation_SETOP_NONE {
		b.multiRefuse("UNION/INTERSECT/EXCEPT across shards")
		b.selectStmt(s.Larg, sc, depth)
		b.selectStmt(s.Rarg, sc, depth)
		return sc
	}
	for _, l := range s.ValuesLists {
		b.walk(l, sc)
	}
	var inner []*pg_query.Node
	for _, f := range s.FromClause {
		b.fromItem(f, sc, &inner)
	}
	for _, q := range inner {
		b.where(q, sc)
	}
	b.where(s.WhereClause, sc)
	b.walkList(s.TargetList, sc)
	b.walkList(s.GroupClause, sc)
	b.walk(s.HavingClause, sc)
	b.walkList(s.SortClause, sc)
	b.walk(s.LimitCount, sc)
	b.walk(s.LimitOffset, sc)
	if len(s.WindowClause) > 0 {
		b.multiRefuse("window function across shards")
	}
	if len(s.LockingClause) > 0 {
		b.multiRefuse("SELECT … FOR UPDATE/SHARE across shards")
	}
	return sc
}

// fromItem adds a FROM item; inner collects the ON conditions of inner
// joins (they filter like WHERE).
func (b *builder) fromItem(n *pg_query.Node, sc *scope, inner *[]*pg_query.Node) {
	switch f := n.GetNode().(type) {
	case *pg_query.Node_RangeVar:
		b.rangeVar(f.RangeVar, sc)
	case *pg_query.Node_RangeTableSample:
		// t TABLESAMPLE m(args): the table is t; each shard samples its
		// own rows (one database's sample of the union).
		ts := f.RangeTableSample
		b.fromItem(ts.Relation, sc, inner)
		b.walkList(ts.Args, sc)
		b.walk(ts.Repeatable, sc)
	case *pg_query.Node_JoinExpr:
		j := f.JoinExpr
		before := len(sc.occs)
		b.fromItem(j.Larg, sc, inner)
		mid := len(sc.occs)
		b.fromItem(j.Rarg, sc, inner)
		for _, u := range j.UsingClause {
			col := u.GetString_().GetSval()
			var l, r *occ
			for _, o := range sc.occs[before:mid] {
				if o.info.Kind == TableSharded && o.info.KeyColumn == col {
					l = o
				}
			}
			for _, o := range sc.occs[mid:] {
				if o.info.Kind == TableSharded && o.info.KeyColumn == col {
					r = o
				}
			}
			if l != nil && r != nil {
				b.link(l, r)
			}
		}
		b.outerJoin(j.Jointype, sc.occs[before:mid], sc.occs[mid:])
		if j.Quals != nil {
			if j.Jointype == pg_query.JoinType_JOIN_INNER && inner != nil {
				*inner = append(*inner, j.Quals)
			} else {
				b.links(j.Quals, sc)
				b.walk(j.Quals, sc)
			}
		}
	case *pg_query.Node_RangeSubselect:
		if q := f.RangeSubselect.Subquery.GetSelectStmt(); q != nil {
			sub := b.selectStmt(q, sc, sc.depth+1)
			name := ""
			if f.RangeSubselect.Alias != nil {
				name = f.RangeSubselect.Alias.Aliasname
			}
			// A derived table is named by its alias; its columns are not
			// tracked (a key filter outside it does not pin it), unless it
			// keeps a sharded table's rows of a key together (derivedKey).
			o := &occ{id: len(b.occs), name: name, depth: sc.depth, keys: unconstrained}
			b.occs = append(b.occs, o)
			b.parent = append(b.parent, o.id)
			sc.occs = append(sc.occs, o)
			if inner, col := b.derivedKey(f.RangeSubselect, q, sub); inner != nil {
				o.info = TableInfo{Kind: TableSharded, KeyColumn: col, KeyType: inner.info.KeyType}
				o.table = inner.table
				o.keys = inner.keys // its rows are of the keys its query pins
				b.link(o, inner)
			}
		}
	default:
		b.walk(n, sc)
	}
}

// outerJoin refuses, across shards, an outer join whose preserved side
// has no sharded table while the other side has one: every shard would
// return the preserved rows (each with only its own matches).
func (b *builder) outerJoin(jt pg_query.JoinType, left, right []*occ) {
	sharded := func(os []*occ) string {
		for _, o := range os {
			if o.info.Kind == TableSharded {
				return o.table
			}
		}
		return ""
	}
	l, r := sharded(left), sharded(right)
	check := func(kept []*occ, keptSharded, other string) {
		if keptSharded == "" && other != "" && len(kept) > 0 {
			b.multiRefuse("outer join that keeps every row of %s (not sharded) against sharded table %s across shards", kept[0].table, other)
		}
	}
	switch jt {
	case pg_query.JoinType_JOIN_LEFT:
		check(left, l, r)
	case pg_query.JoinType_JOIN_RIGHT:
		check(right, r, l)
	case pg_query.JoinType_JOIN_FULL:
		check(left, l, r)
		check(right, r, l)
	}
}

// where applies a filter of scope sc: key equalities link tables, key
// predicates pin them, subqueries are analysed.
func (b *builder) where(e *pg_query.Node, sc *scope) {
	if e == nil {
		return
	}
	b.links(e, sc)
	for _, o := range sc.occs {
		if o.info.Kind == TableSharded {
			o.keys = narrower(o.keys, b.keysOf(e, o, sc))
		}
	}
	b.walk(e, sc)
}

// links unites tables whose key columns the top-level conjuncts of e equate.
func (b *builder) links(e *pg_query.Node, sc *scope) {
	if be := e.GetBoolExpr(); be != nil && be.Boolop == pg_query.BoolExprType_AND_EXPR {
		for _, a := range be.Args {
			b.links(a, sc)
		}
		return
	}
	ae := e.GetAExpr()
	if ae == nil || ae.Kind != pg_query.A_Expr_Kind_AEXPR_OP || opName(ae) != "=" {
		return
	}
	l, r := b.keyCol(ae.Lexpr, sc), b.keyCol(ae.Rexpr, sc)
	if l != nil && r != nil && l != r {
		b.link(l, r)
	}
}

func opName(ae *pg_query.A_Expr) string {
	if len(ae.Name) == 0 {
		return ""
	}
	return ae.Name[len(ae.Name)-1].GetString_().GetSval()
}

// keyCol returns the sharded table occurrence whose key column n names.
// A cast of the key column is not looked through: owner::int = 5 also
// matches '05', which hashes elsewhere.
func (b *builder) keyCol(n *pg_query.Node, sc *scope) *occ {
	cr := n.GetColumnRef()
	if cr == nil || len(cr.Fields) == 0 {
		return nil
	}
	var parts []string
	for _, f := range cr.Fields {
		s := f.GetString_()
		if s == nil {
			return nil
		}
		parts = append(parts, s.Sval)
	}
	col := parts[len(parts)-1]
	for x := sc; x != nil; x = x.parent {
		if len(parts) == 1 {
			var found *occ
			for _, o := range x.occs {
				if o.info.Kind == TableSharded && o.info.KeyColumn == col {
					if found != nil && b.find(found.id) != b.find(o.id) {
						// Ambiguous (PostgreSQL reports it), unless the
						// tables are joined USING the key, which merges
						// them into one column: any of them stands for it.
						return nil
					}
					if found == nil {
						found = o
					}
				}
			}
			// An unqualified name belongs to the innermost scope that has
			// it; only the catalog's key columns are known here, so a name
			// not found in this scope is not looked for outside (it may be
			// a column of a reference table here). Correlated references
			// count only when qualified.
			return found
		}
		q := parts[len(parts)-2]
		for _, o := range x.occs {
			if o.name == q {
				if o.info.Kind == TableSharded && o.info.KeyColumn == col {
					return o
				}
				return nil
			}
		}
	}
	return nil
}

// stripCast looks through casts of a value to the key types (without a
// type modifier: 'alice'::varchar(3) is 'ali'); it stops at any other.
func stripCast(n *pg_query.Node) *pg_query.Node {
	for {
		tc := n.GetTypeCast()
		if tc == nil || tc.TypeName == nil || len(tc.TypeName.Typmods) > 0 || len(tc.TypeName.Names) == 0 {
			return n
		}
		switch tc.TypeName.Names[len(tc.TypeName.Names)-1].GetString_().GetSval() {
		case "int2", "int4", "int8", "text", "varchar", "uuid":
		default:
			return n
		}
		n = tc.Arg
	}
}

// narrower returns the tighter of two constraints that both hold.
func narrower(a, b keySet) keySet {
	switch {
	case a.all:
		return b
	case b.all:
		return a
	case len(b.vals) < len(a.vals):
		return b
	}
	return a
}

// keysOf returns the constraint e places on o's key.
func (b *builder) keysOf(e *pg_query.Node, o *occ, sc *scope) keySet {
	switch x := e.GetNode().(type) {
	case *pg_query.Node_BoolExpr:
		switch x.BoolExpr.Boolop {
		case pg_query.BoolExprType_AND_EXPR:
			ks := unconstrained
			for _, a := range x.BoolExpr.Args {
				ks = narrower(ks, b.keysOf(a, o, sc))
			}
			return ks
		case pg_query.BoolExprType_OR_EXPR:
			var ks keySet
			for _, a := range x.BoolExpr.Args {
				k := b.keysOf(a, o, sc)
				if k.all {
					return unconstrained
				}
				ks.vals = append(ks.vals, k.vals...)
			}
			return ks
		}
	case *pg_query.Node_AExpr:
		ae := x.AExpr
		if opName(ae) != "=" {
			return unconstrained
		}
		kt := o.info.KeyType
		switch ae.Kind {
		case pg_query.A_Expr_Kind_AEXPR_OP:
			var other *pg_query.Node
			if b.keyCol(ae.Lexpr, sc) == o {
				other = ae.Rexpr
			} else if b.keyCol(ae.Rexpr, sc) == o {
				other = ae.Lexpr
			} else {
				return unconstrained
			}
			if v, ok := b.value(other, kt); ok && v.kind != srcParamArr {
				return keySet{vals: []valSrc{v}}
			}
		case pg_query.A_Expr_Kind_AEXPR_IN:
			if b.keyCol(ae.Lexpr, sc) != o {
				return unconstrained
			}
			return b.valueList(ae.Rexpr.GetList().GetItems(), kt)
		case pg_query.A_Expr_Kind_AEXPR_OP_ANY:
			if b.keyCol(ae.Lexpr, sc) != o {
				return unconstrained
			}
			r := stripCast(ae.Rexpr)
			if arr := r.GetAArrayExpr(); arr != nil {
				return b.valueList(arr.Elements, kt)
			}
			if pr := r.GetParamRef(); pr != nil {
				return keySet{vals: []valSrc{{kind: srcParamArr, idx: int(pr.Number) - 1}}}
			}
		}
	}
	return unconstrained
}

func (b *builder) valueList(items []*pg_query.Node, kt shardmap.KeyType) keySet {
	var ks keySet
	for _, it := range items {
		v, ok := b.value(it, kt)
		if !ok || v.kind == srcParamArr {
			return unconstrained
		}
		ks.vals = append(ks.vals, v)
	}
	if len(ks.vals) == 0 {
		return unconstrained
	}
	return ks
}

// value maps a constant or parameter to its source; ok is false for any
// other expression.
func (b *builder) value(n *pg_query.Node, kt shardmap.KeyType) (valSrc, bool) {
	n = stripCast(n)
	if pr := n.GetParamRef(); pr != nil {
		return valSrc{kind: srcParam, idx: int(pr.Number) - 1}, true
	}
	c := n.GetAConst()
	if c == nil {
		return valSrc{}, false
	}
	if c.Isnull {
		return valSrc{kind: srcNull}, true
	}
	// The value as PostgreSQL parsed it, hashed by the key column's type.
	var want int64
	switch v := c.Val.(type) {
	case *pg_query.A_Const_Ival:
		if kt == shardmap.KeyInt {
			want = shardmap.HashInt64(int64(v.Ival.Ival))
		} else {
			h, ok := hashText(kt, fmt.Sprint(v.Ival.Ival))
			if !ok {
				return valSrc{}, false
			}
			want = h
		}
	case *pg_query.A_Const_Sval:
		h, ok := hashText(kt, v.Sval.Sval)
		if !ok {
			return valSrc{}, false // an invalid key: the shards report it
		}
		want = h
	case *pg_query.A_Const_Fval:
		// A bigint out of int4 range parses as a float constant.
		h, ok := hashText(kt, v.Fval.Fval)
		if !ok {
			return valSrc{}, false // 5.5 = key: no integer key; scatter
		}
		want = h
	default:
		return valSrc{}, false
	}
	loc := int(c.Location)
	src := valSrc{kind: srcLit}
	idx, ok := b.sc.litIndex(loc)
	if !ok && loc >= 0 && loc < len(b.sql) && b.sql[loc] == '-' {
		j := loc + 1
		for j < len(b.sql) && isSpace(b.sql[j]) {
			j++
		}
		idx, ok = b.sc.litIndex(j)
		src.neg = true
	}
	if ok {
		src.idx = idx
		var got int64
		n := 0
		if resolve(b.sql, b.sc, nil, kt, src, func(h int64) { got = h; n++ }) && n == 1 && got == want {
			return src, true
		}
	}
	// The fast path cannot read this literal: keep its hash, and do not
	// cache the template (another text of this shape has another value).
	b.cacheable = false
	return valSrc{kind: srcHash, h: want}, true
}

// walk analyses subqueries and notes window functions anywhere below n.
func (b *builder) walk(n *pg_query.Node, sc *scope) {
	if n == nil {
		return
	}
	b.walkMsg(n.ProtoReflect(), sc)
}

// derivedKey returns the sharded table whose key column a derived table
// returns, and that column's name outside it, when each of the derived
// table's rows comes from one key's rows on one shard: a query on sharded
// tables co-located on the key, with no LIMIT, OFFSET, set operation,
// window function or DISTINCT ON, grouped (if at all) by the key. Each
// shard then computes its part of the derived table exactly, and the
// derived table is routed as a sharded table by that column (FROM (SELECT
// user_id, count(*) AS n FROM orders GROUP BY user_id) x: every shard, or
// x.user_id's shard). nil otherwise.
func (b *builder) derivedKey(rs *pg_query.RangeSubselect, q *pg_query.SelectStmt, sub *scope) (*occ, string) {
	if rs.Lateral || q.Op != pg_query.SetOperation_SETOP_NONE || q.LimitCount != nil || q.LimitOffset != nil || len(q.WindowClause) > 0 {
		return nil, ""
	}
	if len(q.DistinctClause) > 0 && q.DistinctClause[0].GetNode() != nil {
		return nil, "" // DISTINCT ON
	}
	var key *occ
	col := ""
	for i, t := range q.TargetList {
		rt := t.GetResTarget()
		if rt == nil || windowCall(rt.Val) {
			return nil, ""
		}
		if key != nil {
			continue
		}
		if o := b.keyCol(rt.Val, sub); o != nil && o.depth == sub.depth {
			key, col = o, rt.Name
			if col == "" {
				col = lastField(rt.Val)
			}
			if a := rs.Alias; a != nil && i < len(a.Colnames) {
				col = a.Colnames[i].GetString_().GetSval()
			}
		}
	}
	if key == nil {
		return nil, ""
	}
	aggregated := len(q.GroupClause) > 0 || q.HavingClause != nil
	for _, t := range q.TargetList {
		aggregated = aggregated || nestedAgg(t) != ""
	}
	if aggregated && !slices.ContainsFunc(q.GroupClause, func(g *pg_query.Node) bool {
		o := b.keyCol(g, sub)
		return o != nil && b.find(o.id) == b.find(key.id)
	}) {
		return nil, ""
	}
	return key, col
}

// semiJoin links the tables of key IN (SELECT key FROM …) as a join on
// the key links them: the rows of a key are on one shard, so each shard
// answers the IN for its own keys from its own rows. Only a plain IN (or
// = ANY) whose subquery returns a sharded table's key column of the same
// key type, with no LIMIT, OFFSET, set operation or window function (all
// of which would pick rows across shards); GROUP BY and DISTINCT keep a
// key's rows together. Not under NOT: NOT IN is false for every row once
// the subquery holds a NULL on any shard, which each shard could not see.
func (b *builder) semiJoin(l *pg_query.SubLink, q *pg_query.SelectStmt, sc, sub *scope) {
	if b.negated > 0 || l.SubLinkType != pg_query.SubLinkType_ANY_SUBLINK || len(l.OperName) > 1 ||
		len(l.OperName) == 1 && l.OperName[0].GetString_().GetSval() != "=" {
		return
	}
	if q.Op != pg_query.SetOperation_SETOP_NONE || q.LimitCount != nil || q.LimitOffset != nil || len(q.WindowClause) > 0 || len(q.TargetList) != 1 {
		return
	}
	target := q.TargetList[0].GetResTarget().GetVal()
	if windowCall(target) {
		return
	}
	outer, inner := b.keyCol(l.Testexpr, sc), b.keyCol(target, sub)
	if outer == nil || inner == nil || inner.depth != sc.depth+1 || outer.info.KeyType != inner.info.KeyType {
		return
	}
	b.link(outer, inner)
}

func (b *builder) walkList(ns []*pg_query.Node, sc *scope) {
	for _, n := range ns {
		b.walk(n, sc)
	}
}

func (b *builder) walkMsg(m protoreflect.Message, sc *scope) {
	switch v := m.Interface().(type) {
	case *pg_query.SubLink:
		if q := v.Subselect.GetSelectStmt(); q != nil {
			b.walk(v.Testexpr, sc)
			sub := b.selectStmt(q, sc, sc.depth+1)
			b.semiJoin(v, q, sc, sub)
			return
		}
	case *pg_query.BoolExpr:
		if v.Boolop == pg_query.BoolExprType_NOT_EXPR {
			b.negated++
			children(m, func(c protoreflect.Message) bool {
				b.walkMsg(c, sc)
				return true
			})
			b.negated--
			return
		}
	case *pg_query.FuncCall:
		if v.Over != nil {
			b.multiRefuse("window function %s() across shards", funcName(v))
		}
		if name := funcName(v); name == "pg_notify" || strings.HasPrefix(name, "pg_advisory_") || strings.HasPrefix(name, "pg_try_advisory_") {
			b.t.global = true
		}
	case *pg_query.SelectStmt:
		b.selectStmt(v, sc, sc.depth+1)
		return
	}
	children(m, func(c protoreflect.Message) bool {
		b.walkMsg(c, sc)
		return true
	})
}
