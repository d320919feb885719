package shardmap

import (
	"bufio"
	"encoding/hex"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// readVectors reads a testdata/hash_vectors_*.tsv file written by
// internal/genvectors, skipping '#' comment lines. It fails the test when the
// file is missing or has fewer than min rows.
func readVectors(t *testing.T, name string, cols, min int) [][]string {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "testdata", name))
	if err != nil {
		t.Fatalf("open vectors: %v", err)
	}
	defer f.Close()
	var rows [][]string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		row := strings.Split(line, "\t")
		if len(row) != cols {
			t.Fatalf("%s: line %q has %d columns, want %d", name, line, len(row), cols)
		}
		rows = append(rows, row)
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read vectors: %v", err)
	}
	if len(rows) < min {
		t.Fatalf("%s: %d rows, want at least %d", name, len(rows), min)
	}
	return rows
}

func mustInt(t *testing.T, s string) int64 {
	t.Helper()
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		t.Fatalf("bad integer %q in vectors: %v", s, err)
	}
	return v
}

func TestHashInt64Vectors(t *testing.T) {
	rows := readVectors(t, "hash_vectors_int.tsv", 4, 1000)
	var int4Rows, int2Rows int
	seen := map[int64]bool{}
	for _, row := range rows {
		v := mustInt(t, row[0])
		seen[v] = true
		want := mustInt(t, row[1])
		if got := HashInt64(v); got != want {
			t.Errorf("HashInt64(%d) = %d, PostgreSQL hashint8extended = %d", v, got, want)
		}
		// Integer types of every width hash like their bigint value: PostgreSQL's
		// own hashint4extended/hashint2extended results equal hashint8extended's.
		if row[2] != "-" {
			int4Rows++
			if h4 := mustInt(t, row[2]); h4 != want {
				t.Errorf("PostgreSQL hashint4extended(%d) = %d, hashint8extended = %d", v, h4, want)
			}
			if got := hashInt32(int32(v)); got != want {
				t.Errorf("hashInt32(%d) = %d, want %d", v, got, want)
			}
		} else if v >= math.MinInt32 && v <= math.MaxInt32 {
			t.Errorf("value %d fits int4 but has no hashint4extended column", v)
		}
		if row[3] != "-" {
			int2Rows++
			if h2 := mustInt(t, row[3]); h2 != want {
				t.Errorf("PostgreSQL hashint2extended(%d) = %d, hashint8extended = %d", v, h2, want)
			}
		}
	}
	for _, v := range []int64{0, 1, -1, math.MinInt64, math.MaxInt64, math.MinInt32, math.MaxInt32,
		math.MinInt32 - 1, math.MaxInt32 + 1, math.MinInt16, math.MaxInt16} {
		if !seen[v] {
			t.Errorf("vectors lack boundary value %d", v)
		}
	}
	if int4Rows < 500 || int2Rows < 100 {
		t.Errorf("only %d int4 and %d int2 rows", int4Rows, int2Rows)
	}
	t.Logf("%d int vectors (%d in int4 range, %d in int2 range) match", len(rows), int4Rows, int2Rows)
}

// TestHashIntegerWidthsFold checks, beyond the vectors, that every int32
// value hashes like its int64 widening (hashint4extended == hashint8extended).
func TestHashIntegerWidthsFold(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200000; i++ {
		v := int32(r.Uint32())
		if a, b := hashInt32(v), HashInt64(int64(v)); a != b {
			t.Fatalf("int32 %d: hashint4extended %d != hashint8extended %d", v, a, b)
		}
	}
	for _, v := range []int32{0, 1, -1, math.MinInt32, math.MaxInt32, math.MinInt16, math.MaxInt16} {
		if a, b := hashInt32(v), HashInt64(int64(v)); a != b {
			t.Fatalf("int32 %d: hashint4extended %d != hashint8extended %d", v, a, b)
		}
	}
	// And the fold is not the identity on the high half: values that differ
	// only above bit 31 must not all collide.
	if HashInt64(1) == HashInt64(1+1<<32) {
		t.Fatalf("HashInt64 ignores the high half")
	}
}

func TestHashTextVectors(t *testing.T) {
	rows := readVectors(t, "hash_vectors_text.tsv", 3, 800)
	lengths := map[int]bool{}
	multibyte := 0
	for _, row := range rows {
		b, err := hex.DecodeString(row[0])
		if err != nil {
			t.Fatalf("bad hex %q: %v", row[0], err)
		}
		s := string(b)
		lengths[len(b)] = true
		if strings.ContainsFunc(s, func(r rune) bool { return r > 0x7f }) {
			multibyte++
		}
		want := mustInt(t, row[1])
		if got := HashText(s); got != want {
			t.Errorf("HashText(%q) = %d, PostgreSQL hashtextextended = %d", s, got, want)
		}
		if got := int64(hashBytesExtended(b, 0)); got != want {
			t.Errorf("hashBytesExtended(%q) = %d, want %d", s, got, want)
		}
		if v := mustInt(t, row[2]); v != want {
			t.Errorf("PostgreSQL hashes %q as varchar to %d, as text to %d", s, v, want)
		}
		if got, err := HashKey(KeyText, s); err != nil || got != want {
			t.Errorf("HashKey(KeyText, %q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for l := 0; l <= 200; l++ {
		if !lengths[l] {
			t.Errorf("vectors lack a string of %d bytes", l)
		}
	}
	if multibyte < 100 {
		t.Errorf("only %d multibyte strings", multibyte)
	}
	t.Logf("%d text vectors (%d with multibyte UTF-8) match", len(rows), multibyte)
}

func TestHashUUIDVectors(t *testing.T) {
	rows := readVectors(t, "hash_vectors_uuid.tsv", 2, 1000)
	for _, row := range rows {
		u, err := ParseUUID(row[0])
		if err != nil {
			t.Fatalf("ParseUUID(%q): %v", row[0], err)
		}
		want := mustInt(t, row[1])
		if got := HashUUID(u); got != want {
			t.Errorf("HashUUID(%s) = %d, PostgreSQL uuid_hash_extended = %d", row[0], got, want)
		}
		if got, err := HashKey(KeyUUID, strings.ToUpper(row[0])); err != nil || got != want {
			t.Errorf("HashKey(KeyUUID, %q) = %d, %v; want %d", row[0], got, err, want)
		}
	}
	t.Logf("%d uuid vectors match", len(rows))
}

func TestHashSeed(t *testing.T) {
	// A non-zero seed must change the result (the seed branch is ported even
	// though pgshard always uses 0), and both byte paths must agree.
	b := []byte("seeded key")
	if hashBytesExtended(b, 0) == hashBytesExtended(b, 42) {
		t.Fatal("seed ignored by hashBytesExtended")
	}
	if hashBytesExtended(b, 42) != hashStringExtended(string(b), 42) {
		t.Fatal("hashBytesExtended and hashStringExtended disagree with a seed")
	}
	if hashUint32Extended(7, 0) == hashUint32Extended(7, 1<<40) {
		t.Fatal("seed ignored by hashUint32Extended")
	}
	// hash_bytes_uint32_extended(k) equals hash_bytes_extended of k's 4 bytes.
	for _, k := range []uint32{0, 1, 0xdeadbeef, math.MaxUint32} {
		var buf [4]byte
		buf[0], buf[1], buf[2], buf[3] = byte(k), byte(k>>8), byte(k>>16), byte(k>>24)
		for _, seed := range []uint64{0, 1, 1 << 63} {
			if hashUint32Extended(k, seed) != hashBytesExtended(buf[:], seed) {
				t.Errorf("uint32 %#x seed %d: hash_uint32_extended != hash_bytes_extended", k, seed)
			}
		}
	}
}

func TestParseKeyType(t *testing.T) {
	for name, want := range map[string]KeyType{
		"bigint": KeyInt, "INT": KeyInt, "int2": KeyInt, "smallint": KeyInt, "integer": KeyInt,
		"int8": KeyInt, "text": KeyText, "character varying": KeyText, "varchar": KeyText, " uuid ": KeyUUID,
	} {
		got, err := ParseKeyType(name)
		if err != nil || got != want {
			t.Errorf("ParseKeyType(%q) = %v, %v; want %v", name, got, err, want)
		}
	}
	for _, name := range []string{"", "numeric", "float8", "bytea", "json"} {
		if _, err := ParseKeyType(name); !errors.Is(err, ErrUnknownKeyType) {
			t.Errorf("ParseKeyType(%q) error = %v, want ErrUnknownKeyType", name, err)
		}
	}
}

func TestHashKey(t *testing.T) {
	if got, err := HashKey(KeyInt, " -42"); err != nil || got != HashInt64(-42) {
		t.Errorf("HashKey(KeyInt, -42) = %d, %v", got, err)
	}
	if got, err := HashKey(KeyInt, "9223372036854775807"); err != nil || got != HashInt64(math.MaxInt64) {
		t.Errorf("HashKey(KeyInt, max) = %d, %v", got, err)
	}
	for _, bad := range []string{"", "1.5", "9223372036854775808", "abc", "0x10"} {
		if _, err := HashKey(KeyInt, bad); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("HashKey(KeyInt, %q) error = %v, want ErrInvalidKey", bad, err)
		}
	}
	want := HashUUID([16]byte{0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11})
	// The input forms uuid_in accepts.
	for _, s := range []string{"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
		"{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", "a0eebc999c0b4ef8bb6d6bb9bd380a11",
		"a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11", "{a0eebc999c0b4ef8bb6d6bb9bd380a11}"} {
		if got, err := HashKey(KeyUUID, s); err != nil || got != want {
			t.Errorf("HashKey(KeyUUID, %q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, bad := range []string{"", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111",
		"{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}", "a0eeb-c99-9c0b-4ef8-bb6d-6bb9bd380a11",
		"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-", "g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11"} {
		if _, err := HashKey(KeyUUID, bad); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("HashKey(KeyUUID, %q) error = %v, want ErrInvalidKey", bad, err)
		}
	}
	if _, err := HashKey(KeyType(0), "1"); !errors.Is(err, ErrUnknownKeyType) {
		t.Errorf("HashKey(0) error = %v, want ErrUnknownKeyType", err)
	}
}

func TestHashInt64NoAlloc(t *testing.T) {
	var sink int64
	if n := testing.AllocsPerRun(1000, func() { sink += HashInt64(sink) }); n != 0 {
		t.Errorf("HashInt64 allocates %v times", n)
	}
	s := strings.Repeat("x", 100)
	if n := testing.AllocsPerRun(1000, func() { sink += HashText(s) }); n != 0 {
		t.Errorf("HashText allocates %v times", n)
	}
}

var benchSink int64

func BenchmarkHashInt64(b *testing.B) {
	b.ReportAllocs()
	var h int64
	for i := 0; b.Loop(); i++ {
		h ^= HashInt64(int64(i))
	}
	benchSink = h
}

func BenchmarkHashText(b *testing.B) {
	for _, n := range []int{8, 36, 200} {
		s := strings.Repeat("k", n)
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(n))
			var h int64
			for b.Loop() {
				h ^= HashText(s)
			}
			benchSink = h
		})
	}
}

func BenchmarkHashUUID(b *testing.B) {
	b.ReportAllocs()
	u := [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	var h int64
	for b.Loop() {
		h ^= HashUUID(u)
	}
	benchSink = h
}

func TestSQLHashAndRangesSQL(t *testing.T) {
	for _, c := range []struct {
		t    KeyType
		want string
	}{
		{KeyInt, "hashint8extended(user_id::bigint, 0)"},
		{KeyText, "hashtextextended(user_id::text, 0)"},
		{KeyUUID, "uuid_hash_extended(user_id, 0)"},
	} {
		if got := c.t.SQLHash("user_id"); got != c.want {
			t.Errorf("%v: %q, want %q", c.t, got, c.want)
		}
	}
	if got := RangesSQL(nil, "h"); got != "false" {
		t.Errorf("no ranges: %q", got)
	}
	if got := RangesSQL([]Range{{1, 2}}, "h"); got != "(h > 1 AND h <= 2)" {
		t.Errorf("one range: %q", got)
	}
	if got := RangesSQL([]Range{{1, 2}, {5, -5}}, "h"); got != "((h > 1 AND h <= 2) OR (h > 5 OR h <= -5))" {
		t.Errorf("two ranges: %q", got)
	}
}
