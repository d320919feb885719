package resharder

import (
	"cmp"
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgshard/pgshard/shardmap"
)

// copySchema creates the tables on a new shard (tgt) as they are on src,
// read from src's catalogs: columns with their types, collations,
// defaults, identity and generated expressions, NOT NULL, then
// constraints, indexes and the replica identity, then foreign keys; the
// sequences of sharded tables are moved to the target's range
// (shardmap.SequenceRange), and so are the sequences of their own that the
// proxy placed (copySequences). Every step skips what exists, so a step can be
// redone after a crash.
func (r *Runner) copySchema(ctx context.Context, src, tgt *pgx.Conn, sharded, reference []shardmap.Table, source, target string) error {
	type tbl struct {
		t       shardmap.Table
		oid     uint32
		schema  string
		qname   string
		sharded bool
	}
	var all, missing []tbl
	for i, t := range append(append([]shardmap.Table(nil), sharded...), reference...) {
		var x tbl
		x.t, x.sharded = t, i < len(sharded)
		var schema, name string
		if err := src.QueryRow(ctx, `SELECT c.oid, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass($1)`,
			quoteIdent(t.Name)).Scan(&x.oid, &schema, &name); err != nil {
			return fmt.Errorf("schema of %s on the source: %w", t.Name, err)
		}
		x.schema, x.qname = schema, quoteName(schema)+"."+quoteName(name)
		all = append(all, x)
		var exists bool
		if err := tgt.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", x.qname).Scan(&exists); err != nil {
			return err
		}
		if !exists {
			missing = append(missing, x)
		}
	}
	// A table whose columns use another moved table's row type waits for
	// that table: tables are created in passes until one creates none.
	for len(missing) > 0 {
		var later []tbl
		var first error
		for _, x := range missing {
			if err := createTable(ctx, src, tgt, x.oid, x.schema, x.qname, x.t.Name, target); err != nil {
				later = append(later, x)
				first = cmp.Or(first, err)
			}
		}
		if len(later) == len(missing) {
			return first
		}
		missing = later
	}
	// Constraints other than foreign keys, then indexes and replica identity.
	for _, x := range all {
		if err := copyConstraints(ctx, src, tgt, x.oid, x.qname, false); err != nil {
			return err
		}
		rows, err := src.Query(ctx, `SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i
WHERE i.indrelid = $1 AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.contype IN ('p','u','x'))
ORDER BY i.indexrelid`, x.oid)
		if err != nil {
			return err
		}
		defs, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		for _, def := range defs {
			def = strings.Replace(def, "CREATE UNIQUE INDEX ", "CREATE UNIQUE INDEX IF NOT EXISTS ", 1)
			def = strings.Replace(def, "CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1)
			if err := exec(ctx, tgt, def); err != nil {
				return err
			}
		}
		var ident string
		var identIdx *string
		if err := src.QueryRow(ctx, `SELECT c.relreplident::text, (SELECT quote_ident(ic.relname) FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid WHERE i.indrelid = c.oid AND i.indisreplident)
FROM pg_class c WHERE c.oid = $1`, x.oid).Scan(&ident, &identIdx); err != nil {
			return err
		}
		switch {
		case ident == "f":
			err = exec(ctx, tgt, "ALTER TABLE "+x.qname+" REPLICA IDENTITY FULL")
		case ident == "i" && identIdx != nil:
			err = exec(ctx, tgt, "ALTER TABLE "+x.qname+" REPLICA IDENTITY USING INDEX "+*identIdx)
		}
		if err != nil {
			return err
		}
	}
	for _, x := range all {
		if err := copyConstraints(ctx, src, tgt, x.oid, x.qname, true); err != nil {
			return err
		}
		if err := copyPolicies(ctx, src, tgt, x.oid, x.qname); err != nil {
			return fmt.Errorf("row security of %s: %w", x.t.Name, err)
		}
		if err := copyTriggers(ctx, src, tgt, x.oid); err != nil {
			return fmt.Errorf("triggers of %s: %w", x.t.Name, err)
		}
	}
	// Sequences: a sharded table's take the target's range (unless they
	// already do); a reference table's continue from the source's value.
	// A sharded table's sequence not placed in its source's range (e.g. an
	// integer one, too narrow for it) is left as the source has it.
	lo, hi := shardmap.SequenceRange(target)
	srcLo, _ := shardmap.SequenceRange(source)
	for _, x := range all {
		rows, err := src.Query(ctx, `SELECT a.attname, q.seq, ps.last_value, ps.min_value = $3
FROM pg_attribute a
CROSS JOIN LATERAL (SELECT pg_get_serial_sequence($2, a.attname) AS seq) q
LEFT JOIN pg_sequences ps ON q.seq IS NOT NULL AND format('%I.%I', ps.schemaname, ps.sequencename)::regclass = q.seq::regclass
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND q.seq IS NOT NULL`, x.oid, x.qname, srcLo)
		if err != nil {
			return err
		}
		type seq struct {
			col, name string
			last      *int64
			placed    *bool // the source's sequence is in the source's range
		}
		seqs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (seq, error) {
			var s seq
			err := row.Scan(&s.col, &s.name, &s.last, &s.placed)
			return s, err
		})
		if err != nil {
			return fmt.Errorf("sequences of %s: %w", x.t.Name, err)
		}
		for _, s := range seqs {
			var sql string
			if x.sharded && s.placed != nil && *s.placed {
				sql = fmt.Sprintf(`DO $pgshard$DECLARE s text := pg_catalog.pg_get_serial_sequence(%s, %s); BEGIN
IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_sequence WHERE seqrelid = s::regclass AND seqmin = %d AND seqmax = %d) THEN
EXECUTE pg_catalog.format('ALTER SEQUENCE %%s MINVALUE %d MAXVALUE %d START WITH %d RESTART WITH %d', s);
END IF; END$pgshard$`, quoteLiteral(x.qname), quoteLiteral(s.col), lo, hi, lo, hi, lo, lo)
			} else if !x.sharded && s.last != nil {
				sql = fmt.Sprintf("SELECT setval(pg_get_serial_sequence(%s, %s), %d, true)", quoteLiteral(x.qname), quoteLiteral(s.col), *s.last)
			} else {
				continue
			}
			if err := exec(ctx, tgt, sql); err != nil {
				return fmt.Errorf("sequence %s on %s: %w", s.name, target, err)
			}
		}
	}
	return copySequences(ctx, src, tgt, source, target)
}

// copySequences creates on tgt, in the target's range, the sequences the
// proxy placed in the source's range that no column owns (CREATE SEQUENCE
// sent through pgshard), with their owner, increment, cache and the
// privileges granted on them. One that exists on tgt is left as it is, so
// the step can be redone after a crash; each is created in one
// transaction.
func copySequences(ctx context.Context, src, tgt *pgx.Conn, source, target string) error {
	srcLo, srcHi := shardmap.SequenceRange(source)
	lo, hi := shardmap.SequenceRange(target)
	rows, err := src.Query(ctx, `SELECT format('%I.%I', n.nspname, c.relname), quote_ident(n.nspname), quote_ident(pg_get_userbyid(n.nspowner)),
  quote_ident(pg_get_userbyid(c.relowner)), q.seqincrement, q.seqcache
FROM pg_sequence q JOIN pg_class c ON c.oid = q.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE q.seqmin = $1 AND q.seqmax = $2 AND q.seqtypid = 'int8'::regtype AND NOT q.seqcycle
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
    AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))
ORDER BY 1`, srcLo, srcHi)
	if err != nil {
		return err
	}
	type seq struct {
		qname, schema, nspOwner, owner string
		increment, cache               int64
	}
	seqs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (seq, error) {
		var s seq
		err := row.Scan(&s.qname, &s.schema, &s.nspOwner, &s.owner, &s.increment, &s.cache)
		return s, err
	})
	if err != nil {
		return fmt.Errorf("sequences on %s: %w", source, err)
	}
	for _, s := range seqs {
		var exists bool
		if err := tgt.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", s.qname).Scan(&exists); err != nil {
			return err
		}
		if exists {
			continue
		}
		grants, err := grantsOn(ctx, src, s.qname)
		if err != nil {
			return err
		}
		stmts := []string{"BEGIN", fmt.Sprintf("CREATE SCHEMA IF NOT EXISTS %s AUTHORIZATION %s", s.schema, s.nspOwner),
			fmt.Sprintf("CREATE SEQUENCE %s AS bigint INCREMENT BY %d MINVALUE %d MAXVALUE %d START WITH %d CACHE %d", s.qname, s.increment, lo, hi, lo, s.cache)}
		stmts = append(append(stmts, grants...), fmt.Sprintf("ALTER SEQUENCE %s OWNER TO %s", s.qname, s.owner), "COMMIT")
		if err := exec(ctx, tgt, strings.Join(stmts, "; ")); err != nil {
			return fmt.Errorf("sequence %s on %s: %w", s.qname, target, err)
		}
	}
	return nil
}

// tableDDL renders CREATE TABLE (with the owned sequences of serial columns
// before it and their OWNED BY after it, then the privileges granted on
// them, the owner, and the comments on the table and its columns) from the
// source's catalogs.
func tableDDL(ctx context.Context, src *pgx.Conn, oid uint32, schema, qname string) (string, error) {
	var b strings.Builder
	var nspOwner string
	if err := src.QueryRow(ctx, "SELECT quote_ident(pg_get_userbyid(nspowner)) FROM pg_namespace WHERE nspname = $1", schema).Scan(&nspOwner); err != nil {
		return "", err
	}
	fmt.Fprintf(&b, "CREATE SCHEMA IF NOT EXISTS %s AUTHORIZATION %s; ", quoteName(schema), nspOwner)
	// Sequences owned by a column but not an identity's (serial columns).
	rows, err := src.Query(ctx, `SELECT format('%I.%I', sn.nspname, s.relname), format_type(q.seqtypid, NULL), q.seqincrement, q.seqmin, q.seqmax, q.seqstart, q.seqcache, q.seqcycle, quote_ident(a.attname)
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_sequence q ON q.seqrelid = s.oid
JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = $1 AND d.deptype = 'a'`, oid)
	if err != nil {
		return "", err
	}
	var owned, seqs []string
	for rows.Next() {
		var name, typ, col string
		var inc, mn, mx, start, cache int64
		var cycle bool
		if err := rows.Scan(&name, &typ, &inc, &mn, &mx, &start, &cache, &cycle, &col); err != nil {
			rows.Close()
			return "", err
		}
		cyc := "NO CYCLE"
		if cycle {
			cyc = "CYCLE"
		}
		fmt.Fprintf(&b, "CREATE SEQUENCE IF NOT EXISTS %s AS %s INCREMENT %d MINVALUE %d MAXVALUE %d START %d CACHE %d %s; ", name, typ, inc, mn, mx, start, cache, cyc)
		owned = append(owned, fmt.Sprintf("ALTER SEQUENCE %s OWNED BY %s.%s", name, qname, col))
		seqs = append(seqs, name)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return "", err
	}
	rows, err = src.Query(ctx, `SELECT quote_ident(a.attname), format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity::text, a.attgenerated::text,
  pg_get_expr(ad.adbin, ad.adrelid),
  (SELECT format('%I.%I', cn.nspname, co.collname) FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace
   WHERE co.oid = a.attcollation AND a.attcollation <> t.typcollation)
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum`, oid)
	if err != nil {
		return "", err
	}
	var cols []string
	for rows.Next() {
		var name, typ, ident, gen string
		var notNull bool
		var def, coll *string
		if err := rows.Scan(&name, &typ, &notNull, &ident, &gen, &def, &coll); err != nil {
			rows.Close()
			return "", err
		}
		c := name + " " + typ
		if coll != nil {
			c += " COLLATE " + *coll
		}
		switch {
		case gen == "s" && def != nil:
			c += " GENERATED ALWAYS AS (" + *def + ") STORED"
		case ident == "a":
			c += " GENERATED ALWAYS AS IDENTITY"
		case ident == "d":
			c += " GENERATED BY DEFAULT AS IDENTITY"
		case def != nil:
			c += " DEFAULT " + *def
		}
		if notNull {
			c += " NOT NULL"
		}
		cols = append(cols, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return "", err
	}
	fmt.Fprintf(&b, "CREATE TABLE %s (%s)", qname, strings.Join(cols, ", "))
	var owner string
	if err := src.QueryRow(ctx, "SELECT quote_ident(pg_get_userbyid(relowner)) FROM pg_class WHERE oid = $1", oid).Scan(&owner); err != nil {
		return "", err
	}
	// The owner (a cluster-wide role: it must exist on the target) also
	// becomes the owned sequences' owner.
	owned = append(owned, fmt.Sprintf("ALTER TABLE %s OWNER TO %s", qname, owner))
	// Then the privileges granted on the table and its owned sequences: a
	// superuser's or the owner's GRANT records the owner as grantor, as on
	// the source (granted before the owner changes, a grant to the role
	// running the job would become the owner's).
	for _, obj := range append([]string{qname}, seqs...) {
		grants, err := grantsOn(ctx, src, obj)
		if err != nil {
			return "", err
		}
		owned = append(owned, grants...)
	}
	// Comments on the table and its columns.
	rows, err = src.Query(ctx, `SELECT CASE WHEN d.objsubid = 0 THEN format('COMMENT ON TABLE %s IS %L', $2::text, d.description)
  ELSE format('COMMENT ON COLUMN %s.%I IS %L', $2::text, a.attname, d.description) END
FROM pg_description d LEFT JOIN pg_attribute a ON a.attrelid = d.objoid AND a.attnum = d.objsubid
WHERE d.objoid = $1 AND d.classoid = 'pg_class'::regclass AND (d.objsubid = 0 OR a.attnum > 0 AND NOT a.attisdropped)
ORDER BY d.objsubid`, oid, qname)
	if err != nil {
		return "", err
	}
	comments, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return "", err
	}
	owned = append(owned, comments...)
	for _, o := range owned {
		b.WriteString("; " + o)
	}
	return b.String(), nil
}

// createTable creates the table (oid on src) on tgt with the types of its
// columns.
func createTable(ctx context.Context, src, tgt *pgx.Conn, oid uint32, schema, qname, name, target string) error {
	if err := copyTypes(ctx, src, tgt, oid); err != nil {
		return fmt.Errorf("column types of %s on %s: %w", name, target, err)
	}
	ddl, err := tableDDL(ctx, src, oid, schema, qname)
	if err != nil {
		return fmt.Errorf("schema of %s: %w", name, err)
	}
	if err := exec(ctx, tgt, "BEGIN; "+ddl+"; COMMIT"); err != nil {
		_, _ = tgt.Exec(ctx, "ROLLBACK")
		return fmt.Errorf("create %s on %s: %w", name, target, err)
	}
	return nil
}

// copyTypes creates on tgt the user-defined types of the table's columns
// (and of their arrays, a composite's attributes, a range's subtype, a
// domain's base type, recursively) that tgt lacks, dependencies first: an
// extension's type by creating the extension (in the schema it has on
// src), an enum with its labels in order, a domain with its base type,
// default, NOT NULL and checks, a composite type with its attributes, a
// range type with its subtype, operator class, collation, difference
// function and multirange name, each with its owner. Types it cannot
// create (a table's row type, until copySchema has created that table; a
// base type not from an extension; a range with a canonical function)
// fail the step naming the type.
func copyTypes(ctx context.Context, src, tgt *pgx.Conn, oid uint32) error {
	rows, err := src.Query(ctx, `WITH RECURSIVE deps(typ, depth) AS (
  SELECT a.atttypid, 0 FROM pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL
  SELECT x.typ, d.depth + 1 FROM deps d JOIN pg_type t ON t.oid = d.typ
  CROSS JOIN LATERAL (
    SELECT t.typelem WHERE t.typcategory = 'A' AND t.typelem <> 0
    UNION ALL SELECT t.typbasetype WHERE t.typtype = 'd'
    UNION ALL SELECT a.atttypid FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid AND c.relkind = 'c'
      WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL SELECT r.rngsubtype FROM pg_range r WHERE t.typtype = 'r' AND r.rngtypid = t.oid
    UNION ALL SELECT r.rngtypid FROM pg_range r WHERE t.typtype = 'm' AND r.rngmultitypid = t.oid
  ) x(typ)
  WHERE d.depth < 20
)
SELECT format('%I.%I', n.nspname, t.typname), t.typtype::text, quote_ident(n.nspname), quote_ident(pg_get_userbyid(n.nspowner)), quote_ident(pg_get_userbyid(t.typowner)),
  (SELECT format('%I WITH SCHEMA %I', e.extname, en.nspname) FROM pg_depend dp JOIN pg_extension e ON e.oid = dp.refobjid JOIN pg_namespace en ON en.oid = e.extnamespace
   WHERE dp.classid = 'pg_type'::regclass AND dp.objid = t.oid AND dp.refclassid = 'pg_extension'::regclass AND dp.deptype = 'e'),
  (SELECT string_agg(quote_literal(enumlabel), ', ' ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = t.oid),
  CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END, t.typdefault, t.typnotnull,
  (SELECT string_agg(format('CONSTRAINT %I %s', conname, pg_get_constraintdef(c.oid)), ' ' ORDER BY conname) FROM pg_constraint c WHERE c.contypid = t.oid),
  (SELECT string_agg(format('%I %s', a.attname, format_type(a.atttypid, a.atttypmod))
      || coalesce((SELECT format(' COLLATE %I.%I', cn.nspname, co.collname) FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace
         WHERE co.oid = a.attcollation AND a.attcollation <> at.typcollation), ''), ', ' ORDER BY a.attnum)
   FROM pg_attribute a JOIN pg_type at ON at.oid = a.atttypid JOIN pg_class c ON c.oid = a.attrelid AND c.relkind = 'c'
   WHERE t.typtype = 'c' AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped),
  (SELECT CASE WHEN r.rngcanonical = 0 THEN concat_ws(', ', 'SUBTYPE = ' || format_type(r.rngsubtype, NULL),
      (SELECT format('SUBTYPE_OPCLASS = %I.%I', ocn.nspname, oc.opcname) FROM pg_opclass oc JOIN pg_namespace ocn ON ocn.oid = oc.opcnamespace WHERE oc.oid = r.rngsubopc AND NOT oc.opcdefault),
      (SELECT format('COLLATION = %I.%I', cn.nspname, co.collname) FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace JOIN pg_type st ON st.oid = r.rngsubtype
       WHERE co.oid = r.rngcollation AND r.rngcollation <> st.typcollation),
      CASE WHEN r.rngsubdiff <> 0 THEN 'SUBTYPE_DIFF = ' || r.rngsubdiff::regproc::text END,
      (SELECT format('MULTIRANGE_TYPE_NAME = %I.%I', mn.nspname, m.typname) FROM pg_type m JOIN pg_namespace mn ON mn.oid = m.typnamespace WHERE m.oid = r.rngmultitypid)) END
   FROM pg_range r WHERE t.typtype = 'r' AND r.rngtypid = t.oid)
FROM (SELECT typ, max(depth) AS depth FROM deps GROUP BY typ) d JOIN pg_type t ON t.oid = d.typ JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND t.typcategory <> 'A' AND t.typtype <> 'm'
ORDER BY d.depth DESC, 1`, oid)
	if err != nil {
		return err
	}
	type typ struct {
		name, kind, schema, nspOwner, owner string
		ext, labels, base, def              *string
		notNull                             bool
		checks, attrs, rng                  *string
	}
	types, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (typ, error) {
		var t typ
		err := row.Scan(&t.name, &t.kind, &t.schema, &t.nspOwner, &t.owner, &t.ext, &t.labels, &t.base, &t.def, &t.notNull, &t.checks, &t.attrs, &t.rng)
		return t, err
	})
	if err != nil {
		return err
	}
	for _, t := range types {
		var exists bool
		if err := tgt.QueryRow(ctx, "SELECT to_regtype($1) IS NOT NULL", t.name).Scan(&exists); err != nil {
			return err
		}
		if exists {
			continue
		}
		var ddl string
		switch {
		case t.ext != nil:
			ddl = "CREATE EXTENSION IF NOT EXISTS " + *t.ext
		case t.kind == "e" && t.labels != nil:
			ddl = fmt.Sprintf("CREATE TYPE %s AS ENUM (%s)", t.name, *t.labels)
		case t.kind == "e":
			ddl = fmt.Sprintf("CREATE TYPE %s AS ENUM ()", t.name)
		case t.kind == "d" && t.base != nil:
			ddl = fmt.Sprintf("CREATE DOMAIN %s AS %s", t.name, *t.base)
			if t.def != nil {
				ddl += " DEFAULT " + *t.def
			}
			if t.notNull {
				ddl += " NOT NULL"
			}
			if t.checks != nil {
				ddl += " " + *t.checks
			}
		case t.kind == "c" && t.attrs != nil:
			ddl = fmt.Sprintf("CREATE TYPE %s AS (%s)", t.name, *t.attrs)
		case t.kind == "r" && t.rng != nil:
			ddl = fmt.Sprintf("CREATE TYPE %s AS RANGE (%s)", t.name, *t.rng)
		default:
			return fmt.Errorf("type %s is not created by the job (a table's row type, a base type, or a range with a canonical function): create it on the new shard first", t.name)
		}
		if t.ext == nil {
			ddl = fmt.Sprintf("BEGIN; CREATE SCHEMA IF NOT EXISTS %s AUTHORIZATION %s; %s; ALTER TYPE %s OWNER TO %s; COMMIT", t.schema, t.nspOwner, ddl, t.name, t.owner)
		}
		if err := exec(ctx, tgt, ddl); err != nil {
			_, _ = tgt.Exec(ctx, "ROLLBACK")
			return fmt.Errorf("type %s: %w", t.name, err)
		}
	}
	return nil
}

// copyPolicies turns on the table's row-level security on tgt as src has
// it (ENABLE, FORCE) and creates its policies that tgt lacks by name.
func copyPolicies(ctx context.Context, src, tgt *pgx.Conn, oid uint32, qname string) error {
	var enabled, forced bool
	if err := src.QueryRow(ctx, "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = $1", oid).Scan(&enabled, &forced); err != nil {
		return err
	}
	if enabled {
		if err := exec(ctx, tgt, "ALTER TABLE "+qname+" ENABLE ROW LEVEL SECURITY"); err != nil {
			return err
		}
	}
	if forced {
		if err := exec(ctx, tgt, "ALTER TABLE "+qname+" FORCE ROW LEVEL SECURITY"); err != nil {
			return err
		}
	}
	return createMissing(ctx, src, tgt, `SELECT p.polname, format('CREATE POLICY %I ON %s AS %s FOR %s TO %s', p.polname, $2::text,
  CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
  CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
  (SELECT string_agg(CASE WHEN r = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r)) END, ', ') FROM unnest(p.polroles) r))
  || coalesce(' USING (' || pg_get_expr(p.polqual, p.polrelid) || ')', '')
  || coalesce(' WITH CHECK (' || pg_get_expr(p.polwithcheck, p.polrelid) || ')', '')
FROM pg_policy p WHERE p.polrelid = $1 ORDER BY p.polname`, []any{oid, qname},
		"SELECT EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = to_regclass($1) AND polname = $2)", qname, nil)
}

// copyTriggers creates on tgt the table's user triggers that it lacks by
// name (not pgshard's fences), in the state src has them (disabled,
// replica, always), with each trigger function tgt lacks (its definition
// from src, and its owner). Replica and always triggers fire for the rows
// the job copies, as they would on a logical replica.
func copyTriggers(ctx context.Context, src, tgt *pgx.Conn, oid uint32) error {
	rows, err := src.Query(ctx, `SELECT t.tgname, pg_get_triggerdef(t.oid), t.tgenabled::text, t.tgfoid::regprocedure::text,
  pg_get_functiondef(t.tgfoid), quote_ident(n.nspname), quote_ident(pg_get_userbyid(n.nspowner)), quote_ident(pg_get_userbyid(f.proowner)),
  format('%I.%I', c.relnamespace::regnamespace::text, c.relname)
FROM pg_trigger t JOIN pg_proc f ON f.oid = t.tgfoid JOIN pg_namespace n ON n.oid = f.pronamespace JOIN pg_class c ON c.oid = t.tgrelid
WHERE t.tgrelid = $1 AND NOT t.tgisinternal AND t.tgname NOT LIKE 'pgshard\_fence\_%'
ORDER BY t.tgname`, oid)
	if err != nil {
		return err
	}
	type trigger struct{ name, def, enabled, fn, fnDef, fnSchema, nspOwner, fnOwner, table string }
	triggers, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (trigger, error) {
		var t trigger
		err := row.Scan(&t.name, &t.def, &t.enabled, &t.fn, &t.fnDef, &t.fnSchema, &t.nspOwner, &t.fnOwner, &t.table)
		return t, err
	})
	if err != nil {
		return err
	}
	for _, t := range triggers {
		var exists, haveFn bool
		if err := tgt.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = $2), to_regprocedure($3) IS NOT NULL",
			t.table, t.name, t.fn).Scan(&exists, &haveFn); err != nil {
			return err
		}
		if exists {
			continue
		}
		var b strings.Builder
		b.WriteString("BEGIN; ")
		if !haveFn {
			fmt.Fprintf(&b, "CREATE SCHEMA IF NOT EXISTS %s AUTHORIZATION %s; %s; ALTER FUNCTION %s OWNER TO %s; ", t.fnSchema, t.nspOwner, t.fnDef, t.fn, t.fnOwner)
		}
		b.WriteString(t.def + "; ")
		switch t.enabled {
		case "D":
			fmt.Fprintf(&b, "ALTER TABLE %s DISABLE TRIGGER %s; ", t.table, quoteName(t.name))
		case "R":
			fmt.Fprintf(&b, "ALTER TABLE %s ENABLE REPLICA TRIGGER %s; ", t.table, quoteName(t.name))
		case "A":
			fmt.Fprintf(&b, "ALTER TABLE %s ENABLE ALWAYS TRIGGER %s; ", t.table, quoteName(t.name))
		}
		b.WriteString("COMMIT")
		if err := exec(ctx, tgt, b.String()); err != nil {
			_, _ = tgt.Exec(ctx, "ROLLBACK")
			return fmt.Errorf("trigger %s: %w", t.name, err)
		}
	}
	return nil
}

// grantsOn returns the GRANTs that give every role but the owner (roles
// are cluster-wide: they must exist on the target) the privileges it has
// on the table or sequence obj on src, and on a table's columns.
func grantsOn(ctx context.Context, src *pgx.Conn, obj string) ([]string, error) {
	rows, err := src.Query(ctx, `SELECT format('GRANT %s%s ON %s %s TO %s%s', a.privilege_type, coalesce(' (' || quote_ident(x.attname) || ')', ''),
  CASE WHEN c.relkind = 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, $2::text,
  CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
  CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
FROM pg_class c
CROSS JOIN LATERAL (SELECT NULL::name AS attname, c.relacl AS acl, 0 AS attnum
  UNION ALL SELECT att.attname, att.attacl, att.attnum FROM pg_attribute att
  WHERE att.attrelid = c.oid AND att.attnum > 0 AND NOT att.attisdropped AND att.attacl IS NOT NULL) x
CROSS JOIN LATERAL aclexplode(x.acl) a
WHERE c.oid = to_regclass($1) AND a.grantee <> c.relowner
ORDER BY x.attnum, a.grantee, a.privilege_type`, obj, obj)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// copyConstraints adds src's constraints of a table to tgt, skipping those
// whose name exists: foreign keys only when fks, the others otherwise. A
// foreign key to a table the target does not have is skipped.
func copyConstraints(ctx context.Context, src, tgt *pgx.Conn, oid uint32, qname string, fks bool) error {
	return createMissing(ctx, src, tgt, `SELECT conname, format('ALTER TABLE %s ADD CONSTRAINT %I %s', $3::text, conname, pg_get_constraintdef(oid)) FROM pg_constraint
WHERE conrelid = $1 AND contype IN ('p','u','c','x','f') AND (contype = 'f') = $2
ORDER BY contype <> 'p', conname`, []any{oid, fks, qname},
		"SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass($1) AND conname = $2)", qname,
		func(err error) bool { return fks && sqlState(err) == "42P01" }) // undefined_table: not moved here
}

// createMissing lists (name, DDL) pairs on src with list and runs on tgt
// each DDL whose name exists reports missing for the table qname ($1 of
// exists, the name $2). An error skip accepts is passed over.
func createMissing(ctx context.Context, src, tgt *pgx.Conn, list string, args []any, exists, qname string, skip func(error) bool) error {
	rows, err := src.Query(ctx, list, args...)
	if err != nil {
		return err
	}
	type named struct{ name, ddl string }
	defs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (named, error) {
		var d named
		err := row.Scan(&d.name, &d.ddl)
		return d, err
	})
	if err != nil {
		return err
	}
	for _, d := range defs {
		var found bool
		if err := tgt.QueryRow(ctx, exists, qname, d.name).Scan(&found); err != nil {
			return err
		}
		if found {
			continue
		}
		if err := exec(ctx, tgt, d.ddl); err != nil && (skip == nil || !skip(err)) {
			return err
		}
	}
	return nil
}
