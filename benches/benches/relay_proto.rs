//! relay-proto hot paths: control messages through the length-prefixed codec, and media frames
//! cut into datagrams and put back together.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use trackmesh_relay_proto::codec::{FrameDecoder, encode, encode_to_vec};
use trackmesh_relay_proto::control::{
    CodecParams, ControlMsg, MediaKind, Nack, NackFrame, Subscribe, TrackInfo,
};
use trackmesh_relay_proto::media::{Fragmenter, Frame, Reassembler};

/// What quinn typically allows for a datagram on a 1500-byte path.
const MAX_DATAGRAM: usize = 1200;

/// A mix of the control messages a relay link carries.
fn control_messages() -> Vec<(&'static str, ControlMsg)> {
    vec![
        (
            "subscribe",
            ControlMsg::Subscribe(Subscribe {
                sub: 42,
                session_id: [0xab; 16],
                track_name: "a3f1c2d4-camera-track".into(),
                app: "my-calls-app-0123456789".into(),
                layers: trackmesh_relay_proto::control::LayerSet::All,
            }),
        ),
        (
            "subscribed",
            ControlMsg::Subscribed {
                sub: 42,
                track: TrackInfo {
                    kind: MediaKind::Video,
                    codec: CodecParams {
                        mime: "video/VP8".into(),
                        clock_rate: 90_000,
                        channels: None,
                    },
                },
            },
        ),
        ("keyframe_request", ControlMsg::KeyframeRequest { sub: 42 }),
        (
            "nack",
            ControlMsg::Nack(Nack {
                sub: 42,
                frames: vec![NackFrame {
                    frame_seq: 123_456,
                    fragments: vec![3, 4],
                }],
            }),
        ),
    ]
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("relay_proto/control");
    for (name, msg) in control_messages() {
        let bytes = encode_to_vec(&msg).expect("encode");
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("encode/{name}"), |b| {
            let mut out = Vec::with_capacity(256);
            b.iter(|| {
                out.clear();
                encode(black_box(&msg), &mut out).expect("encode");
                black_box(out.len())
            })
        });
        g.bench_function(format!("decode/{name}"), |b| {
            let mut dec = FrameDecoder::<ControlMsg>::new();
            b.iter(|| {
                let mut n = 0;
                for m in dec.feed(black_box(&bytes)) {
                    black_box(m.expect("decode"));
                    n += 1;
                }
                assert_eq!(n, 1);
            })
        });
    }
    // A stream read of 64 back-to-back messages, as a QUIC stream read hands them over.
    let batch: Vec<u8> = control_messages()
        .iter()
        .cycle()
        .take(64)
        .flat_map(|(_, m)| encode_to_vec(m).expect("encode"))
        .collect();
    g.throughput(Throughput::Elements(64));
    g.bench_function("decode/stream_of_64", |b| {
        let mut dec = FrameDecoder::<ControlMsg>::new();
        b.iter(|| {
            let mut n = 0;
            for m in dec.feed(black_box(&batch)) {
                black_box(m.expect("decode"));
                n += 1;
            }
            assert_eq!(n, 64);
        })
    });
    g.finish();
}

fn media(c: &mut Criterion) {
    let mut g = c.benchmark_group("relay_proto/media");
    for size in [1_000usize, 10_000, 100_000] {
        let label = format!("{}KB", size / 1000);
        let mut frame = Frame {
            sub: 7,
            frame_seq: 0,
            rtp_time: 90_000,
            keyframe: false,
            payload: (0..size).map(|i| (i % 251) as u8).collect(),
        };
        g.throughput(Throughput::Bytes(size as u64));

        g.bench_function(format!("fragment/{label}"), |b| {
            // One buffer per fragment, reused: what a sender keeps between frames.
            let count = Fragmenter::fragments(&frame, MAX_DATAGRAM)
                .expect("fragments")
                .fragment_count() as usize;
            let mut bufs = vec![Vec::with_capacity(MAX_DATAGRAM); count];
            b.iter(|| {
                let mut frags =
                    Fragmenter::fragments(black_box(&frame), MAX_DATAGRAM).expect("fragments");
                for buf in bufs.iter_mut() {
                    assert!(frags.next_into(buf));
                }
                black_box(&bufs);
            })
        });

        g.bench_function(format!("reassemble/{label}"), |b| {
            let mut r = Reassembler::default();
            let now = Instant::now();
            let mut seq = 0u32;
            // By reference: dropping the fragments is left out of the timing.
            b.iter_batched_ref(
                || {
                    seq = seq.wrapping_add(1);
                    frame.frame_seq = seq;
                    Fragmenter::fragments(&frame, MAX_DATAGRAM)
                        .expect("fragments")
                        .collect::<Vec<_>>()
                },
                |frags| {
                    let mut out = None;
                    for f in frags.iter() {
                        out = r.push(f, now);
                    }
                    let done = out.expect("frame completes");
                    black_box(done.payload.len())
                },
                BatchSize::SmallInput,
            )
        });

        g.bench_function(format!("fragment+reassemble/{label}"), |b| {
            let mut r = Reassembler::default();
            let now = Instant::now();
            let mut buf = Vec::with_capacity(MAX_DATAGRAM);
            b.iter(|| {
                frame.frame_seq = frame.frame_seq.wrapping_add(1);
                let mut frags = Fragmenter::fragments(&frame, MAX_DATAGRAM).expect("fragments");
                let mut out = None;
                while frags.next_into(&mut buf) {
                    out = r.push(&buf, now);
                }
                black_box(out.expect("frame completes").payload.len())
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
    targets = codec, media
}
criterion_main!(benches);
