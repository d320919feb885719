package proxy

import (
	"bytes"
	"context"
	"regexp"
	"strconv"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgshard/pgshard/router"
	"github.com/pgshard/pgshard/wire"
)

// COPY across shards. COPY ... TO STDOUT gathers: one CopyOutResponse,
// every shard's rows in shard order (binary format: one header and one
// trailer), one CopyDone, the counts added. COPY ... FROM STDIN splits: the
// session loop reads the client's CopyData itself, the copySplitter sends
// each row to its shard (every row to every shard for a reference table),
// and the shards' transactions commit together (two-phase commit), so a
// bad row anywhere leaves nothing applied.

// copyBatch is the size at which a shard's pending rows are sent.
const copyBatch = 64 << 10

// spreadCopyOut gathers COPY ... TO STDOUT from every leg.
func (s *session) spreadCopyOut(ctx context.Context, legs []*leg, pl *router.Plan, sql string) error {
	clean := false
	defer func() { s.closeLegs(legs, clean) }()
	// While a reshard job moves ranges, each shard copies only the rows it
	// owns: COPY table TO becomes COPY (SELECT columns FROM ONLY table
	// WHERE …) TO, for which a table copied without a column list needs
	// its columns, asked of the first shard.
	var columns func() ([]string, error)
	if pl.Copy.NeedsColumns {
		columns = func() ([]string, error) { return s.copyColumns(ctx, legs[0], pl.Copy.Relation) }
	}
	texts, err := s.ownedTexts(legs, pl, sql, sql, nil, columns)
	if err != nil {
		s.emitError(err)
		return nil
	}
	bufs := make([][]byte, len(legs))
	pre := make([]int, len(legs))
	for i, l := range legs {
		bufs[i], pre[i] = s.prelude(l)
		text := sql
		if texts != nil {
			text = texts[i]
		}
		bufs[i] = append(bufs[i], queryMsg(text)...)
	}
	if err := sendOnLegs(ctx, legs, bufs, pre); err != nil {
		s.emitError(err)
		return nil
	}
	binaryFmt := pl.Copy.Format == "binary"
	var total int64
	var first error
	sentH := false
	for i, l := range legs {
		var held []byte // binary: the last CopyData, which may be the trailer
		firstData := true
		for done := false; !done; {
			typ, msg, err := l.next(ctx)
			if err != nil {
				s.emitError(err)
				return nil
			}
			switch typ {
			case 'H':
				if !sentH && first == nil {
					sentH = true
					s.emitRaw(msg)
				}
			case 'd':
				skip := firstData && i > 0 && (binaryFmt || pl.Copy.Header) // the later shards' header
				firstData = false
				if skip || first != nil {
					continue
				}
				if binaryFmt {
					if held != nil {
						s.emitData(held)
					}
					held = append(held[:0], msg...)
					continue
				}
				s.emitData(msg)
			case 'c':
				if held != nil && i == len(legs)-1 && first == nil {
					s.emitData(held) // one trailer, the last shard's
				}
				held = nil
			case 'C':
				if n, ok := copyCount(tagOf(msg)); ok {
					total += n
				}
			case 'E':
				if first == nil {
					first = backendError(msg)
				}
			case 'Z':
				done = true
			}
		}
	}
	clean = true
	if first != nil {
		s.emitError(first)
		return nil
	}
	s.emitRaw([]byte{'c', 0, 0, 0, 4})
	s.emit(&pgproto3.CommandComplete{CommandTag: []byte("COPY " + strconv.FormatInt(total, 10))})
	return nil
}

// copyColumns asks l for the columns COPY relation TO copies without a
// column list, in order: all but dropped and generated ones. A table with
// none (or that does not exist) is refused as the rewrite cannot copy it.
func (s *session) copyColumns(ctx context.Context, l *leg, relation string) ([]string, error) {
	buf, pre := s.prelude(l)
	buf = append(buf, queryMsg("SELECT a.attname FROM pg_catalog.pg_attribute a WHERE a.attrelid = "+quoteLiteral(relation)+
		"::pg_catalog.regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum")...)
	if err := sendOnLegs(ctx, []*leg{l}, [][]byte{buf}, []int{pre}); err != nil {
		return nil, err
	}
	var cols []string
	var first error
	for {
		typ, msg, err := l.next(ctx)
		if err != nil {
			return nil, err
		}
		switch typ {
		case 'D':
			if row, ok := decodeDataRow(msg[5:], nil); ok && len(row) == 1 && row[0] != nil {
				cols = append(cols, string(row[0]))
			}
		case 'E':
			if first == nil {
				first = backendError(msg)
			}
		case 'Z':
			if first != nil {
				return nil, first
			}
			if len(cols) == 0 {
				return nil, wire.Errorf(router.CodeMoving, "pgshard: COPY of table %s without columns cannot run across shards while a reshard job moves rows; retry after it", relation)
			}
			return cols, nil
		}
	}
}

// emitData relays a CopyData, flushing when the output is large.
func (s *session) emitData(msg []byte) {
	s.mu.Lock()
	s.out = append(s.out, msg...)
	big := len(s.out) > copyBatch
	s.mu.Unlock()
	if big {
		s.flushClient()
	}
}

func copyCount(tag []byte) (int64, bool) {
	rest, ok := bytes.CutPrefix(tag, []byte("COPY "))
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(string(rest), 10, 64)
	return n, err == nil
}

// spreadCopyIn runs COPY ... FROM STDIN over the legs in one transaction
// per shard, splitting the client's rows, and commits them together.
func (s *session) spreadCopyIn(ctx context.Context, legs []*leg, pl *router.Plan, sql string) error {
	clean := false
	defer func() { s.closeLegs(legs, clean) }()
	log := s.srv.txnLogger()
	if len(legs) > 1 && log == nil {
		s.emitError(wire.Errorf(wire.CodeFeatureNotSupported, "pgshard: COPY into %d shards needs two-phase commit, but this node has no decision log (the Raft shard map)", len(legs)))
		clean = true
		return nil
	}
	bufs := make([][]byte, len(legs))
	pre := make([]int, len(legs))
	for i, l := range legs {
		bufs[i], pre[i] = s.prelude(l)
		bufs[i] = append(bufs[i], queryMsg("BEGIN")...)
		bufs[i] = append(bufs[i], queryMsg(sql)...)
		pre[i]++ // BEGIN
	}
	if err := sendOnLegs(ctx, legs, bufs, pre); err != nil {
		s.emitError(err)
		return nil
	}
	// Every shard must be ready for the rows.
	var gmsg []byte
	var first error
	copying := make([]bool, len(legs))
	for i, l := range legs {
		typ, msg, err := l.next(ctx)
		if err != nil {
			s.emitError(err)
			return nil
		}
		switch typ {
		case 'G':
			copying[i] = true
			if gmsg == nil {
				gmsg = append([]byte(nil), msg...)
			}
		case 'E':
			if first == nil {
				first = backendError(msg)
			}
			if _, err := l.untilReady(ctx); err != nil {
				s.emitError(err)
				return nil
			}
		default:
			first = wire.Errorf(wire.CodeProtocolViolation, "pgshard: shard %s did not start the COPY", l.b.rt.name)
		}
	}
	if first != nil {
		for i, l := range legs {
			if copying[i] {
				_ = l.sc.Write(copyFail("the COPY failed on another shard"))
				_, _ = l.untilReady(ctx)
			}
		}
		s.emitError(first)
		clean = s.finishLegs(ctx, legs, "ROLLBACK") == nil
		return nil
	}
	s.emitRaw(gmsg)
	s.flushClient()

	owners := map[string]int{}
	for i, l := range legs {
		owners[l.b.rt.name] = i
	}
	ring := s.srv.routing.Load().ring
	sp := newCopySplitter(pl.Copy, len(legs), func(h int64) int { return owners[ring.Lookup(h)] })
	var failure error // why the COPY fails (the client's or a bad row)
	flushLegs := func(min int) error {
		for i, l := range legs {
			if len(sp.out[i]) < min || len(sp.out[i]) == 0 {
				continue
			}
			var b []byte
			b, _ = (&pgproto3.CopyData{Data: sp.out[i]}).Encode(b)
			sp.out[i] = sp.out[i][:0]
			if err := l.sc.Write(b); err != nil {
				return wire.Errorf(wire.CodeConnectionFailure, "pgshard: lost the connection to shard %s: %v", l.b.rt.name, err)
			}
		}
		return nil
	}
	for reading := true; reading; {
		typ, msg, err := s.cr.Next()
		if err != nil {
			return err // the client is gone: the legs are closed, nothing commits
		}
		switch typ {
		case 'd':
			if failure != nil {
				continue
			}
			if pl.Copy.Broadcast {
				for i := range legs {
					sp.out[i] = append(sp.out[i], msg[5:]...)
				}
			} else if err := sp.feed(msg[5:]); err != nil {
				failure = err
				continue
			}
			if err := flushLegs(copyBatch); err != nil {
				failure = err
			}
		case 'c':
			if failure == nil && !pl.Copy.Broadcast {
				failure = sp.finish()
			}
			reading = false
		case 'f':
			var cf pgproto3.CopyFail
			_ = cf.Decode(msg[5:])
			if failure == nil {
				failure = wire.Errorf(wire.CodeQueryCanceled, "COPY from stdin failed: %s", cf.Message)
			}
			reading = false
		case 'H', 'S':
		default:
			if failure == nil {
				failure = wire.Errorf(wire.CodeProtocolViolation, "unexpected message type 0x%02X during COPY from stdin", typ)
			}
			reading = false
		}
	}
	if failure == nil {
		failure = flushLegs(0)
	}
	end := []byte{'c', 0, 0, 0, 4}
	if failure != nil {
		end = copyFail("pgshard: the COPY failed")
	}
	var total int64
	for i, l := range legs {
		if err := l.sc.Write(end); err != nil && failure == nil {
			failure = err
		}
		for done := false; !done; {
			typ, msg, err := l.next(ctx)
			if err != nil {
				s.emitError(err)
				return nil
			}
			switch typ {
			case 'C':
				if n, ok := copyCount(tagOf(msg)); ok {
					total += n
				}
			case 'E':
				if failure == nil {
					failure = mapCopyLine(msg, sp.lines[i])
				}
			case 'Z':
				done = true
			}
		}
	}
	if failure != nil {
		s.emitError(failure)
		clean = s.finishLegs(ctx, legs, "ROLLBACK") == nil
		return nil
	}
	if pl.Copy.Broadcast {
		total /= int64(len(legs)) // every shard has every row
	}
	if err := s.commitLegs(ctx, legs, log); err != nil {
		s.emitError(err)
		return nil
	}
	clean = true
	s.noteSpreadWrite()
	s.emit(&pgproto3.CommandComplete{CommandTag: []byte("COPY " + strconv.FormatInt(total, 10))})
	return nil
}

func copyFail(msg string) []byte {
	b, _ := (&pgproto3.CopyFail{Message: msg}).Encode(nil)
	return b
}

var copyLineRE = regexp.MustCompile(`line (\d+)`)

// mapCopyLine rewrites a shard's COPY error so that its line number is
// the client's (the shard counted only the rows it was sent).
func mapCopyLine(msg []byte, lines []int64) error {
	var er pgproto3.ErrorResponse
	if er.Decode(msg[5:]) != nil {
		return backendError(msg)
	}
	m := copyLineRE.FindStringSubmatchIndex(er.Where)
	if m == nil {
		return backendError(msg)
	}
	n, err := strconv.Atoi(er.Where[m[2]:m[3]])
	if err != nil || n < 1 || n > len(lines) {
		return backendError(msg)
	}
	er.Where = er.Where[:m[2]] + strconv.FormatInt(lines[n-1], 10) + er.Where[m[3]:]
	b, err := er.Encode(nil)
	if err != nil {
		return backendError(msg)
	}
	return shardError(b)
}
