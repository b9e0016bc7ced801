//! Fan-out on one node: P publishers, N subscribers spread over the publishers' tracks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::json;
use trackmesh_tests::TestNode;

use super::{
    Common, GroupFigures, JoinPlan, Publisher, Subscriber, check_sessions, generator_percent,
    join_many, keep_failures, node_log, own_cpu_ticks, reset_windows, sample_all, sleep_bounded,
    start_publisher,
};
use crate::load::procfs::{
    MachineFigures, MachineSample, NodeFigures, NodeProbe, NodeSample, round2,
};
use crate::load::report::{Meta, Report};

#[derive(Clone, Debug, Serialize)]
pub struct FanoutConfig {
    pub common: Common,
    pub publishers: usize,
    pub subscribers: usize,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig {
            common: Common::default(),
            publishers: 1,
            subscribers: 100,
        }
    }
}

/// A node with publishers and subscribers set up and receiving.
pub struct Setup {
    pub node: TestNode,
    pub probe: NodeProbe,
    pub publishers: Vec<Publisher>,
    pub subscribers: Vec<Subscriber>,
    pub failures: Vec<String>,
    /// Before any session.
    pub before: NodeSample,
    /// After every session was set up.
    pub after_setup: NodeSample,
}

impl Setup {
    pub fn rss_per_session_kb(&self) -> Option<f64> {
        let n = self.publishers.len() + self.subscribers.len();
        (n > 0).then(|| {
            round2((self.after_setup.rss_kb as f64 - self.before.rss_kb as f64) / n as f64)
        })
    }

    /// Node RSS growth per session from before any session until `at`.
    pub fn rss_per_session_kb_at(&self, at: &NodeSample) -> Option<f64> {
        let n = self.publishers.len() + self.subscribers.len();
        (n > 0).then(|| round2((at.rss_kb as f64 - self.before.rss_kb as f64) / n as f64))
    }

    pub fn frames_sent(&self) -> u64 {
        self.publishers
            .iter()
            .map(|p| p.client.with_stats(|s| s.tx_window_frames()))
            .sum()
    }

    pub fn reset_windows(&self) {
        reset_windows(
            self.publishers
                .iter()
                .map(|p| &p.client)
                .chain(self.subscribers.iter().map(|s| &s.client)),
        );
    }
}

/// Start a node, the publishers, then the subscribers (bounded concurrency); subscriber `i`
/// pulls every track of publisher `i % P`.
pub async fn setup(
    common: &Common,
    publishers: usize,
    subscribers: usize,
    deadline: Instant,
) -> anyhow::Result<Setup> {
    common.check()?;
    if publishers == 0 {
        bail!("--publishers must be at least 1");
    }
    check_sessions(publishers + subscribers, "publishers + subscribers")?;
    let args = common.node_args(publishers + subscribers);
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = TestNode::start_process(&arg_refs).context("starting the node")?;
    let probe = NodeProbe::new("node", &node)?;
    let api = node.client();
    let before = probe.sample().await?;
    let mut pubs = Vec::with_capacity(publishers);
    for i in 0..publishers {
        pubs.push(start_publisher(&api, common, &format!("p{i}")).await?);
    }
    let remotes: Vec<Vec<(String, String)>> = pubs.iter().map(|p| p.remote.clone()).collect();
    let c2 = common.clone();
    let plan: JoinPlan = Arc::new(move |i| {
        (
            api.clone(),
            0,
            remotes[i % remotes.len()].clone(),
            c2.client_config(format!("s{i}")),
        )
    });
    let left = deadline.saturating_duration_since(Instant::now());
    let (subs, failures) = join_many(subscribers, common.concurrency, plan, false, left).await;
    let after_setup = probe.sample().await?;
    Ok(Setup {
        node,
        probe,
        publishers: pubs,
        subscribers: subs,
        failures,
        before,
        after_setup,
    })
}

pub async fn run(cfg: &FanoutConfig) -> anyhow::Result<Report> {
    let limit = cfg.common.limit();
    match tokio::time::timeout(limit, run_inner(cfg, Instant::now() + limit)).await {
        Ok(r) => r,
        Err(_) => bail!("fanout did not finish within {limit:?}"),
    }
}

async fn run_inner(cfg: &FanoutConfig, deadline: Instant) -> anyhow::Result<Report> {
    let mut s = setup(&cfg.common, cfg.publishers, cfg.subscribers, deadline).await?;
    sleep_bounded("warm-up", cfg.common.warmup, deadline).await;
    s.reset_windows();
    let probes = [s.probe.clone()];
    let a = sample_all(&probes).await?;
    let g0 = own_cpu_ticks();
    let m0 = MachineSample::now();
    let t0 = Instant::now();
    sleep_bounded("measuring", cfg.common.duration, deadline).await;
    let b = sample_all(&probes).await?;
    let window = t0.elapsed();
    let g1 = own_cpu_ticks();
    let m1 = MachineSample::now();
    let subs: Vec<&Subscriber> = s.subscribers.iter().collect();
    let group = GroupFigures::of("subscribers", &subs);
    let report = Report {
        scenario: "fanout".into(),
        meta: Meta::collect(),
        params: json!(cfg),
        window_s: round2(window.as_secs_f64()),
        nodes: vec![NodeFigures::between("node", &a[0], &b[0])],
        rss_per_session_kb: s.rss_per_session_kb(),
        frames_sent: s.frames_sent(),
        groups: vec![group],
        failures: s.failures.len(),
        failure_samples: keep_failures(&s.failures),
        publisher_errors: super::publisher_errors(s.publishers.iter()),
        generator_cpu_percent: generator_percent(g0, g1, window),
        machine: MachineFigures::between(&m0, &m1),
        node_logs: vec![node_log("node", &mut s.node)],
        extra: [(
            "rss_per_session_kb_at_window_end".to_string(),
            json!(s.rss_per_session_kb_at(&b[0])),
        )]
        .into_iter()
        .collect(),
    };
    teardown(s).await;
    Ok(report)
}

/// Drop the clients (they disconnect), give them a moment, then the node is killed on drop.
pub async fn teardown(s: Setup) {
    let Setup {
        node,
        publishers,
        subscribers,
        ..
    } = s;
    drop(subscribers);
    drop(publishers);
    tokio::time::sleep(Duration::from_millis(250)).await;
    drop(node);
}
