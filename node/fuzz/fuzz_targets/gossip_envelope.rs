//! Gossip datagrams: arbitrary bytes reaching a node's gossip port must never panic chitchat's
//! envelope decoder.
//!
//! chitchat keeps its decoder private, so the bytes go the way a node receives them: a UDP
//! datagram on 127.0.0.1 into chitchat's own `UdpSocket`, whose `recv` decodes it (and skips it
//! if invalid). A valid datagram from a second sender follows each input, so `recv` returns
//! without waiting.
//!
//! Decoded envelopes are not re-encoded: chitchat panics re-encoding a received delta whose
//! compressed form differs from its own (see SECURITY.md), and a node never re-sends a received
//! delta, it only applies it.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use chitchat::transport::{Socket, UdpSocket};
use libfuzzer_sys::fuzz_target;

/// A BadCluster envelope: magic 45139 (LE), protocol version 0, message type 3.
const SENTINEL: [u8; 4] = [0x53, 0xb0, 0, 3];
/// The largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;
const WAIT: Duration = Duration::from_secs(10);

struct Rig {
    rt: tokio::runtime::Runtime,
    /// Receives as a node's gossip socket does.
    node: UdpSocket,
    node_addr: SocketAddr,
    input: std::net::UdpSocket,
    sentinel: std::net::UdpSocket,
    sentinel_addr: SocketAddr,
}

fn rig() -> Rig {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let node = rt.block_on(UdpSocket::open(any)).expect("bind node");
    let input = std::net::UdpSocket::bind(any).expect("bind input");
    let sentinel = std::net::UdpSocket::bind(any).expect("bind sentinel");
    Rig {
        node_addr: node.local_addr().expect("node addr"),
        sentinel_addr: sentinel.local_addr().expect("sentinel addr"),
        rt,
        node,
        input,
        sentinel,
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
    r.input.send_to(data, r.node_addr).expect("send input");
    r.sentinel
        .send_to(&SENTINEL, r.node_addr)
        .expect("send sentinel");
    r.rt.block_on(async {
        // At most the input and the sentinel arrive; the sentinel ends the wait.
        for _ in 0..2 {
            let got = tokio::time::timeout(WAIT, r.node.recv())
                .await
                .expect("the sentinel arrives")
                .expect("recv");
            if got.from_addr == r.sentinel_addr {
                return;
            }
            // Walk the whole decoded value, as the gossip server does when it applies it.
            let _ = format!("{:?}", got.envelope);
        }
        panic!("the sentinel did not arrive");
    });
});
