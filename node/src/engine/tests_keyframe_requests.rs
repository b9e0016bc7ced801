//! Keyframe requests a node sends towards the publisher (the upstream node of a relayed track,
//! or the publisher itself): once its viewers are settled it sends none, whatever happened
//! while they joined, so the publisher's keyframes come at its own pace; a joining viewer and a
//! `tracks/update` still get theirs. Checked for an edge pulling a simulcast track, an edge
//! pulling an unlayered one, a hub passing a downstream node's requests on, and the
//! publisher's own node, on the simulated clock of the test world.

use std::time::Duration;

use super::simulcast::{Ordering, parse_rid};
use super::tests_simulcast::{
    LAYERS, Sim, only, prefer, relayed, relayed_vp8_publication, size_of, update_layer, viewer,
};
use super::*;
use crate::ids::{DownId, UpId};
use crate::testing::{APP, World};

/// Rounds from one of the publisher's own keyframes to the next (2 s of 33 ms rounds).
const GOP: u64 = 60;
/// Ten simulated seconds of rounds.
const TEN_SECONDS: u64 = 300;
const ROUND: Duration = Duration::from_millis(33);

/// What the engine sent upstream.
#[derive(Debug, Default)]
struct Upstream {
    /// Requests for a keyframe of the whole track (`KeyframeRequest`).
    track: usize,
    /// Requests for a keyframe of one layer (`LayerKeyframeRequest`), by rid.
    layers: Vec<String>,
    /// Frames queued for downstream nodes.
    frames_down: usize,
}

impl Upstream {
    fn add(&mut self, other: Upstream) {
        self.track += other.track;
        self.layers.extend(other.layers);
        self.frames_down += other.frames_down;
    }

    fn requests(&self) -> usize {
        self.track + self.layers.len()
    }
}

/// Drains the engine's relay outputs.
fn upstream(w: &mut World) -> Upstream {
    let mut u = Upstream::default();
    while let Some(out) = w.engine.poll_relay() {
        match out {
            RelayOut::KeyframeRequest { .. } => u.track += 1,
            RelayOut::LayerKeyframeRequest { rid, .. } => u.layers.push(rid.to_string()),
            RelayOut::Frame { .. } => u.frames_down += 1,
            _ => {}
        }
    }
    u
}

/// Rounds `rounds` from upstream `up`: a frame of each of `rids` (`None`: one unlayered frame),
/// a keyframe every [`GOP`] rounds (the publisher's own), then a round of time. Returns what
/// went upstream meanwhile.
fn feed(w: &mut World, up: UpId, rounds: std::ops::Range<u64>, rids: Option<&[&str]>) -> Upstream {
    let mut u = Upstream::default();
    for n in rounds {
        let keyframe = n % GOP == 0;
        let now = w.now;
        match rids {
            Some(rids) => {
                for rid in rids {
                    w.engine.relay_frame(up, relayed(rid, n, keyframe), now);
                }
            }
            None => {
                let frame = RelayFrame {
                    rtp_time: n * 3000,
                    origin_seq: n,
                    marker: true,
                    keyframe,
                    data: crate::testing::vp8_packet(keyframe, 1000).into(),
                    rid: None,
                    orientation: None,
                };
                w.engine.relay_frame(up, frame, now);
            }
        }
        let all = 0..w.clients.len();
        w.step(all, ROUND);
        u.add(upstream(w));
    }
    u
}

fn all_flowing() -> Vec<(str0m::media::Rid, bool)> {
    LAYERS
        .iter()
        .filter_map(|r| Some((parse_rid(r)?, true)))
        .collect()
}

#[test]
fn settled_viewers_of_a_relayed_simulcast_track_ask_upstream_for_no_keyframe() {
    let mut w = World::new(Duration::from_secs(60));
    let (publisher, up) = relayed_vp8_publication(&mut w, 7);
    // Until the origin says which layers exist the edge pulls them all, and five q viewers
    // join: their requests are for the whole track, folded to one a second, the rest deferred.
    feed(&mut w, up, 0..1, Some(&LAYERS));
    let viewers: Vec<(usize, String, String)> = (0..5)
        .map(|_| viewer(&mut w, publisher, Some(prefer("q", Ordering::None))))
        .collect();
    let clients: Vec<usize> = viewers.iter().map(|v| v.0).collect();
    w.connect(&clients);
    let joined = upstream(&mut w);
    assert_eq!(joined.track, 1, "the joins asked once: {joined:?}");
    // Then the origin's word: only q is pulled from now on.
    let now = w.now;
    w.engine.relay_layers(up, all_flowing(), now);
    // The deferred request goes once, per layer now; the viewers settle on q.
    let settling = feed(&mut w, up, 1..2 * GOP, Some(&["q"]));
    assert_eq!(settling.track, 0, "{settling:?}");
    assert_eq!(settling.layers, vec!["q"], "{settling:?}");
    let before: Vec<(u64, u64)> = viewers
        .iter()
        .map(|(c, _, mid)| (w.clients[*c].frames(mid), w.clients[*c].keyframes(mid)))
        .collect();

    // Ten seconds of frames: not a single request goes upstream.
    let quiet = feed(&mut w, up, 2 * GOP..2 * GOP + TEN_SECONDS, Some(&["q"]));
    assert_eq!(
        quiet.requests(),
        0,
        "settled viewers make the edge ask upstream for nothing: {quiet:?}"
    );
    for ((c, _, mid), (frames, keyframes)) in viewers.iter().zip(before) {
        let rx = &w.clients[*c].stats().rx[mid];
        assert_eq!(rx.last_len, size_of("q") as u64, "the viewer decodes q");
        assert_eq!(
            rx.frames - frames,
            TEN_SECONDS,
            "every frame of the ten seconds arrived"
        );
        assert_eq!(
            w.clients[*c].keyframes(mid) - keyframes,
            TEN_SECONDS / GOP,
            "only the publisher's own keyframes"
        );
    }

    // A joining viewer still gets its keyframe asked for, of its layer only.
    let mut n = 2 * GOP + TEN_SECONDS;
    let (c, _, mid) = viewer(&mut w, publisher, Some(prefer("q", Ordering::None)));
    w.connect(&[c]);
    let join = upstream(&mut w);
    assert_eq!(join.track, 0, "{join:?}");
    assert_eq!(join.layers, vec!["q"], "{join:?}");
    // The upstream answers with q's keyframe; then it is quiet again.
    let now = w.now;
    w.engine.relay_frame(up, relayed("q", n, true), now);
    n += 1;
    let after = feed(&mut w, up, n..n + GOP, Some(&["q"]));
    n += GOP;
    assert_eq!(after.requests(), 0, "{after:?}");
    assert_eq!(
        w.clients[c].stats().rx[&mid].last_len,
        size_of("q") as u64,
        "the new viewer decodes q"
    );

    // A tracks/update to h asks for h's keyframe (and pulls h).
    let (c0, sid0, mid0) = viewers[0].clone();
    update_layer(&mut w, &sid0, &mid0, publisher, "h");
    let update = upstream(&mut w);
    assert_eq!(update.track, 0, "{update:?}");
    assert_eq!(update.layers, vec!["h"], "{update:?}");
    // The upstream answers with h's keyframe: the viewer switches; then it is quiet again.
    let now = w.now;
    w.engine.relay_frame(up, relayed("h", n, true), now);
    w.engine.relay_frame(up, relayed("q", n, false), now);
    n += 1;
    let after = feed(&mut w, up, n..n + 2 * GOP, Some(&["h", "q"]));
    assert_eq!(after.requests(), 0, "{after:?}");
    assert_eq!(
        w.clients[c0].stats().rx[&mid0].last_len,
        size_of("h") as u64,
        "the viewer moved to h"
    );
}

#[test]
fn settled_viewers_of_a_relayed_unlayered_track_ask_upstream_for_no_keyframe() {
    let mut w = World::new(Duration::from_secs(60));
    let (publisher, up) = relayed_vp8_publication(&mut w, 7);
    feed(&mut w, up, 0..1, None);
    let viewers: Vec<(usize, String, String)> =
        (0..5).map(|_| viewer(&mut w, publisher, None)).collect();
    let clients: Vec<usize> = viewers.iter().map(|v| v.0).collect();
    w.connect(&clients);
    let joined = upstream(&mut w);
    assert_eq!(joined.track, 1, "the joins asked once: {joined:?}");
    // The deferred request goes once, a second later.
    let settling = feed(&mut w, up, 1..2 * GOP, None);
    assert_eq!(
        (settling.track, settling.layers.len()),
        (1, 0),
        "{settling:?}"
    );

    let quiet = feed(&mut w, up, 2 * GOP..2 * GOP + TEN_SECONDS, None);
    assert_eq!(quiet.requests(), 0, "{quiet:?}");
    for (c, _, mid) in &viewers {
        assert!(
            w.clients[*c].frames(mid) >= TEN_SECONDS,
            "the viewer gets the frames"
        );
    }

    // A joining viewer still gets its keyframe asked for.
    let n = 2 * GOP + TEN_SECONDS;
    let (c, _, _) = viewer(&mut w, publisher, None);
    w.connect(&[c]);
    let join = upstream(&mut w);
    assert_eq!((join.track, join.layers.len()), (1, 0), "{join:?}");
    let after = feed(&mut w, up, n..n + 2 * GOP, None);
    assert_eq!(after.requests(), 0, "{after:?}");
}

#[test]
fn a_hub_passes_a_downstream_nodes_requests_on_and_nothing_more() {
    let mut w = World::new(Duration::from_secs(60));
    let (publisher, up) = relayed_vp8_publication(&mut w, 7);
    feed(&mut w, up, 0..1, Some(&LAYERS));
    let down = DownId(9);
    w.engine
        .relay_subscribe(down, APP, publisher, "cam")
        .expect("relay subscription");
    // The downstream node's viewers join before either node knows the layers: whole-track
    // requests, the second within the second deferred.
    let now = w.now;
    w.engine.relay_keyframe_request(down, now);
    let mut joined = upstream(&mut w);
    joined.add(feed(&mut w, up, 1..4, Some(&LAYERS)));
    let now = w.now;
    w.engine.relay_keyframe_request(down, now);
    joined.add(upstream(&mut w));
    assert_eq!(joined.track, 1, "{joined:?}");
    // Then the origin's word, and the downstream wants q only.
    let now = w.now;
    w.engine.relay_layers(up, all_flowing(), now);
    w.engine.relay_set_layers(down, only(&["q"]), now);
    // The deferred request goes once, for the layer pulled.
    let settling = feed(&mut w, up, 4..2 * GOP, Some(&["q"]));
    assert_eq!(settling.track, 0, "{settling:?}");
    assert_eq!(settling.layers, vec!["q"], "{settling:?}");

    let quiet = feed(&mut w, up, 2 * GOP..2 * GOP + TEN_SECONDS, Some(&["q"]));
    assert_eq!(quiet.requests(), 0, "{quiet:?}");
    assert_eq!(
        quiet.frames_down as u64, TEN_SECONDS,
        "the downstream node gets q's frames"
    );

    // The downstream asks for q's keyframe (a viewer joined there): passed on, once.
    let n = 2 * GOP + TEN_SECONDS;
    let now = w.now;
    let Some(q) = parse_rid("q") else {
        panic!("q is a rid");
    };
    w.engine.relay_layer_keyframe_request(down, q, now);
    let asked = upstream(&mut w);
    assert_eq!(
        (asked.track, asked.layers.clone()),
        (0, vec!["q".to_string()])
    );
    let after = feed(&mut w, up, n..n + GOP, Some(&["q"]));
    assert_eq!(after.requests(), 0, "{after:?}");
}

#[test]
fn the_publishers_node_asks_it_for_no_keyframe_once_its_viewers_are_settled() {
    let mut sim = Sim::new(&LAYERS);
    // Viewers join before the publisher's first frame: their requests are for the whole
    // track (its layers are not known yet), the second within the second deferred.
    let pub_sid = SessionId::parse(&sim.pub_sid).expect("session id");
    let viewers: Vec<(usize, String, String)> = (0..3)
        .map(|_| viewer(&mut sim.w, pub_sid, Some(prefer("q", Ordering::None))))
        .collect();
    let clients: Vec<usize> = viewers.iter().map(|v| v.0).collect();
    sim.w.connect(&clients);
    for n in 0..2 * GOP {
        let keyframes: &[&str] = if n % GOP == 0 { &LAYERS } else { &[] };
        sim.round(&LAYERS, keyframes);
    }
    let publisher = sim.publisher;
    let before = sim.w.clients[publisher].keyframe_requests();
    let q_before = sim.layer_requests("q");
    for n in 0..TEN_SECONDS {
        let keyframes: &[&str] = if n % GOP == 0 { &LAYERS } else { &[] };
        sim.round(&LAYERS, keyframes);
    }
    assert_eq!(
        sim.w.clients[publisher].keyframe_requests() - before,
        0,
        "the publisher is asked for nothing"
    );
    assert_eq!(sim.layer_requests("q"), q_before);
    for (c, _, mid) in &viewers {
        let rx = &sim.w.clients[*c].stats().rx[mid];
        assert_eq!(rx.last_len, size_of("q") as u64, "the viewer decodes q");
    }
}
