//! ROUTE-REFRESH message (RFC 2918 §3, subtypes from RFC 7313 §3).

use bytes::{BufMut, BytesMut};

use super::error::DecodeError;
use super::notification::codes;
use super::wire::Reader;

/// RFC 7313 §3 Message Subtype values.
pub mod subtype {
    pub const NORMAL: u8 = 0;
    pub const BEGIN_OF_RIB: u8 = 1;
    pub const END_OF_RIB: u8 = 2;
}

/// `subtype` is passed through as received: RFC 7313 §5 says to ignore
/// subtypes other than 0..=2, which is the FSM's call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RouteRefresh {
    pub afi: u16,
    pub subtype: u8,
    pub safi: u8,
}

impl RouteRefresh {
    pub fn new(afi: u16, safi: u8) -> Self {
        Self {
            afi,
            subtype: subtype::NORMAL,
            safi,
        }
    }

    /// `msg` is the whole message: RFC 7313 §5 puts it in the NOTIFICATION data.
    pub(crate) fn decode(msg: &[u8]) -> Result<Self, DecodeError> {
        let body = msg.get(super::HEADER_LEN..).unwrap_or_default();
        let mut r = Reader::new(body);
        match (r.u16(), r.u8(), r.u8(), r.is_empty()) {
            (Some(afi), Some(subtype), Some(safi), true) => Ok(Self { afi, subtype, safi }),
            // RFC 7313 §5: length other than 4 (we negotiate no ORF) is
            // ROUTE-REFRESH Message Error / Invalid Message Length.
            _ => Err(DecodeError::new(
                codes::ROUTE_REFRESH_MESSAGE_ERROR,
                codes::route_refresh::INVALID_MESSAGE_LENGTH,
                msg,
                format!("ROUTE-REFRESH length {} is not 23", msg.len()),
            )),
        }
    }

    pub(crate) fn encode_body(&self, out: &mut BytesMut) {
        out.put_u16(self.afi);
        out.put_u8(self.subtype);
        out.put_u8(self.safi);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::packet::{CodecCtx, Message};

    #[test]
    fn route_refresh_round_trips_with_known_bytes() {
        for ctx in [
            CodecCtx {
                four_octet_as: false,
            },
            CodecCtx {
                four_octet_as: true,
            },
        ] {
            for rr in [
                RouteRefresh::new(2, 1),
                RouteRefresh {
                    afi: 1,
                    subtype: subtype::BEGIN_OF_RIB,
                    safi: 1,
                },
                RouteRefresh {
                    afi: 1,
                    subtype: subtype::END_OF_RIB,
                    safi: 1,
                },
            ] {
                let mut out = BytesMut::new();
                Message::RouteRefresh(rr).encode(&ctx, &mut out).unwrap();
                assert_eq!(
                    Message::decode(&out, &ctx).unwrap(),
                    Message::RouteRefresh(rr)
                );
            }
        }
        let mut out = BytesMut::new();
        Message::RouteRefresh(RouteRefresh::new(2, 1))
            .encode(&CodecCtx::default(), &mut out)
            .unwrap();
        let mut want = vec![0xff; 16];
        want.extend_from_slice(&[0, 23, 5, 0, 2, 0, 1]);
        assert_eq!(&out[..], &want[..]);
    }

    #[test]
    fn route_refresh_of_wrong_length_is_7_1_with_the_message_as_data() {
        for extra in [&[0u8, 1, 0][..], &[0, 1, 0, 1, 0xaa]] {
            let mut msg = vec![0xff; 16];
            msg.extend_from_slice(&((19 + extra.len()) as u16).to_be_bytes());
            msg.push(5);
            msg.extend_from_slice(extra);
            let e = Message::decode(&msg, &CodecCtx::default()).unwrap_err();
            assert_eq!((e.code, e.subcode), (7, 1));
            assert_eq!(e.data, msg);
        }
    }
}
