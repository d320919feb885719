package router

import (
	"testing"

	"github.com/pgshard/pgshard/shardmap"
)

func TestPlanCopy(t *testing.T) {
	r := testRing(t)
	p := NewPlanner(PlannerConfig{Catalog: planCat})
	tests := []struct {
		sql  string
		want CopyPlan
	}{
		{"COPY users FROM STDIN", CopyPlan{From: true, Format: "text", Delimiter: '\t', Null: `\N`, KeyIndex: 0, KeyType: shardmap.KeyInt, Table: "users"}},
		{"COPY users (name, user_id) FROM STDIN WITH (FORMAT csv, HEADER, DELIMITER ';')", CopyPlan{From: true, Format: "csv", Delimiter: ';', Quote: '"', Escape: '"', Header: true, KeyIndex: 1, KeyType: shardmap.KeyInt, Table: "users"}},
		{"COPY users (name, user_id) FROM STDIN WITH (FORMAT csv, QUOTE '''', NULL 'NA')", CopyPlan{From: true, Format: "csv", Delimiter: ',', Quote: '\'', Escape: '\'', Null: "NA", KeyIndex: 1, KeyType: shardmap.KeyInt, Table: "users"}},
		{"COPY users FROM STDIN (FORMAT binary)", CopyPlan{From: true, Format: "binary", KeyIndex: 0, KeyType: shardmap.KeyInt, Table: "users"}},
		{"COPY users TO STDOUT (FORMAT csv, HEADER false)", CopyPlan{Format: "csv", Delimiter: ',', Quote: '"', Escape: '"', Table: "users", NeedsColumns: true, Relation: `"users"`}},
		{"COPY app.events (user_id) TO STDOUT", CopyPlan{Format: "text", Delimiter: '\t', Null: `\N`, Table: "events"}},
		{`COPY app.events TO STDOUT`, CopyPlan{Format: "text", Delimiter: '\t', Null: `\N`, Table: "events", NeedsColumns: true, Relation: `"app"."events"`}},
		{"COPY countries FROM STDIN", CopyPlan{From: true, Broadcast: true, Format: "text", Delimiter: '\t', Null: `\N`, Table: "countries"}},
	}
	for _, tc := range tests {
		pl := p.Plan(tc.sql, nil, r)
		if pl.Copy == nil || *pl.Copy != tc.want {
			t.Errorf("%s: %v %+v (err %v), want %+v", tc.sql, pl.Kind, pl.Copy, pl.Err, tc.want)
		}
	}
}
