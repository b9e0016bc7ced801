//! The scenarios and what they share: settings, publishers, subscribers with bounded set-up
//! concurrency, and the per-group figures.

pub mod churn;
pub mod fanout;
pub mod hub;
pub mod join_storm;
pub mod relay;
pub mod simulcast;
pub mod soak;
pub mod whip;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::Serialize;
use str0m::media::MediaKind;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use trackmesh_tests::CallsClient;

use super::client;
use super::client::{Client, ClientConfig, ClientStats, Pulled};
use super::media::{MediaMix, VideoShape};
use super::procfs::{NodeProbe, NodeSample};
pub use super::report::GroupFigures;
use super::report::NodeLog;
use super::stats::{Dist, Histogram};

/// Hard cap on sessions a scenario creates.
pub const MAX_SESSIONS: usize = 5000;
/// Hard cap on a scenario's measured duration.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// Time a scenario may take on top of its warm-up and duration (set-up, joins, teardown).
pub const SLACK: Duration = Duration::from_secs(300);
/// Bound on a subscriber's wait for its first frame on every track.
pub const FIRST_MEDIA_TIMEOUT: Duration = Duration::from_secs(20);
/// Failure messages kept in a report.
pub const MAX_FAILURES_KEPT: usize = 20;
/// Set-up concurrency cap.
pub const MAX_CONCURRENCY: usize = 512;

/// Durations in reports are seconds.
pub fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Settings every scenario has.
#[derive(Clone, Debug, Serialize)]
pub struct Common {
    pub media: MediaMix,
    pub video: VideoShape,
    /// Excluded from the figures, after set-up.
    #[serde(serialize_with = "as_secs")]
    pub warmup: Duration,
    #[serde(serialize_with = "as_secs")]
    pub duration: Duration,
    /// Sessions being set up at once.
    pub concurrency: usize,
    /// Extra node command-line arguments.
    pub node_args: Vec<String>,
}

impl Default for Common {
    fn default() -> Self {
        Common {
            media: MediaMix::Av,
            video: VideoShape::default(),
            warmup: Duration::from_secs(3),
            duration: Duration::from_secs(20),
            concurrency: 32,
            node_args: Vec::new(),
        }
    }
}

impl Common {
    pub fn check(&self) -> anyhow::Result<()> {
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            bail!("--duration must be in 1..={} s", MAX_DURATION.as_secs());
        }
        if self.warmup > Duration::from_secs(600) {
            bail!("--warmup must be at most 600 s");
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            bail!("--concurrency must be in 1..={MAX_CONCURRENCY}");
        }
        Ok(())
    }

    /// The bound on the whole scenario (and on every client's lifetime).
    pub fn limit(&self) -> Duration {
        self.warmup + self.duration + SLACK
    }

    /// Node arguments: the limits a load test needs, then the user's.
    pub fn node_args(&self, sessions: usize) -> Vec<String> {
        let mut a = vec![
            "--max-sessions".to_string(),
            (sessions * 2 + 100).max(10_000).to_string(),
            "--rate-limit".to_string(),
            "1000".to_string(),
            // Every load client comes from 127.0.0.1: lift the per-address and per-app limits
            // that protect a real node from one client.
            "--session-rate-ip".to_string(),
            "100000".to_string(),
            "--session-rate-app".to_string(),
            "100000".to_string(),
            "--http-max-connections-per-ip".to_string(),
            "100000".to_string(),
            "--http-max-connections".to_string(),
            "100000".to_string(),
        ];
        a.extend(self.node_args.iter().cloned());
        a
    }

    fn client_config(&self, name: String) -> ClientConfig {
        let mut c = ClientConfig::new(name, self.limit());
        c.video = self.video;
        c
    }
}

pub fn check_sessions(n: usize, what: &str) -> anyhow::Result<()> {
    if n > MAX_SESSIONS {
        bail!("{what} ({n}) exceeds the cap of {MAX_SESSIONS} sessions");
    }
    Ok(())
}

/// A publishing session.
pub struct Publisher {
    pub client: Client,
    pub session_id: String,
    /// (sessionId, trackName) of every track, for pulls.
    pub remote: Vec<(String, String)>,
}

/// `sessions/new`, push one track per kind of `mix`, connect, start sending, wait for frames.
pub async fn start_publisher(
    api: &CallsClient,
    common: &Common,
    name: &str,
) -> anyhow::Result<Publisher> {
    let client = Client::start(common.client_config(name.to_string())).await?;
    let mut tracks = Vec::new();
    if common.media.has_audio() {
        tracks.push((format!("{name}-audio"), MediaKind::Audio));
    }
    if common.media.has_video() {
        tracks.push((format!("{name}-video"), MediaKind::Video));
    }
    let p = trackmesh_tests::Publisher::start_on(api, client, &tracks).await?;
    let remote = p.remote_refs();
    Ok(Publisher {
        client: p.peer,
        session_id: p.session_id,
        remote,
    })
}

/// A subscribing session.
pub struct Subscriber {
    pub client: Client,
    pub session_id: String,
    pub pulled: Vec<Pulled>,
    /// Before `sessions/new`.
    pub started: Instant,
    /// Before the first `tracks/new`.
    pub pull_started: Instant,
    /// Which API (node) it went through.
    pub group: usize,
}

impl Subscriber {
    pub fn mids(&self) -> Vec<String> {
        self.pulled.iter().map(|p| p.mid.clone()).collect()
    }
}

/// `sessions/new`, pull `remote`, and wait until every track delivered a frame (and, with
/// `want_keyframe`, every video track a keyframe).
pub async fn join_subscriber(
    api: &CallsClient,
    cfg: ClientConfig,
    remote: &[(String, String)],
    group: usize,
    want_keyframe: bool,
) -> anyhow::Result<Subscriber> {
    let name = cfg.name.clone();
    let client = Client::start(cfg).await?;
    let started = Instant::now();
    let session_id = api
        .sessions_new()
        .await
        .with_context(|| format!("{name}: sessions/new"))?
        .session_id;
    let pull_started = Instant::now();
    let pulled = client::pull(&client, api, &session_id, remote).await?;
    client
        .wait_until(
            "the first frame on every track",
            FIRST_MEDIA_TIMEOUT,
            move |s| s.all_receiving() && (!want_keyframe || s.all_keyframed()),
        )
        .await?;
    Ok(Subscriber {
        client,
        session_id,
        pulled,
        started,
        pull_started,
        group,
    })
}

/// What to join: for subscriber `i`, (API, group index, remote tracks, client settings).
pub type JoinPlan =
    Arc<dyn Fn(usize) -> (CallsClient, usize, Vec<(String, String)>, ClientConfig) + Send + Sync>;

/// Join `n` subscribers, at most `concurrency` being set up at once. Returns the subscribers
/// (in completion order) and the failures. Bounded by `timeout` as a whole.
pub async fn join_many(
    n: usize,
    concurrency: usize,
    plan: JoinPlan,
    want_keyframe: bool,
    timeout: Duration,
) -> (Vec<Subscriber>, Vec<String>) {
    join_bounded(n, concurrency, timeout, move |i| {
        let plan = plan.clone();
        async move {
            let (api, group, remote, cfg) = plan(i);
            join_subscriber(&api, cfg, &remote, group, want_keyframe).await
        }
    })
    .await
}

/// Run `join(i)` for `i` in `0..n`, at most `concurrency` at once, showing progress. Returns
/// what succeeded (in completion order) and the failures. Bounded by `timeout` as a whole.
pub async fn join_bounded<T, F, Fut>(
    n: usize,
    concurrency: usize,
    timeout: Duration,
    join: F,
) -> (Vec<T>, Vec<String>)
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    for i in 0..n {
        let sem = sem.clone();
        let fut = join(i);
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.map_err(|e| anyhow!("{e}"))?;
            fut.await
        });
    }
    let mut done = Vec::with_capacity(n);
    let mut failures = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    super::progress::phase("joining", n as u64, "sessions");
    for _ in 0..n {
        let next = tokio::time::timeout_at(deadline, set.join_next()).await;
        super::progress::step();
        match next {
            Ok(Some(Ok(Ok(s)))) => done.push(s),
            Ok(Some(Ok(Err(e)))) => failures.push(format!("{e:#}")),
            Ok(Some(Err(e))) => failures.push(format!("join task: {e}")),
            Ok(None) => break,
            Err(_) => {
                failures.push(format!(
                    "{} joins still unfinished after {timeout:?}",
                    set.len()
                ));
                set.abort_all();
                break;
            }
        }
    }
    (done, failures)
}

/// Per-subscriber join times: (set-up, pull → first frame, pull → first keyframe) in ms.
pub fn join_times(
    s: &ClientStats,
    started: Instant,
    pull_started: Instant,
) -> (Option<f64>, Option<f64>, Option<f64>) {
    let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1000.0;
    let setup = s.connected_at.map(|c| ms(started, c));
    let first =
        s.rx.values()
            .filter_map(|t| t.first_frame_at)
            .min()
            .map(|f| ms(pull_started, f));
    let key =
        s.rx.values()
            .filter(|t| t.kind == MediaKind::Video)
            .filter_map(|t| t.first_keyframe_at)
            .min()
            .map(|f| ms(pull_started, f));
    (setup, first, key)
}

impl GroupFigures {
    /// Figures of `subs` (their stats read now; the window is since their last reset).
    pub fn of(name: &str, subs: &[&Subscriber]) -> GroupFigures {
        let mut g = GroupFigures {
            name: name.to_string(),
            subscribers: subs.len(),
            ..Default::default()
        };
        let (mut all, mut audio, mut video) = (
            Histogram::default(),
            Histogram::default(),
            Histogram::default(),
        );
        let (mut setup, mut first, mut key) = (Vec::new(), Vec::new(), Vec::new());
        let mut ages = Vec::new();
        for sub in subs {
            sub.client.with_stats(|s| {
                let mut every_track = !s.rx.is_empty();
                for t in s.rx.values() {
                    let w = &t.window;
                    every_track &= w.frames > 0;
                    g.frames_received += w.frames;
                    g.keyframes_received += w.keyframes;
                    g.frames_lost += w.lost;
                    g.frames_reordered += w.reordered;
                    g.frames_broken_video += w.broken;
                    g.frames_unstamped += w.unstamped;
                    g.frames_skipped_at_join += w.skipped_at_join;
                    if let Some(a) = t.first_frame_age_us {
                        ages.push(a as f64 / 1000.0);
                    }
                    all.merge(&w.latency);
                    match t.kind {
                        MediaKind::Audio => {
                            audio.merge(&w.latency);
                            g.frames_lost_audio += w.lost;
                        }
                        MediaKind::Video => {
                            video.merge(&w.latency);
                            g.frames_lost_video += w.lost;
                        }
                    }
                }
                if every_track {
                    g.receiving += 1;
                }
                let (a, b, c) = join_times(s, sub.started, sub.pull_started);
                setup.extend(a);
                first.extend(b);
                key.extend(c);
                for e in &s.errors {
                    if g.client_errors.len() < MAX_FAILURES_KEPT {
                        g.client_errors.push(format!("{}: {e}", sub.client.name()));
                    }
                }
            });
        }
        let denom = g.frames_received + g.frames_lost;
        g.loss_percent = if denom == 0 {
            0.0
        } else {
            super::procfs::round4(100.0 * g.frames_lost as f64 / denom as f64)
        };
        g.latency = all.dist();
        g.latency_audio = audio.dist();
        g.latency_video = video.dist();
        g.pull_to_first_frame = Dist::of_ms(&first);
        g.pull_to_first_keyframe = Dist::of_ms(&key);
        g.session_setup = Dist::of_ms(&setup);
        g.first_frame_age = Dist::of_ms(&ages);
        g
    }
}

/// Sample every probe (a failed sample is an error: the node is gone or not answering).
pub async fn sample_all(probes: &[NodeProbe]) -> anyhow::Result<Vec<NodeSample>> {
    let mut v = Vec::with_capacity(probes.len());
    for p in probes {
        v.push(
            p.sample()
                .await
                .with_context(|| format!("sampling node {}", p.name))?,
        );
    }
    Ok(v)
}

/// Reset the measurement window of every client.
pub fn reset_windows<'a>(clients: impl IntoIterator<Item = &'a Client>) {
    for c in clients {
        c.reset_window();
    }
}

/// Sleep `d`, but at most until `deadline` (a scenario's global bound), showing `what` as the
/// phase on a terminal.
pub async fn sleep_bounded(what: &str, d: Duration, deadline: Instant) {
    let start = Instant::now();
    let until = (start + d).min(deadline);
    super::progress::phase(what, until.saturating_duration_since(start).as_secs(), "s");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(until.into()) => break,
            _ = tick.tick() => super::progress::at(start.elapsed()),
        }
    }
}

/// CPU ticks of this process (the generator), to report its own load.
pub fn own_cpu_ticks() -> u64 {
    super::procfs::cpu_ticks(std::process::id()).unwrap_or(0)
}

/// Trouble lines of a node's log, and whether it is still running.
pub fn node_log(name: &str, node: &mut trackmesh_tests::TestNode) -> NodeLog {
    let (trouble_lines, first) = super::procfs::log_trouble(&node.log(), 10);
    NodeLog {
        name: name.to_string(),
        trouble_lines,
        first,
        exited: !node.is_running(),
    }
}

/// Generator CPU between two [`own_cpu_ticks`] readings, % of one core.
pub fn generator_percent(t0: u64, t1: u64, window: Duration) -> f64 {
    let s = t1.saturating_sub(t0) as f64 / super::procfs::clk_tck() as f64;
    super::procfs::round2(100.0 * s / window.as_secs_f64().max(1e-6))
}

/// Keep the first few failures.
pub fn keep_failures(failures: &[String]) -> Vec<String> {
    failures.iter().take(MAX_FAILURES_KEPT).cloned().collect()
}

/// The errors the publishers' clients recorded, first few.
pub fn publisher_errors<'a>(pubs: impl IntoIterator<Item = &'a Publisher>) -> Vec<String> {
    pubs.into_iter()
        .flat_map(|p| {
            let name = p.client.name().to_string();
            p.client
                .with_stats(|s| s.errors.clone())
                .into_iter()
                .map(move |e| format!("{name}: {e}"))
        })
        .take(MAX_FAILURES_KEPT)
        .collect()
}
