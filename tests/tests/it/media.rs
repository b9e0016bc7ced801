//! Media through a real node: publish audio + video with the str0m client, pull it into other
//! sessions, check what arrives, and check what GET session reports as tracks open and close.

use std::time::{Duration, Instant};

use trackmesh_tests::flows::{MEDIA_TIMEOUT, bytes_stop_growing, wait_session};
use trackmesh_tests::{MediaKind, Peer, Publisher, Subscriber, TestNode};

const SETTLE: Duration = Duration::from_millis(700);
const QUIET_WINDOW: Duration = Duration::from_millis(1200);

fn start_node(args: &[&str]) -> TestNode {
    TestNode::start(args).expect("starting the trackmesh node")
}

/// Wait until `sub` got audio and video (with a keyframe) on the given mids.
async fn expect_av(sub: &Subscriber, audio_mid: &str, video_mid: &str) {
    let (a, v) = (audio_mid.to_string(), video_mid.to_string());
    let s = sub
        .peer
        .wait_until(
            "audio frames, video frames and a keyframe",
            MEDIA_TIMEOUT,
            move |s| s.rx_frames(&a) >= 20 && s.rx_frames(&v) >= 10 && s.rx_keyframes(&v) >= 1,
        )
        .await
        .expect("subscriber receives media");
    // Audio frames are forwarded whole: the publisher sends 100-byte frames.
    assert_eq!(
        s.rx_bytes(audio_mid) / s.rx_frames(audio_mid),
        100,
        "audio frames arrive with the size they were sent with"
    );
    assert!(
        s.rx_bytes(video_mid) / s.rx_frames(video_mid) >= 1000,
        "video frames arrive whole (>= 1000 bytes each): {s:?}"
    );
}

/// Push A, pull into B and C (fan-out), statuses, then B closes with force:true.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_pull_fan_out_statuses_and_forced_close() {
    let node = start_node(&[]);
    let api = node.client();

    let publisher = Publisher::start_av(&api, "cam").await.expect("publisher A");
    let refs = publisher.remote_refs();
    let a_audio = publisher.track(MediaKind::Audio).expect("audio").clone();
    let a_video = publisher.track(MediaKind::Video).expect("video").clone();

    let b = Subscriber::start(&api, "b", &refs)
        .await
        .expect("subscriber B");
    assert_eq!(
        b.pull.requires_immediate_renegotiation,
        Some(true),
        "a pull needs a renegotiation: {:?}",
        b.pull
    );
    assert_eq!(b.pull.tracks.len(), 2, "{:?}", b.pull);
    let b_audio = b
        .mid_of(&publisher.session_id, &a_audio.track_name)
        .expect("B audio mid");
    let b_video = b
        .mid_of(&publisher.session_id, &a_video.track_name)
        .expect("B video mid");
    assert_ne!(b_audio, b_video, "each pulled track gets its own mid");
    expect_av(&b, &b_audio, &b_video).await;

    // Fan-out: a second subscriber receives too.
    let c = Subscriber::start(&api, "c", &refs)
        .await
        .expect("subscriber C");
    let c_audio = c
        .mid_of(&publisher.session_id, &a_audio.track_name)
        .expect("C audio mid");
    let c_video = c
        .mid_of(&publisher.session_id, &a_video.track_name)
        .expect("C video mid");
    expect_av(&c, &c_audio, &c_video).await;

    // GET session: the publisher lists its local tracks, the subscriber its remote ones, all active.
    let st_a = api.get_session(&publisher.session_id).await.expect("GET A");
    for t in [&a_audio, &a_video] {
        let item = st_a
            .track_by_mid(&t.mid)
            .unwrap_or_else(|| panic!("GET A lists mid {}: {st_a:?}", t.mid));
        assert_eq!(item.track_name.as_deref(), Some(t.track_name.as_str()));
        assert_eq!(item.location.as_deref(), Some("local"));
        assert_eq!(item.status.as_deref(), Some("active"), "{st_a:?}");
    }
    let st_b = api.get_session(&b.session_id).await.expect("GET B");
    for (mid, name) in [
        (&b_audio, &a_audio.track_name),
        (&b_video, &a_video.track_name),
    ] {
        let item = st_b
            .track_by_mid(mid)
            .unwrap_or_else(|| panic!("GET B lists mid {mid}: {st_b:?}"));
        assert_eq!(item.location.as_deref(), Some("remote"), "{st_b:?}");
        assert_eq!(item.track_name.as_deref(), Some(name.as_str()));
        assert_eq!(
            item.session_id.as_deref(),
            Some(publisher.session_id.as_str())
        );
        assert_eq!(item.status.as_deref(), Some("active"), "{st_b:?}");
    }

    // B closes both pulled tracks without renegotiation.
    let closed = b
        .peer
        .close_force(&api, &b.session_id, &[&b_audio, &b_video])
        .await
        .expect("B tracks/close force");
    assert_ne!(
        closed.requires_immediate_renegotiation,
        Some(true),
        "{closed:?}"
    );
    for mid in [&b_audio, &b_video] {
        let item = closed
            .tracks
            .iter()
            .find(|t| t.mid.as_deref() == Some(mid.as_str()))
            .unwrap_or_else(|| panic!("close answer lists mid {mid}: {closed:?}"));
        assert_eq!(item.error_code, None, "{closed:?}");
    }
    let st_b = api
        .get_session(&b.session_id)
        .await
        .expect("GET B after close");
    assert_eq!(st_b.status_of(&b_audio), Some("inactive"), "{st_b:?}");
    assert_eq!(st_b.status_of(&b_video), Some("inactive"), "{st_b:?}");
    let st_a = api
        .get_session(&publisher.session_id)
        .await
        .expect("GET A after B's close");
    assert_eq!(st_a.status_of(&a_audio.mid), Some("active"), "{st_a:?}");
    assert_eq!(st_a.status_of(&a_video.mid), Some("active"), "{st_a:?}");

    // Forwarding to B stops; C keeps receiving.
    let (before, after) =
        bytes_stop_growing(SETTLE, QUIET_WINDOW, || b.peer.stats().total_rx_bytes()).await;
    assert_eq!(
        before, after,
        "B still receives media after closing its tracks"
    );
    let c_before = c.peer.stats().total_rx_bytes();
    let (ca, cv) = (c_audio.clone(), c_video.clone());
    let c_now = c.peer.stats();
    let (a0, v0) = (c_now.rx_frames(&ca), c_now.rx_frames(&cv));
    c.peer
        .wait_until(
            "C keeps receiving after B closed",
            MEDIA_TIMEOUT,
            move |s| s.rx_frames(&ca) >= a0 + 20 && s.rx_frames(&cv) >= v0 + 10,
        )
        .await
        .expect("C unaffected by B's close");
    assert!(c.peer.stats().total_rx_bytes() > c_before);
}

/// The publisher closes its tracks with force:true while its media keeps flowing: subscribers
/// stop receiving and GET shows the tracks inactive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_forced_close_stops_subscribers() {
    let node = start_node(&[]);
    let api = node.client();
    let publisher = Publisher::start_av(&api, "pub").await.expect("publisher");
    let a_audio = publisher
        .track(MediaKind::Audio)
        .expect("audio")
        .mid
        .clone();
    let a_video = publisher
        .track(MediaKind::Video)
        .expect("video")
        .mid
        .clone();
    let sub = Subscriber::start(&api, "sub", &publisher.remote_refs())
        .await
        .expect("subscriber");
    let names: Vec<String> = publisher
        .tracks
        .iter()
        .map(|t| t.track_name.clone())
        .collect();
    let s_audio = sub.mid_of(&publisher.session_id, &names[0]).expect("mid");
    let s_video = sub.mid_of(&publisher.session_id, &names[1]).expect("mid");
    expect_av(&sub, &s_audio, &s_video).await;

    // Close on the API only: the publisher's peer keeps sending packets.
    let closed = api
        .tracks_close(&publisher.session_id, &[&a_audio, &a_video], true, None)
        .await
        .expect("publisher tracks/close force");
    assert!(
        closed.tracks.iter().all(|t| t.error_code.is_none()),
        "{closed:?}"
    );
    let st = api.get_session(&publisher.session_id).await.expect("GET A");
    assert_eq!(st.status_of(&a_audio), Some("inactive"), "{st:?}");
    assert_eq!(st.status_of(&a_video), Some("inactive"), "{st:?}");

    let sent_before = publisher.peer.stats().tx_frames(&a_video);
    let (before, after) =
        bytes_stop_growing(SETTLE, QUIET_WINDOW, || sub.peer.stats().total_rx_bytes()).await;
    assert!(
        publisher.peer.stats().tx_frames(&a_video) > sent_before,
        "the publisher kept sending during the check"
    );
    assert_eq!(
        before, after,
        "subscriber still receives a closed publication"
    );

    // A closed publication cannot be pulled any more.
    let late = Peer::new("late").expect("peer");
    let late_session = api.sessions_new().await.expect("sessions/new").session_id;
    let resp = late
        .pull(&api, &late_session, &[(&publisher.session_id, &names[1])])
        .await
        .expect("the pull call itself succeeds (HTTP 200)");
    let item = resp.tracks.first().expect("one item in the answer");
    assert_eq!(
        item.error_code.as_deref(),
        Some("not_found_track_error"),
        "{resp:?}"
    );
    assert_eq!(item.mid.as_deref(), Some(""), "{resp:?}");
}

/// The publisher closes with force:false: it stops the transceivers, sends an offer, applies
/// the SFU's answer; the subscriber stops receiving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_negotiated_close_stops_subscribers() {
    let node = start_node(&[]);
    let api = node.client();
    let publisher = Publisher::start_av(&api, "pub").await.expect("publisher");
    let a_audio = publisher
        .track(MediaKind::Audio)
        .expect("audio")
        .mid
        .clone();
    let a_video = publisher
        .track(MediaKind::Video)
        .expect("video")
        .mid
        .clone();
    let sub = Subscriber::start(&api, "sub", &publisher.remote_refs())
        .await
        .expect("subscriber");
    let names: Vec<String> = publisher
        .tracks
        .iter()
        .map(|t| t.track_name.clone())
        .collect();
    let s_audio = sub.mid_of(&publisher.session_id, &names[0]).expect("mid");
    let s_video = sub.mid_of(&publisher.session_id, &names[1]).expect("mid");
    expect_av(&sub, &s_audio, &s_video).await;

    let closed = publisher
        .peer
        .close_negotiated(&api, &publisher.session_id, &[&a_audio, &a_video], true)
        .await
        .expect("negotiated close: the SFU answers and str0m accepts the answer");
    assert_ne!(
        closed.requires_immediate_renegotiation,
        Some(true),
        "{closed:?}"
    );
    assert!(
        closed.tracks.iter().all(|t| t.error_code.is_none()),
        "{closed:?}"
    );
    let st = api.get_session(&publisher.session_id).await.expect("GET A");
    assert_eq!(st.status_of(&a_audio), Some("inactive"), "{st:?}");
    assert_eq!(st.status_of(&a_video), Some("inactive"), "{st:?}");
    let (before, after) =
        bytes_stop_growing(SETTLE, QUIET_WINDOW, || sub.peer.stats().total_rx_bytes()).await;
    assert_eq!(
        before, after,
        "subscriber still receives after the publisher closed"
    );
    assert!(
        publisher.peer.stats().errors.is_empty(),
        "publisher peer errors: {:?}",
        publisher.peer.stats().errors
    );
}

/// A subscriber closes one pulled track with force:false (transceiver set inactive, offer,
/// answer): that mid stops, the other keeps flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_negotiated_close_of_one_track() {
    let node = start_node(&[]);
    let api = node.client();
    let publisher = Publisher::start_av(&api, "pub").await.expect("publisher");
    let sub = Subscriber::start(&api, "sub", &publisher.remote_refs())
        .await
        .expect("subscriber");
    let names: Vec<String> = publisher
        .tracks
        .iter()
        .map(|t| t.track_name.clone())
        .collect();
    let s_audio = sub.mid_of(&publisher.session_id, &names[0]).expect("mid");
    let s_video = sub.mid_of(&publisher.session_id, &names[1]).expect("mid");
    expect_av(&sub, &s_audio, &s_video).await;

    sub.peer
        .close_negotiated(&api, &sub.session_id, &[&s_video], false)
        .await
        .expect("negotiated close of the pulled video");
    let st = api.get_session(&sub.session_id).await.expect("GET sub");
    assert_eq!(st.status_of(&s_video), Some("inactive"), "{st:?}");
    assert_eq!(st.status_of(&s_audio), Some("active"), "{st:?}");

    let (before, after) =
        bytes_stop_growing(SETTLE, QUIET_WINDOW, || sub.peer.stats().rx_bytes(&s_video)).await;
    assert_eq!(before, after, "closed video mid still receives");
    let a0 = sub.peer.stats().rx_frames(&s_audio);
    let sa = s_audio.clone();
    sub.peer
        .wait_until("audio keeps flowing", MEDIA_TIMEOUT, move |s| {
            s.rx_frames(&sa) >= a0 + 20
        })
        .await
        .expect("the other track is unaffected");
}

/// `--track-timeout 2s`: a publisher that stops sending loses its tracks after the timeout;
/// a new pull then gets not_found_track_error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_track_is_garbage_collected() {
    let node = start_node(&["--track-timeout", "2s"]);
    let api = node.client();
    let publisher = Publisher::start_av(&api, "gc").await.expect("publisher");
    let a_audio = publisher.track(MediaKind::Audio).expect("audio").clone();
    let a_video = publisher.track(MediaKind::Video).expect("video").clone();
    let sub = Subscriber::start(&api, "sub", &publisher.remote_refs())
        .await
        .expect("subscriber");
    let s_audio = sub
        .mid_of(&publisher.session_id, &a_audio.track_name)
        .expect("mid");
    let s_video = sub
        .mid_of(&publisher.session_id, &a_video.track_name)
        .expect("mid");
    expect_av(&sub, &s_audio, &s_video).await;

    publisher
        .peer
        .stop_all_sending()
        .await
        .expect("stop sending");
    let stopped_at = Instant::now();
    let st = api.get_session(&publisher.session_id).await.expect("GET A");
    assert_eq!(
        st.status_of(&a_audio.mid),
        Some("active"),
        "still active right after stopping: {st:?}"
    );

    let (am, vm) = (a_audio.mid.clone(), a_video.mid.clone());
    let st = wait_session(
        &api,
        &publisher.session_id,
        "both tracks inactive after --track-timeout 2s",
        Duration::from_secs(12),
        move |st| st.status_of(&am) == Some("inactive") && st.status_of(&vm) == Some("inactive"),
    )
    .await
    .expect("silent tracks are garbage-collected");
    let elapsed = stopped_at.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500),
        "tracks went inactive after {elapsed:?}, before the 2 s timeout: {st:?}"
    );
    assert_eq!(
        st.track_by_mid(&a_audio.mid)
            .and_then(|t| t.track_name.as_deref()),
        Some(a_audio.track_name.as_str()),
        "garbage-collected tracks stay listed"
    );

    // A new subscriber cannot pull it any more.
    let late = Peer::new("late").expect("peer");
    let late_session = api.sessions_new().await.expect("sessions/new").session_id;
    let resp = late
        .pull(
            &api,
            &late_session,
            &[(&publisher.session_id, &a_audio.track_name)],
        )
        .await
        .expect("the pull call itself succeeds (HTTP 200)");
    let item = resp.tracks.first().expect("one item in the answer");
    assert_eq!(
        item.error_code.as_deref(),
        Some("not_found_track_error"),
        "{resp:?}"
    );
    assert_eq!(item.mid.as_deref(), Some(""), "{resp:?}");
}

/// The older flow: sessions/new with an offer returns 201 + an answer the client can apply,
/// and the PeerConnection connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_new_with_offer_connects() {
    let node = start_node(&[]);
    let api = node.client();
    let peer = Peer::new("old-flow").expect("peer");
    let (_mids, offer) = peer
        .create_send_offer(&[MediaKind::Audio])
        .await
        .expect("offer");
    let resp = api
        .sessions_new_with_offer(&offer)
        .await
        .expect("sessions/new with an offer");
    assert_eq!(resp.session_id.len(), 32, "{resp:?}");
    let sd = resp.session_description.expect("an answer in the response");
    assert_eq!(sd.kind, "answer");
    peer.accept_answer(&sd.sdp)
        .await
        .expect("str0m accepts the SFU answer");
    peer.wait_connected(Duration::from_secs(15))
        .await
        .expect("connects to the node");
}

/// A subscriber that joins long after the publisher's last keyframe still gets a keyframe
/// quickly (the SFU asks the publisher for one, or serves a cached one). The publisher here
/// only sends keyframes at the start and when asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_subscriber_gets_a_keyframe_quickly() {
    let node = start_node(&[]);
    let api = node.client();
    let publisher = Publisher::start_av(&api, "kf").await.expect("publisher");
    publisher
        .peer
        .set_keyframe_interval(Duration::from_secs(600))
        .await
        .expect("no periodic keyframes");
    let video = publisher.track(MediaKind::Video).expect("video").clone();
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let sub = Subscriber::start(&api, "late", &publisher.remote_refs())
        .await
        .expect("subscriber");
    let s_video = sub
        .mid_of(&publisher.session_id, &video.track_name)
        .expect("mid");
    let connected_at = Instant::now();
    let sv = s_video.clone();
    let got = sub
        .peer
        .wait_until(
            "a keyframe on the pulled video",
            Duration::from_secs(3),
            move |s| s.rx_keyframes(&sv) >= 1,
        )
        .await;
    let pub_stats = publisher.peer.stats();
    assert!(
        got.is_ok(),
        "no keyframe within 3 s of connecting (publisher got keyframe requests: {:?}, sent keyframes: {}); {got:?}",
        pub_stats.keyframe_requests,
        pub_stats.tx.get(&video.mid).map_or(0, |c| c.keyframes),
    );
    eprintln!("keyframe after {:?}", connected_at.elapsed());
}

/// The common meeting shape: each participant's single session publishes and subscribes.
/// Push (client offer) and pull (SFU offer) renegotiate the same PeerConnection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_participants_exchange_media_in_one_session_each() {
    let node = start_node(&[]);
    let api = node.client();
    let alice = Publisher::start_av(&api, "alice").await.expect("alice");
    let bob = Publisher::start_av(&api, "bob").await.expect("bob");

    let a_refs = alice.remote_refs();
    let b_refs = bob.remote_refs();
    let pull_a: Vec<(&str, &str)> = b_refs
        .iter()
        .map(|(s, t)| (s.as_str(), t.as_str()))
        .collect();
    let pull_b: Vec<(&str, &str)> = a_refs
        .iter()
        .map(|(s, t)| (s.as_str(), t.as_str()))
        .collect();
    let resp_a = alice
        .peer
        .pull(&api, &alice.session_id, &pull_a)
        .await
        .expect("alice pulls bob");
    let resp_b = bob
        .peer
        .pull(&api, &bob.session_id, &pull_b)
        .await
        .expect("bob pulls alice");

    for (who, peer, resp) in [("alice", &alice.peer, &resp_a), ("bob", &bob.peer, &resp_b)] {
        let mids: Vec<String> = resp
            .tracks
            .iter()
            .map(|t| {
                assert_eq!(t.error_code, None, "{who}: {resp:?}");
                t.mid.clone().unwrap_or_default()
            })
            .collect();
        assert_eq!(mids.len(), 2, "{who}: {resp:?}");
        let m = mids.clone();
        peer.wait_until(
            "media from the other participant",
            MEDIA_TIMEOUT,
            move |s| m.iter().all(|mid| s.rx_frames(mid) >= 10),
        )
        .await
        .unwrap_or_else(|e| panic!("{who}: {e:#}"));
        // Their own sending continues after the renegotiation.
        let own: Vec<String> = if who == "alice" {
            alice.tracks.iter().map(|t| t.mid.clone()).collect()
        } else {
            bob.tracks.iter().map(|t| t.mid.clone()).collect()
        };
        let before: Vec<u64> = own.iter().map(|m| peer.stats().tx_frames(m)).collect();
        peer.wait_until("still sending", MEDIA_TIMEOUT, move |s| {
            own.iter().zip(&before).all(|(m, b)| s.tx_frames(m) > b + 5)
        })
        .await
        .unwrap_or_else(|e| panic!("{who}: {e:#}"));
    }
    let st = api.get_session(&alice.session_id).await.expect("GET alice");
    assert_eq!(st.tracks.len(), 4, "2 local + 2 remote: {st:?}");
    assert!(
        st.tracks
            .iter()
            .all(|t| t.status.as_deref() == Some("active")),
        "{st:?}"
    );
}

/// tracks/update re-points an existing receiving mid at another publication (spec §3.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracks_update_repoints_a_receiver() {
    let node = start_node(&[]);
    let api = node.client();
    let p1 = Publisher::start_av(&api, "p1").await.expect("p1");
    let p2 = Publisher::start_av(&api, "p2").await.expect("p2");
    let v1 = p1.track(MediaKind::Video).expect("video").clone();
    let v2 = p2.track(MediaKind::Video).expect("video").clone();
    let sub = Subscriber::start(
        &api,
        "sub",
        &[(p1.session_id.clone(), v1.track_name.clone())],
    )
    .await
    .expect("subscriber");
    let mid = sub.mid_of(&p1.session_id, &v1.track_name).expect("mid");
    let m = mid.clone();
    sub.peer
        .wait_until("p1 video", MEDIA_TIMEOUT, move |s| s.rx_frames(&m) >= 10)
        .await
        .expect("p1 video arrives");

    // p1 goes quiet: the mid stops receiving.
    p1.peer.stop_all_sending().await.expect("p1 stops");
    let (before, after) =
        bytes_stop_growing(SETTLE, QUIET_WINDOW, || sub.peer.stats().rx_bytes(&mid)).await;
    assert_eq!(before, after, "p1 stopped sending");

    let mut target = trackmesh_tests::TrackObject::remote(&p2.session_id, &v2.track_name);
    target.mid = Some(mid.clone());
    let resp = api
        .tracks_update(&sub.session_id, vec![target], None)
        .await
        .expect("tracks/update");
    let item = resp.tracks.first().expect("one item");
    assert_eq!(item.error_code, None, "{resp:?}");
    assert_eq!(item.mid.as_deref(), Some(mid.as_str()), "{resp:?}");
    if let Some(sd) = &resp.session_description {
        assert_eq!(sd.kind, "offer", "{resp:?}");
        let answer = sub.peer.accept_offer(&sd.sdp).await.expect("answer");
        api.renegotiate(&sub.session_id, &answer)
            .await
            .expect("renegotiate");
    }
    let m = mid.clone();
    let f0 = sub.peer.stats().rx_frames(&mid);
    let k0 = sub.peer.stats().rx_keyframes(&mid);
    sub.peer
        .wait_until("p2 video on the same mid", MEDIA_TIMEOUT, move |s| {
            s.rx_frames(&m) >= f0 + 10 && s.rx_keyframes(&m) > k0
        })
        .await
        .expect("the mid now carries p2's video, starting with a keyframe");
    let st = api.get_session(&sub.session_id).await.expect("GET sub");
    let t = st.track_by_mid(&mid).expect("mid listed");
    assert_eq!(
        t.session_id.as_deref(),
        Some(p2.session_id.as_str()),
        "{st:?}"
    );
    assert_eq!(
        t.track_name.as_deref(),
        Some(v2.track_name.as_str()),
        "{st:?}"
    );
}

/// autoDiscover: the SFU names every new m-section of the offer (spec §3.2 variant 4, used by
/// WHIP ingest); the discovered names can be pulled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_discover_names_tracks_that_can_be_pulled() {
    let node = start_node(&[]);
    let api = node.client();
    let peer = Peer::new("whip").expect("peer");
    let session = api.sessions_new().await.expect("sessions/new").session_id;
    let (mids, offer) = peer
        .create_send_offer(&[MediaKind::Audio, MediaKind::Video])
        .await
        .expect("offer");
    let req = trackmesh_tests::TracksRequest {
        session_description: Some(trackmesh_tests::SessionDescription::offer(offer)),
        tracks: None,
        auto_discover: Some(true),
    };
    let resp = api
        .tracks_new(&session, &req)
        .await
        .expect("tracks/new autoDiscover");
    let sd = resp.session_description.clone().expect("an answer");
    assert_eq!(sd.kind, "answer");
    peer.accept_answer(&sd.sdp).await.expect("accept answer");
    assert_eq!(resp.tracks.len(), 2, "one track per m-section: {resp:?}");
    let mut names = Vec::new();
    for mid in &mids {
        let t = resp
            .tracks
            .iter()
            .find(|t| t.mid.as_deref() == Some(mid.as_str()))
            .unwrap_or_else(|| panic!("mid {mid} discovered: {resp:?}"));
        let name = t.track_name.clone().unwrap_or_default();
        assert!(!name.is_empty(), "{resp:?}");
        names.push(name);
    }
    assert_ne!(names[0], names[1]);
    peer.wait_connected(Duration::from_secs(15))
        .await
        .expect("connects");
    let mid_refs: Vec<&str> = mids.iter().map(String::as_str).collect();
    peer.start_sending(&mid_refs).await.expect("send");
    let m = mids.clone();
    peer.wait_until("frames sent", MEDIA_TIMEOUT, move |s| {
        m.iter().all(|x| s.tx_frames(x) >= 5)
    })
    .await
    .expect("sending");

    let refs: Vec<(String, String)> = names.iter().map(|n| (session.clone(), n.clone())).collect();
    let sub = Subscriber::start(&api, "whep", &refs)
        .await
        .expect("subscriber");
    let a = sub.mid_of(&session, &names[0]).expect("audio mid");
    let v = sub.mid_of(&session, &names[1]).expect("video mid");
    expect_av(&sub, &a, &v).await;
}

/// A subscriber vanishing without any API call (peer dropped) does not disturb the publisher
/// or the other subscribers, and the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_subscriber_does_not_disturb_others() {
    let mut node = start_node(&[]);
    let api = node.client();
    let publisher = Publisher::start_av(&api, "pub").await.expect("publisher");
    let refs = publisher.remote_refs();
    let gone = Subscriber::start(&api, "gone", &refs).await.expect("sub 1");
    let stay = Subscriber::start(&api, "stay", &refs).await.expect("sub 2");
    let ga = gone.mid_of(&refs[0].0, &refs[0].1).expect("mid");
    let gv = gone.mid_of(&refs[1].0, &refs[1].1).expect("mid");
    expect_av(&gone, &ga, &gv).await;
    let sa = stay.mid_of(&refs[0].0, &refs[0].1).expect("mid");
    let sv = stay.mid_of(&refs[1].0, &refs[1].1).expect("mid");
    expect_av(&stay, &sa, &sv).await;

    drop(gone);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = stay.peer.stats();
    let (a0, v0) = (s.rx_frames(&sa), s.rx_frames(&sv));
    let (sa2, sv2) = (sa.clone(), sv.clone());
    stay.peer
        .wait_until("still receiving", MEDIA_TIMEOUT, move |s| {
            s.rx_frames(&sa2) >= a0 + 25 && s.rx_frames(&sv2) >= v0 + 15
        })
        .await
        .expect("the remaining subscriber keeps receiving");
    assert!(node.is_running(), "node process exited");
    let st = api
        .get_session(&publisher.session_id)
        .await
        .expect("GET publisher");
    assert!(
        st.tracks
            .iter()
            .all(|t| t.status.as_deref() == Some("active")),
        "{st:?}"
    );
    // A new subscriber can still join.
    let again = Subscriber::start(&api, "again", &refs)
        .await
        .expect("sub 3");
    let na = again.mid_of(&refs[0].0, &refs[0].1).expect("mid");
    let nv = again.mid_of(&refs[1].0, &refs[1].1).expect("mid");
    expect_av(&again, &na, &nv).await;
}

/// A publisher that vanishes (no API call, no packets) loses its session after the
/// reconnect grace: GET answers 410 session_error and its tracks can no longer be pulled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_publisher_session_expires_after_grace() {
    let node = start_node(&["--reconnect-grace", "1s"]);
    let api = node.client();
    let publisher = Publisher::start_av(&api, "ghost").await.expect("publisher");
    let refs = publisher.remote_refs();
    let sub = Subscriber::start(&api, "sub", &refs)
        .await
        .expect("subscriber");
    let sa = sub.mid_of(&refs[0].0, &refs[0].1).expect("mid");
    let sv = sub.mid_of(&refs[1].0, &refs[1].1).expect("mid");
    expect_av(&sub, &sa, &sv).await;

    let sid = publisher.session_id.clone();
    drop(publisher);
    let gone_at = Instant::now();
    // ICE consent/keepalive loss takes some seconds to notice; then 1 s of grace.
    let path = format!("sessions/{sid}");
    let mut last = None;
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let r = api
            .request(
                reqwest::Method::GET,
                &path,
                Some(api.secret()),
                &[],
                trackmesh_tests::RawBody::None,
            )
            .await
            .expect("GET publisher session");
        if r.status != 200 {
            last = Some(r);
            break;
        }
    }
    let r = last.expect("the vanished publisher's session still answers 200 after 30 s");
    assert_eq!(r.status, 410, "{}", r.text);
    assert_eq!(r.error_code(), Some("session_error"), "{}", r.text);
    eprintln!("publisher session gone after {:?}", gone_at.elapsed());

    let late = Peer::new("late").expect("peer");
    let late_session = api.sessions_new().await.expect("sessions/new").session_id;
    let resp = late
        .pull(&api, &late_session, &[(&sid, &refs[1].1)])
        .await
        .expect("the pull call itself succeeds (HTTP 200)");
    let item = resp.tracks.first().expect("one item");
    assert_eq!(
        item.error_code.as_deref(),
        Some("not_found_track_error"),
        "{resp:?}"
    );
    // The subscriber's own session is still fine.
    let st = api
        .get_session(&sub.session_id)
        .await
        .expect("GET subscriber");
    assert_eq!(st.tracks.len(), 2, "{st:?}");
}

/// A pull that brings the client's own offer (`recvonly` sections named by each track's `mid`)
/// is answered by the SFU at once, with no renegotiation, and the media arrives on those mids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_with_the_clients_offer_is_answered_and_media_arrives() {
    use trackmesh_tests::{SessionDescription, TrackObject, TracksRequest};
    let node = start_node(&[]);
    let api = node.client();
    let p = Publisher::start_av(&api, "offer-pub")
        .await
        .expect("publisher");
    let sub = api.sessions_new().await.expect("sessions/new").session_id;
    let peer = Peer::new("offer-sub").expect("peer");
    let (mids, offer) = peer
        .create_recv_offer(&[MediaKind::Audio, MediaKind::Video])
        .await
        .expect("offer");
    let tracks = p
        .tracks
        .iter()
        .zip(&mids)
        .map(|(t, mid)| TrackObject {
            mid: Some(mid.clone()),
            ..TrackObject::remote(&p.session_id, &t.track_name)
        })
        .collect();
    let req = TracksRequest {
        session_description: Some(SessionDescription::offer(offer)),
        tracks: Some(tracks),
        auto_discover: None,
    };
    let resp = api.tracks_new(&sub, &req).await.expect("tracks/new");
    assert_ne!(
        resp.requires_immediate_renegotiation,
        Some(true),
        "{resp:?}"
    );
    let answer = resp.session_description.expect("an answer");
    assert_eq!(answer.kind, "answer");
    for (item, mid) in resp.tracks.iter().zip(&mids) {
        assert_eq!(item.mid.as_deref(), Some(mid.as_str()), "{item:?}");
        assert!(item.error_code.is_none(), "{item:?}");
    }
    peer.accept_answer(&answer.sdp).await.expect("accept");
    let mids2 = mids.clone();
    peer.wait_until("media on both mids", MEDIA_TIMEOUT, move |s| {
        mids2.iter().all(|m| s.rx_frames(m) >= 10)
    })
    .await
    .expect("media arrives");
}

/// Without `--bwe` the node sends subscribers no transport-wide sequence numbers: nothing would
/// read the feedback, and str0m would keep a record of each such packet (1,000 per session).
/// With `--bwe` they are back, as bandwidth estimation needs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_get_transport_wide_sequence_numbers_only_with_bandwidth_estimation() {
    for (args, expect_twcc) in [(&[][..], false), (&["--bwe", "true"][..], true)] {
        let node = start_node(args);
        let api = node.client();
        let publisher = Publisher::start_av(&api, "twcc").await.expect("publisher");
        let sub = Subscriber::start(&api, "viewer", &publisher.remote_refs())
            .await
            .expect("subscriber");
        let mid = |kind| {
            let t = publisher.track(kind).expect("track");
            sub.mid_of(&publisher.session_id, &t.track_name)
                .expect("mid")
        };
        let (am, vm) = (mid(MediaKind::Audio), mid(MediaKind::Video));
        expect_av(&sub, &am, &vm).await;
        let s = sub.peer.stats();
        for m in [&am, &vm] {
            let t = s.rx.get(m.as_str()).expect("a received track");
            assert!(t.frames > 0);
            assert_eq!(
                t.twcc_frames > 0,
                expect_twcc,
                "{args:?}: {} of {} frames on mid {m} carried a transport-wide sequence number",
                t.twcc_frames,
                t.frames
            );
        }
    }
}
