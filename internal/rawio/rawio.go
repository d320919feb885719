// Package rawio reads from and writes to TCP sockets with raw system
// calls.
//
// A relay makes a read and a write system call per message batch on each
// side. Through the net package each one enters and leaves the Go
// scheduler's syscall state, and one that returns late (on a busy machine
// the thread is often preempted right there, by the process a write woke)
// lets the runtime's monitor hand the processor to another thread and keep
// polling every 20 µs. On a machine whose cores PostgreSQL and the clients
// share, that costs a tenth or more of the relay's CPU (perf: the monitor's
// nanosleep and the wake-ups it causes). A read or write on a non-blocking
// socket never blocks, so it can be a raw system call (recvfrom, and
// sendto with MSG_NOSIGNAL, as pgbouncer makes them) that keeps the
// processor; when there is nothing to read or no room to write, it waits
// on Go's network poller exactly as net.Conn does (deadlines included).
//
// ReadEach is a read loop that keeps the poller's readiness between its
// waits, so that it need not read until EAGAIN before each one (see
// there); Shutdown ends a connection without waiting for it.
//
// A Conn is two words of state (it lives in every client session, idle
// ones included) and allocates nothing per call: the state of a call in
// flight is borrowed from a sync.Pool.
package rawio

import (
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// Conn reads from and writes to a connection: with raw system calls when
// it is a TCP connection, through its own methods otherwise (TLS, pipes).
// It is safe for concurrent use as net.Conn is.
type Conn struct {
	c  net.Conn
	rc syscall.RawConn // nil: use c's methods
}

// New returns a Conn for c.
func New(c net.Conn) Conn {
	rw := Conn{c: c}
	if tc, ok := c.(*net.TCPConn); ok {
		if rc, err := tc.SyscallConn(); err == nil {
			rw.rc = rc
		}
	}
	return rw
}

// NetConn returns the connection.
func (rw Conn) NetConn() net.Conn { return rw.c }

// op is the state of one call in flight, handed to RawConn's callback.
type op struct {
	b           []byte
	n           int
	err         error
	read, write func(uintptr) bool // op.doRead, op.doWrite, bound once
}

var ops = sync.Pool{New: func() any {
	o := &op{}
	o.read, o.write = o.doRead, o.doWrite
	return o
}}

// Write writes all of b, as net.Conn's Write does (deadlines included).
func (rw Conn) Write(b []byte) (int, error) {
	if rw.rc == nil {
		return rw.c.Write(b)
	}
	return rw.call("write", b)
}

// call makes one Read or Write through RawConn with an op from the pool and
// reports its outcome as net.Conn would (io.EOF bare, others in an
// *net.OpError).
func (rw Conn) call(what string, b []byte) (int, error) {
	o := ops.Get().(*op)
	o.b, o.n, o.err = b, 0, nil
	var err error
	if what == "read" {
		err = rw.rc.Read(o.read)
	} else {
		err = rw.rc.Write(o.write)
	}
	n, cerr := o.n, o.err
	o.b, o.err = nil, nil
	ops.Put(o)
	if cerr == nil {
		cerr = err
	}
	if cerr == nil || cerr == io.EOF {
		return n, cerr
	}
	return n, rw.opError(what, cerr)
}

// opError wraps err as net.Conn's methods do.
func (rw Conn) opError(what string, err error) error {
	return &net.OpError{Op: what, Net: "tcp", Source: rw.c.LocalAddr(), Addr: rw.c.RemoteAddr(), Err: err}
}

// recvfrom reads into b (never empty) with one raw system call.
func recvfrom(fd uintptr, b []byte) (int, syscall.Errno) {
	n, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), 0, 0, 0)
	return int(n), errno
}

// doWrite is the RawConn callback of Write: false asks the poller to wait
// until the socket is writable and call it again.
func (o *op) doWrite(fd uintptr) bool {
	for o.n < len(o.b) {
		m, _, errno := syscall.RawSyscall6(syscall.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&o.b[o.n])), uintptr(len(o.b)-o.n), syscall.MSG_NOSIGNAL, 0, 0)
		switch errno {
		case 0:
			o.n += int(m)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			o.err = os.NewSyscallError("sendto", errno)
			return true
		}
	}
	return true
}

// Read reads what is there, up to len(p), as net.Conn's Read does: it
// waits on the network poller while nothing is (deadlines included) and
// returns io.EOF when the peer has closed.
func (rw Conn) Read(p []byte) (int, error) {
	if rw.rc == nil {
		return rw.c.Read(p)
	}
	if len(p) == 0 {
		return 0, nil
	}
	return rw.call("read", p)
}

// doRead is the RawConn callback of Read: false asks the poller to wait
// until the socket is readable and call it again.
func (o *op) doRead(fd uintptr) bool {
	for {
		n, errno := recvfrom(fd, o.b)
		switch errno {
		case 0:
			o.n = n
			if o.n == 0 {
				o.err = io.EOF
			}
			return true
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			o.err = os.NewSyscallError("recvfrom", errno)
			return true
		}
	}
}

// ReadEach reads the connection until an error, which it returns (io.EOF
// when the peer closed): each read goes into space() and got is called
// with the number of bytes it brought; an error from got ends ReadEach
// with that error.
//
// It saves the read that finds nothing. A loop of Reads reads until a
// read returns EAGAIN before it waits, because each Read starts by
// forgetting the readiness the network poller noted meanwhile. ReadEach
// runs as one RawConn.Read, whose waits keep that readiness. So when got
// reports wait (what arrived leaves the peer waiting for us: it sends
// nothing and does not close until we write) after a read that did not
// fill space (the receive queue was empty then: a TCP receive copies
// until it is), it waits at once: bytes that arrive later make the socket
// ready again (the poller is edge triggered; every arrival is an edge),
// and one that came in between is the readiness the wait finds. Without
// wait it reads again, as an end of stream already queued behind the
// bytes would bring no new edge. Other connections (TLS, pipes) read
// through their own Read.
func (rw Conn) ReadEach(space func() []byte, got func(n int) (wait bool, err error)) error {
	if rw.rc == nil {
		for {
			n, err := rw.c.Read(space())
			if n > 0 {
				if _, gerr := got(n); gerr != nil {
					return gerr
				}
			}
			if err != nil {
				return err
			}
		}
	}
	var err error
	rerr := rw.rc.Read(func(fd uintptr) bool {
		for {
			b := space()
			n, errno := recvfrom(fd, b)
			switch errno {
			case 0:
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false
			default:
				err = rw.opError("read", os.NewSyscallError("recvfrom", errno))
				return true
			}
			if n == 0 {
				err = io.EOF
				return true
			}
			wait, gerr := got(n)
			if gerr != nil {
				err = gerr
				return true
			}
			if wait && n < len(b) {
				return false // drained, and the peer waits: wait for its next bytes
			}
		}
	})
	if err != nil { // the callback ended the read, always with an error
		return err
	}
	return rw.opError("read", rerr) // the poller's: closed, deadline
}

// Shutdown ends the connection in both directions without closing its
// descriptor: a ReadEach in progress then reads the end of the stream and
// returns, and its owner closes the connection. Unlike Close it does not
// wait for a ReadEach callback to return, so the callback itself, or a
// goroutine it waits for, may call it. Connections other than TCP are
// closed.
func (rw Conn) Shutdown() error {
	if rw.rc == nil {
		return rw.c.Close()
	}
	var serr error
	if err := rw.rc.Control(func(fd uintptr) { serr = syscall.Shutdown(int(fd), syscall.SHUT_RDWR) }); err != nil {
		return err
	}
	if serr == syscall.ENOTCONN {
		serr = nil // the peer went first
	}
	return serr
}
