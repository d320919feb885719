package replication

import (
	"fmt"
	"strconv"
	"strings"
)

// LSN is a PostgreSQL write-ahead log position (pg_lsn), a byte offset in
// the WAL stream.
type LSN uint64

// String formats the LSN the way PostgreSQL does: "16/B374D848".
func (l LSN) String() string { return fmt.Sprintf("%X/%X", uint64(l)>>32, uint32(l)) }

// ParseLSN parses PostgreSQL's text form of a pg_lsn ("16/B374D848").
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, fmt.Errorf("replication: parse LSN %q: %w", s, ErrBadLSN)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("replication: parse LSN %q: %w", s, ErrBadLSN)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("replication: parse LSN %q: %w", s, ErrBadLSN)
	}
	return LSN(h<<32 | l), nil
}

// WAL page header sizes (SizeOfXLogShortPHD, SizeOfXLogLongPHD) on every
// platform PostgreSQL supports (MAXALIGN 8).
const (
	shortPageHeader = 24
	longPageHeader  = 40
)

// recordEnd turns a primary's insert position (pg_current_wal_insert_lsn)
// into the end of the last record inserted, which is what a replica's
// pg_last_wal_replay_lsn reports once it has replayed that record.
//
// The two differ only when the insert position is at the very start of a
// page: the primary then reports the position after the page header (the
// next record starts there), while the replica reports the end of the last
// record, the page boundary itself. It happens after pg_switch_wal (the
// switch record "extends" to the end of the segment) or when a record ends
// exactly at a page end. Left alone, an idle primary in that state would
// make every replica look a few bytes behind forever.
//
// A record cannot end inside a page header, so an insert position exactly
// at a header's end means the last record ended at the page boundary; any
// other position is returned unchanged. blockSize and segSize are the
// server's wal_block_size and wal_segment_size; zero disables the
// adjustment.
func recordEnd(insert LSN, blockSize, segSize uint64) LSN {
	if blockSize == 0 || segSize == 0 {
		return insert
	}
	x := uint64(insert)
	if x%segSize == longPageHeader {
		return LSN(x - longPageHeader)
	}
	if x%blockSize == shortPageHeader && x%segSize >= blockSize {
		return LSN(x - shortPageHeader)
	}
	return insert
}
