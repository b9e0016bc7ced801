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
//! 4. Cut a node (when regions have 2+ nodes), then a whole region: time until the others see
//!    it dead, the longest stall of the media that does not need it, then the link comes back:
//!    time until members are live again and until the cut-off media flows again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use str0m::media::MediaKind;
use trackmesh_tests::node::Place;
use trackmesh_tests::{CallsClient, Cluster, ClusterConfig};

use super::figures::{Crossings, Sent, Stalls, TrackRef, crossings};
use super::topology::Topology;
use crate::load::client::{Client, ClientConfig, ClientStats};
use crate::load::media::VideoShape;
use crate::load::procfs::round2;
use crate::load::scenario::{Common, Subscriber, join_bounded, join_subscriber};
use crate::load::stats::{Dist, Histogram};

/// Relay (QUIC) and gossip ports of a placed node (`trackmesh_tests::node`).
const RELAY_PORT: u16 = trackmesh_tests::node::PLACED_RELAY_PORT;
const GOSSIP_PORT: u16 = trackmesh_tests::node::PLACED_GOSSIP_PORT;
/// Bound on the cluster's convergence at start (round trips up to 300 ms).
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on "the others see it dead" and "live again".
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often membership and frame counters are looked at.
const STEP: Duration = Duration::from_millis(100);
/// A subscriber without a frame for this long when a cut starts has lost its media already.
const ENDED_AFTER: Duration = Duration::from_secs(1);
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
/// One `ip` or `iptables` command.
const CMD_TIMEOUT: Duration = Duration::from_secs(10);
/// No client outlives this.
const CLIENT_LIFETIME: Duration = Duration::from_secs(1800);
const JOIN_CONCURRENCY: usize = 8;
/// Relay bytes on a link over the bytes its region's publisher sent: one copy plus the relay's
/// framing is about 1.2; two copies would be 2 or more.
const MAX_COPIES: f64 = 1.6;
const JOIN_TIMEOUT: Duration = Duration::from_secs(180);

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

struct Pub {
    client: Client,
    region: String,
    node: String,
    remote: Vec<TrackRef>,
}

/// Who subscriber `i` is.
#[derive(Clone, Debug)]
struct SubInfo {
    node: String,
    region: String,
    pub_region: String,
    pub_node: String,
}

struct Bed {
    t: Topology,
    cluster: Cluster,
    pubs: Vec<Pub>,
    subs: Arc<Vec<Subscriber>>,
    info: Vec<SubInfo>,
    stalls: Arc<Mutex<Stalls>>,
    video: VideoShape,
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

enum Cut {
    Node(String),
    Region(String),
}

/// Cut `what` off, measure, bring it back, measure. Returns (JSON, text, failures).
async fn cut(
    bed: &Bed,
    what: Cut,
    cfg: &SimConfig,
) -> anyhow::Result<(Value, String, Vec<String>)> {
    let t = &bed.t;
    let (label, cut_nodes): (String, Vec<String>) = match &what {
        Cut::Node(n) => (format!("node {n}"), vec![n.clone()]),
        Cut::Region(r) => (
            format!("region {r}"),
            t.nodes_in(r).iter().map(|n| n.name.clone()).collect(),
        ),
    };
    let others: Vec<String> = t
        .nodes
        .iter()
        .filter(|n| !cut_nodes.contains(&n.name))
        .map(|n| n.name.clone())
        .collect();
    let cut_region = match &what {
        Cut::Region(r) => Some(r.clone()),
        Cut::Node(n) => t
            .nodes
            .iter()
            .find(|x| &x.name == n)
            .map(|x| x.region.clone()),
    };
    let is_region = matches!(what, Cut::Region(_));
    // How each subscriber's media relates to the cut.
    let class = |i: &SubInfo| -> Class {
        let sub_cut = cut_nodes.contains(&i.node);
        let pub_cut = cut_nodes.contains(&i.pub_node);
        if sub_cut && pub_cut {
            Class::Inside
        } else if sub_cut || pub_cut {
            Class::Crossing
        } else if !is_region
            && cut_region.as_deref() == Some(i.region.as_str())
            && i.pub_region != i.region
        {
            // Its hub in this region may have been the cut node.
            Class::Rehubbed
        } else {
            Class::Unaffected
        }
    };

    let at = Instant::now();
    // Subscribers whose media had already ended (a track whose origin a previous cut took)
    // say nothing about this cut.
    let ended: Vec<bool> = {
        let mut st = lock(&bed.stalls);
        let e = (0..bed.subs.len())
            .map(|i| st.idle(i, at) > ENDED_AFTER)
            .collect();
        st.reset(at);
        e
    };
    link(t, &what, false).await?;
    let detected = wait_views(&bed.cluster, &others, &cut_nodes, false, at).await;
    // A cut node is out of the clients' reach too; a cut region's nodes are not (the clients
    // have a leg on every region's LAN).
    let inside = if is_region {
        wait_views(&bed.cluster, &cut_nodes, &others, false, at).await
    } else {
        BTreeMap::new()
    };
    let now = Instant::now();
    let until = (at + cfg.cut_hold).max(now + Duration::from_secs(2));
    tokio::time::sleep(until.saturating_duration_since(now)).await;
    let back = Instant::now();
    let longest = lock(&bed.stalls).longest(back);
    link(t, &what, true).await?;
    let recovered = wait_views(&bed.cluster, &others, &cut_nodes, true, back).await;
    let recovered_inside = wait_views(&bed.cluster, &cut_nodes, &others, true, back).await;
    // Relayed media whose origin was lost ends (its subscribers see the track inactive), so
    // recovery is what a client does: pull again. Fresh subscribers pull across the link that
    // came back, in both directions.
    let (probes, probe_failures) = repull(bed, &cut_nodes, back).await;

    let mut failures = Vec::new();
    let mut text = format!(
        "\ncut {label} for {:.1} s:\n",
        back.duration_since(at).as_secs_f64()
    );
    let fmt = |d: Option<Duration>| {
        d.map_or("never".to_string(), |d| format!("{:.2} s", d.as_secs_f64()))
    };
    text += &format!(
        "  detected dead by every other node after {} (first {})",
        fmt(worst(&detected)),
        fmt(detected.values().flatten().min().copied()),
    );
    if is_region {
        text += &format!(
            "; the cut side saw the others dead after {}",
            fmt(worst(&inside))
        );
    }
    text += "\n";
    if worst(&detected).is_none() {
        failures.push(format!(
            "{label}: not seen dead by every other node within {MEMBERSHIP_TIMEOUT:?}: {detected:?}"
        ));
    }
    let mut stall: BTreeMap<Class, (usize, Duration)> = BTreeMap::new();
    let mut stalled = Vec::new();
    let mut already_ended = 0;
    for (i, inf) in bed.info.iter().enumerate() {
        if ended.get(i).copied().unwrap_or(false) {
            already_ended += 1;
            continue;
        }
        let d = longest.get(i).copied().unwrap_or_default();
        let c = class(inf);
        let e = stall.entry(c).or_default();
        e.0 += 1;
        e.1 = e.1.max(d);
        let must_flow = c == Class::Unaffected || (is_region && c == Class::Inside);
        if must_flow && d > cfg.max_stall {
            stalled.push(format!(
                "{}->{} on {}: {:.2} s",
                inf.pub_region,
                inf.region,
                inf.node,
                d.as_secs_f64()
            ));
        }
    }
    let line = |c: Class, what: &str| -> String {
        match stall.get(&c) {
            Some((n, d)) => format!(
                "  {what} ({n} subscribers): longest stall {:.2} s\n",
                d.as_secs_f64()
            ),
            None => String::new(),
        }
    };
    text += &line(Class::Unaffected, "media between the remaining nodes");
    if is_region {
        text += &line(Class::Inside, "media inside the cut region");
    } else {
        text += &line(
            Class::Rehubbed,
            "cross-region media into the cut node's region, on its other nodes (may move hub)",
        );
    }
    text += &line(Class::Crossing, "media to or from the cut side (ends)");
    if already_ended > 0 {
        text += &format!(
            "  ({already_ended} subscribers whose media had ended before this cut left out)\n"
        );
    }
    if !stalled.is_empty() {
        failures.push(format!(
            "{label}: media that did not need the cut link stalled over {:?}: {stalled:?}",
            cfg.max_stall
        ));
    }
    let repull_worst = if probe_failures.is_empty() {
        probes.iter().map(|p| p.since_back).max()
    } else {
        None
    };
    text += &format!(
        "  link back: live again everywhere after {} (the cut side: {}); {} fresh pulls across it got media after {} (pull -> first frame p50 {})\n",
        fmt(worst(&recovered)),
        fmt(worst(&recovered_inside)),
        probes.len() + probe_failures.len(),
        fmt(repull_worst),
        Dist::of_ms(
            &probes
                .iter()
                .map(|p| p.pull_to_first_ms)
                .collect::<Vec<_>>()
        )
        .map_or("-".to_string(), |d| format!("{:.0} ms", d.p50_ms)),
    );
    if worst(&recovered).is_none() || worst(&recovered_inside).is_none() {
        failures.push(format!(
            "{label}: members not live again within {MEMBERSHIP_TIMEOUT:?}"
        ));
    }
    if !probe_failures.is_empty() {
        failures.push(format!(
            "{label}: pulls across the link that came back failed: {probe_failures:?}"
        ));
    }
    let secs = |m: &BTreeMap<String, Option<Duration>>| -> Value {
        json!(
            m.iter()
                .map(|(k, v)| (k.clone(), v.map(|d| round2(d.as_secs_f64()))))
                .collect::<BTreeMap<_, _>>()
        )
    };
    let stalls: BTreeMap<String, Value> = stall
        .iter()
        .map(|(c, (n, d))| {
            (
                c.name().to_string(),
                json!({"subscribers": n, "longest_stall_s": round2(d.as_secs_f64())}),
            )
        })
        .collect();
    let v = json!({
        "what": label,
        "held_s": round2(back.duration_since(at).as_secs_f64()),
        "detected_s": secs(&detected),
        "cut_side_detected_s": secs(&inside),
        "stalls": stalls,
        "subscribers_ended_before": already_ended,
        "live_again_s": secs(&recovered),
        "cut_side_live_again_s": secs(&recovered_inside),
        "repulls": probes.iter().map(|p| json!({"name": p.name, "since_link_back_s": round2(p.since_back.as_secs_f64()), "pull_to_first_frame_ms": round2(p.pull_to_first_ms)})).collect::<Vec<_>>(),
        "repull_failures": probe_failures,
    });
    Ok((v, text, failures))
}

/// How a subscriber's media relates to a cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    /// Neither end is cut off, nor (node cut) is it relayed into the cut node's region.
    Unaffected,
    /// Both ends are on the cut side.
    Inside,
    /// One end is on the cut side: it ends.
    Crossing,
    /// Node cut: cross-region media into the cut node's region on another node there.
    Rehubbed,
}

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::Unaffected => "remaining",
            Class::Inside => "inside_cut_side",
            Class::Crossing => "to_or_from_cut_side",
            Class::Rehubbed => "into_cut_nodes_region_elsewhere",
        }
    }
}

/// The slowest observer, or None if one never saw it.
fn worst(m: &BTreeMap<String, Option<Duration>>) -> Option<Duration> {
    if m.values().any(Option::is_none) {
        None
    } else {
        m.values().flatten().max().copied()
    }
}

struct Repull {
    name: String,
    since_back: Duration,
    pull_to_first_ms: f64,
}

/// Fresh subscribers across the link that came back at `back`: on each cut node, one per
/// publisher outside; outside, on one node per region, one per publisher on a cut node.
async fn repull(bed: &Bed, cut_nodes: &[String], back: Instant) -> (Vec<Repull>, Vec<String>) {
    let t = &bed.t;
    let mut plan: Vec<(CallsClient, Vec<TrackRef>, ClientConfig)> = Vec::new();
    for n in &t.nodes {
        let Some(r) = t.region(&n.region) else {
            continue;
        };
        let n_cut = cut_nodes.contains(&n.name);
        let first_outside = !n_cut
            && t.nodes_in(&n.region)
                .iter()
                .find(|x| !cut_nodes.contains(&x.name))
                .is_some_and(|x| x.name == n.name);
        for p in &bed.pubs {
            let p_cut = cut_nodes.contains(&p.node);
            if (n_cut && !p_cut) || (first_outside && p_cut) {
                let mut cc =
                    ClientConfig::new(format!("repull-{}-{}", n.name, p.region), CLIENT_LIFETIME);
                cc.video = bed.video;
                cc.ip = r.client_ip;
                plan.push((bed.cluster.client(&n.name), p.remote.clone(), cc));
            }
        }
    }
    let plan = Arc::new(plan);
    let n = plan.len();
    let (done, failures) = join_bounded(n, JOIN_CONCURRENCY, JOIN_TIMEOUT, move |i| {
        let plan = plan.clone();
        async move {
            let (api, remote, cc) = plan
                .get(i)
                .cloned()
                .ok_or_else(|| anyhow!("no probe {i}"))?;
            join_subscriber(&api, cc, &remote, i, false).await
        }
    })
    .await;
    let probes = done
        .into_iter()
        .map(|s| {
            let first = s
                .client
                .with_stats(|st| st.rx.values().filter_map(|t| t.first_frame_at).min());
            let first = first.unwrap_or_else(Instant::now);
            Repull {
                name: s.client.name().to_string(),
                since_back: first.saturating_duration_since(back),
                pull_to_first_ms: first
                    .saturating_duration_since(s.pull_started)
                    .as_secs_f64()
                    * 1000.0,
            }
        })
        .collect();
    (probes, failures)
}

/// Take the cut's link down (`up == false`) or bring it back.
async fn link(t: &Topology, what: &Cut, up: bool) -> anyhow::Result<()> {
    let state = if up { "up" } else { "down" };
    match what {
        Cut::Node(name) => {
            let n = t
                .nodes
                .iter()
                .find(|n| &n.name == name)
                .ok_or_else(|| anyhow!("no node {name}"))?;
            cmd("ip", &["-n", &n.port_ns, "link", "set", &n.port_dev, state]).await?;
        }
        Cut::Region(name) => {
            let r = t.region(name).ok_or_else(|| anyhow!("no region {name}"))?;
            cmd("ip", &["-n", &t.core, "link", "set", &r.uplink_dev, state]).await?;
            if up {
                // Taking a link down removes the routes through it.
                cmd(
                    "ip",
                    &[
                        "-n",
                        &t.core,
                        "route",
                        "replace",
                        &r.lan,
                        "via",
                        &r.uplink_via,
                        "dev",
                        &r.uplink_dev,
                    ],
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// For each observer: when (since `since`) it first saw every target with `live`; None if not
/// within [`MEMBERSHIP_TIMEOUT`].
async fn wait_views(
    cluster: &Cluster,
    observers: &[String],
    targets: &[String],
    live: bool,
    since: Instant,
) -> BTreeMap<String, Option<Duration>> {
    let mut seen: BTreeMap<String, Option<Duration>> =
        observers.iter().map(|o| (o.clone(), None)).collect();
    let max_polls = MEMBERSHIP_TIMEOUT.as_millis() / STEP.as_millis() + 1;
    for _ in 0..max_polls {
        for (o, when) in seen.iter_mut() {
            if when.is_some() {
                continue;
            }
            let Ok(node) = cluster.try_node(o) else {
                continue;
            };
            let view = tokio::time::timeout(STEP * 10, node.cluster_view()).await;
            if let Ok(Ok(view)) = view
                && targets.iter().all(|t| view.is_live(t) == live)
            {
                *when = Some(since.elapsed());
            }
        }
        if seen.values().all(Option::is_some) || since.elapsed() > MEMBERSHIP_TIMEOUT {
            break;
        }
        tokio::time::sleep(STEP).await;
    }
    seen
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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

/// Counting rules (no target) in the core's FORWARD chain, ahead of loss and delay: UDP to or
/// from the relay and gossip ports, per ordered pair of regions.
async fn install_counters(t: &Topology) -> anyhow::Result<()> {
    for a in &t.regions {
        for b in &t.regions {
            if a.name == b.name {
                continue;
            }
            for (what, port) in [("relay", RELAY_PORT), ("gossip", GOSSIP_PORT)] {
                let comment = format!("sim-{what}:{}:{}", a.name, b.name);
                let port = port.to_string();
                cmd(
                    "ip",
                    &[
                        "netns",
                        "exec",
                        &t.core,
                        "iptables",
                        "-w",
                        "5",
                        "-I",
                        "FORWARD",
                        "1",
                        "-s",
                        &a.lan,
                        "-d",
                        &b.lan,
                        "-p",
                        "udp",
                        "-m",
                        "multiport",
                        "--ports",
                        &port,
                        "-m",
                        "comment",
                        "--comment",
                        &comment,
                    ],
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// Bytes counted so far by [`install_counters`]' rules: (kind, from, to) → bytes.
async fn read_counters(
    t: &Topology,
) -> anyhow::Result<BTreeMap<(&'static str, String, String), u64>> {
    let listing = cmd(
        "ip",
        &[
            "netns", "exec", &t.core, "iptables", "-w", "5", "-L", "FORWARD", "-v", "-n", "-x",
        ],
    )
    .await?;
    Ok(parse_counters(&listing))
}

fn parse_counters(listing: &str) -> BTreeMap<(&'static str, String, String), u64> {
    let mut out = BTreeMap::new();
    for line in listing.lines().take(10_000) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let Some(bytes) = cols.get(1).and_then(|b| b.parse::<u64>().ok()) else {
            continue;
        };
        let Some(c) = cols.iter().find(|c| c.starts_with("sim-")) else {
            continue;
        };
        let mut parts = c.trim_start_matches("sim-").split(':');
        let kind = match parts.next() {
            Some("relay") => "relay",
            Some("gossip") => "gossip",
            _ => continue,
        };
        if let (Some(a), Some(b)) = (parts.next(), parts.next()) {
            *out.entry((kind, a.to_string(), b.to_string())).or_default() += bytes;
        }
    }
    out
}

/// Run a command (bounded by [`CMD_TIMEOUT`]); its stdout, or an error with its stderr.
async fn cmd(prog: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::time::timeout(
        CMD_TIMEOUT,
        tokio::process::Command::new(prog)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow!("{prog} {} took over {CMD_TIMEOUT:?}", args.join(" ")))?
    .with_context(|| format!("running {prog}"))?;
    if !out.status.success() {
        bail!(
            "{prog} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_counting_rules() {
        let listing = "\
Chain FORWARD (policy ACCEPT 0 packets, 0 bytes)
    pkts      bytes target     prot opt in     out     source               destination
     120   150000            17   --  *      *       10.90.1.0/24         10.90.2.0/24         multiport ports 7703 /* sim-relay:r1:r2 */
       7      900            17   --  *      *       10.90.2.0/24         10.90.1.0/24         multiport ports 7702 /* sim-gossip:r2:r1 */
    1000  9999999 NFQUEUE    0    --  *      *       10.90.0.0/16         10.90.0.0/16         NFQUEUE num 0
";
        let c = parse_counters(listing);
        assert_eq!(c.get(&("relay", "r1".into(), "r2".into())), Some(&150_000));
        assert_eq!(c.get(&("gossip", "r2".into(), "r1".into())), Some(&900));
        assert_eq!(c.len(), 2);
    }
}
