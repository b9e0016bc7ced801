//! One node, started from a [`Config`]: binds its sockets, spawns its tasks on the current tokio
//! runtime and hands back a [`Node`] with the bound addresses, a drain and a shutdown. The
//! `trackmesh` binary is flag parsing, logging and signals around this; tests start many nodes
//! in one process with it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::{oneshot, watch};
use tokio::task::{AbortHandle, JoinHandle};

use crate::api;
use crate::cluster::membership::{self, GossipThread, LocalState, MembershipConfig};
use crate::cluster::relay::{RELAY_OUT_QUEUE, Relay, RelayConfig};
use crate::config::Config;
use crate::engine::{Engine, EngineConfig};
use crate::ids::NodeTag;
use crate::liveness::Liveness;
use crate::workers::{EngineHandle, Workers};

/// Log lines keep the binary's target they had before the wiring moved here, so log filters and
/// readers see the same lines.
const LOG_TARGET: &str = "trackmesh";
/// How often a drain looks whether the last session has ended.
const DRAIN_POLL: Duration = Duration::from_millis(200);

/// A running node. Dropping it (or [`Node::abort`]) aborts every task at once (no drain, no
/// grace; the sockets close as the runtime drops the aborted tasks); [`Node::shutdown`] stops it
/// in order and returns once its ports are free.
pub struct Node {
    http: SocketAddr,
    media: SocketAddr,
    candidate: SocketAddr,
    gossip: SocketAddr,
    relay_addr: SocketAddr,
    node_id: String,
    tag: NodeTag,
    region: String,
    drain_timeout: Duration,
    engine: EngineHandle,
    local: Arc<LocalState>,
    liveness: Liveness,
    relay: Relay,
    /// The engine workers (threads), each with its media socket.
    workers: Workers,
    /// Each worker's bound media address, in worker order.
    media_addrs: Vec<SocketAddr>,
    /// The ICE-TCP accept loops and their connections, with `--media-tcp` (one per worker).
    tcp_tasks: Vec<JoinHandle<()>>,
    /// The first worker's ICE-TCP listener's address, with `--media-tcp`.
    media_tcp: Option<SocketAddr>,
    /// Every address in the first worker's host candidates (the primary one is `candidate`).
    candidates: Vec<SocketAddr>,
    load_task: JoinHandle<()>,
    /// Announces this node's streams and follows other nodes' publishers (`api::follow_streams`);
    /// announces its rooms and ends participants of deleted ones (`api::announce_rooms`).
    follow_task: JoinHandle<()>,
    /// Dropping it tells the HTTP server to stop accepting and finish open requests.
    stop_http: Option<oneshot::Sender<()>>,
    /// Set to true, it tells the HTTP server to close its listener and go on serving open
    /// connections ([`Node::stop_accepting`]).
    close_http_listener: watch::Sender<bool>,
    http_task: Option<JoinHandle<()>>,
    gossip_thread: Option<GossipThread>,
    /// The embedded TURN server, when a TURN key is configured.
    turn: Option<Arc<crate::turn::TurnServer>>,
    /// The HTTPS certificate, when the HTTP port serves HTTPS.
    tls: Option<Arc<crate::http::tls::TlsCerts>>,
    /// Cascades to and from other servers, stopped (their remote sessions DELETEd) on shutdown.
    cascades: Arc<crate::cascade::Cascades>,
    /// The NATS publisher of audio egress, with `--nats`.
    egress: Option<crate::egress::NatsEgress>,
}

impl Node {
    /// Binds media, HTTP, gossip and relay, and starts serving. Errors name what could not be
    /// bound or started; nothing keeps running after an error.
    pub async fn start(cfg: Config) -> anyhow::Result<Node> {
        // Once per process; later calls (more nodes in one process) keep the first.
        str0m::crypto::from_feature_flags().install_process_default();
        let rejects =
            Arc::new(crate::rejects::Rejects::new().context("registering the rejection counter")?);

        let tag = NodeTag::random();
        let (to_relay, relay_out) = tokio::sync::mpsc::channel(RELAY_OUT_QUEUE);
        // Audio egress only with --nats: no NATS client runs otherwise.
        let (egress, egress_tx) = match &cfg.nats {
            Some(nats) => {
                let (egress, tx) = crate::egress::start(nats);
                tracing::info!(target: LOG_TARGET, prefix = %nats.prefix, "audio egress to NATS");
                (Some(egress), Some(tx))
            }
            None => (None, None),
        };
        // One media socket (and ICE-TCP twin) per engine worker: worker i on the media port + i.
        let mut specs = Vec::with_capacity(cfg.workers);
        let mut media_tcp: Vec<crate::media_tcp::MediaTcp> = Vec::new();
        let mut media_addrs = Vec::with_capacity(cfg.workers);
        let mut candidates: Vec<SocketAddr> = Vec::new();
        let mut first_candidates: Vec<SocketAddr> = Vec::new();
        let mut tcp_counters = None;
        for worker in 0..cfg.workers {
            let want = worker_media_addr(cfg.media, cfg.worker_ports, worker)?;
            let (media, listener) = bind_media(want, cfg.media_tcp).with_context(|| {
                format!("binding the media socket {want} (engine worker {worker})")
            })?;
            let media_addr = media.local_addr().context("media socket address")?;
            let worker_candidates = cfg.candidate_addrs(media_addr)?;
            let candidate_addr = *worker_candidates
                .first()
                .context("no ICE candidate address for the media socket")?;
            // Building an engine generates its DTLS certificate, which also warms the crypto
            // provider so the first client does not pay for it.
            let mut engine = Engine::new(
                EngineConfig {
                    node_tag: tag,
                    worker: u8::try_from(worker).context("too many engine workers")?,
                    local_addr: media_addr,
                    candidate_addr,
                    more_candidates: worker_candidates.iter().skip(1).copied().collect(),
                    media_tcp: listener.is_some(),
                    track_timeout: cfg.track_timeout,
                    reconnect_grace: cfg.reconnect_grace,
                    unconnected_expiry: cfg.unconnected_expiry,
                    // The node's cap: each engine counts the other workers' sessions too.
                    max_sessions: cfg.max_sessions,
                    bandwidth_estimation: cfg.bwe,
                },
                Instant::now(),
            );
            if let Some(nats) = &cfg.nats {
                engine.enable_egress(&nats.prefix, (Instant::now(), unix_ms_now()));
            }
            let tcp = match listener {
                Some(listener) => {
                    let (frames, frames_in) =
                        tokio::sync::mpsc::channel(crate::media_tcp::READ_QUEUE);
                    let started = match tcp_counters.clone() {
                        Some(c) => crate::media_tcp::start_counted(listener, frames, c)?,
                        None => crate::media_tcp::start(listener, frames)?,
                    };
                    tcp_counters.get_or_insert_with(|| started.counters.clone());
                    let sender = started.sender.clone();
                    media_tcp.push(started);
                    Some((sender, frames_in))
                }
                None => None,
            };
            media_addrs.push(media_addr);
            if worker == 0 {
                first_candidates.clone_from(&worker_candidates);
            }
            candidates.extend(worker_candidates);
            specs.push(crate::workers::WorkerSpec {
                engine,
                socket: media,
                tcp,
            });
        }
        let media_addr = *media_addrs.first().context("no engine worker")?;
        let candidate_addr = *candidates
            .first()
            .context("no ICE candidate address for the media socket")?;
        let (workers, relay_in) = Workers::start(
            specs,
            crate::workers::WorkersConfig {
                tag,
                placement: cfg.worker_placement.clone(),
                fault_panic: cfg.fault_panic_worker,
            },
            to_relay,
            egress_tx,
        )
        .await?;
        let handle = workers.handle().clone();
        // From here on an error must not leave the engines (or later the relay) running.
        let mut cleanup = StopOnError {
            engine: workers.abort_handles(),
            tcp: media_tcp.iter().map(|t| t.task.abort_handle()).collect(),
            relay: None,
            armed: true,
        };
        tracing::info!(target: LOG_TARGET, workers = cfg.workers, media = ?media_addrs, "engine workers started");

        let listener = tokio::net::TcpListener::bind(cfg.http)
            .await
            .with_context(|| format!("binding the HTTP listener {}", cfg.http))?;
        let http_addr = listener.local_addr().context("HTTP listener address")?;
        let tls = match &cfg.tls {
            Some((cert, key)) => Some(
                crate::http::tls::TlsCerts::load(cert, key)
                    .context("loading the HTTPS certificate")?,
            ),
            None => None,
        };

        if cfg.dev_secret {
            tracing::warn!(
                target: LOG_TARGET,
                "no --cluster-secret: using the development secret; never do this in production"
            );
        }
        if cfg.cluster_secret_previous.is_some() {
            tracing::info!(
                target: LOG_TARGET,
                "rotating the cluster secret: gossip is sent under the current and the previous secret and both are accepted; drop --cluster-secret-previous once every node has the current one"
            );
        }
        // Other nodes dial what this node announces: a wildcard address would send them to
        // themselves.
        for (what, addr) in [("--http", http_addr.ip()), ("--relay", cfg.relay.ip())] {
            if addr.is_unspecified() && cfg.public_ip.is_none() {
                bail!(
                    "{what} binds a wildcard address: give --public-ip with the address other nodes reach"
                );
            }
        }
        let relay_socket = std::net::UdpSocket::bind(cfg.relay)
            .with_context(|| format!("binding the relay socket {}", cfg.relay))?;
        let relay_addr = relay_socket.local_addr().context("relay socket address")?;
        let members = membership::start(MembershipConfig {
            node_id: cfg.node_id.clone(),
            tag,
            region: cfg.region.clone(),
            gossip: cfg.gossip,
            seeds: cfg.seeds.clone(),
            secret: cfg.cluster_secret.clone(),
            secret_previous: cfg.cluster_secret_previous.clone(),
            rejects: rejects.clone(),
            api: format!(
                "{}://{}",
                if tls.is_some() { "https" } else { "http" },
                announced(http_addr, cfg.public_ip)
            ),
            relay: announced(relay_addr, cfg.public_ip),
            media: candidate_addr,
        })?;
        let relay = Relay::start(
            RelayConfig {
                node_id: cfg.node_id.clone(),
                tag,
                socket: relay_socket,
                secret: cfg.cluster_secret.clone(),
                secret_previous: cfg.cluster_secret_previous.clone(),
                test_loss: cfg.relay_test_loss,
            },
            members.view.clone(),
            handle.clone(),
            relay_in,
            relay_out,
        )?;
        cleanup.relay = Some(relay.clone());
        let metrics =
            Arc::new(crate::metrics::Metrics::new(&rejects).context("registering metrics")?);
        if let Some(tcp) = media_tcp.first() {
            metrics
                .register(tcp.counters.collectors())
                .context("registering ICE-TCP metrics")?;
            tracing::info!(target: LOG_TARGET, ice_tcp = %tcp.addr, "ICE-TCP on the media port");
        }
        let turn_auth = Arc::new(crate::turn::TurnAuth::new(&cfg.turn_keys));
        let turn = if turn_auth.enabled() {
            let server = crate::turn::TurnServer::start(
                crate::turn::Settings {
                    // TURN stays IPv4 on a dual-stack node whose primary address is IPv4.
                    bind_ip: match media_addr.ip() {
                        ip if ip.is_unspecified() && candidate_addr.is_ipv4() => {
                            std::net::Ipv4Addr::UNSPECIFIED.into()
                        }
                        ip => ip,
                    },
                    port: cfg.turn_port,
                    public_ip: cfg.turn_public_ip.unwrap_or(candidate_addr.ip()),
                    limits: crate::turn::Limits {
                        // Relayed packets reach the bound socket; the announced address too,
                        // when clients were given a public one.
                        peers: media_addrs
                            .iter()
                            .copied()
                            .chain(candidates.iter().copied())
                            .fold(Vec::new(), |mut v, a| {
                                if !v.contains(&a) {
                                    v.push(a);
                                }
                                v
                            }),
                        max_allocations: cfg.turn_max_allocations,
                        per_credential: cfg.turn_allocations_per_credential,
                        bytes_per_sec: crate::turn::bytes_per_sec(cfg.turn_bandwidth_kbps),
                        unauthenticated_per_sec: crate::turn::UNAUTHENTICATED_PER_SEC,
                    },
                },
                turn_auth.clone(),
            )
            .await?;
            metrics
                .register(server.guard().figures().collectors())
                .context("registering TURN metrics")?;
            tracing::info!(target: LOG_TARGET, turn = %server.addr(), urls = %server.public_addr(), "TURN server on UDP and TCP");
            Some(Arc::new(server))
        } else {
            tracing::info!(target: LOG_TARGET, "no --turn-key: no TURN server");
            None
        };

        let load_task = tokio::spawn(crate::cluster::report_load(
            handle.clone(),
            relay.clone(),
            members.local.clone(),
        ));
        cleanup.armed = false;
        let liveness = Liveness::new(
            workers.abort_handles(),
            relay.health(),
            members.view.clone(),
        );
        let cluster = api::ClusterHandle {
            self_id: cfg.node_id.clone(),
            tag,
            view: members.view.clone(),
            relay: relay.clone(),
            node_auth: api::node_auth::NodeAuth::new(
                &cfg.cluster_secret,
                cfg.cluster_secret_previous.as_deref(),
            ),
        };
        let ops = api::OpsState {
            metrics,
            local: members.local.clone(),
            started: Instant::now(),
            gossip: cfg.gossip,
            rejects: rejects.clone(),
            liveness: liveness.clone(),
            egress: egress.as_ref().map(|e| e.figures().clone()),
        };
        let cascades = Arc::new(crate::cascade::Cascades::new(handle.clone()));
        let state = Arc::new(api::ApiState::new(
            &cfg,
            handle.clone(),
            cluster,
            ops,
            api::turn::TurnState {
                auth: turn_auth,
                server: turn.clone(),
            },
            cascades.clone(),
        ));
        // Streams and rooms both announce in gossip and follow the cluster; one task for both.
        let follow_task = tokio::spawn({
            let st = state.clone();
            async move {
                tokio::select! {
                    _ = api::follow_streams(st.clone()) => {}
                    _ = api::announce_rooms(st) => {}
                }
            }
        });
        let (stop_http, http_stopped) = oneshot::channel::<()>();
        let (close_http_listener, mut listener_closing) = watch::channel(false);
        let http_task = tokio::spawn(crate::http::serve(
            listener,
            api::router(state),
            cfg.http_limits,
            rejects,
            tls.clone(),
            async move {
                // Told, or the node is gone (then `http_stopped` ends the server as well).
                let _ = listener_closing.wait_for(|close| *close).await;
            },
            async move {
                // Sent or dropped: stop either way.
                let _ = http_stopped.await;
            },
        ));

        Ok(Node {
            http: http_addr,
            media: media_addr,
            candidate: candidate_addr,
            gossip: cfg.gossip,
            relay_addr,
            node_id: cfg.node_id,
            tag,
            region: cfg.region,
            drain_timeout: cfg.drain_timeout,
            engine: handle,
            local: members.local,
            liveness,
            relay,
            workers,
            media_addrs,
            media_tcp: media_tcp.first().map(|t| t.addr),
            tcp_tasks: media_tcp.into_iter().map(|t| t.task).collect(),
            candidates: first_candidates,
            load_task,
            follow_task,
            stop_http: Some(stop_http),
            close_http_listener,
            http_task: Some(http_task),
            gossip_thread: Some(members.thread),
            turn,
            tls,
            cascades,
            egress,
        })
    }

    /// The engine task's handle: what the API calls the engine through (tests mark sessions
    /// for audio egress with it).
    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    /// The bound HTTP address (the API, `/healthz`, `/metrics`).
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// The bound media (UDP) address of the first engine worker.
    pub fn media_addr(&self) -> SocketAddr {
        self.media
    }

    /// Every engine worker's bound media (UDP) address, in worker order.
    pub fn media_addrs(&self) -> &[SocketAddr] {
        &self.media_addrs
    }

    /// Changes when an engine worker has panicked (its index); the binary exits non-zero then.
    pub fn worker_failed(&self) -> tokio::sync::watch::Receiver<Option<usize>> {
        self.workers.failed()
    }

    /// The media address put into ICE candidates (the public IP when one is configured).
    pub fn candidate_addr(&self) -> SocketAddr {
        self.candidate
    }

    /// Every address put into ICE candidates: the primary one, then the other family's.
    pub fn candidate_addrs(&self) -> &[SocketAddr] {
        &self.candidates
    }

    /// The bound ICE-TCP listener (`--media-tcp`), on the media port.
    pub fn media_tcp_addr(&self) -> Option<SocketAddr> {
        self.media_tcp
    }

    /// The gossip address, as announced to the other nodes.
    pub fn gossip_addr(&self) -> SocketAddr {
        self.gossip
    }

    /// The bound relay (QUIC) address.
    pub fn relay_addr(&self) -> SocketAddr {
        self.relay_addr
    }

    /// This node's id in the cluster.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// This node's tag, the prefix of the session ids it issues.
    pub fn tag(&self) -> NodeTag {
        self.tag
    }

    /// The region this node serves.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The TURN server's bound address (UDP and TCP), when one runs.
    pub fn turn_addr(&self) -> Option<SocketAddr> {
        self.turn.as_ref().map(|t| t.addr())
    }

    /// The TURN server's refusal and allocation figures, when one runs (tests).
    pub fn turn_guard(&self) -> Option<Arc<crate::turn::Guard>> {
        self.turn.as_ref().map(|t| t.guard().clone())
    }

    /// Which parts still run (the same answer as `/healthz`).
    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    /// The HTTPS certificate, to reload on SIGHUP; None when the node serves plain HTTP.
    pub fn tls_certs(&self) -> Option<Arc<crate::http::tls::TlsCerts>> {
        self.tls.clone()
    }

    /// Closes the HTTP listener, so that another process can bind the port, and goes on
    /// serving the connections already open (and media, relay and gossip) until
    /// [`Node::shutdown`]. New clients can no longer reach this node's API: the binary does this
    /// on Ctrl-C, where a person is about to start a node again, not on SIGTERM from a
    /// supervisor (see `main.rs`).
    pub fn stop_accepting(&self) {
        self.close_http_listener.send_replace(true);
    }

    /// What SIGTERM does: refuse new sessions, report not ready (and gossip it), keep serving the
    /// sessions there are and the tracks relayed to other nodes, and return when the sessions
    /// have ended and the other nodes have moved their pulls elsewhere, or the drain timeout has
    /// passed.
    pub async fn drain(&self) {
        self.local.stopping.store(true, Ordering::Relaxed);
        self.local.draining.store(true, Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        tracing::info!(
            target: LOG_TARGET,
            timeout_secs = self.drain_timeout.as_secs_f64(),
            "draining: waiting for sessions to end"
        );
        loop {
            let left: usize = self
                .engine
                // Cascades' own sessions serve these clients; shutdown stops them after.
                .call_all(|e, _| e.client_session_count())
                .await
                .map_or(0, |n| n.into_iter().sum());
            // Tracks this node relays to others (as their region's hub): they move to another
            // hub once gossip tells them this one drains, subscribing there before leaving here.
            let relayed = self.relay.downstreams();
            if left == 0 && relayed == 0 {
                tracing::info!(target: LOG_TARGET, "drained: no sessions left, no tracks relayed to other nodes");
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::info!(target: LOG_TARGET, sessions = left, relayed, "drain timeout: exiting with sessions left (or tracks relayed to other nodes)");
                return;
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    /// Stops in order: the HTTP server stops accepting and finishes open requests (bounded),
    /// then the engine, the relay (peers are told, bounded) and gossip stop. Every task has
    /// ended and the HTTP, media, relay and gossip ports are free when this returns.
    pub async fn shutdown(mut self) {
        self.stop_http.take();
        if let Some(task) = self.http_task.take()
            && let Err(e) = task.await
            && e.is_panic()
        {
            tracing::warn!(target: LOG_TARGET, "the HTTP server task panicked");
        }
        if let Some(turn) = &self.turn {
            turn.shutdown().await;
        }
        // While the engine still runs: each cascade closes its session and DELETEs the other
        // server's (bounded by the HTTP timeout).
        self.cascades.stop_all().await;
        // Awaited so every media socket, which the workers own, is closed.
        self.workers.shutdown().await;
        for tcp in std::mem::take(&mut self.tcp_tasks) {
            tcp.abort();
            // Awaited so the listener and every connection are closed.
            let _ = tcp.await;
        }
        self.load_task.abort();
        self.follow_task.abort();
        for (what, task) in [
            ("load report", &mut self.load_task),
            ("stream follower", &mut self.follow_task),
        ] {
            if let Err(e) = task.await
                && e.is_panic()
            {
                tracing::warn!(target: LOG_TARGET, "the {what} task panicked");
            }
        }
        self.relay.shutdown().await;
        if let Some(egress) = &self.egress {
            egress.abort();
        }
        if let Some(gossip) = self.gossip_thread.take()
            && tokio::task::spawn_blocking(move || gossip.stop_and_join())
                .await
                .is_err()
        {
            tracing::warn!(target: LOG_TARGET, "joining the gossip thread failed");
        }
    }

    /// Stops everything at once, as a killed process would: no drain, no grace for open
    /// requests, peers are not told. Every task (the relay's links included) is aborted; blocks
    /// only until gossip has stopped (its port is then free). The other sockets close as the
    /// runtime drops the aborted tasks, which it does at their next turn, not within this call.
    pub fn abort(mut self) {
        self.stop_all();
        if let Some(gossip) = self.gossip_thread.take() {
            gossip.stop_and_join();
        }
    }

    fn stop_all(&mut self) {
        self.stop_http.take();
        if let Some(task) = self.http_task.take() {
            task.abort();
        }
        self.workers.abort();
        for tcp in &self.tcp_tasks {
            tcp.abort();
        }
        self.load_task.abort();
        self.follow_task.abort();
        self.relay.abort();
        if let Some(turn) = &self.turn {
            turn.abort();
        }
        if let Some(egress) = &self.egress {
            egress.abort();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // After shutdown() or abort() these are no-ops; otherwise stop without waiting.
        self.stop_all();
        self.gossip_thread.take();
    }
}

/// Stops what [`Node::start`] has started when it fails part way.
struct StopOnError {
    engine: Vec<AbortHandle>,
    tcp: Vec<AbortHandle>,
    relay: Option<Relay>,
    armed: bool,
}

impl Drop for StopOnError {
    fn drop(&mut self) {
        if self.armed {
            for task in self.engine.iter().chain(&self.tcp) {
                task.abort();
            }
            if let Some(relay) = &self.relay {
                relay.stop();
            }
        }
    }
}

/// Now as Unix milliseconds (0 before 1970), the wall-clock anchor of egress capture times.
fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The address other nodes use: the bound one, with the public IP when the bind is a wildcard.
fn announced(bound: SocketAddr, public_ip: Option<std::net::IpAddr>) -> SocketAddr {
    match public_ip {
        Some(ip) if bound.ip().is_unspecified() => SocketAddr::new(ip, bound.port()),
        _ => bound,
    }
}

/// Kernel buffer asked for on the media socket: fan-out sends bursts of one datagram per
/// subscriber, and the default (~200 KB) overflows long before the CPU is busy. The kernel caps
/// it at net.core.[rw]mem_max.
const MEDIA_SOCKET_BUFFER: usize = 4 << 20;

/// Binds the media socket and, with ICE-TCP, its TCP twin on the same port. `[::]` is one
/// dual-stack socket (IPV6_V6ONLY off) rather than a socket per family: one receive loop, and
/// a client that moves between families stays on the same socket. Port 0 picks a port free
/// for both (bounded retries).
fn bind_media(
    addr: SocketAddr,
    tcp: bool,
) -> anyhow::Result<(std::net::UdpSocket, Option<tokio::net::TcpListener>)> {
    const ATTEMPTS: usize = 20;
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let udp = bind_media_udp(addr)?;
        if !tcp {
            return Ok((udp, None));
        }
        let bound = udp.local_addr()?;
        match bind_media_tcp(bound) {
            Ok(listener) => return Ok((udp, Some(listener))),
            // Only a chosen port can be tried again.
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(e.context(format!("binding the ICE-TCP listener {bound}"))),
        }
    }
    Err(last
        .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
        .context(format!("no port free for both UDP and TCP on {addr}")))
}

/// Binds a media socket, not yet registered with a runtime: its worker's thread does that.
fn bind_media_udp(addr: SocketAddr) -> anyhow::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    for (what, res) in [
        ("receive", socket.set_recv_buffer_size(MEDIA_SOCKET_BUFFER)),
        ("send", socket.set_send_buffer_size(MEDIA_SOCKET_BUFFER)),
    ] {
        if let Err(e) = res {
            tracing::warn!(target: LOG_TARGET, error = %e, "cannot enlarge the media socket {what} buffer");
        }
    }
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Where engine worker `worker` binds its media socket: the first on `--media`, the others on
/// `--worker-ports` and up (so a one-worker node keeps its one port, and the workers' ports
/// are one range for the firewall), or an ephemeral port each when `--media` has port 0.
fn worker_media_addr(
    media: SocketAddr,
    worker_ports: u16,
    worker: usize,
) -> anyhow::Result<SocketAddr> {
    if media.port() == 0 || worker == 0 {
        return Ok(media);
    }
    let port = u16::try_from(usize::from(worker_ports) + worker - 1)
        .ok()
        .filter(|p| *p != 0)
        .with_context(|| {
            format!("engine worker {worker} has no media port: --worker-ports {worker_ports} leaves too few")
        })?;
    Ok(SocketAddr::new(media.ip(), port))
}

fn bind_media_tcp(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(tokio::net::TcpListener::from_std(socket.into())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{SessionId, UpId};
    use clap::Parser;

    async fn start() -> Node {
        start_with(&[]).await
    }

    async fn start_with(extra: &[&str]) -> Node {
        let gossip = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("a free UDP port");
        let flags = crate::config::Flags::try_parse_from(
            [
                "trackmesh",
                "--http",
                "127.0.0.1:0",
                "--media",
                "127.0.0.1:0",
                "--relay",
                "127.0.0.1:0",
                "--gossip",
                &gossip.to_string(),
            ]
            .into_iter()
            .chain(extra.iter().copied()),
        )
        .expect("flags");
        let cfg = Config::from_flags(flags).expect("config");
        Node::start(cfg).await.expect("node starts")
    }

    async fn get(node: &Node, path: &str) -> (u16, serde_json::Value) {
        let res = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client")
            .get(format!("http://{}{path}", node.http_addr()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = res.status().as_u16();
        (status, res.json().await.expect("a JSON body"))
    }

    async fn healthz(node: &Node) -> (u16, serde_json::Value) {
        get(node, "/healthz").await
    }

    /// Polls `/healthz` (bounded) until it names exactly `stopped`.
    async fn until_stopped(node: &Node, stopped: &str) -> serde_json::Value {
        let want = format!("stopped: {stopped}");
        let mut last = serde_json::Value::Null;
        for _ in 0..100 {
            let (status, body) = healthz(node).await;
            if status == 503 && body["errorDescription"] == want.as_str() {
                return body;
            }
            last = body;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("/healthz never said {want:?}; last answer: {last}");
    }

    /// Polls (bounded) until the relay's named task has ended.
    async fn until_relay_task_ended(node: &Node, name: &str) {
        for _ in 0..200 {
            if node.relay.health().has_ended(name) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the relay's {name:?} task never ended");
    }

    #[test]
    fn the_first_worker_takes_the_media_port_and_the_others_the_worker_ports() {
        let media: SocketAddr = "10.0.0.1:7701".parse().expect("addr");
        let at = |w| worker_media_addr(media, 40_000, w).map(|a| a.to_string());
        assert_eq!(at(0).expect("first"), "10.0.0.1:7701");
        assert_eq!(at(1).expect("second"), "10.0.0.1:40000");
        assert_eq!(at(3).expect("fourth"), "10.0.0.1:40002");
        let ephemeral: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        assert_eq!(
            worker_media_addr(ephemeral, 40_000, 5).expect("any").port(),
            0,
            "port 0: a free port each"
        );
        assert!(
            worker_media_addr(media, 65_535, 2).is_err(),
            "no port past 65535"
        );
    }

    /// The node-wide stream table: an entry outlives its stream on its worker only until the
    /// next prune, and never while an operation on it is in flight (which would let a second
    /// one place the stream on another worker).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stream_entries_are_pruned_once_their_stream_is_gone_and_idle() {
        let node = start_with(&["--workers", "2"]).await;
        let engine = node.engine.clone();
        let slot = engine.stream_slot("app", "x").await.expect("a worker");
        let w = slot.worker();
        assert_eq!(
            engine.prune_streams().await.expect("workers run"),
            0,
            "in flight, not made yet"
        );
        let created = engine
            .call_on(w, |e, _| e.stream_create("app", "x", true))
            .await
            .expect("the worker runs");
        assert_eq!(created, Ok(true));
        drop(slot);
        assert_eq!(
            engine.prune_streams().await.expect("workers run"),
            0,
            "it exists"
        );
        let again = engine.stream_slot("app", "x").await.expect("a worker");
        assert_eq!(again.worker(), w, "one stream, one worker");
        drop(again);
        engine
            .call_on(w, |e, now| e.stream_delete("app", "x", now))
            .await
            .expect("the worker runs")
            .expect("deleted");
        // A first request that never made its stream (refused) leaves an entry too.
        drop(engine.stream_slot("app", "never").await.expect("a worker"));
        assert_eq!(engine.stream_entries(), 2);
        assert_eq!(
            engine.prune_streams().await.expect("workers run"),
            2,
            "both gone"
        );
        assert_eq!(engine.stream_entries(), 0);
        assert!(engine.find_stream("app", "x").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn healthz_fails_naming_each_part_that_stopped() {
        let mut node = start().await;
        let (status, body) = healthz(&node).await;
        assert_eq!(
            (status, body),
            (200, serde_json::json!({"status": "ok"})),
            "a healthy node answers as before"
        );

        // Gossip stopping ends the relay's member watch; that is gossip's failure, not the
        // relay's, so only gossip is named.
        node.gossip_thread
            .take()
            .expect("gossip runs")
            .stop_and_join();
        until_relay_task_ended(&node, "members").await;
        let body = until_stopped(&node, "gossip").await;
        assert_eq!(body["errorCode"], "temporarily_unavailable_error");

        // Likewise the engine stopping ends the relay's engine output pump.
        node.workers.abort();
        until_relay_task_ended(&node, "engine outputs").await;
        until_stopped(&node, "engine, gossip").await;

        node.relay.abort();
        until_stopped(&node, "engine, relay, gossip").await;
        node.shutdown().await;
    }

    /// The node's four ports, bound again all at once: `Err` names the first still taken.
    fn bind_all(
        ports: &(SocketAddr, SocketAddr, SocketAddr, SocketAddr),
    ) -> Result<Vec<Box<dyn std::any::Any>>, String> {
        let (http, media, relay, gossip) = *ports;
        let mut held: Vec<Box<dyn std::any::Any>> = Vec::new();
        held.push(Box::new(
            std::net::TcpListener::bind(http).map_err(|e| format!("HTTP {http}: {e}"))?,
        ));
        for (what, addr) in [("media", media), ("relay", relay), ("gossip", gossip)] {
            held.push(Box::new(
                std::net::UdpSocket::bind(addr).map_err(|e| format!("{what} {addr}: {e}"))?,
            ));
        }
        Ok(held)
    }

    fn ports(node: &Node) -> (SocketAddr, SocketAddr, SocketAddr, SocketAddr) {
        (
            node.http_addr(),
            node.media_addr(),
            node.relay_addr(),
            node.gossip_addr(),
        )
    }

    /// Two nodes of one cluster where `b` pulls a track from `a` over a relay link.
    async fn relayed_pair() -> (Node, Node) {
        let a = start().await;
        let b = start_with(&["--seed", &a.gossip_addr().to_string()]).await;
        // A relayed publication on A stands in for a client's track: B can subscribe to it.
        let session = SessionId::new(a.tag());
        let info = crate::engine::TrackInfo {
            kind: str0m::media::MediaKind::Video,
            codec: crate::engine::CodecInfo {
                codec: str0m::format::Codec::Vp8,
                clock_rate: 90_000,
                channels: None,
            },
        };
        a.engine
            .call(move |e, now| {
                e.add_relay_publication("app", session, "t", UpId(1 << 40), info, now)
            })
            .await
            .expect("A's engine runs")
            .expect("the publication is added");
        // B pulls once gossip has told it about A (bounded).
        let mut last = None;
        for _ in 0..200 {
            match b.relay.ensure_upstream("app", session, "t").await {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(last.is_none(), "B never pulled A's track: {last:?}");
        let view = b.relay.view();
        assert_eq!(view.links.len(), 1, "B has one link: {view:?}");
        assert_eq!(view.links[0].peer, a.node_id(), "{view:?}");
        assert_eq!(view.upstream.len(), 1, "{view:?}");
        assert_eq!(a.relay.view().downstream.len(), 1, "A serves B");
        (a, b)
    }

    /// Polls (bounded) until B has no link and no upstream left.
    async fn until_unlinked(b: &Node) {
        let mut view = b.relay.view();
        for _ in 0..400 {
            if view.links.is_empty() && view.upstream.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            view = b.relay.view();
        }
        panic!("B still has a relay link or upstream: {view:?}");
    }

    /// A stopped relay shows no link or upstream: the task that kept its snapshot is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_relay_shows_no_links_or_upstreams() {
        let (a, b) = relayed_pair().await;
        b.relay.stop();
        let view = b.relay.view();
        assert!(
            view.links.is_empty() && view.upstream.is_empty(),
            "a stopped relay shows what it no longer has: {view:?}"
        );
        assert_eq!(b.relay.counts(), (0, 0));
        assert_eq!(b.relay.figures().links, 0);
        b.shutdown().await;
        a.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_shutdown_every_port_is_free_at_once_and_peers_drop_the_link() {
        let (a, b) = relayed_pair().await;
        let addrs = ports(&a);
        a.shutdown().await;
        if let Err(e) = bind_all(&addrs) {
            panic!("a port is still bound after shutdown: {e}");
        }
        assert_eq!(healthz(&b).await.0, 200, "the other node is unaffected");
        until_unlinked(&b).await;
        b.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_abort_on_a_shared_runtime_every_port_is_freed_and_peers_drop_the_link() {
        let (a, b) = relayed_pair().await;
        let addrs = ports(&a);
        a.abort();
        // abort() does not wait for the runtime to drop the aborted tasks: poll (bounded).
        let mut last = String::new();
        for _ in 0..200 {
            match bind_all(&addrs) {
                Ok(_) => {
                    last.clear();
                    break;
                }
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(last.is_empty(), "a port stays bound after abort: {last}");
        until_unlinked(&b).await;
        assert_eq!(healthz(&b).await.0, 200, "the other node is unaffected");
        b.shutdown().await;
    }

    /// One keep-alive `GET /healthz` on an open connection: the status line.
    async fn healthz_on(conn: &mut tokio::net::TcpStream) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")
            .await
            .expect("send a request");
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read the answer");
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        text.lines().next().unwrap_or_default().to_string()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_accepting_frees_the_http_port_and_serves_open_connections() {
        let node = start().await;
        let addr = node.http_addr();
        let mut open = tokio::net::TcpStream::connect(addr).await.expect("connect");
        assert_eq!(healthz_on(&mut open).await, "HTTP/1.1 200 OK");
        node.stop_accepting();
        // The listener closes on the HTTP task's next turn: poll (bounded).
        let mut rebound = None;
        for _ in 0..200 {
            if let Ok(l) = std::net::TcpListener::bind(addr) {
                rebound = Some(l);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(rebound.is_some(), "the HTTP port is still taken");
        assert_eq!(
            healthz_on(&mut open).await,
            "HTTP/1.1 200 OK",
            "a connection opened before is still served"
        );
        drop(rebound);
        node.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_turn_server_runs_with_a_key_and_frees_its_port_at_shutdown() {
        let without = start().await;
        assert_eq!(without.turn_addr(), None, "no key, no TURN server");
        without.shutdown().await;

        let node = start_with(&["--turn-key", "k:s", "--turn-port", "0"]).await;
        let turn = node.turn_addr().expect("a TURN server with a key");
        assert_eq!(turn.ip(), node.media_addr().ip(), "on the media IP");
        // Both the UDP socket and the TCP listener are taken while it runs.
        assert!(std::net::UdpSocket::bind(turn).is_err());
        assert!(std::net::TcpListener::bind(turn).is_err());
        node.shutdown().await;
        // The crate's tasks let go of the sockets as they end (bounded poll).
        let mut last = String::new();
        for _ in 0..100 {
            match (
                std::net::UdpSocket::bind(turn),
                std::net::TcpListener::bind(turn),
            ) {
                (Ok(_), Ok(_)) => {
                    last.clear();
                    break;
                }
                (u, t) => last = format!("udp {:?}, tcp {:?}", u.err(), t.err()),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            last.is_empty(),
            "the TURN port stays bound after shutdown: {last}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drain_reports_not_ready_and_ends_when_no_session_is_left() {
        let node = start_with(&["--drain-timeout", "1h"]).await;
        assert_eq!(get(&node, "/readyz").await.0, 200);
        // Without sessions the drain ends at once; this bound only catches waiting out the hour.
        tokio::time::timeout(Duration::from_secs(60), node.drain())
            .await
            .expect("the drain ends when no session is left, not at its timeout");
        let (status, body) = get(&node, "/readyz").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["errorDescription"], "draining");
        assert_eq!(healthz(&node).await.0, 200, "draining is not dying");
        node.shutdown().await;
    }
}
