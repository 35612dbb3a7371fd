//! Adj-RIB-Out shared by every peer of a listen range (or one neighbor): what we
//! announce, encoded once per distinct session shape and handed to each peer as
//! the same `Bytes`.
//!
//! Beside those fixed routes, a neighbor's announcement may carry a
//! [`Dynamic`] set that changes at run time (a host's VMs, each a /32 or
//! /128 with its own MED): the peer task sends only what changed since it
//! last looked, from a bounded journal of changes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hagw_bgp::fsm::Negotiated;
use hagw_bgp::packet::{
    AsPath, AsSegment, CodecCtx, Message, MpReach, MpUnreach, Origin, PathAttributes, SegmentKind,
    Update, AFI_IPV4, AFI_IPV6, SAFI_UNICAST,
};
use ipnet::{IpNet, Ipv4Net};
use tokio::sync::{mpsc, watch};

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
    /// Routes that come and go at run time (not gated by the probes).
    dynamic: Option<Arc<Dynamic>>,
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
            dynamic: None,
        }
    }

    /// The same announcement plus the run-time routes of `d`.
    pub fn with_dynamic(mut self, d: Option<Arc<Dynamic>>) -> Advert {
        self.dynamic = d;
        self
    }

    pub fn dynamic(&self) -> Option<&Arc<Dynamic>> {
        self.dynamic.as_ref()
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

/// UPDATEs withdrawing `withdraw` and announcing `announce` (grouped by
/// MED) on a session of `shape`; prefixes of a family the session cannot
/// carry are left out. Returns the bytes and how many prefixes went.
pub fn encode_delta(
    local_asn: u32,
    shape: Shape,
    announce: &[(IpNet, u32)],
    withdraw: &[IpNet],
) -> (Bytes, usize) {
    let ctx = CodecCtx {
        four_octet_as: shape.four_octet_as,
    };
    let mut out = BytesMut::new();
    let can_v4 = shape.v4 && shape.next_hop.is_ipv4();
    let can_v6 = shape.v6 && shape.next_hop.is_ipv6();
    let w4: Vec<Ipv4Net> = withdraw
        .iter()
        .filter_map(|p| match p {
            IpNet::V4(p) if can_v4 => Some(*p),
            _ => None,
        })
        .collect();
    for chunk in w4.chunks(CHUNK) {
        push(
            &mut out,
            &ctx,
            PathAttributes::default(),
            Vec::new(),
            chunk.to_vec(),
        );
    }
    let w6: Vec<IpNet> = withdraw
        .iter()
        .filter(|p| p.addr().is_ipv6() && can_v6)
        .copied()
        .collect();
    for chunk in w6.chunks(CHUNK / 4) {
        let w = PathAttributes {
            mp_unreach: Some(MpUnreach {
                afi: AFI_IPV6,
                safi: SAFI_UNICAST,
                withdrawn: chunk.to_vec(),
            }),
            ..PathAttributes::default()
        };
        push(&mut out, &ctx, w, Vec::new(), Vec::new());
    }
    let mut by_med: BTreeMap<u32, (Vec<Ipv4Net>, Vec<IpNet>)> = BTreeMap::new();
    let mut sent = 0;
    for (p, med) in announce {
        match p {
            IpNet::V4(v4) if can_v4 => by_med.entry(*med).or_default().0.push(*v4),
            IpNet::V6(_) if can_v6 => by_med.entry(*med).or_default().1.push(*p),
            _ => continue,
        }
        sent += 1;
    }
    for (med, (v4, v6)) in by_med {
        if let IpAddr::V4(nh) = shape.next_hop {
            for chunk in v4.chunks(CHUNK) {
                let mut a = attrs(local_asn, shape);
                a.next_hop = Some(nh);
                a.med = Some(med);
                push(&mut out, &ctx, a, chunk.to_vec(), Vec::new());
            }
        }
        for chunk in v6.chunks(CHUNK / 4) {
            let mut a = attrs(local_asn, shape);
            a.med = Some(med);
            a.mp_reach = Some(MpReach {
                afi: AFI_IPV6,
                safi: SAFI_UNICAST,
                next_hops: vec![shape.next_hop],
                nlri: chunk.to_vec(),
            });
            push(&mut out, &ctx, a, Vec::new(), Vec::new());
        }
    }
    (out.freeze(), sent)
}

/// What a neighbor's session did, for whoever feeds its [`Dynamic`] routes
/// (the virtual networks follow their routers' liveness with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionNote {
    Up,
    /// The session ended; `stale_for`: the peer restarts (graceful restart)
    /// and keeps forwarding meanwhile.
    Down {
        stale_for: Option<Duration>,
    },
    /// The neighbor cannot be reached (no answer, no route).
    Unreachable,
}

/// How many changes the journal keeps; a peer further behind compares the
/// whole set instead.
const JOURNAL: usize = 16_384;

/// Routes announced to one neighbor beside its configured ones, changed at
/// run time; each has a MED. Changes are journaled so each peer task sends
/// only what changed since it last looked.
#[derive(Debug)]
pub struct Dynamic {
    peer: IpAddr,
    inner: Mutex<DynInner>,
    generation: watch::Sender<u64>,
    notes: Option<mpsc::UnboundedSender<(IpAddr, SessionNote)>>,
}

#[derive(Debug, Default)]
struct DynInner {
    generation: u64,
    routes: BTreeMap<IpNet, u32>,
    /// (generation of the change, the prefix changed).
    journal: VecDeque<(u64, IpNet)>,
    /// Everything known at start is in: End-of-RIB may go.
    ready: bool,
}

/// What changed since a generation: each prefix touched, with its MED now
/// (None: withdrawn); `None` when the journal does not reach back (compare
/// the whole set).
pub type Changes = Option<Vec<(IpNet, Option<u32>)>>;

impl Dynamic {
    /// The set for neighbor `peer`; session events go to `notes`.
    pub fn new(
        peer: IpAddr,
        notes: Option<mpsc::UnboundedSender<(IpAddr, SessionNote)>>,
    ) -> Dynamic {
        Dynamic {
            peer,
            inner: Mutex::new(DynInner::default()),
            generation: watch::Sender::new(0),
            notes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DynInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Announces `prefix` with `med`, or withdraws it (`None`).
    pub fn set(&self, prefix: IpNet, med: Option<u32>) {
        let mut g = self.lock();
        let changed = match med {
            Some(m) => g.routes.insert(prefix, m) != Some(m),
            None => g.routes.remove(&prefix).is_some(),
        };
        if !changed {
            return;
        }
        g.generation += 1;
        let gen = g.generation;
        g.journal.push_back((gen, prefix));
        if g.journal.len() > JOURNAL {
            g.journal.pop_front();
        }
        drop(g);
        self.generation.send_replace(gen);
    }

    /// Everything known at start has been set: End-of-RIB may follow.
    pub fn set_ready(&self) {
        let mut g = self.lock();
        if g.ready {
            return;
        }
        g.ready = true;
        g.generation += 1;
        let gen = g.generation;
        drop(g);
        self.generation.send_replace(gen);
    }

    pub fn ready(&self) -> bool {
        self.lock().ready
    }

    /// Changes to the set (and readiness) wake this receiver.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The whole set and its generation.
    pub fn all(&self) -> (u64, Vec<(IpNet, u32)>) {
        let g = self.lock();
        (
            g.generation,
            g.routes.iter().map(|(p, m)| (*p, *m)).collect(),
        )
    }

    /// What changed after generation `since`, and the generation now.
    pub fn since(&self, since: u64) -> (u64, Changes) {
        let g = self.lock();
        let reaches = g
            .journal
            .front()
            .is_none_or(|(first, _)| *first <= since + 1);
        if !reaches {
            return (g.generation, None);
        }
        let mut touched: Vec<IpNet> = g
            .journal
            .iter()
            .filter(|(gen, _)| *gen > since)
            .map(|(_, p)| *p)
            .collect();
        touched.sort();
        touched.dedup();
        let v = touched
            .into_iter()
            .map(|p| (p, g.routes.get(&p).copied()))
            .collect();
        (g.generation, Some(v))
    }

    /// Tells the feeder what the session to this neighbor did.
    pub fn note(&self, n: SessionNote) {
        if let Some(tx) = &self.notes {
            let _ = tx.send((self.peer, n));
        }
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
    fn dynamic_changes_are_journaled_and_coalesced() {
        let d = Dynamic::new("192.168.56.101".parse().expect("ip"), None);
        let p = |s: &str| s.parse::<IpNet>().expect("prefix");
        let (g0, all) = d.all();
        assert!(all.is_empty());
        d.set(p("10.10.10.10/32"), Some(7));
        d.set(p("10.10.10.11/32"), Some(8));
        d.set(p("10.10.10.10/32"), None);
        d.set(p("10.10.10.11/32"), Some(8)); // no change, no generation
        let (g1, ch) = d.since(g0);
        assert_eq!(g1, g0 + 3);
        assert_eq!(
            ch,
            Some(vec![
                (p("10.10.10.10/32"), None),
                (p("10.10.10.11/32"), Some(8))
            ])
        );
        assert_eq!(d.since(g1), (g1, Some(vec![])));
        for i in 0..(JOURNAL as u32 + 5) {
            d.set(
                IpNet::V4(Ipv4Net::new(std::net::Ipv4Addr::from(i), 32).expect("p")),
                Some(1),
            );
        }
        assert_eq!(d.since(g1).1, None, "too far behind: compare the whole set");
    }

    #[test]
    fn a_delta_withdraws_and_announces_with_each_med() {
        let p = |s: &str| s.parse::<IpNet>().expect("prefix");
        let (b, n) = encode_delta(
            65100,
            shape("192.168.56.103"),
            &[
                (p("10.10.10.10/32"), 5),
                (p("10.10.10.11/32"), 9),
                (p("fd00::1/128"), 5),
            ],
            &[p("10.10.10.12/32")],
        );
        assert_eq!(n, 2, "no IPv6 on an IPv4-only session");
        let u = messages(&b);
        assert_eq!(u[0].withdrawn.len(), 1);
        assert_eq!(u[1].attrs.med, Some(5));
        assert_eq!(u[2].attrs.med, Some(9));
        assert_eq!(u[2].nlri, vec!["10.10.10.11/32".parse().expect("p")]);
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
