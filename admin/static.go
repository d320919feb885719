package admin

import (
	"context"
	"net/http"

	"github.com/pgshard/pgshard/shardmap"
)

// errNoCluster answers writes on a node that runs without Raft.
var errNoCluster = apiErr(http.StatusConflict, CodeNoCluster,
	"this node runs without a cluster and routes to the [[shards]] of its configuration file: set [cluster] data_dir (and bootstrap = true) to keep the map in Raft",
	"the shard map of this node is read-only")

// StaticStore is a read-only Store over a fixed map, for a node that runs
// without Raft: reads (status, shards, map, locate, tables) work, writes
// fail with code no_cluster.
type StaticStore struct {
	NodeID string
	M      *shardmap.Map
}

// StaticMap builds the map a node without Raft routes with: the given
// shards placed on the ring in order, as a cluster seeded from the same
// configuration would place them.
func StaticMap(shards []shardmap.Shard) (*shardmap.Map, error) {
	m := &shardmap.Map{}
	for _, sh := range shards {
		next, err := m.Apply(shardmap.AddShard(sh, 0))
		if err != nil {
			return nil, err
		}
		m = next
	}
	return m, nil
}

func (s *StaticStore) ID() string         { return s.NodeID }
func (s *StaticStore) Addr() string       { return "" }
func (s *StaticStore) IsLeader() bool     { return false }
func (s *StaticStore) LeaderID() string   { return "" }
func (s *StaticStore) LeaderAddr() string { return "" }
func (s *StaticStore) Map() *shardmap.Map { return s.M }
func (s *StaticStore) Apply(context.Context, shardmap.Command) (*shardmap.Map, error) {
	return nil, errNoCluster
}
func (s *StaticStore) AddVoter(context.Context, string, string) error    { return errNoCluster }
func (s *StaticStore) AddNonvoter(context.Context, string, string) error { return errNoCluster }
func (s *StaticStore) RemoveServer(context.Context, string) error        { return errNoCluster }
func (s *StaticStore) Servers() ([]shardmap.ServerInfo, error)           { return nil, nil }
func (s *StaticStore) Stats() map[string]string {
	return map[string]string{"state": "no cluster", "node_id": s.NodeID}
}
func (s *StaticStore) WaitForVersion(context.Context, uint64) error { return nil }
