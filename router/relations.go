package router

import (
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Relation is a table, view or sequence a statement names.
type Relation struct {
	Schema string // "" when not qualified
	Name   string
	// Temp: created here as TEMP/TEMPORARY (or in pg_temp).
	Temp bool
}

// Relations lists every relation sql names: in its FROM lists and
// targets, and in DDL (CREATE, DROP, ALTER, TRUNCATE, CREATE INDEX,
// VACUUM, …); ok is false when sql does not parse. The proxy uses it to
// keep statements on a session's temporary tables on the session's own
// backend (see the proxy's tempOnly).
func Relations(sql string) (rels []Relation, ok bool) {
	tree, err := pg_query.Parse(sql)
	if err != nil {
		return nil, false
	}
	for _, raw := range tree.Stmts {
		rels = relationsIn(raw.Stmt.ProtoReflect(), rels)
	}
	return rels, true
}

func relationsIn(m protoreflect.Message, rels []Relation) []Relation {
	switch v := m.Interface().(type) {
	case *pg_query.RangeVar:
		return append(rels, Relation{Schema: v.Schemaname, Name: v.Relname, Temp: v.Relpersistence == "t"})
	case *pg_query.DropStmt:
		// DROP names its objects as lists of names, not range variables.
		for _, o := range v.Objects {
			l := o.GetList()
			if l == nil {
				continue
			}
			var parts []string
			for _, it := range l.Items {
				parts = append(parts, it.GetString_().GetSval())
			}
			switch len(parts) {
			case 1:
				rels = append(rels, Relation{Name: parts[0]})
			case 2:
				rels = append(rels, Relation{Schema: parts[0], Name: parts[1]})
			default:
				rels = append(rels, Relation{Schema: "?", Name: "?"}) // database-qualified: never a session's own
			}
		}
		return rels
	}
	children(m, func(c protoreflect.Message) bool {
		rels = relationsIn(c, rels)
		return true
	})
	return rels
}

// anyNode reports whether f finds a match in n's tree: f tells, for each
// message, whether it matches and whether to look below it.
func anyNode(n *pg_query.Node, f func(m protoreflect.Message) (match, descend bool)) bool {
	found := false
	var visit func(m protoreflect.Message) bool
	visit = func(m protoreflect.Message) bool {
		match, descend := f(m)
		if match {
			found = true
			return false
		}
		return !descend || children(m, visit)
	}
	visit(n.ProtoReflect())
	return found
}

// children calls f on each message-valued field (and element of a list
// of messages) of m, in order, until f returns false; it reports whether
// every call returned true.
func children(m protoreflect.Message, f func(protoreflect.Message) bool) bool {
	ok := true
	m.Range(func(fd protoreflect.FieldDescriptor, val protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind {
			return true
		}
		if fd.IsList() {
			l := val.List()
			for i := 0; i < l.Len() && ok; i++ {
				ok = f(l.Get(i).Message())
			}
		} else if !fd.IsMap() {
			ok = f(val.Message())
		}
		return ok
	})
	return ok
}
