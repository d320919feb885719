package shardmap

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func mustRing(t *testing.T, tokens ...Token) *Ring {
	t.Helper()
	r, err := NewRing(tokens)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestLookupBoundaries(t *testing.T) {
	r := mustRing(t, Token{-100, "a"}, Token{0, "b"}, Token{100, "c"})
	for h, want := range map[int64]string{
		math.MinInt64: "a", -101: "a", -100: "a", // hash == token belongs to that token
		-99: "b", -1: "b", 0: "b",
		1: "c", 99: "c", 100: "c",
		101: "a", math.MaxInt64: "a", // above the largest token: wraps to the first
	} {
		if got := r.Lookup(h); got != want {
			t.Errorf("Lookup(%d) = %q, want %q", h, got, want)
		}
	}

	ends := mustRing(t, Token{math.MinInt64, "x"}, Token{math.MaxInt64, "y"})
	for h, want := range map[int64]string{math.MinInt64: "x", math.MinInt64 + 1: "y", 0: "y", math.MaxInt64: "y"} {
		if got := ends.Lookup(h); got != want {
			t.Errorf("ends: Lookup(%d) = %q, want %q", h, got, want)
		}
	}
	one := mustRing(t, Token{42, "only"})
	for _, h := range []int64{math.MinInt64, 41, 42, 43, math.MaxInt64} {
		if got := one.Lookup(h); got != "only" {
			t.Errorf("single token: Lookup(%d) = %q", h, got)
		}
	}
	if o := one.Ownership(); o["only"] != 1 {
		t.Errorf("single token ownership = %v", o)
	}
}

func TestNewRingValidation(t *testing.T) {
	for name, tokens := range map[string][]Token{
		"empty":     nil,
		"unsorted":  {{5, "a"}, {1, "b"}},
		"duplicate": {{5, "a"}, {5, "b"}},
		"no shard":  {{1, "a"}, {2, ""}},
	} {
		if _, err := NewRing(tokens); !errors.Is(err, ErrInvalidRing) {
			t.Errorf("%s: NewRing error = %v, want ErrInvalidRing", name, err)
		}
	}
	in := []Token{{1, "b"}, {2, "a"}, {3, "b"}}
	r := mustRing(t, in...)
	in[0].Shard = "changed"
	if got := r.Tokens(); got[0].Shard != "b" || len(got) != 3 {
		t.Errorf("ring aliases its input: %v", got)
	}
	got := r.Tokens()
	got[1].Shard = "mutated"
	if r.Lookup(2) != "a" {
		t.Error("Tokens() aliases the ring")
	}
	if s := r.Shards(); !slices.Equal(s, []string{"a", "b"}) {
		t.Errorf("Shards() = %v", s)
	}
}

func TestRange(t *testing.T) {
	plain := Range{Start: -10, End: 10}
	wrap := Range{Start: 10, End: -10}
	full := Range{Start: 7, End: 7}
	top := Range{Start: math.MaxInt64, End: 5} // (MaxInt64, 5]: wraps, holds MinInt64..5
	for _, c := range []struct {
		g    Range
		h    int64
		want bool
	}{
		{plain, -10, false}, {plain, -9, true}, {plain, 10, true}, {plain, 11, false}, {plain, math.MinInt64, false},
		{wrap, 10, false}, {wrap, 11, true}, {wrap, math.MaxInt64, true}, {wrap, math.MinInt64, true}, {wrap, -10, true}, {wrap, -9, false}, {wrap, 0, false},
		{full, 7, true}, {full, math.MinInt64, true}, {full, math.MaxInt64, true},
		{top, math.MaxInt64, false}, {top, math.MinInt64, true}, {top, 5, true}, {top, 6, false},
	} {
		if got := c.g.Contains(c.h); got != c.want {
			t.Errorf("%v.Contains(%d) = %v, want %v", c.g, c.h, got, c.want)
		}
	}
	if plain.Wraps() || !wrap.Wraps() || !full.Wraps() {
		t.Error("Wraps wrong")
	}
	if f := (Range{Start: math.MinInt64, End: 0}).Fraction(); f != 0.5 {
		t.Errorf("Fraction of (MinInt64, 0] = %v, want 0.5", f)
	}
	if f := full.Fraction(); f != 1 {
		t.Errorf("Fraction of full ring = %v", f)
	}
	if f := plain.Fraction() + wrap.Fraction(); math.Abs(f-1) > 1e-15 {
		t.Errorf("complementary ranges add to %v", f)
	}
	for g, want := range map[Range]string{
		plain:                          "(h > -10 AND h <= 10)",
		wrap:                           "(h > 10 OR h <= -10)",
		full:                           "true",
		{Start: math.MinInt64, End: 3}: "(h > '-9223372036854775808'::bigint AND h <= 3)",
	} {
		if got := g.SQL("h"); got != want {
			t.Errorf("%v.SQL = %s, want %s", g, got, want)
		}
	}
}

func TestInitialRing(t *testing.T) {
	r := InitialRing("s1", 16)
	if r.Len() != 16 {
		t.Fatalf("InitialRing has %d tokens", r.Len())
	}
	if tk := r.Tokens(); tk[15].Pos != math.MaxInt64 {
		t.Errorf("last token at %d, want MaxInt64", tk[15].Pos)
	}
	for _, g := range r.Ranges("s1") {
		if f := g.Fraction(); math.Abs(f-1.0/16) > 1e-12 {
			t.Errorf("range %v has fraction %v, want 1/16", g, f)
		}
	}
	if r1 := InitialRing("s1", 0); r1.Len() != 1 || r1.Lookup(math.MinInt64) != "s1" {
		t.Errorf("InitialRing(vnodes 0) = %v", r1.Tokens())
	}
}

// checkBalanced fails unless every shard owns 1/N of the space within ±5%
// (relative) and returns the largest relative deviation.
func checkBalanced(t *testing.T, r *Ring, what string) float64 {
	t.Helper()
	own := r.Ownership()
	n := float64(len(own))
	worst, sum := 0.0, 0.0
	for s, f := range own {
		sum += f
		dev := math.Abs(f-1/n) / (1 / n)
		worst = max(worst, dev)
		if dev > 0.05 {
			t.Errorf("%s: shard %s owns %.6f, want %.6f ±5%%", what, s, f, 1/n)
		}
	}
	if math.Abs(sum-1) > 1e-9 {
		t.Errorf("%s: shares add up to %v", what, sum)
	}
	return worst
}

func movedFraction(moves []Move) float64 {
	f := 0.0
	for _, m := range moves {
		f += m.Range.Fraction()
	}
	return f
}

func maxTokensPerShard(r *Ring) (string, int) {
	count := map[string]int{}
	for _, tk := range r.Tokens() {
		count[tk.Shard]++
	}
	best, n := "", 0
	for s, c := range count {
		if c > n {
			best, n = s, c
		}
	}
	return best, n
}

func shardName(i int) string { return fmt.Sprintf("s%02d", i) }

// growRing adds shards s02..sNN to InitialRing("s01", vnodes).
func growRing(t *testing.T, n, vnodes int) []*Ring {
	t.Helper()
	rings := []*Ring{InitialRing(shardName(1), vnodes)}
	for i := 2; i <= n; i++ {
		next, err := rings[len(rings)-1].AddShard(shardName(i), vnodes)
		if err != nil {
			t.Fatalf("AddShard(%s): %v", shardName(i), err)
		}
		rings = append(rings, next)
	}
	return rings
}

func TestGrowthOneToSixteen(t *testing.T) {
	for _, vnodes := range []int{1, 4, DefaultVnodes, 64} {
		t.Run(fmt.Sprintf("vnodes=%d", vnodes), func(t *testing.T) {
			rings := growRing(t, 16, vnodes)
			for i := 1; i < len(rings); i++ {
				old, cur := rings[i-1], rings[i]
				n := i + 1
				added := shardName(n)
				worst := checkBalanced(t, cur, "after adding "+added)
				moves := Diff(old, cur)
				moved := movedFraction(moves)
				if moved > 1/float64(n)+0.01 {
					t.Errorf("adding %s moved %.6f of the space, limit %.6f", added, moved, 1/float64(n)+0.01)
				}
				for _, m := range moves {
					if m.To != added {
						t.Errorf("adding %s moved %v from %s to %s", added, m.Range, m.From, m.To)
					}
				}
				if got := cur.Ownership()[added]; math.Abs(moved-got) > 1e-12 {
					t.Errorf("moved %.9f but %s owns %.9f", moved, added, got)
				}
				who, most := maxTokensPerShard(cur)
				if most > 256 {
					t.Errorf("%s has %d tokens", who, most)
				}
				t.Logf("N=%2d: max share deviation %.2e (relative), moved %.6f (1/N = %.6f) in %3d moves, %4d tokens, max %3d per shard (%s)",
					n, worst, moved, 1/float64(n), len(moves), cur.Len(), most, who)
			}
		})
	}
}

func TestRemoveShard(t *testing.T) {
	ring := growRing(t, 16, DefaultVnodes)[15]
	r := rand.New(rand.NewPCG(3, 4))
	for ring.Len() > 0 && len(ring.Shards()) > 1 {
		shards := ring.Shards()
		gone := shards[r.IntN(len(shards))]
		share := ring.Ownership()[gone]
		next, err := ring.RemoveShard(gone)
		if err != nil {
			t.Fatalf("RemoveShard(%s): %v", gone, err)
		}
		if slices.Contains(next.Shards(), gone) {
			t.Fatalf("%s still on the ring", gone)
		}
		worst := checkBalanced(t, next, "after removing "+gone)
		moves := Diff(ring, next)
		for _, m := range moves {
			if m.From != gone {
				t.Errorf("removing %s moved %v from %s to %s", gone, m.Range, m.From, m.To)
			}
		}
		if moved := movedFraction(moves); math.Abs(moved-share) > 1e-12 {
			t.Errorf("removing %s moved %.9f, it owned %.9f", gone, moved, share)
		}
		_, most := maxTokensPerShard(next)
		t.Logf("removed %s: %2d shards left, max deviation %.2e, moved %.6f in %d moves, max %d tokens per shard",
			gone, len(next.Shards()), worst, movedFraction(moves), len(moves), most)
		ring = next
	}
	if _, err := ring.RemoveShard(ring.Shards()[0]); !errors.Is(err, ErrLastShard) {
		t.Errorf("removing the last shard: %v, want ErrLastShard", err)
	}
	if _, err := ring.RemoveShard("nope"); !errors.Is(err, ErrUnknownShard) {
		t.Errorf("removing unknown shard: %v, want ErrUnknownShard", err)
	}
}

func TestAddShardErrors(t *testing.T) {
	r := InitialRing("a", 4)
	if _, err := r.AddShard("a", 4); !errors.Is(err, ErrShardExists) {
		t.Errorf("re-adding a: %v", err)
	}
	for _, v := range []int{0, -1, MaxVnodes + 1} {
		if _, err := r.AddShard("b", v); !errors.Is(err, ErrInvalidRing) {
			t.Errorf("vnodes %d: %v", v, err)
		}
	}
	if _, err := r.AddShard("", 4); !errors.Is(err, ErrInvalidRing) {
		t.Errorf("empty name: %v", err)
	}
	// The receiver is unchanged.
	if r.Len() != 4 || len(r.Shards()) != 1 {
		t.Errorf("AddShard changed its receiver: %v", r.Tokens())
	}
}

// randomRing is an unbalanced ring: random tokens for n shards.
func randomRing(t *testing.T, r *rand.Rand, n, tokens int) *Ring {
	t.Helper()
	seen := map[int64]bool{}
	var ts []Token
	for len(ts) < tokens {
		p := int64(r.Uint64())
		if !seen[p] {
			seen[p] = true
			ts = append(ts, Token{p, shardName(1 + len(ts)%n)})
		}
	}
	slices.SortFunc(ts, func(a, b Token) int { return cmpInt64(a.Pos, b.Pos) })
	return mustRing(t, ts...)
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// An unbalanced ring: the new shard still gets exactly 1/(N+1), only from
// shards above that level, and nothing else moves.
func TestAddShardUnbalanced(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for trial := range 20 {
		n := 2 + trial%7
		old := randomRing(t, r, n, n*(1+r.IntN(20)))
		cur, err := old.AddShard("new", DefaultVnodes)
		if err != nil {
			t.Fatal(err)
		}
		target := 1 / float64(n+1)
		if got := cur.Ownership()["new"]; math.Abs(got-target) > 1e-12 {
			t.Errorf("trial %d: new shard owns %.9f, want %.9f", trial, got, target)
		}
		before, after := old.Ownership(), cur.Ownership()
		level := 0.0
		for s, f := range after {
			if s != "new" {
				level = max(level, f)
			}
		}
		for s, f := range before {
			if f < after[s]-1e-15 {
				t.Errorf("trial %d: %s grew from %v to %v", trial, s, f, after[s])
			}
			if f > level+1e-12 && math.Abs(after[s]-level) > 1e-12 {
				t.Errorf("trial %d: donor %s left at %v, level %v", trial, s, after[s], level)
			}
		}
		for _, m := range Diff(old, cur) {
			if m.To != "new" {
				t.Errorf("trial %d: move %v %s->%s", trial, m.Range, m.From, m.To)
			}
		}
		checkDiff(t, r, old, cur)
	}
}

// checkDiff samples hashes (random ones and every token boundary with its
// neighbours) and checks that exactly the hashes whose owner changed are in a
// move, with the right owners.
func checkDiff(t *testing.T, r *rand.Rand, old, cur *Ring) {
	t.Helper()
	moves := Diff(old, cur)
	hashes := []int64{math.MinInt64, math.MinInt64 + 1, math.MaxInt64, math.MaxInt64 - 1, 0, -1}
	for _, tk := range append(old.Tokens(), cur.Tokens()...) {
		hashes = append(hashes, tk.Pos-1, tk.Pos, tk.Pos+1)
	}
	for range 20000 {
		hashes = append(hashes, int64(r.Uint64()))
	}
	for _, h := range hashes {
		from, to := old.Lookup(h), cur.Lookup(h)
		var in []Move
		for _, m := range moves {
			if m.Range.Contains(h) {
				in = append(in, m)
			}
		}
		switch {
		case from == to && len(in) != 0:
			t.Errorf("hash %d stays on %s but is in moves %v", h, from, in)
		case from != to && len(in) != 1:
			t.Errorf("hash %d moves %s->%s but is in %d moves %v", h, from, to, len(in), in)
		case from != to && (in[0].From != from || in[0].To != to):
			t.Errorf("hash %d moves %s->%s but its move says %s->%s", h, from, to, in[0].From, in[0].To)
		}
	}
	// Moves are disjoint and maximal: no two adjacent moves with equal owners.
	for i, m := range moves {
		next := moves[(i+1)%len(moves)]
		if len(moves) > 1 && m.Range.End == next.Range.Start && m.From == next.From && m.To == next.To {
			t.Errorf("moves %v and %v could be merged", m, next)
		}
	}
}

func TestDiff(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	rings := growRing(t, 8, DefaultVnodes)
	for i := 1; i < len(rings); i++ {
		checkDiff(t, r, rings[i-1], rings[i])
	}
	checkDiff(t, r, rings[2], rings[7]) // several steps at once
	checkDiff(t, r, rings[7], rings[2]) // and back
	removed, err := rings[7].RemoveShard(shardName(4))
	if err != nil {
		t.Fatal(err)
	}
	checkDiff(t, r, rings[7], removed)
	for range 10 {
		a, b := randomRing(t, r, 3, 20), randomRing(t, r, 4, 30)
		checkDiff(t, r, a, b)
	}
	if m := Diff(rings[3], rings[3]); len(m) != 0 {
		t.Errorf("Diff of a ring with itself = %v", m)
	}
	// A whole-ring move is one range with Start == End.
	a, b := mustRing(t, Token{5, "a"}), mustRing(t, Token{5, "b"})
	if m := Diff(a, b); len(m) != 1 || m[0].Range.Start != m[0].Range.End || m[0].From != "a" || m[0].To != "b" {
		t.Errorf("Diff of two single-shard rings = %v", m)
	}
	a2 := mustRing(t, Token{-5, "a"}, Token{5, "a"})
	if m := Diff(a2, b); len(m) != 1 || m[0].Range.Fraction() != 1 {
		t.Errorf("Diff of whole-ring move = %v", m)
	}
	// The wrap-around move is merged: (10, -10] moves as one range.
	x := mustRing(t, Token{-10, "a"}, Token{10, "b"})
	y := mustRing(t, Token{-10, "c"}, Token{10, "b"})
	if m := Diff(x, y); len(m) != 1 || m[0].Range != (Range{10, -10}) {
		t.Errorf("wrapping Diff = %v", m)
	}
	y2 := mustRing(t, Token{-10, "c"}, Token{10, "b"}, Token{math.MaxInt64, "c"})
	if m := Diff(x, y2); len(m) != 1 || m[0].Range != (Range{10, -10}) {
		t.Errorf("wrapping Diff across a token at MaxInt64 = %v", m)
	}
}

// Random adds and removes: the balance and token bounds hold throughout.
func TestChurn(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	ring := InitialRing("c0", DefaultVnodes)
	next := 1
	most := 0
	for step := range 300 {
		shards := ring.Shards()
		var cur *Ring
		var err error
		if len(shards) == 1 || (len(shards) < 16 && r.IntN(2) == 0) {
			cur, err = ring.AddShard(fmt.Sprintf("c%d", next), DefaultVnodes)
			next++
		} else {
			cur, err = ring.RemoveShard(shards[r.IntN(len(shards))])
		}
		if err != nil {
			t.Fatalf("step %d: %v", step, err)
		}
		checkBalanced(t, cur, fmt.Sprintf("step %d", step))
		if step%25 == 0 {
			checkDiff(t, r, ring, cur)
		}
		_, m := maxTokensPerShard(cur)
		most = max(most, m)
		if m > 256 {
			t.Fatalf("step %d: %d tokens for one shard", step, m)
		}
		ring = cur
	}
	t.Logf("300 random adds/removes: at most %d tokens per shard, %d tokens at the end for %d shards",
		most, ring.Len(), len(ring.Shards()))
}

func TestLookupNoAlloc(t *testing.T) {
	ring := growRing(t, 16, DefaultVnodes)[15]
	var h int64
	n := testing.AllocsPerRun(1000, func() {
		h++
		_ = ring.Lookup(h * 0x7e3779b97f4a7c15)
	})
	if n != 0 {
		t.Errorf("Lookup allocates %v times", n)
	}
}

var lookupSink string

func BenchmarkLookup(b *testing.B) {
	rings := []*Ring{InitialRing("a", DefaultVnodes)}
	for i := 2; i <= 16; i++ {
		next, err := rings[len(rings)-1].AddShard(shardName(i), DefaultVnodes)
		if err != nil {
			b.Fatal(err)
		}
		rings = append(rings, next)
	}
	ring := rings[15]
	b.Logf("%d tokens", ring.Len())
	b.ReportAllocs()
	var h uint64
	var s string
	for b.Loop() {
		h += 0x9e3779b97f4a7c15
		s = ring.Lookup(int64(h))
	}
	lookupSink = s
}

func BenchmarkLookupKey(b *testing.B) {
	ring := InitialRing("a", DefaultVnodes)
	for i := 2; i <= 16; i++ {
		ring, _ = ring.AddShard(shardName(i), DefaultVnodes)
	}
	b.ReportAllocs()
	var s string
	for i := 0; b.Loop(); i++ {
		s = ring.Lookup(HashInt64(int64(i)))
	}
	lookupSink = s
}

// Removing each shard of several rings in turn, including the owner of the
// first token (whose range wraps) and shards of unbalanced rings.
func TestRemoveEachShard(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	rings := []*Ring{growRing(t, 8, DefaultVnodes)[7], growRing(t, 3, 1)[2]}
	for range 5 {
		rings = append(rings, randomRing(t, r, 2+r.IntN(6), 10+r.IntN(50)))
	}
	sawWrap := false
	for k, ring := range rings {
		first := ring.Tokens()[0].Shard
		for _, gone := range ring.Shards() {
			sawWrap = sawWrap || gone == first
			next, err := ring.RemoveShard(gone)
			if err != nil {
				t.Fatalf("ring %d: RemoveShard(%s): %v", k, gone, err)
			}
			before, after := ring.Ownership(), next.Ownership()
			if _, ok := after[gone]; ok {
				t.Fatalf("ring %d: %s still owns %v", k, gone, after[gone])
			}
			for s, f := range after {
				if f < before[s]-1e-15 {
					t.Errorf("ring %d: removing %s shrank %s from %v to %v", k, gone, s, before[s], f)
				}
			}
			moves := Diff(ring, next)
			for _, m := range moves {
				if m.From != gone {
					t.Errorf("ring %d: removing %s moved %v from %s", k, gone, m.Range, m.From)
				}
			}
			if moved := movedFraction(moves); math.Abs(moved-before[gone]) > 1e-12 {
				t.Errorf("ring %d: removing %s moved %v, it owned %v", k, gone, moved, before[gone])
			}
			if k == 0 {
				checkBalanced(t, next, "balanced ring without "+gone)
			}
			checkDiff(t, r, ring, next)
		}
	}
	if !sawWrap {
		t.Fatal("no removal of the first token's owner")
	}
}
