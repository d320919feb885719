package main

// The node's part of the Raft cluster that replicates the shard map: open
// the store, join the cluster, seed an empty map from [[shards]], keep
// the proxy following the map, and (on the leader) finish in-doubt
// prepared transactions (coord.go).

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/pgshard/pgshard/admin"
	"github.com/pgshard/pgshard/config"
	"github.com/pgshard/pgshard/shardmap"
)

// shardFollower is what the cluster needs of the proxy.
type shardFollower interface {
	SetShards(shards []config.Shard) error
	SetMap(m *shardmap.Map)
}

// nodeProxy is the proxy as the cluster node drives it: it follows the
// map, and the leader has it finish in-doubt prepared transactions.
type nodeProxy interface {
	shardFollower
	preparedRecoverer
}

// clusterNode owns the store and the goroutines that join, seed and follow.
type clusterNode struct {
	cfg   config.Config
	log   *slog.Logger
	store *shardmap.Store
	wg    sync.WaitGroup
}

// nodeID returns the configured node ID, or the host name.
func nodeID(cfg config.Config) string {
	if cfg.Cluster.NodeID != "" {
		return cfg.Cluster.NodeID
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return "pgshard"
}

// openCluster opens the shard map store of this node. A data dir with no
// state and neither bootstrap nor join, or a damaged one, is an error that
// says what to do.
func openCluster(ctx context.Context, cfg config.Config, log *slog.Logger) (*clusterNode, error) {
	cl := cfg.Cluster
	sc := shardmap.StoreConfig{
		NodeID:           nodeID(cfg),
		RaftAddr:         cl.RaftListen,
		DataDir:          cl.DataDir,
		Bootstrap:        cl.Bootstrap,
		Join:             len(cl.Join) > 0,
		Logger:           log.With("component", "raft"),
		HeartbeatTimeout: cl.HeartbeatTimeout.Duration,
		ElectionTimeout:  cl.ElectionTimeout.Duration,
	}
	if hb := sc.HeartbeatTimeout; hb > 0 && hb < 500*time.Millisecond {
		sc.LeaderLeaseTimeout = hb // raft requires lease <= heartbeat
	}
	st, err := shardmap.NewStore(sc)
	if err != nil {
		return nil, fmt.Errorf("shard map: %w", err)
	}
	octx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := st.Open(octx); err != nil {
		hint := "" // the store's errors say what to do; name our keys too
		if errors.Is(err, shardmap.ErrNoState) {
			hint = " (set cluster.bootstrap = true on the first node, or cluster.join = [\"http://<member admin address>\"] on the others)"
		}
		return nil, fmt.Errorf("open shard map in %s: %w%s", cl.DataDir, err, hint)
	}
	log.Info("shard map store open", "node_id", st.ID(), "raft", st.Addr(), "data_dir", cl.DataDir,
		"map_version", st.Map().Version())
	return &clusterNode{cfg: cfg, log: log, store: st}, nil
}

// start runs the join, seed, follow and recovery loops until ctx ends.
func (n *clusterNode) start(ctx context.Context, adminURL string, proxy nodeProxy) {
	if len(n.cfg.Cluster.Join) > 0 {
		n.wg.Add(1)
		go func() { defer n.wg.Done(); n.joinLoop(ctx, adminURL) }()
	}
	if len(n.cfg.Shards) > 0 {
		n.wg.Add(1)
		go func() { defer n.wg.Done(); n.seedLoop(ctx) }()
	}
	coord := newMapCoord(n.store, adminURL, n.cfg.AdminToken, n.log.With("component", "coord"))
	n.wg.Add(1)
	go func() { defer n.wg.Done(); n.follow(ctx, proxy, coord) }()
	n.wg.Add(1)
	go func() { defer n.wg.Done(); n.recoverLoop(ctx, proxy, recoverInterval, recoverGrace) }()
}

// close waits for the loops (ctx must be cancelled first) and closes the store.
func (n *clusterNode) close(ctx context.Context) error {
	n.wg.Wait()
	return n.store.Close(ctx)
}

func (n *clusterNode) isMember() bool {
	servers, err := n.store.Servers()
	if err != nil {
		return false
	}
	return slices.ContainsFunc(servers, func(s shardmap.ServerInfo) bool { return s.ID == n.store.ID() })
}

// joinLoop asks the configured members to add this node, with retries, until
// one accepts (adding a member that is already there is a no-op, so a
// restarted node asks again, which also refreshes its admin URL) or this
// node finds itself a member with a leader.
func (n *clusterNode) joinLoop(ctx context.Context, adminURL string) {
	req := admin.JoinRequest{ID: n.store.ID(), Addr: n.store.Addr(), Suffrage: n.cfg.Cluster.Suffrage, AdminURL: adminURL}
	backoff := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		for _, u := range n.cfg.Cluster.Join {
			c := admin.NewClient(u, n.cfg.AdminToken)
			cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			_, err := c.Join(cctx, req)
			cancel()
			if err == nil {
				n.log.Info("joined the cluster", "via", u, "suffrage", req.Suffrage)
				return
			}
			if ctx.Err() != nil {
				return
			}
			lvl := slog.LevelDebug
			if attempt%10 == 1 {
				lvl = slog.LevelWarn
			}
			n.log.Log(ctx, lvl, "join: retrying", "via", u, "attempt", attempt, "err", err)
		}
		if n.isMember() && n.store.LeaderID() != "" {
			n.log.Info("already a member of the cluster; not asking to join", "leader", n.store.LeaderID())
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 3*time.Second)
	}
}

// seedLoop fills an empty map from the configuration's [[shards]], on the
// leader, once: it ends as soon as the map has any shard.
func (n *clusterNode) seedLoop(ctx context.Context) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		if len(n.store.Map().Shards()) > 0 {
			return
		}
		if n.store.IsLeader() {
			// A new leader may not have applied its whole log yet: look at
			// the map only once it has (entries apply in order anyway, so
			// a duplicate AddShard would only be refused).
			wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			werr := n.store.WaitForIndex(wctx, n.store.LastIndex())
			cancel()
			if werr != nil || len(n.store.Map().Shards()) > 0 {
				continue
			}
			if err := n.seed(ctx); err != nil {
				n.log.Warn("seeding the shard map from [[shards]] failed; retrying", "err", err)
			} else {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// seed places the file's [[shards]] on the empty map in one entry: a
// node never routes by a map that holds only some of them (a CREATE TABLE
// then would reach only those).
func (n *clusterNode) seed(ctx context.Context) error {
	var shards []shardmap.Shard
	for _, sh := range n.cfg.Shards {
		shards = append(shards, shardmap.Shard{Name: sh.Name, Primary: sh.Primary, Replicas: sh.Replicas})
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := n.store.Apply(cctx, shardmap.Seed(shards, 0))
	if errors.Is(err, shardmap.ErrShardExists) {
		return nil // seeded meanwhile
	}
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	n.log.Info("seeded the shard map", "shards", len(shards), "map_version", m.Version())
	return nil
}

// follow makes the proxy route to the map's shards after every change,
// from the moment this node has caught up with the cluster (catchUp) and
// the map has shards: until then the proxy refuses logins with 57P03
// (Server.AwaitMap).
func (n *clusterNode) follow(ctx context.Context, proxy shardFollower, coord *mapCoord) {
	t0 := time.Now()
	for {
		err := coord.catchUp(ctx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		n.log.Warn("catching up with the shard map before routing; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
	n.log.Info("caught up with the shard map", "map_version", n.store.Map().Version(), "took", time.Since(t0).Round(time.Millisecond))
	ch, cancel := n.store.Watch()
	defer cancel()
	var last []config.Shard
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-ch:
			if !ok {
				return
			}
			proxy.SetMap(m) // the ring and tables, at every version
			shards := configShards(m)
			if len(shards) == 0 || slices.EqualFunc(shards, last, shardEqual) {
				continue
			}
			if err := proxy.SetShards(shards); err != nil {
				n.log.Error("following the shard map failed; the proxy keeps its previous shards", "map_version", m.Version(), "err", err)
				continue
			}
			last = shards
			n.log.Info("proxy follows the shard map", "map_version", m.Version(), "shards", len(shards))
		}
	}
}

func configShards(m *shardmap.Map) []config.Shard {
	var out []config.Shard
	for _, sh := range m.Shards() {
		out = append(out, config.Shard{Name: sh.Name, Primary: sh.Primary, Replicas: sh.Replicas})
	}
	return out
}

func shardEqual(a, b config.Shard) bool {
	return a.Name == b.Name && a.Primary == b.Primary && slices.Equal(a.Replicas, b.Replicas)
}
