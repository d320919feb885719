package merge

import (
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
)

// Expr is a HAVING condition or a part of one, evaluated over a merged
// row (hidden columns included) with SQL's three-valued logic. Build it
// from Col, Const, Cmp, And, Or, Not, IsNull and Arith.
type Expr interface {
	eval(row [][]byte, types []colType) (val, error)
	check(types []colType) error
}

// Col is the value of column Index of Spec.Columns.
type Col struct{ Index int }

// Const is a constant of type Type (a type OID this package supports)
// written as PostgreSQL would print it in text format; Null makes it NULL.
// Type 0 is a literal as written in SQL: digits are int4, int8 or numeric
// as PostgreSQL types them (1.5 and 1e3 are numeric), anything else is a
// string literal that takes the type of what it is compared with.
type Const struct {
	Type uint32
	Text string
	Null bool
}

// CmpOp is a comparison operator.
type CmpOp uint8

const (
	Eq CmpOp = iota
	Ne
	Lt
	Le
	Gt
	Ge
)

// Cmp compares L and R; NULL when either is NULL.
type Cmp struct {
	Op   CmpOp
	L, R Expr
}

// And, Or and Not are the boolean connectives with SQL's NULL rules.
type (
	And struct{ Args []Expr }
	Or  struct{ Args []Expr }
	Not struct{ Arg Expr }
)

// IsNull is "Arg IS NULL", or "Arg IS NOT NULL" with Negate.
type IsNull struct {
	Arg    Expr
	Negate bool
}

// ArithOp is an arithmetic operator.
type ArithOp uint8

const (
	Add ArithOp = iota
	Sub
	Mul
	Div
)

// Arith is arithmetic on numbers, with PostgreSQL's result types: integers
// stay integers of the wider operand's width (division truncates,
// overflow is an error), numeric is exact (division with numeric_div's
// scale), and anything with a float is float8.
type Arith struct {
	Op   ArithOp
	L, R Expr
}

type vkind uint8

const (
	vNull vkind = iota
	vBool
	vInt
	vNum
	vFloat
	vOther // compared with colType.compare
)

// val is an evaluated value.
type val struct {
	kind vkind
	oid  uint32 // the integer width for vInt; the type for vOther
	b    bool
	i    int64
	f    float64
	d    decimal
	raw  []byte
	ct   colType
}

func decodeVal(t colType, b []byte) (val, error) {
	if b == nil {
		return val{kind: vNull}, nil
	}
	switch t.oid {
	case OIDInt2, OIDInt4, OIDInt8:
		x, ok := t.int(b)
		if !ok {
			return val{}, badInput("bad integer value")
		}
		return val{kind: vInt, oid: t.oid, i: x}, nil
	case OIDFloat4, OIDFloat8:
		x, ok := t.float(b)
		if !ok {
			return val{}, badInput("bad float value")
		}
		return val{kind: vFloat, f: x}, nil
	case OIDNumeric:
		x, ok := t.numeric(b)
		if !ok {
			return val{}, badInput("bad numeric value")
		}
		return val{kind: vNum, d: x}, nil
	case OIDBool:
		x, ok := t.bool(b)
		if !ok {
			return val{}, badInput("bad boolean value")
		}
		return val{kind: vBool, b: x}, nil
	}
	return val{kind: vOther, oid: t.oid, raw: b, ct: t}, nil
}

func (c Col) check(types []colType) error {
	if c.Index < 0 || c.Index >= len(types) {
		return unsupported("merge: HAVING refers to column %d of %d", c.Index, len(types))
	}
	return nil
}

func (c Col) eval(row [][]byte, types []colType) (val, error) {
	return decodeVal(types[c.Index], row[c.Index])
}

func (c Const) check([]colType) error {
	if c.Null || c.Type == 0 {
		return nil
	}
	if !supported(c.Type) {
		return unsupported("merge: HAVING constant of type %d", c.Type)
	}
	_, err := decodeVal(colType{oid: c.Type, format: TextFormat}, []byte(c.Text))
	if err == nil && c.Type >= OIDDate && c.Type <= OIDTimestampTZ {
		_, err = colType{oid: c.Type}.temporal([]byte(c.Text))
	}
	if err != nil {
		return unsupported("merge: bad HAVING constant %q of type %d", c.Text, c.Type)
	}
	return nil
}

func (c Const) eval([][]byte, []colType) (val, error) {
	if c.Null {
		return val{kind: vNull}, nil
	}
	if c.Type == 0 {
		return literal(c.Text), nil
	}
	return decodeVal(colType{oid: c.Type, format: TextFormat}, []byte(c.Text))
}

func checkExpr(e Expr, types []colType) error {
	if e == nil {
		return unsupported("merge: nil HAVING expression")
	}
	return e.check(types)
}

func checkAll(types []colType, es ...Expr) error {
	for _, e := range es {
		if err := checkExpr(e, types); err != nil {
			return err
		}
	}
	return nil
}

func (c Cmp) check(t []colType) error {
	if c.Op > Ge {
		return unsupported("merge: unknown comparison %d", c.Op)
	}
	return checkAll(t, c.L, c.R)
}
func (a And) check(t []colType) error    { return checkAll(t, a.Args...) }
func (o Or) check(t []colType) error     { return checkAll(t, o.Args...) }
func (n Not) check(t []colType) error    { return checkAll(t, n.Arg) }
func (n IsNull) check(t []colType) error { return checkAll(t, n.Arg) }
func (a Arith) check(t []colType) error {
	if a.Op > Div {
		return unsupported("merge: unknown arithmetic operator %d", a.Op)
	}
	return checkAll(t, a.L, a.R)
}

func (c Cmp) eval(row [][]byte, t []colType) (val, error) {
	l, err := evalExpr(c.L, row, t)
	if err != nil {
		return val{}, err
	}
	r, err := evalExpr(c.R, row, t)
	if err != nil {
		return val{}, err
	}
	if l.kind == vNull || r.kind == vNull {
		return val{kind: vNull}, nil
	}
	n, err := compareVals(l, r)
	if err != nil {
		return val{}, err
	}
	var res bool
	switch c.Op {
	case Eq:
		res = n == 0
	case Ne:
		res = n != 0
	case Lt:
		res = n < 0
	case Le:
		res = n <= 0
	case Gt:
		res = n > 0
	case Ge:
		res = n >= 0
	}
	return val{kind: vBool, b: res}, nil
}

func evalExpr(e Expr, row [][]byte, t []colType) (val, error) { return e.eval(row, t) }

// literal types an untyped SQL literal as PostgreSQL's scanner does.
func literal(s string) val {
	if v, ok := parseInt([]byte(s)); ok {
		if v >= math.MinInt32 && v <= math.MaxInt32 {
			return val{kind: vInt, oid: OIDInt4, i: v}
		}
		return val{kind: vInt, oid: OIDInt8, i: v}
	}
	if r, ok := new(big.Rat).SetString(s); ok && s != "" && strings.Trim(s, "0123456789.eE+-") == "" {
		// numeric: the scale is the digits after the point less the exponent
		d := decimal{}
		mant, exp := s, 0
		if i := strings.IndexAny(s, "eE"); i >= 0 {
			mant = s[:i]
			exp, _ = strconv.Atoi(s[i+1:])
		}
		sc := 0
		if i := strings.IndexByte(mant, '.'); i >= 0 {
			sc = len(mant) - i - 1
		}
		sc = max(sc-exp, 0)
		r.Mul(r, new(big.Rat).SetInt(pow10(int32(sc))))
		d.coef.Set(r.Num())
		d.scale = int32(sc)
		return val{kind: vNum, d: d}
	}
	return val{kind: vOther, oid: 0, raw: []byte(s), ct: colType{format: TextFormat}}
}

// typeOf is the type an unknown literal compared with v takes.
func typeOf(v val) uint32 {
	switch v.kind {
	case vInt, vOther:
		return v.oid
	case vNum:
		return OIDNumeric
	case vFloat:
		return OIDFloat8
	case vBool:
		return OIDBool
	}
	return 0
}

// resolveUnknown types a string literal by the other operand.
func resolveUnknown(v, other val) (val, error) {
	if v.kind != vOther || v.oid != 0 {
		return v, nil
	}
	t := typeOf(other)
	if t == 0 || !supported(t) {
		return val{}, unsupported("merge: cannot type the literal %q in HAVING", v.raw)
	}
	if t == OIDDate || t == OIDTimestamp || t == OIDTimestampTZ {
		if _, err := (colType{oid: t}).temporal(v.raw); err != nil {
			return val{}, err
		}
	}
	return decodeVal(colType{oid: t, format: TextFormat}, v.raw)
}

func asDecimal(v val) decimal {
	if v.kind == vInt {
		return decimalFromInt(v.i)
	}
	return v.d
}

func asFloat(v val) float64 {
	switch v.kind {
	case vInt:
		return float64(v.i)
	case vNum:
		switch v.d.special {
		case specNaN:
			return math.NaN()
		case specPInf:
			return math.Inf(1)
		case specNInf:
			return math.Inf(-1)
		}
		f, _ := new(big.Rat).SetFrac(&v.d.coef, pow10(v.d.scale)).Float64()
		return f
	}
	return v.f
}

func numeric(k vkind) bool { return k == vInt || k == vNum || k == vFloat }

func compareVals(l, r val) (int, error) {
	var err error
	if l, err = resolveUnknown(l, r); err != nil {
		return 0, err
	}
	if r, err = resolveUnknown(r, l); err != nil {
		return 0, err
	}
	switch {
	case numeric(l.kind) && numeric(r.kind):
		switch {
		case l.kind == vFloat || r.kind == vFloat:
			return cmpFloat(asFloat(l), asFloat(r)), nil
		case l.kind == vNum || r.kind == vNum:
			a, b := asDecimal(l), asDecimal(r)
			return cmpDecimal(&a, &b), nil
		default:
			return cmpInt(l.i, r.i), nil
		}
	case l.kind == vBool && r.kind == vBool:
		return cmpInt(b2i(l.b), b2i(r.b)), nil
	case l.kind == vOther && r.kind == vOther && sameFamily(l.oid, r.oid):
		if l.ct.format == r.ct.format {
			return l.ct.compare(l.raw, r.raw)
		}
		a, err := l.ct.canonical(l.raw)
		if err != nil {
			return 0, err
		}
		b, err := r.ct.canonical(r.raw)
		if err != nil {
			return 0, err
		}
		return colType{oid: l.oid, format: BinaryFormat}.compare(a, b)
	}
	return 0, unsupported("merge: cannot compare types %d and %d in HAVING", l.oid, r.oid)
}

func sameFamily(a, b uint32) bool {
	if a == b {
		return true
	}
	return collatable(a) && collatable(b) && a != OIDBPChar && b != OIDBPChar
}

// canonical turns a value of a vOther type into binary-format bytes, for
// comparing a text-format constant with a binary-format column.
func (t colType) canonical(b []byte) ([]byte, error) {
	if t.format == BinaryFormat {
		return b, nil
	}
	switch t.oid {
	case OIDDate:
		v, err := t.temporal(b)
		if err != nil {
			return nil, err
		}
		return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}, nil
	case OIDTimestamp, OIDTimestampTZ:
		v, err := t.temporal(b)
		if err != nil {
			return nil, err
		}
		return appendInt8(nil, v, BinaryFormat), nil
	case OIDBytea:
		x, ok := decodeByteaText(b)
		if !ok {
			return nil, badInput("bad bytea value")
		}
		return x, nil
	case OIDUUID:
		var out []byte
		for i := 0; i+1 < len(b); i++ {
			if b[i] == '-' {
				continue
			}
			hi, ok1 := unhex(b[i])
			lo, ok2 := unhex(b[i+1])
			if !ok1 || !ok2 {
				return nil, badInput("bad uuid value")
			}
			out = append(out, hi<<4|lo)
			i++
		}
		return out, nil
	}
	return b, nil // text types: the same bytes in both formats
}

func (a And) eval(row [][]byte, t []colType) (val, error) {
	null := false
	for _, e := range a.Args {
		v, err := evalBool(e, row, t)
		if err != nil {
			return val{}, err
		}
		if v.kind == vNull {
			null = true
		} else if !v.b {
			return val{kind: vBool, b: false}, nil
		}
	}
	if null {
		return val{kind: vNull}, nil
	}
	return val{kind: vBool, b: true}, nil
}

func (o Or) eval(row [][]byte, t []colType) (val, error) {
	null := false
	for _, e := range o.Args {
		v, err := evalBool(e, row, t)
		if err != nil {
			return val{}, err
		}
		if v.kind == vNull {
			null = true
		} else if v.b {
			return val{kind: vBool, b: true}, nil
		}
	}
	if null {
		return val{kind: vNull}, nil
	}
	return val{kind: vBool, b: false}, nil
}

func (n Not) eval(row [][]byte, t []colType) (val, error) {
	v, err := evalBool(n.Arg, row, t)
	if err != nil || v.kind == vNull {
		return v, err
	}
	return val{kind: vBool, b: !v.b}, nil
}

func (n IsNull) eval(row [][]byte, t []colType) (val, error) {
	v, err := evalExpr(n.Arg, row, t)
	if err != nil {
		return val{}, err
	}
	return val{kind: vBool, b: (v.kind == vNull) != n.Negate}, nil
}

func evalBool(e Expr, row [][]byte, t []colType) (val, error) {
	v, err := evalExpr(e, row, t)
	if err != nil {
		return val{}, err
	}
	if v.kind != vNull && v.kind != vBool {
		return val{}, unsupported("merge: HAVING operand is not boolean")
	}
	return v, nil
}

var intRange = map[uint32][2]int64{
	OIDInt2: {math.MinInt16, math.MaxInt16},
	OIDInt4: {math.MinInt32, math.MaxInt32},
	OIDInt8: {math.MinInt64, math.MaxInt64},
}

var intName = map[uint32]string{OIDInt2: "smallint", OIDInt4: "integer", OIDInt8: "bigint"}

func widerInt(a, b uint32) uint32 {
	rank := map[uint32]int{OIDInt2: 0, OIDInt4: 1, OIDInt8: 2}
	if rank[a] >= rank[b] {
		return a
	}
	return b
}

func (a Arith) eval(row [][]byte, t []colType) (val, error) {
	l, err := evalExpr(a.L, row, t)
	if err != nil {
		return val{}, err
	}
	r, err := evalExpr(a.R, row, t)
	if err != nil {
		return val{}, err
	}
	if l.kind == vNull || r.kind == vNull {
		return val{kind: vNull}, nil
	}
	if !numeric(l.kind) || !numeric(r.kind) {
		return val{}, unsupported("merge: arithmetic on non-numeric values in HAVING")
	}
	switch {
	case l.kind == vFloat || r.kind == vFloat:
		x, y := asFloat(l), asFloat(r)
		var z float64
		switch a.Op {
		case Add:
			z = x + y
		case Sub:
			z = x - y
		case Mul:
			z = x * y
		case Div:
			if y == 0 {
				return val{}, errorf(CodeDivisionByZero, ErrDivisionByZero, "division by zero")
			}
			z = x / y
		}
		if math.IsInf(z, 0) && !math.IsInf(x, 0) && !math.IsInf(y, 0) {
			return val{}, errorf(CodeNumericOutOfRange, ErrOutOfRange, "value out of range: overflow")
		}
		return val{kind: vFloat, f: z}, nil
	case l.kind == vNum || r.kind == vNum:
		x, y := asDecimal(l), asDecimal(r)
		var z decimal
		switch a.Op {
		case Add:
			z = addDecimal(&x, &y)
		case Sub:
			y = negDecimal(y)
			z = addDecimal(&x, &y)
		case Mul:
			z = mulDecimal(&x, &y)
		case Div:
			z, err = divDecimal(&x, &y)
			if err != nil {
				return val{}, err
			}
		}
		return val{kind: vNum, d: z}, nil
	}
	typ := widerInt(l.oid, r.oid)
	x, y := big.NewInt(l.i), big.NewInt(r.i)
	switch a.Op {
	case Add:
		x.Add(x, y)
	case Sub:
		x.Sub(x, y)
	case Mul:
		x.Mul(x, y)
	case Div:
		if y.Sign() == 0 {
			return val{}, errorf(CodeDivisionByZero, ErrDivisionByZero, "division by zero")
		}
		x.Quo(x, y) // truncates toward zero, as int4div
	}
	rg := intRange[typ]
	if !x.IsInt64() || x.Int64() < rg[0] || x.Int64() > rg[1] {
		return val{}, errorf(CodeNumericOutOfRange, ErrOutOfRange, "%s out of range", intName[typ])
	}
	return val{kind: vInt, oid: typ, i: x.Int64()}, nil
}

func negDecimal(d decimal) decimal {
	var r decimal
	r.scale = d.scale
	switch d.special {
	case specPInf:
		r.special = specNInf
	case specNInf:
		r.special = specPInf
	default:
		r.special = d.special
	}
	r.coef.Neg(&d.coef)
	return r
}

// mulDecimal is numeric_mul: the scales add up.
func mulDecimal(a, b *decimal) decimal {
	var r decimal
	if a.special != 0 || b.special != 0 {
		switch {
		case a.special == specNaN || b.special == specNaN:
			r.special = specNaN
		default:
			sa, sb := decSign(a), decSign(b)
			switch {
			case sa == 0 || sb == 0:
				r.special = specNaN // 0 × Inf
			case sa*sb > 0:
				r.special = specPInf
			default:
				r.special = specNInf
			}
		}
		return r
	}
	r.coef.Mul(&a.coef, &b.coef)
	r.scale = a.scale + b.scale
	return r
}

func decSign(d *decimal) int {
	switch d.special {
	case specPInf:
		return 1
	case specNInf:
		return -1
	}
	return d.coef.Sign()
}

// String forms, for messages and tests.
func (c CmpOp) String() string   { return [...]string{"=", "<>", "<", "<=", ">", ">="}[c] }
func (a ArithOp) String() string { return [...]string{"+", "-", "*", "/"}[a] }
func (c Col) String() string     { return fmt.Sprintf("$col%d", c.Index) }
