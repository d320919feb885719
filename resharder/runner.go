package resharder

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/pgshard/pgshard/shardmap"
)

// Errors of the Runner's API; test with errors.Is.
var (
	// ErrNoJob: there is no reshard job to report or cancel.
	ErrNoJob = errors.New("resharder: no reshard job")
	// ErrJobRunning: a job that is neither done nor cancelled exists; one
	// job runs at a time.
	ErrJobRunning = errors.New("resharder: a reshard job is already running")
	// ErrPastCutover: the job reached its cut-over; it can only finish.
	ErrPastCutover = errors.New("resharder: the job is past its cut-over and can only finish")
	// ErrBadSpec: the spec cannot be planned (unknown shard, no ring,
	// a table without a usable replica identity, …).
	ErrBadSpec = errors.New("resharder: invalid reshard spec")
)

// Job kinds and phases as recorded in shardmap.Job.
const (
	KindAdd    = "add"
	KindRemove = "remove"

	PhasePrepare    = "prepare"
	PhaseCopy       = "copy"
	PhaseCutover    = "cutover"
	PhaseCleanup    = "cleanup"
	PhaseDone       = "done"
	PhaseCancelling = "cancelling"
	PhaseCancelled  = "cancelled"
)

func finished(phase string) bool { return phase == PhaseDone || phase == PhaseCancelled }

// Config configures a Runner. Zero tunables take the defaults shown.
type Config struct {
	Store Store
	Nodes Nodes
	Login Login
	Log   *slog.Logger

	// PollInterval: how often waits re-check the databases (200ms).
	PollInterval time.Duration
	// FreezeTimeout bounds each wait of the cut-over while statements on
	// the moving ranges are held: every node applying the freeze, the
	// barrier on the sources, the targets catching up (2s). On timeout the
	// freeze is lifted and the cut-over retried later.
	FreezeTimeout time.Duration
	// RetryBackoff is the first delay before retrying a failed cut-over,
	// doubled per attempt up to 30s (1s).
	RetryBackoff time.Duration
	// MaxLag is the replication lag in bytes under which a cut-over may
	// start, for the subscriptions and the target's replicas (1 MiB).
	MaxLag int64
	// DeleteBatch is how many moved rows one DELETE removes (10000).
	DeleteBatch int
	// LockTimeout bounds each attempt to take a table lock for a fence
	// trigger (200ms; retried).
	LockTimeout time.Duration
	// Vnodes is the number of tokens a new shard gets (shardmap.DefaultVnodes).
	Vnodes int
	// VerifyRows: the cut-over counts the moved rows on both sides (exact,
	// the ranges being still) when the plan moves at most this many rows
	// (10000; negative: never). Counting scans the moved tables while
	// the moving ranges are held, so it is kept for small moves.
	VerifyRows int64
	// ExactCountPages: Plan counts rows exactly for tables of at most this
	// many pages, and estimates from the statistics above (1000).
	ExactCountPages int64

	// hook, when set (tests), is called at named steps; an error stops
	// the step there as if the process died.
	hook func(step string) error
}

// Runner plans, starts, drives and reports reshard jobs.
type Runner struct {
	cfg  Config
	log  *slog.Logger
	mu   sync.Mutex // serialises Start and Cancel
	wake chan struct{}

	rc *conns // the Run goroutine's connections, kept across steps

	pmu     sync.Mutex
	counted map[string]int64 // final copied counts by job/pair/table
	waiting string           // what the running job waits for
}

// New returns a Runner.
func New(cfg Config) *Runner {
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = 200 * time.Millisecond
	}
	if cfg.FreezeTimeout <= 0 {
		cfg.FreezeTimeout = 2 * time.Second
	}
	if cfg.RetryBackoff <= 0 {
		cfg.RetryBackoff = time.Second
	}
	if cfg.MaxLag <= 0 {
		cfg.MaxLag = 1 << 20
	}
	if cfg.DeleteBatch <= 0 {
		cfg.DeleteBatch = 10000
	}
	if cfg.LockTimeout <= 0 {
		cfg.LockTimeout = 200 * time.Millisecond
	}
	if cfg.Vnodes <= 0 {
		cfg.Vnodes = shardmap.DefaultVnodes
	}
	if cfg.VerifyRows == 0 {
		cfg.VerifyRows = 10000
	}
	if cfg.ExactCountPages <= 0 {
		cfg.ExactCountPages = 1000
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Runner{cfg: cfg, log: log.With("component", "resharder"), wake: make(chan struct{}, 1), counted: map[string]int64{}}
}

// pair is one (source, target) stream: a publication on the source and a
// subscription (with its slot) on the target, both named Name.
type pair struct {
	From   string           `json:"from"`
	To     string           `json:"to"`
	Name   string           `json:"name"`
	Ranges []shardmap.Range `json:"ranges"`
	Ref    bool             `json:"ref,omitempty"` // also publishes the reference tables
	SubOID uint32           `json:"sub_oid,omitempty"`
}

// jobData is the resharder's part of the job record (shardmap.Job.Data).
type jobData struct {
	Spec      Spec              `json:"spec"`
	Database  string            `json:"database"`
	BaseRing  uint64            `json:"base_ring_version"` // the ring version the job was planned at
	NewRing   []shardmap.Token  `json:"new_ring"`
	Moves     []shardmap.Move   `json:"moves"`
	Tables    []TableMove       `json:"tables"`
	Sharded   []shardmap.Table  `json:"sharded"`
	Reference []shardmap.Table  `json:"reference,omitempty"` // copied whole (add)
	RefSource string            `json:"ref_source,omitempty"`
	Pairs     []pair            `json:"pairs"`
	DSNs      map[string]string `json:"dsns"` // shard primaries at Start (a removed shard leaves the map)

	Started     time.Time `json:"started"`
	CopyStarted time.Time `json:"copy_started,omitzero"`
	Updated     time.Time `json:"updated"`
	Error       string    `json:"error,omitempty"`
	Attempts    int       `json:"cutover_attempts,omitempty"`
	RetryAt     time.Time `json:"retry_at,omitzero"`
	FrozenAt    time.Time `json:"frozen_at,omitzero"`
	Cutover     string    `json:"cutover,omitempty"` // duration of the freeze, freeze commit → ring commit
	CutoverNS   int64     `json:"cutover_ns,omitempty"`
	Verified    string    `json:"verified,omitempty"`
	RingVersion uint64    `json:"ring_version,omitempty"` // the map version that committed the new ring
	Finished    time.Time `json:"finished,omitzero"`
}

func decodeData(j shardmap.Job) (*jobData, error) {
	var d jobData
	if err := json.Unmarshal(j.Data, &d); err != nil {
		return nil, fmt.Errorf("job %s: data: %w", j.ID, err)
	}
	return &d, nil
}

func (d *jobData) newRing() (*shardmap.Ring, error) { return shardmap.NewRing(d.NewRing) }

// dsn returns a shard's primary: from the map when it is there (it may
// have failed over), else as recorded at Start.
func (d *jobData) dsn(m *shardmap.Map, name string) string {
	if s, ok := m.Shard(name); ok {
		return s.Primary
	}
	return d.DSNs[name]
}

func (d *jobData) sources() []string {
	var out []string
	for _, p := range d.Pairs {
		if !slices.Contains(out, p.From) {
			out = append(out, p.From)
		}
	}
	return out
}

func (d *jobData) targets() []string {
	var out []string
	for _, p := range d.Pairs {
		if !slices.Contains(out, p.To) {
			out = append(out, p.To)
		}
	}
	return out
}

// lost returns the ranges source gives away.
func (d *jobData) lost(source string) []shardmap.Range {
	var out []shardmap.Range
	for _, mv := range d.Moves {
		if mv.From == source {
			out = append(out, mv.Range)
		}
	}
	return out
}

func (d *jobData) target() string {
	if d.Spec.Add != nil {
		return d.Spec.Add.Name
	}
	return ""
}

// errJobChanged: the job record changed under the step (Cancel, another
// leader); the loop re-reads it.
var errJobChanged = errors.New("resharder: job changed meanwhile")

// latestJob returns the job with the largest ID (IDs sort by start time).
func latestJob(m *shardmap.Map) (shardmap.Job, bool) {
	jobs := m.Jobs()
	if len(jobs) == 0 {
		return shardmap.Job{}, false
	}
	return jobs[len(jobs)-1], true
}

func activeJob(m *shardmap.Map) (shardmap.Job, bool) {
	for _, j := range m.Jobs() {
		if !finished(j.Phase) {
			return j, true
		}
	}
	return shardmap.Job{}, false
}

func newJobID() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("j%011x%s", time.Now().UnixMilli(), hex.EncodeToString(b[:]))
}

// Start validates s, registers a new shard (add) or marks the removed one
// draining, and writes the job at phase prepare. Run drives it.
func (r *Runner) Start(ctx context.Context, s Spec) (*Status, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.cfg.Store.Map()
	if j, ok := activeJob(m); ok {
		if d, err := decodeData(j); err == nil && sameSpec(d.Spec, s) {
			// The same request again (a client or a forwarding node
			// that lost the answer and retried): the job it started.
			return r.status(ctx, j, false)
		}
		return nil, fmt.Errorf("job %s is in phase %s: %w", j.ID, j.Phase, ErrJobRunning)
	}
	pl, err := r.plan(ctx, m, s)
	if err != nil {
		return nil, err
	}
	for _, j := range m.Jobs() {
		if _, err := r.cfg.Store.Apply(ctx, shardmap.DeleteJob(j.ID)); err != nil && !errors.Is(err, shardmap.ErrUnknownJob) {
			return nil, fmt.Errorf("delete finished job %s: %w", j.ID, err)
		}
	}
	kind := KindRemove
	if s.Add != nil {
		kind = KindAdd
		if _, ok := m.Shard(s.Add.Name); !ok {
			if _, err := r.cfg.Store.Apply(ctx, shardmap.AddSpareShard(shardmap.Shard{Name: s.Add.Name, Primary: s.Add.Primary, Replicas: s.Add.Replicas})); err != nil {
				return nil, fmt.Errorf("register shard %s: %w", s.Add.Name, err)
			}
		}
	} else {
		if _, err := r.cfg.Store.Apply(ctx, shardmap.SetShardState(s.Remove, shardmap.ShardDraining)); err != nil {
			return nil, fmt.Errorf("mark shard %s draining: %w", s.Remove, err)
		}
	}
	id := newJobID()
	now := time.Now().UTC()
	d := &jobData{
		Spec: pl.plan.Spec, Database: pl.db, BaseRing: pl.plan.RingVersion, NewRing: pl.newRing.Tokens(),
		Moves: pl.plan.Moves, Tables: pl.plan.Tables, Sharded: pl.sharded, Reference: pl.reference,
		RefSource: pl.refSource, DSNs: pl.dsns, Started: now, Updated: now,
	}
	for _, mv := range pl.plan.Moves {
		i := slices.IndexFunc(d.Pairs, func(p pair) bool { return p.From == mv.From && p.To == mv.To })
		if i < 0 {
			d.Pairs = append(d.Pairs, pair{From: mv.From, To: mv.To})
			i = len(d.Pairs) - 1
		}
		d.Pairs[i].Ranges = append(d.Pairs[i].Ranges, mv.Range)
	}
	for i := range d.Pairs {
		d.Pairs[i].Name = pairName(id, i)
		d.Pairs[i].Ref = kind == KindAdd && d.Pairs[i].From == d.RefSource && len(d.Reference) > 0
	}
	if kind == KindAdd && len(d.Reference) > 0 && !slices.ContainsFunc(d.Pairs, func(p pair) bool { return p.Ref }) {
		return nil, fmt.Errorf("reference tables' source %s gives no range: %w", d.RefSource, ErrBadSpec)
	}
	data, err := json.Marshal(d)
	if err != nil {
		return nil, err
	}
	var moving []shardmap.Range
	for _, mv := range d.Moves {
		moving = append(moving, mv.Range)
	}
	job := shardmap.Job{ID: id, Kind: kind, Phase: PhasePrepare, Data: data, Moving: moving}
	nm, err := r.cfg.Store.Apply(ctx, shardmap.PutJob(job, 0))
	if err != nil {
		return nil, fmt.Errorf("write job %s: %w", id, err)
	}
	r.log.Info("reshard job started", "job", id, "kind", kind, "moves", len(d.Moves), "pairs", len(d.Pairs))
	r.poke()
	j, _ := nm.Job(id)
	return r.status(ctx, j, false)
}

// sameSpec reports whether b asks for what the job with spec a does (b's
// database may be left to the default).
func sameSpec(a, b Spec) bool {
	if b.Database != "" && b.Database != a.Database {
		return false
	}
	if (a.Add == nil) != (b.Add == nil) || a.Remove != b.Remove {
		return false
	}
	return a.Add == nil || a.Add.Name == b.Add.Name && a.Add.Primary == b.Add.Primary && slices.Equal(a.Add.Replicas, b.Add.Replicas)
}

func (r *Runner) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Status reports the latest job, with live progress figures from the
// databases while it copies.
func (r *Runner) Status(ctx context.Context) (*Status, error) {
	j, ok := latestJob(r.cfg.Store.Map())
	if !ok {
		return nil, ErrNoJob
	}
	return r.status(ctx, j, true)
}

// Cancel asks the running job to roll back. It is refused with
// ErrPastCutover from the cut-over phase on (the ring may be committed at
// any moment there; a failed cut-over returns to copy, where Cancel works
// again).
func (r *Runner) Cancel(ctx context.Context) (*Status, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for attempt := 0; ; attempt++ {
		j, ok := latestJob(r.cfg.Store.Map())
		if !ok {
			return nil, ErrNoJob
		}
		switch j.Phase {
		case PhaseCancelling, PhaseCancelled:
			return r.status(ctx, j, false)
		case PhasePrepare, PhaseCopy:
		default:
			return nil, fmt.Errorf("job %s in phase %s: %w", j.ID, j.Phase, ErrPastCutover)
		}
		d, err := decodeData(j)
		if err != nil {
			return nil, err
		}
		d.Updated = time.Now().UTC()
		d.Error = ""
		nj := j
		nj.Phase, nj.FrozenRing = PhaseCancelling, 0
		nj.Data, _ = json.Marshal(d)
		nm, err := r.cfg.Store.Apply(ctx, shardmap.PutJob(nj, j.Updated))
		if errors.Is(err, shardmap.ErrStaleVersion) && attempt < 20 {
			continue // the runner wrote meanwhile: look again
		}
		if err != nil {
			return nil, fmt.Errorf("cancel job %s: %w", j.ID, err)
		}
		r.log.Info("reshard job cancelling", "job", j.ID, "from", j.Phase)
		r.poke()
		j, _ = nm.Job(j.ID)
		return r.status(ctx, j, false)
	}
}

// Run drives the unfinished job, if any, until ctx ends: phase by phase,
// each transition committed before it is acted on. Call it on the Raft
// leader only; a new leader's Run resumes the job from its phase.
func (r *Runner) Run(ctx context.Context) {
	defer func() {
		if r.rc != nil {
			r.rc.close()
			r.rc = nil
		}
	}()
	backoff := r.cfg.PollInterval
	for ctx.Err() == nil {
		j, ok := activeJob(r.cfg.Store.Map())
		if !ok {
			r.setWaiting("")
			select {
			case <-ctx.Done():
			case <-r.wake:
			case <-time.After(r.cfg.PollInterval * 5):
			}
			continue
		}
		err := r.step(ctx, j)
		if err != nil && r.rc != nil {
			r.rc.close() // a connection may be broken
		}
		if err == nil || errors.Is(err, errJobChanged) {
			backoff = r.cfg.PollInterval
			continue
		}
		if ctx.Err() != nil {
			return
		}
		r.log.Warn("reshard step failed; retrying", "job", j.ID, "phase", j.Phase, "err", err)
		r.noteError(ctx, j, err)
		select {
		case <-ctx.Done():
		case <-r.wake:
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (r *Runner) step(ctx context.Context, j shardmap.Job) error {
	d, err := decodeData(j)
	if err != nil {
		return err
	}
	switch j.Phase {
	case PhasePrepare:
		return r.prepare(ctx, j, d)
	case PhaseCopy:
		return r.copyPhase(ctx, j, d)
	case PhaseCutover:
		return r.cutover(ctx, j, d)
	case PhaseCleanup:
		return r.cleanup(ctx, j, d)
	case PhaseCancelling:
		return r.cancelling(ctx, j, d)
	}
	return fmt.Errorf("job %s: unknown phase %q", j.ID, j.Phase)
}

// jobConns returns the Run goroutine's connections to the job's database.
func (r *Runner) jobConns(d *jobData) *conns {
	if r.rc != nil && r.rc.db != d.Database {
		r.rc.close()
		r.rc = nil
	}
	if r.rc == nil {
		r.rc = r.newConns(d.Database)
	}
	return r.rc
}

// hook calls the test hook of step.
func (r *Runner) hook(step string) error {
	if r.cfg.hook == nil {
		return nil
	}
	return r.cfg.hook(step)
}

// commit writes the job with its next phase (and whatever change) if nobody
// wrote it since j was read. It returns the job as written.
func (r *Runner) commit(ctx context.Context, j shardmap.Job, d *jobData, phase string, change func(*shardmap.Job)) (shardmap.Job, error) {
	d.Updated = time.Now().UTC()
	nj := j
	nj.Phase = phase
	if change != nil {
		change(&nj)
	}
	b, err := json.Marshal(d)
	if err != nil {
		return j, err
	}
	nj.Data = b
	m, err := r.cfg.Store.Apply(ctx, shardmap.PutJob(nj, j.Updated))
	if errors.Is(err, shardmap.ErrStaleVersion) || errors.Is(err, shardmap.ErrUnknownJob) {
		return j, fmt.Errorf("%w: %w", errJobChanged, err)
	}
	if err != nil {
		return j, fmt.Errorf("commit phase %s of job %s: %w", phase, j.ID, err)
	}
	out, _ := m.Job(j.ID)
	if phase != j.Phase {
		r.log.Info("reshard phase", "job", j.ID, "phase", phase)
	}
	return out, nil
}

// noteError records the last error in the job (once per distinct message).
func (r *Runner) noteError(ctx context.Context, j shardmap.Job, err error) {
	d, derr := decodeData(j)
	if derr != nil || d.Error == err.Error() {
		return
	}
	d.Error = err.Error()
	_, _ = r.commit(ctx, j, d, j.Phase, nil)
}

// changed reports whether the job record moved on since j was read.
func (r *Runner) changed(j shardmap.Job) bool {
	cur, ok := r.cfg.Store.Map().Job(j.ID)
	return !ok || cur.Updated != j.Updated
}

func (r *Runner) setWaiting(s string) {
	r.pmu.Lock()
	r.waiting = s
	r.pmu.Unlock()
}
