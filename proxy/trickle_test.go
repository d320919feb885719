package proxy_test

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestClientTricklesBytes sends every kind of message in pieces, with
// pauses between them, wherever a piece can end: inside a message header,
// inside a body, between an extended batch's messages and its Sync, inside
// a batch the session reads ahead, inside COPY data. The session loop
// waits for the client without reading until EAGAIN and reads the rest of
// a batch or of COPY data through a second descriptor (rawio.Serve), so
// every answer must still come, whole and in order. It runs with the
// sweeper at its usual period and with one that asks the session to park
// every 20 to 40 ms, in the middle of half-read messages.
func TestClientTricklesBytes(t *testing.T) {
	for _, parking := range []bool{false, true} {
		t.Run(fmt.Sprintf("parking=%v", parking), func(t *testing.T) {
			var h *harness
			if parking {
				h = startParkingProxy(t)
			} else {
				h = startProxy(t, nil)
			}
			ctx := testCtx(t)
			setup := h.pgconn(ctx)
			if _, err := setup.Exec(ctx, "CREATE TABLE IF NOT EXISTS trickle (id int, v text)").ReadAll(); err != nil {
				t.Fatal(err)
			}
			c := h.pgconn(ctx)
			hj, err := c.Hijack()
			if err != nil {
				t.Fatal(err)
			}
			conn, fe := hj.Conn, hj.Frontend
			defer conn.Close()
			pause := 15 * time.Millisecond
			if parking {
				pause = 45 * time.Millisecond // past the sweeper's period
			}
			// send writes b in pieces cut at the given offsets.
			send := func(b []byte, cuts ...int) {
				t.Helper()
				last := 0
				for _, c := range append(cuts, len(b)) {
					if _, err := conn.Write(b[last:c]); err != nil {
						t.Fatal(err)
					}
					last = c
					if c < len(b) {
						time.Sleep(pause)
					}
				}
			}
			enc := func(msgs ...pgproto3.FrontendMessage) []byte {
				var b []byte
				for _, m := range msgs {
					var err error
					if b, err = m.Encode(b); err != nil {
						t.Fatal(err)
					}
				}
				return b
			}
			// expect reads the answer up to ReadyForQuery and returns the
			// data rows' first columns and the command tags, joined.
			expect := func(want string) {
				t.Helper()
				_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
				var got []string
				for {
					m, err := fe.Receive()
					if err != nil {
						t.Fatalf("want %q, got %q then %v", want, strings.Join(got, ","), err)
					}
					got = appendAnswer(got, m)
					switch m.(type) {
					case *pgproto3.CopyInResponse, *pgproto3.ReadyForQuery:
						if g := strings.TrimSuffix(strings.Join(got, ","), ",Z"); g != want {
							t.Fatalf("got %q, want %q", g, want)
						}
						return
					}
				}
			}

			for round := range 3 {
				// A simple query cut inside its header and its text.
				q := enc(&pgproto3.Query{String: "SELECT 40 + 2"})
				send(q, 2, len(q)-3)
				expect("42,SELECT 1")

				// An extended batch whose Sync comes later, alone.
				batch := enc(&pgproto3.Parse{Query: "SELECT $1::int * 2"},
					&pgproto3.Bind{Parameters: [][]byte{[]byte("21")}},
					&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{})
				send(append(batch, enc(&pgproto3.Sync{})...), len(batch))
				expect("42,SELECT 1")

				// A batch cut inside its Bind: the session reads the rest of
				// a batch it has begun while it waits for the client.
				batch = enc(&pgproto3.Parse{Name: fmt.Sprintf("s%d", round), Query: "SELECT $1::text"},
					&pgproto3.Bind{PreparedStatement: fmt.Sprintf("s%d", round), Parameters: [][]byte{[]byte("trickled")}},
					&pgproto3.Execute{}, &pgproto3.Sync{})
				parse := len(enc(&pgproto3.Parse{Name: fmt.Sprintf("s%d", round), Query: "SELECT $1::text"}))
				send(batch, parse+3, parse+12)
				expect("trickled,SELECT 1")

				// COPY data in pieces cut inside and between CopyData.
				send(enc(&pgproto3.Query{String: "COPY trickle FROM STDIN"}))
				expect("COPY IN")
				var data []byte
				var cuts []int
				for i := range 20 {
					data = append(data, enc(&pgproto3.CopyData{Data: fmt.Appendf(nil, "%d\trow %d\n", i, i)})...)
					if i%4 == 1 {
						cuts = append(cuts, len(data)-5)
					}
				}
				data = append(data, enc(&pgproto3.CopyDone{})...)
				cuts = append(cuts, len(data)-2)
				send(data, cuts...)
				expect("COPY 20")
			}
			send(enc(&pgproto3.Query{String: "SELECT count(*) FROM trickle"}), 1)
			expect("60,SELECT 1")
			send(enc(&pgproto3.Terminate{}), 3)
			_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
			if m, err := fe.Receive(); err == nil {
				t.Fatalf("after Terminate: %T, want the connection closed", m)
			}
			if _, err := setup.Exec(ctx, "DROP TABLE trickle").ReadAll(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestClientHalfClosesAfterQuery half-closes the client's side of the
// connection (shutdown(SHUT_WR)) right behind a request, or while its
// statement runs. PostgreSQL answers such a client and then ends the
// connection; so must pgshard, in both protocols, whether the session
// reads the end of stream before the answer or after it. A client that
// half-closes in the middle of an extended batch (no Sync) gets its
// connection ended, not a hang.
func TestClientHalfClosesAfterQuery(t *testing.T) {
	h := startProxy(t, nil)
	ctx := testCtx(t)
	const slow = "SELECT 7 FROM pg_sleep(0.2)"
	extended := func(sql string, sync bool) []pgproto3.FrontendMessage {
		m := []pgproto3.FrontendMessage{&pgproto3.Parse{Query: sql}, &pgproto3.Bind{}, &pgproto3.Execute{}}
		if sync {
			m = append(m, &pgproto3.Sync{})
		}
		return m
	}
	for _, c := range []struct {
		name  string
		msgs  []pgproto3.FrontendMessage
		pause time.Duration // before the half-close
		want  string        // "" when only the end of the connection is checked
	}{
		{"query at once", []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT 7"}}, 0, "7,SELECT 1,Z"},
		{"query while it runs", []pgproto3.FrontendMessage{&pgproto3.Query{String: slow}}, 50 * time.Millisecond, "7,SELECT 1,Z"},
		{"extended at once", extended("SELECT 7", true), 0, "7,SELECT 1,Z"},
		{"extended while it runs", extended(slow, true), 50 * time.Millisecond, "7,SELECT 1,Z"},
		{"extended without Sync", extended(slow, false), 50 * time.Millisecond, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			for range 3 {
				hj, err := h.pgconn(ctx).Hijack()
				if err != nil {
					t.Fatal(err)
				}
				conn, fe := hj.Conn, hj.Frontend
				tc, ok := conn.(interface{ CloseWrite() error })
				if !ok {
					t.Fatalf("%T cannot half-close", conn)
				}
				var buf []byte
				for _, m := range c.msgs {
					if buf, err = m.Encode(buf); err != nil {
						t.Fatal(err)
					}
				}
				if _, err := conn.Write(buf); err != nil {
					t.Fatal(err)
				}
				time.Sleep(c.pause)
				if err := tc.CloseWrite(); err != nil {
					t.Fatal(err)
				}
				_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
				var got []string
				for {
					m, err := fe.Receive()
					if errors.Is(err, os.ErrDeadlineExceeded) {
						t.Fatalf("the session did not end after the client's end of stream (got %v)", got)
					}
					if err != nil {
						break
					}
					got = appendAnswer(got, m)
				}
				if g := strings.Join(got, ","); c.want != "" && g != c.want {
					t.Fatalf("answer %q, want %q", g, c.want)
				}
				conn.Close()
			}
		})
	}
}

// appendAnswer appends what a test compares of an answer's message: a
// data row's first column, a command tag, an error's SQLSTATE, "COPY IN",
// "Z" for ReadyForQuery.
func appendAnswer(got []string, m pgproto3.BackendMessage) []string {
	switch m := m.(type) {
	case *pgproto3.DataRow:
		return append(got, string(m.Values[0]))
	case *pgproto3.CommandComplete:
		return append(got, string(m.CommandTag))
	case *pgproto3.ErrorResponse:
		return append(got, "ERROR "+m.Code)
	case *pgproto3.CopyInResponse:
		return append(got, "COPY IN")
	case *pgproto3.ReadyForQuery:
		return append(got, "Z")
	}
	return got
}
