package proxy

import (
	"context"
	"strings"

	"github.com/pgshard/pgshard/router"
)

// Column collations and merged reads.
//
// The merge orders text by bytes (min, max, ORDER BY) and groups it by
// byte equality (GROUP BY, DISTINCT, count(DISTINCT …)). That is what
// PostgreSQL does under the database's collation when it is byte order
// (checked once per database: collationSQL), and for equality under every
// deterministic collation. A column declared with another collation
// ("und-x-icu", "en_US", a domain's) orders otherwise, and a
// nondeterministic one also compares otherwise; a merged read of a table
// with such a column would silently answer in the wrong order or with the
// wrong groups. So before its first merged read of a relation a session
// asks a shard for the relation's columns whose collation is neither byte
// order nor the database's default (one query, in front of the read, on
// its first leg), and the answer is kept per database and relation name
// until DDL passes through pgshard. A merged read that orders (or groups)
// text while one of its relations has such a column is refused (0A000),
// naming the column. The check is per relation, not per column: a read
// that orders a byte-order column of a table that also has an ICU column
// is refused too. Explicit COLLATE clauses in the statement are refused
// by the planner.

// collated is what a relation's columns allow: order and equal name a
// column (and its collation) that breaks byte order, or byte equality;
// "" when none does.
type collated struct{ order, equal string }

// maxRelationTexts bounds the statement texts whose relations are kept.
const maxRelationTexts = 4096

// relationsOf returns collatedRelations(sql), kept per statement text.
func (s *Server) relationsOf(sql string) []string {
	s.mu.Lock()
	rels, ok := s.relTexts[sql]
	s.mu.Unlock()
	if ok {
		return rels
	}
	rels = collatedRelations(sql)
	s.mu.Lock()
	if s.relTexts == nil || len(s.relTexts) >= maxRelationTexts {
		s.relTexts = map[string][]string{}
	}
	s.relTexts[sql] = rels
	s.mu.Unlock()
	return rels
}

// collatedUnknown stands for the columns of relations whose collations
// could not be read: text is neither ordered nor grouped across shards.
var collatedUnknown = collated{order: "(unknown: the collations could not be read)", equal: "(unknown: the collations could not be read)"}

// collatedRelations returns the relations sql names, for the collation
// check (nil when it does not parse: the shards will say why).
func collatedRelations(sql string) []string {
	rels, ok := router.Relations(sql)
	if !ok {
		return nil
	}
	out := make([]string, 0, len(rels))
	for _, r := range rels {
		if r.Temp {
			continue
		}
		name := quoteIdent(r.Name)
		if r.Schema != "" {
			name = quoteIdent(r.Schema) + "." + name
		}
		out = append(out, name)
	}
	return out
}

// unknownCollated returns the relations of rels whose columns db's cache
// does not know yet.
func (s *Server) unknownCollated(db string, rels []string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, r := range rels {
		if _, ok := s.collated[db][r]; !ok {
			out = append(out, r)
		}
	}
	return out
}

// collatedOf returns what rels' columns allow, from db's cache (the first
// column found of each kind).
func (s *Server) collatedOf(db string, rels []string) collated {
	s.mu.Lock()
	defer s.mu.Unlock()
	var c collated
	for _, r := range rels {
		rc := s.collated[db][r]
		if c.order == "" {
			c.order = rc.order
		}
		if c.equal == "" {
			c.equal = rc.equal
		}
	}
	return c
}

func (s *Server) setCollated(db, rel string, c collated) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.collated == nil {
		s.collated = map[string]map[string]collated{}
	}
	if s.collated[db] == nil {
		s.collated[db] = map[string]collated{}
	}
	s.collated[db][rel] = c
}

// forgetCollated drops what is known of columns' collations: DDL may have
// changed them.
func (s *Server) forgetCollated() {
	s.mu.Lock()
	s.collated = nil
	s.mu.Unlock()
}

// collatedSQL asks a shard for the columns of rels (as written, resolved
// by the backend's search_path) whose collation is not byte order, the
// database's default, or is nondeterministic.
func collatedSQL(rels []string) string {
	lits := make([]string, len(rels))
	for i, r := range rels {
		lits[i] = quoteLiteral(r)
	}
	return "SELECT r.name, a.attname, co.collname, co.collisdeterministic " +
		"FROM pg_catalog.unnest(ARRAY[" + strings.Join(lits, ", ") + "]::text[]) AS r(name) " +
		"JOIN pg_catalog.pg_attribute a ON a.attrelid = pg_catalog.to_regclass(r.name) " +
		"JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation " +
		"WHERE a.attnum > 0 AND NOT a.attisdropped " +
		"AND (co.collname NOT IN ('default', 'C', 'POSIX', 'ucs_basic') OR NOT co.collisdeterministic)"
}

// readCollated reads the answer to collatedSQL(rels) on l into the cache.
// An error of the shard's (in a failed transaction, say) is no error here:
// the statement behind the query gets its own answer, and known false
// makes any text ordering of it refused (collatedUnknown).
func (s *session) readCollated(ctx context.Context, l *leg, rels []string) (known bool, err error) {
	found := map[string]collated{}
	failed, err := readRows(ctx, l, func(row [][]byte) {
		if len(row) != 4 {
			return
		}
		rel, col := string(row[0]), string(row[1])+" ("+string(row[2])+")"
		c := found[rel]
		if c.order == "" {
			c.order = col
		}
		if c.equal == "" && string(row[3]) == "f" {
			c.equal = col
		}
		found[rel] = c
	})
	if err != nil {
		return false, err
	}
	if failed != nil {
		s.logger.Debug("reading column collations failed", "shard", l.b.rt.name, "err", failed)
		return false, nil
	}
	for _, r := range rels {
		s.srv.setCollated(s.db, r, found[r])
	}
	return true, nil
}
