package shardmap

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strconv"
)

// The ring. See DESIGN.md in this directory for the placement algorithm.

// Token is one virtual node: the shard that owns the range of hashes ending
// at Pos (inclusive) and starting just after the previous token.
type Token struct {
	Pos   int64
	Shard string
}

// Ring is an immutable consistent-hash ring: tokens sorted by position, each
// owned by a shard. A hash belongs to the owner of the first token >= it,
// wrapping around to the first token past the largest one. A *Ring is never
// modified after construction, so it is safe for concurrent use and can be
// shared freely; AddShard and RemoveShard return new rings.
type Ring struct {
	pos    []int64  // strictly increasing
	owner  []string // owner[i] owns (pos[i-1], pos[i]], wrapping for i == 0
	shards []string // distinct owners, sorted
}

// Range is the set of hashes h with Start < h <= End, i.e. (Start, End].
//
// When Start < End the range is plain. When Start >= End it wraps around the
// end of the int64 space: it holds the hashes h > Start (up to MaxInt64) and
// the hashes h <= End (from MinInt64). Start == End denotes the whole ring (a
// ring with a single token has one such range). Note that MinInt64 belongs to
// a wrapping range or to a range ending exactly at it, never to a plain range
// starting below it.
type Range struct {
	Start, End int64
}

// Move is a range whose owner changes from From to To.
type Move struct {
	Range    Range
	From, To string
}

// Errors returned by ring operations.
var (
	// ErrInvalidRing reports tokens that do not form a ring: none at all,
	// unsorted or duplicate positions, or an empty shard name.
	ErrInvalidRing = errors.New("shardmap: invalid ring")
	// ErrShardExists reports adding a shard that already owns tokens.
	ErrShardExists = errors.New("shardmap: shard already on the ring")
	// ErrUnknownShard reports removing a shard that owns no tokens.
	ErrUnknownShard = errors.New("shardmap: shard not on the ring")
	// ErrLastShard reports removing the only shard of a ring.
	ErrLastShard = errors.New("shardmap: cannot remove the last shard")
)

// DefaultVnodes is the number of tokens InitialRing and AddShard are usually
// given: enough to spread a shard's share over several ranges, few enough to
// keep row filters and move lists short.
const DefaultVnodes = 16

// MaxVnodes bounds the vnodes argument of InitialRing and AddShard.
const MaxVnodes = 1024

// twoTo64 is the size of the hash space as a float64.
const twoTo64 = 18446744073709551616.0

// Contains reports whether h lies in the range.
func (g Range) Contains(h int64) bool {
	if g.Start < g.End {
		return h > g.Start && h <= g.End
	}
	return h > g.Start || h <= g.End
}

// Wraps reports whether the range wraps past MaxInt64 (or is the whole ring).
func (g Range) Wraps() bool { return g.Start >= g.End }

// Fraction is the share of the 2^64 hash values that the range holds.
func (g Range) Fraction() float64 {
	if g.Start == g.End {
		return 1
	}
	return float64(span(g.Start, g.End)) / twoTo64
}

// SQL returns a boolean SQL expression that is true exactly when expr (a
// bigint expression, e.g. "hashint8extended(user_id, 0)") lies in the range.
func (g Range) SQL(expr string) string {
	switch {
	case g.Start == g.End:
		return "true"
	case g.Start < g.End:
		return "(" + expr + " > " + sqlInt8(g.Start) + " AND " + expr + " <= " + sqlInt8(g.End) + ")"
	default:
		return "(" + expr + " > " + sqlInt8(g.Start) + " OR " + expr + " <= " + sqlInt8(g.End) + ")"
	}
}

// sqlInt8 formats v as a bigint literal. MinInt64 needs a quoted literal:
// PostgreSQL would parse -9223372036854775808 as numeric.
func sqlInt8(v int64) string {
	if v == math.MinInt64 {
		return "'-9223372036854775808'::bigint"
	}
	return strconv.FormatInt(v, 10)
}

func (g Range) String() string {
	return "(" + strconv.FormatInt(g.Start, 10) + ", " + strconv.FormatInt(g.End, 10) + "]"
}

// span is the number of hashes in (start, end], modulo 2^64: 0 when
// start == end, which callers treat as the whole ring.
func span(start, end int64) uint64 { return uint64(end) - uint64(start) }

// NewRing builds a ring from tokens sorted by strictly increasing position,
// each with a non-empty shard name. The slice is copied.
func NewRing(tokens []Token) (*Ring, error) {
	if len(tokens) == 0 {
		return nil, fmt.Errorf("new ring: no tokens: %w", ErrInvalidRing)
	}
	r := &Ring{pos: make([]int64, len(tokens)), owner: make([]string, len(tokens))}
	for i, t := range tokens {
		if t.Shard == "" {
			return nil, fmt.Errorf("new ring: token %d at %d has no shard: %w", i, t.Pos, ErrInvalidRing)
		}
		if i > 0 && t.Pos <= tokens[i-1].Pos {
			return nil, fmt.Errorf("new ring: token %d at %d not above %d: %w", i, t.Pos, tokens[i-1].Pos, ErrInvalidRing)
		}
		r.pos[i], r.owner[i] = t.Pos, t.Shard
	}
	r.shards = slices.Clone(r.owner)
	slices.Sort(r.shards)
	r.shards = slices.Compact(r.shards)
	return r, nil
}

// InitialRing returns the ring of a single shard with vnodes evenly spaced
// tokens (the last at MaxInt64). vnodes is clamped to [1, MaxVnodes]. It
// panics if shard is empty.
func InitialRing(shard string, vnodes int) *Ring {
	if shard == "" {
		panic("shardmap: InitialRing with an empty shard name")
	}
	vnodes = max(1, min(vnodes, MaxVnodes))
	step := uint64(0)
	if vnodes > 1 {
		step, _ = bits.Div64(1, 0, uint64(vnodes)) // 2^64 / vnodes
	}
	tokens := make([]Token, vnodes)
	for i := range tokens {
		tokens[i] = Token{Pos: int64(uint64(math.MaxInt64) - uint64(vnodes-1-i)*step), Shard: shard}
	}
	r, err := NewRing(tokens)
	if err != nil {
		panic(err) // unreachable: positions are increasing by construction
	}
	return r
}

// Lookup returns the shard that owns hash: the owner of the first token whose
// position is >= hash, or of the first token when hash is above them all.
// It does not allocate.
func (r *Ring) Lookup(hash int64) string {
	i, _ := slices.BinarySearch(r.pos, hash)
	if i == len(r.pos) {
		i = 0
	}
	return r.owner[i]
}

// Shards returns the distinct shard names on the ring, sorted.
func (r *Ring) Shards() []string { return slices.Clone(r.shards) }

// Tokens returns a copy of the ring's tokens in position order.
func (r *Ring) Tokens() []Token {
	ts := make([]Token, len(r.pos))
	for i := range ts {
		ts[i] = Token{Pos: r.pos[i], Shard: r.owner[i]}
	}
	return ts
}

// Len returns the number of tokens.
func (r *Ring) Len() int { return len(r.pos) }

// rangeAt is the range owned through token i.
func (r *Ring) rangeAt(i int) Range {
	prev := r.pos[len(r.pos)-1]
	if i > 0 {
		prev = r.pos[i-1]
	}
	return Range{Start: prev, End: r.pos[i]}
}

// Ranges returns the ranges owned by shard, one per token, in token order.
func (r *Ring) Ranges(shard string) []Range {
	var out []Range
	for i, o := range r.owner {
		if o == shard {
			out = append(out, r.rangeAt(i))
		}
	}
	return out
}

// Ownership returns each shard's fraction of the hash space; the fractions
// add up to 1.
func (r *Ring) Ownership() map[string]float64 {
	m := make(map[string]float64, len(r.shards))
	for i, o := range r.owner {
		m[o] += r.rangeAt(i).Fraction()
	}
	return m
}

// Diff returns exactly the ranges whose owner differs between old and new,
// each with its old and new owner. Adjacent changed ranges with the same pair
// of owners are merged (also across the wrap-around). The moves are in ring
// order starting from the lowest positions.
func Diff(old, new *Ring) []Move {
	bounds := make([]int64, 0, len(old.pos)+len(new.pos))
	bounds = append(bounds, old.pos...)
	bounds = append(bounds, new.pos...)
	slices.Sort(bounds)
	bounds = slices.Compact(bounds)
	n := len(bounds)
	var moves []Move
	for i, end := range bounds {
		start := bounds[(i-1+n)%n]
		// Both rings are constant on (start, end]: no token of either lies
		// strictly inside it, so the owners of end are the owners of all.
		from, to := old.Lookup(end), new.Lookup(end)
		if from == to {
			continue
		}
		if k := len(moves) - 1; k >= 0 && moves[k].Range.End == start && moves[k].From == from && moves[k].To == to {
			moves[k].Range.End = end
			continue
		}
		moves = append(moves, Move{Range: Range{Start: start, End: end}, From: from, To: to})
	}
	if k := len(moves) - 1; k > 0 {
		first, last := moves[0], moves[k]
		if last.Range.End == first.Range.Start && last.From == first.From && last.To == first.To {
			moves[0].Range.Start = last.Range.Start
			moves = moves[:k]
		}
	}
	return moves
}

// work is a mutable token list used while computing a new placement.
type work struct {
	pos   []int64
	owner []string
}

func (r *Ring) work() *work {
	return &work{pos: slices.Clone(r.pos), owner: slices.Clone(r.owner)}
}

// spanAt is the size of token i's range; the caller guarantees at least two
// tokens, so it is never the whole ring.
func (w *work) spanAt(i int) uint64 {
	prev := w.pos[len(w.pos)-1]
	if i > 0 {
		prev = w.pos[i-1]
	}
	return span(prev, w.pos[i])
}

func (w *work) startAt(i int) int64 {
	if i == 0 {
		return w.pos[len(w.pos)-1]
	}
	return w.pos[i-1]
}

// totals returns each shard's number of owned hashes, modulo 2^64 (a shard
// owning everything reads 0).
func (w *work) totals() map[string]uint64 {
	m := map[string]uint64{}
	for i, o := range w.owner {
		m[o] += w.spanAt(i)
	}
	return m
}

// split makes sure the ring has at least two tokens by adding one opposite
// the only token, owned by the same shard (ownership is unchanged).
func (w *work) split() {
	if len(w.pos) == 1 {
		w.pos = append(w.pos, int64(uint64(w.pos[0])+1<<63))
		w.owner = append(w.owner, w.owner[0])
		w.sort()
	}
}

func (w *work) sort() {
	idx := make([]int, len(w.pos))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return cmp.Compare(w.pos[a], w.pos[b]) })
	pos, owner := make([]int64, len(idx)), make([]string, len(idx))
	for i, j := range idx {
		pos[i], owner[i] = w.pos[j], w.owner[j]
	}
	w.pos, w.owner = pos, owner
}

// ring drops redundant tokens (a token whose successor has the same owner:
// merging their ranges changes no hash's owner) and returns the ring.
func (w *work) ring() (*Ring, error) {
	w.sort()
	n := len(w.pos)
	var tokens []Token
	for i := range n {
		if n > 1 && w.owner[i] == w.owner[(i+1)%n] {
			continue
		}
		tokens = append(tokens, Token{Pos: w.pos[i], Shard: w.owner[i]})
	}
	if len(tokens) == 0 { // one owner left: keep its last token
		tokens = []Token{{Pos: w.pos[n-1], Shard: w.owner[n-1]}}
	}
	return NewRing(tokens)
}

// AddShard returns a new ring on which shard name owns 1/(N+1) of the hash
// space (N = current shard count), taken from the current shards by lowering
// the largest shares to a common level, so that after a balanced ring every
// shard owns 1/(N+1) again. Only ranges that move to the new shard change
// owner. The new shard gets about vnodes tokens (at least one per shard it
// takes from), each carved from the start of one of a donor's largest ranges.
// vnodes must be in [1, MaxVnodes].
func (r *Ring) AddShard(name string, vnodes int) (*Ring, error) {
	if name == "" {
		return nil, fmt.Errorf("add shard: empty name: %w", ErrInvalidRing)
	}
	if slices.Contains(r.shards, name) {
		return nil, fmt.Errorf("add shard %q: %w", name, ErrShardExists)
	}
	if vnodes < 1 || vnodes > MaxVnodes {
		return nil, fmt.Errorf("add shard %q: vnodes %d not in [1, %d]: %w", name, vnodes, MaxVnodes, ErrInvalidRing)
	}
	w := r.work()
	w.split()
	take := donations(w.totals(), len(r.shards)+1)

	// Spread vnodes pieces over the donors in proportion to what each gives
	// (largest remainder), at least one piece per donor.
	var total float64
	for _, d := range take {
		total += float64(d.amount)
	}
	pieces := make([]int, len(take))
	rest := make([]float64, len(take))
	used := 0
	for i, d := range take {
		q := float64(vnodes) * float64(d.amount) / total
		pieces[i] = max(1, int(q))
		rest[i] = q - float64(pieces[i])
		used += pieces[i]
	}
	for ; used < vnodes; used++ {
		best := 0
		for i := range rest {
			if rest[i] > rest[best] {
				best = i
			}
		}
		pieces[best]++
		rest[best]--
	}

	var newPos []int64
	for i, d := range take {
		cuts, err := w.cuts(d.shard, d.amount, pieces[i])
		if err != nil {
			return nil, fmt.Errorf("add shard %q: %w", name, err)
		}
		newPos = append(newPos, cuts...)
	}
	for _, p := range newPos {
		w.pos = append(w.pos, p)
		w.owner = append(w.owner, name)
	}
	return w.ring()
}

// donation is what one shard gives to a new shard.
type donation struct {
	shard  string
	amount uint64
}

// donations decides how much each current shard gives so that a new shard
// gets 2^64/m hashes (m = shard count after the add): the largest shares are
// lowered to a common level L with sum(share - L) = 2^64/m. All arithmetic is
// modulo 2^64; every true result used is in [0, 2^64), so it is exact (a
// single shard's total of 2^64 reads as 0 and still works out).
func donations(totals map[string]uint64, m int) []donation {
	type share struct {
		shard string
		n     uint64
	}
	shares := make([]share, 0, len(totals))
	for s, n := range totals {
		shares = append(shares, share{s, n})
	}
	if len(shares) == 1 {
		target, _ := bits.Div64(1, 0, uint64(m))
		return []donation{{shares[0].shard, target}}
	}
	slices.SortFunc(shares, func(a, b share) int {
		if c := cmp.Compare(b.n, a.n); c != 0 {
			return c
		}
		return cmp.Compare(a.shard, b.shard)
	})
	target, _ := bits.Div64(1, 0, uint64(m)) // 2^64 / m, m >= 2
	var prefix, level, extra uint64
	k := 0
	for k < len(shares) {
		prefix += shares[k].n
		k++
		d := prefix - target // >= 0: the largest share is >= 2^64/(m-1)
		level, extra = d/uint64(k), d%uint64(k)
		if k == len(shares) || level >= shares[k].n {
			break
		}
	}
	var out []donation
	for i := range k {
		a := shares[i].n - level
		if uint64(i) < extra {
			a-- // sum(share - level) exceeds the target by extra
		}
		if a > 0 {
			out = append(out, donation{shares[i].shard, a})
		}
	}
	return out
}

// cuts takes amount hashes from shard's ranges in about pieces pieces: the
// shard's largest ranges are cut down to a common level, each losing a prefix
// (its start), and cuts returns the positions of the tokens that end the
// prefixes. Every cut range keeps at least one hash, so the shard's tokens
// keep their place.
func (w *work) cuts(shard string, amount uint64, pieces int) ([]int64, error) {
	type rng struct {
		i int
		n uint64
	}
	var rs []rng
	for i, o := range w.owner {
		if o == shard {
			rs = append(rs, rng{i, w.spanAt(i)})
		}
	}
	slices.SortFunc(rs, func(a, b rng) int {
		if c := cmp.Compare(b.n, a.n); c != 0 {
			return c
		}
		return cmp.Compare(w.pos[a.i], w.pos[b.i])
	})
	for k := min(max(pieces, 1), len(rs)); k <= len(rs); k++ {
		// Water-fill over the k largest ranges: level M with
		// sum over cut ranges of (n - M) = amount and M >= 1.
		var hi, lo uint64 // 128-bit prefix sum (a lone shard's ranges add up to 2^64)
		for j := 1; j <= k; j++ {
			var c uint64
			lo, c = bits.Add64(lo, rs[j-1].n, 0)
			hi += c
			if hi == 0 && lo < amount {
				continue // not enough yet
			}
			d := lo - amount // true value < 2^64
			level, extra := d/uint64(j), d%uint64(j)
			if level < 1 {
				if j == k {
					break // needs more ranges than k
				}
				continue
			}
			if j < k && level < rs[j].n {
				continue // the next range is above the level: cut it too
			}
			var out []int64
			for m := range j {
				c := rs[m].n - level
				if uint64(m) < extra {
					c--
				}
				if c > 0 {
					out = append(out, int64(uint64(w.startAt(rs[m].i))+c))
				}
			}
			return out, nil
		}
	}
	return nil, fmt.Errorf("shard %q cannot give %d hashes: %w", shard, amount, ErrInvalidRing)
}

// RemoveShard returns a new ring without shard name. Its ranges are handed to
// the remaining shards so that the smallest shares are raised to a common
// level; after a balanced ring every remaining shard owns 1/(N-1). Only the
// removed shard's ranges change owner.
func (r *Ring) RemoveShard(name string) (*Ring, error) {
	if !slices.Contains(r.shards, name) {
		return nil, fmt.Errorf("remove shard %q: %w", name, ErrUnknownShard)
	}
	if len(r.shards) == 1 {
		return nil, fmt.Errorf("remove shard %q: %w", name, ErrLastShard)
	}
	w := r.work() // >= 2 shards, so >= 2 tokens
	totals := w.totals()
	gone := totals[name]
	type share struct {
		shard string
		n     uint64
	}
	var recv []share
	for _, s := range r.shards {
		if s != name {
			recv = append(recv, share{s, totals[s]})
		}
	}
	slices.SortFunc(recv, func(a, b share) int {
		if c := cmp.Compare(a.n, b.n); c != 0 {
			return c
		}
		return cmp.Compare(a.shard, b.shard)
	})
	// Water-fill upwards: level L with sum over receivers of (L - n) = gone.
	gets := make([]uint64, len(recv))
	if len(recv) == 1 {
		gets[0] = gone
	} else {
		var hi, lo, level, extra uint64
		k := 0
		for k < len(recv) {
			var c uint64
			lo, c = bits.Add64(lo, recv[k].n, 0)
			hi += c
			k++
			shi, slo := hi, lo
			slo, c = bits.Add64(slo, gone, 0)
			shi += c
			// shi <= 1 < k unless k == 1, and k == 1 with shi == 1 would
			// mean two shards in all, handled above.
			level, extra = bits.Div64(shi, slo, uint64(k))
			if k == len(recv) || level <= recv[k].n {
				break
			}
		}
		for i := range k {
			gets[i] = level - recv[i].n
			if uint64(i) < extra {
				gets[i]++ // k*level falls short of the total by extra
			}
		}
	}

	// Hand the removed shard's ranges out. First each range's neighbours take
	// what they are owed from its two ends: a prefix given to the owner of the
	// previous range, or a suffix given to the owner of the next one, merges
	// with that neighbour's range and costs no token. Whatever is left in the
	// middle of the ranges then goes to the receivers in turn.
	owed := make(map[string]uint64, len(recv))
	for i, s := range recv {
		owed[s.shard] = gets[i]
	}
	n := len(w.pos)
	type piece struct {
		n     uint64
		shard string
	}
	type plan struct {
		i            int
		start        uint64
		head, tail   piece
		middle       uint64
		middlePieces []piece
	}
	var plans []plan
	for i := range n {
		if w.owner[i] != name {
			continue
		}
		p := plan{i: i, start: uint64(w.startAt(i)), middle: w.spanAt(i)}
		if prev := w.owner[(i-1+n)%n]; prev != name && owed[prev] > 0 {
			a := min(p.middle, owed[prev])
			owed[prev] -= a
			p.middle -= a
			p.head = piece{a, prev}
		}
		if next := w.owner[(i+1)%n]; next != name && owed[next] > 0 && p.middle > 0 {
			a := min(p.middle, owed[next])
			owed[next] -= a
			p.middle -= a
			p.tail = piece{a, next}
		}
		plans = append(plans, p)
	}
	q := 0
	for k := range plans {
		for left := plans[k].middle; left > 0; {
			for owed[recv[q].shard] == 0 {
				q++
			}
			a := min(left, owed[recv[q].shard])
			owed[recv[q].shard] -= a
			left -= a
			plans[k].middlePieces = append(plans[k].middlePieces, piece{a, recv[q].shard})
		}
	}
	for _, p := range plans {
		var pieces []piece
		if p.head.n > 0 {
			pieces = append(pieces, p.head)
		}
		pieces = append(pieces, p.middlePieces...)
		if p.tail.n > 0 {
			pieces = append(pieces, p.tail)
		}
		cursor := p.start
		for j, pc := range pieces {
			if j == len(pieces)-1 {
				w.owner[p.i] = pc.shard // the range's own token ends the last piece
				break
			}
			cursor += pc.n
			w.pos = append(w.pos, int64(cursor))
			w.owner = append(w.owner, pc.shard)
		}
	}
	return w.ring()
}
