//! Sealed gossip: every chitchat datagram is encrypted and authenticated with a key derived from
//! the cluster secret, and replays are refused. This is the sans-IO core; the chitchat transport
//! over a UDP socket is in [`super::gossip_transport`].
//!
//! chitchat itself authenticates nothing (it checks its cluster id on `Syn` only, so a forged
//! `SynAck` or `Ack` would add a member), so the seal is what keeps outsiders out of gossip.
//!
//! Datagram layout (the header is the AEAD's associated data):
//!
//! | bytes | field |
//! |---|---|
//! | 2 | magic `T` and format version `2` |
//! | 4 | key id: which cluster secret sealed it (a public HKDF output, not the key) |
//! | 8 | sender: random per process start |
//! | 8 | counter: per sender, +1 for every message |
//! | 8 | time: when it was sealed, Unix milliseconds of the sender's clock |
//! | 1 | copies: under how many keys this message was sent (2 while rotating) |
//! | 12 | nonce: random |
//! | n+16 | ChaCha20-Poly1305 ciphertext and tag |
//!
//! A datagram of another format version is `malformed`: a change of layout bumps the version.
//!
//! Replays. A datagram stamped more than [`MAX_SKEW_MS`] away from the receiver's clock is refused
//! (`stale`), whoever receives it and whatever the receiver remembers; within that minute a
//! per-sender window of counters refuses a datagram already accepted (`replay`) or too far
//! behind (`stale`), and a datagram carrying the receiver's own sender id (its own gossip sent
//! back to it) is refused (`reflected`). What is not covered: within the minute, a datagram
//! replayed to a receiver that has since restarted or forgotten the sender, or replayed to
//! another member than it was sent to, is accepted once. It only repeats gossip a member did send
//! less than a minute earlier (chitchat ignores state older than what it holds), but the receiver
//! answers it, to the address the replay came from.
//!
//! [`OVERHEAD`] is 59 bytes, so a chitchat message of more than 65,507 − 59 bytes cannot be sent
//! as one datagram; such a message is dropped and counted (`too_large`). chitchat fills a message
//! up to 65,507 bytes only with a cluster state far larger than ours (a few keys per node).
//!
//! Rotation: while a previous secret is configured, each message is sent twice, once sealed under
//! each key, with the same sender, counter and time. A node holding either key accepts one copy;
//! a node holding both accepts the first and drops its twin silently (same counter, `copies` = 2).
//! So a node with NEW+OLD is heard both by nodes with only OLD and by nodes with only NEW, and no
//! step of a one-node-at-a-time roll splits the cluster.

use std::collections::HashMap;
use std::time::SystemTime;

use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf;

const MAGIC: [u8; 2] = [b'T', 2];
const KEY_ID_LEN: usize = 4;
const HEADER_LEN: usize = 2 + KEY_ID_LEN + 8 + 8 + 8 + 1;
const TAG_LEN: usize = 16;
/// Bytes a sealed datagram adds to the chitchat message it carries.
pub const OVERHEAD: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;
/// The largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;
/// The largest chitchat message that fits in one sealed datagram.
pub const MAX_PLAINTEXT: usize = MAX_DATAGRAM - OVERHEAD;
/// How far (in milliseconds) a datagram's time may be from the receiver's clock, either way:
/// transit plus the clock difference between two nodes (which must keep their clocks set, e.g.
/// with NTP).
pub const MAX_SKEW_MS: u64 = 60_000;

/// Senders whose counters are remembered. Only datagrams that opened create entries, so only a
/// key holder can fill it; past it the longest-silent sender is forgotten (its datagrams of the
/// last [`MAX_SKEW_MS`] could then be replayed once, which only repeats gossip it did send).
pub const MAX_SENDERS: usize = 1024;
/// Counters behind the highest seen that are still accepted once (reordering on the path).
const WINDOW: u64 = 128;

const SALT: &[u8] = b"trackmesh gossip seal v1";

/// Now, in Unix milliseconds (0 for a clock set before 1970, which then refuses everything as
/// stale rather than failing).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One cluster secret's gossip key.
pub struct SealKey {
    id: [u8; KEY_ID_LEN],
    key: LessSafeKey,
}

/// Output length for HKDF expansion into a short id.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl SealKey {
    /// Derives the gossip key and its public id from a cluster secret (HKDF-SHA-256).
    pub fn derive(secret: &str) -> anyhow::Result<SealKey> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(secret.as_bytes());
        let mut id = [0u8; KEY_ID_LEN];
        prk.expand(&[b"key id"], Len(KEY_ID_LEN))
            .and_then(|okm| okm.fill(&mut id))
            .map_err(|_| anyhow::anyhow!("deriving the gossip key id"))?;
        let okm = prk
            .expand(&[b"chacha20-poly1305 key"], &CHACHA20_POLY1305)
            .map_err(|_| anyhow::anyhow!("deriving the gossip key"))?;
        Ok(SealKey {
            id,
            key: LessSafeKey::new(UnboundKey::from(okm)),
        })
    }
}

/// Why a datagram was not accepted. [`Refusal::reason`] is the `reason` label it is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Shorter than a header and tag, or not our magic and format version.
    Malformed,
    /// Sealed under a key id this node does not hold; `twin` when the sender says it sent the
    /// message under another key too (normal while a rotation is under way).
    UnknownKey {
        /// The sender sealed it under another key too, so this refusal is expected.
        twin: bool,
    },
    /// The tag does not verify: forged, tampered with, or another cluster.
    BadSeal,
    /// A counter already accepted from this sender.
    Replay,
    /// A counter too far behind the highest accepted from this sender.
    Stale,
    /// Sealed more than [`MAX_SKEW_MS`] before (or after) this node's clock: an old capture, or a
    /// sender whose clock is off. Counted as `stale` too.
    Untimely,
    /// Carries this node's own sender id: its own gossip sent back to it.
    Reflected,
    /// The twin of a message already accepted under the other key: dropped, not counted.
    Twin,
}

impl Refusal {
    /// The reason to count this refusal under; `None` for a twin, which is not a refusal.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Refusal::Malformed => Some("malformed"),
            Refusal::UnknownKey { .. } => Some("unknown_key"),
            Refusal::BadSeal => Some("bad_seal"),
            Refusal::Replay => Some("replay"),
            Refusal::Stale | Refusal::Untimely => Some("stale"),
            Refusal::Reflected => Some("reflected"),
            Refusal::Twin => None,
        }
    }

    /// Whether this refusal may be logged (rate-limited): not for the expected other copy of a
    /// message sent during a rotation.
    pub fn loggable(self) -> bool {
        !matches!(self, Refusal::Twin | Refusal::UnknownKey { twin: true })
    }
}

/// The message is larger than [`MAX_PLAINTEXT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

struct Window {
    top: u64,
    /// Bit i set: counter `top - i` was accepted.
    seen: u128,
    last_used: u64,
}

/// Sealing and opening state for one node: its keys, its sender id and counter, and the counters
/// seen from each sender.
pub struct Seal {
    /// Keys sealed under, current first; all of them are accepted.
    keys: Vec<SealKey>,
    sender: u64,
    counter: u64,
    senders: HashMap<u64, Window>,
    /// Ticks on every accepted datagram, for forgetting the longest-silent sender.
    clock: u64,
}

impl Seal {
    /// `current` seals and opens; `previous` (during a rotation) also seals and opens.
    pub fn new(current: SealKey, previous: Option<SealKey>, sender: u64) -> Seal {
        let mut keys = vec![current];
        if let Some(p) = previous
            && p.id != keys[0].id
        {
            keys.push(p);
        }
        Seal {
            keys,
            sender,
            counter: 0,
            senders: HashMap::new(),
            clock: 0,
        }
    }

    /// Seals `plain` once per key into `out` (cleared first): one datagram, or two while rotating.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<Vec<u8>>) -> Result<(), TooLarge> {
        self.seal_at(plain, out, unix_ms())
    }

    /// [`Seal::seal`], stamped with `now_ms` (Unix milliseconds) rather than the clock.
    pub fn seal_at(
        &mut self,
        plain: &[u8],
        out: &mut Vec<Vec<u8>>,
        now_ms: u64,
    ) -> Result<(), TooLarge> {
        out.clear();
        if plain.len() > MAX_PLAINTEXT {
            return Err(TooLarge);
        }
        self.counter += 1;
        let copies = self.keys.len() as u8;
        for key in &self.keys {
            let mut d = Vec::with_capacity(plain.len() + OVERHEAD);
            d.extend_from_slice(&MAGIC);
            d.extend_from_slice(&key.id);
            d.extend_from_slice(&self.sender.to_be_bytes());
            d.extend_from_slice(&self.counter.to_be_bytes());
            d.extend_from_slice(&now_ms.to_be_bytes());
            d.push(copies);
            let mut nonce = [0u8; NONCE_LEN];
            // The system RNG failing is not recoverable in any useful way; sealing with a fixed
            // nonce would be worse, so the message is dropped instead (as if lost).
            if aws_lc_rs::rand::fill(&mut nonce).is_err() {
                out.clear();
                return Ok(());
            }
            d.extend_from_slice(&nonce);
            d.extend_from_slice(plain);
            let (header, body) = d.split_at_mut(HEADER_LEN + NONCE_LEN);
            let tag = match key.key.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&header[..HEADER_LEN]),
                body,
            ) {
                Ok(t) => t,
                Err(_) => {
                    out.clear();
                    return Ok(());
                }
            };
            d.extend_from_slice(tag.as_ref());
            out.push(d);
        }
        Ok(())
    }

    /// Opens a datagram in place and returns the chitchat message it carries.
    pub fn open<'a>(&mut self, datagram: &'a mut [u8]) -> Result<&'a [u8], Refusal> {
        self.open_at(datagram, unix_ms())
    }

    /// [`Seal::open`], judged against `now_ms` (Unix milliseconds) rather than the clock.
    pub fn open_at<'a>(
        &mut self,
        datagram: &'a mut [u8],
        now_ms: u64,
    ) -> Result<&'a [u8], Refusal> {
        if datagram.len() < OVERHEAD || datagram[..2] != MAGIC {
            return Err(Refusal::Malformed);
        }
        let (header, rest) = datagram.split_at_mut(HEADER_LEN);
        let (nonce, sealed) = rest.split_at_mut(NONCE_LEN);
        let key_id = &header[2..2 + KEY_ID_LEN];
        let copies = header[HEADER_LEN - 1];
        let Some(key) = self.keys.iter().find(|k| k.id == key_id) else {
            return Err(Refusal::UnknownKey { twin: copies > 1 });
        };
        let mut n = [0u8; NONCE_LEN];
        n.copy_from_slice(nonce);
        let plain = key
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(n),
                Aad::from(&header[..]),
                sealed,
            )
            .map_err(|_| Refusal::BadSeal)?;
        // Judged only once the tag verified: the header is authentic from here on.
        let sender = be_u64(&header[6..14])?;
        let counter = be_u64(&header[14..22])?;
        let sealed_ms = be_u64(&header[22..30])?;
        if sender == self.sender {
            return Err(Refusal::Reflected);
        }
        if sealed_ms.abs_diff(now_ms) > MAX_SKEW_MS {
            return Err(Refusal::Untimely);
        }
        self.accept(sender, counter, copies)?;
        Ok(plain)
    }

    /// Records an authenticated (sender, counter), refusing one seen before or too old.
    fn accept(&mut self, sender: u64, counter: u64, copies: u8) -> Result<(), Refusal> {
        self.clock += 1;
        let clock = self.clock;
        if !self.senders.contains_key(&sender) && self.senders.len() >= MAX_SENDERS {
            let oldest = self
                .senders
                .iter()
                .min_by_key(|(_, w)| w.last_used)
                .map(|(s, _)| *s);
            if let Some(s) = oldest {
                self.senders.remove(&s);
            }
        }
        let w = self.senders.entry(sender).or_insert(Window {
            top: counter,
            seen: 0,
            last_used: clock,
        });
        if counter > w.top || w.seen == 0 {
            let shift = counter.saturating_sub(w.top);
            w.seen = if w.seen == 0 || shift >= WINDOW {
                0
            } else {
                w.seen << shift
            };
            w.seen |= 1;
            w.top = counter;
        } else {
            let back = w.top - counter;
            if back >= WINDOW {
                return Err(Refusal::Stale);
            }
            if w.seen & (1u128 << back) != 0 {
                // The sender said it sent this counter under two keys: the other copy.
                return Err(if copies > 1 {
                    Refusal::Twin
                } else {
                    Refusal::Replay
                });
            }
            w.seen |= 1u128 << back;
        }
        w.last_used = clock;
        Ok(())
    }

    /// Senders currently remembered (tests, bounds).
    pub fn senders(&self) -> usize {
        self.senders.len()
    }
}

/// A big-endian u64 header field (its slice is always 8 bytes long).
fn be_u64(field: &[u8]) -> Result<u64, Refusal> {
    <[u8; 8]>::try_from(field)
        .map(u64::from_be_bytes)
        .map_err(|_| Refusal::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(secret: &str, previous: Option<&str>, sender: u64) -> Seal {
        Seal::new(
            SealKey::derive(secret).expect("key"),
            previous.map(|p| SealKey::derive(p).expect("key")),
            sender,
        )
    }

    fn one(s: &mut Seal, plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        s.seal(plain, &mut out).expect("fits");
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    #[test]
    fn round_trip() {
        let mut a = seal("s3cret", None, 1);
        let mut b = seal("s3cret", None, 2);
        let mut d = one(&mut a, b"hello gossip");
        assert_eq!(d.len(), 12 + OVERHEAD);
        assert!(
            !d.windows(5).any(|w| w == b"hello"),
            "the message is encrypted"
        );
        assert_eq!(b.open(&mut d).expect("opens"), b"hello gossip");
    }

    #[test]
    fn every_tampered_byte_is_refused() {
        let mut a = seal("s3cret", None, 1);
        let d = one(&mut a, b"hello gossip");
        for i in 0..d.len() {
            let mut b = seal("s3cret", None, 2);
            let mut t = d.clone();
            t[i] ^= 0x01;
            assert!(b.open(&mut t).is_err(), "byte {i} flipped");
        }
    }

    #[test]
    fn short_and_foreign_datagrams_are_malformed() {
        let mut b = seal("s3cret", None, 2);
        assert_eq!(b.open(&mut []), Err(Refusal::Malformed));
        assert_eq!(b.open(&mut [0u8; OVERHEAD - 1]), Err(Refusal::Malformed));
        // A plain chitchat datagram (magic 45139 little-endian).
        let mut plain = vec![0x53, 0xb0, 0, 1];
        plain.resize(200, 0);
        assert_eq!(b.open(&mut plain), Err(Refusal::Malformed));
    }

    #[test]
    fn another_secret_is_an_unknown_key() {
        let mut a = seal("other", None, 1);
        let mut b = seal("s3cret", None, 2);
        let mut d = one(&mut a, b"x");
        assert_eq!(b.open(&mut d), Err(Refusal::UnknownKey { twin: false }));
    }

    #[test]
    fn a_forged_key_id_does_not_open() {
        // Knowing the key id (it is public) is not enough: the tag is checked with the key.
        let mut a = seal("other", None, 1);
        let b_key = SealKey::derive("s3cret").expect("key");
        let mut d = one(&mut a, b"x");
        d[2..6].copy_from_slice(&b_key.id);
        let mut b = seal("s3cret", None, 2);
        assert_eq!(b.open(&mut d), Err(Refusal::BadSeal));
    }

    #[test]
    fn a_replay_is_refused() {
        let mut a = seal("s3cret", None, 1);
        let mut b = seal("s3cret", None, 2);
        let d = one(&mut a, b"x");
        assert!(b.open(&mut d.clone()).is_ok());
        assert_eq!(b.open(&mut d.clone()), Err(Refusal::Replay));
    }

    #[test]
    fn reordered_counters_are_accepted_once_and_old_ones_refused() {
        let mut a = seal("s3cret", None, 1);
        let mut b = seal("s3cret", None, 2);
        let all: Vec<Vec<u8>> = (0..WINDOW + 10).map(|_| one(&mut a, b"x")).collect();
        // The newest first, then a recent one late: accepted once.
        assert!(b.open(&mut all[all.len() - 1].clone()).is_ok());
        assert!(b.open(&mut all[all.len() - 3].clone()).is_ok());
        assert_eq!(
            b.open(&mut all[all.len() - 3].clone()),
            Err(Refusal::Replay)
        );
        // One far behind the newest is refused even though it was never seen.
        assert_eq!(b.open(&mut all[0].clone()), Err(Refusal::Stale));
    }

    #[test]
    fn the_previous_key_is_accepted_and_rotation_sends_both() {
        // Mid-rotation node: NEW + OLD. It sends two copies; nodes with only OLD or only NEW each
        // accept one, and a NEW + OLD peer accepts one and drops the twin silently.
        let mut rolling = seal("new", Some("old"), 1);
        let mut out = Vec::new();
        rolling.seal(b"state", &mut out).expect("fits");
        assert_eq!(out.len(), 2);
        let mut old_only = seal("old", None, 2);
        let mut new_only = seal("new", None, 3);
        let mut both = seal("new", Some("old"), 4);
        let opened = |s: &mut Seal, d: &[Vec<u8>]| -> Vec<Result<Vec<u8>, Refusal>> {
            d.iter()
                .map(|d| s.open(&mut d.clone()).map(|p| p.to_vec()))
                .collect()
        };
        let r = opened(&mut old_only, &out);
        assert_eq!(r.iter().filter(|r| r.is_ok()).count(), 1);
        assert!(r.contains(&Err(Refusal::UnknownKey { twin: true })));
        let r = opened(&mut new_only, &out);
        assert_eq!(r.iter().filter(|r| r.is_ok()).count(), 1);
        let r = opened(&mut both, &out);
        assert_eq!(r, vec![Ok(b"state".to_vec()), Err(Refusal::Twin)]);
        assert_eq!(Refusal::Twin.reason(), None);
        // A node with NEW + OLD accepts what an OLD-only node seals.
        let mut old_sender = seal("old", None, 5);
        let mut d = one(&mut old_sender, b"from old");
        assert_eq!(both.open(&mut d).expect("opens"), b"from old");
    }

    #[test]
    fn the_sender_map_is_bounded() {
        let mut b = seal("s3cret", None, 0);
        for sender in 1..=(MAX_SENDERS as u64 + 500) {
            let mut a = seal("s3cret", None, sender);
            let mut d = one(&mut a, b"x");
            assert!(b.open(&mut d).is_ok());
        }
        assert_eq!(b.senders(), MAX_SENDERS);
    }

    /// A fixed "now" for the tests that play with time (2026-12-01).
    const NOW: u64 = 1_796_083_200_000;

    fn one_at(s: &mut Seal, plain: &[u8], now_ms: u64) -> Vec<u8> {
        let mut out = Vec::new();
        s.seal_at(plain, &mut out, now_ms).expect("fits");
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    #[test]
    fn an_old_datagram_is_refused_by_a_restarted_receiver() {
        let mut a = seal("s3cret", None, 1);
        let d = one_at(&mut a, b"old state", NOW);
        let mut b = seal("s3cret", None, 2);
        assert_eq!(b.open_at(&mut d.clone(), NOW).expect("opens"), b"old state");
        // B restarts: a fresh Seal remembers no counter of A. A capture older than the skew
        // allowance is refused all the same, counted as stale.
        let mut restarted = seal("s3cret", None, 3);
        let later = NOW + MAX_SKEW_MS + 1;
        assert_eq!(
            restarted.open_at(&mut d.clone(), later),
            Err(Refusal::Untimely)
        );
        assert_eq!(Refusal::Untimely.reason(), Some("stale"));
        // And it is not remembered as A's newest counter: A's fresh gossip still opens.
        let mut fresh = one_at(&mut a, b"new state", later);
        assert_eq!(
            restarted.open_at(&mut fresh, later).expect("opens"),
            b"new state"
        );
        assert_eq!(restarted.senders(), 1);
    }

    #[test]
    fn an_old_datagram_of_a_forgotten_sender_is_refused() {
        let mut b = seal("s3cret", None, 0);
        let mut a = seal("s3cret", None, 1);
        let captured = one_at(&mut a, b"x", NOW);
        assert!(b.open_at(&mut captured.clone(), NOW).is_ok());
        // MAX_SENDERS other senders push A out of B's map.
        for sender in 2..=(MAX_SENDERS as u64 + 1) {
            let mut other = seal("s3cret", None, sender);
            assert!(b.open_at(&mut one_at(&mut other, b"y", NOW), NOW).is_ok());
        }
        assert_eq!(b.senders(), MAX_SENDERS);
        assert_eq!(
            b.open_at(&mut captured.clone(), NOW + MAX_SKEW_MS + 1),
            Err(Refusal::Untimely)
        );
    }

    #[test]
    fn a_reflected_datagram_is_refused() {
        // The node's own gossip, sent back to it (by an attacker or by a misrouted seed).
        let mut a = seal("s3cret", Some("old"), 9);
        let mut out = Vec::new();
        a.seal(b"mine", &mut out).expect("fits");
        assert_eq!(out.len(), 2);
        for d in &out {
            assert_eq!(a.open(&mut d.clone()), Err(Refusal::Reflected));
        }
        assert_eq!(Refusal::Reflected.reason(), Some("reflected"));
        assert_eq!(a.senders(), 0);
        // Another node with the same secrets takes it.
        let mut b = seal("s3cret", Some("old"), 10);
        assert_eq!(b.open(&mut out[0].clone()).expect("opens"), b"mine");
    }

    #[test]
    fn clock_skew_within_the_allowance_is_accepted() {
        let mut b = seal("s3cret", None, 2);
        // A sender whose clock is ahead, then one whose clock is behind, both by the allowance.
        let mut ahead = seal("s3cret", None, 3);
        let mut d = one_at(&mut ahead, b"ahead", NOW + MAX_SKEW_MS);
        assert_eq!(b.open_at(&mut d, NOW).expect("opens"), b"ahead");
        let mut behind = seal("s3cret", None, 4);
        let mut d = one_at(&mut behind, b"behind", NOW - MAX_SKEW_MS);
        assert_eq!(b.open_at(&mut d, NOW).expect("opens"), b"behind");
        // One millisecond more either way is refused.
        let mut d = one_at(&mut ahead, b"x", NOW + MAX_SKEW_MS + 1);
        assert_eq!(b.open_at(&mut d, NOW), Err(Refusal::Untimely));
        let mut d = one_at(&mut behind, b"x", NOW - MAX_SKEW_MS - 1);
        assert_eq!(b.open_at(&mut d, NOW), Err(Refusal::Untimely));
    }

    #[test]
    fn the_time_is_authenticated() {
        // Re-stamping an old capture with a fresh time breaks the tag.
        let mut a = seal("s3cret", None, 1);
        let mut d = one_at(&mut a, b"x", NOW);
        let later = NOW + 10 * MAX_SKEW_MS;
        d[22..30].copy_from_slice(&later.to_be_bytes());
        let mut b = seal("s3cret", None, 2);
        assert_eq!(b.open_at(&mut d, later), Err(Refusal::BadSeal));
    }

    #[test]
    fn the_previous_format_is_malformed() {
        let mut a = seal("s3cret", None, 1);
        let mut d = one(&mut a, b"x");
        d[1] = 1;
        let mut b = seal("s3cret", None, 2);
        assert_eq!(b.open(&mut d), Err(Refusal::Malformed));
    }

    #[test]
    fn too_large_messages_are_not_sealed() {
        let mut a = seal("s3cret", None, 1);
        let mut out = Vec::new();
        assert!(a.seal(&vec![0u8; MAX_PLAINTEXT], &mut out).is_ok());
        assert!(out[0].len() <= MAX_DATAGRAM);
        assert_eq!(
            a.seal(&vec![0u8; MAX_PLAINTEXT + 1], &mut out),
            Err(TooLarge)
        );
        assert!(out.is_empty());
    }
}
