package rawio

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/pgshard/pgshard/internal/testutil"
)

// A write larger than the socket buffers completes through the poller
// (EAGAIN, wait, go on) and the peer reads every byte in order.
func TestWriteAllThroughFullBuffers(t *testing.T) {
	c, s := testutil.TCPPair(t)
	w := New(c)
	if w.rc == nil {
		t.Fatal("a TCP connection should use raw writes")
	}
	want := make([]byte, 32<<20)
	for i := range want {
		want[i] = byte(i * 7)
	}
	got := make(chan []byte, 1)
	go func() {
		time.Sleep(100 * time.Millisecond) // let the buffers fill first
		b, _ := io.ReadAll(s)
		got <- b
	}()
	n, err := w.Write(want)
	if err != nil || n != len(want) {
		t.Fatalf("Write: %d, %v", n, err)
	}
	c.Close()
	if b := <-got; !bytes.Equal(b, want) {
		t.Fatalf("peer read %d bytes, not what was written", len(b))
	}
}

// A write deadline holds as for net.Conn: a write blocked on a full buffer
// fails with os.ErrDeadlineExceeded.
func TestWriteDeadline(t *testing.T) {
	c, _ := testutil.TCPPair(t)
	w := New(c)
	_ = c.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	start := time.Now()
	n, err := w.Write(make([]byte, 64<<20)) // nobody reads
	if !errors.Is(err, os.ErrDeadlineExceeded) || n >= 64<<20 {
		t.Fatalf("Write: %d, %v; want a deadline error", n, err)
	}
	if time.Since(start) > 30*time.Second {
		t.Fatalf("deadline not kept: %s", time.Since(start))
	}
}

// Writing to a peer that reset the connection fails with ECONNRESET or
// EPIPE (no SIGPIPE ends the process), and after Close with net.ErrClosed.
func TestWriteErrors(t *testing.T) {
	c, s := testutil.TCPPair(t)
	w := New(c)
	_ = s.(*net.TCPConn).SetLinger(0)
	s.Close() // RST
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		_, err = w.Write([]byte("hello"))
		time.Sleep(10 * time.Millisecond)
	}
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("write after reset: %v", err)
	}
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "write" {
		t.Fatalf("error %v is not a write *net.OpError", err)
	}
	c.Close()
	if _, err := w.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after Close: %v", err)
	}
}

// Other connections (pipes, TLS) are written through their Write method.
func TestWriteFallback(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	w := New(a)
	if w.rc != nil {
		t.Fatal("a pipe has no raw writes")
	}
	go func() { _, _ = w.Write([]byte("ping")) }()
	buf := make([]byte, 4)
	if _, err := io.ReadFull(b, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read %q, %v", buf, err)
	}
}

// Reads see the bytes written in order, then io.EOF when the peer closes;
// a read deadline ends a read waiting for bytes with os.ErrDeadlineExceeded.
func TestRead(t *testing.T) {
	c, s := testutil.TCPPair(t)
	r := New(c)
	if r.rc == nil {
		t.Fatal("a TCP connection should use raw reads")
	}
	_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	buf := make([]byte, 64)
	if n, err := r.Read(buf); n != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read with nothing sent: %d, %v; want a deadline error", n, err)
	}
	_ = c.SetReadDeadline(time.Time{})
	want := make([]byte, 8<<20)
	for i := range want {
		want[i] = byte(i * 13)
	}
	go func() {
		time.Sleep(50 * time.Millisecond) // the reader waits on the poller first
		_, _ = s.Write(want)
		s.Close()
	}()
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes (%v), want the %d written", len(got), err, len(want))
	}
	if n, err := r.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("read after EOF: %d, %v", n, err)
	}
	c.Close()
	if _, err := r.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after Close: %v", err)
	}
}

// A write and the read of it allocate nothing.
func TestNoAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	c, s := testutil.TCPPair(t)
	w, r := New(c), New(s)
	msg, buf := []byte("Q\x00\x00\x00\x0dSELECT 1\x00"), make([]byte, 64)
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := w.Write(msg); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < len(msg); {
			n, err := r.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per write and read, want 0", allocs)
	}
}

// ReadEach waits after a short read instead of reading again when the
// callback says the peer waits, so it must never miss bytes that arrive
// while it delivers or just before it waits: a peer sends many small
// pieces at irregular moments, some while the callback is busy, and every
// byte arrives, in order, without a stall. The callback says "wait" until
// the last piece; the peer closes after it, and ReadEach returns EOF.
func TestReadEachLosesNoWakeUp(t *testing.T) {
	for _, conns := range []string{"tcp", "pipe"} {
		t.Run(conns, func(t *testing.T) {
			var a, b net.Conn
			if conns == "tcp" {
				a, b = testutil.TCPPair(t)
			} else {
				a, b = net.Pipe()
				t.Cleanup(func() { a.Close(); b.Close() })
			}
			const pieces = 3000
			go func() {
				for i := range pieces {
					if _, err := a.Write([]byte{byte(i), byte(i >> 8)}); err != nil {
						return
					}
					if i%7 == 0 {
						time.Sleep(time.Duration(i%5) * 100 * time.Microsecond)
					}
				}
				a.Close()
			}()
			rw := New(b)
			buf := make([]byte, 64)
			var got []byte
			done := make(chan error, 1)
			go func() {
				done <- rw.ReadEach(func() []byte { return buf }, func(n int) (bool, error) {
					got = append(got, buf[:n]...)
					if len(got)%13 == 0 {
						time.Sleep(50 * time.Microsecond) // busy delivering
					}
					return len(got) < 2*pieces, nil
				})
			}()
			select {
			case err := <-done:
				if !errors.Is(err, io.EOF) {
					t.Fatalf("ReadEach ended with %v, want EOF", err)
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("ReadEach stalled after %d of %d bytes", len(got), 2*pieces)
			}
			if len(got) != 2*pieces {
				t.Fatalf("%d bytes, want %d", len(got), 2*pieces)
			}
			for i := range pieces {
				if got[2*i] != byte(i) || got[2*i+1] != byte(i>>8) {
					t.Fatalf("piece %d out of order", i)
				}
			}
		})
	}
}

// An error from the callback ends ReadEach with it; Shutdown, even from
// inside the callback (where Close would wait for the callback), ends it
// with EOF; an end of stream queued right behind bytes after which the
// callback does not say "wait" is read at once.
func TestReadEachEnds(t *testing.T) {
	a, b := testutil.TCPPair(t)
	rw := New(b)
	stop := errors.New("stop")
	if _, err := a.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	if err := rw.ReadEach(func() []byte { return buf }, func(int) (bool, error) { return true, stop }); err != stop {
		t.Fatalf("got %v, want the callback's error", err)
	}
	if _, err := a.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- rw.ReadEach(func() []byte { return buf }, func(int) (bool, error) { return true, rw.Shutdown() })
	}()
	select {
	case err := <-done:
		if !errors.Is(err, io.EOF) {
			t.Fatalf("after Shutdown: %v, want EOF", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown inside the callback did not end ReadEach")
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close after ReadEach: %v", err)
	}

	c, d := testutil.TCPPair(t)
	if _, err := c.Write([]byte("last words")); err != nil {
		t.Fatal(err)
	}
	c.Close()
	time.Sleep(50 * time.Millisecond) // bytes and FIN both queued before the first read
	go func() {
		done <- New(d).ReadEach(func() []byte { return buf }, func(int) (bool, error) { return false, nil })
	}()
	select {
	case err := <-done:
		if !errors.Is(err, io.EOF) {
			t.Fatalf("queued end of stream: %v, want EOF", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("an end of stream queued behind the bytes was not read")
	}
}

// Inside Serve a step reads what is there with TryRead and waits for the
// rest with Read, on a second descriptor that is closed when the step
// next asks to wait. The connection's read deadline ends Serve's own wait
// (the session sweeper's request to park); Shutdown from another
// goroutine ends a wait inside a step with EOF.
func TestServeReadsAndWaitsInside(t *testing.T) {
	fds := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Skip("no /proc/self/fd")
		}
		return len(ents)
	}
	a, b := testutil.TCPPair(t)
	rw := New(b)
	if _, err := a.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	rest := make(chan struct{})
	go func() {
		<-rest
		time.Sleep(50 * time.Millisecond) // the step's Read finds nothing and waits
		_, _ = a.Write([]byte("world"))
	}()
	before := fds()
	var got []byte
	waiting := 0 // descriptors while the step waited inside
	buf := make([]byte, 10)
	var in Inside
	err := rw.Serve(&in, func() (bool, error) {
		if !in.Active() {
			t.Fatal("step outside Serve's read")
		}
		if len(got) == 10 {
			_ = b.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			return true, nil
		}
		n, err := in.TryRead(buf)
		if err == ErrWouldBlock {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		got = append(got, buf[:n]...)
		close(rest)
		for len(got) < 10 {
			n, err := in.Read(buf[:10-len(got)])
			if err != nil {
				return false, err
			}
			got = append(got, buf[:n]...)
			waiting = fds()
		}
		return false, nil
	})
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Serve ended with %v, want the deadline", err)
	}
	if string(got) != "helloworld" {
		t.Fatalf("read %q", got)
	}
	if waiting != before+1 {
		t.Fatalf("%d descriptors while waiting inside, want %d (one more)", waiting, before+1)
	}
	if n := fds(); n != before {
		t.Fatalf("%d descriptors after Serve, want %d", n, before)
	}
	if in.Active() {
		t.Fatal("Inside still active after Serve")
	}

	_ = b.SetReadDeadline(time.Time{})
	go func() {
		time.Sleep(50 * time.Millisecond)
		_ = rw.Shutdown()
	}()
	done := make(chan error, 1)
	go func() {
		done <- rw.Serve(&in, func() (bool, error) {
			_, err := in.Read(buf)
			return false, err
		})
	}()
	select {
	case err := <-done:
		if !errors.Is(err, io.EOF) {
			t.Fatalf("after Shutdown: %v, want EOF", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not end a wait inside a step")
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close after Serve: %v", err)
	}
}
