//! Simulcast in the in-memory world: a str0m publisher sends three layers (rids `f`, `h`, `q`,
//! told apart at the subscriber by their frame sizes), subscribers pick one, switch on the
//! target's keyframe, fall back when a layer stops, and see continuous media times.

use std::time::Duration;

use str0m::media::{MediaKind, MediaTime, Mid};

use super::simulcast::{Ordering, Prefs, parse_rid};
use super::*;
use crate::testing::{APP, World, synthetic_frame};

pub(super) const LAYERS: [&str; 3] = ["f", "h", "q"];
/// Frames of each layer have their own size, so a subscriber's frame says which layer it is.
pub(super) fn size_of(rid: &str) -> usize {
    match rid {
        "f" => 1200,
        "h" => 600,
        "q" => 300,
        _ => 150,
    }
}
/// Each layer its own RTP time base, far apart: a subscriber that saw raw source times across a
/// switch would see a jump of millions of ticks.
pub(super) fn base_of(rid: &str) -> u64 {
    match rid {
        "f" => 1_000_000,
        "h" => 5_000_000,
        "q" => 9_000_000,
        _ => 13_000_000,
    }
}
/// Simulated time between two rounds of frames (the source time steps 3000 ticks of 90 kHz).
const ROUND: Duration = Duration::from_millis(33);
/// How far a subscriber's media time may run from the (simulated) time between arrivals: a
/// round at most, where a raw switch between layers would be off by many seconds.
const MAX_DRIFT_US: u64 = 40_000;

pub(super) struct Sim {
    pub(super) w: World,
    pub(super) publisher: usize,
    pub(super) pub_sid: String,
    mid: Mid,
    round: u64,
    /// Ticks added to a layer's source times from now on (a publisher whose clock jumps).
    shifts: Vec<(&'static str, i64)>,
}

impl Sim {
    /// A connected publisher of `cam` with the given layers.
    pub(super) fn new(rids: &[&str]) -> Sim {
        Sim::in_world(World::new(Duration::from_secs(30)), rids)
    }

    fn in_world(mut w: World, rids: &[&str]) -> Sim {
        let publisher = w.client();
        let pub_sid = w.session();
        let mid = w.push_simulcast(publisher, &pub_sid, "cam", rids);
        w.connect(&[publisher]);
        Sim {
            w,
            publisher,
            pub_sid,
            mid,
            round: 0,
            shifts: Vec::new(),
        }
    }

    /// A connected subscriber of `cam`; (client, session, mid).
    pub(super) fn subscriber(&mut self, simulcast: Option<Prefs>) -> (usize, String, String) {
        let c = self.w.client();
        let sid = self.w.session();
        let res = self.w.pull_tracks(
            c,
            &sid,
            vec![RemoteTrack {
                session_id: Some(self.pub_sid.clone()),
                track_name: Some("cam".into()),
                simulcast,
                ..Default::default()
            }],
        );
        assert!(res.tracks[0].error.is_none(), "{res:?}");
        assert_eq!(
            res.tracks[0].simulcast.map(|v| v.prefs),
            simulcast,
            "the request is echoed"
        );
        let mid = res.tracks[0].mid.clone();
        self.w.connect(&[c]);
        (c, sid, mid)
    }

    /// One frame on each of `rids`; keyframes on those in `keyframes`; then a round of time.
    pub(super) fn round(&mut self, rids: &[&str], keyframes: &[&str]) {
        self.round += 1;
        for rid in rids {
            let shift = self
                .shifts
                .iter()
                .filter(|(r, _)| r == rid)
                .map(|(_, s)| *s)
                .sum::<i64>();
            let time = (base_of(rid) + self.round * 3000).saturating_add_signed(shift);
            let time = MediaTime::from_90khz(time);
            let data = synthetic_frame(MediaKind::Video, keyframes.contains(rid), size_of(rid));
            self.w
                .write_layer(self.publisher, self.mid, rid, time, data);
        }
        let all = 0..self.w.clients.len();
        self.w.step(all, ROUND);
    }

    fn rounds(&mut self, n: usize, rids: &[&str]) {
        for _ in 0..n {
            self.round(rids, &[]);
        }
    }

    /// The layer (by frame size) of the last frame client `c` got on `mid`.
    fn layer_seen(&self, c: usize, mid: &str) -> Option<&'static str> {
        let len = self.w.clients[c].stats().rx.get(mid)?.last_len;
        LAYERS
            .into_iter()
            .chain(["x"])
            .find(|r| size_of(r) as u64 == len)
    }

    fn frames(&self, c: usize, mid: &str) -> u64 {
        self.w.clients[c].frames(mid)
    }

    /// Keyframe requests the publisher got for layer `rid`.
    pub(super) fn layer_requests(&self, rid: &str) -> u64 {
        self.w.clients[self.publisher]
            .stats()
            .layer_keyframe_requests
            .get(rid)
            .copied()
            .unwrap_or(0)
    }

    fn current_rid(&self, sid: &str, mid: &str) -> Option<String> {
        let tracks = self.w.engine.session_tracks(APP, sid).expect("session");
        let t = tracks.iter().find(|t| t.mid == mid).expect("the track");
        t.simulcast
            .and_then(|s| s.current_rid)
            .map(|r| r.to_string())
    }

    fn update(&mut self, sid: &str, mid: &str, prefs: Prefs) -> TrackResult {
        let now = self.w.now;
        let mut res = self
            .w
            .engine
            .tracks_update(
                APP,
                sid,
                vec![UpdateTrack {
                    mid: Some(mid.to_string()),
                    session_id: Some(self.pub_sid.clone()),
                    track_name: Some("cam".into()),
                    simulcast: Some(prefs),
                }],
                now,
            )
            .expect("update");
        self.w.deliver();
        res.remove(0)
    }

    /// Media times client `c` got on `mid` never went back nor jumped: each step follows the
    /// time between the frames' arrivals; and RTP sequence numbers ran on without a gap or a
    /// jump, across switches too.
    fn assert_continuous(&self, c: usize, mid: &str) {
        let rx = &self.w.clients[c].stats().rx[mid];
        assert_eq!(rx.time_backwards, 0, "media time never goes back");
        assert_eq!(
            rx.rtp_seq_gaps, 0,
            "sequence numbers continue across switches"
        );
        assert!(
            rx.max_time_drift_us <= MAX_DRIFT_US,
            "no jump across switches: media time off the arrivals by {} µs (largest step {} ticks)",
            rx.max_time_drift_us,
            rx.max_time_step
        );
    }
}

pub(super) fn prefer(rid: &str, rid_not_available: Ordering) -> Prefs {
    Prefs {
        preferred_rid: parse_rid(rid),
        priority_ordering: Ordering::None,
        rid_not_available,
    }
}

/// Prefers `rid`, moved between layers by its bandwidth estimate (`priorityOrdering:
/// "asciibetical"`), and waits for `rid` when it stops.
pub(super) fn governed(rid: &str) -> Prefs {
    Prefs {
        priority_ordering: Ordering::Asciibetical,
        ..prefer(rid, Ordering::None)
    }
}

/// `tracks/update` of `sid`'s `mid` (a pull of `publisher`'s "cam") to prefer layer `rid`.
pub(super) fn update_layer(w: &mut World, sid: &str, mid: &str, publisher: SessionId, rid: &str) {
    let now = w.now;
    let res = w
        .engine
        .tracks_update(
            APP,
            sid,
            vec![UpdateTrack {
                mid: Some(mid.to_string()),
                session_id: Some(publisher.to_string()),
                track_name: Some("cam".into()),
                simulcast: Some(prefer(rid, Ordering::None)),
            }],
            now,
        )
        .expect("update");
    assert!(res[0].error.is_none(), "{:?}", res[0]);
}

#[test]
fn a_subscriber_gets_its_preferred_layer_and_switches_on_the_target_keyframe() {
    let mut sim = Sim::new(&LAYERS);
    let (c, sid, mid) = sim.subscriber(Some(prefer("h", Ordering::None)));
    sim.round(&LAYERS, &LAYERS);
    sim.rounds(5, &LAYERS);
    assert_eq!(sim.frames(c, &mid), 6, "one layer: one frame per round");
    assert_eq!(sim.layer_seen(c, &mid), Some("h"));
    assert_eq!(sim.current_rid(&sid, &mid).as_deref(), Some("h"));

    // Down to q: h keeps flowing until q's keyframe, which the node asks q for.
    let q_requests = sim.layer_requests("q");
    let r = sim.update(&sid, &mid, prefer("q", Ordering::None));
    assert!(r.error.is_none(), "{r:?}");
    sim.rounds(3, &LAYERS);
    assert!(
        sim.layer_requests("q") > q_requests,
        "a keyframe request for layer q reached the publisher"
    );
    assert_eq!(
        sim.layer_seen(c, &mid),
        Some("h"),
        "the old layer until then"
    );
    assert_eq!(sim.frames(c, &mid), 9);
    // In the switching round h's delta (sent before q's keyframe) still goes out, then q's
    // keyframe: one extra frame, once.
    sim.round(&LAYERS, &["q"]);
    assert_eq!(
        sim.layer_seen(c, &mid),
        Some("q"),
        "switched on q's keyframe"
    );
    assert_eq!(sim.frames(c, &mid), 11);
    sim.rounds(3, &LAYERS);
    assert_eq!(sim.frames(c, &mid), 14, "one frame per round again");
    assert_eq!(sim.layer_seen(c, &mid), Some("q"));
    assert_eq!(sim.current_rid(&sid, &mid).as_deref(), Some("q"));

    // And back up to f.
    let r = sim.update(&sid, &mid, prefer("f", Ordering::None));
    assert!(r.error.is_none(), "{r:?}");
    sim.rounds(2, &LAYERS);
    assert_eq!(sim.layer_seen(c, &mid), Some("q"));
    // f is sent first in a round: the switch takes no extra frame.
    sim.round(&LAYERS, &["f"]);
    sim.rounds(2, &LAYERS);
    assert_eq!(sim.layer_seen(c, &mid), Some("f"));
    assert_eq!(sim.frames(c, &mid), 19);
    sim.assert_continuous(c, &mid);
    assert!(sim.w.engine.stats().simulcast.switches >= 3);
}

#[test]
fn without_a_preferred_rid_the_best_layer_is_received() {
    let mut sim = Sim::new(&LAYERS);
    let (c, _, mid) = sim.subscriber(None);
    sim.round(&LAYERS, &LAYERS);
    sim.rounds(3, &LAYERS);
    assert_eq!(sim.layer_seen(c, &mid), Some("f"));
    assert_eq!(sim.frames(c, &mid), 4);
}

#[test]
fn a_stopped_layer_falls_back_asciibetically_or_waits() {
    let mut sim = Sim::new(&LAYERS);
    let (fallback, _, fallback_mid) = sim.subscriber(Some(prefer("f", Ordering::Asciibetical)));
    let (waits, _, waits_mid) = sim.subscriber(Some(prefer("f", Ordering::None)));
    sim.round(&LAYERS, &LAYERS);
    sim.rounds(3, &LAYERS);
    assert_eq!(sim.layer_seen(fallback, &fallback_mid), Some("f"));
    assert_eq!(sim.layer_seen(waits, &waits_mid), Some("f"));

    // The publisher stops f (a browser's `active: false`): idle past the threshold.
    let waits_before = sim.frames(waits, &waits_mid);
    let h_requests = sim.layer_requests("h");
    sim.rounds(60, &["h", "q"]);
    assert!(
        sim.layer_requests("h") > h_requests,
        "the fallback layer was asked for a keyframe"
    );
    sim.round(&["h", "q"], &["h"]);
    sim.rounds(3, &["h", "q"]);
    assert_eq!(sim.layer_seen(fallback, &fallback_mid), Some("h"));
    assert_eq!(
        sim.frames(waits, &waits_mid),
        waits_before,
        "ridNotAvailable none waits for f"
    );

    // f comes back: both move to it on its keyframe.
    sim.round(&LAYERS, &["f"]);
    sim.rounds(2, &LAYERS);
    assert_eq!(sim.layer_seen(fallback, &fallback_mid), Some("f"));
    assert_eq!(sim.layer_seen(waits, &waits_mid), Some("f"));
    sim.assert_continuous(fallback, &fallback_mid);
    sim.assert_continuous(waits, &waits_mid);
}

/// A viewer cut off (silent) while its layer changed is not written to, so its layer selector
/// moved without it; heard again, it plays the new layer from its next keyframe.
#[test]
fn a_viewer_silent_through_a_layer_switch_plays_the_new_layer_when_heard_again() {
    let mut sim = Sim::new(&LAYERS);
    let (c, _, mid) = sim.subscriber(Some(prefer("f", Ordering::Asciibetical)));
    sim.round(&LAYERS, &LAYERS);
    sim.rounds(3, &LAYERS);
    assert_eq!(sim.layer_seen(c, &mid), Some("f"));
    // Everything it sends is lost from now on, past the 10 s after which it is not fed.
    sim.w.loss_from.insert(c, 1);
    sim.rounds(320, &LAYERS);
    let silent = sim.frames(c, &mid);
    // f stops meanwhile, and h's keyframe moves its selector to h.
    sim.rounds(70, &["h", "q"]);
    sim.round(&["h", "q"], &["h"]);
    sim.rounds(3, &["h", "q"]);
    assert_eq!(sim.frames(c, &mid), silent, "not fed while silent");

    // Heard again (its RTCP and consent checks get through), then h's next keyframe.
    sim.w.loss_from.remove(&c);
    sim.rounds(100, &["h", "q"]);
    sim.round(&["h", "q"], &["h"]);
    sim.rounds(3, &["h", "q"]);
    assert!(sim.frames(c, &mid) > silent, "it plays again");
    assert_eq!(sim.layer_seen(c, &mid), Some("h"));
}

#[test]
fn a_joining_viewer_starts_on_its_layer_from_the_cache() {
    let mut sim = Sim::new(&LAYERS);
    sim.round(&LAYERS, &LAYERS);
    sim.rounds(3, &LAYERS);
    let (c, _, mid) = sim.subscriber(Some(prefer("q", Ordering::None)));
    sim.w.step(0..sim.w.clients.len(), ROUND);
    assert_eq!(
        sim.frames(c, &mid),
        1,
        "the cached keyframe, before any new one"
    );
    assert_eq!(sim.w.clients[c].first_is_keyframe(&mid), Some(true));
    assert_eq!(sim.layer_seen(c, &mid), Some("q"), "of its own layer");
    assert!(sim.w.engine.stats().keyframes_from_cache >= 1);
    sim.round(&LAYERS, &["q"]);
    sim.rounds(2, &LAYERS);
    assert_eq!(sim.frames(c, &mid), 4);
    assert_eq!(sim.layer_seen(c, &mid), Some("q"));
    // The cached keyframe keeps its own (older) media time; nothing goes back after it.
    assert_eq!(sim.w.clients[c].stats().rx[&mid].time_backwards, 0);
}

#[test]
fn layers_past_the_third_and_time_jumps_are_counted_not_forwarded() {
    let rids = ["a", "b", "c", "x"];
    let mut sim = Sim::new(&rids);
    let (c, _, mid) = sim.subscriber(Some(prefer("x", Ordering::None)));
    sim.round(&rids, &rids);
    sim.rounds(3, &rids);
    assert!(sim.w.engine.stats().simulcast.too_many_layers >= 4);
    assert_eq!(
        sim.frames(c, &mid),
        0,
        "the fourth layer is never forwarded"
    );

    // A subscriber of layer a: its media time jumps by 100 s, the layer starts over at its next
    // keyframe and the subscriber's times stay continuous.
    let (c, _, mid) = sim.subscriber(Some(prefer("a", Ordering::None)));
    sim.round(&rids, &rids);
    sim.rounds(2, &rids);
    // The cached keyframe of a, then three rounds.
    assert_eq!(sim.frames(c, &mid), 4);
    let time = MediaTime::from_90khz(base_of("a") + 9_000_000 + sim.round * 3000);
    let data = synthetic_frame(MediaKind::Video, false, size_of("a"));
    sim.w.write_layer(sim.publisher, sim.mid, "a", time, data);
    sim.w.step(0..sim.w.clients.len(), ROUND);
    assert_eq!(sim.w.engine.stats().simulcast.time_jump, 1);
    assert_eq!(sim.frames(c, &mid), 4, "held until the layer's keyframe");
    let time = MediaTime::from_90khz(base_of("a") + 9_000_000 + (sim.round + 1) * 3000);
    let data = synthetic_frame(MediaKind::Video, true, size_of("a"));
    sim.w.write_layer(sim.publisher, sim.mid, "a", time, data);
    sim.w.step(0..sim.w.clients.len(), ROUND);
    assert_eq!(sim.frames(c, &mid), 5);
    let rx = &sim.w.clients[c].stats().rx[&mid];
    assert_eq!(rx.time_backwards, 0);
    assert!(
        rx.max_time_step < 90_000,
        "the 100 s jump is not passed on: largest step {} ticks",
        rx.max_time_step
    );
}

#[test]
fn simulcast_updates_are_refused_where_there_is_nothing_to_choose() {
    // An unlayered publication pulled with `simulcast`: it plays as one layer.
    let mut w = World::new(Duration::from_secs(30));
    let p = w.client();
    let pub_sid = w.session();
    let (a, v) = w.push(p, &pub_sid);
    w.senders.push((p, a, v));
    let c = w.client();
    let sid = w.session();
    let prefs = prefer("h", Ordering::Asciibetical);
    let res = w.pull_tracks(
        c,
        &sid,
        vec![RemoteTrack {
            session_id: Some(pub_sid.clone()),
            track_name: Some("cam".into()),
            simulcast: Some(prefs),
            ..Default::default()
        }],
    );
    let mid = res.tracks[0].mid.clone();
    assert_eq!(res.tracks[0].simulcast.map(|s| s.prefs), Some(prefs));
    w.run(Duration::from_millis(1500));
    assert!(w.clients[c].frames(&mid) > 10, "the single layer plays");
    let now = w.now;
    let res = w
        .engine
        .tracks_update(
            APP,
            &sid,
            vec![UpdateTrack {
                mid: Some(mid.clone()),
                session_id: Some(pub_sid.clone()),
                track_name: Some("cam".into()),
                simulcast: Some(prefer("q", Ordering::None)),
            }],
            now,
        )
        .expect("update");
    assert!(
        matches!(res[0].error, Some(TrackError::Update(_))),
        "{:?}",
        res[0]
    );

    // A layered one: a rid it does not have is refused too.
    let mut sim = Sim::new(&LAYERS);
    let (_, sid, mid) = sim.subscriber(Some(prefer("h", Ordering::None)));
    sim.round(&LAYERS, &LAYERS);
    let r = sim.update(&sid, &mid, prefer("z", Ordering::None));
    assert!(matches!(r.error, Some(TrackError::Update(_))), "{r:?}");
}

#[test]
fn a_relay_downstream_carries_every_layer_with_its_rid() {
    let mut sim = Sim::new(&LAYERS);
    sim.round(&LAYERS, &LAYERS);
    let pub_id = SessionId::parse(&sim.pub_sid).expect("session id");
    let down = crate::ids::DownId(3);
    sim.w
        .engine
        .relay_subscribe(down, APP, pub_id, "cam")
        .expect("relay subscription");
    // The other node's first keyframe request: the cached keyframe of each layer.
    let now = sim.w.now;
    sim.w.engine.relay_keyframe_request(down, now);
    // The relay carries packets: a keyframe may span several, only its first starts it.
    let cached = relay_frames(&mut sim.w);
    assert_eq!(
        cached.iter().filter(|f| f.keyframe).count(),
        3,
        "one cached keyframe per layer"
    );
    assert!(cached.first().is_some_and(|f| f.keyframe));
    sim.rounds(4, &LAYERS);
    let frames = relay_frames(&mut sim.w);
    for rid in LAYERS {
        let of_layer: Vec<&RelayFrame> = frames
            .iter()
            .filter(|f| f.rid.map(|r| r.to_string()).as_deref() == Some(rid))
            .collect();
        let mut times: Vec<u64> = of_layer.iter().map(|f| f.rtp_time).collect();
        times.dedup();
        assert_eq!(times.len(), 4, "every round's frame of {rid}");
        // Each packet keeps the origin's numbering, in order and without a gap.
        for pair in of_layer.windows(2) {
            assert_eq!(pair[1].origin_seq, pair[0].origin_seq + 1, "{rid}");
        }
        // The last packet of each frame carries the marker bit.
        assert_eq!(of_layer.iter().filter(|f| f.marker).count(), 4, "{rid}");
        assert!(
            of_layer.iter().all(|f| f.rtp_time >= base_of(rid)),
            "each layer keeps its own times: the other node re-bases for its subscribers"
        );
    }
}

fn relay_frames(w: &mut World) -> Vec<RelayFrame> {
    std::iter::from_fn(|| w.engine.poll_relay())
        .filter_map(|o| match o {
            RelayOut::Frame { frame, .. } => Some(frame),
            _ => None,
        })
        .collect()
}

/// A relayed frame of layer `rid` in round `n`.
pub(super) fn relayed(rid: &str, n: u64, keyframe: bool) -> RelayFrame {
    RelayFrame {
        rtp_time: base_of(rid) + n * 3000,
        origin_seq: n,
        marker: true,
        keyframe,
        data: crate::testing::vp8_packet(keyframe, size_of(rid)).into(),
        rid: parse_rid(rid),
        orientation: None,
    }
}

/// A VP8 publication "cam" of another node's session, fed by upstream `up`.
pub(super) fn relayed_vp8_publication(w: &mut World, up: u64) -> (SessionId, crate::ids::UpId) {
    let publisher = SessionId::new(crate::ids::NodeTag(0x0bad_cafe));
    let info = TrackInfo {
        kind: MediaKind::Video,
        codec: CodecInfo {
            codec: str0m::format::Codec::Vp8,
            clock_rate: 90_000,
            channels: None,
        },
    };
    let up = crate::ids::UpId(up);
    w.engine
        .add_relay_publication(APP, publisher, "cam", up, info, w.now)
        .expect("relayed publication");
    (publisher, up)
}

#[test]
fn subscribers_of_a_relayed_simulcast_track_choose_and_switch_their_layers() {
    let mut w = World::new(Duration::from_secs(30));
    let (publisher, up) = relayed_vp8_publication(&mut w, 7);
    let feed = |w: &mut World, n: u64, keyframes: &[&str]| {
        for rid in LAYERS {
            let now = w.now;
            w.engine
                .relay_frame(up, relayed(rid, n, keyframes.contains(&rid)), now);
        }
        let all = 0..w.clients.len();
        w.step(all, ROUND);
    };
    feed(&mut w, 1, &LAYERS);
    let (c, sid, mid) = viewer(&mut w, publisher, Some(prefer("h", Ordering::None)));
    w.connect(&[c]);
    // Joined after the keyframes: h's cached one, then h's live frames.
    for n in 2..5 {
        feed(&mut w, n, &[]);
    }
    let rx = &w.clients[c].stats().rx[&mid];
    assert_eq!(rx.last_len, size_of("h") as u64);
    assert_eq!(rx.frames, 4);

    // Down to q: the upstream node is asked for a keyframe, h flows until q's arrives.
    let requests = |w: &mut World| {
        std::iter::from_fn(|| w.engine.poll_relay())
            .filter(|o| matches!(o, RelayOut::KeyframeRequest { .. }))
            .count()
    };
    requests(&mut w);
    update_layer(&mut w, &sid, &mid, publisher, "q");
    // Requests upstream are folded to one a second per publication (the join asked already).
    for n in 5..40 {
        feed(&mut w, n, &[]);
    }
    assert!(requests(&mut w) >= 1, "a keyframe request went upstream");
    assert_eq!(w.clients[c].stats().rx[&mid].last_len, size_of("h") as u64);
    feed(&mut w, 40, &["q"]);
    feed(&mut w, 41, &[]);
    let rx = &w.clients[c].stats().rx[&mid];
    assert_eq!(rx.last_len, size_of("q") as u64, "switched on q's keyframe");
    assert_eq!(rx.time_backwards, 0);
    assert!(
        rx.max_time_drift_us <= MAX_DRIFT_US,
        "{} µs",
        rx.max_time_drift_us
    );
    let view = w.engine.session_tracks(APP, &sid).expect("session");
    assert_eq!(
        view[0]
            .simulcast
            .and_then(|s| s.current_rid)
            .map(|r| r.to_string())
            .as_deref(),
        Some("q")
    );
}

impl Sim {
    /// A bandwidth estimate (bits/s) for subscriber session `sid`, as str0m's BWE reports it.
    fn estimate(&mut self, sid: &str, bps: u64) {
        let id = SessionId::parse(sid).expect("session id");
        let now = self.w.now;
        self.w.engine.bandwidth_estimate(id, bps, now);
        self.w.deliver();
    }
}

#[test]
fn the_bandwidth_estimate_moves_an_asciibetical_subscriber_down_and_back_up() {
    // Layer bitrates as sent: f 1200 B, h 600 B, q 300 B every 33 ms: about 291, 145 and
    // 73 kbit/s.
    let mut sim = Sim::new(&LAYERS);
    let governed = governed("f");
    let (c, sid, mid) = sim.subscriber(Some(governed));
    let (fixed, fixed_sid, fixed_mid) = sim.subscriber(Some(prefer("f", Ordering::None)));
    sim.round(&LAYERS, &LAYERS);
    // Two seconds and more: every layer's bitrate is measured.
    sim.rounds(70, &LAYERS);
    assert_eq!(sim.layer_seen(c, &mid), Some("f"));
    sim.estimate(&sid, 500_000);
    sim.estimate(&fixed_sid, 100_000);
    assert_eq!(sim.w.engine.stats().simulcast.bwe_down, 0, "room for f");

    // Below f's bitrate: down to h, the best layer that fits, on h's keyframe.
    let h_requests = sim.layer_requests("h");
    sim.estimate(&sid, 200_000);
    assert_eq!(sim.w.engine.stats().simulcast.bwe_down, 1);
    sim.rounds(2, &LAYERS);
    assert!(
        sim.layer_requests("h") > h_requests,
        "h was asked for a keyframe"
    );
    assert_eq!(sim.layer_seen(c, &mid), Some("f"), "f until h's keyframe");
    sim.round(&LAYERS, &["h"]);
    sim.rounds(2, &LAYERS);
    assert_eq!(sim.layer_seen(c, &mid), Some("h"));
    assert_eq!(sim.current_rid(&sid, &mid).as_deref(), Some("h"));
    assert_eq!(
        sim.layer_seen(fixed, &fixed_mid),
        Some("f"),
        "priorityOrdering none ignores its estimate"
    );

    // Over f's bitrate but short of the margin, for longer than the hold-off: stays on h.
    for _ in 0..200 {
        sim.estimate(&sid, 330_000);
        sim.round(&LAYERS, &[]);
    }
    assert_eq!(sim.w.engine.stats().simulcast.bwe_up, 0);
    assert_eq!(sim.layer_seen(c, &mid), Some("h"));

    // Room with the margin: back up to f after the hold-off, on f's keyframe.
    let mut rounds = 0u32;
    while sim.w.engine.stats().simulcast.bwe_up == 0 && rounds < 400 {
        sim.estimate(&sid, 400_000);
        sim.round(&LAYERS, &[]);
        rounds += 1;
    }
    assert_eq!(sim.w.engine.stats().simulcast.bwe_up, 1);
    assert!(
        ROUND * rounds >= simulcast::UP_HOLD,
        "held off: {rounds} rounds"
    );
    sim.round(&LAYERS, &["f"]);
    sim.rounds(2, &LAYERS);
    assert_eq!(sim.layer_seen(c, &mid), Some("f"));
    assert_eq!(sim.current_rid(&sid, &mid).as_deref(), Some("f"));
    sim.assert_continuous(c, &mid);
}

/// A governed subscriber's estimate is shared among its simulcast pulls; one whose publisher
/// left takes no share.
#[test]
fn an_ended_publication_takes_no_share_of_the_estimate() {
    let mut sim = Sim::new(&LAYERS);
    let governed = governed("f");
    let (c, sid, mid) = sim.subscriber(Some(governed));
    // A second publisher's simulcast track on the same subscriber session.
    let other = sim.w.client();
    let other_sid = sim.w.session();
    sim.w.push_simulcast(other, &other_sid, "cam2", &LAYERS);
    sim.w.connect(&[other]);
    let res = sim.w.pull_tracks(
        c,
        &sid,
        vec![RemoteTrack {
            session_id: Some(other_sid.clone()),
            track_name: Some("cam2".into()),
            simulcast: Some(governed),
            ..Default::default()
        }],
    );
    assert!(res.tracks[0].error.is_none(), "{res:?}");
    sim.w.connect(&[c]);
    sim.round(&LAYERS, &LAYERS);
    sim.rounds(70, &LAYERS);
    assert_eq!(sim.layer_seen(c, &mid), Some("f"));

    // The other publisher leaves; the whole estimate is for cam, room for its f.
    let now = sim.w.now;
    let other_id = SessionId::parse(&other_sid).expect("id");
    sim.w.engine.close_session(other_id, now, "test");
    sim.estimate(&sid, 400_000);
    assert_eq!(
        sim.w.engine.stats().simulcast.bwe_down,
        0,
        "cam keeps f: the gone track takes no half"
    );
}

#[test]
fn with_bwe_on_str0m_estimates_reach_the_governed_subscribers() {
    let w = World::with_config(crate::engine::EngineConfig {
        bandwidth_estimation: true,
        ..crate::testing::config(Duration::from_secs(30))
    });
    let mut sim = Sim::in_world(w, &LAYERS);
    let governed = governed("f");
    let (c, _, mid) = sim.subscriber(Some(governed));
    sim.round(&LAYERS, &LAYERS);
    sim.rounds(70, &LAYERS);
    assert!(
        sim.w.engine.stats().simulcast.estimates > 0,
        "str0m's TWCC estimate reached the engine"
    );
    // The initial estimate (1 Mbit/s) carries f: it plays, paced, and stays.
    assert_eq!(sim.layer_seen(c, &mid), Some("f"));
    assert!(sim.frames(c, &mid) >= 60, "{} frames", sim.frames(c, &mid));
    assert_eq!(sim.w.engine.stats().simulcast.bwe_down, 0);
}

#[test]
fn bad_layer_input_is_dropped_or_restarted_and_subscriber_times_never_go_back() {
    let mut sim = Sim::new(&LAYERS);
    let (c, _, mid) = sim.subscriber(Some(prefer("h", Ordering::None)));
    sim.round(&LAYERS, &LAYERS);
    sim.rounds(3, &LAYERS);
    assert_eq!(sim.frames(c, &mid), 4);
    let (p, m) = (sim.publisher, sim.mid);

    // A rid the publisher's SDP did not declare: str0m at the node drops its packets before
    // they make a frame (the engine's `unknown_rid` count is for frames that get further).
    sim.w.clients[p]
        .rtc()
        .direct_api()
        .declare_stream_tx(4242.into(), None, m, parse_rid("y"));
    let time = MediaTime::from_90khz(base_of("y") + 1000);
    let data = synthetic_frame(MediaKind::Video, true, size_of("y"));
    sim.w.write_layer(p, m, "y", time, data);
    sim.rounds(2, &LAYERS);
    assert_eq!(sim.frames(c, &mid), 6, "h only");
    assert_eq!(sim.layer_seen(c, &mid), Some("h"));

    // Layer h's SSRC changes mid-stream (an encoder restart): counted, and h starts over at its
    // next keyframe; its delta frames until then are not forwarded.
    sim.w.clients[p]
        .rtc()
        .direct_api()
        .reset_stream_tx(m, parse_rid("h"), 777.into(), None)
        .expect("h has a stream");
    sim.rounds(3, &LAYERS);
    assert_eq!(sim.w.engine.stats().simulcast.ssrc_change, 1);
    assert_eq!(sim.frames(c, &mid), 6, "held until h's keyframe");
    let held = sim.w.engine.stats().frames_held_for_keyframe;
    assert!(held >= 3, "the held frames are counted: {held}");
    sim.round(&LAYERS, &["h"]);
    sim.rounds(2, &LAYERS);
    assert_eq!(sim.frames(c, &mid), 9);

    // h's media time jumps 20 s back: counted as a time jump, h starts over at its keyframe.
    sim.shifts.push(("h", -20 * 90_000));
    sim.rounds(2, &LAYERS);
    assert_eq!(sim.w.engine.stats().simulcast.time_jump, 1);
    assert_eq!(sim.frames(c, &mid), 9, "held until h's keyframe");
    sim.round(&LAYERS, &["h"]);
    sim.rounds(2, &LAYERS);
    assert_eq!(sim.frames(c, &mid), 12);

    // And 20 s forward again.
    sim.shifts.push(("h", 40 * 90_000));
    sim.rounds(2, &LAYERS);
    assert_eq!(sim.w.engine.stats().simulcast.time_jump, 2);
    sim.round(&LAYERS, &["h"]);
    sim.rounds(2, &LAYERS);
    assert_eq!(sim.frames(c, &mid), 15);
    assert_eq!(sim.layer_seen(c, &mid), Some("h"));

    // The subscriber's times went on by the time between arrivals throughout.
    sim.assert_continuous(c, &mid);
    // The other layers were not disturbed.
    assert_eq!(sim.w.engine.stats().simulcast.unknown_rid, 0);
    assert_eq!(sim.w.engine.stats().simulcast.too_many_layers, 0);
}

#[test]
fn relayed_layers_past_the_third_are_counted_not_forwarded() {
    let mut w = World::new(Duration::from_secs(30));
    let (publisher, up) = relayed_vp8_publication(&mut w, 9);
    let (c, _, mid) = viewer(&mut w, publisher, Some(prefer("x", Ordering::None)));
    w.connect(&[c]);
    for n in 1..6 {
        for rid in ["f", "h", "q", "x"] {
            let now = w.now;
            w.engine.relay_frame(up, relayed(rid, n, n == 1), now);
        }
        let all = 0..w.clients.len();
        w.step(all, ROUND);
    }
    assert_eq!(w.engine.stats().simulcast.too_many_layers, 5);
    assert_eq!(w.clients[c].frames(&mid), 0, "the fourth layer never plays");
}

/// The layer sets the engine asked upstream for since the last call.
fn set_layers(w: &mut World) -> Vec<RelayLayers> {
    std::iter::from_fn(|| w.engine.poll_relay())
        .filter_map(|o| match o {
            RelayOut::SetLayers { layers, .. } => Some(layers),
            _ => None,
        })
        .collect()
}

pub(super) fn only(rids: &[&str]) -> RelayLayers {
    RelayLayers::Only(rids.iter().filter_map(|r| parse_rid(r)).collect())
}

#[test]
fn a_relayed_track_pulls_the_union_of_its_viewers_layers_and_keeps_the_old_one_until_a_switch() {
    let mut w = World::new(Duration::from_secs(30));
    let (publisher, up) = relayed_vp8_publication(&mut w, 7);
    let now = w.now;
    // The origin says which layers exist and flow: from then on the edge chooses among them.
    let all_flowing: Vec<(str0m::media::Rid, bool)> = LAYERS
        .iter()
        .filter_map(|r| parse_rid(r))
        .map(|r| (r, true))
        .collect();
    w.engine.relay_layers(up, all_flowing.clone(), now);
    assert!(
        set_layers(&mut w).is_empty(),
        "no viewer yet: the subscription keeps what it asked for"
    );
    // The edge is fed only the layers it asks for, as the origin would.
    let feed = |w: &mut World, n: u64, rids: &[&str], keyframes: &[&str]| {
        for rid in rids {
            let now = w.now;
            w.engine
                .relay_frame(up, relayed(rid, n, keyframes.contains(rid)), now);
        }
        let all = 0..w.clients.len();
        w.step(all, ROUND);
    };
    let pull = |w: &mut World, prefs: Prefs| viewer(w, publisher, Some(prefs));
    let (c, sid, mid) = pull(&mut w, prefer("q", Ordering::None));
    assert_eq!(
        set_layers(&mut w),
        vec![only(&["q"])],
        "only q for a q viewer"
    );
    w.connect(&[c]);
    for n in 1..5 {
        feed(&mut w, n, &["q"], &["q"]);
    }
    assert_eq!(
        w.clients[c].stats().rx[&mid].last_len,
        size_of("q") as u64,
        "the viewer decodes q"
    );

    // A second viewer wants h: the union.
    let (c2, _, mid2) = pull(&mut w, prefer("h", Ordering::None));
    w.connect(&[c2]);
    for n in 5..12 {
        feed(&mut w, n, &["h", "q"], &["h"]);
    }
    assert_eq!(set_layers(&mut w), vec![only(&["h", "q"])]);
    assert_eq!(
        w.clients[c2].stats().rx[&mid2].last_len,
        size_of("h") as u64
    );

    // The first viewer moves to f: f is asked for at once, q kept until the switch.
    update_layer(&mut w, &sid, &mid, publisher, "f");
    let outs: Vec<RelayOut> = std::iter::from_fn(|| w.engine.poll_relay()).collect();
    assert!(
        outs.iter()
            .any(|o| matches!(o, RelayOut::SetLayers { layers, .. }
            if *layers == only(&["f", "h", "q"]))),
        "the new layer is pulled, the old one kept: {outs:?}"
    );
    assert!(
        outs.iter()
            .any(|o| matches!(o, RelayOut::LayerKeyframeRequest { rid, .. }
            if rid.to_string() == "f")),
        "a keyframe of the new layer is asked for upstream, of that layer only: {outs:?}"
    );
    assert!(
        !outs
            .iter()
            .any(|o| matches!(o, RelayOut::KeyframeRequest { .. })),
        "{outs:?}"
    );
    for n in 12..16 {
        feed(&mut w, n, &["f", "h", "q"], &[]);
    }
    assert!(
        set_layers(&mut w).is_empty(),
        "nothing changes before the switch"
    );
    assert_eq!(
        w.clients[c].stats().rx[&mid].last_len,
        size_of("q") as u64,
        "no switch before f's keyframe"
    );
    feed(&mut w, 16, &["f", "h", "q"], &["f"]);
    for n in 17..30 {
        feed(&mut w, n, &["f", "h"], &[]);
    }
    assert_eq!(w.clients[c].stats().rx[&mid].last_len, size_of("f") as u64);
    assert_eq!(
        set_layers(&mut w),
        vec![only(&["f", "h"])],
        "q dropped once nobody receives it"
    );

    // f stops at the origin: with `ridNotAvailable: none` the viewer waits for it, and a
    // fallback viewer's next layer is pulled.
    let now = w.now;
    let mut f_paused = all_flowing.clone();
    f_paused[0].1 = false;
    w.engine.relay_layers(up, f_paused, now);
    let (_, _, _) = pull(&mut w, prefer("f", Ordering::Asciibetical));
    for n in 30..40 {
        feed(&mut w, n, &["f", "h"], &[]);
    }
    assert!(
        set_layers(&mut w).is_empty(),
        "h (the fallback) is pulled already"
    );
}

#[test]
fn a_relay_downstream_gets_only_the_layers_it_asked_for_and_hears_of_the_others() {
    let mut sim = Sim::new(&LAYERS);
    sim.round(&LAYERS, &LAYERS);
    let pub_id = SessionId::parse(&sim.pub_sid).expect("session id");
    let down = crate::ids::DownId(3);
    sim.w
        .engine
        .relay_subscribe(down, APP, pub_id, "cam")
        .expect("relay subscription");
    let now = sim.w.now;
    sim.w.engine.relay_set_layers(down, only(&["q"]), now);
    // Its first keyframe request: the cached keyframe of q only.
    sim.w.engine.relay_keyframe_request(down, now);
    let cached = relay_frames(&mut sim.w);
    assert_eq!(cached.len(), 1);
    assert_eq!(cached[0].rid.map(|r| r.to_string()).as_deref(), Some("q"));
    // Rounds take longer than housekeeping: the layers are announced meanwhile.
    let mut announced = Vec::new();
    let mut frames = Vec::new();
    for _ in 0..10 {
        sim.round(&LAYERS, &[]);
        for o in std::iter::from_fn(|| sim.w.engine.poll_relay()) {
            match o {
                RelayOut::Frame { frame, .. } => frames.push(frame),
                RelayOut::Layers { down: d, layers } if d == down => announced.push(layers),
                _ => {}
            }
        }
    }
    assert_eq!(frames.len(), 10, "one q frame a round, no f or h");
    assert!(
        frames
            .iter()
            .all(|f| f.rid.map(|r| r.to_string()).as_deref() == Some("q"))
    );
    let want: Vec<(str0m::media::Rid, bool)> = LAYERS
        .iter()
        .filter_map(|r| parse_rid(r))
        .map(|r| (r, true))
        .collect();
    assert_eq!(announced, vec![want], "told once: every layer flows");

    // Now h as well.
    let now = sim.w.now;
    sim.w.engine.relay_set_layers(down, only(&["h", "q"]), now);
    sim.round(&LAYERS, &[]);
    let rids: Vec<String> = relay_frames(&mut sim.w)
        .iter()
        .filter_map(|f| f.rid.map(|r| r.to_string()))
        .collect();
    assert_eq!(rids, vec!["h", "q"]);
}

#[test]
fn a_hub_pulls_what_its_viewers_and_downstream_nodes_ask_for_and_passes_the_origins_word_on() {
    let mut w = World::new(Duration::from_secs(30));
    let (publisher, up) = relayed_vp8_publication(&mut w, 7);
    let now = w.now;
    let states = |flowing: [bool; 3]| -> Vec<(str0m::media::Rid, bool)> {
        LAYERS
            .iter()
            .zip(flowing)
            .filter_map(|(r, f)| Some((parse_rid(r)?, f)))
            .collect()
    };
    w.engine.relay_layers(up, states([true, true, true]), now);
    // Another node of the region pulls it from here and wants h.
    let down = crate::ids::DownId(9);
    w.engine
        .relay_subscribe(down, APP, publisher, "cam")
        .expect("relay subscription");
    w.engine.relay_set_layers(down, only(&["h"]), now);
    assert_eq!(set_layers(&mut w), vec![only(&["h"])]);
    // A viewer here wants q: the union.
    viewer(&mut w, publisher, Some(prefer("q", Ordering::None)));
    let all = 0..w.clients.len();
    w.step(all, Duration::from_millis(300));
    let mut outs: Vec<RelayOut> = std::iter::from_fn(|| w.engine.poll_relay()).collect();
    assert!(
        outs.iter()
            .any(|o| matches!(o, RelayOut::SetLayers { layers, .. }
            if *layers == only(&["h", "q"]))),
        "{outs:?}"
    );
    // The origin's word reached the downstream as is.
    assert!(
        outs.iter()
            .any(|o| matches!(o, RelayOut::Layers { down: d, layers }
            if *d == down && *layers == states([true, true, true]))),
        "{outs:?}"
    );
    // f stops at the origin: the downstream hears it.
    let now = w.now;
    w.engine.relay_layers(up, states([false, true, true]), now);
    let all = 0..w.clients.len();
    w.step(all, Duration::from_millis(300));
    outs.clear();
    outs.extend(std::iter::from_fn(|| w.engine.poll_relay()));
    assert!(
        outs.iter()
            .any(|o| matches!(o, RelayOut::Layers { down: d, layers }
            if *d == down && *layers == states([false, true, true]))),
        "{outs:?}"
    );
    // The downstream asks for everything: so does the hub.
    let now = w.now;
    w.engine.relay_set_layers(down, RelayLayers::All, now);
    assert_eq!(set_layers(&mut w), vec![RelayLayers::All]);
}

/// How the current layer of a relayed viewer starts over in [`a_relayed_viewer_goes_on_when_its_layer_starts_over_during_a_switch`].
#[derive(Clone, Copy, Debug)]
enum StartOver {
    /// Frames were lost on the relay link: every layer is withheld until its keyframe, which
    /// restarts it on this node.
    RelayGap,
    /// The layer's media time jumps (an encoder restart upstream).
    TimeJump,
}

/// The edge side of a relayed simulcast publication, fed as the origin would: only the layers
/// the edge asked for, one packet per layer and round.
struct Edge {
    w: World,
    up: crate::ids::UpId,
    /// The layers the edge last asked for (all until it says otherwise).
    pulled: RelayLayers,
    /// Layers the edge asked upstream for a keyframe of, since the last [`Edge::take_requests`].
    requests: Vec<String>,
    round: u64,
    /// Ticks added to layer q's media time from now on.
    q_shift: u64,
    /// Added to layer q's origin sequence numbers from now on (a layer the origin made anew).
    q_seq_shift: i64,
}

impl Edge {
    /// One round: a packet of each pulled layer of `rids`, keyframes on `keyframes`.
    fn round(&mut self, rids: &[&str], keyframes: &[&str]) {
        self.round += 1;
        for rid in rids {
            if !parse_rid(rid).is_some_and(|r| self.pulled.carries(r)) {
                continue;
            }
            let mut frame = relayed(rid, self.round, keyframes.contains(rid));
            if *rid == "q" {
                frame.rtp_time += self.q_shift;
                frame.origin_seq = frame.origin_seq.saturating_add_signed(self.q_seq_shift);
            }
            let now = self.w.now;
            self.w.engine.relay_frame(self.up, frame, now);
        }
        let all = 0..self.w.clients.len();
        self.w.step(all, ROUND);
        self.poll();
    }

    fn poll(&mut self) {
        while let Some(o) = self.w.engine.poll_relay() {
            match o {
                RelayOut::SetLayers { layers, .. } => self.pulled = layers,
                RelayOut::LayerKeyframeRequest { rid, .. } => self.requests.push(rid.to_string()),
                _ => {}
            }
        }
    }

    fn take_requests(&mut self) -> Vec<String> {
        std::mem::take(&mut self.requests)
    }
}

/// (rid, flowing) as the origin announces its layers to the edge.
fn layer_states(layers: &[(&str, bool)]) -> Vec<(str0m::media::Rid, bool)> {
    layers
        .iter()
        .filter_map(|(r, f)| Some((parse_rid(r)?, *f)))
        .collect()
}

/// A viewer of "cam" of `publisher`, pulled but not connected yet; (client,
/// session, mid).
pub(super) fn viewer(
    w: &mut World,
    publisher: SessionId,
    prefs: Option<Prefs>,
) -> (usize, String, String) {
    let c = w.client();
    let sid = w.session();
    let res = w.pull_tracks(
        c,
        &sid,
        vec![RemoteTrack {
            session_id: Some(publisher.to_string()),
            track_name: Some("cam".into()),
            simulcast: prefs,
            ..Default::default()
        }],
    );
    assert!(res.tracks[0].error.is_none(), "{res:?}");
    (c, sid, res.tracks[0].mid.clone())
}

/// An edge with one connected viewer of a relayed VP8 publication "cam" whose origin announced
/// `layers`, pulled with `prefs`: the edge (its first requests polled), the viewer's client,
/// session and mid.
fn edge_with_viewer(layers: &[(&str, bool)], prefs: Prefs) -> (Edge, usize, String, String) {
    let mut w = World::new(Duration::from_secs(30));
    let (publisher, up) = relayed_vp8_publication(&mut w, 7);
    let now = w.now;
    w.engine.relay_layers(up, layer_states(layers), now);
    let (c, sid, mid) = viewer(&mut w, publisher, Some(prefs));
    w.connect(&[c]);
    let mut e = Edge {
        w,
        up,
        pulled: RelayLayers::All,
        requests: Vec::new(),
        round: 0,
        q_shift: 0,
        q_seq_shift: 0,
    };
    e.poll();
    (e, c, sid, mid)
}

/// A viewer on an edge receives layer q of a relayed publication (f, its preferred layer, is
/// not flowing at the origin yet, and it falls back asciibetically). Then f flows: the viewer's
/// target becomes f, and before f's keyframe comes, q starts over on the edge. The viewer must
/// go on with q from q's next keyframe (not wait for f's while q is there to see), then move to
/// f on f's keyframe, with its sequence numbers and media times continuous throughout.
fn a_relayed_viewer_goes_on_when_its_layer_starts_over_during_a_switch(how: StartOver) {
    let (mut e, c, sid, mid) = edge_with_viewer(
        &[("f", false), ("h", false), ("q", true)],
        prefer("f", Ordering::Asciibetical),
    );
    assert_eq!(e.pulled, only(&["q"]), "only q flows at the origin");
    let frames = |e: &Edge| e.w.clients[c].frames(&mid);
    let last_len = |e: &Edge| e.w.clients[c].stats().rx[&mid].last_len;
    let current = |e: &Edge| {
        let tracks = e.w.engine.session_tracks(APP, &sid).expect("session");
        tracks[0]
            .simulcast
            .and_then(|s| s.current_rid)
            .map(|r| r.to_string())
    };
    e.round(&LAYERS, &["q"]);
    for _ in 0..4 {
        e.round(&LAYERS, &[]);
    }
    assert_eq!(frames(&e), 5);
    assert_eq!(last_len(&e), size_of("q") as u64);
    assert_eq!(current(&e).as_deref(), Some("q"));

    // f flows at the origin now: the viewer's target. The edge pulls f and asks for its
    // keyframe; q plays on meanwhile.
    let now = e.w.now;
    let up = e.up;
    e.w.engine.relay_layers(
        up,
        layer_states(&[("f", true), ("h", false), ("q", true)]),
        now,
    );
    e.poll();
    e.take_requests();
    for _ in 0..3 {
        e.round(&LAYERS, &[]);
    }
    assert_eq!(
        e.pulled,
        only(&["f", "q"]),
        "f is pulled, q kept until the switch"
    );
    assert!(
        e.take_requests().iter().any(|r| r == "f"),
        "a keyframe of f was asked for upstream"
    );
    assert_eq!(frames(&e), 8, "q plays on until f's keyframe");
    assert_eq!(last_len(&e), size_of("q") as u64);

    // q starts over before f's keyframe comes.
    match how {
        StartOver::RelayGap => {
            let now = e.w.now;
            e.w.engine.relay_gap(up, now);
            e.poll();
        }
        StartOver::TimeJump => e.q_shift = 100 * 90_000,
    }
    for _ in 0..3 {
        e.round(&LAYERS, &[]);
    }
    assert_eq!(
        frames(&e),
        8,
        "q's delta frames after its restart cannot be decoded"
    );
    // Over a second of rounds: the keyframe requests are folded to one a second per layer.
    for _ in 0..40 {
        e.round(&LAYERS, &[]);
    }
    let requests = e.take_requests();
    assert!(
        requests.iter().any(|r| r == "q"),
        "q, which the viewer waits for too, was asked for a keyframe: {requests:?}"
    );
    assert!(
        requests.iter().any(|r| r == "f"),
        "f was asked for its keyframe again: {requests:?}"
    );

    // q's keyframe: the viewer goes on with q, f still to come.
    e.round(&LAYERS, &["q"]);
    for _ in 0..3 {
        e.round(&LAYERS, &[]);
    }
    assert_eq!(frames(&e), 12, "q plays again from its keyframe: {how:?}");
    assert_eq!(last_len(&e), size_of("q") as u64);
    assert_eq!(current(&e).as_deref(), Some("q"));

    // f's keyframe: the switch.
    e.round(&LAYERS, &["f"]);
    for _ in 0..10 {
        e.round(&LAYERS, &[]);
    }
    assert_eq!(last_len(&e), size_of("f") as u64, "switched to f");
    assert_eq!(current(&e).as_deref(), Some("f"));
    assert_eq!(frames(&e), 23, "one frame a round throughout");
    assert_eq!(e.pulled, only(&["f"]), "q is no longer pulled");
    let rx = &e.w.clients[c].stats().rx[&mid];
    assert_eq!(rx.rtp_seq_gaps, 0, "sequence numbers continue: {how:?}");
    assert_eq!(rx.time_backwards, 0);
    assert!(
        rx.max_time_drift_us <= MAX_DRIFT_US,
        "media time off the arrivals by {} µs",
        rx.max_time_drift_us
    );
}

#[test]
fn a_relayed_viewer_goes_on_when_its_layer_restarts_after_a_relay_gap_during_a_switch() {
    a_relayed_viewer_goes_on_when_its_layer_starts_over_during_a_switch(StartOver::RelayGap);
}

#[test]
fn a_relayed_viewer_goes_on_when_its_layers_time_jumps_during_a_switch() {
    a_relayed_viewer_goes_on_when_its_layer_starts_over_during_a_switch(StartOver::TimeJump);
}

#[test]
fn a_bandwidth_move_of_a_relayed_viewer_pulls_the_new_layer_before_asking_its_keyframe() {
    let (mut e, _c, sid, _mid) =
        edge_with_viewer(&[("f", true), ("h", true), ("q", true)], governed("f"));
    assert_eq!(e.pulled, only(&["f"]));
    // Over two seconds of f: its bitrate is measured here.
    e.round(&LAYERS, &["f"]);
    for _ in 0..70 {
        e.round(&LAYERS, &[]);
    }
    let id = SessionId::parse(&sid).expect("session id");
    let now = e.w.now;
    e.w.engine.bandwidth_estimate(id, 1_000, now);
    assert_eq!(e.w.engine.stats().simulcast.bwe_down, 1);
    // Unmeasured here, q is the last resort: pulled at once, then its keyframe asked for.
    let outs: Vec<RelayOut> = std::iter::from_fn(|| e.w.engine.poll_relay()).collect();
    let pulled = outs.iter().position(
        |o| matches!(o, RelayOut::SetLayers { layers, .. } if *layers == only(&["f", "q"])),
    );
    let asked = outs.iter().position(
        |o| matches!(o, RelayOut::LayerKeyframeRequest { rid, .. } if rid.to_string() == "q"),
    );
    assert!(
        matches!((pulled, asked), (Some(p), Some(a)) if p < a),
        "q is pulled before its keyframe is asked for: {outs:?}"
    );
}

/// After a bandwidth move down, the edge stops pulling the old layer; with nothing of it
/// arriving it must not look free, or the viewer would be moved back up at once, and down
/// again, every few seconds.
#[test]
fn a_layer_the_edge_stopped_pulling_keeps_its_measured_bitrate() {
    let (mut e, _c, sid, _mid) =
        edge_with_viewer(&[("f", true), ("h", true), ("q", true)], governed("f"));
    e.round(&LAYERS, &["f"]);
    for _ in 0..70 {
        e.round(&LAYERS, &[]);
    }
    let id = SessionId::parse(&sid).expect("session id");
    // Room for q (73 kbit/s here), not for f (293).
    let estimate = |e: &mut Edge| {
        let now = e.w.now;
        e.w.engine.bandwidth_estimate(id, 100_000, now);
    };
    estimate(&mut e);
    assert_eq!(e.w.engine.stats().simulcast.bwe_down, 1);
    e.poll();
    e.round(&LAYERS, &["q"]);
    // Ten seconds of the same low estimate, past the hold before a move up.
    for _ in 0..300 {
        estimate(&mut e);
        e.round(&LAYERS, &[]);
    }
    assert_eq!(
        e.w.engine.stats().simulcast.bwe_up,
        0,
        "f is not free for not arriving"
    );
    assert_eq!(e.pulled, only(&["q"]), "f is no longer pulled");
}

#[test]
fn a_layer_that_appears_later_does_not_take_the_place_of_the_one_a_viewer_receives() {
    // The publisher sends h and q first (f comes once its bandwidth allows, as Chromium does):
    // f then takes the first place in the layer table, before the layers viewers receive.
    let mut sim = Sim::new(&LAYERS);
    let (on_h, _, h_mid) = sim.subscriber(Some(prefer("h", Ordering::None)));
    let (on_q, _, q_mid) = sim.subscriber(Some(prefer("q", Ordering::None)));
    let (best, best_sid, best_mid) = sim.subscriber(Some(prefer("f", Ordering::Asciibetical)));
    sim.round(&["h", "q"], &["h", "q"]);
    sim.rounds(3, &["h", "q"]);
    assert_eq!(sim.frames(on_h, &h_mid), 4);
    assert_eq!(sim.frames(best, &best_mid), 4);
    assert_eq!(
        sim.layer_seen(best, &best_mid),
        Some("h"),
        "f does not flow yet"
    );

    // f starts, on a keyframe: the f viewer moves to it, the others stay on their layers.
    sim.round(&LAYERS, &["f"]);
    sim.rounds(5, &LAYERS);
    assert_eq!(sim.frames(on_h, &h_mid), 10, "h plays on");
    assert_eq!(sim.layer_seen(on_h, &h_mid), Some("h"));
    assert_eq!(sim.frames(on_q, &q_mid), 10, "q plays on");
    assert_eq!(sim.layer_seen(on_q, &q_mid), Some("q"));
    assert_eq!(sim.layer_seen(best, &best_mid), Some("f"), "switched to f");
    assert_eq!(sim.current_rid(&best_sid, &best_mid).as_deref(), Some("f"));
    assert!(
        sim.frames(best, &best_mid) >= 10,
        "{}",
        sim.frames(best, &best_mid)
    );
    for (c, mid) in [(on_h, &h_mid), (on_q, &q_mid), (best, &best_mid)] {
        sim.assert_continuous(c, mid);
    }
}

#[test]
fn a_relayed_layer_announced_later_does_not_take_the_place_of_the_one_a_viewer_receives() {
    // The origin has not seen f yet: it tells of h and q only.
    let (mut e, c, _sid, mid) = edge_with_viewer(
        &[("h", true), ("q", true)],
        prefer("f", Ordering::Asciibetical),
    );
    assert_eq!(e.pulled, only(&["h"]));
    e.round(&LAYERS, &["h"]);
    for _ in 0..3 {
        e.round(&LAYERS, &[]);
    }
    assert_eq!(e.w.clients[c].frames(&mid), 4);

    // Now f flows at the origin: h plays on until f's keyframe, then f.
    let now = e.w.now;
    let up = e.up;
    e.w.engine.relay_layers(
        up,
        layer_states(&[("f", true), ("h", true), ("q", true)]),
        now,
    );
    e.poll();
    for _ in 0..3 {
        e.round(&LAYERS, &[]);
    }
    assert_eq!(e.pulled, only(&["f", "h"]));
    assert_eq!(
        e.w.clients[c].frames(&mid),
        7,
        "h plays on until f's keyframe"
    );
    assert_eq!(
        e.w.clients[c].stats().rx[&mid].last_len,
        size_of("h") as u64
    );
    e.round(&LAYERS, &["f"]);
    for _ in 0..3 {
        e.round(&LAYERS, &[]);
    }
    let rx = &e.w.clients[c].stats().rx[&mid];
    assert_eq!(rx.last_len, size_of("f") as u64, "switched to f");
    assert_eq!(rx.frames, 11);
    assert_eq!(rx.rtp_seq_gaps, 0, "sequence numbers continue");
    assert_eq!(rx.time_backwards, 0);
}

/// A viewer on an edge receives layer q of a relayed publication. The origin stops announcing
/// q (the layer is gone there), then announces it again: a new layer, whose origin numbering
/// has nothing to do with the old one's (`seq_shift` moves it from where the old one would have
/// been). The viewer must take the new q as a new source from its keyframe: every frame
/// arrives, its sequence numbers run on without a gap, nothing is dropped as old or duplicate.
fn a_relayed_viewer_goes_on_when_its_layer_is_recreated(seq_shift: i64) {
    let (mut e, c, sid, mid) =
        edge_with_viewer(&[("h", true), ("q", true)], prefer("q", Ordering::None));
    assert_eq!(e.pulled, only(&["q"]));
    e.round(&LAYERS, &["q"]);
    for _ in 0..9 {
        e.round(&LAYERS, &[]);
    }
    assert_eq!(e.w.clients[c].frames(&mid), 10);
    let not_rewritten = e.w.engine.stats().packets_not_rewritten;

    // q goes away at the origin: the viewer waits for it (rid_not_available none).
    let up = e.up;
    let now = e.w.now;
    e.w.engine
        .relay_layers(up, layer_states(&[("h", true)]), now);
    e.poll();
    for _ in 0..3 {
        e.round(&["f", "h"], &[]);
    }
    assert_eq!(e.w.clients[c].frames(&mid), 10, "nothing while q is gone");

    // q is back, as a new layer: its numbering starts elsewhere.
    let now = e.w.now;
    e.w.engine
        .relay_layers(up, layer_states(&[("h", true), ("q", true)]), now);
    e.poll();
    assert!(
        e.pulled.carries(parse_rid("q").expect("rid")),
        "q is pulled again"
    );
    e.q_seq_shift = seq_shift;
    e.round(&LAYERS, &["q"]);
    for _ in 0..9 {
        e.round(&LAYERS, &[]);
    }
    let rx = &e.w.clients[c].stats().rx[&mid];
    assert_eq!(rx.frames, 20, "every frame of the new q arrives");
    assert_eq!(rx.last_len, size_of("q") as u64);
    assert_eq!(rx.rtp_seq_gaps, 0, "sequence numbers run on");
    assert_eq!(rx.time_backwards, 0);
    assert_eq!(
        e.w.engine.stats().packets_not_rewritten,
        not_rewritten,
        "no packet of the new q is taken for an old or duplicate one"
    );
    let tracks = e.w.engine.session_tracks(APP, &sid).expect("session");
    assert_eq!(
        tracks[0]
            .simulcast
            .and_then(|s| s.current_rid)
            .map(|r| r.to_string())
            .as_deref(),
        Some("q")
    );
}

#[test]
fn a_relayed_viewer_goes_on_when_its_layer_is_recreated_numbered_from_the_start() {
    // The new q's first packet is numbered 1 again: below what the viewer already got.
    a_relayed_viewer_goes_on_when_its_layer_is_recreated(-14);
}

#[test]
fn a_relayed_viewer_goes_on_when_its_layer_is_recreated_numbered_further_on() {
    // The new q's numbering starts 1000 past the old one's: no loss, a new source.
    a_relayed_viewer_goes_on_when_its_layer_is_recreated(1000);
}
