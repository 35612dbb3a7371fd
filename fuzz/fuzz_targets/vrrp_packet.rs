//! Decode arbitrary IP payloads as VRRPv3 advertisements: whatever decodes
//! must encode to a packet of the same length that decodes to the same
//! value, and neither the codec nor an instance's receive path may panic.
//!
//! Input: one byte of flags (bit 0: IPv6, bit 1: the IPv4 pseudo-header
//! checksum), the source and destination addresses (4 or 16 bytes each),
//! then the payload.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use hagw_vrrp::{Advertisement, ChecksumMode, Family, Instance, InstanceConfig, TTL};
use libfuzzer_sys::fuzz_target;

fn addr(family: Family, b: &[u8]) -> IpAddr {
    match family {
        Family::V4 => {
            let mut o = [0u8; 4];
            o.copy_from_slice(b);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        Family::V6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(b);
            IpAddr::V6(Ipv6Addr::from(o))
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let family = if flags & 1 != 0 {
        Family::V6
    } else {
        Family::V4
    };
    let mode = if flags & 2 != 0 {
        ChecksumMode::PseudoHeader
    } else {
        ChecksumMode::Rfc9568
    };
    let n = family.addr_len();
    if rest.len() < 2 * n {
        return;
    }
    let (src, dst) = (addr(family, &rest[..n]), addr(family, &rest[n..2 * n]));
    let payload = &rest[2 * n..];

    // The whole receive path of a running Backup.
    let vip = match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100)),
        Family::V6 => IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x100)),
    };
    let own = match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        Family::V6 => IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
    };
    let mut cfg = InstanceConfig::new(
        payload.get(1).copied().unwrap_or(1).max(1),
        100,
        own,
        vec![vip],
    );
    cfg.checksum_mode = mode;
    if let Ok(mut inst) = Instance::new(cfg) {
        let now = Instant::now();
        let mut out = Vec::new();
        inst.start(now, &mut out);
        let _ = inst.handle_packet(src, dst, TTL, payload, now, &mut out);
        inst.on_timer(now, &mut out);
    }

    let Ok(p1) = Advertisement::decode(payload, family, src, dst, mode) else {
        return;
    };
    let wire = match p1.encode(src, dst, mode) {
        Ok(w) => w,
        Err(e) => panic!("decoded advertisement failed to encode: {e}: {p1:?}"),
    };
    assert_eq!(wire.len(), payload.len());
    match Advertisement::decode(&wire, family, src, dst, mode) {
        Ok(p2) => assert_eq!(p1, p2),
        Err(e) => panic!("re-encoded advertisement failed to decode: {e}: {p1:?}"),
    }
});
