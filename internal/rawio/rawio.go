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
// Serve (and ReadEach, built on it) is a read loop that keeps the
// poller's readiness between its waits, so that it need not read until
// EAGAIN before each one (see there); Shutdown ends a connection without
// waiting for it.
//
// A Conn is two words of state (it lives in every client session, idle
// ones included) and allocates nothing per call: the state of a call in
// flight is borrowed from a sync.Pool.
package rawio

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
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
// with that error. It is Serve with a step that reads once: when got
// reports wait (what arrived leaves the peer waiting for us: it sends
// nothing and does not close until we write) after a read that left the
// socket empty, it waits at once instead of reading until EAGAIN. Without
// wait it reads again, as an end of stream already queued behind the
// bytes would bring no new edge (see Serve).
func (rw Conn) ReadEach(space func() []byte, got func(n int) (wait bool, err error)) error {
	var in Inside
	return rw.Serve(&in, func() (bool, error) {
		n, err := in.TryRead(space())
		if err == ErrWouldBlock {
			return true, nil
		}
		if n > 0 {
			wait, gerr := got(n)
			if gerr != nil {
				return false, gerr
			}
			if wait && in.Drained() {
				return true, nil // drained, and the peer waits: wait for its next bytes
			}
		}
		return false, err
	})
}

// ErrWouldBlock is Inside.TryRead's answer when the socket has nothing to
// read.
var ErrWouldBlock = errors.New("rawio: nothing to read yet")

// Inside is a connection as Serve's step reads it. It belongs to the
// goroutine that runs Serve.
type Inside struct {
	rw      *Conn
	fd      uintptr
	dup     *Conn // another descriptor of the socket, for reads that wait
	active  bool  // inside Serve's RawConn.Read callback: fd is usable
	drained bool  // the last read left the receive queue empty
}

// Active reports whether the caller runs inside Serve on a TCP connection,
// where reads must go through the Inside (the connection's own Read would
// wait for Serve forever).
func (in *Inside) Active() bool { return in.active }

// Drained reports whether the last read, in this turn of Serve's loop
// (since its last wait), got less than it asked for: the socket's receive
// queue was empty then, as a TCP receive copies until it is.
func (in *Inside) Drained() bool { return in.drained }

// TryRead reads what is there, up to len(p), without waiting: io.EOF when
// the peer closed, ErrWouldBlock when nothing is there. Outside Serve's
// callback (other connections than TCP) it is the connection's Read.
func (in *Inside) TryRead(p []byte) (int, error) {
	if !in.active {
		return in.rw.Read(p)
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, errno := recvfrom(in.fd, p)
		switch errno {
		case 0:
			in.drained = n < len(p)
			if n == 0 {
				return 0, io.EOF
			}
			return n, nil
		case syscall.EINTR:
		case syscall.EAGAIN:
			return 0, ErrWouldBlock
		default:
			return 0, in.rw.opError("read", os.NewSyscallError("recvfrom", errno))
		}
	}
}

// Read reads what is there, up to len(p), and waits when nothing is, as
// net.Conn's Read does but without deadlines. Inside Serve's callback it
// waits on a duplicate of the socket's descriptor, registered with the
// poller on the first such wait, read through from then on and closed
// when step next asks to wait (the connection itself is locked by Serve's
// read until then).
func (in *Inside) Read(p []byte) (int, error) {
	if in.dup == nil {
		n, err := in.TryRead(p)
		if err != ErrWouldBlock { // only an active Inside would block
			return n, err
		}
		nfd, derr := unix.FcntlInt(in.fd, unix.F_DUPFD_CLOEXEC, 0)
		if derr != nil {
			return 0, in.rw.opError("read", os.NewSyscallError("fcntl", derr))
		}
		f := os.NewFile(uintptr(nfd), "dup")
		c, ferr := net.FileConn(f) // a descriptor of its own, on the poller
		f.Close()
		if ferr != nil {
			return 0, in.rw.opError("read", ferr)
		}
		dup := New(c)
		in.dup = &dup
	}
	in.drained = false
	return in.dup.Read(p) // the same socket; it waits
}

func (in *Inside) closeDup() {
	if in.dup != nil {
		in.dup.c.Close()
		in.dup = nil
	}
}

// Serve calls step until it fails, inside one RawConn.Read of the
// connection when it is TCP, and returns step's error, or the poller's
// (deadline, close) as net.Conn's Read reports it. Meanwhile step reads
// the connection through in only. When step reports wait (it has nothing
// to do until the connection has bytes), Serve waits on the poller and
// calls it again.
//
// It saves the read that finds nothing. A loop of Reads reads until a read
// returns EAGAIN before it waits, because each Read starts by forgetting
// the readiness the network poller noted meanwhile. Serve's waits keep
// it: after a read that drained the socket (in.Drained), a step that
// knows the peer now waits for us (it sends nothing and does not close
// until we write) may ask to wait at once. Bytes that arrive later make
// the socket ready again (the poller is edge triggered; every arrival is
// an edge), and one that came in between is the readiness the wait finds.
// An end of stream queued behind the bytes read brings no new edge, so a
// step must not wait without reading when the peer may have closed. After
// each wait the step's first read is a real one (Drained is false until
// it). Other connections (TLS, pipes) call step in a loop, reading
// through their own Read; wait is then ignored.
func (rw *Conn) Serve(in *Inside, step func() (wait bool, err error)) error {
	in.rw = rw
	if rw.rc == nil {
		for {
			if _, err := step(); err != nil {
				return err
			}
		}
	}
	var err error
	rerr := rw.rc.Read(func(fd uintptr) bool {
		in.fd, in.active, in.drained = fd, true, false
		defer func() { in.active = false }()
		for {
			wait, serr := step()
			if serr != nil {
				err = serr
				return true
			}
			if wait {
				in.closeDup()
				return false
			}
		}
	})
	in.closeDup()
	if err != nil { // step ended the read, always with an error
		return err
	}
	return rw.opError("read", rerr) // the poller's: closed, deadline
}

// Shutdown ends the connection in both directions without closing its
// descriptor: a Serve (or ReadEach) in progress then reads the end of the
// stream and returns, and its owner closes the connection. Unlike Close it
// does not wait for Serve's step to return, so the step itself, or a
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
