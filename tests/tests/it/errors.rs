//! Error model and HTTP edge cases of the Calls API (spec §4, CONTRACT.md).

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use trackmesh_tests::node::random_hex32;
use trackmesh_tests::{CallsClient, MediaKind, Peer, Publisher, RawBody, RawResponse, TestNode};

fn start_node(args: &[&str]) -> TestNode {
    TestNode::start(args).expect("starting the trackmesh node")
}

/// The response is `status` with a JSON body `{errorCode: code, errorDescription: string}`.
#[track_caller]
fn assert_error(r: &RawResponse, status: u16, code: &str) {
    assert_eq!(r.status, status, "HTTP status; body: {}", r.text);
    assert!(
        r.json.is_object(),
        "error body must be a JSON object, got: {:?}",
        r.text
    );
    assert_eq!(r.error_code(), Some(code), "errorCode; body: {}", r.text);
    assert!(
        r.json.get("errorDescription").is_some_and(Value::is_string),
        "errorDescription must be a string; body: {}",
        r.text
    );
}

async fn req(api: &CallsClient, method: Method, path: &str, body: RawBody) -> RawResponse {
    api.request(method.clone(), path, Some(api.secret()), &[], body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
}

async fn new_session(api: &CallsClient) -> String {
    api.sessions_new().await.expect("sessions/new").session_id
}

fn text(s: &str, content_type: Option<&str>) -> RawBody {
    RawBody::Bytes(s.as_bytes().to_vec(), content_type.map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_new_status_and_id_shape() {
    let node = start_node(&[]);
    let api = node.client();
    let r = req(&api, Method::POST, "sessions/new", RawBody::None).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["sessionId"].as_str().expect("sessionId string");
    assert_eq!(id.len(), 32, "{id}");
    assert!(
        id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
        "{id}"
    );
    let again = new_session(&api).await;
    assert_ne!(id, again, "session ids are unique");
    // The new session is visible, with no tracks.
    let st = api.get_session(id).await.expect("GET the new session");
    assert!(st.tracks.is_empty(), "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_json_and_wrong_types_are_decoding_errors() {
    let node = start_node(&[]);
    let api = node.client();
    let sid = new_session(&api).await;

    let r = req(
        &api,
        Method::POST,
        "sessions/new",
        text("{not json", Some("application/json")),
    )
    .await;
    assert_error(&r, 400, "decoding_error");

    let path = format!("sessions/{sid}/tracks/new");
    let r = req(
        &api,
        Method::POST,
        &path,
        text("{\"tracks\": [", Some("application/json")),
    )
    .await;
    assert_error(&r, 400, "decoding_error");

    let r = req(
        &api,
        Method::POST,
        &path,
        RawBody::Json(json!({"tracks": "nope"})),
    )
    .await;
    assert_error(&r, 400, "decoding_error");

    let r = req(
        &api,
        Method::PUT,
        &format!("sessions/{sid}/renegotiate"),
        RawBody::Json(json!({"sessionDescription": {"type": 5}})),
    )
    .await;
    assert_error(&r, 400, "decoding_error");
}

/// A misspelled required field (`trackname`) is a validation error: 400 decoding_error, as in
/// the real service (spec §3.2, cloudflare/meet#168), not a per-item error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misspelled_track_field_is_decoding_error() {
    let node = start_node(&[]);
    let api = node.client();
    let sid = new_session(&api).await;
    let path = format!("sessions/{sid}/tracks/new");
    let r = req(
        &api,
        Method::POST,
        &path,
        RawBody::Json(
            json!({"tracks": [{"location": "remote", "sessionId": sid, "trackname": "x"}]}),
        ),
    )
    .await;
    assert_error(&r, 400, "decoding_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_object_on_sessions_new_is_rejected() {
    let node = start_node(&[]);
    let api = node.client();
    let r = req(&api, Method::POST, "sessions/new", RawBody::Json(json!({}))).await;
    assert_error(&r, 400, "decoding_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_without_json_content_type_is_parsed() {
    let node = start_node(&[]);
    let api = node.client();
    let sid = new_session(&api).await;
    let missing = random_hex32();
    let body = json!({"tracks": [{"location": "remote", "sessionId": sid, "trackName": "nobody"}]})
        .to_string();
    for ct in [Some("text/plain;charset=UTF-8"), None] {
        let r = req(
            &api,
            Method::POST,
            &format!("sessions/{sid}/tracks/new"),
            text(&body, ct),
        )
        .await;
        assert_eq!(r.status, 200, "content type {ct:?}: {}", r.text);
        let item = &r.json["tracks"][0];
        assert_eq!(item["trackName"], "nobody", "the body was read: {}", r.text);
        assert_eq!(item["errorCode"], "not_found_track_error", "{}", r.text);
    }

    // A publish offer as text/plain gets an answer.
    let peer = Peer::new("textplain").expect("peer");
    let (mids, offer) = peer
        .create_send_offer(&[MediaKind::Audio])
        .await
        .expect("offer");
    let body = json!({
        "sessionDescription": {"type": "offer", "sdp": offer},
        "tracks": [{"location": "local", "mid": mids[0], "trackName": format!("mic-{missing}")}]
    })
    .to_string();
    let r = req(
        &api,
        Method::POST,
        &format!("sessions/{sid}/tracks/new"),
        text(&body, Some("text/plain;charset=UTF-8")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["sessionDescription"]["type"], "answer", "{}", r.text);
    let sdp = r.json["sessionDescription"]["sdp"]
        .as_str()
        .expect("answer sdp");
    peer.accept_answer(sdp)
        .await
        .expect("the answer is valid SDP for the offer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_and_query_params_are_ignored() {
    let node = start_node(&[]);
    let api = node.client();
    let r = req(
        &api,
        Method::POST,
        "sessions/new?correlationId=meeting-1&streamDebug&forceTracing=true&SESSION",
        RawBody::None,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let sid = r.json["sessionId"].as_str().expect("sessionId").to_string();

    let r = req(
        &api,
        Method::POST,
        &format!("sessions/{sid}/tracks/new?PULLING&correlationId=x"),
        RawBody::Json(json!({
            "someFutureField": {"nested": [1, 2, 3]},
            "tracks": [{"location": "remote", "sessionId": sid, "trackName": "t", "extra": true}]
        })),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["tracks"][0]["trackName"], "t", "{}", r.text);

    let r = req(
        &api,
        Method::GET,
        &format!("sessions/{sid}?correlationId=x"),
        RawBody::None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.json["tracks"].is_array(), "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_missing_bearer_is_unauthorized() {
    let node = start_node(&[]);
    let api = node.client();
    let sid = new_session(&api).await;
    let r = api
        .request(
            Method::POST,
            "sessions/new",
            Some("wrong-secret"),
            &[],
            RawBody::None,
        )
        .await
        .expect("request");
    assert_error(&r, 401, "unauthorized");
    let r = api
        .request(
            Method::GET,
            &format!("sessions/{sid}"),
            None,
            &[],
            RawBody::None,
        )
        .await
        .expect("request");
    assert_error(&r, 401, "unauthorized");
    let r = api
        .request(
            Method::GET,
            &format!("sessions/{sid}"),
            None,
            &[("authorization", &format!("Basic {}", node.app_secret()))],
            RawBody::None,
        )
        .await
        .expect("request");
    assert_error(&r, 401, "unauthorized");
    // The right secret still works.
    let r = req(&api, Method::GET, &format!("sessions/{sid}"), RawBody::None).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_app_is_not_found() {
    let node = start_node(&[]);
    let other = node
        .client()
        .with_base(&format!("{}/v1/apps/{}", node.http_url(), random_hex32()));
    let r = req(&other, Method::POST, "sessions/new", RawBody::None).await;
    assert_error(&r, 404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_session_is_not_found() {
    let node = start_node(&[]);
    let api = node.client();
    let unknown = random_hex32();
    let r = req(
        &api,
        Method::GET,
        &format!("sessions/{unknown}"),
        RawBody::None,
    )
    .await;
    assert_error(&r, 404, "not_found");
    let r = req(
        &api,
        Method::POST,
        &format!("sessions/{unknown}/tracks/new"),
        RawBody::Json(
            json!({"tracks": [{"location": "remote", "sessionId": unknown, "trackName": "x"}]}),
        ),
    )
    .await;
    assert_error(&r, 404, "not_found");
    let r = req(
        &api,
        Method::PUT,
        &format!("sessions/{unknown}/tracks/close"),
        RawBody::Json(json!({"tracks": [{"mid": "0"}], "force": true})),
    )
    .await;
    assert_error(&r, 404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_of_unknown_track_is_an_item_error() {
    let node = start_node(&[]);
    let api = node.client();
    let publisher_session = new_session(&api).await;
    let sid = new_session(&api).await;
    let unknown_session = random_hex32();
    let r = req(
        &api,
        Method::POST,
        &format!("sessions/{sid}/tracks/new"),
        RawBody::Json(json!({"tracks": [
            {"location": "remote", "sessionId": publisher_session, "trackName": "no-such-track"},
            {"location": "remote", "sessionId": unknown_session, "trackName": "cam"}
        ]})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let items = r.json["tracks"].as_array().expect("tracks array");
    assert_eq!(items.len(), 2, "{}", r.text);
    for (item, (s, t)) in items.iter().zip([
        (&publisher_session, "no-such-track"),
        (&unknown_session, "cam"),
    ]) {
        assert_eq!(item["sessionId"], s.as_str(), "{}", r.text);
        assert_eq!(item["trackName"], t, "{}", r.text);
        assert_eq!(item["mid"], "", "failed items carry mid \"\": {}", r.text);
        assert_eq!(item["errorCode"], "not_found_track_error", "{}", r.text);
        assert!(item["errorDescription"].is_string(), "{}", r.text);
    }
    // Every item failed: nothing to negotiate.
    assert_ne!(r.json["requiresImmediateRenegotiation"], true, "{}", r.text);
    assert!(
        r.json.get("sessionDescription").is_none_or(Value::is_null),
        "{}",
        r.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn track_count_limit_is_64_per_call() {
    let node = start_node(&[]);
    let api = node.client();
    let sid = new_session(&api).await;
    let tracks = |n: usize| -> Value {
        let items: Vec<Value> = (0..n)
            .map(|i| json!({"location": "remote", "sessionId": sid, "trackName": format!("t{i}")}))
            .collect();
        json!({ "tracks": items })
    };
    let path = format!("sessions/{sid}/tracks/new");
    let r = req(&api, Method::POST, &path, RawBody::Json(tracks(65))).await;
    assert_error(&r, 406, "invalid_params");
    let r = req(&api, Method::POST, &path, RawBody::Json(tracks(64))).await;
    assert_eq!(r.status, 200, "64 tracks are allowed: {}", r.text);
    assert_eq!(
        r.json["tracks"].as_array().map(Vec::len),
        Some(64),
        "{}",
        r.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_local_and_remote_is_invalid() {
    let node = start_node(&[]);
    let api = node.client();
    let sid = new_session(&api).await;
    let peer = Peer::new("mixed").expect("peer");
    let (mids, offer) = peer
        .create_send_offer(&[MediaKind::Audio])
        .await
        .expect("offer");
    let r = req(
        &api,
        Method::POST,
        &format!("sessions/{sid}/tracks/new"),
        RawBody::Json(json!({
            "sessionDescription": {"type": "offer", "sdp": offer},
            "tracks": [
                {"location": "local", "mid": mids[0], "trackName": "mine"},
                {"location": "remote", "sessionId": sid, "trackName": "theirs"}
            ]
        })),
    )
    .await;
    assert_error(&r, 406, "invalid_params");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_with_no_tracks_is_invalid() {
    let node = start_node(&[]);
    let api = node.client();
    let sid = new_session(&api).await;
    let r = req(
        &api,
        Method::PUT,
        &format!("sessions/{sid}/tracks/close"),
        RawBody::Json(json!({"tracks": [], "force": true})),
    )
    .await;
    assert_error(&r, 406, "invalid_params");
}

/// Over 64 mids is refused at once: not after parsing the offer against each of them, nor
/// after waiting for a connection that never comes (410 after `--connect-timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_of_too_many_tracks_is_invalid_at_once() {
    let node = start_node(&["--connect-timeout", "60s"]);
    let api = node.client();
    let sid = new_session(&api).await;
    let tracks: Vec<_> = (0..65).map(|i| json!({ "mid": i.to_string() })).collect();
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        req(
            &api,
            Method::PUT,
            &format!("sessions/{sid}/tracks/close"),
            RawBody::Json(json!({"tracks": tracks, "force": false})),
        ),
    )
    .await
    .expect("an answer without waiting for the connection");
    assert_error(&r, 406, "invalid_params");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renegotiate_without_pending_offer_is_invalid() {
    let node = start_node(&[]);
    let api = node.client();
    let sid = new_session(&api).await;
    // A well-formed answer SDP from two of our own peers.
    let a = Peer::new("a").expect("peer");
    let b = Peer::new("b").expect("peer");
    let (_m, offer) = a
        .create_send_offer(&[MediaKind::Audio])
        .await
        .expect("offer");
    let answer = b.accept_offer(&offer).await.expect("answer");
    let r = req(
        &api,
        Method::PUT,
        &format!("sessions/{sid}/renegotiate"),
        RawBody::Json(json!({"sessionDescription": {"type": "answer", "sdp": answer}})),
    )
    .await;
    assert_error(&r, 406, "invalid_session_description");
}

/// While an SFU offer is pending (pull not yet answered), another call needing SDP is refused,
/// and after the answer the same call works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_sdp_exchange_is_invalid() {
    let node = start_node(&[]);
    let api = node.client();
    let publisher = Publisher::start_av(&api, "pub").await.expect("publisher");
    let refs = publisher.remote_refs();
    let sid = new_session(&api).await;
    let path = format!("sessions/{sid}/tracks/new");
    let pull_one = |i: usize| {
        RawBody::Json(json!({"tracks": [
            {"location": "remote", "sessionId": refs[i].0, "trackName": refs[i].1}
        ]}))
    };
    let first = req(&api, Method::POST, &path, pull_one(0)).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(
        first.json["sessionDescription"]["type"], "offer",
        "{}",
        first.text
    );
    let second = req(&api, Method::POST, &path, pull_one(1)).await;
    assert_error(&second, 406, "invalid_session_description");

    // Answer the pending offer; then a new pull is accepted.
    let peer = Peer::new("sub").expect("peer");
    let offer = first.json["sessionDescription"]["sdp"]
        .as_str()
        .expect("sdp");
    let answer = peer.accept_offer(offer).await.expect("answer");
    let reneg = api.renegotiate(&sid, &answer).await.expect("renegotiate");
    assert!(
        reneg.is_object(),
        "renegotiate answers a JSON object: {reneg}"
    );
    peer.wait_connected(Duration::from_secs(15))
        .await
        .expect("connects");
    // Replaying the same answer after the exchange finished is refused.
    let replay = req(
        &api,
        Method::PUT,
        &format!("sessions/{sid}/renegotiate"),
        RawBody::Json(json!({"sessionDescription": {"type": "answer", "sdp": answer}})),
    )
    .await;
    assert_error(&replay, 406, "invalid_session_description");
    let third = req(&api, Method::POST, &path, pull_one(1)).await;
    assert_eq!(third.status, 200, "{}", third.text);
    assert_eq!(
        third.json["sessionDescription"]["type"], "offer",
        "{}",
        third.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_max_body_is_payload_too_large() {
    let node = start_node(&["--max-body", "65536"]);
    let api = node.client();
    let sid = new_session(&api).await;
    let path = format!("sessions/{sid}/tracks/new");
    let body_of = |pad: usize| {
        json!({
            "padding": "x".repeat(pad),
            "tracks": [{"location": "remote", "sessionId": sid, "trackName": "t"}]
        })
    };
    let r = req(
        &api,
        Method::POST,
        &path,
        RawBody::Json(body_of(100 * 1024)),
    )
    .await;
    assert_error(&r, 413, "payload_too_large");
    // Just under the limit is fine.
    let r = req(&api, Method::POST, &path, RawBody::Json(body_of(60 * 1024))).await;
    assert_eq!(
        r.status, 200,
        "a 60 KiB body is under --max-body 65536: {}",
        r.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_rate_limit_get_429() {
    let node = start_node(&["--rate-limit", "5"]);
    let api = node.client();
    let sid = new_session(&api).await;
    let path = format!("sessions/{sid}");
    // Fire the 20 calls concurrently so they land well inside one second even on a busy machine.
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (api, path) = (api.clone(), path.clone());
        set.spawn(async move { req(&api, Method::GET, &path, RawBody::None).await });
    }
    let mut ok = 0;
    let mut limited = Vec::new();
    for _ in 0..20 {
        let Some(joined) = set.join_next().await else {
            break;
        };
        let r = joined.expect("request task");
        match r.status {
            200 => ok += 1,
            429 => limited.push(r),
            other => panic!("unexpected status {other}: {}", r.text),
        }
    }
    assert!(
        !limited.is_empty(),
        "20 fast calls with --rate-limit 5 were all accepted"
    );
    assert!(ok >= 1, "the first call must be accepted");
    assert!(ok <= 10, "{ok} of 20 calls accepted with --rate-limit 5");
    for r in &limited {
        assert_error(r, 429, "rate_limited");
    }
    // The limit is per second: after a pause calls are accepted again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = req(&api, Method::GET, &path, RawBody::None).await;
    assert_eq!(r.status, 200, "after a pause: {}", r.text);
    // The limit is per session: another session is not affected by this one's burst.
    for _ in 0..20 {
        let _ = req(&api, Method::GET, &path, RawBody::None).await;
    }
    let other = new_session(&api).await;
    let r = req(
        &api,
        Method::GET,
        &format!("sessions/{other}"),
        RawBody::None,
    )
    .await;
    assert_eq!(
        r.status, 200,
        "another session is not rate limited: {}",
        r.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unimplemented_verbs_and_paths_are_405_json() {
    let node = start_node(&[]);
    let api = node.client();
    let sid = new_session(&api).await;
    for (method, path) in [
        (Method::DELETE, format!("sessions/{sid}")),
        (Method::GET, format!("sessions/{sid}/tracks")),
        (Method::GET, "sessions/new".to_string()),
        (Method::PATCH, format!("sessions/{sid}/tracks/close")),
    ] {
        let r = req(&api, method.clone(), &path, RawBody::None).await;
        assert_eq!(r.status, 405, "{method} {path}: {}", r.text);
        assert_error(&r, 405, "method_not_allowed");
    }
    // Calls answers 405 for any unknown path under its prefix, with or without `/v1`.
    let base = node.http_url();
    let app = node.app_id();
    for path in [
        format!("{base}/v1/apps/{app}/no/such/thing"),
        format!("{base}/apps/{app}/sessions/{sid}/tracks"),
        format!("{base}/v1/apps/{app}/turn/keys/x/credentials"),
    ] {
        let r = req(&api, Method::GET, &path, RawBody::None).await;
        assert_error(&r, 405, "method_not_allowed");
    }
}

/// Outside the Calls API's prefix an unknown path is 404, and a known one with the wrong method
/// 405; both JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_outside_the_api_are_404_and_wrong_methods_405() {
    let node = start_node(&[]);
    let api = node.client();
    let base = node.http_url();
    for path in [
        "/no/such/path",
        "/index.html",
        "/v1/apps",
        "/v1",
        "/healthz/x",
        "/admin/nothing",
    ] {
        let r = req(&api, Method::GET, &format!("{base}{path}"), RawBody::None).await;
        assert_error(&r, 404, "not_found");
    }
    for (method, path) in [
        (Method::POST, "/healthz"),
        (Method::DELETE, "/"),
        (Method::PUT, "/metrics"),
    ] {
        let r = req(
            &api,
            method.clone(),
            &format!("{base}{path}"),
            RawBody::None,
        )
        .await;
        assert_error(&r, 405, "method_not_allowed");
    }
    // The pages and probes themselves are still there.
    for path in ["/", "/healthz", "/favicon.ico"] {
        let r = req(&api, Method::GET, &format!("{base}{path}"), RawBody::None).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_and_vary_origin() {
    let node = start_node(&[]);
    let api = node.client();
    let origin = "http://localhost:8080";
    let r = api
        .request(
            Method::OPTIONS,
            "sessions/new",
            None,
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "authorization,content-type",
                ),
            ],
            RawBody::None,
        )
        .await
        .expect("preflight");
    assert!(
        (200..300).contains(&r.status),
        "preflight status {}: {}",
        r.status,
        r.text
    );
    let allow = r.header("access-control-allow-origin").unwrap_or_default();
    assert!(
        allow == "*" || allow == origin,
        "access-control-allow-origin: {allow:?}"
    );
    assert!(
        r.header_all("vary").to_ascii_lowercase().contains("origin"),
        "Vary: Origin on the preflight; headers: {:?}",
        r.headers
    );
    let methods = r
        .header("access-control-allow-methods")
        .unwrap_or_default()
        .to_ascii_uppercase();
    assert!(
        methods.contains("POST") || methods == "*",
        "allow-methods: {methods:?}"
    );
    let headers = r
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        headers.contains("authorization") || headers == "*",
        "allow-headers must admit Authorization: {headers:?}"
    );

    // The actual request from a page: the browser can read the answer.
    let r = api
        .request(
            Method::POST,
            "sessions/new",
            Some(api.secret()),
            &[("origin", origin)],
            RawBody::None,
        )
        .await
        .expect("POST with Origin");
    assert_eq!(r.status, 201, "{}", r.text);
    let allow = r.header("access-control-allow-origin").unwrap_or_default();
    assert!(
        allow == "*" || allow == origin,
        "access-control-allow-origin on POST: {allow:?}"
    );
    assert!(
        r.header_all("vary").to_ascii_lowercase().contains("origin"),
        "Vary: Origin on a 2xx answer; headers: {:?}",
        r.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_ok() {
    let node = start_node(&[]);
    let api = node.client();
    let r = api
        .request(
            Method::GET,
            &format!("{}/healthz", node.http_url()),
            None,
            &[],
            RawBody::None,
        )
        .await
        .expect("healthz");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json, json!({"status": "ok"}), "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_without_v1_work() {
    let node = start_node(&[]);
    let api = node.client().with_base(&node.base_url_no_v1());
    let r = req(&api, Method::POST, "sessions/new", RawBody::None).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let sid = r.json["sessionId"].as_str().expect("sessionId").to_string();
    // The same session is visible under both prefixes.
    let st = node
        .client()
        .get_session(&sid)
        .await
        .expect("GET under /v1");
    assert!(st.tracks.is_empty());
    let r = req(&api, Method::GET, &format!("sessions/{sid}"), RawBody::None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = api
        .request(
            Method::POST,
            "sessions/new",
            Some("wrong"),
            &[],
            RawBody::None,
        )
        .await
        .expect("request");
    assert_error(&r, 401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconnected_session_expires_with_410() {
    let node = start_node(&["--unconnected-expiry", "1s"]);
    let api = node.client();
    let sid = new_session(&api).await;
    let r = req(&api, Method::GET, &format!("sessions/{sid}"), RawBody::None).await;
    assert_eq!(r.status, 200, "fresh session: {}", r.text);
    // Poll (bounded) until the session is reported gone.
    let path = format!("sessions/{sid}");
    let mut last = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = req(&api, Method::GET, &path, RawBody::None).await;
        if r.status != 200 {
            last = Some(r);
            break;
        }
    }
    let r =
        last.expect("the unconnected session never expired within 10 s (--unconnected-expiry 1s)");
    assert_error(&r, 410, "session_error");
}

/// Closing a mid that does not exist is a per-item `close_track_error` in an HTTP 200 answer
/// (spec §3.5: "Track doesn't exist or was already closed").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_of_unknown_mid_is_item_error() {
    let node = start_node(&[]);
    let api = node.client();
    let sid = new_session(&api).await;
    let r = req(
        &api,
        Method::PUT,
        &format!("sessions/{sid}/tracks/close"),
        RawBody::Json(json!({"tracks": [{"mid": "no-such-mid"}], "force": true})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let item = &r.json["tracks"][0];
    assert_eq!(item["mid"], "no-such-mid", "{}", r.text);
    assert_eq!(item["errorCode"], "close_track_error", "{}", r.text);
    assert!(item["errorDescription"].is_string(), "{}", r.text);
}

/// An offer without ICE credentials is rejected as 400 decoding_error (spec §4: "SDP contains
/// no ice-ufrag").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offer_without_ice_ufrag_is_decoding_error() {
    let node = start_node(&[]);
    let api = node.client();
    let peer = Peer::new("no-ufrag").expect("peer");
    let (_mids, offer) = peer
        .create_send_offer(&[MediaKind::Audio])
        .await
        .expect("offer");
    assert!(
        offer.contains("a=ice-ufrag:"),
        "str0m offers carry ice-ufrag"
    );
    let stripped: String = offer
        .split("\r\n")
        .filter(|l| !l.starts_with("a=ice-ufrag:") && !l.starts_with("a=ice-pwd:"))
        .collect::<Vec<_>>()
        .join("\r\n");
    let r = req(
        &api,
        Method::POST,
        "sessions/new",
        RawBody::Json(json!({"sessionDescription": {"type": "offer", "sdp": stripped}})),
    )
    .await;
    assert_error(&r, 400, "decoding_error");
}

/// Calls wait up to `--connect-timeout` for the session's PeerConnection to connect, then fail
/// with 410 `session_error`. Here the client pushes an offer but never applies the answer, so
/// its PeerConnection cannot connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_on_a_session_that_never_connects_fail_after_the_connect_timeout() {
    let node = start_node(&["--connect-timeout", "1s"]);
    let api = node.client();
    let session = new_session(&api).await;
    let peer = Peer::new("never-connects").expect("peer");
    let (mids, offer) = peer
        .create_send_offer(&[MediaKind::Audio])
        .await
        .expect("offer");
    let push = trackmesh_tests::api::TracksRequest {
        session_description: Some(trackmesh_tests::api::SessionDescription::offer(offer)),
        tracks: Some(vec![trackmesh_tests::api::TrackObject::local(
            &mids[0], "mic",
        )]),
        auto_discover: None,
    };
    let answer = api
        .tracks_new(&session, &push)
        .await
        .expect("push answered");
    assert!(
        answer.session_description.is_some(),
        "the first exchange never waits: {answer:?}"
    );
    // The answer is deliberately not applied. The next call waits for the connection, in vain.
    let started = std::time::Instant::now();
    let body =
        json!({"tracks": [{"location": "remote", "sessionId": session, "trackName": "mic"}]});
    let r = req(
        &api,
        Method::POST,
        &format!("/sessions/{session}/tracks/new"),
        RawBody::Json(body),
    )
    .await;
    assert_error(&r, 410, "session_error");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "answered after {waited:?}, before the 1 s wait"
    );
}
