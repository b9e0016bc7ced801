//! The packet path's core on what real str0m endpoints send and accept, in memory on a
//! simulated clock (every loop bounded):
//!
//! - a frame-mode `Rtc` (as the test kit's client publishes) writes the test kit's VP8 frames,
//!   and an RTP-mode `Rtc` (as the packet path's sessions will run) receives them as
//!   `Event::RtpPacket`: str0m's own VP8 packetizer output goes through keyframe detection, the
//!   packet cache and a rewriter;
//! - those packets, from two captured sources with unrelated numbering, are forwarded through a
//!   rewriter with `StreamTx::write_rtp` to a frame-mode viewer across a switch: the viewer
//!   decodes every frame.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::media::{Direction, MediaData, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpPacket, RtpWrite, SeqNo, Vp8Descriptor};
use str0m::{Candidate, Event, Input, Output, Rtc};
use trackmesh_testkit::media::vp8_frame;

use super::cache::{Bounds, Cached, PacketCache};
use super::keyframe::inspect;
use super::rewrite::{Packet, Rewrite, Rewriter, SourceId};
use super::vp8::Vp8Rewriter;

const MAX_OUTPUTS: usize = 10_000;
const MAX_ROUNDS: usize = 50;
const CONNECT_STEPS: usize = 200;
const FRAMES: u64 = 40;
const KEYFRAME_EVERY: u64 = 10;
/// Large enough for str0m to split each frame over several packets.
const FRAME_BYTES: usize = 3000;
const FRAME_INTERVAL: Duration = Duration::from_millis(33);

/// What a receiver handed out: RTP packets (RTP mode) or decoded frames (frame mode).
#[derive(Default)]
struct Got {
    packets: Vec<RtpPacket>,
    frames: Vec<MediaData>,
    connected: bool,
}

struct Link {
    sender: Rtc,
    receiver: Rtc,
    sender_addr: SocketAddr,
    receiver_addr: SocketAddr,
    mid: Mid,
    pt: Pt,
}

/// Drains `rtc` to its timeout: datagrams into `out`, the rest into `got`.
fn drain(rtc: &mut Rtc, out: &mut Vec<Vec<u8>>, got: &mut Got) {
    for _ in 0..MAX_OUTPUTS {
        match rtc.poll_output() {
            Ok(Output::Timeout(_)) => return,
            Ok(Output::Transmit(t)) => out.push(t.contents.to_vec()),
            Ok(Output::Event(Event::RtpPacket(p))) => got.packets.push(p),
            Ok(Output::Event(Event::MediaData(d))) => got.frames.push(d),
            Ok(Output::Event(Event::Connected)) => got.connected = true,
            Ok(Output::Event(_)) => {}
            Err(e) => panic!("poll_output: {e}"),
        }
    }
    panic!("no timeout after {MAX_OUTPUTS} outputs");
}

/// Delivers datagrams one at a time, draining `rtc` after each: in RTP mode str0m keeps only the
/// last received packet for the next `poll_output`, so a batch without drains loses packets.
fn deliver(
    rtc: &mut Rtc,
    now: Instant,
    (from, to): (SocketAddr, SocketAddr),
    datagrams: &[Vec<u8>],
    out: &mut Vec<Vec<u8>>,
    got: &mut Got,
) {
    for d in datagrams {
        let r = Receive::new(Protocol::Udp, from, to, d).expect("parsable datagram");
        rtc.handle_input(Input::Receive(now, r)).expect("receive");
        drain(rtc, out, got);
    }
}

impl Link {
    /// A sender offering one send-only video m-line to an ICE-lite receiver, each in frame or
    /// RTP mode, connected by the time this returns (at the returned instant).
    fn connected(mut now: Instant, sender_rtp: bool, receiver_rtp: bool) -> (Link, Instant) {
        let sender_addr = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 5000));
        let receiver_addr = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 2), 5000));
        let mut sender = Rtc::builder().set_rtp_mode(sender_rtp).build(now);
        let mut receiver = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(receiver_rtp)
            .build(now);
        sender.add_local_candidate(Candidate::host(sender_addr, "udp").expect("candidate"));
        receiver.add_local_candidate(Candidate::host(receiver_addr, "udp").expect("candidate"));
        let mut api = sender.sdp_api();
        let mid = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let (offer, pending) = api.apply().expect("an offer");
        let answer = receiver.sdp_api().accept_offer(offer).expect("answer");
        sender
            .sdp_api()
            .accept_answer(pending, answer)
            .expect("accept answer");
        let remote = sender
            .media(mid)
            .map(|m| m.remote_pts().to_vec())
            .unwrap_or_default();
        let pt = sender
            .codec_config()
            .find(|p| p.spec().codec == Codec::Vp8 && remote.contains(&p.pt()))
            .map(|p| p.pt())
            .expect("VP8 negotiated");
        let mut link = Link {
            sender,
            receiver,
            sender_addr,
            receiver_addr,
            mid,
            pt,
        };
        for _ in 0..CONNECT_STEPS {
            if link.step(now).connected {
                return (link, now);
            }
            now += Duration::from_millis(10);
        }
        panic!("the in-memory pair never connected");
    }

    /// Both timers at `now`, then datagrams back and forth until both are quiet. Returns what
    /// the receiver handed out, and whether the sender connected.
    fn step(&mut self, now: Instant) -> Got {
        let mut got = Got::default();
        let mut to_sender_got = Got::default();
        self.sender
            .handle_input(Input::Timeout(now))
            .expect("timeout");
        self.receiver
            .handle_input(Input::Timeout(now))
            .expect("timeout");
        let mut to_receiver = Vec::new();
        drain(&mut self.sender, &mut to_receiver, &mut to_sender_got);
        for _ in 0..MAX_ROUNDS {
            let mut to_sender = Vec::new();
            drain(&mut self.receiver, &mut to_sender, &mut got);
            let addrs = (self.sender_addr, self.receiver_addr);
            deliver(
                &mut self.receiver,
                now,
                addrs,
                &to_receiver,
                &mut to_sender,
                &mut got,
            );
            let back = (self.receiver_addr, self.sender_addr);
            to_receiver.clear();
            deliver(
                &mut self.sender,
                now,
                back,
                &to_sender,
                &mut to_receiver,
                &mut to_sender_got,
            );
            drain(&mut self.sender, &mut to_receiver, &mut to_sender_got);
            if to_receiver.is_empty() && to_sender.is_empty() {
                got.connected = to_sender_got.connected;
                return got;
            }
        }
        panic!("still exchanging after {MAX_ROUNDS} rounds");
    }
}

/// `frames` test kit VP8 frames (a keyframe every [`KEYFRAME_EVERY`], RTP time from
/// `time_base`) sent by a frame-mode `Rtc`, as an RTP-mode one received them: each with the
/// index of its frame.
fn capture(now: Instant, frames: u64, time_base: u64) -> (Vec<(u64, RtpPacket)>, Instant) {
    let (mut link, mut now) = Link::connected(now, false, true);
    let mut received = Vec::new();
    for frame in 0..frames {
        now += FRAME_INTERVAL;
        let keyframe = frame % KEYFRAME_EVERY == 0;
        let data = vp8_frame(frame, keyframe, FRAME_BYTES, 0);
        let time = MediaTime::from_90khz(time_base + frame * 3000);
        link.sender
            .writer(link.mid)
            .expect("writer")
            .write(link.pt, now, time, data)
            .expect("write");
        let got = link.step(now);
        received.extend(got.packets.into_iter().map(|p| (frame, p)));
    }
    (received, now)
}

#[test]
fn str0m_vp8_packets_are_detected_cached_and_rewritten() {
    let (received, _) = capture(Instant::now(), FRAMES, 0);

    let mut cache = PacketCache::new(Bounds::default());
    let mut rewriter = Rewriter::new(1);
    let mut vp8 = Vp8Rewriter::default();
    let source = SourceId { id: 1, epoch: 0 };
    let mut frames_started = 0;
    let mut keyframes_started = 0;
    let mut last_seq = None;
    let mut previous_frame = None;
    for (frame, p) in &received {
        let start = inspect(Codec::Vp8, &p.payload);
        // The first packet of each frame starts it; a keyframe's first packet starts a keyframe.
        let first_of_frame = previous_frame != Some(*frame);
        previous_frame = Some(*frame);
        assert_eq!(
            start.frame, first_of_frame,
            "frame {frame}, seq {}",
            *p.seq_no
        );
        assert_eq!(
            start.keyframe,
            first_of_frame && frame % KEYFRAME_EVERY == 0,
            "frame {frame}"
        );
        frames_started += u64::from(start.frame);
        keyframes_started += u64::from(start.keyframe);
        cache.insert(Cached {
            seq: *p.seq_no,
            time: p.header.timestamp,
            marker: p.header.marker,
            start,
            arrival: p.timestamp,
            payload: p.payload.clone(),
            header: (),
        });
        let packet = Packet {
            source,
            seq: *p.seq_no,
            time: p.header.timestamp,
            arrival: p.timestamp,
        };
        let Rewrite::Forward(m) = rewriter.rewrite(&packet, 90_000, false) else {
            panic!("in-order packet dropped");
        };
        if let Some(last) = last_seq {
            assert_eq!(m.seq, last + 1);
        }
        last_seq = Some(m.seq);
        // The descriptor str0m's packetizer writes parses; with no switch nothing is patched.
        let d = Vp8Descriptor::parse(&p.payload).expect("str0m's descriptor parses");
        assert_eq!(vp8.patch(source, &d, m.switched), None);
    }
    assert_eq!(frames_started, FRAMES, "every frame arrived and was found");
    assert_eq!(keyframes_started, FRAMES / KEYFRAME_EVERY);
    assert!(
        received.len() as u64 > 2 * FRAMES,
        "frames span several packets"
    );

    // The cache holds the last keyframe's packets, whole, with the frames after it counted.
    let last_key = (FRAMES - 1) / KEYFRAME_EVERY * KEYFRAME_EVERY;
    let expected: Vec<u64> = received
        .iter()
        .filter(|(f, _)| *f == last_key)
        .map(|(_, p)| *p.seq_no)
        .collect();
    let k = cache.keyframe().expect("a keyframe is cached");
    let cached: Vec<u64> = k.packets.iter().map(|c| c.seq).collect();
    assert_eq!(cached, expected);
    assert!(k.complete);
    assert_eq!(u64::from(k.frames_after), FRAMES - 1 - last_key);
}

#[test]
fn a_viewer_decodes_every_frame_forwarded_across_a_switch_between_unrelated_sources() {
    let t0 = Instant::now();
    // Two publishers: str0m picks each one's SSRC and first sequence number at random, and their
    // clocks are a million ticks apart.
    let (a, _) = capture(t0, 20, 0);
    let (b, _) = capture(t0, 20, 1_000_000);
    let (mut link, mut now) = Link::connected(t0, true, false);
    let ssrc = link
        .sender
        .direct_api()
        .stream_tx_by_mid(link.mid, None)
        .map(|tx| tx.ssrc())
        .expect("a send stream from the SDP");
    let (src_a, src_b) = (SourceId { id: 1, epoch: 0 }, SourceId { id: 2, epoch: 0 });
    let mut rewriter = Rewriter::new(7);
    let mut vp8 = Vp8Rewriter::default();
    // Frames 0..15 of A, then B from its keyframe at frame 10: the switch.
    let plan: Vec<(SourceId, u64, &RtpPacket)> = a
        .iter()
        .filter(|(f, _)| *f < 15)
        .map(|(f, p)| (src_a, *f, p))
        .chain(
            b.iter()
                .filter(|(f, _)| *f >= 10)
                .map(|(f, p)| (src_b, *f, p)),
        )
        .collect();
    let mut viewer_frames = Vec::new();
    let mut forwarded_frames = 0;
    let mut last = None;
    for (source, frame, p) in plan {
        // One step per source frame (its first packet), as the packets arrived.
        if last != Some((source, frame)) {
            if last.is_some() {
                viewer_frames.extend(link.step(now).frames);
            }
            now += FRAME_INTERVAL;
            last = Some((source, frame));
            forwarded_frames += 1;
        }
        let start = inspect(Codec::Vp8, &p.payload);
        let switch = source == src_b && start.keyframe;
        let packet = Packet {
            source,
            seq: *p.seq_no,
            time: p.header.timestamp,
            arrival: now,
        };
        let Rewrite::Forward(m) = rewriter.rewrite(&packet, 90_000, switch) else {
            panic!("packet of frame {frame} dropped");
        };
        let mut write = RtpWrite::new(link.pt, SeqNo::from(m.seq), m.time, now, p.payload.clone())
            .marker(p.header.marker)
            .nackable(true);
        let d = Vp8Descriptor::parse(&p.payload).expect("descriptor");
        if let Some(patch) = vp8.patch(source, &d, m.switched || m.resynced) {
            write = write.vp8_patch(patch);
        }
        link.sender
            .direct_api()
            .stream_tx(&ssrc)
            .expect("send stream")
            .write_rtp(write);
    }
    viewer_frames.extend(link.step(now).frames);
    // Another step lets anything still queued leave.
    now += FRAME_INTERVAL;
    viewer_frames.extend(link.step(now).frames);

    assert_eq!(forwarded_frames, 25);
    assert_eq!(viewer_frames.len(), 25, "every forwarded frame decoded");
    assert!(viewer_frames.iter().all(|f| f.contiguous), "no gap seen");
    for pair in viewer_frames.windows(2) {
        let [x, y] = pair else { continue };
        assert!(
            y.time > x.time,
            "time goes on: {:?} -> {:?}",
            x.time,
            y.time
        );
        assert_eq!(*y.seq_range.start(), SeqNo::from(**x.seq_range.end() + 1));
    }
}
