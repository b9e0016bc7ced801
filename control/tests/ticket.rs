//! `trackmeshctl ticket`: the node named by `--node` issues a room ticket, which verifies under
//! the app secret for that room, direction and user; a room the node does not know is refused.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use trackmesh_tests::TestNode;

fn ctl_binary() -> PathBuf {
    match std::env::var_os("TRACKMESHCTL_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_trackmeshctl")),
    }
}

async fn ctl(args: &[&str]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(ctl_binary());
    cmd.args(args)
        .env_remove("TRACKMESH_NODE")
        .env_remove("TRACKMESH_ADMIN_TOKEN")
        .env_remove("TRACKMESH_APP_SECRET")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("trackmeshctl {args:?} did not finish within 30 s"))
        .unwrap_or_else(|e| panic!("running {}: {e}", ctl_binary().display()));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_issues_a_ticket_for_its_room() {
    let node = TestNode::start(&[]).expect("node");
    let (app, secret) = (node.app_id().to_string(), node.app_secret().to_string());
    let (status, v) = node
        .client()
        .raw(
            reqwest::Method::POST,
            "rooms",
            Some(json!({ "id": "lobby" })),
        )
        .await
        .expect("create room");
    assert_eq!(status, 201, "{v}");
    let url = node.http_url();
    let (code, out, err) = ctl(&[
        "--node",
        &url,
        "ticket",
        "--app",
        &app,
        "--secret",
        &secret,
        "--room",
        "lobby",
        "--direction",
        "up",
        "--user",
        "alice",
        "--ttl",
        "120",
    ])
    .await;
    assert_eq!(code, 0, "{err}");
    let token = out.trim_end_matches('\n');
    let claims = trackmesh_tokens::verify_ticket(
        secret.as_bytes(),
        Some(&app),
        token,
        trackmesh_tokens::unix_now(),
    )
    .expect("the ticket verifies under the app secret");
    assert_eq!(
        (
            claims.room.as_str(),
            claims.dir.as_str(),
            claims.user.as_deref()
        ),
        ("lobby", "up", Some("alice"))
    );
    assert_eq!(claims.exp - claims.iat, 120);

    let (code, _, err) = ctl(&[
        "--node",
        &url,
        "ticket",
        "--app",
        &app,
        "--secret",
        &secret,
        "--room",
        "nowhere",
        "--direction",
        "down",
    ])
    .await;
    assert_ne!(code, 0, "an unknown room is refused");
    assert!(err.contains("404") || err.contains("not found"), "{err}");
}
