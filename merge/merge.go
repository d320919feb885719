package merge

import (
	"math"
	"sort"
	"strconv"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Source is one shard's result, read one row at a time. Next returns the
// next row's values (nil for NULL) in the input formats, ok false at the
// end, or the error that ended the result. The row need only stay valid
// until the next call to Next on the same Source: the merger copies what it
// keeps. Declared here, by its consumer; the proxy adapts a backend leg to
// it (and a pgconn.ResultReader is one line away).
type Source interface {
	Next() (row [][]byte, ok bool, err error)
}

// Merger combines the rows of several Sources into the result one
// PostgreSQL would return. It is pull-based: each call to Next reads only
// the rows it needs, so a slow client slows the reads from the shards and
// memory stays bounded (one row per shard when streaming). A Merger is
// not safe for concurrent use.
type Merger struct {
	spec  Spec
	types []colType // per Spec.Columns, as the client sees them
	in    []colType // per Spec.Input, as the shards send them
	desc  *pgproto3.RowDescription
	srcs  []Source
	agg   bool
	max   int
	maxB  int64
	efd   int       // extra_float_digits
	bytes int64     // estimated memory held by groups
	keys  []sortKey // ORDER BY over merged rows (after grouping)
	// inKeys order the input rows for the heap: ORDER BY when streaming,
	// the group keys when grouping sorted input.
	inKeys   []sortKey
	sortedIn bool // grouping streams over input sorted by the group keys

	// streaming
	heap    []cursor
	started bool
	advance bool // the heap's top row was returned: read its successor first
	concat  int
	cmpErr  error

	// aggregated
	rows [][][]byte
	pos  int
	cur  *group // sortedIn: the group being read

	skipped, sent int64
	key           []byte   // CountDistinct: a value's key being built
	tie           [][]byte // WithTies: the Limit-th row sent
	prev          [][]byte // DistinctOn: the last row kept
	out           [][]byte
	done          bool
	err           error
}

type cursor struct {
	src int
	row [][]byte
}

// sortKey is a SortKey resolved to the row it compares: input rows when
// streaming, merged rows when aggregating.
type sortKey struct {
	idx        int
	t          colType
	desc       bool
	nullsFirst bool
}

// New checks spec and returns a Merger over sources (one per shard, in
// shard order). A spec this package cannot answer exactly gets an error
// wrapping ErrUnsupported (SQLSTATE 0A000).
func New(spec Spec, sources []Source) (*Merger, error) {
	types, err := spec.check()
	if err != nil {
		return nil, err
	}
	if spec.groupKeys() > 0 {
		spec.Grouped = true // as documented: a group key implies GROUP BY
	}
	m := &Merger{spec: spec, types: types, srcs: sources, agg: spec.aggregated(), max: spec.MaxGroups}
	if m.max <= 0 {
		m.max = DefaultMaxGroups
	}
	m.efd = 1
	if spec.ExtraFloatDigits != nil {
		m.efd = *spec.ExtraFloatDigits
	}
	if m.maxB = spec.MaxBytes; m.maxB <= 0 {
		m.maxB = DefaultMaxBytes
	}
	for _, f := range spec.Input {
		m.in = append(m.in, colType{oid: f.DataTypeOID, format: f.Format})
	}
	for _, k := range spec.OrderBy {
		sk := sortKey{idx: k.Column, t: types[k.Column], desc: k.Desc, nullsFirst: k.NullsFirst}
		m.keys = append(m.keys, sk)
		sk.idx = spec.Columns[k.Column].Arg
		m.inKeys = append(m.inKeys, sk)
	}
	if m.agg {
		m.inKeys = nil
		if spec.SortedInput {
			m.sortedIn = true
			m.inKeys = m.inKeys[:0]
			for _, k := range spec.OrderBy[:spec.groupKeys()] {
				sk := sortKey{idx: spec.Columns[k.Column].Arg, t: types[k.Column], desc: k.Desc, nullsFirst: k.NullsFirst}
				m.inKeys = append(m.inKeys, sk)
			}
		}
	}
	m.desc = spec.rowDescription(types)
	return m, nil
}

// RowDescription returns the description the client gets: the shards'
// fields renamed and retyped as one PostgreSQL would describe the
// original query, in the client's formats, hidden columns dropped.
func (m *Merger) RowDescription() *pgproto3.RowDescription { return m.desc }

// Rows returns the number of rows Next has returned.
func (m *Merger) Rows() int64 { return m.sent }

// CommandTag returns the tag to send after the last row: "SELECT n".
func (m *Merger) CommandTag() []byte {
	return strconv.AppendInt([]byte("SELECT "), m.sent, 10)
}

// Next returns the next merged row (nil values are NULL) in the client's
// formats, ok false after the last one, or an error, after which the
// Merger returns the same error. The row is valid until the next call.
// After ok false the Sources may still hold unread rows (LIMIT): the
// caller drains or cancels them.
func (m *Merger) Next() ([][]byte, bool, error) {
	if m.done {
		return nil, false, m.err
	}
	if m.spec.HasLimit && m.sent >= m.spec.Limit && (!m.spec.WithTies || m.tie == nil) {
		m.done = true
		return nil, false, nil
	}
	for {
		var row [][]byte
		var ok bool
		var err error
		switch {
		case m.sortedIn:
			row, ok, err = m.nextSortedGroup()
		case m.agg:
			row, ok, err = m.nextGroup()
		default:
			row, ok, err = m.pull()
		}
		if err != nil {
			m.done, m.err = true, err
			return nil, false, err
		}
		if !ok {
			m.done = true
			return nil, false, nil
		}
		if m.spec.DistinctOn > 0 {
			if m.prev != nil {
				c, err := compareRows(m.inKeys[:m.spec.DistinctOn], row, m.prev)
				if err != nil {
					m.done, m.err = true, err
					return nil, false, err
				}
				if c == 0 {
					continue
				}
			}
			m.prev = copyRow(m.prev, row)
		}
		if m.skipped < m.spec.Offset {
			m.skipped++
			continue
		}
		if m.spec.HasLimit && m.sent >= m.spec.Limit {
			// WITH TIES, past the limit: only rows equal to the last.
			if tied, err := m.tied(row); err != nil || !tied {
				m.done, m.err = true, err
				return nil, false, err
			}
		} else if m.spec.WithTies && m.sent+1 == m.spec.Limit {
			m.tie = copyRow(nil, row)
		}
		m.sent++
		return m.project(row), true, nil
	}
}

// copyRow copies row into dst's buffers (NULLs stay nil).
func copyRow(dst, row [][]byte) [][]byte {
	if len(dst) != len(row) {
		dst = make([][]byte, len(row))
	}
	for i, v := range row {
		if v == nil {
			dst[i] = nil
			continue
		}
		dst[i] = append(dst[i][:0], v...)
		if dst[i] == nil {
			dst[i] = []byte{} // '' is not NULL
		}
	}
	return dst
}

// tied reports whether row equals the Limit-th row in the ORDER BY keys:
// input rows when streaming, merged rows when grouped.
func (m *Merger) tied(row [][]byte) (bool, error) {
	keys := m.inKeys
	if m.agg {
		keys = m.keys
	}
	c, err := compareRows(keys, row, m.tie)
	return c == 0, err
}

// project drops hidden columns; a streaming row maps input columns.
func (m *Merger) project(row [][]byte) [][]byte {
	m.out = m.out[:0]
	for i, c := range m.spec.Columns {
		if c.Hidden {
			continue
		}
		if m.agg {
			m.out = append(m.out, row[i])
		} else {
			m.out = append(m.out, row[c.Arg])
		}
	}
	return m.out
}

func (m *Merger) read(src int) ([][]byte, bool, error) {
	row, ok, err := m.srcs[src].Next()
	if err != nil || !ok {
		return nil, false, err
	}
	if len(row) != len(m.spec.Input) {
		return nil, false, badInput("merge: shard %d sent %d columns, want %d", src, len(row), len(m.spec.Input))
	}
	return row, true, nil
}

// pull returns the next input row in merged order.
func (m *Merger) pull() ([][]byte, bool, error) {
	if len(m.inKeys) == 0 {
		for m.concat < len(m.srcs) {
			row, ok, err := m.read(m.concat)
			if err != nil {
				return nil, false, err
			}
			if ok {
				return row, true, nil
			}
			m.concat++
		}
		return nil, false, nil
	}
	if !m.started {
		m.started = true
		for i := range m.srcs {
			row, ok, err := m.read(i)
			if err != nil {
				return nil, false, err
			}
			if ok {
				m.heap = append(m.heap, cursor{src: i, row: row})
			}
		}
		for i := len(m.heap)/2 - 1; i >= 0; i-- {
			m.down(i)
		}
	} else if m.advance && len(m.heap) > 0 {
		row, ok, err := m.read(m.heap[0].src)
		if err != nil {
			return nil, false, err
		}
		if ok {
			m.heap[0].row = row
		} else {
			last := len(m.heap) - 1
			m.heap[0] = m.heap[last]
			m.heap = m.heap[:last]
		}
		m.down(0)
	}
	if m.cmpErr != nil {
		return nil, false, m.cmpErr
	}
	if len(m.heap) == 0 {
		return nil, false, nil
	}
	m.advance = true
	return m.heap[0].row, true, nil
}

func (m *Merger) less(a, b cursor) bool {
	c, err := compareRows(m.inKeys, a.row, b.row)
	if err != nil && m.cmpErr == nil {
		m.cmpErr = err
	}
	if c != 0 {
		return c < 0
	}
	return a.src < b.src // ties: shard order, so the merge is deterministic
}

func (m *Merger) down(i int) {
	h := m.heap
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		j := l
		if r := l + 1; r < len(h) && m.less(h[r], h[l]) {
			j = r
		}
		if !m.less(h[j], h[i]) {
			return
		}
		h[i], h[j] = h[j], h[i]
		i = j
	}
}

// compareRows orders two rows by keys.
func compareRows(keys []sortKey, a, b [][]byte) (int, error) {
	for _, k := range keys {
		x, y := a[k.idx], b[k.idx]
		switch {
		case x == nil && y == nil:
			continue
		case x == nil:
			if k.nullsFirst {
				return -1, nil
			}
			return 1, nil
		case y == nil:
			if k.nullsFirst {
				return 1, nil
			}
			return -1, nil
		}
		c, err := k.t.compare(x, y)
		if err != nil {
			return 0, err
		}
		if c != 0 {
			if k.desc {
				c = -c
			}
			return c, nil
		}
	}
	return 0, nil
}

// group is one GROUP BY group: the values kept (group keys, min, max)
// and the accumulators.
type group struct {
	vals  [][]byte
	acc   []acc
	sizes []int32 // len(vals[i]) as counted in Merger.bytes
}

// Estimated bytes of a group beyond its values (map entry, structs,
// slice headers, accumulators).
const (
	groupOverhead  = 128
	columnOverhead = 24 + 4 + 96
)

type acc struct {
	n     int64 // count, or avg's count
	i     int64 // sum of int8
	d     decimal
	f     float64
	valid bool // a non-NULL input was seen
	// CountDistinct: the values seen (as group keys are compared), and
	// the bytes they count in Merger.bytes.
	set      map[string]struct{}
	setBytes int64
}

// Estimated bytes of a value in a CountDistinct set beyond its key.
const setEntryOverhead = 48

// nextGroup aggregates all input on the first call, then returns the
// groups that pass HAVING, in ORDER BY order.
func (m *Merger) nextGroup() ([][]byte, bool, error) {
	if m.rows == nil {
		if err := m.aggregate(); err != nil {
			return nil, false, err
		}
	}
	if m.pos >= len(m.rows) {
		return nil, false, nil
	}
	row := m.rows[m.pos]
	m.rows[m.pos] = nil
	m.pos++
	return row, true, nil
}

func (m *Merger) aggregate() error {
	groups := map[string]*group{}
	var order []*group // first-seen order, for a deterministic result
	var key []byte
	for src := range m.srcs {
		for {
			row, ok, err := m.read(src)
			if err != nil {
				return err
			}
			if !ok {
				break
			}
			key = key[:0]
			for _, c := range m.spec.Columns {
				if c.Kind != GroupKey {
					continue
				}
				v := row[c.Arg]
				if v == nil {
					key = append(key, 0)
					continue
				}
				key = append(key, 1)
				if key, err = m.in[c.Arg].appendKey(key, v); err != nil {
					return err
				}
			}
			g := groups[string(key)]
			if g == nil {
				if len(groups) >= m.max {
					return errorf(CodeProgramLimitExceeded, ErrTooManyGroups,
						"merge: more than %d groups across shards (raise max_merge_groups or narrow the query)", m.max)
				}
				g = m.newGroup()
				for i, c := range m.spec.Columns {
					if c.Kind == GroupKey && row[c.Arg] != nil {
						g.vals[i] = append([]byte{}, row[c.Arg]...)
					}
				}
				groups[string(key)] = g
				order = append(order, g)
				m.bytes += int64(len(key)) + groupOverhead + int64(len(m.spec.Columns))*columnOverhead
			}
			if err := m.accumulate(g, row); err != nil {
				return err
			}
			for i, c := range m.spec.Columns {
				if c.Kind != Value && i < len(g.vals) {
					m.bytes += int64(len(g.vals[i])) - int64(g.sizes[i])
					g.sizes[i] = int32(len(g.vals[i]))
				}
			}
			if m.bytes > m.maxB {
				return errorf(CodeProgramLimitExceeded, ErrTooManyGroups,
					"merge: groups across shards need more than %d bytes (raise the limit or narrow the query)", m.maxB)
			}
		}
	}
	if len(order) == 0 && !m.spec.Grouped {
		order = append(order, m.newGroup())
	}
	m.rows = make([][][]byte, 0, len(order))
	for _, g := range order {
		row, err := m.finish(g)
		if err != nil {
			return err
		}
		if m.spec.Having != nil {
			v, err := evalBool(m.spec.Having, row, m.types)
			if err != nil {
				return err
			}
			if v.kind != vBool || !v.b {
				continue
			}
		}
		m.rows = append(m.rows, row)
	}
	if len(m.keys) > 0 {
		var err error
		sort.SliceStable(m.rows, func(i, j int) bool {
			c, e := compareRows(m.keys, m.rows[i], m.rows[j])
			if e != nil && err == nil {
				err = e
			}
			return c < 0
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// nextSortedGroup aggregates input sorted by the group keys: a group
// ends when a row with other keys arrives, so one group is in memory.
func (m *Merger) nextSortedGroup() ([][]byte, bool, error) {
	for {
		row, ok, err := m.pull()
		if err != nil {
			return nil, false, err
		}
		var done *group
		switch {
		case !ok:
			done, m.cur = m.cur, nil
			if done == nil {
				return nil, false, nil
			}
		case m.cur != nil:
			same, err := m.sameGroup(m.cur, row)
			if err != nil {
				return nil, false, err
			}
			if same {
				if err := m.accumulate(m.cur, row); err != nil {
					return nil, false, err
				}
				continue
			}
			done = m.cur
			fallthrough
		default:
			m.cur = m.newGroup()
			for i, c := range m.spec.Columns {
				if c.Kind == GroupKey && row[c.Arg] != nil {
					m.cur.vals[i] = append([]byte{}, row[c.Arg]...)
				}
			}
			if err := m.accumulate(m.cur, row); err != nil {
				return nil, false, err
			}
		}
		if done == nil {
			continue
		}
		out, err := m.finish(done)
		if err != nil {
			return nil, false, err
		}
		if m.spec.Having != nil {
			v, err := evalBool(m.spec.Having, out, m.types)
			if err != nil {
				return nil, false, err
			}
			if v.kind != vBool || !v.b {
				if !ok {
					return nil, false, nil
				}
				continue
			}
		}
		return out, true, nil
	}
}

// sameGroup reports whether row belongs to group g (equal keys, as
// PostgreSQL's equality says).
func (m *Merger) sameGroup(g *group, row [][]byte) (bool, error) {
	for i, c := range m.spec.Columns {
		if c.Kind != GroupKey {
			continue
		}
		a, b := g.vals[i], row[c.Arg]
		if a == nil || b == nil {
			if (a == nil) != (b == nil) {
				return false, nil
			}
			continue
		}
		n, err := m.types[i].compare(a, b)
		if err != nil || n != 0 {
			return false, err
		}
	}
	return true, nil
}

func (m *Merger) newGroup() *group {
	n := len(m.spec.Columns)
	return &group{vals: make([][]byte, n), acc: make([]acc, n), sizes: make([]int32, n)}
}

var errBigintRange = errorf(CodeNumericOutOfRange, ErrOutOfRange, "bigint out of range")

func addInt64(a, b int64) (int64, bool) {
	s := a + b
	if (s > a) != (b > 0) {
		return s, false
	}
	return s, true
}

func (m *Merger) accumulate(g *group, row [][]byte) error {
	for i, c := range m.spec.Columns {
		v := row[c.Arg]
		a := &g.acc[i]
		t := m.in[c.Arg]
		switch c.Kind {
		case CountDistinct:
			if v == nil {
				continue
			}
			key, err := t.appendKey(m.key[:0], v)
			if err != nil {
				return err
			}
			m.key = key
			if _, seen := a.set[string(key)]; seen {
				continue
			}
			if a.set == nil {
				a.set = map[string]struct{}{}
			}
			a.set[string(key)] = struct{}{}
			a.n++
			size := int64(len(key)) + setEntryOverhead
			a.setBytes += size
			if m.bytes += size; m.bytes > m.maxB {
				return errorf(CodeProgramLimitExceeded, ErrTooManyGroups,
					"merge: count(DISTINCT …) across shards needs more than %d bytes (raise the limit or narrow the query)", m.maxB)
			}
		case Count:
			if v == nil {
				continue
			}
			n, ok := t.int(v)
			if !ok {
				return badInput("merge: bad count")
			}
			if a.n, ok = addInt64(a.n, n); !ok {
				return errBigintRange
			}
		case Sum, Avg:
			if c.Kind == Avg {
				if cv := row[c.Arg2]; cv != nil {
					n, ok := m.in[c.Arg2].int(cv)
					if !ok {
						return badInput("merge: bad count")
					}
					if a.n, ok = addInt64(a.n, n); !ok {
						return errBigintRange
					}
				}
			}
			if v == nil {
				continue
			}
			if err := m.addSum(a, t, v, c.Kind == Avg); err != nil {
				return err
			}
		case Min, Max:
			if v == nil {
				continue
			}
			if g.vals[i] != nil {
				cmp, err := t.compare(v, g.vals[i])
				if err != nil {
					return err
				}
				if (c.Kind == Min && cmp >= 0) || (c.Kind == Max && cmp <= 0) {
					continue
				}
			}
			if g.vals[i] == nil {
				g.vals[i] = make([]byte, 0, len(v)) // non-nil: '' is not NULL
			}
			g.vals[i] = append(g.vals[i][:0], v...)
		}
	}
	return nil
}

// addSum adds one shard's sum. Integer sums of sum (not avg) stay int64
// with PostgreSQL's overflow error; avg sums integers exactly as numeric.
func (m *Merger) addSum(a *acc, t colType, v []byte, avg bool) error {
	switch t.oid {
	case OIDInt8:
		x, ok := t.int(v)
		if !ok {
			return badInput("merge: bad sum")
		}
		if avg {
			d := decimalFromInt(x)
			a.d = addDecimal(&a.d, &d)
			break
		}
		if a.i, ok = addInt64(a.i, x); !ok {
			return errBigintRange
		}
	case OIDNumeric:
		d, ok := t.numeric(v)
		if !ok {
			return badInput("merge: bad sum")
		}
		if !a.valid {
			a.d = d
		} else {
			a.d = addDecimal(&a.d, &d)
		}
	case OIDFloat4, OIDFloat8:
		x, ok := t.float(v)
		if !ok {
			return badInput("merge: bad sum")
		}
		old := a.f
		if !a.valid && !avg {
			a.f = x // sum has no initial value: sum of -0 is -0 (avg starts at 0)
		} else if t.oid == OIDFloat4 && !avg {
			a.f = float64(float32(a.f) + float32(x))
		} else {
			a.f += x
		}
		if math.IsInf(a.f, 0) && !math.IsInf(old, 0) && !math.IsInf(x, 0) {
			return errorf(CodeNumericOutOfRange, ErrOutOfRange, "value out of range: overflow") // float8pl
		}
	}
	a.valid = true
	return nil
}

// finish encodes a group's row in the client's formats.
func (m *Merger) finish(g *group) ([][]byte, error) {
	row := g.vals
	for i, c := range m.spec.Columns {
		a := &g.acc[i]
		f := c.Format
		switch c.Kind {
		case Count:
			row[i] = appendInt8(nil, a.n, f)
		case CountDistinct:
			row[i] = appendInt8(nil, a.n, f)
			m.bytes -= a.setBytes // the set goes with the group's accumulators
		case Sum:
			if !a.valid {
				continue
			}
			switch t := m.in[c.Arg].oid; t {
			case OIDInt8:
				row[i] = appendInt8(nil, a.i, f)
			case OIDNumeric:
				row[i] = appendNumeric(nil, &a.d, f)
			default:
				row[i] = appendFloat(nil, a.f, t, f, m.efd)
			}
		case Avg:
			if a.n == 0 || !a.valid {
				continue
			}
			if m.types[i].oid == OIDFloat8 {
				row[i] = appendFloat(nil, a.f/float64(a.n), OIDFloat8, f, m.efd)
				continue
			}
			n := decimalFromInt(a.n)
			q, err := divDecimal(&a.d, &n)
			if err != nil {
				return nil, err
			}
			row[i] = appendNumeric(nil, &q, f)
		}
	}
	g.acc = nil
	return row, nil
}
