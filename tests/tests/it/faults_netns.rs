//! Faults on a real network: two nodes in their own network namespaces, cut apart by iptables
//! (a partition that heals without a restart) or losing 10 % of the relay's packets, after which
//! the relayed viewer's video must be clean (the test kit's decoder model counts broken frames).
//!
//! How the test clients reach the nodes: each outer test builds a lab (`tests/src/netns.rs`):
//! namespaces `a` and `b` for the nodes and `c` for the clients, on one bridge (10.201.0.1, .2,
//! .3). It then re-runs this test binary inside `c` with `ip netns exec c <this exe> --exact
//! inner_… --ignored`, with the lab described in `TRACKMESH_NETNS_LAB` and the clients' address in
//! `TRACKMESH_TEST_PEER_IP`. The inner test starts the nodes through `ip netns exec a|b`, and its
//! str0m peers and HTTP client talk to them over the bridge. So all traffic stays inside
//! namespaces the test created; nothing is added to the host's network, and the faults (iptables
//! rules in `a` and `b`) never touch the clients' path. The outer test passes only if exactly one
//! inner test ran and passed, and checks that the lab's namespaces are gone afterwards.
//!
//! Needs root and iptables (`tests/all.sh` installs it): without them the tests fail.
//! The `inner_*` tests are `#[ignore]`d: run alone they fail, as they have no lab.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::ensure;
use trackmesh_tests::cluster::ClusterConfig;
use trackmesh_tests::flows::MEDIA_TIMEOUT;
use trackmesh_tests::netns::{Lab, LabSpec};
use trackmesh_tests::node::PLACED_RELAY_PORT;
use trackmesh_tests::testkit::media::VideoShape;
use trackmesh_tests::{Cluster, MediaKind, Publisher, Subscriber, TracksRequest, poll_until};

/// Bound on one inner test run (it takes about 20–40 s; the relay loss test its loss time more).
const INNER_TIMEOUT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_millis(200);
/// Bound on "a node sees the other dead / live again".
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(20);
/// Random loss put on the relay link; env `TRACKMESH_TEST_RELAY_LOSS` (0..1) overrides it to
/// measure (BENCHMARKS.md, relay under loss).
const RELAY_LOSS: f64 = 0.10;

/// How long the relay loses packets; env `TRACKMESH_TEST_LOSS_SECS` overrides it (the issue's
/// 30 s, run by hand), up to [`MAX_LOSS`] so the inner test stays well inside its bound.
const LOSS: Duration = Duration::from_secs(5);
const MAX_LOSS: Duration = Duration::from_secs(60);

fn loss_duration() -> Duration {
    std::env::var("TRACKMESH_TEST_LOSS_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(LOSS, |s| {
            Duration::from_secs(s).clamp(Duration::from_secs(1), MAX_LOSS)
        })
}

fn relay_loss() -> f64 {
    std::env::var("TRACKMESH_TEST_RELAY_LOSS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|p| (0.0..1.0).contains(p))
        .unwrap_or(RELAY_LOSS)
}

// One lab at a time, and no other cluster beside it: two on the shared cores only slow each
// other down.
use trackmesh_tests::serial::cluster_slot_blocking as serial;

/// Build a lab, run `inner` inside it, tear the lab down and check that nothing is left.
fn in_lab(name: &str, inner: &str) {
    let _serial = serial();
    let lab = Lab::create(name).expect("building the network lab (needs root and iptables)");
    let namespaces = lab.namespaces().to_vec();
    let result = lab.run_inner(inner, INNER_TIMEOUT);
    drop(lab);
    match result {
        Ok(text) => eprintln!("{text}"),
        Err(e) => panic!("{e:#}"),
    }
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let list = String::from_utf8_lossy(&out.stdout);
    for ns in &namespaces {
        assert!(
            !list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns)),
            "namespace {ns} left behind: {list}"
        );
    }
}

#[test]
fn partition_heals_on_a_real_network() {
    in_lab("partition", "faults_netns::inner_partition_heals");
}

#[test]
fn a_relayed_viewer_survives_partitions_shorter_than_the_track_timeout() {
    in_lab(
        "outage",
        "faults_netns::inner_relayed_viewer_survives_partitions",
    );
}

#[test]
fn relay_loss_keeps_media_flowing() {
    in_lab("relayloss", "faults_netns::inner_relay_loss");
}

/// Nodes `a` (r1) and `b` (r1) in the lab's namespaces, converged.
async fn lab_cluster(lab: &LabSpec) -> Cluster {
    let places = vec![
        lab.place("a").expect("place a"),
        lab.place("b").expect("place b"),
    ];
    let cl = Cluster::start_with(
        &[("a", "r1"), ("b", "r1")],
        ClusterConfig {
            places,
            ..ClusterConfig::default()
        },
    )
    .await
    .expect("starting nodes a and b in the lab");
    for n in ["a", "b"] {
        assert_eq!(
            cl.node(n).http_addr().ip(),
            lab.ip(n).expect("ip"),
            "node {n} serves on its lab address: {:?}",
            cl.node(n).ready_fields()
        );
    }
    cl
}

/// Subscribe on node `name` to `refs`; returns the subscriber and its (audio, video) mids.
async fn viewer(
    cl: &Cluster,
    name: &str,
    who: &str,
    publisher: &Publisher,
) -> (Subscriber, String, String) {
    let sub = Subscriber::start_retrying(&cl.client(name), who, &publisher.remote_refs())
        .await
        .unwrap_or_else(|e| panic!("{who} on {name}: {e:#}"));
    let mid = |kind| {
        let t = publisher.track(kind).expect("track");
        sub.mid_of(&publisher.session_id, &t.track_name)
            .unwrap_or_else(|e| panic!("{who}: {e:#}"))
    };
    let (am, vm) = (mid(MediaKind::Audio), mid(MediaKind::Video));
    (sub, am, vm)
}

/// Wait until `sub` got `audio` more audio frames, `video` more video frames and `keys` more
/// keyframes than it had on entry; the frames must arrive whole (sizes as sent).
async fn more_media(sub: &Subscriber, am: &str, vm: &str, who: &str, counts: (u64, u64, u64)) {
    let (audio, video, keys) = counts;
    let s0 = sub.peer.stats();
    let (a0, v0, k0) = (s0.rx_frames(am), s0.rx_frames(vm), s0.rx_keyframes(vm));
    let (ab0, vb0) = (s0.rx_bytes(am), s0.rx_bytes(vm));
    let (a, v) = (am.to_string(), vm.to_string());
    let s = sub
        .peer
        .wait_until("more audio, video and keyframes", MEDIA_TIMEOUT, move |s| {
            s.rx_frames(&a) >= a0 + audio
                && s.rx_frames(&v) >= v0 + video
                && s.rx_keyframes(&v) >= k0 + keys
        })
        .await
        .unwrap_or_else(|e| panic!("{who} keeps receiving media: {e:#}"));
    let (da, dv) = (s.rx_frames(am) - a0, s.rx_frames(vm) - v0);
    assert_eq!(
        (s.rx_bytes(am) - ab0) / da,
        100,
        "{who}: audio frames arrive with the size they were sent with"
    );
    assert!(
        (s.rx_bytes(vm) - vb0) / dv >= 1000,
        "{who}: video frames arrive whole: {s:?}"
    );
}

/// Both nodes list each other with `live`.
async fn wait_membership(cl: &Cluster, live: bool, what: &str) -> Duration {
    let (a_id, b_id) = (cl.id("a"), cl.id("b"));
    let (_, took) = poll_until(what, MEMBERSHIP_TIMEOUT, STEP, async || {
        let va = cl.node("a").cluster_view().await?;
        ensure!(va.is_live(&b_id) == live, "A's view: {va:?}");
        let vb = cl.node("b").cluster_view().await?;
        ensure!(vb.is_live(&a_id) == live, "B's view: {vb:?}");
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    took
}

#[ignore = "run inside its network lab by partition_heals_on_a_real_network"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inner_partition_heals() {
    let lab = LabSpec::from_env().expect("the lab");
    let mut cl = lab_cluster(&lab).await;

    // A publisher and a viewer on each side, each viewer pulling its own node's publisher.
    let pub_a = Publisher::start_av(&cl.client("a"), "pa")
        .await
        .expect("publisher on A");
    let pub_b = Publisher::start_av(&cl.client("b"), "pb")
        .await
        .expect("publisher on B");
    let (view_a, a_am, a_vm) = viewer(&cl, "a", "view-a", &pub_a).await;
    let (view_b, b_am, b_vm) = viewer(&cl, "b", "view-b", &pub_b).await;
    more_media(&view_a, &a_am, &a_vm, "A's viewer", (20, 10, 1)).await;
    more_media(&view_b, &b_am, &b_vm, "B's viewer", (20, 10, 1)).await;

    lab.partition().expect("partitioning a from b");
    let t = wait_membership(&cl, false, "each node to see the other dead").await;
    eprintln!("partition: each node saw the other dead after {t:?}");

    // Both sides keep serving their viewers, and a viewer that joins now is served too.
    more_media(
        &view_a,
        &a_am,
        &a_vm,
        "A's viewer, partitioned",
        (100, 50, 1),
    )
    .await;
    more_media(
        &view_b,
        &b_am,
        &b_vm,
        "B's viewer, partitioned",
        (100, 50, 1),
    )
    .await;
    let (late_a, la_am, la_vm) = viewer(&cl, "a", "late-a", &pub_a).await;
    more_media(&late_a, &la_am, &la_vm, "A's new viewer", (20, 10, 1)).await;

    // Across the cut, the other side's tracks are not found (its node is dead).
    let api_b = cl.client("b");
    let session = api_b.sessions_new().await.expect("sessions/new on B");
    let resp = api_b
        .tracks_new(
            &session.session_id,
            &TracksRequest::pull(&pub_a.remote_refs()),
        )
        .await
        .expect("pull of A's tracks on B");
    assert_eq!(resp.tracks.len(), 2, "{resp:?}");
    for item in &resp.tracks {
        assert_eq!(
            item.error_code.as_deref(),
            Some("not_found_track_error"),
            "{resp:?}"
        );
    }
    for n in ["a", "b"] {
        let drops = lab.partition_drops(n).expect("counters");
        assert!(drops > 0, "the partition rules of {n} dropped nothing");
        eprintln!("partition: {n} dropped {drops} packets from/to the other node");
    }

    // Heal without a restart.
    let healed_at = Instant::now();
    lab.heal().expect("removing the partition");
    let t = wait_membership(&cl, true, "each node to see the other live again").await;
    eprintln!("heal: live again on both sides after {t:?}");
    for n in ["a", "b"] {
        assert!(cl.node_mut(n).is_running(), "node {n} exited");
    }

    // Cross-node pulls work again, in both directions.
    let (x_b, xb_am, xb_vm) = viewer(&cl, "b", "cross-b", &pub_a).await;
    more_media(
        &x_b,
        &xb_am,
        &xb_vm,
        "B's viewer of A's tracks",
        (20, 10, 1),
    )
    .await;
    let (x_a, xa_am, xa_vm) = viewer(&cl, "a", "cross-a", &pub_b).await;
    more_media(
        &x_a,
        &xa_am,
        &xa_vm,
        "A's viewer of B's tracks",
        (20, 10, 1),
    )
    .await;
    eprintln!(
        "heal: cross-node media in both directions {:?} after the rules were removed",
        healed_at.elapsed()
    );
    // The first viewers never stopped.
    more_media(&view_a, &a_am, &a_vm, "A's viewer, healed", (20, 10, 0)).await;
    more_media(&view_b, &b_am, &b_vm, "B's viewer, healed", (20, 10, 0)).await;
}

#[ignore = "run inside its network lab by a_relayed_viewer_survives_partitions_shorter_than_the_track_timeout"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inner_relayed_viewer_survives_partitions() {
    let lab = LabSpec::from_env().expect("the lab");
    let cl = lab_cluster(&lab).await;
    let publisher = Publisher::start_av(&cl.client("a"), "far")
        .await
        .expect("publisher on A");
    // A viewer on B of A's tracks: its media crosses the relay, which the faults cut.
    let (sub, am, vm) = viewer(&cl, "b", "view-b", &publisher).await;
    more_media(&sub, &am, &vm, "B's viewer", (20, 10, 1)).await;
    // The audio and video pulls went out together and share one link.
    assert_eq!(
        cl.node("b").log().matches("relay link dialed").count(),
        1,
        "one relay link for both tracks"
    );

    // Outages both ways, shorter than the 30 s track timeout: the same viewer, with no action
    // of its own, gets a keyframe and media again once the nodes reach each other.
    for (what, cut) in [
        ("0.5 s partition", Duration::from_millis(500)),
        ("5 s partition", Duration::from_secs(5)),
        ("20 s partition", Duration::from_secs(20)),
    ] {
        lab.partition().expect("partitioning a from b");
        let cut_at = Instant::now();
        if cut > Duration::from_secs(10) {
            // While B has no route to the track, GET session says so.
            let api = cl.client("b");
            let (_, took) = poll_until(
                "B to show the cut-off tracks inactive",
                cut,
                STEP,
                async || {
                    let st = api.get_session(&sub.session_id).await?;
                    ensure!(
                        st.status_of(&am) == Some("inactive")
                            && st.status_of(&vm) == Some("inactive"),
                        "{st:?}"
                    );
                    Ok(())
                },
            )
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
            eprintln!("outage: {what}: tracks inactive on B after {took:?}");
        }
        tokio::time::sleep(cut.saturating_sub(cut_at.elapsed())).await;
        lab.heal().expect("healing");
        let healed = Instant::now();
        more_media(
            &sub,
            &am,
            &vm,
            &format!("B's viewer after a {what}"),
            (10, 5, 1),
        )
        .await;
        eprintln!(
            "outage: {what}: media and a keyframe again {:?} after the heal",
            healed.elapsed()
        );
    }
    for (from, to) in [("a", "b"), ("b", "a")] {
        lab.block_one_way(from, to).expect("one-way cut");
        tokio::time::sleep(Duration::from_secs(5)).await;
        lab.unblock_one_way(from, to)
            .expect("removing the one-way cut");
        let healed = Instant::now();
        more_media(
            &sub,
            &am,
            &vm,
            &format!("B's viewer after {from} -> {to} was cut for 5 s"),
            (10, 5, 1),
        )
        .await;
        eprintln!(
            "outage: {from} -> {to} cut for 5 s: media and a keyframe again {:?} after the heal",
            healed.elapsed()
        );
    }
    let st = cl
        .client("b")
        .get_session(&sub.session_id)
        .await
        .expect("GET session on B");
    assert_eq!(st.status_of(&am), Some("active"), "{st:?}");
    assert_eq!(st.status_of(&vm), Some("active"), "{st:?}");
    let s = sub.peer.stats();
    eprintln!(
        "outage: the viewer saw {} video frames, {} keyframes, {} broken",
        s.rx_frames(&vm),
        s.rx_keyframes(&vm),
        s.rx_broken(&vm)
    );
}

#[ignore = "run inside its network lab by relay_loss_keeps_media_flowing"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inner_relay_loss() {
    let lab = LabSpec::from_env().expect("the lab");
    let cl = lab_cluster(&lab).await;
    let publisher = Publisher::start_av(&cl.client("a"), "lossy")
        .await
        .expect("publisher on A");
    let (sub, am, vm) = viewer(&cl, "b", "view-b", &publisher).await;
    more_media(&sub, &am, &vm, "B's viewer", (20, 10, 1)).await;
    let video = &publisher.track(MediaKind::Video).expect("video").track_name;
    let relay_b = cl.node("b").relay_view().await.expect("B's relay");
    assert_eq!(
        relay_b
            .upstream_of(&publisher.session_id, video)
            .iter()
            .filter(|u| u.via == cl.id("a"))
            .count(),
        1,
        "B pulls the video from A over the relay: {relay_b:?}"
    );
    let a_mid = &publisher.track(MediaKind::Audio).expect("audio").mid;
    let v_mid = &publisher.track(MediaKind::Video).expect("video").mid;

    let loss_for = loss_duration();
    lab.add_loss(PLACED_RELAY_PORT, relay_loss())
        .expect("adding loss on the relay port");
    let tx0 = publisher.peer.stats();
    sub.peer.reset_window();
    let rx0 = sub.peer.stats();
    // Audio at 50 frames/s, video at 30 with a keyframe every 2 s (or on PLI). B asks A again
    // for what the relay lost (Nack) and holds what follows meanwhile; what repair cannot fill
    // in time (the resend lost too) makes B withhold video until the keyframe it asks for.
    tokio::time::sleep(loss_for).await;
    let tx1 = publisher.peer.stats();
    let rx1 = sub.peer.stats();
    let (offered, dropped) = lab.loss_counts().expect("loss counters");
    let m = cl.node("b").scrape().await.expect("B's metrics");
    lab.clear_loss().expect("removing the loss");
    // The sender's next video frame number: the first one sent after the loss.
    let sent_after_loss = publisher.peer.stats().tx_frames(v_mid);
    eprintln!(
        "relay loss: {dropped} of {offered} relay packets dropped ({:.1} %) in {loss_for:?}",
        100.0 * dropped as f64 / offered.max(1) as f64
    );
    assert!(
        offered > 0 && dropped > 0,
        "the loss rules saw {offered} relay packets and dropped {dropped}"
    );
    let sent_a = tx1.tx_frames(a_mid) - tx0.tx_frames(a_mid);
    let got_a = rx1.rx_frames(&am) - rx0.rx_frames(&am);
    let sent_v = tx1.tx_frames(v_mid) - tx0.tx_frames(v_mid);
    let got_v = rx1.rx_frames(&vm) - rx0.rx_frames(&vm);
    let keys_v = rx1.rx_keyframes(&vm) - rx0.rx_keyframes(&vm);
    eprintln!(
        "relay loss: audio {got_a} of {sent_a} frames, video {got_v} of {sent_v} frames ({keys_v} keyframes) reached B's viewer"
    );
    for (kind, mid) in [("audio", &am), ("video", &vm)] {
        if let Some(d) = rx1
            .rx
            .get(mid.as_str())
            .and_then(|t| t.window.latency.dist())
        {
            eprintln!(
                "relay loss: {kind} one-way latency at B's viewer (ms): {}",
                d.short()
            );
        }
    }
    // Repaired audio loses far less than the link's loss; half is far from that.
    assert!(
        got_a * 2 >= sent_a,
        "audio through a 10 % lossy relay: {got_a} of {sent_a} frames"
    );
    assert!(got_v > 0, "video through a lossy relay: {}", rx1.summary());
    // B saw the loss (gaps in the relay's frame numbers) and repaired it; what it could not
    // repair it counted, and held video back rather than let its viewer decode frames whose
    // references never came.
    let get = |key: String| m.get(&key).copied().unwrap_or(0.0);
    let dropped = |reason: &str| {
        get(format!(
            "trackmesh_packets_dropped_total{{reason=\"{reason}\"}}"
        ))
    };
    let repair = |event: &str| get(format!("trackmesh_relay_repair_total{{event=\"{event}\"}}"));
    eprintln!(
        "relay loss: B sent {} nacks, repaired {} frames, gave {} up (relay_lost {}), dropped {} late, and withheld {} video frames until a keyframe",
        repair("nack_sent"),
        repair("repaired"),
        repair("failed"),
        dropped("relay_lost"),
        repair("late"),
        dropped("relay_gap_withheld")
    );
    assert!(
        repair("nack_sent") > 0.0 && repair("repaired") > 0.0,
        "B repairs frames lost on the relay"
    );

    // Once the loss ends, video flows whole again, and the first keyframe the sender makes
    // after it reaches the viewer: clean within one keyframe interval, counted in frames.
    let per_interval = VideoShape::LIGHT.frames_per_keyframe_interval();
    let v = vm.clone();
    let s = sub
        .peer
        .wait_until("a keyframe sent after the loss", MEDIA_TIMEOUT, move |s| {
            s.rx.get(&v)
                .and_then(|t| t.keyframe_from(sent_after_loss))
                .is_some()
        })
        .await
        .unwrap_or_else(|e| panic!("B's viewer gets a keyframe after the loss: {e:#}"));
    let key =
        s.rx.get(&vm)
            .and_then(|t| t.keyframe_from(sent_after_loss))
            .map_or(u64::MAX, |k| k.seq);
    let frames_to_clean = key.saturating_sub(sent_after_loss);
    more_media(&sub, &am, &vm, "B's viewer, loss over", (50, 30, 0)).await;
    let withheld = async || {
        let m = cl.node("b").scrape().await.expect("B's metrics");
        m.get("trackmesh_packets_dropped_total{reason=\"relay_gap_withheld\"}")
            .copied()
            .unwrap_or(0.0)
    };
    let before = withheld().await;
    more_media(&sub, &am, &vm, "B's viewer, clean", (50, 30, 0)).await;
    assert_eq!(
        before,
        withheld().await,
        "no video withheld once the relay is clean"
    );

    // What the viewer's decoder would have shown: no frame decoded from a missing reference,
    // during the loss (repaired, or withheld until a keyframe) or after it.
    let end = sub.peer.stats();
    let (at_join, in_loss, after) = (
        rx0.rx_broken(&vm),
        rx1.rx_broken(&vm) - rx0.rx_broken(&vm),
        end.rx_broken(&vm) - rx1.rx_broken(&vm),
    );
    let t2 = end.rx.get(&vm);
    eprintln!(
        "relay loss: broken video frames at B's viewer: {in_loss} during the loss, {after} after it ({at_join} at join); \
         the first keyframe sent after the loss came {frames_to_clean} frames after it (one keyframe interval: {per_interval} frames); \
         last broken frame {:?}, healed by keyframe {:?}",
        t2.and_then(|t| t.last_broken).map(|m| m.seq),
        t2.and_then(|t| t.healed_by).map(|m| m.seq),
    );
    assert_eq!(
        in_loss,
        0,
        "broken video during the loss: {}",
        end.summary()
    );
    assert_eq!(after, 0, "broken video after the loss: {}", end.summary());
    assert!(
        frames_to_clean <= per_interval,
        "a keyframe within one keyframe interval after the loss: {frames_to_clean} frames"
    );
}
