package admin

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pgshard/pgshard/shardmap"
)

// Store is what the admin API needs of a shard map member;
// *shardmap.Store implements it.
type Store interface {
	ID() string
	Addr() string
	IsLeader() bool
	LeaderID() string
	LeaderAddr() string
	Map() *shardmap.Map
	Apply(ctx context.Context, cmd shardmap.Command) (*shardmap.Map, error)
	AddVoter(ctx context.Context, id, addr string) error
	AddNonvoter(ctx context.Context, id, addr string) error
	RemoveServer(ctx context.Context, id string) error
	Servers() ([]shardmap.ServerInfo, error)
	Stats() map[string]string
	WaitForVersion(ctx context.Context, v uint64) error
}

// Headers of the API.
const (
	// HeaderMapVersion carries the map version a write produced.
	HeaderMapVersion = "X-Pgshard-Map-Version"
	// HeaderForwardedBy marks a write a follower forwarded to the leader.
	HeaderForwardedBy = "X-Pgshard-Forwarded-By"
)

// maxBody bounds request bodies.
const maxBody = 1 << 20

// Config configures a Server.
type Config struct {
	// Store is the node's shard map member (required).
	Store Store
	// Token is the bearer token the /v1 endpoints require; empty means
	// none (only sensible on a loopback address).
	Token string
	// AdminURL is how other members reach this node's admin API.
	AdminURL string
	// Peers are admin URLs of other members known from the configuration
	// (the join URLs); the nodes directory starts from them.
	Peers []string
	// DataDir, when set, keeps the nodes directory in
	// DataDir/admin-nodes.json across restarts.
	DataDir string
	// LeaderWait is how long a write waits for a leader during an
	// election before answering no_leader (default 10s).
	LeaderWait time.Duration
	// SyncInterval is how often the nodes directory is pulled from peers
	// (default 1s).
	SyncInterval time.Duration
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// HTTPClient for forwarding and syncing; nil means one with a 10s
	// timeout (reshardForwardTimeout for the reshard endpoints).
	HTTPClient *http.Client
	// Resharder runs reshard jobs (the /v1/reshard endpoints); nil on a
	// node without Raft, whose endpoints answer no_cluster.
	Resharder Resharder
	// AppliedVersion returns the map version the node's proxy routes by
	// (GET /v1/map/applied); nil: the node serves no proxy.
	AppliedVersion func() uint64
}

// Server serves the admin API of one node. Lifecycle: New → Register (on
// the daemon's mux) → Start → Close.
type Server struct {
	cfg   Config
	store Store
	log   *slog.Logger
	http  *http.Client
	// slow forwards the reshard endpoints, which plan against the shards'
	// databases and may take longer than other writes.
	slow  *http.Client
	token [32]byte

	mu    sync.Mutex
	nodes map[string]string // Raft ID → admin URL

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New returns a server for cfg.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("admin: Config.Store is required")
	}
	if cfg.LeaderWait <= 0 {
		cfg.LeaderWait = 10 * time.Second
	}
	if cfg.SyncInterval <= 0 {
		cfg.SyncInterval = time.Second
	}
	s := &Server{cfg: cfg, store: cfg.Store, log: cfg.Logger, http: cfg.HTTPClient, nodes: map[string]string{}}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.slow = cfg.HTTPClient
	if s.http == nil {
		s.http = &http.Client{Timeout: 10 * time.Second}
		s.slow = &http.Client{Timeout: reshardForwardTimeout}
	}
	s.token = sha256.Sum256([]byte(cfg.Token))
	s.loadNodes()
	if cfg.AdminURL != "" {
		s.nodes[cfg.Store.ID()] = strings.TrimRight(cfg.AdminURL, "/")
	}
	return s, nil
}

// Register adds the /v1 endpoints to mux, behind the token.
func (s *Server) Register(mux *http.ServeMux) {
	h := func(pattern string, f http.HandlerFunc) { mux.Handle(pattern, s.Auth(f)) }
	h("GET /v1/cluster", s.getCluster)
	h("POST /v1/cluster/join", s.postJoin)
	h("POST /v1/cluster/leave", s.postLeave)
	h("GET /v1/cluster/nodes", s.getNodes)
	h("GET /v1/shards", s.getShards)
	h("POST /v1/shards", s.postShard)
	h("DELETE /v1/shards/{name}", s.deleteShard)
	h("PUT /v1/shards/{name}/endpoints", s.putEndpoints)
	h("GET /v1/map", s.getMap)
	h("GET /v1/map/locate", s.getLocate)
	h("GET /v1/map/applied", s.getApplied)
	h("POST /v1/map/commands", s.postCommand)
	h("GET /v1/tables", s.getTables)
	h("POST /v1/tables", s.postTable)
	h("DELETE /v1/tables/{name}", s.deleteTable)
	h("GET /v1/txns", s.getTxns)
	h("POST /v1/txns", s.postTxn)
	h("GET /v1/txns/{gid}", s.getTxn)
	h("DELETE /v1/txns/{gid}", s.deleteTxn)
	h("POST /v1/reshard/plan", s.postReshardPlan)
	h("POST /v1/reshard", s.postReshard)
	h("GET /v1/reshard", s.getReshard)
	h("POST /v1/reshard/cancel", s.postReshardCancel)
	h("/v1/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, apiErr(http.StatusNotFound, CodeNotFound, "see `pgshardctl help` or the admin package documentation for the endpoints",
			"no endpoint %s %s", r.Method, r.URL.Path))
	})
}

// Auth wraps h so that it requires the bearer token (when one is set).
func (s *Server) Auth(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.Token != "" {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			sum := sha256.Sum256([]byte(got))
			if !ok || subtle.ConstantTimeCompare(sum[:], s.token[:]) != 1 {
				writeError(w, apiErr(http.StatusUnauthorized, CodeUnauthorized,
					"pass the node's admin_token with --token or PGSHARD_ADMIN_TOKEN",
					"missing or wrong bearer token"))
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// Start starts the nodes directory sync. It stops at Close.
func (s *Server) Start(ctx context.Context) {
	ctx, s.cancel = context.WithCancel(ctx)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(s.cfg.SyncInterval)
		defer t.Stop()
		for {
			s.syncNodes(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
}

// Close stops the sync goroutine and waits for it.
func (s *Server) Close() {
	if s.cancel != nil {
		s.cancel()
	}
	s.wg.Wait()
}

// ---- nodes directory

func (s *Server) nodesFile() string {
	if s.cfg.DataDir == "" {
		return ""
	}
	return filepath.Join(s.cfg.DataDir, "admin-nodes.json")
}

func (s *Server) loadNodes() {
	f := s.nodesFile()
	if f == "" {
		return
	}
	b, err := os.ReadFile(f)
	if err != nil {
		return
	}
	var n map[string]string
	if err := json.Unmarshal(b, &n); err != nil {
		s.log.Warn("admin: ignoring unreadable nodes directory", "file", f, "err", err)
		return
	}
	maps.Copy(s.nodes, n)
}

// saveNodes writes the directory; called with s.mu held.
func (s *Server) saveNodes() {
	f := s.nodesFile()
	if f == "" {
		return
	}
	b, _ := json.Marshal(s.nodes)
	tmp := f + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err == nil {
		err = os.Rename(tmp, f)
		if err != nil {
			s.log.Warn("admin: save nodes directory", "err", err)
		}
	}
}

// setNode records id's admin URL. authoritative entries (the node itself
// said so, or it joined with it) replace; others only fill gaps.
func (s *Server) setNode(id, url string, authoritative bool) {
	url = strings.TrimRight(url, "/")
	if id == "" || url == "" || id == s.store.ID() {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.nodes[id]; ok && (old == url || !authoritative) {
		return
	}
	s.nodes[id] = url
	s.saveNodes()
}

// AdminURLOf returns the admin URL of Raft server id, or "".
func (s *Server) AdminURLOf(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nodes[id]
}

func (s *Server) nodesCopy() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.nodes)
}

func (s *Server) syncNodes(ctx context.Context) {
	urls := map[string]bool{}
	for _, u := range s.cfg.Peers {
		urls[strings.TrimRight(u, "/")] = true
	}
	for id, u := range s.nodesCopy() {
		if id != s.store.ID() {
			urls[u] = true
		}
	}
	self := strings.TrimRight(s.cfg.AdminURL, "/")
	delete(urls, self)
	// The request tells the peer who we are, so a node that knows only
	// some members is found by the others.
	q := ""
	if self != "" {
		q = "?" + url.Values{"id": {s.store.ID()}, "url": {self}}.Encode()
	}
	for u := range urls {
		var n Nodes
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		err := s.call(cctx, http.MethodGet, u+"/v1/cluster/nodes"+q, nil, &n)
		cancel()
		if err != nil {
			continue
		}
		s.setNode(n.Self, n.Nodes[n.Self], true)
		for id, nu := range n.Nodes {
			s.setNode(id, nu, false)
		}
	}
}

// call makes one request to a peer's admin API with this node's token.
func (s *Server) call(ctx context.Context, method, url string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if s.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+s.cfg.Token)
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s %s: %s", method, url, resp.Status)
	}
	return json.NewDecoder(io.LimitReader(resp.Body, maxBody)).Decode(out)
}

// ---- responses

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, err error) {
	ae := toAPIError(err)
	writeJSON(w, ae.Status, ae)
}

func badRequest(format string, args ...any) *APIError {
	return apiErr(http.StatusBadRequest, CodeBadRequest, "see `pgshardctl help`", format, args...)
}

func decodeBody(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("request body: %v", err)
	}
	return nil
}

// ---- reads

func (s *Server) status() Status {
	m := s.store.Map()
	st := Status{
		NodeID:      s.store.ID(),
		RaftAddr:    s.store.Addr(),
		AdminURL:    strings.TrimRight(s.cfg.AdminURL, "/"),
		IsLeader:    s.store.IsLeader(),
		LeaderID:    s.store.LeaderID(),
		LeaderAddr:  s.store.LeaderAddr(),
		MapVersion:  m.Version(),
		RingVersion: m.RingVersion(),
		Stats:       s.store.Stats(),
		Servers:     []Member{},
	}
	if st.LeaderID != "" {
		st.LeaderAdminURL = s.AdminURLOf(st.LeaderID)
	}
	if servers, err := s.store.Servers(); err == nil {
		for _, sv := range servers {
			st.Servers = append(st.Servers, Member{ID: sv.ID, Addr: sv.Addr, Suffrage: sv.Suffrage, Leader: sv.Leader, AdminURL: s.AdminURLOf(sv.ID)})
		}
	}
	return st
}

func (s *Server) getCluster(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.status())
}

func (s *Server) getNodes(w http.ResponseWriter, r *http.Request) {
	if q := r.URL.Query(); q.Get("id") != "" && q.Get("url") != "" {
		s.setNode(q.Get("id"), q.Get("url"), true)
	}
	writeJSON(w, http.StatusOK, Nodes{Self: s.store.ID(), Nodes: s.nodesCopy()})
}

func shardInfos(m *shardmap.Map) []ShardInfo {
	var own map[string]float64
	counts := map[string]int{}
	if rg := m.Ring(); rg != nil {
		own = rg.Ownership()
		for _, t := range rg.Tokens() {
			counts[t.Shard]++
		}
	}
	out := []ShardInfo{}
	for _, sh := range m.Shards() {
		out = append(out, ShardInfo{Shard: sh, Tokens: counts[sh.Name], Ownership: own[sh.Name]})
	}
	return out
}

func (s *Server) getShards(w http.ResponseWriter, r *http.Request) {
	s.catchUp(r)
	m := s.store.Map()
	writeJSON(w, http.StatusOK, ShardsList{MapVersion: m.Version(), Shards: shardInfos(m)})
}

func (s *Server) getMap(w http.ResponseWriter, r *http.Request) {
	s.catchUp(r)
	m := s.store.Map()
	b, err := m.MarshalJSON()
	if err != nil {
		writeError(w, err)
		return
	}
	v := MapView{NodeID: s.store.ID(), Map: b, Ownership: map[string]float64{}}
	if rg := m.Ring(); rg != nil {
		v.Ownership = rg.Ownership()
	}
	writeJSON(w, http.StatusOK, v)
}

// Locate answers a locate query from m (shared with pgshardctl's tests).
func Locate(m *shardmap.Map, typ, key string) (Location, error) {
	if typ == "" {
		typ = "int"
	}
	kt, err := shardmap.ParseKeyType(typ)
	if err != nil {
		return Location{}, err
	}
	h, rg, shard, err := m.Locate(kt, key)
	if err != nil {
		return Location{}, err
	}
	return Location{Key: key, Type: kt.String(), Hash: h, RangeStart: rg.Start, RangeEnd: rg.End, Wraps: rg.Wraps(),
		Shard: shard, MapVersion: m.Version()}, nil
}

func (s *Server) getLocate(w http.ResponseWriter, r *http.Request) {
	s.catchUp(r)
	q := r.URL.Query()
	if !q.Has("key") {
		writeError(w, badRequest("missing query parameter key (e.g. /v1/map/locate?key=42&type=int)"))
		return
	}
	loc, err := Locate(s.store.Map(), q.Get("type"), q.Get("key"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, loc)
}

func (s *Server) getTables(w http.ResponseWriter, r *http.Request) {
	s.catchUp(r)
	m := s.store.Map()
	ts := m.Tables()
	if ts == nil {
		ts = []shardmap.Table{}
	}
	writeJSON(w, http.StatusOK, TablesList{MapVersion: m.Version(), Tables: ts})
}

// catchUp makes a read on a follower wait (briefly) until the local map has
// the version the leader holds now, so that a change made through any node
// is seen by the next read through this one. ?stale=1 skips it; without a
// reachable leader the local map answers as it is.
func (s *Server) catchUp(r *http.Request) {
	if r.URL.Query().Get("stale") != "" || s.store.IsLeader() {
		return
	}
	leader := s.store.LeaderID()
	u := s.AdminURLOf(leader)
	if leader == "" || u == "" {
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	var st Status
	if err := s.call(ctx, http.MethodGet, u+"/v1/cluster", nil, &st); err != nil || st.NodeID != leader {
		return
	}
	_ = s.store.WaitForVersion(ctx, st.MapVersion)
}

// ---- writes

// writeOp runs a write on this node; on a follower it returns a
// shardmap.ErrNotLeader error and the request is forwarded.
type writeOp func(ctx context.Context, body []byte) (result any, version uint64, err error)

// write runs op here when this node leads, else forwards the request to the
// leader's admin API, waiting for a leader during an election.
func (s *Server) write(w http.ResponseWriter, r *http.Request, op writeOp) {
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		writeError(w, badRequest("read request body: %v", err))
		return
	}
	if len(body) > maxBody {
		writeError(w, badRequest("request body larger than %d bytes", maxBody))
		return
	}
	ctx := r.Context()
	deadline := time.Now().Add(s.cfg.LeaderWait)
	var lastErr error
	for {
		res, version, err := op(ctx, body)
		if err == nil {
			w.Header().Set(HeaderMapVersion, strconv.FormatUint(version, 10))
			writeJSON(w, http.StatusOK, res)
			return
		}
		if !errors.Is(err, shardmap.ErrNotLeader) {
			writeError(w, err)
			return
		}
		if r.Header.Get(HeaderForwardedBy) != "" {
			// Forwarded to us, but we no longer lead: let the sender retry.
			writeError(w, err)
			return
		}
		leader := s.store.LeaderID()
		var nle *shardmap.NotLeaderError
		if errors.As(err, &nle) && nle.LeaderID != "" {
			leader = nle.LeaderID
		}
		lastErr = err
		if leader != "" && leader != s.store.ID() {
			if url := s.AdminURLOf(leader); url != "" {
				done, ferr := s.forward(w, r, url, body)
				if done {
					return
				}
				lastErr = fmt.Errorf("forward to leader %s at %s: %w", leader, url, ferr)
			} else {
				s.syncNodes(ctx) // ask the peers we know; retried below
				lastErr = apiErr(http.StatusServiceUnavailable, CodeNotLeader,
					"send the request to the leader's admin API directly, or retry once the nodes have synced their directory",
					"this node is not the leader and does not know the admin URL of leader %s", leader)
			}
		}
		if time.Now().After(deadline) {
			if leader == "" {
				writeError(w, apiErr(http.StatusServiceUnavailable, CodeNoLeader,
					"an election may be in progress or a majority of voters is down: retry, and check `pgshardctl cluster status` on each node",
					"no Raft leader after %s", s.cfg.LeaderWait))
				return
			}
			writeError(w, lastErr)
			return
		}
		select {
		case <-ctx.Done():
			writeError(w, apiErr(http.StatusServiceUnavailable, CodeNoLeader, "retry", "request cancelled while waiting for a leader"))
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// forward relays the request to the leader at url. done reports whether an
// answer was written (any answer of the leader, which is authoritative);
// otherwise the leader could not be reached or no longer leads.
func (s *Server) forward(w http.ResponseWriter, r *http.Request, url string, body []byte) (done bool, err error) {
	req, err := http.NewRequestWithContext(r.Context(), r.Method, url+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return false, err
	}
	if a := r.Header.Get("Authorization"); a != "" {
		req.Header.Set("Authorization", a)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderForwardedBy, s.store.ID())
	hc := s.http
	if strings.HasPrefix(r.URL.Path, "/v1/reshard") {
		hc = s.slow
	}
	resp, err := hc.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4*maxBody))
	if err != nil {
		return false, err
	}
	if resp.StatusCode == http.StatusServiceUnavailable {
		var ae APIError
		if json.Unmarshal(b, &ae) == nil && ae.Code == CodeNotLeader {
			return false, &ae // the leader changed under us: retry
		}
	}
	if v, perr := strconv.ParseUint(resp.Header.Get(HeaderMapVersion), 10, 64); perr == nil && resp.StatusCode == http.StatusOK {
		// Read-your-writes on this node: wait (briefly) for our copy.
		wctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		_ = s.store.WaitForVersion(wctx, v)
		cancel()
		w.Header().Set(HeaderMapVersion, strconv.FormatUint(v, 10))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(b)
	return true, nil
}

func (s *Server) apply(ctx context.Context, cmd shardmap.Command) (*shardmap.Map, error) {
	m, err := s.store.Apply(ctx, cmd)
	if err != nil {
		return nil, err
	}
	return m, nil
}

func (s *Server) postJoin(w http.ResponseWriter, r *http.Request) {
	s.write(w, r, func(ctx context.Context, body []byte) (any, uint64, error) {
		var req JoinRequest
		if err := decodeBody(body, &req); err != nil {
			return nil, 0, err
		}
		if req.ID == "" || req.Addr == "" {
			return nil, 0, badRequest("join needs id and addr (the node's Raft ID and Raft address)")
		}
		var err error
		switch req.Suffrage {
		case "", "voter":
			req.Suffrage = "voter"
			err = s.store.AddVoter(ctx, req.ID, req.Addr)
		case "nonvoter":
			err = s.store.AddNonvoter(ctx, req.ID, req.Addr)
		default:
			return nil, 0, badRequest("suffrage %q: want voter or nonvoter", req.Suffrage)
		}
		if req.AdminURL != "" {
			// Record it even when we are not the leader: it is this node's
			// own statement of its URL.
			s.setNode(req.ID, req.AdminURL, true)
		}
		if err != nil {
			return nil, 0, err
		}
		s.log.Info("admin: node joined", "id", req.ID, "addr", req.Addr, "suffrage", req.Suffrage)
		v := s.store.Map().Version()
		return WriteResult{MapVersion: v, Message: fmt.Sprintf("%s (%s) is a %s", req.ID, req.Addr, req.Suffrage)}, v, nil
	})
}

func (s *Server) postLeave(w http.ResponseWriter, r *http.Request) {
	s.write(w, r, func(ctx context.Context, body []byte) (any, uint64, error) {
		var req LeaveRequest
		if err := decodeBody(body, &req); err != nil {
			return nil, 0, err
		}
		if req.ID == "" {
			return nil, 0, badRequest("leave needs id (the node's Raft ID)")
		}
		if err := s.store.RemoveServer(ctx, req.ID); err != nil {
			return nil, 0, err
		}
		s.log.Info("admin: node removed", "id", req.ID)
		v := s.store.Map().Version()
		return WriteResult{MapVersion: v, Message: req.ID + " removed from the cluster"}, v, nil
	})
}

func (s *Server) postShard(w http.ResponseWriter, r *http.Request) {
	s.write(w, r, func(ctx context.Context, body []byte) (any, uint64, error) {
		var req AddShardRequest
		if err := decodeBody(body, &req); err != nil {
			return nil, 0, err
		}
		if req.Name == "" || req.Primary == "" {
			return nil, 0, badRequest("a shard needs a name and a primary DSN")
		}
		if req.Vnodes < 0 || req.Vnodes > shardmap.MaxVnodes {
			return nil, 0, badRequest("vnodes %d: want 1..%d (0 for the default %d)", req.Vnodes, shardmap.MaxVnodes, shardmap.DefaultVnodes)
		}
		sh := shardmap.Shard{Name: req.Name, Primary: req.Primary, Replicas: req.Replicas}
		place := req.Place || s.store.Map().Ring() == nil
		cmd := shardmap.AddSpareShard(sh)
		if place {
			cmd = shardmap.AddShard(sh, req.Vnodes)
		}
		m, err := s.apply(ctx, cmd)
		if err != nil {
			return nil, 0, err
		}
		res := AddShardResult{WriteResult: WriteResult{MapVersion: m.Version()}}
		for _, si := range shardInfos(m) {
			if si.Name == req.Name {
				res.Shard = si
			}
		}
		if place {
			res.Message = fmt.Sprintf("shard %s added and placed on the ring: it owns %.2f%% of the hash space", req.Name, 100*res.Shard.Ownership)
		} else {
			res.Message = fmt.Sprintf("shard %s registered as %s: it owns no ranges until a reshard job moves some to it", req.Name, res.Shard.State)
		}
		return res, m.Version(), nil
	})
}

func (s *Server) deleteShard(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	s.write(w, r, func(ctx context.Context, body []byte) (any, uint64, error) {
		m, err := s.apply(ctx, shardmap.RemoveShard(name))
		if err != nil {
			return nil, 0, err
		}
		return WriteResult{MapVersion: m.Version(), Message: "shard " + name + " removed"}, m.Version(), nil
	})
}

func (s *Server) putEndpoints(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	s.write(w, r, func(ctx context.Context, body []byte) (any, uint64, error) {
		var req EndpointsRequest
		if err := decodeBody(body, &req); err != nil {
			return nil, 0, err
		}
		if req.Primary == "" {
			return nil, 0, badRequest("set-endpoints needs a primary DSN")
		}
		if _, ok := s.store.Map().Shard(name); !ok {
			return nil, 0, apiErr(http.StatusNotFound, CodeUnknownShard, "list shards with `pgshardctl shards list`", "no shard %q", name)
		}
		m, err := s.apply(ctx, shardmap.SetEndpoints(name, req.Primary, req.Replicas))
		if err != nil {
			return nil, 0, err
		}
		return WriteResult{MapVersion: m.Version(), Message: fmt.Sprintf("shard %s: primary and %d replica(s) set", name, len(req.Replicas))}, m.Version(), nil
	})
}

func (s *Server) postTable(w http.ResponseWriter, r *http.Request) {
	s.write(w, r, func(ctx context.Context, body []byte) (any, uint64, error) {
		var req AddTableRequest
		if err := decodeBody(body, &req); err != nil {
			return nil, 0, err
		}
		if req.Name == "" {
			return nil, 0, badRequest("a table needs a name")
		}
		t := shardmap.Table{Name: req.Name, Kind: shardmap.TableKind(req.Kind), KeyColumn: req.KeyColumn, KeyOrdinal: req.KeyOrdinal}
		switch t.Kind {
		case "", shardmap.TableSharded, shardmap.TableReference:
		default:
			return nil, 0, badRequest("table kind %q: want sharded or reference", req.Kind)
		}
		if req.KeyType != "" {
			kt, err := shardmap.ParseKeyType(req.KeyType)
			if err != nil {
				return nil, 0, badRequest("key type %q: want int, text or uuid", req.KeyType)
			}
			t.KeyType = kt
		}
		m, err := s.apply(ctx, shardmap.AddTable(t))
		if err != nil {
			return nil, 0, err
		}
		return WriteResult{MapVersion: m.Version(), Message: "table " + req.Name + " defined"}, m.Version(), nil
	})
}

func (s *Server) deleteTable(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	s.write(w, r, func(ctx context.Context, body []byte) (any, uint64, error) {
		m, err := s.apply(ctx, shardmap.RemoveTable(name))
		if err != nil {
			return nil, 0, err
		}
		return WriteResult{MapVersion: m.Version(), Message: "table " + name + " removed"}, m.Version(), nil
	})
}
