package merge

import (
	"bytes"
	"math"
	"strconv"
)

// parseISOTemporal parses the text output of date, timestamp and
// timestamptz under DateStyle ISO into days (date) or microseconds since
// an epoch (timestamps; timestamptz converted to UTC). It accepts
// "infinity" and "-infinity", years beyond 9999 and the " BC" suffix.
func parseISOTemporal(oid uint32, b []byte) (int64, bool) {
	switch string(b) {
	case "infinity":
		return math.MaxInt64, true
	case "-infinity":
		return math.MinInt64, true
	}
	bc := false
	if bytes.HasSuffix(b, []byte(" BC")) {
		bc = true
		b = b[:len(b)-3]
	}
	// Date part: Y+-MM-DD
	dash := bytes.IndexByte(b, '-')
	if dash < 4 || len(b) < dash+6 || b[dash+3] != '-' {
		return 0, false
	}
	year, ok1 := atoi(b[:dash])
	month, ok2 := atoi(b[dash+1 : dash+3])
	day, ok3 := atoi(b[dash+4 : dash+6])
	if !ok1 || !ok2 || !ok3 {
		return 0, false
	}
	if bc {
		year = 1 - year
	}
	days := daysFromCivil(year, month, day)
	rest := b[dash+6:]
	if oid == OIDDate {
		return days, len(rest) == 0
	}
	// Time part: " HH:MM:SS[.ffffff]"
	if len(rest) < 9 || rest[0] != ' ' || rest[3] != ':' || rest[6] != ':' {
		return 0, false
	}
	hh, ok1 := atoi(rest[1:3])
	mm, ok2 := atoi(rest[4:6])
	ss, ok3 := atoi(rest[7:9])
	if !ok1 || !ok2 || !ok3 {
		return 0, false
	}
	usec := ((hh*60+mm)*60 + ss) * 1e6
	rest = rest[9:]
	if len(rest) > 0 && rest[0] == '.' {
		i := 1
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		frac := rest[1:i]
		if len(frac) == 0 || len(frac) > 6 {
			return 0, false
		}
		f, _ := atoi(frac)
		for n := len(frac); n < 6; n++ {
			f *= 10
		}
		usec += f
		rest = rest[i:]
	}
	if oid == OIDTimestamp {
		if len(rest) != 0 {
			return 0, false
		}
		return days*86400e6 + usec, true
	}
	// Zone offset: ±HH[:MM[:SS]]
	if len(rest) < 3 || (rest[0] != '+' && rest[0] != '-') {
		return 0, false
	}
	sign := int64(1)
	if rest[0] == '-' {
		sign = -1
	}
	var off int64
	parts := bytes.Split(rest[1:], []byte(":"))
	if len(parts) > 3 {
		return 0, false
	}
	for i, p := range parts {
		v, ok := atoi(p)
		if !ok || len(p) != 2 {
			return 0, false
		}
		off += v * []int64{3600, 60, 1}[i]
	}
	return days*86400e6 + usec - sign*off*1e6, true
}

func atoi(b []byte) (int64, bool) {
	if len(b) == 0 {
		return 0, false
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseInt(string(b), 10, 64)
	return v, err == nil
}

// daysFromCivil returns the days since 2000-01-01 of a proleptic
// Gregorian date with astronomical year numbering (Howard Hinnant's
// algorithm).
func daysFromCivil(y, m, d int64) int64 {
	if m <= 2 {
		y--
	}
	era := y / 400
	if y < 0 && y%400 != 0 {
		era--
	}
	yoe := y - era*400
	mp := (m + 9) % 12
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468 - 10957
}
