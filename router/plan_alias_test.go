package router

import (
	"fmt"
	"testing"
	"unsafe"
)

// The proxy plans texts that alias its read buffer, which it overwrites
// with the next message: nothing the planner keeps may point into them.
func TestPlanDoesNotKeepTheCallersText(t *testing.T) {
	r := testRing(t)
	p := NewPlanner(PlannerConfig{Catalog: planCat})
	fresh := NewPlanner(PlannerConfig{Catalog: planCat})
	buf := make([]byte, 64)
	text := func(i int) string {
		return fmt.Sprintf("SELECT count(*), avg(amount) FROM users WHERE amount < %04d", i)
	}
	for round := 0; round < 3; round++ {
		for i := 0; i < 300; i++ {
			n := copy(buf, text(i))
			sql := unsafe.String(&buf[0], n) // as the proxy does: the text aliases its buffer
			got := p.Plan(sql, nil, r).ShardSQL
			want := fresh.Plan(text(i), nil, r).ShardSQL
			if want == "" || got != want {
				t.Fatalf("round %d, %s:\n got  %q\n want %q", round, text(i), got, want)
			}
		}
	}
}
