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

// A shard's primary crashes (SIGKILL of the postmaster and its children)
// while clients write in every protocol mode, and comes back a second
// later. No statement hangs; the errors clients see are the ones a
// crashed PostgreSQL gives (connection failures, class 08 or 57P0x),
// never a statement run twice (23505 on the insert's key) or a protocol
// error; every acknowledged row is there afterwards; and every client
// works again once the primary is back.
func TestPrimaryKilledUnderLoad(t *testing.T) {
	topo := topotest.Start(t, topology.Config{Shards: 1})
	h := startProxyOn(t, topo, func(c *config.Config) { c.Pool.Size = 8 })
	ctx := testCtx(t)
	setup := h.connect(ctx)
	if _, err := setup.Exec(ctx, "CREATE TABLE crash (client int, seq int, PRIMARY KEY (client, seq))"); err != nil {
		t.Fatal(err)
	}
	setup.Close(ctx)
	primary := topo.Shards[0].Primary
	for round := range rounds(1) {
		if _, err := h.direct(ctx).Exec(ctx, "TRUNCATE crash"); err != nil {
			t.Fatal(err)
		}
		var (
			mu       sync.Mutex
			acked    = map[[2]int]bool{}
			bad      []string
			errCodes = map[string]int{}
			stop     = make(chan struct{})
			back     atomic.Int64 // unix nanos when the primary was back
			wg       sync.WaitGroup
		)
		modes := []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement,
			pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec}
		okAfter := make([]atomic.Int64, 2*len(modes))
		for cl := range okAfter {
			mode := modes[cl%len(modes)]
			wg.Add(1)
			go func() {
				defer wg.Done()
				var c *pgx.Conn
				defer func() {
					if c != nil {
						c.Close(context.Background())
					}
				}()
				for seq := 0; ; seq++ {
					select {
					case <-stop:
						return
					default:
					}
					if c == nil || c.IsClosed() {
						var err error
						if c, err = pgx.Connect(ctx, h.url("app")); err != nil {
							c = nil
							mu.Lock()
							errCodes[classify(err)]++
							mu.Unlock()
							time.Sleep(50 * time.Millisecond)
							continue
						}
					}
					sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
					_, err := c.Exec(sctx, "INSERT INTO crash VALUES ($1, $2)", mode, cl, seq)
					cancel()
					mu.Lock()
					switch {
					case err == nil:
						acked[[2]int{cl, seq}] = true
						if b := back.Load(); b != 0 && time.Now().UnixNano() > b {
							okAfter[cl].Add(1)
						}
					case errors.Is(err, context.DeadlineExceeded):
						bad = append(bad, fmt.Sprintf("client %d (%v): insert %d hung for 20 s", cl, mode, seq))
					default:
						code := classify(err)
						errCodes[code]++
						if !crashError(code) {
							bad = append(bad, fmt.Sprintf("client %d (%v): insert %d: %s: %v", cl, mode, seq, code, err))
						}
					}
					mu.Unlock()
				}
			}()
		}
		time.Sleep(1500 * time.Millisecond)
		if err := primary.Kill(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		if err := primary.Start(ctx); err != nil {
			t.Fatal(err)
		}
		back.Store(time.Now().UnixNano())
		// Each client must work again: wait until every one has had a
		// few inserts acknowledged since the primary came back.
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
				bad = append(bad, fmt.Sprintf("%d clients did not work again within 30 s of the primary's restart", slow))
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
			t.Fatalf("round %d:\n%s", round, strings.Join(bad, "\n"))
		}
		// Every acknowledged row is there, and nothing else.
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
		t.Logf("round %d: %d rows acknowledged, %d in the table; errors seen by clients: %v", round, len(acked), len(got), errCodes)
	}
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
