//! What str0m's RTP mode saves on the send side of a fan-out, against the frame mode the node
//! uses (issue 17, part 1), with str0m as released: no node, no sockets.
//!
//! Each subscriber is a pair of `Rtc`s connected in memory on a simulated clock: the sending one
//! configured as the node configures a session (ICE lite, stats every 2 s, 256 packets of video
//! resend history, then `set_rtx_cache(256, 625 ms, Some(0.15))` as `repair_window` does), and
//! a receiving "viewer" that offers receive-only VP8 without transport-cc, as the node leaves a
//! viewer's offer (`drop_twcc_where_client_only_receives`). ICE and DTLS complete before
//! anything is measured.
//!
//! - `str0m_modes/{frame,rtp}/N`: one 4,000-byte VP8 frame (about what the load generator's
//!   1 Mbit/s at 30 fps sends) to N subscribers. Frame mode writes the frame with
//!   `Writer::write` and str0m packetizes it per subscriber; RTP mode writes 4 packets,
//!   packetized once outside the loop as a forwarding SFU receives them, with
//!   `StreamTx::write_rtp`. Both then give the clock input the node gives after a write and
//!   drain `poll_output` to the timeout (`write_to_session`, `drain`). Throughput is in
//!   forwarded packets. Delivering the datagrams to the viewers, their RTCP back and the senders'
//!   timers run between frames, untimed (`iter_custom`).
//! - Memory, printed before the runs, for 1 and 50 subscribers (with 50, RTP mode hands every
//!   subscriber the same payload `Arc`s, which str0m's resend caches then share): heap bytes held
//!   per sending `Rtc` after set-up and after 2 s of video (60 frames at 30 fps, every datagram
//!   delivered and answered), measured by a counting global allocator as the bytes freed when
//!   the senders are dropped. Heap bytes asked for, not RSS: the allocator's own overhead and
//!   fragmentation come on top.
//! - `alternating`, printed before the runs: both modes at N = 50 in alternating blocks of 10
//!   frames, the comparison least disturbed by other load on a shared machine.
//! - Repair, printed before the runs: with every 10th media datagram to one viewer lost, that
//!   each mode answers the viewer's NACKs on the RTX SSRC and the viewer decodes every frame.

use std::alloc::System;
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpWrite, Ssrc};
use str0m::{Candidate, Event, Input, Output, Rtc};
use trackmesh_node::testing::synthetic_frame;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes of heap held right now by the whole process.
fn live_bytes() -> i64 {
    let s = GLOBAL.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64 + s.bytes_reallocated as i64
}

const FRAME_BYTES: usize = 4000;
/// RTP mode's packets per frame: what str0m's VP8 packetizer makes of `FRAME_BYTES` at its
/// default MTU is printed alongside, to check that both modes send as many.
const PACKETS_PER_FRAME: usize = 4;
const FRAME_INTERVAL: Duration = Duration::from_millis(33);
/// The node's video resend history: `repair_window::MAX_PACKETS` and its first window.
const RTX_PACKETS: usize = 256;
const RTX_WINDOW: Duration = Duration::from_millis(625);
const RTX_RATIO_CAP: Option<f32> = Some(0.15);
/// 2 s of video at 30 fps.
const MEMORY_FRAMES: u64 = 60;
const MEMORY_SUBSCRIBERS: usize = 50;
/// Bounds on the untimed exchanges: a few datagrams go back and forth per input, never more.
const MAX_ROUNDS: usize = 50;
const MAX_CONNECT_MS: usize = 5000;
/// A drain ends with str0m's timeout; this only guards against a bug.
const MAX_OUTPUTS: usize = 100_000;

fn is_rtp(buf: &[u8]) -> bool {
    buf.first().is_some_and(|b| (128..=191).contains(b))
}

/// RTP, not RTCP (RFC 5761: RTCP packet types 192..=223 in the second byte).
fn is_media(buf: &[u8]) -> bool {
    is_rtp(buf) && buf.get(1).is_some_and(|b| !(192..=223).contains(b))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Frame,
    Rtp,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Frame => "frame",
            Mode::Rtp => "rtp",
        }
    }
}

/// Datagrams one `Rtc` sent, kept in buffers reused across frames so that the timed section
/// copies them (as the node copies them into its send batches) without allocating.
#[derive(Default)]
struct Outbox {
    bufs: Vec<Vec<u8>>,
    len: usize,
}

impl Outbox {
    fn push(&mut self, bytes: &[u8]) {
        if self.len == self.bufs.len() {
            self.bufs.push(Vec::with_capacity(1500));
        }
        if let Some(b) = self.bufs.get_mut(self.len) {
            b.clear();
            b.extend_from_slice(bytes);
        }
        self.len += 1;
    }

    fn take(&mut self) -> Vec<Vec<u8>> {
        let out = self.bufs.iter().take(self.len).cloned().collect();
        self.len = 0;
        out
    }
}

/// One subscriber: the node's side of its session and its viewer.
struct Pair {
    sfu: Rtc,
    viewer: Rtc,
    sfu_addr: SocketAddr,
    viewer_addr: SocketAddr,
    mid: Mid,
    pt: Pt,
    ssrc: Ssrc,
    /// RTP mode: the next sequence number this subscriber's stream sends.
    seq: u64,
    out: Outbox,
    connected: bool,
    /// Frames the viewer decoded out of what it received.
    frames_seen: u64,
    /// The send stream's RTX SSRC, when negotiated.
    rtx: Option<Ssrc>,
    /// Every this many RTP media datagrams to the viewer, except resends, is lost.
    lose_every: Option<u64>,
    media_to_viewer: u64,
    lost: u64,
    /// Datagrams to the viewer on the RTX SSRC: answers to its NACKs.
    resends: u64,
}

/// The SSRC of an RTP packet.
fn ssrc_of(buf: &[u8]) -> Option<Ssrc> {
    let b: [u8; 4] = buf.get(8..12)?.try_into().ok()?;
    Some(Ssrc::from(u32::from_be_bytes(b)))
}

/// Drains `rtc` to its timeout: its datagrams go to `out`, its events to `on_event`. Returns the
/// RTP media datagrams.
fn drain(rtc: &mut Rtc, out: &mut Outbox, mut on_event: impl FnMut(&Event)) -> u64 {
    let mut media = 0;
    for _ in 0..MAX_OUTPUTS {
        match rtc.poll_output() {
            Ok(Output::Timeout(_)) => return media,
            Ok(Output::Transmit(t)) => {
                media += u64::from(is_media(&t.contents));
                out.push(&t.contents);
            }
            Ok(Output::Event(e)) => on_event(&e),
            Err(e) => panic!("poll_output failed: {e}"),
        }
    }
    panic!("no timeout after {MAX_OUTPUTS} outputs");
}

fn receive(rtc: &mut Rtc, now: Instant, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
    let Ok(r) = Receive::new(Protocol::Udp, from, to, bytes) else {
        panic!("unparsable datagram");
    };
    if let Err(e) = rtc.handle_input(Input::Receive(now, r)) {
        panic!("receive failed: {e}");
    }
}

fn timeout(rtc: &mut Rtc, now: Instant) {
    if let Err(e) = rtc.handle_input(Input::Timeout(now)) {
        panic!("timeout failed: {e}");
    }
}

impl Pair {
    fn new(i: usize, mode: Mode, now: Instant) -> Pair {
        let port = 10_000 + u16::try_from(i).unwrap_or(0);
        let sfu_addr = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), port));
        let viewer_addr = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 2), port));
        // As `ops/new_session.rs` builds a session.
        let mut sfu = Rtc::builder()
            .set_ice_lite(true)
            .set_stats_interval(Some(Duration::from_secs(2)))
            .set_send_buffer_video(RTX_PACKETS)
            .set_rtp_mode(mode == Mode::Rtp)
            .build(now);
        let mut viewer = Rtc::builder().build(now);
        let cand = |a| Candidate::host(a, "udp").unwrap_or_else(|e| panic!("candidate: {e}"));
        sfu.add_local_candidate(cand(sfu_addr));
        viewer.add_local_candidate(cand(viewer_addr));

        let mut api = viewer.sdp_api();
        let mid = api.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        let Some((offer, pending)) = api.apply() else {
            panic!("no offer");
        };
        // The node removes transport-cc from a receive-only viewer's offer.
        let sdp: String = offer
            .to_sdp_string()
            .split_inclusive('\n')
            .filter(|l| !l.contains("transport-wide-cc"))
            .collect();
        let offer = SdpOffer::from_sdp_string(&sdp).unwrap_or_else(|e| panic!("offer: {e}"));
        let answer = sfu
            .sdp_api()
            .accept_offer(offer)
            .unwrap_or_else(|e| panic!("answer: {e}"));
        assert!(!answer.to_sdp_string().contains("transport-wide-cc"));
        viewer
            .sdp_api()
            .accept_answer(pending, answer)
            .unwrap_or_else(|e| panic!("accept answer: {e}"));

        let remote_pts = sfu.media(mid).map(|m| m.remote_pts().to_vec());
        let Some(pt) = sfu
            .codec_config()
            .find(|p| {
                p.spec().codec == Codec::Vp8
                    && remote_pts.as_ref().is_some_and(|r| r.contains(&p.pt()))
            })
            .map(|p| p.pt())
        else {
            panic!("VP8 not negotiated");
        };
        let mut api = sfu.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            panic!("no send stream");
        };
        tx.set_rtx_cache(RTX_PACKETS, RTX_WINDOW, RTX_RATIO_CAP);
        let ssrc = tx.ssrc();
        let rtx = tx.rtx();
        Pair {
            sfu,
            viewer,
            sfu_addr,
            viewer_addr,
            mid,
            pt,
            ssrc,
            seq: 1,
            out: Outbox::default(),
            connected: false,
            frames_seen: 0,
            rtx,
            lose_every: None,
            media_to_viewer: 0,
            lost: 0,
            resends: 0,
        }
    }

    /// Delivers what the sender sent, then lets both sides answer each other until neither has
    /// anything more to send at `now`.
    fn exchange(&mut self, now: Instant) {
        let mut viewer_out = Outbox::default();
        let Pair {
            sfu,
            viewer,
            sfu_addr,
            viewer_addr,
            out,
            connected,
            frames_seen,
            rtx,
            lose_every,
            media_to_viewer,
            lost,
            resends,
            ..
        } = self;
        for _ in 0..MAX_ROUNDS {
            let to_viewer = out.take();
            for d in &to_viewer {
                if is_media(d) {
                    *media_to_viewer += 1;
                    if rtx.is_some() && ssrc_of(d) == *rtx {
                        *resends += 1;
                    } else if lose_every.is_some_and(|n| media_to_viewer.is_multiple_of(n)) {
                        *lost += 1;
                        continue;
                    }
                }
                receive(viewer, now, *sfu_addr, *viewer_addr, d);
            }
            drain(viewer, &mut viewer_out, |e| {
                if matches!(e, Event::MediaData(_)) {
                    *frames_seen += 1;
                }
            });
            let to_sfu = viewer_out.take();
            for d in &to_sfu {
                receive(sfu, now, *viewer_addr, *sfu_addr, d);
            }
            drain(sfu, out, |e| {
                if matches!(e, Event::Connected) {
                    *connected = true;
                }
            });
            if to_viewer.is_empty() && to_sfu.is_empty() && out.len == 0 {
                return;
            }
        }
        panic!("the pair still exchanged datagrams after {MAX_ROUNDS} rounds");
    }

    /// Both sides' timers at `now`, and what they send each other.
    fn tick(&mut self, now: Instant) {
        timeout(&mut self.sfu, now);
        drain(&mut self.sfu, &mut self.out, |_| {});
        timeout(&mut self.viewer, now);
        let mut viewer_out = Outbox::default();
        drain(&mut self.viewer, &mut viewer_out, |_| {});
        for d in viewer_out.take() {
            receive(&mut self.sfu, now, self.viewer_addr, self.sfu_addr, &d);
        }
        let Pair {
            sfu,
            out,
            connected,
            ..
        } = self;
        drain(sfu, out, |e| {
            if matches!(e, Event::Connected) {
                *connected = true;
            }
        });
        self.exchange(now);
    }
}

/// One video frame: the same bytes for every subscriber, and for RTP mode its packets (VP8
/// payload descriptor with S set on the first, RFC 7741), made once.
struct Frame {
    data: Arc<[u8]>,
    packets: Vec<Arc<[u8]>>,
    n: u64,
}

impl Frame {
    fn new(n: u64) -> Frame {
        let data: Arc<[u8]> = synthetic_frame(MediaKind::Video, n == 0, FRAME_BYTES).into();
        let per = data.len().div_ceil(PACKETS_PER_FRAME);
        let packets = data
            .chunks(per)
            .enumerate()
            .map(|(i, c)| {
                let mut p = Vec::with_capacity(c.len() + 1);
                p.push(if i == 0 { 0x10 } else { 0x00 });
                p.extend_from_slice(c);
                p.into()
            })
            .collect();
        Frame { data, packets, n }
    }

    fn rtp_time(&self) -> u32 {
        (self.n * 3000) as u32
    }
}

/// N subscribers of one track on a shared simulated clock.
struct FanOut {
    mode: Mode,
    pairs: Vec<Pair>,
    now: Instant,
    frames: u64,
}

impl FanOut {
    fn new(mode: Mode, n: usize) -> FanOut {
        let mut now = Instant::now();
        let mut pairs: Vec<Pair> = (0..n).map(|i| Pair::new(i, mode, now)).collect();
        for _ in 0..MAX_CONNECT_MS {
            if pairs.iter().all(|p| p.connected) {
                break;
            }
            now += Duration::from_millis(1);
            for p in &mut pairs {
                p.tick(now);
            }
        }
        assert!(pairs.iter().all(|p| p.connected), "pairs did not connect");
        FanOut {
            mode,
            pairs,
            now,
            frames: 0,
        }
    }

    /// The next frame's time: timers due by then run untimed.
    fn advance(&mut self) -> Frame {
        self.now += FRAME_INTERVAL;
        for p in &mut self.pairs {
            p.tick(self.now);
        }
        let f = Frame::new(self.frames);
        self.frames += 1;
        f
    }

    /// The measured part: the frame to every subscriber, as the engine writes and drains it.
    /// Returns the RTP media datagrams sent.
    fn send(&mut self, f: &Frame) -> u64 {
        let now = self.now;
        let mut media = 0;
        for p in &mut self.pairs {
            match self.mode {
                Mode::Frame => {
                    let Some(w) = p.sfu.writer(p.mid) else {
                        panic!("no writer");
                    };
                    let time = MediaTime::from_90khz(f.n * 3000);
                    if let Err(e) = w.write(p.pt, now, time, Arc::clone(&f.data)) {
                        panic!("write failed: {e}");
                    }
                }
                Mode::Rtp => {
                    let mut api = p.sfu.direct_api();
                    let Some(tx) = api.stream_tx(&p.ssrc) else {
                        panic!("no send stream");
                    };
                    let last = f.packets.len().saturating_sub(1);
                    for (i, payload) in f.packets.iter().enumerate() {
                        let w = RtpWrite::new(
                            p.pt,
                            p.seq.into(),
                            f.rtp_time(),
                            now,
                            Arc::clone(payload),
                        )
                        .marker(i == last)
                        .nackable(true);
                        tx.write_rtp(w);
                        p.seq += 1;
                    }
                }
            }
            timeout(&mut p.sfu, now);
            media += drain(&mut p.sfu, &mut p.out, |e| {
                black_box(e);
            });
        }
        media
    }

    /// Delivers what `send` sent; untimed.
    fn deliver(&mut self) {
        let now = self.now;
        for p in &mut self.pairs {
            p.exchange(now);
        }
    }
}

/// Heap held by the sending `Rtc`s, per subscriber, as the bytes freed by dropping them.
fn sender_bytes(f: FanOut) -> (i64, u64) {
    let n = f.pairs.len() as i64;
    let frames_seen = f.pairs.iter().map(|p| p.frames_seen).min().unwrap_or(0);
    let (senders, viewers): (Vec<Rtc>, Vec<Rtc>) =
        f.pairs.into_iter().map(|p| (p.sfu, p.viewer)).unzip();
    let before = live_bytes();
    drop(senders);
    let freed = before - live_bytes();
    drop(viewers);
    (freed / n.max(1), frames_seen)
}

fn memory() {
    // With one subscriber nothing is shared; with many, RTP mode's cached packets share the
    // payloads written to every subscriber (`RtpWrite` takes an `Arc<[u8]>`).
    for (mode, n) in [Mode::Frame, Mode::Rtp]
        .into_iter()
        .flat_map(|m| [(m, 1), (m, MEMORY_SUBSCRIBERS)])
    {
        let set_up = FanOut::new(mode, n);
        let (idle, _) = sender_bytes(set_up);
        let mut f = FanOut::new(mode, n);
        let mut media = 0;
        for _ in 0..MEMORY_FRAMES {
            let frame = f.advance();
            media += f.send(&frame);
            f.deliver();
        }
        let per_sub_frame = media as f64 / (MEMORY_FRAMES as f64 * n as f64);
        let (flowing, frames_seen) = sender_bytes(f);
        eprintln!(
            "str0m_modes/memory/{}/{n}: heap per subscriber's sending Rtc {} B after set-up, {} B \
             after {MEMORY_FRAMES} frames ({per_sub_frame:.2} RTP datagrams per frame and \
             subscriber; the slowest viewer decoded {frames_seen} frames)",
            mode.name(),
            idle,
            flowing,
        );
        assert!(frames_seen + 5 >= MEMORY_FRAMES, "frames did not arrive");
        assert_eq!(
            media,
            MEMORY_FRAMES * (n * PACKETS_PER_FRAME) as u64,
            "both modes send the same packets"
        );
    }
}

/// Whether the subscriber's stream answers NACKs in each mode: every 10th media datagram to the
/// viewer is lost (resends are not), for 60 frames and 1 s after.
fn repair() {
    for mode in [Mode::Frame, Mode::Rtp] {
        let mut f = FanOut::new(mode, 1);
        for p in &mut f.pairs {
            p.lose_every = Some(10);
        }
        for _ in 0..MEMORY_FRAMES {
            let frame = f.advance();
            f.send(&frame);
            f.deliver();
        }
        for _ in 0..30 {
            f.now += FRAME_INTERVAL;
            let now = f.now;
            for p in &mut f.pairs {
                p.tick(now);
            }
        }
        for p in &f.pairs {
            eprintln!(
                "str0m_modes/repair/{}: {} media datagrams lost, {} resent on the RTX SSRC, \
                 the viewer decoded {} of {MEMORY_FRAMES} frames",
                mode.name(),
                p.lost,
                p.resends,
                p.frames_seen,
            );
            assert!(
                p.lost > 0 && p.resends >= p.lost,
                "a lost packet was not resent"
            );
            assert_eq!(p.frames_seen, MEMORY_FRAMES, "a frame was not repaired");
        }
    }
}

/// Both modes timed in alternating blocks of frames at N = 50, so that a neighbour's load on the
/// shared machine hits both alike: criterion runs one after the other.
fn alternating() {
    const ROUNDS: usize = 30;
    const FRAMES_PER_BLOCK: usize = 10;
    let n = MEMORY_SUBSCRIBERS;
    let mut fanouts = [FanOut::new(Mode::Frame, n), FanOut::new(Mode::Rtp, n)];
    let mut spent = [Duration::ZERO; 2];
    let mut media = [0u64; 2];
    for _ in 0..ROUNDS {
        for (i, f) in fanouts.iter_mut().enumerate() {
            for _ in 0..FRAMES_PER_BLOCK {
                let frame = f.advance();
                let t0 = Instant::now();
                media[i] += f.send(&frame);
                spent[i] += t0.elapsed();
                f.deliver();
            }
        }
    }
    let per_packet = |i: usize| spent[i].as_secs_f64() * 1e6 / media[i].max(1) as f64;
    eprintln!(
        "str0m_modes/alternating/{n}: {:.2} µs per packet in frame mode, {:.2} µs in RTP mode \
         ({ROUNDS} rounds of {FRAMES_PER_BLOCK} frames each)",
        per_packet(0),
        per_packet(1),
    );
}

fn modes(c: &mut Criterion) {
    memory();
    repair();
    alternating();
    let mut g = c.benchmark_group("str0m_modes");
    for mode in [Mode::Frame, Mode::Rtp] {
        for n in [1usize, 50] {
            let mut f = FanOut::new(mode, n);
            let (mut frames, mut media) = (0u64, 0u64);
            g.throughput(Throughput::Elements((n * PACKETS_PER_FRAME) as u64));
            g.bench_function(BenchmarkId::new(mode.name(), n), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let frame = f.advance();
                        let t0 = Instant::now();
                        media += f.send(&frame);
                        total += t0.elapsed();
                        frames += 1;
                        f.deliver();
                    }
                    total
                })
            });
            let seen = f.pairs.iter().map(|p| p.frames_seen).min().unwrap_or(0);
            eprintln!(
                "str0m_modes/{}/{n}: {:.2} RTP datagrams per frame and subscriber ({frames} \
                 frames; the slowest viewer decoded {seen})",
                mode.name(),
                media as f64 / (frames.max(1) as f64 * n as f64),
            );
        }
    }
    g.finish();
}

criterion_group!(benches, modes);
criterion_main!(benches);
