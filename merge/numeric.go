package merge

import (
	"encoding/binary"
	"math/big"
	"strconv"
	"strings"
)

// decimal is an exact PostgreSQL numeric: coef × 10^-scale, where scale is
// the display scale (dscale), or one of the special values.
type decimal struct {
	coef    big.Int
	scale   int32
	special int8 // 0 finite, specNaN, specPInf, specNInf
}

const (
	specNaN  = 1
	specPInf = 2
	specNInf = 3
)

var bigTen = big.NewInt(10)

func pow10(n int32) *big.Int {
	return new(big.Int).Exp(bigTen, big.NewInt(int64(n)), nil)
}

// parseNumericText parses numeric_out's output.
func parseNumericText(b []byte) (decimal, bool) {
	var d decimal
	s := string(b)
	switch s {
	case "NaN":
		d.special = specNaN
		return d, true
	case "Infinity":
		d.special = specPInf
		return d, true
	case "-Infinity":
		d.special = specNInf
		return d, true
	}
	if i := strings.IndexByte(s, '.'); i >= 0 {
		d.scale = int32(len(s) - i - 1)
		s = s[:i] + s[i+1:]
	}
	if s == "" || s == "-" || strings.ContainsAny(s, "eE+") {
		return d, false
	}
	if _, ok := d.coef.SetString(s, 10); !ok {
		return d, false
	}
	return d, true
}

// Binary numeric sign words (numeric_send).
const (
	numPos  = 0x0000
	numNeg  = 0x4000
	numNaN  = 0xC000
	numPInf = 0xD000
	numNInf = 0xF000
)

// parseNumericBinary parses numeric_send's output.
func parseNumericBinary(b []byte) (decimal, bool) {
	var d decimal
	if len(b) < 8 {
		return d, false
	}
	ndigits := int(binary.BigEndian.Uint16(b))
	weight := int32(int16(binary.BigEndian.Uint16(b[2:])))
	sign := binary.BigEndian.Uint16(b[4:])
	dscale := int32(binary.BigEndian.Uint16(b[6:]))
	if len(b) != 8+2*ndigits {
		return d, false
	}
	switch sign {
	case numNaN:
		d.special = specNaN
		return d, true
	case numPInf:
		d.special = specPInf
		return d, true
	case numNInf:
		d.special = specNInf
		return d, true
	case numPos, numNeg:
	default:
		return d, false
	}
	var n big.Int
	var small int64
	nBase := big.NewInt(10000)
	for i := 0; i < ndigits; i++ {
		dig := int64(binary.BigEndian.Uint16(b[8+2*i:]))
		if dig > 9999 {
			return d, false
		}
		if i < 4 {
			small = small*10000 + dig
			if i == ndigits-1 || i == 3 {
				n.SetInt64(small)
			}
			continue
		}
		n.Mul(&n, nBase)
		n.Add(&n, big.NewInt(dig))
	}
	// value = n × 10^(4(weight-ndigits+1)); coef = value × 10^dscale.
	exp := 4*(weight-int32(ndigits)+1) + dscale
	if exp >= 0 {
		d.coef.Mul(&n, pow10(exp))
	} else {
		d.coef.Quo(&n, pow10(-exp)) // the dropped digits are zero
	}
	if sign == numNeg {
		d.coef.Neg(&d.coef)
	}
	d.scale = dscale
	return d, true
}

// appendText appends numeric_out's output.
func (d *decimal) appendText(buf []byte) []byte {
	switch d.special {
	case specNaN:
		return append(buf, "NaN"...)
	case specPInf:
		return append(buf, "Infinity"...)
	case specNInf:
		return append(buf, "-Infinity"...)
	}
	neg := d.coef.Sign() < 0
	var abs big.Int
	abs.Abs(&d.coef)
	digits := abs.Text(10)
	if neg {
		buf = append(buf, '-')
	}
	sc := int(d.scale)
	if len(digits) <= sc {
		digits = strings.Repeat("0", sc-len(digits)+1) + digits
	}
	buf = append(buf, digits[:len(digits)-sc]...)
	if sc > 0 {
		buf = append(buf, '.')
		buf = append(buf, digits[len(digits)-sc:]...)
	}
	return buf
}

// appendBinary appends numeric_send's output: base-10000 digits aligned on
// the decimal point, without leading or trailing zero digits.
func (d *decimal) appendBinary(buf []byte) []byte {
	var hdr [8]byte
	switch d.special {
	case specNaN, specPInf, specNInf:
		sign := map[int8]uint16{specNaN: numNaN, specPInf: numPInf, specNInf: numNInf}[d.special]
		binary.BigEndian.PutUint16(hdr[4:], sign)
		if d.special != specNaN {
			// numeric_send reads the dscale bits of the header, where
			// ±Infinity's sign word leaves 32.
			binary.BigEndian.PutUint16(hdr[6:], 32)
		}
		return append(buf, hdr[:]...)
	}
	var abs big.Int
	abs.Abs(&d.coef)
	s := abs.Text(10)
	sc := int(d.scale)
	if len(s) <= sc {
		s = strings.Repeat("0", sc-len(s)+1) + s
	}
	intPart, frac := s[:len(s)-sc], s[len(s)-sc:]
	if pad := (4 - len(intPart)%4) % 4; pad > 0 {
		intPart = strings.Repeat("0", pad) + intPart
	}
	if pad := (4 - len(frac)%4) % 4; pad > 0 {
		frac += strings.Repeat("0", pad)
	}
	all := intPart + frac
	groups := make([]uint16, 0, len(all)/4)
	for i := 0; i < len(all); i += 4 {
		v, _ := strconv.Atoi(all[i : i+4])
		groups = append(groups, uint16(v))
	}
	weight := len(intPart)/4 - 1
	for len(groups) > 0 && groups[0] == 0 {
		groups = groups[1:]
		weight--
	}
	for len(groups) > 0 && groups[len(groups)-1] == 0 {
		groups = groups[:len(groups)-1]
	}
	sign := uint16(numPos)
	if len(groups) == 0 {
		weight = 0
	} else if d.coef.Sign() < 0 {
		sign = numNeg
	}
	binary.BigEndian.PutUint16(hdr[0:], uint16(len(groups)))
	binary.BigEndian.PutUint16(hdr[2:], uint16(int16(weight)))
	binary.BigEndian.PutUint16(hdr[4:], sign)
	binary.BigEndian.PutUint16(hdr[6:], uint16(d.scale))
	buf = append(buf, hdr[:]...)
	for _, g := range groups {
		buf = binary.BigEndian.AppendUint16(buf, g)
	}
	return buf
}

// rank orders the special values: -Inf < finite < +Inf < NaN (numeric_cmp).
func (d *decimal) rank() int {
	switch d.special {
	case specNInf:
		return 0
	case specPInf:
		return 2
	case specNaN:
		return 3
	}
	return 1
}

// cmpDecimal compares as numeric_cmp does: NaN equals NaN and sorts above
// everything; scale does not matter (1.0 = 1.00).
func cmpDecimal(a, b *decimal) int {
	ra, rb := a.rank(), b.rank()
	if ra != rb || ra != 1 {
		return cmpInt(int64(ra), int64(rb))
	}
	if a.scale == b.scale {
		return a.coef.Cmp(&b.coef)
	}
	var x, y big.Int
	x.Set(&a.coef)
	y.Set(&b.coef)
	if a.scale < b.scale {
		x.Mul(&x, pow10(b.scale-a.scale))
	} else {
		y.Mul(&y, pow10(a.scale-b.scale))
	}
	return x.Cmp(&y)
}

// normKey appends a canonical form: equal numerics give equal bytes.
func (d *decimal) normKey(buf []byte) []byte {
	if d.special != 0 {
		return append(buf, 'S', byte(d.special))
	}
	var c big.Int
	c.Set(&d.coef)
	sc := d.scale
	var q, r big.Int
	for sc > 0 && c.Sign() != 0 {
		q.QuoRem(&c, bigTen, &r)
		if r.Sign() != 0 {
			break
		}
		c.Set(&q)
		sc--
	}
	if c.Sign() == 0 {
		sc = 0
	}
	buf = append(buf, 'F')
	buf = binary.BigEndian.AppendUint32(buf, uint32(sc))
	return c.Append(buf, 16)
}

// addDecimal returns a+b as numeric_add: the result's scale is the larger
// one; infinities of opposite signs give NaN.
func addDecimal(a, b *decimal) decimal {
	var r decimal
	if a.special != 0 || b.special != 0 {
		switch {
		case a.special == specNaN || b.special == specNaN:
			r.special = specNaN
		case a.special != 0 && b.special != 0 && a.special != b.special:
			r.special = specNaN
		case a.special != 0:
			r.special = a.special
		default:
			r.special = b.special
		}
		return r
	}
	x, y := &a.coef, &b.coef
	var t big.Int
	switch {
	case a.scale < b.scale:
		t.Mul(x, pow10(b.scale-a.scale))
		r.coef.Add(&t, y)
		r.scale = b.scale
	case a.scale > b.scale:
		t.Mul(y, pow10(a.scale-b.scale))
		r.coef.Add(x, &t)
		r.scale = a.scale
	default:
		r.coef.Add(x, y)
		r.scale = a.scale
	}
	return r
}

// PostgreSQL's numeric constants (numeric.c).
const (
	numericMinSigDigits    = 16
	numericMaxDisplayScale = 1000
	decDigits              = 4
)

// weightAndFirst returns the base-10000 weight of the first non-zero digit
// of |d| and that digit (0, 0 for zero), as select_div_scale sees them.
func (d *decimal) weightAndFirst() (int32, int64) {
	if d.coef.Sign() == 0 {
		return 0, 0
	}
	var abs big.Int
	abs.Abs(&d.coef)
	n := int32(len(abs.Text(10)))
	e := n - 1 - d.scale // |d| in [10^e, 10^(e+1))
	w := e / 4
	if e < 0 && e%4 != 0 {
		w--
	}
	// first digit = floor(|d| / 10000^w) = floor(abs / 10^(4w+scale))
	sh := 4*w + d.scale
	var f big.Int
	if sh >= 0 {
		f.Quo(&abs, pow10(sh))
	} else {
		f.Mul(&abs, pow10(-sh))
	}
	return w, f.Int64()
}

// selectDivScale is numeric.c's select_div_scale.
func selectDivScale(a, b *decimal) int32 {
	w1, f1 := a.weightAndFirst()
	w2, f2 := b.weightAndFirst()
	qweight := w1 - w2
	if f1 <= f2 {
		qweight--
	}
	rscale := numericMinSigDigits - qweight*decDigits
	rscale = max(rscale, a.scale, b.scale, 0)
	return min(rscale, numericMaxDisplayScale)
}

// divDecimal is numeric_div: the quotient rounded half away from zero to
// select_div_scale digits. b must not be zero.
func divDecimal(a, b *decimal) (decimal, error) {
	var r decimal
	if a.special != 0 || b.special != 0 {
		switch {
		case a.special == specNaN || b.special == specNaN:
			r.special = specNaN
		case a.special != 0 && b.special != 0:
			r.special = specNaN
		case a.special != 0: // ±Inf / finite
			if b.coef.Sign() == 0 {
				return r, errorf(CodeDivisionByZero, ErrDivisionByZero, "division by zero")
			}
			r.special = a.special
			if b.coef.Sign() < 0 {
				r.special = specPInf + specNInf - a.special
			}
		default: // finite / ±Inf = 0
			r.scale = a.scale // numeric_div returns zero with dscale of var1
		}
		return r, nil
	}
	if b.coef.Sign() == 0 {
		return r, errorf(CodeDivisionByZero, ErrDivisionByZero, "division by zero")
	}
	rscale := selectDivScale(a, b)
	// q = a.coef/10^a.scale / (b.coef/10^b.scale) × 10^rscale
	//   = a.coef × 10^(rscale+b.scale) / (b.coef × 10^a.scale)
	num := new(big.Int).Mul(&a.coef, pow10(rscale+b.scale))
	den := new(big.Int).Mul(&b.coef, pow10(a.scale))
	neg := (num.Sign() < 0) != (den.Sign() < 0)
	num.Abs(num)
	den.Abs(den)
	var q, m big.Int
	q.QuoRem(num, den, &m)
	m.Lsh(&m, 1)
	if m.Cmp(den) >= 0 {
		q.Add(&q, big.NewInt(1))
	}
	if neg {
		q.Neg(&q)
	}
	r.coef.Set(&q)
	r.scale = rscale
	return r, nil
}

func decimalFromInt(v int64) decimal {
	var d decimal
	d.coef.SetInt64(v)
	return d
}

// NumericText returns the text form of a numeric value in binary format
// (for a HAVING parameter the client sent in binary); ok is false when b
// is not one (NaN and infinities included).
func NumericText(b []byte) (string, bool) {
	d, ok := parseNumericBinary(b)
	if !ok {
		return "", false
	}
	return string(d.appendText(nil)), true
}
