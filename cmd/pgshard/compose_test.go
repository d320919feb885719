package main_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/pgshard/pgshard/config"
	"github.com/pgshard/pgshard/topology/topotest"
)

// TestDockerCompose validates docker-compose.yml with docker-compose (no
// engine needed) and loads each pgshard node's configuration from it with
// pgshard's own loader, so the file stays in step with the config format.
func TestDockerCompose(t *testing.T) {
	bin, err := exec.LookPath("docker-compose")
	if err != nil {
		if topotest.InCI() {
			t.Fatal("docker-compose not found (scripts/install-deps.sh installs Debian's docker-compose)")
		}
		t.Skip("docker-compose not installed")
	}
	file, err := filepath.Abs("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	compose := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, append([]string{"-f", file}, args...)...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")} // no PGSHARD_ADMIN_TOKEN from outside
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("docker-compose %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	if out := compose("config", "-q"); strings.TrimSpace(out) != "" {
		t.Errorf("docker-compose config -q printed:\n%s", out)
	}
	services := strings.Fields(compose("config", "--services"))
	for _, want := range []string{"pgshard0", "pgshard1", "pgshard2", "shard0-primary", "shard0-replica", "shard1-primary", "shard1-replica"} {
		if !slices.Contains(services, want) {
			t.Errorf("service %s missing (have %v)", want, services)
		}
	}

	// The shared TOML between its markers.
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var toml []string
	in := false
	for _, line := range strings.Split(string(raw), "\n") {
		switch strings.TrimSpace(line) {
		case "# >>> pgshard.toml":
			in = true
			continue
		case "# <<< pgshard.toml":
			in = false
		}
		if in {
			toml = append(toml, strings.TrimPrefix(line, "  "))
		}
	}
	if len(toml) == 0 {
		t.Fatal("no pgshard.toml block in docker-compose.yml")
	}
	conf := filepath.Join(t.TempDir(), "pgshard.toml")
	if err := os.WriteFile(conf, []byte(strings.Join(toml, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}

	// Each node's PGSHARD_* variables, as docker-compose resolves them.
	envs := map[string]map[string]string{}
	service := ""
	svcLine := regexp.MustCompile(`^  ([a-z0-9-]+):$`)
	envLine := regexp.MustCompile(`^      (PGSHARD_[A-Z_]+): (.*)$`)
	sc := bufio.NewScanner(strings.NewReader(compose("config")))
	for sc.Scan() {
		if m := svcLine.FindStringSubmatch(sc.Text()); m != nil {
			service = m[1]
			envs[service] = map[string]string{}
		} else if m := envLine.FindStringSubmatch(sc.Text()); m != nil && service != "" && m[1] != "PGSHARD_CONFIG_TOML" {
			v := m[2]
			if u, err := strconv.Unquote(v); err == nil {
				v = u
			} else if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
				v = v[1 : len(v)-1]
			}
			envs[service][m[1]] = v
		}
	}
	for i, name := range []string{"pgshard0", "pgshard1", "pgshard2"} {
		env := envs[name]
		cfg, err := config.Load(conf, func(k string) string { return env[k] })
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := cfg.Validate(); err != nil {
			t.Errorf("%s: configuration invalid: %v", name, err)
			continue
		}
		cl := cfg.Cluster
		if cl.NodeID != "node"+strconv.Itoa(i) || cl.RaftListen != name+":6490" || cl.AdminURL != "http://"+name+":6480" ||
			cl.Bootstrap != (i == 0) || (i > 0 && !slices.Equal(cl.Join, []string{"http://pgshard0:6480"})) || cfg.AdminToken == "" {
			t.Errorf("%s: cluster settings %+v, token %q", name, cl, cfg.AdminToken)
		}
		if len(cfg.Shards) != 2 {
			t.Fatalf("%s: %d shards", name, len(cfg.Shards))
		}
		for _, sh := range cfg.Shards {
			for _, dsn := range append([]string{sh.Primary}, sh.Replicas...) {
				host := regexp.MustCompile(`host=([a-z0-9-]+)`).FindStringSubmatch(dsn)
				if host == nil || !slices.Contains(services, host[1]) {
					t.Errorf("%s: shard %s DSN %q names no service", name, sh.Name, dsn)
				}
			}
			if len(sh.Replicas) != 1 {
				t.Errorf("%s: shard %s has %d replicas, want 1", name, sh.Name, len(sh.Replicas))
			}
		}
	}
}
