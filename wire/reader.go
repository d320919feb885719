package wire

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
)

// DefaultMaxMessageSize is the largest message accepted when no limit is
// configured. PostgreSQL itself accepts up to 1 GiB for some messages; a proxy
// has to buffer a whole message, so it takes less by default.
const DefaultMaxMessageSize = 64 << 20

// readBufferSize is the size of the buffered reader in front of a socket.
const readBufferSize = 32 << 10

// Reader splits a byte stream into protocol v3 messages (a type byte and an
// int32 length that counts itself). It only frames: the contents are decoded
// with pgproto3 by whoever needs them, so messages that are merely relayed
// cost no decoding.
type Reader struct {
	br  *bufio.Reader
	max int
	buf []byte
}

// NewReader returns a Reader over r that refuses messages whose declared
// length exceeds max bytes (DefaultMaxMessageSize when max <= 0).
func NewReader(r io.Reader, max int) *Reader {
	if max <= 0 {
		max = DefaultMaxMessageSize
	}
	return &Reader{br: bufio.NewReaderSize(r, readBufferSize), max: max}
}

// Next returns the next message: its type byte and the raw message, header
// included. msg is valid until the next call to Next. A message whose length
// is impossible or above the limit yields a *ProtocolError; the stream cannot
// be resynchronised after that, so the caller closes the connection.
func (r *Reader) Next() (typ byte, msg []byte, err error) {
	hdr, err := r.br.Peek(5)
	if err != nil {
		if err == io.EOF && len(hdr) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	typ = hdr[0]
	n := int(int32(binary.BigEndian.Uint32(hdr[1:5])))
	if n < 4 {
		return 0, nil, &ProtocolError{Msg: fmt.Sprintf("invalid length %d in message of type %q", n, typ)}
	}
	if n > r.max {
		return 0, nil, &ProtocolError{Msg: fmt.Sprintf("message of type %q is %d bytes, over the limit of %d", typ, n, r.max), Oversized: true}
	}
	total := n + 1
	if total <= r.br.Size() {
		// Fast path: the whole message fits in the buffer; hand out a view.
		msg, err = r.br.Peek(total)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, nil, err
		}
		_, _ = r.br.Discard(total)
		return typ, msg, nil
	}
	// Grow the buffer as the bytes arrive rather than trusting the declared
	// length: a peer that announces a huge message and sends nothing costs
	// no more memory than it sent.
	msg = r.buf[:0]
	for len(msg) < total {
		if len(msg) == cap(msg) {
			grown := make([]byte, len(msg), min(total, max(2*cap(msg), 64<<10)))
			copy(grown, msg)
			msg = grown
		}
		chunk := msg[len(msg):min(total, cap(msg))]
		if _, err = io.ReadFull(r.br, chunk); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, nil, err
		}
		msg = msg[:len(msg)+len(chunk)]
	}
	r.buf = msg
	if cap(r.buf) > 1<<20 {
		r.buf = nil // do not pin a huge buffer for the life of the connection
	}
	return typ, msg, nil
}

// NextUntyped reads a message without a type byte (the startup packet, SSL
// and cancel requests): an int32 length that counts itself, then the body.
// It returns the body only.
func (r *Reader) NextUntyped() ([]byte, error) {
	hdr, err := r.br.Peek(4)
	if err != nil {
		if err == io.EOF && len(hdr) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	n := int(int32(binary.BigEndian.Uint32(hdr)))
	// PostgreSQL caps the startup packet at 10000 bytes (MAX_STARTUP_PACKET_LENGTH).
	if n < 8 || n > maxStartupPacket {
		return nil, &ProtocolError{Msg: fmt.Sprintf("invalid startup packet length %d", n), Oversized: n > maxStartupPacket}
	}
	if cap(r.buf) < n {
		r.buf = make([]byte, n)
	}
	b := r.buf[:n]
	if _, err := io.ReadFull(r.br, b); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return b[4:], nil
}

// maxStartupPacket is PostgreSQL's MAX_STARTUP_PACKET_LENGTH.
const maxStartupPacket = 10000

// Buffered reports how many bytes are read from the socket but not yet
// returned as messages. A relay flushes its output when this reaches zero.
func (r *Reader) Buffered() int { return r.br.Buffered() }

// Body returns the message body of a raw message returned by Next.
func Body(msg []byte) []byte { return msg[5:] }
