package merge

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshard/pgshard/topology"
	"github.com/pgshard/pgshard/topology/topotest"
	"github.com/pgshard/pgshard/wire"
)

func TestMain(m *testing.M) {
	os.Exit(topotest.Run(m, topology.Config{Shards: 1}))
}

// shardCounts are the splits the differential tests use: table t holds
// all rows; t_<n>_<k> holds the rows of shard k of n.
var shardCounts = []int{1, 2, 3, 4}

// realDB is a PostgreSQL database with table t and its shards, and one
// connection per shard (a merge reads the shards concurrently).
type realDB struct {
	conns []*pgconn.PgConn
}

func setupRealDB(t *testing.T, seed uint64) *realDB {
	t.Helper()
	topo := topotest.Shared(t)
	db := topotest.NewDatabase(t, topo)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rdb := &realDB{}
	for i := 0; i < 5; i++ {
		c, err := pgconn.Connect(ctx, topo.Shards[0].Primary.URL("app", "app", db))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		rdb.conns = append(rdb.conns, c)
	}
	var sql strings.Builder
	sql.WriteString(`SET TimeZone = 'Asia/Kolkata';
CREATE TABLE t (id int PRIMARY KEY, g int, a int4, h int2, b int8, n numeric, n2 numeric, f float8, f2 float8,
  r float4, d date, ts timestamp, tz timestamptz, u uuid, by bytea, s text, c char(3), bo bool);
INSERT INTO t VALUES `)
	rnd := rand.New(rand.NewPCG(seed, 1))
	null := func(p float64, v string) string {
		if rnd.Float64() < p {
			return "NULL"
		}
		return v
	}
	pick := func(vs ...string) string { return vs[rnd.IntN(len(vs))] }
	alphabet := []string{"a", "b", "B", "A", "é", " ", "z", "ab", "", "~"}
	for id := 1; id <= 700; id++ {
		if id > 1 {
			sql.WriteString(",\n")
		}
		var s strings.Builder
		for k := rnd.IntN(4); k > 0; k-- {
			s.WriteString(pick(alphabet...))
		}
		var by strings.Builder
		for k := rnd.IntN(4); k > 0; k-- {
			fmt.Fprintf(&by, "%02x", pick("00", "01", "7f", "80", "ff", "41")[0:2])
		}
		scale := rnd.IntN(5)
		num := fmt.Sprintf("%d", rnd.IntN(2000000)-1000000)
		if scale > 0 {
			num = fmt.Sprintf("%s.%0*d", num, scale, rnd.IntN(pow10i(scale)))
		}
		fmt.Fprintf(&sql, "(%d, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
			id,
			null(0.05, fmt.Sprint(rnd.IntN(12))),
			null(0.1, fmt.Sprint(rnd.IntN(201)-100)),
			null(0.1, fmt.Sprint(rnd.IntN(60001)-30000)),
			null(0.1, fmt.Sprint(rnd.Int64N(2e15)-1e15)),
			null(0.1, pick("'"+num+"'", "'"+num+"'", "'"+num+"'", "'"+num+"'", "'"+num+"'", "'NaN'", "'-7.5'", "'0.000'")),
			null(0.1, pick("1", "1.0", "1.00", "-0.0", "2.5", "'NaN'", "100000000000000000000")),
			null(0.1, pick(fmt.Sprint(float64(rnd.IntN(801)-400)/4), "'-0'", "'NaN'", "0.5", "1e10", "'Infinity'")),
			null(0.1, pick("0", "'-0'", "1.5", "'NaN'", "-2.25")),
			null(0.1, fmt.Sprint(float64(rnd.IntN(201)-100)/2)),
			null(0.1, pick(fmt.Sprintf("'%04d-%02d-%02d'", 1+rnd.IntN(3000), 1+rnd.IntN(12), 1+rnd.IntN(28)), "'infinity'", "'-infinity'", "'0044-03-15 BC'")),
			null(0.1, fmt.Sprintf("'%04d-%02d-%02d %02d:%02d:%02d.%06d'", 1+rnd.IntN(3000), 1+rnd.IntN(12), 1+rnd.IntN(28), rnd.IntN(24), rnd.IntN(60), rnd.IntN(60), rnd.IntN(1000000)/pow10i(rnd.IntN(7)))),
			null(0.1, pick(fmt.Sprintf("'2024-%02d-%02d %02d:%02d:%02d.%d+%02d:%02d'", 1+rnd.IntN(12), 1+rnd.IntN(28), rnd.IntN(24), rnd.IntN(60), rnd.IntN(60), rnd.IntN(1000), rnd.IntN(14), 15*rnd.IntN(4)), "'infinity'", "'1900-01-01 00:00:00+00'", "'0010-01-01 00:00:00+00 BC'")),
			null(0.1, fmt.Sprintf("'%08x-0000-4000-8000-%012x'", rnd.Uint32(), rnd.Uint64()&0xffffffffffff)),
			null(0.1, "'\\x"+by.String()+"'"),
			null(0.1, "'"+s.String()+"'"),
			null(0.1, pick("'a'", "'a  '", "'b'", "'ab'", "''")),
			null(0.1, pick("true", "false")),
		)
	}
	sql.WriteString(";\n")
	for _, n := range shardCounts {
		for k := 0; k < n; k++ {
			fmt.Fprintf(&sql, "CREATE TABLE t_%d_%d AS SELECT * FROM t WHERE (id * 7919) %% %d = %d;\n", n, k, n, k)
		}
	}
	if _, err := rdb.conns[0].Exec(ctx, sql.String()).ReadAll(); err != nil {
		t.Fatal(err)
	}
	for _, c := range rdb.conns {
		if _, err := c.Exec(ctx, "SET TimeZone = 'Asia/Kolkata'").ReadAll(); err != nil {
			t.Fatal(err)
		}
	}
	return rdb
}

func pow10i(n int) int {
	p := 1
	for ; n > 0; n-- {
		p *= 10
	}
	return p
}

// rrSource adapts a pgconn.ResultReader: the proxy's backend legs will
// look the same.
type rrSource struct{ rr *pgconn.ResultReader }

func (s rrSource) Next() ([][]byte, bool, error) {
	if s.rr.NextRow() {
		return s.rr.Values(), true, nil
	}
	_, err := s.rr.Close()
	return nil, false, err
}

// diffCase is one query: Full runs on t; Shard (with {T} for the table)
// runs on each shard; Spec says how to merge. Ordered says the full
// query's row order is fully determined (otherwise rows are compared as
// multisets).
type diffCase struct {
	Full, Shard string
	Spec        func(in []pgproto3.FieldDescription) Spec
	// Formats are the client's result formats; ShardFormats the shards'.
	Formats, ShardFormats []int16
	Ordered               bool
	// WantErr is the SQLSTATE the query fails with, if it should.
	WantErr string
}

type result struct {
	fields []pgproto3.FieldDescription
	rows   [][]string
	tag    string
	err    string
	code   string // the error's SQLSTATE
}

func sqlState(err error) string {
	var st interface{ SQLState() string }
	if errors.As(err, &st) {
		return st.SQLState()
	}
	var we *wire.Error
	if errors.As(err, &we) {
		return we.Code
	}
	return ""
}

func toFields(fds []pgconn.FieldDescription) []pgproto3.FieldDescription {
	var out []pgproto3.FieldDescription
	for _, f := range fds {
		out = append(out, pgproto3.FieldDescription{Name: []byte(f.Name), TableOID: f.TableOID,
			TableAttributeNumber: f.TableAttributeNumber, DataTypeOID: f.DataTypeOID, DataTypeSize: f.DataTypeSize,
			TypeModifier: f.TypeModifier, Format: f.Format})
	}
	return out
}

func rowStrings(row [][]byte) []string {
	var out []string
	for _, v := range row {
		if v == nil {
			out = append(out, "NULL")
		} else {
			out = append(out, fmt.Sprintf("%q", v))
		}
	}
	return out
}

func (db *realDB) direct(ctx context.Context, c diffCase) result {
	var res result
	rr := db.conns[0].ExecParams(ctx, c.Full, nil, nil, nil, c.Formats)
	res.fields = toFields(rr.FieldDescriptions())
	for rr.NextRow() {
		res.rows = append(res.rows, rowStrings(rr.Values()))
	}
	tag, err := rr.Close()
	res.tag = tag.String()
	if err != nil {
		res.err, res.code = err.Error(), sqlState(err)
	}
	return res
}

func (db *realDB) merged(ctx context.Context, c diffCase, n int) (result, error) {
	var res result
	var srcs []Source
	var in []pgproto3.FieldDescription
	formats := c.ShardFormats
	if formats == nil {
		formats = c.Formats
	}
	for k := 0; k < n; k++ {
		sql := strings.ReplaceAll(c.Shard, "{T}", fmt.Sprintf("t_%d_%d", n, k))
		rr := db.conns[1+k].ExecParams(ctx, sql, nil, nil, nil, formats)
		if k == 0 {
			in = toFields(rr.FieldDescriptions())
		}
		srcs = append(srcs, rrSource{rr})
	}
	defer func() {
		for _, s := range srcs { // drain what a LIMIT left unread
			s.(rrSource).rr.Close()
		}
	}()
	m, err := New(c.Spec(in), srcs)
	if err != nil {
		return res, err
	}
	res.fields = m.RowDescription().Fields
	for {
		row, ok, err := m.Next()
		if err != nil {
			res.err, res.code = err.Error(), sqlState(err)
			break
		}
		if !ok {
			break
		}
		res.rows = append(res.rows, rowStrings(row))
	}
	res.tag = string(m.CommandTag())
	return res, nil
}

// compare reports the differences between a direct and a merged result.
func compareResults(direct, merged result, ordered bool) string {
	if direct.err != "" || merged.err != "" {
		if (direct.err == "") != (merged.err == "") || direct.code != merged.code {
			return fmt.Sprintf("error: direct %q, merged %q", direct.err, merged.err)
		}
		return ""
	}
	if len(direct.fields) != len(merged.fields) {
		return fmt.Sprintf("%d fields, merged %d", len(direct.fields), len(merged.fields))
	}
	for i := range direct.fields {
		d, m := direct.fields[i], merged.fields[i]
		d.TableOID, m.TableOID = 0, 0 // each shard's table has its own OID
		if !bytes.Equal(d.Name, m.Name) || d.TableAttributeNumber != m.TableAttributeNumber || d.DataTypeOID != m.DataTypeOID ||
			d.DataTypeSize != m.DataTypeSize || d.TypeModifier != m.TypeModifier || d.Format != m.Format {
			return fmt.Sprintf("field %d: direct %+v, merged %+v", i, direct.fields[i], merged.fields[i])
		}
	}
	if direct.tag != merged.tag {
		return fmt.Sprintf("tag: direct %q, merged %q", direct.tag, merged.tag)
	}
	dr, mr := direct.rows, merged.rows
	if !ordered {
		dr, mr = sortedRows(dr), sortedRows(mr)
	}
	for i := range dr {
		if !slices.Equal(dr[i], mr[i]) {
			return fmt.Sprintf("row %d: direct %v, merged %v", i, dr[i], mr[i])
		}
	}
	return ""
}

func sortedRows(rows [][]string) [][]string {
	out := slices.Clone(rows)
	slices.SortFunc(out, func(a, b []string) int { return slices.Compare(a, b) })
	return out
}

// check runs c directly and merged over every split and returns the
// number of rows compared.
func (db *realDB) check(t *testing.T, name string, c diffCase) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	direct := db.direct(ctx, c)
	if direct.code != c.WantErr {
		t.Fatalf("%s: direct query failed: %s\n%s", name, direct.err, c.Full)
	}
	rows := 0
	for _, n := range shardCounts {
		merged, err := db.merged(ctx, c, n)
		if err != nil {
			t.Errorf("%s over %d shards: %v\n%s", name, n, err, c.Full)
			continue
		}
		if d := compareResults(direct, merged, c.Ordered); d != "" {
			t.Errorf("%s over %d shards: %s\n%s", name, n, d, c.Full)
		}
		rows += len(direct.rows)
	}
	return rows
}

func formats(n int, f int16) []int16 {
	out := make([]int16, n)
	for i := range out {
		out[i] = f
	}
	return out
}
