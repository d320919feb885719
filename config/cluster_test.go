package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestClusterConfig(t *testing.T) {
	base := `
admin_token = "t"
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
	if err != nil || c.Cluster.Enabled() || c.Cluster.RaftListen != "127.0.0.1:6490" || c.Cluster.Suffrage != "voter" {
		t.Fatalf("defaults: %+v %v", c.Cluster, err)
	}
	c, err = load(t, "[cluster]\nnode_id = \"n1\"\ndata_dir = \"/d\"\njoin = [\"http://h:6480\"]\nsuffrage = \"nonvoter\"\nheartbeat_timeout = \"300ms\"\n", nil)
	if err != nil || !c.Cluster.Enabled() || c.Cluster.NodeID != "n1" || c.Cluster.Join[0] != "http://h:6480" ||
		c.Cluster.Suffrage != "nonvoter" || c.Cluster.HeartbeatTimeout.Milliseconds() != 300 {
		t.Fatalf("file: %+v %v", c.Cluster, err)
	}
	c, err = load(t, "", map[string]string{"PGSHARD_DATA_DIR": "/d", "PGSHARD_BOOTSTRAP": "true", "PGSHARD_NODE_ID": "n0",
		"PGSHARD_RAFT_LISTEN": "10.0.0.1:7000", "PGSHARD_CLUSTER_ADMIN_URL": "http://10.0.0.1:6480"})
	if err != nil || !c.Cluster.Bootstrap || c.Cluster.RaftListen != "10.0.0.1:7000" || c.Cluster.AdminURL != "http://10.0.0.1:6480" {
		t.Fatalf("env: %+v %v", c.Cluster, err)
	}
	c, err = load(t, "", map[string]string{"PGSHARD_DATA_DIR": "/d", "PGSHARD_JOIN": "http://a:1, http://b:2"})
	if err != nil || len(c.Cluster.Join) != 2 || c.Cluster.Join[1] != "http://b:2" {
		t.Fatalf("env join: %+v %v", c.Cluster, err)
	}

	for extra, want := range map[string]string{
		"[cluster]\nbootstrap = true\n":                                             "need cluster.data_dir",
		"[cluster]\ndata_dir = \"/d\"\nbootstrap = true\njoin = [\"http://a:1\"]\n": "exclude each other",
		"[cluster]\ndata_dir = \"/d\"\nraft_listen = \"0.0.0.0:6490\"\n":            "concrete host",
		"[cluster]\ndata_dir = \"/d\"\nraft_listen = \"127.0.0.1:0\"\n":             "port 0",
		"[cluster]\ndata_dir = \"/d\"\nraft_listen = \"nope\"\n":                    "want host:port",
		"[cluster]\ndata_dir = \"/d\"\nsuffrage = \"maybe\"\n":                      "voter or nonvoter",
		"[cluster]\ndata_dir = \"/d\"\njoin = [\"127.0.0.1:6480\"]\n":               "admin URL",
		"[cluster]\ndata_dir = \"/d\"\nadmin_url = \"pgshard0:6480\"\n":             "cluster.admin_url",
		"[cluster]\ndata_dir = \"/d\"\nelection_timeout = \"-1s\"\n":                "negative",
	} {
		if _, err := load(t, extra, nil); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err %v, want %q", extra, err, want)
		}
	}
}

func TestClusterWildcardAdminListenNeedsAdminURL(t *testing.T) {
	c := Default()
	c.Users = []User{{Name: "app", Password: "app"}}
	c.Shards = []Shard{{Name: "s0", Primary: "host=a"}}
	c.AdminToken = "t"
	c.AdminListen = "0.0.0.0:6480"
	c.Cluster.DataDir = "/d"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "set cluster.admin_url") {
		t.Errorf("wildcard admin_listen in a cluster without admin_url: %v", err)
	}
	c.Cluster.AdminURL = "http://pgshard0:6480"
	if err := c.Validate(); err != nil {
		t.Errorf("with admin_url: %v", err)
	}
}

func TestAdminListenNeedsTokenOffLoopback(t *testing.T) {
	c := Default()
	c.Users = []User{{Name: "app", Password: "app"}}
	c.Shards = []Shard{{Name: "s0", Primary: "host=a"}}
	c.AdminListen = "0.0.0.0:6480"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "set admin_token") {
		t.Errorf("wildcard admin address without token: %v", err)
	}
	c.AdminListen = "localhost:6480"
	if err := c.Validate(); err != nil {
		t.Errorf("loopback without token: %v", err)
	}
}
