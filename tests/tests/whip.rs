//! WHIP and WHEP on one node: real str0m clients publish and play through the endpoints, media
//! is shown to arrive, and every refusal is an RFC 9457 problem with the documented status.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use trackmesh_tests::flows::{CONNECT_TIMEOUT, MEDIA_TIMEOUT};
use trackmesh_tests::whip::{self, SDP};
use trackmesh_tests::{CallsClient, MediaKind, Peer, Publisher, RawBody, RawResponse, TestNode};

const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

fn start_node(args: &[&str]) -> TestNode {
    TestNode::start(args).expect("starting the trackmesh node")
}

async fn send(
    api: &CallsClient,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    content_type: Option<&str>,
) -> RawResponse {
    let body = RawBody::Bytes(body.as_bytes().to_vec(), content_type.map(str::to_string));
    api.request(method.clone(), path, Some(api.secret()), headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
}

/// The answer is an RFC 9457 problem with this status.
#[track_caller]
fn assert_problem(r: &RawResponse, status: u16) {
    assert_eq!(r.status, status, "status; body: {}", r.text);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/problem+json"),
        "{}",
        r.text
    );
    assert_eq!(r.json["status"], json!(status), "{}", r.text);
    for field in ["type", "title", "detail"] {
        assert!(r.json[field].is_string(), "{field} in {}", r.text);
    }
}

/// A WHIP publisher or WHEP viewer: its peer, session URL (absolute path), ETag and mids.
struct Endpoint {
    peer: Peer,
    location: String,
    etag: String,
    mids: Vec<String>,
}

impl Endpoint {
    fn session_id(&self) -> &str {
        self.location.rsplit('/').next().unwrap_or_default()
    }
}

/// `POST whip/{stream}` (or whep) with the peer's offer; checks the 201 and takes the answer.
async fn start(api: &CallsClient, node: &TestNode, word: &str, stream: &str) -> Endpoint {
    let peer = Peer::new(&format!("{word}-{stream}")).expect("peer");
    let kinds = [MediaKind::Audio, MediaKind::Video];
    let mode = if word == "whip" {
        whip::Mode::Publish
    } else {
        whip::Mode::Play
    };
    let (mids, offer) = whip::offer(&peer, mode, &kinds).await.expect("offer");
    let url = format!("{}/{word}/{stream}", api.base());
    let r = whip::post_offer(api, &url, api.secret(), &offer)
        .await
        .expect("POST offer");
    assert_eq!(r.status, 201, "{word} {stream}: {}", r.text);
    assert_eq!(r.header("content-type").as_deref(), Some(SDP));
    let location = r.header("location").expect("Location");
    assert!(
        location.starts_with(&format!("/v1/apps/{}/{word}/{stream}/", node.app_id())),
        "{location}"
    );
    let etag = r.header("etag").expect("ETag");
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert!(
        r.text.contains("a=candidate:"),
        "the answer holds the candidates"
    );
    whip::complete(&peer, mode, &mids, &r, CONNECT_TIMEOUT)
        .await
        .expect("answer, connection, sources");
    Endpoint {
        peer,
        location: whip::location(&url, &r).expect("session URL"),
        etag,
        mids,
    }
}

/// Waits until the peer decoded frames on every mid (video with a keyframe).
async fn wait_media(peer: &Peer, mids: &[String]) {
    let mids = mids.to_vec();
    peer.wait_until("media on every mid", MEDIA_TIMEOUT, move |s| {
        mids.iter().all(|m| s.rx_frames(m) >= 10)
    })
    .await
    .expect("media arrives");
}

async fn streams(api: &CallsClient) -> Value {
    let (status, body) = api
        .raw(Method::GET, "streams", None)
        .await
        .expect("GET streams");
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_publishes_whep_plays_and_calls_pulls_the_whip_tracks() {
    let node = start_node(&[]);
    let api = node.client();
    let publisher = start(&api, &node, "whip", "live").await;
    let viewer = start(&api, &node, "whep", "live").await;
    wait_media(&viewer.peer, &viewer.mids).await;

    // The WHIP session is a Calls session: pull its video by name.
    let list = streams(&api).await;
    let s = &list["streams"][0];
    assert_eq!(s["id"], json!("live"));
    assert_eq!(
        s["publisher"]["sessionId"],
        json!(publisher.session_id()),
        "{list}"
    );
    assert_eq!(s["publisher"]["tracks"], json!(["audio", "video"]));
    assert_eq!(s["publisher"]["node"], json!(node.node_id()));
    assert_eq!(s["subscribers"].as_array().map(Vec::len), Some(1), "{list}");
    let sub = api.sessions_new().await.expect("sessions/new").session_id;
    let peer = Peer::new("calls-sub").expect("peer");
    let pulled = peer
        .pull(&api, &sub, &[(publisher.session_id(), "video")])
        .await
        .expect("pull");
    let mid = pulled.tracks[0].mid.clone().expect("a mid");
    peer.wait_connected(CONNECT_TIMEOUT)
        .await
        .expect("connects");
    wait_media(&peer, &[mid]).await;

    // Counts show in the list once str0m has reported them (every 2 s).
    let deadline = std::time::Instant::now() + MEDIA_TIMEOUT;
    loop {
        let list = streams(&api).await;
        let s = &list["streams"][0];
        if s["publisher"]["packetsIn"].as_u64() > Some(0)
            && s["subscribers"][0]["packetsOut"].as_u64() > Some(0)
        {
            assert_eq!(s["publisher"]["state"], json!("connected"));
            assert!(s["codecs"].as_array().is_some_and(|c| !c.is_empty()), "{s}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no counts: {list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_comes_first_plays_when_the_publisher_starts() {
    let node = start_node(&[]);
    let api = node.client();
    let viewer = start(&api, &node, "whep", "early").await;
    let _publisher = start(&api, &node, "whip", "early").await;
    wait_media(&viewer.peer, &viewer.mids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_publisher_bound_to_a_stream_plays_on_whep() {
    let node = start_node(&[]);
    let api = node.client();
    let p = Publisher::start_av(&api, "cam").await.expect("publisher");
    let names: Vec<String> = p.tracks.iter().map(|t| t.track_name.clone()).collect();
    let (status, body) = api
        .raw(
            Method::PUT,
            "streams/studio/publisher",
            Some(json!({"sessionId": p.session_id, "tracks": names})),
        )
        .await
        .expect("bind");
    assert_eq!(status, 200, "{body}");
    let viewer = start(&api, &node, "whep", "studio").await;
    wait_media(&viewer.peer, &viewer.mids).await;

    // A second WHIP publisher for a bound stream is refused.
    let peer = Peer::new("late").expect("peer");
    let (_, offer) = peer
        .create_send_offer(&[MediaKind::Video])
        .await
        .expect("offer");
    let r = send(&api, Method::POST, "whip/studio", &[], &offer, Some(SDP)).await;
    assert_problem(&r, 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_trickles_checks_the_etag_restarts_ice_and_delete_ends() {
    let node = start_node(&["--app", "otherapp:othersecret"]);
    let api = node.client();
    let p = start(&api, &node, "whip", "p").await;
    let frag = "a=ice-ufrag:zz\r\na=ice-pwd:abcdefabcdefabcdefabcdef\r\n\
                a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";
    let r = send(&api, Method::PATCH, &p.location, &[], frag, Some(SDP)).await;
    assert_problem(&r, 415);
    let r = send(
        &api,
        Method::PATCH,
        &p.location,
        &[("if-match", "\"not-it\"")],
        frag,
        Some(SDPFRAG),
    )
    .await;
    assert_problem(&r, 412);
    let r = send(
        &api,
        Method::PATCH,
        &p.location,
        &[],
        "a=candidate:junk\r\n",
        Some(SDPFRAG),
    )
    .await;
    assert_problem(&r, 400);
    // Candidates only: a trickle.
    let trickle = "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";
    let r = send(
        &api,
        Method::PATCH,
        &p.location,
        &[("if-match", &p.etag)],
        trickle,
        Some(SDPFRAG),
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text);

    // Another app's bearer on this session URL: as if it did not exist.
    let other = api.with_base(&format!("{}/v1/apps/otherapp", node.http_url()));
    let other = other.with_secret("othersecret");
    let foreign = p.location.replace(node.app_id(), "otherapp");
    let r = send(&other, Method::PATCH, &foreign, &[], trickle, Some(SDPFRAG)).await;
    assert_problem(&r, 404);
    let r = send(&other, Method::DELETE, &foreign, &[], "", None).await;
    assert_problem(&r, 404);

    // New credentials: an ICE restart, answered with the server's sdpfrag and a new ETag.
    let r = send(
        &api,
        Method::PATCH,
        &p.location,
        &[("if-match", "*")],
        frag,
        Some(SDPFRAG),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("content-type").as_deref(), Some(SDPFRAG));
    assert!(
        r.text.contains("a=ice-ufrag:") && r.text.contains("a=ice-pwd:"),
        "{}",
        r.text
    );
    let etag = r.header("etag").expect("a new ETag");
    assert_ne!(etag, p.etag);

    let r = send(&api, Method::DELETE, &p.location, &[], "", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = send(&api, Method::DELETE, &p.location, &[], "", None).await;
    assert_problem(&r, 410);
    assert_eq!(
        streams(&api).await["streams"],
        json!([]),
        "the auto-created stream went"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_problems_with_their_status() {
    let node = start_node(&[
        "--whep-auto-create",
        "false",
        "--max-sessions",
        "3",
        "--max-sessions-per-app",
        "10",
    ]);
    let api = node.client();
    let peer = Peer::new("bad").expect("peer");
    let (_, offer) = peer
        .create_send_offer(&[MediaKind::Audio, MediaKind::Video])
        .await
        .expect("offer");
    peer.drop_pending_offer().await.expect("drop");

    let no_bearer = api
        .request(
            Method::POST,
            "whip/s",
            None,
            &[],
            RawBody::Bytes(offer.as_bytes().to_vec(), Some(SDP.into())),
        )
        .await
        .expect("request");
    assert_problem(&no_bearer, 401);
    let wrong = api.with_secret("wrong");
    let r = send(&wrong, Method::POST, "whip/s", &[], &offer, Some(SDP)).await;
    assert_problem(&r, 401);
    let r = send(
        &api,
        Method::POST,
        "whip/s",
        &[],
        &offer,
        Some("application/json"),
    )
    .await;
    assert_problem(&r, 415);
    let r = send(
        &api,
        Method::POST,
        "whip/s",
        &[],
        "v=0\r\nbanana\r\n",
        Some(SDP),
    )
    .await;
    assert_problem(&r, 400);
    let r = send(
        &api,
        Method::POST,
        "whip/bad%2Fname",
        &[],
        &offer,
        Some(SDP),
    )
    .await;
    assert_problem(&r, 400);

    // An SDP with no media, and one with 1,000 m-lines (refused before it is parsed).
    let head: String = offer
        .split("\r\nm=")
        .next()
        .map(|h| format!("{h}\r\n"))
        .expect("session part");
    let r = send(&api, Method::POST, "whip/s", &[], &head, Some(SDP)).await;
    assert_problem(&r, 400);
    let mut huge = head.clone();
    for i in 0..1000 {
        huge.push_str(&format!(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:{i}\r\na=sendonly\r\na=rtpmap:111 opus/48000/2\r\n"
        ));
    }
    let r = send(&api, Method::POST, "whip/s", &[], &huge, Some(SDP)).await;
    assert_problem(&r, 400);
    assert!(
        r.json["detail"].as_str().is_some_and(|d| d.contains("m-")),
        "{}",
        r.text
    );

    // No codec in common: every codec renamed to one the SFU does not know.
    let alien: String = offer
        .lines()
        .map(
            |l| match l.strip_prefix("a=rtpmap:").and_then(|r| r.split_once(' ')) {
                Some((pt, codec)) => {
                    let rate = codec.split_once('/').map(|(_, r)| r).unwrap_or("90000");
                    format!("a=rtpmap:{pt} x-alien/{rate}\r\n")
                }
                None => format!("{l}\r\n"),
            },
        )
        .collect();
    let r = send(&api, Method::POST, "whip/s", &[], &alien, Some(SDP)).await;
    assert_problem(&r, 422);

    // WHEP with sending sections is not a viewer's offer.
    let r = send(&api, Method::POST, "whep/s", &[], &offer, Some(SDP)).await;
    assert_problem(&r, 400);
    // With auto-create off, an unknown stream is 404 ...
    let viewer = Peer::new("v").expect("peer");
    let (_, recv) = viewer
        .create_recv_offer(&[MediaKind::Video])
        .await
        .expect("offer");
    viewer.drop_pending_offer().await.expect("drop");
    let r = send(&api, Method::POST, "whep/nobody", &[], &recv, Some(SDP)).await;
    assert_problem(&r, 404);
    // ... and a created one takes viewers before its publisher.
    let (status, _) = api
        .raw(Method::POST, "streams/made", None)
        .await
        .expect("create");
    assert_eq!(status, 201);
    let r = send(&api, Method::POST, "whep/made", &[], &offer, Some(SDP)).await;
    assert_problem(&r, 400);
    let r = send(&api, Method::POST, "whep/made", &[], &recv, Some(SDP)).await;
    assert_eq!(r.status, 201, "{}", r.text);

    // A publisher, then a second one: 409.
    let r = send(&api, Method::POST, "whip/made", &[], &offer, Some(SDP)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = send(&api, Method::POST, "whip/made", &[], &offer, Some(SDP)).await;
    assert_problem(&r, 409);
    // The node holds --max-sessions 3: a fourth session is 503.
    let r = send(&api, Method::POST, "whip/third", &[], &offer, Some(SDP)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = send(&api, Method::POST, "whip/fourth", &[], &offer, Some(SDP)).await;
    assert_problem(&r, 503);

    // DELETE streams/{id} ends its sessions.
    let (status, _) = api
        .raw(Method::DELETE, "streams/made", None)
        .await
        .expect("delete");
    assert_eq!(status, 200);
    let names: Vec<Value> = streams(&api).await["streams"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|s| s["id"].clone())
        .collect();
    assert_eq!(names, vec![json!("third")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_is_rate_limited_per_app() {
    let node = start_node(&["--session-rate-app", "1"]);
    let api = node.client();
    let peer = Peer::new("rate").expect("peer");
    let (_, offer) = peer
        .create_send_offer(&[MediaKind::Video])
        .await
        .expect("offer");
    let mut statuses = Vec::new();
    for i in 0..3 {
        let r = send(
            &api,
            Method::POST,
            &format!("whip/r{i}"),
            &[],
            &offer,
            Some(SDP),
        )
        .await;
        if r.status == 429 {
            assert_problem(&r, 429);
            assert!(r.header("retry-after").is_some());
        }
        statuses.push(r.status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_and_cors_expose_what_whip_clients_read() {
    let node = start_node(&[]);
    let api = node.client();
    let r = api
        .request(Method::OPTIONS, "whip/s", None, &[], RawBody::None)
        .await
        .expect("OPTIONS");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("accept-post").as_deref(), Some(SDP));
    let r = api
        .request(
            Method::OPTIONS,
            "whep/s",
            None,
            &[
                ("origin", "https://player.example"),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization, content-type",
                ),
            ],
            RawBody::None,
        )
        .await
        .expect("preflight");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("accept-post").as_deref(), Some(SDP));
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("https://player.example")
    );
    let r = api
        .request(Method::OPTIONS, "whip/s/0123", None, &[], RawBody::None)
        .await
        .expect("OPTIONS on a session URL");
    assert_eq!(r.header("accept-patch").as_deref(), Some(SDPFRAG));
    let peer = Peer::new("cors").expect("peer");
    let (_, offer) = peer
        .create_send_offer(&[MediaKind::Video])
        .await
        .expect("offer");
    let r = send(
        &api,
        Method::POST,
        "whip/s",
        &[("origin", "https://player.example")],
        &offer,
        Some(SDP),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let exposed = r.header_all("access-control-expose-headers").to_lowercase();
    for h in ["location", "etag", "link"] {
        assert!(exposed.contains(h), "{exposed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_create_off_body_limit_and_drain_are_problems() {
    let node = start_node(&[
        "--whip-auto-create",
        "false",
        "--max-body",
        "20000",
        "--admin-token",
        "whip-admin",
    ]);
    let api = node.client();
    let peer = Peer::new("drain").expect("peer");
    let (_, offer) = peer
        .create_send_offer(&[MediaKind::Audio, MediaKind::Video])
        .await
        .expect("offer");
    let r = send(&api, Method::POST, "whip/nobody", &[], &offer, Some(SDP)).await;
    assert_problem(&r, 404);
    let padded = format!("{offer}{}", "a=x-pad:0123456789\r\n".repeat(1500));
    let r = send(&api, Method::POST, "whip/nobody", &[], &padded, Some(SDP)).await;
    assert_problem(&r, 413);

    let (status, _) = api
        .raw(Method::POST, "streams/made", None)
        .await
        .expect("create");
    assert_eq!(status, 201);
    let drain = api
        .request(
            Method::POST,
            &format!("{}/admin/drain/{}", node.http_url(), node.node_id()),
            Some("whip-admin"),
            &[],
            RawBody::None,
        )
        .await
        .expect("drain");
    assert_eq!(drain.status, 200, "{}", drain.text);
    let r = send(&api, Method::POST, "whip/made", &[], &offer, Some(SDP)).await;
    assert_problem(&r, 503);
    assert!(r.header("retry-after").is_some());
}
