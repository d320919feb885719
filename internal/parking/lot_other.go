//go:build !linux

package parking

import "errors"

// Lot is only implemented on Linux.
type Lot struct{}

// New fails: parking needs epoll.
func New() (*Lot, error) { return nil, errors.New("parking: not supported on this system") }

// Park fails.
func (l *Lot) Park(Conn, func()) (*Spot, error) { return nil, ErrClosed }

// Unpark returns false.
func (l *Lot) Unpark(*Spot) bool { return false }

// Len returns 0.
func (l *Lot) Len() int { return 0 }

// Run returns at once.
func (l *Lot) Run() error { return ErrClosed }

// Close does nothing.
func (l *Lot) Close() error { return nil }
