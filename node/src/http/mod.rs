//! The HTTP server: our own accept loop over hyper's HTTP/1 connection, so that no client can
//! starve the node without authenticating.
//!
//! - Connections are capped in total and per client (IPv4 address or IPv6 /64); beyond a cap the
//!   client gets a JSON 503 at once, except for a small reserve that still serves `/healthz`,
//!   `/readyz` and `/metrics` (see `slots.rs`).
//! - Each connection has an idle, a header and a body deadline (see `conn.rs`).
//! - Errors the HTTP layer produces itself (400, 408, 414, 431, 503) have JSON bodies
//!   (see `answers.rs`).
//! - Refusals are counted in `trackmesh_rejected_total{port="http",reason}`, with at most one
//!   log line per client per minute.
//!
//! - With `--tls-cert`/`--tls-key` the same server speaks HTTPS (`tls.rs`): the handshake is
//!   bounded by the header timeout, and the connection caps count connections as before.
//!
//! HTTP/2 is not offered; put a TLS proxy in front for it.

mod answers;
mod conn;
mod fd_limit;
mod service;
mod slots;
pub mod tls;

use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio_rustls::TlsAcceptor;

pub use conn::Timeouts;
pub use service::PROBE_PATHS;
/// Whom a per-client bound counts (an IPv4 address or an IPv6 /64); the other per-client
/// bounds of the node (session creation, ICE-TCP) count the same way.
pub(crate) use slots::{ClientCounts, ClientKey};

use crate::rejects::{Port, Rejects};
use slots::{Admit, Full, Slots};

/// The server's limits (flags `--http-*`; defaults in `config.rs` and the README).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most open connections; beyond it clients get a 503 at once.
    pub max_connections: usize,
    /// Most open connections from one IPv4 address or IPv6 /64, so one client cannot take them all.
    pub max_connections_per_ip: usize,
    /// Extra connections kept for probes when a cap is reached; 0 refuses them all.
    pub probe_reserve: usize,
    /// Deadlines per connection.
    pub timeouts: Timeouts,
}

/// After the shutdown signal, how long open connections get to finish their requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

struct Ctx {
    router: Router,
    rejects: Arc<Rejects>,
    timeouts: Timeouts,
    slots: Arc<Slots>,
    /// For connections with a normal slot: keep-alive.
    api: http1::Builder,
    /// For probes served from the reserve: one request, then close.
    probe: http1::Builder,
    shutdown: watch::Receiver<()>,
    /// HTTPS: every connection is a TLS one.
    tls: Option<TlsAcceptor>,
}

/// Serves `router` on `listener` until `shutdown` completes, then lets open requests finish (at
/// most `SHUTDOWN_GRACE`) and returns. When `close_listener` completes first, the listener is
/// closed (the port is free for another process) while open connections are still served
/// until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    rejects: Arc<Rejects>,
    tls: Option<Arc<tls::TlsCerts>>,
    close_listener: impl Future<Output = ()>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = fd_limit::fit(limits);
    let (stop, stopped) = watch::channel(());
    let mut api = http1::Builder::new();
    api.timer(TokioTimer::new())
        // Our own deadlines (conn.rs) fire first; this only backs them up.
        .header_read_timeout(limits.timeouts.idle + limits.timeouts.header)
        .max_header_size(answers::MAX_HEAD_BYTES)
        .max_buf_size(answers::MAX_HEAD_BYTES)
        .keep_alive(true);
    let mut probe = api.clone();
    probe.keep_alive(false);
    let ctx = Arc::new(Ctx {
        router,
        rejects,
        timeouts: limits.timeouts,
        slots: Slots::new(
            limits.max_connections,
            limits.max_connections_per_ip,
            limits.probe_reserve,
        ),
        api,
        probe,
        shutdown: stopped,
        tls: tls.map(|certs| TlsAcceptor::from(certs.server_config())),
    });
    tokio::pin!(shutdown);
    tokio::pin!(close_listener);
    let listener_closed = loop {
        tokio::select! {
            () = &mut shutdown => break false,
            () = &mut close_listener => break true,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => accept(&ctx, stream, peer),
                Err(e) => {
                    // Out of file descriptors or memory: wait a little instead of spinning.
                    if ctx.rejects.reject(Port::Http, "accept_error", [0u8, 0, 0, 0].into()) {
                        tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    };
    drop(listener);
    if listener_closed {
        tracing::info!(
            open = ctx.slots.open(),
            "HTTP listener closed; open connections are still served"
        );
        shutdown.await;
    }
    let _ = stop.send(());
    let open = ctx.slots.open();
    drop(ctx);
    tracing::info!(open, "HTTP server stopping; finishing open requests");
    if tokio::time::timeout(SHUTDOWN_GRACE, stop.closed())
        .await
        .is_err()
    {
        tracing::info!("HTTP connections still open after the grace period; closing them");
    }
}

fn accept(ctx: &Arc<Ctx>, stream: TcpStream, peer: SocketAddr) {
    // Small JSON answers: do not wait for more to send.
    let _ = stream.set_nodelay(true);
    match ctx.slots.admit(peer.ip()) {
        Admit::Slot(slot) => {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let slot = ConnSlot(Arc::new(slot));
                match &ctx.tls {
                    None => serve_conn(&ctx, stream, Vec::new(), peer, Some(slot)).await,
                    Some(acceptor) => {
                        if let Some(tls) = handshake(&ctx, acceptor, stream, peer).await {
                            serve_conn(&ctx, tls, Vec::new(), peer, Some(slot)).await;
                        }
                    }
                }
            });
        }
        Admit::Triage {
            guard,
            evicted,
            full,
        } => {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                match ctx.tls.clone() {
                    None => {
                        if let Some(stream) = triage(&ctx, stream, peer, guard, evicted).await {
                            refuse(&ctx.rejects, stream, peer, full);
                        }
                    }
                    Some(acceptor) => {
                        let Some(tls) = handshake(&ctx, &acceptor, stream, peer).await else {
                            return;
                        };
                        if let Some(mut tls) = triage(&ctx, tls, peer, guard, evicted).await {
                            count_refusal(&ctx.rejects, peer, full);
                            // The 503 over TLS; a client that does not take it is not waited for.
                            let answer = async {
                                tls.write_all(&answers::REFUSED).await?;
                                tls.shutdown().await
                            };
                            let _ = tokio::time::timeout(REFUSE_TLS_WRITE, answer).await;
                        }
                    }
                }
            });
        }
        Admit::Refuse(full) => {
            if ctx.tls.is_some() {
                // A plain-text 503 would be noise to a TLS client, and a handshake is what the
                // cap saves: close at once.
                count_refusal(&ctx.rejects, peer, full);
            } else {
                refuse(&ctx.rejects, stream, peer, full);
            }
        }
    }
}

/// How long a refused TLS client gets to take its 503.
const REFUSE_TLS_WRITE: Duration = Duration::from_secs(1);

/// The TLS handshake of an HTTPS connection, bounded by the header timeout; None (counted as
/// `tls_handshake`) when it fails or takes too long.
async fn handshake(
    ctx: &Ctx,
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let why = match tokio::time::timeout(ctx.timeouts.header, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => return Some(tls),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_string(),
    };
    if ctx.rejects.reject(Port::Http, "tls_handshake", peer.ip()) {
        tracing::info!(client = %peer.ip(), error = %why, "TLS handshake failed (further ones from this client are counted, not logged, for a minute)");
    }
    None
}

/// A connection's place under `--http-max-connections` and the per-client cap. Each request
/// carries a handle to it (a request extension): an upgraded WebSocket keeps it for as long as
/// it lives, since hyper's connection task ends at the 101 and would otherwise give the place
/// back while the socket stays open.
#[derive(Clone)]
pub struct ConnSlot(#[allow(dead_code)] Arc<slots::SlotGuard>);

/// Serves one connection. `slot`: its place under the caps; `None` for a reserve connection,
/// which may only ask for the probe paths.
async fn serve_conn<S>(
    ctx: &Arc<Ctx>,
    stream: S,
    replay: Vec<u8>,
    peer: SocketAddr,
    slot: Option<ConnSlot>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let probe_only = slot.is_none();
    let state = conn::ConnState::new(ctx.timeouts, peer.ip(), ctx.rejects.clone());
    let io = TokioIo::new(conn::GuardedIo::new(stream, replay, state.clone()));
    let router = ctx.router.clone();
    let svc = hyper::service::service_fn(move |req| {
        service::handle(router.clone(), state.clone(), peer, slot.clone(), req)
    });
    let builder = if probe_only { &ctx.probe } else { &ctx.api };
    // Upgrades: the rooms' WebSocket signalling (`/v1/ws`).
    let conn = builder.serve_connection(io, svc).with_upgrades();
    tokio::pin!(conn);
    let mut shutdown = ctx.shutdown.clone();
    // Errors here are the client's (a reset, a deadline, a bad request answered already).
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// How a reserve connection's first bytes look.
#[derive(Debug, PartialEq, Eq)]
enum Start {
    Probe,
    Other,
    NeedMore,
}

/// Whether a request line starts `GET <probe path>` (or `HEAD`, which some load balancers
/// send) followed by a space or `?`.
fn classify(bytes: &[u8]) -> Start {
    let mut need_more = false;
    let lines = ["GET ", "HEAD "]
        .into_iter()
        .flat_map(|method| PROBE_PATHS.map(|path| [method, path].concat()));
    for line in lines {
        let line = line.as_bytes();
        if bytes.len() > line.len() {
            if bytes.starts_with(line) && matches!(bytes[line.len()], b' ' | b'?') {
                return Start::Probe;
            }
        } else if line.starts_with(bytes) {
            need_more = true;
        }
    }
    if need_more {
        Start::NeedMore
    } else {
        Start::Other
    }
}

/// A connection over a cap: served if it turns out to be a probe; else handed back to be refused.
async fn triage<S>(
    ctx: &Arc<Ctx>,
    mut stream: S,
    peer: SocketAddr,
    mut guard: slots::TriageGuard,
    mut evicted: oneshot::Receiver<()>,
) -> Option<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = [0u8; 16];
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + ctx.timeouts.header;
    let mut shutdown = ctx.shutdown.clone();
    let probe = loop {
        tokio::select! {
            _ = &mut evicted => break false,
            () = tokio::time::sleep_until(deadline) => break false,
            _ = shutdown.changed() => return None,
            read = stream.read(&mut buf[n..]) => match read {
                Ok(0) | Err(_) => return None,
                Ok(k) => {
                    n += k;
                    match classify(&buf[..n]) {
                        Start::Probe => break true,
                        Start::Other => break false,
                        // The buffer is longer than every probe line, so this ends.
                        Start::NeedMore => {}
                    }
                }
            },
        }
    };
    if probe && guard.become_probe() {
        // One request, bounded in time whatever the client does.
        let limit = ctx.timeouts.header + ctx.timeouts.body;
        let _ = tokio::time::timeout(
            limit,
            serve_conn(ctx, stream, buf[..n].to_vec(), peer, None),
        )
        .await;
        return None;
    }
    drop(guard);
    Some(stream)
}

/// Counts (and log-limits) a connection refused at a cap.
fn count_refusal(rejects: &Rejects, peer: SocketAddr, full: Full) {
    let reason = full.reason();
    if rejects.reject(Port::Http, reason, peer.ip()) {
        tracing::warn!(client = %peer.ip(), reason, "HTTP connection refused at the connection cap (further ones from this client are counted, not logged, for a minute)");
    }
}

/// The fast 503: written without waiting, then the connection is closed.
fn refuse(rejects: &Rejects, stream: TcpStream, peer: SocketAddr, full: Full) {
    count_refusal(rejects, peer, full);
    // Plain non-blocking system calls: tokio's `try_write` would refuse a socket whose
    // writability the reactor has not seen yet, which is every freshly accepted one.
    let Ok(mut std) = stream.into_std() else {
        return;
    };
    // A fresh socket's send buffer is empty: the answer fits without waiting.
    let _ = std.write(&answers::REFUSED);
    // Closing with unread bytes makes the kernel send a reset, which can destroy the answer in
    // flight; discard what has already arrived (without waiting for more) first.
    let mut sink = [0u8; 4096];
    for _ in 0..4 {
        match std.read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    // Half-close so the client sees the end of the answer, then close.
    let _ = std.shutdown(std::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_request_lines() {
        assert_eq!(classify(b"GET /healthz HTTP/1.1\r\n"), Start::Probe);
        assert_eq!(classify(b"GET /metrics?x=1 HTTP"), Start::Probe);
        assert_eq!(classify(b"GET /readyz HTTP/1.1"), Start::Probe);
        assert_eq!(classify(b"GET /heal"), Start::NeedMore);
        assert_eq!(classify(b"G"), Start::NeedMore);
        assert_eq!(classify(b"GET /healthz"), Start::NeedMore);
        assert_eq!(classify(b"GET /healthzz HTTP"), Start::Other);
        assert_eq!(classify(b"POST /healthz HTT"), Start::Other);
        assert_eq!(classify(b"HEAD /healthz HTTP/1.1"), Start::Probe);
        assert_eq!(classify(b"HEA"), Start::NeedMore);
        assert_eq!(classify(b"GET /v1/apps/x/s"), Start::Other);
        assert_eq!(classify(b"\x16\x03\x01"), Start::Other);
    }
}
