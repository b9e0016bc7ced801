//! The thin async shell around one engine: one tokio task owns a media socket, the engine's
//! timer and the command channel. A node runs one per engine worker (`workers/`); API handlers
//! talk to the engines only through [`crate::workers::EngineHandle`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::engine::{EgressPacket, Engine, RelayIn, RelayOut};
use crate::media_tcp::{TcpFrame, TcpSender, canonical};
use crate::sendbatch;

/// Datagrams read in one go before timers and commands get a turn.
const RECV_BATCH: usize = 64;
/// Larger than any datagram a WebRTC peer sends over UDP.
const RECV_BUF: usize = 2048;

/// A closure run on an engine worker's task (see [`crate::workers::EngineHandle::call`]).
pub type Job = Box<dyn FnOnce(&mut Engine, Instant) + Send>;

/// Commands waiting for one engine worker; beyond this, API callers wait (backpressure, not
/// memory).
pub const COMMAND_QUEUE: usize = 1024;

/// The engine task has ended, so a call could not run (the API answers 503).
#[derive(Debug, thiserror::Error)]
#[error("the media engine has stopped")]
pub struct EngineStopped;

/// The sockets of cascades' outgoing sessions, by local address: their owner (the cascade task)
/// receives on them; the engine task sends each outgoing session's datagrams from its socket.
#[derive(Default)]
pub struct OutgoingSockets {
    sockets: Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>,
}

impl OutgoingSockets {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<UdpSocket>>> {
        self.sockets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Outgoing datagrams whose source is `local` go out of `socket`, until [`Self::remove`].
    pub fn insert(&self, local: SocketAddr, socket: Arc<UdpSocket>) {
        self.lock().insert(local, socket);
    }

    /// Forgets the socket at `local`.
    pub fn remove(&self, local: SocketAddr) {
        self.lock().remove(&local);
    }

    /// Sends every queued outgoing datagram from its socket; never waits (a full socket buffer
    /// or a socket already gone drops the datagram, counted).
    fn flush(&self, engine: &mut Engine) {
        let Some(first) = engine.poll_outgoing_transmit() else {
            return;
        };
        let sockets = self.lock();
        let mut next = Some(first);
        // Bounded by the engine's queue limit.
        while let Some(t) = next {
            let sent = sockets
                .get(&t.source)
                .is_some_and(|s| s.try_send_to(&t.contents, t.destination).is_ok());
            if !sent {
                engine.count_send_drop();
            }
            next = engine.poll_outgoing_transmit();
        }
    }
}

/// What one engine's loop asks of the worker set it belongs to: relay outputs meant for another
/// worker of this node, and a look at the engine after each turn (its load, for placement).
pub trait WorkerLinks: Send + 'static {
    /// Takes `out` when it belongs to an in-process link between workers; gives it back when it
    /// is for the cluster relay. Never waits.
    fn route(&self, out: RelayOut) -> Option<RelayOut>;

    /// Called after every turn of the loop.
    fn turn_done(&self, engine: &mut Engine);
}

/// One engine on its own: every relay output goes to the cluster relay.
pub struct Alone;

impl WorkerLinks for Alone {
    fn route(&self, out: RelayOut) -> Option<RelayOut> {
        Some(out)
    }

    fn turn_done(&self, _engine: &mut Engine) {}
}

/// The engine's connection to the relay: frames in from other nodes, requests out to them.
pub struct RelayPipes {
    /// Frames from other nodes for relayed publications.
    pub from_relay: mpsc::Receiver<RelayIn>,
    /// Frames, ends and keyframe requests the engine sends to other nodes.
    pub to_relay: mpsc::Sender<RelayOut>,
}

/// The engine's media transports: the UDP socket (IPv4, IPv6 or both) and, with ICE-TCP on,
/// the frames of the TCP twin's connections in and their writers out.
pub struct MediaIo {
    /// The media socket.
    pub socket: UdpSocket,
    /// With ICE-TCP: the connections' writers and their received frames.
    pub tcp: Option<(TcpSender, mpsc::Receiver<TcpFrame>)>,
}

/// Next frame of an ICE-TCP connection; never, without ICE-TCP.
async fn next_tcp_frame(
    tcp: &mut Option<(TcpSender, mpsc::Receiver<TcpFrame>)>,
) -> Option<TcpFrame> {
    match tcp {
        Some((_, rx)) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The loop of one engine worker: ends when every sender of `rx` is dropped (or the task is
/// aborted). `egress` receives the audio egress packets (`--nats`); without it the engine has
/// egress off.
pub async fn run(
    mut engine: Engine,
    media: MediaIo,
    mut rx: mpsc::Receiver<Job>,
    mut relay: RelayPipes,
    egress: Option<mpsc::Sender<EgressPacket>>,
    outgoing: Arc<OutgoingSockets>,
    links: impl WorkerLinks,
) {
    let MediaIo { socket, mut tcp } = media;
    // A dual-stack socket sends to IPv4 peers at their IPv4-mapped IPv6 address.
    let mut out = sendbatch::Out::new(
        socket.local_addr().is_ok_and(|a| a.is_ipv6()),
        tcp.as_ref().map(|(sender, _)| sender.clone()),
    );
    let mut buf = vec![0u8; RECV_BUF];
    let mut batch = Vec::with_capacity(sendbatch::SEND_BATCH);
    let mut outbox = crate::relay_outbox::RelayOutbox::default();
    loop {
        // Relay output first: a frame for another node's viewers should not wait while this
        // node's own fan-out is sent. A full queue means the relay tasks are behind: media is
        // dropped rather than stall, state waits in the outbox.
        outbox.flush(&relay.to_relay);
        while let Some(out) = engine.poll_relay() {
            let Some(out) = links.route(out) else {
                continue;
            };
            if outbox.send(&relay.to_relay, out) {
                engine.count_relay_drop();
            }
        }
        sendbatch::flush(&mut engine, &socket, &mut out, &mut batch);
        outgoing.flush(&mut engine);
        flush_egress(&mut engine, egress.as_ref());
        let deadline = tokio::time::Instant::from_std(engine.poll_timeout());
        tokio::select! {
            biased;
            job = rx.recv() => match job {
                Some(job) => job(&mut engine, Instant::now()),
                None => break,
            },
            // Relayed frames before datagrams: they are media already late by a hop, while a
            // busy socket is mostly subscribers' RTCP, which can wait a batch.
            Some(input) = relay.from_relay.recv() => {
                // DataChannel messages already queued go in the same batch: written together,
                // they leave together (drained once, in `handle_timeout` below). A media frame
                // ends the batch, so its fan-out is sent before more comes in, as before.
                let mut channel = relay_input(&mut engine, input);
                for _ in 1..RECV_BATCH {
                    if !channel {
                        break;
                    }
                    match relay.from_relay.try_recv() {
                        Ok(input) => channel = relay_input(&mut engine, input),
                        Err(_) => break,
                    }
                }
            }
            res = socket.recv_from(&mut buf) => match res {
                Ok((n, source)) => {
                    engine.handle_datagram(Instant::now(), canonical(source), &buf[..n]);
                    // Drain what is already queued without going back through select.
                    for _ in 1..RECV_BATCH {
                        match socket.try_recv_from(&mut buf) {
                            Ok((n, source)) => engine.handle_datagram(Instant::now(), canonical(source), &buf[..n]),
                            Err(_) => break,
                        }
                    }
                }
                // ICMP port-unreachable from a vanished client surfaces here on Linux; ignore it.
                Err(e) => tracing::debug!(error = %e, "media socket receive error"),
            },
            Some(frame) = next_tcp_frame(&mut tcp) => {
                engine.handle_tcp_frame(Instant::now(), frame.source, &frame.data);
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
        engine.handle_timeout(Instant::now());
        links.turn_done(&mut engine);
    }
    tracing::info!("media engine stopped");
}

/// Hands the engine's egress packets to the NATS publisher; never waits: a full queue (the
/// publisher is behind, or NATS is slow) drops the packet, counted.
fn flush_egress(engine: &mut Engine, egress: Option<&mpsc::Sender<EgressPacket>>) {
    // Bounded by the engine's egress queue limit.
    while let Some(packet) = engine.poll_egress() {
        if egress.is_none_or(|tx| tx.try_send(packet).is_err()) {
            engine.count_egress_drop();
        }
    }
}

/// Hands one relay input to the engine; true for a DataChannel message.
fn relay_input(engine: &mut Engine, input: RelayIn) -> bool {
    match input {
        RelayIn::Frame { up, frame } => {
            engine.relay_frame(up, frame, Instant::now());
            false
        }
        RelayIn::Gap { up } => {
            engine.relay_gap(up, Instant::now());
            false
        }
        RelayIn::ChannelMessage { up, binary, data } => {
            engine.relay_channel_message(up, binary, &data);
            true
        }
        RelayIn::ChannelReply { down, binary, data } => {
            engine.relay_channel_reply(down, binary, &data);
            true
        }
    }
}
