//go:build linux

package parking

import (
	"net"
	"sync"
	"testing"
	"time"
)

// pair returns the two ends of a loopback TCP connection.
func pair(t *testing.T, ln net.Listener) (client, server *net.TCPConn) {
	t.Helper()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

func startLot(t *testing.T) *Lot {
	t.Helper()
	l, err := New()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- l.Run() }()
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return l
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func waitWake(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: not woken", what)
	}
}

func noWake(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
		t.Fatalf("%s: woken", what)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestWakesOnDataHangupAndPendingBytes(t *testing.T) {
	l := startLot(t)
	ln := listen(t)

	// Data sent after Park wakes, once; the bytes are still there to read.
	c, s := pair(t, ln)
	woke := make(chan struct{}, 2)
	if _, err := l.Park(s, func() { woke <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	noWake(t, woke, "idle socket")
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	waitWake(t, woke, "data")
	buf := make([]byte, 5)
	if _, err := s.Read(buf); err != nil || string(buf) != "hello" {
		t.Fatalf("read %q, %v", buf, err)
	}
	if _, err := c.Write([]byte("again")); err != nil {
		t.Fatal(err)
	}
	noWake(t, woke, "a spot already woken")
	if l.Len() != 0 {
		t.Fatalf("Len = %d after the wake", l.Len())
	}

	// Bytes that arrived before Park wake at once.
	c2, s2 := pair(t, ln)
	if _, err := c2.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	woke2 := make(chan struct{}, 1)
	if _, err := l.Park(s2, func() { woke2 <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	waitWake(t, woke2, "pending bytes")

	// The peer hanging up wakes.
	c3, s3 := pair(t, ln)
	woke3 := make(chan struct{}, 1)
	if _, err := l.Park(s3, func() { woke3 <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	c3.Close()
	waitWake(t, woke3, "hang-up")
}

func TestUnparkedSocketIsNotWoken(t *testing.T) {
	l := startLot(t)
	ln := listen(t)
	c, s := pair(t, ln)
	woke := make(chan struct{}, 1)
	sp, err := l.Park(s, func() { woke <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	if !l.Unpark(sp) {
		t.Fatal("Unpark of a parked socket returned false")
	}
	if l.Unpark(sp) {
		t.Fatal("second Unpark returned true")
	}
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	noWake(t, woke, "unparked socket")

	// Unpark after the wake reports false.
	c2, s2 := pair(t, ln)
	woke2 := make(chan struct{}, 1)
	sp2, err := l.Park(s2, func() { woke2 <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	c2.Write([]byte("x"))
	waitWake(t, woke2, "data")
	if l.Unpark(sp2) {
		t.Fatal("Unpark after the wake returned true")
	}
}

// TestManySockets parks a thousand sockets and wakes each exactly once,
// with Unpark racing the wakes on half of them: every socket is either
// woken or unparked, never both, never neither.
func TestManySockets(t *testing.T) {
	l := startLot(t)
	ln := listen(t)
	const n = 1000
	var mu sync.Mutex
	woken := map[int]int{}
	clients := make([]*net.TCPConn, n)
	spots := make([]*Spot, n)
	for i := range n {
		c, s := pair(t, ln)
		clients[i] = c
		sp, err := l.Park(s, func() { mu.Lock(); woken[i]++; mu.Unlock() })
		if err != nil {
			t.Fatal(err)
		}
		spots[i] = sp
	}
	if l.Len() != n {
		t.Fatalf("Len = %d, want %d", l.Len(), n)
	}
	unparked := map[int]bool{}
	for i, c := range clients {
		c.Write([]byte("x"))
		if i%2 == 0 && l.Unpark(spots[i]) {
			unparked[i] = true
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		got := len(woken)
		mu.Unlock()
		if got+len(unparked) == n || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	for i := range n {
		switch {
		case woken[i] > 1:
			t.Errorf("socket %d woken %d times", i, woken[i])
		case woken[i] == 1 && unparked[i]:
			t.Errorf("socket %d woken and unparked", i)
		case woken[i] == 0 && !unparked[i]:
			t.Errorf("socket %d neither woken nor unparked", i)
		}
	}
	if l.Len() != 0 {
		t.Errorf("Len = %d at the end", l.Len())
	}
}

func TestParkAfterCloseFails(t *testing.T) {
	l, err := New()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	ln := listen(t)
	_, s := pair(t, ln)
	if _, err := l.Park(s, func() {}); err != ErrClosed {
		t.Fatalf("Park after Close: %v, want ErrClosed", err)
	}
	if err := l.Run(); err != ErrClosed {
		t.Fatalf("Run after Close: %v, want ErrClosed", err)
	}
}
