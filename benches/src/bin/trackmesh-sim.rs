//! `trackmesh-sim`: the multi-region test bed's two processes (`deploy/sim/run.sh` starts
//! both inside the namespaces it makes; see `deploy/sim/README.md`).
//!
//! ```text
//! trackmesh-sim delay --matrix '0,20,80;20,0,60;80,60,0' [--queue 0] [--seconds 600]
//! trackmesh-sim run --topology FILE [--duration 10] [--cut-hold 8] [--json FILE] [--check]
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use trackmesh_benches::load::media::VideoShape;
use trackmesh_benches::sim::delay::{Matrix, Plan};
use trackmesh_benches::sim::nfqueue::{self, DelayConfig};
use trackmesh_benches::sim::scenario::{self, SimConfig};
use trackmesh_benches::sim::topology::Topology;

#[derive(Parser, Debug)]
#[command(
    name = "trackmesh-sim",
    about = "The multi-region test bed's delay process and scenario driver (run by deploy/sim/run.sh)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Hold packets queued to NFQUEUE for their region pair's one-way delay (run it in the
    /// namespace routing between regions).
    Delay {
        /// One row per region, `;` between rows, ms: `0,20;20,0`.
        #[arg(long)]
        matrix: String,
        #[arg(long, default_value_t = 0)]
        queue: u16,
        /// Region i's LAN is 10.<base>.<i>.0/24.
        #[arg(long, default_value_t = 90)]
        base: u8,
        /// Packets held at most; more are dropped.
        #[arg(long, default_value_t = 8192)]
        capacity: usize,
        /// Exit after this many seconds (at most 24 h).
        #[arg(long, default_value_t = 3600)]
        seconds: u64,
    },
    /// Start the nodes and clients in the test bed and report (run it in the clients'
    /// namespace).
    Run {
        /// The test bed, as deploy/sim/run.sh wrote it.
        #[arg(long)]
        topology: PathBuf,
        /// The node binary [default: the `trackmesh` next to this executable].
        #[arg(long, env = "TRACKMESH_BIN")]
        node_bin: Option<PathBuf>,
        /// Seconds after set-up before the measured window.
        #[arg(long, default_value_t = 3.0)]
        warmup: f64,
        /// Seconds of the measured window.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Seconds each cut lasts (at least until it is detected, plus 2 s).
        #[arg(long, default_value_t = 8.0)]
        cut_hold: f64,
        #[arg(long, default_value_t = 30)]
        fps: u32,
        #[arg(long, default_value_t = 500)]
        video_kbps: u32,
        /// Skip the single-node cut (it needs 2+ nodes per region anyway).
        #[arg(long)]
        skip_node_cut: bool,
        /// With --check: the longest allowed stall, in seconds, of media that needs nothing
        /// that is cut (a generous bound; frames come every 20-33 ms).
        #[arg(long, default_value_t = 2.0)]
        max_stall: f64,
        /// Exit 1 unless media crossed every pair of regions, each track crossed each link
        /// once, and cuts were detected and recovered from.
        #[arg(long)]
        check: bool,
        /// Write the JSON report here (the human summary goes to stdout).
        #[arg(long)]
        json: Option<PathBuf>,
        /// Extra node argument, repeatable.
        #[arg(long = "node-arg", allow_hyphen_values = true)]
        node_args: Vec<String>,
    },
}

fn secs(x: f64, flag: &str) -> anyhow::Result<Duration> {
    if !x.is_finite() || !(0.0..=3600.0).contains(&x) {
        bail!("{flag} must be between 0 and 3600 seconds");
    }
    Ok(Duration::from_secs_f64(x))
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Delay {
            matrix,
            queue,
            base,
            capacity,
            seconds,
        } => {
            let cfg = DelayConfig {
                queue,
                matrix: Matrix::parse(&matrix)?,
                plan: Plan { base },
                capacity: capacity.clamp(16, 1 << 20),
                lifetime: Duration::from_secs(seconds.min(86_400)),
            };
            let stats = nfqueue::run(&cfg)?;
            eprintln!("trackmesh-sim delay: done: {stats:?}");
            Ok(())
        }
        Cmd::Run {
            topology,
            node_bin,
            warmup,
            duration,
            cut_hold,
            fps,
            video_kbps,
            skip_node_cut,
            max_stall,
            check,
            json,
            node_args,
        } => {
            let bin = match node_bin {
                Some(b) => b,
                None => std::env::current_exe()
                    .context("locating this binary")?
                    .with_file_name("trackmesh"),
            };
            if !bin.is_file() {
                bail!(
                    "node binary {} not found (--node-bin or TRACKMESH_BIN)",
                    bin.display()
                );
            }
            trackmesh_tests::node::set_node_binary(bin);
            let cfg = SimConfig {
                topology: Topology::load(&topology)?,
                warmup: secs(warmup, "--warmup")?,
                duration: secs(duration, "--duration")?,
                cut_hold: secs(cut_hold, "--cut-hold")?,
                video: VideoShape::new(fps, video_kbps, Duration::from_secs(2))?,
                node_args,
                skip_node_cut,
                max_stall: secs(max_stall, "--max-stall")?,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("building the tokio runtime")?;
            // The whole run is bounded, whatever hangs.
            let limit = cfg.warmup + cfg.duration + 2 * cfg.cut_hold + Duration::from_secs(600);
            let out = rt.block_on(async {
                tokio::time::timeout(limit, scenario::run(&cfg))
                    .await
                    .map_err(|_| anyhow::anyhow!("the scenario did not finish within {limit:?}"))?
            });
            rt.shutdown_timeout(Duration::from_secs(1));
            let out = out?;
            print!("{}", out.text);
            if let Some(path) = json {
                std::fs::write(&path, format!("{:#}\n", out.json))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if out.failures.is_empty() {
                println!("\nsim: all checks passed");
            } else {
                println!("\nsim: {} check(s) failed:", out.failures.len());
                for f in &out.failures {
                    println!("  - {f}");
                }
                if check {
                    std::process::exit(1);
                }
            }
            Ok(())
        }
    }
}
