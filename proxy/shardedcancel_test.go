package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Cancels at random moments while clients run keyed writes, multi-shard
// inserts (two-phase commit), scatter reads and two-shard transactions,
// in both protocols. No statement hangs; clients see no error but a
// cancel (57014) and keep their connections; every multi-shard write is
// all or nothing, acknowledged ones whole; and no prepared transaction is
// left once recovery ran. (A cancel lands only while a statement runs:
// the two-shard transactions sleep 30 ms between their legs for that.)
func TestShardedCancelStorm(t *testing.T) {
	sh := startSharded(t, 2)
	sh.srv.SetTxnLog(newMemTxnLog())
	ctx := testCtx(t)
	if _, err := sh.connect(ctx).Exec(ctx, "CREATE TABLE storm (user_id bigint, batch int, PRIMARY KEY (user_id, batch))"); err != nil {
		t.Fatal(err)
	}
	a, b := sh.keysOnTwoShards()
	k := b + 1 // the keyed inserts' key
	for k == a || k == b {
		k++
	}
	const clients = 8
	var (
		mu      sync.Mutex
		bad     []string
		codes   = map[string]int{}
		acked   = map[int]int{} // batch -> rows acknowledged
		conns   = make([]*pgx.Conn, clients)
		wg      sync.WaitGroup
		stop    = make(chan struct{})
		cancels int
	)
	for i := range conns {
		conns[i] = sh.connect(ctx)
	}
	for cl := range clients {
		mode := []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement}[cl%2]
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(cl), 3))
			c := conns[cl]
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				batch := cl*1_000_000 + n
				sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
				var err error
				rows := 0
				op := rng.IntN(4)
				switch op {
				case 0: // keyed
					_, err = c.Exec(sctx, "INSERT INTO storm VALUES ($1, $2)", mode, k, batch)
					rows = 1
				case 1: // split over both shards: two-phase commit
					_, err = c.Exec(sctx, "INSERT INTO storm VALUES ($1, $3), ($2, $3)", mode, a, b, batch)
					rows = 2
				case 2: // scatter read
					var k int64
					err = c.QueryRow(sctx, "SELECT count(*) FROM storm", mode).Scan(&k)
				case 3: // a transaction on both shards
					err = pgx.BeginFunc(sctx, c, func(tx pgx.Tx) error {
						if _, err := tx.Exec(sctx, "INSERT INTO storm VALUES ($1, $2)", mode, a, batch); err != nil {
							return err
						}
						// Something for a cancel to hit between the legs.
						if _, err := tx.Exec(sctx, "SELECT pg_sleep(0.03)", mode); err != nil {
							return err
						}
						_, err := tx.Exec(sctx, "INSERT INTO storm VALUES ($1, $2)", mode, b, batch)
						return err
					})
					rows = 2
				}
				cancel()
				mu.Lock()
				switch {
				case err == nil:
					if rows > 0 {
						acked[batch] = rows
					}
				case errors.Is(err, context.DeadlineExceeded):
					bad = append(bad, fmt.Sprintf("client %d op %d: hung for 20 s", cl, op))
				default:
					code := sqlState(err)
					codes[code]++
					if code != "57014" {
						bad = append(bad, fmt.Sprintf("client %d op %d (%v): %v", cl, op, mode, err))
					}
				}
				mu.Unlock()
				if c.IsClosed() {
					mu.Lock()
					bad = append(bad, fmt.Sprintf("client %d: connection closed after %v", cl, err))
					mu.Unlock()
					return
				}
			}
		}()
	}
	rng := rand.New(rand.NewPCG(99, 1))
	end := time.Now().Add(4 * time.Second)
	for time.Now().Before(end) {
		time.Sleep(time.Duration(1+rng.IntN(10)) * time.Millisecond)
		_ = conns[rng.IntN(clients)].PgConn().CancelRequest(ctx)
		cancels++
	}
	close(stop)
	wg.Wait()
	if len(bad) > 0 {
		if len(bad) > 20 {
			bad = append(bad[:20], fmt.Sprintf("… %d more", len(bad)-20))
		}
		t.Fatalf("%d cancels; errors by SQLSTATE %v:\n%s", cancels, codes, strings.Join(bad, "\n"))
	}
	// Recovery finishes what a cancel left prepared; then nothing is left.
	if _, err := sh.srv.RecoverPrepared(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if n := sh.prepared(ctx); n != 0 {
		t.Fatalf("%d prepared transactions left after recovery", n)
	}
	// All or nothing per batch (a two-shard batch writes keys a and b,
	// a keyed insert only key k), acknowledged ones whole.
	got, withA, withB := sh.batches(ctx, "storm", a, b)
	for batch, n := range acked {
		if got[batch] != n {
			t.Fatalf("batch %d: %d rows acknowledged, %d stored", batch, n, got[batch])
		}
	}
	for batch := range got {
		if withA[batch] != withB[batch] {
			t.Fatalf("batch %d is half applied (key %d: %v, key %d: %v)", batch, a, withA[batch], b, withB[batch])
		}
	}
	t.Logf("%d cancels; %d batches acknowledged, %d stored; errors by SQLSTATE %v", cancels, len(acked), len(got), codes)
}
