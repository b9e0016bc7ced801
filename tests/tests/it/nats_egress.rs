//! Audio egress to NATS against Debian's `nats-server` (installed by `tests/all.sh`): a
//! publisher's Opus payloads arrive on the right subject with valid headers, and media keeps
//! flowing to a subscriber while nats-server is stopped and started again; in a cluster, only the
//! publisher's node publishes; a WebSocket publisher in a room created with `audio_egress` is
//! published under the room's and its ticket's labels.

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::Message;
use futures_util::StreamExt;
use serde_json::json;
use trackmesh_node::engine::EgressLabels;
use trackmesh_node::ids::SessionId;
use trackmesh_tests::flows::{CONNECT_TIMEOUT, MEDIA_TIMEOUT};
use trackmesh_tests::nats::NatsServer;
use trackmesh_tests::rooms::{WsParticipant, create_room};
use trackmesh_tests::testkit::media::read_stamp;
use trackmesh_tests::{Cluster, ClusterConfig, MediaKind, Peer, Subscriber, TestNode};

const PREFIX: &str = "tm.test";
/// Longest wait for one NATS message, or for the node to notice a change of NATS.
const NATS_WAIT: Duration = Duration::from_secs(30);
/// Audio frames (20 ms each) sent in the first phase.
const FRAMES: u64 = 150;

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One NATS message's headers, checked and parsed.
struct Received {
    seq: u64,
    capture_ms: u64,
    /// The frame number the test client stamped into the payload.
    frame: u64,
}

fn check(msg: &Message, subject: &str, t0_ms: u64) -> Received {
    check_as(msg, subject, t0_ms, "alice.b", "web-1")
}

/// [`check`] for a publisher with its own user and client labels.
fn check_as(msg: &Message, subject: &str, t0_ms: u64, user: &str, client: &str) -> Received {
    assert_eq!(msg.subject.as_str(), subject, "the publisher's subject");
    let headers = msg.headers.as_ref().expect("headers on every message");
    let get = |name: &str| {
        headers
            .get(name)
            .map(|v| v.as_str().to_string())
            .unwrap_or_else(|| panic!("header {name} missing: {headers:?}"))
    };
    assert_eq!(get("Trackmesh-User"), user, "the exact user");
    assert_eq!(get("Trackmesh-Client"), client);
    assert_eq!(get("Trackmesh-Codec"), "opus");
    let seq: u64 = get("Trackmesh-Seq")
        .parse()
        .expect("a numeric sequence number");
    let capture_ms: u64 = get("Trackmesh-Capture-Ms")
        .parse()
        .expect("numeric capture time");
    assert!(
        // A second of slack: the node puts its monotonic clock on the wall clock once.
        (t0_ms..=unix_ms() + 1000).contains(&capture_ms),
        "capture time {capture_ms} is wall-clock ms since the test started ({t0_ms})"
    );
    let (_, frame) = read_stamp(&msg.payload).expect("the payload is the frame as sent");
    Received {
        seq,
        capture_ms,
        frame,
    }
}

async fn scrape_value(node: &TestNode, key: &str) -> f64 {
    node.scrape()
        .await
        .expect("scrape")
        .get(key)
        .copied()
        .unwrap_or(0.0)
}

/// Waits (bounded by [`NATS_WAIT`]) until the metric `key` satisfies `ok`.
async fn wait_metric(node: &TestNode, key: &str, what: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + NATS_WAIT;
    loop {
        let v = scrape_value(node, key).await;
        if ok(v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {key} = {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const CONNECTED: &str = "trackmesh_egress_connected";
const PUBLISHED: &str = "trackmesh_egress_messages_total{result=\"published\"}";
const DROPPED_DOWN: &str = "trackmesh_egress_dropped_total{reason=\"nats_down\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opus_payloads_reach_nats_and_media_survives_a_nats_restart() {
    let t0_ms = unix_ms();
    let mut nats = NatsServer::start().expect("nats-server (tests/all.sh installs it)");
    let node = TestNode::start(&["--nats", &nats.url(), "--nats-subject-prefix", PREFIX])
        .expect("node with --nats");
    let api = node.client();
    wait_metric(&node, CONNECTED, "the node connects to NATS", |v| v == 1.0).await;

    let bus = async_nats::ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(100))
        .connect(nats.url())
        .await
        .expect("test subscriber connects");
    let mut messages = bus
        .subscribe(format!("{PREFIX}.>"))
        .await
        .expect("subscribe");
    bus.flush()
        .await
        .expect("the subscription reached the server");

    // The publisher is marked before it sends, so every frame it sends should be published.
    let peer = Peer::new("alice").expect("peer");
    let session_id = api.sessions_new().await.expect("sessions/new").session_id;
    let pushed = peer
        .push(&api, &session_id, &[("mic", MediaKind::Audio)])
        .await
        .expect("push audio");
    let mid = pushed[0].mid.clone();
    let labels = EgressLabels {
        app: node.app_id().to_string(),
        room: "room 1".to_string(),
        user: "alice.b".to_string(),
        client: "web-1".to_string(),
    };
    let sid = SessionId::parse(&session_id).expect("session id");
    node.engine()
        .expect("in-process node")
        .set_egress(sid, Some(labels))
        .await
        .expect("engine running")
        .expect("session marked");
    let subject = format!("{PREFIX}.{}.room_1.alice_b", node.app_id());
    peer.wait_connected(CONNECT_TIMEOUT)
        .await
        .expect("connected");
    peer.start_sending(&[mid.as_str()]).await.expect("send");
    let m = mid.clone();
    peer.wait_until("frames sent", MEDIA_TIMEOUT, move |s| {
        s.tx_frames(&m) >= FRAMES
    })
    .await
    .expect("the publisher sends");
    peer.stop_sending(&[mid.as_str()]).await.expect("stop");
    let sent = peer.stats().tx_frames(&mid);

    // Phase 1: what the subscriber got of the frames sent.
    let mut frames = BTreeSet::new();
    let mut last: Option<Received> = None;
    // Bounded: one message per frame sent, each waited for at most NATS_WAIT.
    while (frames.len() as u64) < sent {
        let Ok(Some(msg)) = tokio::time::timeout(NATS_WAIT, messages.next()).await else {
            break;
        };
        let r = check(&msg, &subject, t0_ms);
        if let Some(prev) = &last {
            assert!(
                r.seq > prev.seq,
                "sequence numbers grow: {} after {}",
                r.seq,
                prev.seq
            );
            assert!(r.capture_ms >= prev.capture_ms);
        }
        frames.insert(r.frame);
        last = Some(r);
    }
    let arrived = frames.iter().filter(|f| **f < sent).count() as u64;
    assert!(
        arrived * 100 >= sent * 95,
        "{arrived} of {sent} Opus packets arrived on {subject}"
    );
    let published = scrape_value(&node, PUBLISHED).await;
    assert!(
        published >= arrived as f64,
        "published counted: {published}"
    );
    eprintln!("nats egress: {arrived} of {sent} Opus packets arrived, {published} published");

    // Phase 2: a subscriber session listens; NATS goes away and comes back.
    let listener = Subscriber::start(&api, "listener", &[(session_id.clone(), "mic".to_string())])
        .await
        .expect("listener pulls the audio");
    let lmid = listener.mid_of(&session_id, "mic").expect("listener's mid");
    peer.start_sending(&[mid.as_str()])
        .await
        .expect("send again");
    let l = lmid.clone();
    let heard = listener
        .peer
        .wait_until("the listener hears audio", MEDIA_TIMEOUT, move |s| {
            s.rx_frames(&l) >= 10
        })
        .await
        .expect("media before the outage")
        .rx_frames(&lmid);

    nats.stop().expect("stop nats-server");
    wait_metric(&node, CONNECTED, "the node sees NATS go", |v| v == 0.0).await;
    let dropped = wait_metric(&node, DROPPED_DOWN, "drops while NATS is down", |v| v > 0.0).await;
    let l = lmid.clone();
    let during = listener
        .peer
        .wait_until(
            "audio keeps flowing without NATS",
            MEDIA_TIMEOUT,
            move |s| s.rx_frames(&l) >= heard + 50,
        )
        .await
        .expect("media during the outage")
        .rx_frames(&lmid);
    let more_dropped = wait_metric(&node, DROPPED_DOWN, "drops go on being counted", |v| {
        v > dropped
    })
    .await;

    let restarted_ms = unix_ms();
    nats.restart().expect("nats-server again, same port");
    wait_metric(&node, CONNECTED, "the node reconnects", |v| v == 1.0).await;
    // Messages from before the outage may still wait in the subscription; the first one
    // captured after the restart shows publishing resumed (what arrived while NATS was down was
    // dropped, not kept). Bounded: at most this many messages are read.
    let mut resumed = None;
    for _ in 0..2000 {
        let Ok(Some(msg)) = tokio::time::timeout(NATS_WAIT, messages.next()).await else {
            break;
        };
        let r = check(&msg, &subject, t0_ms);
        if r.capture_ms >= restarted_ms {
            resumed = Some(r);
            break;
        }
    }
    let resumed = resumed.expect("publishing resumes after the restart");
    assert!(
        last.as_ref().is_none_or(|l| resumed.seq > l.seq),
        "the sequence numbers go on"
    );
    let l = lmid.clone();
    listener
        .peer
        .wait_until("audio still flows", MEDIA_TIMEOUT, move |s| {
            s.rx_frames(&l) > during
        })
        .await
        .expect("media after the restart");
    let dropped_total = scrape_value(&node, DROPPED_DOWN).await;
    assert!(dropped_total >= more_dropped, "drops stay counted");
    eprintln!(
        "nats egress: {dropped_total} packets dropped while nats-server was down; the listener got {} frames meanwhile",
        during - heard
    );
}

/// A publisher marked on node A, heard by a subscriber on node B through the relay: every packet
/// is published once, by A; B, which holds only a relayed copy, publishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_publishers_node_publishes_a_relayed_track() {
    let t0_ms = unix_ms();
    let nats = NatsServer::start().expect("nats-server (tests/all.sh installs it)");
    let cl = Cluster::start_with(
        &[("a", "r1"), ("b", "r1")],
        ClusterConfig {
            extra: vec![
                "--nats".to_string(),
                nats.url(),
                "--nats-subject-prefix".to_string(),
                PREFIX.to_string(),
            ],
            ..ClusterConfig::default()
        },
    )
    .await
    .expect("two nodes with --nats");
    let (a, b) = (cl.try_node("a").expect("a"), cl.try_node("b").expect("b"));
    for node in [a, b] {
        wait_metric(node, CONNECTED, "the node connects to NATS", |v| v == 1.0).await;
    }
    let bus = async_nats::connect(nats.url())
        .await
        .expect("test subscriber connects");
    let mut messages = bus
        .subscribe(format!("{PREFIX}.>"))
        .await
        .expect("subscribe");
    bus.flush()
        .await
        .expect("the subscription reached the server");

    let api_a = cl.client("a");
    let peer = Peer::new("alice").expect("peer");
    let session_id = api_a.sessions_new().await.expect("sessions/new").session_id;
    let pushed = peer
        .push(&api_a, &session_id, &[("mic", MediaKind::Audio)])
        .await
        .expect("push audio");
    let mid = pushed[0].mid.clone();
    a.engine()
        .expect("in-process node")
        .set_egress(
            SessionId::parse(&session_id).expect("id"),
            Some(EgressLabels {
                app: cl.app_id().to_string(),
                room: "room 1".to_string(),
                user: "alice.b".to_string(),
                client: "web-1".to_string(),
            }),
        )
        .await
        .expect("engine running")
        .expect("session marked");
    peer.wait_connected(CONNECT_TIMEOUT)
        .await
        .expect("connected");
    peer.start_sending(&[mid.as_str()]).await.expect("send");
    let refs = vec![(session_id.clone(), "mic".to_string())];
    let listener = Subscriber::start_retrying(&cl.client("b"), "listener-b", &refs)
        .await
        .expect("B pulls A's audio");
    let lmid = listener.mid_of(&session_id, "mic").expect("mid");
    let l = lmid.clone();
    listener
        .peer
        .wait_until("B's subscriber hears A's audio", MEDIA_TIMEOUT, move |s| {
            s.rx_frames(&l) >= 100
        })
        .await
        .expect("relayed audio at B");
    peer.stop_sending(&[mid.as_str()]).await.expect("stop");
    let sent = peer.stats().tx_frames(&mid);

    let subject = format!("{PREFIX}.{}.room_1.alice_b", cl.app_id());
    let mut frames = BTreeSet::new();
    let mut duplicates = 0u64;
    // Bounded: one message per frame sent, each waited for at most NATS_WAIT.
    while (frames.len() as u64) < sent {
        let Ok(Some(msg)) = tokio::time::timeout(NATS_WAIT, messages.next()).await else {
            break;
        };
        if !frames.insert(check(&msg, &subject, t0_ms).frame) {
            duplicates += 1;
        }
    }
    assert!(
        (frames.len() as u64) * 100 >= sent * 95,
        "{} of {sent} packets arrived",
        frames.len()
    );
    assert_eq!(duplicates, 0, "no packet is published twice");
    assert_eq!(
        scrape_value(b, PUBLISHED).await,
        0.0,
        "the node with the relayed copy publishes nothing"
    );
    assert!(scrape_value(a, PUBLISHED).await >= frames.len() as f64);
}

/// The mid of the first audio section of an SDP.
fn audio_mid(sdp: &str) -> Option<String> {
    let mut in_audio = false;
    for line in sdp.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            in_audio = m.starts_with("audio");
        } else if in_audio && let Some(mid) = line.strip_prefix("a=mid:") {
            return Some(mid.to_string());
        }
    }
    None
}

/// A room created with `audio_egress: true`: an upstream WebSocket participant joining with a
/// ticket for user `alice.b` is marked by the node itself, and its Opus packets arrive on
/// `{prefix}.{app}.{room}.{user}` with the ticket's user and the server's client id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_publisher_in_an_egress_room_reaches_nats() {
    let t0_ms = unix_ms();
    let nats = NatsServer::start().expect("nats-server (tests/all.sh installs it)");
    let node = TestNode::start(&["--nats", &nats.url(), "--nats-subject-prefix", PREFIX])
        .expect("node with --nats");
    let api = node.client();
    wait_metric(&node, CONNECTED, "the node connects to NATS", |v| v == 1.0).await;
    let bus = async_nats::connect(nats.url())
        .await
        .expect("test subscriber connects");
    let mut messages = bus
        .subscribe(format!("{PREFIX}.>"))
        .await
        .expect("subscribe");
    bus.flush()
        .await
        .expect("the subscription reached the server");

    create_room(&api, json!({ "id": "stage-1", "audio_egress": true }))
        .await
        .expect("a room with audio egress");
    let (status, t) = api
        .raw(
            reqwest::Method::POST,
            "rooms/stage-1/tickets",
            Some(json!({ "direction": "up", "user": "alice.b" })),
        )
        .await
        .expect("POST tickets");
    assert_eq!(status, 201, "{t}");
    let token = t["access_token"].as_str().expect("access_token");
    let url = t["url"].as_str().expect("url");
    // The participant answers the server's offer and sends on every section it was offered.
    let up = WsParticipant::join(url, token, "upstream", false, "alice")
        .await
        .expect("an upstream joins by ticket");
    let mid = audio_mid(&up.offer_sdp).expect("an audio section in the first offer");
    let m = mid.clone();
    up.peer
        .wait_until("frames sent", MEDIA_TIMEOUT, move |s| {
            s.tx_frames(&m) >= FRAMES
        })
        .await
        .expect("the publisher sends");
    up.peer.stop_sending(&[mid.as_str()]).await.expect("stop");
    let sent = up.peer.stats().tx_frames(&mid);

    let subject = format!("{PREFIX}.{}.stage-1.alice_b", node.app_id());
    let mut frames = BTreeSet::new();
    // Bounded: one message per frame sent, each waited for at most NATS_WAIT.
    while (frames.len() as u64) < sent {
        let Ok(Some(msg)) = tokio::time::timeout(NATS_WAIT, messages.next()).await else {
            break;
        };
        frames.insert(check_as(&msg, &subject, t0_ms, "alice.b", &up.client_id).frame);
    }
    let arrived = frames.iter().filter(|f| **f < sent).count() as u64;
    assert!(
        arrived * 100 >= sent * 95,
        "{arrived} of {sent} Opus packets of the room's publisher arrived on {subject}"
    );
    eprintln!("nats egress through a room: {arrived} of {sent} Opus packets arrived");
}
