//! `trackmesh-load`: load scenarios against `trackmesh` nodes started on 127.0.0.1.
//!
//! ```text
//! cargo build --release --bins
//! target/release/trackmesh-load fanout --subscribers 200 --media av --duration 20
//! target/release/trackmesh-load relay | hub | join-storm | churn | soak [flags] [--json]
//! target/release/trackmesh-load simulcast --subscribers 30 --switches 3 --switch-every 2 [--layers q --relayed]
//! target/release/trackmesh-load whip --subscribers 50 \
//!     [--whip-url URL --whep-url URL --token T [--server-pid PID] [--metrics-url URL]]
//! target/release/trackmesh-load vs --a BEFORE_BIN --b AFTER_BIN --pairs 5 -- fanout --media video
//! ```
//! `whip` loads a trackmesh node it starts, or any WHIP/WHEP server given by URL. `vs` runs the
//! scenario after `--` against two node binaries in alternating runs and compares them.
//! The node binary is `--node-bin`, else env `TRACKMESH_BIN`, else the `trackmesh` next to this
//! executable. `--node-cpus 0` starts the nodes on CPU 0 and keeps the generator off it. On a
//! terminal (and without `--json`) it shows the phase of the run on stderr.
//! Every scenario is bounded (sessions ≤ 5000, duration ≤ 3600 s, plus a global
//! deadline) and kills its nodes at the end, or when SIGINT, SIGTERM or SIGHUP stops it.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use trackmesh_benches::load::media::{MediaMix, VideoShape};
use trackmesh_benches::load::report::Report;
use trackmesh_benches::load::scenario::{
    Common, churn::ChurnConfig, fanout::FanoutConfig, hub::HubConfig, join_storm::JoinStormConfig,
    relay::RelayConfig, simulcast::SimulcastConfig, soak::SoakConfig, whip::Target,
    whip::WhipConfig,
};
use trackmesh_benches::load::scenario::{
    churn, fanout, hub, join_storm, relay, simulcast, soak, whip,
};
use trackmesh_benches::load::{cpus, progress, stop};

#[derive(Parser, Debug)]
#[command(
    name = "trackmesh-load",
    about = "Load generator for trackmesh nodes (str0m clients on 127.0.0.1)"
)]
struct Cli {
    /// Print one JSON object instead of the text table.
    #[arg(long, global = true)]
    json: bool,
    /// The node binary [default: the `trackmesh` next to this executable]
    #[arg(long, global = true, env = "TRACKMESH_BIN")]
    node_bin: Option<PathBuf>,
    /// Start the nodes on these CPUs (`taskset -c` list: `0`, `0,2-3`) and keep the generator
    /// and its clients on the others, so the node's CPU figures are its own work [default:
    /// every process on every CPU]
    #[arg(long, global = true)]
    node_cpus: Option<String>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Debug, Clone)]
struct CommonArgs {
    /// Tracks of each publisher: audio, video or av.
    #[arg(long)]
    media: Option<MediaMix>,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Video bitrate.
    #[arg(long, default_value_t = 1000)]
    video_kbps: u32,
    /// Seconds between periodic keyframes (keyframes are ~5x a delta frame).
    #[arg(long, default_value_t = 2.0)]
    keyframe_interval: f64,
    /// Seconds after set-up excluded from the figures.
    #[arg(long)]
    warmup: Option<f64>,
    /// Seconds of measurement (at most 3600).
    #[arg(long)]
    duration: Option<f64>,
    /// Sessions being set up at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Extra node argument, repeatable (e.g. --node-arg=--track-timeout --node-arg=60s).
    #[arg(long = "node-arg", allow_hyphen_values = true)]
    node_args: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// One node: P publishers, N subscribers spread over their tracks.
    Fanout {
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Nodes a (r1) and b (r2): publisher on a, subscribers on b (relayed) and a few on a.
    Relay {
        /// Subscribers on b.
        #[arg(long, default_value_t = 20)]
        subscribers: usize,
        /// Subscribers on a.
        #[arg(long, default_value_t = 3)]
        local_subscribers: usize,
        /// Isolated joins measured on each side after the window.
        #[arg(long, default_value_t = 5)]
        probe_joins: usize,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Nodes a (r1), b and c (r2): publisher on a, subscribers on b and c.
    Hub {
        #[arg(long, default_value_t = 20)]
        subscribers: usize,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// S subscriber sessions set up with bounded concurrency (default media: audio).
    JoinStorm {
        #[arg(long, default_value_t = 500)]
        sessions: usize,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// K subscribers joining, staying 0.5-3 s and leaving, for --duration.
    Churn {
        #[arg(long, default_value_t = 50)]
        subscribers: usize,
        /// How subscribers leave: mixed (tracks/close and dropping, alternately), close, drop.
        #[arg(long, default_value = "mixed")]
        leave: churn::Leave,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Fan-out at moderate load for --duration (default 60 s), node RSS/CPU every 5 s.
    Soak {
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        #[arg(long, default_value_t = 50)]
        subscribers: usize,
        /// Seconds between samples.
        #[arg(long, default_value_t = 5.0)]
        sample_every: f64,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// One publisher sending three simulcast layers (f, h, q at the video bitrate, 1/4 and
    /// 1/16 of it), N subscribers spread over the layers, `tracks/update` layer switches.
    Simulcast {
        #[arg(long, default_value_t = 30)]
        subscribers: usize,
        /// Subscribers moved to their next layer every --switch-every.
        #[arg(long, default_value_t = 3)]
        switches: usize,
        /// Seconds between rounds of switches.
        #[arg(long, default_value_t = 2.0)]
        switch_every: f64,
        /// The layers subscribers are spread over and move between, comma-separated.
        #[arg(long, default_value = "f,h,q")]
        layers: String,
        /// Publisher on node a (region r1), subscribers on node b (r2): reports what b pulls
        /// over the relay.
        #[arg(long)]
        relayed: bool,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// One WHIP publisher and N WHEP viewers of one stream, on a node started here or on any
    /// WHIP/WHEP server (--whip-url, --whep-url, --token).
    Whip {
        #[arg(long, default_value_t = 50)]
        subscribers: usize,
        /// Stream name on the node started here.
        #[arg(long, default_value = "load")]
        stream: String,
        /// WHIP endpoint of another server (with --whep-url and --token).
        #[arg(long, requires_all = ["whep_url", "token"])]
        whip_url: Option<String>,
        #[arg(long, requires_all = ["whip_url", "token"])]
        whep_url: Option<String>,
        /// Bearer token of the other server.
        #[arg(long, env = "TRACKMESH_LOAD_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// That server's process, for its CPU and RSS from /proc.
        #[arg(long, requires = "whip_url")]
        server_pid: Option<u32>,
        /// That server's trackmesh /metrics, if it is a trackmesh node.
        #[arg(long, requires = "whip_url")]
        metrics_url: Option<String>,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// The scenario after `--` against node binaries A and B in alternating runs (A B, B A, …):
    /// each side's median and range, and the median B/A ratio of the pairs.
    Vs {
        /// Node binary A (before).
        #[arg(long)]
        a: PathBuf,
        /// Node binary B (after).
        #[arg(long)]
        b: PathBuf,
        /// Pairs of runs (at most 50).
        #[arg(long, default_value_t = 5)]
        pairs: usize,
        /// The scenario and its flags, e.g. `-- fanout --media video --subscribers 200`.
        #[arg(last = true, required = true)]
        scenario: Vec<String>,
    },
}

fn secs(x: f64, flag: &str) -> anyhow::Result<Duration> {
    if !x.is_finite() || !(0.0..=3600.0).contains(&x) {
        bail!("{flag} must be between 0 and 3600 seconds");
    }
    Ok(Duration::from_secs_f64(x))
}

impl CommonArgs {
    /// Apply the flags given onto a scenario's defaults.
    fn apply(&self, mut c: Common) -> anyhow::Result<Common> {
        if let Some(m) = self.media {
            c.media = m;
        }
        c.video = VideoShape::new(
            self.fps,
            self.video_kbps,
            secs(self.keyframe_interval, "--keyframe-interval")?,
        )?;
        if let Some(w) = self.warmup {
            c.warmup = secs(w, "--warmup")?;
        }
        if let Some(d) = self.duration {
            c.duration = secs(d, "--duration")?;
        }
        c.concurrency = self.concurrency;
        c.node_args = self.node_args.clone();
        c.check()?;
        Ok(c)
    }
}

async fn run(scenario: Scenario) -> anyhow::Result<Report> {
    match scenario {
        Scenario::Fanout {
            publishers,
            subscribers,
            common,
        } => {
            let d = FanoutConfig::default();
            let cfg = FanoutConfig {
                common: common.apply(d.common)?,
                publishers,
                subscribers,
            };
            fanout::run(&cfg).await
        }
        Scenario::Relay {
            subscribers,
            local_subscribers,
            probe_joins,
            common,
        } => {
            let d = RelayConfig::default();
            let cfg = RelayConfig {
                common: common.apply(d.common)?,
                subscribers,
                local_subscribers,
                probe_joins: probe_joins.min(100),
            };
            relay::run(&cfg).await
        }
        Scenario::Hub {
            subscribers,
            common,
        } => {
            let d = HubConfig::default();
            let cfg = HubConfig {
                common: common.apply(d.common)?,
                subscribers,
            };
            hub::run(&cfg).await
        }
        Scenario::JoinStorm { sessions, common } => {
            let d = JoinStormConfig::default();
            let cfg = JoinStormConfig {
                common: common.apply(d.common)?,
                sessions,
            };
            join_storm::run(&cfg).await
        }
        Scenario::Churn {
            subscribers,
            leave,
            common,
        } => {
            let d = ChurnConfig::default();
            let cfg = ChurnConfig {
                common: common.apply(d.common)?,
                subscribers,
                leave,
            };
            churn::run(&cfg).await
        }
        Scenario::Soak {
            publishers,
            subscribers,
            sample_every,
            common,
        } => {
            let d = SoakConfig::default();
            let cfg = SoakConfig {
                common: common.apply(d.common)?,
                publishers,
                subscribers,
                sample_every: secs(sample_every, "--sample-every")?,
            };
            soak::run(&cfg).await
        }
        Scenario::Simulcast {
            subscribers,
            switches,
            switch_every,
            layers,
            relayed,
            common,
        } => {
            let d = SimulcastConfig::default();
            let cfg = SimulcastConfig {
                common: common.apply(d.common)?,
                subscribers,
                switches,
                switch_every: secs(switch_every, "--switch-every")?,
                layers: simulcast::parse_layers(&layers)?,
                relayed,
            };
            simulcast::run(&cfg).await
        }
        Scenario::Whip {
            subscribers,
            stream,
            whip_url,
            whep_url,
            token,
            server_pid,
            metrics_url,
            common,
        } => {
            let d = WhipConfig::default();
            let target = match (whip_url, whep_url, token) {
                (Some(whip_url), Some(whep_url), Some(token)) => Some(Target {
                    whip_url,
                    whep_url,
                    token,
                    server_pid,
                    metrics_url,
                }),
                (None, None, _) => None,
                _ => bail!("--whip-url, --whep-url and --token go together"),
            };
            let cfg = WhipConfig {
                common: common.apply(d.common)?,
                subscribers,
                stream,
                target,
            };
            whip::run(&cfg).await
        }
        Scenario::Vs { .. } => bail!("`vs` runs its scenarios as child processes"),
    }
}

/// The longest report read from a child run: a report is a few KB.
const MAX_CHILD_REPORT: u64 = 8 << 20;

/// `vs`: runs `scenario` with `--json` against each binary in turn, as child processes of this
/// binary, and compares the figures.
fn versus(
    a: PathBuf,
    b: PathBuf,
    pairs: usize,
    scenario: &[String],
    node_cpus: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    use std::io::Read;
    use trackmesh_benches::load::vs::{self, Side};
    if !(1..=50).contains(&pairs) {
        bail!("--pairs must be between 1 and 50");
    }
    if scenario.first().is_some_and(|s| s == "vs") {
        bail!("the scenario after `--` cannot be `vs` itself");
    }
    for bin in [&a, &b] {
        if !bin.is_file() {
            bail!("node binary {} not found", bin.display());
        }
    }
    let me = std::env::current_exe().context("locating this binary")?;
    let stop = stop::Stop::install()?;
    let plan = vs::plan(pairs);
    let mut runs = Vec::with_capacity(plan.len());
    let mut reports = Vec::with_capacity(plan.len());
    for (i, &(pair, side)) in plan.iter().enumerate() {
        if let Some(name) = stop.stopping() {
            bail!("stopped by {name} after {i} of {} runs", plan.len());
        }
        let bin = if side == Side::A { &a } else { &b };
        eprintln!(
            "run {}/{}: pair {} {:?} ({})",
            i + 1,
            plan.len(),
            pair + 1,
            side,
            bin.display()
        );
        let mut child = std::process::Command::new(&me)
            .arg("--json")
            .arg("--node-bin")
            .arg(bin)
            .args(node_cpus.map(|c| ["--node-cpus", c]).into_iter().flatten())
            .args(scenario)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", me.display()))?;
        stop.set_child(Some(child.id()));
        let mut out = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            stdout
                .take(MAX_CHILD_REPORT)
                .read_to_end(&mut out)
                .context("reading a run's report")?;
        }
        let status = child.wait().context("waiting for a run")?;
        stop.set_child(None);
        if let Some(name) = stop.stopping() {
            bail!("stopped by {name} during run {}", i + 1);
        }
        let report: serde_json::Value = if status.success() {
            serde_json::from_slice(&out).context("a run's report is not JSON")?
        } else {
            // A failed run counts as such rather than ending the comparison: its figures are
            // missing from the summary and it is listed.
            eprintln!("run {} failed: {status}", i + 1);
            serde_json::Value::Null
        };
        let figures = vs::figures(&report);
        if !json {
            println!("{}", vs::run_line(pair, side, &figures, status.success()));
        }
        runs.push((pair, side, figures));
        reports.push(serde_json::json!({"pair": pair + 1, "side": format!("{side:?}"), "ok": status.success(), "report": report}));
    }
    if json {
        let summary = vs::summary_json(&runs);
        println!(
            "{}",
            serde_json::json!({
                "a": a.display().to_string(),
                "b": b.display().to_string(),
                "scenario": scenario,
                "runs": reports,
                "summary": summary,
            })
        );
    } else {
        print!("{}", vs::summary_text(&runs, &a, &b));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Scenario::Vs {
        a,
        b,
        pairs,
        scenario,
    } = cli.scenario
    {
        return versus(a, b, pairs, &scenario, cli.node_cpus.as_deref(), cli.json);
    }
    let bin = match cli.node_bin.clone() {
        Some(b) => b,
        None => std::env::current_exe()
            .context("locating this binary")?
            .with_file_name("trackmesh"),
    };
    if !bin.is_file() {
        bail!(
            "node binary {} not found: run `cargo build --release --bins`, or pass --node-bin / set TRACKMESH_BIN",
            bin.display()
        );
    }
    // The scenarios start their nodes through the test crate's harness.
    trackmesh_tests::node::set_node_binary(bin);
    // Before the runtime starts its threads, which inherit this one's CPUs.
    if let Some(list) = cli.node_cpus.clone() {
        let nodes = cpus::parse_list(&list)?;
        let generator = cpus::keep_off(&nodes)?;
        eprintln!("nodes on CPUs {nodes:?}, the generator on {generator:?}");
        trackmesh_tests::node::set_node_cpus(list);
    }
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let json = cli.json;
    // Progress is for a person watching: never in --json mode or when stderr is a file or pipe.
    if !json && std::io::stderr().is_terminal() {
        progress::show();
    }
    // A signal stops the run: dropping it stops its nodes, which the signal's default action
    // would have left running.
    let report = rt.block_on(async {
        let mut signals = stop::Signals::new()?;
        tokio::select! {
            report = run(cli.scenario) => report,
            name = signals.recv() => bail!("stopped by {name}: the run and its nodes are stopped"),
        }
    });
    progress::done();
    let report = report?;
    if json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    // Client tasks still winding down are dropped with the runtime, without waiting.
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}
