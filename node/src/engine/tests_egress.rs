//! Audio egress in the in-memory world: what a marked publisher puts in the egress queue, and
//! that a copy of its track relayed to another node puts nothing there.

use std::time::Duration;

use str0m::format::Codec;
use str0m::media::MediaKind;

use super::*;
use crate::ids::{DownId, UpId};
use crate::testing::{APP, World, synthetic_frame};

/// Unix ms the tests anchor the wall clock at.
const ANCHOR_MS: u64 = 1_700_000_000_000;

fn labels(user: &str) -> EgressLabels {
    EgressLabels {
        app: APP.to_string(),
        room: "room.1".to_string(),
        user: user.to_string(),
        client: "web\r\n1".to_string(),
    }
}

/// A world with egress on, a publisher of `mic` and `cam` connected; (world, client, session,
/// audio mid). Nothing is sent yet.
fn egress_world() -> (World, usize, String, str0m::media::Mid) {
    let mut w = World::new(Duration::from_secs(30));
    let now = w.now;
    w.engine.enable_egress("trackmesh.audio", (now, ANCHOR_MS));
    let c = w.client();
    let sid = w.session();
    let (a, v) = w.push(c, &sid);
    w.senders.push((c, a, v));
    (w, c, sid, a)
}

fn drain(w: &mut World) -> Vec<EgressPacket> {
    std::iter::from_fn(|| w.engine.poll_egress()).collect()
}

#[test]
fn a_marked_publisher_queues_every_opus_payload_once_with_its_labels() {
    let (mut w, c, sid, audio) = egress_world();
    let id = SessionId::parse(&sid).expect("id");
    w.engine
        .set_egress(id, Some(labels("bob*")))
        .expect("mark the session");
    w.run(Duration::from_millis(1000));
    let packets = drain(&mut w);
    let sent = w.clients[c].stats().tx_frames(&audio.to_string());
    assert!(sent >= 20, "the publisher sent audio: {sent}");
    // Video frames are not Opus: only the audio track's frames are there, each once (the
    // in-memory network loses nothing; the last frame may still be on its way).
    assert!(
        packets.len() as u64 <= sent && packets.len() as u64 + 1 >= sent,
        "{} packets for {sent} audio frames sent",
        packets.len()
    );
    // The world's publishers send this frame on audio.
    let frame_len = synthetic_frame(MediaKind::Audio, false, 80).len();
    for (i, p) in packets.iter().enumerate() {
        assert_eq!(&*p.subject, "trackmesh.audio.app.room_1.bob_");
        assert_eq!(&*p.user, "bob*", "the header keeps the exact user");
        assert_eq!(&*p.client, "web__1", "no line break reaches a header");
        assert_eq!(p.codec, "opus");
        assert_eq!(
            p.payload.len(),
            frame_len,
            "the payload is the Opus frame as sent"
        );
        assert!(
            (ANCHOR_MS..=ANCHOR_MS + 1000).contains(&p.capture_ms),
            "capture time on the wall clock of the anchor: {}",
            p.capture_ms
        );
        if let Some(prev) = i.checked_sub(1).and_then(|j| packets.get(j)) {
            assert_eq!(
                p.seq,
                prev.seq + 1,
                "RTP sequence numbers follow each other"
            );
            assert!(p.capture_ms >= prev.capture_ms);
        }
    }
    assert_eq!(w.engine.stats().egress_queued, packets.len() as u64);

    // Unmarked: nothing more.
    w.engine.set_egress(id, None).expect("unmark");
    w.run(Duration::from_millis(200));
    assert!(
        drain(&mut w).is_empty(),
        "an unmarked session queues nothing"
    );
}

#[test]
fn a_relayed_copy_of_a_marked_track_is_not_queued_on_the_other_node() {
    let (mut a, _c, sid, _audio) = egress_world();
    let id = SessionId::parse(&sid).expect("id");
    a.engine.set_egress(id, Some(labels("bob"))).expect("mark");
    a.run(Duration::from_millis(300));
    let info = a
        .engine
        .relay_subscribe(DownId(1), APP, id, "mic")
        .expect("codec known after media");
    assert_eq!(info.kind, MediaKind::Audio);
    assert_eq!(info.codec.codec, Codec::Opus);

    // Node B: egress on too, the track relayed in, pulled by a subscriber there.
    let mut b = World::new(Duration::from_secs(30));
    b.now = a.now;
    let now = b.now;
    b.engine.enable_egress("trackmesh.audio", (now, ANCHOR_MS));
    b.engine
        .add_relay_publication(APP, id, "mic", UpId(7), info, b.now)
        .expect("relayed publication");
    let sub = b.client();
    let sub_sid = b.session();
    let res = b.pull(sub, &sub_sid, &[(&sid, "mic")]);
    let mid = res.tracks[0].mid.clone();
    assert_eq!(
        b.engine.set_egress(id, Some(labels("bob"))),
        Err(OpError::NotFound(format!(
            "session {id} is not on this node"
        ))),
        "only the node holding the session can mark it"
    );
    drain(&mut a);
    let mut relayed = 0;
    // Bounded: 1 s of simulated time in 1 ms steps.
    for _ in 0..1000 {
        a.run(Duration::from_millis(1));
        b.now = a.now;
        b.run(Duration::from_millis(1));
        while let Some(out) = a.engine.poll_relay() {
            if let RelayOut::Frame {
                down: DownId(1),
                frame,
                ..
            } = out
            {
                relayed += 1;
                b.engine.relay_frame(UpId(7), frame, b.now);
            }
        }
        while b.engine.poll_relay().is_some() {}
    }
    assert!(relayed > 20, "frames relayed: {relayed}");
    assert!(
        b.clients[sub].frames(&mid) > 20,
        "B's subscriber hears the relayed audio"
    );
    assert!(
        drain(&mut b).is_empty(),
        "the relayed copy is never published by B"
    );
    assert_eq!(b.engine.stats().egress_queued, 0);
    let from_a = drain(&mut a).len();
    assert!(
        from_a + 1 >= relayed,
        "A published the packets it relayed: {from_a} of {relayed}"
    );
}

#[test]
fn marking_is_refused_without_egress_for_unknown_sessions_and_long_labels() {
    let mut w = World::new(Duration::from_secs(30));
    let sid = w.session();
    let id = SessionId::parse(&sid).expect("id");
    assert!(
        matches!(
            w.engine.set_egress(id, Some(labels("u"))),
            Err(OpError::Unavailable(_))
        ),
        "no --nats: refused"
    );
    let now = w.now;
    w.engine.enable_egress("p", (now, ANCHOR_MS));
    let mut long = labels("u");
    long.room = "r".repeat(MAX_LABEL_BYTES + 1);
    assert!(matches!(
        w.engine.set_egress(id, Some(long)),
        Err(OpError::InvalidParams(_))
    ));
    let other = SessionId::new(w.engine.config().node_tag);
    assert!(matches!(
        w.engine.set_egress(other, Some(labels("u"))),
        Err(OpError::NotFound(_))
    ));
    w.engine.close_session(id, w.now, "test");
    assert!(matches!(
        w.engine.set_egress(id, Some(labels("u"))),
        Err(OpError::Gone(_))
    ));
}

#[test]
fn the_queue_is_bounded_when_the_shell_does_not_drain_it() {
    let (mut w, _c, sid, _audio) = egress_world();
    let id = SessionId::parse(&sid).expect("id");
    w.engine.set_egress(id, Some(labels("u"))).expect("mark");
    // 50 audio frames a second: past the bound in about 21 s of simulated time.
    let seconds = MAX_EGRESS_QUEUE as u64 / 50 + 2;
    w.run(Duration::from_secs(seconds));
    let stats = w.engine.stats().clone();
    assert!(stats.egress_dropped > 0, "drops are counted: {stats:?}");
    assert_eq!(drain(&mut w).len(), MAX_EGRESS_QUEUE);
}
