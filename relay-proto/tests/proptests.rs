//! Property tests of the relay protocol's codecs.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use trackmesh_relay_proto::codec::{FrameDecoder, encode, encode_to_vec};
use trackmesh_relay_proto::control::{
    CodecParams, ControlMsg, FailureCode, LayerSet, LayerState, Layers, MediaKind, Nack, NackFrame,
    SetLayers, Subscribe, TrackInfo,
};
use trackmesh_relay_proto::handshake::{HandshakeMsg, Hello, RefuseReason, Welcome};
use trackmesh_relay_proto::limits::{
    MAX_APP_ID, MAX_LAYERS, MAX_MIME, MAX_NACK_FRAGMENTS, MAX_NACK_FRAMES, MAX_NODE_ID, MAX_REASON,
    MAX_TRACK_NAME,
};
use trackmesh_relay_proto::media::{Fragmenter, Frame, Reassembler, ReassemblerLimits};

/// Strings of at most `max` bytes (any Unicode).
fn bounded(max: usize) -> impl Strategy<Value = String> {
    ".{0,64}".prop_map(move |s: String| {
        let mut end = s.len().min(max);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_string()
    })
}

/// Long strings right at the limit, to exercise the boundary.
fn at_limit(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![bounded(max), Just("x".repeat(max))]
}

fn control_msg() -> impl Strategy<Value = ControlMsg> {
    let codec = (at_limit(MAX_MIME), any::<u32>(), any::<Option<u8>>()).prop_map(
        |(mime, clock_rate, channels)| CodecParams {
            mime,
            clock_rate,
            channels,
        },
    );
    let kind = prop_oneof![Just(MediaKind::Audio), Just(MediaKind::Video)];
    let code = prop_oneof![Just(FailureCode::NotFound), Just(FailureCode::Overloaded),];
    let nack_frame = (any::<u32>(), vec(any::<u16>(), 0..=MAX_NACK_FRAGMENTS)).prop_map(
        |(frame_seq, fragments)| NackFrame {
            frame_seq,
            fragments,
        },
    );
    let rid = "[A-Za-z0-9_-]{1,16}";
    let layer_set = prop_oneof![
        Just(LayerSet::All),
        vec(rid, 0..=MAX_LAYERS).prop_map(LayerSet::Only),
    ];
    let layer_state = (rid, any::<bool>()).prop_map(|(rid, flowing)| LayerState { rid, flowing });
    prop_oneof![
        (
            any::<u32>(),
            any::<[u8; 16]>(),
            at_limit(MAX_TRACK_NAME),
            at_limit(MAX_APP_ID),
            layer_set.clone(),
        )
            .prop_map(|(sub, session_id, track_name, app, layers)| {
                ControlMsg::Subscribe(Subscribe {
                    sub,
                    session_id,
                    track_name,
                    app,
                    layers,
                })
            }),
        (any::<u32>(), rid).prop_map(|(sub, rid)| ControlMsg::LayerKeyframeRequest { sub, rid }),
        (any::<u32>(), layer_set)
            .prop_map(|(sub, layers)| ControlMsg::SetLayers(SetLayers { sub, layers })),
        (any::<u32>(), vec(layer_state, 0..=MAX_LAYERS))
            .prop_map(|(sub, layers)| ControlMsg::Layers(Layers { sub, layers })),
        (any::<u32>(), kind, codec).prop_map(|(sub, kind, codec)| ControlMsg::Subscribed {
            sub,
            track: TrackInfo { kind, codec }
        }),
        (any::<u32>(), code, at_limit(MAX_REASON))
            .prop_map(|(sub, code, reason)| { ControlMsg::SubscribeFailed { sub, code, reason } }),
        any::<u32>().prop_map(|sub| ControlMsg::Unsubscribe { sub }),
        any::<u32>().prop_map(|sub| ControlMsg::TrackEnded { sub }),
        any::<u32>().prop_map(|sub| ControlMsg::KeyframeRequest { sub }),
        (any::<u32>(), vec(nack_frame, 0..=MAX_NACK_FRAMES))
            .prop_map(|(sub, frames)| ControlMsg::Nack(Nack { sub, frames })),
    ]
}

fn handshake_msg() -> impl Strategy<Value = HandshakeMsg> {
    let node_id = "[a-z0-9.:_-]{1,64}";
    prop_oneof![
        (any::<u16>(), any::<[u8; 32]>(), node_id, any::<u32>()).prop_map(
            |(protocol_version, cluster, node_id, node_tag)| HandshakeMsg::Hello(Hello {
                protocol_version,
                cluster,
                node_id,
                node_tag
            })
        ),
        (bounded(MAX_NODE_ID), any::<u32>())
            .prop_map(|(node_id, node_tag)| HandshakeMsg::Welcome(Welcome { node_id, node_tag })),
        (any::<u16>(), any::<u16>()).prop_map(|(min, max)| HandshakeMsg::Refuse {
            reason: RefuseReason::UnsupportedVersion { min, max }
        }),
        Just(HandshakeMsg::Refuse {
            reason: RefuseReason::WrongCluster
        }),
    ]
}

/// Cuts `data` at the given points (indices into it, sorted and deduplicated).
fn split_at_points(data: &[u8], cuts: &[Index]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
    points.sort_unstable();
    points.dedup();
    let mut pieces = Vec::new();
    let mut start = 0;
    for p in points {
        pieces.push(data[start..p].to_vec());
        start = p;
    }
    pieces.push(data[start..].to_vec());
    pieces
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every control message survives encode → decode, whole, byte by byte, and in random splits.
    #[test]
    fn control_messages_round_trip(
        msgs in vec(control_msg(), 1..8),
        cuts in vec(any::<Index>(), 0..12),
    ) {
        let mut stream = Vec::new();
        for m in &msgs {
            encode(m, &mut stream).expect("encode");
        }

        let mut whole = FrameDecoder::<ControlMsg>::new();
        let got: Vec<_> = whole.feed(&stream).collect::<Result<_, _>>().expect("decode");
        prop_assert_eq!(&got, &msgs);

        let mut bytewise = FrameDecoder::<ControlMsg>::new();
        let mut got = Vec::new();
        for b in &stream {
            for m in bytewise.feed(std::slice::from_ref(b)) {
                got.push(m.expect("decode"));
            }
        }
        prop_assert_eq!(&got, &msgs);
        prop_assert_eq!(bytewise.buffered(), 0);

        let mut split = FrameDecoder::<ControlMsg>::new();
        let mut got = Vec::new();
        for piece in split_at_points(&stream, &cuts) {
            for m in split.feed(&piece) {
                got.push(m.expect("decode"));
            }
        }
        prop_assert_eq!(&got, &msgs);
    }

    /// Handshake then control on one stream, split anywhere: decode the handshake, switch.
    #[test]
    fn handshake_then_control_round_trip(
        hs in handshake_msg(),
        msgs in vec(control_msg(), 0..4),
        cuts in vec(any::<Index>(), 0..8),
    ) {
        let mut stream = encode_to_vec(&hs).expect("encode");
        for m in &msgs {
            encode(m, &mut stream).expect("encode");
        }
        let mut hs_dec = Some(FrameDecoder::<HandshakeMsg>::new());
        let mut ctl_dec = None;
        let mut got_hs = None;
        let mut got = Vec::new();
        for piece in split_at_points(&stream, &cuts) {
            let mut rest = &piece[..];
            while !rest.is_empty() {
                if let Some(dec) = hs_dec.as_mut() {
                    let used = dec.push(rest);
                    rest = &rest[used..];
                    if let Some(m) = dec.next() {
                        got_hs = Some(m.expect("handshake"));
                        ctl_dec = hs_dec.take().map(FrameDecoder::switch::<ControlMsg>);
                    }
                } else if let Some(dec) = ctl_dec.as_mut() {
                    for m in dec.feed(rest) {
                        got.push(m.expect("control"));
                    }
                    rest = &[];
                }
            }
        }
        prop_assert_eq!(got_hs, Some(hs));
        prop_assert_eq!(got, msgs);
    }

    /// Arbitrary bytes in arbitrary pieces: no panic, never more than one frame held.
    #[test]
    fn frame_decoder_survives_garbage(
        data in vec(any::<u8>(), 0..2048),
        cuts in vec(any::<Index>(), 0..16),
    ) {
        let mut dec = FrameDecoder::<ControlMsg>::new();
        for piece in split_at_points(&data, &cuts) {
            for m in dec.feed(&piece) {
                let _ = m;
            }
            prop_assert!(dec.buffered() <= 4 + 64 * 1024);
        }
    }
}

/// A random frame: payload sizes from empty to a few keyframe-sized ones.
fn frame_strategy() -> impl Strategy<Value = Frame> {
    (
        0u32..200,
        any::<u32>(),
        any::<u64>(),
        any::<bool>(),
        prop_oneof![
            vec(any::<u8>(), 0..64),
            vec(any::<u8>(), 0..4000),
            vec(any::<u8>(), 10_000..40_000),
        ],
    )
        .prop_map(|(sub, frame_seq, rtp_time, keyframe, payload)| Frame {
            sub,
            frame_seq,
            rtp_time,
            keyframe,
            payload,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// fragment → reassemble is the identity, whatever the datagram size.
    #[test]
    fn fragments_reassemble_to_the_frame(frame in frame_strategy(), mtu in 40usize..1500) {
        let mut r = Reassembler::default();
        let now = Instant::now();
        let mut out = Vec::new();
        for d in Fragmenter::fragments(&frame, mtu).expect("fragment") {
            prop_assert!(d.len() <= mtu);
            out.extend(r.push(&d, now));
        }
        prop_assert_eq!(out, vec![frame]);
        prop_assert_eq!(r.buffered_bytes(), 0);
    }

    /// Many frames of several subscriptions, fragments shuffled, some duplicated, some dropped:
    /// every frame that lost nothing comes out exactly once and intact; every frame that lost
    /// some (not all) fragments is counted as dropped and never comes out.
    #[test]
    fn reordered_duplicated_and_lossy_delivery(
        specs in vec((0u32..3, vec(any::<u8>(), 0..6000), any::<bool>()), 1..16),
        mtu in 200usize..1300,
        shuffle_seed in any::<u64>(),
        dup_every in 2usize..9,
        drop_mask in vec(any::<bool>(), 16),
        drop_pick in any::<Index>(),
    ) {
        // Frame numbers per subscription, in order; at most 8 in flight per subscription.
        let mut next_seq = [1000u32, 0, u32::MAX - 3];
        let frames: Vec<Frame> = specs
            .into_iter()
            .map(|(sub, payload, keyframe)| {
                let seq = next_seq[sub as usize];
                next_seq[sub as usize] = seq.wrapping_add(1);
                Frame { sub, frame_seq: seq, rtp_time: u64::from(seq) * 3000, keyframe, payload }
            })
            .collect();

        let mut datagrams = Vec::new();
        let mut lossy = BTreeSet::new();
        for (i, f) in frames.iter().enumerate() {
            let d: Vec<_> = Fragmenter::fragments(f, mtu).expect("fragment").collect();
            // Drop one fragment of chosen multi-fragment frames (never all of them).
            let dropped = if drop_mask[i] && d.len() > 1 { Some(drop_pick.index(d.len())) } else { None };
            if dropped.is_some() {
                lossy.insert((f.sub, f.frame_seq));
            }
            for (j, x) in d.into_iter().enumerate() {
                if Some(j) != dropped {
                    datagrams.push(x);
                }
            }
        }
        // Duplicate some datagrams, then shuffle deterministically (Fisher-Yates, xorshift).
        let dups: Vec<_> = datagrams.iter().step_by(dup_every).cloned().collect();
        datagrams.extend(dups);
        let mut s = shuffle_seed | 1;
        for i in (1..datagrams.len()).rev() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            datagrams.swap(i, (s % (i as u64 + 1)) as usize);
        }

        let limits = ReassemblerLimits { max_frames_in_flight: 16, ..ReassemblerLimits::default() };
        let mut r = Reassembler::new(limits);
        let t0 = Instant::now();
        let mut out = Vec::new();
        for d in &datagrams {
            out.extend(r.push(d, t0));
        }
        prop_assert_eq!(r.poll_expired(t0 + Duration::from_secs(1)), lossy.len());

        let mut want: Vec<Frame> = frames
            .into_iter()
            .filter(|f| !lossy.contains(&(f.sub, f.frame_seq)))
            .collect();
        let key = |f: &Frame| (f.sub, f.frame_seq);
        want.sort_by_key(key);
        out.sort_by_key(key);
        prop_assert_eq!(out, want);
        let s = r.stats();
        prop_assert_eq!(s.frames_dropped() as usize, lossy.len());
        prop_assert_eq!(s.frames_timed_out as usize, lossy.len());
        prop_assert_eq!(r.buffered_bytes(), 0);
    }

    /// Arbitrary datagrams never panic the reassembler nor break its budget.
    #[test]
    fn reassembler_survives_garbage(datagrams in vec(vec(any::<u8>(), 0..80), 0..200)) {
        let limits = ReassemblerLimits { max_buffered_bytes: 32 * 1024, ..ReassemblerLimits::default() };
        let mut r = Reassembler::new(limits);
        let t0 = Instant::now();
        for (i, d) in datagrams.iter().enumerate() {
            let _ = r.push(d, t0 + Duration::from_millis(i as u64));
            prop_assert!(r.buffered_bytes() <= 32 * 1024);
        }
    }
}
