//! Engine tests without sockets, in the in-memory world of `crate::testing`: str0m clients and
//! the engine exchange datagrams on a simulated clock, so media, keyframes, closes and timers are
//! checked deterministically.

use std::time::Duration;

use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid};

use super::*;
use crate::ids::{DownId, UpId};
use crate::testing::{APP, World};

/// A pull of one track, optionally into a given mid (`#name`).
fn pull_one(session: &str, track: &str, mid: Option<&str>) -> TracksNew {
    TracksNew::Remote {
        tracks: vec![RemoteTrack {
            session_id: Some(session.to_string()),
            track_name: Some(track.to_string()),
            mid: mid.map(str::to_string),
            simulcast: None,
        }],
    }
}

/// A publisher with audio + video, connected and sending.
fn publishing_world(track_timeout: Duration) -> (World, String) {
    let mut w = World::new(track_timeout);
    let c = w.client();
    let sid = w.session();
    let (a, v) = w.push(c, &sid);
    w.senders.push((c, a, v));
    w.run(Duration::from_millis(300));
    assert!(
        w.clients[c].connected(),
        "publisher connects to the ICE-lite engine"
    );
    (w, sid)
}

#[test]
fn pulled_audio_and_video_arrive_with_a_keyframe() {
    let (mut w, pub_sid) = publishing_world(Duration::from_secs(30));
    let sub = w.client();
    let sub_sid = w.session();
    let res = w.pull(sub, &sub_sid, &[(&pub_sid, "mic"), (&pub_sid, "cam")]);
    assert!(res.requires_immediate_renegotiation);
    assert_eq!(res.tracks.len(), 2);
    for t in &res.tracks {
        assert!(t.error.is_none(), "{t:?}");
        assert!(!t.mid.is_empty());
        assert_eq!(t.session_id.as_deref(), Some(pub_sid.as_str()));
    }
    let (am, vm) = (res.tracks[0].mid.clone(), res.tracks[1].mid.clone());
    w.run(Duration::from_millis(1500));
    let s = &w.clients[sub];
    assert!(s.connected());
    assert!(s.frames(&am) > 20, "audio frames: {}", s.frames(&am));
    assert!(s.frames(&vm) > 20, "video frames: {}", s.frames(&vm));
    assert!(s.keyframes(&vm) > 0, "a keyframe reached the subscriber");
    assert!(
        w.clients[0].keyframe_requests() > 0,
        "the publisher was asked for a keyframe"
    );
    assert!(
        w.statuses(&sub_sid)
            .iter()
            .all(|(_, l, active)| *l == Location::Remote && *active)
    );
    assert!(
        w.statuses(&pub_sid)
            .iter()
            .all(|(_, l, active)| *l == Location::Local && *active)
    );
}

#[test]
fn one_publisher_fans_out_to_many_subscribers() {
    let (mut w, pub_sid) = publishing_world(Duration::from_secs(30));
    let mut subs = Vec::new();
    for _ in 0..5 {
        let c = w.client();
        let sid = w.session();
        let res = w.pull(c, &sid, &[(&pub_sid, "cam")]);
        subs.push((c, res.tracks[0].mid.clone()));
    }
    w.run(Duration::from_millis(1000));
    for (c, mid) in subs {
        assert!(
            w.clients[c].frames(&mid) > 10,
            "subscriber {c} got {}",
            w.clients[c].frames(&mid)
        );
    }
}

/// `n` audio frames of the test publisher's `audio` mid, sent by the test itself as one batch
/// of input (datagrams handed to the engine with no `handle_timeout` or `poll_transmit` between
/// them: each ends a batch): its RTP datagrams, 20 ms of the world's clock apart.
fn audio_rtp_batch(w: &mut World, publisher: usize, audio: Mid, n: usize) -> Vec<Vec<u8>> {
    let pt = w.payload_type(publisher, audio, Codec::Opus);
    let mut batch = Vec::new();
    for i in 1..=n as u64 {
        w.now += Duration::from_millis(20);
        let time = str0m::media::MediaTime::from_90khz((w.media_clock + i) * 960);
        // RTP only (RFC 7983, 5761): version 2 in the first byte, no RTCP packet type
        // (200-206, read as 192-223 with the marker bit) in the second.
        let rtp = w
            .frame(publisher, audio, &pt, time, vec![0xfc; 80])
            .into_iter()
            .filter(|d| {
                d.first().is_some_and(|b| (128..=191).contains(b))
                    && d.get(1).is_some_and(|b| !(192..=223).contains(b))
            });
        batch.extend(rtp);
    }
    batch
}

#[test]
fn written_packets_wait_for_the_end_of_the_batch_but_not_too_many() {
    let (mut w, pub_sid) = publishing_world(Duration::from_secs(30));
    let c = w.client();
    let sid = w.session();
    let res = w.pull(c, &sid, &[(&pub_sid, "mic")]);
    w.run(Duration::from_millis(500));
    let mid = res.tracks[0].mid.clone();
    assert!(w.clients[c].frames(&mid) > 5, "audio flows");
    // From here the test sends the publisher's audio itself, as one batch of input.
    let (publisher, audio, _) = w.senders.remove(0);
    w.step([publisher, c], Duration::from_millis(20));
    let cap = usize::from(fanout::FLUSH_AFTER_PACKETS);
    let batch = audio_rtp_batch(&mut w, publisher, audio, cap + 2);
    assert_eq!(batch.len(), cap + 2, "one RTP packet per audio frame");
    let (from, to) = (w.clients[publisher].addr, w.clients[c].addr);
    let sent_to_subscriber =
        |e: &Engine| e.transmits.iter().filter(|t| t.destination == to).count();
    let now = w.now;
    let mut sent = Vec::new();
    for d in &batch {
        w.engine.handle_datagram(now, from, d);
        sent.push(sent_to_subscriber(&w.engine));
    }
    assert!(
        sent[..cap - 1].iter().all(|&n| n == 0),
        "packets wait for the batch to end: {sent:?}"
    );
    assert!(
        sent[cap - 1] >= cap,
        "the {cap}th sends them at once: {sent:?}"
    );
    assert_eq!(sent[cap], sent[cap - 1], "the next waits again: {sent:?}");
    w.engine.handle_timeout(now);
    assert!(
        sent_to_subscriber(&w.engine) >= sent[cap - 1] + 2,
        "the batch's end sends the rest"
    );
}

#[test]
fn each_viewers_packets_leave_together_when_a_batch_sent_them_in_chunks() {
    // A batch bigger than `FLUSH_AFTER_PACKETS` (a keyframe) is sent to every viewer in chunks.
    // Sent in that order, every viewer's frame would be complete only with the batch's last
    // chunk; each viewer's packets leave together instead, the first viewer's first.
    let (mut w, pub_sid) = publishing_world(Duration::from_secs(30));
    let viewers: Vec<usize> = (0..2)
        .map(|_| {
            let c = w.client();
            let sid = w.session();
            w.pull(c, &sid, &[(&pub_sid, "mic")]);
            c
        })
        .collect();
    w.run(Duration::from_millis(500));
    let (publisher, audio, _) = w.senders.remove(0);
    let mut stepped = viewers.clone();
    stepped.push(publisher);
    w.step(stepped, Duration::from_millis(20));
    let cap = usize::from(fanout::FLUSH_AFTER_PACKETS);
    let batch = audio_rtp_batch(&mut w, publisher, audio, cap + 2);
    let from = w.clients[publisher].addr;
    let to: Vec<SocketAddr> = viewers.iter().map(|&c| w.clients[c].addr).collect();
    let now = w.now;
    for d in &batch {
        w.engine.handle_datagram(now, from, d);
    }
    w.engine.handle_timeout(now);
    let mut order = Vec::new();
    for _ in 0..10_000 {
        let Some(t) = w.engine.poll_transmit() else {
            break;
        };
        if let Some(i) = to.iter().position(|a| *a == t.destination) {
            order.push(i);
        }
    }
    assert!(
        order.len() >= 2 * (cap + 2),
        "every packet went out: {order:?}"
    );
    let changes = order.windows(2).filter(|p| p[0] != p[1]).count();
    assert_eq!(changes, 1, "each viewer's packets together: {order:?}");
}

#[test]
fn a_joining_subscriber_starts_with_the_cached_keyframe() {
    // The test publisher sends a keyframe every 25 frames (500 ms) and ignores keyframe requests,
    // so a keyframe inside the window below can only come from the engine's cache.
    let (mut w, pub_sid) = publishing_world(Duration::from_secs(30));
    // Past the publisher's second keyframe (its first may precede the connection).
    w.run(Duration::from_millis(300));
    let publisher_keyframes = w.media_clock.div_ceil(25);
    let c = w.client();
    let sid = w.session();
    let res = w.pull(c, &sid, &[(&pub_sid, "cam")]);
    let mid = res.tracks[0].mid.clone();
    w.run(Duration::from_millis(150));
    assert_eq!(
        w.media_clock.div_ceil(25),
        publisher_keyframes,
        "the publisher sent no keyframe during the join"
    );
    let s = &w.clients[c];
    assert!(s.connected());
    assert_eq!(
        s.first_is_keyframe(&mid),
        Some(true),
        "the first video frame is a keyframe"
    );
    // Delta frames that reference frames the subscriber never got are held back.
    assert_eq!(s.frames(&mid), s.keyframes(&mid));
    assert!(w.engine.stats().keyframes_from_cache >= 1);
    assert!(w.engine.stats().frames_held_for_keyframe > 0);
    // The next keyframe releases the flow.
    w.run(Duration::from_millis(600));
    let s = &w.clients[c];
    assert!(
        s.frames(&mid) > s.keyframes(&mid) + 5,
        "delta frames flow again"
    );
}

/// A relayed VP8 packet (one whole frame): bit 0 of the frame's first byte is 0 for a keyframe.
fn relayed_vp8(n: u64, keyframe: bool) -> RelayFrame {
    RelayFrame {
        rtp_time: n * 3000,
        origin_seq: n,
        marker: true,
        keyframe,
        data: crate::testing::vp8_packet(keyframe, 1000).into(),
        rid: None,
        orientation: None,
    }
}

/// A world holding a relayed VP8 publication "cam" fed through upstream 7, whose frames the
/// test feeds by hand.
fn relayed_video_world() -> (World, SessionId) {
    let mut w = World::new(Duration::from_secs(30));
    let publisher = SessionId::new(NodeTag(0x0bad_cafe));
    let info = TrackInfo {
        kind: MediaKind::Video,
        codec: CodecInfo {
            codec: Codec::Vp8,
            clock_rate: 90_000,
            channels: None,
        },
    };
    w.engine
        .add_relay_publication(APP, publisher, "cam", UpId(7), info, w.now)
        .expect("relayed publication");
    (w, publisher)
}

/// Feeds relayed frames `frames` (numbered as [`relayed_vp8`]) through upstream 7, one every
/// 33 ms; frame `keyframe` is a keyframe.
fn feed_relayed(w: &mut World, frames: std::ops::RangeInclusive<u64>, keyframe: Option<u64>) {
    for n in frames {
        let now = w.now;
        w.engine
            .relay_frame(UpId(7), relayed_vp8(n, Some(n) == keyframe), now);
        w.run(Duration::from_millis(33));
    }
}

#[test]
fn the_cached_keyframe_lets_a_viewer_follow_on_when_no_frame_came_after_it() {
    let (mut w, publisher) = relayed_video_world();
    let now = w.now;
    w.engine.relay_frame(UpId(7), relayed_vp8(1, true), now);

    // Joins right after the keyframe: served it from the cache and then follows the live deltas.
    let first = w.client();
    let first_sid = w.session();
    let first_mid = w
        .pull(first, &first_sid, &[(&publisher.to_string(), "cam")])
        .tracks[0]
        .mid
        .clone();
    w.run(Duration::from_millis(300));
    assert!(w.clients[first].connected());
    assert_eq!(
        w.clients[first].keyframes(&first_mid),
        1,
        "the cached keyframe"
    );
    feed_relayed(&mut w, 2..=6, None);
    assert_eq!(
        w.clients[first].frames(&first_mid),
        6,
        "the deltas follow at once"
    );

    // Joins after deltas it will never get: the cached keyframe, then nothing until a new one.
    let late = w.client();
    let late_sid = w.session();
    let late_mid = w
        .pull(late, &late_sid, &[(&publisher.to_string(), "cam")])
        .tracks[0]
        .mid
        .clone();
    w.run(Duration::from_millis(300));
    feed_relayed(&mut w, 7..=9, None);
    assert_eq!(
        w.clients[late].frames(&late_mid),
        1,
        "only the cached keyframe"
    );
    let now = w.now;
    w.engine.relay_frame(UpId(7), relayed_vp8(10, true), now);
    w.engine.relay_frame(UpId(7), relayed_vp8(11, false), now);
    w.run(Duration::from_millis(50));
    assert_eq!(
        w.clients[late].frames(&late_mid),
        3,
        "the live keyframe releases it"
    );
    assert_eq!(w.clients[first].frames(&first_mid), 11);
}

#[test]
fn a_relay_gap_freezes_video_until_the_keyframe_it_asks_for() {
    let (mut w, publisher) = relayed_video_world();
    let viewer = w.client();
    let sid = w.session();
    let mid = w
        .pull(viewer, &sid, &[(&publisher.to_string(), "cam")])
        .tracks[0]
        .mid
        .clone();
    w.run(Duration::from_millis(300));
    while w.engine.poll_relay().is_some() {}
    feed_relayed(&mut w, 1..=3, Some(1));
    assert_eq!(w.clients[viewer].frames(&mid), 3);

    // Frame 4 never arrived: the node asks up the relay for a keyframe (at most one request
    // a second per track, so past the one the viewer's join made)...
    let now = w.now;
    w.engine.relay_gap(UpId(7), now);
    w.run(Duration::from_millis(1100));
    let mut asked = false;
    while let Some(out) = w.engine.poll_relay() {
        asked |= matches!(out, RelayOut::KeyframeRequest { up: UpId(7) });
    }
    assert!(
        asked,
        "a keyframe is asked for when relayed frames are lost"
    );
    // ...and the deltas that cannot be decoded are not shown to the viewer.
    feed_relayed(&mut w, 5..=6, None);
    assert_eq!(
        w.clients[viewer].frames(&mid),
        3,
        "deltas after a gap withheld"
    );
    assert_eq!(w.engine.stats().relay_gap_withheld, 2);
    // A viewer joining now is not given the keyframe from before the gap.
    let late = w.client();
    let late_sid = w.session();
    let late_mid = w
        .pull(late, &late_sid, &[(&publisher.to_string(), "cam")])
        .tracks[0]
        .mid
        .clone();
    w.run(Duration::from_millis(300));
    assert_eq!(w.clients[late].frames(&late_mid), 0, "no stale keyframe");

    // The keyframe resumes both.
    feed_relayed(&mut w, 7..=8, Some(7));
    assert_eq!(w.clients[viewer].frames(&mid), 5, "resumed at the keyframe");
    assert_eq!(w.clients[late].frames(&late_mid), 2);
}

#[test]
fn a_silent_subscriber_is_not_fed_until_it_is_heard_again() {
    let (mut w, pub_sid) = publishing_world(Duration::from_secs(60));
    let (gone, live) = (w.client(), w.client());
    let (gone_sid, live_sid) = (w.session(), w.session());
    let gone_mid = w.pull(gone, &gone_sid, &[(&pub_sid, "mic")]).tracks[0]
        .mid
        .clone();
    let live_mid = w.pull(live, &live_sid, &[(&pub_sid, "mic")]).tracks[0]
        .mid
        .clone();
    w.run(Duration::from_millis(500));
    assert!(w.clients[gone].frames(&gone_mid) > 10);
    // Everything `gone` sends is lost from now on (its RTCP and consent checks included).
    w.loss_from.insert(gone, 1);
    w.run(Duration::from_secs(12));
    let paused = w.engine.stats().frames_to_silent;
    assert!(
        paused > 50,
        "frames not sent to the silent subscriber: {paused}"
    );
    let before = w.clients[gone].frames(&gone_mid);
    w.run(Duration::from_millis(500));
    assert_eq!(
        w.clients[gone].frames(&gone_mid),
        before,
        "nothing reaches it"
    );
    assert!(
        w.clients[live].frames(&live_mid) > 500,
        "the live subscriber is unaffected"
    );
    // Heard again: media resumes.
    w.loss_from.clear();
    w.run(Duration::from_secs(6));
    assert!(
        w.clients[gone].frames(&gone_mid) > before + 10,
        "media resumes once it is heard from"
    );
}

#[test]
fn unknown_tracks_fail_per_item_with_an_empty_mid() {
    let (mut w, pub_sid) = publishing_world(Duration::from_secs(30));
    let c = w.client();
    let sid = w.session();
    let res = w.pull(
        c,
        &sid,
        &[
            (&pub_sid, "nope"),
            ("00000000000000000000000000000000", "cam"),
            (&pub_sid, "cam"),
        ],
    );
    assert_eq!(res.tracks[0].mid, "");
    assert_eq!(res.tracks[0].error, Some(TrackError::NotFound));
    assert_eq!(res.tracks[1].error, Some(TrackError::NotFound));
    assert!(res.tracks[2].error.is_none());
    assert!(
        res.requires_immediate_renegotiation,
        "the found track still gets an offer"
    );

    let c2 = w.client();
    let sid2 = w.session();
    let res = w.pull(c2, &sid2, &[(&pub_sid, "nope")]);
    assert!(
        !res.requires_immediate_renegotiation,
        "nothing found: no offer"
    );
    assert!(res.description.is_none());
}

/// A session's SDP keeps a section for every track it ever pulled. A pull that would take it past
/// what the client's answer may have is refused up front, rather than leaving an offer that can
/// never be answered (and every later `tracks/new` refused for want of that answer).
#[test]
fn a_pull_past_the_sdp_section_bound_is_refused_before_any_offer() {
    let (mut w, pub_sid) = publishing_world(Duration::from_secs(30));
    let c = w.client();
    let sid = w.session();
    w.pull(c, &sid, &[(&pub_sid, "mic"), (&pub_sid, "cam")]);
    let id = SessionId::parse(&sid).expect("session id");
    assert_eq!(
        w.engine.sessions[&id].m_lines, 2,
        "the offer's sections are counted"
    );
    let publisher = SessionId::parse(&pub_sid).expect("session id");
    assert_eq!(
        w.engine.sessions[&publisher].m_lines, 2,
        "and so are those of an offer the client made"
    );
    // As if hundreds of pulls had come and gone.
    let bound = super::sdp_limits::MAX_M_LINES;
    if let Some(s) = w.engine.sessions.get_mut(&id) {
        s.m_lines = bound - 1;
    }
    let two = TracksNew::Remote {
        tracks: ["mic", "cam"]
            .into_iter()
            .map(|t| RemoteTrack {
                session_id: Some(pub_sid.clone()),
                track_name: Some(t.to_string()),
                ..Default::default()
            })
            .collect(),
    };
    match w.engine.tracks_new(APP, &sid, two, w.now) {
        Err(OpError::InvalidParams(m)) => assert!(m.contains("m-sections"), "{m}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        w.engine.sessions[&id].pending.is_none(),
        "no offer was left waiting"
    );
    // One more section still fits, and the session is still usable.
    let res = w.pull(c, &sid, &[(&pub_sid, "mic")]);
    assert!(res.requires_immediate_renegotiation);
    assert!(res.tracks[0].error.is_none(), "{:?}", res.tracks[0]);
}

#[test]
fn closing_stops_media_and_marks_tracks_inactive() {
    let (mut w, pub_sid) = publishing_world(Duration::from_secs(30));
    let sub = w.client();
    let sub_sid = w.session();
    let res = w.pull(sub, &sub_sid, &[(&pub_sid, "mic"), (&pub_sid, "cam")]);
    let vm = res.tracks[1].mid.clone();
    w.run(Duration::from_millis(600));
    assert!(w.clients[sub].frames(&vm) > 0);

    // The subscriber closes its video pull without renegotiating.
    let closed = w
        .engine
        .tracks_close(APP, &sub_sid, vec![vm.clone()], true, None, w.now)
        .expect("close");
    assert!(closed.tracks[0].error.is_none());
    w.run(Duration::from_millis(200));
    let before = w.clients[sub].frames(&vm);
    w.run(Duration::from_millis(500));
    assert_eq!(
        w.clients[sub].frames(&vm),
        before,
        "no more video after close"
    );
    let st = w.statuses(&sub_sid);
    assert_eq!(st.iter().filter(|(_, _, a)| !*a).count(), 1, "{st:?}");

    // The publisher closes its audio: the subscriber's audio pull turns inactive.
    let a_mid = w
        .statuses(&pub_sid)
        .iter()
        .position(|(n, _, _)| n == "mic")
        .expect("mic");
    let mid = w.engine.session_tracks(APP, &pub_sid).expect("tracks")[a_mid]
        .mid
        .clone();
    w.engine
        .tracks_close(APP, &pub_sid, vec![mid], true, None, w.now)
        .expect("close");
    assert!(w.statuses(&sub_sid).iter().all(|(_, _, a)| !*a));
    assert!(
        w.statuses(&pub_sid)
            .iter()
            .any(|(n, _, a)| n == "mic" && !*a)
    );
    assert!(
        w.statuses(&pub_sid)
            .iter()
            .any(|(n, _, a)| n == "cam" && *a)
    );

    // Closing an unknown mid fails per item; an empty list is refused.
    let res = w
        .engine
        .tracks_close(APP, &sub_sid, vec!["99".into()], true, None, w.now)
        .expect("close");
    assert_eq!(
        res.tracks[0].error,
        Some(TrackError::Close("no open track with this mid".into()))
    );
    assert!(matches!(
        w.engine
            .tracks_close(APP, &sub_sid, vec![], true, None, w.now),
        Err(OpError::InvalidParams(_))
    ));
}

#[test]
fn tracks_without_media_are_garbage_collected() {
    let (mut w, pub_sid) = publishing_world(Duration::from_secs(2));
    w.run(Duration::from_millis(2500));
    assert!(
        w.statuses(&pub_sid).iter().all(|(_, _, a)| *a),
        "media keeps tracks alive"
    );
    w.senders.clear();
    w.run(Duration::from_millis(2600));
    assert!(
        w.statuses(&pub_sid).iter().all(|(_, _, a)| !*a),
        "{:?}",
        w.statuses(&pub_sid)
    );
    let c = w.client();
    let sid = w.session();
    let res = w.pull(c, &sid, &[(&pub_sid, "cam")]);
    assert_eq!(res.tracks[0].error, Some(TrackError::NotFound));
}

#[test]
fn session_close_frees_publications_and_subscriptions() {
    let (mut w, pub_sid) = publishing_world(Duration::from_secs(30));
    let sub = w.client();
    let sub_sid = w.session();
    w.pull(sub, &sub_sid, &[(&pub_sid, "cam")]);
    w.run(Duration::from_millis(300));
    let key = (SessionId::parse(&pub_sid).expect("id"), "cam".to_string());
    assert_eq!(w.engine.publications[&key].subscribers.len(), 1);

    w.engine
        .close_session(SessionId::parse(&sub_sid).expect("id"), w.now, "test");
    assert!(
        w.engine.publications[&key].subscribers.is_empty(),
        "subscriber released"
    );
    assert!(matches!(
        w.engine.session_tracks(APP, &sub_sid),
        Err(OpError::Gone(_))
    ));

    w.engine
        .close_session(SessionId::parse(&pub_sid).expect("id"), w.now, "test");
    assert_eq!(w.engine.publication_count(), 0);
    assert_eq!(w.engine.session_count(), 0);
    assert_eq!(w.engine.demux.addr_count(), 0, "no address routes left");
    assert!(w.engine.timers.is_empty(), "no timers left");
}

#[test]
fn protocol_errors() {
    let (mut w, pub_sid) = publishing_world(Duration::from_secs(30));
    let now = w.now;
    assert!(matches!(
        w.engine.renegotiate(APP, &pub_sid, "v=0\r\n".into(), now),
        Err(OpError::Decoding(_)) | Err(OpError::InvalidSdp(_))
    ));
    let sid = w.session();
    let too_many = (0..65)
        .map(|i| RemoteTrack {
            session_id: Some(pub_sid.clone()),
            track_name: Some(format!("t{i}")),
            mid: None,
            simulcast: None,
        })
        .collect();
    assert!(matches!(
        w.engine
            .tracks_new(APP, &sid, TracksNew::Remote { tracks: too_many }, now),
        Err(OpError::InvalidParams(_))
    ));
    assert!(matches!(
        w.engine
            .session_tracks(APP, "ffffffffffffffffffffffffffffffff"),
        Err(OpError::NotFound(_))
    ));
    assert!(matches!(
        w.engine.session_tracks("other-app", &pub_sid),
        Err(OpError::NotFound(_))
    ));
    assert!(matches!(
        w.engine.tracks_new(
            APP,
            &sid,
            TracksNew::OfferOnly {
                offer: "garbage".into()
            },
            now
        ),
        Err(OpError::Decoding(_))
    ));

    // An SFU offer that is not answered blocks the next SDP exchange, and an answer without an
    // offer is refused.
    let c = w.client();
    let res = w
        .engine
        .tracks_new(APP, &sid, pull_one(&pub_sid, "cam", None), now)
        .expect("pull");
    assert!(res.description.is_some());
    let again = w
        .engine
        .tracks_new(APP, &sid, pull_one(&pub_sid, "mic", None), now);
    assert!(matches!(again, Err(OpError::InvalidSdp(_))));
    let offer = SdpOffer::from_sdp_string(&res.description.expect("offer").sdp).expect("sdp");
    let answer = w.clients[c]
        .rtc()
        .sdp_api()
        .accept_offer(offer)
        .expect("answer")
        .to_sdp_string();
    w.engine
        .renegotiate(APP, &sid, answer.as_str().into(), now)
        .expect("first answer");
    assert!(matches!(
        w.engine.renegotiate(APP, &sid, answer.as_str().into(), now),
        Err(OpError::InvalidSdp(_))
    ));
}

#[test]
fn unconnected_sessions_expire() {
    let mut w = World::new(Duration::from_secs(30));
    let sid = w.session();
    w.run(Duration::from_millis(500));
    assert!(w.engine.session_tracks(APP, &sid).is_ok());
    w.now += Duration::from_secs(121);
    w.engine.handle_timeout(w.now);
    assert!(matches!(
        w.engine.session_tracks(APP, &sid),
        Err(OpError::Gone(_))
    ));
}

#[test]
fn max_sessions_is_enforced() {
    let mut w = World::new(Duration::from_secs(30));
    for _ in 0..100 {
        w.session();
    }
    assert!(matches!(
        w.engine.create_session(APP, None, w.now),
        Err(OpError::Unavailable(_))
    ));
}

#[test]
fn random_datagrams_never_panic() {
    let (mut w, _) = publishing_world(Duration::from_secs(30));
    let addrs = [w.clients[0].addr, "127.0.0.1:9".parse().expect("addr")];
    let mut x: u32 = 12345;
    for i in 0..5000 {
        let len = i % 300;
        let buf: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        w.engine.handle_datagram(w.now, addrs[i % 2], &buf);
    }
    w.run(Duration::from_millis(100));
}

#[test]
fn auto_discover_names_every_sent_section() {
    let mut w = World::new(Duration::from_secs(30));
    let c = w.client();
    let sid = w.session();
    let (offer, pending) = {
        let mut sdp = w.clients[c].rtc().sdp_api();
        sdp.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        sdp.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        sdp.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        sdp.apply().expect("offer")
    };
    let req = TracksNew::Local {
        offer: Some(offer.to_sdp_string().into()),
        tracks: vec![],
        auto_discover: true,
    };
    let res = w.engine.tracks_new(APP, &sid, req, w.now).expect("push");
    assert_eq!(
        res.tracks.len(),
        2,
        "the recvonly section is no track: {:?}",
        res.tracks
    );
    assert!(
        res.tracks
            .iter()
            .all(|t| t.error.is_none() && !t.mid.is_empty())
    );
    w.accept_answer(c, pending, &res.description.expect("answer").sdp);
    let names: Vec<String> = res
        .tracks
        .iter()
        .filter_map(|t| t.track_name.clone())
        .collect();
    let sub = w.client();
    let sub_sid = w.session();
    let pulled = w.pull(sub, &sub_sid, &[(&sid, &names[0]), (&sid, &names[1])]);
    assert!(
        pulled.tracks.iter().all(|t| t.error.is_none()),
        "{:?}",
        pulled.tracks
    );
}

/// Moves node A's relay output for downstream `down` into node B's upstream `up`.
fn shuttle(a: &mut World, b: &mut World, down: DownId, up: UpId) -> (usize, usize) {
    let (mut frames, mut keyframe_requests) = (0, 0);
    while let Some(out) = a.engine.poll_relay() {
        if let RelayOut::Frame { down: d, frame, .. } = out
            && d == down
        {
            frames += 1;
            b.engine.relay_frame(up, frame, b.now);
        }
    }
    while let Some(out) = b.engine.poll_relay() {
        if let RelayOut::KeyframeRequest { up: u } = out
            && u == up
        {
            keyframe_requests += 1;
            a.engine.relay_keyframe_request(down, a.now);
        }
    }
    (frames, keyframe_requests)
}

/// A publishing world whose "cam" another node pulls as downstream 1, once delta frames have
/// followed the publisher's first keyframe.
fn relayed_downstream_world() -> World {
    let (mut a, pub_sid) = publishing_world(Duration::from_secs(30));
    a.run(Duration::from_millis(300));
    let sid = SessionId::parse(&pub_sid).expect("id");
    a.engine
        .relay_subscribe(DownId(1), APP, sid, "cam")
        .expect("codec known after media");
    a
}

#[test]
fn a_new_relay_downstream_gets_no_stale_keyframe_but_the_live_one_it_asks_for() {
    let mut a = relayed_downstream_world();
    // (keyframes, frames) sent to the downstream since the last look.
    let sent = |a: &mut World| {
        let (mut keyframes, mut frames) = (0, 0);
        while let Some(out) = a.engine.poll_relay() {
            if let RelayOut::Frame {
                down: DownId(1),
                frame,
                ..
            } = out
            {
                frames += 1;
                keyframes += usize::from(frame.keyframe);
            }
        }
        (keyframes, frames)
    };
    assert_eq!(sent(&mut a).0, 0, "no keyframe before it asks");
    a.engine.relay_keyframe_request(DownId(1), a.now);
    // The cached keyframe is older than the deltas the downstream already got: sending it
    // would have the other node's viewers decode deltas that do not build on it.
    assert_eq!(sent(&mut a).0, 0, "no stale cached keyframe");
    // The request reaches the publisher (deferred to the end of its once-a-second budget),
    // whose next keyframe goes to the downstream.
    a.run(Duration::from_millis(1500));
    let (keyframes, frames) = sent(&mut a);
    assert!(
        keyframes >= 1,
        "the live keyframe: {keyframes} of {frames} frames"
    );
}

#[test]
fn a_relayed_publication_feeds_local_subscribers_with_keyframes() {
    let (mut a, pub_sid) = publishing_world(Duration::from_secs(30));
    let sid = SessionId::parse(&pub_sid).expect("id");
    let info = a
        .engine
        .relay_subscribe(DownId(1), APP, sid, "cam")
        .expect("codec known after media");
    assert_eq!(info.kind, MediaKind::Video);
    assert_eq!(info.codec.codec, Codec::Vp8);
    assert_eq!(
        a.engine.relay_subscribe(DownId(2), "other-app", sid, "cam"),
        Err(RelayRefusal::NotFound),
        "another app's track is not served"
    );

    let mut b = World::new(Duration::from_secs(30));
    b.now = a.now;
    b.engine
        .add_relay_publication(APP, sid, "cam", UpId(7), info, b.now)
        .expect("relayed publication");
    assert!(b.engine.has_publication(APP, sid, "cam"));
    let c = b.client();
    let sub_sid = b.session();
    let res = b.pull(c, &sub_sid, &[(&pub_sid, "cam")]);
    assert!(
        res.tracks[0].error.is_none(),
        "a relayed track is pulled like a local one"
    );
    let mid = res.tracks[0].mid.clone();
    let (mut frames, mut kf) = (0, 0);
    for _ in 0..1000 {
        a.run(Duration::from_millis(1));
        b.now = a.now;
        b.run(Duration::from_millis(1));
        let (f, k) = shuttle(&mut a, &mut b, DownId(1), UpId(7));
        frames += f;
        kf += k;
    }
    assert!(frames > 20, "frames relayed: {frames}");
    assert!(kf > 0, "the subscriber's keyframe need went upstream");
    assert!(
        b.clients[c].frames(&mid) > 20,
        "frames at B's subscriber: {}",
        b.clients[c].frames(&mid)
    );
    assert!(b.clients[c].keyframes(&mid) > 0);

    // The last local subscriber leaves: the upstream is released after a grace period.
    b.engine
        .tracks_close(APP, &sub_sid, vec![mid], true, None, b.now)
        .expect("close");
    b.now += Duration::from_secs(3);
    b.engine.handle_timeout(b.now);
    let mut released = false;
    while let Some(out) = b.engine.poll_relay() {
        released |= matches!(out, RelayOut::Unused { up: UpId(7) });
    }
    assert!(released, "unused upstream released");
    assert!(!b.engine.has_publication(APP, sid, "cam"));

    // The origin ends the track: the downstream is told.
    a.engine.relay_unsubscribe(DownId(1), a.now);
    let _ = a
        .engine
        .relay_subscribe(DownId(3), APP, sid, "cam")
        .expect("again");
    a.engine.close_session(sid, a.now, "test");
    let mut ended = false;
    while let Some(out) = a.engine.poll_relay() {
        ended |= matches!(out, RelayOut::Ended { down: DownId(3) });
    }
    assert!(ended);
}

#[test]
fn nack_repairs_loss_on_both_legs() {
    // The same run without and with loss on the publisher's uplink and the subscriber's
    // downlink: with NACK/RTX on each leg, frames still arrive whole.
    let received = |loss: Option<u64>| {
        let (mut w, pub_sid) = publishing_world(Duration::from_secs(30));
        let sub = w.client();
        let sub_sid = w.session();
        let res = w.pull(sub, &sub_sid, &[(&pub_sid, "cam")]);
        let mid = res.tracks[0].mid.clone();
        w.run(Duration::from_millis(500));
        if let Some(n) = loss {
            w.loss_from.insert(0, n);
            w.loss_to.insert(sub, n);
        }
        let before = w.clients[sub].frames(&mid);
        w.run(Duration::from_millis(3000));
        w.loss_from.clear();
        w.loss_to.clear();
        // Time for the last retransmissions.
        w.run(Duration::from_millis(500));
        let sent = w.media_clock;
        (w.clients[sub].frames(&mid) - before, sent)
    };
    let (clean, _) = received(None);
    let (lossy, _) = received(Some(7));
    assert!(clean > 100, "{clean}");
    // Every video frame here spans two packets: without repair, 1 loss in 7 on each of two legs
    // would cost about half of the frames. The loss pattern is deterministic but depends on the
    // order of all datagrams (retransmissions are lost too), so a few frames may still miss.
    assert!(
        lossy * 100 >= clean * 90,
        "with loss {lossy} frames vs {clean} without"
    );
}

/// A push without an offer of audio tracks `names` (the SFU writes the offer).
fn sfu_push(names: &[&str], bidirectional: bool) -> TracksNew {
    TracksNew::Local {
        offer: None,
        auto_discover: false,
        tracks: names
            .iter()
            .map(|n| LocalTrack {
                mid: None,
                track_name: Some((*n).into()),
                kind: Some(MediaKind::Audio),
                bidirectional,
            })
            .collect(),
    }
}

/// Client `c` answers the SFU's offer `sdp` on session `sid`, and the engine takes the answer.
fn answer_sfu_offer(w: &mut World, c: usize, sid: &str, sdp: &str) {
    let answer = w.clients[c]
        .rtc()
        .sdp_api()
        .accept_offer(SdpOffer::from_sdp_string(sdp).expect("sdp"))
        .expect("answer");
    w.engine
        .renegotiate(APP, sid, answer.to_sdp_string().as_str().into(), w.now)
        .expect("renegotiate");
}

#[test]
fn an_sfu_offer_push_of_a_name_already_published_is_refused_per_item() {
    let mut w = World::new(Duration::from_secs(30));
    let c = w.client();
    let sid = w.session();
    // The same name twice in one call: the second is refused.
    let res = w
        .engine
        .tracks_new(APP, &sid, sfu_push(&["voice", "voice"], false), w.now)
        .expect("push");
    assert!(res.tracks[0].error.is_none(), "{:?}", res.tracks[0]);
    assert!(
        matches!(res.tracks[1].error, Some(TrackError::AlreadyPublished(_))),
        "{:?}",
        res.tracks[1]
    );
    assert!(
        res.tracks[1].mid.is_empty(),
        "no m-section for a refused item"
    );
    let offer = res.description.expect("SFU offer");
    answer_sfu_offer(&mut w, c, &sid, &offer.sdp);
    // And again in a later call, while the first is published.
    let res = w
        .engine
        .tracks_new(APP, &sid, sfu_push(&["voice", "music"], false), w.now)
        .expect("push");
    assert!(
        matches!(res.tracks[0].error, Some(TrackError::AlreadyPublished(_))),
        "{:?}",
        res.tracks[0]
    );
    assert!(res.tracks[1].error.is_none(), "{:?}", res.tracks[1]);
}

#[test]
fn sfu_offer_push_and_pull_into_an_existing_transceiver() {
    // Push without an offer (kind + bidirectionalMediaStream): the SFU writes the offer.
    let mut w = World::new(Duration::from_secs(30));
    let c = w.client();
    let sid = w.session();
    let req = sfu_push(&["voice"], true);
    let res = w.engine.tracks_new(APP, &sid, req, w.now).expect("push");
    assert!(res.requires_immediate_renegotiation);
    let offer = res.description.expect("SFU offer");
    assert_eq!(offer.kind, SdpKind::Offer);
    assert!(
        offer.sdp.contains("a=sendrecv"),
        "bidirectional transceiver"
    );
    answer_sfu_offer(&mut w, c, &sid, &offer.sdp);
    let voice_mid = res.tracks[0].mid.clone();
    assert!(
        w.statuses(&sid)
            .iter()
            .any(|(n, l, a)| n == "voice" && *l == Location::Local && *a)
    );

    // Another session publishes; this one pulls it into its own "voice" transceiver (#voice):
    // no renegotiation, the same mid.
    let (mut w2, _) = (w, ());
    let p = w2.client();
    let pub_sid = w2.session();
    let (a, v) = w2.push(p, &pub_sid);
    w2.senders.push((p, a, v));
    w2.run(Duration::from_millis(300));
    let res = w2
        .engine
        .tracks_new(APP, &sid, pull_one(&pub_sid, "mic", Some("#voice")), w2.now)
        .expect("pull");
    assert!(!res.requires_immediate_renegotiation, "no new transceiver");
    assert!(res.description.is_none());
    assert_eq!(res.tracks[0].mid, voice_mid);
    w2.run(Duration::from_millis(800));
    assert!(
        w2.clients[c].frames(&voice_mid) > 10,
        "the pulled audio arrives on the voice mid"
    );

    // #name of a track that is not bidirectional (or unknown) fails per item.
    let res = w2
        .engine
        .tracks_new(APP, &sid, pull_one(&pub_sid, "cam", Some("#nope")), w2.now)
        .expect("pull");
    assert_eq!(
        res.tracks[0].error,
        Some(TrackError::InvalidParams(
            "#nope is not a bidirectional local track of this session".into()
        ))
    );
}

#[test]
fn a_bidirectional_mid_takes_one_pulled_track_of_its_kind_and_closing_it_ends_the_pull() {
    let mut w = World::new(Duration::from_secs(30));
    let c = w.client();
    let sid = w.session();
    let req = sfu_push(&["voice"], true);
    let res = w.engine.tracks_new(APP, &sid, req, w.now).expect("push");
    let voice_mid = res.tracks[0].mid.clone();
    answer_sfu_offer(&mut w, c, &sid, &res.description.expect("offer").sdp);
    let p = w.client();
    let pub_sid = w.session();
    let (a, v) = w.push(p, &pub_sid);
    w.senders.push((p, a, v));
    w.run(Duration::from_millis(300));
    let item = |track: &str| RemoteTrack {
        session_id: Some(pub_sid.clone()),
        track_name: Some(track.to_string()),
        mid: Some("#voice".into()),
        simulcast: None,
    };
    // Two tracks into one transceiver in one call, and a video track into an audio one: only
    // the first goes in.
    let res = w
        .engine
        .tracks_new(
            APP,
            &sid,
            TracksNew::Remote {
                tracks: vec![item("mic"), item("mic"), item("cam")],
            },
            w.now,
        )
        .expect("pull");
    assert_eq!(res.tracks[0].mid, voice_mid);
    assert!(res.tracks[0].error.is_none(), "{:?}", res.tracks[0]);
    for refused in &res.tracks[1..] {
        assert!(
            matches!(refused.error, Some(TrackError::InvalidParams(_))),
            "{refused:?}"
        );
    }
    let key = (
        crate::ids::SessionId::parse(&pub_sid).expect("id"),
        "mic".to_string(),
    );
    let sub = crate::ids::SessionId::parse(&sid).expect("id");
    let sink = super::publications::Sink::Session(sub, Mid::from(voice_mid.as_str()));
    let sinks = |w: &World| {
        w.engine
            .publications
            .get(&key)
            .map(|p| p.subscribers.iter().filter(|s| **s == sink).count())
    };
    assert_eq!(sinks(&w), Some(1), "one subscription on the mid");
    // Closing the mid ends both its tracks: the pulled one is unsubscribed.
    w.engine
        .tracks_close(APP, &sid, vec![voice_mid.clone()], true, None, w.now)
        .expect("close");
    assert_eq!(
        sinks(&w),
        Some(0),
        "the publication no longer feeds the mid"
    );
    assert!(
        w.statuses(&sid).iter().all(|(_, _, active)| !active),
        "{:?}",
        w.statuses(&sid)
    );
}

/// The `demux` fuzz target negotiates its session with this offer and takes the ICE credentials
/// from the answer: if the engine stopped accepting it, every fuzz input would fail the same way.
#[test]
fn the_fuzz_fixture_offer_is_answered_with_ice_credentials() {
    let mut w = World::new(Duration::from_secs(30));
    let offer = include_str!("../../fuzz/fixtures/offer.sdp");
    let (_, answer) = w
        .engine
        .create_session(APP, Some(offer.into()), w.now)
        .expect("the fixture offer is accepted");
    let answer = answer.expect("an answer").sdp;
    assert!(answer.contains("a=ice-ufrag:"), "{answer}");
    assert!(answer.contains("a=ice-pwd:"), "{answer}");
}

/// A browser-style offer (bundle, rtcp-mux, several codecs with rtx, header extensions, an ssrc
/// group and simulcast), as seed for the SDP fuzzer next to str0m's own offers.
const BROWSER_STYLE_OFFER: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0 1\r\n\
a=extmap-allow-mixed\r\n\
a=msid-semantic: WMS stream\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Xy1z\r\n\
a=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:D6:BC\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=sendonly\r\n\
a=msid:stream audio-track\r\n\
a=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=rtcp-fb:111 transport-cc\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:63 red/48000/2\r\n\
a=fmtp:63 111/111\r\n\
a=rtpmap:9 G722/8000\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:13 CN/8000\r\n\
a=rtpmap:110 telephone-event/48000\r\n\
a=rtpmap:126 telephone-event/8000\r\n\
a=ssrc:1111111111 cname:abcdEFGHijkl\r\n\
a=ssrc:1111111111 msid:stream audio-track\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 45 46\r\n\
c=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Xy1z\r\n\
a=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:D6:BC\r\n\
a=setup:actpass\r\n\
a=mid:1\r\n\
a=extmap:14 urn:ietf:params:rtp-hdrext:toffset\r\n\
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n\
a=extmap:13 urn:3gpp:video-orientation\r\n\
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01\r\n\
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id\r\n\
a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id\r\n\
a=sendonly\r\n\
a=msid:stream video-track\r\n\
a=rtcp-mux\r\n\
a=rtcp-rsize\r\n\
a=rtpmap:96 VP8/90000\r\n\
a=rtcp-fb:96 goog-remb\r\n\
a=rtcp-fb:96 transport-cc\r\n\
a=rtcp-fb:96 ccm fir\r\n\
a=rtcp-fb:96 nack\r\n\
a=rtcp-fb:96 nack pli\r\n\
a=rtpmap:97 rtx/90000\r\n\
a=fmtp:97 apt=96\r\n\
a=rtpmap:102 H264/90000\r\n\
a=rtcp-fb:102 nack pli\r\n\
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
a=rtpmap:103 rtx/90000\r\n\
a=fmtp:103 apt=102\r\n\
a=rtpmap:45 AV1/90000\r\n\
a=rtcp-fb:45 nack pli\r\n\
a=fmtp:45 level-idx=5;profile=0;tier=0\r\n\
a=rtpmap:46 rtx/90000\r\n\
a=fmtp:46 apt=45\r\n\
a=rid:h send\r\n\
a=rid:l send\r\n\
a=simulcast:send h;l\r\n\
a=ssrc-group:FID 2222222222 3333333333\r\n\
a=ssrc:2222222222 cname:abcdEFGHijkl\r\n\
a=ssrc:3333333333 cname:abcdEFGHijkl\r\n";

/// Writes the node fuzzers' seeds (node/fuzz/): a real str0m client's offer (also the fixture the
/// demux target negotiates with), the engine's own offer, API bodies around them, and the
/// datagrams the client sent while connecting and publishing. Run after changing the engine's
/// SDP or media handling, then minimize (see SECURITY.md):
/// `cargo test -p trackmesh-node --lib fuzz_seeds -- --ignored`
#[test]
#[ignore = "writes files under node/fuzz/"]
fn fuzz_seeds() {
    use std::path::Path;

    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let write = |dir: &str, name: &str, bytes: &[u8]| {
        let dir = fuzz.join(dir);
        std::fs::create_dir_all(&dir).expect("create seed dir");
        std::fs::write(dir.join(name), bytes).expect("write seed");
    };

    let mut w = World::new(Duration::from_secs(30));
    w.captured = Some(Vec::new());
    let c = w.client();
    let pub_sid = w.session();
    let (a, v) = w.push(c, &pub_sid);
    w.senders.push((c, a, v));
    w.run(Duration::from_millis(600));
    assert!(w.clients[c].connected(), "the seed publisher connects");
    let sub = w.client();
    let sub_sid = w.session();
    let res = w.pull(sub, &sub_sid, &[(&pub_sid, "mic"), (&pub_sid, "cam")]);
    let sfu_offer = res
        .description
        .expect("the SFU offers the pulled tracks")
        .sdp;
    w.run(Duration::from_millis(300));
    let offer = w.offers[0].clone();

    write("fixtures", "offer.sdp", offer.as_bytes());
    // sdp_offer: a mode byte (which operation) then the SDP.
    for (name, sdp) in [("str0m", &offer[..]), ("browser", BROWSER_STYLE_OFFER)] {
        for mode in 0u8..4 {
            let mut seed = vec![mode];
            seed.extend_from_slice(sdp.as_bytes());
            write("corpus/sdp_offer", &format!("{name}-{mode}"), &seed);
        }
    }
    write(
        "corpus/sdp_offer",
        "sfu-0",
        &[&[0u8][..], sfu_offer.as_bytes()].concat(),
    );

    // api_bodies: what the tests and clients send.
    let bodies = [
        serde_json::json!({"sessionDescription": {"type": "offer", "sdp": offer}}),
        serde_json::json!({
            "sessionDescription": {"type": "offer", "sdp": BROWSER_STYLE_OFFER},
            "tracks": [
                {"location": "local", "mid": "0", "trackName": "mic"},
                {"location": "local", "mid": "1", "trackName": "cam", "bidirectionalMediaStream": true}
            ]
        }),
        serde_json::json!({"tracks": [
            {"location": "remote", "sessionId": pub_sid, "trackName": "cam", "mid": "#voice"}
        ]}),
        serde_json::json!({"tracks": [{"location": "local", "trackName": "cam", "kind": "video"}]}),
        serde_json::json!({"sessionDescription": {"type": "offer", "sdp": offer}, "autoDiscover": true}),
        serde_json::json!({"sessionDescription": {"type": "answer", "sdp": sfu_offer}}),
        serde_json::json!({"tracks": [{"mid": "1"}], "force": true}),
        serde_json::json!({"tracks": [{"mid": "0", "sessionId": pub_sid, "trackName": "mic"}]}),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let bytes = serde_json::to_vec(body).expect("json");
        write("corpus/api_bodies", &format!("body-{i}"), &bytes);
    }

    // demux: records of [flags][len u16 BE][datagram] (see node/fuzz/fuzz_targets/demux.rs);
    // flag 4 makes the target re-sign STUN for its own session.
    let record = |flags: u8, d: &[u8]| {
        let mut r = vec![flags];
        r.extend_from_slice(&(d.len() as u16).to_be_bytes());
        r.extend_from_slice(d);
        r
    };
    let captured = w.captured.take().expect("captured");
    let from_publisher: Vec<_> = captured.iter().filter(|(_, who, _)| *who == c).collect();
    let mut session = Vec::new();
    let mut prev = from_publisher.first().map(|(t, _, _)| *t).unwrap_or(w.now);
    for (t, _, d) in from_publisher.iter().take(48) {
        let steps = ((*t - prev).as_millis() / 20).min(15) as u8;
        prev = *t;
        session.extend(record(4 | (steps << 3), d));
    }
    write("corpus/demux", "session", &session);
    let class = |d: &[u8]| match d.first() {
        Some(0..=3) => "stun",
        Some(20..=63) => "dtls",
        Some(128..=191) if d.get(1).is_some_and(|b| (192..=223).contains(b)) => "rtcp",
        Some(128..=191) => "rtp",
        _ => "other",
    };
    let mut per_class: HashMap<&str, usize> = HashMap::new();
    for (_, _, d) in &from_publisher {
        let n = per_class.entry(class(d)).or_default();
        if *n < 4 {
            write("corpus/demux", &format!("{}-{n}", class(d)), &record(4, d));
            *n += 1;
        }
    }
    for kind in ["stun", "dtls", "rtp", "rtcp"] {
        assert!(per_class.contains_key(kind), "the capture holds {kind}");
    }
}

/// The first sender writes a VP8 delta frame carrying orientation `o`, between its own frames
/// (which carry none), at their clock.
fn write_oriented(w: &mut World, o: str0m::rtp::VideoOrientation) {
    let (c, _, v) = w.senders[0];
    let pt = w.payload_type(c, v, Codec::Vp8).pt();
    let (now, time) = (w.now, w.media_clock * 1800 + 900);
    w.clients[c]
        .rtc()
        .writer(v)
        .expect("writer")
        .video_orientation(o)
        .write(
            pt,
            now,
            str0m::media::MediaTime::from_90khz(time),
            crate::testing::synthetic_frame(MediaKind::Video, false, 600),
        )
        .expect("write");
}

/// A phone sends its rotation in the CVO header extension rather than rotating its frames: the
/// viewers must get it, or portrait video plays sideways.
#[test]
fn a_publishers_video_orientation_reaches_its_viewers() {
    use str0m::rtp::VideoOrientation;
    let (mut w, pub_sid) = publishing_world(Duration::from_secs(30));
    let sub = w.client();
    let sub_sid = w.session();
    let res = w.pull(sub, &sub_sid, &[(&pub_sid, "cam")]);
    let vm = res.tracks[0].mid.clone();
    w.run(Duration::from_millis(1500));
    assert!(w.clients[sub].frames(&vm) > 0, "video flows");
    assert_eq!(w.clients[sub].stats().rx_orientation(&vm), None);
    for o in [VideoOrientation::Deg90, VideoOrientation::Deg270] {
        write_oriented(&mut w, o);
        w.run(Duration::from_millis(300));
        assert_eq!(w.clients[sub].stats().rx_orientation(&vm), Some(o));
    }
}

/// Across a relay link the orientation travels with the packet: the origin puts it in the
/// relay frame, and the edge writes it on to its viewers.
#[test]
fn a_video_orientation_crosses_the_relay() {
    use str0m::rtp::VideoOrientation;
    let mut a = relayed_downstream_world();
    while a.engine.poll_relay().is_some() {}
    write_oriented(&mut a, VideoOrientation::Deg180);
    a.run(Duration::from_millis(50));
    let mut oriented = Vec::new();
    while let Some(out) = a.engine.poll_relay() {
        if let RelayOut::Frame { frame, .. } = out
            && frame.orientation.is_some()
        {
            oriented.push(frame.orientation);
        }
    }
    assert_eq!(
        oriented,
        [Some(VideoOrientation::Deg180)],
        "the origin sends it"
    );

    let (mut b, publisher) = relayed_video_world();
    let viewer = b.client();
    let viewer_sid = b.session();
    let mid = b
        .pull(viewer, &viewer_sid, &[(&publisher.to_string(), "cam")])
        .tracks[0]
        .mid
        .clone();
    b.run(Duration::from_millis(300));
    feed_relayed(&mut b, 1..=3, Some(1));
    let now = b.now;
    let frame = RelayFrame {
        orientation: Some(VideoOrientation::Deg270),
        ..relayed_vp8(4, false)
    };
    b.engine.relay_frame(UpId(7), frame, now);
    feed_relayed(&mut b, 5..=6, None);
    assert_eq!(b.clients[viewer].frames(&mid), 6);
    assert_eq!(
        b.clients[viewer].stats().rx_orientation(&mid),
        Some(VideoOrientation::Deg270),
        "the edge writes it to its viewer"
    );
}

#[test]
fn a_subscribers_keyframe_request_is_counted_and_reaches_the_publisher() {
    let (mut w, pub_sid) = publishing_world(Duration::from_secs(30));
    let sub = w.client();
    let sub_sid = w.session();
    let res = w.pull(sub, &sub_sid, &[(&pub_sid, "cam")]);
    let vm = Mid::from(res.tracks[0].mid.as_str());
    w.run(Duration::from_millis(1500));
    let (received, asked) = (
        w.engine.stats().keyframe_requests_received,
        w.clients[0].keyframe_requests(),
    );
    w.clients[sub]
        .rtc()
        .writer(vm)
        .expect("the subscriber's video mid")
        .request_keyframe(None, str0m::media::KeyframeRequestKind::Pli)
        .expect("a PLI");
    // Past the engine's keyframe request interval, so the request is passed on.
    w.run(Duration::from_millis(2500));
    assert!(
        w.engine.stats().keyframe_requests_received > received,
        "the PLI is counted"
    );
    assert!(
        w.clients[0].keyframe_requests() > asked,
        "the publisher is asked for a keyframe"
    );
}

/// Client `c` offers one receiving section per kind; returns the offer, its pending state and
/// the mids.
fn recv_offer(
    w: &mut World,
    c: usize,
    kinds: &[MediaKind],
) -> (
    str0m::change::SdpOffer,
    str0m::change::SdpPendingOffer,
    Vec<Mid>,
) {
    let mut sdp = w.clients[c].rtc().sdp_api();
    let mids = kinds
        .iter()
        .map(|k| sdp.add_media(*k, Direction::RecvOnly, None, None, None))
        .collect();
    let (offer, pending) = sdp.apply().expect("offer");
    (offer, pending, mids)
}

/// Client `c` offers one sending section per kind; returns the offer, its pending state and
/// the mids.
fn send_offer(
    w: &mut World,
    c: usize,
    kinds: &[MediaKind],
) -> (
    str0m::change::SdpOffer,
    str0m::change::SdpPendingOffer,
    Vec<Mid>,
) {
    let mut sdp = w.clients[c].rtc().sdp_api();
    let mids = kinds
        .iter()
        .map(|k| sdp.add_media(*k, Direction::SendOnly, None, None, None))
        .collect();
    let (offer, pending) = sdp.apply().expect("offer");
    (offer, pending, mids)
}

const POLICY: StreamPolicy = StreamPolicy {
    auto_create: true,
    max_viewers: 10,
};

#[test]
fn a_pull_with_the_clients_offer_is_answered_and_media_arrives() {
    let (mut w, pub_sid) = publishing_world(Duration::from_secs(30));
    let sub = w.client();
    let sub_sid = w.session();
    let (offer, pending, mids) = recv_offer(&mut w, sub, &[MediaKind::Audio, MediaKind::Video]);
    let req = TracksNew::RemoteWithOffer {
        offer: offer.to_sdp_string().into(),
        tracks: vec![
            RemoteTrack {
                session_id: Some(pub_sid.clone()),
                track_name: Some("mic".into()),
                mid: Some(mids[0].to_string()),
                simulcast: None,
            },
            RemoteTrack {
                session_id: Some(pub_sid.clone()),
                track_name: Some("cam".into()),
                mid: Some(mids[1].to_string()),
                simulcast: None,
            },
            RemoteTrack {
                session_id: Some(pub_sid.clone()),
                track_name: Some("nope".into()),
                mid: Some("99".into()),
                simulcast: None,
            },
        ],
    };
    let res = w
        .engine
        .tracks_new(APP, &sub_sid, req, w.now)
        .expect("pull");
    assert!(!res.requires_immediate_renegotiation, "the SFU answers");
    let answer = res.description.expect("an answer");
    assert_eq!(answer.kind, SdpKind::Answer);
    assert!(answer.sdp.contains("a=sendonly"), "{}", answer.sdp);
    assert_eq!(res.tracks[0].mid, mids[0].to_string());
    assert_eq!(res.tracks[1].mid, mids[1].to_string());
    assert_eq!(res.tracks[2].error, Some(TrackError::NotFound));
    w.accept_answer(sub, pending, &answer.sdp);
    w.run(Duration::from_millis(1500));
    let s = &w.clients[sub];
    assert!(s.connected());
    let (am, vm) = (mids[0].to_string(), mids[1].to_string());
    assert!(s.frames(&am) > 20, "audio frames: {}", s.frames(&am));
    assert!(s.frames(&vm) > 20, "video frames: {}", s.frames(&vm));
    assert!(s.keyframes(&vm) > 0);
}

#[test]
fn a_pull_with_an_offer_refuses_a_section_of_the_wrong_kind_or_direction() {
    let (mut w, pub_sid) = publishing_world(Duration::from_secs(30));
    let sub = w.client();
    let sub_sid = w.session();
    let (offer, _pending, mids) = {
        let mut sdp = w.clients[sub].rtc().sdp_api();
        let a = sdp.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        let v = sdp.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let (o, p) = sdp.apply().expect("offer");
        (o, p, [a, v])
    };
    let one = |name: &str, mid: Mid| RemoteTrack {
        session_id: Some(pub_sid.clone()),
        track_name: Some(name.into()),
        mid: Some(mid.to_string()),
        simulcast: None,
    };
    let req = TracksNew::RemoteWithOffer {
        offer: offer.to_sdp_string().into(),
        tracks: vec![one("cam", mids[0]), one("cam", mids[1])],
    };
    let res = w
        .engine
        .tracks_new(APP, &sub_sid, req, w.now)
        .expect("pull");
    for t in &res.tracks {
        assert!(
            matches!(t.error, Some(TrackError::InvalidParams(_))) && t.mid.is_empty(),
            "{t:?}"
        );
    }
}

#[test]
fn a_whep_viewer_before_the_publisher_plays_it_when_it_comes() {
    let mut w = World::new(Duration::from_secs(30));
    let viewer = w.client();
    let (offer, pending, mids) = recv_offer(&mut w, viewer, &[MediaKind::Audio, MediaKind::Video]);
    let played = w
        .engine
        .whep_play(APP, "live", offer.to_sdp_string().into(), POLICY, w.now)
        .expect("play");
    w.accept_answer(viewer, pending, &played.answer.sdp);
    w.connect(&[viewer]);

    let publisher = w.client();
    let (offer, pending, pmids) =
        send_offer(&mut w, publisher, &[MediaKind::Audio, MediaKind::Video]);
    let published = w
        .engine
        .whip_publish(APP, "live", offer.to_sdp_string().into(), POLICY, w.now)
        .expect("publish");
    assert_eq!(published.tracks, vec!["audio", "video"]);
    assert_ne!(published.etag, played.etag);
    w.accept_answer(publisher, pending, &published.answer.sdp);
    w.senders.push((publisher, pmids[0], pmids[1]));
    w.run(Duration::from_millis(1500));
    let v = &w.clients[viewer];
    let (am, vm) = (mids[0].to_string(), mids[1].to_string());
    assert!(v.frames(&am) > 20, "audio frames: {}", v.frames(&am));
    assert!(v.frames(&vm) > 20, "video frames: {}", v.frames(&vm));
    assert!(v.keyframes(&vm) > 0);

    let list = w.engine.streams_list(APP);
    assert_eq!(list.len(), 1);
    assert_eq!(
        list[0].publisher.as_ref().map(|p| p.session_id),
        Some(published.session_id)
    );
    assert_eq!(list[0].viewers.len(), 1);
    assert!(
        !list[0].codecs.is_empty(),
        "codecs seen: {:?}",
        list[0].codecs
    );

    // The publisher is a Calls session too: its tracks can be pulled by name.
    let sub = w.client();
    let sub_sid = w.session();
    let pulled = w.pull(
        sub,
        &sub_sid,
        &[(&published.session_id.to_string(), "video")],
    );
    assert!(pulled.tracks[0].error.is_none(), "{:?}", pulled.tracks);

    // The publisher goes and another comes: the viewer plays the new one.
    w.engine.close_session(published.session_id, w.now, "test");
    w.senders.clear();
    let second = w.client();
    let (offer, pending, smids) = send_offer(&mut w, second, &[MediaKind::Audio, MediaKind::Video]);
    let next = w
        .engine
        .whip_publish(APP, "live", offer.to_sdp_string().into(), POLICY, w.now)
        .expect("a new publisher");
    w.accept_answer(second, pending, &next.answer.sdp);
    w.senders.push((second, smids[0], smids[1]));
    let before = w.clients[viewer].frames(&vm);
    w.run(Duration::from_millis(1500));
    assert!(
        w.clients[viewer].frames(&vm) > before + 20,
        "video from the new publisher: {before} then {}",
        w.clients[viewer].frames(&vm)
    );
    let listed = w
        .engine
        .session_tracks(APP, &played.session_id.to_string())
        .expect("viewer");
    assert!(
        listed
            .iter()
            .all(|t| t.session_id == Some(next.session_id.to_string()) && t.active),
        "{listed:?}"
    );
}

#[test]
fn a_stream_has_one_publisher_and_whep_takes_no_sending_sections() {
    let mut w = World::new(Duration::from_secs(30));
    let a = w.client();
    let (offer, _, _) = send_offer(&mut w, a, &[MediaKind::Video]);
    w.engine
        .whip_publish(APP, "s", offer.to_sdp_string().into(), POLICY, w.now)
        .expect("first publisher");
    let b = w.client();
    let (offer, _, _) = send_offer(&mut w, b, &[MediaKind::Video]);
    let sessions = w.engine.session_count();
    assert!(matches!(
        w.engine
            .whip_publish(APP, "s", offer.to_sdp_string().into(), POLICY, w.now),
        Err(OpError::Conflict(_))
    ));
    assert_eq!(w.engine.session_count(), sessions, "no session left behind");

    let c = w.client();
    let (offer, _, _) = send_offer(&mut w, c, &[MediaKind::Video]);
    assert!(matches!(
        w.engine
            .whep_play(APP, "s", offer.to_sdp_string().into(), POLICY, w.now),
        Err(OpError::Decoding(_))
    ));
    let off = StreamPolicy {
        auto_create: false,
        max_viewers: 10,
    };
    let (offer, _, _) = recv_offer(&mut w, c, &[MediaKind::Video]);
    assert!(matches!(
        w.engine
            .whep_play(APP, "other", offer.to_sdp_string().into(), off, w.now),
        Err(OpError::NotFound(_))
    ));
    assert_eq!(w.engine.session_count(), sessions);
}

#[test]
fn deleting_a_stream_ends_its_sessions_and_a_bound_calls_session_feeds_viewers() {
    let (mut w, pub_sid) = publishing_world(Duration::from_secs(30));
    let viewer = w.client();
    let (offer, pending, mids) = recv_offer(&mut w, viewer, &[MediaKind::Video]);
    let played = w
        .engine
        .whep_play(APP, "calls", offer.to_sdp_string().into(), POLICY, w.now)
        .expect("play");
    w.accept_answer(viewer, pending, &played.answer.sdp);
    w.engine
        .stream_bind(APP, "calls", &pub_sid, vec!["cam".into()], w.now)
        .expect("bind");
    w.run(Duration::from_millis(1000));
    let vm = mids[0].to_string();
    assert!(
        w.clients[viewer].frames(&vm) > 10,
        "{}",
        w.clients[viewer].frames(&vm)
    );
    assert!(matches!(
        w.engine
            .stream_bind(APP, "calls", &pub_sid, vec!["nope".into()], w.now),
        Err(OpError::NotFound(_))
    ));

    w.engine.stream_delete(APP, "calls", w.now).expect("delete");
    assert!(w.engine.streams_list(APP).is_empty());
    assert!(matches!(
        w.engine.session_tracks(APP, &played.session_id.to_string()),
        Err(OpError::Gone(_))
    ));
}

#[test]
fn patch_checks_the_etag_and_a_new_ufrag_restarts_ice() {
    let mut w = World::new(Duration::from_secs(30));
    let c = w.client();
    let (offer, pending, _) = send_offer(&mut w, c, &[MediaKind::Audio]);
    let sdp = offer.to_sdp_string();
    let ufrag = sdp
        .lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .expect("ufrag")
        .to_string();
    let p = w
        .engine
        .whip_publish(APP, "x", sdp.as_str().into(), POLICY, w.now)
        .expect("publish");
    w.accept_answer(c, pending, &p.answer.sdp);
    let sid = p.session_id.to_string();
    let frag = |text: &str| crate::engine::sdpfrag::parse(text).expect("frag");
    let trickle = format!(
        "a=ice-ufrag:{ufrag}\r\na=ice-pwd:whatever\r\na=candidate:1 1 udp 1 127.0.0.1 40000 typ host\r\n"
    );
    assert_eq!(
        w.engine.stream_session_patch(
            APP,
            "x",
            streams::Role::Publisher,
            &sid,
            Some("\"wrong\""),
            frag(&trickle),
            w.now
        ),
        Err(OpError::PreconditionFailed(
            "If-Match does not name this session's current ICE session".into()
        ))
    );
    let quoted = format!("\"{}\"", p.etag);
    assert_eq!(
        w.engine.stream_session_patch(
            APP,
            "x",
            streams::Role::Publisher,
            &sid,
            Some(quoted.as_str()),
            frag(&trickle),
            w.now
        ),
        Ok(Patched::Trickled)
    );
    assert!(
        matches!(
            w.engine.stream_session_patch(
                APP,
                "x",
                streams::Role::Viewer,
                &sid,
                None,
                frag(&trickle),
                w.now
            ),
            Err(OpError::NotFound(_))
        ),
        "the WHEP URL of a WHIP session is no session"
    );
    // One candidate was trickled; 64 more would pass the session's bound.
    let many: String = (0..64)
        .map(|i| {
            format!(
                "a=candidate:{i} 1 udp 1 127.0.0.1 {} typ host\r\n",
                41_000 + i
            )
        })
        .collect();
    assert!(matches!(
        w.engine.stream_session_patch(
            APP,
            "x",
            streams::Role::Publisher,
            &sid,
            None,
            frag(&many),
            w.now
        ),
        Err(OpError::Decoding(_))
    ));
    let restart = "a=ice-ufrag:newu\r\na=ice-pwd:newpasswordnewpassword\r\n";
    let Ok(Patched::Restarted { frag: answer, etag }) = w.engine.stream_session_patch(
        APP,
        "x",
        streams::Role::Publisher,
        &sid,
        Some("*"),
        frag(restart),
        w.now,
    ) else {
        panic!("an ICE restart");
    };
    assert_ne!(etag, p.etag);
    assert!(
        answer.contains("a=ice-ufrag:") && answer.contains("a=candidate:"),
        "{answer}"
    );
    w.engine
        .stream_session_delete(APP, "x", streams::Role::Publisher, &sid, w.now)
        .expect("delete");
    assert!(
        w.engine.streams_list(APP).is_empty(),
        "auto-created, now empty"
    );
}

#[test]
fn after_an_ice_restart_by_patch_the_client_stays_connected_with_the_new_credentials() {
    let (mut w, pub_sid) = publishing_world(Duration::from_secs(60));
    w.engine
        .stream_bind(APP, "r", &pub_sid, vec!["cam".into()], w.now)
        .expect("bind");
    let viewer = w.client();
    let (offer, pending, mids) = recv_offer(&mut w, viewer, &[MediaKind::Video]);
    let played = w
        .engine
        .whep_play(APP, "r", offer.to_sdp_string().into(), POLICY, w.now)
        .expect("play");
    w.accept_answer(viewer, pending, &played.answer.sdp);
    w.run(Duration::from_millis(500));
    let vm = mids[0].to_string();
    assert!(w.clients[viewer].frames(&vm) > 5);

    // The client picks new credentials, sends them in a PATCH, and takes the server's.
    let client_creds = str0m::IceCreds {
        ufrag: "restartu".into(),
        pass: "restartpasswordrestartpassword".into(),
    };
    let frag = crate::engine::sdpfrag::parse(&format!(
        "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\n",
        client_creds.ufrag, client_creds.pass
    ))
    .expect("frag");
    let Ok(Patched::Restarted { frag: answer, .. }) = w.engine.stream_session_patch(
        APP,
        "r",
        streams::Role::Viewer,
        &played.session_id.to_string(),
        Some("*"),
        frag,
        w.now,
    ) else {
        panic!("an ICE restart");
    };
    let server = crate::engine::sdpfrag::parse(&answer)
        .expect("the server's sdpfrag parses")
        .creds
        .expect("with credentials");
    {
        let mut api = w.clients[viewer].rtc().direct_api();
        api.set_local_ice_credentials(client_creds);
        api.set_remote_ice_credentials(str0m::IceCreds {
            ufrag: server.0,
            pass: server.1,
        });
    }
    // Long enough for the client's checks (now under the new credentials) to have failed all
    // their retransmits if the server did not take them (str0m gives up after about 30 s).
    let before = w.clients[viewer].frames(&vm);
    w.run(Duration::from_secs(60));
    let stats = w.clients[viewer].stats().clone();
    assert!(
        !stats.ice_state.contains("Disconnected"),
        "ICE state after the restart: {}",
        stats.ice_state
    );
    assert!(
        w.clients[viewer].frames(&vm) > before + 500,
        "media flows on: {} then {}",
        before,
        w.clients[viewer].frames(&vm)
    );
}

#[test]
fn a_stream_takes_at_most_its_viewer_cap() {
    let mut w = World::new(Duration::from_secs(30));
    let cap = StreamPolicy {
        auto_create: true,
        max_viewers: 1,
    };
    let a = w.client();
    let (offer, _, _) = recv_offer(&mut w, a, &[MediaKind::Video]);
    w.engine
        .whep_play(APP, "c", offer.to_sdp_string().into(), cap, w.now)
        .expect("first viewer");
    let b = w.client();
    let (offer, _, _) = recv_offer(&mut w, b, &[MediaKind::Video]);
    assert!(matches!(
        w.engine
            .whep_play(APP, "c", offer.to_sdp_string().into(), cap, w.now),
        Err(OpError::Unavailable(_))
    ));
}

/// A track that stops sending frees its repair window within the window's age, not only when
/// its next packet comes (which may be never, until the track times out).
#[test]
fn a_silent_tracks_repair_window_is_freed_by_the_clock() {
    let (mut w, pub_sid) = publishing_world(Duration::from_secs(30));
    w.run(Duration::from_millis(500));
    let key = (SessionId::parse(&pub_sid).expect("id"), "cam".to_string());
    let held = |w: &World| w.engine.publications.get(&key).map(|p| p.cache.len());
    assert!(held(&w).is_some_and(|n| n > 0), "video is cached");
    w.senders.clear();
    w.run(Duration::from_secs(3));
    assert_eq!(
        held(&w),
        Some(0),
        "the publication stays, its window is empty"
    );
}

#[test]
fn a_closed_session_is_gone_to_its_app_and_unknown_to_others() {
    let mut w = World::new(Duration::from_secs(30));
    let sid = w.session();
    let id = SessionId::parse(&sid).expect("id");
    let now = w.now;
    w.engine.close_session(id, now, "test");
    assert!(matches!(w.engine.lookup(APP, &sid), Err(OpError::Gone(_))));
    assert!(matches!(
        w.engine.lookup("other", &sid),
        Err(OpError::NotFound(_))
    ));
}

#[test]
fn explicit_streams_count_toward_the_apps_quota_once() {
    let mut w = World::new(Duration::from_secs(30));
    let e = &mut w.engine;
    assert_eq!(e.stream_create(APP, "a", true), Ok(true));
    assert_eq!(e.explicit_stream_count(APP), 1);
    // Held already: no room needed, and not counted twice.
    assert_eq!(e.stream_create(APP, "a", false), Ok(false));
    assert!(matches!(
        e.stream_create(APP, "b", false),
        Err(OpError::OverQuota(_))
    ));
    assert!(!e.stream_exists(APP, "b"), "a refused one is not made");
    assert_eq!(e.explicit_stream_count(APP), 1);
    assert_eq!(e.explicit_stream_count("other"), 0);
}

#[test]
fn a_cascade_needs_its_stream_and_an_answer_with_candidates() {
    let mut w = World::new(Duration::from_secs(30));
    let local: SocketAddr = "127.0.0.1:45000".parse().expect("addr");
    let now = w.now;
    let e = &mut w.engine;
    assert!(matches!(
        e.cascade_offer(APP, "nope", CascadeDirection::Source, local, now),
        Err(OpError::NotFound(_))
    ));
    e.stream_create(APP, "s", true).expect("stream");
    let (sid, offer) = e
        .cascade_offer(APP, "s", CascadeDirection::Source, local, now)
        .expect("an offer");
    assert!(offer.contains("a=recvonly"), "{offer}");
    assert!(
        !offer.contains("a=ice-lite"),
        "the outgoing side runs full ICE: {offer}"
    );
    assert!(offer.contains("127.0.0.1 45000 typ host"), "{offer}");
    // One session per socket.
    assert!(matches!(
        e.cascade_offer(APP, "s", CascadeDirection::Source, local, now),
        Err(OpError::Internal(_))
    ));
    // Nothing to push without a publisher: the target waits (in backoff) for one.
    let other: SocketAddr = "127.0.0.1:45001".parse().expect("addr");
    assert!(matches!(
        e.cascade_offer(APP, "s", CascadeDirection::Target, other, now),
        Err(OpError::Unavailable(_))
    ));
    assert_eq!(e.outgoing_state(sid, now), OutgoingState::Connecting);
    // An answer without a candidate cannot connect: refused before it reaches the engine.
    let no_candidates = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        a=ice-ufrag:abcd\r\na=ice-pwd:abcdefabcdefabcdefabcdef\r\n";
    assert!(matches!(
        prepare_answer(no_candidates),
        Err(OpError::Decoding(_))
    ));
    // An answer the session cannot take (not SDP) closes it.
    let bad = ClientAnswer::parse("a=ice-ufrag:x\r\nnot sdp");
    assert!(
        e.cascade_answer(APP, "s", sid, CascadeDirection::Source, bad, now)
            .is_err()
    );
    assert_eq!(e.outgoing_state(sid, now), OutgoingState::Gone);
    assert_eq!(e.session_count(), 0);
    // Its socket's address is free again.
    let (again, _) = e
        .cascade_offer(APP, "s", CascadeDirection::Source, local, now)
        .expect("a new offer on the same address");
    assert_eq!(e.outgoing_state(again, now), OutgoingState::Connecting);
    // A stopped cascade that lost the session id closes it by its socket's address.
    e.close_outgoing(local, now, "stopped");
    assert_eq!(e.outgoing_state(again, now), OutgoingState::Gone);
    assert_eq!(e.session_count(), 0);
}

#[test]
fn ending_pulls_with_an_sfu_offer_stops_their_media() {
    let (mut w, pub_sid) = publishing_world(Duration::from_secs(30));
    let sub = w.client();
    let sub_sid = w.session();
    let res = w.pull(sub, &sub_sid, &[(&pub_sid, "mic"), (&pub_sid, "cam")]);
    let mids: Vec<String> = res.tracks.iter().map(|t| t.mid.clone()).collect();
    w.run(Duration::from_millis(1000));
    assert!(
        w.clients[sub].frames(&mids[1]) > 0,
        "media before the close"
    );

    let offer = w
        .engine
        .close_pulls_offer(APP, &sub_sid, &mids, w.now)
        .expect("close")
        .expect("an SFU offer");
    assert_eq!(offer.kind, SdpKind::Offer);
    assert_eq!(offer.sdp.matches("a=inactive").count(), 2, "{}", offer.sdp);
    let parsed = SdpOffer::from_sdp_string(&offer.sdp).expect("offer sdp");
    let answer = w.clients[sub]
        .rtc()
        .sdp_api()
        .accept_offer(parsed)
        .expect("client answers");
    w.engine
        .renegotiate(APP, &sub_sid, answer.to_sdp_string().as_str().into(), w.now)
        .expect("renegotiate");
    w.run(Duration::from_millis(200));
    let after = w.clients[sub].frames(&mids[1]);
    w.run(Duration::from_millis(1000));
    assert_eq!(w.clients[sub].frames(&mids[1]), after, "no media after");
    assert!(
        w.statuses(&sub_sid).iter().all(|(_, _, active)| !*active),
        "{:?}",
        w.statuses(&sub_sid)
    );
    // The publisher is untouched.
    assert!(
        w.statuses(&pub_sid)
            .iter()
            .all(|(_, l, active)| *l == Location::Local && *active)
    );
}

#[test]
fn a_relay_frame_dropped_on_a_full_queue_still_takes_its_number() {
    let (mut a, _) = publishing_world(Duration::from_secs(30));
    while a.engine.poll_relay().is_some() {}
    let down = DownId(7);
    let seqs = |a: &mut World| {
        let mut v = Vec::new();
        while let Some(out) = a.engine.poll_relay() {
            if let RelayOut::Frame { down: d, seq, .. } = out
                && d == down
            {
                v.push(seq);
            }
        }
        v
    };
    a.engine.push_relay_frame(down, relayed_vp8(1, true));
    assert_eq!(seqs(&mut a), vec![1]);
    // The relay tasks are behind: the queue is full, and the next frame is dropped...
    for _ in 0..MAX_RELAY_QUEUE {
        a.engine.push_relay(RelayOut::Unused { up: UpId(1) });
    }
    let dropped = a.engine.stats.relay_dropped;
    a.engine.push_relay_frame(down, relayed_vp8(2, false));
    assert_eq!(a.engine.stats.relay_dropped, dropped + 1);
    assert_eq!(seqs(&mut a), Vec::<u32>::new(), "dropped");
    // ...after it was numbered: the other node sees 3 follow 1, a gap it repairs or answers
    // with a keyframe request, rather than a loss it cannot see.
    a.engine.push_relay_frame(down, relayed_vp8(3, false));
    assert_eq!(seqs(&mut a), vec![3]);
    // A new downstream counts from 1 again, and a released one forgets its count.
    a.engine.push_relay_frame(DownId(8), relayed_vp8(4, false));
    assert!(matches!(
        a.engine.poll_relay(),
        Some(RelayOut::Frame { seq: 1, .. })
    ));
    a.engine.relay_unsubscribe(down, a.now);
    assert!(!a.engine.relay_down_seq.contains_key(&down));
}
