package wire

import (
	"bytes"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/xdg-go/stringprep"
)

// SCRAMIterations is the PBKDF2 iteration count of verifiers computed from
// plaintext passwords (PostgreSQL's scram_iterations default).
const SCRAMIterations = 4096

const (
	scramSaltLen  = 16 // PostgreSQL's SCRAM_DEFAULT_SALT_LEN
	scramNonceLen = 18 // PostgreSQL's SCRAM_RAW_NONCE_LEN
	scramKeyLen   = sha256.Size
)

// scramVerifier is a parsed SCRAM-SHA-256 secret.
type scramVerifier struct {
	iterations int
	salt       []byte
	storedKey  []byte
	serverKey  []byte
	mock       bool // never authenticates
}

// NewSCRAMVerifier returns the SCRAM-SHA-256 verifier of password in
// PostgreSQL's pg_authid format,
// "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>", with a random
// salt and SCRAMIterations iterations. Credentials.Password accepts it in
// place of the plaintext.
func NewSCRAMVerifier(password string) (string, error) {
	salt := make([]byte, scramSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("wire: scram salt: %w", err)
	}
	v, err := computeVerifier(password, salt, SCRAMIterations)
	if err != nil {
		return "", err
	}
	return v.String(), nil
}

func (v *scramVerifier) String() string {
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", v.iterations, b64(v.salt), b64(v.storedKey), b64(v.serverKey))
}

func computeVerifier(password string, salt []byte, iterations int) (*scramVerifier, error) {
	salted, err := pbkdf2.Key(sha256.New, saslPrep(password), salt, iterations, scramKeyLen)
	if err != nil {
		return nil, fmt.Errorf("wire: scram: %w", err)
	}
	clientKey := hmacSHA256(salted, []byte("Client Key"))
	stored := sha256.Sum256(clientKey)
	return &scramVerifier{
		iterations: iterations,
		salt:       salt,
		storedKey:  stored[:],
		serverKey:  hmacSHA256(salted, []byte("Server Key")),
	}, nil
}

// saslPrep normalises a password as PostgreSQL does before hashing it
// (pg_saslprep in src/common/saslprep.c): ASCII is used as it is; otherwise
// SASLprep (RFC 4013: RFC 3454's Unicode 3.2 tables, NFKC), and the raw
// bytes when the password is not valid UTF-8 or SASLprep refuses it
// (prohibited, unassigned in Unicode 3.2, mixed bidi, or nothing left).
func saslPrep(password string) string {
	ascii := true
	for i := 0; i < len(password); i++ {
		if password[i] >= 0x80 {
			ascii = false
			break
		}
	}
	if ascii || !utf8.ValidString(password) {
		return password
	}
	// U+200B ZERO WIDTH SPACE is in both of SASLprep's mapping tables;
	// PostgreSQL maps it to a space, stringprep to nothing.
	p, err := stringprep.SASLprep.Prepare(strings.ReplaceAll(password, "\u200b", " "))
	if err != nil || p == "" {
		// PostgreSQL also refuses a password that maps to nothing.
		return password
	}
	return p
}

func hmacSHA256(key, msg []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write(msg)
	return h.Sum(nil)
}

// parseSCRAMVerifier parses PostgreSQL's SCRAM secret format. ok is false
// when s is not one (it is then a plaintext password).
func parseSCRAMVerifier(s string) (v *scramVerifier, ok bool) {
	rest, found := strings.CutPrefix(s, "SCRAM-SHA-256$")
	if !found {
		return nil, false
	}
	iterSalt, keys, found := strings.Cut(rest, "$")
	if !found {
		return nil, false
	}
	iterStr, saltStr, found1 := strings.Cut(iterSalt, ":")
	storedStr, serverStr, found2 := strings.Cut(keys, ":")
	if !found1 || !found2 {
		return nil, false
	}
	iter, err := strconv.Atoi(iterStr)
	if err != nil || iter <= 0 {
		return nil, false
	}
	dec := base64.StdEncoding.Strict()
	salt, err1 := dec.DecodeString(saltStr)
	stored, err2 := dec.DecodeString(storedStr)
	server, err3 := dec.DecodeString(serverStr)
	if err1 != nil || err2 != nil || err3 != nil || len(salt) == 0 || len(stored) != scramKeyLen || len(server) != scramKeyLen {
		return nil, false
	}
	return &scramVerifier{iterations: iter, salt: salt, storedKey: stored, serverKey: server}, true
}

// verifiers caches, per user, the verifier computed from a plaintext
// password, so that PBKDF2 runs once per user and not per connection. An
// entry is replaced when the user's password changes.
var verifiers sync.Map // user -> *cachedVerifier

type cachedVerifier struct {
	password string
	v        *scramVerifier
}

// verifierFor returns the verifier for user's stored password: parsed when
// it is a SCRAM secret, a mock when it cannot be used for SCRAM (empty, or an
// md5 hash), else computed from the plaintext once and cached.
func verifierFor(user, password string) *scramVerifier {
	if v, ok := parseSCRAMVerifier(password); ok {
		return v
	}
	if password == "" || isMD5Hash(password) {
		return mockVerifier(user)
	}
	if c, ok := verifiers.Load(user); ok && c.(*cachedVerifier).password == password {
		return c.(*cachedVerifier).v
	}
	salt := make([]byte, scramSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return mockVerifier(user)
	}
	v, err := computeVerifier(password, salt, SCRAMIterations)
	if err != nil {
		return mockVerifier(user)
	}
	verifiers.Store(user, &cachedVerifier{password: password, v: v})
	return v
}

// mockSecret makes mock salts stable per user within a process, so that
// repeated attempts cannot tell an unknown user by a changing salt.
var mockSecret = sync.OnceValue(func() []byte {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return b
})

// mockVerifier returns a verifier that never authenticates, with a salt
// derived from the user name (as PostgreSQL's scram_mock_salt does).
func mockVerifier(user string) *scramVerifier {
	salt := hmacSHA256(mockSecret(), []byte(user))[:scramSaltLen]
	return &scramVerifier{iterations: SCRAMIterations, salt: salt, storedKey: make([]byte, scramKeyLen), serverKey: make([]byte, scramKeyLen), mock: true}
}

// scramServer is the server side of one SCRAM-SHA-256 exchange without
// channel binding (RFC 5802 section 5, RFC 7677).
type scramServer struct {
	verifier *scramVerifier

	serverNonce     string // base64; random when empty
	gs2Header       []byte
	clientFirstBare []byte
	serverFirst     []byte
	nonce           []byte // client nonce + server nonce
}

func malformedSCRAM(detail string) error {
	e := Fatalf(CodeProtocolViolation, "malformed SCRAM message")
	e.Detail = detail
	return e
}

// validSCRAMValue reports whether b can be an attribute value: printable,
// without NUL (PostgreSQL reads the messages as C strings).
func validSCRAMText(b []byte) bool {
	return bytes.IndexByte(b, 0) < 0
}

// attr parses "<name>=<value>" up to the next comma of s and returns the
// value and what follows the comma (nil at the end of s).
func attr(s []byte, name byte) (value, rest []byte, err error) {
	if len(s) < 2 || s[0] != name || s[1] != '=' {
		return nil, nil, malformedSCRAM(fmt.Sprintf("Expected attribute %q.", name))
	}
	s = s[2:]
	if i := bytes.IndexByte(s, ','); i >= 0 {
		return s[:i], s[i+1:], nil
	}
	return s, nil, nil
}

// clientFirst parses the client-first-message and returns the
// server-first-message.
func (s *scramServer) clientFirst(msg []byte) ([]byte, error) {
	if len(msg) == 0 || !validSCRAMText(msg) {
		return nil, malformedSCRAM("Invalid client-first-message.")
	}
	// gs2-header = gs2-cbind-flag "," [authzid] ","
	switch msg[0] {
	case 'n', 'y':
		// 'y': the client supports channel binding but thinks the server
		// does not. True: no -PLUS mechanism is offered.
		if len(msg) < 2 || msg[1] != ',' {
			return nil, malformedSCRAM("Comma expected after the channel-binding flag.")
		}
	case 'p':
		return nil, malformedSCRAM("The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.")
	default:
		return nil, malformedSCRAM("Unexpected channel-binding flag.")
	}
	rest := msg[2:]
	if len(rest) > 0 && rest[0] == 'a' {
		return nil, Fatalf(CodeFeatureNotSupported, "client uses authorization identity, but it is not supported")
	}
	if len(rest) == 0 || rest[0] != ',' {
		return nil, malformedSCRAM("Unexpected attribute in client-first-message.")
	}
	s.gs2Header = bytes.Clone(msg[:3])
	bare := rest[1:]
	s.clientFirstBare = bytes.Clone(bare)

	if bytes.HasPrefix(bare, []byte("m=")) {
		return nil, Fatalf(CodeFeatureNotSupported, "client requires an unsupported SCRAM extension")
	}
	// The user name in n= is ignored, as in PostgreSQL: the startup packet's
	// user is the one authenticated.
	_, rest, err := attr(bare, 'n')
	if err != nil {
		return nil, err
	}
	clientNonce, _, err := attr(rest, 'r')
	if err != nil {
		return nil, err
	}
	if len(clientNonce) == 0 {
		return nil, malformedSCRAM("Empty client nonce.")
	}
	for _, c := range clientNonce {
		if c < 0x21 || c > 0x7e || c == ',' {
			return nil, malformedSCRAM("Invalid character in client nonce.")
		}
	}
	// Extensions after the nonce are ignored.

	if s.serverNonce == "" {
		raw := make([]byte, scramNonceLen)
		if _, err := rand.Read(raw); err != nil {
			return nil, fmt.Errorf("scram nonce: %w", err)
		}
		s.serverNonce = base64.StdEncoding.EncodeToString(raw)
	}
	s.nonce = append(bytes.Clone(clientNonce), s.serverNonce...)
	s.serverFirst = fmt.Appendf(nil, "r=%s,s=%s,i=%d", s.nonce, base64.StdEncoding.EncodeToString(s.verifier.salt), s.verifier.iterations)
	return s.serverFirst, nil
}

// clientFinal checks the client-final-message. It returns the
// server-final-message on success, nil when the proof is wrong, or an
// error for a malformed message.
func (s *scramServer) clientFinal(msg []byte) ([]byte, error) {
	if !validSCRAMText(msg) {
		return nil, malformedSCRAM("Invalid client-final-message.")
	}
	cbind, rest, err := attr(msg, 'c')
	if err != nil {
		return nil, err
	}
	got, err := base64.StdEncoding.Strict().DecodeString(string(cbind))
	if err != nil || !bytes.Equal(got, s.gs2Header) {
		return nil, malformedSCRAM("Unexpected SCRAM channel-binding attribute in client-final-message.")
	}
	nonce, rest, err := attr(rest, 'r')
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare(nonce, s.nonce) != 1 {
		return nil, malformedSCRAM("Nonce does not match.")
	}
	// Skip extensions up to the proof, which must come last.
	i := bytes.LastIndex(msg, []byte(",p="))
	if i < 0 || i < len(msg)-len(rest)-1 {
		return nil, malformedSCRAM("Could not find proof in client-final-message.")
	}
	withoutProof := msg[:i]
	proofB64 := msg[i+3:]
	proof, err := base64.StdEncoding.Strict().DecodeString(string(proofB64))
	if err != nil || len(proof) != scramKeyLen {
		return nil, malformedSCRAM("Malformed proof in client-final-message.")
	}

	authMessage := make([]byte, 0, len(s.clientFirstBare)+len(s.serverFirst)+len(withoutProof)+2)
	authMessage = append(authMessage, s.clientFirstBare...)
	authMessage = append(authMessage, ',')
	authMessage = append(authMessage, s.serverFirst...)
	authMessage = append(authMessage, ',')
	authMessage = append(authMessage, withoutProof...)

	// ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage);
	// the client knows the password when H(ClientKey) == StoredKey.
	sig := hmacSHA256(s.verifier.storedKey, authMessage)
	clientKey := make([]byte, scramKeyLen)
	for j := range clientKey {
		clientKey[j] = proof[j] ^ sig[j]
	}
	h := sha256.Sum256(clientKey)
	if subtle.ConstantTimeCompare(h[:], s.verifier.storedKey) != 1 || s.verifier.mock {
		return nil, nil
	}
	serverSig := hmacSHA256(s.verifier.serverKey, authMessage)
	return []byte("v=" + base64.StdEncoding.EncodeToString(serverSig)), nil
}
