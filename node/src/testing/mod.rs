//! The in-memory engine world (feature `test-world`): engines and str0m clients exchanging
//! datagrams in memory on a simulated clock, so media, keyframes, closes and timers run
//! deterministically and fast. The engine's unit tests and the criterion benches both drive it,
//! as str0m exposes its own test helpers.
//!
//! The world's clients are the test kit's client core (`trackmesh_testkit::client::Core`), the
//! same one the integration tests and the load generator drive over real sockets: here the
//! world hands each core its datagrams and the simulated time and carries what it sends.
//!
//! Test code: it panics on anything unexpected (a client error, a refused offer).

mod client;
mod media;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::{Codec, PayloadParams};
use str0m::media::{Direction, MediaKind, MediaTime, Mid};
use trackmesh_testkit::client::{ClientStats, Core, SendFn};

pub use client::Client;
pub use media::{VP8_START_CODE, synthetic_frame, vp8_packet};

use crate::engine::{
    Engine, EngineConfig, LocalTrack, Location, RemoteTrack, SdpKind, TracksNew, TracksNewResult,
};
use crate::ids::NodeTag;

/// The app every world session belongs to.
pub const APP: &str = "app";
/// The engine's media address.
pub const SFU: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7701);
/// Media is sent every this many milliseconds of [`World::run`] (one frame per track).
const MEDIA_EVERY_MS: usize = 20;
/// A publisher's keyframe every this many frames (the world's publishers ignore requests).
pub const KEYFRAME_EVERY: u64 = 25;
/// Bound on the exchanges at one instant: the engine's datagrams to the clients, their
/// answers back, and so on (a handshake takes a few).
const MAX_DELIVERY_ROUNDS: usize = 1000;

/// One engine and its clients on a simulated clock.
pub struct World {
    /// The engine under test, reachable for direct calls and checks.
    pub engine: Engine,
    /// The clients, by the index the world's methods take.
    pub clients: Vec<Client>,
    by_addr: HashMap<SocketAddr, usize>,
    /// The simulated clock; only the world moves it.
    pub now: Instant,
    /// Publishers send media while [`World::run`] runs: (client index, audio mid, video mid).
    pub senders: Vec<(usize, Mid, Mid)>,
    /// Frames sent per sender so far.
    pub media_clock: u64,
    /// Drop every nth datagram sent to a client (client index to n): deterministic packet loss.
    pub loss_to: HashMap<usize, u64>,
    /// The same, for datagrams a client sends.
    pub loss_from: HashMap<usize, u64>,
    /// Datagrams carried so far, the count the loss pattern is taken on.
    pub datagrams: u64,
    /// Offers the clients made, in order (seeds for the fuzzers).
    pub offers: Vec<String>,
    /// Datagrams the clients sent the engine, when capturing: (time, client, bytes).
    pub captured: Option<Vec<(Instant, usize, Vec<u8>)>>,
}

/// The engine configuration of a world: generous limits, the given track timeout.
pub fn config(track_timeout: Duration) -> EngineConfig {
    EngineConfig {
        worker: 0,
        node_tag: NodeTag(0xabcd0123),
        local_addr: SFU,
        candidate_addr: SFU,
        more_candidates: Vec::new(),
        media_tcp: false,
        track_timeout,
        reconnect_grace: Duration::from_secs(30),
        unconnected_expiry: Duration::from_secs(120),
        max_sessions: 100,
        bandwidth_estimation: false,
    }
}

impl World {
    /// A world with [`config`]`(track_timeout)`.
    pub fn new(track_timeout: Duration) -> World {
        World::with_config(config(track_timeout))
    }

    /// A world around an engine with this configuration, for tests of the limits.
    pub fn with_config(cfg: EngineConfig) -> World {
        let now = Instant::now();
        World {
            engine: Engine::new(cfg, now),
            clients: Vec::new(),
            by_addr: HashMap::new(),
            now,
            senders: Vec::new(),
            media_clock: 0,
            loss_to: HashMap::new(),
            loss_from: HashMap::new(),
            datagrams: 0,
            offers: Vec::new(),
            captured: None,
        }
    }

    /// Adds a client; returns its index.
    pub fn client(&mut self) -> usize {
        let i = self.clients.len();
        let port = u16::try_from(40_000 + i).expect("at most 25535 clients");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        self.clients.push(Client::new(addr, self.now));
        self.by_addr.insert(addr, i);
        i
    }

    /// Client `c` moves to another port (Wi-Fi to mobile): its datagrams come from the new
    /// address and the engine's must go there.
    pub fn move_client(&mut self, c: usize, port: u16) {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        self.by_addr.remove(&self.clients[c].addr);
        self.clients[c].addr = addr;
        self.by_addr.insert(addr, c);
    }

    /// Client `c` drops its PeerConnection for a fresh one at the same address (a new ICE agent
    /// and DTLS certificate), as a browser makes a new transport.
    pub fn renew_client(&mut self, c: usize) {
        let addr = self.clients[c].addr;
        self.clients[c] = Client::new(addr, self.now);
    }

    /// Client `c` offers what its `Rtc` has pending (`OfferOnly`, as a renegotiation) and takes
    /// the engine's answer; returns the answer SDP.
    pub fn offer_only(
        &mut self,
        c: usize,
        sid: &str,
        offer: SdpOffer,
        pending: SdpPendingOffer,
    ) -> String {
        self.offers.push(offer.to_sdp_string());
        let res = self
            .engine
            .tracks_new(
                APP,
                sid,
                TracksNew::OfferOnly {
                    offer: offer.to_sdp_string().into(),
                },
                self.now,
            )
            .expect("offer accepted");
        let answer = res.description.expect("answer");
        assert_eq!(answer.kind, SdpKind::Answer);
        self.accept_answer(c, pending, &answer.sdp);
        answer.sdp
    }

    /// A new session of [`APP`] without an offer.
    pub fn session(&mut self) -> String {
        let (sid, answer) = self
            .engine
            .create_session(APP, None, self.now)
            .expect("session");
        assert!(answer.is_none());
        sid.to_string()
    }

    /// Client `c` publishes audio `mic` + video `cam` in session `sid`; returns the two mids.
    pub fn push(&mut self, c: usize, sid: &str) -> (Mid, Mid) {
        let mids = self.push_tracks(
            c,
            sid,
            &[(MediaKind::Audio, "mic"), (MediaKind::Video, "cam")],
        );
        (mids[0], mids[1])
    }

    /// Client `c` publishes one track per `(kind, name)` with its offer; returns the mids.
    pub fn push_tracks(&mut self, c: usize, sid: &str, tracks: &[(MediaKind, &str)]) -> Vec<Mid> {
        let (offer, pending, mids) = {
            let mut sdp = self.clients[c].rtc().sdp_api();
            let mids: Vec<Mid> = tracks
                .iter()
                .map(|(kind, _)| sdp.add_media(*kind, Direction::SendOnly, None, None, None))
                .collect();
            let (offer, pending) = sdp.apply().expect("offer");
            (offer, pending, mids)
        };
        self.offers.push(offer.to_sdp_string());
        let res = self
            .engine
            .tracks_new(
                APP,
                sid,
                TracksNew::Local {
                    offer: Some(offer.to_sdp_string().into()),
                    auto_discover: false,
                    tracks: mids
                        .iter()
                        .zip(tracks)
                        .map(|(mid, (_, name))| LocalTrack {
                            mid: Some(mid.to_string()),
                            track_name: Some(name.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                },
                self.now,
            )
            .expect("push");
        assert!(!res.requires_immediate_renegotiation);
        assert!(
            res.tracks.iter().all(|t| t.error.is_none()),
            "{:?}",
            res.tracks
        );
        assert_eq!(res.tracks[0].mid, mids[0].to_string());
        let answer = res.description.expect("answer");
        assert_eq!(answer.kind, SdpKind::Answer);
        self.accept_answer(c, pending, &answer.sdp);
        mids
    }

    /// Client `c` publishes one video track `name` with simulcast layers `rids` (`a=simulcast`
    /// and `a=rid`, as Chromium offers them); returns its mid.
    pub fn push_simulcast(&mut self, c: usize, sid: &str, name: &str, rids: &[&str]) -> Mid {
        let (offer, pending, mid) = {
            let mut simulcast = str0m::media::Simulcast::new();
            for rid in rids {
                simulcast.add_send_layer(str0m::media::SimulcastLayer::new(rid));
            }
            let mut sdp = self.clients[c].rtc().sdp_api();
            let mid = sdp.add_media(
                MediaKind::Video,
                Direction::SendOnly,
                None,
                None,
                Some(simulcast),
            );
            let (offer, pending) = sdp.apply().expect("offer");
            (offer, pending, mid)
        };
        self.offers.push(offer.to_sdp_string());
        let res = self
            .engine
            .tracks_new(
                APP,
                sid,
                TracksNew::Local {
                    offer: Some(offer.to_sdp_string().into()),
                    auto_discover: false,
                    tracks: vec![LocalTrack {
                        mid: Some(mid.to_string()),
                        track_name: Some(name.to_string()),
                        ..Default::default()
                    }],
                },
                self.now,
            )
            .expect("push");
        assert!(res.tracks.iter().all(|t| t.error.is_none()), "{res:?}");
        let answer = res.description.expect("answer");
        self.accept_answer(c, pending, &answer.sdp);
        mid
    }

    /// Client `c` writes one VP8 frame of simulcast layer `rid` on `mid` and everything it and
    /// the engine send for it is delivered.
    pub fn write_layer(&mut self, c: usize, mid: Mid, rid: &str, time: MediaTime, data: Vec<u8>) {
        let now = self.now;
        self.with_link(c, |core, send| core.handle_timeout(now, send));
        self.deliver();
        let pt = self.payload_type(c, mid, Codec::Vp8).pt();
        self.clients[c]
            .rtc()
            .writer(mid)
            .expect("writer")
            .rid(str0m::media::Rid::from(rid))
            .write(pt, now, time, data)
            .expect("write");
        self.with_link(c, |core, send| core.handle_timeout(now, send));
        self.deliver();
    }

    /// Client `c` takes the engine's answer to its offer.
    pub fn accept_answer(&mut self, c: usize, pending: SdpPendingOffer, sdp: &str) {
        let answer = SdpAnswer::from_sdp_string(sdp).expect("answer sdp");
        self.clients[c]
            .rtc()
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("accept answer");
    }

    /// Session `sid` (client `c`) pulls the given `(session, track)`s and answers the engine's
    /// offer; returns the response.
    pub fn pull(&mut self, c: usize, sid: &str, tracks: &[(&str, &str)]) -> TracksNewResult {
        let tracks = tracks
            .iter()
            .map(|(s, t)| RemoteTrack {
                session_id: Some(s.to_string()),
                track_name: Some(t.to_string()),
                ..Default::default()
            })
            .collect();
        self.pull_tracks(c, sid, tracks)
    }

    /// [`World::pull`] with the request's items as given (say with `simulcast`).
    pub fn pull_tracks(
        &mut self,
        c: usize,
        sid: &str,
        tracks: Vec<RemoteTrack>,
    ) -> TracksNewResult {
        let res = self
            .engine
            .tracks_new(APP, sid, TracksNew::Remote { tracks }, self.now)
            .expect("pull");
        if let Some(offer) = &res.description {
            assert_eq!(offer.kind, SdpKind::Offer);
            let offer = SdpOffer::from_sdp_string(&offer.sdp).expect("offer sdp");
            let answer = self.clients[c]
                .rtc()
                .sdp_api()
                .accept_offer(offer)
                .expect("client answers");
            self.engine
                .renegotiate(APP, sid, answer.to_sdp_string().as_str().into(), self.now)
                .expect("renegotiate");
        }
        res
    }

    /// Runs the simulated network for `dur` in 1 ms steps; senders send a frame per track every
    /// 20 ms.
    pub fn run(&mut self, dur: Duration) {
        let steps = dur.as_millis() as usize;
        for step in 0..steps {
            self.now += Duration::from_millis(1);
            if step % MEDIA_EVERY_MS == 0 {
                self.send_media();
            }
            for c in 0..self.clients.len() {
                self.tick(c);
            }
            self.engine.handle_timeout(self.now);
            self.deliver();
        }
    }

    /// Advances the clock by `dt` and runs the timers of the given clients and of the engine.
    pub fn step(&mut self, clients: impl IntoIterator<Item = usize>, dt: Duration) {
        self.now += dt;
        for c in clients {
            self.tick(c);
        }
        self.engine.handle_timeout(self.now);
        self.deliver();
    }

    /// Runs until the clients are connected; panics after 5 s of simulated time.
    pub fn connect(&mut self, clients: &[usize]) {
        for _ in 0..5000 {
            if clients.iter().all(|&c| self.clients[c].connected()) {
                return;
            }
            self.step(clients.iter().copied(), Duration::from_millis(1));
        }
        panic!("clients did not connect");
    }

    /// One frame per sender and track: Opus audio, VP8 video with a keyframe every
    /// [`KEYFRAME_EVERY`] frames.
    fn send_media(&mut self) {
        self.media_clock += 1;
        let n = self.media_clock;
        for (c, a, v) in self.senders.clone() {
            if !self.clients[c].connected() {
                continue;
            }
            let audio = synthetic_frame(MediaKind::Audio, false, 80);
            self.write(
                c,
                a,
                Codec::Opus,
                MediaTime::from_90khz(n * 960),
                audio,
                false,
            );
            self.pump_client(c);
            let keyframe = n % KEYFRAME_EVERY == 1;
            let video = synthetic_frame(MediaKind::Video, keyframe, 1200);
            let time = MediaTime::from_90khz(n * 1800);
            self.write(c, v, Codec::Vp8, time, video, keyframe);
            self.pump_client(c);
        }
    }

    /// Client `c` writes a frame on `mid` with the first payload type of `codec`, if negotiated.
    /// A sender keeps its schedule on a track the test closed, so a refused write is no error.
    fn write(
        &mut self,
        c: usize,
        mid: Mid,
        codec: Codec,
        time: MediaTime,
        data: Vec<u8>,
        keyframe: bool,
    ) {
        let now = self.now;
        let core = &mut self.clients[c].core;
        if let Ok(pt) = core.payload_type(mid, codec) {
            let _ = core.write_frame(mid, pt, now, time, data, keyframe);
        }
    }

    /// The payload parameters of `codec` on client `c`'s `mid`.
    pub fn payload_type(&mut self, c: usize, mid: Mid, codec: Codec) -> PayloadParams {
        let w = self.clients[c].rtc().writer(mid).expect("writer");
        *w.payload_params()
            .find(|p| p.spec().codec == codec)
            .expect("codec negotiated")
    }

    /// Client `c` writes one frame; returns the datagrams it emits for it, not delivered (for
    /// a caller that feeds and times them itself).
    pub fn frame(
        &mut self,
        c: usize,
        mid: Mid,
        pt: &PayloadParams,
        time: MediaTime,
        data: Vec<u8>,
    ) -> Vec<Vec<u8>> {
        // str0m sends a frame once its own clock reaches the frame's wallclock: bring the
        // client's clock to `now` first, and pass on what its timers produce.
        let now = self.now;
        self.with_link(c, |core, send| core.handle_timeout(now, send));
        self.deliver();
        // VP8: bit 0 of the first byte is 0 for a keyframe (RFC 6386, 9.1).
        let keyframe = pt.spec().codec == Codec::Vp8 && data.first().is_some_and(|b| b & 1 == 0);
        let core = &mut self.clients[c].core;
        core.write_frame(mid, pt.pt(), now, time, data, keyframe)
            .expect("write");
        // The frame is packetized on the next clock input.
        let mut out = Vec::new();
        core.handle_timeout(now, &mut |_: SocketAddr, bytes: &[u8]| {
            out.push(bytes.to_vec());
            Ok(())
        })
        .unwrap_or_else(|e| panic!("client {c} failed: {e:#}"));
        out
    }

    /// Client `c`'s timers, if due; what they send goes to the engine, and its answers back.
    fn tick(&mut self, c: usize) {
        let now = self.now;
        self.with_link(c, |core, send| core.tick(now, send));
        self.deliver();
    }

    /// Everything client `c` wants to send goes to the engine, and the engine's answers back.
    pub fn pump_client(&mut self, c: usize) {
        let now = self.now;
        self.with_link(c, |core, send| core.drain(now, send));
        self.deliver();
    }

    /// Runs `f` on client `c`'s core with the link to the engine: each datagram it sends is
    /// counted, lost by [`World::loss_from`]'s pattern, captured, and handled by the engine at
    /// once (the engine's answers wait in its queue for [`World::deliver`]). A client error
    /// panics.
    fn with_link(
        &mut self,
        c: usize,
        f: impl FnOnce(&mut Core<ClientStats>, &mut SendFn<'_>) -> anyhow::Result<()>,
    ) {
        let World {
            engine,
            clients,
            now,
            loss_from,
            datagrams,
            captured,
            ..
        } = self;
        let now = *now;
        let lose_every = loss_from.get(&c).copied();
        let client = &mut clients[c];
        let src = client.addr;
        let mut send = |_: SocketAddr, bytes: &[u8]| -> std::io::Result<()> {
            *datagrams += 1;
            if lose_every.is_some_and(|n| datagrams.is_multiple_of(n)) {
                return Ok(());
            }
            if let Some(captured) = captured.as_mut() {
                captured.push((now, c, bytes.to_vec()));
            }
            engine.handle_datagram(now, src, bytes);
            Ok(())
        };
        if let Err(e) = f(&mut client.core, &mut send) {
            panic!("client {c} failed: {e:#}");
        }
    }

    /// Datagrams the engine sent go to their clients, and what the clients answer back, until
    /// the engine has nothing more to send at this instant.
    pub fn deliver(&mut self) {
        let mut batch = Vec::new();
        for _ in 0..MAX_DELIVERY_ROUNDS {
            while let Some(t) = self.engine.poll_transmit() {
                batch.push(t);
            }
            if batch.is_empty() {
                return;
            }
            for t in batch.drain(..) {
                let Some(&c) = self.by_addr.get(&t.destination) else {
                    continue;
                };
                self.datagrams += 1;
                if self
                    .loss_to
                    .get(&c)
                    .is_some_and(|n| self.datagrams.is_multiple_of(*n))
                {
                    continue;
                }
                let now = self.now;
                self.with_link(c, |core, send| core.receive(now, SFU, &t.contents, send));
            }
        }
        panic!(
            "the engine and the clients still exchanged datagrams after {MAX_DELIVERY_ROUNDS} rounds"
        );
    }

    /// `(track name, location, active)` of every track session `sid` lists.
    pub fn statuses(&self, sid: &str) -> Vec<(String, Location, bool)> {
        self.engine
            .session_tracks(APP, sid)
            .expect("session")
            .into_iter()
            .map(|t| (t.track_name, t.location, t.active))
            .collect()
    }
}
