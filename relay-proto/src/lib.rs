//! trackmesh relay protocol: how nodes of a cluster forward tracks to each other over QUIC.
//!
//! Sans-IO: this crate turns messages into bytes and bytes into messages, with every size
//! bounded; it opens no socket, spawns no task and knows nothing of quinn. The node owns the
//! QUIC connections and calls in here.
//!
//! # Connection
//!
//! A relay connection is a QUIC connection with ALPN [`handshake::ALPN`], TLS certificates from
//! the cluster, and datagrams enabled. The node that wants a remote track (the *subscriber*)
//! dials the node that has it (the *publisher*), or reuses a connection it already has.
//!
//! 1. **Handshake.** The dialer opens the first bidirectional stream and sends a
//!    [`handshake::Hello`] (protocol version, cluster identity, node id and tag); the acceptor
//!    answers [`handshake::Welcome`] or `Refuse` and, after a refusal, closes the connection.
//! 2. **Control.** Once welcomed, that stream goes on as the dialer's control stream: the
//!    subscriber sends [`control::ControlMsg::Subscribe`], `Unsubscribe`, `KeyframeRequest` and
//!    `Nack`; the publisher answers `Subscribed` (with the track's codec parameters) or
//!    `SubscribeFailed`, and later `TrackEnded`. Every subscriber-chosen
//!    subscription id (`sub`) names one track for the life of the subscription. If the acceptor
//!    wants tracks of the dialer as well, it opens one bidirectional stream of its own after
//!    sending `Welcome` and is the subscriber on that one (no second handshake). Each side thus
//!    has at most one control stream it opened, and `sub` ids are scoped to the stream's
//!    subscriber.
//! 3. **Media.** The publisher sends each frame of a subscription as one or more QUIC datagrams
//!    ([`media`]), prefixed with the subscription id; the subscriber puts them back together
//!    with a [`media::Reassembler`]. Datagrams go only towards a subscriber, so each side's
//!    reassembler only sees ids it chose itself.
//! 4. **Repair** (protocol 3). A gap in a subscription's frame numbers makes the subscriber send
//!    `Nack` (the missing frames, and which fragments of each) and hold the frames after the
//!    gap; the publisher sends them again from a cache of the frames it sent in the last second.
//!    What does not come back in time (2 × RTT + 30 ms, at most 200 ms) is a gap the subscriber
//!    answers with a `KeyframeRequest`. Both ends are no-I/O state machines in [`repair`].
//!
//! The link itself is no-I/O state machines in [`link`]: the serving end of one link (its
//! subscription table), the pulling end of all dialed links (links, pending subscriptions,
//! avoidance, re-route), and the media coming in on one dialed link (its sub table, reassembly
//! and its expiry, the `Nack` window). The node's quinn drivers feed them `(now, input)` and
//! carry out the control messages, events and timeouts they return.
//!
//! Handshake and control messages travel in length-prefixed frames ([`codec`]): a 4-byte
//! big-endian length (at most 64 KiB) and a bincode 2 body. Only the `codec` module knows
//! about bincode.
//!
//! # Versioning
//!
//! The handshake carries [`handshake::PROTOCOL_VERSION`]. Its own layout never changes: later
//! versions may only append fields to handshake messages, which older decoders ignore. Anything
//! else (a new control message or field, a new media layout) needs a new protocol version; the
//! acceptor refuses a version it does not speak with the range it does, and the dialer may retry
//! with one of those. Media datagrams carry their own format version in their first byte, so a
//! receiver drops datagrams it does not understand instead of misreading them.
//!
//! # Limits
//!
//! Every decoder here takes bytes from another node and must not panic or allocate without
//! bound: frames are capped at 64 KiB and checked before their body is read, strings are
//! length-checked before they are copied ([`limits`]), and the reassembler is bounded per frame,
//! per subscription and in total. Each decoder has a cargo-fuzz target in `fuzz/`.

#![deny(missing_docs)]

pub mod codec;
pub mod control;
pub mod datachannel;
pub mod handshake;
pub mod limits;
pub mod link;
pub mod media;
pub mod repair;

#[cfg(test)]
pub(crate) mod test_rng {
    //! A tiny deterministic generator for the in-crate randomized tests (xorshift64*).

    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Self {
            Rng(seed | 1)
        }

        pub fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// Uniform-ish in `0..n` (`n > 0`).
        pub fn below(&mut self, n: usize) -> usize {
            (self.next_u64() % n as u64) as usize
        }

        pub fn byte(&mut self) -> u8 {
            self.next_u64() as u8
        }
    }
}
