package wire

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// memConn is a net.Conn whose peer sent a fixed byte string and then
// closed: reads never block, writes are counted and dropped.
type memConn struct {
	r       *bytes.Reader
	mu      sync.Mutex
	written int
}

func (c *memConn) Read(p []byte) (int, error) { return c.r.Read(p) }
func (c *memConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.written += len(p)
	c.mu.Unlock()
	return len(p), nil
}
func (c *memConn) Close() error                     { return nil }
func (c *memConn) LocalAddr() net.Addr              { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 6432} }
func (c *memConn) RemoteAddr() net.Addr             { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 50000} }
func (c *memConn) SetDeadline(time.Time) error      { return nil }
func (c *memConn) SetReadDeadline(time.Time) error  { return nil }
func (c *memConn) SetWriteDeadline(time.Time) error { return nil }

func encodeAll(msgs ...pgproto3.FrontendMessage) []byte {
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = m.Encode(b); err != nil {
			panic(err)
		}
	}
	return b
}

// acceptSeeds are real client openings.
func acceptSeeds() [][]byte {
	startup := func(user string) *pgproto3.StartupMessage {
		return startupMsg(map[string]string{"user": user, "database": "app", "application_name": "fuzz"})
	}
	scramFirst := &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=rOprNGfwEbeRWgbNEkqO")}
	scramFinal := &pgproto3.SASLResponse{Data: []byte("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")}
	v32 := startup("trusty")
	v32.ProtocolVersion = pgproto3.ProtocolVersion32
	v32.Parameters["_pq_.x"] = "1"
	return [][]byte{
		encodeAll(startup("trusty")),
		encodeAll(startup("trusty"), &pgproto3.Query{String: "select 1"}),
		encodeAll(&pgproto3.SSLRequest{}),
		encodeAll(&pgproto3.SSLRequest{}, startup("trusty")),
		encodeAll(&pgproto3.GSSEncRequest{}),
		encodeAll(&pgproto3.CancelRequest{ProcessID: 1, SecretKey: []byte{1, 2, 3, 4}}),
		encodeAll(v32),
		encodeAll(startup("scramuser"), scramFirst, scramFinal),
		encodeAll(startup("scramstored"), &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("y,,n=x,r=abc,e=1")}, &pgproto3.SASLResponse{Data: []byte("c=eSws,r=abc,p=AAAA")}),
		encodeAll(startup("ghost"), scramFirst, scramFinal),
		encodeAll(startup("md5user"), &pgproto3.PasswordMessage{Password: "md5" + md5Hex([]byte("x"))}),
		encodeAll(startup("md5user"), &pgproto3.Terminate{}),
		[]byte("GET / HTTP/1.1\r\n\r\n"),
		{0, 0, 0, 8},
	}
}

// clientHello returns the first flight of a TLS client that offers ALPN
// "postgresql", as one starting direct SSL negotiation.
func clientHello(f *testing.F) []byte {
	client, server := net.Pipe()
	defer server.Close()
	go func() {
		defer client.Close()
		_ = tls.Client(client, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"postgresql"}}).Handshake()
	}()
	buf := make([]byte, 64<<10)
	server.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := server.Read(buf)
	if err != nil {
		f.Fatal(err)
	}
	return buf[:n]
}

var (
	fuzzTLSOnce sync.Once
	fuzzTLS     *tls.Config
)

// FuzzAccept feeds arbitrary client bytes to Accept: it must return, with
// an error or a Startup, and never panic or hang.
func FuzzAccept(f *testing.F) {
	for _, s := range acceptSeeds() {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Add(clientHello(f), true)
	fuzzTLSOnce.Do(func() {
		cert, _ := testCert(f, "")
		fuzzTLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	})
	f.Fuzz(func(t *testing.T, data []byte, withTLS bool) {
		cfg := &ServerConfig{AuthTimeout: 50 * time.Millisecond, Lookup: lookupTestUser, MaxMessageSize: 1 << 16}
		if withTLS {
			cfg.TLSConfig = fuzzTLS
		}
		conn := &memConn{r: bytes.NewReader(data)}
		done := make(chan struct{})
		var st *Startup
		var err error
		go func() {
			defer close(done)
			st, err = Accept(context.Background(), conn, cfg)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("Accept hung on %q", data)
		}
		if err == nil {
			if st == nil || (st.Cancel == nil && (st.Reader == nil || st.User == "")) {
				t.Fatalf("Accept returned %+v without error", st)
			}
			if st.Cancel == nil && st.User != "trusty" {
				t.Fatalf("user %q authenticated with fuzz input", st.User)
			}
		}
	})
}

// FuzzReader frames arbitrary bytes with Reader and decodes each message
// with the matching pgproto3 frontend type: nothing may panic, and every
// framed message must be consistent with its header.
func FuzzReader(f *testing.F) {
	f.Add(encodeAll(&pgproto3.Query{String: "select 1"}, &pgproto3.Sync{}), false)
	f.Add(encodeAll(&pgproto3.Parse{Name: "s", Query: "select $1", ParameterOIDs: []uint32{23}},
		&pgproto3.Bind{DestinationPortal: "", PreparedStatement: "s", ParameterFormatCodes: []int16{0}, Parameters: [][]byte{[]byte("1")}, ResultFormatCodes: []int16{1}},
		&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{MaxRows: 1}, &pgproto3.Close{ObjectType: 'S', Name: "s"},
		&pgproto3.Flush{}, &pgproto3.Sync{}, &pgproto3.Terminate{}), false)
	f.Add(encodeAll(&pgproto3.CopyData{Data: []byte("1\t2\n")}, &pgproto3.CopyDone{}, &pgproto3.CopyFail{Message: "no"}), false)
	f.Add(encodeAll(&pgproto3.FunctionCall{Function: 1, ArgFormatCodes: []uint16{0}, Arguments: [][]byte{[]byte("x")}, ResultFormatCode: 0}), false)
	f.Add(encodeAll(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=x")}, &pgproto3.PasswordMessage{Password: "p"}), false)
	for _, s := range acceptSeeds() {
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, data []byte, untyped bool) {
		r := NewReader(bytes.NewReader(data), 1<<16)
		if untyped {
			body, err := r.NextUntyped()
			if err != nil {
				checkReadErr(t, err)
				return
			}
			decodeUntyped(body)
		}
		for {
			typ, msg, err := r.Next()
			if err != nil {
				checkReadErr(t, err)
				return
			}
			if len(msg) < 5 || msg[0] != typ || int(binary.BigEndian.Uint32(msg[1:5]))+1 != len(msg) {
				t.Fatalf("message %q does not match its header", msg)
			}
			for _, m := range frontendMessages(typ) {
				_ = m.Decode(bytes.Clone(Body(msg)))
			}
		}
	})
}

func checkReadErr(t *testing.T, err error) {
	t.Helper()
	var pe *ProtocolError
	if err != io.EOF && err != io.ErrUnexpectedEOF && !errors.As(err, &pe) {
		t.Fatalf("unexpected error %v", err)
	}
}

func decodeUntyped(body []byte) {
	for _, m := range []pgproto3.FrontendMessage{&pgproto3.StartupMessage{}, &pgproto3.CancelRequest{}, &pgproto3.SSLRequest{}, &pgproto3.GSSEncRequest{}} {
		_ = m.Decode(bytes.Clone(body))
	}
	_, _ = decodeStartup(body)
}

// frontendMessages returns the pgproto3 types a client message of type typ
// may be ('p' depends on the authentication state).
func frontendMessages(typ byte) []pgproto3.FrontendMessage {
	switch typ {
	case 'B':
		return []pgproto3.FrontendMessage{&pgproto3.Bind{}}
	case 'C':
		return []pgproto3.FrontendMessage{&pgproto3.Close{}}
	case 'd':
		return []pgproto3.FrontendMessage{&pgproto3.CopyData{}}
	case 'c':
		return []pgproto3.FrontendMessage{&pgproto3.CopyDone{}}
	case 'f':
		return []pgproto3.FrontendMessage{&pgproto3.CopyFail{}}
	case 'D':
		return []pgproto3.FrontendMessage{&pgproto3.Describe{}}
	case 'E':
		return []pgproto3.FrontendMessage{&pgproto3.Execute{}}
	case 'F':
		return []pgproto3.FrontendMessage{&pgproto3.FunctionCall{}}
	case 'H':
		return []pgproto3.FrontendMessage{&pgproto3.Flush{}}
	case 'P':
		return []pgproto3.FrontendMessage{&pgproto3.Parse{}}
	case 'p':
		return []pgproto3.FrontendMessage{&pgproto3.PasswordMessage{}, &pgproto3.SASLInitialResponse{}, &pgproto3.SASLResponse{}, &pgproto3.GSSResponse{}}
	case 'Q':
		return []pgproto3.FrontendMessage{&pgproto3.Query{}}
	case 'S':
		return []pgproto3.FrontendMessage{&pgproto3.Sync{}}
	case 'X':
		return []pgproto3.FrontendMessage{&pgproto3.Terminate{}}
	}
	return nil
}
