package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReshardingConfig(t *testing.T) {
	base := `
[[users]]
name = "app"
password = "app"
[[shards]]
name = "s0"
primary = "host=a"
`
	load := func(t *testing.T, extra string, env map[string]string) (Config, error) {
		t.Helper()
		p := filepath.Join(t.TempDir(), "c.toml")
		if err := os.WriteFile(p, []byte(base+extra), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := Load(p, func(k string) string { return env[k] })
		if err != nil {
			return c, err
		}
		return c, c.Validate()
	}

	c, err := load(t, "", nil)
	if err != nil || c.Resharding != (Resharding{User: "postgres"}) {
		t.Fatalf("defaults: %+v %v", c.Resharding, err)
	}
	c, err = load(t, "[resharding]\nuser = \"mover\"\npassword = \"pw\"\ndatabase = \"app\"\n", nil)
	if err != nil || c.Resharding != (Resharding{User: "mover", Password: "pw", Database: "app"}) {
		t.Fatalf("file: %+v %v", c.Resharding, err)
	}
	c, err = load(t, "[resharding]\nuser = \"mover\"\n", map[string]string{
		"PGSHARD_RESHARDING_USER": "su", "PGSHARD_RESHARDING_PASSWORD": "secret", "PGSHARD_RESHARDING_DATABASE": "shop"})
	if err != nil || c.Resharding != (Resharding{User: "su", Password: "secret", Database: "shop"}) {
		t.Fatalf("env: %+v %v", c.Resharding, err)
	}
	for extra, want := range map[string]string{
		"[resharding]\nuser = \"\"\n":                                    "resharding.user is empty",
		"[resharding]\ndatabase = \"" + strings.Repeat("d", 64) + "\"\n": "resharding.database",
		"[resharding]\nuser = \"a\\u0000b\"\n":                           "not a PostgreSQL name",
		"[resharding]\nhost = \"x\"\n":                                   "unknown keys: resharding.host",
	} {
		if _, err := load(t, extra, nil); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err %v, want %q", extra, err, want)
		}
	}
}
