//! DataChannel figures: messages per second and latency through one node and across one relay
//! hop. A two-node cluster runs in this process (`trackmesh_tests::Cluster`); a publisher on node
//! a sends on channel `chat`, one subscriber on a and one on b receive. Clients are the test kit's
//! str0m client on threads, over loopback UDP.
//!
//! - throughput: `--messages` messages of `--size` bytes written as fast as the publisher's SCTP
//!   buffer takes them; messages/s = received / (last arrival − first write), per subscriber;
//!   what the node's bounds dropped on the way is reported, not retried;
//! - latency: `--paced` messages at `--rate` per second; write → arrival at each subscriber, p50
//!   and p99 (one clock: every client is in this process).
//!
//! Usage: `dc-bench [--messages 20000] [--size 256] [--paced 2000] [--rate 500]`. Prints JSON,
//! with each node's DataChannel counters and drops by reason after the burst.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use reqwest::Method;
use serde_json::json;
use str0m::channel::{ChannelConfig, ChannelId};
use trackmesh_tests::{CallsClient, Cluster, Peer};

#[derive(Parser)]
struct Args {
    /// Messages in the throughput phase.
    #[arg(long, default_value_t = 20_000)]
    messages: u64,
    /// Bytes per message (at least 16: sequence and send time).
    #[arg(long, default_value_t = 256)]
    size: usize,
    /// Messages in the latency phase.
    #[arg(long, default_value_t = 2000)]
    paced: u64,
    /// Messages per second in the latency phase.
    #[arg(long, default_value_t = 500)]
    rate: u64,
}

const TIMEOUT: Duration = Duration::from_secs(20);

async fn established(api: &CallsClient, name: &str) -> anyhow::Result<(Peer, String)> {
    let peer = Peer::new(name)?;
    let sid = api.sessions_new().await?.session_id;
    let (status, body) = api
        .raw(
            Method::POST,
            &format!("sessions/{sid}/datachannels/establish"),
            None,
        )
        .await?;
    if status != 200 {
        bail!("establish: {status} {body}");
    }
    let offer = body["sessionDescription"]["sdp"].as_str().context("sdp")?;
    let answer = peer.accept_offer(offer).await?;
    peer.run(|c| {
        Ok(c.rtc().direct_api().create_data_channel(ChannelConfig {
            label: "server-events".into(),
            negotiated: Some(0),
            ..ChannelConfig::default()
        }))
    })
    .await?;
    api.renegotiate(&sid, &answer).await?;
    peer.wait_connected(TIMEOUT).await?;
    Ok((peer, sid))
}

async fn open(
    api: &CallsClient,
    peer: &Peer,
    sid: &str,
    item: serde_json::Value,
) -> anyhow::Result<ChannelId> {
    let (status, body) = api
        .raw(
            Method::POST,
            &format!("sessions/{sid}/datachannels/new"),
            Some(json!({ "dataChannels": [item] })),
        )
        .await?;
    let id = body["dataChannels"][0]["id"].as_u64().context("id")?;
    if status != 200 {
        bail!("new: {status} {body}");
    }
    let id = u16::try_from(id)?;
    let chan = peer
        .run(move |c| {
            Ok(c.rtc().direct_api().create_data_channel(ChannelConfig {
                label: "chat".into(),
                negotiated: Some(id),
                ..ChannelConfig::default()
            }))
        })
        .await?;
    for _ in 0..1000 {
        if peer
            .run(move |c| Ok(c.rtc().channel(chan).is_some()))
            .await?
        {
            return Ok(chan);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("channel did not open")
}

/// Writes messages `from..to` (sequence + send time in ns since `base`); returns how many the
/// SCTP buffer took.
async fn write(
    peer: &Peer,
    chan: ChannelId,
    base: Instant,
    from: u64,
    to: u64,
    size: usize,
) -> anyhow::Result<u64> {
    peer.run(move |c| {
        let mut n = from;
        let mut ch = c.rtc().channel(chan).context("channel closed")?;
        while n < to {
            let mut msg = vec![0u8; size];
            msg[..8].copy_from_slice(&n.to_be_bytes());
            let t = base.elapsed().as_nanos() as u64;
            msg[8..16].copy_from_slice(&t.to_be_bytes());
            if !ch.write(true, &msg)? {
                break;
            }
            n += 1;
        }
        Ok(n - from)
    })
    .await
}

/// (sequence, latency) of each message taken from `peer`.
async fn take(
    peer: &Peer,
    chan: ChannelId,
    base: Instant,
) -> anyhow::Result<Vec<(u64, Duration, Instant)>> {
    let msgs = peer.run(|c| Ok(c.take_channel_messages_timed())).await?;
    Ok(msgs
        .into_iter()
        .filter(|(id, d, _)| *id == chan && d.len() >= 16)
        .map(|(_, d, at)| {
            let seq = u64::from_be_bytes(d[..8].try_into().unwrap_or_default());
            let sent = base
                + Duration::from_nanos(u64::from_be_bytes(d[8..16].try_into().unwrap_or_default()));
            (seq, at.saturating_duration_since(sent), at)
        })
        .collect())
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let size = args.size.max(16);
    let cl = Cluster::start(&[("a", "r1"), ("b", "r1")]).await?;
    let (api_a, api_b) = (cl.client("a"), cl.client("b"));
    let (publisher, psid) = established(&api_a, "pub").await?;
    let pchan = open(
        &api_a,
        &publisher,
        &psid,
        json!({"location": "local", "dataChannelName": "chat"}),
    )
    .await?;
    let mut subs = Vec::new();
    for (name, api) in [("same node", &api_a), ("one relay hop", &api_b)] {
        let (peer, sid) = established(api, name).await?;
        let chan = open(
            api,
            &peer,
            &sid,
            json!({"location": "remote", "sessionId": psid, "dataChannelName": "chat"}),
        )
        .await?;
        subs.push((name, peer, chan));
    }
    let base = Instant::now();

    // Throughput.
    let t0 = Instant::now();
    let mut sent = 0;
    let deadline = t0 + Duration::from_secs(120);
    let mut got: Vec<Vec<(u64, Duration, Instant)>> = vec![Vec::new(); subs.len()];
    let (mut last_total, mut last_progress) = (0usize, Instant::now());
    while Instant::now() < deadline {
        if sent < args.messages {
            sent += write(&publisher, pchan, base, sent, args.messages, size).await?;
        }
        for (i, (_, peer, chan)) in subs.iter().enumerate() {
            got[i].extend(take(peer, *chan, base).await?);
        }
        if got.iter().all(|g| g.len() as u64 >= args.messages) {
            break;
        }
        // Everything written and nothing new for a second: the rest was dropped on the way.
        let total: usize = got.iter().map(Vec::len).sum();
        if total != last_total {
            (last_total, last_progress) = (total, Instant::now());
        } else if sent >= args.messages && last_progress.elapsed() > Duration::from_secs(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut out = serde_json::Map::new();
    for (i, (name, _, _)) in subs.iter().enumerate() {
        let g = &got[i];
        let last = g.iter().map(|x| x.2).max().unwrap_or(t0);
        let secs = last.saturating_duration_since(t0).as_secs_f64();
        let in_order = g.windows(2).all(|w| w[0].0 < w[1].0);
        out.insert(
            format!("throughput, {name}"),
            json!({"received": g.len(), "sent": sent, "in_order": in_order,
                   "dropped": sent.saturating_sub(g.len() as u64),
                   "messages_per_s": (g.len() as f64 / secs).round(),
                   "mbit_per_s": (g.len() as f64 * size as f64 * 8.0 / secs / 1e6 * 10.0).round() / 10.0}),
        );
    }

    // Where the messages that did not arrive were dropped, per node and reason.
    for node in ["a", "b"] {
        let m = cl.node(node).scrape().await?;
        let drops: serde_json::Map<String, serde_json::Value> = m
            .iter()
            .filter(|(k, v)| {
                **v > 0.0
                    && (k.starts_with("trackmesh_packets_dropped_total")
                        && (k.contains("datachannel_")
                            || k.contains("relay_")
                            || k.contains("send_buffer"))
                        || k.starts_with("trackmesh_datachannel_messages_total"))
            })
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        out.insert(
            format!("counters after the burst, node {node}"),
            drops.into(),
        );
    }

    // Latency, paced.
    let mut lat: Vec<Vec<Duration>> = vec![Vec::new(); subs.len()];
    let every = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let start = Instant::now();
    for k in 0..args.paced {
        let seq = args.messages + k;
        write(&publisher, pchan, base, seq, seq + 1, size).await?;
        for (i, (_, peer, chan)) in subs.iter().enumerate() {
            lat[i].extend(take(peer, *chan, base).await?.into_iter().map(|x| x.1));
        }
        let next = start + every * (k as u32 + 1);
        tokio::time::sleep_until(next.into()).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, (name, peer, chan)) in subs.iter().enumerate() {
        lat[i].extend(take(peer, *chan, base).await?.into_iter().map(|x| x.1));
        let n = lat[i].len();
        out.insert(
            format!("latency, {name}"),
            json!({"messages": n, "rate_per_s": args.rate, "p50_ms": pct(&mut lat[i], 0.5), "p99_ms": pct(&mut lat[i], 0.99)}),
        );
    }
    out.insert("size_bytes".into(), json!(size));
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
