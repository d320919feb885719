package pool

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgshard/pgshard/wire"
)

// ErrClosed is returned by Acquire on a closed pool.
var ErrClosed = errors.New("pool: closed")

// Config describes one pool.
type Config struct {
	// ConnString is a libpq connection string or URL for the server, without
	// user, password and database, which come from the fields below.
	ConnString     string
	User           string
	Password       string
	Database       string
	Size           int
	WaitTimeout    time.Duration
	IdleTimeout    time.Duration
	MaxLifetime    time.Duration
	ConnectTimeout time.Duration
	MaxMessageSize int
	Logger         *slog.Logger
	// Observer, when set, is told about acquisitions and state changes
	// (for metrics).
	Observer Observer
}

// Observer receives pool events; implementations must be fast and safe for
// concurrent use.
type Observer interface {
	// Waited is called after every successful or failed Acquire with the
	// time spent waiting for a connection.
	Waited(p *Pool, d time.Duration, err error)
}

// Pool is a set of connections to one backend as one user on one database.
type Pool struct {
	cfg   Config
	pgcfg *pgconn.Config
	log   *slog.Logger
	name  string

	mu      sync.Mutex
	idle    []*Conn // LIFO: the last element is the warmest
	active  int     // connections handed out
	dialing int     // connections being opened
	total   int     // every open connection, idle and active and dialing
	waiters []chan *Conn
	size    int
	closed  bool
	all     map[*Conn]struct{}
	paused  int // Pause calls not yet matched by Resume

	stop chan struct{}
	wg   sync.WaitGroup
}

// New returns a pool; it opens no connection until Acquire.
func New(cfg Config) (*Pool, error) {
	pgcfg, err := pgconn.ParseConfig(cfg.ConnString)
	if err != nil {
		return nil, fmt.Errorf("pool: parse %q: %w", cfg.ConnString, err)
	}
	pgcfg.User = cfg.User
	pgcfg.Password = cfg.Password
	pgcfg.Database = cfg.Database
	if cfg.ConnectTimeout > 0 {
		pgcfg.ConnectTimeout = cfg.ConnectTimeout
	}
	// The proxy's own settings are applied per session; keep the backend at
	// its defaults.
	pgcfg.RuntimeParams = map[string]string{}
	if cfg.Size < 1 {
		cfg.Size = 1
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	p := &Pool{
		cfg:   cfg,
		pgcfg: pgcfg,
		size:  cfg.Size,
		name:  fmt.Sprintf("%s@%s/%s", cfg.User, net.JoinHostPort(pgcfg.Host, fmt.Sprint(pgcfg.Port)), cfg.Database),
		all:   map[*Conn]struct{}{},
		stop:  make(chan struct{}),
	}
	p.log = cfg.Logger.With("pool", p.name)
	p.wg.Add(1)
	go p.janitor()
	return p, nil
}

// Name identifies the pool in logs and metrics: user@host:port/database.
func (p *Pool) Name() string { return p.name }

// Addr is the backend's host:port.
func (p *Pool) Addr() string {
	return net.JoinHostPort(p.pgcfg.Host, fmt.Sprint(p.pgcfg.Port))
}

// Stats is a snapshot of a pool's connections.
type Stats struct {
	Idle, Active, Dialing, Waiting, Size int
}

// Stats returns the pool's current counts.
func (p *Pool) Stats() Stats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return Stats{Idle: len(p.idle), Active: p.active, Dialing: p.dialing, Waiting: len(p.waiters), Size: p.size}
}

// SetSize changes the pool's size. Shrinking closes idle connections at
// once and active ones as they are released.
func (p *Pool) SetSize(n int) {
	if n < 1 {
		n = 1
	}
	p.mu.Lock()
	p.size = n
	var drop []*Conn
	for p.total > p.size && len(p.idle) > 0 {
		c := p.idle[0]
		p.idle = p.idle[1:]
		p.total--
		delete(p.all, c)
		drop = append(drop, c)
	}
	p.mu.Unlock()
	for _, c := range drop {
		c.close()
	}
}

// Acquire returns a connection for the caller's exclusive use until Release
// or Discard. It waits at most the pool's wait timeout (and ctx).
func (p *Pool) Acquire(ctx context.Context) (*Conn, error) {
	start := time.Now()
	c, err := p.acquire(ctx)
	if c != nil && !c.held.CompareAndSwap(false, true) {
		// A bug: fail loudly for both holders rather than mix their answers.
		p.log.Error("BUG: backend connection handed out twice; closing it", "pid", c.PID)
		c.close()
	}
	if p.cfg.Observer != nil {
		p.cfg.Observer.Waited(p, time.Since(start), err)
	}
	return c, err
}

func (p *Pool) acquire(ctx context.Context) (*Conn, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, ErrClosed
	}
	for p.paused == 0 && len(p.idle) > 0 {
		c := p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if c.isBroken() {
			p.total--
			delete(p.all, c)
			p.mu.Unlock()
			c.close()
			p.mu.Lock()
			continue
		}
		p.active++
		p.mu.Unlock()
		return c, nil
	}
	if p.paused == 0 && p.total < p.size {
		p.total++
		p.dialing++
		p.mu.Unlock()
		c, err := p.dial(ctx)
		p.mu.Lock()
		p.dialing--
		if err != nil {
			p.total--
			p.mu.Unlock()
			// Someone may be waiting for the slot this dial held.
			p.wakeOne()
			return nil, err
		}
		p.active++
		p.all[c] = struct{}{}
		p.mu.Unlock()
		return c, nil
	}
	ch := make(chan *Conn, 1)
	p.waiters = append(p.waiters, ch)
	p.mu.Unlock()

	wait := p.cfg.WaitTimeout
	if wait <= 0 {
		wait = 5 * time.Second
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case c := <-ch:
		if c == nil {
			// Woken to dial in a freed slot.
			return p.acquire(ctx)
		}
		return c, nil
	case <-timer.C:
		if c := p.cancelWait(ch); c != nil {
			return c, nil
		}
		if p.isPaused() {
			return nil, &wire.Error{Severity: "ERROR", Code: codeObjectInUse,
				Message: fmt.Sprintf("pgshard: no connection to %s within %s: another client is dropping, renaming or copying database %q", p.name, wait, p.cfg.Database),
				Hint:    "retry when that DROP/CREATE/ALTER DATABASE has finished"}
		}
		return nil, &wire.Error{Severity: "ERROR", Code: wire.CodeTooManyConnections,
			Message: fmt.Sprintf("pgshard: no connection to %s became free within %s (pool size %d)", p.name, wait, p.Stats().Size),
			Hint:    "raise pool.size or pool.wait_timeout, or shorten transactions"}
	case <-ctx.Done():
		if c := p.cancelWait(ch); c != nil {
			return c, nil
		}
		return nil, ctx.Err()
	}
}

// cancelWait removes ch from the waiters. If a connection was handed to it
// meanwhile, that connection is returned and now belongs to the caller.
func (p *Pool) cancelWait(ch chan *Conn) *Conn {
	p.mu.Lock()
	for i, w := range p.waiters {
		if w == ch {
			p.waiters = append(p.waiters[:i], p.waiters[i+1:]...)
			p.mu.Unlock()
			return nil
		}
	}
	p.mu.Unlock()
	c := <-ch // it was handed something: a conn or a dial slot (nil)
	if c == nil {
		p.wakeOne()
	}
	return c
}

// wakeOne tells the first waiter that a slot to dial is free.
func (p *Pool) wakeOne() {
	p.mu.Lock()
	if p.paused == 0 && len(p.waiters) > 0 && p.total < p.size {
		w := p.waiters[0]
		p.waiters = p.waiters[1:]
		p.mu.Unlock()
		w <- nil
		return
	}
	p.mu.Unlock()
}

func (p *Pool) dial(ctx context.Context) (*Conn, error) {
	if p.pgcfg.ConnectTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.pgcfg.ConnectTimeout)
		defer cancel()
	}
	pc, err := pgconn.ConnectConfig(ctx, p.pgcfg)
	if err != nil {
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			return nil, pe
		}
		return nil, &wire.Error{Severity: "ERROR", Code: wire.CodeConnectionFailure,
			Message: fmt.Sprintf("pgshard: cannot connect to backend %s", p.name), Err: err}
	}
	// pgconn may still have a background reader on the socket (started when
	// a write during startup was slow); it would steal the first bytes of
	// the first answer. SyncConn stops it and drains pgconn's buffers.
	if err := pc.SyncConn(ctx); err != nil {
		pc.Close(ctx)
		return nil, &wire.Error{Severity: "ERROR", Code: wire.CodeConnectionFailure,
			Message: fmt.Sprintf("pgshard: cannot prepare backend connection %s", p.name), Err: err}
	}
	hc, err := pc.Hijack()
	if err != nil {
		pc.Close(ctx)
		return nil, fmt.Errorf("pool: hijack %s: %w", p.name, err)
	}
	c := newConn(p, hc)
	p.log.Debug("backend connection opened", "pid", c.PID)
	return c, nil
}

// Release returns c to the pool. The caller must not use c afterwards. The
// backend must be idle (no transaction, nothing outstanding).
func (p *Pool) Release(c *Conn) {
	if !c.held.CompareAndSwap(true, false) {
		p.log.Error("BUG: backend connection released twice; ignoring", "pid", c.PID)
		return
	}
	c.SetHandler(nil)
	now := time.Now()
	p.mu.Lock()
	p.active--
	if p.closed || p.paused > 0 || c.isBroken() || p.total > p.size ||
		(p.cfg.MaxLifetime > 0 && now.Sub(c.created) > p.cfg.MaxLifetime) {
		p.total--
		delete(p.all, c)
		p.mu.Unlock()
		c.close()
		p.wakeOne()
		return
	}
	c.lastUsed = now
	if len(p.waiters) > 0 {
		w := p.waiters[0]
		p.waiters = p.waiters[1:]
		p.active++
		p.mu.Unlock()
		w <- c
		return
	}
	p.idle = append(p.idle, c)
	p.mu.Unlock()
}

// Discard closes c and frees its slot; use it when c's state is unknown.
func (p *Pool) Discard(c *Conn) {
	if !c.held.CompareAndSwap(true, false) {
		p.log.Error("BUG: backend connection discarded twice; ignoring", "pid", c.PID)
		return
	}
	c.SetHandler(nil)
	p.mu.Lock()
	p.active--
	p.total--
	delete(p.all, c)
	p.mu.Unlock()
	c.close()
	p.wakeOne()
}

// dropIdle is called by a Conn's reader when an idle Conn's server went away.
func (p *Pool) dropIdle(c *Conn) {
	p.mu.Lock()
	for i, ic := range p.idle {
		if ic == c {
			p.idle = append(p.idle[:i], p.idle[i+1:]...)
			p.total--
			delete(p.all, c)
			p.mu.Unlock()
			p.wakeOne()
			return
		}
	}
	p.mu.Unlock()
}

func (p *Pool) janitor() {
	defer p.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case now := <-t.C:
			p.reap(now)
		}
	}
}

// reap closes idle connections past the idle timeout or lifetime.
func (p *Pool) reap(now time.Time) {
	var drop []*Conn
	p.mu.Lock()
	kept := p.idle[:0]
	for _, c := range p.idle {
		if (p.cfg.IdleTimeout > 0 && now.Sub(c.lastUsed) > p.cfg.IdleTimeout) ||
			(p.cfg.MaxLifetime > 0 && now.Sub(c.created) > p.cfg.MaxLifetime) {
			drop = append(drop, c)
			p.total--
			delete(p.all, c)
			continue
		}
		kept = append(kept, c)
	}
	for i := len(kept); i < len(p.idle); i++ {
		p.idle[i] = nil
	}
	p.idle = kept
	p.mu.Unlock()
	for _, c := range drop {
		p.log.Debug("closing idle backend connection", "pid", c.PID)
		c.close()
	}
}

// codeObjectInUse is SQLSTATE object_in_use, as PostgreSQL reports a
// database that others are using.
const codeObjectInUse = "55006"

// CloseIdle closes every idle connection at once and returns how many it
// closed. Connections handed out are not touched.
func (p *Pool) CloseIdle() int {
	p.mu.Lock()
	drop := p.takeIdle()
	p.mu.Unlock()
	for _, c := range drop {
		c.close()
	}
	return len(drop)
}

// takeIdle removes every idle connection from the pool and returns them
// for the caller to close. Called with p.mu held.
func (p *Pool) takeIdle() []*Conn {
	drop := p.idle
	for _, c := range drop {
		p.total--
		delete(p.all, c)
	}
	p.idle = nil
	return drop
}

// Pause keeps the pool from holding any connection it does not have to,
// so that the database can be dropped, renamed or used as a template: idle
// connections are closed at once, connections released while paused are
// closed instead of kept, and Acquire opens none and hands out none: it
// waits (in the same FIFO, bounded by the wait timeout) until Resume, then
// fails with SQLSTATE 55006 (object_in_use) if the pause outlasted the wait.
// Connections handed out before the pause (and dials already under way)
// stay with their holders. Pauses nest: every Pause needs one Resume.
func (p *Pool) Pause() {
	p.mu.Lock()
	p.paused++
	drop := p.takeIdle()
	p.mu.Unlock()
	for _, c := range drop {
		c.close()
	}
	if len(drop) > 0 {
		p.log.Debug("pool paused; idle backend connections closed", "closed", len(drop))
	}
}

// Resume ends one Pause. When the last one ends, waiting Acquires dial
// (up to the pool's size).
func (p *Pool) Resume() {
	p.mu.Lock()
	if p.paused == 0 {
		p.mu.Unlock()
		p.log.Error("BUG: pool resumed more often than paused")
		return
	}
	p.paused--
	var wake []chan *Conn
	if p.paused == 0 {
		n := min(len(p.waiters), p.size-p.total)
		if n > 0 {
			wake = append(wake, p.waiters[:n]...)
			p.waiters = append(p.waiters[:0], p.waiters[n:]...)
		}
	}
	p.mu.Unlock()
	for _, w := range wake {
		w <- nil // a slot to dial in
	}
}

func (p *Pool) isPaused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.paused > 0
}

// Close closes every connection, idle or not, and fails waiters.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	conns := make([]*Conn, 0, len(p.all))
	for c := range p.all {
		conns = append(conns, c)
	}
	p.idle = nil
	waiters := p.waiters
	p.waiters = nil
	p.mu.Unlock()
	close(p.stop)
	for _, w := range waiters {
		close(w)
	}
	for _, c := range conns {
		c.close()
	}
	p.wg.Wait()
	for _, c := range conns {
		c.wait()
	}
}
