//! UPDATE message (RFC 4271 §4.3) with RFC 7606 outcomes and RFC 4724 End-of-RIB.

use bytes::{BufMut, BytesMut};
use ipnet::{IpNet, Ipv4Net};

use super::attr::{self, MpUnreach, PathAttributes};
use super::error::{AttrError, DecodeError, EncodeError};
use super::nlri;
use super::notification::codes::update as sub;
use super::wire::Reader;
use super::{CodecCtx, AFI_IPV4, SAFI_UNICAST};

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Update {
    pub withdrawn: Vec<Ipv4Net>,
    pub attrs: PathAttributes,
    pub nlri: Vec<Ipv4Net>,
    /// RFC 7606: set when the UPDATE was malformed in a way that must be handled as treat-as-withdraw;
    /// the receiver then withdraws every prefix in nlri + withdrawn + mp_reach + mp_unreach.
    pub treat_as_withdraw: Option<AttrError>,
    /// RFC 7606 attribute-discard: attributes dropped while decoding (logged by the caller).
    pub discarded: Vec<AttrError>,
}

impl Update {
    /// All prefixes announced: IPv4 NLRI then MP_REACH.
    pub fn announced(&self) -> Vec<IpNet> {
        let mp = self
            .attrs
            .mp_reach
            .as_ref()
            .map_or(&[][..], |m| &m.nlri[..]);
        let mut out = Vec::with_capacity(self.nlri.len() + mp.len());
        out.extend(self.nlri.iter().copied().map(IpNet::V4));
        out.extend_from_slice(mp);
        out
    }

    /// All prefixes withdrawn: Withdrawn Routes then MP_UNREACH.
    pub fn withdrawn_all(&self) -> Vec<IpNet> {
        let mp = self
            .attrs
            .mp_unreach
            .as_ref()
            .map_or(&[][..], |m| &m.withdrawn[..]);
        let mut out = Vec::with_capacity(self.withdrawn.len() + mp.len());
        out.extend(self.withdrawn.iter().copied().map(IpNet::V4));
        out.extend_from_slice(mp);
        out
    }

    /// RFC 4724 §2 End-of-RIB: an empty UPDATE (IPv4 unicast) or one carrying
    /// only an empty MP_UNREACH_NLRI.
    pub fn is_end_of_rib(&self) -> Option<(u16, u8)> {
        if !self.withdrawn.is_empty() || !self.nlri.is_empty() || self.treat_as_withdraw.is_some() {
            return None;
        }
        let probe = PathAttributes {
            mp_unreach: self.attrs.mp_unreach.clone(),
            ..PathAttributes::default()
        };
        if self.attrs != probe {
            return None;
        }
        match &self.attrs.mp_unreach {
            None => Some((AFI_IPV4, SAFI_UNICAST)),
            Some(u) if u.withdrawn.is_empty() => Some((u.afi, u.safi)),
            Some(_) => None,
        }
    }

    pub fn end_of_rib(afi: u16, safi: u8) -> Update {
        let mut u = Update::default();
        if (afi, safi) != (AFI_IPV4, SAFI_UNICAST) {
            u.attrs.mp_unreach = Some(MpUnreach {
                afi,
                safi,
                withdrawn: Vec::new(),
            });
        }
        u
    }

    pub(crate) fn decode_body(body: &[u8], ctx: &CodecCtx) -> Result<Self, DecodeError> {
        // RFC 4271 §6.3 (kept by RFC 7606 §3(a)): field lengths that overrun
        // the message are Malformed Attribute List, session reset.
        let overrun = |what: &'static str| {
            DecodeError::update(sub::MALFORMED_ATTRIBUTE_LIST, Vec::new(), what)
        };
        let mut r = Reader::new(body);
        let withdrawn_len = r.u16().ok_or_else(|| overrun("UPDATE too short"))?;
        let withdrawn_bytes = r
            .take(usize::from(withdrawn_len))
            .ok_or_else(|| overrun("Withdrawn Routes Length overruns the message"))?;
        let attrs_len = r
            .u16()
            .ok_or_else(|| overrun("Withdrawn Routes Length overruns the message"))?;
        let attr_bytes = r
            .take(usize::from(attrs_len))
            .ok_or_else(|| overrun("Total Path Attribute Length overruns the message"))?;
        let nlri_bytes = r.rest();

        // RFC 7606 §5.3: NLRI/withdrawn syntax errors are a session reset.
        let nlri_err = |e: nlri::PrefixError| {
            DecodeError::update(sub::INVALID_NETWORK_FIELD, Vec::new(), e.reason())
        };
        let mut withdrawn = Vec::new();
        nlri::decode_v4(withdrawn_bytes, &mut withdrawn).map_err(nlri_err)?;
        let attr::DecodedAttrs {
            attrs,
            mut treat_as_withdraw,
            discarded,
        } = attr::decode(attr_bytes, ctx)?;
        let mut nlri = Vec::new();
        nlri::decode_v4(nlri_bytes, &mut nlri).map_err(nlri_err)?;

        // RFC 7606 §3(d): missing well-known mandatory attributes are
        // treat-as-withdraw. They are only mandatory when something is
        // announced (RFC 4760 §3 for MP_REACH); NEXT_HOP only for the IPv4
        // NLRI field (RFC 4760 makes it optional otherwise).
        if treat_as_withdraw.is_none() && (!nlri.is_empty() || attrs.mp_reach.is_some()) {
            let missing = if attrs.origin.is_none() {
                Some(attr::attr_type::ORIGIN)
            } else if attrs.as_path.is_none() {
                Some(attr::attr_type::AS_PATH)
            } else if !nlri.is_empty() && attrs.next_hop.is_none() {
                Some(attr::attr_type::NEXT_HOP)
            } else {
                None
            };
            treat_as_withdraw =
                missing.map(|ty| AttrError::new(ty, "missing well-known mandatory attribute"));
        }
        Ok(Update {
            withdrawn,
            attrs,
            nlri,
            treat_as_withdraw,
            discarded,
        })
    }

    /// `treat_as_withdraw` and `discarded` are receive-side notes and are not encoded.
    pub(crate) fn encode_body(
        &self,
        ctx: &CodecCtx,
        out: &mut BytesMut,
    ) -> Result<(), EncodeError> {
        let withdrawn_len: usize = self
            .withdrawn
            .iter()
            .map(|n| nlri::encoded_len(n.prefix_len()))
            .sum();
        let withdrawn_len16 = u16::try_from(withdrawn_len)
            .map_err(|_| EncodeError::TooLong { len: withdrawn_len })?;
        out.put_u16(withdrawn_len16);
        self.withdrawn.iter().for_each(|n| nlri::encode_v4(n, out));

        let attrs_at = out.len();
        out.put_u16(0); // patched below
        attr::encode(&self.attrs, ctx, out)?;
        let attrs_len = out.len() - attrs_at - 2;
        let attrs_len16 =
            u16::try_from(attrs_len).map_err(|_| EncodeError::TooLong { len: attrs_len })?;
        if let Some(field) = out.get_mut(attrs_at..attrs_at + 2) {
            field.copy_from_slice(&attrs_len16.to_be_bytes());
        }
        self.nlri.iter().for_each(|n| nlri::encode_v4(n, out));
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::packet::attr::attr_type::*;
    use crate::packet::{
        AsPath, AsSegment, Message, MpReach, Origin, RawAttr, SegmentKind, AFI_IPV6, AS_TRANS,
    };
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    const TWO: CodecCtx = CodecCtx {
        four_octet_as: false,
    };
    const FOUR: CodecCtx = CodecCtx {
        four_octet_as: true,
    };
    const WK: u8 = 0x40; // well-known: transitive only
    const OPT_T: u8 = 0xc0;
    const OPT_NT: u8 = 0x80;

    fn v4(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn encode(u: &Update, ctx: &CodecCtx) -> BytesMut {
        let mut out = BytesMut::new();
        Message::Update(u.clone()).encode(ctx, &mut out).unwrap();
        out
    }

    fn decode(buf: &[u8], ctx: &CodecCtx) -> Result<Update, DecodeError> {
        match Message::decode(buf, ctx)? {
            Message::Update(u) => Ok(u),
            other => panic!("not an UPDATE: {other:?}"),
        }
    }

    fn round_trip(u: &Update, ctx: &CodecCtx) {
        assert_eq!(&decode(&encode(u, ctx), ctx).unwrap(), u, "ctx {ctx:?}");
    }

    fn attr(flags: u8, ty: u8, value: &[u8]) -> Vec<u8> {
        let mut v = vec![flags, ty];
        if flags & 0x10 != 0 {
            v.extend_from_slice(&(value.len() as u16).to_be_bytes());
        } else {
            v.push(value.len() as u8);
        }
        v.extend_from_slice(value);
        v
    }

    /// ORIGIN IGP, AS_PATH [65001], NEXT_HOP 192.0.2.1 in the given encoding.
    fn mandatory(ctx: &CodecCtx) -> Vec<u8> {
        let mut v = attr(WK, ORIGIN, &[0]);
        if ctx.four_octet_as {
            v.extend(attr(WK, AS_PATH, &[2, 1, 0, 0, 0xfd, 0xe9]));
        } else {
            v.extend(attr(WK, AS_PATH, &[2, 1, 0xfd, 0xe9]));
        }
        v.extend(attr(WK, NEXT_HOP, &[192, 0, 2, 1]));
        v
    }

    fn update_bytes(withdrawn: &[u8], attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
        let len = 19 + 2 + withdrawn.len() + 2 + attrs.len() + nlri.len();
        let mut v = vec![0xff; 16];
        v.extend_from_slice(&(len as u16).to_be_bytes());
        v.push(2);
        v.extend_from_slice(&(withdrawn.len() as u16).to_be_bytes());
        v.extend_from_slice(withdrawn);
        v.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        v.extend_from_slice(attrs);
        v.extend_from_slice(nlri);
        v
    }

    /// An UPDATE announcing 10.0.0.0/8 with the mandatory attributes plus `extra`.
    fn with_extra(ctx: &CodecCtx, extra: &[u8]) -> Result<Update, DecodeError> {
        let mut attrs = mandatory(ctx);
        attrs.extend_from_slice(extra);
        decode(&update_bytes(&[], &attrs, &[8, 10]), ctx)
    }

    fn assert_taw(u: &Update, ty: u8) {
        let taw = u.treat_as_withdraw.as_ref().expect("treat-as-withdraw");
        assert_eq!(taw.type_code, ty, "{taw}");
    }

    fn assert_reset(e: DecodeError, code: u8, subcode: u8) {
        assert_eq!((e.code, e.subcode), (code, subcode), "{e}");
    }

    fn full_attrs() -> PathAttributes {
        PathAttributes {
            origin: Some(Origin::Incomplete),
            as_path: Some(AsPath {
                segments: vec![
                    AsSegment {
                        kind: SegmentKind::Sequence,
                        asns: vec![65001, 4_200_000_000, 3356],
                    },
                    AsSegment {
                        kind: SegmentKind::Set,
                        asns: vec![64512, 70000],
                    },
                ],
            }),
            next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
            med: Some(50),
            local_pref: Some(200),
            atomic_aggregate: true,
            aggregator: Some((4_200_000_001, Ipv4Addr::new(198, 51, 100, 1))),
            communities: vec![0xfde9_0001, 0xffff_ff01],
            ext_communities: vec![0x0002_fde9_0000_0064],
            large_communities: vec![(4_200_000_000, 1, 2), (65001, 0, 0)],
            mp_reach: Some(MpReach {
                afi: AFI_IPV6,
                safi: SAFI_UNICAST,
                next_hops: vec![
                    IpAddr::V6("2001:db8::1".parse().unwrap()),
                    IpAddr::V6("fe80::1".parse().unwrap()),
                ],
                nlri: vec![net("2001:db8:1::/48"), net("::/0")],
            }),
            mp_unreach: Some(MpUnreach {
                afi: AFI_IPV6,
                safi: SAFI_UNICAST,
                withdrawn: vec![net("2001:db8:2::/48")],
            }),
            unknown: vec![RawAttr {
                flags: 0xe0,
                type_code: 99,
                value: vec![1, 2, 3],
            }],
        }
    }

    #[test]
    fn update_with_every_attribute_round_trips_in_both_contexts() {
        let u = Update {
            withdrawn: vec![v4("192.168.0.0/16"), v4("0.0.0.0/0")],
            attrs: full_attrs(),
            nlri: vec![v4("10.0.0.0/8"), v4("203.0.113.128/25")],
            ..Update::default()
        };
        round_trip(&u, &TWO);
        round_trip(&u, &FOUR);
    }

    #[test]
    fn every_attribute_round_trips_on_its_own() {
        let full = full_attrs();
        let base = PathAttributes {
            origin: Some(Origin::Egp),
            as_path: Some(AsPath::default()),
            next_hop: Some(Ipv4Addr::new(10, 0, 0, 1)),
            ..PathAttributes::default()
        };
        let variants = [
            PathAttributes {
                med: full.med,
                ..base.clone()
            },
            PathAttributes {
                local_pref: full.local_pref,
                ..base.clone()
            },
            PathAttributes {
                atomic_aggregate: true,
                ..base.clone()
            },
            PathAttributes {
                aggregator: Some((65001, Ipv4Addr::new(1, 2, 3, 4))),
                ..base.clone()
            },
            PathAttributes {
                aggregator: full.aggregator,
                ..base.clone()
            },
            PathAttributes {
                communities: full.communities.clone(),
                ..base.clone()
            },
            PathAttributes {
                ext_communities: full.ext_communities.clone(),
                ..base.clone()
            },
            PathAttributes {
                large_communities: full.large_communities.clone(),
                ..base.clone()
            },
            PathAttributes {
                mp_reach: full.mp_reach.clone(),
                ..base.clone()
            },
            PathAttributes {
                mp_unreach: full.mp_unreach.clone(),
                ..base.clone()
            },
            PathAttributes {
                unknown: full.unknown.clone(),
                ..base.clone()
            },
            PathAttributes {
                as_path: full.as_path.clone(),
                ..base.clone()
            },
            PathAttributes {
                origin: Some(Origin::Igp),
                ..base.clone()
            },
        ];
        for attrs in variants {
            let u = Update {
                nlri: vec![v4("10.1.0.0/16")],
                attrs,
                ..Update::default()
            };
            round_trip(&u, &TWO);
            round_trip(&u, &FOUR);
        }
    }

    #[test]
    fn known_good_default_route_update_bytes() {
        let u = Update {
            attrs: PathAttributes {
                origin: Some(Origin::Igp),
                as_path: Some(AsPath::sequence([65001])),
                next_hop: Some(Ipv4Addr::new(10, 0, 0, 1)),
                ..PathAttributes::default()
            },
            nlri: vec![v4("0.0.0.0/0")],
            ..Update::default()
        };
        let mut want = vec![0xff; 16];
        want.extend_from_slice(&[0, 44, 2, 0, 0, 0, 20]);
        want.extend_from_slice(&[0x40, 1, 1, 0]);
        want.extend_from_slice(&[0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe9]);
        want.extend_from_slice(&[0x40, 3, 4, 10, 0, 0, 1]);
        want.push(0); // 0.0.0.0/0
        assert_eq!(&encode(&u, &FOUR)[..], &want[..]);
        assert_eq!(decode(&want, &FOUR).unwrap(), u);
        // Same route on a two-octet session.
        let two = encode(&u, &TWO);
        assert_eq!(
            &two[23..38],
            &[0x40, 1, 1, 0, 0x40, 2, 4, 2, 1, 0xfd, 0xe9, 0x40, 3, 4, 10]
        );
        assert_eq!(decode(&two, &TWO).unwrap(), u);
    }

    #[test]
    fn ipv4_end_of_rib_is_an_empty_update() {
        let eor = Update::end_of_rib(AFI_IPV4, SAFI_UNICAST);
        let bytes = encode(&eor, &FOUR);
        assert_eq!(bytes.len(), 23);
        assert_eq!(&bytes[16..], &[0, 23, 2, 0, 0, 0, 0]);
        assert_eq!(decode(&bytes, &FOUR).unwrap().is_end_of_rib(), Some((1, 1)));
    }

    #[test]
    fn ipv6_end_of_rib_is_an_empty_mp_unreach() {
        let eor = Update::end_of_rib(AFI_IPV6, SAFI_UNICAST);
        let bytes = encode(&eor, &TWO);
        assert_eq!(&bytes[19..], &[0, 0, 0, 6, 0x80, 15, 3, 0, 2, 1]);
        assert_eq!(decode(&bytes, &TWO).unwrap().is_end_of_rib(), Some((2, 1)));
    }

    #[test]
    fn end_of_rib_for_a_family_we_do_not_parse_is_still_recognised() {
        let eor = Update::end_of_rib(1, 128);
        assert_eq!(
            decode(&encode(&eor, &FOUR), &FOUR).unwrap().is_end_of_rib(),
            Some((1, 128))
        );
    }

    #[test]
    fn updates_with_content_are_not_end_of_rib() {
        let u = Update {
            withdrawn: vec![v4("10.0.0.0/8")],
            ..Update::default()
        };
        assert_eq!(u.is_end_of_rib(), None);
        let mut u = Update::end_of_rib(AFI_IPV6, SAFI_UNICAST);
        u.attrs.med = Some(1);
        assert_eq!(u.is_end_of_rib(), None);
        let u = Update {
            attrs: PathAttributes {
                mp_unreach: full_attrs().mp_unreach,
                ..PathAttributes::default()
            },
            ..Update::default()
        };
        assert_eq!(u.is_end_of_rib(), None);
    }

    #[test]
    fn announced_and_withdrawn_all_collect_every_family() {
        let u = Update {
            withdrawn: vec![v4("192.168.0.0/16")],
            attrs: full_attrs(),
            nlri: vec![v4("10.0.0.0/8")],
            ..Update::default()
        };
        assert_eq!(
            u.announced(),
            vec![net("10.0.0.0/8"), net("2001:db8:1::/48"), net("::/0")]
        );
        assert_eq!(
            u.withdrawn_all(),
            vec![net("192.168.0.0/16"), net("2001:db8:2::/48")]
        );
    }

    #[test]
    fn host_bits_in_nlri_are_masked() {
        let u = with_extra(&FOUR, &[]).unwrap();
        assert_eq!(u.nlri, vec![v4("10.0.0.0/8")]);
        let bytes = update_bytes(&[], &mandatory(&FOUR), &[9, 10, 0xff]);
        assert_eq!(
            decode(&bytes, &FOUR).unwrap().nlri,
            vec![v4("10.128.0.0/9")]
        );
    }

    #[test]
    fn update_with_attributes_but_no_nlri_is_legal() {
        let bytes = update_bytes(&[], &attr(OPT_NT, MULTI_EXIT_DISC, &[0, 0, 0, 5]), &[]);
        let u = decode(&bytes, &FOUR).unwrap();
        assert_eq!(u.treat_as_withdraw, None);
        assert_eq!(u.attrs.med, Some(5));
    }

    #[test]
    fn withdraw_only_update_needs_no_attributes() {
        let u = decode(&update_bytes(&[24, 10, 1, 2], &[], &[]), &FOUR).unwrap();
        assert_eq!(u.withdrawn, vec![v4("10.1.2.0/24")]);
        assert_eq!(u.treat_as_withdraw, None);
    }

    #[test]
    fn withdrawn_length_overrunning_the_message_is_malformed_attribute_list() {
        let mut bytes = update_bytes(&[], &[], &[]);
        bytes[19..21].copy_from_slice(&[0, 5]);
        assert_reset(decode(&bytes, &FOUR).unwrap_err(), 3, 1);
    }

    #[test]
    fn total_attribute_length_overrunning_the_message_is_malformed_attribute_list() {
        let mut bytes = update_bytes(&[], &mandatory(&FOUR), &[]);
        let n = bytes.len();
        let bad = ((n - 23) + 1) as u16;
        bytes[21..23].copy_from_slice(&bad.to_be_bytes());
        assert_reset(decode(&bytes, &FOUR).unwrap_err(), 3, 1);
    }

    #[test]
    fn missing_origin_is_treat_as_withdraw() {
        let attrs: Vec<u8> = mandatory(&FOUR)[4..].to_vec();
        let u = decode(&update_bytes(&[], &attrs, &[8, 10]), &FOUR).unwrap();
        assert_taw(&u, ORIGIN);
        assert_eq!(
            u.announced(),
            vec![net("10.0.0.0/8")],
            "prefixes kept so they can be withdrawn"
        );
    }

    #[test]
    fn missing_as_path_is_treat_as_withdraw() {
        let mut attrs = attr(WK, ORIGIN, &[0]);
        attrs.extend(attr(WK, NEXT_HOP, &[1, 1, 1, 1]));
        assert_taw(
            &decode(&update_bytes(&[], &attrs, &[8, 10]), &FOUR).unwrap(),
            AS_PATH,
        );
    }

    #[test]
    fn missing_next_hop_with_ipv4_nlri_is_treat_as_withdraw() {
        let attrs = mandatory(&FOUR)[..13].to_vec();
        assert_taw(
            &decode(&update_bytes(&[], &attrs, &[8, 10]), &FOUR).unwrap(),
            NEXT_HOP,
        );
    }

    #[test]
    fn mp_reach_only_update_needs_no_next_hop_attribute() {
        let u = Update {
            attrs: PathAttributes {
                origin: Some(Origin::Igp),
                as_path: Some(AsPath::sequence([65001])),
                mp_reach: full_attrs().mp_reach,
                ..PathAttributes::default()
            },
            ..Update::default()
        };
        assert_eq!(
            decode(&encode(&u, &FOUR), &FOUR).unwrap().treat_as_withdraw,
            None
        );
    }

    #[test]
    fn mp_reach_without_origin_is_treat_as_withdraw() {
        let u = Update {
            attrs: PathAttributes {
                as_path: Some(AsPath::sequence([65001])),
                mp_reach: full_attrs().mp_reach,
                ..PathAttributes::default()
            },
            ..Update::default()
        };
        assert_taw(&decode(&encode(&u, &FOUR), &FOUR).unwrap(), ORIGIN);
    }

    #[test]
    fn malformed_origin_is_treat_as_withdraw() {
        let mut attrs = attr(WK, ORIGIN, &[3]);
        attrs.extend_from_slice(&mandatory(&FOUR)[4..]);
        assert_taw(
            &decode(&update_bytes(&[], &attrs, &[8, 10]), &FOUR).unwrap(),
            ORIGIN,
        );
        let mut attrs = attr(WK, ORIGIN, &[0, 0]);
        attrs.extend_from_slice(&mandatory(&FOUR)[4..]);
        assert_taw(
            &decode(&update_bytes(&[], &attrs, &[8, 10]), &FOUR).unwrap(),
            ORIGIN,
        );
    }

    #[test]
    fn malformed_as_path_is_treat_as_withdraw() {
        for (ctx, bad) in [
            (FOUR, &[2u8, 0][..]),          // zero-length segment
            (FOUR, &[5, 1, 0, 0, 0, 1]),    // unknown segment type
            (FOUR, &[2, 2, 0, 0, 0, 1]),    // overrun
            (FOUR, &[2, 1, 0, 0, 0, 1, 2]), // lone trailing octet
            (TWO, &[2, 2, 0, 1, 0]),        // overrun, two-octet
            (FOUR, &[2, 1, 0, 0, 0, 0]),    // AS 0 (RFC 7607)
        ] {
            let mut attrs = attr(WK, ORIGIN, &[0]);
            attrs.extend(attr(WK, AS_PATH, bad));
            attrs.extend(attr(WK, NEXT_HOP, &[1, 1, 1, 1]));
            let u = decode(&update_bytes(&[], &attrs, &[8, 10]), &ctx).unwrap();
            assert_taw(&u, AS_PATH);
        }
    }

    #[test]
    fn next_hop_of_wrong_length_is_treat_as_withdraw() {
        let mut attrs = mandatory(&FOUR)[..13].to_vec();
        attrs.extend(attr(WK, NEXT_HOP, &[1, 1, 1]));
        assert_taw(
            &decode(&update_bytes(&[], &attrs, &[8, 10]), &FOUR).unwrap(),
            NEXT_HOP,
        );
    }

    #[test]
    fn zero_multicast_or_broadcast_next_hop_is_treat_as_withdraw() {
        for nh in [[0, 0, 0, 0], [224, 0, 0, 5], [255, 255, 255, 255]] {
            let mut attrs = mandatory(&FOUR)[..13].to_vec();
            attrs.extend(attr(WK, NEXT_HOP, &nh));
            assert_taw(
                &decode(&update_bytes(&[], &attrs, &[8, 10]), &FOUR).unwrap(),
                NEXT_HOP,
            );
        }
    }

    #[test]
    fn med_and_local_pref_of_wrong_length_are_treat_as_withdraw() {
        assert_taw(
            &with_extra(&FOUR, &attr(OPT_NT, MULTI_EXIT_DISC, &[0, 1])).unwrap(),
            MULTI_EXIT_DISC,
        );
        assert_taw(
            &with_extra(&FOUR, &attr(WK, LOCAL_PREF, &[0, 0, 0, 0, 1])).unwrap(),
            LOCAL_PREF,
        );
    }

    #[test]
    fn communities_of_bad_length_are_treat_as_withdraw() {
        for (ty, len) in [
            (COMMUNITIES, 0usize),
            (COMMUNITIES, 6),
            (EXTENDED_COMMUNITIES, 4),
            (LARGE_COMMUNITIES, 8),
            (LARGE_COMMUNITIES, 0),
        ] {
            let u = with_extra(&FOUR, &attr(OPT_T, ty, &vec![1; len])).unwrap();
            assert_taw(&u, ty);
        }
    }

    #[test]
    fn duplicate_large_communities_are_removed() {
        let mut v = Vec::new();
        for c in [[0u8; 12], [1; 12], [0; 12]] {
            v.extend_from_slice(&c);
        }
        let u = with_extra(&FOUR, &attr(OPT_T, LARGE_COMMUNITIES, &v)).unwrap();
        assert_eq!(
            u.attrs.large_communities,
            vec![(0, 0, 0), (0x0101_0101, 0x0101_0101, 0x0101_0101)]
        );
        assert_eq!(u.treat_as_withdraw, None);
    }

    #[test]
    fn atomic_aggregate_with_a_value_is_attribute_discard() {
        let u = with_extra(&FOUR, &attr(WK, ATOMIC_AGGREGATE, &[1])).unwrap();
        assert_eq!(u.treat_as_withdraw, None);
        assert!(!u.attrs.atomic_aggregate);
        assert_eq!(u.discarded.len(), 1);
        assert_eq!(u.discarded[0].type_code, ATOMIC_AGGREGATE);
    }

    #[test]
    fn aggregator_of_wrong_length_is_attribute_discard() {
        // 6 octets on a four-octet session and 8 on a two-octet one are wrong.
        for (ctx, len) in [(FOUR, 6usize), (TWO, 8), (FOUR, 7)] {
            let u = with_extra(&ctx, &attr(OPT_T, AGGREGATOR, &vec![1; len])).unwrap();
            assert_eq!(u.treat_as_withdraw, None);
            assert_eq!(u.attrs.aggregator, None);
            assert_eq!(u.discarded[0].type_code, AGGREGATOR);
        }
    }

    #[test]
    fn aggregator_with_as_0_is_attribute_discard() {
        let u = with_extra(&FOUR, &attr(OPT_T, AGGREGATOR, &[0, 0, 0, 0, 1, 2, 3, 4])).unwrap();
        assert_eq!((u.attrs.aggregator, u.discarded.len()), (None, 1));
    }

    #[test]
    fn attribute_flags_conflict_is_treat_as_withdraw() {
        // ORIGIN marked optional; COMMUNITIES marked non-transitive.
        let mut attrs = attr(OPT_T, ORIGIN, &[0]);
        attrs.extend_from_slice(&mandatory(&FOUR)[4..]);
        assert_taw(
            &decode(&update_bytes(&[], &attrs, &[8, 10]), &FOUR).unwrap(),
            ORIGIN,
        );
        assert_taw(
            &with_extra(&FOUR, &attr(OPT_NT, COMMUNITIES, &[0, 0, 0, 1])).unwrap(),
            COMMUNITIES,
        );
        assert_taw(
            &with_extra(&FOUR, &attr(OPT_T, MULTI_EXIT_DISC, &[0, 0, 0, 1])).unwrap(),
            MULTI_EXIT_DISC,
        );
    }

    #[test]
    fn partial_and_extended_length_flags_are_accepted() {
        let u = with_extra(
            &FOUR,
            &attr(OPT_T | 0x20 | 0x10, COMMUNITIES, &[0, 0, 0, 1]),
        )
        .unwrap();
        assert_eq!(u.treat_as_withdraw, None);
        assert_eq!(u.attrs.communities, vec![1]);
    }

    #[test]
    fn duplicate_attribute_keeps_the_first_and_discards_the_rest() {
        let u = with_extra(&FOUR, &attr(WK, ORIGIN, &[2])).unwrap();
        assert_eq!(u.attrs.origin, Some(Origin::Igp));
        assert_eq!(u.treat_as_withdraw, None);
        assert_eq!(
            u.discarded,
            vec![AttrError::new(ORIGIN, "duplicate attribute discarded")]
        );
    }

    #[test]
    fn duplicate_mp_reach_is_malformed_attribute_list() {
        let mp = attr(
            OPT_NT,
            MP_REACH_NLRI,
            &[
                0, 2, 1, 16, 0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0,
            ],
        );
        let mut extra = mp.clone();
        extra.extend(mp);
        assert_reset(with_extra(&FOUR, &extra).unwrap_err(), 3, 1);
        let un = attr(OPT_NT, MP_UNREACH_NLRI, &[0, 2, 1]);
        let mut extra = un.clone();
        extra.extend(un);
        assert_reset(with_extra(&FOUR, &extra).unwrap_err(), 3, 1);
    }

    #[test]
    fn unrecognized_well_known_attribute_is_3_2_with_the_attribute_as_data() {
        let bad = attr(WK, 42, &[7, 7]);
        let e = with_extra(&FOUR, &bad).unwrap_err();
        assert_reset(e.clone(), 3, 2);
        assert_eq!(e.data, bad);
    }

    #[test]
    fn unknown_optional_transitive_attribute_is_kept_with_partial_set() {
        let u = with_extra(&FOUR, &attr(OPT_T, 99, &[1, 2])).unwrap();
        assert_eq!(
            u.attrs.unknown,
            vec![RawAttr {
                flags: 0xe0,
                type_code: 99,
                value: vec![1, 2]
            }]
        );
        let again = encode(&u, &FOUR);
        assert!(
            again.windows(5).any(|w| w == [0xe0, 99, 2, 1, 2]),
            "re-advertised with Partial"
        );
    }

    #[test]
    fn unknown_optional_non_transitive_attribute_is_dropped() {
        let u = with_extra(&FOUR, &attr(OPT_NT, 99, &[1, 2])).unwrap();
        assert!(u.attrs.unknown.is_empty());
        assert!(u.discarded.is_empty());
        assert_eq!(u.treat_as_withdraw, None);
    }

    #[test]
    fn nlri_prefix_longer_than_32_is_invalid_network_field() {
        let bytes = update_bytes(&[], &mandatory(&FOUR), &[33, 1, 2, 3, 4, 5]);
        assert_reset(decode(&bytes, &FOUR).unwrap_err(), 3, 10);
    }

    #[test]
    fn overrunning_nlri_is_invalid_network_field() {
        let bytes = update_bytes(&[], &mandatory(&FOUR), &[24, 10, 0]);
        assert_reset(decode(&bytes, &FOUR).unwrap_err(), 3, 10);
    }

    #[test]
    fn malformed_withdrawn_routes_are_invalid_network_field() {
        assert_reset(
            decode(&update_bytes(&[40, 1, 2, 3, 4, 5], &[], &[]), &FOUR).unwrap_err(),
            3,
            10,
        );
        assert_reset(
            decode(&update_bytes(&[16, 10], &[], &[]), &FOUR).unwrap_err(),
            3,
            10,
        );
    }

    #[test]
    fn mp_reach_prefix_longer_than_128_is_invalid_network_field() {
        let mut v = vec![0, 2, 1, 16];
        v.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).octets());
        v.push(0);
        v.extend_from_slice(&[129, 0]);
        assert_reset(
            with_extra(&FOUR, &attr(OPT_NT, MP_REACH_NLRI, &v)).unwrap_err(),
            3,
            10,
        );
    }

    #[test]
    fn mp_unreach_prefix_overrun_is_invalid_network_field() {
        let e = with_extra(&FOUR, &attr(OPT_NT, MP_UNREACH_NLRI, &[0, 1, 1, 24, 10])).unwrap_err();
        assert_reset(e, 3, 10);
    }

    #[test]
    fn mp_reach_with_bad_next_hop_length_is_optional_attribute_error() {
        for (afi, nh_len) in [(2u16, 4usize), (2, 12), (1, 5), (2, 0)] {
            let mut v = afi.to_be_bytes().to_vec();
            v.extend_from_slice(&[1, nh_len as u8]);
            v.extend(std::iter::repeat_n(1, nh_len));
            v.push(0);
            let raw = attr(OPT_NT, MP_REACH_NLRI, &v);
            let e = with_extra(&FOUR, &raw).unwrap_err();
            assert_reset(e.clone(), 3, 9);
            assert_eq!(e.data, raw, "data is the attribute");
        }
    }

    #[test]
    fn truncated_mp_attributes_are_optional_attribute_error() {
        assert_reset(
            with_extra(&FOUR, &attr(OPT_NT, MP_REACH_NLRI, &[0, 2, 1, 16, 0])).unwrap_err(),
            3,
            9,
        );
        assert_reset(
            with_extra(&FOUR, &attr(OPT_NT, MP_REACH_NLRI, &[0, 2, 1, 0])).unwrap_err(),
            3,
            9,
        );
        assert_reset(
            with_extra(&FOUR, &attr(OPT_NT, MP_UNREACH_NLRI, &[0, 2])).unwrap_err(),
            3,
            9,
        );
    }

    #[test]
    fn mp_attribute_with_wrong_flags_is_a_session_reset() {
        let e = with_extra(&FOUR, &attr(OPT_T, MP_UNREACH_NLRI, &[0, 2, 1])).unwrap_err();
        assert_reset(e, 3, 4);
    }

    #[test]
    fn ipv4_mp_reach_with_ipv6_next_hop_is_accepted() {
        // RFC 8950: IPv4 NLRI with an IPv6 next hop.
        let mut v = vec![0, 1, 1, 16];
        v.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v.extend_from_slice(&[0, 8, 10]);
        let u = with_extra(&FOUR, &attr(OPT_NT, MP_REACH_NLRI, &v)).unwrap();
        let mp = u.attrs.mp_reach.unwrap();
        assert_eq!(mp.next_hops, vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]);
        assert_eq!(mp.nlri, vec![net("10.0.0.0/8")]);
    }

    #[test]
    fn mp_reach_for_an_unsupported_family_is_discarded() {
        let v = [0, 1, 128, 4, 1, 1, 1, 1, 0, 0xde, 0xad];
        let u = with_extra(&FOUR, &attr(OPT_NT, MP_REACH_NLRI, &v)).unwrap();
        assert_eq!(u.attrs.mp_reach, None);
        assert_eq!(u.discarded[0].type_code, MP_REACH_NLRI);
        assert_eq!(u.treat_as_withdraw, None);
    }

    #[test]
    fn attribute_overrunning_the_attribute_list_is_treat_as_withdraw() {
        let mut attrs = mandatory(&FOUR);
        attrs.extend_from_slice(&[OPT_T, COMMUNITIES, 8, 0, 0, 0, 1]);
        let u = decode(&update_bytes(&[], &attrs, &[8, 10]), &FOUR).unwrap();
        assert_taw(&u, COMMUNITIES);
        assert_eq!(
            u.nlri,
            vec![v4("10.0.0.0/8")],
            "NLRI located via the total length"
        );
    }

    #[test]
    fn truncated_attribute_header_is_treat_as_withdraw() {
        let mut attrs = mandatory(&FOUR);
        attrs.extend_from_slice(&[OPT_T, COMMUNITIES]);
        assert_taw(
            &decode(&update_bytes(&[], &attrs, &[8, 10]), &FOUR).unwrap(),
            0,
        );
        let mut attrs = mandatory(&FOUR);
        attrs.extend_from_slice(&[OPT_T | 0x10, COMMUNITIES, 0]);
        assert!(decode(&update_bytes(&[], &attrs, &[8, 10]), &FOUR)
            .unwrap()
            .treat_as_withdraw
            .is_some());
    }

    #[test]
    fn mp_attribute_overrunning_the_attribute_list_is_attribute_length_error() {
        let mut attrs = mandatory(&FOUR);
        let tail = [OPT_NT, MP_UNREACH_NLRI, 9, 0, 2, 1];
        attrs.extend_from_slice(&tail);
        let e = decode(&update_bytes(&[], &attrs, &[]), &FOUR).unwrap_err();
        assert_reset(e.clone(), 3, 5);
        assert_eq!(e.data, tail);
    }

    #[test]
    fn two_octet_session_sends_as_trans_and_as4_path_for_big_asns() {
        let u = Update {
            attrs: PathAttributes {
                origin: Some(Origin::Igp),
                as_path: Some(AsPath::sequence([65001, 4_200_000_000])),
                next_hop: Some(Ipv4Addr::new(10, 0, 0, 1)),
                aggregator: Some((4_200_000_000, Ipv4Addr::new(1, 2, 3, 4))),
                ..PathAttributes::default()
            },
            nlri: vec![v4("10.0.0.0/8")],
            ..Update::default()
        };
        let bytes = encode(&u, &TWO);
        let trans = AS_TRANS.to_be_bytes();
        let as_path = [0x40, AS_PATH, 6, 2, 2, 0xfd, 0xe9, trans[0], trans[1]];
        assert!(
            bytes.windows(as_path.len()).any(|w| w == as_path),
            "AS_PATH uses AS_TRANS"
        );
        let big = 4_200_000_000u32.to_be_bytes();
        let as4 = [
            OPT_T, AS4_PATH, 10, 2, 2, 0, 0, 0xfd, 0xe9, big[0], big[1], big[2], big[3],
        ];
        assert!(
            bytes.windows(as4.len()).any(|w| w == as4),
            "AS4_PATH carries the real path"
        );
        let agg = [OPT_T, AGGREGATOR, 6, trans[0], trans[1], 1, 2, 3, 4];
        assert!(
            bytes.windows(agg.len()).any(|w| w == agg),
            "AGGREGATOR uses AS_TRANS"
        );
        let as4agg = [
            OPT_T,
            AS4_AGGREGATOR,
            8,
            big[0],
            big[1],
            big[2],
            big[3],
            1,
            2,
            3,
            4,
        ];
        assert!(bytes.windows(as4agg.len()).any(|w| w == as4agg));
        assert_eq!(
            decode(&bytes, &TWO).unwrap(),
            u,
            "reconstructed per RFC 6793 §4.2.3"
        );
        // A four-octet session sends none of that.
        let four = encode(&u, &FOUR);
        assert!(!four.windows(2).any(|w| w == [OPT_T, AS4_PATH]));
    }

    #[test]
    fn two_octet_session_without_big_asns_sends_no_as4_path() {
        let u = Update {
            attrs: PathAttributes {
                origin: Some(Origin::Igp),
                as_path: Some(AsPath::sequence([65001, 65002])),
                next_hop: Some(Ipv4Addr::new(10, 0, 0, 1)),
                ..PathAttributes::default()
            },
            nlri: vec![v4("10.0.0.0/8")],
            ..Update::default()
        };
        let bytes = encode(&u, &TWO);
        assert!(!bytes.windows(2).any(|w| w == [OPT_T, AS4_PATH]));
    }

    #[test]
    fn two_octet_session_merges_a_shorter_as4_path() {
        // AS_PATH 100 200 AS_TRANS, AS4_PATH 4200000000: the old speaker
        // prepended 100 and 200 after the four-octet hop.
        let mut attrs = attr(WK, ORIGIN, &[0]);
        attrs.extend(attr(WK, AS_PATH, &[2, 3, 0, 100, 0, 200, 0x5b, 0xa0]));
        attrs.extend(attr(WK, NEXT_HOP, &[1, 1, 1, 1]));
        attrs.extend(attr(OPT_T, AS4_PATH, &[2, 1, 0xfa, 0x56, 0xea, 0x00]));
        let u = decode(&update_bytes(&[], &attrs, &[8, 10]), &TWO).unwrap();
        assert_eq!(
            u.attrs.as_path,
            Some(AsPath::sequence([100, 200, 4_200_000_000]))
        );
        assert!(u.discarded.is_empty());
    }

    #[test]
    fn as4_path_is_ignored_when_an_old_speaker_aggregated() {
        let mut attrs = attr(WK, ORIGIN, &[0]);
        attrs.extend(attr(WK, AS_PATH, &[2, 2, 0, 100, 0x5b, 0xa0]));
        attrs.extend(attr(WK, NEXT_HOP, &[1, 1, 1, 1]));
        attrs.extend(attr(OPT_T, AGGREGATOR, &[0, 100, 9, 9, 9, 9]));
        attrs.extend(attr(OPT_T, AS4_PATH, &[2, 1, 0xfa, 0x56, 0xea, 0x00]));
        attrs.extend(attr(
            OPT_T,
            AS4_AGGREGATOR,
            &[0xfa, 0x56, 0xea, 0x00, 8, 8, 8, 8],
        ));
        let u = decode(&update_bytes(&[], &attrs, &[8, 10]), &TWO).unwrap();
        assert_eq!(u.attrs.as_path, Some(AsPath::sequence([100, 23456])));
        assert_eq!(u.attrs.aggregator, Some((100, Ipv4Addr::new(9, 9, 9, 9))));
    }

    #[test]
    fn as4_path_from_a_four_octet_speaker_is_discarded() {
        let u = with_extra(&FOUR, &attr(OPT_T, AS4_PATH, &[2, 1, 0, 1, 0, 0])).unwrap();
        assert_eq!(u.attrs.as_path, Some(AsPath::sequence([65001])));
        assert_eq!(u.discarded[0].type_code, AS4_PATH);
        assert_eq!(u.treat_as_withdraw, None);
    }

    #[test]
    fn malformed_as4_path_is_attribute_discard() {
        let u = with_extra(&TWO, &attr(OPT_T, AS4_PATH, &[2, 2, 0, 1, 0, 0])).unwrap();
        assert_eq!(u.attrs.as_path, Some(AsPath::sequence([65001])));
        assert_eq!(u.discarded[0].type_code, AS4_PATH);
        assert_eq!(u.treat_as_withdraw, None);
    }

    #[test]
    fn lone_as4_aggregator_is_discarded() {
        let u = with_extra(
            &TWO,
            &attr(OPT_T, AS4_AGGREGATOR, &[0, 1, 0, 0, 1, 1, 1, 1]),
        )
        .unwrap();
        assert_eq!(u.attrs.aggregator, None);
        assert_eq!(u.discarded[0].type_code, AS4_AGGREGATOR);
    }

    #[test]
    fn too_long_update_is_an_encode_error() {
        let u = Update {
            withdrawn: (0..1100u32)
                .map(|i| Ipv4Net::new(Ipv4Addr::from(i << 8), 24).unwrap())
                .collect(),
            ..Update::default()
        };
        let mut out = BytesMut::new();
        assert!(matches!(
            Message::Update(u).encode(&FOUR, &mut out),
            Err(EncodeError::TooLong { .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn mp_reach_with_mismatched_next_hops_or_prefixes_is_an_encode_error() {
        let mut attrs = full_attrs();
        if let Some(mp) = attrs.mp_reach.as_mut() {
            mp.next_hops = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        }
        let u = Update {
            attrs,
            ..Update::default()
        };
        let mut out = BytesMut::new();
        assert!(matches!(
            Message::Update(u).encode(&FOUR, &mut out),
            Err(EncodeError::InvalidMp(_))
        ));
        let mut attrs = full_attrs();
        if let Some(mp) = attrs.mp_reach.as_mut() {
            mp.nlri.push(net("10.0.0.0/8"));
        }
        let u = Update {
            attrs,
            ..Update::default()
        };
        assert!(matches!(
            Message::Update(u).encode(&FOUR, &mut out),
            Err(EncodeError::InvalidMp(_))
        ));
    }

    #[test]
    fn long_attributes_use_the_extended_length_form() {
        let u = Update {
            attrs: PathAttributes {
                communities: (0..100).collect(),
                ..PathAttributes::default()
            },
            ..Update::default()
        };
        let bytes = encode(&u, &FOUR);
        assert_eq!(&bytes[23..27], &[0xd0, COMMUNITIES, 1, 144]);
        assert_eq!(decode(&bytes, &FOUR).unwrap(), u);
    }
}
