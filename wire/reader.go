package wire

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
)

// DefaultMaxMessageSize is the largest message accepted when no limit is
// configured. PostgreSQL itself accepts up to 1 GiB for some messages; a proxy
// has to buffer a whole message, so it takes less by default.
const DefaultMaxMessageSize = 64 << 20

// readBufferSize is the size of the buffered reader in front of a server
// socket (results stream through it), clientReadBufferSize in front of a
// client's (statements; a longer message is read into a buffer of its own).
const (
	readBufferSize       = 32 << 10
	clientReadBufferSize = 8 << 10
)

// Reader splits a byte stream into protocol v3 messages (a type byte and an
// int32 length that counts itself). It only frames: the contents are decoded
// with pgproto3 by whoever needs them, so messages that are merely relayed
// cost no decoding.
//
// Its read buffer is taken from a pool when bytes are read and can be given
// back between messages (Release), so an idle connection holds none.
type Reader struct {
	br  *bufio.Reader // nil after Release
	src source
	max int
	buf []byte
	// A message over the buffer's size being read when an error (a read
	// deadline) interrupted it: Next goes on with it.
	partial []byte
	total   int
	long    bool
	last    byte // the type of the last message Next returned
	client  bool // reads a client: clientReadBufferSize, buffers shared (Release)
}

// source lets SetSource change what the buffered reader reads from
// without discarding what it buffered.
type source struct{ r io.Reader }

func (s *source) Read(p []byte) (int, error) { return s.r.Read(p) }

// freeReaders keeps client read buffers given back by Release for the next
// Reader that needs one, up to maxFreeReaders; more are left to the
// garbage collector, so that clients going idle in bulk return their
// memory (a sync.Pool would keep them through a collection).
var freeReaders struct {
	sync.Mutex
	list []*bufio.Reader
}

const maxFreeReaders = 32

func getReader(client bool) *bufio.Reader {
	if !client {
		return bufio.NewReaderSize(nil, readBufferSize)
	}
	freeReaders.Lock()
	defer freeReaders.Unlock()
	if n := len(freeReaders.list); n > 0 {
		br := freeReaders.list[n-1]
		freeReaders.list[n-1] = nil
		freeReaders.list = freeReaders.list[:n-1]
		return br
	}
	return bufio.NewReaderSize(nil, clientReadBufferSize)
}

func putReader(br *bufio.Reader) {
	br.Reset(nil)
	freeReaders.Lock()
	defer freeReaders.Unlock()
	if len(freeReaders.list) < maxFreeReaders {
		freeReaders.list = append(freeReaders.list, br)
	}
}

// NewReader returns a Reader over r that refuses messages whose declared
// length exceeds max bytes (DefaultMaxMessageSize when max <= 0).
func NewReader(r io.Reader, max int) *Reader {
	if max <= 0 {
		max = DefaultMaxMessageSize
	}
	rd := &Reader{max: max}
	rd.src.r = r
	return rd
}

// NewClientReader returns a Reader for a client connection: a smaller
// buffer, taken from and given back to a shared free list (Release).
func NewClientReader(r io.Reader, max int) *Reader {
	rd := NewReader(r, max)
	rd.client = true
	return rd
}

// SetSource makes the Reader read from r from now on; bytes already
// buffered are kept. r usually wraps the previous source.
func (r *Reader) SetSource(src io.Reader) { r.src.r = src }

// Release gives the read buffer back to a pool when it holds no bytes and
// no message is half read, and reports whether it did. The next read takes
// a buffer again.
func (r *Reader) Release() bool {
	if r.long {
		return false
	}
	if r.br != nil {
		if r.br.Buffered() > 0 {
			return false
		}
		if r.client {
			putReader(r.br)
		}
		r.br = nil
	}
	r.buf = nil
	return true
}

func (r *Reader) reader() *bufio.Reader {
	if r.br == nil {
		r.br = getReader(r.client)
		r.br.Reset(&r.src)
	}
	return r.br
}

// Next returns the next message: its type byte and the raw message, header
// included. msg is valid until the next call to Next. A message whose length
// is impossible or above the limit yields a *ProtocolError; the stream cannot
// be resynchronised after that, so the caller closes the connection.
//
// After an error from the source that is not the end of the stream (a read
// deadline), the next call goes on where this one stopped.
func (r *Reader) Next() (typ byte, msg []byte, err error) {
	if r.long {
		return r.finishLong()
	}
	br := r.reader()
	hdr, err := br.Peek(5)
	if err != nil {
		if err == io.EOF && len(hdr) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	typ = hdr[0]
	n := int(int32(binary.BigEndian.Uint32(hdr[1:5])))
	if err := checkLength(typ, n, r.max); err != nil {
		return 0, nil, err
	}
	total := n + 1
	if total <= br.Size() {
		// Fast path: the whole message fits in the buffer; hand out a view.
		msg, err = br.Peek(total)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, nil, err
		}
		_, _ = br.Discard(total)
		r.last = typ
		return typ, msg, nil
	}
	r.partial, r.total, r.long = r.buf[:0], total, true
	return r.finishLong()
}

// checkLength refuses a message of type typ whose header declares n bytes
// (the length counts itself) when n is impossible or above max.
func checkLength(typ byte, n, max int) error {
	if n < 4 {
		return &ProtocolError{Msg: fmt.Sprintf("invalid length %d in message of type %q", n, typ)}
	}
	if n > max {
		return &ProtocolError{Msg: fmt.Sprintf("message of type %q is %d bytes, over the limit of %d", typ, n, max), Oversized: true}
	}
	return nil
}

// finishLong reads the rest of a message over the buffer's size. It grows
// the message as the bytes arrive rather than trusting the declared
// length: a peer that announces a huge message and sends nothing costs no
// more memory than it sent.
func (r *Reader) finishLong() (byte, []byte, error) {
	msg := r.partial
	br := r.reader()
	for len(msg) < r.total {
		if len(msg) == cap(msg) {
			grown := make([]byte, len(msg), min(r.total, max(2*cap(msg), 64<<10)))
			copy(grown, msg)
			msg = grown
		}
		chunk := msg[len(msg):min(r.total, cap(msg))]
		n, err := io.ReadFull(br, chunk)
		msg = msg[:len(msg)+n]
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			r.partial = msg
			return 0, nil, err
		}
	}
	r.partial, r.long = nil, false
	r.last = msg[0]
	r.buf = msg
	if cap(r.buf) > 1<<20 {
		r.buf = nil // do not pin a huge buffer for the life of the connection
	}
	return msg[0], msg, nil
}

// NextUntyped reads a message without a type byte (the startup packet, SSL
// and cancel requests): an int32 length that counts itself, then the body.
// It returns the body only.
func (r *Reader) NextUntyped() ([]byte, error) {
	br := r.reader()
	hdr, err := br.Peek(4)
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
	if _, err := io.ReadFull(br, b); err != nil {
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
func (r *Reader) Buffered() int {
	if r.br == nil {
		return 0
	}
	return r.br.Buffered()
}

// Drained reports whether the Reader holds nothing: no byte buffered, no
// message half read. Last then tells what the peer sent last.
func (r *Reader) Drained() bool { return !r.long && r.Buffered() == 0 }

// Last returns the type of the last message Next returned (0 before the
// first).
func (r *Reader) Last() byte { return r.last }

// Body returns the message body of a raw message returned by Next.
func Body(msg []byte) []byte { return msg[5:] }
