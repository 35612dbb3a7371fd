//! Adj-RIB-Out shared by every peer of a listen range (or one neighbor): what we
//! announce, encoded once per distinct session shape and handed to each peer as
//! the same `Bytes`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use hagw_bgp::fsm::Negotiated;
use hagw_bgp::packet::{
    AsPath, AsSegment, CodecCtx, Message, MpReach, MpUnreach, Origin, PathAttributes, SegmentKind,
    Update, AFI_IPV4, AFI_IPV6, SAFI_UNICAST,
};
use ipnet::{IpNet, Ipv4Net};
use tokio::sync::watch;

use crate::config::Announce;

/// Everything that makes two peers' UPDATEs differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Our address on the session: the next hop we announce.
    pub next_hop: IpAddr,
    pub ebgp: bool,
    pub four_octet_as: bool,
    pub v4: bool,
    pub v6: bool,
}

impl Shape {
    pub fn new(local: IpAddr, local_asn: u32, n: &Negotiated) -> Shape {
        Shape {
            next_hop: local,
            ebgp: n.remote_asn != local_asn,
            four_octet_as: n.four_octet_as,
            v4: n.has_family(AFI_IPV4, SAFI_UNICAST),
            v6: n.has_family(AFI_IPV6, SAFI_UNICAST),
        }
    }
}

/// One session shape's announcement, encoded: the routes, their withdrawal (for
/// when the uplink probe fails) and End-of-RIB for each family.
#[derive(Clone, Debug)]
pub struct Encoded {
    pub announce: Bytes,
    pub withdraw: Bytes,
    pub eor: Bytes,
    pub prefixes: usize,
}

#[derive(Debug)]
pub struct Advert {
    local_asn: u32,
    routes: Vec<IpNet>,
    cache: Mutex<HashMap<Shape, Encoded>>,
    /// Open while every uplink probe passes; routes go out only then.
    gate: Option<watch::Receiver<bool>>,
}

impl Advert {
    pub fn new(local_asn: u32, announce: &Announce, gate: Option<watch::Receiver<bool>>) -> Advert {
        let mut routes = Vec::new();
        if announce.default_originate {
            routes.push(IpNet::V4(Ipv4Net::default()));
            routes.push(IpNet::V6(ipnet::Ipv6Net::default()));
        }
        routes.extend(announce.advertise.iter().copied());
        Advert {
            local_asn,
            routes,
            cache: Mutex::new(HashMap::new()),
            gate,
        }
    }

    /// A receiver that changes when the uplink gate opens or closes.
    pub fn gate(&self) -> Option<watch::Receiver<bool>> {
        self.gate.clone()
    }

    /// Whether routes may be announced now.
    pub fn open(&self) -> bool {
        self.gate.as_ref().is_none_or(|g| *g.borrow())
    }

    /// Our routes for a session of this shape, their withdrawal, and End-of-RIB
    /// for each of its families (RFC 4724: harmless to peers without GR).
    pub fn encoded(&self, shape: Shape) -> Encoded {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .entry(shape)
            .or_insert_with(|| encode(self.local_asn, &self.routes, shape))
            .clone()
    }
}

fn attrs(local_asn: u32, shape: Shape) -> PathAttributes {
    PathAttributes {
        origin: Some(Origin::Igp),
        as_path: Some(AsPath {
            segments: if shape.ebgp {
                vec![AsSegment {
                    kind: SegmentKind::Sequence,
                    asns: vec![local_asn],
                }]
            } else {
                Vec::new()
            },
        }),
        // RFC 4271 §5.1.5: LOCAL_PREF goes to internal peers only.
        local_pref: (!shape.ebgp).then_some(100),
        ..PathAttributes::default()
    }
}

/// How many prefixes go in one UPDATE: /32s take 5 bytes each, and an UPDATE
/// with attributes must stay under 4096 bytes.
const CHUNK: usize = 700;

fn encode(local_asn: u32, routes: &[IpNet], shape: Shape) -> Encoded {
    let ctx = CodecCtx {
        four_octet_as: shape.four_octet_as,
    };
    let mut out = BytesMut::new();
    let mut wd = BytesMut::new();
    let mut eor = BytesMut::new();
    let mut prefixes = 0;
    let v4: Vec<Ipv4Net> = routes
        .iter()
        .filter_map(|r| match r {
            IpNet::V4(p) => Some(*p),
            IpNet::V6(_) => None,
        })
        .collect();
    let v6: Vec<IpNet> = routes
        .iter()
        .filter(|r| r.addr().is_ipv6())
        .copied()
        .collect();

    // IPv4 routes need an IPv4 next hop: on an IPv6 session we have none to give.
    if let (true, IpAddr::V4(nh)) = (shape.v4, shape.next_hop) {
        for chunk in v4.chunks(CHUNK) {
            let mut a = attrs(local_asn, shape);
            a.next_hop = Some(nh);
            push(&mut out, &ctx, a, chunk.to_vec(), Vec::new());
            push(
                &mut wd,
                &ctx,
                PathAttributes::default(),
                Vec::new(),
                chunk.to_vec(),
            );
            prefixes += chunk.len();
        }
    }
    if let (true, IpAddr::V6(nh)) = (shape.v6, shape.next_hop) {
        for chunk in v6.chunks(CHUNK / 4) {
            let mut a = attrs(local_asn, shape);
            a.mp_reach = Some(MpReach {
                afi: AFI_IPV6,
                safi: SAFI_UNICAST,
                next_hops: vec![IpAddr::V6(nh)],
                nlri: chunk.to_vec(),
            });
            push(&mut out, &ctx, a, Vec::new(), Vec::new());
            let w = PathAttributes {
                mp_unreach: Some(MpUnreach {
                    afi: AFI_IPV6,
                    safi: SAFI_UNICAST,
                    withdrawn: chunk.to_vec(),
                }),
                ..PathAttributes::default()
            };
            push(&mut wd, &ctx, w, Vec::new(), Vec::new());
            prefixes += chunk.len();
        }
    }
    if shape.v4 {
        push_eor(&mut eor, &ctx, AFI_IPV4);
    }
    if shape.v6 {
        push_eor(&mut eor, &ctx, AFI_IPV6);
    }
    Encoded {
        announce: out.freeze(),
        withdraw: wd.freeze(),
        eor: eor.freeze(),
        prefixes,
    }
}

fn push(
    out: &mut BytesMut,
    ctx: &CodecCtx,
    attrs: PathAttributes,
    nlri: Vec<Ipv4Net>,
    withdrawn: Vec<Ipv4Net>,
) {
    let u = Update {
        withdrawn,
        attrs,
        nlri,
        treat_as_withdraw: None,
        discarded: Vec::new(),
    };
    if let Err(e) = Message::Update(u).encode(ctx, out) {
        // CHUNK keeps every UPDATE far below the limit; say so loudly if not.
        tracing::error!("cannot encode an announcement: {e}");
    }
}

fn push_eor(out: &mut BytesMut, ctx: &CodecCtx, afi: u16) {
    if let Err(e) = Message::Update(Update::end_of_rib(afi, SAFI_UNICAST)).encode(ctx, out) {
        tracing::error!("cannot encode End-of-RIB: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hagw_bgp::packet::frame_len;

    fn shape(nh: &str) -> Shape {
        Shape {
            next_hop: nh.parse().expect("ip"),
            ebgp: true,
            four_octet_as: true,
            v4: true,
            v6: false,
        }
    }

    fn messages(b: &Bytes) -> Vec<Update> {
        let mut off = 0;
        let mut v = Vec::new();
        while let Ok(Some(n)) = frame_len(&b[off..]) {
            let ctx = CodecCtx {
                four_octet_as: true,
            };
            match Message::decode(&b[off..off + n], &ctx) {
                Ok(Message::Update(u)) => v.push(u),
                other => panic!("unexpected {other:?}"),
            }
            off += n;
        }
        assert_eq!(off, b.len());
        v
    }

    #[test]
    fn default_originate_sends_the_default_via_our_address_then_eor() {
        let a = Advert::new(
            65000,
            &Announce {
                default_originate: true,
                advertise: vec!["10.0.0.0/16".parse().expect("prefix")],
            },
            None,
        );
        let e = a.encoded(shape("10.200.0.1"));
        assert_eq!(e.prefixes, 2);
        let u = messages(&e.announce);
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].nlri.len(), 2);
        assert_eq!(u[0].attrs.next_hop, Some("10.200.0.1".parse().expect("ip")));
        assert_eq!(
            u[0].attrs.as_path.as_ref().and_then(|p| p.first_asn()),
            Some(65000)
        );
        assert_eq!(
            messages(&e.eor)[0].is_end_of_rib(),
            Some((AFI_IPV4, SAFI_UNICAST))
        );
        let w = messages(&e.withdraw);
        assert_eq!(w[0].withdrawn.len(), 2, "the withdrawal names every route");
        assert!(w[0].nlri.is_empty());
    }

    #[test]
    fn the_same_shape_shares_one_encoding() {
        let a = Advert::new(
            65000,
            &Announce {
                default_originate: true,
                advertise: vec![],
            },
            None,
        );
        let x = a.encoded(shape("10.200.0.1"));
        let y = a.encoded(shape("10.200.0.1"));
        assert_eq!(x.announce.as_ptr(), y.announce.as_ptr());
    }

    #[test]
    fn many_prefixes_split_into_updates_below_4096_bytes() {
        let advertise = (0..3000u32)
            .map(|i| {
                IpNet::V4(
                    Ipv4Net::new(std::net::Ipv4Addr::from(0x0a00_0000 + i), 32).expect("prefix"),
                )
            })
            .collect();
        let a = Advert::new(
            65000,
            &Announce {
                default_originate: false,
                advertise,
            },
            None,
        );
        let e = a.encoded(shape("10.200.0.1"));
        let total: usize = messages(&e.announce).iter().map(|u| u.nlri.len()).sum();
        assert_eq!(total, 3000);
    }

    #[test]
    fn ibgp_gets_an_empty_as_path_and_local_pref() {
        let a = Advert::new(
            65000,
            &Announce {
                default_originate: true,
                advertise: vec![],
            },
            None,
        );
        let mut s = shape("10.200.0.1");
        s.ebgp = false;
        let u = messages(&a.encoded(s).announce);
        assert_eq!(u[0].attrs.local_pref, Some(100));
        assert!(u[0]
            .attrs
            .as_path
            .as_ref()
            .is_some_and(|p| p.segments.is_empty()));
    }
}
