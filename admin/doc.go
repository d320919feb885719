// Package admin is the HTTP JSON API every pgshard node serves on its admin
// address, and the Go client (Client) that pgshardctl uses.
//
// # Endpoints
//
// All under /v1, JSON in and out, "Authorization: Bearer <admin_token>"
// required when a token is configured (compared in constant time). The
// daemon serves /metrics and /healthz on the same mux without a token.
//
//	GET    /v1/cluster                     this node, the leader, the Raft servers with suffrage, raft stats, map version
//	POST   /v1/cluster/join                {"id","addr","suffrage":"voter|nonvoter","admin_url"} → AddVoter/AddNonvoter
//	POST   /v1/cluster/leave               {"id"} → RemoveServer
//	GET    /v1/cluster/nodes               the nodes directory (Raft ID → admin URL), see below
//	GET    /v1/shards                      shards with state, tokens and share of the ring
//	POST   /v1/shards                      {"name","primary","replicas",["place",] ["vnodes"]}
//	DELETE /v1/shards/{name}
//	PUT    /v1/shards/{name}/endpoints     {"primary","replicas"}
//	GET    /v1/map                         the whole map (as shardmap encodes it: shards, ring tokens, tables, jobs) plus ownership fractions
//	GET    /v1/map/locate?key=K&type=T     hash, range and owning shard of a key (type int|text|uuid, default int)
//	GET    /v1/map/applied                 the map version this node's proxy routes by (never forwarded: each node answers for itself)
//	POST   /v1/map/commands                one shardmap command (as Command.Encode writes it) applied on the leader → the map it produced
//	GET    /v1/tables
//	POST   /v1/tables                      {"name","kind":"sharded|reference","key_column","key_type"}
//	DELETE /v1/tables/{name}
//	GET    /v1/txns                        the recorded two-phase commit decisions
//	POST   /v1/txns                        {"gid","commit"} → the decision that stands (the first recorded wins)
//	GET    /v1/txns/{gid}                  one transaction's decision ("decided": false when none)
//	DELETE /v1/txns/{gid}                  forget a decision (the recovery pass does, once no shard holds it prepared)
//	POST   /v1/reshard/plan                resharder.Spec {"add":{"name","primary","replicas"}} or {"remove"}, ["database"] → resharder.Plan; changes nothing
//	POST   /v1/reshard                     resharder.Spec → resharder.Status of the job started
//	GET    /v1/reshard                     resharder.Status of the current (or last) job; 404 no_job when none
//	POST   /v1/reshard/cancel              roll the job back → resharder.Status; 409 past_cutover once its ring is committed
//
// Writes answer with the map version they produced (field map_version and
// header X-Pgshard-Map-Version). Errors are {"error","code","hint"} with an
// HTTP status that fits (400 bad input, 401 token, 404 unknown name, 409
// conflict with the map, 503 no leader / leadership lost); code is a stable
// word for scripts (ErrorCode constants), hint says what to do.
//
// The /v1/reshard endpoints run on the leader, whose resharder drives the
// job (a follower forwards them, reads included, as it forwards writes);
// their errors: 404 no_job, 409 job_running (one job at a time), 409
// past_cutover, 400 bad_spec, and the map's own (unknown_shard,
// shard_exists, …). A node without Raft answers them 409 no_cluster.
//
// # Reads, writes and forwarding
//
// Reads answer from the node's local copy of the map. On a follower, the
// map reads (shards, map, locate, tables) first ask the leader for its map
// version and wait (at most 2s) until the local copy has it, so a change made
// through any node shows in the next read through any other; ?stale=1 skips
// that, and without a reachable leader the local copy answers as it is.
// GET /v1/cluster always reports this node's own view. A write sent to a
// follower is forwarded, body and token unchanged, to the leader's admin API;
// the follower then waits (briefly) until its own map reaches the version the
// leader returned, so a client that reads from the same node next sees its
// change. During an election the node waits up to LeaderWait for a leader
// before answering 503 no_leader. A forwarded request is never forwarded
// again (header X-Pgshard-Forwarded-By).
//
// # Finding the leader's admin URL: the nodes directory
//
// Raft knows the leader's ID and Raft address, not its admin URL. Each node
// keeps a small directory, Raft server ID → admin URL:
//
//   - a node always lists itself (Config.AdminURL);
//   - a join request carries the joining node's admin URL, and the node that
//     takes it (the leader, or a follower on the way) records it;
//   - every node pulls GET /v1/cluster/nodes from every admin URL it knows
//     (its directory plus Config.Peers, i.e. the configured join URLs) once a
//     second and merges: a node's entry for itself wins, other entries fill
//     gaps;
//   - the directory is saved to DataDir/admin-nodes.json so a restarted node
//     can forward before it has synced.
//
// So after a leader is lost, every survivor already knows the admin URL of
// whoever wins the election. The directory is not part of the replicated map
// (shardmap has no place for it); it converges within a few sync rounds. All
// nodes of a cluster must share one admin_token.
package admin
