package router

import (
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestPlanSplitInsert(t *testing.T) {
	r := testRing(t)
	a, b, c := pick(t, r)
	A, B, C := strconv.FormatInt(a, 10), strconv.FormatInt(b, 10), strconv.FormatInt(c, 10)
	p := NewPlanner(PlannerConfig{Catalog: planCat})

	sql := "INSERT INTO users (name, user_id) VALUES ('a(', " + A + "), ('b', " + B + ") , ('c;', " + C + ") ON CONFLICT (user_id) DO NOTHING RETURNING user_id"
	pl := p.Plan(sql, nil, r)
	if pl.Kind != Multi || len(pl.Shards) != 2 {
		t.Fatalf("plan %+v", pl)
	}
	got := map[string]string{}
	for i, sh := range pl.Shards {
		text, params, err := SplitInsert(sql, pl.Rows[i])
		if err != nil || params != nil {
			t.Fatalf("split: %v %v", err, params)
		}
		got[sh] = text
		// Each piece routes to its own shard alone.
		if sub := p.Plan(text, nil, r); sub.Kind != Single || sub.Shard != sh {
			t.Errorf("piece %q plans %v %s, want single %s", text, sub.Kind, sub.Shard, sh)
		}
	}
	wantA := "INSERT INTO users (name, user_id) VALUES ('a(', " + A + "), ('c;', " + C + ") ON CONFLICT (user_id) DO NOTHING RETURNING user_id"
	wantB := "INSERT INTO users (name, user_id) VALUES ('b', " + B + ") ON CONFLICT (user_id) DO NOTHING RETURNING user_id"
	if got[shardOf(r, a)] != wantA || got[shardOf(r, b)] != wantB {
		t.Errorf("split:\n%q\n%q", got[shardOf(r, a)], got[shardOf(r, b)])
	}

	// Extended protocol: parameters renumbered, the map says which go where.
	esql := "INSERT INTO users (user_id, name) VALUES ($1, $2), ($3, $4), ($5, $2) RETURNING $6::int"
	params := &Params{Values: [][]byte{[]byte(A), []byte("x"), []byte(B), []byte("y"), []byte(C), []byte("7")}}
	pl = p.Plan(esql, params, r)
	if pl.Kind != Multi {
		t.Fatalf("plan %+v", pl)
	}
	for i, sh := range pl.Shards {
		text, idx, err := SplitInsert(esql, pl.Rows[i])
		if err != nil {
			t.Fatal(err)
		}
		switch sh {
		case shardOf(r, a):
			if text != "INSERT INTO users (user_id, name) VALUES ($1, $2), ($3, $2) RETURNING $4::int" || !slices.Equal(idx, []int{0, 1, 4, 5}) {
				t.Errorf("shard a: %q %v", text, idx)
			}
		case shardOf(r, b):
			if text != "INSERT INTO users (user_id, name) VALUES ($1, $2) RETURNING $3::int" || !slices.Equal(idx, []int{2, 3, 5}) {
				t.Errorf("shard b: %q %v", text, idx)
			}
		}
	}
	if _, _, err := SplitInsert("SELECT 1", []int{0}); err != ErrNoValues {
		t.Errorf("no VALUES: %v", err)
	}
}

func TestPlanMerge(t *testing.T) {
	r := testRing(t)
	p := NewPlanner(PlannerConfig{Catalog: planCat})
	tests := []struct {
		sql      string
		params   *Params
		merge    *Merge // nil: no merge needed
		shardSQL string // "" : the original
		having   string
		limit    int64
		offset   int64
	}{
		{sql: "SELECT * FROM users", limit: -1, offset: -1},
		{sql: "SELECT name, user_id FROM users ORDER BY user_id DESC, 1 NULLS FIRST LIMIT 10 OFFSET 5",
			merge:    &Merge{OrderBy: []SortKey{{Col: 1, Desc: true, NullsFirst: true}, {Col: 0, NullsFirst: true}}, HasLimit: true, HasOffset: true},
			shardSQL: "SELECT name, user_id FROM users ORDER BY user_id DESC, 1 NULLS FIRST LIMIT 10::bigint + 5::bigint",
			limit:    10, offset: 5},
		{sql: "SELECT * FROM users ORDER BY created LIMIT $1 OFFSET $2", params: &Params{Values: [][]byte{[]byte("20"), []byte("40")}},
			merge:    &Merge{Hidden: 1, OrderBy: []SortKey{{Col: -1}}, HasLimit: true, HasOffset: true},
			shardSQL: "SELECT *, created AS pgshard_hidden_1 FROM users ORDER BY created LIMIT $1::bigint + $2::bigint",
			limit:    20, offset: 40},
		{sql: "SELECT count(*), sum(balance), min(name), max(name), avg(balance) FROM users",
			merge: &Merge{Hidden: 1, Grouped: true, Aggs: []Agg{{Col: 0, Func: AggCount}, {Col: 1, Func: AggSum}, {Col: 2, Func: AggMin},
				{Col: 3, Func: AggMax}, {Col: 4, Func: AggAvg, CountCol: -1}}},
			shardSQL: "SELECT count(*), sum(balance), min(name), max(name), sum(balance) AS avg, count(balance) AS pgshard_hidden_1 FROM users",
			limit:    -1, offset: -1},
		{sql: "SELECT country, count(*) AS n FROM users GROUP BY country HAVING count(*) > 5 AND avg(balance) >= 10 ORDER BY n DESC LIMIT 3",
			merge: &Merge{Hidden: 2, Grouped: true, GroupBy: []int{0}, Aggs: []Agg{{Col: 1, Func: AggCount}, {Col: -1, Func: AggAvg, CountCol: -2}},
				OrderBy: []SortKey{{Col: 1, Desc: true, NullsFirst: true}}, HasLimit: true},
			shardSQL: "SELECT country, count(*) AS n, sum(balance) AS pgshard_hidden_1, count(balance) AS pgshard_hidden_2 FROM users GROUP BY country ORDER BY n DESC",
			having:   "((col(1) > 5) and (col(-1) >= 10))",
			limit:    3, offset: -1},
		{sql: "SELECT country, bool_and(active), every(balance > 0), bool_or(active) FROM users GROUP BY country HAVING bool_or(balance < 0)",
			merge: &Merge{Hidden: 1, Grouped: true, GroupBy: []int{0}, Aggs: []Agg{{Col: 1, Func: AggMin}, {Col: 2, Func: AggMin},
				{Col: 3, Func: AggMax}, {Col: -1, Func: AggMax}}},
			shardSQL: "SELECT country, bool_and(active), every(balance > 0), bool_or(active), bool_or(balance < 0) AS pgshard_hidden_1 FROM users GROUP BY country",
			having:   "col(-1)",
			limit:    -1, offset: -1},
		{sql: "SELECT DISTINCT ON (country, name) user_id FROM users ORDER BY name, country, created DESC LIMIT 4 OFFSET 1",
			merge: &Merge{Hidden: 3, OrderBy: []SortKey{{Col: -1}, {Col: -2}, {Col: -3, Desc: true, NullsFirst: true}},
				HasLimit: true, HasOffset: true, DistinctOn: 2},
			shardSQL: "SELECT DISTINCT ON (country, name) user_id, name AS pgshard_hidden_1, country AS pgshard_hidden_2, created AS pgshard_hidden_3 FROM users ORDER BY name, country, created DESC LIMIT 4::bigint + 1::bigint",
			limit:    4, offset: 1},
		{sql: "SELECT country, count(DISTINCT name), count(*), avg(balance) FROM users GROUP BY country HAVING count(DISTINCT lower(name)) > 1 ORDER BY 2 DESC",
			merge: &Merge{Hidden: 2, Grouped: true, GroupBy: []int{0}, Aggs: []Agg{{Col: 1, Func: AggCountDistinct}, {Col: 2, Func: AggCount},
				{Col: 3, Func: AggAvg, CountCol: -1}, {Col: -2, Func: AggCountDistinct}},
				OrderBy: []SortKey{{Col: 1, Desc: true, NullsFirst: true}}},
			shardSQL: "SELECT country, name AS count, count(*), sum(balance) AS avg, count(balance) AS pgshard_hidden_1, lower(name) AS pgshard_hidden_2 FROM users GROUP BY country, name, lower(name) ORDER BY 2 DESC",
			having:   "(col(-2) > 1)",
			limit:    -1, offset: -1},
		// HAVING and ORDER BY name a target's aggregate: found as written,
		// not as the shards' rewrite of it (no extra hidden columns).
		{sql: "SELECT country, avg(balance) FROM users GROUP BY country HAVING avg(balance) > 1 ORDER BY avg(balance)",
			merge: &Merge{Hidden: 1, Grouped: true, GroupBy: []int{0}, Aggs: []Agg{{Col: 1, Func: AggAvg, CountCol: -1}},
				OrderBy: []SortKey{{Col: 1}}},
			shardSQL: "SELECT country, sum(balance) AS avg, count(balance) AS pgshard_hidden_1 FROM users GROUP BY country ORDER BY avg(balance)",
			having:   "(col(1) > 1)",
			limit:    -1, offset: -1},
		{sql: "SELECT country, count(DISTINCT name) AS n FROM users GROUP BY country HAVING count(DISTINCT name) > 4 ORDER BY count(DISTINCT name) DESC",
			merge: &Merge{Grouped: true, GroupBy: []int{0}, Aggs: []Agg{{Col: 1, Func: AggCountDistinct}},
				OrderBy: []SortKey{{Col: 1, Desc: true, NullsFirst: true}}},
			shardSQL: "SELECT country, name AS n FROM users GROUP BY country, name ORDER BY count(DISTINCT name) DESC",
			having:   "(col(1) > 4)",
			limit:    -1, offset: -1},
		{sql: "SELECT count(DISTINCT user_id), count(DISTINCT name) FROM users",
			merge:    &Merge{Grouped: true, Aggs: []Agg{{Col: 0, Func: AggCountDistinct}, {Col: 1, Func: AggCountDistinct}}},
			shardSQL: "SELECT user_id AS count, name AS count FROM users GROUP BY user_id, name",
			limit:    -1, offset: -1},
		{sql: "SELECT country, count(DISTINCT 5) FROM users GROUP BY country",
			merge:    &Merge{Grouped: true, GroupBy: []int{0}, Aggs: []Agg{{Col: 1, Func: AggCountDistinct}}},
			shardSQL: "SELECT country, 5 AS count FROM users GROUP BY country",
			limit:    -1, offset: -1},
		{sql: "SELECT count(DISTINCT user_id) FROM users",
			merge: &Merge{Grouped: true, Aggs: []Agg{{Col: 0, Func: AggCount}}}, limit: -1, offset: -1},
		{sql: "SELECT count(DISTINCT name) FROM users",
			merge:    &Merge{Grouped: true, Aggs: []Agg{{Col: 0, Func: AggCountDistinct}}},
			shardSQL: "SELECT name AS count FROM users GROUP BY name",
			limit:    -1, offset: -1},
		{sql: "SELECT name FROM users ORDER BY name FETCH FIRST 3 ROWS WITH TIES",
			merge: &Merge{OrderBy: []SortKey{{Col: 0}}, HasLimit: true, WithTies: true}, limit: 3, offset: -1},
		{sql: "SELECT name FROM users ORDER BY name OFFSET 2 ROWS FETCH FIRST 3 ROWS WITH TIES",
			merge:    &Merge{OrderBy: []SortKey{{Col: 0}}, HasLimit: true, HasOffset: true, WithTies: true},
			shardSQL: "SELECT name FROM users ORDER BY name FETCH FIRST (3::bigint + 2::bigint) ROWS WITH TIES",
			limit:    3, offset: 2},
		{sql: "SELECT country, count(*) FROM users GROUP BY country ORDER BY 2 DESC FETCH FIRST 1 ROW WITH TIES",
			merge:    &Merge{Grouped: true, GroupBy: []int{0}, Aggs: []Agg{{Col: 1, Func: AggCount}}, OrderBy: []SortKey{{Col: 1, Desc: true, NullsFirst: true}}, HasLimit: true, WithTies: true},
			shardSQL: "SELECT country, count(*) FROM users GROUP BY country ORDER BY 2 DESC",
			limit:    1, offset: -1},
		{sql: "SELECT lower(name), count(*) FROM users GROUP BY lower(name), country",
			merge:    &Merge{Hidden: 1, Grouped: true, GroupBy: []int{0, -1}, Aggs: []Agg{{Col: 1, Func: AggCount}}},
			shardSQL: "SELECT lower(name), count(*), country AS pgshard_hidden_1 FROM users GROUP BY lower(name), country",
			limit:    -1, offset: -1},
		{sql: "SELECT DISTINCT country FROM users LIMIT 5",
			merge:    &Merge{Distinct: true, HasLimit: true},
			shardSQL: "SELECT DISTINCT country FROM users",
			limit:    5, offset: -1},
		{sql: "SELECT u.name, c.name FROM users u JOIN countries c ON c.code = u.country WHERE u.user_id IN (1, 2, 3, 4, 5, 6) ORDER BY 1",
			merge: &Merge{OrderBy: []SortKey{{Col: 0}}}, limit: -1, offset: -1},
	}
	for _, tc := range tests {
		pl := p.Plan(tc.sql, tc.params, r)
		if pl.Kind != Scatter && pl.Kind != Multi {
			t.Errorf("%s: %v %v", tc.sql, pl.Kind, pl.Err)
			continue
		}
		m := pl.Merge
		having := ""
		if m != nil && m.Having != nil {
			having = m.Having.String()
			mm := *m
			mm.Having = nil
			m = &mm
		}
		if !reflect.DeepEqual(m, tc.merge) {
			t.Errorf("%s:\nmerge %+v\nwant  %+v", tc.sql, m, tc.merge)
		}
		if having != tc.having {
			t.Errorf("%s: having %s, want %s", tc.sql, having, tc.having)
		}
		if pl.ShardSQL != tc.shardSQL {
			t.Errorf("%s:\nshard SQL %q\nwant      %q", tc.sql, pl.ShardSQL, tc.shardSQL)
		}
		if pl.Limit != tc.limit || pl.Offset != tc.offset {
			t.Errorf("%s: limit %d offset %d", tc.sql, pl.Limit, pl.Offset)
		}
	}
	// Merge.Col resolves hidden columns from the end.
	m := &Merge{Hidden: 2}
	if m.Col(-1, 7) != 5 || m.Col(-2, 7) != 6 || m.Col(3, 7) != 3 {
		t.Error("Merge.Col")
	}
	// Refusals that only apply across shards.
	for sql, want := range map[string]string{
		"SELECT country, count(*) FROM users GROUP BY country HAVING string_agg(name, ',') = 'x'": "aggregate string_agg() across shards",
		"SELECT country FROM users GROUP BY country HAVING random() > 0.5":                        "neither grouped nor an aggregate",
		"SELECT 1 FROM users ORDER BY count(*)":                                                   "neither grouped nor an aggregate",
		"SELECT * FROM users ORDER BY name USING <":                                               "USING",
		"SELECT * FROM users LIMIT (SELECT 3)":                                                    "LIMIT with an expression",
		`SELECT name FROM users ORDER BY name COLLATE "und-x-icu"`:                                `COLLATE "und-x-icu" across shards`,
		`SELECT min(name COLLATE "en_US") FROM users`:                                             `COLLATE "en_US" across shards`,
		`SELECT name COLLATE pg_catalog."default" FROM users GROUP BY 1`:                          `COLLATE "default" across shards`,
	} {
		pl := p.Plan(sql, nil, r)
		if pl.Kind != Refuse || !strings.Contains(pl.Err.Message, want) {
			t.Errorf("%s: %v %v, want %q", sql, pl.Kind, pl.Err, want)
		}
	}
}
