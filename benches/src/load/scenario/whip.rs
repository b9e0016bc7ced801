//! WHIP/WHEP fan-out against any server: one WHIP publisher and N WHEP viewers of one stream.
//! Without a [`Target`] it starts a trackmesh node; with one it drives whatever server is at
//! the URLs, so the same load measures trackmesh and another WHIP/WHEP server alike.
//!
//! The server-neutral figures come from the clients and `/proc`: RTP packets the viewers
//! received per second, those packets per CPU-second of the server process (its forwarding
//! cost), its RSS growth per viewer, one-way latency and frame loss from the stamped frames.
//! A trackmesh `/metrics` (own node, or `--metrics-url`) adds the node's own counters.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};
use str0m::media::MediaKind;
use trackmesh_tests::whip::{self, Mode, Session};
use trackmesh_tests::{CallsClient, TestNode};

use super::{
    Common, FIRST_MEDIA_TIMEOUT, GroupFigures, Subscriber, check_sessions, generator_percent,
    join_bounded, keep_failures, node_log, own_cpu_ticks, reset_windows, sleep_bounded,
};
use crate::load::client::{Client, Pulled};
use crate::load::procfs::{
    MachineFigures, MachineSample, NodeFigures, NodeProbe, NodeSample, clk_tck, round2,
};
use crate::load::report::{Meta, Report};

/// ICE + DTLS of one session.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on the `DELETE`s of every session at the end (external servers only).
const DELETE_ALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest stream name accepted.
const MAX_STREAM_NAME: usize = 128;

/// Another server to load.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub whip_url: String,
    pub whep_url: String,
    /// Bearer token for both endpoints; never in a report.
    #[serde(skip_serializing)]
    pub token: String,
    /// The server process, for its CPU and RSS.
    pub server_pid: Option<u32>,
    /// A trackmesh `/metrics` of that server, if it is one.
    pub metrics_url: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WhipConfig {
    pub common: Common,
    pub subscribers: usize,
    /// The stream name on the trackmesh node started here (a [`Target`] has its own URLs).
    pub stream: String,
    pub target: Option<Target>,
}

impl Default for WhipConfig {
    fn default() -> Self {
        WhipConfig {
            common: Common::default(),
            subscribers: 50,
            stream: "load".into(),
            target: None,
        }
    }
}

impl WhipConfig {
    fn check(&self) -> anyhow::Result<()> {
        self.common.check()?;
        check_sessions(self.subscribers + 1, "subscribers + 1")?;
        if self.subscribers == 0 {
            bail!("--subscribers must be at least 1");
        }
        let name_ok = !self.stream.is_empty()
            && self.stream.len() <= MAX_STREAM_NAME
            && self
                .stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            bail!("--stream must be 1..={MAX_STREAM_NAME} of [A-Za-z0-9_-]");
        }
        Ok(())
    }

    fn kinds(&self) -> Vec<MediaKind> {
        let mut k = Vec::new();
        if self.common.media.has_audio() {
            k.push(MediaKind::Audio);
        }
        if self.common.media.has_video() {
            k.push(MediaKind::Video);
        }
        k
    }
}

/// Where the load goes: the endpoints, and the server process if it can be read.
struct Server {
    node: Option<TestNode>,
    http: CallsClient,
    whip_url: String,
    whep_url: String,
    token: String,
    probe: Option<NodeProbe>,
}

fn server(cfg: &WhipConfig) -> anyhow::Result<Server> {
    match &cfg.target {
        None => {
            let args = cfg.common.node_args(cfg.subscribers + 1);
            let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let node = TestNode::start_process(&arg_refs).context("starting the node")?;
            let probe = NodeProbe::new("node", &node)?;
            let http = node.client();
            Ok(Server {
                whip_url: format!("{}/whip/{}", http.base(), cfg.stream),
                whep_url: format!("{}/whep/{}", http.base(), cfg.stream),
                token: node.app_secret().to_string(),
                http,
                probe: Some(probe),
                node: Some(node),
            })
        }
        Some(t) => {
            let probe = t
                .server_pid
                .map(|pid| NodeProbe::for_pid("server", pid, t.metrics_url.clone()))
                .transpose()?;
            Ok(Server {
                node: None,
                // Every request goes to a full URL: the base is not used.
                http: CallsClient::new(&t.whip_url, &t.token),
                whip_url: t.whip_url.clone(),
                whep_url: t.whep_url.clone(),
                token: t.token.clone(),
                probe,
            })
        }
    }
}

async fn sample(probe: &Option<NodeProbe>) -> anyhow::Result<Option<NodeSample>> {
    match probe {
        Some(p) => Ok(Some(p.sample().await.context("sampling the server")?)),
        None => Ok(None),
    }
}

/// A WHEP viewer: the load client's subscriber plus its session.
struct Viewer {
    sub: Subscriber,
    session: Session,
}

async fn join_viewer(
    http: CallsClient,
    url: String,
    token: String,
    client_cfg: trackmesh_tests::peer::ClientConfig,
    kinds: Vec<MediaKind>,
) -> anyhow::Result<Viewer> {
    let name = client_cfg.name.clone();
    let client = Client::start(client_cfg).await?;
    let started = Instant::now();
    let session = whip::start(
        &http,
        &client,
        &url,
        &token,
        Mode::Play,
        &kinds,
        CONNECT_TIMEOUT,
    )
    .await
    .with_context(|| format!("{name}: WHEP"))?;
    client
        .wait_until("the first frame on every track", FIRST_MEDIA_TIMEOUT, |s| {
            s.all_receiving()
        })
        .await?;
    let pulled = session
        .mids
        .iter()
        .zip(&kinds)
        .map(|(mid, kind)| Pulled {
            session_id: session.location.clone(),
            track_name: kind.to_string(),
            mid: mid.clone(),
        })
        .collect();
    Ok(Viewer {
        sub: Subscriber {
            client,
            session_id: session.location.clone(),
            pulled,
            started,
            pull_started: started,
            group: 0,
        },
        session,
    })
}

pub async fn run(cfg: &WhipConfig) -> anyhow::Result<Report> {
    cfg.check()?;
    let limit = cfg.common.limit();
    match tokio::time::timeout(limit, run_inner(cfg, Instant::now() + limit)).await {
        Ok(r) => r,
        Err(_) => bail!("whip did not finish within {limit:?}"),
    }
}

async fn run_inner(cfg: &WhipConfig, deadline: Instant) -> anyhow::Result<Report> {
    let mut srv = server(cfg)?;
    let kinds = cfg.kinds();
    let before = sample(&srv.probe).await?;

    let publisher = Client::start(cfg.common.client_config("publisher".into())).await?;
    let pub_session = whip::start(
        &srv.http,
        &publisher,
        &srv.whip_url,
        &srv.token,
        Mode::Publish,
        &kinds,
        CONNECT_TIMEOUT,
    )
    .await
    .context("the WHIP publisher")?;
    let before_viewers = sample(&srv.probe).await?;

    let (http, url, token, common) = (
        srv.http.clone(),
        srv.whep_url.clone(),
        srv.token.clone(),
        cfg.common.clone(),
    );
    let left = deadline.saturating_duration_since(Instant::now());
    let (viewers, failures) = join_bounded(cfg.subscribers, cfg.common.concurrency, left, |i| {
        join_viewer(
            http.clone(),
            url.clone(),
            token.clone(),
            common.client_config(format!("s{i}")),
            kinds.clone(),
        )
    })
    .await;
    let after_setup = sample(&srv.probe).await?;

    sleep_bounded("warm-up", cfg.common.warmup, deadline).await;
    reset_windows(std::iter::once(&publisher).chain(viewers.iter().map(|v| &v.sub.client)));
    let a = sample(&srv.probe).await?;
    let g0 = own_cpu_ticks();
    let m0 = MachineSample::now();
    let t0 = Instant::now();
    sleep_bounded("measuring", cfg.common.duration, deadline).await;
    let b = sample(&srv.probe).await?;
    let window = t0.elapsed();
    let g1 = own_cpu_ticks();
    let m1 = MachineSample::now();

    let subs: Vec<&Subscriber> = viewers.iter().map(|v| &v.sub).collect();
    let group = GroupFigures::of("whep viewers", &subs);
    let rtp_in: u64 = viewers
        .iter()
        .map(|v| v.sub.client.with_stats(|s| s.window_rtp_packets_in))
        .sum();
    let figures = ServerFigures::of(
        rtp_in,
        window,
        viewers.len(),
        [&before, &before_viewers, &after_setup, &a, &b],
    );
    let nodes = match (&srv.probe, &a, &b) {
        (Some(p), Some(a), Some(b)) if p.has_metrics() => {
            vec![NodeFigures::between(&p.name, a, b)]
        }
        _ => Vec::new(),
    };
    let mut extra = serde_json::Map::new();
    extra.insert(
        "server".into(),
        json!(if srv.node.is_some() {
            "trackmesh (started by the generator)"
        } else {
            "external"
        }),
    );
    if let Value::Object(m) = json!(figures) {
        extra.extend(m);
    }
    extra.insert(
        "trackmesh_forwarded_pkts_per_s".into(),
        json!(nodes.first().map(|n| n.forwarded_pkts_per_s)),
    );
    extra.insert(
        "latency_p50_ms".into(),
        json!(group.latency.map(|d| d.p50_ms)),
    );
    extra.insert(
        "latency_p99_ms".into(),
        json!(group.latency.map(|d| d.p99_ms)),
    );
    let frames_sent = publisher.with_stats(|s| s.tx_window_frames());
    let publisher_errors = publisher
        .with_stats(|s| s.errors.clone())
        .into_iter()
        .map(|e| format!("publisher: {e}"))
        .collect();
    let node_logs = srv
        .node
        .as_mut()
        .map(|n| vec![node_log("node", n)])
        .unwrap_or_default();
    let report = Report {
        scenario: "whip".into(),
        meta: Meta::collect(),
        params: json!(cfg),
        window_s: round2(window.as_secs_f64()),
        nodes,
        rss_per_session_kb: None,
        frames_sent,
        groups: vec![group],
        failures: failures.len(),
        failure_samples: keep_failures(&failures),
        publisher_errors,
        generator_cpu_percent: generator_percent(g0, g1, window),
        machine: MachineFigures::between(&m0, &m1),
        node_logs,
        extra,
    };
    teardown(srv, publisher, pub_session, viewers).await;
    Ok(report)
}

/// The server-neutral figures of a run.
#[derive(Clone, Debug, Serialize, Default)]
pub struct ServerFigures {
    pub viewers_joined: usize,
    /// RTP packets the viewers received during the window, per second.
    pub viewer_rtp_pkts_per_s: f64,
    /// Server CPU (user + system) during the window, % of one core.
    pub server_cpu_percent_of_core: Option<f64>,
    /// Viewer-received RTP packets / server CPU seconds: forwarded packets per CPU-second.
    pub forwarded_pkts_per_cpu_s: Option<f64>,
    pub server_rss_mb_idle: Option<f64>,
    pub server_rss_mb_publishing: Option<f64>,
    pub server_rss_mb_window_end: Option<f64>,
    /// (RSS at the window's end − RSS with only the publisher) / viewers, KB.
    pub rss_per_subscriber_kb: Option<f64>,
}

impl ServerFigures {
    /// `samples`: idle, publishing, viewers set up, window start, window end.
    fn of(
        rtp_in: u64,
        window: Duration,
        viewers: usize,
        samples: [&Option<NodeSample>; 5],
    ) -> ServerFigures {
        let [idle, publishing, _setup, a, b] = samples;
        let secs = window.as_secs_f64().max(1e-6);
        let mb = |s: &Option<NodeSample>| s.as_ref().map(|s| round2(s.rss_kb as f64 / 1024.0));
        let cpu_s = match (a, b) {
            (Some(a), Some(b)) => {
                Some(b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / clk_tck() as f64)
            }
            _ => None,
        };
        let rss_per_subscriber_kb = match (publishing, b) {
            (Some(p), Some(b)) if viewers > 0 => {
                Some(round2((b.rss_kb as f64 - p.rss_kb as f64) / viewers as f64))
            }
            _ => None,
        };
        ServerFigures {
            viewers_joined: viewers,
            viewer_rtp_pkts_per_s: round2(rtp_in as f64 / secs),
            server_cpu_percent_of_core: cpu_s.map(|c| round2(100.0 * c / secs)),
            forwarded_pkts_per_cpu_s: cpu_s
                .filter(|c| *c > 0.0)
                .map(|c| round2(rtp_in as f64 / c)),
            server_rss_mb_idle: mb(idle),
            server_rss_mb_publishing: mb(publishing),
            server_rss_mb_window_end: mb(b),
            rss_per_subscriber_kb,
        }
    }
}

/// End every session (a `DELETE` each on an external server, bounded), drop the clients, then
/// the node (if started here) is killed on drop.
async fn teardown(srv: Server, publisher: Client, pub_session: Session, viewers: Vec<Viewer>) {
    if srv.node.is_none() {
        let deletes = async {
            for v in &viewers {
                let _ = whip::delete(&srv.http, &v.session, &srv.token).await;
            }
            let _ = whip::delete(&srv.http, &pub_session, &srv.token).await;
        };
        let _ = tokio::time::timeout(DELETE_ALL_TIMEOUT, deletes).await;
    }
    drop(viewers);
    drop(publisher);
    tokio::time::sleep(Duration::from_millis(250)).await;
    drop(srv);
}
