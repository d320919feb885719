package testutil

import (
	"errors"
	"testing"
	"time"
)

func TestPoll(t *testing.T) {
	n := 0
	if err := Poll(time.Second, func() error {
		n++
		if n < 3 {
			return errors.New("not yet")
		}
		return nil
	}); err != nil || n != 3 {
		t.Fatalf("Poll = %v after %d calls, want nil after 3", err, n)
	}
	errNever := errors.New("never")
	err := Poll(30*time.Millisecond, func() error { return errNever })
	if !errors.Is(err, errNever) {
		t.Fatalf("Poll = %v, want it to wrap the last error", err)
	}
}
