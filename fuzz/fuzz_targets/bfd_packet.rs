//! Decode arbitrary UDP payloads as BFD Control packets; whatever decodes must
//! encode to a packet that decodes to the same value, and a decode error must
//! never be a panic.
#![no_main]

use hagw_bfd::packet::{ControlPacket, LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(p1) = ControlPacket::decode(data) else {
        return;
    };
    let wire = p1.encode();
    assert_eq!(usize::from(wire[3]), LEN);
    match ControlPacket::decode(&wire) {
        Ok(p2) => assert_eq!(p1, p2),
        Err(e) => panic!("re-encoded packet failed to decode: {e}: {p1:?}"),
    }
});
