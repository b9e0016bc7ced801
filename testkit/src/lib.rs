//! The trackmesh test kit, shared by the integration tests (`trackmesh-tests`) and the load
//! generator (`trackmesh-benches`):
//!
//! - [`client`]: one WebRTC client (str0m, full ICE) as a no-I/O core with three drivers: a
//!   thread per client (tests), a tokio task per client (hundreds per process, load), and the
//!   node's in-memory engine world (`trackmesh_node::testing`, simulated clock, no sockets);
//! - [`media`]: synthetic Opus/VP8 frames, their pacing, send-time stamps and sequence numbers;
//! - [`stats`]: latency histograms and distribution summaries;
//! - [`ports`]: fixed ports for test nodes that no port-0 bind alongside can take.
//!
//! It knows nothing of the node or of the Calls HTTP API: the Calls flows that drive a client
//! live with the API client in `trackmesh-tests`.

pub mod client;
pub mod media;
pub mod ports;
pub mod stats;

pub use client::{Client, ClientConfig, ClientStats};
