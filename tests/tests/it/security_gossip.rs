//! Gossip is sealed with the cluster secret: forged chitchat messages add no member and change no
//! member's address, a flood of junk costs a few log lines and shows in the rejection counter, a
//! node with another secret does not join, and the secret can be rotated node by node on a live
//! cluster without splitting it or stopping relayed media.
//!
//! The tests run one at a time (a shared lock) so that their clusters do not compete for the CPU.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use chitchat::transport::{Socket, UdpSocket as ChitchatSocket, UdpTransport};
use chitchat::{
    ChitchatConfig, ChitchatEnvelope, ChitchatId, ChitchatMessage, FailureDetectorConfig,
    ProtocolVersion, spawn_chitchat,
};
use tokio::net::UdpSocket;
use trackmesh_tests::flows::MEDIA_TIMEOUT;
use trackmesh_tests::node::{TestNode, free_udp_addr};
use trackmesh_tests::{Cluster, ClusterConfig, Publisher, Subscriber, poll_until};

use trackmesh_tests::serial::cluster_slot as serial;

/// chitchat's cluster id in trackmesh (public: authentication is the seal, not this).
const CLUSTER_ID: &str = "trackmesh";
const ATTACKER_API: &str = "http://127.0.0.1:9/attacker";
/// How long the tests watch for something that must not happen.
const WATCH: Duration = Duration::from_secs(3);
const CONVERGE: Duration = Duration::from_secs(20);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

/// `trackmesh_rejected_total{port="gossip",reason=...}` by reason.
async fn gossip_rejections(node: &TestNode) -> BTreeMap<String, u64> {
    let text = http()
        .get(format!("{}/metrics", node.http_url()))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter(|l| l.starts_with("trackmesh_rejected_total{") && l.contains("port=\"gossip\""))
        .filter_map(|l| {
            let reason = l.split("reason=\"").nth(1)?.split('"').next()?;
            let value = l.rsplit_once(' ')?.1.parse::<f64>().ok()?;
            Some((reason.to_string(), value as u64))
        })
        .collect()
}

fn total(r: &BTreeMap<String, u64>) -> u64 {
    r.values().sum()
}

/// Every (node id → api) in `name`'s view.
async fn apis(cl: &Cluster, name: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let v = cl.node(name).cluster_view().await?;
    Ok(v.members.into_iter().map(|m| (m.node_id, m.api)).collect())
}

/// A `SynAck` in chitchat's own wire format, as a node of the cluster would send it, carrying a
/// node state that claims `victim_id`'s tag at a newer generation, with the attacker's `api`.
///
/// It is made by a real chitchat instance (the attacker's), answering a `Syn` with an empty
/// digest, so its delta holds the attacker's whole state; the bytes are captured on the way.
async fn forged_syn_ack(victim_id: &str, victim_tag: &str) -> anyhow::Result<Vec<u8>> {
    let evil_addr = free_udp_addr()?;
    let generation = u64::MAX / 2;
    let config = ChitchatConfig {
        chitchat_id: ChitchatId::new(victim_id.to_string(), generation, evil_addr),
        cluster_id: CLUSTER_ID.to_string(),
        gossip_interval: Duration::from_secs(3600),
        listen_addr: evil_addr,
        seed_nodes: Vec::new(),
        failure_detector_config: FailureDetectorConfig::default(),
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: ProtocolVersion::V0,
    };
    let keys = [
        ("tag", victim_tag),
        ("region", "r1"),
        ("api", ATTACKER_API),
        ("relay", "127.0.0.1:9"),
        ("media", "127.0.0.1:9"),
        ("draining", "false"),
        ("version", "0.1.0"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()));
    let evil = spawn_chitchat(config, keys.to_vec(), &UdpTransport).await?;

    // chitchat encodes a Syn for us: its socket sends it to a plain socket that keeps the bytes.
    let raw = UdpSocket::bind("127.0.0.1:0").await?;
    let mut encoder = ChitchatSocket::open("127.0.0.1:0".parse()?).await?;
    encoder
        .send(
            raw.local_addr()?,
            ChitchatEnvelope {
                version: ProtocolVersion::V0,
                message: ChitchatMessage::Syn {
                    cluster_id: CLUSTER_ID.to_string(),
                    digest: Default::default(),
                },
            },
        )
        .await?;
    let mut buf = vec![0u8; 65_536];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), raw.recv_from(&mut buf)).await??;
    let syn = buf[..n].to_vec();
    raw.send_to(&syn, evil_addr).await?;
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), raw.recv_from(&mut buf)).await??;
    ensure!(
        from == evil_addr,
        "the answer comes from the attacker's chitchat"
    );
    let syn_ack = buf[..n].to_vec();
    drop(evil);

    // Check that it is what it claims: a SynAck carrying the attacker's api for the victim.
    let mut decoder = ChitchatSocket::open("127.0.0.1:0".parse()?).await?;
    raw.send_to(&syn_ack, decoder.local_addr()?).await?;
    let got = tokio::time::timeout(Duration::from_secs(5), decoder.recv()).await??;
    let ChitchatMessage::SynAck { delta, .. } = &got.envelope.message else {
        bail!("expected a SynAck, got {:?}", got.envelope.message);
    };
    let delta = format!("{delta:?}");
    ensure!(
        delta.contains(ATTACKER_API) && delta.contains(victim_id) && delta.contains(victim_tag),
        "the SynAck carries the forged state: {delta}"
    );
    Ok(syn_ack)
}

/// A forged SynAck sent to every node's gossip port adds no member and changes no api; it is
/// counted as refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_syn_ack_adds_no_member() {
    let _serial = serial().await;
    let cl = Cluster::start(&[("a", "r1"), ("b", "r1"), ("c", "r1")])
        .await
        .expect("cluster");
    let names = cl.names();
    let mut before = BTreeMap::new();
    for n in &names {
        before.insert(n.clone(), apis(&cl, n).await.expect("view"));
    }
    let victim_tag = cl.node("b").tag().to_string();
    let syn_ack = forged_syn_ack("b", &victim_tag).await.expect("forging");
    // Also as a brand-new member.
    let newcomer = forged_syn_ack("intruder", "0badc0de")
        .await
        .expect("forging");

    let attacker = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let t0 = Instant::now();
    let mut rounds = 0;
    while t0.elapsed() < WATCH && rounds < 100 {
        rounds += 1;
        for n in &names {
            let to = cl.node(n).gossip_addr().expect("gossip addr");
            for d in [&syn_ack, &newcomer] {
                attacker.send_to(d, to).await.expect("send");
            }
        }
        for n in &names {
            let now = apis(&cl, n).await.expect("view");
            assert_eq!(
                now, before[n],
                "{n}'s members and their api changed after forged SynAcks"
            );
            assert!(!now.values().any(|a| a == ATTACKER_API), "{now:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in &names {
        let r = gossip_rejections(cl.node(n)).await;
        assert!(
            r.get("malformed").copied().unwrap_or(0) > 0,
            "{n} counts the forged SynAcks as refused: {r:?}"
        );
    }
    cl.wait_converged(CONVERGE)
        .await
        .expect("the cluster is intact");
}

/// 20,000 junk and forged datagrams: a few log lines, all counted, and gossip still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_flood_is_counted_not_logged() {
    let _serial = serial().await;
    // Processes: the test reads the target's own log.
    let process = ClusterConfig {
        process: true,
        ..ClusterConfig::default()
    };
    let cl = Cluster::start_with(&[("a", "r1"), ("b", "r1")], process)
        .await
        .expect("cluster");
    let target = cl.node("a");
    let to = target.gossip_addr().expect("gossip addr");
    let lines_before = target.log().lines().count();
    let syn_ack = forged_syn_ack("b", cl.node("b").tag())
        .await
        .expect("forging");

    let attacker = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let mut junk = Vec::with_capacity(1500);
    for i in 0..20_000u32 {
        let d: &[u8] = match i % 4 {
            0 => &syn_ack,
            1 => b"junk",
            2 => {
                // Our magic and format version, a plausible header and garbage after it.
                junk.clear();
                junk.extend_from_slice(&[b'T', 2]);
                junk.extend((0..200u32).map(|j| (i.wrapping_mul(31).wrapping_add(j)) as u8));
                &junk
            }
            _ => {
                junk.clear();
                junk.extend((0..1200u32).map(|j| (i ^ j) as u8));
                &junk
            }
        };
        attacker.send_to(d, to).await.expect("send");
        if i % 500 == 499 {
            // Let the node drain its socket; dropped datagrams would only weaken the count.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (r, _) = poll_until(
        "the flood to show in trackmesh_rejected_total{port=\"gossip\"}",
        Duration::from_secs(10),
        Duration::from_millis(200),
        async || {
            let r = gossip_rejections(target).await;
            ensure!(total(&r) >= 1_000, "{r:?}");
            Ok(r)
        },
    )
    .await
    .expect("rejections counted");
    eprintln!("gossip rejections after the flood: {r:?}");
    assert!(r.get("malformed").copied().unwrap_or(0) > 0, "{r:?}");

    let log = target.log();
    let new_lines: Vec<&str> = log.lines().skip(lines_before).collect();
    let noisy: Vec<&&str> = new_lines
        .iter()
        .filter(|l| l.contains("gossip") || l.contains("chitchat"))
        .collect();
    assert!(
        noisy.len() <= 10,
        "the flood wrote {} gossip log lines: {:?}",
        noisy.len(),
        &noisy[..noisy.len().min(20)]
    );
    assert!(
        new_lines.len() <= 20,
        "the flood wrote {} log lines in all",
        new_lines.len()
    );
    assert!(
        !log.contains(cl.secret()),
        "the cluster secret appears in the log"
    );
    cl.wait_converged(CONVERGE)
        .await
        .expect("gossip still works after the flood");
}

/// A node with another secret does not join, and its gossip is counted as another key's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_secret_does_not_join() {
    let _serial = serial().await;
    let mut cl = Cluster::start(&[("a", "r1"), ("b", "r1")])
        .await
        .expect("cluster");
    let mut opts = cl.opts("d", "r1", vec![cl.node("a").gossip_addr().expect("gossip")]);
    opts.secret = format!("{}-other", cl.secret());
    cl.add("d", &opts).expect("starting D");
    poll_until(
        "A to count D's gossip as sealed under an unknown key",
        Duration::from_secs(10),
        Duration::from_millis(200),
        async || {
            let r = gossip_rejections(cl.node("a")).await;
            ensure!(r.get("unknown_key").copied().unwrap_or(0) > 0, "{r:?}");
            Ok(())
        },
    )
    .await
    .expect("D's gossip reaches A and is refused");
    let t0 = Instant::now();
    while t0.elapsed() < WATCH {
        for n in ["a", "b"] {
            let v = cl.node(n).cluster_view().await.expect("view");
            assert!(v.member("d").is_none(), "{n} lists D: {v:?}");
        }
        let d = cl.node("d").cluster_view().await.expect("D's view");
        assert!(d.member("a").is_none(), "D lists A: {d:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until `sub` has received `more` frames beyond what it had when called.
async fn frames_grow(sub: &Subscriber, more: u64, who: &str) {
    let start = sub.peer.stats().total_rx_bytes();
    sub.peer
        .wait_until("more media", MEDIA_TIMEOUT, move |s| {
            s.total_rx_bytes() >= start + more
        })
        .await
        .unwrap_or_else(|e| panic!("{who}: media keeps flowing: {e:#}"));
}

async fn subscribe(cl: &Cluster, name: &str, publisher: &Publisher) -> Subscriber {
    let sub = Subscriber::start_retrying(
        &cl.client(name),
        &format!("sub-{name}"),
        &publisher.remote_refs(),
    )
    .await
    .unwrap_or_else(|e| panic!("subscriber on {name}: {e:#}"));
    frames_grow(&sub, 20_000, &format!("new viewer on {name}")).await;
    sub
}

/// Rotating the cluster secret on a running 3-node cluster, one node at a time (every node
/// restarted with NEW+OLD, then every node with NEW only): at every step all members stay live
/// everywhere, a relayed viewer on a node not being restarted keeps receiving media, and the
/// restarted node relays media to and from the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_rotation_keeps_the_cluster_and_media() {
    let _serial = serial().await;
    let mut cl = Cluster::start(&[("a", "r1"), ("b", "r1"), ("c", "r1")])
        .await
        .expect("cluster");
    let old = cl.secret().to_string();
    let new = format!("rotated-{old}");
    let names = ["a", "b", "c"];
    let mut publishers: BTreeMap<&str, Publisher> = BTreeMap::new();
    let steps: Vec<(&str, Option<&str>)> = names
        .iter()
        .map(|n| (*n, Some(old.as_str())))
        .chain(names.iter().map(|n| (*n, None)))
        .collect();
    for (step, (x, previous)) in steps.iter().enumerate() {
        let others: Vec<&str> = names.iter().copied().filter(|n| n != x).collect();
        let (y, z) = (others[0], others[1]);
        if !publishers.contains_key(y) {
            let p = Publisher::start_av(&cl.client(y), &format!("cam-{y}"))
                .await
                .unwrap_or_else(|e| panic!("publisher on {y}: {e:#}"));
            publishers.insert(y, p);
        }
        // A viewer on Z pulls Y's tracks over the relay, across X's restart.
        let viewer = subscribe(&cl, z, &publishers[y]).await;

        let seeds: Vec<SocketAddr> = others
            .iter()
            .map(|n| cl.node(n).gossip_addr().expect("gossip"))
            .collect();
        let mut opts = cl.opts(x, "r1", seeds);
        opts.secret = new.clone();
        if let Some(p) = previous {
            opts.extra.push("--cluster-secret-previous".into());
            opts.extra.push(p.to_string());
        }
        let t0 = Instant::now();
        cl.restart(x, &opts).expect("restarting");
        publishers.remove(x);
        let took = cl
            .wait_converged(CONVERGE)
            .await
            .unwrap_or_else(|e| panic!("step {step} ({x}): the cluster re-forms: {e:#}"));
        eprintln!(
            "step {step}: {x} restarted with {}; all live everywhere after {:.2} s",
            if previous.is_some() { "NEW+OLD" } else { "NEW" },
            (t0.elapsed() + took).as_secs_f64()
        );
        frames_grow(&viewer, 20_000, &format!("step {step}: viewer on {z}")).await;
        // The restarted node pulls from a node holding the other secret set, and the reverse.
        let on_x = subscribe(&cl, x, &publishers[y]).await;
        drop(on_x);
        let px = Publisher::start_av(&cl.client(x), &format!("cam-{x}-{step}"))
            .await
            .unwrap_or_else(|e| panic!("publisher on {x}: {e:#}"));
        let from_x = subscribe(&cl, z, &px).await;
        drop(from_x);
        publishers.insert(x, px);
        drop(viewer);
    }
    // Authentic gossip neither failed to open nor was taken for a replay or for a node's own
    // (every restart brings a new sender id on the same address).
    for n in names {
        let r = gossip_rejections(cl.node(n)).await;
        for reason in ["bad_seal", "stale", "reflected", "replay"] {
            assert_eq!(
                r.get(reason).copied().unwrap_or(0),
                0,
                "{n} refused authentic gossip during the roll: {r:?}"
            );
        }
    }
}
