package wire

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func TestReaderNext(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 300<<10) // over the buffer: the slow path
	var stream []byte
	stream, _ = (&pgproto3.Query{String: "select 1"}).Encode(stream)
	stream, _ = (&pgproto3.CopyData{Data: big}).Encode(stream)
	stream, _ = (&pgproto3.Sync{}).Encode(stream)
	stream, _ = (&pgproto3.CopyData{Data: big[:100]}).Encode(stream)

	// One byte at a time, to cross every boundary.
	r := NewReader(io.MultiReader(oneByteReader{bytes.NewReader(stream)}), 1<<20)
	want := []struct {
		typ byte
		len int
	}{{'Q', 5 + 9}, {'d', 5 + len(big)}, {'S', 5}, {'d', 105}}
	off := 0
	for i, w := range want {
		typ, msg, err := r.Next()
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if typ != w.typ || len(msg) != w.len || !bytes.Equal(msg, stream[off:off+w.len]) {
			t.Fatalf("message %d: type %q, %d bytes; want %q, %d bytes", i, typ, len(msg), w.typ, w.len)
		}
		off += w.len
	}
	if _, _, err := r.Next(); err != io.EOF {
		t.Fatalf("at the end: %v, want io.EOF", err)
	}

	// Truncated in the header and in the body.
	for _, cut := range []int{3, 12, 5 + 1000} {
		r := NewReader(bytes.NewReader(stream[14:14+cut]), 1<<20)
		if _, _, err := r.Next(); err != io.ErrUnexpectedEOF {
			t.Fatalf("cut at %d: %v, want io.ErrUnexpectedEOF", cut, err)
		}
	}

	// Over the limit, and an impossible length.
	r = NewReader(bytes.NewReader(stream[14:]), 1000)
	var pe *ProtocolError
	if _, _, err := r.Next(); !errors.As(err, &pe) || !pe.Oversized {
		t.Fatalf("oversized: %v", err)
	}
	r = NewReader(bytes.NewReader([]byte{'Q', 0, 0, 0, 3}), 0)
	if _, _, err := r.Next(); !errors.As(err, &pe) || pe.Oversized {
		t.Fatalf("length 3: %v", err)
	}
}

func TestReaderNextUntyped(t *testing.T) {
	b, _ := startupMsg(map[string]string{"user": "u"}).Encode(nil)
	r := NewReader(bytes.NewReader(b), 0)
	body, err := r.NextUntyped()
	if err != nil || !bytes.Equal(body, b[4:]) {
		t.Fatalf("got %q, %v", body, err)
	}
	var pe *ProtocolError
	r = NewReader(bytes.NewReader([]byte{0, 0, 0x27, 0x11}), 0)
	if _, err := r.NextUntyped(); !errors.As(err, &pe) || !pe.Oversized {
		t.Fatalf("10001 bytes: %v", err)
	}
	r = NewReader(bytes.NewReader([]byte{0, 0, 0, 7, 1, 2, 3}), 0)
	if _, err := r.NextUntyped(); !errors.As(err, &pe) || pe.Oversized {
		t.Fatalf("7 bytes: %v", err)
	}
}

type oneByteReader struct{ r io.Reader }

func (o oneByteReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return o.r.Read(p)
}
