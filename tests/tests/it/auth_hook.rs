//! The permission hook: a small HTTP server started by the test allows, denies, answers too late
//! or is down; the node fails closed and counts it. The `X-User-Claim` header names the user
//! only with `--trust-user-claim`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use trackmesh_tests::rooms::{RawWs, create_room};
use trackmesh_tests::{CallsClient, TestNode};

/// A hook that answers by the query's user: `allow*` 200, `deny*` 403, `slow*` 200 after 3 s,
/// `redirect*` 302 to itself (where a request without a query gets 200); joins (direction `up`)
/// of user `nojoin` get 403. Records every query.
async fn hook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Head and body, bounded: the node sends a small JSON.
                for _ in 0..64 {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            let q: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                            log.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(q.clone());
                            let user = q["user"].as_str().unwrap_or("");
                            let status = if user.starts_with("redirect") {
                                "302 Found\r\nlocation: /login"
                            } else if user.starts_with("slow") {
                                tokio::time::sleep(Duration::from_secs(3)).await;
                                "200 OK"
                            } else if user.starts_with("deny")
                                || (user == "nojoin" && q["direction"] == "up")
                            {
                                "403 Forbidden"
                            } else {
                                "200 OK"
                            };
                            let _ = sock
                                .write_all(
                                    format!(
                                        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                                    )
                                    .as_bytes(),
                                )
                                .await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, seen)
}

async fn ticket_status(api: &CallsClient, user: &str, claim: Option<&str>) -> u16 {
    let headers: Vec<(&str, &str)> = claim.map(|c| ("x-user-claim", c)).into_iter().collect();
    let r = api
        .request(
            Method::POST,
            "rooms/hall/tickets",
            Some(api.secret()),
            &headers,
            trackmesh_tests::RawBody::Json(json!({ "direction": "both", "user": user })),
        )
        .await
        .expect("ticket request");
    r.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_allows_denies_and_fails_closed() {
    let (url, seen) = hook().await;
    let node =
        TestNode::start(&["--auth-hook", &url, "--auth-hook-timeout", "500ms"]).expect("node");
    let api = node.client();
    create_room(&api, json!({ "id": "hall" }))
        .await
        .expect("room");
    assert_eq!(ticket_status(&api, "allow-1", None).await, 201);
    assert_eq!(
        ticket_status(&api, "allow-1", None).await,
        201,
        "from the cache"
    );
    assert_eq!(ticket_status(&api, "deny-1", None).await, 403);
    assert_eq!(
        ticket_status(&api, "redirect-1", None).await,
        403,
        "a redirect (to a login page that answers 200) is not an allow"
    );
    assert_eq!(
        ticket_status(&api, "slow-1", None).await,
        403,
        "too slow is deny"
    );
    let asked = |user: &str| {
        seen.lock()
            .map(|s| s.iter().filter(|q| q["user"] == user).count())
            .unwrap_or(0)
    };
    assert_eq!(
        asked("allow-1"),
        1,
        "the second ticket used the cached allow"
    );
    let q = seen.lock().map(|s| s.first().cloned()).ok().flatten();
    assert_eq!(
        q,
        Some(
            json!({ "app": node.app_id(), "room": "hall", "user": "allow-1", "direction": "both" })
        )
    );

    // A join the hook refuses, with a ticket it allowed.
    let r = api
        .raw(
            Method::POST,
            "rooms/hall/tickets",
            Some(json!({ "direction": "both", "user": "nojoin" })),
        )
        .await
        .expect("ticket");
    assert_eq!(r.0, 201, "{}", r.1);
    let token = r.1["access_token"].as_str().expect("token").to_string();
    let mut ws = RawWs::connect(&format!("ws://{}/v1/ws", node.http_addr()))
        .await
        .expect("ws");
    ws.send(&json!({ "type": "connect", "token": token, "role": "upstream" }))
        .await
        .expect("send");
    let (code, reason) = ws.closed(Duration::from_secs(10)).await.expect("closed");
    assert_eq!((code, reason.as_str()), (4103, "AUTHENTICATION-FAILURE"));

    let metrics = reqwest::get(format!("{}/metrics", node.http_url()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for result in ["allow", "deny", "timeout", "cached"] {
        assert!(
            metrics.contains(&format!("trackmesh_auth_hook_total{{result=\"{result}\"}}")),
            "{result} counted"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_is_down_denies() {
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let node = TestNode::start(&["--auth-hook", &url]).expect("node");
    let api = node.client();
    create_room(&api, json!({ "id": "hall" }))
        .await
        .expect("room");
    assert_eq!(ticket_status(&api, "allow-1", None).await, 403);
    // Each failure denies, but the log says so at most once every 10 s, with the cause.
    for i in 0..20 {
        assert_eq!(ticket_status(&api, &format!("allow-{i}"), None).await, 403);
    }
    let log = node.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("the permission hook did not answer"))
        .count();
    assert!((1..=2).contains(&warnings), "{warnings} warnings:\n{log}");
    assert!(
        log.contains("Connection refused") || log.contains("connect"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_user_claim_counts_only_when_trusted() {
    let claim = r#"{"userid":"alice","clientid":"c1"}"#;
    for (trusted, want) in [(false, "bob"), (true, "alice")] {
        let (url, seen) = hook().await;
        let mut args = vec!["--auth-hook", url.as_str()];
        if trusted {
            args.push("--trust-user-claim");
        }
        let node = TestNode::start(&args).expect("node");
        let api = node.client();
        create_room(&api, json!({ "id": "hall" }))
            .await
            .expect("room");
        assert_eq!(ticket_status(&api, "bob", Some(claim)).await, 201);
        let user = seen
            .lock()
            .ok()
            .and_then(|s| s.last().map(|q| q["user"].clone()));
        assert_eq!(user, Some(json!(want)), "trusted: {trusted}");
    }
}
