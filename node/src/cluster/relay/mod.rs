//! The QUIC relay between nodes (quinn, protocol in `trackmesh-relay-proto`).
//!
//! - A node that needs a remote track *pulls* it ([`Relay::ensure_upstream`]): it picks the
//!   origin or its region's hub ([`super::hubs`]), reuses or dials one link to that peer,
//!   subscribes, and registers the track in its engine as a relayed publication. One upstream per
//!   (track, node), shared by all its local subscribers and released by the engine when unused.
//! - A node *serves* subscriptions on links others dialed (`serve.rs`): frames of the publication
//!   leave as datagrams; when it is a hub it pulls the track itself first, always directly.
//! - When a link dies its upstreams are re-routed (a new hub, or the origin) or ended when the
//!   origin is gone; downstreams of a dead link are released.
//!
//! The decisions are relay-proto's no-I/O link machines (`link::subscriber`, `link::publisher`);
//! `pull.rs` and `serve.rs` are their quinn drivers, each machine owned by one task.

mod channel_table;
mod channels;
mod downs;
mod failures;
mod outputs;
mod pull;
mod reader;
mod serve;
mod tasks;
pub mod tls;
mod wire;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use trackmesh_relay_proto::control::ControlMsg;
use trackmesh_relay_proto::handshake::ALPN;

use super::view::ClusterView;
use crate::engine::{RelayIn, RelayOut};
use crate::ids::{DownId, NodeId, NodeTag, SessionId, UpId};
use crate::workers::EngineHandle;
pub use failures::PullError;

/// Frames from other nodes waiting for the engine task; beyond it they are dropped and counted.
pub const RELAY_IN_QUEUE: usize = 8192;
/// Engine outputs waiting for the relay tasks; frames beyond it are dropped and counted.
pub const RELAY_OUT_QUEUE: usize = 16384;

/// Relay control messages asking for frames again (`Nack`), waiting for the task that sends
/// frames; beyond it they are dropped and counted (the subscriber then gives the gap up).
pub const NACK_QUEUE: usize = 1024;

/// Bound on the upstreams one link's reader remembers a dropped frame of, and on the
/// downstreams whose sent frames are cached before released ones are forgotten.
const MAX_SUBS_SEEN: usize = 4096;

/// A test hook: drops outgoing relay media datagrams on purpose, deterministically, so that
/// tests can show what loss does without a sleep or a network namespace. Never set in
/// production (no flag sets it; the in-process test node does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayTestLoss {
    /// Every `every`-th media datagram this node sends is dropped (100: 1 %); 0 drops none.
    pub every: u64,
    /// Every datagram of a frame sent again (answering a `Nack`) is dropped too: repair can
    /// never succeed, so every loss must surface as a keyframe request.
    pub drop_resends: bool,
}

/// What [`Relay::start`] needs: who this node is and the cluster secrets that admit peers.
pub struct RelayConfig {
    /// This node's id, as gossip announces it and peers see it in the handshake.
    pub node_id: String,
    /// This node's tag, to tell its own session ids from other nodes'.
    pub tag: NodeTag,
    /// Bound before gossip starts, so the announced address is the real one (port 0 allowed).
    pub socket: std::net::UdpSocket,
    /// The cluster secret: only nodes holding it may open relay links (never logged).
    pub secret: String,
    /// During a rotation, the secret being rotated away from: peers holding it are accepted.
    pub secret_previous: Option<String>,
    /// Tests only: drop outgoing media datagrams on purpose.
    pub test_loss: Option<RelayTestLoss>,
}

pub(crate) struct Inner {
    pub node_id: NodeId,
    pub tag: NodeTag,
    /// Cluster identity of each secret this node holds, current first; a Hello with any of them
    /// is accepted.
    pub clusters: Vec<[u8; 32]>,
    /// Each secret's CA name, in the same order (which secret a peer's certificate is under).
    pub ca_names: Vec<String>,
    /// SNI to dial with (asks for a certificate under the current secret's CA).
    pub server_name: String,
    /// Taken when the relay stops, so no handle on the relay keeps its socket bound.
    endpoint: Mutex<Option<quinn::Endpoint>>,
    /// Every task of the relay (its own and quinn's drivers); stopping the relay ends them.
    tasks: Arc<tasks::Tasks>,
    pub client: quinn::ClientConfig,
    pub view: watch::Receiver<Arc<ClusterView>>,
    pub engine: EngineHandle,
    pub relay_in: mpsc::Sender<RelayIn>,
    pub next_id: AtomicU64,
    /// Changes to the downstream table, which the task that sends frames owns
    /// ([`downs::DOWN_QUEUE`]).
    pub downs: mpsc::Sender<downs::DownCmd>,
    /// What that task last published of the downstream table.
    pub served: watch::Receiver<downs::DownsView>,
    /// Changes to the DataChannel tables and channel pulls and claims, for the task that owns
    /// them ([`channel_table::CHANNEL_QUEUE`]).
    pub channels: mpsc::Sender<channel_table::ChannelCmd>,
    pub refused: AtomicU64,
    /// Links other nodes hold open to this one ([`serve::MAX_INCOMING_LINKS`]).
    pub incoming_links: std::sync::atomic::AtomicUsize,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Failed pulls by reason, and the last log line of each reason.
    pub failures: failures::Failures,
    /// Frames from other nodes dropped because the engine's input queue was full.
    pub engine_queue_drops: AtomicU64,
    /// Frames from other nodes that never arrived (gaps in a link's frame numbers).
    pub frames_lost: AtomicU64,
    /// Frames from other nodes dropped because their rid prefix was malformed.
    pub malformed_frames: AtomicU64,
    /// Control messages dropped because a link's control queue was full.
    pub control_drops: AtomicU64,
    /// Frames for other nodes not sent: too large to fragment, or refused by the QUIC link.
    pub send_drops: AtomicU64,
    /// DataChannel messages not queued on a full channel stream (its writer is behind).
    pub dc_stream_drops: AtomicU64,
    /// DataChannel messages from other nodes dropped on a full engine input queue.
    pub dc_in_drops: AtomicU64,
    /// `Nack`s of downstream subscriptions, on their way to the task that sends frames.
    pub nack_tx: mpsc::Sender<(DownId, trackmesh_relay_proto::control::Nack)>,
    /// The pulling task's commands ([`pull::run`] owns every link this node dialed).
    pub pulls: mpsc::Sender<pull::Cmd>,
    /// What the pulling task last published of its links and upstreams.
    pub pulled: watch::Receiver<Arc<pull::PullView>>,
    /// Loss repair counters, both sides.
    pub repair: RepairCounters,
    /// The test hook, if a test set it.
    pub test_loss: Option<RelayTestLoss>,
}

/// Loss repair on relay links: what this node asked for as a subscriber and what it sent again
/// as a publisher.
#[derive(Default)]
pub(crate) struct RepairCounters {
    /// `Nack` messages sent (a re-`Nack` counts again).
    pub nacks_sent: AtomicU64,
    /// Missing frames that arrived in time, so no keyframe was needed.
    pub frames_repaired: AtomicU64,
    /// Missing frames given up on: each led to a `Gap` (and a keyframe request for video).
    pub repairs_failed: AtomicU64,
    /// Frames that arrived after they were given up on (dropped).
    pub late: AtomicU64,
    /// Frames sent again answering a `Nack`.
    pub frames_resent: AtomicU64,
    /// Frames asked for that were no longer (or never) in the cache: ignored.
    pub nack_misses: AtomicU64,
    /// `Nack`s dropped on a full queue ([`NACK_QUEUE`]).
    pub nack_drops: AtomicU64,
    /// Media datagrams dropped by the test hook.
    pub test_dropped: AtomicU64,
}

impl Inner {
    /// The relay endpoint; `None` once the relay has stopped.
    pub fn endpoint(&self) -> Option<quinn::Endpoint> {
        self.endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The pulling task's last snapshot of its links and upstreams; empty once the relay has
    /// stopped (the task that kept it is gone, so its last snapshot is stale).
    pub fn pulled_now(&self) -> Arc<pull::PullView> {
        if self.endpoint().is_none() {
            return Arc::default();
        }
        self.pulled.borrow().clone()
    }

    /// Runs `fut` as a relay task, ended when the relay stops (never run once it has).
    pub fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(fut);
    }

    /// Takes the endpoint out, so the socket closes as the last tasks holding links end (the
    /// links' connections are held by tasks only: the task that sends frames holds those of
    /// the downstream table, and ends with the others).
    fn take_endpoint(&self) -> Option<quinn::Endpoint> {
        self.endpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// The downstream table's last snapshot; empty once the relay has stopped.
    pub fn served_now(&self) -> downs::DownsView {
        if self.endpoint().is_none() {
            return Arc::default();
        }
        self.served.borrow().clone()
    }

    /// Puts a downstream in the table before the engine may send its first frame. False when
    /// the task that owns the table is gone (the relay is stopping).
    pub async fn insert_down(&self, down: DownId, d: downs::Down) -> bool {
        let (done, answer) = tokio::sync::oneshot::channel();
        let cmd = downs::DownCmd::Insert { down, d, done };
        self.downs.send(cmd).await.is_ok() && answer.await.is_ok()
    }

    /// Takes a downstream out of the table: no more of its frames are sent. Waits for room,
    /// so a full queue never loses it.
    pub async fn remove_down(&self, down: DownId) {
        // A closed queue: the task that owns the table is gone, and the table with it.
        let _ = self.downs.send(downs::DownCmd::Remove(down)).await;
    }

    /// Queues a control message on a link; a full queue drops it and counts the drop (a closed
    /// one means the link is gone, and the message with it).
    pub fn send_control(&self, link: &mpsc::Sender<ControlMsg>, msg: ControlMsg) {
        send_counted(link, msg, &self.control_drops);
    }

    /// Hands a command to the task that owns the DataChannel tables, waiting for room (a
    /// closed queue: the task is gone, the relay stopping, and the tables with it).
    pub async fn channel_cmd(&self, cmd: channel_table::ChannelCmd) {
        let _ = self.channels.send(cmd).await;
    }

    /// A new upstream id (ids are never reused, so a late message cannot hit a new upstream).
    pub fn next_up(&self) -> UpId {
        UpId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// A new downstream id, from the same sequence.
    pub fn next_down(&self) -> DownId {
        DownId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}

/// Queues `msg`; on a full queue it is dropped and `drops` counts it.
fn send_counted(link: &mpsc::Sender<ControlMsg>, msg: ControlMsg, drops: &AtomicU64) {
    if let Err(mpsc::error::TrySendError::Full(_)) = link.try_send(msg) {
        drops.fetch_add(1, Ordering::Relaxed);
    }
}

/// A relay task's future, boxed so the named tasks can share one list.
type TaskFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Relay figures kept by the relay tasks, for the metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct RelayFigures {
    /// Peers linked now, dialed out or dialed in.
    pub links: u64,
    /// Bytes received on relay links.
    pub bytes_in: u64,
    /// Bytes sent on relay links.
    pub bytes_out: u64,
    /// Relay connections refused (no cluster certificate, or a bad handshake).
    pub refused: u64,
    /// Pulls of remote tracks that failed, by reason ([`PullError::reason`]).
    pub pull_failures: [(&'static str, u64); PullError::ALL.len()],
    /// Frames from other nodes dropped on a full engine input queue.
    pub engine_queue_drops: u64,
    /// Frames from other nodes that never arrived (gaps in a link's frame numbers).
    pub frames_lost: u64,
    /// Frames from other nodes dropped: malformed rid prefix.
    pub malformed_frames: u64,
    /// Control messages dropped on a full link control queue.
    pub control_drops: u64,
    /// Frames for other nodes not sent (too large, or refused by the link).
    pub send_drops: u64,
    /// DataChannel messages not queued on a full channel stream.
    pub dc_stream_drops: u64,
    /// DataChannel messages from other nodes dropped on a full engine input queue.
    pub dc_in_drops: u64,
    /// Relay loss repair: `Nack`s sent, frames repaired, repairs failed (gaps), late frames
    /// dropped, frames sent again, `Nack`ed frames not in the cache, `Nack`s dropped on a full
    /// queue, datagrams dropped by the test hook.
    pub repair: RepairFigures,
}

/// The relay's loss repair counters (see [`RelayFigures::repair`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct RepairFigures {
    /// `Nack` messages sent.
    pub nacks_sent: u64,
    /// Missing frames that arrived in time.
    pub frames_repaired: u64,
    /// Missing frames given up on.
    pub repairs_failed: u64,
    /// Frames dropped for arriving after they were given up on.
    pub late: u64,
    /// Frames sent again answering a `Nack`.
    pub frames_resent: u64,
    /// `Nack`ed frames no longer in the cache.
    pub nack_misses: u64,
    /// `Nack`s dropped on a full queue.
    pub nack_drops: u64,
    /// Datagrams dropped by the test hook.
    pub test_dropped: u64,
}

/// The relay layer's handle: pulls tracks from other nodes, serves this node's, reports views.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
    health: RelayHealth,
}

/// How long [`Relay::shutdown`] lets peers be told the links close, and then lets aborted tasks
/// end: a dead peer never acknowledges, and the node's shutdown must not wait on it.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(1);

/// Whether the relay still works, judged by its long-lived tasks; holds no socket or link, so
/// a health check kept after the node stopped does not keep the relay port bound.
#[derive(Clone)]
pub struct RelayHealth {
    tasks: Arc<[NamedTask]>,
}

struct NamedTask {
    name: &'static str,
    task: tokio::task::AbortHandle,
    /// Set when the task ended because its input did (the engine's output queue or gossip's
    /// view): that part stopped, not the relay, and the health check names that part.
    input_ended: Arc<AtomicBool>,
}

impl RelayHealth {
    /// The name of a relay task that has ended on its own account (failed, aborted, or the
    /// endpoint closed), if any: the relay then no longer works.
    pub fn stopped_task(&self) -> Option<&'static str> {
        self.tasks
            .iter()
            .find(|t| t.task.is_finished() && !t.input_ended.load(Ordering::Relaxed))
            .map(|t| t.name)
    }

    /// Whether the named task has ended, for any reason (tests wait for a cascade with it).
    #[cfg(test)]
    pub(crate) fn has_ended(&self, name: &str) -> bool {
        self.tasks
            .iter()
            .any(|t| t.name == name && t.task.is_finished())
    }
}

/// The admin view of the relay (`GET /admin/relay`), in the admin API's own types.
pub use trackmesh_admin_api::{
    Downstream as DownstreamView, RelayLink as RelayLinkView, RelayView, Upstream as UpstreamView,
};

impl Relay {
    /// Binds the relay endpoint and starts serving. `relay_out` carries what the engine wants sent.
    pub fn start(
        cfg: RelayConfig,
        view: watch::Receiver<Arc<ClusterView>>,
        engine: EngineHandle,
        relay_in: mpsc::Sender<RelayIn>,
        relay_out: mpsc::Receiver<RelayOut>,
    ) -> anyhow::Result<Relay> {
        let secrets: Vec<&str> = std::iter::once(cfg.secret.as_str())
            .chain(cfg.secret_previous.as_deref().filter(|p| *p != cfg.secret))
            .collect();
        let tls = tls::relay_tls(&secrets, &cfg.node_id, ALPN)?;
        let tasks = Arc::new(tasks::Tasks::default());
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(tls.server),
            cfg.socket,
            Arc::new(tasks::TrackedRuntime::new(tasks.clone())),
        )
        .context("starting the relay endpoint")?;
        endpoint.set_default_client_config(tls.client.clone());
        let (nack_tx, nack_rx) = mpsc::channel(NACK_QUEUE);
        let (pulls, pulls_rx) = mpsc::channel(pull::PULL_QUEUE);
        let (pulled_tx, pulled) = watch::channel(Arc::default());
        let (downs_tx, downs_rx) = mpsc::channel(downs::DOWN_QUEUE);
        let (served_tx, served) = watch::channel(Arc::default());
        let (channels_tx, channels_rx) = mpsc::channel(channel_table::CHANNEL_QUEUE);
        let inner = Arc::new(Inner {
            node_id: NodeId::from(cfg.node_id),
            tag: cfg.tag,
            clusters: secrets
                .iter()
                .map(|s| trackmesh_relay_proto::handshake::cluster_identity(s))
                .collect(),
            ca_names: tls.ca_names,
            server_name: tls.server_name,
            endpoint: Mutex::new(Some(endpoint)),
            tasks,
            client: tls.client,
            view,
            engine,
            relay_in,
            next_id: AtomicU64::new(1),
            downs: downs_tx,
            served,
            channels: channels_tx,
            refused: AtomicU64::new(0),
            incoming_links: std::sync::atomic::AtomicUsize::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            failures: failures::Failures::default(),
            engine_queue_drops: AtomicU64::new(0),
            frames_lost: AtomicU64::new(0),
            malformed_frames: AtomicU64::new(0),
            control_drops: AtomicU64::new(0),
            send_drops: AtomicU64::new(0),
            dc_stream_drops: AtomicU64::new(0),
            dc_in_drops: AtomicU64::new(0),
            nack_tx,
            pulls: pulls.clone(),
            pulled,
            repair: RepairCounters::default(),
            test_loss: cfg.test_loss,
        });
        let named =
            |name: &'static str, input_ended: Arc<AtomicBool>, fut: TaskFuture| -> NamedTask {
                let task = inner.tasks.spawn(fut).unwrap_or_else(|| {
                    // Not closed yet, so not reached; a finished stand-in reads as stopped.
                    tokio::spawn(async {}).abort_handle()
                });
                NamedTask {
                    name,
                    task,
                    input_ended,
                }
            };
        let outputs_ended = Arc::new(AtomicBool::new(false));
        let members_ended = Arc::new(AtomicBool::new(false));
        let tasks = [
            named(
                "accept",
                Arc::new(AtomicBool::new(false)),
                Box::pin(serve::accept_loop(inner.clone())) as TaskFuture,
            ),
            named("engine outputs", outputs_ended.clone(), {
                let inner = inner.clone();
                Box::pin(async move {
                    let table = downs::Downs::new(served_tx);
                    outputs::engine_outputs(
                        inner,
                        relay_out,
                        nack_rx,
                        downs_rx,
                        table,
                        channels_rx,
                    )
                    .await;
                    outputs_ended.store(true, Ordering::Relaxed);
                })
            }),
            named(
                "pulls",
                Arc::new(AtomicBool::new(false)),
                Box::pin(pull::run(inner.clone(), pulls, pulls_rx, pulled_tx)) as TaskFuture,
            ),
            named("members", members_ended.clone(), {
                let inner = inner.clone();
                Box::pin(async move {
                    serve::watch_members(inner).await;
                    members_ended.store(true, Ordering::Relaxed);
                })
            }),
        ];
        Ok(Relay {
            inner,
            health: RelayHealth {
                tasks: Arc::new(tasks),
            },
        })
    }

    /// What the health check needs of the relay, without holding the relay.
    pub fn health(&self) -> RelayHealth {
        self.health.clone()
    }

    /// Stops the relay without waiting: peers are told its links close, every task (its own
    /// and quinn's) is aborted. The socket closes as the aborted tasks end; [`Relay::shutdown`]
    /// waits for that.
    pub fn stop(&self) {
        if let Some(endpoint) = self.inner.take_endpoint() {
            endpoint.close(0u32.into(), b"node stopping");
        }
        self.inner.tasks.close();
    }

    /// Ends every relay task without telling peers, as a killed process would; the socket
    /// closes as the aborted tasks end.
    pub fn abort(&self) {
        // Drivers first: a connection whose last handle goes while its driver runs says goodbye.
        self.inner.tasks.close();
        self.inner.take_endpoint();
    }

    /// Stops the relay in order: peers are told its links close (waiting a bounded time for
    /// them to be drained), then every task ends. The relay socket is closed when this returns.
    pub async fn shutdown(&self) {
        if let Some(endpoint) = self.inner.take_endpoint() {
            endpoint.close(0u32.into(), b"node stopping");
            if tokio::time::timeout(SHUTDOWN_BOUND, endpoint.wait_idle())
                .await
                .is_err()
            {
                tracing::debug!("relay links not drained in time: closing anyway");
            }
        }
        if let Some(set) = self.inner.tasks.close() {
            tasks::Tasks::join(set, SHUTDOWN_BOUND).await;
        }
    }

    /// The relay's bound UDP address, which gossip announces to peers.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        let endpoint = self.inner.endpoint().context("the relay has stopped")?;
        Ok(endpoint.local_addr()?)
    }

    /// Makes `(session, track)` of `app` available in the local engine, pulling it from another
    /// node if needed. The error says why it is not (counted by reason in [`Relay::figures`]).
    pub async fn ensure_upstream(
        &self,
        app: &str,
        session: SessionId,
        track: &str,
    ) -> Result<(), PullError> {
        pull::ensure_upstream(&self.inner, app, session, track, false).await
    }

    /// Makes `session`'s DataChannel `name` of `app` available in the local engine, subscribing
    /// to it over a direct link to the publisher's node if needed.
    pub async fn ensure_channel_upstream(
        &self,
        app: &str,
        session: SessionId,
        name: &str,
    ) -> Result<(), PullError> {
        channels::ensure_channel_upstream(&self.inner, app, session, name).await
    }

    /// Asks `session`'s node for the `canReply` grant of its channel `name` for this node
    /// (already received here, see [`Relay::ensure_channel_upstream`]). True when this node
    /// holds it (or the publisher is on this node, whose engine decides).
    pub async fn claim_channel_reply(&self, session: SessionId, name: &str) -> bool {
        channels::claim_reply(&self.inner, session, name).await
    }

    /// Relay connections refused (wrong cluster, bad handshake) since start.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Links, upstreams and downstreams now, for the admin API.
    pub fn view(&self) -> RelayView {
        let pulled = self.inner.pulled_now();
        let served = self.inner.served_now();
        let mut links: Vec<RelayLinkView> = pulled
            .links
            .iter()
            .map(|p| RelayLinkView {
                peer: p.to_string(),
                direction: "out".to_string(),
            })
            .collect();
        let mut inbound: Vec<String> = served.values().map(|d| d.peer.to_string()).collect();
        inbound.sort();
        inbound.dedup();
        links.extend(inbound.into_iter().map(|peer| RelayLinkView {
            peer,
            direction: "in".to_string(),
        }));
        let upstream = pulled
            .ups
            .iter()
            .map(|u| UpstreamView {
                session_id: u.session.to_string(),
                track_name: u.track.clone(),
                via: u.via.to_string(),
                frames: u.frames.load(Ordering::Relaxed),
            })
            .collect();
        let downstream = served
            .values()
            .map(|d| DownstreamView {
                session_id: d.session.to_string(),
                track_name: d.track.clone(),
                peer: d.peer.to_string(),
                frames: d.frames.load(Ordering::Relaxed),
            })
            .collect();
        RelayView {
            links,
            upstream,
            downstream,
        }
    }

    /// The nodes the given downstream subscriptions go to.
    pub fn downstream_peers(&self, downs: &[DownId]) -> Vec<String> {
        let served = self.inner.served_now();
        let mut peers: Vec<String> = downs
            .iter()
            .filter_map(|d| served.get(d).map(|d| d.peer.to_string()))
            .collect();
        peers.sort();
        peers.dedup();
        peers
    }

    /// Relay links (dialed by this node, and dialed by peers that pull from it), and media bytes
    /// received and sent over them.
    pub fn figures(&self) -> RelayFigures {
        RelayFigures {
            links: {
                let dialed = self.inner.pulled_now().links.len();
                let served = self.inner.served_now();
                let mut inbound: Vec<&str> = served.values().map(|d| d.peer.as_str()).collect();
                inbound.sort_unstable();
                inbound.dedup();
                (dialed + inbound.len()) as u64
            },
            bytes_in: self.inner.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.inner.bytes_out.load(Ordering::Relaxed),
            refused: self.refused(),
            pull_failures: self.inner.failures.counts(),
            engine_queue_drops: self.inner.engine_queue_drops.load(Ordering::Relaxed),
            frames_lost: self.inner.frames_lost.load(Ordering::Relaxed),
            malformed_frames: self.inner.malformed_frames.load(Ordering::Relaxed),
            control_drops: self.inner.control_drops.load(Ordering::Relaxed),
            send_drops: self.inner.send_drops.load(Ordering::Relaxed),
            dc_stream_drops: self.inner.dc_stream_drops.load(Ordering::Relaxed),
            dc_in_drops: self.inner.dc_in_drops.load(Ordering::Relaxed),
            repair: {
                let r = &self.inner.repair;
                let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
                RepairFigures {
                    nacks_sent: get(&r.nacks_sent),
                    frames_repaired: get(&r.frames_repaired),
                    repairs_failed: get(&r.repairs_failed),
                    late: get(&r.late),
                    frames_resent: get(&r.frames_resent),
                    nack_misses: get(&r.nack_misses),
                    nack_drops: get(&r.nack_drops),
                    test_dropped: get(&r.test_dropped),
                }
            },
        }
    }

    /// Tracks this node sends to other nodes now (a draining node waits for them to move).
    pub fn downstreams(&self) -> usize {
        self.inner.served_now().len()
    }

    /// Links (either direction) and upstream + downstream counts, for gossiped load.
    pub fn counts(&self) -> (usize, usize) {
        let (links, ups) = {
            let pulled = self.inner.pulled_now();
            (pulled.links.len(), pulled.ups.len())
        };
        (links, ups + self.inner.served_now().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_message_on_a_full_link_queue_is_counted() {
        let (tx, mut rx) = mpsc::channel(1);
        let drops = AtomicU64::new(0);
        send_counted(&tx, ControlMsg::KeyframeRequest { sub: 1 }, &drops);
        send_counted(&tx, ControlMsg::KeyframeRequest { sub: 2 }, &drops);
        assert_eq!(drops.load(Ordering::Relaxed), 1, "the second did not fit");
        assert!(matches!(
            rx.try_recv(),
            Ok(ControlMsg::KeyframeRequest { sub: 1 })
        ));
        drop(rx);
        send_counted(&tx, ControlMsg::KeyframeRequest { sub: 3 }, &drops);
        assert_eq!(
            drops.load(Ordering::Relaxed),
            1,
            "a closed link is not a drop"
        );
    }
}
