//! Synthetic media for the test world. One function, so the workspace's shared test media can
//! replace it in one place.

use str0m::media::MediaKind;

/// The VP8 keyframe start code (RFC 6386, 9.1): bytes 3..6 of a keyframe, after the frame tag.
pub const VP8_START_CODE: [u8; 3] = [0x9d, 0x01, 0x2a];

/// A synthetic frame of `len` bytes: Opus filler for audio; for video a VP8 frame whose 3-byte
/// frame tag says key (bit 0 clear) or delta (bit 0 set), shown, and whose keyframes carry the
/// start code at bytes 3..6 and a 16x16 size after it. Video frames are at least 10 bytes.
pub fn synthetic_frame(kind: MediaKind, keyframe: bool, len: usize) -> Vec<u8> {
    match kind {
        MediaKind::Audio => vec![0x55; len],
        MediaKind::Video => {
            let mut frame = vec![0x55; len.max(10)];
            // Frame tag: key frame flag (0 = key), version 0, show_frame 1, partition size 0.
            frame[..3].copy_from_slice(&[if keyframe { 0x10 } else { 0x11 }, 0x00, 0x00]);
            if keyframe {
                frame[3..6].copy_from_slice(&VP8_START_CODE);
                // Width and height, 14 bits each, little-endian, no scaling.
                frame[6..10].copy_from_slice(&[16, 0, 16, 0]);
            }
            frame
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframes_carry_the_start_code_after_the_frame_tag() {
        let key = synthetic_frame(MediaKind::Video, true, 1000);
        assert_eq!(key.len(), 1000);
        assert_eq!(key[0] & 0x01, 0, "key frame flag");
        assert_eq!(key[3..6], VP8_START_CODE);
        let delta = synthetic_frame(MediaKind::Video, false, 1000);
        assert_eq!(delta[0] & 0x01, 1, "delta frame flag");
        assert_ne!(delta[3..6], VP8_START_CODE);
        assert_eq!(synthetic_frame(MediaKind::Audio, false, 80).len(), 80);
    }
}
