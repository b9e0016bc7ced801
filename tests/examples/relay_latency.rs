//! Measures the latency the relay hop adds: one-way frame latency for a subscriber on the
//! publisher's node (local) and on another node of another region (relayed), and the time from a
//! pull to the first frame / first keyframe for fresh subscribers on either node.
//!
//! ```text
//! cargo build --release --bins
//! cargo run --release -p trackmesh-tests --example relay_latency -- [SECONDS]
//! ```
//! SECONDS (default 20, at most 300) is the latency collection window after a 2 s warm-up. The
//! node binary is env `TRACKMESH_BIN`, default `<workspace>/target/release/trackmesh`.
//!
//! Everything runs on 127.0.0.1 in this process: node `a` (region r1) and node `b` (region r2),
//! a publisher on `a` sending audio (50 frames/s) and VP8-like video (30 fps, 1-3 KB frames, a
//! keyframe every 2 s). Every frame carries its send time (microseconds since a process-wide
//! `Instant` origin, see `peer::TIMESTAMP_OFFSET`), so one-way latency = receive time − embedded
//! send time with one clock. Prints a table, then one JSON object with every figure.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use trackmesh_tests::api::CallsClient;
use trackmesh_tests::flows::Subscriber;
use trackmesh_tests::peer::{LatencySample, Peer, PeerOptions, PeerStats};
use trackmesh_tests::{Cluster, MediaKind, TestNode};

const DEFAULT_SECONDS: u64 = 20;
const MAX_SECONDS: u64 = 300;
const WARMUP: Duration = Duration::from_secs(2);
/// Repetitions of each join measurement.
const REPS: usize = 20;
/// Bound on the wait for a fresh subscriber's first frame and first keyframe.
const FIRST_MEDIA_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the wait for the publisher's and the long-lived subscribers' first media.
const MEDIA_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause after each join. The node sends at most one keyframe request per publication per
/// second (deferring the others), so joins closer together than that would mostly measure the
/// throttle; this keeps every join's keyframe request unthrottled.
const JOIN_PAUSE: Duration = Duration::from_millis(1200);
/// Bound on the wait for node b to release its upstream before a cold relayed join.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the whole measurement (on top of SECONDS).
const OVERALL_SLACK: Duration = Duration::from_secs(420);
/// A received "timestamp" outside 0..this is not one (a frame without a timestamp).
const MAX_PLAUSIBLE_US: i64 = 10_000_000;

/// Frames slower than this are listed (when they were sent) to locate stalls.
const SLOW_US: i64 = 20_000;
const MAX_SLOW_LISTED: usize = 40;

const AUDIO_TRACK: &str = "lat-audio";
const VIDEO_TRACK: &str = "lat-video";

fn main() -> anyhow::Result<()> {
    // The test crate finds the node through TRACKMESH_BIN (default: the debug build). Setting an
    // environment variable in-process needs `unsafe`, which this workspace forbids, so run
    // ourselves again with it pointing at the release build.
    if std::env::var_os("TRACKMESH_BIN").is_none() {
        let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/trackmesh");
        let status = Command::new(std::env::current_exe().context("locating this example")?)
            .args(std::env::args_os().skip(1))
            .env("TRACKMESH_BIN", &bin)
            .status()
            .context("re-running with TRACKMESH_BIN set")?;
        std::process::exit(status.code().unwrap_or(1));
    }
    let seconds: u64 = match std::env::args().nth(1) {
        Some(s) => s.parse().context("SECONDS must be a whole number")?,
        None => DEFAULT_SECONDS,
    };
    if seconds == 0 || seconds > MAX_SECONDS {
        bail!("SECONDS must be in 1..={MAX_SECONDS}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    rt.block_on(async {
        let limit = Duration::from_secs(seconds) + OVERALL_SLACK;
        match tokio::time::timeout(limit, run(seconds)).await {
            Ok(r) => r,
            Err(_) => bail!("the measurement did not finish within {limit:?}"),
        }
    })
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Distribution summary of values in milliseconds.
#[derive(Clone, Copy, Debug)]
struct Dist {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

impl Dist {
    fn of(mut v: Vec<f64>) -> Dist {
        v.sort_by(f64::total_cmp);
        let mean = if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        };
        Dist {
            n: v.len(),
            p50: pct(&v, 0.5),
            p90: pct(&v, 0.9),
            p99: pct(&v, 0.99),
            max: v.last().copied().unwrap_or(f64::NAN),
            mean,
        }
    }

    fn json(&self) -> Value {
        json!({"n": self.n, "p50_ms": r3(self.p50), "p90_ms": r3(self.p90),
               "p99_ms": r3(self.p99), "max_ms": r3(self.max), "mean_ms": r3(self.mean)})
    }
}

/// Round to 3 decimals (µs resolution in ms); NaN becomes null in JSON.
fn r3(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

fn kind_name(k: MediaKind) -> &'static str {
    match k {
        MediaKind::Audio => "audio",
        MediaKind::Video => "video",
    }
}

/// /proc/loadavg's first three fields.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// utime + stime of a process, in clock ticks (USER_HZ, 100 on Linux).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Total and idle jiffies of all CPUs (first line of /proc/stat).
fn cpu_total_idle() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((v.iter().sum(), idle))
}

/// A long-lived timestamped subscriber pulling both tracks.
struct LatencySub {
    sub: Subscriber,
    audio_mid: String,
    video_mid: String,
}

async fn start_latency_sub(
    api: &CallsClient,
    name: &str,
    remote: &[(String, String)],
    pub_session: &str,
) -> anyhow::Result<LatencySub> {
    let peer = Peer::with_options(name, PeerOptions { timestamped: true })?;
    let session_id = api
        .sessions_new()
        .await
        .with_context(|| format!("{name}: sessions/new"))?
        .session_id;
    let sub = Subscriber::pull_retrying(api, peer, session_id, remote)
        .await
        .with_context(|| format!("{name}: pull"))?;
    let audio_mid = sub.mid_of(pub_session, AUDIO_TRACK)?;
    let video_mid = sub.mid_of(pub_session, VIDEO_TRACK)?;
    let (am, vm) = (audio_mid.clone(), video_mid.clone());
    sub.peer
        .wait_until("audio, video and a keyframe", MEDIA_TIMEOUT, move |s| {
            s.rx_frames(&am) >= 5 && s.rx_frames(&vm) >= 5 && s.rx_keyframes(&vm) >= 1
        })
        .await
        .with_context(|| format!("{name}: first media"))?;
    Ok(LatencySub {
        sub,
        audio_mid,
        video_mid,
    })
}

/// One fresh subscriber's join: (pull API calls done, first frame, first keyframe), measured
/// from the start of the tracks/new call.
#[derive(Clone, Copy, Debug)]
struct Join {
    api_done: Duration,
    first_frame: Duration,
    first_keyframe: Duration,
}

async fn join_once(
    api: &CallsClient,
    name: &str,
    remote: &[(&str, &str)],
    video_track: &str,
) -> anyhow::Result<Join> {
    let peer = Peer::new(name)?;
    let session_id = api.sessions_new().await.context("sessions/new")?.session_id;
    let t0 = Instant::now();
    let resp = peer.pull(api, &session_id, remote).await.context("pull")?;
    let api_done = t0.elapsed();
    let mut mids = Vec::new();
    let mut video_mid = None;
    for item in &resp.tracks {
        if let Some(code) = &item.error_code {
            bail!("pull item {:?} failed: {code}", item.track_name);
        }
        let mid = item
            .mid
            .clone()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| anyhow!("pull item without mid: {item:?}"))?;
        if item.track_name.as_deref() == Some(video_track) {
            video_mid = Some(mid.clone());
        }
        mids.push(mid);
    }
    let video_mid = video_mid.ok_or_else(|| anyhow!("no video item in {resp:?}"))?;
    let (all, vm) = (mids.clone(), video_mid.clone());
    let waited = peer
        .wait_until(
            "first frame and first keyframe",
            FIRST_MEDIA_TIMEOUT,
            move |s| {
                all.iter()
                    .any(|m| s.rx.get(m).is_some_and(|c| c.first_frame_at.is_some()))
                    && s.rx.get(&vm).is_some_and(|c| c.first_keyframe_at.is_some())
            },
        )
        .await;
    let mid_refs: Vec<&str> = mids.iter().map(String::as_str).collect();
    // Close whatever happened; a failed close is reported but the figure is still valid.
    let closed = peer.close_force(api, &session_id, &mid_refs).await;
    let stats: PeerStats = waited?;
    if let Err(e) = closed {
        eprintln!("{name}: close with force failed: {e:#}");
    }
    let first_frame = mids
        .iter()
        .filter_map(|m| stats.rx.get(m).and_then(|c| c.first_frame_at))
        .min()
        .ok_or_else(|| anyhow!("no first frame"))?;
    let first_keyframe = stats
        .rx
        .get(&video_mid)
        .and_then(|c| c.first_keyframe_at)
        .ok_or_else(|| anyhow!("no first keyframe"))?;
    Ok(Join {
        api_done,
        first_frame: first_frame.saturating_duration_since(t0),
        first_keyframe: first_keyframe.saturating_duration_since(t0),
    })
}

/// Summary of a series of joins.
struct JoinSeries {
    label: String,
    joins: Vec<Join>,
    failures: Vec<String>,
}

impl JoinSeries {
    fn dist(&self, f: impl Fn(&Join) -> Duration) -> Dist {
        Dist::of(
            self.joins
                .iter()
                .map(|j| f(j).as_secs_f64() * 1000.0)
                .collect(),
        )
    }

    fn json(&self) -> Value {
        let d = |f: fn(&Join) -> Duration| {
            let x = self.dist(f);
            json!({"p50_ms": r3(x.p50), "max_ms": r3(x.max), "mean_ms": r3(x.mean)})
        };
        json!({
            "ok": self.joins.len(),
            "failed": self.failures.len(),
            "failures": self.failures,
            "first_frame": d(|j| j.first_frame),
            "first_keyframe": d(|j| j.first_keyframe),
            "pull_api_calls": d(|j| j.api_done),
        })
    }
}

async fn join_series(
    label: &str,
    api: &CallsClient,
    remote: &[(&str, &str)],
    // Before each pull: wait until this node holds no upstream for this publisher session.
    released_on: Option<(&TestNode, &str)>,
) -> JoinSeries {
    let mut series = JoinSeries {
        label: label.to_string(),
        joins: Vec::new(),
        failures: Vec::new(),
    };
    for i in 0..REPS {
        if let Some((node, session)) = released_on
            && let Err(e) = wait_released(node, session).await
        {
            series.failures.push(format!("rep {i}: before: {e:#}"));
            continue;
        }
        match join_once(api, &format!("{label}-{i}"), remote, VIDEO_TRACK).await {
            Ok(j) => series.joins.push(j),
            Err(e) => series.failures.push(format!("rep {i}: {e:#}")),
        }
        tokio::time::sleep(JOIN_PAUSE).await;
    }
    series
}

/// Wait (bounded) until `node` lists no upstream of the publisher's tracks.
async fn wait_released(node: &TestNode, session: &str) -> anyhow::Result<()> {
    trackmesh_tests::poll_until(
        "the node to release its upstream",
        RELEASE_TIMEOUT,
        Duration::from_millis(50),
        async || {
            let v = node.relay_view().await?;
            let n = v.upstream_of(session, VIDEO_TRACK).len()
                + v.upstream_of(session, AUDIO_TRACK).len();
            if n > 0 {
                bail!("{n} upstream entries left: {:?}", v.upstream);
            }
            Ok(())
        },
    )
    .await
    .map(|_| ())
}

/// Per-kind latency distributions of one subscriber's samples, and how many were implausible.
fn by_kind(samples: &[LatencySample]) -> (HashMap<&'static str, Dist>, usize) {
    let mut v: HashMap<&'static str, Vec<f64>> = HashMap::new();
    let mut bad = 0;
    for s in samples {
        let l = s.latency_us();
        if !(0..MAX_PLAUSIBLE_US).contains(&l) {
            bad += 1;
            continue;
        }
        v.entry(kind_name(s.kind))
            .or_default()
            .push(l as f64 / 1000.0);
    }
    (v.into_iter().map(|(k, x)| (k, Dist::of(x))).collect(), bad)
}

/// Per-frame relayed − local latency for the frames both subscribers received, per kind.
fn paired_diff(local: &[LatencySample], relayed: &[LatencySample]) -> HashMap<&'static str, Dist> {
    let l: HashMap<(&'static str, u64), i64> = local
        .iter()
        .map(|s| ((kind_name(s.kind), s.sent_us), s.latency_us()))
        .collect();
    let mut v: HashMap<&'static str, Vec<f64>> = HashMap::new();
    for s in relayed {
        let k = kind_name(s.kind);
        if let Some(lat_l) = l.get(&(k, s.sent_us)) {
            v.entry(k)
                .or_default()
                .push((s.latency_us() - lat_l) as f64 / 1000.0);
        }
    }
    v.into_iter().map(|(k, x)| (k, Dist::of(x))).collect()
}

async fn run(seconds: u64) -> anyhow::Result<()> {
    let load_start = loadavg();
    eprintln!(
        "node binary: {}; load average at start: {load_start}",
        trackmesh_tests::node::node_binary().display()
    );
    let mut cluster = Cluster::start(&[("a", "r1"), ("b", "r2")]).await?;
    let result = measure(&cluster, seconds, &load_start).await;
    for name in ["a", "b"] {
        if let Err(e) = cluster.kill(name) {
            eprintln!("killing node {name}: {e:#}");
        }
    }
    result
}

async fn measure(cluster: &Cluster, seconds: u64, load_start: &str) -> anyhow::Result<()> {
    let (api_a, api_b) = (cluster.client("a"), cluster.client("b"));
    let (node_a, node_b): (&TestNode, &TestNode) = (cluster.node("a"), cluster.node("b"));

    // Publisher on a.
    let publisher = Peer::with_options("pub", PeerOptions { timestamped: true })?;
    let pub_session = api_a.sessions_new().await?.session_id;
    let pushed = publisher
        .push(
            &api_a,
            &pub_session,
            &[
                (AUDIO_TRACK, MediaKind::Audio),
                (VIDEO_TRACK, MediaKind::Video),
            ],
        )
        .await
        .context("publisher push")?;
    publisher.wait_connected(CONNECT_TIMEOUT).await?;
    let pub_mids: Vec<String> = pushed.iter().map(|t| t.mid.clone()).collect();
    let pub_refs: Vec<&str> = pub_mids.iter().map(String::as_str).collect();
    publisher.start_sending(&pub_refs).await?;
    let check = pub_mids.clone();
    publisher
        .wait_until("publisher frames out", MEDIA_TIMEOUT, move |s| {
            check.iter().all(|m| s.tx_frames(m) >= 5)
        })
        .await?;
    let remote: Vec<(String, String)> = [AUDIO_TRACK, VIDEO_TRACK]
        .iter()
        .map(|t| (pub_session.clone(), t.to_string()))
        .collect();

    // Long-lived subscribers: L on a (local), R on b (through the relay).
    let local = start_latency_sub(&api_a, "L", &remote, &pub_session).await?;
    let relayed = start_latency_sub(&api_b, "R", &remote, &pub_session).await?;
    let relay_view = node_b.relay_view().await?;
    let upstreams = relay_view.upstream_of(&pub_session, VIDEO_TRACK).len();
    if upstreams == 0 {
        bail!("node b shows no upstream for the video track: {relay_view:?}");
    }
    eprintln!("both subscribers receive; warming up {WARMUP:?}, then collecting {seconds} s");

    tokio::time::sleep(WARMUP).await;
    local.sub.peer.take_latency_samples();
    relayed.sub.peer.take_latency_samples();
    let tx0 = publisher.stats();
    let rx0 = (local.sub.peer.stats(), relayed.sub.peer.stats());
    let cpu0 = (
        cpu_ticks(node_a.pid()),
        cpu_ticks(node_b.pid()),
        cpu_total_idle(),
    );
    let t0 = Instant::now();
    let t0_us = trackmesh_tests::peer::micros_since_origin(t0);
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let l_samples = local.sub.peer.take_latency_samples();
    let r_samples = relayed.sub.peer.take_latency_samples();
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = (
        cpu_ticks(node_a.pid()),
        cpu_ticks(node_b.pid()),
        cpu_total_idle(),
    );
    let tx1 = publisher.stats();
    let rx1 = (local.sub.peer.stats(), relayed.sub.peer.stats());
    let load_after_latency = loadavg();

    let node_cpu = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => r3((b - a) as f64 / 100.0 / elapsed * 100.0),
        _ => Value::Null,
    };
    let machine_busy = match (cpu0.2, cpu1.2) {
        (Some((t0, i0)), Some((t1, i1))) if t1 > t0 => {
            r3(100.0 * (1.0 - (i1 - i0) as f64 / (t1 - t0) as f64))
        }
        _ => Value::Null,
    };

    let (l_dist, l_bad) = by_kind(&l_samples);
    let (r_dist, r_bad) = by_kind(&r_samples);
    let diffs = paired_diff(&l_samples, &r_samples);
    // Where the slow frames were: (seconds into the window at send time, who, kind, ms).
    let mut slow: Vec<(f64, &str, &str, f64)> = [("local", &l_samples), ("relayed", &r_samples)]
        .into_iter()
        .flat_map(|(who, v)| {
            v.iter().filter(|s| s.latency_us() > SLOW_US).map(move |s| {
                (
                    (s.sent_us as f64 - t0_us as f64) / 1e6,
                    who,
                    kind_name(s.kind),
                    s.latency_us() as f64 / 1000.0,
                )
            })
        })
        .collect();
    slow.sort_by(|a, b| a.0.total_cmp(&b.0));
    let slow_json = json!({
        "threshold_ms": SLOW_US as f64 / 1000.0,
        "local": slow.iter().filter(|x| x.1 == "local").count(),
        "relayed": slow.iter().filter(|x| x.1 == "relayed").count(),
        "first": slow.iter().take(MAX_SLOW_LISTED).map(|(t, who, k, ms)| {
            json!({"at_s": r3(*t), "who": who, "kind": k, "ms": r3(*ms)})
        }).collect::<Vec<_>>(),
    });

    // Frames sent vs received during the window, per kind.
    let pub_mid = |k: MediaKind| {
        pushed
            .iter()
            .find(|t| t.kind == k)
            .map(|t| t.mid.clone())
            .unwrap_or_default()
    };
    let got = |sub: &LatencySub, before: &PeerStats, after: &PeerStats, k: MediaKind| {
        let mid = match k {
            MediaKind::Audio => &sub.audio_mid,
            MediaKind::Video => &sub.video_mid,
        };
        after.rx_frames(mid) - before.rx_frames(mid)
    };
    let frames_json: HashMap<&str, Value> = [MediaKind::Audio, MediaKind::Video]
        .into_iter()
        .map(|k| {
            let m = pub_mid(k);
            (
                kind_name(k),
                json!({"sent": tx1.tx_frames(&m) - tx0.tx_frames(&m),
                       "local_received": got(&local, &rx0.0, &rx1.0, k),
                       "relayed_received": got(&relayed, &rx0.1, &rx1.1, k)}),
            )
        })
        .collect();

    // Joins: fresh subscribers while L and R keep pulling (b's upstream is warm) ...
    let remote_refs: Vec<(&str, &str)> = remote
        .iter()
        .map(|(s, t)| (s.as_str(), t.as_str()))
        .collect();
    eprintln!("join measurements: {REPS} local, {REPS} relayed (warm upstream)");
    let join_local = join_series("join-local", &api_a, &remote_refs, None).await;
    let join_relayed_warm = join_series("join-relayed-warm", &api_b, &remote_refs, None).await;

    // ... and, after R leaves, with b holding no upstream before each pull (cold relay path).
    let r_mids = [relayed.audio_mid.as_str(), relayed.video_mid.as_str()];
    if let Err(e) = relayed
        .sub
        .peer
        .close_force(&api_b, &relayed.sub.session_id, &r_mids)
        .await
    {
        eprintln!("closing R: {e:#}");
    }
    drop(relayed);
    eprintln!("join measurements: {REPS} relayed (cold: no upstream on b before each pull)");
    let join_relayed_cold = join_series(
        "join-relayed-cold",
        &api_b,
        &remote_refs,
        Some((node_b, &pub_session)),
    )
    .await;
    let load_end = loadavg();

    // ---- report -------------------------------------------------------------------------------
    let fmt = |x: f64| format!("{x:8.2}");
    println!();
    println!(
        "one-way latency, ms ({seconds} s window after {WARMUP:?} warm-up; 2 nodes + 3 peers on 127.0.0.1)"
    );
    println!(
        "{:<22}{:>8}{:>9}{:>9}{:>9}{:>9}{:>9}",
        "", "frames", "p50", "p90", "p99", "max", "mean"
    );
    let mut latency_json = serde_json::Map::new();
    for kind in ["audio", "video"] {
        let mut kj = serde_json::Map::new();
        for (who, d) in [
            ("local", l_dist.get(kind)),
            ("relayed", r_dist.get(kind)),
            ("paired_diff", diffs.get(kind)),
        ] {
            let Some(d) = d else {
                println!("{:<22}{:>8}", format!("{kind} {who}"), 0);
                kj.insert(who.into(), Value::Null);
                continue;
            };
            println!(
                "{:<22}{:>8} {} {} {} {} {}",
                format!("{kind} {who}"),
                d.n,
                fmt(d.p50),
                fmt(d.p90),
                fmt(d.p99),
                fmt(d.max),
                fmt(d.mean)
            );
            kj.insert(who.into(), d.json());
        }
        if let (Some(l), Some(r)) = (l_dist.get(kind), r_dist.get(kind)) {
            println!(
                "{:<22}{:>8} {} {} {} {} {}",
                format!("{kind} relayed−local pct"),
                "",
                fmt(r.p50 - l.p50),
                fmt(r.p90 - l.p90),
                fmt(r.p99 - l.p99),
                fmt(r.max - l.max),
                fmt(r.mean - l.mean)
            );
            kj.insert(
                "relay_added".into(),
                json!({"p50_ms": r3(r.p50 - l.p50), "p90_ms": r3(r.p90 - l.p90),
                       "p99_ms": r3(r.p99 - l.p99), "max_ms": r3(r.max - l.max),
                       "mean_ms": r3(r.mean - l.mean)}),
            );
        }
        if let Some(f) = frames_json.get(kind) {
            kj.insert("frames".into(), f.clone());
        }
        latency_json.insert(kind.into(), Value::Object(kj));
    }
    if !slow.is_empty() {
        let first: Vec<String> = slow
            .iter()
            .take(8)
            .map(|(t, who, k, ms)| format!("{t:.2}s {who} {k} {ms:.1}ms"))
            .collect();
        println!(
            "frames over {} ms: {} local, {} relayed; first: {}",
            SLOW_US / 1000,
            slow.iter().filter(|x| x.1 == "local").count(),
            slow.iter().filter(|x| x.1 == "relayed").count(),
            first.join(", ")
        );
    }
    println!("(paired_diff: per frame, relayed latency − local latency of the same frame;");
    println!(" relayed−local pct: difference of the two distributions' percentiles)");

    println!();
    println!(
        "join: from the start of tracks/new to first frame / first keyframe, ms ({REPS} reps)"
    );
    println!(
        "{:<22}{:>5}{:>7}{:>10}{:>10}{:>10}{:>10}{:>10}{:>10}",
        "", "ok", "failed", "frame p50", "frame max", "key p50", "key max", "api p50", "api max"
    );
    for s in [&join_local, &join_relayed_warm, &join_relayed_cold] {
        let (f, k, a) = (
            s.dist(|j| j.first_frame),
            s.dist(|j| j.first_keyframe),
            s.dist(|j| j.api_done),
        );
        println!(
            "{:<22}{:>5}{:>7}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>10.1}{:>10.1}",
            s.label,
            s.joins.len(),
            s.failures.len(),
            f.p50,
            f.max,
            k.p50,
            k.max,
            a.p50,
            a.max
        );
        for e in s.failures.iter().take(3) {
            println!("    failure: {e}");
        }
    }
    println!("(api: tracks/new + renegotiate round trips done; relayed-warm: b already pulls the");
    println!(" tracks for R; relayed-cold: b released its upstream before each pull; joins are");
    println!(
        " {JOIN_PAUSE:?} apart so that the node's 1/s keyframe-request throttle does not apply)"
    );
    println!();
    println!(
        "load average: start {load_start}, after latency window {load_after_latency}, end {load_end}"
    );

    let out = json!({
        "seconds": seconds,
        "warmup_s": WARMUP.as_secs_f64(),
        "window_s": r3(elapsed),
        "bogus_timestamps": {"local": l_bad, "relayed": r_bad},
        "slow_frames": slow_json,
        "latency": latency_json,
        "join": {
            "reps": REPS,
            "pause_between_joins_ms": JOIN_PAUSE.as_millis() as u64,
            "local": join_local.json(),
            "relayed_warm_upstream": join_relayed_warm.json(),
            "relayed_cold_upstream": join_relayed_cold.json(),
        },
        "load": {
            "loadavg_start": load_start,
            "loadavg_after_latency_window": load_after_latency,
            "loadavg_end": load_end,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "machine_busy_percent_during_window": machine_busy,
            "node_a_cpu_percent_of_one_core": node_cpu(cpu0.0, cpu1.0),
            "node_b_cpu_percent_of_one_core": node_cpu(cpu0.1, cpu1.1),
        },
    });
    println!("{out}");
    drop(local);
    drop(publisher);
    Ok(())
}
