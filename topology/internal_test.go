package topology

import (
	"context"
	"errors"
	"net"
	"os"
	"strconv"
	"testing"
	"time"
)

// TestPortTakenRetry: when the chosen port is taken by another process
// before postgres binds it, a first start moves to another port, while a
// restart (which must keep its address) fails with errPortInUse.
func TestPortTakenRetry(t *testing.T) {
	if err := Available(""); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	topo, err := Start(ctx, Config{Shards: 1, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer topo.Close()
	p := topo.Shards[0].Primary
	if err := p.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	old := p.Port
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(old))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	t0 := time.Now()
	if err := p.Start(ctx); !errors.Is(err, errPortInUse) {
		t.Fatalf("restart on a taken port: %v, want errPortInUse", err)
	}
	t.Logf("failed start took %s", time.Since(t0))
	if err := p.start(ctx, true); err != nil {
		t.Fatal(err)
	}
	if p.Port == old {
		t.Fatal("port did not change")
	}
	if v, err := p.QueryValue(ctx, "postgres", "SHOW port"); err != nil || v != strconv.Itoa(p.Port) {
		t.Fatalf("SHOW port = %q, %v; want %d", v, err, p.Port)
	}
}
