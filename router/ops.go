package router

import "strings"

// OpKind says what one statement does to the session's settings or to its
// transaction, as the pooler's settings bookkeeping needs it.
type OpKind uint8

const (
	OpSet        OpKind = iota + 1 // a session-level SET or RESET (Op.Set)
	OpResetAll                     // RESET ALL, DISCARD ALL
	OpBegin                        // BEGIN, START TRANSACTION
	OpCommit                       // COMMIT, END, PREPARE TRANSACTION
	OpRollback                     // ROLLBACK, ABORT
	OpSavepoint                    // SAVEPOINT name
	OpRelease                      // RELEASE [SAVEPOINT] name
	OpRollbackTo                   // ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] name
)

// Op is one such statement: Stmt is its index among the text's statements
// (so a caller told that the first k statements ran applies only those).
type Op struct {
	Stmt int
	Kind OpKind
	Name string // the savepoint, lower-cased unless it was quoted
	Set  Set
}

// Ops lists, in order, the statements of sql that set or reset session
// settings or delimit transactions and savepoints. Other statements are
// left out. It costs a second scan of the text, so callers use it only when
// Inspect reported settings or transaction control. The strings in the
// result are copies: they outlive sql.
func Ops(sql string) []Op {
	lx := lexer{s: sql, shape: fnvOffset}
	var ops []Op
	for n := 0; ; {
		toks, more := lx.statement()
		if len(toks) > 0 {
			ops = appendOps(ops, n, sql, toks)
			n++
		}
		if !more {
			return ops
		}
	}
}

func appendOps(ops []Op, n int, sql string, toks []token) []Op {
	if toks[0].kind != tokIdent {
		return ops
	}
	op := Op{Stmt: n}
	switch toks[0].word {
	case "begin", "start":
		op.Kind = OpBegin
	case "commit", "end":
		if len(toks) > 1 && toks[1].word == "prepared" {
			return ops
		}
		op.Kind = OpCommit
	case "prepare":
		if len(toks) < 2 || toks[1].word != "transaction" {
			return ops
		}
		op.Kind = OpCommit // the transaction leaves the session as if committed
	case "rollback", "abort":
		if len(toks) > 1 && toks[1].word == "prepared" {
			return ops
		}
		op.Kind = OpRollback
		for i := 1; i < len(toks); i++ {
			if toks[i].word == "to" {
				op.Kind = OpRollbackTo
				op.Name = savepointName(sql, toks[len(toks)-1])
				break
			}
		}
	case "savepoint":
		if len(toks) < 2 {
			return ops
		}
		op.Kind, op.Name = OpSavepoint, savepointName(sql, toks[1])
	case "release":
		if len(toks) < 2 {
			return ops
		}
		op.Kind, op.Name = OpRelease, savepointName(sql, toks[len(toks)-1])
	case "set", "reset", "discard":
		var e Effects
		e.add(sql, toks)
		if e.ResetAll {
			ops = append(ops, Op{Stmt: n, Kind: OpResetAll})
		}
		for _, s := range e.Clone().Sets {
			ops = append(ops, Op{Stmt: n, Kind: OpSet, Set: s})
		}
		return ops
	default:
		return ops
	}
	return append(ops, op)
}

func savepointName(sql string, t token) string {
	text := sql[t.pos:t.end]
	if t.kind == tokQIdent && len(text) >= 2 {
		return strings.ReplaceAll(text[1:len(text)-1], `""`, `"`) // always a copy
	}
	return strings.ToLower(strings.Clone(text))
}
