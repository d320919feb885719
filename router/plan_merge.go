package router

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// AggFunc is an aggregate the merge combines.
type AggFunc uint8

const (
	AggCount AggFunc = iota + 1 // add the counts
	AggSum                      // add the sums (NULL when all are NULL)
	AggMin
	AggMax
	AggAvg // sum of Col over sum of CountCol
	// AggCountDistinct is count(DISTINCT x): the shards send x in Col,
	// grouped by x too, and the merge counts the distinct values.
	AggCountDistinct
)

func (f AggFunc) String() string {
	return [...]string{"?", "count", "sum", "min", "max", "avg", "count distinct"}[f]
}

// Column references in a Merge index the per-shard row: r >= 0 is column
// r; r < 0 is hidden column -r-1, counted from the first hidden column
// (hidden columns are appended to the select list of ShardSQL; the merged
// result drops them). Use Merge.Col to get the index in a row of n
// columns.

// Agg is one aggregate output column.
type Agg struct {
	Col  int // the column holding the shard's count/sum/min/max (for avg: its sum)
	Func AggFunc
	// CountCol is avg's hidden count column (0 unless Func is AggAvg).
	CountCol int
}

// SortKey is one ORDER BY key.
type SortKey struct {
	Col        int
	Desc       bool
	NullsFirst bool // PostgreSQL's default: NULLS FIRST only for DESC
}

// Expr is a HAVING condition over merged rows. Op is one of: "and", "or",
// "not" (Args), a comparison or arithmetic operator ("=", "<>", "<", ">",
// "<=", ">=", "+", "-", "*", "/"; two Args), "col" (Col), "const" (Value:
// the constant as written), "param" (Param, 1-based), "isnull",
// "isnotnull" (one Arg).
type Expr struct {
	Op    string
	Args  []*Expr
	Col   int
	Value string
	Param int
}

func (e *Expr) String() string {
	switch e.Op {
	case "col":
		return "col(" + strconv.Itoa(e.Col) + ")"
	case "const":
		return e.Value
	case "param":
		return "$" + strconv.Itoa(e.Param)
	case "not", "isnull", "isnotnull":
		return e.Op + "(" + e.Args[0].String() + ")"
	}
	parts := make([]string, len(e.Args))
	for i, a := range e.Args {
		parts[i] = a.String()
	}
	return "(" + strings.Join(parts, " "+e.Op+" ") + ")"
}

// Merge describes how to combine the results of several shards.
type Merge struct {
	// Hidden is the number of hidden columns at the end of each row.
	Hidden int
	// Distinct: remove duplicate rows (of the visible columns).
	Distinct bool
	// Grouped: rows are groups (GROUP BY, or aggregates without GROUP BY:
	// one group) combined by GroupBy and Aggs; then Having, OrderBy,
	// Offset and Limit apply.
	Grouped bool
	GroupBy []int
	Aggs    []Agg
	Having  *Expr
	// OrderBy: each shard returns rows in this order (k-way merge); for
	// grouped results, sort after grouping.
	OrderBy []SortKey
	// HasLimit, HasOffset: Plan.Limit and Plan.Offset apply after merging.
	HasLimit, HasOffset bool
	// WithTies: FETCH FIRST … WITH TIES; rows equal to the last one in
	// the OrderBy keys follow it past the limit.
	WithTies bool
	// DistinctOn: SELECT DISTINCT ON (n expressions, the first n OrderBy
	// keys): of the merged rows equal in those keys only the first stays.
	// Each shard runs the same DISTINCT ON, ORDER BY and LIMIT
	// limit+offset.
	DistinctOn int
}

// Col returns the index of column reference r in a row of n columns.
func (m *Merge) Col(r, n int) int {
	if r >= 0 {
		return r
	}
	return n - m.Hidden + (-r - 1)
}

// mergeAggs are the aggregates the merge combines. bool_and and every are
// the min of booleans (false < true), bool_or their max: each shard's
// value, NULL when it had no non-NULL input, combined as min and max
// combine theirs.
var mergeAggs = map[string]AggFunc{"count": AggCount, "sum": AggSum, "min": AggMin, "max": AggMax, "avg": AggAvg,
	"bool_and": AggMin, "every": AggMin, "bool_or": AggMax}

// otherAggs are built-in aggregates the merge cannot combine.
var otherAggs = map[string]bool{"array_agg": true, "string_agg": true, "bit_and": true, "bit_or": true, "bit_xor": true, "json_agg": true, "jsonb_agg": true,
	"json_object_agg": true, "jsonb_object_agg": true, "xmlagg": true, "stddev": true, "stddev_pop": true,
	"stddev_samp": true, "variance": true, "var_pop": true, "var_samp": true, "corr": true, "covar_pop": true,
	"covar_samp": true, "regr_avgx": true, "regr_avgy": true, "regr_count": true, "regr_intercept": true,
	"regr_r2": true, "regr_slope": true, "regr_sxx": true, "regr_sxy": true, "regr_syy": true, "mode": true,
	"percentile_cont": true, "percentile_disc": true, "rank": true, "dense_rank": true, "percent_rank": true,
	"cume_dist": true, "range_agg": true, "range_intersect_agg": true, "any_value": true, "json_arrayagg": true,
	"json_objectagg": true}

// mergeTop builds the merge of the top-level SELECT.
func (b *builder) mergeTop(sel *pg_query.SelectStmt) {
	if sel.Op != pg_query.SetOperation_SETOP_NONE {
		return
	}
	b.t.distinctKey = b.soleKey(sel)
	m, rewrite, lits, err := analyzeMerge(sel, false, b.t.distinctKey)
	if err != nil {
		b.multiRefuse("%s", err.Message)
		return
	}
	if lits {
		b.cacheable = false // HAVING constants are part of the merge
	}
	b.t.merge, b.t.rewrite = m, rewrite
	var ok bool
	if b.t.limit, ok = b.limitSrc(sel.LimitCount); !ok {
		b.multiRefuse("LIMIT with an expression across shards")
	}
	if b.t.offset, ok = b.limitSrc(sel.LimitOffset); !ok {
		b.multiRefuse("OFFSET with an expression across shards")
	}
	if m != nil && !m.HasLimit && !m.HasOffset && !m.Grouped && !m.Distinct && len(m.OrderBy) == 0 && m.Hidden == 0 {
		b.t.merge = nil
	}
}

func (b *builder) limitSrc(n *pg_query.Node) (valSrc, bool) {
	if n == nil {
		return valSrc{}, true
	}
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
	if c.GetIval() == nil && c.GetSval() == nil {
		return valSrc{}, false // LIMIT '3' is an integer too (pgx's simple protocol writes it so)
	}
	idx, ok := b.sc.litIndex(int(c.Location))
	if !ok {
		return valSrc{}, false
	}
	return valSrc{kind: srcLit, idx: idx}, true
}

// rewriteForShards returns the per-shard text of a merged SELECT. The
// rewrite must describe the merge the plan has (want, when not nil): its
// hidden columns and aggregates are where the merge reads them.
func rewriteForShards(sql, distinctKey string, want *Merge) (string, *Error) {
	tree, err := parse(sql)
	if err != nil || len(tree.Stmts) != 1 {
		return "", refuse("cannot rewrite the statement for the shards")
	}
	sel := tree.Stmts[0].Stmt.GetSelectStmt()
	if sel == nil {
		return "", refuse("cannot rewrite the statement for the shards")
	}
	m, _, _, e := analyzeMerge(sel, true, distinctKey)
	if e != nil {
		return "", e
	}
	if want != nil && !reflect.DeepEqual(m, want) {
		return "", refuse(fmt.Sprintf("internal error: the statement rewritten for the shards is merged as %+v, planned as %+v", *m, *want))
	}
	out, err := pg_query.Deparse(tree)
	if err != nil {
		return "", refuse("cannot rewrite the statement for the shards: " + err.Error())
	}
	return out, nil
}

// merger holds the state of analyzeMerge.
type merger struct {
	sel     *pg_query.SelectStmt
	m       *Merge
	mutate  bool
	refs    []int // per target: its column reference (or noRef after a *)
	grouped bool
	lits    bool
	hidden  []*pg_query.Node
	key     string // see aggOf
	// distinctArgs are the arguments of count(DISTINCT x): the shards
	// group by them too.
	distinctArgs []*pg_query.Node
}

const noRef = 1 << 30

// addHidden appends a hidden column and returns its reference.
func (g *merger) addHidden(n *pg_query.Node) int {
	g.hidden = append(g.hidden, n)
	g.m.Hidden++
	return -g.m.Hidden
}

// analyzeMerge describes the merge of sel; with mutate it also rewrites
// sel into the per-shard statement. rewrite says whether that differs.
func analyzeMerge(sel *pg_query.SelectStmt, mutate bool, distinctKey string) (*Merge, bool, bool, *Error) {
	if distinctKey != "" && countsDistinctOther(sel, distinctKey) {
		// The shards group by the other count(DISTINCT x)'s x too: a key
		// counted in several of those finer groups would be added twice,
		// so count(DISTINCT key) is merged as any other.
		distinctKey = ""
	}
	if c := otherCollation(sel); c != "" {
		return nil, false, false, refuse(fmt.Sprintf("COLLATE %q across shards: the merge orders and compares text as bytes (only \"C\", \"POSIX\" and ucs_basic do)", c))
	}
	g := &merger{sel: sel, m: &Merge{}, mutate: mutate, key: distinctKey}
	m := g.m
	rewrite := false
	if len(sel.DistinctClause) > 0 {
		if len(sel.DistinctClause) == 1 && sel.DistinctClause[0].GetNode() == nil {
			m.Distinct = true
		} else if len(sel.SortClause) < len(sel.DistinctClause) {
			// PostgreSQL keeps an arbitrary row of each value; the
			// merge keeps the first in ORDER BY order (which PostgreSQL
			// makes start with the DISTINCT ON expressions).
			return nil, false, false, refuse("SELECT DISTINCT ON without an ORDER BY that starts with its expressions across shards")
		} else {
			m.DistinctOn = len(sel.DistinctClause)
		}
	}
	for _, gi := range sel.GroupClause {
		if gi.GetGroupingSet() != nil {
			return nil, false, false, refuse("GROUPING SETS, ROLLUP or CUBE across shards")
		}
	}
	star := false
	hasAgg := len(sel.GroupClause) > 0 || sel.HavingClause != nil
	for _, sc := range sel.SortClause {
		if nestedAgg(sc) != "" {
			hasAgg = true // ORDER BY count(*) makes the query an aggregate
		}
	}
	for i, t := range sel.TargetList {
		rt := t.GetResTarget()
		ref := i
		if star {
			ref = noRef
		}
		g.refs = append(g.refs, ref)
		if cr := rt.GetVal().GetColumnRef(); cr != nil && len(cr.Fields) > 0 && cr.Fields[len(cr.Fields)-1].GetAStar() != nil {
			star = true
			continue
		}
		if f, e := aggOf(rt.GetVal(), distinctKey); e != nil {
			return nil, false, false, e
		} else if f != 0 {
			hasAgg = true
		} else if name := nestedAgg(rt.GetVal()); name != "" {
			return nil, false, false, refuse(fmt.Sprintf("expression over the aggregate %s() across shards", name))
		}
	}
	g.grouped = hasAgg
	var retarget []func() // rewrites of targets for the shards (mutate)
	if m.DistinctOn > 0 && hasAgg {
		return nil, false, false, refuse("SELECT DISTINCT ON with aggregates or GROUP BY across shards")
	}
	m.Grouped = hasAgg
	if hasAgg {
		if star {
			return nil, false, false, refuse("SELECT * with aggregates across shards")
		}
		for _, gi := range sel.GroupClause {
			m.GroupBy = append(m.GroupBy, g.groupRef(gi))
		}
		for i, t := range sel.TargetList {
			rt := t.GetResTarget()
			f, e := aggOf(rt.Val, distinctKey)
			if e != nil {
				return nil, false, false, e
			}
			if f == 0 {
				if g.findGroup(rt.Val) < 0 && g.positionalGroup(i) < 0 {
					return nil, false, false, refuse(fmt.Sprintf("output column %d is neither grouped nor an aggregate across shards", i+1))
				}
				continue
			}
			a := Agg{Col: g.refs[i], Func: f}
			if f == AggCountDistinct {
				if m.Distinct {
					return nil, false, false, refuse("SELECT DISTINCT with count(DISTINCT …) across shards")
				}
				arg := rt.Val.GetFuncCall().Args[0]
				g.distinctArgs = append(g.distinctArgs, arg)
				retarget = append(retarget, func() {
					rt.Val = arg
					if rt.Name == "" {
						rt.Name = "count" // the name PostgreSQL gives count(DISTINCT x)
					}
				})
				rewrite = true
			}
			if f == AggAvg {
				fc := rt.Val.GetFuncCall()
				a.CountCol = g.addHidden(funcNode("count", fc.Args, fc.AggStar))
				retarget = append(retarget, func() {
					rt.Val = funcNode("sum", fc.Args, false)
					if rt.Name == "" {
						rt.Name = "avg" // the name PostgreSQL gives avg(x)
					}
				})
				rewrite = true
			}
			m.Aggs = append(m.Aggs, a)
		}
		if sel.HavingClause != nil {
			h, e := g.expr(sel.HavingClause)
			if e != nil {
				return nil, false, false, e
			}
			m.Having = h
			if mutate {
				sel.HavingClause = nil
			}
			rewrite = true
		}
	}
	for _, s := range sel.SortClause {
		sb := s.GetSortBy()
		if sb == nil || sb.UseOp != nil {
			return nil, false, false, refuse("ORDER BY … USING across shards")
		}
		k := SortKey{Desc: sb.SortbyDir == pg_query.SortByDir_SORTBY_DESC}
		k.NullsFirst = k.Desc
		switch sb.SortbyNulls {
		case pg_query.SortByNulls_SORTBY_NULLS_FIRST:
			k.NullsFirst = true
		case pg_query.SortByNulls_SORTBY_NULLS_LAST:
			k.NullsFirst = false
		}
		ref, e := g.orderRef(sb.Node)
		if e != nil {
			return nil, false, false, e
		}
		k.Col = ref
		m.OrderBy = append(m.OrderBy, k)
	}
	if len(g.hidden) > 0 {
		rewrite = true
	}
	m.HasLimit = sel.LimitCount != nil && !isNullConst(sel.LimitCount)
	m.HasOffset = sel.LimitOffset != nil && !isNullConst(sel.LimitOffset)
	m.WithTies = sel.LimitOption == pg_query.LimitOption_LIMIT_OPTION_WITH_TIES
	if m.HasOffset || (m.HasLimit && (hasAgg || m.Distinct)) {
		rewrite = true
	}
	if mutate {
		// Targets change only now: HAVING and ORDER BY above found
		// them as written (a rewritten one would not match its aggregate).
		for _, f := range retarget {
			f()
		}
		for i, h := range g.hidden {
			sel.TargetList = append(sel.TargetList, pg_query.MakeResTargetNodeWithNameAndVal("pgshard_hidden_"+strconv.Itoa(i+1), h, -1))
		}
		// count(DISTINCT x): each shard groups by x too (not by a
		// constant: one value, and GROUP BY 2 would name a column).
		for _, x := range g.distinctArgs {
			if x.GetAConst() == nil {
				sel.GroupClause = append(sel.GroupClause, x)
			}
		}
		switch {
		case hasAgg || m.Distinct:
			// Groups and distinct rows combine across shards: the merge
			// applies LIMIT and OFFSET (and WITH TIES).
			sel.LimitCount, sel.LimitOffset = nil, nil
			sel.LimitOption = pg_query.LimitOption_LIMIT_OPTION_DEFAULT
		case m.HasOffset && m.HasLimit:
			// Cast both: LIMIT '19' OFFSET '72' (or untyped parameters)
			// would otherwise be unknown + unknown.
			sel.LimitCount = pg_query.MakeAExprNode(pg_query.A_Expr_Kind_AEXPR_OP,
				[]*pg_query.Node{pg_query.MakeStrNode("+")}, asBigint(sel.LimitCount), asBigint(sel.LimitOffset), -1)
			sel.LimitOffset = nil
		case m.HasOffset:
			sel.LimitOffset = nil
		}
	}
	return m, rewrite, g.lits, nil
}

func isNullConst(n *pg_query.Node) bool {
	c := n.GetAConst()
	return c != nil && c.Isnull
}

func funcNode(name string, args []*pg_query.Node, star bool) *pg_query.Node {
	fc := &pg_query.FuncCall{Funcname: []*pg_query.Node{pg_query.MakeStrNode(name)}, Args: args, AggStar: star, Location: -1}
	return &pg_query.Node{Node: &pg_query.Node_FuncCall{FuncCall: fc}}
}

// aggOf reports the mergeable aggregate n is (0: not an aggregate), or a
// refusal for an aggregate the merge cannot combine. distinctKey is the
// shard key column of the query's only table ("" when there is not exactly
// one sharded table): count(DISTINCT key) adds exactly, as equal keys live
// on one shard.
func aggOf(n *pg_query.Node, distinctKey string) (AggFunc, *Error) {
	fc := n.GetFuncCall()
	if fc == nil || fc.Over != nil {
		return 0, nil
	}
	name := funcName(fc)
	f, ok := mergeAggs[name]
	if !ok {
		if otherAggs[name] {
			return 0, refuse(fmt.Sprintf("aggregate %s() across shards", name))
		}
		return 0, nil
	}
	if len(fc.Funcname) > 1 && fc.Funcname[0].GetString_().GetSval() != "pg_catalog" {
		return 0, nil
	}
	if fc.AggDistinct {
		switch {
		case f == AggMin || f == AggMax:
			// DISTINCT changes nothing.
		case f == AggCount && distinctKey != "" && len(fc.Args) == 1 && lastField(fc.Args[0]) == distinctKey:
			// Each shard counts its own keys; no key is on two shards.
		case f == AggCount && len(fc.Args) == 1 && fc.AggFilter == nil && len(fc.AggOrder) == 0:
			// The shards send the values (grouped by them); the merge
			// counts the distinct ones.
			return AggCountDistinct, nil
		case f == AggCount:
			return 0, refuse("count(DISTINCT …) with FILTER or ORDER BY across shards")
		default:
			return 0, refuse(fmt.Sprintf("%s(DISTINCT …) across shards (count(DISTINCT …) is merged; sum and avg of distinct values are not)", name))
		}
	}
	if len(fc.AggOrder) > 0 || fc.AggWithinGroup {
		return 0, refuse(fmt.Sprintf("%s() with ORDER BY across shards", name))
	}
	return f, nil
}

// otherCollation returns the first collation named by a COLLATE clause in
// what the merge orders, groups or outputs (targets, GROUP BY, HAVING,
// ORDER BY, DISTINCT ON) that is not byte order; "" when none.
func otherCollation(sel *pg_query.SelectStmt) string {
	var nodes []*pg_query.Node
	for _, l := range [][]*pg_query.Node{sel.TargetList, sel.GroupClause, sel.SortClause, sel.DistinctClause, {sel.HavingClause}} {
		nodes = append(nodes, l...)
	}
	found := ""
	for _, n := range nodes {
		if n == nil || found != "" {
			continue
		}
		anyNode(n, func(m protoreflect.Message) (bool, bool) {
			cc, ok := m.Interface().(*pg_query.CollateClause)
			if !ok || len(cc.Collname) == 0 {
				return false, true
			}
			name := cc.Collname[len(cc.Collname)-1].GetString_().GetSval()
			switch name {
			case "C", "POSIX", "ucs_basic":
				return false, true
			}
			found = name
			return true, false
		})
	}
	return found
}

// countsDistinctOther reports whether sel's targets, HAVING or ORDER BY
// count(DISTINCT x) of an x other than key.
func countsDistinctOther(sel *pg_query.SelectStmt, key string) bool {
	nodes := append(append([]*pg_query.Node{sel.HavingClause}, sel.TargetList...), sel.SortClause...)
	for _, n := range nodes {
		if n != nil && anyNode(n, func(m protoreflect.Message) (bool, bool) {
			fc, ok := m.Interface().(*pg_query.FuncCall)
			if !ok || !fc.AggDistinct || funcName(fc) != "count" {
				return false, true
			}
			return len(fc.Args) != 1 || lastField(fc.Args[0]) != key, true
		}) {
			return true
		}
	}
	return false
}

// nestedAgg returns the name of an aggregate inside n, if any.
func nestedAgg(n *pg_query.Node) string {
	found := ""
	if n == nil {
		return found
	}
	anyNode(n, func(m protoreflect.Message) (bool, bool) {
		switch v := m.Interface().(type) {
		case *pg_query.FuncCall:
			if name := funcName(v); v.Over == nil {
				if _, ok := mergeAggs[name]; ok || otherAggs[name] {
					found = name
					return true, false
				}
			}
		case *pg_query.SubLink:
			return false, false
		}
		return false, true
	})
	return found
}

// positionalGroup returns the GROUP BY item that names target i by
// position or alias, else -1.
func (g *merger) positionalGroup(i int) int {
	name := g.sel.TargetList[i].GetResTarget().GetName()
	for k, gi := range g.sel.GroupClause {
		if c := gi.GetAConst(); c != nil && c.GetIval() != nil && int(c.GetIval().Ival) == i+1 {
			return k
		}
		if name != "" && colName(gi) == name {
			return k
		}
	}
	return -1
}

// findGroup returns the GROUP BY item equal to n, else -1.
func (g *merger) findGroup(n *pg_query.Node) int {
	for k, gi := range g.sel.GroupClause {
		if sameExpr(gi, n) {
			return k
		}
	}
	return -1
}

func colName(n *pg_query.Node) string {
	cr := n.GetColumnRef()
	if cr == nil || len(cr.Fields) != 1 {
		return ""
	}
	return cr.Fields[0].GetString_().GetSval()
}

// targetRef finds the output column n names: by position, by alias, or by
// being the same expression.
func (g *merger) targetRef(n *pg_query.Node) (int, bool) {
	if c := n.GetAConst(); c != nil && c.GetIval() != nil {
		i := int(c.GetIval().Ival) - 1
		if i >= 0 && i < len(g.refs) && g.refs[i] != noRef {
			return g.refs[i], true
		}
		return 0, false
	}
	if name := colName(n); name != "" {
		for i, t := range g.sel.TargetList {
			if t.GetResTarget().GetName() == name && g.refs[i] != noRef {
				return g.refs[i], true
			}
		}
	}
	for i, t := range g.sel.TargetList {
		if g.refs[i] != noRef && sameExpr(t.GetResTarget().GetVal(), n) {
			return g.refs[i], true
		}
	}
	return 0, false
}

func (g *merger) groupRef(n *pg_query.Node) int {
	if r, ok := g.targetRef(n); ok {
		return r
	}
	return g.addHidden(n)
}

// orderRef maps an ORDER BY expression to a column, adding a hidden one
// when it is not in the output.
func (g *merger) orderRef(n *pg_query.Node) (int, *Error) {
	if r, ok := g.targetRef(n); ok {
		return r, nil
	}
	if !g.grouped {
		return g.addHidden(n), nil
	}
	return g.aggOrGroup(n)
}

// aggOrGroup maps an expression of a grouped query (in HAVING or ORDER
// BY) to a grouped column or an aggregate column, adding hidden ones.
func (g *merger) aggOrGroup(n *pg_query.Node) (int, *Error) {
	if r, ok := g.targetRef(n); ok {
		return r, nil
	}
	if k := g.findGroup(n); k >= 0 {
		return g.m.GroupBy[k], nil
	}
	f, e := aggOf(n, g.key)
	if e != nil {
		return 0, e
	}
	if f == 0 {
		return 0, refuse("expression that is neither grouped nor an aggregate in HAVING or ORDER BY across shards")
	}
	fc := n.GetFuncCall()
	a := Agg{Func: f}
	switch f {
	case AggAvg:
		a.Col = g.addHidden(funcNode("sum", fc.Args, false))
		a.CountCol = g.addHidden(funcNode("count", fc.Args, fc.AggStar))
	case AggCountDistinct:
		if g.m.Distinct {
			return 0, refuse("SELECT DISTINCT with count(DISTINCT …) across shards")
		}
		a.Col = g.addHidden(fc.Args[0])
		g.distinctArgs = append(g.distinctArgs, fc.Args[0])
	default:
		a.Col = g.addHidden(n)
	}
	g.m.Aggs = append(g.m.Aggs, a)
	return a.Col, nil
}

var havingOps = map[string]bool{"=": true, "<>": true, "!=": true, "<": true, ">": true, "<=": true, ">=": true, "+": true, "-": true, "*": true, "/": true}

// expr translates a HAVING condition.
func (g *merger) expr(n *pg_query.Node) (*Expr, *Error) {
	switch x := n.GetNode().(type) {
	case *pg_query.Node_BoolExpr:
		op := map[pg_query.BoolExprType]string{pg_query.BoolExprType_AND_EXPR: "and", pg_query.BoolExprType_OR_EXPR: "or", pg_query.BoolExprType_NOT_EXPR: "not"}[x.BoolExpr.Boolop]
		e := &Expr{Op: op}
		for _, a := range x.BoolExpr.Args {
			s, err := g.expr(a)
			if err != nil {
				return nil, err
			}
			e.Args = append(e.Args, s)
		}
		return e, nil
	case *pg_query.Node_AExpr:
		ae := x.AExpr
		op := opName(ae)
		if ae.Kind != pg_query.A_Expr_Kind_AEXPR_OP || !havingOps[op] || ae.Lexpr == nil {
			break
		}
		if op == "!=" {
			op = "<>"
		}
		l, err := g.expr(ae.Lexpr)
		if err != nil {
			return nil, err
		}
		r, err := g.expr(ae.Rexpr)
		if err != nil {
			return nil, err
		}
		return &Expr{Op: op, Args: []*Expr{l, r}}, nil
	case *pg_query.Node_NullTest:
		a, err := g.expr(x.NullTest.Arg)
		if err != nil {
			return nil, err
		}
		op := "isnull"
		if x.NullTest.Nulltesttype == pg_query.NullTestType_IS_NOT_NULL {
			op = "isnotnull"
		}
		return &Expr{Op: op, Args: []*Expr{a}}, nil
	case *pg_query.Node_AConst:
		g.lits = true
		c := x.AConst
		switch v := c.Val.(type) {
		case *pg_query.A_Const_Ival:
			return &Expr{Op: "const", Value: strconv.Itoa(int(v.Ival.Ival))}, nil
		case *pg_query.A_Const_Fval:
			return &Expr{Op: "const", Value: v.Fval.Fval}, nil
		case *pg_query.A_Const_Sval:
			return &Expr{Op: "const", Value: v.Sval.Sval}, nil
		}
		if c.Isnull {
			return &Expr{Op: "const", Value: "NULL"}, nil
		}
	case *pg_query.Node_ParamRef:
		return &Expr{Op: "param", Param: int(x.ParamRef.Number)}, nil
	case *pg_query.Node_FuncCall, *pg_query.Node_ColumnRef:
		r, err := g.aggOrGroup(n)
		if err != nil {
			return nil, err
		}
		return &Expr{Op: "col", Col: r}, nil
	}
	return nil, refuse("HAVING expression across shards: only comparisons and arithmetic of aggregates, grouped columns and constants are merged")
}

// sameExpr compares two expressions ignoring their source locations.
func sameExpr(a, b *pg_query.Node) bool {
	if a == nil || b == nil {
		return false
	}
	ca, cb := proto.Clone(a), proto.Clone(b)
	clearLoc(ca.ProtoReflect())
	clearLoc(cb.ProtoReflect())
	return proto.Equal(ca, cb)
}

func clearLoc(m protoreflect.Message) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.Name() == "location":
			m.Clear(fd)
		case fd.Kind() != protoreflect.MessageKind || fd.IsMap():
		case fd.IsList():
			for i := 0; i < v.List().Len(); i++ {
				clearLoc(v.List().Get(i).Message())
			}
		default:
			clearLoc(v.Message())
		}
		return true
	})
}

// asBigint casts n to bigint (LIMIT's type).
func asBigint(n *pg_query.Node) *pg_query.Node {
	return &pg_query.Node{Node: &pg_query.Node_TypeCast{TypeCast: &pg_query.TypeCast{
		Arg:      n,
		TypeName: &pg_query.TypeName{Names: []*pg_query.Node{pg_query.MakeStrNode("pg_catalog"), pg_query.MakeStrNode("int8")}, Location: -1},
		Location: -1,
	}}}
}

// lastField returns the column name of a column reference ("" otherwise).
func lastField(n *pg_query.Node) string {
	cr := n.GetColumnRef()
	if cr == nil || len(cr.Fields) == 0 {
		return ""
	}
	return cr.Fields[len(cr.Fields)-1].GetString_().GetSval()
}

// soleKey returns the shard key column of a SELECT's FROM when it is
// exactly one sharded table (no join), else "".
func (b *builder) soleKey(sel *pg_query.SelectStmt) string {
	if len(sel.FromClause) != 1 {
		return ""
	}
	rv := sel.FromClause[0].GetRangeVar()
	if rv == nil {
		return ""
	}
	if info := b.lookup(rv); info.Kind == TableSharded {
		return info.KeyColumn
	}
	return ""
}
