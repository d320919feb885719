package wire

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

func message(typ byte, body []byte) []byte {
	m := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(m[1:], uint32(4+len(body)))
	return append(m, body...)
}

// Messages pushed in chunks of any size, including ones longer than the
// buffer, come out whole and in order.
func TestFeedSplitsAnyChunking(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var stream []byte
	var want [][]byte
	for i := range 400 {
		body := bytes.Repeat([]byte{byte(i)}, rng.IntN(3)*rng.IntN(300)+i%3*rng.IntN(5000))
		m := message('A'+byte(i%26), body)
		want = append(want, m)
		stream = append(stream, m...)
	}
	for round := range 20 {
		f := NewFeed(64+round*37, 0)
		var got [][]byte
		rest := stream
		for len(rest) > 0 {
			sp := f.Space()
			if len(sp) == 0 {
				t.Fatal("empty Space")
			}
			n := min(len(sp), len(rest), 1+rng.IntN(700))
			copy(sp, rest[:n])
			rest = rest[n:]
			f.Wrote(n)
			for {
				typ, msg, ok, err := f.Next()
				if err != nil {
					t.Fatal(err)
				}
				if !ok {
					break
				}
				if typ != msg[0] {
					t.Fatalf("type %q, message starts %q", typ, msg[0])
				}
				got = append(got, bytes.Clone(msg))
			}
		}
		if len(f.Space()) != 64+round*37 {
			t.Fatalf("round %d: the buffer kept a long message's size (%d)", round, len(f.Space()))
		}
		if f.Buffered() != 0 || len(got) != len(want) {
			t.Fatalf("round %d: %d messages, want %d; %d bytes left", round, len(got), len(want), f.Buffered())
		}
		for i := range want {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("round %d: message %d differs", round, i)
			}
		}
	}
}

// An impossible or oversized length is a protocol error.
func TestFeedRefusesBadLengths(t *testing.T) {
	for _, tc := range []struct {
		hdr       []byte
		oversized bool
	}{
		{[]byte{'D', 0, 0, 0, 3}, false},
		{[]byte{'D', 0, 0, 4, 1}, true},
		{[]byte{'D', 0x80, 0, 0, 0}, false},
	} {
		f := NewFeed(16, 1024)
		f.Wrote(copy(f.Space(), tc.hdr))
		_, _, ok, err := f.Next()
		pe, isPE := err.(*ProtocolError)
		if ok || !isPE || pe.Oversized != tc.oversized {
			t.Fatalf("header %v: ok %v err %v", tc.hdr, ok, err)
		}
	}
}
