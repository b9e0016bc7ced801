//! ICE-TCP, the media port's TCP twin: clients whose UDP is blocked connect here to the node's
//! passive TCP host candidate (RFC 6544) and exchange RFC 4571 frames (a 16-bit length, then
//! one STUN, DTLS, RTP or RTCP packet). This shell only frames: each frame received goes to the
//! engine as a datagram from the connection's peer address, and the engine's TCP transmits come
//! back here by destination.
//!
//! Bounded everywhere: connections, in all and per client (beyond a cap a new one is closed at
//! once), one frame buffer per connection (RFC 4571 frames are at most 65535 bytes), a short
//! write queue per connection, and an idle timeout (ICE consent checks arrive every few
//! seconds, so a silent connection is dead). A connection the engine never answers (it answers
//! only ICE checks signed with a session's password) is closed soon, whatever it sends, so
//! strangers cannot keep the places. Past a bound the frame or connection is dropped and
//! counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::http::{ClientCounts, ClientKey};

/// Open ICE-TCP connections at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Frames waiting to be written to one connection; beyond it the engine's frame is dropped.
pub const WRITE_QUEUE: usize = 256;
/// Frames from every connection waiting for the engine; beyond it a received frame is dropped.
pub const READ_QUEUE: usize = 1024;
/// Open ICE-TCP connections at once from one client (an IPv4 address or an IPv6 /64): a
/// browser opens one per peer connection; an office behind one NAT address, a few dozen.
pub const MAX_PER_CLIENT: usize = 64;
/// A connection that brings no frame for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection the engine has sent nothing to for this long is closed: a client's ICE check
/// is answered at once once the engine has the client's credentials (which a client answering
/// the node's offer sends in its next call, within moments), and retried within seconds if
/// lost.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(20);
/// A frame's length field is 16 bits.
const MAX_FRAME: usize = u16::MAX as usize;

/// A frame received from `source`, for the engine.
pub struct TcpFrame {
    /// The connection's peer address (canonical: IPv4 peers as IPv4).
    pub source: SocketAddr,
    /// The frame without its length prefix.
    pub data: Vec<u8>,
}

/// The ICE-TCP figures on `/metrics`.
#[derive(Clone)]
pub struct TcpCounters {
    /// `trackmesh_ice_tcp_connections`: open now.
    pub open: IntGauge,
    /// `trackmesh_ice_tcp_accepted_total`.
    pub accepted: IntCounter,
    /// `trackmesh_ice_tcp_dropped_total{reason}`: `conn_limit` (a connection closed at once,
    /// [`MAX_CONNECTIONS`] being open), `client_limit` (the same, [`MAX_PER_CLIENT`] being open
    /// from its client), `idle_timeout` (a connection closed after [`IDLE_TIMEOUT`] without a
    /// frame), `unanswered` (closed after [`ANSWER_WITHIN`] with nothing sent to it),
    /// `engine_queue_full` (a received frame dropped).
    pub dropped: IntCounterVec,
}

impl TcpCounters {
    fn new() -> prometheus::Result<TcpCounters> {
        Ok(TcpCounters {
            open: IntGauge::new(
                "trackmesh_ice_tcp_connections",
                "ICE-TCP connections open on the media port.",
            )?,
            accepted: IntCounter::new(
                "trackmesh_ice_tcp_accepted_total",
                "ICE-TCP connections accepted.",
            )?,
            dropped: IntCounterVec::new(
                Opts::new(
                    "trackmesh_ice_tcp_dropped_total",
                    "ICE-TCP connections closed or frames dropped at a bound, by reason.",
                ),
                &["reason"],
            )?,
        })
    }

    /// Every collector, for registering with the node's registry.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.open.clone()),
            Box::new(self.accepted.clone()),
            Box::new(self.dropped.clone()),
        ]
    }

    fn drop_one(&self, reason: &str) {
        if let Ok(c) = self.dropped.get_metric_with_label_values(&[reason]) {
            c.inc();
        }
    }

    /// Drops counted for `reason` so far.
    pub fn dropped(&self, reason: &str) -> u64 {
        self.dropped
            .get_metric_with_label_values(&[reason])
            .map_or(0, |c| c.get())
    }
}

type Writers = HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>;

/// The engine task's side: sends frames to connections by their peer address.
#[derive(Clone, Default)]
pub struct TcpSender {
    writers: Arc<Mutex<Writers>>,
}

impl TcpSender {
    fn lock(&self) -> std::sync::MutexGuard<'_, Writers> {
        self.writers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one frame for the connection from `destination`; false (the caller counts the
    /// drop) when there is no such connection or its queue is full. Never waits.
    pub fn send(&self, destination: SocketAddr, data: &[u8]) -> bool {
        if data.len() > MAX_FRAME {
            return false;
        }
        self.lock()
            .get(&destination)
            .is_some_and(|w| w.try_send(data.to_vec()).is_ok())
    }

    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The running accept loop.
pub struct MediaTcp {
    /// The bound listener address.
    pub addr: SocketAddr,
    /// Where the engine task's TCP transmits go.
    pub sender: TcpSender,
    /// What was accepted, refused and dropped.
    pub counters: TcpCounters,
    /// Ends the accept loop and, with its connection set, every connection.
    pub task: JoinHandle<()>,
}

/// Accepts on `listener` and feeds every frame into `frames` (bounded, see [`READ_QUEUE`]).
pub fn start(listener: TcpListener, frames: mpsc::Sender<TcpFrame>) -> anyhow::Result<MediaTcp> {
    start_counted(listener, frames, TcpCounters::new()?)
}

/// [`start`], counting into `counters`: the engine workers' listeners share one set of figures.
pub fn start_counted(
    listener: TcpListener,
    frames: mpsc::Sender<TcpFrame>,
    counters: TcpCounters,
) -> anyhow::Result<MediaTcp> {
    let addr = listener.local_addr()?;
    let sender = TcpSender::default();
    let task = tokio::spawn(accept_loop(
        listener,
        frames,
        sender.clone(),
        counters.clone(),
    ));
    Ok(MediaTcp {
        addr,
        sender,
        counters,
        task,
    })
}

/// The peer address as the engine sees it (an IPv4 client on a dual-stack listener arrives
/// as `::ffff:a.b.c.d`).
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

async fn accept_loop(
    listener: TcpListener,
    frames: mpsc::Sender<TcpFrame>,
    sender: TcpSender,
    counters: TcpCounters,
) {
    // Owned here: aborting this task drops the set, which aborts every connection.
    let mut conns = JoinSet::new();
    let per_client = ClientCounts::new(MAX_PER_CLIENT);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let peer = canonical(peer);
                    if sender.len() >= MAX_CONNECTIONS {
                        counters.drop_one("conn_limit");
                        drop(stream);
                        continue;
                    }
                    let client = ClientKey::of(peer.ip());
                    if !per_client.take(client) {
                        counters.drop_one("client_limit");
                        drop(stream);
                        continue;
                    }
                    counters.accepted.inc();
                    counters.open.inc();
                    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
                    sender.lock().insert(peer, tx.clone());
                    let (frames, sender, counters, per_client) =
                        (frames.clone(), sender.clone(), counters.clone(), per_client.clone());
                    conns.spawn(async move {
                        connection(stream, peer, rx, frames, &counters).await;
                        per_client.give_back(client);
                        counters.open.dec();
                        // Unless a newer connection from the same address took the slot.
                        let mut writers = sender.lock();
                        if writers.get(&peer).is_some_and(|w| w.same_channel(&tx)) {
                            writers.remove(&peer);
                        }
                    });
                }
                // Out of file descriptors and the like: wait a little rather than spin.
                Err(e) => {
                    tracing::warn!(error = %e, "ICE-TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reap ended connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Serves one connection until it closes, errs or idles out.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
    frames: mpsc::Sender<TcpFrame>,
    counters: &TcpCounters,
) {
    // Small frames both ways: do not wait to coalesce them.
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let read = async {
        loop {
            let frame = match tokio::time::timeout(IDLE_TIMEOUT, read_frame(&mut reader)).await {
                Ok(Ok(frame)) => frame,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "ICE-TCP connection ended");
                    return;
                }
                Err(_) => {
                    counters.drop_one("idle_timeout");
                    return;
                }
            };
            if frames
                .try_send(TcpFrame {
                    source: peer,
                    data: frame,
                })
                .is_err()
            {
                counters.drop_one("engine_queue_full");
            }
        }
    };
    let answered = AtomicBool::new(false);
    let write = async {
        while let Some(data) = outgoing.recv().await {
            answered.store(true, Ordering::Relaxed);
            if let Err(e) = write_frame(&mut writer, &data).await {
                tracing::debug!(%peer, error = %e, "ICE-TCP write failed");
                return;
            }
        }
    };
    let unanswered = async {
        tokio::time::sleep(ANSWER_WITHIN).await;
        if answered.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        counters.drop_one("unanswered");
    };
    // Either side ending ends the connection.
    tokio::select! {
        _ = read => {}
        _ = write => {}
        _ = unanswered => {}
    }
}

/// Reads one RFC 4571 frame (never more than [`MAX_FRAME`] bytes).
async fn read_frame<R: AsyncReadExt + Unpin>(reader: &mut R) -> std::io::Result<Vec<u8>> {
    let len = reader.read_u16().await? as usize;
    let mut buf = vec![0u8; len];
    reader.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<W: AsyncWriteExt + Unpin>(writer: &mut W, data: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(data.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame over 64 KiB"))?;
    let mut out = Vec::with_capacity(2 + data.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
    writer.write_all(&out).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_with_their_length_prefix() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"hello").await.expect("write");
        write_frame(&mut wire, &[]).await.expect("write");
        assert_eq!(&wire[..2], &[0, 5]);
        let mut r = &wire[..];
        assert_eq!(read_frame(&mut r).await.expect("frame"), b"hello");
        assert_eq!(read_frame(&mut r).await.expect("frame"), b"");
        assert!(read_frame(&mut r).await.is_err(), "nothing left");
        // A frame cut short is an error, not a short frame.
        let mut r = &[0u8, 9, 1, 2][..];
        assert!(read_frame(&mut r).await.is_err());
    }

    #[tokio::test]
    async fn over_the_connection_cap_a_new_connection_is_closed_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (tx, mut rx) = mpsc::channel(8);
        let tcp = start(listener, tx).expect("start");
        // Fill the table as if MAX_CONNECTIONS were open (keeps the test small).
        for i in 0..MAX_CONNECTIONS {
            let (w, _) = mpsc::channel(1);
            let port = u16::try_from(1000 + i).expect("port");
            tcp.sender
                .lock()
                .insert(SocketAddr::from(([10, 0, 0, 1], port)), w);
        }
        let mut refused = TcpStream::connect(tcp.addr).await.expect("connect");
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), refused.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "the connection over the cap is closed");
        assert_eq!(tcp.counters.dropped("conn_limit"), 1);

        // Below the cap a frame reaches the engine side and one comes back.
        tcp.sender.lock().clear();
        let mut ok = TcpStream::connect(tcp.addr).await.expect("connect");
        write_frame(&mut ok, b"ping").await.expect("write");
        let frame = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a frame in time")
            .expect("the loop runs");
        assert_eq!(frame.data, b"ping");
        assert_eq!(frame.source, ok.local_addr().expect("addr"));
        assert!(tcp.sender.send(frame.source, b"pong"));
        let back = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut ok))
            .await
            .expect("a frame in time")
            .expect("a frame");
        assert_eq!(back, b"pong");
        assert!(
            !tcp.sender.send(SocketAddr::from(([10, 9, 9, 9], 1)), b"x"),
            "no connection, no send"
        );
        tcp.task.abort();
    }

    /// Reads until the node closes the connection; the bytes read.
    async fn read_to_close(stream: &mut TcpStream) -> usize {
        let mut buf = vec![0u8; 1024];
        let mut n = 0;
        while let Ok(Ok(k)) =
            tokio::time::timeout(Duration::from_secs(120), stream.read(&mut buf)).await
        {
            if k == 0 {
                break;
            }
            n += k;
        }
        n
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_never_answered_is_closed_and_an_answered_one_stays() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (tx, mut rx) = mpsc::channel(64);
        let tcp = start(listener, tx).expect("start");
        // A stranger: frames every few seconds (so never idle), none of them answered.
        let mut stranger = TcpStream::connect(tcp.addr).await.expect("connect");
        let mut answered = TcpStream::connect(tcp.addr).await.expect("connect");
        write_frame(&mut answered, b"check").await.expect("write");
        let frame = rx.recv().await.expect("the check reaches the engine side");
        assert!(tcp.sender.send(frame.source, b"answer"), "answered");
        assert_eq!(
            read_frame(&mut answered).await.expect("the answer"),
            b"answer"
        );
        for _ in 0..4 {
            write_frame(&mut stranger, b"noise").await.expect("write");
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        assert_eq!(
            read_to_close(&mut stranger).await,
            0,
            "closed, never answered"
        );
        assert_eq!(tcp.counters.dropped("unanswered"), 1);
        assert_eq!(tcp.counters.dropped("idle_timeout"), 0);
        // The answered one is still served past the deadline.
        write_frame(&mut answered, b"later").await.expect("write");
        loop {
            let f = rx.recv().await.expect("frames");
            if f.data == b"later" {
                break;
            }
        }
        assert_eq!(
            tcp.counters.dropped("unanswered"),
            1,
            "the answered one stays"
        );
        tcp.task.abort();
    }

    #[tokio::test]
    async fn one_client_gets_at_most_its_share_of_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (tx, _rx) = mpsc::channel(8);
        let tcp = start(listener, tx).expect("start");
        let mut held = Vec::new();
        for _ in 0..MAX_PER_CLIENT {
            held.push(TcpStream::connect(tcp.addr).await.expect("connect"));
        }
        let mut over = TcpStream::connect(tcp.addr).await.expect("connect");
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), over.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "the connection over the client's share is closed");
        assert_eq!(tcp.counters.dropped("client_limit"), 1);
        // One ends: its place is the client's again.
        drop(held.pop());
        let mut again = None;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut s = TcpStream::connect(tcp.addr).await.expect("connect");
            write_frame(&mut s, b"x").await.expect("write");
            if tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf))
                .await
                .is_err()
            {
                // Still open after a moment: admitted.
                again = Some(s);
                break;
            }
        }
        assert!(again.is_some(), "a place given back is taken again");
        assert_eq!(
            ClientKey::of("2001:db8:1:2::1".parse().expect("ip")),
            ClientKey::of("2001:db8:1:2::ffff".parse().expect("ip")),
            "one /64 is one client"
        );
        assert_ne!(
            ClientKey::of("2001:db8:1:3::1".parse().expect("ip")),
            ClientKey::of("2001:db8:1:2::1".parse().expect("ip"))
        );
        assert_ne!(
            ClientKey::of("0.0.0.1".parse().expect("ip")),
            ClientKey::of("::1".parse().expect("ip")),
            "IPv4 and IPv6 keys never meet"
        );
        tcp.task.abort();
    }
}
