//! Gossip datagrams applied: arbitrary bytes reaching a node's gossip port must never panic the
//! chitchat gossip server that applies what decodes (`gossip_envelope` covers the decoder alone,
//! thirty times faster).
//!
//! The bytes go the way a node receives them: a UDP
//! datagram on 127.0.0.1 to a live chitchat node (cluster "fuzz", as the seeds). A real SYN from
//! a second socket follows each input; the node handles datagrams in order, so its SYN-ACK means
//! the input was decoded and applied.
//!
//! The node never gossips on its own here (one round an hour, and its first round has nobody to
//! talk to), so it only ever answers 127.0.0.1: deltas from the fuzzer name arbitrary addresses.
//! It is replaced every `INPUTS_PER_NODE` inputs, so what inputs leave in its state stays small.
//!
//! Decoded envelopes are not re-encoded: chitchat panics re-encoding a received delta whose
//! compressed form differs from its own (see SECURITY.md); a node never re-sends a received
//! delta, it only applies it.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use chitchat::transport::UdpTransport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, spawn_chitchat};
use libfuzzer_sys::fuzz_target;
use tokio::net::UdpSocket;

/// A SYN from a node of cluster "fuzz" (written by the seed generator).
const SYN: &[u8] = include_bytes!("../fixtures/gossip-syn");
const SYN_ACK: u8 = 1;
/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;
const WAIT: Duration = Duration::from_secs(10);
const INPUTS_PER_NODE: u32 = 1000;

struct Rig {
    rt: tokio::runtime::Runtime,
    node: Option<(ChitchatHandle, SocketAddr)>,
    inputs: u32,
    input: UdpSocket,
    probe: UdpSocket,
}

fn any() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn spawn_node() -> (ChitchatHandle, SocketAddr) {
    let addr = std::net::UdpSocket::bind(any())
        .and_then(|s| s.local_addr())
        .expect("a free port");
    let config = ChitchatConfig {
        chitchat_id: ChitchatId::new("fuzz-node".to_string(), 1, addr),
        cluster_id: "fuzz".to_string(),
        gossip_interval: Duration::from_secs(3600),
        listen_addr: addr,
        seed_nodes: Vec::new(),
        failure_detector_config: FailureDetectorConfig::default(),
        marked_for_deletion_grace_period: Duration::from_secs(900),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: chitchat::ProtocolVersion::V0,
    };
    let keys = vec![("load".to_string(), "0,0,0".to_string())];
    let handle = spawn_chitchat(config, keys, &UdpTransport)
        .await
        .expect("spawn chitchat");
    (handle, addr)
}

fn rig() -> Rig {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (input, probe) = rt.block_on(async {
        (
            UdpSocket::bind(any()).await.expect("bind input"),
            UdpSocket::bind(any()).await.expect("bind probe"),
        )
    });
    Rig {
        rt,
        node: None,
        inputs: 0,
        input,
        probe,
    }
}

static RIG: OnceLock<Mutex<Rig>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_DATAGRAM)];
    let mut guard = RIG
        .get_or_init(|| Mutex::new(rig()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let r = &mut *guard;
    r.inputs += 1;
    r.rt.block_on(async {
        if r.inputs % INPUTS_PER_NODE == 1
            && let Some((old, _)) = r.node.take()
        {
            old.shutdown().await.expect("node shuts down");
        }
        if r.node.is_none() {
            r.node = Some(spawn_node().await);
        }
        let Some((_, node)) = r.node else {
            unreachable!("spawned above");
        };
        r.input.send_to(data, node).await.expect("send input");
        r.probe.send_to(SYN, node).await.expect("send probe");
        let mut buf = vec![0u8; MAX_DATAGRAM];
        // Whatever else the node sends the probe, its SYN-ACK comes within a few datagrams.
        for _ in 0..16 {
            let (n, from) = tokio::time::timeout(WAIT, r.probe.recv_from(&mut buf))
                .await
                .expect("the node answers the probe: it is alive")
                .expect("recv");
            if from == node && n > 3 && buf[3] == SYN_ACK {
                return;
            }
        }
        panic!("no SYN-ACK to the probe");
    });
});
