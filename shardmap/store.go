package shardmap

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	bolt "go.etcd.io/bbolt"
)

// StoreConfig configures a Store. NodeID and, unless InMemory, DataDir are
// required; RaftAddr is required unless Transport is given.
type StoreConfig struct {
	// NodeID is this node's Raft server ID, stable across restarts.
	NodeID string
	// RaftAddr is the host:port the TCP transport listens on and that
	// other members dial ("127.0.0.1:0" picks a free port; see Addr). It
	// must not be an unspecified address such as 0.0.0.0.
	RaftAddr string
	// DataDir holds the Raft log and stable store (DataDir/raft/raft.db,
	// BoltDB) and the snapshots (DataDir/snapshots).
	DataDir string
	// Bootstrap creates a new single-voter cluster of this node when the
	// data dir holds no Raft state. Ignored when there is state.
	Bootstrap bool
	// Join starts a node without Raft state that waits for a leader to add
	// it (the leader's AddVoter/AddNonvoter). Ignored when there is state.
	// Without Bootstrap or Join, Open refuses a data dir with no state.
	Join bool
	// Logger receives the store's and raft's logs; nil means slog.Default().
	Logger *slog.Logger

	// Transport replaces the TCP transport (tests: raft.NewInmemTransport).
	// The caller keeps ownership: Close does not close it.
	Transport raft.Transport
	// InMemory keeps log, stable and snapshot stores in memory instead of
	// DataDir (tests). Inmem, when set, supplies those stores so a node can
	// be restarted on the same state; it implies InMemory.
	InMemory bool
	Inmem    *InmemStores

	// Raft timing; zero values take raft's defaults. Tests use ~50 ms.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	// SnapshotThreshold is the number of new log entries that triggers a
	// snapshot (raft's default 8192 when zero); SnapshotInterval how often
	// raft checks; TrailingLogs how many entries stay after a snapshot.
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	TrailingLogs      uint64
	// ApplyTimeout bounds Apply and membership changes when the context has
	// no deadline; default 10 s.
	ApplyTimeout time.Duration
}

// InmemStores are in-memory Raft stores that outlive a Store, so a test can
// stop a node and open it again on the same state.
type InmemStores struct {
	Log  *raft.InmemStore // log and stable store
	Snap *raft.InmemSnapshotStore
}

// NewInmemStores returns empty in-memory stores.
func NewInmemStores() *InmemStores {
	return &InmemStores{Log: raft.NewInmemStore(), Snap: raft.NewInmemSnapshotStore()}
}

// ServerInfo is one member of the Raft configuration.
type ServerInfo struct {
	ID       string `json:"id"`
	Addr     string `json:"addr"`
	Suffrage string `json:"suffrage"` // "voter", "nonvoter" or "staging"
	Leader   bool   `json:"leader"`
}

// Store is a Raft member holding the replicated shard map. Lifecycle:
// NewStore → Open → (Apply, Map, Watch, membership …) → Close. Map and
// Watch read the local copy and work on every member; Apply and the
// membership changes work only on the leader (ErrNotLeader elsewhere).
// A Store can be opened again after Close.
type Store struct {
	cfg    StoreConfig
	logger *slog.Logger
	fsm    *fsm

	mu      sync.RWMutex // guards raft, closers (open/close vs. users)
	raft    *raft.Raft
	trans   raft.Transport
	closers []func() error
	wg      sync.WaitGroup // goroutines waiting on raft futures

	wmu      sync.Mutex
	watchers map[int]chan *Map
	nextW    int
	changed  chan struct{} // closed and replaced after every map change
}

// NewStore checks cfg and returns a store that is not open yet.
func NewStore(cfg StoreConfig) (*Store, error) {
	if err := checkName("node", cfg.NodeID); err != nil {
		return nil, fmt.Errorf("new store: node ID: %w", err)
	}
	if cfg.Inmem != nil {
		cfg.InMemory = true
	}
	if !cfg.InMemory && cfg.DataDir == "" {
		return nil, errors.New("new store: no data dir")
	}
	if cfg.Transport == nil && cfg.RaftAddr == "" {
		return nil, errors.New("new store: no Raft address")
	}
	if cfg.ApplyTimeout <= 0 {
		cfg.ApplyTimeout = 10 * time.Second
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	s := &Store{
		cfg:      cfg,
		logger:   logger.With("node", cfg.NodeID),
		watchers: map[int]chan *Map{},
		changed:  make(chan struct{}),
	}
	s.fsm = newFSM(s.notify)
	return s, nil
}

// Open opens (or creates) the Raft state and starts the Raft member:
//
//   - DataDir with Raft state: the node resumes with its log, snapshots and
//     configuration; Bootstrap and Join are ignored.
//   - no state and Bootstrap: a new cluster with this node as its only
//     voter (the directory is created if missing).
//   - no state and Join: the node starts empty and waits to be added by
//     the leader.
//   - no state (or no directory) and neither: ErrNoState.
//
// A log store or snapshot that cannot be read fails with ErrCorrupt naming
// the file, never with an empty map.
func (s *Store) Open(ctx context.Context) (err error) {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.raft != nil {
		return errors.New("open store: already open")
	}
	defer func() {
		if err != nil {
			s.runClosers()
		}
	}()
	hl := newHclogger(s.logger, "raft")

	var (
		logs   raft.LogStore
		stable raft.StableStore
		snaps  raft.SnapshotStore
		where  string
	)
	if s.cfg.InMemory {
		st := s.cfg.Inmem
		if st == nil {
			st = NewInmemStores()
		}
		logs, stable, snaps, where = st.Log, st.Log, st.Snap, "memory"
	} else {
		dir := s.cfg.DataDir
		where = dir
		fi, err := os.Stat(dir)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if !s.cfg.Bootstrap && !s.cfg.Join {
				return fmt.Errorf("open store: data dir %s does not exist: start with bootstrap to create a cluster, or join an existing one: %w", dir, ErrNoState)
			}
		case err != nil:
			return fmt.Errorf("open store: %w", err)
		case !fi.IsDir():
			return fmt.Errorf("open store: data dir %s is not a directory", dir)
		}
		raftDir := filepath.Join(dir, "raft")
		if err := os.MkdirAll(raftDir, 0o700); err != nil {
			return fmt.Errorf("open store: %w", err)
		}
		dbPath := filepath.Join(raftDir, "raft.db")
		if err := checkBolt(dbPath); err != nil {
			return err
		}
		bs, err := raftboltdb.New(raftboltdb.Options{Path: dbPath, BoltOptions: &bolt.Options{Timeout: time.Second}})
		if err != nil {
			return boltOpenError(dbPath, err)
		}
		s.closers = append(s.closers, bs.Close)
		fss, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, hl)
		if err != nil {
			return fmt.Errorf("open store: snapshot store: %w", err)
		}
		if err := checkSnapshots(filepath.Join(dir, "snapshots"), fss); err != nil {
			return fmt.Errorf("open store: %w", err)
		}
		logs, stable, snaps = bs, bs, fss
	}

	has, err := raft.HasExistingState(logs, stable, snaps)
	if err != nil {
		return fmt.Errorf("open store: read Raft state in %s: %w: %w", where, ErrCorrupt, err)
	}
	if !has && !s.cfg.Bootstrap && !s.cfg.Join {
		return fmt.Errorf("open store: no Raft state in %s: start with bootstrap to create a cluster, or join an existing one: %w", where, ErrNoState)
	}

	trans := s.cfg.Transport
	if trans == nil {
		nt, err := raft.NewTCPTransportWithLogger(s.cfg.RaftAddr, nil, 3, 10*time.Second, hl)
		if err != nil {
			return fmt.Errorf("open store: Raft transport on %s: %w", s.cfg.RaftAddr, err)
		}
		s.closers = append(s.closers, func() error {
			// Close pooled outbound connections too, so the peers'
			// handlers of those connections end now, not at their next read.
			nt.CloseStreams()
			return nt.Close()
		})
		trans = nt
	}

	conf := raft.DefaultConfig()
	conf.LocalID = raft.ServerID(s.cfg.NodeID)
	conf.Logger = hl
	setDur(&conf.HeartbeatTimeout, s.cfg.HeartbeatTimeout)
	setDur(&conf.ElectionTimeout, s.cfg.ElectionTimeout)
	setDur(&conf.LeaderLeaseTimeout, s.cfg.LeaderLeaseTimeout)
	setDur(&conf.CommitTimeout, s.cfg.CommitTimeout)
	setDur(&conf.SnapshotInterval, s.cfg.SnapshotInterval)
	if s.cfg.SnapshotThreshold > 0 {
		conf.SnapshotThreshold = s.cfg.SnapshotThreshold
	}
	if s.cfg.TrailingLogs > 0 {
		conf.TrailingLogs = s.cfg.TrailingLogs
	}
	if err := raft.ValidateConfig(conf); err != nil {
		return fmt.Errorf("open store: %w", err)
	}

	if !has && s.cfg.Bootstrap {
		cfg := raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: conf.LocalID, Address: trans.LocalAddr()}}}
		if err := raft.BootstrapCluster(conf, logs, stable, snaps, trans, cfg); err != nil {
			return fmt.Errorf("open store: bootstrap: %w", err)
		}
		s.logger.Info("bootstrapped a new Raft cluster", "addr", trans.LocalAddr(), "dir", where)
	}

	s.fsm.cur.Store(&Map{})
	r, err := raft.NewRaft(conf, s.fsm, logs, stable, snaps, trans)
	if err != nil {
		return fmt.Errorf("open store: start Raft on %s: %w", where, err)
	}
	s.raft, s.trans = r, trans
	s.logger.Info("Raft member started", "addr", trans.LocalAddr(), "existing_state", has)
	return nil
}

func setDur(dst *time.Duration, v time.Duration) {
	if v > 0 {
		*dst = v
	}
}

// boltOpenError explains a failure to open the BoltDB log store.
func boltOpenError(path string, err error) error {
	switch {
	case errors.Is(err, bolt.ErrInvalid), errors.Is(err, bolt.ErrChecksum), errors.Is(err, bolt.ErrVersionMismatch):
		return fmt.Errorf("open store: Raft log %s is not a valid BoltDB file (restore the data dir from a backup, or remove it and re-join the node): %w: %w", path, ErrCorrupt, err)
	case errors.Is(err, bolt.ErrTimeout):
		return fmt.Errorf("open store: Raft log %s is locked (is another pgshard using this data dir?): %w", path, err)
	}
	return fmt.Errorf("open store: Raft log %s: %w", path, err)
}

// checkBolt reads every key and value of an existing BoltDB file before raft
// uses it. bbolt panics (or faults on its memory map) on some damaged files,
// e.g. a truncated one; here that becomes ErrCorrupt naming the file instead
// of a crashed process.
func checkBolt(path string) (err error) {
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("open store: Raft log %s is damaged (restore the data dir from a backup, or remove it and re-join the node): %w: %v", path, ErrCorrupt, r)
		}
	}()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		return boltOpenError(path, err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(_ []byte, b *bolt.Bucket) error {
			return b.ForEach(func(k, v []byte) error {
				crc32.ChecksumIEEE(k)
				crc32.ChecksumIEEE(v)
				return nil
			})
		})
	})
	if err != nil {
		return fmt.Errorf("open store: Raft log %s: %w: %w", path, ErrCorrupt, err)
	}
	return nil
}

// checkSnapshots makes sure every snapshot raft would consider is readable
// and holds a valid map, so a damaged one fails the start with its file
// name instead of being skipped (the file store skips snapshots whose
// metadata does not parse, and raft falls back to older ones).
func checkSnapshots(dir string, fss *raft.FileSnapshotStore) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read snapshots: %w", err)
	}
	metas, err := fss.List()
	if err != nil {
		return fmt.Errorf("list snapshots in %s: %w", dir, err)
	}
	listed := map[string]bool{}
	for _, m := range metas {
		listed[m.ID] = true
	}
	for _, e := range entries {
		if !e.IsDir() || strings.HasSuffix(e.Name(), ".tmp") || listed[e.Name()] {
			continue
		}
		return fmt.Errorf("snapshot %s: unreadable metadata: %w", filepath.Join(dir, e.Name(), "meta.json"), ErrCorrupt)
	}
	for _, m := range metas {
		state := filepath.Join(dir, m.ID, "state.bin")
		_, rc, err := fss.Open(m.ID)
		if err != nil {
			return fmt.Errorf("snapshot %s: %w: %w", state, ErrCorrupt, err)
		}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("snapshot %s: %w: %w", state, ErrCorrupt, err)
		}
		if _, err := DecodeMap(b); err != nil {
			return fmt.Errorf("snapshot %s: %w", state, err)
		}
	}
	return nil
}

func (s *Store) runClosers() {
	for i := len(s.closers) - 1; i >= 0; i-- {
		if err := s.closers[i](); err != nil {
			s.logger.Warn("close", "error", err)
		}
	}
	s.closers = nil
}

// Close stops the Raft member, waits for every goroutine the store started
// and closes its files and transport. Watch channels are closed. Closing a
// store that is not open does nothing.
func (s *Store) Close(ctx context.Context) error {
	s.mu.Lock()
	r := s.raft
	s.raft, s.trans = nil, nil
	s.mu.Unlock()
	if r == nil {
		return nil
	}
	var errs []error
	if err := r.Shutdown().Error(); err != nil {
		errs = append(errs, fmt.Errorf("close store: shut Raft down: %w", err))
	}
	s.wg.Wait()
	s.mu.Lock()
	s.runClosers()
	s.mu.Unlock()
	s.wmu.Lock()
	for id, ch := range s.watchers {
		close(ch)
		delete(s.watchers, id)
	}
	s.wmu.Unlock()
	return errors.Join(errs...)
}

// hold returns the open raft and counts the caller in s.wg, so Close waits
// for it; release with s.wg.Done.
func (s *Store) hold() (*raft.Raft, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.raft == nil {
		return nil, ErrClosed
	}
	s.wg.Add(1)
	return s.raft, nil
}

func (s *Store) current() *raft.Raft {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.raft
}

// notify runs on the FSM goroutine after every change.
func (s *Store) notify(m *Map) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	for _, ch := range s.watchers {
		select { // drop an unread older map: watchers want the latest
		case <-ch:
		default:
		}
		ch <- m // cannot block: capacity 1, emptied above, only we send
	}
	close(s.changed)
	s.changed = make(chan struct{})
}

// Map returns the local copy of the map: no round trip, possibly behind the
// leader's. Never nil (an empty map at version 0 before anything).
func (s *Store) Map() *Map { return s.fsm.cur.Load() }

// Watch returns a channel that receives the current map at once and then
// the map after every change (Apply of a command or a snapshot restore). A
// slow reader skips intermediate maps and always gets the latest. The
// channel is closed by cancel or Close; call cancel when done.
func (s *Store) Watch() (<-chan *Map, func()) {
	ch := make(chan *Map, 1)
	s.wmu.Lock()
	id := s.nextW
	s.nextW++
	s.watchers[id] = ch
	ch <- s.Map()
	s.wmu.Unlock()
	return ch, func() {
		s.wmu.Lock()
		defer s.wmu.Unlock()
		if c, ok := s.watchers[id]; ok {
			delete(s.watchers, id)
			close(c)
		}
	}
}

// Apply runs cmd through the Raft log and returns the map it produced. On a
// follower it fails with a *NotLeaderError (errors.Is ErrNotLeader) naming
// the leader. A command the map rejects returns its error (ErrShardExists,
// ErrStaleVersion, …) after it was committed, with no change to the map.
// The context bounds the wait; when it ends first, the command may still be
// applied.
func (s *Store) Apply(ctx context.Context, cmd Command) (*Map, error) {
	b, err := cmd.Encode()
	if err != nil {
		return nil, err
	}
	if cmd.V != CommandVersion || !knownCommand(cmd.Type) {
		// Refuse before it reaches the log: every member would reject it.
		return nil, fmt.Errorf("apply %q (v%d): %w", cmd.Type, cmd.V, ErrUnsupportedCommand)
	}
	r, err := s.hold()
	if err != nil {
		return nil, fmt.Errorf("apply %s: %w", cmd.Type, err)
	}
	defer s.wg.Done()
	if r.State() != raft.Leader {
		return nil, fmt.Errorf("apply %s: %w", cmd.Type, s.notLeader(r))
	}
	timeout, err := s.timeout(ctx)
	if err != nil {
		return nil, fmt.Errorf("apply %s: %w", cmd.Type, err)
	}
	f := r.Apply(b, timeout)
	if err := s.wait(ctx, r, f); err != nil {
		return nil, fmt.Errorf("apply %s: %w", cmd.Type, err)
	}
	res, ok := f.Response().(*applyResult)
	if !ok {
		return nil, fmt.Errorf("apply %s: unexpected response %T", cmd.Type, f.Response())
	}
	if res.err != nil {
		return nil, res.err
	}
	return res.m, nil
}

func (s *Store) timeout(ctx context.Context) (time.Duration, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if dl, ok := ctx.Deadline(); ok {
		return max(time.Until(dl), time.Millisecond), nil
	}
	return s.cfg.ApplyTimeout, nil
}

// wait waits for a raft future or the context and translates raft's errors.
// The goroutine reading the future ends at the latest when raft shuts down
// (raft answers every pending future then), and Close waits for it.
func (s *Store) wait(ctx context.Context, r *raft.Raft, f raft.Future) error {
	done := make(chan error, 1)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		done <- f.Error()
	}()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader):
		return s.notLeader(r)
	case errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return fmt.Errorf("%w: %w", ErrLeadershipLost, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	return err
}

func (s *Store) notLeader(r *raft.Raft) error {
	addr, id := r.LeaderWithID()
	return &NotLeaderError{LeaderID: string(id), LeaderAddr: string(addr)}
}

// ID returns the node's Raft server ID.
func (s *Store) ID() string { return s.cfg.NodeID }

// Addr returns the node's Raft address (the actual port when RaftAddr had
// port 0), or "" when the store is not open.
func (s *Store) Addr() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.trans == nil {
		return ""
	}
	return string(s.trans.LocalAddr())
}

// IsLeader reports whether this node is the Raft leader now.
func (s *Store) IsLeader() bool {
	r := s.current()
	return r != nil && r.State() == raft.Leader
}

// LeaderID returns the leader's server ID as this node knows it, or "".
func (s *Store) LeaderID() string {
	r := s.current()
	if r == nil {
		return ""
	}
	_, id := r.LeaderWithID()
	return string(id)
}

// LeaderAddr returns the leader's Raft address as this node knows it, or "".
func (s *Store) LeaderAddr() string {
	r := s.current()
	if r == nil {
		return ""
	}
	addr, _ := r.LeaderWithID()
	return string(addr)
}

// AddVoter adds (or promotes) a voting member; leader only. Adding a member
// already present with the same address and suffrage does nothing; a member
// known under the same ID or address with the other one different is
// replaced.
func (s *Store) AddVoter(ctx context.Context, id, addr string) error {
	return s.addServer(ctx, id, addr, raft.Voter)
}

// AddNonvoter adds a member that receives the log but does not vote;
// leader only. It does not demote an existing voter.
func (s *Store) AddNonvoter(ctx context.Context, id, addr string) error {
	return s.addServer(ctx, id, addr, raft.Nonvoter)
}

func (s *Store) addServer(ctx context.Context, id, addr string, suffrage raft.ServerSuffrage) error {
	op := "add voter"
	if suffrage == raft.Nonvoter {
		op = "add nonvoter"
	}
	if err := checkName("node", id); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if addr == "" {
		return fmt.Errorf("%s %s: empty address", op, id)
	}
	r, err := s.hold()
	if err != nil {
		return fmt.Errorf("%s %s: %w", op, id, err)
	}
	defer s.wg.Done()
	if r.State() != raft.Leader {
		return fmt.Errorf("%s %s: %w", op, id, s.notLeader(r))
	}
	cf := r.GetConfiguration()
	if err := cf.Error(); err != nil {
		return fmt.Errorf("%s %s: %w", op, id, err)
	}
	for _, srv := range cf.Configuration().Servers {
		sameID, sameAddr := srv.ID == raft.ServerID(id), srv.Address == raft.ServerAddress(addr)
		if sameID && sameAddr {
			if srv.Suffrage == suffrage || (suffrage == raft.Nonvoter && srv.Suffrage == raft.Voter) {
				return nil // already a member as asked
			}
			break // promote in place
		}
		if sameID || sameAddr {
			timeout, err := s.timeout(ctx)
			if err != nil {
				return fmt.Errorf("%s %s: %w", op, id, err)
			}
			if err := s.wait(ctx, r, r.RemoveServer(srv.ID, 0, timeout)); err != nil {
				return fmt.Errorf("%s %s: remove stale member %s at %s: %w", op, id, srv.ID, srv.Address, err)
			}
		}
	}
	timeout, err := s.timeout(ctx)
	if err != nil {
		return fmt.Errorf("%s %s: %w", op, id, err)
	}
	var f raft.IndexFuture
	if suffrage == raft.Voter {
		f = r.AddVoter(raft.ServerID(id), raft.ServerAddress(addr), 0, timeout)
	} else {
		f = r.AddNonvoter(raft.ServerID(id), raft.ServerAddress(addr), 0, timeout)
	}
	if err := s.wait(ctx, r, f); err != nil {
		return fmt.Errorf("%s %s: %w", op, id, err)
	}
	s.logger.Info("Raft member added", "id", id, "addr", addr, "suffrage", suffrage.String())
	return nil
}

// RemoveServer removes a member from the Raft configuration; leader only.
// It fails with ErrUnknownServer when id is not a member.
func (s *Store) RemoveServer(ctx context.Context, id string) error {
	r, err := s.hold()
	if err != nil {
		return fmt.Errorf("remove server %s: %w", id, err)
	}
	defer s.wg.Done()
	if r.State() != raft.Leader {
		return fmt.Errorf("remove server %s: %w", id, s.notLeader(r))
	}
	cf := r.GetConfiguration()
	if err := cf.Error(); err != nil {
		return fmt.Errorf("remove server %s: %w", id, err)
	}
	if !slices.ContainsFunc(cf.Configuration().Servers, func(srv raft.Server) bool { return srv.ID == raft.ServerID(id) }) {
		return fmt.Errorf("remove server %s: %w", id, ErrUnknownServer)
	}
	timeout, err := s.timeout(ctx)
	if err != nil {
		return fmt.Errorf("remove server %s: %w", id, err)
	}
	if err := s.wait(ctx, r, r.RemoveServer(raft.ServerID(id), 0, timeout)); err != nil {
		return fmt.Errorf("remove server %s: %w", id, err)
	}
	s.logger.Info("Raft member removed", "id", id)
	return nil
}

// Servers returns the members of the latest Raft configuration this node
// knows, sorted by ID, with the leader flagged.
func (s *Store) Servers() ([]ServerInfo, error) {
	r, err := s.hold()
	if err != nil {
		return nil, fmt.Errorf("servers: %w", err)
	}
	defer s.wg.Done()
	cf := r.GetConfiguration()
	if err := cf.Error(); err != nil {
		return nil, fmt.Errorf("servers: %w", err)
	}
	_, leader := r.LeaderWithID()
	var out []ServerInfo
	for _, srv := range cf.Configuration().Servers {
		out = append(out, ServerInfo{
			ID:       string(srv.ID),
			Addr:     string(srv.Address),
			Suffrage: strings.ToLower(srv.Suffrage.String()),
			Leader:   srv.ID == leader,
		})
	}
	slices.SortFunc(out, func(a, b ServerInfo) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// poll calls done every few milliseconds until it returns true or ctx ends.
func poll(ctx context.Context, what string, done func() (bool, error)) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		ok, err := done()
		if err != nil {
			return fmt.Errorf("wait for %s: %w", what, err)
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w", what, ctx.Err())
		case <-t.C:
		}
	}
}

// WaitForLeader waits until this node knows a leader (itself or another).
func (s *Store) WaitForLeader(ctx context.Context) error {
	return poll(ctx, "leader", func() (bool, error) {
		r := s.current()
		if r == nil {
			return false, ErrClosed
		}
		addr, _ := r.LeaderWithID()
		return addr != "", nil
	})
}

// WaitForIndex waits until this node has applied the Raft log up to idx.
func (s *Store) WaitForIndex(ctx context.Context, idx uint64) error {
	return poll(ctx, "applied index "+strconv.FormatUint(idx, 10), func() (bool, error) {
		r := s.current()
		if r == nil {
			return false, ErrClosed
		}
		return r.AppliedIndex() >= idx, nil
	})
}

// WaitForVersion waits until the local map's Version is at least v (e.g.
// the version a leader returned from Apply, for read-your-writes on a
// follower).
func (s *Store) WaitForVersion(ctx context.Context, v uint64) error {
	for {
		s.wmu.Lock()
		ch := s.changed
		s.wmu.Unlock()
		if s.Map().Version() >= v {
			return nil
		}
		if s.current() == nil {
			return fmt.Errorf("wait for version %d: %w", v, ErrClosed)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for version %d (at %d): %w", v, s.Map().Version(), ctx.Err())
		}
	}
}

// Snapshot makes Raft take a snapshot now and compact its log (normally it
// does so by itself after SnapshotThreshold entries). Nothing new to
// snapshot is not an error.
func (s *Store) Snapshot() error {
	r, err := s.hold()
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer s.wg.Done()
	if err := r.Snapshot().Error(); err != nil && !errors.Is(err, raft.ErrNothingNewToSnapshot) {
		return fmt.Errorf("snapshot: %w", err)
	}
	return nil
}

// LastIndex returns the index of the last entry in this node's Raft log.
func (s *Store) LastIndex() uint64 {
	r := s.current()
	if r == nil {
		return 0
	}
	return r.LastIndex()
}

// Stats returns raft's statistics ("state", "term", "last_log_index",
// "commit_index", "applied_index", "num_peers", …) plus "node_id",
// "map_version" and "ring_version". Empty when the store is not open.
func (s *Store) Stats() map[string]string {
	r := s.current()
	if r == nil {
		return map[string]string{}
	}
	st := r.Stats()
	m := s.Map()
	st["node_id"] = s.cfg.NodeID
	st["map_version"] = strconv.FormatUint(m.Version(), 10)
	st["ring_version"] = strconv.FormatUint(m.RingVersion(), 10)
	return st
}
