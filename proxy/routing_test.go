package proxy_test

import (
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/pgshard/pgshard/shardmap"
)

// With several shards owning ranges and no sharded routing yet, a
// statement the first shard cannot answer exactly is refused with 0A000;
// statements any shard answers still run; with one owner again, all run.
func TestSeveralOwnersRefuseWhatOneShardCannotAnswer(t *testing.T) {
	h := startProxy(t, nil)
	ctx := testCtx(t)
	c := h.connect(ctx)
	mustExec(t, c, "CREATE TABLE orders (user_id bigint, amount int); CREATE TABLE countries (code text)")
	build := func(owners int) *shardmap.Map {
		m := &shardmap.Map{}
		var err error
		for i := 0; i < owners; i++ {
			name := []string{"shard0", "shard1"}[i]
			if m, err = m.Apply(shardmap.AddShard(shardmap.Shard{Name: name, Primary: h.topo.Shards[0].Primary.DSN()}, 8)); err != nil {
				t.Fatal(err)
			}
		}
		for _, tb := range []shardmap.Table{{Name: "orders", Kind: shardmap.TableSharded}, {Name: "countries", Kind: shardmap.TableReference}} {
			if m, err = m.Apply(shardmap.AddTable(tb)); err != nil {
				t.Fatal(err)
			}
		}
		return m
	}
	h.srv.SetMap(build(2))
	for _, sql := range []string{
		"SELECT * FROM orders WHERE user_id = 1",
		"SELECT count(*) FROM orders",
		"INSERT INTO orders VALUES (1, 2)",
		"INSERT INTO countries VALUES ('fr')",
		"CREATE TABLE more (user_id int)",
		"BEGIN; UPDATE orders SET amount = 3 WHERE user_id = 7; COMMIT",
	} {
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec, pgx.QueryExecModeCacheStatement} {
			if _, err := c.Exec(ctx, sql, mode); sqlState(err) != "0A000" {
				t.Fatalf("%s (%v) with two owners: %v, want 0A000", sql, mode, err)
			}
		}
	}
	for _, sql := range []string{"SELECT 1", "SELECT count(*) FROM countries", "SET work_mem = '5MB'", "BEGIN; SELECT 1; COMMIT", "SHOW work_mem"} {
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Fatalf("%s with two owners: %v", sql, err)
		}
	}
	h.srv.SetMap(build(1))
	if _, err := c.Exec(ctx, "INSERT INTO orders VALUES (1, 2)"); err != nil {
		t.Fatalf("with one owner: %v", err)
	}
}
