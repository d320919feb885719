package proxy

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgshard/pgshard/config"
	"github.com/pgshard/pgshard/internal/parking"
	"github.com/pgshard/pgshard/pool"
	"github.com/pgshard/pgshard/router"
	"github.com/pgshard/pgshard/wire"
	"github.com/prometheus/client_golang/prometheus"
)

// Server accepts client connections and serves sessions.
type Server struct {
	log            *slog.Logger
	metrics        *metrics
	stmts          stmtCache
	tls            *tls.Config
	classifier     *router.Classifier
	shardsPtr      atomic.Pointer[[]*shardRT]
	awaitMap       atomic.Bool                  // AwaitMap: no client until SetShards
	routing        atomic.Pointer[routingState] // from the shard map (routing.go)
	mapVersion     atomic.Uint64                // of the last SetMap (routing.go)
	mapChanged     mapSignal                    // broadcast by SetMap (hold.go)
	serveCtx       context.Context              // set by Serve; monitors of shards added later start with it
	readYourWrites bool
	txnLog         atomic.Pointer[TxnLog]         // coord.go
	registrar      atomic.Pointer[TableRegistrar] // coord.go
	forgets        forgetter                      // coord.go
	forgetMu       sync.Mutex
	forgetClosed   bool

	cfg   atomic.Pointer[config.Config]
	users atomic.Pointer[map[string]config.User]

	mu         sync.Mutex
	poolsBy    map[poolKey]*pool.Pool
	dbq        dbQuiesces                     // pools paused for DROP/CREATE/ALTER DATABASE (dbops.go)
	collations map[string]string              // database -> its collation on the shards (spreadspec.go)
	collated   map[string]map[string]collated // database -> relation -> its columns' collations (collated.go)
	relTexts   map[string][]string            // statement text -> the relations it names (collated.go)
	sessions   map[wire.CancelKey]*session
	nclients   int
	ln         net.Listener
	closing    atomic.Bool

	wg sync.WaitGroup // one per session, running or parked

	// Idle clients (park.go), started by Serve, stopped by Shutdown.
	lot         *parking.Lot
	lotDone     chan struct{}
	sweepStop   chan struct{}
	sweepDone   chan struct{}
	parkStopped bool
	warmWG      sync.WaitGroup // warming passes (warm.go)
}

type poolKey struct{ addr, user, db string }

// New returns a Server for cfg (validated). Metrics go to reg when set.
func New(cfg config.Config, logger *slog.Logger, reg prometheus.Registerer) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.Default()
	}
	s := &Server{log: logger, poolsBy: map[poolKey]*pool.Pool{}, sessions: map[wire.CancelKey]*session{}}
	if cfg.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("proxy: load TLS certificate: %w", err)
		}
		s.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	s.metrics = newMetrics(reg, s)
	s.classifier = router.NewClassifier(router.ClassifierConfig{
		CacheSize: cfg.Routing.ParseCacheSize, WriteFunctions: cfg.Routing.WriteFunctions})
	s.readYourWrites = cfg.Routing.ReadYourWrites
	var shards []*shardRT
	for _, sh := range cfg.Shards {
		rt, err := newShardRT(cfg, sh, s.metrics, logger)
		if err != nil {
			return nil, err
		}
		shards = append(shards, rt)
	}
	s.shardsPtr.Store(&shards)
	s.setConfig(cfg)
	return s, nil
}

func (s *Server) setConfig(cfg config.Config) {
	users := make(map[string]config.User, len(cfg.Users))
	for _, u := range cfg.Users {
		users[u.Name] = u
	}
	s.users.Store(&users)
	s.cfg.Store(&cfg)
}

// Reload applies a new configuration: users and passwords at once for new
// logins, pool sizes at once for every pool. Other settings need a restart;
// Reload says which ones changed and were not applied.
func (s *Server) Reload(cfg config.Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	old := s.cfg.Load()
	var ignored []string
	if cfg.Listen != old.Listen {
		ignored = append(ignored, "listen")
	}
	if cfg.Pool.Mode != old.Pool.Mode {
		ignored = append(ignored, "pool.mode")
	}
	if cfg.TLSCertFile != old.TLSCertFile || cfg.TLSKeyFile != old.TLSKeyFile {
		ignored = append(ignored, "tls")
	}
	if fmt.Sprint(cfg.Shards) != fmt.Sprint(old.Shards) {
		ignored = append(ignored, "shards")
	}
	s.setConfig(cfg)
	s.mu.Lock()
	for k, p := range s.poolsBy {
		p.SetSize(s.poolSizeFor(k.user))
	}
	s.mu.Unlock()
	if len(ignored) > 0 {
		s.log.Warn("reload: these settings need a restart and were not applied", "settings", strings.Join(ignored, ","))
	}
	s.log.Info("configuration reloaded", "users", len(cfg.Users), "pool_size", cfg.Pool.Size)
	return nil
}

func (s *Server) poolSizeFor(user string) int {
	if u, ok := (*s.users.Load())[user]; ok && u.PoolSize > 0 {
		return u.PoolSize
	}
	return s.cfg.Load().Pool.Size
}

// pools returns every pool (for metrics).
func (s *Server) pools() []*pool.Pool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*pool.Pool, 0, len(s.poolsBy))
	for _, p := range s.poolsBy {
		out = append(out, p)
	}
	return out
}

// poolFor returns the pool of a server (its connection string) for a user
// and database, creating it on first use.
func (s *Server) poolFor(addr string, u config.User, db string) (*pool.Pool, error) {
	cfg := s.cfg.Load()
	key := poolKey{addr, u.Name, db}
	s.mu.Lock()
	defer s.mu.Unlock()
	if p, ok := s.poolsBy[key]; ok {
		return p, nil
	}
	user, password := u.BackendLogin()
	p, err := pool.New(pool.Config{
		ConnString: addr, User: user, Password: password, Database: db,
		Size: s.poolSizeFor(u.Name), WaitTimeout: cfg.Pool.WaitTimeout.Duration,
		IdleTimeout: cfg.Pool.IdleTimeout.Duration, MaxLifetime: cfg.Pool.MaxLifetime.Duration,
		ConnectTimeout: cfg.Pool.ConnectTimeout.Duration, MaxMessageSize: cfg.MaxMessageSize,
		Logger: s.log, Observer: s.metrics,
	})
	if err != nil {
		return nil, err
	}
	s.poolsBy[key] = p
	s.dbq.adopt(db, p)
	return p, nil
}

// Serve accepts connections on ln until Shutdown or ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	s.mu.Lock()
	s.ln = ln
	s.mu.Unlock()
	s.log.Info("accepting client connections", "addr", ln.Addr().String())
	s.mu.Lock()
	s.serveCtx = ctx
	shards := s.shardList()
	if s.lot == nil && !s.closing.Load() {
		s.startParking()
	}
	s.mu.Unlock()
	for _, rt := range shards {
		rt.start(ctx) // idempotent: SetShards may have started it
	}
	go func() {
		<-ctx.Done()
		_ = ln.Close()
	}()
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if s.closing.Load() || ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of file descriptors and the like: back off, keep serving.
			if delay == 0 {
				delay = 5 * time.Millisecond
			} else if delay < time.Second {
				delay *= 2
			}
			s.log.Warn("accept failed", "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetNoDelay(true)
		}
		s.wg.Add(1)
		go s.serveConn(ctx, conn)
	}
}

// panicked tells a client that a bug ended its session and logs the stack:
// a bug must cost one client its connection, not every client the process.
func (s *Server) panicked(r any, conn net.Conn) {
	s.metrics.rejected.WithLabelValues("internal_error").Inc()
	s.log.Error("BUG: session panicked; connection closed", "panic", r, "stack", string(debug.Stack()))
	_, _ = conn.Write(wire.AppendError(nil, wire.Fatalf(wire.CodeInternalError, "pgshard: internal error; the connection is closed")))
}

// serveConn starts a client's session and runs it (drive). It owns one
// count of s.wg, which drive takes over once the session runs.
func (s *Server) serveConn(ctx context.Context, conn net.Conn) {
	running := false
	defer func() {
		if running {
			return
		}
		if r := recover(); r != nil {
			s.panicked(r, conn)
		}
		conn.Close()
		s.wg.Done()
	}()
	cfg := s.cfg.Load()
	users := *s.users.Load()
	st, err := wire.Accept(ctx, conn, &wire.ServerConfig{
		TLSConfig:      s.tls,
		AuthTimeout:    cfg.AuthTimeout.Duration,
		MaxMessageSize: cfg.MaxMessageSize,
		Lookup: func(name string) (wire.Credentials, bool) {
			u, ok := users[name]
			if !ok {
				return wire.Credentials{}, false
			}
			return credentials(u), true
		},
	})
	if err != nil {
		s.metrics.rejected.WithLabelValues("startup").Inc()
		s.log.Debug("client startup failed", "remote", conn.RemoteAddr().String(), "err", err)
		return
	}
	if st.Cancel != nil {
		s.cancel(ctx, *st.Cancel)
		return
	}
	conn = st.Conn
	fail := func(reason string, e error) {
		s.metrics.rejected.WithLabelValues(reason).Inc()
		b := wire.AppendError(nil, e)
		_, _ = conn.Write(b)
	}
	if s.closing.Load() {
		fail("shutdown", wire.Fatalf(wire.CodeCannotConnectNow, "the database system is shutting down"))
		return
	}
	u := users[st.User]
	if s.awaitMap.Load() {
		fail("no_map", wire.Fatalf(wire.CodeCannotConnectNow, "pgshard: this node has not caught up with the cluster's shard map yet (no leader reachable, or the map has no shards)"))
		return
	}
	shards := s.shardList()
	if len(shards) == 0 {
		fail("no_shards", wire.Fatalf(wire.CodeCannotConnectNow, "pgshard: the shard map has no shards yet"))
		return
	}
	sess := newSession(s, st, u, cfg.Pool.Mode, cfg.Routing.ReadWriteSplit)
	sess.ctx = ctx
	if !s.register(sess, cfg.MaxClients) {
		fail("max_clients", wire.Fatalf(wire.CodeTooManyConnections, "sorry, too many clients already (max_clients = %d)", cfg.MaxClients))
		return
	}
	s.metrics.clients.Inc()
	s.metrics.clientsTotal.Inc()
	defer func() {
		if !running {
			s.unregister(sess)
			s.metrics.clients.Dec()
		}
	}()
	if err := sess.start(ctx); err != nil {
		var we *wire.Error
		if errors.As(err, &we) {
			we.Severity = "FATAL"
		}
		fail("backend", err)
		sess.finish()
		return
	}
	running = true
	s.drive(sess)
}

// drive runs the session loop until the session ends, then releases it, or
// until it parks (park.go): the Lot drives it again when its client sends
// something. Whoever ends the session says s.wg.Done.
func (s *Server) drive(sess *session) {
	defer func() {
		if r := recover(); r != nil {
			s.panicked(r, sess.conn)
			s.endSession(sess, false)
		}
	}()
	err := sess.run(sess.ctx)
	if err == errParked {
		return
	}
	if err != nil {
		sess.logger.Debug("session ended with an error", "err", err)
	}
	s.endSession(sess, true)
}

// endSession releases what a session holds (finish: its backend, when
// the session did not panic) and closes its client connection.
func (s *Server) endSession(sess *session, finish bool) {
	if finish {
		sess.finish()
	}
	s.unregister(sess)
	s.metrics.clients.Dec()
	_ = sess.conn.Close()
	s.wg.Done()
}

func credentials(u config.User) wire.Credentials {
	m := wire.AuthSCRAM
	switch u.Auth {
	case "md5":
		m = wire.AuthMD5
	case "trust":
		m = wire.AuthTrust
	}
	return wire.Credentials{Method: m, Password: u.Password}
}

// register gives sess a unique cancel key and counts it.
func (s *Server) register(sess *session, max int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if max > 0 && s.nclients >= max {
		return false
	}
	for {
		var b [8]byte
		_, _ = rand.Read(b[:])
		k := wire.CancelKey{ProcessID: binary.BigEndian.Uint32(b[:4]) & 0x7fffffff, SecretKey: binary.BigEndian.Uint32(b[4:])}
		if _, taken := s.sessions[k]; !taken && k.ProcessID != 0 {
			sess.key = k
			s.sessions[k] = sess
			s.nclients++
			return true
		}
	}
}

func (s *Server) unregister(sess *session) {
	s.mu.Lock()
	delete(s.sessions, sess.key)
	s.nclients--
	s.mu.Unlock()
}

// cancel forwards a client's CancelRequest to the backend running its
// query, if one is. The session keeps that backend until the server has
// handled the request (it closes the cancel connection after signalling the
// backend), so in transaction pooling a cancel never reaches another
// client's query: a signal that lands after the query ended is discarded
// by PostgreSQL when the backend reads its next command.
func (s *Server) cancel(ctx context.Context, k wire.CancelKey) {
	s.mu.Lock()
	sess := s.sessions[k]
	s.mu.Unlock()
	if sess == nil {
		return // as PostgreSQL does: no answer, no error
	}
	if conns, done := sess.legsToCancel(); conns != nil {
		// A statement running over several shards: cancel it on each.
		defer done()
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		for _, sc := range conns {
			if err := wire.SendCancel(ctx, sc.Pool().Addr(), sc.PID, sc.SecretKey); err != nil {
				s.log.Warn("forwarding cancel request failed", "err", err)
			}
		}
		return
	}
	sc, done := sess.cancelTarget()
	if sc == nil {
		return // nothing of the client's is running: nothing to cancel
	}
	defer done()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := wire.SendCancel(ctx, sc.Pool().Addr(), sc.PID, sc.SecretKey); err != nil {
		s.log.Warn("forwarding cancel request failed", "err", err)
	}
}

// Shutdown stops accepting, closes idle sessions at once and the others as
// their transactions end, and gives up on stragglers when ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closing.Store(true)
	s.mu.Lock()
	if s.ln != nil {
		_ = s.ln.Close()
	}
	for _, sess := range s.sessions {
		sess.closeIfIdle()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	var err error
	stuck := false
	select {
	case <-done:
	case <-ctx.Done():
		s.mu.Lock()
		n := len(s.sessions)
		for _, sess := range s.sessions {
			sess.hangUp()
		}
		s.mu.Unlock()
		err = fmt.Errorf("proxy: shutdown timed out; closed %d sessions mid-transaction", n)
		select {
		case <-done:
		case <-time.After(shutdownGrace):
			// A session waiting for its backend (a query still running
			// behind the closed client) ends when the pools close below.
			stuck = true
		}
	}
	s.stopParking()
	s.stopForgetting()
	s.warmWG.Wait()
	for _, p := range s.pools() {
		p.Close()
	}
	for _, rt := range s.shardList() {
		rt.close()
	}
	if stuck {
		select {
		case <-done:
		case <-time.After(shutdownGrace):
			err = fmt.Errorf("%w; some sessions had not ended %s after their backends were closed", err, shutdownGrace)
		}
	}
	return err
}

// shutdownGrace is how long Shutdown waits, once its time is up and the
// client connections are closed, for the sessions to end by themselves,
// and then again after closing their backends.
const shutdownGrace = 3 * time.Second

// shardList returns the shards the proxy routes to now.
func (s *Server) shardList() []*shardRT {
	if p := s.shardsPtr.Load(); p != nil {
		return *p
	}
	return nil
}

// AwaitMap makes the server refuse every client (SQLSTATE 57P03) until
// the first SetShards with at least one shard: a cluster node calls it
// before serving, so that it never routes by its file's [[shards]] alone
// (everything on the first shard) or by a map older than the cluster's.
// The node calls SetMap and then SetShards once it has caught up.
func (s *Server) AwaitMap() { s.awaitMap.Store(true) }

// AwaitingMap reports whether the server still refuses clients for want
// of the map (AwaitMap).
func (s *Server) AwaitingMap() bool { return s.awaitMap.Load() }

// SetShards makes the proxy follow a new list of shards (from the shard
// map): a shard whose endpoints are unchanged keeps its monitor; a new or
// changed one gets a new monitor (and its pools are made on first use);
// sessions already running keep the shard they started with. The ring
// and tables come with SetMap, which the node calls first.
func (s *Server) SetShards(shards []config.Shard) error {
	cfg := s.cfg.Load()
	old := map[string]*shardRT{}
	for _, rt := range s.shardList() {
		old[rt.name] = rt
	}
	next := make([]*shardRT, 0, len(shards))
	var started []*shardRT
	for _, sh := range shards {
		if rt, ok := old[sh.Name]; ok && rt.primary == sh.Primary && slices.Equal(rt.replicas, sh.Replicas) {
			next = append(next, rt)
			delete(old, sh.Name)
			continue
		}
		rt, err := newShardRT(*cfg, sh, s.metrics, s.log)
		if err != nil {
			for _, r := range started {
				r.close()
			}
			return err
		}
		next = append(next, rt)
		started = append(started, rt)
	}
	// Publish and read the serving context together with Serve, so that
	// every new monitor is started exactly once, by one of the two.
	s.mu.Lock()
	ctx := s.serveCtx
	s.shardsPtr.Store(&next)
	s.mu.Unlock()
	if ctx != nil {
		for _, rt := range started {
			rt.start(ctx)
		}
	}
	for _, rt := range old {
		rt.close()
	}
	s.log.Info("following the shard map", "shards", len(next), "new_or_changed", len(started))
	if len(next) > 0 {
		s.awaitMap.Store(false)
	}
	return nil
}

// closeIfIdle ends a session that holds no backend (between transactions).
// A parked one is driven again, to end when its connection closes.
func (s *session) closeIfIdle() {
	s.mu.Lock()
	idle := s.sc == nil && !s.busy
	parked := s.unparkLocked()
	if idle {
		s.out = wire.AppendError(s.out, wire.Fatalf(wire.CodeAdminShutdown, "terminating connection due to administrator command"))
	}
	s.mu.Unlock()
	if idle {
		go s.closeAfterFlush()
	}
	if parked {
		go s.srv.drive(s)
	}
}

// ShuttingDown reports whether Shutdown has begun.
func (s *Server) ShuttingDown() bool { return s.closing.Load() }
