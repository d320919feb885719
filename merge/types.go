package merge

import (
	"bytes"
	"encoding/binary"
	"math"
	"strconv"
)

// Type OIDs this package understands (pg_type.oid).
const (
	OIDBool        = 16
	OIDBytea       = 17
	OIDName        = 19
	OIDInt8        = 20
	OIDInt2        = 21
	OIDInt4        = 23
	OIDText        = 25
	OIDFloat4      = 700
	OIDFloat8      = 701
	OIDBPChar      = 1042
	OIDVarchar     = 1043
	OIDDate        = 1082
	OIDTimestamp   = 1114
	OIDTimestampTZ = 1184
	OIDNumeric     = 1700
	OIDUUID        = 2950
)

// Wire format codes.
const (
	TextFormat   = 0
	BinaryFormat = 1
)

// supported reports whether values of typ can be compared and grouped.
func supported(typ uint32) bool {
	switch typ {
	case OIDBool, OIDBytea, OIDName, OIDInt8, OIDInt2, OIDInt4, OIDText, OIDFloat4, OIDFloat8,
		OIDBPChar, OIDVarchar, OIDDate, OIDTimestamp, OIDTimestampTZ, OIDNumeric, OIDUUID:
		return true
	}
	return false
}

// Collatable reports whether values of typ have a collation (text types).
func Collatable(typ uint32) bool { return collatable(typ) }

func collatable(typ uint32) bool {
	switch typ {
	case OIDText, OIDVarchar, OIDBPChar, OIDName:
		return true
	}
	return false
}

// Orderable reports whether values of type typ under the collation named
// collation (the column's or expression's effective collation; ignored for
// types without one) can be ordered here exactly as PostgreSQL orders
// them, i.e. whether ORDER BY, min and max over them can be merged.
// Text types are orderable only under byte order: "C", "POSIX" or
// "ucs_basic" (UTF-8 byte order is code point order). The planner must
// refuse (0A000) what this refuses. Equality (GROUP BY, DISTINCT) needs
// only Groupable.
func Orderable(typ uint32, collation string) bool {
	if !supported(typ) {
		return false
	}
	if collatable(typ) {
		switch collation {
		case "C", "POSIX", "ucs_basic":
			return true
		}
		return false
	}
	return true
}

// Groupable reports whether values of typ can be merged by equality
// (GROUP BY keys, DISTINCT). Text equality is byte equality under every
// deterministic collation, so the collation does not matter here; the
// planner must refuse nondeterministic collations.
func Groupable(typ uint32) bool { return supported(typ) }

// colType is the decoding of one column: its type and format.
type colType struct {
	oid    uint32
	format int16
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// cmpFloat is float8_cmp_internal: NaN equals NaN and is above all
// numbers; -0 equals 0.
func cmpFloat(a, b float64) int {
	an, bn := math.IsNaN(a), math.IsNaN(b)
	switch {
	case an && bn:
		return 0
	case an:
		return 1
	case bn:
		return -1
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (t colType) int(b []byte) (int64, bool) {
	if t.format == BinaryFormat {
		switch len(b) {
		case 2:
			return int64(int16(binary.BigEndian.Uint16(b))), t.oid == OIDInt2
		case 4:
			return int64(int32(binary.BigEndian.Uint32(b))), t.oid == OIDInt4 || t.oid == OIDDate
		case 8:
			return int64(binary.BigEndian.Uint64(b)), t.oid == OIDInt8 || t.oid == OIDTimestamp || t.oid == OIDTimestampTZ
		}
		return 0, false
	}
	return parseInt(b)
}

// parseInt parses int8out's output without allocating.
func parseInt(b []byte) (int64, bool) {
	neg := false
	if len(b) > 0 && b[0] == '-' {
		neg = true
		b = b[1:]
	}
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var u uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		u = u*10 + uint64(c-'0')
	}
	if neg {
		if u > 1<<63 {
			return 0, false
		}
		return -int64(u), true
	}
	if u > math.MaxInt64 {
		return 0, false
	}
	return int64(u), true
}

func (t colType) float(b []byte) (float64, bool) {
	if t.format == BinaryFormat {
		switch {
		case len(b) == 4 && t.oid == OIDFloat4:
			return float64(math.Float32frombits(binary.BigEndian.Uint32(b))), true
		case len(b) == 8 && t.oid == OIDFloat8:
			return math.Float64frombits(binary.BigEndian.Uint64(b)), true
		}
		return 0, false
	}
	bits := 64
	if t.oid == OIDFloat4 {
		bits = 32
	}
	v, err := strconv.ParseFloat(string(b), bits)
	if v != v {
		// float8in's NaN, as x86 arithmetic then propagates it (Go's
		// math.NaN has another payload, visible in binary output).
		v = math.Float64frombits(0x7ff8000000000000)
	}
	if err != nil {
		if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange {
			return v, true
		}
		return 0, false
	}
	return v, true
}

func (t colType) numeric(b []byte) (decimal, bool) {
	if t.format == BinaryFormat {
		return parseNumericBinary(b)
	}
	return parseNumericText(b)
}

func (t colType) bool(b []byte) (bool, bool) {
	if t.format == BinaryFormat {
		if len(b) != 1 {
			return false, false
		}
		return b[0] != 0, true
	}
	switch string(b) {
	case "t":
		return true, true
	case "f":
		return false, true
	}
	return false, false
}

// temporal decodes date (days), timestamp and timestamptz (microseconds)
// to a comparable int64; ±infinity are the int extremes, as in PostgreSQL.
func (t colType) temporal(b []byte) (int64, error) {
	if t.format == BinaryFormat {
		v, ok := t.int(b)
		if !ok {
			return 0, badInput("bad binary value of type %d", t.oid)
		}
		return v, nil
	}
	v, ok := parseISOTemporal(t.oid, b)
	if !ok {
		return 0, unsupported("cannot compare %q: only DateStyle ISO text output of date/time types can be merged", b)
	}
	return v, nil
}

// trimSpaces drops bpchar's insignificant trailing spaces.
func trimSpaces(b []byte) []byte {
	return bytes.TrimRight(b, " ")
}

// compare compares two non-NULL values of type t as PostgreSQL's default
// btree operator class does (text types in byte order).
func (t colType) compare(a, b []byte) (int, error) {
	switch t.oid {
	case OIDInt2, OIDInt4, OIDInt8:
		x, ok1 := t.int(a)
		y, ok2 := t.int(b)
		if !ok1 || !ok2 {
			return 0, badInput("bad integer value")
		}
		return cmpInt(x, y), nil
	case OIDFloat4, OIDFloat8:
		x, ok1 := t.float(a)
		y, ok2 := t.float(b)
		if !ok1 || !ok2 {
			return 0, badInput("bad float value")
		}
		return cmpFloat(x, y), nil
	case OIDNumeric:
		var c int
		var fast bool
		if t.format == BinaryFormat {
			c, fast = cmpNumericBinary(a, b)
		} else {
			c, fast = cmpNumericText(a, b)
		}
		if fast {
			return c, nil
		}
		x, ok1 := t.numeric(a)
		y, ok2 := t.numeric(b)
		if !ok1 || !ok2 {
			return 0, badInput("bad numeric value")
		}
		return cmpDecimal(&x, &y), nil
	case OIDBool:
		x, ok1 := t.bool(a)
		y, ok2 := t.bool(b)
		if !ok1 || !ok2 {
			return 0, badInput("bad boolean value")
		}
		return cmpInt(b2i(x), b2i(y)), nil
	case OIDDate, OIDTimestamp, OIDTimestampTZ:
		x, err := t.temporal(a)
		if err != nil {
			return 0, err
		}
		y, err := t.temporal(b)
		if err != nil {
			return 0, err
		}
		return cmpInt(x, y), nil
	case OIDBPChar:
		return bytes.Compare(trimSpaces(a), trimSpaces(b)), nil
	case OIDBytea:
		if t.format == TextFormat {
			x, ok1 := decodeByteaText(a)
			y, ok2 := decodeByteaText(b)
			if !ok1 || !ok2 {
				return 0, badInput("bad bytea value")
			}
			return bytes.Compare(x, y), nil
		}
		return bytes.Compare(a, b), nil
	default: // text, varchar, name, uuid: byte order
		return bytes.Compare(a, b), nil
	}
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// appendKey appends a canonical encoding of a non-NULL value: two values
// PostgreSQL's equality operator says are equal get equal bytes.
func (t colType) appendKey(buf, v []byte) ([]byte, error) {
	switch t.oid {
	case OIDInt2, OIDInt4, OIDInt8:
		x, ok := t.int(v)
		if !ok {
			return buf, badInput("bad integer value")
		}
		return binary.BigEndian.AppendUint64(buf, uint64(x)), nil
	case OIDFloat4, OIDFloat8:
		x, ok := t.float(v)
		if !ok {
			return buf, badInput("bad float value")
		}
		switch {
		case math.IsNaN(x):
			x = math.NaN()
		case x == 0:
			x = 0
		}
		return binary.BigEndian.AppendUint64(buf, math.Float64bits(x)), nil
	case OIDNumeric:
		x, ok := t.numeric(v)
		if !ok {
			return buf, badInput("bad numeric value")
		}
		return x.normKey(buf), nil
	case OIDBool:
		x, ok := t.bool(v)
		if !ok {
			return buf, badInput("bad boolean value")
		}
		return append(buf, byte(b2i(x))), nil
	case OIDBPChar:
		v = trimSpaces(v)
	case OIDBytea:
		if t.format == TextFormat {
			x, ok := decodeByteaText(v)
			if !ok {
				return buf, badInput("bad bytea value")
			}
			v = x
		}
	case OIDDate, OIDTimestamp, OIDTimestampTZ:
		if t.format == TextFormat {
			x, err := t.temporal(v)
			if err != nil {
				return buf, err
			}
			return binary.BigEndian.AppendUint64(buf, uint64(x)), nil
		}
	}
	buf = binary.AppendUvarint(buf, uint64(len(v)))
	return append(buf, v...), nil
}

// decodeByteaText decodes byteaout's hex ("\x0a") or escape format.
func decodeByteaText(b []byte) ([]byte, bool) {
	if len(b) >= 2 && b[0] == '\\' && b[1] == 'x' {
		h := b[2:]
		if len(h)%2 != 0 {
			return nil, false
		}
		out := make([]byte, len(h)/2)
		for i := range out {
			hi, ok1 := unhex(h[2*i])
			lo, ok2 := unhex(h[2*i+1])
			if !ok1 || !ok2 {
				return nil, false
			}
			out[i] = hi<<4 | lo
		}
		return out, true
	}
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		if b[i] != '\\' {
			out = append(out, b[i])
			continue
		}
		switch {
		case i+1 < len(b) && b[i+1] == '\\':
			out = append(out, '\\')
			i++
		case i+3 < len(b):
			v, err := strconv.ParseUint(string(b[i+1:i+4]), 8, 8)
			if err != nil {
				return nil, false
			}
			out = append(out, byte(v))
			i += 3
		default:
			return nil, false
		}
	}
	return out, true
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
