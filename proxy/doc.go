// Package proxy serves client sessions: it accepts connections (through
// wire), authenticates them, and relays their messages to backend
// connections taken from pools.
//
// # Goroutines
//
// Each client session has one goroutine, the session loop, that reads the
// client's messages, decides what to send, and writes to the backend. Each
// backend connection has its own reader goroutine (owned by pool.Conn) that
// hands the backend's messages to the session holding it, which writes them
// to the client. Neither direction ever waits for the other while holding a
// lock, so a client that pipelines more than the socket buffers hold cannot
// deadlock the relay.
//
// An idle client costs no goroutine and no buffer (park.go): a session that
// holds no backend and received nothing for half a second to a second is parked in
// an epoll set (internal/parking) with its read buffer back in a pool, and
// its loop runs again, on a new goroutine, when the client sends something
// or hangs up. TLS sessions keep their goroutine. When a wave of clients
// went idle or left, the sweeper hands the freed memory back to the
// operating system at once (releaser).
//
// # The response queue
//
// For every message sent to the backend that will be answered, the session
// pushes an entry on a FIFO queue: Parse, Bind, Describe, Execute, Close,
// Sync, Query, FunctionCall, and the session's own internal queries. A
// backend message is matched against the entry at the head: it is passed on,
// swallowed (answers to messages pgshard injected), or completes the entry.
// An entry may also carry a synthesized answer (ParseComplete for a statement
// the backend already has, CloseComplete, an error) that is emitted when the
// entry reaches the head, so answers reach the client in the order it asked.
// After an ErrorResponse in the extended protocol the backend skips to the
// next Sync; the queue drops the same entries.
//
// # Transaction pooling
//
// A backend returns to its pool when the queue is empty, the last
// ReadyForQuery said idle, every extended-protocol message has been followed
// by a Sync, and the session is not pinned. Named prepared statements are
// interned by (query, parameter types) into pgshard-wide names
// ("pgshard_<n>"); each backend remembers which of them it has, so a Bind on
// a backend that lacks the statement gets a Parse injected in front of it
// (its ParseComplete swallowed), and a client's Parse of a statement the
// backend has is answered without a round trip. The unnamed statement is
// re-parsed when the backend last parsed someone else's or ran a simple
// Query since (which drops it). Session settings (startup parameters and
// SET) are kept per session and replayed with RESET ALL; SET ... when the
// backend's settings differ (startup parameters through set_config, as
// PostgreSQL applies them). A SET inside a transaction is kept only if the
// transaction commits: settle follows COMMIT, ROLLBACK and savepoints
// statement by statement. LISTEN, temporary
// tables, session advisory locks, WITH HOLD cursors and SQL PREPARE pin the
// session to its backend until it ends (see router.Inspect).
//
// # Read/write splitting
//
// When the session holds no backend, the next batch is routed before a
// backend is taken: a simple Query by itself, an extended-protocol batch as a
// whole (the session loop reads ahead up to its Sync, so that a batch mixing
// reads and writes goes to the primary). A batch is a read when
// router.Classifier proves every statement in it a read; it then goes to a
// replica chosen by replication.Monitor.Pick: healthy, within the lag
// bounds, and, for a session that wrote, past the primary's WAL position
// sampled after that write (read-your-writes; the watermark comes from the
// monitor's samples of pg_current_wal_insert_lsn(), so writes cost no extra
// round trip).
//
// # Sharding
//
// With several shards on the ring, each statement is planned by
// router.Planner: a batch goes to its key's shard (target.shard); a
// statement spanning shards runs over one leg (a backend outside the
// session's queue) per shard and its answers are merged (spread.go, with
// package merge), written atomically by two-phase commit, or split and
// gathered for COPY; a transaction keeps a leg on each other shard it
// touches and commits them all by two-phase commit (txlegs.go). See
// DESIGN.md.
//
// # Re-sending a batch
//
// A batch sent on a backend attached for it while the session was idle is
// kept (gbuf) and its answers are held back in the output buffer until the
// backend answers it (retryState). If the backend instead ends the session
// first (a FATAL: terminated by an administrator while it sat in the pool,
// server shutdown), the batch never ran there: pgshard swallows the FATAL
// and re-sends the batch on a fresh backend, so a client never sees the end
// of a backend it did not own. A read on a replica stays re-sendable longer,
// until rows flow: if the replica refuses it (25006, 40001, 57P0x) it goes
// to the primary, if the replica dies, elsewhere. The re-send runs on a
// goroutine that takes the session's composer lock (cmu) like the session
// loop; while it is pending the session loop composes nothing (the message
// at hand is part of the batch being re-sent) and attaches nothing.
//
// # Statements and schema changes
//
// A statement definition is shared by every client that prepares the same
// text, but only until the schema may have changed: DDL through pgshard
// (CREATE, ALTER, DROP, COMMENT) starts new definitions, and a backend that
// reports a stale plan (0A000 "cached plan must not change result type",
// XX000 "cache lookup failed") retires the one it ran. The result
// description a client was given for a statement is remembered; preparing
// that statement on another backend then costs one round trip (Parse,
// Describe, Flush) to compare descriptions before the client's Bind is
// sent, and a difference raises 0A000 as PostgreSQL would on the client's
// own backend, never rows decoded with the wrong description.
//
// # Cancel requests
//
// A CancelRequest is forwarded only while the client's query is outstanding,
// and the session keeps that backend until PostgreSQL has handled the
// request (it closes the cancel connection after signalling the backend).
// A signal that arrives after the query ended is discarded by PostgreSQL
// when the backend reads its next command, so a cancel never reaches
// another client's query.
package proxy
