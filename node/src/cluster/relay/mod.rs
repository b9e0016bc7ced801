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

mod pull;
mod serve;
pub mod tls;
mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use trackmesh_relay_proto::control::{ControlMsg, SubId};
use trackmesh_relay_proto::handshake::ALPN;

use super::view::ClusterView;
use crate::engine::{RelayFrame, RelayOut};
use crate::ids::{NodeTag, SessionId};
use crate::runtime::EngineHandle;

/// Frames and events going from relay links into the engine task.
pub enum RelayIn {
    Frame { up: u64, frame: RelayFrame },
}

/// Queue sizes between the engine task and the relay tasks; frames beyond them are dropped.
pub const RELAY_IN_QUEUE: usize = 8192;
pub const RELAY_OUT_QUEUE: usize = 16384;

pub struct RelayConfig {
    pub node_id: String,
    pub tag: NodeTag,
    /// Bound before gossip starts, so the announced address is the real one (port 0 allowed).
    pub socket: std::net::UdpSocket,
    pub secret: String,
    /// During a rotation, the secret being rotated away from: peers holding it are accepted.
    pub secret_previous: Option<String>,
}

/// Where the answer to a `Subscribe` goes: the track, or the peer's reason for refusing.
pub(crate) type SubscribeReply =
    tokio::sync::oneshot::Sender<Result<crate::engine::TrackInfo, String>>;

/// A link this node dialed: it subscribes, the peer serves.
pub(crate) struct Link {
    pub peer: String,
    pub conn: quinn::Connection,
    pub control: mpsc::Sender<ControlMsg>,
    pub next_sub: std::sync::atomic::AtomicU32,
    /// Subscriptions waiting for `Subscribed`/`SubscribeFailed`.
    pub pending: Mutex<HashMap<SubId, SubscribeReply>>,
    /// Established subscriptions: sub id → upstream id.
    pub subs: Mutex<HashMap<SubId, u64>>,
}

/// An upstream: a track this node pulls over a link.
#[derive(Clone)]
pub(crate) struct Up {
    pub link: Arc<Link>,
    pub sub: SubId,
    pub app: String,
    pub session: SessionId,
    pub track: String,
    pub frames: Arc<AtomicU64>,
}

/// A downstream: a track this node sends over a link another node dialed.
#[derive(Clone)]
pub(crate) struct Down {
    pub conn: quinn::Connection,
    pub sub: SubId,
    pub peer: String,
    pub control: mpsc::Sender<ControlMsg>,
    pub session: SessionId,
    pub track: String,
    pub frames: Arc<AtomicU64>,
}

#[derive(Default)]
pub(crate) struct State {
    pub links: HashMap<String, Arc<Link>>,
    pub ups: HashMap<u64, Up>,
    pub downs: HashMap<u64, Down>,
    /// Peers whose links failed recently: not dialed again until the instant.
    pub avoid: HashMap<String, std::time::Instant>,
}

/// Held while one pull of a track is under way; later pulls of it wait, then find it local.
pub(crate) type PullLock = Arc<tokio::sync::Mutex<()>>;

pub(crate) struct Inner {
    pub node_id: String,
    pub tag: NodeTag,
    /// Cluster identity of each secret this node holds, current first; a Hello with any of them
    /// is accepted.
    pub clusters: Vec<[u8; 32]>,
    /// Each secret's CA name, in the same order (which secret a peer's certificate is under).
    pub ca_names: Vec<String>,
    /// SNI to dial with (asks for a certificate under the current secret's CA).
    pub server_name: String,
    pub endpoint: quinn::Endpoint,
    pub client: quinn::ClientConfig,
    pub view: watch::Receiver<Arc<ClusterView>>,
    pub engine: EngineHandle,
    pub relay_in: mpsc::Sender<RelayIn>,
    pub next_id: AtomicU64,
    pub state: Mutex<State>,
    /// One in-flight pull per track, so concurrent pulls share one upstream.
    pub inflight: Mutex<HashMap<(SessionId, String), PullLock>>,
    pub refused: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl Inner {
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
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
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(tls.server),
            cfg.socket,
            Arc::new(quinn::TokioRuntime),
        )
        .context("starting the relay endpoint")?;
        endpoint.set_default_client_config(tls.client.clone());
        let inner = Arc::new(Inner {
            node_id: cfg.node_id,
            tag: cfg.tag,
            clusters: secrets
                .iter()
                .map(|s| trackmesh_relay_proto::handshake::cluster_identity(s))
                .collect(),
            ca_names: tls.ca_names,
            server_name: tls.server_name,
            endpoint,
            client: tls.client,
            view,
            engine,
            relay_in,
            next_id: AtomicU64::new(1),
            state: Mutex::new(State::default()),
            inflight: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        });
        tokio::spawn(serve::accept_loop(inner.clone()));
        tokio::spawn(pull::engine_outputs(inner.clone(), relay_out));
        tokio::spawn(pull::watch_members(inner.clone()));
        Ok(Relay { inner })
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.inner.endpoint.local_addr()?)
    }

    /// Makes `(session, track)` of `app` available in the local engine, pulling it from another
    /// node if needed. False when no node has it.
    pub async fn ensure_upstream(&self, app: &str, session: SessionId, track: &str) -> bool {
        pull::ensure_upstream(&self.inner, app, session, track, false).await
    }

    /// Relay connections refused (wrong cluster, bad handshake) since start.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    pub fn view(&self) -> RelayView {
        let st = self.inner.state();
        let mut links: Vec<RelayLinkView> = st
            .links
            .keys()
            .map(|p| RelayLinkView {
                peer: p.clone(),
                direction: "out".to_string(),
            })
            .collect();
        let mut inbound: Vec<String> = st.downs.values().map(|d| d.peer.clone()).collect();
        inbound.sort();
        inbound.dedup();
        links.extend(inbound.into_iter().map(|peer| RelayLinkView {
            peer,
            direction: "in".to_string(),
        }));
        let upstream = st
            .ups
            .values()
            .map(|u| UpstreamView {
                session_id: u.session.to_string(),
                track_name: u.track.clone(),
                via: u.link.peer.clone(),
                frames: u.frames.load(Ordering::Relaxed),
            })
            .collect();
        let downstream = st
            .downs
            .values()
            .map(|d| DownstreamView {
                session_id: d.session.to_string(),
                track_name: d.track.clone(),
                peer: d.peer.clone(),
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
    pub fn downstream_peers(&self, downs: &[u64]) -> Vec<String> {
        let st = self.inner.state();
        let mut peers: Vec<String> = downs
            .iter()
            .filter_map(|d| st.downs.get(d).map(|d| d.peer.clone()))
            .collect();
        peers.sort();
        peers.dedup();
        peers
    }

    /// Relay links (dialed by this node, and dialed by peers that pull from it), and media bytes
    /// received and sent over them.
    pub fn figures(&self) -> crate::metrics::RelayFigures {
        crate::metrics::RelayFigures {
            links: {
                let st = self.inner.state();
                let mut inbound: Vec<&str> = st.downs.values().map(|d| d.peer.as_str()).collect();
                inbound.sort_unstable();
                inbound.dedup();
                (st.links.len() + inbound.len()) as u64
            },
            bytes_in: self.inner.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.inner.bytes_out.load(Ordering::Relaxed),
            refused: self.refused(),
        }
    }

    /// Links (either direction) and upstream + downstream counts, for gossiped load.
    pub fn counts(&self) -> (usize, usize) {
        let st = self.inner.state();
        (st.links.len(), st.ups.len() + st.downs.len())
    }
}
