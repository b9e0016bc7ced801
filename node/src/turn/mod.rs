//! The embedded TURN server (medea-turn) for clients whose network blocks UDP to the media port
//! or any direct path: UDP and TCP on `--turn-port`, credentials in the TURN REST API scheme
//! (`credentials.rs`), and a guard (`guard.rs`, applied by `transport.rs`) that lets a client relay
//! only to this node's own media address, never anywhere else. TCP is served by our own
//! bounded listener (`tcp.rs`), not the crate's. A thin shell: the TURN crate's tasks run on the node's runtime and end when [`TurnServer::shutdown`] (or drop) stops them.

pub mod credentials;
pub mod guard;
mod tcp;
mod transport;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use medea_turn::relay::Allocator;
use medea_turn::transport::Transport;
use medea_turn::{AllocationInfo, AuthHandler, FiveTuple, Server, ServerConfig, TurnConfig};
use secrecy::SecretString;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use credentials::{Credential, Refusal, TurnAuth, TurnKey};
use guard::REALM;
pub use guard::{Guard, Limits};
use tcp::{TcpBounds, TcpTransport};
use transport::Guarded;

/// Relay sockets bind ports in this range (they talk only to the media address on this host, so
/// no firewall needs to open them).
const RELAY_PORTS: (u16, u16) = (49152, 65535);
/// How often the relayed-bytes counter is brought up to date from the TURN crate's figures.
const FIGURES_EVERY: Duration = Duration::from_secs(5);
/// How long shutdown waits for the listeners' tasks to end.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// Where and how the TURN server runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The IP the UDP and TCP listeners (and relay sockets) bind.
    pub bind_ip: IpAddr,
    /// The TURN port, UDP and TCP (0: any free one, for tests).
    pub port: u16,
    /// The IP in the URLs and in relayed addresses.
    pub public_ip: IpAddr,
    /// The policy's bounds.
    pub limits: Limits,
}

/// A running TURN server.
pub struct TurnServer {
    server: Arc<Server>,
    guard: Arc<Guard>,
    stop: watch::Sender<bool>,
    figures_task: JoinHandle<()>,
    addr: SocketAddr,
    public: SocketAddr,
}

impl TurnServer {
    /// Binds UDP and TCP on the TURN port and starts serving with `auth`'s credentials.
    pub async fn start(settings: Settings, auth: Arc<TurnAuth>) -> anyhow::Result<TurnServer> {
        let (udp, tcp) = bind(settings.bind_ip, settings.port).await?;
        let addr = udp.local_addr().context("TURN UDP address")?;
        let tcp_bounds = TcpBounds::for_allocations(settings.limits.max_allocations);
        let guard = Arc::new(
            Guard::new(settings.limits, auth.clone()).context("registering TURN metrics")?,
        );
        let (stop, stopped) = watch::channel(false);
        let tcp = TcpTransport::new(tcp, guard.clone(), tcp_bounds).context("TURN TCP listener")?;
        let connections: Vec<Arc<dyn Transport + Send + Sync>> = vec![
            Arc::new(Guarded::new(udp, guard.clone(), stopped.clone())),
            Arc::new(Guarded::new(tcp, guard.clone(), stopped.clone())),
        ];
        let (closed_tx, closed_rx) = mpsc::channel(1024);
        let server = Arc::new(Server::new(ServerConfig {
            connections,
            turn: Some(TurnConfig {
                relay_addr_generator: Allocator {
                    relay_address: settings.public_ip,
                    min_port: RELAY_PORTS.0,
                    max_port: RELAY_PORTS.1,
                    max_retries: 10,
                    address: settings.bind_ip.to_string(),
                },
                realm: REALM.into(),
                auth_handler: Arc::new(Auth {
                    auth,
                    guard: guard.clone(),
                }),
                channel_bind_lifetime: Duration::from_secs(600),
                alloc_close_notify: Some(closed_tx),
            }),
        }));
        let figures_task = tokio::spawn(keep_figures(
            server.clone(),
            guard.clone(),
            closed_rx,
            stopped,
        ));
        Ok(TurnServer {
            server,
            guard,
            stop,
            figures_task,
            addr,
            public: SocketAddr::new(settings.public_ip, addr.port()),
        })
    }

    /// The bound address (UDP and TCP share the port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address in the URLs handed to clients.
    pub fn public_addr(&self) -> SocketAddr {
        self.public
    }

    /// The guard: its figures for `/metrics`, its allocation count.
    pub fn guard(&self) -> &Arc<Guard> {
        &self.guard
    }

    /// Closes every allocation of `username` (after a revocation).
    pub async fn close_allocations_of(&self, username: &str) {
        if tokio::time::timeout(
            STOP_WAIT,
            self.server
                .delete_allocations_by_username(username.to_string()),
        )
        .await
        .is_err()
        {
            tracing::warn!("closing a revoked credential's TURN allocations timed out");
        }
    }

    /// The listeners stop (their tasks end, bounded) and the figures task ends.
    pub async fn shutdown(&self) {
        self.stop.send_replace(true);
        for _ in 0..(STOP_WAIT.as_millis() / 20) {
            if !self.server.healthz() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.figures_task.abort();
    }

    /// Stops without waiting.
    pub fn abort(&self) {
        self.stop.send_replace(true);
        self.figures_task.abort();
    }
}

impl Drop for TurnServer {
    fn drop(&mut self) {
        self.abort();
    }
}

/// UDP and TCP on one port; with port 0, a free UDP port whose TCP twin is free too (bounded).
async fn bind(
    ip: IpAddr,
    port: u16,
) -> anyhow::Result<(tokio::net::UdpSocket, tokio::net::TcpListener)> {
    let mut last = None;
    for _ in 0..if port == 0 { 20 } else { 1 } {
        let udp = tokio::net::UdpSocket::bind((ip, port))
            .await
            .with_context(|| format!("binding the TURN UDP socket {ip}:{port}"))?;
        let bound = udp.local_addr().context("TURN UDP address")?;
        match tokio::net::TcpListener::bind(bound).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => {
                last = Some(
                    anyhow::Error::new(e).context(format!("binding the TURN TCP listener {bound}")),
                )
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("binding the TURN port {ip}:{port}")))
}

/// Keeps the guard's allocation table and the relayed-bytes counter in step with the TURN crate:
/// closed allocations as they close, relayed bytes every few seconds.
async fn keep_figures(
    server: Arc<Server>,
    guard: Arc<Guard>,
    mut closed: mpsc::Receiver<AllocationInfo>,
    mut stopped: watch::Receiver<bool>,
) {
    // Bytes already counted per allocation (bounded by the allocations there are).
    let mut counted: HashMap<FiveTuple, usize> = HashMap::new();
    let mut every = tokio::time::interval(FIGURES_EVERY);
    loop {
        tokio::select! {
            info = closed.recv() => {
                let Some(info) = info else { return };
                let before = counted.remove(&info.five_tuple).unwrap_or(0);
                guard.relayed("to_peer", info.relayed_bytes.saturating_sub(before));
                guard.on_closed(info.five_tuple.protocol, info.five_tuple.src_addr);
            }
            _ = every.tick() => {
                // It waits for every listener's request loop: bounded, so a stalled listener
                // cannot stop the closed allocations above from being taken off the guard.
                // An error (the crate's command channel lagged and skipped the request) only
                // costs this round of byte counts; ending here would leave every later close
                // notice unread, and the guard's counts would only grow.
                let infos = match tokio::time::timeout(STOP_WAIT, server.get_allocations_info(None)).await {
                    Ok(Ok(infos)) => infos,
                    Ok(Err(_)) | Err(_) => continue,
                };
                counted.retain(|k, _| infos.contains_key(k));
                for (tuple, info) in infos {
                    let before = counted.insert(tuple, info.relayed_bytes).unwrap_or(0);
                    guard.relayed("to_peer", info.relayed_bytes.saturating_sub(before));
                }
            }
            () = until_stopped(&mut stopped) => return,
        }
    }
}

/// Returns once `stop` says true (or its sender is gone).
pub(crate) async fn until_stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, before the caller's next await.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// Long-term credentials from the TURN REST API scheme; refusals counted by reason.
struct Auth {
    auth: Arc<TurnAuth>,
    guard: Arc<Guard>,
}

impl AuthHandler for Auth {
    fn auth_handle(
        &self,
        username: &str,
        _realm: &str,
        _src: SocketAddr,
    ) -> Result<SecretString, medea_turn::Error> {
        match self.auth.password(username, credentials::unix_now()) {
            Ok(p) => Ok(SecretString::from(p)),
            Err(r) => {
                self.guard.refused(r.as_str());
                Err(medea_turn::Error::NoSuchUser)
            }
        }
    }
}

/// Challenges and Binding answers, and signed requests with a nonce the TURN crate has not issued
/// let through, per second, all clients together (`guard.rs`).
pub const UNAUTHENTICATED_PER_SEC: NonZeroU32 = match NonZeroU32::new(200) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};

/// The default bandwidth per allocation, in kbit/s (`--turn-bandwidth`).
pub const DEFAULT_KBPS: u32 = 5_000;

/// `kbps` kbit/s as bytes per second (at least 1).
pub fn bytes_per_sec(kbps: u32) -> NonZeroU32 {
    NonZeroU32::new(kbps.saturating_mul(125)).unwrap_or(NonZeroU32::MIN)
}
