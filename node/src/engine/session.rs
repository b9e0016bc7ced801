//! One session: one str0m `Rtc` (one PeerConnection) and the tracks it publishes and receives.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use str0m::Rtc;
use str0m::change::SdpPendingOffer;
use str0m::media::{Mid, Pt};

use super::TrackKey;
use crate::ids::SessionId;

/// Most track entries (active and closed) a session lists; the oldest closed ones go first.
pub const MAX_TRACK_ENTRIES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Location {
    Local,
    Remote,
}

/// A track as the session lists it in `GET session`.
#[derive(Debug, Clone)]
pub struct TrackEntry {
    pub location: Location,
    pub mid: Mid,
    pub track_name: String,
    /// For remote tracks: the publication pulled.
    pub remote: Option<TrackKey>,
    /// Closed by the client; a closed entry stays listed as inactive.
    pub closed: bool,
}

pub struct Session {
    pub id: SessionId,
    pub app: String,
    pub rtc: Rtc,
    pub ufrag: String,
    pub created: Instant,
    pub last_recv: Option<Instant>,
    pub connected: bool,
    pub ever_connected: bool,
    /// An offer/answer exchange has happened (the transport exists or is being set up).
    pub negotiated: bool,
    /// The SFU's offer waiting for the client's answer (`renegotiate`).
    pub pending: Option<SdpPendingOffer>,
    pub tracks: Vec<TrackEntry>,
    /// Active local tracks: receiving mid → track name.
    pub local_by_mid: HashMap<Mid, String>,
    /// Active remote tracks: sending mid → the publication forwarded into it.
    pub remote_by_mid: HashMap<Mid, TrackKey>,
    /// str0m's next timeout for this session.
    pub timeout: Instant,
    /// Media has flowed (received from this publisher, or written to this subscriber).
    pub media_flowing: bool,
    /// Last cumulative NACK counts str0m reported, per (mid, egress).
    pub nacks_seen: HashMap<(Mid, bool), u64>,
    /// Payload type chosen per sending mid for a source payload type (None: a relayed frame),
    /// so matching payload parameters is not redone for every frame.
    pub send_pt: HashMap<Mid, (Option<Pt>, Pt)>,
    /// Video mids that started (or switched) a publication and have had no keyframe yet, with
    /// when they started: delta frames they could not decode are held back.
    pub awaiting_keyframe: HashMap<Mid, Instant>,
    /// Entered whenever the engine works on this session, so every log line (str0m's too)
    /// names it. Created once and shared through an `Arc`: cloning a `Span` itself costs a
    /// registry lookup, an `Arc` clone is one atomic add (measured on the packet path).
    pub span: Arc<tracing::Span>,
}

impl Session {
    pub fn new(id: SessionId, app: String, rtc: Rtc, ufrag: String, now: Instant) -> Session {
        Session {
            id,
            app,
            rtc,
            ufrag,
            created: now,
            last_recv: None,
            connected: false,
            ever_connected: false,
            negotiated: false,
            pending: None,
            tracks: Vec::new(),
            local_by_mid: HashMap::new(),
            remote_by_mid: HashMap::new(),
            timeout: now,
            media_flowing: false,
            nacks_seen: HashMap::new(),
            send_pt: HashMap::new(),
            awaiting_keyframe: HashMap::new(),
            span: Arc::new(tracing::info_span!("session", id = %id)),
        }
    }

    pub fn active_track_named(&self, name: &str) -> Option<&TrackEntry> {
        self.tracks
            .iter()
            .find(|t| t.location == Location::Local && !t.closed && t.track_name == name)
    }

    pub fn active_entry_mut(&mut self, mid: Mid) -> Option<&mut TrackEntry> {
        self.tracks.iter_mut().find(|t| t.mid == mid && !t.closed)
    }

    /// Adds an entry, evicting the oldest closed entry when the list is full.
    /// Returns false when the list is full of active tracks.
    pub fn push_track(&mut self, entry: TrackEntry) -> bool {
        if self.tracks.len() >= MAX_TRACK_ENTRIES {
            match self.tracks.iter().position(|t| t.closed) {
                Some(i) => {
                    self.tracks.remove(i);
                }
                None => return false,
            }
        }
        self.tracks.push(entry);
        true
    }
}
