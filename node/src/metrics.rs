//! Prometheus metrics at `GET /metrics`.
//!
//! The engine keeps plain counters (it stays free of metric libraries); at each scrape they are
//! copied into the registry. Labels only take a few fixed values: never a session, track or
//! node id, so the number of series stays bounded.
//!
//! Dependencies point into this module only: it reads the engine's, the relay's and the
//! cluster's figures, and no other module reads a type of it back (the API renders it).

use std::sync::Mutex;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::cluster::ClusterView;
use crate::cluster::relay::RelayFigures;
use crate::engine::{Gauges, Stats};

/// Everything a scrape reads, gathered first so no lock is held while it is taken.
pub struct Snapshot {
    /// The engine's counters since start.
    pub stats: Stats,
    /// What the engine holds now.
    pub gauges: Gauges,
    /// Session set-up times since the last scrape, for the histogram.
    pub setup_times: Vec<Duration>,
    /// The relay's counters and link count.
    pub relay: RelayFigures,
    /// The membership now, for the member gauges.
    pub view: std::sync::Arc<ClusterView>,
    /// Whether the node is draining (`trackmesh_draining`).
    pub draining: bool,
    /// Cascades by (direction, state), for `trackmesh_cascades`.
    pub cascades: Vec<(&'static str, &'static str, usize)>,
    /// The audio egress publisher's counters, with `--nats`.
    pub egress: Option<EgressSnapshot>,
    /// Each engine worker's figures, in worker order (the `worker` label).
    pub workers: Vec<WorkerSnapshot>,
}

/// One engine worker's figures at one scrape: what shows an imbalance between workers.
#[derive(Debug, Default, Clone, Copy)]
pub struct WorkerSnapshot {
    /// Sessions it holds.
    pub sessions: u64,
    /// Frames it wrote to its subscribers.
    pub frames_forwarded: u64,
    /// RTP packets it sent.
    pub rtp_out: u64,
    /// Frames it handed to other workers over in-process links.
    pub hop_frames: u64,
    /// Frames it dropped because another worker's queue was full.
    pub hop_drops: u64,
}

/// The audio egress publisher's counters at one scrape.
#[derive(Debug, Default, Clone, Copy)]
pub struct EgressSnapshot {
    /// Messages handed to the NATS client.
    pub published: u64,
    /// Dropped while NATS was unreachable.
    pub dropped_disconnected: u64,
    /// Refused by the client or not taken in time.
    pub dropped_publish_failed: u64,
    /// Connected now.
    pub connected: bool,
}

impl EgressSnapshot {
    /// Reads the publisher's figures.
    pub fn of(f: &crate::egress::EgressFigures) -> EgressSnapshot {
        use std::sync::atomic::Ordering::Relaxed;
        EgressSnapshot {
            published: f.published.load(Relaxed),
            dropped_disconnected: f.dropped_disconnected.load(Relaxed),
            dropped_publish_failed: f.dropped_publish_failed.load(Relaxed),
            connected: f.connected.load(Relaxed),
        }
    }
}

/// The node's Prometheus registry and every series it exposes on `/metrics`.
pub struct Metrics {
    registry: Registry,
    /// Serializes scrapes: counters are reset to the engine's totals under it.
    scrape: Mutex<()>,
    sessions: IntGaugeVec,
    published: IntGaugeVec,
    subscribed: IntGaugeVec,
    rtp_packets: IntCounterVec,
    rtp_bytes: IntCounterVec,
    frames_forwarded: IntCounter,
    worker_sessions: IntGaugeVec,
    worker_figures: IntCounterVec,
    datachannel_messages: IntCounterVec,
    dropped: IntCounterVec,
    keyframe_requests: IntCounterVec,
    keyframes_from_cache: IntCounter,
    frames_held: IntCounter,
    simulcast_events: IntCounterVec,
    session_timeouts: IntCounter,
    nacks: IntCounterVec,
    relay_links: IntGauge,
    relay_subscriptions: IntGaugeVec,
    relay_frames: IntCounterVec,
    relay_layer_frames: IntCounterVec,
    relay_bytes: IntCounterVec,
    relay_pull_failures: IntCounterVec,
    relay_repair: IntCounterVec,
    members: IntGaugeVec,
    duplicate_ids: IntGauge,
    /// `trackmesh_http_requests_total{route,method,status}`, counted by the API's middleware.
    pub http_requests: IntCounterVec,
    /// `trackmesh_http_request_duration_seconds{route}`, observed by the API's middleware.
    pub http_duration: HistogramVec,
    setup: Histogram,
    draining: IntGauge,
    cascades: IntGaugeVec,
    egress_messages: IntCounterVec,
    egress_dropped: IntCounterVec,
    egress_connected: IntGauge,
    /// `trackmesh_rejected_total`; the media and relay series are copied in at each scrape.
    rejected: IntCounterVec,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    m: T,
) -> prometheus::Result<T> {
    r.register(Box::new(m.clone()))?;
    Ok(m)
}

impl Metrics {
    /// Adds collectors kept by another part (the TURN server's figures) to `/metrics`.
    pub fn register(
        &self,
        collectors: Vec<Box<dyn prometheus::core::Collector>>,
    ) -> prometheus::Result<()> {
        for c in collectors {
            self.registry.register(c)?;
        }
        Ok(())
    }

    /// `rejects` is the node's refusal counter, kept outside so the gossip thread and the relay
    /// count into it before the API exists.
    pub fn new(rejects: &crate::rejects::Rejects) -> prometheus::Result<Metrics> {
        let r = Registry::new();
        r.register(Box::new(rejects.counter().clone()))?;
        let gv = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels)
        };
        let cv = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let latency = vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        Ok(Metrics {
            sessions: reg(
                &r,
                gv(
                    "trackmesh_sessions",
                    "Sessions on this node by state.",
                    &["state"],
                )?,
            )?,
            published: reg(
                &r,
                gv(
                    "trackmesh_tracks_published",
                    "Tracks published on this node.",
                    &["kind"],
                )?,
            )?,
            subscribed: reg(
                &r,
                gv(
                    "trackmesh_tracks_subscribed",
                    "Local subscriptions on this node.",
                    &["kind"],
                )?,
            )?,
            rtp_packets: reg(
                &r,
                cv(
                    "trackmesh_rtp_packets_total",
                    "RTP/RTCP datagrams on the media socket.",
                    &["direction"],
                )?,
            )?,
            rtp_bytes: reg(
                &r,
                cv(
                    "trackmesh_rtp_bytes_total",
                    "Bytes of all datagrams on the media socket.",
                    &["direction"],
                )?,
            )?,
            worker_sessions: reg(
                &r,
                gv(
                    "trackmesh_worker_sessions",
                    "Sessions each engine worker holds.",
                    &["worker"],
                )?,
            )?,
            worker_figures: reg(
                &r,
                cv(
                    "trackmesh_worker_total",
                    "Per engine worker: frames forwarded to its subscribers (frames_forwarded), RTP packets sent (rtp_out), frames handed to other workers (hop_frames) and dropped on a full queue of another worker (hop_drops).",
                    &["worker", "what"],
                )?,
            )?,
            frames_forwarded: reg(
                &r,
                IntCounter::new(
                    "trackmesh_frames_forwarded_total",
                    "Frames written to local subscribers.",
                )?,
            )?,
            datachannel_messages: reg(
                &r,
                cv(
                    "trackmesh_datachannel_messages_total",
                    "DataChannel messages received from clients (in) and written to them (out).",
                    &["direction"],
                )?,
            )?,
            dropped: reg(
                &r,
                cv(
                    "trackmesh_packets_dropped_total",
                    "Datagrams or frames dropped, by reason.",
                    &["reason"],
                )?,
            )?,
            keyframe_requests: reg(
                &r,
                cv(
                    "trackmesh_keyframe_requests_total",
                    "Keyframe requests (PLI/FIR) sent to publishers and received from subscribers.",
                    &["direction"],
                )?,
            )?,
            session_timeouts: reg(
                &r,
                IntCounter::new(
                    "trackmesh_session_timeouts_total",
                    "Timer rounds of sessions (str0m clock inputs), a main CPU cost besides packets.",
                )?,
            )?,
            simulcast_events: reg(
                &r,
                cv(
                    "trackmesh_simulcast_events_total",
                    "Simulcast: subscribers starting on or moving to a layer (switch), layers starting over at their next keyframe (ssrc_change, time_jump), bandwidth estimates taken (bwe_estimate) and the moves they caused (bwe_down, bwe_up), changes of the layers a relayed track pulls (set_layers).",
                    &["event"],
                )?,
            )?,
            frames_held: reg(
                &r,
                IntCounter::new(
                    "trackmesh_frames_held_total",
                    "Delta frames not sent to a viewer that has no keyframe yet (by design, not a loss).",
                )?,
            )?,
            keyframes_from_cache: reg(
                &r,
                IntCounter::new(
                    "trackmesh_keyframes_from_cache_total",
                    "Joining subscribers (and new relay downstreams) given a publication's cached keyframe.",
                )?,
            )?,
            nacks: reg(
                &r,
                cv(
                    "trackmesh_nacks_total",
                    "NACKs sent to publishers and received from subscribers.",
                    &["direction"],
                )?,
            )?,
            relay_links: reg(
                &r,
                IntGauge::new(
                    "trackmesh_relay_links",
                    "Relay links, dialed by this node or by peers pulling from it.",
                )?,
            )?,
            relay_subscriptions: reg(
                &r,
                gv(
                    "trackmesh_relay_subscriptions",
                    "Tracks pulled from (upstream) and sent to (downstream) other nodes.",
                    &["direction"],
                )?,
            )?,
            relay_frames: reg(
                &r,
                cv(
                    "trackmesh_relay_frames_total",
                    "Relay media frames (one RTP packet each) received from and sent to other nodes.",
                    &["direction"],
                )?,
            )?,
            relay_layer_frames: reg(
                &r,
                cv(
                    "trackmesh_relay_layer_frames_total",
                    "Relay media frames (one RTP packet each) of simulcast layers received from and sent to other nodes, per layer (rid f, h, q; other rids together).",
                    &["direction", "rid"],
                )?,
            )?,
            relay_bytes: reg(
                &r,
                cv(
                    "trackmesh_relay_bytes_total",
                    "Media bytes received from and sent to other nodes.",
                    &["direction"],
                )?,
            )?,
            relay_pull_failures: reg(
                &r,
                cv(
                    "trackmesh_relay_pull_failures_total",
                    "Pulls of tracks from other nodes that failed, by reason.",
                    &["reason"],
                )?,
            )?,
            relay_repair: reg(
                &r,
                cv(
                    "trackmesh_relay_repair_total",
                    "Relay loss repair: nack_sent, repaired, failed (a gap: keyframe request), late, resent, nack_miss (not in the cache), nack_dropped (full queue), test_dropped (test hook).",
                    &["event"],
                )?,
            )?,
            members: reg(
                &r,
                gv(
                    "trackmesh_cluster_members",
                    "Cluster members this node knows, by state and region.",
                    &["state", "region"],
                )?,
            )?,
            http_requests: reg(
                &r,
                cv(
                    "trackmesh_http_requests_total",
                    "HTTP requests by route template, method and status.",
                    &["route", "method", "status"],
                )?,
            )?,
            http_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "trackmesh_http_request_duration_seconds",
                        "HTTP request latency by route template.",
                    )
                    .buckets(latency.clone()),
                    &["route"],
                )?,
            )?,
            setup: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "trackmesh_session_setup_seconds",
                        "From the API call that created a session to media flowing on it.",
                    )
                    .buckets(vec![
                        0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
                    ]),
                )?,
            )?,
            cascades: reg(
                &r,
                gv(
                    "trackmesh_cascades",
                    "Cascades to and from other WHIP/WHEP servers by direction and state.",
                    &["direction", "state"],
                )?,
            )?,
            egress_messages: reg(
                &r,
                cv(
                    "trackmesh_egress_messages_total",
                    "Audio egress messages (Opus payloads of marked sessions) by result: published to NATS or dropped.",
                    &["result"],
                )?,
            )?,
            egress_dropped: reg(
                &r,
                cv(
                    "trackmesh_egress_dropped_total",
                    "Audio egress messages dropped, by reason: queue_full (the publisher was behind), nats_down (not connected), publish_failed (refused or not taken in time).",
                    &["reason"],
                )?,
            )?,
            egress_connected: reg(
                &r,
                IntGauge::new(
                    "trackmesh_egress_connected",
                    "1 while the audio egress is connected to NATS (0 without --nats).",
                )?,
            )?,
            duplicate_ids: reg(
                &r,
                IntGauge::new(
                    "trackmesh_cluster_duplicate_node_ids",
                    "Node ids that more than one live node runs under (should be 0: each node needs its own --node-id).",
                )?,
            )?,
            draining: reg(
                &r,
                IntGauge::new("trackmesh_draining", "1 while this node drains.")?,
            )?,
            registry: r,
            scrape: Mutex::new(()),
            rejected: rejects.counter().clone(),
        })
    }

    /// The text exposition of every metric, after copying `snap` in.
    pub fn render(&self, snap: Snapshot) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let g = &snap.gauges;
        self.sessions
            .with_label_values(&["connecting"])
            .set(g.sessions_connecting as i64);
        self.sessions
            .with_label_values(&["connected"])
            .set(g.sessions_connected as i64);
        self.published
            .with_label_values(&["audio"])
            .set(g.published_audio as i64);
        self.published
            .with_label_values(&["video"])
            .set(g.published_video as i64);
        self.subscribed
            .with_label_values(&["audio"])
            .set(g.subscribed_audio as i64);
        self.subscribed
            .with_label_values(&["video"])
            .set(g.subscribed_video as i64);
        self.relay_subscriptions
            .with_label_values(&["upstream"])
            .set(g.relay_upstreams as i64);
        self.relay_subscriptions
            .with_label_values(&["downstream"])
            .set(g.relay_downstreams as i64);
        self.relay_links.set(snap.relay.links as i64);
        self.draining.set(i64::from(snap.draining));
        for (direction, state, n) in &snap.cascades {
            self.cascades
                .with_label_values(&[*direction, *state])
                .set(*n as i64);
        }

        let s = &snap.stats;
        let set = |c: &IntCounter, v: u64| {
            c.reset();
            c.inc_by(v);
        };
        let e = snap.egress.unwrap_or_default();
        let queue_full = s.egress_dropped;
        set(
            &self.egress_messages.with_label_values(&["published"]),
            e.published,
        );
        set(
            &self.egress_messages.with_label_values(&["dropped"]),
            queue_full
                .saturating_add(e.dropped_disconnected)
                .saturating_add(e.dropped_publish_failed),
        );
        for (reason, n) in [
            ("queue_full", queue_full),
            ("nats_down", e.dropped_disconnected),
            ("publish_failed", e.dropped_publish_failed),
        ] {
            set(&self.egress_dropped.with_label_values(&[reason]), n);
        }
        self.egress_connected.set(i64::from(e.connected));
        set(&self.rtp_packets.with_label_values(&["in"]), s.rtp_in);
        set(&self.rtp_packets.with_label_values(&["out"]), s.rtp_out);
        set(&self.rtp_bytes.with_label_values(&["in"]), s.bytes_in);
        set(&self.rtp_bytes.with_label_values(&["out"]), s.bytes_out);
        set(&self.frames_forwarded, s.frames_forwarded);
        for (i, w) in snap.workers.iter().enumerate() {
            let worker = i.to_string();
            self.worker_sessions
                .with_label_values(&[worker.as_str()])
                .set(w.sessions as i64);
            for (what, v) in [
                ("frames_forwarded", w.frames_forwarded),
                ("rtp_out", w.rtp_out),
                ("hop_frames", w.hop_frames),
                ("hop_drops", w.hop_drops),
            ] {
                set(
                    &self
                        .worker_figures
                        .with_label_values(&[worker.as_str(), what]),
                    v,
                );
            }
        }
        let dc = &s.channels;
        set(
            &self.datachannel_messages.with_label_values(&["in"]),
            dc.messages_in,
        );
        set(
            &self.datachannel_messages.with_label_values(&["out"]),
            dc.messages_out,
        );
        for (reason, n) in [
            ("datachannel_too_big", dc.dropped_too_big),
            ("datachannel_buffer_full", dc.dropped_buffer_full),
            ("datachannel_not_open", dc.dropped_not_open),
            ("datachannel_unacked", dc.dropped_unacked),
            ("datachannel_no_reply", dc.dropped_no_reply),
            (
                "datachannel_session_buffer_full",
                dc.dropped_session_buffer_full,
            ),
            ("datachannel_relay_queue", dc.dropped_relay_queue),
            ("datachannel_relay_stream", snap.relay.dc_stream_drops),
            ("datachannel_relay_in", snap.relay.dc_in_drops),
        ] {
            set(&self.dropped.with_label_values(&[reason]), n);
        }
        set(
            &self.dropped.with_label_values(&["send_buffer"]),
            s.datagrams_dropped,
        );
        set(
            &self.dropped.with_label_values(&["no_route"]),
            s.datagrams_unrouted,
        );
        // The engine and the relay count their refusals themselves (no log lines at all).
        set(
            &self.rejected.with_label_values(&["media", "no_route"]),
            s.datagrams_unrouted,
        );
        set(
            &self.rejected.with_label_values(&["relay", "handshake"]),
            snap.relay.refused,
        );
        set(
            &self.dropped.with_label_values(&["no_codec"]),
            s.frames_no_codec,
        );
        // Simulcast frames refused: rid not declared, or a layer past the third.
        for (reason, n) in [
            ("simulcast_unknown_rid", s.simulcast.unknown_rid),
            ("simulcast_too_many_layers", s.simulcast.too_many_layers),
        ] {
            set(&self.dropped.with_label_values(&[reason]), n);
        }
        set(
            &self.dropped.with_label_values(&["relay_queue"]),
            s.relay_dropped,
        );
        set(
            &self.dropped.with_label_values(&["relay_gap_withheld"]),
            s.relay_gap_withheld,
        );
        set(
            &self.dropped.with_label_values(&["relay_lost"]),
            snap.relay.frames_lost,
        );
        set(
            &self.dropped.with_label_values(&["relay_in_queue"]),
            snap.relay.engine_queue_drops,
        );
        set(
            &self.dropped.with_label_values(&["relay_malformed"]),
            snap.relay.malformed_frames,
        );
        set(
            &self.dropped.with_label_values(&["relay_control_queue"]),
            snap.relay.control_drops,
        );
        set(
            &self.dropped.with_label_values(&["relay_send"]),
            snap.relay.send_drops,
        );
        for (reason, n) in snap.relay.pull_failures {
            set(&self.relay_pull_failures.with_label_values(&[reason]), n);
        }
        let r = snap.relay.repair;
        for (event, n) in [
            ("nack_sent", r.nacks_sent),
            ("repaired", r.frames_repaired),
            ("failed", r.repairs_failed),
            ("late", r.late),
            ("resent", r.frames_resent),
            ("nack_miss", r.nack_misses),
            ("nack_dropped", r.nack_drops),
            ("test_dropped", r.test_dropped),
        ] {
            set(&self.relay_repair.with_label_values(&[event]), n);
        }
        for (event, n) in [
            ("switch", s.simulcast.switches),
            ("ssrc_change", s.simulcast.ssrc_change),
            ("time_jump", s.simulcast.time_jump),
            ("bwe_estimate", s.simulcast.estimates),
            ("bwe_down", s.simulcast.bwe_down),
            ("bwe_up", s.simulcast.bwe_up),
            ("set_layers", s.simulcast.set_layers),
        ] {
            set(&self.simulcast_events.with_label_values(&[event]), n);
        }
        set(&self.frames_held, s.frames_held_for_keyframe);
        set(
            &self.dropped.with_label_values(&["silent_subscriber"]),
            s.frames_to_silent,
        );
        set(&self.session_timeouts, s.session_timeouts);
        set(&self.keyframes_from_cache, s.keyframes_from_cache);
        set(
            &self.keyframe_requests.with_label_values(&["sent"]),
            s.keyframe_requests,
        );
        set(
            &self.keyframe_requests.with_label_values(&["received"]),
            s.keyframe_requests_received,
        );
        set(&self.nacks.with_label_values(&["sent"]), s.nacks_sent);
        set(
            &self.nacks.with_label_values(&["received"]),
            s.nacks_received,
        );
        set(
            &self.relay_frames.with_label_values(&["in"]),
            s.relay_frames_in,
        );
        set(
            &self.relay_frames.with_label_values(&["out"]),
            s.relay_frames_out,
        );
        for (i, rid) in crate::engine::RID_LABELS.iter().enumerate() {
            let (frames_in, frames_out) = (
                s.simulcast.relay_in.get(i).copied().unwrap_or(0),
                s.simulcast.relay_out.get(i).copied().unwrap_or(0),
            );
            set(
                &self.relay_layer_frames.with_label_values(&["in", rid]),
                frames_in,
            );
            set(
                &self.relay_layer_frames.with_label_values(&["out", rid]),
                frames_out,
            );
        }
        set(
            &self.relay_bytes.with_label_values(&["in"]),
            snap.relay.bytes_in,
        );
        set(
            &self.relay_bytes.with_label_values(&["out"]),
            snap.relay.bytes_out,
        );

        self.duplicate_ids.set(snap.view.duplicate_ids.len() as i64);
        self.members.reset();
        for m in &snap.view.members {
            let state = if m.live { "live" } else { "dead" };
            self.members
                .with_label_values(&[state, m.region.as_str()])
                .inc();
        }
        for t in snap.setup_times {
            self.setup.observe(t.as_secs_f64());
        }

        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
