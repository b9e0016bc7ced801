//! One session: one str0m `Rtc` (one PeerConnection) and the tracks it publishes and receives.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use str0m::Rtc;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::Mid;

use super::datachannels::SessionChannels;
use super::{OpError, TrackKey};
use crate::ids::SessionId;

/// Most track entries (active and closed) a session lists; the oldest closed ones go first.
pub const MAX_TRACK_ENTRIES: usize = 1024;

/// Which way a track goes, as Calls names it in every track item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Location {
    /// Published by the session (the client sends it).
    Local,
    /// Pulled by the session from a publication (the client receives it).
    Remote,
}

/// A track as the session lists it in `GET session`.
#[derive(Debug, Clone)]
pub struct TrackEntry {
    /// Published or pulled.
    pub location: Location,
    /// The transceiver that carries it.
    pub mid: Mid,
    /// The track's name (for a pull: the publication's).
    pub track_name: String,
    /// For remote tracks: the publication pulled.
    pub remote: Option<TrackKey>,
    /// Closed by the client; a closed entry stays listed as inactive.
    pub closed: bool,
}

/// Where a session's PeerConnection is in its life. Media only flows once connected, so whether
/// it has flowed (its set-up time is recorded once) is part of the connected states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Created; no offer/answer exchange yet, so no transport to connect.
    New,
    /// An offer/answer exchange has happened: ICE and DTLS are being set up.
    Negotiated,
    /// ICE and DTLS are up.
    Connected {
        /// Media has flowed (received from this publisher, or written to this subscriber).
        media_flowed: bool,
    },
    /// Was connected; ICE lost the peer, which may come back within the reconnect grace.
    Disconnected {
        /// Media had flowed before.
        media_flowed: bool,
    },
}

impl SessionState {
    /// ICE and DTLS are up now.
    pub fn is_connected(self) -> bool {
        matches!(self, SessionState::Connected { .. })
    }

    /// The session has been connected at some point (so expiry is by silence, not by age).
    pub fn ever_connected(self) -> bool {
        matches!(
            self,
            SessionState::Connected { .. } | SessionState::Disconnected { .. }
        )
    }

    /// An offer/answer exchange happened.
    pub fn on_negotiated(self) -> SessionState {
        match self {
            SessionState::New => SessionState::Negotiated,
            other => other,
        }
    }

    /// str0m reports the session connected (ICE and DTLS up).
    pub fn on_connected(self) -> SessionState {
        SessionState::Connected {
            media_flowed: self.media_flowed(),
        }
    }

    /// ICE connectivity changed: lost, or back after a loss.
    pub fn on_ice(self, connected: bool) -> SessionState {
        match (self, connected) {
            (SessionState::Connected { media_flowed }, false) => {
                SessionState::Disconnected { media_flowed }
            }
            (SessionState::Disconnected { media_flowed }, true) => {
                SessionState::Connected { media_flowed }
            }
            (other, _) => other,
        }
    }

    /// Media flowed; `Some` with the new state the first time (when the set-up time is taken).
    pub fn on_media(self) -> Option<SessionState> {
        match self {
            SessionState::Connected {
                media_flowed: false,
            } => Some(SessionState::Connected { media_flowed: true }),
            SessionState::Disconnected {
                media_flowed: false,
            } => Some(SessionState::Disconnected { media_flowed: true }),
            _ => None,
        }
    }

    fn media_flowed(self) -> bool {
        match self {
            SessionState::Connected { media_flowed }
            | SessionState::Disconnected { media_flowed } => media_flowed,
            SessionState::New | SessionState::Negotiated => false,
        }
    }
}

/// One client's session: everything the engine keeps about one PeerConnection.
pub struct Session {
    /// Its id, which also names the node that holds it.
    pub id: SessionId,
    /// The Calls app that created it; other apps cannot see it.
    pub app: String,
    /// str0m's state for the PeerConnection.
    pub rtc: Rtc,
    /// Local ICE ufrag, by which the demux routes its first STUN packets.
    pub ufrag: String,
    /// The client's ICE ufrag as last negotiated, to tell an ICE restart in its next offer.
    pub remote_ufrag: Option<String>,
    /// The client's DTLS fingerprint as last negotiated: a new one is a new DTLS transport
    /// (`transport.rs`).
    pub remote_fingerprint: Option<String>,
    /// The client's last offer (when small enough), replayed on a fresh `Rtc` after the client
    /// closed its transport so the SFU's next offer keeps the client's sections in order.
    pub last_offer: Option<String>,
    /// The client closed its transport (DTLS close_notify) with no active track left, when:
    /// the session waits on a fresh `Rtc` for its next offer, up to the reconnect grace.
    pub transport_lost: Option<Instant>,
    /// On a fresh `Rtc` that replayed the client's last offer and has not negotiated with its
    /// new transport yet: the SFU's next offer restarts ICE, as the client's answer will carry
    /// new credentials.
    pub renewed: bool,
    /// When it was created, for the unconnected expiry and the set-up time.
    pub created: Instant,
    /// Last datagram received from the client, for expiry by silence.
    pub last_recv: Option<Instant>,
    /// Where the PeerConnection is in its life.
    pub state: SessionState,
    /// The SFU's offer waiting for the client's answer (`renegotiate`). Apart from `state`: a
    /// renegotiation can start in any state after the first exchange.
    pub pending: Option<SdpPendingOffer>,
    /// Every track it has had, as `GET sessions/{id}` lists them (at most `MAX_TRACK_ENTRIES`).
    pub tracks: Vec<TrackEntry>,
    /// Active local tracks: receiving mid → track name.
    pub local_by_mid: HashMap<Mid, String>,
    /// Active remote tracks: sending mid → the publication forwarded into it.
    pub remote_by_mid: HashMap<Mid, TrackKey>,
    /// str0m's next timeout for this session.
    pub timeout: Instant,
    /// Last cumulative NACK counts str0m reported, per (mid, egress).
    pub nacks_seen: HashMap<(Mid, bool), u64>,
    /// Last cumulative (packets, bytes) str0m reported, per (mid, egress), for the streams list.
    pub media_counts: HashMap<(Mid, bool), (u64, u64)>,
    /// Each sending mid's outgoing stream: its rewriters and payload type choice. Boxed: a map
    /// has room for at least 4 entries, and most sessions send on one or two mids.
    pub out: HashMap<Mid, Box<super::fanout::OutStream>>,
    /// The resend history window of each sending mid, once set (`repair_window`; `None`: its
    /// packets are never NACKed and it keeps none).
    pub repair_window: HashMap<Mid, Option<std::time::Duration>>,
    /// Video mids that started (or switched) a publication and have had no keyframe yet, with
    /// when they started: delta frames they could not decode are held back.
    pub awaiting_keyframe: HashMap<Mid, Instant>,
    /// m-sections in its newest SDP, offered or answered. str0m never reuses a closed
    /// track's section in its own offers, so this only grows; `tracks/new` keeps it within
    /// what the client's next SDP may have ([`super::sdp_limits::MAX_M_LINES`]).
    pub m_lines: usize,
    /// RTP packets written that wait for the batch's end to be sent (`media_written`), at most
    /// `fanout::FLUSH_AFTER_PACKETS`.
    pub media_pending: u8,
    /// The simulcast layer choice of each receiving mid that has one (pulled with `simulcast`,
    /// or receiving a layered publication).
    pub simulcast: HashMap<Mid, super::simulcast::Selector>,
    /// Set for a cascade's outgoing session (the SFU offered, full ICE, controlling): the local
    /// address of its own socket, its host candidate.
    pub outgoing_local: Option<SocketAddr>,
    /// A cascade's sections, as its offer added them.
    pub outgoing_mids: Vec<Mid>,
    /// Entered whenever the engine works on this session, so every log line (str0m's too)
    /// names it. Created once and shared through an `Arc`: cloning a `Span` itself costs a
    /// registry lookup, an `Arc` clone is one atomic add (measured on the packet path).
    pub span: Arc<tracing::Span>,
    /// Its DataChannels (Calls `datachannels/*`).
    pub channels: SessionChannels,
    /// Set when its Opus payloads go to the audio egress queue (`ops/egress.rs`).
    pub egress: Option<super::egress::SessionEgress>,
}

impl Session {
    /// Applies a client's offer to this session's `Rtc`; a refusal is the client's SDP at fault.
    pub fn accept_offer(&mut self, offer: SdpOffer) -> Result<SdpAnswer, OpError> {
        let sections = offer.media_lines.len();
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| OpError::InvalidSdp(format!("offer not accepted: {e}")))?;
        self.m_lines = self.m_lines.max(sections);
        Ok(answer)
    }

    /// The SDP of an offer this node makes, its m-sections counted.
    pub fn offered(&mut self, sdp: String) -> String {
        let sections = sdp.lines().filter(|l| l.starts_with("m=")).count();
        self.m_lines = self.m_lines.max(sections);
        sdp
    }

    /// Remembers the client's transport as its SDP (offer or answer) showed it.
    pub fn note_remote(&mut self, ufrag: Option<&String>, fingerprint: Option<&String>) {
        if let Some(u) = ufrag {
            self.remote_ufrag = Some(u.clone());
        }
        if let Some(f) = fingerprint {
            self.remote_fingerprint = Some(f.clone());
        }
    }

    /// A session in [`SessionState::New`], with no tracks yet.
    pub fn new(id: SessionId, app: String, rtc: Rtc, ufrag: String, now: Instant) -> Session {
        Session {
            id,
            app,
            rtc,
            ufrag,
            remote_ufrag: None,
            remote_fingerprint: None,
            last_offer: None,
            transport_lost: None,
            renewed: false,
            created: now,
            last_recv: None,
            state: SessionState::New,
            pending: None,
            tracks: Vec::new(),
            local_by_mid: HashMap::new(),
            remote_by_mid: HashMap::new(),
            timeout: now,
            nacks_seen: HashMap::new(),
            media_counts: HashMap::new(),
            out: HashMap::new(),
            repair_window: HashMap::new(),
            awaiting_keyframe: HashMap::new(),
            m_lines: 0,
            media_pending: 0,
            simulcast: HashMap::new(),
            outgoing_local: None,
            outgoing_mids: Vec::new(),
            span: Arc::new(tracing::info_span!("session", id = %id)),
            channels: SessionChannels::default(),
            egress: None,
        }
    }

    /// (packets, bytes) received from the client and sent to it, as str0m last reported them.
    pub fn media_totals(&self) -> ((u64, u64), (u64, u64)) {
        let mut totals = ((0, 0), (0, 0));
        for ((_, egress), (packets, bytes)) in &self.media_counts {
            let t = if *egress {
                &mut totals.1
            } else {
                &mut totals.0
            };
            t.0 += packets;
            t.1 += bytes;
        }
        totals
    }

    /// Its active published track of that name, so names stay unique among active tracks.
    pub fn active_track_named(&self, name: &str) -> Option<&TrackEntry> {
        self.tracks
            .iter()
            .find(|t| t.location == Location::Local && !t.closed && t.track_name == name)
    }

    /// The active entry on a mid, to close or re-point it.
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

#[cfg(test)]
mod tests {
    use super::SessionState::{self, *};

    #[test]
    fn the_lifecycle_keeps_what_the_expiry_and_metrics_read() {
        let s = New;
        assert!(!s.ever_connected());
        assert_eq!(s.on_ice(true), New, "ICE alone does not connect a session");
        let s = s.on_negotiated();
        assert_eq!(s, Negotiated);
        assert_eq!(s.on_media(), None, "no set-up time before connecting");
        let s = s.on_connected();
        assert!(s.is_connected());
        let s = s.on_media().expect("the first media is recorded");
        assert_eq!(s.on_media(), None, "and only the first");
        let s = s.on_ice(false);
        assert_eq!(s, Disconnected { media_flowed: true });
        assert!(!s.is_connected() && s.ever_connected());
        assert_eq!(s.on_negotiated(), s, "a renegotiation does not reset it");
        let s: SessionState = s.on_ice(true);
        assert_eq!(s, Connected { media_flowed: true });
    }
}
