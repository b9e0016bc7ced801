//! Regional hub: node A in region r1, nodes B and C in region r2. A publisher on A, subscribers
//! spread over B and C. One of B and C is the r2 hub of the tracks (it pulls them from A; the
//! other pulls through it). Reports per node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::json;
use trackmesh_tests::{Cluster, ClusterConfig};

use super::{
    Common, GroupFigures, JoinPlan, Subscriber, check_sessions, generator_percent, join_many,
    keep_failures, node_log, own_cpu_ticks, reset_windows, sample_all, sleep_bounded,
    start_publisher,
};
use crate::load::procfs::{MachineFigures, MachineSample, NodeFigures, NodeProbe, round2};
use crate::load::report::{Meta, Report};

const NODES: [(&str, &str); 3] = [("a", "r1"), ("b", "r2"), ("c", "r2")];

#[derive(Clone, Debug, Serialize)]
pub struct HubConfig {
    pub common: Common,
    /// Subscribers, alternately on B and C.
    pub subscribers: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            common: Common::default(),
            subscribers: 20,
        }
    }
}

pub async fn run(cfg: &HubConfig) -> anyhow::Result<Report> {
    let limit = cfg.common.limit();
    match tokio::time::timeout(limit, run_inner(cfg, Instant::now() + limit)).await {
        Ok(r) => r,
        Err(_) => bail!("hub did not finish within {limit:?}"),
    }
}

async fn run_inner(cfg: &HubConfig, deadline: Instant) -> anyhow::Result<Report> {
    let common = &cfg.common;
    common.check()?;
    check_sessions(cfg.subscribers + 1, "sessions")?;
    if cfg.subscribers < 2 {
        bail!("hub needs at least 2 subscribers (one on B, one on C)");
    }
    let mut cluster = Cluster::start_with(
        &NODES,
        ClusterConfig {
            extra: common.node_args(cfg.subscribers + 1),
            // The load tool measures the node processes (CPU, RSS): real processes.
            process: true,
            ..ClusterConfig::default()
        },
    )
    .await
    .context("starting nodes a (r1), b and c (r2)")?;
    let probes = NODES
        .iter()
        .map(|(n, _)| NodeProbe::new(n, cluster.node(n)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let before = sample_all(&probes).await?;
    let publisher = start_publisher(&cluster.client("a"), common, "pub").await?;
    let (api_b, api_c) = (cluster.client("b"), cluster.client("c"));
    let (c2, r2) = (common.clone(), publisher.remote.clone());
    let plan: JoinPlan = Arc::new(move |i| {
        let (api, group, name) = if i % 2 == 0 {
            (api_b.clone(), 1, format!("b{i}"))
        } else {
            (api_c.clone(), 2, format!("c{i}"))
        };
        (api, group, r2.clone(), c2.client_config(name))
    });
    let left = deadline.saturating_duration_since(Instant::now());
    let (subs, failures) = join_many(cfg.subscribers, common.concurrency, plan, false, left).await;
    let after_setup = sample_all(&probes).await?;

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

    // Who pulls from whom, per track (the hub is chosen per track): the r2 hub of a track pulls
    // it from a, the other r2 node pulls it through the hub.
    let mut upstream = serde_json::Map::new();
    let mut hubs = serde_json::Map::new();
    for name in ["b", "c"] {
        match cluster.node(name).relay_view().await {
            Ok(v) => {
                for u in v
                    .upstream
                    .iter()
                    .filter(|u| u.session_id == publisher.session_id)
                {
                    upstream.insert(format!("{name} {}", u.track_name), json!(u.via));
                    if u.via == cluster.id("a") {
                        let entry = hubs
                            .entry(u.track_name.clone())
                            .or_insert_with(|| json!([]));
                        if let Some(a) = entry.as_array_mut() {
                            a.push(json!(name));
                        }
                    }
                }
            }
            Err(e) => {
                upstream.insert(name.into(), json!(format!("error: {e:#}")));
            }
        }
    }
    let groups = [(1, "on b"), (2, "on c")]
        .iter()
        .map(|(g, label)| {
            let v: Vec<&Subscriber> = subs.iter().filter(|s| s.group == *g).collect();
            GroupFigures::of(label, &v)
        })
        .collect();
    let rss_growth: f64 = before
        .iter()
        .zip(&after_setup)
        .map(|(x, y)| y.rss_kb as f64 - x.rss_kb as f64)
        .sum();
    let mut extra = serde_json::Map::new();
    extra.insert("r2_hub_per_track".into(), json!(hubs));
    extra.insert("upstream_via".into(), json!(upstream));
    let report = Report {
        scenario: "hub".into(),
        meta: Meta::collect(),
        params: json!(cfg),
        window_s: round2(window.as_secs_f64()),
        nodes: NODES
            .iter()
            .enumerate()
            .map(|(i, (n, _))| NodeFigures::between(n, &a[i], &b[i]))
            .collect(),
        rss_per_session_kb: Some(round2(rss_growth / (1 + subs.len()) as f64)),
        frames_sent: publisher.client.with_stats(|s| s.tx_window_frames()),
        groups,
        failures: failures.len(),
        failure_samples: keep_failures(&failures),
        publisher_errors: super::publisher_errors([&publisher]),
        generator_cpu_percent: generator_percent(g0, g1, window),
        machine: MachineFigures::between(&m0, &m1),
        node_logs: NODES
            .iter()
            .map(|(n, _)| node_log(n, cluster.node_mut(n)))
            .collect(),
        extra,
    };
    drop(subs);
    drop(publisher);
    tokio::time::sleep(Duration::from_millis(250)).await;
    Ok(report)
}
