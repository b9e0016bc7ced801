//! Counters and gauges the metrics read: plain numbers, so the engine stays free of metric
//! libraries.

use std::time::{Duration, Instant};

use str0m::media::MediaKind;

use super::Engine;
use super::publications::{Sink, Source};
use crate::ids::SessionId;

/// Counters the node exposes; plain numbers so the engine stays free of metric libraries.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Datagrams fed to the engine from the media socket.
    pub datagrams_in: u64,
    /// Datagrams that matched no session (unknown address and no known STUN ufrag).
    pub datagrams_unrouted: u64,
    /// Datagrams handed to the shell to send.
    pub datagrams_out: u64,
    /// Datagrams lost on the way out: transmit queue or socket buffer full.
    pub datagrams_dropped: u64,
    /// Frames received from publishing sessions.
    pub frames_in: u64,
    /// Frames written to subscribing sessions.
    pub frames_forwarded: u64,
    /// Frames (of audio, packets) not sent because the subscriber negotiated no matching codec.
    pub frames_no_codec: u64,
    /// Received RTP packets str0m matched to no receive stream.
    pub rtp_unknown_stream: u64,
    /// Packets a subscriber's rewriter did not forward: of a layer it does not follow,
    /// duplicates, or older than its switch point or reorder window.
    pub packets_not_rewritten: u64,
    /// Packets whose source numbering or clock jumped without a switch (re-based).
    pub packets_resynced: u64,
    /// Keyframe requests sent to publishers (PLI) or up the relay to another node (one passed to
    /// another worker of this node is counted by that worker, once, when it sends it on).
    pub keyframe_requests: u64,
    /// Frames handed to the relay for downstream nodes.
    pub relay_frames_out: u64,
    /// Frames received from upstream nodes over the relay.
    pub relay_frames_in: u64,
    /// Relay frames dropped because the relay queue was full.
    pub relay_dropped: u64,
    /// Relayed video frames withheld after a gap, until the next keyframe.
    pub relay_gap_withheld: u64,
    /// Bytes of datagrams received on the media socket.
    pub bytes_in: u64,
    /// Bytes of datagrams handed to the shell to send.
    pub bytes_out: u64,
    /// Datagrams that are RTP or RTCP (first byte 128..=191, RFC 7983), not STUN or DTLS.
    pub rtp_in: u64,
    /// Sent datagrams that are RTP or RTCP.
    pub rtp_out: u64,
    /// Keyframe requests (PLI/FIR) received from subscribers.
    pub keyframe_requests_received: u64,
    /// NACKs (retransmission requests) sent to publishers, as str0m's ingress stats report them.
    pub nacks_sent: u64,
    /// NACKs received from subscribers, as str0m's egress stats report them.
    pub nacks_received: u64,
    /// Delta frames not sent to a subscriber that had no keyframe yet, or of a simulcast layer
    /// it is moving to (or that started over) before that layer's keyframe.
    pub frames_held_for_keyframe: u64,
    /// Joining subscribers served the publication's cached keyframe.
    pub keyframes_from_cache: u64,
    /// Clock inputs given to sessions whose str0m timeout was due.
    pub session_timeouts: u64,
    /// Frames not sent to subscribers that have been silent for a while (likely gone).
    pub frames_to_silent: u64,
    /// DataChannel messages and their drops.
    pub channels: super::ChannelStats,
    /// Opus payloads of marked sessions queued for the audio egress.
    pub egress_queued: u64,
    /// Egress packets dropped before the publisher got them (queue full).
    pub egress_dropped: u64,
    /// Simulcast: refused frames and layer switches.
    pub simulcast: SimulcastStats,
}

/// Simulcast counters: frames refused (by reason) and layer switches.
#[derive(Debug, Default, Clone)]
pub struct SimulcastStats {
    /// Frames dropped: their rid is not one the publisher declared.
    pub unknown_rid: u64,
    /// Frames dropped: a layer beyond the third.
    pub too_many_layers: u64,
    /// A layer's SSRC changed mid-stream (it starts over at its next keyframe).
    pub ssrc_change: u64,
    /// A layer's media time jumped (it starts over at its next keyframe).
    pub time_jump: u64,
    /// Subscribers that started on a layer or moved to another one.
    pub switches: u64,
    /// Bandwidth estimates taken for subscribers with `priorityOrdering: asciibetical`.
    pub estimates: u64,
    /// Subscribers moved down a layer because their bandwidth estimate fell below its bitrate.
    pub bwe_down: u64,
    /// Subscribers moved back up a layer because their bandwidth estimate recovered.
    pub bwe_up: u64,
    /// Layered frames received from other nodes, per rid ([`RID_LABELS`]).
    pub relay_in: [u64; 4],
    /// Layered frames sent to other nodes, per rid ([`RID_LABELS`]).
    pub relay_out: [u64; 4],
    /// Changes of the layers a relayed publication pulls (`SetLayers` sent upstream).
    pub set_layers: u64,
}

/// The `rid` label values of the per-layer relay counters: Chromium's three rids, and the rest
/// together (a rid comes from a client; a label per rid seen would be unbounded).
pub const RID_LABELS: [&str; 4] = ["f", "h", "q", "other"];

/// The slot of `rid` in the per-layer counters ([`RID_LABELS`]).
pub fn rid_slot(rid: &str) -> usize {
    RID_LABELS
        .iter()
        .take(3)
        .position(|l| *l == rid)
        .unwrap_or(3)
}

/// What the engine holds right now, for gauges.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Gauges {
    /// Sessions not (or no longer) connected: set-up under way or ICE lost.
    pub sessions_connecting: u64,
    /// Sessions with ICE and DTLS up.
    pub sessions_connected: u64,
    /// Audio tracks published here or relayed in.
    pub published_audio: u64,
    /// Video tracks published here or relayed in.
    pub published_video: u64,
    /// Audio tracks sessions here receive.
    pub subscribed_audio: u64,
    /// Video tracks sessions here receive.
    pub subscribed_video: u64,
    /// Relay subscriptions feeding publications from other nodes.
    pub relay_upstreams: u64,
    /// Relay subscriptions carrying publications of this node to others.
    pub relay_downstreams: u64,
}

/// Most session set-up times kept between two metric scrapes.
const MAX_SETUP_SAMPLES: usize = 4096;

impl Stats {
    /// Adds another engine's figures: the node's total over its workers.
    pub fn add(&mut self, other: &Stats) {
        self.datagrams_in += other.datagrams_in;
        self.datagrams_unrouted += other.datagrams_unrouted;
        self.datagrams_out += other.datagrams_out;
        self.datagrams_dropped += other.datagrams_dropped;
        self.frames_in += other.frames_in;
        self.frames_forwarded += other.frames_forwarded;
        self.frames_no_codec += other.frames_no_codec;
        self.rtp_unknown_stream += other.rtp_unknown_stream;
        self.packets_not_rewritten += other.packets_not_rewritten;
        self.packets_resynced += other.packets_resynced;
        self.keyframe_requests += other.keyframe_requests;
        self.relay_frames_out += other.relay_frames_out;
        self.relay_frames_in += other.relay_frames_in;
        self.relay_dropped += other.relay_dropped;
        self.relay_gap_withheld += other.relay_gap_withheld;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.rtp_in += other.rtp_in;
        self.rtp_out += other.rtp_out;
        self.keyframe_requests_received += other.keyframe_requests_received;
        self.nacks_sent += other.nacks_sent;
        self.nacks_received += other.nacks_received;
        self.frames_held_for_keyframe += other.frames_held_for_keyframe;
        self.keyframes_from_cache += other.keyframes_from_cache;
        self.session_timeouts += other.session_timeouts;
        self.frames_to_silent += other.frames_to_silent;
        self.egress_queued += other.egress_queued;
        self.egress_dropped += other.egress_dropped;
        self.channels.add(&other.channels);
        self.simulcast.add(&other.simulcast);
    }
}

impl SimulcastStats {
    /// Adds another engine's figures: the node's total over its workers.
    pub fn add(&mut self, other: &SimulcastStats) {
        // Named one by one, so a new counter cannot be left out of the node's total.
        let SimulcastStats {
            unknown_rid,
            too_many_layers,
            ssrc_change,
            time_jump,
            switches,
            estimates,
            bwe_down,
            bwe_up,
            relay_in,
            relay_out,
            set_layers,
        } = other;
        for (mine, theirs) in self.relay_in.iter_mut().zip(relay_in) {
            *mine += theirs;
        }
        for (mine, theirs) in self.relay_out.iter_mut().zip(relay_out) {
            *mine += theirs;
        }
        self.set_layers += set_layers;
        self.unknown_rid += unknown_rid;
        self.too_many_layers += too_many_layers;
        self.ssrc_change += ssrc_change;
        self.time_jump += time_jump;
        self.switches += switches;
        self.estimates += estimates;
        self.bwe_down += bwe_down;
        self.bwe_up += bwe_up;
    }
}

impl Gauges {
    /// Adds another engine's figures: the node's total over its workers.
    pub fn add(&mut self, other: &Gauges) {
        self.sessions_connecting += other.sessions_connecting;
        self.sessions_connected += other.sessions_connected;
        self.published_audio += other.published_audio;
        self.published_video += other.published_video;
        self.subscribed_audio += other.subscribed_audio;
        self.subscribed_video += other.subscribed_video;
        self.relay_upstreams += other.relay_upstreams;
        self.relay_downstreams += other.relay_downstreams;
    }
}

impl super::ChannelStats {
    /// Adds another engine's figures: the node's total over its workers.
    pub fn add(&mut self, other: &super::ChannelStats) {
        self.messages_in += other.messages_in;
        self.messages_out += other.messages_out;
        self.dropped_too_big += other.dropped_too_big;
        self.dropped_buffer_full += other.dropped_buffer_full;
        self.dropped_session_buffer_full += other.dropped_session_buffer_full;
        self.dropped_not_open += other.dropped_not_open;
        self.dropped_unacked += other.dropped_unacked;
        self.dropped_no_reply += other.dropped_no_reply;
        self.relay_out += other.relay_out;
        self.relay_in += other.relay_in;
        self.dropped_relay_queue += other.dropped_relay_queue;
    }
}

impl Engine {
    /// The counters so far, for the metrics to publish.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Current sessions, tracks and relay subscriptions, for gauges.
    pub fn gauges(&self) -> Gauges {
        let mut g = Gauges::default();
        for s in self.sessions.values() {
            if s.state.is_connected() {
                g.sessions_connected += 1;
            } else {
                g.sessions_connecting += 1;
            }
        }
        for p in self.publications.values() {
            let audio = p.kind == MediaKind::Audio;
            if matches!(p.source, Source::Session(_)) {
                *(if audio {
                    &mut g.published_audio
                } else {
                    &mut g.published_video
                }) += 1;
            }
            let local = p
                .subscribers
                .iter()
                .filter(|s| matches!(s, Sink::Session(..)))
                .count() as u64;
            *(if audio {
                &mut g.subscribed_audio
            } else {
                &mut g.subscribed_video
            }) += local;
        }
        // Other nodes only: links between this node's workers are not relay subscriptions.
        g.relay_upstreams = self.relay_up.keys().filter(|u| !u.is_in_process()).count() as u64;
        g.relay_downstreams = self
            .relay_down
            .keys()
            .filter(|d| !d.is_in_process())
            .count() as u64;
        g
    }

    /// Session set-up times recorded since the last call.
    pub fn take_setup_times(&mut self) -> Vec<Duration> {
        std::mem::take(&mut self.setup_times)
    }

    /// Records a session's set-up time the first time media flows on it.
    pub(crate) fn media_flowing(&mut self, sid: SessionId, now: Instant) {
        if let Some(s) = self.sessions.get_mut(&sid)
            && let Some(state) = s.state.on_media()
        {
            s.state = state;
            if self.setup_times.len() < MAX_SETUP_SAMPLES {
                self.setup_times
                    .push(now.saturating_duration_since(s.created));
            }
        }
    }

    /// The shell could not hand a relay output to the relay tasks (queue full).
    pub fn count_relay_drop(&mut self) {
        self.stats.relay_dropped += 1;
    }

    /// The shell could not send a datagram (socket buffer full).
    pub fn count_send_drop(&mut self) {
        self.stats.datagrams_dropped += 1;
    }
}
