package shardmap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"
)

// This file ports PostgreSQL 15's extended (64-bit, seeded) hash functions for
// the shard key types pgshard supports. The ring position of a key is the value
// PostgreSQL itself computes in SQL with seed 0:
//
//	smallint, integer, bigint  hashint8extended(v::bigint, 0)
//	text, varchar              hashtextextended(v, 0)   (deterministic collation)
//	uuid                       uuid_hash_extended(v, 0)
//
// The sources are src/common/hashfn.c (hash_bytes_extended,
// hash_bytes_uint32_extended: Bob Jenkins' lookup3 mix/final) and
// src/backend/access/hash/hashfunc.c, src/backend/utils/adt/uuid.c. PostgreSQL
// returns the uint64 result as a bigint; we return the same bits as int64.
//
// PostgreSQL reads the key in 32-bit words in native byte order, so its results
// depend on the server's endianness. This port reproduces the little-endian
// result (x86-64, arm64): the only servers pgshard targets. The aligned and
// unaligned code paths of hash_bytes_extended give equal results on a
// little-endian machine, so one loop covers both.

// seedless initial value of a, b and c in lookup3 as PostgreSQL sets it up:
// 0x9e3779b9 + len + 3923095.
const lookup3Init = 0x9e3779b9 + 3923095

// mix is lookup3's reversible mix of three 32-bit values.
func mix(a, b, c uint32) (uint32, uint32, uint32) {
	a -= c
	a ^= bits.RotateLeft32(c, 4)
	c += b
	b -= a
	b ^= bits.RotateLeft32(a, 6)
	a += c
	c -= b
	c ^= bits.RotateLeft32(b, 8)
	b += a
	a -= c
	a ^= bits.RotateLeft32(c, 16)
	c += b
	b -= a
	b ^= bits.RotateLeft32(a, 19)
	a += c
	c -= b
	c ^= bits.RotateLeft32(b, 4)
	b += a
	return a, b, c
}

// final is lookup3's final mixing of (a, b, c) into c (and b).
func final(a, b, c uint32) (uint32, uint32, uint32) {
	c ^= b
	c -= bits.RotateLeft32(b, 14)
	a ^= c
	a -= bits.RotateLeft32(c, 11)
	b ^= a
	b -= bits.RotateLeft32(a, 25)
	c ^= b
	c -= bits.RotateLeft32(b, 16)
	a ^= c
	a -= bits.RotateLeft32(c, 4)
	b ^= a
	b -= bits.RotateLeft32(a, 14)
	c ^= b
	c -= bits.RotateLeft32(b, 24)
	return a, b, c
}

// hashBytesExtended is PostgreSQL's hash_bytes_extended(k, len(k), seed)
// (alias hash_any_extended) on a little-endian machine.
func hashBytesExtended(k []byte, seed uint64) uint64 {
	a := uint32(lookup3Init) + uint32(len(k))
	b, c := a, a
	if seed != 0 {
		// The seed is hashed as a 12-byte chunk padded with four zero bytes.
		a += uint32(seed >> 32)
		b += uint32(seed)
		a, b, c = mix(a, b, c)
	}
	for len(k) >= 12 {
		a += binary.LittleEndian.Uint32(k[0:])
		b += binary.LittleEndian.Uint32(k[4:])
		c += binary.LittleEndian.Uint32(k[8:])
		a, b, c = mix(a, b, c)
		k = k[12:]
	}
	// The last 0..11 bytes; the lowest byte of c is reserved for the length,
	// so c takes bytes 8..10 shifted up by one byte.
	switch len(k) {
	case 11:
		c += uint32(k[10]) << 24
		fallthrough
	case 10:
		c += uint32(k[9]) << 16
		fallthrough
	case 9:
		c += uint32(k[8]) << 8
		fallthrough
	case 8:
		b += uint32(k[7]) << 24
		fallthrough
	case 7:
		b += uint32(k[6]) << 16
		fallthrough
	case 6:
		b += uint32(k[5]) << 8
		fallthrough
	case 5:
		b += uint32(k[4])
		fallthrough
	case 4:
		a += uint32(k[3]) << 24
		fallthrough
	case 3:
		a += uint32(k[2]) << 16
		fallthrough
	case 2:
		a += uint32(k[1]) << 8
		fallthrough
	case 1:
		a += uint32(k[0])
	}
	_, b, c = final(a, b, c)
	return uint64(b)<<32 | uint64(c)
}

// hashStringExtended is hashBytesExtended over the bytes of s, without
// converting s to a []byte (which could allocate).
func hashStringExtended(s string, seed uint64) uint64 {
	a := uint32(lookup3Init) + uint32(len(s))
	b, c := a, a
	if seed != 0 {
		a += uint32(seed >> 32)
		b += uint32(seed)
		a, b, c = mix(a, b, c)
	}
	for len(s) >= 12 {
		a += le32(s[0:])
		b += le32(s[4:])
		c += le32(s[8:])
		a, b, c = mix(a, b, c)
		s = s[12:]
	}
	switch len(s) {
	case 11:
		c += uint32(s[10]) << 24
		fallthrough
	case 10:
		c += uint32(s[9]) << 16
		fallthrough
	case 9:
		c += uint32(s[8]) << 8
		fallthrough
	case 8:
		b += uint32(s[7]) << 24
		fallthrough
	case 7:
		b += uint32(s[6]) << 16
		fallthrough
	case 6:
		b += uint32(s[5]) << 8
		fallthrough
	case 5:
		b += uint32(s[4])
		fallthrough
	case 4:
		a += uint32(s[3]) << 24
		fallthrough
	case 3:
		a += uint32(s[2]) << 16
		fallthrough
	case 2:
		a += uint32(s[1]) << 8
		fallthrough
	case 1:
		a += uint32(s[0])
	}
	_, b, c = final(a, b, c)
	return uint64(b)<<32 | uint64(c)
}

func le32(s string) uint32 {
	return uint32(s[0]) | uint32(s[1])<<8 | uint32(s[2])<<16 | uint32(s[3])<<24
}

// hashUint32Extended is PostgreSQL's hash_bytes_uint32_extended(k, seed)
// (alias hash_uint32_extended).
func hashUint32Extended(k uint32, seed uint64) uint64 {
	a := uint32(lookup3Init) + 4
	b, c := a, a
	if seed != 0 {
		a += uint32(seed >> 32)
		b += uint32(seed)
		a, b, c = mix(a, b, c)
	}
	a += k
	_, b, c = final(a, b, c)
	return uint64(b)<<32 | uint64(c)
}

// HashInt64 returns hashint8extended(v, 0): the ring position of an integer
// shard key. smallint and integer keys hash like their bigint value
// (PostgreSQL folds the high half into the low half so that
// hashint2extended, hashint4extended and hashint8extended agree on equal
// values), so callers widen any integer key to int64 first.
func HashInt64(v int64) int64 {
	lohalf := uint32(v)
	hihalf := uint32(v >> 32)
	if v >= 0 {
		lohalf ^= hihalf
	} else {
		lohalf ^= ^hihalf
	}
	return int64(hashUint32Extended(lohalf, 0))
}

// hashInt32 is hashint4extended(v, 0) (and hashint2extended for int16
// values): hash_uint32_extended of the value's 32-bit pattern. It exists to
// test that HashInt64 folds integer widths exactly as PostgreSQL does.
func hashInt32(v int32) int64 {
	return int64(hashUint32Extended(uint32(v), 0))
}

// HashText returns hashtextextended(s, 0) under a deterministic collation:
// the hash of the bytes of s as the server stores them (UTF-8 for a UTF8
// database). Nondeterministic (ICU) collations hash a sort key instead and
// are not supported as shard keys.
func HashText(s string) int64 {
	return int64(hashStringExtended(s, 0))
}

// HashUUID returns uuid_hash_extended(u, 0): the hash of the 16 bytes of the
// UUID in their canonical (network, text-form) order.
func HashUUID(u [16]byte) int64 {
	return int64(hashBytesExtended(u[:], 0))
}

// KeyType is the SQL type family of a shard key column.
type KeyType int

// Key types. The zero value is not a valid KeyType.
const (
	KeyInt  KeyType = iota + 1 // smallint, integer, bigint
	KeyText                    // text, varchar, char varying
	KeyUUID                    // uuid
)

// ErrUnknownKeyType reports a type name that is not a supported shard key type.
var ErrUnknownKeyType = errors.New("shardmap: unsupported shard key type")

// ErrInvalidKey reports a key whose text form does not parse as its type.
var ErrInvalidKey = errors.New("shardmap: invalid shard key value")

// String returns the canonical SQL name of the key type family.
func (t KeyType) String() string {
	switch t {
	case KeyInt:
		return "bigint"
	case KeyText:
		return "text"
	case KeyUUID:
		return "uuid"
	}
	return "KeyType(" + strconv.Itoa(int(t)) + ")"
}

// SQLHash returns the SQL expression computing the ring position of the
// key column col (an identifier, quoted as needed by the caller), the same
// value HashKey computes: e.g. "hashint8extended(user_id::bigint, 0)".
func (t KeyType) SQLHash(col string) string {
	switch t {
	case KeyText:
		return "hashtextextended(" + col + "::text, 0)"
	case KeyUUID:
		return "uuid_hash_extended(" + col + ", 0)"
	}
	return "hashint8extended(" + col + "::bigint, 0)"
}

// RangesSQL returns a boolean SQL expression true exactly when expr (a
// bigint ring position, e.g. from KeyType.SQLHash) lies in one of ranges;
// "false" when there are none.
func RangesSQL(ranges []Range, expr string) string {
	if len(ranges) == 0 {
		return "false"
	}
	parts := make([]string, len(ranges))
	for i, g := range ranges {
		parts[i] = g.SQL(expr)
	}
	if len(parts) == 1 {
		return parts[0]
	}
	return "(" + strings.Join(parts, " OR ") + ")"
}

// ParseKeyType maps a SQL type name (as written in DDL or returned by
// format_type, case-insensitive) to its KeyType.
func ParseKeyType(name string) (KeyType, error) {
	switch strings.ToLower(strings.TrimSpace(name)) {
	case "smallint", "int2", "integer", "int", "int4", "bigint", "int8":
		return KeyInt, nil
	case "text", "varchar", "character varying":
		return KeyText, nil
	case "uuid":
		return KeyUUID, nil
	}
	return 0, fmt.Errorf("parse key type %q: %w", name, ErrUnknownKeyType)
}

// HashKey parses s as the text form of a key of type t (as PostgreSQL's input
// function would accept it) and returns its ring position.
func HashKey(t KeyType, s string) (int64, error) {
	switch t {
	case KeyInt:
		v, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("hash key: bigint %q: %w", s, ErrInvalidKey)
		}
		return HashInt64(v), nil
	case KeyText:
		return HashText(s), nil
	case KeyUUID:
		u, err := ParseUUID(s)
		if err != nil {
			return 0, fmt.Errorf("hash key: %w", err)
		}
		return HashUUID(u), nil
	}
	return 0, fmt.Errorf("hash key: %v: %w", t, ErrUnknownKeyType)
}

// ParseUUID parses the text forms PostgreSQL's uuid_in accepts: 32 hex digits,
// optionally in braces, optionally with a hyphen after any group of four
// digits (the canonical form is 8-4-4-4-12).
func ParseUUID(s string) ([16]byte, error) {
	u, ok := ParseUUIDText(s)
	if !ok {
		return u, fmt.Errorf("uuid %q: %w", s, ErrInvalidKey)
	}
	return u, nil
}

// ParseUUIDText is ParseUUID without allocating: ok is false where
// ParseUUID fails. The router reads keys with it on its no-allocation path.
func ParseUUIDText[T string | []byte](s T) ([16]byte, bool) {
	var u [16]byte
	if len(s) > 0 && s[0] == '{' {
		if s[len(s)-1] != '}' {
			return u, false
		}
		s = s[1 : len(s)-1]
	}
	n := 0
	for i := 0; i < len(s); {
		if n == 32 || i+1 >= len(s) {
			return u, false
		}
		hi, ok1 := unhex(s[i])
		lo, ok2 := unhex(s[i+1])
		if !ok1 || !ok2 {
			return u, false
		}
		u[n/2] = hi<<4 | lo
		n += 2
		i += 2
		if i < len(s) && s[i] == '-' && n%4 == 0 && n < 32 {
			i++
			if i == len(s) {
				return u, false
			}
		}
	}
	return u, n == 32
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
