package router

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/pgshard/pgshard/shardmap"
)

// insert analyses INSERT: rows of a sharded table are routed by their key.
func (b *builder) insert(ins *pg_query.InsertStmt) {
	sc := &scope{}
	b.with(ins.WithClause, sc)
	info := b.lookup(ins.Relation)
	name := ins.Relation.GetRelname()
	if info.Kind != TableSharded {
		b.walk(ins.SelectStmt, sc)
		b.walkOnConflict(ins.OnConflictClause, sc)
		b.walkList(ins.ReturningList, sc)
		b.t.refWrite = true
		if info.Kind == TableReference {
			b.sameEverywhere(name, ins.SelectStmt, ins.OnConflictClause.GetWhereClause())
			for _, t := range ins.OnConflictClause.GetTargetList() {
				b.sameEverywhere(name, t)
			}
		}
		return
	}
	sel := ins.SelectStmt.GetSelectStmt()
	if sel == nil {
		b.refuse("INSERT … DEFAULT VALUES into sharded table %s: the shard key %s has no value", name, info.KeyColumn)
		return
	}
	keyIdx, ok := b.insertKeyIndex(ins, info, name)
	if !ok {
		return
	}
	if len(sel.ValuesLists) == 0 {
		b.insertSelect(ins, sel, info, name, keyIdx, sc)
		return
	}
	if len(sel.FromClause) > 0 || sel.WithClause != nil || len(sel.SortClause) > 0 || sel.LimitCount != nil {
		b.refuse("INSERT … VALUES with ORDER BY, LIMIT or WITH into sharded table %s", name)
		return
	}
	vals := make([]valSrc, 0, len(sel.ValuesLists))
	for r, row := range sel.ValuesLists {
		items := row.GetList().GetItems()
		if keyIdx >= len(items) {
			b.refuse("INSERT into sharded table %s: row %d has no value for the shard key %s", name, r+1, info.KeyColumn)
			return
		}
		v, ok := b.value(items[keyIdx], info.KeyType)
		if !ok || v.kind == srcParamArr {
			b.refuse("INSERT into sharded table %s with a shard key %s that is not a constant or parameter (row %d)", name, info.KeyColumn, r+1)
			return
		}
		if v.kind == srcNull {
			b.refuse("INSERT of a NULL shard key %s into %s (row %d)", info.KeyColumn, name, r+1)
			return
		}
		vals = append(vals, v)
		b.walk(row, sc)
	}
	if !b.insertTail(ins, info, name, sc) {
		return
	}
	b.t.insert = vals
	b.t.ins = &group{ktype: info.KeyType, names: []string{name}}
}

// insertKeyIndex returns the position of the shard key among the columns
// an INSERT into a sharded table fills; ok false when refused.
func (b *builder) insertKeyIndex(ins *pg_query.InsertStmt, info TableInfo, name string) (int, bool) {
	if len(ins.Cols) > 0 {
		for i, c := range ins.Cols {
			if rt := c.GetResTarget(); rt != nil && rt.Name == info.KeyColumn && len(rt.Indirection) == 0 {
				return i, true
			}
		}
		b.refuse("INSERT into sharded table %s without its shard key column %s", name, info.KeyColumn)
		return 0, false
	}
	if info.KeyOrdinal > 0 {
		return info.KeyOrdinal - 1, true
	}
	b.refuse("INSERT into sharded table %s without a column list: name the columns, including the shard key %s", name, info.KeyColumn)
	return 0, false
}

// insertTail analyses what follows an INSERT's rows (ON CONFLICT,
// RETURNING) and refuses any read of a sharded table in the statement;
// false when refused.
func (b *builder) insertTail(ins *pg_query.InsertStmt, info TableInfo, name string, sc *scope) bool {
	if !b.insertConflict(ins, info, name, sc) {
		return false
	}
	for _, o := range b.occs {
		if o.info.Kind == TableSharded {
			b.refuse("INSERT into sharded table %s with a subquery on sharded table %s", name, o.table)
			return false
		}
	}
	return true
}

// InsertSelect is an INSERT … SELECT into a sharded table whose SELECT
// reads no sharded table: every shard runs it, its SELECT narrowed to the
// rows whose key the shard owns (Planner.OwnRows), so that each row is
// inserted once, on its key's owner. The SELECT must compute the same
// rows on every shard: its key may not be volatile, and nothing may
// combine rows (aggregates, window functions, GROUP BY, DISTINCT, LIMIT).
// With a constant or parameter key the statement is no InsertSelect: it
// runs whole on the key's shard, and such a SELECT may combine rows.
type InsertSelect struct {
	Table     string // for messages
	KeyColumn string
	KeyIndex  int // the key's position in the SELECT's target list
	KeyType   shardmap.KeyType
}

// insertSelect analyses INSERT … SELECT into sharded table name. A key
// that is a constant or a parameter routes the statement to its shard, as
// a one-row VALUES; any other runs on every shard (InsertSelect).
func (b *builder) insertSelect(ins *pg_query.InsertStmt, sel *pg_query.SelectStmt, info TableInfo, name string, keyIdx int, sc *scope) {
	const how = "each shard inserts the SELECT's rows whose key it owns"
	switch {
	case ins.WithClause != nil || sel.WithClause != nil:
		b.refuse("INSERT … SELECT with WITH into sharded table %s (%s: put the query in FROM)", name, how)
		return
	case sel.Op != pg_query.SetOperation_SETOP_NONE:
		b.refuse("INSERT … SELECT with UNION/INTERSECT/EXCEPT into sharded table %s", name)
		return
	}
	for _, t := range sel.TargetList {
		if cr := t.GetResTarget().GetVal().GetColumnRef(); cr != nil && len(cr.Fields) > 0 && cr.Fields[len(cr.Fields)-1].GetAStar() != nil {
			b.refuse("INSERT … SELECT * into sharded table %s: list the SELECT's columns, so that pgshard knows which one is the shard key %s", name, info.KeyColumn)
			return
		}
	}
	if keyIdx >= len(sel.TargetList) {
		b.refuse("INSERT … SELECT into sharded table %s gives no value for the shard key %s", name, info.KeyColumn)
		return
	}
	key := sel.TargetList[keyIdx].GetResTarget().GetVal()
	selScope := b.selectStmt(sel, sc, 0) // its FROM at the top level: it decides the shards
	sharded := slices.ContainsFunc(b.occs, func(o *occ) bool { return o.info.Kind == TableSharded })
	if v, ok := b.value(key, info.KeyType); ok && v.kind != srcParamArr && !sharded {
		// One key, one shard: the whole SELECT runs there, as on one
		// database (its reference tables are the same everywhere).
		if !b.insertTail(ins, info, name, sc) {
			return
		}
		if v.kind == srcNull {
			b.refuse("INSERT of a NULL shard key %s into %s", info.KeyColumn, name)
			return
		}
		b.t.insert = []valSrc{v}
		b.t.ins = &group{ktype: info.KeyType, names: []string{name}}
		return
	}
	// Every shard (or each its own rows) runs the SELECT: each must
	// compute the same rows.
	if len(sel.GroupClause) > 0 || sel.HavingClause != nil || len(sel.DistinctClause) > 0 || sel.LimitCount != nil ||
		sel.LimitOffset != nil || len(sel.WindowClause) > 0 || len(sel.LockingClause) > 0 {
		b.refuse("INSERT … SELECT with GROUP BY, HAVING, DISTINCT, LIMIT, OFFSET, WINDOW or FOR UPDATE into sharded table %s (%s, which these would change; a constant shard key runs it on one shard)", name, how)
		return
	}
	for _, t := range sel.TargetList {
		if f := nestedAgg(t); f != "" {
			b.refuse("INSERT … SELECT with the aggregate %s() into sharded table %s (%s; a constant shard key runs it on one shard)", f, name, how)
			return
		}
		if windowCall(t) {
			b.refuse("INSERT … SELECT with a window function into sharded table %s (%s; a constant shard key runs it on one shard)", name, how)
			return
		}
	}
	if sharded {
		b.insertSelectColocated(ins, info, name, key, sc, selScope)
		return
	}
	if !b.insertTail(ins, info, name, sc) {
		return
	}
	if f := VolatileCall(key); f != "" {
		b.refuse("INSERT … SELECT into sharded table %s whose shard key %s calls %s: each shard would compute other keys", name, info.KeyColumn, f)
		return
	}
	if !readsColumn(key) {
		b.refuse("INSERT … SELECT into sharded table %s whose shard key %s is computed from constants: give its value", name, info.KeyColumn)
		return
	}
	b.rangeVar(ins.Relation, sc) // every shard: a scatter write
	b.t.insertSelect = &InsertSelect{Table: name, KeyColumn: info.KeyColumn, KeyIndex: keyIdx, KeyType: info.KeyType}
}

// insertSelectColocated analyses INSERT … SELECT into sharded table name
// from sharded tables: allowed when the inserted key is the key column of
// a sharded table of the SELECT's FROM (co-located: each row is inserted
// on the shard its source row is on), which then routes the statement as
// a read of that table routes (one shard, some, or every shard; while a
// reshard job moves rows, ExcludeMoving narrows its SELECT as a read's).
func (b *builder) insertSelectColocated(ins *pg_query.InsertStmt, info TableInfo, name string, key *pg_query.Node, sc, selScope *scope) {
	src := b.keyCol(key, selScope)
	if src == nil || src.depth != 0 || src.info.KeyType != info.KeyType {
		var from string
		for _, o := range b.occs {
			if o.info.Kind == TableSharded {
				from = o.table
				break
			}
		}
		b.refuse("INSERT … SELECT into sharded table %s from sharded table %s whose shard key %s is not the key column of a sharded table in the SELECT's FROM (of the same key type): only a co-located copy, each shard inserting its own rows, is supported", name, from, info.KeyColumn)
		return
	}
	if b.insertConflict(ins, info, name, sc) {
		b.link(b.rangeVar(ins.Relation, sc), src)
	}
}

// insertConflict analyses an INSERT's ON CONFLICT and RETURNING; false
// when refused (DO UPDATE may not set the key).
func (b *builder) insertConflict(ins *pg_query.InsertStmt, info TableInfo, name string, sc *scope) bool {
	if oc := ins.OnConflictClause; oc != nil && oc.Action == pg_query.OnConflictAction_ONCONFLICT_UPDATE {
		for _, t := range oc.TargetList {
			if rt := t.GetResTarget(); rt != nil && rt.Name == info.KeyColumn {
				b.refuse("INSERT … ON CONFLICT DO UPDATE that sets the shard key column %s of %s", info.KeyColumn, name)
				return false
			}
		}
	}
	b.walkOnConflict(ins.OnConflictClause, sc)
	b.walkList(ins.ReturningList, sc)
	return true
}

// windowCall reports whether n calls a window function.
func windowCall(n *pg_query.Node) bool {
	return anyNode(n, func(m protoreflect.Message) (bool, bool) {
		fc, ok := m.Interface().(*pg_query.FuncCall)
		return ok && fc.Over != nil, true
	})
}

// readsColumn reports whether n reads a column of the query's FROM (not
// only of a subquery's).
func readsColumn(n *pg_query.Node) bool {
	return anyNode(n, func(m protoreflect.Message) (bool, bool) {
		switch m.Interface().(type) {
		case *pg_query.ColumnRef:
			return true, false
		case *pg_query.SubLink:
			return false, false
		}
		return false, true
	})
}

func (b *builder) walkOnConflict(oc *pg_query.OnConflictClause, sc *scope) {
	if oc == nil {
		return
	}
	b.walkList(oc.TargetList, sc)
	b.walk(oc.WhereClause, sc)
}

// ErrNoValues reports a text SplitInsert cannot split: no VALUES list.
var ErrNoValues = errors.New("router: no INSERT … VALUES list to split")

// SplitInsert returns the text of a multi-row INSERT … VALUES keeping only
// the given rows (0-based, in that order), for one shard of a split
// (Plan.Rows). Everything around the VALUES list (column list, ON
// CONFLICT, RETURNING, comments) is kept. Parameters are renumbered $1, $2,
// ... in order of first appearance in the new text; params lists, for
// each new number, the 0-based index of the original parameter, so the
// proxy can Parse the new text with the types Types[params[i]] and Bind
// Values[params[i]]. For a simple-protocol text params is empty.
func SplitInsert(sql string, rows []int) (text string, params []int, err error) {
	lx := planLexer{l: lexer{s: sql}}
	depth := 0
	type span struct{ pos, end int }
	var spans []span // the rows of the VALUES list
	valuesAt, tail := -1, len(sql)
	rowStart := -1
scan:
	for {
		t, ok := lx.next()
		if !ok {
			break
		}
		c := sql[t.pos]
		if valuesAt < 0 {
			switch {
			case t.kind == tokPunct && c == '(':
				depth++
			case t.kind == tokPunct && c == ')':
				depth--
			case t.kind == tokIdent && depth == 0 && strings.EqualFold(sql[t.pos:t.end], "values"):
				valuesAt = t.end
			}
			continue
		}
		switch {
		case t.kind == tokPunct && c == '(':
			if depth == 0 {
				rowStart = t.pos
			}
			depth++
			continue
		case t.kind == tokPunct && c == ')':
			depth--
			if depth == 0 {
				spans = append(spans, span{rowStart, t.end})
			}
			continue
		case depth > 0:
			continue
		case t.kind == tokPunct && c == ',':
			continue
		}
		tail = t.pos
		break scan
	}
	if valuesAt < 0 || len(spans) == 0 {
		return "", nil, ErrNoValues
	}
	var w strings.Builder
	w.WriteString(sql[:spans[0].pos])
	for i, r := range rows {
		if r < 0 || r >= len(spans) {
			return "", nil, ErrNoValues
		}
		if i > 0 {
			w.WriteString(", ")
		}
		w.WriteString(sql[spans[r].pos:spans[r].end])
	}
	if tail < len(sql) {
		w.WriteByte(' ')
		w.WriteString(sql[tail:])
	}
	text = w.String()
	// Renumber parameters in order of appearance.
	lx = planLexer{l: lexer{s: text}}
	var out strings.Builder
	last := 0
	seen := map[int]int{}
	for {
		t, ok := lx.next()
		if !ok {
			break
		}
		if t.kind != tokParam || t.end-t.pos < 2 {
			continue
		}
		n, e := strconv.Atoi(text[t.pos+1 : t.end])
		if e != nil {
			continue
		}
		k, ok := seen[n-1]
		if !ok {
			params = append(params, n-1)
			k = len(params)
			seen[n-1] = k
		}
		out.WriteString(text[last:t.pos])
		out.WriteString("$" + strconv.Itoa(k))
		last = t.end
	}
	if len(params) == 0 {
		return text, nil, nil
	}
	out.WriteString(text[last:])
	return out.String(), params, nil
}

// OwnRows returns text, an INSERT … SELECT planned with Plan.InsertSelect
// is, as one shard runs it: the SELECT's WHERE also keeps only the rows
// whose key lies in owned, the ranges the shard owns. A row whose key is
// NULL fails the statement (22P02, naming the key), as a NULL key fails
// INSERT … VALUES and COPY: it belongs to no shard. Results are cached by
// text and ranges.
func (p *Planner) OwnRows(text string, owned []shardmap.Range, is *InsertSelect) (string, *Error) {
	return p.rewrite(ownedKey("insert", text, owned, nil), func() (string, *Error) {
		return ownRows(text, owned, is)
	})
}

// keyPlaceholder stands for the key expression in the filter's text until
// the expression's tree replaces it.
const keyPlaceholder = "pgshard_insert_key"

func ownRows(text string, owned []shardmap.Range, is *InsertSelect) (string, *Error) {
	fail := func(why string) *Error {
		return refuse("INSERT … SELECT into sharded table " + is.Table + ": " + why)
	}
	tree, err := parse(text)
	if err != nil || len(tree.Stmts) != 1 {
		return "", fail("it cannot be parsed again")
	}
	sel := tree.Stmts[0].Stmt.GetInsertStmt().GetSelectStmt().GetSelectStmt()
	if sel == nil || is.KeyIndex >= len(sel.TargetList) {
		return "", fail("it is not the statement planned")
	}
	key := sel.TargetList[is.KeyIndex].GetResTarget().GetVal()
	pred := fmt.Sprintf("CASE WHEN %s IS NULL THEN pg_catalog.concat(%s, %s)::int4 = 0 ELSE %s END", keyPlaceholder,
		sqlString("pgshard: INSERT … SELECT gave a NULL shard key, which belongs to no shard: "), sqlString(is.Table+"."+is.KeyColumn),
		shardmap.RangesSQL(owned, is.KeyType.SQLHash(keyPlaceholder)))
	ptree, err := parse("SELECT WHERE " + pred)
	if err != nil || len(ptree.Stmts) != 1 {
		return "", fail("its filter cannot be parsed")
	}
	filter := ptree.Stmts[0].Stmt.GetSelectStmt().GetWhereClause()
	var visit func(m protoreflect.Message) bool
	visit = func(m protoreflect.Message) bool {
		if n, ok := m.Interface().(*pg_query.Node); ok {
			if cr := n.GetColumnRef(); cr != nil && len(cr.Fields) == 1 && cr.Fields[0].GetString_().GetSval() == keyPlaceholder {
				n.Node = proto.Clone(key).(*pg_query.Node).Node
				return true
			}
		}
		return children(m, visit)
	}
	visit(filter.ProtoReflect())
	if sel.WhereClause == nil {
		sel.WhereClause = filter
	} else {
		sel.WhereClause = pg_query.MakeBoolExprNode(pg_query.BoolExprType_AND_EXPR, []*pg_query.Node{sel.WhereClause, filter}, -1)
	}
	out, err := pg_query.Deparse(tree)
	if err != nil {
		return "", fail("it cannot be rewritten: " + err.Error())
	}
	return out, nil
}

// sqlString quotes v as a SQL string literal.
func sqlString(v string) string { return "'" + strings.ReplaceAll(v, "'", "''") + "'" }
