//! What the engine and the relay layer say to each other: frames in and out, ends, keyframe
//! requests and refusals. Its own file so that the publications, the fan-out and the engine's
//! relay side can all speak it without depending on one another.

use crate::ids::{DownId, UpId};

/// One frame crossing a relay link; its clock is the publication's codec clock.
#[derive(Debug, Clone)]
pub struct RelayFrame {
    pub rtp_time: u64,
    pub keyframe: bool,
    pub data: std::sync::Arc<[u8]>,
}

/// What the engine asks of the relay layer.
#[derive(Debug, Clone)]
pub enum RelayOut {
    /// Send a frame to a downstream subscription.
    Frame { down: DownId, frame: RelayFrame },
    /// The publication a downstream subscription carried has ended.
    Ended { down: DownId },
    /// A local subscriber of a relayed publication wants a keyframe.
    KeyframeRequest { up: UpId },
    /// Nothing subscribes to this upstream any more: release it.
    Unused { up: UpId },
}

/// What relay links hand the engine task (the engine's relay inputs).
#[derive(Debug)]
pub enum RelayIn {
    /// A frame of upstream `up`.
    Frame { up: UpId, frame: RelayFrame },
}

/// Why a relay subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayRefusal {
    /// No such publication, another app's, or no media (so no codec) yet.
    NotFound,
    /// The track is published on this node: it cannot also be fed by a relay.
    PublishedHere,
}
