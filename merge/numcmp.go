package merge

import (
	"bytes"
	"encoding/binary"
)

// cmpNumericText compares two finite numerics in numeric_out's form
// without allocating; ok is false for anything else (NaN, infinities,
// unexpected forms), which the exact path then handles.
func cmpNumericText(a, b []byte) (int, bool) {
	sa, ia, fa, ok1 := splitNumericText(a)
	sb, ib, fb, ok2 := splitNumericText(b)
	if !ok1 || !ok2 {
		return 0, false
	}
	if sa != sb {
		return cmpInt(int64(sa), int64(sb)), true
	}
	if sa == 0 {
		return 0, true
	}
	c := len(ia) - len(ib)
	if c == 0 {
		c = bytes.Compare(ia, ib)
	}
	if c == 0 {
		n := max(len(fa), len(fb))
		for i := 0; i < n && c == 0; i++ {
			x, y := byte('0'), byte('0')
			if i < len(fa) {
				x = fa[i]
			}
			if i < len(fb) {
				y = fb[i]
			}
			c = int(x) - int(y)
		}
	}
	switch {
	case c < 0:
		c = -1
	case c > 0:
		c = 1
	}
	return c * sa, true
}

// splitNumericText returns the sign (-1, 0, 1), the integer digits
// without leading zeros and the fraction digits.
func splitNumericText(b []byte) (sign int, intPart, frac []byte, ok bool) {
	sign = 1
	if len(b) > 0 && b[0] == '-' {
		sign = -1
		b = b[1:]
	}
	if len(b) == 0 {
		return 0, nil, nil, false
	}
	intPart = b
	if i := bytes.IndexByte(b, '.'); i >= 0 {
		intPart, frac = b[:i], b[i+1:]
	}
	zero := true
	for _, c := range intPart {
		if c < '0' || c > '9' {
			return 0, nil, nil, false
		}
		zero = zero && c == '0'
	}
	for _, c := range frac {
		if c < '0' || c > '9' {
			return 0, nil, nil, false
		}
		zero = zero && c == '0'
	}
	if zero {
		return 0, nil, nil, true
	}
	for len(intPart) > 0 && intPart[0] == '0' {
		intPart = intPart[1:]
	}
	return sign, intPart, frac, true
}

// cmpNumericBinary compares two finite numerics in numeric_send's form
// without allocating; ok is false for specials and malformed values.
func cmpNumericBinary(a, b []byte) (int, bool) {
	sa, wa, da, ok1 := splitNumericBinary(a)
	sb, wb, db, ok2 := splitNumericBinary(b)
	if !ok1 || !ok2 {
		return 0, false
	}
	if sa != sb {
		return cmpInt(int64(sa), int64(sb)), true
	}
	if sa == 0 {
		return 0, true
	}
	c := cmpInt(int64(wa), int64(wb))
	n := max(len(da), len(db)) / 2
	for i := 0; i < n && c == 0; i++ {
		var x, y uint16
		if 2*i < len(da) {
			x = binary.BigEndian.Uint16(da[2*i:])
		}
		if 2*i < len(db) {
			y = binary.BigEndian.Uint16(db[2*i:])
		}
		c = cmpInt(int64(x), int64(y))
	}
	return c * sa, true
}

// splitNumericBinary returns the sign, the weight of the first non-zero
// digit and the digits from it on.
func splitNumericBinary(b []byte) (sign int, weight int16, digits []byte, ok bool) {
	if len(b) < 8 {
		return 0, 0, nil, false
	}
	n := int(binary.BigEndian.Uint16(b))
	if len(b) != 8+2*n {
		return 0, 0, nil, false
	}
	switch binary.BigEndian.Uint16(b[4:]) {
	case numPos:
		sign = 1
	case numNeg:
		sign = -1
	default:
		return 0, 0, nil, false
	}
	weight = int16(binary.BigEndian.Uint16(b[2:]))
	digits = b[8:]
	for len(digits) >= 2 && binary.BigEndian.Uint16(digits) == 0 {
		digits = digits[2:]
		weight--
	}
	if len(digits) == 0 {
		return 0, 0, nil, true
	}
	return sign, weight, digits, true
}
