//! Gossip at scale: 50–300 trackmesh gossip members in one process, each on its own UDP socket
//! on 127.1.x.y (loopback), with the node's own chitchat settings, keys and sealed transport
//! (`trackmesh_node::cluster::membership`). Prints one JSON document:
//!
//! - convergence: time from start until every member sees every other member as live;
//! - dead-node detection: time from shutting one member down until every other member has
//!   dropped it from its live set (first / median / last member);
//! - gossip bytes per node per second in steady state, idle (before the detection) and with
//!   every node rewriting its `load` key every 200 ms (trackmesh's refresh period, the worst
//!   case; after the detection, with the members left). The bytes are the
//!   sealed datagrams the transport sends, i.e. what goes on the wire (plus 28 bytes of IPv4 and
//!   UDP headers each).
//!
//! Usage: `gossip-scale [--members 50,100] [--window SECS] [--transport sealed|memory]`. Each
//! phase gives up after 60 s. `--transport memory` runs chitchat's in-memory transport and counts
//! each message with the seal's fixed overhead: the same bytes, without the CPU the sealed
//! transport's loopback hop takes (2 shared cores do not keep 100 sealed members on time).
//! `--interval-ms`, `--phi` and `--digest` override one of the node's settings, to weigh an
//! alternative before changing the node.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{ChannelTransport, RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::{
    ChitchatConfig, ChitchatEnvelope, ChitchatHandle, ChitchatId, ProtocolVersion, spawn_chitchat,
};
use serde_json::{Value, json};

use trackmesh_node::cluster::gossip_seal;
use trackmesh_node::cluster::membership::{self, MembershipConfig, REFRESH};
use trackmesh_node::ids::NodeTag;
use trackmesh_node::rejects::Rejects;

/// IPv4 + UDP headers, to turn payload bytes into bytes on the wire.
const UDP_IP_OVERHEAD: u64 = 28;
const PHASE_LIMIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);
/// Members whose address every member lists in `--seeds`.
const SEEDS: usize = 3;

/// Sealed bytes and datagrams sent by all members.
#[derive(Default)]
struct Traffic {
    bytes: AtomicU64,
    datagrams: AtomicU64,
}

/// A transport with a count of what its sockets send.
struct Counting<T> {
    inner: T,
    traffic: Arc<Traffic>,
    /// Added to each message's size: the seal, when the inner transport does not seal.
    seal_overhead: usize,
}

#[async_trait]
impl<T: Transport> Transport for Counting<T> {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        Ok(Box::new(CountingSocket {
            inner: self.inner.open(listen_addr).await?,
            traffic: self.traffic.clone(),
            seal_overhead: self.seal_overhead,
        }))
    }
}

struct CountingSocket {
    inner: Box<dyn Socket>,
    traffic: Arc<Traffic>,
    seal_overhead: usize,
}

#[async_trait]
impl Socket for CountingSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let out = self.inner.send(to, envelope).await?;
        if out.num_bytes_sent > 0 {
            self.traffic.bytes.fetch_add(
                (out.num_bytes_sent + self.seal_overhead) as u64,
                Ordering::Relaxed,
            );
            self.traffic.datagrams.fetch_add(1, Ordering::Relaxed);
        }
        Ok(out)
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        self.inner.recv().await
    }
}

/// Overrides of the node's settings, to weigh an alternative.
#[derive(Clone, Copy, Default)]
struct Overrides {
    interval: Option<Duration>,
    phi: Option<f64>,
    digest: Option<ProtocolVersion>,
}

impl Overrides {
    fn apply(self, mut config: ChitchatConfig) -> ChitchatConfig {
        if let Some(interval) = self.interval {
            // The node ties the failure detector's prior and cap to its gossip interval.
            let fd = &mut config.failure_detector_config;
            fd.max_interval = fd
                .max_interval
                .mul_f64(interval.as_secs_f64())
                .div_f64(config.gossip_interval.as_secs_f64());
            fd.initial_interval = interval;
            config.gossip_interval = interval;
        }
        if let Some(phi) = self.phi {
            config.failure_detector_config.phi_threshold = phi;
        }
        if let Some(digest) = self.digest {
            config.protocol_version = digest;
        }
        config
    }
}

/// `n` gossip addresses: 127.1.x.y, one per member, all on one port that was free when asked
/// (the node's transport binds its own codec sockets on 127.0.0.1, so they cannot take a
/// member's address). Another process could take the port in between: that member then fails
/// to start and the run stops with an error.
fn member_addrs(n: usize) -> anyhow::Result<Vec<SocketAddr>> {
    let port = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.local_addr())
        .context("finding a free UDP port")?
        .port();
    Ok((0..n)
        .map(|i| SocketAddr::from(([127, 1, (i / 250) as u8, (i % 250) as u8 + 1], port)))
        .collect())
}

/// Member `i` as a node would describe itself, with values of realistic length.
fn member_config(
    i: usize,
    gossip: SocketAddr,
    seeds: Vec<String>,
) -> anyhow::Result<MembershipConfig> {
    let ip = [10, 0, (i / 250) as u8, (i % 250) as u8 + 1];
    Ok(MembershipConfig {
        node_id: format!("node-{i:03}"),
        tag: NodeTag(0xab00_0000u32 + i as u32),
        region: if i.is_multiple_of(2) {
            "eu-west"
        } else {
            "us-east"
        }
        .into(),
        gossip,
        seeds,
        secret: "gossip-scale-bench-secret".into(),
        secret_previous: None,
        rejects: Arc::new(Rejects::new().context("the rejects metric")?),
        api: format!("http://{}:8080", std::net::Ipv4Addr::from(ip)),
        relay: SocketAddr::from((ip, 7443)),
        media: SocketAddr::from((ip, 7700)),
    })
}

async fn spawn_member(
    i: usize,
    gossip: SocketAddr,
    seeds: Vec<String>,
    over: Overrides,
    traffic: &Arc<Traffic>,
    memory: Option<&ChannelTransport>,
) -> anyhow::Result<ChitchatHandle> {
    let cfg = member_config(i, gossip, seeds)?;
    let config = over.apply(membership::chitchat_config(
        &cfg.node_id,
        1,
        gossip,
        cfg.seeds.clone(),
    ));
    let keys = membership::announced_keys(&cfg);
    let spawned = match memory {
        None => {
            let transport = Counting {
                inner: membership::transport(&cfg),
                traffic: traffic.clone(),
                seal_overhead: 0,
            };
            spawn_chitchat(config, keys, &transport).await
        }
        Some(channels) => {
            let transport = Counting {
                inner: channels.clone(),
                traffic: traffic.clone(),
                seal_overhead: gossip_seal::OVERHEAD,
            };
            spawn_chitchat(config, keys, &transport).await
        }
    };
    spawned.with_context(|| format!("member {i} on {gossip}"))
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

/// Gossip traffic over `window`: sealed and wire bytes, datagrams, per node per second.
async fn traffic(traffic: &Traffic, nodes: usize, window: Duration) -> Value {
    let (bytes0, msgs0) = (
        traffic.bytes.load(Ordering::Relaxed),
        traffic.datagrams.load(Ordering::Relaxed),
    );
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let bytes = traffic.bytes.load(Ordering::Relaxed) - bytes0;
    let msgs = traffic.datagrams.load(Ordering::Relaxed) - msgs0;
    let elapsed = t0.elapsed().as_secs_f64();
    let per = |v: u64| (v as f64 / nodes as f64 / elapsed * 10.0).round() / 10.0;
    json!({
        "window_s": secs(Duration::from_secs_f64(elapsed)),
        "sealed_bytes_per_node_per_s": per(bytes),
        "wire_bytes_per_node_per_s": per(bytes + msgs * UDP_IP_OVERHEAD),
        "datagrams_per_node_per_s": per(msgs),
        "mean_datagram_bytes": bytes.checked_div(msgs).unwrap_or(0),
    })
}

async fn run(n: usize, window: Duration, over: Overrides, sealed: bool) -> anyhow::Result<Value> {
    let counted = Arc::new(Traffic::default());
    // Messages the seal could not carry are dropped in the node (`too_large`): here too.
    let memory = (!sealed).then(|| ChannelTransport::with_mtu(gossip_seal::MAX_PLAINTEXT));
    let addrs = member_addrs(n)?;
    let seeds: Vec<String> = addrs.iter().take(SEEDS).map(|a| a.to_string()).collect();
    let start = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for (i, addr) in addrs.iter().enumerate() {
        handles.push(spawn_member(i, *addr, seeds.clone(), over, &counted, memory.as_ref()).await?);
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
    let idle = traffic(&counted, n, window).await;

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

    // Steady state (the n - 1 members left) with every node rewriting its load key at trackmesh's
    // refresh period: 5 times what a node does (it reports load once a second), the worst case.
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
    let loaded = traffic(&counted, handles.len(), window).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }

    // And none lost one under the load updates either (a starved gossip loop shows here).
    let mut false_dead_after_load = 0;
    for h in &handles {
        false_dead_after_load += (n - 1).saturating_sub(live_count(h).await);
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
        "live_members_wrongly_missing_after_load_updates": false_dead_after_load,
        "traffic_idle": idle,
        "traffic_load_updates_every_200ms": loaded,
    }))
}

/// Gossip at scale: trackmesh gossip members in one process, on UDP sockets on 127.1.x.y, with
/// the node's own settings, keys and sealed transport; prints one JSON document (convergence,
/// dead-node detection, gossip bytes per node per second).
#[derive(clap::Parser, Debug)]
#[command(name = "gossip-scale")]
struct Args {
    /// Cluster sizes to measure, comma-separated (each from 4 to 1000).
    #[arg(long, value_delimiter = ',', default_value = "50,100")]
    members: Vec<usize>,
    /// Seconds of steady state over which gossip bytes are counted (1 to 60).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=60))]
    window: u64,
    /// Override the node's gossip interval, in ms (50 to 5000); the failure detector's prior and
    /// cap follow it as they do in the node.
    #[arg(long, value_parser = clap::value_parser!(u64).range(50..=5000))]
    interval_ms: Option<u64>,
    /// Override the node's phi threshold (1 to 20).
    #[arg(long)]
    phi: Option<f64>,
    /// Override the node's digest encoding: v0 (plain) or v1 (zstd-compressed).
    #[arg(long, value_parser = ["v0", "v1"])]
    digest: Option<String>,
    /// `sealed`: the node's sealed transport over UDP (what a node runs; its extra loopback hop
    /// and sealing per message need more CPU than 2 shared cores have past about 50 members).
    /// `memory`: chitchat's in-memory transport, each message counted with the seal's fixed
    /// overhead added (what the sealed transport would send, without its CPU cost).
    #[arg(long, default_value = "sealed", value_parser = ["sealed", "memory"])]
    transport: String,
}

fn parse_args() -> anyhow::Result<(Vec<usize>, Duration, Overrides, bool)> {
    let args = <Args as clap::Parser>::parse();
    anyhow::ensure!(
        args.members
            .iter()
            .all(|&n| (SEEDS + 1..=1000).contains(&n)),
        "member counts must be within {}..=1000",
        SEEDS + 1
    );
    if let Some(phi) = args.phi {
        anyhow::ensure!((1.0..=20.0).contains(&phi), "--phi must be within 1..=20");
    }
    let over = Overrides {
        interval: args.interval_ms.map(Duration::from_millis),
        phi: args.phi,
        digest: args.digest.as_deref().map(|d| match d {
            "v1" => ProtocolVersion::V1,
            _ => ProtocolVersion::V0,
        }),
    };
    Ok((
        args.members,
        Duration::from_secs(args.window),
        over,
        args.transport == "sealed",
    ))
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
    let (members, window, over, sealed) = parse_args()?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?;
    let mut runs = Vec::new();
    for n in members {
        eprintln!("gossip-scale: {n} members…");
        runs.push(rt.block_on(run(n, window, over, sealed))?);
    }
    let probe: SocketAddr = ([127, 0, 0, 1], 1).into();
    let config = over.apply(membership::chitchat_config("probe", 1, probe, Vec::new()));
    let fd = &config.failure_detector_config;
    let keys_per_node = membership::announced_keys(&member_config(0, probe, Vec::new())?).len();
    let out = json!({
        "transport": if sealed {
            "the node's sealed gossip transport over UDP on 127.1.x.y (loopback)"
        } else {
            "chitchat's in-memory transport; each message counted with the seal's overhead"
        },
        "runtime_worker_threads": threads,
        "settings": {
            "gossip_interval_ms": config.gossip_interval.as_millis() as u64,
            "phi_threshold": fd.phi_threshold,
            "sampling_window_size": fd.sampling_window_size,
            "initial_interval_ms": fd.initial_interval.as_millis() as u64,
            "max_interval_ms": fd.max_interval.as_millis() as u64,
            "digest": format!("{:?}", config.protocol_version),
            "overridden": over.interval.is_some() || over.phi.is_some() || over.digest.is_some(),
            "seeds": SEEDS,
            "keys_per_node": keys_per_node,
        },
        "runs": runs,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
