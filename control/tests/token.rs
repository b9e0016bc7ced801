//! `trackmeshctl token`: a token minted offline verifies with the node's verifier under the
//! node's app configuration, and `--node` asks a node to mint one. The node runs in this process
//! (`TestNode`), so no node binary is needed.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use trackmesh_node::api::tokens::{Grant, Mode, TokenError, authorize_stream, rfc3339, unix_now};
use trackmesh_tests::TestNode;
use trackmesh_tests::node::random_hex32;

fn ctl_binary() -> PathBuf {
    match std::env::var_os("TRACKMESHCTL_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_trackmeshctl")),
    }
}

/// Runs `trackmeshctl ARGS...` with no TRACKMESH_* variables inherited, plus `env`:
/// (exit code, stdout, stderr).
async fn ctl(env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(ctl_binary());
    cmd.args(args)
        .env_remove("TRACKMESH_NODE")
        .env_remove("TRACKMESH_ADMIN_TOKEN")
        .env_remove("TRACKMESH_APP_SECRET")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
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

fn verify_on(node: &TestNode, token: &str, stream: &str, mode: Mode) -> Result<Grant, TokenError> {
    authorize_stream(
        node.app_secret(),
        node.app_id(),
        Some(token),
        stream,
        mode,
        unix_now(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_token_verifies_on_the_node() {
    let node = TestNode::start(&[]).expect("node");
    let (app, secret) = (node.app_id().to_string(), node.app_secret().to_string());

    let (code, out, err) = ctl(
        &[],
        &[
            "token", "--app", &app, "--secret", &secret, "--stream", "cam", "--mode", "publish",
            "--ttl", "10m",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "{err}");
    let token = out.trim_end_matches('\n');
    assert_eq!(out, format!("{token}\n"), "one line: the token");
    match verify_on(&node, token, "cam", Mode::Publish) {
        Ok(Grant::Token(c)) => {
            assert_eq!((c.app.as_str(), c.stream.as_str()), (app.as_str(), "cam"));
            assert_eq!(c.exp - c.iat, 600);
        }
        other => panic!("the node refused trackmeshctl's token: {other:?}"),
    }
    assert_eq!(
        verify_on(&node, token, "cam", Mode::Subscribe).map_err(|e| e.status()),
        Err(403)
    );

    // The secret from the environment, JSON output, the default lifetime of an hour.
    let (code, out, err) = ctl(
        &[("TRACKMESH_APP_SECRET", &secret)],
        &[
            "token", "--app", &app, "--stream", "*", "--mode", "both", "--json",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let token = v["token"].as_str().unwrap_or_default();
    let claims = match verify_on(&node, token, "any", Mode::Subscribe) {
        Ok(Grant::Token(c)) => c,
        other => panic!("{other:?}: {v}"),
    };
    assert_eq!(claims.exp - claims.iat, 3600);
    assert_eq!(v["expiresAt"].as_str(), Some(rfc3339(claims.exp).as_str()));

    // A token minted with a wrong secret is refused by the node.
    let (code, out, _) = ctl(
        &[],
        &[
            "token", "--app", &app, "--secret", "wrong", "--stream", "cam", "--mode", "both",
        ],
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(
        verify_on(&node, out.trim(), "cam", Mode::Publish),
        Err(TokenError::BadSignature)
    );
    // Bad input is a usage error, with nothing on stdout.
    for args in [
        &[
            "token", "--app", &app, "--secret", &secret, "--stream", "cam", "--mode", "both",
            "--ttl", "2d",
        ][..],
        &["token", "--app", &app, "--stream", "cam", "--mode", "both"],
    ] {
        let (code, out, err) = ctl(&[], args).await;
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{out}");
    }
    // A stream name no token may carry: the command runs and says why not.
    let long = "s".repeat(300);
    let (code, out, err) = ctl(
        &[],
        &[
            "token", "--app", &app, "--secret", &secret, "--stream", &long, "--mode", "both",
        ],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty() && err.contains("stream name"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_mints_with_node() {
    let node = TestNode::start(&[]).expect("node");
    let (app, secret) = (node.app_id().to_string(), node.app_secret().to_string());
    let url = node.http_url();

    let (code, out, err) = ctl(
        &[],
        &[
            "token",
            "--app",
            &app,
            "--secret",
            &secret,
            "--stream",
            "cam",
            "--mode",
            "subscribe",
            "--ttl",
            "90",
            "--node",
            &url,
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    match verify_on(&node, out.trim(), "cam", Mode::Subscribe) {
        Ok(Grant::Token(c)) => assert_eq!(c.exp - c.iat, 90),
        other => panic!("{other:?}: {out}"),
    }

    // A wrong app secret: exit 4 and a hint about --secret, not the admin token.
    let (code, out, err) = ctl(
        &[],
        &[
            "token", "--app", &app, "--secret", "wrong", "--stream", "cam", "--mode", "both",
            "--node", &url,
        ],
    )
    .await;
    assert_eq!(code, 4, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("unauthorized") && err.contains("--secret"),
        "{err}"
    );
    // An unknown app: the node's 404, exit 1.
    let (code, _, err) = ctl(
        &[],
        &[
            "token",
            "--app",
            &random_hex32(),
            "--secret",
            &secret,
            "--stream",
            "cam",
            "--mode",
            "both",
            "--node",
            &url,
        ],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("404"), "{err}");
}
