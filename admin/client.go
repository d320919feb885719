package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/pgshard/pgshard/resharder"
	"github.com/pgshard/pgshard/shardmap"
)

// Client calls one node's admin API. Writes sent to a follower are
// forwarded by that node to the leader, so any node will do.
type Client struct {
	BaseURL string // e.g. http://127.0.0.1:6480
	Token   string
	HTTP    *http.Client
}

// NewClient returns a client of the admin API at baseURL.
func NewClient(baseURL, token string) *Client {
	return &Client{BaseURL: strings.TrimRight(baseURL, "/"), Token: token, HTTP: &http.Client{Timeout: 30 * time.Second}}
}

// do sends a request; a non-2xx answer becomes an *APIError.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.BaseURL+path, body)
	if err != nil {
		return fmt.Errorf("admin API %s: %w", c.BaseURL, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("admin API at %s unreachable (is pgshard running there? set --admin-url or PGSHARD_ADMIN_URL): %w", c.BaseURL, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16*maxBody))
	if err != nil {
		return fmt.Errorf("admin API %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		ae := &APIError{Status: resp.StatusCode}
		if json.Unmarshal(b, ae) != nil || ae.Message == "" {
			ae.Code = CodeInternal
			ae.Message = fmt.Sprintf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(b)))
			ae.Hint = "is " + c.BaseURL + " a pgshard admin API?"
		}
		return ae
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("admin API %s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// Status returns the node's view of the cluster.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var s Status
	return &s, c.do(ctx, http.MethodGet, "/v1/cluster", nil, &s)
}

// Nodes returns the node's nodes directory.
func (c *Client) Nodes(ctx context.Context) (*Nodes, error) {
	var n Nodes
	return &n, c.do(ctx, http.MethodGet, "/v1/cluster/nodes", nil, &n)
}

// Join asks the cluster to add a node.
func (c *Client) Join(ctx context.Context, req JoinRequest) (*WriteResult, error) {
	var r WriteResult
	return &r, c.do(ctx, http.MethodPost, "/v1/cluster/join", req, &r)
}

// Leave removes a node from the cluster.
func (c *Client) Leave(ctx context.Context, id string) (*WriteResult, error) {
	var r WriteResult
	return &r, c.do(ctx, http.MethodPost, "/v1/cluster/leave", LeaveRequest{ID: id}, &r)
}

// Shards lists the shards.
func (c *Client) Shards(ctx context.Context) (*ShardsList, error) {
	var l ShardsList
	return &l, c.do(ctx, http.MethodGet, "/v1/shards", nil, &l)
}

// AddShard registers (and with Place, places) a shard.
func (c *Client) AddShard(ctx context.Context, req AddShardRequest) (*AddShardResult, error) {
	var r AddShardResult
	return &r, c.do(ctx, http.MethodPost, "/v1/shards", req, &r)
}

// RemoveShard unregisters a shard that owns no ranges.
func (c *Client) RemoveShard(ctx context.Context, name string) (*WriteResult, error) {
	var r WriteResult
	return &r, c.do(ctx, http.MethodDelete, "/v1/shards/"+url.PathEscape(name), nil, &r)
}

// SetEndpoints replaces a shard's primary and replica DSNs.
func (c *Client) SetEndpoints(ctx context.Context, name string, req EndpointsRequest) (*WriteResult, error) {
	var r WriteResult
	return &r, c.do(ctx, http.MethodPut, "/v1/shards/"+url.PathEscape(name)+"/endpoints", req, &r)
}

// Map returns the whole map as the node holds it.
func (c *Client) Map(ctx context.Context) (*MapView, *shardmap.Map, error) {
	var v MapView
	if err := c.do(ctx, http.MethodGet, "/v1/map", nil, &v); err != nil {
		return nil, nil, err
	}
	m, err := shardmap.DecodeMap(v.Map)
	if err != nil {
		return &v, nil, fmt.Errorf("admin API: decode map: %w", err)
	}
	return &v, m, nil
}

// Locate returns where a key lives; typ is int, text or uuid ("" = int).
func (c *Client) Locate(ctx context.Context, key, typ string) (*Location, error) {
	q := url.Values{"key": {key}}
	if typ != "" {
		q.Set("type", typ)
	}
	var l Location
	return &l, c.do(ctx, http.MethodGet, "/v1/map/locate?"+q.Encode(), nil, &l)
}

// Tables lists the table definitions.
func (c *Client) Tables(ctx context.Context) (*TablesList, error) {
	var l TablesList
	return &l, c.do(ctx, http.MethodGet, "/v1/tables", nil, &l)
}

// AddTable defines a table.
func (c *Client) AddTable(ctx context.Context, req AddTableRequest) (*WriteResult, error) {
	var r WriteResult
	return &r, c.do(ctx, http.MethodPost, "/v1/tables", req, &r)
}

// RemoveTable drops a table definition.
func (c *Client) RemoveTable(ctx context.Context, name string) (*WriteResult, error) {
	var r WriteResult
	return &r, c.do(ctx, http.MethodDelete, "/v1/tables/"+url.PathEscape(name), nil, &r)
}

// ReshardPlan asks what a job would move; nothing changes.
func (c *Client) ReshardPlan(ctx context.Context, spec resharder.Spec) (*resharder.Plan, error) {
	var p resharder.Plan
	return &p, c.do(ctx, http.MethodPost, "/v1/reshard/plan", spec, &p)
}

// ReshardStart starts a job.
func (c *Client) ReshardStart(ctx context.Context, spec resharder.Spec) (*resharder.Status, error) {
	var st resharder.Status
	return &st, c.do(ctx, http.MethodPost, "/v1/reshard", spec, &st)
}

// ReshardStatus returns the job's status (an APIError with code no_job
// when there is none).
func (c *Client) ReshardStatus(ctx context.Context) (*resharder.Status, error) {
	var st resharder.Status
	return &st, c.do(ctx, http.MethodGet, "/v1/reshard", nil, &st)
}

// ReshardCancel asks the job to roll back (code past_cutover once its
// new ring is committed).
func (c *Client) ReshardCancel(ctx context.Context) (*resharder.Status, error) {
	var st resharder.Status
	return &st, c.do(ctx, http.MethodPost, "/v1/reshard/cancel", struct{}{}, &st)
}

// Applied returns the map version the node's proxy routes by.
func (c *Client) Applied(ctx context.Context) (*Applied, error) {
	var a Applied
	return &a, c.do(ctx, http.MethodGet, "/v1/map/applied", nil, &a)
}

// ApplyCommand applies a shard map command through the leader and returns
// the map it produced there.
func (c *Client) ApplyCommand(ctx context.Context, cmd shardmap.Command) (*shardmap.Map, error) {
	b, err := cmd.Encode()
	if err != nil {
		return nil, err
	}
	var res CommandResult
	if err := c.do(ctx, http.MethodPost, "/v1/map/commands", json.RawMessage(b), &res); err != nil {
		return nil, err
	}
	m, err := shardmap.DecodeMap(res.Map)
	if err != nil {
		return nil, fmt.Errorf("admin API: decode map: %w", err)
	}
	return m, nil
}
