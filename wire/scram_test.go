package wire

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

// testVerifier computes a PostgreSQL SCRAM secret straight from RFC 5802,
// separately from the package's code.
func testVerifier(password string, salt []byte, iter int) string {
	salted, err := pbkdf2.Key(sha256.New, password, salt, iter, 32)
	if err != nil {
		panic(err)
	}
	mac := func(key []byte, s string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(s))
		return h.Sum(nil)
	}
	stored := sha256.Sum256(mac(salted, "Client Key"))
	b := base64.StdEncoding.EncodeToString
	return "SCRAM-SHA-256$4096:" + b(salt) + "$" + b(stored[:]) + ":" + b(mac(salted, "Server Key"))
}

// TestSCRAMRFC7677 runs the example exchange of RFC 7677 section 3.
func TestSCRAMRFC7677(t *testing.T) {
	salt, _ := base64.StdEncoding.DecodeString("W22ZaJ0SNY7soEsUEjb6gQ==")
	v, err := computeVerifier("pencil", salt, 4096)
	if err != nil {
		t.Fatal(err)
	}
	s := &scramServer{verifier: v, serverNonce: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"}
	first, err := s.clientFirst([]byte("n,,n=user,r=rOprNGfwEbeRWgbNEkqO"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"; string(first) != want {
		t.Fatalf("server-first-message\n got %s\nwant %s", first, want)
	}
	final, err := s.clientFinal([]byte("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="))
	if err != nil {
		t.Fatal(err)
	}
	if want := "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="; string(final) != want {
		t.Fatalf("server-final-message\n got %s\nwant %s", final, want)
	}

	// One bit off in the proof fails the check, without a protocol error.
	s = &scramServer{verifier: v, serverNonce: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"}
	if _, err := s.clientFirst([]byte("n,,n=user,r=rOprNGfwEbeRWgbNEkqO")); err != nil {
		t.Fatal(err)
	}
	final, err = s.clientFinal([]byte("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVU="))
	if err != nil || final != nil {
		t.Fatalf("wrong proof: got %q, %v; want nil, nil", final, err)
	}

	// The same exchange against a mock verifier with the same keys fails.
	mock := *v
	mock.mock = true
	s = &scramServer{verifier: &mock, serverNonce: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"}
	if _, err := s.clientFirst([]byte("n,,n=user,r=rOprNGfwEbeRWgbNEkqO")); err != nil {
		t.Fatal(err)
	}
	final, err = s.clientFinal([]byte("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="))
	if err != nil || final != nil {
		t.Fatalf("mock verifier: got %q, %v; want nil, nil", final, err)
	}
}

func TestSCRAMMalformed(t *testing.T) {
	v, err := computeVerifier("pencil", []byte("salt"), 4096)
	if err != nil {
		t.Fatal(err)
	}
	firsts := []struct {
		msg, code string
	}{
		{"p=tls-server-end-point,,n=,r=abc", CodeProtocolViolation},
		{"x,,n=,r=abc", CodeProtocolViolation},
		{"n,a=bob,n=,r=abc", CodeFeatureNotSupported},
		{"n,,m=ext,n=,r=abc", CodeFeatureNotSupported},
		{"n,,n=,r=", CodeProtocolViolation},
		{"n,,n=,r=a b", CodeProtocolViolation},
		{"n,,r=abc", CodeProtocolViolation},
		{"n,,n=", CodeProtocolViolation},
		{"n", CodeProtocolViolation},
		{"", CodeProtocolViolation},
		{"n,,n=\x00,r=abc", CodeProtocolViolation},
	}
	for _, tc := range firsts {
		s := &scramServer{verifier: v}
		_, err := s.clientFirst([]byte(tc.msg))
		var we *Error
		if !errors.As(err, &we) || we.Code != tc.code {
			t.Errorf("client-first %q: got %v, want SQLSTATE %s", tc.msg, err, tc.code)
		}
	}

	finals := []string{
		"c=biws,r=abcSERVER",                       // no proof
		"c=eSws,r=abcSERVER,p=" + zeroProof(),      // gs2 header was "n,,"
		"c=biws,r=abcOTHER,p=" + zeroProof(),       // nonce mismatch
		"c=biws,r=abcSERVER,p=AAAA",                // short proof
		"c=biws,r=abcSERVER,p=" + zeroProof()[1:],  // bad base64
		"r=abcSERVER,c=biws,p=" + zeroProof(),      // wrong order
		"c=biws,p=" + zeroProof() + ",r=abcSERVER", // proof not last
	}
	for _, msg := range finals {
		s := &scramServer{verifier: v, serverNonce: "SERVER"}
		if _, err := s.clientFirst([]byte("n,,n=,r=abc")); err != nil {
			t.Fatal(err)
		}
		out, err := s.clientFinal([]byte(msg))
		var we *Error
		if !errors.As(err, &we) || we.Code != CodeProtocolViolation {
			t.Errorf("client-final %q: got %q, %v; want SQLSTATE 08P01", msg, out, err)
		}
	}
	// Extensions before the proof are allowed; a zero proof is just wrong.
	s := &scramServer{verifier: v, serverNonce: "SERVER"}
	if _, err := s.clientFirst([]byte("y,,n=,r=abc,x=ext")); err != nil {
		t.Fatal(err)
	}
	if out, err := s.clientFinal([]byte("c=eSws,r=abcSERVER,x=1,p=" + zeroProof())); err != nil || out != nil {
		t.Errorf("client-final with extension: got %q, %v; want nil, nil", out, err)
	}
}

func zeroProof() string { return base64.StdEncoding.EncodeToString(make([]byte, 32)) }

func TestSCRAMVerifierFormat(t *testing.T) {
	s, err := NewSCRAMVerifier("secret")
	if err != nil {
		t.Fatal(err)
	}
	v, ok := parseSCRAMVerifier(s)
	if !ok {
		t.Fatalf("cannot parse own verifier %q", s)
	}
	if v.iterations != SCRAMIterations || len(v.salt) != scramSaltLen {
		t.Fatalf("verifier %q: iterations %d, salt %d bytes", s, v.iterations, len(v.salt))
	}
	if got := testVerifier("secret", v.salt, SCRAMIterations); got != s {
		t.Fatalf("verifier mismatch:\n got %s\nwant %s", s, got)
	}
	if v.String() != s {
		t.Fatalf("String() = %q, want %q", v.String(), s)
	}
	for _, bad := range []string{
		"secret", "SCRAM-SHA-256$", "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA",
		"SCRAM-SHA-256$0:c2FsdA==" + strings.TrimPrefix(storedVerifier, "SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg=="),
		"SCRAM-SHA-256$x:c2FsdA==" + strings.TrimPrefix(storedVerifier, "SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg=="),
	} {
		if _, ok := parseSCRAMVerifier(bad); ok {
			t.Errorf("parsed %q as a verifier", bad)
		}
	}
	if _, ok := parseSCRAMVerifier(storedVerifier); !ok {
		t.Fatalf("cannot parse %q", storedVerifier)
	}
}

func TestVerifierCache(t *testing.T) {
	a := verifierFor("cacheuser", "one")
	if b := verifierFor("cacheuser", "one"); a != b {
		t.Error("verifier computed twice for the same password")
	}
	c := verifierFor("cacheuser", "two")
	if c == a || c.mock {
		t.Error("password change did not replace the cached verifier")
	}
	if !verifierFor("cacheuser", "").mock || !verifierFor("cacheuser", "md5"+strings.Repeat("a", 32)).mock {
		t.Error("empty or md5 password must give a mock verifier")
	}
	m1, m2 := mockVerifier("ghost"), mockVerifier("ghost")
	if string(m1.salt) != string(m2.salt) || string(m1.salt) == string(mockVerifier("ghost2").salt) {
		t.Error("mock salt must be stable per user and differ between users")
	}
}
