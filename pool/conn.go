package pool

import (
	"errors"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgshard/pgshard/internal/rawio"
	"github.com/pgshard/pgshard/wire"
)

// Handler receives the messages a backend sends while a holder owns the
// Conn. ServerMessage is called on the Conn's reader goroutine, one message
// at a time, in order; msg is valid only during the call. more is true when
// further bytes are already buffered (so the handler may delay a flush).
type Handler interface {
	ServerMessage(c *Conn, typ byte, msg []byte, more bool)
	// ServerGone is called once when the connection fails while held.
	ServerGone(c *Conn, err error)
}

// Conn is one backend connection.
type Conn struct {
	pool      *Pool
	raw       rawio.Conn // the backend connection (raw.NetConn())
	feed      *wire.Feed // what readLoop reads, split into messages
	PID       uint32
	SecretKey []byte
	// Params are the ParameterStatus values the backend reported at startup.
	Params map[string]string
	// State belongs to the current holder of the Conn (the proxy keeps what
	// it has prepared and set on this backend there). The pool never reads it.
	State any

	created  time.Time
	lastUsed time.Time

	hmu     sync.Mutex
	handler Handler
	dead    bool // the reader has stopped: nothing will be delivered again

	broken atomic.Bool
	held   atomic.Bool // handed out by Acquire, not yet Released or Discarded
	// Counters for diagnosis (tests print them when a session is stuck).
	Writes, Messages, Dropped atomic.Uint64
	done                      chan struct{}
}

// backendReadBuffer is the size of a backend connection's read buffer.
const backendReadBuffer = 32 << 10

func newConn(p *Pool, hc *pgconn.HijackedConn) *Conn {
	raw := rawio.New(hc.Conn)
	c := &Conn{
		pool:      p,
		raw:       raw,
		feed:      wire.NewFeed(backendReadBuffer, p.cfg.MaxMessageSize),
		PID:       hc.PID,
		SecretKey: hc.SecretKey,
		Params:    hc.ParameterStatuses,
		created:   time.Now(),
		done:      make(chan struct{}),
	}
	c.lastUsed = c.created
	go c.readLoop()
	return c
}

// Pool returns the pool c belongs to.
func (c *Conn) Pool() *Pool { return c.pool }

// SetHandler makes h receive c's messages from now on (nil: none). It
// returns false, and sets nothing, when the connection has already failed:
// the holder must then Discard it, as no ServerGone will come.
func (c *Conn) SetHandler(h Handler) bool {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	if c.dead && h != nil {
		return false
	}
	c.handler = h
	return true
}

// Write sends raw protocol bytes to the backend. Only the holder writes.
func (c *Conn) Write(b []byte) error {
	c.Writes.Add(1)
	if _, err := c.raw.Write(b); err != nil {
		c.broken.Store(true)
		return err
	}
	return nil
}

func (c *Conn) isBroken() bool { return c.broken.Load() }

// close ends the connection: readLoop sees the end of the stream and
// closes the descriptor (rawio.Conn.Shutdown: this may run inside a
// delivery, where closing would wait for the delivery to end).
func (c *Conn) close() {
	c.broken.Store(true)
	_ = c.raw.Shutdown()
}

// errEndedIdle ends readLoop when an idle backend reports an error: the
// server ending the session (shutdown, terminate).
var errEndedIdle = errors.New("the server ended an idle session")

func (c *Conn) wait() { <-c.done }

func (c *Conn) readLoop() {
	defer close(c.done)
	var last byte // the type of the last message delivered
	err := c.raw.ReadEach(c.feed.Space, func(n int) (bool, error) {
		c.feed.Wrote(n)
		for {
			typ, msg, ok, err := c.feed.Next()
			if err != nil || !ok {
				// After a ReadyForQuery with nothing behind it the backend
				// waits for a query: the next read would find nothing.
				return err == nil && last == 'Z' && c.feed.Buffered() == 0, err
			}
			last = typ
			c.Messages.Add(1)
			c.hmu.Lock()
			h := c.handler
			if h == nil && typ == 'E' {
				// Idle: only asynchronous messages can arrive. An error here
				// is the server ending the session (shutdown, terminate).
				// Marked dead in the same critical section, so that no holder
				// attaches between this check and the end of the loop: it
				// would hear ServerGone for a FATAL it never saw, and fail
				// its client instead of taking another backend.
				c.dead = true
			}
			c.hmu.Unlock()
			if h == nil {
				c.Dropped.Add(1)
				if typ == 'E' {
					return false, errEndedIdle
				}
				continue
			}
			c.deliver(h, typ, msg)
		}
	})
	c.hmu.Lock()
	h := c.handler
	c.dead = true
	c.hmu.Unlock()
	c.broken.Store(true)
	_ = c.raw.NetConn().Close()
	if h != nil {
		h.ServerGone(c, err)
	} else {
		c.pool.dropIdle(c)
	}
}

// deliver hands one message to the holder. A panic in the holder (a bug)
// closes this connection, so that the holder hears ServerGone, instead of
// ending the process.
func (c *Conn) deliver(h Handler, typ byte, msg []byte) {
	defer func() {
		if r := recover(); r != nil {
			c.pool.log.Error("BUG: handling a backend message panicked; closing the backend connection",
				"pid", c.PID, "panic", r, "stack", string(debug.Stack()))
			c.close()
		}
	}()
	h.ServerMessage(c, typ, msg, c.feed.Buffered() > 0)
}
