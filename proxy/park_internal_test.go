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

func TestReleaserRunsAfterAWaveOfParking(t *testing.T) {
	var r releaser
	now := time.Now()
	if r.after(releaseStep-1, now) || r.after(releaseStep-1, now) {
		t.Fatal("released below the step")
	}
	if r.after(releaseStep+5, now) {
		t.Fatal("released while the count still grows")
	}
	if !r.after(releaseStep+5, now) {
		t.Fatal("not released once the wave ended")
	}
	r.after(3*releaseStep, now.Add(releaseEvery/2))
	if r.after(3*releaseStep, now.Add(releaseEvery/2)) {
		t.Fatal("released twice within releaseEvery")
	}
	if !r.after(3*releaseStep, now.Add(releaseEvery)) {
		t.Fatal("not released after releaseEvery")
	}
	// Sessions woken lower the mark: a new wave releases again.
	r.after(10, now.Add(2*releaseEvery))
	r.after(10+releaseStep, now.Add(3*releaseEvery))
	if !r.after(10+releaseStep, now.Add(3*releaseEvery)) {
		t.Fatal("a second wave was not released")
	}
}
