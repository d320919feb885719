package proxy

import (
	"context"
	"sync"
	"time"

	"github.com/pgshard/pgshard/shardmap"
)

// TxnLog makes two-phase commit decisions durable: cmd/pgshard backs it
// with the Raft-replicated shard map, so that a decision outlives the node
// that made it and the leader's recovery loop finishes what a crashed
// coordinator left prepared (see DESIGN.md, "Two-phase commit").
type TxnLog interface {
	// Decide records commit (true) or rollback for gid unless an outcome
	// is already recorded, and returns the recorded outcome: the first
	// decision wins, so a coordinator and the recovery loop never
	// disagree.
	Decide(ctx context.Context, gid string, commit bool) (committed bool, err error)
	// Decision returns gid's recorded outcome; decided is false when
	// there is none.
	Decision(ctx context.Context, gid string) (commit, decided bool, err error)
	// Forget drops gid's record once no shard holds it prepared.
	Forget(ctx context.Context, gid string) error
}

// TableRegistrar records a table created through pgshard in the shard
// map (sharded with its key column, or reference), and returns once this
// node routes by the new map, so the client's next statement already sees
// the table.
type TableRegistrar interface {
	RegisterTable(ctx context.Context, t shardmap.Table) error
	// UnregisterTable forgets a table dropped through pgshard (name as
	// the map spells it); a table the map does not have is no error.
	UnregisterTable(ctx context.Context, name string) error
}

// SetTxnLog sets where two-phase commit decisions are recorded. Without
// one, a statement that would need two-phase commit is refused.
func (s *Server) SetTxnLog(l TxnLog) { s.txnLog.Store(&l) }

// SetRegistrar sets where tables created through pgshard are registered.
// Without one, CREATE TABLE runs on every shard and nothing is registered.
func (s *Server) SetRegistrar(r TableRegistrar) { s.registrar.Store(&r) }

func (s *Server) txnLogger() TxnLog {
	if p := s.txnLog.Load(); p != nil {
		return *p
	}
	return nil
}

func (s *Server) tableRegistrar() TableRegistrar {
	if p := s.registrar.Load(); p != nil {
		return *p
	}
	return nil
}

// forgetter drops two-phase decisions after their transactions finished,
// off the client's path: a commit answers once COMMIT PREPARED is done on
// every shard, and the decision's record is removed in the background
// (one Raft write less per distributed commit). It gathers the decisions
// to forget for forgetDelay (up to forgetBatch) and forgets them all at
// once, so that the Raft leader writes them to its log together (it groups
// the entries waiting to be appended into one disk write) rather than one
// write per commit competing with the next commits' decisions. A decision
// not forgotten here (queue full, shutdown) is forgotten by the recovery
// loop.
type forgetter struct {
	once sync.Once
	ch   chan string
	wg   sync.WaitGroup
}

const (
	forgetDelay = 50 * time.Millisecond
	forgetBatch = 64 // hashicorp/raft's MaxAppendEntries
)

// forgetLater queues gid's decision to be forgotten.
func (s *Server) forgetLater(gid string) {
	log := s.txnLogger()
	if log == nil || s.closing.Load() {
		return
	}
	f := &s.forgets
	f.once.Do(func() {
		f.ch = make(chan string, 4096)
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			var batch []string
			for gid := range f.ch {
				batch = append(batch[:0], gid)
				wait := time.NewTimer(forgetDelay)
			gather:
				for len(batch) < forgetBatch {
					select {
					case gid, ok := <-f.ch:
						if !ok {
							break gather
						}
						batch = append(batch, gid)
					case <-wait.C:
						break gather
					}
				}
				wait.Stop()
				var wg sync.WaitGroup
				for _, gid := range batch {
					wg.Go(func() {
						ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
						defer cancel()
						if err := log.Forget(ctx, gid); err != nil {
							s.log.Debug("forget two-phase decision", "gid", gid, "err", err)
						}
					})
				}
				wg.Wait()
			}
		}()
	})
	s.forgetMu.Lock()
	defer s.forgetMu.Unlock()
	if s.forgetClosed {
		return
	}
	select {
	case f.ch <- gid:
	default: // the recovery loop forgets it
	}
}

// stopForgetting ends the background forgetter once sessions are done.
func (s *Server) stopForgetting() {
	s.forgetMu.Lock()
	s.forgetClosed = true
	s.forgetMu.Unlock()
	f := &s.forgets
	f.once.Do(func() {}) // never started: nothing to stop
	if f.ch != nil {
		close(f.ch)
		f.wg.Wait()
	}
}
