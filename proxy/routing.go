package proxy

import (
	"slices"
	"strings"

	"github.com/pgshard/pgshard/router"
	"github.com/pgshard/pgshard/shardmap"
)

// routingState is what the proxy knows of the shard map for routing: the
// ring, how many shards own ranges on it, and a planner over its tables.
// While one shard owns the whole ring every statement runs there
// unplanned; with several, each statement is planned (shardroute.go,
// spread.go).
type routingState struct {
	owners  int
	ring    *shardmap.Ring
	planner *router.Planner
	catalog mapCatalog
	cfg     router.PlannerConfig // planner's, for the search paths' (searchpath.go)
	paths   *pathPlanners
	tables  []shardmap.Table
	// moving are the ranges reshard jobs are moving: rows of them may sit
	// on a shard that does not own them, so scatter statements exclude
	// them on every shard but their owner. frozen are those being cut
	// over: statements on them wait (hold.go). ringVersion is the map's.
	moving      []shardmap.Range
	frozen      []shardmap.Range
	ringVersion uint64
	// stable are the active shards that own ranges, in the map's order:
	// what any shard may answer (reference-table reads, statements on no
	// table) goes to one of them, never to a shard a job adds or removes
	// (a removed shard stops getting reference-table writes at the ring's
	// commit, which a node a moment behind would not know yet).
	stable []string
}

// stableOwners returns the shards of m that are active and own ranges.
func stableOwners(m *shardmap.Map) []string {
	ring := m.Ring()
	if ring == nil {
		return nil
	}
	owners := ring.Shards()
	var out []string
	for _, sh := range m.Shards() {
		if sh.State == shardmap.ShardActive && slices.Contains(owners, sh.Name) {
			out = append(out, sh.Name)
		}
	}
	return out
}

// mapCatalog describes the map's tables to the planner, keyed by
// "schema.name" (unqualified names are in public).
type mapCatalog map[string]router.TableInfo

func (c mapCatalog) Table(schema, name string) router.TableInfo {
	if schema == "" {
		schema = "public" // the default search_path (searchpath.go)
	}
	return c[schema+"."+name]
}

// SetMap makes the proxy follow the shard map's ring and tables. A map
// version that changed neither (a two-phase decision, a job checkpoint)
// keeps the planner and its cache.
func (s *Server) SetMap(m *shardmap.Map) {
	defer func() {
		s.mapVersion.Store(m.Version())
		s.mapChanged.broadcast() // held statements look again (hold.go)
	}()
	tables := m.Tables()
	moving, frozen, stable := m.Moving(), m.Frozen(), stableOwners(m)
	if old := s.routing.Load(); old != nil && old.ring == m.Ring() && slices.Equal(old.tables, tables) &&
		slices.Equal(old.moving, moving) && slices.Equal(old.frozen, frozen) && slices.Equal(old.stable, stable) {
		return
	}
	old := s.routing.Load()
	if len(moving) > 0 && (old == nil || len(old.moving) == 0 || len(frozen) > 0 && len(old.frozen) == 0) {
		// A job starts, or its cut-over does: the statements it will
		// release find backends ready on every shard (warm.go).
		defer s.warmShards()
	}
	rs := &routingState{ring: m.Ring(), tables: tables, moving: moving, frozen: frozen, ringVersion: m.RingVersion(), stable: stable}
	if rs.ring != nil {
		rs.owners = len(rs.ring.Shards())
	}
	cat := mapCatalog{}
	for _, t := range tables {
		info := router.TableInfo{Kind: router.TableReference}
		if t.Kind == shardmap.TableSharded {
			info = router.TableInfo{Kind: router.TableSharded, KeyColumn: t.KeyColumn, KeyType: t.KeyType, KeyOrdinal: t.KeyOrdinal}
		}
		name := t.Name
		if !strings.Contains(name, ".") {
			name = "public." + name
		}
		cat[name] = info
	}
	rs.catalog = cat
	rs.cfg = router.PlannerConfig{Classifier: s.classifier}
	rs.paths = &pathPlanners{}
	rs.planner = router.NewPlanner(router.PlannerConfig{Catalog: cat, Classifier: s.classifier})
	s.routing.Store(rs)
}

// MapVersion is the version of the last map SetMap applied: from then on
// every new statement routes by it (a reshard job waits for every node's).
func (s *Server) MapVersion() uint64 { return s.mapVersion.Load() }
