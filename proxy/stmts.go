package proxy

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgshard/pgshard/router"
	"github.com/pgshard/pgshard/wire"
)

// stmtDef is a prepared statement's definition, interned pgshard-wide: every
// client statement with the same query and parameter types shares one name
// on the backends.
type stmtDef struct {
	name  string
	key   string   // its key in stmtCache.defs
	sql   string   // the statement text
	types []uint32 // its parameter types as the client's Parse gave them
	parse []byte   // a complete Parse message that creates it under name
	read  bool     // a replica may answer it (router.Classifier)
	// desc is the result description a client was given for it (see
	// descKey), once one was: a backend that prepares it later must
	// describe it alike.
	desc atomic.Pointer[string]
	// inferred are its parameter types as a backend described them
	// (unspecified ones resolved), once a client described it.
	inferred atomic.Pointer[[]uint32]
	// planned is set for statements PostgreSQL plans (SELECT, VALUES,
	// TABLE, WITH, INSERT, UPDATE, DELETE): only their result type is
	// checked on revalidation. A utility statement's (FETCH, SHOW, ...)
	// is not, and may rightly differ between backends (a FETCH prepared
	// before its cursor was declared).
	planned bool
	// sessionSeq: it calls currval() or lastval() (see sessionSeqRefusal).
	sessionSeq bool
	// retired is set once the definition is no longer handed out; backends
	// that have it close it when next attached (sweepRetired).
	retired atomic.Bool
}

func (d *stmtDef) described() bool { return d.planned && d.desc.Load() != nil }

// noteDesc records the description of a RowDescription or NoData answer to
// a Describe of d, if none is recorded; it reports whether the answer
// matches the recorded one.
func (d *stmtDef) noteDesc(msg []byte) bool {
	k := descKey(msg)
	if d.desc.CompareAndSwap(nil, &k) {
		return true
	}
	return *d.desc.Load() == k
}

// descKey reduces a RowDescription (or NoData) to what PostgreSQL compares
// when it decides that a cached plan changed its result type: the columns'
// names, types and type modifiers (not their source tables, which differ
// when a table is dropped and created again).
func descKey(msg []byte) string {
	if msg[0] != 'T' {
		return ""
	}
	var rd pgproto3.RowDescription
	if rd.Decode(msg[5:]) != nil {
		return string(msg) // compared as it is
	}
	var b strings.Builder
	for _, f := range rd.Fields {
		fmt.Fprintf(&b, "%s\x00%d\x00%d\x00", f.Name, f.DataTypeOID, f.TypeModifier)
	}
	return b.String()
}

// stmtCache interns statement definitions. Definitions interned before a
// schema change (bump) or found stale on a backend (retire) are no longer
// handed out: a client that prepares the same text afterwards gets a new
// definition, planned afresh on every backend, as it would on its own
// PostgreSQL session.
type stmtCache struct {
	mu   sync.Mutex
	defs map[string]*stmtDef
	next uint64
	gen  atomic.Uint64
	// sessionSeq is set once a statement calling currval() or lastval()
	// was interned (see session.bindsSessionSeq).
	sessionSeq atomic.Bool
}

// bump forgets every definition: DDL went through pgshard.
func (c *stmtCache) bump() {
	c.mu.Lock()
	for _, d := range c.defs {
		d.retired.Store(true)
	}
	clear(c.defs)
	c.gen.Add(1)
	c.mu.Unlock()
}

// retire forgets d: a backend found its plan stale.
func (c *stmtCache) retire(d *stmtDef) {
	c.mu.Lock()
	if c.defs[d.key] == d {
		delete(c.defs, d.key)
	}
	if !d.retired.Swap(true) {
		c.gen.Add(1)
	}
	c.mu.Unlock()
}

// generation changes whenever a definition is retired: a backend whose
// statements were swept at an older generation may hold retired ones.
func (c *stmtCache) generation() uint64 { return c.gen.Load() }

func (c *stmtCache) intern(query string, oids []uint32, classify func(string) (read, pin bool)) *stmtDef {
	var kb bytes.Buffer
	kb.Grow(len(query) + 1 + 4*len(oids))
	kb.WriteString(query)
	kb.WriteByte(0)
	for _, o := range oids {
		_ = binary.Write(&kb, binary.BigEndian, o)
	}
	key := kb.String()
	c.mu.Lock()
	defer c.mu.Unlock()
	if d, ok := c.defs[key]; ok {
		return d
	}
	if c.defs == nil {
		c.defs = map[string]*stmtDef{}
	}
	c.next++
	d := &stmtDef{name: fmt.Sprintf("pgshard_%d", c.next), key: key, sql: query, types: oids, planned: router.Planned(query),
		sessionSeq: router.Inspect(query).SessionSeq}
	if d.sessionSeq {
		c.sessionSeq.Store(true)
	}
	d.read, _ = classify(query)
	p := pgproto3.Parse{Name: d.name, Query: query, ParameterOIDs: oids}
	d.parse, _ = p.Encode(nil)
	c.defs[key] = d
	return d
}

// cstring splits a NUL-terminated string off the front of b.
func cstring(b []byte) (string, []byte, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", nil, false
	}
	return string(b[:i]), b[i+1:], true
}

// cstringBytes is cstring without the string allocation.
func cstringBytes(b []byte) ([]byte, []byte, bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return nil, nil, false
	}
	return b[:i], b[i+1:], true
}

func errMalformed(what string) error {
	return &wire.ProtocolError{Msg: "malformed " + what + " message"}
}

// appendWithStmt appends message typ whose body is prefix, then name as a
// C string, then rest: used to rename the statement in Bind and Describe.
func appendWithStmt(dst []byte, typ byte, prefix []byte, name string, rest []byte) []byte {
	n := 4 + len(prefix) + len(name) + 1 + len(rest)
	dst = append(dst, typ, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	dst = append(dst, prefix...)
	dst = append(dst, name...)
	dst = append(dst, 0)
	return append(dst, rest...)
}

var (
	msgParseComplete = []byte{'1', 0, 0, 0, 4}
	msgCloseComplete = []byte{'3', 0, 0, 0, 4}
	msgFlush         = []byte{'H', 0, 0, 0, 4}
	msgSync          = []byte{'S', 0, 0, 0, 4}
	msgBindComplete  = []byte{'2', 0, 0, 0, 4}
	msgNoData        = []byte{'n', 0, 0, 0, 4}
)

// appendClose appends a Close of the statement ('S') or portal ('P') name.
func appendClose(dst []byte, what byte, name string) []byte {
	return appendWithStmt(dst, 'C', []byte{what}, name, nil)
}

func readyForQuery(status byte) []byte { return []byte{'Z', 0, 0, 0, 5, status} }

func queryMsg(sql string) []byte {
	b, _ := (&pgproto3.Query{String: sql}).Encode(nil)
	return b
}

// errorCode returns the SQLSTATE field of a raw ErrorResponse.
func errorCode(msg []byte) string {
	b := msg[5:]
	for len(b) > 0 && b[0] != 0 {
		f := b[0]
		v, rest, ok := cstringBytes(b[1:])
		if !ok {
			return ""
		}
		if f == 'C' {
			return string(v)
		}
		b = rest
	}
	return ""
}
