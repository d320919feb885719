// Command pgshard-compat runs pgx v5's own test suite twice, through pgshard
// and directly against the PostgreSQL primary behind it, and reports the
// tests that fail only through pgshard (issue 7's compatibility suite).
//
//	go run ./cmd/pgshard-compat [-run REGEX] [-pkgs ./pgconn,.] [-pgshard-url URL -direct-url URL]
//
// Without -pgshard-url it builds the daemon, starts its own dev topology (one
// shard, no replica, transaction pooling) with `pgshardctl dev up` in -dir on
// free ports in 14000-14999 (clear of `make dev-up` and of the tests' random
// ports in 20000-32000) and stops it at the end.
//
// pgx's module (the version go.mod requires) is fetched with `go mod download`
// and copied to a writable directory under -dir. The database is prepared the
// way pgx's testsetup/postgresql_setup.sql does it (hstore, ltree, the uint64
// domain, the "tricky" role; the test user app made superuser like pgx CI's).
//
// The exit status is 1 when a test fails only through pgshard and is not in
// the known list (-known), or when a known entry now passes through pgshard.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

const pgxModule = "github.com/jackc/pgx/v5"

type options struct {
	run        string
	skip       string
	pkgs       string
	pgshardURL string
	directURL  string
	setupURL   string
	known      string
	report     string
	dir        string
	binDir     string
	pgxVersion string
	timeout    time.Duration
	parallel   int
	short      bool
	keep       bool
	noBuild    bool
	sides      string
	skipKnown  bool
}

func main() {
	os.Exit(run())
}

func run() int {
	var o options
	flag.StringVar(&o.run, "run", "", "only tests matching this regexp (go test -run)")
	flag.StringVar(&o.skip, "skip", "", "skip tests matching this regexp (go test -skip)")
	flag.StringVar(&o.pkgs, "pkgs", "./...", "comma-separated pgx packages, relative to the pgx module (e.g. .,./pgconn,./stdlib)")
	flag.StringVar(&o.pgshardURL, "pgshard-url", "", "test an already-running pgshard at this URL instead of starting a topology")
	flag.StringVar(&o.directURL, "direct-url", "", "with -pgshard-url: the primary behind it, same user and database (empty: no direct run)")
	flag.StringVar(&o.setupURL, "setup-url", "", "with -pgshard-url: a superuser URL on the primary's database to prepare it (empty: no setup)")
	flag.StringVar(&o.known, "known", "cmd/pgshard-compat/known.txt", "expected failures through pgshard: lines `TestName  reason` or `pkg.TestName  reason`")
	flag.StringVar(&o.report, "report", "", "also write the report to this file")
	flag.StringVar(&o.dir, "dir", filepath.Join(os.TempDir(), "pgshard-compat"), "work directory: dev topology, pgx copy, raw go test -json output")
	flag.StringVar(&o.binDir, "bin", "bin", "where pgshard and pgshardctl are built (go build -o BIN/ ./cmd/...)")
	flag.BoolVar(&o.noBuild, "no-build", false, "use the binaries in -bin as they are")
	flag.StringVar(&o.pgxVersion, "pgx-version", "", "pgx version to test (default: the one go.mod requires)")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "go test -timeout (per package binary)")
	flag.IntVar(&o.parallel, "p", 0, "go test -p (packages in parallel; 0: go's default)")
	flag.BoolVar(&o.short, "short", false, "go test -short")
	flag.BoolVar(&o.keep, "keep", false, "leave the started topology running")
	flag.StringVar(&o.sides, "sides", "both", "both, pgshard or direct")
	flag.BoolVar(&o.skipKnown, "skip-known", false, "skip the known list's tests (faster; then a known test that passes again goes unnoticed)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "pgshard-compat: unexpected arguments %q\n", flag.Args())
		return 2
	}
	if o.sides != "both" && o.sides != "pgshard" && o.sides != "direct" {
		fmt.Fprintf(os.Stderr, "pgshard-compat: -sides %q: want both, pgshard or direct\n", o.sides)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code, err := compat(ctx, &o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgshard-compat: %v\n", err)
		return 2
	}
	return code
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "compat: "+format+"\n", args...)
}

func compat(ctx context.Context, o *options) (int, error) {
	known, err := readKnown(o.known)
	if err != nil {
		return 0, err
	}
	if err := os.MkdirAll(o.dir, 0o755); err != nil {
		return 0, err
	}
	if o.dir, err = filepath.Abs(o.dir); err != nil {
		return 0, err
	}
	if o.skipKnown && len(known) > 0 {
		var names []string
		for _, k := range known {
			_, name, ok := strings.Cut(k.id, ".")
			if !ok {
				name = k.id
			}
			names = append(names, regexp.QuoteMeta(name))
		}
		re := "^(" + strings.Join(names, "|") + ")$"
		if o.skip != "" {
			re = o.skip + "|" + re
		}
		o.skip = re
	}
	if o.pgxVersion == "" {
		if o.pgxVersion, err = goModVersion("go.mod", pgxModule); err != nil {
			return 0, err
		}
	}
	pgxDir, err := fetchPgx(ctx, o.pgxVersion, o.dir)
	if err != nil {
		return 0, err
	}

	if o.pgshardURL == "" {
		devDir := filepath.Join(o.dir, "dev")
		urls, err := startTopology(ctx, o, devDir)
		if err != nil {
			return 0, err
		}
		o.pgshardURL, o.directURL, o.setupURL = urls[0], urls[1], urls[2]
		if o.keep {
			logf("-keep: the topology stays up; stop it with: %s dev down --dir %s", filepath.Join(o.binDir, "pgshardctl"), devDir)
		} else {
			defer func() {
				cmd := exec.Command(filepath.Join(o.binDir, "pgshardctl"), "dev", "down", "--dir", devDir)
				cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
				if err := cmd.Run(); err != nil {
					logf("dev down: %v", err)
				}
			}()
		}
	}
	if o.setupURL != "" {
		if err := prepareDB(ctx, o.setupURL); err != nil {
			return 0, fmt.Errorf("prepare the database: %w", err)
		}
	}

	var viaProxy, direct *side
	if o.sides != "direct" {
		if viaProxy, err = runSuite(ctx, o, pgxDir, "pgshard", o.pgshardURL); err != nil {
			return 0, err
		}
	}
	if o.sides != "pgshard" && o.directURL != "" {
		if direct, err = runSuite(ctx, o, pgxDir, "direct", o.directURL); err != nil {
			return 0, err
		}
	}
	rep, code := report(o, viaProxy, direct, known)
	fmt.Print(rep)
	if o.report != "" {
		if err := os.WriteFile(o.report, []byte(rep), 0o644); err != nil {
			return 0, err
		}
		logf("report written to %s", o.report)
	}
	return code, nil
}

// goModVersion returns the version of module mod that go.mod requires.
func goModVersion(gomod, mod string) (string, error) {
	b, err := os.ReadFile(gomod)
	if err != nil {
		return "", fmt.Errorf("%v (run from the repository root, or pass -pgx-version)", err)
	}
	re := regexp.MustCompile(`(?m)^\s*(?:require\s+)?` + regexp.QuoteMeta(mod) + `\s+(v\S+)`)
	m := re.FindSubmatch(b)
	if m == nil {
		return "", fmt.Errorf("%s does not require %s; pass -pgx-version", gomod, mod)
	}
	return string(m[1]), nil
}

// fetchPgx downloads pgx's module through the module proxy and copies it to
// a writable directory under dir (the module cache is read-only).
func fetchPgx(ctx context.Context, version, dir string) (string, error) {
	dst := filepath.Join(dir, "pgx@"+version)
	if _, err := os.Stat(filepath.Join(dst, ".complete")); err == nil {
		return dst, nil
	}
	logf("go mod download %s@%s", pgxModule, version)
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", pgxModule+"@"+version)
	cmd.Dir = dir // outside any module
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go mod download: %w", err)
	}
	var info struct{ Dir, Error string }
	if err := json.Unmarshal(out, &info); err != nil {
		return "", fmt.Errorf("go mod download: %w", err)
	}
	if info.Error != "" || info.Dir == "" {
		return "", fmt.Errorf("go mod download: %s", info.Error)
	}
	if err := os.RemoveAll(dst); err != nil {
		return "", err
	}
	if err := copyTree(info.Dir, dst); err != nil {
		return "", err
	}
	return dst, os.WriteFile(filepath.Join(dst, ".complete"), nil, 0o644)
}

func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
}

func portFree(port int) bool {
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// startTopology builds the binaries and runs `pgshardctl dev up` with one
// shard, no replica, transaction pooling, on four free ports. It returns the
// pgshard URL, the primary's URL (same user and database) and the
// primary's superuser URL.
func startTopology(ctx context.Context, o *options, devDir string) ([3]string, error) {
	var urls [3]string
	if !o.noBuild {
		logf("go build -o %s/ ./cmd/...", o.binDir)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", o.binDir+string(filepath.Separator), "./cmd/...")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return urls, fmt.Errorf("go build: %w", err)
		}
	}
	base := 0
	for b := 14400; b < 15000; b += 10 {
		if portFree(b) && portFree(b+1) && portFree(b+2) && portFree(b+3) {
			base = b
			break
		}
	}
	if base == 0 {
		return urls, errors.New("no four free ports in 14400-14999")
	}
	args := []string{"dev", "up", "--dir", devDir, "--shards", "1", "--replicas", "0", "--spare", "0", "--nodes", "1",
		"--pool-mode", "transaction",
		"--port", strconv.Itoa(base), "--admin-port", strconv.Itoa(base + 1),
		"--raft-port", strconv.Itoa(base + 2), "--pg-port", strconv.Itoa(base + 3)}
	logf("pgshardctl %s", strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, filepath.Join(o.binDir, "pgshardctl"), args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return urls, fmt.Errorf("pgshardctl dev up: %w", err)
	}
	env, err := os.ReadFile(filepath.Join(devDir, "env"))
	if err != nil {
		return urls, err
	}
	vars := map[string]string{}
	for _, line := range strings.Split(string(env), "\n") {
		if k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "="); ok {
			vars[k] = v
		}
	}
	urls[0], urls[1] = vars["PGSHARD_URL"], vars["SHARD0_PRIMARY_URL"]
	if urls[0] == "" || urls[1] == "" {
		return urls, fmt.Errorf("%s/env lacks PGSHARD_URL or SHARD0_PRIMARY_URL", devDir)
	}
	urls[2] = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/app?sslmode=disable", base+3)
	return urls, nil
}

// setupSQL is pgx's testsetup/postgresql_setup.sql, idempotent, for the
// database the tests use. The test user is made superuser like pgx CI's.
var setupSQL = []string{
	`CREATE EXTENSION IF NOT EXISTS hstore`,
	`CREATE EXTENSION IF NOT EXISTS ltree`,
	`DO $$ BEGIN
	   IF NOT EXISTS (SELECT FROM pg_type WHERE typname = 'uint64') THEN
	     CREATE DOMAIN uint64 AS numeric(20,0);
	   END IF;
	 END $$`,
	`DO $$ BEGIN
	   IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = ' tricky, '' } " \ test user ') THEN
	     CREATE USER " tricky, ' } "" \ test user " SUPERUSER PASSWORD 'secret';
	   END IF;
	 END $$`,
	// The dev topology's test user, superuser like pgx CI's.
	`DO $$ BEGIN
	   IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'app') THEN ALTER ROLE app SUPERUSER; END IF;
	 END $$`,
}

func prepareDB(ctx context.Context, superURL string) error {
	c, err := pgconn.Connect(ctx, superURL)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	for _, s := range setupSQL {
		if _, err := c.Exec(ctx, s).ReadAll(); err != nil {
			return fmt.Errorf("%s: %w", strings.Fields(s)[0], err)
		}
	}
	return nil
}

// event is one line of go test -json.
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
	Elapsed float64
}

type result struct {
	status string   // pass, fail, skip; "" when it started and never ended
	output []string // its own output lines, subtests included
}

type side struct {
	name     string
	elapsed  time.Duration
	tests    map[string]*result // by id: pkg.Test (subtests too)
	pkgFail  map[string][]string
	rawPath  string
	exitCode int
}

// shortPkg names a pgx package for ids: "pgx" for the root, else its path
// in the module ("pgconn", "pgtype/zeronull").
func shortPkg(pkg string) string {
	if pkg == pgxModule {
		return "pgx"
	}
	return strings.TrimPrefix(pkg, pgxModule+"/")
}

func runSuite(ctx context.Context, o *options, pgxDir, name, url string) (*side, error) {
	args := []string{"test", "-json", "-count=1", "-timeout", o.timeout.String()}
	if o.run != "" {
		args = append(args, "-run", o.run)
	}
	if o.skip != "" {
		args = append(args, "-skip", o.skip)
	}
	if o.parallel > 0 {
		args = append(args, "-p", strconv.Itoa(o.parallel))
	}
	if o.short {
		args = append(args, "-short")
	}
	for _, p := range strings.Split(o.pkgs, ",") {
		if p = strings.TrimSpace(p); p != "" {
			args = append(args, p)
		}
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = pgxDir
	// On Ctrl-C, stop go test and the test binaries it runs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// Only the variables set here: the others make their tests skip.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PGX_") && !strings.HasPrefix(kv, "PG") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	for _, k := range []string{"PGX_TEST_DATABASE", "PGX_TEST_TCP_CONN_STRING", "PGX_TEST_SCRAM_PASSWORD_CONN_STRING", "PGX_TEST_PGBOUNCER_CONN_STRING"} {
		cmd.Env = append(cmd.Env, k+"="+url)
	}
	cmd.Env = append(cmd.Env, "GOFLAGS=-mod=mod")
	raw := filepath.Join(o.dir, name+".json")
	f, err := os.Create(raw)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	logf("%s: go %s  (PGX_TEST_DATABASE=%s)", name, strings.Join(args, " "), url)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &side{name: name, tests: map[string]*result{}, pkgFail: map[string][]string{}, rawPath: raw}
	pkgOut := map[string][]string{}
	sc := bufio.NewScanner(io.TeeReader(stdout, f))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil {
			continue
		}
		pkg := shortPkg(e.Package)
		if e.Test == "" {
			switch e.Action {
			case "output":
				pkgOut[pkg] = append(pkgOut[pkg], e.Output)
			case "fail":
				s.pkgFail[pkg] = pkgOut[pkg]
				logf("%s: FAIL %s (%.0fs)", name, pkg, e.Elapsed)
			case "pass":
				logf("%s: ok   %s (%.0fs)", name, pkg, e.Elapsed)
			}
			continue
		}
		id := pkg + "." + e.Test
		r := s.tests[id]
		if r == nil {
			r = &result{}
			s.tests[id] = r
		}
		switch e.Action {
		case "pass", "fail", "skip":
			r.status = e.Action
		case "output":
			r.output = append(r.output, e.Output)
			// A subtest's output belongs to its parents too.
			for t := e.Test; strings.Contains(t, "/"); {
				t = t[:strings.LastIndex(t, "/")]
				if p := s.tests[pkg+"."+t]; p != nil {
					p.output = append(p.output, e.Output)
				}
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	err = cmd.Wait()
	s.elapsed = time.Since(start)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return nil, err
	}
	s.exitCode = cmd.ProcessState.ExitCode()
	// A test that started and never ended was running when its package
	// crashed or timed out.
	for _, r := range s.tests {
		if r.status == "" {
			r.status = "fail"
			r.output = append(r.output, "(no result: its test binary crashed or timed out)\n")
		}
	}
	logf("%s: done in %s", name, s.elapsed.Round(time.Second))
	return s, nil
}

// top lists the top-level test ids of s.
func (s *side) top() []string {
	var ids []string
	for id := range s.tests {
		if !strings.Contains(id, "/") {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids
}

func (s *side) tally() string {
	n := map[string]int{}
	for _, id := range s.top() {
		n[s.tests[id].status]++
	}
	sub := map[string]int{}
	for id, r := range s.tests {
		if strings.Contains(id, "/") {
			sub[r.status]++
		}
	}
	return fmt.Sprintf("%-8s %4d pass %4d fail %4d skip  (subtests: %d pass, %d fail, %d skip)  in %s",
		s.name+":", n["pass"], n["fail"], n["skip"], sub["pass"], sub["fail"], sub["skip"], s.elapsed.Round(time.Second))
}

// failure summarises a failed test: its failing subtests and the first
// lines of its output that are not test-runner chatter.
func (s *side) failure(id string, lines int) string {
	var b strings.Builder
	var subs []string
	for sid, r := range s.tests {
		if strings.HasPrefix(sid, id+"/") && r.status == "fail" {
			subs = append(subs, strings.TrimPrefix(sid, id+"/"))
		}
	}
	sort.Strings(subs)
	if len(subs) > 0 {
		if len(subs) > 8 {
			subs = append(subs[:8], fmt.Sprintf("... %d more", len(subs)-8))
		}
		fmt.Fprintf(&b, "    failing subtests: %s\n", strings.Join(subs, ", "))
	}
	n := 0
	for _, l := range s.tests[id].output {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- PASS") ||
			strings.HasPrefix(t, "--- FAIL") || strings.HasPrefix(t, "--- SKIP") ||
			strings.HasPrefix(t, "Error Trace:") || strings.HasPrefix(t, "Test:") || strings.HasPrefix(t, "/") {
			continue
		}
		if n == lines {
			b.WriteString("    ...\n")
			break
		}
		fmt.Fprintf(&b, "    %s\n", strings.TrimRight(l, "\n"))
		n++
	}
	return b.String()
}

type knownEntry struct{ id, reason string }

// readKnown reads the known list: `TestName  reason` or `pkg.TestName
// reason`; blank lines and # comments are ignored.
func readKnown(path string) ([]knownEntry, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ks []knownEntry
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		ks = append(ks, knownEntry{id: f[0], reason: strings.TrimSpace(strings.TrimPrefix(line, f[0]))})
	}
	return ks, nil
}

func (k knownEntry) matches(id string) bool {
	if k.id == id {
		return true
	}
	// A bare test name matches it in any package.
	return strings.HasPrefix(k.id, "Test") && strings.HasSuffix(id, "."+k.id)
}

func report(o *options, viaProxy, direct *side, known []knownEntry) (string, int) {
	var b strings.Builder
	fmt.Fprintf(&b, "pgx %s test suite (packages %s", o.pgxVersion, o.pkgs)
	if o.run != "" {
		fmt.Fprintf(&b, ", -run %s", o.run)
	}
	b.WriteString(")\n")
	for _, s := range []*side{viaProxy, direct} {
		if s != nil {
			fmt.Fprintf(&b, "  %s\n", s.tally())
		}
	}
	if viaProxy == nil {
		return b.String(), 0
	}
	code := 0
	var newFails, knownFails, bothFails []string
	matchKnown := func(id string) *knownEntry {
		for i := range known {
			if known[i].matches(id) {
				return &known[i]
			}
		}
		return nil
	}
	ids := viaProxy.top()
	for _, id := range ids {
		if viaProxy.tests[id].status != "fail" {
			continue
		}
		if direct != nil {
			if d := direct.tests[id]; d != nil && d.status == "fail" {
				bothFails = append(bothFails, id)
				continue
			}
		}
		if matchKnown(id) != nil {
			knownFails = append(knownFails, id)
		} else {
			newFails = append(newFails, id)
		}
	}
	var pkgs []string
	for p := range viaProxy.pkgFail {
		if direct == nil || direct.pkgFail[p] == nil {
			// only interesting when no failing test of it explains it
			explained := false
			for _, id := range ids {
				if strings.HasPrefix(id, p+".") && viaProxy.tests[id].status == "fail" {
					explained = true
				}
			}
			if !explained {
				pkgs = append(pkgs, p)
			}
		}
	}
	sort.Strings(pkgs)

	only := "fail only through pgshard"
	if direct == nil {
		only = "fail through pgshard (no direct run to compare)"
	}
	fmt.Fprintf(&b, "\n%d test(s) %s and are not in %s:\n", len(newFails), only, o.known)
	for _, id := range newFails {
		fmt.Fprintf(&b, "  %s\n%s", id, viaProxy.failure(id, 6))
	}
	for _, p := range pkgs {
		fmt.Fprintf(&b, "  package %s failed only through pgshard without a failing test:\n", p)
		out := viaProxy.pkgFail[p]
		if len(out) > 10 {
			out = out[len(out)-10:]
		}
		for _, l := range out {
			fmt.Fprintf(&b, "    %s\n", strings.TrimRight(l, "\n"))
		}
	}
	if len(newFails) > 0 || len(pkgs) > 0 {
		code = 1
	}
	if len(knownFails) > 0 {
		fmt.Fprintf(&b, "\n%d known failure(s) through pgshard:\n", len(knownFails))
		for _, id := range knownFails {
			fmt.Fprintf(&b, "  %-60s %s\n", id, matchKnown(id).reason)
		}
	}
	var stale []string
	for _, k := range known {
		for _, id := range ids {
			if k.matches(id) && viaProxy.tests[id].status == "pass" {
				stale = append(stale, fmt.Sprintf("  %s (entry %q) now passes through pgshard: remove it from %s\n", id, k.id, o.known))
			}
		}
	}
	if len(stale) > 0 {
		fmt.Fprintf(&b, "\n%d known entr(ies) no longer fail:\n%s", len(stale), strings.Join(stale, ""))
		code = 1
	}
	if len(bothFails) > 0 {
		fmt.Fprintf(&b, "\n%d test(s) fail directly too (environment, not pgshard):\n", len(bothFails))
		for _, id := range bothFails {
			fmt.Fprintf(&b, "  %s\n%s", id, direct.failure(id, 2))
		}
	}
	fmt.Fprintf(&b, "\nraw go test -json output: %s", viaProxy.rawPath)
	if direct != nil {
		fmt.Fprintf(&b, ", %s", direct.rawPath)
	}
	b.WriteString("\n")
	if code == 0 {
		b.WriteString("compat: OK\n")
	} else {
		b.WriteString("compat: FAIL\n")
	}
	return b.String(), code
}
