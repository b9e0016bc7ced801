//! The SFU engine: a sans-IO state machine that owns every session's str0m `Rtc`.
//!
//! Driven by the shell (`crate::runtime`); it never touches a socket or a clock. Where things are:
//!
//! - `io.rs`: datagrams (UDP, and ICE-TCP frames) and timers in, datagrams out (the str0m drain
//!   loop);
//! - `candidates.rs`: the host candidates (per IP family, UDP and passive TCP) and which one a
//!   packet arrived on;
//! - `ops/`: the Calls operations, one file each (`new_session`, `tracks_new` with `push` and
//!   `pull`, `renegotiate`, `tracks_update`, `tracks_close`) and their request/result types;
//! - `session.rs`: one session (its `Rtc`, tracks and [`SessionState`]);
//! - `sessions.rs`, `publications.rs`: lookup and close of sessions; publishing and subscribing;
//! - `transport.rs`: ICE restarts and new DTLS transports in a client's offer;
//! - `housekeeping.rs`: timers that are not str0m's (expiry, garbage collection);
//! - `fanout.rs`: RTP packets from a publisher (or a relay link) into every subscriber,
//!   keyframe requests and the edge keyframe cache;
//! - `packet/`: the packet path's no-I/O core: keyframe starts in RTP payloads,
//!   per-subscriber sequence/timestamp rewriting, VP8 picture id continuity, a per-track
//!   packet cache;
//! - `simulcast.rs`: simulcast layers of a publication and each subscriber's layer choice
//!   (switch on keyframe, fallback, timestamp continuity), free of str0m's frame API so the
//!   packet path can reuse it; `simulcast_bwe.rs`: moves driven by a subscriber's bandwidth
//!   estimate;
//! - `relay.rs`: relayed publications and downstream subscriptions, the relay output queue;
//!   `relay_layers.rs`: which simulcast layers each relay subscription carries (the union an
//!   edge pulls, what a downstream gets, the layer states told downstream);
//! - `relay_messages.rs`: what the engine and the relay layer exchange (frames, ends, refusals,
//!   DataChannel messages);
//! - `datachannels.rs`: a session's DataChannels, their ids and bounds; `channel_fanout.rs`:
//!   messages to subscribers, `canReply`, `waitForAck`; `channel_relay.rs`: channels to and from
//!   other nodes; `channel_reply.rs`: the cluster-wide `canReply` grant (ops in
//!   `ops/datachannels.rs`);
//! - `egress.rs`: sessions' Opus payloads queued for the NATS bus (audio egress; marking a
//!   session is `ops/egress.rs`);
//! - `streams.rs`: named streams (WHIP/WHEP), a registry of sessions; their operations are in
//!   `ops/` (`whip`, `streams`, `session_url`, and `cascade`: the outgoing session that makes the
//!   node a WHIP/WHEP client of another server);
//! - `views.rs`, `stats.rs`: what the admin API and the metrics read;
//! - `error.rs`: typed errors ([`OpError`], [`TrackError`]); the API maps them to Calls codes.
//!
//! The in-memory world the tests and benches drive it in is `crate::testing`.

mod candidates;
mod channel_fanout;
mod channel_relay;
mod channel_reply;
mod client_sdp;
pub mod datachannels;
mod demux;
mod egress;
mod error;
mod fanout;
mod housekeeping;
mod io;
mod ops;
pub mod packet;
mod publications;
mod relay;
mod relay_layers;
mod relay_messages;
pub(crate) mod repair_window;
mod sdp;
pub mod sdp_limits;
pub mod sdpfrag;
mod session;
mod sessions;
pub mod simulcast;
mod simulcast_bwe;
mod stats;
pub mod streams;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_datachannels;
#[cfg(test)]
mod tests_egress;
#[cfg(test)]
mod tests_keyframe_requests;
#[cfg(test)]
mod tests_red;
#[cfg(test)]
mod tests_simulcast;
mod transport;
#[cfg(test)]
mod transport_tests;
mod views;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::net::Transmit;

pub use channel_fanout::ChannelStats;
pub use channel_relay::DcLinkId;
pub use client_sdp::{ClientAnswer, ClientOffer, Twcc};
pub use demux::{Demux, Route};
pub use egress::{
    EgressLabels, EgressPacket, MAX_EGRESS_QUEUE, MAX_LABEL_BYTES, subject, subject_token,
};
pub use error::{OpError, TrackError};
pub use ops::{
    AppListing, AppSessionSummary, CascadeDirection, CloseResult, DataChannelItem,
    DataChannelResult, DataChannelStatus, Established, FollowedStream, HandOver, LocalTrack,
    MAX_TRACKS_PER_CALL, OutgoingState, Patched, PublicationSummary, PublishedTrack, RemoteTrack,
    SdpKind, SessionDesc, SessionSummary, SimulcastView, StreamPolicy, StreamSessionCreated,
    StreamSessionView, StreamView, TrackResult, TrackStatus, TracksNew, TracksNewResult,
    UpdateTrack, check_update_count, prepare_answer,
};
pub use publications::{CodecInfo, TrackInfo, TrackKey};
pub use relay_layers::RelayLayers;
pub use relay_messages::{RelayFrame, RelayIn, RelayOut, RelayRefusal};
pub use session::{Location, Session, SessionState, TrackEntry};
pub use stats::{Gauges, RID_LABELS, SimulcastStats, Stats};

use crate::ids::{DownId, NodeTag, SessionId, SessionMap, UpId};
use io::Work;
use publications::Publication;

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

/// What the engine needs from the node's configuration, resolved (no defaults left to apply).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This node's tag, embedded in every session id it creates so others can route to it.
    pub node_tag: NodeTag,
    /// Which of the node's engine workers this engine is, embedded in its session ids so the
    /// node routes calls to it (0 on a node with one worker).
    pub worker: u8,
    /// The address datagrams arrive on (the bound media socket).
    pub local_addr: SocketAddr,
    /// The primary address announced in ICE host candidates (also what gossip announces).
    pub candidate_addr: SocketAddr,
    /// Further announced addresses, of the other IP family on a dual-stack socket.
    pub more_candidates: Vec<SocketAddr>,
    /// ICE-TCP: every address is also offered as a passive TCP candidate (the shell accepts TCP
    /// on the media port and feeds [`Engine::handle_tcp_frame`]).
    pub media_tcp: bool,
    /// A publication that receives no media for this long is garbage-collected.
    pub track_timeout: Duration,
    /// How long a session that lost connectivity stays usable before it is closed.
    pub reconnect_grace: Duration,
    /// A session that never connects is closed after this long.
    pub unconnected_expiry: Duration,
    /// Most sessions held at once; beyond it `create_session` refuses.
    pub max_sessions: usize,
    /// Bandwidth estimation (str0m BWE, with its pacer and padding) on every session this node
    /// answers, from its creation: what moves simulcast subscribers with `priorityOrdering:
    /// "asciibetical"` between layers. str0m can only turn it on when a session is built.
    pub bandwidth_estimation: bool,
}

/// The engine. Its methods, by kind:
///
/// - **inputs**: [`Engine::handle_datagram`], [`Engine::handle_timeout`] (`io.rs`);
/// - **polls**: [`Engine::poll_transmit`], [`Engine::poll_timeout`] (`io.rs`),
///   [`Engine::poll_relay`] (`relay.rs`);
/// - **Calls operations**: [`Engine::create_session`], [`Engine::tracks_new`],
///   [`Engine::renegotiate`], [`Engine::tracks_update`], [`Engine::tracks_close`],
///   [`Engine::close_session`] (`ops/`, `sessions.rs`);
/// - **relay changes**: [`Engine::add_relay_publication`], [`Engine::end_relay_publication`],
///   [`Engine::relay_subscribe`], [`Engine::relay_unsubscribe`], [`Engine::relay_frame`],
///   [`Engine::relay_keyframe_request`], [`Engine::relay_set_layers`],
///   [`Engine::relay_layers`] (`relay.rs`, `fanout.rs`, `relay_layers.rs`);
/// - **views**: [`Engine::admin_sessions`], [`Engine::session_tracks`], [`Engine::stats`],
///   [`Engine::gauges`] and the counts (`views.rs`, `stats.rs`).
pub struct Engine {
    cfg: EngineConfig,
    /// Sessions the node's other engine workers hold: `max_sessions` is the node's cap.
    sessions_elsewhere: usize,
    cert: Option<str0m::config::DtlsCert>,
    /// Boxed: a `Session` (its str0m `Rtc` inline) is about 11 KB, and a map stores its values
    /// in its table, which is up to half empty after growing: inline, that slack cost several KB
    /// per session.
    sessions: SessionMap<Box<Session>>,
    publications: HashMap<TrackKey, Publication>,
    demux: Demux,
    timers: BTreeSet<(Instant, SessionId)>,
    tombstones: SessionMap<sessions::Tombstone>,
    /// Live sessions per app, for the per-app quota.
    app_sessions: HashMap<String, usize>,
    transmits: VecDeque<Transmit>,
    /// Datagrams of cascades' outgoing sessions, each sent from its session's own socket.
    outgoing_transmits: VecDeque<Transmit>,
    /// A cascade's outgoing session by the local address of its own socket.
    outgoing: HashMap<SocketAddr, SessionId>,
    relay_out: VecDeque<RelayOut>,
    /// Upstream relay subscription → the publication it feeds.
    relay_up: HashMap<UpId, TrackKey>,
    /// Downstream relay subscription → the publication it carries.
    relay_down: HashMap<DownId, TrackKey>,
    /// Downstream relay subscriptions that have not carried a keyframe yet.
    relay_down_without_keyframe: HashSet<DownId>,
    /// The number of the last frame given to each downstream relay subscription. Numbered here,
    /// before any queue may drop the frame, so that the other node sees every loss as a gap.
    relay_down_seq: HashMap<DownId, u32>,
    /// The layers each downstream relay subscription asked for (absent: all).
    relay_down_layers: HashMap<DownId, RelayLayers>,
    /// Layer announcements that arrived before their upstream's publication was registered.
    relay_layers_early: HashMap<UpId, Vec<(str0m::media::Rid, bool)>>,
    work: VecDeque<Work>,
    next_housekeeping: Instant,
    stats: Stats,
    /// Session set-up times (creation to media flowing) not yet taken by the metrics.
    setup_times: Vec<Duration>,
    /// Named streams (WHIP/WHEP) and their sessions.
    streams: streams::Streams,
    /// DataChannel subscriptions: (publisher, channel name) → (subscriber, its channel id).
    dc_subscribers: HashMap<(SessionId, String), Vec<(SessionId, u16)>>,
    /// This node's published channels sent to other nodes: (publisher, name) → downstreams.
    dc_relay_downs: HashMap<(SessionId, String), Vec<DcLinkId>>,
    dc_down_key: HashMap<DcLinkId, (SessionId, String)>,
    /// Other nodes' channels received here: (publisher, name) → upstream.
    dc_relay_ups: HashMap<(SessionId, String), DcLinkId>,
    dc_up_key: HashMap<DcLinkId, (SessionId, String)>,
    /// Audio egress: whether it is on, and the packets waiting for the shell.
    egress: egress::Egress,
    /// `canReply` grants this node's published channels gave other nodes: (publisher, name) →
    /// the downstream holding it and the claim's sequence.
    dc_reply_downs: HashMap<(SessionId, String), (DcLinkId, u32)>,
    /// `canReply` grants this node holds for relayed channels: upstream → claim sequence.
    dc_up_grants: HashMap<DcLinkId, u32>,
    /// Sessions with DataChannel messages written and not yet drained (a handful at a time:
    /// those a batch of input touched).
    dc_written: HashSet<SessionId>,
    /// Sessions with RTP packets written and not yet sent, and when the last was written
    /// ([`Engine::flush_written_media`]).
    media_written: Vec<SessionId>,
    media_written_at: Option<Instant>,
    /// A session was sent mid-batch (`fanout::FLUSH_AFTER_PACKETS`): its datagrams are spread
    /// through `transmits` between other viewers' and are put back together before sending.
    transmits_interleaved: bool,
}

impl Engine {
    /// An empty engine; `now` starts its housekeeping clock.
    pub fn new(cfg: EngineConfig, now: Instant) -> Engine {
        // One certificate for all sessions: generating one per session costs ~1 ms of CPU for no
        // gain, since the fingerprint is only a channel binding for the SDP exchange.
        let cert = str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate();
        Engine {
            cfg,
            sessions_elsewhere: 0,
            cert,
            sessions: SessionMap::default(),
            publications: HashMap::new(),
            demux: Demux::default(),
            timers: BTreeSet::new(),
            tombstones: SessionMap::default(),
            app_sessions: HashMap::new(),
            transmits: VecDeque::new(),
            outgoing_transmits: VecDeque::new(),
            outgoing: HashMap::new(),
            relay_out: VecDeque::new(),
            relay_up: HashMap::new(),
            relay_down: HashMap::new(),
            relay_down_without_keyframe: HashSet::new(),
            relay_down_seq: HashMap::new(),
            relay_down_layers: HashMap::new(),
            relay_layers_early: HashMap::new(),
            work: VecDeque::new(),
            next_housekeeping: now + HOUSEKEEPING_INTERVAL,
            stats: Stats::default(),
            setup_times: Vec::new(),
            streams: streams::Streams::default(),
            dc_subscribers: HashMap::new(),
            dc_relay_downs: HashMap::new(),
            dc_down_key: HashMap::new(),
            dc_relay_ups: HashMap::new(),
            dc_up_key: HashMap::new(),
            egress: egress::Egress::default(),
            dc_reply_downs: HashMap::new(),
            dc_up_grants: HashMap::new(),
            dc_written: HashSet::new(),
            media_written: Vec::new(),
            media_written_at: None,
            transmits_interleaved: false,
        }
    }

    /// The configuration it was built with, for the shell and the API to read limits from.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }
}
