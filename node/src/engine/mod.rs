//! The SFU engine: a sans-IO state machine that owns every session's str0m `Rtc`.
//!
//! Driven by the shell (`crate::runtime`) through [`Engine::handle_datagram`],
//! [`Engine::handle_timeout`] and the Calls operations in `calls.rs`; it never touches a socket or
//! a clock. Outgoing datagrams wait in a bounded queue read with [`Engine::poll_transmit`].

mod calls;
mod client_sdp;
mod demux;
mod forward;
mod relay;
mod sdp;
pub mod sdp_limits;
mod session;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::media::{KeyframeRequest, MediaData, MediaKind, Mid};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Event, IceConnectionState, Input, Output};

pub use calls::{
    CloseResult, LocalTrack, MAX_TRACKS_PER_CALL, PublicationSummary, RemoteTrack, SdpKind,
    SessionDesc, SessionSummary, TrackResult, TrackStatus, TracksNew, TracksNewResult, UpdateTrack,
};
pub use client_sdp::{ClientAnswer, ClientOffer};
pub use demux::{Demux, Route};
pub use relay::RelayRefusal;
pub use session::{Location, Session, TrackEntry};

use crate::ids::{NodeTag, SessionId, SessionMap};

/// A publication: `(publisher session, track name)`.
pub type TrackKey = (SessionId, String);

/// How often timers that are not str0m's (GC, expiry, deferred keyframe requests) are checked.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(250);
/// At most one keyframe request per publication per this interval (PLI storms hurt everyone).
const KEYFRAME_INTERVAL: Duration = Duration::from_secs(1);
/// Closed session ids are remembered this long, so calls on them get 410 rather than 404.
const TOMBSTONE_TTL: Duration = Duration::from_secs(600);
const MAX_TOMBSTONES: usize = 100_000;
/// Outgoing datagrams queued between two flushes by the shell; beyond this they are dropped.
const MAX_TRANSMIT_QUEUE: usize = 65_536;
/// Relay outputs queued between two flushes; frames beyond this are dropped.
const MAX_RELAY_QUEUE: usize = 65_536;
/// Keyframes larger than this are forwarded but not cached.
const MAX_CACHED_KEYFRAME: usize = 1 << 20;
/// A subscriber waits at most this long for a keyframe before delta frames flow anyway (a
/// publisher that never answers keyframe requests must not leave it with nothing).
const KEYFRAME_WAIT_MAX: Duration = Duration::from_secs(3);
/// Frames are not sent to a subscriber that has sent nothing for this long (a live one sends
/// RTCP or consent checks at least every ~5 s).
const SUBSCRIBER_SILENT_AFTER: Duration = Duration::from_secs(10);
/// A relayed publication without subscribers is released after this long.
const RELAY_UNUSED_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub node_tag: NodeTag,
    /// The address datagrams arrive on (the bound media socket).
    pub local_addr: SocketAddr,
    /// The address announced in ICE host candidates.
    pub candidate_addr: SocketAddr,
    pub track_timeout: Duration,
    pub reconnect_grace: Duration,
    pub unconnected_expiry: Duration,
    pub max_sessions: usize,
}

/// An error of a Calls operation, mapped to the Calls error model by the API layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpError {
    /// 404 `not_found`
    NotFound(String),
    /// 410 `session_error`
    Gone(String),
    /// 400 `decoding_error`
    Decoding(String),
    /// 406 `invalid_params`
    InvalidParams(String),
    /// 406 `invalid_session_description`
    InvalidSdp(String),
    /// 503 `temporarily_unavailable_error`
    Unavailable(String),
    /// 500 `internal_error`
    Internal(String),
}

/// Counters the node exposes; plain numbers so the engine stays free of metric libraries.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub datagrams_in: u64,
    pub datagrams_unrouted: u64,
    pub datagrams_out: u64,
    pub datagrams_dropped: u64,
    pub frames_in: u64,
    pub frames_forwarded: u64,
    pub frames_no_codec: u64,
    pub keyframe_requests: u64,
    pub relay_frames_out: u64,
    pub relay_frames_in: u64,
    pub relay_dropped: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Datagrams that are RTP or RTCP (first byte 128..=191, RFC 7983), not STUN or DTLS.
    pub rtp_in: u64,
    pub rtp_out: u64,
    pub keyframe_requests_received: u64,
    pub nacks_sent: u64,
    pub nacks_received: u64,
    /// Delta frames not sent to a subscriber that had no keyframe yet.
    pub frames_held_for_keyframe: u64,
    /// Joining subscribers served the publication's cached keyframe.
    pub keyframes_from_cache: u64,
    /// Clock inputs given to sessions whose str0m timeout was due.
    pub session_timeouts: u64,
    /// Frames not sent to subscribers that have been silent for a while (likely gone).
    pub frames_to_silent: u64,
}

/// What the engine holds right now, for gauges.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Gauges {
    pub sessions_connecting: u64,
    pub sessions_connected: u64,
    pub published_audio: u64,
    pub published_video: u64,
    pub subscribed_audio: u64,
    pub subscribed_video: u64,
    pub relay_upstreams: u64,
    pub relay_downstreams: u64,
}

/// Most session set-up times kept between two metric scrapes.
const MAX_SETUP_SAMPLES: usize = 4096;

fn is_rtp(buf: &[u8]) -> bool {
    buf.first().is_some_and(|b| (128..=191).contains(b))
}

/// Where a publication's media comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A mid of the publishing session (the key's session, on this node).
    Session(Mid),
    /// An upstream relay subscription (the publisher is on another node).
    Relay(u64),
}

/// Where a publication's media goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sink {
    /// A sending mid of a local session.
    Session(SessionId, Mid),
    /// A downstream relay subscription (another node pulls it from here).
    Relay(u64),
}

/// The codec of a publication, enough for another node to pick its payload type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodecInfo {
    pub codec: str0m::format::Codec,
    pub clock_rate: u32,
    pub channels: Option<u8>,
}

/// What another node needs to know to carry a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackInfo {
    pub kind: MediaKind,
    pub codec: CodecInfo,
}

/// One frame crossing a relay link; its clock is the publication's codec clock.
#[derive(Debug, Clone)]
pub struct RelayFrame {
    pub rtp_time: u64,
    pub keyframe: bool,
    pub data: std::sync::Arc<[u8]>,
}

/// What the engine asks of the relay layer.
#[derive(Debug, Clone)]
pub enum RelayOut {
    /// Send a frame to a downstream subscription.
    Frame { down: u64, frame: RelayFrame },
    /// The publication a downstream subscription carried has ended.
    Ended { down: u64 },
    /// A local subscriber of a relayed publication wants a keyframe.
    KeyframeRequest { up: u64 },
    /// Nothing subscribes to this upstream any more: release it.
    Unused { up: u64 },
}

pub(crate) struct Publication {
    pub app: std::sync::Arc<str>,
    pub source: Source,
    pub kind: MediaKind,
    pub codec: Option<CodecInfo>,
    pub subscribers: Vec<Sink>,
    /// Since when the publication has had no subscriber (relayed ones are released then).
    pub unused_since: Option<Instant>,
    pub last_media: Instant,
    pub last_keyframe_request: Option<Instant>,
    pub keyframe_pending: bool,
    /// The last keyframe seen, given at once to subscribers that join (the edge keyframe cache).
    pub last_keyframe: Option<CachedKeyframe>,
    /// Frames forwarded since `last_keyframe`: a joining subscriber given the cached keyframe
    /// can decode what follows only if it has not missed any of them.
    pub frames_since_keyframe: u32,
}

/// A publication's most recent keyframe. The data is shared with the frame that was forwarded,
/// so caching it costs no copy.
#[derive(Clone)]
pub(crate) struct CachedKeyframe {
    pub time: str0m::media::MediaTime,
    pub data: std::sync::Arc<[u8]>,
    pub params: Option<str0m::format::PayloadParams>,
}

impl Publication {
    pub fn new(
        app: &str,
        source: Source,
        kind: MediaKind,
        codec: Option<CodecInfo>,
        now: Instant,
    ) -> Publication {
        Publication {
            app: app.into(),
            source,
            kind,
            codec,
            subscribers: Vec::new(),
            unused_since: Some(now),
            last_media: now,
            last_keyframe_request: None,
            keyframe_pending: false,
            last_keyframe: None,
            frames_since_keyframe: 0,
        }
    }
}

/// Work produced while draining one `Rtc`, processed after the drain so two sessions are never
/// borrowed at once.
// Boxing the frame would allocate once per forwarded frame; the queue is drained at once anyway.
#[allow(clippy::large_enum_variant)]
enum Work {
    Media(SessionId, MediaData),
    KeyframeRequest(SessionId, KeyframeRequest),
    Connected(SessionId),
}

pub struct Engine {
    cfg: EngineConfig,
    cert: Option<str0m::config::DtlsCert>,
    sessions: SessionMap<Session>,
    publications: HashMap<TrackKey, Publication>,
    demux: Demux,
    timers: BTreeSet<(Instant, SessionId)>,
    tombstones: SessionMap<Instant>,
    /// Live sessions per app, for the per-app quota.
    app_sessions: HashMap<String, usize>,
    transmits: VecDeque<Transmit>,
    relay_out: VecDeque<RelayOut>,
    /// Upstream relay subscription → the publication it feeds.
    relay_up: HashMap<u64, TrackKey>,
    /// Downstream relay subscription → the publication it carries.
    relay_down: HashMap<u64, TrackKey>,
    /// Downstream relay subscriptions that have not carried a keyframe yet.
    relay_down_without_keyframe: HashSet<u64>,
    work: VecDeque<Work>,
    next_housekeeping: Instant,
    stats: Stats,
    /// Session set-up times (creation to media flowing) not yet taken by the metrics.
    setup_times: Vec<Duration>,
}

impl Engine {
    pub fn new(cfg: EngineConfig, now: Instant) -> Engine {
        // One certificate for all sessions: generating one per session costs ~1 ms of CPU for no
        // gain, since the fingerprint is only a channel binding for the SDP exchange.
        let cert = str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate();
        Engine {
            cfg,
            cert,
            sessions: SessionMap::default(),
            publications: HashMap::new(),
            demux: Demux::default(),
            timers: BTreeSet::new(),
            tombstones: SessionMap::default(),
            app_sessions: HashMap::new(),
            transmits: VecDeque::new(),
            relay_out: VecDeque::new(),
            relay_up: HashMap::new(),
            relay_down: HashMap::new(),
            relay_down_without_keyframe: HashSet::new(),
            work: VecDeque::new(),
            next_housekeeping: now + HOUSEKEEPING_INTERVAL,
            stats: Stats::default(),
            setup_times: Vec::new(),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Current sessions, tracks and relay subscriptions, for gauges.
    pub fn gauges(&self) -> Gauges {
        let mut g = Gauges::default();
        for s in self.sessions.values() {
            if s.connected {
                g.sessions_connected += 1;
            } else {
                g.sessions_connecting += 1;
            }
        }
        for p in self.publications.values() {
            let audio = p.kind == MediaKind::Audio;
            if matches!(p.source, Source::Session(_)) {
                *(if audio {
                    &mut g.published_audio
                } else {
                    &mut g.published_video
                }) += 1;
            }
            let local = p
                .subscribers
                .iter()
                .filter(|s| matches!(s, Sink::Session(..)))
                .count() as u64;
            *(if audio {
                &mut g.subscribed_audio
            } else {
                &mut g.subscribed_video
            }) += local;
        }
        g.relay_upstreams = self.relay_up.len() as u64;
        g.relay_downstreams = self.relay_down.len() as u64;
        g
    }

    /// Session set-up times recorded since the last call.
    pub fn take_setup_times(&mut self) -> Vec<Duration> {
        std::mem::take(&mut self.setup_times)
    }

    /// Records a session's set-up time the first time media flows on it.
    pub(crate) fn media_flowing(&mut self, sid: SessionId, now: Instant) {
        if let Some(s) = self.sessions.get_mut(&sid)
            && !s.media_flowing
        {
            s.media_flowing = true;
            if self.setup_times.len() < MAX_SETUP_SAMPLES {
                self.setup_times
                    .push(now.saturating_duration_since(s.created));
            }
        }
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Live sessions of one app.
    pub fn app_session_count(&self, app: &str) -> usize {
        self.app_sessions.get(app).copied().unwrap_or(0)
    }

    pub fn publication_count(&self) -> usize {
        self.publications.len()
    }

    /// Feeds one received datagram. Unroutable or malformed datagrams are counted and dropped.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, buf: &[u8]) {
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += buf.len() as u64;
        if is_rtp(buf) {
            self.stats.rtp_in += 1;
        }
        let Some(route) = self.demux.route(source, buf) else {
            self.stats.datagrams_unrouted += 1;
            return;
        };
        let sid = route.session();
        let Ok(contents) = buf.try_into() else {
            self.stats.datagrams_unrouted += 1;
            return;
        };
        let Some(s) = self.sessions.get_mut(&sid) else {
            self.stats.datagrams_unrouted += 1;
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.cfg.local_addr,
                contents,
            },
        );
        let span = Arc::clone(&s.span);
        let _entered = span.enter();
        if matches!(route, Route::Ufrag(_)) && !s.rtc.accepts(&input) {
            self.stats.datagrams_unrouted += 1;
            return;
        }
        if let Err(e) = s.rtc.handle_input(input) {
            tracing::debug!(session = %sid, error = %e, "datagram rejected");
        }
        s.last_recv = Some(now);
        if matches!(route, Route::Ufrag(_)) {
            self.demux.learn(sid, source);
        }
        self.drain(sid, now);
        self.process_work(now);
    }

    /// Advances every timer that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, sid)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, sid));
            if let Some(s) = self.sessions.get_mut(&sid) {
                self.stats.session_timeouts += 1;
                if let Err(e) = s.rtc.handle_input(Input::Timeout(now)) {
                    tracing::debug!(session = %sid, error = %e, "timeout failed");
                }
                self.drain(sid, now);
            }
        }
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING_INTERVAL;
            self.housekeeping(now);
        }
        self.process_work(now);
    }

    /// When [`Engine::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Instant {
        match self.timers.first() {
            Some(&(at, _)) => at.min(self.next_housekeeping),
            None => self.next_housekeeping,
        }
    }

    /// The shell could not hand a relay output to the relay tasks (queue full).
    pub fn count_relay_drop(&mut self) {
        self.stats.relay_dropped += 1;
    }

    /// The shell could not send a datagram (socket buffer full).
    pub fn count_send_drop(&mut self) {
        self.stats.datagrams_dropped += 1;
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.transmits.pop_front()?;
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += t.contents.len() as u64;
        if is_rtp(&t.contents) {
            self.stats.rtp_out += 1;
        }
        Some(t)
    }

    /// Drains one session's `Rtc` until it reports its next timeout (str0m's rule after every
    /// mutation). Events that touch other sessions become [`Work`].
    fn drain(&mut self, sid: SessionId, now: Instant) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        let span = Arc::clone(&s.span);
        let _entered = span.enter();
        // Bounded: str0m ends every drain with a timeout; the cap only guards against a bug.
        for _ in 0..100_000 {
            match s.rtc.poll_output() {
                Ok(Output::Timeout(at)) => {
                    // str0m may report a timeout in the past; never schedule before `now`.
                    let at = at.max(now);
                    // Usually unchanged after a forwarded frame: skip two tree updates then.
                    if at != s.timeout || !self.timers.contains(&(at, sid)) {
                        self.timers.remove(&(s.timeout, sid));
                        s.timeout = at;
                        self.timers.insert((at, sid));
                    }
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    if self.transmits.len() < MAX_TRANSMIT_QUEUE {
                        self.transmits.push_back(t);
                    } else {
                        self.stats.datagrams_dropped += 1;
                    }
                }
                Ok(Output::Event(event)) => match event {
                    Event::MediaData(data) => self.work.push_back(Work::Media(sid, data)),
                    Event::KeyframeRequest(req) => {
                        self.work.push_back(Work::KeyframeRequest(sid, req))
                    }
                    Event::Connected => {
                        s.connected = true;
                        s.ever_connected = true;
                        tracing::info!(session = %sid, "connected");
                        self.work.push_back(Work::Connected(sid));
                    }
                    Event::IceConnectionStateChange(state) => {
                        tracing::debug!(session = %sid, ?state, "ice state");
                        match state {
                            IceConnectionState::Disconnected => s.connected = false,
                            IceConnectionState::Connected | IceConnectionState::Completed
                                if s.ever_connected =>
                            {
                                s.connected = true
                            }
                            _ => {}
                        }
                    }
                    _ => {}
                },
                Err(e) => {
                    tracing::warn!(session = %sid, error = %e, "session failed; closing");
                    s.rtc.disconnect();
                    return;
                }
            }
        }
    }

    fn process_work(&mut self, now: Instant) {
        // Each item is handled once; items only come from packets and API calls, so this ends.
        while let Some(item) = self.work.pop_front() {
            match item {
                Work::Media(sid, data) => self.forward_media(sid, data, now),
                Work::KeyframeRequest(sid, req) => {
                    self.subscriber_wants_keyframe(sid, req.mid, now)
                }
                Work::Connected(sid) => self.request_keyframes_for(sid, now),
            }
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        // Publications without media for too long are garbage-collected, as Calls does.
        let stale: Vec<TrackKey> = self
            .publications
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.last_media) >= self.cfg.track_timeout)
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            tracing::info!(session = %key.0, track = %key.1, "no media: track garbage-collected");
            self.unpublish(&key);
        }

        let unused: Vec<TrackKey> = self
            .publications
            .iter()
            .filter(|(_, p)| matches!(p.source, Source::Relay(_)))
            .filter(|(_, p)| {
                p.unused_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= RELAY_UNUSED_GRACE)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in unused {
            tracing::info!(session = %key.0, track = %key.1, "relayed track unused: released");
            self.unpublish(&key);
        }

        let mut doomed = Vec::new();
        for (sid, s) in &self.sessions {
            let reason = if !s.rtc.is_alive() {
                Some("peer connection closed")
            } else if !s.ever_connected
                && now.saturating_duration_since(s.created) >= self.cfg.unconnected_expiry
            {
                Some("never connected")
            } else if s.ever_connected
                && s.last_recv
                    .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.reconnect_grace)
            {
                Some("no packets within the reconnect grace period")
            } else {
                None
            };
            if let Some(reason) = reason {
                doomed.push((*sid, reason));
            }
        }
        for (sid, reason) in doomed {
            self.close_session(sid, now, reason);
        }

        let pending: Vec<TrackKey> = self
            .publications
            .iter()
            .filter(|(_, p)| p.keyframe_pending)
            .map(|(k, _)| k.clone())
            .collect();
        for key in pending {
            self.request_keyframe(&key, now);
        }

        if self.tombstones.len() > MAX_TOMBSTONES / 2 {
            self.tombstones
                .retain(|_, at| now.saturating_duration_since(*at) < TOMBSTONE_TTL);
        }
    }

    /// Removes a session and everything it published or pulled.
    pub fn close_session(&mut self, sid: SessionId, now: Instant, reason: &str) {
        let Some(mut s) = self.sessions.remove(&sid) else {
            return;
        };
        if let Some(n) = self.app_sessions.get_mut(&s.app) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.app_sessions.remove(&s.app);
            }
        }
        tracing::info!(session = %sid, reason, "session closed");
        s.rtc.disconnect();
        self.demux.remove_session(sid, &s.ufrag);
        self.timers.remove(&(s.timeout, sid));
        for name in s.local_by_mid.values() {
            self.unpublish(&(sid, name.clone()));
        }
        for (mid, key) in &s.remote_by_mid {
            if let Some(p) = self.publications.get_mut(key) {
                p.subscribers.retain(|k| *k != Sink::Session(sid, *mid));
                if p.subscribers.is_empty() {
                    p.unused_since = Some(now);
                }
            }
        }
        if self.tombstones.len() >= MAX_TOMBSTONES {
            self.tombstones
                .retain(|_, at| now.saturating_duration_since(*at) < TOMBSTONE_TTL);
            if self.tombstones.len() >= MAX_TOMBSTONES {
                self.tombstones.clear();
            }
        }
        self.tombstones.insert(sid, now);
    }

    /// Ends a publication: subscribers stop receiving it and it can no longer be pulled.
    pub(crate) fn unpublish(&mut self, key: &TrackKey) {
        let Some(p) = self.publications.remove(key) else {
            return;
        };
        match p.source {
            Source::Session(mid) => {
                if let Some(s) = self.sessions.get_mut(&key.0) {
                    s.local_by_mid.remove(&mid);
                }
            }
            Source::Relay(up) => {
                self.relay_up.remove(&up);
                self.push_relay(RelayOut::Unused { up });
            }
        }
        for sink in p.subscribers {
            match sink {
                Sink::Session(sub, mid) => {
                    if let Some(s) = self.sessions.get_mut(&sub) {
                        s.remote_by_mid.remove(&mid);
                    }
                }
                Sink::Relay(down) => {
                    self.relay_down.remove(&down);
                    self.relay_down_without_keyframe.remove(&down);
                    self.push_relay(RelayOut::Ended { down });
                }
            }
        }
    }

    pub(crate) fn push_relay(&mut self, out: RelayOut) {
        // Frames may be dropped under pressure; control outputs never are.
        if matches!(out, RelayOut::Frame { .. }) && self.relay_out.len() >= MAX_RELAY_QUEUE {
            self.stats.relay_dropped += 1;
            return;
        }
        self.relay_out.push_back(out);
    }

    pub fn poll_relay(&mut self) -> Option<RelayOut> {
        self.relay_out.pop_front()
    }
}
