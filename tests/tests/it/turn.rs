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
use stun_codec::rfc5766::attributes::{RequestedTransport, XorPeerAddress, XorRelayAddress};
use stun_codec::rfc5766::methods::{ALLOCATE, CREATE_PERMISSION};
use stun_codec::{
    Message, MessageClass, MessageDecoder, MessageEncoder, Method, TransactionId,
    define_attribute_enums,
};
use trackmesh_tests::TestNode;
use trackmesh_tests::node::free_udp_tcp_port;

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
        XorRelayAddress
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
            let mut m: Message<Attr> = Message::new(
                MessageClass::Request,
                method,
                TransactionId::new([self.next_tx; 12]),
            );
            for a in attrs.clone() {
                m.add_attribute(a);
            }
            if let (Some(realm), Some(nonce)) = (&self.realm, &self.nonce) {
                let user = Username::new(self.username.clone()).expect("username");
                m.add_attribute(user.clone());
                m.add_attribute(realm.clone());
                m.add_attribute(nonce.clone());
                let mi =
                    MessageIntegrity::new_long_term_credential(&m, &user, realm, &self.password)
                        .expect("integrity");
                m.add_attribute(mi);
            }
            let bytes = MessageEncoder::new().encode_into_bytes(m).expect("encode");
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
