package main

// The sharded mode: pgshard routing by user_id over 2 shards, against
// pgshard over 1 shard and direct PostgreSQL (see doc.go).

import (
	"bufio"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgshard/pgshard/admin"
	"github.com/pgshard/pgshard/shardmap"
	"github.com/pgshard/pgshard/topology"
)

// Sharded-mode target names.
const (
	tPgshard1 = "pgshard-1shard"
	tPgshard2 = "pgshard-2shards"
	// tDirect2 is the machine's own cost of two servers: half the clients
	// directly on each of pgshard-2shards' servers, each on a local copy of
	// the rows it holds (localTable), so every query finds its row as it
	// does on the single server.
	tDirect2 = "direct-2servers"
)

// Tables the sharded mode creates.
const (
	keyedTable = "bench_users"
	localTable = "bench_users_local" // a shard's rows renumbered 1..n, for tDirect2
	scanTable  = "bench_scan"
)

// shardedOptions are the -sharded-* flags.
type shardedOptions struct {
	enabled     bool
	duration    time.Duration // each pgbench run
	rounds      int
	rows        int // rows of the keyed table
	scanRows    int // rows of the scatter table
	scanReps    int
	commits     int // statements per case of the commit measurement
	modes       []string
	insertBatch int
}

// shardNode is one pgshard daemon of the sharded mode: a one-node Raft
// cluster whose map is seeded with its shards.
type shardNode struct {
	target
	adminURL, token string
	shards          []*topology.Server // the primaries in its map
	m               *shardmap.Map      // the map after setup
}

// shardedRun holds what the sharded mode started.
type shardedRun struct {
	o           options
	so          shardedOptions
	dir         string
	direct      *topology.Server // the single PostgreSQL: direct target and pgshard-1's shard
	n1, n2      *shardNode
	localRows   []int64           // rows of localTable on each of n2's shards
	paths       map[string]string // pgbench scripts by workload ("read-server0": tDirect2's)
	ticks       int64
	logf, vlogf func(string, ...any)
}

// runSharded measures the sharded mode. single is the primary of the main
// topology (the direct target; pgshard-1shard's only shard); it starts two
// more PostgreSQL servers for pgshard-2shards.
func runSharded(ctx context.Context, o options, dir, bin string, single *topology.Server, used ports, logf, vlogf func(string, ...any)) (rep *shardedReport, err error) {
	so := o.sharded
	start := time.Now()
	sdir := filepath.Join(dir, "sharded")
	if err := os.MkdirAll(sdir, 0o755); err != nil {
		return nil, fmt.Errorf("mkdir: %w", err)
	}
	logf("sharded: starting PostgreSQL (2 primaries) for pgshard over 2 shards")
	topo, err := topology.Start(ctx, topology.Config{Shards: 2, Replicas: 0, Logf: vlogf})
	if err != nil {
		return nil, fmt.Errorf("sharded: start topology: %w", err)
	}
	defer func() {
		if cerr := topo.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("sharded: stop topology: %w", cerr))
		}
	}()
	for _, s := range topo.Servers() {
		used[s.Port] = true
	}
	r := &shardedRun{o: o, so: so, dir: sdir, direct: single, ticks: clockTicks(), logf: logf, vlogf: vlogf}
	var procs []*proc
	defer func() {
		for _, p := range slices.Backward(procs) {
			if serr := p.stop(10 * time.Second); serr != nil {
				err = errors.Join(err, serr)
			}
		}
	}()
	for _, spec := range []struct {
		name   string
		shards []*topology.Server
		dst    **shardNode
	}{
		{tPgshard1, []*topology.Server{single}, &r.n1},
		{tPgshard2, []*topology.Server{topo.Shards[0].Primary, topo.Shards[1].Primary}, &r.n2},
	} {
		n, err := startShardNode(bin, spec.name, spec.shards, sdir, o, used)
		if err != nil {
			return nil, err
		}
		procs = append(procs, n.proc)
		*spec.dst = n
	}
	for _, n := range []*shardNode{r.n1, r.n2} {
		if err := waitAccepting(ctx, n.name, appDSN(n.port), n.proc, startTimeout); err != nil {
			return nil, err
		}
		if err := n.waitMap(ctx, len(n.shards), ""); err != nil {
			return nil, err
		}
		logf("sharded: %s accepting on 127.0.0.1:%d (map: %d shard(s))", n.name, n.port, len(n.shards))
	}

	rep = &shardedReport{Rows: so.rows, ScanRows: so.scanRows, Duration: so.duration.String(), Rounds: so.rounds,
		Clients: o.clients, Threads: o.threads, Modes: so.modes}
	if err := r.setup(ctx, rep); err != nil {
		return rep, err
	}
	if err := r.pgbenchRuns(ctx, rep); err != nil {
		return rep, err
	}
	if err := r.scatter(ctx, rep); err != nil {
		return rep, err
	}
	if err := r.commits(ctx, rep); err != nil {
		return rep, err
	}
	for _, n := range []*shardNode{r.n1, r.n2} {
		if n.proc.exited() {
			return rep, fmt.Errorf("%s exited during the sharded benchmark (%v); log:\n%s", n.name, n.proc.err, n.proc.logTail(30))
		}
	}
	rep.summarize()
	rep.Elapsed = time.Since(start).Round(time.Second).String()
	return rep, nil
}

// shardNodeConfig renders the TOML configuration of a pgshard node that
// bootstraps a one-node Raft cluster in dataDir and seeds its map with
// shards (named shard0, shard1, ...).
func shardNodeConfig(port, adminPort, raftPort int, dataDir, token string, shardPorts []int, pc peerConfig) string {
	var b strings.Builder
	fmt.Fprintf(&b, "listen = \"127.0.0.1:%d\"\n", port)
	fmt.Fprintf(&b, "admin_listen = \"127.0.0.1:%d\"\n", adminPort)
	fmt.Fprintf(&b, "admin_token = %q\n", token)
	b.WriteString("log_level = \"warn\"\n")
	b.WriteString("shutdown_timeout = \"5s\"\n")
	fmt.Fprintf(&b, "max_clients = %d\n", max(1000, 4*pc.clients))
	fmt.Fprintf(&b, "\n[cluster]\nnode_id = \"node0\"\nraft_listen = \"127.0.0.1:%d\"\ndata_dir = %q\nbootstrap = true\n", raftPort, dataDir)
	fmt.Fprintf(&b, "\n[pool]\nmode = \"transaction\"\nsize = %d\n", pc.poolSize)
	fmt.Fprintf(&b, "\n[[users]]\nname = %q\npassword = %q\n", appUser, appPassword)
	for i, p := range shardPorts {
		fmt.Fprintf(&b, "\n[[shards]]\nname = \"shard%d\"\nprimary = \"host=127.0.0.1 port=%d\"\n", i, p)
	}
	return b.String()
}

func startShardNode(bin, name string, shards []*topology.Server, dir string, o options, used ports) (*shardNode, error) {
	var p [3]int
	for i := range p {
		var err error
		if p[i], err = used.pick(); err != nil {
			return nil, err
		}
	}
	tok := make([]byte, 16)
	_, _ = rand.Read(tok)
	n := &shardNode{target: target{name: name, port: p[0]}, adminURL: fmt.Sprintf("http://127.0.0.1:%d", p[1]),
		token: hex.EncodeToString(tok), shards: shards}
	d := filepath.Join(dir, name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return nil, fmt.Errorf("mkdir %s: %w", d, err)
	}
	var sp []int
	for _, s := range shards {
		sp = append(sp, s.Port)
	}
	pc := peerConfig{poolSize: o.poolSize, clients: o.clients}
	conf := filepath.Join(d, "pgshard.toml")
	if err := os.WriteFile(conf, []byte(shardNodeConfig(p[0], p[1], p[2], filepath.Join(d, "raft"), n.token, sp, pc)), 0o600); err != nil {
		return nil, fmt.Errorf("write %s: %w", conf, err)
	}
	var err error
	n.proc, err = startProc(name, []string{bin, "-config", conf}, d, filepath.Join(d, "pgshard.log"), nil, syscall.SIGTERM)
	return n, err
}

// waitMap waits until the node's map has nshards shards on its ring and,
// when table is not "", table as a sharded table; it keeps the map.
func (n *shardNode) waitMap(ctx context.Context, nshards int, table string) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	c := admin.NewClient(n.adminURL, n.token)
	var last error
	for {
		_, m, err := c.Map(ctx)
		switch {
		case err != nil:
			if ctx.Err() == nil || last == nil {
				last = err
			}
		case len(m.Shards()) != nshards || m.Ring() == nil || len(m.Ring().Shards()) != nshards:
			last = fmt.Errorf("map version %d has %d shard(s), want %d", m.Version(), len(m.Shards()), nshards)
		default:
			t, ok := m.Table(table)
			if table == "" || ok && t.Kind == shardmap.TableSharded {
				n.m = m
				return nil
			}
			last = fmt.Errorf("table %s not registered as sharded in map version %d (%+v)", table, m.Version(), t)
		}
		if n.proc.exited() {
			return fmt.Errorf("%s exited (%v); log:\n%s", n.name, n.proc.err, n.proc.logTail(30))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %v (last: %v)", n.name, ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// owner returns the shard (index into n.shards, by the map's shard name)
// that owns key.
func (n *shardNode) owner(key int64) (int, error) {
	name := n.m.Ring().Lookup(shardmap.HashInt64(key))
	return shardIndex(name)
}

func shardIndex(name string) (int, error) {
	i, err := strconv.Atoi(strings.TrimPrefix(name, "shard"))
	if err != nil || !strings.HasPrefix(name, "shard") {
		return 0, fmt.Errorf("unexpected shard name %q", name)
	}
	return i, nil
}

func execSQL(ctx context.Context, port int, sql string) ([]*pgconn.Result, error) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	c, err := pgconn.Connect(cctx, appDSN(port))
	if err != nil {
		return nil, err
	}
	defer c.Close(context.Background())
	return c.Exec(cctx, sql).ReadAll()
}

func queryInt(ctx context.Context, port int, sql string) (int64, error) {
	res, err := execSQL(ctx, port, sql)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", sql, err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) < 1 {
		return 0, fmt.Errorf("%s: unexpected result", sql)
	}
	return strconv.ParseInt(string(res[0].Rows[0][0]), 10, 64)
}

// keyedDDL and scanDDL create the tables (sharded: they have user_id).
const (
	keyedDDL = "CREATE TABLE " + keyedTable + " (user_id bigint PRIMARY KEY, v bigint NOT NULL DEFAULT 0, name text NOT NULL)"
	scanDDL  = "CREATE TABLE " + scanTable + " (user_id bigint PRIMARY KEY, v bigint NOT NULL, pad text NOT NULL)"
)

// insertBatches returns multi-row INSERT statements for keys 1..rows.
func insertBatches(rows, batch int) []string {
	var out []string
	for lo := 1; lo <= rows; lo += batch {
		var b strings.Builder
		b.WriteString("INSERT INTO " + keyedTable + " (user_id, v, name) VALUES ")
		for k := lo; k < lo+batch && k <= rows; k++ {
			if k > lo {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "(%d,0,'user%d')", k, k)
		}
		out = append(out, b.String())
	}
	return out
}

// setup creates and loads both tables and checks where the rows are.
func (r *shardedRun) setup(ctx context.Context, rep *shardedReport) error {
	t0 := time.Now()
	// The keyed table, created and loaded through each pgshard.
	for _, n := range []*shardNode{r.n1, r.n2} {
		if _, err := execSQL(ctx, n.port, keyedDDL); err != nil {
			return fmt.Errorf("%s through %s: %w", keyedDDL, n.name, err)
		}
		if len(n.shards) == 1 {
			// With one shard owning the ring pgshard routes everything to
			// it and registers nothing; register the table by hand so
			// that both maps hold the same definition.
			_, m, err := admin.NewClient(n.adminURL, n.token).Map(ctx)
			if err != nil {
				return fmt.Errorf("%s map: %w", n.name, err)
			}
			if _, ok := m.Table(keyedTable); !ok {
				if _, err := admin.NewClient(n.adminURL, n.token).AddTable(ctx, admin.AddTableRequest{Name: keyedTable}); err != nil {
					return fmt.Errorf("%s: register %s: %w", n.name, keyedTable, err)
				}
				rep.Notes = append(rep.Notes, fmt.Sprintf("%s did not register %s in its map on CREATE TABLE (one shard: no sharded routing); the bench registered it with the admin API", n.name, keyedTable))
			}
		}
		if err := n.waitMap(ctx, len(n.shards), keyedTable); err != nil {
			return err
		}
	}
	for _, n := range []*shardNode{r.n1, r.n2} {
		r.logf("sharded: loading %d rows into %s through %s (multi-row INSERTs of %d rows)", r.so.rows, keyedTable, n.name, r.so.insertBatch)
		cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		c, err := pgconn.Connect(cctx, appDSN(n.port))
		if err != nil {
			cancel()
			return fmt.Errorf("connect %s: %w", n.name, err)
		}
		for _, stmt := range insertBatches(r.so.rows, r.so.insertBatch) {
			res, err := c.Exec(cctx, stmt).ReadAll()
			if err == nil && (len(res) != 1 || !strings.HasPrefix(res[0].CommandTag.String(), "INSERT 0 ")) {
				err = fmt.Errorf("unexpected result %v", res)
			}
			if err != nil {
				c.Close(context.Background())
				cancel()
				return fmt.Errorf("load %s through %s: %s…: %w", keyedTable, n.name, stmt[:min(len(stmt), 80)], err)
			}
		}
		c.Close(context.Background())
		cancel()
		if err := r.checkPlacement(ctx, n, keyedTable, int64(r.so.rows), &rep.Placement); err != nil {
			return err
		}
	}

	// The scatter table: the same rows on the single PostgreSQL and split
	// over pgshard-2's shards (half each), loaded by COPY on each server.
	if _, err := execSQL(ctx, r.n2.port, scanDDL); err != nil {
		return fmt.Errorf("%s through %s: %w", scanDDL, r.n2.name, err)
	}
	if err := r.n2.waitMap(ctx, 2, scanTable); err != nil {
		return err
	}
	if _, err := execSQL(ctx, r.direct.Port, scanDDL); err != nil {
		return fmt.Errorf("%s directly: %w", scanDDL, err)
	}
	perShard, err := splitKeys(r.so.scanRows, 2, r.n2.owner)
	if err != nil {
		return err
	}
	all := slices.Concat(perShard...)
	slices.Sort(all)
	r.logf("sharded: loading %d rows into %s (COPY: all on the single PostgreSQL, %d + %d on the 2 shards)", len(all), scanTable, len(perShard[0]), len(perShard[1]))
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i, job := range []struct {
		port int
		keys []int64
	}{{r.direct.Port, all}, {r.n2.shards[0].Port, perShard[0]}, {r.n2.shards[1].Port, perShard[1]}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = copyScanRows(ctx, job.port, job.keys)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// The two-server reference: each shard's rows, renumbered from 1, in a
	// table of the same shape, read and written directly.
	for _, s := range r.n2.shards {
		for _, sql := range []string{
			"CREATE TABLE " + localTable + " (LIKE " + keyedTable + " INCLUDING ALL)",
			"INSERT INTO " + localTable + " SELECT row_number() OVER (ORDER BY user_id), v, name FROM " + keyedTable,
			"VACUUM ANALYZE " + localTable,
			"GRANT ALL ON " + localTable + " TO " + appUser,
		} {
			if err := s.Exec(ctx, appDB, sql); err != nil {
				return fmt.Errorf("%s on %s: %w", sql, s.Name, err)
			}
		}
		n, err := queryInt(ctx, s.Port, "SELECT count(*) FROM "+localTable)
		if err != nil {
			return err
		}
		r.localRows = append(r.localRows, n)
	}
	for _, s := range append([]*topology.Server{r.direct}, r.n2.shards...) {
		for _, sql := range []string{"VACUUM ANALYZE " + scanTable, "VACUUM ANALYZE " + keyedTable, "CHECKPOINT"} {
			if err := s.Exec(ctx, appDB, sql); err != nil {
				return err
			}
		}
	}
	if err := r.checkPlacement(ctx, r.n2, scanTable, int64(r.so.scanRows), &rep.Placement); err != nil {
		return err
	}
	for _, p := range rep.Placement {
		r.logf("sharded: placement %s", p)
	}
	r.logf("sharded: setup took %s", time.Since(t0).Round(100*time.Millisecond))
	return nil
}

// splitKeys returns keys 1, 2, ... split by owner until each of the n
// shards has rows/n of them.
func splitKeys(rows, n int, owner func(int64) (int, error)) ([][]int64, error) {
	want := rows / n
	out := make([][]int64, n)
	full := 0
	for k := int64(1); full < n; k++ {
		if k > int64(rows)*int64(n)*4 {
			return nil, fmt.Errorf("split %d keys over %d shards: the ring gives some shard too few keys", rows, n)
		}
		i, err := owner(k)
		if err != nil {
			return nil, err
		}
		if i < 0 || i >= n {
			return nil, fmt.Errorf("key %d owned by shard %d of %d", k, i, n)
		}
		if len(out[i]) < want {
			out[i] = append(out[i], k)
			if len(out[i]) == want {
				full++
			}
		}
	}
	return out, nil
}

// scanPad is the pad column: 32 characters derived from the key.
func scanPad(k int64) string {
	return fmt.Sprintf("%016x%016x", uint64(k)*0x9E3779B97F4A7C15, uint64(k))
}

func copyScanRows(ctx context.Context, port int, keys []int64) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	c, err := pgx.Connect(cctx, appDSN(port))
	if err != nil {
		return fmt.Errorf("copy into %s on port %d: %w", scanTable, port, err)
	}
	defer c.Close(context.Background())
	i := 0
	n, err := c.CopyFrom(cctx, pgx.Identifier{scanTable}, []string{"user_id", "v", "pad"},
		pgx.CopyFromFunc(func() ([]any, error) {
			if i == len(keys) {
				return nil, nil
			}
			k := keys[i]
			i++
			return []any{k, k % 1000, scanPad(k)}, nil
		}))
	if err != nil {
		return fmt.Errorf("copy into %s on port %d: %w", scanTable, port, err)
	}
	if n != int64(len(keys)) {
		return fmt.Errorf("copy into %s on port %d: %d rows, want %d", scanTable, port, n, len(keys))
	}
	return nil
}

// checkPlacement counts table's rows on each shard of n and the rows that
// are not on the shard owning their key (by the map's ranges, computed by
// the backend with hashint8extended), and the rows pgshard counts.
func (r *shardedRun) checkPlacement(ctx context.Context, n *shardNode, table string, want int64, out *[]string) error {
	var per []string
	var sum int64
	for i, s := range n.shards {
		var conds []string
		for _, g := range n.m.Ring().Ranges(fmt.Sprintf("shard%d", i)) {
			conds = append(conds, g.SQL("hashint8extended(user_id, 0)"))
		}
		q := fmt.Sprintf("SELECT count(*), count(*) FILTER (WHERE NOT (%s)) FROM %s", strings.Join(conds, " OR "), table)
		res, err := execSQL(ctx, s.Port, q)
		if err != nil {
			return fmt.Errorf("placement of %s on %s's shard%d: %w", table, n.name, i, err)
		}
		cnt, _ := strconv.ParseInt(string(res[0].Rows[0][0]), 10, 64)
		bad, _ := strconv.ParseInt(string(res[0].Rows[0][1]), 10, 64)
		if bad != 0 {
			return fmt.Errorf("placement of %s through %s: %d of %d rows on shard%d belong to another shard (pgshard bug: rows written to a shard that does not own their key)", table, n.name, bad, cnt, i)
		}
		sum += cnt
		per = append(per, strconv.FormatInt(cnt, 10))
	}
	if sum != want {
		return fmt.Errorf("placement of %s through %s: %s rows on the shards (sum %d), want %d in all", table, n.name, strings.Join(per, " + "), sum, want)
	}
	through, err := queryInt(ctx, n.port, "SELECT count(*) FROM "+table)
	if err != nil {
		return fmt.Errorf("count through %s: %w", n.name, err)
	}
	if through != want {
		return fmt.Errorf("SELECT count(*) FROM %s through %s = %d, want %d", table, n.name, through, want)
	}
	*out = append(*out, fmt.Sprintf("%s via %s: %s rows on its shard(s), none misplaced; count(*) through pgshard = %d", table, n.name, strings.Join(per, " + "), through))
	return nil
}

// Keyed pgbench scripts: reads, and a read then a write of one user.
func keyedScripts(table string, rows int64) map[string]string {
	set := fmt.Sprintf("\\set uid random(1, %d)\n", rows)
	sel := "SELECT v, name FROM " + table + " WHERE user_id = :uid;\n"
	upd := "UPDATE " + table + " SET v = v + 1 WHERE user_id = :uid;\n"
	return map[string]string{"read": set + sel, "mix": set + sel + upd}
}

// workloads in report order.
var workloads = []string{"read", "mix"}

func (r *shardedRun) pgbenchRuns(ctx context.Context, rep *shardedReport) error {
	r.paths = map[string]string{}
	write := func(key, body string) error {
		p := filepath.Join(r.dir, key+".sql")
		r.paths[key] = p
		return os.WriteFile(p, []byte(body), 0o644)
	}
	for name, body := range keyedScripts(keyedTable, int64(r.so.rows)) {
		if err := write(name, body); err != nil {
			return err
		}
	}
	for i, n := range r.localRows {
		for name, body := range keyedScripts(localTable, n) {
			if err := write(fmt.Sprintf("%s-server%d", name, i), body); err != nil {
				return err
			}
		}
	}
	targets := []*target{{name: tDirect, port: r.direct.Port}, {name: tDirect2}, &r.n1.target, &r.n2.target}
	// One short unrecorded run per target (connections, caches).
	for _, t := range targets {
		if _, err := r.pgbenchOnce(ctx, t, "mix", r.paths["mix"], "prepared", 2*time.Second, 0); err != nil {
			return err
		}
	}
	n := r.so.rounds * len(workloads) * len(r.so.modes) * len(targets)
	r.logf("sharded: keyed pgbench: %d runs of %s ≈ %s", n, r.so.duration, (time.Duration(n) * (r.so.duration + time.Second)).Round(time.Second))
	for round := 1; round <= r.so.rounds; round++ {
		for _, w := range workloads {
			for _, mode := range r.so.modes {
				k := (round - 1) % len(targets)
				for _, t := range append(slices.Clone(targets[k:]), targets[:k]...) {
					res, err := r.pgbenchOnce(ctx, t, w, r.paths[w], mode, r.so.duration, round)
					if err != nil {
						return err
					}
					rep.Runs = append(rep.Runs, res)
				}
			}
		}
	}
	return nil
}

func (r *shardedRun) pgbenchOnce(ctx context.Context, t *target, workload, script, mode string, d time.Duration, round int) (shardedRun1, error) {
	res := shardedRun1{Round: round, Workload: workload, Mode: mode, Target: t.name}
	var before int64
	var perr error
	if t.proc != nil {
		before, perr = treeTicks(t.proc.pid())
	}
	// The PostgreSQL servers behind the target.
	servers := []*topology.Server{r.direct}
	if t.name == tPgshard2 || t.name == tDirect2 {
		servers = r.n2.shards
	}
	pgTicks := func() int64 {
		var sum int64
		for _, s := range servers {
			if pid := s.PID(); pid != 0 {
				v, _ := treeTicks(pid)
				sum += v
			}
		}
		return sum
	}
	pgBefore := pgTicks()
	args := func(port int, script string, clients, threads int) []string {
		return []string{
			"-h", "127.0.0.1", "-p", strconv.Itoa(port), "-U", appUser,
			"-n", "-f", script, "-M", mode,
			"-c", strconv.Itoa(clients), "-j", strconv.Itoa(threads),
			"-T", strconv.Itoa(max(1, int(d.Round(time.Second)/time.Second))),
			appDB,
		}
	}
	var out string
	var code int
	var st pgbenchStats
	var err, parseErr error
	if t.name == tDirect2 {
		out, code, st, err, parseErr = r.pgbenchEach(ctx, workload, func(i int) []string {
			c := r.o.clients/2 + i*(r.o.clients%2) // the second server takes an odd one
			return args(r.n2.shards[i].Port, r.paths[fmt.Sprintf("%s-server%d", workload, i)], c, max(1, r.o.threads/2))
		})
	} else {
		out, code, err = runPgbench(ctx, args(t.port, script, r.o.clients, r.o.threads))
		st, parseErr = parsePgbench(out)
	}
	if ctx.Err() != nil {
		return res, ctx.Err()
	}
	pgAfter := pgTicks()
	var after int64
	if t.proc != nil && perr == nil {
		after, perr = treeTicks(t.proc.pid())
	}
	_ = os.WriteFile(filepath.Join(r.dir, fmt.Sprintf("round%d-%s-%s-%s.log", round, workload, mode, t.name)), []byte(out), 0o644)
	res.TPS, res.Transactions = st.TPS, st.Transactions
	res.Problem = pgbenchProblem(code, err, parseErr, st, r.o.clients)
	res.OK = res.Problem == ""
	if res.Transactions > 0 {
		if t.proc != nil && perr == nil {
			res.ProxyCPUus = cpuPerTxn(after-before, r.ticks, res.Transactions)
		}
		res.PGCPUus = cpuPerTxn(pgAfter-pgBefore, r.ticks, res.Transactions)
	}
	line := fmt.Sprintf("sharded: round %d %-4s %-8s %-15s tps=%.0f", round, workload, mode, t.name, res.TPS)
	if res.ProxyCPUus != nil {
		line += fmt.Sprintf(" proxy=%.1fµs/txn", *res.ProxyCPUus)
	}
	if res.PGCPUus != nil {
		line += fmt.Sprintf(" postgres=%.1fµs/txn", *res.PGCPUus)
	}
	if !res.OK {
		line += " PROBLEM: " + res.Problem
		r.logf("%s\n%s", line, tail(out, 10))
	} else if round == 0 {
		r.vlogf("%s (warm-up)", line)
	} else {
		r.logf("%s", line)
	}
	return res, nil
}

// pgbenchEach runs one pgbench per server of pgshard-2shards at once
// (args(i): server i's arguments) and adds up what they report: TPS and
// transactions summed, the first failure kept.
func (r *shardedRun) pgbenchEach(ctx context.Context, workload string, args func(i int) []string) (out string, code int, st pgbenchStats, err, parseErr error) {
	n := len(r.n2.shards)
	outs, codes, errs := make([]string, n), make([]int, n), make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { outs[i], codes[i], errs[i] = runPgbench(ctx, args(i)) })
	}
	wg.Wait()
	for i := range n {
		out += fmt.Sprintf("== %s (%s)\n%s", r.n2.shards[i].Name, workload, outs[i])
		one, perr := parsePgbench(outs[i])
		st.TPS += one.TPS
		st.Transactions += one.Transactions
		st.Failed += one.Failed
		st.Aborted += one.Aborted
		st.RunAborted = st.RunAborted || one.RunAborted
		if st.FirstError == "" {
			st.FirstError = one.FirstError
		}
		if code == 0 {
			code = codes[i]
		}
		err, parseErr = cmp.Or(err, errs[i]), cmp.Or(parseErr, perr)
	}
	return out, code, st, err, parseErr
}

// scatterQuery is the query of the scatter measurement.
const scatterQuery = "SELECT user_id, v, pad FROM " + scanTable + " ORDER BY user_id"

// scatter runs scatterQuery through pgshard-2shards and directly, reading
// every row with pgx, and samples pgshard's RSS meanwhile.
func (r *shardedRun) scatter(ctx context.Context, rep *shardedReport) error {
	targets := []*target{{name: tDirect, port: r.direct.Port}, &r.n2.target}
	modes := []struct {
		name string
		mode pgx.QueryExecMode
	}{{"extended", pgx.QueryExecModeCacheStatement}, {"simple", pgx.QueryExecModeSimpleProtocol}}
	r.logf("sharded: scatter %q: %d rows, %d rep(s) per protocol and target", scatterQuery, r.so.scanRows, r.so.scanReps)
	for _, t := range targets { // warm-up: caches of both servers and pgshard
		if _, err := r.scanOnce(ctx, t, "extended", pgx.QueryExecModeCacheStatement, 0); err != nil {
			return err
		}
	}
	for rep1 := 1; rep1 <= r.so.scanReps; rep1++ {
		for _, m := range modes {
			k := (rep1 - 1) % len(targets)
			for _, t := range append(slices.Clone(targets[k:]), targets[:k]...) {
				res, err := r.scanOnce(ctx, t, m.name, m.mode, rep1)
				if err != nil {
					return err
				}
				rep.Scans = append(rep.Scans, res)
			}
		}
	}
	return nil
}

// memStatus is VmRSS and VmHWM of /proc/PID/status, in bytes.
func memStatus(pid int) (rss, hwm int64, err error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	return parseMemStatus(bufio.NewScanner(f))
}

func parseMemStatus(sc *bufio.Scanner) (rss, hwm int64, err error) {
	found := 0
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return 0, 0, fmt.Errorf("status %s: unexpected %q", k, v)
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("status %s: %w", k, err)
		}
		if k == "VmRSS" {
			rss = n << 10
		} else {
			hwm = n << 10
		}
		found++
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	if found != 2 {
		return 0, 0, errors.New("status: no VmRSS or VmHWM")
	}
	return rss, hwm, nil
}

// scanOnce runs scatterQuery once on a new connection; rows must come
// back complete and in order. It samples the proxy's RSS every 5 ms.
func (r *shardedRun) scanOnce(ctx context.Context, t *target, modeName string, mode pgx.QueryExecMode, rep int) (scanResult, error) {
	res := scanResult{Rep: rep, Mode: modeName, Target: t.name}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cfg, err := pgx.ParseConfig(appDSN(t.port))
	if err != nil {
		return res, err
	}
	cfg.DefaultQueryExecMode = mode
	c, err := pgx.ConnectConfig(cctx, cfg)
	if err != nil {
		return res, fmt.Errorf("scatter: connect %s: %w", t.name, err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(cctx, "SELECT 1"); err != nil {
		return res, fmt.Errorf("scatter: %s: %w", t.name, err)
	}

	stopSampling := func() {}
	if t.proc != nil {
		pid := t.proc.pid()
		rss0, hwm0, err := memStatus(pid)
		if err != nil {
			return res, fmt.Errorf("scatter: %s memory: %w", t.name, err)
		}
		res.RSSBefore, res.HWMBefore = rss0, hwm0
		done := make(chan struct{})
		var wg sync.WaitGroup
		peak := rss0
		wg.Add(1)
		go func() {
			defer wg.Done()
			tk := time.NewTicker(5 * time.Millisecond)
			defer tk.Stop()
			for {
				if rss, _, err := memStatus(pid); err == nil {
					peak = max(peak, rss)
				}
				select {
				case <-done:
					return
				case <-tk.C:
				}
			}
		}()
		stopSampling = func() {
			close(done)
			wg.Wait()
			_, hwm1, _ := memStatus(pid)
			res.RSSPeak, res.HWMAfter = peak, hwm1
			g := peak - rss0
			res.RSSGrowth = &g
		}
	}

	start := time.Now()
	rows, err := c.Query(cctx, scatterQuery)
	if err != nil {
		stopSampling()
		return res, fmt.Errorf("scatter through %s: %w", t.name, err)
	}
	var n int64
	prev := int64(-1 << 63)
	var ordered = true
	for rows.Next() {
		raw := rows.RawValues()
		k, kerr := decodeInt8(raw[0], rows.FieldDescriptions()[0].Format)
		if kerr != nil {
			rows.Close()
			stopSampling()
			return res, fmt.Errorf("scatter through %s: row %d: %w", t.name, n+1, kerr)
		}
		if k < prev {
			ordered = false
		}
		prev = k
		n++
	}
	rows.Close()
	elapsed := time.Since(start)
	stopSampling()
	if err := rows.Err(); err != nil {
		return res, fmt.Errorf("scatter through %s: %w", t.name, err)
	}
	res.Rows, res.Seconds = n, elapsed.Seconds()
	res.RowsPerSec = float64(n) / elapsed.Seconds()
	var problems []string
	if n != int64(r.so.scanRows) {
		problems = append(problems, fmt.Sprintf("%d rows, want %d", n, r.so.scanRows))
	}
	if !ordered {
		problems = append(problems, "rows not in ORDER BY user_id order")
	}
	res.OK, res.Problem = len(problems) == 0, strings.Join(problems, "; ")
	line := fmt.Sprintf("sharded: scatter rep %d %-8s %-15s %d rows in %.2fs = %.0f rows/s", rep, modeName, t.name, n, elapsed.Seconds(), res.RowsPerSec)
	if res.RSSGrowth != nil {
		line += fmt.Sprintf(", RSS %s → peak %s (+%s)", mib(res.RSSBefore), mib(res.RSSPeak), mib(*res.RSSGrowth))
	}
	if !res.OK {
		line += " PROBLEM: " + res.Problem
	}
	if rep == 0 {
		r.vlogf("%s (warm-up)", line)
	} else {
		r.logf("%s", line)
	}
	return res, nil
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// decodeInt8 reads a bigint in text or binary format.
func decodeInt8(b []byte, format int16) (int64, error) {
	if format == pgtype.BinaryFormatCode {
		if len(b) != 8 {
			return 0, fmt.Errorf("binary int8 of %d bytes", len(b))
		}
		return int64(binary.BigEndian.Uint64(b)), nil
	}
	return strconv.ParseInt(string(b), 10, 64)
}

// commitPairs returns n pairs of distinct keys in 1..rows on different
// shards (cross) and n pairs on the same shard (same, alternating between
// shards 0 and 1), never using a key twice.
func commitPairs(rows, n int, owner func(int64) (int, error)) (cross, same [][2]int64, err error) {
	by := [2][]int64{}
	for k := int64(1); k <= int64(rows); k++ {
		i, err := owner(k)
		if err != nil {
			return nil, nil, err
		}
		if i == 0 || i == 1 {
			by[i] = append(by[i], k)
		}
	}
	// cross takes n keys of each shard, same at most n more of each.
	if len(by[0]) < 2*n || len(by[1]) < 2*n {
		return nil, nil, fmt.Errorf("commit pairs: %d and %d keys on the shards, need %d each", len(by[0]), len(by[1]), 2*n)
	}
	for j := range n {
		cross = append(cross, [2]int64{by[0][j], by[1][j]})
	}
	rest := [2][]int64{by[0][n:], by[1][n:]}
	for j := range n {
		s, k := j%2, j/2*2
		same = append(same, [2]int64{rest[s][k], rest[s][k+1]})
	}
	return cross, same, nil
}

// commits measures autocommit UPDATEs of two keys through pgshard-2shards:
// keys on two shards (two-phase commit) against keys on one shard.
func (r *shardedRun) commits(ctx context.Context, rep *shardedReport) error {
	cross, same, err := commitPairs(r.so.rows, r.so.commits, r.n2.owner)
	if err != nil {
		return err
	}
	r.logf("sharded: commit cost: %d autocommit UPDATE … WHERE user_id IN (a, b) per case, 1 client", r.so.commits)
	cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	via, err := pgconn.Connect(cctx, appDSN(r.n2.port))
	if err != nil {
		return fmt.Errorf("commit: connect %s: %w", r.n2.name, err)
	}
	defer via.Close(context.Background())
	direct, err := pgconn.Connect(cctx, appDSN(r.direct.Port))
	if err != nil {
		return fmt.Errorf("commit: connect direct: %w", err)
	}
	defer direct.Close(context.Background())
	one := func(c *pgconn.PgConn, p [2]int64) (time.Duration, error) {
		sql := fmt.Sprintf("UPDATE %s SET v = v + 1 WHERE user_id IN (%d, %d)", keyedTable, p[0], p[1])
		t0 := time.Now()
		res, err := c.Exec(cctx, sql).ReadAll()
		d := time.Since(t0)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", sql, err)
		}
		if len(res) != 1 || res[0].CommandTag.String() != "UPDATE 2" {
			return 0, fmt.Errorf("%s: got %v, want UPDATE 2", sql, res)
		}
		return d, nil
	}
	// Warm-up (the same keys as below: a row updated twice costs the same).
	for j := range min(20, r.so.commits) {
		for _, c := range []*pgconn.PgConn{via, direct} {
			if _, err := one(c, [2]int64{cross[j][1], cross[j][0]}); err != nil {
				return fmt.Errorf("commit warm-up: %w", err)
			}
		}
	}
	var dCross, dSame, dDirect []float64
	for j := range r.so.commits {
		// Alternate the order so that neither case always follows the other.
		cases := []func() error{
			func() error { d, err := one(via, cross[j]); dCross = append(dCross, ms(d)); return err },
			func() error { d, err := one(via, same[j]); dSame = append(dSame, ms(d)); return err },
			func() error { d, err := one(direct, same[j]); dDirect = append(dDirect, ms(d)); return err },
		}
		if j%2 == 1 {
			slices.Reverse(cases)
		}
		for _, f := range cases {
			if err := f(); err != nil {
				return fmt.Errorf("commit cost through %s: %w", r.n2.name, err)
			}
		}
	}
	rep.Commit = &commitResult{Statements: r.so.commits,
		CrossMs: stats(dCross), SameMs: stats(dSame), DirectMs: stats(dDirect)}
	rep.Commit.Ratio = *rep.Commit.CrossMs.Median / *rep.Commit.SameMs.Median
	r.logf("sharded: commit: two shards median %.3f ms, one shard %.3f ms (%.2f×), direct %.3f ms",
		*rep.Commit.CrossMs.Median, *rep.Commit.SameMs.Median, rep.Commit.Ratio, *rep.Commit.DirectMs.Median)
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// latency is a latency distribution in ms.
type latency struct {
	Median *float64 `json:"median"`
	P90    float64  `json:"p90"`
	Mean   float64  `json:"mean"`
}

func stats(v []float64) latency {
	s := slices.Clone(v)
	slices.Sort(s)
	var l latency
	l.Median = median(s)
	if len(s) > 0 {
		l.P90 = s[min(len(s)-1, len(s)*9/10)]
		var sum float64
		for _, x := range s {
			sum += x
		}
		l.Mean = sum / float64(len(s))
	}
	return l
}
