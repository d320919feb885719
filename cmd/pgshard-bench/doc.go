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
// Everything it starts runs under one temporary directory and is stopped on
// exit, on error and on SIGINT/SIGTERM.
//
// Usage:
//
//	go run ./cmd/pgshard-bench [-duration 10s] [-rounds 3] [-scale 10] [-clients 16] [-json out.json]
package main
