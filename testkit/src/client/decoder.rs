//! A model of a video decoder, with no codec: which received frames a real decoder could
//! decode, from the frames' stamped sequence numbers alone.
//!
//! The synthetic sender ([`crate::media::Source`]) makes every delta frame reference only the
//! frame before it (one long reference chain per track, restarted by each keyframe). So a frame
//! decodes if it is a keyframe, or if its predecessor decoded. Any other delta frame is
//! *broken*: a real decoder would show corruption, or freeze until the next keyframe.
//!
//! The model decodes frames as they arrive, as a decoder without a jitter buffer would:
//! - Nothing decodes before the first keyframe (a track whose first frame is a delta starts
//!   broken). A joining viewer's first frame is often the node's cached keyframe: the live
//!   frames after it decode only if they follow it directly or start at a keyframe, which the
//!   node's keyframe cache promises (DESIGN.md); broken frames at join say it did not. The loss
//!   counters call that gap "skipped at join", not loss.
//! - After a gap, every delta is broken until a keyframe, including one whose predecessor
//!   arrives later: a decoder cannot take back a frame it decoded from the wrong reference.
//! - A late frame (below the newest decodable one) decodes if its predecessor did. That is
//!   looked up in a bitmap of the last [`MEMORY`] frames; an older frame is broken. str0m hands
//!   over frames in RTP order, so late frames are rare: the counters count them as reordered.
//! - A keyframe far below the newest decodable frame (more than [`MEMORY`] frames) restarts the
//!   chain: a simulcast layer switch lands on the new layer's keyframe, and each layer numbers
//!   its frames on its own.

/// Frames below the newest decodable one whose state is remembered for late arrivals.
pub const MEMORY: u64 = 64;

/// One received video track's decoder state.
#[derive(Clone, Debug, Default)]
pub struct DecoderModel {
    /// The newest decodable frame (none before the first keyframe).
    head: Option<u64>,
    /// Bit `i` set: frame `head - 1 - i` decoded.
    behind: u64,
}

impl DecoderModel {
    /// Whether frame `seq` decodes, given the frames before it; it becomes part of the state.
    pub fn decode(&mut self, seq: u64, keyframe: bool) -> bool {
        let Some(head) = self.head else {
            if keyframe {
                self.restart(seq);
            }
            return keyframe;
        };
        if seq > head {
            if !keyframe && seq != head + 1 {
                return false;
            }
            let step = seq - head;
            // The old head becomes bit `step - 1`; shifting past the memory forgets everything.
            self.behind = self
                .behind
                .checked_shl(u32::try_from(step).unwrap_or(u32::MAX))
                .unwrap_or(0)
                | 1u64
                    .checked_shl(u32::try_from(step - 1).unwrap_or(u32::MAX))
                    .unwrap_or(0);
            self.head = Some(seq);
            return true;
        }
        if seq == head {
            // A duplicate of the newest decodable frame.
            return true;
        }
        let back = head - seq;
        if back > MEMORY {
            if keyframe {
                self.restart(seq);
            }
            return keyframe;
        }
        // Frame `seq` is bit `back - 1`, its predecessor bit `back` (beyond the memory at 64).
        let decodes = keyframe || (back < MEMORY && self.behind & (1 << back) != 0);
        if decodes {
            self.behind |= 1 << (back - 1);
        }
        decodes
    }

    fn restart(&mut self, seq: u64) {
        self.head = Some(seq);
        self.behind = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(frames: &[(u64, bool)]) -> Vec<bool> {
        let mut d = DecoderModel::default();
        frames.iter().map(|&(s, k)| d.decode(s, k)).collect()
    }

    #[test]
    fn nothing_decodes_before_the_first_keyframe() {
        assert_eq!(
            run(&[(3, false), (4, false), (5, true), (6, false)]),
            [false, false, true, true]
        );
    }

    /// 4 and 5 swapped: 5 arrives before its predecessor and is broken, 4 decodes late, and
    /// the chain stays broken until the keyframe (6 was decoded from a wrong reference).
    #[test]
    fn a_late_frame_decodes_if_its_predecessor_did() {
        assert_eq!(
            run(&[
                (1, true),
                (2, false),
                (3, false),
                (5, false),
                (4, false),
                (6, false),
                (7, true),
                (3, false),
                (7, false),
            ]),
            [true, true, true, false, true, false, true, true, true]
        );
        // A late frame whose predecessor was lost stays broken.
        assert_eq!(
            run(&[(1, true), (3, true), (4, false), (2, false)]),
            [true, true, true, true],
            "2's predecessor 1 decoded"
        );
        assert_eq!(
            run(&[(1, true), (4, true), (5, false), (3, false)]),
            [true, true, true, false],
            "3's predecessor 2 never came"
        );
    }

    /// Late frames beyond the memory are broken; a keyframe that far back restarts the chain
    /// (a simulcast layer with its own numbering); a keyframe far ahead forgets the memory.
    #[test]
    fn the_memory_is_bounded() {
        let mut d = DecoderModel::default();
        assert!(d.decode(0, true));
        for s in 1..=100 {
            assert!(d.decode(s, false), "frame {s}");
        }
        assert!(d.decode(100 - MEMORY + 1, false), "inside the memory");
        assert!(
            !d.decode(100 - MEMORY, false),
            "its predecessor is forgotten"
        );
        assert!(!d.decode(10, false), "beyond the memory");
        assert!(d.decode(10, true), "a keyframe restarts");
        assert!(d.decode(11, false) && d.decode(12, false));
        assert!(d.decode(1000, true));
        assert!(!d.decode(12, false) && !d.decode(999, false));
    }
}
