package admin_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgshard/pgshard/admin"
	"github.com/pgshard/pgshard/resharder"
	"github.com/pgshard/pgshard/shardmap"
)

// fakeResharder answers from fields the test sets, and records the calls
// it got.
type fakeResharder struct {
	node string

	mu    sync.Mutex
	calls []string
	specs []resharder.Spec
	err   error // returned by every call when set
}

func (f *fakeResharder) record(call string, spec *resharder.Spec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
	if spec != nil {
		f.specs = append(f.specs, *spec)
	}
	return f.err
}

func (f *fakeResharder) setErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

func (f *fakeResharder) callCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

func (f *fakeResharder) Plan(_ context.Context, spec resharder.Spec) (*resharder.Plan, error) {
	if err := f.record("plan", &spec); err != nil {
		return nil, err
	}
	return &resharder.Plan{Spec: spec, RingVersion: 3,
		Moves:     []shardmap.Move{{Range: shardmap.Range{Start: 1, End: 2}, From: "s0", To: spec.Add.Name}},
		Tables:    []resharder.TableMove{{Table: "orders", Kind: "sharded", From: "s0", To: spec.Add.Name, Rows: 10, Bytes: 8192}},
		Ownership: map[string]float64{"s0": 0.5, spec.Add.Name: 0.5}}, nil
}

func (f *fakeResharder) status(phase string) *resharder.Status {
	return &resharder.Status{ID: "job1", Phase: phase + "@" + f.node, Started: time.Unix(100, 0).UTC(),
		Tables: []resharder.TableProgress{{TableMove: resharder.TableMove{Table: "orders", Rows: 10}, Copied: 4}},
		ETA:    3 * time.Second}
}

func (f *fakeResharder) Start(_ context.Context, spec resharder.Spec) (*resharder.Status, error) {
	if err := f.record("start", &spec); err != nil {
		return nil, err
	}
	st := f.status("copy")
	st.Spec = spec
	return st, nil
}

func (f *fakeResharder) Status(context.Context) (*resharder.Status, error) {
	if err := f.record("status", nil); err != nil {
		return nil, err
	}
	return f.status("copy"), nil
}

func (f *fakeResharder) Cancel(context.Context) (*resharder.Status, error) {
	if err := f.record("cancel", nil); err != nil {
		return nil, err
	}
	return f.status("cancelling"), nil
}

// reshardCluster is a three-node cluster with a fake resharder and an
// applied version on each node.
func reshardCluster(t *testing.T) ([]*node, []*fakeResharder, []*atomic.Uint64) {
	t.Helper()
	fakes := make([]*fakeResharder, 3)
	applied := make([]*atomic.Uint64, 3)
	nodes := clusterWith(t, 3, func(i int, c *admin.Config) {
		fakes[i] = &fakeResharder{node: fmt.Sprintf("n%d", i)}
		applied[i] = &atomic.Uint64{}
		c.Resharder = fakes[i]
		c.AppliedVersion = applied[i].Load
	})
	return nodes, fakes, applied
}

func TestReshardEndpointsRunOnTheLeader(t *testing.T) {
	nodes, fakes, _ := reshardCluster(t)
	ctx := ctxT(t)
	leader := nodes[0].store.LeaderID()
	moved := func() bool { return nodes[0].store.LeaderID() != leader }
	spec := resharder.Spec{Add: &resharder.NewShard{Name: "s2", Primary: "host=x port=1", Replicas: []string{"host=y port=1"}}, Database: "app"}
	for _, n := range nodes { // the leader answers; the others forward to it
		p, err := n.client.ReshardPlan(ctx, spec)
		if err != nil || p.RingVersion != 3 || len(p.Moves) != 1 || p.Tables[0].Bytes != 8192 || p.Ownership["s2"] != 0.5 ||
			p.Spec.Add.Replicas[0] != "host=y port=1" {
			t.Fatalf("plan through %s: %+v %v", n.store.ID(), p, err)
		}
		st, err := n.client.ReshardStart(ctx, spec)
		if err != nil || (st.Phase != "copy@"+leader && !moved()) || st.Spec.Database != "app" || st.ETA != 3*time.Second || st.Tables[0].Copied != 4 {
			t.Fatalf("start through %s: %+v %v", n.store.ID(), st, err)
		}
		if st, err := n.client.ReshardStatus(ctx); err != nil || (st.Phase != "copy@"+leader && !moved()) || !st.Started.Equal(time.Unix(100, 0)) {
			t.Fatalf("status through %s: %+v %v", n.store.ID(), st, err)
		}
		if st, err := n.client.ReshardCancel(ctx); err != nil || (st.Phase != "cancelling@"+leader && !moved()) {
			t.Fatalf("cancel through %s: %+v %v", n.store.ID(), st, err)
		}
	}
	if moved() {
		t.Skip("the leadership moved during the test (a loaded machine): which resharder answered is not checked")
	}
	for _, f := range fakes {
		switch c := f.callCount(); {
		case f.node == leader && c != 12:
			t.Errorf("the leader's resharder got %d calls, want 12", c)
		case f.node != leader && c != 0:
			t.Errorf("follower %s's resharder was called %d times", f.node, c)
		}
	}
	var lf *fakeResharder
	for _, f := range fakes {
		if f.node == leader {
			lf = f
		}
	}
	remove := resharder.Spec{Remove: "s1"}
	if _, err := nodes[2].client.ReshardStart(ctx, remove); err != nil {
		t.Fatal(err)
	}
	if s := lf.specs[len(lf.specs)-1]; s.Remove != "s1" || s.Add != nil || s.Database != "" {
		t.Errorf("remove spec as the resharder got it: %+v", s)
	}
}

func TestReshardErrors(t *testing.T) {
	nodes, fakes, _ := reshardCluster(t)
	ctx := ctxT(t)
	f := nodes[1].client // a follower: the leader's answer is relayed as is
	add := resharder.Spec{Add: &resharder.NewShard{Name: "s2", Primary: "p"}}

	for _, tc := range []struct {
		err    error
		status int
		code   admin.ErrorCode
	}{
		{fmt.Errorf("status: %w", resharder.ErrNoJob), http.StatusNotFound, admin.CodeNoJob},
		{fmt.Errorf("start: job j1 in phase copy: %w", resharder.ErrJobRunning), http.StatusConflict, admin.CodeJobRunning},
		{fmt.Errorf("cancel: %w", resharder.ErrPastCutover), http.StatusConflict, admin.CodePastCutover},
		{fmt.Errorf("table t has no primary key containing user_id: %w", resharder.ErrBadSpec), http.StatusBadRequest, admin.CodeBadSpec},
		{fmt.Errorf("remove s9: %w: %w", resharder.ErrBadSpec, shardmap.ErrUnknownShard), http.StatusNotFound, admin.CodeUnknownShard},
		{fmt.Errorf("add s0: %w: %w", resharder.ErrBadSpec, shardmap.ErrShardExists), http.StatusConflict, admin.CodeShardExists},
		{fmt.Errorf("commit ring: %w", shardmap.ErrStaleVersion), http.StatusConflict, admin.CodeStaleVersion},
		{fmt.Errorf("connect to s2: refused"), http.StatusInternalServerError, admin.CodeInternal},
	} {
		for _, fk := range fakes { // whichever leads answers
			fk.setErr(tc.err)
		}
		for name, call := range map[string]func() error{
			"plan":   func() error { _, err := f.ReshardPlan(ctx, add); return err },
			"start":  func() error { _, err := f.ReshardStart(ctx, add); return err },
			"status": func() error { _, err := f.ReshardStatus(ctx); return err },
			"cancel": func() error { _, err := f.ReshardCancel(ctx); return err },
		} {
			err := call()
			ae, ok := err.(*admin.APIError)
			if !ok || ae.Status != tc.status || ae.Code != tc.code || ae.Message != tc.err.Error() || (tc.code != admin.CodeInternal && ae.Hint == "") {
				t.Errorf("%s failing with %q: got %#v (%v), want %d %s", name, tc.err, err, err, tc.status, tc.code)
			}
		}
	}
	for _, fk := range fakes {
		fk.setErr(nil)
	}

	// Malformed requests are refused before the resharder sees them.
	total := func() (n int) {
		for _, fk := range fakes {
			n += fk.callCount()
		}
		return n
	}
	calls := total()
	for _, spec := range []resharder.Spec{
		{},
		{Add: &resharder.NewShard{Name: "s2", Primary: "p"}, Remove: "s1"},
		{Add: &resharder.NewShard{Name: "s2"}},
		{Add: &resharder.NewShard{Primary: "p"}},
	} {
		if _, err := f.ReshardPlan(ctx, spec); apiCode(err) != admin.CodeBadSpec {
			t.Errorf("plan %+v: %v, want bad_spec", spec, err)
		}
		if _, err := nodes[0].client.ReshardStart(ctx, spec); apiCode(err) != admin.CodeBadSpec {
			t.Errorf("start %+v: %v, want bad_spec", spec, err)
		}
	}
	if got := total(); got != calls {
		t.Errorf("the resharder saw %d malformed requests", got-calls)
	}
	req, _ := http.NewRequest(http.MethodPost, nodes[0].url+"/v1/reshard", strings.NewReader(`{"add":{"name":"s2","primary":"p"},"bogus":1}`))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("unknown field: %s", resp.Status)
	}
}

func TestReshardWithoutCluster(t *testing.T) {
	m, err := admin.StaticMap([]shardmap.Shard{{Name: "a", Primary: "pa"}})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := admin.New(admin.Config{Store: &admin.StaticStore{NodeID: "solo", M: m}, AppliedVersion: func() uint64 { return 1 }})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	srv.Register(mux)
	ts := httptest.NewServer(mux)
	defer ts.Close()
	c := admin.NewClient(ts.URL, "")
	ctx := ctxT(t)
	start := time.Now()
	_, err = c.ReshardStart(ctx, resharder.Spec{Remove: "a"})
	if ae, ok := err.(*admin.APIError); !ok || ae.Code != admin.CodeNoCluster || ae.Status != http.StatusConflict {
		t.Errorf("start without a cluster: %v", err)
	}
	if _, err := c.ReshardStatus(ctx); apiCode(err) != admin.CodeNoCluster {
		t.Errorf("status without a cluster: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("refusals took %s (waited for a leader?)", d)
	}
	if a, err := c.Applied(ctx); err != nil || a.Applied != 1 || a.NodeID != "solo" || a.MapVersion != m.Version() {
		t.Errorf("applied: %+v %v", a, err)
	}
	if _, err := c.ApplyCommand(ctx, shardmap.AddTable(shardmap.Table{Name: "t"})); apiCode(err) != admin.CodeNoCluster {
		t.Errorf("command without a cluster: %v", err)
	}
}

func TestAppliedAndCommandsThroughAFollower(t *testing.T) {
	nodes, _, applied := reshardCluster(t)
	ctx := ctxT(t)
	for i, n := range nodes {
		applied[i].Store(uint64(40 + i))
		a, err := n.client.Applied(ctx)
		if err != nil || a.Applied != uint64(40+i) || a.NodeID != n.store.ID() {
			t.Errorf("%s applied: %+v %v", n.store.ID(), a, err)
		}
	}
	// No proxy: no applied version.
	plain := cluster(t, 1)
	if _, err := plain[0].client.Applied(ctx); apiCode(err) != admin.CodeNotFound {
		t.Errorf("applied without a proxy: %v", err)
	}

	f := nodes[2].client
	m, err := f.ApplyCommand(ctx, shardmap.AddShard(shardmap.Shard{Name: "s0", Primary: "p0"}, 0))
	if err != nil || m.Ring() == nil || m.Version() != nodes[0].store.Map().Version() {
		t.Fatalf("add shard through a follower: %v %v", m, err)
	}
	if v := nodes[2].store.Map().Version(); v < m.Version() {
		t.Errorf("the follower is at %d after a command that produced %d", v, m.Version())
	}
	m, err = f.ApplyCommand(ctx, shardmap.PutJob(shardmap.Job{ID: "j1", Kind: "add", Phase: "plan"}, 0))
	if err != nil {
		t.Fatal(err)
	}
	j, ok := m.Job("j1")
	if !ok || j.Updated != m.Version() {
		t.Fatalf("job j1 in the answer: %+v %v", j, ok)
	}
	if _, err := f.ApplyCommand(ctx, shardmap.PutJob(shardmap.Job{ID: "j1", Kind: "add", Phase: "copy"}, j.Updated+5)); apiCode(err) != admin.CodeStaleVersion {
		t.Errorf("stale job update: %v", err)
	}
	if _, err := f.ApplyCommand(ctx, shardmap.DeleteJob("nope")); apiCode(err) != admin.CodeUnknownJob {
		t.Errorf("delete unknown job: %v", err)
	}
	if _, err := f.ApplyCommand(ctx, shardmap.AddShard(shardmap.Shard{Name: "s0", Primary: "p0"}, 0)); apiCode(err) != admin.CodeShardExists {
		t.Errorf("duplicate shard: %v", err)
	}
	req, _ := http.NewRequest(http.MethodPost, nodes[1].url+"/v1/map/commands", strings.NewReader(`{"v":99,"type":"add_table","data":{}}`))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("command of an unknown version: %s", resp.Status)
	}
}
