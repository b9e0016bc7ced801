//! Measures a node's CPU while N subscribers pull the tracks of an existing publisher.
//!
//! ```text
//! cargo run --release -p trackmesh-tests --example fanout -- \
//!     BASE_URL SECRET SESSION_ID TRACK[,TRACK...] SUBSCRIBERS SECONDS NODE_PID
//! ```
//! The subscribers are str0m peers in this process (no decoding), so the node's CPU is not
//! competing with N video decoders. Prints one JSON line with the figures.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use trackmesh_tests::api::CallsClient;
use trackmesh_tests::flows::Subscriber;

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading /proc stat")?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, secret, session, tracks, n, seconds, pid] = args.as_slice() else {
        bail!(
            "usage: fanout BASE_URL SECRET SESSION_ID TRACK[,TRACK] SUBSCRIBERS SECONDS NODE_PID"
        );
    };
    let n: usize = n.parse().context("SUBSCRIBERS")?;
    let seconds: u64 = seconds.parse().context("SECONDS")?;
    let pid: u32 = pid.parse().context("NODE_PID")?;
    let api = CallsClient::new(base, secret);
    let remote: Vec<(String, String)> = tracks
        .split(',')
        .map(|t| (session.clone(), t.to_string()))
        .collect();

    let mut subs = Vec::with_capacity(n);
    for i in 0..n {
        subs.push(Subscriber::start(&api, &format!("sub{i}"), &remote).await?);
    }
    // Let every subscriber get its keyframe and the publisher settle its bitrate.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let rx0: Vec<u64> = subs
        .iter()
        .map(|s| s.peer.stats().total_rx_bytes())
        .collect();
    let t0 = Instant::now();
    let c0 = cpu_ticks(pid)?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let c1 = cpu_ticks(pid)?;
    let elapsed = t0.elapsed().as_secs_f64();
    let rx1: Vec<u64> = subs
        .iter()
        .map(|s| s.peer.stats().total_rx_bytes())
        .collect();

    // Linux reports /proc times in USER_HZ, which is 100 on every mainstream configuration.
    let cpu_seconds = (c1 - c0) as f64 / 100.0;
    let kbps: Vec<f64> = rx0
        .iter()
        .zip(&rx1)
        .map(|(a, b)| (b - a) as f64 * 8.0 / elapsed / 1000.0)
        .collect();
    let min_kbps = kbps.iter().cloned().fold(f64::INFINITY, f64::min);
    let total_kbps: f64 = kbps.iter().sum();
    println!(
        "{{\"subscribers\":{n},\"seconds\":{elapsed:.1},\"node_cpu_percent_of_one_core\":{:.1},\
         \"per_subscriber_kbps_min\":{min_kbps:.0},\"forwarded_kbps_total\":{total_kbps:.0}}}",
        100.0 * cpu_seconds / elapsed
    );
    if min_kbps <= 0.0 {
        bail!("a subscriber received nothing during the measurement");
    }
    Ok(())
}
