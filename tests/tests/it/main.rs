//! trackmesh's black-box integration tests, one module per area, in one test binary: one link of
//! the node instead of one per area, and one pool of test threads for all of them.
//! Run one area with `cargo test -p trackmesh-tests --test it cluster::`.

mod auth_hook;
mod cascade;
mod cluster;
mod config;
mod datachannels;
mod errors;
mod faults_netns;
mod https;
mod listing;
mod media;
mod nats_egress;
mod network;
mod ops;
mod relay_repair;
mod rooms;
mod security_api;
mod security_gossip;
mod security_http;
mod simulcast;
mod tokens;
mod transport;
mod turn;
mod whip;
mod whip_cluster;
mod workers;
mod ws;
