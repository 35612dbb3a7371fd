//! Decode with both codec contexts; whatever decodes must re-encode (unless too
//! long) and decode again to an equivalent message.
//!
//! "Equivalent" is exact equality except where the codec is lossy by design:
//! - `discarded` notes (RFC 7606 attribute-discard) are receive-side only;
//! - a treat-as-withdraw UPDATE is compared by the prefixes it withdraws, since
//!   the malformed attribute that caused it is not re-encoded;
//! - on a two-octet session an AS_PATH with a confederation segment after a
//!   non-confederation one cannot survive the RFC 6793 AS4_PATH round trip
//!   (AS4_PATH carries no confederation segments).
#![no_main]

use bytes::BytesMut;
use hagw_bgp::packet::{
    frame_len, AsPath, CodecCtx, EncodeError, Message, HEADER_LEN, MAX_MESSAGE_LEN,
};
use libfuzzer_sys::fuzz_target;

/// Inputs not starting with a marker get a valid header, so the fuzzer spends
/// its time in the body decoders rather than rediscovering framing.
fn message_bytes(data: &[u8]) -> Vec<u8> {
    match data.split_first() {
        Some((0xff, _)) | None => data.to_vec(),
        Some((&ty, body)) => {
            let body = &body[..body.len().min(MAX_MESSAGE_LEN - HEADER_LEN)];
            let mut v = vec![0xff; 16];
            v.extend_from_slice(&((HEADER_LEN + body.len()) as u16).to_be_bytes());
            v.push(ty % 6);
            v.extend_from_slice(body);
            v
        }
    }
}

fn confed_after_non_confed(path: Option<&AsPath>) -> bool {
    let Some(path) = path else { return false };
    let mut seen_plain = false;
    for seg in &path.segments {
        if seg.kind.is_confed() {
            if seen_plain {
                return true;
            }
        } else {
            seen_plain = true;
        }
    }
    false
}

fn check_equivalent(m1: &Message, m2: &Message, ctx: &CodecCtx) {
    let (Message::Update(u1), Message::Update(u2)) = (m1, m2) else {
        assert_eq!(m1, m2);
        return;
    };
    assert!(
        u2.discarded.is_empty(),
        "re-encoding produced discards: {u2:?}"
    );
    if u1.treat_as_withdraw.is_some() {
        assert_eq!(u1.announced(), u2.announced());
        assert_eq!(u1.withdrawn_all(), u2.withdrawn_all());
        return;
    }
    let mut a = u1.clone();
    a.discarded.clear();
    let mut b = u2.clone();
    if !ctx.four_octet_as && confed_after_non_confed(a.attrs.as_path.as_ref()) {
        a.attrs.as_path = None;
        b.attrs.as_path = None;
    }
    assert_eq!(a, b);
}

fuzz_target!(|data: &[u8]| {
    let bytes = message_bytes(data);
    for ctx in [
        CodecCtx {
            four_octet_as: false,
        },
        CodecCtx {
            four_octet_as: true,
        },
    ] {
        let Ok(m1) = Message::decode(&bytes, &ctx) else {
            continue;
        };
        let mut out = BytesMut::new();
        match m1.encode(&ctx, &mut out) {
            Ok(()) => {}
            Err(EncodeError::TooLong { .. }) => continue,
            Err(e) => panic!("decoded message failed to re-encode: {e}: {m1:?}"),
        }
        assert_eq!(frame_len(&out), Ok(Some(out.len())));
        let m2 = match Message::decode(&out, &ctx) {
            Ok(m) => m,
            Err(e) => panic!("re-encoded message failed to decode: {e}: {m1:?}"),
        };
        check_equivalent(&m1, &m2, &ctx);
    }
});
