package router

import (
	"strconv"
	"testing"
)

// BenchmarkPlanCachedParam: extended protocol, cached shape, key from a
// text parameter.
func BenchmarkPlanCachedParam(b *testing.B) {
	r := testRing(b)
	p := NewPlanner(PlannerConfig{Catalog: planCat})
	sql := "SELECT name, email FROM users WHERE user_id = $1"
	vals := make([][]byte, 1024)
	for i := range vals {
		vals[i] = []byte(strconv.Itoa(i * 7919))
	}
	params := &Params{Values: [][]byte{nil}}
	p.Plan(sql, &Params{Values: [][]byte{[]byte("1")}}, r)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		params.Values[0] = vals[i%len(vals)]
		if pl := p.Plan(sql, params, r); pl.Kind != Single {
			b.Fatal(pl.Kind)
		}
	}
}

// BenchmarkPlanCachedLiteral: simple protocol, the key literal changes
// every time; the shape is cached and the key read from its position.
func BenchmarkPlanCachedLiteral(b *testing.B) {
	r := testRing(b)
	p := NewPlanner(PlannerConfig{Catalog: planCat})
	sqls := make([]string, 1024)
	for i := range sqls {
		sqls[i] = "SELECT name, email FROM users WHERE user_id = " + strconv.Itoa(i*7919) + " AND status = 'active'"
	}
	p.Plan(sqls[0], nil, r)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if pl := p.Plan(sqls[i%len(sqls)], nil, r); pl.Kind != Single {
			b.Fatal(pl.Kind)
		}
	}
}

// BenchmarkPlanCachedUpdateBinary: UPDATE by a binary int8 key.
func BenchmarkPlanCachedUpdateBinary(b *testing.B) {
	r := testRing(b)
	p := NewPlanner(PlannerConfig{Catalog: planCat})
	sql := "UPDATE users SET balance = balance + $1 WHERE user_id = $2"
	params := &Params{Values: [][]byte{[]byte("5"), int8bin(42)}, Formats: []int16{0, 1}, Types: []uint32{0, 20}}
	p.Plan(sql, params, r)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if pl := p.Plan(sql, params, r); pl.Kind != Single {
			b.Fatal(pl.Kind)
		}
	}
}

// BenchmarkPlanUncached: a parse and analysis every time (cache misses).
func BenchmarkPlanUncached(b *testing.B) {
	r := testRing(b)
	p := NewPlanner(PlannerConfig{Catalog: planCat})
	sql := "SELECT name, email FROM users WHERE user_id = 42 AND status = 'active'"
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		p.Reset()
		if pl := p.Plan(sql, nil, r); pl.Kind != Single {
			b.Fatal(pl.Kind)
		}
	}
}

func TestPlanCachedNoAlloc(t *testing.T) {
	r := testRing(t)
	p := NewPlanner(PlannerConfig{Catalog: planCat})
	params := &Params{Values: [][]byte{[]byte("42")}}
	sql := "SELECT * FROM users WHERE user_id = $1"
	lit := "SELECT * FROM users WHERE user_id = 42"
	p.Plan(sql, params, r)
	p.Plan(lit, nil, r)
	if n := testing.AllocsPerRun(100, func() { p.Plan(sql, params, r) }); n != 0 {
		t.Errorf("cached parameter plan: %v allocations", n)
	}
	if n := testing.AllocsPerRun(100, func() { p.Plan(lit, nil, r) }); n != 0 {
		t.Errorf("cached literal plan: %v allocations", n)
	}
}
