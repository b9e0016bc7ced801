//! `trackmesh-load`: real WebRTC clients (str0m: ICE, DTLS, SRTP, RTCP) in one process that
//! drive `trackmesh` nodes through the public API and measure forwarding throughput, node CPU
//! and memory, loss, one-way latency and join times.
//!
//! - [`client`]: a tokio task per client (one UDP socket, one `Rtc`), scaling to hundreds;
//! - [`media`]: synthetic Opus/VP8 frames carrying their send time and a frame sequence number;
//! - [`procfs`]: node CPU and RSS from `/proc`, counters from `/metrics`;
//! - [`stats`]: histograms and percentiles;
//! - [`scenario`]: fanout, relay, hub, join-storm, churn, soak;
//! - [`trend`]: is a sampled series (RSS in a soak) flat;
//! - [`report`]: text and JSON.

pub mod client;
pub mod media;
pub mod procfs;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod trend;
