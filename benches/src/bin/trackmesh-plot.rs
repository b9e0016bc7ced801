//! `trackmesh-plot`: SVG charts of the `trackmesh-load` JSON reports in a directory.
//!
//! ```text
//! trackmesh-plot [--results target/bench-results] [--out benches/charts]
//! ```
//! Reads every `*.json` there that is a fan-out or join-storm report (others are skipped) and
//! writes `fanout-pkts-per-core.svg`, `fanout-p99-latency.svg` and `join-storm.svg`. Fails when
//! a chart would have no data. `benches/run.sh plot` runs it.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Parser;
use trackmesh_benches::plot::{self, MAX_REPORT_BYTES, MAX_REPORTS, Results};

#[derive(Parser, Debug)]
#[command(
    name = "trackmesh-plot",
    about = "SVG charts of trackmesh-load JSON reports (packets/s per core and p99 latency against subscribers, join storm over time)"
)]
struct Cli {
    /// Directory of `trackmesh-load --json` reports.
    #[arg(long, default_value = "target/bench-results")]
    results: PathBuf,
    /// Directory the SVG files are written to.
    #[arg(long, default_value = "benches/charts")]
    out: PathBuf,
}

fn read_reports(dir: &Path) -> anyhow::Result<(Results, usize)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    if paths.len() > MAX_REPORTS {
        bail!("{} holds over {MAX_REPORTS} JSON files", dir.display());
    }
    let mut results = Results::default();
    let mut used = 0;
    for path in &paths {
        let mut text = String::new();
        std::fs::File::open(path)
            .with_context(|| format!("reading {}", path.display()))?
            .take(MAX_REPORT_BYTES + 1)
            .read_to_string(&mut text)
            .with_context(|| format!("reading {}", path.display()))?;
        if text.len() as u64 > MAX_REPORT_BYTES {
            bail!("{}: over {MAX_REPORT_BYTES} bytes", path.display());
        }
        // Other JSON files (gossip-scale's) are not load reports: skipped like other scenarios.
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        if results
            .add(&value)
            .with_context(|| format!("{}", path.display()))?
        {
            used += 1;
        }
    }
    Ok((results, used))
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("trackmesh-plot: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let (results, used) = read_reports(&cli.results)?;
    let charts = plot::charts(&results).with_context(|| format!("in {}", cli.results.display()))?;
    std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    for (name, svg) in charts {
        let path = cli.out.join(name);
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    eprintln!(
        "trackmesh-plot: {used} reports from {}",
        cli.results.display()
    );
    Ok(())
}
