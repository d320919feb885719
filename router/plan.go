package router

// The sharded-routing planner.
//
// A Planner turns one statement text (plus, in the extended protocol, the
// Bind parameters) into a Plan: where the statement runs (one shard, a set
// of shards, every shard with a merge, every shard with the same
// statement, any one shard) or a refusal with SQLSTATE 0A000 naming the
// construct that cannot be answered exactly across shards. It never does
// I/O: tables are described by a Catalog the caller provides, shards by a
// Locator (a *shardmap.Ring).
//
// One parse per statement shape. The text is scanned (planScan: the
// effects lexer's rules) into a shape hash that ignores string and number
// literals, plus the byte span of every literal and $n. On a cache miss
// the text is parsed with pg_query and analysed into a template whose key
// values are references: "literal #i" or "parameter $n". Later texts of the
// same shape reuse the template: the key is read from its literal's known
// position and hashed, so a keyed statement whose key changes every time
// is routed without a parse and without allocation. A literal the fast
// path cannot read (an escape it does not decode, a float where an integer
// was) sends that text through a full parse instead.
//
// Table names resolve as PostgreSQL does: unquoted names are folded to
// lower case by the parser, quoted names kept, and an unqualified name is
// resolved by the Catalog (the proxy's follows the session's search_path;
// by default ("$user", public, no per-user schemas) it is looked up in
// schema "public"). A catalog that knows temporary tables must answer for
// them itself; names the catalog does
// not know (system catalogs, unregistered tables) are treated like
// reference tables: present and identical on every shard.
//
// Rules (see DESIGN.md "Routing rules" and issue 8):
//
//   - Key predicates: key = const, const = key, key = $n, $n = key (casts
//     like $1::bigint allowed), key IN (...), key = ANY($n) with an array
//     parameter, key = ANY(ARRAY[...]). AND narrows (either side's shards
//     hold every matching row; the side with fewer values is used), OR
//     unites, anything else (<, >, BETWEEN, <>, NOT, functions of the key,
//     IS NULL) leaves the key unconstrained: scatter. Casts of the value to
//     a key type without a modifier are looked through; a cast of the key
//     column (owner::int = 5 also matches '05') or to varchar(n) is not.
//   - The key column's type decides how a value is read: '42' for an
//     integer key is 42; binary parameters are laid out by their type OID
//     (int2/int4/int8 big-endian, text bytes, 16-byte uuid).
//   - Sharded tables joined on key equality (a.k = b.k, in WHERE or in any
//     join's ON or USING, or a qualified correlated reference in a
//     subquery) are co-located: the join is answered on each shard and
//     routed by the key of the outermost scope (a key filter inside a
//     subquery never narrows the outer query: NOT EXISTS). An unqualified
//     column name is matched only against the key columns of the tables of
//     its own scope. Otherwise every sharded table, including those in
//     subqueries, derived tables and CTEs, must be pinned to key values that
//     all live on one shard, or the statement is refused as a cross-shard
//     join (or subquery).
//   - Reference tables follow the sharded side; reads touching no sharded
//     table go to any one shard; writes to reference tables and DDL go to
//     all shards (refused when they read a sharded table). Across shards,
//     an outer join that keeps every row of a non-sharded table against a
//     sharded one is refused (each shard would return those rows).
//   - Several statements in one text must all land on one shard (BEGIN,
//     COMMIT, SET ... ride along), else they are refused.
//   - INSERT ... VALUES routes each row by its key (a constant or a
//     parameter); rows on different shards are split (Plan.Rows,
//     SplitInsert). ON CONFLICT routes by the inserted key; DO UPDATE SET
//     key and DEFAULT VALUES into sharded tables are refused.
//   - INSERT ... SELECT into a sharded table whose SELECT reads no sharded
//     table: a constant or parameter key routes it as one VALUES row; any
//     other runs on every shard (Scatter with Plan.InsertSelect), each
//     shard's SELECT narrowed to the rows whose key it owns (OwnRows). A
//     SELECT that combines rows (aggregates, window functions, GROUP BY,
//     DISTINCT, LIMIT, set operations) or whose key is volatile or uses no
//     column is refused: the shards would compute different rows. From
//     sharded tables, only a co-located copy is planned (the inserted key
//     is the key column of a sharded table of the SELECT's FROM): routed
//     as that read is, each shard inserting the rows it has.
//   - UPDATE ... SET key = v is allowed only when v lands on the shard the
//     row is on (decided here for a constant or parameter, Single plans
//     only; Plan.SetsKey), else refused.
//   - Statements spanning several shards get a Merge: ORDER BY keys,
//     LIMIT/OFFSET (pushed down as LIMIT limit+offset), DISTINCT, GROUP BY
//     and the aggregates count/sum/min/max/avg (avg as sum and count;
//     bool_and and every as min, bool_or as max; count(DISTINCT x) as x,
//     the shards grouping by x too, counted in the merge), HAVING
//     evaluated after the merge, FETCH FIRST … WITH TIES (the shards
//     fetch limit+offset with ties; the merge keeps the ties of the last
//     row), DISTINCT ON with its ORDER BY (the merge keeps each value's
//     first row). Window functions, DISTINCT ON without ORDER BY or with
//     aggregates, set operations, locking clauses, other aggregates,
//     other DISTINCT aggregates, count(DISTINCT) with FILTER, expressions
//     over aggregates, GROUPING SETS, ORDER BY ... USING, EXPLAIN and
//     cursors are refused when the plan spans more than one shard.
//     Data-modifying CTEs, DO, CALL and MERGE are always refused.

// Using it: call Plan at Bind (extended protocol: with the Bind's values,
// the Parse's type OIDs) or per Query (simple protocol: params nil). A
// statement whose key is a parameter planned without values is refused
// with SQLSTATE 42P02. For a Multi plan with Rows, SplitInsert gives each
// shard's text (and, for the extended protocol, which parameters it
// takes). For Multi and Scatter reads, send ShardSQL (when set) and merge
// by Merge with Plan.Limit and Plan.Offset. While a reshard job moves
// ranges, pass each shard's text of a Multi or Scatter plan through
// ExcludeMoving with the ranges Excluded gives for that shard
// (ownership.go). Call Reset when the catalog
// changes: templates keep what the catalog said. The Locator is only
// read during the call, so a new ring takes effect at once.
//
// Not covered: COPY (planned by the proxy), views over sharded tables
// (the catalog must report them), user-defined aggregates (not
// recognised: a scatter merge would be wrong; the catalog-free planner
// cannot tell them from functions), text ORDER BY collation checks (the
// merge must compare as the database does or refuse), sequences.

import (
	"errors"
	"sort"
	"strconv"
	"strings"
	"sync"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/pgshard/pgshard/shardmap"
)

// TableKind says how a table is distributed.
type TableKind uint8

const (
	// TableUnknown: not in the catalog; treated as present and identical
	// on every shard (system catalogs, unregistered tables).
	TableUnknown TableKind = iota
	// TableSharded: rows placed by the hash of the key column.
	TableSharded
	// TableReference: a full copy on every shard.
	TableReference
)

// TableInfo describes one table.
type TableInfo struct {
	Kind TableKind
	// KeyColumn is the shard key column of a sharded table (lower case
	// unless it was created quoted).
	KeyColumn string
	// KeyType is the key column's type family.
	KeyType shardmap.KeyType
	// KeyOrdinal is the key column's 1-based position among the table's
	// columns, for INSERT without a column list (0: unknown, refused).
	KeyOrdinal int
}

// Catalog describes tables. schema is empty for an unqualified name: the
// catalog resolves it as the session's search_path would (by default in
// "public", see the search_path note above).
type Catalog interface {
	Table(schema, name string) TableInfo
}

// Locator maps a key hash to the shard that owns it; *shardmap.Ring is one.
type Locator interface {
	Lookup(hash int64) string
}

// Kind is what a plan does.
type Kind uint8

const (
	// Refuse: do not run; Plan.Err says why (SQLSTATE 0A000 for a
	// construct that cannot be answered exactly across shards).
	Refuse Kind = iota
	// Single: run on Plan.Shard.
	Single
	// Multi: run on each of Plan.Shards and merge per Plan.Merge; an
	// INSERT split also has Plan.Rows.
	Multi
	// Scatter: run on every shard and merge per Plan.Merge.
	Scatter
	// AllShards: run the same statement on every shard, atomically (DDL,
	// writes to reference tables); the results are identical.
	AllShards
	// AnyShard: touches no sharded table; any one shard answers.
	AnyShard
	// Utility: session or transaction control the proxy handles itself
	// (BEGIN, COMMIT, SET, SHOW, LISTEN, PREPARE, EXECUTE, cursors' FETCH
	// ...); the planner does not route it.
	Utility
)

func (k Kind) String() string {
	switch k {
	case Refuse:
		return "refuse"
	case Single:
		return "single"
	case Multi:
		return "multi"
	case Scatter:
		return "scatter"
	case AllShards:
		return "all"
	case AnyShard:
		return "any"
	case Utility:
		return "utility"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Plan is where and how to run one statement text.
type Plan struct {
	Kind Kind
	// Read is the Classifier's verdict: a replica may answer.
	Read bool
	// Shard is the shard of a Single plan.
	Shard string
	// Shards are the shards of a Multi plan, sorted.
	Shards []string
	// Rows splits a multi-row INSERT: for each shard of Shards, the
	// 0-based indexes of its VALUES rows (see Planner.SplitInsert).
	Rows [][]int
	// Merge describes how to combine the results of a Multi or Scatter
	// plan (nil: none needed beyond concatenation and adding command
	// tags' counts). Shared and read-only.
	Merge *Merge
	// Limit and Offset are the values of a merged LIMIT and OFFSET for
	// this execution (-1: none).
	Limit, Offset int64
	// ShardSQL is the statement to send to each shard of a Multi or
	// Scatter read when the merge needs a different one (hidden columns,
	// LIMIT pushed down, HAVING removed); empty: send the original.
	ShardSQL string
	// SetsKey: an UPDATE assigns the shard key column; the planner has
	// checked that the new value belongs to Shard (else it refused).
	SetsKey bool
	// Copy is set for a COPY that spans shards (Multi, Scatter or
	// AllShards): how the proxy splits or gathers its rows.
	Copy *CopyPlan
	// Global: LISTEN, UNLISTEN, NOTIFY, pg_notify() or an advisory lock
	// function, with several shards: it must run on the one shard every
	// client shares, so that notifications reach their listeners and
	// locks exclude each other (an AnyShard or Utility plan; the proxy
	// picks the shard).
	Global bool
	// InsertSelect is set for an INSERT … SELECT into a sharded table that
	// runs on every shard (Scatter), each keeping the rows whose key it
	// owns: the proxy sends each shard Planner.OwnRows of the text.
	InsertSelect *InsertSelect
	// Err is set for Refuse.
	Err *Error
}

// Error is a planner error carrying its SQLSTATE.
type Error struct {
	Code    string // SQLSTATE
	Message string
}

func (e *Error) Error() string { return e.Message }

// SQLState returns the SQLSTATE.
func (e *Error) SQLState() string { return e.Code }

// Unwrap lets errors.Is(err, ErrNotSupported) match refusals.
func (e *Error) Unwrap() error {
	if e.Code == CodeNotSupported {
		return ErrNotSupported
	}
	return nil
}

// SQLSTATEs of planner errors.
const (
	CodeNotSupported = "0A000" // feature_not_supported
	CodeBadValue     = "22P02" // invalid_text_representation
	CodeNoParam      = "42P02" // undefined_parameter
)

// ErrNotSupported matches (errors.Is) every refusal of a construct that
// cannot be answered exactly across shards.
var ErrNotSupported = errors.New("router: not supported across shards")

func refuse(msg string) *Error { return &Error{Code: CodeNotSupported, Message: msg} }

// PlannerConfig configures a Planner.
type PlannerConfig struct {
	Catalog    Catalog
	Classifier *Classifier // nil: a default one
	// CacheSize bounds the templates kept (default 10000).
	CacheSize int
}

// Planner plans statements; safe for concurrent use. Templates are cached
// by shape: call Reset when the catalog changes.
type Planner struct {
	cat   Catalog
	cls   *Classifier
	max   int
	mu    sync.RWMutex
	cache map[uint64]*tmpl
	// rewrites caches per-shard SQL by exact text.
	rmu      sync.Mutex
	rewrites map[string]string
	// owned caches ExcludeMoving's results (ownership.go).
	omu   sync.Mutex
	owned map[string]owned
}

// NewPlanner returns a Planner.
func NewPlanner(cfg PlannerConfig) *Planner {
	p := &Planner{cat: cfg.Catalog, cls: cfg.Classifier, max: cfg.CacheSize}
	if p.cls == nil {
		p.cls = NewClassifier(ClassifierConfig{})
	}
	if p.max <= 0 {
		p.max = 10000
	}
	p.cache = make(map[uint64]*tmpl)
	p.rewrites = make(map[string]string)
	return p
}

// Reset drops every cached template (after DDL or a catalog change).
func (p *Planner) Reset() {
	p.mu.Lock()
	p.cache = make(map[uint64]*tmpl)
	p.mu.Unlock()
	p.rmu.Lock()
	p.rewrites = make(map[string]string)
	p.rmu.Unlock()
	p.omu.Lock()
	p.owned = nil
	p.omu.Unlock()
}

// Plan plans sql. params are the Bind values of an extended-protocol
// execution (nil for the simple protocol). A keyed statement whose shape
// is cached is planned without parsing or allocating.
func (p *Planner) Plan(sql string, params *Params, loc Locator) Plan {
	var sc planScan
	sc.scan(sql)
	p.mu.RLock()
	t := p.cache[sc.shape]
	p.mu.RUnlock()
	if t != nil && t.nlits == sc.n {
		if pl, ok := t.eval(sql, &sc, params, loc); ok {
			return p.finish(sql, t, pl)
		}
	}
	return p.planSlow(sql, sc, t != nil, params, loc)
}

// planSlow parses sql: its shape is not cached, or the cached template
// cannot read a literal of this text. sc is a copy, so that the fast
// path's scan stays on the stack.
func (p *Planner) planSlow(sql string, sc planScan, cached bool, params *Params, loc Locator) Plan {
	t := p.build(sql, &sc)
	if !cached && t.cacheable {
		p.mu.Lock()
		if len(p.cache) >= p.max {
			for k := range p.cache { // evict one at random
				delete(p.cache, k)
				break
			}
		}
		p.cache[sc.shape] = t
		p.mu.Unlock()
	}
	pl, ok := t.eval(sql, &sc, params, loc)
	if !ok && t.missingParam(params) {
		return Plan{Kind: Refuse, Read: t.read, Err: &Error{Code: CodeNoParam, Message: "the shard key is a parameter: plan the statement with its Bind values"}}
	}
	if !ok {
		return Plan{Kind: Refuse, Read: t.read, Err: &Error{Code: CodeBadValue, Message: "shard key value cannot be read as its column's type"}}
	}
	return p.finish(sql, t, pl)
}

// finish adds the per-shard SQL of a merged read.
func (p *Planner) finish(sql string, t *tmpl, pl Plan) Plan {
	if (pl.Kind != Multi && pl.Kind != Scatter) || !t.rewrite || len(pl.Rows) > 0 {
		return pl
	}
	p.rmu.Lock()
	s, ok := p.rewrites[sql]
	p.rmu.Unlock()
	if !ok {
		var err *Error
		s, err = rewriteForShards(sql, t.distinctKey, t.merge)
		if err != nil {
			return Plan{Kind: Refuse, Read: pl.Read, Err: err}
		}
		p.rmu.Lock()
		if len(p.rewrites) >= p.max {
			for k := range p.rewrites {
				delete(p.rewrites, k)
				break
			}
		}
		p.rewrites[strings.Clone(sql)] = s // sql may alias a buffer the caller reuses
		p.rmu.Unlock()
	}
	pl.ShardSQL = s
	return pl
}

// CacheLen reports how many templates are cached.
func (p *Planner) CacheLen() int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return len(p.cache)
}

// srcKind is where a key value comes from.
type srcKind uint8

const (
	srcLit      srcKind = iota + 1 // literal #idx of the text
	srcParam                       // parameter idx (0-based)
	srcParamArr                    // array parameter idx: key = ANY($n)
	srcNull                        // NULL: matches nothing
	srcHash                        // a hash computed at build time (template not cached)
)

type valSrc struct {
	kind srcKind
	idx  int
	neg  bool  // a '-' precedes the number literal
	h    int64 // srcHash
}

// keySet constrains a key: all (unconstrained) or one of vals.
type keySet struct {
	all  bool
	vals []valSrc
}

var unconstrained = keySet{all: true}

// group is a set of co-located sharded tables that must be routed by one
// key set.
type group struct {
	ktype shardmap.KeyType
	keys  keySet
	names []string // table names, for messages
}

// tmpl is a cached plan template for one statement shape.
type tmpl struct {
	cacheable bool
	nlits     int
	kind      Kind // Refuse, AllShards, AnyShard, Utility; 0 (Refuse) with err
	read      bool
	err       *Error // Refuse
	// groups to route by; several must all land on one shard (crossErr).
	groups   []group
	crossErr *Error
	// multiErr refuses a plan that spans more than one shard.
	multiErr *Error
	merge    *Merge
	rewrite  bool
	limit    valSrc // kind 0: none
	offset   valSrc
	// refWrite: the statement writes a reference table (AllShards).
	refWrite bool
	// insert rows' keys (INSERT ... VALUES into a sharded table).
	insert []valSrc
	ins    *group
	// keyUpdate: UPDATE sets the key to this value.
	keyUpdate *valSrc
	// copy: a COPY the proxy splits or gathers (plan_copy.go).
	copy *CopyPlan
	// global: LISTEN, UNLISTEN, NOTIFY, pg_notify() or an advisory lock
	// (Plan.Global).
	global bool
	// insertSelect: an INSERT … SELECT every shard runs on its own rows.
	insertSelect *InsertSelect
	// distinctKey: the key column of the SELECT's only (sharded) table,
	// for count(DISTINCT key) (plan_merge.go).
	distinctKey string
}

// resolve calls f with the hash of each value of src; ok false: cannot read.
func resolve(sql string, sc *planScan, params *Params, kt shardmap.KeyType, v valSrc, f func(int64)) bool {
	switch v.kind {
	case srcNull:
		return true
	case srcHash:
		f(v.h)
		return true
	case srcParam:
		h, null, ok := params.paramHash(kt, v.idx)
		if !ok {
			return false
		}
		if !null {
			f(h)
		}
		return true
	case srcParamArr:
		return params.paramArray(kt, v.idx, f)
	case srcLit:
		if v.idx >= sc.n {
			return false
		}
		l := sc.lit(v.idx)
		tok := sql[l.pos:l.end]
		var h int64
		var ok bool
		switch l.kind {
		case litNumber:
			if kt != shardmap.KeyInt {
				if v.neg {
					return false
				}
				h, ok = hashText(kt, tok)
				break
			}
			var n int64
			n, ok = parseInt(tok)
			if v.neg {
				n = -n
			}
			h = shardmap.HashInt64(n)
		case litString:
			if v.neg {
				return false
			}
			var s string
			if s, ok = stringLiteral(tok); ok {
				h, ok = hashText(kt, s)
			}
		default:
			return false
		}
		if !ok {
			return false
		}
		f(h)
		return true
	}
	return false
}

// one resolves a single-valued source (an INSERT row's key, a SET key).
func one(sql string, sc *planScan, params *Params, kt shardmap.KeyType, v valSrc) (h int64, null, ok bool) {
	if v.kind == srcParam {
		return params.paramHash(kt, v.idx)
	}
	if v.kind == srcNull {
		return 0, true, true
	}
	n := 0
	ok = resolve(sql, sc, params, kt, v, func(x int64) { h = x; n++ })
	return h, n == 0, ok && n <= 1
}

// shardSet collects distinct shards; the first is kept without allocating.
type shardSet struct {
	first string
	n     int
	more  []string
}

func (s *shardSet) add(sh string) {
	if s.n == 0 {
		s.first, s.n = sh, 1
		return
	}
	if sh == s.first {
		return
	}
	for _, x := range s.more {
		if x == sh {
			return
		}
	}
	s.more = append(s.more, sh)
	s.n++
}

func (s *shardSet) list() []string {
	out := append([]string{s.first}, s.more...)
	sort.Strings(out)
	return out
}

// resolveLimit reads a LIMIT or OFFSET value (-1: none).
func resolveLimit(sql string, sc *planScan, params *Params, v valSrc) (int64, bool) {
	switch v.kind {
	case 0, srcNull:
		return -1, true
	case srcLit:
		l := sc.lit(v.idx)
		if l.kind == litString {
			t, ok := stringLiteral(sql[l.pos:l.end])
			if !ok {
				return 0, false
			}
			return parseInt(strings.TrimSpace(t))
		}
		if l.kind != litNumber {
			return 0, false
		}
		return parseInt(sql[l.pos:l.end])
	case srcParam:
		if params == nil || v.idx >= len(params.Values) {
			return 0, false
		}
		b := params.Values[v.idx]
		if b == nil {
			return -1, true
		}
		if params.format(v.idx) == 1 {
			switch len(b) {
			case 8:
				return int64(b[0])<<56 | int64(b[1])<<48 | int64(b[2])<<40 | int64(b[3])<<32 |
					int64(b[4])<<24 | int64(b[5])<<16 | int64(b[6])<<8 | int64(b[7]), true
			case 4:
				return int64(int32(uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]))), true
			}
			return 0, false
		}
		return parseInt(b)
	}
	return 0, false
}

// eval instantiates the template for one text and its parameters; ok is
// false when a key literal cannot be read from the text.
func (t *tmpl) eval(sql string, sc *planScan, params *Params, loc Locator) (Plan, bool) {
	pl := Plan{Kind: t.kind, Read: t.read, Err: t.err, Limit: -1, Offset: -1, Copy: t.copy, Global: t.global, InsertSelect: t.insertSelect}
	crossErr := t.crossErr
	if t.multiErr != nil {
		crossErr = t.multiErr
	}
	if t.err != nil || t.kind != Refuse {
		return pl, true
	}
	if t.insert != nil {
		return t.evalInsert(sql, sc, params, loc)
	}
	var set shardSet
	scatter := false
	for gi := range t.groups {
		g := &t.groups[gi]
		if g.keys.all {
			scatter = true
			continue
		}
		var gs shardSet
		for _, v := range g.keys.vals {
			ok := resolve(sql, sc, params, g.ktype, v, func(h int64) { gs.add(loc.Lookup(h)) })
			if !ok {
				return pl, false
			}
		}
		if gs.n == 0 { // only NULLs: no row matches; any shard answers
			gs.add(loc.Lookup(0))
		}
		if len(t.groups) > 1 && (gs.n > 1 || set.n > 0 && gs.first != set.first) {
			pl.Kind, pl.Err = Refuse, crossErr
			return pl, true
		}
		set.add(gs.first)
		for _, s := range gs.more {
			set.add(s)
		}
	}
	if scatter && len(t.groups) > 1 {
		pl.Kind, pl.Err = Refuse, crossErr
		return pl, true
	}
	if t.keyUpdate != nil {
		if scatter || set.n != 1 {
			pl.Kind, pl.Err = Refuse, refuse("UPDATE of the shard key across shards: the new key value may belong to another shard")
			return pl, true
		}
		h, null, ok := one(sql, sc, params, t.groups[0].ktype, *t.keyUpdate)
		if !ok {
			return pl, false
		}
		if null || loc.Lookup(h) != set.first {
			pl.Kind, pl.Err = Refuse, refuse("UPDATE moves a row to another shard: the new shard key value belongs to a different shard")
			return pl, true
		}
		pl.SetsKey = true
	}
	switch {
	case scatter:
		pl.Kind = Scatter
	case set.n == 1:
		pl.Kind, pl.Shard = Single, set.first
		return pl, true
	default:
		pl.Kind, pl.Shards = Multi, set.list()
	}
	if t.multiErr != nil {
		pl.Kind, pl.Err, pl.Shards = Refuse, t.multiErr, nil
		return pl, true
	}
	pl.Merge = t.merge
	var ok bool
	if pl.Limit, ok = resolveLimit(sql, sc, params, t.limit); !ok {
		return pl, false
	}
	if pl.Offset, ok = resolveLimit(sql, sc, params, t.offset); !ok {
		return pl, false
	}
	return pl, true
}

// evalInsert routes the rows of an INSERT ... VALUES.
func (t *tmpl) evalInsert(sql string, sc *planScan, params *Params, loc Locator) (Plan, bool) {
	pl := Plan{Kind: Single, Read: false, Limit: -1, Offset: -1}
	var first string
	split := false
	var byShard map[string][]int
	for i, v := range t.insert {
		h, null, ok := one(sql, sc, params, t.ins.ktype, v)
		if !ok {
			return pl, false
		}
		if null {
			pl.Kind, pl.Err = Refuse, refuse("INSERT of a NULL shard key into "+t.ins.names[0])
			return pl, true
		}
		sh := loc.Lookup(h)
		if i == 0 {
			first = sh
			continue
		}
		if sh != first && !split {
			split = true
			byShard = map[string][]int{}
			for k := 0; k < i; k++ {
				byShard[first] = append(byShard[first], k)
			}
		}
		if split {
			byShard[sh] = append(byShard[sh], i)
		}
	}
	if !split {
		pl.Shard = first
		return pl, true
	}
	pl.Kind = Multi
	for sh := range byShard {
		pl.Shards = append(pl.Shards, sh)
	}
	sort.Strings(pl.Shards)
	for _, sh := range pl.Shards {
		pl.Rows = append(pl.Rows, byShard[sh])
	}
	return pl, true
}

// parse is pg_query.Parse; a variable so that tests can count parses.
var parse = pg_query.Parse

// missingParam reports whether the template needs a parameter value that
// params lacks.
func (t *tmpl) missingParam(params *Params) bool {
	n := 0
	if params != nil {
		n = len(params.Values)
	}
	miss := func(v valSrc) bool { return (v.kind == srcParam || v.kind == srcParamArr) && v.idx >= n }
	for _, g := range t.groups {
		for _, v := range g.keys.vals {
			if miss(v) {
				return true
			}
		}
	}
	for _, v := range t.insert {
		if miss(v) {
			return true
		}
	}
	return t.keyUpdate != nil && miss(*t.keyUpdate) || miss(t.limit) || miss(t.offset)
}
