//! WHIP and WHEP across a cluster: a stream published on one node plays on every node, a second
//! publisher of a live name gets 409 anywhere, two racing publishers end with one, and viewers
//! whose node dies play again from another node.

use std::time::Duration;

use anyhow::ensure;
use reqwest::Method;
use serde_json::Value;
use trackmesh_tests::whip::{SDP, assert_problem, send, start_endpoint as start, wait_media};
use trackmesh_tests::{CallsClient, Cluster, ClusterConfig, MediaKind, Peer, poll_until};

const STEP: Duration = Duration::from_millis(100);
/// How long a stream's publisher may take to reach the other nodes' views (a follower round,
/// a gossip round or two), generously for a loaded machine.
const PROPAGATION: Duration = Duration::from_secs(15);

async fn streams(api: &CallsClient) -> anyhow::Result<Value> {
    let (status, body) = api.raw(Method::GET, "streams", None).await?;
    ensure!(status == 200, "GET streams: {status} {body}");
    Ok(body)
}

/// The publisher session id this node lists for `name`, if any.
async fn listed_publisher(api: &CallsClient, name: &str) -> anyhow::Result<Option<String>> {
    let body = streams(api).await?;
    Ok(body["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["id"] == name)
        .and_then(|s| s["publisher"]["sessionId"].as_str())
        .map(str::to_string))
}

/// Waits until `name`'s publisher is announced cluster-wide: a second WHIP on `node` is refused.
async fn wait_announced(cl: &Cluster, node: &str, name: &str) {
    let api = cl.client(node);
    poll_until(
        "the stream's publisher in the other node's view",
        PROPAGATION,
        STEP,
        async || {
            let peer = Peer::new("probe")?;
            let (_, offer) = peer
                .create_send_offer(&[MediaKind::Audio, MediaKind::Video])
                .await?;
            let r = send(
                &api,
                Method::POST,
                &format!("whip/{name}"),
                &[],
                &offer,
                Some(SDP),
            )
            .await;
            ensure!(r.status == 409, "still {}: {}", r.status, r.text);
            assert_problem(&r, 409);
            Ok(())
        },
    )
    .await
    .expect("a second publisher on another node gets 409");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_published_on_one_node_plays_on_another() {
    published_on_one_node_plays_on_another(None).await;
}

/// The same with every stream placed on worker 1: the relayed tracks land on c's first worker
/// and are linked to the stream's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_published_on_one_node_plays_on_another_on_worker_1() {
    published_on_one_node_plays_on_another(Some(1)).await;
}

/// `worker`: place every stream on this worker and check that it was.
async fn published_on_one_node_plays_on_another(worker: Option<usize>) {
    let extra = match worker {
        Some(w) => vec!["--worker-placement".to_string(), format!("{w},{w},{w},{w}")],
        None => Vec::new(),
    };
    let cl = Cluster::start_with(
        &[("a", "eu"), ("c", "us")],
        ClusterConfig {
            extra,
            ..ClusterConfig::default()
        },
    )
    .await
    .expect("cluster");
    let publisher = start(&cl.client("a"), cl.node("a"), "whip", "show").await;
    wait_announced(&cl, "c", "show").await;

    let viewer = start(&cl.client("c"), cl.node("c"), "whep", "show").await;
    if let Some(w) = worker {
        // The worker is the session id's two hex characters after the node tag.
        let w = format!("{w:02x}");
        for (s, who) in [
            (publisher.session_id(), "publisher"),
            (viewer.session_id(), "viewer"),
        ] {
            assert_eq!(
                s.get(8..10),
                Some(w.as_str()),
                "the {who}'s stream on worker {w}"
            );
        }
    }
    wait_media(&viewer.peer, &viewer.mids).await;

    // c lists the stream with the publisher, held by a.
    let body = streams(&cl.client("c")).await.expect("streams on c");
    let show = body["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["id"] == "show")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        show["publisher"]["sessionId"],
        publisher.session_id(),
        "{body}"
    );
    assert_eq!(show["publisher"]["node"], cl.id("a").as_str(), "{body}");
    assert_eq!(show["publisher"]["state"], "remote", "{body}");
    assert_eq!(
        show["subscribers"][0]["node"],
        cl.id("c").as_str(),
        "{body}"
    );
    drop(publisher);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_on_another_node_that_comes_first_plays_when_the_publisher_starts() {
    let cl = Cluster::start(&[("a", "eu"), ("c", "us")])
        .await
        .expect("cluster");
    let viewer = start(&cl.client("c"), cl.node("c"), "whep", "later").await;
    let _publisher = start(&cl.client("a"), cl.node("a"), "whip", "later").await;
    wait_media(&viewer.peer, &viewer.mids).await;
}

/// Two publishers of one name on two nodes at once: the cluster ends with one, every node lists
/// the same one, and a viewer on a third node plays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_publishers_end_with_one_winner_everywhere() {
    let cl = Cluster::start(&[("a", "eu"), ("b", "eu"), ("c", "us")])
        .await
        .expect("cluster");
    let (api_a, api_b) = (cl.client("a"), cl.client("b"));
    let (pa, pb) = (
        Peer::new("pa").expect("peer"),
        Peer::new("pb").expect("peer"),
    );
    let kinds = [MediaKind::Audio, MediaKind::Video];
    let ((ma, oa), (mb, ob)) = (
        pa.create_send_offer(&kinds).await.expect("offer"),
        pb.create_send_offer(&kinds).await.expect("offer"),
    );
    let (ra, rb) = tokio::join!(
        send(&api_a, Method::POST, "whip/race", &[], &oa, Some(SDP)),
        send(&api_b, Method::POST, "whip/race", &[], &ob, Some(SDP)),
    );
    // Both may win their own node (the race), or the second may already see the first (409).
    let accepted: Vec<_> = [&ra, &rb].into_iter().filter(|r| r.status == 201).collect();
    assert!(
        !accepted.is_empty(),
        "a: {} {}; b: {} {}",
        ra.status,
        ra.text,
        rb.status,
        rb.text
    );
    for r in [&ra, &rb] {
        if r.status != 201 {
            assert_problem(r, 409);
        }
    }
    for (peer, r) in [(&pa, &ra), (&pb, &rb)] {
        if r.status == 201 {
            peer.accept_answer(&r.text).await.expect("answer");
        }
    }

    let (winner, _) = poll_until(
        "one publisher of the stream on every node",
        PROPAGATION,
        STEP,
        async || {
            let mut seen = Vec::new();
            for node in ["a", "b", "c"] {
                let p = listed_publisher(&cl.client(node), "race").await?;
                if node != "c" || p.is_some() {
                    seen.push(p);
                }
            }
            // a and b: exactly one holds a publisher of its own; the other lists none or the
            // winner (its viewers' view).
            let own: Vec<&String> = seen.iter().flatten().collect();
            ensure!(!own.is_empty(), "no publisher left: {seen:?}");
            ensure!(own.iter().all(|p| *p == own[0]), "two publishers: {seen:?}");
            Ok(own[0].clone())
        },
    )
    .await
    .expect("the race resolves to one publisher");
    let won_on_a = ra.header("location").is_some_and(|l| l.ends_with(&winner));
    let won_on_b = rb.header("location").is_some_and(|l| l.ends_with(&winner));
    assert!(won_on_a ^ won_on_b, "the winner {winner} is one of the two");

    // The winner's client sends; a viewer on the third node plays it.
    let (pw, mids) = if won_on_a { (&pa, &ma) } else { (&pb, &mb) };
    pw.wait_connected(trackmesh_tests::flows::CONNECT_TIMEOUT)
        .await
        .expect("the winner connects");
    pw.start_sending(mids).await.expect("sending");
    let viewer = start(&cl.client("c"), cl.node("c"), "whep", "race").await;
    wait_media(&viewer.peer, &viewer.mids).await;
}

/// The viewers' node dies: they play again from another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_of_a_killed_node_play_again_from_another() {
    let mut cl = Cluster::start(&[("a", "eu"), ("b", "us"), ("c", "us")])
        .await
        .expect("cluster");
    let _publisher = start(&cl.client("a"), cl.node("a"), "whip", "live").await;
    wait_announced(&cl, "c", "live").await;
    let viewer = start(&cl.client("c"), cl.node("c"), "whep", "live").await;
    wait_media(&viewer.peer, &viewer.mids).await;

    cl.kill("c").expect("kill c");
    drop(viewer);
    wait_announced(&cl, "b", "live").await;
    let again = start(&cl.client("b"), cl.node("b"), "whep", "live").await;
    wait_media(&again.peer, &again.mids).await;
}
