//! Compact tables for routes at scale, shared by the RIB (`hagw-bgp`) and the
//! FIB reconciler (`hagw-kernel`).
//!
//! A router may hold one /32 per VM, 100k and more, and each of them passes
//! through both tables. What a route costs there is mostly what the containers
//! around it cost, so:
//! * [`PrefixMap`] keys an IPv4 prefix by 8 bytes (an `IpNet` takes 18, padded
//!   further in a hash slot) and hashes it with one multiply instead of
//!   SipHash, keyed per map so that a peer cannot choose colliding prefixes;
//! * [`Interner`] stores what many routes share (a path's attributes, a
//!   next-hop set) once, with a count, behind a 4-byte [`Id`].

mod hash;
mod intern;
mod map;

pub use hash::{FoldHasher, Seeded};
pub use intern::{Id, Interner};
pub use map::PrefixMap;

/// A `HashMap` with the keyed multiply hash of this crate.
pub type FastMap<K, V> = std::collections::HashMap<K, V, Seeded>;
