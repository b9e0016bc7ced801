//! Gossip at scale: 50–100 chitchat members in one process over chitchat's in-memory
//! `ChannelTransport`, with trackmesh's membership settings. Prints one JSON document:
//!
//! - convergence: time from start until every member sees every other member as live;
//! - dead-node detection: time from shutting one member down until every other member has
//!   dropped it from its live set (first / median / last member);
//! - gossip bytes per node per second in steady state, idle and with every node rewriting its
//!   `load` key every 200 ms (trackmesh's refresh period, the worst case).
//!
//! Usage: `gossip-scale [--members 50,100] [--window SECS]`. Each phase gives up after 60 s.
//!
//! The membership settings are the node's own (`trackmesh_node::cluster::membership`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chitchat::transport::ChannelTransport;
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, spawn_chitchat};
use serde_json::{Value, json};

// trackmesh's own membership settings, so the measurement runs what a node runs.
use trackmesh_node::cluster::membership::{
    GOSSIP_INTERVAL, MARKED_FOR_DELETION_GRACE, REFRESH, failure_detector,
};

/// chitchat's UDP payload limit, which its delta sizing assumes (`MAX_UDP_DATAGRAM_PAYLOAD_SIZE`).
const MTU: usize = 65_507;
/// IPv4 + UDP headers, to turn payload bytes into bytes on the wire.
const UDP_IP_OVERHEAD: u64 = 28;
const PHASE_LIMIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);
/// Members whose address every member lists in `--seeds`.
const SEEDS: usize = 3;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 7946))
}

/// The keys a trackmesh node gossips, with values of realistic length.
fn keys(i: usize) -> Vec<(String, String)> {
    let ip = addr(i).ip();
    vec![
        ("tag".into(), format!("{:08x}", 0xab00_0000u32 + i as u32)),
        (
            "region".into(),
            if i.is_multiple_of(2) {
                "eu-west"
            } else {
                "us-east"
            }
            .into(),
        ),
        ("api".into(), format!("http://{ip}:8080")),
        ("relay".into(), format!("{ip}:7443")),
        ("media".into(), format!("{ip}:7700")),
        ("load".into(), "0,0,0".into()),
        ("draining".into(), "false".into()),
        ("version".into(), "0.1.0".into()),
    ]
}

async fn spawn_member(i: usize, transport: &ChannelTransport) -> anyhow::Result<ChitchatHandle> {
    let config = ChitchatConfig {
        chitchat_id: ChitchatId::new(format!("node-{i:03}"), 1, addr(i)),
        cluster_id: "trackmesh-bench".into(),
        gossip_interval: GOSSIP_INTERVAL,
        listen_addr: addr(i),
        seed_nodes: (0..SEEDS).map(|s| addr(s).to_string()).collect(),
        failure_detector_config: failure_detector(),
        marked_for_deletion_grace_period: MARKED_FOR_DELETION_GRACE,
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: chitchat::ProtocolVersion::V0,
    };
    spawn_chitchat(config, keys(i), transport).await
}

async fn live_count(h: &ChitchatHandle) -> usize {
    h.with_chitchat(|c| c.live_nodes().count()).await
}

async fn sees_live(h: &ChitchatHandle, id: &ChitchatId) -> bool {
    h.with_chitchat(|c| c.live_nodes().any(|n| n == id)).await
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// Gossip traffic over `window`: payload and estimated wire bytes, messages, per node per second.
async fn traffic(transport: &ChannelTransport, nodes: usize, window: Duration) -> Value {
    let before = transport.statistics();
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let after = transport.statistics();
    let elapsed = t0.elapsed().as_secs_f64();
    let bytes = after.num_bytes_total - before.num_bytes_total;
    let msgs = after.num_messages_total - before.num_messages_total;
    let per = |v: u64| (v as f64 / nodes as f64 / elapsed * 10.0).round() / 10.0;
    json!({
        "window_s": secs(Duration::from_secs_f64(elapsed)),
        "payload_bytes_per_node_per_s": per(bytes),
        "wire_bytes_per_node_per_s": per(bytes + msgs * UDP_IP_OVERHEAD),
        "messages_per_node_per_s": per(msgs),
        "mean_message_bytes": bytes.checked_div(msgs).unwrap_or(0),
    })
}

async fn run(n: usize, window: Duration) -> anyhow::Result<Value> {
    let transport = ChannelTransport::with_mtu(MTU);
    let start = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        handles.push(spawn_member(i, &transport).await?);
    }
    let spawned = start.elapsed();

    // Convergence: every member has all n members (itself included) in its live set.
    let mut convergence = None;
    while start.elapsed() < PHASE_LIMIT {
        let mut all = true;
        for h in &handles {
            if live_count(h).await < n {
                all = false;
                break;
            }
        }
        if all {
            convergence = Some(start.elapsed());
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    let Some(convergence) = convergence else {
        anyhow::bail!("{n} members did not converge within {PHASE_LIMIT:?}");
    };

    // Steady state, nothing changing but heartbeats.
    let idle = traffic(&transport, n, window).await;

    // Steady state with every node rewriting its load key at trackmesh's refresh period.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (i, h) in handles.iter().enumerate() {
        let cc = h.chitchat();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            let mut k = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                k += 1;
                let load = format!("{},{},{}", k % 500 + i as u64, k % 1000, k % 7);
                cc.lock().await.self_node_state().set("load", load);
            }
        }));
    }
    let loaded = traffic(&transport, n, window).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }

    // Dead-node detection: shut the last member down (not a seed), then wait until no one
    // else lists it as live.
    let victim = handles.pop().context("no members")?;
    let victim_id = victim.chitchat_id().clone();
    let killed = Instant::now();
    victim.shutdown().await?;
    let mut seen_dead: Vec<Option<Duration>> = vec![None; handles.len()];
    while killed.elapsed() < PHASE_LIMIT && seen_dead.iter().any(Option::is_none) {
        for (h, seen) in handles.iter().zip(seen_dead.iter_mut()) {
            if seen.is_none() && !sees_live(h, &victim_id).await {
                *seen = Some(killed.elapsed());
            }
        }
        tokio::time::sleep(POLL).await;
    }
    let mut times: Vec<Duration> = seen_dead.iter().flatten().copied().collect();
    times.sort();
    let detection = if times.len() == seen_dead.len() {
        json!({
            "first_s": secs(times[0]),
            "median_s": secs(times[times.len() / 2]),
            "all_s": secs(times[times.len() - 1]),
        })
    } else {
        json!({ "timed_out": true, "detected_by": times.len(), "of": seen_dead.len() })
    };

    // No live set may lose a member that is still up.
    let mut false_dead = 0;
    for h in &handles {
        false_dead += (n - 1).saturating_sub(live_count(h).await);
    }

    for h in handles {
        h.shutdown().await?;
    }
    Ok(json!({
        "members": n,
        "spawn_s": secs(spawned),
        "convergence_s": secs(convergence),
        "dead_detection": detection,
        "live_members_wrongly_missing_after_detection": false_dead,
        "traffic_idle": idle,
        "traffic_load_updates_every_200ms": loaded,
    }))
}

/// Gossip at scale: chitchat members in one process with trackmesh's membership settings;
/// prints one JSON document (convergence, dead-node detection, gossip bytes per node per second).
#[derive(clap::Parser, Debug)]
#[command(name = "gossip-scale")]
struct Args {
    /// Cluster sizes to measure, comma-separated (each from 4 to 1000).
    #[arg(long, value_delimiter = ',', default_value = "50,100")]
    members: Vec<usize>,
    /// Seconds of steady state over which gossip bytes are counted (1 to 60).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=60))]
    window: u64,
}

fn parse_args() -> anyhow::Result<(Vec<usize>, Duration)> {
    let args = <Args as clap::Parser>::parse();
    anyhow::ensure!(
        args.members
            .iter()
            .all(|&n| (SEEDS + 1..=1000).contains(&n)),
        "member counts must be within {}..=1000",
        SEEDS + 1
    );
    Ok((args.members, Duration::from_secs(args.window)))
}

fn main() -> std::process::ExitCode {
    // One line on error, not a backtrace: this is a tool people run by hand.
    match measure() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gossip-scale: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn measure() -> anyhow::Result<()> {
    let (members, window) = parse_args()?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let mut runs = Vec::new();
    for n in members {
        eprintln!("gossip-scale: {n} members…");
        runs.push(rt.block_on(run(n, window))?);
    }
    let fd = failure_detector();
    let out = json!({
        "transport": "chitchat::transport::ChannelTransport (in memory, serialized like UDP)",
        "runtime_worker_threads": threads,
        "settings": {
            "gossip_interval_ms": GOSSIP_INTERVAL.as_millis() as u64,
            "phi_threshold": fd.phi_threshold,
            "sampling_window_size": fd.sampling_window_size,
            "initial_interval_ms": fd.initial_interval.as_millis() as u64,
            "max_interval_ms": fd.max_interval.as_millis() as u64,
            "seeds": SEEDS,
            "keys_per_node": keys(0).len(),
        },
        "runs": runs,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
