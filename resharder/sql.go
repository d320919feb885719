package resharder

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshard/pgshard/config"
	"github.com/pgshard/pgshard/shardmap"
)

// quoteIdent quotes a possibly schema-qualified name part by part.
func quoteIdent(name string) string {
	parts := strings.Split(name, ".")
	for i, p := range parts {
		parts[i] = `"` + strings.ReplaceAll(p, `"`, `""`) + `"`
	}
	return strings.Join(parts, ".")
}

// quoteName quotes one identifier (dots are part of it).
func quoteName(name string) string { return `"` + strings.ReplaceAll(name, `"`, `""`) + `"` }

// quoteLiteral quotes a SQL string literal (standard_conforming_strings on).
func quoteLiteral(v string) string { return "'" + strings.ReplaceAll(v, "'", "''") + "'" }

// connString completes a shard's DSN with the resharder's login and db.
func connString(dsn string, l Login, db string) string {
	return config.WithLogin(dsn, l.User, l.Password, db)
}

// connect opens a connection to a shard's primary as the resharder's login.
func (r *Runner) connect(ctx context.Context, shardDSN, db string) (*pgx.Conn, error) {
	cs := connString(shardDSN, r.cfg.Login, db)
	cfg, err := pgx.ParseConfig(cs)
	if err != nil {
		return nil, fmt.Errorf("connection string of %q: %w", shardDSN, err)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	cfg.RuntimeParams["application_name"] = "pgshard-resharder"
	// Plain protocol: statements here are mostly DDL and catalog reads, and a
	// cached plan would outlive the objects it names.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", shardDSN, err)
	}
	return c, nil
}

// conns caches one connection per shard for the duration of a step.
type conns struct {
	r  *Runner
	db string
	m  map[string]*pgx.Conn // by DSN
}

func (r *Runner) newConns(db string) *conns { return &conns{r: r, db: db, m: map[string]*pgx.Conn{}} }

func (cs *conns) get(ctx context.Context, dsn string) (*pgx.Conn, error) {
	if c, ok := cs.m[dsn]; ok && !c.IsClosed() {
		return c, nil
	}
	c, err := cs.r.connect(ctx, dsn, cs.db)
	if err != nil {
		return nil, err
	}
	cs.m[dsn] = c
	return c, nil
}

func (cs *conns) close() {
	for k, c := range cs.m {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = c.Close(ctx)
		cancel()
		delete(cs.m, k)
	}
}

// exec runs sql (one or more statements, no parameters).
func exec(ctx context.Context, c *pgx.Conn, sql string) error {
	_, err := c.Exec(ctx, sql)
	if err != nil {
		return fmt.Errorf("%s: %w", firstLine(sql), err)
	}
	return nil
}

func firstLine(sql string) string {
	sql = strings.TrimSpace(sql)
	if i := strings.IndexByte(sql, '\n'); i >= 0 {
		sql = sql[:i] + " …"
	}
	if len(sql) > 160 {
		sql = sql[:160] + " …"
	}
	return sql
}

// sqlState returns the SQLSTATE of a PostgreSQL error, or "".
func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// execLocking runs DDL that needs a table lock conflicting with writers
// (CREATE/DROP TRIGGER) under a short lock_timeout, retrying until ctx ends,
// so it never queues writers behind it for long.
func (r *Runner) execLocking(ctx context.Context, c *pgx.Conn, sql string) error {
	for attempt := 0; ; attempt++ {
		_, err := c.Exec(ctx, "SET lock_timeout = "+quoteLiteral(fmt.Sprintf("%dms", r.cfg.LockTimeout.Milliseconds()))+"; "+sql+"; RESET lock_timeout")
		if err == nil {
			return nil
		}
		_, _ = c.Exec(ctx, "RESET lock_timeout")
		if sqlState(err) != "55P03" { // lock_not_available
			return fmt.Errorf("%s: %w", firstLine(sql), err)
		}
		if err := sleep(ctx, time.Duration(min(attempt+1, 10))*20*time.Millisecond); err != nil {
			return err
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// hashExpr is the ring position of a table's key column in SQL.
func hashExpr(t shardmap.Table) string {
	col := t.KeyColumn
	if col == "" {
		col = shardmap.DefaultKeyColumn
	}
	return t.KeyType.SQLHash(quoteName(col))
}

// Object names of a job. Job IDs are lowercase letters and digits, so the
// names need no quoting and stay far below 63 bytes.
func fenceSeq(job string) string         { return "pgshard.fence_" + job }
func fenceTrigger(job string) string     { return "pgshard_fence_" + job }
func fenceFunc(job string, i int) string { return fmt.Sprintf("pgshard.fence_%s_%d", job, i) }

// The job's TRUNCATE fence on a source: a statement trigger on each moved
// table and its function.
func truncFenceTrigger(job string) string { return "pgshard_fence_trunc_" + job }
func truncFenceFunc(job string) string    { return "pgshard.fence_trunc_" + job }
func pairName(job string, i int) string   { return fmt.Sprintf("pgshard_%s_%d", job, i) }

func markerTable(job string) string { return "pgshard.marker_" + job }

// markerDDL creates the job's marker table (see the cut-over's step (c)).
func markerDDL(job string) string {
	return "CREATE SCHEMA IF NOT EXISTS pgshard; CREATE TABLE IF NOT EXISTS " + markerTable(job) + " (k text PRIMARY KEY)"
}

// fenceLockKey is the advisory lock that orders writers of fenced ranges
// before the cut-over's barrier (see DESIGN.md, "The barrier").
func fenceLockKey(job string) int64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte("pgshard fence " + job))
	return int64(h.Sum64())
}
