package router

import (
	"errors"
	"strconv"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
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
	if len(sel.ValuesLists) == 0 || len(sel.FromClause) > 0 || sel.WithClause != nil || len(sel.SortClause) > 0 || sel.LimitCount != nil {
		b.refuse("INSERT … SELECT into sharded table %s: only INSERT … VALUES is routed by its shard key", name)
		return
	}
	keyIdx := -1
	if len(ins.Cols) > 0 {
		for i, c := range ins.Cols {
			if rt := c.GetResTarget(); rt != nil && rt.Name == info.KeyColumn && len(rt.Indirection) == 0 {
				keyIdx = i
			}
		}
		if keyIdx < 0 {
			b.refuse("INSERT into sharded table %s without its shard key column %s", name, info.KeyColumn)
			return
		}
	} else if info.KeyOrdinal > 0 {
		keyIdx = info.KeyOrdinal - 1
	} else {
		b.refuse("INSERT into sharded table %s without a column list: name the columns, including the shard key %s", name, info.KeyColumn)
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
	if oc := ins.OnConflictClause; oc != nil && oc.Action == pg_query.OnConflictAction_ONCONFLICT_UPDATE {
		for _, t := range oc.TargetList {
			if rt := t.GetResTarget(); rt != nil && rt.Name == info.KeyColumn {
				b.refuse("INSERT … ON CONFLICT DO UPDATE that sets the shard key column %s of %s", info.KeyColumn, name)
				return
			}
		}
	}
	b.walkOnConflict(ins.OnConflictClause, sc)
	b.walkList(ins.ReturningList, sc)
	for _, o := range b.occs {
		if o.info.Kind == TableSharded {
			b.refuse("INSERT into sharded table %s with a subquery on sharded table %s", name, o.table)
			return
		}
	}
	b.t.insert = vals
	b.t.ins = &group{ktype: info.KeyType, names: []string{name}}
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
