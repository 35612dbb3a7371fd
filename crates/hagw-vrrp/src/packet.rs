//! The VRRPv3 advertisement (RFC 9568 §5.1-§5.2).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Type  | Virtual Rtr ID|   Priority    |IPvX Addr Count|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |(rsvd) |     Max Adver Int     |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                     IPvX Address(es) ...                      |
//! ```
//!
//! [`Advertisement::decode`] applies every RFC 9568 §7.1 reception check that
//! needs no instance state (version, type, length, checksum, a nonzero
//! interval); the TTL, the VRID and the sender live in [`crate::instance`].
//!
//! # The checksum (RFC 9568 §5.2.8)
//!
//! RFC 9568 settles what RFC 5798 left ambiguous: for IPv4 the checksum
//! covers only the VRRP message (Version through the last address); for IPv6
//! it also covers the RFC 8200 §8.1 pseudo-header (source, destination,
//! upper-layer length, next header 112). That is [`ChecksumMode::Rfc9568`].
//!
//! RFC 5798 pointed both families at the IPv6 pseudo-header, and the open
//! source implementations read that as "IPv4 gets the IPv4 pseudo-header"
//! (source, destination, zero, protocol 112, length): keepalived does so
//! unless `v3_checksum_as_v2` is set (its manual says that option is needed
//! for RFC 9568 compliance; `vrrp.c` builds an `ipv4_phdr` whose destination
//! is the real one, so a unicast peer's address; old releases summed
//! 224.0.0.18 there, which `old_unicast_checksum` still speaks), FRR unless
//! `no checksum-with-ipv4-pseudoheader`, and Wireshark verifies it that way.
//! Cisco and Juniper use the message-only form. [`ChecksumMode::PseudoHeader`]
//! is that IPv4 pseudo-header form, for talking to keepalived and FRR with
//! their defaults. The two modes differ only for IPv4.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

use crate::PROTOCOL;

/// The only version this crate speaks (RFC 9568 §5.2.1).
pub const VERSION: u8 = 3;
/// Type 1, ADVERTISEMENT: the only type defined (RFC 9568 §5.2.2).
pub const TYPE_ADVERTISEMENT: u8 = 1;
/// The fixed part, before the addresses.
pub const HEADER_LEN: usize = 8;
/// Max Adver Int is 12 bits of centiseconds (RFC 9568 §5.2.7).
pub const MAX_INTERVAL_CS: u16 = 0x0fff;

/// The address family of a virtual router: it decides the address size and
/// the checksum rule, and one instance never mixes the two (RFC 9568 §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Bytes per address in the advertisement.
    pub fn addr_len(self) -> usize {
        match self {
            Family::V4 => 4,
            Family::V6 => 16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How the IPv4 checksum is computed (see the module docs); IPv6 always
/// includes its pseudo-header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ChecksumMode {
    /// RFC 9568 §5.2.8: IPv4 over the VRRP message alone.
    #[default]
    Rfc9568,
    /// IPv4 with the IPv4 pseudo-header, as keepalived and FRR send by default.
    PseudoHeader,
}

/// A decoded (or to-be-encoded) advertisement.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Advertisement {
    pub vrid: u8,
    /// 255 from the address owner, 0 from a Master that is leaving.
    pub priority: u8,
    /// Max Adver Int in centiseconds, 12 bits.
    pub max_advert_interval_cs: u16,
    /// All of the advertisement's family.
    pub addresses: Vec<IpAddr>,
}

/// Why a received advertisement was discarded by the codec (RFC 9568 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("packet of {0} bytes is shorter than the 8-byte header")]
    Truncated(usize),
    #[error("version {0} is not 3")]
    BadVersion(u8),
    #[error("type {0} is not 1 (ADVERTISEMENT)")]
    BadType(u8),
    #[error("the source {src} or destination {dst} is not {family}")]
    FamilyMismatch {
        family: Family,
        src: IpAddr,
        dst: IpAddr,
    },
    #[error("IPvX Addr Count is 0")]
    NoAddresses,
    #[error("{count} {family} addresses need {expected} bytes, the packet has {got}")]
    BadAddressCount {
        count: u8,
        family: Family,
        expected: usize,
        got: usize,
    },
    #[error("checksum {got:#06x}, expected {expected:#06x}")]
    ChecksumMismatch { expected: u16, got: u16 },
    #[error("Max Adver Int is 0")]
    ZeroInterval,
    #[error("the first IPv6 address {0} is not link-local")]
    FirstNotLinkLocal(Ipv6Addr),
}

/// Why an advertisement cannot be put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error("{0} addresses: an advertisement carries 1 to 255")]
    AddressCount(usize),
    #[error("Max Adver Int {0} cs is outside 1..=4095")]
    Interval(u16),
    #[error("{addr} is not of the family of the source {src}")]
    FamilyMismatch { src: IpAddr, addr: IpAddr },
}

/// One's complement sum of `b` as 16-bit big-endian words (RFC 1071), an
/// odd last byte padded with zero.
fn sum(mut acc: u64, b: &[u8]) -> u64 {
    let mut words = b.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // The loop leaves at most 16 bits.
    !(acc as u16)
}

/// The sum of the pseudo-header `mode` and the family call for (zero when
/// there is none). `len` is the VRRP message length.
fn pseudo_sum(src: IpAddr, dst: IpAddr, len: usize, mode: ChecksumMode) -> u64 {
    match (src, dst) {
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            // RFC 8200 §8.1: 32-bit upper-layer length, 3 zero bytes, next header.
            let len = u32::try_from(len).unwrap_or(u32::MAX);
            let acc = sum(sum(0, &s.octets()), &d.octets());
            sum(acc, &len.to_be_bytes()) + u64::from(PROTOCOL)
        }
        (IpAddr::V4(s), IpAddr::V4(d)) if mode == ChecksumMode::PseudoHeader => {
            let len = u16::try_from(len).unwrap_or(u16::MAX);
            let acc = sum(sum(0, &s.octets()), &d.octets());
            sum(acc, &len.to_be_bytes()) + u64::from(PROTOCOL)
        }
        _ => 0,
    }
}

/// The checksum for the VRRP message `msg` sent from `src` to `dst`; the
/// Checksum field (bytes 6-7) is taken as zero whatever it holds.
pub fn checksum(msg: &[u8], src: IpAddr, dst: IpAddr, mode: ChecksumMode) -> u16 {
    let mut acc = pseudo_sum(src, dst, msg.len(), mode);
    acc = sum(acc, msg.get(..6).unwrap_or(msg));
    acc = sum(acc, msg.get(8..).unwrap_or(&[]));
    fold(acc)
}

impl Advertisement {
    /// Decodes the IP payload `buf` of a packet from `src` to `dst` (the
    /// destination goes into the IPv6 and the PseudoHeader checksums).
    /// Checks, in order: the header is there, version 3, type 1, `src` and
    /// `dst` are `family`, a nonzero address count (erratum 8299) that
    /// matches the length exactly, the checksum, a nonzero Max Adver Int
    /// (erratum 8301) and, for IPv6, a link-local first address (§5.2.9,
    /// erratum 8300). The reserved bits are ignored.
    pub fn decode(
        buf: &[u8],
        family: Family,
        src: IpAddr,
        dst: IpAddr,
        mode: ChecksumMode,
    ) -> Result<Advertisement, DecodeError> {
        let Some(h) = buf.get(..HEADER_LEN) else {
            return Err(DecodeError::Truncated(buf.len()));
        };
        let version = h[0] >> 4;
        if version != VERSION {
            return Err(DecodeError::BadVersion(version));
        }
        let kind = h[0] & 0x0f;
        if kind != TYPE_ADVERTISEMENT {
            return Err(DecodeError::BadType(kind));
        }
        if Family::of(src) != family || Family::of(dst) != family {
            return Err(DecodeError::FamilyMismatch { family, src, dst });
        }
        let count = h[3];
        if count == 0 {
            return Err(DecodeError::NoAddresses);
        }
        let expected = HEADER_LEN + usize::from(count) * family.addr_len();
        if buf.len() != expected {
            return Err(DecodeError::BadAddressCount {
                count,
                family,
                expected,
                got: buf.len(),
            });
        }
        let got = u16::from_be_bytes([h[6], h[7]]);
        let want = checksum(buf, src, dst, mode);
        if got != want {
            return Err(DecodeError::ChecksumMismatch {
                expected: want,
                got,
            });
        }
        let interval = u16::from_be_bytes([h[4], h[5]]) & MAX_INTERVAL_CS;
        if interval == 0 {
            return Err(DecodeError::ZeroInterval);
        }
        let body = buf.get(HEADER_LEN..).unwrap_or(&[]);
        let addresses = body
            .chunks_exact(family.addr_len())
            .map(|a| match family {
                Family::V4 => {
                    let mut o = [0u8; 4];
                    o.copy_from_slice(a);
                    IpAddr::V4(Ipv4Addr::from(o))
                }
                Family::V6 => {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(a);
                    IpAddr::V6(Ipv6Addr::from(o))
                }
            })
            .collect::<Vec<_>>();
        if let Some(IpAddr::V6(first)) = addresses.first() {
            if !first.is_unicast_link_local() {
                return Err(DecodeError::FirstNotLinkLocal(*first));
            }
        }
        Ok(Advertisement {
            vrid: h[1],
            priority: h[2],
            max_advert_interval_cs: interval,
            addresses,
        })
    }

    /// The wire form sent from `src` to `dst`, checksum included. Every
    /// address must be of `src`'s family (so must `dst`, or the checksum
    /// would be wrong: also refused).
    pub fn encode(
        &self,
        src: IpAddr,
        dst: IpAddr,
        mode: ChecksumMode,
    ) -> Result<Vec<u8>, EncodeError> {
        let count = u8::try_from(self.addresses.len())
            .ok()
            .filter(|&c| c != 0)
            .ok_or(EncodeError::AddressCount(self.addresses.len()))?;
        let iv = self.max_advert_interval_cs;
        if iv == 0 || iv > MAX_INTERVAL_CS {
            return Err(EncodeError::Interval(iv));
        }
        let family = Family::of(src);
        if let Some(&addr) = std::iter::once(&dst)
            .chain(&self.addresses)
            .find(|a| Family::of(**a) != family)
        {
            return Err(EncodeError::FamilyMismatch { src, addr });
        }
        let mut b = Vec::with_capacity(HEADER_LEN + usize::from(count) * family.addr_len());
        b.extend_from_slice(&[
            (VERSION << 4) | TYPE_ADVERTISEMENT,
            self.vrid,
            self.priority,
            count,
        ]);
        b.extend_from_slice(&iv.to_be_bytes());
        b.extend_from_slice(&[0, 0]);
        for a in &self.addresses {
            match a {
                IpAddr::V4(a) => b.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => b.extend_from_slice(&a.octets()),
            }
        }
        let ck = checksum(&b, src, dst, mode);
        b[6..8].copy_from_slice(&ck.to_be_bytes());
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().unwrap_or(Ipv4Addr::UNSPECIFIED))
    }
    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse().unwrap_or(Ipv6Addr::UNSPECIFIED))
    }
    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0))
            .collect()
    }

    /// keepalived's sample: VRID 51, priority 100, 1 s, VIP 192.168.1.100.
    fn sample_v4() -> Advertisement {
        Advertisement {
            vrid: 51,
            priority: 100,
            max_advert_interval_cs: 100,
            addresses: vec![v4("192.168.1.100")],
        }
    }

    fn sample_v6() -> Advertisement {
        Advertisement {
            vrid: 7,
            priority: 200,
            max_advert_interval_cs: 25,
            addresses: vec![v6("fe80::1"), v6("2001:db8::1")],
        }
    }

    const SRC4: &str = "192.168.1.1";
    const GROUP4: &str = "224.0.0.18";

    // Known answers, laid out by hand from RFC 9568 §5.1 and summed with an
    // independent RFC 1071 script (not this code). By hand for the first:
    // 0x3133 + 0x6401 + 0x0064 + 0xc0a8 + 0x0164 = 0x157a4, folded 0x57a5,
    // complemented 0xa85a.
    const KAT_V4_RFC9568: &str = "313364010064a85ac0a80164";
    // The same message with the IPv4 pseudo-header 192.168.1.1 > 224.0.0.18,
    // 0, 112, length 12 (keepalived's and FRR's default).
    const KAT_V4_PSEUDO: &str = "3133640100640622c0a80164";
    // fe80::a > ff02::12, VRID 7, priority 200, 250 ms, two addresses.
    const KAT_V6: &str =
        "3107c8020019dc68fe80000000000000000000000000000120010db8000000000000000000000001";

    #[test]
    fn encodes_the_known_answers() {
        let (src, dst) = (v4(SRC4), v4(GROUP4));
        let rfc = sample_v4().encode(src, dst, ChecksumMode::Rfc9568);
        assert_eq!(rfc, Ok(hex(KAT_V4_RFC9568)));
        let ph = sample_v4().encode(src, dst, ChecksumMode::PseudoHeader);
        assert_eq!(ph, Ok(hex(KAT_V4_PSEUDO)));
        let (src6, dst6) = (v6("fe80::a"), v6("ff02::12"));
        for mode in [ChecksumMode::Rfc9568, ChecksumMode::PseudoHeader] {
            assert_eq!(sample_v6().encode(src6, dst6, mode), Ok(hex(KAT_V6)));
        }
    }

    #[test]
    fn decodes_the_known_answers() {
        let (src, dst) = (v4(SRC4), v4(GROUP4));
        let d = |h: &str, mode| Advertisement::decode(&hex(h), Family::V4, src, dst, mode);
        assert_eq!(d(KAT_V4_RFC9568, ChecksumMode::Rfc9568), Ok(sample_v4()));
        assert_eq!(
            d(KAT_V4_PSEUDO, ChecksumMode::PseudoHeader),
            Ok(sample_v4())
        );
        // The interop trap: each mode rejects the other's IPv4 packets.
        assert_eq!(
            d(KAT_V4_PSEUDO, ChecksumMode::Rfc9568),
            Err(DecodeError::ChecksumMismatch {
                expected: 0xa85a,
                got: 0x0622
            })
        );
        assert_eq!(
            d(KAT_V4_RFC9568, ChecksumMode::PseudoHeader),
            Err(DecodeError::ChecksumMismatch {
                expected: 0x0622,
                got: 0xa85a
            })
        );
        let p6 = Advertisement::decode(
            &hex(KAT_V6),
            Family::V6,
            v6("fe80::a"),
            v6("ff02::12"),
            ChecksumMode::Rfc9568,
        );
        assert_eq!(p6, Ok(sample_v6()));
    }

    #[test]
    fn the_pseudo_header_binds_the_addresses() {
        let adv = sample_v4();
        let wire = adv.encode(v4(SRC4), v4(GROUP4), ChecksumMode::PseudoHeader);
        let wire = wire.unwrap_or_default();
        // Another source or a unicast destination changes the sum...
        for (s, d) in [("192.168.1.2", GROUP4), (SRC4, "192.168.1.2")] {
            let r =
                Advertisement::decode(&wire, Family::V4, v4(s), v4(d), ChecksumMode::PseudoHeader);
            assert!(
                matches!(r, Err(DecodeError::ChecksumMismatch { .. })),
                "{s} > {d}"
            );
        }
        // ...but not without the pseudo-header.
        let wire = adv.encode(v4(SRC4), v4(GROUP4), ChecksumMode::Rfc9568);
        let wire = wire.unwrap_or_default();
        let r = Advertisement::decode(
            &wire,
            Family::V4,
            v4("10.9.9.9"),
            v4("10.8.8.8"),
            ChecksumMode::Rfc9568,
        );
        assert_eq!(r, Ok(adv));
        // IPv6 always has it, in both modes.
        let wire = sample_v6().encode(v6("fe80::a"), v6("ff02::12"), ChecksumMode::Rfc9568);
        let wire = wire.unwrap_or_default();
        let r = Advertisement::decode(
            &wire,
            Family::V6,
            v6("fe80::b"),
            v6("ff02::12"),
            ChecksumMode::Rfc9568,
        );
        assert!(
            matches!(r, Err(DecodeError::ChecksumMismatch { .. })),
            "{r:?}"
        );
    }

    #[test]
    fn round_trips_both_families_and_modes() {
        let cases = [
            (Family::V4, v4("10.0.0.1"), v4(GROUP4)),
            (Family::V4, v4("10.0.0.1"), v4("10.0.0.2")),
            (Family::V6, v6("fe80::1"), v6("ff02::12")),
            (Family::V6, v6("fe80::1"), v6("fe80::2")),
        ];
        for (family, src, dst) in cases {
            for mode in [ChecksumMode::Rfc9568, ChecksumMode::PseudoHeader] {
                for (prio, iv, n) in [(0u8, 1u16, 1usize), (100, 100, 3), (255, 4095, 255)] {
                    let addresses = (0..n)
                        .map(|i| match family {
                            Family::V4 => IpAddr::V4(Ipv4Addr::new(10, 1, (i >> 8) as u8, i as u8)),
                            Family::V6 => {
                                IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, i as u16))
                            }
                        })
                        .collect();
                    let adv = Advertisement {
                        vrid: 42,
                        priority: prio,
                        max_advert_interval_cs: iv,
                        addresses,
                    };
                    let wire = adv.encode(src, dst, mode);
                    let Ok(wire) = wire else {
                        panic!("{wire:?}");
                    };
                    assert_eq!(wire.len(), HEADER_LEN + n * family.addr_len());
                    // A correct checksum sums (with the pseudo-header) to zero.
                    let raw = fold(sum(pseudo_sum(src, dst, wire.len(), mode), &wire));
                    assert_eq!(raw, 0);
                    assert_eq!(
                        Advertisement::decode(&wire, family, src, dst, mode),
                        Ok(adv)
                    );
                }
            }
        }
    }

    fn with(f: impl FnOnce(&mut Vec<u8>)) -> Result<Advertisement, DecodeError> {
        let mut v = hex(KAT_V4_RFC9568);
        f(&mut v);
        // Re-sum so only the intended field is wrong.
        let ck = checksum(&v, v4(SRC4), v4(GROUP4), ChecksumMode::Rfc9568);
        if let Some(field) = v.get_mut(6..8) {
            field.copy_from_slice(&ck.to_be_bytes());
        }
        Advertisement::decode(&v, Family::V4, v4(SRC4), v4(GROUP4), ChecksumMode::Rfc9568)
    }

    #[test]
    fn every_decode_error_names_the_problem() {
        let (src, dst) = (v4(SRC4), v4(GROUP4));
        let d = |b: &[u8]| Advertisement::decode(b, Family::V4, src, dst, ChecksumMode::Rfc9568);
        assert_eq!(d(&hex("31336401006400")), Err(DecodeError::Truncated(7)));
        assert_eq!(d(&[]), Err(DecodeError::Truncated(0)));
        assert_eq!(with(|v| v[0] = 0x21), Err(DecodeError::BadVersion(2)));
        assert_eq!(with(|v| v[0] = 0x41), Err(DecodeError::BadVersion(4)));
        assert_eq!(with(|v| v[0] = 0x32), Err(DecodeError::BadType(2)));
        assert_eq!(with(|v| v[0] = 0x30), Err(DecodeError::BadType(0)));
        assert_eq!(
            Advertisement::decode(
                &hex(KAT_V4_RFC9568),
                Family::V6,
                src,
                dst,
                ChecksumMode::Rfc9568
            ),
            Err(DecodeError::FamilyMismatch {
                family: Family::V6,
                src,
                dst
            })
        );
        assert_eq!(
            Advertisement::decode(
                &hex(KAT_V4_RFC9568),
                Family::V4,
                src,
                v6("ff02::12"),
                ChecksumMode::Rfc9568
            ),
            Err(DecodeError::FamilyMismatch {
                family: Family::V4,
                src,
                dst: v6("ff02::12")
            })
        );
        assert_eq!(
            with(|v| {
                v[3] = 0;
                v.truncate(8);
            }),
            Err(DecodeError::NoAddresses)
        );
        assert_eq!(
            with(|v| v[3] = 2),
            Err(DecodeError::BadAddressCount {
                count: 2,
                family: Family::V4,
                expected: 16,
                got: 12
            })
        );
        assert_eq!(
            with(|v| v.extend_from_slice(&[0, 0])),
            Err(DecodeError::BadAddressCount {
                count: 1,
                family: Family::V4,
                expected: 12,
                got: 14
            })
        );
        let mut bad = hex(KAT_V4_RFC9568);
        bad[11] ^= 1;
        assert_eq!(
            d(&bad),
            Err(DecodeError::ChecksumMismatch {
                expected: 0xa859,
                got: 0xa85a
            })
        );
        assert_eq!(with(|v| v[4..6].fill(0)), Err(DecodeError::ZeroInterval));
        let global_first = Advertisement {
            addresses: vec![v6("2001:db8::1"), v6("fe80::1")],
            ..sample_v6()
        };
        let (s6, d6) = (v6("fe80::a"), v6("ff02::12"));
        let wire = global_first.encode(s6, d6, ChecksumMode::Rfc9568);
        assert_eq!(
            Advertisement::decode(
                &wire.unwrap_or_default(),
                Family::V6,
                s6,
                d6,
                ChecksumMode::Rfc9568
            ),
            Err(DecodeError::FirstNotLinkLocal(
                "2001:db8::1".parse().unwrap_or(Ipv6Addr::LOCALHOST)
            ))
        );
        // The 4 reserved bits are ignored, and do not make 0 nonzero.
        assert_eq!(
            with(|v| v[4] = 0xf0).map(|a| a.max_advert_interval_cs),
            Ok(100)
        );
        assert_eq!(
            with(|v| v[4..6].copy_from_slice(&[0xf0, 0])),
            Err(DecodeError::ZeroInterval)
        );
    }

    #[test]
    fn encode_refuses_what_the_wire_cannot_carry() {
        let (src, dst) = (v4(SRC4), v4(GROUP4));
        let mode = ChecksumMode::Rfc9568;
        let mut a = sample_v4();
        a.addresses.clear();
        assert_eq!(a.encode(src, dst, mode), Err(EncodeError::AddressCount(0)));
        a.addresses = vec![v4("10.0.0.1"); 256];
        assert_eq!(
            a.encode(src, dst, mode),
            Err(EncodeError::AddressCount(256))
        );
        let mut a = sample_v4();
        for iv in [0, 4096] {
            a.max_advert_interval_cs = iv;
            assert_eq!(a.encode(src, dst, mode), Err(EncodeError::Interval(iv)));
        }
        let mut a = sample_v4();
        a.addresses.push(v6("2001:db8::1"));
        assert_eq!(
            a.encode(src, dst, mode),
            Err(EncodeError::FamilyMismatch {
                src,
                addr: v6("2001:db8::1")
            })
        );
        assert_eq!(
            sample_v4().encode(src, v6("ff02::12"), mode),
            Err(EncodeError::FamilyMismatch {
                src,
                addr: v6("ff02::12")
            })
        );
    }

    #[test]
    fn odd_lengths_are_padded_in_the_sum() {
        assert_eq!(fold(sum(0, &[0x12])), !0x1200);
        assert_eq!(fold(sum(0, &[0xff, 0xff, 0xff, 0xff])), 0);
    }

    #[test]
    fn never_panics_on_short_or_odd_input() {
        let pairs = [
            (Family::V4, v4(SRC4), v4(GROUP4)),
            (Family::V6, v6("fe80::1"), v6("ff02::12")),
        ];
        for len in 0..80 {
            for fill in [0u8, 0x31, 0xff] {
                let mut b = vec![fill; len];
                if let Some(c) = b.get_mut(3) {
                    *c = 3;
                }
                for (family, src, dst) in pairs {
                    for fam in [family, Family::V4, Family::V6] {
                        for mode in [ChecksumMode::Rfc9568, ChecksumMode::PseudoHeader] {
                            let _ = Advertisement::decode(&b, fam, src, dst, mode);
                        }
                    }
                }
            }
        }
    }
}
