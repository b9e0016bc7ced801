//! The cuts: a node's bridge port or a region's uplink goes down, the driver measures who
//! notices and whose media stalls, brings the link back, and measures recovery (members live
//! again, fresh pulls across the link).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use serde_json::{Value, json};
use trackmesh_tests::{CallsClient, Cluster};

use super::figures::TrackRef;
use super::netctl::link;
use super::scenario::{
    Bed, CLIENT_LIFETIME, JOIN_CONCURRENCY, JOIN_TIMEOUT, SimConfig, SubInfo, lock,
};
use crate::load::client::ClientConfig;
use crate::load::procfs::round2;
use crate::load::scenario::{join_bounded, join_subscriber};
use crate::load::stats::Dist;

/// Bound on "the others see it dead" and "live again".
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often membership is looked at.
const STEP: Duration = Duration::from_millis(100);
/// A subscriber without a frame for this long when a cut starts has lost its media already.
const ENDED_AFTER: Duration = Duration::from_secs(1);
/// Bound on "viewers across the cut get media again" after the link is back.
const RESUME_TIMEOUT: Duration = Duration::from_secs(15);
/// A viewer with a frame this recent is receiving.
const FLOWING: Duration = Duration::from_millis(500);

/// Time from `back` until every subscriber in `subs` receives again; `None` past the bound.
async fn wait_resumed(bed: &Bed, subs: &[usize], back: Instant) -> Option<Duration> {
    while back.elapsed() < RESUME_TIMEOUT {
        let now = Instant::now();
        if subs
            .iter()
            .all(|&i| lock(&bed.stalls).idle(i, now) < FLOWING)
        {
            return Some(back.elapsed());
        }
        tokio::time::sleep(STEP).await;
    }
    None
}

pub enum Cut {
    Node(String),
    Region(String),
}

/// Cut `what` off, measure, bring it back, measure. Returns (JSON, text, failures).
pub(super) async fn cut(
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
    // Viewers whose media crossed the cut keep their transceivers: the node re-subscribes once
    // the link is back, with no new pull. Fresh subscribers also pull across the link that came
    // back, in both directions.
    let crossing: Vec<usize> = bed
        .info
        .iter()
        .enumerate()
        .filter(|(i, inf)| {
            !ended.get(*i).copied().unwrap_or(false) && class(inf) == Class::Crossing
        })
        .map(|(i, _)| i)
        .collect();
    let resumed = wait_resumed(bed, &crossing, back).await;
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
    text += &line(Class::Crossing, "media to or from the cut side");
    if !crossing.is_empty() {
        text += &format!(
            "  those {} viewers got media again {} after the link came back, without pulling again\n",
            crossing.len(),
            fmt(resumed)
        );
        if resumed.is_none() {
            failures.push(format!(
                "{label}: viewers across the cut did not get media again within {RESUME_TIMEOUT:?}"
            ));
        }
    }
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
        "crossing_viewers_resumed_s": resumed.map(|d| round2(d.as_secs_f64())),
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
