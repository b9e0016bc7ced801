//! Synthetic media for the test world: the workspace's one media module (`trackmesh-testkit`),
//! cut to what the engine needs, a frame of a kind and a size.

use str0m::media::MediaKind;
use trackmesh_testkit::media::{audio_frame, vp8_frame};

pub use trackmesh_testkit::media::VP8_START_CODE;

/// A synthetic frame: an Opus-sized audio frame, or a VP8 frame of about `len` bytes whose
/// keyframes carry the start code at bytes 3..6.
pub fn synthetic_frame(kind: MediaKind, keyframe: bool, len: usize) -> Vec<u8> {
    match kind {
        MediaKind::Audio => audio_frame(0, 0),
        MediaKind::Video => vp8_frame(0, keyframe, len, 0),
    }
}

/// A synthetic VP8 frame of about `len` bytes as one RTP payload (what the relay carries): a
/// one-byte payload descriptor (start of partition 0), then the frame.
pub fn vp8_packet(keyframe: bool, len: usize) -> Vec<u8> {
    let mut p = vec![0x10];
    p.extend_from_slice(&vp8_frame(0, keyframe, len, 0));
    p
}
