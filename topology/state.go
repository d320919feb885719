package topology

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// stateFile is the name of the file in Dir that records the topology.
const stateFile = "topology.json"

type stateJSON struct {
	Version int         `json:"version"`
	BinDir  string      `json:"bin_dir"`
	Shards  []shardJSON `json:"shards"`
	Spares  []shardJSON `json:"spares,omitempty"`
}

type shardJSON struct {
	Name     string       `json:"name"`
	Primary  serverJSON   `json:"primary"`
	Replicas []serverJSON `json:"replicas,omitempty"`
}

type serverJSON struct {
	Name    string            `json:"name"`
	Port    int               `json:"port"`
	Dir     string            `json:"dir"`
	PID     int               `json:"pid"`
	Conf    map[string]string `json:"conf,omitempty"`
	Primary bool              `json:"primary"`
}

// writeState records the servers, ports and PIDs in Dir/topology.json.
func (t *Topology) writeState() error {
	st := stateJSON{Version: 1, BinDir: t.bin}
	enc := func(sh *Shard) shardJSON {
		one := func(s *Server) serverJSON {
			s.mu.Lock()
			conf := map[string]string{}
			for k, v := range s.conf {
				conf[k] = v
			}
			s.mu.Unlock()
			return serverJSON{Name: s.Name, Port: s.Port, Dir: s.Dir, PID: s.PID(), Conf: conf, Primary: s.Primary}
		}
		j := shardJSON{Name: sh.Name, Primary: one(sh.Primary)}
		for _, r := range sh.Replicas {
			j.Replicas = append(j.Replicas, one(r))
		}
		return j
	}
	for _, sh := range t.Shards {
		st.Shards = append(st.Shards, enc(sh))
	}
	for _, sh := range t.Spares {
		st.Spares = append(st.Spares, enc(sh))
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("topology: encode state: %w", err)
	}
	path := filepath.Join(t.Dir, stateFile)
	if err := os.WriteFile(path+".tmp", append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("topology: write state: %w", err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return fmt.Errorf("topology: write state: %w", err)
	}
	return nil
}

// Open loads the topology recorded in dir (by Start) without starting
// anything; running servers are adopted so Stop, Kill, Start and Close work
// on them. Close on the result stops them (unless Detach is called).
// It returns an error wrapping os.ErrNotExist when dir holds no topology.
func Open(dir string) (*Topology, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("topology: open %s: %w", dir, err)
	}
	b, err := os.ReadFile(filepath.Join(abs, stateFile))
	if err != nil {
		return nil, fmt.Errorf("topology: open %s: %w", dir, err)
	}
	var st stateJSON
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("topology: open %s: decode state: %w", dir, err)
	}
	run, err := lookupRunAs()
	if err != nil {
		return nil, err
	}
	t := &Topology{Dir: abs, bin: st.BinDir, run: run, logf: func(string, ...any) {}, keep: true}
	dec := func(j shardJSON, spare bool) *Shard {
		one := func(sj serverJSON) *Server {
			s := &Server{
				Name: sj.Name, Shard: j.Name, Host: "127.0.0.1", Port: sj.Port,
				Dir: sj.Dir, DataDir: filepath.Join(sj.Dir, "data"), LogFile: filepath.Join(sj.Dir, "postgres.log"),
				Primary: sj.Primary, bin: st.BinDir, run: run, logf: t.logf, conf: sj.Conf, keep: true,
			}
			// postmaster.pid is the truth; the recorded PID is a fallback
			// (a killed server leaves a stale postmaster.pid).
			for _, pid := range []int{readPostmasterPID(s.DataDir), sj.PID} {
				if procAlive(pid) && isPostgres(pid) {
					s.proc = &process{pid: pid}
					break
				}
			}
			return s
		}
		sh := &Shard{Name: j.Name, Spare: spare, Primary: one(j.Primary)}
		for _, r := range j.Replicas {
			sh.Replicas = append(sh.Replicas, one(r))
		}
		return sh
	}
	for _, j := range st.Shards {
		t.Shards = append(t.Shards, dec(j, false))
	}
	for _, j := range st.Spares {
		t.Spares = append(t.Spares, dec(j, true))
	}
	return t, nil
}

// Running reports whether dir holds a topology with at least one live server.
func Running(dir string) (bool, error) {
	t, err := Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	for _, s := range t.Servers() {
		if s.Running() {
			return true, nil
		}
	}
	return false, nil
}

// StopDir stops every server recorded in dir (replicas first) and removes
// the state file. A missing state file or already-dead servers are not
// errors.
func StopDir(dir string) error {
	t, err := Open(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return t.Close()
}
