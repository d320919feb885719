package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgshard/pgshard/config"
	"github.com/pgshard/pgshard/replication"
	"github.com/prometheus/client_golang/prometheus"
)

// shardRT is a shard at run time: its servers, the health monitor of its
// replicas, and per-node counters.
type shardRT struct {
	name     string
	primary  string   // connection string
	replicas []string // connection strings
	monitor  *replication.Monitor
	policy   replication.Policy
	started  atomic.Bool

	outstanding []atomic.Int64 // batches in flight per replica
	routed      []prometheus.Counter
	routedPrim  prometheus.Counter
}

// replicaName is the node label of replica i.
func replicaName(i int) string { return fmt.Sprintf("replica%d", i) }

func newShardRT(cfg config.Config, sh config.Shard, m *metrics, logger *slog.Logger) (*shardRT, error) {
	rt := &shardRT{name: sh.Name, primary: sh.Primary, replicas: sh.Replicas,
		outstanding: make([]atomic.Int64, len(sh.Replicas))}
	rt.routedPrim = m.routed.WithLabelValues(sh.Name, "primary", "primary")
	for i := range sh.Replicas {
		rt.routed = append(rt.routed, m.routed.WithLabelValues(sh.Name, "replica", replicaName(i)))
	}
	if len(sh.Replicas) == 0 || !cfg.Routing.ReadWriteSplit {
		return rt, nil
	}
	user, password, db := cfg.MonitorLogin()
	node := func(name, dsn string) (replication.Node, error) {
		cs, err := withLogin(dsn, user, password, db)
		if err != nil {
			return replication.Node{}, fmt.Errorf("shard %s: %s: %w", sh.Name, name, err)
		}
		return replication.Node{Name: name, ConnString: cs}, nil
	}
	p, err := node("primary", sh.Primary)
	if err != nil {
		return nil, err
	}
	var reps []replication.Node
	for i, r := range sh.Replicas {
		n, err := node(replicaName(i), r)
		if err != nil {
			return nil, err
		}
		reps = append(reps, n)
	}
	rt.policy = replication.PolicyLeastOutstanding
	if cfg.Routing.LoadBalance == "round_robin" {
		rt.policy = replication.PolicyRoundRobin
	}
	mon, err := replication.NewMonitor(replication.Config{
		Interval:    cfg.Routing.HealthInterval.Duration,
		Timeout:     cfg.Routing.HealthTimeout.Duration,
		MaxLagBytes: cfg.Routing.MaxLagBytes,
		MaxLagTime:  cfg.Routing.MaxLag.Duration,
		Logger:      logger,
	}, p, reps)
	if err != nil {
		return nil, fmt.Errorf("shard %s: %w", sh.Name, err)
	}
	rt.monitor = mon
	return rt, nil
}

// withLogin adds a login to a server's connection string (config.WithLogin)
// and checks that the result parses.
func withLogin(dsn, user, password, db string) (string, error) {
	cs := config.WithLogin(dsn, user, password, db)
	if _, err := pgconn.ParseConfig(cs); err != nil {
		return "", err
	}
	return cs, nil
}

// pick chooses the replica for a read by a session that last wrote at
// wroteAt (zero: never, or read-your-writes is off); ok is false when the
// primary must answer.
func (rt *shardRT) pick(wroteAt time.Time) (int, bool) {
	if rt.monitor == nil {
		return 0, false
	}
	return rt.monitor.Pick(wroteAt, rt.policy, func(i int) int { return int(rt.outstanding[i].Load()) })
}

func (rt *shardRT) start(ctx context.Context) {
	if rt.monitor != nil && rt.started.CompareAndSwap(false, true) {
		rt.monitor.Start(ctx)
	}
}

func (rt *shardRT) close() {
	if rt.monitor != nil {
		rt.monitor.Close()
	}
}
