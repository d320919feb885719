package main

// pgshardctl verify: checks the data on the shards against the shard map.
//
//	pgshardctl verify [--json] [--user U --password P --database D]
//
// For every shard in the map and every sharded table, it counts the rows
// and the rows whose key hash is not in a range the shard owns (a shard that
// owns no range must hold no row), plus rows with a NULL key (which no shard
// owns). For every reference table, it computes a row count and an
// order-independent checksum on every shard; all must be equal. Exit code 0
// when everything is in place, 1 on any misplaced row, NULL key, reference
// mismatch or table/shard that could not be checked, 2 on wrong usage, 3 on
// a bad admin token.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgshard/pgshard/admin"
	"github.com/pgshard/pgshard/resharder"
	"github.com/pgshard/pgshard/shardmap"
)

func init() {
	commands["verify"] = command{summary: "check every row is on the shard owning its key and reference tables are identical", run: runVerify}
}

// verifyChecksumMethod describes the reference-table checksum (also in --json).
const verifyChecksumMethod = "per row md5(ROW(t.*)::text); sums of its two 64-bit halves mod 2^64 (order-independent)"

// verifySampleLimit is how many misplaced keys are shown per table and shard.
const verifySampleLimit = 5

// verifyStderr is where progress goes (tests replace it).
var verifyStderr io.Writer = os.Stderr

type verifyMisplaced struct {
	Key   *string `json:"key"`  // text form; nil for NULL
	Hash  *int64  `json:"hash"` // nil for a NULL key
	Owner string  `json:"owner,omitempty"`
}

type verifyShard struct {
	Shard     string            `json:"shard"`
	Rows      int64             `json:"rows"`
	Misplaced int64             `json:"misplaced"`          // sharded: hash not owned by this shard
	NullKeys  int64             `json:"null_keys"`          // sharded: NULL key
	Samples   []verifyMisplaced `json:"samples,omitempty"`  // sharded: up to 5 misplaced keys
	Checksum  string            `json:"checksum,omitempty"` // reference
	Differs   bool              `json:"differs,omitempty"`  // reference: rows or checksum differ from the first shard's
	Error     string            `json:"error,omitempty"`    // could not be checked
	Ranges    int               `json:"owned_ranges"`       // ranges the shard owns on the ring
	Elapsed   float64           `json:"elapsed_seconds"`    // time of the check on this shard
	checked   bool              // the counts are valid
}

type verifyTable struct {
	Name      string        `json:"name"`
	Kind      string        `json:"kind"`
	KeyColumn string        `json:"key_column,omitempty"`
	KeyType   string        `json:"key_type,omitempty"`
	Shards    []verifyShard `json:"shards"`
	OK        bool          `json:"ok"`
	Problems  []string      `json:"problems,omitempty"`
}

type verifyReport struct {
	MapVersion     uint64        `json:"map_version"`
	RingVersion    uint64        `json:"ring_version"`
	Shards         []string      `json:"shards"`
	ChecksumMethod string        `json:"checksum_method"`
	Tables         []verifyTable `json:"tables"`
	Jobs           int           `json:"reshard_jobs"`
	OK             bool          `json:"ok"`
	Problems       []string      `json:"problems,omitempty"`
}

func runVerify(args []string) int {
	if len(args) > 0 && (args[0] == "help" || args[0] == "-h" || args[0] == "--help") {
		verifyUsage()
		return 0
	}
	fs, a := newFlags("verify")
	user := fs.String("user", envOr("PGUSER", "app"), "user on the shards' primaries (env PGUSER, default app)")
	password := fs.String("password", envOr("PGPASSWORD", "app"), "password on the shards (env PGPASSWORD, default app)")
	database := fs.String("database", envOr("PGDATABASE", "app"), "database on the shards (env PGDATABASE, default app)")
	pos, err := parseArgs(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err == nil && len(pos) != 0 {
		err = usagef("verify takes no arguments, got %q", pos)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgshardctl verify: %v\n", err)
		verifyUsage()
		return 2
	}

	c, cancel := ctx()
	_, m, err := a.client().Map(c)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgshardctl verify: %v\n", err)
		var ae *admin.APIError
		if errors.As(err, &ae) && ae.Code == admin.CodeUnauthorized {
			return 3
		}
		return 1
	}

	sctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	progress := !a.json && isTerminal(verifyStderr)
	rep := verify(sctx, m, verifyCreds{user: *user, password: *password, database: *database}, progress)
	if a.json {
		if err := printJSON(rep); err != nil {
			fmt.Fprintf(os.Stderr, "pgshardctl verify: %v\n", err)
			return 1
		}
	} else {
		printVerify(rep)
	}
	if !rep.OK {
		return 1
	}
	return 0
}

func verifyUsage() {
	fmt.Fprintln(os.Stderr, "usage: pgshardctl verify [--json] [--user U] [--password P] [--database D]")
	fmt.Fprintln(os.Stderr, "  checks that every row of every sharded table is on the shard owning its key,")
	fmt.Fprintln(os.Stderr, "  and that every reference table is identical on every shard; exit 1 on any difference.")
	fmt.Fprintln(os.Stderr, "  credentials: flags, else PGUSER/PGPASSWORD/PGDATABASE, else app/app/app")
	fmt.Fprintln(os.Stderr, "\nglobal flags: --admin-url URL (env PGSHARD_ADMIN_URL), --token T (env PGSHARD_ADMIN_TOKEN), --json")
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

type verifyCreds struct{ user, password, database string }

// verifyConnect opens a connection to a shard's primary. The map's DSN gives
// the address; the credentials and database come from verify's flags. The
// session settings make row text forms (and so reference checksums)
// independent of each server's configuration.
func verifyConnect(ctx context.Context, dsn string, cr verifyCreds) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse DSN %q: %w", dsn, err)
	}
	cfg.User, cfg.Password, cfg.Database = cr.user, cr.password, cr.database
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.RuntimeParams == nil {
		cfg.RuntimeParams = map[string]string{}
	}
	for k, v := range map[string]string{
		"application_name":              "pgshardctl verify",
		"TimeZone":                      "UTC",
		"DateStyle":                     "ISO, MDY",
		"IntervalStyle":                 "postgres",
		"extra_float_digits":            "1",
		"bytea_output":                  "hex",
		"default_transaction_read_only": "on",
	} {
		cfg.RuntimeParams[k] = v
	}
	return pgconn.ConnectConfig(ctx, cfg)
}

// quoteIdent quotes a possibly schema-qualified name part by part.
func quoteIdent(name string) string {
	parts := strings.Split(name, ".")
	for i, p := range parts {
		parts[i] = `"` + strings.ReplaceAll(p, `"`, `""`) + `"`
	}
	return strings.Join(parts, ".")
}

// verifyHashExpr is the SQL ring position of a key column, as
// ../shared/DESIGN.md "Shard key hashing" specifies.
func verifyHashExpr(t shardmap.KeyType, col string) (string, error) {
	switch t {
	case shardmap.KeyInt:
		return "hashint8extended((" + col + ")::bigint, 0)", nil
	case shardmap.KeyText:
		return "hashtextextended((" + col + ")::text, 0)", nil
	case shardmap.KeyUUID:
		return "uuid_hash_extended(" + col + ", 0)", nil
	}
	return "", fmt.Errorf("key type %v: %w", t, shardmap.ErrUnknownKeyType)
}

// verifyOwnedPred is the SQL predicate "expr is in a range shard owns".
func verifyOwnedPred(r *shardmap.Ring, shard, expr string) (string, int) {
	if r == nil {
		return "false", 0
	}
	rs := r.Ranges(shard)
	if len(rs) == 0 {
		return "false", 0
	}
	ps := make([]string, len(rs))
	for i, g := range rs {
		ps[i] = g.SQL(expr)
	}
	return "(" + strings.Join(ps, " OR ") + ")", len(rs)
}

// verifyShardedSQL returns the count query and the sample query for one
// sharded table on one shard.
func verifyShardedSQL(t shardmap.Table, r *shardmap.Ring, shard string) (count, sample string, ranges int, err error) {
	col := t.KeyColumn
	if col == "" {
		col = shardmap.DefaultKeyColumn
	}
	h, err := verifyHashExpr(t.KeyType, quoteIdent(col))
	if err != nil {
		return "", "", 0, err
	}
	owned, ranges := verifyOwnedPred(r, shard, "h")
	from := fmt.Sprintf("(SELECT %s AS k, %s AS h FROM %s) s", quoteIdent(col), h, quoteIdent(t.Name))
	count = fmt.Sprintf("SELECT count(*), count(*) FILTER (WHERE h IS NOT NULL AND NOT %s), count(*) FILTER (WHERE h IS NULL) FROM %s", owned, from)
	sample = fmt.Sprintf("SELECT k::text, h FROM %s WHERE h IS NULL OR NOT %s LIMIT %d", from, owned, verifySampleLimit)
	return count, sample, ranges, nil
}

// verifyReferenceSQL returns the row count and checksum query of a
// reference table: an order-independent fingerprint (no sort, no limit on
// the table's size), the sums of the two 64-bit halves of each row's md5.
func verifyReferenceSQL(t shardmap.Table) string {
	return fmt.Sprintf("SELECT count(*), coalesce(sum(('x' || substr(d, 1, 16))::bit(64)::bigint::numeric), 0), "+
		"coalesce(sum(('x' || substr(d, 17, 16))::bit(64)::bigint::numeric), 0) "+
		"FROM (SELECT md5(ROW(r.*)::text) AS d FROM %s r) s", quoteIdent(t.Name))
}

// verifyQuery runs one statement and returns its rows as text (nil = NULL).
func verifyQuery(ctx context.Context, c *pgconn.PgConn, sql string) ([][]*string, error) {
	res, err := c.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, err
	}
	if len(res) != 1 {
		return nil, fmt.Errorf("%d results", len(res))
	}
	out := make([][]*string, len(res[0].Rows))
	for i, row := range res[0].Rows {
		out[i] = make([]*string, len(row))
		for j, v := range row {
			if v != nil {
				s := string(v)
				out[i][j] = &s
			}
		}
	}
	return out, nil
}

func verifyInt(s *string) (int64, error) {
	if s == nil {
		return 0, errors.New("unexpected NULL")
	}
	return strconv.ParseInt(*s, 10, 64)
}

var two64 = new(big.Int).Lsh(big.NewInt(1), 64)

// verifyMod64 reduces a numeric sum to 16 hex digits (mod 2^64).
func verifyMod64(s *string) (string, error) {
	if s == nil {
		return "", errors.New("unexpected NULL")
	}
	v, ok := new(big.Int).SetString(*s, 10)
	if !ok {
		return "", fmt.Errorf("bad sum %q", *s)
	}
	return fmt.Sprintf("%016x", new(big.Int).Mod(v, two64)), nil
}

func verifyErr(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		if pe.Code == "42P01" {
			return "missing table: " + pe.Message
		}
		return fmt.Sprintf("%s (SQLSTATE %s)", pe.Message, pe.Code)
	}
	return err.Error()
}

// checkSharded fills res for a sharded table on one shard.
func checkSharded(ctx context.Context, c *pgconn.PgConn, t shardmap.Table, r *shardmap.Ring, res *verifyShard) {
	count, sample, ranges, err := verifyShardedSQL(t, r, res.Shard)
	res.Ranges = ranges
	if err != nil {
		res.Error = err.Error()
		return
	}
	rows, err := verifyQuery(ctx, c, count)
	if err == nil && len(rows) != 1 {
		err = fmt.Errorf("count returned %d rows", len(rows))
	}
	if err != nil {
		res.Error = verifyErr(err)
		return
	}
	var e1, e2, e3 error
	res.Rows, e1 = verifyInt(rows[0][0])
	res.Misplaced, e2 = verifyInt(rows[0][1])
	res.NullKeys, e3 = verifyInt(rows[0][2])
	if err := errors.Join(e1, e2, e3); err != nil {
		res.Error = err.Error()
		return
	}
	res.checked = true
	if res.Misplaced+res.NullKeys == 0 {
		return
	}
	rows, err = verifyQuery(ctx, c, sample)
	if err != nil {
		res.Error = "sample misplaced keys: " + verifyErr(err)
		return
	}
	for _, row := range rows {
		s := verifyMisplaced{Key: row[0]}
		if row[1] != nil {
			h, err := strconv.ParseInt(*row[1], 10, 64)
			if err != nil {
				res.Error = "sample misplaced keys: " + err.Error()
				return
			}
			s.Hash = &h
			if r != nil {
				s.Owner = r.Lookup(h)
			}
		}
		res.Samples = append(res.Samples, s)
	}
}

// checkReference fills res for a reference table on one shard.
func checkReference(ctx context.Context, c *pgconn.PgConn, t shardmap.Table, res *verifyShard) {
	rows, err := verifyQuery(ctx, c, verifyReferenceSQL(t))
	if err == nil && len(rows) != 1 {
		err = fmt.Errorf("checksum returned %d rows", len(rows))
	}
	if err != nil {
		res.Error = verifyErr(err)
		return
	}
	var a, b string
	var e1, e2, e3 error
	res.Rows, e1 = verifyInt(rows[0][0])
	a, e2 = verifyMod64(rows[0][1])
	b, e3 = verifyMod64(rows[0][2])
	if err := errors.Join(e1, e2, e3); err != nil {
		res.Error = err.Error()
		return
	}
	res.Checksum = a + b
	res.checked = true
}

// verify checks every table of m on every shard of m.
func verify(ctx context.Context, m *shardmap.Map, cr verifyCreds, progress bool) *verifyReport {
	rep := &verifyReport{MapVersion: m.Version(), RingVersion: m.RingVersion(), ChecksumMethod: verifyChecksumMethod,
		Shards: []string{}, Tables: []verifyTable{}, Jobs: unfinishedJobs(m)}
	shards := m.Shards()
	ring := m.Ring()
	tables := m.Tables()
	for _, s := range shards {
		rep.Shards = append(rep.Shards, s.Name)
	}
	if len(shards) == 0 && len(tables) > 0 {
		rep.Problems = append(rep.Problems, "the map has tables but no shards")
	}

	// One connection per shard for the whole run, opened in parallel.
	conns := make([]*pgconn.PgConn, len(shards))
	connErrs := make([]error, len(shards))
	if len(tables) > 0 {
		var wg sync.WaitGroup
		for i, s := range shards {
			wg.Go(func() { conns[i], connErrs[i] = verifyConnect(ctx, s.Primary, cr) })
		}
		wg.Wait()
	}
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close(context.Background())
			}
		}
	}()
	for i, err := range connErrs {
		if err != nil {
			rep.Problems = append(rep.Problems, fmt.Sprintf("shard %s: cannot connect to its primary: %v", shards[i].Name, err))
		}
	}

	for _, t := range tables {
		vt := verifyTable{Name: t.Name, Kind: string(t.Kind), Shards: make([]verifyShard, len(shards))}
		if t.Kind == shardmap.TableSharded {
			vt.KeyColumn, vt.KeyType = t.KeyColumn, t.KeyType.String()
		}
		start := time.Now()
		if progress {
			fmt.Fprintf(verifyStderr, "verify: %s (%s) on %d shard(s)...", t.Name, t.Kind, len(shards))
		}
		var wg sync.WaitGroup
		for i, s := range shards {
			res := &vt.Shards[i]
			res.Shard = s.Name
			if connErrs[i] != nil {
				res.Error = "cannot connect: " + connErrs[i].Error()
				continue
			}
			wg.Go(func() {
				t0 := time.Now()
				switch t.Kind {
				case shardmap.TableSharded:
					checkSharded(ctx, conns[i], t, ring, res)
				case shardmap.TableReference:
					checkReference(ctx, conns[i], t, res)
				default:
					res.Error = fmt.Sprintf("unknown table kind %q", t.Kind)
				}
				res.Elapsed = time.Since(t0).Seconds()
			})
		}
		wg.Wait()
		if progress {
			fmt.Fprintf(verifyStderr, " %.1fs\n", time.Since(start).Seconds())
		}
		vt.Problems = tableProblems(t, vt.Shards)
		vt.OK = len(vt.Problems) == 0
		rep.Problems = append(rep.Problems, vt.Problems...)
		rep.Tables = append(rep.Tables, vt)
	}
	rep.OK = len(rep.Problems) == 0
	return rep
}

func tableProblems(t shardmap.Table, res []verifyShard) []string {
	var ps []string
	for _, r := range res {
		switch {
		case r.Error != "":
			ps = append(ps, fmt.Sprintf("%s on %s: cannot check: %s", t.Name, r.Shard, r.Error))
		case r.Misplaced > 0:
			ps = append(ps, fmt.Sprintf("%s on %s: %d misplaced row(s), e.g. %s", t.Name, r.Shard, r.Misplaced, sampleKeys(r.Samples)))
		}
		if r.NullKeys > 0 {
			ps = append(ps, fmt.Sprintf("%s on %s: %d row(s) with a NULL shard key", t.Name, r.Shard, r.NullKeys))
		}
	}
	if t.Kind != shardmap.TableReference {
		return ps
	}
	// All checked shards must agree with the first checked one.
	var ref *verifyShard
	for i := range res {
		if !res[i].checked {
			continue
		}
		if ref == nil {
			ref = &res[i]
			continue
		}
		if r := res[i]; r.Rows != ref.Rows || r.Checksum != ref.Checksum {
			res[i].Differs = true
			ps = append(ps, fmt.Sprintf("reference table %s differs: %s has %d row(s), checksum %s; %s has %d row(s), checksum %s",
				t.Name, ref.Shard, ref.Rows, ref.Checksum, r.Shard, r.Rows, r.Checksum))
		}
	}
	return ps
}

func sampleKeys(ss []verifyMisplaced) string {
	var b []string
	for _, s := range ss {
		if s.Key == nil || s.Hash == nil {
			continue
		}
		owner := s.Owner
		if owner == "" {
			owner = "none"
		}
		b = append(b, fmt.Sprintf("key %s (hash %d, owner %s)", *s.Key, *s.Hash, owner))
	}
	return strings.Join(b, ", ")
}

func printVerify(rep *verifyReport) {
	w := stdout
	fmt.Fprintf(w, "map version %d, ring version %d, %d shard(s)\n", rep.MapVersion, rep.RingVersion, len(rep.Shards))
	if rep.Jobs > 0 {
		fmt.Fprintf(w, "note: %d reshard job(s) running: rows being moved may show as misplaced\n", rep.Jobs)
	}
	if len(rep.Tables) == 0 {
		fmt.Fprintln(w, "no tables defined; nothing to check")
	} else {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TABLE\tKIND\tSHARD\tROWS\tMISPLACED\tNULL KEYS\tCHECKSUM\tSTATUS")
		for _, t := range rep.Tables {
			for _, r := range t.Shards {
				rows, mis, nulls, sum, status := "-", "-", "-", "-", "ok"
				if r.checked {
					rows = strconv.FormatInt(r.Rows, 10)
				}
				if t.Kind == string(shardmap.TableSharded) && r.checked {
					mis, nulls = strconv.FormatInt(r.Misplaced, 10), strconv.FormatInt(r.NullKeys, 10)
					if r.Misplaced+r.NullKeys > 0 {
						status = "MISPLACED"
					}
				}
				if r.Checksum != "" {
					sum = r.Checksum
				}
				if r.Differs {
					status = "DIFFERS"
				}
				if r.Error != "" {
					status = "ERROR: " + r.Error
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.Name, t.Kind, r.Shard, rows, mis, nulls, sum, status)
			}
		}
		tw.Flush()
	}
	var samples []string
	for _, t := range rep.Tables {
		for _, r := range t.Shards {
			for _, s := range r.Samples {
				key, hash, owner := "NULL", "NULL", s.Owner
				if s.Key != nil {
					key = *s.Key
				}
				if s.Hash != nil {
					hash = strconv.FormatInt(*s.Hash, 10)
				}
				if owner == "" {
					owner = "no shard"
				}
				samples = append(samples, fmt.Sprintf("  %s on %s: key %s  hash %s  belongs to %s", t.Name, r.Shard, key, hash, owner))
			}
		}
	}
	if len(samples) > 0 {
		fmt.Fprintf(w, "\nmisplaced rows (up to %d per table and shard):\n%s\n", verifySampleLimit, strings.Join(samples, "\n"))
	}
	if rep.OK {
		var rows int64
		for _, t := range rep.Tables {
			for _, r := range t.Shards {
				if t.Kind == string(shardmap.TableSharded) {
					rows += r.Rows
				}
			}
		}
		fmt.Fprintf(w, "\nOK: %d sharded row(s) all on their owning shard; reference tables identical on every shard\n", rows)
		return
	}
	fmt.Fprintf(w, "\nFAILED: %d problem(s):\n", len(rep.Problems))
	for _, p := range rep.Problems {
		fmt.Fprintf(w, "  %s\n", p)
	}
}

// unfinishedJobs counts the reshard jobs of m that are neither done nor
// cancelled (a finished job stays in the map until the next one starts).
func unfinishedJobs(m *shardmap.Map) int {
	n := 0
	for _, j := range m.Jobs() {
		if j.Phase != resharder.PhaseDone && j.Phase != resharder.PhaseCancelled {
			n++
		}
	}
	return n
}
