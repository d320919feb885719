package router

import (
	"fmt"
	"strings"
	"sync"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// DefaultWriteFunctions are functions whose call makes a statement a write:
// they change data or state, or need a transaction ID, and fail on a
// standby. Names match the last part of a (possibly qualified) name;
// a name ending in "*" matches by prefix.
var DefaultWriteFunctions = []string{
	"nextval", "setval", "set_config", "pg_notify", "txid_current", "pg_current_xact_id",
	"pg_advisory_*", "pg_try_advisory_*", "lo_*", "pg_switch_wal", "pg_create_restore_point",
	"pg_logical_emit_message", "pg_create_*_replication_slot", "pg_drop_replication_slot",
	"pg_replication_origin_*", "pg_stat_reset*", "pg_terminate_backend", "pg_cancel_backend",
	"pg_reload_conf", "pg_rotate_logfile", "pg_import_system_collations", "dblink_exec",
}

// ClassifierConfig configures a Classifier.
type ClassifierConfig struct {
	// CacheSize bounds the decisions kept (default 10000).
	CacheSize int
	// WriteFunctions extend DefaultWriteFunctions.
	WriteFunctions []string
}

// Classifier decides whether a query text is a read that a replica may
// answer. A text is a read only when PostgreSQL's parser proves it (see
// isRead). Decisions are cached by the text's shape (its tokens with
// literals replaced by placeholders), so texts that differ only in their
// constants are parsed once.
type Classifier struct {
	exact  map[string]bool
	prefix []string
	cache  *lru
}

// NewClassifier returns a Classifier.
func NewClassifier(cfg ClassifierConfig) *Classifier {
	c := &Classifier{exact: map[string]bool{}}
	for _, f := range append(append([]string(nil), DefaultWriteFunctions...), cfg.WriteFunctions...) {
		f = strings.ToLower(strings.TrimSpace(f))
		switch {
		case f == "":
		case strings.Contains(f, "*"):
			c.prefix = append(c.prefix, f)
		default:
			c.exact[f] = true
		}
	}
	size := cfg.CacheSize
	if size <= 0 {
		size = 10000
	}
	c.cache = newLRU(size)
	return c
}

// IsRead reports whether sql is a read; key is Shape(sql) (computed by the
// caller's scan). It parses sql only when the shape is not cached.
func (c *Classifier) IsRead(sql string, key uint64) bool {
	if v, ok := c.cache.get(key); ok {
		return v
	}
	read, _ := c.Explain(sql)
	c.cache.put(key, read)
	return read
}

// Explain classifies sql without the cache and says why it is not a read.
func (c *Classifier) Explain(sql string) (bool, string) {
	tree, err := pg_query.Parse(sql)
	if err != nil {
		return false, "does not parse: the primary reports the error"
	}
	if len(tree.Stmts) == 0 {
		return false, "empty"
	}
	for _, raw := range tree.Stmts {
		if ok, why := c.isRead(raw.Stmt); !ok {
			return false, why
		}
	}
	return true, ""
}

// CacheLen reports how many decisions are cached.
func (c *Classifier) CacheLen() int { return c.cache.len() }

// isRead classifies one statement.
func (c *Classifier) isRead(n *pg_query.Node) (bool, string) {
	switch s := n.GetNode().(type) {
	case *pg_query.Node_SelectStmt:
		return c.readTree(s.SelectStmt.ProtoReflect())
	case *pg_query.Node_VariableShowStmt:
		return true, ""
	case *pg_query.Node_ExplainStmt:
		for _, o := range s.ExplainStmt.Options {
			if d := o.GetDefElem(); d != nil && d.Defname == "analyze" {
				if d.Arg == nil || !isFalse(d.Arg) {
					if ok, why := c.isRead(s.ExplainStmt.Query); !ok {
						return false, "EXPLAIN ANALYZE runs a write: " + why
					}
				}
			}
		}
		return true, ""
	default:
		return false, fmt.Sprintf("%T is not a read", s)
	}
}

func isFalse(n *pg_query.Node) bool {
	switch v := n.GetNode().(type) {
	case *pg_query.Node_Boolean:
		return !v.Boolean.Boolval
	case *pg_query.Node_String_:
		s := strings.ToLower(v.String_.Sval)
		return s == "false" || s == "off" || s == "0" || s == "no"
	case *pg_query.Node_Integer:
		return v.Integer.Ival == 0
	}
	return false
}

// readTree walks a SELECT's whole tree: a locking clause, INTO, a
// data-modifying statement (in a CTE) or a call to a write function
// anywhere makes it a write.
func (c *Classifier) readTree(m protoreflect.Message) (bool, string) {
	switch v := m.Interface().(type) {
	case *pg_query.SelectStmt:
		if len(v.LockingClause) > 0 {
			return false, "SELECT with a locking clause (FOR UPDATE/SHARE)"
		}
		if v.IntoClause != nil {
			return false, "SELECT INTO creates a table"
		}
	case *pg_query.InsertStmt, *pg_query.UpdateStmt, *pg_query.DeleteStmt, *pg_query.MergeStmt:
		return false, "data-modifying statement in WITH"
	case *pg_query.FuncCall:
		if name := funcName(v); c.writes(name) {
			return false, "calls " + name + "(), which writes"
		}
	}
	ok, why := true, ""
	children(m, func(child protoreflect.Message) bool {
		ok, why = c.readTree(child)
		return ok
	})
	return ok, why
}

func funcName(f *pg_query.FuncCall) string {
	if len(f.Funcname) == 0 {
		return ""
	}
	if s := f.Funcname[len(f.Funcname)-1].GetString_(); s != nil {
		return strings.ToLower(s.Sval)
	}
	return ""
}

func (c *Classifier) writes(name string) bool {
	if c.exact[name] {
		return true
	}
	for _, p := range c.prefix {
		i := strings.Index(p, "*")
		if len(name) >= len(p)-1 && strings.HasPrefix(name, p[:i]) && strings.HasSuffix(name, p[i+1:]) {
			return true
		}
	}
	return false
}

// lru is a bounded map of decisions; get on a hit allocates nothing.
type lru struct {
	mu         sync.Mutex
	max        int
	m          map[uint64]*lruNode
	head, tail *lruNode // head is the most recently used
}

type lruNode struct {
	key        uint64
	val        bool
	prev, next *lruNode
}

func newLRU(max int) *lru { return &lru{max: max, m: make(map[uint64]*lruNode, max)} }

func (l *lru) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}

func (l *lru) get(k uint64) (bool, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, ok := l.m[k]
	if !ok {
		return false, false
	}
	if n != l.head {
		l.unlink(n)
		l.pushFront(n)
	}
	return n.val, true
}

func (l *lru) put(k uint64, v bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n, ok := l.m[k]; ok {
		n.val = v
		return
	}
	n := &lruNode{key: k, val: v}
	if len(l.m) >= l.max && l.tail != nil {
		old := l.tail
		l.unlink(old)
		delete(l.m, old.key)
	}
	l.m[k] = n
	l.pushFront(n)
}

func (l *lru) unlink(n *lruNode) {
	if n.prev != nil {
		n.prev.next = n.next
	} else {
		l.head = n.next
	}
	if n.next != nil {
		n.next.prev = n.prev
	} else {
		l.tail = n.prev
	}
	n.prev, n.next = nil, nil
}

func (l *lru) pushFront(n *lruNode) {
	n.next = l.head
	if l.head != nil {
		l.head.prev = n
	}
	l.head = n
	if l.tail == nil {
		l.tail = n
	}
}
