package admin

import (
	"encoding/json"

	"github.com/pgshard/pgshard/shardmap"
)

// Status is the answer of GET /v1/cluster.
type Status struct {
	NodeID         string            `json:"node_id"`
	RaftAddr       string            `json:"raft_addr"`
	AdminURL       string            `json:"admin_url"`
	IsLeader       bool              `json:"is_leader"`
	LeaderID       string            `json:"leader_id"`
	LeaderAddr     string            `json:"leader_addr"`
	LeaderAdminURL string            `json:"leader_admin_url,omitempty"`
	Servers        []Member          `json:"servers"`
	MapVersion     uint64            `json:"map_version"`
	RingVersion    uint64            `json:"ring_version"`
	Stats          map[string]string `json:"stats"`
}

// Member is one server of the Raft configuration.
type Member struct {
	ID       string `json:"id"`
	Addr     string `json:"addr"`
	Suffrage string `json:"suffrage"` // voter, nonvoter or staging
	Leader   bool   `json:"leader"`
	AdminURL string `json:"admin_url,omitempty"`
}

// JoinRequest asks the leader to add a node (POST /v1/cluster/join).
type JoinRequest struct {
	ID       string `json:"id"`
	Addr     string `json:"addr"`               // Raft address
	Suffrage string `json:"suffrage,omitempty"` // voter (default) or nonvoter
	AdminURL string `json:"admin_url,omitempty"`
}

// LeaveRequest asks the leader to remove a node (POST /v1/cluster/leave).
type LeaveRequest struct {
	ID string `json:"id"`
}

// Nodes is the nodes directory (GET /v1/cluster/nodes).
type Nodes struct {
	Self  string            `json:"self"`
	Nodes map[string]string `json:"nodes"` // Raft server ID → admin URL
}

// WriteResult is the answer of a write that changed the map or the Raft
// configuration.
type WriteResult struct {
	MapVersion uint64 `json:"map_version"`
	Message    string `json:"message,omitempty"`
}

// ShardInfo is a shard with its place on the ring.
type ShardInfo struct {
	shardmap.Shard
	Tokens    int     `json:"tokens"`
	Ownership float64 `json:"ownership"` // share of the hash space, 0..1
}

// ShardsList is the answer of GET /v1/shards.
type ShardsList struct {
	MapVersion uint64      `json:"map_version"`
	Shards     []ShardInfo `json:"shards"`
}

// AddShardRequest registers a shard (POST /v1/shards). With Place (or when
// no shard is on the ring yet) the shard is placed on the ring at once and
// takes 1/(N+1) of the hash space: only right while the shards hold no data,
// since nothing is moved. Without it the shard is registered as joining and
// owns nothing until a reshard job gives it ranges.
type AddShardRequest struct {
	Name     string   `json:"name"`
	Primary  string   `json:"primary"`
	Replicas []string `json:"replicas,omitempty"`
	Place    bool     `json:"place,omitempty"`
	Vnodes   int      `json:"vnodes,omitempty"`
}

// AddShardResult is the answer of POST /v1/shards.
type AddShardResult struct {
	WriteResult
	Shard ShardInfo `json:"shard"`
}

// EndpointsRequest replaces a shard's DSNs (PUT /v1/shards/{name}/endpoints).
type EndpointsRequest struct {
	Primary  string   `json:"primary"`
	Replicas []string `json:"replicas,omitempty"`
}

// MapView is the answer of GET /v1/map: the map as shardmap encodes it
// (decode with shardmap.DecodeMap) and each shard's share of the ring.
type MapView struct {
	NodeID    string             `json:"node_id"`
	Map       json.RawMessage    `json:"map"`
	Ownership map[string]float64 `json:"ownership"`
}

// Location is the answer of GET /v1/map/locate.
type Location struct {
	Key        string `json:"key"`
	Type       string `json:"type"`
	Hash       int64  `json:"hash"`
	RangeStart int64  `json:"range_start"` // the range is (start, end]
	RangeEnd   int64  `json:"range_end"`
	Wraps      bool   `json:"wraps"`
	Shard      string `json:"shard"`
	MapVersion uint64 `json:"map_version"`
}

// TablesList is the answer of GET /v1/tables.
type TablesList struct {
	MapVersion uint64           `json:"map_version"`
	Tables     []shardmap.Table `json:"tables"`
}

// AddTableRequest defines a table (POST /v1/tables); see shardmap.AddTable
// for defaults (sharded, key user_id, type int).
type AddTableRequest struct {
	Name      string `json:"name"`
	Kind      string `json:"kind,omitempty"`
	KeyColumn string `json:"key_column,omitempty"`
	KeyType   string `json:"key_type,omitempty"`
	// KeyOrdinal is the key column's 1-based position among the table's
	// columns (0: unknown), for INSERT and COPY without a column list.
	KeyOrdinal int `json:"key_ordinal,omitempty"`
}
