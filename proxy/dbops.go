package proxy

import (
	"slices"
	"sync"
	"time"

	"github.com/pgshard/pgshard/pool"
	"github.com/pgshard/pgshard/router"
)

// DROP DATABASE, CREATE DATABASE ... TEMPLATE and ALTER DATABASE ... RENAME
// (or SET TABLESPACE) fail with 55006 while any other session is connected
// to the database they act on, and pgshard's pools keep idle connections
// to it. Before such a statement is forwarded, every pool on that database
// (any server: every shard's primary and replicas; any user) is paused:
// its idle connections are closed, connections released meanwhile are
// closed too, and Acquire on it waits (bounded by pool.wait_timeout, then
// fails with 55006 saying why) until the statement's ReadyForQuery. Busy
// connections held by other clients are not touched: PostgreSQL then
// waits for them for up to 5 s (as it does for direct clients) and reports
// its own error if they stay. Pools created during the pause are paused
// too.

// dbQuiesceMax bounds a pause whose release never comes (a bug): once
// PostgreSQL has started the statement it holds a lock on the database
// that keeps new sessions out by itself, so the pause only has to cover
// the time until the statement's checks pass.
const dbQuiesceMax = 60 * time.Second

// dbQuiesces tracks the pauses in progress. Lock order: Server.mu, then mu;
// mu is never held while taking Server.mu or a session's mu.
type dbQuiesces struct {
	mu     sync.Mutex
	active map[*dbQuiesce]struct{}
}

type dbQuiesce struct {
	dbs   []string
	pools []*pool.Pool // paused by this quiesce; guarded by dbQuiesces.mu
}

// adopt pauses a pool just created for db once for every quiesce of db in
// progress. Called with Server.mu held (by poolFor).
func (q *dbQuiesces) adopt(db string, p *pool.Pool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for dq := range q.active {
		if slices.Contains(dq.dbs, db) {
			p.Pause()
			dq.pools = append(dq.pools, p)
		}
	}
}

// quiesceDatabases pauses every pool on the databases dbs (see above) and
// returns the function that ends the pause. release may be called more
// than once, from any goroutine, with a session's mu held.
func (s *Server) quiesceDatabases(dbs []string) (release func()) {
	dq := &dbQuiesce{dbs: dbs}
	closed := 0
	s.mu.Lock()
	s.dbq.mu.Lock()
	if s.dbq.active == nil {
		s.dbq.active = map[*dbQuiesce]struct{}{}
	}
	s.dbq.active[dq] = struct{}{}
	for k, p := range s.poolsBy {
		if slices.Contains(dbs, k.db) {
			closed += p.Stats().Idle
			p.Pause()
			dq.pools = append(dq.pools, p)
		}
	}
	s.dbq.mu.Unlock()
	s.mu.Unlock()
	s.log.Info("database statement: idle backend connections closed, new ones held back until it ends",
		"databases", dbs, "pools", len(dq.pools), "closed", closed)

	stop := make(chan struct{})
	var once sync.Once
	release = func() {
		once.Do(func() {
			close(stop)
			s.dbq.mu.Lock()
			delete(s.dbq.active, dq)
			pools := dq.pools
			dq.pools = nil
			s.dbq.mu.Unlock()
			for _, p := range pools {
				p.Resume()
			}
		})
	}
	go func() {
		t := time.NewTimer(dbQuiesceMax)
		defer t.Stop()
		select {
		case <-stop:
		case <-t.C:
			s.log.Warn("database statement still holding back new connections; letting them through", "databases", dbs, "after", dbQuiesceMax)
			release()
		}
	}()
	return release
}

// quiesceFor prepares a simple Query: when it holds CREATE/DROP/ALTER
// DATABASE statements that need databases free of other sessions, it
// pauses their pools and returns the release to run at the Query's
// ReadyForQuery; else nil. The session's own backend is attached first, so
// a statement on the client's own database does not wait for itself
// (PostgreSQL refuses it: "cannot drop the currently open database").
func (s *session) quiesceFor(sql string) func() {
	dbs := router.FreeDatabases(sql) // parses only texts that mention DATABASE
	if len(dbs) == 0 {
		return nil
	}
	return s.srv.quiesceDatabases(dbs)
}
