//! trackmesh black-box test support: start a node (in this process, or as a process of the node
//! binary), talk to its Calls API, and push/pull real WebRTC media with a str0m-based client.

pub mod api;
pub mod cluster;
pub mod flows;
pub mod nats;
pub mod netns;
pub mod node;
mod node_log;
pub mod offers;
pub mod peer;
pub mod rooms;
pub mod serial;
pub mod whip;

pub use api::{CallsClient, RawBody, RawResponse, SessionDescription, TrackObject, TracksRequest};
pub use cluster::{Cluster, ClusterConfig, ClusterView, RelayView, poll_until};
pub use flows::{Publisher, Subscriber};
pub use node::{ClusterOpts, TestNode};
pub use peer::{Peer, PeerStats, PushedTrack};
pub use str0m::media::MediaKind;
pub use trackmesh_testkit as testkit;
