package proxy_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// exchange sends msgs on c's connection and returns a transcript of the
// answers up to the syncs-th ReadyForQuery: message types, with command
// tags, SQLSTATEs, row values and transaction status.
func exchange(ctx context.Context, t *testing.T, c *pgconn.PgConn, syncs int, msgs ...pgproto3.FrontendMessage) []string {
	t.Helper()
	fe := c.Frontend()
	for _, m := range msgs {
		fe.Send(m)
	}
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = c.Conn().SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.Conn().SetReadDeadline(time.Time{})
	var out []string
	for syncs > 0 {
		m, err := fe.Receive()
		if err != nil {
			t.Fatalf("after %v: %v", out, err)
		}
		switch m := m.(type) {
		case *pgproto3.ParseComplete:
			out = append(out, "1")
		case *pgproto3.BindComplete:
			out = append(out, "2")
		case *pgproto3.CloseComplete:
			out = append(out, "3")
		case *pgproto3.NoData:
			out = append(out, "n")
		case *pgproto3.PortalSuspended:
			out = append(out, "s")
		case *pgproto3.EmptyQueryResponse:
			out = append(out, "I")
		case *pgproto3.ParameterDescription:
			out = append(out, fmt.Sprintf("t%v", m.ParameterOIDs))
		case *pgproto3.RowDescription:
			var cols []string
			for _, f := range m.Fields {
				cols = append(cols, fmt.Sprintf("%s:%d", f.Name, f.DataTypeOID))
			}
			out = append(out, "T"+strings.Join(cols, ","))
		case *pgproto3.DataRow:
			var vals []string
			for _, v := range m.Values {
				vals = append(vals, string(v))
			}
			out = append(out, "D"+strings.Join(vals, ","))
		case *pgproto3.CommandComplete:
			out = append(out, "C"+string(m.CommandTag))
		case *pgproto3.ErrorResponse:
			out = append(out, "E"+m.Code)
		case *pgproto3.ReadyForQuery:
			out = append(out, "Z"+string(m.TxStatus))
			syncs--
		case *pgproto3.NoticeResponse:
			out = append(out, "N"+m.Code)
		case *pgproto3.ParameterStatus:
		default:
			out = append(out, fmt.Sprintf("%T", m))
		}
	}
	return out
}

// TestProtocolEdgesMatchPostgres sends the extended protocol's corner
// cases through pgshard and straight to PostgreSQL and wants the same
// answers: failed and repeated Parses of a name, Close and Describe of
// names that do not exist, the unnamed statement across batches and after
// a simple Query, suspended portals, empty queries, Flush before Sync.
func TestProtocolEdgesMatchPostgres(t *testing.T) {
	h := startProxy(t, nil)
	ctx := testCtx(t)
	protocolEdges(ctx, t, h, func() *pgconn.PgConn { return h.direct(ctx).PgConn() })
}

// TestProtocolEdgesOverShards is the same with two shards on the ring,
// where pgshard answers a BEGIN itself and opens it on a backend with the
// transaction's first statement.
func TestProtocolEdgesOverShards(t *testing.T) {
	sh := startShardedWithLog(t, 2)
	ctx := testCtx(t)
	protocolEdges(ctx, t, sh.harness, func() *pgconn.PgConn { return sh.shardConn(ctx, 0).PgConn() })
}

// protocolEdges runs the cases through h and on a connection of direct,
// pipelined and one request at a time, each mode on new connections.
func protocolEdges(ctx context.Context, t *testing.T, h *harness, directConn func() *pgconn.PgConn) {
	sync := &pgproto3.Sync{}
	cases := []struct {
		name  string
		syncs int
		msgs  []pgproto3.FrontendMessage
	}{
		{"Parse that fails, then the same name again", 3, []pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "e1", Query: "SELEC 1"}, sync,
			&pgproto3.Parse{Name: "e1", Query: "SELECT 1 AS a"}, sync,
			&pgproto3.Bind{PreparedStatement: "e1"}, &pgproto3.Execute{}, sync}},
		{"Parse that fails after a good one of the same batch", 2, []pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "e2", Query: "SELECT 2 AS b"}, &pgproto3.Parse{Name: "e3", Query: "SELEC 3"}, sync,
			&pgproto3.Bind{PreparedStatement: "e2"}, &pgproto3.Execute{}, &pgproto3.Bind{PreparedStatement: "e3"}, &pgproto3.Execute{}, sync}},
		{"Parse after a failed message in its batch", 2, []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: "SELECT 1/0"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Parse{Name: "e4", Query: "SELECT 4"}, sync,
			&pgproto3.Bind{PreparedStatement: "e4"}, &pgproto3.Execute{}, sync}},
		{"Parse of a name in use: other errors come first", 4, []pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "e5", Query: "SELECT 5"}, sync,
			&pgproto3.Parse{Name: "e5", Query: "SELEC 5"}, sync,
			&pgproto3.Parse{Name: "e5", Query: "SELECT * FROM nosuch_table"}, sync,
			&pgproto3.Parse{Name: "e5", Query: "SELECT 6"}, &pgproto3.Bind{PreparedStatement: "e5"}, &pgproto3.Execute{}, sync}},
		{"Close of names that do not exist", 1, []pgproto3.FrontendMessage{
			&pgproto3.Close{ObjectType: 'S', Name: "nosuch"}, &pgproto3.Close{ObjectType: 'P', Name: "nosuch"}, sync}},
		{"Describe of names that do not exist", 2, []pgproto3.FrontendMessage{
			&pgproto3.Describe{ObjectType: 'S', Name: "nosuch"}, sync,
			&pgproto3.Describe{ObjectType: 'P', Name: "nosuch"}, sync}},
		{"Execute of a portal that does not exist", 1, []pgproto3.FrontendMessage{
			&pgproto3.Execute{Portal: "nosuch"}, sync}},
		{"the unnamed statement in a later batch", 2, []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: "SELECT 5 AS c"}, sync,
			&pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, sync}},
		{"the unnamed statement after a simple Query", 3, []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: "SELECT 6"}, sync,
			&pgproto3.Query{String: "SELECT 7"},
			&pgproto3.Bind{}, &pgproto3.Execute{}, sync}},
		{"a statement closed, then used", 1, []pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "e8", Query: "SELECT 8"}, &pgproto3.Close{ObjectType: 'S', Name: "e8"},
			&pgproto3.Bind{PreparedStatement: "e8"}, &pgproto3.Execute{}, sync}},
		{"a suspended portal in a transaction", 3, []pgproto3.FrontendMessage{
			&pgproto3.Query{String: "BEGIN"},
			&pgproto3.Parse{Query: "SELECT g FROM generate_series(1, 3) g"}, &pgproto3.Bind{DestinationPortal: "p1"},
			&pgproto3.Execute{Portal: "p1", MaxRows: 2}, &pgproto3.Execute{Portal: "p1", MaxRows: 2}, sync,
			&pgproto3.Query{String: "COMMIT"}}},
		{"a suspended portal outside a transaction", 1, []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: "SELECT g FROM generate_series(1, 3) g"}, &pgproto3.Bind{},
			&pgproto3.Execute{MaxRows: 1}, &pgproto3.Execute{MaxRows: 1}, sync}},
		{"empty queries", 2, []pgproto3.FrontendMessage{
			&pgproto3.Query{String: ""},
			&pgproto3.Parse{Query: ""}, &pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, sync}},
		{"several statements, one failing", 1, []pgproto3.FrontendMessage{
			&pgproto3.Query{String: "SELECT 1; SELECT 1/0; SELECT 3"}}},
		{"Flush before Sync", 1, []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: "SELECT $1::int + 1"}, &pgproto3.Describe{ObjectType: 'S'}, &pgproto3.Flush{},
			&pgproto3.Bind{Parameters: [][]byte{[]byte("41")}}, &pgproto3.Execute{}, sync}},
		{"a Bind with the wrong number of parameters", 1, []pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "e9", Query: "SELECT $1::int"}, &pgproto3.Bind{PreparedStatement: "e9"}, &pgproto3.Execute{}, sync}},
		{"a Sync alone", 1, []pgproto3.FrontendMessage{sync}},
		{"a named portal across Syncs in a transaction", 4, []pgproto3.FrontendMessage{
			&pgproto3.Query{String: "BEGIN"},
			&pgproto3.Parse{Query: "SELECT g FROM generate_series(1, 2) g"}, &pgproto3.Bind{DestinationPortal: "p2"}, sync,
			&pgproto3.Execute{Portal: "p2"}, sync,
			&pgproto3.Query{String: "COMMIT"}}},
		{"a named portal across Syncs outside a transaction", 2, []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: "SELECT 1"}, &pgproto3.Bind{DestinationPortal: "p3"}, sync,
			&pgproto3.Execute{Portal: "p3"}, sync}},
		{"transaction ends without a transaction", 3, []pgproto3.FrontendMessage{
			&pgproto3.Query{String: "COMMIT"}, &pgproto3.Query{String: "ROLLBACK"}, &pgproto3.Query{String: "END"}}},
		{"BEGIN twice, and an empty transaction", 3, []pgproto3.FrontendMessage{
			&pgproto3.Query{String: "BEGIN"}, &pgproto3.Query{String: "BEGIN"}, &pgproto3.Query{String: "COMMIT"}}},
		{"a failed transaction", 4, []pgproto3.FrontendMessage{
			&pgproto3.Query{String: "BEGIN"}, &pgproto3.Query{String: "SELECT 1/0"}, &pgproto3.Query{String: "SELECT 1"}, &pgproto3.Query{String: "COMMIT"}}},
		{"a savepoint rolled back to", 6, []pgproto3.FrontendMessage{
			&pgproto3.Query{String: "BEGIN ISOLATION LEVEL REPEATABLE READ"}, &pgproto3.Query{String: "SAVEPOINT a"}, &pgproto3.Query{String: "SELECT 1/0"},
			&pgproto3.Query{String: "ROLLBACK TO SAVEPOINT a"}, &pgproto3.Query{String: "SELECT current_setting('transaction_isolation')"}, &pgproto3.Query{String: "COMMIT"}}},
		{"a transaction through the extended protocol", 3, []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: "BEGIN"}, &pgproto3.Bind{}, &pgproto3.Execute{}, sync,
			&pgproto3.Parse{Query: "SELECT 1/0"}, &pgproto3.Bind{}, &pgproto3.Execute{}, sync,
			&pgproto3.Parse{Query: "COMMIT"}, &pgproto3.Bind{}, &pgproto3.Execute{}, sync}},
		{"a Query string that opens and ends a transaction", 1, []pgproto3.FrontendMessage{
			&pgproto3.Query{String: "BEGIN; SELECT 1; COMMIT; SELECT 2"}}},
		{"a Query string that leaves a transaction open", 2, []pgproto3.FrontendMessage{
			&pgproto3.Query{String: "SELECT 1; BEGIN; SELECT 2"}, &pgproto3.Query{String: "ROLLBACK"}}},
		{"LOCK outside and inside a transaction", 4, []pgproto3.FrontendMessage{
			&pgproto3.Query{String: "LOCK TABLE pg_class IN ACCESS SHARE MODE"}, &pgproto3.Query{String: "BEGIN"},
			&pgproto3.Query{String: "LOCK TABLE pg_class IN ACCESS SHARE MODE"}, &pgproto3.Query{String: "COMMIT"}}},
		{"DDL described", 1, []pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: "CREATE TEMP TABLE IF NOT EXISTS edges_tmp (a int)"}, &pgproto3.Describe{ObjectType: 'S'}, &pgproto3.Bind{},
			&pgproto3.Execute{}, sync}},
	}
	bad := 0
	for _, pipelined := range []bool{true, false} {
		direct := directConn()
		via := h.pgconn(ctx)
		run := func(c *pgconn.PgConn, syncs int, msgs []pgproto3.FrontendMessage) []string {
			if pipelined {
				return exchange(ctx, t, c, syncs, msgs...)
			}
			// One request at a time, each answered before the next.
			var out []string
			for len(msgs) > 0 {
				i := slices.IndexFunc(msgs, func(m pgproto3.FrontendMessage) bool {
					switch m.(type) {
					case *pgproto3.Sync, *pgproto3.Query:
						return true
					}
					return false
				})
				out = append(out, exchange(ctx, t, c, 1, msgs[:i+1]...)...)
				msgs = msgs[i+1:]
			}
			return out
		}
		for _, c := range cases {
			want := run(direct, c.syncs, c.msgs)
			got := run(via, c.syncs, c.msgs)
			if !slices.Equal(got, want) {
				bad++
				t.Errorf("%s (pipelined %v):\n  pgshard    %s\n  PostgreSQL %s", c.name, pipelined, strings.Join(got, " "), strings.Join(want, " "))
			}
		}
	}
	t.Logf("%d of %d cases differ", bad, 2*len(cases))
}
