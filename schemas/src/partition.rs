//! Partitioning: which Kafka partition an event key goes to.
//!
//! Guarantee: the mapping is pinned and documented (docs/record-format.md), so every producer,
//! in any language, puts a key on the same partition. The key is hashed with XXH64 (seed 0) over
//! its UTF-8 bytes, and the hash is placed with jump consistent hash, computed exactly as Guava's
//! `Hashing.consistentHash(long, int)` does. All events of one key land on one partition, and
//! growing a topic from n to n + 1 partitions moves only the keys that go to the new partition.

use xxhash_rust::xxh64::xxh64;

/// Multiplier of the linear congruential generator that drives jump consistent hash.
const JUMP_MULTIPLIER: u64 = 2_862_933_555_777_941_757;

/// 2^31, the scale of the generator's output.
const TWO_POW_31: f64 = 2_147_483_648.0;

/// The partition of an event key in a topic with `partitions` partitions:
/// `jump_hash(key_hash(key), partitions)`.
///
/// # Panics
///
/// If `partitions` is 0 or above `i32::MAX` (Kafka counts partitions with an `i32`).
pub fn partition_for(key: &str, partitions: u32) -> i32 {
    let bucket = jump_hash(key_hash(key.as_bytes()), partitions);
    // jump_hash returns a bucket below `partitions`, which it checked is at most i32::MAX.
    i32::try_from(bucket).expect("a bucket below i32::MAX fits an i32")
}

/// The pinned, documented 64-bit key hash: XXH64 with seed 0 over the key's UTF-8 bytes.
pub fn key_hash(key: &[u8]) -> u64 {
    xxh64(key, 0)
}

/// Jump consistent hash (Lamping & Veach 2014): a bucket in `[0, buckets)`.
///
/// The arithmetic is exactly that of Guava's `Hashing.consistentHash(long, int)`, so a Java
/// producer can call Guava and agree with this function on every input. (Guava divides once
/// where the paper's C++ multiplies by a rounded quotient, and when the generator's 31-bit output
/// is all ones its `int` addition wraps and ends the jumps; both are reproduced here.)
///
/// # Panics
///
/// If `buckets` is 0 or above `i32::MAX`.
pub fn jump_hash(key: u64, buckets: u32) -> u32 {
    assert!(
        buckets >= 1 && buckets <= i32::MAX as u32,
        "jump_hash needs 1 to i32::MAX buckets, got {buckets}"
    );
    let buckets = buckets as i32;
    let mut state = key;
    let mut candidate: i32 = 0;
    loop {
        state = state.wrapping_mul(JUMP_MULTIPLIER).wrapping_add(1);
        // 31 bits always fit an i32; the + 1 wraps to i32::MIN as Java's int addition does.
        let draw = ((state >> 33) as i32).wrapping_add(1);
        let fraction = f64::from(draw) / TWO_POW_31;
        // Like Java's (int) cast: saturating, toward zero.
        let next = (f64::from(candidate + 1) / fraction) as i32;
        if next >= 0 && next < buckets {
            candidate = next;
        } else {
            return candidate as u32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guava's `Hashing.consistentHash(i, 100)` for i in 0..20.
    const GUAVA_100: [u32; 20] = [
        0, 55, 62, 8, 45, 59, 86, 97, 82, 59, 73, 37, 17, 56, 86, 21, 90, 37, 38, 83,
    ];

    /// XXH64 seed 0 of UTF-8 keys, computed with the reference C library (Python `xxhash`)
    /// and with Java's zero-allocation-hashing; also listed in docs/record-format.md.
    const PINNED_HASHES: [(&str, u64); 6] = [
        ("", 17_241_709_254_077_376_921),
        ("user-1", 11_633_770_265_628_666_856),
        ("user-2", 8_328_806_736_226_637_289),
        ("device:42", 3_054_255_330_812_812),
        ("10.0.0.1", 17_084_065_887_361_098_711),
        ("café", 11_115_070_494_344_764_010),
    ];

    /// Partitions of keys for 1, 2, 3, 8, 12 and 100 partitions, from Guava over Java's XXH64.
    const PINNED_PARTITIONS: [(&str, [i32; 6]); 6] = [
        ("", [0, 1, 2, 7, 7, 40]),
        ("user-1", [0, 1, 2, 6, 6, 17]),
        ("user-2", [0, 0, 0, 5, 5, 75]),
        ("device:42", [0, 1, 2, 2, 2, 36]),
        ("10.0.0.1", [0, 1, 2, 2, 9, 49]),
        ("café", [0, 0, 2, 7, 7, 60]),
    ];
    const PARTITION_COUNTS: [u32; 6] = [1, 2, 3, 8, 12, 100];

    #[test]
    fn test_jump_hash_matches_guava_vectors() {
        let got: Vec<u32> = (0..20u64).map(|key| jump_hash(key, 100)).collect();
        assert_eq!(got, GUAVA_100);
    }

    #[test]
    fn test_jump_hash_matches_guava_when_the_draw_wraps() {
        // This key's first generator state has all 31 top bits set: Guava's int addition wraps
        // and it answers 0 (checked with Guava 33.3.1); the paper's formula would answer 1 and 354.
        let key = 14_755_524_479_446_679_552u64;
        let state = key.wrapping_mul(JUMP_MULTIPLIER).wrapping_add(1);
        assert_eq!(state >> 33, (1 << 31) - 1);
        assert_eq!(jump_hash(key, 10), 0);
        assert_eq!(jump_hash(key, 1000), 0);
    }

    #[test]
    fn test_jump_hash_with_one_bucket_is_always_zero() {
        for key in (0..10_000u64)
            .map(|i| key_hash(&i.to_le_bytes()))
            .chain([0, u64::MAX])
        {
            assert_eq!(jump_hash(key, 1), 0);
        }
    }

    #[test]
    fn test_jump_hash_stays_in_range_for_extreme_bucket_counts() {
        for key in [0, 1, u64::MAX, key_hash(b"user-1")] {
            assert!(jump_hash(key, i32::MAX as u32) < i32::MAX as u32);
            assert!(jump_hash(key, 2) < 2);
        }
    }

    #[test]
    #[should_panic(expected = "1 to i32::MAX buckets")]
    fn test_jump_hash_refuses_zero_buckets() {
        jump_hash(7, 0);
    }

    #[test]
    #[should_panic(expected = "1 to i32::MAX buckets")]
    fn test_jump_hash_refuses_more_buckets_than_kafka_can_count() {
        jump_hash(7, i32::MAX as u32 + 1);
    }

    #[test]
    fn test_growing_buckets_moves_only_to_the_new_bucket_and_about_one_share() {
        const KEYS: usize = 100_000;
        let hashes: Vec<u64> = (0..KEYS)
            .map(|i| key_hash(format!("key-{i}").as_bytes()))
            .collect();
        for n in [1u32, 2, 3, 7, 10, 31, 100, 255] {
            let mut moved = 0usize;
            for &hash in &hashes {
                let before = jump_hash(hash, n);
                let after = jump_hash(hash, n + 1);
                if before != after {
                    assert_eq!(
                        after, n,
                        "a key moved between old buckets ({before} -> {after})"
                    );
                    moved += 1;
                }
            }
            let fraction = moved as f64 / KEYS as f64;
            let expected = 1.0 / f64::from(n + 1);
            // Six standard deviations of a binomial share, plus a little slack.
            let tolerance = 6.0 * (expected * (1.0 - expected) / KEYS as f64).sqrt() + 0.001;
            assert!(
                (fraction - expected).abs() <= tolerance,
                "{n} -> {} buckets moved {fraction}, expected {expected} +- {tolerance}",
                n + 1
            );
        }
    }

    #[test]
    fn test_jump_hash_spreads_keys_evenly() {
        const KEYS: usize = 120_000;
        const BUCKETS: u32 = 12;
        let mut counts = [0usize; BUCKETS as usize];
        for i in 0..KEYS {
            counts[jump_hash(key_hash(format!("user-{i}").as_bytes()), BUCKETS) as usize] += 1;
        }
        let expected = KEYS / BUCKETS as usize;
        for (bucket, &count) in counts.iter().enumerate() {
            assert!(
                count.abs_diff(expected) < expected / 20,
                "bucket {bucket} holds {count}, expected about {expected}"
            );
        }
    }

    #[test]
    fn test_key_hash_matches_pinned_xxh64_values() {
        for (key, expected) in PINNED_HASHES {
            assert_eq!(key_hash(key.as_bytes()), expected, "xxh64 of {key:?}");
        }
    }

    #[test]
    fn test_partition_for_matches_pinned_values() {
        for (key, expected) in PINNED_PARTITIONS {
            let got = PARTITION_COUNTS.map(|partitions| partition_for(key, partitions));
            assert_eq!(got, expected, "partitions of {key:?}");
        }
    }
}
