//! Cascades between two separate trackmesh servers: B has another cluster secret and no seed, so
//! A knows nothing of it but its WHIP/WHEP URLs. A pulls a stream from B's WHEP endpoint
//! (`sourceUrl`) or pushes one to B's WHIP endpoint (`targetUrl`); real str0m clients show the
//! media arriving at the far end, through a restart of B, and the remote session going on DELETE.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use trackmesh_tests::flows::CONNECT_TIMEOUT;
use trackmesh_tests::node::random_hex32;
use trackmesh_tests::{CallsClient, MediaKind, Peer, RawBody, RawResponse, TestNode};

/// Bound of every wait for something that happens over the network (never a threshold).
const WAIT: Duration = Duration::from_secs(90);
const STEP: Duration = Duration::from_millis(250);

fn start_node(args: &[&str]) -> TestNode {
    TestNode::start(args).expect("starting the trackmesh node")
}

/// A server of its own: another cluster secret and no seed.
fn start_other(app: (&str, &str), extra: &[&str]) -> TestNode {
    let secret = random_hex32();
    let mut args = vec!["--cluster-secret", secret.as_str()];
    args.extend_from_slice(extra);
    TestNode::start_with_app(app.0, app.1, &args).expect("starting the other server")
}

/// A WHIP publisher or WHEP viewer on `node`, connected.
async fn endpoint(api: &CallsClient, word: &str, stream: &str) -> (Peer, Vec<String>) {
    let peer = Peer::new(&format!("{word}-{stream}")).expect("peer");
    let kinds = [MediaKind::Audio, MediaKind::Video];
    let (mids, offer) = if word == "whip" {
        peer.create_send_offer(&kinds).await
    } else {
        peer.create_recv_offer(&kinds).await
    }
    .expect("offer");
    let body = RawBody::Bytes(offer.into_bytes(), Some("application/sdp".into()));
    let r = api
        .request(
            Method::POST,
            &format!("{word}/{stream}"),
            Some(api.secret()),
            &[],
            body,
        )
        .await
        .expect("POST");
    assert_eq!(r.status, 201, "{word} {stream}: {}", r.text);
    peer.accept_answer(&r.text).await.expect("answer");
    peer.wait_connected(CONNECT_TIMEOUT)
        .await
        .expect("connects");
    if word == "whip" {
        peer.start_sending(&mids).await.expect("sending");
    }
    (peer, mids)
}

/// Frames decoded so far on the peer's least-fed mid.
fn frames(peer: &Peer, mids: &[String]) -> u64 {
    let st = peer.stats();
    mids.iter().map(|m| st.rx_frames(m)).min().unwrap_or(0)
}

/// Waits until every mid of the peer decoded at least `n` frames.
async fn wait_frames(peer: &Peer, mids: &[String], n: u64) {
    let mids = mids.to_vec();
    peer.wait_until("media on every mid", WAIT, move |s| {
        mids.iter().all(|m| s.rx_frames(m) >= n)
    })
    .await
    .expect("media arrives");
}

async fn post(api: &CallsClient, path: &str, body: Value) -> (u16, Value) {
    api.raw(Method::POST, path, Some(body))
        .await
        .expect("request")
}

async fn delete(api: &CallsClient, path: &str) -> RawResponse {
    api.request(Method::DELETE, path, Some(api.secret()), &[], RawBody::None)
        .await
        .expect("DELETE")
}

/// The stream `id` in `GET streams` (Null when it is not listed).
async fn stream(api: &CallsClient, id: &str) -> Value {
    let (status, body) = api
        .raw(Method::GET, "streams", None)
        .await
        .expect("GET streams");
    assert_eq!(status, 200, "{body}");
    body["streams"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["id"] == json!(id)).cloned())
        .unwrap_or(Value::Null)
}

/// Polls `GET streams` until `done` holds for the stream, bounded by [`WAIT`].
async fn wait_stream(api: &CallsClient, id: &str, what: &str, done: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = stream(api, id).await;
        if done(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {s}");
        tokio::time::sleep(STEP).await;
    }
}

fn cascade_state(s: &Value) -> Option<&str> {
    s["cascades"][0]["state"].as_str()
}

/// `--worker-placement` for A that puts every stream on worker 1, and a check that a session
/// id names worker 1 (the two hex characters after the node tag).
const ON_WORKER_1: &[&str] = &["--worker-placement", "1,1,1,1"];

#[track_caller]
fn assert_on_worker_1(session: &Value, what: &str) {
    assert_eq!(
        session.as_str().and_then(|s| s.get(8..10)),
        Some("01"),
        "{what} on worker 1: {session}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_pulls_from_another_server_survives_its_restart_and_delete_ends_it() {
    source_pulls(&[]).await;
}

/// The same with A's stream, its cascade and its viewer on A's worker 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_cascade_on_worker_1_feeds_its_viewers_there() {
    source_pulls(ON_WORKER_1).await;
}

async fn source_pulls(a_args: &[&str]) {
    let app = (random_hex32(), random_hex32());
    let mut b = start_other((&app.0, &app.1), &[]);
    let b_http = b.http_addr().to_string();
    let a = start_node(a_args);
    let (api_a, api_b) = (a.client(), b.client());
    let (_publisher, _) = endpoint(&api_b, "whip", "live").await;

    let (status, body) = post(&api_a, "streams/live", json!({})).await;
    assert_eq!(status, 201, "{body}");
    let url = format!("{}/whep/live", b.base_url());
    let (status, body) = post(
        &api_a,
        "streams/live/cascade",
        json!({"sourceUrl": url, "token": b.app_secret()}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["direction"], json!("source"));

    // A viewer on A plays what B's publisher sends.
    let (viewer, mids) = endpoint(&api_a, "whep", "live").await;
    wait_frames(&viewer, &mids, 10).await;
    wait_stream(&api_a, "live", "the cascade is live", |s| {
        cascade_state(s) == Some("live") && s["publisher"]["state"] == json!("connected")
    })
    .await;
    let s = stream(&api_a, "live").await;
    assert_eq!(s["cascades"][0]["url"], json!(url), "{s}");
    assert_eq!(
        s["publisher"]["sessionId"], s["cascades"][0]["sessionId"],
        "the cascade's session is the stream's publisher: {s}"
    );
    if a_args == ON_WORKER_1 {
        assert_on_worker_1(&s["publisher"]["sessionId"], "the cascade's session");
        assert_on_worker_1(&s["subscribers"][0]["sessionId"], "the viewer");
    }
    // On B, A is an ordinary WHEP viewer.
    let on_b = stream(&api_b, "live").await;
    assert_eq!(
        on_b["subscribers"].as_array().map(Vec::len),
        Some(1),
        "{on_b}"
    );

    // B goes away: the cascade notices and backs off, saying why.
    b.kill().expect("stopping B");
    drop(b);
    let killed = Instant::now();
    wait_stream(&api_a, "live", "the cascade backs off", |s| {
        cascade_state(s) == Some("backoff")
            && s["cascades"][0]["lastError"].is_string()
            && s["cascades"][0]["nextAttemptAt"].is_u64()
    })
    .await;
    let before = frames(&viewer, &mids);
    let noticed = killed.elapsed();

    // A new B on the same port, with a new publisher: the cascade reconnects, media flows again.
    let b = start_other((&app.0, &app.1), &["--http", &b_http]);
    let restarted = Instant::now();
    let api_b = b.client();
    let (_publisher, _) = endpoint(&api_b, "whip", "live").await;
    wait_frames(&viewer, &mids, before + 20).await;
    // Figures, not thresholds: how the backoff and the loss detection play out here.
    println!(
        "B stopped: A's cascade backed off after {:.1} s; B back: media again after {:.1} s",
        noticed.as_secs_f64(),
        restarted.elapsed().as_secs_f64()
    );
    wait_stream(&api_a, "live", "the cascade is live again", |s| {
        cascade_state(s) == Some("live")
    })
    .await;
    let on_b = stream(&api_b, "live").await;
    assert_eq!(
        on_b["subscribers"].as_array().map(Vec::len),
        Some(1),
        "{on_b}"
    );

    // DELETE stops it: the session on B is gone, and A's stream has no publisher.
    let r = delete(&api_a, "streams/live/cascade").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let on_b = stream(&api_b, "live").await;
    assert_eq!(
        on_b["subscribers"].as_array().map(Vec::len),
        Some(0),
        "A's WHEP session on B was deleted: {on_b}"
    );
    let s = stream(&api_a, "live").await;
    assert!(s["publisher"].is_null(), "{s}");
    assert!(s["cascades"].is_null(), "{s}");
    let r = delete(&api_a, "streams/live/cascade").await;
    assert_eq!(r.status, 404, "a stopped cascade is gone: {}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_waits_for_a_publisher_pushes_to_another_server_and_a_source_pulls_it_back() {
    target_pushes(&[]).await;
}

/// The same with A's streams, their cascades, publisher and viewer on A's worker 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_and_source_cascades_on_worker_1_push_and_pull() {
    target_pushes(ON_WORKER_1).await;
}

async fn target_pushes(a_args: &[&str]) {
    let b = start_other((&random_hex32(), &random_hex32()), &[]);
    let a = start_node(a_args);
    let (api_a, api_b) = (a.client(), b.client());
    // The cascade comes first: it waits for a publisher to push.
    let (status, body) = post(&api_a, "streams/out", json!({})).await;
    assert_eq!(status, 201, "{body}");
    let url = format!("{}/whip/pushed", b.base_url());
    let (status, body) = post(
        &api_a,
        "streams/out/cascade",
        json!({"targetUrl": url, "token": b.app_secret()}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    wait_stream(&api_a, "out", "the cascade waits for a publisher", |s| {
        cascade_state(s) == Some("backoff")
    })
    .await;
    let (_publisher, _) = endpoint(&api_a, "whip", "out").await;
    // On B, A's cascade is the publisher of `pushed`.
    wait_stream(&api_b, "pushed", "A publishes on B", |s| {
        s["publisher"]["state"] == json!("connected")
    })
    .await;
    let (viewer, mids) = endpoint(&api_b, "whep", "pushed").await;
    wait_frames(&viewer, &mids, 10).await;
    wait_stream(&api_a, "out", "the cascade is live", |s| {
        cascade_state(s) == Some("live") && s["cascades"][0]["direction"] == json!("target")
    })
    .await;
    if a_args == ON_WORKER_1 {
        let s = stream(&api_a, "out").await;
        assert_on_worker_1(&s["publisher"]["sessionId"], "the WHIP publisher");
        assert_on_worker_1(&s["cascades"][0]["sessionId"], "the cascade's session");
    }

    // A second session between the same two servers at once: A pulls back what it pushed.
    let (status, body) = post(&api_a, "streams/back", json!({})).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = post(
        &api_a,
        "streams/back/cascade",
        json!({"sourceUrl": format!("{}/whep/pushed", b.base_url()), "token": b.app_secret()}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (back, back_mids) = endpoint(&api_a, "whep", "back").await;
    wait_frames(&back, &back_mids, 10).await;
    if a_args == ON_WORKER_1 {
        let s = stream(&api_a, "back").await;
        assert_on_worker_1(
            &s["publisher"]["sessionId"],
            "the pulling cascade's session",
        );
        assert_on_worker_1(&s["subscribers"][0]["sessionId"], "the viewer");
    }
    wait_frames(&viewer, &mids, frames(&viewer, &mids) + 10).await;
    let r = delete(&api_a, "streams/back/cascade").await;
    assert_eq!(r.status, 200, "{}", r.text);

    let r = delete(&api_a, "streams/out/cascade?direction=target").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let on_b = stream(&api_b, "pushed").await;
    assert!(
        on_b.is_null() || on_b["publisher"].is_null(),
        "A's WHIP session on B was deleted: {on_b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascade_refusals_are_problems() {
    let a = start_node(&[]);
    let api = a.client();
    let (status, body) = post(&api, "streams/s", json!({})).await;
    assert_eq!(status, 201, "{body}");
    // Nothing listens on port 9 of loopback (discard): the cascade keeps backing off.
    let dead = "http://127.0.0.1:9/v1/apps/x/whep/s";
    for (path, body, want) in [
        ("streams/s/cascade", json!({"sourceUrl": "not a url"}), 400),
        ("streams/s/cascade", json!({"sourceUrl": "ftp://h/x"}), 400),
        (
            "streams/s/cascade",
            json!({"targetUrl": "https://h/whip/x"}),
            400,
        ),
        (
            "streams/s/cascade",
            json!({"sourceUrl": dead, "targetUrl": dead}),
            400,
        ),
        ("streams/s/cascade", json!({}), 400),
        (
            "streams/s/cascade",
            json!({"sourceUrl": dead, "token": "a b"}),
            400,
        ),
        ("streams/nope/cascade", json!({"sourceUrl": dead}), 404),
        ("streams/s/cascade", json!({"sourceUrl": dead}), 201),
        ("streams/s/cascade", json!({"sourceUrl": dead}), 409),
        ("streams/s/cascade", json!({"targetUrl": dead}), 201),
    ] {
        let (status, answer) = post(&api, path, body.clone()).await;
        assert_eq!(status, want, "{path} {body}: {answer}");
        if want >= 400 {
            assert_eq!(answer["status"], json!(want), "a problem: {answer}");
            assert!(answer["detail"].is_string(), "{answer}");
        }
    }
    // The source cannot reach the other server; the target has no publisher to push yet.
    wait_stream(&api, "s", "both cascades back off", |s| {
        let c = s["cascades"].as_array().cloned().unwrap_or_default();
        let error = |i: usize| c[i]["lastError"].as_str().unwrap_or_default().to_string();
        c.len() == 2
            && c.iter().all(|c| c["state"] == json!("backoff"))
            && c[0]["direction"] == json!("source")
            && error(0).contains("127.0.0.1:9")
            && error(1).contains("no publisher")
    })
    .await;
    let m = a.scrape().await.expect("GET /metrics");
    for direction in ["source", "target"] {
        let key = format!("trackmesh_cascades{{direction=\"{direction}\",state=\"backoff\"}}");
        assert_eq!(m.get(&key), Some(&1.0), "{key} in {m:?}");
    }
    let r = delete(&api, "streams/s/cascade?direction=sideways").await;
    assert_eq!(r.status, 400, "{}", r.text);
    // Deleting the stream ends its cascades.
    let r = delete(&api, "streams/s").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = delete(&api, "streams/s/cascade").await;
    assert_eq!(r.status, 404, "{}", r.text);
}

/// A cascade the node refuses leaves its stream as it was: an auto-created stream still goes
/// with its last session, rather than staying pinned for a cascade that never ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_cascade_does_not_pin_its_stream() {
    let a = start_node(&[]);
    let api = a.client();
    let dead = "http://127.0.0.1:9/v1/apps/x/whep/s";
    for i in 0..16 {
        // The per-app cap of cascades.
        let (status, body) = post(&api, &format!("streams/s{i}"), json!({})).await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = post(
            &api,
            &format!("streams/s{i}/cascade"),
            json!({"sourceUrl": dead}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    // A WHIP publisher makes stream "live"; the app holds all its cascades.
    let peer = Peer::new("whip-live").expect("peer");
    let (_, offer) = peer
        .create_send_offer(&[MediaKind::Audio])
        .await
        .expect("offer");
    let r = api
        .request(
            Method::POST,
            "whip/live",
            Some(api.secret()),
            &[],
            RawBody::Bytes(offer.into_bytes(), Some("application/sdp".into())),
        )
        .await
        .expect("POST");
    assert_eq!(r.status, 201, "{}", r.text);
    let location =
        trackmesh_tests::whip::location(&format!("{}/", a.base_url()), &r).expect("a Location");
    let (status, body) = post(&api, "streams/live/cascade", json!({"sourceUrl": dead})).await;
    assert_eq!(status, 503, "{body}");
    let r = api
        .request(
            Method::DELETE,
            &location,
            Some(api.secret()),
            &[],
            RawBody::None,
        )
        .await
        .expect("DELETE");
    assert_eq!(r.status, 200, "{}", r.text);
    let (status, body) = api
        .raw(Method::GET, "streams", None)
        .await
        .expect("GET streams");
    assert_eq!(status, 200);
    let names: Vec<&str> = body["streams"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["id"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        !names.contains(&"live"),
        "the auto-created stream went: {names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_does_not_wait_for_cascades_and_shutdown_deletes_their_remote_sessions() {
    let b = start_other((&random_hex32(), &random_hex32()), &[]);
    // A process: SIGTERM drains, then shuts down in order. The drain timeout is an hour: A has
    // no client session, only its cascade's, which a drain does not wait for.
    let mut a = TestNode::start_process(&["--drain-timeout", "1h"]).expect("node A");
    let (api_a, api_b) = (a.client(), b.client());
    let (_publisher, _) = endpoint(&api_b, "whip", "show").await;
    let (status, body) = post(&api_a, "streams/show", json!({})).await;
    assert_eq!(status, 201, "{body}");
    let url = format!("{}/whep/show", b.base_url());
    let (status, body) = post(
        &api_a,
        "streams/show/cascade",
        json!({"sourceUrl": url, "token": b.app_secret()}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    wait_stream(&api_a, "show", "the cascade is live", |s| {
        cascade_state(s) == Some("live")
    })
    .await;
    let on_b = stream(&api_b, "show").await;
    assert_eq!(
        on_b["subscribers"].as_array().map(Vec::len),
        Some(1),
        "{on_b}"
    );

    a.signal("TERM").expect("SIGTERM");
    let deadline = Instant::now() + WAIT;
    while a.is_running() {
        assert!(Instant::now() < deadline, "A did not exit: {}", a.log());
        tokio::time::sleep(STEP).await;
    }
    assert!(a.log().contains("drained: no sessions left"), "{}", a.log());
    // A DELETEd its WHEP session on B before exiting: B does not wait out its reconnect grace.
    let on_b = stream(&api_b, "show").await;
    assert_eq!(
        on_b["subscribers"].as_array().map(Vec::len),
        Some(0),
        "A's WHEP session on B is gone: {on_b}"
    );
}
