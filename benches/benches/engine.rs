//! Engine hot paths, driven in memory through the engine's public API in the node's test world
//! (`trackmesh_node::testing`, feature `test-world`, the same world as the engine's unit tests):
//! str0m clients complete ICE and DTLS with the engine on a simulated clock, then the benchmarks
//! time
//!
//! - `fanout`: one encrypted publisher RTP datagram (a one-packet frame) through
//!   `Engine::handle_datagram`, which decrypts and depacketizes it and writes the frame into N
//!   subscribers' `Rtc`s, then `Engine::handle_timeout` at the same instant (as the shell calls
//!   it after every input; str0m packetizes and encrypts written frames on the next clock input),
//!   then draining `Engine::poll_transmit`;
//! - `demux`: `Engine::handle_datagram` among 1000 connected sessions, for a fresh SRTP audio
//!   packet from a known address and for a datagram from an unknown address (dropped), plus the
//!   bare `Demux::route` lookups;
//! - `workers/hop`: one frame across the in-process link between two engine workers (worker 0's
//!   router, worker 1's bounded input queue), the hop a frame takes once per worker with
//!   viewers;
//! - `workers/scale`: 1, 2, 4 and 8 threads, each driving its own engine with one video
//!   publisher and 10 subscribers as `fanout` does (one engine per worker thread, nothing
//!   shared), timed in wall time for all threads together: how the sharded design scales where
//!   the cores exist;
//! - `sdp`: parsing a client's offer (done on the API's blocking pool) and applying the parsed
//!   offer to a session (done on the engine task, so it delays media), for a small offer and the
//!   largest ones the node's SDP bounds accept.
//!
//! Work outside the timed section (the client encrypting the packet, timers, RTCP) runs in
//! between, untimed (`iter_custom`).

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use str0m::format::Codec;
use str0m::media::{MediaKind, MediaTime, Mid};
use trackmesh_node::engine::{Demux, EngineConfig, LocalTrack, TracksNew};
use trackmesh_node::ids::{NodeTag, SessionId};
use trackmesh_node::testing::{self, APP, World, synthetic_frame};
/// Untimed upkeep (client timers, engine timers, RTCP) every this many timed iterations.
const UPKEEP_EVERY: u64 = 20;

fn is_rtp(buf: &[u8]) -> bool {
    buf.first().is_some_and(|b| (128..=191).contains(b))
}

/// RTP, not RTCP (RFC 5761: RTCP packet types 192..=223 in the second byte).
fn is_media(buf: &[u8]) -> bool {
    is_rtp(buf) && buf.get(1).is_some_and(|b| !(192..=223).contains(b))
}

/// A world whose timers never expire anything: the simulated clock runs far ahead while clients
/// are set up one by one.
fn world(max_sessions: usize) -> World {
    let long = Duration::from_secs(3600);
    World::with_config(EngineConfig {
        max_sessions,
        reconnect_grace: long,
        unconnected_expiry: long,
        ..testing::config(long)
    })
}

#[derive(Clone, Copy)]
enum Kind {
    /// Opus, 80 bytes per 20 ms frame.
    Audio,
    /// VP8, 1000-byte delta frames: one RTP packet each.
    Video,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Audio => "audio_opus_80B",
            Kind::Video => "video_vp8_1000B",
        }
    }
}

/// A publisher and `n` subscribers of its one track, all connected.
struct FanOut {
    w: World,
    publisher: usize,
    mid: Mid,
    params: str0m::format::PayloadParams,
    kind: Kind,
    seq: u64,
}

impl FanOut {
    fn new(kind: Kind, n: usize) -> FanOut {
        let mut w = world(n + 1);
        let publisher = w.client();
        let pub_sid = w.session();
        let media_kind = match kind {
            Kind::Audio => MediaKind::Audio,
            Kind::Video => MediaKind::Video,
        };
        let mid = w.push_tracks(publisher, &pub_sid, &[(media_kind, "t")])[0];
        w.connect(&[publisher]);
        let mut subs = Vec::new();
        for _ in 0..n {
            let c = w.client();
            let sid = w.session();
            let res = w.pull(c, &sid, &[(&pub_sid, "t")]);
            assert!(res.tracks.iter().all(|t| t.error.is_none()), "{res:?}");
            assert!(res.description.is_some(), "the SFU offers the pulled track");
            subs.push(c);
        }
        let all: Vec<usize> = (0..w.clients.len()).collect();
        w.connect(&all);
        let codec = match kind {
            Kind::Audio => Codec::Opus,
            Kind::Video => Codec::Vp8,
        };
        let params = w.payload_type(publisher, mid, codec);
        let mut f = FanOut {
            w,
            publisher,
            mid,
            params,
            kind,
            seq: 0,
        };
        // Let a keyframe and the first frames through, so every subscriber stream is set up.
        for _ in 0..50 {
            for d in f.next_frame() {
                f.w.engine
                    .handle_datagram(f.w.now, f.w.clients[publisher].addr, &d);
            }
            f.w.deliver();
            f.upkeep();
        }
        f
    }

    fn next_frame(&mut self) -> Vec<Vec<u8>> {
        self.seq += 1;
        let n = self.seq;
        self.w.now += Duration::from_millis(1);
        let (time, data) = match self.kind {
            Kind::Audio => (
                MediaTime::from_90khz(n * 1800),
                synthetic_frame(MediaKind::Audio, false, 80),
            ),
            // The first frame is a keyframe.
            Kind::Video => (
                MediaTime::from_90khz(n * 3000),
                synthetic_frame(MediaKind::Video, n == 1, 1000),
            ),
        };
        let params = self.params;
        self.w.frame(self.publisher, self.mid, &params, time, data)
    }

    /// Timers of every client and of the engine, and whatever they send each other.
    fn upkeep(&mut self) {
        let all: Vec<usize> = (0..self.w.clients.len()).collect();
        self.w.step(all, Duration::from_millis(1));
    }
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine/fanout");
    for kind in [Kind::Audio, Kind::Video] {
        for n in [1usize, 10, 50] {
            let mut f = FanOut::new(kind, n);
            let publisher = f.w.clients[f.publisher].addr;
            let (mut frames, mut datagrams_in, mut datagrams_out) = (0u64, 0u64, 0u64);
            g.throughput(Throughput::Elements(n as u64));
            g.bench_function(BenchmarkId::new(kind.name(), n), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for i in 0..iters {
                        let datagrams = f.next_frame();
                        let now = f.w.now;
                        let t0 = Instant::now();
                        for d in &datagrams {
                            f.w.engine.handle_datagram(now, publisher, d);
                        }
                        // As the shell does after every input: the subscribers' str0m
                        // packetize written frames on their next clock input.
                        f.w.engine.handle_timeout(now);
                        while let Some(t) = f.w.engine.poll_transmit() {
                            datagrams_out += u64::from(is_media(&t.contents));
                            black_box(t);
                        }
                        total += t0.elapsed();
                        frames += 1;
                        datagrams_in += datagrams.iter().filter(|d| is_media(d)).count() as u64;
                        if i % UPKEEP_EVERY == UPKEEP_EVERY - 1 {
                            f.upkeep();
                        }
                    }
                    total
                })
            });
            eprintln!(
                "engine/fanout/{}/{n}: {:.2} RTP datagrams in and {:.2} out per frame \
                 ({frames} frames)",
                kind.name(),
                datagrams_in as f64 / frames.max(1) as f64,
                datagrams_out as f64 / frames.max(1) as f64,
            );
        }
    }
    g.finish();
}

fn workers_hop(c: &mut Criterion) {
    let mut g = c.benchmark_group("workers/hop");
    let mut hop = trackmesh_node::workers::HopBench::new();
    let data: std::sync::Arc<[u8]> = synthetic_frame(MediaKind::Video, false, 1000).into();
    g.throughput(Throughput::Elements(1));
    g.bench_function("vp8_1000B_frame", |b| {
        b.iter(|| {
            let frame = trackmesh_node::engine::RelayFrame {
                rtp_time: 0,
                origin_seq: 0,
                marker: true,
                keyframe: false,
                data: data.clone(),
                rid: None,
                orientation: None,
            };
            assert!(hop.cross(black_box(frame)).is_some(), "the frame crosses");
        })
    });
    g.finish();
}

/// Subscribers per worker thread in `workers/scale`.
const SCALE_SUBSCRIBERS: usize = 10;

fn workers_scale(c: &mut Criterion) {
    let mut g = c.benchmark_group("workers/scale");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!("workers/scale: this machine gives the process {cores} cores");
    for threads in [1usize, 2, 4, 8] {
        let mut fans: Vec<FanOut> = (0..threads)
            .map(|_| FanOut::new(Kind::Video, SCALE_SUBSCRIBERS))
            .collect();
        // One element: one forwarded frame to one subscriber, on any thread.
        g.throughput(Throughput::Elements((threads * SCALE_SUBSCRIBERS) as u64));
        g.bench_function(BenchmarkId::new("video_10_subscribers", threads), |b| {
            b.iter_custom(|iters| {
                let t0 = Instant::now();
                std::thread::scope(|scope| {
                    for f in fans.iter_mut() {
                        scope.spawn(move || {
                            let publisher = f.w.clients[f.publisher].addr;
                            for i in 0..iters {
                                let datagrams = f.next_frame();
                                let now = f.w.now;
                                for d in &datagrams {
                                    f.w.engine.handle_datagram(now, publisher, d);
                                }
                                f.w.engine.handle_timeout(now);
                                while let Some(t) = f.w.engine.poll_transmit() {
                                    black_box(t);
                                }
                                // Included in the time here: every thread does its own.
                                if i % UPKEEP_EVERY == UPKEEP_EVERY - 1 {
                                    f.upkeep();
                                }
                            }
                        });
                    }
                });
                t0.elapsed()
            })
        });
    }
    g.finish();
}

/// 1000 sessions, each a publisher of one audio track, all connected.
fn thousand_publishers() -> (World, Vec<(usize, Mid, str0m::format::PayloadParams)>) {
    const SESSIONS: usize = 1000;
    let mut w = world(SESSIONS);
    let (wall, sim) = (Instant::now(), w.now);
    let mut pubs = Vec::new();
    for _ in 0..SESSIONS {
        let c = w.client();
        let sid = w.session();
        let mid = w.push_tracks(c, &sid, &[(MediaKind::Audio, "mic")])[0];
        // Connect each client on its own: stepping 1000 clients per millisecond would be slow.
        w.connect(&[c]);
        let params = w.payload_type(c, mid, Codec::Opus);
        pubs.push((c, mid, params));
    }
    assert_eq!(w.engine.session_count(), SESSIONS);
    eprintln!(
        "engine/demux: {SESSIONS} sessions connected in {:.1} s ({:.1} s simulated)",
        wall.elapsed().as_secs_f64(),
        (w.now - sim).as_secs_f64()
    );
    (w, pubs)
}

fn demux(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine/demux");
    g.throughput(Throughput::Elements(1));

    let (mut w, pubs) = thousand_publishers();
    let mut seq = vec![0u64; pubs.len()];
    let mut next = 0usize;
    let (mut fed, mut packets) = (0u64, 0u64);
    let frames_before = w.engine.stats().frames_in;
    g.bench_function("handle_datagram/known_addr_srtp_audio/1000_sessions", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // A fresh packet from the next client in turn, so SRTP replay checks pass.
                next = (next + 1) % pubs.len();
                let (cl, mid, params) = pubs[next];
                seq[next] += 1;
                w.now += Duration::from_micros(50);
                let time = MediaTime::from_90khz(seq[next] * 1800);
                let datagrams = w.frame(
                    cl,
                    mid,
                    &params,
                    time,
                    synthetic_frame(MediaKind::Audio, false, 80),
                );
                let src = w.clients[cl].addr;
                let now = w.now;
                // Timers of the 1000 sessions are due now and then: run them untimed, so the
                // timed part is this one datagram's route, decrypt and depacketize.
                w.engine.handle_timeout(now);
                w.deliver();
                let t0 = Instant::now();
                for d in &datagrams {
                    w.engine.handle_datagram(now, src, d);
                }
                while let Some(t) = w.engine.poll_transmit() {
                    black_box(t);
                }
                total += t0.elapsed();
                fed += 1;
                packets += datagrams.len() as u64;
            }
            total
        })
    });
    eprintln!(
        "engine/demux/known: {:.2} datagrams per iteration, {} of {fed} frames reached the \
         engine's forwarding",
        packets as f64 / fed.max(1) as f64,
        w.engine.stats().frames_in - frames_before,
    );
    let before = w.engine.stats().datagrams_unrouted;
    let unknown = SocketAddr::from(([192, 0, 2, 1], 40_000));
    // An RTP-looking datagram from an address no session knows.
    let mut rtp = vec![0u8; 200];
    rtp[0] = 0x80;
    rtp[1] = 111;
    let mut ran = 0u64;
    g.bench_function("handle_datagram/unknown_addr_dropped/1000_sessions", |b| {
        let now = w.now;
        b.iter(|| {
            ran += 1;
            w.engine
                .handle_datagram(now, black_box(unknown), black_box(&rtp))
        })
    });
    // Only when the benchmark ran (a name filter may skip it).
    assert!(
        ran == 0 || w.engine.stats().datagrams_unrouted > before,
        "the unknown datagrams were dropped"
    );
    drop(w);

    // The lookup alone, without the engine around it.
    let mut d = Demux::default();
    let mut addrs = Vec::new();
    for i in 0..1000u16 {
        let id = SessionId::new(NodeTag(0xabcd0123));
        d.add_session(id, &format!("ufrag{i:04}"));
        let a = SocketAddr::from(([10, 1, (i / 250) as u8, (i % 250) as u8], 50_000 + i));
        d.learn(id, a);
        addrs.push(a);
    }
    let mut i = 0usize;
    g.bench_function("route/known_addr/1000_sessions", |b| {
        b.iter(|| {
            i = (i + 1) % addrs.len();
            black_box(d.route(black_box(addrs[i]), black_box(&rtp)))
        })
    });
    g.bench_function("route/unknown_addr/1000_sessions", |b| {
        b.iter(|| black_box(d.route(black_box(unknown), black_box(&rtp))))
    });
    g.finish();
}

/// The largest offer of this shape within the node's SDP bounds.
fn largest_accepted(ssrc_lines: usize) -> (usize, String) {
    trackmesh_tests::offers::largest_video_offer(ssrc_lines, |sdp| {
        trackmesh_node::engine::sdp_limits::check(sdp).is_ok()
    })
}

/// What an SDP costs: parsing (on the API's blocking pool) and applying it to a session (on the
/// engine task, which also forwards media), for a small offer and the largest ones the bounds let
/// through.
fn sdp(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine/sdp");
    let shapes = [
        (
            "2_sections",
            (2, trackmesh_tests::offers::video_offer(2, 0)),
        ),
        ("largest_accepted/no_extra_ssrc", largest_accepted(0)),
        ("largest_accepted/30_ssrc_per_section", largest_accepted(30)),
    ];
    for (name, (sections, sdp)) in &shapes {
        eprintln!("sdp/{name}: {sections} m-sections, {} bytes", sdp.len());
        g.bench_function(format!("parse/{name}"), |b| {
            b.iter(|| black_box(trackmesh_node::engine::ClientOffer::parse(black_box(sdp))))
        });
        g.bench_function(format!("apply_on_engine/{name}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut w = world(10);
                    let (sid, _) = w.engine.create_session(APP, None, w.now).expect("session");
                    let offer = trackmesh_node::engine::ClientOffer::parse(sdp);
                    let req = TracksNew::Local {
                        offer: Some(offer),
                        tracks: vec![LocalTrack {
                            mid: Some("0".into()),
                            track_name: Some("cam".into()),
                            kind: None,
                            bidirectional: false,
                        }],
                        auto_discover: false,
                    };
                    let t = Instant::now();
                    let res = w.engine.tracks_new(APP, &sid.to_string(), req, w.now);
                    total += t.elapsed();
                    assert!(res.is_ok(), "{res:?}");
                }
                total
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = fanout, demux, sdp, workers_hop, workers_scale
}
criterion_main!(benches);
