//! Relay loss repair between two in-process nodes: the relay's test hook drops every 100th
//! media datagram node A sends (1 %, deterministic, no sleep and no network namespace). Node B
//! asks A for the lost frames again (`Nack`) and holds what follows until they come, so B's
//! viewer loses (almost) nothing and nobody asks the publisher for a keyframe. With the
//! resends dropped as well, repair cannot work, and the loss must still surface as a keyframe
//! request: nothing is hidden.

use std::collections::BTreeMap;
use std::time::Duration;

use trackmesh_node::cluster::relay::RelayTestLoss;
use trackmesh_tests::flows::MEDIA_TIMEOUT;
use trackmesh_tests::serial::cluster_slot as serial;
use trackmesh_tests::{
    Cluster, ClusterConfig, MediaKind, PeerStats, Publisher, Subscriber, poll_until,
};

/// Frames (audio and video) B's viewer must receive under loss: enough that 0.1 % of them is
/// more than one frame, and that the hook drops a few dozen datagrams meanwhile.
const FRAMES_UNDER_LOSS: u64 = 1500;
/// Generous bound for that many frames (80 frames/s are sent).
const LOSS_PHASE_TIMEOUT: Duration = Duration::from_secs(60);

const KEYFRAMES_SENT: &str = r#"trackmesh_keyframe_requests_total{direction="sent"}"#;

fn repair(m: &BTreeMap<String, f64>, event: &str) -> f64 {
    m.get(&format!(
        "trackmesh_relay_repair_total{{event=\"{event}\"}}"
    ))
    .copied()
    .unwrap_or(0.0)
}

fn metric(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

/// Two nodes whose relay drops every 100th outgoing media datagram; a publisher on A, and a
/// viewer on B receiving its audio and video. Returns them with the mids on the viewer.
async fn lossy_pair(loss: RelayTestLoss) -> (Cluster, Publisher, Subscriber, String, String) {
    let cl = Cluster::start_with(
        &[("a", "r1"), ("b", "r1")],
        ClusterConfig {
            relay_test_loss: Some(loss),
            ..ClusterConfig::default()
        },
    )
    .await
    .expect("starting the cluster");
    let publisher = Publisher::start_av(&cl.client("a"), "lossy")
        .await
        .expect("publisher on A");
    let sub = Subscriber::start_retrying(&cl.client("b"), "view-b", &publisher.remote_refs())
        .await
        .expect("viewer on B");
    let name = |k| {
        publisher
            .track(k)
            .expect("published track")
            .track_name
            .clone()
    };
    let am = sub
        .mid_of(&publisher.session_id, &name(MediaKind::Audio))
        .expect("audio mid");
    let vm = sub
        .mid_of(&publisher.session_id, &name(MediaKind::Video))
        .expect("video mid");
    (cl, publisher, sub, am, vm)
}

/// Waits until the viewer played 2 s of video from a keyframe: the join's keyframe requests
/// (and one deferred by the once-a-second fold) are behind us.
async fn joined(sub: &Subscriber, vm: &str) {
    let v = vm.to_string();
    sub.peer
        .wait_until("video from a keyframe", MEDIA_TIMEOUT, move |s| {
            s.rx_keyframes(&v) >= 1 && s.rx_frames(&v) >= 60
        })
        .await
        .expect("B's viewer plays video");
}

fn window(s: &PeerStats, mid: &str) -> (u64, u64) {
    s.rx.get(mid)
        .map_or((0, 0), |t| (t.window.frames, t.window.lost))
}

/// Video frames a decoder could not decode since the window started.
fn broken(s: &PeerStats, mid: &str) -> u64 {
    s.rx.get(mid).map_or(0, |t| t.window.broken)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_percent_relay_loss_is_repaired_without_keyframes() {
    let _serial = serial().await;
    let (cl, publisher, sub, am, vm) = lossy_pair(RelayTestLoss {
        every: 100,
        drop_resends: false,
    })
    .await;
    joined(&sub, &vm).await;
    let before = cl.node("b").scrape().await.expect("B's metrics");
    let a_before = cl.node("a").scrape().await.expect("A's metrics");
    let plis_before = publisher.peer.stats().total_keyframe_requests();
    sub.peer.reset_window();

    let (a, v) = (am.clone(), vm.clone());
    let s = sub
        .peer
        .wait_until(
            "frames under 1 % relay loss",
            LOSS_PHASE_TIMEOUT,
            move |s| window(s, &a).0 + window(s, &v).0 >= FRAMES_UNDER_LOSS,
        )
        .await
        .expect("B's viewer keeps receiving under relay loss");
    let after = cl.node("b").scrape().await.expect("B's metrics");
    let a_after = cl.node("a").scrape().await.expect("A's metrics");
    let plis = publisher.peer.stats().total_keyframe_requests() - plis_before;

    let ((af, al), (vf, vl)) = (window(&s, &am), window(&s, &vm));
    let delta = |m0: &BTreeMap<String, f64>, m1: &BTreeMap<String, f64>, e: &str| {
        repair(m1, e) - repair(m0, e)
    };
    eprintln!(
        "1 % relay loss: viewer got audio {af} (lost {al}), video {vf} (lost {vl}); \
         A dropped {} datagrams (hook), resent {} frames, {} not in cache; \
         B sent {} nacks, repaired {}, failed {}, late {}; keyframe requests from B {}, PLIs at the publisher {plis}; \
         broken video frames {}",
        delta(&a_before, &a_after, "test_dropped"),
        delta(&a_before, &a_after, "resent"),
        delta(&a_before, &a_after, "nack_miss"),
        delta(&before, &after, "nack_sent"),
        delta(&before, &after, "repaired"),
        delta(&before, &after, "failed"),
        delta(&before, &after, "late"),
        metric(&after, KEYFRAMES_SENT) - metric(&before, KEYFRAMES_SENT),
        broken(&s, &vm),
    );
    // The hook did drop media, and B repaired it.
    assert!(
        delta(&a_before, &a_after, "test_dropped") >= 5.0,
        "the hook drops 1 % of A's media datagrams"
    );
    assert!(
        delta(&before, &after, "repaired") >= 1.0,
        "B repaired lost frames"
    );
    // What a viewer sees: fewer than 0.1 % of frames lost.
    assert!(
        (al + vl) * 1000 < af + vf,
        "lost {} of {} frames at B's viewer",
        al + vl,
        af + vf
    );
    // Every video frame the viewer got would decode: none came after a hole in its chain.
    assert_eq!(broken(&s, &vm), 0, "{}", s.summary());
    // No keyframe was asked for because of relay loss: not by B, not of the publisher.
    assert_eq!(
        metric(&after, KEYFRAMES_SENT),
        metric(&before, KEYFRAMES_SENT),
        "B asked for no keyframe"
    );
    assert_eq!(plis, 0, "the publisher was asked for no keyframe");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_loss_that_cannot_be_repaired_asks_for_a_keyframe() {
    let _serial = serial().await;
    let (cl, publisher, sub, _am, vm) = lossy_pair(RelayTestLoss {
        every: 100,
        drop_resends: true,
    })
    .await;
    joined(&sub, &vm).await;
    sub.peer.reset_window();
    let before = cl.node("b").scrape().await.expect("B's metrics");
    let plis_before = publisher.peer.stats().total_keyframe_requests();

    let node_b = cl.node("b");
    let (after, _) = poll_until(
        "B to give a relay loss up and ask for a keyframe",
        LOSS_PHASE_TIMEOUT,
        Duration::from_millis(200),
        async || {
            let m = node_b.scrape().await?;
            anyhow::ensure!(
                repair(&m, "failed") > repair(&before, "failed")
                    && metric(&m, KEYFRAMES_SENT) > metric(&before, KEYFRAMES_SENT),
                "failed {}, keyframe requests {}",
                repair(&m, "failed"),
                metric(&m, KEYFRAMES_SENT)
            );
            Ok(m)
        },
    )
    .await
    .expect("an unrepaired relay loss leads to a keyframe request");
    eprintln!(
        "resends dropped too: B sent {} nacks, repaired {}, gave {} up; keyframe requests from B {}",
        repair(&after, "nack_sent") - repair(&before, "nack_sent"),
        repair(&after, "repaired") - repair(&before, "repaired"),
        repair(&after, "failed") - repair(&before, "failed"),
        metric(&after, KEYFRAMES_SENT) - metric(&before, KEYFRAMES_SENT),
    );
    assert!(
        repair(&after, "nack_sent") > repair(&before, "nack_sent"),
        "B tried to repair first"
    );
    assert!(
        metric(
            &after,
            r#"trackmesh_packets_dropped_total{reason="relay_lost"}"#
        ) > 0.0,
        "B counts the frames lost on the relay"
    );
    let pli = publisher
        .peer
        .wait_until("a keyframe request", MEDIA_TIMEOUT, move |s| {
            s.total_keyframe_requests() > plis_before
        })
        .await;
    assert!(
        pli.is_ok(),
        "the publisher is asked for a keyframe: {pli:?}"
    );
    // Meanwhile B withheld the video after each hole until a keyframe: its viewer froze, but
    // never got a frame to decode from a missing reference. Checked once two more keyframes
    // came (the one asked for, at the latest the next periodic one).
    let keys = sub.peer.stats().rx_keyframes(&vm);
    let v = vm.clone();
    let s = sub
        .peer
        .wait_until("keyframes after the loss", MEDIA_TIMEOUT, move |s| {
            s.rx_keyframes(&v) >= keys + 2
        })
        .await
        .expect("B's viewer gets keyframes");
    eprintln!(
        "resends dropped too: B's viewer lost {} video frames (withheld), broken {}",
        window(&s, &vm).1,
        broken(&s, &vm)
    );
    assert_eq!(broken(&s, &vm), 0, "{}", s.summary());
}
