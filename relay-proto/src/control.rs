//! Control messages, sent in frames ([`crate::codec`]) on the control stream after the handshake.
//!
//! A *subscription* is one remote track pulled over a relay connection. The subscribing node picks
//! its id (`sub`), unique among its live subscriptions on that connection; every later message
//! about it, and every media datagram of it ([`crate::media`]), carries that id instead of the
//! full `(session, track)` key.
//!
//! | message | sent by | meaning |
//! |---|---|---|
//! | [`Subscribe`] | subscriber | start forwarding `(session_id, track_name)` as `sub` |
//! | `Subscribed` | publisher | the track exists; media for `sub` follows as datagrams |
//! | `SubscribeFailed` | publisher | it does not (or may not); `sub` is free again |
//! | `Unsubscribe` | subscriber | stop forwarding `sub`; `sub` is free once sent |
//! | `TrackEnded` | publisher | the track is gone; `sub` is free again |
//! | `KeyframeRequest` | subscriber | a downstream receiver needs a keyframe |
//! | [`Nack`] | subscriber | frames (or fragments of them) of `sub` that never arrived: send again |
//! | [`SetLayers`] | subscriber | forward only these simulcast layers of `sub` from now on |
//! | [`Layers`] | publisher | the track's simulcast layers at the origin, and which of them flow |
//! | `LayerKeyframeRequest` | subscriber | a downstream receiver needs a keyframe of one layer |
//!
//! A simulcast track's layers are relayed each on its own: a `Subscribe` names the layers it
//! wants ([`LayerSet`], all of them before the subscribing node knows better), `SetLayers`
//! changes that, and the publisher sends `Layers` once the subscription is live and whenever a
//! layer appears, stops or resumes, so the subscribing node can choose (and fall back) among
//! layers it does not receive.
//!
//! Liveness and round-trip time come from QUIC itself (keep-alives, idle timeout,
//! `Connection::rtt`), so the protocol has no ping of its own.

use serde::{Deserialize, Serialize};

use crate::codec::Message;
use crate::limits::{
    LimitError, MAX_APP_ID, MAX_LAYERS, MAX_MIME, MAX_NACK_FRAGMENTS, MAX_NACK_FRAMES, MAX_REASON,
    MAX_TRACK_NAME, check_count, check_len,
};
use crate::media::{MAX_RID_LEN, is_valid_rid};

/// A subscription id, chosen by the subscribing node.
pub type SubId = u32;

/// Every control message. The variant order is part of the wire format (bincode writes the
/// variant index): append new variants only, with a protocol version bump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlMsg {
    /// Subscriber → publisher: forward a track.
    Subscribe(Subscribe),
    /// Publisher → subscriber: the subscription is live.
    Subscribed {
        /// The subscription.
        sub: SubId,
        /// What the track carries.
        track: TrackInfo,
    },
    /// Publisher → subscriber: the subscription was refused.
    SubscribeFailed {
        /// The subscription.
        sub: SubId,
        /// Machine-readable cause.
        code: FailureCode,
        /// Human-readable detail, at most [`MAX_REASON`] bytes.
        #[serde(deserialize_with = "crate::limits::bounded_string::<_, MAX_REASON>")]
        reason: String,
    },
    /// Subscriber → publisher: stop forwarding.
    Unsubscribe {
        /// The subscription.
        sub: SubId,
    },
    /// Publisher → subscriber: the track ended (its publisher left or closed it).
    TrackEnded {
        /// The subscription.
        sub: SubId,
    },
    /// Subscriber → publisher: please make the origin send a keyframe.
    KeyframeRequest {
        /// The subscription.
        sub: SubId,
    },
    /// Subscriber → publisher: send these frames (or fragments) of `sub` again (protocol 3).
    Nack(Nack),
    /// Subscriber → publisher: forward only these layers of `sub` (protocol 4).
    SetLayers(SetLayers),
    /// Publisher → subscriber: the track's layers and which flow at the origin (protocol 4).
    Layers(Layers),
    /// Subscriber → publisher: please make the origin send a keyframe of this layer (protocol
    /// 4; `KeyframeRequest` asks for every layer the subscription carries).
    LayerKeyframeRequest {
        /// The subscription.
        sub: SubId,
        /// The layer, a valid rid (see [`is_valid_rid`]).
        rid: String,
    },
}

/// Which simulcast layers of a track a subscription carries.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum LayerSet {
    /// Every layer (and an unlayered track's frames): what a subscription carries until the
    /// subscribing node knows which layers its viewers use.
    #[default]
    All,
    /// Only frames of these rids, at most [`MAX_LAYERS`], each a valid rid (see
    /// [`is_valid_rid`]). Unlayered frames are always forwarded.
    Only(Vec<String>),
}

impl LayerSet {
    /// Whether a frame of `rid` (`None`: an unlayered frame) is carried.
    pub fn carries(&self, rid: Option<&str>) -> bool {
        match (self, rid) {
            (LayerSet::All, _) | (_, None) => true,
            (LayerSet::Only(rids), Some(rid)) => rids.iter().any(|r| r == rid),
        }
    }

    fn validate(&self) -> Result<(), LimitError> {
        match self {
            LayerSet::All => Ok(()),
            LayerSet::Only(rids) => {
                check_count("rids", rids.len(), MAX_LAYERS)?;
                rids.iter().try_for_each(|r| check_rid(r))
            }
        }
    }
}

/// A rid on the wire: 1 to [`MAX_RID_LEN`] bytes of `[A-Za-z0-9_-]`. Other characters are
/// refused as the length limit is, so a malformed rid never reaches a layer table.
fn check_rid(rid: &str) -> Result<(), LimitError> {
    if is_valid_rid(rid) {
        Ok(())
    } else {
        Err(LimitError {
            field: "rid",
            len: rid.len(),
            max: MAX_RID_LEN,
        })
    }
}

/// Subscriber → publisher: from now on forward only `layers` of `sub` (the subscribing node's
/// viewers moved between layers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetLayers {
    /// The subscription.
    pub sub: SubId,
    /// The layers wanted.
    pub layers: LayerSet,
}

/// Publisher → subscriber: the layers the track has at the origin, in ASCII order of their
/// rids, at most [`MAX_LAYERS`]. Empty for an unlayered track (none is sent for one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layers {
    /// The subscription.
    pub sub: SubId,
    /// Each layer and whether it is flowing at the origin (frames lately, not paused).
    pub layers: Vec<LayerState>,
}

/// One layer of a [`Layers`] message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerState {
    /// Its rid.
    pub rid: String,
    /// Whether it is flowing at the origin.
    pub flowing: bool,
}

/// Subscriber → publisher: forward the track `track_name` of session `session_id` as `sub`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// Id for this subscription, chosen by the sender.
    pub sub: SubId,
    /// The Calls session id (32 hex characters) as 16 bytes.
    pub session_id: [u8; 16],
    /// The Calls track name, at most [`MAX_TRACK_NAME`] bytes.
    #[serde(deserialize_with = "crate::limits::bounded_string::<_, MAX_TRACK_NAME>")]
    pub track_name: String,
    /// The Calls app the session belongs to: a node serves a track only to pulls of the same
    /// app, at most [`MAX_APP_ID`] bytes.
    #[serde(deserialize_with = "crate::limits::bounded_string::<_, MAX_APP_ID>")]
    pub app: String,
    /// The layers to forward (protocol 4); [`SetLayers`] changes them later.
    pub layers: LayerSet,
}

/// Audio or video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MediaKind {
    /// An audio track.
    Audio,
    /// A video track.
    Video,
}

/// The track a subscription carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    /// Audio or video.
    pub kind: MediaKind,
    /// The codec of its frames.
    pub codec: CodecParams,
}

/// Codec parameters, as negotiated with the publishing client (SDP `rtpmap` and `fmtp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodecParams {
    /// MIME type, e.g. `video/VP8`, `audio/opus`; at most [`MAX_MIME`] bytes.
    #[serde(deserialize_with = "crate::limits::bounded_string::<_, MAX_MIME>")]
    pub mime: String,
    /// RTP clock rate in Hz (90000 for video, 48000 for Opus).
    pub clock_rate: u32,
    /// Audio channels, if the codec says.
    pub channels: Option<u8>,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureCode {
    /// No such session or track on the publishing node (or not for this app).
    NotFound,
    /// The publishing node is at a limit (subscriptions per link).
    Overloaded,
}

/// Subscriber → publisher: frames of `sub` that did not arrive, to be sent again from the
/// publisher's cache of recently sent frames. At most [`MAX_NACK_FRAMES`] frames; seqs the
/// publisher no longer holds are ignored (the subscriber then gives up and asks for a keyframe).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    /// The subscription.
    pub sub: SubId,
    /// The missing frames, oldest first.
    pub frames: Vec<NackFrame>,
}

/// One frame a [`Nack`] asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NackFrame {
    /// The frame's `frame_seq`.
    pub frame_seq: u32,
    /// The fragment indexes missing, at most [`MAX_NACK_FRAGMENTS`]; empty: the whole frame.
    pub fragments: Vec<u16>,
}

impl ControlMsg {
    /// The subscription this message is about (every control message is about one).
    pub fn sub(&self) -> SubId {
        match self {
            ControlMsg::Subscribe(s) => s.sub,
            ControlMsg::Nack(n) => n.sub,
            ControlMsg::SetLayers(s) => s.sub,
            ControlMsg::Layers(l) => l.sub,
            ControlMsg::LayerKeyframeRequest { sub, .. } => *sub,
            ControlMsg::Subscribed { sub, .. }
            | ControlMsg::SubscribeFailed { sub, .. }
            | ControlMsg::Unsubscribe { sub }
            | ControlMsg::TrackEnded { sub }
            | ControlMsg::KeyframeRequest { sub } => *sub,
        }
    }
}

impl Message for ControlMsg {
    const TRAILING_BYTES_ALLOWED: bool = false;

    fn validate(&self) -> Result<(), LimitError> {
        match self {
            ControlMsg::Subscribe(s) => {
                check_len("track_name", &s.track_name, MAX_TRACK_NAME)?;
                check_len("app", &s.app, MAX_APP_ID)?;
                s.layers.validate()
            }
            ControlMsg::SetLayers(s) => s.layers.validate(),
            ControlMsg::Layers(l) => {
                check_count("layers", l.layers.len(), MAX_LAYERS)?;
                l.layers.iter().try_for_each(|l| check_rid(&l.rid))
            }
            ControlMsg::LayerKeyframeRequest { rid, .. } => check_rid(rid),
            ControlMsg::Subscribed { track, .. } => check_len("mime", &track.codec.mime, MAX_MIME),
            ControlMsg::SubscribeFailed { reason, .. } => check_len("reason", reason, MAX_REASON),
            ControlMsg::Nack(n) => {
                check_count("frames", n.frames.len(), MAX_NACK_FRAMES)?;
                n.frames.iter().try_for_each(|f| {
                    check_count("fragments", f.fragments.len(), MAX_NACK_FRAGMENTS)
                })
            }
            ControlMsg::Unsubscribe { .. }
            | ControlMsg::TrackEnded { .. }
            | ControlMsg::KeyframeRequest { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{DecodeError, EncodeError, FrameDecoder, decode_body, encode_to_vec};

    fn vp8() -> TrackInfo {
        TrackInfo {
            kind: MediaKind::Video,
            codec: CodecParams {
                mime: "video/VP8".into(),
                clock_rate: 90_000,
                channels: None,
            },
        }
    }

    fn all_messages() -> Vec<ControlMsg> {
        vec![
            ControlMsg::Subscribe(Subscribe {
                sub: 1,
                session_id: [0xab; 16],
                track_name: "camera".into(),
                app: "app-1".into(),
                layers: LayerSet::All,
            }),
            ControlMsg::Subscribe(Subscribe {
                sub: 2,
                session_id: [0xcd; 16],
                track_name: "camera".into(),
                app: "app-1".into(),
                layers: LayerSet::Only(vec!["q".into()]),
            }),
            ControlMsg::Subscribed {
                sub: 1,
                track: vp8(),
            },
            ControlMsg::Subscribed {
                sub: 2,
                track: TrackInfo {
                    kind: MediaKind::Audio,
                    codec: CodecParams {
                        mime: "audio/opus".into(),
                        clock_rate: 48_000,
                        channels: Some(2),
                    },
                },
            },
            ControlMsg::SubscribeFailed {
                sub: 3,
                code: FailureCode::NotFound,
                reason: "no such track".into(),
            },
            ControlMsg::SubscribeFailed {
                sub: 4,
                code: FailureCode::Overloaded,
                reason: String::new(),
            },
            ControlMsg::Unsubscribe { sub: u32::MAX },
            ControlMsg::TrackEnded { sub: 0 },
            ControlMsg::KeyframeRequest { sub: 7 },
            ControlMsg::Nack(Nack {
                sub: 7,
                frames: vec![
                    NackFrame {
                        frame_seq: u32::MAX,
                        fragments: Vec::new(),
                    },
                    NackFrame {
                        frame_seq: 0,
                        fragments: vec![0, 3, u16::MAX],
                    },
                ],
            }),
            ControlMsg::SetLayers(SetLayers {
                sub: 8,
                layers: LayerSet::Only(vec!["f".into(), "h".into(), "q".into()]),
            }),
            ControlMsg::SetLayers(SetLayers {
                sub: 9,
                layers: LayerSet::All,
            }),
            ControlMsg::SetLayers(SetLayers {
                sub: 10,
                layers: LayerSet::Only(Vec::new()),
            }),
            ControlMsg::Layers(Layers {
                sub: 11,
                layers: vec![
                    LayerState {
                        rid: "f".into(),
                        flowing: false,
                    },
                    LayerState {
                        rid: "q".repeat(MAX_RID_LEN),
                        flowing: true,
                    },
                ],
            }),
            ControlMsg::LayerKeyframeRequest {
                sub: 12,
                rid: "h".into(),
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        let mut stream = Vec::new();
        for msg in all_messages() {
            let frame = encode_to_vec(&msg).expect("encode");
            assert_eq!(decode_body::<ControlMsg>(&frame[4..]).expect("decode"), msg);
            stream.extend_from_slice(&frame);
        }
        let mut dec = FrameDecoder::<ControlMsg>::new();
        let got: Vec<_> = dec.feed(&stream).collect::<Result<_, _>>().expect("decode");
        assert_eq!(got, all_messages());
    }

    #[test]
    fn subscribe_wire_bytes() {
        let msg = ControlMsg::Subscribe(Subscribe {
            sub: 1,
            session_id: [0xab; 16],
            track_name: "cam".into(),
            app: "a".into(),
            layers: LayerSet::Only(vec!["q".into()]),
        });
        let frame = encode_to_vec(&msg).expect("encode");
        let mut want = vec![0, 0, 0, 28, 0, 1];
        want.extend_from_slice(&[0xab; 16]);
        want.extend_from_slice(&[3, b'c', b'a', b'm']);
        want.extend_from_slice(&[1, b'a']);
        // `LayerSet::Only`, one rid of one byte.
        want.extend_from_slice(&[1, 1, 1, b'q']);
        assert_eq!(frame, want);
    }

    #[test]
    fn string_limits_are_exact() {
        let at_limit = ControlMsg::Subscribed {
            sub: 1,
            track: TrackInfo {
                kind: MediaKind::Video,
                codec: CodecParams {
                    mime: "m".repeat(MAX_MIME),
                    clock_rate: 90_000,
                    channels: None,
                },
            },
        };
        let frame = encode_to_vec(&at_limit).expect("at the limit is fine");
        assert_eq!(decode_body::<ControlMsg>(&frame[4..]), Ok(at_limit));

        let over = ControlMsg::SubscribeFailed {
            sub: 1,
            code: FailureCode::NotFound,
            reason: "r".repeat(MAX_REASON + 1),
        };
        assert!(matches!(encode_to_vec(&over), Err(EncodeError::Limit(_))));
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        // Subscribe, sub 1, session id, track name of 2 bytes that are not UTF-8.
        let mut body = vec![0u8, 1];
        body.extend_from_slice(&[0; 16]);
        body.extend_from_slice(&[2, 0xff, 0xfe]);
        assert!(matches!(
            decode_body::<ControlMsg>(&body),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn nack_lengths_are_bounded() {
        let frame = |n: usize| NackFrame {
            frame_seq: 1,
            fragments: (0..n as u16).collect(),
        };
        let at_limit = ControlMsg::Nack(Nack {
            sub: 1,
            frames: (0..MAX_NACK_FRAMES)
                .map(|_| frame(MAX_NACK_FRAGMENTS))
                .collect(),
        });
        let bytes = encode_to_vec(&at_limit).expect("at the limit is fine");
        assert_eq!(decode_body::<ControlMsg>(&bytes[4..]), Ok(at_limit));
        for over in [
            Nack {
                sub: 1,
                frames: (0..=MAX_NACK_FRAMES).map(|_| frame(0)).collect(),
            },
            Nack {
                sub: 1,
                frames: vec![frame(MAX_NACK_FRAGMENTS + 1)],
            },
        ] {
            let msg = ControlMsg::Nack(over);
            assert!(matches!(encode_to_vec(&msg), Err(EncodeError::Limit(_))));
            // A peer that sends one anyway: the decoder refuses it rather than act on it.
            let mut body = Vec::new();
            bincode::serde::encode_into_std_write(&msg, &mut body, bincode::config::standard())
                .expect("raw encode");
            assert!(matches!(
                decode_body::<ControlMsg>(&body),
                Err(DecodeError::Limit(_))
            ));
        }
    }

    #[test]
    fn removed_and_unknown_messages_are_malformed_not_misread() {
        // Variant 10 was never used (7 was protocol 2's `Ping`, now `SetLayers`), nor was 200.
        // Either is refused as malformed (the link then ends), never read as another message.
        for variant in [10u8, 11, 200] {
            let body = [variant, 42];
            assert!(
                matches!(
                    decode_body::<ControlMsg>(&body),
                    Err(DecodeError::Malformed(_))
                ),
                "variant {variant}"
            );
        }
    }

    #[test]
    fn sub_accessor() {
        let subs: Vec<SubId> = all_messages().iter().map(ControlMsg::sub).collect();
        assert_eq!(
            subs,
            vec![1, 2, 1, 2, 3, 4, u32::MAX, 0, 7, 7, 8, 9, 10, 11, 12]
        );
    }

    /// Encodes `msg` without the encoder's checks, as a hostile or buggy peer could.
    fn raw(msg: &ControlMsg) -> Vec<u8> {
        let mut body = Vec::new();
        bincode::serde::encode_into_std_write(msg, &mut body, bincode::config::standard())
            .expect("raw encode");
        body
    }

    #[test]
    fn layer_lists_are_bounded_and_rids_checked() {
        let rids = |n: usize| (0..n).map(|i| format!("r{i}")).collect::<Vec<_>>();
        let at_limit = ControlMsg::SetLayers(SetLayers {
            sub: 1,
            layers: LayerSet::Only(rids(MAX_LAYERS)),
        });
        let bytes = encode_to_vec(&at_limit).expect("at the limit is fine");
        assert_eq!(decode_body::<ControlMsg>(&bytes[4..]), Ok(at_limit));
        let state = |rid: &str| LayerState {
            rid: rid.into(),
            flowing: true,
        };
        let over = [
            ControlMsg::SetLayers(SetLayers {
                sub: 1,
                layers: LayerSet::Only(rids(MAX_LAYERS + 1)),
            }),
            ControlMsg::SetLayers(SetLayers {
                sub: 1,
                layers: LayerSet::Only(vec!["q".repeat(MAX_RID_LEN + 1)]),
            }),
            ControlMsg::SetLayers(SetLayers {
                sub: 1,
                layers: LayerSet::Only(vec!["q h".into()]),
            }),
            ControlMsg::SetLayers(SetLayers {
                sub: 1,
                layers: LayerSet::Only(vec![String::new()]),
            }),
            ControlMsg::Subscribe(Subscribe {
                sub: 1,
                session_id: [0; 16],
                track_name: "t".into(),
                app: "a".into(),
                layers: LayerSet::Only(rids(MAX_LAYERS + 1)),
            }),
            ControlMsg::Layers(Layers {
                sub: 1,
                layers: rids(MAX_LAYERS + 1).iter().map(|r| state(r)).collect(),
            }),
            ControlMsg::Layers(Layers {
                sub: 1,
                layers: vec![state("é")],
            }),
            ControlMsg::LayerKeyframeRequest {
                sub: 1,
                rid: String::new(),
            },
            ControlMsg::LayerKeyframeRequest {
                sub: 1,
                rid: "h".repeat(MAX_RID_LEN + 1),
            },
        ];
        for msg in over {
            assert!(
                matches!(encode_to_vec(&msg), Err(EncodeError::Limit(_))),
                "{msg:?}"
            );
            // A peer that sends one anyway: the decoder refuses it rather than act on it.
            assert!(
                matches!(
                    decode_body::<ControlMsg>(&raw(&msg)),
                    Err(DecodeError::Limit(_))
                ),
                "{msg:?}"
            );
        }
    }

    #[test]
    fn truncated_layer_messages_are_malformed() {
        let msg = ControlMsg::Layers(Layers {
            sub: 3,
            layers: vec![LayerState {
                rid: "h".into(),
                flowing: true,
            }],
        });
        let body = raw(&msg);
        for cut in 1..body.len() {
            assert!(
                decode_body::<ControlMsg>(&body[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        // A flag byte other than 0 or 1 is not a bool.
        let mut bad = body.clone();
        if let Some(last) = bad.last_mut() {
            *last = 2;
        }
        assert!(decode_body::<ControlMsg>(&bad).is_err());
    }

    #[test]
    fn layer_set_carries() {
        assert!(LayerSet::All.carries(Some("f")));
        assert!(LayerSet::All.carries(None));
        let q = LayerSet::Only(vec!["q".into()]);
        assert!(q.carries(Some("q")));
        assert!(!q.carries(Some("f")));
        assert!(q.carries(None), "unlayered frames always go");
        assert!(!LayerSet::Only(Vec::new()).carries(Some("q")));
    }
}
