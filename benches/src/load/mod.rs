//! `trackmesh-load`: real WebRTC clients (str0m: ICE, DTLS, SRTP, RTCP) in one process that
//! drive `trackmesh` nodes through the public API and measure forwarding throughput, node CPU
//! and memory, loss, one-way latency and join times.
//!
//! - [`client`]: the test kit's client as a tokio task per client, scaling to hundreds;
//! - [`cpus`]: `--node-cpus`, the nodes on CPUs of their own;
//! - [`media`]: the test kit's synthetic Opus/VP8 frames (send time and sequence number);
//! - [`procfs`]: node CPU and RSS from `/proc`, counters from `/metrics`;
//! - [`stats`]: the test kit's histograms and percentiles;
//! - [`scenario`]: fanout, relay, hub, join-storm, churn, soak;
//! - [`trend`]: is a sampled series (RSS in a soak) flat;
//! - [`report`]: text and JSON;
//! - [`vs`]: two node binaries compared in alternating runs;
//! - [`stop`]: SIGINT, SIGTERM and SIGHUP stop a run and its nodes;
//! - [`progress`]: the phase of a run, on a terminal.

pub mod client;
pub mod cpus;
pub use trackmesh_testkit::media;
pub mod procfs;
pub mod progress;
pub mod report;
pub mod scenario;
pub mod stop;
pub use trackmesh_testkit::stats;
pub mod trend;
pub mod vs;
