package shardmap

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves goroutines behind: a closed
// Store must have stopped raft, its transport and its waiters.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
