package router

import (
	"reflect"
	"testing"
)

func TestInspect(t *testing.T) {
	cases := []struct {
		sql  string
		want Effects
	}{
		{"SELECT 1", Effects{Statements: 1}},
		{"select abalance from pgbench_accounts where aid = 42;", Effects{Statements: 1}},
		{"", Effects{}},
		{" ; ;", Effects{}},
		{"SET statement_timeout = '5s'", Effects{Statements: 1, Sets: []Set{{Name: "statement_timeout", Value: "'5s'"}}}},
		{"set Search_Path to public, \"My Schema\"", Effects{Statements: 1, Sets: []Set{{Name: "search_path", Value: "public, \"My Schema\""}}}},
		{"SET SESSION work_mem TO DEFAULT", Effects{Statements: 1, Sets: []Set{{Name: "work_mem", Reset: true}}}},
		{"SET LOCAL work_mem = '1MB'", Effects{Statements: 1}},
		{"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", Effects{Statements: 1}},
		{"SET TIME ZONE 'UTC'", Effects{Statements: 1, Sets: []Set{{Name: "timezone", Value: "'UTC'"}}}},
		{"SET myapp.user_id = 7", Effects{Statements: 1, Sets: []Set{{Name: "myapp.user_id", Value: "7"}}}},
		{"RESET work_mem", Effects{Statements: 1, Sets: []Set{{Name: "work_mem", Reset: true}}}},
		{"SET a = 1; RESET ALL", Effects{Statements: 2, ResetAll: true}},
		{"DISCARD ALL", Effects{Statements: 1, ResetAll: true, Discard: true}},
		{"DISCARD PLANS", Effects{Statements: 1, Discard: true}},
		{"SET ROLE admin", Effects{Statements: 1, Pin: true, PinReason: "SET ROLE"}},
		{"SET SESSION AUTHORIZATION bob", Effects{Statements: 1, Pin: true, PinReason: "SET SESSION AUTHORIZATION"}},
		{"LISTEN jobs", Effects{Statements: 1, Pin: true, PinReason: "LISTEN"}},
		{"CREATE TEMP TABLE x (a int)", Effects{Statements: 1, Pin: true, PinReason: "temporary table", Schema: true}},
		{"create temporary table x as select 1", Effects{Statements: 1, Pin: true, PinReason: "temporary table", Schema: true}},
		{"ALTER TABLE t DROP COLUMN a", Effects{Statements: 1, Schema: true}},
		{"select 1; Drop Type e", Effects{Statements: 2, Schema: true}},
		{"DEALLOCATE stmtcache_1", Effects{Statements: 1, Pin: true, PinReason: "DEALLOCATE", Deallocate: "stmtcache_1"}},
		{"deallocate prepare \"My Stmt\"", Effects{Statements: 1, Pin: true, PinReason: "DEALLOCATE", Deallocate: "My Stmt"}},
		{"DEALLOCATE ALL", Effects{Statements: 1, Pin: true, PinReason: "DEALLOCATE", DeallocateAll: true}},
		{"SELECT 1; DEALLOCATE x", Effects{Statements: 2, Pin: true, PinReason: "DEALLOCATE"}},
		{"BEGIN; SELECT 1", Effects{Statements: 2, Begin: true, AnyTxnControl: true}},
		{"create type pg_temp.text_bounds_range as range (subtype = text)", Effects{Statements: 1, Pin: true, PinReason: "temporary object", Schema: true}},
		{"SELECT * FROM PG_TEMP_3.t", Effects{Statements: 1, Pin: true, PinReason: "temporary object"}},
		{"SELECT pg_advisory_lock(1)", Effects{Statements: 1, Pin: true, PinReason: "session advisory lock"}},
		{"SELECT PG_TRY_ADVISORY_LOCK(1)", Effects{Statements: 1, Pin: true, PinReason: "session advisory lock"}},
		{"SELECT pg_advisory_xact_lock(1)", Effects{Statements: 1}},
		{"SELECT pg_catalog.CurrVal('s')", Effects{Statements: 1, SessionSeq: true}},
		{"SELECT lastval()", Effects{Statements: 1, SessionSeq: true}},
		{"SELECT set_config('search_path', 'x', false)", Effects{Statements: 1, Pin: true, PinReason: "set_config() of a session setting"}},
		{"SELECT pg_catalog.SET_CONFIG('search_path', $1, $2)", Effects{Statements: 1, Pin: true, PinReason: "set_config() of a session setting"}},
		{"SELECT set_config('search_path', lower('X'), TRUE)", Effects{Statements: 1}},
		{"SELECT set_config('a', 'b', true), 1", Effects{Statements: 1}},
		{"SELECT 'currval' AS currval_text", Effects{Statements: 1}},
		{"SELECT pg_advisory_unlock(1)", Effects{Statements: 1}},
		{"DECLARE c CURSOR WITH HOLD FOR SELECT 1", Effects{Statements: 1, Pin: true, PinReason: "WITH HOLD cursor"}},
		{"PREPARE p AS SELECT 1", Effects{Statements: 1, Pin: true, PinReason: "SQL PREPARE"}},
		{"PREPARE TRANSACTION 'x'", Effects{Statements: 1}},
		{"ROLLBACK TO SAVEPOINT a", Effects{Statements: 1, TxnControl: true, AnyTxnControl: true}},
		// Words inside strings, comments and quoted identifiers do not count.
		{"SELECT 'LISTEN temp hold; SET x = 1'", Effects{Statements: 1}},
		{"SELECT $$ set a = 1; listen x $$, $tag$ temp $tag$", Effects{Statements: 1}},
		{"/* LISTEN x; */ SELECT 1 -- temp\n", Effects{Statements: 1}},
		{"/* nested /* LISTEN */ still comment */ SELECT \"temp\"", Effects{Statements: 1}},
		{"SELECT E'it\\'s; LISTEN x'", Effects{Statements: 1}},
		{"SELECT 'a'';LISTEN x'", Effects{Statements: 1}},
		{"SELECT 1; LISTEN x", Effects{Statements: 2, Pin: true, PinReason: "LISTEN"}},
		{"SET x TO", Effects{Statements: 1, Pin: true, PinReason: "SET that pgshard cannot replay"}},
		{"SET \"quoted\" = 1", Effects{Statements: 1, Pin: true, PinReason: "SET that pgshard cannot replay"}},
	}
	for _, c := range cases {
		got := Inspect(c.sql)
		got.Shape = 0
		if got.Sets != nil && len(got.Sets) == 0 {
			got.Sets = nil
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("Inspect(%q)\n got %+v\nwant %+v", c.sql, got, c.want)
		}
	}
}

func TestInspectTransactionsAndHints(t *testing.T) {
	for _, c := range []struct {
		sql             string
		begin, readOnly bool
		route           Route
	}{
		{"BEGIN", true, false, RouteAuto},
		{"begin transaction isolation level repeatable read", true, false, RouteAuto},
		{"BEGIN READ ONLY", true, true, RouteAuto},
		{"START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE", true, true, RouteAuto},
		{"BEGIN READ WRITE", true, false, RouteAuto},
		{"SET TRANSACTION READ ONLY", false, true, RouteAuto},
		{"SELECT 'read only'", false, false, RouteAuto},
		{"/* pgshard:primary */ SELECT 1", false, false, RoutePrimary},
		{"  /*pgshard:replica*/SELECT 1", false, false, RouteReplica},
		{"SELECT 1 /* pgshard:primary */", false, false, RouteAuto},
		{"/* other */ SELECT 1", false, false, RouteAuto},
	} {
		e := Inspect(c.sql)
		if e.Begin != c.begin || e.ReadOnly != c.readOnly || e.Route != c.route {
			t.Errorf("Inspect(%q): begin=%v readOnly=%v route=%v; want %v %v %v", c.sql, e.Begin, e.ReadOnly, e.Route, c.begin, c.readOnly, c.route)
		}
	}
}

func TestTxnControl(t *testing.T) {
	for sql, want := range map[string]bool{
		"BEGIN": true, "commit": true, "ROLLBACK": true, "END": true, "abort": true,
		"SAVEPOINT a": true, "RELEASE SAVEPOINT a": true, "ROLLBACK TO SAVEPOINT a": true,
		"BEGIN; COMMIT": true, "COMMIT PREPARED 'x'": false, "SELECT 1": false,
		"BEGIN; INSERT INTO t VALUES (1)": false, "": false,
	} {
		if got := Inspect(sql).TxnControl; got != want {
			t.Errorf("Inspect(%q).TxnControl = %v, want %v", sql, got, want)
		}
	}
}

func TestShapeIgnoresLiteralsOnly(t *testing.T) {
	same := [][2]string{
		{"SELECT * FROM t WHERE id = 1", "SELECT * FROM t WHERE id = 22"},
		{"SELECT * FROM t WHERE name = 'a'", "SELECT  *  FROM t WHERE name = 'it''s' -- c"},
		{"SELECT $1::int", "SELECT $2::int"},
		{"SELECT $$x$$", "SELECT 'y'"},
		{"/* a */ SELECT 1", "SELECT 2"},
	}
	for _, p := range same {
		if Inspect(p[0]).Shape != Inspect(p[1]).Shape {
			t.Errorf("shapes differ: %q vs %q", p[0], p[1])
		}
	}
	differ := [][2]string{
		{"SELECT * FROM t", "SELECT * FROM u"},
		{"SELECT nextval('s')", "SELECT currval('s')"},
		{"SELECT * FROM t", "SELECT * FROM t FOR UPDATE"},
		{`SELECT "a" FROM t`, `SELECT "b" FROM t`},
		{"SELECT 1; SELECT 2", "SELECT 1"},
		{"SELECT 1", "DELETE FROM t"},
	}
	for _, p := range differ {
		if Inspect(p[0]).Shape == Inspect(p[1]).Shape {
			t.Errorf("shapes equal: %q vs %q", p[0], p[1])
		}
	}
}

func TestInspectUnterminated(t *testing.T) {
	// Unterminated strings, comments and dollar quotes end the text; no panic.
	for _, s := range []string{"SELECT 'abc", "SELECT \"abc", "/* x", "SELECT $a$ x", "SELECT E'\\", "$", "$1", "e'"} {
		_ = Inspect(s)
	}
}

func FuzzInspect(f *testing.F) {
	f.Add("SET a = 1; LISTEN x")
	f.Add("SELECT $$x$$, 'a''b', E'\\'', \"q\" /* c /* d */ */ -- e\n")
	f.Fuzz(func(t *testing.T, s string) {
		e := Inspect(s)
		for _, set := range e.Sets {
			if set.Name == "" {
				t.Fatalf("empty setting name from %q", s)
			}
		}
	})
}

func BenchmarkInspect(b *testing.B) {
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		_ = Inspect("SELECT abalance FROM pgbench_accounts WHERE aid = 123456;")
	}
}

func TestOps(t *testing.T) {
	set := func(stmt int, name, value string) Op {
		return Op{Stmt: stmt, Kind: OpSet, Set: Set{Name: name, Value: value}}
	}
	for _, c := range []struct {
		sql  string
		want []Op
	}{
		{"SELECT 1", nil},
		{"SET a.b = 1", []Op{set(0, "a.b", "1")}},
		{"BEGIN; SET x = 1; ROLLBACK", []Op{{Stmt: 0, Kind: OpBegin}, set(1, "x", "1"), {Stmt: 2, Kind: OpRollback}}},
		{"ROLLBACK; SELECT 1", []Op{{Stmt: 0, Kind: OpRollback}}},
		{"savepoint S1; set x to 2; rollback to savepoint s1; release \"S1\"", []Op{
			{Stmt: 0, Kind: OpSavepoint, Name: "s1"}, set(1, "x", "2"),
			{Stmt: 2, Kind: OpRollbackTo, Name: "s1"}, {Stmt: 3, Kind: OpRelease, Name: "S1"}}},
		{"ROLLBACK WORK TO a; ABORT; END; COMMIT PREPARED 'g'; ROLLBACK PREPARED 'g'", []Op{
			{Stmt: 0, Kind: OpRollbackTo, Name: "a"}, {Stmt: 1, Kind: OpRollback}, {Stmt: 2, Kind: OpCommit}}},
		{"SELECT 1; RESET ALL; RESET x; DISCARD ALL", []Op{{Stmt: 1, Kind: OpResetAll}, {Stmt: 2, Kind: OpSet, Set: Set{Name: "x", Reset: true}}, {Stmt: 3, Kind: OpResetAll}}},
		{"START TRANSACTION; PREPARE TRANSACTION 'g'", []Op{{Stmt: 0, Kind: OpBegin}, {Stmt: 1, Kind: OpCommit}}},
	} {
		if got := Ops(c.sql); !reflect.DeepEqual(got, c.want) {
			t.Errorf("Ops(%q)\n got %+v\nwant %+v", c.sql, got, c.want)
		}
	}
}

func TestPlanned(t *testing.T) {
	for sql, want := range map[string]bool{
		"SELECT 1": true, " /* c */ -- x\n(select 1)": true, "WITH a AS (SELECT 1) SELECT * FROM a": true,
		"values (1)": true, "TABLE t": true, "insert into t values (1)": true, "UPDATE t SET a = 1": true,
		"DELETE FROM t": true, "FETCH ALL FROM c": false, "SHOW work_mem": false, "": false, "EXPLAIN SELECT 1": false,
	} {
		if got := Planned(sql); got != want {
			t.Errorf("Planned(%q) = %v, want %v", sql, got, want)
		}
	}
}
