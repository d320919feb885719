package router

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/pgshard/pgshard/shardmap"
)

// CopyPlan is a COPY the proxy runs over several shards: rows sent to
// STDIN split by their shard key (or, for a reference table, sent to
// every shard), or every shard's rows to STDOUT gathered.
type CopyPlan struct {
	From bool // FROM STDIN (else TO STDOUT)
	// Broadcast: FROM STDIN into a reference table, every row to every
	// shard.
	Broadcast bool
	Format    string // "text", "csv" or "binary"
	Delimiter byte   // text: tab, csv: comma, unless set
	Quote     byte   // csv
	Escape    byte   // csv
	Header    bool
	Null      string // the NULL marker (text: \N, csv: empty)
	// KeyIndex is the 0-based position of the shard key among each row's
	// fields; KeyType its type family (From, not Broadcast).
	KeyIndex int
	KeyType  shardmap.KeyType
	Table    string // for messages
	// NeedsColumns: a COPY of a whole sharded table TO STDOUT without a
	// column list. Rewritten to exclude moving rows (ExcludeMoving), it
	// needs the table's columns that COPY copies (all but generated and
	// dropped ones); Relation names the table for a ::regclass cast.
	NeedsColumns bool
	Relation     string
}

// copyStmt plans COPY.
func (b *builder) copyStmt(c *pg_query.CopyStmt) {
	t := b.t
	if c.Query != nil {
		b.stmt(c.Query)
		if m := t.merge; t.rewrite || (m != nil && (m.Grouped || m.Distinct || len(m.OrderBy) > 0 || m.HasLimit || m.HasOffset || m.Hidden > 0)) {
			b.multi = refuse("COPY (query) TO over a query whose rows must be merged across shards (ORDER BY, LIMIT/OFFSET, DISTINCT, aggregates): the shards' rows can only be concatenated")
		}
		t.merge, t.rewrite = nil, false
		t.limit, t.offset = valSrc{}, valSrc{}
		cp, err := copyOptions(c)
		if err != nil {
			b.refuse("%s", err.Message)
			return
		}
		t.copy = cp
		return
	}
	info := b.lookup(c.Relation)
	if info.Kind != TableSharded {
		if c.IsFrom {
			t.kind = AllShards
			if info.Kind == TableReference && c.Filename == "" && !c.IsProgram {
				cp, err := copyOptions(c)
				if err != nil {
					b.refuse("%s", err.Message)
					return
				}
				cp.From, cp.Broadcast, cp.Table = true, true, c.Relation.Relname
				t.copy = cp
			}
		} else {
			t.kind = AnyShard
		}
		return
	}
	if c.Filename != "" || c.IsProgram {
		b.refuse("COPY of sharded table %s with a server-side file or program: use STDIN or STDOUT", c.Relation.Relname)
		return
	}
	cp, err := copyOptions(c)
	if err != nil {
		b.refuse("%s", err.Message)
		return
	}
	cp.Table = c.Relation.Relname
	t.kind, t.copy = Scatter, cp
	if !c.IsFrom {
		if len(c.Attlist) == 0 {
			cp.NeedsColumns = true
			cp.Relation = quoteName(c.Relation.Relname)
			if c.Relation.Schemaname != "" {
				cp.Relation = quoteName(c.Relation.Schemaname) + "." + cp.Relation
			}
		}
		return
	}
	cp.From, cp.KeyType = true, info.KeyType
	cp.KeyIndex = -1
	if len(c.Attlist) > 0 {
		for i, a := range c.Attlist {
			if a.GetString_().GetSval() == info.KeyColumn {
				cp.KeyIndex = i
			}
		}
		if cp.KeyIndex < 0 {
			b.refuse("COPY into sharded table %s without its shard key column %s", c.Relation.Relname, info.KeyColumn)
		}
		return
	}
	if info.KeyOrdinal <= 0 {
		b.refuse("COPY into sharded table %s without a column list: name the columns, including the shard key %s", c.Relation.Relname, info.KeyColumn)
		return
	}
	cp.KeyIndex = info.KeyOrdinal - 1
}

// copyOptions reads a COPY's format options.
func copyOptions(c *pg_query.CopyStmt) (*CopyPlan, *Error) {
	cp := &CopyPlan{Format: "text"}
	str := func(d *pg_query.DefElem) string {
		if d.Arg == nil {
			return ""
		}
		if s := d.Arg.GetString_(); s != nil {
			return s.Sval
		}
		if s := d.Arg.GetAConst(); s != nil && s.GetSval() != nil {
			return s.GetSval().Sval
		}
		return ""
	}
	var delim, quote, escape, null *string
	for _, o := range c.Options {
		d := o.GetDefElem()
		if d == nil {
			continue
		}
		v := str(d)
		switch d.Defname {
		case "format":
			cp.Format = strings.ToLower(v)
		case "delimiter":
			delim = &v
		case "quote":
			quote = &v
		case "escape":
			escape = &v
		case "null":
			null = &v
		case "header":
			cp.Header = d.Arg == nil || !optionFalse(d.Arg)
		case "freeze", "encoding", "force_quote", "force_not_null", "force_null", "default":
		default:
			return nil, refuse("COPY option " + d.Defname + " across shards is not supported")
		}
	}
	switch cp.Format {
	case "text":
		cp.Delimiter, cp.Null = '\t', `\N`
	case "csv":
		cp.Delimiter, cp.Quote, cp.Escape, cp.Null = ',', '"', '"', ""
	case "binary":
		return cp, nil
	default:
		return cp, nil // the shards report the error
	}
	one := func(p *string, into *byte) *Error {
		if p == nil {
			return nil
		}
		if len(*p) != 1 {
			return refuse("COPY delimiter, quote and escape across shards must be one single-byte character")
		}
		*into = (*p)[0]
		return nil
	}
	if err := one(delim, &cp.Delimiter); err != nil {
		return nil, err
	}
	if err := one(quote, &cp.Quote); err != nil {
		return nil, err
	}
	if escape == nil && quote != nil {
		cp.Escape = cp.Quote
	}
	if err := one(escape, &cp.Escape); err != nil {
		return nil, err
	}
	if null != nil {
		cp.Null = *null
	}
	return cp, nil
}

// optionFalse reports whether an option's argument says false/off/0.
func optionFalse(n *pg_query.Node) bool {
	var v string
	switch {
	case n.GetString_() != nil:
		v = n.GetString_().Sval
	case n.GetBoolean() != nil:
		return !n.GetBoolean().Boolval
	case n.GetInteger() != nil:
		return n.GetInteger().Ival == 0
	case n.GetAConst() != nil && n.GetAConst().GetIval() != nil:
		return n.GetAConst().GetIval().Ival == 0
	}
	switch strings.ToLower(v) {
	case "false", "off", "0", "no":
		return true
	}
	return false
}
