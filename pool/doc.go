// Package pool keeps connections to PostgreSQL backends, one Pool per
// (server address, user, database).
//
// A connection is opened with pgconn (which does TLS and every
// authentication method), then hijacked: from then on pgshard relays raw
// protocol messages over it. Each Conn has one reader goroutine for its whole
// life, owned by the Conn and ended by Close. The reader hands every message
// to the Conn's current Handler (the client session that holds it). While the
// Conn sits idle in the pool it has no handler: a message arriving then is
// either an asynchronous notice (ignored) or the server going away (the Conn
// is dropped at once, so a dead backend is never handed out).
//
// Acquire takes the most recently used idle Conn (LIFO, so a few connections
// stay warm), dials a new one while the pool is below its size, and otherwise
// waits in a FIFO queue until a Conn is released or the wait timeout passes,
// which fails with SQLSTATE 53300. Idle connections beyond the idle timeout
// and connections beyond their maximum lifetime are closed by a janitor.
//
// The pool knows nothing of sessions or SQL: what a Conn has prepared or set
// is kept in its State, which only the current holder reads and writes.
package pool
