package wire

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgshard/pgshard/topology"
	"github.com/pgshard/pgshard/topology/topotest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(sharedPGRunner{m})
}

// sharedPGRunner runs the tests with a real PostgreSQL 15 shared by the
// tests that compare with it (started on first use, see realPG) and stops
// it before the goroutine-leak check.
type sharedPGRunner struct{ m *testing.M }

func (r sharedPGRunner) Run() int {
	return topotest.Run(r.m, topology.Config{Shards: 1})
}

// Test users. The stored SCRAM verifier is computed by testVerifier, an
// implementation independent of the package's.
var (
	storedVerifier = testVerifier("storedpass", []byte("0123456789abcdef"), 4096)
	testUsers      = map[string]Credentials{
		"trusty":      {Method: AuthTrust},
		"md5user":     {Method: AuthMD5, Password: "md5pass"},
		"md5hashed":   {Method: AuthMD5, Password: "md5" + md5Hex([]byte("hashedpass"), []byte("md5hashed"))},
		"md5scram":    {Method: AuthMD5, Password: storedVerifier}, // md5 upgraded to SCRAM
		"scramuser":   {Method: AuthSCRAM, Password: "scrampass"},
		"scramstored": {Method: AuthSCRAM, Password: storedVerifier},
		"scrammd5":    {Method: AuthSCRAM, Password: "md5" + md5Hex([]byte("x"), []byte("scrammd5"))}, // cannot do SCRAM
		"unicode":     {Method: AuthSCRAM, Password: "pässwörd€"},
		"nopass":      {Method: AuthSCRAM},
		"concurrent":  {Method: AuthSCRAM, Password: "concpass"},
	}
)

func lookupTestUser(user string) (Credentials, bool) {
	c, ok := testUsers[user]
	return c, ok
}

// acceptResult is what Accept returned for one connection of a testServer.
type acceptResult struct {
	st  *Startup
	err error
}

// testServer is a tiny PostgreSQL look-alike built on Accept: after
// WriteReady it answers every simple Query with one row ("ok") and stops at
// Terminate.
type testServer struct {
	t       *testing.T
	ln      net.Listener
	cfg     *ServerConfig
	results chan acceptResult
	wg      sync.WaitGroup
	key     CancelKey
}

func startTestServer(t *testing.T, cfg *ServerConfig) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Lookup == nil {
		cfg.Lookup = lookupTestUser
	}
	s := &testServer{t: t, ln: ln, cfg: cfg, results: make(chan acceptResult, 100), key: CancelKey{ProcessID: 4242, SecretKey: 0xdeadbeef}}
	ctx, cancel := context.WithCancel(context.Background())
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.serve(ctx, conn)
			}()
		}
	}()
	t.Cleanup(func() {
		cancel()
		ln.Close()
		s.wg.Wait()
	})
	return s
}

func (s *testServer) addr() *net.TCPAddr { return s.ln.Addr().(*net.TCPAddr) }

func (s *testServer) serve(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	st, err := Accept(ctx, conn, s.cfg)
	s.results <- acceptResult{st, err}
	if err != nil || st.Cancel != nil {
		return
	}
	c := st.Conn
	params := map[string]string{
		"server_version": "15.0", "server_encoding": "UTF8", "client_encoding": "UTF8",
		"standard_conforming_strings": "on", "integer_datetimes": "on", "DateStyle": "ISO, MDY",
	}
	if err := WriteReady(c, params, s.key); err != nil {
		return
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	for {
		typ, _, err := st.Reader.Next()
		if err != nil {
			return
		}
		var out []byte
		switch typ {
		case 'Q':
			out, _ = (&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("x"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}}}).Encode(out)
			out, _ = (&pgproto3.DataRow{Values: [][]byte{[]byte("ok")}}).Encode(out)
			out, _ = (&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}).Encode(out)
			out, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(out)
		case 'X':
			return
		default:
			out = AppendError(out, Fatalf(CodeFeatureNotSupported, "test server only does simple queries"))
			c.Write(out)
			return
		}
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

// result waits for the next Accept result.
func (s *testServer) result() acceptResult {
	s.t.Helper()
	select {
	case r := <-s.results:
		return r
	case <-time.After(30 * time.Second):
		s.t.Fatal("no Accept result within 30s")
		return acceptResult{}
	}
}

// testCert makes a self-signed certificate for 127.0.0.1 and localhost and
// writes it, PEM-encoded, into dir.
func testCert(t testing.TB, dir string) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "localhost"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := ""
	if dir != "" {
		path = filepath.Join(dir, "root.crt")
		if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, path
}

// rawClient speaks the protocol by hand, for what real clients do not send.
type rawClient struct {
	t    *testing.T
	conn net.Conn
	fe   *pgproto3.Frontend
}

func dialRaw(t *testing.T, s *testServer) *rawClient {
	t.Helper()
	conn, err := net.Dial("tcp", s.addr().String())
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	t.Cleanup(func() { conn.Close() })
	return &rawClient{t: t, conn: conn}
}

func (c *rawClient) write(b []byte) {
	c.t.Helper()
	if _, err := c.conn.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

func (c *rawClient) send(msg pgproto3.FrontendMessage) {
	c.t.Helper()
	b, err := msg.Encode(nil)
	if err != nil {
		c.t.Fatal(err)
	}
	c.write(b)
}

// readByte reads a one-byte answer to an SSL or GSS request.
func (c *rawClient) readByte() byte {
	c.t.Helper()
	if c.fe != nil {
		c.t.Fatal("readByte after messages")
	}
	var b [1]byte
	if _, err := io.ReadFull(c.conn, b[:]); err != nil {
		c.t.Fatalf("read answer byte: %v", err)
	}
	return b[0]
}

func (c *rawClient) receive() pgproto3.BackendMessage {
	c.t.Helper()
	if c.fe == nil {
		c.fe = pgproto3.NewFrontend(c.conn, c.conn)
	}
	msg, err := c.fe.Receive()
	if err != nil {
		c.t.Fatalf("receive: %v", err)
	}
	return msg
}

// expectError reads messages up to an ErrorResponse, checks its SQLSTATE and
// then that the server closes the connection.
func (c *rawClient) expectError(code string) *pgproto3.ErrorResponse {
	c.t.Helper()
	for {
		msg := c.receive()
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			if e.Code != code {
				c.t.Fatalf("got error %s %q, want SQLSTATE %s", e.Code, e.Message, code)
			}
			if e.Severity != "FATAL" {
				c.t.Errorf("error severity %q, want FATAL", e.Severity)
			}
			c.expectClosed()
			return e
		}
		c.t.Logf("skipping %T before the error", msg)
	}
}

// expectClosed checks that the server closed the connection.
func (c *rawClient) expectClosed() {
	c.t.Helper()
	if c.fe != nil {
		if msg, err := c.fe.Receive(); err == nil {
			c.t.Fatalf("got %T, want the connection closed", msg)
		} else if !isClosed(err) {
			c.t.Fatalf("want EOF, got %v", err)
		}
		return
	}
	if n, err := io.Copy(io.Discard, c.conn); (err != nil && !isClosed(err)) || n != 0 {
		c.t.Fatalf("want EOF, got %d bytes, err %v", n, err)
	}
}

// isClosed reports whether err means the peer closed the connection.
func isClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)
}

func startupMsg(params map[string]string) *pgproto3.StartupMessage {
	return &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: params}
}
