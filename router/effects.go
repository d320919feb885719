package router

import "strings"

// Effects is what a query text does to its session, as far as the pooler
// cares.
type Effects struct {
	// Pin is set when the session must keep its backend from now on;
	// PinReason says why (for logs).
	Pin       bool
	PinReason string
	// Sets lists session-level SET and RESET statements in order.
	Sets []Set
	// ResetAll is set by RESET ALL and DISCARD ALL: every SET is undone.
	ResetAll bool
	// Discard is set by DISCARD: the backend may have dropped prepared
	// statements and plans.
	Discard bool
	// Statements counts the statements in the text.
	Statements int
	// Shape identifies the text up to its literals, comments and spacing:
	// texts with the same shape classify alike (see Classifier).
	Shape uint64
	// Route is the hint of a leading /* pgshard:primary */ or
	// /* pgshard:replica */ comment.
	Route Route
	// Begin is set when the first statement opens a transaction block
	// (BEGIN, START TRANSACTION); ReadOnly when a statement declares the
	// transaction READ ONLY (BEGIN READ ONLY, SET TRANSACTION READ ONLY).
	Begin, ReadOnly bool
	// TxnControl is set when every statement is transaction control
	// (BEGIN, COMMIT, ROLLBACK, END, ABORT, SAVEPOINT, RELEASE), which
	// writes nothing.
	TxnControl bool
	// AnyTxnControl is set when some statement is transaction control
	// (see Ops for which).
	AnyTxnControl bool
	// Schema is set when a statement starts with CREATE, ALTER, DROP or
	// COMMENT: plans prepared before it may no longer fit.
	Schema bool
	// Truncate is set when a statement starts with TRUNCATE.
	Truncate bool
	// SessionSeq is set when a statement calls currval() or lastval(),
	// which read what the backend's session last drew from a sequence.
	SessionSeq bool
	// Deallocate names the statement of a lone DEALLOCATE [PREPARE] name;
	// DeallocateAll is set by a lone DEALLOCATE [PREPARE] ALL.
	Deallocate    string
	DeallocateAll bool
}

// Route is a routing hint.
type Route uint8

const (
	RouteAuto Route = iota
	RoutePrimary
	RouteReplica
)

func (r Route) String() string {
	switch r {
	case RoutePrimary:
		return "primary"
	case RouteReplica:
		return "replica"
	}
	return "auto"
}

// ParseRoute reads "primary", "replica" or "auto".
func ParseRoute(s string) (Route, bool) {
	switch strings.ToLower(strings.Trim(strings.TrimSpace(s), "'")) {
	case "primary":
		return RoutePrimary, true
	case "replica":
		return RouteReplica, true
	case "auto", "default":
		return RouteAuto, true
	}
	return RouteAuto, false
}

// hint reads a /* pgshard:primary|replica */ comment at the start of sql.
func hint(sql string) Route {
	s := strings.TrimLeft(sql, " \t\r\n")
	if !strings.HasPrefix(s, "/*") {
		return RouteAuto
	}
	end := strings.Index(s[2:], "*/")
	if end < 0 {
		return RouteAuto
	}
	body := strings.TrimSpace(s[2 : 2+end])
	v, ok := strings.CutPrefix(body, "pgshard:")
	if !ok {
		return RouteAuto
	}
	r, _ := ParseRoute(v)
	return r
}

// Set is one session-level SET name TO value, or RESET name.
type Set struct {
	Name  string // lower case
	Value string // the value's SQL text as written; empty for Reset
	Reset bool
}

// Clone returns e with its strings copied, so that it outlives the text
// Inspect scanned.
func (e Effects) Clone() Effects {
	if len(e.Sets) == 0 {
		return e
	}
	sets := make([]Set, len(e.Sets))
	for i, s := range e.Sets {
		sets[i] = Set{Name: strings.Clone(s.Name), Value: strings.Clone(s.Value), Reset: s.Reset}
	}
	e.Sets = sets
	return e
}

// Inspect scans sql and reports its session effects. It never fails: text it
// cannot understand is left for the backend to judge.
func Inspect(sql string) Effects {
	e := Effects{Route: hint(sql), TxnControl: true}
	lx := lexer{s: sql, shape: fnvOffset}
	for {
		toks, more := lx.statement()
		if len(toks) > 0 {
			e.Statements++
			e.add(sql, toks)
		}
		if !more {
			e.Shape = lx.shape
			if e.Statements == 0 {
				e.TxnControl = false
			}
			return e
		}
	}
}

// localSetConfig reports whether toks, the tokens after set_config, are
// an argument list whose last argument is the literal true: a setting
// local to the transaction, which needs no pinning.
func localSetConfig(toks []token) bool {
	depth := 0
	for i, t := range toks {
		if t.kind != tokPunct {
			if depth == 0 {
				return false
			}
			continue
		}
		for _, c := range t.word {
			switch c {
			case '(':
				depth++
			case ')':
				depth--
				if depth == 0 {
					return i > 0 && toks[i-1].kind == tokIdent && keywordIs(toks[i-1].word, "true") && strings.HasPrefix(t.word, ")")
				}
			}
		}
	}
	return false
}

func (e *Effects) pin(why string) {
	if !e.Pin {
		e.Pin, e.PinReason = true, why
	}
}

// add records the effects of one statement.
func (e *Effects) add(sql string, toks []token) {
	for i, t := range toks {
		if t.kind != tokIdent {
			continue
		}
		switch w := t.word; {
		case keywordIs(w, "set_config") && !localSetConfig(toks[i+1:]):
			e.pin("set_config() of a session setting")
		case w == "temp" || w == "temporary":
			e.pin("temporary table")
		case len(w) >= 7 && keywordIs(w[:7], "pg_temp"):
			e.pin("temporary object") // pg_temp.name, pg_temp_3.name
		case w == "hold":
			e.pin("WITH HOLD cursor")
		case containsFold(w, "advisory") && !containsFold(w, "xact") && !containsFold(w, "unlock"):
			e.pin("session advisory lock")
		case keywordIs(w, "currval") || keywordIs(w, "lastval"):
			e.SessionSeq = true
		}
	}
	first := toks[0]
	if first.kind != tokIdent {
		e.TxnControl = false
		return
	}
	switch first.word {
	case "begin", "start", "commit", "rollback", "end", "abort", "savepoint", "release":
		if len(toks) > 1 && toks[1].word == "prepared" {
			e.TxnControl = false // COMMIT/ROLLBACK PREPARED finish a two-phase transaction
		} else {
			e.AnyTxnControl = true
		}
	default:
		e.TxnControl = false
	}
	if keywordIs(first.word, "create") || keywordIs(first.word, "alter") || keywordIs(first.word, "drop") || keywordIs(first.word, "comment") {
		e.Schema = true
	}
	if keywordIs(first.word, "truncate") {
		e.Truncate = true
	}
	if readOnlyTxn(toks) {
		e.ReadOnly = true
	}
	switch first.word {
	case "begin", "start":
		if e.Statements == 1 {
			e.Begin = true
		}
	case "listen":
		e.pin("LISTEN")
	case "prepare":
		if len(toks) > 1 && toks[1].word == "transaction" {
			return
		}
		e.pin("SQL PREPARE")
	case "deallocate":
		if e.Statements == 1 {
			rest := toks[1:]
			if len(rest) > 0 && rest[0].word == "prepare" {
				rest = rest[1:]
			}
			if len(rest) == 1 && rest[0].kind == tokIdent && rest[0].word == "all" {
				e.DeallocateAll = true
			} else if len(rest) == 1 && (rest[0].kind == tokIdent || rest[0].kind == tokQIdent) {
				e.Deallocate = savepointName(sql, rest[0])
			}
		}
		e.pin("DEALLOCATE")
	case "load":
		e.pin("LOAD")
	case "discard":
		e.Discard = true
		if len(toks) > 1 && toks[1].word == "all" {
			e.ResetAll = true
			e.Sets = nil
		}
	case "set":
		e.addSet(sql, toks[1:])
	case "reset":
		if len(toks) < 2 {
			return
		}
		if toks[1].word == "all" && len(toks) == 2 {
			e.ResetAll = true
			e.Sets = nil
			return
		}
		name, rest, ok := settingName(toks[1:])
		if !ok || len(rest) != 0 {
			e.pin("RESET of an unusual setting")
			return
		}
		if name == "role" || name == "session_authorization" {
			e.pin("RESET ROLE")
			return
		}
		e.Sets = append(e.Sets, Set{Name: name, Reset: true})
	}
}

func (e *Effects) addSet(sql string, toks []token) {
	if len(toks) == 0 {
		return
	}
	switch toks[0].word {
	case "local", "transaction", "constraints":
		return // transaction-scoped: gone at COMMIT
	case "session":
		toks = toks[1:]
		if len(toks) == 0 {
			return
		}
		if toks[0].word == "characteristics" || toks[0].word == "authorization" {
			e.pin("SET SESSION " + strings.ToUpper(toks[0].word))
			return
		}
	}
	if len(toks) == 0 {
		return
	}
	switch toks[0].word {
	case "role", "names", "schema", "xml":
		e.pin("SET " + strings.ToUpper(toks[0].word))
		return
	case "time":
		if len(toks) > 2 && toks[1].word == "zone" {
			v := strings.TrimSpace(sql[toks[2].pos:toks[len(toks)-1].end])
			e.Sets = append(e.Sets, Set{Name: "timezone", Value: v})
			return
		}
	}
	name, rest, ok := settingName(toks)
	if !ok || len(rest) < 2 || !(rest[0].word == "to" || rest[0].kind == tokPunct && rest[0].word == "=") {
		e.pin("SET that pgshard cannot replay")
		return
	}
	v := strings.TrimSpace(sql[rest[1].pos:rest[len(rest)-1].end])
	if strings.EqualFold(v, "default") {
		e.Sets = append(e.Sets, Set{Name: name, Reset: true})
		return
	}
	e.Sets = append(e.Sets, Set{Name: name, Value: v})
}

// settingName reads a possibly dotted setting name (ident [. ident]).
func settingName(toks []token) (string, []token, bool) {
	if len(toks) == 0 || toks[0].kind != tokIdent {
		return "", toks, false
	}
	name := strings.ToLower(toks[0].word)
	toks = toks[1:]
	for len(toks) >= 2 && toks[0].kind == tokPunct && toks[0].word == "." && toks[1].kind == tokIdent {
		name += "." + strings.ToLower(toks[1].word)
		toks = toks[2:]
	}
	return name, toks, true
}

// containsFold reports whether s contains the lower-case ASCII word sub,
// ignoring ASCII case in s.
func containsFold(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		j := 0
		for ; j < len(sub); j++ {
			c := s[i+j]
			if c >= 'A' && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != sub[j] {
				break
			}
		}
		if j == len(sub) {
			return true
		}
	}
	return false
}

// readOnlyTxn reports BEGIN/START TRANSACTION/SET TRANSACTION ... READ ONLY.
func readOnlyTxn(toks []token) bool {
	w := toks[0].word
	if w != "begin" && w != "start" && w != "set" {
		return false
	}
	if w == "set" && (len(toks) < 2 || toks[1].word != "transaction") {
		return false
	}
	for i := 1; i+1 < len(toks); i++ {
		if toks[i].kind == tokIdent && keywordIs(toks[i].word, "read") && keywordIs(toks[i+1].word, "only") {
			return true
		}
	}
	return false
}

func keywordIs(w, kw string) bool { return len(w) == len(kw) && containsFold(w, kw) }

// Planned reports whether sql's first statement is one PostgreSQL plans
// (SELECT, WITH, VALUES, TABLE, INSERT, UPDATE, DELETE, possibly in
// parentheses), as opposed to a utility statement (FETCH, SHOW, ...):
// only a planned statement's result type is fixed when it is prepared.
func Planned(sql string) bool {
	lx := lexer{s: sql, shape: fnvOffset}
	toks, _ := lx.statement()
	for _, t := range toks {
		if t.kind == tokPunct && t.word == "(" {
			continue
		}
		if t.kind != tokIdent {
			return false
		}
		for _, kw := range [...]string{"select", "with", "values", "table", "insert", "update", "delete"} {
			if keywordIs(t.word, kw) {
				return true
			}
		}
		return false
	}
	return false
}
