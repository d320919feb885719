package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func write(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pgshard.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const minimal = `
listen = "127.0.0.1:7000"
[pool]
size = 7
wait_timeout = "250ms"
[routing]
max_lag = "2s"
write_functions = ["audit_*"]
[[users]]
name = "app"
password = "secret"
[[shards]]
name = "s0"
primary = "host=127.0.0.1 port=5432"
replicas = ["host=127.0.0.1 port=5433"]
`

func TestLoadFileThenEnvironment(t *testing.T) {
	env := map[string]string{"PGSHARD_POOL_SIZE": "9", "PGSHARD_POOL_MODE": "session"}
	c, err := Load(write(t, minimal), func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Listen != "127.0.0.1:7000" || c.Pool.Size != 9 || c.Pool.Mode != PoolSession {
		t.Fatalf("got listen=%s size=%d mode=%s", c.Listen, c.Pool.Size, c.Pool.Mode)
	}
	if c.Pool.WaitTimeout.Duration != 250*time.Millisecond || c.Routing.MaxLag.Duration != 2*time.Second {
		t.Fatalf("durations: %v %v", c.Pool.WaitTimeout, c.Routing.MaxLag)
	}
	if c.AdminListen != "127.0.0.1:6480" || !c.Routing.ReadWriteSplit {
		t.Fatal("defaults not kept under the file")
	}
	if u, p, db := c.MonitorLogin(); u != "app" || p != "secret" || db != "postgres" {
		t.Fatalf("monitor login %s %s %s", u, p, db)
	}
}

func TestValidateReportsEverything(t *testing.T) {
	c, err := Load(write(t, `
log_level = "loud"
[pool]
mode = "statement"
size = 0
[[users]]
name = "a"
auth = "kerberos"
[[users]]
name = "a"
password = "SCRAM-SHA-256$4096:abc$def:ghi"
`), func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	err = c.Validate()
	if err == nil {
		t.Fatal("bad configuration accepted")
	}
	for _, want := range []string{"pool.mode", "pool.size", "log_level", "kerberos", "appears twice", "backend_password", "no [[shards]]"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
}

func TestUnknownKeysAreAnError(t *testing.T) {
	_, err := Load(write(t, minimal+"\nlisten_adress = \"x\"\n"), nil)
	if err == nil || !strings.Contains(err.Error(), "listen_adress") {
		t.Fatalf("unknown key: %v", err)
	}
	_, err = Load(write(t, "listen = "), nil)
	if err == nil {
		t.Fatal("broken TOML accepted")
	}
}

func TestGoMaxProcs(t *testing.T) {
	c := Default()
	if c.GoMaxProcs(2) != 1 || c.GoMaxProcs(1) != 1 || c.GoMaxProcs(16) != 8 {
		t.Fatal("default procs is not half the cores")
	}
	c.Procs = 3
	if c.GoMaxProcs(16) != 3 {
		t.Fatal("procs ignored")
	}
}
