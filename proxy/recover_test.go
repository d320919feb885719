package proxy_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgshard/pgshard/config"
	"github.com/pgshard/pgshard/proxy"
	"github.com/pgshard/pgshard/shardmap"
	"github.com/pgshard/pgshard/topology"
	"github.com/pgshard/pgshard/topology/topotest"
)

// memTxnLog is an in-memory proxy.TxnLog (and proxy.TxnLister): first
// decision wins, like the shard map's.
type memTxnLog struct {
	mu      sync.Mutex
	d       map[string]shardmap.TxnDecision
	decides []string // gids passed to Decide, in order
}

func newMemTxnLog() *memTxnLog { return &memTxnLog{d: map[string]shardmap.TxnDecision{}} }

func (l *memTxnLog) Decide(_ context.Context, gid string, commit bool) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.decides = append(l.decides, gid)
	if d, ok := l.d[gid]; ok {
		return d.Commit, nil
	}
	l.d[gid] = shardmap.TxnDecision{GID: gid, Commit: commit, At: time.Now()}
	return commit, nil
}

func (l *memTxnLog) Decision(_ context.Context, gid string) (bool, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	d, ok := l.d[gid]
	return d.Commit, ok, nil
}

func (l *memTxnLog) Forget(_ context.Context, gid string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.d, gid)
	return nil
}

func (l *memTxnLog) TxnDecisions(context.Context) ([]shardmap.TxnDecision, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []shardmap.TxnDecision
	for _, d := range l.d {
		out = append(out, d)
	}
	return out, nil
}

// record stores a decision taken at a given time.
func (l *memTxnLog) record(gid string, commit bool, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.d[gid] = shardmap.TxnDecision{GID: gid, Commit: commit, At: at}
}

func (l *memTxnLog) get(gid string) (shardmap.TxnDecision, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	d, ok := l.d[gid]
	return d, ok
}

func newGID(prefix string) string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// primary is the shared topology's shard primary.
func primary(h *harness) *topology.Server { return h.topo.Shards[0].Primary }

// prepare runs BEGIN; sql; PREPARE TRANSACTION gid on the shard directly,
// as user (password app, or none for postgres) in database db, and rolls
// the transaction back at the end of the test if it is still prepared.
func prepare(t *testing.T, h *harness, user, db, sql, gid string) {
	t.Helper()
	ctx := testCtx(t)
	pw := "app"
	if user == "postgres" {
		pw = ""
	}
	c, err := pgconn.Connect(ctx, primary(h).URL(user, pw, db))
	if err != nil {
		t.Fatalf("connect to the shard: %v", err)
	}
	defer c.Close(context.Background())
	for _, q := range []string{"BEGIN", sql, fmt.Sprintf("PREPARE TRANSACTION '%s'", gid)} {
		if _, err := c.Exec(ctx, q).ReadAll(); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if preparedOn(t, h, gid) {
			if err := primary(h).Exec(ctx, db, fmt.Sprintf("ROLLBACK PREPARED '%s'", gid)); err != nil {
				t.Errorf("clean up %s: %v", gid, err)
			}
		}
	})
}

// preparedOn reports whether gid is prepared on the shard.
func preparedOn(t *testing.T, h *harness, gid string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := primary(h).QueryValue(ctx, "postgres", fmt.Sprintf("SELECT count(*) FROM pg_prepared_xacts WHERE gid = '%s'", gid))
	if err != nil {
		t.Fatal(err)
	}
	return v == "1"
}

// notes returns the note column of table t in db, sorted.
func notes(t *testing.T, h *harness, db string) []string {
	t.Helper()
	v, err := primary(h).QueryValue(testCtx(t), db, "SELECT coalesce(string_agg(note, ',' ORDER BY note), '') FROM t")
	if err != nil {
		t.Fatal(err)
	}
	if v == "" {
		return nil
	}
	return strings.Split(v, ",")
}

func createTable(t *testing.T, h *harness, db string) {
	t.Helper()
	if err := primary(h).Exec(testCtx(t), db, "CREATE TABLE t (id int PRIMARY KEY, note text); ALTER TABLE t OWNER TO app"); err != nil {
		t.Fatal(err)
	}
}

func TestRecoverPrepared(t *testing.T) {
	h := startProxy(t, nil)
	ctx := testCtx(t)
	db2 := topotest.NewDatabase(t, h.topo)
	createTable(t, h, h.db)
	createTable(t, h, db2)
	log := newMemTxnLog()

	var (
		commitGID    = newGID(proxy.GIDPrefix) // decided commit
		commit2GID   = newGID(proxy.GIDPrefix) // decided commit, in the other database
		abortGID     = newGID(proxy.GIDPrefix) // decided rollback
		oldGID       = newGID(proxy.GIDPrefix) // undecided, prepared before the grace period
		youngGID     = newGID(proxy.GIDPrefix) // undecided, prepared within it
		otherGID     = newGID("other_")        // not pgshard's
		goneGID      = newGID(proxy.GIDPrefix) // decided long ago, prepared nowhere
		goneYoungGID = newGID(proxy.GIDPrefix) // decided just now, prepared nowhere
	)
	const grace = 2 * time.Second
	prepare(t, h, "app", h.db, "INSERT INTO t VALUES (1, 'old')", oldGID)
	prepared := time.Now()
	prepare(t, h, "app", h.db, "INSERT INTO t VALUES (2, 'commit')", commitGID)
	prepare(t, h, "app", db2, "INSERT INTO t VALUES (2, 'commit2')", commit2GID)
	prepare(t, h, "app", h.db, "INSERT INTO t VALUES (3, 'abort')", abortGID)
	prepare(t, h, "app", h.db, "INSERT INTO t VALUES (5, 'other')", otherGID)
	log.record(commitGID, true, time.Now())
	log.record(commit2GID, true, time.Now())
	log.record(abortGID, false, time.Now())
	log.record(goneGID, true, time.Now().Add(-time.Hour))
	time.Sleep(grace + 200*time.Millisecond - time.Since(prepared))
	log.record(goneYoungGID, false, time.Now())
	prepare(t, h, "app", h.db, "INSERT INTO t VALUES (4, 'young')", youngGID)

	// Without a transaction log the pass cannot run.
	if _, err := h.srv.RecoverPrepared(ctx, grace); err == nil {
		t.Fatal("RecoverPrepared without a TxnLog succeeded")
	}
	h.srv.SetTxnLog(log)
	st, err := h.srv.RecoverPrepared(ctx, grace)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stats: %+v", st)
	want := proxy.RecoverStats{Shards: 1, Prepared: 5, Committed: 2, RolledBack: 2, Decided: 1, Waiting: 1, Forgotten: 1}
	if st != want {
		t.Errorf("stats %+v, want %+v", st, want)
	}
	for gid, want := range map[string]bool{commitGID: false, commit2GID: false, abortGID: false, oldGID: false, youngGID: true, otherGID: true} {
		if got := preparedOn(t, h, gid); got != want {
			t.Errorf("%s prepared: %v, want %v", gid, got, want)
		}
	}
	if got := notes(t, h, h.db); !slices.Equal(got, []string{"commit"}) {
		t.Errorf("rows in %s: %v, want only the committed one", h.db, got)
	}
	if got := notes(t, h, db2); !slices.Equal(got, []string{"commit2"}) {
		t.Errorf("rows in %s: %v, want the committed one", db2, got)
	}
	if d, ok := log.get(oldGID); !ok || d.Commit {
		t.Errorf("in-doubt transaction: decision %+v %v, want rollback recorded", d, ok)
	}
	if _, ok := log.get(youngGID); ok {
		t.Error("a transaction within the grace period was decided")
	}
	if _, ok := log.get(goneGID); ok {
		t.Error("an old finished decision was not forgotten")
	}
	for _, gid := range []string{goneYoungGID, commitGID, abortGID} {
		if _, ok := log.get(gid); !ok {
			t.Errorf("%s forgotten too early", gid)
		}
	}

	// The coordinator of an in-doubt transaction decided commit before
	// the pass did: the pass applies the commit.
	raceGID := newGID(proxy.GIDPrefix)
	prepare(t, h, "app", h.db, "INSERT INTO t VALUES (6, 'race')", raceGID)
	racing := &decideFirst{memTxnLog: log, gid: raceGID}
	h.srv.SetTxnLog(racing)
	st, err = h.srv.RecoverPrepared(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if preparedOn(t, h, raceGID) || !slices.Contains(notes(t, h, h.db), "race") {
		t.Errorf("the coordinator's commit was not applied (stats %+v)", st)
	}
	// With grace 0 that pass also took the young one (rolled back) and
	// forgot every decision whose transaction was gone before it.
	if preparedOn(t, h, youngGID) || slices.Contains(notes(t, h, h.db), "young") {
		t.Error("young transaction left after a pass with no grace")
	}
	for _, gid := range []string{goneYoungGID, commitGID, abortGID, oldGID} {
		if _, ok := log.get(gid); ok {
			t.Errorf("%s not forgotten with no grace", gid)
		}
	}
	if !preparedOn(t, h, otherGID) {
		t.Error("a transaction not named by pgshard was finished")
	}
}

// decideFirst is a TxnLog whose Decide for gid finds that its coordinator
// decided commit just before.
type decideFirst struct {
	*memTxnLog
	gid string
}

func (l *decideFirst) Decide(ctx context.Context, gid string, commit bool) (bool, error) {
	if gid == l.gid {
		l.memTxnLog.Decide(ctx, gid, true)
	}
	return l.memTxnLog.Decide(ctx, gid, commit)
}

// TestRecoverPreparedLogins: a transaction is finished as its owner when a
// configured user logs in as the owner, else with the monitor login; one
// that no login may finish is counted, left prepared, and does not stop
// the pass.
func TestRecoverPreparedLogins(t *testing.T) {
	h := startProxy(t, nil) // users app and appmd5 (backend app); monitor login app
	ctx := testCtx(t)
	createTable(t, h, h.db)
	log := newMemTxnLog()
	h.srv.SetTxnLog(log)

	superGID := newGID(proxy.GIDPrefix) // owned by postgres: app may not finish it
	appGID := newGID(proxy.GIDPrefix)
	prepare(t, h, "postgres", h.db, "INSERT INTO t VALUES (1, 'super')", superGID)
	prepare(t, h, "app", h.db, "INSERT INTO t VALUES (2, 'app')", appGID)
	log.record(superGID, true, time.Now())
	log.record(appGID, true, time.Now())

	st, err := h.srv.RecoverPrepared(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if st.Committed != 1 || st.Unresolved != 1 || !preparedOn(t, h, superGID) || preparedOn(t, h, appGID) {
		t.Fatalf("as app: stats %+v; super prepared %v, app prepared %v", st, preparedOn(t, h, superGID), preparedOn(t, h, appGID))
	}

	// A superuser monitor login finishes it.
	h2 := startProxy(t, func(c *config.Config) { c.Routing.MonitorUser = "postgres" })
	h2.srv.SetTxnLog(log)
	st, err = h2.srv.RecoverPrepared(ctx, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if st.Committed != 1 || st.Unresolved != 0 || preparedOn(t, h, superGID) {
		t.Fatalf("as postgres: stats %+v", st)
	}
	if got := notes(t, h, h.db); !slices.Equal(got, []string{"app", "super"}) {
		t.Fatalf("rows: %v", got)
	}
}
