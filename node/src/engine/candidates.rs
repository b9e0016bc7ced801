//! The node's ICE host candidates: one per announced address (at most one per IP family on a
//! dual-stack socket) over UDP and, with ICE-TCP on, a passive TCP twin on the same port; and
//! which of them a received packet arrived on. str0m drops a STUN request whose destination is
//! not one of its host candidates, so that destination must be the announced address of the
//! packet's family and protocol, not the bound (possibly wildcard) one.

use std::net::SocketAddr;

use str0m::Candidate;
use str0m::net::TcpType;

use super::EngineConfig;

impl EngineConfig {
    /// Every announced address, the primary one first.
    pub fn candidate_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        std::iter::once(self.candidate_addr).chain(self.more_candidates.iter().copied())
    }

    /// The host candidates of an incoming session: UDP on every announced address, then the
    /// passive TCP twins when ICE-TCP is on.
    pub fn host_candidates(&self) -> Result<Vec<Candidate>, str0m::error::IceError> {
        let mut out = Vec::new();
        for addr in self.candidate_addrs() {
            out.push(Candidate::host(addr, "udp")?);
        }
        if self.media_tcp {
            for addr in self.candidate_addrs() {
                out.push(
                    Candidate::builder()
                        .tcp()
                        .host(addr)
                        .tcptype(TcpType::Passive)
                        .build()?,
                );
            }
        }
        Ok(out)
    }

    /// The host candidate a packet from `source` arrived on (over UDP or TCP: the twins share it): the announced address
    /// of the source's family, else the primary one (a TURN relay or a single-family node).
    pub fn receive_destination(&self, source: SocketAddr) -> SocketAddr {
        self.candidate_addrs()
            .find(|a| a.is_ipv4() == source.is_ipv4())
            .unwrap_or(self.candidate_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    #[test]
    fn a_dual_stack_node_offers_each_family_over_udp_and_tcp() {
        let mut cfg = testing::config(std::time::Duration::from_secs(30));
        let v4: SocketAddr = "192.0.2.1:7701".parse().expect("addr");
        let v6: SocketAddr = "[2001:db8::1]:7701".parse().expect("addr");
        cfg.candidate_addr = v4;
        cfg.more_candidates = vec![v6];
        cfg.media_tcp = true;
        let lines: Vec<String> = cfg
            .host_candidates()
            .expect("valid candidates")
            .iter()
            .map(|c| c.to_sdp_string())
            .collect();
        assert_eq!(lines.len(), 4, "{lines:?}");
        for (line, addr, tcp) in [
            (&lines[0], "192.0.2.1 7701", false),
            (&lines[1], "2001:db8::1 7701", false),
            (&lines[2], "192.0.2.1 7701", true),
            (&lines[3], "2001:db8::1 7701", true),
        ] {
            assert!(line.contains(addr), "{line}");
            assert_eq!(line.contains(" tcp "), tcp, "{line}");
            assert_eq!(line.contains("tcptype passive"), tcp, "{line}");
        }
        let from6: SocketAddr = "[2001:db8::9]:5000".parse().expect("addr");
        let from4: SocketAddr = "198.51.100.7:5000".parse().expect("addr");
        assert_eq!(cfg.receive_destination(from6), v6);
        assert_eq!(cfg.receive_destination(from4), v4);
    }

    #[test]
    fn a_dual_stack_node_binds_cascades_in_its_primary_family() {
        let mut cfg = testing::config(std::time::Duration::from_secs(30));
        cfg.local_addr = "[::]:7701".parse().expect("addr");
        cfg.candidate_addr = "192.0.2.1:7701".parse().expect("addr");
        let engine = crate::engine::Engine::new(cfg, std::time::Instant::now());
        assert_eq!(
            engine.outgoing_bind_addr(),
            "0.0.0.0:0".parse::<SocketAddr>().expect("addr")
        );
    }

    #[test]
    fn a_single_family_node_answers_everything_on_its_one_address() {
        let cfg = testing::config(std::time::Duration::from_secs(30));
        let from6: SocketAddr = "[2001:db8::9]:5000".parse().expect("addr");
        assert_eq!(cfg.receive_destination(from6), cfg.candidate_addr);
        let lines = cfg.host_candidates().expect("valid candidates");
        assert_eq!(lines.len(), 1, "UDP only without ICE-TCP");
    }
}
