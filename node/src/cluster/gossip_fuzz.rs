//! Gossip fuzzing support (node/fuzz/): the seed generator of the `gossip_envelope` and
//! `gossip_apply` targets, and the inputs they found, as regression tests.
//!
//! Seeds are real chitchat datagrams (SYN v0 and v1, SYN-ACK, ACK, BadCluster) from nodes
//! gossiping on 127.0.0.1 through a socket of this test that passes their messages along.
//! chitchat keeps its encoder private, so seeds come from live nodes.
//! Run: `cargo test -p trackmesh-node --lib gossip_fuzz_seeds -- --ignored`

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use chitchat::transport::UdpTransport;
use chitchat::{
    ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, ProtocolVersion,
    spawn_chitchat,
};
use tokio::net::UdpSocket;

const SYN: u8 = 0;
const SYN_ACK: u8 = 1;
const ACK: u8 = 2;
const BAD_CLUSTER: u8 = 3;

fn free_addr() -> SocketAddr {
    trackmesh_testkit::ports::free_udp_addr().expect("a free port")
}

async fn node(
    name: &str,
    cluster: &str,
    version: ProtocolVersion,
    seed: Option<SocketAddr>,
) -> (ChitchatHandle, SocketAddr) {
    let addr = free_addr();
    let config = ChitchatConfig {
        chitchat_id: ChitchatId::new(name.to_string(), 1, addr),
        cluster_id: cluster.to_string(),
        gossip_interval: Duration::from_millis(100),
        listen_addr: addr,
        seed_nodes: seed.iter().map(ToString::to_string).collect(),
        failure_detector_config: FailureDetectorConfig::default(),
        marked_for_deletion_grace_period: Duration::from_secs(900),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: version,
    };
    // The keys a trackmesh node gossips (see membership.rs).
    let keys = [
        ("tag", "abcd0123"),
        ("region", "eu"),
        ("api", "http://127.0.0.1:8080"),
        ("relay", "127.0.0.1:7801"),
        ("media", "127.0.0.1:7701"),
        ("load", "3,7,1"),
        ("draining", "false"),
        ("version", "0.1.0"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .to_vec();
    let handle = spawn_chitchat(config, keys, &UdpTransport)
        .await
        .expect("spawn chitchat");
    (handle, addr)
}

/// The first datagram of message type `kind` from `from` (a bounded wait).
async fn recv_kind(sock: &UdpSocket, from: SocketAddr, kind: u8) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    for _ in 0..200 {
        let (n, src) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
            .await
            .expect("a gossip datagram within 10 s")
            .expect("recv");
        if src == from && buf.get(3) == Some(&kind) {
            return buf[..n].to_vec();
        }
    }
    panic!("no message of type {kind} from {from}");
}

#[tokio::test]
#[ignore = "writes files under node/fuzz/"]
async fn gossip_fuzz_seeds() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let write = |name: &str, bytes: &[u8]| {
        for target in ["gossip_envelope", "gossip_apply"] {
            let dir = fuzz.join("corpus").join(target);
            std::fs::create_dir_all(&dir).expect("create seed dir");
            std::fs::write(dir.join(name), bytes).expect("write seed");
        }
    };

    let relay = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let here = relay.local_addr().expect("local addr");

    // A gossips to us; we pass its SYN to B, B's SYN-ACK back to A, and keep A's ACK.
    let (a, a_addr) = node("a", "fuzz", ProtocolVersion::V0, Some(here)).await;
    let (b, b_addr) = node("b", "fuzz", ProtocolVersion::V0, None).await;
    let syn = recv_kind(&relay, a_addr, SYN).await;
    write("syn-v0", &syn);
    std::fs::write(fuzz.join("fixtures/gossip-syn"), &syn).expect("write fixture");
    relay.send_to(&syn, b_addr).await.expect("send");
    let syn_ack = recv_kind(&relay, b_addr, SYN_ACK).await;
    write("syn-ack", &syn_ack);
    relay.send_to(&syn_ack, a_addr).await.expect("send");
    write("ack", &recv_kind(&relay, a_addr, ACK).await);

    // A node of another cluster answers BadCluster.
    let (c, c_addr) = node("c", "other", ProtocolVersion::V0, None).await;
    relay.send_to(&syn, c_addr).await.expect("send");
    write("bad-cluster", &recv_kind(&relay, c_addr, BAD_CLUSTER).await);

    // The compressed (v1) digest encoding.
    let (d, d_addr) = node("d", "fuzz", ProtocolVersion::V1, Some(here)).await;
    write("syn-v1", &recv_kind(&relay, d_addr, SYN).await);

    for h in [a, b, c, d] {
        h.shutdown().await.expect("shutdown");
    }
}

/// An ACK whose delta is a zstd stream that chitchat decodes but compresses differently itself
/// (found by `gossip_envelope` when it re-encoded what it decoded: chitchat's `Delta::serialize`
/// asserts the lengths match). A node only applies received deltas, never re-sends them: it must
/// take this one and keep answering.
const ACK_WITH_FOREIGN_ZSTD_DELTA: [u8; 177] = [
    0x53, 0xb0, 0x00, 0x02, 0x01, 0xa9, 0x00, 0x28, 0xb5, 0x2f, 0xfd, 0x60, 0x06, 0x00, 0xfd, 0x04,
    0x00, 0x82, 0x49, 0x20, 0x22, 0x60, 0xb5, 0xce, 0x01, 0x30, 0xf0, 0x2e, 0x96, 0xf2, 0xa6, 0xef,
    0x5d, 0xcf, 0x40, 0x2a, 0xab, 0xf1, 0x92, 0xad, 0x88, 0xc3, 0xa9, 0x86, 0x24, 0x66, 0x04, 0x81,
    0xdc, 0xd0, 0xe3, 0x79, 0xfc, 0x24, 0x05, 0xff, 0xff, 0xff, 0x8b, 0xba, 0x75, 0xfa, 0x26, 0xa9,
    0x68, 0xcd, 0x56, 0x5c, 0x51, 0xda, 0x9a, 0xd8, 0xf0, 0x26, 0xc9, 0x28, 0x23, 0x4f, 0xf8, 0x25,
    0x59, 0xe6, 0x31, 0xcf, 0x1b, 0x64, 0x6a, 0x3a, 0xd2, 0x56, 0x1f, 0x47, 0xd8, 0x08, 0x64, 0x15,
    0x7a, 0x0f, 0x2c, 0x78, 0xea, 0xf9, 0x76, 0x28, 0xa4, 0x50, 0xb4, 0x4e, 0xd3, 0x6c, 0xd5, 0x9d,
    0x44, 0xba, 0xe7, 0x75, 0x1d, 0x2e, 0x88, 0x15, 0x1b, 0x89, 0xbe, 0x21, 0xa9, 0x28, 0xf5, 0x7c,
    0xc2, 0xfe, 0x38, 0xab, 0xb0, 0x40, 0xe0, 0x2f, 0x12, 0x5f, 0x3f, 0xd8, 0x03, 0x06, 0xec, 0x07,
    0x40, 0xce, 0xf8, 0xec, 0x01, 0x0b, 0x00, 0x7c, 0x4a, 0xc8, 0xe1, 0xa2, 0x40, 0x41, 0xc0, 0xd1,
    0xc0, 0x68, 0xa2, 0xf6, 0xf9, 0xab, 0x32, 0x02, 0x53, 0x49, 0x45, 0x00, 0xd0, 0xe3, 0x00, 0xe0,
    0x00,
];

#[tokio::test]
async fn gossip_node_survives_a_delta_it_could_not_reencode() {
    let (node, node_addr) = node("n", "fuzz", ProtocolVersion::V0, None).await;
    let attacker = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let probe = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let syn: &[u8] = include_bytes!("../../fuzz/fixtures/gossip-syn");
    // Before: the probe's SYN is answered.
    probe.send_to(syn, node_addr).await.expect("send");
    recv_kind(&probe, node_addr, SYN_ACK).await;
    attacker
        .send_to(&ACK_WITH_FOREIGN_ZSTD_DELTA, node_addr)
        .await
        .expect("send");
    // After: still answered (datagrams are handled in order, so the ACK was applied first).
    probe.send_to(syn, node_addr).await.expect("send");
    recv_kind(&probe, node_addr, SYN_ACK).await;
    node.shutdown()
        .await
        .expect("the gossip server is still running");
}
