package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgshard/pgshard/admin"
	"github.com/pgshard/pgshard/internal/testutil"
	"github.com/pgshard/pgshard/resharder"
	"github.com/pgshard/pgshard/shardmap"
)

func TestReshardStoreAppliesThroughTheLeader(t *testing.T) {
	nodes := coordCluster(t)
	ctx := testCtx(t)
	l, fs := leaderAndFollowers(t, nodes)
	for _, n := range append([]*coordNode{l}, fs...) {
		st := newReshardStore(n.store, n.url, coordToken, coordLogger(t))
		id := "job-" + n.store.ID()
		m, err := st.Apply(ctx, shardmap.PutJob(shardmap.Job{ID: id, Kind: "add", Phase: "plan"}, 0))
		if err != nil {
			t.Fatalf("put job through %s: %v", n.store.ID(), err)
		}
		j, ok := m.Job(id)
		if !ok || j.Phase != "plan" || j.Updated != m.Version() {
			t.Fatalf("the map %s's Apply returned lacks its job: %+v", n.store.ID(), j)
		}
		if local := st.Map(); local.Version() < m.Version() {
			t.Errorf("%s's map at %d after a command that produced %d", n.store.ID(), local.Version(), m.Version())
		}
		// The leader's refusals are shardmap's errors, on every node.
		_, err = st.Apply(ctx, shardmap.PutJob(shardmap.Job{ID: id, Kind: "add", Phase: "copy"}, j.Updated+1))
		if !errors.Is(err, shardmap.ErrStaleVersion) {
			t.Errorf("stale checkpoint through %s: %v", n.store.ID(), err)
		}
		if _, err := st.Apply(ctx, shardmap.DeleteJob("nope")); !errors.Is(err, shardmap.ErrUnknownJob) {
			t.Errorf("delete an unknown job through %s: %v", n.store.ID(), err)
		}
		if n != l {
			var ae *admin.APIError
			if !errors.As(err, &ae) || ae.Code != admin.CodeStaleVersion {
				t.Errorf("the follower's error is not the leader's answer: %#v", err)
			}
		}
		if _, err := st.Apply(ctx, shardmap.DeleteJob(id)); err != nil {
			t.Errorf("delete job through %s: %v", n.store.ID(), err)
		}
	}
}

func TestWaitApplied(t *testing.T) {
	nodes := coordCluster(t)
	l, fs := leaderAndFollowers(t, nodes)
	members := newRaftNodes(l.store, l.applied.Load, coordToken, coordLogger(t))
	members.setDirectory(l.api)
	testutil.WaitFor(t, 10*time.Second, "the leader knows every admin URL", func() error {
		for _, f := range fs {
			if l.api.AdminURLOf(f.store.ID()) == "" {
				return errors.New(f.store.ID() + " unknown")
			}
		}
		return nil
	})

	for _, n := range nodes {
		n.applied.Store(7)
	}
	ctx := testCtx(t)
	if err := members.WaitApplied(ctx, 7); err != nil {
		t.Fatal(err)
	}
	// Each member reaches version 9 in turn; the wait ends after the last.
	waited := make(chan error, 1)
	go func() { waited <- members.WaitApplied(ctx, 9) }()
	for _, n := range nodes {
		time.Sleep(50 * time.Millisecond)
		select {
		case err := <-waited:
			t.Fatalf("the wait ended before %s reached version 9: %v", n.store.ID(), err)
		default:
		}
		n.applied.Store(9)
	}
	select {
	case err := <-waited:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the wait did not end once every node reached version 9")
	}

	// A member behind and one unreachable: the wait fails at the deadline
	// and names both.
	fs[0].applied.Store(8)
	fs[1].stop()
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	start := time.Now()
	err := members.WaitApplied(dctx, 9)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), fs[0].store.ID()+" (at version 8)") ||
		!strings.Contains(err.Error(), fs[1].store.ID()+" (unreachable") {
		t.Errorf("wait with a node behind and one down: %v", err)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("the wait took %s past a 1s deadline", d)
	}
}

func TestLeadLoopRunsOnTheLeaderOnly(t *testing.T) {
	nodes := coordCluster(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	running := make([]atomic.Int32, len(nodes))
	starts := make([]atomic.Int32, len(nodes))
	var overlap atomic.Bool
	var total atomic.Int32
	for i, n := range nodes {
		cn := &clusterNode{log: coordLogger(t), store: n.store}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cn.leadLoop(ctx, "test task", func(tctx context.Context) {
				starts[i].Add(1)
				running[i].Add(1)
				if total.Add(1) > 1 {
					overlap.Store(true)
				}
				<-tctx.Done()
				total.Add(-1)
				running[i].Add(-1)
			}, 10*time.Millisecond)
		}()
	}
	l, _ := leaderAndFollowers(t, nodes)
	li := index(nodes, l)
	testutil.WaitFor(t, 10*time.Second, "the task runs on the leader", func() error {
		if running[li].Load() != 1 {
			return errors.New("not yet")
		}
		return nil
	})
	// The leader goes away: its task is stopped, and the new leader's starts.
	l.stop()
	testutil.WaitFor(t, 10*time.Second, "the old leader's task stops", func() error {
		if running[li].Load() != 0 {
			return errors.New("still running")
		}
		return nil
	})
	l2, _ := leaderAndFollowers(t, nodes)
	l2i := index(nodes, l2)
	testutil.WaitFor(t, 10*time.Second, "the task runs on the new leader", func() error {
		if running[l2i].Load() != 1 {
			return fmt.Errorf("running on %s: %d", l2.store.ID(), running[l2i].Load())
		}
		return nil
	})
	cancel()
	wg.Wait()
	for i, n := range nodes {
		if n != l && n != l2 && starts[i].Load() != 0 {
			t.Errorf("follower %s ran the task", n.store.ID())
		}
		if running[i].Load() != 0 {
			t.Errorf("%s's task still running after the loop ended", n.store.ID())
		}
	}
	if overlap.Load() {
		t.Error("two nodes ran the task at once in this test (the old leader's task outlived its leadership)")
	}
}

func index(nodes []*coordNode, n *coordNode) int {
	for i, m := range nodes {
		if m == n {
			return i
		}
	}
	return -1
}

func TestLeadLoopRestartsATaskThatReturns(t *testing.T) {
	nodes := coordCluster(t)
	l, _ := leaderAndFollowers(t, nodes)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var runs atomic.Int32
	cn := &clusterNode{log: coordLogger(t), store: l.store}
	done := make(chan struct{})
	go func() {
		defer close(done)
		cn.leadLoop(ctx, "test task", func(context.Context) { runs.Add(1) }, 10*time.Millisecond)
	}()
	testutil.WaitFor(t, 10*time.Second, "a second run", func() error {
		if runs.Load() < 2 {
			return errors.New("not yet")
		}
		return nil
	})
	cancel()
	<-done
}

func TestReshardServiceDatabase(t *testing.T) {
	s := reshardService{database: ""}
	if _, err := s.withDatabase(resharder.Spec{Remove: "s1"}); !errors.Is(err, resharder.ErrBadSpec) || !strings.Contains(err.Error(), "--database") {
		t.Errorf("no database anywhere: %v", err)
	}
	if spec, err := s.withDatabase(resharder.Spec{Remove: "s1", Database: "shop"}); err != nil || spec.Database != "shop" {
		t.Errorf("database from the request: %+v %v", spec, err)
	}
	s.database = "app"
	if spec, err := s.withDatabase(resharder.Spec{Remove: "s1"}); err != nil || spec.Database != "app" {
		t.Errorf("database from [resharding]: %+v %v", spec, err)
	}
	if spec, err := s.withDatabase(resharder.Spec{Remove: "s1", Database: "shop"}); err != nil || spec.Database != "shop" {
		t.Errorf("the request's database wins: %+v %v", spec, err)
	}
}
