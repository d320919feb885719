package wire

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// DefaultAuthTimeout bounds the whole startup handshake when
// ServerConfig.AuthTimeout is zero: PostgreSQL's authentication_timeout
// default (pgbouncer's client_login_timeout is a minute too). Ten seconds
// proved too short for a client starved of CPU on a loaded machine, which
// then failed to connect although nothing was wrong.
const DefaultAuthTimeout = time.Minute

// maxAuthMessage is the largest password or SASL message accepted during
// authentication (PostgreSQL's PG_MAX_AUTH_TOKEN_LENGTH), counting the
// 4-byte length.
const maxAuthMessage = 65535 + 4

// errorWriteTimeout bounds the best-effort write of a final ErrorResponse to a
// client that may not be reading.
const errorWriteTimeout = 250 * time.Millisecond

// Request codes of the untyped packets a client may send first.
const (
	codeCancelRequest = 1234<<16 | 5678 // 80877102
	codeSSLRequest    = 1234<<16 | 5679 // 80877103
	codeGSSENCRequest = 1234<<16 | 5680 // 80877104
)

// AuthMethod is how a user proves who they are.
type AuthMethod int

const (
	// AuthTrust lets the user in without a password.
	AuthTrust AuthMethod = iota
	// AuthMD5 asks for an MD5-hashed password (AuthenticationMD5Password).
	// As in PostgreSQL, a user whose stored password is a SCRAM verifier
	// is asked for SCRAM-SHA-256 instead.
	AuthMD5
	// AuthSCRAM runs SCRAM-SHA-256 (RFC 5802, RFC 7677) without channel
	// binding.
	AuthSCRAM
)

func (m AuthMethod) String() string {
	switch m {
	case AuthTrust:
		return "trust"
	case AuthMD5:
		return "md5"
	case AuthSCRAM:
		return "scram-sha-256"
	}
	return fmt.Sprintf("AuthMethod(%d)", int(m))
}

// Credentials say how a user authenticates.
type Credentials struct {
	Method AuthMethod
	// Password is the plaintext password or a stored verifier in
	// PostgreSQL's pg_authid format: "SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>"
	// or "md5<32 hex digits>" (md5 of password followed by user name).
	// An empty password never authenticates.
	Password string
}

// ServerConfig configures Accept. It may be shared by concurrent calls and
// must not be changed while any is running.
type ServerConfig struct {
	// TLSConfig enables TLS. When nil, an SSLRequest is answered with 'N'
	// and the connection continues in plaintext.
	TLSConfig *tls.Config
	// AuthTimeout bounds the whole handshake, TLS included
	// (DefaultAuthTimeout when zero).
	AuthTimeout time.Duration
	// MaxMessageSize is passed to NewReader for the returned Reader.
	MaxMessageSize int
	// Lookup returns the credentials of a user. For an unknown user
	// (false, or a nil Lookup) Accept runs a SCRAM exchange that cannot
	// succeed and then fails with 28P01, as PostgreSQL does, so that a
	// client cannot tell unknown users from wrong passwords.
	Lookup func(user string) (Credentials, bool)
}

// CancelKey identifies a session to cancel: the BackendKeyData the proxy
// gave the client. The proxy issues 4-byte secrets (protocol 3.0).
type CancelKey struct {
	ProcessID uint32
	SecretKey uint32
}

// Startup is the result of a successful Accept.
type Startup struct {
	// Conn is the connection to use from now on: a *tls.Conn after TLS
	// was negotiated, the accepted conn otherwise. Its deadlines are cleared.
	Conn net.Conn
	// Reader continues reading messages from Conn after the startup.
	Reader *Reader
	// User and Database come from the startup packet; Database defaults to
	// User, as in PostgreSQL. Both are cut to 63 bytes (NAMEDATALEN-1) as
	// PostgreSQL 15 does, at the byte even inside a character.
	User, Database string
	// Params holds every other startup parameter (application_name,
	// client_encoding, options, DateStyle, ...). Protocol options ("_pq_.")
	// and a false "replication" are not included.
	Params map[string]string
	// Cancel is set when the client sent a CancelRequest instead of a
	// startup packet. Only Conn is set besides it; the caller acts on the
	// request and closes the connection without answering.
	Cancel *CancelKey
}

// Accept runs the server side of connection startup on conn: SSL and
// GSSAPI-encryption negotiation, the startup packet (or a cancel request)
// and authentication. On success it has sent AuthenticationOk; the caller
// then sends ParameterStatus, BackendKeyData and ReadyForQuery (WriteReady).
//
// On failure it has written a FATAL ErrorResponse when the client can still
// read one (best effort) and returns an error that wraps the *Error or
// *ProtocolError sent; the caller closes conn. The handshake is bounded by
// cfg.AuthTimeout; when ctx is cancelled, conn's deadline is set to now.
// Accept never closes conn.
func Accept(ctx context.Context, conn net.Conn, cfg *ServerConfig) (*Startup, error) {
	if cfg == nil {
		cfg = &ServerConfig{}
	}
	timeout := cfg.AuthTimeout
	if timeout <= 0 {
		timeout = DefaultAuthTimeout
	}
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return nil, fmt.Errorf("wire: accept: set deadline: %w", err)
	}
	stopWatch := watchContext(ctx, conn)

	a := &acceptor{cfg: cfg, conn: conn, r: NewClientReader(conn, startupReaderMax(cfg.MaxMessageSize))}
	st, err := a.run(ctx)
	cancelled := stopWatch()
	if err == nil && cancelled {
		err = ctx.Err()
	}
	if err != nil {
		return nil, a.fail(ctx, err, cancelled)
	}
	a.r.max = messageMax(cfg.MaxMessageSize)
	if err := a.conn.SetDeadline(time.Time{}); err != nil {
		return nil, fmt.Errorf("wire: accept: clear deadline: %w", err)
	}
	st.Conn = a.conn
	if st.Cancel == nil {
		st.Reader = a.r
	}
	return st, nil
}

// watchContext sets conn's deadline to now when ctx is done. The returned
// stop function reports whether that happened; after it returns the watcher
// no longer touches conn.
func watchContext(ctx context.Context, conn net.Conn) (stop func() bool) {
	done := make(chan struct{})
	stopAfter := context.AfterFunc(ctx, func() {
		_ = conn.SetDeadline(time.Now())
		close(done)
	})
	return func() bool {
		if stopAfter() {
			return false
		}
		<-done
		return true
	}
}

func messageMax(n int) int {
	if n <= 0 {
		return DefaultMaxMessageSize
	}
	return n
}

// startupReaderMax is the message limit while authenticating.
func startupReaderMax(n int) int {
	return min(messageMax(n), maxAuthMessage)
}

// acceptor is the state of one Accept call.
type acceptor struct {
	cfg  *ServerConfig
	conn net.Conn // a *tls.Conn after TLS
	r    *Reader
	out  []byte // messages not yet written

	// noReply is set when the client cannot read an ErrorResponse (TLS
	// failed half way, or the client is gone).
	noReply bool
}

func (a *acceptor) run(ctx context.Context) (*Startup, error) {
	sslDone, gssDone := false, false
	if a.cfg.TLSConfig != nil {
		// PostgreSQL 17's direct SSL negotiation (sslnegotiation=direct):
		// the client starts with a TLS ClientHello instead of an SSLRequest.
		if b, err := a.r.reader().Peek(1); err == nil && b[0] == tlsHandshakeRecord {
			if err := a.directTLS(ctx); err != nil {
				return nil, err
			}
			sslDone, gssDone = true, true
		}
	}
	for {
		body, err := a.r.NextUntyped()
		if err != nil {
			if a.terminateFirst() {
				// A Terminate before the startup packet: the client leaves.
				// PostgreSQL reads it as an impossible length and closes
				// without a word (it only logs it); so do we.
				a.noReply = true
				return nil, errors.New("client sent Terminate before its startup packet")
			}
			return nil, a.readErr(err)
		}
		code := binary.BigEndian.Uint32(body)
		switch {
		case code == codeSSLRequest && !sslDone:
			var req pgproto3.SSLRequest
			if err := req.Decode(body); err != nil || len(body) != 4 {
				return nil, &ProtocolError{Msg: "invalid length of SSL request"}
			}
			if a.r.Buffered() > 0 {
				return nil, unencryptedDataError("SSL")
			}
			if a.cfg.TLSConfig == nil {
				if err := a.writeRaw([]byte{'N'}); err != nil {
					return nil, err
				}
				sslDone = true
				continue
			}
			if err := a.writeRaw([]byte{'S'}); err != nil {
				return nil, err
			}
			tc := tls.Server(a.conn, a.cfg.TLSConfig)
			if err := tc.HandshakeContext(ctx); err != nil {
				a.noReply = true
				return nil, fmt.Errorf("TLS handshake: %w", err)
			}
			a.conn = tc
			a.r = NewClientReader(tc, a.r.max)
			// PostgreSQL allows no GSSENCRequest once TLS is on.
			sslDone, gssDone = true, true
		case code == codeGSSENCRequest && !gssDone:
			var req pgproto3.GSSEncRequest
			if err := req.Decode(body); err != nil || len(body) != 4 {
				return nil, &ProtocolError{Msg: "invalid length of GSSAPI encryption request"}
			}
			if a.r.Buffered() > 0 {
				return nil, unencryptedDataError("GSSAPI encryption")
			}
			if err := a.writeRaw([]byte{'N'}); err != nil {
				return nil, err
			}
			gssDone = true
		case code == codeCancelRequest:
			var req pgproto3.CancelRequest
			if err := req.Decode(body); err != nil || len(req.SecretKey) != 4 {
				// Not a key this proxy issued; PostgreSQL ignores such
				// requests silently, and so does the caller's lookup. Report
				// it so the caller can log it.
				a.noReply = true
				return nil, &ProtocolError{Msg: fmt.Sprintf("invalid length of cancel request packet: %d", len(body)+4)}
			}
			key := &CancelKey{ProcessID: req.ProcessID, SecretKey: binary.BigEndian.Uint32(req.SecretKey)}
			return &Startup{Cancel: key}, nil
		default:
			return a.startup(code, body)
		}
	}
}

// terminateFirst reports whether the unread input starts like a Terminate
// message ('X' and the high bytes of its length, 4), which a client sends
// when it gives up before its startup packet.
func (a *acceptor) terminateFirst() bool {
	b, _ := a.r.reader().Peek(4)
	return string(b) == "X\x00\x00\x00"
}

// tlsHandshakeRecord is the first byte of a TLS ClientHello.
const tlsHandshakeRecord = 0x16

// alpnPostgreSQL is the ALPN protocol a client must offer for direct SSL.
const alpnPostgreSQL = "postgresql"

// directTLS runs a TLS handshake that the client started without an
// SSLRequest. As in PostgreSQL, the client must negotiate ALPN
// "postgresql", which proves it meant to speak PostgreSQL over TLS.
func (a *acceptor) directTLS(ctx context.Context) error {
	cfg := a.cfg.TLSConfig.Clone()
	cfg.NextProtos = []string{alpnPostgreSQL}
	// The ClientHello may already sit in the buffer: feed it to TLS first.
	tc := tls.Server(&prefixConn{Conn: a.conn, r: a.r.reader()}, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		a.noReply = true
		return fmt.Errorf("direct TLS handshake: %w", err)
	}
	a.conn = tc
	a.r = NewClientReader(tc, a.r.max)
	if tc.ConnectionState().NegotiatedProtocol != alpnPostgreSQL {
		return Fatalf(CodeProtocolViolation, "received direct SSL connection request without ALPN protocol negotiation extension")
	}
	return nil
}

// prefixConn reads through r, a buffered reader over Conn, so that bytes
// already buffered are not lost.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (c *prefixConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// unencryptedDataError reports bytes that arrived with an SSL or GSSAPI
// request, before encryption started: they may have been injected by a
// man in the middle (CVE-2021-23222).
func unencryptedDataError(what string) error {
	e := Fatalf(CodeProtocolViolation, "received unencrypted data after %s request", what)
	e.Detail = "This could be either a client-software bug or evidence of an attempted man-in-the-middle attack."
	return e
}

func (a *acceptor) startup(version uint32, body []byte) (*Startup, error) {
	major, minor := version>>16, version&0xffff
	if major != 3 {
		return nil, Fatalf(CodeFeatureNotSupported, "unsupported frontend protocol %d.%d: server supports 3.0 to 3.0", major, minor)
	}
	params, err := decodeStartup(body)
	if err != nil {
		return nil, err
	}

	st := &Startup{Params: make(map[string]string, len(params))}
	var unknownOptions []string
	for k, v := range params {
		switch {
		case k == "user":
			st.User = v
		case k == "database":
			st.Database = v
		case k == "replication":
			repl, ok := parseBool(v)
			if v == "database" || (ok && repl) {
				return nil, Fatalf(CodeFeatureNotSupported, "replication connections are not supported")
			}
			if !ok {
				e := Fatalf(CodeInvalidParameterValue, "invalid value for parameter \"replication\": \"%s\"", v)
				e.Hint = `Valid values are: "false", 0, "true", 1, "database".`
				return nil, e
			}
		case strings.HasPrefix(k, "_pq_."):
			unknownOptions = append(unknownOptions, k)
		default:
			st.Params[k] = v
		}
	}
	if minor > 0 || len(unknownOptions) > 0 {
		// Downgrade to 3.0 and name the options we did not recognise, as
		// PostgreSQL does; the client decides whether to go on.
		sort.Strings(unknownOptions)
		if err := a.send(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 0, UnrecognizedOptions: unknownOptions}); err != nil {
			return nil, err
		}
	}
	if st.User == "" {
		return nil, Fatalf(CodeInvalidAuthorization, "no PostgreSQL user name specified in startup packet")
	}
	if st.Database == "" {
		st.Database = st.User
	}
	// As PostgreSQL 15 (ProcessStartupPacket), which cuts at the byte, not
	// at a character boundary.
	st.User, st.Database = truncateName(st.User), truncateName(st.Database)
	if err := a.authenticate(st.User); err != nil {
		return nil, err
	}
	if err := a.flush(); err != nil {
		return nil, err
	}
	return st, nil
}

// maxNameLen is PostgreSQL's NAMEDATALEN-1.
const maxNameLen = 63

// truncateName cuts a user or database name to maxNameLen bytes.
func truncateName(s string) string {
	if len(s) > maxNameLen {
		return s[:maxNameLen]
	}
	return s
}

// decodeStartup decodes the parameters of a protocol 3.x startup packet.
// pgproto3 decodes only versions 3.0 and 3.2, so the minor version is
// masked on a copy first; PostgreSQL's layout rules are then checked on top.
func decodeStartup(body []byte) (map[string]string, error) {
	if len(body) == 5 && body[4] == 0 {
		return map[string]string{}, nil // no parameters at all
	}
	b := make([]byte, len(body))
	copy(b, body)
	binary.BigEndian.PutUint32(b, pgproto3.ProtocolVersion30)
	var msg pgproto3.StartupMessage
	if err := msg.Decode(b); err != nil {
		return nil, &ProtocolError{Msg: "invalid startup packet layout: expected terminator as last byte"}
	}
	if _, ok := msg.Parameters[""]; ok {
		return nil, &ProtocolError{Msg: "invalid startup packet layout: expected terminator as last byte"}
	}
	return msg.Parameters, nil
}

// parseBool parses a boolean the way PostgreSQL's parse_bool does.
func parseBool(s string) (value, ok bool) {
	s = strings.ToLower(s)
	prefixOf := func(word string, minLen int) bool {
		return len(s) >= minLen && strings.HasPrefix(word, s)
	}
	switch {
	case s == "":
		return false, false
	case prefixOf("true", 1), prefixOf("yes", 1), prefixOf("on", 2), s == "1":
		return true, true
	case prefixOf("false", 1), prefixOf("no", 1), prefixOf("off", 2), s == "0":
		return false, true
	}
	return false, false
}

// send queues a message; flush writes the queue.
func (a *acceptor) send(msg pgproto3.BackendMessage) error {
	out, err := msg.Encode(a.out)
	if err != nil {
		return fmt.Errorf("encode %T: %w", msg, err)
	}
	a.out = out
	return nil
}

func (a *acceptor) flush() error {
	if len(a.out) == 0 {
		return nil
	}
	_, err := a.conn.Write(a.out)
	a.out = a.out[:0]
	if err != nil {
		a.noReply = true
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

// writeRaw writes a single-byte negotiation answer, which is not a message.
func (a *acceptor) writeRaw(b []byte) error {
	a.out = append(a.out, b...)
	return a.flush()
}

// readMessage flushes queued output and reads the next typed message.
func (a *acceptor) readMessage() (byte, []byte, error) {
	if err := a.flush(); err != nil {
		return 0, nil, err
	}
	typ, msg, err := a.r.Next()
	if err != nil {
		return 0, nil, a.readErr(err)
	}
	return typ, msg, nil
}

// readErr marks a failed read: the client is gone unless the error is a
// timeout or a protocol violation, which the client still can be told about.
func (a *acceptor) readErr(err error) error {
	var pe *ProtocolError
	var ne net.Error
	if !errors.As(err, &pe) && !(errors.As(err, &ne) && ne.Timeout()) {
		a.noReply = true
	}
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("client closed the connection: %w", err)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("client closed the connection mid-message: %w", err)
	}
	return err
}

// fail turns the error that ended the handshake into the ErrorResponse the
// client receives (best effort) and into Accept's error.
func (a *acceptor) fail(ctx context.Context, err error, cancelled bool) error {
	var sent error
	var ne net.Error
	switch {
	case cancelled:
		sent = Fatalf(CodeAdminShutdown, "terminating connection due to administrator command")
		err = fmt.Errorf("%w: %w", sent, context.Cause(ctx))
	case errors.As(err, &ne) && ne.Timeout():
		sent = Fatalf(CodeConnectionFailure, "canceling authentication due to timeout")
		err = fmt.Errorf("%w: %w", sent, err)
	default:
		var we *Error
		var pe *ProtocolError
		switch {
		case errors.As(err, &we) || errors.As(err, &pe):
			sent = err
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || a.noReply:
			// The client is gone or cannot read: nothing to tell it.
			return fmt.Errorf("wire: accept: %w", err)
		default:
			sent = Fatalf(CodeInternalError, "could not start session")
			err = fmt.Errorf("%w: %w", sent, err)
		}
	}
	if !a.noReply {
		a.out = a.out[:0]
		a.out = AppendError(a.out, fatal(sent))
		_ = a.conn.SetWriteDeadline(time.Now().Add(errorWriteTimeout))
		_ = a.flush()
	}
	return fmt.Errorf("wire: accept: %w", err)
}

// fatal returns err with FATAL severity for the client: the connection
// ends after any error during startup.
func fatal(err error) error {
	var we *Error
	if errors.As(err, &we) && we.Severity != "FATAL" {
		c := *we
		c.Severity = "FATAL"
		return &c
	}
	return err
}
