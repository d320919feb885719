package router

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/pgshard/pgshard/shardmap"
)

var exclOne = []shardmap.Range{{Start: -100, End: 200}}
var exclTwo = []shardmap.Range{{Start: -100, End: 200}, {Start: 9000, End: -9000}}

// exclusion is the conjunct ExcludeMoving adds for the key reference ref.
func exclusion(ranges []shardmap.Range, kt shardmap.KeyType, ref string) string {
	return "(" + shardmap.RangesSQL(ranges, kt.SQLHash(ref)) + ") IS NOT TRUE"
}

// canon deparses sql, so that texts compare whatever their spelling.
func canon(t *testing.T, sql string) string {
	t.Helper()
	tree, err := pg_query.Parse(sql)
	if err != nil {
		t.Fatalf("parse %q: %v", sql, err)
	}
	out, err := pg_query.Deparse(tree)
	if err != nil {
		t.Fatalf("deparse %q: %v", sql, err)
	}
	return out
}

func TestExcludeMovingRewrites(t *testing.T) {
	p := NewPlanner(PlannerConfig{Catalog: planCat})
	for _, excl := range [][]shardmap.Range{exclOne, exclTwo} {
		o := func(ref string) string { return exclusion(excl, shardmap.KeyInt, ref) }
		cases := []struct{ in, want string }{
			{"SELECT count(*) FROM orders", "SELECT count(*) FROM orders WHERE " + o("orders.user_id")},
			{"select * from orders o where v > 3 or v < 1", "SELECT * FROM orders o WHERE (v > 3 OR v < 1) AND " + o("o.user_id")},
			{"SELECT * FROM orders o WHERE v > 3 AND v < $1", "SELECT * FROM orders o WHERE v > 3 AND v < $1 AND " + o("o.user_id")},
			// Reference tables joined: only the sharded table is filtered.
			{"SELECT o.v, c.name FROM orders o JOIN countries c ON c.code = o.cc WHERE o.v = $1",
				"SELECT o.v, c.name FROM orders o JOIN countries c ON c.code = o.cc WHERE o.v = $1 AND " + o("o.user_id")},
			{"SELECT o.v, c.name FROM countries c, orders AS o WHERE c.code = o.cc",
				"SELECT o.v, c.name FROM countries c, orders o WHERE c.code = o.cc AND " + o("o.user_id")},
			{"SELECT o.v FROM orders o LEFT JOIN countries c ON c.code = o.cc",
				"SELECT o.v FROM orders o LEFT JOIN countries c ON c.code = o.cc WHERE " + o("o.user_id")},
			// WITH over reference tables; a CTE named like a sharded table is not it.
			{"WITH x AS (SELECT code FROM countries) SELECT count(*) FROM orders JOIN x ON x.code = orders.cc",
				"WITH x AS (SELECT code FROM countries) SELECT count(*) FROM orders JOIN x ON x.code = orders.cc WHERE " + o("orders.user_id")},
			{"WITH users AS (SELECT 1 AS a) SELECT count(*) FROM orders, users",
				"WITH users AS (SELECT 1 AS a) SELECT count(*) FROM orders, users WHERE " + o("orders.user_id")},
			// Co-located sharded tables: each filtered (the same ranges).
			{"SELECT count(*) FROM orders o JOIN users u ON u.user_id = o.user_id",
				"SELECT count(*) FROM orders o JOIN users u ON u.user_id = o.user_id WHERE " + o("o.user_id") + " AND " + o("u.user_id")},
			// The nullable side of an outer join is left alone.
			{"SELECT count(*) FROM orders o LEFT JOIN users u USING (user_id)",
				"SELECT count(*) FROM orders o LEFT JOIN users u USING (user_id) WHERE " + o("o.user_id")},
			{"SELECT count(*) FROM users u RIGHT JOIN orders o ON o.user_id = u.user_id",
				"SELECT count(*) FROM users u RIGHT JOIN orders o ON o.user_id = u.user_id WHERE " + o("o.user_id")},
			// Correlated subqueries joined on the key follow the outer table.
			{"SELECT count(*) FROM orders o WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = o.user_id)",
				"SELECT count(*) FROM orders o WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = o.user_id) AND " + o("o.user_id")},
			// A semi-join on the key follows the outer table too.
			{"SELECT count(*) FROM orders o WHERE o.user_id IN (SELECT u.user_id FROM users u WHERE u.name = 'x')",
				"SELECT count(*) FROM orders o WHERE o.user_id IN (SELECT u.user_id FROM users u WHERE u.name = 'x') AND " + o("o.user_id")},
			// Schema-qualified, quoted, renamed columns.
			{"SELECT * FROM app.events", "SELECT * FROM app.events WHERE " + o("app.events.user_id")},
			{`SELECT * FROM "Mixed"`, `SELECT * FROM "Mixed" WHERE ` + o(`"Mixed".user_id`)},
			{"SELECT a FROM users u(a, b)", "SELECT a FROM users u(a, b) WHERE " + o("u.a")},
			{"SELECT * FROM ONLY orders", "SELECT * FROM ONLY orders WHERE " + o("orders.user_id")},
			{"SELECT count(*) FROM orders o TABLESAMPLE SYSTEM (50)", "SELECT count(*) FROM orders o TABLESAMPLE system (50) WHERE " + o("o.user_id")},
			// Writes.
			{"UPDATE orders SET v = v + 1 WHERE v > 2", "UPDATE orders SET v = v + 1 WHERE v > 2 AND " + o("orders.user_id")},
			{"UPDATE orders o SET v = 1 FROM countries c WHERE c.code = o.cc RETURNING o.v",
				"UPDATE orders o SET v = 1 FROM countries c WHERE c.code = o.cc AND " + o("o.user_id") + " RETURNING o.v"},
			{"DELETE FROM orders", "DELETE FROM orders WHERE " + o("orders.user_id")},
			{"DELETE FROM orders AS o USING countries c WHERE c.code = o.cc",
				"DELETE FROM orders o USING countries c WHERE c.code = o.cc AND " + o("o.user_id")},
			// COPY: a query's WHERE; a table becomes a query over ONLY it.
			{"COPY (SELECT user_id FROM orders WHERE v > 1) TO STDOUT (FORMAT binary)",
				"COPY (SELECT user_id FROM orders WHERE v > 1 AND " + o("orders.user_id") + ") TO STDOUT (FORMAT binary)"},
			{"COPY orders (user_id, v) TO STDOUT WITH (FORMAT csv, HEADER, DELIMITER ';')",
				"COPY (SELECT user_id, v FROM ONLY orders WHERE " + o("orders.user_id") + ") TO STDOUT WITH (FORMAT csv, HEADER, DELIMITER ';')"},
			{"COPY orders TO STDOUT", "COPY (SELECT user_id, v, \"Odd\" FROM ONLY orders WHERE " + o("orders.user_id") + ") TO STDOUT"},
			{"COPY app.events TO STDOUT CSV", "COPY (SELECT user_id, v, \"Odd\" FROM ONLY app.events WHERE " + o("app.events.user_id") + ") TO STDOUT CSV"},
		}
		for _, c := range cases {
			got, err := p.ExcludeMoving(c.in, excl, []string{"user_id", "v", "Odd"})
			if err != nil {
				t.Errorf("%s: %v", c.in, err)
				continue
			}
			if canon(t, got) != canon(t, c.want) {
				t.Errorf("%s:\n got %s\nwant %s", c.in, got, canon(t, c.want))
			}
			// Cached: the same text again.
			if again, err := p.ExcludeMoving(c.in, excl, []string{"user_id", "v", "Odd"}); err != nil || again != got {
				t.Errorf("%s: cached %q, %v", c.in, again, err)
			}
		}
	}
	if p.CacheLen() != 0 {
		t.Errorf("ExcludeMoving cached %d plan templates, want none (its cache is its own)", p.CacheLen())
	}
	// Text and uuid keys hash with their own functions.
	got, err := p.ExcludeMoving("SELECT count(*) FROM docs d JOIN sessions s ON s.x = d.y", exclOne, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{exclusion(exclOne, shardmap.KeyText, "d.owner"), exclusion(exclOne, shardmap.KeyUUID, "s.sid")} {
		if !strings.Contains(canon(t, got), canon(t, "SELECT WHERE "+want)[len("SELECT WHERE "):]) {
			t.Errorf("got %s, want it to contain %s", got, want)
		}
	}
}

// Without exclusions the text is returned as it is, byte for byte (even
// text the rewrite could not handle, or that does not parse).
func TestExcludeMovingNothingExcluded(t *testing.T) {
	p := NewPlanner(PlannerConfig{Catalog: planCat})
	for _, q := range []string{"select  count(*)\nFROM orders -- hi", "SELECT * FROM orders o FULL JOIN users u USING (user_id)", "not sql at all", "COPY orders TO STDOUT"} {
		for _, excl := range [][]shardmap.Range{nil, {}} {
			got, err := p.ExcludeMoving(q, excl, nil)
			if err != nil || got != q {
				t.Errorf("%q: got %q, %v", q, got, err)
			}
		}
	}
}

// The rewrite applies to the merge's per-shard text: GROUP BY, HAVING
// (removed), ORDER BY, LIMIT/OFFSET (pushed down), avg (sum and count),
// count(DISTINCT key); the merge itself is unchanged.
func TestExcludeMovingMergeShapes(t *testing.T) {
	r := testRing(t)
	p := NewPlanner(PlannerConfig{Catalog: planCat})
	o := exclusion(exclOne, shardmap.KeyInt, "orders.user_id")
	for _, q := range []string{
		"SELECT cc, count(*), sum(v) FROM orders GROUP BY cc HAVING count(*) > 2 ORDER BY cc LIMIT 5",
		"SELECT cc, avg(v) FROM orders WHERE v > $1 GROUP BY cc ORDER BY 2 DESC",
		"SELECT v FROM orders ORDER BY v DESC LIMIT 10 OFFSET 3",
		"SELECT DISTINCT cc FROM orders LIMIT 3",
		"SELECT count(DISTINCT user_id) FROM orders",
		"SELECT min(v), max(v) FROM orders WHERE cc = 'x'",
		"SELECT v FROM orders ORDER BY cc",
	} {
		var params *Params
		if strings.Contains(q, "$1") {
			params = &Params{Values: [][]byte{[]byte("1")}}
		}
		pl := p.Plan(q, params, r)
		if pl.Kind != Scatter {
			t.Fatalf("%s: %v %v", q, pl.Kind, pl.Err)
		}
		text := q
		if pl.ShardSQL != "" {
			text = pl.ShardSQL
		}
		got, err := p.ExcludeMoving(text, exclOne, nil)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		// The same statement with the conjunct in WHERE, the merge's
		// rewrite unchanged.
		want := text
		if tree, _ := pg_query.Parse(text); tree != nil {
			sel := tree.Stmts[0].Stmt.GetSelectStmt()
			ptree, _ := pg_query.Parse("SELECT WHERE " + o)
			pred := ptree.Stmts[0].Stmt.GetSelectStmt().WhereClause
			if sel.WhereClause == nil {
				sel.WhereClause = pred
			} else {
				sel.WhereClause = pg_query.MakeBoolExprNode(pg_query.BoolExprType_AND_EXPR, []*pg_query.Node{sel.WhereClause, pred}, -1)
			}
			want, _ = pg_query.Deparse(tree)
		}
		if canon(t, got) != canon(t, want) {
			t.Errorf("%s:\n got %s\nwant %s", q, got, want)
		}
		if pl2 := p.Plan(q, params, r); pl2.ShardSQL != pl.ShardSQL || !reflect.DeepEqual(pl2.Merge, pl.Merge) {
			t.Errorf("%s: the plan changed", q)
		}
	}
}

// Shapes that cannot exclude moving rows exactly are refused with 55000.
func TestExcludeMovingRefusals(t *testing.T) {
	p := NewPlanner(PlannerConfig{Catalog: planCat})
	for _, q := range []string{
		"SELECT count(*) FROM orders o FULL JOIN users u USING (user_id)",
		"SELECT count(*) FROM countries c LEFT JOIN orders o ON o.cc = c.code",
		"SELECT * FROM (orders o JOIN users u USING (user_id)) AS j",
		"SELECT * FROM orders o(a, b)", // the key's position is unknown
		"SELECT 1 UNION ALL SELECT user_id FROM orders",
		"SELECT count(*) FROM (SELECT user_id, count(*) n FROM orders GROUP BY user_id) x", // its rows are not filtered
		"SELECT count(*) FROM countries",
		"SELECT 1; SELECT 2",
		"COPY orders TO STDOUT", // no columns given
		"COPY orders FROM STDIN",
		"INSERT INTO orders VALUES (1)",
		"UPDATE orders SET v = 1 WHERE CURRENT OF c",
		"not sql",
	} {
		_, err := p.ExcludeMoving(q, exclOne, nil)
		if err == nil || err.Code != CodeMoving || !strings.Contains(err.Message, "reshard job") {
			t.Errorf("%s: got %v, want a 55000 refusal", q, err)
		}
		if errors.Is(err, ErrNotSupported) {
			t.Errorf("%s: a 55000 refusal is not a 0A000 one", q)
		}
	}
}

// Excluded: on each shard, the moving ranges another shard owns.
func TestExcluded(t *testing.T) {
	r := testRing(t)
	var moving []shardmap.Range
	for _, sh := range r.Shards() {
		moving = append(moving, r.Ranges(sh)[0])
	}
	total := 0
	for _, sh := range r.Shards() {
		ex := Excluded(moving, r, sh)
		total += len(ex)
		if len(ex) != len(moving)-1 {
			t.Errorf("%s excludes %v of %v", sh, ex, moving)
		}
		for _, g := range ex {
			if r.Lookup(g.End) == sh {
				t.Errorf("%s excludes its own range %v", sh, g)
			}
		}
	}
	if Excluded(nil, r, "s1") != nil {
		t.Error("nothing moving excludes nothing")
	}
}

// OwnRows narrows an INSERT … SELECT's WHERE to the rows one shard owns,
// failing on a NULL key; the result parses, and its filter names the key
// expression, not the placeholder.
func TestOwnRows(t *testing.T) {
	p := NewPlanner(PlannerConfig{Catalog: planCat})
	is := &InsertSelect{Table: "users", KeyColumn: "user_id", KeyIndex: 1, KeyType: shardmap.KeyInt}
	null := "CASE WHEN g + 1 IS NULL THEN pg_catalog.concat('pgshard: INSERT … SELECT gave a NULL shard key, which belongs to no shard: ', 'users.user_id')::int4 = 0 ELSE "
	for _, c := range []struct {
		in, want string
		owned    []shardmap.Range
	}{
		{"INSERT INTO users (name, user_id) SELECT 'n', g + 1 FROM generate_series(1, 10) g",
			"INSERT INTO users (name, user_id) SELECT 'n', g + 1 FROM generate_series(1, 10) g WHERE " + null + "hashint8extended((g + 1)::bigint, 0) > 5 AND hashint8extended((g + 1)::bigint, 0) <= 9 END", []shardmap.Range{{Start: 5, End: 9}}},
		{"INSERT INTO users (name, user_id) SELECT 'n', g + 1 FROM generate_series(1, 10) g WHERE g > $1 RETURNING user_id",
			"INSERT INTO users (name, user_id) SELECT 'n', g + 1 FROM generate_series(1, 10) g WHERE g > $1 AND " + null + "false END RETURNING user_id", nil},
	} {
		got, err := p.OwnRows(c.in, c.owned, is)
		if err != nil || got != c.want {
			t.Errorf("%s:\n got %s (%v)\nwant %s", c.in, got, err, c.want)
		}
		if _, perr := parse(got); perr != nil {
			t.Errorf("%s: %v", got, perr)
		}
	}
}

// A co-located INSERT … SELECT over several shards reads each moving row
// once: its SELECT skips the moving rows the shard does not own.
func TestExcludeMovingInsertSelect(t *testing.T) {
	p := NewPlanner(PlannerConfig{Catalog: planCat})
	o := exclusion(exclOne, shardmap.KeyInt, "o.user_id")
	got, err := p.ExcludeMoving("INSERT INTO users (user_id, name) SELECT o.user_id, o.name FROM orders o WHERE o.v > $1 ON CONFLICT DO NOTHING", exclOne, nil)
	if want := "INSERT INTO users (user_id, name) SELECT o.user_id, o.name FROM orders o WHERE o.v > $1 AND " + o + " ON CONFLICT DO NOTHING"; err != nil || canon(t, got) != canon(t, want) {
		t.Fatalf("got %s (%v)\nwant %s", got, err, want)
	}
	if _, err := p.ExcludeMoving("INSERT INTO users (user_id) VALUES (1), (2)", exclOne, nil); err == nil || err.Code != CodeMoving {
		t.Fatalf("INSERT … VALUES: %v, want %s", err, CodeMoving)
	}
}
