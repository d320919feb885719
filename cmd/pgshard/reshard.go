package main

// What the resharder needs of a cluster node (resharder.Store,
// resharder.Nodes), the check of a job's database against [resharding],
// and the loop that drives jobs while this node leads.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pgshard/pgshard/admin"
	"github.com/pgshard/pgshard/resharder"
	"github.com/pgshard/pgshard/shardmap"
)

const (
	// leaderPoll is how often a leader-only loop checks that this node
	// still leads.
	leaderPoll = 100 * time.Millisecond
	// leaderRestartDelay is the pause before a leader-only task that
	// returned by itself (its context still live) is started again.
	leaderRestartDelay = time.Second
	// appliedPollMax bounds the pause between two rounds of
	// raftNodes.WaitApplied (it starts at a few milliseconds: the wait is
	// part of the cut-over's pause).
	appliedPollMax = 100 * time.Millisecond
	// appliedRequestTimeout bounds one GET /v1/map/applied.
	appliedRequestTimeout = 2 * time.Second
)

// reshardStore is resharder.Store over the node's Raft store: the local
// map, and commands applied on the store when this node leads, else
// through the node's own admin API, which forwards them to the leader.
type reshardStore struct {
	store *shardmap.Store
	api   *admin.Client // this node's admin API; nil: no forwarding
	log   *slog.Logger
}

var _ resharder.Store = (*reshardStore)(nil)

func newReshardStore(store *shardmap.Store, adminURL, token string, log *slog.Logger) *reshardStore {
	s := &reshardStore{store: store, log: log}
	if adminURL != "" {
		s.api = admin.NewClient(adminURL, token)
	}
	return s
}

// Map returns this node's copy of the map.
func (s *reshardStore) Map() *shardmap.Map { return s.store.Map() }

// Apply runs cmd through the leader and returns the map it produced
// there. It is retried only while no leader takes it (shardmap.ErrNotLeader:
// the command was not applied), until ctx ends (or coordWriteTimeout when
// ctx has no deadline). Other errors are the map's (errors.Is works with
// shardmap's sentinels, also for an answer relayed from the leader), or
// shardmap.ErrLeadershipLost when the outcome is unknown.
func (s *reshardStore) Apply(ctx context.Context, cmd shardmap.Command) (*shardmap.Map, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, coordWriteTimeout)
		defer cancel()
	}
	for {
		var m *shardmap.Map
		var err error
		if s.store.IsLeader() || s.api == nil {
			m, err = s.store.Apply(ctx, cmd)
		} else if m, err = s.api.ApplyCommand(ctx, cmd); err != nil {
			err = fromLeader(err)
		} else {
			// The caller reads its own write from the local map next.
			wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			_ = s.store.WaitForVersion(wctx, m.Version())
			cancel()
		}
		if err == nil || !errors.Is(err, shardmap.ErrNotLeader) {
			return m, err
		}
		s.log.Debug("resharder: map command: no leader took it; retrying", "command", cmd.Type, "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("apply %s: %w (last attempt: %w)", cmd.Type, ctx.Err(), err)
		case <-time.After(coordRetryDelay):
		}
	}
}

// leaderErrors are the shardmap errors behind the admin API's codes.
var leaderErrors = map[admin.ErrorCode]error{
	admin.CodeStaleVersion:   shardmap.ErrStaleVersion,
	admin.CodeLeadershipLost: shardmap.ErrLeadershipLost,
	admin.CodeNotLeader:      shardmap.ErrNotLeader,
	admin.CodeNoLeader:       shardmap.ErrNotLeader,
	admin.CodeShardExists:    shardmap.ErrShardExists,
	admin.CodeUnknownShard:   shardmap.ErrUnknownShard,
	admin.CodeShardOnRing:    shardmap.ErrShardOnRing,
	admin.CodeTableExists:    shardmap.ErrTableExists,
	admin.CodeUnknownTable:   shardmap.ErrUnknownTable,
	admin.CodeUnknownJob:     shardmap.ErrUnknownJob,
	admin.CodeUnknownTxn:     shardmap.ErrUnknownTxn,
	admin.CodeTxnTableFull:   shardmap.ErrTxnTableFull,
	admin.CodeNoRing:         shardmap.ErrNoRing,
	admin.CodeBadRequest:     shardmap.ErrInvalidCommand,
}

// leaderError is the admin API's answer to a command, which is also the
// shardmap error behind its code.
type leaderError struct {
	sentinel error
	api      *admin.APIError
}

func (e *leaderError) Error() string   { return e.api.Error() }
func (e *leaderError) Unwrap() []error { return []error{e.sentinel, e.api} }

// fromLeader makes an admin API error of a command testable with
// shardmap's sentinels.
func fromLeader(err error) error {
	var ae *admin.APIError
	if errors.As(err, &ae) {
		if sentinel, ok := leaderErrors[ae.Code]; ok {
			return &leaderError{sentinel: sentinel, api: ae}
		}
	}
	return err
}

// raftNodes is resharder.Nodes over the Raft configuration and the admin
// nodes directory.
type raftNodes struct {
	store *shardmap.Store
	self  func() uint64 // the map version this node's proxy routes by
	token string
	http  *http.Client
	log   *slog.Logger

	mu  sync.Mutex
	dir interface{ AdminURLOf(id string) string } // set once the admin API exists
}

var _ resharder.Nodes = (*raftNodes)(nil)

func newRaftNodes(store *shardmap.Store, self func() uint64, token string, log *slog.Logger) *raftNodes {
	return &raftNodes{store: store, self: self, token: token, log: log,
		http: &http.Client{Timeout: appliedRequestTimeout}}
}

func (n *raftNodes) setDirectory(dir interface{ AdminURLOf(id string) string }) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.dir = dir
}

func (n *raftNodes) adminURLOf(id string) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.dir == nil {
		return ""
	}
	return n.dir.AdminURLOf(id)
}

// WaitApplied returns once the proxy of every member of the Raft
// configuration (voters and non-voters) reports, through its admin API's
// GET /v1/map/applied, that it routes by map version v or later. It polls
// (every few milliseconds at first) until ctx ends; then it fails naming
// each member still waited for and why (behind, unreachable, admin URL not
// known).
func (n *raftNodes) WaitApplied(ctx context.Context, v uint64) error {
	done := map[string]bool{}  // versions only grow: a member is asked until it reports v
	why := map[string]string{} // the last thing learnt of a member not done
	delay := 2 * time.Millisecond
	for {
		servers, err := n.store.Servers()
		if errors.Is(err, shardmap.ErrClosed) {
			return fmt.Errorf("wait for every node to route by map version %d: %w", v, err)
		}
		var waiting []string
		if err != nil {
			waiting = append(waiting, fmt.Sprintf("the Raft configuration (%v)", err))
		}
		var todo []string
		for _, sv := range servers {
			if !done[sv.ID] {
				todo = append(todo, sv.ID)
			}
		}
		whys := make([]string, len(todo))
		var wg sync.WaitGroup
		for i, id := range todo {
			wg.Add(1)
			go func() { defer wg.Done(); whys[i] = n.check(ctx, id, v) }()
		}
		wg.Wait()
		for i, id := range todo {
			switch {
			case whys[i] == "":
				done[id] = true
			case ctx.Err() != nil && why[id] != "":
				// The request was cut by the deadline: what the member
				// answered before says more.
			default:
				why[id] = whys[i]
			}
			if !done[id] {
				waiting = append(waiting, id+" ("+why[id]+")")
			}
		}
		if len(waiting) == 0 && len(servers) > 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			slices.Sort(waiting)
			return fmt.Errorf("wait for every node to route by map version %d: %w; still waiting for %s",
				v, ctx.Err(), strings.Join(waiting, ", "))
		case <-time.After(delay):
		}
		delay = min(2*delay, appliedPollMax)
	}
}

// check asks member id for its applied version: "" when it reached v,
// else why not.
func (n *raftNodes) check(ctx context.Context, id string, v uint64) string {
	if id == n.store.ID() {
		if a := n.self(); a < v {
			return fmt.Sprintf("at version %d", a)
		}
		return ""
	}
	u := n.adminURLOf(id)
	if u == "" {
		return "its admin URL is not in this node's nodes directory yet"
	}
	c := admin.NewClient(u, n.token)
	c.HTTP = n.http
	a, err := c.Applied(ctx)
	var ae *admin.APIError
	switch {
	case errors.As(err, &ae):
		return fmt.Sprintf("%s answers %d %s", u, ae.Status, ae.Code)
	case err != nil:
		return "unreachable at " + u + ": " + rootCause(err).Error()
	case a.NodeID != id:
		return fmt.Sprintf("%s answers as node %q", u, a.NodeID)
	case a.Applied < v:
		return fmt.Sprintf("at version %d", a.Applied)
	}
	return ""
}

// reshardService is the resharder as the admin API drives it, with a
// job's database defaulting to [resharding] database.
type reshardService struct {
	*resharder.Runner
	database string
}

var _ admin.Resharder = reshardService{}

// withDatabase fills in the configured database; a job must have one.
func (s reshardService) withDatabase(spec resharder.Spec) (resharder.Spec, error) {
	if spec.Database == "" {
		spec.Database = s.database
	}
	if spec.Database == "" {
		return spec, fmt.Errorf("%w: no database named: give --database, or set [resharding] database in every node's configuration", resharder.ErrBadSpec)
	}
	return spec, nil
}

// Plan plans spec against the map.
func (s reshardService) Plan(ctx context.Context, spec resharder.Spec) (*resharder.Plan, error) {
	spec, err := s.withDatabase(spec)
	if err != nil {
		return nil, err
	}
	return s.Runner.Plan(ctx, spec)
}

// Start starts a job for spec.
func (s reshardService) Start(ctx context.Context, spec resharder.Spec) (*resharder.Status, error) {
	spec, err := s.withDatabase(spec)
	if err != nil {
		return nil, err
	}
	return s.Runner.Start(ctx, spec)
}

// lead runs task while this node is the Raft leader, until ctx ends (see
// leadLoop); close waits for it.
func (n *clusterNode) lead(ctx context.Context, name string, task func(context.Context)) {
	n.wg.Add(1)
	go func() { defer n.wg.Done(); n.leadLoop(ctx, name, task, leaderPoll) }()
}

// leadLoop starts task once this node leads and has applied its whole log
// (the job's checkpoints must be there before it acts on them), cancels
// task's context as soon as the node no longer leads (checked every poll),
// and waits for task to return before it may start it again. A task that
// returns by itself while the node leads is started again after a pause.
func (n *clusterNode) leadLoop(ctx context.Context, name string, task func(context.Context), poll time.Duration) {
	t := time.NewTicker(poll)
	defer t.Stop()
	tick := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		}
	}
	for tick() {
		if !n.store.IsLeader() {
			continue
		}
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := n.store.WaitForIndex(wctx, n.store.LastIndex())
		cancel()
		if err != nil || !n.store.IsLeader() {
			continue
		}
		n.log.Info(name+": this node leads; starting", "map_version", n.store.Map().Version())
		tctx, stop := context.WithCancel(ctx)
		ended := make(chan struct{})
		go func() { defer close(ended); task(tctx) }()
		returned := false
	watch:
		for {
			select {
			case <-ended:
				returned = true
				break watch
			case <-ctx.Done():
				break watch
			case <-t.C:
				if !n.store.IsLeader() {
					n.log.Info(name + ": this node no longer leads; stopping")
					break watch
				}
			}
		}
		stop()
		<-ended
		if returned && ctx.Err() == nil {
			n.log.Warn(name+": returned while this node leads; starting it again", "after", leaderRestartDelay)
			select {
			case <-ctx.Done():
			case <-time.After(leaderRestartDelay):
			}
		}
	}
}

// rootCause is the innermost error of err's chain (e.g. "connection
// refused" of a failed dial).
func rootCause(err error) error {
	for {
		next := errors.Unwrap(err)
		if next == nil {
			return err
		}
		err = next
	}
}
