package admin

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/pgshard/pgshard/shardmap"
)

// ErrorCode is the stable word in the "code" field of an error answer.
type ErrorCode string

// Error codes.
const (
	CodeBadRequest     ErrorCode = "bad_request"
	CodeUnauthorized   ErrorCode = "unauthorized"
	CodeNotFound       ErrorCode = "not_found"
	CodeShardExists    ErrorCode = "shard_exists"
	CodeUnknownShard   ErrorCode = "unknown_shard"
	CodeShardOnRing    ErrorCode = "shard_on_ring"
	CodeTableExists    ErrorCode = "table_exists"
	CodeUnknownTable   ErrorCode = "unknown_table"
	CodeUnknownServer  ErrorCode = "unknown_server"
	CodeUnknownTxn     ErrorCode = "unknown_txn"
	CodeTxnTableFull   ErrorCode = "txn_table_full"
	CodeInvalidKey     ErrorCode = "invalid_key"
	CodeNoRing         ErrorCode = "no_ring"
	CodeStaleVersion   ErrorCode = "stale_version"
	CodeNotLeader      ErrorCode = "not_leader"
	CodeNoLeader       ErrorCode = "no_leader"
	CodeLeadershipLost ErrorCode = "leadership_lost"
	CodeNoCluster      ErrorCode = "no_cluster"
	CodeInternal       ErrorCode = "internal"

	// Resharding (reshard.go).
	CodeNoJob       ErrorCode = "no_job"       // no reshard job to show or cancel
	CodeJobRunning  ErrorCode = "job_running"  // a job is running: one at a time
	CodePastCutover ErrorCode = "past_cutover" // the job's ring is committed: it can only finish
	CodeBadSpec     ErrorCode = "bad_spec"     // the job's request is not valid against the map
	CodeUnknownJob  ErrorCode = "unknown_job"  // a command names a job the map does not hold
)

// APIError is an error answer of the admin API, as the client returns it.
type APIError struct {
	Status  int       `json:"-"`
	Message string    `json:"error"`
	Code    ErrorCode `json:"code"`
	Hint    string    `json:"hint,omitempty"`
}

func (e *APIError) Error() string {
	s := e.Message
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s
}

func apiErr(status int, code ErrorCode, hint, format string, args ...any) *APIError {
	return &APIError{Status: status, Code: code, Hint: hint, Message: fmt.Sprintf(format, args...)}
}

// toAPIError maps an error of the store or the map to an answer.
func toAPIError(err error) *APIError {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae
	}
	if ae, ok := reshardAPIError(err); ok {
		return ae
	}
	msg := err.Error()
	e := func(status int, code ErrorCode, hint string) *APIError {
		return &APIError{Status: status, Code: code, Hint: hint, Message: msg}
	}
	switch {
	case errors.Is(err, shardmap.ErrShardExists):
		return e(http.StatusConflict, CodeShardExists, "choose another name, or change the shard's DSNs with `pgshardctl shards set-endpoints`")
	case errors.Is(err, shardmap.ErrShardOnRing):
		return e(http.StatusConflict, CodeShardOnRing, "`pgshardctl map show` lists its ranges")
	case errors.Is(err, shardmap.ErrLastShard):
		return e(http.StatusConflict, CodeShardOnRing, "a ring needs at least one shard")
	case errors.Is(err, shardmap.ErrUnknownShard):
		return e(http.StatusNotFound, CodeUnknownShard, "list shards with `pgshardctl shards list`")
	case errors.Is(err, shardmap.ErrTableExists):
		return e(http.StatusConflict, CodeTableExists, "remove it first with `pgshardctl tables remove` to redefine it")
	case errors.Is(err, shardmap.ErrUnknownTable):
		return e(http.StatusNotFound, CodeUnknownTable, "list tables with `pgshardctl tables list`")
	case errors.Is(err, shardmap.ErrUnknownTxn):
		return e(http.StatusNotFound, CodeUnknownTxn, "list recorded decisions with GET /v1/txns")
	case errors.Is(err, shardmap.ErrTxnTableFull):
		return e(http.StatusServiceUnavailable, CodeTxnTableFull, "the leader's recovery pass forgets finished transactions: check its log for shards it cannot reach")
	case errors.Is(err, shardmap.ErrUnknownServer):
		return e(http.StatusNotFound, CodeUnknownServer, "list members with `pgshardctl cluster status`")
	case errors.Is(err, shardmap.ErrInvalidKey), errors.Is(err, shardmap.ErrUnknownKeyType):
		return e(http.StatusBadRequest, CodeInvalidKey, "give a key of the type named by --type (int, text or uuid)")
	case errors.Is(err, shardmap.ErrNoRing):
		return e(http.StatusConflict, CodeNoRing, "add a shard first: `pgshardctl shards add NAME --primary DSN`")
	case errors.Is(err, shardmap.ErrStaleVersion):
		return e(http.StatusConflict, CodeStaleVersion, "the map changed meanwhile; read it again and retry")
	case errors.Is(err, shardmap.ErrInvalidCommand), errors.Is(err, shardmap.ErrInvalidRing):
		return e(http.StatusBadRequest, CodeBadRequest, "check the names and values given")
	case errors.Is(err, shardmap.ErrLeadershipLost):
		return e(http.StatusServiceUnavailable, CodeLeadershipLost, "the change may or may not be applied: check with `pgshardctl map show`, then retry if it is missing")
	case errors.Is(err, shardmap.ErrNotLeader):
		return e(http.StatusServiceUnavailable, CodeNotLeader, "retry in a few seconds, or send the request to the leader's admin API")
	case errors.Is(err, shardmap.ErrClosed):
		return e(http.StatusServiceUnavailable, CodeInternal, "the node is shutting down; use another node")
	case errors.Is(err, shardmap.ErrUnknownJob):
		return e(http.StatusNotFound, CodeUnknownJob, "`pgshardctl map show` lists the reshard jobs")
	}
	if ae, ok := reshardSpecError(err); ok {
		return ae
	}
	return e(http.StatusInternalServerError, CodeInternal, "see the pgshard log of this node")
}
