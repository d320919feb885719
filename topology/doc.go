// Package topology starts and stops local PostgreSQL 15 shard topologies for
// tests and for the dev cluster: per shard one primary and N streaming
// replicas (pg_basebackup -R -X stream), plus optional spare shards of the
// same shape that are not in the shard map.
//
// Every server listens on 127.0.0.1 only, has no Unix socket, and is
// configured for pgshard: wal_level=logical, max_prepared_transactions>0,
// hot standby with feedback, fsync off for speed. Each server has the role
// app (password app, SCRAM-SHA-256) and the database app owned by it; the
// superuser postgres may connect from 127.0.0.1 without a password.
//
// Layout of the base directory:
//
//	<Dir>/topology.json           servers, ports, data dirs (see Open, StopDir)
//	<Dir>/<server>/data/          the data directory
//	<Dir>/<server>/postgres.log   the server's stderr log
//	<Dir>/<server>/data/server.conf  per-server settings (port, cluster_name, SetConf)
//
// When the process runs as root, initdb, postgres and pg_basebackup run as
// the postgres OS user, each server in its own process group.
//
// Lifecycle: Start returns when every server accepts connections and every
// replica streams from its primary. Close stops everything Start started and
// removes a temporary base directory. Unless Config.KeepOnExit is set, the
// servers also shut down (SIGQUIT) when the starting process dies without
// Close, so a killed test binary leaves nothing behind. With KeepOnExit,
// Detach leaves the servers running and StopDir (or Open followed by Close)
// stops them later from another process.
//
// Package topotest wraps this for tests (skip without binaries, fail in CI).
package topology
