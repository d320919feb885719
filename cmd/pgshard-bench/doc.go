// Command pgshard-bench is the benchmark behind `make bench`: it measures
// pgshard against direct PostgreSQL, pgbouncer and pgpool-II in one run, on
// one machine, under the same pgbench load.
//
// It starts a PostgreSQL 15 primary (and, with -replicas, streaming
// replicas) through package topology, loads it with `pgbench -i`, starts
// every peer on its own loopback port with the same backend pool size
// (pgbouncer in transaction pooling, pgpool-II in streaming-replication mode
// with connection caching, pgshard in transaction pooling), and then runs
// `pgbench -S` in each protocol mode (simple, extended, prepared) against
// every target in interleaved rounds, so that noise from other work on the
// machine hits all targets alike.
//
// For every run it reads the CPU time (utime+stime, with reaped children)
// of the proxy's processes from /proc before and after, and divides by the
// transactions pgbench reports (each -S transaction is one query). It also
// reports the CPU time of the PostgreSQL server's processes per query.
//
// pgbouncer 1.18 cannot keep named prepared statements in transaction
// pooling: its -M prepared run is made anyway and reported; when it fails,
// later rounds skip it and a pgbouncer in session pooling is measured
// instead as a clearly labelled reference.
//
// Then, unless -relay=false, the relay measurements (relay.go) of issue 10
// run against pgshard, pgbouncer and direct PostgreSQL (those of -targets),
// with the same peers, apart from the rounds above:
//
//  1. System calls per query (-relay-parts syscalls), in each of -modes:
//     pgbench -S with -relay-clients clients for -relay-duration, with
//     `strace -c -f` attached once pgbench has connected: to the proxy
//     process with all its threads (-f -p attaches to every thread of
//     pgshard, and follows new ones; the count is printed and checked
//     against /proc/PID/task), or, for direct, to the run's PostgreSQL
//     backends (found in pg_stat_activity by the application_name the run
//     sets). SIGINT stops strace after pgbench; its summary table gives
//     the calls, divided by the queries pgbench's per-transaction log (-l)
//     shows completed while strace was attached: read/recvfrom,
//     write/sendto, epoll_wait/epoll_pwait, futex, nanosleep, the others
//     summed, the total, and the failed reads (EAGAIN). strace stops the
//     traced process at every system call: these runs give counts, not
//     speed. pgbouncer's -M prepared row is the session-pooling reference.
//  2. Latency per query (-relay-parts latency): pgbench -S -M
//     -latency-mode (simple) with each of -latency-clients (1,16,256)
//     clients and -j min(clients, -threads); p50, p99, mean and max from
//     its per-transaction log. pgbench's -T includes connecting the
//     clients; when that took a quarter of it or more (256 new PostgreSQL
//     backends are slow to start), the run is made again with -T
//     lengthened by 1.5 times the connecting time. For 256
//     clients directly, the primary gets max_connections = the most
//     clients + 4 × -pool-size + 10 (topology's default is 200), and the
//     proxies' client limits are raised when needed.
//  3. Connection churn (-relay-parts churn): pgbench -S -C (a new
//     connection, with SCRAM authentication, per transaction),
//     -relay-clients clients: TPS, pgshard / pgbouncer, the average
//     connection time, and the CPU of the proxy and of PostgreSQL per
//     connection.
//
// Then, unless -sharded=false, the sharded mode (sharded.go) measures
// pgshard's routing by user_id. The peers are stopped first; two more
// PostgreSQL primaries are started, and two pgshard nodes, each a one-node
// Raft cluster whose map is seeded from its [[shards]]: pgshard-2shards
// over the two new primaries and pgshard-1shard over the primary above,
// which is also the direct target. Then:
//
//  1. bench_users (user_id bigint primary key, -sharded-rows rows) is
//     created through each pgshard (pgshard-2shards registers it as sharded;
//     pgshard-1shard, whose single shard owns the whole ring, registers
//     nothing, so the bench adds it through the admin API) and loaded through
//     it with multi-row INSERTs. pgbench custom scripts pick
//     uid = random(1, rows): "read" (SELECT … WHERE user_id = :uid) and
//     "mix" (that SELECT, then UPDATE … WHERE user_id = :uid), in each of
//     -sharded-modes, against direct, pgshard-1shard and pgshard-2shards in
//     interleaved rounds; the table shows median TPS, 2 shards / 1 shard,
//     each / direct, and the CPU per transaction of the proxy and of the
//     PostgreSQL servers behind each target.
//  2. bench_scan (-scan-rows rows, half on each shard) is created through
//     pgshard-2shards and, with the same rows, directly on the single
//     primary; both are loaded by COPY on each server, keys split by the
//     map's ring. A pgx client reads every row of
//     SELECT … ORDER BY user_id (extended and simple protocol, checking the
//     count and order) through pgshard and directly: rows/s, their ratio,
//     and pgshard's RSS growth (VmRSS sampled every 5 ms from /proc during
//     the query, minus VmRSS before it; VmHWM too).
//  3. One client runs autocommit UPDATE bench_users SET v = v + 1 WHERE
//     user_id IN (a, b) through pgshard-2shards with a and b on two shards
//     (two-phase commit with the decision in the Raft log) and on one shard,
//     interleaved, and directly: median, p90 and mean latency, and the ratio.
//
// After loading, every shard is checked: its row count, rows whose
// hashint8extended(user_id, 0) lies outside the ranges the map gives it
// (must be none), and count(*) through pgshard. Targets of issue 8 are
// printed next to the figures ("met"/"MISSED"); nothing asserts them.
// -targets "" skips the peers; -targets "" -sharded=false runs only the
// resharding mode (pgbouncer and pgpool-II are then not needed).
//
// Then, unless -reshard-rows 0, the resharding mode (reshard.go) measures
// an online reshard job against a plain copy of the same rows. It starts
// its own PostgreSQL topology, a shard primary (shard0) and a spare one
// (spare0, outside the map), an in-process pgshard proxy (proxy.Server)
// over an in-memory shard map (the resharder's Store: shardmap commands
// applied under a mutex, each new map handed to the proxy's SetShards and
// SetMap before Apply returns; its Nodes waits for the proxy's MapVersion)
// and an in-process resharder.Runner. Then:
//
//  1. bench_reshard (user_id bigint PRIMARY KEY, v, name, a 32-character
//     pad, created; -reshard-rows rows) is loaded by COPY on shard0. The
//     job's Plan for adding spare0 gives the ranges that move (about half
//     the rows); they are counted on shard0.
//  2. -reshard-writers writers start through the proxy and run until after
//     the last copy, so that the plain COPYs and the job compete with the
//     same load: autocommit INSERTs of new keys and UPDATE … WHERE user_id
//     = $1 of loaded keys, 3 in 4 on the moving ranges, -reshard-pause
//     between statements. Their first second is a warm-up, the next two
//     the latency reference.
//  3. The baseline, -reshard-baseline-reps times: COPY (SELECT … WHERE
//     <the moving ranges on hashint8extended(user_id, 0)> AND <a loaded
//     key>) TO STDOUT on shard0 piped (pgconn CopyTo → io.Pipe → CopyFrom)
//     into COPY … FROM STDIN of an identical table on spare0, dropped
//     afterwards: rows/s, and MB/s of the COPY text stream. Then the job
//     (Runner.Start, Runner.Run) runs to done, and one more plain COPY
//     copies the same rows back (spare0 → shard0) to bracket the machine's
//     noise; the ratio uses the median of all the plain COPYs. The
//     in-memory store notes when each phase is committed: the job's copy
//     runs from its creation of the subscriptions (its copy_started, just
//     before phase copy) to its first commit of phase cutover (every table
//     synchronized, lag under MaxLag). Its rate is the rows of the moving
//     ranges when it starts (the loaded ones and the writers' so far) over
//     that time; the ratio job / plain COPY is printed against issue 9's
//     target (≥ 0.5×), with every phase's duration and the whole job's.
//  4. The cut-over: Status.Cutover (freeze commit → ring commit) and the
//     writers' latencies in the reference window, during the job on moving
//     and on other ranges, and of the statements in flight while the
//     ranges were frozen, with how long they took after the ring's commit
//     (p50, p99, max), against issue 9's stall targets (which are for 3
//     nodes; this is 1), and the time of a new connection to spare0 (the
//     proxy's pool opens its first ones there after the ring's commit).
//     Failed statements and PS001 answers that reached a client are
//     counted; afterwards every row must be on its owner only, and the row
//     count and sum(v), on the shards and through pgshard, must equal the
//     loaded rows plus the acknowledged inserts and updates.
//
// Idle clients (idle.go; -idle 0 skips them, -idle-only measures only
// them): right after the peers start, before any pgbench run, for each N of
// -idle (default 10000) pgbouncer and then pgshard get N clients that log in
// with SCRAM, run SELECT 1 and stay idle. The proxy's VmRSS and threads
// (/proc/PID/status) are read before the first client and every second
// for -idle-settle (30 s) after the last; bytes per client = (RSS idle -
// RSS before) / clients connected, at 2 s and at the end, the end against
// issue 10's target for pgshard (≤ 4 KiB at 10,000); pgshard's goroutines,
// Go heap and stacks come from its /metrics. Then every client runs SELECT
// 1 again (the lost ones are counted), all are closed, and RSS is read once
// more after -idle-settle. The bench
// raises its RLIMIT_NOFILE soft limit to the hard limit at start (the
// proxies inherit it); an N that does not fit in the bench's or the
// proxy's limit (N + open files + pool) is capped, and the report says so.
//
// Everything it starts runs under one temporary directory and is stopped on
// exit, on error and on SIGINT/SIGTERM.
//
// Usage:
//
//	go run ./cmd/pgshard-bench [-duration 10s] [-rounds 3] [-scale 10] [-clients 16] [-json out.json]
//	    [-sharded=false] [-sharded-duration 4s] [-sharded-rounds 2] [-sharded-rows 100000]
//	    [-scan-rows 1000000] [-scan-reps 5] [-commits 300]
//	    [-reshard-rows 1000000] [-reshard-writers 4] [-reshard-pause 10ms]
//	    [-reshard-baseline-reps 2] [-reshard-replicas 0]
//	    [-relay=false] [-relay-parts syscalls,latency,churn] [-relay-duration 3s] [-relay-clients 16]
//	    [-latency-clients 1,16,256] [-latency-mode simple] [-strace /usr/bin/strace]
//	    [-idle 10000[,50000]] [-idle-only] [-idle-concurrency 32] [-idle-settle 30s]
package main
