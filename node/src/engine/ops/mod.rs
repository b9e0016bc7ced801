//! The Calls API operations on the engine, one file each: `new_session`, `tracks_new` (with
//! `push` and `pull`), `renegotiate`, `tracks_update`, `tracks_close`; and their request and
//! result types, here.
//!
//! Every operation runs to completion on the engine (they are serialized per node), validates all
//! input first and reports per-track failures in the items, as Calls does.

mod new_session;
mod pull;
mod push;
mod renegotiate;
mod tracks_close;
mod tracks_new;
mod tracks_update;

use str0m::change::SdpAnswer;
use str0m::media::MediaKind;

use super::TrackError;
use super::client_sdp::ClientOffer;
use super::sdp::candidates_in_every_section;
use super::session::Location;
use crate::ids::{DownId, SessionId};

/// Most tracks in one API call (Calls' limit).
pub const MAX_TRACKS_PER_CALL: usize = 64;
/// Most active tracks (published plus pulled) one session may hold.
pub const MAX_ACTIVE_TRACKS_PER_SESSION: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpKind {
    Offer,
    Answer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDesc {
    pub kind: SdpKind,
    pub sdp: String,
}

#[derive(Debug, Clone, Default)]
pub struct LocalTrack {
    pub mid: Option<String>,
    pub track_name: Option<String>,
    pub kind: Option<MediaKind>,
    pub bidirectional: bool,
}

#[derive(Debug, Clone, Default)]
pub struct RemoteTrack {
    pub session_id: Option<String>,
    pub track_name: Option<String>,
    /// `#<localTrackName>`: send into the transceiver that carries that local track.
    pub mid: Option<String>,
}

#[derive(Debug)]
pub enum TracksNew {
    Local {
        offer: Option<ClientOffer>,
        tracks: Vec<LocalTrack>,
        auto_discover: bool,
    },
    Remote {
        tracks: Vec<RemoteTrack>,
    },
    /// Only an offer: a plain renegotiation started by the client.
    OfferOnly {
        offer: ClientOffer,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackResult {
    pub location: Option<Location>,
    pub session_id: Option<String>,
    pub track_name: Option<String>,
    pub mid: String,
    pub error: Option<TrackError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracksNewResult {
    pub requires_immediate_renegotiation: bool,
    pub description: Option<SessionDesc>,
    pub tracks: Vec<TrackResult>,
}

#[derive(Debug, Clone)]
pub struct UpdateTrack {
    pub mid: Option<String>,
    pub session_id: Option<String>,
    pub track_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseResult {
    pub description: Option<SessionDesc>,
    pub tracks: Vec<TrackResult>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    pub session_id: SessionId,
    pub app: String,
    pub connected: bool,
    pub tracks: Vec<TrackStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationSummary {
    pub session_id: SessionId,
    pub track_name: String,
    pub kind: MediaKind,
    pub local_subscribers: usize,
    /// Relay downstream ids (the relay layer maps them to nodes).
    pub downstreams: Vec<DownId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackStatus {
    pub location: Location,
    pub mid: String,
    pub track_name: String,
    pub session_id: Option<String>,
    pub active: bool,
}

pub(super) fn answer_desc(answer: SdpAnswer) -> SessionDesc {
    SessionDesc {
        kind: SdpKind::Answer,
        sdp: candidates_in_every_section(&answer.to_sdp_string()),
    }
}
