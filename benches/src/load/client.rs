//! A WebRTC client that scales to hundreds per process: one tokio task per client owning a
//! str0m `Rtc` (full ICE) and its own UDP socket on 127.0.0.1. The task `select!`s over the
//! socket, the `Rtc` timeout / next media frame, and a small command channel; after every
//! mutation of the `Rtc` it drains `poll_output` until `Output::Timeout`.
//!
//! Publishers send synthetic Opus/VP8 frames ([`super::media`]); subscribers record per track
//! frames, keyframes, sequence gaps (lost frames), one-way latency and the time from the pull
//! request to the first frame and keyframe.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use trackmesh_tests::api::{CallsClient, SessionDescription, TrackObject, TracksRequest};
use trackmesh_tests::peer::{clock_origin, micros_since_origin};

use super::media::{self, AUDIO_INTERVAL, AUDIO_TICKS, VideoShape};
use super::stats::Histogram;

/// Bound on outputs drained after one mutation.
const MAX_OUTPUTS_PER_DRAIN: usize = 10_000;
/// Datagrams read in one wake-up before the task yields to the timer and commands.
const MAX_DATAGRAMS_PER_WAKE: usize = 64;
/// Commands waiting for a client task.
const COMMAND_QUEUE: usize = 16;
/// How long a command waits for the client task.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// Errors kept per client.
const MAX_ERRORS: usize = 16;
/// A received send time further than this from the receive time is not a latency sample.
const MAX_PLAUSIBLE_LATENCY_US: u64 = 60_000_000;
/// Polling step of [`Client::wait_until`].
const WAIT_STEP: Duration = Duration::from_millis(10);
/// `not_found_track_error` items of a pull are retried for this long (in a cluster the owner
/// may learn a track a little after its publisher starts), every [`NOT_FOUND_STEP`].
const NOT_FOUND_RETRY: Duration = Duration::from_secs(5);
const NOT_FOUND_STEP: Duration = Duration::from_millis(100);
/// UDP receive buffer; the largest datagram str0m or the node sends is well below this.
const RECV_BUF: usize = 2048;

/// How a client is set up.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub name: String,
    /// The task stops after this long, whatever happens.
    pub lifetime: Duration,
    pub video: VideoShape,
    /// Keep up to this many raw received-frame samples (for per-frame pairing across clients).
    pub raw_samples: usize,
}

impl ClientConfig {
    pub fn new(name: impl Into<String>, lifetime: Duration) -> ClientConfig {
        ClientConfig {
            name: name.into(),
            lifetime,
            video: VideoShape::default(),
            raw_samples: 0,
        }
    }
}

/// Counters of one received track that a measurement window resets.
#[derive(Clone, Debug, Default)]
pub struct RxWindow {
    pub frames: u64,
    pub keyframes: u64,
    pub bytes: u64,
    /// Frames missing between two received ones (sequence gaps).
    pub lost: u64,
    /// Frames that arrived with a sequence number at or below the highest seen.
    pub reordered: u64,
    /// Frames whose payload carried no plausible stamp.
    pub unstamped: u64,
    /// Frames between the first received frame and the next one (a cached keyframe served to a
    /// joining viewer, then live frames): skipped by design, not lost.
    pub skipped_at_join: u64,
    pub latency: Histogram,
}

/// What a client saw on one received track (mid).
#[derive(Clone, Debug)]
pub struct TrackRx {
    pub kind: MediaKind,
    /// Start of the tracks/new request that created this mid.
    pub pull_started: Option<Instant>,
    pub first_frame_at: Option<Instant>,
    pub first_keyframe_at: Option<Instant>,
    pub highest_seq: Option<u64>,
    pub total_frames: u64,
    /// Frames with a plausible stamp, since the start.
    pub stamped: u64,
    /// How old the first received frame was (µs from its send time), e.g. a cached keyframe.
    pub first_frame_age_us: Option<u64>,
    pub window: RxWindow,
}

/// What a client sent on one track.
#[derive(Clone, Debug, Default)]
pub struct TrackTx {
    pub total_frames: u64,
    pub window_frames: u64,
    pub window_keyframes: u64,
    pub window_bytes: u64,
}

/// One received frame, kept raw (see [`ClientConfig::raw_samples`]).
#[derive(Clone, Copy, Debug)]
pub struct RawSample {
    pub video: bool,
    pub seq: u64,
    pub latency_us: u64,
}

/// Everything a client records; read through [`Client::stats`].
#[derive(Clone, Debug)]
pub struct ClientStats {
    pub created_at: Instant,
    pub connected_at: Option<Instant>,
    pub rx: HashMap<String, TrackRx>,
    pub tx: HashMap<String, TrackTx>,
    pub keyframe_requests: u64,
    pub send_errors: u64,
    pub errors: Vec<String>,
    pub raw: Vec<RawSample>,
    pub stopped: bool,
}

impl ClientStats {
    fn new() -> ClientStats {
        ClientStats {
            created_at: Instant::now(),
            connected_at: None,
            rx: HashMap::new(),
            tx: HashMap::new(),
            keyframe_requests: 0,
            send_errors: 0,
            errors: Vec::new(),
            raw: Vec::new(),
            stopped: false,
        }
    }

    fn error(&mut self, e: impl std::fmt::Display) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(e.to_string());
        }
    }

    /// Every received track has a first frame.
    pub fn all_receiving(&self) -> bool {
        !self.rx.is_empty() && self.rx.values().all(|t| t.first_frame_at.is_some())
    }

    /// Every received video track has a keyframe (true when there is no video track).
    pub fn all_keyframed(&self) -> bool {
        self.rx
            .values()
            .filter(|t| t.kind == MediaKind::Video)
            .all(|t| t.first_keyframe_at.is_some())
    }

    pub fn tx_window_frames(&self) -> u64 {
        self.tx.values().map(|t| t.window_frames).sum()
    }
}

fn lock(s: &Mutex<ClientStats>) -> MutexGuard<'_, ClientStats> {
    // A poisoned lock means a panic elsewhere; the counters stay usable.
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// A synthetic source on one sending mid.
struct Source {
    mid: Mid,
    kind: MediaKind,
    pt: Option<Pt>,
    seq: u64,
    next_due: Instant,
    last_keyframe: Option<Instant>,
    force_keyframe: bool,
}

/// The state owned by a client task.
struct Core {
    rtc: Rtc,
    local: SocketAddr,
    stats: Arc<Mutex<ClientStats>>,
    sources: Vec<Source>,
    pending: Option<SdpPendingOffer>,
    next_timeout: Instant,
    video: VideoShape,
    raw_samples: usize,
}

type Job = Box<dyn FnOnce(&mut Core) + Send>;

impl Core {
    /// Drain `poll_output` until `Output::Timeout`, sending transmits on `socket`.
    fn drain(&mut self, socket: &UdpSocket) -> anyhow::Result<()> {
        for _ in 0..MAX_OUTPUTS_PER_DRAIN {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => {
                    self.next_timeout = t;
                    return Ok(());
                }
                Output::Transmit(t) => {
                    if !t.destination.ip().is_loopback() {
                        lock(&self.stats).error(format!("refusing to send to {}", t.destination));
                        continue;
                    }
                    if socket.try_send_to(&t.contents, t.destination).is_err() {
                        lock(&self.stats).send_errors += 1;
                    }
                }
                Output::Event(ev) => self.on_event(ev),
            }
        }
        bail!("poll_output did not reach Output::Timeout within {MAX_OUTPUTS_PER_DRAIN} outputs")
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Connected => {
                let mut s = lock(&self.stats);
                s.connected_at.get_or_insert_with(Instant::now);
            }
            Event::MediaData(d) => {
                let now = Instant::now();
                let video = !d.params.spec().codec.is_audio();
                let keyframe = video && d.is_keyframe();
                let stamp = media::read_stamp(&d.data);
                let now_us = micros_since_origin(now);
                let mut s = lock(&self.stats);
                let raw_room = s.raw.len() < self.raw_samples;
                let t = s.rx.entry(d.mid.to_string()).or_insert_with(|| TrackRx {
                    kind: if video {
                        MediaKind::Video
                    } else {
                        MediaKind::Audio
                    },
                    pull_started: None,
                    first_frame_at: None,
                    first_keyframe_at: None,
                    highest_seq: None,
                    total_frames: 0,
                    stamped: 0,
                    first_frame_age_us: None,
                    window: RxWindow::default(),
                });
                t.first_frame_at.get_or_insert(now);
                if keyframe {
                    t.first_keyframe_at.get_or_insert(now);
                    t.window.keyframes += 1;
                }
                t.total_frames += 1;
                t.window.frames += 1;
                t.window.bytes += d.data.len() as u64;
                let mut raw = None;
                match stamp {
                    Some((sent_us, seq)) if now_us.abs_diff(sent_us) < MAX_PLAUSIBLE_LATENCY_US => {
                        let latency = now_us.saturating_sub(sent_us);
                        t.stamped += 1;
                        match t.highest_seq {
                            // The first frame of a track may be an old keyframe the node kept
                            // for joining viewers (edge keyframe cache): it is not a forwarding
                            // latency sample, and the frames between it and the live ones are
                            // skipped by design, not lost.
                            None => {
                                t.highest_seq = Some(seq);
                                t.first_frame_age_us = Some(latency);
                            }
                            Some(h) if seq > h => {
                                if t.stamped == 2 {
                                    t.window.skipped_at_join += seq - h - 1;
                                } else {
                                    t.window.lost += seq - h - 1;
                                }
                                t.highest_seq = Some(seq);
                                t.window.latency.record(latency);
                            }
                            Some(_) => {
                                t.window.reordered += 1;
                                if t.stamped > 2 {
                                    t.window.latency.record(latency);
                                }
                            }
                        }
                        if raw_room {
                            raw = Some(RawSample {
                                video,
                                seq,
                                latency_us: latency,
                            });
                        }
                    }
                    _ => t.window.unstamped += 1,
                }
                if let Some(r) = raw {
                    s.raw.push(r);
                }
            }
            Event::KeyframeRequest(r) => {
                lock(&self.stats).keyframe_requests += 1;
                if let Some(src) = self.sources.iter_mut().find(|s| s.mid == r.mid) {
                    src.force_keyframe = true;
                }
            }
            _ => {}
        }
    }

    /// When the next media frame is due (None before the connection is up).
    fn next_media_due(&self) -> Option<Instant> {
        if !self.rtc.is_connected() {
            return None;
        }
        self.sources.iter().map(|s| s.next_due).min()
    }

    /// Write every due frame; each write is followed by a drain.
    fn send_due_media(&mut self, socket: &UdpSocket) -> anyhow::Result<()> {
        if self.sources.is_empty() || !self.rtc.is_connected() {
            return Ok(());
        }
        let now = Instant::now();
        for i in 0..self.sources.len() {
            let Some(src) = self.sources.get_mut(i) else {
                break;
            };
            if src.next_due > now {
                continue;
            }
            let (codec, interval, clock, ticks) = match src.kind {
                MediaKind::Audio => (
                    Codec::Opus,
                    AUDIO_INTERVAL,
                    Frequency::FORTY_EIGHT_KHZ,
                    AUDIO_TICKS,
                ),
                MediaKind::Video => (
                    Codec::Vp8,
                    self.video.frame_interval(),
                    Frequency::NINETY_KHZ,
                    self.video.ticks_per_frame(),
                ),
            };
            let keyframe = src.kind == MediaKind::Video
                && (src.force_keyframe
                    || src
                        .last_keyframe
                        .is_none_or(|t| now.duration_since(t) >= self.video.keyframe_interval()));
            let seq = src.seq;
            let send_us = micros_since_origin(Instant::now());
            let data = match src.kind {
                MediaKind::Audio => media::audio_frame(seq, send_us),
                MediaKind::Video => media::vp8_frame(
                    seq,
                    keyframe,
                    self.video.frame_bytes(seq, keyframe),
                    send_us,
                ),
            };
            // After a stall, drop the lost time instead of catching up with a burst.
            let next = src.next_due + interval;
            src.next_due = if next <= now { now + interval } else { next };
            src.seq += 1;
            if keyframe {
                src.last_keyframe = Some(now);
                src.force_keyframe = false;
            }
            let mid = src.mid;
            let cached_pt = src.pt;
            let Some(writer) = self.rtc.writer(mid) else {
                lock(&self.stats).error(format!("no writer for mid {mid}"));
                continue;
            };
            let pt = match cached_pt {
                Some(pt) => pt,
                None => {
                    let Some(pt) = writer
                        .payload_params()
                        .find(|p| p.spec().codec == codec)
                        .map(|p| p.pt())
                    else {
                        lock(&self.stats).error(format!("no {codec:?} negotiated on mid {mid}"));
                        continue;
                    };
                    if let Some(src) = self.sources.get_mut(i) {
                        src.pt = Some(pt);
                    }
                    pt
                }
            };
            let len = data.len() as u64;
            let rtp_time = MediaTime::new(seq * ticks, clock);
            match writer.write(pt, now, rtp_time, data) {
                Ok(()) => {
                    let mut s = lock(&self.stats);
                    let t = s.tx.entry(mid.to_string()).or_default();
                    t.total_frames += 1;
                    t.window_frames += 1;
                    t.window_bytes += len;
                    if keyframe {
                        t.window_keyframes += 1;
                    }
                }
                Err(e) => lock(&self.stats).error(format!("write on mid {mid}: {e}")),
            }
            self.drain(socket)?;
        }
        Ok(())
    }

    fn receive(
        &mut self,
        socket: &UdpSocket,
        bytes: &[u8],
        source: SocketAddr,
    ) -> anyhow::Result<()> {
        // Datagrams str0m cannot classify are dropped, never fatal.
        let Ok(contents) = bytes.try_into() else {
            return Ok(());
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local,
                contents,
            },
        );
        if self.rtc.accepts(&input) {
            self.rtc.handle_input(input)?;
            self.drain(socket)?;
        }
        Ok(())
    }

    fn timeout(&mut self, socket: &UdpSocket) -> anyhow::Result<()> {
        self.rtc.handle_input(Input::Timeout(Instant::now()))?;
        self.drain(socket)
    }
}

/// The client task: runs until the handle is dropped, `lifetime` passes, or the `Rtc` fails.
async fn run(mut core: Core, socket: UdpSocket, mut jobs: mpsc::Receiver<Job>, lifetime: Duration) {
    let deadline = Instant::now() + lifetime;
    let mut buf = vec![0u8; RECV_BUF];
    let sleep = tokio::time::sleep_until(deadline.into());
    tokio::pin!(sleep);
    let result: anyhow::Result<()> = async {
        core.drain(&socket)?;
        // The deadline bounds the loop in time; this bounds it in count (at most one turn per
        // 10 µs of lifetime, far more than the media and timers need).
        let max_turns = lifetime.as_micros() / 10 + 1_000;
        for _ in 0..max_turns {
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            if core.next_timeout <= now {
                core.timeout(&socket)?;
            }
            core.send_due_media(&socket)?;
            let mut wake = core.next_timeout.min(deadline);
            if let Some(due) = core.next_media_due() {
                wake = wake.min(due);
            }
            sleep.as_mut().reset(wake.into());
            tokio::select! {
                job = jobs.recv() => match job {
                    Some(job) => {
                        job(&mut core);
                        core.drain(&socket)?;
                    }
                    None => return Ok(()),
                },
                r = socket.recv_from(&mut buf) => {
                    match r {
                        Ok((n, source)) => {
                            if let Some(bytes) = buf.get(..n) {
                                core.receive(&socket, bytes, source)?;
                            }
                        }
                        // e.g. ICMP port unreachable surfacing as ECONNREFUSED: keep going.
                        Err(e) => lock(&core.stats).error(format!("recv_from: {e}")),
                    }
                    // More datagrams that are already queued, without another wake-up.
                    for _ in 0..MAX_DATAGRAMS_PER_WAKE {
                        match socket.try_recv_from(&mut buf) {
                            Ok((n, source)) => {
                                if let Some(bytes) = buf.get(..n) {
                                    core.receive(&socket, bytes, source)?;
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                _ = &mut sleep => {}
            }
        }
        Ok(())
    }
    .await;
    core.rtc.disconnect();
    let _ = core.drain(&socket);
    let mut s = lock(&core.stats);
    if let Err(e) = result {
        s.error(format!("client stopped: {e:#}"));
    }
    s.stopped = true;
}

/// A pushed track.
#[derive(Clone, Debug)]
pub struct Pushed {
    pub track_name: String,
    pub mid: String,
    pub kind: MediaKind,
}

/// A pulled track: the mid the SFU gave it.
#[derive(Clone, Debug)]
pub struct Pulled {
    pub session_id: String,
    pub track_name: String,
    pub mid: String,
}

/// The handle of a client task. Dropping it stops the task.
pub struct Client {
    name: String,
    jobs: mpsc::Sender<Job>,
    stats: Arc<Mutex<ClientStats>>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    /// A client with one UDP socket on 127.0.0.1 (its host candidate), spawned on the current
    /// tokio runtime.
    pub async fn start(cfg: ClientConfig) -> anyhow::Result<Client> {
        clock_origin();
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .context("binding the client UDP socket")?;
        let local = socket.local_addr()?;
        let now = Instant::now();
        let mut rtc = RtcConfig::new().build(now);
        let candidate = Candidate::host(local, "udp").context("host candidate")?;
        rtc.add_local_candidate(candidate)
            .ok_or_else(|| anyhow!("str0m rejected the host candidate {local}"))?;
        let stats = Arc::new(Mutex::new(ClientStats::new()));
        let core = Core {
            rtc,
            local,
            stats: stats.clone(),
            sources: Vec::new(),
            pending: None,
            next_timeout: now,
            video: cfg.video,
            raw_samples: cfg.raw_samples,
        };
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let task = tokio::spawn(run(core, socket, rx, cfg.lifetime));
        Ok(Client {
            name: cfg.name,
            jobs: tx,
            stats,
            local,
            task,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// A snapshot of everything recorded.
    pub fn stats(&self) -> ClientStats {
        lock(&self.stats).clone()
    }

    /// Read the stats under the lock without cloning them.
    pub fn with_stats<R>(&self, f: impl FnOnce(&ClientStats) -> R) -> R {
        f(&lock(&self.stats))
    }

    /// Start a measurement window: reset every windowed counter (frames, loss, latency, raw
    /// samples, sent frames). First-frame times and sequence positions are kept.
    pub fn reset_window(&self) {
        let mut s = lock(&self.stats);
        for t in s.rx.values_mut() {
            t.window = RxWindow::default();
        }
        for t in s.tx.values_mut() {
            t.window_frames = 0;
            t.window_keyframes = 0;
            t.window_bytes = 0;
        }
        s.raw.clear();
    }

    /// Run `f` on the client task and wait (bounded) for its result.
    async fn run<R, F>(&self, f: F) -> anyhow::Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Core) -> anyhow::Result<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |c: &mut Core| {
            let _ = tx.send(f(c));
        });
        let gone = || {
            anyhow!(
                "client {}: task is gone: {:?}",
                self.name,
                self.stats().errors
            )
        };
        tokio::time::timeout(COMMAND_TIMEOUT, self.jobs.send(job))
            .await
            .map_err(|_| anyhow!("client {}: command queue full", self.name))?
            .map_err(|_| gone())?;
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(gone()),
            Err(_) => bail!("client {}: command timed out", self.name),
        }
    }

    /// Poll the stats every 10 ms until `pred` holds or `timeout` passes.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&ClientStats) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let max_polls = timeout.as_millis() / WAIT_STEP.as_millis() + 2;
        for _ in 0..max_polls {
            if self.with_stats(&pred) {
                return Ok(());
            }
            if Instant::now() >= deadline || self.with_stats(|s| s.stopped) {
                break;
            }
            tokio::time::sleep(WAIT_STEP).await;
        }
        if self.with_stats(&pred) {
            return Ok(());
        }
        let s = self.stats();
        bail!(
            "client {}: timed out after {timeout:?} waiting for {what} (connected: {}, rx mids: {:?}, errors: {:?})",
            self.name,
            s.connected_at.is_some(),
            s.rx.keys().collect::<Vec<_>>(),
            s.errors
        )
    }

    pub async fn wait_connected(&self, timeout: Duration) -> anyhow::Result<()> {
        self.wait_until("the connection", timeout, |s| s.connected_at.is_some())
            .await
    }

    /// Publish: an offer with one SendOnly m-line per track, `POST tracks/new` with local
    /// items, accept the answer. Sending starts with [`Client::start_sending`].
    pub async fn push(
        &self,
        api: &CallsClient,
        session_id: &str,
        tracks: &[(String, MediaKind)],
    ) -> anyhow::Result<Vec<Pushed>> {
        let kinds: Vec<MediaKind> = tracks.iter().map(|(_, k)| *k).collect();
        let (mids, offer) = self
            .run(move |c| {
                if c.pending.is_some() {
                    bail!("an offer is already pending");
                }
                let mut sdp = c.rtc.sdp_api();
                let mids: Vec<Mid> = kinds
                    .iter()
                    .map(|k| sdp.add_media(*k, Direction::SendOnly, None, None, None))
                    .collect();
                let (offer, pending) = sdp.apply().ok_or_else(|| anyhow!("no offer"))?;
                c.pending = Some(pending);
                Ok((
                    mids.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
                    offer.to_sdp_string(),
                ))
            })
            .await?;
        let items = tracks
            .iter()
            .zip(&mids)
            .map(|((name, _), mid)| TrackObject::local(mid, name))
            .collect();
        let req = TracksRequest {
            session_description: Some(SessionDescription::offer(offer)),
            tracks: Some(items),
            auto_discover: None,
        };
        let answer = async {
            let resp = api.tracks_new(session_id, &req).await?;
            if let Some(code) = &resp.error_code {
                bail!("push rejected: {code}: {:?}", resp.error_description);
            }
            let sd = resp
                .session_description
                .ok_or_else(|| anyhow!("push answer carries no sessionDescription"))?;
            if sd.kind != "answer" {
                bail!("push: expected an answer, got {:?}", sd.kind);
            }
            SdpAnswer::from_sdp_string(&sd.sdp).context("parsing the SFU answer")
        }
        .await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                self.run(|c| {
                    c.pending = None;
                    Ok(())
                })
                .await?;
                return Err(e);
            }
        };
        self.run(move |c| {
            let pending = c
                .pending
                .take()
                .ok_or_else(|| anyhow!("no pending offer"))?;
            c.rtc.sdp_api().accept_answer(pending, answer)?;
            Ok(())
        })
        .await?;
        Ok(tracks
            .iter()
            .zip(mids)
            .map(|((name, kind), mid)| Pushed {
                track_name: name.clone(),
                mid,
                kind: *kind,
            })
            .collect())
    }

    /// Start the synthetic sources on these mids (frames go out once connected).
    pub async fn start_sending(&self, mids: &[String]) -> anyhow::Result<()> {
        let mids: Vec<Mid> = mids.iter().map(|m| Mid::from(m.as_str())).collect();
        self.run(move |c| {
            for mid in mids {
                let kind = c
                    .rtc
                    .media(mid)
                    .ok_or_else(|| anyhow!("no media with mid {mid}"))?
                    .kind();
                c.sources.retain(|s| s.mid != mid);
                c.sources.push(Source {
                    mid,
                    kind,
                    pt: None,
                    seq: 0,
                    next_due: Instant::now(),
                    last_keyframe: None,
                    force_keyframe: true,
                });
            }
            Ok(())
        })
        .await
    }

    /// Subscribe: `POST tracks/new` with remote items (no SDP), answer the SFU's offer with
    /// `PUT renegotiate`. Items answered `not_found_track_error` are retried for a few
    /// seconds. The pull start time (start of the first tracks/new) is recorded per mid for
    /// the first-frame figures. Fails unless every item got a mid.
    pub async fn pull(
        &self,
        api: &CallsClient,
        session_id: &str,
        remote: &[(String, String)],
    ) -> anyhow::Result<Vec<Pulled>> {
        let started = Instant::now();
        let deadline = started + NOT_FOUND_RETRY;
        let max_attempts = NOT_FOUND_RETRY.as_millis() / NOT_FOUND_STEP.as_millis() + 2;
        let mut pending: Vec<(String, String)> = remote.to_vec();
        let mut pulled = Vec::new();
        for attempt in 1..=max_attempts {
            let req = TracksRequest::pull(&pending);
            let resp = api
                .tracks_new(session_id, &req)
                .await
                .with_context(|| format!("{}: pull (attempt {attempt})", self.name))?;
            if let Some(code) = &resp.error_code {
                bail!("pull rejected: {code}: {:?}", resp.error_description);
            }
            let mut again = Vec::new();
            let mut new_mids = Vec::new();
            for item in resp.tracks {
                let sid = item.session_id.clone().unwrap_or_default();
                let name = item.track_name.clone().unwrap_or_default();
                match (&item.error_code, item.mid.as_deref()) {
                    (Some(code), _) if code == "not_found_track_error" => again.push((sid, name)),
                    (Some(code), _) => {
                        bail!("pull of {name}: {code}: {:?}", item.error_description)
                    }
                    (None, Some(mid)) if !mid.is_empty() => {
                        new_mids.push(mid.to_string());
                        pulled.push(Pulled {
                            session_id: sid,
                            track_name: name,
                            mid: mid.to_string(),
                        });
                    }
                    (None, _) => bail!("pull item without a mid: {item:?}"),
                }
            }
            if let Some(sd) = resp.session_description {
                if sd.kind != "offer" {
                    bail!("pull: expected an SFU offer, got {:?}", sd.kind);
                }
                let offer = SdpOffer::from_sdp_string(&sd.sdp).context("parsing the SFU offer")?;
                let answer = self
                    .run(move |c| {
                        let answer = c.rtc.sdp_api().accept_offer(offer)?;
                        let mut s = lock(&c.stats);
                        for mid in new_mids {
                            let kind = c
                                .rtc
                                .media(Mid::from(mid.as_str()))
                                .map_or(MediaKind::Audio, |m| m.kind());
                            s.rx.entry(mid).or_insert_with(|| TrackRx {
                                kind,
                                pull_started: Some(started),
                                first_frame_at: None,
                                first_keyframe_at: None,
                                highest_seq: None,
                                total_frames: 0,
                                stamped: 0,
                                first_frame_age_us: None,
                                window: RxWindow::default(),
                            });
                        }
                        Ok(answer.to_sdp_string())
                    })
                    .await?;
                api.renegotiate(session_id, &answer)
                    .await
                    .with_context(|| format!("{}: renegotiate", self.name))?;
            } else if !new_mids.is_empty() {
                bail!("pull: new mids {new_mids:?} without an SFU offer");
            }
            if again.is_empty() {
                return Ok(pulled);
            }
            if Instant::now() >= deadline {
                bail!("tracks not found after {NOT_FOUND_RETRY:?}: {again:?}");
            }
            pending = again;
            tokio::time::sleep(NOT_FOUND_STEP).await;
        }
        bail!("pull: gave up after {max_attempts} attempts")
    }

    /// `PUT tracks/close` with force (no SDP) for these mids.
    pub async fn close_force(
        &self,
        api: &CallsClient,
        session_id: &str,
        mids: &[String],
    ) -> anyhow::Result<()> {
        let refs: Vec<&str> = mids.iter().map(String::as_str).collect();
        let resp = api.tracks_close(session_id, &refs, true, None).await?;
        if let Some(code) = resp.error_code {
            bail!("tracks/close: {code}: {:?}", resp.error_description);
        }
        Ok(())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // Closing the command channel ends the task at its next turn; the abort is for a task
        // that is not being polled any more (runtime shutting down).
        let (tx, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.jobs, tx));
        if self.task.is_finished() {
            return;
        }
        let handle = self.task.abort_handle();
        let stats = self.stats.clone();
        // Give the task a moment to disconnect cleanly, then make sure it is gone.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if !lock(&stats).stopped {
                    handle.abort();
                }
            });
        } else {
            handle.abort();
        }
    }
}
