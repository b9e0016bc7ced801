//! Operating a node: metrics move when media flows and their names and labels stay stable;
//! drain refuses new sessions, keeps media flowing, reports not ready; SIGTERM drains and exits.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use trackmesh_tests::TestNode;
use trackmesh_tests::flows::{Publisher, Subscriber};

const ADMIN: &str = "ops-admin-token";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

async fn scrape(node: &TestNode) -> BTreeMap<String, f64> {
    node.scrape().await.expect("GET /metrics")
}

fn get(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or_else(|| {
        panic!(
            "metric {key} missing; have: {:?}",
            m.keys().collect::<Vec<_>>()
        )
    })
}

async fn wait_for<F: Fn(&BTreeMap<String, f64>) -> bool>(
    node: &TestNode,
    what: &str,
    f: F,
) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = scrape(node).await;
        if f(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {m:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every series a dashboard or alert may rely on. A rename or a changed label fails here.
const SERIES: &[&str] = &[
    r#"trackmesh_sessions{state="connecting"}"#,
    r#"trackmesh_sessions{state="connected"}"#,
    r#"trackmesh_tracks_published{kind="audio"}"#,
    r#"trackmesh_tracks_published{kind="video"}"#,
    r#"trackmesh_tracks_subscribed{kind="audio"}"#,
    r#"trackmesh_tracks_subscribed{kind="video"}"#,
    r#"trackmesh_rtp_packets_total{direction="in"}"#,
    r#"trackmesh_rtp_packets_total{direction="out"}"#,
    r#"trackmesh_rtp_bytes_total{direction="in"}"#,
    r#"trackmesh_rtp_bytes_total{direction="out"}"#,
    "trackmesh_frames_forwarded_total",
    r#"trackmesh_packets_dropped_total{reason="send_buffer"}"#,
    r#"trackmesh_packets_dropped_total{reason="no_route"}"#,
    r#"trackmesh_packets_dropped_total{reason="no_codec"}"#,
    r#"trackmesh_packets_dropped_total{reason="relay_queue"}"#,
    r#"trackmesh_packets_dropped_total{reason="relay_in_queue"}"#,
    r#"trackmesh_packets_dropped_total{reason="relay_control_queue"}"#,
    r#"trackmesh_packets_dropped_total{reason="relay_send"}"#,
    r#"trackmesh_relay_pull_failures_total{reason="no_route"}"#,
    r#"trackmesh_relay_pull_failures_total{reason="link"}"#,
    r#"trackmesh_relay_pull_failures_total{reason="refused"}"#,
    r#"trackmesh_relay_pull_failures_total{reason="no_answer"}"#,
    r#"trackmesh_keyframe_requests_total{direction="sent"}"#,
    r#"trackmesh_keyframe_requests_total{direction="received"}"#,
    r#"trackmesh_nacks_total{direction="sent"}"#,
    r#"trackmesh_nacks_total{direction="received"}"#,
    "trackmesh_relay_links",
    r#"trackmesh_relay_subscriptions{direction="upstream"}"#,
    r#"trackmesh_relay_subscriptions{direction="downstream"}"#,
    r#"trackmesh_relay_frames_total{direction="in"}"#,
    r#"trackmesh_relay_frames_total{direction="out"}"#,
    r#"trackmesh_relay_bytes_total{direction="in"}"#,
    r#"trackmesh_relay_bytes_total{direction="out"}"#,
    r#"trackmesh_relay_repair_total{event="nack_sent"}"#,
    r#"trackmesh_relay_repair_total{event="repaired"}"#,
    r#"trackmesh_relay_repair_total{event="failed"}"#,
    r#"trackmesh_relay_repair_total{event="resent"}"#,
    r#"trackmesh_cluster_members{region="local",state="live"}"#,
    "trackmesh_session_setup_seconds_count",
    "trackmesh_draining",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_media_and_return_to_zero() {
    let node = TestNode::start(&["--admin-token", ADMIN]).expect("node");
    // The cluster gauges appear with the node's first gossip view, a moment after start.
    let before = wait_for(&node, "every documented series", |m| {
        SERIES.iter().all(|s| m.contains_key(*s))
    })
    .await;
    for s in SERIES {
        get(&before, s);
    }
    let api = node.client();
    let publisher = Publisher::start_av(&api, "m").await.expect("publisher");
    let refs: Vec<(String, String)> = publisher.remote_refs();
    let sub = Subscriber::start(&api, "sub", &refs)
        .await
        .expect("subscriber");

    let m = wait_for(&node, "media forwarded", |m| {
        m.get("trackmesh_frames_forwarded_total")
            .copied()
            .unwrap_or(0.0)
            > 50.0
    })
    .await;
    assert!(
        get(&m, r#"trackmesh_rtp_packets_total{direction="in"}"#)
            > get(&before, r#"trackmesh_rtp_packets_total{direction="in"}"#)
    );
    assert!(get(&m, r#"trackmesh_rtp_packets_total{direction="out"}"#) > 50.0);
    assert!(get(&m, r#"trackmesh_rtp_bytes_total{direction="out"}"#) > 10_000.0);
    assert_eq!(get(&m, r#"trackmesh_tracks_published{kind="audio"}"#), 1.0);
    assert_eq!(get(&m, r#"trackmesh_tracks_published{kind="video"}"#), 1.0);
    assert_eq!(get(&m, r#"trackmesh_tracks_subscribed{kind="audio"}"#), 1.0);
    assert_eq!(get(&m, r#"trackmesh_tracks_subscribed{kind="video"}"#), 1.0);
    assert_eq!(get(&m, r#"trackmesh_sessions{state="connected"}"#), 2.0);
    assert!(
        get(&m, r#"trackmesh_keyframe_requests_total{direction="sent"}"#) >= 1.0,
        "a keyframe was asked for the new subscriber"
    );
    assert!(
        get(&m, "trackmesh_session_setup_seconds_count") >= 2.0,
        "both sessions had media flowing"
    );
    assert!(
        get(
            &m,
            r#"trackmesh_http_requests_total{method="POST",route="/v1/apps/{app}/sessions/new",status="201"}"#
        ) >= 2.0
    );
    assert!(
        get(
            &m,
            r#"trackmesh_http_request_duration_seconds_count{route="/v1/apps/{app}/sessions/{session}/tracks/new"}"#
        ) >= 2.0
    );

    // Close the pull, then the publication: the track gauges return to zero.
    let mids: Vec<String> = sub
        .pull
        .tracks
        .iter()
        .filter_map(|t| t.mid.clone())
        .collect();
    let mids: Vec<&str> = mids.iter().map(String::as_str).collect();
    api.tracks_close(&sub.session_id, &mids, true, None)
        .await
        .expect("close pulls");
    let m = scrape(&node).await;
    assert_eq!(get(&m, r#"trackmesh_tracks_subscribed{kind="audio"}"#), 0.0);
    assert_eq!(get(&m, r#"trackmesh_tracks_subscribed{kind="video"}"#), 0.0);
    let pub_mids: Vec<&str> = publisher.tracks.iter().map(|t| t.mid.as_str()).collect();
    publisher
        .peer
        .close_force(&api, &publisher.session_id, &pub_mids)
        .await
        .expect("close pushes");
    let m = scrape(&node).await;
    assert_eq!(get(&m, r#"trackmesh_tracks_published{kind="audio"}"#), 0.0);
    assert_eq!(get(&m, r#"trackmesh_tracks_published{kind="video"}"#), 0.0);
}

/// A pull of a track of a node nobody knows fails per item, and the metrics say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_from_an_unknown_node_is_counted_by_reason() {
    let node = TestNode::start(&[]).expect("node");
    let no_route = r#"trackmesh_relay_pull_failures_total{reason="no_route"}"#;
    let before = get(&scrape(&node).await, no_route);
    let api = node.client();
    let sub = api.sessions_new().await.expect("session");
    // A session id whose node tag no member has.
    let unknown = format!("ffffffff{}", "0".repeat(24));
    let res = api
        .tracks_new(
            &sub.session_id,
            &trackmesh_tests::api::TracksRequest::pull(&[(unknown, "cam".into())]),
        )
        .await
        .expect("tracks/new");
    assert_eq!(
        res.tracks.first().and_then(|t| t.error_code.as_deref()),
        Some("not_found_track_error")
    );
    assert_eq!(get(&scrape(&node).await, no_route), before + 1.0);
}

async fn status(url: String) -> u16 {
    http()
        .get(url)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_refuses_new_sessions_keeps_media_and_sigterm_exits() {
    let mut node =
        // A process: the drain is started by SIGTERM.
        TestNode::start_process(&["--admin-token", ADMIN, "--drain-timeout", "3s"])
            .expect("node");
    let api = node.client();
    let publisher = Publisher::start_av(&api, "d").await.expect("publisher");
    let sub = Subscriber::start(&api, "sub", &publisher.remote_refs())
        .await
        .expect("subscriber");
    let video = sub
        .mid_of(&publisher.session_id, "d-video")
        .expect("video mid");
    assert_eq!(status(format!("{}/readyz", node.http_url())).await, 200);

    let drain = http()
        .post(format!(
            "{}/admin/drain/{}",
            node.http_url(),
            node.node_id()
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("drain");
    assert_eq!(drain.status().as_u16(), 200);
    assert_eq!(
        status(format!("{}/readyz", node.http_url())).await,
        503,
        "not ready while draining"
    );
    let (code, body) = api
        .raw(reqwest::Method::POST, "/sessions/new", None)
        .await
        .expect("sessions/new");
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["errorCode"], "temporarily_unavailable_error");
    // Existing media keeps flowing.
    let before = sub.peer.stats().rx_frames(&video);
    let v = video.clone();
    sub.peer
        .wait_until("media while draining", Duration::from_secs(5), move |s| {
            s.rx_frames(&v) >= before + 20
        })
        .await
        .expect("media keeps flowing while draining");
    assert_eq!(get(&scrape(&node).await, "trackmesh_draining"), 1.0);

    assert_eq!(undrain(&node).await, 200);
    assert_eq!(
        status(format!("{}/readyz", node.http_url())).await,
        200,
        "ready again"
    );

    // SIGTERM: drains (sessions are open, so it stays up and unready), exits by the timeout.
    let sent = Instant::now();
    signal(&node, "-TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        node.is_running(),
        "still serving its sessions while draining"
    );
    assert_eq!(status(format!("{}/readyz", node.http_url())).await, 503);
    // A drain to exit cannot be undone: the node would take sessions, then exit under them.
    assert_eq!(undrain(&node).await, 409);
    assert_eq!(status(format!("{}/readyz", node.http_url())).await, 503);
    // Bounded well past the 3 s drain timeout; what proves the timeout ended it is the log.
    exits_within(&mut node, Duration::from_secs(30)).await;
    let log = node.log();
    assert!(
        log.contains("drain timeout: exiting with sessions left"),
        "the drain timeout ended the wait: {log}"
    );
    println!(
        "SIGTERM with open sessions: exited after {:.2} s (drain timeout 3 s)",
        sent.elapsed().as_secs_f64()
    );
}

/// `POST /admin/undrain/{node}`: the status.
async fn undrain(node: &TestNode) -> u16 {
    http()
        .post(format!(
            "{}/admin/undrain/{}",
            node.http_url(),
            node.node_id()
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("undrain")
        .status()
        .as_u16()
}

/// Waits (bounded by `limit`) for the node process to exit; fails the test if it does not.
async fn exits_within(node: &mut TestNode, limit: Duration) {
    let deadline = Instant::now() + limit;
    while node.is_running() {
        assert!(
            Instant::now() < deadline,
            "the node is still running {limit:?} after the signal: {}",
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `signal` (e.g. `-TERM`) to the node process.
fn signal(node: &TestNode, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([signal, &node.pid().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill {signal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_without_sessions_exits_at_once() {
    // A drain timeout no test waits for: exiting proves the node did not wait for it.
    let mut node = TestNode::start_process(&["--drain-timeout", "1h"]).expect("node");
    signal(&node, "-TERM");
    exits_within(&mut node, Duration::from_secs(30)).await;
    assert!(
        node.log().contains("drained: no sessions left"),
        "{}",
        node.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_ends_the_drain_at_once() {
    let mut node = TestNode::start_process(&["--drain-timeout", "1h"]).expect("node");
    // An open session keeps the drain waiting (for an hour, were it not for the second signal).
    node.client().sessions_new().await.expect("a session");
    signal(&node, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !node.log().contains("draining: waiting for sessions to end") {
        assert!(Instant::now() < deadline, "no drain: {}", node.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(node.is_running(), "waiting for its session");
    signal(&node, "-TERM");
    exits_within(&mut node, Duration::from_secs(30)).await;
    let log = node.log();
    assert!(log.contains("second signal: exiting now"), "{log}");
    assert_eq!(node.exit_code().expect("exit status"), Some(143), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_pages_icon_is_served() {
    let node = TestNode::start(&[]).expect("node");
    let res = http()
        .get(format!("{}/favicon.ico", node.http_url()))
        .send()
        .await
        .expect("GET /favicon.ico");
    assert_eq!(
        res.status().as_u16(),
        200,
        "browsers ask for it on every page"
    );
    assert_eq!(
        res.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("image/svg+xml")
    );
    assert!(res.text().await.expect("body").starts_with("<svg"));
}

/// Ctrl-C at a terminal: the HTTP port is free at once, so the node can be started again while
/// the old one drains its sessions; a second Ctrl-C exits at once with status 130.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_frees_the_http_port_while_draining_and_a_second_one_exits() {
    let mut node = TestNode::start_process(&["--drain-timeout", "1h"]).expect("node");
    let http = node.http_addr();
    // An open session keeps the drain waiting (for an hour, were it not for the second signal).
    node.client().sessions_new().await.expect("a session");
    assert!(
        std::net::TcpListener::bind(http).is_err(),
        "the node holds its HTTP port before the signal"
    );
    node.signal("INT").expect("SIGINT");
    let deadline = Instant::now() + Duration::from_secs(20);
    let rebound = loop {
        match std::net::TcpListener::bind(http) {
            Ok(l) => break l,
            Err(e) => assert!(
                Instant::now() < deadline,
                "the HTTP port {http} is still taken after Ctrl-C: {e}; log: {}",
                node.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        node.is_running(),
        "the node still drains its session: {}",
        node.log()
    );
    // The port is let go first; the drain's log line can follow a moment later on a busy machine.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.log().contains("draining: waiting for sessions to end") {
        assert!(Instant::now() < deadline, "no drain line: {}", node.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(rebound);

    node.signal("INT").expect("second SIGINT");
    exits_within(&mut node, Duration::from_secs(30)).await;
    assert_eq!(
        node.exit_code().expect("exit status"),
        Some(130),
        "a second Ctrl-C exits with 128 + SIGINT: {}",
        node.log()
    );
}
