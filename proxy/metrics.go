package proxy

import (
	"time"

	"github.com/pgshard/pgshard/pool"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the proxy's Prometheus metrics.
type metrics struct {
	clients      prometheus.Gauge
	parked       prometheus.Gauge
	clientsTotal prometheus.Counter
	rejected     *prometheus.CounterVec
	queries      prometheus.Counter
	errors       *prometheus.CounterVec
	latency      prometheus.Histogram
	wait         prometheus.Histogram
	waitErrors   prometheus.Counter
	routed       *prometheus.CounterVec
	retries      *prometheus.CounterVec
	holds        prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer, srv *Server) *metrics {
	m := &metrics{
		clients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgshard_client_connections", Help: "Client connections open now."}),
		parked: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgshard_client_connections_parked", Help: "Idle client connections parked: no goroutine and no buffers (included in pgshard_client_connections)."}),
		clientsTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgshard_client_connections_total", Help: "Client connections accepted."}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgshard_client_rejections_total", Help: "Client connections refused, by reason."}, []string{"reason"}),
		queries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgshard_queries_total", Help: "Queries and extended-protocol syncs answered."}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgshard_errors_total", Help: "Errors sent to clients, by SQLSTATE."}, []string{"sqlstate"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "pgshard_query_duration_seconds", Help: "Time from a query (or Sync) reaching pgshard to its ReadyForQuery.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 18)}),
		wait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "pgshard_pool_wait_seconds", Help: "Time spent waiting for a backend connection.",
			Buckets: prometheus.ExponentialBuckets(10e-6, 4, 12)}),
		waitErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgshard_pool_wait_errors_total", Help: "Acquisitions that failed (timeout or connect error)."}),
		routed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgshard_routed_queries_total", Help: "Queries and syncs answered, by shard, role and node."},
			[]string{"shard", "role", "node"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgshard_read_retries_total", Help: "Reads re-sent after a replica failed or refused them, by reason."},
			[]string{"reason"}),
		holds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "pgshard_frozen_hold_seconds", Help: "Time statements on a range being cut over to another shard waited.",
			Buckets: prometheus.ExponentialBuckets(1e-3, 2, 14)}),
	}
	if reg != nil {
		reg.MustRegister(m.clients, m.parked, m.clientsTotal, m.rejected, m.queries, m.errors, m.latency, m.wait, m.waitErrors,
			m.routed, m.retries, m.holds, &poolCollector{srv: srv})
	}
	return m
}

// Waited implements pool.Observer.
func (m *metrics) Waited(_ *pool.Pool, d time.Duration, err error) {
	m.wait.Observe(d.Seconds())
	if err != nil {
		m.waitErrors.Inc()
	}
}

var (
	descServerConns = prometheus.NewDesc("pgshard_server_connections",
		"Backend connections by pool and state.", []string{"pool", "state"}, nil)
	descWaiting = prometheus.NewDesc("pgshard_pool_waiting_clients",
		"Clients waiting for a backend connection.", []string{"pool"}, nil)
	descPoolSize = prometheus.NewDesc("pgshard_pool_size",
		"Configured size of each pool.", []string{"pool"}, nil)
	descLagBytes = prometheus.NewDesc("pgshard_replica_lag_bytes",
		"WAL bytes the replica has not replayed yet.", []string{"shard", "node"}, nil)
	descLagSeconds = prometheus.NewDesc("pgshard_replica_lag_seconds",
		"How far behind the replica's replay is in time.", []string{"shard", "node"}, nil)
	descExcluded = prometheus.NewDesc("pgshard_replica_excluded",
		"1 when the replica takes no reads (unhealthy or lagging).", []string{"shard", "node"}, nil)
)

// poolCollector reports every pool's connection counts at scrape time.
type poolCollector struct{ srv *Server }

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descServerConns
	ch <- descWaiting
	ch <- descPoolSize
	ch <- descLagBytes
	ch <- descLagSeconds
	ch <- descExcluded
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	for _, p := range c.srv.pools() {
		st := p.Stats()
		n := p.Name()
		ch <- prometheus.MustNewConstMetric(descServerConns, prometheus.GaugeValue, float64(st.Idle), n, "idle")
		ch <- prometheus.MustNewConstMetric(descServerConns, prometheus.GaugeValue, float64(st.Active), n, "active")
		ch <- prometheus.MustNewConstMetric(descServerConns, prometheus.GaugeValue, float64(st.Dialing), n, "connecting")
		ch <- prometheus.MustNewConstMetric(descWaiting, prometheus.GaugeValue, float64(st.Waiting), n)
		ch <- prometheus.MustNewConstMetric(descPoolSize, prometheus.GaugeValue, float64(st.Size), n)
	}
	for _, rt := range c.srv.shardList() {
		if rt.monitor == nil {
			continue
		}
		for i, r := range rt.monitor.Status() {
			node := replicaName(i)
			excluded := 0.0
			if r.Excluded {
				excluded = 1
			}
			ch <- prometheus.MustNewConstMetric(descLagBytes, prometheus.GaugeValue, float64(r.LagBytes), rt.name, node)
			ch <- prometheus.MustNewConstMetric(descLagSeconds, prometheus.GaugeValue, r.LagTime.Seconds(), rt.name, node)
			ch <- prometheus.MustNewConstMetric(descExcluded, prometheus.GaugeValue, excluded, rt.name, node)
		}
	}
}
