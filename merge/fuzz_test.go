package merge

import (
	"math"
	"strconv"
	"testing"
)

// FuzzNumeric checks that numeric text and binary forms agree: a value
// survives text → binary → text, comparison is the same in both formats,
// and canonical keys are equal exactly when values compare equal.
func FuzzNumeric(f *testing.F) {
	for _, s := range [][2]string{{"1", "1.0"}, {"-0.000", "0"}, {"NaN", "Infinity"}, {"12345.6789", "-12345.67890"},
		{"0.0001", "0.00010"}, {"99999999999999999999", "1e3"}, {"-Infinity", "-1"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		x, ok1 := parseNumericText([]byte(a))
		y, ok2 := parseNumericText([]byte(b))
		if !ok1 || !ok2 || x.scale > 1000 || y.scale > 1000 || len(a) > 200 || len(b) > 200 {
			return
		}
		if string(x.appendText(nil)) != a {
			return // not numeric_out's form (e.g. "+1", "01")
		}
		bx := x.appendBinary(nil)
		x2, ok := parseNumericBinary(bx)
		if !ok || string(x2.appendText(nil)) != a {
			t.Fatalf("%q → %x → %q", a, bx, x2.appendText(nil))
		}
		if string(y.appendText(nil)) != b {
			return
		}
		by := y.appendBinary(nil)
		tc, err1 := colType{oid: OIDNumeric, format: TextFormat}.compare([]byte(a), []byte(b))
		bc, err2 := colType{oid: OIDNumeric, format: BinaryFormat}.compare(bx, by)
		if err1 != nil || err2 != nil || tc != bc {
			t.Fatalf("compare %q %q: text %d, binary %d (%v %v)", a, b, tc, bc, err1, err2)
		}
		kx, _ := colType{oid: OIDNumeric}.appendKey(nil, []byte(a))
		ky, _ := colType{oid: OIDNumeric, format: BinaryFormat}.appendKey(nil, by)
		if (string(kx) == string(ky)) != (tc == 0) {
			t.Fatalf("keys of %q %q disagree with compare %d", a, b, tc)
		}
	})
}

// FuzzFloat checks float ordering and keys in both formats.
func FuzzFloat(f *testing.F) {
	f.Add(uint64(0), uint64(1<<63))
	f.Add(math.Float64bits(math.NaN()), math.Float64bits(math.Inf(1)))
	f.Add(math.Float64bits(1.5), math.Float64bits(-2))
	f.Fuzz(func(t *testing.T, a, b uint64) {
		x, y := math.Float64frombits(a), math.Float64frombits(b)
		tx, ty := appendFloatText(nil, x, 64), appendFloatText(nil, y, 64)
		if v, err := strconv.ParseFloat(string(tx), 64); err != nil || (v != x && !(v != v && x != x)) {
			t.Fatalf("%v formats as %s", x, tx)
		}
		bx, by := appendFloat(nil, x, OIDFloat8, BinaryFormat, 1), appendFloat(nil, y, OIDFloat8, BinaryFormat, 1)
		tc, _ := colType{oid: OIDFloat8}.compare(tx, ty)
		bc, _ := colType{oid: OIDFloat8, format: BinaryFormat}.compare(bx, by)
		if tc != bc || tc != cmpFloat(x, y) {
			t.Fatalf("compare %v %v: text %d binary %d", x, y, tc, bc)
		}
		kx, _ := colType{oid: OIDFloat8}.appendKey(nil, tx)
		ky, _ := colType{oid: OIDFloat8, format: BinaryFormat}.appendKey(nil, by)
		if (string(kx) == string(ky)) != (tc == 0) {
			t.Fatalf("keys of %v %v disagree with compare %d", x, y, tc)
		}
	})
}

// FuzzNumericCompare checks the allocation-free comparisons against the
// exact one.
func FuzzNumericCompare(f *testing.F) {
	f.Add("1", "1.0")
	f.Add("-0.5", "0")
	f.Add("100", "99.999")
	f.Add("-100", "-99.999")
	f.Add("0.0001", "0.001")
	f.Fuzz(func(t *testing.T, a, b string) {
		x, ok1 := parseNumericText([]byte(a))
		y, ok2 := parseNumericText([]byte(b))
		if !ok1 || !ok2 || x.scale > 1000 || y.scale > 1000 || len(a) > 200 || len(b) > 200 ||
			string(x.appendText(nil)) != a || string(y.appendText(nil)) != b {
			return
		}
		want := cmpDecimal(&x, &y)
		if c, ok := cmpNumericText([]byte(a), []byte(b)); ok && c != want {
			t.Fatalf("text %q %q: %d, want %d", a, b, c, want)
		}
		if c, ok := cmpNumericBinary(x.appendBinary(nil), y.appendBinary(nil)); ok && c != want {
			t.Fatalf("binary %q %q: %d, want %d", a, b, c, want)
		}
	})
}
