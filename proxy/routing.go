package proxy

import (
	"strings"

	"github.com/pgshard/pgshard/router"
	"github.com/pgshard/pgshard/shardmap"
	"github.com/pgshard/pgshard/wire"
)

// routingState is what the proxy knows of the shard map for routing: the
// ring, how many shards own ranges on it, and a planner over its tables.
//
// Sharded routing (issue 8) is not built yet: every session runs on the
// first shard. That is exact while one shard owns the whole ring. Once
// several do, a statement that touches a sharded table, or writes to a
// table on every shard (DDL, reference tables), cannot be answered by the
// first shard alone, so it is refused (0A000) instead of answered wrongly;
// statements that any one shard answers (reads of reference and
// unregistered tables, session and transaction control) still run.
type routingState struct {
	owners  int
	ring    *shardmap.Ring
	planner *router.Planner
}

// mapCatalog describes the map's tables to the planner, keyed by
// "schema.name" (unqualified names are in public).
type mapCatalog map[string]router.TableInfo

func (c mapCatalog) Table(schema, name string) router.TableInfo {
	return c[schema+"."+name]
}

// SetMap makes the proxy follow the shard map's ring and tables.
func (s *Server) SetMap(m *shardmap.Map) {
	rs := &routingState{ring: m.Ring()}
	if rs.ring != nil {
		rs.owners = len(rs.ring.Shards())
	}
	cat := mapCatalog{}
	for _, t := range m.Tables() {
		info := router.TableInfo{Kind: router.TableReference}
		if t.Kind == shardmap.TableSharded {
			info = router.TableInfo{Kind: router.TableSharded, KeyColumn: t.KeyColumn, KeyType: t.KeyType}
		}
		name := t.Name
		if !strings.Contains(name, ".") {
			name = "public." + name
		}
		cat[name] = info
	}
	rs.planner = router.NewPlanner(router.PlannerConfig{Catalog: cat, Classifier: s.classifier})
	s.routing.Store(rs)
}

// unshardable returns the refusal for sql when the first shard alone
// cannot answer it exactly (see routingState), or nil.
func (s *Server) unshardable(sql string) *wire.Error {
	rs := s.routing.Load()
	if rs == nil || rs.owners < 2 {
		return nil
	}
	p := rs.planner.Plan(sql, nil, rs.ring)
	var why string
	switch p.Kind {
	case router.AnyShard, router.Utility:
		return nil
	case router.Refuse:
		why = p.Err.Message
	case router.AllShards:
		why = "it must run on every shard (DDL or a write to a reference table)"
	default:
		why = "it touches a sharded table"
	}
	e := wire.Errorf(wire.CodeFeatureNotSupported, "pgshard: cannot run this statement: %s, and sharded routing is not built yet (%d shards own ranges of the ring; pgshard runs every statement on the first one)", why, rs.owners)
	e.Hint = "run it on the shards directly, or keep one shard on the ring until sharded routing lands (README, Limits)"
	return e
}
