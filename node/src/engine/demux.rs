//! Routes an incoming datagram to its session with two hash lookups, never a scan over sessions:
//! first by source address (every packet after ICE), then by the local ICE ufrag in a STUN
//! request's USERNAME (the first packets from a new address). str0m still verifies STUN integrity.

use std::collections::HashMap;
use std::net::SocketAddr;

use str0m::ice::StunMessage;

use crate::ids::{SessionId, SessionMap};

/// Addresses remembered per session; a client that keeps moving only evicts its own oldest.
const MAX_ADDRS_PER_SESSION: usize = 8;

/// The routing table from datagram to session; see the module doc for the two lookups.
#[derive(Default)]
pub struct Demux {
    by_addr: HashMap<SocketAddr, SessionId>,
    by_ufrag: HashMap<String, SessionId>,
    addrs: SessionMap<Vec<SocketAddr>>,
}

/// How a datagram was matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Matched by source address: the address is already known.
    Addr(SessionId),
    /// Matched by ufrag: the caller learns the address once the session accepted the packet.
    Ufrag(SessionId),
}

impl Route {
    /// The session the datagram goes to, however it was matched.
    pub fn session(self) -> SessionId {
        match self {
            Route::Addr(s) | Route::Ufrag(s) => s,
        }
    }
}

impl Demux {
    /// Makes a new session reachable by its local ICE ufrag.
    pub fn add_session(&mut self, id: SessionId, ufrag: &str) {
        self.by_ufrag.insert(ufrag.to_string(), id);
    }

    /// Whether a ufrag is taken, so a new session never shares one.
    pub fn has_ufrag(&self, ufrag: &str) -> bool {
        self.by_ufrag.contains_key(ufrag)
    }

    /// Makes a session reachable by a new ufrag after an ICE restart, unless another session
    /// holds it; returns whether it was added.
    pub fn add_session_if_free(&mut self, id: SessionId, ufrag: &str) -> bool {
        match self.by_ufrag.get(ufrag) {
            Some(other) if *other != id => false,
            _ => {
                self.by_ufrag.insert(ufrag.to_string(), id);
                true
            }
        }
    }

    /// Forgets a session's old ufrag after an ICE restart (its addresses stay: the client may
    /// not have moved).
    pub fn remove_ufrag(&mut self, id: SessionId, ufrag: &str) {
        if self.by_ufrag.get(ufrag) == Some(&id) {
            self.by_ufrag.remove(ufrag);
        }
    }

    /// Forgets a closed session's ufrag and every address it was reached from.
    pub fn remove_session(&mut self, id: SessionId, ufrag: &str) {
        self.by_ufrag.remove(ufrag);
        for addr in self.addrs.remove(&id).unwrap_or_default() {
            if self.by_addr.get(&addr) == Some(&id) {
                self.by_addr.remove(&addr);
            }
        }
    }

    /// Which session a datagram from `source` belongs to; `None` drops it.
    pub fn route(&self, source: SocketAddr, buf: &[u8]) -> Option<Route> {
        if let Some(id) = self.by_addr.get(&source) {
            // A STUN request naming another session's ufrag means the address moved (port reuse).
            if let Some(other) = self.stun_session(buf)
                && other != *id
            {
                return Some(Route::Ufrag(other));
            }
            return Some(Route::Addr(*id));
        }
        self.stun_session(buf).map(Route::Ufrag)
    }

    fn stun_session(&self, buf: &[u8]) -> Option<SessionId> {
        // STUN: first two bits zero and the magic cookie at bytes 4..8 (RFC 5389).
        if buf.len() < 20 || buf[0] > 1 || buf[4..8] != [0x21, 0x12, 0xa4, 0x42] {
            return None;
        }
        let msg = StunMessage::parse(buf).ok()?;
        let (local, _remote) = msg.split_username()?;
        self.by_ufrag.get(local).copied()
    }

    /// Remembers that `source` belongs to `id`, after the session accepted a packet from it.
    pub fn learn(&mut self, id: SessionId, source: SocketAddr) {
        if let Some(prev) = self.by_addr.insert(source, id) {
            if prev == id {
                return;
            }
            if let Some(list) = self.addrs.get_mut(&prev) {
                list.retain(|a| *a != source);
            }
        }
        let list = self.addrs.entry(id).or_default();
        list.push(source);
        if list.len() > MAX_ADDRS_PER_SESSION {
            let old = list.remove(0);
            if self.by_addr.get(&old) == Some(&id) {
                self.by_addr.remove(&old);
            }
        }
    }

    /// Addresses remembered, so tests can check none outlive their session or the bound.
    pub fn addr_count(&self) -> usize {
        self.by_addr.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeTag;

    fn stun_request(username: &str) -> Vec<u8> {
        // Binding request with USERNAME, PRIORITY and a (dummy) MESSAGE-INTEGRITY: what parsing
        // needs. The integrity is verified later by the session's own ICE agent, not here.
        let mut attrs = Vec::new();
        attrs.extend_from_slice(&0x0006u16.to_be_bytes());
        attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 0x6e, 0x00, 0x1e, 0xff]);
        attrs.extend_from_slice(&[0x00, 0x08, 0x00, 0x14]);
        attrs.extend_from_slice(&[0xaa; 20]);
        let mut buf = Vec::new();
        buf.extend_from_slice(&0x0001u16.to_be_bytes());
        buf.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
        buf.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        buf.extend_from_slice(&[7; 12]);
        buf.extend_from_slice(&attrs);
        buf
    }

    #[test]
    fn routes_by_ufrag_then_by_address() {
        let mut d = Demux::default();
        let a = SessionId::new(NodeTag(1));
        let b = SessionId::new(NodeTag(1));
        d.add_session(a, "ufraga");
        d.add_session(b, "ufragb");
        let src: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        assert_eq!(
            d.route(src, b"\x80rtp-ish payload......"),
            None,
            "unknown address, not STUN"
        );
        assert_eq!(
            d.route(src, &stun_request("ufragb:client")),
            Some(Route::Ufrag(b))
        );
        d.learn(b, src);
        assert_eq!(
            d.route(src, b"\x80rtp-ish payload......"),
            Some(Route::Addr(b))
        );
        // The same address now speaks for another session (port reuse): STUN wins.
        assert_eq!(
            d.route(src, &stun_request("ufraga:client")),
            Some(Route::Ufrag(a))
        );
        d.learn(a, src);
        assert_eq!(
            d.route(src, b"\x80rtp-ish payload......"),
            Some(Route::Addr(a))
        );
        d.remove_session(a, "ufraga");
        assert_eq!(d.route(src, b"\x80rtp-ish payload......"), None);
        assert_eq!(d.route(src, &stun_request("ufraga:client")), None);
        assert_eq!(d.addr_count(), 0);
    }

    #[test]
    fn garbage_never_routes_or_panics() {
        let mut d = Demux::default();
        d.add_session(SessionId::new(NodeTag(1)), "u");
        let src: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        for len in 0..64 {
            let buf: Vec<u8> = (0..len).map(|i| (i * 37 % 251) as u8).collect();
            assert_eq!(d.route(src, &buf), None);
        }
        let mut truncated = stun_request("u:x");
        truncated.truncate(22);
        assert_eq!(d.route(src, &truncated), None);
    }

    #[test]
    fn addresses_per_session_are_bounded() {
        let mut d = Demux::default();
        let a = SessionId::new(NodeTag(1));
        d.add_session(a, "u");
        for port in 0..100u16 {
            d.learn(a, SocketAddr::from(([127, 0, 0, 1], 6000 + port)));
        }
        assert_eq!(d.addr_count(), MAX_ADDRS_PER_SESSION);
    }
}
