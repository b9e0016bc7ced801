//! The `simulcast` fields of the Calls API over HTTP, with real str0m clients: a pull echoes
//! them, `GET session` lists them, a track without layers plays as one and refuses a layer
//! change with `update_track_error`, a malformed `preferredRid` is refused. Layer selection
//! itself is tested in the engine (`tests_simulcast.rs`) and with Chromium
//! (`tests/browser/simulcast.test.mjs`): the test clients do not send simulcast.

use reqwest::Method;
use serde_json::json;
use trackmesh_tests::flows::{CONNECT_TIMEOUT, MEDIA_TIMEOUT};
use trackmesh_tests::{MediaKind, Peer, Publisher, TestNode};

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
