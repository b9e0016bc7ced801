//! The relay link as no-I/O state machines, as quinn-proto sits under quinn: the node's QUIC
//! driver feeds them `(now, input)` and carries out what they return.
//!
//! - [`publisher::Publisher`]: the serving end of one link (the node a peer dialed). Its
//!   subscription table (the peer's sub id → this node's downstream id), the bound on
//!   subscriptions per link, the handshake deadline, and a subscription's wait for the track's
//!   first frame.
//! - [`subscriber::Subscriber`]: the pulling end, over all links a node dialed. Its link table
//!   (one link per peer, one dial per peer however many pulls want it), the pending
//!   subscriptions and their sub ids, the upstreams, the "failed recently" avoidance, and the
//!   re-route of upstreams whose link died (pace and window).
//!
//! - [`inbound::Inbound`]: the media coming in on one dialed link. Its sub id → upstream table,
//!   reassembly ([`crate::media::Reassembler`]) and its expiry, and loss repair
//!   ([`crate::repair::Repairer`]: the `Nack` window, the hold and its deadlines).
//!
//! The serving end's cache of sent frames is [`crate::repair::SentCache`].
//!
//! # Style
//!
//! Each machine takes inputs as method calls with the instant they happened at, and queues what
//! to do: `poll_transmit` (control messages for a link), `poll_event` (what the driver must tell
//! the engine or do), `poll_timeout` (when to call `handle_timeout` next). That is quinn-proto's
//! shape rather than one `handle(now, Input) -> Vec<Output>`: the driver drains the queues after
//! any number of inputs, and nothing is allocated per call. Node ids, session ids and track
//! names are opaque here (generic parameters, or the wire's own bytes and strings).

pub mod inbound;
pub mod publisher;
pub mod subscriber;
