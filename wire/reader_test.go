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

// hiccupReader returns errHiccup every third Read, before reading.
type hiccupReader struct {
	r io.Reader
	n int
}

var errHiccup = errors.New("hiccup")

func (h *hiccupReader) Read(p []byte) (int, error) {
	h.n++
	if h.n%3 == 0 {
		return 0, errHiccup
	}
	if len(p) > 1000 {
		p = p[:1000]
	}
	return h.r.Read(p)
}

// TestReaderGoesOnAfterAnError interrupts every message, short and over
// the buffer's size, with source errors (as a read deadline does) and
// releases the buffer whenever it may: the messages come out whole and in
// order, and Release refuses while bytes or half a message are held.
func TestReaderGoesOnAfterAnError(t *testing.T) {
	big := bytes.Repeat([]byte("y"), 100<<10)
	var stream []byte
	var want [][]byte
	for i := range 20 {
		start := len(stream)
		if i%4 == 1 {
			stream, _ = (&pgproto3.CopyData{Data: big}).Encode(stream)
		} else {
			stream, _ = (&pgproto3.Query{String: "select " + string(rune('a'+i))}).Encode(stream)
		}
		want = append(want, stream[start:])
	}
	r := NewReader(&hiccupReader{r: bytes.NewReader(stream)}, 1<<20)
	var errs, released int
	for i := 0; i < len(want); {
		if r.Release() {
			released++
			if r.Buffered() != 0 {
				t.Fatal("Release with bytes buffered")
			}
		}
		_, msg, err := r.Next()
		if errors.Is(err, errHiccup) {
			errs++
			continue
		}
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !bytes.Equal(msg, want[i]) {
			t.Fatalf("message %d: %d bytes, want %d", i, len(msg), len(want[i]))
		}
		i++
	}
	if _, _, err := r.Next(); err != io.EOF && !errors.Is(err, errHiccup) {
		t.Fatalf("at the end: %v", err)
	}
	if errs < 10 || released == 0 {
		t.Fatalf("%d errors, %d releases: the test did not interrupt enough", errs, released)
	}
}

func TestReaderReleaseAndSetSource(t *testing.T) {
	var a, b []byte
	a, _ = (&pgproto3.Query{String: "one"}).Encode(a)
	a, _ = (&pgproto3.Query{String: "two"}).Encode(a)
	b, _ = (&pgproto3.Sync{}).Encode(b)
	r := NewReader(bytes.NewReader(a), 0)
	if _, _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	if r.Release() {
		t.Fatal("Release with the second message buffered")
	}
	// The buffered message survives a change of source.
	r.SetSource(bytes.NewReader(b))
	if typ, _, err := r.Next(); err != nil || typ != 'Q' {
		t.Fatalf("second message: %q %v", typ, err)
	}
	if !r.Release() {
		t.Fatal("Release refused with nothing buffered")
	}
	if typ, _, err := r.Next(); err != nil || typ != 'S' {
		t.Fatalf("after Release: %q %v", typ, err)
	}
}
