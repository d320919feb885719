package merge

import (
	"github.com/jackc/pgx/v5/pgproto3"
)

// Kind says how one output column is computed from the shards' rows.
type Kind uint8

const (
	// Value passes the input column through (no aggregation anywhere).
	Value Kind = iota
	// GroupKey is a GROUP BY key (or a DISTINCT column): rows from all
	// shards with equal keys form one group.
	GroupKey
	// Count adds the shards' count(x) or count(*) (int8). It also serves
	// count(DISTINCT x) when the planner proves that equal values of x
	// never live on two shards (x includes the shard key).
	Count
	// Sum adds the shards' sums. The input is the shards' sum column, so
	// its type is already PostgreSQL's result type: int8 for
	// sum(int2/int4), numeric for sum(int8/numeric), float4, float8.
	Sum
	// Min and Max keep the smallest or largest of the shards' values; the
	// type is kept.
	Min
	Max
	// Avg divides the added shards' sums (column Arg: sum(x), or
	// sum(x::float8) for float4 x) by their added counts (column Arg2:
	// count(x)). The result is numeric for integer and numeric sums (with
	// numeric division's scale, as avg does) and float8 for float8 sums;
	// a float4 sum is refused.
	Avg
	// CountDistinct counts the distinct non-NULL values of the input
	// column x over all shards (int8): count(DISTINCT x). The shards send
	// x itself, grouped by it as well (one row per value and group on each
	// shard); equal values are recognized as the group keys are (numeric
	// 1.0 = 1.00, float -0 = 0). The other aggregates of such a query
	// still add up: they are partial aggregates over finer groups.
	CountDistinct
)

var kindNames = [...]string{"value", "group key", "count", "sum", "min", "max", "avg", "count distinct"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "unknown"
}

func (k Kind) aggregate() bool { return k >= Count }

// Column is one column of the merged result, before hidden columns are
// dropped. ORDER BY and HAVING refer to columns by their index in
// Spec.Columns.
type Column struct {
	Kind Kind
	// Arg is the index of the input column (in Spec.Input) the column
	// is computed from; Arg2 is Avg's count column.
	Arg, Arg2 int
	// Name is the name the client sees; "" keeps the input column's name.
	Name string
	// Format is the format the client asked for (TextFormat or
	// BinaryFormat). For Value, GroupKey, Min and Max it must equal the
	// input column's format: the proxy asks the shards for the client's
	// formats and the bytes pass through unchanged. Count, Sum and Avg
	// accept either input format.
	Format int16
	// Hidden columns are computed (for ORDER BY or HAVING) but not sent.
	Hidden bool
}

// SortKey is one ORDER BY key.
type SortKey struct {
	Column     int // index into Spec.Columns
	Desc       bool
	NullsFirst bool // PostgreSQL's default is NullsFirst == Desc; the planner says it explicitly
}

// DefaultMaxGroups bounds the groups (and the rows sorted after grouping)
// held in memory when Spec.MaxGroups is 0.
const DefaultMaxGroups = 1 << 20

// DefaultMaxBytes bounds the memory held by groups when Spec.MaxBytes is 0.
const DefaultMaxBytes = 128 << 20

// Spec describes how to merge the shards' results of one rewritten query.
// The planner fills it; New checks it.
type Spec struct {
	// Input is the shards' RowDescription (every shard sends the same
	// shape), including the formats the shards send in.
	Input []pgproto3.FieldDescription
	// Columns are the merged result's columns, hidden ones included.
	Columns []Column
	// Grouped says the query has GROUP BY (or DISTINCT, written as
	// GroupKey columns): no input gives no rows. Aggregates without it
	// give exactly one row, also when no shard has a row (count 0, the
	// others NULL). A GroupKey column implies Grouped.
	Grouped bool
	// OrderBy is applied after grouping and HAVING. Without aggregation
	// every shard must return its rows sorted by the same keys (the
	// rewritten query keeps the ORDER BY) and the merge streams.
	OrderBy []SortKey
	// SortedInput says, for a grouped query, that OrderBy starts with
	// all group keys (in any order and directions) and every shard
	// returns its groups sorted by those keys: grouping then streams with
	// one group in memory instead of a hash table, and LIMIT stops
	// reading early. Without it the shards' order does not matter.
	SortedInput bool
	// Limit (when HasLimit; LIMIT NULL and LIMIT ALL have none) and
	// Offset apply after ORDER BY. Without aggregation the shards get
	// LIMIT Limit+Offset and no OFFSET; with aggregation they get neither
	// (a group may span shards). Negative values are PostgreSQL's errors
	// 2201W and 2201X.
	HasLimit      bool
	Limit, Offset int64
	// DistinctOn (SELECT DISTINCT ON, streaming only): rows equal to the
	// row before them in the first DistinctOn OrderBy keys are dropped, so
	// each value keeps its first row in ORDER BY order. PostgreSQL makes
	// the DISTINCT ON expressions the leading ORDER BY keys; every shard
	// runs the same DISTINCT ON, and the merged order puts each value's
	// first row across shards first.
	DistinctOn int
	// WithTies (FETCH FIRST … WITH TIES, with HasLimit): the rows after
	// the Limit-th that equal it in the OrderBy keys follow it. The shards
	// get FETCH FIRST Limit+Offset ROWS WITH TIES: a row of the merged
	// answer has fewer than Limit+Offset rows before it on its own shard,
	// or ties there with the last one returned.
	WithTies bool
	// Having filters groups after the merge; nil keeps all.
	Having Expr
	// MaxGroups bounds the groups held in memory (0: DefaultMaxGroups).
	// Beyond it Next fails with ErrTooManyGroups (SQLSTATE 54000).
	MaxGroups int
	// MaxBytes bounds the memory the groups hold (an estimate: keys, min
	// and max values, accumulators; 0: DefaultMaxBytes), also an
	// ErrTooManyGroups beyond it.
	MaxBytes int64
	// ExtraFloatDigits is the session's extra_float_digits, which shapes
	// the text of float sums and averages: nil means PostgreSQL's default
	// (1: shortest exact digits); 0 or less gives 15+n significant digits
	// (6+n for real), as PostgreSQL does.
	ExtraFloatDigits *int
}

func (s *Spec) groupKeys() int {
	n := 0
	for _, c := range s.Columns {
		if c.Kind == GroupKey {
			n++
		}
	}
	return n
}

func (s *Spec) aggregated() bool {
	if s.Grouped {
		return true
	}
	for _, c := range s.Columns {
		if c.Kind != Value {
			return true
		}
	}
	return false
}

// check validates the spec and returns the type of each column as the
// client sees it.
func (s *Spec) check() ([]colType, error) {
	agg := s.aggregated()
	types := make([]colType, len(s.Columns))
	argOK := func(i int) bool { return i >= 0 && i < len(s.Input) }
	groupKeys := 0
	for i, c := range s.Columns {
		if !argOK(c.Arg) {
			return nil, unsupported("merge: column %d refers to input column %d of %d", i, c.Arg, len(s.Input))
		}
		if c.Format != TextFormat && c.Format != BinaryFormat {
			return nil, unsupported("merge: column %d: unknown format %d", i, c.Format)
		}
		in := s.Input[c.Arg]
		t := colType{oid: in.DataTypeOID, format: c.Format}
		switch c.Kind {
		case Value, GroupKey, Min, Max:
			if in.Format != c.Format {
				return nil, unsupported("merge: column %d: shards must send the client's format", i)
			}
			if c.Kind == Value && agg {
				return nil, unsupported("merge: column %d is neither grouped nor aggregated", i)
			}
			if c.Kind != Value && !supported(in.DataTypeOID) {
				return nil, unsupported("merge: %s of type %d cannot be merged", c.Kind, in.DataTypeOID)
			}
			if c.Kind == GroupKey {
				groupKeys++
			}
		case Count:
			if in.DataTypeOID != OIDInt8 {
				return nil, unsupported("merge: count column %d is not bigint", i)
			}
		case Sum:
			switch in.DataTypeOID {
			case OIDInt8, OIDNumeric, OIDFloat4, OIDFloat8:
			default:
				return nil, unsupported("merge: sum of type %d cannot be merged", in.DataTypeOID)
			}
		case CountDistinct:
			if !Groupable(in.DataTypeOID) {
				return nil, unsupported("merge: count(DISTINCT …) of type %d cannot be merged", in.DataTypeOID)
			}
			t.oid = OIDInt8
		case Avg:
			if !argOK(c.Arg2) || s.Input[c.Arg2].DataTypeOID != OIDInt8 {
				return nil, unsupported("merge: avg column %d needs a bigint count column", i)
			}
			switch in.DataTypeOID {
			case OIDInt8, OIDNumeric:
				t.oid = OIDNumeric
			case OIDFloat8:
				t.oid = OIDFloat8
			case OIDFloat4:
				// avg(real) adds in double precision: the shards must
				// send sum(x::float8), or the sum is rounded to real.
				return nil, unsupported("merge: avg of real needs the shards' sum in double precision")
			default:
				return nil, unsupported("merge: avg of type %d cannot be merged", in.DataTypeOID)
			}
		default:
			return nil, unsupported("merge: column %d: unknown kind %d", i, c.Kind)
		}
		types[i] = t
	}
	if s.Grouped && groupKeys == 0 {
		return nil, unsupported("merge: GROUP BY without group key columns")
	}
	if s.SortedInput {
		if groupKeys == 0 || len(s.OrderBy) < groupKeys {
			return nil, unsupported("merge: sorted input needs ORDER BY starting with every group key")
		}
		seen := map[int]bool{}
		for _, k := range s.OrderBy[:groupKeys] {
			if k.Column < 0 || k.Column >= len(s.Columns) || s.Columns[k.Column].Kind != GroupKey || seen[k.Column] {
				return nil, unsupported("merge: sorted input needs ORDER BY starting with every group key")
			}
			seen[k.Column] = true
		}
	}
	if s.Having != nil {
		if !agg {
			return nil, unsupported("merge: HAVING without aggregation")
		}
		if err := checkExpr(s.Having, types); err != nil {
			return nil, err
		}
	}
	for _, k := range s.OrderBy {
		if k.Column < 0 || k.Column >= len(types) {
			return nil, unsupported("merge: ORDER BY refers to column %d of %d", k.Column, len(types))
		}
		if !supported(types[k.Column].oid) {
			return nil, unsupported("merge: ORDER BY on type %d cannot be merged", types[k.Column].oid)
		}
	}
	if s.HasLimit && s.Limit < 0 {
		return nil, errorf(CodeInvalidRowCountInLimit, nil, "LIMIT must not be negative")
	}
	if s.DistinctOn < 0 || s.DistinctOn > len(s.OrderBy) || s.DistinctOn > 0 && s.aggregated() {
		return nil, unsupported("merge: DISTINCT ON over %d of %d ORDER BY keys (aggregated %v)", s.DistinctOn, len(s.OrderBy), s.aggregated())
	}
	if s.WithTies && len(s.OrderBy) == 0 {
		return nil, unsupported("merge: WITH TIES without ORDER BY")
	}
	if s.Offset < 0 {
		return nil, errorf(CodeInvalidRowCountInOffset, nil, "OFFSET must not be negative")
	}
	return types, nil
}

// rowDescription is what one PostgreSQL would send: the shards' fields
// (names, types, typmods), renamed, with avg's result type, in the
// client's formats, hidden columns dropped.
func (s *Spec) rowDescription(types []colType) *pgproto3.RowDescription {
	rd := &pgproto3.RowDescription{}
	for i, c := range s.Columns {
		if c.Hidden {
			continue
		}
		f := s.Input[c.Arg]
		f.Name = append([]byte(nil), f.Name...)
		if c.Name != "" {
			f.Name = []byte(c.Name)
		}
		f.Format = c.Format
		if c.Kind == Avg || c.Kind == CountDistinct {
			f.TableOID, f.TableAttributeNumber, f.TypeModifier = 0, 0, -1
			f.DataTypeOID = types[i].oid
			f.DataTypeSize = -1
			if f.DataTypeOID == OIDFloat8 || f.DataTypeOID == OIDInt8 {
				f.DataTypeSize = 8
			}
		}
		rd.Fields = append(rd.Fields, f)
	}
	return rd
}
