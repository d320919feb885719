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
// re-parsed when the backend last parsed someone else's. Session settings
// (startup parameters and SET) are kept per session and replayed with
// RESET ALL; SET ... when the backend's settings differ. LISTEN, temporary
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
// round trip). A read on a replica is retryable while nothing the client can
// act on has been answered: its answers are held back in the output buffer,
// and if the replica refuses it (25006, 40001, 57P0x) or dies, the held
// answers are dropped and the batch is re-sent elsewhere by a retry
// goroutine that takes the session's composer lock (cmu) like the session
// loop does.
package proxy
