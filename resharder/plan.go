package resharder

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgshard/pgshard/shardmap"
)

// planned is a Plan with what Start needs besides.
type planned struct {
	plan      *Plan
	db        string
	newRing   *shardmap.Ring
	sharded   []shardmap.Table
	reference []shardmap.Table
	refSource string
	dsns      map[string]string
}

// Plan computes what s would move against the current map, checks that
// every table can be moved, and estimates rows and bytes. It changes
// nothing.
func (r *Runner) Plan(ctx context.Context, s Spec) (*Plan, error) {
	p, err := r.plan(ctx, r.cfg.Store.Map(), s)
	if err != nil {
		return nil, err
	}
	return p.plan, nil
}

func bad(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrBadSpec)
}

func (r *Runner) plan(ctx context.Context, m *shardmap.Map, s Spec) (*planned, error) {
	db := s.Database
	if db == "" {
		db = r.cfg.Login.Database
	}
	if db == "" {
		return nil, bad("no database: set the spec's or the login's")
	}
	s.Database = db
	ring := m.Ring()
	if ring == nil {
		return nil, bad("no ring yet: place a first shard")
	}
	pl := &planned{db: db, dsns: map[string]string{}}
	for _, sh := range m.Shards() {
		pl.dsns[sh.Name] = sh.Primary
	}
	var newRing *shardmap.Ring
	var err error
	switch {
	case s.Add != nil && s.Remove == "":
		a := s.Add
		if a.Name == "" || strings.TrimSpace(a.Primary) == "" {
			return nil, bad("a shard to add needs a name and a primary")
		}
		if sh, ok := m.Shard(a.Name); ok {
			if sh.State != shardmap.ShardJoining || slices.Contains(ring.Shards(), a.Name) || sh.Primary != a.Primary {
				return nil, bad("shard %q already exists", a.Name)
			}
		}
		for _, sh := range m.Shards() {
			if sh.Name != a.Name && shardmap.SequenceSlot(sh.Name) == shardmap.SequenceSlot(a.Name) {
				return nil, bad("shards %s and %s would share a sequence range; choose another name", sh.Name, a.Name)
			}
			if sh.Name != a.Name && sh.Primary == a.Primary {
				return nil, bad("primary %q is already shard %s's", a.Primary, sh.Name)
			}
		}
		newRing, err = ring.AddShard(a.Name, r.cfg.Vnodes)
		pl.dsns[a.Name] = a.Primary
	case s.Remove != "" && s.Add == nil:
		if !slices.Contains(ring.Shards(), s.Remove) {
			return nil, bad("shard %q owns no range", s.Remove)
		}
		newRing, err = ring.RemoveShard(s.Remove)
	default:
		return nil, bad("give exactly one of add and remove")
	}
	if err != nil {
		return nil, bad("%v", err)
	}
	pl.newRing = newRing
	moves := shardmap.Diff(ring, newRing)
	plan := &Plan{Spec: s, RingVersion: m.RingVersion(), Moves: moves, Ownership: newRing.Ownership()}
	pl.plan = plan
	for _, t := range m.Tables() {
		switch t.Kind {
		case shardmap.TableSharded:
			pl.sharded = append(pl.sharded, t)
		case shardmap.TableReference:
			if s.Add != nil {
				pl.reference = append(pl.reference, t)
			}
		}
	}
	if s.Add != nil && len(moves) > 0 {
		pl.refSource = moves[0].From
		for _, mv := range moves {
			pl.refSource = min(pl.refSource, mv.From)
		}
	}
	owned := ring.Ownership()

	cs := r.newConns(db)
	defer cs.close()
	type pairKey struct{ from, to string }
	ranges := map[pairKey][]shardmap.Range{}
	var keys []pairKey
	for _, mv := range moves {
		k := pairKey{mv.From, mv.To}
		if _, ok := ranges[k]; !ok {
			keys = append(keys, k)
		}
		ranges[k] = append(ranges[k], mv.Range)
	}
	for _, k := range keys {
		src, err := cs.get(ctx, pl.dsns[k.from])
		if err != nil {
			return nil, fmt.Errorf("shard %s: %w", k.from, err)
		}
		frac := 0.0
		for _, g := range ranges[k] {
			frac += g.Fraction()
		}
		if o := owned[k.from]; o > 0 {
			frac /= o
		}
		for _, t := range pl.sharded {
			ti, err := inspect(ctx, src, t)
			if err != nil {
				return nil, fmt.Errorf("shard %s: %w", k.from, err)
			}
			tm := TableMove{Table: t.Name, Kind: string(shardmap.TableSharded), From: k.from, To: k.to}
			if ti.relpages <= r.cfg.ExactCountPages || ti.reltuples < 0 {
				if err := src.QueryRow(ctx, fmt.Sprintf("SELECT count(*) FROM %s WHERE %s", ti.qname, shardmap.RangesSQL(ranges[k], hashExpr(t)))).Scan(&tm.Rows); err != nil {
					return nil, fmt.Errorf("shard %s: count %s: %w", k.from, t.Name, err)
				}
			} else {
				tm.Rows = int64(float64(ti.reltuples) * frac)
			}
			tm.Bytes = int64(float64(ti.bytes) * frac)
			plan.Tables = append(plan.Tables, tm)
		}
	}
	if pl.refSource != "" && len(pl.reference) > 0 {
		src, err := cs.get(ctx, pl.dsns[pl.refSource])
		if err != nil {
			return nil, fmt.Errorf("shard %s: %w", pl.refSource, err)
		}
		for _, t := range pl.reference {
			ti, err := inspect(ctx, src, t)
			if err != nil {
				return nil, fmt.Errorf("shard %s: %w", pl.refSource, err)
			}
			tm := TableMove{Table: t.Name, Kind: string(shardmap.TableReference), From: pl.refSource, To: s.Add.Name, Rows: ti.reltuples, Bytes: ti.bytes}
			if ti.relpages <= r.cfg.ExactCountPages || ti.reltuples < 0 {
				if err := src.QueryRow(ctx, "SELECT count(*) FROM "+ti.qname).Scan(&tm.Rows); err != nil {
					return nil, fmt.Errorf("shard %s: count %s: %w", pl.refSource, t.Name, err)
				}
			}
			plan.Tables = append(plan.Tables, tm)
		}
	}
	// Targets: a new shard must not hold rows of the tables it receives;
	// existing shards must have the sharded tables already.
	var targets []string
	for _, k := range keys {
		if !slices.Contains(targets, k.to) {
			targets = append(targets, k.to)
		}
	}
	for _, name := range targets {
		c, err := cs.get(ctx, pl.dsns[name])
		if err != nil {
			return nil, fmt.Errorf("shard %s: %w", name, err)
		}
		all := append(slices.Clone(pl.sharded), pl.reference...)
		for _, t := range all {
			var exists, hasRows bool
			err := c.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", quoteIdent(t.Name)).Scan(&exists)
			if err == nil && exists {
				err = c.QueryRow(ctx, fmt.Sprintf("SELECT EXISTS (SELECT 1 FROM %s)", quoteIdent(t.Name))).Scan(&hasRows)
			}
			if err != nil {
				return nil, fmt.Errorf("shard %s: table %s: %w", name, t.Name, err)
			}
			if s.Add != nil && hasRows {
				return nil, bad("the new shard %s already has rows in table %s; it must start empty", name, t.Name)
			}
			if s.Add == nil && !exists {
				return nil, bad("table %s is missing on shard %s", t.Name, name)
			}
		}
	}
	if plan.Tables == nil {
		plan.Tables = []TableMove{}
	}
	return pl, nil
}

// tableInfo is what inspect learns of a table on a shard.
type tableInfo struct {
	qname     string // schema-qualified and quoted
	schema    string
	name      string
	reltuples int64
	relpages  int64
	bytes     int64
}

// inspect checks that a table can be published with its updates and
// deletes, and filtered on its key: a plain table whose replica identity is
// FULL, or a primary key (or replica identity index) holding the key.
func inspect(ctx context.Context, c *pgx.Conn, t shardmap.Table) (*tableInfo, error) {
	key := t.KeyColumn
	if t.Kind == shardmap.TableSharded && key == "" {
		key = shardmap.DefaultKeyColumn
	}
	var ti tableInfo
	var kind, ident string
	var hasIdx, keyInIdx bool
	err := c.QueryRow(ctx, `
SELECT n.nspname, c.relname, c.relkind::text, c.relreplident::text, c.reltuples::bigint, c.relpages::bigint, pg_table_size(c.oid),
  EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND
          ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))),
  EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
          WHERE i.indrelid = c.oid AND a.attname = $2 AND
          ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident)))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass($1)`, quoteIdent(t.Name), key).Scan(&ti.schema, &ti.name, &kind, &ident, &ti.reltuples, &ti.relpages, &ti.bytes, &hasIdx, &keyInIdx)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, bad("table %s does not exist", t.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", t.Name, err)
	}
	ti.qname = quoteName(ti.schema) + "." + quoteName(ti.name)
	if kind != "r" {
		return nil, bad("table %s is not a plain table (relkind %s); partitioned tables are not moved", t.Name, kind)
	}
	switch {
	case ident == "f":
	case t.Kind == shardmap.TableSharded && !keyInIdx:
		return nil, bad("table %s: its primary key (or replica identity index) must contain the shard key %s, or set REPLICA IDENTITY FULL: logical replication of its updates and deletes filters on the key", t.Name, key)
	case !hasIdx:
		return nil, bad("table %s has no primary key (or replica identity index): add one or set REPLICA IDENTITY FULL, which logical replication of its updates and deletes needs", t.Name)
	}
	return &ti, nil
}
