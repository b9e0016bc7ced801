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
//! | [`Stats`] | subscriber | what arrived for `sub` (frames, bytes, frames lost) |
//! | `Ping` / `Pong` | either | liveness and round-trip time; `Pong` echoes the nonce |

use serde::{Deserialize, Serialize};

use crate::codec::Message;
use crate::limits::{
    LimitError, MAX_APP_ID, MAX_FMTP, MAX_MIME, MAX_REASON, MAX_TRACK_NAME, check_len,
};

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
    /// Subscriber → publisher: receive statistics.
    Stats(Stats),
    /// Either side: liveness probe.
    Ping {
        /// Echoed in the `Pong`.
        nonce: u64,
    },
    /// Either side: answer to `Ping`.
    Pong {
        /// The nonce of the `Ping`.
        nonce: u64,
    },
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
    /// The `fmtp` parameters, at most [`MAX_FMTP`] bytes; empty if none.
    #[serde(deserialize_with = "crate::limits::bounded_string::<_, MAX_FMTP>")]
    pub fmtp: String,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureCode {
    /// No such session or track on the publishing node.
    NotFound,
    /// The subscribing node may not pull this track.
    Unauthorized,
    /// The publishing node is at a limit (subscriptions, bandwidth, draining).
    Overloaded,
    /// Anything else.
    Internal,
}

/// Subscriber → publisher: counters for one subscription since it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// The subscription.
    pub sub: SubId,
    /// Frames received whole.
    pub frames: u64,
    /// Payload bytes of those frames.
    pub bytes: u64,
    /// Frames lost (gaps in `frame_seq`, or dropped incomplete by the reassembler).
    pub lost: u64,
}

impl ControlMsg {
    /// The subscription this message is about, if any.
    pub fn sub(&self) -> Option<SubId> {
        match self {
            ControlMsg::Subscribe(s) => Some(s.sub),
            ControlMsg::Stats(s) => Some(s.sub),
            ControlMsg::Subscribed { sub, .. }
            | ControlMsg::SubscribeFailed { sub, .. }
            | ControlMsg::Unsubscribe { sub }
            | ControlMsg::TrackEnded { sub }
            | ControlMsg::KeyframeRequest { sub } => Some(*sub),
            ControlMsg::Ping { .. } | ControlMsg::Pong { .. } => None,
        }
    }
}

impl Message for ControlMsg {
    const TRAILING_BYTES_ALLOWED: bool = false;

    fn validate(&self) -> Result<(), LimitError> {
        match self {
            ControlMsg::Subscribe(s) => {
                check_len("track_name", &s.track_name, MAX_TRACK_NAME)?;
                check_len("app", &s.app, MAX_APP_ID)
            }
            ControlMsg::Subscribed { track, .. } => {
                check_len("mime", &track.codec.mime, MAX_MIME)?;
                check_len("fmtp", &track.codec.fmtp, MAX_FMTP)
            }
            ControlMsg::SubscribeFailed { reason, .. } => check_len("reason", reason, MAX_REASON),
            ControlMsg::Unsubscribe { .. }
            | ControlMsg::TrackEnded { .. }
            | ControlMsg::KeyframeRequest { .. }
            | ControlMsg::Stats(_)
            | ControlMsg::Ping { .. }
            | ControlMsg::Pong { .. } => Ok(()),
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
                fmtp: String::new(),
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
                        fmtp: "minptime=10;useinbandfec=1".into(),
                    },
                },
            },
            ControlMsg::SubscribeFailed {
                sub: 3,
                code: FailureCode::NotFound,
                reason: "no such track".into(),
            },
            ControlMsg::Unsubscribe { sub: u32::MAX },
            ControlMsg::TrackEnded { sub: 0 },
            ControlMsg::KeyframeRequest { sub: 7 },
            ControlMsg::Stats(Stats {
                sub: 7,
                frames: 1,
                bytes: u64::MAX,
                lost: 0,
            }),
            ControlMsg::Ping { nonce: 42 },
            ControlMsg::Pong { nonce: 42 },
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
        });
        let frame = encode_to_vec(&msg).expect("encode");
        let mut want = vec![0, 0, 0, 24, 0, 1];
        want.extend_from_slice(&[0xab; 16]);
        want.extend_from_slice(&[3, b'c', b'a', b'm']);
        want.extend_from_slice(&[1, b'a']);
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
                    fmtp: "f".repeat(MAX_FMTP),
                },
            },
        };
        let frame = encode_to_vec(&at_limit).expect("at the limit is fine");
        assert_eq!(decode_body::<ControlMsg>(&frame[4..]), Ok(at_limit));

        let over = ControlMsg::SubscribeFailed {
            sub: 1,
            code: FailureCode::Internal,
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
    fn sub_accessor() {
        for msg in all_messages() {
            let expect_sub = !matches!(msg, ControlMsg::Ping { .. } | ControlMsg::Pong { .. });
            assert_eq!(msg.sub().is_some(), expect_sub, "{msg:?}");
        }
    }
}
