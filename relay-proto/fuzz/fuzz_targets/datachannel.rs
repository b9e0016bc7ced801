//! DataChannel stream frames: arbitrary bytes, fed in pieces, must never panic the DcDecoder,
//! never make it hold more than one frame, and whatever decodes must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trackmesh_relay_proto::datachannel::{DC_HEADER_LEN, DcDecoder, DcFrame, MAX_DC_BODY};

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the size of the pieces the rest arrives in.
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut dec = DcDecoder::new();
    for piece in data.chunks(step) {
        for frame in dec.feed(piece).into_iter().flatten() {
            let bytes = frame.to_vec().expect("a decoded frame re-encodes");
            let again = DcFrame::decode_body(&bytes[DC_HEADER_LEN..])
                .expect("a re-encoded frame decodes");
            assert_eq!(again, frame);
        }
        assert!(dec.buffered() <= DC_HEADER_LEN + MAX_DC_BODY);
    }
    let _ = DcFrame::decode_body(data);
});
