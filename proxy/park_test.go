package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgshard/pgshard/internal/testutil"
	"github.com/pgshard/pgshard/proxy"
)

const testSweep = 20 * time.Millisecond

// startParkingProxy starts a proxy whose sweeper parks sessions idle for
// 20 to 40 ms.
func startParkingProxy(t *testing.T) *harness {
	old := proxy.SetParkSweep(testSweep)
	t.Cleanup(func() { proxy.SetParkSweep(old) })
	return startProxy(t, nil)
}

func waitParked(t *testing.T, h *harness, n int) {
	t.Helper()
	testutil.WaitFor(t, 20*time.Second, fmt.Sprintf("%d sessions parked", n), func() error {
		if got := h.srv.Parked(); got != n {
			return fmt.Errorf("%d parked", got)
		}
		return nil
	})
}

// TestIdleClientsPark parks idle sessions of every protocol mode, wakes
// them with their next statement (prepared statements, settings and the
// session's state intact), ends the ones whose clients hang up while
// parked, and shuts down with sessions parked.
func TestIdleClientsPark(t *testing.T) {
	h := startParkingProxy(t)
	ctx := testCtx(t)
	const n = 30
	var simple []*pgconn.PgConn
	var ext []*pgx.Conn
	for i := range n {
		if i%2 == 0 {
			c := h.pgconn(ctx)
			if _, err := c.Exec(ctx, fmt.Sprintf("SET application_name = 'park%d'", i)).ReadAll(); err != nil {
				t.Fatal(err)
			}
			simple = append(simple, c)
		} else {
			c := h.connect(ctx) // pgx caches prepared statements
			var v int
			if err := c.QueryRow(ctx, "SELECT $1::int + 1", i).Scan(&v); err != nil || v != i+1 {
				t.Fatalf("query: %d, %v", v, err)
			}
			ext = append(ext, c)
		}
	}
	for round := range 3 {
		waitParked(t, h, n)
		// Parked sessions keep no shard bindings or buffers (the memory
		// per idle client).
		if parked, holding := h.srv.ParkedHolding(); parked != n || holding != 0 {
			t.Fatalf("round %d: %d parked sessions, %d of them holding per-session state", round, parked, holding)
		}
		for i, c := range simple {
			res, err := c.Exec(ctx, "SHOW application_name").ReadAll()
			if err != nil || string(res[0].Rows[0][0]) != fmt.Sprintf("park%d", 2*i) {
				t.Fatalf("round %d: simple client %d after parking: %v %v", round, i, res, err)
			}
		}
		for i, c := range ext {
			var v int
			if err := c.QueryRow(ctx, "SELECT $1::int + 1", round).Scan(&v); err != nil || v != round+1 {
				t.Fatalf("round %d: extended client %d after parking: %d, %v", round, i, v, err)
			}
		}
	}
	waitParked(t, h, n)
	// Clients that hang up while parked end their sessions.
	before := h.srv.Clients()
	for _, c := range simple[:5] {
		if err := c.Conn().Close(); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range ext[:5] {
		if err := c.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
	testutil.WaitFor(t, 10*time.Second, "hung-up sessions to end", func() error {
		if got := h.srv.Clients(); got != before-10 {
			return fmt.Errorf("%d clients, want %d", got, before-10)
		}
		return nil
	})
	waitParked(t, h, n-10)
	// The harness's cleanup shuts down with 20 sessions parked; it fails on
	// a timeout.
}

// TestBusySessionsAreNotParked: an open transaction, half a message and a
// COPY whose client pauses longer than a sweep keep their session, and
// each goes on where it was.
func TestBusySessionsAreNotParked(t *testing.T) {
	h := startParkingProxy(t)
	ctx := testCtx(t)
	pause := func() { time.Sleep(6 * testSweep) }

	// An open transaction holds its backend.
	tx := h.pgconn(ctx)
	if _, err := tx.Exec(ctx, "CREATE TABLE p (id int, v text); BEGIN; INSERT INTO p VALUES (1, 'a')").ReadAll(); err != nil {
		t.Fatal(err)
	}
	pause()
	if got := h.srv.Parked(); got != 0 {
		t.Fatalf("%d sessions parked with a transaction open", got)
	}
	if _, err := tx.Exec(ctx, "COMMIT").ReadAll(); err != nil {
		t.Fatal(err)
	}

	// A message sent in pieces with pauses between them, short and over
	// the read buffer's size.
	raw := h.pgconn(ctx)
	for _, size := range []int{10, 200 << 10} {
		q := fmt.Sprintf("SELECT length('%s')", strings.Repeat("x", size))
		msg, err := (&pgproto3.Query{String: q}).Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, cut := range [][]byte{msg[:3], msg[3 : len(msg)/2], msg[len(msg)/2:]} {
			if _, err := raw.Conn().Write(cut); err != nil {
				t.Fatal(err)
			}
			pause()
		}
		var got string
		for {
			m, err := raw.ReceiveMessage(ctx)
			if err != nil {
				t.Fatalf("size %d: %v", size, err)
			}
			if d, ok := m.(*pgproto3.DataRow); ok {
				got = string(d.Values[0])
			}
			if e, ok := m.(*pgproto3.ErrorResponse); ok {
				t.Fatalf("size %d: %s", size, e.Message)
			}
			if _, ok := m.(*pgproto3.ReadyForQuery); ok {
				break
			}
		}
		if got != fmt.Sprint(size) {
			t.Fatalf("size %d: length %q", size, got)
		}
	}

	// COPY data with pauses longer than a sweep.
	pr, pw := io.Pipe()
	go func() {
		for i := range 5 {
			fmt.Fprintf(pw, "%d\trow %d\n", i+10, i)
			pause()
		}
		pw.Close()
	}()
	tag, err := tx.CopyFrom(ctx, pr, "COPY p FROM STDIN")
	if err != nil || tag.RowsAffected() != 5 {
		t.Fatalf("copy: %v, %v", tag, err)
	}
	res, err := tx.Exec(ctx, "SELECT count(*) FROM p").ReadAll()
	if err != nil || string(res[0].Rows[0][0]) != "6" {
		t.Fatalf("count: %v %v", res, err)
	}
	// Idle at last, both park.
	waitParked(t, h, 2)
	ctx2, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := raw.Exec(ctx2, "SELECT 1").ReadAll(); err != nil {
		t.Fatal(err)
	}
}

// TestParkingUnderChurn runs clients that pause at random (0-20 ms) between
// statements while the sweeper parks sessions idle for 2 to 4 ms, so that
// sessions park and wake all the time: prepared statements, transactions
// with pauses inside, pipelined batches, COPY, and cancel requests sent
// at random moments, some to parked sessions. Every answer is checked and
// every committed row counted.
func TestParkingUnderChurn(t *testing.T) {
	old := proxy.SetParkSweep(2 * time.Millisecond)
	t.Cleanup(func() { proxy.SetParkSweep(old) })
	h := startProxy(t, nil)
	ctx := testCtx(t)
	setup := h.pgconn(ctx)
	if _, err := setup.Exec(ctx, "CREATE TABLE churn (client int, n int)").ReadAll(); err != nil {
		t.Fatal(err)
	}
	var maxParked atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			if n := int64(h.srv.Parked()); n > maxParked.Load() {
				maxParked.Store(n)
			}
		}
	}()
	const clients = 12
	deadline := time.Now().Add(6 * time.Second)
	var wg sync.WaitGroup
	committed := make([]int, clients)
	errs := make(chan error, clients)
	for id := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(id), 7))
			c, err := pgx.Connect(ctx, h.url("app"))
			if err != nil {
				errs <- err
				return
			}
			defer c.Close(context.Background())
			pc := c.PgConn()
			for i := 0; time.Now().Before(deadline); i++ {
				time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
				switch op := rng.IntN(6); op {
				case 0: // prepared statement (pgx caches it)
					var v int
					if err := c.QueryRow(ctx, "SELECT $1::int * 2", i).Scan(&v); err != nil || v != 2*i {
						errs <- fmt.Errorf("client %d: prepared: %d, %v", id, v, err)
						return
					}
				case 1: // a transaction with a pause inside
					tx, err := c.Begin(ctx)
					if err == nil {
						_, err = tx.Exec(ctx, "INSERT INTO churn VALUES ($1, $2)", id, i)
					}
					time.Sleep(time.Duration(rng.IntN(10)) * time.Millisecond)
					if err == nil {
						err = tx.Commit(ctx)
					}
					if err != nil {
						errs <- fmt.Errorf("client %d: transaction: %v", id, err)
						return
					}
					committed[id]++
				case 2: // several statements in one simple Query
					res, err := pc.Exec(ctx, fmt.Sprintf("SELECT %d; SELECT 'x' || %d", i, i)).ReadAll()
					if err != nil || len(res) != 2 || string(res[1].Rows[0][0]) != fmt.Sprintf("x%d", i) {
						errs <- fmt.Errorf("client %d: multi-statement: %v", id, err)
						return
					}
				case 3: // a pipelined batch
					b := &pgx.Batch{}
					b.Queue("SELECT $1::int", i)
					b.Queue("INSERT INTO churn VALUES ($1, $2)", id, -i)
					b.Queue("SELECT $1::text", "done")
					var v int
					var s string
					br := c.SendBatch(ctx, b)
					err1 := br.QueryRow().Scan(&v)
					_, err2 := br.Exec()
					err3 := br.QueryRow().Scan(&s)
					if err := errors.Join(err1, err2, err3, br.Close()); err != nil || v != i || s != "done" {
						errs <- fmt.Errorf("client %d: batch: %v", id, err)
						return
					}
					committed[id]++
				case 4: // COPY
					tag, err := pc.CopyFrom(ctx, strings.NewReader(fmt.Sprintf("%d\t%d\n%d\t%d\n", id, i, id, i)), "COPY churn FROM STDIN")
					if err != nil || tag.RowsAffected() != 2 {
						errs <- fmt.Errorf("client %d: copy: %v", id, err)
						return
					}
					committed[id] += 2
				case 5: // a cancel at a random moment (pgx sends CancelRequest)
					qctx, cancel := context.WithTimeout(ctx, time.Duration(rng.IntN(30))*time.Millisecond)
					_, err := c.Exec(qctx, "SELECT pg_sleep(0.02)")
					cancel()
					if err != nil && sqlState(err) != "57014" && !errors.Is(err, context.DeadlineExceeded) && !pgconn.Timeout(err) {
						errs <- fmt.Errorf("client %d: cancelled query: %v", id, err)
						return
					}
					if pc.IsClosed() {
						// pgx closes a connection whose query a context ended
						// before it could cancel it: open another.
						c.Close(context.Background())
						if c, err = pgx.Connect(ctx, h.url("app")); err != nil {
							errs <- err
							return
						}
						pc = c.PgConn()
					}
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	for id, want := range committed {
		res, err := setup.Exec(ctx, fmt.Sprintf("SELECT count(*) FROM churn WHERE client = %d", id)).ReadAll()
		if err != nil || string(res[0].Rows[0][0]) != fmt.Sprint(want) {
			t.Errorf("client %d: %v rows, want %d (%v)", id, res, want, err)
		}
	}
	if maxParked.Load() < 2 {
		t.Errorf("at most %d sessions were parked at once: the test did not exercise parking", maxParked.Load())
	}
	t.Logf("at most %d of %d sessions parked at once", maxParked.Load(), clients)
}
