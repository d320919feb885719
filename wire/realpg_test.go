package wire

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pgshard/pgshard/topology"
	"github.com/pgshard/pgshard/topology/topotest"
)

// Tests in this file compare Accept with a real PostgreSQL 15: the same
// bytes are sent to both and the answers compared.

// realPGHBA makes the method depend on the database: trustdb trusts, md5db
// asks for md5, everything else for SCRAM (the superuser is trusted).
const realPGHBA = `# written by wire's tests
host    all          postgres  127.0.0.1/32   trust
host    trustdb      all       127.0.0.1/32   trust
host    md5db        all       127.0.0.1/32   md5
host    all          all       127.0.0.1/32   scram-sha-256
`

var realPGSetup struct {
	once sync.Once
	err  error
}

// realPG returns the shared PostgreSQL 15 server, set up for these tests:
// realPGHBA, databases trustdb and md5db, and a role "known" with the
// password "secret" (SCRAM secret).
func realPG(t *testing.T) *topology.Server {
	t.Helper()
	pg := topotest.Shared(t).Shards[0].Primary
	realPGSetup.once.Do(func() {
		// The data directory belongs to the postgres OS user; the tests run
		// as root (as CI does) and may write it.
		if err := os.WriteFile(filepath.Join(pg.DataDir, "pg_hba.conf"), []byte(realPGHBA), 0o600); err != nil {
			realPGSetup.err = err
			return
		}
		if err := pg.Reload(); err != nil {
			realPGSetup.err = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, sql := range []string{
			"CREATE DATABASE trustdb", "CREATE DATABASE md5db",
			"SET password_encryption = 'scram-sha-256'; CREATE ROLE known LOGIN PASSWORD 'secret'",
			"SET password_encryption = 'md5'; CREATE ROLE knownmd5 LOGIN PASSWORD 'secret'",
		} {
			if err := pg.Exec(ctx, "postgres", sql); err != nil {
				realPGSetup.err = err
				return
			}
		}
		time.Sleep(200 * time.Millisecond) // let the reload reach the postmaster
	})
	if realPGSetup.err != nil {
		if errors.Is(realPGSetup.err, os.ErrPermission) && !topotest.InCI() {
			t.Skipf("cannot configure the shared PostgreSQL: %v", realPGSetup.err)
		}
		t.Fatalf("set up the shared PostgreSQL: %v", realPGSetup.err)
	}
	return pg
}

// rawExchange dials addr, writes each of sends in turn (after the first,
// only when the server answered the previous one with a byte), half-closes
// the connection and returns everything the server sent until it closed.
func rawExchange(t *testing.T, addr string, sends ...[]byte) []byte {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	var got []byte
	for i, b := range sends {
		if _, err := conn.Write(b); err != nil {
			t.Fatalf("write: %v", err)
		}
		if i < len(sends)-1 {
			var one [1]byte
			if _, err := io.ReadFull(conn, one[:]); err != nil {
				t.Fatalf("read answer: %v", err)
			}
			got = append(got, one[0])
		}
	}
	conn.(*net.TCPConn).CloseWrite()
	rest, err := io.ReadAll(conn)
	if err != nil && !isClosed(err) {
		t.Fatalf("read: %v", err)
	}
	return append(got, rest...)
}

var (
	sslRequestBytes = []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}
	terminateBytes  = []byte{'X', 0, 0, 0, 4}
)

// TestAcceptLeaveBeforeStartupLikePostgres: a client that closes, or sends
// Terminate, before its startup packet is let go without a word, as
// PostgreSQL does (it only logs "incomplete startup packet" or "invalid
// length of startup packet").
func TestAcceptLeaveBeforeStartupLikePostgres(t *testing.T) {
	pg := realPG(t)
	s := startTestServer(t, &ServerConfig{})
	cases := []struct {
		name  string
		sends [][]byte
	}{
		{"close", [][]byte{{}}},
		{"terminate", [][]byte{terminateBytes}},
		{"terminate after SSLRequest", [][]byte{sslRequestBytes, terminateBytes}},
		{"partial length", [][]byte{{0, 0}}},
		{"partial packet", [][]byte{{0, 0, 0, 20, 0, 3}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := rawExchange(t, pg.Addr(), tc.sends...)
			got := rawExchange(t, s.addr().String(), tc.sends...)
			if string(got) != string(want) {
				t.Fatalf("pgshard sent %q, PostgreSQL %q", got, want)
			}
			r := s.result()
			if r.err == nil || serverCode(r.err) != "" {
				t.Fatalf("Accept: %v (want an error for the log, with nothing sent)", r.err)
			}
			t.Logf("PostgreSQL sent %q; Accept: %v", want, r.err)
		})
	}
}
