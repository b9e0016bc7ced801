//! The messages of `/v1/ws`, JSON objects named by their `type`, and the close reasons: every
//! error closes the socket with a 4xxx code and a reason named as in the table of
//! `docs/websocket.md`.

use serde::{Deserialize, Serialize};

use crate::rooms::Role;

/// Largest text message taken, in bytes: an SDP answer (at most 256 KiB, as the Calls API bounds
/// it) in JSON. Larger messages close the socket.
pub const MAX_MESSAGE_BYTES: usize = 300 * 1024;

/// A codec preference (`{"codec_type": "VP8", "bit_rate": 1500}`), or `false` for none.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum MediaPref {
    /// `true`/`false`: with the default codec, or without this kind.
    On(bool),
    /// A codec and a maximum bitrate in kbit/s.
    Codec {
        /// `OPUS` for audio; `VP8`, `VP9`, `H264` or `AV1` for video.
        #[serde(default)]
        codec_type: Option<String>,
        /// Maximum bitrate, kbit/s (advisory).
        #[serde(default)]
        bit_rate: Option<u32>,
    },
}

impl MediaPref {
    /// Whether this kind is wanted at all.
    pub fn wanted(&self) -> bool {
        !matches!(self, MediaPref::On(false))
    }

    /// The codec named, upper-cased.
    pub fn codec(&self) -> Option<String> {
        match self {
            MediaPref::Codec {
                codec_type: Some(c),
                ..
            } => Some(c.to_ascii_uppercase()),
            _ => None,
        }
    }
}

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ClientMsg {
    /// The first message: a ticket and a role.
    Connect {
        /// The ticket's `access_token`.
        token: String,
        /// What the participant does in the room.
        role: Role,
        /// The room the client means to join; refused when the ticket is for another one.
        #[serde(default)]
        room: Option<String>,
        /// The client's id; `DUPLICATED-CLIENT` when one of that id is connected here.
        #[serde(default)]
        client_id: Option<String>,
        /// Audio preference (default on).
        #[serde(default)]
        audio: Option<MediaPref>,
        /// Video preference (default on).
        #[serde(default)]
        video: Option<MediaPref>,
        /// Send `update` offers as the room's tracks come and go.
        #[serde(default)]
        multistream: Option<bool>,
    },
    /// The answer to the server's `offer`.
    Answer {
        /// SDP answer.
        sdp: String,
    },
    /// A trickled ICE candidate (the node is ICE-lite and learns addresses from checks; kept
    /// for compatibility).
    Candidate {
        /// `candidate:` line.
        #[serde(default)]
        candidate: Option<String>,
        /// Its section.
        #[serde(default, rename = "sdpMid")]
        sdp_mid: Option<String>,
        /// Its section's index.
        #[serde(default, rename = "sdpMLineIndex")]
        sdp_mline_index: Option<u32>,
    },
    /// The answer to a `ping`.
    Pong,
    /// The answer to a server `update` offer.
    Update {
        /// SDP answer.
        sdp: String,
    },
    /// Leave the room.
    Disconnect,
}

/// An ICE server as browsers take it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServer {
    /// `stun:`/`turn:` URLs.
    pub urls: Vec<String>,
    /// TURN username.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN credential.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The `config` of an `offer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OfferConfig {
    /// For `RTCPeerConnection`'s configuration.
    #[serde(rename = "iceServers")]
    pub ice_servers: Vec<IceServer>,
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMsg {
    /// The server's offer after `connect`.
    Offer {
        /// SDP offer.
        sdp: String,
        /// The participant's id in the room.
        client_id: String,
        /// Calls session id underneath (pull its tracks with the Calls API).
        session_id: String,
        /// ICE servers.
        config: OfferConfig,
    },
    /// A new offer (multistream): the room's tracks changed.
    Update {
        /// SDP offer.
        sdp: String,
    },
    /// Liveness check; answer with `pong`.
    Ping,
}

/// Why the server closes a socket: its 4xxx code and the reason text sent with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// No `connect` in time.
    ConnectWaitTimeout,
    /// No `answer` (or `update` answer) in time.
    AnswerTimeout,
    /// No `pong` in time.
    PongTimeout,
    /// The ticket does not verify (signature, kind, app, malformed, already used).
    InvalidToken,
    /// The ticket expired.
    ExpiredToken,
    /// The ticket does not admit this room or role, the room is gone, or the permission hook
    /// said no (or did not answer).
    AuthenticationFailure,
    /// The room holds its participants.
    ExceedMaxConnections,
    /// A client of that id is connected.
    DuplicatedClient,
    /// A message is not JSON of a known type (or comes out of turn).
    JsonDecode,
    /// An SDP that does not parse or does not fit the offer.
    SdpParse,
    /// A codec the node does not forward.
    UnknownCodec,
    /// Over the size or rate bound.
    MessageLimit,
    /// The room was deleted, or the node is shutting down.
    RoomClosed,
    /// The participant's media session ended under it: its transport was lost for longer than
    /// the reconnect grace, or the client closed its peer connection.
    SessionEnded,
    /// Something failed on the node.
    InternalError,
}

impl CloseReason {
    /// The close code.
    pub fn code(self) -> u16 {
        match self {
            CloseReason::ConnectWaitTimeout => 4001,
            CloseReason::AnswerTimeout => 4002,
            CloseReason::PongTimeout => 4003,
            CloseReason::InvalidToken => 4101,
            CloseReason::ExpiredToken => 4102,
            CloseReason::AuthenticationFailure => 4103,
            CloseReason::ExceedMaxConnections => 4201,
            CloseReason::DuplicatedClient => 4301,
            CloseReason::JsonDecode => 4401,
            CloseReason::SdpParse => 4402,
            CloseReason::UnknownCodec => 4403,
            CloseReason::MessageLimit => 4404,
            CloseReason::RoomClosed => 4501,
            CloseReason::SessionEnded => 4502,
            CloseReason::InternalError => 4500,
        }
    }

    /// The reason text.
    pub fn reason(self) -> &'static str {
        match self {
            CloseReason::ConnectWaitTimeout => "CONNECT-WAIT-TIMEOUT",
            CloseReason::AnswerTimeout => "ANSWER-TIMEOUT-ERROR",
            CloseReason::PongTimeout => "PONG-TIMEOUT-ERROR",
            CloseReason::InvalidToken => "INVALID-TOKEN",
            CloseReason::ExpiredToken => "EXPIRED-TOKEN",
            CloseReason::AuthenticationFailure => "AUTHENTICATION-FAILURE",
            CloseReason::ExceedMaxConnections => "EXCEED-MAX-CONNECTIONS",
            CloseReason::DuplicatedClient => "DUPLICATED-CLIENT",
            CloseReason::JsonDecode => "FAILURE-JSON-DECODE",
            CloseReason::SdpParse => "FAILURE-SDP-PARSE",
            CloseReason::UnknownCodec => "UNKNOWN-CODEC-TYPE",
            CloseReason::MessageLimit => "EXCEED-MESSAGE-LIMIT",
            CloseReason::RoomClosed => "ROOM-CLOSED",
            CloseReason::SessionEnded => "SESSION-ENDED",
            CloseReason::InternalError => "INTERNAL-ERROR",
        }
    }
}

/// Reads a client message; anything that is not one is `FAILURE-JSON-DECODE`.
pub fn decode(text: &str) -> Result<ClientMsg, CloseReason> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(CloseReason::MessageLimit);
    }
    serde_json::from_str(text).map_err(|_| CloseReason::JsonDecode)
}

/// Audio codecs the node forwards.
pub const AUDIO_CODECS: [&str; 1] = ["OPUS"];
/// Video codecs the node forwards.
pub const VIDEO_CODECS: [&str; 4] = ["VP8", "VP9", "H264", "AV1"];

/// Checks the codec preferences of a `connect`.
pub fn check_codecs(
    audio: Option<&MediaPref>,
    video: Option<&MediaPref>,
) -> Result<(), CloseReason> {
    if audio
        .and_then(MediaPref::codec)
        .is_some_and(|c| !AUDIO_CODECS.contains(&c.as_str()))
        || video
            .and_then(MediaPref::codec)
            .is_some_and(|c| !VIDEO_CODECS.contains(&c.as_str()))
    {
        return Err(CloseReason::UnknownCodec);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_decode_by_type() {
        assert_eq!(decode(r#"{"type":"pong"}"#), Ok(ClientMsg::Pong));
        match decode(
            r#"{"type":"connect","token":"t","role":"sendrecv","multistream":true,
                "video":{"codec_type":"vp8","bit_rate":900},"audio":false}"#,
        ) {
            Ok(ClientMsg::Connect {
                role,
                video,
                audio,
                multistream,
                ..
            }) => {
                assert_eq!(role, Role::Sendrecv);
                assert_eq!(multistream, Some(true));
                assert!(!audio.expect("audio").wanted());
                assert_eq!(video.expect("video").codec().as_deref(), Some("VP8"));
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            "{",
            "[]",
            r#"{"type":"nope"}"#,
            r#"{"type":"answer"}"#,
            "null",
        ] {
            assert_eq!(decode(bad), Err(CloseReason::JsonDecode), "{bad}");
        }
        assert_eq!(
            decode(&" ".repeat(MAX_MESSAGE_BYTES + 1)),
            Err(CloseReason::MessageLimit)
        );
    }

    #[test]
    fn server_messages_and_codes() {
        let ping = serde_json::to_string(&ServerMsg::Ping).expect("json");
        assert_eq!(ping, r#"{"type":"ping"}"#);
        assert_eq!(CloseReason::PongTimeout.code(), 4003);
        assert_eq!(CloseReason::JsonDecode.reason(), "FAILURE-JSON-DECODE");
        let h264 = MediaPref::Codec {
            codec_type: Some("H264".into()),
            bit_rate: None,
        };
        assert_eq!(check_codecs(None, Some(&h264)), Ok(()));
        let bad = MediaPref::Codec {
            codec_type: Some("MPEG2".into()),
            bit_rate: None,
        };
        assert_eq!(
            check_codecs(None, Some(&bad)),
            Err(CloseReason::UnknownCodec)
        );
        assert_eq!(
            check_codecs(Some(&h264), None),
            Err(CloseReason::UnknownCodec)
        );
    }
}
