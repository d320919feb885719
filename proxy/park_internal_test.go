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
