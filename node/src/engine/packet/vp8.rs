//! VP8 PictureID and TL0PICIDX continuity for one subscriber's stream.
//!
//! A VP8 decoder (Chromium's) checks that PictureIDs go on without a jump and that TL0PICIDX
//! (the base temporal layer's picture index) does too; at a switch to another source they jump.
//! As for sequence numbers ([`super::rewrite`]), each is mapped through an offset chosen at every
//! switch so the first picture after it is the last one sent + 1. Only the values are computed
//! here: str0m applies them while it serializes the packet (`RtpWrite::vp8_patch`, from
//! [`Vp8Descriptor::patch`], parsed once per source packet and shared by its subscribers), so
//! the shared payload is never copied.

use str0m::rtp::{Vp8Descriptor, Vp8Patch};

use super::rewrite::SourceId;

/// A 15-bit PictureID wraps here; a 7-bit one at 128, which divides it, so one offset serves both.
const PICTURE_ID_RANGE: u16 = 1 << 15;
const SHORT_RANGE: u16 = 1 << 7;

/// The descriptor fields of one subscriber's stream (per subscriber and mid).
#[derive(Debug, Clone, Default)]
pub struct Vp8Rewriter {
    source: Option<SourceId>,
    /// Added to the source's PictureID (mod 2^15) and TL0PICIDX (mod 2^8).
    picture_offset: u16,
    tl0_offset: u8,
    /// The newest values sent, where a switch goes on from.
    last_picture: Option<u16>,
    last_tl0: Option<u8>,
}

/// The descriptor values one packet is sent with, where they differ from the source's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Vp8Values {
    /// The PictureID to write (in the field's width).
    pub picture_id: Option<u16>,
    /// The TL0PICIDX to write.
    pub tl0_pic_idx: Option<u8>,
}

impl Vp8Rewriter {
    /// The patch for one packet of `source`, whose descriptor is `descriptor`; `restart` when
    /// the sequence rewriter says the packet starts the source for this subscriber (switched or
    /// resynced). `None`: nothing to rewrite (no switch happened yet, or the descriptor carries
    /// neither field).
    pub fn patch(
        &mut self,
        source: SourceId,
        descriptor: &Vp8Descriptor,
        restart: bool,
    ) -> Option<Vp8Patch> {
        let v = self.values(source, descriptor, restart);
        if v == Vp8Values::default() {
            return None;
        }
        let mut builder = descriptor.patch();
        if let Some(p) = v.picture_id {
            builder = builder.picture_id(p);
        }
        if let Some(t) = v.tl0_pic_idx {
            builder = builder.tl0_pic_idx(t);
        }
        // Values are reduced to the field's width and only present fields are set, so building
        // cannot fail; if it did, the packet goes out unpatched (a decoder may drop a picture).
        builder.build().ok()
    }

    /// The values [`Self::patch`] writes (and updates the state the same way).
    pub fn values(
        &mut self,
        source: SourceId,
        descriptor: &Vp8Descriptor,
        restart: bool,
    ) -> Vp8Values {
        let picture = descriptor.picture_id();
        let tl0 = descriptor.tl0_pic_idx();
        // The field's width: str0m refuses a 7-bit field a value above 127.
        let range = if descriptor.patch().picture_id(128).build().is_ok() {
            PICTURE_ID_RANGE
        } else {
            SHORT_RANGE
        };
        if restart || self.source != Some(source) {
            self.source = Some(source);
            if let (Some(p), Some(last)) = (picture, self.last_picture) {
                let next = last.wrapping_add(1) % PICTURE_ID_RANGE;
                self.picture_offset = next.wrapping_sub(p) % PICTURE_ID_RANGE;
            }
            if let (Some(t), Some(last)) = (tl0, self.last_tl0) {
                self.tl0_offset = last.wrapping_add(1).wrapping_sub(t);
            }
        }
        let out_picture = picture.map(|p| p.wrapping_add(self.picture_offset) % range);
        let out_tl0 = tl0.map(|t| t.wrapping_add(self.tl0_offset));
        if let Some(p) = out_picture
            && self
                .last_picture
                .is_none_or(|last| newer(p, last % range, range))
        {
            self.last_picture = Some(p);
        }
        if let Some(t) = out_tl0
            && self
                .last_tl0
                .is_none_or(|last| (t.wrapping_sub(last) as i8) > 0)
        {
            self.last_tl0 = Some(t);
        }
        Vp8Values {
            picture_id: out_picture.filter(|_| self.picture_offset != 0),
            tl0_pic_idx: out_tl0.filter(|_| self.tl0_offset != 0),
        }
    }
}

/// Whether `a` follows `b` in a counter that wraps at `range` (less than half a turn ahead).
fn newer(a: u16, b: u16, range: u16) -> bool {
    let d = a.wrapping_sub(b) % range;
    d != 0 && d < range / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: SourceId = SourceId { id: 1, epoch: 0 };
    const B: SourceId = SourceId { id: 2, epoch: 0 };

    /// A keyframe-start VP8 payload with a 15-bit PictureID and a TL0PICIDX (as Chromium sends
    /// simulcast), or a 7-bit PictureID without TL0PICIDX.
    fn payload(picture: u16, tl0: Option<u8>) -> Vec<u8> {
        let mut p = Vec::new();
        match tl0 {
            Some(t) => {
                p.extend([
                    0x90,
                    0xe0,
                    0x80 | (picture >> 8) as u8,
                    picture as u8,
                    t,
                    0x20,
                ]);
            }
            None => p.extend([0x90, 0x80, (picture & 0x7f) as u8]),
        }
        p.extend([0x10, 0x02, 0x00]);
        p
    }

    /// The (PictureID, TL0PICIDX) a packet goes out with, and a check that the patch str0m
    /// gets writes exactly those.
    fn sent(r: &mut Vp8Rewriter, source: SourceId, bytes: &[u8], restart: bool) -> (u16, u8) {
        let d = Vp8Descriptor::parse(bytes).expect("valid descriptor");
        let before = r.clone();
        let v = r.values(source, &d, restart);
        let mut again = before;
        let patch = again.patch(source, &d, restart);
        let mut expected = d.patch();
        if let Some(p) = v.picture_id {
            expected = expected.picture_id(p);
        }
        if let Some(t) = v.tl0_pic_idx {
            expected = expected.tl0_pic_idx(t);
        }
        let expected = (v != Vp8Values::default()).then(|| expected.build().expect("fits"));
        assert_eq!(patch, expected);
        (
            v.picture_id.or(d.picture_id()).expect("picture id"),
            v.tl0_pic_idx.or(d.tl0_pic_idx()).unwrap_or(0),
        )
    }

    #[test]
    fn nothing_is_patched_until_a_switch() {
        let mut r = Vp8Rewriter::default();
        let d = Vp8Descriptor::parse(&payload(1234, Some(9))).expect("valid");
        assert_eq!(r.patch(A, &d, true), None);
        let d = Vp8Descriptor::parse(&payload(1235, Some(10))).expect("valid");
        assert_eq!(r.patch(A, &d, false), None);
    }

    #[test]
    fn picture_ids_and_tl0picidx_continue_across_a_switch() {
        let mut r = Vp8Rewriter::default();
        assert_eq!(sent(&mut r, A, &payload(1000, Some(50)), true), (1000, 50));
        assert_eq!(sent(&mut r, A, &payload(1001, Some(51)), false), (1001, 51));
        // Both packets of one picture keep its id.
        assert_eq!(sent(&mut r, A, &payload(1001, Some(51)), false), (1001, 51));
        // The other layer's numbering is unrelated.
        assert_eq!(
            sent(&mut r, B, &payload(20_000, Some(200)), true),
            (1002, 52)
        );
        assert_eq!(
            sent(&mut r, B, &payload(20_001, Some(200)), false),
            (1003, 52)
        );
        assert_eq!(
            sent(&mut r, B, &payload(20_002, Some(201)), false),
            (1004, 53)
        );
        // And back.
        assert_eq!(sent(&mut r, A, &payload(1100, Some(90)), true), (1005, 54));
    }

    #[test]
    fn picture_ids_wrap_at_their_width() {
        let mut r = Vp8Rewriter::default();
        sent(&mut r, A, &payload(32_766, Some(255)), true);
        assert_eq!(sent(&mut r, B, &payload(5, Some(3)), true), (32_767, 0));
        assert_eq!(sent(&mut r, B, &payload(6, Some(4)), false), (0, 1));
        // A source with 7-bit ids: values stay within 7 bits.
        let mut r = Vp8Rewriter::default();
        sent(&mut r, A, &payload(126, None), true);
        assert_eq!(sent(&mut r, B, &payload(3, None), true).0, 127);
        assert_eq!(sent(&mut r, B, &payload(4, None), false).0, 0);
    }
}
