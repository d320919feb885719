package merge

import (
	"encoding/binary"
	"math"
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
	s := strconv.FormatFloat(f, 'e', -1, bits) // -d.ddde±XX
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

// appendFloat appends f as a float4 or float8 in format.
func appendFloat(buf []byte, f float64, oid uint32, format int16) []byte {
	if oid == OIDFloat4 {
		if format == BinaryFormat {
			return binary.BigEndian.AppendUint32(buf, math.Float32bits(float32(f)))
		}
		return appendFloatText(buf, float64(float32(f)), 32)
	}
	if format == BinaryFormat {
		return binary.BigEndian.AppendUint64(buf, math.Float64bits(f))
	}
	return appendFloatText(buf, f, 64)
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
