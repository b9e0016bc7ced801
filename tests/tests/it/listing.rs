//! `GET /v1/apps/{app}/sessions`, the app's listing of its live sessions (an extension to Calls
//! that the demo page's track picker and `/meet` use): who may call it, what it shows of a
//! published track, its bounds, and that it covers every node of a cluster.

use reqwest::Method;
use serde_json::Value;
use trackmesh_tests::{Cluster, MediaKind, Publisher, RawBody, TestNode, poll_until};

/// A listed track: (trackName, kind, status).
type Listed = (String, String, String);

/// The listed sessions, as (id, its tracks).
fn sessions(v: &Value) -> Vec<(String, Vec<Listed>)> {
    v["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("no sessions array in {v}"))
        .iter()
        .map(|s| {
            let tracks = s["tracks"]
                .as_array()
                .unwrap_or_else(|| panic!("no tracks array in {s}"))
                .iter()
                .map(|t| {
                    let f = |k: &str| t[k].as_str().unwrap_or("").to_string();
                    (f("trackName"), f("kind"), f("status"))
                })
                .collect();
            (s["sessionId"].as_str().unwrap_or("").to_string(), tracks)
        })
        .collect()
}

#[tokio::test]
async fn listing_needs_the_apps_own_bearer() {
    let node = TestNode::start(&["--app", "other:other-secret"]).expect("node");
    let api = node.client();
    let no_bearer = api
        .request(Method::GET, "sessions", None, &[], RawBody::None)
        .await
        .expect("GET");
    assert_eq!(
        (no_bearer.status, no_bearer.json["errorCode"].as_str()),
        (401, Some("unauthorized")),
        "{}",
        no_bearer.text
    );
    assert!(
        no_bearer.headers.contains_key("www-authenticate"),
        "a 401 names its scheme"
    );
    // another app's secret is not this app's
    let (status, body) = api
        .with_secret("other-secret")
        .raw(Method::GET, "sessions", None)
        .await
        .expect("GET");
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    let unknown = api.with_base(&format!("{}/v1/apps/no-such-app", node.http_url()));
    let (status, body) = unknown
        .raw(Method::GET, "sessions", None)
        .await
        .expect("GET");
    assert_eq!(
        (status, body["errorCode"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    // a call claiming to come from a member without its credential is refused, not answered
    let forged = api
        .request(
            Method::GET,
            "sessions",
            Some(node.app_secret()),
            &[("x-trackmesh-forwarded-by", "someone")],
            RawBody::None,
        )
        .await
        .expect("GET");
    assert_eq!(forged.status, 401, "{}", forged.text);
}

#[tokio::test]
async fn listing_shows_what_each_session_publishes_and_only_this_apps() {
    let node = TestNode::start(&["--app", "other:other-secret"]).expect("node");
    let api = node.client();
    let publisher = Publisher::start(
        &api,
        "listed",
        &[("cam", MediaKind::Video), ("mic", MediaKind::Audio)],
    )
    .await
    .expect("publisher");
    let viewer = api.sessions_new().await.expect("viewer session").session_id;
    let other_app = api.with_base(&format!("{}/v1/apps/other", node.http_url()));
    let other = other_app
        .with_secret("other-secret")
        .sessions_new()
        .await
        .expect("other app's session")
        .session_id;

    let (status, body) = api.raw(Method::GET, "sessions", None).await.expect("GET");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["truncated"], Value::Bool(false), "{body}");
    let listed = sessions(&body);
    let ids: Vec<&str> = listed.iter().map(|(id, _)| id.as_str()).collect();
    assert!(
        !ids.contains(&other.as_str()),
        "another app's session listed: {body}"
    );
    let (_, tracks) = listed
        .iter()
        .find(|(id, _)| *id == publisher.session_id)
        .unwrap_or_else(|| panic!("publisher {} not listed: {body}", publisher.session_id));
    let mut tracks = tracks.clone();
    tracks.sort();
    let want = |n: &str, k: &str, s: &str| (n.to_string(), k.to_string(), s.to_string());
    assert_eq!(
        tracks,
        vec![
            want("cam", "video", "active"),
            want("mic", "audio", "active")
        ]
    );
    let (_, viewer_tracks) = listed
        .iter()
        .find(|(id, _)| *id == viewer)
        .unwrap_or_else(|| panic!("viewer {viewer} not listed: {body}"));
    assert!(
        viewer_tracks.is_empty(),
        "a session that publishes nothing lists no tracks: {body}"
    );

    // a closed track stays listed, as inactive
    let cam = publisher
        .track(MediaKind::Video)
        .expect("video")
        .mid
        .clone();
    api.tracks_close(&publisher.session_id, &[&cam], true, None)
        .await
        .expect("close the camera");
    let (_, body) = api.raw(Method::GET, "sessions", None).await.expect("GET");
    let listed = sessions(&body);
    let (_, tracks) = listed
        .iter()
        .find(|(id, _)| *id == publisher.session_id)
        .unwrap_or_else(|| panic!("publisher not listed: {body}"));
    let cam_now = tracks
        .iter()
        .find(|(n, _, _)| n == "cam")
        .map(|t| t.2.as_str());
    assert_eq!(cam_now, Some("inactive"), "{body}");
}

#[tokio::test]
async fn listing_is_bounded_by_its_limit() {
    let node = TestNode::start(&[]).expect("node");
    let api = node.client();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(api.sessions_new().await.expect("session").session_id);
    }
    ids.sort();
    let (status, body) = api
        .raw(Method::GET, "sessions?limit=2", None)
        .await
        .expect("GET");
    assert_eq!(status, 200, "{body}");
    let listed: Vec<String> = sessions(&body).into_iter().map(|(id, _)| id).collect();
    assert_eq!(
        listed,
        ids[..2].to_vec(),
        "the lowest ids first, cut at the limit"
    );
    assert_eq!(body["truncated"], Value::Bool(true), "{body}");
    let (_, all) = api.raw(Method::GET, "sessions", None).await.expect("GET");
    assert_eq!(sessions(&all).len(), 3, "{all}");
    assert_eq!(all["truncated"], Value::Bool(false), "{all}");
    for bad in ["0", "201", "many"] {
        let (status, body) = api
            .raw(Method::GET, &format!("sessions?limit={bad}"), None)
            .await
            .expect("GET");
        assert_eq!(
            (status, body["errorCode"].as_str()),
            (406, Some("invalid_params")),
            "limit={bad}: {body}"
        );
    }
}

#[tokio::test]
async fn listing_covers_every_node_of_the_cluster() {
    let cluster = Cluster::start(&[("a", "eu"), ("b", "eu")])
        .await
        .expect("cluster");
    let on_a = cluster.client("a");
    let publisher = Publisher::start(&on_a, "far", &[("cam", MediaKind::Video)])
        .await
        .expect("publisher on a");
    let on_b = cluster.client("b");
    let local_b = on_b.sessions_new().await.expect("session on b").session_id;
    // asked on b: a's session comes from a, b's own from b
    let want = [publisher.session_id.clone(), local_b.clone()];
    let (body, _) = poll_until(
        "b's listing to show both nodes' sessions",
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(200),
        async || {
            let (status, body) = on_b.raw(Method::GET, "sessions", None).await?;
            anyhow::ensure!(status == 200, "{status}: {body}");
            let ids: Vec<String> = sessions(&body).into_iter().map(|(id, _)| id).collect();
            anyhow::ensure!(want.iter().all(|w| ids.contains(w)), "{body}");
            Ok(body)
        },
    )
    .await
    .expect("listing");
    let listed = sessions(&body);
    let (_, tracks) = listed
        .iter()
        .find(|(id, _)| *id == publisher.session_id)
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(
        tracks,
        &vec![("cam".to_string(), "video".to_string(), "active".to_string())]
    );
    assert_eq!(
        listed.iter().filter(|(id, _)| *id == local_b).count(),
        1,
        "each session once: {body}"
    );
    // a wrong bearer on b is refused there, before anything is asked of a
    let (status, _) = on_b
        .with_secret("wrong")
        .raw(Method::GET, "sessions", None)
        .await
        .expect("GET");
    assert_eq!(status, 401);
}

/// A node that is live in gossip but gives no answer is named in the cluster-wide lists, so
/// neither an operator nor a client takes a list without its sessions for the whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_answer_is_named_not_hidden() {
    let _serial = trackmesh_tests::serial::cluster_slot().await;
    let process = trackmesh_tests::ClusterConfig {
        process: true,
        ..trackmesh_tests::ClusterConfig::default()
    };
    let cl = Cluster::start_with(&[("a", "eu"), ("b", "eu")], process)
        .await
        .expect("cluster");
    let on_a = cl.client("a");
    let local_a = on_a.sessions_new().await.expect("session on a").session_id;
    let on_b = cl
        .client("b")
        .sessions_new()
        .await
        .expect("session on b")
        .session_id;
    let admin = |path: &str| {
        let url = format!("{}{path}", cl.node("a").http_url());
        let token = cl.admin_token().to_string();
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("admin GET");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.expect("admin JSON"))
        }
    };
    let ids = |v: &Value| -> Vec<String> {
        v["sessions"]
            .as_array()
            .unwrap_or_else(|| panic!("no sessions in {v}"))
            .iter()
            .map(|s| s["sessionId"].as_str().unwrap_or("").to_string())
            .collect()
    };

    // Frozen: b's kernel takes the connections, b never answers. All three are asked at once:
    // a few seconds on, gossip takes b for dead and no longer asks it at all.
    cl.node("b").pause().expect("SIGSTOP b");
    let ((s, sessions), (t, tracks), listing) = tokio::join!(
        admin("/admin/sessions"),
        admin("/admin/tracks"),
        on_a.raw(Method::GET, "sessions", None)
    );
    cl.node("b").resume().expect("SIGCONT b");
    let (l, listing) = listing.expect("GET");
    assert_eq!((s, t, l), (200, 200, 200), "{sessions} {tracks} {listing}");
    assert_eq!(
        sessions["unanswered"],
        serde_json::json!(["b"]),
        "{sessions}"
    );
    assert_eq!(
        ids(&sessions),
        vec![local_a.clone()],
        "a's own part is there"
    );
    assert_eq!(tracks["unanswered"], serde_json::json!(["b"]), "{tracks}");
    assert_eq!(listing["unansweredNodes"], 1, "{listing}");
    assert_eq!(ids(&listing), vec![local_a.clone()]);

    // Answering again (and live again in gossip), b is listed and nothing is said missing.
    let (sessions, _) = trackmesh_tests::poll_until(
        "a's admin view to list b's session again",
        std::time::Duration::from_secs(20),
        std::time::Duration::from_millis(200),
        async || {
            let (s, sessions) = admin("/admin/sessions").await;
            anyhow::ensure!(
                s == 200 && ids(&sessions).contains(&on_b),
                "{s}: {sessions}"
            );
            Ok(sessions)
        },
    )
    .await
    .expect("b back");
    assert!(sessions.get("unanswered").is_none(), "{sessions}");
    let (_, listing) = on_a.raw(Method::GET, "sessions", None).await.expect("GET");
    assert!(listing.get("unansweredNodes").is_none(), "{listing}");
}
