//! Handshake frames: arbitrary bytes must never panic the handshake decoder or `check_hello`;
//! a decoded handshake message re-encodes and decodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trackmesh_relay_proto::codec::{FRAME_HEADER_LEN, FrameDecoder, decode_body, encode_to_vec};
use trackmesh_relay_proto::handshake::{
    HandshakeMsg, SUPPORTED_VERSIONS, check_hello, cluster_identity,
};

fuzz_target!(|data: &[u8]| {
    let cluster = cluster_identity("fuzz");
    let check = |msg: HandshakeMsg| {
        if let HandshakeMsg::Hello(hello) = &msg {
            let _ = check_hello(hello, &cluster, SUPPORTED_VERSIONS);
        }
        let frame = encode_to_vec(&msg).expect("a decoded message re-encodes");
        let again = decode_body::<HandshakeMsg>(&frame[FRAME_HEADER_LEN..])
            .expect("a re-encoded message decodes");
        assert_eq!(again, msg);
    };
    if let Ok(msg) = decode_body::<HandshakeMsg>(data) {
        check(msg);
    }
    let mut dec = FrameDecoder::<HandshakeMsg>::new();
    for msg in dec.feed(data).flatten() {
        check(msg);
    }
});
