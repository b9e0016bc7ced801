//! What the embedded TURN server may do, decided per message before the TURN crate sees it and
//! per answer as it leaves: relay only to this node's media address, bound allocations (per
//! credential and in all) and bandwidth (per allocation), and count every refusal. No I/O: the
//! transport wrapper (`transport.rs`) asks and acts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;

use governor::{DefaultDirectRateLimiter, Quota};
use medea_turn::attr::{Attribute, Data, MessageIntegrity, Username, XorPeerAddress};
use prometheus::{IntCounterVec, IntGauge, Opts};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, SEND};
use stun_codec::{Message, MessageClass};

/// Allocate requests between the request and its answer; they are answered in turn, so a few
/// suffice, and a flood only forgets (never leaks) entries.
const MAX_PENDING: usize = 4096;

/// What one ChannelData message costs of its allocation's bandwidth: a full WebRTC media packet
/// (browsers keep RTP under about 1200 bytes), since its real length is private to the TURN crate.
pub const CHANNEL_DATA_CHARGE: usize = 1200;

/// The bounds, from the node's flags.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The only peer addresses a client may relay to: the node's media address (bound and
    /// announced).
    pub peers: Vec<SocketAddr>,
    /// Allocations on this node at once.
    pub max_allocations: usize,
    /// Allocations one credential (username) may hold at once.
    pub per_credential: usize,
    /// Bytes per second a client may send through one allocation (1 s of burst).
    pub bytes_per_sec: NonZeroU32,
    /// TURN requests without MESSAGE-INTEGRITY per second, all clients together: each costs the
    /// TURN crate a remembered nonce.
    pub unauthenticated_per_sec: NonZeroU32,
}

/// What to do with a message from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the TURN server.
    Pass,
    /// Drop it (counted).
    Drop,
    /// Answer the request with this STUN error (counted), do not hand it on.
    Refuse(u16),
}

/// A client's transport and address: one allocation at most each (RFC 8656 §2.2).
type Client = (u8, SocketAddr);

struct Allocation {
    username: String,
    bucket: DefaultDirectRateLimiter,
}

#[derive(Default)]
struct State {
    pending: HashMap<Client, String>,
    allocations: HashMap<Client, Allocation>,
    per_user: HashMap<String, usize>,
}

/// The TURN figures on `/metrics`.
#[derive(Clone)]
pub struct Figures {
    /// `trackmesh_turn_allocations`.
    pub allocations: IntGauge,
    /// `trackmesh_turn_relayed_bytes_total{direction}`: `to_peer` (client → the SFU) and
    /// `to_client`.
    pub relayed_bytes: IntCounterVec,
    /// `trackmesh_turn_refused_total{reason}`.
    pub refused: IntCounterVec,
}

impl Figures {
    fn new() -> prometheus::Result<Figures> {
        Ok(Figures {
            allocations: IntGauge::new(
                "trackmesh_turn_allocations",
                "TURN allocations held on this node.",
            )?,
            relayed_bytes: IntCounterVec::new(
                Opts::new(
                    "trackmesh_turn_relayed_bytes_total",
                    "Bytes relayed by the TURN server, by direction (to_peer, to_client).",
                ),
                &["direction"],
            )?,
            refused: IntCounterVec::new(
                Opts::new(
                    "trackmesh_turn_refused_total",
                    "TURN messages refused or dropped, by reason.",
                ),
                &["reason"],
            )?,
        })
    }

    /// Every collector, for registering with the node's registry.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.allocations.clone()),
            Box::new(self.relayed_bytes.clone()),
            Box::new(self.refused.clone()),
        ]
    }
}

/// The policy and its state, shared by the UDP and TCP listeners.
pub struct Guard {
    limits: Limits,
    state: Mutex<State>,
    unauthenticated: DefaultDirectRateLimiter,
    figures: Figures,
}

impl Guard {
    /// A guard enforcing `limits`.
    pub fn new(limits: Limits) -> prometheus::Result<Guard> {
        Ok(Guard {
            unauthenticated: DefaultDirectRateLimiter::direct(Quota::per_second(
                limits.unauthenticated_per_sec,
            )),
            limits,
            state: Mutex::new(State::default()),
            figures: Figures::new()?,
        })
    }

    /// The figures, for `/metrics` and tests.
    pub fn figures(&self) -> &Figures {
        &self.figures
    }

    /// Counts a refusal under `reason` (a fixed string).
    pub fn refused(&self, reason: &'static str) {
        if let Ok(c) = self.figures.refused.get_metric_with_label_values(&[reason]) {
            c.inc();
        }
    }

    /// Counts `bytes` relayed in `direction` (`to_peer`, `to_client`).
    pub fn relayed(&self, direction: &'static str, bytes: usize) {
        if let Ok(c) = self
            .figures
            .relayed_bytes
            .get_metric_with_label_values(&[direction])
        {
            c.inc_by(bytes as u64);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn peer_allowed(&self, peer: SocketAddr) -> bool {
        self.limits.peers.contains(&peer)
    }

    /// Within the client's allocation's bandwidth? Data without an allocation is the TURN
    /// server's to drop.
    fn within_bandwidth(&self, client: Client, bytes: usize) -> bool {
        let state = self.lock();
        let Some(alloc) = state.allocations.get(&client) else {
            return true;
        };
        let ok = u32::try_from(bytes)
            .ok()
            .and_then(NonZeroU32::new)
            .is_none_or(|n| matches!(alloc.bucket.check_n(n), Ok(Ok(()))));
        if !ok {
            drop(state);
            self.refused("bandwidth");
        }
        ok
    }

    /// A ChannelData message from a client. The TURN crate does not expose its length, so it
    /// is charged as a full media packet ([`CHANNEL_DATA_CHARGE`]).
    pub fn on_channel_data(&self, proto: u8, src: SocketAddr) -> Verdict {
        self.on_data(proto, src, CHANNEL_DATA_CHARGE)
    }

    fn on_data(&self, proto: u8, src: SocketAddr, bytes: usize) -> Verdict {
        if self.within_bandwidth((proto, src), bytes) {
            Verdict::Pass
        } else {
            Verdict::Drop
        }
    }

    /// A STUN message from a client.
    pub fn on_message(&self, proto: u8, src: SocketAddr, msg: &Message<Attribute>) -> Verdict {
        let (method, class) = (msg.method(), msg.class());
        if method == BINDING {
            return Verdict::Pass;
        }
        if method == SEND && class == MessageClass::Indication {
            if !self.all_peers_allowed(msg) {
                self.refused("peer_not_allowed");
                return Verdict::Drop;
            }
            let bytes = msg.get_attribute::<Data>().map_or(0, |d| d.data().len());
            return self.on_data(proto, src, bytes);
        }
        if class != MessageClass::Request {
            self.refused("unexpected_message");
            return Verdict::Drop;
        }
        if msg.get_attribute::<MessageIntegrity>().is_none() {
            // The TURN crate answers with a fresh nonce it remembers: rate-limited in all.
            if self.unauthenticated.check().is_err() {
                self.refused("unauthenticated_rate");
                return Verdict::Drop;
            }
            return Verdict::Pass;
        }
        if (method == CREATE_PERMISSION || method == CHANNEL_BIND) && !self.all_peers_allowed(msg) {
            self.refused("peer_not_allowed");
            return Verdict::Refuse(403);
        }
        if method == ALLOCATE {
            return self.on_allocate(
                (proto, src),
                msg.get_attribute::<Username>().map(Username::name),
            );
        }
        Verdict::Pass
    }

    /// Every XOR-PEER-ADDRESS of `msg` is the node's media address (and there is one).
    fn all_peers_allowed(&self, msg: &Message<Attribute>) -> bool {
        let mut any = false;
        for attr in msg.attributes() {
            if let Attribute::XorPeerAddress(p) = attr {
                any = true;
                if !self.peer_allowed(XorPeerAddress::address(p)) {
                    return false;
                }
            }
        }
        any
    }

    fn on_allocate(&self, client: Client, username: Option<&str>) -> Verdict {
        let Some(username) = username else {
            // The TURN crate answers 400.
            return Verdict::Pass;
        };
        let mut state = self.lock();
        if state.allocations.contains_key(&client) {
            // A retransmission or a second allocation: the TURN crate answers either.
            return Verdict::Pass;
        }
        let reason = if state.allocations.len() >= self.limits.max_allocations {
            Some("allocations_total")
        } else if state.per_user.get(username).copied().unwrap_or(0) >= self.limits.per_credential {
            Some("allocations_per_credential")
        } else {
            None
        };
        if let Some(reason) = reason {
            drop(state);
            self.refused(reason);
            // 486 Allocation Quota Reached (RFC 8656 §19).
            return Verdict::Refuse(486);
        }
        if state.pending.len() >= MAX_PENDING {
            state.pending.clear();
        }
        state.pending.insert(client, username.to_string());
        Verdict::Pass
    }

    /// A STUN message going to a client: an Allocate answer settles the pending request, a Data
    /// indication is relayed payload.
    pub fn on_answer(&self, proto: u8, dst: SocketAddr, msg: &Message<Attribute>) {
        let client = (proto, dst);
        if msg.method() == DATA && msg.class() == MessageClass::Indication {
            let bytes = msg.get_attribute::<Data>().map_or(0, |d| d.data().len());
            self.relayed("to_client", bytes);
            return;
        }
        if msg.method() != ALLOCATE {
            return;
        }
        let mut state = self.lock();
        let Some(username) = state.pending.remove(&client) else {
            return;
        };
        if msg.class() != MessageClass::SuccessResponse || state.allocations.contains_key(&client) {
            return;
        }
        let quota = Quota::per_second(self.limits.bytes_per_sec);
        *state.per_user.entry(username.clone()).or_default() += 1;
        state.allocations.insert(
            client,
            Allocation {
                username,
                bucket: DefaultDirectRateLimiter::direct(quota),
            },
        );
        self.figures.allocations.set(state.allocations.len() as i64);
    }

    /// Raw bytes going to a client: ChannelData is relayed payload.
    pub fn on_raw_answer(&self, bytes: &[u8]) {
        // ChannelData starts with a channel number in 0x4000..=0x7FFF (RFC 8656 §12).
        if let [first, _, hi, lo, ..] = bytes
            && (0x40..0x80).contains(first)
        {
            self.relayed("to_client", usize::from(u16::from_be_bytes([*hi, *lo])));
        }
    }

    /// The TURN crate closed the allocation of `client` (expired, refreshed to 0, deleted).
    pub fn on_closed(&self, proto: u8, src: SocketAddr) {
        let mut state = self.lock();
        if let Some(alloc) = state.allocations.remove(&(proto, src))
            && let Some(n) = state.per_user.get_mut(&alloc.username)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.per_user.remove(&alloc.username);
            }
        }
        self.figures.allocations.set(state.allocations.len() as i64);
    }

    /// Allocations held now.
    pub fn allocations(&self) -> usize {
        self.lock().allocations.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use medea_turn::attr::{Realm, RequestedTransport};
    use stun_codec::TransactionId;

    const UDP: u8 = 17;

    fn media() -> SocketAddr {
        "127.0.0.1:7701".parse().expect("addr")
    }

    fn guard(per_credential: usize, max_allocations: usize) -> Guard {
        Guard::new(Limits {
            peers: vec![media()],
            max_allocations,
            per_credential,
            bytes_per_sec: NonZeroU32::new(2500).expect("non-zero"),
            unauthenticated_per_sec: NonZeroU32::new(2).expect("non-zero"),
        })
        .expect("metrics")
    }

    fn request(method: stun_codec::Method, user: &str) -> Message<Attribute> {
        let mut m = Message::new(MessageClass::Request, method, TransactionId::new([1; 12]));
        let username = Username::new(user.into()).expect("username");
        let realm = Realm::new("trackmesh".into()).expect("realm");
        m.add_attribute(RequestedTransport::new(17));
        m.add_attribute(username.clone());
        m.add_attribute(realm.clone());
        let mi = MessageIntegrity::new_long_term_credential(&m, &username, &realm, "pw")
            .expect("integrity");
        m.add_attribute(mi);
        m
    }

    fn with_peer(method: stun_codec::Method, peer: SocketAddr) -> Message<Attribute> {
        let mut m = Message::new(MessageClass::Request, method, TransactionId::new([2; 12]));
        m.add_attribute(XorPeerAddress::new(peer));
        m.add_attribute(Username::new("u".into()).expect("username"));
        m.add_attribute(MessageIntegrity::new_short_term_credential(&m, "pw").expect("mi"));
        m
    }

    fn success(method: stun_codec::Method) -> Message<Attribute> {
        Message::new(
            MessageClass::SuccessResponse,
            method,
            TransactionId::new([1; 12]),
        )
    }

    fn refusals(g: &Guard, reason: &str) -> u64 {
        g.figures()
            .refused
            .get_metric_with_label_values(&[reason])
            .map(|c| c.get())
            .unwrap_or(0)
    }

    #[test]
    fn permissions_and_channels_only_to_the_media_address() {
        let g = guard(10, 10);
        let c: SocketAddr = "192.0.2.1:5000".parse().expect("addr");
        for method in [CREATE_PERMISSION, CHANNEL_BIND] {
            assert_eq!(
                g.on_message(UDP, c, &with_peer(method, media())),
                Verdict::Pass
            );
            let other = "127.0.0.1:22".parse().expect("addr");
            assert_eq!(
                g.on_message(UDP, c, &with_peer(method, other)),
                Verdict::Refuse(403)
            );
            let elsewhere = "198.51.100.7:7701".parse().expect("addr");
            assert_eq!(
                g.on_message(UDP, c, &with_peer(method, elsewhere)),
                Verdict::Refuse(403)
            );
        }
        assert_eq!(refusals(&g, "peer_not_allowed"), 4);
    }

    #[test]
    fn allocations_are_bounded_per_credential_and_in_all() {
        let g = guard(2, 3);
        let client = |i: u16| SocketAddr::from(([192, 0, 2, 1], 5000 + i));
        for i in 0..2 {
            assert_eq!(
                g.on_message(UDP, client(i), &request(ALLOCATE, "a")),
                Verdict::Pass
            );
            g.on_answer(UDP, client(i), &success(ALLOCATE));
        }
        assert_eq!(
            g.on_message(UDP, client(2), &request(ALLOCATE, "a")),
            Verdict::Refuse(486)
        );
        assert_eq!(refusals(&g, "allocations_per_credential"), 1);
        // Another credential still has room, up to the node's total.
        assert_eq!(
            g.on_message(UDP, client(3), &request(ALLOCATE, "b")),
            Verdict::Pass
        );
        g.on_answer(UDP, client(3), &success(ALLOCATE));
        assert_eq!(
            g.on_message(UDP, client(4), &request(ALLOCATE, "c")),
            Verdict::Refuse(486)
        );
        assert_eq!(refusals(&g, "allocations_total"), 1);
        assert_eq!(g.figures().allocations.get(), 3);
        // A closed allocation gives its credential room again.
        g.on_closed(UDP, client(0));
        assert_eq!(
            g.on_message(UDP, client(5), &request(ALLOCATE, "a")),
            Verdict::Pass
        );
        assert_eq!(g.figures().allocations.get(), 2);
    }

    #[test]
    fn an_allocation_past_its_bandwidth_drops_data() {
        let g = guard(2, 3);
        let c: SocketAddr = "192.0.2.1:5000".parse().expect("addr");
        assert_eq!(g.on_message(UDP, c, &request(ALLOCATE, "a")), Verdict::Pass);
        g.on_answer(UDP, c, &success(ALLOCATE));
        // 2500 bytes a second with one second of burst: the third packet at once is over.
        assert_eq!(g.on_channel_data(UDP, c), Verdict::Pass);
        assert_eq!(g.on_channel_data(UDP, c), Verdict::Pass);
        assert_eq!(g.on_channel_data(UDP, c), Verdict::Drop);
        assert_eq!(refusals(&g, "bandwidth"), 1);
    }

    #[test]
    fn unauthenticated_requests_are_rate_limited() {
        let g = guard(2, 3);
        let c: SocketAddr = "192.0.2.1:5000".parse().expect("addr");
        let bare = Message::new(MessageClass::Request, ALLOCATE, TransactionId::new([3; 12]));
        let passed = (0..10)
            .filter(|_| g.on_message(UDP, c, &bare) == Verdict::Pass)
            .count();
        assert!(passed <= 3, "{passed} passed, the limit is 2 a second");
        assert!(refusals(&g, "unauthenticated_rate") >= 7);
    }
}
