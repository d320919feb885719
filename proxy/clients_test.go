package proxy_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgshard/pgshard/config"
	"github.com/pgshard/pgshard/topology/topotest"
)

// tool finds a PostgreSQL client program, skipping (failing in CI) when it
// is missing.
func tool(t *testing.T, name string) string {
	t.Helper()
	for _, dir := range []string{"/usr/lib/postgresql/15/bin", "/usr/bin"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if topotest.InCI() {
		t.Fatalf("%s not found", name)
	}
	t.Skipf("%s not found", name)
	return ""
}

// clientEnv points libpq programs at the proxy.
func (h *harness) clientEnv() []string {
	host, port, _ := net.SplitHostPort(h.addr)
	return append(os.Environ(), "PGHOST="+host, "PGPORT="+port, "PGUSER=app", "PGPASSWORD=app",
		"PGDATABASE="+h.db, "PGSSLMODE=prefer", "PGCONNECT_TIMEOUT=10")
}

func (h *harness) run(name string, stdin string, args ...string) string {
	h.t.Helper()
	// Bounded: a stuck session fails the test with its output, not the
	// whole package at the test timeout.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, tool(h.t, name), args...)
	cmd.Env = h.clientEnv()
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		h.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestPsql(t *testing.T) {
	h := startProxy(t, func(c *config.Config) { c.Pool.Size = 2 })
	dir := t.TempDir()
	csv := filepath.Join(dir, "in.csv")
	var b strings.Builder
	for i := 1; i <= 1000; i++ {
		b.WriteString(strings.Join([]string{itoa(i), "name" + itoa(i)}, ","))
		b.WriteByte('\n')
	}
	if err := os.WriteFile(csv, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	outCSV := filepath.Join(dir, "out.csv")
	script := `
\set ON_ERROR_STOP 1
CREATE TABLE people (id int PRIMARY KEY, name text);
\copy people FROM '` + csv + `' WITH (FORMAT csv)
SELECT count(*) AS n, max(id) AS top FROM people \gset
\echo count=:n top=:top
INSERT INTO people VALUES (:top + 1, 'extra') RETURNING id \gset new_
\echo new=:new_id
\copy (SELECT * FROM people ORDER BY id) TO '` + outCSV + `' WITH (FORMAT csv)
BEGIN;
UPDATE people SET name = 'changed' WHERE id = 1;
ROLLBACK;
SELECT name FROM people WHERE id = 1;
`
	out := h.run("psql", script, "-X", "-q", "-v", "ON_ERROR_STOP=1")
	if !strings.Contains(out, "count=1000 top=1000") || !strings.Contains(out, "new=1001") {
		t.Fatalf("psql output:\n%s", out)
	}
	if !strings.Contains(out, "name1") {
		t.Fatalf("rolled-back update visible:\n%s", out)
	}
	data, err := os.ReadFile(outCSV)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 1001 || lines[0] != "1,name1" || lines[1000] != "1001,extra" {
		t.Fatalf("\\copy out: %d lines, first %q last %q", len(lines), lines[0], lines[len(lines)-1])
	}
	// An error in psql reports the SQLSTATE with VERBOSITY verbose.
	cmd := exec.Command(tool(t, "psql"), "-X", "-q", "-v", "VERBOSITY=verbose", "-c", "SELECT 1/0")
	cmd.Env = h.clientEnv()
	eout, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(eout), "22012") {
		t.Fatalf("psql error: %v\n%s", err, eout)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

var failedRe = regexp.MustCompile(`number of failed transactions: (\d+)`)
var txRe = regexp.MustCompile(`number of transactions actually processed: (\d+)`)

func TestPgbench(t *testing.T) {
	h := startProxy(t, func(c *config.Config) { c.Pool.Size = 4 })
	h.run("pgbench", "", "-i", "-s", "2", "-q")
	for _, mode := range []string{"simple", "extended", "prepared"} {
		t.Run(mode, func(t *testing.T) {
			for _, args := range [][]string{
				{"-S", "-M", mode, "-c", "8", "-j", "2", "-t", "300"},
				{"-M", mode, "-c", "4", "-j", "2", "-t", "100"}, // TPC-B-like: writes in transactions
			} {
				out := h.run("pgbench", "", args...)
				m := failedRe.FindStringSubmatch(out)
				if m == nil {
					// pgbench 15 prints the line only with failures; check processed count.
					m = []string{"", "0"}
				}
				if m[1] != "0" {
					t.Fatalf("pgbench %v: %s failed transactions\n%s", args, m[1], out)
				}
				tx := txRe.FindStringSubmatch(out)
				want := map[bool]string{true: "2400", false: "400"}[args[0] == "-S"]
				if tx == nil || tx[1] != want {
					t.Fatalf("pgbench %v: processed %v, want %s\n%s", args, tx, want, out)
				}
			}
		})
	}
}
