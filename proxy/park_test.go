package proxy_test

import (
	"context"
	"fmt"
	"io"
	"strings"
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
