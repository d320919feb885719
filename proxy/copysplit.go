package proxy

import (
	"bytes"
	"encoding/binary"
	"strconv"

	"github.com/pgshard/pgshard/router"
	"github.com/pgshard/pgshard/shardmap"
	"github.com/pgshard/pgshard/wire"
)

// copySplitter cuts the data of a COPY FROM STDIN into rows and sends each
// to the shard that owns its key: text and CSV rows by line (a quoted CSV
// field may span lines), binary rows by tuple. It keeps at most one
// partial row between CopyData messages. Header lines and the binary
// header and trailer go to every shard.
type copySplitter struct {
	cp        *router.CopyPlan
	owner     func(hash int64) int // the leg of a key's hash
	out       [][]byte             // per leg: rows not sent yet
	lines     [][]int64            // per leg: the client's line number of each row sent (error messages)
	pend      []byte               // a partial row
	line      int64                // rows (lines, tuples) seen
	done      bool                 // end-of-data marker or binary trailer seen
	gotHeader bool                 // binary: the header was read
	maxLines  int                  // bound on lines kept per leg
}

func newCopySplitter(cp *router.CopyPlan, legs int, owner func(int64) int) *copySplitter {
	return &copySplitter{cp: cp, owner: owner, out: make([][]byte, legs), lines: make([][]int64, legs), maxLines: 1 << 24}
}

// toLeg queues one row for leg i.
func (c *copySplitter) toLeg(i int, row []byte) {
	c.out[i] = append(c.out[i], row...)
	if len(c.lines[i]) < c.maxLines {
		c.lines[i] = append(c.lines[i], c.line)
	}
}

func (c *copySplitter) toAll(row []byte) {
	for i := range c.out {
		c.toLeg(i, row)
	}
}

// feed takes the data of one CopyData message.
func (c *copySplitter) feed(data []byte) error {
	if c.done {
		return nil
	}
	c.pend = append(c.pend, data...)
	var n int
	var err error
	if c.cp.Format == "binary" {
		n, err = c.binaryRows(c.pend, false)
	} else {
		n, err = c.textRows(c.pend, false)
	}
	c.pend = c.pend[:copy(c.pend, c.pend[n:])]
	return err
}

// finish takes what is left at CopyDone (a last line without a newline).
func (c *copySplitter) finish() error {
	if c.done || len(c.pend) == 0 {
		return nil
	}
	if c.cp.Format == "binary" {
		_, err := c.binaryRows(c.pend, true)
		return err
	}
	_, err := c.textRows(c.pend, true)
	return err
}

func (c *copySplitter) rowError(format string, args ...any) error {
	e := wire.Errorf(router.CodeBadValue, format, args...)
	e.Detail = "COPY " + c.cp.Table + ", line " + strconv.FormatInt(c.line, 10)
	return e
}

// textRows routes the complete text or CSV rows at the start of b and
// returns how many bytes they took; at the end (eof) a last row without a
// newline counts too.
func (c *copySplitter) textRows(b []byte, eof bool) (int, error) {
	used := 0
	for used < len(b) && !c.done {
		end, ok := c.rowEnd(b[used:])
		if !ok {
			if !eof {
				break
			}
			end = len(b) - used
		}
		row := b[used : used+end]
		used += end
		c.line++
		content := bytes.TrimRight(row, "\r\n")
		if string(content) == `\.` {
			c.done = true
			break
		}
		if c.line == 1 && c.cp.Header {
			c.toAll(row)
			continue
		}
		if !ok {
			row = append(row[:len(row):len(row)], '\n')
		}
		key, null, err := c.field(content)
		if err != nil {
			return used, err
		}
		if null {
			return used, c.rowError("pgshard: COPY row with a NULL shard key cannot be placed on a shard")
		}
		h, herr := shardmap.HashKey(c.cp.KeyType, key)
		if herr != nil {
			return used, c.rowError("pgshard: invalid shard key %q: %v", key, herr)
		}
		c.toLeg(c.owner(h), row)
	}
	return used, nil
}

// rowEnd returns the length of the first row of b with its newline.
func (c *copySplitter) rowEnd(b []byte) (int, bool) {
	if c.cp.Format != "csv" {
		i := bytes.IndexByte(b, '\n')
		return i + 1, i >= 0
	}
	in := false
	for i := 0; i < len(b); i++ {
		switch ch := b[i]; {
		case in && ch == c.cp.Escape && c.cp.Escape != c.cp.Quote && i+1 < len(b) && (b[i+1] == c.cp.Quote || b[i+1] == c.cp.Escape):
			i++
		case ch == c.cp.Quote:
			in = !in // a doubled quote toggles twice
		case ch == '\n' && !in:
			return i + 1, true
		}
	}
	return 0, false
}

// field returns the value of the key field of a row (without its newline).
func (c *copySplitter) field(row []byte) (string, bool, error) {
	if c.cp.Format == "csv" {
		return c.csvField(row)
	}
	idx, start := 0, 0
	for i := 0; i <= len(row); i++ {
		if i < len(row) && row[i] == '\\' {
			i++
			continue
		}
		if i == len(row) || row[i] == c.cp.Delimiter {
			if idx == c.cp.KeyIndex {
				raw := row[start:i]
				if string(raw) == c.cp.Null {
					return "", true, nil
				}
				return unescapeText(raw), false, nil
			}
			idx++
			start = i + 1
		}
	}
	return "", false, c.rowError("pgshard: COPY row has no shard key field (column %d)", c.cp.KeyIndex+1)
}

// unescapeText undoes COPY text format's backslash escapes.
func unescapeText(b []byte) string {
	if bytes.IndexByte(b, '\\') < 0 {
		return string(b)
	}
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		if b[i] != '\\' || i+1 == len(b) {
			out = append(out, b[i])
			continue
		}
		i++
		switch ch := b[i]; ch {
		case 'b':
			out = append(out, '\b')
		case 'f':
			out = append(out, '\f')
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'v':
			out = append(out, '\v')
		case 'x':
			v, n := 0, 0
			for n < 2 && i+1 < len(b) && isHex(b[i+1]) {
				i++
				v = v*16 + hexVal(b[i])
				n++
			}
			if n == 0 {
				out = append(out, 'x')
			} else {
				out = append(out, byte(v))
			}
		default:
			if ch >= '0' && ch <= '7' {
				v := int(ch - '0')
				for n := 1; n < 3 && i+1 < len(b) && b[i+1] >= '0' && b[i+1] <= '7'; n++ {
					i++
					v = v*8 + int(b[i]-'0')
				}
				out = append(out, byte(v))
			} else {
				out = append(out, ch)
			}
		}
	}
	return string(out)
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

func hexVal(c byte) int {
	switch {
	case c >= 'a':
		return int(c-'a') + 10
	case c >= 'A':
		return int(c-'A') + 10
	}
	return int(c - '0')
}

// csvField returns the key field of a CSV row.
func (c *copySplitter) csvField(row []byte) (string, bool, error) {
	idx := 0
	var val []byte
	quoted, in := false, false
	for i := 0; i <= len(row); i++ {
		if i == len(row) || (!in && row[i] == c.cp.Delimiter) {
			if idx == c.cp.KeyIndex {
				if !quoted && string(val) == c.cp.Null {
					return "", true, nil
				}
				return string(val), false, nil
			}
			idx++
			val, quoted = val[:0], false
			continue
		}
		ch := row[i]
		switch {
		case in && ch == c.cp.Escape && i+1 < len(row) && (row[i+1] == c.cp.Quote || (row[i+1] == c.cp.Escape && c.cp.Escape != c.cp.Quote)):
			i++
			val = append(val, row[i])
		case ch == c.cp.Quote:
			in, quoted = !in, true
		default:
			if idx == c.cp.KeyIndex {
				val = append(val, ch)
			}
		}
	}
	return "", false, c.rowError("pgshard: COPY row has no shard key field (column %d)", c.cp.KeyIndex+1)
}

// binarySignature starts COPY's binary format.
var binarySignature = []byte("PGCOPY\n\xff\r\n\x00")

// binaryRows routes the complete tuples at the start of b.
func (c *copySplitter) binaryRows(b []byte, eof bool) (int, error) {
	used := 0
	if !c.gotHeader {
		if len(b) < 19 {
			if eof {
				return 0, c.rowError("pgshard: COPY binary header is missing")
			}
			return 0, nil
		}
		if !bytes.Equal(b[:11], binarySignature) {
			return 0, c.rowError("pgshard: COPY file signature not recognized")
		}
		ext := int(binary.BigEndian.Uint32(b[15:19]))
		if len(b) < 19+ext {
			return 0, nil
		}
		c.gotHeader = true
		c.toAll(b[:19+ext])
		used = 19 + ext
	}
	for used < len(b) && !c.done {
		rest := b[used:]
		if len(rest) < 2 {
			break
		}
		n := int(int16(binary.BigEndian.Uint16(rest)))
		if n == -1 {
			c.done = true
			c.toAll(rest[:2])
			used += 2
			break
		}
		p := 2
		var key []byte
		null, complete := false, true
		for f := 0; f < n; f++ {
			if len(rest) < p+4 {
				complete = false
				break
			}
			l := int(int32(binary.BigEndian.Uint32(rest[p:])))
			p += 4
			if l < 0 {
				if f == c.cp.KeyIndex {
					null = true
				}
				continue
			}
			if len(rest) < p+l {
				complete = false
				break
			}
			if f == c.cp.KeyIndex {
				key = rest[p : p+l]
			}
			p += l
		}
		if !complete {
			break
		}
		c.line++
		if null || (key == nil && c.cp.KeyIndex >= n) {
			return used, c.rowError("pgshard: COPY row with a NULL or missing shard key cannot be placed on a shard")
		}
		h, ok := router.HashBinary(c.cp.KeyType, 0, key)
		if !ok {
			return used, c.rowError("pgshard: invalid binary shard key of %d bytes", len(key))
		}
		c.toLeg(c.owner(h), rest[:p])
		used += p
	}
	return used, nil
}
