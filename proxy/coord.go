package proxy

import (
	"context"

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
