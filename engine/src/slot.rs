//! Key → slot mapping, bit-for-bit the one Redis Cluster uses
//! (`CRC16-XMODEM(key) mod 16384`, honouring `{hash tags}`), so that
//! cluster-aware Redis clients compute the same slot we do.
//!
//! This hash must agree across machines and versions: never change it.

/// Number of hash slots; fixed by the Redis Cluster specification.
pub const SLOT_COUNT: u16 = 16384;

const _: () = assert!(SLOT_COUNT.is_power_of_two());

/// CRC16/XMODEM (poly 0x1021, init 0, no reflection), the variant Redis uses.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// The part of `key` that is hashed: the content of the first `{...}` if it
/// is non-empty, otherwise the whole key (Redis Cluster spec, "hash tags").
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&b| b == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The slot that owns `key`, in `0..SLOT_COUNT`.
pub fn slot_of(key: &[u8]) -> u16 {
    let slot = crc16(hash_tag(key)) & (SLOT_COUNT - 1);
    debug_assert!(slot < SLOT_COUNT);
    slot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_check_value() {
        // The standard check value of CRC-16/XMODEM.
        assert_eq!(crc16(b"123456789"), 0x31C3);
    }

    #[test]
    fn slots_match_redis_cluster() {
        // Values from `CLUSTER KEYSLOT` on a real Redis.
        let cases: &[(&[u8], u16)] = &[
            (b"foo", 12182),
            (b"bar", 5061),
            (b"hello", 866),
            (b"", 0),
            (b"{user1000}.following", 3443),
            (b"{user1000}.followers", 3443),
        ];
        for (key, slot) in cases {
            assert_eq!(slot_of(key), *slot, "key {:?}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn hash_tag_rules() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"{user1000}.following", b"user1000"),
            (b"foo{}{bar}", b"foo{}{bar}"),
            (b"foo{{bar}}zap", b"{bar"),
            (b"foo{bar}{zap}", b"bar"),
            (b"nobraces", b"nobraces"),
            (b"open{only", b"open{only"),
        ];
        for (key, tag) in cases {
            assert_eq!(hash_tag(key), *tag);
        }
    }
}
