//! Session ids and track names.
//!
//! A session id is 32 lowercase hex characters, as in Cloudflare Calls. The first 8 are the owning
//! node's tag, so any node can tell from the id alone which node holds the session (the cluster
//! routes pulls and forwarded API calls by it) without a global directory. The next 2 (the top
//! byte of the random part) name the engine worker within the node that holds it, so the node
//! routes a call to its worker without a table either.

use std::fmt;

use rand::Rng;

/// Random lowercase hex string of `bytes * 2` characters.
pub fn random_hex(bytes: usize) -> String {
    let mut rng = rand::rng();
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

/// Node ids travel in gossip keys and relay handshakes: short, printable, no separators.
pub fn is_valid_node_id(id: &str) -> bool {
    trackmesh_relay_proto::handshake::is_valid_node_id(id)
}

/// The 32-bit tag of a node, embedded in every session id it creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeTag(pub u32);

impl NodeTag {
    /// A fresh tag at each start: random, so nodes pick distinct tags without coordinating.
    pub fn random() -> NodeTag {
        NodeTag(rand::rng().random())
    }
}

impl fmt::Display for NodeTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// Relay ids with this bit set name in-process links between the node's engine workers
/// (`workers/links.rs`); the cluster relay numbers its own from 1 up and never gets near it.
pub const IN_PROCESS_BIT: u64 = 1 << 63;

/// An upstream relay subscription: a track this node pulls from another node. Numbered by this
/// node's relay layer; the engine only keys publications by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UpId(pub u64);

/// A downstream relay subscription: a track another node pulls from this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DownId(pub u64);

impl UpId {
    /// Whether this upstream is an in-process link from another worker of this node.
    pub fn is_in_process(self) -> bool {
        self.0 & IN_PROCESS_BIT != 0
    }
}

impl DownId {
    /// Whether this downstream is an in-process link to another worker of this node.
    pub fn is_in_process(self) -> bool {
        self.0 & IN_PROCESS_BIT != 0
    }
}

impl fmt::Display for UpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for DownId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A node's id in the cluster: its gossip identity and the name it gives in relay handshakes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

impl NodeId {
    /// The id as text, for gossip keys, handshakes and logs.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for NodeId {
    fn from(id: String) -> NodeId {
        NodeId(id)
    }
}

impl From<&str> for NodeId {
    fn from(id: &str) -> NodeId {
        NodeId(id.to_string())
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> String {
        id.0
    }
}

impl std::borrow::Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A hasher for maps keyed by [`SessionId`] on the packet path. Session ids are random and only
/// this node creates the ones it stores, so their random bits are already a good hash: SipHash's
/// flooding protection buys nothing here and costs a few hundred instructions per lookup.
#[derive(Default, Clone, Copy)]
pub struct SessionIdHasher(u64);

impl std::hash::Hasher for SessionIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by `SessionId`'s own `Hash`; a plain mix keeps the hasher correct anyway.
        for b in bytes {
            self.0 =
                (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn write_u32(&mut self, v: u32) {
        self.0 ^= u64::from(v);
    }

    fn write_u128(&mut self, v: u128) {
        // The low 64 bits of the random part.
        self.0 ^= v as u64;
    }
}

/// A hash map keyed by session id, with [`SessionIdHasher`].
pub type SessionMap<V> =
    std::collections::HashMap<SessionId, V, std::hash::BuildHasherDefault<SessionIdHasher>>;

/// A session id: node tag + worker index (8 bits) + 88 random bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId {
    tag: NodeTag,
    rand: u128,
}

/// Where the worker index sits in the 96-bit random part: its top byte. Not the low byte: the
/// session maps hash by the low 64 bits ([`SessionIdHasher`]), and a byte that is the same for
/// every session of one engine there would pile them into the same buckets.
const WORKER_SHIFT: u32 = 88;

impl SessionId {
    /// A fresh id for a session created on the node with this tag (worker 0).
    pub fn new(tag: NodeTag) -> SessionId {
        SessionId::new_on(tag, 0)
    }

    /// A fresh id for a session held by engine worker `worker` of the node with this tag.
    pub fn new_on(tag: NodeTag, worker: u8) -> SessionId {
        let rand = rand::rng().random::<u128>() & ((1u128 << WORKER_SHIFT) - 1);
        SessionId {
            tag,
            rand: rand | (u128::from(worker) << WORKER_SHIFT),
        }
    }

    /// The engine worker that holds this session on its node (read from the id; an id from the
    /// network may name a worker the node does not have, which the caller checks).
    pub fn worker(&self) -> u8 {
        (self.rand >> WORKER_SHIFT) as u8
    }

    /// The node that created (and holds) this session.
    pub fn node_tag(&self) -> NodeTag {
        self.tag
    }

    /// The 16 bytes of the id, as carried on relay links.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[..4].copy_from_slice(&self.tag.0.to_be_bytes());
        out[4..].copy_from_slice(&self.rand.to_be_bytes()[4..]);
        out
    }

    /// The id from its 16 bytes on a relay link (any bytes make an id; lookups reject unknown ones).
    pub fn from_bytes(b: [u8; 16]) -> SessionId {
        let tag = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let mut r = [0u8; 16];
        r[4..].copy_from_slice(&b[4..]);
        SessionId {
            tag: NodeTag(tag),
            rand: u128::from_be_bytes(r),
        }
    }

    /// Parses the 32-character lowercase hex form; anything else is not a session id.
    pub fn parse(s: &str) -> Option<SessionId> {
        if s.len() != 32
            || !s
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let tag = u32::from_str_radix(&s[..8], 16).ok()?;
        let rand = u128::from_str_radix(&s[8..], 16).ok()?;
        Some(SessionId {
            tag: NodeTag(tag),
            rand,
        })
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:024x}", self.tag, self.rand)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_map_spreads_ids_of_one_node() {
        use std::hash::BuildHasher;
        let tag = NodeTag(7);
        let build = std::hash::BuildHasherDefault::<SessionIdHasher>::default();
        let ids: Vec<SessionId> = (0..1000).map(|_| SessionId::new(tag)).collect();
        let hashes: std::collections::HashSet<u64> =
            ids.iter().map(|id| build.hash_one(id)).collect();
        assert_eq!(hashes.len(), ids.len(), "ids of one node must not collide");
        let mut map = SessionMap::default();
        for (i, id) in ids.iter().enumerate() {
            map.insert(*id, i);
        }
        assert!(
            ids.iter()
                .enumerate()
                .all(|(i, id)| map.get(id) == Some(&i))
        );
    }

    #[test]
    fn session_id_round_trips_and_names_its_node() {
        let tag = NodeTag(0xdeadbeef);
        for _ in 0..100 {
            let id = SessionId::new(tag);
            let s = id.to_string();
            assert_eq!(s.len(), 32);
            assert!(s.starts_with("deadbeef"));
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
            assert_eq!(SessionId::parse(&s), Some(id));
            assert_eq!(SessionId::parse(&s).map(|i| i.node_tag()), Some(tag));
            assert_eq!(SessionId::from_bytes(id.to_bytes()), id);
        }
    }

    #[test]
    fn session_id_names_its_worker_and_keeps_its_random_bits() {
        let tag = NodeTag(3);
        for worker in [0u8, 1, 7, 255] {
            let a = SessionId::new_on(tag, worker);
            let b = SessionId::new_on(tag, worker);
            assert_eq!(a.worker(), worker);
            assert_eq!(
                SessionId::parse(&a.to_string()).map(|i| i.worker()),
                Some(worker)
            );
            assert_eq!(SessionId::from_bytes(a.to_bytes()).worker(), worker);
            assert_ne!(a, b, "ids of one worker differ");
            assert_eq!(a.node_tag(), tag);
        }
    }

    #[test]
    fn rejects_non_ids() {
        for bad in [
            "",
            "abc",
            &"A".repeat(32),
            &"g".repeat(32),
            &"0".repeat(31),
            &"0".repeat(33),
            "+1234567890abcdef1234567890abcde",
        ] {
            assert_eq!(SessionId::parse(bad), None, "{bad:?}");
        }
    }
}
