//! What the engine and the relay layer say to each other: frames in and out, ends, keyframe
//! requests and refusals. Its own file so that the publications, the fan-out and the engine's
//! relay side can all speak it without depending on one another.

use crate::ids::{DownId, UpId};

/// One RTP packet crossing a relay link (relay protocol 5: one packet per relayed frame); its
/// clock is the publication's codec clock.
#[derive(Debug, Clone)]
pub struct RelayFrame {
    /// The packet's media time in codec clock ticks, so the receiving node keeps its timing.
    pub rtp_time: u64,
    /// The sequence number the origin node received the packet with, extended to 64 bits: the
    /// receiving node rewrites from it, so the origin's loss stays visible to its viewers.
    pub origin_seq: u64,
    /// The RTP marker bit (the packet ends a frame).
    pub marker: bool,
    /// The packet starts a video keyframe: a new subscriber can start decoding here.
    pub keyframe: bool,
    /// The RTP payload, shared rather than copied between subscribers.
    pub data: std::sync::Arc<[u8]>,
    /// The simulcast layer it belongs to: each layer is relayed on its own, frames with their
    /// rid, only those the downstream asked for; the receiving node selects for its viewers.
    pub rid: Option<str0m::media::Rid>,
    /// The video orientation (CVO) the packet carried, written on to the viewers.
    pub orientation: Option<str0m::rtp::VideoOrientation>,
}

/// What the engine asks of the relay layer.
#[derive(Debug, Clone)]
pub enum RelayOut {
    /// Send a frame to a downstream subscription.
    Frame {
        /// The subscription to send on.
        down: DownId,
        /// The frame's number on that subscription: +1 per frame, from 1, counted before any
        /// queue may drop it (a dropped frame leaves a gap the other node sees).
        seq: u32,
        /// The frame.
        frame: RelayFrame,
    },
    /// The publication a downstream subscription carried has ended.
    Ended {
        /// The subscription to end.
        down: DownId,
    },
    /// A local subscriber of a relayed publication wants a keyframe.
    KeyframeRequest {
        /// The upstream subscription to ask the publishing node on.
        up: UpId,
    },
    /// A local subscriber of a relayed simulcast publication wants a keyframe of one layer.
    LayerKeyframeRequest {
        /// The upstream subscription to ask the publishing node on.
        up: UpId,
        /// The layer.
        rid: str0m::media::Rid,
    },
    /// The local sinks of this upstream's publication now need these layers only.
    SetLayers {
        /// The upstream subscription.
        up: UpId,
        /// The layers to pull.
        layers: super::RelayLayers,
    },
    /// The layers a downstream subscription's publication has here, and which flow.
    Layers {
        /// The downstream subscription.
        down: DownId,
        /// Each layer's rid and whether it flows, in ASCII order.
        layers: Vec<(str0m::media::Rid, bool)>,
    },
    /// Nothing subscribes to this upstream any more: release it.
    Unused {
        /// The upstream subscription to close.
        up: UpId,
    },
    /// A DataChannel message for a downstream channel subscription (another node's subscribers).
    ChannelMessage {
        /// The channel subscription.
        down: crate::engine::DcLinkId,
        /// Binary or text.
        binary: bool,
        /// The message.
        data: std::sync::Arc<[u8]>,
    },
    /// The channel a downstream channel subscription carried is gone: end its stream.
    ChannelEnded {
        /// The channel subscription.
        down: crate::engine::DcLinkId,
    },
    /// No local subscriber of this relayed channel is left: close its stream.
    ChannelUnused {
        /// The upstream channel subscription.
        up: crate::engine::DcLinkId,
    },
    /// This node no longer has a `canReply` subscriber of the relayed channel: give the
    /// publisher's node its grant `seq` back.
    ChannelReleaseReply {
        /// The upstream channel subscription.
        up: crate::engine::DcLinkId,
        /// The grant's claim sequence.
        seq: u32,
    },
    /// A `canReply` subscriber's message for a publisher on another node.
    ChannelReply {
        /// The upstream channel subscription it came from.
        up: crate::engine::DcLinkId,
        /// Binary or text.
        binary: bool,
        /// The message.
        data: std::sync::Arc<[u8]>,
    },
}

/// What relay links hand the engine task (the engine's relay inputs).
#[derive(Debug)]
pub enum RelayIn {
    /// A frame of upstream `up`.
    Frame {
        /// The upstream subscription it arrived on.
        up: UpId,
        /// The frame.
        frame: RelayFrame,
    },
    /// Frames of upstream `up` were lost on the way (a gap in the link's frame numbers): what
    /// follows cannot be decoded until the next keyframe.
    Gap {
        /// The upstream subscription that lost frames.
        up: UpId,
    },
    /// A DataChannel message of upstream channel subscription `up`.
    ChannelMessage {
        /// The upstream channel subscription.
        up: crate::engine::DcLinkId,
        /// Binary or text.
        binary: bool,
        /// The message.
        data: Vec<u8>,
    },
    /// A reply from another node's `canReply` subscriber on downstream `down`.
    ChannelReply {
        /// The downstream channel subscription.
        down: crate::engine::DcLinkId,
        /// Binary or text.
        binary: bool,
        /// The message.
        data: Vec<u8>,
    },
}

/// Why a relay subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayRefusal {
    /// No such publication, another app's, or no media (so no codec) yet.
    NotFound,
    /// The track is published on this node: it cannot also be fed by a relay.
    PublishedHere,
}
