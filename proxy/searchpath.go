package proxy

import (
	"slices"
	"strings"
	"sync"

	"github.com/pgshard/pgshard/router"
	"github.com/pgshard/pgshard/wire"
)

// A session's search_path decides which table an unqualified name is, on
// the shards; routing must decide the same. With the default path
// ("$user", public, no schema named after the user) the planner looks the
// name up in "public"; a session that sets another path (SET search_path,
// a startup parameter or options=-c) gets a planner whose catalog follows
// its path: the first schema of the path in which the map registers the
// name. Without this, a sharded table of another schema named without its
// schema was routed as a reference table (one shard's rows, writes to
// every shard). CREATE and DROP TABLE with an unqualified name are refused
// under another path: pgshard would not know which schema the table is
// created in (the first of the path that exists) to register it there.

// pathCatalog resolves unqualified names along a search_path.
type pathCatalog struct {
	cat  mapCatalog
	path []string
}

func (c pathCatalog) Table(schema, name string) router.TableInfo {
	if schema != "" {
		return c.cat.Table(schema, name)
	}
	for _, sc := range c.path {
		if info, ok := c.cat[sc+"."+name]; ok {
			return info
		}
	}
	return router.TableInfo{}
}

// pathPlanners are the planners of one routing state for sessions that
// set a search_path, keyed by the setting as the session gave it (and its
// user, for "$user"): a statement looks its planner up without parsing
// the path again or allocating.
type pathPlanners struct {
	mu sync.Mutex
	m  map[pathKey]*router.Planner
}

type pathKey struct{ user, value string }

// maxPathPlanners bounds the distinct search paths planned for at once.
const maxPathPlanners = 32

// plannerFor returns the planner for sessions whose search_path setting is
// k.value: the default planner when the path is the default one.
func (rs *routingState) plannerFor(k pathKey) *router.Planner {
	if rs.paths == nil {
		return rs.planner
	}
	rs.paths.mu.Lock()
	defer rs.paths.mu.Unlock()
	if p, ok := rs.paths.m[k]; ok {
		return p
	}
	p := rs.planner
	if path := searchPathOf(k.value, k.user); path != nil {
		cfg := rs.cfg
		cfg.Catalog = pathCatalog{cat: rs.catalog, path: path}
		p = router.NewPlanner(cfg)
	}
	if rs.paths.m == nil || len(rs.paths.m) >= maxPathPlanners {
		rs.paths.m = map[pathKey]*router.Planner{}
	}
	rs.paths.m[k] = p
	return p
}

// planner returns the planner for the session's search_path.
func (s *session) planner(rs *routingState) *router.Planner {
	s.mu.Lock()
	v, ok := s.sets["search_path"]
	s.mu.Unlock()
	if !ok {
		return rs.planner
	}
	return rs.plannerFor(pathKey{user: s.user, value: v})
}

// searchPath returns the schemas of the session's search_path in order,
// or nil for the default one ("$user", public).
func (s *session) searchPath() []string {
	s.mu.Lock()
	v, ok := s.sets["search_path"]
	s.mu.Unlock()
	if !ok {
		return nil
	}
	return searchPathOf(v, s.user)
}

// searchPathOf parses a session's search_path setting; nil for the
// default path.
func searchPathOf(v, user string) []string {
	path := parseSearchPath(strings.TrimPrefix(v, rawSetting), user)
	if slices.Equal(path, []string{user, "public"}) || slices.Equal(path, []string{"public"}) {
		return nil
	}
	return path
}

// parseSearchPath splits a search_path value as PostgreSQL does: a list
// of identifiers, unquoted ones folded to lower case, quoted ones kept,
// string literals (SET search_path = 'a', 'B') each one schema named
// exactly; "$user" is the session's user.
func parseSearchPath(v, user string) []string {
	var out []string
	for _, item := range splitList(v) {
		item = strings.TrimSpace(item)
		switch {
		case len(item) >= 2 && item[0] == '"' && item[len(item)-1] == '"':
			item = strings.ReplaceAll(item[1:len(item)-1], `""`, `"`)
		case len(item) >= 2 && item[0] == '\'' && item[len(item)-1] == '\'':
			// SET search_path = 'a', 'B': each literal is one schema,
			// named exactly (PostgreSQL quotes it as an identifier).
			item = strings.ReplaceAll(item[1:len(item)-1], `''`, `'`)
		default:
			item = strings.ToLower(item)
		}
		if item == "$user" {
			item = user
		}
		if item != "" {
			out = append(out, item)
		}
	}
	return out
}

// splitList splits v at the commas outside quotes.
func splitList(v string) []string {
	var out []string
	var quote byte
	start := 0
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
		case c == '"' || c == '\'':
			quote = c
		case c == ',':
			out = append(out, v[start:i])
			start = i + 1
		}
	}
	return append(out, v[start:])
}

// unqualifiedUnderPath refuses, under another search_path, DDL that
// registers or unregisters a table named without its schema.
func (s *session) unqualifiedUnderPath(sql string, ddl []router.TableDDL) error {
	if len(ddl) == 0 || s.searchPath() == nil {
		return nil
	}
	rels, _ := router.Relations(sql)
	for _, r := range rels {
		if r.Schema == "" && !r.Temp {
			return wire.Errorf(wire.CodeFeatureNotSupported, "pgshard: CREATE or DROP of table %s without its schema while the session's search_path is not the default: name the schema (pgshard registers the table under its schema)", r.Name)
		}
	}
	return nil
}
