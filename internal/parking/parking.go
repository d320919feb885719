// Package parking keeps idle sockets without a goroutine each: a socket is
// parked in a Lot (one epoll instance and one goroutine for all of them),
// and its wake function runs, on a goroutine of its own, once the socket
// has something to read or its peer hung up.
//
// A parked socket is watched level-triggered and once (EPOLLONESHOT), and
// taken out of the epoll set before its wake function runs, so bytes that
// arrived before Park wake it at once and a socket is never woken twice.
// The caller must Unpark a socket before it closes it: an epoll set keeps
// watching the open file, and a descriptor number closed while parked could
// be given to a new socket. A wake that reaches a socket parked again under
// the same number after such a mistake is prevented by a generation number
// carried in each event.
//
// Go's own poller keeps watching the socket too (edge-triggered, for
// net.Conn reads); that costs nothing while no goroutine waits on it.
//
// Only Linux has a Lot; elsewhere New fails and callers keep their
// goroutines.
package parking

import (
	"errors"
	"syscall"
)

// ErrClosed is returned by Park after Close.
var ErrClosed = errors.New("parking: lot closed")

// Conn is what can be parked: a connection with a file descriptor
// (*net.TCPConn, *net.UnixConn).
type Conn = syscall.Conn

// Spot is one parked socket; it is valid until its wake function runs or
// Unpark returns true.
type Spot struct {
	key  uint64
	wake func()
}
