package router

import (
	"encoding/binary"
	"strings"
	"unsafe"

	"github.com/pgshard/pgshard/shardmap"
)

// This file reads shard key values: from literals in the query text (found
// by a scan that also computes the statement's shape) and from Bind
// parameters in text or binary format, and hashes them as PostgreSQL does.

// Parameter type OIDs the key decoder knows.
const (
	oidInt8    = 20
	oidInt2    = 21
	oidInt4    = 23
	oidText    = 25
	oidVarchar = 1043
	oidUUID    = 2950
)

// litKind is the kind of a literal token found by planScan.
type litKind uint8

const (
	litString litKind = iota + 1 // 'x', E'x', $$x$$
	litNumber
	litParam // $n
)

// lit is one literal or parameter token: its kind and byte span.
type lit struct {
	kind     litKind
	pos, end int32
}

// planScan tokenizes a query text the way the effects lexer does (sharing
// its helpers for quotes, dollar quotes and comments) and computes a shape
// hash: every token's kind, and its text unless it is a string or number
// literal. Identifiers are folded to lower case; parameter numbers are part
// of the shape (which $n holds the key matters). It keeps every literal's
// span: the first len(buf) in a fixed array, the rest in more.
type planScan struct {
	shape uint64
	n     int
	buf   [32]lit
	more  []lit
	// stmts counts the statements (non-empty runs between ';').
	stmts int
}

func (s *planScan) lit(i int) lit {
	if i < len(s.buf) {
		return s.buf[i]
	}
	return s.more[i-len(s.buf)]
}

func (s *planScan) add(l lit) {
	if s.n < len(s.buf) {
		s.buf[s.n] = l
	} else {
		s.more = append(s.more, l)
	}
	s.n++
}

// planTok is one token of the text.
type planTok struct {
	kind     tokKind
	pos, end int
}

// planLexer yields every token of a text.
type planLexer struct{ l lexer }

// next returns the next token; ok is false at the end.
func (p *planLexer) next() (planTok, bool) {
	l := &p.l
	s := l.s
	for l.i < len(s) {
		c := s[l.i]
		start := l.i
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			l.i++
			continue
		case c == '-' && l.i+1 < len(s) && s[l.i+1] == '-':
			for l.i < len(s) && s[l.i] != '\n' {
				l.i++
			}
			continue
		case c == '/' && l.i+1 < len(s) && s[l.i+1] == '*':
			l.blockComment()
			continue
		case c == '\'':
			l.quoted('\'', false)
			return planTok{tokString, start, l.i}, true
		case (c == 'e' || c == 'E') && l.i+1 < len(s) && s[l.i+1] == '\'':
			l.i++
			l.quoted('\'', true)
			return planTok{tokString, start, l.i}, true
		case c == '"':
			l.quoted('"', false)
			return planTok{tokQIdent, start, l.i}, true
		case c == '$':
			if l.dollar() {
				return planTok{tokString, start, l.i}, true
			}
			l.i++
			for l.i < len(s) && s[l.i] >= '0' && s[l.i] <= '9' {
				l.i++
			}
			return planTok{tokParam, start, l.i}, true
		case isIdentStart(c):
			for l.i < len(s) && isIdentCont(s[l.i]) {
				l.i++
			}
			return planTok{tokIdent, start, l.i}, true
		case c >= '0' && c <= '9':
			for l.i < len(s) && (isIdentCont(s[l.i]) || s[l.i] == '.') {
				l.i++
			}
			return planTok{tokNumber, start, l.i}, true
		default:
			l.i++
			return planTok{tokPunct, start, l.i}, true
		}
	}
	return planTok{}, false
}

// scan fills s from sql.
func (s *planScan) scan(sql string) {
	s.shape = fnvOffset
	lx := planLexer{l: lexer{s: sql}}
	inStmt := false
	for {
		t, ok := lx.next()
		if !ok {
			break
		}
		h := (s.shape ^ uint64(t.kind+1)) * fnvPrime
		switch t.kind {
		case tokString:
			s.add(lit{litString, int32(t.pos), int32(t.end)})
		case tokNumber:
			s.add(lit{litNumber, int32(t.pos), int32(t.end)})
		default:
			if t.kind == tokParam {
				s.add(lit{litParam, int32(t.pos), int32(t.end)})
			}
			for i := t.pos; i < t.end; i++ {
				c := sql[i]
				if t.kind == tokIdent && c >= 'A' && c <= 'Z' {
					c += 'a' - 'A'
				}
				h = (h ^ uint64(c)) * fnvPrime
			}
			h = (h ^ 0xff) * fnvPrime
		}
		s.shape = h
		if t.kind == tokPunct && sql[t.pos] == ';' {
			inStmt = false
		} else if !inStmt {
			inStmt = true
			s.stmts++
		}
	}
}

// litIndex returns the index of the literal starting at byte pos.
func (s *planScan) litIndex(pos int) (int, bool) {
	lo, hi := 0, s.n
	for lo < hi {
		m := (lo + hi) / 2
		if int(s.lit(m).pos) < pos {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo < s.n && int(s.lit(lo).pos) == pos {
		return lo, true
	}
	return 0, false
}

// stringLiteral returns the value of a string token: 'x' with doubled
// quotes, E'x' with the common backslash escapes, $tag$x$tag$. It
// allocates only when the value differs from a substring of the text. ok
// is false for escapes it does not decode (the caller plans the text from
// a full parse instead).
func stringLiteral(tok string) (string, bool) {
	switch {
	case len(tok) >= 2 && tok[0] == '\'' && tok[len(tok)-1] == '\'':
		body := tok[1 : len(tok)-1]
		if !strings.Contains(body, "'") {
			return body, true
		}
		return strings.ReplaceAll(body, "''", "'"), true
	case len(tok) >= 3 && (tok[0] == 'e' || tok[0] == 'E') && tok[1] == '\'' && tok[len(tok)-1] == '\'':
		body := tok[2 : len(tok)-1]
		if !strings.ContainsAny(body, `'\`) {
			return body, true
		}
		var b strings.Builder
		for i := 0; i < len(body); i++ {
			c := body[i]
			switch {
			case c == '\'' && i+1 < len(body) && body[i+1] == '\'':
				b.WriteByte('\'')
				i++
			case c == '\\' && i+1 < len(body):
				i++
				switch body[i] {
				case 'n':
					b.WriteByte('\n')
				case 't':
					b.WriteByte('\t')
				case 'r':
					b.WriteByte('\r')
				case 'b':
					b.WriteByte('\b')
				case 'f':
					b.WriteByte('\f')
				case '\\', '\'', '"':
					b.WriteByte(body[i])
				default:
					return "", false // octal, hex, unicode: left to the parser
				}
			default:
				b.WriteByte(c)
			}
		}
		return b.String(), true
	case len(tok) >= 2 && tok[0] == '$':
		j := strings.IndexByte(tok[1:], '$')
		if j < 0 {
			return "", false
		}
		tag := tok[:j+2]
		if len(tok) < 2*len(tag) || !strings.HasSuffix(tok, tag) {
			return "", false
		}
		return tok[len(tag) : len(tok)-len(tag)], true
	}
	return "", false
}

// parseInt parses a decimal integer with optional sign and surrounding
// spaces (int8in accepts them), without allocating.
func parseInt[T string | []byte](s T) (int64, bool) {
	for len(s) > 0 && isSpace(s[0]) {
		s = s[1:]
	}
	for len(s) > 0 && isSpace(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	neg := false
	if len(s) > 0 && (s[0] == '-' || s[0] == '+') {
		neg = s[0] == '-'
		s = s[1:]
	}
	if len(s) == 0 || len(s) > 19 {
		return 0, false
	}
	var v uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	if neg {
		if v > 1<<63 {
			return 0, false
		}
		return int64(-v), true
	}
	if v > 1<<63-1 {
		return 0, false
	}
	return int64(v), true
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

// hashText hashes the text form of a key of type t; ok is false when the
// text is not a valid value of t. It does not allocate.
func hashText[T string | []byte](t shardmap.KeyType, s T) (int64, bool) {
	switch t {
	case shardmap.KeyInt:
		v, ok := parseInt(s)
		if !ok {
			return 0, false
		}
		return shardmap.HashInt64(v), true
	case shardmap.KeyText:
		return shardmap.HashText(noCopyString(s)), true
	case shardmap.KeyUUID:
		u, ok := shardmap.ParseUUIDText(s)
		if !ok {
			return 0, false
		}
		return shardmap.HashUUID(u), true
	}
	return 0, false
}

// noCopyString views s as a string for a call that does not keep it.
func noCopyString[T string | []byte](s T) string {
	switch v := any(s).(type) {
	case string:
		return v
	case []byte:
		if len(v) == 0 {
			return ""
		}
		return unsafe.String(&v[0], len(v))
	}
	return ""
}

// hashBinary hashes a binary-format parameter for a key of type t. The
// parameter's type OID says how its bytes are laid out (0: by length).
// HashBinary hashes a shard key value in binary format as PostgreSQL
// would, for a key of family t: oid is the value's type (0: any width of
// integer, told by its length). ok is false for a value that cannot be one.
// The proxy uses it for COPY's binary rows.
func HashBinary(t shardmap.KeyType, oid uint32, b []byte) (int64, bool) { return hashBinary(t, oid, b) }

func hashBinary(t shardmap.KeyType, oid uint32, b []byte) (int64, bool) {
	switch t {
	case shardmap.KeyInt:
		var v int64
		switch {
		case len(b) == 8 && (oid == 0 || oid == oidInt8):
			v = int64(binary.BigEndian.Uint64(b))
		case len(b) == 4 && (oid == 0 || oid == oidInt4):
			v = int64(int32(binary.BigEndian.Uint32(b)))
		case len(b) == 2 && (oid == 0 || oid == oidInt2):
			v = int64(int16(binary.BigEndian.Uint16(b)))
		default:
			return 0, false
		}
		return shardmap.HashInt64(v), true
	case shardmap.KeyText:
		// text, varchar, name, unknown: the binary form is the bytes.
		return hashTextBytes(b), true
	case shardmap.KeyUUID:
		if len(b) != 16 {
			return 0, false
		}
		return shardmap.HashUUID([16]byte(b)), true
	}
	return 0, false
}

// hashTextBytes is shardmap.HashText over bytes, without copying them.
func hashTextBytes(b []byte) int64 { return shardmap.HashText(noCopyString(b)) }

// Params are the values of a Bind message and the types of the Parse it
// binds.
type Params struct {
	// Values are the parameter values; nil is NULL.
	Values [][]byte
	// Formats are Bind's parameter format codes (0 text, 1 binary): none
	// means all text, one applies to all.
	Formats []int16
	// Types are Parse's parameter type OIDs (0 or missing: unspecified).
	Types []uint32
}

func (p *Params) format(i int) int16 {
	switch len(p.Formats) {
	case 0:
		return 0
	case 1:
		return p.Formats[0]
	}
	if i < len(p.Formats) {
		return p.Formats[i]
	}
	return 0
}

func (p *Params) oid(i int) uint32 {
	if i < len(p.Types) {
		return p.Types[i]
	}
	return 0
}

// paramHash hashes parameter i (0-based) as a key of type t. null is set
// for a NULL value; ok is false for a missing or undecodable value.
func (p *Params) paramHash(t shardmap.KeyType, i int) (h int64, null, ok bool) {
	if p == nil || i < 0 || i >= len(p.Values) {
		return 0, false, false
	}
	v := p.Values[i]
	if v == nil {
		return 0, true, true
	}
	if p.format(i) == 1 {
		h, ok = hashBinary(t, p.oid(i), v)
		return h, false, ok
	}
	h, ok = hashText(t, v)
	return h, false, ok
}

// paramArray calls f with the hash of each non-NULL element of array
// parameter i (for key = ANY($i)); ok is false when it cannot be decoded.
func (p *Params) paramArray(t shardmap.KeyType, i int, f func(int64)) bool {
	if p == nil || i < 0 || i >= len(p.Values) {
		return false
	}
	v := p.Values[i]
	if v == nil {
		return true // = ANY(NULL) matches nothing
	}
	if p.format(i) == 1 {
		return binaryArray(t, v, f)
	}
	return textArray(t, noCopyString(v), f)
}

// binaryArray decodes array_send's format: ndim, hasnull, element OID,
// ndim × (length, lower bound), then each element as length + bytes
// (-1: NULL).
func binaryArray(t shardmap.KeyType, b []byte, f func(int64)) bool {
	if len(b) < 12 {
		return false
	}
	ndim := int(int32(binary.BigEndian.Uint32(b)))
	elem := binary.BigEndian.Uint32(b[8:])
	b = b[12:]
	if ndim == 0 {
		return true
	}
	if ndim < 0 || ndim > 6 || len(b) < 8*ndim {
		return false
	}
	n := 1
	for d := 0; d < ndim; d++ {
		n *= int(int32(binary.BigEndian.Uint32(b[8*d:])))
	}
	b = b[8*ndim:]
	for k := 0; k < n; k++ {
		if len(b) < 4 {
			return false
		}
		l := int(int32(binary.BigEndian.Uint32(b)))
		b = b[4:]
		if l < 0 {
			continue
		}
		if len(b) < l {
			return false
		}
		h, ok := hashBinary(t, elem, b[:l])
		if !ok {
			return false
		}
		f(h)
		b = b[l:]
	}
	return true
}

// textArray decodes a one-dimensional array literal {a,b,"c d",NULL}.
func textArray(t shardmap.KeyType, s string, f func(int64)) bool {
	s = strings.TrimSpace(s)
	if len(s) < 2 || s[0] != '{' || s[len(s)-1] != '}' {
		return false
	}
	s = s[1 : len(s)-1]
	for len(s) > 0 {
		for len(s) > 0 && isSpace(s[0]) {
			s = s[1:]
		}
		var elem string
		quoted := false
		if len(s) > 0 && s[0] == '"' {
			quoted = true
			var b strings.Builder
			i := 1
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				b.WriteByte(s[i])
			}
			if i >= len(s) {
				return false
			}
			elem = b.String()
			s = s[i+1:]
			for len(s) > 0 && isSpace(s[0]) {
				s = s[1:]
			}
		} else {
			j := strings.IndexByte(s, ',')
			if j < 0 {
				j = len(s)
			}
			elem = strings.TrimSpace(s[:j])
			s = s[j:]
			if strings.ContainsAny(elem, "{}\"\\") {
				return false // nested or escaped: not a key array
			}
		}
		if !quoted && strings.EqualFold(elem, "null") {
			// NULL matches nothing
		} else {
			h, ok := hashText(t, elem)
			if !ok {
				return false
			}
			f(h)
		}
		if len(s) > 0 {
			if s[0] != ',' {
				return false
			}
			s = s[1:]
		}
	}
	return true
}
