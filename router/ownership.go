package router

// Ownership during a reshard job.
//
// While a job moves key ranges, their rows may exist on two shards: copies
// on the target before cut-over, moved rows left on the source until
// cleanup. A keyed statement goes to its key's owner and is exact; a
// statement over several shards (Scatter, Multi) would see such rows
// twice. ExcludeMoving rewrites the text one shard runs so that it skips
// the moving ranges that shard does not own on the current ring: the
// sharded table's reference in the top-level FROM (or the UPDATE/DELETE
// target) gets one more conjunct in WHERE,
//
//	(<shardmap.RangesSQL(excluded, KeyType.SQLHash(alias.key))>) IS NOT TRUE
//
// which is NOT (…) except that a row whose key is NULL (it hashes to no
// range, is never moved, and lives on one shard only) is kept. A COPY of a
// table TO STDOUT becomes COPY (SELECT columns FROM ONLY table WHERE …) TO
// STDOUT with the same options. A shape that cannot be rewritten exactly
// is refused with SQLSTATE 55000: the client retries after the job.
// Without exclusions the text is returned as it is, unparsed.

import (
	"strconv"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/pgshard/pgshard/shardmap"
)

// CodeMoving is SQLSTATE object_not_in_prerequisite_state: a statement
// over several shards that cannot exclude the rows a reshard job moves.
const CodeMoving = "55000"

func refuseMoving(what string) *Error {
	return &Error{Code: CodeMoving, Message: what + " cannot run across shards while a reshard job moves rows; retry after it"}
}

// Excluded returns the moving ranges shard does not own on loc. A moving
// range is wholly owned by one shard on any ring (rings only ever split
// ranges at token positions the job's ranges respect), so its owner is
// the owner of its end.
func Excluded(moving []shardmap.Range, loc Locator, shard string) []shardmap.Range {
	var out []shardmap.Range
	for _, r := range moving {
		if loc.Lookup(r.End) != shard {
			out = append(out, r)
		}
	}
	return out
}

// owned is a cached ExcludeMoving result.
type owned struct {
	sql string
	err *Error
}

// ExcludeMoving returns text, a Multi or Scatter statement as it would be
// sent to one shard (the plan's ShardSQL or the client's text: SELECT,
// UPDATE, DELETE, a co-located INSERT … SELECT, or COPY … TO STDOUT),
// rewritten to skip the rows of
// excluded (see Excluded). With no exclusions it returns text itself.
// columns are the table's columns for a COPY of a whole table without a
// column list (CopyPlan.NeedsColumns): COPY copies every column but the
// generated ones, which SELECT * would not match. Results are cached by
// text and exclusions.
func (p *Planner) ExcludeMoving(text string, excluded []shardmap.Range, columns []string) (string, *Error) {
	if len(excluded) == 0 {
		return text, nil
	}
	return p.rewrite(ownedKey("exclude", text, excluded, columns), func() (string, *Error) {
		return excludeMoving(p.cat, text, excluded, columns)
	})
}

// rewrite returns the cached rewrite under key, computing it with f (and
// caching it) the first time.
func (p *Planner) rewrite(key string, f func() (string, *Error)) (string, *Error) {
	p.omu.Lock()
	o, ok := p.owned[key]
	p.omu.Unlock()
	if !ok {
		o.sql, o.err = f()
		p.remember(key, o)
	}
	return o.sql, o.err
}

// ownedKey is the cache key of a rewrite (what) of text for ranges and
// columns.
func ownedKey(what, text string, ranges []shardmap.Range, columns []string) string {
	var kb strings.Builder
	kb.WriteString(what)
	kb.WriteByte(0)
	for _, r := range ranges {
		kb.WriteString(strconv.FormatInt(r.Start, 16))
		kb.WriteByte(':')
		kb.WriteString(strconv.FormatInt(r.End, 16))
		kb.WriteByte(',')
	}
	for _, c := range columns {
		kb.WriteString(strconv.Quote(c))
	}
	kb.WriteByte(0)
	kb.WriteString(text)
	return kb.String()
}

// remember caches a rewrite under key, evicting one at random when full.
func (p *Planner) remember(key string, o owned) {
	p.omu.Lock()
	defer p.omu.Unlock()
	if p.owned == nil {
		p.owned = make(map[string]owned)
	}
	if len(p.owned) >= p.max {
		for k := range p.owned {
			delete(p.owned, k)
			break
		}
	}
	p.owned[key] = o
}

// excludeMoving parses, rewrites and deparses text.
func excludeMoving(cat Catalog, text string, excluded []shardmap.Range, columns []string) (string, *Error) {
	tree, err := parse(text)
	if err != nil || len(tree.Stmts) != 1 {
		return "", refuseMoving("this statement")
	}
	x := &excluder{cat: cat, excluded: excluded}
	stmt := tree.Stmts[0].Stmt
	var e *Error
	switch s := stmt.GetNode().(type) {
	case *pg_query.Node_SelectStmt:
		e = x.selectStmt(s.SelectStmt)
	case *pg_query.Node_UpdateStmt:
		u := s.UpdateStmt
		x.with(u.WithClause)
		x.rangeVar(u.Relation, false)
		for _, f := range u.FromClause {
			x.from(f, false)
		}
		u.WhereClause, e = x.where(u.WhereClause, "UPDATE")
	case *pg_query.Node_DeleteStmt:
		d := s.DeleteStmt
		x.with(d.WithClause)
		x.rangeVar(d.Relation, false)
		for _, f := range d.UsingClause {
			x.from(f, false)
		}
		d.WhereClause, e = x.where(d.WhereClause, "DELETE")
	case *pg_query.Node_CopyStmt:
		e = x.copyStmt(s.CopyStmt, columns)
	case *pg_query.Node_InsertStmt:
		// A co-located INSERT … SELECT: its SELECT reads each row once.
		sel := s.InsertStmt.SelectStmt.GetSelectStmt()
		if sel == nil || len(sel.ValuesLists) > 0 {
			e = refuseMoving("this INSERT")
			break
		}
		x.with(s.InsertStmt.WithClause)
		e = x.selectStmt(sel)
	default:
		e = refuseMoving("this statement")
	}
	if e != nil {
		return "", e
	}
	out, err := pg_query.Deparse(tree)
	if err != nil {
		return "", refuseMoving("this statement (it cannot be rewritten: " + err.Error() + ")")
	}
	return out, nil
}

// excluder collects the sharded tables of one statement's top-level FROM
// (or UPDATE/DELETE target) and ANDs their exclusions into its WHERE.
type excluder struct {
	cat      Catalog
	excluded []shardmap.Range
	ctes     map[string]bool
	preds    []string // one conjunct per sharded table that keeps its rows
	nullable string   // a sharded table on the nullable side of an outer join
	err      *Error
}

func (x *excluder) fail(e *Error) {
	if x.err == nil {
		x.err = e
	}
}

func (x *excluder) with(w *pg_query.WithClause) {
	if w == nil {
		return
	}
	if x.ctes == nil {
		x.ctes = map[string]bool{}
	}
	for _, c := range w.Ctes {
		if cte := c.GetCommonTableExpr(); cte != nil {
			x.ctes[cte.Ctename] = true
		}
	}
}

func (x *excluder) lookup(rv *pg_query.RangeVar) TableInfo {
	if rv == nil || x.cat == nil || (rv.Schemaname == "" && x.ctes[rv.Relname]) {
		return TableInfo{}
	}
	return x.cat.Table(rv.Schemaname, rv.Relname)
}

// rangeVar notes a table of the top-level FROM; nullable: it is on the
// nullable side of an outer join (its rows may be NULL-extended, so its
// exclusion cannot go into WHERE).
func (x *excluder) rangeVar(rv *pg_query.RangeVar, nullable bool) {
	info := x.lookup(rv)
	if info.Kind != TableSharded {
		return
	}
	if nullable {
		if x.nullable == "" {
			x.nullable = rv.Relname
		}
		return
	}
	ref := quoteName(rv.Relname)
	if rv.Schemaname != "" {
		ref = quoteName(rv.Schemaname) + "." + ref
	}
	col := info.KeyColumn
	if a := rv.Alias; a != nil && a.Aliasname != "" {
		ref = quoteName(a.Aliasname)
		if len(a.Colnames) > 0 {
			// FROM t AS a(x, y): the key column may be renamed.
			switch {
			case info.KeyOrdinal > 0 && info.KeyOrdinal <= len(a.Colnames):
				col = a.Colnames[info.KeyOrdinal-1].GetString_().GetSval()
			case info.KeyOrdinal > 0:
			default:
				x.fail(refuseMoving("a query that renames the columns of sharded table " + rv.Relname))
				return
			}
		}
	}
	x.preds = append(x.preds, "("+shardmap.RangesSQL(x.excluded, info.KeyType.SQLHash(ref+"."+quoteName(col)))+") IS NOT TRUE")
}

// from walks one FROM item.
func (x *excluder) from(n *pg_query.Node, nullable bool) {
	switch f := n.GetNode().(type) {
	case *pg_query.Node_RangeVar:
		x.rangeVar(f.RangeVar, nullable)
	case *pg_query.Node_RangeTableSample:
		x.from(f.RangeTableSample.Relation, nullable)
	case *pg_query.Node_JoinExpr:
		j := f.JoinExpr
		ln, rn := nullable, nullable
		switch j.Jointype {
		case pg_query.JoinType_JOIN_LEFT:
			rn = true
		case pg_query.JoinType_JOIN_RIGHT:
			ln = true
		case pg_query.JoinType_JOIN_FULL:
			ln, rn = true, true
		}
		if j.Alias != nil {
			// (a JOIN b) AS j hides a and b: their columns are j's.
			before := len(x.preds)
			x.from(j.Larg, ln)
			x.from(j.Rarg, rn)
			if len(x.preds) > before {
				x.fail(refuseMoving("a join of sharded tables under an alias"))
			}
			return
		}
		x.from(j.Larg, ln)
		x.from(j.Rarg, rn)
	}
	// Derived tables, functions, VALUES: sharded tables inside them are
	// either joined on the key to a table of this FROM (which the
	// exclusion filters) or refused by the planner.
}

// where ANDs the exclusions into w.
func (x *excluder) where(w *pg_query.Node, what string) (*pg_query.Node, *Error) {
	if x.err != nil {
		return nil, x.err
	}
	if len(x.preds) == 0 {
		if x.nullable != "" {
			return nil, refuseMoving(what + " whose sharded table " + x.nullable + " is only on the nullable side of an outer join")
		}
		return nil, refuseMoving(what + " with no sharded table in its FROM")
	}
	if w != nil && w.GetCurrentOfExpr() != nil {
		return nil, refuseMoving(what + " … WHERE CURRENT OF")
	}
	ptree, err := parse("SELECT WHERE " + strings.Join(x.preds, " AND "))
	if err != nil || len(ptree.Stmts) != 1 {
		return nil, refuseMoving(what)
	}
	pred := ptree.Stmts[0].Stmt.GetSelectStmt().GetWhereClause()
	if w == nil {
		return pred, nil
	}
	args := []*pg_query.Node{w}
	if be := w.GetBoolExpr(); be != nil && be.Boolop == pg_query.BoolExprType_AND_EXPR {
		args = be.Args
	}
	if be := pred.GetBoolExpr(); be != nil && be.Boolop == pg_query.BoolExprType_AND_EXPR {
		args = append(args, be.Args...)
	} else {
		args = append(args, pred)
	}
	return pg_query.MakeBoolExprNode(pg_query.BoolExprType_AND_EXPR, args, -1), nil
}

// selectStmt adds the exclusions to a SELECT's top level.
func (x *excluder) selectStmt(sel *pg_query.SelectStmt) *Error {
	if sel.Op != pg_query.SetOperation_SETOP_NONE {
		return refuseMoving("UNION/INTERSECT/EXCEPT")
	}
	x.with(sel.WithClause)
	for _, f := range sel.FromClause {
		x.from(f, false)
	}
	w, e := x.where(sel.WhereClause, "SELECT")
	if e != nil {
		return e
	}
	sel.WhereClause = w
	return nil
}

// copyStmt rewrites COPY … TO STDOUT: COPY (query) excludes in its query;
// COPY table [(columns)] becomes COPY (SELECT columns FROM ONLY table
// WHERE …) with the same options (COPY table TO reads no child tables,
// as ONLY).
func (x *excluder) copyStmt(c *pg_query.CopyStmt, columns []string) *Error {
	if c.IsFrom {
		return refuseMoving("COPY FROM")
	}
	if c.Query != nil {
		sel := c.Query.GetSelectStmt()
		if sel == nil {
			return refuseMoving("COPY of this query")
		}
		return x.selectStmt(sel)
	}
	if c.Relation == nil {
		return refuseMoving("this COPY")
	}
	var targets []*pg_query.Node
	col := func(name string) *pg_query.Node {
		return pg_query.MakeResTargetNodeWithVal(pg_query.MakeColumnRefNode([]*pg_query.Node{pg_query.MakeStrNode(name)}, -1), -1)
	}
	switch {
	case len(c.Attlist) > 0:
		for _, a := range c.Attlist {
			targets = append(targets, col(a.GetString_().GetSval()))
		}
	case len(columns) > 0:
		for _, name := range columns {
			targets = append(targets, col(name))
		}
	default:
		return refuseMoving("COPY of a table without its column list")
	}
	rv := &pg_query.RangeVar{Schemaname: c.Relation.Schemaname, Relname: c.Relation.Relname, Inh: false, Relpersistence: "p", Location: -1}
	sel := &pg_query.SelectStmt{TargetList: targets, FromClause: []*pg_query.Node{{Node: &pg_query.Node_RangeVar{RangeVar: rv}}},
		LimitOption: pg_query.LimitOption_LIMIT_OPTION_DEFAULT, Op: pg_query.SetOperation_SETOP_NONE}
	if e := x.selectStmt(sel); e != nil {
		return e
	}
	c.Query = &pg_query.Node{Node: &pg_query.Node_SelectStmt{SelectStmt: sel}}
	c.Relation, c.Attlist = nil, nil
	return nil
}

// quoteName quotes an identifier for SQL (the deparser unquotes what need
// not be).
func quoteName(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
