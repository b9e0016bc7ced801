//! Engine workers (`--workers`): sessions placed on chosen workers (`--worker-placement`, a
//! test-only flag) get the same media, keyframes and relay behaviour as on one worker; a worker
//! that panics fails `/healthz` and ends the node process with a non-zero status.

use std::time::Duration;

use trackmesh_tests::flows::MEDIA_TIMEOUT;
use trackmesh_tests::rooms::{WsParticipant, create_room, ticket};
use trackmesh_tests::whip;
use trackmesh_tests::{
    CallsClient, Cluster, ClusterConfig, MediaKind, Publisher, Subscriber, TestNode,
};

/// The worker a session id names: the two hex characters after the node tag.
fn worker_of(session_id: &str) -> &str {
    session_id.get(8..10).unwrap_or("")
}

/// Wait until `sub` got audio and video (with a keyframe) from `publisher`.
async fn expect_av(sub: &Subscriber, publisher: &Publisher, who: &str) {
    let audio = publisher
        .track(MediaKind::Audio)
        .expect("audio")
        .track_name
        .clone();
    let video = publisher
        .track(MediaKind::Video)
        .expect("video")
        .track_name
        .clone();
    let a = sub
        .mid_of(&publisher.session_id, &audio)
        .expect("audio mid");
    let v = sub
        .mid_of(&publisher.session_id, &video)
        .expect("video mid");
    let (a2, v2) = (a.clone(), v.clone());
    let s = sub
        .peer
        .wait_until("audio, video and a keyframe", MEDIA_TIMEOUT, move |s| {
            s.rx_frames(&a2) >= 20 && s.rx_frames(&v2) >= 10 && s.rx_keyframes(&v2) >= 1
        })
        .await
        .unwrap_or_else(|e| panic!("{who} receives media: {e:#}"));
    assert_eq!(
        s.rx_bytes(&a) / s.rx_frames(&a),
        100,
        "{who}: audio frames arrive with the size they were sent with"
    );
    assert!(
        s.rx_bytes(&v) / s.rx_frames(&v) >= 1000,
        "{who}: video frames arrive whole: {s:?}"
    );
}

/// A publisher on worker 0, a viewer on worker 1 and one on worker 0: both get the media, the
/// viewer on worker 1 through one in-process link, and a late viewer on worker 1 starts with
/// a keyframe although the publisher sends none by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_on_another_worker_get_the_same_media_and_a_keyframe_at_join() {
    let node = TestNode::start(&["--workers", "2", "--worker-placement", "0,1,0,1"])
        .expect("node with two workers");
    let api = node.client();
    let publisher = Publisher::start_av(&api, "cam").await.expect("publisher");
    assert_eq!(worker_of(&publisher.session_id), "00", "placed on worker 0");
    let refs = publisher.remote_refs();

    let other = Subscriber::start(&api, "other-worker", &refs)
        .await
        .expect("viewer on worker 1");
    assert_eq!(worker_of(&other.session_id), "01", "placed on worker 1");
    let same = Subscriber::start(&api, "same-worker", &refs)
        .await
        .expect("viewer on worker 0");
    assert_eq!(worker_of(&same.session_id), "00", "placed on worker 0");
    expect_av(&other, &publisher, "the viewer on worker 1").await;
    expect_av(&same, &publisher, "the viewer on worker 0").await;

    // From now on only a request makes the publisher send a keyframe: a viewer joining on
    // worker 1 gets one (worker 1's cached one, or the publisher's answer to the request that
    // crossed back to worker 0).
    publisher
        .peer
        .set_keyframe_interval(Duration::from_secs(600))
        .await
        .expect("no periodic keyframes");
    let late = Subscriber::start(&api, "late", &refs)
        .await
        .expect("late viewer on worker 1");
    assert_eq!(worker_of(&late.session_id), "01");
    expect_av(&late, &publisher, "the late viewer on worker 1").await;

    // One node to the outside: GET session of a worker-1 session, and the per-worker figures.
    let st = api
        .get_session(&other.session_id)
        .await
        .expect("GET the worker-1 viewer's session");
    assert!(
        st.tracks
            .iter()
            .all(|t| t.status.as_deref() == Some("active")),
        "{st:?}"
    );
    let m = node.scrape().await.expect("metrics");
    assert_eq!(
        m.get(r#"trackmesh_worker_sessions{worker="1"}"#),
        Some(&2.0),
        "two sessions on worker 1: {m:?}"
    );
    assert!(
        m.get(r#"trackmesh_worker_total{what="hop_frames",worker="0"}"#)
            .is_some_and(|n| *n > 0.0),
        "worker 0 handed frames to worker 1: {m:?}"
    );
    assert_eq!(
        m.get(r#"trackmesh_relay_subscriptions{direction="upstream"}"#),
        Some(&0.0),
        "links between workers are not relay subscriptions"
    );
}

/// Room participants (WebSocket) are placed like Calls sessions: two publishers on different
/// workers receive each other's media, and a viewer sharing a worker with one of them gets both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_participants_on_different_workers_exchange_media() {
    let node = TestNode::start(&["--workers", "2", "--worker-placement", "1,0,1"])
        .expect("node with two workers");
    let api = node.client();
    create_room(&api, serde_json::json!({ "id": "split" }))
        .await
        .expect("room");
    let url = format!("ws://{}/v1/ws", node.http_addr());
    let (t, _) = ticket(&api, "split", "both").await.expect("ticket");
    let alice = WsParticipant::join(&url, &t, "sendrecv", true, "alice")
        .await
        .expect("alice");
    assert_eq!(worker_of(&alice.session_id), "01", "alice on worker 1");
    let (t, _) = ticket(&api, "split", "both").await.expect("ticket");
    let bob = WsParticipant::join(&url, &t, "sendrecv", true, "bob")
        .await
        .expect("bob");
    assert_eq!(worker_of(&bob.session_id), "00", "bob on worker 0");
    let (t, _) = ticket(&api, "split", "down").await.expect("ticket");
    let carol = WsParticipant::join(&url, &t, "downstream", true, "carol")
        .await
        .expect("carol");
    assert_eq!(worker_of(&carol.session_id), "01", "carol on worker 1");
    for (p, who) in [(&alice, "alice"), (&bob, "bob")] {
        p.wait_media_on(2, MEDIA_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{who} gets the other's audio and video: {e:#}"));
    }
    carol
        .wait_media_on(4, MEDIA_TIMEOUT)
        .await
        .expect("carol gets both publishers' audio and video");
    // Each participant's session answers on its own worker.
    for p in [&alice, &bob, &carol] {
        let (status, v) = api
            .raw(
                reqwest::Method::GET,
                &format!("sessions/{}", p.session_id),
                None,
            )
            .await
            .expect("GET session");
        assert_eq!(status, 200, "{v}");
    }
}

/// A track published on worker 1 of node A is pulled by a viewer on node B (also placed on
/// worker 1 there, so the relayed track crosses B's workers too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_track_published_on_worker_1_is_relayed_to_another_node() {
    let _serial = trackmesh_tests::serial::cluster_slot().await;
    let cl = Cluster::start_with(
        &[("a", "r1"), ("b", "r1")],
        ClusterConfig {
            extra: ["--workers", "2", "--worker-placement", "1,1"]
                .map(String::from)
                .to_vec(),
            ..ClusterConfig::default()
        },
    )
    .await
    .expect("two nodes");
    let publisher = Publisher::start_av(&cl.client("a"), "cam")
        .await
        .expect("publisher on A");
    assert_eq!(worker_of(&publisher.session_id), "01", "on A's worker 1");
    let sub = Subscriber::start_retrying(&cl.client("b"), "viewer-b", &publisher.remote_refs())
        .await
        .expect("viewer on B");
    assert_eq!(worker_of(&sub.session_id), "01", "on B's worker 1");
    expect_av(&sub, &publisher, "the viewer on B").await;
}

/// A worker that panics: its calls fail, `/healthz` says the engine stopped, and the node
/// process exits with a failure status so that its supervisor restarts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_panics_fails_healthz_and_ends_the_process_non_zero() {
    let mut node = TestNode::start_process(&[
        "--workers",
        "2",
        "--worker-placement",
        "1",
        "--fault-panic-worker",
        "1",
    ])
    .expect("node process");
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let healthz = format!("{}/healthz", node.http_url());
    let before = http.get(&healthz).send().await.expect("GET /healthz");
    assert_eq!(before.status().as_u16(), 200, "healthy before the panic");
    // The first session goes to worker 1, which panics at its call.
    let created = node.client().sessions_new().await;
    assert!(
        created.is_err(),
        "the call on the dead worker fails: {created:?}"
    );
    // Bounded: the process exits soon after the panic; until then /healthz fails.
    let mut code = None;
    let mut unhealthy = false;
    for _ in 0..200 {
        match http.get(&healthz).send().await {
            Ok(r) if r.status().as_u16() == 503 => {
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                // The engine stops first; while the process shuts down the relay and
                // gossip may follow it into the list, in that order, and nothing else.
                let said = body["errorDescription"].as_str().unwrap_or_default();
                assert!(
                    [
                        "stopped: engine",
                        "stopped: engine, relay",
                        "stopped: engine, gossip",
                        "stopped: engine, relay, gossip",
                    ]
                    .contains(&said),
                    "/healthz names the stopped engine first: {body}"
                );
                unhealthy = true;
            }
            _ => {}
        }
        code = node.exit_code().expect("a process node");
        if code.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        code.is_some_and(|c| c != 0),
        "the node exits non-zero after a worker panicked: {code:?} (unhealthy seen: {unhealthy})"
    );
}

/// `GET streams`, merged over the workers: each stream's id and publisher session id.
async fn listed_streams(api: &CallsClient) -> Vec<(String, String)> {
    let (status, body) = api
        .raw(reqwest::Method::GET, "streams", None)
        .await
        .expect("GET streams");
    assert_eq!(status, 200, "{body}");
    body["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["id"].as_str().unwrap_or_default().to_string(),
                s["publisher"]["sessionId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

/// A stream lives on one worker with all its sessions: placed on worker 1 at its first use
/// (the WHIP publish), its WHEP viewers go there too and play, and their session URLs (PATCH,
/// DELETE) reach them there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_placed_on_worker_1_takes_its_whip_publisher_and_whep_viewers() {
    let node = TestNode::start(&["--workers", "2", "--worker-placement", "1"])
        .expect("node with two workers");
    let api = node.client();
    let publisher = whip::start_endpoint(&api, &node, "whip", "one").await;
    assert_eq!(
        worker_of(publisher.session_id()),
        "01",
        "the stream on worker 1"
    );
    let first = whip::start_endpoint(&api, &node, "whep", "one").await;
    let second = whip::start_endpoint(&api, &node, "whep", "one").await;
    for (v, who) in [(&first, "first"), (&second, "second")] {
        assert_eq!(
            worker_of(v.session_id()),
            "01",
            "the {who} viewer with its stream"
        );
        whip::wait_media(&v.peer, &v.mids).await;
    }
    let listed = listed_streams(&api).await;
    assert_eq!(
        listed,
        vec![("one".to_string(), publisher.session_id().to_string())]
    );
    // The session URL names the session, whose id names worker 1.
    let path = first
        .location
        .split_once("/v1/apps/")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, p)| p.to_string())
        .expect("a session path");
    let r = whip::send(&api, reqwest::Method::DELETE, &path, &[], "", None).await;
    assert_eq!(r.status, 200, "DELETE the viewer's session: {}", r.text);
    let r = api
        .raw(
            reqwest::Method::GET,
            &format!("sessions/{}", first.session_id()),
            None,
        )
        .await
        .expect("GET session");
    assert!(
        r.0 == 404 || r.0 == 410,
        "the viewer's session ended: {r:?}"
    );
    whip::wait_media(&second.peer, &second.mids).await;
}

/// Streams spread: two streams go to the two workers (least-loaded), both play, and `GET
/// streams` lists both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_streams_land_on_different_workers_and_both_play() {
    let node = TestNode::start(&["--workers", "2"]).expect("node with two workers");
    let api = node.client();
    let a = whip::start_endpoint(&api, &node, "whip", "a").await;
    let b = whip::start_endpoint(&api, &node, "whip", "b").await;
    let mut workers = [worker_of(a.session_id()), worker_of(b.session_id())];
    workers.sort_unstable();
    assert_eq!(workers, ["00", "01"], "one stream per worker");
    for (name, publisher) in [("a", &a), ("b", &b)] {
        let viewer = whip::start_endpoint(&api, &node, "whep", name).await;
        assert_eq!(
            worker_of(viewer.session_id()),
            worker_of(publisher.session_id()),
            "the viewer of {name} with its stream"
        );
        whip::wait_media(&viewer.peer, &viewer.mids).await;
    }
    let listed = listed_streams(&api).await;
    assert_eq!(
        listed,
        vec![
            ("a".to_string(), a.session_id().to_string()),
            ("b".to_string(), b.session_id().to_string())
        ]
    );
}

/// `PUT streams/{stream}/publisher` with all of `p`'s tracks: the status and body.
async fn bind(api: &CallsClient, stream: &str, p: &Publisher) -> (u16, serde_json::Value) {
    let names: Vec<String> = p.tracks.iter().map(|t| t.track_name.clone()).collect();
    api.raw(
        reqwest::Method::PUT,
        &format!("streams/{stream}/publisher"),
        Some(serde_json::json!({"sessionId": p.session_id, "tracks": names})),
    )
    .await
    .expect("bind")
}

/// A bind takes the bound Calls session's worker: a new stream is made there, and an idle one
/// moves there; one serving sessions on another worker answers 409 saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_session_on_any_worker_binds_a_stream_and_whep_plays_it() {
    // Calls publisher on 1, `POST streams/idle` on 1, Calls publisher on 0.
    let node = TestNode::start(&["--workers", "2", "--worker-placement", "1,1,0"])
        .expect("node with two workers");
    let api = node.client();
    let on_1 = Publisher::start_av(&api, "w1").await.expect("publisher");
    assert_eq!(worker_of(&on_1.session_id), "01");
    let (status, body) = bind(&api, "s1", &on_1).await;
    assert_eq!(status, 200, "{body}");
    let viewer = whip::start_endpoint(&api, &node, "whep", "s1").await;
    assert_eq!(worker_of(viewer.session_id()), "01", "with its stream");
    whip::wait_media(&viewer.peer, &viewer.mids).await;

    // A stream with a viewer waiting on worker 1 cannot take a publisher held by worker 0.
    let (status, body) = api
        .raw(reqwest::Method::POST, "streams/idle", None)
        .await
        .expect("create");
    assert_eq!(status, 201, "{body}");
    let early = whip::start_endpoint(&api, &node, "whep", "idle").await;
    assert_eq!(worker_of(early.session_id()), "01");
    let on_0 = Publisher::start_av(&api, "w0").await.expect("publisher");
    assert_eq!(worker_of(&on_0.session_id), "00");
    let (status, body) = bind(&api, "idle", &on_0).await;
    assert_eq!(status, 409, "{body}");
    let detail = body.to_string();
    assert!(
        detail.contains("worker 1") && detail.contains("holds its sessions"),
        "says why: {body}"
    );
    // Once idle, it moves to worker 0 with the bind, and a viewer plays it there.
    let r = whip::send(
        &api,
        reqwest::Method::DELETE,
        &format!("whep/idle/{}", early.session_id()),
        &[],
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let (status, body) = bind(&api, "idle", &on_0).await;
    assert_eq!(status, 200, "{body}");
    let viewer = whip::start_endpoint(&api, &node, "whep", "idle").await;
    assert_eq!(worker_of(viewer.session_id()), "00", "moved with the bind");
    whip::wait_media(&viewer.peer, &viewer.mids).await;
    let listed = listed_streams(&api).await;
    assert_eq!(
        listed,
        vec![
            ("idle".to_string(), on_0.session_id.clone()),
            ("s1".to_string(), on_1.session_id.clone())
        ]
    );
}

/// A stream whose cascade runs on worker 1 stays there, even idle: a bind of a session on
/// worker 0 answers 409 naming the cascade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_with_a_cascade_is_not_moved_by_a_bind() {
    let node = TestNode::start(&["--workers", "2", "--worker-placement", "1,0"])
        .expect("node with two workers");
    let api = node.client();
    let (status, body) = api
        .raw(reqwest::Method::POST, "streams/pulled", None)
        .await
        .expect("create");
    assert_eq!(status, 201, "{body}");
    // Nothing listens there: the cascade keeps trying (in backoff), and keeps the stream.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let (status, body) = api
        .raw(
            reqwest::Method::POST,
            "streams/pulled/cascade",
            Some(serde_json::json!({"sourceUrl": format!("http://{closed}/v1/apps/x/whep/s")})),
        )
        .await
        .expect("cascade");
    assert_eq!(status, 201, "{body}");
    let on_0 = Publisher::start_av(&api, "w0").await.expect("publisher");
    assert_eq!(worker_of(&on_0.session_id), "00");
    let (status, body) = bind(&api, "pulled", &on_0).await;
    assert_eq!(status, 409, "{body}");
    let detail = body.to_string();
    assert!(
        detail.contains("worker 1") && detail.contains("cascade"),
        "says why: {body}"
    );
}

/// A pull on another worker of a track with no media yet waits for its first packet (bounded).
/// It must not hold up the pulls of other tracks meanwhile: a publisher that sends nothing would
/// otherwise stall every cross-worker pull of the node, one wait after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_of_a_silent_track_does_not_hold_up_other_cross_worker_pulls() {
    let node = TestNode::start(&["--workers", "2", "--worker-placement", "0,0,1,1"])
        .expect("node with two workers");
    let api = node.client();
    let live = Publisher::start_av(&api, "live")
        .await
        .expect("a publisher sending media");
    assert_eq!(worker_of(&live.session_id), "00");
    // Pushes a track and never connects: the track is there, with no media.
    let silent = api.sessions_new().await.expect("sessions/new").session_id;
    assert_eq!(worker_of(&silent), "00");
    let offer = trackmesh_tests::offers::video_offer(1, 0);
    let mid = offer
        .lines()
        .find_map(|l| l.strip_prefix("a=mid:"))
        .expect("the offer's mid")
        .to_string();
    let (s, body) = api
        .raw(
            reqwest::Method::POST,
            &format!("sessions/{silent}/tracks/new"),
            Some(serde_json::json!({
                "sessionDescription": {"type": "offer", "sdp": offer},
                "tracks": [{"location": "local", "mid": mid, "trackName": "silent"}],
            })),
        )
        .await
        .expect("push the silent track");
    assert_eq!(s, 200, "{body}");
    assert!(body["tracks"][0]["errorCode"].is_null(), "{body}");
    let pull = |session: String, from: String, track: String| {
        let api = api.clone();
        async move {
            api.raw(
                reqwest::Method::POST,
                &format!("sessions/{session}/tracks/new"),
                Some(serde_json::json!({
                    "tracks": [{"location": "remote", "sessionId": from, "trackName": track}],
                })),
            )
            .await
            .expect("tracks/new")
        }
    };
    let v1 = api.sessions_new().await.expect("sessions/new").session_id;
    let v2 = api.sessions_new().await.expect("sessions/new").session_id;
    assert_eq!((worker_of(&v1), worker_of(&v2)), ("01", "01"));
    let waiting = tokio::spawn(pull(v1, silent.clone(), "silent".into()));
    // Let that pull start its wait for the silent track's first packet (up to 3 s).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let video = live
        .track(MediaKind::Video)
        .expect("a video track")
        .track_name
        .clone();
    let (s, body) = pull(v2, live.session_id.clone(), video).await;
    assert_eq!(s, 200, "{body}");
    assert!(body["tracks"][0]["errorCode"].is_null(), "{body}");
    assert!(
        !waiting.is_finished(),
        "the live track's pull waited for the silent one's"
    );
    let (s, body) = waiting.await.expect("the silent pull");
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        body["tracks"][0]["errorCode"], "not_found_track_error",
        "{body}"
    );
}
