package replication

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// primaryQuery samples the primary's WAL insert position and the sizes
// needed to turn it into a record end (see recordEnd). The insert position,
// unlike pg_current_wal_lsn(), already covers a commit whose WAL is not yet
// written out (synchronous_commit = off).
const primaryQuery = `SELECT pg_current_wal_insert_lsn(), current_setting('wal_block_size'), pg_size_bytes(current_setting('wal_segment_size'))`

// replicaQuery reads a replica's recovery state and positions, and its own
// view of its replay delay (-1 when it has replayed no transaction yet).
const replicaQuery = `SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn(), pg_last_wal_receive_lsn(), ` +
	`COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), -1)`

// run checks one node every Interval until ctx ends, over one connection
// that it opens again whenever it breaks. Checks never overlap: a hung
// node costs at most Timeout per check.
func (m *Monitor) run(ctx context.Context, n *node) {
	defer m.wg.Done()
	var conn *pgconn.PgConn
	defer func() {
		if conn != nil {
			closeConn(conn)
		}
	}()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		began := time.Now()
		cctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
		var err error
		if conn == nil {
			conn, err = pgconn.ConnectConfig(cctx, n.connCfg)
			if err != nil {
				conn = nil
				err = fmt.Errorf("connect: %w", err)
			}
		}
		// The send time is taken after connecting: it is when the query
		// leaves, which is what read-your-writes relies on.
		sent := m.now()
		if n.index < 0 {
			var res primaryResult
			if err == nil {
				res, err = checkPrimary(cctx, conn)
			}
			cancel()
			if ctx.Err() != nil {
				return
			}
			m.recordPrimary(sent, res, err)
		} else {
			var res replicaResult
			if err == nil {
				res, err = checkReplica(cctx, conn)
			}
			cancel()
			if ctx.Err() != nil {
				return
			}
			m.recordReplica(n.index, sent, res, err)
		}
		if err != nil && conn != nil && !keepConn(conn, err) {
			closeConn(conn)
			conn = nil
		}
		timer.Reset(max(m.cfg.Interval-time.Since(began), 0))
	}
}

// keepConn reports whether conn is still usable after a failed check: only
// when the server answered with an error and the connection is intact.
func keepConn(conn *pgconn.PgConn, err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && !conn.IsClosed() && pgErr.Severity != "FATAL" && pgErr.Severity != "PANIC"
}

// closeConn closes a connection without waiting long for a dead server.
func closeConn(conn *pgconn.PgConn) {
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_ = conn.Close(ctx)
}

// queryRow runs sql and returns its single row in text form.
func queryRow(ctx context.Context, conn *pgconn.PgConn, sql string, cols int) ([][]byte, error) {
	res, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("query: %w", err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != cols {
		return nil, fmt.Errorf("query: unexpected result shape")
	}
	return res[0].Rows[0], nil
}

func checkPrimary(ctx context.Context, conn *pgconn.PgConn) (primaryResult, error) {
	row, err := queryRow(ctx, conn, primaryQuery, 3)
	if err != nil {
		return primaryResult{}, err
	}
	insert, err := ParseLSN(string(row[0]))
	if err != nil {
		return primaryResult{}, err
	}
	block, err1 := strconv.ParseUint(string(row[1]), 10, 64)
	seg, err2 := strconv.ParseUint(string(row[2]), 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return primaryResult{}, fmt.Errorf("wal sizes: %w", err)
	}
	return primaryResult{lsn: recordEnd(insert, block, seg)}, nil
}

func checkReplica(ctx context.Context, conn *pgconn.PgConn) (replicaResult, error) {
	row, err := queryRow(ctx, conn, replicaQuery, 4)
	if err != nil {
		return replicaResult{}, err
	}
	res := replicaResult{inRecovery: string(row[0]) == "t", reported: -1}
	if !res.inRecovery {
		return res, nil
	}
	if row[1] == nil {
		return res, errors.New("no replay position")
	}
	if res.replay, err = ParseLSN(string(row[1])); err != nil {
		return res, err
	}
	if row[2] != nil {
		if res.receive, err = ParseLSN(string(row[2])); err != nil {
			return res, err
		}
	}
	if secs, err := strconv.ParseFloat(string(row[3]), 64); err == nil && secs >= 0 {
		res.reported = time.Duration(secs * float64(time.Second))
	}
	return res, nil
}
