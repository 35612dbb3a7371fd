//! Framing over an arbitrary byte stream: `frame_len` must never panic, never
//! report a length outside 19..=4096 or beyond the buffer, and every frame it
//! hands out must be decodable without panicking.
#![no_main]

use hagw_bgp::packet::{frame_len, CodecCtx, Message, HEADER_LEN, MAX_MESSAGE_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let ctx = CodecCtx {
        four_octet_as: data.len().is_multiple_of(2),
    };
    let mut buf = data;
    while let Ok(Some(len)) = frame_len(buf) {
        assert!((HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len));
        assert!(len <= buf.len());
        let _ = Message::decode(&buf[..len], &ctx);
        buf = &buf[len..];
    }
    // Any prefix of a stream must be judged the same way or as incomplete.
    for cut in [0, 1, 16, 18, 19] {
        if let Some(prefix) = buf.get(..cut) {
            let _ = frame_len(prefix);
        }
    }
});
