// Package wire speaks the PostgreSQL frontend/backend protocol (version 3)
// on pgshard's client side: connection startup, authentication, message
// framing and cancel requests. Message contents are encoded and decoded with
// github.com/jackc/pgx/v5/pgproto3; this package never hand-rolls a codec.
//
// # Connection phases
//
// A client connection goes through these phases; Accept runs the first
// three and hands the connection back for the fourth.
//
//  1. Encryption negotiation. The client may send an SSLRequest and a
//     GSSENCRequest, at most one of each, in either order (a GSSENCRequest
//     is not allowed after TLS started, as in PostgreSQL). An SSLRequest is
//     answered 'S' and followed by a TLS handshake when a tls.Config is set,
//     and 'N' otherwise; GSSAPI encryption is always refused with 'N'. Bytes
//     that arrived together with either request are refused (08P01): they
//     were not encrypted and may have been injected (CVE-2021-23222).
//     With a tls.Config, a client may also start TLS at once, without an
//     SSLRequest (PostgreSQL 17's sslnegotiation=direct); it must then
//     negotiate the ALPN protocol "postgresql".
//
//  2. Startup. The next untyped packet is a CancelRequest (returned to the
//     caller, which looks up the key and closes) or a StartupMessage.
//     Protocol 3.0 is spoken; a client asking for 3.x (x > 0) or for "_pq_."
//     protocol options gets a NegotiateProtocolVersion that downgrades it
//     to 3.0, and any other major version is refused (0A000). Replication
//     connections are refused (0A000). A client that closes, or sends
//     Terminate, before its startup packet is let go silently, as by
//     PostgreSQL; other malformed or oversized startup packets are answered
//     with an error.
//
//  3. Authentication, by the user's method: trust, md5 or SCRAM-SHA-256
//     (RFC 5802/7677, server side implemented here, no channel binding).
//     Plaintext passwords are normalised with SASLprep (RFC 4013) before
//     hashing, falling back to the raw bytes, exactly as PostgreSQL does,
//     so verifiers match the ones in pg_authid.
//     Unknown users go through a SCRAM exchange that cannot succeed, so they
//     are indistinguishable from wrong passwords (28P01). Accept ends with
//     AuthenticationOk; the caller then sends ParameterStatus,
//     BackendKeyData and ReadyForQuery, for example with WriteReady.
//
//  4. Messages. A Reader frames the byte stream into typed messages,
//     pulling bytes from its source; a Feed does the same with bytes
//     pushed to it (a backend's read loop, rawio.Conn.ReadEach).
//
// The whole of phases 1 to 3 is bounded by ServerConfig.AuthTimeout and by
// the context, turned into deadlines on the connection. Every failure ends
// in a FATAL ErrorResponse written best effort and an error; bad input never
// panics or hangs.
//
// # Why framing is separate from decoding
//
// A proxy relays most messages unchanged: DataRow, CommandComplete and
// CopyData from a backend to a client, Bind and Execute from a client to a
// backend. Reader only finds message boundaries (a type byte and a length)
// and returns the raw bytes, header included, so that a relayed message is
// written on as it is, without a decode and an encode per message; only the
// messages pgshard must understand (Query, Parse, Bind, ...) are decoded,
// with the matching pgproto3 type's Decode. This keeps the per-row CPU cost
// of the relay close to a memory copy.
//
// # Errors
//
// SQLSTATE-carrying errors are *Error values, kept on the error from where
// they arise; ErrorResponse and AppendError turn any error into the message
// a client receives, only at this boundary. A *ProtocolError means the byte
// stream cannot be trusted any more and the connection must be closed.
package wire
