package wire

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

func testTLSConfig(t *testing.T) (*tls.Config, string) {
	t.Helper()
	cert, path := testCert(t, t.TempDir())
	return &tls.Config{Certificates: []tls.Certificate{cert}}, path
}

// connect runs a real pgconn client and one query through s.
func connect(t *testing.T, s *testServer, connStr string, configure ...func(*pgconn.Config)) (*pgconn.PgConn, error) {
	t.Helper()
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d connect_timeout=20 ", s.addr().Port) + connStr)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range configure {
		f(cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	res, err := conn.Exec(ctx, "select 1").ReadAll()
	if err != nil {
		t.Fatalf("query: %v", err)
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != "ok" {
		t.Fatalf("query result %+v", res)
	}
	return conn, nil
}

func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// serverCode is the SQLSTATE of the error Accept returned.
func serverCode(err error) string {
	var we *Error
	if errors.As(err, &we) {
		return we.Code
	}
	var pe *ProtocolError
	if errors.As(err, &pe) {
		if pe.Oversized {
			return CodeProgramLimitExceeded
		}
		return CodeProtocolViolation
	}
	return ""
}

func TestAcceptPgconn(t *testing.T) {
	tlsCfg, rootCert := testTLSConfig(t)
	s := startTestServer(t, &ServerConfig{TLSConfig: tlsCfg})
	cases := []struct {
		user, password, wantCode string
	}{
		{"trusty", "", ""},
		{"trusty", "anything", ""},
		{"md5user", "md5pass", ""},
		{"md5user", "wrong", CodeInvalidPassword},
		{"md5hashed", "hashedpass", ""},
		{"md5hashed", "md5pass", CodeInvalidPassword},
		{"md5scram", "storedpass", ""},
		{"scramuser", "scrampass", ""},
		{"scramuser", "wrong", CodeInvalidPassword},
		{"scramuser", "", CodeInvalidPassword},
		{"scramstored", "storedpass", ""},
		{"scramstored", "wrong", CodeInvalidPassword},
		{"scrammd5", "x", CodeInvalidPassword},
		{"nopass", "", CodeInvalidPassword},
		{"unicode", "pässwörd€", ""},
		{"ghost", "whatever", CodeInvalidPassword},
	}
	for _, sslmode := range []string{"disable", "require", "verify-full sslrootcert=" + rootCert} {
		for _, tc := range cases {
			t.Run(fmt.Sprintf("%s/%s/%s", sslmode[:7], tc.user, tc.password), func(t *testing.T) {
				connStr := fmt.Sprintf("user=%s dbname=db1 application_name=wiretest sslmode=%s", tc.user, sslmode)
				_, err := connect(t, s, connStr, func(c *pgconn.Config) { c.Password = tc.password })
				r := s.result()
				if tc.wantCode == "" {
					if err != nil {
						t.Fatalf("connect: %v (server: %v)", err, r.err)
					}
					if r.err != nil {
						t.Fatalf("server: %v", r.err)
					}
					if r.st.User != tc.user || r.st.Database != "db1" || r.st.Params["application_name"] != "wiretest" {
						t.Errorf("startup %+v", r.st)
					}
					_, isTLS := r.st.Conn.(*tls.Conn)
					if isTLS != (sslmode != "disable") {
						t.Errorf("TLS = %v with sslmode %s", isTLS, sslmode)
					}
					return
				}
				if got := pgCode(err); got != tc.wantCode {
					t.Fatalf("client error %v (SQLSTATE %q), want %s", err, got, tc.wantCode)
				}
				if got := serverCode(r.err); got != tc.wantCode {
					t.Fatalf("server error %v, want SQLSTATE %s", r.err, tc.wantCode)
				}
				var pe *pgconn.PgError
				errors.As(err, &pe)
				if want := fmt.Sprintf("password authentication failed for user %q", tc.user); pe.Message != want || pe.Severity != "FATAL" {
					t.Errorf("message %s %q, want FATAL %q", pe.Severity, pe.Message, want)
				}
			})
		}
	}
}

func TestAcceptStartupParams(t *testing.T) {
	s := startTestServer(t, &ServerConfig{})

	// No database: it defaults to the user.
	if _, err := connect(t, s, "user=trusty sslmode=disable", func(c *pgconn.Config) {
		c.RuntimeParams["DateStyle"] = "ISO"
		c.RuntimeParams["options"] = "-c search_path=x"
		c.RuntimeParams["replication"] = "off"
	}); err != nil {
		t.Fatal(err)
	}
	r := s.result()
	if r.err != nil || r.st.Database != "trusty" || r.st.Params["DateStyle"] != "ISO" || r.st.Params["options"] != "-c search_path=x" {
		t.Fatalf("startup %+v, %v", r.st, r.err)
	}
	if _, ok := r.st.Params["replication"]; ok {
		t.Error("replication=off kept in Params")
	}
	if _, ok := r.st.Params["user"]; ok {
		t.Error("user kept in Params")
	}

	// Protocol 3.2 is downgraded to 3.0 with NegotiateProtocolVersion.
	conn, err := connect(t, s, "user=scramuser password=scrampass sslmode=disable max_protocol_version=3.2")
	if err != nil {
		t.Fatal(err)
	}
	if r := s.result(); r.err != nil {
		t.Fatal(r.err)
	}
	if conn.PID() != 4242 || len(conn.SecretKey()) != 4 || binary.BigEndian.Uint32(conn.SecretKey()) != 0xdeadbeef {
		t.Errorf("backend key %d %x", conn.PID(), conn.SecretKey())
	}

	for _, repl := range []string{"database", "true", "on", "1"} {
		_, err := connect(t, s, "user=trusty sslmode=disable", func(c *pgconn.Config) { c.RuntimeParams["replication"] = repl })
		if pgCode(err) != CodeFeatureNotSupported {
			t.Errorf("replication=%s: %v, want 0A000", repl, err)
		}
		s.result()
	}
	_, err = connect(t, s, "user=trusty sslmode=disable", func(c *pgconn.Config) { c.RuntimeParams["replication"] = "maybe" })
	if pgCode(err) != CodeInvalidParameterValue {
		t.Errorf("replication=maybe: %v, want 22023", err)
	}
	s.result()
}

// gssDial sends a GSSENCRequest before handing the connection to pgconn, as
// libpq does with gssencmode=prefer, and expects it refused.
func gssDial(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	req, _ := (&pgproto3.GSSEncRequest{}).Encode(nil)
	if _, err := conn.Write(req); err != nil {
		conn.Close()
		return nil, err
	}
	var b [1]byte
	if _, err := conn.Read(b[:]); err != nil || b[0] != 'N' {
		conn.Close()
		return nil, fmt.Errorf("GSSENCRequest answered %q, %v", b[0], err)
	}
	return conn, nil
}

func TestAcceptGSSENC(t *testing.T) {
	tlsCfg, _ := testTLSConfig(t)
	s := startTestServer(t, &ServerConfig{TLSConfig: tlsCfg})
	for _, sslmode := range []string{"disable", "require"} {
		_, err := connect(t, s, "user=scramuser password=scrampass sslmode="+sslmode, func(c *pgconn.Config) { c.DialFunc = gssDial })
		if err != nil {
			t.Fatalf("sslmode=%s: %v", sslmode, err)
		}
		if r := s.result(); r.err != nil {
			t.Fatal(r.err)
		}
	}

	// SSL refused, then GSS, then a startup: allowed in this order too.
	s2 := startTestServer(t, &ServerConfig{})
	c := dialRaw(t, s2)
	c.send(&pgproto3.SSLRequest{})
	if b := c.readByte(); b != 'N' {
		t.Fatalf("SSLRequest answered %q", b)
	}
	c.send(&pgproto3.GSSEncRequest{})
	if b := c.readByte(); b != 'N' {
		t.Fatalf("GSSENCRequest answered %q", b)
	}
	c.send(startupMsg(map[string]string{"user": "trusty"}))
	if _, ok := c.receive().(*pgproto3.AuthenticationOk); !ok {
		t.Fatal("no AuthenticationOk")
	}
	if r := s2.result(); r.err != nil {
		t.Fatal(r.err)
	}
}

// TestAcceptDirectSSL covers PostgreSQL 17's sslnegotiation=direct.
func TestAcceptDirectSSL(t *testing.T) {
	tlsCfg, _ := testTLSConfig(t)
	s := startTestServer(t, &ServerConfig{TLSConfig: tlsCfg})
	if _, err := connect(t, s, "user=scramuser password=scrampass sslmode=require sslnegotiation=direct"); err != nil {
		t.Fatal(err)
	}
	r := s.result()
	if r.err != nil {
		t.Fatal(r.err)
	}
	if _, ok := r.st.Conn.(*tls.Conn); !ok {
		t.Fatal("not TLS")
	}

	// Without ALPN the client is refused, over TLS.
	c := dialRaw(t, s)
	c.conn = tls.Client(c.conn, &tls.Config{InsecureSkipVerify: true})
	c.send(startupMsg(map[string]string{"user": "trusty"}))
	c.expectError(CodeProtocolViolation)
	if got := serverCode(s.result().err); got != CodeProtocolViolation {
		t.Fatalf("server SQLSTATE %q", got)
	}

	// Without a TLS config a ClientHello is just an oversized packet.
	plain := startTestServer(t, &ServerConfig{})
	c = dialRaw(t, plain)
	c.write([]byte{0x16, 3, 1, 0, 0xc8, 1})
	c.expectError(CodeProgramLimitExceeded)
	plain.result()
}

func TestAcceptNegotiationErrors(t *testing.T) {
	tlsCfg, _ := testTLSConfig(t)
	s := startTestServer(t, &ServerConfig{TLSConfig: tlsCfg})
	plain := startTestServer(t, &ServerConfig{})

	t.Run("second GSSENCRequest", func(t *testing.T) {
		c := dialRaw(t, s)
		c.send(&pgproto3.GSSEncRequest{})
		c.readByte()
		c.send(&pgproto3.GSSEncRequest{})
		e := c.expectError(CodeFeatureNotSupported)
		if e.Message != "unsupported frontend protocol 1234.5680: server supports 3.0 to 3.0" {
			t.Errorf("message %q", e.Message)
		}
		s.result()
	})
	t.Run("second SSLRequest", func(t *testing.T) {
		c := dialRaw(t, plain)
		c.send(&pgproto3.SSLRequest{})
		c.readByte()
		c.send(&pgproto3.SSLRequest{})
		c.expectError(CodeFeatureNotSupported)
		plain.result()
	})
	t.Run("GSSENCRequest inside TLS", func(t *testing.T) {
		c := dialRaw(t, s)
		c.send(&pgproto3.SSLRequest{})
		if c.readByte() != 'S' {
			t.Fatal("TLS refused")
		}
		tc := tls.Client(c.conn, &tls.Config{InsecureSkipVerify: true})
		c.conn = tc
		c.send(&pgproto3.GSSEncRequest{})
		c.expectError(CodeFeatureNotSupported)
		s.result()
	})
	t.Run("data after SSLRequest", func(t *testing.T) {
		for _, srv := range []*testServer{s, plain} {
			c := dialRaw(t, srv)
			req, _ := (&pgproto3.SSLRequest{}).Encode(nil)
			req, _ = startupMsg(map[string]string{"user": "trusty"}).Encode(req)
			c.write(req)
			e := c.expectError(CodeProtocolViolation)
			if e.Message != "received unencrypted data after SSL request" {
				t.Errorf("message %q", e.Message)
			}
			srv.result()
		}
	})
	t.Run("data after GSSENCRequest", func(t *testing.T) {
		c := dialRaw(t, s)
		req, _ := (&pgproto3.GSSEncRequest{}).Encode(nil)
		req, _ = (&pgproto3.CancelRequest{ProcessID: 1, SecretKey: []byte{1, 2, 3, 4}}).Encode(req)
		c.write(req)
		c.expectError(CodeProtocolViolation)
		s.result()
	})
	t.Run("protocol versions", func(t *testing.T) {
		for _, v := range []uint32{2 << 16, 4 << 16, 1234<<16 | 1234} {
			c := dialRaw(t, plain)
			b := binary.BigEndian.AppendUint32(nil, 8+5+7)
			b = binary.BigEndian.AppendUint32(b, v)
			b = append(b, "user\x00trusty\x00\x00"...)
			binary.BigEndian.PutUint32(b, uint32(len(b)))
			c.write(b)
			c.expectError(CodeFeatureNotSupported)
			plain.result()
		}
	})
	t.Run("minor version and _pq_ options", func(t *testing.T) {
		c := dialRaw(t, plain)
		b := binary.BigEndian.AppendUint32(nil, 0)
		b = binary.BigEndian.AppendUint32(b, 3<<16|7)
		b = append(b, "user\x00trusty\x00_pq_.b\x001\x00_pq_.a\x00x\x00\x00"...)
		binary.BigEndian.PutUint32(b, uint32(len(b)))
		c.write(b)
		npv, ok := c.receive().(*pgproto3.NegotiateProtocolVersion)
		if !ok || npv.NewestMinorProtocol != 0 || fmt.Sprint(npv.UnrecognizedOptions) != "[_pq_.a _pq_.b]" {
			t.Fatalf("got %+v", npv)
		}
		if _, ok := c.receive().(*pgproto3.AuthenticationOk); !ok {
			t.Fatal("no AuthenticationOk")
		}
		r := plain.result()
		if r.err != nil || len(r.st.Params) != 0 {
			t.Fatalf("startup %+v, %v", r.st, r.err)
		}
	})
	t.Run("no user", func(t *testing.T) {
		c := dialRaw(t, plain)
		c.send(startupMsg(map[string]string{"database": "x"}))
		c.expectError(CodeInvalidAuthorization)
		plain.result()

		c = dialRaw(t, plain)
		c.write([]byte{0, 0, 0, 9, 0, 3, 0, 0, 0})
		c.expectError(CodeInvalidAuthorization)
		plain.result()
	})
}

func TestAcceptMalformed(t *testing.T) {
	s := startTestServer(t, &ServerConfig{})
	cases := []struct {
		name string
		data []byte
		code string
	}{
		{"oversized startup", []byte{0, 0, 0x27, 0x11}, CodeProgramLimitExceeded}, // 10001
		{"short length", []byte{0, 0, 0, 3}, CodeProtocolViolation},
		{"negative length", []byte{0xff, 0xff, 0xff, 0xf0}, CodeProtocolViolation},
		{"http", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), CodeProgramLimitExceeded},
		{"no terminator", []byte("\x00\x00\x00\x12\x00\x03\x00\x00user\x00trusty"), CodeProtocolViolation},
		{"missing value", []byte("\x00\x00\x00\x0e\x00\x03\x00\x00user\x00\x00"), CodeProtocolViolation},
		{"empty name", []byte("\x00\x00\x00\x13\x00\x03\x00\x00user\x00u\x00\x00x\x00\x00"), CodeProtocolViolation},
		{"short SSLRequest", []byte{0, 0, 0, 12, 0x04, 0xd2, 0x16, 0x2f, 0, 0, 0, 0}, CodeProtocolViolation},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, s)
			c.write(tc.data)
			c.expectError(tc.code)
			r := s.result()
			if got := serverCode(r.err); got != tc.code {
				t.Fatalf("server error %v, want SQLSTATE %s", r.err, tc.code)
			}
		})
	}

	t.Run("oversized password message", func(t *testing.T) {
		c := dialRaw(t, s)
		c.send(startupMsg(map[string]string{"user": "md5user"}))
		if _, ok := c.receive().(*pgproto3.AuthenticationMD5Password); !ok {
			t.Fatal("no md5 request")
		}
		c.write([]byte{'p', 0, 1, 1, 0}) // 65792 bytes
		c.expectError(CodeProgramLimitExceeded)
		if got := serverCode(s.result().err); got != CodeProgramLimitExceeded {
			t.Fatalf("server SQLSTATE %s", got)
		}
	})
	t.Run("wrong message during SCRAM", func(t *testing.T) {
		c := dialRaw(t, s)
		c.send(startupMsg(map[string]string{"user": "scramuser"}))
		if _, ok := c.receive().(*pgproto3.AuthenticationSASL); !ok {
			t.Fatal("no SASL request")
		}
		c.send(&pgproto3.Query{String: "select 1"})
		c.expectError(CodeProtocolViolation)
		s.result()
	})
	t.Run("wrong SASL mechanism", func(t *testing.T) {
		c := dialRaw(t, s)
		c.send(startupMsg(map[string]string{"user": "ghost"}))
		c.receive()
		c.send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256-PLUS", Data: []byte("p=tls-server-end-point,,n=,r=abc")})
		c.expectError(CodeProtocolViolation)
		s.result()
	})
	t.Run("channel binding", func(t *testing.T) {
		c := dialRaw(t, s)
		c.send(startupMsg(map[string]string{"user": "scramuser"}))
		c.receive()
		c.send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("p=tls-server-end-point,,n=,r=abc")})
		e := c.expectError(CodeProtocolViolation)
		if e.Message != "malformed SCRAM message" {
			t.Errorf("message %q", e.Message)
		}
		s.result()
	})
	t.Run("SASL initial response without data", func(t *testing.T) {
		c := dialRaw(t, s)
		c.send(startupMsg(map[string]string{"user": "scramuser"}))
		c.receive()
		c.write([]byte("p\x00\x00\x00\x16SCRAM-SHA-256\x00\xff\xff\xff\xff"))
		cont, ok := c.receive().(*pgproto3.AuthenticationSASLContinue)
		if !ok || len(cont.Data) != 0 {
			t.Fatalf("want an empty challenge, got %+v", cont)
		}
		c.send(&pgproto3.SASLResponse{Data: []byte("n,,n=,r=abc")})
		if _, ok := c.receive().(*pgproto3.AuthenticationSASLContinue); !ok {
			t.Fatal("no server-first-message")
		}
		c.send(&pgproto3.SASLResponse{Data: []byte("c=biws,r=nope,p=" + zeroProof())})
		c.expectError(CodeProtocolViolation)
		s.result()
	})
	t.Run("client leaves during auth", func(t *testing.T) {
		c := dialRaw(t, s)
		c.send(startupMsg(map[string]string{"user": "scramuser"}))
		c.receive()
		c.conn.Close()
		r := s.result()
		if !errors.Is(r.err, io.EOF) || serverCode(r.err) != "" {
			t.Fatalf("server: %v", r.err)
		}
	})
}

func TestAcceptCancelRequest(t *testing.T) {
	tlsCfg, _ := testTLSConfig(t)
	s := startTestServer(t, &ServerConfig{TLSConfig: tlsCfg})
	for _, sslmode := range []string{"disable", "require"} {
		conn, err := connect(t, s, "user=trusty sslmode="+sslmode)
		if err != nil {
			t.Fatal(err)
		}
		s.result()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := conn.CancelRequest(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
		r := s.result()
		if r.err != nil || r.st.Cancel == nil || *r.st.Cancel != s.key || r.st.Reader != nil || r.st.User != "" {
			t.Fatalf("cancel startup %+v, %v", r.st, r.err)
		}
		_, isTLS := r.st.Conn.(*tls.Conn)
		if isTLS != (sslmode == "require") {
			t.Errorf("sslmode %s: cancel over TLS = %v", sslmode, isTLS)
		}
	}

	// SendCancel, as the proxy forwards a cancel to a backend.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := SendCancel(ctx, s.addr().String(), 77, []byte{1, 2, 3, 4}); err != nil {
		t.Fatal(err)
	}
	r := s.result()
	if r.err != nil || r.st.Cancel == nil || *r.st.Cancel != (CancelKey{ProcessID: 77, SecretKey: 0x01020304}) {
		t.Fatalf("cancel startup %+v, %v", r.st, r.err)
	}

	// A longer (protocol 3.2) key cannot be one of ours.
	if err := SendCancel(ctx, s.addr().String(), 77, make([]byte, 32)); err != nil {
		t.Fatal(err)
	}
	if r := s.result(); r.err == nil {
		t.Fatal("accepted a 32-byte cancel key")
	}
	if err := SendCancel(ctx, s.addr().String(), 77, make([]byte, 257)); err == nil {
		t.Fatal("SendCancel encoded a 257-byte key")
	}
}

func TestAcceptTimeout(t *testing.T) {
	s := startTestServer(t, &ServerConfig{AuthTimeout: 200 * time.Millisecond})
	for _, prefix := range [][]byte{nil, {0, 0}, {0, 0, 0, 8, 0x04, 0xd2}} {
		c := dialRaw(t, s)
		c.write(prefix)
		c.expectError(CodeConnectionFailure)
		r := s.result()
		if !errors.Is(r.err, os.ErrDeadlineExceeded) || serverCode(r.err) != CodeConnectionFailure {
			t.Fatalf("server: %v", r.err)
		}
	}
	// A client stuck in the middle of SCRAM.
	c := dialRaw(t, s)
	c.send(startupMsg(map[string]string{"user": "scramuser"}))
	c.receive()
	c.expectError(CodeConnectionFailure)
	s.result()
}

func TestAcceptContextCancel(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := Accept(ctx, server, &ServerConfig{AuthTimeout: time.Hour})
		done <- err
	}()
	// Wait until Accept has read the startup packet and asked for SCRAM, so
	// that the cancel lands while it is blocked.
	b, _ := startupMsg(map[string]string{"user": "someone"}).Encode(nil)
	client.Write(b)
	fe := pgproto3.NewFrontend(client, client)
	client.SetDeadline(time.Now().Add(30 * time.Second))
	if msg, err := fe.Receive(); err != nil {
		t.Fatal(err)
	} else if _, ok := msg.(*pgproto3.AuthenticationSASL); !ok {
		t.Fatalf("got %T", msg)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) || serverCode(err) != CodeAdminShutdown {
			t.Fatalf("Accept: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Accept did not return after cancel")
	}
	msg, err := fe.Receive()
	if e, ok := msg.(*pgproto3.ErrorResponse); err != nil || !ok || e.Code != CodeAdminShutdown {
		t.Fatalf("client got %+v, %v", msg, err)
	}

	// An already cancelled context fails at once.
	if _, err := Accept(ctx, server, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Accept with a cancelled context: %v", err)
	}
}

func TestWriteReady(t *testing.T) {
	var buf writeCounter
	if err := WriteReady(&buf, map[string]string{"b": "2", "a": "1"}, CancelKey{ProcessID: 9, SecretKey: 10}); err != nil {
		t.Fatal(err)
	}
	if buf.writes != 1 {
		t.Errorf("%d writes, want 1", buf.writes)
	}
	var want []byte
	want, _ = (&pgproto3.ParameterStatus{Name: "a", Value: "1"}).Encode(want)
	want, _ = (&pgproto3.ParameterStatus{Name: "b", Value: "2"}).Encode(want)
	want, _ = (&pgproto3.BackendKeyData{ProcessID: 9, SecretKey: []byte{0, 0, 0, 10}}).Encode(want)
	want, _ = (&pgproto3.ReadyForQuery{TxStatus: 'I'}).Encode(want)
	if string(buf.b) != string(want) {
		t.Fatalf("got %q\nwant %q", buf.b, want)
	}
}

type writeCounter struct {
	b      []byte
	writes int
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.writes++
	w.b = append(w.b, p...)
	return len(p), nil
}

// TestAcceptConcurrent runs first logins of one SCRAM user in parallel, so
// that the verifier cache is filled concurrently (run with -race).
func TestAcceptConcurrent(t *testing.T) {
	s := startTestServer(t, &ServerConfig{})
	const n = 8
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%d user=concurrent password=concpass sslmode=disable", s.addr().Port))
			if err != nil {
				errs <- err
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			conn, err := pgconn.ConnectConfig(ctx, cfg)
			if err == nil {
				_, err = conn.Exec(ctx, "select 1").ReadAll()
				conn.Close(ctx)
			}
			errs <- err
		}()
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
		if r := s.result(); r.err != nil {
			t.Error(r.err)
		}
	}
}
