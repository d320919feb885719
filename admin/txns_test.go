package admin_test

import (
	"testing"

	"github.com/pgshard/pgshard/admin"
)

func TestTxnDecisionsThroughAnyNode(t *testing.T) {
	nodes := cluster(t, 3)
	ctx := ctxT(t)
	var follower *node
	for _, n := range nodes {
		if !n.store.IsLeader() {
			follower = n
		}
	}
	r, err := follower.client.DecideTxn(ctx, "pgshard_01", true)
	if err != nil || !r.Decided || !r.Commit || r.DecidedVersion != r.MapVersion || r.DecidedAt.IsZero() {
		t.Fatalf("decide through a follower: %+v %v", r, err)
	}
	// A contrary decision through another node answers the first.
	r2, err := nodes[0].client.DecideTxn(ctx, "pgshard_01", false)
	if err != nil || !r2.Commit || r2.DecidedVersion != r.DecidedVersion || r2.MapVersion != r.MapVersion+1 {
		t.Fatalf("second decision: %+v %v", r2, err)
	}
	for _, n := range nodes {
		info, err := n.client.Txn(ctx, "pgshard_01")
		if err != nil || !info.Decided || !info.Commit {
			t.Fatalf("%s: %+v %v", n.store.ID(), info, err)
		}
		if info, err := n.client.Txn(ctx, "pgshard_02"); err != nil || info.Decided {
			t.Fatalf("%s: undecided: %+v %v", n.store.ID(), info, err)
		}
	}
	l, err := follower.client.Txns(ctx)
	if err != nil || len(l.Txns) != 1 || l.Txns[0].GID != "pgshard_01" {
		t.Fatalf("list: %+v %v", l, err)
	}
	if _, err := follower.client.ForgetTxn(ctx, "pgshard_01"); err != nil {
		t.Fatal(err)
	}
	if _, err := follower.client.ForgetTxn(ctx, "pgshard_01"); apiCode(err) != admin.CodeUnknownTxn {
		t.Fatalf("forget twice: %v", err)
	}
	if _, err := follower.client.DecideTxn(ctx, "bad gid", true); apiCode(err) != admin.CodeBadRequest {
		t.Fatalf("bad gid: %v", err)
	}
}
