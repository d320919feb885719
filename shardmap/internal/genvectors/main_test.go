package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgshard/pgshard/shardmap"
)

// startTestServer starts a throwaway PostgreSQL or skips the test when the
// binaries are missing (failing instead when CI=true).
func startTestServer(t *testing.T) *server {
	t.Helper()
	bin := binDir()
	if _, err := os.Stat(filepath.Join(bin, "postgres")); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL binaries missing in CI: %v", err)
		}
		t.Skipf("PostgreSQL binaries not found in %s (set PGSHARD_PG_BINDIR)", bin)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := startServer(ctx, bin, tlogWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.stop)
	return srv
}

type tlogWriter struct{ t *testing.T }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestCommittedVectorsAreCurrent regenerates the vectors against a live
// server and checks the committed files hold exactly those rows.
func TestCommittedVectorsAreCurrent(t *testing.T) {
	startTestServer(t).stop() // fail or skip early, like the other tests
	out := t.TempDir()
	if err := run(out, binDir(), false); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"hash_vectors_int.tsv", "hash_vectors_text.tsv", "hash_vectors_uuid.tsv"} {
		fresh, err := os.ReadFile(filepath.Join(out, name))
		if err != nil {
			t.Fatal(err)
		}
		committed, err := os.ReadFile(filepath.Join("..", "..", "..", "testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(dropComments(fresh), dropComments(committed)) {
			t.Errorf("testdata/%s differs from what PostgreSQL produces now; rerun go run ./shardmap/internal/genvectors", name)
		}
	}
}

func dropComments(b []byte) []byte {
	var out []byte
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		if !bytes.HasPrefix(line, []byte("#")) {
			out = append(out, line...)
		}
	}
	return out
}

// TestLiveHashesMatch compares the Go port with a live server on keys the
// committed vectors do not contain (another seed).
func TestLiveHashesMatch(t *testing.T) {
	srv := startTestServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// A fresh seed each run widens coverage over time; it is logged so a
	// failure can be replayed.
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 7))

	ints, err := queryInts(ctx, srv, intKeys(r, 4000))
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range ints {
		v, _ := strconv.ParseInt(row[0], 10, 64)
		if got := strconv.FormatInt(shardmap.HashInt64(v), 10); got != row[1] {
			t.Errorf("HashInt64(%d) = %s, PostgreSQL %s", v, got, row[1])
		}
		for _, other := range row[2:] {
			if other != "-" && other != row[1] {
				t.Errorf("PostgreSQL hashes %d differently as int4/int2 (%s) and int8 (%s)", v, other, row[1])
			}
		}
	}
	texts, err := queryTexts(ctx, srv, textKeys(r, 2000))
	if err != nil {
		t.Fatal(err)
	}
	for i, row := range texts {
		b, err := hex.DecodeString(row[0])
		if err != nil {
			t.Fatal(err)
		}
		if got := strconv.FormatInt(shardmap.HashText(string(b)), 10); got != row[1] {
			t.Errorf("row %d: HashText(%q) = %s, PostgreSQL %s", i, b, got, row[1])
		}
	}
	uuids, err := queryUUIDs(ctx, srv, uuidKeys(r, 2000))
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range uuids {
		h, err := shardmap.HashKey(shardmap.KeyUUID, row[0])
		if err != nil {
			t.Fatal(err)
		}
		if got := strconv.FormatInt(h, 10); got != row[1] {
			t.Errorf("HashUUID(%s) = %s, PostgreSQL %s", row[0], got, row[1])
		}
	}
	t.Logf("live: %d int, %d text, %d uuid keys match", len(ints), len(texts), len(uuids))
}
