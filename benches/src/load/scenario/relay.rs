//! Relay: nodes A (region r1) and B (region r2); a publisher on A, N subscribers on B (through
//! the relay) and a few on A (local). Reports local vs relayed latency, the relay hop's added
//! latency per frame, and pull → first frame / keyframe on both sides, including isolated
//! probe joins that the node's keyframe-request throttle does not affect.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};
use trackmesh_tests::{CallsClient, Cluster, ClusterConfig};

use super::{
    Common, GroupFigures, JoinPlan, Subscriber, check_sessions, generator_percent, join_many,
    join_subscriber, keep_failures, node_log, own_cpu_ticks, reset_windows, sample_all,
    sleep_bounded, start_publisher,
};
use crate::load::client::RawSample;
use crate::load::procfs::{MachineFigures, MachineSample, NodeFigures, NodeProbe, round2};
use crate::load::report::{Meta, Report};
use crate::load::stats::Dist;

/// Raw samples kept by the two subscribers whose frames are paired.
const RAW_SAMPLES: usize = 200_000;
/// Pause between probe joins: the node sends at most one keyframe request per publication per
/// second, so closer joins would measure that throttle.
const PROBE_PAUSE: Duration = Duration::from_millis(1200);
/// Bound on the wait for the relayed node to release its upstream before a cold probe join.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Serialize)]
pub struct RelayConfig {
    pub common: Common,
    /// Subscribers on B (relayed).
    pub subscribers: usize,
    /// Subscribers on A (local).
    pub local_subscribers: usize,
    /// Isolated joins measured on each side after the window (0: none).
    pub probe_joins: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            common: Common::default(),
            subscribers: 20,
            local_subscribers: 3,
            probe_joins: 5,
        }
    }
}

pub async fn run(cfg: &RelayConfig) -> anyhow::Result<Report> {
    let limit = cfg.common.limit() + PROBE_PAUSE * (cfg.probe_joins as u32 * 3);
    match tokio::time::timeout(limit, run_inner(cfg, Instant::now() + limit)).await {
        Ok(r) => r,
        Err(_) => bail!("relay did not finish within {limit:?}"),
    }
}

/// Relayed − local latency of the same frames (matched by kind and frame sequence number).
pub fn paired_diff(local: &[RawSample], relayed: &[RawSample]) -> (Option<Dist>, Option<Dist>) {
    let l: HashMap<(bool, u64), u64> = local
        .iter()
        .map(|s| ((s.video, s.seq), s.latency_us))
        .collect();
    let (mut audio, mut video) = (Vec::new(), Vec::new());
    for s in relayed {
        if let Some(lat) = l.get(&(s.video, s.seq)) {
            let d = (s.latency_us as f64 - *lat as f64) / 1000.0;
            if s.video {
                video.push(d);
            } else {
                audio.push(d);
            }
        }
    }
    (Dist::of_ms(&audio), Dist::of_ms(&video))
}

/// Differences of two distributions' percentiles (b − a), ms.
pub fn pct_diff(a: &Option<Dist>, b: &Option<Dist>) -> Value {
    match (a, b) {
        (Some(a), Some(b)) => json!({
            "p50_ms": round2(b.p50_ms - a.p50_ms),
            "p99_ms": round2(b.p99_ms - a.p99_ms),
        }),
        _ => Value::Null,
    }
}

/// Isolated joins, `PROBE_PAUSE` apart: each joins, waits for a frame on every track and a
/// keyframe, closes its tracks and leaves. With `cold_on`, waits before each join until that
/// node holds no upstream for the publisher session.
pub async fn probe_joins(
    label: &str,
    api: &CallsClient,
    common: &Common,
    remote: &[(String, String)],
    n: usize,
    cold_on: Option<(&trackmesh_tests::TestNode, &str)>,
) -> (GroupFigures, Vec<String>) {
    let mut subs = Vec::new();
    let mut failures = Vec::new();
    for i in 0..n {
        if let Some((node, session)) = cold_on
            && let Err(e) = wait_released(node, session).await
        {
            failures.push(format!("{label} {i}: {e:#}"));
            continue;
        }
        let cfg = common.client_config(format!("{label}-{i}"));
        match join_subscriber(api, cfg, remote, 0, true).await {
            Ok(s) => {
                if let Err(e) =
                    crate::load::client::close(&s.client, api, &s.session_id, &s.mids()).await
                {
                    failures.push(format!("{label} {i}: close: {e:#}"));
                }
                subs.push(s);
            }
            Err(e) => failures.push(format!("{label} {i}: {e:#}")),
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
    let refs: Vec<&Subscriber> = subs.iter().collect();
    let mut g = GroupFigures::of(label, &refs);
    // The probes left right after their first frames: their windows are not a loss figure.
    g.receiving = subs.len();
    (g, failures)
}

async fn wait_released(node: &trackmesh_tests::TestNode, session: &str) -> anyhow::Result<()> {
    trackmesh_tests::poll_until(
        "the node to release its upstream",
        RELEASE_TIMEOUT,
        Duration::from_millis(50),
        async || {
            let v = node.relay_view().await?;
            let n = v
                .upstream
                .iter()
                .filter(|u| u.session_id == session)
                .count();
            if n > 0 {
                bail!("{n} upstream entries left");
            }
            Ok(())
        },
    )
    .await
    .map(|_| ())
}

async fn run_inner(cfg: &RelayConfig, deadline: Instant) -> anyhow::Result<Report> {
    let common = &cfg.common;
    common.check()?;
    let total = 1 + cfg.subscribers + cfg.local_subscribers + 2 * cfg.probe_joins;
    check_sessions(total, "sessions")?;
    if cfg.subscribers == 0 || cfg.local_subscribers == 0 {
        bail!("relay needs at least one subscriber on each node");
    }
    let mut cluster = Cluster::start_with(
        &[("a", "r1"), ("b", "r2")],
        ClusterConfig {
            extra: common.node_args(total),
            // The load tool measures the node processes (CPU, RSS): real processes.
            process: true,
            ..ClusterConfig::default()
        },
    )
    .await
    .context("starting nodes a (r1) and b (r2)")?;
    let probes = [
        NodeProbe::new("a", cluster.node("a"))?,
        NodeProbe::new("b", cluster.node("b"))?,
    ];
    let (api_a, api_b) = (cluster.client("a"), cluster.client("b"));
    let before = sample_all(&probes).await?;
    let publisher = start_publisher(&api_a, common, "pub").await?;
    let remote = publisher.remote.clone();

    // Subscriber i < local go to a (group 0), the others to b (group 1); the first of each
    // group keeps raw samples for per-frame pairing.
    let local = cfg.local_subscribers;
    let (c2, r2, a2, b2) = (common.clone(), remote.clone(), api_a.clone(), api_b.clone());
    let plan: JoinPlan = Arc::new(move |i| {
        let (api, group, name) = if i < local {
            (a2.clone(), 0, format!("local{i}"))
        } else {
            (b2.clone(), 1, format!("relayed{}", i - local))
        };
        let mut cc = c2.client_config(name);
        if i == 0 || i == local {
            cc.raw_samples = RAW_SAMPLES;
        }
        (api, group, r2.clone(), cc)
    });
    let left = deadline.saturating_duration_since(Instant::now());
    let n = local + cfg.subscribers;
    let (mut subs, mut failures) = join_many(n, common.concurrency, plan, false, left).await;
    let after_setup = sample_all(&probes).await?;
    subs.sort_by_key(|s| s.group);

    sleep_bounded("warm-up", common.warmup, deadline).await;
    reset_windows(subs.iter().map(|s| &s.client).chain([&publisher.client]));
    let a = sample_all(&probes).await?;
    let g0 = own_cpu_ticks();
    let m0 = MachineSample::now();
    let t0 = Instant::now();
    sleep_bounded("measuring", common.duration, deadline).await;
    let b = sample_all(&probes).await?;
    let window = t0.elapsed();
    let g1 = own_cpu_ticks();
    let m1 = MachineSample::now();

    let local_subs: Vec<&Subscriber> = subs.iter().filter(|s| s.group == 0).collect();
    let relayed_subs: Vec<&Subscriber> = subs.iter().filter(|s| s.group == 1).collect();
    let g_local = GroupFigures::of("local (a)", &local_subs);
    let g_relayed = GroupFigures::of("relayed (b)", &relayed_subs);
    let raw_of = |v: &[&Subscriber]| {
        v.iter()
            .map(|s| s.client.with_stats(|st| st.raw.clone()))
            .find(|r| !r.is_empty())
            .unwrap_or_default()
    };
    let (added_audio, added_video) = paired_diff(&raw_of(&local_subs), &raw_of(&relayed_subs));
    let frames_sent = publisher.client.with_stats(|s| s.tx_window_frames());
    let mut extra = serde_json::Map::new();
    extra.insert("relay_added_per_frame_audio".into(), json!(added_audio));
    extra.insert("relay_added_per_frame_video".into(), json!(added_video));
    extra.insert(
        "relay_added_pct_diff".into(),
        json!({
            "all": pct_diff(&g_local.latency, &g_relayed.latency),
            "audio": pct_diff(&g_local.latency_audio, &g_relayed.latency_audio),
            "video": pct_diff(&g_local.latency_video, &g_relayed.latency_video),
        }),
    );
    let n_sessions = (1 + subs.len()) as f64;
    let rss_growth: f64 = before
        .iter()
        .zip(&after_setup)
        .map(|(x, y)| y.rss_kb as f64 - x.rss_kb as f64)
        .sum();

    let mut groups = vec![g_local, g_relayed];
    if cfg.probe_joins > 0 {
        // Warm: b still pulls the tracks for the long-lived subscribers.
        let (pl, fl) = probe_joins(
            "probe local (a)",
            &api_a,
            common,
            &remote,
            cfg.probe_joins,
            None,
        )
        .await;
        let (pw, fw) = probe_joins(
            "probe relayed warm (b)",
            &api_b,
            common,
            &remote,
            cfg.probe_joins,
            None,
        )
        .await;
        failures.extend(fl);
        failures.extend(fw);
        groups.push(pl);
        groups.push(pw);
        // Cold: every subscriber on b leaves; before each probe b holds no upstream.
        for s in subs.iter().filter(|s| s.group == 1) {
            if let Err(e) =
                crate::load::client::close(&s.client, &api_b, &s.session_id, &s.mids()).await
            {
                failures.push(format!("closing {}: {e:#}", s.client.name()));
            }
        }
        let (pc, fc) = probe_joins(
            "probe relayed cold (b)",
            &api_b,
            common,
            &remote,
            cfg.probe_joins,
            Some((cluster.node("b"), &publisher.session_id)),
        )
        .await;
        failures.extend(fc);
        groups.push(pc);
    }

    let report = Report {
        scenario: "relay".into(),
        meta: Meta::collect(),
        params: json!(cfg),
        window_s: round2(window.as_secs_f64()),
        nodes: vec![
            NodeFigures::between("a", &a[0], &b[0]),
            NodeFigures::between("b", &a[1], &b[1]),
        ],
        rss_per_session_kb: Some(round2(rss_growth / n_sessions)),
        frames_sent,
        groups,
        failures: failures.len(),
        failure_samples: keep_failures(&failures),
        publisher_errors: super::publisher_errors([&publisher]),
        generator_cpu_percent: generator_percent(g0, g1, window),
        machine: MachineFigures::between(&m0, &m1),
        node_logs: vec![
            node_log("a", cluster.node_mut("a")),
            node_log("b", cluster.node_mut("b")),
        ],
        extra,
    };
    drop(subs);
    drop(publisher);
    tokio::time::sleep(Duration::from_millis(250)).await;
    Ok(report)
}
