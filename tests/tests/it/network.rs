//! The networks clients come from: IPv6 and IPv4 on one dual-stack media socket, and ICE-TCP
//! for clients whose UDP is blocked.

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use trackmesh_tests::flows::MEDIA_TIMEOUT;
use trackmesh_tests::peer::{Client, ClientConfig};
use trackmesh_tests::{MediaKind, Peer, Publisher, Subscriber, TestNode};

/// How long a test client lives at most.
const LIFETIME: Duration = Duration::from_secs(300);

/// Waits until `sub` got audio and video (with a keyframe) from the publisher's tracks.
async fn expect_media(sub: &Subscriber, publisher: &Publisher) {
    let mids: Vec<String> = publisher
        .tracks
        .iter()
        .map(|t| {
            sub.mid_of(&publisher.session_id, &t.track_name)
                .expect("a pulled mid")
        })
        .collect();
    let video = sub
        .mid_of(
            &publisher.session_id,
            &publisher
                .track(MediaKind::Video)
                .expect("a video track")
                .track_name,
        )
        .expect("video mid");
    sub.peer
        .wait_until(
            "frames on every track and a keyframe",
            MEDIA_TIMEOUT,
            move |s| mids.iter().all(|m| s.rx_frames(m) >= 10) && s.rx_keyframes(&video) >= 1,
        )
        .await
        .expect("the subscriber receives media");
}

fn has_ipv6_loopback() -> bool {
    std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_publisher_reaches_an_ipv4_subscriber_through_one_dual_stack_socket() {
    // Loopback ::1 exists on the machines these tests run on; without it this test cannot say
    // anything, so it fails rather than pass silently.
    assert!(
        has_ipv6_loopback(),
        "no IPv6 loopback (::1) on this machine"
    );
    let node = TestNode::start(&[
        "--media",
        "[::]:0",
        "--public-ip",
        "127.0.0.1",
        "--public-ip6",
        "::1",
    ])
    .expect("a dual-stack node starts");
    assert!(node.media_addr().is_ipv6(), "bound on [::]");
    let api = node.client();

    let mut cfg = ClientConfig::new("pub6", LIFETIME);
    cfg.ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let peer6 = Peer::from_client(Client::spawn_thread(cfg).expect("an IPv6 client"));
    assert!(peer6.local_addr().is_ipv6());
    let publisher = Publisher::start_on(
        &api,
        peer6,
        &[
            ("v6-audio", MediaKind::Audio),
            ("v6-video", MediaKind::Video),
        ],
    )
    .await
    .expect("the IPv6 client publishes");

    // Peer::new binds 127.0.0.1: the subscriber is an IPv4 client.
    let sub = Subscriber::start(&api, "sub4", &publisher.remote_refs())
        .await
        .expect("the IPv4 client pulls");
    assert!(sub.peer.local_addr().is_ipv4());
    expect_media(&sub, &publisher).await;
}

/// ICE-TCP on the second engine worker: its TCP twin listens on its own port (`--worker-ports`),
/// which the sessions' candidates name. Both sessions placed there; the TCP clients dial it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_tcp_reaches_a_session_on_the_second_worker_at_its_port() {
    let media = trackmesh_tests::node::free_udp_tcp_port().expect("a free port");
    let worker_port = trackmesh_tests::node::free_udp_tcp_port().expect("a free port");
    let node = TestNode::start(&[
        "--media",
        &format!("127.0.0.1:{media}"),
        "--media-tcp",
        "true",
        "--workers",
        "2",
        "--worker-ports",
        &worker_port.to_string(),
        "--worker-placement",
        "1,1",
    ])
    .expect("a node with ICE-TCP on two workers starts");
    let api = node.client();
    let tcp = std::net::SocketAddr::from(([127, 0, 0, 1], worker_port));
    let client = |name: &str| {
        let mut cfg = ClientConfig::new(name, LIFETIME);
        cfg.tcp = Some(tcp);
        Peer::from_client(Client::spawn_thread(cfg).expect("a TCP client"))
    };
    let publisher = Publisher::start_on(
        &api,
        client("pub-tcp-1"),
        &[("w-audio", MediaKind::Audio), ("w-video", MediaKind::Video)],
    )
    .await
    .expect("the TCP client publishes on worker 1");
    assert_eq!(publisher.session_id.get(8..10), Some("01"));
    let sub = Subscriber::start_on(&api, client("sub-tcp-1"), &publisher.remote_refs())
        .await
        .expect("the TCP client pulls on worker 1");
    expect_media(&sub, &publisher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_ice_tcp_only_publishes_and_another_pulls_over_tcp() {
    // The test client's TCP link reaches only the address it dialed (the first worker's
    // media port), where a browser dials its session's candidate: both sessions there.
    let node = TestNode::start(&["--media-tcp", "true", "--worker-placement", "0,0"])
        .expect("a node with ICE-TCP starts");
    let api = node.client();
    // The TCP twin listens on the media port.
    let tcp = node.media_addr();

    let mut cfg = ClientConfig::new("pub-tcp", LIFETIME);
    cfg.tcp = Some(tcp);
    let peer = Peer::from_client(Client::spawn_thread(cfg).expect("a TCP client"));
    let publisher = Publisher::start_on(
        &api,
        peer,
        &[("t-audio", MediaKind::Audio), ("t-video", MediaKind::Video)],
    )
    .await
    .expect("the TCP client publishes");

    let mut cfg = ClientConfig::new("sub-tcp", LIFETIME);
    cfg.tcp = Some(tcp);
    let peer = Peer::from_client(Client::spawn_thread(cfg).expect("a TCP client"));
    let sub = Subscriber::start_on(&api, peer, &publisher.remote_refs())
        .await
        .expect("the TCP client pulls");
    expect_media(&sub, &publisher).await;

    let m = node.scrape().await.expect("metrics");
    let accepted = m
        .get("trackmesh_ice_tcp_accepted_total")
        .copied()
        .unwrap_or(0.0);
    assert!(accepted >= 2.0, "both clients came over TCP: {accepted}");

    // A UDP client on the same node still works: ICE-TCP is an extra candidate.
    let udp = Subscriber::start(&api, "sub-udp", &publisher.remote_refs())
        .await
        .expect("a UDP client pulls");
    expect_media(&udp, &publisher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_media_bind_with_a_public_ip_connects_clients() {
    // The common production form (`--media 0.0.0.0:PORT --public-ip IP`): packets arrive on the
    // wildcard socket but must be matched to the announced candidate.
    let node = TestNode::start(&["--media", "0.0.0.0:0", "--public-ip", "127.0.0.1"])
        .expect("a node on the wildcard address starts");
    let api = node.client();
    let publisher = Publisher::start_av(&api, "wild")
        .await
        .expect("a client publishes");
    let sub = Subscriber::start(&api, "wild-sub", &publisher.remote_refs())
        .await
        .expect("a client pulls");
    expect_media(&sub, &publisher).await;
}
