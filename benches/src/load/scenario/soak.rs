//! Soak: fan-out at moderate load for `--duration` (at most an hour), sampling node RSS and CPU
//! every few seconds. Reports the series, RSS growth, the RSS trend (least-squares slope over the
//! run and over its second half, first-half against second-half mean) and loss over the run.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde::Serialize;
use serde_json::json;

use super::fanout::{Setup, setup, teardown};
use super::{
    Common, GroupFigures, Subscriber, generator_percent, keep_failures, node_log, own_cpu_ticks,
    sleep_bounded,
};
use crate::load::procfs::{
    MachineFigures, MachineSample, NodeFigures, NodeSample, clk_tck, round2,
};
use crate::load::report::{Meta, Report};
use crate::load::trend::Trend;

#[derive(Clone, Debug, Serialize)]
pub struct SoakConfig {
    pub common: Common,
    pub publishers: usize,
    pub subscribers: usize,
    #[serde(serialize_with = "super::as_secs")]
    pub sample_every: Duration,
}

impl Default for SoakConfig {
    fn default() -> Self {
        SoakConfig {
            common: Common {
                duration: Duration::from_secs(60),
                ..Common::default()
            },
            publishers: 1,
            subscribers: 50,
            sample_every: Duration::from_secs(5),
        }
    }
}

/// One point of the series.
#[derive(Clone, Debug, Serialize)]
pub struct SoakPoint {
    pub t_s: f64,
    pub rss_mb: f64,
    /// Node CPU since the previous point, % of one core.
    pub cpu_percent: f64,
    pub forwarded_pkts_per_s: f64,
    pub sessions: f64,
}

fn point(t0: Instant, prev: &NodeSample, cur: &NodeSample) -> SoakPoint {
    let dt = cur
        .at
        .saturating_duration_since(prev.at)
        .as_secs_f64()
        .max(1e-6);
    let cpu_s = cur.cpu_ticks.saturating_sub(prev.cpu_ticks) as f64 / clk_tck() as f64;
    SoakPoint {
        t_s: round2(cur.at.saturating_duration_since(t0).as_secs_f64()),
        rss_mb: round2(cur.rss_kb as f64 / 1024.0),
        cpu_percent: round2(100.0 * cpu_s / dt),
        forwarded_pkts_per_s: round2((cur.rtp_out() - prev.rtp_out()).max(0.0) / dt),
        sessions: cur.sessions().values().sum(),
    }
}

pub async fn run(cfg: &SoakConfig) -> anyhow::Result<Report> {
    let limit = cfg.common.limit();
    match tokio::time::timeout(limit, run_inner(cfg, Instant::now() + limit)).await {
        Ok(r) => r,
        Err(_) => bail!("soak did not finish within {limit:?}"),
    }
}

async fn run_inner(cfg: &SoakConfig, deadline: Instant) -> anyhow::Result<Report> {
    let every = cfg.sample_every.max(Duration::from_millis(500));
    let mut s: Setup = setup(&cfg.common, cfg.publishers, cfg.subscribers, deadline).await?;
    sleep_bounded("warm-up", cfg.common.warmup, deadline).await;
    s.reset_windows();
    let first = s.probe.sample().await?;
    let g0 = own_cpu_ticks();
    let m0 = MachineSample::now();
    let t0 = Instant::now();
    let end = (t0 + cfg.common.duration).min(deadline);
    let mut series = Vec::new();
    let mut prev = first.clone();
    let max_points = (cfg.common.duration.as_millis() / every.as_millis()) as usize + 2;
    for _ in 0..max_points {
        let now = Instant::now();
        if now >= end {
            break;
        }
        sleep_bounded("soak", every.min(end - now), deadline).await;
        let cur = s.probe.sample().await?;
        series.push(point(t0, &prev, &cur));
        prev = cur;
    }
    let last = prev;
    let window = t0.elapsed();
    let g1 = own_cpu_ticks();
    let m1 = MachineSample::now();
    let subs: Vec<&Subscriber> = s.subscribers.iter().collect();
    let group = GroupFigures::of("subscribers", &subs);
    let growth_mb = (last.rss_kb as f64 - first.rss_kb as f64) / 1024.0;
    let minutes = window.as_secs_f64() / 60.0;
    // RSS growth over the second half only (the first half may still fill caches and pools).
    let half = series.len() / 2;
    let second_half_growth = match (series.get(half), series.last()) {
        (Some(a), Some(b)) if series.len() >= 4 => Some(round2(b.rss_mb - a.rss_mb)),
        _ => None,
    };
    let rss: Vec<(f64, f64)> = series.iter().map(|p| (p.t_s, p.rss_mb)).collect();
    let mut extra = serde_json::Map::new();
    extra.insert(
        "soak".into(),
        json!({
            "rss_per_session_kb_at_end": s.rss_per_session_kb_at(&last),
            "rss_start_mb": round2(first.rss_kb as f64 / 1024.0),
            "rss_end_mb": round2(last.rss_kb as f64 / 1024.0),
            "rss_growth_mb": round2(growth_mb),
            "rss_growth_mb_per_min": (minutes > 0.0).then(|| round2(growth_mb / minutes)),
            "rss_growth_second_half_mb": second_half_growth,
            "rss_trend_mb": Trend::of(&rss),
            "series": series,
        }),
    );
    let report = Report {
        scenario: "soak".into(),
        meta: Meta::collect(),
        params: json!(cfg),
        window_s: round2(window.as_secs_f64()),
        nodes: vec![NodeFigures::between("node", &first, &last)],
        rss_per_session_kb: s.rss_per_session_kb(),
        frames_sent: s.frames_sent(),
        groups: vec![group],
        failures: s.failures.len(),
        failure_samples: keep_failures(&s.failures),
        publisher_errors: super::publisher_errors(s.publishers.iter()),
        generator_cpu_percent: generator_percent(g0, g1, window),
        machine: MachineFigures::between(&m0, &m1),
        node_logs: vec![node_log("node", &mut s.node)],
        extra,
    };
    teardown(s).await;
    Ok(report)
}
