package wire

import "encoding/binary"

// Feed splits a stream of typed protocol messages that is pushed to it
// (a read loop fills Space and reports Wrote) rather than pulled, as
// Reader does. It keeps one buffer; a message longer than it grows the
// buffer as its bytes arrive, up to the Feed's limit.
type Feed struct {
	buf        []byte
	start, end int // buf[start:end] holds bytes not yet returned by Next
	max        int
	size       int // the buffer's size when it holds no long message
}

// NewFeed returns a Feed with a buffer of size bytes that refuses
// messages whose declared length exceeds max (DefaultMaxMessageSize when
// max <= 0).
func NewFeed(size, max int) *Feed {
	if max <= 0 {
		max = DefaultMaxMessageSize
	}
	return &Feed{buf: make([]byte, size), max: max, size: size}
}

// Space returns where the next bytes read go: never empty. It moves the
// bytes not yet returned to the front of the buffer when they need the
// room, and grows the buffer while a message that does not fit arrives
// (by at most the buffer's size each time: a peer that announces a huge
// message and sends nothing costs no more memory than it sent), back to
// its first size once such a message is gone.
func (f *Feed) Space() []byte {
	if f.end == 0 && len(f.buf) > f.size {
		f.buf = make([]byte, f.size) // a long message is gone: its buffer too
	}
	if f.end < len(f.buf) {
		return f.buf[f.end:]
	}
	if f.start > 0 {
		n := copy(f.buf, f.buf[f.start:f.end])
		f.start, f.end = 0, n
		return f.buf[f.end:]
	}
	grown := make([]byte, 2*len(f.buf))
	copy(grown, f.buf[:f.end])
	f.buf = grown
	return f.buf[f.end:]
}

// Wrote records that n bytes were read into the last Space.
func (f *Feed) Wrote(n int) { f.end += n }

// Next returns the next complete message (its type byte and the raw
// message, header included), or ok false when the bytes buffered do not
// hold one yet. msg is valid until the next Space. A message whose
// length is impossible or above the limit yields a *ProtocolError; the
// stream cannot be resynchronised after that.
func (f *Feed) Next() (typ byte, msg []byte, ok bool, err error) {
	have := f.end - f.start
	if have < 5 {
		return 0, nil, false, nil
	}
	hdr := f.buf[f.start:]
	typ = hdr[0]
	n := int(int32(binary.BigEndian.Uint32(hdr[1:5])))
	if err := checkLength(typ, n, f.max); err != nil {
		return 0, nil, false, err
	}
	if have < n+1 {
		return 0, nil, false, nil
	}
	msg = f.buf[f.start : f.start+n+1 : f.start+n+1]
	f.start += n + 1
	if f.start == f.end {
		f.start, f.end = 0, 0
	}
	return typ, msg, true, nil
}

// Buffered returns the number of bytes buffered and not yet returned.
func (f *Feed) Buffered() int { return f.end - f.start }
