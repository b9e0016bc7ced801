//! The packet path's no-I/O core (issue 17 part 1), which `fanout.rs` forwards through. What
//! packet-level forwarding (str0m's RTP mode, `StreamTx::write_rtp`) needs, as plain values in
//! and out:
//!
//! - `keyframe.rs`: where a frame and a keyframe start, from one RTP payload (VP8, VP9, H.264,
//!   AV1);
//! - `rewrite.rs`: one subscriber's outgoing stream: the source it follows, and its sequence
//!   numbers and timestamps, continuous across layer switches, upstream changes and publisher
//!   restarts;
//! - `vp8.rs`: VP8 PictureID and TL0PICIDX continuity, as values for `RtpWrite::vp8_patch`;
//! - `cache.rs`: a per-track (per layer) cache of recent packets with shared payloads, for
//!   repairs and the edge keyframe cache.

pub mod cache;
pub mod keyframe;
pub mod rewrite;
#[cfg(test)]
mod tests_capture;
pub mod vp8;
