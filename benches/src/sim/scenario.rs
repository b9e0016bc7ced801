//! The test bed's driver. It runs inside the clients' namespace, which has one address on
//! every region's LAN, so each client reaches its own region's nodes without crossing the
//! "internet" and all clients share one clock (one-way latency from stamped frames).
//!
//! 1. Start one `trackmesh` process per node namespace (`ip netns exec`), one cluster.
//! 2. One publisher (audio + video) per region, on the region's first node; on every node, one
//!    subscriber per region's publisher (its own region's included, as the baseline).
//! 3. Measure a window: latency per region pair, pull → first frame per region, bytes per
//!    inter-region link (iptables counters in the core), and which tracks cross which link
//!    (the nodes' `/admin/relay`).
//! 4. Cut a node (when regions have 2+ nodes), then a whole region ([`super::cut`]): time until
//!    the others see it dead, the longest stall of the media that does not need it, then the
//!    link comes back: time until members are live again and until fresh pulls across it get
//!    media (relayed media whose origin was seen dead ends, by design).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use str0m::media::MediaKind;
use trackmesh_tests::node::Place;
use trackmesh_tests::{CallsClient, Cluster, ClusterConfig};

use super::cut::{Cut, cut};
use super::figures::{Crossings, Sent, Stalls, TrackRef, crossings};
use super::netctl::{install_counters, read_counters};
use super::topology::Topology;
use crate::load::client::{Client, ClientConfig, ClientStats};
use crate::load::media::VideoShape;
use crate::load::procfs::round2;
use crate::load::scenario::{Common, Subscriber, join_bounded, join_subscriber};
use crate::load::stats::{Dist, Histogram};

/// Bound on the cluster's convergence at start (round trips up to 300 ms).
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often every subscriber's frame counter is read (the stalls' resolution).
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// No client outlives this.
pub(super) const CLIENT_LIFETIME: Duration = Duration::from_secs(1800);
pub(super) const JOIN_CONCURRENCY: usize = 8;
/// Relay bytes on a link over the bytes its region's publisher sent: one copy plus the relay's
/// framing is about 1.2; two copies would be 2 or more.
const MAX_COPIES: f64 = 1.6;
pub(super) const JOIN_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub topology: Topology,
    pub warmup: Duration,
    pub duration: Duration,
    /// How long each cut lasts (at least until it is detected, plus two seconds).
    pub cut_hold: Duration,
    pub video: VideoShape,
    pub node_args: Vec<String>,
    /// Skip the single-node cut.
    pub skip_node_cut: bool,
    /// `--check`: a stall longer than this of media that does not need the cut region fails
    /// the run (a generous bound: frames come every 20-33 ms).
    pub max_stall: Duration,
}

/// The report, and what `--check` found wrong.
pub struct Outcome {
    pub json: Value,
    pub text: String,
    pub failures: Vec<String>,
}

pub(super) struct Pub {
    pub client: Client,
    pub region: String,
    pub node: String,
    pub remote: Vec<TrackRef>,
}

/// Who subscriber `i` is.
#[derive(Clone, Debug)]
pub(super) struct SubInfo {
    pub node: String,
    pub region: String,
    pub pub_region: String,
    pub pub_node: String,
}

/// The running test bed, as the cuts need it.
pub(super) struct Bed {
    pub t: Topology,
    pub cluster: Cluster,
    pub pubs: Vec<Pub>,
    pub subs: Arc<Vec<Subscriber>>,
    pub info: Vec<SubInfo>,
    pub stalls: Arc<Mutex<Stalls>>,
    pub video: VideoShape,
}

pub async fn run(cfg: &SimConfig) -> anyhow::Result<Outcome> {
    let t = &cfg.topology;
    let regions: Vec<String> = t.regions.iter().map(|r| r.name.clone()).collect();
    let mut report = serde_json::Map::new();
    let mut text = String::new();
    let mut failures = Vec::new();
    report.insert(
        "topology".into(),
        json!({
            "regions": regions,
            "nodes": t.nodes.iter().map(|n| json!({"name": n.name, "region": n.region, "ip": n.ip.to_string()})).collect::<Vec<_>>(),
            "matrix_ms": t.matrix,
        }),
    );
    let matrix = super::delay::Matrix::parse(&t.matrix)?;
    let delay_ms = |a: &str, b: &str| -> u64 {
        let i = regions.iter().position(|r| r == a).unwrap_or(usize::MAX);
        let j = regions.iter().position(|r| r == b).unwrap_or(usize::MAX);
        if i == j {
            0
        } else {
            matrix.delay(i, j).as_millis() as u64
        }
    };

    // 1. The cluster.
    let spec: Vec<(&str, &str)> = t
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.region.as_str()))
        .collect();
    let places: Vec<Place> = t
        .nodes
        .iter()
        .map(|n| Place {
            netns: n.ns.clone(),
            ip: n.ip,
        })
        .collect();
    let sessions = t.regions.len() * (1 + t.nodes.len());
    let common = Common {
        video: cfg.video,
        ..Common::default()
    };
    let t0 = Instant::now();
    let cluster = Cluster::start_with(
        &spec,
        ClusterConfig {
            seed_all: true,
            extra: [common.node_args(sessions), cfg.node_args.clone()].concat(),
            converge_timeout: CONVERGE_TIMEOUT,
            places,
            process: true,
            ..ClusterConfig::default()
        },
    )
    .await
    .context("starting one node per node namespace")?;
    let converged = t0.elapsed();
    text += &format!(
        "cluster: {} nodes in {} regions, all live everywhere after {:.1} s\n",
        t.nodes.len(),
        regions.len(),
        converged.as_secs_f64()
    );
    install_counters(t).await?;

    // 2. Publishers and subscribers.
    let mut pubs = Vec::new();
    for r in &t.regions {
        let node = t
            .nodes_in(&r.name)
            .first()
            .map(|n| n.name.clone())
            .ok_or_else(|| anyhow!("region {} has no node", r.name))?;
        let mut cc = ClientConfig::new(format!("pub-{}", r.name), CLIENT_LIFETIME);
        cc.video = cfg.video;
        cc.ip = r.client_ip;
        let client = Client::start(cc).await?;
        let tracks = [
            (format!("{}-audio", r.name), MediaKind::Audio),
            (format!("{}-video", r.name), MediaKind::Video),
        ];
        let p = trackmesh_tests::Publisher::start_on(&cluster.client(&node), client, &tracks)
            .await
            .with_context(|| format!("publisher in {} on {node}", r.name))?;
        let remote = p.remote_refs();
        pubs.push(Pub {
            client: p.peer,
            region: r.name.clone(),
            node,
            remote,
        });
    }
    let mut info = Vec::new();
    let mut plan: Vec<(CallsClient, Vec<TrackRef>, ClientConfig)> = Vec::new();
    for n in &t.nodes {
        let ip = t
            .region(&n.region)
            .map(|r| r.client_ip)
            .ok_or_else(|| anyhow!("no region {}", n.region))?;
        for p in &pubs {
            let mut cc = ClientConfig::new(format!("sub-{}-{}", n.name, p.region), CLIENT_LIFETIME);
            cc.video = cfg.video;
            cc.ip = ip;
            plan.push((cluster.client(&n.name), p.remote.clone(), cc));
            info.push(SubInfo {
                node: n.name.clone(),
                region: n.region.clone(),
                pub_region: p.region.clone(),
                pub_node: p.node.clone(),
            });
        }
    }
    let plan = Arc::new(plan);
    let n_subs = plan.len();
    let (mut joined, join_failures) =
        join_bounded(n_subs, JOIN_CONCURRENCY, JOIN_TIMEOUT, move |i| {
            let plan = plan.clone();
            async move {
                let (api, remote, cc) = plan
                    .get(i)
                    .cloned()
                    .ok_or_else(|| anyhow!("no subscriber {i}"))?;
                join_subscriber(&api, cc, &remote, i, true).await
            }
        })
        .await;
    if !join_failures.is_empty() {
        bail!(
            "{} of {n_subs} subscribers did not get media: {:?}",
            join_failures.len(),
            join_failures.iter().take(5).collect::<Vec<_>>()
        );
    }
    joined.sort_by_key(|s| s.group);
    let subs = Arc::new(joined);
    let stalls = Arc::new(Mutex::new(Stalls::new(n_subs, Instant::now())));
    let sampler = tokio::spawn(sample_frames(subs.clone(), stalls.clone()));
    let bed = Bed {
        t: t.clone(),
        cluster,
        pubs,
        subs,
        info,
        stalls,
        video: cfg.video,
    };
    text += &format!(
        "clients: {} publishers (audio + video, {} kbit/s video), {n_subs} subscribers\n",
        bed.pubs.len(),
        cfg.video.kbps
    );

    // Pull → first frame, per subscriber's region, cross-region and local apart.
    let mut first: BTreeMap<(String, bool), Vec<f64>> = BTreeMap::new();
    for (s, i) in bed.subs.iter().zip(&bed.info) {
        let ms = s.client.with_stats(|st| first_frame_ms(st, s.pull_started));
        if let Some(ms) = ms {
            first
                .entry((i.region.clone(), i.region == i.pub_region))
                .or_default()
                .push(ms);
        }
    }
    let mut pull_rows = Vec::new();
    text += "\npull -> first frame (ms), by the subscriber's region:\n";
    for r in &regions {
        let cross = first.get(&(r.clone(), false)).and_then(|v| Dist::of_ms(v));
        let local = first.get(&(r.clone(), true)).and_then(|v| Dist::of_ms(v));
        text += &format!(
            "  {r:<4} from other regions {}   from its own {}\n",
            short(&cross),
            short(&local)
        );
        pull_rows.push(json!({"region": r, "cross_region": cross, "same_region": local}));
    }
    report.insert("pull_to_first_frame".into(), json!(pull_rows));

    // 3. The measured window.
    tokio::time::sleep(cfg.warmup).await;
    for s in bed.subs.iter() {
        s.client.reset_window();
    }
    for p in &bed.pubs {
        p.client.reset_window();
    }
    let c0 = read_counters(t).await?;
    let m0 = relay_out(&bed).await?;
    let w0 = Instant::now();
    tokio::time::sleep(cfg.duration).await;
    let window = w0.elapsed();
    let c1 = read_counters(t).await?;
    let m1 = relay_out(&bed).await?;
    let cross = track_crossings(&bed).await?;
    // What each region's publisher sent in the window: one copy of its tracks.
    let sent: BTreeMap<String, u64> = bed
        .pubs
        .iter()
        .map(|p| {
            let b = p
                .client
                .with_stats(|st| st.tx.values().map(|t| t.window_bytes).sum());
            (p.region.clone(), b)
        })
        .collect();

    // Latency per (publisher's region, subscriber's region).
    let mut lat: BTreeMap<(String, String), (Histogram, u64, usize)> = BTreeMap::new();
    let mut silent = Vec::new();
    for (s, i) in bed.subs.iter().zip(&bed.info) {
        let e = lat
            .entry((i.pub_region.clone(), i.region.clone()))
            .or_default();
        s.client.with_stats(|st| {
            let mut frames = 0;
            for tr in st.rx.values() {
                e.0.merge(&tr.window.latency);
                frames += tr.window.frames;
                e.1 += tr.window.lost;
            }
            if frames == 0 {
                silent.push(s.client.name().to_string());
            }
        });
        e.2 += 1;
    }
    if !silent.is_empty() {
        failures.push(format!(
            "subscribers that received nothing in the window: {silent:?}"
        ));
    }
    text += &format!(
        "\none-way media latency (ms, stamped frames, {:.0} s window), publisher -> subscriber region:\n",
        window.as_secs_f64()
    );
    let mut lat_rows = Vec::new();
    for ((a, b), (h, lost, n)) in &lat {
        let d = h.dist();
        let link = delay_ms(a, b);
        text += &format!(
            "  {a:>4} -> {b:<4} link {link:>3} ms   {}   lost frames {lost}  ({n} subscribers)\n",
            short(&d)
        );
        lat_rows.push(json!({"from": a, "to": b, "link_delay_ms": link, "latency": d, "lost_frames": lost, "subscribers": n}));
    }
    report.insert("latency".into(), json!(lat_rows));

    // Bytes and tracks per inter-region link.
    let secs = window.as_secs_f64().max(1e-6);
    let kbps = |b: u64| round2(b as f64 * 8.0 / 1000.0 / secs);
    text += "\ninter-region links (window): tracks crossing (nodes' /admin/relay), relay and gossip bytes (iptables in the core):\n";
    let mut link_rows = Vec::new();
    for a in &regions {
        for b in &regions {
            if a == b {
                continue;
            }
            let key = format!("{a}->{b}");
            let lc = cross.links.get(&key).cloned().unwrap_or_default();
            let delta = |kind: &'static str| {
                let k = (kind, a.clone(), b.clone());
                let (x0, x1) = (c0.get(&k).copied(), c1.get(&k).copied());
                x1.unwrap_or(0).saturating_sub(x0.unwrap_or(0))
            };
            let (relay, gossip) = (delta("relay"), delta("gossip"));
            // Relay bytes over the publisher's own: about 1 (plus framing) for one copy.
            let copies = sent
                .get(a)
                .filter(|&&b| b > 0)
                .map(|&b| round2(relay as f64 / b as f64));
            text += &format!(
                "  {key:<10} delay {:>3} ms  tracks {:>2} (crossings {:>2})  relay {:>8.1} kbit/s = {:>4} x the publisher's bytes  gossip {:>6.1} kbit/s\n",
                delay_ms(a, b),
                lc.tracks,
                lc.crossings,
                kbps(relay),
                copies.map_or("-".to_string(), |c| format!("{c:.2}")),
                kbps(gossip)
            );
            link_rows.push(json!({"from": a, "to": b, "delay_ms": delay_ms(a, b), "tracks": lc.tracks, "crossings": lc.crossings, "relay_bytes": relay, "relay_kbps": kbps(relay), "relay_bytes_per_published_byte": copies, "gossip_bytes": gossip, "gossip_kbps": kbps(gossip)}));
        }
    }
    // Every publisher's 2 tracks are viewed in every other region.
    let expected = 2;
    // A second copy of a region's tracks on a link would make it 2 or more.
    let over: Vec<&Value> = link_rows
        .iter()
        .filter(|l| {
            l["relay_bytes_per_published_byte"]
                .as_f64()
                .is_some_and(|c| c >= MAX_COPIES)
        })
        .collect();
    if !over.is_empty() {
        failures.push(format!(
            "links carrying {MAX_COPIES} or more times the bytes their region's publisher sent: {over:?}"
        ));
    }
    let ok = cross.violations.is_empty()
        && link_rows
            .iter()
            .all(|l| l["tracks"] == json!(expected) && l["crossings"] == json!(expected));
    text += &format!(
        "  each track crosses each link once per direction that needs it: {}\n",
        if ok { "yes" } else { "NO" }
    );
    if !ok {
        failures.push(format!(
            "tracks do not cross each link exactly once: {:?}",
            cross.violations
        ));
    }
    let mut by_region: BTreeMap<String, f64> = BTreeMap::new();
    for n in &t.nodes {
        let d = m1.get(&n.name).copied().unwrap_or(0.0) - m0.get(&n.name).copied().unwrap_or(0.0);
        *by_region.entry(n.region.clone()).or_default() += d;
    }
    let by_region: BTreeMap<String, f64> = by_region
        .into_iter()
        .map(|(r, b)| (r, round2(b * 8.0 / 1000.0 / secs)))
        .collect();
    text += &format!(
        "  relay media sent per region, nodes' own trackmesh_relay_bytes_total{{direction=\"out\"}} (kbit/s): {by_region:?}\n"
    );
    report.insert("links".into(), json!(link_rows));
    report.insert("crossing_violations".into(), json!(cross.violations));
    report.insert("node_relay_out_kbps_by_region".into(), json!(by_region));
    report.insert("window_s".into(), json!(round2(secs)));

    // 4. Cuts.
    let multi = t.regions.iter().all(|r| t.nodes_in(&r.name).len() >= 2);
    if multi && !cfg.skip_node_cut {
        // The last region's last node: never a publisher's node.
        let victim = t
            .nodes_in(&regions[regions.len() - 1])
            .last()
            .map(|n| n.name.clone())
            .ok_or_else(|| anyhow!("no node to cut"))?;
        let (v, txt, f) = cut(&bed, Cut::Node(victim), cfg).await?;
        text += &txt;
        failures.extend(f);
        report.insert("node_cut".into(), v);
    } else {
        report.insert("node_cut".into(), Value::Null);
        text += "\nnode cut: skipped (needs 2+ nodes in every region)\n";
    }
    let (v, txt, f) = cut(&bed, Cut::Region(regions[regions.len() - 1].clone()), cfg).await?;
    text += &txt;
    failures.extend(f);
    report.insert("region_cut".into(), v);

    sampler.abort();
    let mut errors = Vec::new();
    for p in &bed.pubs {
        errors.extend(
            p.client
                .with_stats(|s| s.errors.clone())
                .into_iter()
                .take(5),
        );
    }
    report.insert("publisher_errors".into(), json!(errors));
    report.insert("failures".into(), json!(failures));
    report.insert("passed".into(), json!(failures.is_empty()));
    drop(bed);
    Ok(Outcome {
        json: Value::Object(report),
        text,
        failures,
    })
}

fn total_frames(s: &ClientStats) -> u64 {
    s.rx.values().map(|t| t.frames).sum()
}

/// Every [`SAMPLE_EVERY`], each subscriber's frame count into `stalls` (until aborted, at most
/// the clients' lifetime).
async fn sample_frames(subs: Arc<Vec<Subscriber>>, stalls: Arc<Mutex<Stalls>>) {
    let max = CLIENT_LIFETIME.as_millis() / SAMPLE_EVERY.as_millis();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    for _ in 0..max {
        tick.tick().await;
        let counts: Vec<u64> = subs
            .iter()
            .map(|s| s.client.with_stats(total_frames))
            .collect();
        let now = Instant::now();
        let mut st = lock(&stalls);
        for (i, c) in counts.into_iter().enumerate() {
            st.observe(i, c, now);
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn first_frame_ms(s: &ClientStats, pull_started: Instant) -> Option<f64> {
    s.rx.values()
        .filter_map(|t| t.first_frame_at)
        .min()
        .map(|f| f.saturating_duration_since(pull_started).as_secs_f64() * 1000.0)
}

fn short(d: &Option<Dist>) -> String {
    match d {
        Some(d) => format!("p50 {:>6.1}  p99 {:>6.1}  (n={})", d.p50_ms, d.p99_ms, d.n),
        None => "no samples".to_string(),
    }
}

/// Each node's `/admin/relay` downstream entries, checked against who publishes and views what.
async fn track_crossings(bed: &Bed) -> anyhow::Result<Crossings> {
    let mut sent = Vec::new();
    for n in &bed.t.nodes {
        let view = bed
            .cluster
            .try_node(&n.name)?
            .relay_view()
            .await
            .with_context(|| format!("/admin/relay of {}", n.name))?;
        for d in view.downstream {
            sent.push(Sent {
                from_node: n.name.clone(),
                peer: d.peer,
                track: (d.session_id, d.track_name),
            });
        }
    }
    let region_of: BTreeMap<String, String> = bed
        .t
        .nodes
        .iter()
        .map(|n| (bed.cluster.id(&n.name), n.region.clone()))
        .collect();
    let mut origin = BTreeMap::new();
    for p in &bed.pubs {
        for r in &p.remote {
            origin.insert(r.clone(), p.region.clone());
        }
    }
    let mut needed = BTreeSet::new();
    for inf in &bed.info {
        if let Some(p) = bed.pubs.iter().find(|p| p.region == inf.pub_region) {
            for r in &p.remote {
                needed.insert((r.clone(), inf.region.clone()));
            }
        }
    }
    Ok(crossings(&sent, &region_of, &origin, &needed))
}

/// Each node's relay media bytes sent so far (its own metrics).
async fn relay_out(bed: &Bed) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for n in &bed.t.nodes {
        let m = bed
            .cluster
            .try_node(&n.name)?
            .scrape()
            .await
            .with_context(|| format!("/metrics of {}", n.name))?;
        let v = m
            .get("trackmesh_relay_bytes_total{direction=\"out\"}")
            .copied()
            .unwrap_or(0.0);
        out.insert(n.name.clone(), v);
    }
    Ok(out)
}
