// Package replication watches a shard's primary and streaming replicas and
// decides which replicas may serve reads: health, replication lag (bytes
// and time), load balancing, and read-your-writes watermarks.
//
// # Checks
//
// A Monitor keeps one connection per node and checks each node every
// Config.Interval on its own goroutine, each check bounded by
// Config.Timeout (connecting included), so a hung node never piles checks
// up and a dead one (refused connection, reset socket) is noticed at the
// next check. The primary check samples pg_current_wal_insert_lsn() and
// remembers when the query was sent; the replica check reads
// pg_is_in_recovery(), pg_last_wal_replay_lsn() and
// pg_last_wal_receive_lsn(). A replica that is not in recovery (promoted)
// is excluded.
//
// # WAL positions
//
// The primary's insert position is turned into the end of the last record
// inserted before comparing it with a replica's replay position: they
// differ by a page header when the insert position is at a page start
// (after pg_switch_wal, or when a record ends exactly at a page end), which
// would otherwise make an idle primary's replicas look behind forever. The
// Monitor keeps the last 64 distinct primary positions with the send times
// of the first and last check that saw each.
//
// # Lag
//
// LagBytes is the primary's position as of its last check sent before the
// replica's check, minus the replica's replay position (never negative).
// LagTime is how long before the replica's check the primary already had
// WAL that the replica had not replayed: zero when the replica had replayed
// everything the primary had, so an idle primary shows no lag however old
// its last transaction, and a burst of writes after a long idle period is
// not mistaken for a long lag (as now() - pg_last_xact_replay_timestamp()
// would be). Both are measured on the proxy's monotonic clock, so clock
// skew between hosts does not matter. When a replica is behind even the
// oldest kept position, the replica's own now() -
// pg_last_xact_replay_timestamp() is used if larger. Without any primary
// sample (the primary unreachable since Start) lag reads as zero: replicas
// keep serving reads on health alone.
//
// A replica is excluded when its last check failed, it was marked down by
// MarkDown (until a check that starts later succeeds), it is not in
// recovery, or its lag is beyond Config.MaxLagBytes or Config.MaxLagTime.
// It comes back by itself when its checks pass again.
//
// # Read-your-writes
//
// A session that wrote records wroteAt, the time its write's ReadyForQuery
// arrived. Its reads may go to a replica only when a primary check was sent
// after wroteAt and the replica has replayed that check's position (the
// earliest such check, see Monitor.Watermark). A check sent after the
// commit was acknowledged executes after the commit record was inserted,
// so that position is at or past the commit record's end, and a replica
// that has replayed it shows the commit. Until such a check exists the
// session reads from the primary; at the default interval that is at most
// 250ms plus a round trip after its write.
//
// # Hot path
//
// Eligible, Pick and Watermark read an immutable snapshot through an
// atomic pointer: no locks, no I/O and no allocation.
package replication
