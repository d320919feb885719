package proxy

// Recovery of in-doubt two-phase commit transactions. A coordinator names
// its prepared transactions "pgshard_<32 hex>" and records its decision in
// the TxnLog before the first COMMIT PREPARED; when it dies between PREPARE
// and the end, the transactions stay prepared on the shards, holding their
// locks. RecoverPrepared, run periodically by the Raft leader (cmd/pgshard),
// finishes them from the recorded decision, decides rollback for those
// nobody decided within a grace period, and forgets decisions once no
// shard holds their transaction any more.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgshard/pgshard/config"
	"github.com/pgshard/pgshard/shardmap"
)

// GIDPrefix starts the gid of every transaction pgshard prepares; the
// recovery pass touches no other prepared transaction.
const GIDPrefix = "pgshard_"

// Bounds of the recovery pass's work against one server.
const (
	recoverConnectTimeout = 10 * time.Second
	recoverStmtTimeout    = 30 * time.Second
)

// TxnLister is implemented by a TxnLog that can list its records.
// RecoverPrepared forgets finished decisions only through one; with a
// TxnLog that is not a TxnLister, decisions are never forgotten.
type TxnLister interface {
	TxnDecisions(ctx context.Context) ([]shardmap.TxnDecision, error)
}

// RecoverStats counts what one RecoverPrepared pass found and did.
type RecoverStats struct {
	Shards       int // shards whose primary was listed
	ShardsFailed int // shards whose prepared transactions could not be listed
	Prepared     int // pgshard transactions found prepared
	Committed    int // finished with COMMIT PREPARED
	RolledBack   int // finished with ROLLBACK PREPARED
	Decided      int // undecided past the grace period, decided by this pass
	Waiting      int // undecided and younger than the grace period, or being finished by another session: left to their coordinator
	Forgotten    int // decisions dropped: decided long enough ago and prepared nowhere
	Unresolved   int // could not be finished or forgotten this pass (logged; retried next pass)
}

// preparedXact is one row of pg_prepared_xacts.
type preparedXact struct {
	gid, owner, database string
	age                  time.Duration // since PREPARE TRANSACTION, by the server's clock
}

// RecoverPrepared makes one pass over every shard's primary: each prepared
// transaction named GIDPrefix... is committed or rolled back as the TxnLog
// recorded; one with no decision that was prepared more than grace ago is
// decided rollback (Decide; if the coordinator decided first, its outcome
// is applied) and finished. Then, when every shard could be listed,
// decisions older than grace whose transaction no shard holds prepared are
// forgotten (through a TxnLog that is a TxnLister).
//
// COMMIT/ROLLBACK PREPARED runs in the transaction's database, logged in
// as its owner when a configured user's backend login is that owner, else
// with the monitor login (routing.monitor_user, or the first user's
// backend login), which must then be a superuser. What cannot be done is
// logged and counted in Unresolved, and the pass goes on; the error is
// non-nil only when the pass could not run (no TxnLog) or ctx ended.
func (s *Server) RecoverPrepared(ctx context.Context, grace time.Duration) (RecoverStats, error) {
	var st RecoverStats
	txl := s.txnLogger()
	if txl == nil {
		return st, errors.New("recover prepared transactions: no transaction log (SetTxnLog)")
	}
	cfg := s.cfg.Load()
	prepared := map[string]bool{}
	complete := true
	for _, rt := range s.shardList() {
		xs, err := listPrepared(ctx, cfg, rt.primary)
		if err != nil {
			if ctx.Err() != nil {
				return st, fmt.Errorf("recover prepared transactions: %w", ctx.Err())
			}
			complete = false
			st.ShardsFailed++
			s.log.Warn("recovery: cannot list the prepared transactions of a shard; retrying next pass", "shard", rt.name, "err", err)
			continue
		}
		st.Shards++
		st.Prepared += len(xs)
		for _, x := range xs {
			prepared[x.gid] = true
		}
		s.resolvePrepared(ctx, cfg, txl, rt, xs, grace, &st)
		if ctx.Err() != nil {
			return st, fmt.Errorf("recover prepared transactions: %w", ctx.Err())
		}
	}
	if lister, ok := txl.(TxnLister); ok && complete {
		s.forgetFinished(ctx, txl, lister, prepared, grace, &st)
	}
	if ctx.Err() != nil {
		return st, fmt.Errorf("recover prepared transactions: %w", ctx.Err())
	}
	if st.Committed+st.RolledBack+st.Decided+st.Forgotten+st.Unresolved+st.ShardsFailed > 0 {
		s.log.Info("recovery pass over prepared transactions", "shards", st.Shards, "shards_failed", st.ShardsFailed,
			"prepared", st.Prepared, "committed", st.Committed, "rolled_back", st.RolledBack, "decided", st.Decided,
			"waiting", st.Waiting, "forgotten", st.Forgotten, "unresolved", st.Unresolved)
	}
	return st, nil
}

// connectAs opens a connection to the server at dsn with a login.
func connectAs(ctx context.Context, dsn, user, password, db string) (*pgconn.PgConn, error) {
	cs, err := withLogin(dsn, user, password, db)
	if err != nil {
		return nil, fmt.Errorf("connection string: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, recoverConnectTimeout)
	defer cancel()
	c, err := pgconn.Connect(cctx, cs)
	if err != nil {
		return nil, fmt.Errorf("connect to database %q as %q: %w", db, user, err)
	}
	return c, nil
}

// closeConn closes c, bounded in time.
func closeConn(c *pgconn.PgConn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = c.Close(ctx)
}

// listPrepared returns the pgshard transactions prepared on the server at
// dsn, in every database (pg_prepared_xacts shows them all).
func listPrepared(ctx context.Context, cfg *config.Config, dsn string) ([]preparedXact, error) {
	user, password, db := cfg.MonitorLogin()
	c, err := connectAs(ctx, dsn, user, password, db)
	if err != nil {
		return nil, err
	}
	defer closeConn(c)
	qctx, cancel := context.WithTimeout(ctx, recoverStmtTimeout)
	defer cancel()
	res := c.ExecParams(qctx, `SELECT gid, owner, database, extract(epoch FROM now() - prepared)::float8
		FROM pg_prepared_xacts WHERE starts_with(gid, $1) ORDER BY prepared`,
		[][]byte{[]byte(GIDPrefix)}, nil, nil, nil).Read()
	if res.Err != nil {
		return nil, fmt.Errorf("list pg_prepared_xacts: %w", res.Err)
	}
	out := make([]preparedXact, 0, len(res.Rows))
	for _, row := range res.Rows {
		secs, err := strconv.ParseFloat(string(row[3]), 64)
		if err != nil {
			return nil, fmt.Errorf("list pg_prepared_xacts: age %q: %w", row[3], err)
		}
		out = append(out, preparedXact{gid: string(row[0]), owner: string(row[1]), database: string(row[2]),
			age: time.Duration(secs * float64(time.Second))})
	}
	return out, nil
}

// finishKey groups the transactions one connection finishes.
type finishKey struct{ database, owner string }

type finish struct {
	gid    string
	commit bool
}

// resolvePrepared decides what becomes of each transaction prepared on
// shard rt and finishes the decided ones.
func (s *Server) resolvePrepared(ctx context.Context, cfg *config.Config, txl TxnLog, rt *shardRT, xs []preparedXact, grace time.Duration, st *RecoverStats) {
	groups := map[finishKey][]finish{}
	var order []finishKey
	for _, x := range xs {
		commit, decided, err := txl.Decision(ctx, x.gid)
		if err != nil {
			st.Unresolved++
			s.log.Warn("recovery: cannot read a transaction's decision", "shard", rt.name, "gid", x.gid, "err", err)
			continue
		}
		if !decided {
			if x.age <= grace {
				st.Waiting++
				continue
			}
			commit, err = txl.Decide(ctx, x.gid, false)
			if err != nil {
				st.Unresolved++
				s.log.Warn("recovery: cannot record a decision for an in-doubt transaction", "shard", rt.name, "gid", x.gid, "err", err)
				continue
			}
			st.Decided++
			s.log.Info("recovery: in-doubt transaction decided", "shard", rt.name, "gid", x.gid,
				"prepared_ago", x.age.Round(time.Millisecond).String(), "commit", commit)
		}
		k := finishKey{x.database, x.owner}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], finish{x.gid, commit})
	}
	for _, k := range order {
		s.finishPrepared(ctx, cfg, rt, k, groups[k], st)
	}
}

// login is a user and password to log in to a backend with.
type login struct{ user, password string }

// finishLogins returns the logins that may finish owner's transactions: the
// owner's own (from a configured user whose backend login it is), then the
// monitor login.
func finishLogins(cfg *config.Config, owner string) []login {
	var out []login
	for _, u := range cfg.Users {
		if user, password := u.BackendLogin(); user == owner {
			out = append(out, login{user, password})
			break
		}
	}
	user, password, _ := cfg.MonitorLogin()
	if len(out) == 0 || out[0] != (login{user, password}) {
		out = append(out, login{user, password})
	}
	return out
}

// finishPrepared runs COMMIT/ROLLBACK PREPARED for fs, all in database
// k.database and owned by k.owner, trying each login in turn for those a
// login could not finish.
func (s *Server) finishPrepared(ctx context.Context, cfg *config.Config, rt *shardRT, k finishKey, fs []finish, st *RecoverStats) {
	lastErr := map[string]error{}
	for _, l := range finishLogins(cfg, k.owner) {
		if len(fs) == 0 || ctx.Err() != nil {
			break
		}
		c, err := connectAs(ctx, rt.primary, l.user, l.password, k.database)
		if err != nil {
			for _, f := range fs {
				lastErr[f.gid] = err
			}
			continue
		}
		var left []finish
		for _, f := range fs {
			verb := "ROLLBACK"
			if f.commit {
				verb = "COMMIT"
			}
			qctx, cancel := context.WithTimeout(ctx, recoverStmtTimeout)
			_, err := c.Exec(qctx, verb+" PREPARED "+quoteGID(f.gid)).ReadAll()
			cancel()
			var pe *pgconn.PgError
			switch {
			case err == nil:
				if f.commit {
					st.Committed++
				} else {
					st.RolledBack++
				}
				s.log.Info("recovery: prepared transaction finished", "shard", rt.name, "database", k.database, "gid", f.gid, "commit", f.commit)
			case errors.As(err, &pe) && pe.Code == "42704":
				// Finished meanwhile (by its coordinator): nothing to do.
				s.log.Debug("recovery: prepared transaction already finished", "shard", rt.name, "gid", f.gid)
			case errors.As(err, &pe) && pe.Code == "55000":
				// "is busy": its coordinator is finishing it right now;
				// if it does not, the next pass will.
				st.Waiting++
				s.log.Debug("recovery: prepared transaction busy; left to the next pass", "shard", rt.name, "gid", f.gid)
			default:
				lastErr[f.gid] = fmt.Errorf("%s PREPARED as %q: %w", verb, l.user, err)
				left = append(left, f)
			}
			if c.IsClosed() {
				break
			}
		}
		closeConn(c)
		fs = left
	}
	for _, f := range fs {
		st.Unresolved++
		s.log.Warn("recovery: cannot finish a prepared transaction; retrying next pass (its owner's login, or a superuser monitor_user, must be able to)",
			"shard", rt.name, "database", k.database, "owner", k.owner, "gid", f.gid, "commit", f.commit, "err", lastErr[f.gid])
	}
}

// forgetFinished drops the decisions taken more than grace ago whose
// transaction no shard holds prepared (prepared lists every pgshard
// transaction the pass found).
func (s *Server) forgetFinished(ctx context.Context, txl TxnLog, lister TxnLister, prepared map[string]bool, grace time.Duration, st *RecoverStats) {
	ds, err := lister.TxnDecisions(ctx)
	if err != nil {
		st.Unresolved++
		s.log.Warn("recovery: cannot list the recorded decisions", "err", err)
		return
	}
	now := time.Now()
	for _, d := range ds {
		if !strings.HasPrefix(d.GID, GIDPrefix) || prepared[d.GID] || now.Sub(d.At) <= grace {
			continue
		}
		if err := txl.Forget(ctx, d.GID); err != nil {
			if ctx.Err() != nil {
				return
			}
			st.Unresolved++
			s.log.Warn("recovery: cannot forget a finished transaction's decision", "gid", d.GID, "err", err)
			continue
		}
		st.Forgotten++
	}
}

// quoteGID quotes a gid as an SQL string literal, whatever the server's
// standard_conforming_strings.
func quoteGID(s string) string {
	s = strings.ReplaceAll(s, `\`, `\\`)
	s = strings.ReplaceAll(s, `'`, `''`)
	return "E'" + s + "'"
}
