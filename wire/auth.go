package wire

import (
	"bytes"
	"crypto/md5"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"fmt"

	"github.com/jackc/pgx/v5/pgproto3"
)

// authenticate runs the exchange for user's method and ends with
// AuthenticationOk queued, or returns the error to send.
func (a *acceptor) authenticate(user string) error {
	var creds Credentials
	known := false
	if a.cfg.Lookup != nil {
		creds, known = a.cfg.Lookup(user)
	}
	if !known {
		// Do not leak whether the user exists: look like SCRAM, then fail.
		return a.scram(user, mockVerifier(user))
	}
	switch creds.Method {
	case AuthTrust:
	case AuthMD5:
		if v, ok := parseSCRAMVerifier(creds.Password); ok {
			// PostgreSQL also upgrades md5 to SCRAM for a SCRAM secret.
			if err := a.scram(user, v); err != nil {
				return err
			}
			break
		}
		if err := a.md5(user, creds.Password); err != nil {
			return err
		}
	case AuthSCRAM:
		if err := a.scram(user, verifierFor(user, creds.Password)); err != nil {
			return err
		}
	default:
		return a.scram(user, mockVerifier(user))
	}
	return a.send(&pgproto3.AuthenticationOk{})
}

// passwordFailed is the error for any failed password check, whatever the
// reason, as PostgreSQL words it.
func passwordFailed(user string) error {
	// Quoted as PostgreSQL does, without escaping.
	return Fatalf(CodeInvalidPassword, "password authentication failed for user \"%s\"", user)
}

// isMD5Hash reports whether s has PostgreSQL's md5 secret format.
func isMD5Hash(s string) bool {
	if len(s) != 35 || s[:3] != "md5" {
		return false
	}
	for _, c := range []byte(s[3:]) {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func md5Hex(parts ...[]byte) string {
	h := md5.New()
	for _, p := range parts {
		h.Write(p)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// md5 runs AuthenticationMD5Password. secret is a plaintext password or an
// "md5<hex>" hash of password+user.
func (a *acceptor) md5(user, secret string) error {
	var salt [4]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return fmt.Errorf("md5 salt: %w", err)
	}
	if err := a.send(&pgproto3.AuthenticationMD5Password{Salt: salt}); err != nil {
		return err
	}
	typ, msg, err := a.readMessage()
	if err != nil {
		return err
	}
	if typ != 'p' {
		return Fatalf(CodeProtocolViolation, "expected password response, got message type %d", typ)
	}
	var pm pgproto3.PasswordMessage
	body := Body(msg)
	if err := pm.Decode(body); err != nil || len(pm.Password)+1 != len(body) {
		return Fatalf(CodeProtocolViolation, "invalid password packet size")
	}
	if secret == "" || pm.Password == "" {
		return passwordFailed(user)
	}
	hash := secret
	if !isMD5Hash(secret) {
		hash = "md5" + md5Hex([]byte(secret), []byte(user))
	}
	want := "md5" + md5Hex([]byte(hash[3:]), salt[:])
	if subtle.ConstantTimeCompare([]byte(want), []byte(pm.Password)) != 1 {
		return passwordFailed(user)
	}
	return nil
}

// scramMechanism is the only SASL mechanism offered (no -PLUS: channel
// binding is not offered).
const scramMechanism = "SCRAM-SHA-256"

// scram runs a SCRAM-SHA-256 exchange against v. A mock verifier runs the
// whole exchange and then fails.
func (a *acceptor) scram(user string, v *scramVerifier) error {
	if err := a.send(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{scramMechanism}}); err != nil {
		return err
	}
	body, err := a.readSASL()
	if err != nil {
		return err
	}
	var ir pgproto3.SASLInitialResponse
	if err := ir.Decode(body); err != nil {
		return Fatalf(CodeProtocolViolation, "malformed SASLInitialResponse message")
	}
	if ir.AuthMechanism != scramMechanism {
		return Fatalf(CodeProtocolViolation, "client selected an invalid SASL authentication mechanism")
	}
	// pgproto3 skips the data length; check it (-1 means no data).
	n := int32(binary.BigEndian.Uint32(body[len(ir.AuthMechanism)+1:]))
	switch {
	case n == -1 && len(ir.Data) == 0:
		// No initial response: ask for it with an empty challenge.
		if err := a.send(&pgproto3.AuthenticationSASLContinue{}); err != nil {
			return err
		}
		data, err := a.readSASL()
		if err != nil {
			return err
		}
		ir.Data = data
	case int(n) != len(ir.Data):
		return Fatalf(CodeProtocolViolation, "malformed SASLInitialResponse message")
	}

	s := &scramServer{verifier: v}
	serverFirst, err := s.clientFirst(ir.Data)
	if err != nil {
		return err
	}
	if err := a.send(&pgproto3.AuthenticationSASLContinue{Data: serverFirst}); err != nil {
		return err
	}
	data, err := a.readSASL()
	if err != nil {
		return err
	}
	serverFinal, err := s.clientFinal(data)
	if err != nil {
		return err
	}
	if serverFinal == nil {
		return passwordFailed(user)
	}
	return a.send(&pgproto3.AuthenticationSASLFinal{Data: serverFinal})
}

// readSASL reads a SASL response ('p') and returns its body.
func (a *acceptor) readSASL() ([]byte, error) {
	typ, msg, err := a.readMessage()
	if err != nil {
		return nil, err
	}
	if typ != 'p' {
		return nil, Fatalf(CodeProtocolViolation, "expected SASL response, got message type %d", typ)
	}
	var resp pgproto3.SASLResponse
	if err := resp.Decode(Body(msg)); err != nil {
		return nil, Fatalf(CodeProtocolViolation, "malformed SASL response")
	}
	// The message stays valid until the next read only; copy it.
	return bytes.Clone(resp.Data), nil
}
