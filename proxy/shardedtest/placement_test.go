package shardedtest

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgshard/pgshard/shardmap"
)

// Rows written through pgshard are stored on the shard that owns their
// key on the ring (hashint8extended(user_id, 0), as PostgreSQL computes
// it), every row on exactly one shard: the core requirement of sharded
// routing (issue 8).
func TestRowsLandOnOwnerShard(t *testing.T) {
	pendingSkip(t, "owner_shard")
	c := startSharded(t, 3)
	ctx := testCtx(t, 2*time.Minute)

	// The table is created on every shard directly and registered, as
	// `pgshardctl tables add` would: this test is about where rows go.
	const ddl = "CREATE TABLE placed (user_id bigint PRIMARY KEY, note text NOT NULL)"
	shards := make([]*pgx.Conn, c.n)
	for i := range shards {
		shards[i] = c.connectShard(ctx, i)
		if _, err := shards[i].Exec(ctx, ddl); err != nil {
			t.Fatalf("%s: %v", shardName(i), err)
		}
	}
	if err := c.addTable(shardmap.Table{Name: "placed", Kind: shardmap.TableSharded, KeyColumn: "user_id", KeyType: shardmap.KeyInt}); err != nil {
		t.Fatal(err)
	}

	conn := c.connect(ctx)
	const n = 200
	for k := int64(1); k <= n; k++ {
		// Alternate the protocols: odd keys as literals in a simple
		// Query, even keys as parameters of a cached prepared statement
		// (text or binary, as pgx chooses).
		var err error
		var tag string
		if k%2 == 1 {
			ct, e := conn.Exec(ctx, fmt.Sprintf("INSERT INTO placed (user_id, note) VALUES (%d, 'simple')", k), pgx.QueryExecModeSimpleProtocol)
			tag, err = ct.String(), e
		} else {
			ct, e := conn.Exec(ctx, "INSERT INTO placed (user_id, note) VALUES ($1, $2)", pgx.QueryExecModeCacheStatement, k, "extended")
			tag, err = ct.String(), e
		}
		if err != nil {
			t.Fatalf("insert key %d through pgshard: %v", k, err)
		}
		if tag != "INSERT 0 1" {
			t.Fatalf("insert key %d: command tag %q, want INSERT 0 1", k, tag)
		}
	}

	seen := map[int64]string{}
	perShard := make([]int, c.n)
	for i, sh := range shards {
		rows, err := sh.Query(ctx, "SELECT user_id FROM placed")
		if err != nil {
			t.Fatalf("%s: %v", shardName(i), err)
		}
		keys, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			t.Fatalf("%s: %v", shardName(i), err)
		}
		for _, k := range keys {
			if prev, dup := seen[k]; dup {
				t.Errorf("key %d is on %s and on %s", k, prev, shardName(i))
			}
			seen[k] = shardName(i)
			if own := c.owner(shardmap.KeyInt, strconv.FormatInt(k, 10)); own != i {
				t.Errorf("key %d is on %s, but the ring gives it to %s", k, shardName(i), shardName(own))
			}
		}
		perShard[i] = len(keys)
	}
	if len(seen) != n {
		t.Errorf("%d distinct keys on the shards, want %d", len(seen), n)
	}
	t.Logf("rows per shard: %v", perShard)
	for i, cnt := range perShard {
		if cnt == 0 {
			t.Errorf("%s holds no row of %d keys: the ring spreads them over all shards", shardName(i), n)
		}
	}
}
