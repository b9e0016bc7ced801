//! Cluster membership over chitchat gossip, on a thread and runtime of its own so that media
//! work can never delay heartbeats (a starved gossip loop makes live nodes look dead).
//!
//! Each node gossips a few small keys about itself (tag, region, API URL, relay address, media
//! address, load, drain state, version). The rest of the node reads the result as a
//! [`ClusterView`] from a watch channel, refreshed every 200 ms.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use chitchat::{ChitchatConfig, ChitchatId, FailureDetectorConfig, NodeState, spawn_chitchat};
use tokio::sync::watch;

use super::gossip_transport::SealedTransport;
use super::streams::{self, StreamAnnounce};
use super::view::{ClusterView, Load, Member, checked_api, decode_flag};
use crate::ids::NodeTag;
use crate::rejects::{Port, Rejects};
use crate::rooms::announce::{self as room_announce, RoomAnnounce};

/// Gossip round. With the failure detector below a dead node is noticed in about 1–2 s.
pub const GOSSIP_INTERVAL: Duration = Duration::from_millis(300);
/// chitchat's cluster id. A constant, not derived from the secret: membership is decided by the
/// seal on every datagram, and a rotated secret must not change what chitchat compares on `Syn`.
const CLUSTER_ID: &str = "trackmesh";
/// How often the view is rebuilt from chitchat's state and our own load is published.
pub const REFRESH: Duration = Duration::from_millis(200);
/// chitchat's wire format: V1 compresses the digest (zstd), which every gossip message but the
/// last of an exchange carries, with an entry for every member. That entry is most of what
/// gossip costs: V1 cuts it from 101 to 15 KB/s per node at 100 members (BENCHMARKS.md,
/// "Gossip at scale"). Every trackmesh release has used chitchat 0.13, which decodes both
/// formats (and a reply echoes the format of the message it answers), so nodes of either format
/// mix.
pub const PROTOCOL_VERSION: chitchat::ProtocolVersion = chitchat::ProtocolVersion::V1;
/// How long chitchat keeps a member's deleted keys before forgetting them.
pub const MARKED_FOR_DELETION_GRACE: Duration = Duration::from_secs(900);

/// What gossip announces about this node and where it binds and joins.
pub struct MembershipConfig {
    /// This node's name in the cluster.
    pub node_id: String,
    /// The prefix of this node's session ids.
    pub tag: NodeTag,
    /// This node's region.
    pub region: String,
    /// Where gossip binds.
    pub gossip: SocketAddr,
    /// Gossip addresses of nodes to join through.
    pub seeds: Vec<String>,
    /// Every gossip datagram is sealed with a key derived from this secret ([`super::gossip_seal`]).
    pub secret: String,
    /// During a rotation: also sealed under and accepted with this one.
    pub secret_previous: Option<String>,
    /// Where refused gossip datagrams are counted.
    pub rejects: Arc<Rejects>,
    /// The HTTP API base URL other nodes forward calls to.
    pub api: String,
    /// The relay address other nodes dial.
    pub relay: SocketAddr,
    /// The media address clients reach.
    pub media: SocketAddr,
}

/// Load and drain state this node gossips; updated by the rest of the node.
#[derive(Default)]
pub struct LocalState {
    /// Sessions held now.
    pub sessions: AtomicU64,
    /// Publications held now.
    pub tracks: AtomicU64,
    /// Relay links now.
    pub relays: AtomicU64,
    /// Set by a drain: new sessions go to other nodes.
    pub draining: AtomicBool,
    /// Set when the node drains to exit (SIGTERM): its drain cannot be undone, as it exits at
    /// the end of it anyway.
    pub stopping: AtomicBool,
    /// The named streams this node publishes, announced as one key each.
    pub streams: super::streams::LocalStreams,
    /// The rooms this node owns or has participants in, announced as one key each.
    pub rooms: crate::rooms::announce::LocalRooms,
}

/// A running gossip member: the view it keeps, the state it announces, its thread.
pub struct Membership {
    /// The cluster as gossip sees it. Its sender is dropped when the gossip thread ends, so
    /// `view.has_changed().is_err()` tells that gossip has stopped.
    pub view: watch::Receiver<Arc<ClusterView>>,
    /// What this node announces; the rest of the node updates it.
    pub local: Arc<LocalState>,
    /// The gossip thread, stopped on shutdown.
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

/// The failure detector every member runs (and the gossip-at-scale measurement reuses).
pub fn failure_detector() -> FailureDetectorConfig {
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

/// The chitchat settings every member runs (and the gossip-at-scale measurement reuses).
pub fn chitchat_config(
    node_id: &str,
    generation: u64,
    gossip: SocketAddr,
    seeds: Vec<String>,
) -> ChitchatConfig {
    ChitchatConfig {
        chitchat_id: ChitchatId::new(node_id.to_string(), generation, gossip),
        cluster_id: CLUSTER_ID.to_string(),
        gossip_interval: GOSSIP_INTERVAL,
        listen_addr: gossip,
        seed_nodes: seeds,
        failure_detector_config: failure_detector(),
        marked_for_deletion_grace_period: MARKED_FOR_DELETION_GRACE,
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: PROTOCOL_VERSION,
    }
}

/// The keys a member announces when it starts (the measurement reuses them too).
pub fn announced_keys(cfg: &MembershipConfig) -> Vec<(String, String)> {
    vec![
        ("tag".to_string(), cfg.tag.to_string()),
        ("region".to_string(), cfg.region.clone()),
        ("api".to_string(), cfg.api.clone()),
        ("relay".to_string(), cfg.relay.to_string()),
        ("media".to_string(), cfg.media.to_string()),
        ("load".to_string(), Load::default().encode()),
        ("draining".to_string(), "false".to_string()),
        ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
    ]
}

/// The sealed transport a member gossips over (the measurement reuses it too).
pub fn transport(cfg: &MembershipConfig) -> SealedTransport {
    SealedTransport {
        secret: cfg.secret.clone(),
        previous: cfg.secret_previous.clone(),
        rejects: cfg.rejects.clone(),
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
    let config = chitchat_config(&cfg.node_id, generation, cfg.gossip, cfg.seeds.clone());
    let keys = announced_keys(&cfg);
    let handle = match spawn_chitchat(config, keys, &transport(&cfg)).await {
        Ok(h) => h,
        Err(e) => {
            let _ = ready.send(Err(e.context(format!("gossip on {}", cfg.gossip))));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut tick = tokio::time::interval(REFRESH);
    let mut bad_values = BadValues::default();
    // Runs (node id and generation) ever seen live, to tell a run that died from one not heard
    // from enough yet; only runs chitchat still holds are kept.
    let mut ever_live: HashSet<ChitchatId> = HashSet::new();
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
        let (view, bad) = handle
            .with_chitchat(|c| {
                let me = c.self_node_state();
                if me.get("load") != Some(load.encode().as_str()) {
                    me.set("load", load.encode());
                }
                if me.get("draining") != Some(if draining { "true" } else { "false" }) {
                    me.set("draining", draining);
                }
                sync_streams(me, streams::KEY_PREFIX, &local.streams.snapshot());
                sync_streams(me, room_announce::KEY_PREFIX, &local.rooms.snapshot());
                let live: HashSet<ChitchatId> = c.live_nodes().cloned().collect();
                let states = c.node_states();
                ever_live.retain(|id| states.contains_key(id));
                ever_live.extend(live.iter().cloned());
                build_view(&cfg.node_id, states, &live, &ever_live)
            })
            .await;
        bad_values.report(bad, &cfg.rejects);
        view_tx.send_if_modified(|current| {
            if **current == view {
                return false;
            }
            report_duplicates(&current.duplicate_ids, &view.duplicate_ids);
            *current = Arc::new(view);
            true
        });
        if view_tx.is_closed() {
            break;
        }
    }
    let _ = handle.shutdown().await;
}

/// Makes this node's stream keys what `wanted` says: new and changed ones set, ended ones
/// deleted (a tombstone, so other nodes learn the stream ended).
fn sync_streams(me: &mut NodeState, prefix: &str, wanted: &BTreeMap<String, String>) {
    let gone: Vec<String> = me
        .iter_prefix(prefix)
        .filter(|(k, _)| !wanted.contains_key(*k))
        .map(|(k, _)| k.to_string())
        .collect();
    for k in gone {
        me.delete(&k);
    }
    for (k, v) in wanted {
        if me.get(k) != Some(v.as_str()) {
            me.set(k, v);
        }
    }
}

/// The streams a member announces, each checked: a stream must be held by a session of the
/// member's own tag (a member cannot claim another node's sessions), and a member counts for at
/// most [`streams::MAX_ANNOUNCED`] of them. The rest are noted in `bad`.
fn read_streams(
    id: &ChitchatId,
    st: &NodeState,
    tag: NodeTag,
    bad: &mut Vec<BadValue>,
) -> Vec<StreamAnnounce> {
    let mut out = Vec::new();
    for (key, v) in st.iter_prefix(streams::KEY_PREFIX) {
        match StreamAnnounce::decode(key, &v.value) {
            Ok(a) if a.session.node_tag() == tag && out.len() < streams::MAX_ANNOUNCED => {
                out.push(a)
            }
            _ => bad.push(BadValue {
                node: id.clone(),
                key: "stream",
                version: v.version,
            }),
        }
    }
    out
}

/// The rooms a member announces, each checked ([`RoomAnnounce::decode`]: publishers of its own
/// tag only), at most [`room_announce::MAX_ANNOUNCED`]. The rest are noted in `bad`.
fn read_rooms(
    id: &ChitchatId,
    st: &NodeState,
    tag: NodeTag,
    bad: &mut Vec<BadValue>,
) -> Vec<RoomAnnounce> {
    let mut out = Vec::new();
    for (key, v) in st.iter_prefix(room_announce::KEY_PREFIX) {
        match RoomAnnounce::decode(key, &v.value, tag) {
            Ok(a) if out.len() < room_announce::MAX_ANNOUNCED => out.push(a),
            _ => bad.push(BadValue {
                node: id.clone(),
                key: "room",
                version: v.version,
            }),
        }
    }
    out
}

/// A gossiped value this node could not read: which member's key, at which version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BadValue {
    node: ChitchatId,
    key: &'static str,
    version: u64,
}

/// Counts and logs each bad gossiped value once: the view is rebuilt every [`REFRESH`] from
/// values that stay in gossip until their member changes them, and one bad value is one
/// refusal, not one per refresh. Holds only the bad values of the last refresh.
#[derive(Default)]
struct BadValues {
    counted: HashSet<BadValue>,
}

impl BadValues {
    /// Counts the values not already counted, and forgets the ones gone; returns how many were new.
    fn report(&mut self, found: Vec<BadValue>, rejects: &Rejects) -> usize {
        let mut new = 0;
        let mut now = HashSet::with_capacity(found.len());
        for bad in found {
            if !self.counted.contains(&bad) {
                new += 1;
                let from = bad.node.gossip_advertise_addr;
                // The key is ours; the value and the member's id are the member's text, not logged.
                if rejects.reject(Port::Gossip, "bad_value", from.ip()) {
                    tracing::warn!(%from, key = bad.key, "a member gossips a value this node cannot read; it is treated as unknown (further ones from this address are counted, not logged, for a minute)");
                }
            }
            now.insert(bad);
        }
        self.counted = now;
        new
    }
}

/// Reads `key` of a member with `parse`. Absent is `None` (a member's keys may arrive over
/// several gossip rounds); present but unreadable is `None` too, and noted in `bad`.
fn read<T, E>(
    id: &ChitchatId,
    st: &NodeState,
    key: &'static str,
    parse: impl FnOnce(&str) -> Result<T, E>,
    bad: &mut Vec<BadValue>,
) -> Option<T> {
    let v = st.get_versioned(key).filter(|v| !v.is_deleted())?;
    match parse(&v.value) {
        Ok(t) => Some(t),
        Err(_) => {
            bad.push(BadValue {
                node: id.clone(),
                key,
                version: v.version,
            });
            None
        }
    }
}

/// Builds the view from chitchat's state: one run of each node id ([`outranks`]); nodes with
/// missing or malformed keys are skipped. Also returns the values that could not be read.
fn build_view(
    self_id: &str,
    states: &BTreeMap<ChitchatId, NodeState>,
    live: &HashSet<ChitchatId>,
    ever_live: &HashSet<ChitchatId>,
) -> (ClusterView, Vec<BadValue>) {
    let mut newest: BTreeMap<&str, (&ChitchatId, &NodeState)> = BTreeMap::new();
    for (id, st) in states {
        let keep = newest
            .get(&*id.node_id)
            .is_none_or(|(old, _)| outranks(id, old, live, ever_live));
        if keep {
            newest.insert(&id.node_id, (id, st));
        }
    }
    let mut members = Vec::new();
    let mut streams = Vec::new();
    let mut rooms = Vec::new();
    let mut bad = Vec::new();
    for (id, st) in newest.values() {
        let bad = &mut bad;
        let parsed = (|| {
            let tag = NodeTag(read(id, st, "tag", |v| u32::from_str_radix(v, 16), bad)?);
            Some(Member {
                node_id: id.node_id.to_string(),
                tag,
                region: st.get("region")?.to_string(),
                api: read(id, st, "api", |v| checked_api(v).ok_or(()), bad)?,
                relay: read(id, st, "relay", str::parse::<SocketAddr>, bad)?,
                media: st.get("media").unwrap_or_default().to_string(),
                live: live.contains(*id) || &*id.node_id == self_id,
                draining: read(id, st, "draining", decode_flag, bad).unwrap_or(false),
                load: read(id, st, "load", Load::decode, bad),
                version: st.get("version").unwrap_or_default().to_string(),
            })
        })();
        if let Some(m) = parsed {
            for s in read_streams(id, st, m.tag, bad) {
                streams.push((m.node_id.clone(), s));
            }
            for r in read_rooms(id, st, m.tag, bad) {
                rooms.push((m.node_id.clone(), r));
            }
            members.push(m);
        }
    }
    let view = ClusterView {
        self_id: self_id.to_string(),
        members,
        streams,
        rooms,
        duplicate_ids: duplicate_ids(self_id, states.keys(), live),
    };
    (view, bad)
}

/// Whether run `a` of a node id stands for it in the view rather than run `b`. The newer
/// generation does (a restarted node is a new generation of the same id, live to gossip only
/// after a few heartbeats), unless it was live and has died while the other is live: then two
/// nodes ran under one id and the one still running is the one to reach.
fn outranks(
    a: &ChitchatId,
    b: &ChitchatId,
    live: &HashSet<ChitchatId>,
    ever_live: &HashSet<ChitchatId>,
) -> bool {
    let died = |id: &ChitchatId| ever_live.contains(id) && !live.contains(id);
    let (newer, older) = if a.generation_id > b.generation_id {
        (a, b)
    } else {
        (b, a)
    };
    let winner = if died(newer) && live.contains(older) {
        older
    } else {
        newer
    };
    winner == a
}

/// The node ids run by more than one live node at different gossip addresses. A restart is a
/// newer generation at the same address, and the old run is live only until it is noticed
/// dead: not a duplicate. This node is always live to itself.
fn duplicate_ids<'a>(
    self_id: &str,
    ids: impl Iterator<Item = &'a ChitchatId>,
    live: &HashSet<ChitchatId>,
) -> Vec<String> {
    let mut addrs: BTreeMap<&str, BTreeSet<SocketAddr>> = BTreeMap::new();
    for id in ids {
        if live.contains(id) || &*id.node_id == self_id {
            addrs
                .entry(&id.node_id)
                .or_default()
                .insert(id.gossip_advertise_addr);
        }
    }
    addrs
        .into_iter()
        .filter(|(_, a)| a.len() > 1)
        .map(|(id, _)| id.to_string())
        .collect()
}

/// Says so once when node ids start or stop being run by more than one live node.
fn report_duplicates(before: &[String], now: &[String]) {
    for id in now.iter().filter(|id| !before.contains(id)) {
        // The id is the members' own text: escaped and cut, never a log line of its own.
        let id: String = id.escape_debug().take(64).collect();
        tracing::error!(node_id = %id, "two or more live nodes run under the same node id; give each node its own --node-id (only the newest run is used, the others' sessions cannot be reached)");
    }
    for id in before.iter().filter(|id| !now.contains(id)) {
        let id: String = id.escape_debug().take(64).collect();
        tracing::info!(node_id = %id, "only one live node runs under this node id again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_addr() -> SocketAddr {
        trackmesh_testkit::ports::free_udp_addr().expect("a free port")
    }

    fn bad(node: &ChitchatId, key: &'static str, version: u64) -> BadValue {
        BadValue {
            node: node.clone(),
            key,
            version,
        }
    }

    #[test]
    fn a_bad_value_is_counted_once_until_it_changes() {
        let rejects = Rejects::new().expect("metric");
        let id = ChitchatId::new("m", 1, "127.0.0.1:9".parse().expect("addr"));
        let mut values = BadValues::default();
        assert_eq!(values.report(vec![bad(&id, "load", 3)], &rejects), 1);
        assert_eq!(values.report(vec![bad(&id, "load", 3)], &rejects), 0);
        // A new bad version is a new refusal; one gone and back again too.
        assert_eq!(values.report(vec![bad(&id, "load", 4)], &rejects), 1);
        assert_eq!(values.report(Vec::new(), &rejects), 0);
        assert_eq!(values.report(vec![bad(&id, "load", 4)], &rejects), 1);
        assert_eq!(rejects.get(Port::Gossip, "bad_value"), 3);
    }

    /// The member's state as this node sees it, once it satisfies `ok` (bounded wait).
    async fn member_when(
        view: &mut watch::Receiver<Arc<ClusterView>>,
        id: &str,
        ok: impl Fn(&Member) -> bool,
    ) -> Member {
        for _ in 0..300 {
            if let Some(m) = view.borrow().members.iter().find(|m| m.node_id == id)
                && ok(m)
            {
                return m.clone();
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), view.changed()).await;
        }
        panic!(
            "member {id} never reached the expected state: {:?}",
            view.borrow()
        );
    }

    /// A member of the cluster (it has the secret) gossips a load and a drain flag that are not
    /// numbers and booleans: it stays a member, its load is unknown (not 0), and each bad value
    /// is counted once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_gossiped_values_are_unknown_and_counted() {
        let rejects = Arc::new(Rejects::new().expect("metric"));
        let gossip = free_addr();
        let membership = start(MembershipConfig {
            node_id: "a".into(),
            tag: NodeTag(0xa),
            region: "eu".into(),
            gossip,
            seeds: Vec::new(),
            secret: "s3cret".into(),
            secret_previous: None,
            rejects: rejects.clone(),
            api: "http://127.0.0.1:1".into(),
            relay: "127.0.0.1:2".parse().expect("addr"),
            media: "127.0.0.1:3".parse().expect("addr"),
        })
        .expect("membership");
        let mut view = membership.view.clone();

        let odd = free_addr();
        let config = chitchat_config("odd", 1, odd, vec![gossip.to_string()]);
        let keys: Vec<(String, String)> = [
            ("tag", "0000000b"),
            ("region", "eu"),
            ("api", "http://127.0.0.1:4"),
            ("relay", "127.0.0.1:5"),
            ("load", "lots"),
            ("draining", "maybe"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let transport = SealedTransport {
            secret: "s3cret".into(),
            previous: None,
            rejects: Arc::new(Rejects::new().expect("metric")),
        };
        let odd_node = spawn_chitchat(config, keys, &transport)
            .await
            .expect("the odd member");

        let m = member_when(&mut view, "odd", |_| true).await;
        assert_eq!(m.load, None, "an unreadable load is unknown, not 0");
        assert!(!m.draining);
        assert_eq!(rejects.get(Port::Gossip, "bad_value"), 2);

        // Fixed, the load is read; the bad values were not counted again meanwhile.
        odd_node
            .with_chitchat(|c| c.self_node_state().set("load", "1,2,3"))
            .await;
        let want = Load {
            sessions: 1,
            tracks: 2,
            relays: 3,
        };
        member_when(&mut view, "odd", |m| m.load == Some(want)).await;
        assert_eq!(rejects.get(Port::Gossip, "bad_value"), 2);

        // Broken again: a new bad value, counted once more.
        odd_node
            .with_chitchat(|c| c.self_node_state().set("load", "1,2"))
            .await;
        member_when(&mut view, "odd", |m| m.load.is_none()).await;
        assert_eq!(rejects.get(Port::Gossip, "bad_value"), 3);
        let _ = odd_node.shutdown().await;
    }

    #[test]
    fn only_live_runs_at_different_addresses_are_duplicates() {
        let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let twin_1 = ChitchatId::new("twin", 1, at(1));
        let twin_2 = ChitchatId::new("twin", 2, at(2));
        let restarted_old = ChitchatId::new("r", 1, at(3));
        let restarted_new = ChitchatId::new("r", 2, at(3));
        let gone_1 = ChitchatId::new("g", 1, at(4));
        let gone_2 = ChitchatId::new("g", 2, at(5));
        let me_elsewhere = ChitchatId::new("me", 1, at(6));
        let me = ChitchatId::new("me", 2, at(7));
        let all = [
            &twin_1,
            &twin_2,
            &restarted_old,
            &restarted_new,
            &gone_1,
            &gone_2,
            &me_elsewhere,
            &me,
        ];
        // Both twins live; both runs of r live (a restart not noticed yet) at one address; one
        // run of g dead; this node (always live to itself) and another run of its id.
        let live: HashSet<ChitchatId> = [
            &twin_1,
            &twin_2,
            &restarted_old,
            &restarted_new,
            &gone_2,
            &me_elsewhere,
        ]
        .into_iter()
        .cloned()
        .collect();
        assert_eq!(
            duplicate_ids("me", all.into_iter(), &live),
            vec!["me".to_string(), "twin".to_string()]
        );
        assert!(duplicate_ids("me", [&twin_1, &gone_1].into_iter(), &live).is_empty());
    }

    #[test]
    fn the_newer_run_stands_for_its_id_unless_it_died_while_the_older_runs() {
        let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let old = ChitchatId::new("x", 1, at(1));
        let new = ChitchatId::new("x", 2, at(1));
        let set = |ids: &[&ChitchatId]| -> HashSet<ChitchatId> {
            ids.iter().map(|id| (*id).clone()).collect()
        };
        let cases = [
            // A restart: the new run not heard enough yet, the old one not yet noticed dead.
            (set(&[&old]), set(&[&old]), &new),
            // The restart done.
            (set(&[&new]), set(&[&old, &new]), &new),
            // Both dead: the newest.
            (set(&[]), set(&[&old, &new]), &new),
            // Two runs under one id, the newer one died: the one still running.
            (set(&[&old]), set(&[&old, &new]), &old),
        ];
        for (live, ever_live, want) in cases {
            let winner = if outranks(&new, &old, &live, &ever_live) {
                &new
            } else {
                &old
            };
            assert_eq!(winner, want, "live {live:?}, ever live {ever_live:?}");
            let other = if outranks(&old, &new, &live, &ever_live) {
                &old
            } else {
                &new
            };
            assert_eq!(other, want, "the same either way round");
        }
    }

    /// Two members that gossip under one node id from two addresses (a copied config): the
    /// view names the id, and stops naming it once one of them is gone. When the one gone is
    /// the newer run, the view shows the older one, live, rather than the dead newer one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_live_members_under_one_id_are_named() {
        let gossip = free_addr();
        let membership = start(member_config("a", 0xa, gossip, Vec::new())).expect("membership");
        let mut view = membership.view.clone();
        let transport = SealedTransport {
            secret: "s3cret".into(),
            previous: None,
            rejects: Arc::new(Rejects::new().expect("metric")),
        };
        let keys = |tag: &str| -> Vec<(String, String)> {
            [
                ("tag", tag),
                ("region", "eu"),
                ("api", "http://127.0.0.1:4"),
                ("relay", "127.0.0.1:5"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
        };
        let mut twins = Vec::new();
        for (generation, tag) in [(1, "0000000b"), (2, "0000000c")] {
            let config = chitchat_config("twin", generation, free_addr(), vec![gossip.to_string()]);
            twins.push(
                spawn_chitchat(config, keys(tag), &transport)
                    .await
                    .expect("a twin"),
            );
        }
        let named = |v: &ClusterView| v.duplicate_ids == ["twin".to_string()];
        view_when(&mut view, named).await;
        let twin_members = view
            .borrow()
            .members
            .iter()
            .filter(|m| m.node_id == "twin")
            .count();
        assert_eq!(twin_members, 1, "the view still lists one member per id");
        // Stopped, the newer twin is noticed dead (phi: a few seconds): the id is single again,
        // and it stands for the older twin, which still runs.
        let newer = twins.remove(1);
        let _ = newer.shutdown().await;
        let older_shown = |v: &ClusterView| {
            v.duplicate_ids.is_empty()
                && v.members
                    .iter()
                    .any(|m| m.node_id == "twin" && m.live && m.tag == NodeTag(0xb))
        };
        view_when(&mut view, older_shown).await;
        for t in twins {
            let _ = t.shutdown().await;
        }
    }

    fn member_config(
        id: &str,
        tag: u32,
        gossip: SocketAddr,
        seeds: Vec<String>,
    ) -> MembershipConfig {
        MembershipConfig {
            node_id: id.into(),
            tag: NodeTag(tag),
            region: "eu".into(),
            gossip,
            seeds,
            secret: "s3cret".into(),
            secret_previous: None,
            rejects: Arc::new(Rejects::new().expect("metric")),
            api: "http://127.0.0.1:1".into(),
            relay: "127.0.0.1:2".parse().expect("addr"),
            media: "127.0.0.1:3".parse().expect("addr"),
        }
    }

    /// A stream one node announces reaches another node's view, and leaves it when withdrawn.
    /// An announce for a session of another node's tag is refused and counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_are_announced_and_withdrawn_through_gossip() {
        let (ga, gb) = (free_addr(), free_addr());
        let a = start(member_config("a", 0xa, ga, Vec::new())).expect("a");
        let b_cfg = member_config("b", 0xb, gb, vec![ga.to_string()]);
        let b_rejects = b_cfg.rejects.clone();
        let b = start(b_cfg).expect("b");
        let mut view = b.view.clone();

        let cam = StreamAnnounce {
            app: "demo".into(),
            name: "cam".into(),
            session: crate::ids::SessionId::new(NodeTag(0xa)),
            tracks: vec!["audio".into(), "video".into()],
            since_ms: 42,
        };
        a.local.streams.announce(&cam).expect("announce");
        let v = view_when(&mut view, |v| v.stream("demo", "cam").is_some()).await;
        assert_eq!(v.streams, vec![("a".to_string(), cam.clone())]);
        let (holder, found) = v.stream("demo", "cam").expect("the stream");
        assert_eq!((holder.node_id.as_str(), found), ("a", &cam));
        assert!(v.stream("demo", "other").is_none());
        assert!(v.stream("other-app", "cam").is_none());

        // A stream whose session is not the announcing node's own is not believed.
        let forged = StreamAnnounce {
            name: "forged".into(),
            session: crate::ids::SessionId::new(NodeTag(0xb)),
            ..cam.clone()
        };
        a.local.streams.announce(&forged).expect("announce");
        for _ in 0..100 {
            if b_rejects.get(Port::Gossip, "bad_value") > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(b_rejects.get(Port::Gossip, "bad_value"), 1);
        assert!(view.borrow().stream("demo", "forged").is_none());

        a.local.streams.withdraw("demo", "cam");
        a.local.streams.withdraw("demo", "forged");
        view_when(&mut view, |v| v.streams.is_empty()).await;
    }

    /// The view once it satisfies `ok` (bounded wait).
    async fn view_when(
        view: &mut watch::Receiver<Arc<ClusterView>>,
        ok: impl Fn(&ClusterView) -> bool,
    ) -> Arc<ClusterView> {
        for _ in 0..300 {
            let v = view.borrow().clone();
            if ok(&v) {
                return v;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), view.changed()).await;
        }
        panic!(
            "the view never reached the expected state: {:?}",
            view.borrow()
        );
    }
}
