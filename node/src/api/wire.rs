//! The JSON shapes of the Calls API (field by field as in the spec). Requests ignore unknown
//! fields; responses leave out absent optional fields.

use serde::{Deserialize, Serialize};

use crate::engine::{Location, SdpKind, SessionDesc, TrackResult, TrackStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SdpType {
    Offer,
    Answer,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SessionDescription {
    #[serde(rename = "type")]
    pub kind: SdpType,
    pub sdp: String,
}

impl From<SessionDesc> for SessionDescription {
    fn from(d: SessionDesc) -> Self {
        let kind = match d.kind {
            SdpKind::Offer => SdpType::Offer,
            SdpKind::Answer => SdpType::Answer,
        };
        SessionDescription { kind, sdp: d.sdp }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireLocation {
    Local,
    Remote,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireKind {
    Audio,
    Video,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackObject {
    pub location: Option<WireLocation>,
    pub mid: Option<String>,
    pub session_id: Option<String>,
    pub track_name: Option<String>,
    pub bidirectional_media_stream: Option<bool>,
    pub kind: Option<WireKind>,
}

/// `sessions/new`: `null`/absent body is the plain form; an object must carry an offer.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSessionRequest {
    pub session_description: SessionDescription,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSessionResponse {
    pub session_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_description: Option<SessionDescription>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TracksRequest {
    pub session_description: Option<SessionDescription>,
    pub tracks: Option<Vec<TrackObject>>,
    pub auto_discover: Option<bool>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track_name: Option<String>,
    pub mid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
}

fn location_str(l: Location) -> &'static str {
    match l {
        Location::Local => "local",
        Location::Remote => "remote",
    }
}

impl From<TrackResult> for TrackOut {
    fn from(r: TrackResult) -> Self {
        let (error_code, error_description) = match r.error {
            Some(e) => (
                Some(super::error::track_error_code(&e)),
                Some(e.to_string()),
            ),
            None => (None, None),
        };
        TrackOut {
            location: None,
            session_id: r.session_id,
            track_name: r.track_name,
            mid: r.mid,
            status: None,
            error_code,
            error_description,
        }
    }
}

impl From<TrackStatus> for TrackOut {
    fn from(t: TrackStatus) -> Self {
        TrackOut {
            location: Some(location_str(t.location)),
            session_id: t.session_id,
            track_name: Some(t.track_name),
            mid: t.mid,
            status: Some(if t.active { "active" } else { "inactive" }),
            error_code: None,
            error_description: None,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TracksResponse {
    pub requires_immediate_renegotiation: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_description: Option<SessionDescription>,
    pub tracks: Vec<TrackOut>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenegotiateRequest {
    pub session_description: SessionDescription,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateRequest {
    pub tracks: Vec<TrackObject>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseRequest {
    pub tracks: Vec<TrackObject>,
    pub session_description: Option<SessionDescription>,
    pub force: Option<bool>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionStateResponse {
    pub tracks: Vec<TrackOut>,
}
