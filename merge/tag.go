package merge

import (
	"bytes"
	"strconv"
)

// CombineTags adds up the command tags of one statement run on several
// shards: "UPDATE n", "DELETE n", "INSERT 0 n", "SELECT n", "MERGE n",
// "COPY n", "FETCH n", "MOVE n" become one tag with the total count. Tags
// without a count (e.g. "CREATE TABLE") must all be equal and are
// returned once. Differing commands, or INSERT tags with a non-zero OID,
// are refused (0A000): never a silently wrong count.
func CombineTags(tags [][]byte) ([]byte, error) {
	if len(tags) == 0 {
		return nil, unsupported("merge: no command tags to combine")
	}
	var verb []byte
	var total int64
	counted := false
	for i, t := range tags {
		v, n, hasCount, err := splitTag(t)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			verb, counted = v, hasCount
		} else if !bytes.Equal(v, verb) || hasCount != counted {
			return nil, unsupported("merge: shards answered %q and %q", tags[0], t)
		}
		if hasCount {
			var ok bool
			if total, ok = addInt64(total, n); !ok || total < 0 {
				return nil, errBigintRange
			}
		}
	}
	if !counted {
		return append([]byte(nil), tags[0]...), nil
	}
	out := append([]byte(nil), verb...)
	out = append(out, ' ')
	return strconv.AppendInt(out, total, 10), nil
}

// splitTag splits "INSERT 0 5" into "INSERT 0", 5.
func splitTag(t []byte) (verb []byte, n int64, hasCount bool, err error) {
	sp := bytes.LastIndexByte(t, ' ')
	if sp < 0 {
		return t, 0, false, nil
	}
	n, ok := parseInt(t[sp+1:])
	if !ok || n < 0 {
		return t, 0, false, nil
	}
	verb = t[:sp]
	switch string(verb) {
	case "INSERT 0", "UPDATE", "DELETE", "SELECT", "MERGE", "COPY", "FETCH", "MOVE":
		return verb, n, true, nil
	}
	if bytes.HasPrefix(verb, []byte("INSERT ")) {
		return nil, 0, false, unsupported("merge: cannot combine %q (an INSERT with an OID)", t)
	}
	return t, 0, false, nil
}
