package resharder

import (
	"errors"

	"context"
	"fmt"
	"github.com/jackc/pgx/v5"
	"time"

	"github.com/pgshard/pgshard/shardmap"
)

// status builds a job's Status; with live, while the job copies, it reads
// progress from the databases (copied rows, lag), bounded in time.
func (r *Runner) status(ctx context.Context, j shardmap.Job, live bool) (*Status, error) {
	d, err := decodeData(j)
	if err != nil {
		return nil, err
	}
	st := &Status{
		ID: j.ID, Phase: j.Phase, Spec: d.Spec, Started: d.Started, Updated: d.Updated,
		Error: d.Error, Finished: finished(j.Phase), Verified: d.Verified,
		Cutover: time.Duration(d.CutoverNS), CutoverAttempts: d.Attempts,
	}
	r.pmu.Lock()
	if !st.Finished {
		st.Waiting = r.waiting
	}
	r.pmu.Unlock()
	for _, t := range d.Tables {
		tp := TableProgress{TableMove: t}
		switch j.Phase {
		case PhaseCutover, PhaseCleanup, PhaseDone:
			tp.Copied = t.Rows // the plan's figure, unless this node counted
			for _, p := range d.Pairs {
				if p.From == t.From && p.To == t.To {
					r.pmu.Lock()
					if n, ok := r.counted[j.ID+"/"+p.Name+"/"+t.Table]; ok {
						tp.Copied = n
					}
					r.pmu.Unlock()
				}
			}
		}
		st.Tables = append(st.Tables, tp)
	}
	if live && (j.Phase == PhasePrepare || j.Phase == PhaseCopy) {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := r.progress(lctx, j, d, st); err != nil && st.Error == "" {
			st.Error = "progress: " + err.Error()
		}
	}
	return st, nil
}

// progress fills in copied rows per table move (the table
// synchronisation's COPY progress while it runs, a count of the target's
// rows in the pair's ranges once it is done), the largest lag, the copy
// rate and an ETA.
func (r *Runner) progress(ctx context.Context, j shardmap.Job, d *jobData, st *Status) error {
	m := r.cfg.Store.Map()
	cs := r.newConns(d.Database)
	defer cs.close()
	var copied, total int64
	for i := range st.Tables {
		tp := &st.Tables[i]
		total += tp.Rows
		pi := -1
		for k, p := range d.Pairs {
			if p.From == tp.From && p.To == tp.To {
				pi = k
			}
		}
		if pi < 0 {
			continue
		}
		p := d.Pairs[pi]
		key := j.ID + "/" + p.Name + "/" + tp.Table
		r.pmu.Lock()
		n, ok := r.counted[key]
		r.pmu.Unlock()
		if ok {
			tp.Copied = n
			copied += n
			continue
		}
		tgt, err := cs.get(ctx, d.dsn(m, p.To))
		if err != nil {
			return err
		}
		var state *string
		err = tgt.QueryRow(ctx, `SELECT r.srsubstate::text FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid
WHERE s.subname = $1 AND r.srrelid = to_regclass($2)`, p.Name, quoteIdent(tp.Table)).Scan(&state)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		if state != nil && (*state == "r" || *state == "s") {
			q := "SELECT count(*) FROM " + quoteIdent(tp.Table)
			if tp.Kind == string(shardmap.TableSharded) {
				for _, t := range d.Sharded {
					if t.Name == tp.Table {
						q += " WHERE " + shardmap.RangesSQL(p.Ranges, hashExpr(t))
					}
				}
			}
			if err := tgt.QueryRow(ctx, q).Scan(&n); err != nil {
				return err
			}
			r.pmu.Lock()
			r.counted[key] = n
			r.pmu.Unlock()
		} else if state != nil {
			_ = tgt.QueryRow(ctx, `SELECT coalesce(sum(pc.tuples_processed), 0)::bigint FROM pg_stat_progress_copy pc
JOIN pg_stat_subscription ss ON ss.pid = pc.pid JOIN pg_subscription s ON s.oid = ss.subid
WHERE s.subname = $1 AND ss.relid = to_regclass($2)`, p.Name, quoteIdent(tp.Table)).Scan(&n)
		}
		tp.Copied = n
		copied += n
	}
	for _, p := range d.Pairs {
		src, err := cs.get(ctx, d.dsn(m, p.From))
		if err != nil {
			return err
		}
		if lag, err := slotLag(ctx, src, p.Name); err == nil && lag < 1<<62 {
			st.LagBytes = max(st.LagBytes, lag)
		}
	}
	if !d.CopyStarted.IsZero() {
		if secs := time.Since(d.CopyStarted).Seconds(); secs > 0 {
			st.RowsPerSec = float64(copied) / secs
		}
		if st.RowsPerSec > 0 && total > copied {
			st.ETA = time.Duration(float64(total-copied) / st.RowsPerSec * float64(time.Second))
		}
	}
	return nil
}

func (st *Status) String() string {
	return fmt.Sprintf("job %s: %s", st.ID, st.Phase)
}
