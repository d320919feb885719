package wire

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// psqlPath finds the psql binary; tests skip without it unless CI=true.
func psqlPath(t *testing.T) string {
	t.Helper()
	p := os.Getenv("PSQL")
	if p == "" {
		p = "/usr/bin/psql"
	}
	if _, err := os.Stat(p); err != nil {
		if lp, lerr := exec.LookPath("psql"); lerr == nil {
			return lp
		}
		if os.Getenv("CI") == "true" {
			t.Fatalf("psql not found (%v) and CI=true", err)
		}
		t.Skipf("psql not found: %v", err)
	}
	return p
}

// runPsql runs psql -c against s and returns its output and error.
func runPsql(t *testing.T, psql string, s *testServer, conninfo, password string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, psql, "-X", "-A", "-t", "-w", "-c", "select 1",
		fmt.Sprintf("host=127.0.0.1 port=%d connect_timeout=20 %s", s.addr().Port, conninfo))
	cmd.Env = append(os.Environ(), "PGPASSWORD="+password, "PGSSLROOTCERT=/nonexistent", "PGCONNECT_TIMEOUT=20")
	cmd.Env = append(cmd.Env, "PGGSSENCMODE=disable", "HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func TestAcceptPsql(t *testing.T) {
	psql := psqlPath(t)
	tlsCfg, rootCert := testTLSConfig(t)
	s := startTestServer(t, &ServerConfig{TLSConfig: tlsCfg})
	cases := []struct {
		user, password string
		ok             bool
	}{
		{"trusty", "", true},
		{"md5user", "md5pass", true},
		{"md5user", "nope", false},
		{"md5hashed", "hashedpass", true},
		{"scramuser", "scrampass", true},
		{"scramuser", "nope", false},
		{"scramstored", "storedpass", true},
		{"unicode", "pässwörd€", true},
		{"ghost", "whatever", false},
	}
	for _, sslmode := range []string{"disable", "require", "verify-full sslrootcert=" + rootCert} {
		for _, tc := range cases {
			t.Run(fmt.Sprintf("%s/%s/%s", sslmode[:7], tc.user, tc.password), func(t *testing.T) {
				out, err := runPsql(t, psql, s, fmt.Sprintf("user=%s dbname=app application_name=psqltest sslmode=%s", tc.user, sslmode), tc.password)
				r := s.result()
				if tc.ok {
					if err != nil || out != "ok" {
						t.Fatalf("psql: %v: %s (server: %v)", err, out, r.err)
					}
					if r.err != nil || r.st.User != tc.user || r.st.Database != "app" || r.st.Params["application_name"] != "psqltest" {
						t.Fatalf("startup %+v, %v", r.st, r.err)
					}
					if _, isTLS := r.st.Conn.(*tls.Conn); isTLS != (sslmode != "disable") {
						t.Errorf("TLS = %v with sslmode %s", isTLS, sslmode)
					}
					return
				}
				want := fmt.Sprintf("password authentication failed for user %q", tc.user)
				if err == nil || !strings.Contains(out, want) {
					t.Fatalf("psql: %v: %s; want failure %q", err, out, want)
				}
				if serverCode(r.err) != CodeInvalidPassword {
					t.Fatalf("server: %v", r.err)
				}
			})
		}
	}
}

// TestAcceptPsqlGSSENC lets libpq try GSSAPI encryption when it can; libpq
// only sends a GSSENCRequest when it has Kerberos credentials, so this
// mostly checks that gssencmode=prefer still connects.
func TestAcceptPsqlGSSENC(t *testing.T) {
	psql := psqlPath(t)
	s := startTestServer(t, &ServerConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, psql, "-X", "-A", "-t", "-w", "-c", "select 1",
		fmt.Sprintf("host=127.0.0.1 port=%d user=trusty sslmode=prefer gssencmode=prefer", s.addr().Port))
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if strings.Contains(string(out), "gssencmode") && strings.Contains(string(out), "invalid") {
		t.Skipf("libpq without GSSAPI: %s", out)
	}
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("psql: %v: %s", err, out)
	}
	if r := s.result(); r.err != nil {
		t.Fatal(r.err)
	}
}
