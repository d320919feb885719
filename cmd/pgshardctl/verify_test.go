package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshard/pgshard/admin"
	"github.com/pgshard/pgshard/shardmap"
	"github.com/pgshard/pgshard/topology"
	"github.com/pgshard/pgshard/topology/topotest"
)

func TestVerifySQL(t *testing.T) {
	r, err := shardmap.NewRing([]shardmap.Token{{Pos: -100, Shard: "a"}, {Pos: 100, Shard: "b"}})
	if err != nil {
		t.Fatal(err)
	}
	count, sample, n, err := verifyShardedSQL(shardmap.Table{Name: "app.Orders", Kind: shardmap.TableSharded, KeyColumn: `we"ird`, KeyType: shardmap.KeyText}, r, "a")
	if err != nil || n != 1 {
		t.Fatal(err, n)
	}
	for _, want := range []string{`FROM "app"."Orders"`, `hashtextextended(("we""ird")::text, 0) AS h`, `NOT ((h > 100 OR h <= -100))`} {
		if !strings.Contains(count, want) || !strings.Contains(sample, want) {
			t.Errorf("SQL lacks %q:\n%s\n%s", want, count, sample)
		}
	}
	// A shard owning no range must hold nothing.
	count, _, n, _ = verifyShardedSQL(shardmap.Table{Name: "t", Kind: shardmap.TableSharded, KeyColumn: "id", KeyType: shardmap.KeyUUID}, r, "spare")
	if n != 0 || !strings.Contains(count, "NOT false") || !strings.Contains(count, `uuid_hash_extended("id", 0)`) {
		t.Errorf("no-range shard SQL:\n%s", count)
	}
	if got := verifyReferenceSQL(shardmap.Table{Name: "countries"}); !strings.Contains(got, `md5(ROW(r.*)::text)`) {
		t.Errorf("reference SQL: %s", got)
	}
	s := "-1"
	if got, _ := verifyMod64(&s); got != "ffffffffffffffff" {
		t.Errorf("mod64(-1) = %s", got)
	}
}

// TestVerify runs `pgshardctl verify` against two real primaries (plus an
// empty spare registered in the map, owning no range) with rows placed by
// the map, then breaks placement and reference tables one way at a time.
func TestVerify(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL servers")
	}
	topo := topotest.Start(t, topology.Config{Shards: 2, Spares: 1})
	db := topotest.NewDatabase(t, topo)
	url := adminServer(t)
	t.Setenv("PGSHARD_ADMIN_URL", url)
	t.Setenv("PGSHARD_ADMIN_TOKEN", "tok")
	for _, k := range []string{"PGUSER", "PGPASSWORD", "PGDATABASE"} {
		t.Setenv(k, "")
	}
	must := func(args ...string) string {
		t.Helper()
		code, out, errs := ctlRun(t, args...)
		if code != 0 {
			t.Fatalf("pgshardctl %s: exit %d\n%s\n%s", strings.Join(args, " "), code, out, errs)
		}
		return out
	}
	sh0, sh1, spare := topo.Shards[0].Primary, topo.Shards[1].Primary, topo.Spares[0].Primary
	must("shards", "add", "shard0", "--primary", sh0.DSN())
	must("shards", "add", "shard1", "--primary", sh1.DSN(), "--place")
	must("shards", "add", "spare0", "--primary", spare.DSN()) // joining: owns nothing
	must("tables", "add", "orders")
	must("tables", "add", "sessions", "--key-column", "token", "--key-type", "text")
	must("tables", "add", "devices", "--key-column", "id", "--key-type", "uuid")
	must("tables", "add", "countries", "--reference")

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	_, m, err := admin.NewClient(url, "tok").Map(ctx)
	if err != nil {
		t.Fatal(err)
	}
	conns := map[string]*pgconn.PgConn{}
	for name, s := range map[string]*topology.Server{"shard0": sh0, "shard1": sh1, "spare0": spare} {
		c, err := pgconn.Connect(ctx, s.URL("app", "app", db))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		conns[name] = c
	}
	exec := func(shard, sql string) {
		t.Helper()
		if _, err := conns[shard].Exec(ctx, sql).ReadAll(); err != nil {
			t.Fatalf("%s: %s: %v", shard, sql, err)
		}
	}
	for name := range conns {
		exec(name, `CREATE TABLE orders (id bigserial, user_id int NOT NULL, amount numeric);
			CREATE TABLE sessions (token varchar(40), started timestamptz DEFAULT '2024-01-01');
			CREATE TABLE devices (id uuid, name text);
			CREATE TABLE countries (code text PRIMARY KEY, name text, founded date, area float8)`)
		exec(name, `INSERT INTO countries VALUES ('fr', 'France', '1792-09-22', 643801.5), ('jp', 'Japan', NULL, 377975.25), ('de', 'Germany', '1949-05-23', 357022)`)
	}
	// Rows placed by the map: each key on the shard owning its hash.
	per := map[string]int{}
	ins := map[string][]string{}
	place := func(table string, typ shardmap.KeyType, key, values string) {
		_, _, owner, err := m.Locate(typ, key)
		if err != nil {
			t.Fatal(err)
		}
		per[owner]++
		ins[owner+"\x00"+table] = append(ins[owner+"\x00"+table], values)
	}
	const nOrders, nSessions, nDevices = 3000, 500, 300
	for k := range nOrders {
		key := int64(k) - 1000 // negative keys too
		if k == 0 {
			key = math.MaxInt32
		}
		place("orders", shardmap.KeyInt, fmt.Sprint(key), fmt.Sprintf("(%d, %d.5)", key, k))
	}
	for k := range nSessions {
		key := fmt.Sprintf("sess-%d-é", k)
		place("sessions", shardmap.KeyText, key, fmt.Sprintf("('%s')", key))
	}
	for k := range nDevices {
		key := fmt.Sprintf("%08x-0000-4000-8000-%012x", k*2654435761%(1<<32), k)
		place("devices", shardmap.KeyUUID, key, fmt.Sprintf("('%s', 'd%d')", key, k))
	}
	if per["shard0"] == 0 || per["shard1"] == 0 || per["spare0"] != 0 {
		t.Fatalf("placement %v", per)
	}
	cols := map[string]string{"orders": "(user_id, amount)", "sessions": "(token)", "devices": "(id, name)"}
	for k, vals := range ins {
		shard, table, _ := strings.Cut(k, "\x00")
		exec(shard, "INSERT INTO "+table+" "+cols[table]+" VALUES "+strings.Join(vals, ", "))
	}

	// All in place: exit 0, counts per shard add up.
	code, out, errs := ctlRun(t, "verify", "--database", db)
	if code != 0 || !strings.Contains(out, "OK: 3800 sharded row(s)") {
		t.Fatalf("verify: exit %d\n%s\n%s", code, out, errs)
	}
	t.Logf("verify (all in place):\n%s", out)
	code, out, _ = ctlRun(t, "--json", "verify", "--database", db)
	var rep verifyReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 0 || !rep.OK || len(rep.Tables) != 4 {
		t.Fatalf("verify --json: exit %d, %v\n%s", code, err, out)
	}
	for _, tb := range rep.Tables {
		var sum int64
		var checksums []string
		for _, r := range tb.Shards {
			if r.Misplaced != 0 || r.Error != "" {
				t.Errorf("%s on %s: %+v", tb.Name, r.Shard, r)
			}
			if tb.Kind == "sharded" {
				sum += r.Rows
				if r.Shard == "spare0" && (r.Rows != 0 || r.Ranges != 0) {
					t.Errorf("spare: %+v", r)
				}
			} else {
				checksums = append(checksums, r.Checksum)
				if r.Rows != 3 {
					t.Errorf("countries on %s: %d rows", r.Shard, r.Rows)
				}
			}
		}
		if want := map[string]int64{"orders": nOrders, "sessions": nSessions, "devices": nDevices}[tb.Name]; tb.Kind == "sharded" && sum != want {
			t.Errorf("%s: %d rows in all, want %d", tb.Name, sum, want)
		}
		if tb.Kind == "reference" && (len(checksums) != 3 || checksums[0] != checksums[1] || checksums[1] != checksums[2] || len(checksums[0]) != 32) {
			t.Errorf("countries checksums %v", checksums)
		}
	}

	fails := func(what string, wants ...string) {
		t.Helper()
		code, out, errs := ctlRun(t, "verify", "--database", db)
		if code != 1 {
			t.Errorf("%s: exit %d, want 1\n%s\n%s", what, code, out, errs)
		}
		for _, w := range wants {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", what, w, out)
			}
		}
		t.Logf("verify (%s):\n%s", what, out)
	}

	// A row on the wrong shard: named with its hash and owner.
	var key int64 = 424242
	h, _, owner, _ := m.Locate(shardmap.KeyInt, fmt.Sprint(key))
	wrong := map[string]string{"shard0": "shard1", "shard1": "shard0"}[owner]
	exec(wrong, fmt.Sprintf("INSERT INTO orders (user_id) VALUES (%d)", key))
	fails("misplaced row", fmt.Sprintf("orders on %s: key %d  hash %d  belongs to %s", wrong, key, h, owner),
		"orders on "+wrong+": 1 misplaced row(s)")
	exec(wrong, fmt.Sprintf("DELETE FROM orders WHERE user_id = %d", key))

	// A row on a shard that owns no range.
	exec("spare0", "INSERT INTO sessions (token) VALUES ('lost')")
	_, _, lostOwner, _ := m.Locate(shardmap.KeyText, "lost")
	fails("row on a shard owning nothing", "sessions on spare0: key lost  hash "+fmt.Sprint(shardmap.HashText("lost"))+"  belongs to "+lostOwner)
	exec("spare0", "DELETE FROM sessions")

	// A NULL key.
	exec("shard1", "INSERT INTO devices (id) VALUES (NULL)")
	fails("NULL key", "devices on shard1: 1 row(s) with a NULL shard key")
	exec("shard1", "DELETE FROM devices WHERE id IS NULL")

	// A reference table differing in one value, same row count.
	exec("shard1", "UPDATE countries SET area = 357022.5 WHERE code = 'de'")
	fails("reference value differs", "reference table countries differs: shard0 has 3 row(s)", "shard1 has 3 row(s)", "DIFFERS")
	exec("shard1", "UPDATE countries SET area = 357022 WHERE code = 'de'")
	// ... and in its row count.
	exec("spare0", "DELETE FROM countries WHERE code = 'jp'")
	fails("reference row missing", "spare0 has 2 row(s)")
	exec("spare0", "INSERT INTO countries VALUES ('jp', 'Japan', NULL, 377975.25)")

	// A table missing on one shard cannot be checked.
	exec("shard0", "ALTER TABLE devices RENAME TO devices_old")
	fails("missing table", "devices on shard0: cannot check: missing table")
	exec("shard0", "ALTER TABLE devices_old RENAME TO devices")

	// Repaired: OK again.
	if code, out, errs := ctlRun(t, "verify", "--database", db); code != 0 {
		t.Errorf("verify after repair: exit %d\n%s\n%s", code, out, errs)
	}

	// Usage, credentials and token errors.
	if code, _, errs := ctlRun(t, "verify", "extra"); code != 2 || !strings.Contains(errs, "no arguments") {
		t.Errorf("verify extra: exit %d %s", code, errs)
	}
	if code, out, _ := ctlRun(t, "verify", "--database", db, "--password", "wrong"); code != 1 || !strings.Contains(out, "cannot connect") {
		t.Errorf("verify with a wrong password: exit %d\n%s", code, out)
	}
	if code, _, errs := ctlRun(t, "verify", "--token", "bad"); code != 3 {
		t.Errorf("verify --token bad: exit %d %s", code, errs)
	}
}
