//! WHIP and WHEP on one node: real str0m clients publish and play through the endpoints, media
//! is shown to arrive, and every refusal is an RFC 9457 problem with the documented status.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use trackmesh_tests::flows::{CONNECT_TIMEOUT, MEDIA_TIMEOUT};
use trackmesh_tests::whip::{
    SDP, SDPFRAG, assert_problem, send, start_endpoint as start, start_node, wait_media,
};
use trackmesh_tests::{CallsClient, MediaKind, Peer, Publisher, RawBody};

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
    // The WHEP client offered receive-only sections: without `--bwe` the node answers them
    // without transport-wide sequence numbers.
    let stats = viewer.peer.stats();
    for m in &viewer.mids {
        let t = stats.rx.get(m.as_str()).expect("a received track");
        assert_eq!(
            t.twcc_frames, 0,
            "mid {m}: {} of {} frames carried a transport-wide sequence number",
            t.twcc_frames, t.frames
        );
    }
    // No TURN key: no STUN/TURN server to name, so no `Link` (the node is ICE-lite).
    assert_eq!(publisher.links, Vec::<String>::new());
    assert_eq!(viewer.links, Vec::<String>::new());

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
    // What a bind names is echoed in its errors: bounded before anything is looked up.
    for bad in [
        json!({"sessionId": "A".repeat(100_000), "tracks": names}),
        json!({"sessionId": p.session_id, "tracks": ["t".repeat(100_000)]}),
        json!({"sessionId": p.session_id, "tracks": vec!["t"; 65]}),
        // Beyond what gossip carries to the other nodes.
        json!({"sessionId": p.session_id, "tracks": ["camera 1"]}),
        json!({"sessionId": p.session_id, "tracks": vec!["t"; 9]}),
    ] {
        let (status, body) = api
            .raw(Method::PUT, "streams/other/publisher", Some(bad))
            .await
            .expect("bind");
        assert_eq!(status, 400, "{body}");
        assert!(body.to_string().len() < 1024, "{body}");
    }
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
    // Again, as a client that also closed its peer connection may: the session is gone, which
    // is what DELETE asks for (idempotent, RFC 9110 §9.2.2).
    let r = send(&api, Method::DELETE, &p.location, &[], "", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Ended, it is still none of another app's business.
    let r = send(&other, Method::DELETE, &foreign, &[], "", None).await;
    assert_problem(&r, 404);
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
    // RFC 9110 §15.5.2: a 401 carries its challenge (RFC 6750: Bearer).
    for r in [&no_bearer, &r] {
        assert_eq!(
            r.headers
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer realm=\"trackmesh\""),
            "{:?}",
            r.headers
        );
    }
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

/// `<url>; rel="ice-server"; k="v"; ...` → (url, every parameter with its quotes removed).
fn parse_link(link: &str) -> (String, std::collections::BTreeMap<String, String>) {
    let mut parts = link.split(';').map(str::trim);
    let url = parts
        .next()
        .and_then(|u| u.strip_prefix('<'))
        .and_then(|u| u.strip_suffix('>'))
        .unwrap_or_else(|| panic!("no <url> in {link}"))
        .to_string();
    let params = parts
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .unwrap_or_else(|| panic!("parameter {p} in {link}"));
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or_else(|| panic!("unquoted {p} in {link}"));
            (k.to_string(), v.to_string())
        })
        .collect();
    (url, params)
}

/// With a TURN key, every WHIP/WHEP 201 names the node's STUN and TURN URLs in `Link` headers
/// (RFC 9725 §4.6) with a credential of its own that the TURN server accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_turn_key_the_answers_link_stun_and_turn_with_fresh_credentials() {
    use base64::Engine as _;
    let port = trackmesh_tests::node::free_udp_tcp_port()
        .expect("a free port")
        .to_string();
    let node = start_node(&[
        "--turn-key",
        "linkkey:link-secret",
        "--turn-key",
        "other:other-secret",
        "--turn-port",
        &port,
    ]);
    let api = node.client();
    let publisher = start(&api, &node, "whip", "linked").await;
    let viewer = start(&api, &node, "whep", "linked").await;
    wait_media(&viewer.peer, &viewer.mids).await;

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let hmac = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        b"link-secret",
    );
    let mut usernames = Vec::new();
    for (what, links) in [("WHIP", &publisher.links), ("WHEP", &viewer.links)] {
        assert_eq!(
            links.len(),
            3,
            "{what}: STUN, TURN/UDP, TURN/TCP: {links:?}"
        );
        let (stun, params) = parse_link(&links[0]);
        assert_eq!(stun, format!("stun:127.0.0.1:{port}"), "{what}");
        assert_eq!(
            params.into_iter().collect::<Vec<_>>(),
            vec![("rel".to_string(), "ice-server".to_string())],
            "{what}: STUN has no credential"
        );
        let (udp, udp_params) = parse_link(&links[1]);
        let (tcp, tcp_params) = parse_link(&links[2]);
        assert_eq!(
            udp,
            format!("turn:127.0.0.1:{port}?transport=udp"),
            "{what}"
        );
        assert_eq!(
            tcp,
            format!("turn:127.0.0.1:{port}?transport=tcp"),
            "{what}"
        );
        assert_eq!(udp_params, tcp_params, "{what}: one credential for both");
        let p = |k: &str| {
            udp_params
                .get(k)
                .unwrap_or_else(|| panic!("{what}: no {k} in {links:?}"))
                .as_str()
        };
        assert_eq!(p("rel"), "ice-server");
        assert_eq!(p("credential-type"), "password");
        // The first key's credential, valid for the documented 12 hours: what the TURN server
        // checks (base64(HMAC-SHA1(secret, username))), so it lets this client allocate.
        let username = p("username");
        let (expiry, rest) = username.split_once(':').expect("{expiry}:{key}:…");
        let expiry: u64 = expiry.parse().expect("a unix time");
        assert!(
            (now + 12 * 3600 - 60..=now + 12 * 3600 + 60).contains(&expiry),
            "{what}: {username} expires in 12 h"
        );
        assert!(rest.starts_with("linkkey:"), "{what}: {username}");
        let want = base64::engine::general_purpose::STANDARD
            .encode(aws_lc_rs::hmac::sign(&hmac, username.as_bytes()));
        assert_eq!(p("credential"), want, "{what}");
        usernames.push(username.to_string());
    }
    assert_ne!(
        usernames[0], usernames[1],
        "each answer has a fresh credential"
    );
}

/// `POST tokens` on `api`'s app with its secret: the token.
async fn mint_token(api: &CallsClient, stream: &str, mode: &str) -> String {
    let r = api
        .request(
            Method::POST,
            "tokens",
            Some(api.secret()),
            &[],
            RawBody::Json(json!({"stream": stream, "mode": mode, "ttlSeconds": 600})),
        )
        .await
        .unwrap_or_else(|e| panic!("POST tokens: {e:#}"));
    assert_eq!(r.status, 201, "{}", r.text);
    r.json["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {}", r.text))
        .to_string()
}

/// Stream tokens on the wire: a token opens exactly the streams and directions it names, for its
/// app and lifetime, and the session URL it created takes PATCH and DELETE with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_tokens_open_their_stream_and_direction_only() {
    let node = start_node(&["--app", "otherapp:othersecret"]);
    let api = node.client();
    let publish_cam = mint_token(&api, "cam", "publish").await;
    let subscribe_cam = mint_token(&api, "cam", "subscribe").await;
    let publish_other = mint_token(&api, "other", "publish").await;
    let any_both = mint_token(&api, "*", "both").await;
    let other_app = api
        .with_base(&format!("{}/v1/apps/otherapp", node.http_url()))
        .with_secret("othersecret");
    let foreign = mint_token(&other_app, "cam", "publish").await;
    // Signed with this app's secret, for this app and stream, but an hour past its end.
    let expired = trackmesh_tokens::mint(
        node.app_secret().as_bytes(),
        node.app_id(),
        "cam",
        trackmesh_tokens::Mode::Publish,
        Duration::from_secs(60),
        trackmesh_tokens::unix_now() - 3600,
    )
    .expect("mint")
    .token;

    // Refusals first, so the stream has no publisher yet and none is left behind.
    let peer = Peer::new("token-refused").expect("peer");
    let (_, send_offer) = peer
        .create_send_offer(&[MediaKind::Audio, MediaKind::Video])
        .await
        .expect("offer");
    peer.drop_pending_offer().await.expect("drop");
    let (_, recv_offer) = peer
        .create_recv_offer(&[MediaKind::Audio, MediaKind::Video])
        .await
        .expect("offer");
    peer.drop_pending_offer().await.expect("drop");
    for (token, path, offer, status, what) in [
        (
            &publish_cam,
            "whep/cam",
            &recv_offer,
            403,
            "a publish token plays",
        ),
        (
            &subscribe_cam,
            "whip/cam",
            &send_offer,
            403,
            "a subscribe token publishes",
        ),
        (
            &publish_other,
            "whip/cam",
            &send_offer,
            403,
            "a token of another stream",
        ),
        (&expired, "whip/cam", &send_offer, 401, "an expired token"),
        (
            &foreign,
            "whip/cam",
            &send_offer,
            401,
            "another app's token",
        ),
        (
            &"not.a.token".to_string(),
            "whip/cam",
            &send_offer,
            401,
            "garbage",
        ),
    ] {
        let r = send(
            &api.with_secret(token),
            Method::POST,
            path,
            &[],
            offer,
            Some(SDP),
        )
        .await;
        assert_eq!(r.status, status, "{what}: {}", r.text);
        assert_problem(&r, status);
    }
    assert_eq!(
        streams(&api).await["streams"],
        json!([]),
        "no refusal made a stream"
    );

    // A publish token publishes, a subscribe token plays, a `*` token does both on any stream.
    let as_publisher = api.with_secret(&publish_cam);
    let publisher = start(&as_publisher, &node, "whip", "cam").await;
    let viewer = start(&api.with_secret(&subscribe_cam), &node, "whep", "cam").await;
    wait_media(&viewer.peer, &viewer.mids).await;
    let as_any = api.with_secret(&any_both);
    let any_viewer = start(&as_any, &node, "whep", "cam").await;
    wait_media(&any_viewer.peer, &any_viewer.mids).await;
    let any_publisher = start(&as_any, &node, "whip", "elsewhere").await;

    // The session URL takes the token that made it: a trickle (204) and DELETE (200). The other
    // direction's token is refused there (403).
    let trickle = "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n";
    let r = send(
        &api.with_secret(&subscribe_cam),
        Method::PATCH,
        &publisher.location,
        &[],
        trickle,
        Some(SDPFRAG),
    )
    .await;
    assert_problem(&r, 403);
    let r = send(
        &as_publisher,
        Method::PATCH,
        &publisher.location,
        &[],
        trickle,
        Some(SDPFRAG),
    )
    .await;
    assert_eq!(r.status, 204, "PATCH with the publish token: {}", r.text);
    let r = send(
        &as_any,
        Method::PATCH,
        &any_viewer.location,
        &[],
        trickle,
        Some(SDPFRAG),
    )
    .await;
    assert_eq!(r.status, 204, "PATCH with the * token: {}", r.text);
    let r = send(&as_any, Method::DELETE, &any_viewer.location, &[], "", None).await;
    assert_eq!(r.status, 200, "DELETE with the * token: {}", r.text);
    let r = send(
        &as_any,
        Method::DELETE,
        &any_publisher.location,
        &[],
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "DELETE with the * token: {}", r.text);
    let r = send(
        &as_publisher,
        Method::DELETE,
        &publisher.location,
        &[],
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "DELETE with the publish token: {}", r.text);
    let r = send(
        &as_publisher,
        Method::DELETE,
        &publisher.location,
        &[],
        "",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "DELETE again (idempotent): {}", r.text);
    drop(viewer);
}

/// The router's own errors (a path or query it cannot read, a method it does not serve there)
/// are problems under the WHIP, WHEP and streams paths, and Calls errors elsewhere; axum's plain
/// text never reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routers_own_errors_follow_the_error_model_of_their_path() {
    let node = start_node(&[]);
    let api = node.client();
    let bad_app = api.with_base(&api.base().replace(node.app_id(), "%FF"));
    let r = send(&bad_app, Method::POST, "whip/s", &[], "v=0\r\n", Some(SDP)).await;
    assert_problem(&r, 400);
    let r = bad_app
        .request(
            Method::POST,
            "sessions/new",
            Some(api.secret()),
            &[],
            RawBody::None,
        )
        .await
        .expect("request");
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.error_code(), Some("decoding_error"), "{}", r.text);
    let r = api
        .request(
            Method::GET,
            "whip/s",
            Some(api.secret()),
            &[],
            RawBody::None,
        )
        .await
        .expect("request");
    assert_problem(&r, 405);
    let r = api
        .request(
            Method::DELETE,
            "streams/s/cascade?direction=a&direction=b",
            Some(api.secret()),
            &[],
            RawBody::None,
        )
        .await
        .expect("request");
    assert_problem(&r, 400);
    assert!(
        !r.text.contains("direction"),
        "the extractor's text is not passed on: {}",
        r.text
    );
    // Outside those paths the Calls model stays.
    let r = api
        .request(
            Method::GET,
            "no/such/path",
            Some(api.secret()),
            &[],
            RawBody::None,
        )
        .await
        .expect("request");
    assert_eq!(r.status, 405, "{}", r.text);
    assert_eq!(r.error_code(), Some("method_not_allowed"), "{}", r.text);
    // The WebSocket upgrade's refusal keeps its own words (they name the missing header).
    let ws = reqwest::Client::new()
        .get(format!("{}/v1/ws", node.http_url()))
        .send()
        .await
        .expect("GET /v1/ws");
    assert!(ws.status().is_client_error(), "{}", ws.status());
    let text = ws.text().await.expect("body");
    assert!(!text.contains("decoding_error"), "{text}");
}

/// Streams made with `POST streams/{id}` stay until deleted, so each app may hold only its share
/// of the node's table: one app filling it must not lock the others out of WHIP and WHEP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_explicit_streams_are_capped_and_leave_room_for_others() {
    // The node's own app and 9 more: each may hold 10,000 / 11 = 909 explicit streams.
    let extra: Vec<String> = (1..=9)
        .flat_map(|i| ["--app".to_string(), format!("a{i}:secret-{i}")])
        .collect();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let node = start_node(&extra);
    let a1 = CallsClient::new(&format!("{}/v1/apps/a1", node.http_url()), "secret-1");
    for i in 0..909 {
        let (status, v) = a1
            .raw(Method::POST, &format!("streams/s{i}"), None)
            .await
            .expect("create");
        assert_eq!(status, 201, "stream {i}: {v}");
    }
    let (status, v) = a1
        .raw(Method::POST, "streams/one-more", None)
        .await
        .expect("create");
    assert_eq!(
        (status, v["type"].as_str()),
        (429, Some("urn:trackmesh:problem:rate-limited")),
        "{v}"
    );
    let (status, _) = a1
        .raw(Method::POST, "streams/s0", None)
        .await
        .expect("create again");
    assert_eq!(status, 200, "one it holds is no new one");

    // Another app still makes streams, and publishes with WHIP.
    let api = node.client();
    let (status, _) = api
        .raw(Method::POST, "streams/mine", None)
        .await
        .expect("create");
    assert_eq!(status, 201);
    let peer = Peer::new("p").expect("peer");
    let (_, offer) = peer
        .create_send_offer(&[MediaKind::Audio])
        .await
        .expect("offer");
    let r = send(&api, Method::POST, "whip/live", &[], &offer, Some(SDP)).await;
    assert_eq!(r.status, 201, "{}", r.text);

    // A deleted one makes room.
    let (status, _) = a1
        .raw(Method::DELETE, "streams/s0", None)
        .await
        .expect("delete");
    assert_eq!(status, 200);
    let (status, _) = a1
        .raw(Method::POST, "streams/one-more", None)
        .await
        .expect("create");
    assert_eq!(status, 201);
}
