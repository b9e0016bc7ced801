//! The packet path's core on what a real sender sends: a frame-mode str0m `Rtc` (as the test
//! kit's client and browsers-in-tests publish) writes the test kit's VP8 frames, and an RTP-mode
//! `Rtc` (as the packet path's sessions will run) receives them as `Event::RtpPacket`. The
//! packets str0m's own VP8 packetizer made then go through keyframe detection, the packet cache
//! and a rewriter. In memory, on a simulated clock; every loop is bounded.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{RtpPacket, Vp8Descriptor};
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

struct Link {
    sender: Rtc,
    receiver: Rtc,
    sender_addr: SocketAddr,
    receiver_addr: SocketAddr,
    mid: Mid,
    pt: Pt,
}

/// Drains `rtc` to its timeout: datagrams into `out`, RTP packets into `packets`.
fn drain(rtc: &mut Rtc, out: &mut Vec<Vec<u8>>, packets: &mut Vec<RtpPacket>) -> bool {
    let mut connected = false;
    for _ in 0..MAX_OUTPUTS {
        match rtc.poll_output() {
            Ok(Output::Timeout(_)) => return connected,
            Ok(Output::Transmit(t)) => out.push(t.contents.to_vec()),
            Ok(Output::Event(Event::RtpPacket(p))) => packets.push(p),
            Ok(Output::Event(Event::Connected)) => connected = true,
            Ok(Output::Event(_)) => {}
            Err(e) => panic!("poll_output: {e}"),
        }
    }
    panic!("no timeout after {MAX_OUTPUTS} outputs");
}

/// Delivers datagrams one at a time, draining `rtc` after each: in RTP mode str0m keeps only the
/// last received packet for the next `poll_output`, so a batch without drains loses packets.
/// Returns whether `rtc` reported itself connected.
fn deliver(
    rtc: &mut Rtc,
    now: Instant,
    (from, to): (SocketAddr, SocketAddr),
    datagrams: &[Vec<u8>],
    out: &mut Vec<Vec<u8>>,
    packets: &mut Vec<RtpPacket>,
) -> bool {
    let mut connected = false;
    for d in datagrams {
        let r = Receive::new(Protocol::Udp, from, to, d).expect("parsable datagram");
        rtc.handle_input(Input::Receive(now, r)).expect("receive");
        connected |= drain(rtc, out, packets);
    }
    connected
}

impl Link {
    fn new(now: Instant) -> Link {
        let sender_addr = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 5000));
        let receiver_addr = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 2), 5000));
        let mut sender = Rtc::builder().build(now);
        let mut receiver = Rtc::builder()
            .set_ice_lite(true)
            .set_rtp_mode(true)
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
        let pt = sender
            .writer(mid)
            .expect("writer")
            .payload_params()
            .find(|p| p.spec().codec == Codec::Vp8)
            .map(|p| p.pt())
            .expect("VP8 negotiated");
        Link {
            sender,
            receiver,
            sender_addr,
            receiver_addr,
            mid,
            pt,
        }
    }

    /// Both timers at `now`, then datagrams back and forth until both are quiet. Returns the
    /// receiver's RTP packets and whether the sender connected.
    fn step(&mut self, now: Instant) -> (Vec<RtpPacket>, bool) {
        let mut packets = Vec::new();
        let mut connected = false;
        self.sender
            .handle_input(Input::Timeout(now))
            .expect("timeout");
        self.receiver
            .handle_input(Input::Timeout(now))
            .expect("timeout");
        let mut to_receiver = Vec::new();
        connected |= drain(&mut self.sender, &mut to_receiver, &mut packets);
        for _ in 0..MAX_ROUNDS {
            let mut to_sender = Vec::new();
            drain(&mut self.receiver, &mut to_sender, &mut packets);
            let addrs = (self.sender_addr, self.receiver_addr);
            deliver(
                &mut self.receiver,
                now,
                addrs,
                &to_receiver,
                &mut to_sender,
                &mut packets,
            );
            let back = (self.receiver_addr, self.sender_addr);
            to_receiver.clear();
            let mut ignored = Vec::new();
            connected |= deliver(
                &mut self.sender,
                now,
                back,
                &to_sender,
                &mut to_receiver,
                &mut ignored,
            );
            connected |= drain(&mut self.sender, &mut to_receiver, &mut ignored);
            if to_receiver.is_empty() && to_sender.is_empty() {
                return (packets, connected);
            }
        }
        panic!("still exchanging after {MAX_ROUNDS} rounds");
    }
}

#[test]
fn str0m_vp8_packets_are_detected_cached_and_rewritten() {
    let mut now = Instant::now();
    let mut link = Link::new(now);
    let mut connected = false;
    for _ in 0..CONNECT_STEPS {
        connected |= link.step(now).1;
        if connected {
            break;
        }
        now += Duration::from_millis(10);
    }
    assert!(connected, "the in-memory pair never connected");

    let mut received: Vec<(u64, RtpPacket)> = Vec::new();
    for frame in 0..FRAMES {
        now += Duration::from_millis(33);
        let keyframe = frame % KEYFRAME_EVERY == 0;
        let data = vp8_frame(frame, keyframe, FRAME_BYTES, 0);
        let time = MediaTime::from_90khz(frame * 3000);
        link.sender
            .writer(link.mid)
            .expect("writer")
            .write(link.pt, now, time, data)
            .expect("write");
        let (packets, _) = link.step(now);
        received.extend(packets.into_iter().map(|p| (frame, p)));
    }

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
