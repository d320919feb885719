package shardmap

import (
	"bytes"
	"context"
	"errors"
	"github.com/pgshard/pgshard/internal/testutil"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func diskStore(t *testing.T, id, addr, dir string, bootstrap, join bool) *Store {
	t.Helper()
	cfg := StoreConfig{NodeID: id, RaftAddr: addr, DataDir: dir, Bootstrap: bootstrap, Join: join, Logger: testLogger(t)}
	fastTiming(&cfg)
	s, err := NewStore(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func openDisk(t *testing.T, id, addr, dir string, bootstrap, join bool) *Store {
	t.Helper()
	s := diskStore(t, id, addr, dir, bootstrap, join)
	if err := s.Open(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return s
}

// openErr opens a store expected to fail and returns the error.
func openErr(t *testing.T, dir string, bootstrap, join bool) error {
	t.Helper()
	s := diskStore(t, "n1", "127.0.0.1:0", dir, bootstrap, join)
	err := s.Open(ctxT(t, 10*time.Second))
	if err == nil {
		s.Close(context.Background())
		t.Fatalf("Open of %s succeeded", dir)
	}
	t.Logf("Open: %v", err)
	return err
}

func waitLeader(t *testing.T, s *Store) {
	t.Helper()
	testutil.WaitFor(t, 10*time.Second, s.ID()+" leadership", func() error {
		if !s.IsLeader() {
			return errors.New("not leader")
		}
		return nil
	})
}

// leaderOf waits until one of stores leads and returns it.
func leaderOf(t *testing.T, stores []*Store) *Store {
	t.Helper()
	var l *Store
	testutil.WaitFor(t, 10*time.Second, "a leader", func() error {
		for _, s := range stores {
			if s.IsLeader() {
				l = s
				return nil
			}
		}
		return errors.New("no leader")
	})
	return l
}

// copyDir copies a data dir (files and directories) for damage tests.
func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(to, 0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(to, b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestStoreDataDir(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "node1")

	// No directory and no intent: refused, and nothing is created.
	err := openErr(t, dir, false, false)
	if !errors.Is(err, ErrNoState) || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "bootstrap") {
		t.Fatalf("missing dir: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("Open created the data dir without bootstrap or join")
	}
	// An empty directory and no intent: refused with what to do.
	empty := filepath.Join(base, "empty")
	if err := os.Mkdir(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	err = openErr(t, empty, false, false)
	want := "no Raft state in " + empty + ": start with bootstrap to create a cluster, or join an existing one"
	if !errors.Is(err, ErrNoState) || !strings.Contains(err.Error(), want) {
		t.Fatalf("empty dir: %v", err)
	}
	// A file where the directory should be.
	file := filepath.Join(base, "file")
	os.WriteFile(file, []byte("x"), 0o600)
	if err := openErr(t, file, true, false); !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("file as data dir: %v", err)
	}

	// Bootstrap creates the directory and a one-node cluster.
	s := diskStore(t, "n1", "127.0.0.1:0", dir, true, false)
	if err := s.Open(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	waitLeader(t, s)
	ctx := ctxT(t, 10*time.Second)
	var m *Map
	for i, cmd := range historyLog() {
		got, err := s.Apply(ctx, cmd)
		if err == nil {
			m = got
		}
		if i == 6 {
			if err := s.Snapshot(); err != nil {
				t.Fatal(err)
			}
		}
	}
	want1 := mustJSON(t, m)
	addr := s.Addr()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"raft/raft.db", "snapshots"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Fatalf("data dir lacks %s: %v", p, err)
		}
	}

	// Restart without bootstrap (and again with it, which is ignored):
	// the same map, from snapshot plus log.
	for _, bootstrap := range []bool{false, true} {
		s = diskStore(t, "n1", addr, dir, bootstrap, false)
		if err := s.Open(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s.WaitForVersion(ctx, m.Version()); err != nil {
			t.Fatal(err)
		}
		if got := mustJSON(t, s.Map()); !bytes.Equal(got, want1) {
			t.Fatalf("after restart:\n%s\nwant\n%s", got, want1)
		}
		if srv, err := s.Servers(); err != nil || len(srv) != 1 {
			t.Fatalf("servers after restart: %+v %v", srv, err)
		}
		if err := s.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}

	// Damage: the Raft log file.
	bad := filepath.Join(base, "badlog")
	copyDir(t, dir, bad)
	db := filepath.Join(bad, "raft", "raft.db")
	if err := os.WriteFile(db, bytes.Repeat([]byte("garbage!"), 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, intent := range [][2]bool{{false, false}, {true, false}, {false, true}} {
		err := openErr(t, bad, intent[0], intent[1])
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), db) {
			t.Fatalf("corrupt raft.db: %v", err)
		}
	}

	// Damage: a truncated Raft log (bbolt itself would panic).
	bad = filepath.Join(base, "trunclog")
	copyDir(t, dir, bad)
	db = filepath.Join(bad, "raft", "raft.db")
	fi, err := os.Stat(db)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(db, min(fi.Size()/2, 3*4096)); err != nil {
		t.Fatal(err)
	}
	if err := openErr(t, bad, false, false); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), db) {
		t.Fatalf("truncated raft.db: %v", err)
	}

	// Damage: the snapshot's state (its CRC no longer matches).
	snaps, err := filepath.Glob(filepath.Join(dir, "snapshots", "*", "state.bin"))
	if err != nil || len(snaps) == 0 {
		t.Fatalf("no snapshot written: %v %v", snaps, err)
	}
	bad = filepath.Join(base, "badsnap")
	copyDir(t, dir, bad)
	state := filepath.Join(bad, "snapshots", filepath.Base(filepath.Dir(snaps[0])), "state.bin")
	b, _ := os.ReadFile(state)
	b[len(b)/2] ^= 0xff
	os.WriteFile(state, b, 0o600)
	if err := openErr(t, bad, false, false); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), state) {
		t.Fatalf("corrupt snapshot state: %v", err)
	}

	// Damage: the snapshot's metadata (the file store would skip it).
	bad = filepath.Join(base, "badmeta")
	copyDir(t, dir, bad)
	meta := filepath.Join(bad, "snapshots", filepath.Base(filepath.Dir(snaps[0])), "meta.json")
	os.WriteFile(meta, []byte("{not json"), 0o600)
	if err := openErr(t, bad, false, false); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), meta) {
		t.Fatalf("corrupt snapshot meta: %v", err)
	}

	// The undamaged original still opens.
	s = openDisk(t, "n1", addr, dir, false, false)
	if err := s.WaitForVersion(ctx, m.Version()); err != nil {
		t.Fatal(err)
	}
}

func TestClusterOnDiskTCP(t *testing.T) {
	base := t.TempDir()
	ids := []string{"n1", "n2", "n3"}
	dirs := make([]string, 3)
	addrs := make([]string, 3)
	stores := make([]*Store, 3)
	ctx := ctxT(t, 30*time.Second)
	for i, id := range ids {
		dirs[i] = filepath.Join(base, id)
		stores[i] = diskStore(t, id, "127.0.0.1:0", dirs[i], i == 0, i > 0)
		if err := stores[i].Open(ctx); err != nil {
			t.Fatal(err)
		}
		addrs[i] = stores[i].Addr()
		if !strings.HasPrefix(addrs[i], "127.0.0.1:") || strings.HasSuffix(addrs[i], ":0") {
			t.Fatalf("Addr() = %q", addrs[i])
		}
	}
	closeAll := func() {
		for _, s := range stores {
			if err := s.Close(ctx); err != nil {
				t.Error(err)
			}
		}
	}
	t.Cleanup(closeAll)
	waitLeader(t, stores[0])
	// On a loaded machine the leader can step down while the cluster
	// grows (a new voter slow to answer): retry through whoever leads.
	for i := 1; i < 3; i++ {
		for attempt := 0; ; attempt++ {
			err := leaderOf(t, stores).AddVoter(ctx, ids[i], addrs[i])
			if err == nil {
				break
			}
			if attempt < 5 && (errors.Is(err, ErrLeadershipLost) || errors.Is(err, ErrNotLeader)) {
				continue
			}
			t.Fatal(err)
		}
	}
	var m *Map
	for _, cmd := range historyLog() {
		for attempt := 0; ; attempt++ {
			got, err := leaderOf(t, stores).Apply(ctx, cmd)
			if err == nil {
				m = got
			}
			if attempt < 5 && (errors.Is(err, ErrLeadershipLost) || errors.Is(err, ErrNotLeader)) {
				continue // rejected commands stay rejected; lost ones are retried
			}
			break
		}
	}
	want := mustJSON(t, m)
	for _, s := range stores {
		if err := s.WaitForVersion(ctx, m.Version()); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(mustJSON(t, s.Map()), want) {
			t.Fatalf("%s differs", s.ID())
		}
	}
	if err := stores[1].Snapshot(); err != nil { // one node restarts from a snapshot
		t.Fatal(err)
	}

	// Restart every node: same map everywhere, and the cluster still works.
	closeAll()
	for i, id := range ids {
		stores[i] = diskStore(t, id, addrs[i], dirs[i], false, false)
		if err := stores[i].Open(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range stores {
		if err := s.WaitForVersion(ctx, m.Version()); err != nil {
			t.Fatal(err)
		}
		if got := mustJSON(t, s.Map()); !bytes.Equal(got, want) {
			t.Fatalf("%s after restart:\n%s\nwant\n%s", s.ID(), got, want)
		}
	}
	var leader *Store
	testutil.WaitFor(t, 10*time.Second, "a leader", func() error {
		for _, s := range stores {
			if s.IsLeader() {
				leader = s
				return nil
			}
		}
		return errors.New("no leader")
	})
	srv, err := leader.Servers()
	if err != nil || len(srv) != 3 {
		t.Fatalf("servers: %+v %v", srv, err)
	}
	m2, err := leader.Apply(ctx, AddShard(shard("s9"), 4))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range stores {
		if err := s.WaitForVersion(ctx, m2.Version()); err != nil {
			t.Fatal(err)
		}
	}
}
