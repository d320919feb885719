package router

import (
	"bufio"
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"os"
	"strconv"
	"strings"
	"testing"
)

func TestClassifyGolden(t *testing.T) {
	f, err := os.Open("testdata/classify.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c := NewClassifier(ClassifierConfig{})
	sc := bufio.NewScanner(f)
	n := 0
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		if strings.HasPrefix(text, "#") || strings.TrimSpace(text) == "" {
			continue
		}
		want, sql, ok := strings.Cut(text, "\t")
		if !ok || (want != "read" && want != "write") {
			t.Fatalf("testdata/classify.txt:%d: want \"read|write<TAB>SQL\"", line)
		}
		n++
		got, why := c.Explain(sql)
		if got != (want == "read") {
			t.Errorf("line %d: %q: got read=%v (%s), want %s", line, sql, got, why, want)
		}
		// The cached path agrees, twice.
		for i := 0; i < 2; i++ {
			if r := c.IsRead(sql, Inspect(sql).Shape); r != got {
				t.Errorf("line %d: cached IsRead = %v, Explain = %v", line, r, got)
			}
		}
	}
	if n < 50 {
		t.Fatalf("only %d cases read", n)
	}
}

func TestClassifyConfiguredWriteFunctions(t *testing.T) {
	c := NewClassifier(ClassifierConfig{WriteFunctions: []string{"audit_log", "app_*_mutate"}})
	for sql, want := range map[string]bool{
		"SELECT audit_log('x')":            false,
		"SELECT app_user_mutate(1)":        false,
		"SELECT app_user_read(1)":          true,
		"SELECT myschema.audit_log(1)":     false,
		"SELECT nextval('s')":              false,
		"SELECT * FROM t WHERE id = $1":    true,
		"SELECT length(audit_log_summary)": true,
	} {
		if got, why := c.Explain(sql); got != want {
			t.Errorf("%q: read=%v (%s), want %v", sql, got, why, want)
		}
	}
}

func TestClassifyCacheIsBounded(t *testing.T) {
	c := NewClassifier(ClassifierConfig{CacheSize: 8})
	for i := 0; i < 50; i++ {
		sql := "SELECT c" + strconv.Itoa(i) + " FROM t"
		if !c.IsRead(sql, Inspect(sql).Shape) {
			t.Fatalf("%q not a read", sql)
		}
	}
	if n := c.CacheLen(); n != 8 {
		t.Fatalf("cache holds %d, want 8", n)
	}
}

// BenchmarkClassifyWarm is the hot path of a simple-protocol client: every
// text carries new literals, so only the scan and the cache are paid.
func BenchmarkClassifyWarm(b *testing.B) {
	c := NewClassifier(ClassifierConfig{})
	texts := make([]string, 1024)
	for i := range texts {
		texts[i] = "SELECT abalance FROM pgbench_accounts WHERE aid = " + strconv.Itoa(i*7919)
	}
	c.IsRead(texts[0], Inspect(texts[0]).Shape)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s := texts[i&1023]
		e := Inspect(s)
		if !c.IsRead(s, e.Shape) {
			b.Fatal("not a read")
		}
	}
}

// BenchmarkClassifyCold is a cache miss: a full parse with pg_query.
func BenchmarkClassifyCold(b *testing.B) {
	c := NewClassifier(ClassifierConfig{})
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		c.Explain("SELECT abalance FROM pgbench_accounts WHERE aid = 42")
	}
}

// BenchmarkNormalizePgQuery is the alternative the cache key could have
// used: pg_query's own normalization (it runs PostgreSQL's scanner in C).
// Compare with BenchmarkClassifyWarm, whose key comes from the Go lexer.
func BenchmarkNormalizePgQuery(b *testing.B) {
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := pg_query.Normalize("SELECT abalance FROM pgbench_accounts WHERE aid = 4711"); err != nil {
			b.Fatal(err)
		}
	}
}
