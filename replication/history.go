package replication

// historySize is how many distinct primary WAL positions a Monitor keeps.
// At the default 250ms interval it covers at least 16s of a busy primary
// and much longer of a quiet one (equal positions share one entry).
const historySize = 64

// sample is one primary WAL position (already turned into a record end)
// and the send times of the first and the last check that saw it, in
// nanoseconds on the Monitor's monotonic clock.
type sample struct {
	lsn         LSN
	first, last int64
}

// history is the primary's recent WAL positions, oldest first, with
// increasing LSNs and increasing times. A published history is never
// modified: add returns a new one.
type history struct {
	s []sample
	// truncated is set once an entry was dropped to stay within
	// historySize: the oldest entry is then not the first one seen.
	truncated bool
}

// add returns the history with a new sample: lsn seen by a check sent at
// at. A position lower than the newest one (a new primary, a restored
// backup) starts a new history; reset reports it. A sample older than the
// newest one is ignored.
func (h history) add(lsn LSN, at int64) (_ history, reset bool) {
	n := len(h.s)
	if n == 0 {
		return history{s: []sample{{lsn, at, at}}}, false
	}
	newest := h.s[n-1]
	switch {
	case at < newest.last:
		return h, false
	case lsn < newest.lsn:
		return history{s: []sample{{lsn, at, at}}}, true
	case lsn == newest.lsn:
		s := make([]sample, n, historySize)
		copy(s, h.s)
		s[n-1].last = at
		return history{s: s, truncated: h.truncated}, false
	}
	drop := 0
	if n == historySize {
		drop = 1
	}
	s := make([]sample, n-drop, historySize)
	copy(s, h.s[drop:])
	s = append(s, sample{lsn, at, at})
	return history{s: s, truncated: h.truncated || drop > 0}, false
}

// newest returns the latest sample; ok is false when there is none.
func (h history) newest() (sample, bool) {
	if len(h.s) == 0 {
		return sample{}, false
	}
	return h.s[len(h.s)-1], true
}

// target returns the read-your-writes watermark for a write acknowledged
// at wrote: the position of the earliest check sent after wrote. Every
// record inserted before the write was acknowledged ends at or before it.
// When the oldest kept check is already after wrote, that one is used (a
// higher position, still safe). ok is false when no check was sent after
// wrote yet.
func (h history) target(wrote int64) (LSN, bool) {
	// Binary search for the first entry whose last check is after wrote
	// (last times increase). No closure, so no allocation.
	lo, hi := 0, len(h.s)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if h.s[mid].last > wrote {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	if lo == len(h.s) {
		return 0, false
	}
	return h.s[lo].lsn, true
}

// lag measures how far a replica that had replayed up to replay, at a check
// sent at at, was behind the primary:
//
//   - bytes: the primary position of the last check sent at or before at,
//     minus replay (never negative). Comparing with a primary check from
//     before the replica's check keeps writes that happened after it out of
//     the figure. Before any such check the oldest one is used.
//   - age: how long before at the primary already had WAL that the replica
//     had not replayed: at minus the first time a position above replay was
//     seen. Zero when the replica had everything the primary had at at; so
//     an idle primary never shows a false lag.
//
// covered is false when even the oldest kept position is above replay and
// older positions were dropped: age is then only a lower bound.
func (h history) lag(replay LSN, at int64) (bytes int64, age int64, covered bool) {
	n := len(h.s)
	if n == 0 {
		return 0, 0, true
	}
	// k = number of entries first seen at or before at.
	k := 0
	for k < n && h.s[k].first <= at {
		k++
	}
	base := h.s[0].lsn
	if k > 0 {
		base = h.s[k-1].lsn
	}
	if base > replay {
		bytes = int64(base - replay)
	}
	for j := 0; j < k; j++ {
		if h.s[j].lsn > replay {
			return bytes, at - h.s[j].first, j > 0 || !h.truncated
		}
	}
	return bytes, 0, true
}
