// Package merge combines the results of one query scattered to several
// shards into exactly the result one PostgreSQL would return, or refuses
// with SQLSTATE 0A000. It does no I/O: the proxy feeds it rows.
//
// # API
//
// The planner rewrites a statement for the shards and describes the merge
// in a Spec: the shards' RowDescription (Input), the merged columns
// (Columns: Value, GroupKey, Count, Sum, Min, Max or Avg, each from an
// input column, optionally Hidden), whether the query is Grouped, the
// ORDER BY keys, LIMIT/OFFSET, a HAVING expression (Col, Const, Cmp, And,
// Or, Not, IsNull, Arith) and MaxGroups. New checks the Spec and returns a
// Merger over one Source per shard:
//
//	m, err := merge.New(spec, sources)  // 0A000 if it cannot be exact
//	send(m.RowDescription())
//	for {
//		row, ok, err := m.Next()      // pull: reads shards only as needed
//		if err != nil { ... }         // *wire.Error with its SQLSTATE
//		if !ok { break }
//		send(&pgproto3.DataRow{Values: row})
//	}
//	send(&pgproto3.CommandComplete{CommandTag: m.CommandTag()})
//
// Source is pull-based: Next returns a shard's next row, valid until the
// next call on that Source. Backpressure is natural: the Merger reads a
// shard only when the client takes a row that needs it. The Merger starts
// no goroutine; the caller owns the Sources and drains or cancels them
// after the Merger reports the end (LIMIT stops reading early).
//
// # How rows are merged
//
// Without aggregates or group keys the merge streams with one row per
// shard in memory: the shards' results are concatenated in shard order,
// or, with ORDER BY, merged with a binary heap (each shard must return its
// rows in that order; ties go to the lower shard). OFFSET is skipped and
// LIMIT stops the merge; the shards get LIMIT limit+offset.
//
// With aggregates or group keys every row is read first into a hash table
// keyed by the canonical form of the group keys (1.0 and 1.00 are one
// numeric group, -0 and 0 one float group, bpchar ignores trailing
// spaces), bounded by Spec.MaxGroups: beyond it Next fails with
// ErrTooManyGroups, SQLSTATE 54000 (program_limit_exceeded), rather than
// use unbounded memory. Then the aggregates are finished, HAVING filters,
// ORDER BY sorts in memory, and OFFSET/LIMIT apply. Aggregates without
// GROUP BY give one row even when no shard has a row (count 0, others
// NULL), as PostgreSQL does.
//
// Aggregates keep PostgreSQL's result types, which the shards' sums already
// have: count is int8; sum is int8 for int2/int4, numeric for int8 and
// numeric (exact, scale is the largest scale), float4/float8 for floats;
// min/max keep the type; avg is sum/count, numeric for integer and numeric
// arguments with numeric division's rounding and display scale
// (select_div_scale: avg of 1 and 2 is 1.5000000000000000), float8 for
// floats. Overflow is 22003, as in PostgreSQL.
//
// # Comparison
//
// Values compare as PostgreSQL's default btree operators do, in text and
// binary format: int2/int4/int8, numeric (exact decimals; NaN above
// +Infinity), float4/float8 (NaN above everything and equal to itself,
// -0 = 0), bool, date, timestamp, timestamptz (text only in DateStyle ISO;
// ±infinity and BC dates), uuid, bytea (hex or escape text), and text,
// varchar, name and bpchar in byte order only. Orderable says whether a
// type and collation can be ordered here; the planner refuses ORDER BY,
// min and max on anything else.
//
// # Refused or assumed
//
// New refuses (0A000): unknown types in keys or aggregates, plain columns
// beside aggregates, HAVING without aggregation, Value/GroupKey/Min/Max
// columns whose shard format differs from the client's (the proxy asks the
// shards for the client's formats), and sums or averages of other types.
// Not handled here, so the planner must refuse them: count(DISTINCT x) and
// DISTINCT aggregates unless x includes the shard key (then Count adds the
// shards' counts exactly), ordered-set and other aggregates, window
// functions, text ordering under a non-C collation, and nondeterministic
// collations. Float text output assumes extra_float_digits > 0 (the
// default since PostgreSQL 12); float sums may differ from one server's in
// the last bit because addition order differs, as with PostgreSQL's own
// parallel aggregation. Table OIDs in the RowDescription are the first
// shard's.
//
// CombineTags adds the command tags of a statement run on every shard
// ("UPDATE n", "DELETE n", "INSERT 0 n", ...).
package merge
