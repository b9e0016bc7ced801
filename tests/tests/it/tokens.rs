//! Stream tokens (issue 12): `POST /v1/apps/{app}/tokens` mints a JWT signed with the app secret,
//! and every node with the same app configuration accepts it with no lookup.

use reqwest::Method;
use serde_json::{Value, json};
use trackmesh_node::api::tokens::{
    DEFAULT_TTL, Grant, MAX_TTL, Mode, TokenError, authorize_stream, rfc3339, unix_now,
};
use trackmesh_tests::node::random_hex32;
use trackmesh_tests::{CallsClient, RawBody, TestNode};

/// `POST tokens` with this bearer and body; (status, JSON body).
async fn post_tokens(api: &CallsClient, bearer: Option<&str>, body: RawBody) -> (u16, Value) {
    let r = api
        .request(Method::POST, "tokens", bearer, &[], body)
        .await
        .unwrap_or_else(|e| panic!("POST tokens: {e:#}"));
    (r.status, r.json)
}

/// Mints on `node` with its app secret; the token and `expiresAt`.
async fn mint(node: &TestNode, body: Value) -> (String, String) {
    let (status, v) =
        post_tokens(&node.client(), Some(node.app_secret()), RawBody::Json(body)).await;
    assert_eq!(status, 201, "{v}");
    let field = |k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("no {k} in {v}"))
            .to_string()
    };
    (field("token"), field("expiresAt"))
}

#[track_caller]
fn assert_error(status: u16, body: &Value, want_status: u16, code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["errorCode"].as_str(), Some(code), "{body}");
}

/// The claims a node's verifier finds in `token` for `stream`/`mode`, at the system clock.
fn grant(node: &TestNode, token: &str, stream: &str, mode: Mode) -> Result<Grant, TokenError> {
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
async fn a_token_minted_on_one_node_is_accepted_by_another() {
    let (app, secret) = (random_hex32(), random_hex32());
    let a = TestNode::start_with_app(&app, &secret, &[]).expect("node a");
    let b = TestNode::start_with_app(&app, &secret, &[]).expect("node b");
    // A node of another deployment: same app id, its own secret.
    let other = TestNode::start_with_app(&app, &random_hex32(), &[]).expect("other node");

    let (token, expires_at) = mint(
        &a,
        json!({"stream": "cam", "mode": "publish", "ttlSeconds": 600}),
    )
    .await;
    let claims = match grant(&b, &token, "cam", Mode::Publish) {
        Ok(Grant::Token(c)) => c,
        other => panic!("node b refused node a's token: {other:?}"),
    };
    assert_eq!(claims.app, app);
    assert_eq!(
        (claims.stream.as_str(), claims.mode),
        ("cam", Mode::Publish)
    );
    assert_eq!(claims.exp - claims.iat, 600);
    assert_eq!(
        expires_at,
        rfc3339(claims.exp),
        "expiresAt is the token's exp"
    );
    // Its scope holds on b too: another stream or the other direction is 403.
    assert_eq!(
        grant(&b, &token, "cam2", Mode::Publish).map_err(|e| e.status()),
        Err(403)
    );
    assert_eq!(
        grant(&b, &token, "cam", Mode::Subscribe).map_err(|e| e.status()),
        Err(403)
    );
    // The node of another deployment does not accept it.
    assert_eq!(
        grant(&other, &token, "cam", Mode::Publish),
        Err(TokenError::BadSignature)
    );

    // And the other way round, for every stream, with the default lifetime.
    let (token, _) = mint(&b, json!({"stream": "*", "mode": "both"})).await;
    for (stream, mode) in [("x", Mode::Publish), ("y", Mode::Subscribe)] {
        match grant(&a, &token, stream, mode) {
            Ok(Grant::Token(c)) => assert_eq!(c.exp - c.iat, DEFAULT_TTL.as_secs()),
            other => panic!("node a refused node b's token: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minting_needs_the_app_secret_and_a_good_body() {
    let node = TestNode::start(&[]).expect("node");
    let api = node.client();
    let secret = node.app_secret();
    let good = || RawBody::Json(json!({"stream": "cam", "mode": "subscribe"}));

    // 401: no bearer, a wrong one, and a stream token (a token cannot mint tokens).
    let (token, _) = mint(&node, json!({"stream": "*", "mode": "both"})).await;
    for bearer in [None, Some("wrong"), Some(token.as_str())] {
        let (status, v) = post_tokens(&api, bearer, good()).await;
        assert_error(status, &v, 401, "unauthorized");
        assert!(v.get("token").is_none(), "{v}");
    }
    // 404: an app this node does not have.
    let stranger = api.with_base(&format!("{}/v1/apps/{}", node.http_url(), random_hex32()));
    let (status, v) = post_tokens(&stranger, Some(secret), good()).await;
    assert_error(status, &v, 404, "not_found");

    // 400: bodies that are not a token request, and lifetimes out of bounds.
    let max = MAX_TTL.as_secs();
    let bad: Vec<RawBody> = vec![
        RawBody::None,
        RawBody::Bytes(b"not json".to_vec(), Some("application/json".into())),
        RawBody::Json(json!({"mode": "publish"})),
        RawBody::Json(json!({"stream": "cam"})),
        RawBody::Json(json!({"stream": "cam", "mode": "admin"})),
        RawBody::Json(json!({"stream": "cam", "mode": "publish", "ttl": 60})),
        RawBody::Json(json!({"stream": "", "mode": "publish"})),
        RawBody::Json(json!({"stream": "s".repeat(257), "mode": "publish"})),
        RawBody::Json(json!({"stream": "cam", "mode": "publish", "ttlSeconds": 0})),
        RawBody::Json(json!({"stream": "cam", "mode": "publish", "ttlSeconds": -5})),
        RawBody::Json(json!({"stream": "cam", "mode": "publish", "ttlSeconds": max + 1})),
    ];
    for body in bad {
        let shown = format!("{body:?}");
        let (status, v) = post_tokens(&api, Some(secret), body).await;
        assert_eq!(status, 400, "{shown}: {v}");
        assert_eq!(
            v["errorCode"].as_str(),
            Some("decoding_error"),
            "{shown}: {v}"
        );
    }
    // The longest lifetime is allowed.
    let (token, _) = mint(
        &node,
        json!({"stream": "cam", "mode": "publish", "ttlSeconds": max}),
    )
    .await;
    assert!(grant(&node, &token, "cam", Mode::Publish).is_ok());
    // 413: a body far larger than any token request.
    let huge = RawBody::Json(json!({"stream": "x".repeat(64 * 1024), "mode": "both"}));
    let (status, v) = post_tokens(&api, Some(secret), huge).await;
    assert_error(status, &v, 413, "payload_too_large");
}
