//! Writes seeds for the `gossip_envelope` fuzzer (node/fuzz/): real chitchat datagrams (SYN v0
//! and v1, SYN-ACK, ACK, BadCluster) from nodes gossiping on 127.0.0.1 through a socket of this
//! test that passes their messages along. chitchat keeps its encoder private, so seeds come from
//! live nodes. Run: `cargo test -p trackmesh-node --lib gossip_fuzz_seeds -- --ignored`

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
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("local addr")
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
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/gossip_envelope");
    std::fs::create_dir_all(&dir).expect("create seed dir");
    let write = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).expect("write");

    let relay = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let here = relay.local_addr().expect("local addr");

    // A gossips to us; we pass its SYN to B, B's SYN-ACK back to A, and keep A's ACK.
    let (a, a_addr) = node("a", "fuzz", ProtocolVersion::V0, Some(here)).await;
    let (b, b_addr) = node("b", "fuzz", ProtocolVersion::V0, None).await;
    let syn = recv_kind(&relay, a_addr, SYN).await;
    write("syn-v0", &syn);
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
