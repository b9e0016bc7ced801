//! The `simulcast` fields of the Calls API over HTTP, with real str0m clients: a pull echoes
//! them, `GET session` lists them, a track without layers plays as one and refuses a layer
//! change with `update_track_error`, a malformed `preferredRid` is refused; a str0m publisher's
//! three layers reach a subscriber one at a time and `tracks/update` moves it; across nodes, an
//! edge pulls only the layers its viewers use and a hub the union of its region's. Layer selection
//! in detail is tested in the engine (`tests_simulcast.rs`) and with Chromium
//! (`tests/browser/simulcast.test.mjs`).

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use trackmesh_tests::flows::{CONNECT_TIMEOUT, MEDIA_TIMEOUT};
use trackmesh_tests::serial::cluster_slot as serial;
use trackmesh_tests::{
    CallsClient, Cluster, MediaKind, Peer, Publisher, SessionDescription, TestNode, TrackObject,
    TracksRequest, poll_until,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_fields_are_echoed_listed_and_checked() {
    let node = TestNode::start(&[]).expect("starting the trackmesh node");
    let api = node.client();
    let publisher = Publisher::start_av(&api, "pub").await.expect("publisher");
    let video = publisher.track(MediaKind::Video).expect("video").clone();
    let peer = Peer::new("sub").expect("peer");
    let sid = api.sessions_new().await.expect("sessions/new").session_id;

    // A malformed rid: the whole request is refused, nothing is pulled.
    let (status, body) = api
        .raw(
            Method::POST,
            &format!("sessions/{sid}/tracks/new"),
            Some(json!({"tracks": [{
                "location": "remote", "sessionId": publisher.session_id,
                "trackName": video.track_name, "simulcast": {"preferredRid": "no such rid"},
            }]})),
        )
        .await
        .expect("request");
    assert_eq!(status, 406, "{body}");
    assert_eq!(body["errorCode"], "invalid_params", "{body}");

    let (status, body) = api
        .raw(
            Method::POST,
            &format!("sessions/{sid}/tracks/new"),
            Some(json!({"tracks": [{
                "location": "remote", "sessionId": publisher.session_id,
                "trackName": video.track_name,
                "simulcast": {"preferredRid": "h", "ridNotAvailable": "asciibetical"},
            }]})),
        )
        .await
        .expect("pull");
    assert_eq!(status, 200, "{body}");
    let item = &body["tracks"][0];
    assert_eq!(
        item["simulcast"],
        json!({"preferredRid": "h", "priorityOrdering": "none", "ridNotAvailable": "asciibetical"}),
        "echoed with the defaults filled in: {body}"
    );
    let mid = item["mid"].as_str().expect("a mid").to_string();
    let offer = body["sessionDescription"]["sdp"]
        .as_str()
        .expect("an offer");
    let answer = peer.accept_offer(offer).await.expect("answer");
    api.renegotiate(&sid, &answer).await.expect("renegotiate");
    peer.wait_connected(CONNECT_TIMEOUT)
        .await
        .expect("connected");
    let m = mid.clone();
    peer.wait_until("video", MEDIA_TIMEOUT, move |s| s.rx_frames(&m) >= 10)
        .await
        .expect("a track without layers plays as one");

    let (status, body) = api
        .raw(Method::GET, &format!("sessions/{sid}"), None)
        .await
        .expect("GET session");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["tracks"][0]["simulcast"],
        json!({"preferredRid": "h", "priorityOrdering": "none", "ridNotAvailable": "asciibetical"}),
        "listed, with no currentRid (the track has no layers): {body}"
    );

    let (status, body) = api
        .raw(
            Method::PUT,
            &format!("sessions/{sid}/tracks/update"),
            Some(json!({"tracks": [{
                "location": "remote", "mid": mid, "sessionId": publisher.session_id,
                "trackName": video.track_name, "simulcast": {"preferredRid": "q"},
            }]})),
        )
        .await
        .expect("tracks/update");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["tracks"][0]["errorCode"], "update_track_error",
        "{body}"
    );
}

/// The `currentRid` `GET session` shows for `mid`.
async fn current_rid(api: &CallsClient, sid: &str, mid: &str) -> anyhow::Result<Option<String>> {
    let s = api.get_session(sid).await?;
    Ok(s.track_by_mid(mid)
        .and_then(|t| t.simulcast.as_ref())
        .and_then(|s| s.get("currentRid"))
        .and_then(|r| r.as_str())
        .map(str::to_string))
}

/// A str0m publisher of `cam` with layers f, h, q (400, 100 and 25 kbit/s), sending; its
/// session id.
async fn simulcast_publisher(api: &CallsClient) -> (Peer, String) {
    let publisher = Peer::new("pub").expect("peer");
    let pub_sid = api.sessions_new().await.expect("sessions/new").session_id;
    let (mid, offer) = publisher
        .run(|c| c.create_simulcast_offer(&["f", "h", "q"]))
        .await
        .expect("simulcast offer");
    let req = TracksRequest {
        session_description: Some(SessionDescription::offer(offer)),
        tracks: Some(vec![TrackObject::local(&mid, "cam")]),
        auto_discover: None,
    };
    let resp = api.tracks_new(&pub_sid, &req).await.expect("push");
    let answer = resp.session_description.expect("an answer");
    publisher.accept_answer(&answer.sdp).await.expect("accept");
    publisher
        .wait_connected(CONNECT_TIMEOUT)
        .await
        .expect("publisher connected");
    publisher
        .run(move |c| {
            let layers = [("f", 400), ("h", 100), ("q", 25)];
            c.start_sending_layers(mid.as_str().into(), &layers, std::time::Instant::now())
        })
        .await
        .expect("sending layers");
    (publisher, pub_sid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_str0m_publishers_layers_reach_subscribers_one_at_a_time_and_switch() {
    let node = TestNode::start(&[]).expect("starting the trackmesh node");
    let api = node.client();
    let (publisher, pub_sid) = simulcast_publisher(&api).await;

    let sub = Peer::new("sub").expect("peer");
    let sid = api.sessions_new().await.expect("sessions/new").session_id;
    let item = TrackObject {
        simulcast: Some(json!({"preferredRid": "h"})),
        ..TrackObject::remote(&pub_sid, "cam")
    };
    let resp = sub.pull_items(&api, &sid, vec![item]).await.expect("pull");
    let sub_mid = resp.tracks[0].mid.clone().expect("a mid");
    sub.wait_connected(CONNECT_TIMEOUT)
        .await
        .expect("subscriber connected");
    let m = sub_mid.clone();
    sub.wait_until("video", MEDIA_TIMEOUT, move |s| s.rx_frames(&m) >= 10)
        .await
        .expect("the h layer plays");
    let step = Duration::from_millis(100);
    poll_until("currentRid h", MEDIA_TIMEOUT, step, async || {
        let rid = current_rid(&api, &sid, &sub_mid).await?;
        anyhow::ensure!(rid.as_deref() == Some("h"), "currentRid {rid:?}");
        Ok(())
    })
    .await
    .expect("receives h");
    // One layer only: about 30 frames a second, not 90.
    let before = sub.with_stats(|s| s.rx_frames(&sub_mid));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let per_s = sub.with_stats(|s| s.rx_frames(&sub_mid)) - before;
    assert!(
        per_s < 50,
        "{per_s} frames in a second: more than one layer"
    );

    let item = TrackObject {
        mid: Some(sub_mid.clone()),
        simulcast: Some(json!({"preferredRid": "q"})),
        ..TrackObject::remote(&pub_sid, "cam")
    };
    let resp = api
        .tracks_update(&sid, vec![item], None)
        .await
        .expect("tracks/update");
    assert!(resp.tracks[0].error_code.is_none(), "{resp:?}");
    poll_until("currentRid q", MEDIA_TIMEOUT, step, async || {
        let rid = current_rid(&api, &sid, &sub_mid).await?;
        anyhow::ensure!(rid.as_deref() == Some("q"), "currentRid {rid:?}");
        Ok(())
    })
    .await
    .expect("moves to q");
    assert!(
        publisher.with_stats(|s| s.layer_keyframe_requests.get("q").copied().unwrap_or(0)) > 0,
        "the node asked layer q for a keyframe"
    );
    let m = sub_mid.clone();
    let seen = sub.with_stats(|s| s.rx_frames(&sub_mid));
    sub.wait_until("video after the switch", MEDIA_TIMEOUT, move |s| {
        s.rx_frames(&m) >= seen + 10
    })
    .await
    .expect("q plays");
    // The viewer's stream went on across the switch: each frame's first RTP sequence number
    // follows the previous frame's last (the node rewrites the layers' own numbering).
    let gaps = sub.with_stats(|s| s.rx.get(&sub_mid).map(|t| t.rtp_seq_gaps));
    assert_eq!(gaps, Some(0), "sequence numbers continue across the switch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_bandwidth_estimation_on_an_asciibetical_subscriber_plays_its_preferred_layer() {
    // Every session runs str0m's BWE (pacer, padding, TWCC feedback); on loopback the estimate
    // has room for the preferred layer, so the subscriber stays on it.
    let node = TestNode::start(&["--bwe", "true"]).expect("starting the trackmesh node");
    let api = node.client();
    let (_publisher, pub_sid) = simulcast_publisher(&api).await;
    let sub = Peer::new("sub").expect("peer");
    let sid = api.sessions_new().await.expect("sessions/new").session_id;
    let item = TrackObject {
        simulcast: Some(json!({"preferredRid": "f", "priorityOrdering": "asciibetical"})),
        ..TrackObject::remote(&pub_sid, "cam")
    };
    let resp = sub.pull_items(&api, &sid, vec![item]).await.expect("pull");
    let mid = resp.tracks[0].mid.clone().expect("a mid");
    sub.wait_connected(CONNECT_TIMEOUT)
        .await
        .expect("subscriber connected");
    let m = mid.clone();
    sub.wait_until("video", MEDIA_TIMEOUT, move |s| s.rx_frames(&m) >= 60)
        .await
        .expect("plays with BWE on");
    let rid = current_rid(&api, &sid, &mid).await.expect("GET session");
    assert_eq!(rid.as_deref(), Some("f"));
    // str0m's estimates reached the subscriber's layer choice.
    let key = "trackmesh_simulcast_events_total{event=\"bwe_estimate\"}";
    poll_until(
        "BWE estimates",
        MEDIA_TIMEOUT,
        Duration::from_millis(100),
        async || {
            let n = node.scrape().await?.get(key).copied().unwrap_or(0.0);
            anyhow::ensure!(n > 0.0, "{key} = {n}");
            Ok(())
        },
    )
    .await
    .expect("estimates counted");
    let down = "trackmesh_simulcast_events_total{event=\"bwe_down\"}";
    let n = node.scrape().await.expect("scrape").get(down).copied();
    assert_eq!(n, Some(0.0), "no move down on loopback");
}

/// Layered frames a node received from other nodes, per rid (f, h, q), and its relay bytes in.
async fn relay_layers_in(node: &TestNode) -> anyhow::Result<([f64; 3], f64)> {
    let m = node.scrape().await?;
    let get = |rid: &str| {
        let key = format!("trackmesh_relay_layer_frames_total{{direction=\"in\",rid=\"{rid}\"}}");
        m.get(&key).copied().unwrap_or(0.0)
    };
    let bytes = m
        .get("trackmesh_relay_bytes_total{direction=\"in\"}")
        .copied()
        .unwrap_or(0.0);
    Ok(([get("f"), get("h"), get("q")], bytes))
}

/// Waits until, over half a second, node `n` receives frames of exactly the layers `want`
/// (f, h, q) from other nodes and none of the others. The first windows may still carry what
/// the node pulled before its viewers' layers were known, or the layer a viewer left.
async fn expect_layers_in(node: &TestNode, who: &str, want: [bool; 3]) {
    let mut last = Vec::new();
    for _ in 0..40 {
        let (before, bytes_before) = relay_layers_in(node).await.expect("scrape");
        let t0 = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (after, bytes_after) = relay_layers_in(node).await.expect("scrape");
        let grew: Vec<bool> = before.iter().zip(&after).map(|(b, a)| a > b).collect();
        if grew == want {
            // For the record (`--nocapture`): what the node pulls, in kbit/s.
            let kbps = (bytes_after - bytes_before) * 8.0 / t0.elapsed().as_secs_f64() / 1000.0;
            eprintln!("{who}: relay in {kbps:.0} kbit/s with layers (f, h, q) {want:?}");
            return;
        }
        last = vec![before, after];
    }
    panic!("{who}: layers in (f, h, q) never became {want:?}: last window {last:?}");
}

/// Pulls `cam` of `pub_sid` on `api`'s node with `preferredRid: rid`; (peer, session, mid)
/// once the viewer decodes it and `GET session` shows that rid.
async fn viewer(api: &CallsClient, name: &str, pub_sid: &str, rid: &str) -> (Peer, String, String) {
    let peer = Peer::new(name).expect("peer");
    let sid = api.sessions_new().await.expect("sessions/new").session_id;
    let item = TrackObject {
        simulcast: Some(json!({"preferredRid": rid})),
        ..TrackObject::remote(pub_sid, "cam")
    };
    let resp = peer.pull_items(api, &sid, vec![item]).await.expect("pull");
    assert!(resp.tracks[0].error_code.is_none(), "{resp:?}");
    let mid = resp.tracks[0].mid.clone().expect("a mid");
    peer.wait_connected(CONNECT_TIMEOUT)
        .await
        .expect("viewer connected");
    let m = mid.clone();
    peer.wait_until("video", MEDIA_TIMEOUT, move |s| {
        s.rx_frames(&m) >= 10 && s.rx_keyframes(&m) >= 1
    })
    .await
    .unwrap_or_else(|e| panic!("{name} decodes its layer: {e:#}"));
    let want = rid.to_string();
    poll_until(
        "currentRid",
        MEDIA_TIMEOUT,
        Duration::from_millis(100),
        async || {
            let got = current_rid(api, &sid, &mid).await?;
            anyhow::ensure!(got.as_deref() == Some(want.as_str()), "currentRid {got:?}");
            Ok(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{name} receives {rid}: {e:#}"));
    (peer, sid, mid)
}

/// A str0m simulcast publisher on A, its viewer on B wants `q`: B pulls q and no f or h from
/// A. `tracks/update` to `h`: the viewer switches, and B then pulls h and no longer q.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_pulls_only_the_layer_its_viewer_watches() {
    let _serial = serial().await;
    let cl = Cluster::start(&[("a", "r1"), ("b", "r1")])
        .await
        .expect("starting the cluster");
    let (_publisher, pub_sid) = simulcast_publisher(&cl.client("a")).await;
    let api_b = cl.client("b");
    let (peer, sid, mid) = viewer(&api_b, "viewer-b", &pub_sid, "q").await;
    expect_layers_in(cl.node("b"), "B", [false, false, true]).await;

    let item = TrackObject {
        mid: Some(mid.clone()),
        simulcast: Some(json!({"preferredRid": "h"})),
        ..TrackObject::remote(&pub_sid, "cam")
    };
    let resp = api_b
        .tracks_update(&sid, vec![item], None)
        .await
        .expect("tracks/update");
    assert!(resp.tracks[0].error_code.is_none(), "{resp:?}");
    poll_until(
        "currentRid h",
        MEDIA_TIMEOUT,
        Duration::from_millis(100),
        async || {
            let rid = current_rid(&api_b, &sid, &mid).await?;
            anyhow::ensure!(rid.as_deref() == Some("h"), "currentRid {rid:?}");
            Ok(())
        },
    )
    .await
    .expect("the viewer moves to h");
    let m = mid.clone();
    let seen = peer.with_stats(|s| s.rx_frames(&mid));
    peer.wait_until("video after the switch", MEDIA_TIMEOUT, move |s| {
        s.rx_frames(&m) >= seen + 10
    })
    .await
    .expect("h plays");
    expect_layers_in(cl.node("b"), "B after the switch", [false, true, false]).await;
}

/// A publisher in r1, viewers on both r2 nodes, one wants `q`, the other `h`: the region's hub
/// pulls h and q (not f) from the origin, the other r2 node only its viewer's layer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_pulls_the_union_of_its_regions_layers() {
    let _serial = serial().await;
    let cl = Cluster::start(&[("a", "r1"), ("b", "r2"), ("c", "r2")])
        .await
        .expect("starting the cluster");
    let (_publisher, pub_sid) = simulcast_publisher(&cl.client("a")).await;
    let (_vb, _, _) = viewer(&cl.client("b"), "viewer-b", &pub_sid, "q").await;
    let (_vc, _, _) = viewer(&cl.client("c"), "viewer-c", &pub_sid, "h").await;
    // The hub is the r2 node that pulls from A.
    let relay_a = cl.node("a").relay_view().await.expect("A relay");
    let downs = relay_a.downstream_of(&pub_sid, "cam");
    assert_eq!(downs.len(), 1, "the track crosses to r2 once: {relay_a:?}");
    let hub = cl.name_of(&downs[0].peer).expect("a node of the cluster");
    let (hub_wants, other, other_wants) = if hub == "b" {
        ([false, true, true], "c", [false, true, false])
    } else {
        ([false, true, true], "b", [false, false, true])
    };
    expect_layers_in(cl.node(&hub), "the hub", hub_wants).await;
    expect_layers_in(cl.node(other), "the other r2 node", other_wants).await;
}
