package merge

import (
	"encoding/binary"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// genSource yields n rows (key, payload) with keys start, start+step, ...
// in a reused buffer, as a backend leg's reader would.
type genSource struct {
	n, key, step int64
	format       int16
	decimal      bool // text keys as numerics with a fraction
	row          [][]byte
	buf          [8]byte
	txt          []byte
	payload      []byte
}

func (g *genSource) Next() ([][]byte, bool, error) {
	if g.n == 0 {
		return nil, false, nil
	}
	g.n--
	if g.format == BinaryFormat {
		binary.BigEndian.PutUint64(g.buf[:], uint64(g.key))
		g.row[0] = g.buf[:]
	} else {
		g.txt = strconv.AppendInt(g.txt[:0], g.key, 10)
		if g.decimal {
			g.txt = append(g.txt, ".25"...)
		}
		g.row[0] = g.txt
	}
	g.row[1] = g.payload
	g.key += g.step
	return g.row, true, nil
}

func benchMerge(b *testing.B, format int16, orderBy bool) {
	benchMergeType(b, OIDInt8, format, orderBy)
}

func benchMergeType(b *testing.B, keyType uint32, format int16, orderBy bool) {
	const total = 1_000_000
	in := []pgproto3.FieldDescription{
		{Name: []byte("k"), DataTypeOID: keyType, Format: format},
		{Name: []byte("p"), DataTypeOID: OIDText, Format: format},
	}
	spec := Spec{Input: in, Columns: []Column{{Kind: Value, Arg: 0, Format: format}, {Kind: Value, Arg: 1, Format: format}}}
	if orderBy {
		spec.OrderBy = []SortKey{{Column: 0}}
	}
	b.ReportAllocs()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		srcs := []Source{
			&genSource{n: total / 2, key: 0, step: 2, format: format, row: make([][]byte, 2), payload: []byte("some payload text"), decimal: keyType == OIDNumeric},
			&genSource{n: total / 2, key: 1, step: 2, format: format, row: make([][]byte, 2), payload: []byte("some payload text"), decimal: keyType == OIDNumeric},
		}
		m, err := New(spec, srcs)
		if err != nil {
			b.Fatal(err)
		}
		n := 0
		for {
			_, ok, err := m.Next()
			if err != nil {
				b.Fatal(err)
			}
			if !ok {
				break
			}
			n++
		}
		if n != total {
			b.Fatalf("%d rows", n)
		}
	}
	b.ReportMetric(float64(total)*float64(b.N)/time.Since(start).Seconds(), "rows/s")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkMerge1M merges 1M rows (int8 key, text payload) from 2
// sources. Allocations per row are allocs/op ÷ 1e6.
func BenchmarkMerge1M(b *testing.B) {
	b.Run("orderby-binary", func(b *testing.B) { benchMerge(b, BinaryFormat, true) })
	b.Run("orderby-text", func(b *testing.B) { benchMerge(b, TextFormat, true) })
	b.Run("orderby-numeric-text", func(b *testing.B) { benchMergeType(b, OIDNumeric, TextFormat, true) })
	b.Run("concat", func(b *testing.B) { benchMerge(b, TextFormat, false) })
}

// BenchmarkGroupBy1M aggregates 1M rows from 2 sources into 1000 groups.
func BenchmarkGroupBy1M(b *testing.B) {
	const total = 1_000_000
	in := []pgproto3.FieldDescription{
		{Name: []byte("k"), DataTypeOID: OIDInt8, Format: BinaryFormat},
		{Name: []byte("count"), DataTypeOID: OIDInt8, Format: BinaryFormat},
	}
	spec := Spec{Input: in, Grouped: true,
		Columns: []Column{{Kind: GroupKey, Arg: 0, Format: BinaryFormat}, {Kind: Count, Arg: 1, Format: BinaryFormat}}}
	b.ReportAllocs()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		mk := func(k int64) Source {
			return &modSource{genSource: genSource{n: total / 2, key: k, step: 2, format: BinaryFormat, row: make([][]byte, 2)}}
		}
		m, err := New(spec, []Source{mk(0), mk(1)})
		if err != nil {
			b.Fatal(err)
		}
		for {
			_, ok, err := m.Next()
			if err != nil {
				b.Fatal(err)
			}
			if !ok {
				break
			}
		}
	}
	b.ReportMetric(float64(total)*float64(b.N)/time.Since(start).Seconds(), "rows/s")
	b.ReportMetric(0, "ns/op")
}

// modSource is genSource with keys mod 1000 and a count of 1.
type modSource struct{ genSource }

var one = binary.BigEndian.AppendUint64(nil, 1)

func (s *modSource) Next() ([][]byte, bool, error) {
	row, ok, err := s.genSource.Next()
	if ok {
		binary.BigEndian.PutUint64(s.buf[:], uint64(s.key%1000))
		row[1] = one
	}
	return row, ok, err
}
