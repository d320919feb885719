package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/pgshard/pgshard/resharder"
	"github.com/pgshard/pgshard/shardmap"
)

// Resharding (pgshardctl reshard) and what it needs of every node: the
// map version each node's proxy routes by, and a way for a follower's
// resharder to apply its commands through the leader.

// Resharder is what the admin API needs of the resharder;
// *resharder.Runner implements it.
type Resharder interface {
	Plan(ctx context.Context, spec resharder.Spec) (*resharder.Plan, error)
	Start(ctx context.Context, spec resharder.Spec) (*resharder.Status, error)
	Status(ctx context.Context) (*resharder.Status, error)
	Cancel(ctx context.Context) (*resharder.Status, error)
}

// reshardForwardTimeout bounds a reshard request a follower forwards to
// the leader: a plan reads every shard involved (each connection may take
// seconds to fail), and a forward that times out is sent again.
const reshardForwardTimeout = 2 * time.Minute

// errReshardNoCluster answers the reshard endpoints of a node without
// Raft (or without a resharder).
var errReshardNoCluster = apiErr(http.StatusConflict, CodeNoCluster,
	"resharding records its progress in the Raft shard map: set [cluster] data_dir (and bootstrap = true) on every node",
	"this node runs without a cluster: resharding is not available")

// Applied is the answer of GET /v1/map/applied: the map version this
// node's proxy routes by (every statement that starts from now on uses
// that map or a later one), next to the version of its copy of the map.
type Applied struct {
	NodeID     string `json:"node_id"`
	Applied    uint64 `json:"applied_version"`
	MapVersion uint64 `json:"map_version"`
}

// CommandResult is the answer of POST /v1/map/commands: the map the
// command produced on the leader, as shardmap encodes it.
type CommandResult struct {
	MapVersion uint64          `json:"map_version"`
	Map        json.RawMessage `json:"map"`
}

func (s *Server) getApplied(w http.ResponseWriter, r *http.Request) {
	if s.cfg.AppliedVersion == nil {
		writeError(w, apiErr(http.StatusNotFound, CodeNotFound, "ask a pgshard daemon's admin API",
			"this node serves no proxy, so it applies no map"))
		return
	}
	// The applied version first: the store's copy is then at least as new.
	a := s.cfg.AppliedVersion()
	writeJSON(w, http.StatusOK, Applied{NodeID: s.store.ID(), Applied: a, MapVersion: s.store.Map().Version()})
}

// postCommand applies one shard map command (as shardmap.Command.Encode
// writes it) on the leader: how a follower's resharder writes through the
// leader. It is forwarded like every write.
func (s *Server) postCommand(w http.ResponseWriter, r *http.Request) {
	s.write(w, r, func(ctx context.Context, body []byte) (any, uint64, error) {
		cmd, err := shardmap.DecodeCommand(body)
		if err != nil {
			return nil, 0, badRequest("%v", err)
		}
		m, err := s.apply(ctx, cmd)
		if err != nil {
			return nil, 0, err
		}
		b, err := m.MarshalJSON()
		if err != nil {
			return nil, 0, err
		}
		return CommandResult{MapVersion: m.Version(), Map: b}, m.Version(), nil
	})
}

// onLeader runs f on the leader: here when this node leads, else the
// request is forwarded to the leader's admin API (whose resharder runs
// the job and knows its live progress), waiting for one during an
// election.
func (s *Server) onLeader(w http.ResponseWriter, r *http.Request, f func(ctx context.Context, body []byte) (any, error)) {
	if s.cfg.Resharder == nil {
		writeError(w, errReshardNoCluster)
		return
	}
	s.write(w, r, func(ctx context.Context, body []byte) (any, uint64, error) {
		if !s.store.IsLeader() {
			return nil, 0, &shardmap.NotLeaderError{LeaderID: s.store.LeaderID(), LeaderAddr: s.store.LeaderAddr()}
		}
		res, err := f(ctx, body)
		if err != nil {
			return nil, 0, err
		}
		return res, s.store.Map().Version(), nil
	})
}

// decodeSpec reads a request's Spec and checks its shape; the resharder
// checks it against the map.
func decodeSpec(body []byte) (resharder.Spec, error) {
	var spec resharder.Spec
	if err := decodeBody(body, &spec); err != nil {
		return spec, err
	}
	hint := "give add (a new shard's name and primary) or remove (a shard's name): `pgshardctl reshard plan --add NAME --primary DSN` or `--remove NAME`"
	switch {
	case spec.Add != nil && spec.Remove != "":
		return spec, apiErr(http.StatusBadRequest, CodeBadSpec, hint, "a job adds one shard or removes one, not both")
	case spec.Add == nil && spec.Remove == "":
		return spec, apiErr(http.StatusBadRequest, CodeBadSpec, hint, "the request names no shard to add or remove")
	case spec.Add != nil && (spec.Add.Name == "" || spec.Add.Primary == ""):
		return spec, apiErr(http.StatusBadRequest, CodeBadSpec, hint, "a shard to add needs a name and a primary DSN")
	}
	return spec, nil
}

func (s *Server) postReshardPlan(w http.ResponseWriter, r *http.Request) {
	s.onLeader(w, r, func(ctx context.Context, body []byte) (any, error) {
		spec, err := decodeSpec(body)
		if err != nil {
			return nil, err
		}
		return s.cfg.Resharder.Plan(ctx, spec)
	})
}

func (s *Server) postReshard(w http.ResponseWriter, r *http.Request) {
	s.onLeader(w, r, func(ctx context.Context, body []byte) (any, error) {
		spec, err := decodeSpec(body)
		if err != nil {
			return nil, err
		}
		st, err := s.cfg.Resharder.Start(ctx, spec)
		if err == nil {
			s.log.Info("admin: reshard job started", "id", st.ID, "phase", st.Phase)
		}
		return st, err
	})
}

func (s *Server) getReshard(w http.ResponseWriter, r *http.Request) {
	s.onLeader(w, r, func(ctx context.Context, _ []byte) (any, error) {
		return s.cfg.Resharder.Status(ctx)
	})
}

func (s *Server) postReshardCancel(w http.ResponseWriter, r *http.Request) {
	s.onLeader(w, r, func(ctx context.Context, _ []byte) (any, error) {
		st, err := s.cfg.Resharder.Cancel(ctx)
		if err == nil {
			s.log.Info("admin: reshard job cancelled", "id", st.ID, "phase", st.Phase)
		}
		return st, err
	})
}

// reshardAPIError maps the resharder's errors to answers; ok is false for
// other errors.
func reshardAPIError(err error) (ae *APIError, ok bool) {
	e := func(status int, code ErrorCode, hint string) (*APIError, bool) {
		return &APIError{Status: status, Code: code, Hint: hint, Message: err.Error()}, true
	}
	switch {
	case errors.Is(err, resharder.ErrNoJob):
		return e(http.StatusNotFound, CodeNoJob, "start one with `pgshardctl reshard start`")
	case errors.Is(err, resharder.ErrJobRunning):
		return e(http.StatusConflict, CodeJobRunning,
			"one job at a time: follow it with `pgshardctl reshard status --watch`, or cancel it (before its cut-over) with `pgshardctl reshard cancel`")
	case errors.Is(err, resharder.ErrPastCutover):
		return e(http.StatusConflict, CodePastCutover,
			"the new ring is committed, so the job can only finish: follow it with `pgshardctl reshard status --watch`")
	}
	return nil, false
}

// reshardSpecError maps a spec the resharder refused (after the map's own
// errors, which name the shard or table more precisely).
func reshardSpecError(err error) (*APIError, bool) {
	if errors.Is(err, resharder.ErrBadSpec) {
		return &APIError{Status: http.StatusBadRequest, Code: CodeBadSpec, Message: err.Error(),
			Hint: "see `pgshardctl reshard help`; `pgshardctl shards list` and `pgshardctl tables list` show the map"}, true
	}
	return nil, false
}
