package router

import (
	"slices"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// FreeDatabases returns the databases that the statements in sql need free
// of other connections: PostgreSQL refuses them with SQLSTATE 55006
// ("database ... is being accessed by other users") while any other
// session is connected there, so a pooler must first close its idle
// connections to them. They are:
//
//   - DROP DATABASE [IF EXISTS] x [WITH (FORCE)]: x (with FORCE PostgreSQL
//     terminates the others itself; closing idle ones first is politer);
//   - CREATE DATABASE y [TEMPLATE x]: the template x, template1 when none
//     is named (TEMPLATE DEFAULT is template1 too);
//   - ALTER DATABASE x RENAME TO y: x;
//   - ALTER DATABASE x SET TABLESPACE t: x.
//
// Names are as PostgreSQL resolves them (unquoted ones folded to lower
// case), each once, in order of appearance. Text that does not parse
// yields nothing: the backend reports the error. It runs the real parser
// only when MentionsDatabase(sql), so it is cheap for everyday queries.
func FreeDatabases(sql string) []string {
	if !MentionsDatabase(sql) {
		return nil
	}
	tree, err := pg_query.Parse(sql)
	if err != nil {
		return nil
	}
	var out []string
	add := func(db string) {
		if db != "" && !slices.Contains(out, db) {
			out = append(out, db)
		}
	}
	for _, raw := range tree.GetStmts() {
		n := raw.GetStmt()
		switch {
		case n.GetDropdbStmt() != nil:
			add(n.GetDropdbStmt().GetDbname())
		case n.GetCreatedbStmt() != nil:
			tmpl := "template1"
			for _, o := range n.GetCreatedbStmt().GetOptions() {
				if d := o.GetDefElem(); d != nil && strings.EqualFold(d.GetDefname(), "template") {
					if v := defString(d); v != "" {
						tmpl = v
					}
				}
			}
			add(tmpl)
		case n.GetRenameStmt() != nil:
			if r := n.GetRenameStmt(); r.GetRenameType() == pg_query.ObjectType_OBJECT_DATABASE {
				add(r.GetSubname())
			}
		case n.GetAlterDatabaseStmt() != nil:
			a := n.GetAlterDatabaseStmt()
			for _, o := range a.GetOptions() {
				if d := o.GetDefElem(); d != nil && strings.EqualFold(d.GetDefname(), "tablespace") {
					add(a.GetDbname())
				}
			}
		}
	}
	return out
}

// defString is the value of an option given as a name or a string
// (TEMPLATE x, TEMPLATE "X", TEMPLATE 'x'); "" for DEFAULT or anything else.
func defString(d *pg_query.DefElem) string {
	a := d.GetArg()
	if a == nil {
		return ""
	}
	if s := a.GetString_(); s != nil {
		return s.GetSval()
	}
	if tn := a.GetTypeName(); tn != nil && len(tn.GetNames()) == 1 {
		return tn.GetNames()[0].GetString_().GetSval()
	}
	return ""
}

// MentionsDatabase reports whether sql contains the word DATABASE (any
// case, not part of a longer identifier such as pg_database): the cheap
// test, one pass without allocating, that a text may hold a statement
// FreeDatabases names.
func MentionsDatabase(sql string) bool {
	const w = "database"
	for i := 0; i+len(w) <= len(sql); i++ {
		if sql[i]|0x20 != 'd' {
			continue
		}
		if i > 0 && identByte(sql[i-1]) {
			continue
		}
		if i+len(w) < len(sql) && identByte(sql[i+len(w)]) {
			continue
		}
		if strings.EqualFold(sql[i:i+len(w)], w) {
			return true
		}
	}
	return false
}

func identByte(c byte) bool {
	return c == '_' || c == '$' || c >= '0' && c <= '9' || c|0x20 >= 'a' && c|0x20 <= 'z' || c >= 0x80
}
