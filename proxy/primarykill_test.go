package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgshard/pgshard/config"
	"github.com/pgshard/pgshard/topology"
	"github.com/pgshard/pgshard/topology/topotest"
)

// throughCrash runs clients that each call stmt in a loop (n counts its
// calls) while victim crashes (SIGKILL of the postmaster and its
// children) 1.5 s in and starts again a second later. It fails the test
// when a statement hangs for 20 s, when a client sees an error other than
// a connection failure (class 08, 57P0x, or a broken connection), or when
// a client does not work again within 30 s of the restart. ok is called,
// one call at a time, for every statement acknowledged. It returns the
// errors clients saw, by SQLSTATE.
func throughCrash(t *testing.T, url string, victim *topology.Server, clients int,
	stmt func(ctx context.Context, c *pgx.Conn, cl, n int) error, ok func(cl, n int)) map[string]int {
	t.Helper()
	ctx := testCtx(t)
	var (
		mu    sync.Mutex
		bad   []string
		codes = map[string]int{}
		stop  = make(chan struct{})
		back  atomic.Int64 // unix nanos when victim was back
		wg    sync.WaitGroup
	)
	okAfter := make([]atomic.Int64, clients)
	for cl := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c *pgx.Conn
			defer func() {
				if c != nil {
					c.Close(context.Background())
				}
			}()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				if c == nil || c.IsClosed() {
					var err error
					if c, err = pgx.Connect(ctx, url); err != nil {
						c = nil
						time.Sleep(50 * time.Millisecond)
						continue
					}
				}
				sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				err := stmt(sctx, c, cl, n)
				cancel()
				mu.Lock()
				switch {
				case err == nil:
					ok(cl, n)
					if b := back.Load(); b != 0 && time.Now().UnixNano() > b {
						okAfter[cl].Add(1)
					}
				case errors.Is(err, context.DeadlineExceeded):
					bad = append(bad, fmt.Sprintf("client %d: statement %d hung for 20 s", cl, n))
				default:
					code := classify(err)
					codes[code]++
					if !crashError(code) {
						bad = append(bad, fmt.Sprintf("client %d: statement %d: %s: %v", cl, n, code, err))
					}
				}
				mu.Unlock()
			}
		}()
	}
	time.Sleep(1500 * time.Millisecond)
	if err := victim.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if err := victim.Start(ctx); err != nil {
		t.Fatal(err)
	}
	back.Store(time.Now().UnixNano())
	// Each client must work again: a few acknowledged statements since.
	deadline := time.Now().Add(30 * time.Second)
	for {
		slow := 0
		for i := range okAfter {
			if okAfter[i].Load() < 3 {
				slow++
			}
		}
		if slow == 0 {
			break
		}
		if time.Now().After(deadline) {
			mu.Lock()
			bad = append(bad, fmt.Sprintf("%d clients did not work again within 30 s of the restart", slow))
			mu.Unlock()
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if len(bad) > 0 {
		if len(bad) > 20 {
			bad = append(bad[:20], fmt.Sprintf("… %d more", len(bad)-20))
		}
		t.Fatalf("errors by SQLSTATE %v:\n%s", codes, strings.Join(bad, "\n"))
	}
	return codes
}

// A shard's primary crashes while clients insert in all five pgx modes,
// and comes back a second later (throughCrash: no hang, only connection
// errors, every client works again). No statement runs twice (23505 on
// the insert's key), and every acknowledged row is there afterwards.
func TestPrimaryKilledUnderLoad(t *testing.T) {
	topo := topotest.Start(t, topology.Config{Shards: 1})
	h := startProxyOn(t, topo, func(c *config.Config) { c.Pool.Size = 8 })
	ctx := testCtx(t)
	setup := h.connect(ctx)
	if _, err := setup.Exec(ctx, "CREATE TABLE crash (client int, seq int, PRIMARY KEY (client, seq))"); err != nil {
		t.Fatal(err)
	}
	setup.Close(ctx)
	modes := []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement,
		pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec}
	for round := range rounds(1) {
		if _, err := h.direct(ctx).Exec(ctx, "TRUNCATE crash"); err != nil {
			t.Fatal(err)
		}
		acked := map[[2]int]bool{}
		codes := throughCrash(t, h.url("app"), topo.Shards[0].Primary, 2*len(modes),
			func(ctx context.Context, c *pgx.Conn, cl, n int) error {
				_, err := c.Exec(ctx, "INSERT INTO crash VALUES ($1, $2)", modes[cl%len(modes)], cl, n)
				return err
			},
			func(cl, n int) { acked[[2]int{cl, n}] = true })
		rows, err := h.direct(ctx).Query(ctx, "SELECT client, seq FROM crash")
		if err != nil {
			t.Fatal(err)
		}
		got := map[[2]int]bool{}
		for rows.Next() {
			var k [2]int
			if err := rows.Scan(&k[0], &k[1]); err != nil {
				t.Fatal(err)
			}
			got[k] = true
		}
		if rows.Err() != nil {
			t.Fatal(rows.Err())
		}
		for k := range acked {
			if !got[k] {
				t.Fatalf("round %d: acknowledged row %v is missing after the crash", round, k)
			}
		}
		t.Logf("round %d: %d rows acknowledged, %d in the table; errors seen by clients: %v", round, len(acked), len(got), codes)
	}
}

// A shard's primary crashes while clients insert rows on two shards at
// once (two-phase commit), and comes back a second later (throughCrash).
// After the recovery pass every batch is on both shards or on neither,
// every acknowledged batch is whole, and no prepared transaction is left.
func TestPrimaryKilledDuringTwoPhaseCommit(t *testing.T) {
	sh := startSharded(t, 2)
	sh.srv.SetTxnLog(newMemTxnLog())
	ctx := testCtx(t)
	if _, err := sh.connect(ctx).Exec(ctx, "CREATE TABLE pair (user_id bigint, batch int, PRIMARY KEY (user_id, batch))"); err != nil {
		t.Fatal(err)
	}
	a, b := sh.keysOnTwoShards()
	modes := []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec}
	acked := map[int]bool{}
	codes := throughCrash(t, sh.url("app"), sh.topo.Shards[sh.owner(b)].Primary, 6,
		func(ctx context.Context, c *pgx.Conn, cl, n int) error {
			_, err := c.Exec(ctx, "INSERT INTO pair VALUES ($1, $3), ($2, $3)", modes[cl%len(modes)], a, b, cl*1_000_000+n)
			return err
		},
		func(cl, n int) { acked[cl*1_000_000+n] = true })
	st, err := sh.srv.RecoverPrepared(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if n := sh.prepared(ctx); n != 0 {
		t.Fatalf("%d prepared transactions left after recovery (%+v)", n, st)
	}
	stored, onA, onB := sh.batches(ctx, "pair", a, b)
	for batch := range acked {
		if !onA[batch] || !onB[batch] {
			t.Fatalf("acknowledged batch %d: on %d's shard %v, on %d's shard %v", batch, a, onA[batch], b, onB[batch])
		}
	}
	for batch := range onA {
		if !onB[batch] {
			t.Fatalf("batch %d is only on key %d's shard", batch, a)
		}
	}
	for batch := range onB {
		if !onA[batch] {
			t.Fatalf("batch %d is only on key %d's shard", batch, b)
		}
	}
	t.Logf("%d batches acknowledged, %d stored; recovery %+v; errors by SQLSTATE %v", len(acked), len(stored), st, codes)
}

// classify names an error by SQLSTATE, or as "io" when the connection
// broke without one.
func classify(err error) string {
	if code := sqlState(err); code != "" {
		return code
	}
	return "io"
}

// crashError reports whether a client may see code when its server
// crashes: a broken connection, a connection exception (class 08), or
// the server's shutdown, crash and start-up codes.
func crashError(code string) bool {
	return code == "io" || strings.HasPrefix(code, "08") || code == "57P01" || code == "57P02" || code == "57P03"
}
