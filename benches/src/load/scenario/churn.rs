//! Churn: K subscriber slots, each in a loop for `--duration`: join (new session, pull, first
//! frame on every track), stay 0.5–3 s, leave — by `tracks/close` (even turns) or by simply
//! dropping the session (odd turns, the node notices the silence). Reports joins, failures,
//! first-frame times, loss while joined, and node RSS at the start and the end.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::Rng;
use serde::Serialize;
use serde_json::json;
use str0m::media::MediaKind;
use tokio::task::JoinSet;
use trackmesh_tests::{CallsClient, TestNode};

use super::{
    Common, GroupFigures, check_sessions, generator_percent, join_subscriber, join_times,
    keep_failures, node_log, own_cpu_ticks, sample_all, sleep_bounded, start_publisher,
};
use crate::load::procfs::{MachineFigures, MachineSample, NodeFigures, NodeProbe, round2, round4};
use crate::load::report::{Meta, Report};
use crate::load::stats::{Dist, Histogram};

/// How long a subscriber stays, uniformly at random in this range (ms).
const STAY_MS: std::ops::RangeInclusive<u64> = 500..=3000;
/// Time given to the node after the churn before the final RSS sample.
const SETTLE: Duration = Duration::from_secs(2);

/// How churned subscribers leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Leave {
    /// `tracks/close` on even turns, dropping the session on odd turns.
    Mixed,
    /// Always `tracks/close` (with force), then the client goes away.
    Close,
    /// Always just drop the client (the node notices the silence).
    Drop,
}

impl std::str::FromStr for Leave {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mixed" => Ok(Leave::Mixed),
            "close" => Ok(Leave::Close),
            "drop" => Ok(Leave::Drop),
            other => Err(format!(
                "unknown leave mode {other:?} (mixed, close or drop)"
            )),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ChurnConfig {
    pub common: Common,
    /// Subscriber slots churning at once.
    pub subscribers: usize,
    pub leave: Leave,
}

impl Default for ChurnConfig {
    fn default() -> Self {
        ChurnConfig {
            common: Common::default(),
            subscribers: 50,
            leave: Leave::Mixed,
        }
    }
}

/// What one slot saw.
#[derive(Default)]
struct Slot {
    joins: u64,
    closed: u64,
    dropped: u64,
    failures: Vec<String>,
    setup: Vec<f64>,
    first: Vec<f64>,
    key: Vec<f64>,
    frames: u64,
    keyframes: u64,
    lost: u64,
    lost_audio: u64,
    lost_video: u64,
    reordered: u64,
    broken_video: u64,
    skipped: u64,
    latency: Histogram,
    audio: Histogram,
    video: Histogram,
    ages: Vec<f64>,
}

async fn slot(
    k: usize,
    api: CallsClient,
    common: Common,
    remote: Vec<(String, String)>,
    until: Instant,
    leave: Leave,
) -> Slot {
    let mut out = Slot::default();
    // At most one turn per 0.5 s of churn (the shortest stay), plus a margin.
    let max_turns = until.saturating_duration_since(Instant::now()).as_millis() / 500 + 2;
    for turn in 0..max_turns {
        if Instant::now() >= until {
            break;
        }
        let cfg = common.client_config(format!("churn{k}-{turn}"));
        let sub = match join_subscriber(&api, cfg, &remote, 0, false).await {
            Ok(s) => s,
            Err(e) => {
                if out.failures.len() < 50 {
                    out.failures.push(format!("slot {k} turn {turn}: {e:#}"));
                }
                continue;
            }
        };
        out.joins += 1;
        let stay = Duration::from_millis(rand::rng().random_range(STAY_MS));
        tokio::time::sleep(stay).await;
        sub.client.with_stats(|s| {
            let (a, b, c) = join_times(s, sub.started, sub.pull_started);
            out.setup.extend(a);
            out.first.extend(b);
            out.key.extend(c);
            for t in s.rx.values() {
                out.frames += t.window.frames;
                out.keyframes += t.window.keyframes;
                match t.kind {
                    MediaKind::Audio => out.lost_audio += t.window.lost,
                    MediaKind::Video => out.lost_video += t.window.lost,
                }
                out.lost += t.window.lost;
                out.reordered += t.window.reordered;
                out.broken_video += t.window.broken;
                out.skipped += t.window.skipped_at_join;
                out.latency.merge(&t.window.latency);
                match t.kind {
                    MediaKind::Audio => out.audio.merge(&t.window.latency),
                    MediaKind::Video => out.video.merge(&t.window.latency),
                }
                if let Some(a) = t.first_frame_age_us {
                    out.ages.push(a as f64 / 1000.0);
                }
            }
        });
        let close = match leave {
            Leave::Mixed => turn % 2 == 0,
            Leave::Close => true,
            Leave::Drop => false,
        };
        if close {
            match crate::load::client::close(&sub.client, &api, &sub.session_id, &sub.mids()).await
            {
                Ok(()) => out.closed += 1,
                Err(e) => out
                    .failures
                    .push(format!("slot {k} turn {turn}: close: {e:#}")),
            }
        } else {
            out.dropped += 1;
        }
        drop(sub);
    }
    out
}

pub async fn run(cfg: &ChurnConfig) -> anyhow::Result<Report> {
    let limit = cfg.common.limit();
    match tokio::time::timeout(limit, run_inner(cfg, Instant::now() + limit)).await {
        Ok(r) => r,
        Err(_) => bail!("churn did not finish within {limit:?}"),
    }
}

async fn run_inner(cfg: &ChurnConfig, deadline: Instant) -> anyhow::Result<Report> {
    let common = &cfg.common;
    common.check()?;
    if cfg.subscribers == 0 {
        bail!("--subscribers must be at least 1");
    }
    check_sessions(cfg.subscribers + 1, "--subscribers")?;
    // Every turn creates a session; those left by dropping linger until the node expires them.
    let turns = cfg.subscribers * (common.duration.as_secs() as usize * 2 + 2);
    let args = common.node_args(turns);
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut node = TestNode::start_process(&arg_refs).context("starting the node")?;
    let probes = [NodeProbe::new("node", &node)?];
    let api = node.client();
    let publisher = start_publisher(&api, common, "pub").await?;
    publisher.client.reset_window();
    let start = sample_all(&probes).await?;
    let g0 = own_cpu_ticks();
    let m0 = MachineSample::now();
    let t0 = Instant::now();
    let until = (t0 + common.duration).min(deadline);
    let mut set = JoinSet::new();
    for k in 0..cfg.subscribers {
        set.spawn(slot(
            k,
            api.clone(),
            common.clone(),
            publisher.remote.clone(),
            until,
            cfg.leave,
        ));
    }
    let mut all = Slot::default();
    let mut failures = Vec::new();
    for _ in 0..cfg.subscribers {
        match tokio::time::timeout_at(deadline.into(), set.join_next()).await {
            Ok(Some(Ok(s))) => {
                all.joins += s.joins;
                all.closed += s.closed;
                all.dropped += s.dropped;
                failures.extend(s.failures);
                all.setup.extend(s.setup);
                all.first.extend(s.first);
                all.key.extend(s.key);
                all.frames += s.frames;
                all.keyframes += s.keyframes;
                all.lost_audio += s.lost_audio;
                all.lost_video += s.lost_video;
                all.lost += s.lost;
                all.reordered += s.reordered;
                all.broken_video += s.broken_video;
                all.skipped += s.skipped;
                all.latency.merge(&s.latency);
                all.audio.merge(&s.audio);
                all.video.merge(&s.video);
                all.ages.extend(s.ages);
            }
            Ok(Some(Err(e))) => failures.push(format!("slot task: {e}")),
            Ok(None) => break,
            Err(_) => {
                failures.push("churn slots still running at the deadline".into());
                set.abort_all();
                break;
            }
        }
    }
    let end = sample_all(&probes).await?;
    let window = t0.elapsed();
    let g1 = own_cpu_ticks();
    let m1 = MachineSample::now();
    sleep_bounded("settling", SETTLE, deadline).await;
    let settled = sample_all(&probes).await?;

    let denom = all.frames + all.lost;
    let group = GroupFigures {
        name: "churned subscribers (while joined)".into(),
        subscribers: all.joins as usize,
        receiving: all.joins as usize,
        frames_received: all.frames,
        keyframes_received: all.keyframes,
        frames_lost: all.lost,
        frames_lost_audio: all.lost_audio,
        frames_lost_video: all.lost_video,
        loss_percent: if denom == 0 {
            0.0
        } else {
            round4(100.0 * all.lost as f64 / denom as f64)
        },
        frames_reordered: all.reordered,
        frames_broken_video: all.broken_video,
        frames_skipped_at_join: all.skipped,
        latency: all.latency.dist(),
        latency_audio: all.audio.dist(),
        latency_video: all.video.dist(),
        first_frame_age: Dist::of_ms(&all.ages),
        pull_to_first_frame: Dist::of_ms(&all.first),
        pull_to_first_keyframe: Dist::of_ms(&all.key),
        session_setup: Dist::of_ms(&all.setup),
        ..Default::default()
    };
    let mut extra = serde_json::Map::new();
    extra.insert(
        "churn".into(),
        json!({
            "slots": cfg.subscribers,
            "joins": all.joins,
            "joins_per_s": round2(all.joins as f64 / window.as_secs_f64().max(1e-6)),
            "left_by_tracks_close": all.closed,
            "left_by_dropping": all.dropped,
            "lost_audio_frames": all.lost_audio,
            "lost_video_frames": all.lost_video,
            "broken_video_frames": all.broken_video,
            "failures": failures.len(),
            "node_rss_start_mb": round2(start[0].rss_kb as f64 / 1024.0),
            "node_rss_end_mb": round2(end[0].rss_kb as f64 / 1024.0),
            "node_rss_settled_mb": round2(settled[0].rss_kb as f64 / 1024.0),
            "node_sessions_end": end[0].sessions(),
            "node_sessions_settled": settled[0].sessions(),
        }),
    );
    let report = Report {
        scenario: "churn".into(),
        meta: Meta::collect(),
        params: json!(cfg),
        window_s: round2(window.as_secs_f64()),
        nodes: vec![NodeFigures::between("node", &start[0], &end[0])],
        rss_per_session_kb: None,
        frames_sent: publisher.client.with_stats(|s| s.tx_window_frames()),
        groups: vec![group],
        failures: failures.len(),
        failure_samples: keep_failures(&failures),
        publisher_errors: super::publisher_errors([&publisher]),
        generator_cpu_percent: generator_percent(g0, g1, window),
        machine: MachineFigures::between(&m0, &m1),
        node_logs: vec![node_log("node", &mut node)],
        extra,
    };
    drop(publisher);
    tokio::time::sleep(Duration::from_millis(250)).await;
    drop(node);
    Ok(report)
}
