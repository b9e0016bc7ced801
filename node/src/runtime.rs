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
/// Commands run in a row before the media waiting in the socket and the relay queue is read:
/// commands come first, but a flood of them (a peer's keyframe requests or layer changes, each
/// a command) must not leave clients' media unread.
const JOBS_BEFORE_MEDIA: u32 = 32;
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
    let mut jobs_in_row = 0u32;
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
                Some(job) => {
                    job(&mut engine, Instant::now());
                    jobs_in_row += 1;
                    if jobs_in_row >= JOBS_BEFORE_MEDIA {
                        jobs_in_row = 0;
                        read_waiting_media(&mut engine, &socket, &mut relay.from_relay, &mut buf);
                    }
                    engine.handle_timeout(Instant::now());
                    links.turn_done(&mut engine);
                    continue;
                }
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
        jobs_in_row = 0;
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

/// What the socket and the relay queue hold now, without waiting: at most a batch of each.
fn read_waiting_media(
    engine: &mut Engine,
    socket: &UdpSocket,
    from_relay: &mut mpsc::Receiver<RelayIn>,
    buf: &mut [u8],
) {
    // Straight from the socket: tokio's `try_recv_from` trusts its readiness cache, which only
    // the I/O driver refreshes, and a loop busy with commands gives it few turns.
    for _ in 0..RECV_BATCH {
        let read = rustix::net::recvfrom(socket, &mut *buf, rustix::net::RecvFlags::DONTWAIT);
        let Ok((len, n, Some(from))) = read else {
            break;
        };
        let Ok(source) = std::net::SocketAddr::try_from(from) else {
            continue;
        };
        // A datagram larger than the buffer was cut: not handed on.
        if let Some(data) = buf.get(..len).filter(|_| n <= len) {
            engine.handle_datagram(Instant::now(), canonical(source), data);
        }
    }
    for _ in 0..RECV_BATCH {
        match from_relay.try_recv() {
            Ok(input) => {
                relay_input(engine, input);
            }
            Err(_) => break,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A flood of commands (each a peer's keyframe request, say) keeps the queue full: clients'
    /// datagrams must still be read while it lasts, not only once it ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_commands_does_not_leave_media_unread() {
        let now = Instant::now();
        let engine = Engine::new(
            crate::testing::config(std::time::Duration::from_secs(30)),
            now,
        );
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let (tx, rx) = mpsc::channel::<Job>(COMMAND_QUEUE);
        let (_in_tx, from_relay) = mpsc::channel(8);
        let (to_relay, _out_rx) = mpsc::channel(8);
        let media = MediaIo { socket, tcp: None };
        let relay = RelayPipes {
            from_relay,
            to_relay,
        };
        let outgoing = Arc::new(OutgoingSockets::default());
        let worker = tokio::spawn(run(engine, media, rx, relay, None, outgoing, Alone));

        // Each command queues the next before it ends, so the queue never empties while the
        // flood lasts (100 chains, bounded in count).
        let flooding = Arc::new(std::sync::atomic::AtomicBool::new(true));
        fn chain(tx: mpsc::Sender<Job>, flooding: Arc<std::sync::atomic::AtomicBool>, left: u32) {
            let next = tx.clone();
            let job: Job = Box::new(move |_, _| {
                if left > 0 && flooding.load(std::sync::atomic::Ordering::Relaxed) {
                    chain(next, flooding, left - 1);
                }
            });
            let _ = tx.try_send(job);
        }
        for _ in 0..100 {
            chain(tx.clone(), flooding.clone(), 1_000_000);
        }
        let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("client");
        for _ in 0..10 {
            client.send_to(b"not a known datagram", addr).expect("send");
        }
        // Behind the flood: what the engine counted by the time this job runs.
        let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
        let seen: Job = Box::new(move |e, _| {
            let _ = seen_tx.send(e.stats().datagrams_in);
        });
        tx.send(seen)
            .await
            .map_err(|_| "queue closed")
            .expect("send");
        let seen = tokio::time::timeout(std::time::Duration::from_secs(60), seen_rx)
            .await
            .expect("the job ran")
            .expect("an answer");
        flooding.store(false, std::sync::atomic::Ordering::Relaxed);
        drop(tx);
        let _ = worker.await;
        assert_eq!(seen, 10, "the datagrams were read during the flood");
    }
}
