//! WebSocket signalling with a real WebRTC client (str0m) behind each socket: media from an
//! upstream on one node reaches downstreams on that node and another; a third participant makes
//! the server send `update` to everyone in multistream, and so does a publisher leaving; and each
//! error closes the socket with its named reason.

use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use trackmesh_tests::rooms::{RawWs, WsParticipant, create_room, ticket};
use trackmesh_tests::{Cluster, Subscriber, TestNode, poll_until};

const STEP: Duration = Duration::from_millis(100);
const PROPAGATION: Duration = Duration::from_secs(15);
const MEDIA: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reaches_downstreams_on_two_nodes_and_a_third_participant_updates_everyone() {
    let cl = Cluster::start(&[("a", "eu"), ("c", "eu")])
        .await
        .expect("cluster");
    let (a, c) = (cl.client("a"), cl.client("c"));
    create_room(&a, json!({ "id": "stage" }))
        .await
        .expect("room");
    poll_until("the room on c", PROPAGATION, STEP, async || {
        let (s, _) = c.raw(reqwest::Method::GET, "rooms/stage", None).await?;
        anyhow::ensure!(s == 200, "{s}");
        Ok(())
    })
    .await
    .expect("c knows the room");

    let (t, url_a) = ticket(&a, "stage", "up").await.expect("ticket");
    let up = WsParticipant::join(&url_a, &t, "upstream", false, "up")
        .await
        .expect("upstream on a");
    // The publisher is on air everywhere before the viewers come, so each gets one update.
    poll_until("on air on c", PROPAGATION, STEP, async || {
        let (_, v) = c.raw(reqwest::Method::GET, "rooms/stage", None).await?;
        anyhow::ensure!(v["onair"] == true, "{v}");
        Ok(())
    })
    .await
    .expect("on air");
    let (t, _) = ticket(&a, "stage", "down").await.expect("ticket");
    let down_a = WsParticipant::join(&url_a, &t, "downstream", true, "down-a")
        .await
        .expect("downstream on a");
    let (t, url_c) = ticket(&c, "stage", "down").await.expect("ticket");
    let down_c = WsParticipant::join(&url_c, &t, "downstream", true, "down-c")
        .await
        .expect("downstream on c");
    for d in [&down_a, &down_c] {
        d.wait_updates(1, PROPAGATION)
            .await
            .expect("the publisher's tracks");
        d.wait_media_on(2, MEDIA)
            .await
            .expect("audio and video arrive");
    }

    // The publisher's tracks are Calls tracks: a Calls client on c pulls them by session id.
    let remote = vec![
        (up.session_id.clone(), "audio".to_string()),
        (up.session_id.clone(), "video".to_string()),
    ];
    let calls = Subscriber::start_retrying(&c, "calls-viewer", &remote)
        .await
        .expect("a Calls pull of the WebSocket publisher");
    let mids: Vec<String> = calls
        .pull
        .tracks
        .iter()
        .filter_map(|t| t.mid.clone())
        .collect();
    assert_eq!(mids.len(), 2, "{:?}", calls.pull.tracks);
    calls
        .peer
        .wait_until("media on the Calls pull", MEDIA, move |s| {
            mids.iter().all(|m| s.rx_frames(m) >= 10)
        })
        .await
        .expect("media reaches the Calls client");
    drop(calls);

    // A third participant, sending and receiving, on c.
    let (t, _) = ticket(&c, "stage", "both").await.expect("ticket");
    let third = WsParticipant::join(&url_c, &t, "sendrecv", true, "third")
        .await
        .expect("sendrecv on c");
    third
        .wait_updates(1, PROPAGATION)
        .await
        .expect("the third gets the first publisher");
    third.wait_media_on(2, MEDIA).await.expect("and its media");
    for d in [&down_a, &down_c] {
        d.wait_updates(2, PROPAGATION)
            .await
            .expect("an update for the third participant");
        d.wait_media_on(4, MEDIA)
            .await
            .expect("media from both publishers");
    }
    assert!(
        up.closed.lock().map(|c| c.is_none()).unwrap_or(false),
        "the upstream stays"
    );

    // The first publisher leaves: everyone receiving it gets an update that ends its tracks.
    up.send(json!({ "type": "disconnect" }))
        .await
        .expect("disconnect");
    let (code, _) = up.wait_closed(PROPAGATION).await.expect("closed");
    assert_eq!(code, 1000, "a disconnect is a normal close");
    for d in [&down_a, &down_c] {
        d.wait_updates(3, PROPAGATION)
            .await
            .expect("an update for the publisher that left");
    }
    third
        .wait_updates(2, PROPAGATION)
        .await
        .expect("the third gets the update too");
}

async fn node_with_room(extra: &[&str], room: serde_json::Value) -> (TestNode, String) {
    let node = TestNode::start(extra).expect("node");
    create_room(&node.client(), room).await.expect("room");
    let url = format!("ws://{}/v1/ws", node.http_addr());
    (node, url)
}

/// Connects, sends `msg`, and returns the server's close.
async fn close_of(url: &str, msg: &str) -> (u16, String) {
    let mut ws = RawWs::connect(url).await.expect("connect");
    ws.send_text(msg).await.expect("send");
    ws.closed(Duration::from_secs(10)).await.expect("closed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_close_the_socket_with_their_reason() {
    let (node, url) = node_with_room(
        &[
            "--ws-ping-interval",
            "200ms",
            "--ws-pong-timeout",
            "600ms",
            // A socket outlives the HTTP deadlines: they end with the upgrade.
            "--http-idle-timeout",
            "1s",
            "--http-header-timeout",
            "1s",
        ],
        json!({ "id": "small", "max_participants": 1 }),
    )
    .await;
    let api = node.client();
    create_room(&api, json!({ "id": "other" }))
        .await
        .expect("room");

    assert_eq!(
        close_of(&url, "{not json").await,
        (4401, "FAILURE-JSON-DECODE".to_string())
    );
    assert_eq!(
        close_of(&url, &"x".repeat(301 * 1024)).await,
        (4404, "EXCEED-MESSAGE-LIMIT".to_string()),
        "a message over 300 KiB, refused by the WebSocket layer"
    );
    assert_eq!(
        close_of(&url, r#"{"type":"answer","sdp":"v=0"}"#).await,
        (4401, "FAILURE-JSON-DECODE".to_string()),
        "an answer before connect"
    );
    assert_eq!(
        close_of(
            &url,
            r#"{"type":"connect","token":"nope","role":"upstream"}"#
        )
        .await,
        (4101, "INVALID-TOKEN".to_string())
    );

    // Expired: minted like the node does, an hour ago.
    let now = trackmesh_tokens::unix_now();
    let expired = trackmesh_tokens::mint_ticket(
        node.app_secret().as_bytes(),
        &trackmesh_tokens::TicketClaims {
            kind: trackmesh_tokens::TICKET_KIND.into(),
            app: node.app_id().into(),
            room: "small".into(),
            room_created: None,
            dir: "both".into(),
            user: None,
            iss: "anyone".into(),
            jti: "old".into(),
            iat: now - 3600,
            exp: now - 3000,
        },
    )
    .expect("mint");
    let connect = |token: &str, role: &str, room: Option<&str>| {
        json!({ "type": "connect", "token": token, "role": role, "room": room }).to_string()
    };
    assert_eq!(
        close_of(&url, &connect(&expired, "upstream", None)).await,
        (4102, "EXPIRED-TOKEN".to_string())
    );

    // Wrong room, wrong direction: the ticket stays unused.
    let (t, _) = ticket(&api, "small", "up").await.expect("ticket");
    assert_eq!(
        close_of(&url, &connect(&t, "upstream", Some("other"))).await,
        (4103, "AUTHENTICATION-FAILURE".to_string())
    );
    assert_eq!(
        close_of(&url, &connect(&t, "downstream", None)).await,
        (4103, "AUTHENTICATION-FAILURE".to_string())
    );
    let codec = json!({ "type": "connect", "token": t, "role": "upstream",
        "video": { "codec_type": "MPEG2" } });
    assert_eq!(
        close_of(&url, &codec.to_string()).await,
        (4403, "UNKNOWN-CODEC-TYPE".to_string())
    );

    // A ticket for a room deleted and made again under its id does not admit to the new one.
    create_room(&api, json!({ "id": "again" }))
        .await
        .expect("room");
    let (t_old, _) = ticket(&api, "again", "down").await.expect("ticket");
    let (status, body) = api
        .raw(Method::DELETE, "rooms/again", None)
        .await
        .expect("delete");
    assert_eq!(status, 204, "{body}");
    // Creation times are in milliseconds: the new room's is a later one.
    tokio::time::sleep(Duration::from_millis(5)).await;
    create_room(&api, json!({ "id": "again" }))
        .await
        .expect("the room again");
    assert_eq!(
        close_of(&url, &connect(&t_old, "downstream", None)).await,
        (4103, "AUTHENTICATION-FAILURE".to_string())
    );
    let (t_new, _) = ticket(&api, "again", "down").await.expect("ticket");
    let _in_new = WsParticipant::join(&url, &t_new, "downstream", false, "new-room")
        .await
        .expect("a ticket of the new room admits to it");

    // A ticket works once.
    let (t_other, _) = ticket(&api, "other", "down").await.expect("ticket");
    let _viewer = WsParticipant::join(&url, &t_other, "downstream", false, "viewer")
        .await
        .expect("a viewer of the other room");
    assert_eq!(
        close_of(&url, &connect(&t_other, "downstream", None)).await,
        (4101, "INVALID-TOKEN".to_string()),
        "a used ticket"
    );
    // A second socket with a client id connected here.
    let (t_a, _) = ticket(&api, "other", "down").await.expect("ticket");
    let mut named = RawWs::connect(&url).await.expect("connect");
    named
        .send(&json!({ "type": "connect", "token": t_a, "role": "downstream", "client_id": "dup" }))
        .await
        .expect("send");
    let offer = named.recv().await.expect("an offer");
    assert_eq!(offer["client_id"], "dup");
    let (t_b, _) = ticket(&api, "other", "down").await.expect("ticket");
    let twin = json!({ "type": "connect", "token": t_b, "role": "downstream", "client_id": "dup" });
    assert_eq!(
        close_of(&url, &twin.to_string()).await,
        (4301, "DUPLICATED-CLIENT".to_string())
    );
    // An answer that is no SDP.
    named
        .send(&json!({ "type": "answer", "sdp": "not an sdp" }))
        .await
        .expect("send");
    assert_eq!(
        named.closed(Duration::from_secs(10)).await.expect("closed"),
        (4402, "FAILURE-SDP-PARSE".to_string())
    );

    // The small room holds its one participant.
    let first = WsParticipant::join(&url, &t, "upstream", false, "first")
        .await
        .expect("first participant");
    let (t2, _) = ticket(&api, "small", "both").await.expect("ticket");
    assert_eq!(
        close_of(&url, &connect(&t2, "downstream", None)).await,
        (4201, "EXCEED-MAX-CONNECTIONS".to_string())
    );

    // Pings are answered, so the first stays (past the HTTP idle and header deadlines, too);
    // once it stops answering, it is closed.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        first.closed.lock().map(|c| c.is_none()).unwrap_or(false),
        "answering pings keeps it"
    );
    first.answer_pings.store(false, Ordering::Relaxed);
    let (code, reason) = first
        .wait_closed(Duration::from_secs(10))
        .await
        .expect("closed for a missing pong");
    assert_eq!((code, reason.as_str()), (4003, "PONG-TIMEOUT-ERROR"));

    let metrics = reqwest::get(format!("{}/metrics", node.http_url()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for reason in ["FAILURE-JSON-DECODE", "EXPIRED-TOKEN", "PONG-TIMEOUT-ERROR"] {
        assert!(
            metrics.contains(&format!("trackmesh_ws_closed_total{{reason=\"{reason}\"}}")),
            "{reason} counted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_that_never_comes_times_out() {
    let (_node, url) =
        node_with_room(&["--ws-connect-timeout", "500ms"], json!({ "id": "r" })).await;
    let mut ws = RawWs::connect(&url).await.expect("connect");
    let (code, reason) = ws.closed(Duration::from_secs(10)).await.expect("closed");
    assert_eq!((code, reason.as_str()), (4001, "CONNECT-WAIT-TIMEOUT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_never_answered_times_out() {
    let (node, url) = node_with_room(&["--ws-answer-timeout", "500ms"], json!({ "id": "r" })).await;
    let (t, _) = ticket(&node.client(), "r", "up").await.expect("ticket");
    let mut ws = RawWs::connect(&url).await.expect("connect");
    ws.send(&json!({ "type": "connect", "token": t, "role": "upstream" }))
        .await
        .expect("connect");
    let offer = ws.recv().await.expect("the server's offer");
    assert_eq!(offer["type"], "offer", "{offer}");
    // The client never answers.
    let (code, reason) = ws.closed(Duration::from_secs(10)).await.expect("closed");
    assert_eq!((code, reason.as_str()), (4002, "ANSWER-TIMEOUT-ERROR"));
}

/// A client id names a participant within its app: two apps on one node may both use "same",
/// and a second "same" in one app is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ids_of_two_apps_do_not_collide() {
    let (node, url) = node_with_room(&["--app", "other:other-secret"], json!({ "id": "r" })).await;
    let api = node.client();
    let other = trackmesh_tests::CallsClient::new(
        &api.base().replace(node.app_id(), "other"),
        "other-secret",
    );
    create_room(&other, json!({ "id": "r" }))
        .await
        .expect("the other app's room");
    let connect = |t: &str| json!({ "type": "connect", "token": t, "role": "downstream", "client_id": "same" });
    let mut sockets = Vec::new();
    for client in [&api, &other] {
        let (t, _) = ticket(client, "r", "down").await.expect("ticket");
        let mut ws = RawWs::connect(&url).await.expect("connect");
        ws.send(&connect(&t)).await.expect("send");
        let offer = ws.recv().await.expect("an offer for each app's \"same\"");
        assert_eq!(offer["client_id"], "same", "{offer}");
        sockets.push(ws);
    }
    let (t, _) = ticket(&other, "r", "down").await.expect("ticket");
    assert_eq!(
        close_of(&url, &connect(&t).to_string()).await,
        (4301, "DUPLICATED-CLIENT".to_string()),
        "a second \"same\" in one app"
    );
}

/// The answer `rtc` makes to `offer`, with `extra` more `a=ssrc` lines in its first m-section.
fn answer_with_ssrc_lines(offer: &str, extra: usize) -> String {
    let mut rtc = str0m::Rtc::builder().build(std::time::Instant::now());
    let offer = str0m::change::SdpOffer::from_sdp_string(offer).expect("the server's offer");
    let answer = rtc
        .sdp_api()
        .accept_offer(offer)
        .expect("an answer")
        .to_sdp_string();
    let mut out = String::new();
    let mut added = false;
    for line in answer.split("\r\n").filter(|l| !l.is_empty()) {
        out.push_str(line);
        out.push_str("\r\n");
        if !added && line.starts_with("a=mid:") {
            added = true;
            for i in 0..extra {
                out.push_str(&format!("a=ssrc:{} cname:padding\r\n", 10_000 + i));
            }
        }
    }
    out
}

/// An answer over the SDP bounds (more `a=ssrc` lines in a section than any client writes)
/// closes the socket as unparseable, as the Calls API refuses it, before the engine applies it;
/// the same answer within the bounds is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_the_sdp_bounds_is_refused() {
    let (node, url) = node_with_room(&[], json!({ "id": "bounds" })).await;
    let api = node.client();
    for (extra, refused) in [(4, false), (200, true)] {
        let (t, _) = ticket(&api, "bounds", "down").await.expect("ticket");
        let mut ws = RawWs::connect(&url).await.expect("connect");
        ws.send(&json!({ "type": "connect", "token": t, "role": "downstream" }))
            .await
            .expect("send");
        let offer = ws.recv().await.expect("an offer");
        let sdp = offer["sdp"].as_str().expect("an offer's sdp");
        ws.send(&json!({ "type": "answer", "sdp": answer_with_ssrc_lines(sdp, extra) }))
            .await
            .expect("send");
        let closed = ws.closed(Duration::from_secs(2)).await;
        if refused {
            assert_eq!(
                closed.expect("closed"),
                (4402, "FAILURE-SDP-PARSE".to_string())
            );
        } else {
            let still_open = closed
                .as_ref()
                .is_err_and(|e| e.to_string().contains("did not close in time"));
            assert!(still_open, "an answer within the bounds: {closed:?}");
        }
    }
}

/// A publisher whose media session the node closes under it (its peer connection went silent
/// past the reconnect grace) is not left in its room: its socket closes with `SESSION-ENDED`,
/// the room no longer counts it, and a multistream viewer is offered its sections inactive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_whose_session_ended_leaves_its_room() {
    let (node, url) = node_with_room(&["--reconnect-grace", "2s"], json!({ "id": "gone" })).await;
    let api = node.client();
    let (t, _) = ticket(&api, "gone", "up").await.expect("ticket");
    let up = WsParticipant::join(&url, &t, "upstream", false, "up")
        .await
        .expect("upstream");
    let (t, _) = ticket(&api, "gone", "down").await.expect("ticket");
    let down = WsParticipant::join(&url, &t, "downstream", true, "down")
        .await
        .expect("downstream");
    down.wait_updates(1, PROPAGATION)
        .await
        .expect("the publisher's tracks");
    down.wait_media_on(2, MEDIA).await.expect("its media");

    // The publisher's peer connection stops (no DTLS close: it just goes silent); its socket
    // stays open and keeps answering pings.
    up.peer
        .run(|c| {
            c.rtc().disconnect();
            Ok(())
        })
        .await
        .expect("stop the publisher's peer connection");
    let (code, reason) = up
        .wait_closed(Duration::from_secs(30))
        .await
        .expect("the publisher's socket is closed once its session ends");
    assert_eq!((code, reason.as_str()), (4502, "SESSION-ENDED"));
    poll_until(
        "the room without its publisher",
        PROPAGATION,
        STEP,
        async || {
            let (_, v) = api.raw(reqwest::Method::GET, "rooms/gone", None).await?;
            anyhow::ensure!(v["up_count"] == 0 && v["onair"] == false, "{v}");
            Ok(())
        },
    )
    .await
    .expect("the room stops counting it");
    down.wait_updates(2, PROPAGATION)
        .await
        .expect("the viewer is offered the publisher's sections inactive");
    assert!(
        down.closed.lock().map(|c| c.is_none()).unwrap_or(false),
        "the viewer stays"
    );
}

/// Room participants are sessions of their app: `--max-sessions-per-app` holds for joins as for
/// `sessions/new`, and a join refused by it leaves its ticket unused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_count_toward_the_apps_session_quota() {
    let (node, url) = node_with_room(&["--max-sessions-per-app", "2"], json!({ "id": "q" })).await;
    let api = node.client();
    let mut joined = Vec::new();
    for name in ["one", "two"] {
        let (t, _) = ticket(&api, "q", "down").await.expect("ticket");
        joined.push(
            WsParticipant::join(&url, &t, "downstream", false, name)
                .await
                .expect("a participant within the quota"),
        );
    }
    let (t, _) = ticket(&api, "q", "down").await.expect("ticket");
    let connect = json!({ "type": "connect", "token": t, "role": "downstream" }).to_string();
    assert_eq!(
        close_of(&url, &connect).await,
        (4201, "EXCEED-MAX-CONNECTIONS".to_string()),
        "a third session of the app"
    );
    let (status, _) = api
        .raw(reqwest::Method::POST, "sessions/new", None)
        .await
        .expect("sessions/new");
    assert_eq!(status, 429, "the joins hold the app's quota");

    // One leaves: the refused ticket now works.
    drop(joined.pop());
    let mut third = None;
    poll_until("a place in the quota", PROPAGATION, STEP, async || {
        third = Some(WsParticipant::join(&url, &t, "downstream", false, "three").await?);
        Ok(())
    })
    .await
    .expect("the unused ticket joins once a session has gone");
    assert!(third.is_some());
}
