//! What the packet path's no-I/O core (`trackmesh_node::engine::packet`, issue 17 part 1, not
//! wired into the engine yet) costs per forwarded packet: no str0m `Rtc`, no sockets.
//!
//! One VP8 track at 30 fps, 4 packets of 1,000 bytes per frame (the load generator's 1 Mbit/s),
//! with Chromium's descriptor (15-bit PictureID, TL0PICIDX). Per packet, once: keyframe/frame
//! start detection, VP8 descriptor parse, insertion into the track's `PacketCache`. Then per
//! subscriber: its `Rewriter` (sequence number, timestamp), its `Vp8Rewriter` (the `Vp8Patch`),
//! and the `RtpWrite` that `StreamTx::write_rtp` would take (sharing the payload `Arc`), dropped
//! unsent. Every 30th frame is a keyframe, and there the source changes to one with unrelated
//! sequence numbers, timestamps and PictureIDs (as at a layer switch or an upstream change), so
//! every subscriber switches once a second and its VP8 fields are patched from then on.
//!
//! - `packet_path/forward/N`: time per forwarded packet (4 × N per frame); the payloads are made
//!   untimed, as str0m hands them over already made.
//! - Printed before the runs: the per-subscriber state's size and the cache's hold after 2 s.

use std::hint::black_box;
use std::mem::size_of;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use str0m::format::Codec;
use str0m::media::Pt;
use str0m::rtp::{RtpWrite, SeqNo, Vp8Descriptor};
use trackmesh_node::engine::packet::cache::{Bounds, Cached, PacketCache};
use trackmesh_node::engine::packet::keyframe;
use trackmesh_node::engine::packet::rewrite::{Packet, Rewrite, Rewriter, SourceId};
use trackmesh_node::engine::packet::vp8::Vp8Rewriter;

const PACKETS_PER_FRAME: usize = 4;
const PAYLOAD_BYTES: usize = 1000;
const FRAME_INTERVAL: Duration = Duration::from_micros(33_333);
const FRAMES_PER_KEYFRAME: u64 = 30;
const CLOCK: u32 = 90_000;

/// What the cache keeps per packet besides the payload: the payload type and an audio level
/// (the header extension value the forwarder copies).
type Header = (Pt, Option<i8>);

/// One subscriber's state on the packet path.
struct Subscriber {
    seq: Rewriter,
    vp8: Vp8Rewriter,
}

/// A source packet, as str0m's `Event::RtpPacket` would hand it over.
struct Incoming {
    source: SourceId,
    seq: u64,
    time: u32,
    marker: bool,
    payload: Arc<[u8]>,
}

struct Track {
    now: Instant,
    frame: u64,
    source: SourceId,
    seq: u64,
    time: u32,
    picture: u16,
    tl0: u8,
    cache: PacketCache<Header>,
    subscribers: Vec<Subscriber>,
}

impl Track {
    fn new(n: usize) -> Self {
        Track {
            now: Instant::now(),
            frame: 0,
            source: SourceId { id: 1, epoch: 0 },
            seq: 1_000,
            time: 0,
            picture: 100,
            tl0: 0,
            cache: PacketCache::new(Bounds::default()),
            subscribers: (0..n)
                .map(|i| Subscriber {
                    seq: Rewriter::new(i as u16),
                    vp8: Vp8Rewriter::default(),
                })
                .collect(),
        }
    }

    /// The next frame's packets (untimed).
    fn advance(&mut self) -> Vec<Incoming> {
        self.frame += 1;
        self.now += FRAME_INTERVAL;
        let key = self.frame % FRAMES_PER_KEYFRAME == 1;
        if key && self.frame > 1 {
            // Another source: unrelated numbering, clock and picture ids.
            self.source.id ^= 3;
            self.seq += 20_000;
            self.time = self.time.wrapping_add(1_000_000_007);
            self.picture = self.picture.wrapping_add(9_000) & 0x7fff;
            self.tl0 = self.tl0.wrapping_add(77);
        }
        self.time = self.time.wrapping_add(3000);
        self.picture = (self.picture + 1) & 0x7fff;
        self.tl0 = self.tl0.wrapping_add(1);
        (0..PACKETS_PER_FRAME)
            .map(|i| {
                let first = i == 0;
                let mut p = vec![0u8; PAYLOAD_BYTES];
                p[..6].copy_from_slice(&[
                    0x80 | if first { 0x10 } else { 0 },
                    0xe0,
                    0x80 | (self.picture >> 8) as u8,
                    self.picture as u8,
                    self.tl0,
                    0x20,
                ]);
                p[6] = if key { 0x10 } else { 0x11 };
                self.seq += 1;
                Incoming {
                    source: self.source,
                    seq: self.seq,
                    time: self.time,
                    marker: i + 1 == PACKETS_PER_FRAME,
                    payload: p.into(),
                }
            })
            .collect()
    }

    /// The timed part: what the forwarding path would do with one frame's packets. Returns the
    /// packets handed to subscribers.
    fn forward(&mut self, packets: &[Incoming]) -> u64 {
        let pt = Pt::from(96);
        let mut sent = 0;
        for p in packets {
            let start = keyframe::inspect(Codec::Vp8, &p.payload);
            let descriptor = Vp8Descriptor::parse(&p.payload).ok();
            self.cache.insert(Cached {
                seq: p.seq,
                time: p.time,
                marker: p.marker,
                start,
                arrival: self.now,
                payload: p.payload.clone(),
                header: (pt, None),
            });
            let packet = Packet {
                source: p.source,
                seq: p.seq,
                time: p.time,
                arrival: self.now,
            };
            for s in &mut self.subscribers {
                let Rewrite::Forward(m) = s.seq.rewrite(&packet, CLOCK, start.keyframe) else {
                    continue;
                };
                let mut write =
                    RtpWrite::new(pt, SeqNo::from(m.seq), m.time, self.now, p.payload.clone())
                        .marker(p.marker)
                        .nackable(true);
                if let Some(patch) = descriptor
                    .as_ref()
                    .and_then(|d| s.vp8.patch(p.source, d, m.switched || m.resynced))
                {
                    write = write.vp8_patch(patch);
                }
                black_box(write);
                sent += 1;
            }
        }
        sent
    }
}

fn report_memory() {
    let mut t = Track::new(1);
    for _ in 0..60 {
        let frame = t.advance();
        t.forward(&frame);
    }
    eprintln!(
        "packet_path/memory: {} bytes of state per subscriber (Rewriter {} + Vp8Rewriter {}); \
         the track's cache after 2 s: {} packets, {} payload bytes, {} bytes per entry",
        size_of::<Subscriber>(),
        size_of::<Rewriter>(),
        size_of::<Vp8Rewriter>(),
        t.cache.len(),
        t.cache.bytes(),
        size_of::<Cached<Header>>(),
    );
}

fn packet_path(c: &mut Criterion) {
    report_memory();
    let mut g = c.benchmark_group("packet_path");
    for n in [1usize, 50] {
        let mut t = Track::new(n);
        let (mut frames, mut sent) = (0u64, 0u64);
        g.throughput(Throughput::Elements((n * PACKETS_PER_FRAME) as u64));
        g.bench_function(BenchmarkId::new("forward", n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let frame = t.advance();
                    let t0 = Instant::now();
                    sent += t.forward(&frame);
                    total += t0.elapsed();
                    frames += 1;
                }
                total
            })
        });
        eprintln!(
            "packet_path/forward/{n}: {:.2} packets forwarded per frame and subscriber \
             ({frames} frames)",
            sent as f64 / (frames.max(1) as f64 * n as f64),
        );
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
    targets = packet_path
}
criterion_main!(benches);
