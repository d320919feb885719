package admin

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/pgshard/pgshard/shardmap"
)

// Two-phase commit decisions in the shard map (shardmap.DecideTxn). The
// coordinator of every node records its decisions through these endpoints
// (a follower forwards them to the leader like every write), and the
// leader's recovery pass reads and forgets them.

// DecideTxnRequest records a decision (POST /v1/txns).
type DecideTxnRequest struct {
	GID    string `json:"gid"`
	Commit bool   `json:"commit"`
}

// TxnInfo is a transaction's recorded decision: the answer of POST
// /v1/txns (the outcome that stands, which is the first one recorded) and
// of GET /v1/txns/{gid} (Decided is false when none is recorded).
type TxnInfo struct {
	MapVersion uint64    `json:"map_version"`
	GID        string    `json:"gid"`
	Decided    bool      `json:"decided"`
	Commit     bool      `json:"commit"`
	DecidedAt  time.Time `json:"decided_at,omitzero"`
	// DecidedVersion is the map version that recorded the decision.
	DecidedVersion uint64 `json:"decided_version,omitempty"`
}

// TxnsList is the answer of GET /v1/txns.
type TxnsList struct {
	MapVersion uint64                 `json:"map_version"`
	Txns       []shardmap.TxnDecision `json:"txns"`
}

func txnInfo(m *shardmap.Map, gid string) TxnInfo {
	info := TxnInfo{MapVersion: m.Version(), GID: gid}
	if d, ok := m.TxnDecision(gid); ok {
		info.Decided, info.Commit, info.DecidedAt, info.DecidedVersion = true, d.Commit, d.At, d.Version
	}
	return info
}

func (s *Server) getTxns(w http.ResponseWriter, r *http.Request) {
	s.catchUp(r)
	m := s.store.Map()
	ts := m.TxnDecisions()
	if ts == nil {
		ts = []shardmap.TxnDecision{}
	}
	writeJSON(w, http.StatusOK, TxnsList{MapVersion: m.Version(), Txns: ts})
}

func (s *Server) getTxn(w http.ResponseWriter, r *http.Request) {
	s.catchUp(r)
	writeJSON(w, http.StatusOK, txnInfo(s.store.Map(), r.PathValue("gid")))
}

// postTxn records a decision on the leader, with the leader's clock as its
// time, and answers with the decision that stands.
func (s *Server) postTxn(w http.ResponseWriter, r *http.Request) {
	s.write(w, r, func(ctx context.Context, body []byte) (any, uint64, error) {
		var req DecideTxnRequest
		if err := decodeBody(body, &req); err != nil {
			return nil, 0, err
		}
		if req.GID == "" {
			return nil, 0, badRequest("a decision needs the transaction's gid")
		}
		m, err := s.apply(ctx, shardmap.DecideTxn(req.GID, req.Commit, time.Now()))
		if err != nil {
			return nil, 0, err
		}
		info := txnInfo(m, req.GID)
		if !info.Decided {
			return nil, 0, fmt.Errorf("decide transaction %s: map version %d holds no decision for it", req.GID, m.Version())
		}
		return info, m.Version(), nil
	})
}

func (s *Server) deleteTxn(w http.ResponseWriter, r *http.Request) {
	gid := r.PathValue("gid")
	s.write(w, r, func(ctx context.Context, body []byte) (any, uint64, error) {
		m, err := s.apply(ctx, shardmap.ForgetTxn(gid))
		if err != nil {
			return nil, 0, err
		}
		return WriteResult{MapVersion: m.Version(), Message: "decision for transaction " + gid + " forgotten"}, m.Version(), nil
	})
}

// DecideTxn records commit or rollback for a prepared transaction unless
// a decision is recorded already, and returns the decision that stands.
func (c *Client) DecideTxn(ctx context.Context, gid string, commit bool) (*TxnInfo, error) {
	var r TxnInfo
	return &r, c.do(ctx, http.MethodPost, "/v1/txns", DecideTxnRequest{GID: gid, Commit: commit}, &r)
}

// Txn returns a transaction's recorded decision (Decided false: none).
func (c *Client) Txn(ctx context.Context, gid string) (*TxnInfo, error) {
	var r TxnInfo
	return &r, c.do(ctx, http.MethodGet, "/v1/txns/"+url.PathEscape(gid), nil, &r)
}

// Txns lists the recorded decisions.
func (c *Client) Txns(ctx context.Context) (*TxnsList, error) {
	var l TxnsList
	return &l, c.do(ctx, http.MethodGet, "/v1/txns", nil, &l)
}

// ForgetTxn drops a transaction's decision (an APIError with code
// unknown_txn when none is recorded).
func (c *Client) ForgetTxn(ctx context.Context, gid string) (*WriteResult, error) {
	var r WriteResult
	return &r, c.do(ctx, http.MethodDelete, "/v1/txns/"+url.PathEscape(gid), nil, &r)
}
