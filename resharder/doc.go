// Package resharder moves ring ranges between shards while clients keep
// reading and writing: it adds a shard (taking 1/(N+1) of the ring from
// the others) or removes one, one job at a time.
//
// A job copies the moving ranges with PostgreSQL logical replication
// (row-filtered publications on the sources, subscriptions on the
// targets), fences them in the source databases (a trigger raising
// SQLSTATE PS001), freezes them on every pgshard node for a short
// cut-over, commits the new ring through Raft and cleans up. Every phase
// transition is committed to the job record in the shard map before it is
// acted on, and every action is idempotent, so the Raft leader that
// follows a dead one resumes the job where it was.
//
// The API (Runner: Plan, Start, Status, Cancel, Run) is in api.go and
// runner.go; DESIGN.md explains the mechanism and why it keeps the
// invariants of ../shared/DESIGN.md ("Online resharding").
package resharder
