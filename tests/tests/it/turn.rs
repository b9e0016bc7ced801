//! The TURN service: the Calls credential endpoints and the embedded TURN server, driven by a
//! TURN client written on the STUN codec alone (RFC 8656 messages over UDP).

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use bytecodec::{DecodeExt as _, EncodeExt as _};
use serde_json::{Value, json};
use stun_codec::rfc5389::attributes::{
    ErrorCode, MessageIntegrity, Nonce, Realm, Username, XorMappedAddress,
};
use stun_codec::rfc5766::attributes::{
    ChannelNumber, RequestedTransport, XorPeerAddress, XorRelayAddress,
};
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, REFRESH};
use stun_codec::{
    Message, MessageClass, MessageDecoder, MessageEncoder, Method, TransactionId,
    define_attribute_enums,
};
use trackmesh_tests::node::free_udp_tcp_port;
use trackmesh_tests::peer::{Client, ClientConfig};
use trackmesh_tests::testkit::client::TurnChannel;
use trackmesh_tests::testkit::media::VideoShape;
use trackmesh_tests::{MediaKind, Peer, Publisher, Subscriber, TestNode};

define_attribute_enums!(
    Attr,
    AttrDecoder,
    AttrEncoder,
    [
        Username,
        MessageIntegrity,
        ErrorCode,
        Realm,
        Nonce,
        XorMappedAddress,
        RequestedTransport,
        XorPeerAddress,
        XorRelayAddress,
        ChannelNumber
    ]
);

const KEY: &str = "turnkey1";
const SECRET: &str = "turn-secret-1";

fn start() -> TestNode {
    let port = free_udp_tcp_port().expect("a free port").to_string();
    TestNode::start(&[
        "--turn-key",
        &format!("{KEY}:{SECRET}"),
        "--turn-port",
        &port,
    ])
    .expect("starting the node")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

async fn post(node: &TestNode, path: &str, bearer: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = http()
        .post(format!("{}{path}", node.http_url()))
        .bearer_auth(bearer);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = res.status().as_u16();
    let text = res.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn generate_path(key: &str) -> String {
    format!("/v1/turn/keys/{key}/credentials/generate-ice-servers")
}

/// (TURN server address, username, credential) from a 201 of generate-ice-servers.
async fn credentials(node: &TestNode, ttl: u64) -> (SocketAddr, String, String) {
    let (status, body) = post(node, &generate_path(KEY), SECRET, Some(json!({"ttl": ttl}))).await;
    assert_eq!(status, 201, "{body}");
    let turn = &body["iceServers"][1];
    let url = turn["urls"][0].as_str().expect("a TURN URL");
    let addr = url
        .strip_prefix("turn:")
        .and_then(|u| u.split('?').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("URL {url}"));
    (
        addr,
        turn["username"].as_str().expect("username").to_string(),
        turn["credential"].as_str().expect("credential").to_string(),
    )
}

async fn metric(node: &TestNode, series: &str) -> f64 {
    node.scrape()
        .await
        .expect("metrics")
        .get(series)
        .copied()
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_ice_servers_answers_201_with_stun_and_turn_urls() {
    let node = start();
    let (status, body) = post(
        &node,
        &generate_path(KEY),
        SECRET,
        Some(json!({"ttl": 86400})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let servers = body["iceServers"].as_array().expect("iceServers");
    assert_eq!(servers.len(), 2, "{body}");
    let stun = servers[0]["urls"][0].as_str().expect("stun url");
    assert!(stun.starts_with("stun:127.0.0.1:"), "{stun}");
    let port = stun.rsplit(':').next().expect("port");
    assert_eq!(
        servers[1]["urls"],
        json!([
            format!("turn:127.0.0.1:{port}?transport=udp"),
            format!("turn:127.0.0.1:{port}?transport=tcp")
        ])
    );
    let username = servers[1]["username"].as_str().expect("username");
    let (expiry, rest) = username.split_once(':').expect("expiry:key:…");
    let expiry: u64 = expiry.parse().expect("a unix time");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        (now + 86_000..=now + 86_500).contains(&expiry),
        "{username}"
    );
    assert!(rest.starts_with(&format!("{KEY}:")), "{username}");
    // The TURN REST API scheme: base64(HMAC-SHA1(secret, username)).
    let key = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        SECRET.as_bytes(),
    );
    let want = base64::engine::general_purpose::STANDARD
        .encode(aws_lc_rs::hmac::sign(&key, username.as_bytes()));
    assert_eq!(servers[1]["credential"], want.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_ice_servers_refuses_bad_ttl_bearer_and_key() {
    let node = start();
    let path = generate_path(KEY);
    for (body, what) in [
        (Some(json!({"ttl": 0})), "ttl 0"),
        (Some(json!({"ttl": 172_801})), "ttl over 48 h"),
        (Some(json!({"ttl": "1h"})), "ttl not a number"),
        (Some(json!({})), "no ttl"),
        (None, "no body"),
    ] {
        let (status, b) = post(&node, &path, SECRET, body).await;
        assert_eq!(
            (status, b["errorCode"].as_str()),
            (400, Some("bad_request")),
            "{what}: {b}"
        );
    }
    let (status, b) = post(&node, &path, SECRET, Some(json!({"ttl": 172_800}))).await;
    assert_eq!(status, 201, "48 h is allowed: {b}");
    let (status, b) = post(&node, &path, "wrong", Some(json!({"ttl": 60}))).await;
    assert_eq!(
        (status, b["errorCode"].as_str()),
        (401, Some("unauthorized")),
        "{b}"
    );
    let (status, b) = post(
        &node,
        &generate_path("nokey"),
        SECRET,
        Some(json!({"ttl": 60})),
    )
    .await;
    assert_eq!(
        (status, b["errorCode"].as_str()),
        (404, Some("not_found")),
        "{b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_turn_key_there_is_no_turn_service() {
    let node = TestNode::start(&[]).expect("starting the node");
    let (status, b) = post(&node, &generate_path(KEY), SECRET, Some(json!({"ttl": 60}))).await;
    assert_eq!(
        (status, b["errorCode"].as_str()),
        (404, Some("not_found")),
        "{b}"
    );
}

/// A TURN client on one UDP socket.
struct TurnClient {
    socket: tokio::net::UdpSocket,
    server: SocketAddr,
    username: String,
    password: String,
    realm: Option<Realm>,
    nonce: Option<Nonce>,
    next_tx: u8,
}

/// What signs a request: the long-term credential and the server's realm and nonce.
#[derive(Clone, Copy)]
struct Signer<'a> {
    username: &'a str,
    password: &'a str,
    realm: &'a Realm,
    nonce: &'a Nonce,
}

/// A request's bytes, signed when `signer` is given.
fn request_bytes(
    method: Method,
    tx: [u8; 12],
    attrs: Vec<Attr>,
    signer: Option<Signer<'_>>,
) -> Vec<u8> {
    let mut m: Message<Attr> = Message::new(MessageClass::Request, method, TransactionId::new(tx));
    for a in attrs {
        m.add_attribute(a);
    }
    if let Some(s) = signer {
        let user = Username::new(s.username.to_string()).expect("username");
        m.add_attribute(user.clone());
        m.add_attribute(s.realm.clone());
        m.add_attribute(s.nonce.clone());
        let mi = MessageIntegrity::new_long_term_credential(&m, &user, s.realm, s.password)
            .expect("integrity");
        m.add_attribute(mi);
    }
    MessageEncoder::new().encode_into_bytes(m).expect("encode")
}

impl TurnClient {
    async fn new(server: SocketAddr, username: &str, password: &str) -> TurnClient {
        TurnClient {
            socket: tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind"),
            server,
            username: username.into(),
            password: password.into(),
            realm: None,
            nonce: None,
            next_tx: 1,
        }
    }

    /// Sends a request (signed once a challenge was seen) and returns the answer, following the
    /// first 401 challenge and 438 stale-nonce answers (RFC 8489 §9.2.4) on the way.
    async fn request(&mut self, method: Method, attrs: Vec<Attr>) -> Message<Attr> {
        for _ in 0..3 {
            self.next_tx += 1;
            let signer = match (&self.realm, &self.nonce) {
                (Some(realm), Some(nonce)) => Some(Signer {
                    username: &self.username,
                    password: &self.password,
                    realm,
                    nonce,
                }),
                _ => None,
            };
            let bytes = request_bytes(method, [self.next_tx; 12], attrs.clone(), signer);
            self.socket
                .send_to(&bytes, self.server)
                .await
                .expect("send");
            let answer = self.recv().await;
            let code = error_code(&answer);
            let challenged = (self.realm.is_none() && code == Some(401)) || code == Some(438);
            if !challenged {
                return answer;
            }
            self.realm = answer.get_attribute::<Realm>().cloned();
            self.nonce = answer.get_attribute::<Nonce>().cloned();
        }
        panic!("challenged three times");
    }

    async fn recv(&self) -> Message<Attr> {
        let mut buf = vec![0u8; 2048];
        let (n, _) = tokio::time::timeout(Duration::from_secs(10), self.socket.recv_from(&mut buf))
            .await
            .expect("an answer from the TURN server")
            .expect("recv");
        MessageDecoder::<Attr>::new()
            .decode_from_bytes(&buf[..n])
            .expect("a STUN message")
            .expect("a whole STUN message")
    }

    async fn allocate(&mut self) -> Message<Attr> {
        self.request(ALLOCATE, vec![RequestedTransport::new(17).into()])
            .await
    }

    async fn permit(&mut self, peer: SocketAddr) -> Message<Attr> {
        self.request(CREATE_PERMISSION, vec![XorPeerAddress::new(peer).into()])
            .await
    }
}

impl TurnClient {
    /// Allocates, permits `peer` and binds channel 0x4000 to it: a str0m client then sends
    /// and receives everything through the TURN server (as a browser with
    /// `iceTransportPolicy: "relay"`).
    async fn channel_to(mut self, peer: SocketAddr) -> TurnChannel {
        let a = self.allocate().await;
        assert_eq!(a.class(), MessageClass::SuccessResponse, "allocate: {a:?}");
        let relayed = a
            .get_attribute::<XorRelayAddress>()
            .expect("a relayed address")
            .address();
        let channel = ChannelNumber::MIN;
        let bound = self
            .request(
                CHANNEL_BIND,
                vec![
                    ChannelNumber::new(channel).expect("a channel").into(),
                    XorPeerAddress::new(peer).into(),
                ],
            )
            .await;
        assert_eq!(
            bound.class(),
            MessageClass::SuccessResponse,
            "channel bind: {bound:?}"
        );
        let socket = self.socket.into_std().expect("a std socket");
        socket.set_nonblocking(false).expect("blocking");
        TurnChannel {
            socket,
            server: self.server,
            relayed,
            channel,
            peer,
        }
    }
}

/// A str0m peer whose every packet goes through the node's TURN server.
async fn relayed_peer(node: &TestNode, name: &str) -> Peer {
    let (server, user, pass) = credentials(node, 600).await;
    let channel = TurnClient::new(server, &user, &pass)
        .await
        .channel_to(node.media_addr())
        .await;
    let mut cfg = ClientConfig::new(name, Duration::from_secs(300));
    // The video of `Peer::new`, so relayed and direct clients are the same load.
    cfg.video = VideoShape::LIGHT;
    Peer::from_client(Client::spawn_thread_relayed(cfg, channel).expect("a relayed client"))
}

fn error_code(m: &Message<Attr>) -> Option<u16> {
    (m.class() == MessageClass::ErrorResponse)
        .then(|| m.get_attribute::<ErrorCode>().map(ErrorCode::code))
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_allocates_and_may_relay_only_to_the_media_address() {
    let node = start();
    let (server, user, pass) = credentials(&node, 600).await;
    let mut c = TurnClient::new(server, &user, &pass).await;
    let a = c.allocate().await;
    assert_eq!(a.class(), MessageClass::SuccessResponse, "{a:?}");
    let relayed = a
        .get_attribute::<XorRelayAddress>()
        .expect("a relayed address")
        .address();
    assert_eq!(relayed.ip(), server.ip(), "relayed on the TURN IP");
    assert_eq!(metric(&node, "trackmesh_turn_allocations").await, 1.0);

    let ok = c.permit(node.media_addr()).await;
    assert_eq!(
        ok.class(),
        MessageClass::SuccessResponse,
        "the media address: {ok:?}"
    );

    let elsewhere = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let refused = c.permit(elsewhere.local_addr().expect("addr")).await;
    assert_eq!(
        error_code(&refused),
        Some(403),
        "any other address: {refused:?}"
    );
    let other_port = SocketAddr::new(node.media_addr().ip(), node.http_addr().port());
    let refused = c.permit(other_port).await;
    assert_eq!(
        error_code(&refused),
        Some(403),
        "another port of the node: {refused:?}"
    );
    assert_eq!(
        metric(
            &node,
            "trackmesh_turn_refused_total{reason=\"peer_not_allowed\"}"
        )
        .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_expired_and_forged_credentials_are_refused() {
    let node = start();
    let (server, user, pass) = credentials(&node, 600).await;

    let revoke = format!("/v1/turn/keys/{KEY}/credentials/{user}/revoke");
    let (status, b) = post(&node, &revoke, "wrong", None).await;
    assert_eq!(status, 401, "{b}");
    let (status, b) = post(&node, &revoke, SECRET, None).await;
    assert_eq!(status, 204, "{b}");
    let mut c = TurnClient::new(server, &user, &pass).await;
    let a = c.allocate().await;
    assert!(error_code(&a).is_some(), "a revoked credential: {a:?}");
    assert_eq!(
        metric(&node, "trackmesh_turn_refused_total{reason=\"revoked\"}").await,
        1.0
    );

    // Expired: signed right with the key, but its time has passed.
    let expired = format!("1000:{KEY}:x");
    let key = aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        SECRET.as_bytes(),
    );
    let expired_pass = base64::engine::general_purpose::STANDARD
        .encode(aws_lc_rs::hmac::sign(&key, expired.as_bytes()));
    let mut c = TurnClient::new(server, &expired, &expired_pass).await;
    let a = c.allocate().await;
    assert!(error_code(&a).is_some(), "an expired credential: {a:?}");
    assert_eq!(
        metric(&node, "trackmesh_turn_refused_total{reason=\"expired\"}").await,
        1.0
    );

    // A good username with a wrong password fails MESSAGE-INTEGRITY.
    let (_, user2, _) = credentials(&node, 600).await;
    let mut c = TurnClient::new(server, &user2, "not-the-password").await;
    let a = c.allocate().await;
    assert_eq!(error_code(&a), Some(401), "a forged password: {a:?}");
    assert_eq!(metric(&node, "trackmesh_turn_allocations").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocations_per_credential_are_bounded() {
    let port = free_udp_tcp_port().expect("a free port").to_string();
    let node = TestNode::start(&[
        "--turn-key",
        &format!("{KEY}:{SECRET}"),
        "--turn-port",
        &port,
        "--turn-allocations-per-credential",
        "2",
    ])
    .expect("starting the node");
    let (server, user, pass) = credentials(&node, 600).await;
    // Allocations outlive the client's socket (UDP has no close): each stays until it expires.
    for i in 0..2 {
        let mut c = TurnClient::new(server, &user, &pass).await;
        let a = c.allocate().await;
        assert_eq!(
            a.class(),
            MessageClass::SuccessResponse,
            "allocation {i}: {a:?}"
        );
    }
    let mut c = TurnClient::new(server, &user, &pass).await;
    let a = c.allocate().await;
    assert_eq!(error_code(&a), Some(486), "the third: {a:?}");
    assert_eq!(
        metric(
            &node,
            "trackmesh_turn_refused_total{reason=\"allocations_per_credential\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_only_relays_through_turn_publishes_and_pulls() {
    // The test client's TURN channel reaches only the node's first media address, where a
    // browser takes the one in its session's candidate: both sessions on the first worker.
    let port = free_udp_tcp_port().expect("a free port").to_string();
    let node = TestNode::start(&[
        "--turn-key",
        &format!("{KEY}:{SECRET}"),
        "--turn-port",
        &port,
        "--worker-placement",
        "0,0",
    ])
    .expect("starting the node");
    let api = node.client();
    let publisher = Publisher::start_on(
        &api,
        relayed_peer(&node, "pub-relay").await,
        &[("r-audio", MediaKind::Audio), ("r-video", MediaKind::Video)],
    )
    .await
    .expect("the relayed client publishes");
    let sub = Subscriber::start_on(
        &api,
        relayed_peer(&node, "sub-relay").await,
        &publisher.remote_refs(),
    )
    .await
    .expect("the relayed client pulls");
    let video = sub
        .mid_of(&publisher.session_id, "r-video")
        .expect("video mid");
    sub.peer
        .wait_until(
            "relayed video frames and a keyframe",
            trackmesh_tests::flows::MEDIA_TIMEOUT,
            move |s| s.rx_frames(&video) >= 10 && s.rx_keyframes(&video) >= 1,
        )
        .await
        .expect("media arrives through TURN both ways");
    // (Only this direction is counted: the TURN crate does not report what it relays to peers.)
    let series = "trackmesh_turn_relayed_bytes_total{direction=\"to_client\"}";
    assert!(metric(&node, series).await > 0.0, "{series}");
}

/// CPU ticks (utime + stime) of a process, from `/proc/PID/stat`.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    num(11) + num(12)
}

/// The TURN CPU figure (BENCHMARKS.md): one publisher, `TRACKMESH_TURN_BENCH_SUBS` (default 10)
/// subscribers on one node process, first direct, then every client through the node's TURN
/// server; node CPU per forwarded RTP packet in each. Run by `benches/turn-cpu.sh`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by benches/turn-cpu.sh"]
async fn turn_relayed_media_cpu_against_direct() {
    let subs: usize = std::env::var("TRACKMESH_TURN_BENCH_SUBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let window = Duration::from_secs(
        std::env::var("TRACKMESH_TURN_BENCH_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10),
    );
    let tck = 100.0; // USER_HZ on Linux
    let mut results = Vec::new();
    for relayed in [false, true] {
        let port = free_udp_tcp_port().expect("a free port").to_string();
        let node = TestNode::start_process(&[
            "--turn-key",
            &format!("{KEY}:{SECRET}"),
            "--turn-port",
            &port,
            "--turn-bandwidth",
            "100000",
        ])
        .expect("a node process");
        let api = node.client();
        let peer = |name: String| {
            let node = &node;
            async move {
                if relayed {
                    relayed_peer(node, &name).await
                } else {
                    Peer::new(&name).expect("a direct client")
                }
            }
        };
        let publisher = Publisher::start_on(
            &api,
            peer("pub".into()).await,
            &[("b-audio", MediaKind::Audio), ("b-video", MediaKind::Video)],
        )
        .await
        .expect("publisher");
        let mut subscribers = Vec::new();
        for i in 0..subs {
            subscribers.push(
                Subscriber::start_on(
                    &api,
                    peer(format!("sub{i}")).await,
                    &publisher.remote_refs(),
                )
                .await
                .expect("subscriber"),
            );
        }
        // Warm-up: every subscriber receives before the window opens.
        for s in &subscribers {
            let video = s.mid_of(&publisher.session_id, "b-video").expect("mid");
            s.peer
                .wait_until("video", trackmesh_tests::flows::MEDIA_TIMEOUT, move |st| {
                    st.rx_frames(&video) >= 10
                })
                .await
                .expect("media before the window");
        }
        let out = "trackmesh_rtp_packets_total{direction=\"out\"}";
        let (t0, p0) = (cpu_ticks(node.pid()), metric(&node, out).await);
        tokio::time::sleep(window).await;
        let (t1, p1) = (cpu_ticks(node.pid()), metric(&node, out).await);
        let cpu_s = (t1 - t0) as f64 / tck;
        let packets = p1 - p0;
        let us_per_packet = cpu_s * 1e6 / packets.max(1.0);
        let line = serde_json::json!({
            "mode": if relayed { "turn" } else { "direct" },
            "subscribers": subs,
            "window_s": window.as_secs(),
            "node_cpu_s": cpu_s,
            "cpu_percent": cpu_s * 100.0 / window.as_secs_f64(),
            "rtp_packets_out": packets,
            "cpu_us_per_packet": (us_per_packet * 100.0).round() / 100.0,
        });
        println!("{line}");
        results.push(us_per_packet);
        assert!(packets > 0.0, "media was forwarded");
        drop(subscribers);
        drop(publisher);
    }
    println!(
        "{}",
        serde_json::json!({"turn_over_direct": (results[1] / results[0] * 100.0).round() / 100.0})
    );
}

/// A STUN Binding request with transaction `tx`.
fn binding_request(tx: u32) -> Vec<u8> {
    let mut id = [0u8; 12];
    id[..4].copy_from_slice(&tx.to_be_bytes());
    let m: Message<Attr> = Message::new(
        MessageClass::Request,
        stun_codec::rfc5389::methods::BINDING,
        TransactionId::new(id),
    );
    MessageEncoder::new()
        .encode_into_bytes(m)
        .expect("encode a Binding request")
}

/// One Binding over a new TCP connection to the TURN port: its answer, or `None` when none came
/// within 10 s.
async fn tcp_binding(server: SocketAddr) -> Option<Message<Attr>> {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(server).await.ok()?;
    s.write_all(&binding_request(1)).await.ok()?;
    tcp_answer(&mut s).await
}

/// The next STUN message on a TURN-over-TCP connection, or `None` when none came within 10 s.
async fn tcp_answer(s: &mut tokio::net::TcpStream) -> Option<Message<Attr>> {
    use tokio::io::AsyncReadExt;
    let wait = Duration::from_secs(10);
    let mut answer = vec![0u8; 20];
    tokio::time::timeout(wait, s.read_exact(&mut answer))
        .await
        .ok()?
        .ok()?;
    let len = usize::from(u16::from_be_bytes([answer[2], answer[3]]));
    answer.resize(20 + len, 0);
    tokio::time::timeout(wait, s.read_exact(&mut answer[20..]))
        .await
        .ok()?
        .ok()?;
    MessageDecoder::<Attr>::new()
        .decode_from_bytes(&answer)
        .ok()?
        .ok()
}

/// Allocates over the TURN-over-TCP connection `s` (challenge, then the signed request); the
/// realm and nonce it was signed with.
async fn tcp_allocate(
    s: &mut tokio::net::TcpStream,
    username: &str,
    password: &str,
) -> (Realm, Nonce) {
    use tokio::io::AsyncWriteExt;
    let udp_transport = || vec![Attr::from(RequestedTransport::new(17))];
    s.write_all(&request_bytes(ALLOCATE, [1; 12], udp_transport(), None))
        .await
        .expect("write");
    let challenge = tcp_answer(s).await.expect("a challenge");
    let realm = challenge.get_attribute::<Realm>().cloned().expect("realm");
    let nonce = challenge.get_attribute::<Nonce>().cloned().expect("nonce");
    let signer = Signer {
        username,
        password,
        realm: &realm,
        nonce: &nonce,
    };
    s.write_all(&request_bytes(
        ALLOCATE,
        [2; 12],
        udp_transport(),
        Some(signer),
    ))
    .await
    .expect("write");
    let allocated = tcp_answer(s).await.expect("an answer");
    assert_eq!(
        allocated.class(),
        MessageClass::SuccessResponse,
        "{allocated:?}"
    );
    (realm, nonce)
}

/// An allocation made over TCP ends with its connection: it no longer holds its places (in all
/// and per credential) until it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_allocation_ends_with_its_connection() {
    let node = start();
    let (server, username, password) = credentials(&node, 600).await;
    let mut s = tokio::net::TcpStream::connect(server)
        .await
        .expect("connect");
    tcp_allocate(&mut s, &username, &password).await;
    assert_eq!(metric(&node, "trackmesh_turn_allocations").await, 1.0);
    drop(s);
    let mut left = 1.0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = metric(&node, "trackmesh_turn_allocations").await;
        if left == 0.0 {
            break;
        }
    }
    assert_eq!(left, 0.0, "the allocation outlived its connection");
}

/// A TURN-over-TCP client that holds an allocation, sends requests and never reads the answers
/// costs nobody else anything: while its answers pile up, other TCP clients are answered and
/// allocations over UDP work; once a write to it has waited 5 s, its connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_client_that_never_reads_stalls_nobody_else() {
    use tokio::io::AsyncWriteExt;
    let node = start();
    let (server, username, password) = credentials(&node, 600).await;
    assert!(tcp_binding(server).await.is_some(), "TURN over TCP answers");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(2048)
        .expect("a small receive buffer");
    socket
        .set_send_buffer_size(4096)
        .expect("a small send buffer");
    let mut never_reads = socket.connect(server).await.expect("connect");
    // It allocates, as a TURN-over-TCP client does first.
    let (realm, nonce) = tcp_allocate(&mut never_reads, &username, &password).await;
    let signer = Signer {
        username: &username,
        password: &password,
        realm: &realm,
        nonce: &nonce,
    };
    // Then signed refreshes (answered at once, with no rate limit: they carry the server's
    // nonce), never reading an answer; bounded at 60 s.
    let chunk: Vec<u8> = (0..200u32)
        .flat_map(|i| {
            let mut tx = [3; 12];
            tx[..4].copy_from_slice(&i.to_be_bytes());
            request_bytes(REFRESH, tx, Vec::new(), Some(signer))
        })
        .collect();
    let mut others_checked = false;
    let mut closed = false;
    let began = std::time::Instant::now();
    for _ in 0..3000 {
        match tokio::time::timeout(Duration::from_secs(2), never_reads.write_all(&chunk)).await {
            Ok(Ok(())) | Err(_) => {}
            Ok(Err(_)) => {
                closed = true;
                break;
            }
        }
        if !others_checked && began.elapsed() >= Duration::from_secs(1) {
            others_checked = true;
            assert!(
                tcp_binding(server).await.is_some(),
                "another TCP client is answered"
            );
            let mut udp = TurnClient::new(server, &username, &password).await;
            let allocated = udp.allocate().await;
            assert_eq!(
                allocated.class(),
                MessageClass::SuccessResponse,
                "{allocated:?}"
            );
        }
        if began.elapsed() >= Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(others_checked);
    assert!(
        closed,
        "the connection of a client that takes no answers is closed"
    );
    assert!(
        metric(
            &node,
            "trackmesh_turn_refused_total{reason=\"not_reading\"}"
        )
        .await
            >= 1.0
    );
}
