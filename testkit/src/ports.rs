//! Ports for test nodes, chosen where no port-0 bind can take them.
//!
//! A test that gives a node a fixed port (`--gossip` takes no port 0; a node restarted on the
//! killed one's ports) finds a free one first. A port found by binding port 0 is one the kernel
//! hands to the next port-0 bind of any test running alongside, which can take it before the
//! node binds it (CI saw a killed node's relay port taken so). These ports come from below the
//! kernel's ephemeral range (`ip_local_port_range`, 32768 and up by default), where only this
//! module chooses, and never twice in one process.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::ops::Range;
use std::sync::Mutex;

use anyhow::{Context, bail};
use rand::Rng;

/// Where ports are picked: below the ephemeral range, and below the port blocks the
/// local-cluster script test uses (21000 and up, `tests/tests/it/cluster.rs`).
pub const PICKED_PORTS: Range<u16> = 12000..21000;

/// A free 127.0.0.1 UDP port.
pub fn free_udp_addr() -> anyhow::Result<SocketAddr> {
    let port = pick_port(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok())
        .context("finding a free UDP port")?;
    Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

/// A port on 127.0.0.1 free for both UDP and TCP a moment ago (a TURN port takes both).
pub fn free_udp_tcp_port() -> anyhow::Result<u16> {
    pick_port(|p| {
        UdpSocket::bind(("127.0.0.1", p)).is_ok() && TcpListener::bind(("127.0.0.1", p)).is_ok()
    })
    .context("finding a port free for UDP and TCP")
}

/// A port of [`PICKED_PORTS`] under the ephemeral range that `free(port)` says is free and this
/// process has not handed out before.
fn pick_port(free: impl Fn(u16) -> bool) -> anyhow::Result<u16> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let end = PICKED_PORTS.end.min(ephemeral_low);
    if end <= PICKED_PORTS.start {
        bail!(
            "the ephemeral port range starts at {ephemeral_low}: no room below it for test ports"
        );
    }
    let mut rng = rand::rng();
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..200 {
        let port = rng.random_range(PICKED_PORTS.start..end);
        if !handed_out.contains(&port) && free(port) {
            handed_out.insert(port);
            return Ok(port);
        }
    }
    bail!("no free port in {}..{end} in 200 tries", PICKED_PORTS.start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picked_ports_lie_below_the_ephemeral_range_and_are_never_handed_out_twice() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            let port = free_udp_addr().expect("a free UDP port").port();
            assert!(PICKED_PORTS.contains(&port), "{port}");
            assert!(seen.insert(port), "{port} handed out twice");
            let both = free_udp_tcp_port().expect("a port free for UDP and TCP");
            assert!(seen.insert(both), "{both} handed out twice");
        }
        // Every port-0 bind lands in the ephemeral range, so none can take a picked port.
        let ephemeral = UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
        let port = ephemeral.local_addr().expect("its address").port();
        assert!(!PICKED_PORTS.contains(&port), "{port}");
    }
}
