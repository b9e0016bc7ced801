//! The Calls API operations on the engine, one file each: `new_session`, `tracks_new` (with
//! `push`, `pull` and `pull_offer`), `renegotiate`, `tracks_update`, `tracks_close`,
//! `datachannels` (establish, new, update, close), `egress` (marking a session for audio egress); the stream operations `whip` (WHIP publish,
//! WHEP play), `session_url` (PATCH, DELETE), `streams` (create, delete, bind, list) and
//! `cascade` (the outgoing session of a cascade), `close_offer` (ending pulls with an SFU offer,
//! for the rooms' WebSocket signalling); and their request and result types, here.
//!
//! Every operation runs to completion on the engine (they are serialized per node), validates all
//! input first and reports per-track failures in the items, as Calls does.

mod cascade;
mod close_offer;
mod datachannels;
mod egress;
mod new_session;
mod pull;
mod pull_offer;
mod push;
mod renegotiate;
mod session_url;
mod stream_cluster;
mod streams;
mod tracks_close;
mod tracks_new;
mod tracks_update;
mod whip;

pub use cascade::{CascadeDirection, OutgoingState, prepare_answer};
pub use datachannels::{DataChannelItem, DataChannelResult, DataChannelStatus, Established};
pub use session_url::Patched;
pub use stream_cluster::FollowedStream;
pub use streams::{HandOver, StreamSessionView, StreamView};
pub use tracks_update::check_update_count;
pub use whip::{StreamPolicy, StreamSessionCreated};

use str0m::change::SdpAnswer;
use str0m::media::MediaKind;

use super::TrackError;
use super::client_sdp::ClientOffer;
use super::sdp::candidates_in_every_section;
use super::session::Location;
use super::simulcast::Prefs;
use crate::ids::{DownId, SessionId};

/// Most tracks in one API call (Calls' limit).
pub const MAX_TRACKS_PER_CALL: usize = 64;
/// Most active tracks (published plus pulled) one session may hold.
pub const MAX_ACTIVE_TRACKS_PER_SESSION: usize = 512;

/// Which side of an offer/answer exchange an SDP is (the Calls `sessionDescription.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdpKind {
    /// The sender proposes; the other side must answer.
    Offer,
    /// The reply that completes an exchange.
    Answer,
}

/// An SDP with its role, as it travels in and out of the Calls operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDesc {
    /// Offer or answer.
    pub kind: SdpKind,
    /// The SDP text itself.
    pub sdp: String,
}

/// One track a client asks to publish in `tracks/new` (`location: local`).
#[derive(Debug, Clone, Default)]
pub struct LocalTrack {
    /// The client's transceiver carrying it (with an offer); absent when the SFU writes the offer.
    pub mid: Option<String>,
    /// The name others pull it by; unique among the session's active tracks.
    pub track_name: Option<String>,
    /// Audio or video, needed when there is no offer to read it from.
    pub kind: Option<MediaKind>,
    /// `bidirectionalMediaStream`: sendrecv, so the same transceiver can also carry a pulled track.
    pub bidirectional: bool,
}

/// One publication a client asks to pull in `tracks/new` (`location: remote`).
#[derive(Debug, Clone, Default)]
pub struct RemoteTrack {
    /// The publishing session, on this node or another one of the cluster.
    pub session_id: Option<String>,
    /// The publication's name within that session.
    pub track_name: Option<String>,
    /// `#<localTrackName>`: send into the transceiver that carries that local track; with a
    /// client offer, the offer's receiving section to send into.
    pub mid: Option<String>,
    /// `simulcast`: which layer of a layered publication to receive, and the fallback policy.
    pub simulcast: Option<Prefs>,
}

/// A pulled track's simulcast state, echoed in responses and `GET sessions/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SimulcastView {
    /// What the subscriber asked for.
    pub prefs: Prefs,
    /// The layer it receives now (none before its first frame, or for an unlayered track).
    pub current_rid: Option<str0m::media::Rid>,
}

/// A checked `tracks/new` request: one body carries either publications or pulls, never both.
#[derive(Debug)]
pub enum TracksNew {
    /// Publish the client's tracks.
    Local {
        /// The client's offer; without one the SFU writes the offer itself.
        offer: Option<ClientOffer>,
        /// The tracks to publish.
        tracks: Vec<LocalTrack>,
        /// `autoDiscover`: also publish every sending section not yet carrying a track, under a random name.
        auto_discover: bool,
    },
    /// Pull publications; the SFU offers the new receiving sections.
    Remote {
        /// The publications to pull.
        tracks: Vec<RemoteTrack>,
    },
    /// Pull publications into the client's own receiving sections (each track's `mid`): the SFU
    /// answers the client's offer.
    RemoteWithOffer {
        /// The client's offer with the receiving sections.
        offer: ClientOffer,
        /// The publications to pull, each naming its section.
        tracks: Vec<RemoteTrack>,
    },
    /// Only an offer: a plain renegotiation started by the client.
    OfferOnly {
        /// The client's offer, answered as is.
        offer: ClientOffer,
    },
}

/// The outcome for one track of a Calls operation: Calls reports failures per track.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackResult {
    /// Published here (`local`) or pulled (`remote`), echoed to the client.
    pub location: Option<Location>,
    /// For a pull: the publishing session.
    pub session_id: Option<String>,
    /// The track's name, as the client gave it.
    pub track_name: Option<String>,
    /// The transceiver that carries the track (empty when it got none).
    pub mid: String,
    /// Why this track failed, while the others may have succeeded.
    pub error: Option<TrackError>,
    /// For a pull with `simulcast`: the request, echoed.
    pub simulcast: Option<SimulcastView>,
}

/// What `tracks/new` hands back to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracksNewResult {
    /// The description is an SFU offer the client must answer with `renegotiate`.
    pub requires_immediate_renegotiation: bool,
    /// The SFU's answer to the client's offer, or its own offer; none when nothing changed.
    pub description: Option<SessionDesc>,
    /// One result per requested track, in request order.
    pub tracks: Vec<TrackResult>,
}

/// One item of `tracks/update`: point a receiving mid at another publication.
#[derive(Debug, Clone)]
pub struct UpdateTrack {
    /// The client's receiving transceiver to re-point.
    pub mid: Option<String>,
    /// The session publishing the new source.
    pub session_id: Option<String>,
    /// The new source's publication name.
    pub track_name: Option<String>,
    /// `simulcast`: a new layer choice (`preferredRid`) for the mid.
    pub simulcast: Option<Prefs>,
}

/// What `tracks/close` hands back to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseResult {
    /// The SFU's answer to the client's offer; none with `force`.
    pub description: Option<SessionDesc>,
    /// One result per closed mid.
    pub tracks: Vec<TrackResult>,
}

/// One session as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    /// The session.
    pub session_id: SessionId,
    /// The Calls app that owns it.
    pub app: String,
    /// ICE and DTLS are up right now.
    pub connected: bool,
    /// Every track it has had, active or closed.
    pub tracks: Vec<TrackStatus>,
}

/// One session of an app as `GET /v1/apps/{app}/sessions` lists it: what it publishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSessionSummary {
    /// The session.
    pub session_id: SessionId,
    /// ICE and DTLS are up right now.
    pub connected: bool,
    /// The tracks it has published (closed ones as inactive), at most the listing's bound.
    pub published: Vec<PublishedTrack>,
}

/// One track a session published, for the app's listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedTrack {
    /// Its name within the session.
    pub track_name: String,
    /// Audio or video; `None` once its transceiver is gone.
    pub kind: Option<MediaKind>,
    /// Still carrying media: not closed and still mapped to its transceiver.
    pub active: bool,
}

/// An app's sessions on this node, cut at the listing's bounds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AppListing {
    /// Sessions in id order.
    pub sessions: Vec<AppSessionSummary>,
    /// Some sessions or tracks were left out to keep the answer within its bounds.
    pub truncated: bool,
}

/// One track published on this node, as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationSummary {
    /// The publishing session.
    pub session_id: SessionId,
    /// The publication's name within the session.
    pub track_name: String,
    /// Audio or video.
    pub kind: MediaKind,
    /// Sessions on this node that receive it.
    pub local_subscribers: usize,
    /// Relay downstream ids (the relay layer maps them to nodes).
    pub downstreams: Vec<DownId>,
}

/// One track of a session as `GET sessions/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackStatus {
    /// Published by the session (`local`) or pulled (`remote`).
    pub location: Location,
    /// The transceiver that carries it.
    pub mid: String,
    /// The track's name (for a pull: the publication's).
    pub track_name: String,
    /// For a pull: the publishing session.
    pub session_id: Option<String>,
    /// Still carrying media: not closed and still mapped to its transceiver.
    pub active: bool,
    /// For a pull of a layered publication or with `simulcast`: the request and current layer.
    pub simulcast: Option<SimulcastView>,
}

pub(super) fn answer_desc(answer: SdpAnswer) -> SessionDesc {
    SessionDesc {
        kind: SdpKind::Answer,
        sdp: candidates_in_every_section(&answer.to_sdp_string()),
    }
}
