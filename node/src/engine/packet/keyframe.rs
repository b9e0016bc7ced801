//! Where frames and keyframes start, read from one RTP payload.
//!
//! The packet path forwards packets, not frames: a subscriber may start on (or switch to) a
//! source only at the first packet of a keyframe, and the edge keyframe cache keeps the packets
//! from there. Only the payload descriptor and the first bytes of the codec's bitstream are
//! read; nothing is copied. A payload that is short or malformed is "neither", never a panic:
//! the worst outcome is a switch that waits for the next keyframe.

use str0m::format::Codec;
use str0m::rtp::Vp8Descriptor;

/// What one packet starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Start {
    /// The first packet of a frame (a picture, or an audio packet: each is a frame).
    pub frame: bool,
    /// The first packet of a keyframe: a decoder can start here. Implies `frame`.
    pub keyframe: bool,
}

impl Start {
    const NEITHER: Start = Start {
        frame: false,
        keyframe: false,
    };

    fn of(frame: bool, keyframe: bool) -> Start {
        Start {
            frame: frame || keyframe,
            keyframe,
        }
    }
}

/// Whether [`inspect`] finds keyframes in this codec's packets. For other codecs (audio, and
/// video codecs not parsed here) nothing should wait for a keyframe.
pub fn detects_keyframes(codec: Codec) -> bool {
    matches!(
        codec,
        Codec::Vp8 | Codec::Vp9 | Codec::H264 | Codec::H265 | Codec::Av1
    )
}

/// What the packet with this RTP payload starts, for `codec`.
pub fn inspect(codec: Codec, payload: &[u8]) -> Start {
    match codec {
        Codec::Vp8 => vp8(payload),
        Codec::Vp9 => vp9(payload),
        Codec::H264 => h264(payload),
        Codec::H265 => h265(payload),
        Codec::Av1 => av1(payload),
        // One audio packet is one frame, and audio has no keyframes.
        Codec::Opus
        | Codec::PCMU
        | Codec::PCMA
        | Codec::G722
        | Codec::CN
        | Codec::AmrWb
        | Codec::Tele => Start::of(true, false),
        // Not parsed (anything new): never claims a start, so nothing switches on it.
        _ => Start::NEITHER,
    }
}

/// VP8 (RFC 7741): the descriptor's S bit with partition index 0 starts a frame; the P bit of
/// the VP8 payload header that follows the descriptor is 0 on a keyframe. str0m's parser finds
/// where that header is (it also validates the descriptor's fields).
fn vp8(payload: &[u8]) -> Start {
    let Some(&first) = payload.first() else {
        return Start::NEITHER;
    };
    let frame = first & 0x10 != 0 && first & 0x07 == 0;
    let Ok(descriptor) = Vp8Descriptor::parse(payload) else {
        return Start::NEITHER;
    };
    Start::of(frame, descriptor.starts_keyframe(payload))
}

/// VP9 (RFC 9628): the descriptor's B bit starts a frame, its P bit says the picture is
/// predicted from an earlier one. A keyframe is a B packet without P, of the base spatial layer
/// when the descriptor says which layer (upper layers of a keyframe may also lack P).
fn vp9(payload: &[u8]) -> Start {
    let Some(&first) = payload.first() else {
        return Start::NEITHER;
    };
    let has_picture_id = first & 0x80 != 0;
    let predicted = first & 0x40 != 0;
    let has_layers = first & 0x20 != 0;
    let begins = first & 0x08 != 0;
    let mut at = 1;
    if has_picture_id {
        let Some(&pid) = payload.get(at) else {
            return Start::NEITHER;
        };
        // M bit: a 15-bit picture id takes a second byte.
        at += if pid & 0x80 != 0 { 2 } else { 1 };
    }
    let base_layer = if has_layers {
        match payload.get(at) {
            // TID(3) U(1) SID(3) D(1)
            Some(&layer) => (layer >> 1) & 0x07 == 0,
            None => return Start::NEITHER,
        }
    } else {
        true
    };
    if payload.len() <= at {
        return Start::NEITHER;
    }
    Start::of(begins, begins && !predicted && base_layer)
}

/// H.264 NAL unit types that matter here.
const NAL_NON_IDR_SLICE: u8 = 1;
const NAL_IDR_SLICE: u8 = 5;
const NAL_SEI: u8 = 6;
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;
const NAL_STAP_A: u8 = 24;
const NAL_FU_A: u8 = 28;
/// Most NAL units of one STAP-A looked at (an MTU-sized packet holds few).
const MAX_STAP_UNITS: usize = 16;

/// H.264 (RFC 6184): a single NAL unit, the first unit of a STAP-A, or an FU-A with its start
/// bit. A frame (access unit) starts with an AUD, SEI, SPS or PPS, or with a slice whose
/// `first_mb_in_slice` is 0 (its first bit is set: Exp-Golomb 0). A keyframe starts with an SPS
/// or an IDR slice: a sender puts the SPS and PPS before the IDR, in the same STAP-A or in
/// packets of their own, and the keyframe starts at the first of them.
fn h264(payload: &[u8]) -> Start {
    let Some(&header) = payload.first() else {
        return Start::NEITHER;
    };
    match header & 0x1f {
        NAL_STAP_A => aggregated(payload.get(1..).unwrap_or_default(), h264_unit),
        NAL_FU_A => {
            let Some(&fu) = payload.get(1) else {
                return Start::NEITHER;
            };
            if fu & 0x80 == 0 {
                return Start::NEITHER;
            }
            nal_start(fu & 0x1f, payload.get(2..).unwrap_or_default())
        }
        kind @ 1..=23 => nal_start(kind, payload.get(1..).unwrap_or_default()),
        // STAP-B, MTAP, FU-B: not used by WebRTC senders (packetization-mode 0 and 1).
        _ => Start::NEITHER,
    }
}

/// The units of an aggregation packet (H.264 STAP-A, H.265 AP; after its header): each a
/// 16-bit size and a NAL unit, read by `unit`. The first unit says whether a frame starts; an
/// SPS or IDR anywhere in the first packet of a frame makes it a keyframe start.
fn aggregated(mut rest: &[u8], unit: impl Fn(&[u8]) -> Start) -> Start {
    let mut start = Start::NEITHER;
    for index in 0..MAX_STAP_UNITS {
        let (Some(&hi), Some(&lo)) = (rest.first(), rest.get(1)) else {
            break;
        };
        let size = usize::from(u16::from_be_bytes([hi, lo]));
        let Some(nal) = rest.get(2..2 + size) else {
            break;
        };
        if nal.is_empty() {
            break;
        }
        let this = unit(nal);
        if index == 0 {
            start.frame = this.frame;
        }
        if this.keyframe && start.frame {
            start.keyframe = true;
        }
        rest = rest.get(2 + size..).unwrap_or_default();
    }
    start
}

/// One H.264 NAL unit (its header byte first).
fn h264_unit(nal: &[u8]) -> Start {
    match nal.split_first() {
        Some((&header, body)) => nal_start(header & 0x1f, body),
        None => Start::NEITHER,
    }
}

/// One NAL unit of type `kind` whose bytes after the NAL header begin with `body`.
fn nal_start(kind: u8, body: &[u8]) -> Start {
    match kind {
        NAL_SPS => Start::of(true, true),
        NAL_AUD | NAL_SEI | NAL_PPS => Start::of(true, false),
        NAL_NON_IDR_SLICE | NAL_IDR_SLICE => {
            let Some(&first) = body.first() else {
                return Start::NEITHER;
            };
            let first_slice = first & 0x80 != 0;
            Start::of(first_slice, first_slice && kind == NAL_IDR_SLICE)
        }
        _ => Start::NEITHER,
    }
}

/// H.265 NAL unit types (RFC 7798, ITU-T H.265 table 7-1).
const HEVC_IRAP: std::ops::RangeInclusive<u8> = 16..=21;
const HEVC_VPS: u8 = 32;
const HEVC_SPS: u8 = 33;
const HEVC_PPS: u8 = 34;
const HEVC_AUD: u8 = 35;
const HEVC_PREFIX_SEI: u8 = 39;
const HEVC_AP: u8 = 48;
const HEVC_FU: u8 = 49;

/// H.265 (RFC 7798): as H.264, with two-byte NAL headers. A VPS or SPS, or the first slice of
/// an IRAP picture (IDR, CRA, BLA: where a decoder can start), starts a keyframe; a parameter
/// set, delimiter or prefix SEI, or a picture's first slice segment, starts a frame. Aggregation
/// (AP) and fragmentation (FU, start only) packets are looked into; DONL fields are not
/// expected (WebRTC senders do not interleave).
fn h265(payload: &[u8]) -> Start {
    // The NAL unit header is two bytes; the first has the type.
    let (Some(&header), Some(_)) = (payload.first(), payload.get(1)) else {
        return Start::NEITHER;
    };
    match (header >> 1) & 0x3f {
        HEVC_AP => aggregated(payload.get(2..).unwrap_or_default(), |nal| {
            let kind = nal.first().map_or(0xff, |h| (h >> 1) & 0x3f);
            hevc_nal_start(kind, nal.get(2..).unwrap_or_default())
        }),
        HEVC_FU => {
            let Some(&fu) = payload.get(2) else {
                return Start::NEITHER;
            };
            if fu & 0x80 == 0 {
                return Start::NEITHER;
            }
            hevc_nal_start(fu & 0x3f, payload.get(3..).unwrap_or_default())
        }
        kind => hevc_nal_start(kind, payload.get(2..).unwrap_or_default()),
    }
}

/// One H.265 NAL unit of type `kind` whose bytes after its two-byte header begin with `body`.
fn hevc_nal_start(kind: u8, body: &[u8]) -> Start {
    match kind {
        HEVC_VPS | HEVC_SPS => Start::of(true, true),
        HEVC_PPS | HEVC_AUD | HEVC_PREFIX_SEI => Start::of(true, false),
        // Slice segments (VCL types 0-31; 22-31 are reserved): the first bit of the segment
        // header is first_slice_segment_in_pic_flag.
        0..=31 => {
            let Some(&first) = body.first() else {
                return Start::NEITHER;
            };
            let first_slice = first & 0x80 != 0;
            Start::of(first_slice, first_slice && HEVC_IRAP.contains(&kind))
        }
        _ => Start::NEITHER,
    }
}

/// AV1 (the AOM RTP payload format): the aggregation header's N bit marks the first packet of
/// a coded video sequence, which is where a decoder can start (Chromium sends one with every
/// keyframe). A packet whose first OBU is not a continuation (Z bit clear) and is a sequence
/// header, temporal delimiter, frame header or frame starts a frame.
fn av1(payload: &[u8]) -> Start {
    let Some(&aggregation) = payload.first() else {
        return Start::NEITHER;
    };
    let continues = aggregation & 0x80 != 0;
    let new_sequence = aggregation & 0x08 != 0;
    let count = (aggregation >> 4) & 0x03;
    if continues {
        return Start::NEITHER;
    }
    // W = 1: a single OBU element without a length field; otherwise the first has one (LEB128).
    let mut at = 1;
    if count != 1 {
        let mut read = 0;
        loop {
            let Some(&byte) = payload.get(at) else {
                return Start::NEITHER;
            };
            at += 1;
            read += 1;
            if byte & 0x80 == 0 {
                break;
            }
            if read == 8 {
                return Start::NEITHER;
            }
        }
    }
    let Some(&obu) = payload.get(at) else {
        return Start::NEITHER;
    };
    let frame = matches!((obu >> 3) & 0x0f, 1 | 2 | 3 | 6);
    Start::of(frame, new_sequence && frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: Start = Start {
        frame: true,
        keyframe: true,
    };
    const DELTA_START: Start = Start {
        frame: true,
        keyframe: false,
    };
    const MIDDLE: Start = Start::NEITHER;

    /// A VP8 packet as Chromium sends it: X, S and partition 0, 15-bit PictureID, TL0PICIDX,
    /// TID/KEYIDX byte, then the first byte of the VP8 frame header (P bit: 0 on a keyframe).
    fn vp8_packet(start: bool, key: bool) -> Vec<u8> {
        let s = if start { 0x10 } else { 0x00 };
        let frame_tag = if key { 0x10 } else { 0x11 };
        vec![
            0x80 | s,
            0xe0,
            0x80 | 0x12,
            0x34,
            0x07,
            0x20,
            frame_tag,
            0x02,
            0x00,
        ]
    }

    #[test]
    fn vp8_keyframes_and_frame_starts_are_found_in_real_descriptors() {
        assert_eq!(inspect(Codec::Vp8, &vp8_packet(true, true)), KEY);
        assert_eq!(inspect(Codec::Vp8, &vp8_packet(true, false)), DELTA_START);
        // A continuation packet of a keyframe: its payload is not a frame header.
        assert_eq!(inspect(Codec::Vp8, &vp8_packet(false, true)), MIDDLE);
        // The minimal descriptor (no X byte) Firefox and libwebrtc without picture ids send.
        assert_eq!(
            inspect(Codec::Vp8, &[0x10, 0x50, 0x01, 0x00, 0x9d, 0x01, 0x2a]),
            KEY
        );
        assert_eq!(inspect(Codec::Vp8, &[0x10, 0x31, 0x01]), DELTA_START);
        // S set but a partition index other than 0 is not a frame start.
        assert_eq!(inspect(Codec::Vp8, &[0x11, 0x10, 0x01]), MIDDLE);
    }

    #[test]
    fn vp9_keyframes_need_begin_without_prediction_on_the_base_layer() {
        // I, B (and E): picture id 0x15, not predicted.
        assert_eq!(inspect(Codec::Vp9, &[0x8c, 0x15, 0xaa]), KEY);
        // P set: an inter frame.
        assert_eq!(inspect(Codec::Vp9, &[0xcc, 0x15, 0xaa]), DELTA_START);
        // No B: a later packet of the frame.
        assert_eq!(inspect(Codec::Vp9, &[0x84, 0x15, 0xaa]), MIDDLE);
        // 15-bit picture id, layer indices with SID 1: an upper spatial layer.
        assert_eq!(
            inspect(Codec::Vp9, &[0xa8, 0x81, 0x02, 0x02, 0x00, 0xaa]),
            DELTA_START
        );
        // Same with SID 0.
        assert_eq!(
            inspect(Codec::Vp9, &[0xa8, 0x81, 0x02, 0x00, 0x00, 0xaa]),
            KEY
        );
    }

    #[test]
    fn h264_keyframes_are_found_in_single_units_stap_a_and_fu_a() {
        // SPS on its own (the keyframe starts there), then the IDR as FU-A start and middle.
        assert_eq!(inspect(Codec::H264, &[0x67, 0x42, 0xc0, 0x1f]), KEY);
        assert_eq!(inspect(Codec::H264, &[0x7c, 0x85, 0x88, 0x84]), KEY);
        assert_eq!(inspect(Codec::H264, &[0x7c, 0x05, 0x12, 0x34]), MIDDLE);
        // STAP-A with SPS, PPS and IDR.
        let stap = [
            0x78, 0x00, 0x04, 0x67, 0x42, 0xc0, 0x1f, 0x00, 0x02, 0x68, 0xce, 0x00, 0x03, 0x65,
            0x88, 0x84,
        ];
        assert_eq!(inspect(Codec::H264, &stap), KEY);
        // A non-IDR slice, first in its picture, single and as FU-A start.
        assert_eq!(inspect(Codec::H264, &[0x41, 0x9a, 0x02]), DELTA_START);
        assert_eq!(inspect(Codec::H264, &[0x5c, 0x81, 0x9a, 0x02]), DELTA_START);
        // A second slice of a picture (first_mb_in_slice > 0): no start.
        assert_eq!(inspect(Codec::H264, &[0x41, 0x1a, 0x02]), MIDDLE);
    }

    #[test]
    fn av1_sequence_starts_are_keyframes() {
        // N set, W = 1, OBU sequence header (type 1).
        assert_eq!(inspect(Codec::Av1, &[0x18, 0x0a, 0x00]), KEY);
        // W = 0: a LEB128 length, then a frame OBU (type 6).
        assert_eq!(inspect(Codec::Av1, &[0x00, 0x02, 0x32, 0x00]), DELTA_START);
        // Z set: continues an OBU from the previous packet.
        assert_eq!(inspect(Codec::Av1, &[0x98, 0x0a, 0x00]), MIDDLE);
    }

    #[test]
    fn audio_packets_each_start_a_frame_and_are_never_keyframes() {
        assert_eq!(inspect(Codec::Opus, &[0xfc, 0xff, 0xfe]), DELTA_START);
        assert_eq!(inspect(Codec::Opus, &[]), DELTA_START);
        assert!(!detects_keyframes(Codec::Opus));
        assert!(detects_keyframes(Codec::Vp8));
    }

    #[test]
    fn h265_keyframes_and_frame_starts() {
        assert!(detects_keyframes(Codec::H265));
        // VPS (type 32), SPS (33): a keyframe starts; PPS (34): a frame starts.
        assert_eq!(inspect(Codec::H265, &[0x40, 0x01, 0x0c]), KEY);
        assert_eq!(inspect(Codec::H265, &[0x42, 0x01, 0x01]), KEY);
        assert_eq!(inspect(Codec::H265, &[0x44, 0x01, 0xc1]), DELTA_START);
        // IDR_W_RADL (19) and CRA (21), first slice segment: keyframes; not first: no start.
        assert_eq!(inspect(Codec::H265, &[0x26, 0x01, 0xaf]), KEY);
        assert_eq!(inspect(Codec::H265, &[0x2a, 0x01, 0x80]), KEY);
        assert_eq!(inspect(Codec::H265, &[0x26, 0x01, 0x2f]), MIDDLE);
        // TRAIL_R (1), first slice segment: a delta frame starts; not first: no start.
        assert_eq!(inspect(Codec::H265, &[0x02, 0x01, 0xd0]), DELTA_START);
        assert_eq!(inspect(Codec::H265, &[0x02, 0x01, 0x50]), MIDDLE);
        // FU (49) of an IDR: S bit set starts a keyframe, otherwise the middle of one.
        assert_eq!(inspect(Codec::H265, &[0x62, 0x01, 0x93, 0xaf]), KEY);
        assert_eq!(inspect(Codec::H265, &[0x62, 0x01, 0x13, 0xaf]), MIDDLE);
        // FU start of a TRAIL_R slice: a delta frame starts.
        assert_eq!(inspect(Codec::H265, &[0x62, 0x01, 0x81, 0xd0]), DELTA_START);
        // AP (48) with VPS, SPS, PPS and an IDR slice.
        let ap = [
            0x60, 0x01, // AP header
            0x00, 0x03, 0x40, 0x01, 0x0c, // VPS
            0x00, 0x03, 0x42, 0x01, 0x01, // SPS
            0x00, 0x03, 0x44, 0x01, 0xc1, // PPS
            0x00, 0x03, 0x26, 0x01, 0xaf, // IDR_W_RADL, first slice
        ];
        assert_eq!(inspect(Codec::H265, &ap), KEY);
        // AP whose first unit is a PPS only: a frame starts, no keyframe.
        assert_eq!(
            inspect(Codec::H265, &[0x60, 0x01, 0x00, 0x03, 0x44, 0x01, 0xc1]),
            DELTA_START
        );
    }

    #[test]
    fn short_and_malformed_payloads_are_neither_and_never_panic() {
        let cases: &[&[u8]] = &[
            &[],
            &[0x90],
            &[0x90, 0x80],
            &[0x90, 0x80, 0x81],
            &[0x90, 0x40, 0x00],
            &[0xff; 3],
        ];
        for payload in cases {
            assert!(!inspect(Codec::Vp8, payload).keyframe, "vp8 {payload:02x?}");
        }
        for payload in [&[][..], &[0x8c], &[0x8c, 0x95], &[0xa8, 0x15], &[0x08]] {
            assert!(!inspect(Codec::Vp9, payload).keyframe, "vp9 {payload:02x?}");
        }
        // STAP-A whose sizes point past the end, FU-A without its FU header, empty slice.
        for payload in [
            &[0x78, 0x00, 0x09, 0x67][..],
            &[0x78, 0xff],
            &[0x7c],
            &[0x65],
            &[0x67][..0],
        ] {
            assert!(
                !inspect(Codec::H264, payload).keyframe,
                "h264 {payload:02x?}"
            );
        }
        for payload in [&[][..], &[0x08], &[0x00, 0x80, 0x80], &[0x00; 1]] {
            assert!(!inspect(Codec::Av1, payload).keyframe, "av1 {payload:02x?}");
        }
        // H.265: an AP whose size points past the end, an FU without its FU header, a slice
        // with no segment header, a lone first byte.
        for payload in [
            &[0x60, 0x01, 0x00, 0x09, 0x40][..],
            &[0x62, 0x01],
            &[0x26, 0x01],
            &[0x40],
        ] {
            assert!(
                !inspect(Codec::H265, payload).keyframe,
                "h265 {payload:02x?}"
            );
        }
        // Every 1..=3-byte payload, for every codec: no panic.
        for codec in [Codec::Vp8, Codec::Vp9, Codec::H264, Codec::H265, Codec::Av1] {
            for a in 0..=255u8 {
                for b in [0x00, 0x07, 0x18, 0x80, 0xff] {
                    let _ = inspect(codec, &[a]);
                    let _ = inspect(codec, &[a, b]);
                    let _ = inspect(codec, &[a, b, 0x00]);
                }
            }
        }
    }
}
