//! Sessions across transport changes through a real node: a subscriber whose socket moves to a
//! new port (Wi-Fi to mobile) recovers through an ICE restart with its pulled tracks intact.

use trackmesh_tests::api::{SessionDescription, TracksRequest};
use trackmesh_tests::flows::MEDIA_TIMEOUT;
use trackmesh_tests::{Publisher, Subscriber, TestNode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_moves_recovers_its_pulls_through_an_ice_restart() {
    let node = TestNode::start(&[]).expect("starting the trackmesh node");
    let api = node.client();
    let publisher = Publisher::start_av(&api, "pub").await.expect("publisher");
    let sub = Subscriber::start(&api, "sub", &publisher.remote_refs())
        .await
        .expect("subscriber");
    let mids: Vec<String> = publisher
        .tracks
        .iter()
        .map(|t| {
            sub.mid_of(&publisher.session_id, &t.track_name)
                .expect("pulled mid")
        })
        .collect();
    let m = mids.clone();
    sub.peer
        .wait_until("media before the move", MEDIA_TIMEOUT, move |s| {
            m.iter().all(|mid| s.rx_frames(mid) >= 10)
        })
        .await
        .expect("media flows");

    let old = sub.peer.local_addr();
    let moved = sub.peer.rebind().await.expect("new socket");
    assert_ne!(moved.port(), old.port(), "the client moved");
    let offer = sub.peer.ice_restart_offer().await.expect("restart offer");
    let res = api
        .tracks_new(
            &sub.session_id,
            &TracksRequest {
                session_description: Some(SessionDescription::offer(offer)),
                ..Default::default()
            },
        )
        .await
        .expect("tracks/new with the restart offer");
    let answer = res.session_description.expect("an answer");
    assert_eq!(answer.kind, "answer");
    sub.peer
        .accept_answer(&answer.sdp)
        .await
        .expect("the answer applies");

    let before: Vec<u64> = mids.iter().map(|m| sub.peer.stats().rx_frames(m)).collect();
    let m = mids.clone();
    sub.peer
        .wait_until("media on the new address", MEDIA_TIMEOUT, move |s| {
            m.iter()
                .zip(&before)
                .all(|(mid, b)| s.rx_frames(mid) >= b + 20)
        })
        .await
        .expect("pulled media resumes at the new address");
    let st = api.get_session(&sub.session_id).await.expect("GET session");
    for mid in &mids {
        assert_eq!(st.status_of(mid), Some("active"), "{st:?}");
    }
}
