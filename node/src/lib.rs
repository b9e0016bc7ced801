//! trackmesh node: a Cloudflare-Calls-compatible WebRTC SFU.
//!
//! - [`Node`]: one running node, started from a [`config::Config`]; the binary and the tests start
//!   nodes through it.
//! - [`engine`]: the sans-IO SFU core (sessions, tracks, fan-out), no sockets, no clock.
//! - [`runtime`], [`sendbatch`]: the thin tokio shell that owns the media socket and drives the
//!   engine; batched sends.
//! - [`api`]: the HTTP API (axum): Calls endpoints, demo page, health.
//! - [`http`]: the HTTP server under it: connection caps, timeouts, JSON errors of its own.
//! - [`cluster`]: sealed gossip membership, hub choice and the QUIC relay between nodes.
//! - [`metrics`], [`rejects`], [`liveness`]: what operators scrape, refusals at the edges, health.
//! - [`rooms`], [`ws`]: rooms and tickets (no-I/O model) and the WebSocket signalling core.
//! - [`cascade`]: streams pulled from and pushed to other WHIP/WHEP servers.
//! - [`egress`]: audio egress to NATS (`--nats`), the publisher off the engine task.
//! - [`turn`]: the embedded TURN server (relays only to this node) and its credentials.
//! - [`calls_error`]: the Calls error model every HTTP answer uses.
//! - [`config`], [`ids`], [`logging`]: configuration, session ids, the log filter.
//! - [`dev_app`]: the development app the binary keeps across restarts.
//! - `testing` (feature `test-world`): the in-memory world the engine tests and benches use.
//!
//! Every public item has a doc comment (`missing_docs`); DESIGN.md maps which way modules depend.

#![warn(missing_docs)]

pub mod api;
pub mod calls_error;
pub mod cascade;
pub mod cluster;
pub mod config;
pub mod dev_app;
pub mod egress;
pub mod engine;
pub mod http;
pub mod ids;
pub mod liveness;
pub mod logging;
pub mod media_tcp;
pub mod metrics;
mod node;
pub mod rejects;
pub mod relay_outbox;
pub mod rooms;
pub mod runtime;
pub mod sendbatch;
#[cfg(any(test, feature = "test-world"))]
pub mod testing;
pub mod turn;
pub mod workers;
pub mod ws;

pub use node::Node;
