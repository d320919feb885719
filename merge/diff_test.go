package merge

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

var (
	diffSeed  = flag.Uint64("merge.seed", 1, "seed of the randomized differential test")
	diffCount = flag.Int("merge.queries", 100, "queries per kind in the randomized differential test")
)

// allCols are t's columns; every one is orderable here.
var allCols = []string{"id", "g", "a", "h", "b", "n", "n2", "f", "f2", "r", "d", "ts", "tz", "u", "by", "s", "c", "bo"}

// query builds a full query, its shard rewrite and the merge spec side by
// side, as the planner would.
type query struct {
	rnd        *rand.Rand
	shardItems []string // the shards' select list
	shardFmts  []int16
	cols       []Column
	full       []string // the client's select list
	fmts       []int16
}

func (q *query) format() int16 { return int16(q.rnd.IntN(2)) }

// input adds a shard select item and returns its index.
func (q *query) input(expr string, f int16) int {
	q.shardItems = append(q.shardItems, expr)
	q.shardFmts = append(q.shardFmts, f)
	return len(q.shardItems) - 1
}

// column adds an output column (visible unless hidden) and returns its index.
func (q *query) column(fullExpr string, c Column) int {
	if !c.Hidden {
		q.full = append(q.full, fullExpr)
		q.fmts = append(q.fmts, c.Format)
	}
	q.cols = append(q.cols, c)
	return len(q.cols) - 1
}

func (q *query) spec(grouped, sorted bool, keys []SortKey, limit, offset int64, having Expr) func([]pgproto3.FieldDescription) Spec {
	return func(in []pgproto3.FieldDescription) Spec {
		return Spec{Input: in, Columns: q.cols, Grouped: grouped, SortedInput: sorted, OrderBy: keys,
			HasLimit: limit >= 0, Limit: limit, Offset: offset, Having: having}
	}
}

func orderSQL(expr string, k SortKey) string {
	s := expr
	if k.Desc {
		s += " DESC"
	}
	if k.NullsFirst {
		s += " NULLS FIRST"
	} else {
		s += " NULLS LAST"
	}
	return s
}

func limitSQL(limit, offset int64, shard bool) string {
	var s string
	switch {
	case shard && limit >= 0:
		s = fmt.Sprintf(" LIMIT %d", limit+offset)
	case !shard && limit >= 0:
		s = fmt.Sprintf(" LIMIT %d", limit)
	}
	if !shard && offset > 0 {
		s += fmt.Sprintf(" OFFSET %d", offset)
	}
	return s
}

func (q *query) limits() (int64, int64) {
	limit, offset := int64(-1), int64(0)
	if q.rnd.IntN(2) == 0 {
		limit = int64(q.rnd.IntN(30))
	}
	if q.rnd.IntN(3) == 0 {
		offset = int64(q.rnd.IntN(40))
	}
	return limit, offset
}

// randomOrderQuery: SELECT cols FROM t ORDER BY keys, id [LIMIT] [OFFSET].
func randomOrderQuery(rnd *rand.Rand) diffCase {
	q := &query{rnd: rnd}
	colIdx := map[string]int{}
	for _, c := range rand.Perm(len(allCols))[:1+rnd.IntN(5)] {
		name := allCols[c]
		f := q.format()
		colIdx[name] = q.column(name, Column{Kind: Value, Arg: q.input(name, f), Format: f})
	}
	var keys []SortKey
	var orderFull []string
	names := []string{}
	for i := 0; i < rnd.IntN(4); i++ {
		names = append(names, allCols[rnd.IntN(len(allCols))])
	}
	names = append(names, "id")
	for _, name := range names {
		idx, ok := colIdx[name]
		if !ok {
			f := q.format()
			idx = q.column(name, Column{Kind: Value, Arg: q.input(name, f), Format: f, Hidden: true})
			colIdx[name] = idx
		}
		k := SortKey{Column: idx, Desc: rnd.IntN(2) == 0, NullsFirst: rnd.IntN(2) == 0}
		keys = append(keys, k)
		orderFull = append(orderFull, orderSQL(name, k))
	}
	limit, offset := q.limits()
	order := " ORDER BY " + strings.Join(orderFull, ", ")
	return diffCase{
		Full:         "SELECT " + strings.Join(q.full, ", ") + " FROM t" + order + limitSQL(limit, offset, false),
		Shard:        "SELECT " + strings.Join(q.shardItems, ", ") + " FROM {T}" + order + limitSQL(limit, offset, true),
		Spec:         q.spec(false, false, keys, limit, offset, nil),
		Formats:      q.fmts,
		ShardFormats: q.shardFmts,
		Ordered:      true,
	}
}

// aggregate arguments by function.
var (
	sumArgs = []string{"a", "h", "b", "n", "f", "r"}
	avgArgs = []string{"a", "h", "b", "n", "f", "r"}
	minArgs = []string{"g", "a", "h", "b", "n", "f", "r", "d", "ts", "tz", "s", "c"}
	keyCols = []string{"g", "bo", "n2", "f2", "s", "c", "d", "h"}
)

// agg adds an aggregate column for fn(arg) and returns its index.
func (q *query) agg(fn, arg string, hidden bool) (int, string) {
	f := q.format()
	other := q.format() // the shards' format for count/sum/avg inputs is free
	full := fmt.Sprintf("%s(%s)", fn, arg)
	switch fn {
	case "count", "sum":
		kind := Count
		if fn == "sum" {
			kind = Sum
		}
		return q.column(full, Column{Kind: kind, Arg: q.input(full, other), Format: f, Hidden: hidden}), full
	case "min", "max", "bool_and", "every", "bool_or":
		kind := Min
		if fn == "max" || fn == "bool_or" {
			kind = Max
		}
		return q.column(full, Column{Kind: kind, Arg: q.input(full, f), Format: f, Hidden: hidden}), full
	case "avg":
		sum := fmt.Sprintf("sum(%s)", arg)
		if arg == "r" {
			sum = "sum(r::float8)"
		}
		s := q.input(sum+" AS avg", other)
		c := q.input(fmt.Sprintf("count(%s)", arg), q.format())
		return q.column(full, Column{Kind: Avg, Arg: s, Arg2: c, Format: f, Hidden: hidden}), full
	}
	panic(fn)
}

func (q *query) randomAgg(hidden bool) (int, string) {
	switch q.rnd.IntN(8) {
	case 6:
		return q.agg([]string{"bool_and", "every"}[q.rnd.IntN(2)], "bo", hidden)
	case 7:
		return q.agg("bool_or", "bo", hidden)
	case 0:
		return q.agg("count", "*", hidden)
	case 1:
		return q.agg("count", allCols[q.rnd.IntN(len(allCols))], hidden)
	case 2:
		return q.agg("sum", sumArgs[q.rnd.IntN(len(sumArgs))], hidden)
	case 3:
		return q.agg("avg", avgArgs[q.rnd.IntN(len(avgArgs))], hidden)
	case 4:
		return q.agg("min", minArgs[q.rnd.IntN(len(minArgs))], hidden)
	default:
		return q.agg("max", minArgs[q.rnd.IntN(len(minArgs))], hidden)
	}
}

// maybe returns typ or, half the time, 0: an untyped literal.
func (q *query) maybe(typ uint32) uint32 {
	if q.rnd.IntN(2) == 0 {
		return 0
	}
	return typ
}

// havingTerm returns a random HAVING condition with its SQL.
func (q *query) havingTerm() (Expr, string) {
	r := q.rnd
	switch r.IntN(7) {
	case 0:
		i, s := q.agg("count", "*", true)
		k := r.IntN(80)
		return Cmp{Op: Gt, L: Col{i}, R: Const{Type: OIDInt4, Text: fmt.Sprint(k)}}, fmt.Sprintf("%s > %d", s, k)
	case 1:
		i, s := q.agg("sum", "a", true)
		k := r.IntN(400) - 200
		return Cmp{Op: Le, L: Col{i}, R: Const{Type: OIDInt4, Text: fmt.Sprint(k)}}, fmt.Sprintf("%s <= %d", s, k)
	case 2:
		i, s := q.agg("avg", []string{"a", "n", "h"}[r.IntN(3)], true)
		k := fmt.Sprintf("%d.5", r.IntN(20)-10)
		return Cmp{Op: Lt, L: Col{i}, R: Const{Type: q.maybe(OIDNumeric), Text: k}}, fmt.Sprintf("%s < %s", s, k)
	case 3:
		i, s := q.agg("max", "s", true)
		return Cmp{Op: Ge, L: Const{Type: q.maybe(OIDText), Text: "b"}, R: Col{i}}, "'b' >= " + s
	case 4:
		i, s := q.agg("min", "d", true)
		return Cmp{Op: Lt, L: Col{i}, R: Const{Type: q.maybe(OIDDate), Text: "1500-01-01"}}, s + " < '1500-01-01'"
	case 5:
		i, s := q.agg("sum", "n", true)
		j, s2 := q.agg("count", "a", true)
		return Cmp{Op: Gt, L: Arith{Op: Div, L: Col{i}, R: Arith{Op: Add, L: Col{j}, R: Const{Type: OIDInt4, Text: "1"}}},
				R: Const{Type: OIDInt4, Text: "0"}},
			fmt.Sprintf("%s / (%s + 1) > 0", s, s2)
	default:
		i, s := q.agg("max", "f", true)
		return Not{Arg: IsNull{Arg: Col{i}}}, fmt.Sprintf("NOT (%s IS NULL)", s)
	}
}

// randomAggQuery: SELECT keys, aggs FROM t [GROUP BY keys] [HAVING ...]
// [ORDER BY ...] [LIMIT] [OFFSET].
func randomAggQuery(rnd *rand.Rand) diffCase {
	q := &query{rnd: rnd}
	var groupBy []string
	var keyIdx []int
	for _, c := range rand.Perm(len(keyCols))[:rnd.IntN(3)] {
		name := keyCols[c]
		f := q.format()
		// A group of 1, 1.0 and 1.00 (or 0 and -0) shows whichever row
		// came first, in PostgreSQL too: such keys stay hidden.
		hidden := name == "n2" || name == "f2" || rnd.IntN(4) == 0
		keyIdx = append(keyIdx, q.column(name, Column{Kind: GroupKey, Arg: q.input(name, f), Format: f, Hidden: hidden}))
		groupBy = append(groupBy, name)
	}
	var aggIdx []int
	var aggSQL []string
	for i := 0; i < 1+rnd.IntN(5); i++ {
		idx, s := q.randomAgg(false)
		aggIdx = append(aggIdx, idx)
		aggSQL = append(aggSQL, s)
	}
	var having Expr
	var havingSQL string
	if rnd.IntN(2) == 0 {
		e, s := q.havingTerm()
		if rnd.IntN(2) == 0 {
			e2, s2 := q.havingTerm()
			if rnd.IntN(2) == 0 {
				e, s = And{Args: []Expr{e, e2}}, "("+s+") AND ("+s2+")"
			} else {
				e, s = Or{Args: []Expr{e, e2}}, "("+s+") OR ("+s2+")"
			}
		}
		having, havingSQL = e, " HAVING "+s
	}
	var keys []SortKey
	var orderFull []string
	limit, offset := int64(-1), int64(0)
	ordered := len(groupBy) == 0
	sorted := len(groupBy) > 0 && rnd.IntN(2) == 0
	var shardOrder string
	if sorted {
		// Group keys first: the shards sort their groups and the merge
		// streams.
		var shardKeys []string
		for _, j := range rand.Perm(len(groupBy)) {
			k := SortKey{Column: keyIdx[j], Desc: rnd.IntN(2) == 0, NullsFirst: rnd.IntN(2) == 0}
			keys = append(keys, k)
			orderFull = append(orderFull, orderSQL(groupBy[j], k))
			shardKeys = append(shardKeys, orderSQL(groupBy[j], k))
		}
		shardOrder = " ORDER BY " + strings.Join(shardKeys, ", ")
		ordered = true
		limit, offset = q.limits()
	} else if rnd.IntN(3) > 0 {
		for i := 0; i < rnd.IntN(3); i++ {
			j := rnd.IntN(len(aggIdx))
			k := SortKey{Column: aggIdx[j], Desc: rnd.IntN(2) == 0, NullsFirst: rnd.IntN(2) == 0}
			keys = append(keys, k)
			orderFull = append(orderFull, orderSQL(aggSQL[j], k))
		}
		for j, name := range groupBy {
			k := SortKey{Column: keyIdx[j], Desc: rnd.IntN(2) == 0, NullsFirst: rnd.IntN(2) == 0}
			keys = append(keys, k)
			orderFull = append(orderFull, orderSQL(name, k))
		}
		ordered = true
		limit, offset = q.limits()
	}
	grouped := len(groupBy) > 0
	var gb, order string
	if grouped {
		gb = " GROUP BY " + strings.Join(groupBy, ", ")
	}
	if len(orderFull) > 0 {
		order = " ORDER BY " + strings.Join(orderFull, ", ")
	}
	return diffCase{
		Full:         "SELECT " + strings.Join(q.full, ", ") + " FROM t" + gb + havingSQL + order + limitSQL(limit, offset, false),
		Shard:        "SELECT " + strings.Join(q.shardItems, ", ") + " FROM {T}" + gb + shardOrder,
		Spec:         q.spec(grouped, sorted, keys, limit, offset, having),
		Formats:      q.fmts,
		ShardFormats: q.shardFmts,
		Ordered:      ordered,
	}
}

// TestDifferentialRandom runs random ORDER BY/LIMIT and GROUP BY/HAVING
// queries directly on t and merged over its 1-4 shard splits, in random
// text and binary formats, and compares descriptions, rows and tags.
func TestDifferentialRandom(t *testing.T) {
	db := setupRealDB(t, *diffSeed)
	rnd := rand.New(rand.NewPCG(*diffSeed, 2))
	rows, empty := 0, 0
	for i := 0; i < *diffCount; i++ {
		rows += db.check(t, fmt.Sprintf("order #%d", i), randomOrderQuery(rnd))
		n := db.check(t, fmt.Sprintf("agg #%d", i), randomAggQuery(rnd))
		if n == 0 {
			empty++
		}
		rows += n
		if t.Failed() {
			t.Logf("seed %d", *diffSeed)
			return
		}
	}
	t.Logf("seed %d: %d queries, each merged over %v shards; %d rows compared; %d aggregate queries with no rows",
		*diffSeed, 2**diffCount, shardCounts, rows, empty)
}
