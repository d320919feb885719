package proxy

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgshard/pgshard/merge"
	"github.com/pgshard/pgshard/router"
	"github.com/pgshard/pgshard/shardmap"
	"github.com/pgshard/pgshard/wire"
)

// mergeSpec turns the planner's merge description and the shards'
// RowDescription into the merge package's Spec. params are the Bind's
// values (HAVING may compare with a parameter), nil for the simple
// protocol. Every column is asked of the shards in the client's format
// (desc carries it), so pass-through columns keep their bytes.
func (s *session) mergeSpec(pl *router.Plan, desc *pgproto3.RowDescription, params *router.Params, coll collated) (merge.Spec, error) {
	n := len(desc.Fields)
	spec := merge.Spec{Input: desc.Fields, Columns: make([]merge.Column, n), ExtraFloatDigits: s.extraFloatDigits()}
	for i, f := range desc.Fields {
		spec.Columns[i] = merge.Column{Kind: merge.Value, Arg: i, Format: f.Format}
	}
	m := pl.Merge
	if m == nil {
		return spec, nil
	}
	if m.Hidden > n {
		return spec, wire.Errorf(wire.CodeInternalError, "pgshard: the shards returned %d columns, fewer than the merge's %d hidden ones", n, m.Hidden)
	}
	for i := n - m.Hidden; i < n; i++ {
		spec.Columns[i].Hidden = true
	}
	grouped := m.Distinct || len(m.GroupBy) > 0
	spec.Grouped = grouped
	if grouped {
		// Every column not aggregated is a group key: the planner only
		// lets through columns that the GROUP BY keys determine, and a
		// key they determine splits no group.
		for i := range spec.Columns {
			spec.Columns[i].Kind = merge.GroupKey
		}
	}
	for _, a := range m.Aggs {
		c := m.Col(a.Col, n)
		if c < 0 || c >= n {
			return spec, wire.Errorf(wire.CodeInternalError, "pgshard: merge column %d out of range", a.Col)
		}
		col := &spec.Columns[c]
		switch a.Func {
		case router.AggCount:
			col.Kind = merge.Count
		case router.AggSum:
			col.Kind = merge.Sum
		case router.AggMin:
			col.Kind = merge.Min
		case router.AggMax:
			col.Kind = merge.Max
		case router.AggCountDistinct:
			col.Kind = merge.CountDistinct
		case router.AggAvg:
			col.Kind = merge.Avg
			col.Arg2 = m.Col(a.CountCol, n)
			if col.Arg2 < 0 || col.Arg2 >= n {
				return spec, wire.Errorf(wire.CodeInternalError, "pgshard: merge column %d out of range", a.CountCol)
			}
			spec.Columns[col.Arg2].Kind = merge.Count
		}
	}
	if !grouped && len(m.Aggs) > 0 {
		// Aggregates without GROUP BY: one row; hidden columns that are
		// not aggregates cannot exist there.
		for i := range spec.Columns {
			if spec.Columns[i].Kind == merge.GroupKey {
				spec.Columns[i].Kind = merge.Value
			}
		}
	}
	for _, k := range m.OrderBy {
		c := m.Col(k.Col, n)
		if c < 0 || c >= n {
			return spec, wire.Errorf(wire.CodeInternalError, "pgshard: ORDER BY column %d out of range", k.Col)
		}
		spec.OrderBy = append(spec.OrderBy, merge.SortKey{Column: c, Desc: k.Desc, NullsFirst: k.NullsFirst})
	}
	// Text under the database's collation can be ordered here only when
	// that collation is byte order.
	for i, col := range spec.Columns {
		ordered := col.Kind == merge.Min || col.Kind == merge.Max
		for _, k := range spec.OrderBy {
			ordered = ordered || k.Column == i
		}
		if ordered && !merge.Orderable(desc.Fields[i].DataTypeOID, s.srv.collation(s.db)) {
			return spec, wire.Errorf(wire.CodeFeatureNotSupported,
				"pgshard: cannot merge ORDER BY, min or max of column %q across shards: its type (OID %d) under the database's collation %q cannot be compared here exactly as PostgreSQL does",
				string(desc.Fields[i].Name), desc.Fields[i].DataTypeOID, s.srv.collation(s.db))
		}
		// Columns of the statement's relations with other collations
		// (collated.go): text ordered here may be one of them, or derive
		// from one.
		text := merge.Collatable(desc.Fields[i].DataTypeOID)
		if ordered && text && coll.order != "" {
			return spec, wire.Errorf(wire.CodeFeatureNotSupported,
				"pgshard: cannot merge ORDER BY, min or max of text column %q across shards: the statement reads column %s, whose collation does not order as bytes do",
				string(desc.Fields[i].Name), coll.order)
		}
		grouped := col.Kind == merge.GroupKey || col.Kind == merge.CountDistinct
		if grouped && text && coll.equal != "" {
			return spec, wire.Errorf(wire.CodeFeatureNotSupported,
				"pgshard: cannot merge GROUP BY, DISTINCT or count(DISTINCT …) of text column %q across shards: the statement reads column %s, whose collation is nondeterministic",
				string(desc.Fields[i].Name), coll.equal)
		}
	}
	spec.DistinctOn = m.DistinctOn
	if m.HasLimit && pl.Limit >= 0 {
		spec.HasLimit, spec.Limit, spec.WithTies = true, pl.Limit, m.WithTies
	}
	if m.HasOffset && pl.Offset > 0 {
		spec.Offset = pl.Offset
	}
	if m.Having != nil {
		e, err := havingExpr(m, m.Having, n, params)
		if err != nil {
			return spec, err
		}
		spec.Having = e
	}
	return spec, nil
}

var cmpOps = map[string]merge.CmpOp{"=": merge.Eq, "<>": merge.Ne, "!=": merge.Ne, "<": merge.Lt, "<=": merge.Le, ">": merge.Gt, ">=": merge.Ge}
var arithOps = map[string]merge.ArithOp{"+": merge.Add, "-": merge.Sub, "*": merge.Mul, "/": merge.Div}

// havingExpr converts the planner's HAVING expression.
func havingExpr(m *router.Merge, e *router.Expr, n int, params *router.Params) (merge.Expr, error) {
	args := make([]merge.Expr, len(e.Args))
	for i, a := range e.Args {
		x, err := havingExpr(m, a, n, params)
		if err != nil {
			return nil, err
		}
		args[i] = x
	}
	switch e.Op {
	case "and":
		return merge.And{Args: args}, nil
	case "or":
		return merge.Or{Args: args}, nil
	case "not":
		return merge.Not{Arg: args[0]}, nil
	case "isnull":
		return merge.IsNull{Arg: args[0]}, nil
	case "isnotnull":
		return merge.IsNull{Arg: args[0], Negate: true}, nil
	case "col":
		return merge.Col{Index: m.Col(e.Col, n)}, nil
	case "const":
		return merge.Const{Text: e.Value}, nil
	case "param":
		i := e.Param - 1
		if params == nil || i < 0 || i >= len(params.Values) {
			return nil, wire.Errorf(router.CodeNoParam, "there is no parameter $%d", e.Param)
		}
		if params.Values[i] == nil {
			return merge.Const{Null: true}, nil
		}
		var oid uint32
		if i < len(params.Types) {
			oid = params.Types[i]
		}
		if len(params.Formats) == 1 && params.Formats[0] == 1 || len(params.Formats) > i && params.Formats[i] == 1 {
			text, ok := binaryParamText(oid, params.Values[i])
			if !ok {
				return nil, wire.Errorf(wire.CodeFeatureNotSupported, "pgshard: a binary parameter of type OID %d in HAVING across shards is not supported", oid)
			}
			return merge.Const{Text: text}, nil
		}
		return merge.Const{Text: string(params.Values[i])}, nil
	}
	if op, ok := cmpOps[e.Op]; ok && len(args) == 2 {
		return merge.Cmp{Op: op, L: args[0], R: args[1]}, nil
	}
	if op, ok := arithOps[e.Op]; ok && len(args) == 2 {
		return merge.Arith{Op: op, L: args[0], R: args[1]}, nil
	}
	return nil, wire.Errorf(wire.CodeFeatureNotSupported, "pgshard: HAVING operator %q across shards is not supported", e.Op)
}

// extraFloatDigits is the session's extra_float_digits when it set one.
func (s *session) extraFloatDigits() *int {
	s.mu.Lock()
	v, ok := s.sets["extra_float_digits"]
	s.mu.Unlock()
	if !ok {
		return nil
	}
	v = strings.Trim(strings.TrimPrefix(v, rawSetting), "' ")
	d, err := strconv.Atoi(v)
	if err != nil {
		return nil
	}
	return &d
}

// collation returns the collation of database db on the shards, as
// learned by the first spread read in it ("" until then: text is then not
// orderable across shards).
func (s *Server) collation(db string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.collations[db]
}

func (s *Server) setCollation(db, c string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.collations == nil {
		s.collations = map[string]string{}
	}
	s.collations[db] = c
}

// collationSQL asks a shard for its database's collation.
const collationSQL = "SELECT datcollate FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()"

// readCollation reads the answer to collationSQL on l.
func (s *session) readCollation(ctx context.Context, l *leg) error {
	_, err := readRows(ctx, l, func(row [][]byte) {
		if len(row) == 1 && row[0] != nil {
			s.srv.setCollation(s.db, string(row[0]))
		}
	})
	return err
}

// readRows reads the answer to a query of pgshard's own on l, up to its
// ReadyForQuery, handing each row to f: failed is the shard's error, if
// it sent one; err a lost connection.
func readRows(ctx context.Context, l *leg, f func(row [][]byte)) (failed, err error) {
	for {
		typ, msg, err := l.next(ctx)
		if err != nil {
			return failed, err
		}
		switch typ {
		case 'E':
			failed = backendError(msg)
		case 'D':
			if row, ok := decodeDataRow(msg[5:], nil); ok {
				f(row)
			}
		case 'Z':
			return failed, nil
		}
	}
}

// tableDDL checks DDL that goes to every shard and says which tables it
// registers; nil when it registers none.
func (s *session) tableDDL(pl *router.Plan, sql string) ([]router.TableDDL, error) {
	if pl.Kind != router.AllShards {
		return nil, nil
	}
	rs := s.srv.routing.Load()
	var cat router.Catalog
	if rs != nil {
		cat = rs.catalog
	}
	ddl, rerr := router.AnalyzeTableDDL(sql, cat)
	if rerr != nil {
		return nil, planError(rerr)
	}
	var out []router.TableDDL
	creates := false
	for _, d := range ddl {
		switch {
		case d.Op == router.DDLCreateTable && !d.Temp:
			out = append(out, d)
			creates = true
		case d.Op == router.DDLDropTable, d.Op == router.DDLCreateSequence:
			out = append(out, d)
		}
	}
	if creates && s.srv.tableRegistrar() == nil {
		return nil, wire.Errorf(wire.CodeFeatureNotSupported, "pgshard: CREATE TABLE across shards needs the shard map to register the table, and this node has none")
	}
	if err := s.unqualifiedUnderPath(sql, out); err != nil {
		return nil, err
	}
	return out, nil
}

// registerTables records created tables in the shard map.
func (s *session) registerTables(ctx context.Context, ddl []router.TableDDL) error {
	reg := s.srv.tableRegistrar()
	for _, d := range ddl {
		if d.Op == router.DDLCreateSequence {
			continue // placed (placeSequences), nothing to register
		}
		if d.Op == router.DDLDropTable {
			if reg == nil {
				continue
			}
			rs := s.srv.routing.Load()
			for _, name := range d.Dropped {
				if rs == nil || rs.catalog[name].Kind == router.TableUnknown {
					continue // not registered (or a temporary table of that name)
				}
				if err := reg.UnregisterTable(ctx, strings.TrimPrefix(name, "public.")); err != nil {
					return wire.Errorf(wire.CodeInternalError, "pgshard: table %s was dropped on every shard but is still in the shard map: %v", name, err)
				}
			}
			continue
		}
		if rs := s.srv.routing.Load(); d.IfNotExists && rs != nil && rs.catalog[d.Schema+"."+d.Name].Kind != router.TableUnknown {
			continue // it existed (the shards skipped the CREATE): registered as it was
		}
		t := shardmap.Table{Name: d.MapName(), Kind: shardmap.TableReference}
		if d.Sharded {
			t = shardmap.Table{Name: d.MapName(), Kind: shardmap.TableSharded, KeyColumn: d.KeyColumn, KeyType: d.KeyType, KeyOrdinal: d.KeyOrdinal}
		}
		if err := reg.RegisterTable(ctx, t); err != nil {
			return wire.Errorf(wire.CodeInternalError, "pgshard: table %s was created on every shard but could not be registered in the shard map: %v", t.Name, err)
		}
		// The map has it; routing must too before the client's next
		// statement (an unknown table is routed as a reference table).
		if err := s.srv.waitRouted(ctx, d.Schema+"."+d.Name); err != nil {
			return wire.Errorf(wire.CodeInternalError, "pgshard: table %s was registered but this node does not route by it yet: %v", t.Name, err)
		}
	}
	return nil
}

// waitRouted waits until routing knows the table "schema.name".
func (s *Server) waitRouted(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		if rs := s.routing.Load(); rs != nil {
			if _, ok := rs.catalog[name]; ok {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
	}
}

// binaryParamText writes a binary parameter of a numeric or text type as
// the literal a client would have written.
func binaryParamText(oid uint32, b []byte) (string, bool) {
	switch oid {
	case 21:
		if len(b) == 2 {
			return strconv.Itoa(int(int16(binary.BigEndian.Uint16(b)))), true
		}
	case 23:
		if len(b) == 4 {
			return strconv.Itoa(int(int32(binary.BigEndian.Uint32(b)))), true
		}
	case 20:
		if len(b) == 8 {
			return strconv.FormatInt(int64(binary.BigEndian.Uint64(b)), 10), true
		}
	case 700:
		if len(b) == 4 {
			return strconv.FormatFloat(float64(math.Float32frombits(binary.BigEndian.Uint32(b))), 'g', -1, 32), true
		}
	case 701:
		if len(b) == 8 {
			return strconv.FormatFloat(math.Float64frombits(binary.BigEndian.Uint64(b)), 'g', -1, 64), true
		}
	case 1700:
		return merge.NumericText(b)
	case 25, 1043, 705:
		return string(b), true
	}
	return "", false
}

// placeSequences moves the sequences of the sharded tables ddl created,
// and the sequences it created, to each leg's range, in the legs' open
// transactions.
func (s *session) placeSequences(ctx context.Context, legs []*leg, ddl []router.TableDDL) error {
	var seqs []string // per sequence: an expression giving its name as regclass text
	for _, d := range ddl {
		switch {
		case d.Op == router.DDLCreateSequence:
			seqs = append(seqs, quoteLiteral(quoteIdent(d.Schema)+"."+quoteIdent(d.Name)))
		case d.Sharded:
			for _, c := range d.Sequences {
				seqs = append(seqs, fmt.Sprintf("pg_catalog.pg_get_serial_sequence(%s, %s)", quoteLiteral(quoteIdent(d.Schema)+"."+quoteIdent(d.Name)), quoteLiteral(c.Column)))
			}
		}
	}
	if len(seqs) == 0 {
		return nil
	}
	slots := map[int64]string{}
	for _, l := range legs {
		slot := shardmap.SequenceSlot(l.b.rt.name)
		if other, ok := slots[slot]; ok {
			return wire.Errorf(wire.CodeFeatureNotSupported, "pgshard: shards %s and %s share a sequence range, so a sharded table's sequence values could repeat; rename one of them", other, l.b.rt.name)
		}
		slots[slot] = l.b.rt.name
	}
	bufs := make([][]byte, len(legs))
	for i, l := range legs {
		lo, hi := shardmap.SequenceRange(l.b.rt.name)
		for _, seq := range seqs {
			// Only a sequence not yet in the range: CREATE … IF NOT EXISTS
			// of one that exists must not restart it.
			sql := fmt.Sprintf(`DO $pgshard$DECLARE s regclass := (%s)::regclass; BEGIN
IF (SELECT seqmin FROM pg_catalog.pg_sequence WHERE seqrelid = s) <> %d THEN
EXECUTE pg_catalog.format('ALTER SEQUENCE %%s MINVALUE %d MAXVALUE %d START WITH %d RESTART WITH %d', s); END IF; END$pgshard$`,
				seq, lo, lo, hi, lo, lo)
			bufs[i] = append(bufs[i], queryMsg(sql)...)
		}
	}
	if err := sendLegs(legs, bufs); err != nil {
		return err
	}
	first, lost := eachLeg(ctx, legs, len(seqs))
	if first == nil {
		first = lost
	}
	return first
}

// quoteIdent quotes an identifier.
func quoteIdent(name string) string { return `"` + strings.ReplaceAll(name, `"`, `""`) + `"` }
