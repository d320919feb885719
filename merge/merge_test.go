package merge

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgshard/pgshard/wire"
)

// sliceSource is a Source over rows held in memory. It hands out a copy
// of each row and scribbles over the previous one, so a merger that keeps
// a row past the next call is caught.
type sliceSource struct {
	rows [][][]byte
	pos  int
	last [][]byte
	err  error // returned at the end instead of ok false
}

func (s *sliceSource) Next() ([][]byte, bool, error) {
	for _, v := range s.last {
		for i := range v {
			v[i] = '#'
		}
	}
	if s.pos >= len(s.rows) {
		return nil, false, s.err
	}
	r := s.rows[s.pos]
	s.pos++
	s.last = make([][]byte, len(r))
	for i, v := range r {
		if v != nil {
			s.last[i] = append([]byte{}, v...)
		}
	}
	return s.last, true, nil
}

// textRows parses "1,a|2,NULL" style rows.
func textRows(s string) [][][]byte {
	if s == "" {
		return nil
	}
	var out [][][]byte
	for _, r := range strings.Split(s, "|") {
		var row [][]byte
		for _, v := range strings.Split(r, ",") {
			if v == "NULL" {
				row = append(row, nil)
			} else {
				row = append(row, []byte(v))
			}
		}
		out = append(out, row)
	}
	return out
}

func fields(oids ...uint32) []pgproto3.FieldDescription {
	var fs []pgproto3.FieldDescription
	for i, o := range oids {
		fs = append(fs, pgproto3.FieldDescription{Name: []byte(fmt.Sprintf("c%d", i)), DataTypeOID: o, TypeModifier: -1})
	}
	return fs
}

func runMerge(t *testing.T, spec Spec, shards ...string) (string, error) {
	t.Helper()
	var srcs []Source
	for _, s := range shards {
		srcs = append(srcs, &sliceSource{rows: textRows(s)})
	}
	m, err := New(spec, srcs)
	if err != nil {
		return "", err
	}
	var out []string
	for {
		row, ok, err := m.Next()
		if err != nil {
			return "", err
		}
		if !ok {
			break
		}
		var vs []string
		for _, v := range row {
			if v == nil {
				vs = append(vs, "NULL")
			} else {
				vs = append(vs, string(v))
			}
		}
		out = append(out, strings.Join(vs, ","))
	}
	if got, want := string(m.CommandTag()), fmt.Sprintf("SELECT %d", len(out)); got != want {
		t.Errorf("tag %q, want %q", got, want)
	}
	return strings.Join(out, "|"), nil
}

func plain(n int) []Column {
	var cs []Column
	for i := 0; i < n; i++ {
		cs = append(cs, Column{Kind: Value, Arg: i})
	}
	return cs
}

func TestMergeText(t *testing.T) {
	tests := []struct {
		name   string
		spec   Spec
		shards []string
		want   string
	}{
		{"concat", Spec{Input: fields(OIDInt4), Columns: plain(1)},
			[]string{"3|1", "", "2"}, "3|1|2"},
		{"concat limit offset", Spec{Input: fields(OIDInt4), Columns: plain(1), HasLimit: true, Limit: 2, Offset: 1},
			[]string{"3|1", "", "2|5"}, "1|2"},
		{"order asc nulls last", Spec{Input: fields(OIDInt4), Columns: plain(1),
			OrderBy: []SortKey{{Column: 0}}},
			[]string{"1|4|NULL", "-2|3|NULL", "0|10"}, "-2|0|1|3|4|10|NULL|NULL"},
		{"order desc nulls first", Spec{Input: fields(OIDInt8), Columns: plain(1),
			OrderBy: []SortKey{{Column: 0, Desc: true, NullsFirst: true}}},
			[]string{"NULL|4|1", "3|-2", "10|0"}, "NULL|10|4|3|1|0|-2"},
		{"order two keys, hidden", Spec{Input: fields(OIDText, OIDNumeric),
			Columns: []Column{{Kind: Value, Arg: 0}, {Kind: Value, Arg: 1, Hidden: true}}, HasLimit: true, Limit: 3, Offset: 1,
			OrderBy: []SortKey{{Column: 1, Desc: true}, {Column: 0}}},
			[]string{"a,10.5|c,2", "b,10.50|e,-1"}, "b|c|e"},
		{"numeric specials", Spec{Input: fields(OIDNumeric), Columns: plain(1),
			OrderBy: []SortKey{{Column: 0}}},
			[]string{"-Infinity|1.5|NaN", "-7|Infinity"}, "-Infinity|-7|1.5|Infinity|NaN"},
		{"float NaN and -0", Spec{Input: fields(OIDFloat8), Columns: plain(1),
			OrderBy: []SortKey{{Column: 0}}},
			[]string{"-Infinity|-0|NaN", "-1|0|Infinity"}, "-Infinity|-1|-0|0|Infinity|NaN"},
		{"bpchar and text bytes", Spec{Input: fields(OIDBPChar), Columns: plain(1),
			OrderBy: []SortKey{{Column: 0}}},
			[]string{"B  |a  ", "A  |a b"}, "A  |B  |a  |a b"},
		{"timestamptz", Spec{Input: fields(OIDTimestampTZ), Columns: plain(1),
			OrderBy: []SortKey{{Column: 0}}},
			[]string{"2024-01-01 10:00:00+02|infinity", "0044-03-15 12:00:00+00 BC|2024-01-01 09:30:00+00"},
			"0044-03-15 12:00:00+00 BC|2024-01-01 10:00:00+02|2024-01-01 09:30:00+00|infinity"},
		{"count sum avg group", Spec{Input: fields(OIDInt4, OIDInt8, OIDInt8, OIDInt8, OIDInt8),
			Columns: []Column{{Kind: GroupKey, Arg: 0}, {Kind: Count, Arg: 1}, {Kind: Sum, Arg: 2},
				{Kind: Avg, Arg: 3, Arg2: 4}}, Grouped: true,
			OrderBy: []SortKey{{Column: 0}}},
			[]string{"1,1,1,1,1|2,1,NULL,NULL,0", "1,1,2,2,1|NULL,3,3,3,3"},
			"1,2,3,1.5000000000000000|2,1,NULL,NULL|NULL,3,3,1.00000000000000000000"},
		{"empty, not grouped", Spec{Input: fields(OIDInt8, OIDInt8, OIDNumeric, OIDInt4),
			Columns: []Column{{Kind: Count, Arg: 0}, {Kind: Avg, Arg: 1, Arg2: 0}, {Kind: Sum, Arg: 2}, {Kind: Max, Arg: 3}}},
			[]string{"", ""}, "0,NULL,NULL,NULL"},
		{"empty, group key without Grouped", Spec{Input: fields(OIDInt4, OIDInt8),
			Columns: []Column{{Kind: GroupKey, Arg: 0}, {Kind: Count, Arg: 1}}},
			[]string{"", ""}, ""},
		{"numeric group key scale", Spec{Input: fields(OIDNumeric, OIDNumeric), Grouped: true,
			Columns: []Column{{Kind: GroupKey, Arg: 0}, {Kind: Sum, Arg: 1}}},
			[]string{"1.0,1.5", "1.00,2.25|-0.0,1"}, "1.0,3.75|-0.0,1"},
		{"min max", Spec{Input: fields(OIDText, OIDFloat8), Grouped: false,
			Columns: []Column{{Kind: Min, Arg: 0}, {Kind: Max, Arg: 0}, {Kind: Min, Arg: 1}, {Kind: Max, Arg: 1}}},
			[]string{"b,NaN|NULL,1", "a,-0|c,NULL"}, "a,c,-0,NaN"},
		{"having", Spec{Input: fields(OIDInt4, OIDInt8, OIDInt8), Grouped: true,
			Columns: []Column{{Kind: GroupKey, Arg: 0}, {Kind: Count, Arg: 1}, {Kind: Sum, Arg: 2, Hidden: true}},
			Having: And{Args: []Expr{
				Cmp{Op: Gt, L: Arith{Op: Div, L: Col{2}, R: Col{1}}, R: Const{Type: OIDNumeric, Text: "1.5"}},
				Not{Arg: IsNull{Arg: Col{0}}}}},
			OrderBy: []SortKey{{Column: 1, Desc: true}, {Column: 0}}},
			[]string{"1,1,5|2,2,2|3,1,2", "1,1,1|3,1,2|NULL,1,9"}, "1,2|3,2"},
		{"distinct as group", Spec{Input: fields(OIDText), Grouped: true,
			Columns: []Column{{Kind: GroupKey, Arg: 0}}, OrderBy: []SortKey{{Column: 0}}, HasLimit: true, Limit: 2},
			[]string{"b|a|NULL", "a|c"}, "a|b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := runMerge(t, tt.spec, tt.shards...)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestRefused(t *testing.T) {
	tests := []struct {
		name string
		spec Spec
		want error
	}{
		{"plain beside aggregate", Spec{Input: fields(OIDInt4, OIDInt8),
			Columns: []Column{{Kind: Value, Arg: 0}, {Kind: Count, Arg: 1}}}, ErrUnsupported},
		{"sum of interval", Spec{Input: fields(1186), Columns: []Column{{Kind: Sum, Arg: 0}}}, ErrUnsupported},
		{"order by json", Spec{Input: fields(114), Columns: plain(1), OrderBy: []SortKey{{Column: 0}}}, ErrUnsupported},
		{"format mismatch", Spec{Input: fields(OIDInt4), Columns: []Column{{Kind: Value, Arg: 0, Format: BinaryFormat}}}, ErrUnsupported},
		{"having without agg", Spec{Input: fields(OIDInt4), Columns: plain(1), Having: Cmp{L: Col{0}, R: Col{0}}}, ErrUnsupported},
		{"bad arg", Spec{Input: fields(OIDInt4), Columns: []Column{{Kind: Value, Arg: 3}}}, ErrUnsupported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.spec, nil)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err %v, want %v", err, tt.want)
			}
		})
	}
}

func TestTooManyGroups(t *testing.T) {
	spec := Spec{Input: fields(OIDInt4), Grouped: true, Columns: []Column{{Kind: GroupKey, Arg: 0}}, MaxGroups: 2}
	_, err := runMerge(t, spec, "1|2", "2|3")
	if !errors.Is(err, ErrTooManyGroups) || !strings.Contains(err.Error(), "54000") {
		t.Fatalf("err %v", err)
	}
	if _, err := runMerge(t, spec, "1|2", "2|1"); err != nil {
		t.Fatal(err)
	}
}

func TestSourceError(t *testing.T) {
	boom := errors.New("boom")
	m, err := New(Spec{Input: fields(OIDInt4), Columns: plain(1), OrderBy: []SortKey{{Column: 0}}},
		[]Source{&sliceSource{rows: textRows("1")}, &sliceSource{rows: textRows("2"), err: boom}})
	if err != nil {
		t.Fatal(err)
	}
	var got error
	for {
		_, ok, err := m.Next()
		if err != nil {
			got = err
			break
		}
		if !ok {
			break
		}
	}
	if !errors.Is(got, boom) {
		t.Fatalf("got %v", got)
	}
	if _, _, err := m.Next(); !errors.Is(err, boom) {
		t.Fatalf("not sticky: %v", err)
	}
}

func TestOverflow(t *testing.T) {
	spec := Spec{Input: fields(OIDInt8), Columns: []Column{{Kind: Sum, Arg: 0}}}
	_, err := runMerge(t, spec, "9223372036854775807", "1")
	if !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("err %v", err)
	}
}

func TestLimitReadsLazily(t *testing.T) {
	a := &sliceSource{rows: textRows("1|3|5|7")}
	b := &sliceSource{rows: textRows("2|4|6|8")}
	m, err := New(Spec{Input: fields(OIDInt4), Columns: plain(1), HasLimit: true, Limit: 2, OrderBy: []SortKey{{Column: 0}}}, []Source{a, b})
	if err != nil {
		t.Fatal(err)
	}
	for {
		_, ok, err := m.Next()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
	}
	if a.pos+b.pos > 3 {
		t.Errorf("read %d rows for LIMIT 2 over two shards", a.pos+b.pos)
	}
}

func TestDivScale(t *testing.T) {
	tests := []struct{ a, b, want string }{
		{"3", "2", "1.5000000000000000"},
		{"1", "3", "0.33333333333333333333"},
		{"10", "3", "3.3333333333333333"},
		{"10000", "3", "3333.3333333333333333"},
		{"2", "3", "0.66666666666666666667"},
		{"-2", "3", "-0.66666666666666666667"},
		{"1.00000000000000000000000", "7", "0.14285714285714285714286"},
		{"123456789012345678901234567890", "1", "123456789012345678901234567890"},
		{"0", "5", "0.00000000000000000000"},
		{"0.001", "3", "0.00033333333333333333"},
	}
	for _, tt := range tests {
		a, _ := parseNumericText([]byte(tt.a))
		b, _ := parseNumericText([]byte(tt.b))
		q, err := divDecimal(&a, &b)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(q.appendText(nil)); got != tt.want {
			t.Errorf("%s/%s = %s, want %s", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestNumericBinaryRoundTrip(t *testing.T) {
	for _, s := range []string{"0", "0.000", "1", "-1", "10000", "12345.6789", "0.00001", "-99999999.99999999", "NaN", "Infinity", "-Infinity", "1.10", "100000000"} {
		d, ok := parseNumericText([]byte(s))
		if !ok {
			t.Fatalf("parse %q", s)
		}
		b := d.appendBinary(nil)
		e, ok := parseNumericBinary(b)
		if !ok {
			t.Fatalf("parse binary of %q: %x", s, b)
		}
		if got := string(e.appendText(nil)); got != s {
			t.Errorf("%q → %x → %q", s, b, got)
		}
	}
}

func TestFloatText(t *testing.T) {
	tests := []struct {
		f    float64
		bits int
		want string
	}{
		{1.5, 64, "1.5"}, {1e15, 64, "1e+15"}, {123456789012345, 64, "123456789012345"},
		{0.0001, 64, "0.0001"}, {0.00001, 64, "1e-05"}, {-2.5e-300, 64, "-2.5e-300"},
		{1e6, 32, "1e+06"}, {100000, 32, "100000"}, {0.1, 32, "0.1"}, {math.Copysign(0, -1), 64, "-0"},
		{1.2345678901234567e19, 64, "1.2345678901234567e+19"}, {100, 64, "100"},
	}
	for _, tt := range tests {
		if got := string(appendFloatText(nil, tt.f, tt.bits)); got != tt.want {
			t.Errorf("%v/%d: %q, want %q", tt.f, tt.bits, got, tt.want)
		}
	}
}

func TestCombineTags(t *testing.T) {
	tests := []struct {
		tags []string
		want string
		err  error
	}{
		{[]string{"INSERT 0 2", "INSERT 0 1"}, "INSERT 0 3", nil},
		{[]string{"UPDATE 0", "UPDATE 7"}, "UPDATE 7", nil},
		{[]string{"DELETE 1", "DELETE 1", "DELETE 1"}, "DELETE 3", nil},
		{[]string{"CREATE TABLE", "CREATE TABLE"}, "CREATE TABLE", nil},
		{[]string{"UPDATE 1", "DELETE 1"}, "", ErrUnsupported},
		{[]string{"INSERT 123 1", "INSERT 0 1"}, "", ErrUnsupported},
	}
	for _, tt := range tests {
		var in [][]byte
		for _, s := range tt.tags {
			in = append(in, []byte(s))
		}
		got, err := CombineTags(in)
		if !errors.Is(err, tt.err) || (err == nil && string(got) != tt.want) {
			t.Errorf("%v: %q, %v", tt.tags, got, err)
		}
	}
}

func TestOrderable(t *testing.T) {
	if !Orderable(OIDText, "C") || Orderable(OIDText, "en_US") || Orderable(OIDText, "default") ||
		!Orderable(OIDInt4, "") || Orderable(1186, "") {
		t.Error("Orderable")
	}
}

func TestRowDescription(t *testing.T) {
	in := fields(OIDInt4, OIDInt8, OIDInt8)
	in[0].TableOID, in[0].TableAttributeNumber, in[0].DataTypeSize = 1234, 2, 4
	m, err := New(Spec{Input: in, Grouped: true, Columns: []Column{
		{Kind: GroupKey, Arg: 0, Format: 0}, {Kind: Avg, Arg: 1, Arg2: 2, Name: "avg", Format: 1}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []pgproto3.FieldDescription{
		{Name: []byte("c0"), TableOID: 1234, TableAttributeNumber: 2, DataTypeOID: OIDInt4, DataTypeSize: 4, TypeModifier: -1},
		{Name: []byte("avg"), DataTypeOID: OIDNumeric, DataTypeSize: -1, TypeModifier: -1, Format: 1},
	}
	if got := m.RowDescription().Fields; !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v", got)
	}
}

func TestSortedGroups(t *testing.T) {
	spec := Spec{Input: fields(OIDInt4, OIDInt8, OIDNumeric), Grouped: true, SortedInput: true, HasLimit: true, Limit: 2, Offset: 1,
		Columns: []Column{{Kind: GroupKey, Arg: 0}, {Kind: Count, Arg: 1}, {Kind: Max, Arg: 2}},
		OrderBy: []SortKey{{Column: 0, Desc: true, NullsFirst: true}},
		Having:  Cmp{Op: Ne, L: Col{0}, R: Const{Type: 0, Text: "3"}}}
	a := &sliceSource{rows: textRows("NULL,1,1|5,2,1.5|3,1,1|2,1,7|1,1,1|0,1,1|-1,1,1")}
	b := &sliceSource{rows: textRows("5,1,2|4,3,NaN|2,1,0.5|0,9,9|-2,1,1")}
	m, err := New(spec, []Source{a, b})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		row, ok, err := m.Next()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		got = append(got, fmt.Sprintf("%s,%s,%s", row[0], row[1], row[2]))
	}
	// NULL <> 3 is NULL: the NULL group fails HAVING.
	if want := []string{"4,3,NaN", "2,2,7"}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if a.pos == len(a.rows) && b.pos == len(b.rows) {
		t.Error("LIMIT read every row")
	}
	spec.OrderBy = []SortKey{{Column: 1}}
	if _, err := New(spec, nil); !errors.Is(err, ErrUnsupported) {
		t.Errorf("sorted input not ordered by the group keys: %v", err)
	}
}

func TestNegativeLimit(t *testing.T) {
	for _, s := range []Spec{{HasLimit: true, Limit: -1}, {Offset: -1}} {
		s.Input, s.Columns = fields(OIDInt4), plain(1)
		_, err := New(s, nil)
		var we *wire.Error
		if !errors.As(err, &we) || (we.Code != CodeInvalidRowCountInLimit && we.Code != CodeInvalidRowCountInOffset) {
			t.Errorf("%+v: %v", s, err)
		}
	}
}

func TestTooManyBytes(t *testing.T) {
	spec := Spec{Input: fields(OIDText, OIDText), Grouped: true, MaxBytes: 4096,
		Columns: []Column{{Kind: GroupKey, Arg: 0}, {Kind: Max, Arg: 1}}}
	big := strings.Repeat("x", 5000)
	if _, err := runMerge(t, spec, "a,b", "a,"+big); !errors.Is(err, ErrTooManyGroups) {
		t.Fatalf("a large max value: %v", err)
	}
	if _, err := runMerge(t, spec, "a,b", "a,c|b,d"); err != nil {
		t.Fatal(err)
	}
}
