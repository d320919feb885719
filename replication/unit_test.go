package replication

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestParseLSN(t *testing.T) {
	for _, c := range []struct {
		in   string
		want LSN
	}{
		{"0/0", 0},
		{"16/B374D848", 0x16_B374D848},
		{"FFFFFFFF/FFFFFFFF", ^LSN(0)},
		{"0/3000028", 0x3000028},
		{"a/b", 0xa_0000000b},
	} {
		got, err := ParseLSN(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseLSN(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for _, c := range []LSN{0, 1, 0x16_B374D848, ^LSN(0)} {
		back, err := ParseLSN(c.String())
		if err != nil || back != c {
			t.Errorf("round trip %v: %v, %v", uint64(c), back, err)
		}
	}
	if got := LSN(0x16_B374D848).String(); got != "16/B374D848" {
		t.Errorf("String = %q", got)
	}
	for _, bad := range []string{"", "/", "1/", "/1", "12", "g/1", "1/g", "123456789/0", "0/123456789", "1/2/3", "-1/2"} {
		if _, err := ParseLSN(bad); !errors.Is(err, ErrBadLSN) {
			t.Errorf("ParseLSN(%q) err = %v; want ErrBadLSN", bad, err)
		}
	}
}

func TestRecordEnd(t *testing.T) {
	const blk, seg = 8192, 16 << 20
	for _, c := range []struct {
		in, want LSN
	}{
		// After pg_switch_wal: the next segment's long header.
		{3*seg + 40, 3 * seg},
		// A page start inside a segment: short header.
		{3*seg + 5*blk + 24, 3*seg + 5*blk},
		// Ordinary positions are unchanged.
		{3*seg + 5*blk + 48, 3*seg + 5*blk + 48},
		{3*seg + 5*blk + 4000, 3*seg + 5*blk + 4000},
		// A continuation record ending 16 bytes into a short-header page
		// ends at 40: not a header end, unchanged.
		{3*seg + 5*blk + 40, 3*seg + 5*blk + 40},
		// 24 bytes into a segment's first page is inside its long header:
		// cannot be an insert position, but must not be moved anyway.
		{3*seg + 24, 3*seg + 24},
		{3*seg + 64, 3*seg + 64},
	} {
		if got := recordEnd(c.in, blk, seg); got != c.want {
			t.Errorf("recordEnd(%v) = %v; want %v", c.in, got, c.want)
		}
	}
	if got := recordEnd(3*seg+40, 0, 0); got != 3*seg+40 {
		t.Errorf("recordEnd without sizes = %v", got)
	}
}

// hist builds a history from (lsn, first, last) triples.
func hist(t *testing.T, entries ...[3]int64) history {
	t.Helper()
	var h history
	for _, e := range entries {
		h, _ = h.add(LSN(e[0]), e[1])
		if e[2] != e[1] {
			h, _ = h.add(LSN(e[0]), e[2])
		}
	}
	return h
}

func TestHistoryAdd(t *testing.T) {
	var h history
	h, _ = h.add(100, 10)
	h, _ = h.add(100, 20) // same position: extends the entry
	h, _ = h.add(200, 30)
	h2, _ := h.add(300, 25) // older than the newest check: ignored
	if len(h2.s) != 2 {
		t.Fatalf("out-of-order sample added: %+v", h2.s)
	}
	want := []sample{{100, 10, 20}, {200, 30, 30}}
	if fmt.Sprint(h.s) != fmt.Sprint(want) {
		t.Fatalf("history %+v; want %+v", h.s, want)
	}
	// Adding never changes a published history.
	before := fmt.Sprint(h.s)
	_, _ = h.add(200, 40)
	_, _ = h.add(250, 40)
	if fmt.Sprint(h.s) != before {
		t.Fatalf("published history changed: %v -> %v", before, h.s)
	}
	// Going backwards resets.
	h3, reset := h.add(50, 40)
	if !reset || len(h3.s) != 1 || h3.s[0] != (sample{50, 40, 40}) {
		t.Fatalf("reset: %v %+v", reset, h3.s)
	}
	// Bounded size; truncated once an entry is dropped.
	var hb history
	for i := range historySize {
		hb, _ = hb.add(LSN(i+1), int64(i))
	}
	if hb.truncated || len(hb.s) != historySize {
		t.Fatalf("full history: truncated=%v len=%d", hb.truncated, len(hb.s))
	}
	hb, _ = hb.add(1000, 1000)
	if !hb.truncated || len(hb.s) != historySize || hb.s[0].lsn != 2 || hb.s[historySize-1].lsn != 1000 {
		t.Fatalf("after overflow: truncated=%v len=%d first=%v last=%v", hb.truncated, len(hb.s), hb.s[0], hb.s[len(hb.s)-1])
	}
}

func TestHistoryTarget(t *testing.T) {
	// Position 100 seen by checks sent at 10..20, 200 at 30..40, 300 at 50.
	h := hist(t, [3]int64{100, 10, 20}, [3]int64{200, 30, 40}, [3]int64{300, 50, 50})
	for _, c := range []struct {
		wrote int64
		want  LSN
		ok    bool
	}{
		{0, 100, true},   // before everything kept: the oldest check
		{9, 100, true},   //
		{15, 100, true},  // a check at 20 (after 15) still saw 100
		{20, 200, true},  // sent exactly at the write: not after it
		{25, 200, true},  //
		{39, 200, true},  //
		{40, 300, true},  //
		{49, 300, true},  //
		{50, 0, false},   // no check after the write yet
		{500, 0, false},  //
		{-10, 100, true}, //
	} {
		got, ok := h.target(c.wrote)
		if got != c.want || ok != c.ok {
			t.Errorf("target(%d) = %v, %v; want %v, %v", c.wrote, got, ok, c.want, c.ok)
		}
	}
	if _, ok := (history{}).target(0); ok {
		t.Error("empty history has a target")
	}
}

func TestHistoryLag(t *testing.T) {
	h := hist(t, [3]int64{100, 10, 20}, [3]int64{200, 30, 40}, [3]int64{300, 50, 50})
	for _, c := range []struct {
		replay     LSN
		at         int64
		bytes, age int64
	}{
		{300, 60, 0, 0},    // caught up
		{400, 60, 0, 0},    // ahead of the sample (writes since): no negative lag
		{200, 60, 100, 10}, // missing 300, first seen at 50
		{150, 60, 150, 30}, // missing 200, first seen at 30
		{100, 45, 100, 15}, // check at 45: compares with 200 (check at 30..40), not 300
		{200, 45, 0, 0},    // had everything the primary had at 45
		{50, 25, 50, 15},   // behind the oldest; not truncated: lower bound
		{50, 5, 50, 0},     // check before any primary check: oldest position, no age
	} {
		bytes, age, covered := h.lag(c.replay, c.at)
		if bytes != c.bytes || age != c.age || !covered {
			t.Errorf("lag(%v, %d) = %d, %d, %v; want %d, %d, true", c.replay, c.at, bytes, age, covered, c.bytes, c.age)
		}
	}
	// An idle primary: the same position for a long time, the replica has
	// it: no lag however long.
	idle := hist(t, [3]int64{100, 0, int64(time.Hour)})
	if b, a, _ := idle.lag(100, int64(time.Hour)); b != 0 || a != 0 {
		t.Errorf("idle: %d %d", b, a)
	}
	// A burst after an idle hour: the lag is counted from when the new
	// position was first seen, not from the replica's last transaction.
	burst, _ := idle.add(200, int64(time.Hour)+10)
	if b, a, _ := burst.lag(100, int64(time.Hour)+20); b != 100 || a != 10 {
		t.Errorf("burst: %d %d", b, a)
	}
	// Truncated history and a replica behind its oldest entry: not covered.
	var hb history
	for i := range historySize + 1 {
		hb, _ = hb.add(LSN(i+10), int64(i))
	}
	if _, _, covered := hb.lag(1, 1000); covered {
		t.Error("behind a truncated history reported as covered")
	}
	if _, _, covered := hb.lag(12, 1000); !covered {
		t.Error("within the history reported as not covered")
	}
}

func TestEvaluate(t *testing.T) {
	cfg := Config{MaxLagBytes: 1000, MaxLagTime: time.Second}.withDefaults()
	h := hist(t, [3]int64{5000, 0, int64(10 * time.Second)})
	ok := replicaState{checked: true, ok: true, seen: true, replay: 5000, sent: int64(10 * time.Second), reported: -1}
	for _, c := range []struct {
		name     string
		mod      func(*replicaState)
		excluded bool
		healthy  bool
		why      string
	}{
		{"healthy", func(*replicaState) {}, false, true, ""},
		{"unchecked", func(s *replicaState) { *s = replicaState{} }, true, false, "not checked yet"},
		{"failed", func(s *replicaState) { s.ok, s.reason = false, "check failed: x" }, true, false, "check failed: x"},
		{"marked", func(s *replicaState) { s.markedAt, s.markReason = 1, "marked down: boom" }, true, false, "marked down: boom"},
		{"bytes", func(s *replicaState) { s.replay = 3000 }, true, true, "lag 2000 bytes > 1000"},
		{"time", func(s *replicaState) {
			s.replay = 4500
		}, true, true, "lag 10s > 1s"},
	} {
		st := ok
		c.mod(&st)
		d := evaluate(cfg, h, &st)
		if d.excluded != c.excluded || d.healthy != c.healthy || d.why != c.why {
			t.Errorf("%s: %+v; want excluded=%v healthy=%v why=%q", c.name, d, c.excluded, c.healthy, c.why)
		}
	}
	// No bounds.
	st := ok
	st.replay = 1
	if d := evaluate(Config{}.withDefaults(), h, &st); d.excluded {
		t.Errorf("unbounded: %+v", d)
	}
	// Behind a truncated history: the replica's own estimate when larger.
	var hb history
	for i := range historySize + 1 {
		hb, _ = hb.add(LSN(i+10), int64(i))
	}
	st = replicaState{checked: true, ok: true, seen: true, replay: 1, sent: 100, reported: time.Minute}
	if d := evaluate(Config{MaxLagTime: DefaultMaxLagTime}.withDefaults(), hb, &st); d.lagTime != time.Minute || !d.excluded {
		t.Errorf("truncated: %+v", d)
	}
}

// newTestMonitor returns a Monitor of n replicas whose state is set by the
// test (nothing is started).
func newTestMonitor(t testing.TB, n int) *Monitor {
	t.Helper()
	var reps []Node
	for i := range n {
		reps = append(reps, Node{Name: fmt.Sprintf("r%d", i), ConnString: "host=127.0.0.1 port=1 user=x dbname=x"})
	}
	m, err := NewMonitor(Config{}, Node{Name: "p", ConnString: "host=127.0.0.1 port=1 user=x dbname=x"}, reps)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// set publishes a snapshot directly.
func (m *Monitor) set(h history, reps ...replicaView) {
	m.snap.Store(&snapshot{hist: h, reps: reps})
}

func TestPickRoundRobin(t *testing.T) {
	m := newTestMonitor(t, 3)
	m.set(history{}, replicaView{usable: true}, replicaView{usable: true}, replicaView{usable: true})
	counts := map[int]int{}
	prev := -1
	for range 300 {
		i, ok := m.Pick(time.Time{}, PolicyRoundRobin, nil)
		if !ok {
			t.Fatal("no pick")
		}
		if i == prev {
			t.Fatalf("round robin picked %d twice in a row", i)
		}
		prev = i
		counts[i]++
	}
	if counts[0] != 100 || counts[1] != 100 || counts[2] != 100 {
		t.Fatalf("counts %v", counts)
	}
	// An excluded replica's share is spread evenly.
	m.set(history{}, replicaView{usable: true}, replicaView{usable: false}, replicaView{usable: true})
	counts = map[int]int{}
	for range 300 {
		i, _ := m.Pick(time.Time{}, PolicyRoundRobin, nil)
		counts[i]++
	}
	if counts[0] != 150 || counts[2] != 150 || counts[1] != 0 {
		t.Fatalf("counts with one excluded %v", counts)
	}
	m.set(history{}, replicaView{}, replicaView{})
	if _, ok := m.Pick(time.Time{}, PolicyRoundRobin, nil); ok {
		t.Fatal("picked among excluded replicas")
	}
}

func TestPickLeastOutstanding(t *testing.T) {
	m := newTestMonitor(t, 3)
	m.set(history{}, replicaView{usable: true}, replicaView{usable: true}, replicaView{usable: true})
	out := []int{5, 2, 7}
	for range 10 {
		if i, ok := m.Pick(time.Time{}, PolicyLeastOutstanding, func(i int) int { return out[i] }); !ok || i != 1 {
			t.Fatalf("picked %d, %v; want 1", i, ok)
		}
	}
	// Ties go round robin.
	out = []int{1, 3, 1}
	counts := map[int]int{}
	for range 100 {
		i, _ := m.Pick(time.Time{}, PolicyLeastOutstanding, func(i int) int { return out[i] })
		counts[i]++
	}
	if counts[1] != 0 || counts[0] < 30 || counts[2] < 30 {
		t.Fatalf("tie counts %v", counts)
	}
	// The smallest count among eligible replicas only.
	m.set(history{}, replicaView{usable: true}, replicaView{usable: false}, replicaView{usable: true})
	out = []int{4, 0, 3}
	if i, _ := m.Pick(time.Time{}, PolicyLeastOutstanding, func(i int) int { return out[i] }); i != 2 {
		t.Fatalf("picked %d; want 2", i)
	}
}

func TestPickReadYourWrites(t *testing.T) {
	m := newTestMonitor(t, 2)
	base := m.epoch
	at := func(ms int) time.Time { return base.Add(time.Duration(ms) * time.Millisecond) }
	ns := func(ms int) int64 { return int64(time.Duration(ms) * time.Millisecond) }
	h := hist(t, [3]int64{100, ns(10), ns(20)}, [3]int64{200, ns(30), ns(30)})
	m.set(h, replicaView{usable: true, replay: 100}, replicaView{usable: true, replay: 200})
	// A write at 25ms: the earliest check after it saw 200; only r1 has it.
	for _, p := range []Policy{PolicyRoundRobin, PolicyLeastOutstanding} {
		for range 5 {
			if i, ok := m.Pick(at(25), p, func(int) int { return 0 }); !ok || i != 1 {
				t.Fatalf("%v: picked %d, %v; want 1", p, i, ok)
			}
		}
	}
	if m.Eligible(0, at(25)) || !m.Eligible(1, at(25)) {
		t.Fatal("Eligible disagrees with the watermark")
	}
	// A write at 15ms: a check at 20ms saw 100: both have it.
	if !m.Eligible(0, at(15)) || !m.Eligible(1, at(15)) {
		t.Fatal("write at 15ms")
	}
	// A write after the newest check: nobody, until the primary is sampled again.
	if m.Eligible(1, at(31)) {
		t.Fatal("eligible without a primary sample after the write")
	}
	if _, ok := m.Pick(at(31), PolicyRoundRobin, nil); ok {
		t.Fatal("picked without a primary sample after the write")
	}
	// Sessions that did not write are unaffected.
	if !m.Eligible(0, time.Time{}) {
		t.Fatal("no write")
	}
	if w, ok := m.Watermark(at(25)); !ok || w != 200 {
		t.Fatalf("Watermark = %v, %v", w, ok)
	}
	// Out of range.
	if m.Eligible(-1, time.Time{}) || m.Eligible(2, time.Time{}) {
		t.Fatal("out of range eligible")
	}
}

func TestMarkDown(t *testing.T) {
	m := newTestMonitor(t, 2)
	for i := range 2 {
		m.recordReplica(i, m.now(), replicaResult{inRecovery: true, replay: 10, reported: -1}, nil)
	}
	if !m.Eligible(0, time.Time{}) || !m.Eligible(1, time.Time{}) {
		t.Fatalf("not eligible after a good check: %+v", m.Status())
	}
	sentBefore := m.now()
	m.MarkDown(0, errors.New("connection reset"))
	if m.Eligible(0, time.Time{}) {
		t.Fatal("eligible after MarkDown")
	}
	if st := m.Status()[0]; !st.Excluded || st.Healthy || st.Reason != "marked down: connection reset" {
		t.Fatalf("status %+v", st)
	}
	// A check that started before MarkDown does not bring it back.
	m.recordReplica(0, sentBefore, replicaResult{inRecovery: true, replay: 10, reported: -1}, nil)
	if m.Eligible(0, time.Time{}) {
		t.Fatal("eligible after a check that started before MarkDown")
	}
	m.mu.Lock()
	later := m.rstate[0].markedAt + 1
	m.mu.Unlock()
	m.recordReplica(0, later, replicaResult{inRecovery: true, replay: 10, reported: -1}, nil)
	if !m.Eligible(0, time.Time{}) {
		t.Fatalf("not back after a later check: %+v", m.Status()[0])
	}
	// Not in recovery.
	m.recordReplica(1, m.now(), replicaResult{inRecovery: false}, nil)
	if st := m.Status()[1]; !st.Excluded || st.Reason != "not in recovery" {
		t.Fatalf("promoted: %+v", st)
	}
}

func TestParsePolicy(t *testing.T) {
	for _, p := range []Policy{PolicyLeastOutstanding, PolicyRoundRobin} {
		got, err := ParsePolicy(p.String())
		if err != nil || got != p {
			t.Errorf("ParsePolicy(%q) = %v, %v", p.String(), got, err)
		}
	}
	if _, err := ParsePolicy("random"); !errors.Is(err, ErrBadConfig) {
		t.Errorf("bad policy: %v", err)
	}
}

func TestNewMonitorBadConnString(t *testing.T) {
	_, err := NewMonitor(Config{}, Node{Name: "p", ConnString: "postgres://%zz"}, nil)
	if !errors.Is(err, ErrBadConfig) {
		t.Fatalf("err = %v; want ErrBadConfig", err)
	}
}

func BenchmarkPick(b *testing.B) {
	m := newTestMonitor(b, 3)
	var h history
	for i := range historySize {
		h, _ = h.add(LSN(1000+i), int64(i)*int64(time.Millisecond))
	}
	m.set(h, replicaView{usable: true, replay: 2000}, replicaView{usable: true, replay: 1050}, replicaView{usable: false})
	out := func(i int) int { return i }
	wrote := m.epoch.Add(40 * time.Millisecond)
	b.ReportAllocs()
	b.Run("no-write/least-outstanding", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m.Pick(time.Time{}, PolicyLeastOutstanding, out)
		}
	})
	b.Run("wrote/least-outstanding", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m.Pick(wrote, PolicyLeastOutstanding, out)
		}
	})
	b.Run("wrote/round-robin", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m.Pick(wrote, PolicyRoundRobin, nil)
		}
	})
	b.Run("eligible", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			m.Eligible(0, wrote)
		}
	})
}

func TestPickAllocs(t *testing.T) {
	m := newTestMonitor(t, 3)
	h, _ := history{}.add(10, 0)
	m.set(h, replicaView{usable: true, replay: 20}, replicaView{usable: true, replay: 20}, replicaView{})
	out := func(i int) int { return i }
	wrote := m.epoch.Add(-time.Millisecond) // before the sample: the full path
	if !m.Eligible(1, wrote) {
		t.Fatal("setup: not eligible")
	}
	n := testing.AllocsPerRun(1000, func() {
		m.Pick(wrote, PolicyLeastOutstanding, out)
		m.Pick(time.Time{}, PolicyRoundRobin, nil)
		m.Eligible(1, wrote)
	})
	if n != 0 {
		t.Fatalf("%v allocations per run", n)
	}
}
