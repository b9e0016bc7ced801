//! Control frames: arbitrary bytes, fed in pieces, must never panic the FrameDecoder, never make
//! it hold more than one frame, and whatever decodes must re-encode to a frame that decodes to
//! the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trackmesh_relay_proto::codec::{FRAME_HEADER_LEN, FrameDecoder, decode_body, encode_to_vec};
use trackmesh_relay_proto::control::ControlMsg;
use trackmesh_relay_proto::limits::MAX_FRAME_BODY;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the size of the pieces the rest arrives in.
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut dec = FrameDecoder::<ControlMsg>::new();
    for piece in data.chunks(step) {
        for msg in dec.feed(piece) {
            if let Ok(msg) = msg {
                let frame = encode_to_vec(&msg).expect("a decoded message re-encodes");
                let again = decode_body::<ControlMsg>(&frame[FRAME_HEADER_LEN..])
                    .expect("a re-encoded message decodes");
                assert_eq!(again, msg);
            }
        }
        assert!(dec.buffered() <= FRAME_HEADER_LEN + MAX_FRAME_BODY);
    }
    let _ = decode_body::<ControlMsg>(data);
});
