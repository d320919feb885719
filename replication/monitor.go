package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Sentinel errors.
var (
	// ErrBadLSN means a text was not a pg_lsn.
	ErrBadLSN = errors.New("replication: malformed LSN")
	// ErrNotInRecovery means a replica answered pg_is_in_recovery() = false:
	// it was promoted (or is not a replica at all) and takes no reads.
	ErrNotInRecovery = errors.New("replication: not in recovery")
	// ErrBadConfig means NewMonitor was given an invalid node or setting.
	ErrBadConfig = errors.New("replication: invalid configuration")
)

// Defaults: Interval and Timeout apply when zero; the lag bounds are the
// recommended settings for callers (a zero bound means no bound).
const (
	DefaultInterval    = 250 * time.Millisecond
	DefaultTimeout     = time.Second
	DefaultMaxLagBytes = 16 << 20
	DefaultMaxLagTime  = 5 * time.Second
)

// Config tunes a Monitor.
type Config struct {
	// Interval is the time between the starts of two checks of a node
	// (DefaultInterval when zero).
	Interval time.Duration
	// Timeout bounds one check, connecting included (DefaultTimeout when
	// zero). A check that times out counts as failed.
	Timeout time.Duration
	// MaxLagBytes excludes a replica whose replay position is further
	// behind the primary than this; zero (or negative) means no byte
	// bound. See DefaultMaxLagBytes.
	MaxLagBytes int64
	// MaxLagTime excludes a replica that has not replayed WAL the primary
	// had this long ago; zero (or negative) means no time bound. See
	// DefaultMaxLagTime.
	MaxLagTime time.Duration
	// Logger receives state changes (a replica excluded or back, the
	// primary unreachable); nil discards them.
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Interval <= 0 {
		c.Interval = DefaultInterval
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Node is a server to watch. ConnString (a libpq URL or key=value string,
// with user, password and dbname) is used for the Monitor's own
// connection; application_name defaults to "pgshard-monitor".
type Node struct {
	Name       string
	ConnString string
}

// Policy chooses among eligible replicas.
type Policy int

const (
	// PolicyLeastOutstanding picks the replica with the fewest outstanding
	// queries (as told by the caller); ties go round robin.
	PolicyLeastOutstanding Policy = iota
	// PolicyRoundRobin takes the eligible replicas in turn.
	PolicyRoundRobin
)

// String returns the configuration name of the policy.
func (p Policy) String() string {
	switch p {
	case PolicyLeastOutstanding:
		return "least_outstanding"
	case PolicyRoundRobin:
		return "round_robin"
	}
	return fmt.Sprintf("Policy(%d)", int(p))
}

// ParsePolicy parses "least_outstanding" or "round_robin" (hyphens also
// accepted).
func ParsePolicy(s string) (Policy, error) {
	switch s {
	case "least-outstanding", "least_outstanding":
		return PolicyLeastOutstanding, nil
	case "round-robin", "round_robin":
		return PolicyRoundRobin, nil
	}
	return 0, fmt.Errorf("replication: policy %q (want least_outstanding or round_robin): %w", s, ErrBadConfig)
}

// ReplicaStatus is what the Monitor knows about one replica.
type ReplicaStatus struct {
	Name string
	// Healthy: the last check succeeded, the server is in recovery, and
	// the proxy has not marked it down since.
	Healthy bool
	// Excluded: the replica takes no reads (unhealthy or beyond a lag
	// bound); Reason says why.
	Excluded bool
	Reason   string
	// ReplayLSN and ReceiveLSN are from the last successful check.
	ReplayLSN  LSN
	ReceiveLSN LSN
	// LagBytes and LagTime: see the package documentation.
	LagBytes int64
	LagTime  time.Duration
	// LastCheck is when the last check (successful or not) finished.
	LastCheck time.Time
	// Checks and Failures count checks since Start.
	Checks, Failures uint64
}

// PrimaryStatus is what the Monitor knows about the primary.
type PrimaryStatus struct {
	Name    string
	Healthy bool   // the last check succeeded
	Reason  string // why not healthy
	// LSN is the newest WAL position seen (record end, see package doc)
	// and SampledAt when the check that saw it was sent.
	LSN       LSN
	SampledAt time.Time
	LastCheck time.Time
	// Checks and Failures count checks since Start.
	Checks, Failures uint64
}

// Monitor watches one shard: a primary and its streaming replicas. It
// checks every node on its own goroutine over one persistent connection
// per node, and answers routing questions (Eligible, Pick) from an
// immutable snapshot without locks or allocation.
type Monitor struct {
	cfg     Config
	primary *node
	reps    []*node
	epoch   time.Time // the monotonic clock's zero

	snap atomic.Pointer[snapshot] // hot path
	rr   atomic.Uint32            // round-robin cursor

	mu      sync.Mutex // guards what follows and serialises snapshot updates
	hist    history
	pstate  primaryState
	rstate  []replicaState
	changed chan struct{} // closed and replaced on every recorded check
	cancel  context.CancelFunc
	started bool
	closed  bool

	wg sync.WaitGroup
}

// node is one watched server and its parsed connection settings.
type node struct {
	index   int // -1 for the primary
	name    string
	connCfg *pgconn.Config
}

// snapshot is the read-only state the hot path uses.
type snapshot struct {
	hist history
	reps []replicaView
}

// replicaView is the routing decision for one replica.
type replicaView struct {
	usable bool // healthy and within the lag bounds
	replay LSN
}

type primaryState struct {
	checked          bool
	ok               bool
	reason           string
	lastDone         time.Time
	doneSent         int64 // send time of the last finished check
	checks, failures uint64
}

type replicaState struct {
	checked    bool
	ok         bool
	seen       bool   // a check succeeded once: replay, receive, reported, sent are set
	reason     string // failure reason when !ok
	replay     LSN
	receive    LSN
	reported   time.Duration // now() - pg_last_xact_replay_timestamp() on the replica; -1 unknown
	sent       int64         // send time of the last successful check
	doneSent   int64         // send time of the last finished check
	lastDone   time.Time
	markedAt   int64 // MarkDown time, 0 = not marked
	markReason string
	checks     uint64
	failures   uint64

	// derived
	healthy  bool
	excluded bool
	why      string
	lagBytes int64
	lagTime  time.Duration
}

// NewMonitor returns a Monitor for a primary and its replicas; Start
// begins the checks. Until a replica's first successful check it is
// excluded ("not checked yet").
func NewMonitor(cfg Config, primary Node, replicas []Node) (*Monitor, error) {
	m := &Monitor{
		cfg:     cfg.withDefaults(),
		epoch:   time.Now(),
		rstate:  make([]replicaState, len(replicas)),
		changed: make(chan struct{}),
	}
	var err error
	if m.primary, err = newNode(-1, primary); err != nil {
		return nil, err
	}
	for i, r := range replicas {
		n, err := newNode(i, r)
		if err != nil {
			return nil, err
		}
		m.reps = append(m.reps, n)
	}
	m.mu.Lock()
	m.publishLocked()
	m.mu.Unlock()
	return m, nil
}

func newNode(index int, n Node) (*node, error) {
	c, err := pgconn.ParseConfig(n.ConnString)
	if err != nil {
		return nil, fmt.Errorf("replication: node %q: %w: %w", n.Name, ErrBadConfig, err)
	}
	if _, ok := c.RuntimeParams["application_name"]; !ok {
		c.RuntimeParams["application_name"] = "pgshard-monitor"
	}
	name := n.Name
	if name == "" {
		name = fmt.Sprintf("%s:%d", c.Host, c.Port)
	}
	return &node{index: index, name: name, connCfg: c}, nil
}

// Replicas returns the number of replicas (the range of i in Eligible,
// Pick, MarkDown and Status).
func (m *Monitor) Replicas() int { return len(m.reps) }

// now returns the Monitor's monotonic clock.
func (m *Monitor) now() int64 { return int64(time.Since(m.epoch)) }

// rel converts a time to the Monitor's clock (monotonic when t has a
// monotonic reading, as time.Now's results do).
func (m *Monitor) rel(t time.Time) int64 { return int64(t.Sub(m.epoch)) }

// abs converts the Monitor's clock back to a time.
func (m *Monitor) abs(ns int64) time.Time { return m.epoch.Add(time.Duration(ns)) }

// Eligible reports whether replica i may serve a read now. A zero wroteAt
// asks for any session; otherwise wroteAt is when the session's last write
// was acknowledged (its ReadyForQuery arrived), and the replica must also
// have replayed the primary's WAL position observed after it. It never
// blocks and never allocates.
func (m *Monitor) Eligible(i int, wroteAt time.Time) bool {
	s := m.snap.Load()
	if i < 0 || i >= len(s.reps) || !s.reps[i].usable {
		return false
	}
	if wroteAt.IsZero() {
		return true
	}
	t, ok := s.hist.target(m.rel(wroteAt))
	return ok && s.reps[i].replay >= t
}

// Watermark returns the read-your-writes target for a write acknowledged
// at wroteAt: a replica that has replayed up to it shows the write. ok is
// false when the primary has not been sampled since.
func (m *Monitor) Watermark(wroteAt time.Time) (LSN, bool) {
	return m.snap.Load().hist.target(m.rel(wroteAt))
}

// Pick chooses an eligible replica (see Eligible) by policy. outstanding,
// if not nil, returns the number of queries in flight on replica i (it is
// called without any lock held). ok is false when no replica is eligible:
// the caller reads from the primary. It never blocks and never allocates.
func (m *Monitor) Pick(wroteAt time.Time, policy Policy, outstanding func(i int) int) (int, bool) {
	s := m.snap.Load()
	n := len(s.reps)
	if n == 0 {
		return 0, false
	}
	var target LSN
	if !wroteAt.IsZero() {
		t, ok := s.hist.target(m.rel(wroteAt))
		if !ok {
			return 0, false
		}
		target = t
	}
	if policy == PolicyRoundRobin || outstanding == nil {
		// The k-th eligible replica, k turning: an excluded replica does
		// not double its neighbour's share.
		eligible := 0
		for i := range s.reps {
			if s.reps[i].usable && s.reps[i].replay >= target {
				eligible++
			}
		}
		if eligible == 0 {
			return 0, false
		}
		k := int(m.rr.Add(1) % uint32(eligible))
		for i := range s.reps {
			if s.reps[i].usable && s.reps[i].replay >= target {
				if k == 0 {
					return i, true
				}
				k--
			}
		}
		return 0, false // not reached
	}
	// Least outstanding; scanning from a turning start breaks ties round
	// robin.
	start := int(m.rr.Add(1) % uint32(n))
	best, bestOut := -1, 0
	for k := 0; k < n; k++ {
		i := start + k
		if i >= n {
			i -= n
		}
		r := &s.reps[i]
		if !r.usable || r.replay < target {
			continue
		}
		if o := outstanding(i); best < 0 || o < bestOut {
			best, bestOut = i, o
		}
	}
	return best, best >= 0
}

// PrimaryLSN returns the newest primary WAL position seen (a record end,
// see the package documentation) and when the check that saw it was sent;
// zero values before the first successful check.
func (m *Monitor) PrimaryLSN() (LSN, time.Time) {
	s, ok := m.snap.Load().hist.newest()
	if !ok {
		return 0, time.Time{}
	}
	return s.lsn, m.abs(s.last)
}

// MarkDown excludes replica i at once, for example because the proxy saw a
// connection to it fail, until a check that starts later succeeds.
func (m *Monitor) MarkDown(i int, err error) {
	if i < 0 || i >= len(m.reps) {
		return
	}
	reason := "marked down"
	if err != nil {
		reason = "marked down: " + err.Error()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st := &m.rstate[i]
	st.markedAt = max(m.now(), 1)
	st.markReason = reason
	m.publishLocked()
}

// Status returns the state of every replica, in the order given to
// NewMonitor.
func (m *Monitor) Status() []ReplicaStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]ReplicaStatus, len(m.reps))
	for i, n := range m.reps {
		st := &m.rstate[i]
		out[i] = ReplicaStatus{
			Name:       n.name,
			Healthy:    st.healthy,
			Excluded:   st.excluded,
			Reason:     st.why,
			ReplayLSN:  st.replay,
			ReceiveLSN: st.receive,
			LagBytes:   st.lagBytes,
			LagTime:    st.lagTime,
			LastCheck:  st.lastDone,
			Checks:     st.checks,
			Failures:   st.failures,
		}
	}
	return out
}

// Primary returns the state of the primary.
func (m *Monitor) Primary() PrimaryStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := PrimaryStatus{
		Name:      m.primary.name,
		Healthy:   m.pstate.ok,
		Reason:    m.pstate.reason,
		LastCheck: m.pstate.lastDone,
		Checks:    m.pstate.checks,
		Failures:  m.pstate.failures,
	}
	if !m.pstate.checked {
		p.Reason = "not checked yet"
	}
	if s, ok := m.hist.newest(); ok {
		p.LSN, p.SampledAt = s.lsn, m.abs(s.last)
	}
	return p
}

// Start begins checking every node, one goroutine per node, until ctx
// ends or Close is called. Calling it again does nothing.
func (m *Monitor) Start(ctx context.Context) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started || m.closed {
		return
	}
	m.started = true
	ctx, m.cancel = context.WithCancel(ctx)
	m.wg.Add(1 + len(m.reps))
	go m.run(ctx, m.primary)
	for _, n := range m.reps {
		go m.run(ctx, n)
	}
}

// Close stops the checks, closes the connections and waits for every
// goroutine. Routing answers stay available (from the last state).
func (m *Monitor) Close() {
	m.mu.Lock()
	m.closed = true
	cancel := m.cancel
	m.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	m.wg.Wait()
}

// WaitChecked returns once every node has finished a check that started
// after the call (successful or not), or when ctx ends.
func (m *Monitor) WaitChecked(ctx context.Context) error {
	from := m.now()
	for {
		m.mu.Lock()
		done := m.pstate.doneSent >= from
		for i := range m.rstate {
			done = done && m.rstate[i].doneSent >= from
		}
		ch := m.changed
		m.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("replication: wait for a round of checks: %w", ctx.Err())
		}
	}
}

// primaryResult is the outcome of one primary check.
type primaryResult struct {
	lsn LSN // record end
}

// replicaResult is the outcome of one replica check.
type replicaResult struct {
	inRecovery bool
	replay     LSN
	receive    LSN
	reported   time.Duration
}

// recordPrimary stores a primary check sent at sent.
func (m *Monitor) recordPrimary(sent int64, res primaryResult, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := &m.pstate
	was := st.checked && st.ok
	st.checked = true
	st.checks++
	st.lastDone = time.Now()
	st.doneSent = sent
	if err != nil {
		st.failures++
		st.ok, st.reason = false, err.Error()
		if was || st.failures == 1 {
			m.cfg.Logger.Warn("primary check failed", "node", m.primary.name, "err", err)
		}
	} else {
		st.ok, st.reason = true, ""
		if !was && st.failures > 0 {
			m.cfg.Logger.Info("primary reachable again", "node", m.primary.name)
		}
		var reset bool
		m.hist, reset = m.hist.add(res.lsn, sent)
		if reset {
			m.cfg.Logger.Warn("primary WAL position went backwards; history reset", "node", m.primary.name, "lsn", res.lsn)
		}
	}
	m.publishLocked()
}

// recordReplica stores a check of replica i sent at sent.
func (m *Monitor) recordReplica(i int, sent int64, res replicaResult, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := &m.rstate[i]
	st.checked = true
	st.checks++
	st.lastDone = time.Now()
	st.doneSent = sent
	if err == nil && !res.inRecovery {
		err = ErrNotInRecovery
	}
	if err != nil {
		st.failures++
		st.ok = false
		st.reason = "check failed: " + err.Error()
		if errors.Is(err, ErrNotInRecovery) {
			st.reason = "not in recovery"
		}
	} else {
		st.ok, st.seen, st.reason = true, true, ""
		st.replay, st.receive, st.reported, st.sent = res.replay, res.receive, res.reported, sent
		if st.markedAt != 0 && sent > st.markedAt {
			st.markedAt, st.markReason = 0, ""
		}
	}
	m.publishLocked()
}

// publishLocked derives every replica's state from the raw check results
// and publishes a new snapshot; it wakes WaitChecked. m.mu must be held.
func (m *Monitor) publishLocked() {
	snap := &snapshot{hist: m.hist, reps: make([]replicaView, len(m.rstate))}
	for i := range m.rstate {
		st := &m.rstate[i]
		wasExcluded, wasWhy := st.excluded, st.why
		d := evaluate(m.cfg, m.hist, st)
		st.healthy, st.excluded, st.why, st.lagBytes, st.lagTime = d.healthy, d.excluded, d.why, d.lagBytes, d.lagTime
		snap.reps[i] = replicaView{usable: !d.excluded, replay: st.replay}
		if st.checked && (wasExcluded != d.excluded || (d.excluded && category(wasWhy) != category(d.why))) {
			if d.excluded {
				m.cfg.Logger.Warn("replica excluded", "node", m.reps[i].name, "reason", d.why)
			} else {
				m.cfg.Logger.Info("replica eligible", "node", m.reps[i].name, "lag_bytes", d.lagBytes, "lag_time", d.lagTime)
			}
		}
	}
	m.snap.Store(snap)
	close(m.changed)
	m.changed = make(chan struct{})
}

// category is the first word of a reason, to log a change of reason once.
func category(why string) string {
	w, _, _ := strings.Cut(why, " ")
	return w
}

// derived is a replica's routing state.
type derived struct {
	healthy  bool
	excluded bool
	why      string
	lagBytes int64
	lagTime  time.Duration
}

// evaluate decides whether a replica may take reads. It is pure.
func evaluate(cfg Config, h history, st *replicaState) derived {
	var d derived
	switch {
	case !st.checked:
		d.why = "not checked yet"
	case !st.ok:
		d.why = st.reason
	case st.markedAt != 0:
		d.why = st.markReason
	default:
		d.healthy = true
	}
	if st.seen {
		bytes, age, covered := h.lag(st.replay, st.sent)
		lagTime := time.Duration(age)
		if !covered && st.reported > lagTime {
			lagTime = st.reported
		}
		d.lagBytes, d.lagTime = bytes, lagTime
	}
	if !d.healthy {
		d.excluded = true
		return d
	}
	if cfg.MaxLagBytes > 0 && d.lagBytes > cfg.MaxLagBytes {
		d.excluded = true
		d.why = fmt.Sprintf("lag %d bytes > %d", d.lagBytes, cfg.MaxLagBytes)
	} else if cfg.MaxLagTime > 0 && d.lagTime > cfg.MaxLagTime {
		d.excluded = true
		d.why = fmt.Sprintf("lag %s > %s", d.lagTime.Round(time.Millisecond), cfg.MaxLagTime)
	}
	return d
}
