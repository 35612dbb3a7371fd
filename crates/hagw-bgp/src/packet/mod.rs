//! Sans-IO BGP-4 message codec (RFC 4271 and friends).
//!
//! Decoding never panics on network input: every malformed message is either a
//! [`DecodeError`] (carrying the NOTIFICATION to send) or, for UPDATEs, an
//! RFC 7606 treat-as-withdraw / attribute-discard outcome recorded on the
//! [`Update`] itself.

mod attr;
mod error;
mod nlri;
mod notification;
mod open;
mod route_refresh;
mod update;
mod wire;

use bytes::{BufMut, BytesMut};

pub use attr::{
    attr_flags, attr_name, attr_type, AsPath, AsSegment, MpReach, MpUnreach, Origin,
    PathAttributes, RawAttr, SegmentKind,
};
pub use error::{AttrError, DecodeError, EncodeError};
pub use notification::{codes, Notification, MAX_SHUTDOWN_COMMUNICATION_LEN};
pub use open::{cap_code, Capability, GrFamily, GracefulRestartCap, Open, BGP_VERSION};
pub use route_refresh::{subtype as route_refresh_subtype, RouteRefresh};
pub use update::Update;

pub const HEADER_LEN: usize = 19;
pub const MAX_MESSAGE_LEN: usize = 4096;
pub const AS_TRANS: u16 = 23456;
pub const AFI_IPV4: u16 = 1;
pub const AFI_IPV6: u16 = 2;
pub const SAFI_UNICAST: u8 = 1;

/// Message type codes (RFC 4271 §4.1, RFC 2918 §3).
pub mod msg_type {
    pub const OPEN: u8 = 1;
    pub const UPDATE: u8 = 2;
    pub const NOTIFICATION: u8 = 3;
    pub const KEEPALIVE: u8 = 4;
    pub const ROUTE_REFRESH: u8 = 5;
}

const MARKER: [u8; 16] = [0xff; 16];

/// A whole KEEPALIVE on the wire, so senders need not run the encoder.
pub const KEEPALIVE_BYTES: [u8; HEADER_LEN] = [
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0xff,
    0,
    19,
    msg_type::KEEPALIVE,
];

/// What the codec must know about the session (negotiated in OPEN).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CodecCtx {
    pub four_octet_as: bool,
}

// Boxing Update would save a memcpy per move but cost an allocation per
// message and break the FSM's pattern matches; not worth it.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    RouteRefresh(RouteRefresh),
}

impl Message {
    pub fn msg_type(&self) -> u8 {
        match self {
            Message::Open(_) => msg_type::OPEN,
            Message::Update(_) => msg_type::UPDATE,
            Message::Notification(_) => msg_type::NOTIFICATION,
            Message::Keepalive => msg_type::KEEPALIVE,
            Message::RouteRefresh(_) => msg_type::ROUTE_REFRESH,
        }
    }

    /// Appends the full wire message (header included) to `out`. Errors if it
    /// would exceed 4096 bytes; on error `out` is left as it was.
    pub fn encode(&self, ctx: &CodecCtx, out: &mut BytesMut) -> Result<(), EncodeError> {
        if let Message::Keepalive = self {
            out.extend_from_slice(&KEEPALIVE_BYTES);
            return Ok(());
        }
        let start = out.len();
        out.reserve(HEADER_LEN + 64);
        out.put_slice(&MARKER);
        out.put_u16(0); // patched below
        out.put_u8(self.msg_type());
        let body = match self {
            Message::Open(o) => o.encode_body(out),
            Message::Update(u) => u.encode_body(ctx, out),
            Message::Notification(n) => {
                n.encode_body(out);
                Ok(())
            }
            Message::RouteRefresh(r) => {
                r.encode_body(out);
                Ok(())
            }
            Message::Keepalive => Ok(()),
        };
        let len = out.len() - start;
        let result = match body {
            Ok(()) if len > MAX_MESSAGE_LEN => Err(EncodeError::TooLong { len }),
            other => other,
        };
        match result {
            Ok(()) => {
                if let Some(field) = out.get_mut(start + 16..start + 18) {
                    field.copy_from_slice(&(len as u16).to_be_bytes());
                }
                Ok(())
            }
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// Decodes exactly one full message (header included; `buf.len()` == the
    /// header's length field).
    pub fn decode(buf: &[u8], ctx: &CodecCtx) -> Result<Message, DecodeError> {
        match frame_len(buf)? {
            Some(len) if len == buf.len() => {}
            Some(len) => return Err(DecodeError::bad_message_length(len as u16)),
            None => {
                let len = buf
                    .get(16..18)
                    .and_then(|l| <[u8; 2]>::try_from(l).ok())
                    .map_or(buf.len() as u16, u16::from_be_bytes);
                return Err(DecodeError::bad_message_length(len));
            }
        }
        let ty = buf.get(18).copied().unwrap_or_default();
        let body = buf.get(HEADER_LEN..).unwrap_or_default();
        Ok(match ty {
            msg_type::KEEPALIVE => Message::Keepalive,
            msg_type::OPEN => Message::Open(Open::decode_body(body)?),
            msg_type::UPDATE => Message::Update(Update::decode_body(body, ctx)?),
            msg_type::NOTIFICATION => Message::Notification(Notification::decode_body(body)?),
            msg_type::ROUTE_REFRESH => Message::RouteRefresh(RouteRefresh::decode(buf)?),
            other => return Err(DecodeError::bad_message_type(other)),
        })
    }
}

/// Framing: validates marker (all ones -> else Connection Not Synchronized 1/1)
/// and length (19..=4096 and type-specific minimums -> else Bad Message Length
/// 1/2 with the length as data; unknown type -> Bad Message Type 1/3 with the
/// type as data). Returns Ok(None) while fewer than `len` bytes are buffered,
/// Ok(Some(len)) when a whole message is there.
///
/// ROUTE-REFRESH length is checked by [`Message::decode`] instead, because
/// RFC 7313 §5 wants 7/1 with the whole message as data.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    // Check the marker on whatever prefix we have, so garbage is caught early.
    let marker = buf.get(..16).unwrap_or(buf);
    if marker.iter().any(|&b| b != 0xff) {
        return Err(DecodeError::connection_not_synchronized());
    }
    let Some(&[l0, l1, ty]) = buf.get(16..HEADER_LEN) else {
        return Ok(None);
    };
    let len16 = u16::from_be_bytes([l0, l1]);
    let len = usize::from(len16);
    // RFC 4271 §6.1: overall bounds first, then the type, then per-type sizes.
    if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(DecodeError::bad_message_length(len16));
    }
    let len_ok = match ty {
        msg_type::OPEN => len >= 29,
        msg_type::UPDATE => len >= 23,
        msg_type::NOTIFICATION => len >= 21,
        msg_type::KEEPALIVE => len == HEADER_LEN,
        msg_type::ROUTE_REFRESH => true,
        _ => return Err(DecodeError::bad_message_type(ty)),
    };
    if !len_ok {
        return Err(DecodeError::bad_message_length(len16));
    }
    Ok((buf.len() >= len).then_some(len))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn header(len: u16, ty: u8) -> Vec<u8> {
        let mut v = vec![0xff; 16];
        v.extend_from_slice(&len.to_be_bytes());
        v.push(ty);
        v
    }

    fn codes_of(e: DecodeError) -> (u8, u8, Vec<u8>) {
        (e.code, e.subcode, e.data)
    }

    #[test]
    fn keepalive_round_trips_in_both_contexts() {
        for ctx in [
            CodecCtx {
                four_octet_as: false,
            },
            CodecCtx {
                four_octet_as: true,
            },
        ] {
            let mut out = BytesMut::new();
            Message::Keepalive.encode(&ctx, &mut out).unwrap();
            assert_eq!(&out[..], &KEEPALIVE_BYTES[..]);
            assert_eq!(Message::decode(&out, &ctx).unwrap(), Message::Keepalive);
        }
    }

    #[test]
    fn frame_len_waits_for_the_whole_message() {
        let msg = header(23, msg_type::UPDATE);
        assert_eq!(frame_len(&[]).unwrap(), None);
        assert_eq!(frame_len(&msg[..10]).unwrap(), None);
        assert_eq!(frame_len(&msg).unwrap(), None);
        let mut full = msg.clone();
        full.extend_from_slice(&[0, 0, 0, 0, 0xff]);
        assert_eq!(frame_len(&full).unwrap(), Some(23));
    }

    #[test]
    fn broken_marker_is_connection_not_synchronized() {
        let mut msg = header(19, 4);
        msg[3] = 0;
        assert_eq!(codes_of(frame_len(&msg).unwrap_err()), (1, 1, vec![]));
        assert_eq!(
            codes_of(frame_len(&msg[..5]).unwrap_err()).0,
            1,
            "caught on a partial header"
        );
    }

    #[test]
    fn length_out_of_bounds_is_bad_message_length_with_the_length_as_data() {
        assert_eq!(
            codes_of(frame_len(&header(18, 4)).unwrap_err()),
            (1, 2, vec![0, 18])
        );
        assert_eq!(
            codes_of(frame_len(&header(4097, 2)).unwrap_err()),
            (1, 2, vec![0x10, 0x01])
        );
    }

    #[test]
    fn type_specific_minimum_lengths_are_enforced() {
        for (ty, bad) in [(1u8, 28u16), (2, 22), (3, 20), (4, 20), (4, 23)] {
            let e = frame_len(&header(bad, ty)).unwrap_err();
            assert_eq!(
                codes_of(e),
                (1, 2, bad.to_be_bytes().to_vec()),
                "type {ty} len {bad}"
            );
        }
        for (ty, good) in [(1u8, 29u16), (2, 23), (3, 21), (4, 19), (5, 23)] {
            assert!(frame_len(&header(good, ty)).is_ok(), "type {ty} len {good}");
        }
    }

    #[test]
    fn unknown_message_type_is_bad_message_type_with_the_type_as_data() {
        assert_eq!(
            codes_of(frame_len(&header(19, 6)).unwrap_err()),
            (1, 3, vec![6])
        );
        assert_eq!(
            codes_of(frame_len(&header(19, 0)).unwrap_err()),
            (1, 3, vec![0])
        );
    }

    #[test]
    fn decode_rejects_a_buffer_that_is_not_exactly_one_message() {
        let mut two = KEEPALIVE_BYTES.to_vec();
        two.extend_from_slice(&KEEPALIVE_BYTES);
        assert_eq!(
            codes_of(Message::decode(&two, &CodecCtx::default()).unwrap_err()).1,
            2
        );
        assert_eq!(
            codes_of(Message::decode(&KEEPALIVE_BYTES[..18], &CodecCtx::default()).unwrap_err()).1,
            2
        );
    }

    #[test]
    fn too_long_message_is_an_encode_error_and_leaves_out_untouched() {
        let n = Notification::new(6, 2, vec![0; 4096]);
        let mut out = BytesMut::from(&b"prefix"[..]);
        assert_eq!(
            Message::Notification(n).encode(&CodecCtx::default(), &mut out),
            Err(EncodeError::TooLong { len: 4096 + 21 })
        );
        assert_eq!(&out[..], b"prefix");
    }

    #[test]
    fn decode_error_maps_to_its_notification() {
        let e = frame_len(&header(4, 4)).unwrap_err();
        assert_eq!(e.notification(), Notification::new(1, 2, vec![0, 4]));
        assert!(e.to_string().contains("Bad Message Length"));
    }
}
