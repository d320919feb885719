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
// after the Merger reports the end (LIMIT stops reading early). Hash
// grouping reads the Sources one after the other; a shard not being read
// just waits on its full socket buffer, so nothing deadlocks.
//
// # How rows are merged
//
// Without aggregates or group keys the merge streams with one row per
// shard in memory: the shards' results are concatenated in shard order,
// or, with ORDER BY, merged with a binary heap (each shard must return its
// rows in that order; ties go to the lower shard). OFFSET is skipped and
// LIMIT (Spec.HasLimit and Spec.Limit; the zero Spec has none) stops
// the merge; the shards get LIMIT limit+offset. With Spec.WithTies
// (FETCH FIRST … WITH TIES) the rows equal to the limit-th in the ORDER BY
// keys follow it; the shards fetch limit+offset rows with ties. With
// Spec.DistinctOn (SELECT DISTINCT ON, whose expressions lead the ORDER
// BY) a row equal to the one before it in those keys is dropped.
//
// With aggregates or group keys (GROUP BY; DISTINCT is GROUP BY on every
// column) there are two ways:
//
//   - Spec.SortedInput: ORDER BY starts with every group key and the
//     shards return their groups in that order. The heap merges them, a
//     group ends when a row with other keys arrives, and only that group
//     is in memory; LIMIT stops reading early.
//   - Otherwise every row is read first into a hash table keyed by the
//     canonical form of the group keys (1.0 and 1.00 are one numeric
//     group, -0 and 0 one float group, NaN one group, bpchar ignores
//     trailing spaces), bounded by Spec.MaxGroups and Spec.MaxBytes (an
//     estimate of the groups' memory): beyond either Next fails
//     with ErrTooManyGroups, SQLSTATE 54000 (program_limit_exceeded),
//     rather than use unbounded memory. Then HAVING filters, ORDER BY
//     sorts in memory and OFFSET/LIMIT apply.
//
// Either way the shards get no LIMIT (a group may span shards), HAVING is
// evaluated here on the merged values, and aggregates without GROUP BY
// give one row even when no shard has a row (count 0, others NULL), as
// PostgreSQL does. A group's key is shown as its first row had it (as in
// PostgreSQL, which of 1.0 and 1.00 a group shows is not defined).
//
// HAVING is a small tree: Col (a merged column, hidden ones included),
// Const (typed, or Type 0 for a literal as written: 10 is int4, 1.5
// numeric, 'b' takes the other side's type), Cmp, And, Or, Not, IsNull and
// Arith (+ - * /) with PostgreSQL's types: integer arithmetic of the wider
// width with overflow errors (22003) and truncating division, exact numeric
// with numeric_div's scale, float8 when a float is involved; division by
// zero is 22012.
//
// Aggregates keep PostgreSQL's result types, which the shards' sums already
// have: count is int8; sum is int8 for int2/int4, numeric for int8 and
// numeric (exact, scale is the largest scale), float4/float8 for floats;
// min/max keep the type (the planner sends bool_and and every as Min, bool_or
// as Max: booleans order false < true); avg is sum/count, numeric for integer and numeric
// arguments with numeric division's rounding and display scale
// (select_div_scale: avg of 1 and 2 is 1.5000000000000000), float8 for
// float8 (the shards send sum(x::float8) for real). Overflow is 22003,
// as in PostgreSQL. Results are encoded in the client's format exactly as
// PostgreSQL encodes them (numeric_send's digits and dscale, float8out's
// shortest digits, checked against a server in the tests).
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
// shards for the client's formats), sums or averages of other types (and
// averages of real summed as real), and SortedInput whose ORDER BY does
// not start with the group keys. At run time: date/time text in a
// DateStyle other than ISO cannot be compared (0A000), a shard row that
// does not decode is XX000.
// count(DISTINCT x) is CountDistinct over x's values (the shards group by x
// too), or Count when x includes the shard key (the shards' counts add up
// exactly). Not handled here, so the planner must refuse them: other
// DISTINCT aggregates, DISTINCT over aggregated rows, other
// aggregates, window functions, text ordering under a non-C collation,
// nondeterministic collations, and types other than those listed above
// (interval, time, money, json, arrays, ...) as keys or aggregates; such
// types pass through as plain columns.
//
// Float sums and averages are printed for the session's
// extra_float_digits (Spec.ExtraFloatDigits; the proxy tracks SET). They
// may differ from one server's in the last bit because the order of
// addition differs, as with PostgreSQL's own parallel aggregation (the
// tests use exactly representable values). A NaN's bits in binary output
// follow the arithmetic that made it, as in PostgreSQL on x86-64. Table
// OIDs in the RowDescription are the first shard's (each shard's table
// has its own OID). Date/time text must be in DateStyle ISO.
//
// CombineTags adds the command tags of a statement run on every shard
// ("UPDATE n", "DELETE n", "INSERT 0 n", ...).
package merge
