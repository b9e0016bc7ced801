//! Cluster behaviour with real node processes on 127.0.0.1 and the str0m test client: pulls
//! across nodes and regions, shared upstreams, region hubs, forwarded API calls, and nodes that
//! die (SIGKILL), freeze (SIGSTOP), drain (SIGTERM) or hold the wrong cluster secret.
//!
//! The tests in this file run one at a time (a shared lock): their timing bounds (a dead node is
//! noticed within 3 s, a dead publisher node within 5 s) should not depend on how many other
//! clusters share the two cores. Measured times are printed (`--nocapture` to see them).

use std::net::{TcpListener, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure};
use trackmesh_tests::api::TrackObject;
use trackmesh_tests::flows::MEDIA_TIMEOUT;
use trackmesh_tests::node::node_binary;
use trackmesh_tests::{
    Cluster, ClusterConfig, MediaKind, Peer, PeerStats, Publisher, Subscriber, TracksRequest,
    poll_until,
};

use trackmesh_tests::serial::cluster_slot as serial;

const STEP: Duration = Duration::from_millis(100);
/// The bound for "a dead node is gone from the live members".
const DEAD_NODE_BOUND: Duration = Duration::from_secs(3);
/// The bound for "a killed publisher node → pulled tracks inactive".
const PUBLISHER_DEAD_BOUND: Duration = Duration::from_secs(5);
/// Polling granularity allowed on top of those bounds (one poll step plus an HTTP round trip).
const POLL_SLACK: Duration = Duration::from_millis(500);
/// Generous bound for things the contract gives no number for (relay clean-up, re-routing).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn secs_or_never(d: Option<Duration>) -> String {
    d.map_or_else(|| "never".to_string(), secs)
}

async fn start_cluster(spec: &[(&str, &str)]) -> Cluster {
    Cluster::start(spec).await.expect("starting the cluster")
}

/// (audio track name, video track name) of a publisher.
fn av_names(p: &Publisher) -> (String, String) {
    let a = p.track(MediaKind::Audio).expect("audio").track_name.clone();
    let v = p.track(MediaKind::Video).expect("video").track_name.clone();
    (a, v)
}

/// Wait until `sub` got audio and video frames (and a keyframe) on these mids.
async fn expect_av(sub: &Subscriber, audio_mid: &str, video_mid: &str, who: &str) -> PeerStats {
    let (a, v) = (audio_mid.to_string(), video_mid.to_string());
    let s = sub
        .peer
        .wait_until(
            "audio frames, video frames and a keyframe",
            MEDIA_TIMEOUT,
            move |s| s.rx_frames(&a) >= 20 && s.rx_frames(&v) >= 10 && s.rx_keyframes(&v) >= 1,
        )
        .await
        .unwrap_or_else(|e| panic!("{who} receives media: {e:#}"));
    assert_eq!(
        s.rx_bytes(audio_mid) / s.rx_frames(audio_mid),
        100,
        "{who}: audio frames arrive with the size they were sent with"
    );
    assert!(
        s.rx_bytes(video_mid) / s.rx_frames(video_mid) >= 1000,
        "{who}: video frames arrive whole: {s:?}"
    );
    s
}

/// Wait until `sub` got video frames and a keyframe on `mid`.
async fn expect_video(sub: &Subscriber, mid: &str, who: &str) -> PeerStats {
    let m = mid.to_string();
    sub.peer
        .wait_until("video frames and a keyframe", MEDIA_TIMEOUT, move |s| {
            s.rx_frames(&m) >= 10 && s.rx_keyframes(&m) >= 1
        })
        .await
        .unwrap_or_else(|e| panic!("{who} receives video: {e:#}"))
}

/// Subscribe on node `name` to `refs` (retrying not_found_track_error for a bounded time).
async fn subscribe(cl: &Cluster, name: &str, refs: &[(String, String)]) -> Subscriber {
    let t0 = Instant::now();
    let sub = Subscriber::start_retrying(&cl.client(name), &format!("sub-{name}"), refs)
        .await
        .unwrap_or_else(|e| panic!("subscriber on {name}: {e:#}"));
    eprintln!(
        "subscriber on {name}: pulled and connected in {}",
        secs(t0.elapsed())
    );
    sub
}

fn assert_session_of(cl: &Cluster, node: &str, session_id: &str) {
    let tag = cl.node(node).tag();
    assert_eq!(
        tag.len(),
        8,
        "node {node} reports an 8-hex tag: {:?}",
        cl.node(node).ready_fields()
    );
    assert!(
        session_id.starts_with(tag),
        "session {session_id} created on {node} starts with its tag {tag}"
    );
}

/// Publish on A, subscribe on B (same region) and C (other region) through their own APIs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_on_a_pull_on_b_and_c() {
    let _serial = serial().await;
    let cl = start_cluster(&[("a", "r1"), ("b", "r1"), ("c", "r2")]).await;
    for n in ["a", "b", "c"] {
        let node = cl.node(n);
        assert_eq!(
            node.node_id(),
            n,
            "ready line node=: {:?}",
            node.ready_fields()
        );
        assert_eq!(node.region(), if n == "c" { "r2" } else { "r1" });
        node.gossip_addr().expect("ready line gossip=");
        node.relay_addr().expect("ready line relay=");
    }
    let publisher = Publisher::start_av(&cl.client("a"), "cam")
        .await
        .expect("publisher on A");
    assert_session_of(&cl, "a", &publisher.session_id);
    let refs = publisher.remote_refs();
    let (audio, video) = av_names(&publisher);

    let mut subs = Vec::new();
    for n in ["b", "c"] {
        let t0 = Instant::now();
        let sub = subscribe(&cl, n, &refs).await;
        assert_session_of(&cl, n, &sub.session_id);
        assert_eq!(sub.pull.tracks.len(), 2, "{:?}", sub.pull);
        let am = sub
            .mid_of(&publisher.session_id, &audio)
            .expect("audio mid");
        let vm = sub
            .mid_of(&publisher.session_id, &video)
            .expect("video mid");
        expect_av(&sub, &am, &vm, n).await;
        eprintln!(
            "node {n}: media from A arrived {} after the pull began",
            secs(t0.elapsed())
        );
        subs.push((n, sub, am, vm));
    }

    let (_, sub_b, am, vm) = &subs[0];
    let st = cl
        .client("b")
        .get_session(&sub_b.session_id)
        .await
        .expect("GET B's session on B");
    for (mid, name) in [(am, &audio), (vm, &video)] {
        let item = st
            .track_by_mid(mid)
            .unwrap_or_else(|| panic!("GET lists mid {mid}: {st:?}"));
        assert_eq!(item.location.as_deref(), Some("remote"), "{st:?}");
        assert_eq!(item.track_name.as_deref(), Some(name.as_str()), "{st:?}");
        assert_eq!(
            item.session_id.as_deref(),
            Some(publisher.session_id.as_str()),
            "{st:?}"
        );
        assert_eq!(item.status.as_deref(), Some("active"), "{st:?}");
    }
}

/// A pull on another node that comes right after the publisher connected, before its first
/// frame, is answered once that frame comes, not with `not_found_track_error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_from_another_node_before_the_first_frame_gets_the_track() {
    let _serial = serial().await;
    let cl = start_cluster(&[("a", "r1"), ("b", "r1")]).await;
    let api_a = cl.client("a");
    let publisher = Peer::new("quiet-pub").expect("peer");
    let session_id = api_a
        .sessions_new()
        .await
        .expect("sessions/new on A")
        .session_id;
    let pushed = publisher
        .push(&api_a, &session_id, &[("quiet-video", MediaKind::Video)])
        .await
        .expect("push on A");
    publisher
        .wait_connected(trackmesh_tests::flows::CONNECT_TIMEOUT)
        .await
        .expect("publisher connected");
    let refs = vec![(session_id.clone(), "quiet-video".to_string())];
    let mid = pushed[0].mid.clone();
    // No frame yet when B asks A; the publisher starts sending a moment later.
    let api_b = cl.client("b");
    let (sub, sent) = tokio::join!(Subscriber::start(&api_b, "sub-b", &refs), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        publisher.start_sending(&[mid.as_str()]).await
    });
    sent.expect("publisher starts sending");
    let sub = sub.unwrap_or_else(|e| panic!("the pull on B before the first frame: {e:#}"));
    let vm = sub.mid_of(&session_id, "quiet-video").expect("video mid");
    expect_video(&sub, &vm, "B's viewer").await;
}

fn track_summary(tracks: &[TrackObject]) -> Vec<(String, String, String, String, String)> {
    let mut v: Vec<_> = tracks
        .iter()
        .map(|t| {
            (
                t.mid.clone().unwrap_or_default(),
                t.track_name.clone().unwrap_or_default(),
                t.location.clone().unwrap_or_default(),
                t.session_id.clone().unwrap_or_default(),
                t.status.clone().unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}

/// API calls for a session on another node are forwarded to its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_answers() {
    let _serial = serial().await;
    let cl = start_cluster(&[("a", "r1"), ("b", "r1"), ("c", "r2")]).await;
    let publisher = Publisher::start_av(&cl.client("a"), "fwd")
        .await
        .expect("publisher on A");
    let refs = publisher.remote_refs();
    let (audio, video) = av_names(&publisher);

    let on_a = cl
        .client("a")
        .get_session(&publisher.session_id)
        .await
        .expect("GET on A");
    let on_b = cl
        .client("b")
        .get_session(&publisher.session_id)
        .await
        .expect("GET of A's session sent to B");
    assert_eq!(on_a.tracks.len(), 2, "{on_a:?}");
    assert_eq!(track_summary(&on_b.tracks), track_summary(&on_a.tracks));

    // A session living on C, driven entirely through B's HTTP.
    let c_session = cl
        .client("c")
        .sessions_new()
        .await
        .expect("sessions/new on C")
        .session_id;
    assert_session_of(&cl, "c", &c_session);
    let peer = Peer::new("c-via-b").expect("peer");
    let sub = Subscriber::pull_retrying(&cl.client("b"), peer, c_session.clone(), &refs)
        .await
        .expect("pull for C's session sent to B");
    let am = sub
        .mid_of(&publisher.session_id, &audio)
        .expect("audio mid");
    let vm = sub
        .mid_of(&publisher.session_id, &video)
        .expect("video mid");
    expect_av(&sub, &am, &vm, "C's session pulled via B").await;

    let via_b = cl
        .client("b")
        .get_session(&c_session)
        .await
        .expect("GET C's session on B");
    let on_c = cl
        .client("c")
        .get_session(&c_session)
        .await
        .expect("GET C's session on C");
    assert_eq!(track_summary(&via_b.tracks), track_summary(&on_c.tracks));
    assert_eq!(on_c.status_of(&am), Some("active"), "{on_c:?}");
    assert_eq!(on_c.status_of(&vm), Some("active"), "{on_c:?}");
    // The pull was served by C itself (the session's node), not by B.
    let relay_c = cl.node("c").relay_view().await.expect("C relay");
    assert_eq!(
        relay_c.upstream_of(&publisher.session_id, &video).len(),
        1,
        "C pulls the video once: {relay_c:?}"
    );
}

/// Two subscribers on B share one upstream, released when the last one leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_upstream() {
    let _serial = serial().await;
    let cl = start_cluster(&[("a", "r1"), ("b", "r1")]).await;
    let publisher = Publisher::start_av(&cl.client("a"), "shared")
        .await
        .expect("publisher on A");
    let (_, video) = av_names(&publisher);
    let vref = vec![(publisher.session_id.clone(), video.clone())];

    let s1 = subscribe(&cl, "b", &vref).await;
    let s2 = subscribe(&cl, "b", &vref).await;
    let m1 = s1.mid_of(&publisher.session_id, &video).expect("mid 1");
    let m2 = s2.mid_of(&publisher.session_id, &video).expect("mid 2");
    expect_video(&s1, &m1, "subscriber 1").await;
    expect_video(&s2, &m2, "subscriber 2").await;

    let relay_b = cl.node("b").relay_view().await.expect("B relay");
    let ups = relay_b.upstream_of(&publisher.session_id, &video);
    assert_eq!(
        ups.len(),
        1,
        "one upstream for two local subscribers: {relay_b:?}"
    );
    assert_eq!(ups[0].via, cl.id("a"), "{relay_b:?}");
    let relay_a = cl.node("a").relay_view().await.expect("A relay");
    let downs = relay_a.downstream_of(&publisher.session_id, &video);
    assert_eq!(downs.len(), 1, "A sends the video to B once: {relay_a:?}");
    assert_eq!(downs[0].peer, cl.id("b"), "{relay_a:?}");

    // The first leaves: the upstream stays and the second keeps receiving.
    s1.peer
        .close_force(&cl.client("b"), &s1.session_id, &[&m1])
        .await
        .expect("close subscriber 1");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let relay_b = cl.node("b").relay_view().await.expect("B relay");
    assert_eq!(
        relay_b.upstream_of(&publisher.session_id, &video).len(),
        1,
        "the upstream stays while a subscriber is left: {relay_b:?}"
    );
    let f0 = s2.peer.stats().rx_frames(&m2);
    let m = m2.clone();
    s2.peer
        .wait_until("subscriber 2 keeps receiving", MEDIA_TIMEOUT, move |s| {
            s.rx_frames(&m) >= f0 + 15
        })
        .await
        .expect("subscriber 2 unaffected");

    // The last leaves: released.
    s2.peer
        .close_force(&cl.client("b"), &s2.session_id, &[&m2])
        .await
        .expect("close subscriber 2");
    let b = cl.node("b");
    let (sid, v) = (publisher.session_id.clone(), video.clone());
    let (_, took) = poll_until(
        "B to release the upstream",
        CLEANUP_TIMEOUT,
        STEP,
        async || {
            let r = b.relay_view().await?;
            ensure!(r.upstream_of(&sid, &v).is_empty(), "{r:?}");
            Ok(())
        },
    )
    .await
    .expect("upstream released after the last subscriber left");
    eprintln!(
        "shared_upstream: upstream released {} after the last close",
        secs(took)
    );
    let a = cl.node("a");
    poll_until(
        "A to stop sending the video to B",
        CLEANUP_TIMEOUT,
        STEP,
        async || {
            let r = a.relay_view().await?;
            ensure!(r.downstream_of(&sid, &v).is_empty(), "{r:?}");
            Ok(())
        },
    )
    .await
    .expect("A's downstream released");
}

/// Find the region hub of (session, track): the node among `candidates` whose relay view has an
/// upstream for it via `origin_id`.
async fn find_hub(
    cl: &Cluster,
    candidates: &[&str],
    origin_id: &str,
    session_id: &str,
    track: &str,
) -> anyhow::Result<String> {
    let (hub, _) = poll_until(
        "a hub pulling from the origin",
        CLEANUP_TIMEOUT,
        STEP,
        async || {
            let mut seen = Vec::new();
            for n in candidates {
                let r = cl.node(n).relay_view().await?;
                if r.upstream_of(session_id, track)
                    .iter()
                    .any(|u| u.via == origin_id)
                {
                    return Ok(n.to_string());
                }
                seen.push((n.to_string(), r));
            }
            Err(anyhow!("no upstream via {origin_id}: {seen:?}"))
        },
    )
    .await?;
    Ok(hub)
}

/// The hub of `region` the nodes will pick for (session, track), by the node's own hub choice
/// over the members the cluster lists now.
async fn predicted_hub(cl: &Cluster, region: &str, session_id: &str, track: &str) -> String {
    use trackmesh_node::cluster::{ClusterView, Member};
    let v = cl.node("a").cluster_view().await.expect("cluster view");
    let members = v
        .members
        .iter()
        .map(|m| Member {
            node_id: m.node_id.clone(),
            tag: trackmesh_node::ids::NodeTag(u32::from_str_radix(&m.tag, 16).unwrap_or(0)),
            region: m.region.clone(),
            api: m.api.clone(),
            relay: ([127, 0, 0, 1], 1).into(),
            media: String::new(),
            live: m.live,
            draining: m.draining,
            load: None,
            version: String::new(),
        })
        .collect();
    let view = ClusterView {
        self_id: String::new(),
        members,
        streams: Vec::new(),
        rooms: Vec::new(),
        duplicate_ids: Vec::new(),
    };
    let sid = trackmesh_node::ids::SessionId::parse(session_id).expect("a session id");
    let hub = trackmesh_node::cluster::hubs::hub_for(&view, region, sid, track)
        .expect("a hub in the region")
        .node_id
        .clone();
    cl.name_of(&hub).expect("a node of the cluster")
}

/// Three subscribers in r2 pull a track published in r1: it crosses to r2 once, to the hub,
/// which serves the other r2 nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_crosses_once() {
    let _serial = serial().await;
    let cl = start_cluster(&[("a", "r1"), ("b", "r2"), ("c", "r2"), ("d", "r2")]).await;
    let publisher = Publisher::start_av(&cl.client("a"), "hub")
        .await
        .expect("publisher on A");
    let (_, video) = av_names(&publisher);
    let sid = publisher.session_id.clone();
    let vref = vec![(sid.clone(), video.clone())];
    let r2 = ["b", "c", "d"];
    let mut subs = Vec::new();
    for n in r2 {
        let sub = subscribe(&cl, n, &vref).await;
        let mid = sub.mid_of(&sid, &video).expect("video mid");
        subs.push((n, sub, mid));
    }
    for (n, sub, mid) in &subs {
        expect_video(sub, mid, n).await;
    }

    let relay_a = cl.node("a").relay_view().await.expect("A relay");
    let downs = relay_a.downstream_of(&sid, &video);
    assert_eq!(
        downs.len(),
        1,
        "the track crosses to r2 exactly once: {relay_a:?}"
    );
    let hub_id = downs[0].peer.clone();
    let hub = cl
        .name_of(&hub_id)
        .unwrap_or_else(|| panic!("A sends to an unknown node {hub_id}: {relay_a:?}"));
    assert!(r2.contains(&hub.as_str()), "the hub {hub} is in r2");
    let relay_hub = cl.node(&hub).relay_view().await.expect("hub relay");
    let ups = relay_hub.upstream_of(&sid, &video);
    assert_eq!(ups.len(), 1, "{relay_hub:?}");
    assert_eq!(
        ups[0].via,
        cl.id("a"),
        "the hub pulls from the origin: {relay_hub:?}"
    );
    let mut served: Vec<String> = relay_hub
        .downstream_of(&sid, &video)
        .iter()
        .map(|d| d.peer.clone())
        .collect();
    served.sort();
    let mut others: Vec<String> = r2.iter().filter(|n| **n != hub).map(|n| cl.id(n)).collect();
    others.sort();
    assert_eq!(
        served, others,
        "the hub serves the other r2 nodes: {relay_hub:?}"
    );
    for n in r2.iter().filter(|n| **n != hub) {
        let r = cl.node(n).relay_view().await.expect("relay");
        let ups = r.upstream_of(&sid, &video);
        assert_eq!(ups.len(), 1, "{n}: {r:?}");
        assert_eq!(ups[0].via, hub_id, "{n} pulls through the hub {hub}: {r:?}");
    }
    eprintln!("hub_crosses_once: hub for {video} is {hub}");
}

/// SIGKILL the publisher's node: within 5 s the subscriber's node shows the pulled tracks
/// inactive and drops its upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_node_killed() {
    let _serial = serial().await;
    let mut cl = start_cluster(&[("a", "r1"), ("b", "r1")]).await;
    let publisher = Publisher::start_av(&cl.client("a"), "doomed")
        .await
        .expect("publisher on A");
    let (audio, video) = av_names(&publisher);
    let sub = subscribe(&cl, "b", &publisher.remote_refs()).await;
    let am = sub
        .mid_of(&publisher.session_id, &audio)
        .expect("audio mid");
    let vm = sub
        .mid_of(&publisher.session_id, &video)
        .expect("video mid");
    expect_av(&sub, &am, &vm, "B").await;

    let killed_at = cl.kill("a").expect("kill A");
    let api = cl.client("b");
    let b = cl.node("b");
    let mut inactive_at = None;
    let mut released_at = None;
    let mut last = String::new();
    for _ in 0..(CLEANUP_TIMEOUT.as_millis() / STEP.as_millis()) {
        let t = killed_at.elapsed();
        if inactive_at.is_none() {
            match api.get_session(&sub.session_id).await {
                Ok(st)
                    if st.status_of(&am) == Some("inactive")
                        && st.status_of(&vm) == Some("inactive") =>
                {
                    inactive_at = Some(t)
                }
                Ok(st) => last = format!("GET: {st:?}"),
                Err(e) => last = format!("GET: {e:#}"),
            }
        }
        if released_at.is_none() {
            match b.relay_view().await {
                Ok(r) if r.upstream.is_empty() => released_at = Some(t),
                Ok(r) => last = format!("relay: {r:?}"),
                Err(e) => last = format!("relay: {e:#}"),
            }
        }
        if inactive_at.is_some() && released_at.is_some() {
            break;
        }
        tokio::time::sleep(STEP).await;
    }
    eprintln!(
        "publisher_node_killed: pulled tracks inactive on B after {}, B's upstream gone after {} (bound {})",
        secs_or_never(inactive_at),
        secs_or_never(released_at),
        secs(PUBLISHER_DEAD_BOUND)
    );
    let inactive_at =
        inactive_at.unwrap_or_else(|| panic!("B never showed the tracks inactive; last: {last}"));
    let released_at =
        released_at.unwrap_or_else(|| panic!("B never dropped its upstream; last: {last}"));
    assert!(
        inactive_at <= PUBLISHER_DEAD_BOUND + POLL_SLACK,
        "pulled tracks inactive after {inactive_at:?}, bound {PUBLISHER_DEAD_BOUND:?}"
    );
    assert!(
        released_at <= PUBLISHER_DEAD_BOUND + POLL_SLACK,
        "upstream released after {released_at:?}, bound {PUBLISHER_DEAD_BOUND:?}"
    );
}

/// Kill the r2 hub: the other r2 subscribers get media again without doing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_killed_reroutes() {
    let _serial = serial().await;
    let mut cl = start_cluster(&[("a", "r1"), ("b", "r2"), ("c", "r2"), ("d", "r2")]).await;
    let publisher = Publisher::start_av(&cl.client("a"), "reroute")
        .await
        .expect("publisher on A");
    let (_, video) = av_names(&publisher);
    let sid = publisher.session_id.clone();
    let vref = vec![(sid.clone(), video.clone())];
    let r2 = ["b", "c", "d"];

    // One subscriber makes the hub pull the track; then subscribe on the two non-hub nodes.
    let first = subscribe(&cl, "b", &vref).await;
    let hub = find_hub(&cl, &r2, &cl.id("a"), &sid, &video)
        .await
        .expect("an r2 hub");
    eprintln!("hub_killed_reroutes: hub for {video} is {hub}");
    let mut subs = Vec::new();
    if hub != "b" {
        let mid = first.mid_of(&sid, &video).expect("mid");
        subs.push(("b".to_string(), first, mid));
    }
    for n in r2.iter().filter(|n| **n != hub && **n != "b") {
        let sub = subscribe(&cl, n, &vref).await;
        let mid = sub.mid_of(&sid, &video).expect("mid");
        subs.push((n.to_string(), sub, mid));
    }
    for (n, sub, mid) in &subs {
        expect_video(sub, mid, n).await;
    }

    let killed_at = cl.kill(&hub).expect("kill the hub");
    let at_kill: Vec<u64> = subs
        .iter()
        .map(|(_, s, m)| s.peer.stats().rx_frames(m))
        .collect();
    // Per subscriber: when frames stopped (last growth before a >= 250 ms gap) and when they
    // came back; done when 30 frames (~1 s of video) arrived after the kill.
    let gap = Duration::from_millis(250);
    let mut last_growth: Vec<(Duration, u64)> =
        at_kill.iter().map(|f| (Duration::ZERO, *f)).collect();
    let mut stalled: Vec<bool> = vec![false; subs.len()];
    let mut resumed: Vec<Option<Duration>> = vec![None; subs.len()];
    let mut done: Vec<Option<Duration>> = vec![None; subs.len()];
    let resume_bound = Duration::from_secs(10);
    let step = Duration::from_millis(20);
    for _ in 0..(resume_bound.as_millis() / step.as_millis()) {
        let t = killed_at.elapsed();
        for (i, (_, sub, mid)) in subs.iter().enumerate() {
            let f = sub.peer.stats().rx_frames(mid);
            if f > last_growth[i].1 {
                if (stalled[i] || t - last_growth[i].0 >= gap) && resumed[i].is_none() {
                    resumed[i] = Some(t);
                }
                last_growth[i] = (t, f);
            } else if t - last_growth[i].0 >= gap {
                stalled[i] = true;
            }
            if done[i].is_none() && f >= at_kill[i] + 30 {
                done[i] = Some(t);
            }
        }
        if done.iter().all(Option::is_some) {
            break;
        }
        tokio::time::sleep(step).await;
    }
    for (i, (n, sub, mid)) in subs.iter().enumerate() {
        let resumed = match (resumed[i], stalled[i]) {
            (Some(t), _) => secs(t),
            (None, false) => "without a gap of 250 ms or more".to_string(),
            (None, true) => "never".to_string(),
        };
        eprintln!(
            "hub_killed_reroutes: subscriber on {n}: media resumed {resumed} after the kill, 30 new frames after {} (frames at kill {}, now {})",
            secs_or_never(done[i]),
            at_kill[i],
            sub.peer.stats().rx_frames(mid)
        );
    }
    for (i, (n, sub, mid)) in subs.iter().enumerate() {
        assert!(
            done[i].is_some(),
            "media did not resume on {n} within {resume_bound:?} after the hub {hub} died: {:?}",
            sub.peer.stats().rx.get(mid)
        );
    }
    // After re-routing the track still crosses to r2 once, to a live node.
    let a = cl.node("a");
    let hub_id = cl.id(&hub);
    let (new_hub, _) = poll_until(
        "A's downstream to settle",
        CLEANUP_TIMEOUT,
        STEP,
        async || {
            let r = a.relay_view().await?;
            let d = r.downstream_of(&sid, &video);
            ensure!(d.len() == 1 && d[0].peer != hub_id, "{r:?}");
            Ok(d[0].peer.clone())
        },
    )
    .await
    .expect("one downstream from A to a live r2 node after the hub died");
    eprintln!(
        "hub_killed_reroutes: new hub {new_hub}; A's downstream settled by {} after the kill",
        secs(killed_at.elapsed())
    );
}

/// SIGTERM the r2 hub, as a supervisor drains a node: the viewer on another r2 node moves to a
/// new hub before the old one stops, keeps receiving, and misses fewer frames than one keyframe
/// interval holds (counted from the publisher's frame sequence numbers, not from time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_drained_viewers_move_within_a_keyframe_interval() {
    let _serial = serial().await;
    let cfg = ClusterConfig {
        process: true,
        ..ClusterConfig::default()
    };
    let mut cl = Cluster::start_with(&[("a", "r1"), ("b", "r2"), ("c", "r2"), ("d", "r2")], cfg)
        .await
        .expect("starting the cluster");
    let publisher = Publisher::start_av(&cl.client("a"), "drain")
        .await
        .expect("publisher on A");
    let (_, video) = av_names(&publisher);
    let sid = publisher.session_id.clone();
    let vref = vec![(sid.clone(), video.clone())];
    let r2 = ["b", "c", "d"];

    // The viewer is on a node that is not the hub, and the hub has no session of its own (a
    // session would rightly keep it draining until the session ends).
    let hub = predicted_hub(&cl, "r2", &sid, &video).await;
    let at = r2
        .iter()
        .find(|n| **n != hub)
        .expect("a non-hub r2 node")
        .to_string();
    let viewer = subscribe(&cl, &at, &vref).await;
    let mid = viewer.mid_of(&sid, &video).expect("video mid");
    expect_video(&viewer, &mid, &at).await;
    assert_eq!(
        find_hub(&cl, &r2, &cl.id("a"), &sid, &video)
            .await
            .expect("an r2 hub"),
        hub,
        "the hub is the one predicted"
    );
    let hub_id = cl.id(&hub);
    let r = cl.node(&at).relay_view().await.expect("relay view");
    assert_eq!(
        r.upstream_of(&sid, &video)
            .iter()
            .map(|u| u.via.clone())
            .collect::<Vec<_>>(),
        vec![hub_id.clone()],
        "{at} pulls through the hub {hub}: {r:?}"
    );

    // (highest frame sequence number, frames missing in the sequence) seen by the viewer.
    let seen = || {
        viewer
            .peer
            .stats()
            .rx
            .get(&mid)
            .map_or((0, 0), |t| (t.highest_seq.unwrap_or(0), t.window.lost))
    };
    let (_, lost_before) = seen();
    cl.node(&hub).signal("TERM").expect("SIGTERM to the hub");
    let termed = Instant::now();

    // The hub drains and exits by itself; then the viewer gets 2 s more of the publisher's frames.
    let mut exited = None;
    let mut after_exit = None;
    let bound = Duration::from_secs(20);
    for _ in 0..(bound.as_millis() / STEP.as_millis()) {
        let (seq, _) = seen();
        if exited.is_none() && !cl.node_mut(&hub).is_running() {
            exited = Some(termed.elapsed());
            after_exit = Some(seq);
        }
        if after_exit.is_some_and(|s| seq >= s + 60) {
            break;
        }
        tokio::time::sleep(STEP).await;
    }
    let (seq, lost_after) = seen();
    let missed = lost_after - lost_before;
    let shape = trackmesh_tests::testkit::media::VideoShape::LIGHT;
    let keyframe_interval_frames = (f64::from(shape.fps) * shape.keyframe_interval_s) as u64;
    eprintln!(
        "hub_drained_viewers_move_within_a_keyframe_interval: hub {hub} exited {} after SIGTERM; the viewer on {at} missed {missed} frames (one keyframe interval is {keyframe_interval_frames})",
        secs_or_never(exited)
    );
    let exit_seq =
        after_exit.unwrap_or_else(|| panic!("the hub {hub} did not exit within {bound:?}"));
    assert_eq!(
        cl.node_mut(&hub).exit_code().expect("exit code"),
        Some(0),
        "the drain ended by itself"
    );
    assert!(
        cl.node(&hub)
            .log()
            .contains("drained: no sessions left, no tracks relayed to other nodes"),
        "the hub stopped once its viewers had moved, not at the drain timeout"
    );
    assert!(
        seq >= exit_seq + 60,
        "the viewer keeps receiving after the hub stopped: frame {seq}, at the hub's exit {exit_seq}"
    );
    assert!(
        missed < keyframe_interval_frames,
        "the viewer missed {missed} frames, one keyframe interval is {keyframe_interval_frames}"
    );
    let r = cl.node(&at).relay_view().await.expect("relay view");
    let via: Vec<String> = r
        .upstream_of(&sid, &video)
        .iter()
        .map(|u| u.via.clone())
        .collect();
    assert!(
        via.len() == 1 && via[0] != hub_id,
        "{at} pulls through a live hub now: {r:?}"
    );
}

/// SIGKILL a subscriber's node: the origin drops what it sent there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_node_killed() {
    let _serial = serial().await;
    let mut cl = start_cluster(&[("a", "r1"), ("b", "r1")]).await;
    let publisher = Publisher::start_av(&cl.client("a"), "orphan")
        .await
        .expect("publisher on A");
    let (audio, video) = av_names(&publisher);
    let sub = subscribe(&cl, "b", &publisher.remote_refs()).await;
    let am = sub
        .mid_of(&publisher.session_id, &audio)
        .expect("audio mid");
    let vm = sub
        .mid_of(&publisher.session_id, &video)
        .expect("video mid");
    expect_av(&sub, &am, &vm, "B").await;
    let b_id = cl.id("b");
    let relay_a = cl.node("a").relay_view().await.expect("A relay");
    assert_eq!(
        relay_a.downstream_to(&b_id).len(),
        2,
        "A sends both tracks to B: {relay_a:?}"
    );

    let killed_at = cl.kill("b").expect("kill B");
    let a = cl.node("a");
    let poll_start = killed_at.elapsed();
    let (_, took) = poll_until(
        "A's downstream to B to go",
        CLEANUP_TIMEOUT,
        STEP,
        async || {
            let r = a.relay_view().await?;
            ensure!(r.downstream_to(&b_id).is_empty(), "{r:?}");
            Ok(())
        },
    )
    .await
    .expect("A drops its downstream entries to the dead node");
    eprintln!(
        "subscriber_node_killed: A's downstream to B gone {} after the kill",
        secs(poll_start + took)
    );
}

/// SIGKILL a node: the others drop it from their live members within 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_node_noticed() {
    let _serial = serial().await;
    let mut cl = start_cluster(&[("a", "r1"), ("b", "r1"), ("c", "r2")]).await;
    let c_id = cl.id("c");
    let killed_at = cl.kill("c").expect("kill C");
    let observers = ["a", "b"];
    let mut noticed: Vec<Option<Duration>> = vec![None; observers.len()];
    let mut last = vec![String::new(); observers.len()];
    for _ in 0..(CLEANUP_TIMEOUT.as_millis() / 50) {
        let t = killed_at.elapsed();
        for (i, n) in observers.iter().enumerate() {
            if noticed[i].is_some() {
                continue;
            }
            match cl.node(n).cluster_view().await {
                Ok(v) if !v.is_live(&c_id) => noticed[i] = Some(t),
                Ok(v) => last[i] = format!("{v:?}"),
                Err(e) => last[i] = format!("{e:#}"),
            }
        }
        if noticed.iter().all(Option::is_some) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (i, n) in observers.iter().enumerate() {
        eprintln!(
            "dead_node_noticed: {n} dropped C from its live members {} after the kill (bound {})",
            secs_or_never(noticed[i]),
            secs(DEAD_NODE_BOUND)
        );
    }
    for (i, n) in observers.iter().enumerate() {
        let t = noticed[i].unwrap_or_else(|| panic!("{n} still lists C live: {}", last[i]));
        assert!(
            t <= DEAD_NODE_BOUND + POLL_SLACK,
            "{n} noticed the dead node after {t:?}, bound {DEAD_NODE_BOUND:?}"
        );
    }
}

/// A node with another cluster secret never joins, and cannot pull the cluster's tracks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_refused() {
    let _serial = serial().await;
    let mut cl = start_cluster(&[("a", "r1"), ("b", "r1")]).await;
    let publisher = Publisher::start_av(&cl.client("a"), "secret")
        .await
        .expect("publisher on A");
    let mut opts = cl.opts("d", "r1", vec![cl.node("a").gossip_addr().expect("gossip")]);
    opts.secret = format!("{}-wrong", cl.secret());
    cl.add("d", &opts).expect("starting D with another secret");

    let watch = Duration::from_secs(3);
    let t0 = Instant::now();
    while t0.elapsed() < watch {
        for n in ["a", "b"] {
            let v = cl.node(n).cluster_view().await.expect("cluster view");
            assert!(
                v.member("d").is_none(),
                "{n} lists the foreign node D: {v:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let d_view = cl.node("d").cluster_view().await.expect("D's view");
    eprintln!(
        "wrong_secret_refused: D's own view after {}: {d_view:?}",
        secs(watch)
    );
    assert!(
        !d_view.is_live("a"),
        "D sees A live despite the wrong secret: {d_view:?}"
    );

    let api_d = cl.client("d");
    let session = api_d
        .sessions_new()
        .await
        .expect("sessions/new on D")
        .session_id;
    let req = TracksRequest::pull(&publisher.remote_refs());
    let resp = api_d.tracks_new(&session, &req).await.expect("pull on D");
    assert_eq!(resp.tracks.len(), 2, "{resp:?}");
    for t in &resp.tracks {
        assert_eq!(
            t.error_code.as_deref(),
            Some("not_found_track_error"),
            "{resp:?}"
        );
        assert_eq!(t.mid.as_deref(), Some(""), "{resp:?}");
    }
    let relay_d = cl.node("d").relay_view().await.expect("D relay");
    assert!(relay_d.upstream.is_empty(), "{relay_d:?}");
}

/// SIGSTOP B for 5 s: A declares it dead; SIGCONT: B is live again and can pull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_heals() {
    let _serial = serial().await;
    // Processes: B is frozen with SIGSTOP.
    let process = ClusterConfig {
        process: true,
        ..ClusterConfig::default()
    };
    let cl = Cluster::start_with(&[("a", "r1"), ("b", "r1")], process)
        .await
        .expect("starting the cluster");
    let publisher = Publisher::start_av(&cl.client("a"), "heal")
        .await
        .expect("publisher on A");
    let b_id = cl.id("b");
    let a = cl.node("a");
    let b = cl.node("b");

    b.pause().expect("SIGSTOP B");
    let stopped_at = Instant::now();
    let dead = poll_until(
        "A to see B dead",
        Duration::from_secs(5),
        STEP,
        async || {
            let v = a.cluster_view().await?;
            ensure!(!v.is_live(&b_id), "{v:?}");
            Ok(())
        },
    )
    .await;
    let pause = Duration::from_secs(5);
    tokio::time::sleep(pause.saturating_sub(stopped_at.elapsed())).await;
    b.resume().expect("SIGCONT B");
    let (_, dead_after) = dead.expect("A notices the frozen node within 5 s");
    eprintln!(
        "partition_heals: A saw the frozen B dead after {}",
        secs(dead_after)
    );

    let a_id = cl.id("a");
    let (_, live_after) = poll_until(
        "B live again on A and A live on B",
        Duration::from_secs(15),
        STEP,
        async || {
            let va = a.cluster_view().await?;
            ensure!(va.is_live(&b_id), "A: {va:?}");
            let vb = b.cluster_view().await?;
            ensure!(vb.is_live(&a_id), "B: {vb:?}");
            Ok(())
        },
    )
    .await
    .expect("B rejoins after SIGCONT");
    eprintln!(
        "partition_heals: live again {} after SIGCONT",
        secs(live_after)
    );

    // Healed means both views stay live: right after SIGCONT a loaded machine can see a view
    // flap once more, and a relay link to a peer seen dead is closed (and its tracks end after
    // the re-route window, a known limit of today's relay). Wait for 2 s of steady liveness.
    let steady = Duration::from_secs(2);
    let mut live_since: Option<Instant> = None;
    poll_until(
        "both views steadily live for 2 s",
        Duration::from_secs(20),
        STEP,
        async || {
            let va = a.cluster_view().await?;
            let vb = b.cluster_view().await?;
            if va.is_live(&b_id) && vb.is_live(&a_id) {
                let since = *live_since.get_or_insert_with(Instant::now);
                ensure!(since.elapsed() >= steady, "live for {:?}", since.elapsed());
            } else {
                live_since = None;
                bail!("not both live");
            }
            Ok(())
        },
    )
    .await
    .expect("the healed cluster stays live");

    let (audio, video) = av_names(&publisher);
    let sub = subscribe(&cl, "b", &publisher.remote_refs()).await;
    let am = sub
        .mid_of(&publisher.session_id, &audio)
        .expect("audio mid");
    let vm = sub
        .mid_of(&publisher.session_id, &video)
        .expect("video mid");
    expect_av(&sub, &am, &vm, "B after the partition healed").await;
}

/// Ports base+0..4, base+10..14, base+20..24 all free (TCP for HTTP, UDP for the rest: media,
/// gossip, relay and the second engine worker's media port).
fn free_port_base() -> anyhow::Result<u16> {
    for i in 0..40u16 {
        let base = 21000 + 100 * ((std::process::id() as u16 % 50 + i) % 80);
        let ok = (0..3u16).all(|n| {
            let p = base + 10 * n;
            TcpListener::bind(("127.0.0.1", p)).is_ok()
                && (1..5).all(|k| UdpSocket::bind(("127.0.0.1", p + k)).is_ok())
        });
        if ok {
            return Ok(base);
        }
    }
    bail!("no free port range for the local cluster")
}

/// `deploy/local-cluster.sh --check` starts the 3-node cluster, sees it converge, stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_script_check() {
    let _serial = serial().await;
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/local-cluster.sh");
    let base = free_port_base().expect("ports");
    let mut child = Command::new("bash")
        .arg(&script)
        .arg("--check")
        .env("TRACKMESH_BIN", node_binary())
        .env("TRACKMESH_PORT_BASE", base.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running deploy/local-cluster.sh");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if Instant::now() > deadline {
            // SIGTERM first so that the script's trap stops its nodes.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            tokio::time::sleep(Duration::from_secs(3)).await;
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = child.wait_with_output().expect("output");
    let text = format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(
        status.is_some_and(|s| s.success()),
        "local-cluster.sh --check failed ({status:?}):\n{text}"
    );
    // The script stopped its nodes: the HTTP ports are free again.
    for n in 0..3u16 {
        assert!(
            TcpListener::bind(("127.0.0.1", base + 10 * n)).is_ok(),
            "port {} still taken after --check",
            base + 10 * n
        );
    }
}

/// `/admin/*` needs the admin token; a node started without one answers 404 there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requires_token() {
    let _serial = serial().await;
    let cl = start_cluster(&[("a", "r1")]).await;
    let a = cl.node("a");
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    for path in ["/admin/cluster", "/admin/relay"] {
        let url = format!("{}{path}", a.http_url());
        let none = http.get(&url).send().await.expect("GET").status().as_u16();
        let wrong = http
            .get(&url)
            .bearer_auth("not-the-token")
            .send()
            .await
            .expect("GET")
            .status()
            .as_u16();
        assert_eq!(none, 401, "GET {path} without a token");
        assert_eq!(wrong, 401, "GET {path} with a wrong token");
        let (ok, _) = a.admin_raw(path).await.expect("GET with the token");
        assert_eq!(ok, 200, "GET {path} with the token");
    }

    let mut opts = cl.opts("solo", "r1", Vec::new());
    opts.admin_token = String::new();
    let solo =
        trackmesh_tests::TestNode::start_cluster_node(&opts).expect("node without --admin-token");
    for path in ["cluster", "relay"] {
        let (status, body) = solo.admin_raw(path).await.expect("GET");
        assert_eq!(
            status, 404,
            "GET /admin/{path} on a node without --admin-token: {body}"
        );
    }
}

/// Pulls of tracks no live node has: an unknown owner tag, and a missing track on a known
/// owner, are item errors `not_found_track_error` with mid "".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_owner_or_track_is_not_found() {
    let _serial = serial().await;
    let cl = start_cluster(&[("a", "r1"), ("b", "r2")]).await;
    let publisher = Publisher::start_av(&cl.client("a"), "known")
        .await
        .expect("publisher on A");
    let api_b = cl.client("b");
    let session = api_b
        .sessions_new()
        .await
        .expect("sessions/new on B")
        .session_id;
    // A session id whose tag belongs to no node of the cluster.
    let mut unknown = trackmesh_tests::node::random_hex32();
    while [cl.node("a").tag(), cl.node("b").tag()]
        .iter()
        .any(|t| unknown.starts_with(t))
    {
        unknown = trackmesh_tests::node::random_hex32();
    }
    let req = TracksRequest {
        tracks: Some(vec![
            TrackObject::remote(&unknown, "cam"),
            TrackObject::remote(&publisher.session_id, "no-such-track"),
        ]),
        ..Default::default()
    };
    let t0 = Instant::now();
    let resp = api_b.tracks_new(&session, &req).await.expect("pull on B");
    eprintln!(
        "unknown_owner_or_track_is_not_found: answered in {}",
        secs(t0.elapsed())
    );
    assert_eq!(resp.tracks.len(), 2, "{resp:?}");
    for t in &resp.tracks {
        assert_eq!(
            t.error_code.as_deref(),
            Some("not_found_track_error"),
            "{resp:?}"
        );
        assert_eq!(t.mid.as_deref(), Some(""), "{resp:?}");
    }
    let relay_b = cl.node("b").relay_view().await.expect("B relay");
    assert!(relay_b.upstream.is_empty(), "{relay_b:?}");
}
