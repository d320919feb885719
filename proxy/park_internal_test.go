package proxy

import (
	"net"
	"testing"
	"time"
)

// TestClientSourceIgnoresDeadlinesOutsideTheWait: a read other than the
// session loop's wait for a new message reads on through the sweeper's
// deadline; the wait itself sees it.
func TestClientSourceIgnoresDeadlinesOutsideTheWait(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	src := &clientSource{conn: a}
	if err := a.SetReadDeadline(time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		b.Write([]byte("hi"))
	}()
	buf := make([]byte, 2)
	if n, err := src.Read(buf); err != nil || string(buf[:n]) != "hi" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	src.parkable = true
	if err := a.SetReadDeadline(time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
	if _, err := src.Read(buf); err == nil {
		t.Fatal("the wait for a new message did not see the deadline")
	}
}

func TestReleaserRunsAfterAWave(t *testing.T) {
	var r releaser
	now := time.Now()
	// A wave of clients: running sessions rise, then park or leave.
	r.after(10, now)
	r.after(12+releaseStep, now)
	if r.after(12, now) {
		t.Fatal("released while the wave still ebbs")
	}
	if !r.after(12, now) {
		t.Fatal("not released once the wave ended")
	}
	// Below the step nothing happens.
	sec := func(n int) time.Time { return now.Add(time.Duration(n) * time.Second) }
	r.after(12+releaseStep/2, sec(1))
	r.after(12, sec(1))
	if r.after(12, sec(1)) {
		t.Fatal("released after a wave below the step")
	}
	// At most once per releaseEvery.
	r.after(12+2*releaseStep, sec(2))
	r.after(5, sec(2))
	if r.after(5, sec(2)) {
		t.Fatal("released twice within releaseEvery")
	}
	if !r.after(5, now.Add(releaseEvery)) {
		t.Fatal("not released after releaseEvery")
	}
}
