package merge

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestDifferentialCases runs named queries directly and merged over 1-4
// shards, in text and in binary format.
func TestDifferentialCases(t *testing.T) {
	db := setupRealDB(t, 42)
	type tc struct {
		name, full, shard string
		spec              func(f int16) Spec
		ordered           bool
		wantErr           string
	}
	withFormat := func(cols []Column, f int16) []Column {
		out := append([]Column(nil), cols...)
		for i := range out {
			out[i].Format = f
		}
		return out
	}
	cases := []tc{
		{"order multi-key desc nulls", "SELECT id, g, s, n FROM t ORDER BY g DESC NULLS LAST, s NULLS FIRST, n DESC, id",
			"SELECT id, g, s, n FROM {T} ORDER BY g DESC NULLS LAST, s NULLS FIRST, n DESC, id",
			func(f int16) Spec {
				return Spec{Columns: withFormat(plain(4), f), OrderBy: []SortKey{{Column: 1, Desc: true},
					{Column: 2, NullsFirst: true}, {Column: 3, Desc: true, NullsFirst: true}, {Column: 0}}}
			}, true, ""},
		{"order by hidden column, limit offset", "SELECT s, tz FROM t ORDER BY f NULLS FIRST, id DESC LIMIT 25 OFFSET 10",
			"SELECT s, tz, f, id FROM {T} ORDER BY f NULLS FIRST, id DESC LIMIT 35",
			func(f int16) Spec {
				cols := withFormat(plain(4), f)
				cols[2].Hidden, cols[3].Hidden = true, true
				return Spec{Columns: cols, HasLimit: true, Limit: 25, Offset: 10, OrderBy: []SortKey{{Column: 2, NullsFirst: true}, {Column: 3, Desc: true, NullsFirst: true}}}
			}, true, ""},
		{"limit 0", "SELECT id FROM t ORDER BY id LIMIT 0", "SELECT id FROM {T} ORDER BY id LIMIT 0",
			func(f int16) Spec {
				return Spec{Columns: withFormat(plain(1), f), HasLimit: true, Limit: 0, OrderBy: []SortKey{{Column: 0}}}
			}, true, ""},
		{"count distinct", "SELECT g, count(DISTINCT n2), count(DISTINCT f2), count(DISTINCT c), count(DISTINCT s), count(*), sum(h), max(d) FROM t GROUP BY g ORDER BY g",
			"SELECT g, n2 AS count, f2 AS count, c AS count, s AS count, count(*), sum(h), max(d) FROM {T} GROUP BY g, n2, f2, c, s",
			func(f int16) Spec {
				cols := []Column{{Kind: GroupKey, Arg: 0}, {Kind: CountDistinct, Arg: 1}, {Kind: CountDistinct, Arg: 2}, {Kind: CountDistinct, Arg: 3},
					{Kind: CountDistinct, Arg: 4}, {Kind: Count, Arg: 5}, {Kind: Sum, Arg: 6}, {Kind: Max, Arg: 7}}
				return Spec{Columns: withFormat(cols, f), Grouped: true, OrderBy: []SortKey{{Column: 0}}}
			}, true, ""},
		{"count distinct of nothing, and having", "SELECT count(DISTINCT s), count(*) FROM t WHERE a > 1000 HAVING count(DISTINCT s) = 0",
			"SELECT s AS count, count(*) FROM {T} WHERE a > 1000 GROUP BY s",
			func(f int16) Spec {
				cols := withFormat([]Column{{Kind: CountDistinct, Arg: 0}, {Kind: Count, Arg: 1}}, f)
				return Spec{Columns: cols, Having: Cmp{Op: Eq, L: Col{0}, R: Const{Text: "0"}}}
			}, true, ""},
		{"having count distinct", "SELECT bo, count(DISTINCT n) AS k FROM t GROUP BY bo HAVING count(DISTINCT g) > 11 ORDER BY k DESC",
			"SELECT bo, n AS k, g FROM {T} GROUP BY bo, n, g",
			func(f int16) Spec {
				cols := withFormat([]Column{{Kind: GroupKey, Arg: 0}, {Kind: CountDistinct, Arg: 1}, {Kind: CountDistinct, Arg: 2, Hidden: true}}, f)
				return Spec{Columns: cols, Grouped: true, Having: Cmp{Op: Gt, L: Col{2}, R: Const{Text: "11"}},
					OrderBy: []SortKey{{Column: 1, Desc: true, NullsFirst: true}}}
			}, true, ""},
		{"distinct on", "SELECT DISTINCT ON (g) g, id FROM t ORDER BY g, id DESC",
			"SELECT DISTINCT ON (g) g, id FROM {T} ORDER BY g, id DESC",
			func(f int16) Spec {
				return Spec{Columns: withFormat(plain(2), f), DistinctOn: 1, OrderBy: []SortKey{{Column: 0}, {Column: 1, Desc: true, NullsFirst: true}}}
			}, true, ""},
		{"distinct on hidden keys, limit offset", "SELECT DISTINCT ON (bo, g) id FROM t ORDER BY g DESC, bo, id LIMIT 5 OFFSET 2",
			"SELECT DISTINCT ON (bo, g) id, g, bo FROM {T} ORDER BY g DESC, bo, id LIMIT 7",
			func(f int16) Spec {
				cols := withFormat(plain(3), f)
				cols[1].Hidden, cols[2].Hidden = true, true
				return Spec{Columns: cols, DistinctOn: 2, HasLimit: true, Limit: 5, Offset: 2,
					OrderBy: []SortKey{{Column: 1, Desc: true, NullsFirst: true}, {Column: 2}, {Column: 0}}}
			}, true, ""},
		{"with ties", "SELECT g FROM t ORDER BY g NULLS FIRST FETCH FIRST 10 ROWS WITH TIES",
			"SELECT g FROM {T} ORDER BY g NULLS FIRST FETCH FIRST 10 ROWS WITH TIES",
			func(f int16) Spec {
				return Spec{Columns: withFormat(plain(1), f), HasLimit: true, Limit: 10, WithTies: true, OrderBy: []SortKey{{Column: 0, NullsFirst: true}}}
			}, true, ""},
		{"with ties after an offset", "SELECT g, bo FROM t ORDER BY g DESC, bo OFFSET 5 ROWS FETCH FIRST 12 ROWS WITH TIES",
			"SELECT g, bo FROM {T} ORDER BY g DESC, bo FETCH FIRST 17 ROWS WITH TIES",
			func(f int16) Spec {
				return Spec{Columns: withFormat(plain(2), f), HasLimit: true, Limit: 12, Offset: 5, WithTies: true,
					OrderBy: []SortKey{{Column: 0, Desc: true, NullsFirst: true}, {Column: 1}}}
			}, true, ""},
		{"with ties of 0 rows", "SELECT g FROM t ORDER BY g FETCH FIRST 0 ROWS WITH TIES", "SELECT g FROM {T} ORDER BY g FETCH FIRST 0 ROWS WITH TIES",
			func(f int16) Spec {
				return Spec{Columns: withFormat(plain(1), f), HasLimit: true, Limit: 0, WithTies: true, OrderBy: []SortKey{{Column: 0}}}
			}, true, ""},
		{"groups with ties", "SELECT count(*) FROM t GROUP BY g ORDER BY 1 DESC FETCH FIRST 2 ROWS WITH TIES",
			"SELECT count(*), g FROM {T} GROUP BY g",
			func(f int16) Spec {
				cols := withFormat([]Column{{Kind: Count, Arg: 0}, {Kind: GroupKey, Arg: 1, Hidden: true}}, f)
				return Spec{Columns: cols, Grouped: true, HasLimit: true, Limit: 2, WithTies: true, OrderBy: []SortKey{{Column: 0, Desc: true, NullsFirst: true}}}
			}, true, ""},
		{"concatenation", "SELECT id, by, u FROM t", "SELECT id, by, u FROM {T}",
			func(f int16) Spec { return Spec{Columns: withFormat(plain(3), f)} }, false, ""},
		{"aggregates by group with having",
			"SELECT g, count(*), count(a), sum(a), sum(b), sum(n), sum(f), min(a), max(n), min(s), max(tz), avg(a), avg(b), avg(n), avg(f) " +
				"FROM t GROUP BY g HAVING count(*) > 50 AND sum(a) / count(a) < 10 ORDER BY g",
			"SELECT g, count(*), count(a), sum(a), sum(b), sum(n), sum(f), min(a), max(n), min(s), max(tz), " +
				"sum(a) AS avg, count(a), sum(b) AS avg, count(b), sum(n) AS avg, count(n), sum(f) AS avg, count(f) FROM {T} GROUP BY g",
			func(f int16) Spec {
				cols := []Column{{Kind: GroupKey, Arg: 0}, {Kind: Count, Arg: 1}, {Kind: Count, Arg: 2}, {Kind: Sum, Arg: 3},
					{Kind: Sum, Arg: 4}, {Kind: Sum, Arg: 5}, {Kind: Sum, Arg: 6}, {Kind: Min, Arg: 7}, {Kind: Max, Arg: 8},
					{Kind: Min, Arg: 9}, {Kind: Max, Arg: 10}, {Kind: Avg, Arg: 11, Arg2: 12}, {Kind: Avg, Arg: 13, Arg2: 14},
					{Kind: Avg, Arg: 15, Arg2: 16}, {Kind: Avg, Arg: 17, Arg2: 18}}
				return Spec{Columns: withFormat(cols, f), Grouped: true, OrderBy: []SortKey{{Column: 0}},
					Having: And{Args: []Expr{Cmp{Op: Gt, L: Col{1}, R: Const{Text: "50"}},
						Cmp{Op: Lt, L: Arith{Op: Div, L: Col{3}, R: Col{2}}, R: Const{Text: "10"}}}}}
			}, true, ""},
		{"aggregates of nothing", "SELECT count(*), sum(a), avg(b), min(d) FROM t WHERE a > 1000",
			"SELECT count(*), sum(a), sum(b) AS avg, count(b), min(d) FROM {T} WHERE a > 1000",
			func(f int16) Spec {
				return Spec{Columns: withFormat([]Column{{Kind: Count, Arg: 0}, {Kind: Sum, Arg: 1}, {Kind: Avg, Arg: 2, Arg2: 3},
					{Kind: Min, Arg: 4}}, f)}
			}, true, ""},
		{"grouped nothing", "SELECT g, count(*) FROM t WHERE a > 1000 GROUP BY g",
			"SELECT g, count(*) FROM {T} WHERE a > 1000 GROUP BY g",
			func(f int16) Spec {
				return Spec{Columns: withFormat([]Column{{Kind: GroupKey, Arg: 0}, {Kind: Count, Arg: 1}}, f), Grouped: true}
			}, false, ""},
		{"distinct", "SELECT DISTINCT g, bo FROM t ORDER BY bo DESC, g LIMIT 15",
			"SELECT DISTINCT g, bo FROM {T}",
			func(f int16) Spec {
				return Spec{Columns: withFormat([]Column{{Kind: GroupKey, Arg: 0}, {Kind: GroupKey, Arg: 1}}, f), Grouped: true,
					OrderBy: []SortKey{{Column: 1, Desc: true, NullsFirst: true}, {Column: 0}}, HasLimit: true, Limit: 15}
			}, true, ""},
		{"count distinct of the shard key", "SELECT g, count(DISTINCT id) FROM t GROUP BY g ORDER BY 2 DESC, 1",
			"SELECT g, count(DISTINCT id) FROM {T} GROUP BY g ORDER BY g",
			func(f int16) Spec {
				return Spec{Columns: withFormat([]Column{{Kind: GroupKey, Arg: 0}, {Kind: Count, Arg: 1}}, f), Grouped: true,
					OrderBy: []SortKey{{Column: 1, Desc: true, NullsFirst: true}, {Column: 0}}}
			}, true, ""},
		{"sorted groups with limit", "SELECT d, count(*), max(ts) FROM t GROUP BY d ORDER BY d DESC LIMIT 7 OFFSET 3",
			"SELECT d, count(*), max(ts) FROM {T} GROUP BY d ORDER BY d DESC",
			func(f int16) Spec {
				return Spec{Columns: withFormat([]Column{{Kind: GroupKey, Arg: 0}, {Kind: Count, Arg: 1}, {Kind: Max, Arg: 2}}, f),
					Grouped: true, SortedInput: true, OrderBy: []SortKey{{Column: 0, Desc: true, NullsFirst: true}}, HasLimit: true, Limit: 7, Offset: 3}
			}, true, ""},
		{"having on hidden aggregates and strings", "SELECT c, sum(h) FROM t GROUP BY c HAVING max(s) > 'b' OR min(d) < '1000-01-01' ORDER BY c",
			"SELECT c, sum(h), max(s), min(d) FROM {T} GROUP BY c",
			func(f int16) Spec {
				cols := withFormat([]Column{{Kind: GroupKey, Arg: 0}, {Kind: Sum, Arg: 1}, {Kind: Max, Arg: 2, Hidden: true},
					{Kind: Min, Arg: 3, Hidden: true}}, f)
				return Spec{Columns: cols, Grouped: true, OrderBy: []SortKey{{Column: 0}},
					Having: Or{Args: []Expr{Cmp{Op: Gt, L: Col{2}, R: Const{Text: "b"}}, Cmp{Op: Lt, L: Col{3}, R: Const{Text: "1000-01-01"}}}}}
			}, true, ""},
	}
	cases = append(cases,
		tc{"having divides by zero", "SELECT g FROM t GROUP BY g HAVING sum(a) / (count(*) - count(*)) > 0",
			"SELECT g, sum(a), count(*) FROM {T} GROUP BY g",
			func(f int16) Spec {
				return Spec{Columns: withFormat([]Column{{Kind: GroupKey, Arg: 0}, {Kind: Sum, Arg: 1, Hidden: true},
					{Kind: Count, Arg: 2, Hidden: true}}, f), Grouped: true,
					Having: Cmp{Op: Gt, L: Arith{Op: Div, L: Col{1}, R: Arith{Op: Sub, L: Col{2}, R: Col{2}}}, R: Const{Text: "0"}}}
			}, false, CodeDivisionByZero},
		tc{"having overflows integer", "SELECT g FROM t GROUP BY g HAVING max(h) * 100000 > 0",
			"SELECT g, max(h) FROM {T} GROUP BY g",
			func(f int16) Spec {
				return Spec{Columns: withFormat([]Column{{Kind: GroupKey, Arg: 0}, {Kind: Max, Arg: 1, Hidden: true}}, f), Grouped: true,
					Having: Cmp{Op: Gt, L: Arith{Op: Mul, L: Col{1}, R: Const{Text: "100000"}}, R: Const{Text: "0"}}}
			}, false, CodeNumericOutOfRange},
	)
	for _, c := range cases {
		for _, f := range []int16{TextFormat, BinaryFormat} {
			spec := c.spec(f)
			n := 0
			for _, col := range spec.Columns {
				n = max(n, col.Arg+1, col.Arg2+1)
			}
			db.check(t, fmt.Sprintf("%s (format %d)", c.name, f), diffCase{
				Full: c.full, Shard: c.shard, Ordered: c.ordered, WantErr: c.wantErr,
				Formats: formats(len(db.describe(t, c.full)), f), ShardFormats: formats(n, f),
				Spec: func(in []pgproto3.FieldDescription) Spec {
					s := c.spec(f)
					s.Input = in
					return s
				},
			})
		}
	}
}

// describe returns the fields of a query's result.
func (db *realDB) describe(t *testing.T, sql string) []pgproto3.FieldDescription {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sd, err := db.conns[0].Prepare(ctx, "", sql, nil)
	if err != nil {
		t.Fatal(err)
	}
	return toFields(sd.Fields)
}

// TestAvgScale checks the documented example against PostgreSQL: avg of 1
// and 2, on two shards, is 1.5000000000000000.
func TestAvgScale(t *testing.T) {
	c := connectReal(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res := c.ExecParams(ctx, "SELECT avg(x) FROM (VALUES (1), (2)) v(x)", nil, nil, nil, nil).Read()
	if res.Err != nil {
		t.Fatal(res.Err)
	}
	in := fields(OIDInt8, OIDInt8)
	got, err := runMerge(t, Spec{Input: in, Columns: []Column{{Kind: Avg, Arg: 0, Arg2: 1}}}, "1,1", "2,1")
	if err != nil {
		t.Fatal(err)
	}
	if got != string(res.Rows[0][0]) || got != "1.5000000000000000" {
		t.Errorf("merged %s, PostgreSQL %s", got, res.Rows[0][0])
	}
}
