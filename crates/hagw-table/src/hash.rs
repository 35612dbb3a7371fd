//! A keyed multiply-fold hash for small keys (prefixes, addresses).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// Builds [`FoldHasher`]s with two random keys drawn once per map.
///
/// std's SipHash costs more than the rest of a RIB update for a /32 key; one
/// 64x64->128 multiply folded to 64 bits mixes as well for such keys. The keys
/// are random so that a BGP peer cannot pick prefixes that collide.
#[derive(Clone, Debug)]
pub struct Seeded {
    k0: u64,
    k1: u64,
}

impl Default for Seeded {
    fn default() -> Self {
        let s = RandomState::new();
        Seeded {
            k0: s.hash_one(0x5eed_u64),
            // Odd, so that the multiply is a bijection.
            k1: s.hash_one(0x5eed_u64 + 1) | 1,
        }
    }
}

impl BuildHasher for Seeded {
    type Hasher = FoldHasher;

    fn build_hasher(&self) -> FoldHasher {
        FoldHasher {
            h: self.k0,
            k: self.k1,
        }
    }
}

/// The hasher of [`Seeded`].
#[derive(Clone, Debug)]
pub struct FoldHasher {
    h: u64,
    k: u64,
}

fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl Hasher for FoldHasher {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, x: u8) {
        self.write_u64(u64::from(x));
    }

    fn write_u16(&mut self, x: u16) {
        self.write_u64(u64::from(x));
    }

    fn write_u32(&mut self, x: u32) {
        self.write_u64(u64::from(x));
    }

    fn write_u64(&mut self, x: u64) {
        self.h = fold(self.h ^ x, self.k);
    }

    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }

    fn finish(&self) -> u64 {
        // One more round, so that the last word also reaches the low bits
        // the table indexes by.
        fold(self.h, self.k ^ 0x9e37_79b9_7f4a_7c15)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Consecutive /32 keys (the router's VMs) spread over the low bits a
    /// table indexes by, and over the high 7 bits it tags slots with.
    #[test]
    fn consecutive_keys_spread() {
        let s = Seeded::default();
        let mut low = [0u32; 256];
        let mut high = [0u32; 128];
        for i in 0..65536u64 {
            let h = s.hash_one((0x0a80_0000 + i) << 8 | 32);
            low[(h & 0xff) as usize] += 1;
            high[(h >> 57) as usize] += 1;
        }
        assert!(low.iter().all(|&n| (128..=384).contains(&n)), "{low:?}");
        assert!(high.iter().all(|&n| (256..=768).contains(&n)), "{high:?}");
    }

    #[test]
    fn maps_are_keyed_differently() {
        let (a, b) = (Seeded::default(), Seeded::default());
        assert_ne!(a.hash_one(1u64), b.hash_one(1u64));
    }
}
