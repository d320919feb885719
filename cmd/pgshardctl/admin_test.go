package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pgshard/pgshard/admin"
	"github.com/pgshard/pgshard/shardmap"
)

// adminServer serves a one-node cluster's admin API in-process.
func adminServer(t *testing.T) string {
	t.Helper()
	srv, err := admin.New(admin.Config{Store: openStore(t), Token: "tok"})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	srv.Register(mux)
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	return ts.URL
}

// openStore opens a one-node cluster's store, leading.
func openStore(t *testing.T) *shardmap.Store {
	t.Helper()
	st, err := shardmap.NewStore(shardmap.StoreConfig{NodeID: "n0", RaftAddr: "127.0.0.1:0", DataDir: t.TempDir(), Bootstrap: true,
		Logger:           slog.New(slog.NewTextHandler(io.Discard, nil)),
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, LeaderLeaseTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close(context.Background()) })
	deadline := time.Now().Add(10 * time.Second)
	for !st.IsLeader() {
		if time.Now().After(deadline) {
			t.Fatal("no leader")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return st
}

// ctlRun runs pgshardctl in-process and returns exit code, stdout, stderr.
func ctlRun(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	stdout = &out
	oldStderr := os.Stderr
	r, w, _ := os.Pipe()
	os.Stderr = w
	globals.adminURL, globals.token, globals.json = "", "", false
	clear(globals.set)
	code := run(args, w)
	w.Close()
	os.Stderr = oldStderr
	io.Copy(&errb, r)
	stdout = os.Stdout
	return code, out.String(), errb.String()
}

func TestAdminCommands(t *testing.T) {
	url := adminServer(t)
	t.Setenv("PGSHARD_ADMIN_URL", url)
	t.Setenv("PGSHARD_ADMIN_TOKEN", "tok")

	must := func(want string, args ...string) string {
		t.Helper()
		code, out, errs := ctlRun(t, args...)
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("pgshardctl %s: exit %d, want output containing %q\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, want, out, errs)
		}
		return out
	}
	fails := func(wantCode int, wantErr string, args ...string) {
		t.Helper()
		code, out, errs := ctlRun(t, args...)
		if code != wantCode || !strings.Contains(errs, wantErr) {
			t.Errorf("pgshardctl %s: exit %d (want %d), stderr %q (want %q), stdout %q", strings.Join(args, " "), code, wantCode, errs, wantErr, out)
		}
	}

	must("no shards", "shards", "list")
	fails(1, "add a shard first", "map", "locate", "42")
	must("placed on the ring: it owns 100.00%", "shards", "add", "s0", "--primary", "host=a port=1")
	must("placed on the ring: it owns 50.00%", "shards", "add", "s1", "--primary", "host=b port=1", "--replica", "host=c port=1", "--place")
	must("registered as joining", "shards", "add", "spare", "--primary", "host=d port=1")
	out := must("s1", "shards", "list")
	for _, want := range []string{"NAME", "s0     active   50.00%", "host=c port=1", "spare  joining  0.00%"} {
		if !strings.Contains(out, want) {
			t.Errorf("shards list lacks %q:\n%s", want, out)
		}
	}
	fails(1, "shard already", "shards", "add", "s1", "--primary", "x")
	fails(1, "reshard job", "shards", "remove", "s1")
	must("removed", "shards", "remove", "spare")
	must("primary and 0 replica(s) set", "shards", "set-endpoints", "s1", "--primary", "host=e port=1")
	fails(2, "--primary DSN is required", "shards", "add", "x")
	fails(2, "want NAME", "shards", "remove")

	must("table orders defined", "tables", "add", "orders")
	must("table users defined", "tables", "add", "users", "--key-column", "id", "--key-type", "uuid")
	must("table countries defined", "tables", "add", "countries", "--reference")
	fails(2, "no shard key", "tables", "add", "x", "--reference", "--key-type", "int")
	out = must("orders", "tables", "list")
	for _, want := range []string{"countries  reference  -", "orders     sharded    user_id", "users      sharded    id          uuid"} {
		if !strings.Contains(out, want) {
			t.Errorf("tables list lacks %q:\n%s", want, out)
		}
	}
	must("table countries removed", "tables", "remove", "countries")
	fails(1, "unknown table", "tables", "remove", "countries")

	// locate: human and JSON, flags before and after the key, negative keys.
	out = must("hash   "+itoa(shardmap.HashInt64(42)), "map", "locate", "42")
	if !strings.Contains(out, "SELECT hashint8extended(42, 0)") || !strings.Contains(out, "shard  s") {
		t.Errorf("locate output:\n%s", out)
	}
	out = must(`"hash": `+itoa(shardmap.HashInt64(-5)), "--json", "map", "locate", "-5")
	var loc admin.Location
	if err := json.Unmarshal([]byte(out), &loc); err != nil || loc.Key != "-5" {
		t.Errorf("locate --json: %v %+v", err, loc)
	}
	must(`"hash": `+itoa(shardmap.HashText("a'b")), "map", "locate", "--type", "text", "a'b", "--json")
	must("hashtextextended('a''b', 0)", "map", "locate", "a'b", "--type", "text")
	fails(1, "invalid shard key", "map", "locate", "x")

	out = must("map version", "map", "show")
	for _, want := range []string{"ring: 32 tokens", "START", "orders", "s0"} {
		if !strings.Contains(out, want) {
			t.Errorf("map show lacks %q:\n%s", want, out)
		}
	}
	out = must(`"ownership"`, "map", "show", "--json")
	var mv admin.MapView
	if err := json.Unmarshal([]byte(out), &mv); err != nil {
		t.Fatal(err)
	}
	if m, err := shardmap.DecodeMap(mv.Map); err != nil || m.Ring().Len() != 32 || mv.Ownership["s1"] != 0.5 {
		t.Errorf("map show --json: %v %+v", err, mv.Ownership)
	}

	out = must("leader   n0", "cluster", "status")
	if !strings.Contains(out, "n0  voter") {
		t.Errorf("cluster status:\n%s", out)
	}
	fails(1, "unknown Raft server", "cluster", "leave", "nope")
	must("n9 (127.0.0.1:1) is a nonvoter", "cluster", "join", "n9", "127.0.0.1:1", "--nonvoter", "--node-admin-url", "http://127.0.0.1:2")
	out = must("n9", "cluster", "status")
	if !strings.Contains(out, "n9  nonvoter  127.0.0.1:1") || !strings.Contains(out, "http://127.0.0.1:2") {
		t.Errorf("cluster status after join:\n%s", out)
	}
	must("n9 removed from the cluster", "cluster", "leave", "n9")
	fails(2, "want NODE_ID RAFT_ADDR", "cluster", "join", "n9")

	// Token and URL errors say what to do, with their exit codes.
	fails(3, "--token or PGSHARD_ADMIN_TOKEN", "--token", "wrong", "shards", "list")
	fails(3, "--token or PGSHARD_ADMIN_TOKEN", "shards", "list", "--token=wrong")
	fails(1, "is pgshard running there", "--admin-url", "http://127.0.0.1:1", "shards", "list")
	fails(2, "unknown subcommand", "shards", "frobnicate")
	fails(2, "unknown global flag", "--bogus", "shards", "list")
}

func itoa(v int64) string {
	b, _ := json.Marshal(v)
	return string(b)
}
