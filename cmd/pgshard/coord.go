package main

// What the proxy's coordinator needs of the Raft shard map: durable
// two-phase commit decisions (proxy.TxnLog, proxy.TxnLister) and table
// registration (proxy.TableRegistrar), and the leader's recovery loop over
// prepared transactions.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"github.com/pgshard/pgshard/admin"
	"github.com/pgshard/pgshard/proxy"
	"github.com/pgshard/pgshard/shardmap"
)

const (
	// recoverInterval is how often the leader runs a recovery pass over
	// the shards' prepared transactions.
	recoverInterval = 5 * time.Second
	// recoverGrace is how long a prepared transaction may stay undecided
	// before the recovery pass decides rollback for it, and how long a
	// decision is kept after its transaction is finished everywhere. It
	// must be longer than a coordinator ever takes between PREPARE and
	// its decision, and between its decision and its last COMMIT PREPARED.
	recoverGrace = 30 * time.Second
	// recoverPassTimeout bounds one recovery pass.
	recoverPassTimeout = 2 * time.Minute
	// coordWriteTimeout bounds a write to the map (decision, forget,
	// table) when the caller's context has no deadline: it is retried
	// through elections until then.
	coordWriteTimeout = 30 * time.Second
	// coordRetryDelay is the pause between attempts of such a write.
	coordRetryDelay = 100 * time.Millisecond
)

// mapCoord implements proxy.TxnLog, proxy.TxnLister and
// proxy.TableRegistrar over the node's shard map store. Writes run on the
// store when this node leads, else through the node's own admin API, which
// forwards them to the leader; reads are local.
type mapCoord struct {
	store *shardmap.Store
	api   *admin.Client // this node's admin API; nil: no forwarding
	log   *slog.Logger
}

var (
	_ proxy.TxnLog         = (*mapCoord)(nil)
	_ proxy.TxnLister      = (*mapCoord)(nil)
	_ proxy.TableRegistrar = (*mapCoord)(nil)
)

func newMapCoord(store *shardmap.Store, adminURL, token string, log *slog.Logger) *mapCoord {
	c := &mapCoord{store: store, log: log}
	if adminURL != "" {
		c.api = admin.NewClient(adminURL, token)
	}
	return c
}

// retryable reports whether a write failed only because leadership was
// moving or the leader could not be reached: the same write may be sent
// again (every write here is idempotent in effect).
func retryable(err error) bool {
	if errors.Is(err, shardmap.ErrNotLeader) || errors.Is(err, shardmap.ErrLeadershipLost) {
		return true
	}
	var ae *admin.APIError
	if errors.As(err, &ae) {
		switch ae.Code {
		case admin.CodeNotLeader, admin.CodeNoLeader, admin.CodeLeadershipLost:
			return true
		}
		return false
	}
	var ue *url.Error // the admin API could not be reached
	return errors.As(err, &ue) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}

// write runs onLeader when this node leads and viaAPI otherwise, retrying
// while leadership moves, until ctx (or coordWriteTimeout) ends.
func (c *mapCoord) write(ctx context.Context, what string, onLeader, viaAPI func(context.Context) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, coordWriteTimeout)
		defer cancel()
	}
	for {
		var err error
		if c.store.IsLeader() || c.api == nil {
			err = onLeader(ctx)
		} else {
			err = viaAPI(ctx)
		}
		if err == nil || !retryable(err) {
			return err
		}
		c.log.Debug("shard map write: retrying", "what", what, "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last attempt: %w)", what, ctx.Err(), err)
		case <-time.After(coordRetryDelay):
		}
	}
}

// Decide records gid's outcome in the map unless one is recorded, and
// returns the outcome that stands.
func (c *mapCoord) Decide(ctx context.Context, gid string, commit bool) (bool, error) {
	var committed bool
	err := c.write(ctx, "decide transaction "+gid,
		func(ctx context.Context) error {
			m, err := c.store.Apply(ctx, shardmap.DecideTxn(gid, commit, time.Now()))
			if err != nil {
				return err
			}
			d, ok := m.TxnDecision(gid)
			if !ok {
				return fmt.Errorf("map version %d holds no decision", m.Version())
			}
			committed = d.Commit
			return nil
		},
		func(ctx context.Context) error {
			r, err := c.api.DecideTxn(ctx, gid, commit)
			if err != nil {
				return err
			}
			if !r.Decided || r.GID != gid {
				return fmt.Errorf("the leader answered without the decision (%+v)", *r)
			}
			committed = r.Commit
			return nil
		})
	if err != nil {
		return false, fmt.Errorf("decide transaction %s: %w", gid, err)
	}
	return committed, nil
}

// Decision returns gid's outcome from the local map. On a follower the
// map may be a moment behind the leader, so "none" may be stale; a caller
// acts on it only through Decide, whose answer is authoritative.
func (c *mapCoord) Decision(_ context.Context, gid string) (commit, decided bool, err error) {
	d, ok := c.store.Map().TxnDecision(gid)
	return d.Commit, ok, nil
}

// Forget drops gid's decision; one already gone is no error.
func (c *mapCoord) Forget(ctx context.Context, gid string) error {
	err := c.write(ctx, "forget transaction "+gid,
		func(ctx context.Context) error {
			_, err := c.store.Apply(ctx, shardmap.ForgetTxn(gid))
			return err
		},
		func(ctx context.Context) error {
			_, err := c.api.ForgetTxn(ctx, gid)
			return err
		})
	var ae *admin.APIError
	if errors.Is(err, shardmap.ErrUnknownTxn) || (errors.As(err, &ae) && ae.Code == admin.CodeUnknownTxn) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("forget transaction %s: %w", gid, err)
	}
	return nil
}

// TxnDecisions lists the decisions of the local map.
func (c *mapCoord) TxnDecisions(context.Context) ([]shardmap.TxnDecision, error) {
	return c.store.Map().TxnDecisions(), nil
}

// RegisterTable adds t to the map and returns once this node's map has
// it. A table already registered with the same definition is success; with
// another definition, an error.
func (c *mapCoord) RegisterTable(ctx context.Context, t shardmap.Table) error {
	want := shardmap.NormalizeTable(t)
	if done, err := sameTable(c.store.Map(), want); done {
		return err
	}
	var version uint64
	exists := false
	err := c.write(ctx, "register table "+want.Name,
		func(ctx context.Context) error {
			m, err := c.store.Apply(ctx, shardmap.AddTable(want))
			if err != nil {
				return err
			}
			version = m.Version()
			return nil
		},
		func(ctx context.Context) error {
			req := admin.AddTableRequest{Name: want.Name, Kind: string(want.Kind), KeyColumn: want.KeyColumn, KeyOrdinal: want.KeyOrdinal}
			if want.Kind == shardmap.TableSharded {
				req.KeyType = want.KeyType.String()
			}
			r, err := c.api.AddTable(ctx, req)
			if err != nil {
				return err
			}
			version = r.MapVersion
			return nil
		})
	var ae *admin.APIError
	if errors.Is(err, shardmap.ErrTableExists) || (errors.As(err, &ae) && ae.Code == admin.CodeTableExists) {
		// Registered meanwhile (or by an earlier attempt of ours): wait
		// until the local map has it, then compare.
		exists, err = true, nil
	}
	if err != nil {
		return fmt.Errorf("register table %s: %w", want.Name, err)
	}
	if !exists {
		if err := c.store.WaitForVersion(ctx, version); err != nil {
			return fmt.Errorf("register table %s: %w", want.Name, err)
		}
	}
	for {
		m := c.store.Map()
		if done, err := sameTable(m, want); done {
			return err
		}
		if !exists {
			return fmt.Errorf("register table %s: removed again before this node routed by it (map version %d)", want.Name, m.Version())
		}
		if err := c.store.WaitForVersion(ctx, m.Version()+1); err != nil {
			return fmt.Errorf("register table %s: registered on the leader, not yet here: %w", want.Name, err)
		}
	}
}

// sameTable reports whether m has a table named want.Name (done), and
// then an error when its definition differs from want.
func sameTable(m *shardmap.Map, want shardmap.Table) (done bool, err error) {
	got, ok := m.Table(want.Name)
	if !ok {
		return false, nil
	}
	if got != want {
		return true, fmt.Errorf("register table %s: already registered as %s, not as %s", want.Name, describeTable(got), describeTable(want))
	}
	return true, nil
}

func describeTable(t shardmap.Table) string {
	if t.Kind == shardmap.TableSharded {
		return fmt.Sprintf("sharded by %s (%s)", t.KeyColumn, t.KeyType)
	}
	return string(t.Kind)
}

// preparedRecoverer is what the recovery loop needs of the proxy.
type preparedRecoverer interface {
	RecoverPrepared(ctx context.Context, grace time.Duration) (proxy.RecoverStats, error)
}

// recoverLoop runs a recovery pass every interval while this node leads,
// until ctx ends.
func (n *clusterNode) recoverLoop(ctx context.Context, r preparedRecoverer, interval, grace time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !n.store.IsLeader() {
			continue
		}
		// A new leader may not have applied its whole log yet: its
		// decisions must be there before it acts on them.
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := n.store.WaitForIndex(wctx, n.store.LastIndex())
		cancel()
		if err != nil {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, recoverPassTimeout)
		_, err = r.RecoverPrepared(pctx, grace)
		cancel()
		if err != nil && ctx.Err() == nil {
			n.log.Warn("recovery pass over prepared transactions failed", "err", err)
		}
	}
}

// UnregisterTable implements proxy.TableRegistrar: a table dropped through
// pgshard leaves the map (through the leader), and this node routes
// without it on return.
func (c *mapCoord) UnregisterTable(ctx context.Context, name string) error {
	if _, ok := c.store.Map().Table(name); !ok {
		return nil
	}
	var version uint64
	err := c.write(ctx, "unregister table "+name,
		func(ctx context.Context) error {
			m, err := c.store.Apply(ctx, shardmap.RemoveTable(name))
			if err != nil {
				return err
			}
			version = m.Version()
			return nil
		},
		func(ctx context.Context) error {
			r, err := c.api.RemoveTable(ctx, name)
			if err != nil {
				return err
			}
			version = r.MapVersion
			return nil
		})
	var ae *admin.APIError
	if errors.Is(err, shardmap.ErrUnknownTable) || (errors.As(err, &ae) && ae.Code == admin.CodeUnknownTable) {
		return nil // removed meanwhile
	}
	if err != nil {
		return fmt.Errorf("unregister table %s: %w", name, err)
	}
	return c.store.WaitForVersion(ctx, version)
}

// catchUp returns once this node's copy of the map holds everything the
// cluster committed before the call: it writes a shardmap.Sync through
// the leader and waits until the local map has applied it (a read
// through the log). A restarted node starts from its last snapshot and
// applies the rest of the log only once a leader tells it what is
// committed; routing by that older map in between would read moved rows
// from their old owner.
func (c *mapCoord) catchUp(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, coordWriteTimeout)
		defer cancel()
	}
	var version uint64
	cmd := shardmap.Sync(c.store.ID())
	err := c.write(ctx, "sync with the leader",
		func(ctx context.Context) error {
			m, err := c.store.Apply(ctx, cmd)
			if err == nil {
				version = m.Version()
			}
			return err
		},
		func(ctx context.Context) error {
			m, err := c.api.ApplyCommand(ctx, cmd)
			if err == nil {
				version = m.Version()
			}
			return err
		})
	if err != nil {
		return err
	}
	return c.store.WaitForVersion(ctx, version)
}
