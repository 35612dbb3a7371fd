//! NOTIFICATION message (RFC 4271 §4.5) and the registry of error codes.

use bytes::{BufMut, BytesMut};
use std::fmt;

use super::error::DecodeError;
use super::wire::Reader;

/// Error codes and subcodes (IANA "BGP Error (Notification) Codes" registry).
pub mod codes {
    /// RFC 4271 §4.5.
    pub const MESSAGE_HEADER_ERROR: u8 = 1;
    pub const OPEN_MESSAGE_ERROR: u8 = 2;
    pub const UPDATE_MESSAGE_ERROR: u8 = 3;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM_ERROR: u8 = 5;
    pub const CEASE: u8 = 6;
    /// RFC 7313 §5.
    pub const ROUTE_REFRESH_MESSAGE_ERROR: u8 = 7;

    /// Subcodes of [`super::codes::MESSAGE_HEADER_ERROR`] (RFC 4271 §6.1).
    pub mod header {
        pub const CONNECTION_NOT_SYNCHRONIZED: u8 = 1;
        pub const BAD_MESSAGE_LENGTH: u8 = 2;
        pub const BAD_MESSAGE_TYPE: u8 = 3;
    }

    /// Subcodes of [`super::codes::OPEN_MESSAGE_ERROR`] (RFC 4271 §6.2, RFC 5492, RFC 9234).
    pub mod open {
        pub const UNSPECIFIC: u8 = 0;
        pub const UNSUPPORTED_VERSION_NUMBER: u8 = 1;
        pub const BAD_PEER_AS: u8 = 2;
        pub const BAD_BGP_IDENTIFIER: u8 = 3;
        pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
        /// Deprecated by RFC 4271.
        pub const AUTHENTICATION_FAILURE: u8 = 5;
        pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
        /// RFC 5492.
        pub const UNSUPPORTED_CAPABILITY: u8 = 7;
        /// RFC 9234.
        pub const ROLE_MISMATCH: u8 = 11;
    }

    /// Subcodes of [`super::codes::UPDATE_MESSAGE_ERROR`] (RFC 4271 §6.3).
    pub mod update {
        pub const MALFORMED_ATTRIBUTE_LIST: u8 = 1;
        pub const UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE: u8 = 2;
        pub const MISSING_WELL_KNOWN_ATTRIBUTE: u8 = 3;
        pub const ATTRIBUTE_FLAGS_ERROR: u8 = 4;
        pub const ATTRIBUTE_LENGTH_ERROR: u8 = 5;
        pub const INVALID_ORIGIN_ATTRIBUTE: u8 = 6;
        /// Deprecated by RFC 4271.
        pub const AS_ROUTING_LOOP: u8 = 7;
        pub const INVALID_NEXT_HOP_ATTRIBUTE: u8 = 8;
        pub const OPTIONAL_ATTRIBUTE_ERROR: u8 = 9;
        pub const INVALID_NETWORK_FIELD: u8 = 10;
        pub const MALFORMED_AS_PATH: u8 = 11;
    }

    /// Subcodes of [`super::codes::FSM_ERROR`] (RFC 6608).
    pub mod fsm {
        pub const UNSPECIFIED: u8 = 0;
        pub const UNEXPECTED_IN_OPEN_SENT: u8 = 1;
        pub const UNEXPECTED_IN_OPEN_CONFIRM: u8 = 2;
        pub const UNEXPECTED_IN_ESTABLISHED: u8 = 3;
    }

    /// Subcodes of [`super::codes::CEASE`] (RFC 4486, RFC 8538, RFC 9384).
    pub mod cease {
        pub const MAXIMUM_PREFIXES_REACHED: u8 = 1;
        pub const ADMINISTRATIVE_SHUTDOWN: u8 = 2;
        pub const PEER_DECONFIGURED: u8 = 3;
        pub const ADMINISTRATIVE_RESET: u8 = 4;
        pub const CONNECTION_REJECTED: u8 = 5;
        pub const OTHER_CONFIGURATION_CHANGE: u8 = 6;
        pub const CONNECTION_COLLISION_RESOLUTION: u8 = 7;
        pub const OUT_OF_RESOURCES: u8 = 8;
        /// RFC 8538.
        pub const HARD_RESET: u8 = 9;
        /// RFC 9384.
        pub const BFD_DOWN: u8 = 10;
    }

    /// Subcodes of [`super::codes::ROUTE_REFRESH_MESSAGE_ERROR`] (RFC 7313).
    pub mod route_refresh {
        pub const INVALID_MESSAGE_LENGTH: u8 = 1;
    }
}

/// RFC 9003 raised the Shutdown Communication limit from 128 (RFC 8203) to 255 octets.
pub const MAX_SHUTDOWN_COMMUNICATION_LEN: usize = 255;

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    pub fn new(code: u8, subcode: u8, data: impl Into<Vec<u8>>) -> Self {
        Self {
            code,
            subcode,
            data: data.into(),
        }
    }

    pub fn hold_timer_expired() -> Self {
        Self::new(codes::HOLD_TIMER_EXPIRED, 0, Vec::new())
    }

    /// `subcode` from [`codes::fsm`]: RFC 6608 lets the peer see which state we were in.
    pub fn fsm_error(subcode: u8) -> Self {
        Self::new(codes::FSM_ERROR, subcode, Vec::new())
    }

    pub fn cease(subcode: u8) -> Self {
        Self::new(codes::CEASE, subcode, Vec::new())
    }

    /// Cease / Administrative Shutdown carrying an operator message (RFC 9003).
    pub fn admin_shutdown(message: &str) -> Self {
        Self::new(
            codes::CEASE,
            codes::cease::ADMINISTRATIVE_SHUTDOWN,
            shutdown_data(message),
        )
    }

    /// Cease / Administrative Reset carrying an operator message (RFC 9003).
    pub fn admin_reset(message: &str) -> Self {
        Self::new(
            codes::CEASE,
            codes::cease::ADMINISTRATIVE_RESET,
            shutdown_data(message),
        )
    }

    /// Cease / Hard Reset wrapping the real reason (RFC 8538 §3): with the N bit
    /// negotiated this is how we tell the peer not to keep our routes stale.
    pub fn hard_reset(inner: &Notification) -> Self {
        let mut data = Vec::with_capacity(2 + inner.data.len());
        data.push(inner.code);
        data.push(inner.subcode);
        data.extend_from_slice(&inner.data);
        Self::new(codes::CEASE, codes::cease::HARD_RESET, data)
    }

    /// The NOTIFICATION wrapped in a Cease / Hard Reset (RFC 8538 §3).
    pub fn hard_reset_inner(&self) -> Option<Notification> {
        if self.code != codes::CEASE || self.subcode != codes::cease::HARD_RESET {
            return None;
        }
        let mut r = Reader::new(&self.data);
        let code = r.u8()?;
        let subcode = r.u8()?;
        Some(Self::new(code, subcode, r.rest()))
    }

    /// The RFC 8203/9003 Shutdown Communication, if this is an Administrative
    /// Shutdown/Reset whose data is a well-formed length-prefixed UTF-8 string.
    pub fn shutdown_communication(&self) -> Option<&str> {
        if self.code != codes::CEASE
            || !matches!(
                self.subcode,
                codes::cease::ADMINISTRATIVE_SHUTDOWN | codes::cease::ADMINISTRATIVE_RESET
            )
        {
            return None;
        }
        let mut r = Reader::new(&self.data);
        let len = r.u8()?;
        let text = r.take(usize::from(len))?;
        if len == 0 {
            return None;
        }
        std::str::from_utf8(text).ok()
    }

    /// Human name, e.g. "UPDATE Message Error / Malformed AS_PATH".
    pub fn describe(&self) -> String {
        describe(self.code, self.subcode)
    }

    pub(crate) fn decode_body(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        match (r.u8(), r.u8()) {
            (Some(code), Some(subcode)) => Ok(Self::new(code, subcode, r.rest())),
            // frame_len already enforces >= 21 octets; kept for direct callers.
            _ => Err(DecodeError::bad_message_length(
                (super::HEADER_LEN + body.len()) as u16,
            )),
        }
    }

    pub(crate) fn encode_body(&self, out: &mut BytesMut) {
        out.reserve(2 + self.data.len());
        out.put_u8(self.code);
        out.put_u8(self.subcode);
        out.put_slice(&self.data);
    }
}

impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())?;
        if let Some(msg) = self.shutdown_communication() {
            write!(f, ": {msg:?}")?;
        } else if let Some(inner) = self.hard_reset_inner() {
            write!(f, " ({inner})")?;
        }
        Ok(())
    }
}

/// RFC 9003 §2: one length octet then UTF-8, cut at a char boundary so a long
/// operator message never yields invalid UTF-8 on the wire.
fn shutdown_data(message: &str) -> Vec<u8> {
    if message.is_empty() {
        return Vec::new();
    }
    let mut end = message.len().min(MAX_SHUTDOWN_COMMUNICATION_LEN);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let text = message.as_bytes().get(..end).unwrap_or_default();
    let mut data = Vec::with_capacity(1 + text.len());
    data.push(text.len() as u8);
    data.extend_from_slice(text);
    data
}

pub(crate) fn describe(code: u8, subcode: u8) -> String {
    use codes::*;
    let (name, sub): (&str, Option<&str>) = match code {
        MESSAGE_HEADER_ERROR => (
            "Message Header Error",
            match subcode {
                header::CONNECTION_NOT_SYNCHRONIZED => Some("Connection Not Synchronized"),
                header::BAD_MESSAGE_LENGTH => Some("Bad Message Length"),
                header::BAD_MESSAGE_TYPE => Some("Bad Message Type"),
                _ => None,
            },
        ),
        OPEN_MESSAGE_ERROR => (
            "OPEN Message Error",
            match subcode {
                open::UNSPECIFIC => Some("Unspecific"),
                open::UNSUPPORTED_VERSION_NUMBER => Some("Unsupported Version Number"),
                open::BAD_PEER_AS => Some("Bad Peer AS"),
                open::BAD_BGP_IDENTIFIER => Some("Bad BGP Identifier"),
                open::UNSUPPORTED_OPTIONAL_PARAMETER => Some("Unsupported Optional Parameter"),
                open::AUTHENTICATION_FAILURE => Some("Authentication Failure (deprecated)"),
                open::UNACCEPTABLE_HOLD_TIME => Some("Unacceptable Hold Time"),
                open::UNSUPPORTED_CAPABILITY => Some("Unsupported Capability"),
                open::ROLE_MISMATCH => Some("Role Mismatch"),
                _ => None,
            },
        ),
        UPDATE_MESSAGE_ERROR => (
            "UPDATE Message Error",
            match subcode {
                update::MALFORMED_ATTRIBUTE_LIST => Some("Malformed Attribute List"),
                update::UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE => {
                    Some("Unrecognized Well-known Attribute")
                }
                update::MISSING_WELL_KNOWN_ATTRIBUTE => Some("Missing Well-known Attribute"),
                update::ATTRIBUTE_FLAGS_ERROR => Some("Attribute Flags Error"),
                update::ATTRIBUTE_LENGTH_ERROR => Some("Attribute Length Error"),
                update::INVALID_ORIGIN_ATTRIBUTE => Some("Invalid ORIGIN Attribute"),
                update::AS_ROUTING_LOOP => Some("AS Routing Loop (deprecated)"),
                update::INVALID_NEXT_HOP_ATTRIBUTE => Some("Invalid NEXT_HOP Attribute"),
                update::OPTIONAL_ATTRIBUTE_ERROR => Some("Optional Attribute Error"),
                update::INVALID_NETWORK_FIELD => Some("Invalid Network Field"),
                update::MALFORMED_AS_PATH => Some("Malformed AS_PATH"),
                _ => None,
            },
        ),
        HOLD_TIMER_EXPIRED => ("Hold Timer Expired", None),
        FSM_ERROR => (
            "Finite State Machine Error",
            match subcode {
                fsm::UNSPECIFIED => Some("Unspecified"),
                fsm::UNEXPECTED_IN_OPEN_SENT => Some("Unexpected Message in OpenSent State"),
                fsm::UNEXPECTED_IN_OPEN_CONFIRM => Some("Unexpected Message in OpenConfirm State"),
                fsm::UNEXPECTED_IN_ESTABLISHED => Some("Unexpected Message in Established State"),
                _ => None,
            },
        ),
        CEASE => (
            "Cease",
            match subcode {
                cease::MAXIMUM_PREFIXES_REACHED => Some("Maximum Number of Prefixes Reached"),
                cease::ADMINISTRATIVE_SHUTDOWN => Some("Administrative Shutdown"),
                cease::PEER_DECONFIGURED => Some("Peer De-configured"),
                cease::ADMINISTRATIVE_RESET => Some("Administrative Reset"),
                cease::CONNECTION_REJECTED => Some("Connection Rejected"),
                cease::OTHER_CONFIGURATION_CHANGE => Some("Other Configuration Change"),
                cease::CONNECTION_COLLISION_RESOLUTION => Some("Connection Collision Resolution"),
                cease::OUT_OF_RESOURCES => Some("Out of Resources"),
                cease::HARD_RESET => Some("Hard Reset"),
                cease::BFD_DOWN => Some("BFD Down"),
                _ => None,
            },
        ),
        ROUTE_REFRESH_MESSAGE_ERROR => (
            "ROUTE-REFRESH Message Error",
            match subcode {
                route_refresh::INVALID_MESSAGE_LENGTH => Some("Invalid Message Length"),
                _ => None,
            },
        ),
        _ => return format!("Unknown error code {code} / subcode {subcode}"),
    };
    match sub {
        Some(sub) => format!("{name} / {sub}"),
        // Hold Timer Expired has no subcodes; 0 is the only sane value.
        None if code == HOLD_TIMER_EXPIRED && subcode == 0 => name.to_string(),
        None => format!("{name} / subcode {subcode}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::packet::{CodecCtx, Message};

    fn round_trip(n: Notification) {
        let msg = Message::Notification(n);
        for ctx in [
            CodecCtx {
                four_octet_as: false,
            },
            CodecCtx {
                four_octet_as: true,
            },
        ] {
            let mut out = BytesMut::new();
            msg.encode(&ctx, &mut out).unwrap();
            assert_eq!(Message::decode(&out, &ctx).unwrap(), msg);
        }
    }

    #[test]
    fn notifications_round_trip() {
        round_trip(Notification::hold_timer_expired());
        round_trip(Notification::new(3, 11, vec![]));
        round_trip(Notification::new(3, 5, vec![0x40, 1, 2, 0, 7]));
        round_trip(Notification::admin_shutdown("maintenance, back at 14:00"));
        round_trip(Notification::hard_reset(&Notification::cease(
            codes::cease::PEER_DECONFIGURED,
        )));
    }

    #[test]
    fn known_good_cease_notification_bytes() {
        let mut out = BytesMut::new();
        Message::Notification(Notification::cease(codes::cease::PEER_DECONFIGURED))
            .encode(&CodecCtx::default(), &mut out)
            .unwrap();
        let mut want = vec![0xff; 16];
        want.extend_from_slice(&[0, 21, 3, 6, 3]);
        assert_eq!(&out[..], &want[..]);
    }

    #[test]
    fn shutdown_communication_is_decoded_from_admin_shutdown() {
        let n = Notification::admin_shutdown("upgrade 🚀");
        assert_eq!(n.data[0] as usize, "upgrade 🚀".len());
        assert_eq!(n.shutdown_communication(), Some("upgrade 🚀"));
        assert_eq!(
            Notification::admin_reset("x").shutdown_communication(),
            Some("x")
        );
        assert_eq!(
            n.to_string(),
            "Cease / Administrative Shutdown: \"upgrade 🚀\""
        );
    }

    #[test]
    fn overlong_shutdown_communication_is_truncated_on_a_char_boundary() {
        let long = "é".repeat(200); // 400 bytes
        let n = Notification::admin_shutdown(&long);
        assert_eq!(n.data[0], 254);
        assert_eq!(n.shutdown_communication().unwrap().chars().count(), 127);
    }

    #[test]
    fn bad_shutdown_communication_is_ignored() {
        let overrun = Notification::new(6, 2, vec![10, b'a']);
        assert_eq!(overrun.shutdown_communication(), None);
        let bad_utf8 = Notification::new(6, 2, vec![2, 0xff, 0xfe]);
        assert_eq!(bad_utf8.shutdown_communication(), None);
        let other_subcode = Notification::new(6, 3, vec![1, b'a']);
        assert_eq!(other_subcode.shutdown_communication(), None);
        assert_eq!(Notification::admin_shutdown("").data, Vec::<u8>::new());
    }

    #[test]
    fn hard_reset_wraps_the_inner_notification() {
        let inner = Notification::new(3, 1, vec![9]);
        let hr = Notification::hard_reset(&inner);
        assert_eq!((hr.code, hr.subcode), (6, 9));
        assert_eq!(hr.hard_reset_inner(), Some(inner));
        assert_eq!(Notification::cease(9).hard_reset_inner(), None);
    }

    #[test]
    fn describe_names_codes_and_subcodes() {
        assert_eq!(
            Notification::new(3, 11, vec![]).describe(),
            "UPDATE Message Error / Malformed AS_PATH"
        );
        assert_eq!(
            Notification::new(1, 1, vec![]).describe(),
            "Message Header Error / Connection Not Synchronized"
        );
        assert_eq!(
            Notification::hold_timer_expired().describe(),
            "Hold Timer Expired"
        );
        assert_eq!(
            Notification::new(7, 1, vec![]).describe(),
            "ROUTE-REFRESH Message Error / Invalid Message Length"
        );
        assert_eq!(
            Notification::new(2, 99, vec![]).describe(),
            "OPEN Message Error / subcode 99"
        );
        assert_eq!(
            Notification::new(42, 1, vec![]).describe(),
            "Unknown error code 42 / subcode 1"
        );
    }
}
