//! Cluster membership over chitchat gossip, on a thread and runtime of its own so that media
//! work can never delay heartbeats (a starved gossip loop makes live nodes look dead).
//!
//! Each node gossips a few small keys about itself (tag, region, API URL, relay address, media
//! address, load, drain state, version). The rest of the node reads the result as a
//! [`ClusterView`] from a watch channel, refreshed every [`REFRESH`].

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use chitchat::{ChitchatConfig, ChitchatId, FailureDetectorConfig, NodeState, spawn_chitchat};
use tokio::sync::watch;

use super::gossip_transport::SealedTransport;
use super::view::{ClusterView, Load, Member};
use crate::ids::NodeTag;

/// Gossip round. With the failure detector below a dead node is noticed in about 1–2 s.
const GOSSIP_INTERVAL: Duration = Duration::from_millis(300);
/// chitchat's cluster id. A constant, not derived from the secret: membership is decided by the
/// seal on every datagram, and a rotated secret must not change what chitchat compares on `Syn`.
const CLUSTER_ID: &str = "trackmesh";
/// How often the view is rebuilt from chitchat's state and our own load is published.
const REFRESH: Duration = Duration::from_millis(200);

pub struct MembershipConfig {
    pub node_id: String,
    pub tag: NodeTag,
    pub region: String,
    pub gossip: SocketAddr,
    pub seeds: Vec<String>,
    /// Every gossip datagram is sealed with a key derived from this secret ([`super::gossip_seal`]).
    pub secret: String,
    /// During a rotation: also sealed under and accepted with this one.
    pub secret_previous: Option<String>,
    /// Where refused gossip datagrams are counted.
    pub rejects: Arc<crate::rejects::Rejects>,
    pub api: String,
    pub relay: SocketAddr,
    pub media: SocketAddr,
}

/// Load and drain state this node gossips; updated by the rest of the node.
#[derive(Default)]
pub struct LocalState {
    pub sessions: AtomicU64,
    pub tracks: AtomicU64,
    pub relays: AtomicU64,
    pub draining: AtomicBool,
}

pub struct Membership {
    /// The cluster as gossip sees it. Its sender is dropped when the gossip thread ends, so
    /// `view.has_changed().is_err()` tells that gossip has stopped.
    pub view: watch::Receiver<Arc<ClusterView>>,
    pub local: Arc<LocalState>,
    pub thread: GossipThread,
}

/// The gossip thread: stopped when this is dropped, joined by [`GossipThread::stop_and_join`].
pub struct GossipThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GossipThread {
    /// Stops gossip and waits for the thread to end, so the gossip port is free again when this
    /// returns. Blocks for at most one refresh plus chitchat's own shutdown.
    pub fn stop_and_join(mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::warn!("the gossip thread panicked");
        }
    }
}

impl Drop for GossipThread {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread's loop, which then shuts chitchat down.
        self.stop.take();
    }
}

fn failure_detector() -> FailureDetectorConfig {
    // chitchat's phi is elapsed / mean heartbeat interval; the prior (initial_interval, weighted
    // as 5 samples) is set to the gossip interval so young nodes are judged as quickly as old ones.
    FailureDetectorConfig {
        phi_threshold: 5.0,
        sampling_window_size: 100,
        max_interval: GOSSIP_INTERVAL * 4,
        initial_interval: GOSSIP_INTERVAL,
        dead_node_grace_period: Duration::from_secs(3600),
    }
}

/// Starts gossiping. Fails when the gossip socket cannot be bound.
pub fn start(cfg: MembershipConfig) -> anyhow::Result<Membership> {
    let local = Arc::new(LocalState::default());
    let (view_tx, view_rx) = watch::channel(Arc::new(ClusterView::default()));
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<anyhow::Result<()>>(1);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let state = local.clone();
    // The gossip thread logs where its caller does (one node's own log when several share a
    // process).
    let log = tracing::dispatcher::get_default(|d| d.clone());
    let thread = std::thread::Builder::new()
        .name("gossip".into())
        .spawn(move || {
            let _log = tracing::dispatcher::set_default(&log);
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(run(cfg, state, view_tx, ready_tx, stop_rx));
        })
        .context("starting the gossip thread")?;
    ready_rx
        .recv()
        .context("the gossip thread died at start")??;
    Ok(Membership {
        view: view_rx,
        local,
        thread: GossipThread {
            stop: Some(stop_tx),
            thread: Some(thread),
        },
    })
}

async fn run(
    cfg: MembershipConfig,
    local: Arc<LocalState>,
    view_tx: watch::Sender<Arc<ClusterView>>,
    ready: std::sync::mpsc::SyncSender<anyhow::Result<()>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let generation = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let config = ChitchatConfig {
        chitchat_id: ChitchatId::new(cfg.node_id.clone(), generation, cfg.gossip),
        cluster_id: CLUSTER_ID.to_string(),
        gossip_interval: GOSSIP_INTERVAL,
        listen_addr: cfg.gossip,
        seed_nodes: cfg.seeds.clone(),
        failure_detector_config: failure_detector(),
        marked_for_deletion_grace_period: Duration::from_secs(900),
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: chitchat::ProtocolVersion::V0,
    };
    let keys = vec![
        ("tag".to_string(), cfg.tag.to_string()),
        ("region".to_string(), cfg.region.clone()),
        ("api".to_string(), cfg.api.clone()),
        ("relay".to_string(), cfg.relay.to_string()),
        ("media".to_string(), cfg.media.to_string()),
        ("load".to_string(), Load::default().encode()),
        ("draining".to_string(), "false".to_string()),
        ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
    ];
    let transport = SealedTransport {
        secret: cfg.secret.clone(),
        previous: cfg.secret_previous.clone(),
        rejects: cfg.rejects.clone(),
    };
    let handle = match spawn_chitchat(config, keys, &transport).await {
        Ok(h) => h,
        Err(e) => {
            let _ = ready.send(Err(e.context(format!("gossip on {}", cfg.gossip))));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut tick = tokio::time::interval(REFRESH);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // Sent or dropped: either way the node is stopping.
            _ = &mut stop => break,
        }
        let load = Load {
            sessions: local.sessions.load(Ordering::Relaxed),
            tracks: local.tracks.load(Ordering::Relaxed),
            relays: local.relays.load(Ordering::Relaxed),
        };
        let draining = local.draining.load(Ordering::Relaxed);
        let view = handle
            .with_chitchat(|c| {
                let me = c.self_node_state();
                if me.get("load") != Some(load.encode().as_str()) {
                    me.set("load", load.encode());
                }
                if me.get("draining") != Some(if draining { "true" } else { "false" }) {
                    me.set("draining", draining);
                }
                let live: HashSet<ChitchatId> = c.live_nodes().cloned().collect();
                build_view(&cfg.node_id, c.node_states(), &live)
            })
            .await;
        view_tx.send_if_modified(|current| {
            if **current == view {
                return false;
            }
            *current = Arc::new(view);
            true
        });
        if view_tx.is_closed() {
            break;
        }
    }
    let _ = handle.shutdown().await;
}

/// Builds the view from chitchat's state: the newest generation of each node id wins (a restarted
/// node is a new generation of the same id); nodes with missing or malformed keys are skipped.
fn build_view(
    self_id: &str,
    states: &BTreeMap<ChitchatId, NodeState>,
    live: &HashSet<ChitchatId>,
) -> ClusterView {
    let mut newest: BTreeMap<&str, (&ChitchatId, &NodeState)> = BTreeMap::new();
    for (id, st) in states {
        let keep = newest
            .get(&*id.node_id)
            .is_none_or(|(old, _)| old.generation_id < id.generation_id);
        if keep {
            newest.insert(&id.node_id, (id, st));
        }
    }
    let mut members = Vec::new();
    for (id, st) in newest.values() {
        let parsed = (|| {
            Some(Member {
                node_id: id.node_id.to_string(),
                tag: NodeTag(u32::from_str_radix(st.get("tag")?, 16).ok()?),
                region: st.get("region")?.to_string(),
                api: super::view::checked_api(st.get("api")?)?,
                relay: st.get("relay")?.parse().ok()?,
                media: st.get("media").unwrap_or_default().to_string(),
                live: live.contains(*id) || &*id.node_id == self_id,
                draining: st.get("draining") == Some("true"),
                load: Load::decode(st.get("load").unwrap_or_default()),
                version: st.get("version").unwrap_or_default().to_string(),
            })
        })();
        if let Some(m) = parsed {
            members.push(m);
        }
    }
    ClusterView {
        self_id: self_id.to_string(),
        members,
    }
}
