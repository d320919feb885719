package router

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

func TestRelations(t *testing.T) {
	for _, c := range []struct{ sql, want string }{
		{"CREATE TEMP TABLE tt (a int)", "[{ tt true}]"},
		{"CREATE TABLE pg_temp.tt (a int)", "[{pg_temp tt false}]"},
		{"INSERT INTO tt SELECT a FROM s.other JOIN x USING (a)", "[{ tt false} { x false} {s other false}]"},
		{"DROP TABLE tt, pg_temp.t2", "[{ tt false} {pg_temp t2 false}]"},
		{"DROP INDEX tt_a", "[{ tt_a false}]"},
		{"TRUNCATE tt; ANALYZE tt", "[{ tt false} { tt false}]"},
		{"CREATE INDEX ON tt (a)", "[{ tt false}]"},
		{"ALTER TABLE tt ADD COLUMN b int", "[{ tt false}]"},
		{"UPDATE tt SET a = (SELECT max(v) FROM u WHERE user_id = 1)", "[{ tt false} { u false}]"},
		{"SELECT 1", "[]"},
	} {
		rels, ok := Relations(c.sql)
		// The walk's order is protobuf's field order, which is not defined.
		slices.SortFunc(rels, func(a, b Relation) int { return strings.Compare(a.Schema+"."+a.Name, b.Schema+"."+b.Name) })
		if got := fmt.Sprint(rels); !ok || got != c.want && !(c.want == "[]" && len(rels) == 0) {
			t.Errorf("%s: %v %v, want %s", c.sql, got, ok, c.want)
		}
	}
	if _, ok := Relations("not sql"); ok {
		t.Error("a syntax error parsed")
	}
}
