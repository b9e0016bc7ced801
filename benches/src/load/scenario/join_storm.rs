//! Join storm: S subscriber sessions created, connected and receiving media, at most C being
//! set up at once. Reports the wall time until every session received media, set-up times,
//! failures, and node RSS per connected session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::json;
use trackmesh_tests::TestNode;

use super::{
    Common, GroupFigures, JoinPlan, Subscriber, check_sessions, generator_percent, join_many,
    keep_failures, node_log, own_cpu_ticks, reset_windows, sample_all, sleep_bounded,
    start_publisher,
};
use crate::load::media::MediaMix;
use crate::load::procfs::{MachineFigures, MachineSample, NodeFigures, NodeProbe, round2};
use crate::load::report::{Meta, Report};

#[derive(Clone, Debug, Serialize)]
pub struct JoinStormConfig {
    /// `duration`: the window after the storm in which loss and latency are measured.
    pub common: Common,
    pub sessions: usize,
}

impl Default for JoinStormConfig {
    fn default() -> Self {
        JoinStormConfig {
            common: Common {
                media: MediaMix::Audio,
                duration: Duration::from_secs(3),
                ..Common::default()
            },
            sessions: 500,
        }
    }
}

pub async fn run(cfg: &JoinStormConfig) -> anyhow::Result<Report> {
    let limit = cfg.common.limit();
    match tokio::time::timeout(limit, run_inner(cfg, Instant::now() + limit)).await {
        Ok(r) => r,
        Err(_) => bail!("join-storm did not finish within {limit:?}"),
    }
}

async fn run_inner(cfg: &JoinStormConfig, deadline: Instant) -> anyhow::Result<Report> {
    let common = &cfg.common;
    common.check()?;
    check_sessions(cfg.sessions + 1, "--sessions")?;
    if cfg.sessions == 0 {
        bail!("--sessions must be at least 1");
    }
    let args = common.node_args(cfg.sessions + 1);
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut node = TestNode::start_process(&arg_refs).context("starting the node")?;
    let probes = [NodeProbe::new("node", &node)?];
    let api = node.client();
    let publisher = start_publisher(&api, common, "pub").await?;
    // Let the publisher's session settle, then take the "before" sample.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = sample_all(&probes).await?;

    let (c2, r2) = (common.clone(), publisher.remote.clone());
    let plan: JoinPlan = Arc::new(move |i| {
        (
            api.clone(),
            0,
            r2.clone(),
            c2.client_config(format!("s{i}")),
        )
    });
    let storm_start = Instant::now();
    let g0 = own_cpu_ticks();
    let left = deadline.saturating_duration_since(Instant::now());
    let (subs, failures) = join_many(cfg.sessions, common.concurrency, plan, false, left).await;
    let storm_end = Instant::now();
    let after = sample_all(&probes).await?;
    let g1 = own_cpu_ticks();
    // Wall time: from the storm's start until the last session's first frame.
    let last_first_frame = subs
        .iter()
        .filter_map(|s| {
            s.client
                .with_stats(|st| st.rx.values().filter_map(|t| t.first_frame_at).max())
        })
        .max();
    let wall = last_first_frame.map(|t| t.saturating_duration_since(storm_start));
    let timeline = receiving_over_time(&subs, storm_start);
    let connected = subs.len();
    let rss_per_session = (connected > 0)
        .then(|| round2((after[0].rss_kb as f64 - before[0].rss_kb as f64) / connected as f64));
    let storm_node = NodeFigures::between("node (storm)", &before[0], &after[0]);

    // A short window with every session up: loss and latency.
    reset_windows(subs.iter().map(|s| &s.client).chain([&publisher.client]));
    let a = sample_all(&probes).await?;
    let w0 = own_cpu_ticks();
    let m0 = MachineSample::now();
    let t0 = Instant::now();
    sleep_bounded("measuring", common.duration, deadline).await;
    let b = sample_all(&probes).await?;
    let window = t0.elapsed();
    let w1 = own_cpu_ticks();
    let m1 = MachineSample::now();
    let refs: Vec<&Subscriber> = subs.iter().collect();
    let group = GroupFigures::of("storm", &refs);

    let mut extra = serde_json::Map::new();
    extra.insert(
        "storm".into(),
        json!({
            "sessions": cfg.sessions,
            "concurrency": common.concurrency,
            "connected_and_receiving": connected,
            "failed": failures.len(),
            "wall_s_until_all_receive": wall.map(|w| round2(w.as_secs_f64())),
            "storm_s": round2(storm_end.saturating_duration_since(storm_start).as_secs_f64()),
            "generator_cpu_percent_during_storm":
                generator_percent(g0, g1, storm_end.saturating_duration_since(storm_start)),
            "node_rss_before_mb": round2(before[0].rss_kb as f64 / 1024.0),
            "node_rss_after_mb": round2(after[0].rss_kb as f64 / 1024.0),
            "timeline": timeline,
        }),
    );
    let report = Report {
        scenario: "join-storm".into(),
        meta: Meta::collect(),
        params: json!(cfg),
        window_s: round2(window.as_secs_f64()),
        nodes: vec![storm_node, NodeFigures::between("node", &a[0], &b[0])],
        rss_per_session_kb: rss_per_session,
        frames_sent: publisher.client.with_stats(|s| s.tx_window_frames()),
        groups: vec![group],
        failures: failures.len(),
        failure_samples: keep_failures(&failures),
        publisher_errors: super::publisher_errors([&publisher]),
        generator_cpu_percent: generator_percent(w0, w1, window),
        machine: MachineFigures::between(&m0, &m1),
        node_logs: vec![node_log("node", &mut node)],
        extra,
    };
    drop(subs);
    drop(publisher);
    tokio::time::sleep(Duration::from_millis(250)).await;
    drop(node);
    Ok(report)
}

/// Most points of the storm's timeline in a report.
const TIMELINE_POINTS: usize = 100;

/// `[seconds since the storm began, sessions receiving by then]`, one point per session that
/// received its first frame, thinned to at most [`TIMELINE_POINTS`] (the last one always kept):
/// what the join-storm chart plots.
fn receiving_over_time(subs: &[Subscriber], storm_start: Instant) -> Vec<[f64; 2]> {
    let mut at: Vec<f64> = subs
        .iter()
        .filter_map(|s| {
            s.client
                .with_stats(|st| st.rx.values().filter_map(|t| t.first_frame_at).min())
        })
        .map(|t| t.saturating_duration_since(storm_start).as_secs_f64())
        .collect();
    at.sort_by(f64::total_cmp);
    let every = at.len().div_ceil(TIMELINE_POINTS).max(1);
    let last = at.len().saturating_sub(1);
    at.iter()
        .enumerate()
        .filter(|(i, _)| (i + 1) % every == 0 || *i == last)
        .map(|(i, t)| [round2(*t), (i + 1) as f64])
        .collect()
}
