//! A WebRTC test client built on str0m: full ICE (not ice-lite), one UDP socket on 127.0.0.1
//! (or on [`PEER_IP_ENV`] when set), driven by a dedicated std thread. The async side talks to it through a command channel; the
//! `Rtc` never crosses an `.await`.
//!
//! After every mutation of the `Rtc` (a command, a media write, an input) the driver drains
//! `poll_output` until `Output::Timeout`, as str0m requires.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use tokio::sync::oneshot;

use crate::api::{CallsClient, SessionDescription, TrackObject, TracksRequest, TracksResponse};

/// A peer thread never outlives this, whatever the test does.
const MAX_PEER_LIFETIME: Duration = Duration::from_secs(600);
/// How often the driver looks at its command channel when nothing else happens.
const COMMAND_POLL: Duration = Duration::from_millis(5);
/// Bound on outputs drained after one mutation.
const MAX_OUTPUTS_PER_DRAIN: usize = 100_000;
/// Bound on commands handled per loop turn.
const MAX_COMMANDS_PER_TURN: usize = 64;
/// How long an async call waits for the driver thread to run a command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Audio: one ~100-byte "Opus" frame every 20 ms.
const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
const AUDIO_FRAME_BYTES: usize = 100;
/// Video: one VP8 frame every 33 ms, a keyframe at the start and every 2 s.
const VIDEO_INTERVAL: Duration = Duration::from_millis(33);
const KEYFRAME_INTERVAL: Duration = Duration::from_secs(2);

/// Where a timestamped peer ([`PeerOptions::timestamped`]) puts the 8-byte send timestamp in
/// every frame it sends: right after the codec header bytes the SFU and str0m inspect (a VP8
/// keyframe's frame tag, start code and size take 10 bytes; Opus uses byte 0), so keyframe
/// detection is unaffected. Big-endian microseconds since [`clock_origin`].
pub const TIMESTAMP_OFFSET: usize = 10;
/// Bound on the latency samples a peer keeps before they are taken.
const MAX_LATENCY_SAMPLES: usize = 1_000_000;

static CLOCK_ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Env: the IP every peer of this process binds to and offers as its host candidate, instead of
/// 127.0.0.1. Set by tests that re-run themselves inside a network namespace (`tests/src/netns.rs`),
/// where the nodes are reached on a veth address.
pub const PEER_IP_ENV: &str = "TRACKMESH_TEST_PEER_IP";

/// The IP peers bind to: [`PEER_IP_ENV`] or 127.0.0.1.
pub fn peer_ip() -> anyhow::Result<IpAddr> {
    match std::env::var(PEER_IP_ENV) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{PEER_IP_ENV}={v:?} is not an IP address")),
        Err(_) => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    }
}

/// The process-wide origin of the timestamps embedded by timestamped peers.
pub fn clock_origin() -> Instant {
    *CLOCK_ORIGIN.get_or_init(Instant::now)
}

/// Microseconds from [`clock_origin`] to `t` (0 when `t` is earlier).
pub fn micros_since_origin(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(clock_origin()).as_micros()).unwrap_or(u64::MAX)
}

/// Options of a [`Peer`]; the default is the plain test client.
#[derive(Clone, Debug, Default)]
pub struct PeerOptions {
    /// Every sent frame carries its send time (8 bytes at [`TIMESTAMP_OFFSET`]), and every
    /// received frame's embedded send time is read back into a [`LatencySample`]. Both ends of
    /// a measurement must be timestamped peers of the same process.
    pub timestamped: bool,
}

/// One frame received by a timestamped peer.
#[derive(Clone, Debug)]
pub struct LatencySample {
    pub mid: String,
    pub kind: MediaKind,
    pub keyframe: bool,
    /// The embedded send time, microseconds since [`clock_origin`].
    pub sent_us: u64,
    /// When str0m handed the complete frame over (the driver reads the socket as soon as a
    /// datagram arrives), microseconds since [`clock_origin`].
    pub received_us: u64,
}

impl LatencySample {
    /// One-way latency in microseconds (negative only if the payload was not timestamped).
    pub fn latency_us(&self) -> i64 {
        self.received_us as i64 - self.sent_us as i64
    }
}

/// What a peer saw on one mid.
#[derive(Clone, Debug, Default)]
pub struct MidCounters {
    pub bytes: u64,
    pub frames: u64,
    pub keyframes: u64,
    /// When the first frame / keyframe on this mid was handed over by str0m.
    pub first_frame_at: Option<Instant>,
    pub first_keyframe_at: Option<Instant>,
}

/// A snapshot of what the peer did and saw.
#[derive(Clone, Debug, Default)]
pub struct PeerStats {
    /// str0m emitted `Event::Connected` (ICE + DTLS done).
    pub connected: bool,
    /// Last ICE connection state, as Debug text.
    pub ice_state: String,
    /// Received media (Event::MediaData), per mid.
    pub rx: HashMap<String, MidCounters>,
    /// Sent media (frames handed to Writer::write successfully), per mid.
    pub tx: HashMap<String, MidCounters>,
    /// Media added by negotiation: (mid, kind, direction) as text.
    pub media_added: Vec<(String, String, String)>,
    /// Keyframe requests (PLI/FIR) received from the remote, per mid.
    pub keyframe_requests: HashMap<String, u64>,
    /// Errors from str0m or the socket; the first fatal one stops the driver.
    pub errors: Vec<String>,
    /// The driver thread stopped.
    pub stopped: bool,
}

impl PeerStats {
    pub fn rx_bytes(&self, mid: &str) -> u64 {
        self.rx.get(mid).map_or(0, |c| c.bytes)
    }
    pub fn rx_frames(&self, mid: &str) -> u64 {
        self.rx.get(mid).map_or(0, |c| c.frames)
    }
    pub fn rx_keyframes(&self, mid: &str) -> u64 {
        self.rx.get(mid).map_or(0, |c| c.keyframes)
    }
    pub fn tx_frames(&self, mid: &str) -> u64 {
        self.tx.get(mid).map_or(0, |c| c.frames)
    }
    pub fn tx_bytes(&self, mid: &str) -> u64 {
        self.tx.get(mid).map_or(0, |c| c.bytes)
    }
    pub fn total_rx_bytes(&self) -> u64 {
        self.rx.values().map(|c| c.bytes).sum()
    }
}

/// A synthetic media source on one sending mid.
struct Source {
    kind: MediaKind,
    next_due: Instant,
    frame_no: u64,
    last_keyframe: Option<Instant>,
    force_keyframe: bool,
}

/// The state owned by the driver thread. Commands get `&mut Driver`.
pub struct Driver {
    rtc: Rtc,
    socket: UdpSocket,
    local_addr: SocketAddr,
    stats: Arc<Mutex<PeerStats>>,
    sources: HashMap<Mid, Source>,
    pending: Option<SdpPendingOffer>,
    next_timeout: Instant,
    keyframe_interval: Duration,
    /// See [`PeerOptions::timestamped`].
    timestamped: bool,
    latency: Arc<Mutex<Vec<LatencySample>>>,
}

type Job = Box<dyn FnOnce(&mut Driver) + Send>;

enum Command {
    Run(Job),
    Shutdown,
}

fn lock(stats: &Arc<Mutex<PeerStats>>) -> MutexGuard<'_, PeerStats> {
    // A poisoned lock only means another thread panicked while holding it; the data is plain counters.
    stats.lock().unwrap_or_else(|e| e.into_inner())
}

impl Driver {
    fn record_error(&self, e: impl std::fmt::Display) {
        let mut s = lock(&self.stats);
        if s.errors.len() < 100 {
            s.errors.push(e.to_string());
        }
    }

    /// Drain `poll_output` until `Output::Timeout`. Errors are fatal for the Rtc.
    fn drain(&mut self) -> anyhow::Result<()> {
        for _ in 0..MAX_OUTPUTS_PER_DRAIN {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => {
                    self.next_timeout = t;
                    return Ok(());
                }
                Output::Transmit(t) => {
                    if let Err(e) = self.socket.send_to(&t.contents, t.destination) {
                        self.record_error(format!("send_to {}: {e}", t.destination));
                    }
                }
                Output::Event(ev) => self.on_event(ev),
            }
        }
        bail!("poll_output did not reach Output::Timeout within {MAX_OUTPUTS_PER_DRAIN} outputs")
    }

    fn on_event(&mut self, ev: Event) {
        let mut s = lock(&self.stats);
        match ev {
            Event::Connected => s.connected = true,
            Event::IceConnectionStateChange(st) => s.ice_state = format!("{st:?}"),
            Event::MediaAdded(m) => s.media_added.push((
                m.mid.to_string(),
                m.kind.to_string(),
                m.direction.to_string(),
            )),
            Event::MediaData(d) => {
                let now = Instant::now();
                let keyframe = d.is_keyframe();
                let c = s.rx.entry(d.mid.to_string()).or_default();
                c.bytes += d.data.len() as u64;
                c.frames += 1;
                c.first_frame_at.get_or_insert(now);
                if keyframe {
                    c.keyframes += 1;
                    c.first_keyframe_at.get_or_insert(now);
                }
                drop(s);
                if self.timestamped
                    && let Some(sent_us) = read_timestamp(&d.data)
                {
                    let kind = if d.params.spec().codec.is_audio() {
                        MediaKind::Audio
                    } else {
                        MediaKind::Video
                    };
                    let mut samples = self.latency.lock().unwrap_or_else(|e| e.into_inner());
                    if samples.len() < MAX_LATENCY_SAMPLES {
                        samples.push(LatencySample {
                            mid: d.mid.to_string(),
                            kind,
                            keyframe,
                            sent_us,
                            received_us: micros_since_origin(now),
                        });
                    }
                }
            }
            Event::KeyframeRequest(r) => {
                *s.keyframe_requests.entry(r.mid.to_string()).or_default() += 1;
                drop(s);
                if let Some(src) = self.sources.get_mut(&r.mid) {
                    src.force_keyframe = true;
                }
            }
            _ => {}
        }
    }

    /// Write every media frame that is due. Each write is followed by a drain.
    fn send_due_media(&mut self) -> anyhow::Result<()> {
        if !self.rtc.is_connected() {
            return Ok(());
        }
        let now = Instant::now();
        let due: Vec<Mid> = self
            .sources
            .iter()
            .filter(|(_, s)| s.next_due <= now)
            .map(|(m, _)| *m)
            .collect();
        for mid in due {
            let Some(src) = self.sources.get_mut(&mid) else {
                continue;
            };
            let (codec, interval, clock, ticks) = match src.kind {
                MediaKind::Audio => (Codec::Opus, AUDIO_INTERVAL, Frequency::FORTY_EIGHT_KHZ, 960),
                MediaKind::Video => (Codec::Vp8, VIDEO_INTERVAL, Frequency::NINETY_KHZ, 3000),
            };
            let keyframe = src.kind == MediaKind::Video
                && (src.force_keyframe
                    || src
                        .last_keyframe
                        .is_none_or(|t| now.duration_since(t) >= self.keyframe_interval));
            let frame_no = src.frame_no;
            let mut data = match src.kind {
                MediaKind::Audio => audio_frame(frame_no),
                MediaKind::Video => vp8_frame(frame_no, keyframe),
            };
            if self.timestamped {
                write_timestamp(&mut data, micros_since_origin(Instant::now()));
            }
            // Do not fall behind by more than one frame (e.g. after a stall).
            src.next_due = (src.next_due + interval).max(now);
            let rtp_time = MediaTime::new(frame_no * ticks, clock);

            let Some(writer) = self.rtc.writer(mid) else {
                self.record_error(format!("no writer for mid {mid}"));
                self.sources.remove(&mid);
                continue;
            };
            let Some(pt) = writer
                .payload_params()
                .find(|p| p.spec().codec == codec)
                .map(|p| p.pt())
            else {
                drop(writer);
                self.record_error(format!("no {codec:?} payload type negotiated on mid {mid}"));
                self.sources.remove(&mid);
                continue;
            };
            let len = data.len() as u64;
            let res = writer.write(pt, now, rtp_time, data);
            if let Some(src) = self.sources.get_mut(&mid) {
                src.frame_no += 1;
                if keyframe {
                    src.last_keyframe = Some(now);
                    src.force_keyframe = false;
                }
            }
            match res {
                Ok(()) => {
                    let mut s = lock(&self.stats);
                    let c = s.tx.entry(mid.to_string()).or_default();
                    c.frames += 1;
                    c.bytes += len;
                    if keyframe {
                        c.keyframes += 1;
                    }
                }
                Err(e) => self.record_error(format!("write on mid {mid}: {e}")),
            }
            self.drain()?;
        }
        Ok(())
    }

    fn next_media_due(&self) -> Option<Instant> {
        // Nothing is written before the connection is up; do not spin on a past due time.
        if !self.rtc.is_connected() {
            return None;
        }
        self.sources.values().map(|s| s.next_due).min()
    }

    fn run(mut self, commands: mpsc::Receiver<Command>) {
        let deadline = Instant::now() + MAX_PEER_LIFETIME;
        let mut buf = vec![0u8; 2000];
        let result: anyhow::Result<()> = (|| {
            loop {
                if Instant::now() > deadline {
                    bail!("peer lifetime {MAX_PEER_LIFETIME:?} exceeded");
                }
                self.drain()?;

                for _ in 0..MAX_COMMANDS_PER_TURN {
                    match commands.try_recv() {
                        Ok(Command::Run(job)) => {
                            job(&mut self);
                            self.drain()?;
                        }
                        Ok(Command::Shutdown) | Err(mpsc::TryRecvError::Disconnected) => {
                            self.rtc.disconnect();
                            return Ok(());
                        }
                        Err(mpsc::TryRecvError::Empty) => break,
                    }
                }

                self.send_due_media()?;

                let now = Instant::now();
                if self.next_timeout <= now {
                    self.rtc.handle_input(Input::Timeout(now))?;
                    continue;
                }
                let mut wake = self.next_timeout.min(now + COMMAND_POLL);
                if let Some(due) = self.next_media_due() {
                    wake = wake.min(due);
                }
                let wait = wake.saturating_duration_since(now);
                if wait.is_zero() {
                    self.rtc.handle_input(Input::Timeout(now))?;
                    continue;
                }
                self.socket.set_read_timeout(Some(wait))?;
                buf.resize(2000, 0);
                match self.socket.recv_from(&mut buf) {
                    Ok((n, source)) => {
                        let Some(bytes) = buf.get(..n) else { continue };
                        // Datagrams str0m cannot classify are dropped, never fatal.
                        let Ok(contents) = bytes.try_into() else {
                            continue;
                        };
                        let input = Input::Receive(
                            Instant::now(),
                            Receive {
                                proto: Protocol::Udp,
                                source,
                                destination: self.local_addr,
                                contents,
                            },
                        );
                        if self.rtc.accepts(&input) {
                            self.rtc.handle_input(input)?;
                        }
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        self.rtc.handle_input(Input::Timeout(Instant::now()))?;
                    }
                    Err(e) => {
                        // e.g. ICMP port unreachable surfacing as ECONNREFUSED: keep going.
                        self.record_error(format!("recv_from: {e}"));
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        })();
        if let Err(e) = result {
            self.record_error(format!("driver stopped: {e:#}"));
        }
        lock(&self.stats).stopped = true;
    }
}

/// Deterministic filler bytes.
fn filler(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

fn audio_frame(frame_no: u64) -> Vec<u8> {
    let mut f = filler(frame_no, AUDIO_FRAME_BYTES);
    // Opus TOC byte: config 15 (CELT FB 20 ms), mono, one frame.
    f[0] = 0x78;
    f
}

/// A VP8-looking frame: the frame tag's bit 0 is 0 for a keyframe, 1 otherwise.
fn vp8_frame(frame_no: u64, keyframe: bool) -> Vec<u8> {
    let len = if keyframe {
        3000
    } else {
        1000 + (frame_no as usize * 137) % 1000
    };
    let mut f = filler(frame_no, len);
    // frame tag: bit0 key(0)/inter(1), bits 1-3 version 0, bit 4 show_frame 1.
    f[0] = if keyframe { 0x10 } else { 0x11 };
    if keyframe {
        // start code and 320x240.
        f[3..10].copy_from_slice(&[0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00]);
    }
    f
}

/// Put `micros` at [`TIMESTAMP_OFFSET`] (every synthetic frame is long enough).
fn write_timestamp(frame: &mut [u8], micros: u64) {
    if let Some(slot) = frame.get_mut(TIMESTAMP_OFFSET..TIMESTAMP_OFFSET + 8) {
        slot.copy_from_slice(&micros.to_be_bytes());
    }
}

/// The timestamp written by [`write_timestamp`], if the frame is long enough.
fn read_timestamp(frame: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = frame
        .get(TIMESTAMP_OFFSET..TIMESTAMP_OFFSET + 8)?
        .try_into()
        .ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// A pushed (published) track.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushedTrack {
    pub track_name: String,
    pub mid: String,
    pub kind: MediaKind,
}

/// The str0m test client. Dropping it stops its thread.
pub struct Peer {
    name: String,
    commands: mpsc::Sender<Command>,
    stats: Arc<Mutex<PeerStats>>,
    latency: Arc<Mutex<Vec<LatencySample>>>,
    local_addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl Peer {
    /// A new peer with one UDP socket on 127.0.0.1 (or [`PEER_IP_ENV`]) as its host candidate.
    pub fn new(name: &str) -> anyhow::Result<Peer> {
        Self::with_options(name, PeerOptions::default())
    }

    /// A new peer with these options (see [`PeerOptions`]).
    pub fn with_options(name: &str, options: PeerOptions) -> anyhow::Result<Peer> {
        // Fix the timestamp origin before anything is sent.
        clock_origin();
        let ip = peer_ip()?;
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding the peer UDP socket on {ip}"))?;
        let local_addr = socket.local_addr()?;
        let now = Instant::now();
        let mut rtc = RtcConfig::new().build(now);
        let candidate = Candidate::host(local_addr, "udp").context("host candidate")?;
        rtc.add_local_candidate(candidate)
            .ok_or_else(|| anyhow!("str0m rejected the host candidate {local_addr}"))?;
        let stats = Arc::new(Mutex::new(PeerStats::default()));
        let latency = Arc::new(Mutex::new(Vec::new()));
        let driver = Driver {
            rtc,
            socket,
            local_addr,
            stats: stats.clone(),
            sources: HashMap::new(),
            pending: None,
            next_timeout: now,
            keyframe_interval: KEYFRAME_INTERVAL,
            timestamped: options.timestamped,
            latency: latency.clone(),
        };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("peer-{name}"))
            .spawn(move || driver.run(rx))
            .context("spawning the peer thread")?;
        Ok(Peer {
            name: name.to_string(),
            commands: tx,
            stats,
            latency,
            local_addr,
            thread: Some(thread),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Run `f` on the driver thread (the only place the `Rtc` lives) and wait for its result.
    pub async fn run<R, F>(&self, f: F) -> anyhow::Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Driver) -> anyhow::Result<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |d: &mut Driver| {
            let _ = tx.send(f(d));
        });
        self.commands.send(Command::Run(job)).map_err(|_| {
            anyhow!(
                "peer {} driver thread is gone: {:?}",
                self.name,
                self.stats().errors
            )
        })?;
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => bail!(
                "peer {} driver dropped the command: {:?}",
                self.name,
                self.stats().errors
            ),
            Err(_) => bail!(
                "peer {} command timed out after {COMMAND_TIMEOUT:?}",
                self.name
            ),
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> PeerStats {
        lock(&self.stats).clone()
    }

    /// The latency samples collected since the last call (timestamped peers only).
    pub fn take_latency_samples(&self) -> Vec<LatencySample> {
        std::mem::take(&mut *self.latency.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Poll the counters every 20 ms until `pred` holds or `timeout` passes.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&PeerStats) -> bool,
    ) -> anyhow::Result<PeerStats> {
        let deadline = Instant::now() + timeout;
        let step = Duration::from_millis(20);
        let max_polls = timeout.as_millis() / step.as_millis() + 2;
        for _ in 0..max_polls {
            let s = self.stats();
            if pred(&s) {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(step).await;
        }
        let s = self.stats();
        if pred(&s) {
            return Ok(s);
        }
        bail!(
            "peer {}: timed out after {timeout:?} waiting for {what}; stats: {s:#?}",
            self.name
        )
    }

    pub async fn wait_connected(&self, timeout: Duration) -> anyhow::Result<PeerStats> {
        self.wait_until("connected", timeout, |s| s.connected).await
    }

    // ---- SDP level --------------------------------------------------------------------------

    /// add_media(kind, SendOnly) for each kind, apply() → offer. Returns (mids, offer SDP).
    pub async fn create_send_offer(
        &self,
        kinds: &[MediaKind],
    ) -> anyhow::Result<(Vec<String>, String)> {
        let kinds = kinds.to_vec();
        self.run(move |d| {
            if d.pending.is_some() {
                bail!("an offer is already pending");
            }
            let mut api = d.rtc.sdp_api();
            let mids: Vec<Mid> = kinds
                .iter()
                .map(|k| api.add_media(*k, Direction::SendOnly, None, None, None))
                .collect();
            let (offer, pending) = api
                .apply()
                .ok_or_else(|| anyhow!("apply() produced no offer"))?;
            d.pending = Some(pending);
            Ok((
                mids.iter().map(|m| m.to_string()).collect(),
                offer.to_sdp_string(),
            ))
        })
        .await
    }

    /// Accept the answer to our pending offer.
    pub async fn accept_answer(&self, sdp: &str) -> anyhow::Result<()> {
        let answer = SdpAnswer::from_sdp_string(sdp).context("parsing the SFU answer")?;
        self.run(move |d| {
            let pending = d
                .pending
                .take()
                .ok_or_else(|| anyhow!("no pending offer"))?;
            d.rtc.sdp_api().accept_answer(pending, answer)?;
            Ok(())
        })
        .await
    }

    /// Forget a pending offer (e.g. after the remote rejected it).
    pub async fn drop_pending_offer(&self) -> anyhow::Result<()> {
        self.run(|d| {
            d.pending = None;
            Ok(())
        })
        .await
    }

    /// Accept a remote offer; returns our answer SDP.
    pub async fn accept_offer(&self, sdp: &str) -> anyhow::Result<String> {
        let offer = SdpOffer::from_sdp_string(sdp).context("parsing the SFU offer")?;
        self.run(move |d| {
            let answer = d.rtc.sdp_api().accept_offer(offer)?;
            Ok(answer.to_sdp_string())
        })
        .await
    }

    /// stop_media (stop = true) or set_direction(Inactive) for these mids, apply() → offer.
    pub async fn close_offer(&self, mids: &[&str], stop: bool) -> anyhow::Result<String> {
        let mids: Vec<Mid> = mids.iter().map(|m| Mid::from(*m)).collect();
        self.run(move |d| {
            if d.pending.is_some() {
                bail!("an offer is already pending");
            }
            for m in &mids {
                d.sources.remove(m);
            }
            let mut api = d.rtc.sdp_api();
            for m in &mids {
                if stop {
                    api.stop_media(*m);
                } else {
                    api.set_direction(*m, Direction::Inactive);
                }
            }
            let (offer, pending) = api
                .apply()
                .ok_or_else(|| anyhow!("no SDP change for mids {mids:?}"))?;
            d.pending = Some(pending);
            Ok(offer.to_sdp_string())
        })
        .await
    }

    /// Start the synthetic media source on these (sending) mids.
    pub async fn start_sending(&self, mids: &[&str]) -> anyhow::Result<()> {
        let mids: Vec<Mid> = mids.iter().map(|m| Mid::from(*m)).collect();
        self.run(move |d| {
            for mid in mids {
                let media = d
                    .rtc
                    .media(mid)
                    .ok_or_else(|| anyhow!("no media with mid {mid}"))?;
                let kind = media.kind();
                d.sources.insert(
                    mid,
                    Source {
                        kind,
                        next_due: Instant::now(),
                        frame_no: 0,
                        last_keyframe: None,
                        force_keyframe: true,
                    },
                );
            }
            Ok(())
        })
        .await
    }

    /// Stop the synthetic media source on these mids (the transport stays up).
    pub async fn stop_sending(&self, mids: &[&str]) -> anyhow::Result<()> {
        let mids: Vec<Mid> = mids.iter().map(|m| Mid::from(*m)).collect();
        self.run(move |d| {
            for m in &mids {
                d.sources.remove(m);
            }
            Ok(())
        })
        .await
    }

    /// Periodic keyframe interval of the video sources (default 2 s). Keyframes are also sent
    /// at the start and whenever the remote asks (PLI/FIR).
    pub async fn set_keyframe_interval(&self, interval: Duration) -> anyhow::Result<()> {
        self.run(move |d| {
            d.keyframe_interval = interval;
            Ok(())
        })
        .await
    }

    /// Stop every synthetic media source.
    pub async fn stop_all_sending(&self) -> anyhow::Result<()> {
        self.run(|d| {
            d.sources.clear();
            Ok(())
        })
        .await
    }

    // ---- Calls API flows --------------------------------------------------------------------

    /// Publish: offer with one SendOnly m-line per track, `POST tracks/new` with
    /// `{location:"local", mid, trackName}` items, accept the answer. Does not start sending.
    pub async fn push(
        &self,
        api: &CallsClient,
        session_id: &str,
        tracks: &[(&str, MediaKind)],
    ) -> anyhow::Result<Vec<PushedTrack>> {
        let kinds: Vec<MediaKind> = tracks.iter().map(|(_, k)| *k).collect();
        let (mids, offer) = self.create_send_offer(&kinds).await?;
        let items: Vec<TrackObject> = tracks
            .iter()
            .zip(&mids)
            .map(|((name, _), mid)| TrackObject::local(mid, name))
            .collect();
        let req = TracksRequest {
            session_description: Some(SessionDescription::offer(offer)),
            tracks: Some(items),
            auto_discover: None,
        };
        let resp = match api.tracks_new(session_id, &req).await {
            Ok(r) => r,
            Err(e) => {
                self.drop_pending_offer().await?;
                return Err(e);
            }
        };
        if let Some(code) = &resp.error_code {
            self.drop_pending_offer().await?;
            bail!("push rejected: {code}: {:?}", resp.error_description);
        }
        let sd = resp
            .session_description
            .ok_or_else(|| anyhow!("push answer carries no sessionDescription"))?;
        if sd.kind != "answer" {
            bail!("push: expected an answer, got {:?}", sd.kind);
        }
        self.accept_answer(&sd.sdp).await?;
        Ok(tracks
            .iter()
            .zip(mids)
            .map(|((name, kind), mid)| PushedTrack {
                track_name: name.to_string(),
                mid,
                kind: *kind,
            })
            .collect())
    }

    /// Subscribe: `POST tracks/new` with remote tracks (no SDP); if the SFU sends an offer,
    /// answer it and `PUT renegotiate`. Returns the tracks/new response (mids per item).
    pub async fn pull(
        &self,
        api: &CallsClient,
        session_id: &str,
        remote: &[(&str, &str)],
    ) -> anyhow::Result<TracksResponse> {
        let items = remote
            .iter()
            .map(|(sid, name)| TrackObject::remote(sid, name))
            .collect();
        let req = TracksRequest {
            session_description: None,
            tracks: Some(items),
            auto_discover: None,
        };
        let resp = api.tracks_new(session_id, &req).await?;
        if let Some(sd) = &resp.session_description {
            if sd.kind != "offer" {
                bail!("pull: expected an SFU offer, got {:?}", sd.kind);
            }
            let answer = self.accept_offer(&sd.sdp).await?;
            api.renegotiate(session_id, &answer).await?;
        } else if resp.requires_immediate_renegotiation == Some(true) {
            bail!("pull: requiresImmediateRenegotiation without a sessionDescription");
        }
        Ok(resp)
    }

    /// `PUT tracks/close` with force = true (no SDP).
    pub async fn close_force(
        &self,
        api: &CallsClient,
        session_id: &str,
        mids: &[&str],
    ) -> anyhow::Result<TracksResponse> {
        self.stop_sending(mids).await?;
        api.tracks_close(session_id, mids, true, None).await
    }

    /// `PUT tracks/close` with force = false: stop (or deactivate) the transceivers locally,
    /// send the new offer, accept the SFU's answer.
    pub async fn close_negotiated(
        &self,
        api: &CallsClient,
        session_id: &str,
        mids: &[&str],
        stop: bool,
    ) -> anyhow::Result<TracksResponse> {
        let offer = self.close_offer(mids, stop).await?;
        let resp = match api
            .tracks_close(session_id, mids, false, Some(&offer))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.drop_pending_offer().await?;
                return Err(e);
            }
        };
        let sd = resp
            .session_description
            .clone()
            .ok_or_else(|| anyhow!("negotiated close: no answer in the response"))?;
        if sd.kind != "answer" {
            bail!("negotiated close: expected an answer, got {:?}", sd.kind);
        }
        self.accept_answer(&sd.sdp).await?;
        Ok(resp)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            // The driver checks commands at least every COMMAND_POLL; bounded by its lifetime.
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframe_bit() {
        assert_eq!(vp8_frame(0, true)[0] & 1, 0);
        assert_eq!(vp8_frame(1, false)[0] & 1, 1);
        assert_eq!(audio_frame(3).len(), AUDIO_FRAME_BYTES);
        let sizes: Vec<usize> = (0..50).map(|n| vp8_frame(n, false).len()).collect();
        assert!(sizes.iter().all(|s| (1000..=3000).contains(s)));
    }

    #[test]
    fn timestamp_roundtrip_keeps_codec_headers() {
        let mut key = vp8_frame(0, true);
        let header: Vec<u8> = key[..TIMESTAMP_OFFSET].to_vec();
        write_timestamp(&mut key, 0x0102_0304_0506_0708);
        assert_eq!(&key[..TIMESTAMP_OFFSET], header.as_slice());
        assert_eq!(read_timestamp(&key), Some(0x0102_0304_0506_0708));
        let mut audio = audio_frame(1);
        write_timestamp(&mut audio, 42);
        assert_eq!(audio[0], 0x78);
        assert_eq!(read_timestamp(&audio), Some(42));
        assert_eq!(read_timestamp(&[0u8; 12]), None);
    }

    /// Two timestamped peers connected directly: every received frame yields a plausible
    /// latency sample, and keyframes are still recognised.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn timestamped_loopback() {
        let opts = PeerOptions { timestamped: true };
        let a = Peer::with_options("a", opts.clone()).expect("peer a");
        let b = Peer::with_options("b", opts).expect("peer b");
        let (mids, offer) = a
            .create_send_offer(&[MediaKind::Audio, MediaKind::Video])
            .await
            .expect("offer");
        let answer = b.accept_offer(&offer).await.expect("answer");
        a.accept_answer(&answer).await.expect("accept answer");
        b.wait_connected(Duration::from_secs(10))
            .await
            .expect("b connects");
        a.wait_connected(Duration::from_secs(10))
            .await
            .expect("a connects");
        let mid_refs: Vec<&str> = mids.iter().map(String::as_str).collect();
        a.start_sending(&mid_refs).await.expect("start sending");
        let vm = mids[1].clone();
        let s = b
            .wait_until("frames and a keyframe", Duration::from_secs(10), |s| {
                s.rx_frames(&vm) >= 5 && s.rx_keyframes(&vm) >= 1
            })
            .await
            .expect("media flows");
        assert!(s.rx.get(&vm).and_then(|c| c.first_keyframe_at).is_some());
        let samples = b.take_latency_samples();
        assert!(samples.len() >= 5, "{} samples", samples.len());
        assert!(samples.iter().any(|x| x.kind == MediaKind::Audio));
        assert!(samples.iter().any(|x| x.keyframe));
        for x in &samples {
            assert!((0..2_000_000).contains(&x.latency_us()), "{x:?}");
        }
        // The sender sees no samples (it receives nothing), and taking empties the buffer.
        assert!(a.take_latency_samples().is_empty());
    }

    /// Two peers connected directly: A offers audio+video SendOnly, B answers, A sends,
    /// B receives frames on both mids and a keyframe on video.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn peer_to_peer_loopback() {
        let a = Peer::new("a").expect("peer a");
        let b = Peer::new("b").expect("peer b");
        let (mids, offer) = a
            .create_send_offer(&[MediaKind::Audio, MediaKind::Video])
            .await
            .expect("offer");
        assert_eq!(mids.len(), 2);
        let answer = b.accept_offer(&offer).await.expect("answer");
        a.accept_answer(&answer).await.expect("accept answer");
        a.wait_connected(Duration::from_secs(10))
            .await
            .expect("a connects");
        b.wait_connected(Duration::from_secs(10))
            .await
            .expect("b connects");
        let mid_refs: Vec<&str> = mids.iter().map(String::as_str).collect();
        a.start_sending(&mid_refs).await.expect("start sending");
        let (am, vm) = (mids[0].clone(), mids[1].clone());
        let s = b
            .wait_until("audio and video frames", Duration::from_secs(10), |s| {
                s.rx_frames(&am) >= 10 && s.rx_frames(&vm) >= 5 && s.rx_keyframes(&vm) >= 1
            })
            .await
            .expect("media flows peer to peer");
        assert!(s.rx_bytes(&vm) > s.rx_bytes(&am));
        // Audio frames arrive with the size we sent.
        assert_eq!(s.rx_bytes(&am) / s.rx_frames(&am), AUDIO_FRAME_BYTES as u64);

        // Stop: B's counters stop growing.
        a.stop_all_sending().await.expect("stop");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = b.stats().total_rx_bytes();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(b.stats().total_rx_bytes(), before);
        assert!(a.stats().errors.is_empty(), "{:?}", a.stats().errors);
    }
}
