package router

import "strings"

type tokKind uint8

const (
	tokIdent  tokKind = iota // unquoted identifier or keyword, lower-cased
	tokQIdent                // "quoted identifier"
	tokString                // 'string', E'string', $$dollar$$
	tokNumber
	tokPunct // operators and punctuation, one token per run
	tokParam // $1
)

type token struct {
	kind tokKind
	// word is an identifier: lower-cased when it is one of the keywords
	// the scanner looks for, else as written; or the punctuation text.
	word     string
	pos, end int // byte offsets in the source
}

// maxTokens bounds the tokens kept per statement: the effects scanner only
// needs the leading words and a few flags, so a long statement costs no
// memory. Identifiers beyond the limit are still looked at for flags.
const maxTokens = 64

type lexer struct {
	s     string
	i     int
	n     int    // tokens of the current statement in buf
	shape uint64 // FNV-1a over every token, literals as placeholders
	buf   [maxTokens]token
}

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// mix adds a token to the shape hash: its kind, then its text unless it is
// a literal or a parameter (whose values do not change what a statement is).
func (l *lexer) mix(k tokKind, text string) {
	h := l.shape
	h = (h ^ uint64(k+1)) * fnvPrime
	switch k {
	case tokString, tokNumber, tokParam:
	default:
		for i := 0; i < len(text); i++ {
			h = (h ^ uint64(text[i])) * fnvPrime
		}
		h = (h ^ 0xff) * fnvPrime
	}
	l.shape = h
}

// statement returns the tokens of the next statement (up to ';') and whether
// more text follows.
func (l *lexer) statement() ([]token, bool) {
	l.n = 0
	s := l.s
	for l.i < len(s) {
		c := s[l.i]
		switch {
		case c == ';':
			l.i++
			l.mix(tokPunct, ";")
			return l.buf[:l.n], true
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			l.i++
		case c == '-' && l.i+1 < len(s) && s[l.i+1] == '-':
			for l.i < len(s) && s[l.i] != '\n' {
				l.i++
			}
		case c == '/' && l.i+1 < len(s) && s[l.i+1] == '*':
			l.blockComment()
		case c == '\'':
			start := l.i
			l.quoted('\'', false)
			l.emit(tokString, "", start)
		case (c == 'e' || c == 'E') && l.i+1 < len(s) && s[l.i+1] == '\'':
			start := l.i
			l.i++
			l.quoted('\'', true)
			l.emit(tokString, "", start)
		case c == '"':
			start := l.i
			l.quoted('"', false)
			l.emit(tokQIdent, "", start)
		case c == '$':
			start := l.i
			if l.dollar() {
				l.emit(tokString, "", start)
			} else {
				l.i++
				for l.i < len(s) && s[l.i] >= '0' && s[l.i] <= '9' {
					l.i++
				}
				l.emit(tokParam, "", start)
			}
		case isIdentStart(c):
			start := l.i
			for l.i < len(s) && isIdentCont(s[l.i]) {
				l.i++
			}
			l.emit(tokIdent, keyword(s[start:l.i]), start)
		case c >= '0' && c <= '9':
			start := l.i
			for l.i < len(s) && (isIdentCont(s[l.i]) || s[l.i] == '.') {
				l.i++
			}
			l.emit(tokNumber, "", start)
		default:
			start := l.i
			l.i++
			l.emit(tokPunct, s[start:l.i], start)
		}
	}
	return l.buf[:l.n], false
}

func (l *lexer) emit(k tokKind, word string, start int) {
	if k == tokQIdent {
		l.mix(k, l.s[start:l.i])
	} else {
		l.mix(k, word)
	}
	if l.n >= maxTokens {
		if k == tokIdent {
			// Keep flag words visible: overwrite the last slot.
			l.buf[maxTokens-1] = token{kind: k, word: word, pos: start, end: l.i}
		}
		return
	}
	l.buf[l.n] = token{kind: k, word: word, pos: start, end: l.i}
	l.n++
}

func isIdentStart(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
}

func isIdentCont(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' || c == '$' }

// blockComment skips a /* */ comment; they nest in PostgreSQL.
func (l *lexer) blockComment() {
	depth := 0
	s := l.s
	for l.i < len(s) {
		if s[l.i] == '/' && l.i+1 < len(s) && s[l.i+1] == '*' {
			depth++
			l.i += 2
			continue
		}
		if s[l.i] == '*' && l.i+1 < len(s) && s[l.i+1] == '/' {
			depth--
			l.i += 2
			if depth == 0 {
				return
			}
			continue
		}
		l.i++
	}
}

// quoted skips a quoted run starting at the opening quote q; a doubled
// quote is an escaped one; backslash escapes apply in E” strings.
func (l *lexer) quoted(q byte, backslash bool) {
	s := l.s
	l.i++
	for l.i < len(s) {
		c := s[l.i]
		if backslash && c == '\\' {
			l.i += 2
			continue
		}
		l.i++
		if c == q {
			if l.i < len(s) && s[l.i] == q {
				l.i++
				continue
			}
			return
		}
	}
	if l.i > len(s) {
		l.i = len(s)
	}
}

// dollar skips a dollar-quoted string ($tag$...$tag$) if one starts here.
func (l *lexer) dollar() bool {
	s := l.s
	j := l.i + 1
	for j < len(s) && s[j] != '$' {
		if !(isIdentCont(s[j]) && s[j] != '$') || (j == l.i+1 && s[j] >= '0' && s[j] <= '9') {
			return false
		}
		j++
	}
	if j >= len(s) {
		return false
	}
	tag := s[l.i : j+1]
	k := strings.Index(s[j+1:], tag)
	if k < 0 {
		l.i = len(s)
		return true
	}
	l.i = j + 1 + k + len(tag)
	return true
}

// keywordList are the words the effects scanner compares.
var keywordList = []string{"set", "reset", "local", "session", "transaction", "constraints",
	"characteristics", "authorization", "role", "names", "schema", "xml", "time", "zone", "to",
	"all", "default", "listen", "prepare", "deallocate", "load", "discard", "temp", "temporary",
	"hold", "read", "only", "begin", "start", "commit", "rollback", "end", "abort",
	"savepoint", "release", "prepared"}

var keywordIntern = func() map[string]string {
	m := map[string]string{}
	for _, w := range keywordList {
		m[w] = w
	}
	return m
}()

// keyword returns the lower-case form of w when it is in keywordList,
// else w itself. It does not allocate.
func keyword(w string) string {
	if len(w) < 2 || len(w) > 15 {
		return w
	}
	var b [15]byte
	for i := 0; i < len(w); i++ {
		c := w[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		b[i] = c
	}
	if k, ok := keywordIntern[string(b[:len(w)])]; ok {
		return k
	}
	return w
}
