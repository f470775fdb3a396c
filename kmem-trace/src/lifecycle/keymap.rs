//! A fast hasher for the lifecycle's integer keys (memcg addresses, memcg IDs,
//! cgroup ids). std's SipHash took a quarter of replay time (perf, see
//! docs/PERFORMANCE.md). The keys come from the kernel (slab addresses, IDs it
//! hands out), not from users, so flooding resistance is not needed; a folded
//! 64×64→128-bit multiply mixes every input bit into the low bits the table
//! indexes by (plain multiplication would leave page-aligned addresses in a
//! few buckets).

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

/// `HashMap` with [`KeyHasher`].
pub type KeyMap<K, V> = HashMap<K, V, BuildHasherDefault<KeyHasher>>;

/// Hasher for small integer keys (tuples of them too); byte strings work but
/// are not what it is for.
#[derive(Clone, Copy, Default)]
pub struct KeyHasher(u64);

/// Odd constant (from PCG's multiplier) for the folded multiply.
const K: u64 = 0x5851_f42d_4c95_7f2d;

#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl Hasher for KeyHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = fold(self.0 ^ v, K);
    }

    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // One more round so single-key hashes have well-mixed top bits too
        // (hashbrown's control bytes use the top 7).
        fold(self.0, K ^ 0x9e37_79b9_7f4a_7c15)
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, BuildHasherDefault};

    use super::*;

    fn h<T: std::hash::Hash>(v: T) -> u64 {
        BuildHasherDefault::<KeyHasher>::default().hash_one(v)
    }

    #[test]
    fn page_aligned_addresses_spread_over_low_bits() {
        // 4096 addresses 4 KiB apart must hit most of 4096 buckets.
        let mut buckets = std::collections::HashSet::new();
        for i in 0..4096u64 {
            buckets.insert(h(0xffff_8881_0000_0000u64 + i * 0x1000) & 4095);
        }
        assert!(buckets.len() > 2500, "{}", buckets.len());
    }

    #[test]
    fn tuple_keys_differ_by_each_part() {
        assert_ne!(h((4u32, 10u64)), h((5u32, 10u64)));
        assert_ne!(h((4u32, 10u64)), h((4u32, 11u64)));
        let mut m: KeyMap<(u32, u64), u8> = KeyMap::default();
        m.insert((1, 2), 3);
        assert_eq!(m.get(&(1, 2)), Some(&3));
    }
}
