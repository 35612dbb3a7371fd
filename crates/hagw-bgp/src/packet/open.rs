//! OPEN message (RFC 4271 §4.2) with capabilities (RFC 5492) and extended
//! optional parameters length (RFC 9072).

use std::net::Ipv4Addr;

use bytes::{BufMut, BytesMut};

use super::error::{DecodeError, EncodeError};
use super::notification::codes::open as sub;
use super::wire::Reader;
use super::AS_TRANS;

pub const BGP_VERSION: u8 = 4;

/// Capability codes (IANA "Capability Codes").
pub mod cap_code {
    pub const MULTIPROTOCOL: u8 = 1;
    pub const ROUTE_REFRESH: u8 = 2;
    pub const GRACEFUL_RESTART: u8 = 64;
    pub const FOUR_OCTET_AS: u8 = 65;
    pub const ENHANCED_ROUTE_REFRESH: u8 = 70;
}

const PARAM_CAPABILITIES: u8 = 2;
/// RFC 9072: Non-Ext OP Type marking the extended format.
const PARAM_EXTENDED: u8 = 255;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GrFamily {
    pub afi: u16,
    pub safi: u8,
    pub forwarding_preserved: bool,
}

/// Graceful Restart capability (RFC 4724 §3, N bit from RFC 8538 §2).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct GracefulRestartCap {
    /// R bit: we are restarting, the peer must not wait for our EoR before
    /// sending its own.
    pub restarting: bool,
    /// N bit: graceful restart also applies to NOTIFICATION-triggered resets.
    pub notification: bool,
    /// Seconds, 12 bits.
    pub restart_time: u16,
    pub families: Vec<GrFamily>,
}

const GR_R_BIT: u16 = 0x8000;
const GR_N_BIT: u16 = 0x4000;
const GR_TIME_MASK: u16 = 0x0fff;
const GR_F_BIT: u8 = 0x80;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Capability {
    Multiprotocol { afi: u16, safi: u8 },
    RouteRefresh,
    EnhancedRouteRefresh,
    FourOctetAs(u32),
    GracefulRestart(GracefulRestartCap),
    Unknown { code: u8, value: Vec<u8> },
}

impl Capability {
    pub fn code(&self) -> u8 {
        match self {
            Capability::Multiprotocol { .. } => cap_code::MULTIPROTOCOL,
            Capability::RouteRefresh => cap_code::ROUTE_REFRESH,
            Capability::EnhancedRouteRefresh => cap_code::ENHANCED_ROUTE_REFRESH,
            Capability::FourOctetAs(_) => cap_code::FOUR_OCTET_AS,
            Capability::GracefulRestart(_) => cap_code::GRACEFUL_RESTART,
            Capability::Unknown { code, .. } => *code,
        }
    }

    fn value_len(&self) -> usize {
        match self {
            Capability::Multiprotocol { .. } | Capability::FourOctetAs(_) => 4,
            Capability::RouteRefresh | Capability::EnhancedRouteRefresh => 0,
            Capability::GracefulRestart(gr) => 2 + 4 * gr.families.len(),
            Capability::Unknown { value, .. } => value.len(),
        }
    }

    fn decode(code: u8, value: &[u8]) -> Result<Self, DecodeError> {
        // RFC 4271 §6.2: a recognized but malformed optional parameter is
        // "Unspecific"; we apply that to capabilities we recognize.
        let malformed = || {
            DecodeError::open(
                sub::UNSPECIFIC,
                format!("malformed capability {code} (length {})", value.len()),
            )
        };
        let mut r = Reader::new(value);
        let cap = match code {
            cap_code::MULTIPROTOCOL => {
                let (Some(afi), Some(_reserved), Some(safi)) = (r.u16(), r.u8(), r.u8()) else {
                    return Err(malformed());
                };
                Capability::Multiprotocol { afi, safi }
            }
            cap_code::ROUTE_REFRESH => Capability::RouteRefresh,
            cap_code::ENHANCED_ROUTE_REFRESH => Capability::EnhancedRouteRefresh,
            cap_code::FOUR_OCTET_AS => Capability::FourOctetAs(r.u32().ok_or_else(malformed)?),
            cap_code::GRACEFUL_RESTART => {
                let flags = r.u16().ok_or_else(malformed)?;
                if !r.remaining().is_multiple_of(4) {
                    return Err(malformed());
                }
                let mut families = Vec::with_capacity(r.remaining() / 4);
                while let (Some(afi), Some(safi), Some(f)) = (r.u16(), r.u8(), r.u8()) {
                    families.push(GrFamily {
                        afi,
                        safi,
                        forwarding_preserved: f & GR_F_BIT != 0,
                    });
                }
                Capability::GracefulRestart(GracefulRestartCap {
                    restarting: flags & GR_R_BIT != 0,
                    notification: flags & GR_N_BIT != 0,
                    restart_time: flags & GR_TIME_MASK,
                    families,
                })
            }
            _ => {
                return Ok(Capability::Unknown {
                    code,
                    value: value.to_vec(),
                })
            }
        };
        if r.is_empty() {
            Ok(cap)
        } else {
            Err(malformed())
        }
    }

    fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let len = self.value_len();
        let len8 = u8::try_from(len).map_err(|_| EncodeError::CapabilityTooLong {
            code: self.code(),
            len,
        })?;
        out.put_u8(self.code());
        out.put_u8(len8);
        match self {
            Capability::Multiprotocol { afi, safi } => {
                out.put_u16(*afi);
                out.put_u8(0);
                out.put_u8(*safi);
            }
            Capability::RouteRefresh | Capability::EnhancedRouteRefresh => {}
            Capability::FourOctetAs(asn) => out.put_u32(*asn),
            Capability::GracefulRestart(gr) => {
                if gr.restart_time > GR_TIME_MASK {
                    return Err(EncodeError::RestartTimeTooLarge(gr.restart_time));
                }
                let mut flags = gr.restart_time;
                if gr.restarting {
                    flags |= GR_R_BIT;
                }
                if gr.notification {
                    flags |= GR_N_BIT;
                }
                out.put_u16(flags);
                for f in &gr.families {
                    out.put_u16(f.afi);
                    out.put_u8(f.safi);
                    out.put_u8(if f.forwarding_preserved { GR_F_BIT } else { 0 });
                }
            }
            Capability::Unknown { value, .. } => out.put_slice(value),
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Open {
    pub version: u8,
    /// The speaker's real ASN (from the four-octet AS capability when present).
    pub asn: u32,
    pub hold_time: u16,
    pub bgp_id: Ipv4Addr,
    pub capabilities: Vec<Capability>,
}

impl Open {
    /// Version-4 OPEN. Add [`Capability::FourOctetAs`] yourself: whether to
    /// advertise it is configuration, not codec policy.
    pub fn new(asn: u32, hold_time: u16, bgp_id: Ipv4Addr, capabilities: Vec<Capability>) -> Self {
        Self {
            version: BGP_VERSION,
            asn,
            hold_time,
            bgp_id,
            capabilities,
        }
    }

    pub fn capability_four_octet_as(&self) -> Option<u32> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::FourOctetAs(asn) => Some(*asn),
            _ => None,
        })
    }

    /// Advertised (afi, safi) pairs.
    pub fn multiprotocol(&self) -> impl Iterator<Item = (u16, u8)> + '_ {
        self.capabilities.iter().filter_map(|c| match c {
            Capability::Multiprotocol { afi, safi } => Some((*afi, *safi)),
            _ => None,
        })
    }

    pub fn supports_route_refresh(&self) -> bool {
        self.capabilities.contains(&Capability::RouteRefresh)
    }

    pub fn supports_enhanced_route_refresh(&self) -> bool {
        self.capabilities
            .contains(&Capability::EnhancedRouteRefresh)
    }

    pub fn graceful_restart(&self) -> Option<&GracefulRestartCap> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(gr) => Some(gr),
            _ => None,
        })
    }

    pub(crate) fn decode_body(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let short = || DecodeError::bad_message_length((super::HEADER_LEN + body.len()) as u16);
        let version = r.u8().ok_or_else(short)?;
        if version != BGP_VERSION {
            // RFC 4271 §6.2: data is the largest version we support.
            return Err(DecodeError::new(
                super::notification::codes::OPEN_MESSAGE_ERROR,
                sub::UNSUPPORTED_VERSION_NUMBER,
                u16::from(BGP_VERSION).to_be_bytes().to_vec(),
                format!("unsupported BGP version {version}"),
            ));
        }
        let (Some(my_as), Some(hold_time), Some(id), Some(opt_len)) =
            (r.u16(), r.u16(), r.array::<4>(), r.u8())
        else {
            return Err(short());
        };
        // RFC 4271 §6.2: hold time 1 or 2 is unacceptable.
        if hold_time == 1 || hold_time == 2 {
            return Err(DecodeError::open(
                sub::UNACCEPTABLE_HOLD_TIME,
                format!("hold time {hold_time}"),
            ));
        }
        let bgp_id = Ipv4Addr::from(id);
        // RFC 6286 §2.2: any non-zero value is a valid identifier.
        if bgp_id.is_unspecified() {
            return Err(DecodeError::open(
                sub::BAD_BGP_IDENTIFIER,
                "BGP identifier 0.0.0.0",
            ));
        }
        let capabilities = decode_optional_parameters(opt_len, r.rest())?;
        let four = capabilities.iter().find_map(|c| match c {
            Capability::FourOctetAs(asn) => Some(*asn),
            _ => None,
        });
        let asn = match four {
            // RFC 7607 §2: AS 0 in the OPEN -> Bad Peer AS. AS_TRANS is
            // reserved (RFC 6793 §9) and never a speaker's real ASN.
            Some(0) => {
                return Err(DecodeError::open(
                    sub::BAD_PEER_AS,
                    "four-octet AS capability carries AS 0",
                ))
            }
            Some(a) if a == u32::from(AS_TRANS) => {
                return Err(DecodeError::open(
                    sub::BAD_PEER_AS,
                    "four-octet AS capability carries AS_TRANS",
                ))
            }
            Some(a) => a,
            None if my_as == 0 => return Err(DecodeError::open(sub::BAD_PEER_AS, "My AS is 0")),
            // RFC 6793 §4.2.1: AS_TRANS in My AS only stands in for a
            // four-octet ASN, which an OLD speaker cannot have.
            None if my_as == AS_TRANS => {
                return Err(DecodeError::open(
                    sub::BAD_PEER_AS,
                    "My AS is AS_TRANS without a four-octet AS capability",
                ))
            }
            None => u32::from(my_as),
        };
        Ok(Open {
            version,
            asn,
            hold_time,
            bgp_id,
            capabilities,
        })
    }

    pub(crate) fn encode_body(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_u8(self.version);
        // RFC 6793 §4.2.1: non-mappable ASNs go in the capability only.
        out.put_u16(u16::try_from(self.asn).unwrap_or(AS_TRANS));
        out.put_u16(self.hold_time);
        out.put_slice(&self.bgp_id.octets());
        let caps_len: usize = self.capabilities.iter().map(|c| 2 + c.value_len()).sum();
        if self.capabilities.is_empty() {
            out.put_u8(0);
        } else if caps_len + 2 <= 255 {
            out.put_u8((caps_len + 2) as u8);
            out.put_u8(PARAM_CAPABILITIES);
            out.put_u8(caps_len as u8);
        } else {
            // RFC 9072 §2: only when the classic one-octet length cannot hold it.
            let total =
                u16::try_from(caps_len + 3).map_err(|_| EncodeError::TooLong { len: caps_len })?;
            out.put_u8(255);
            out.put_u8(PARAM_EXTENDED);
            out.put_u16(total);
            out.put_u8(PARAM_CAPABILITIES);
            out.put_u16(caps_len as u16);
        }
        for cap in &self.capabilities {
            cap.encode(out)?;
        }
        Ok(())
    }
}

fn decode_optional_parameters(opt_len: u8, rest: &[u8]) -> Result<Vec<Capability>, DecodeError> {
    let malformed = |why: &'static str| DecodeError::open(sub::UNSPECIFIC, why);
    let mut r = Reader::new(rest);
    // RFC 9072 §2: Non-Ext OP Len 255 followed by Non-Ext OP Type 255 selects
    // the extended format (two-octet lengths everywhere).
    let extended = opt_len == 255 && rest.first() == Some(&PARAM_EXTENDED);
    let params = if extended {
        let _ = r.u8();
        let len = r
            .u16()
            .ok_or_else(|| malformed("extended optional parameters truncated"))?;
        r.take(usize::from(len))
    } else {
        r.take(usize::from(opt_len))
    }
    .ok_or_else(|| malformed("optional parameters overrun the message"))?;
    if !r.is_empty() {
        return Err(malformed(
            "optional parameters length disagrees with the message length",
        ));
    }
    let mut capabilities = Vec::new();
    let mut p = Reader::new(params);
    while !p.is_empty() {
        let ty = p.u8();
        let len = if extended {
            p.u16().map(usize::from)
        } else {
            p.u8().map(usize::from)
        };
        let (Some(ty), Some(value)) = (ty, len.and_then(|l| p.take(l))) else {
            return Err(malformed(
                "optional parameter overruns the parameters field",
            ));
        };
        if ty != PARAM_CAPABILITIES {
            // RFC 4271 §6.2 (type 1, authentication, is deprecated too).
            return Err(DecodeError::open(
                sub::UNSUPPORTED_OPTIONAL_PARAMETER,
                format!("unsupported optional parameter type {ty}"),
            ));
        }
        let mut c = Reader::new(value);
        while !c.is_empty() {
            let code = c.u8();
            let body = c.u8().and_then(|l| c.take(usize::from(l)));
            let (Some(code), Some(body)) = (code, body) else {
                return Err(malformed("capability overruns its optional parameter"));
            };
            capabilities.push(Capability::decode(code, body)?);
        }
    }
    Ok(capabilities)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::packet::{CodecCtx, Message, AFI_IPV4, AFI_IPV6, SAFI_UNICAST};

    fn encode(open: &Open) -> BytesMut {
        let mut out = BytesMut::new();
        Message::Open(open.clone())
            .encode(&CodecCtx::default(), &mut out)
            .unwrap();
        out
    }

    fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
        Message::decode(buf, &CodecCtx::default())
    }

    fn codes(e: DecodeError) -> (u8, u8) {
        (e.code, e.subcode)
    }

    /// Builds a whole OPEN from the bytes after the header.
    fn open_bytes(body: &[u8]) -> Vec<u8> {
        let mut v = vec![0xff; 16];
        v.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
        v.push(1);
        v.extend_from_slice(body);
        v
    }

    fn gr() -> GracefulRestartCap {
        GracefulRestartCap {
            restarting: true,
            notification: true,
            restart_time: 120,
            families: vec![
                GrFamily {
                    afi: AFI_IPV4,
                    safi: SAFI_UNICAST,
                    forwarding_preserved: true,
                },
                GrFamily {
                    afi: AFI_IPV6,
                    safi: SAFI_UNICAST,
                    forwarding_preserved: false,
                },
            ],
        }
    }

    fn full_open() -> Open {
        Open::new(
            4_200_000_000,
            90,
            Ipv4Addr::new(192, 0, 2, 1),
            vec![
                Capability::Multiprotocol {
                    afi: AFI_IPV4,
                    safi: SAFI_UNICAST,
                },
                Capability::Multiprotocol {
                    afi: AFI_IPV6,
                    safi: SAFI_UNICAST,
                },
                Capability::RouteRefresh,
                Capability::EnhancedRouteRefresh,
                Capability::FourOctetAs(4_200_000_000),
                Capability::GracefulRestart(gr()),
                Capability::Unknown {
                    code: 73,
                    value: b"\x04host".to_vec(),
                },
            ],
        )
    }

    #[test]
    fn open_with_every_capability_round_trips_in_both_contexts() {
        let open = full_open();
        for ctx in [
            CodecCtx {
                four_octet_as: false,
            },
            CodecCtx {
                four_octet_as: true,
            },
        ] {
            let mut out = BytesMut::new();
            Message::Open(open.clone()).encode(&ctx, &mut out).unwrap();
            assert_eq!(
                Message::decode(&out, &ctx).unwrap(),
                Message::Open(open.clone())
            );
        }
    }

    #[test]
    fn open_helpers_read_capabilities() {
        let open = full_open();
        assert_eq!(open.capability_four_octet_as(), Some(4_200_000_000));
        assert_eq!(
            open.multiprotocol().collect::<Vec<_>>(),
            vec![(AFI_IPV4, SAFI_UNICAST), (AFI_IPV6, SAFI_UNICAST)]
        );
        assert!(open.supports_route_refresh());
        assert!(open.supports_enhanced_route_refresh());
        assert_eq!(open.graceful_restart(), Some(&gr()));
        let bare = Open::new(65001, 180, Ipv4Addr::new(1, 1, 1, 1), vec![]);
        assert!(!bare.supports_route_refresh());
        assert_eq!(bare.graceful_restart(), None);
        assert_eq!(bare.capability_four_octet_as(), None);
    }

    #[test]
    fn known_good_frr_style_open_decodes() {
        // AS 65001, hold 180, id 10.0.0.1; MP ipv4/ipv6 unicast, route
        // refresh, 4-octet AS 65001, GR restart time 120 with ipv4 F bit.
        let body: &[u8] = &[
            4, 0xfd, 0xe9, 0, 180, 10, 0, 0, 1, 30, // fixed part, opt len 30
            2, 28, // one capabilities parameter
            1, 4, 0, 1, 0, 1, // MP ipv4 unicast
            1, 4, 0, 2, 0, 1, // MP ipv6 unicast
            2, 0, // route refresh
            65, 4, 0, 0, 0xfd, 0xe9, // 4-octet AS 65001
            64, 6, 0x00, 120, 0, 1, 1, 0x80, // GR
        ];
        let msg = decode(&open_bytes(body)).unwrap();
        let Message::Open(open) = msg else {
            panic!("not an OPEN")
        };
        assert_eq!(open.asn, 65001);
        assert_eq!(open.hold_time, 180);
        assert_eq!(open.bgp_id, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(open.capability_four_octet_as(), Some(65001));
        assert!(open.supports_route_refresh());
        assert_eq!(
            open.graceful_restart(),
            Some(&GracefulRestartCap {
                restarting: false,
                notification: false,
                restart_time: 120,
                families: vec![GrFamily {
                    afi: 1,
                    safi: 1,
                    forwarding_preserved: true
                }],
            })
        );
        // Re-encoding gives back the same bytes: one parameter, same order.
        assert_eq!(&encode(&open)[..], &open_bytes(body)[..]);
    }

    #[test]
    fn capabilities_split_over_several_parameters_are_all_read() {
        let body: &[u8] = &[4, 0, 100, 0, 90, 1, 2, 3, 4, 8, 2, 2, 2, 0, 2, 2, 70, 0];
        let Message::Open(open) = decode(&open_bytes(body)).unwrap() else {
            panic!()
        };
        assert_eq!(
            open.capabilities,
            vec![Capability::RouteRefresh, Capability::EnhancedRouteRefresh]
        );
        assert_eq!(open.asn, 100);
    }

    #[test]
    fn large_capability_sets_use_rfc9072_extended_parameters() {
        let caps: Vec<Capability> = (0..100u16)
            .map(|i| Capability::Multiprotocol { afi: i, safi: 1 })
            .collect();
        let open = Open::new(65001, 90, Ipv4Addr::new(1, 2, 3, 4), caps);
        let out = encode(&open);
        assert_eq!(&out[28..32], &[255, 255, 0x02, 0x5b]); // 3 + 600
        assert_eq!(decode(&out).unwrap(), Message::Open(open));
    }

    #[test]
    fn unsupported_version_is_2_1_with_version_4_as_data() {
        let e = decode(&open_bytes(&[3, 0, 100, 0, 90, 1, 2, 3, 4, 0])).unwrap_err();
        assert_eq!(codes(e.clone()), (2, 1));
        assert_eq!(e.data, vec![0, 4]);
    }

    #[test]
    fn hold_time_of_one_or_two_seconds_is_2_6() {
        for h in [1u8, 2] {
            let e = decode(&open_bytes(&[4, 0, 100, 0, h, 1, 2, 3, 4, 0])).unwrap_err();
            assert_eq!(codes(e), (2, 6));
        }
        assert!(decode(&open_bytes(&[4, 0, 100, 0, 0, 1, 2, 3, 4, 0])).is_ok());
        assert!(decode(&open_bytes(&[4, 0, 100, 0, 3, 1, 2, 3, 4, 0])).is_ok());
    }

    #[test]
    fn zero_bgp_identifier_is_2_3() {
        let e = decode(&open_bytes(&[4, 0, 100, 0, 90, 0, 0, 0, 0, 0])).unwrap_err();
        assert_eq!(codes(e), (2, 3));
    }

    #[test]
    fn unknown_optional_parameter_is_2_4() {
        let e = decode(&open_bytes(&[4, 0, 100, 0, 90, 1, 2, 3, 4, 3, 9, 1, 0])).unwrap_err();
        assert_eq!(codes(e), (2, 4));
        let auth = decode(&open_bytes(&[4, 0, 100, 0, 90, 1, 2, 3, 4, 3, 1, 1, 0])).unwrap_err();
        assert_eq!(codes(auth), (2, 4));
    }

    #[test]
    fn capability_overrunning_its_parameter_is_2_0() {
        let e = decode(&open_bytes(&[4, 0, 100, 0, 90, 1, 2, 3, 4, 4, 2, 2, 65, 4])).unwrap_err();
        assert_eq!(codes(e), (2, 0));
    }

    #[test]
    fn optional_parameters_length_disagreeing_with_message_is_2_0() {
        let e = decode(&open_bytes(&[4, 0, 100, 0, 90, 1, 2, 3, 4, 0, 2, 0])).unwrap_err();
        assert_eq!(codes(e), (2, 0));
        let e = decode(&open_bytes(&[4, 0, 100, 0, 90, 1, 2, 3, 4, 4, 2, 2])).unwrap_err();
        assert_eq!(codes(e), (2, 0));
    }

    #[test]
    fn malformed_known_capabilities_are_2_0() {
        for cap in [
            &[1u8, 3, 0, 1, 0][..],
            &[65, 2, 0, 1],
            &[2, 1, 0],
            &[64, 3, 0, 120, 0],
        ] {
            let mut body = vec![
                4,
                0,
                100,
                0,
                90,
                1,
                2,
                3,
                4,
                (cap.len() + 2) as u8,
                2,
                cap.len() as u8,
            ];
            body.extend_from_slice(cap);
            let e = decode(&open_bytes(&body)).unwrap_err();
            assert_eq!(codes(e), (2, 0), "capability {cap:?}");
        }
    }

    #[test]
    fn four_octet_as_capability_with_as_0_is_bad_peer_as() {
        let e = decode(&open_bytes(&[
            4, 0, 100, 0, 90, 1, 2, 3, 4, 8, 2, 6, 65, 4, 0, 0, 0, 0,
        ]))
        .unwrap_err();
        assert_eq!(codes(e), (2, 2));
    }

    #[test]
    fn my_as_0_is_bad_peer_as() {
        let e = decode(&open_bytes(&[4, 0, 0, 0, 90, 1, 2, 3, 4, 0])).unwrap_err();
        assert_eq!(codes(e), (2, 2));
    }

    #[test]
    fn my_as_trans_without_four_octet_capability_is_bad_peer_as() {
        let e = decode(&open_bytes(&[4, 0x5b, 0xa0, 0, 90, 1, 2, 3, 4, 0])).unwrap_err();
        assert_eq!(codes(e), (2, 2));
    }

    #[test]
    fn four_octet_capability_as_trans_is_bad_peer_as() {
        let e = decode(&open_bytes(&[
            4, 0x5b, 0xa0, 0, 90, 1, 2, 3, 4, 8, 2, 6, 65, 4, 0, 0, 0x5b, 0xa0,
        ]))
        .unwrap_err();
        assert_eq!(codes(e), (2, 2));
    }

    #[test]
    fn asn_comes_from_the_four_octet_capability() {
        let open = Open::new(
            4_200_000_000,
            90,
            Ipv4Addr::new(1, 2, 3, 4),
            vec![Capability::FourOctetAs(4_200_000_000)],
        );
        let out = encode(&open);
        assert_eq!(&out[20..22], &AS_TRANS.to_be_bytes(), "My AS is AS_TRANS");
        let Message::Open(back) = decode(&out).unwrap() else {
            panic!()
        };
        assert_eq!(back.asn, 4_200_000_000);
    }

    #[test]
    fn restart_time_over_12_bits_is_an_encode_error() {
        let mut cap = gr();
        cap.restart_time = 4096;
        let open = Open::new(
            1,
            90,
            Ipv4Addr::new(1, 2, 3, 4),
            vec![Capability::GracefulRestart(cap)],
        );
        let mut out = BytesMut::new();
        assert_eq!(
            Message::Open(open).encode(&CodecCtx::default(), &mut out),
            Err(EncodeError::RestartTimeTooLarge(4096))
        );
        assert!(
            out.is_empty(),
            "a failed encode leaves the buffer untouched"
        );
    }

    #[test]
    fn oversized_unknown_capability_is_an_encode_error() {
        let open = Open::new(
            1,
            90,
            Ipv4Addr::new(1, 2, 3, 4),
            vec![Capability::Unknown {
                code: 200,
                value: vec![0; 256],
            }],
        );
        let mut out = BytesMut::new();
        assert_eq!(
            Message::Open(open).encode(&CodecCtx::default(), &mut out),
            Err(EncodeError::CapabilityTooLong {
                code: 200,
                len: 256
            })
        );
    }
}
