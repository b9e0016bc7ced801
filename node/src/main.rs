//! `trackmesh`: runs one node.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use tracing_subscriber::EnvFilter;

use trackmesh_node::cluster::membership::{self, MembershipConfig};
use trackmesh_node::cluster::relay::{RELAY_IN_QUEUE, RELAY_OUT_QUEUE, Relay, RelayConfig};
use trackmesh_node::config::{Config, Flags, LogFormat};
use trackmesh_node::engine::{Engine, EngineConfig};
use trackmesh_node::ids::NodeTag;
use trackmesh_node::{api, runtime};

fn main() -> ExitCode {
    let flags = Flags::parse();
    let cfg = match Config::from_flags(flags) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("trackmesh: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(cfg.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trackmesh: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("trackmesh: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    // chitchat's UDP socket warns once per undecodable datagram; the sealed gossip transport
    // feeds it only opened datagrams and counts failures itself (rate-limited), so its warnings
    // are dropped whatever RUST_LOG says.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,str0m=warn,dimpl=warn"));
    let filter = match "chitchat::transport::udp=error".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    str0m::crypto::from_feature_flags().install_process_default();
    let rejects = Arc::new(
        trackmesh_node::rejects::Rejects::new().context("registering the rejection counter")?,
    );

    let media =
        bind_media(cfg.media).with_context(|| format!("binding the media socket {}", cfg.media))?;
    let media_addr = media.local_addr().context("media socket address")?;
    let candidate_addr: SocketAddr = cfg.candidate_addr(media_addr);
    if candidate_addr.ip().is_unspecified() {
        bail!(
            "--media {media_addr} is a wildcard address: give --public-ip with the address clients reach"
        );
    }

    let tag = NodeTag::random();
    // Building the engine generates the DTLS certificate, which also warms the crypto provider
    // so the first client does not pay for it.
    let engine = Engine::new(
        EngineConfig {
            node_tag: tag,
            local_addr: media_addr,
            candidate_addr,
            track_timeout: cfg.track_timeout,
            reconnect_grace: cfg.reconnect_grace,
            unconnected_expiry: cfg.unconnected_expiry,
            max_sessions: cfg.max_sessions,
        },
        Instant::now(),
    );
    let (to_relay, relay_out) = tokio::sync::mpsc::channel(RELAY_OUT_QUEUE);
    let (relay_in, from_relay) = tokio::sync::mpsc::channel(RELAY_IN_QUEUE);
    let pipes = runtime::RelayPipes {
        from_relay,
        to_relay,
    };
    let (handle, engine_task) = runtime::spawn(engine, media, pipes);

    let listener = tokio::net::TcpListener::bind(cfg.http)
        .await
        .with_context(|| format!("binding the HTTP listener {}", cfg.http))?;
    let http_addr = listener.local_addr().context("HTTP listener address")?;

    if cfg.dev_secret {
        tracing::warn!(
            "no --cluster-secret: using the development secret; never do this in production"
        );
    }
    if cfg.cluster_secret_previous.is_some() {
        tracing::info!(
            "rotating the cluster secret: gossip is sent under the current and the previous secret and both are accepted; drop --cluster-secret-previous once every node has the current one"
        );
    }
    // Other nodes dial what this node announces: a wildcard address would send them to themselves.
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
        api: format!("http://{}", announced(http_addr, cfg.public_ip)),
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
        },
        members.view.clone(),
        handle.clone(),
        relay_in,
        relay_out,
    )?;
    tokio::spawn(trackmesh_node::cluster::report_load(
        handle.clone(),
        relay.clone(),
        members.local.clone(),
    ));

    if cfg.dev_app
        && let Some(app) = cfg.apps.first()
    {
        println!("development app id={} secret={}", app.id, app.secret);
    }
    println!(
        "trackmesh ready http={http_addr} media={media_addr} gossip={} relay={relay_addr} node={} tag={tag} region={}",
        cfg.gossip, cfg.node_id, cfg.region
    );
    tracing::info!(%http_addr, %media_addr, %candidate_addr, %relay_addr, gossip = %cfg.gossip, node = %cfg.node_id, node_tag = %tag, region = %cfg.region, "serving");

    let cluster = api::ClusterHandle {
        self_id: cfg.node_id.clone(),
        tag,
        view: members.view.clone(),
        relay,
        node_auth: api::node_auth::NodeAuth::new(
            &cfg.cluster_secret,
            cfg.cluster_secret_previous.as_deref(),
        ),
    };
    let metrics =
        Arc::new(trackmesh_node::metrics::Metrics::new(&rejects).context("registering metrics")?);
    let ops = api::OpsState {
        metrics,
        local: members.local.clone(),
        started: Instant::now(),
        gossip: cfg.gossip,
        rejects: rejects.clone(),
    };
    let state = Arc::new(api::ApiState::new(&cfg, handle.clone(), cluster, ops));
    let drained = drain_on_signal(handle, members.local.clone(), cfg.drain_timeout);
    trackmesh_node::http::serve(
        listener,
        api::router(state),
        cfg.http_limits,
        rejects,
        drained,
    )
    .await;
    engine_task.abort();
    Ok(())
}

/// On SIGTERM (or Ctrl-C) the node drains: it refuses new sessions, reports not ready and gossips
/// its state, keeps serving the sessions it has, and returns when they have ended or the timeout
/// has passed. A second signal ends the wait at once.
async fn drain_on_signal(
    engine: runtime::EngineHandle,
    local: Arc<membership::LocalState>,
    timeout: std::time::Duration,
) {
    shutdown_signal().await;
    local
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + timeout;
    tracing::info!(
        timeout_secs = timeout.as_secs_f64(),
        "draining: waiting for sessions to end"
    );
    let wait = async {
        loop {
            let left = engine.call(|e, _| e.session_count()).await.unwrap_or(0);
            if left == 0 {
                tracing::info!("drained: no sessions left");
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::info!(sessions = left, "drain timeout: exiting with sessions left");
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        _ = wait => {}
        _ = shutdown_signal() => tracing::info!("second signal: exiting now"),
    }
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

fn bind_media(addr: SocketAddr) -> anyhow::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    for (what, res) in [
        ("receive", socket.set_recv_buffer_size(MEDIA_SOCKET_BUFFER)),
        ("send", socket.set_send_buffer_size(MEDIA_SOCKET_BUFFER)),
    ] {
        if let Err(e) = res {
            tracing::warn!(error = %e, "cannot enlarge the media socket {what} buffer");
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(tokio::net::UdpSocket::from_std(socket.into())?)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
