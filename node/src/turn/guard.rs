//! What the embedded TURN server may do, decided per message before the TURN crate sees it and
//! per answer as it leaves: authenticate first, relay only to this node's media address, bound
//! allocations (per credential and in all) and bandwidth (per allocation), and count every
//! refusal. No I/O: the transport wrapper (`transport.rs`) asks and acts.
//!
//! Authentication happens here, before the crate. The crate remembers every nonce it hands out
//! and forgets one only when it is used again, so a flood of unsigned requests would grow its
//! memory without end. Instead, an unsigned request is challenged here (401) with a nonce the
//! crate issued less than half its lifetime ago, learnt from its own answers; only when there is
//! none does one reach the crate, so it issues about one nonce per half hour per listener for
//! unsigned traffic. (Our own nonce would not do: the crate would answer it with 438, which
//! Chromium does not follow on an Allocate.) A signed request whose credential or integrity does
//! not check out is refused here; signed requests with a nonce the crate did not issue (which
//! make it issue one) pass at a bounded rate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;

use bytecodec::EncodeExt;
use governor::{DefaultDirectRateLimiter, Quota};
use medea_turn::attr::{
    Attribute, Data, Lifetime, MessageIntegrity, Nonce, Realm, Username, XorPeerAddress,
};
use prometheus::{IntCounterVec, IntGauge, Opts};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5766::methods::{
    ALLOCATE, CHANNEL_BIND, CREATE_PERMISSION, DATA, REFRESH, SEND,
};
use stun_codec::{Message, MessageClass, MessageEncoder, TransactionId};

use super::credentials::{TurnAuth, unix_now};

/// The realm of the challenge; the TURN crate is configured with the same one.
pub const REALM: &str = "trackmesh";
/// A nonce the crate issued is handed to unsigned clients for this long; the crate keeps it an
/// hour, so a client has at least half an hour before it must follow a 438.
const NONCE_REUSE: std::time::Duration = std::time::Duration::from_secs(1800);
/// Nonces the TURN crate handed out that are remembered, so requests carrying them pass without
/// touching the new-nonce rate; past it the set starts over (which costs at most one 438 each).
const MAX_KNOWN_NONCES: usize = 65_536;
/// A nonce counts as known for this long after its listener issued it: short of the hour the
/// crate keeps it, after which the crate answers it with 438 and a nonce it must remember.
const KNOWN_NONCE_FOR: std::time::Duration = std::time::Duration::from_secs(55 * 60);
/// An allocation's lifetime when the crate's answer names none (RFC 8656 §7.2's default).
const DEFAULT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(600);
/// After its lifetime an allocation is the crate's to have ended; a Refresh that crossed its
/// expiry still extends it within this long.
const EXPIRY_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Allocate requests between the request and its answer; they are answered in turn, so a few
/// suffice, and a flood only forgets (never leaks) entries.
const MAX_PENDING: usize = 4096;

/// The transport number of TCP, as the listeners name theirs.
const TCP: u8 = 6;

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
    /// Challenges (401) to UDP clients and signed requests with a nonce the TURN crate did not
    /// issue, per second, all clients together: the first are answers to anyone, the second make
    /// the crate remember a nonce.
    pub unauthenticated_per_sec: NonZeroU32,
}

/// What to do with a message from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the TURN server.
    Pass,
    /// Drop it (counted).
    Drop,
    /// Answer the request with this STUN error (counted), do not hand it on.
    Refuse(u16),
    /// Answer 401 with the realm and this nonce (one the crate issued), so the client signs its
    /// request.
    Challenge(String),
}

/// A client's transport and address: one allocation at most each (RFC 8656 §2.2).
type Client = (u8, SocketAddr);

struct Allocation {
    username: String,
    /// When its lifetime ends, unless refreshed: the crate then ends it without a word until
    /// its next Allocate on that listener, so the guard takes it off by this itself.
    expires: std::time::Instant,
    bucket: DefaultDirectRateLimiter,
    /// The nonce of the client's latest signed request that passed: one the crate accepts from
    /// it, for the request that releases the allocation when its TCP connection ends.
    nonce: Option<String>,
}

impl State {
    /// Takes off every allocation past its lifetime (and the grace) at `now`. The crate's close
    /// notice for one comes later, if at all, and must not take off a newer allocation of the
    /// same client: it is expected, as after a Refresh to 0.
    fn reap_expired(&mut self, now: std::time::Instant) {
        let expired: Vec<Client> = self
            .allocations
            .iter()
            .filter(|(_, a)| now.saturating_duration_since(a.expires) >= EXPIRY_GRACE)
            .map(|(c, _)| *c)
            .collect();
        for client in expired {
            self.release(client);
        }
    }

    /// Takes off `client`'s allocation before the crate's close notice for it, which is then
    /// expected and ignored.
    fn release(&mut self, client: Client) {
        if self.take_off(client) {
            if self.released.len() >= MAX_PENDING {
                self.released.clear();
            }
            *self.released.entry(client).or_default() += 1;
        }
    }

    fn take_off(&mut self, client: Client) -> bool {
        let Some(alloc) = self.allocations.remove(&client) else {
            return false;
        };
        if let Some(n) = self.per_user.get_mut(&alloc.username) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_user.remove(&alloc.username);
            }
        }
        true
    }
}

#[derive(Default)]
struct State {
    /// Nonces the TURN crate has issued (seen in its answers), by listener, and when. Each
    /// listener's crate loop has its own nonces: one from the other is new to it.
    known_nonces: HashMap<(u8, String), std::time::Instant>,
    /// The latest nonce each listener's crate loop issued (by protocol), and when.
    latest_nonce: HashMap<u8, (String, std::time::Instant)>,
    pending: HashMap<Client, String>,
    allocations: HashMap<Client, Allocation>,
    per_user: HashMap<String, usize>,
    /// Allocations taken off at their Refresh to 0, whose close notice from the crate is still
    /// to come (it must not take off a newer allocation of the same client).
    released: HashMap<Client, u32>,
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
    /// `trackmesh_turn_tcp_connections`: TURN-over-TCP connections open now.
    pub tcp_connections: IntGauge,
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
            tcp_connections: IntGauge::new(
                "trackmesh_turn_tcp_connections",
                "TURN-over-TCP connections open now.",
            )?,
        })
    }

    /// Every collector, for registering with the node's registry.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.allocations.clone()),
            Box::new(self.relayed_bytes.clone()),
            Box::new(self.refused.clone()),
            Box::new(self.tcp_connections.clone()),
        ]
    }
}

/// The policy and its state, shared by the UDP and TCP listeners.
pub struct Guard {
    limits: Limits,
    auth: std::sync::Arc<TurnAuth>,
    state: Mutex<State>,
    unauthenticated: DefaultDirectRateLimiter,
    figures: Figures,
}

impl Guard {
    /// A guard enforcing `limits`, with `auth`'s credentials.
    pub fn new(limits: Limits, auth: std::sync::Arc<TurnAuth>) -> prometheus::Result<Guard> {
        Ok(Guard {
            auth,
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
            match class {
                // Answered to anyone (its source may be spoofed): within the budget of the
                // other unauthenticated answers.
                MessageClass::Request => {
                    if !self.within_unauthenticated_budget(proto) {
                        self.refused("unauthenticated_rate");
                        return Verdict::Drop;
                    }
                    return Verdict::Pass;
                }
                // A keepalive: it has done its work by arriving. The crate would challenge it,
                // and remember a new nonce for each.
                MessageClass::Indication => return Verdict::Drop,
                _ => {
                    self.refused("unexpected_message");
                    return Verdict::Drop;
                }
            }
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
        if let Some(v) = self.authenticate(proto, msg) {
            return v;
        }
        // An allocation answers only to the credential that made it (RFC 8656 §5: 441), or
        // anyone spoofing its client's address could refresh it away with their own.
        let username = msg.get_attribute::<Username>().map(Username::name);
        let other = self
            .lock()
            .allocations
            .get(&(proto, src))
            .is_some_and(|a| Some(a.username.as_str()) != username);
        if other {
            self.refused("wrong_credentials");
            return Verdict::Refuse(441);
        }
        if let Some(nonce) = msg.get_attribute::<Nonce>()
            && let Some(a) = self.lock().allocations.get_mut(&(proto, src))
            && a.nonce.as_deref() != Some(nonce.value())
        {
            a.nonce = Some(nonce.value().to_string());
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

    /// `None` when `msg` is signed with a valid credential and may reach the TURN crate; else
    /// what to do with it.
    fn authenticate(&self, proto: u8, msg: &Message<Attribute>) -> Option<Verdict> {
        let (Some(integrity), Some(user), Some(realm)) = (
            msg.get_attribute::<MessageIntegrity>(),
            msg.get_attribute::<Username>(),
            msg.get_attribute::<Realm>(),
        ) else {
            // Answers to anyone (spoofable sources): rate-limited in all.
            if !self.within_unauthenticated_budget(proto) {
                self.refused("unauthenticated_rate");
                return Some(Verdict::Drop);
            }
            let fresh = self
                .lock()
                .latest_nonce
                .get(&proto)
                .filter(|(_, at)| at.elapsed() < NONCE_REUSE)
                .map(|(n, _)| n.clone());
            // Without a fresh nonce of the crate's, the crate challenges (and we learn its nonce).
            return Some(fresh.map_or(Verdict::Pass, Verdict::Challenge));
        };
        let password = match self.auth.password(user.name(), unix_now()) {
            Ok(p) => p,
            Err(r) => {
                self.refused(r.as_str());
                return Some(Verdict::Refuse(401));
            }
        };
        if integrity
            .check_long_term_credential(user, realm, &password)
            .is_err()
        {
            self.refused("bad_integrity");
            return Some(Verdict::Refuse(401));
        }
        let known = msg.get_attribute::<Nonce>().is_some_and(|n| {
            self.lock()
                .known_nonces
                .get(&(proto, n.value().to_string()))
                .is_some_and(|at| at.elapsed() < KNOWN_NONCE_FOR)
        });
        if !known && self.unauthenticated.check().is_err() {
            self.refused("new_nonce_rate");
            return Some(Verdict::Drop);
        }
        None
    }

    /// Whether an answer to an unsigned request may go out. Over UDP its source may be spoofed,
    /// so answers are a reflection: all clients share one budget. Over TCP the source is a
    /// connection that completed its handshake (and the connections are capped), so a UDP flood
    /// cannot starve TURN over TCP, the last way through for a client behind a strict firewall.
    fn within_unauthenticated_budget(&self, proto: u8) -> bool {
        proto == TCP || self.unauthenticated.check().is_ok()
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
        state.reap_expired(std::time::Instant::now());
        self.figures.allocations.set(state.allocations.len() as i64);
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
        if let Some(nonce) = msg.get_attribute::<Nonce>() {
            let mut state = self.lock();
            if state.known_nonces.len() >= MAX_KNOWN_NONCES {
                state.known_nonces.clear();
            }
            // Its first sighting is when it was issued: the crate repeats a nonce in later
            // answers, but keeps it only an hour from its issue.
            state
                .known_nonces
                .entry((proto, nonce.value().to_string()))
                .or_insert_with(std::time::Instant::now);
            state.latest_nonce.insert(
                proto,
                (nonce.value().to_string(), std::time::Instant::now()),
            );
        }
        if msg.method() == DATA && msg.class() == MessageClass::Indication {
            let bytes = msg.get_attribute::<Data>().map_or(0, |d| d.data().len());
            self.relayed("to_client", bytes);
            return;
        }
        if msg.method() == REFRESH
            && msg.class() == MessageClass::SuccessResponse
            && msg
                .get_attribute::<Lifetime>()
                .is_some_and(|l| l.lifetime().is_zero())
        {
            // The crate deleted the allocation before answering: take it off now, in the
            // crate's own order, so an Allocate that follows at once is counted; its close
            // notice, still to come, is then ignored.
            let mut state = self.lock();
            state.release(client);
            self.figures.allocations.set(state.allocations.len() as i64);
            return;
        }
        let lifetime = msg
            .get_attribute::<Lifetime>()
            .map_or(DEFAULT_LIFETIME, Lifetime::lifetime);
        if msg.method() == REFRESH && msg.class() == MessageClass::SuccessResponse {
            if let Some(a) = self.lock().allocations.get_mut(&client) {
                a.expires = std::time::Instant::now() + lifetime;
            }
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
                expires: std::time::Instant::now() + lifetime,
                bucket: DefaultDirectRateLimiter::direct(quota),
                nonce: None,
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
        let client = (proto, src);
        if let Some(n) = state.released.get_mut(&client) {
            // Taken off already, at its Refresh to 0.
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.released.remove(&client);
            }
            return;
        }
        state.take_off(client);
        self.figures.allocations.set(state.allocations.len() as i64);
    }

    /// Allocations held now.
    pub fn allocations(&self) -> usize {
        self.lock().allocations.len()
    }

    /// The request that ends `client`'s allocation, as the client would send it: a Refresh
    /// with LIFETIME 0, signed with its credential and the nonce of its latest request (else
    /// the freshest its listener issued). The TCP listener hands it to the TURN crate when a
    /// client's connection ends, since the crate deletes allocations only by username (all of a
    /// credential's at once) or when they expire. Best effort: `None` without an allocation, a
    /// nonce or a valid credential, and the crate refuses a nonce it let expire (after an hour).
    pub fn release_request(&self, proto: u8, client: SocketAddr) -> Option<Vec<u8>> {
        let (username, nonce) = {
            let state = self.lock();
            let alloc = state.allocations.get(&(proto, client))?;
            let latest = state
                .latest_nonce
                .get(&proto)
                .filter(|(_, at)| at.elapsed() < NONCE_REUSE)
                .map(|(n, _)| n.clone());
            (alloc.username.clone(), alloc.nonce.clone().or(latest)?)
        };
        let password = self.auth.password(&username, unix_now()).ok()?;
        let mut m: Message<Attribute> = Message::new(
            MessageClass::Request,
            REFRESH,
            TransactionId::new(rand::random()),
        );
        m.add_attribute(Lifetime::new(std::time::Duration::ZERO).ok()?);
        let user = Username::new(username).ok()?;
        let realm = Realm::new(REALM.to_string()).ok()?;
        m.add_attribute(user.clone());
        m.add_attribute(realm.clone());
        m.add_attribute(Nonce::new(nonce).ok()?);
        let integrity =
            MessageIntegrity::new_long_term_credential(&m, &user, &realm, &password).ok()?;
        m.add_attribute(integrity);
        MessageEncoder::new().encode_into_bytes(m).ok()
    }

    /// Whether `client` holds an allocation on the listener of `proto`.
    pub fn has_allocation(&self, proto: u8, client: SocketAddr) -> bool {
        let now = std::time::Instant::now();
        self.lock()
            .allocations
            .get(&(proto, client))
            .is_some_and(|a| now.saturating_duration_since(a.expires) < EXPIRY_GRACE)
    }

    /// Takes off the allocations whose lifetime ended before `now` (Allocate does this itself).
    #[cfg(test)]
    pub(crate) fn reap_expired_at(&self, now: std::time::Instant) {
        self.lock().reap_expired(now);
    }

    /// Refusals counted under `reason` (tests).
    #[cfg(test)]
    pub(crate) fn refusals(&self, reason: &str) -> u64 {
        self.figures
            .refused
            .get_metric_with_label_values(&[reason])
            .map_or(0, |c| c.get())
    }

    /// Records an allocation of `client` as the TURN crate's answer would (transports' tests).
    #[cfg(test)]
    pub(crate) fn allocated_for_tests(&self, proto: u8, client: SocketAddr) {
        let quota = Quota::per_second(self.limits.bytes_per_sec);
        self.lock().allocations.insert(
            (proto, client),
            Allocation {
                username: "test".into(),
                expires: std::time::Instant::now() + DEFAULT_LIFETIME,
                bucket: DefaultDirectRateLimiter::direct(quota),
                nonce: None,
            },
        );
    }

    /// A guard for the transports' tests: the media address 127.0.0.1:7701, key `k:secret`.
    #[cfg(test)]
    pub(crate) fn for_tests() -> std::sync::Arc<Guard> {
        let auth = std::sync::Arc::new(TurnAuth::new(&["k:secret".parse().expect("key")]));
        let limits = Limits {
            peers: vec![SocketAddr::from(([127, 0, 0, 1], 7701))],
            max_allocations: 10,
            per_credential: 10,
            bytes_per_sec: NonZeroU32::new(2500).expect("non-zero"),
            unauthenticated_per_sec: NonZeroU32::new(1000).expect("non-zero"),
        };
        std::sync::Arc::new(Guard::new(limits, auth).expect("metrics"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::Credential;
    use medea_turn::attr::RequestedTransport;
    use std::sync::Arc;
    use stun_codec::TransactionId;

    const UDP: u8 = 17;

    fn media() -> SocketAddr {
        "127.0.0.1:7701".parse().expect("addr")
    }

    fn guard_with(per_credential: usize, max_allocations: usize, unauthenticated: u32) -> Guard {
        let auth = Arc::new(TurnAuth::new(&["k:secret".parse().expect("key")]));
        Guard::new(
            Limits {
                peers: vec![media()],
                max_allocations,
                per_credential,
                bytes_per_sec: NonZeroU32::new(2500).expect("non-zero"),
                unauthenticated_per_sec: NonZeroU32::new(unauthenticated).expect("non-zero"),
            },
            auth,
        )
        .expect("metrics")
    }

    fn guard(per_credential: usize, max_allocations: usize) -> Guard {
        guard_with(per_credential, max_allocations, 1000)
    }

    fn cred(g: &Guard) -> Credential {
        g.auth.issue("k", 600, unix_now()).expect("known key")
    }

    /// A request signed with `cred` (its password unless `password` overrides it).
    fn signed(
        method: stun_codec::Method,
        cred: &Credential,
        password: Option<&str>,
        attrs: Vec<Attribute>,
    ) -> Message<Attribute> {
        let mut m = Message::new(MessageClass::Request, method, TransactionId::new([1; 12]));
        for a in attrs {
            m.add_attribute(a);
        }
        let username = Username::new(cred.username.clone()).expect("username");
        let realm = Realm::new(REALM.into()).expect("realm");
        m.add_attribute(username.clone());
        m.add_attribute(realm.clone());
        m.add_attribute(Nonce::new("n".into()).expect("nonce"));
        let pw = password.unwrap_or(&cred.password);
        let mi = MessageIntegrity::new_long_term_credential(&m, &username, &realm, pw)
            .expect("integrity");
        m.add_attribute(mi);
        m
    }

    fn allocate(cred: &Credential) -> Message<Attribute> {
        signed(
            ALLOCATE,
            cred,
            None,
            vec![RequestedTransport::new(17).into()],
        )
    }

    fn with_peer(g: &Guard, method: stun_codec::Method, peer: SocketAddr) -> Message<Attribute> {
        signed(
            method,
            &cred(g),
            None,
            vec![XorPeerAddress::new(peer).into()],
        )
    }

    fn success(method: stun_codec::Method) -> Message<Attribute> {
        Message::new(
            MessageClass::SuccessResponse,
            method,
            TransactionId::new([1; 12]),
        )
    }

    fn refusals(g: &Guard, reason: &str) -> u64 {
        g.refusals(reason)
    }

    #[test]
    fn permissions_and_channels_only_to_the_media_address() {
        let g = guard(10, 10);
        let c: SocketAddr = "192.0.2.1:5000".parse().expect("addr");
        for method in [CREATE_PERMISSION, CHANNEL_BIND] {
            assert_eq!(
                g.on_message(UDP, c, &with_peer(&g, method, media())),
                Verdict::Pass
            );
            let other = "127.0.0.1:22".parse().expect("addr");
            assert_eq!(
                g.on_message(UDP, c, &with_peer(&g, method, other)),
                Verdict::Refuse(403)
            );
            let elsewhere = "198.51.100.7:7701".parse().expect("addr");
            assert_eq!(
                g.on_message(UDP, c, &with_peer(&g, method, elsewhere)),
                Verdict::Refuse(403)
            );
        }
        assert_eq!(refusals(&g, "peer_not_allowed"), 4);
    }

    #[test]
    fn unsigned_requests_are_challenged_and_bad_signatures_refused_before_the_crate() {
        let g = guard(10, 10);
        let c: SocketAddr = "192.0.2.1:5000".parse().expect("addr");
        let bare = Message::new(MessageClass::Request, ALLOCATE, TransactionId::new([3; 12]));
        assert_eq!(
            g.on_message(UDP, c, &bare),
            Verdict::Pass,
            "the crate issues the first nonce"
        );
        let mut issued = Message::new(
            MessageClass::ErrorResponse,
            ALLOCATE,
            TransactionId::new([4; 12]),
        );
        issued.add_attribute(Nonce::new("crate-nonce".into()).expect("nonce"));
        g.on_answer(UDP, c, &issued);
        for _ in 0..3 {
            assert_eq!(
                g.on_message(UDP, c, &bare),
                Verdict::Challenge("crate-nonce".into()),
                "later ones are challenged here with the crate's nonce"
            );
        }
        assert_eq!(
            g.on_message(6, c, &bare),
            Verdict::Pass,
            "each listener has its own nonces"
        );
        let good = cred(&g);
        let forged = signed(ALLOCATE, &good, Some("guess"), vec![]);
        assert_eq!(g.on_message(UDP, c, &forged), Verdict::Refuse(401));
        assert_eq!(refusals(&g, "bad_integrity"), 1);
        let expired = Credential {
            username: "1000:k:x".into(),
            password: String::new(),
        };
        assert_eq!(
            g.on_message(UDP, c, &allocate(&expired)),
            Verdict::Refuse(401)
        );
        assert_eq!(refusals(&g, "expired"), 1);
        assert_eq!(g.on_message(UDP, c, &allocate(&good)), Verdict::Pass);
    }

    #[test]
    fn allocations_are_bounded_per_credential_and_in_all() {
        let g = guard(2, 3);
        let (a, b, c) = (cred(&g), cred(&g), cred(&g));
        let client = |i: u16| SocketAddr::from(([192, 0, 2, 1], 5000 + i));
        for i in 0..2 {
            assert_eq!(g.on_message(UDP, client(i), &allocate(&a)), Verdict::Pass);
            g.on_answer(UDP, client(i), &success(ALLOCATE));
        }
        assert_eq!(
            g.on_message(UDP, client(2), &allocate(&a)),
            Verdict::Refuse(486)
        );
        assert_eq!(refusals(&g, "allocations_per_credential"), 1);
        // Another credential still has room, up to the node's total.
        assert_eq!(g.on_message(UDP, client(3), &allocate(&b)), Verdict::Pass);
        g.on_answer(UDP, client(3), &success(ALLOCATE));
        assert_eq!(
            g.on_message(UDP, client(4), &allocate(&c)),
            Verdict::Refuse(486)
        );
        assert_eq!(refusals(&g, "allocations_total"), 1);
        assert_eq!(g.figures().allocations.get(), 3);
        // A closed allocation gives its credential room again.
        g.on_closed(UDP, client(0));
        assert_eq!(g.on_message(UDP, client(5), &allocate(&a)), Verdict::Pass);
        assert_eq!(g.figures().allocations.get(), 2);
    }

    #[test]
    fn a_refresh_to_zero_takes_the_allocation_off_before_its_close_notice() {
        let g = guard(1, 10);
        let a = cred(&g);
        let c = SocketAddr::from(([192, 0, 2, 1], 5000));
        assert_eq!(g.on_message(UDP, c, &allocate(&a)), Verdict::Pass);
        g.on_answer(UDP, c, &success(ALLOCATE));
        // Released (the crate deleted it and answers the Refresh to 0)...
        let mut released = success(REFRESH);
        released.add_attribute(Lifetime::new(std::time::Duration::ZERO).expect("lifetime"));
        g.on_answer(UDP, c, &released);
        assert_eq!(g.allocations(), 0);
        // ...so the same client allocating at once, before the crate's close notice comes, is
        // counted, within its credential's one place...
        assert_eq!(g.on_message(UDP, c, &allocate(&a)), Verdict::Pass);
        g.on_answer(UDP, c, &success(ALLOCATE));
        assert_eq!(g.allocations(), 1);
        // ...and the old allocation's notice does not take off the new one.
        g.on_closed(UDP, c);
        assert_eq!(g.allocations(), 1);
        assert!(g.has_allocation(UDP, c));
        g.on_closed(UDP, c);
        assert_eq!(g.allocations(), 0);
    }

    #[test]
    fn the_release_request_is_signed_with_the_clients_latest_nonce() {
        let g = guard(2, 10);
        let a = cred(&g);
        let c = SocketAddr::from(([192, 0, 2, 1], 5000));
        assert!(g.release_request(UDP, c).is_none(), "no allocation");
        assert_eq!(g.on_message(UDP, c, &allocate(&a)), Verdict::Pass);
        g.on_answer(UDP, c, &success(ALLOCATE));
        // A later signed request of the client's carries nonce "n" (`signed`).
        assert_eq!(
            g.on_message(UDP, c, &signed(REFRESH, &a, None, Vec::new())),
            Verdict::Pass
        );
        let bytes = g.release_request(UDP, c).expect("a release request");
        use bytecodec::DecodeExt;
        let m = stun_codec::MessageDecoder::<Attribute>::new()
            .decode_from_bytes(&bytes)
            .expect("decodes")
            .expect("whole");
        assert_eq!((m.method(), m.class()), (REFRESH, MessageClass::Request));
        assert_eq!(m.get_attribute::<Nonce>().map(Nonce::value), Some("n"));
        assert!(
            m.get_attribute::<Lifetime>()
                .is_some_and(|l| l.lifetime().is_zero())
        );
        // It passes the guard as the client's own would.
        assert_eq!(g.on_message(UDP, c, &m), Verdict::Pass);
    }

    #[test]
    fn an_allocation_past_its_bandwidth_drops_data() {
        let g = guard(2, 3);
        let c: SocketAddr = "192.0.2.1:5000".parse().expect("addr");
        assert_eq!(g.on_message(UDP, c, &allocate(&cred(&g))), Verdict::Pass);
        g.on_answer(UDP, c, &success(ALLOCATE));
        // 2500 bytes a second with one second of burst: the third packet at once is over.
        assert_eq!(g.on_channel_data(UDP, c), Verdict::Pass);
        assert_eq!(g.on_channel_data(UDP, c), Verdict::Pass);
        assert_eq!(g.on_channel_data(UDP, c), Verdict::Drop);
        assert_eq!(refusals(&g, "bandwidth"), 1);
    }

    #[test]
    fn challenges_and_new_nonces_are_rate_limited_but_known_nonces_are_not() {
        let g = guard_with(100, 100, 2);
        let c: SocketAddr = "192.0.2.1:5000".parse().expect("addr");
        let bare = Message::new(MessageClass::Request, ALLOCATE, TransactionId::new([3; 12]));
        let answered = (0..10)
            .filter(|_| g.on_message(UDP, c, &bare) != Verdict::Drop)
            .count();
        assert!(
            answered <= 3,
            "{answered} answered, the limit is 2 a second"
        );
        assert!(refusals(&g, "unauthenticated_rate") >= 7);
        // The crate issued nonce "n" (seen in its answer): signed requests carrying it pass.
        let mut issued = Message::new(
            MessageClass::ErrorResponse,
            ALLOCATE,
            TransactionId::new([4; 12]),
        );
        issued.add_attribute(Nonce::new("n".into()).expect("nonce"));
        g.on_answer(UDP, c, &issued);
        let a = cred(&g);
        assert!((0..10).all(|_| g.on_message(UDP, c, &allocate(&a)) == Verdict::Pass));
        assert_eq!(refusals(&g, "new_nonce_rate"), 0);
    }

    #[test]
    fn binding_requests_share_the_unauthenticated_budget_and_indications_are_dropped() {
        let g = guard_with(100, 100, 2);
        let c: SocketAddr = "192.0.2.1:5000".parse().expect("addr");
        let binding = Message::new(MessageClass::Request, BINDING, TransactionId::new([5; 12]));
        let answered = (0..10)
            .filter(|_| g.on_message(UDP, c, &binding) == Verdict::Pass)
            .count();
        assert!(
            (1..=3).contains(&answered),
            "{answered} answered, the limit is 2 a second"
        );
        assert!(refusals(&g, "unauthenticated_rate") >= 7);
        // Indications need no answer: the crate would challenge each, with a nonce it keeps.
        let keepalive = Message::new(
            MessageClass::Indication,
            BINDING,
            TransactionId::new([6; 12]),
        );
        assert!((0..10).all(|_| g.on_message(UDP, c, &keepalive) == Verdict::Drop));
        let answer = Message::new(
            MessageClass::SuccessResponse,
            BINDING,
            TransactionId::new([7; 12]),
        );
        assert_eq!(g.on_message(UDP, c, &answer), Verdict::Drop);
        assert_eq!(refusals(&g, "unexpected_message"), 1);
    }

    #[test]
    fn a_udp_flood_of_unsigned_requests_does_not_starve_tcp_clients() {
        let g = guard_with(100, 100, 2);
        let c: SocketAddr = "192.0.2.1:5000".parse().expect("addr");
        let bare = Message::new(MessageClass::Request, ALLOCATE, TransactionId::new([3; 12]));
        for _ in 0..10 {
            g.on_message(UDP, c, &bare);
        }
        assert!(
            refusals(&g, "unauthenticated_rate") >= 7,
            "the budget is spent"
        );
        assert!(
            (0..10).all(|_| g.on_message(TCP, c, &bare) != Verdict::Drop),
            "a TCP client is still challenged"
        );
    }

    #[test]
    fn a_nonce_is_known_only_on_the_listener_that_issued_it() {
        let g = guard_with(100, 100, 2);
        let c: SocketAddr = "192.0.2.1:5000".parse().expect("addr");
        let mut issued = Message::new(
            MessageClass::ErrorResponse,
            ALLOCATE,
            TransactionId::new([4; 12]),
        );
        issued.add_attribute(Nonce::new("n".into()).expect("nonce"));
        g.on_answer(6, c, &issued);
        // On UDP the crate never issued "n": each such request makes it remember a new nonce.
        let a = cred(&g);
        let refresh = signed(REFRESH, &a, None, Vec::new());
        let passed = (0..10)
            .filter(|_| g.on_message(UDP, c, &refresh) == Verdict::Pass)
            .count();
        assert!(passed <= 3, "{passed} passed, the limit is 2 a second");
        assert!(refusals(&g, "new_nonce_rate") >= 7);
        assert!((0..10).all(|_| g.on_message(6, c, &refresh) == Verdict::Pass));
    }

    #[test]
    fn an_allocation_answers_only_to_the_credential_that_made_it() {
        let g = guard(10, 10);
        let (a, b) = (cred(&g), cred(&g));
        assert_ne!(a.username, b.username);
        let c = SocketAddr::from(([192, 0, 2, 1], 5000));
        assert_eq!(g.on_message(UDP, c, &allocate(&a)), Verdict::Pass);
        g.on_answer(UDP, c, &success(ALLOCATE));
        let mut away = signed(REFRESH, &b, None, Vec::new());
        assert_eq!(g.on_message(UDP, c, &away), Verdict::Refuse(441));
        assert_eq!(refusals(&g, "wrong_credentials"), 1);
        away = signed(REFRESH, &a, None, Vec::new());
        assert_eq!(g.on_message(UDP, c, &away), Verdict::Pass);
    }

    #[test]
    fn an_allocation_past_its_lifetime_leaves_room_for_a_new_one() {
        let g = guard(1, 10);
        let a = cred(&g);
        let (c1, c2) = (
            SocketAddr::from(([192, 0, 2, 1], 5000)),
            SocketAddr::from(([192, 0, 2, 1], 5001)),
        );
        assert_eq!(g.on_message(UDP, c1, &allocate(&a)), Verdict::Pass);
        let mut granted = success(ALLOCATE);
        granted.add_attribute(Lifetime::new(std::time::Duration::from_secs(60)).expect("lifetime"));
        g.on_answer(UDP, c1, &granted);
        assert_eq!(g.on_message(UDP, c2, &allocate(&a)), Verdict::Refuse(486));
        // A Refresh extends it...
        let mut refreshed = success(REFRESH);
        refreshed
            .add_attribute(Lifetime::new(std::time::Duration::from_secs(600)).expect("lifetime"));
        g.on_answer(UDP, c1, &refreshed);
        let now = std::time::Instant::now();
        g.reap_expired_at(now + std::time::Duration::from_secs(120));
        assert!(g.has_allocation(UDP, c1), "refreshed for 600 s");
        // ...until it runs out: the crate ended it without a word; the guard counts it gone.
        g.reap_expired_at(now + std::time::Duration::from_secs(700));
        assert!(!g.has_allocation(UDP, c1));
        assert_eq!(g.allocations(), 0);
        assert_eq!(g.on_message(UDP, c2, &allocate(&a)), Verdict::Pass);
        g.on_answer(UDP, c2, &success(ALLOCATE));
        // The crate's late close notice of the old one does not take off the new one.
        g.on_closed(UDP, c1);
        assert!(g.has_allocation(UDP, c2));
    }
}
