package merge

import (
	"encoding/binary"
	"math"
	"math/big"
	"strconv"
	"strings"
)

// appendFloatText appends float8out's (bits 64) or float4out's (bits 32)
// output with extra_float_digits > 0 (PostgreSQL 12+ default): the
// shortest exact digits, in fixed notation when the decimal exponent is in
// [-4, 15) (float8) or [-4, 6) (float4), otherwise as d.ddde±XX.
func appendFloatText(buf []byte, f float64, bits int) []byte {
	switch {
	case math.IsNaN(f):
		return append(buf, "NaN"...)
	case math.IsInf(f, 1):
		return append(buf, "Infinity"...)
	case math.IsInf(f, -1):
		return append(buf, "-Infinity"...)
	case f == 0:
		if math.Signbit(f) {
			return append(buf, "-0"...)
		}
		return append(buf, '0')
	}
	s := shortestFloat(f, bits) // -d.ddde±XX
	if s[0] == '-' {
		buf = append(buf, '-')
		s = s[1:]
	}
	e := strings.IndexByte(s, 'e')
	digits := strings.Replace(s[:e], ".", "", 1)
	exp, _ := strconv.Atoi(s[e+1:])
	limit := 15
	if bits == 32 {
		limit = 6
	}
	if exp < -4 || exp >= limit {
		buf = append(buf, digits[0])
		if len(digits) > 1 {
			buf = append(buf, '.')
			buf = append(buf, digits[1:]...)
		}
		buf = append(buf, 'e')
		if exp < 0 {
			buf = append(buf, '-')
			exp = -exp
		} else {
			buf = append(buf, '+')
		}
		if exp < 10 {
			buf = append(buf, '0')
		}
		return strconv.AppendInt(buf, int64(exp), 10)
	}
	if exp < 0 {
		buf = append(buf, "0."...)
		buf = append(buf, strings.Repeat("0", -exp-1)...)
		return append(buf, digits...)
	}
	if len(digits) <= exp+1 {
		buf = append(buf, digits...)
		return append(buf, strings.Repeat("0", exp+1-len(digits))...)
	}
	buf = append(buf, digits[:exp+1]...)
	buf = append(buf, '.')
	return append(buf, digits[exp+1:]...)
}

// shortestFloat is strconv's shortest 'e' format, except that, as
// PostgreSQL's Ryu, a decimal exactly halfway to a neighbouring float is
// not accepted as representing f: then the shortest decimal strictly
// inside the rounding interval is used.
func shortestFloat(f float64, bits int) string {
	s := strconv.FormatFloat(f, 'e', -1, bits)
	if !onBoundary(s, f, bits) {
		return s
	}
	e := strings.IndexByte(s, 'e')
	n := len(strings.Replace(strings.TrimPrefix(s[:e], "-"), ".", "", 1))
	for p := n + 1; p <= 17; p++ {
		t := strconv.FormatFloat(f, 'e', p-1, bits)
		if !onBoundary(t, f, bits) {
			e := strings.IndexByte(t, 'e')
			m := t[:e]
			if strings.Contains(m, ".") {
				m = strings.TrimRight(strings.TrimRight(m, "0"), ".")
			}
			return m + t[e:]
		}
	}
	return s
}

// onBoundary reports whether decimal s is not strictly closer to f than
// to its neighbouring floats.
func onBoundary(s string, f float64, bits int) bool {
	var lo, hi float64
	if bits == 32 {
		lo = float64(math.Nextafter32(float32(f), float32(math.Inf(-1))))
		hi = float64(math.Nextafter32(float32(f), float32(math.Inf(1))))
	} else {
		lo, hi = math.Nextafter(f, math.Inf(-1)), math.Nextafter(f, math.Inf(1))
	}
	if math.IsInf(lo, 0) || math.IsInf(hi, 0) {
		return false
	}
	d, ok := new(big.Rat).SetString(s)
	if !ok {
		return false
	}
	x := new(big.Rat).SetFloat64(f)
	two := big.NewRat(1, 2)
	loMid := new(big.Rat).Add(x, new(big.Rat).SetFloat64(lo))
	loMid.Mul(loMid, two)
	hiMid := new(big.Rat).Add(x, new(big.Rat).SetFloat64(hi))
	hiMid.Mul(hiMid, two)
	return d.Cmp(loMid) <= 0 || d.Cmp(hiMid) >= 0
}

// appendFloat appends f as a float4 or float8 in format, in text with the
// session's extra_float_digits (efd).
func appendFloat(buf []byte, f float64, oid uint32, format int16, efd int) []byte {
	if oid == OIDFloat4 {
		if format == BinaryFormat {
			return binary.BigEndian.AppendUint32(buf, math.Float32bits(float32(f)))
		}
		if efd <= 0 {
			return appendFloatPrintf(buf, float64(float32(f)), max(6+efd, 1))
		}
		return appendFloatText(buf, float64(float32(f)), 32)
	}
	if format == BinaryFormat {
		return binary.BigEndian.AppendUint64(buf, math.Float64bits(f))
	}
	if efd <= 0 {
		return appendFloatPrintf(buf, f, max(15+efd, 1))
	}
	return appendFloatText(buf, f, 64)
}

// appendFloatPrintf is float8out/float4out with extra_float_digits <= 0:
// C's "%.*g" with FLT_DIG/DBL_DIG + extra_float_digits digits.
func appendFloatPrintf(buf []byte, f float64, digits int) []byte {
	switch {
	case math.IsNaN(f):
		return append(buf, "NaN"...)
	case math.IsInf(f, 1):
		return append(buf, "Infinity"...)
	case math.IsInf(f, -1):
		return append(buf, "-Infinity"...)
	}
	return strconv.AppendFloat(buf, f, 'g', digits, 64)
}

func appendInt8(buf []byte, v int64, format int16) []byte {
	if format == BinaryFormat {
		return binary.BigEndian.AppendUint64(buf, uint64(v))
	}
	return strconv.AppendInt(buf, v, 10)
}

func appendNumeric(buf []byte, d *decimal, format int16) []byte {
	if format == BinaryFormat {
		return d.appendBinary(buf)
	}
	return d.appendText(buf)
}
