package router

import (
	"testing"
)

// FuzzPlan: any text and parameters plan without panicking, and a cached
// plan equals a fresh one.
func FuzzPlan(f *testing.F) {
	for _, s := range []string{
		"SELECT * FROM users WHERE user_id = 5",
		"SELECT * FROM users WHERE user_id = $1",
		"INSERT INTO users (user_id, name) VALUES (1, 'a'), ($1, $2)",
		"SELECT country, avg(balance) FROM users GROUP BY 1 HAVING count(*) > 2 ORDER BY 2 LIMIT 3 OFFSET $1",
		"WITH RECURSIVE r AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r",
		"UPDATE users SET user_id = -3 WHERE user_id = E'4'",
		"SELECT * FROM users a JOIN orders b USING (user_id) WHERE a.user_id IN (1, 2)",
	} {
		f.Add(s, "7")
	}
	r := testRing(f)
	f.Fuzz(func(t *testing.T, sql, param string) {
		params := &Params{Values: [][]byte{[]byte(param), []byte(param)}}
		fresh := NewPlanner(PlannerConfig{Catalog: planCat}).Plan(sql, params, r)
		p := NewPlanner(PlannerConfig{Catalog: planCat})
		p.Plan(sql, params, r)
		again := p.Plan(sql, params, r)
		if again.Kind != fresh.Kind || again.Shard != fresh.Shard {
			t.Fatalf("%q: cached %v %s, fresh %v %s", sql, again.Kind, again.Shard, fresh.Kind, fresh.Shard)
		}
		if fresh.Kind == Multi && len(fresh.Rows) > 0 {
			for _, rows := range fresh.Rows {
				if _, _, err := SplitInsert(sql, rows); err != nil {
					t.Fatalf("%q: split: %v", sql, err)
				}
			}
		}
	})
}
