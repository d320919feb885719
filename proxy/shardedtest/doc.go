// Package shardedtest holds integration tests of pgshard with several
// shards: a proxy in front of real PostgreSQL primaries and replicas, a
// shard map with a ring over them, and in-memory stand-ins for the Raft
// map's table registry and two-phase commit log.
//
// TestDifferential runs the same randomized workload through pgshard over
// three shards and against one plain PostgreSQL and compares every answer
// (rows, command tags, SQLSTATEs). TestRowsLandOnOwnerShard checks that
// rows written through pgshard are stored on the shard the ring assigns to
// their key.
//
// Classes of statements that pgshard does not support yet are listed in
// pendingClasses (differential_test.go) and run only with
// PGSHARD_DIFF_ALL=1; see that file for the other knobs.
package shardedtest
