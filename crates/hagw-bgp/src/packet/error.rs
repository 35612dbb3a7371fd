//! Codec errors. A [`DecodeError`] always maps to exactly one NOTIFICATION, so
//! the FSM never has to know which RFC section chose the code.

use std::borrow::Cow;

use super::notification::{codes, describe, Notification};

/// A received message that must end the session (RFC 4271 §6, as revised by
/// RFC 7606): carries the NOTIFICATION to send.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{reason} ({})", describe(*.code, *.subcode))]
pub struct DecodeError {
    pub code: u8,
    pub subcode: u8,
    /// NOTIFICATION data, as RFC 4271 §6 prescribes for this error.
    pub data: Vec<u8>,
    /// What was wrong, for the log.
    pub reason: Cow<'static, str>,
}

impl DecodeError {
    pub fn new(
        code: u8,
        subcode: u8,
        data: impl Into<Vec<u8>>,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            code,
            subcode,
            data: data.into(),
            reason: reason.into(),
        }
    }

    /// The NOTIFICATION to send to the peer for this error.
    pub fn notification(&self) -> Notification {
        Notification::new(self.code, self.subcode, self.data.clone())
    }

    pub(crate) fn connection_not_synchronized() -> Self {
        Self::new(
            codes::MESSAGE_HEADER_ERROR,
            codes::header::CONNECTION_NOT_SYNCHRONIZED,
            Vec::new(),
            "marker is not all ones",
        )
    }

    /// RFC 4271 §6.1: data is the erroneous Length field.
    pub(crate) fn bad_message_length(len: u16) -> Self {
        Self::new(
            codes::MESSAGE_HEADER_ERROR,
            codes::header::BAD_MESSAGE_LENGTH,
            len.to_be_bytes().to_vec(),
            format!("bad message length {len}"),
        )
    }

    /// RFC 4271 §6.1: data is the erroneous Type field.
    pub(crate) fn bad_message_type(ty: u8) -> Self {
        Self::new(
            codes::MESSAGE_HEADER_ERROR,
            codes::header::BAD_MESSAGE_TYPE,
            vec![ty],
            format!("unknown message type {ty}"),
        )
    }

    pub(crate) fn open(subcode: u8, reason: impl Into<Cow<'static, str>>) -> Self {
        Self::new(codes::OPEN_MESSAGE_ERROR, subcode, Vec::new(), reason)
    }

    pub(crate) fn update(
        subcode: u8,
        data: impl Into<Vec<u8>>,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::new(codes::UPDATE_MESSAGE_ERROR, subcode, data, reason)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum EncodeError {
    #[error("message would be {len} octets, over the 4096-octet limit")]
    TooLong { len: usize },
    #[error("capability {code} value is {len} octets, over the 255-octet limit")]
    CapabilityTooLong { code: u8, len: usize },
    #[error("AS_SET/AS_CONFED_SET of {len} ASNs does not fit one 255-ASN segment")]
    AsSetTooLong { len: usize },
    #[error("graceful restart time {0} does not fit in 12 bits")]
    RestartTimeTooLarge(u16),
    #[error("invalid MP_REACH/MP_UNREACH: {0}")]
    InvalidMp(&'static str),
}

/// One malformed attribute handled without a session reset (RFC 7606
/// treat-as-withdraw or attribute-discard): kept for logging.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{} (type {type_code}): {reason}", super::attr::attr_name(*.type_code))]
pub struct AttrError {
    pub type_code: u8,
    pub reason: String,
}

impl AttrError {
    pub fn new(type_code: u8, reason: impl Into<String>) -> Self {
        Self {
            type_code,
            reason: reason.into(),
        }
    }
}
