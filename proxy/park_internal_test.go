package proxy

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"
	"unsafe"

	"github.com/pgshard/pgshard/internal/rawio"
	"github.com/pgshard/pgshard/internal/testutil"
)

// TestClientSourceIgnoresDeadlinesOutsideTheWait: a read other than the
// session loop's wait for a new message reads on through the sweeper's
// deadline; the wait itself sees it.
func TestClientSourceIgnoresDeadlinesOutsideTheWait(t *testing.T) {
	t.Run("pipe", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		testClientSourceDeadlines(t, a, b)
	})
	t.Run("tcp", func(t *testing.T) { // raw system calls (rawio)
		b, a := testutil.TCPPair(t)
		testClientSourceDeadlines(t, a, b)
	})
}

func testClientSourceDeadlines(t *testing.T, a, b net.Conn) {
	src := &clientSource{rw: rawio.New(a)}
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
	if _, err := src.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the wait for a new message did not see the deadline: %v", err)
	}
}

func TestReleaserRunsAfterAWave(t *testing.T) {
	var r releaser
	now := time.Now()
	sec := func(n int) time.Time { return now.Add(time.Duration(n) * time.Second) }
	// A wave of clients: running sessions rise, then park or leave.
	r.after(10, 0, now)
	r.after(12+releaseStep, 0, now)
	if r.after(12, 5, now) {
		t.Fatal("released while the wave still ebbs")
	}
	if !r.after(12, 5, now) {
		t.Fatal("not released once the wave ended")
	}
	// Below the step nothing happens.
	r.after(12+releaseStep/2, 5, sec(1))
	r.after(12, 5, sec(1))
	if r.after(12, 5, sec(1)) {
		t.Fatal("released after a wave below the step")
	}
	// At most once per releaseEvery.
	r.after(12+2*releaseStep, 5, sec(2))
	r.after(5, 5, sec(2))
	if r.after(5, 5, sec(2)) {
		t.Fatal("released twice within releaseEvery")
	}
	if !r.after(5, 5, now.Add(releaseEvery)) {
		t.Fatal("not released after releaseEvery")
	}
	// A slow wave of clients going idle: few run at once, many park.
	for p := 5; p <= 5+releaseStep; p += 100 {
		if r.after(20, p, now.Add(2*releaseEvery)) {
			t.Fatal("released while sessions still park")
		}
	}
	if !r.after(20, 5+releaseStep, now.Add(2*releaseEvery)) {
		t.Fatal("a slow wave of parking was not released")
	}
}

// A parked session is mostly its struct (README: idle clients): it stays
// within the allocator's 1152-byte size class; 8 bytes more cost every
// idle client 128 (the next class), as the session loop's rawio.Inside
// once did (3771 → 4005 bytes per idle client at 10,000).
func TestSessionFitsItsSizeClass(t *testing.T) {
	if n := unsafe.Sizeof(session{}); n > 1152 {
		t.Fatalf("session is %d bytes, over the 1152-byte size class", n)
	}
}
