//! Path attributes (RFC 4271 §4.3/§5) with RFC 7606 revised error handling and
//! RFC 6793 two-octet/four-octet AS translation.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, BytesMut};
use ipnet::IpNet;

use super::error::{AttrError, DecodeError, EncodeError};
use super::nlri;
use super::notification::codes::update as sub;
use super::wire::{be_u32s, Reader};
use super::{CodecCtx, AFI_IPV4, AFI_IPV6, AS_TRANS, SAFI_UNICAST};

/// Attribute type codes (IANA "BGP Path Attributes").
pub mod attr_type {
    pub const ORIGIN: u8 = 1;
    pub const AS_PATH: u8 = 2;
    pub const NEXT_HOP: u8 = 3;
    pub const MULTI_EXIT_DISC: u8 = 4;
    pub const LOCAL_PREF: u8 = 5;
    pub const ATOMIC_AGGREGATE: u8 = 6;
    pub const AGGREGATOR: u8 = 7;
    pub const COMMUNITIES: u8 = 8;
    pub const ORIGINATOR_ID: u8 = 9;
    pub const CLUSTER_LIST: u8 = 10;
    pub const MP_REACH_NLRI: u8 = 14;
    pub const MP_UNREACH_NLRI: u8 = 15;
    pub const EXTENDED_COMMUNITIES: u8 = 16;
    pub const AS4_PATH: u8 = 17;
    pub const AS4_AGGREGATOR: u8 = 18;
    pub const LARGE_COMMUNITIES: u8 = 32;
}

/// Attribute flag bits (RFC 4271 §4.3).
pub mod attr_flags {
    pub const OPTIONAL: u8 = 0x80;
    pub const TRANSITIVE: u8 = 0x40;
    pub const PARTIAL: u8 = 0x20;
    pub const EXTENDED_LENGTH: u8 = 0x10;
}

use attr_flags::{EXTENDED_LENGTH, OPTIONAL, PARTIAL, TRANSITIVE};
use attr_type::*;

pub fn attr_name(type_code: u8) -> &'static str {
    match type_code {
        ORIGIN => "ORIGIN",
        AS_PATH => "AS_PATH",
        NEXT_HOP => "NEXT_HOP",
        MULTI_EXIT_DISC => "MULTI_EXIT_DISC",
        LOCAL_PREF => "LOCAL_PREF",
        ATOMIC_AGGREGATE => "ATOMIC_AGGREGATE",
        AGGREGATOR => "AGGREGATOR",
        COMMUNITIES => "COMMUNITIES",
        ORIGINATOR_ID => "ORIGINATOR_ID",
        CLUSTER_LIST => "CLUSTER_LIST",
        MP_REACH_NLRI => "MP_REACH_NLRI",
        MP_UNREACH_NLRI => "MP_UNREACH_NLRI",
        EXTENDED_COMMUNITIES => "EXTENDED_COMMUNITIES",
        AS4_PATH => "AS4_PATH",
        AS4_AGGREGATOR => "AS4_AGGREGATOR",
        LARGE_COMMUNITIES => "LARGE_COMMUNITY",
        _ => "attribute",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Origin {
    Igp = 0,
    Egp = 1,
    Incomplete = 2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum SegmentKind {
    Set = 1,
    Sequence = 2,
    ConfedSequence = 3,
    ConfedSet = 4,
}

impl SegmentKind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Set,
            2 => Self::Sequence,
            3 => Self::ConfedSequence,
            4 => Self::ConfedSet,
            _ => return None,
        })
    }

    pub fn is_confed(self) -> bool {
        matches!(self, Self::ConfedSequence | Self::ConfedSet)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AsSegment {
    pub kind: SegmentKind,
    pub asns: Vec<u32>,
}

/// AS_PATH with four-octet ASNs whatever the session negotiated. Decoding merges
/// adjacent sequences (the 255-ASN wire split is not a semantic boundary).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AsPath {
    pub segments: Vec<AsSegment>,
}

impl AsPath {
    pub fn sequence(asns: impl IntoIterator<Item = u32>) -> Self {
        let mut p = Self {
            segments: vec![AsSegment {
                kind: SegmentKind::Sequence,
                asns: asns.into_iter().collect(),
            }],
        };
        p.normalize();
        p
    }

    pub fn is_empty(&self) -> bool {
        self.segments.iter().all(|s| s.asns.is_empty())
    }

    /// Path length for the decision process: an AS_SET counts 1 (RFC 4271
    /// §9.1.2.2) and confederation segments count 0 (RFC 5065 §5.3).
    pub fn len_for_best_path(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s.kind {
                SegmentKind::Sequence => s.asns.len(),
                SegmentKind::Set => usize::from(!s.asns.is_empty()),
                SegmentKind::ConfedSequence | SegmentKind::ConfedSet => 0,
            })
            .sum()
    }

    /// The neighbouring AS (leftmost AS_SEQUENCE entry, confederation segments
    /// skipped): what MED comparison and enforce-first-as look at.
    pub fn first_asn(&self) -> Option<u32> {
        let seg = self.segments.iter().find(|s| !s.kind.is_confed())?;
        match seg.kind {
            SegmentKind::Sequence => seg.asns.first().copied(),
            _ => None,
        }
    }

    pub fn contains(&self, asn: u32) -> bool {
        self.segments.iter().any(|s| s.asns.contains(&asn))
    }

    /// A copy with `asn` prepended as an AS_SEQUENCE entry (RFC 4271 §5.1.2).
    pub fn prepend(&self, asn: u32) -> AsPath {
        let mut p = self.clone();
        match p.segments.first_mut() {
            Some(s) if s.kind == SegmentKind::Sequence => s.asns.insert(0, asn),
            _ => p.segments.insert(
                0,
                AsSegment {
                    kind: SegmentKind::Sequence,
                    asns: vec![asn],
                },
            ),
        }
        p
    }

    fn normalize(&mut self) {
        let mut out: Vec<AsSegment> = Vec::with_capacity(self.segments.len());
        for seg in self.segments.drain(..) {
            if seg.asns.is_empty() {
                continue;
            }
            if let Some(last) = out.last_mut() {
                if last.kind == seg.kind
                    && matches!(
                        seg.kind,
                        SegmentKind::Sequence | SegmentKind::ConfedSequence
                    )
                {
                    last.asns.extend_from_slice(&seg.asns);
                    continue;
                }
            }
            out.push(seg);
        }
        self.segments = out;
    }

    fn needs_as4_path(&self) -> bool {
        self.segments
            .iter()
            .any(|s| s.asns.iter().any(|&a| a > u32::from(u16::MAX)))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MpReach {
    pub afi: u16,
    pub safi: u8,
    /// IPv6: global, then optional link-local (RFC 2545 §3).
    pub next_hops: Vec<IpAddr>,
    pub nlri: Vec<IpNet>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MpUnreach {
    pub afi: u16,
    pub safi: u8,
    pub withdrawn: Vec<IpNet>,
}

/// An unrecognized optional transitive attribute, kept for re-advertisement.
/// `flags` already has Partial set (RFC 4271 §5: we did not understand it) and
/// never Extended Length (the encoder picks the length form).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RawAttr {
    pub flags: u8,
    pub type_code: u8,
    pub value: Vec<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PathAttributes {
    pub origin: Option<Origin>,
    pub as_path: Option<AsPath>,
    pub next_hop: Option<Ipv4Addr>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub atomic_aggregate: bool,
    pub aggregator: Option<(u32, Ipv4Addr)>,
    pub communities: Vec<u32>,
    pub ext_communities: Vec<u64>,
    /// Duplicates are removed on decode (RFC 8092 §5).
    pub large_communities: Vec<(u32, u32, u32)>,
    pub mp_reach: Option<MpReach>,
    pub mp_unreach: Option<MpUnreach>,
    /// Unrecognized optional transitive attributes are kept (Partial bit set on
    /// re-advertisement); non-transitive unknown are dropped.
    pub unknown: Vec<RawAttr>,
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// Outcome of one malformed attribute, weakest to strongest (RFC 7606 §2).
enum Fault {
    Discard(AttrError),
    Withdraw(AttrError),
    Reset(DecodeError),
}

fn withdraw(ty: u8, reason: impl Into<String>) -> Fault {
    Fault::Withdraw(AttrError::new(ty, reason))
}

fn discard(ty: u8, reason: impl Into<String>) -> Fault {
    Fault::Discard(AttrError::new(ty, reason))
}

fn flags_ok(flags: u8, optional: bool, transitive: bool) -> bool {
    let want = if optional { OPTIONAL } else { 0 } | if transitive { TRANSITIVE } else { 0 };
    flags & (OPTIONAL | TRANSITIVE) == want
}

/// RFC 7606 §3(c): Optional/Transitive bits in conflict with the attribute's
/// definition make it malformed, handled by treat-as-withdraw unless the
/// attribute's own spec says otherwise.
fn check_flags(flags: u8, ty: u8, optional: bool, transitive: bool) -> Result<(), Fault> {
    if flags_ok(flags, optional, transitive) {
        Ok(())
    } else {
        Err(withdraw(
            ty,
            format!("flags {flags:#04x} conflict with the attribute type (Attribute Flags Error)"),
        ))
    }
}

fn parse_as_path(value: &[u8], four_octet: bool) -> Result<AsPath, &'static str> {
    let size = if four_octet { 4 } else { 2 };
    let mut r = Reader::new(value);
    let mut segments = Vec::new();
    while !r.is_empty() {
        // RFC 7606 §7.2: unknown type, zero length, overrun and a lone trailing
        // octet all make the AS_PATH malformed.
        let kind = r
            .u8()
            .and_then(SegmentKind::from_u8)
            .ok_or("unknown segment type")?;
        let count = r.u8().ok_or("segment header underrun")?;
        if count == 0 {
            return Err("zero-length segment");
        }
        let bytes = r
            .take(usize::from(count) * size)
            .ok_or("segment overruns the attribute")?;
        let asns: Vec<u32> = if four_octet {
            be_u32s(bytes).collect()
        } else {
            bytes
                .chunks_exact(2)
                .map(|c| match *c {
                    [a, b] => u32::from(u16::from_be_bytes([a, b])),
                    _ => 0,
                })
                .collect()
        };
        segments.push(AsSegment { kind, asns });
    }
    let mut path = AsPath { segments };
    path.normalize();
    Ok(path)
}

/// RFC 6793 §4.2.3: rebuild the real path from AS_PATH (2-octet, AS_TRANS
/// placeholders) and AS4_PATH, taking from AS_PATH only the leading part the
/// AS4_PATH does not cover.
fn merge_as4_path(as_path: &AsPath, as4_path: &AsPath) -> AsPath {
    let n = as_path.len_for_best_path();
    let n4 = as4_path.len_for_best_path();
    if n < n4 {
        return as_path.clone();
    }
    let mut need = n - n4;
    let mut segments = Vec::new();
    let mut prev_taken = true; // makes a leading confed segment "adjacent"
    for seg in &as_path.segments {
        if seg.kind.is_confed() {
            // "a valid AS_CONFED_SEQUENCE or AS_CONFED_SET path segment SHALL be
            // prepended if it is either the leading path segment or is adjacent
            // to a path segment that is prepended"
            if !prev_taken {
                break;
            }
            segments.push(seg.clone());
            continue;
        }
        if need == 0 {
            break;
        }
        match seg.kind {
            SegmentKind::Set => {
                segments.push(seg.clone());
                need -= 1;
            }
            _ => {
                let take = need.min(seg.asns.len());
                segments.push(AsSegment {
                    kind: seg.kind,
                    asns: seg.asns.get(..take).unwrap_or_default().to_vec(),
                });
                need -= take;
                prev_taken = take == seg.asns.len();
            }
        }
    }
    segments.extend(as4_path.segments.iter().cloned());
    let mut path = AsPath { segments };
    path.normalize();
    path
}

pub(crate) struct DecodedAttrs {
    pub(crate) attrs: PathAttributes,
    pub(crate) treat_as_withdraw: Option<AttrError>,
    pub(crate) discarded: Vec<AttrError>,
}

struct AttrDecoder {
    ctx: CodecCtx,
    attrs: PathAttributes,
    as4_path: Option<AsPath>,
    as4_aggregator: Option<(u32, Ipv4Addr)>,
}

/// Decodes the Path Attributes field. `Err` means session reset; softer
/// RFC 7606 outcomes are reported in the result.
pub(crate) fn decode(buf: &[u8], ctx: &CodecCtx) -> Result<DecodedAttrs, DecodeError> {
    let mut d = AttrDecoder {
        ctx: *ctx,
        attrs: PathAttributes::default(),
        as4_path: None,
        as4_aggregator: None,
    };
    let mut treat_as_withdraw: Option<AttrError> = None;
    let mut discarded = Vec::new();
    let mut seen = [0u64; 4];
    let mut rest = buf;
    while !rest.is_empty() {
        let mut r = Reader::new(rest);
        let header = match (r.u8(), r.u8()) {
            (Some(flags), Some(ty)) => {
                let len = if flags & EXTENDED_LENGTH != 0 {
                    r.u16().map(usize::from)
                } else {
                    r.u8().map(usize::from)
                };
                len.map(|len| (flags, ty, len))
            }
            _ => None,
        };
        let Some((flags, ty, len)) = header else {
            // RFC 7606 §4: too few octets left for an attribute header.
            // Treat-as-withdraw; the Total Path Attribute Length still locates
            // the NLRI. Three octets cannot hide an MP_REACH/MP_UNREACH.
            treat_as_withdraw
                .get_or_insert_with(|| AttrError::new(0, "truncated attribute header"));
            break;
        };
        let header_len = rest.len() - r.remaining();
        let Some(value) = r.take(len) else {
            if ty == MP_REACH_NLRI || ty == MP_UNREACH_NLRI {
                // RFC 7606 §5.3/§3(j): treat-as-withdraw needs the MP NLRI
                // parsed, which an overrunning MP attribute prevents.
                return Err(DecodeError::update(
                    sub::ATTRIBUTE_LENGTH_ERROR,
                    rest,
                    format!("{} length {len} overruns the attribute list", attr_name(ty)),
                ));
            }
            // RFC 7606 §4: last attribute overruns Total Path Attribute Length.
            treat_as_withdraw.get_or_insert_with(|| {
                AttrError::new(ty, format!("length {len} overruns the attribute list"))
            });
            break;
        };
        let raw = rest.get(..header_len + len).unwrap_or(rest);
        rest = r.rest();

        let word = &mut seen[usize::from(ty / 64)];
        let bit = 1u64 << (ty % 64);
        if *word & bit != 0 {
            if ty == MP_REACH_NLRI || ty == MP_UNREACH_NLRI {
                // RFC 7606 §3(g): repeated MP attribute is a session reset.
                return Err(DecodeError::update(
                    sub::MALFORMED_ATTRIBUTE_LIST,
                    Vec::new(),
                    format!("{} appears more than once", attr_name(ty)),
                ));
            }
            // RFC 7606 §3(g): keep the first, discard the repeats.
            discarded.push(AttrError::new(ty, "duplicate attribute discarded"));
            continue;
        }
        *word |= bit;

        match d.decode_one(flags, ty, value, raw) {
            Ok(()) => {}
            Err(Fault::Discard(e)) => discarded.push(e),
            Err(Fault::Withdraw(e)) => {
                // RFC 7606 §3(h): strongest action wins; the first reason is kept.
                treat_as_withdraw.get_or_insert(e);
            }
            Err(Fault::Reset(e)) => return Err(e),
        }
    }
    let attrs = d.finish(&mut discarded);
    Ok(DecodedAttrs {
        attrs,
        treat_as_withdraw,
        discarded,
    })
}

impl AttrDecoder {
    fn decode_one(&mut self, flags: u8, ty: u8, value: &[u8], raw: &[u8]) -> Result<(), Fault> {
        let four = self.ctx.four_octet_as;
        match ty {
            ORIGIN => {
                check_flags(flags, ty, false, true)?;
                // RFC 7606 §7.1: bad length or undefined value -> treat-as-withdraw.
                self.attrs.origin = Some(match value {
                    [0] => Origin::Igp,
                    [1] => Origin::Egp,
                    [2] => Origin::Incomplete,
                    _ => {
                        return Err(withdraw(
                            ty,
                            "bad length or undefined value (Invalid ORIGIN)",
                        ))
                    }
                });
            }
            AS_PATH => {
                check_flags(flags, ty, false, true)?;
                // RFC 7606 §7.2: malformed AS_PATH -> treat-as-withdraw.
                let path = parse_as_path(value, four)
                    .map_err(|why| withdraw(ty, format!("{why} (Malformed AS_PATH)")))?;
                // RFC 7607 §2: AS 0 in AS_PATH -> treat-as-withdraw.
                if path.contains(0) {
                    return Err(withdraw(ty, "contains AS 0"));
                }
                self.attrs.as_path = Some(path);
            }
            NEXT_HOP => {
                check_flags(flags, ty, false, true)?;
                // RFC 7606 §7.3: length != 4 -> treat-as-withdraw.
                let Ok(octets) = <[u8; 4]>::try_from(value) else {
                    return Err(withdraw(ty, "length is not 4"));
                };
                let nh = Ipv4Addr::from(octets);
                // RFC 4271 §6.3 semantic errors: "the route SHOULD be ignored",
                // no NOTIFICATION; with RFC 7606 §7.3 that is treat-as-withdraw.
                if nh.is_unspecified() || nh.is_multicast() || nh.is_broadcast() {
                    return Err(withdraw(ty, format!("{nh} is not a valid next hop")));
                }
                self.attrs.next_hop = Some(nh);
            }
            MULTI_EXIT_DISC => {
                check_flags(flags, ty, true, false)?;
                // RFC 7606 §7.4.
                self.attrs.med = Some(u32_value(ty, value)?);
            }
            LOCAL_PREF => {
                check_flags(flags, ty, false, true)?;
                // RFC 7606 §7.5 (ignoring it from eBGP peers is the caller's job).
                self.attrs.local_pref = Some(u32_value(ty, value)?);
            }
            ATOMIC_AGGREGATE => {
                check_flags(flags, ty, false, true)?;
                // RFC 7606 §7.6: length != 0 -> attribute discard.
                if !value.is_empty() {
                    return Err(discard(ty, "length is not 0"));
                }
                self.attrs.atomic_aggregate = true;
            }
            AGGREGATOR => {
                check_flags(flags, ty, true, true)?;
                // RFC 7606 §7.7: length not 6 (2-octet AS) / 8 (4-octet AS)
                // -> attribute discard.
                let agg = parse_aggregator(value, four)
                    .ok_or_else(|| discard(ty, format!("length {} is wrong", value.len())))?;
                // RFC 7607 §2: AS 0 in AGGREGATOR is logged and discarded.
                if agg.0 == 0 {
                    return Err(discard(ty, "aggregator AS 0"));
                }
                self.attrs.aggregator = Some(agg);
            }
            COMMUNITIES => {
                check_flags(flags, ty, true, true)?;
                // RFC 7606 §7.8: not a non-zero multiple of 4 -> treat-as-withdraw.
                if value.is_empty() || !value.len().is_multiple_of(4) {
                    return Err(withdraw(
                        ty,
                        format!("length {} is not a non-zero multiple of 4", value.len()),
                    ));
                }
                self.attrs.communities = be_u32s(value).collect();
            }
            EXTENDED_COMMUNITIES => {
                check_flags(flags, ty, true, true)?;
                // RFC 7606 §7.14: not a non-zero multiple of 8 -> treat-as-withdraw.
                if value.is_empty() || !value.len().is_multiple_of(8) {
                    return Err(withdraw(
                        ty,
                        format!("length {} is not a non-zero multiple of 8", value.len()),
                    ));
                }
                let mut r = Reader::new(value);
                self.attrs.ext_communities = std::iter::from_fn(|| r.u64()).collect();
            }
            LARGE_COMMUNITIES => {
                check_flags(flags, ty, true, true)?;
                // RFC 8092 §6: not a non-zero multiple of 12 -> treat-as-withdraw.
                if value.is_empty() || !value.len().is_multiple_of(12) {
                    return Err(withdraw(
                        ty,
                        format!("length {} is not a non-zero multiple of 12", value.len()),
                    ));
                }
                let mut r = Reader::new(value);
                let mut out: Vec<(u32, u32, u32)> = Vec::with_capacity(value.len() / 12);
                while let (Some(a), Some(b), Some(c)) = (r.u32(), r.u32(), r.u32()) {
                    // RFC 8092 §5: silently remove duplicates.
                    if !out.contains(&(a, b, c)) {
                        out.push((a, b, c));
                    }
                }
                self.attrs.large_communities = out;
            }
            MP_REACH_NLRI => {
                mp_flags(flags, ty, raw)?;
                self.attrs.mp_reach = decode_mp_reach(value, raw)?;
            }
            MP_UNREACH_NLRI => {
                mp_flags(flags, ty, raw)?;
                self.attrs.mp_unreach = decode_mp_unreach(value, raw)?;
            }
            AS4_PATH => {
                // RFC 6793 §4.1: AS4_PATH from a NEW speaker MUST be discarded.
                if four {
                    return Err(discard(ty, "received from a four-octet AS speaker"));
                }
                // RFC 6793 §6: a malformed AS4_PATH is discarded.
                if !flags_ok(flags, true, true) {
                    return Err(discard(ty, "wrong attribute flags"));
                }
                let mut path = parse_as_path(value, true).map_err(|why| discard(ty, why))?;
                // RFC 7607 §2: AS 0 in AS4_PATH -> treat-as-withdraw.
                if path.contains(0) {
                    return Err(withdraw(ty, "contains AS 0"));
                }
                // RFC 6793 §6: confederation segments in AS4_PATH are dropped.
                path.segments.retain(|s| !s.kind.is_confed());
                path.normalize();
                self.as4_path = Some(path);
            }
            AS4_AGGREGATOR => {
                if four {
                    return Err(discard(ty, "received from a four-octet AS speaker"));
                }
                if !flags_ok(flags, true, true) {
                    return Err(discard(ty, "wrong attribute flags"));
                }
                // RFC 6793 §6: length != 8 -> attribute discard.
                let agg = parse_aggregator(value, true)
                    .ok_or_else(|| discard(ty, format!("length {} is not 8", value.len())))?;
                if agg.0 == 0 {
                    return Err(discard(ty, "aggregator AS 0"));
                }
                self.as4_aggregator = Some(agg);
            }
            _ => {
                if flags & OPTIONAL == 0 {
                    // RFC 4271 §6.3: unrecognized well-known attribute; data is
                    // the attribute. RFC 7606 leaves this a session reset.
                    return Err(Fault::Reset(DecodeError::update(
                        sub::UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
                        raw,
                        format!("unrecognized well-known attribute type {ty}"),
                    )));
                }
                // RFC 4271 §5: unrecognized optional transitive attributes are
                // passed on with Partial set; non-transitive ones are ignored.
                if flags & TRANSITIVE != 0 {
                    self.attrs.unknown.push(RawAttr {
                        flags: (flags & (OPTIONAL | TRANSITIVE | PARTIAL)) | PARTIAL,
                        type_code: ty,
                        value: value.to_vec(),
                    });
                }
            }
        }
        Ok(())
    }

    /// RFC 6793 §4.2.3 on sessions without four-octet AS.
    fn finish(mut self, discarded: &mut Vec<AttrError>) -> PathAttributes {
        let mut use_as4_path = true;
        match (self.attrs.aggregator, self.as4_aggregator) {
            (Some((asn, _)), Some(as4)) => {
                if asn == u32::from(AS_TRANS) {
                    self.attrs.aggregator = Some(as4);
                } else {
                    // "the AS4_AGGREGATOR attribute and the AS4_PATH attribute
                    // SHALL be ignored": an OLD speaker aggregated after them.
                    use_as4_path = false;
                }
            }
            (None, Some(_)) => discarded.push(AttrError::new(
                AS4_AGGREGATOR,
                "AS4_AGGREGATOR without AGGREGATOR ignored",
            )),
            _ => {}
        }
        if use_as4_path {
            if let (Some(path), Some(as4)) = (&self.attrs.as_path, &self.as4_path) {
                self.attrs.as_path = Some(merge_as4_path(path, as4));
            }
        }
        self.attrs
    }
}

fn u32_value(ty: u8, value: &[u8]) -> Result<u32, Fault> {
    <[u8; 4]>::try_from(value)
        .map(u32::from_be_bytes)
        .map_err(|_| withdraw(ty, format!("length {} is not 4", value.len())))
}

fn parse_aggregator(value: &[u8], four_octet: bool) -> Option<(u32, Ipv4Addr)> {
    let mut r = Reader::new(value);
    let asn = if four_octet {
        r.u32()?
    } else {
        u32::from(r.u16()?)
    };
    let ip = Ipv4Addr::from(r.array::<4>()?);
    r.is_empty().then_some((asn, ip))
}

/// RFC 4760 §7 / RFC 7606 §5.3: an MP attribute we cannot trust means we
/// cannot know which routes to withdraw, so it resets the session.
fn mp_flags(flags: u8, ty: u8, raw: &[u8]) -> Result<(), Fault> {
    if flags_ok(flags, true, false) {
        Ok(())
    } else {
        Err(Fault::Reset(DecodeError::update(
            sub::ATTRIBUTE_FLAGS_ERROR,
            raw,
            format!("{} flags {flags:#04x} are wrong", attr_name(ty)),
        )))
    }
}

fn mp_error(raw: &[u8], reason: impl Into<std::borrow::Cow<'static, str>>) -> Fault {
    // RFC 4760 §7: "UPDATE Message Error" / "Optional Attribute Error".
    Fault::Reset(DecodeError::update(
        sub::OPTIONAL_ATTRIBUTE_ERROR,
        raw,
        reason,
    ))
}

fn nlri_error(e: nlri::PrefixError) -> Fault {
    // RFC 7606 §5.3: NLRI syntax errors cannot be treat-as-withdraw.
    Fault::Reset(DecodeError::update(
        sub::INVALID_NETWORK_FIELD,
        Vec::new(),
        e.reason(),
    ))
}

fn supported_family(afi: u16, safi: u8) -> bool {
    matches!((afi, safi), (AFI_IPV4 | AFI_IPV6, SAFI_UNICAST))
}

fn decode_prefixes(afi: u16, buf: &[u8]) -> Result<Vec<IpNet>, Fault> {
    let mut out = Vec::new();
    if afi == AFI_IPV4 {
        nlri::decode_v4_ipnet(buf, &mut out).map_err(nlri_error)?;
    } else {
        nlri::decode_v6(buf, &mut out).map_err(nlri_error)?;
    }
    Ok(out)
}

fn decode_mp_reach(value: &[u8], raw: &[u8]) -> Result<Option<MpReach>, Fault> {
    let mut r = Reader::new(value);
    let (Some(afi), Some(safi), Some(nh_len)) = (r.u16(), r.u8(), r.u8()) else {
        return Err(mp_error(raw, "MP_REACH_NLRI too short"));
    };
    let Some(nh) = r.take(usize::from(nh_len)) else {
        return Err(mp_error(
            raw,
            "MP_REACH_NLRI next hop overruns the attribute",
        ));
    };
    // Reserved octet: RFC 4760 §3 says ignore on receipt, but it must be there.
    if r.u8().is_none() {
        return Err(mp_error(raw, "MP_REACH_NLRI too short"));
    }
    if !supported_family(afi, safi) {
        // Not a family we negotiate: ignore it rather than reset the session.
        return Err(discard(
            MP_REACH_NLRI,
            format!("unsupported AFI/SAFI {afi}/{safi} ignored"),
        ));
    }
    let next_hops = match (afi, nh.len()) {
        (AFI_IPV4, 4) => parse_v4_hops(nh),
        // 16 = global only, 32 = global + link-local (RFC 2545 §3); IPv6 next
        // hop for IPv4 NLRI is RFC 8950.
        (_, 16 | 32) => parse_v6_hops(nh),
        // RFC 7606 §7.11: inconsistent next hop length -> session reset.
        _ => {
            return Err(mp_error(
                raw,
                format!("next hop length {} invalid for AFI {afi}", nh.len()),
            ))
        }
    };
    let nlri = decode_prefixes(afi, r.rest())?;
    Ok(Some(MpReach {
        afi,
        safi,
        next_hops,
        nlri,
    }))
}

fn parse_v4_hops(nh: &[u8]) -> Vec<IpAddr> {
    let mut r = Reader::new(nh);
    std::iter::from_fn(|| r.array::<4>().map(|a| IpAddr::V4(Ipv4Addr::from(a)))).collect()
}

fn parse_v6_hops(nh: &[u8]) -> Vec<IpAddr> {
    let mut r = Reader::new(nh);
    std::iter::from_fn(|| r.array::<16>().map(|a| IpAddr::V6(Ipv6Addr::from(a)))).collect()
}

fn decode_mp_unreach(value: &[u8], raw: &[u8]) -> Result<Option<MpUnreach>, Fault> {
    let mut r = Reader::new(value);
    let (Some(afi), Some(safi)) = (r.u16(), r.u8()) else {
        return Err(mp_error(raw, "MP_UNREACH_NLRI too short"));
    };
    if !supported_family(afi, safi) {
        if r.is_empty() {
            // Still worth reporting: it is an End-of-RIB (RFC 4724 §2).
            return Ok(Some(MpUnreach {
                afi,
                safi,
                withdrawn: Vec::new(),
            }));
        }
        return Err(discard(
            MP_UNREACH_NLRI,
            format!("unsupported AFI/SAFI {afi}/{safi} ignored"),
        ));
    }
    let withdrawn = decode_prefixes(afi, r.rest())?;
    Ok(Some(MpUnreach {
        afi,
        safi,
        withdrawn,
    }))
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

fn put_header(out: &mut BytesMut, flags: u8, ty: u8, len: usize) -> Result<(), EncodeError> {
    if len > usize::from(u8::MAX) {
        let len16 = u16::try_from(len).map_err(|_| EncodeError::TooLong { len })?;
        out.put_u8(flags | EXTENDED_LENGTH);
        out.put_u8(ty);
        out.put_u16(len16);
    } else {
        out.put_u8(flags & !EXTENDED_LENGTH);
        out.put_u8(ty);
        out.put_u8(len as u8);
    }
    Ok(())
}

fn put_attr(out: &mut BytesMut, flags: u8, ty: u8, value: &[u8]) -> Result<(), EncodeError> {
    put_header(out, flags, ty, value.len())?;
    out.put_slice(value);
    Ok(())
}

/// Octets of an AS_PATH value; sequences longer than 255 ASNs are split.
fn as_path_len(path: &AsPath, size: usize, skip_confed: bool) -> Result<usize, EncodeError> {
    let mut len = 0;
    for seg in &path.segments {
        if skip_confed && seg.kind.is_confed() {
            continue;
        }
        let n = seg.asns.len();
        if n > 255 && matches!(seg.kind, SegmentKind::Set | SegmentKind::ConfedSet) {
            return Err(EncodeError::AsSetTooLong { len: n });
        }
        len += n.div_ceil(255) * 2 + n * size;
    }
    Ok(len)
}

fn put_as_path(out: &mut BytesMut, path: &AsPath, four_octet: bool, skip_confed: bool) {
    for seg in &path.segments {
        if skip_confed && seg.kind.is_confed() {
            continue;
        }
        for chunk in seg.asns.chunks(255) {
            out.put_u8(seg.kind as u8);
            out.put_u8(chunk.len() as u8);
            for &asn in chunk {
                if four_octet {
                    out.put_u32(asn);
                } else {
                    // RFC 6793 §4.2.2: non-mappable ASNs become AS_TRANS.
                    out.put_u16(u16::try_from(asn).unwrap_or(AS_TRANS));
                }
            }
        }
    }
}

fn family_matches(afi: u16, net: &IpNet) -> bool {
    matches!(
        (afi, net),
        (AFI_IPV4, IpNet::V4(_)) | (AFI_IPV6, IpNet::V6(_))
    )
}

fn prefixes_len(afi: u16, nets: &[IpNet]) -> Result<usize, EncodeError> {
    nets.iter().try_fold(0, |acc, n| {
        if family_matches(afi, n) {
            Ok(acc + nlri::encoded_len(n.prefix_len()))
        } else {
            Err(EncodeError::InvalidMp(
                "prefix family does not match the AFI",
            ))
        }
    })
}

fn put_mp_reach(out: &mut BytesMut, mp: &MpReach) -> Result<(), EncodeError> {
    if !supported_family(mp.afi, mp.safi) {
        return Err(EncodeError::InvalidMp("unsupported AFI/SAFI"));
    }
    let nh_ok = match mp.next_hops.as_slice() {
        [IpAddr::V4(_)] => mp.afi == AFI_IPV4,
        [IpAddr::V6(_)] | [IpAddr::V6(_), IpAddr::V6(_)] => true,
        _ => false,
    };
    if !nh_ok {
        return Err(EncodeError::InvalidMp("next hops do not fit the AFI"));
    }
    let nh_len: usize = mp
        .next_hops
        .iter()
        .map(|a| if a.is_ipv4() { 4 } else { 16 })
        .sum();
    let len = 5 + nh_len + prefixes_len(mp.afi, &mp.nlri)?;
    put_header(out, OPTIONAL, MP_REACH_NLRI, len)?;
    out.put_u16(mp.afi);
    out.put_u8(mp.safi);
    out.put_u8(nh_len as u8);
    for hop in &mp.next_hops {
        match hop {
            IpAddr::V4(a) => out.put_slice(&a.octets()),
            IpAddr::V6(a) => out.put_slice(&a.octets()),
        }
    }
    out.put_u8(0);
    mp.nlri.iter().for_each(|n| nlri::encode_ip(n, out));
    Ok(())
}

fn put_mp_unreach(out: &mut BytesMut, mp: &MpUnreach) -> Result<(), EncodeError> {
    // An empty MP_UNREACH (End-of-RIB) is fine for any family.
    if !mp.withdrawn.is_empty() && !supported_family(mp.afi, mp.safi) {
        return Err(EncodeError::InvalidMp("unsupported AFI/SAFI"));
    }
    let len = 3 + prefixes_len(mp.afi, &mp.withdrawn)?;
    put_header(out, OPTIONAL, MP_UNREACH_NLRI, len)?;
    out.put_u16(mp.afi);
    out.put_u8(mp.safi);
    mp.withdrawn.iter().for_each(|n| nlri::encode_ip(n, out));
    Ok(())
}

fn put_aggregator(
    out: &mut BytesMut,
    ty: u8,
    asn: u32,
    ip: Ipv4Addr,
    four: bool,
) -> Result<(), EncodeError> {
    put_header(out, OPTIONAL | TRANSITIVE, ty, if four { 8 } else { 6 })?;
    if four {
        out.put_u32(asn);
    } else {
        out.put_u16(u16::try_from(asn).unwrap_or(AS_TRANS));
    }
    out.put_slice(&ip.octets());
    Ok(())
}

/// Encodes the Path Attributes field: MP attributes first (RFC 7606 §5.1, so a
/// peer can always find the NLRI), then by type code.
pub(crate) fn encode(
    attrs: &PathAttributes,
    ctx: &CodecCtx,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let four = ctx.four_octet_as;
    if let Some(mp) = &attrs.mp_reach {
        put_mp_reach(out, mp)?;
    }
    if let Some(mp) = &attrs.mp_unreach {
        put_mp_unreach(out, mp)?;
    }
    if let Some(origin) = attrs.origin {
        put_attr(out, TRANSITIVE, ORIGIN, &[origin as u8])?;
    }
    if let Some(path) = &attrs.as_path {
        let size = if four { 4 } else { 2 };
        put_header(out, TRANSITIVE, AS_PATH, as_path_len(path, size, false)?)?;
        put_as_path(out, path, four, false);
    }
    if let Some(nh) = attrs.next_hop {
        put_attr(out, TRANSITIVE, NEXT_HOP, &nh.octets())?;
    }
    if let Some(med) = attrs.med {
        put_attr(out, OPTIONAL, MULTI_EXIT_DISC, &med.to_be_bytes())?;
    }
    if let Some(lp) = attrs.local_pref {
        put_attr(out, TRANSITIVE, LOCAL_PREF, &lp.to_be_bytes())?;
    }
    if attrs.atomic_aggregate {
        put_attr(out, TRANSITIVE, ATOMIC_AGGREGATE, &[])?;
    }
    if let Some((asn, ip)) = attrs.aggregator {
        put_aggregator(out, AGGREGATOR, asn, ip, four)?;
    }
    if !attrs.communities.is_empty() {
        put_header(
            out,
            OPTIONAL | TRANSITIVE,
            COMMUNITIES,
            attrs.communities.len() * 4,
        )?;
        attrs.communities.iter().for_each(|&c| out.put_u32(c));
    }
    if !attrs.ext_communities.is_empty() {
        put_header(
            out,
            OPTIONAL | TRANSITIVE,
            EXTENDED_COMMUNITIES,
            attrs.ext_communities.len() * 8,
        )?;
        attrs.ext_communities.iter().for_each(|&c| out.put_u64(c));
    }
    if !four {
        // RFC 6793 §4.2.2: send AS4_PATH / AS4_AGGREGATOR only when some ASN
        // does not fit two octets; confederation segments never go in AS4_PATH.
        if let Some(path) = attrs.as_path.as_ref().filter(|p| p.needs_as4_path()) {
            put_header(
                out,
                OPTIONAL | TRANSITIVE,
                AS4_PATH,
                as_path_len(path, 4, true)?,
            )?;
            put_as_path(out, path, true, true);
        }
        if let Some((asn, ip)) = attrs
            .aggregator
            .filter(|(asn, _)| *asn > u32::from(u16::MAX))
        {
            put_aggregator(out, AS4_AGGREGATOR, asn, ip, true)?;
        }
    }
    if !attrs.large_communities.is_empty() {
        put_header(
            out,
            OPTIONAL | TRANSITIVE,
            LARGE_COMMUNITIES,
            attrs.large_communities.len() * 12,
        )?;
        for &(a, b, c) in &attrs.large_communities {
            out.put_u32(a);
            out.put_u32(b);
            out.put_u32(c);
        }
    }
    for raw in &attrs.unknown {
        put_attr(out, raw.flags, raw.type_code, &raw.value)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn seg(kind: SegmentKind, asns: &[u32]) -> AsSegment {
        AsSegment {
            kind,
            asns: asns.to_vec(),
        }
    }

    #[test]
    fn as_set_counts_one_and_confed_segments_count_zero() {
        let p = AsPath {
            segments: vec![
                seg(SegmentKind::ConfedSequence, &[65001, 65002]),
                seg(SegmentKind::Sequence, &[1, 2, 3]),
                seg(SegmentKind::Set, &[4, 5, 6]),
            ],
        };
        assert_eq!(p.len_for_best_path(), 4);
        assert_eq!(p.first_asn(), Some(1));
        assert!(p.contains(5));
        assert!(!p.contains(7));
    }

    #[test]
    fn first_asn_of_a_path_starting_with_a_set_is_none() {
        let p = AsPath {
            segments: vec![seg(SegmentKind::Set, &[1, 2])],
        };
        assert_eq!(p.first_asn(), None);
        assert_eq!(AsPath::default().first_asn(), None);
    }

    #[test]
    fn prepend_extends_a_leading_sequence_or_adds_one() {
        assert_eq!(
            AsPath::sequence([2, 3]).prepend(1),
            AsPath::sequence([1, 2, 3])
        );
        let set = AsPath {
            segments: vec![seg(SegmentKind::Set, &[7])],
        };
        assert_eq!(
            set.prepend(1).segments,
            vec![
                seg(SegmentKind::Sequence, &[1]),
                seg(SegmentKind::Set, &[7])
            ]
        );
        assert_eq!(AsPath::default().prepend(9), AsPath::sequence([9]));
    }

    #[test]
    fn long_sequences_are_split_into_255_asn_segments_and_merged_back() {
        let path = AsPath::sequence(1..=300);
        let mut out = BytesMut::new();
        put_as_path(&mut out, &path, true, false);
        assert_eq!(out.len(), as_path_len(&path, 4, false).unwrap());
        assert_eq!(&out[..2], &[2, 255]);
        assert_eq!(&out[2 + 255 * 4..2 + 255 * 4 + 2], &[2, 45]);
        assert_eq!(parse_as_path(&out, true).unwrap(), path);
    }

    #[test]
    fn oversized_as_set_is_an_encode_error() {
        let p = AsPath {
            segments: vec![seg(SegmentKind::Set, &(1..=256).collect::<Vec<_>>())],
        };
        assert_eq!(
            as_path_len(&p, 4, false),
            Err(EncodeError::AsSetTooLong { len: 256 })
        );
    }

    #[test]
    fn as4_path_merge_takes_the_leading_part_of_as_path() {
        // RFC 6793 §4.2.3: AS_PATH has 2 more ASNs than AS4_PATH.
        let as_path = AsPath::sequence([100, 200, 23456, 300]);
        let as4 = AsPath::sequence([70000, 300]);
        assert_eq!(
            merge_as4_path(&as_path, &as4),
            AsPath::sequence([100, 200, 70000, 300])
        );
    }

    #[test]
    fn as4_path_longer_than_as_path_is_ignored() {
        let as_path = AsPath::sequence([23456]);
        let as4 = AsPath::sequence([70000, 80000]);
        assert_eq!(merge_as4_path(&as_path, &as4), as_path);
    }

    #[test]
    fn as4_path_merge_keeps_leading_confed_segments_and_whole_sets() {
        let as_path = AsPath {
            segments: vec![
                seg(SegmentKind::ConfedSequence, &[65001]),
                seg(SegmentKind::Set, &[1, 2]),
                seg(SegmentKind::Sequence, &[23456]),
            ],
        };
        let as4 = AsPath::sequence([70000]);
        assert_eq!(
            merge_as4_path(&as_path, &as4).segments,
            vec![
                seg(SegmentKind::ConfedSequence, &[65001]),
                seg(SegmentKind::Set, &[1, 2]),
                seg(SegmentKind::Sequence, &[70000]),
            ]
        );
    }

    #[test]
    fn attr_error_display_names_the_attribute() {
        assert_eq!(
            AttrError::new(ORIGIN, "bad").to_string(),
            "ORIGIN (type 1): bad"
        );
    }
}
