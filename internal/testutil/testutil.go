// Package testutil holds the helpers that the tests of several packages
// share: waiting for a condition under a deadline instead of sleeping,
// checking that a package's tests leave no goroutine behind, and a pair of
// connected loopback TCP sockets.
package testutil

import (
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Interval is how often Poll and WaitFor call their condition.
const Interval = 10 * time.Millisecond

// Poll calls f every Interval until it returns nil, and returns nil then.
// When d has passed, it returns f's last error, wrapped with how long it
// waited. f runs at least once.
func Poll(d time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s: %w", d, err)
		}
		time.Sleep(Interval)
	}
}

// WaitFor is Poll that fails tb (Fatal) when f does not succeed within d,
// naming what it waited for. It returns how long the wait took. Call it
// from the test's goroutine only (it calls tb.Fatalf).
func WaitFor(tb testing.TB, d time.Duration, what string, f func() error) time.Duration {
	tb.Helper()
	start := time.Now()
	if err := Poll(d, f); err != nil {
		tb.Fatalf("waiting for %s: %v", what, err)
	}
	return time.Since(start)
}

// NoLeaks turns a passing test run's exit code into a failure when
// goroutines are left behind (every server a test started must have been
// shut down by its cleanup): for a TestMain, after m.Run.
func NoLeaks(code int) int {
	if code != 0 {
		return code
	}
	if err := goleak.Find(); err != nil {
		fmt.Fprintf(os.Stderr, "goroutines left after the tests: %v\n", err)
		return 1
	}
	return 0
}

// TCPPair returns the two ends of a loopback TCP connection, closed when
// the test ends.
func TCPPair(tb testing.TB) (client, server net.Conn) {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		client.Close()
		tb.Fatal(err)
	}
	tb.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}
