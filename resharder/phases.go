package resharder

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgshard/pgshard/shardmap"
)

// ---- prepare ----

// prepare creates the schema on a new shard, the fences on the sources,
// the publications and the subscriptions, then commits phase copy. Each
// action skips what exists.
func (r *Runner) prepare(ctx context.Context, j shardmap.Job, d *jobData) error {
	m := r.cfg.Store.Map()
	cs := r.jobConns(d)
	if t := d.target(); t != "" && d.RefSource != "" {
		src, err := cs.get(ctx, d.dsn(m, d.RefSource))
		if err != nil {
			return err
		}
		tgt, err := cs.get(ctx, d.dsn(m, t))
		if err != nil {
			return err
		}
		r.setWaiting("creating the schema on " + t)
		if err := r.copySchema(ctx, src, tgt, d.Sharded, d.Reference, d.RefSource, t); err != nil {
			return err
		}
	}
	if err := r.hook("prepare:schema"); err != nil {
		return err
	}
	for _, s := range d.sources() {
		c, err := cs.get(ctx, d.dsn(m, s))
		if err != nil {
			return err
		}
		r.setWaiting("installing the fence on " + s)
		if err := r.installFence(ctx, c, j.ID, d.Sharded, d.lost(s)); err != nil {
			return fmt.Errorf("fence on %s: %w", s, err)
		}
	}
	if err := r.hook("prepare:fence"); err != nil {
		return err
	}
	// Copies must not land on a shard before every proxy excludes them
	// from scatter statements: wait until every node routes by a map
	// that has the job's moving ranges (this job record's version).
	r.setWaiting("every node applying the job's moving ranges")
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := r.cfg.Nodes.WaitApplied(wctx, j.Updated)
	cancel()
	if err != nil {
		return fmt.Errorf("waiting for every node to apply the job's moving ranges (the phase is retried): %w", err)
	}
	for i, p := range d.Pairs {
		src, err := cs.get(ctx, d.dsn(m, p.From))
		if err != nil {
			return err
		}
		if err := createPublication(ctx, src, j.ID, p, d); err != nil {
			return fmt.Errorf("publication on %s: %w", p.From, err)
		}
		tgt, err := cs.get(ctx, d.dsn(m, p.To))
		if err != nil {
			return err
		}
		if err := exec(ctx, tgt, markerDDL(j.ID)); err != nil {
			return fmt.Errorf("marker table on %s: %w", p.To, err)
		}
		r.setWaiting("subscribing " + p.To + " to " + p.From)
		oid, err := r.createSubscription(ctx, src, tgt, p, connString(d.dsn(m, p.From), r.cfg.Login, d.Database))
		if err != nil {
			return fmt.Errorf("subscription on %s: %w", p.To, err)
		}
		d.Pairs[i].SubOID = oid
	}
	if err := r.hook("prepare:subscriptions"); err != nil {
		return err
	}
	d.CopyStarted = time.Now().UTC()
	d.Error = ""
	_, err = r.commit(ctx, j, d, PhaseCopy, nil)
	return err
}

// installFence creates on a source the job's fence: a sequence whose
// last_value is the on/off flag (sequences are not transactional: setval is
// seen by every session at once), and per sharded table a row trigger that
// refuses a write whose old or new key lies in a range the source gives
// away, once the flag is on, with SQLSTATE PS001. A TRUNCATE of a moved
// table is refused (55000) as long as the fence is installed: the job's
// publications do not carry it, so the rows it removed would live on in
// the copies.
func (r *Runner) installFence(ctx context.Context, c *pgx.Conn, job string, tables []shardmap.Table, lost []shardmap.Range) error {
	seq := fenceSeq(job)
	if err := exec(ctx, c, fmt.Sprintf(`CREATE SCHEMA IF NOT EXISTS pgshard;
GRANT USAGE ON SCHEMA pgshard TO PUBLIC;
CREATE SEQUENCE IF NOT EXISTS %s MINVALUE 0 MAXVALUE 1 START 0;
GRANT SELECT ON %s TO PUBLIC;
CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql AS $pgshard$
BEGIN
  RAISE EXCEPTION USING ERRCODE = '55000',
    MESSAGE = format('pgshard: TRUNCATE of %%s refused while a reshard job moves its rows; retry after the job', TG_TABLE_NAME);
END
$pgshard$;
%s`, seq, seq, truncFenceFunc(job), markerDDL(job))); err != nil {
		return err
	}
	key := fenceLockKey(job)
	for i, t := range tables {
		check := func(row string) string {
			col := t.KeyColumn
			if col == "" {
				col = shardmap.DefaultKeyColumn
			}
			return fmt.Sprintf(`    h := %s;
    IF %s THEN
      PERFORM pg_catalog.pg_advisory_xact_lock_shared(%d);
      IF (SELECT last_value FROM %s) > 0 THEN
        RAISE EXCEPTION USING ERRCODE = '%s', MESSAGE = 'pgshard: key range moved to another shard; retry';
      END IF;
    END IF;
`, t.KeyType.SQLHash(row+"."+quoteName(col)), shardmap.RangesSQL(lost, "h"), key, seq, shardmap.CodeFenced)
		}
		fn := fenceFunc(job, i)
		if err := exec(ctx, c, fmt.Sprintf(`CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql AS $pgshard$
DECLARE h bigint;
BEGIN
  IF TG_OP <> 'DELETE' THEN
%s  END IF;
  IF TG_OP <> 'INSERT' THEN
%s  END IF;
  IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
  RETURN NEW;
END
$pgshard$`, fn, check("NEW"), check("OLD"))); err != nil {
			return err
		}
		for _, tr := range []struct{ name, ddl string }{
			{fenceTrigger(job), fmt.Sprintf("CREATE TRIGGER %s BEFORE INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION %s()",
				fenceTrigger(job), quoteIdent(t.Name), fn)},
			{truncFenceTrigger(job), fmt.Sprintf("CREATE TRIGGER %s BEFORE TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s()",
				truncFenceTrigger(job), quoteIdent(t.Name), truncFenceFunc(job))},
		} {
			exists, err := hasTrigger(ctx, c, t.Name, tr.name)
			if err != nil {
				return err
			}
			if exists {
				continue
			}
			if err := r.execLocking(ctx, c, tr.ddl); err != nil {
				return err
			}
		}
	}
	return nil
}

// hasTrigger reports whether table has the trigger name.
func hasTrigger(ctx context.Context, c *pgx.Conn, table, name string) (bool, error) {
	var exists bool
	err := c.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = to_regclass($1) AND tgname = $2)", quoteIdent(table), name).Scan(&exists)
	return exists, err
}

// setFence turns a source's fence on or off (no-op when it is gone).
func setFence(ctx context.Context, c *pgx.Conn, job string, on bool) error {
	v := 0
	if on {
		v = 1
	}
	return exec(ctx, c, fmt.Sprintf(`DO $pgshard$BEGIN IF to_regclass(%s) IS NOT NULL THEN PERFORM setval(%s, %d); END IF; END$pgshard$`,
		quoteLiteral(fenceSeq(job)), quoteLiteral(fenceSeq(job)), v))
}

func createPublication(ctx context.Context, c *pgx.Conn, job string, p pair, d *jobData) error {
	var exists bool
	if err := c.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", p.Name).Scan(&exists); err != nil || exists {
		return err
	}
	var items []string
	for _, t := range d.Sharded {
		items = append(items, fmt.Sprintf("%s WHERE (%s)", quoteIdent(t.Name), shardmap.RangesSQL(p.Ranges, hashExpr(t))))
	}
	if p.Ref {
		for _, t := range d.Reference {
			items = append(items, quoteIdent(t.Name))
		}
	}
	items = append(items, markerTable(job))
	return exec(ctx, c, fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s WITH (publish = 'insert, update, delete')", p.Name, strings.Join(items, ", ")))
}

// createSubscription subscribes the target to the pair's publication
// (copy_data, its own slot), unless it is subscribed already. A slot left
// on the source by a subscription that never committed is dropped first.
func (r *Runner) createSubscription(ctx context.Context, src, tgt *pgx.Conn, p pair, conninfo string) (uint32, error) {
	if oid, ok, err := subOID(ctx, tgt, p.Name); err != nil || ok {
		return oid, err
	}
	if err := dropSlots(ctx, src, p.Name, 0); err != nil {
		return 0, err
	}
	if err := exec(ctx, tgt, fmt.Sprintf("CREATE SUBSCRIPTION %s CONNECTION %s PUBLICATION %s WITH (copy_data = true, create_slot = true, slot_name = %s, enabled = true)",
		p.Name, quoteLiteral(conninfo), p.Name, quoteLiteral(p.Name))); err != nil {
		return 0, err
	}
	oid, _, err := subOID(ctx, tgt, p.Name)
	return oid, err
}

func subOID(ctx context.Context, c *pgx.Conn, name string) (uint32, bool, error) {
	var oid uint32
	err := c.QueryRow(ctx, "SELECT s.oid FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid WHERE d.datname = current_database() AND s.subname = $1", name).Scan(&oid)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	return oid, err == nil, err
}

// dropSlots drops the job's slots of a subscription on the source: its own
// and those of its table synchronisation (named after the subscription's
// OID), waiting for walsenders still holding them to exit.
func dropSlots(ctx context.Context, src *pgx.Conn, name string, oid uint32) error {
	pattern := "-"
	if oid != 0 {
		pattern = fmt.Sprintf(`pg\_%d\_sync\_%%`, oid)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		rows, err := src.Query(ctx, "SELECT slot_name::text, active, active_pid FROM pg_replication_slots WHERE slot_name = $1 OR slot_name LIKE $2", name, pattern)
		if err != nil {
			return err
		}
		type slot struct {
			name   string
			active bool
			pid    *int32
		}
		slots, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (slot, error) {
			var s slot
			return s, row.Scan(&s.name, &s.active, &s.pid)
		})
		if err != nil {
			return err
		}
		if len(slots) == 0 {
			return nil
		}
		busy := false
		for _, s := range slots {
			if s.active {
				busy = true
				if time.Now().After(deadline) && s.pid != nil {
					_, _ = src.Exec(ctx, fmt.Sprintf("SELECT pg_terminate_backend(%d)", *s.pid))
				}
				continue
			}
			if _, err := src.Exec(ctx, "SELECT pg_drop_replication_slot($1)", s.name); err != nil && sqlState(err) != "42704" && sqlState(err) != "55006" {
				return fmt.Errorf("drop slot %s: %w", s.name, err)
			}
		}
		if !busy {
			continue
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// ---- copy ----

// copyPhase waits until every subscription has copied its tables and
// streams with a small lag (and, for a new shard, its replicas have
// replayed), then commits phase cutover with the freeze.
func (r *Runner) copyPhase(ctx context.Context, j shardmap.Job, d *jobData) error {
	m := r.cfg.Store.Map()
	cs := r.jobConns(d)
	// After a cut-over that gave up: fences off, subscriptions on.
	if err := r.reopen(ctx, j, d); err != nil {
		return err
	}
	for {
		if r.changed(j) {
			return errJobChanged
		}
		wait := time.Until(d.RetryAt)
		why := ""
		if wait > 0 {
			why = fmt.Sprintf("cut-over retry in %s (attempt %d)", wait.Round(100*time.Millisecond), d.Attempts+1)
		} else {
			var err error
			why, err = r.notReady(ctx, cs, m, d)
			if err != nil {
				return err
			}
		}
		if why == "" {
			break
		}
		r.setWaiting(why)
		if err := sleep(ctx, r.cfg.PollInterval); err != nil {
			return err
		}
	}
	r.setWaiting("")
	if err := r.hook("copy:synced"); err != nil {
		return err
	}
	m = r.cfg.Store.Map()
	if m.RingVersion() != d.BaseRing {
		return fmt.Errorf("the ring changed since the job was planned (ring version %d, planned at %d): cancel the job", m.RingVersion(), d.BaseRing)
	}
	d.FrozenAt = time.Now().UTC()
	d.Attempts++
	_, err := r.commit(ctx, j, d, PhaseCutover, func(nj *shardmap.Job) { nj.FrozenRing = m.RingVersion() })
	return err
}

func enableSub(ctx context.Context, c *pgx.Conn, name string) error {
	var enabled bool
	err := c.QueryRow(ctx, "SELECT subenabled FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid WHERE d.datname = current_database() AND s.subname = $1", name).Scan(&enabled)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("subscription %s is missing", name)
	}
	if err != nil || enabled {
		return err
	}
	return exec(ctx, c, "ALTER SUBSCRIPTION "+name+" ENABLE")
}

// notReady says what the copy still waits for ("" when nothing).
func (r *Runner) notReady(ctx context.Context, cs *conns, m *shardmap.Map, d *jobData) (string, error) {
	for _, p := range d.Pairs {
		tgt, err := cs.get(ctx, d.dsn(m, p.To))
		if err != nil {
			return "", err
		}
		var total, notReady int
		if err := tgt.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE r.srsubstate <> 'r') FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid
JOIN pg_database db ON db.oid = s.subdbid WHERE db.datname = current_database() AND s.subname = $1`, p.Name).Scan(&total, &notReady); err != nil {
			return "", err
		}
		if total == 0 || notReady > 0 {
			why := fmt.Sprintf("%s: %d of %d tables copying from %s", p.To, notReady, total, p.From)
			var syncErrs, applyErrs int64
			if err := tgt.QueryRow(ctx, "SELECT sync_error_count, apply_error_count FROM pg_stat_subscription_stats WHERE subname = $1", p.Name).Scan(&syncErrs, &applyErrs); err == nil && syncErrs+applyErrs > 0 {
				why += fmt.Sprintf(" (%d copy and %d apply errors so far: see %s's server log)", syncErrs, applyErrs, p.To)
			}
			return why, nil
		}
		src, err := cs.get(ctx, d.dsn(m, p.From))
		if err != nil {
			return "", err
		}
		lag, err := slotLag(ctx, src, p.Name)
		if err != nil {
			return "", err
		}
		if lag > r.cfg.MaxLag {
			return fmt.Sprintf("%s: %d bytes behind %s", p.To, lag, p.From), nil
		}
	}
	for _, t := range d.targets() {
		sh, _ := m.Shard(t)
		c, err := cs.get(ctx, d.dsn(m, t))
		if err != nil {
			return "", err
		}
		var n int
		var lag int64
		if err := c.QueryRow(ctx, "SELECT count(*), coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)), 0)::bigint FROM pg_stat_replication WHERE replay_lsn IS NOT NULL AND pid NOT IN (SELECT active_pid FROM pg_replication_slots WHERE slot_type = 'logical' AND active_pid IS NOT NULL)").Scan(&n, &lag); err != nil {
			return "", err
		}
		if n < len(sh.Replicas) {
			return fmt.Sprintf("%s: %d of %d replicas streaming", t, n, len(sh.Replicas)), nil
		}
		if lag > r.cfg.MaxLag {
			return fmt.Sprintf("%s: a replica is %d bytes behind", t, lag), nil
		}
		for _, dsn := range sh.Replicas {
			_, _ = cs.get(ctx, dsn) // connected before the freeze
		}
	}
	return "", nil
}

// slotLag is how far (bytes) a slot's confirmed position is behind the
// source's WAL.
func slotLag(ctx context.Context, src *pgx.Conn, slot string) (int64, error) {
	var lag *int64
	err := src.QueryRow(ctx, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&lag)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("replication slot %s is missing", slot)
	}
	if err != nil {
		return 0, err
	}
	if lag == nil {
		return 1 << 62, nil
	}
	return *lag, nil
}

// ---- cutover ----

// cutover: every node holds the moving ranges (a); the sources refuse
// writes to them and the writes before are finished (b); the targets have
// everything the sources wrote (c); the subscriptions stop (d); the new
// ring is committed (e), which releases the held statements to the new
// owners; phase cleanup (f). A wait that times out in (a)–(c) gives the
// freeze up and returns to copy, to retry later.
func (r *Runner) cutover(ctx context.Context, j shardmap.Job, d *jobData) error {
	newRing, err := d.newRing()
	if err != nil {
		return err
	}
	m := r.cfg.Store.Map()
	if m.RingVersion() != j.FrozenRing {
		if sameRing(m.Ring(), newRing) {
			return r.afterRing(ctx, j, d, m.RingVersion())
		}
		return r.abortCutover(ctx, j, d, fmt.Errorf("the ring changed during the cut-over (version %d, frozen at %d)", m.RingVersion(), j.FrozenRing))
	}
	cs := r.jobConns(d)
	for _, s := range d.sources() {
		if _, err := cs.get(ctx, d.dsn(m, s)); err != nil {
			return err
		}
	}
	for _, p := range d.Pairs {
		c, err := cs.get(ctx, d.dsn(m, p.To))
		if err != nil {
			return err
		}
		var enabled bool
		if err := c.QueryRow(ctx, "SELECT subenabled FROM pg_subscription WHERE subname = $1", p.Name).Scan(&enabled); err != nil {
			return fmt.Errorf("subscription %s on %s: %w", p.Name, p.To, err)
		}
		if !enabled {
			// A cut-over redone after (d): its workers would take a while
			// to start again, so the freeze is given up and copy waits
			// for them instead.
			return r.abortCutover(ctx, j, d, fmt.Errorf("cut-over resumed with subscription %s disabled", p.Name))
		}
	}
	// (a)
	actx, cancel := context.WithTimeout(ctx, r.cfg.FreezeTimeout)
	err = r.cfg.Nodes.WaitApplied(actx, j.Updated)
	cancel()
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return r.abortCutover(ctx, j, d, fmt.Errorf("nodes did not apply the freeze: %w", err))
	}
	r.log.Debug("cut-over step", "job", j.ID, "step", "cutover:frozen", "since_freeze", time.Since(d.FrozenAt))
	if err := r.hook("cutover:frozen"); err != nil {
		return err
	}
	// (b) the fence, then the barrier: a writer that passed the fence's
	// check holds the advisory lock shared until its transaction ends.
	for _, s := range d.sources() {
		c, _ := cs.get(ctx, d.dsn(m, s))
		if err := setFence(ctx, c, j.ID, true); err != nil {
			return err
		}
	}
	r.log.Debug("cut-over step", "job", j.ID, "step", "cutover:fenced", "since_freeze", time.Since(d.FrozenAt))
	if err := r.hook("cutover:fenced"); err != nil {
		return err
	}
	for _, s := range d.sources() {
		c, _ := cs.get(ctx, d.dsn(m, s))
		key := fenceLockKey(j.ID)
		_, err := c.Exec(ctx, fmt.Sprintf("SET lock_timeout = '%dms'; SELECT pg_advisory_lock(%d); SELECT pg_advisory_unlock(%d); RESET lock_timeout", r.cfg.FreezeTimeout.Milliseconds(), key, key))
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return r.abortCutover(ctx, j, d, fmt.Errorf("transactions writing the moving ranges on %s did not finish within %s: %w", s, r.cfg.FreezeTimeout, err))
		}
	}
	r.log.Debug("cut-over step", "job", j.ID, "step", "barrier", "since_freeze", time.Since(d.FrozenAt))
	// (c) a marker row written on each source after the barrier: the
	// target applies transactions in the source's commit order, so once
	// the marker is there, every write the source kept in the pair's
	// ranges is there too; a synchronous commit on the target then
	// flushes them (the subscription commits asynchronously).
	deadline := time.Now().Add(r.cfg.FreezeTimeout)
	for _, p := range d.Pairs {
		src, _ := cs.get(ctx, d.dsn(m, p.From))
		mark := fmt.Sprintf("%s/%d/%d", p.Name, d.Attempts, time.Now().UnixNano())
		if err := exec(ctx, src, fmt.Sprintf("INSERT INTO %s (k) VALUES (%s)", markerTable(j.ID), quoteLiteral(mark))); err != nil {
			return err
		}
		tgt, _ := cs.get(ctx, d.dsn(m, p.To))
		for {
			var ok bool
			if err := tgt.QueryRow(ctx, fmt.Sprintf("SELECT EXISTS (SELECT 1 FROM %s WHERE k = %s)", markerTable(j.ID), quoteLiteral(mark))).Scan(&ok); err != nil {
				return err
			}
			if ok {
				break
			}
			if time.Now().After(deadline) {
				return r.abortCutover(ctx, j, d, fmt.Errorf("%s did not catch up with %s within %s", p.To, p.From, r.cfg.FreezeTimeout))
			}
			if err := sleep(ctx, time.Millisecond); err != nil {
				return err
			}
		}
	}
	// The targets' streaming replicas take reads of the moved ranges as
	// soon as the ring moves: they replay the targets' WAL first.
	r.log.Debug("cut-over step", "job", j.ID, "step", "markers", "since_freeze", time.Since(d.FrozenAt))
	targetLSN := map[string]string{}
	for _, t := range d.targets() {
		c, _ := cs.get(ctx, d.dsn(m, t))
		// remote_apply flushes like on (no synchronous standbys are
		// configured) and marks the commit record so that each replica
		// reports its replay at once instead of at its next status
		// interval.
		if err := exec(ctx, c, "SET synchronous_commit = remote_apply; SELECT pg_catalog.txid_current(); RESET synchronous_commit"); err != nil {
			return err
		}
		var lsn string
		if err := c.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn); err != nil {
			return err
		}
		targetLSN[t] = lsn
	}
	r.log.Debug("cut-over step", "job", j.ID, "step", "targets flushed", "since_freeze", time.Since(d.FrozenAt))
	// The replicas replay while the rest of the cut-over goes on (on
	// connections of their own); the ring waits for them.
	type replica struct {
		shard, dsn, lsn string
		c               *pgx.Conn
	}
	var replicas []replica
	for _, t := range d.targets() {
		sh, _ := m.Shard(t)
		for _, dsn := range sh.Replicas {
			c, err := cs.get(ctx, dsn)
			if err != nil {
				// An unreachable replica takes no reads (the proxy's
				// health checks); a lagging one none of these.
				r.log.Warn("replica not checked at cut-over", "shard", t, "replica", dsn, "err", err)
				continue
			}
			replicas = append(replicas, replica{t, dsn, targetLSN[t], c})
		}
	}
	rctx, rcancel := context.WithCancel(ctx)
	replayed := make(chan error, 1)
	go func() {
		for _, rp := range replicas {
			if err := waitReplayed(rctx, rp.c, rp.lsn, deadline); err != nil {
				if errors.Is(err, errTimeout) {
					replayed <- fmt.Errorf("replica %s of %s did not replay %s within %s", rp.dsn, rp.shard, rp.lsn, r.cfg.FreezeTimeout)
					return
				}
				if rctx.Err() == nil {
					r.log.Warn("replica not checked at cut-over", "shard", rp.shard, "replica", rp.dsn, "err", err)
				}
			}
		}
		replayed <- nil
	}()
	defer func() {
		rcancel()
		if replayed != nil {
			<-replayed
		}
	}()
	r.log.Debug("cut-over step", "job", j.ID, "step", "cutover:caughtup", "since_freeze", time.Since(d.FrozenAt))
	if err := r.hook("cutover:caughtup"); err != nil {
		return err
	}
	// The moving rows are still on both sides now: count them.
	if r.cfg.VerifyRows >= 0 && planRows(d) <= r.cfg.VerifyRows {
		v, err := r.verify(ctx, cs, m, d)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return r.abortCutover(ctx, j, d, err)
		}
		d.Verified = v
	} else {
		d.Verified = fmt.Sprintf("skipped at cut-over: about %d rows move (limit %d)", planRows(d), r.cfg.VerifyRows)
	}
	r.log.Debug("cut-over step", "job", j.ID, "step", "verified", "since_freeze", time.Since(d.FrozenAt))
	// (d)
	for _, p := range d.Pairs {
		c, _ := cs.get(ctx, d.dsn(m, p.To))
		if err := exec(ctx, c, "ALTER SUBSCRIPTION "+p.Name+" DISABLE"); err != nil {
			return err
		}
	}
	for _, p := range d.Pairs {
		c, _ := cs.get(ctx, d.dsn(m, p.To))
		for {
			// A disabled subscription's worker notices only when it next
			// wakes up (up to a second): everything it had to apply is
			// applied and flushed (c), so it is stopped now.
			var n int
			if err := c.QueryRow(ctx, "SELECT count(pg_terminate_backend(s.pid)) FROM pg_stat_subscription s JOIN pg_subscription p ON p.oid = s.subid WHERE p.subname = $1 AND s.pid IS NOT NULL", p.Name).Scan(&n); err != nil {
				return err
			}
			if n == 0 {
				break
			}
			if err := sleep(ctx, 5*time.Millisecond); err != nil {
				return err
			}
		}
	}
	r.log.Debug("cut-over step", "job", j.ID, "step", "workers stopped", "since_freeze", time.Since(d.FrozenAt))
	err = <-replayed
	replayed = nil
	if err != nil {
		return r.abortCutover(ctx, j, d, err)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	r.log.Debug("cut-over step", "job", j.ID, "step", "cutover:disabled", "since_freeze", time.Since(d.FrozenAt))
	if err := r.hook("cutover:disabled"); err != nil {
		return err
	}
	// (e)
	nm, err := r.cfg.Store.Apply(ctx, shardmap.SetRing(newRing, j.FrozenRing))
	if errors.Is(err, shardmap.ErrStaleVersion) {
		nm = r.cfg.Store.Map()
		if !sameRing(nm.Ring(), newRing) {
			return r.abortCutover(ctx, j, d, fmt.Errorf("commit the new ring: %w", err))
		}
	} else if err != nil {
		return fmt.Errorf("commit the new ring: %w", err)
	}
	if err := r.hook("cutover:ring"); err != nil {
		return err
	}
	return r.afterRing(ctx, j, d, nm.RingVersion())
}

var errTimeout = errors.New("timed out")

// waitReplayed waits until the replica on c has replayed lsn.
func waitReplayed(ctx context.Context, c *pgx.Conn, lsn string, deadline time.Time) error {
	for {
		var ok *bool
		if err := c.QueryRow(ctx, "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn).Scan(&ok); err != nil {
			return err
		}
		if ok != nil && *ok {
			return nil
		}
		if time.Now().After(deadline) {
			return errTimeout
		}
		if err := sleep(ctx, time.Millisecond); err != nil {
			return err
		}
	}
}

// afterRing records the cut-over and commits phase cleanup (f).
func (r *Runner) afterRing(ctx context.Context, j shardmap.Job, d *jobData, ringVersion uint64) error {
	if d.RingVersion == 0 {
		d.RingVersion = ringVersion
		if !d.FrozenAt.IsZero() {
			dur := time.Since(d.FrozenAt)
			d.CutoverNS = int64(dur)
			d.Cutover = dur.Round(time.Microsecond).String()
		}
	}
	d.Error = ""
	_, err := r.commit(ctx, j, d, PhaseCleanup, func(nj *shardmap.Job) { nj.FrozenRing = 0 })
	if err == nil {
		r.log.Info("reshard cut-over done", "job", j.ID, "freeze", d.Cutover, "verified", d.Verified)
	}
	return err
}

// reopen undoes a cut-over's steps on the databases: fences off on the
// sources, subscriptions enabled on the targets.
func (r *Runner) reopen(ctx context.Context, j shardmap.Job, d *jobData) error {
	m := r.cfg.Store.Map()
	cs := r.jobConns(d)
	for _, s := range d.sources() {
		c, err := cs.get(ctx, d.dsn(m, s))
		if err != nil {
			return err
		}
		if err := setFence(ctx, c, j.ID, false); err != nil {
			return err
		}
	}
	for _, p := range d.Pairs {
		c, err := cs.get(ctx, d.dsn(m, p.To))
		if err != nil {
			return err
		}
		if err := enableSub(ctx, c, p.Name); err != nil {
			return err
		}
	}
	return nil
}

// abortCutover gives the freeze up: fences off, subscriptions on, back to
// copy with a later retry.
func (r *Runner) abortCutover(ctx context.Context, j shardmap.Job, d *jobData, cause error) error {
	r.log.Warn("cut-over gave up; retrying later", "job", j.ID, "attempt", d.Attempts, "err", cause)
	if err := r.reopen(ctx, j, d); err != nil {
		return err
	}
	d.Error = "cut-over attempt " + fmt.Sprint(d.Attempts) + ": " + cause.Error()
	d.RetryAt = time.Now().Add(min(r.cfg.RetryBackoff<<min(max(d.Attempts-1, 0), 5), 30*time.Second)).UTC()
	d.FrozenAt = time.Time{}
	_, err := r.commit(ctx, j, d, PhaseCopy, func(nj *shardmap.Job) { nj.FrozenRing = 0 })
	return err
}

func sameRing(a, b *shardmap.Ring) bool {
	if a == nil || b == nil {
		return a == b
	}
	ta, tb := a.Tokens(), b.Tokens()
	if len(ta) != len(tb) {
		return false
	}
	for i := range ta {
		if ta[i] != tb[i] {
			return false
		}
	}
	return true
}

func planRows(d *jobData) int64 {
	var n int64
	for _, t := range d.Tables {
		n += t.Rows
	}
	return n
}

// verify counts, per moved table and pair, the rows of the moving ranges
// and the sum of their key hashes on the source and on the target. It runs
// in the cut-over, when neither side changes them: one scan per table and
// server (a FILTER per pair), the servers in parallel.
func (r *Runner) verify(ctx context.Context, cs *conns, m *shardmap.Map, d *jobData) (string, error) {
	type tally struct {
		n   int64
		sum string
	}
	var servers []string
	for _, p := range d.Pairs {
		for _, s := range []string{p.From, p.To} {
			if !slices.Contains(servers, s) {
				servers = append(servers, s)
			}
		}
	}
	type work struct {
		c       *pgx.Conn
		queries []string
		keys    [][]string // per query, the result keys of its columns (pairs of n and sum)
		out     map[string]tally
		err     error
	}
	works := make([]*work, len(servers))
	for i, s := range servers {
		c, err := cs.get(ctx, d.dsn(m, s))
		if err != nil {
			return "", err
		}
		w := &work{c: c, out: map[string]tally{}}
		for _, t := range d.Sharded {
			var cols, keys []string
			for pi, p := range d.Pairs {
				if p.From != s && p.To != s {
					continue
				}
				in := shardmap.RangesSQL(p.Ranges, "h")
				cols = append(cols, fmt.Sprintf("count(*) FILTER (WHERE %s), coalesce(sum(h::numeric) FILTER (WHERE %s), 0)::text", in, in))
				keys = append(keys, fmt.Sprintf("%d/%s", pi, t.Name))
			}
			w.queries = append(w.queries, fmt.Sprintf("SELECT %s FROM (SELECT %s AS h FROM %s) s", strings.Join(cols, ", "), hashExpr(t), quoteIdent(t.Name)))
			w.keys = append(w.keys, keys)
		}
		for pi, p := range d.Pairs {
			if !p.Ref || (p.From != s && p.To != s) {
				continue
			}
			for _, t := range d.Reference {
				w.queries = append(w.queries, fmt.Sprintf("SELECT count(*), '' FROM %s", quoteIdent(t.Name)))
				w.keys = append(w.keys, []string{fmt.Sprintf("%d/%s", pi, t.Name)})
			}
		}
		works[i] = w
	}
	done := make(chan struct{}, len(works))
	for _, w := range works {
		go func() {
			defer func() { done <- struct{}{} }()
			for qi, q := range w.queries {
				vals := make([]any, 0, 2*len(w.keys[qi]))
				ts := make([]tally, len(w.keys[qi]))
				for k := range ts {
					vals = append(vals, &ts[k].n, &ts[k].sum)
				}
				if err := w.c.QueryRow(ctx, q).Scan(vals...); err != nil {
					w.err = fmt.Errorf("verify: %s: %w", firstLine(q), err)
					return
				}
				for k, key := range w.keys[qi] {
					w.out[key] = ts[k]
				}
			}
		}()
	}
	for range works {
		<-done
	}
	for _, w := range works {
		if w.err != nil {
			return "", w.err
		}
	}
	var rows int64
	for pi, p := range d.Pairs {
		src := works[slices.Index(servers, p.From)].out
		tgt := works[slices.Index(servers, p.To)].out
		names := make([]string, 0, len(d.Sharded)+len(d.Reference))
		for _, t := range d.Sharded {
			names = append(names, t.Name)
		}
		if p.Ref {
			for _, t := range d.Reference {
				names = append(names, t.Name)
			}
		}
		for _, name := range names {
			key := fmt.Sprintf("%d/%s", pi, name)
			a, b := src[key], tgt[key]
			if a != b {
				return "", fmt.Errorf("verify %s %s→%s: source has %d rows (key sum %s), target %d (key sum %s)", name, p.From, p.To, a.n, a.sum, b.n, b.sum)
			}
			rows += a.n
		}
	}
	return fmt.Sprintf("counts and key sums equal at cut-over (%d rows)", rows), nil
}

// ---- cleanup and cancel ----

// cleanup waits until every node routes by the new ring, then drops the
// replication and the fences, deletes the moved rows from the sources,
// settles the shard's state and commits done.
func (r *Runner) cleanup(ctx context.Context, j shardmap.Job, d *jobData) error {
	r.setWaiting("every node applying the new ring")
	actx, cancel := context.WithTimeout(ctx, 10*r.cfg.FreezeTimeout)
	err := r.cfg.Nodes.WaitApplied(actx, d.RingVersion)
	cancel()
	if err != nil {
		return fmt.Errorf("nodes applying the new ring (version %d): %w", d.RingVersion, err)
	}
	if err := r.hook("cleanup:applied"); err != nil {
		return err
	}
	m := r.cfg.Store.Map()
	cs := r.jobConns(d)
	r.setWaiting("dropping the replication and the fences")
	if err := r.dropAll(ctx, cs, m, j.ID, d); err != nil {
		return err
	}
	if err := r.hook("cleanup:dropped"); err != nil {
		return err
	}
	if d.Spec.Add != nil {
		for _, s := range d.sources() {
			c, err := cs.get(ctx, d.dsn(m, s))
			if err != nil {
				return err
			}
			r.setWaiting("deleting the moved rows from " + s)
			for _, t := range d.Sharded {
				if _, err := r.deleteRows(ctx, c, t, d.lost(s)); err != nil {
					return fmt.Errorf("delete moved rows of %s on %s: %w", t.Name, s, err)
				}
			}
		}
		if sh, ok := m.Shard(d.Spec.Add.Name); ok && sh.State != shardmap.ShardActive {
			if _, err := r.cfg.Store.Apply(ctx, shardmap.SetShardState(sh.Name, shardmap.ShardActive)); err != nil {
				return err
			}
		}
	} else if _, ok := m.Shard(d.Spec.Remove); ok {
		if _, err := r.cfg.Store.Apply(ctx, shardmap.RemoveShard(d.Spec.Remove)); err != nil && !errors.Is(err, shardmap.ErrUnknownShard) {
			return err
		}
	}
	r.setWaiting("")
	d.Error = ""
	d.Finished = time.Now().UTC()
	_, err = r.commit(ctx, j, d, PhaseDone, func(nj *shardmap.Job) { nj.Moving, nj.FrozenRing = nil, 0 })
	return err
}

// cancelling rolls a job back before its cut-over: replication and fences
// dropped, the copies deleted from the targets, the shard's state restored.
func (r *Runner) cancelling(ctx context.Context, j shardmap.Job, d *jobData) error {
	m := r.cfg.Store.Map()
	cs := r.jobConns(d)
	for _, s := range d.sources() {
		if c, err := cs.get(ctx, d.dsn(m, s)); err != nil {
			return err
		} else if err := setFence(ctx, c, j.ID, false); err != nil {
			return err
		}
	}
	r.setWaiting("dropping the replication and the fences")
	if err := r.dropAll(ctx, cs, m, j.ID, d); err != nil {
		return err
	}
	if err := r.hook("cancel:dropped"); err != nil {
		return err
	}
	for _, p := range d.Pairs {
		c, err := cs.get(ctx, d.dsn(m, p.To))
		if err != nil {
			return err
		}
		r.setWaiting("deleting the copied rows from " + p.To)
		for _, t := range d.Sharded {
			if _, err := r.deleteRows(ctx, c, t, p.Ranges); err != nil {
				return fmt.Errorf("delete copied rows of %s on %s: %w", t.Name, p.To, err)
			}
		}
		if p.Ref {
			for _, t := range d.Reference {
				if err := exec(ctx, c, "SET session_replication_role = replica; DELETE FROM "+quoteIdent(t.Name)+"; RESET session_replication_role"); err != nil {
					return err
				}
			}
		}
	}
	if d.Spec.Add != nil {
		if _, ok := m.Shard(d.Spec.Add.Name); ok {
			if _, err := r.cfg.Store.Apply(ctx, shardmap.RemoveShard(d.Spec.Add.Name)); err != nil && !errors.Is(err, shardmap.ErrUnknownShard) {
				return err
			}
		}
	} else if sh, ok := m.Shard(d.Spec.Remove); ok && sh.State != shardmap.ShardActive {
		if _, err := r.cfg.Store.Apply(ctx, shardmap.SetShardState(sh.Name, shardmap.ShardActive)); err != nil {
			return err
		}
	}
	r.setWaiting("")
	d.Error = ""
	d.Finished = time.Now().UTC()
	_, err := r.commit(ctx, j, d, PhaseCancelled, func(nj *shardmap.Job) { nj.Moving, nj.FrozenRing = nil, 0 })
	return err
}

// dropAll drops the subscriptions (targets), their slots and the
// publications (sources), and the fences (sources).
func (r *Runner) dropAll(ctx context.Context, cs *conns, m *shardmap.Map, job string, d *jobData) error {
	for _, p := range d.Pairs {
		tgt, err := cs.get(ctx, d.dsn(m, p.To))
		if err != nil {
			return err
		}
		oid, ok, err := subOID(ctx, tgt, p.Name)
		if err != nil {
			return err
		}
		if ok {
			if err := exec(ctx, tgt, "ALTER SUBSCRIPTION "+p.Name+" DISABLE"); err != nil {
				return err
			}
			if err := exec(ctx, tgt, "ALTER SUBSCRIPTION "+p.Name+" SET (slot_name = NONE)"); err != nil {
				return err
			}
			if err := exec(ctx, tgt, "DROP SUBSCRIPTION IF EXISTS "+p.Name); err != nil {
				return err
			}
		} else {
			oid = p.SubOID
		}
		src, err := cs.get(ctx, d.dsn(m, p.From))
		if err != nil {
			return err
		}
		if err := dropSlots(ctx, src, p.Name, oid); err != nil {
			return err
		}
		if err := exec(ctx, src, "DROP PUBLICATION IF EXISTS "+p.Name); err != nil {
			return err
		}
	}
	for _, s := range d.sources() {
		c, err := cs.get(ctx, d.dsn(m, s))
		if err != nil {
			return err
		}
		for i, t := range d.Sharded {
			for _, tr := range []string{fenceTrigger(job), truncFenceTrigger(job)} {
				exists, err := hasTrigger(ctx, c, t.Name, tr)
				if err != nil {
					return err
				}
				if exists {
					if err := r.execLocking(ctx, c, fmt.Sprintf("DROP TRIGGER IF EXISTS %s ON %s", tr, quoteIdent(t.Name))); err != nil {
						return err
					}
				}
			}
			if err := exec(ctx, c, fmt.Sprintf("DROP FUNCTION IF EXISTS %s()", fenceFunc(job, i))); err != nil {
				return err
			}
		}
		if err := exec(ctx, c, fmt.Sprintf("DROP FUNCTION IF EXISTS %s(); DROP SEQUENCE IF EXISTS %s", truncFenceFunc(job), fenceSeq(job))); err != nil {
			return err
		}
	}
	for _, s := range append(d.sources(), d.targets()...) {
		c, err := cs.get(ctx, d.dsn(m, s))
		if err != nil {
			return err
		}
		if err := exec(ctx, c, "DROP TABLE IF EXISTS "+markerTable(job)); err != nil {
			return err
		}
		if _, err := c.Exec(ctx, "DROP SCHEMA IF EXISTS pgshard"); err != nil && sqlState(err) != "2BP01" { // other objects in it: keep it
			return fmt.Errorf("drop schema pgshard: %w", err)
		}
	}
	return nil
}

// deleteRows deletes a table's rows in ranges, in batches, without firing
// user triggers (session_replication_role = replica).
func (r *Runner) deleteRows(ctx context.Context, c *pgx.Conn, t shardmap.Table, ranges []shardmap.Range) (int64, error) {
	if len(ranges) == 0 {
		return 0, nil
	}
	if err := exec(ctx, c, "SET session_replication_role = replica"); err != nil {
		return 0, err
	}
	defer func() { _, _ = c.Exec(context.WithoutCancel(ctx), "RESET session_replication_role") }()
	q := quoteIdent(t.Name)
	sql := fmt.Sprintf("DELETE FROM %s WHERE ctid = ANY (ARRAY (SELECT ctid FROM %s WHERE %s LIMIT %d))", q, q, shardmap.RangesSQL(ranges, hashExpr(t)), r.cfg.DeleteBatch)
	var total int64
	for {
		tag, err := c.Exec(ctx, sql)
		if err != nil {
			return total, err
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() == 0 {
			return total, nil
		}
	}
}
