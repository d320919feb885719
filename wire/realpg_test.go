package wire

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

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

// psqlLogin runs psql -c "select 1" as user on db at port and returns its
// output; err is set when it could not log in.
func psqlLogin(t *testing.T, psql string, port int, user, db, password string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, psql, "-X", "-A", "-t", "-w", "-c", "select 1",
		fmt.Sprintf("host=127.0.0.1 port=%d user=%s dbname=%s sslmode=disable connect_timeout=20", port, user, db))
	cmd.Env = append(os.Environ(), "PGPASSWORD="+password, "PGGSSENCMODE=disable", "HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// pgconnLogin logs in with pgconn and reports the error.
func pgconnLogin(port int, user, db, password string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d sslmode=disable connect_timeout=20", port))
	if err != nil {
		return err
	}
	cfg.User, cfg.Database, cfg.Password = user, db, password
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	return c.Close(ctx)
}

// saslPrepPasswords exercise SASLprep (RFC 4013): mappings, NFKC, and the
// cases where PostgreSQL falls back to the raw bytes.
var saslPrepPasswords = []struct{ name, password string }{
	{"ascii", "plain-ascii"},
	{"ascii control", "a\x07b"},
	{"roman numeral NFKC", "IX-\u2168"},
	{"ligature NFKC", "\ufb01x"},
	{"fullwidth NFKC", "\uff21\uff22c"},
	{"combining NFC", "A\u0308pfel"},
	{"latin1 and euro", "pässwörd€"},
	{"nbsp to space", "a\u00a0b"},
	{"ideographic space", "x\u3000y"},
	{"soft hyphen to nothing", "pa\u00adss"},
	{"zero width joiner to nothing", "pa\u200dss"},
	{"only mapped to nothing", "\u00ad\u034f"},
	{"zero width space", "a\u200bb"},
	{"zero width space and soft hyphen", "\u00ad\u200b"},
	{"bidi mixed: raw", "\u05d0a"},
	{"bidi ok", "\u05d0\u05d1"},
	{"unassigned in 3.2: raw", "pw\U0001f600"},
	{"private use: raw", "pw\ue000"},
	{"prohibited after NFKC", "a\u2028b"},
}

// TestSCRAMSASLprepLikePostgres checks SCRAM verifiers against the ones a
// real PostgreSQL 15 stores for the same passwords (CREATE ROLE ...
// PASSWORD with password_encryption = scram-sha-256): the same salt and
// iterations must give the same keys. Then psql (libpq, which applies
// SASLprep too) and pgconn log in with each password to PostgreSQL and to
// Accept, once with PostgreSQL's stored verifier and once with the
// plaintext password in the configuration: every login must end as it does
// on PostgreSQL.
func TestSCRAMSASLprepLikePostgres(t *testing.T) {
	pg := realPG(t)
	psql := psqlPath(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stored := map[string]Credentials{}
	plain := map[string]Credentials{}
	lookup := func(m map[string]Credentials) func(string) (Credentials, bool) {
		return func(u string) (Credentials, bool) { c, ok := m[u]; return c, ok }
	}
	for i, tc := range saslPrepPasswords {
		user := fmt.Sprintf("saslprep%d", i)
		if err := pg.Exec(ctx, "postgres", fmt.Sprintf("SET password_encryption = 'scram-sha-256'; DROP ROLE IF EXISTS %s; CREATE ROLE %s LOGIN PASSWORD $pw$%s$pw$", user, user, tc.password)); err != nil {
			t.Fatal(err)
		}
		secret, err := pg.QueryValue(ctx, "postgres", fmt.Sprintf("SELECT rolpassword FROM pg_authid WHERE rolname = '%s'", user))
		if err != nil {
			t.Fatal(err)
		}
		stored[user] = Credentials{Method: AuthSCRAM, Password: secret}
		plain[user] = Credentials{Method: AuthSCRAM, Password: tc.password}
	}
	// The maps are complete before the servers start reading them.
	sStored := startTestServer(t, &ServerConfig{Lookup: lookup(stored)})
	sPlain := startTestServer(t, &ServerConfig{Lookup: lookup(plain)})
	for i, tc := range saslPrepPasswords {
		user := fmt.Sprintf("saslprep%d", i)
		secret := stored[user].Password
		t.Run(tc.name, func(t *testing.T) {
			v, ok := parseSCRAMVerifier(secret)
			if !ok {
				t.Fatalf("cannot parse PostgreSQL's secret %q", secret)
			}
			ours, err := computeVerifier(tc.password, v.salt, v.iterations)
			if err != nil {
				t.Fatal(err)
			}
			if ours.String() != secret {
				t.Errorf("verifier of %q:\n got %s\nwant %s (PostgreSQL)", tc.password, ours, secret)
			}
			if out, err := psqlLogin(t, psql, pg.Port, user, "postgres", tc.password); err != nil {
				t.Fatalf("psql to PostgreSQL: %v: %s", err, out)
			}
			for _, s := range []struct {
				name string
				srv  *testServer
			}{{"stored verifier", sStored}, {"plaintext", sPlain}} {
				if out, err := psqlLogin(t, psql, s.srv.addr().Port, user, "postgres", tc.password); err != nil || out != "ok" {
					t.Errorf("psql to Accept (%s): %v: %s (server: %v)", s.name, err, out, s.srv.result().err)
				} else {
					s.srv.result()
				}
				// pgconn normalises with PRECIS, not SASLprep, so it cannot
				// log in with some of these passwords, to PostgreSQL either.
				pgErr := pgconnLogin(pg.Port, user, "postgres", tc.password)
				ourErr := pgconnLogin(s.srv.addr().Port, user, "postgres", tc.password)
				s.srv.result()
				if (pgErr == nil) != (ourErr == nil) || pgCode(pgErr) != pgCode(ourErr) {
					t.Errorf("pgconn to Accept (%s): %v; to PostgreSQL: %v", s.name, ourErr, pgErr)
				}
			}
		})
	}
}

// startupError sends a startup packet with params to addr and returns the
// ErrorResponse that answers it.
func startupError(t *testing.T, addr string, params map[string]string) *pgproto3.ErrorResponse {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := startupMsg(params).Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(b); err != nil {
		t.Fatal(err)
	}
	fe := pgproto3.NewFrontend(conn, conn)
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("no error response: %v", err)
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			return e
		}
	}
}

// TestAuthErrorsLikePostgres compares the error a client gets for unknown
// users, wrong passwords and a missing user name with PostgreSQL 15's:
// SQLSTATE, severity and message must be the same. An unknown user under
// trust is the one difference, on purpose: PostgreSQL says 28000 "role
// does not exist" there, but the proxy knows no method for a user it does
// not know and always answers like a wrong password (28P01), so that roles
// cannot be enumerated.
func TestAuthErrorsLikePostgres(t *testing.T) {
	pg := realPG(t)
	users := map[string]Credentials{
		"known":    {Method: AuthSCRAM, Password: "secret"},
		"knownmd5": {Method: AuthMD5, Password: "secret"},
	}
	s := startTestServer(t, &ServerConfig{Lookup: func(u string) (Credentials, bool) { c, ok := users[u]; return c, ok }})
	cases := []struct {
		name, user, db, password string
		ourDB                    string // database for Accept when not db
	}{
		{"unknown user, scram", "ghost", "postgres", "x", ""},
		{"unknown user, md5", "ghost", "md5db", "x", ""},
		{"unknown user with a quote", `gh"o'st`, "postgres", "x", ""},
		{"unknown user, non-ASCII", "gäst€", "postgres", "x", ""},
		{"wrong password, scram", "known", "postgres", "wrong", ""},
		{"wrong password, md5", "knownmd5", "md5db", "wrong", ""},
		{"empty password, scram", "known", "postgres", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := pgconnLogin(pg.Port, tc.user, tc.db, tc.password)
			got := pgconnLogin(s.addr().Port, tc.user, tc.db, tc.password)
			s.result()
			var we, ge *pgconn.PgError
			if !errors.As(want, &we) || !errors.As(got, &ge) {
				t.Fatalf("PostgreSQL: %v; Accept: %v", want, got)
			}
			if ge.Code != we.Code || ge.Severity != we.Severity || ge.Message != we.Message || ge.Detail != we.Detail {
				t.Errorf("Accept: %s %s %q (detail %q)\nPostgreSQL: %s %s %q (detail %q)", ge.Severity, ge.Code, ge.Message, ge.Detail, we.Severity, we.Code, we.Message, we.Detail)
			}
		})
	}
	t.Run("unknown user, trust", func(t *testing.T) {
		want := pgconnLogin(pg.Port, "ghost", "trustdb", "x")
		got := pgconnLogin(s.addr().Port, "ghost", "trustdb", "x")
		s.result()
		if pgCode(want) != CodeInvalidAuthorization || pgCode(got) != CodeInvalidPassword {
			t.Fatalf("PostgreSQL: %v (want 28000); Accept: %v (want 28P01)", want, got)
		}
	})
	for _, params := range []map[string]string{
		{"database": "postgres"},
		{"user": "", "database": "postgres"},
		{},
		{"user": "known", "replication": `bo"gus`},
	} {
		t.Run(fmt.Sprintf("startup %v", params), func(t *testing.T) {
			want := startupError(t, pg.Addr(), params)
			got := startupError(t, s.addr().String(), params)
			s.result()
			if got.Code != want.Code || got.Severity != want.Severity || got.Message != want.Message || got.Hint != want.Hint {
				t.Errorf("Accept: %s %s %q (hint %q); PostgreSQL: %s %s %q (hint %q)", got.Severity, got.Code, got.Message, got.Hint, want.Severity, want.Code, want.Message, want.Hint)
			}
		})
	}
}

// TestLongNamesTruncatedLikePostgres: user and database names longer than
// NAMEDATALEN-1 (63) bytes are cut as PostgreSQL 15 cuts them (at byte 63,
// even inside a character); its error messages show the names it looked up.
func TestLongNamesTruncatedLikePostgres(t *testing.T) {
	pg := realPG(t)
	s := startTestServer(t, &ServerConfig{Lookup: func(u string) (Credentials, bool) {
		return Credentials{Method: AuthSCRAM, Password: "secret"}, true
	}})
	names := []string{
		strings.Repeat("a", 63),
		strings.Repeat("b", 64),
		strings.Repeat("c", 100),
		"long" + strings.Repeat("é", 40), // 84 bytes, byte 63 is inside a character
		"long" + strings.Repeat("€", 30), // 94 bytes
	}
	for _, name := range names {
		t.Run(fmt.Sprintf("user %d bytes", len(name)), func(t *testing.T) {
			want := pgconnLogin(pg.Port, name, "postgres", "x")
			pgUser, ok := strings.CutPrefix(errMessage(want), "password authentication failed for user \"")
			if !ok {
				t.Fatalf("PostgreSQL: %v", want)
			}
			pgUser = strings.TrimSuffix(pgUser, "\"")
			got := pgconnLogin(s.addr().Port, name, "postgres", "secret")
			r := s.result()
			if got != nil || r.err != nil {
				t.Fatalf("Accept: %v (server %v)", got, r.err)
			}
			if r.st.User != pgUser || r.st.Database != "postgres" {
				t.Errorf("user %q, PostgreSQL uses %q", r.st.User, pgUser)
			}
		})
		t.Run(fmt.Sprintf("database %d bytes", len(name)), func(t *testing.T) {
			want := pgconnLogin(pg.Port, "known", name, "secret")
			pgDB, ok := strings.CutPrefix(errMessage(want), "database \"")
			if !ok {
				t.Fatalf("PostgreSQL: %v", want)
			}
			pgDB = strings.TrimSuffix(pgDB, "\" does not exist")
			got := pgconnLogin(s.addr().Port, "known", name, "secret")
			r := s.result()
			if got != nil || r.err != nil {
				t.Fatalf("Accept: %v (server %v)", got, r.err)
			}
			if r.st.Database != pgDB {
				t.Errorf("database %q, PostgreSQL uses %q", r.st.Database, pgDB)
			}
		})
	}
}

func errMessage(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Message
	}
	return ""
}
