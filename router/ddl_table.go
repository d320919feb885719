package router

// What DDL means for the shard map.
//
// The proxy sends DDL to every shard (Plan.Kind AllShards). Before it does,
// AnalyzeTableDDL tells it which tables the statements create or drop, so
// that it can register them (sharded by their key column, or reference)
// and unregister them, and refuses what pgshard could not enforce once the
// rows are spread over several shards: a unique constraint without the
// shard key is checked by each shard only against its own rows, a key
// column of a type pgshard cannot hash like PostgreSQL does places rows
// nowhere sensible, 32-bit sequences cannot be given disjoint per-shard
// ranges, and changing the key column (or renaming a registered table)
// would leave the map describing a table that no longer exists.
//
// Which tables are sharded comes from a Catalog (the same interface the
// planner reads): a table the catalog reports as TableSharded has that
// KeyColumn; TableReference is never sharded, even with a column named
// like the default key (the operator registered it that way beforehand);
// a table the catalog does not know (TableUnknown) is sharded when it has
// the default key column, shardmap.DefaultKeyColumn ("user_id"). An
// operator who wants a table sharded by another column registers it before
// creating it. Names resolve as the planner resolves them: unqualified
// names are in "public" (or, inside CREATE SCHEMA, in that schema).

import (
	"fmt"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/pgshard/pgshard/shardmap"
)

// DDLOp is what a statement does to the shard map.
type DDLOp uint8

const (
	// DDLOther: nothing for the map (CREATE INDEX, COMMENT, CREATE VIEW,
	// an allowed ALTER TABLE, ...).
	DDLOther DDLOp = iota
	// DDLCreateTable: CREATE TABLE (or, for temporary tables only, CREATE
	// TABLE AS / SELECT INTO): register Schema.Name unless Temp.
	DDLCreateTable
	// DDLDropTable: DROP TABLE: unregister each of Dropped.
	DDLDropTable
	// DDLCreateSequence: CREATE SEQUENCE Schema.Name (not temporary): the
	// proxy gives each shard's copy its own range of values, as it does a
	// sharded table's serial columns.
	DDLCreateSequence
)

func (o DDLOp) String() string {
	switch o {
	case DDLOther:
		return "other"
	case DDLCreateTable:
		return "create-table"
	case DDLDropTable:
		return "drop-table"
	case DDLCreateSequence:
		return "create-sequence"
	}
	return fmt.Sprintf("DDLOp(%d)", int(o))
}

// SeqColumn is a column filled from a sequence: serial, bigserial,
// smallserial, or GENERATED ... AS IDENTITY.
type SeqColumn struct {
	Column string
	// Int64: bigserial/serial8, or a bigint identity column. A sharded
	// table only has these (the others are refused).
	Int64 bool
}

// TableDDL is what one statement means for the shard map.
type TableDDL struct {
	Op DDLOp
	// Schema and Name of the created table (DDLCreateTable): Schema is
	// "public" when the statement does not qualify the name; Name is as
	// the parser folds it (unquoted lower case, quoted kept).
	Schema string
	Name   string
	// Temp: a TEMP/TEMPORARY table (or one created in pg_temp): it lives
	// in one session and is not registered; no other field is checked.
	Temp bool
	// IfNotExists: CREATE TABLE IF NOT EXISTS (or DROP TABLE IF EXISTS):
	// the statement may do nothing when it runs; the caller should not
	// overwrite an existing registration on its account.
	IfNotExists bool
	// Sharded: the table has its shard key column; register it sharded by
	// KeyColumn, whose declared type is of family KeyType and which is
	// the KeyOrdinal'th (1-based) column of the table (0 for a partition,
	// whose columns come from its parent: take the parent's). Otherwise
	// (and not Temp) register it as a reference table.
	Sharded    bool
	KeyColumn  string
	KeyType    shardmap.KeyType
	KeyOrdinal int
	// Sequences are the table's sequence-backed columns, in order. For a
	// sharded table they are all 64-bit: pgshard gives each shard its own
	// range of them.
	Sequences []SeqColumn
	// Dropped are the tables a DROP TABLE drops, each "schema.name"
	// ("public.t" for an unqualified t). A temporary table dropped by its
	// unqualified name is indistinguishable here from public's.
	Dropped []string
}

// MapName is the name the shard map uses for a created table: Name for
// one in public, "schema.name" otherwise (see shardmap.Table.Name).
func (d TableDDL) MapName() string {
	if d.Schema == "public" || d.Schema == "" {
		return d.Name
	}
	return d.Schema + "." + d.Name
}

// AnalyzeTableDDL analyses each statement of sql and returns one TableDDL
// per statement, in order (a CREATE SCHEMA with embedded CREATE TABLEs
// yields one per embedded statement instead), or the first refusal:
// SQLSTATE 0A000 naming the constraint, column or table and why. cat
// describes the tables already in the shard map; nil knows none. Text that
// does not parse yields (nil, nil): the backend reports the syntax error.
//
// Refused:
//
//   - CREATE TABLE of a sharded table with a PRIMARY KEY, UNIQUE
//     (column or table constraint) or EXCLUDE constraint that does not
//     include the key column (for EXCLUDE: compared WITH =), a key column
//     of a type other than smallint/integer/bigint/serial kinds, text,
//     varchar or uuid (char(n) is refused: it hashes differently), or a
//     serial/smallserial or integer/smallint identity column;
//   - CREATE TABLE ... INHERITS, (LIKE ...), OF type, and CREATE TABLE AS /
//     SELECT INTO of a non-temporary table: the columns are not in the
//     text. PARTITION OF a sharded parent is a sharded partition with the
//     parent's key; of a reference parent, a reference table; of a parent
//     the map does not know, refused;
//   - CREATE TABLE of a table registered as sharded that lacks its key;
//   - on a sharded table: ALTER TABLE ADD PRIMARY KEY/UNIQUE/EXCLUDE or
//     ADD COLUMN ... PRIMARY KEY/UNIQUE without the key, CREATE UNIQUE
//     INDEX without the key, DROP COLUMN / RENAME COLUMN of the key, ALTER
//     COLUMN TYPE of the key unless to the same type family without USING
//     (integer to bigint keeps every row's hash), ADD COLUMN of a serial or
//     identity column and ALTER COLUMN ADD GENERATED AS IDENTITY (existing
//     rows would be numbered from 1 on every shard);
//   - ALTER TABLE RENAME TO / SET SCHEMA of a table in the map (sharded or
//     reference): the map would name a table that no longer exists;
//   - ALTER TABLE ADD COLUMN of the default key column to a table the map
//     does not know: its existing rows were not placed by the key, and it
//     would not become sharded.
func AnalyzeTableDDL(sql string, cat Catalog) ([]TableDDL, *Error) {
	tree, err := parse(sql)
	if err != nil {
		return nil, nil
	}
	a := ddlAnalyzer{cat: cat}
	var out []TableDDL
	for _, raw := range tree.GetStmts() {
		ds, e := a.stmt(raw.GetStmt(), "public")
		if e != nil {
			return nil, e
		}
		out = append(out, ds...)
	}
	return out, nil
}

type ddlAnalyzer struct{ cat Catalog }

func (a ddlAnalyzer) table(schema, name string) TableInfo {
	if a.cat == nil {
		return TableInfo{}
	}
	return a.cat.Table(schema, name)
}

func ddlRefuse(format string, args ...any) *Error {
	return refuse("pgshard: " + fmt.Sprintf(format, args...))
}

// rangeName resolves a RangeVar's schema (defSchema when unqualified).
func rangeName(rv *pg_query.RangeVar, defSchema string) (schema, name string) {
	schema = rv.GetSchemaname()
	if schema == "" {
		schema = defSchema
	}
	return schema, rv.GetRelname()
}

// shown is a table name for messages: qualified unless in public.
func shown(schema, name string) string {
	if schema == "public" {
		return name
	}
	return schema + "." + name
}

func (a ddlAnalyzer) stmt(n *pg_query.Node, defSchema string) ([]TableDDL, *Error) {
	other := []TableDDL{{Op: DDLOther}}
	switch s := n.GetNode().(type) {
	case *pg_query.Node_CreateStmt:
		d, e := a.create(s.CreateStmt, defSchema)
		if e != nil {
			return nil, e
		}
		return []TableDDL{d}, nil
	case *pg_query.Node_CreateTableAsStmt:
		c := s.CreateTableAsStmt
		if c.GetObjtype() != pg_query.ObjectType_OBJECT_TABLE {
			return other, nil // materialized view
		}
		d, e := a.createAs(c.GetInto(), defSchema, "CREATE TABLE AS")
		if e != nil {
			return nil, e
		}
		d.IfNotExists = c.GetIfNotExists()
		return []TableDDL{d}, nil
	case *pg_query.Node_SelectStmt:
		if into := s.SelectStmt.GetIntoClause(); into != nil {
			d, e := a.createAs(into, defSchema, "SELECT INTO")
			if e != nil {
				return nil, e
			}
			return []TableDDL{d}, nil
		}
	case *pg_query.Node_CreateSeqStmt:
		rv := s.CreateSeqStmt.GetSequence()
		if rv.GetRelpersistence() == "t" || rv.GetSchemaname() == "pg_temp" {
			return other, nil
		}
		schema, name := rangeName(rv, defSchema)
		if e := seqOptions(s.CreateSeqStmt.GetOptions(), shown(schema, name)); e != nil {
			return nil, e
		}
		return []TableDDL{{Op: DDLCreateSequence, Schema: schema, Name: name, IfNotExists: s.CreateSeqStmt.GetIfNotExists()}}, nil
	case *pg_query.Node_AlterSeqStmt:
		schema, name := rangeName(s.AlterSeqStmt.GetSequence(), defSchema)
		if e := seqOptions(s.AlterSeqStmt.GetOptions(), shown(schema, name)); e != nil {
			return nil, e
		}
		return other, nil
	case *pg_query.Node_DropStmt:
		dr := s.DropStmt
		if dr.GetRemoveType() != pg_query.ObjectType_OBJECT_TABLE {
			return other, nil
		}
		d := TableDDL{Op: DDLDropTable, IfNotExists: dr.GetMissingOk()}
		for _, o := range dr.GetObjects() {
			var parts []string
			for _, p := range o.GetList().GetItems() {
				parts = append(parts, p.GetString_().GetSval())
			}
			switch len(parts) {
			case 1:
				d.Dropped = append(d.Dropped, defSchema+"."+parts[0])
			case 2, 3: // [catalog.]schema.name
				d.Dropped = append(d.Dropped, parts[len(parts)-2]+"."+parts[len(parts)-1])
			}
		}
		return []TableDDL{d}, nil
	case *pg_query.Node_AlterTableStmt:
		return other, a.alter(s.AlterTableStmt, defSchema)
	case *pg_query.Node_RenameStmt:
		return other, a.rename(s.RenameStmt, defSchema)
	case *pg_query.Node_AlterObjectSchemaStmt:
		o := s.AlterObjectSchemaStmt
		if o.GetObjectType() == pg_query.ObjectType_OBJECT_TABLE && o.GetRelation() != nil {
			schema, name := rangeName(o.GetRelation(), defSchema)
			if info := a.table(schema, name); info.Kind != TableUnknown {
				return nil, ddlRefuse("cannot move %s table %q to schema %q: the shard map registers it under its current name; register the new name with the admin API instead", kindWord(info.Kind), shown(schema, name), o.GetNewschema())
			}
		}
		return other, nil
	case *pg_query.Node_IndexStmt:
		return other, a.index(s.IndexStmt, defSchema)
	case *pg_query.Node_CreateSchemaStmt:
		cs := s.CreateSchemaStmt
		schema := cs.GetSchemaname()
		if schema == "" {
			schema = cs.GetAuthrole().GetRolename()
		}
		if len(cs.GetSchemaElts()) == 0 {
			return other, nil
		}
		var out []TableDDL
		for _, el := range cs.GetSchemaElts() {
			ds, e := a.stmt(el, schema)
			if e != nil {
				return nil, e
			}
			out = append(out, ds...)
		}
		return out, nil
	}
	return other, nil
}

func kindWord(k TableKind) string {
	if k == TableSharded {
		return "sharded"
	}
	return "reference"
}

// createAs is CREATE TABLE AS / SELECT INTO: only temporary tables.
func (a ddlAnalyzer) createAs(into *pg_query.IntoClause, defSchema, what string) (TableDDL, *Error) {
	rv := into.GetRel()
	schema, name := rangeName(rv, defSchema)
	d := TableDDL{Op: DDLCreateTable, Schema: schema, Name: name}
	if rv.GetRelpersistence() == "t" || schema == "pg_temp" {
		d.Temp = true
		return d, nil
	}
	return d, ddlRefuse("%s cannot create table %q: pgshard cannot tell its columns from the statement, so not whether it is sharded; create it with its columns listed, then INSERT ... SELECT (a temporary table is allowed)", what, shown(schema, name))
}

// ddlColumn is a column of a CREATE TABLE.
type ddlColumn struct {
	def     *pg_query.ColumnDef
	seq     *SeqColumn // sequence-backed
	seqBits int        // its width: 16, 32 or 64
}

func (a ddlAnalyzer) create(cs *pg_query.CreateStmt, defSchema string) (TableDDL, *Error) {
	rv := cs.GetRelation()
	schema, name := rangeName(rv, defSchema)
	tbl := shown(schema, name)
	d := TableDDL{Op: DDLCreateTable, Schema: schema, Name: name, IfNotExists: cs.GetIfNotExists()}
	var cols []ddlColumn
	var cons []*pg_query.Constraint
	like := false
	for _, el := range cs.GetTableElts() {
		switch {
		case el.GetColumnDef() != nil:
			c := ddlColumn{def: el.GetColumnDef()}
			if bits := seqBits(c.def); bits > 0 {
				c.seqBits = bits
				c.seq = &SeqColumn{Column: c.def.GetColname(), Int64: bits == 64}
			}
			cols = append(cols, c)
		case el.GetConstraint() != nil:
			cons = append(cons, el.GetConstraint())
		case el.GetTableLikeClause() != nil:
			like = true
		}
	}
	partition := cs.GetPartbound() != nil
	if !partition {
		for _, c := range cols {
			if c.seq != nil {
				d.Sequences = append(d.Sequences, *c.seq)
			}
		}
	}
	if rv.GetRelpersistence() == "t" || schema == "pg_temp" {
		d.Temp = true
		return d, nil
	}
	info := a.table(schema, name)
	var key string
	switch {
	case partition:
		parents := cs.GetInhRelations()
		if len(parents) != 1 || parents[0].GetRangeVar() == nil {
			return d, ddlRefuse("cannot tell the parent of partition %q", tbl)
		}
		ps, pn := rangeName(parents[0].GetRangeVar(), defSchema)
		pinfo := a.table(ps, pn)
		switch pinfo.Kind {
		case TableUnknown:
			return d, ddlRefuse("cannot create partition %q of %q: the shard map does not know its parent, so pgshard cannot tell whether the partition is sharded; create the parent through pgshard, or register it with the admin API first", tbl, shown(ps, pn))
		case TableReference:
			return d, nil
		}
		if info.Kind == TableReference || info.Kind == TableSharded && info.KeyColumn != "" && info.KeyColumn != pinfo.KeyColumn {
			return d, ddlRefuse("partition %q is registered differently from its sharded parent %q (shard key %q)", tbl, shown(ps, pn), pinfo.KeyColumn)
		}
		d.Sharded, d.KeyColumn, d.KeyType = true, pinfo.KeyColumn, pinfo.KeyType
		for _, c := range cols { // WITH OPTIONS of inherited columns: their constraints
			if e := checkColumnUnique(c.def, d.KeyColumn, name, tbl); e != nil {
				return d, e
			}
		}
		for _, c := range cons {
			if e := checkUnique(c, d.KeyColumn, name, tbl); e != nil {
				return d, e
			}
		}
		return d, nil
	case len(cs.GetInhRelations()) > 0:
		return d, ddlRefuse("CREATE TABLE %q ... INHERITS: pgshard cannot tell the inherited columns from the statement, so not whether the table is sharded; list its columns, or create it on each shard and register it with the admin API", tbl)
	case like:
		return d, ddlRefuse("CREATE TABLE %q (LIKE ...): pgshard cannot tell the copied columns from the statement, so not whether the table is sharded; list its columns instead", tbl)
	case cs.GetOfTypename() != nil:
		return d, ddlRefuse("CREATE TABLE %q OF a type: pgshard cannot tell the columns from the statement, so not whether the table is sharded; list its columns instead", tbl)
	case info.Kind == TableReference:
		return d, refVolatile(cols, tbl)
	case info.Kind == TableSharded && info.KeyColumn != "":
		key = info.KeyColumn
	default:
		key = shardmap.DefaultKeyColumn
	}
	var kc *ddlColumn
	for i := range cols {
		if cols[i].def.GetColname() == key {
			kc = &cols[i]
			d.KeyOrdinal = i + 1
			break
		}
	}
	if kc == nil {
		if info.Kind == TableSharded {
			return d, ddlRefuse("table %q is registered as sharded by %q, but the statement creates it without that column", tbl, key)
		}
		return d, refVolatile(cols, tbl) // a reference table
	}
	kt, ok := keyTypeOf(kc.def.GetTypeName())
	if !ok {
		return d, ddlRefuse("shard key column %q of table %q has type %s: pgshard places rows only by smallint, integer, bigint, text, varchar or uuid keys", key, tbl, typeString(kc.def.GetTypeName()))
	}
	d.Sharded, d.KeyColumn, d.KeyType = true, key, kt
	for _, c := range cols {
		if c.seq != nil && c.seqBits < 64 {
			return d, ddlRefuse("column %q of sharded table %q is a %d-bit sequence: use bigserial or bigint GENERATED ... AS IDENTITY: pgshard gives each shard its own range of 64-bit values", c.def.GetColname(), tbl, c.seqBits)
		}
		if e := checkColumnUnique(c.def, key, name, tbl); e != nil {
			return d, e
		}
	}
	for _, c := range cons {
		if e := checkUnique(c, key, name, tbl); e != nil {
			return d, e
		}
	}
	return d, nil
}

// seqOptions refuses the options of CREATE or ALTER SEQUENCE that would
// undo the range pgshard gives each shard's copy of a sequence (or of a
// serial column's): bounds, start, restart, a descending or cycling
// sequence, a type narrower than bigint.
func seqOptions(opts []*pg_query.Node, seq string) *Error {
	for _, o := range opts {
		d := o.GetDefElem()
		switch d.GetDefname() {
		case "minvalue", "maxvalue", "start", "restart", "cycle":
			return ddlRefuse("sequence %q: %s is not supported: pgshard gives each shard's copy of a sequence its own range of 64-bit values (unique across shards, not dense)", seq, strings.ToUpper(d.GetDefname()))
		case "as":
			if t := typeString(d.GetArg().GetTypeName()); t != "bigint" && t != "int8" {
				return ddlRefuse("sequence %q AS %s is not supported: pgshard gives each shard's copy of a sequence its own range of 64-bit values; use bigint", seq, t)
			}
		case "increment":
			if v := d.GetArg(); v.GetInteger() != nil && v.GetInteger().GetIval() <= 0 || v.GetFloat() != nil && strings.HasPrefix(v.GetFloat().GetFval(), "-") {
				return ddlRefuse("sequence %q: a descending sequence is not supported: pgshard gives each shard's copy of a sequence its own ascending range of values", seq)
			}
		}
	}
	return nil
}

// refVolatile refuses a reference table's column whose values would
// differ between its copies: one filled from a sequence (serial, identity,
// DEFAULT nextval(…): every shard advances its own copy of the sequence as
// the writes reach it, so concurrent inserts number the rows differently),
// or with a DEFAULT that is random or reads the clock (each shard
// evaluates it).
func refVolatile(cols []ddlColumn, tbl string) *Error {
	for _, c := range cols {
		if e := refColumn(c.def, tbl); e != nil {
			return e
		}
	}
	return nil
}

func refColumn(c *pg_query.ColumnDef, tbl string) *Error {
	if seqBits(c) > 0 {
		return refVolatileError(c.GetColname(), tbl, "a sequence")
	}
	for _, n := range c.GetConstraints() {
		if con := n.GetConstraint(); con.GetContype() == pg_query.ConstrType_CONSTR_DEFAULT {
			if f := VolatileCall(con.GetRawExpr()); f != "" {
				return refVolatileError(c.GetColname(), tbl, f)
			}
		}
	}
	return nil
}

func refVolatileError(col, tbl, what string) *Error {
	return ddlRefuse("column %q of reference table %q takes its values from %s, which each shard would evaluate on its own, so the table's copies would differ; give the values explicitly in the writes (the same literal reaches every shard)", col, tbl, what)
}

// volatile are functions whose value differs from one shard to the next
// within one write: sequences, random values, clocks.
var volatile = map[string]bool{
	"nextval": true, "setval": true, "gen_random_uuid": true, "uuid_generate_v1": true, "uuid_generate_v1mc": true,
	"uuid_generate_v4": true, "random": true, "random_normal": true, "clock_timestamp": true,
	"statement_timestamp": true, "transaction_timestamp": true, "now": true, "timeofday": true,
	"txid_current": true, "pg_current_xact_id": true,
}

// VolatileCall returns, as a client would read it, a call in n whose value
// would differ between shards ("" when none): see volatile, and
// CURRENT_TIMESTAMP and the other clock keywords.
func VolatileCall(n *pg_query.Node) string {
	if n == nil {
		return ""
	}
	found := ""
	anyNode(n, func(m protoreflect.Message) (bool, bool) {
		switch v := m.Interface().(type) {
		case *pg_query.FuncCall:
			if name := funcName(v); volatile[name] {
				found = name + "()"
			}
		case *pg_query.SQLValueFunction:
			if v.Op != pg_query.SQLValueFunctionOp_SVFOP_CURRENT_USER && v.Op != pg_query.SQLValueFunctionOp_SVFOP_CURRENT_ROLE &&
				v.Op != pg_query.SQLValueFunctionOp_SVFOP_SESSION_USER && v.Op != pg_query.SQLValueFunctionOp_SVFOP_USER &&
				v.Op != pg_query.SQLValueFunctionOp_SVFOP_CURRENT_CATALOG && v.Op != pg_query.SQLValueFunctionOp_SVFOP_CURRENT_SCHEMA {
				found = "the clock (" + strings.TrimPrefix(v.Op.String(), "SVFOP_") + ")"
			}
		}
		return found != "", true
	})
	return found
}

// seqBits is the width of a sequence-backed column (serial kinds or an
// identity column), 0 for any other.
func seqBits(c *pg_query.ColumnDef) int {
	tn := c.GetTypeName()
	if names := tn.GetNames(); len(names) == 1 && len(tn.GetArrayBounds()) == 0 && !tn.GetPctType() {
		switch names[0].GetString_().GetSval() {
		case "smallserial", "serial2":
			return 16
		case "serial", "serial4":
			return 32
		case "bigserial", "serial8":
			return 64
		}
	}
	for _, n := range c.GetConstraints() {
		if n.GetConstraint().GetContype() == pg_query.ConstrType_CONSTR_IDENTITY {
			return identityBits(tn)
		}
	}
	return 0
}

// identityBits is the width of an identity column of type tn (64 for a
// type that is not an integer: PostgreSQL refuses it anyway).
func identityBits(tn *pg_query.TypeName) int {
	switch typeBase(tn) {
	case "int2":
		return 16
	case "int4":
		return 32
	}
	return 64
}

// typeBase is the type's name when it is a built-in scalar (unqualified or
// in pg_catalog), else "".
func typeBase(tn *pg_query.TypeName) string {
	names := tn.GetNames()
	if len(tn.GetArrayBounds()) > 0 || tn.GetPctType() || tn.GetSetof() || len(names) == 0 || len(names) > 2 {
		return ""
	}
	if len(names) == 2 && names[0].GetString_().GetSval() != "pg_catalog" {
		return ""
	}
	return names[len(names)-1].GetString_().GetSval()
}

// keyTypeOf maps a declared column type to its key type family.
func keyTypeOf(tn *pg_query.TypeName) (shardmap.KeyType, bool) {
	base := typeBase(tn)
	switch base {
	case "int2", "int4", "int8":
		return shardmap.KeyInt, true
	case "text", "varchar":
		return shardmap.KeyText, true
	case "uuid":
		return shardmap.KeyUUID, true
	}
	if len(tn.GetNames()) == 1 { // serial kinds are only recognised unqualified
		switch base {
		case "smallserial", "serial2", "serial", "serial4", "bigserial", "serial8":
			return shardmap.KeyInt, true
		}
	}
	return 0, false
}

// typeString renders a declared type for messages.
func typeString(tn *pg_query.TypeName) string {
	var parts []string
	for _, n := range tn.GetNames() {
		parts = append(parts, n.GetString_().GetSval())
	}
	if len(parts) == 2 && parts[0] == "pg_catalog" {
		parts = parts[1:]
	}
	s := strings.Join(parts, ".")
	switch s {
	case "bpchar":
		s = "character"
	case "varbit":
		s = "bit varying"
	}
	if tn.GetPctType() {
		s += "%TYPE"
	}
	for range tn.GetArrayBounds() {
		s += "[]"
	}
	return s
}

// checkColumnUnique checks a column's own PRIMARY KEY / UNIQUE: only one
// on the key column itself includes the key. relname is the table's own
// name, for the constraint names PostgreSQL would choose.
func checkColumnUnique(c *pg_query.ColumnDef, key, relname, tbl string) *Error {
	if c.GetColname() == key {
		return nil
	}
	for _, n := range c.GetConstraints() {
		con := n.GetConstraint()
		switch con.GetContype() {
		case pg_query.ConstrType_CONSTR_PRIMARY:
			return uniqueRefusal("primary key", con.GetConname(), relname+"_pkey", tbl, key)
		case pg_query.ConstrType_CONSTR_UNIQUE:
			return uniqueRefusal("unique constraint", con.GetConname(), relname+"_"+c.GetColname()+"_key", tbl, key)
		}
	}
	return nil
}

func uniqueRefusal(what, name, dflt, tbl, key string) *Error {
	if name == "" {
		name = dflt
	}
	return ddlRefuse("%s %s on sharded table %q does not include the shard key %q: it cannot be enforced across shards", what, quoteIdent(name), tbl, key)
}

// checkUnique checks a table constraint: PRIMARY KEY and UNIQUE must list
// the key column, EXCLUDE must compare it WITH =. relname is the table's
// own name, for the constraint names PostgreSQL would choose.
func checkUnique(con *pg_query.Constraint, key, relname, tbl string) *Error {
	var what, suffix string
	var cols []string
	has := false
	switch con.GetContype() {
	case pg_query.ConstrType_CONSTR_PRIMARY, pg_query.ConstrType_CONSTR_UNIQUE:
		if con.GetIndexname() != "" {
			// ADD ... USING INDEX: the index was checked when it was
			// created through pgshard.
			return nil
		}
		what, suffix = "unique constraint", "key"
		if con.GetContype() == pg_query.ConstrType_CONSTR_PRIMARY {
			what, suffix = "primary key", "pkey"
		}
		for _, k := range con.GetKeys() {
			c := k.GetString_().GetSval()
			cols = append(cols, c)
			has = has || c == key
		}
	case pg_query.ConstrType_CONSTR_EXCLUSION:
		what, suffix = "exclusion constraint", "excl"
		for _, ex := range con.GetExclusions() {
			items := ex.GetList().GetItems()
			if len(items) != 2 {
				continue
			}
			el := items[0].GetIndexElem()
			c := el.GetName()
			if c == "" {
				c = "expr"
			}
			cols = append(cols, c)
			ops := items[1].GetList().GetItems()
			if el.GetName() == key && len(ops) > 0 && ops[len(ops)-1].GetString_().GetSval() == "=" {
				has = true
			}
		}
	default:
		return nil
	}
	if has {
		return nil
	}
	dflt := relname + "_pkey"
	if suffix != "pkey" {
		dflt = relname + "_" + strings.Join(cols, "_") + "_" + suffix
	}
	if what == "exclusion constraint" {
		name := con.GetConname()
		if name == "" {
			name = dflt
		}
		return ddlRefuse("exclusion constraint %s on sharded table %q does not compare the shard key %q with =: it cannot be enforced across shards", quoteIdent(name), tbl, key)
	}
	return uniqueRefusal(what, con.GetConname(), dflt, tbl, key)
}

func quoteIdent(s string) string { return `"` + s + `"` }

func (a ddlAnalyzer) alter(st *pg_query.AlterTableStmt, defSchema string) *Error {
	if st.GetObjtype() != pg_query.ObjectType_OBJECT_TABLE || st.GetRelation() == nil {
		return nil
	}
	schema, name := rangeName(st.GetRelation(), defSchema)
	tbl := shown(schema, name)
	info := a.table(schema, name)
	key := info.KeyColumn
	sharded := info.Kind == TableSharded && key != ""
	for _, n := range st.GetCmds() {
		cmd := n.GetAlterTableCmd()
		switch cmd.GetSubtype() {
		case pg_query.AlterTableType_AT_AddColumn:
			cd := cmd.GetDef().GetColumnDef()
			if info.Kind == TableReference {
				if e := refColumn(cd, tbl); e != nil {
					return e
				}
			}
			if !sharded {
				if info.Kind == TableUnknown && cd.GetColname() == shardmap.DefaultKeyColumn {
					return ddlRefuse("cannot add the shard key column %q to table %q, which is not sharded: its existing rows are not placed by the key, and it would not become sharded; create a new table with the column and copy the rows into it", cd.GetColname(), tbl)
				}
				continue
			}
			if bits := seqBits(cd); bits > 0 {
				return ddlRefuse("cannot add sequence column %q to sharded table %q: its existing rows would be numbered from 1 on every shard; add a bigint column instead and fill it", cd.GetColname(), tbl)
			}
			if e := checkColumnUnique(cd, key, name, tbl); e != nil {
				return e
			}
		case pg_query.AlterTableType_AT_AddConstraint:
			if sharded {
				if e := checkUnique(cmd.GetDef().GetConstraint(), key, name, tbl); e != nil {
					return e
				}
			}
		case pg_query.AlterTableType_AT_ColumnDefault:
			if f := VolatileCall(cmd.GetDef()); info.Kind == TableReference && f != "" {
				return refVolatileError(cmd.GetName(), tbl, f)
			}
		case pg_query.AlterTableType_AT_AddIdentity:
			if info.Kind == TableReference {
				return refVolatileError(cmd.GetName(), tbl, "a sequence")
			}
			if sharded {
				return ddlRefuse("cannot make column %q of sharded table %q an identity column: its existing rows would be numbered from 1 on every shard", cmd.GetName(), tbl)
			}
		case pg_query.AlterTableType_AT_DropColumn:
			if sharded && cmd.GetName() == key {
				return ddlRefuse("cannot drop the shard key column %q of sharded table %q: the placement of its rows depends on it", key, tbl)
			}
		case pg_query.AlterTableType_AT_AlterColumnType:
			if !sharded || cmd.GetName() != key {
				continue
			}
			cd := cmd.GetDef().GetColumnDef()
			kt, ok := keyTypeOf(cd.GetTypeName())
			if !ok || kt != info.KeyType || cd.GetRawDefault() != nil {
				return ddlRefuse("cannot change the type of the shard key column %q of sharded table %q to %s: the placement of its rows depends on it (only a change within its type family, without USING, keeps every row on its shard)", key, tbl, typeString(cd.GetTypeName()))
			}
		}
	}
	return nil
}

func (a ddlAnalyzer) rename(r *pg_query.RenameStmt, defSchema string) *Error {
	if r.GetRelation() == nil {
		return nil
	}
	switch {
	case r.GetRenameType() == pg_query.ObjectType_OBJECT_TABLE:
		schema, name := rangeName(r.GetRelation(), defSchema)
		if info := a.table(schema, name); info.Kind != TableUnknown {
			return ddlRefuse("cannot rename %s table %q: the shard map registers it under its current name", kindWord(info.Kind), shown(schema, name))
		}
	case r.GetRenameType() == pg_query.ObjectType_OBJECT_COLUMN && r.GetRelationType() == pg_query.ObjectType_OBJECT_TABLE:
		schema, name := rangeName(r.GetRelation(), defSchema)
		if info := a.table(schema, name); info.Kind == TableSharded && r.GetSubname() == info.KeyColumn {
			return ddlRefuse("cannot rename the shard key column %q of sharded table %q: the placement of its rows depends on it", info.KeyColumn, shown(schema, name))
		}
	}
	return nil
}

func (a ddlAnalyzer) index(ix *pg_query.IndexStmt, defSchema string) *Error {
	if !ix.GetUnique() && !ix.GetPrimary() || ix.GetRelation() == nil {
		return nil
	}
	schema, name := rangeName(ix.GetRelation(), defSchema)
	info := a.table(schema, name)
	if info.Kind != TableSharded || info.KeyColumn == "" {
		return nil
	}
	var cols []string
	for _, p := range ix.GetIndexParams() {
		el := p.GetIndexElem()
		if el.GetName() == info.KeyColumn {
			return nil
		}
		c := el.GetName()
		if c == "" {
			c = "expr"
		}
		cols = append(cols, c)
	}
	idx := ix.GetIdxname()
	if idx == "" {
		idx = name + "_" + strings.Join(cols, "_") + "_idx"
	}
	return ddlRefuse("unique index %s on sharded table %q does not include the shard key %q: it cannot be enforced across shards", quoteIdent(idx), shown(schema, name), info.KeyColumn)
}
