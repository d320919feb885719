//go:build linux

package parking

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// Lot watches parked sockets with one epoll instance. Run owns its only
// goroutine.
type Lot struct {
	epfd int
	evfd int // an eventfd that ends Run

	mu      sync.Mutex
	spots   map[uint64]*Spot
	gen     uint32
	closed  bool
	running bool
}

// New returns an empty Lot; call Run to start waking, Close to stop.
func New() (*Lot, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("parking: epoll_create1: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("parking: eventfd: %w", err)
	}
	// The eventfd is registered with generation 0, which no spot has.
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(evfd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, fmt.Errorf("parking: epoll_ctl: %w", err)
	}
	return &Lot{epfd: epfd, evfd: evfd, spots: map[uint64]*Spot{}}, nil
}

func spotKey(fd int32, gen uint32) uint64 { return uint64(uint32(fd))<<32 | uint64(gen) }

// Park watches c and calls wake, on a new goroutine, when c is readable or
// its peer hung up. It fails when the Lot is closed or c has no usable
// descriptor; the caller then keeps waiting the usual way.
func (l *Lot) Park(c Conn, wake func()) (*Spot, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var sp *Spot
	var perr error
	cerr := rc.Control(func(fd uintptr) {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.closed {
			perr = ErrClosed
			return
		}
		l.gen++
		if l.gen == 0 {
			l.gen = 1
		}
		s := &Spot{key: spotKey(int32(fd), l.gen), wake: wake}
		ev := unix.EpollEvent{
			Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT,
			Fd:     int32(fd),
			Pad:    int32(l.gen),
		}
		if perr = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev); perr != nil {
			perr = fmt.Errorf("parking: epoll_ctl add: %w", perr)
			return
		}
		l.spots[s.key] = s
		sp = s
	})
	if cerr != nil {
		return nil, cerr
	}
	return sp, perr
}

// Unpark stops watching sp. It returns true when sp was still parked (its
// wake function will not run), false when the wake function already ran or
// is about to.
func (l *Lot) Unpark(sp *Spot) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.removeLocked(sp.key) != nil
}

func (l *Lot) removeLocked(key uint64) *Spot {
	sp, ok := l.spots[key]
	if !ok {
		return nil
	}
	delete(l.spots, key)
	// The descriptor is open: the caller unparks before it closes.
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, int(int32(key>>32)), nil)
	return sp
}

// Len returns how many sockets are parked.
func (l *Lot) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.spots)
}

// Run wakes parked sockets until Close. Spots still parked when it returns
// are left to their owners (Unpark returns true for them).
func (l *Lot) Run() error {
	l.mu.Lock()
	if l.closed || l.running {
		l.mu.Unlock()
		return ErrClosed
	}
	l.running = true
	l.mu.Unlock()
	defer l.release()
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(l.epfd, events, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("parking: epoll_wait: %w", err)
		}
		for _, ev := range events[:n] {
			if ev.Pad == 0 && ev.Fd == int32(l.evfd) {
				return nil
			}
			l.mu.Lock()
			sp := l.removeLocked(spotKey(ev.Fd, uint32(ev.Pad)))
			l.mu.Unlock()
			if sp != nil {
				go sp.wake()
			}
		}
	}
}

// Close makes Run return and Park fail. The epoll instance is released
// when Run returns, or at once when Run never started.
func (l *Lot) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	running := l.running
	l.mu.Unlock()
	if !running {
		l.release()
		return nil
	}
	var one [8]byte
	one[0] = 1
	_, err := unix.Write(l.evfd, one[:])
	return err
}

func (l *Lot) release() {
	unix.Close(l.epfd)
	unix.Close(l.evfd)
}
