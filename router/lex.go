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
	kind     tokKind
	word     string // lower-cased identifier, or the punctuation text
	pos, end int    // byte offsets in the source
}

// maxTokens bounds the tokens kept per statement: the effects scanner only
// needs the leading words and a few flags, so a long statement costs no
// memory. Identifiers beyond the limit are still looked at for flags.
const maxTokens = 64

type lexer struct {
	s    string
	i    int
	toks []token
}

// statement returns the tokens of the next statement (up to ';') and whether
// more text follows.
func (l *lexer) statement() ([]token, bool) {
	l.toks = l.toks[:0]
	s := l.s
	for l.i < len(s) {
		c := s[l.i]
		switch {
		case c == ';':
			l.i++
			return l.toks, true
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
			l.emit(tokIdent, strings.ToLower(s[start:l.i]), start)
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
	return l.toks, false
}

func (l *lexer) emit(k tokKind, word string, start int) {
	if len(l.toks) >= maxTokens {
		if k == tokIdent {
			// Keep flag words visible: overwrite the last slot.
			l.toks[len(l.toks)-1] = token{kind: k, word: word, pos: start, end: l.i}
		}
		return
	}
	l.toks = append(l.toks, token{kind: k, word: word, pos: start, end: l.i})
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
