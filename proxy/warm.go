package proxy

import (
	"context"
	"sync"
	"time"

	"github.com/pgshard/pgshard/pool"
)

// Warming the shards a reshard job moves ranges to. At the cut-over every
// statement held on a moving range is released at once onto its new
// owner; on a shard this node never used (a shard being added) each would
// first log in, one backend each, all together. So when a job starts, and
// again when its freeze starts, every shard's primary gets a few idle
// backends for each user and database this node serves (warmBackends).

// warmBackends is how many idle backends a shard's pool is given.
const warmBackends = 8

// warmTimeout bounds one warming pass.
const warmTimeout = 10 * time.Second

// warmShards opens idle backends on every shard's primary for the user
// and database pairs this node has pools for, in the background (owned by
// the server: Shutdown waits for it).
func (s *Server) warmShards() {
	if s.closing.Load() {
		return
	}
	type login struct{ user, db string }
	s.mu.Lock()
	logins := map[login]bool{}
	for k := range s.poolsBy {
		logins[login{k.user, k.db}] = true
	}
	s.warmWG.Add(1)
	s.mu.Unlock()
	users := s.users.Load()
	go func() {
		defer s.warmWG.Done()
		ctx, cancel := context.WithTimeout(context.Background(), warmTimeout)
		defer cancel()
		var wg sync.WaitGroup
		for _, rt := range s.shardList() {
			for l := range logins {
				u, ok := (*users)[l.user]
				if !ok {
					continue
				}
				p, err := s.poolFor(rt.primary, u, l.db)
				if err != nil {
					continue
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					warmPool(ctx, p)
				}()
			}
		}
		wg.Wait()
	}()
}

// warmPool brings p to warmBackends idle backends (fewer if its size is
// smaller), opening them together.
func warmPool(ctx context.Context, p *pool.Pool) {
	st := p.Stats()
	free := st.Size - st.Idle - st.Active - st.Dialing // never take a slot a session waits for
	n := min(warmBackends-st.Idle, free)
	if n <= 0 || st.Waiting > 0 {
		return
	}
	conns := make(chan *pool.Conn, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if c, err := p.Acquire(ctx); err == nil {
				conns <- c
			}
		}()
	}
	wg.Wait()
	close(conns)
	for c := range conns {
		p.Release(c)
	}
}
