package shardmap

import "hash/fnv"

// Sequences of sharded tables. Every shard has its own copy of a bigserial
// or identity column's sequence; each shard draws from its own range of
// 2^48 values, picked by a hash of the shard's name (one of 2^15 slots), so
// values are unique across shards, also on a shard added later (its slot
// differs, or the shard is refused while two shards share one), though not
// dense. The proxy places a new table's sequences with it and the
// resharder a new shard's.

// SequenceSlotBits is the width of a shard's range of sequence values.
const SequenceSlotBits = 48

// SequenceSlot is the slot of shard's sequence range; two shards with the
// same slot would repeat values.
func SequenceSlot(shard string) int64 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(shard))
	return int64(h.Sum32() & (1<<(63-SequenceSlotBits) - 1))
}

// SequenceRange returns the MINVALUE and MAXVALUE of shard's sequences.
func SequenceRange(shard string) (lo, hi int64) {
	lo = SequenceSlot(shard)<<SequenceSlotBits + 1
	return lo, lo + 1<<SequenceSlotBits - 2
}
