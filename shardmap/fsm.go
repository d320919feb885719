package shardmap

import (
	"fmt"
	"io"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// fsm is the Raft state machine: a thin adapter that holds the current *Map
// behind an atomic pointer. Apply decodes a command and swaps in the map
// Map.Apply returns (copy-on-write, so readers never lock and never see a
// half-applied change); Snapshot takes the pointer; Persist serialises it
// beside later Applies; Restore replaces the whole map.
//
// raft calls Apply and Restore from one goroutine, so the load-then-store in
// them does not race with itself.
type fsm struct {
	cur      atomic.Pointer[Map]
	onChange func(*Map) // called after every change, on the FSM goroutine
}

func newFSM(onChange func(*Map)) *fsm {
	f := &fsm{onChange: onChange}
	f.cur.Store(&Map{})
	return f
}

// applyResult is the response of a log entry: the new map, or why the
// command was rejected. A rejection is a normal outcome of a committed
// entry, not a failure of Raft.
type applyResult struct {
	m   *Map
	err error
}

func (f *fsm) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	cmd, err := DecodeCommand(l.Data)
	if err != nil {
		return &applyResult{err: err}
	}
	next, err := f.cur.Load().Apply(cmd)
	if err != nil {
		return &applyResult{err: err}
	}
	f.cur.Store(next)
	if f.onChange != nil {
		f.onChange(next)
	}
	return &applyResult{m: next}
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{m: f.cur.Load()}, nil
}

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("restore snapshot: read: %w", err)
	}
	m, err := DecodeMap(b)
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	f.cur.Store(m)
	if f.onChange != nil {
		f.onChange(m)
	}
	return nil
}

type fsmSnapshot struct{ m *Map }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	b, err := s.m.MarshalJSON()
	if err == nil {
		_, err = sink.Write(b)
	}
	if err != nil {
		sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return nil
}

func (s *fsmSnapshot) Release() {}
