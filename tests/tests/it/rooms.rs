//! Rooms: create, list (all and on air), get, delete; the per-app quota; counts that add up
//! across two nodes; deleting a room ends its participants' sessions on every node.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use trackmesh_tests::rooms::{WsParticipant, create_room, ticket};
use trackmesh_tests::{CallsClient, Cluster, TestNode, poll_until};

const STEP: Duration = Duration::from_millis(100);
/// A room's announce reaching another node: a rooms round and a gossip round or two, generously.
const PROPAGATION: Duration = Duration::from_secs(15);

async fn rooms(api: &CallsClient, state: &str) -> Vec<Value> {
    let (status, v) = api
        .raw(Method::GET, &format!("rooms?state={state}"), None)
        .await
        .expect("GET rooms");
    assert_eq!(status, 200, "{v}");
    v["rooms"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_listed_counted_against_the_quota_and_deleted() {
    let node = TestNode::start(&["--max-rooms-per-app", "2"]).expect("node");
    let api = node.client();
    let r1 = create_room(
        &api,
        json!({ "id": "lobby", "max_participants": 5, "audio_egress": true }),
    )
    .await
    .expect("create lobby");
    assert_eq!(r1["id"], "lobby");
    assert_eq!(
        (r1["up_count"].as_u64(), r1["down_count"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(r1["max_participants"], 5);
    assert_eq!(r1["audio_egress"], true);
    let created = r1["created_at"].as_str().expect("created_at");
    assert!(
        created.len() == 20 && created.ends_with('Z') && created.as_bytes()[10] == b'T',
        "RFC 3339 UTC: {created}"
    );
    let (status, v) = api
        .raw(Method::POST, "rooms", Some(json!({ "id": "lobby" })))
        .await
        .expect("dup");
    assert_eq!(status, 409, "{v}");
    let r2 = create_room(&api, json!({}))
        .await
        .expect("a room with a made-up id");
    assert!(r2["id"].as_str().is_some_and(|id| !id.is_empty()));
    let (status, v) = api
        .raw(Method::POST, "rooms", Some(json!({ "id": "third" })))
        .await
        .expect("third");
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["errorCode"], "rate_limited", "{v}");

    assert_eq!(rooms(&api, "all").await.len(), 2);
    assert!(rooms(&api, "onair").await.is_empty(), "no publisher yet");
    let (status, v) = api
        .raw(Method::GET, "rooms/lobby", None)
        .await
        .expect("get");
    assert_eq!((status, v["id"].as_str()), (200, Some("lobby")));
    let (status, v) = api
        .raw(Method::GET, "rooms?state=soon", None)
        .await
        .expect("bad state");
    assert_eq!(
        (status, &v["errorCode"]),
        (406, &json!("invalid_params")),
        "{v}"
    );

    let (status, _) = api
        .raw(Method::DELETE, "rooms/lobby", None)
        .await
        .expect("delete");
    assert_eq!(status, 204);
    let (status, _) = api
        .raw(Method::GET, "rooms/lobby", None)
        .await
        .expect("get gone");
    assert_eq!(status, 404);
    create_room(&api, json!({ "id": "third" }))
        .await
        .expect("the quota has room again");
    // Another app's bearer sees nothing.
    let stranger = CallsClient::new(&node.base_url(), "not-the-secret");
    let (status, _) = stranger
        .raw(Method::GET, "rooms", None)
        .await
        .expect("stranger");
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_add_up_across_nodes_and_delete_ends_every_session() {
    let cl = Cluster::start(&[("a", "eu"), ("c", "eu")])
        .await
        .expect("cluster");
    let (a, c) = (cl.client("a"), cl.client("c"));
    create_room(&a, json!({ "id": "town" }))
        .await
        .expect("room on a");
    poll_until("the room on c", PROPAGATION, STEP, async || {
        let (s, _) = c.raw(Method::GET, "rooms/town", None).await?;
        anyhow::ensure!(s == 200, "{s}");
        Ok(())
    })
    .await
    .expect("c knows the room");

    let (t_up, url_a) = ticket(&a, "town", "up").await.expect("ticket");
    let up = WsParticipant::join(&url_a, &t_up, "upstream", false, "up")
        .await
        .expect("upstream on a");
    // A ticket issued by a, redeemed on c: c asks a to consume it.
    let (t_down, _) = ticket(&a, "town", "down").await.expect("ticket");
    let url_c = format!("ws://{}/v1/ws", cl.node("c").http_addr());
    let down = WsParticipant::join(&url_c, &t_down, "downstream", true, "down")
        .await
        .expect("downstream on c");

    for api in [&a, &c] {
        poll_until("counts across the cluster", PROPAGATION, STEP, async || {
            let (s, v) = api.raw(Method::GET, "rooms/town", None).await?;
            anyhow::ensure!(s == 200, "{s} {v}");
            anyhow::ensure!(
                v["up_count"] == 1 && v["down_count"] == 1 && v["onair"] == true,
                "{v}"
            );
            Ok(())
        })
        .await
        .expect("one up, one down, on air");
        let onair = rooms(api, "onair").await;
        assert_eq!(onair.len(), 1, "{onair:?}");
    }

    // Each participant is a Calls session, on its own node.
    for (api, p) in [(&a, &up), (&c, &down)] {
        let (s, v) = api
            .raw(Method::GET, &format!("sessions/{}", p.session_id), None)
            .await
            .expect("get session");
        assert_eq!(s, 200, "{v}");
    }

    // Delete on c: the room is a's, so the call goes to a.
    let (status, v) = c
        .raw(Method::DELETE, "rooms/town", None)
        .await
        .expect("delete");
    assert_eq!(status, 204, "{v}");
    for p in [&up, &down] {
        let (code, reason) = p
            .wait_closed(PROPAGATION)
            .await
            .expect("the participant is closed");
        assert_eq!((code, reason.as_str()), (4501, "ROOM-CLOSED"));
    }
    for (api, p) in [(&a, &up), (&c, &down)] {
        poll_until("the session ended", PROPAGATION, STEP, async || {
            let (s, _) = api
                .raw(Method::GET, &format!("sessions/{}", p.session_id), None)
                .await?;
            anyhow::ensure!(s == 410 || s == 404, "session still answers {s}");
            Ok(())
        })
        .await
        .expect("the participant's session is gone");
    }
}

/// A room with audio egress labels its publishers' audio with their user: a ticket to publish
/// for a user too long to be a label is refused when asked for (else that publisher's audio
/// would bypass the bus), while one to receive only is issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_ticket_for_a_user_no_egress_label_can_carry_is_refused() {
    let node = TestNode::start(&[]).expect("node");
    let api = node.client();
    create_room(&api, json!({ "id": "bus", "audio_egress": true }))
        .await
        .expect("room");
    create_room(&api, json!({ "id": "plain" }))
        .await
        .expect("room");
    let long = "u".repeat(200);
    let ask = |room: &'static str, direction: &'static str, user: String| {
        let api = api.clone();
        async move {
            api.raw(
                Method::POST,
                &format!("rooms/{room}/tickets"),
                Some(json!({ "direction": direction, "user": user })),
            )
            .await
            .expect("ticket call")
        }
    };
    for direction in ["up", "both"] {
        let (status, body) = ask("bus", direction, long.clone()).await;
        assert_eq!(status, 406, "{body}");
        assert_eq!(body["errorCode"], "invalid_params", "{body}");
    }
    assert_eq!(ask("bus", "down", long.clone()).await.0, 201);
    assert_eq!(ask("bus", "up", "u".repeat(128)).await.0, 201);
    assert_eq!(ask("plain", "up", long).await.0, 201);
}
