//! Simulcast: one publisher sends three layers (rids `f`, `h`, `q` at the video bitrate, a
//! quarter and a sixteenth of it, as Chromium's 720p camera does), N subscribers pull it spread
//! over the layers `--layers` names (`simulcast.preferredRid`), and during the window a few of
//! them move to the next of those layers with `tracks/update` every period. Reports the node's
//! forwarding, the switches asked for and answered, and per layer how many subscribers asked for
//! it and how many receive it (`currentRid` of `GET session`).
//!
//! With `--relayed`, the publisher is on node a (region r1) and the subscribers on node b (r2),
//! so every frame crosses the relay; the report adds what b pulled over it, in kbit/s and in
//! frames per layer: an edge pulls only the layers its viewers use.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::json;
use trackmesh_tests::{
    CallsClient, Cluster, ClusterConfig, SessionDescription, TestNode, TrackObject, TracksRequest,
};

use super::{
    Common, FIRST_MEDIA_TIMEOUT, GroupFigures, Publisher, Subscriber, check_sessions,
    generator_percent, join_bounded, keep_failures, node_log, own_cpu_ticks, reset_windows,
    sample_all, sleep_bounded,
};
use crate::load::client::{Client, Pulled};
use crate::load::procfs::{
    MachineFigures, MachineSample, NodeFigures, NodeProbe, NodeSample, round2,
};
use crate::load::report::{Meta, Report};

/// The layers, best first, and the share of `--video-kbps` each sends.
pub const LAYERS: [(&str, u32); 3] = [("f", 1), ("h", 4), ("q", 16)];
/// Bound on `--switches` per period.
pub const MAX_SWITCHES_PER_PERIOD: usize = 1000;
const TRACK: &str = "cam";
const RELAY_BYTES_IN: &str = "trackmesh_relay_bytes_total{direction=\"in\"}";

#[derive(Clone, Debug, Serialize)]
pub struct SimulcastConfig {
    pub common: Common,
    pub subscribers: usize,
    /// Subscribers moved to another layer every period.
    pub switches: usize,
    #[serde(serialize_with = "super::as_secs")]
    pub switch_every: Duration,
    /// The layers subscribers are spread over and move between, as indices into [`LAYERS`]
    /// (not empty, no repeats).
    pub layers: Vec<usize>,
    /// Publisher on node a, subscribers on node b: the layers cross the relay.
    pub relayed: bool,
}

/// `--layers`: rids of [`LAYERS`], comma-separated, as indices.
pub fn parse_layers(list: &str) -> anyhow::Result<Vec<usize>> {
    let mut out = Vec::new();
    for rid in list.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        let Some(i) = LAYERS.iter().position(|(r, _)| *r == rid) else {
            bail!("--layers: unknown rid {rid:?} (the publisher sends f, h and q)");
        };
        if !out.contains(&i) {
            out.push(i);
        }
    }
    if out.is_empty() {
        bail!("--layers names no layer");
    }
    Ok(out)
}

impl Default for SimulcastConfig {
    fn default() -> Self {
        SimulcastConfig {
            common: Common {
                media: super::MediaMix::Video,
                ..Common::default()
            },
            subscribers: 30,
            switches: 3,
            switch_every: Duration::from_secs(2),
            layers: (0..LAYERS.len()).collect(),
            relayed: false,
        }
    }
}

/// A subscriber and the layer it asked for last: `slot` indexes the scenario's `layers`.
struct Viewer {
    sub: Subscriber,
    slot: usize,
    layer: usize,
}

fn rid_of(layer: usize) -> &'static str {
    LAYERS
        .get(layer % LAYERS.len())
        .map_or("f", |(rid, _)| *rid)
}

fn prefs(layer: usize) -> serde_json::Value {
    json!({ "preferredRid": rid_of(layer) })
}

/// `sessions/new`, a sendonly video m-line with three simulcast layers, push, connect, send.
async fn start_publisher(api: &CallsClient, common: &Common) -> anyhow::Result<Publisher> {
    let client = Client::start(common.client_config("p0".into())).await?;
    let session_id = api
        .sessions_new()
        .await
        .context("publisher: sessions/new")?
        .session_id;
    let rids: Vec<&'static str> = LAYERS.iter().map(|(r, _)| *r).collect();
    let (mid, offer) = client.run(move |c| c.create_simulcast_offer(&rids)).await?;
    let req = TracksRequest {
        session_description: Some(SessionDescription::offer(offer)),
        tracks: Some(vec![TrackObject::local(&mid, TRACK)]),
        auto_discover: None,
    };
    let resp = api
        .tracks_new(&session_id, &req)
        .await
        .context("publisher: push")?;
    if let Some(code) = resp.error_code {
        bail!("push rejected: {code}: {:?}", resp.error_description);
    }
    let answer = resp
        .session_description
        .context("push answer carries no sessionDescription")?;
    client.accept_answer(&answer.sdp).await?;
    client.wait_connected(FIRST_MEDIA_TIMEOUT).await?;
    let kbps = common.video.kbps;
    let layers: Vec<(&'static str, u32)> = LAYERS
        .iter()
        .map(|(rid, div)| (*rid, (kbps / div).max(10)))
        .collect();
    let m = mid.clone();
    client
        .run(move |c| {
            let mid = m.as_str().into();
            c.start_sending_layers(mid, &layers, Instant::now())
        })
        .await?;
    let check = mid.clone();
    client
        .wait_until("first layered frames sent", FIRST_MEDIA_TIMEOUT, move |s| {
            s.tx_frames(&check) >= 15
        })
        .await?;
    Ok(Publisher {
        client,
        remote: vec![(session_id.clone(), TRACK.to_string())],
        session_id,
    })
}

/// A subscriber of the publisher's track on `layer`, receiving.
async fn join(
    api: CallsClient,
    common: Common,
    layers: Vec<usize>,
    publisher: String,
    i: usize,
) -> anyhow::Result<Viewer> {
    let name = format!("s{i}");
    let client = Client::start(common.client_config(name.clone())).await?;
    let started = Instant::now();
    let session_id = api
        .sessions_new()
        .await
        .with_context(|| format!("{name}: sessions/new"))?
        .session_id;
    let pull_started = Instant::now();
    let slot = i % layers.len().max(1);
    let layer = layers.get(slot).copied().unwrap_or(0);
    let item = TrackObject {
        simulcast: Some(prefs(layer)),
        ..TrackObject::remote(&publisher, TRACK)
    };
    let resp = client.pull_items(&api, &session_id, vec![item]).await?;
    let Some(t) = resp.tracks.first() else {
        bail!("{name}: pull answered no track");
    };
    let Some(mid) = t.mid.clone().filter(|_| t.error_code.is_none()) else {
        bail!("{name}: pull: {:?} {:?}", t.error_code, t.error_description);
    };
    client
        .wait_until("the first frame", FIRST_MEDIA_TIMEOUT, |s| {
            s.all_receiving()
        })
        .await?;
    Ok(Viewer {
        sub: Subscriber {
            client,
            session_id,
            pulled: vec![Pulled {
                session_id: publisher,
                track_name: TRACK.into(),
                mid,
            }],
            started,
            pull_started,
            group: 0,
        },
        slot,
        layer,
    })
}

/// `tracks/update` of viewer `v` to its next layer. Ok(true) when the node took it.
async fn switch(api: &CallsClient, layers: &[usize], v: &mut Viewer) -> anyhow::Result<bool> {
    let Some(p) = v.sub.pulled.first() else {
        return Ok(false);
    };
    let slot = (v.slot + 1) % layers.len().max(1);
    let to = layers.get(slot).copied().unwrap_or(0);
    let item = TrackObject {
        mid: Some(p.mid.clone()),
        simulcast: Some(prefs(to)),
        ..TrackObject::remote(&p.session_id, &p.track_name)
    };
    let resp = api
        .tracks_update(&v.sub.session_id, vec![item], None)
        .await?;
    let ok =
        resp.error_code.is_none() && resp.tracks.first().is_some_and(|t| t.error_code.is_none());
    if ok {
        v.slot = slot;
        v.layer = to;
    }
    Ok(ok)
}

/// The layer each viewer receives now, by `GET session` (`currentRid`).
async fn current_layers(api: &CallsClient, viewers: &[Viewer]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for v in viewers {
        let Some(p) = v.sub.pulled.first() else {
            continue;
        };
        let rid = match api.get_session(&v.sub.session_id).await {
            Ok(s) => s
                .track_by_mid(&p.mid)
                .and_then(|t| t.simulcast.as_ref())
                .and_then(|s| s.get("currentRid"))
                .and_then(|r| r.as_str())
                .unwrap_or("none")
                .to_string(),
            Err(_) => "error".to_string(),
        };
        *counts.entry(rid).or_insert(0) += 1;
    }
    counts
}

/// The node, or with `--relayed` the pair: the publisher's (a) and the subscribers' (b).
enum Nodes {
    One(TestNode),
    Pair(Cluster),
}

impl Nodes {
    async fn start(cfg: &SimulcastConfig) -> anyhow::Result<Nodes> {
        let args = cfg.common.node_args(cfg.subscribers + 1);
        if !cfg.relayed {
            let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let node = TestNode::start_process(&arg_refs).context("starting the node")?;
            return Ok(Nodes::One(node));
        }
        let cluster = Cluster::start_with(
            &[("a", "r1"), ("b", "r2")],
            ClusterConfig {
                extra: args,
                // The load tool measures the node processes (CPU, RSS): real processes.
                process: true,
                ..ClusterConfig::default()
            },
        )
        .await
        .context("starting nodes a (r1) and b (r2)")?;
        Ok(Nodes::Pair(cluster))
    }

    fn probes(&self) -> anyhow::Result<Vec<NodeProbe>> {
        Ok(match self {
            Nodes::One(node) => vec![NodeProbe::new("node", node)?],
            Nodes::Pair(c) => vec![
                NodeProbe::new("a", c.node("a"))?,
                NodeProbe::new("b", c.node("b"))?,
            ],
        })
    }

    /// The publisher's node, then the subscribers'.
    fn apis(&self) -> (CallsClient, CallsClient) {
        match self {
            Nodes::One(node) => (node.client(), node.client()),
            Nodes::Pair(c) => (c.client("a"), c.client("b")),
        }
    }

    fn logs(&mut self) -> Vec<crate::load::report::NodeLog> {
        match self {
            Nodes::One(node) => vec![node_log("node", node)],
            Nodes::Pair(c) => vec![
                node_log("a", c.node_mut("a")),
                node_log("b", c.node_mut("b")),
            ],
        }
    }
}

/// What the subscribers' node pulled over the relay in the window: kbit/s, and frames per layer.
fn relay_pulled(a: &NodeSample, b: &NodeSample, window: Duration) -> serde_json::Value {
    let secs = window.as_secs_f64().max(1e-6);
    let kbps = (b.metric(RELAY_BYTES_IN) - a.metric(RELAY_BYTES_IN)).max(0.0) * 8.0 / 1000.0 / secs;
    let frames: BTreeMap<&str, f64> = LAYERS
        .iter()
        .map(|(rid, _)| {
            let key =
                format!("trackmesh_relay_layer_frames_total{{direction=\"in\",rid=\"{rid}\"}}");
            (
                *rid,
                round2((b.metric(&key) - a.metric(&key)).max(0.0) / secs),
            )
        })
        .collect();
    json!({ "kbps": round2(kbps), "layer_frames_per_s": frames })
}

pub async fn run(cfg: &SimulcastConfig) -> anyhow::Result<Report> {
    let limit = cfg.common.limit();
    match tokio::time::timeout(limit, run_inner(cfg, Instant::now() + limit)).await {
        Ok(r) => r,
        Err(_) => bail!("simulcast did not finish within {limit:?}"),
    }
}

async fn run_inner(cfg: &SimulcastConfig, deadline: Instant) -> anyhow::Result<Report> {
    let common = &cfg.common;
    common.check()?;
    check_sessions(cfg.subscribers + 1, "subscribers + publisher")?;
    if cfg.switches > MAX_SWITCHES_PER_PERIOD {
        bail!("--switches must be at most {MAX_SWITCHES_PER_PERIOD}");
    }
    if cfg.switch_every < Duration::from_millis(100) {
        bail!("--switch-every must be at least 0.1 s");
    }
    if cfg.layers.is_empty() || cfg.layers.iter().any(|l| *l >= LAYERS.len()) {
        bail!("--layers must name some of f, h and q");
    }
    let mut nodes = Nodes::start(cfg).await?;
    let probes = nodes.probes()?;
    let (api_pub, api) = nodes.apis();
    let publisher = start_publisher(&api_pub, common).await?;
    let left = deadline.saturating_duration_since(Instant::now());
    let (api2, c2, pub_sid) = (api.clone(), common.clone(), publisher.session_id.clone());
    let layers = cfg.layers.clone();
    let (mut viewers, failures) = join_bounded(cfg.subscribers, common.concurrency, left, |i| {
        join(api2.clone(), c2.clone(), layers.clone(), pub_sid.clone(), i)
    })
    .await;
    sleep_bounded("warm-up", common.warmup, deadline).await;
    reset_windows(std::iter::once(&publisher.client).chain(viewers.iter().map(|v| &v.sub.client)));
    let a = sample_all(&probes).await?;
    let g0 = own_cpu_ticks();
    let m0 = MachineSample::now();
    let t0 = Instant::now();
    let end = (t0 + common.duration).min(deadline);
    let (mut asked, mut taken, mut refused) = (0u64, 0u64, 0u64);
    let mut next = 0usize;
    let mut errors = Vec::new();
    super::super::progress::phase("switching", common.duration.as_secs(), "s");
    while Instant::now() + cfg.switch_every <= end && !viewers.is_empty() {
        tokio::time::sleep(cfg.switch_every).await;
        super::super::progress::at(t0.elapsed());
        for _ in 0..cfg.switches.min(viewers.len()) {
            let i = next % viewers.len();
            next += 1;
            let Some(v) = viewers.get_mut(i) else {
                continue;
            };
            asked += 1;
            match switch(&api, &cfg.layers, v).await {
                Ok(true) => taken += 1,
                Ok(false) => refused += 1,
                Err(e) => {
                    refused += 1;
                    if errors.len() < super::MAX_FAILURES_KEPT {
                        errors.push(format!("{e:#}"));
                    }
                }
            }
        }
    }
    sleep_bounded(
        "measuring",
        end.saturating_duration_since(Instant::now()),
        deadline,
    )
    .await;
    let b = sample_all(&probes).await?;
    let window = t0.elapsed();
    let g1 = own_cpu_ticks();
    let m1 = MachineSample::now();
    // Give the last switches a keyframe interval to happen before counting the layers.
    tokio::time::sleep(common.video.keyframe_interval()).await;
    let current = current_layers(&api, &viewers).await;
    let mut wanted: BTreeMap<String, usize> = BTreeMap::new();
    for v in &viewers {
        *wanted.entry(rid_of(v.layer).to_string()).or_insert(0) += 1;
    }
    let switch_key = "trackmesh_simulcast_events_total{event=\"switch\"}";
    // The subscribers' node: the last one.
    let node_switches = match (a.last(), b.last()) {
        (Some(a), Some(b)) => (b.metric(switch_key) - a.metric(switch_key)).max(0.0),
        _ => 0.0,
    };
    let subs: Vec<&Subscriber> = viewers.iter().map(|v| &v.sub).collect();
    let group = GroupFigures::of("subscribers", &subs);
    let frames_sent = publisher.client.with_stats(|s| s.tx_window_frames());
    let report = Report {
        scenario: "simulcast".into(),
        meta: Meta::collect(),
        params: json!(cfg),
        window_s: round2(window.as_secs_f64()),
        nodes: a
            .iter()
            .zip(&b)
            .zip(&probes)
            .map(|((a, b), p)| NodeFigures::between(&p.name, a, b))
            .collect(),
        rss_per_session_kb: None,
        frames_sent,
        groups: vec![group],
        failures: failures.len(),
        failure_samples: keep_failures(&failures),
        publisher_errors: super::publisher_errors(std::iter::once(&publisher)),
        generator_cpu_percent: generator_percent(g0, g1, window),
        machine: MachineFigures::between(&m0, &m1),
        node_logs: nodes.logs(),
        extra: [
            ("switches_asked".to_string(), json!(asked)),
            ("switches_taken".to_string(), json!(taken)),
            ("switches_refused".to_string(), json!(refused)),
            ("switch_errors".to_string(), json!(errors)),
            (
                "node_layer_switches_in_window".to_string(),
                json!(node_switches),
            ),
            ("subscribers_per_layer_asked".to_string(), json!(wanted)),
            (
                "relay_pulled_by_subscribers_node".to_string(),
                match (cfg.relayed, a.last(), b.last()) {
                    (true, Some(a), Some(b)) => relay_pulled(a, b, window),
                    _ => serde_json::Value::Null,
                },
            ),
            (
                "subscribers_per_layer_receiving".to_string(),
                json!(current),
            ),
            (
                "layer_kbps".to_string(),
                json!(
                    LAYERS
                        .iter()
                        .map(|(rid, div)| (rid.to_string(), (common.video.kbps / div).max(10)))
                        .collect::<BTreeMap<_, _>>()
                ),
            ),
        ]
        .into_iter()
        .collect(),
    };
    drop(viewers);
    drop(publisher);
    tokio::time::sleep(Duration::from_millis(250)).await;
    drop(nodes);
    Ok(report)
}
