//! TURN over TCP (RFC 8656 §3.1), in place of the TURN crate's TCP listener. That one takes
//! every connection until accepting fails (out of file descriptors, which ends it for good),
//! never closes one, and keeps a writer for every address it ever saw. Here:
//!
//! - connections are capped in all (as many as the node may hold allocations) and per client
//!   (an IPv4 address or IPv6 /64); past a cap a new one is closed at once;
//! - a connection that holds no allocation is closed within [`TcpBounds::allocate_within`]
//!   (a TURN client allocates as soon as it connects, and has no use for the connection after),
//!   and those without one are capped apart ([`TcpBounds::max_unallocated`]), the oldest making
//!   way for a new one;
//! - connections wait their turn to hand a message to the TURN crate, so a fast sender is
//!   slowed by TCP's flow control rather than pushing out the others' messages;
//! - each connection has a short write queue: a client that does not read loses its own
//!   messages, never delays anyone else's, and one write that stalls closes its connection;
//! - everything of a connection goes when it closes, its allocation too (best effort: see
//!   [`Guard::release_request`]).
//!
//! Framing: STUN messages carry their own length; ChannelData messages are padded to 4 bytes on
//! a stream. The TURN crate keeps the ChannelData constructor to itself, so a ChannelData frame
//! is decoded by its UDP decoder, over a private loopback pair of connected UDP sockets (as
//! gossip reaches chitchat's decoder): each frame is sent and read back at once, one at a time.
//! That decoder reads 1,500 bytes, so ChannelData carrying more than 1,496 bytes does not decode
//! (counted), as over UDP; browsers keep media packets near 1,200 bytes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytecodec::DecodeExt;
use medea_turn::attr::Attribute;
use medea_turn::transport::{Error, Request, Transport};
use stun_codec::MessageDecoder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::{JoinHandle, JoinSet};

use super::guard::Guard;
use crate::http::{ClientCounts, ClientKey};
use crate::media_tcp::canonical;

/// The IANA protocol number the TURN crate keys TCP allocations by.
pub const PROTO_TCP: u8 = 6;
/// Messages waiting to be written to one connection; past it a message for it is dropped.
const WRITE_QUEUE: usize = 128;
/// A write to a client that takes longer than this closes its connection.
const WRITE_WAIT: Duration = Duration::from_secs(5);
/// Messages from every connection waiting for the TURN crate; past it each connection waits
/// its turn to add one.
const READ_QUEUE: usize = 1024;
/// How long the loopback hop of a ChannelData frame may take (it is immediate).
const HOP: Duration = Duration::from_secs(1);

/// The listener's bounds.
#[derive(Debug, Clone, Copy)]
pub struct TcpBounds {
    /// Open connections at once.
    pub max_connections: usize,
    /// Open connections at once from one client.
    pub per_client: usize,
    /// Open connections at once that hold no allocation yet; past it a new connection takes
    /// the place of the oldest of them, which is closed. Without a credential, a client with
    /// many addresses can then hold places only by opening connections faster than others
    /// allocate.
    pub max_unallocated: usize,
    /// A connection is closed when it holds no allocation this long after it opened, or
    /// after its allocation ended (checked this often).
    pub allocate_within: Duration,
}

impl TcpBounds {
    /// The node's bounds: as many connections as allocations (each carries one at most), a
    /// quarter of them without an allocation.
    pub fn for_allocations(max_allocations: usize) -> TcpBounds {
        TcpBounds {
            max_connections: max_allocations,
            per_client: crate::media_tcp::MAX_PER_CLIENT,
            max_unallocated: (max_allocations / 4).max(16),
            allocate_within: Duration::from_secs(10),
        }
    }
}

/// How often a connection without an allocation looks whether it has one now.
const ALLOCATED_CHECK: Duration = Duration::from_millis(200);

/// Connections without an allocation yet, oldest first, each with its client's address and
/// what closes it.
#[derive(Default)]
struct Unallocated {
    queue: std::collections::VecDeque<(u64, SocketAddr, tokio::sync::oneshot::Sender<()>)>,
    next: u64,
}

impl Unallocated {
    /// Adds a connection; its id and what tells it that it was evicted.
    fn add(&mut self, peer: SocketAddr) -> (u64, tokio::sync::oneshot::Receiver<()>) {
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue.push_back((id, peer, tx));
        (id, rx)
    }

    /// Closes the oldest that still holds no allocation (those that allocated since their
    /// last look are taken off, not closed); false when there is none.
    fn evict_oldest(&mut self, guard: &Guard) -> bool {
        while let Some((_, peer, tx)) = self.queue.pop_front() {
            if guard.has_allocation(PROTO_TCP, peer) {
                continue;
            }
            // Its task may be ending already: fine either way.
            let _ = tx.send(());
            return true;
        }
        false
    }

    /// The connection allocated, or ended.
    fn remove(&mut self, id: u64) {
        self.queue.retain(|(i, _, _)| *i != id);
    }
}

/// What a stream carries next, from its first four bytes: a STUN message (first two bits 00)
/// or a ChannelData message (01), and its length on the stream; `None` for anything else,
/// after which the stream cannot be framed.
fn frame_len(head: [u8; 4]) -> Option<(Kind, usize)> {
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    let pad = |n: usize| n.div_ceil(4) * 4;
    match head[0] >> 6 {
        0b00 => Some((Kind::Stun, pad(20 + len))),
        0b01 => Some((Kind::ChannelData, pad(4 + len))),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stun,
    ChannelData,
}

/// A framed message from a client.
struct Incoming {
    kind: Kind,
    data: Vec<u8>,
    from: SocketAddr,
}

/// The receiving end, used by one `recv_from` at a time.
struct Reader {
    rx: mpsc::Receiver<Incoming>,
    loopback: Option<Loopback>,
    /// A message taken from `rx` and not decoded yet: kept here, so a `recv_from` cancelled
    /// half-way (the TURN crate's loop races it against its commands) loses nothing.
    in_flight: Option<Incoming>,
}

/// Writers by client address.
type Writers = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

/// The TURN-over-TCP listener, as a transport of the TURN crate.
pub struct TcpTransport {
    local: SocketAddr,
    guard: Arc<Guard>,
    incoming: tokio::sync::Mutex<Reader>,
    writers: Writers,
    accept: JoinHandle<()>,
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        // The accept task owns every connection's task: they end with it.
        self.accept.abort();
    }
}

impl TcpTransport {
    /// Serves `listener` under `bounds`; `guard` says which clients hold an allocation and
    /// counts what is refused.
    pub fn new(
        listener: TcpListener,
        guard: Arc<Guard>,
        bounds: TcpBounds,
    ) -> std::io::Result<TcpTransport> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(READ_QUEUE);
        let writers = Writers::default();
        let accept = tokio::spawn(accept_loop(
            listener,
            tx,
            writers.clone(),
            guard.clone(),
            bounds,
        ));
        Ok(TcpTransport {
            local,
            guard,
            incoming: tokio::sync::Mutex::new(Reader {
                rx,
                loopback: None,
                in_flight: None,
            }),
            writers,
            accept,
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    incoming: mpsc::Sender<Incoming>,
    writers: Writers,
    guard: Arc<Guard>,
    bounds: TcpBounds,
) {
    // Owned here: aborting this task drops the set, which aborts every connection.
    let mut conns = JoinSet::new();
    let per_client = ClientCounts::new(bounds.per_client);
    let unallocated = Arc::new(Mutex::new(Unallocated::default()));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let peer = canonical(peer);
                    // The client's own cap first: a connection refused by it evicts nobody.
                    let client = ClientKey::of(peer.ip());
                    if !per_client.take(client) {
                        guard.refused("tcp_client_limit");
                        continue;
                    }
                    {
                        let mut waiting = lock(&unallocated);
                        let full = |w: &Unallocated| {
                            conns.len() >= bounds.max_connections
                                || w.queue.len() >= bounds.max_unallocated
                        };
                        // Evicted ones end at once; this bounds those still ending.
                        let over = conns.len() >= bounds.max_connections + bounds.max_unallocated;
                        let room = !over
                            && (!full(&waiting)
                                || waiting.evict_oldest(&guard)
                                || !full(&waiting));
                        if !room {
                            per_client.give_back(client);
                            guard.refused("tcp_limit");
                            continue;
                        }
                    }
                    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
                    lock(&writers).insert(peer, tx.clone());
                    let (id, evicted) = lock(&unallocated).add(peer);
                    let (incoming, writers, guard, per_client, unallocated) = (
                        incoming.clone(),
                        writers.clone(),
                        guard.clone(),
                        per_client.clone(),
                        unallocated.clone(),
                    );
                    let open = OpenGauge::new(&guard.figures().tcp_connections);
                    conns.spawn(async move {
                        let _open = open;
                        let settled = || lock(&unallocated).remove(id);
                        let conn = Conn { peer, guard: &guard, bounds, settled: &settled };
                        connection(stream, conn, rx, incoming.clone(), evicted).await;
                        settled();
                        {
                            let mut writers = lock(&writers);
                            // Unless a newer connection from the same address took the place.
                            if writers.get(&peer).is_some_and(|w| w.same_channel(&tx)) {
                                writers.remove(&peer);
                            }
                        }
                        release_allocation(&guard, peer, &incoming).await;
                        per_client.give_back(client);
                    });
                }
                // Out of file descriptors and the like: wait a little rather than spin, and
                // go on accepting once it passes.
                Err(e) => {
                    tracing::warn!(error = %e, "TURN TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reap ended connections, so the set counts the open ones.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Ends the allocation of a client whose connection ended, as it could have itself: the
/// allocation is of no use without its connection, and would hold its places (in all and per
/// credential) until it expires, up to an hour. Bounded: given up after [`HOP`].
async fn release_allocation(guard: &Guard, peer: SocketAddr, incoming: &mpsc::Sender<Incoming>) {
    let Some(data) = guard.release_request(PROTO_TCP, peer) else {
        return;
    };
    let msg = Incoming {
        kind: Kind::Stun,
        data,
        from: peer,
    };
    let _ = tokio::time::timeout(HOP, incoming.send(msg)).await;
}

/// One open connection in the gauge, taken off when dropped (the connection's task ended or
/// was aborted with the listener).
struct OpenGauge(prometheus::IntGauge);

impl OpenGauge {
    fn new(g: &prometheus::IntGauge) -> OpenGauge {
        g.inc();
        OpenGauge(g.clone())
    }
}

impl Drop for OpenGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One connection's context.
struct Conn<'a> {
    peer: SocketAddr,
    guard: &'a Guard,
    bounds: TcpBounds,
    /// Takes it off the connections without an allocation.
    settled: &'a (dyn Fn() + Sync),
}

/// Serves one connection until it closes, errs, stops taking writes, holds no allocation in
/// time, or is evicted (by a newer connection, while it held none).
async fn connection(
    stream: TcpStream,
    conn: Conn<'_>,
    mut outgoing: mpsc::Receiver<Vec<u8>>,
    incoming: mpsc::Sender<Incoming>,
    evicted: tokio::sync::oneshot::Receiver<()>,
) {
    let Conn {
        peer,
        guard,
        bounds,
        settled,
    } = conn;
    // Small messages both ways: do not wait to coalesce them.
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let read = async {
        loop {
            let mut head = [0u8; 4];
            if reader.read_exact(&mut head).await.is_err() {
                return;
            }
            let Some((kind, len)) = frame_len(head) else {
                guard.refused("tcp_framing");
                return;
            };
            let mut data = vec![0u8; len];
            data[..4].copy_from_slice(&head);
            if reader.read_exact(&mut data[4..]).await.is_err() {
                return;
            }
            // Waits its turn: a client sending faster than the TURN crate takes messages is
            // slowed by TCP's own flow control, and cannot push out the others' messages
            // (requests over TCP are not retransmitted).
            let msg = Incoming {
                kind,
                data,
                from: peer,
            };
            if incoming.send(msg).await.is_err() {
                return;
            }
        }
    };
    let write = async {
        while let Some(data) = outgoing.recv().await {
            match tokio::time::timeout(WRITE_WAIT, writer.write_all(&data)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    guard.refused("not_reading");
                    return;
                }
            }
        }
    };
    let allocation = async {
        let deadline = tokio::time::Instant::now() + bounds.allocate_within;
        // Only a send evicts: a sender dropped unsent never completes this.
        let evicted = async {
            if evicted.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(evicted);
        loop {
            tokio::select! {
                () = &mut evicted => {
                    guard.refused("tcp_evicted");
                    return;
                }
                () = tokio::time::sleep(ALLOCATED_CHECK) => {}
            }
            if guard.has_allocation(PROTO_TCP, peer) {
                settled();
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                guard.refused("tcp_no_allocation");
                return;
            }
        }
        loop {
            tokio::time::sleep(bounds.allocate_within).await;
            if !guard.has_allocation(PROTO_TCP, peer) {
                guard.refused("tcp_no_allocation");
                return;
            }
        }
    };
    // Any of them ending ends the connection.
    tokio::select! {
        () = read => {}
        () = write => {}
        () = allocation => {}
    }
}

/// A pair of connected loopback UDP sockets: what `send` writes, `decode` reads back through
/// the TURN crate's UDP decoder. Connected both ways, so nothing else reaches `decode`.
struct Loopback {
    send: UdpSocket,
    decode: UdpSocket,
    /// A frame was sent and not read back (its read was cancelled or timed out): the pair is
    /// replaced before the next, so that frame is never taken for another.
    dirty: bool,
}

impl Loopback {
    async fn open() -> std::io::Result<Loopback> {
        let here: SocketAddr = ([127, 0, 0, 1], 0).into();
        let (send, decode) = (UdpSocket::bind(here).await?, UdpSocket::bind(here).await?);
        send.connect(decode.local_addr()?).await?;
        decode.connect(send.local_addr()?).await?;
        Ok(Loopback {
            send,
            decode,
            dirty: false,
        })
    }

    /// `frame` as the TURN crate decodes it from a datagram; `None` if it does not decode.
    async fn decode(&mut self, frame: &[u8]) -> std::io::Result<Option<Request>> {
        self.dirty = true;
        self.send.send(frame).await?;
        let read = tokio::time::timeout(HOP, Transport::recv_from(&self.decode)).await;
        let Ok(read) = read else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the loopback hop timed out",
            ));
        };
        match read {
            Ok((req, _)) => {
                self.dirty = false;
                Ok(Some(req))
            }
            // A datagram that does not decode was read all the same; an I/O error may have left
            // it unread (`dirty` stays set).
            Err(Error::Io(e)) => Err(e.0),
            Err(_) => {
                self.dirty = false;
                Ok(None)
            }
        }
    }
}

/// One pending message decoded: `None` when it does not decode (counted).
async fn decode(msg: &Incoming, loopback: &mut Option<Loopback>, guard: &Guard) -> Option<Request> {
    match msg.kind {
        Kind::Stun => match MessageDecoder::<Attribute>::new().decode_from_bytes(&msg.data) {
            Ok(Ok(m)) => Some(Request::Message(m)),
            _ => {
                guard.refused("tcp_undecodable");
                None
            }
        },
        Kind::ChannelData => {
            if loopback.as_ref().is_none_or(|l| l.dirty) {
                *loopback = match Loopback::open().await {
                    Ok(l) => Some(l),
                    Err(e) => {
                        tracing::warn!(error = %e, "TURN TCP: opening the loopback decoder");
                        guard.refused("tcp_undecodable");
                        return None;
                    }
                };
            }
            let l = loopback.as_mut()?;
            match l.decode(&msg.data).await {
                Ok(Some(req)) => Some(req),
                Ok(None) => {
                    guard.refused("tcp_undecodable");
                    None
                }
                Err(e) => {
                    tracing::debug!(error = %e, "TURN TCP: ChannelData not decoded");
                    guard.refused("tcp_undecodable");
                    None
                }
            }
        }
    }
}

#[async_trait]
impl Transport for TcpTransport {
    async fn recv_from(&self) -> Result<(Request, SocketAddr), Error> {
        // One reader at a time (the TURN crate has one loop per listener).
        let mut guarded = self.incoming.lock().await;
        let Reader {
            rx,
            loopback,
            in_flight,
        } = &mut *guarded;
        loop {
            let msg = match in_flight {
                Some(msg) => msg,
                None => in_flight.insert(rx.recv().await.ok_or(Error::TransportIsDead)?),
            };
            let decoded = decode(msg, loopback, &self.guard).await;
            let from = msg.from;
            *in_flight = None;
            if let Some(req) = decoded {
                return Ok((req, from));
            }
        }
    }

    async fn send_to(&self, data: Cow<'_, [u8]>, target: SocketAddr) -> Result<(), Error> {
        let Some(tx) = lock(&self.writers).get(&canonical(target)).cloned() else {
            return Err(Error::TransportIsDead);
        };
        match tx.try_send(data.into_owned()) {
            Ok(()) => Ok(()),
            // The client's own queue is full: its message is lost, as a full UDP buffer loses it.
            Err(TrySendError::Full(_)) => {
                self.guard.refused("not_reading");
                Ok(())
            }
            Err(TrySendError::Closed(_)) => Err(Error::TransportIsDead),
        }
    }

    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    fn proto(&self) -> u8 {
        PROTO_TCP
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bounds no test reaches but the one it sets.
    const LOOSE: TcpBounds = TcpBounds {
        max_connections: 10,
        per_client: 10,
        max_unallocated: 10,
        allocate_within: Duration::from_secs(30),
    };

    #[test]
    fn frames_are_told_apart_by_their_first_bits_and_padded_to_four_bytes() {
        // A Binding request without attributes: 20 bytes.
        assert_eq!(frame_len([0x00, 0x01, 0, 0]), Some((Kind::Stun, 20)));
        assert_eq!(frame_len([0x00, 0x03, 0, 8]), Some((Kind::Stun, 28)));
        // ChannelData 0x4000 with 5 bytes of data: 4 + 5, padded to 12.
        assert_eq!(frame_len([0x40, 0x00, 0, 5]), Some((Kind::ChannelData, 12)));
        assert_eq!(frame_len([0x7f, 0xff, 0, 4]), Some((Kind::ChannelData, 8)));
        assert_eq!(
            frame_len([0x40, 0x00, 0xff, 0xff]),
            Some((Kind::ChannelData, 65_540))
        );
        // RTP, DTLS or anything else is not TURN: the stream cannot be framed.
        assert_eq!(frame_len([0x80, 0x60, 0, 1]), None);
        assert_eq!(frame_len([0xc0, 0, 0, 0]), None);
    }

    #[tokio::test]
    async fn channel_data_decodes_through_the_loopback_pair_one_frame_after_another() {
        let guard = Guard::for_tests();
        let mut loopback = None;
        let from: SocketAddr = ([192, 0, 2, 1], 5000).into();
        for (i, payload) in [&b"hello"[..], &b"media!!!"[..]].into_iter().enumerate() {
            let mut data = vec![0x40, i as u8];
            data.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            data.extend_from_slice(payload);
            data.resize(data.len().div_ceil(4) * 4, 0);
            let msg = Incoming {
                kind: Kind::ChannelData,
                data,
                from,
            };
            let req = decode(&msg, &mut loopback, &guard).await;
            assert!(
                matches!(req, Some(Request::ChannelData(_))),
                "frame {i}: {req:?}"
            );
        }
        // An invalid channel number (below 0x4000 is STUN; 0x4000-0x7fff only) does not decode
        // and does not upset the next frame.
        let bad = Incoming {
            kind: Kind::ChannelData,
            data: vec![0x40, 0x00, 0x00, 0x08, 1, 2, 3],
            from,
        };
        assert!(decode(&bad, &mut loopback, &guard).await.is_none());
        let stun = Incoming {
            kind: Kind::Stun,
            data: vec![
                0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
            ],
            from,
        };
        assert!(matches!(
            decode(&stun, &mut loopback, &guard).await,
            Some(Request::Message(_))
        ));
    }

    fn refusals(g: &Guard, reason: &str) -> u64 {
        g.refusals(reason)
    }

    async fn listening(bounds: TcpBounds) -> (TcpTransport, Arc<Guard>, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let guard = Guard::for_tests();
        let t = TcpTransport::new(listener, guard.clone(), bounds).expect("transport");
        let addr = t.local_addr();
        (t, guard, addr)
    }

    /// Whether the server closed `c` within `within` (a read sees the end of the stream).
    async fn closed_within(c: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(within, c.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    const BINDING: [u8; 20] = [
        0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];

    #[tokio::test]
    async fn a_message_is_read_from_its_connection_and_answered_on_it() {
        let (t, _guard, addr) = listening(LOOSE).await;
        let mut c = TcpStream::connect(addr).await.expect("connect");
        // Split across writes: framing waits for the whole message.
        c.write_all(&BINDING[..7]).await.expect("write");
        c.write_all(&BINDING[7..]).await.expect("write");
        let (req, from) = tokio::time::timeout(Duration::from_secs(5), t.recv_from())
            .await
            .expect("in time")
            .expect("a request");
        assert!(matches!(req, Request::Message(_)), "{req:?}");
        assert_eq!(from, c.local_addr().expect("addr"));
        t.send_to(Cow::Borrowed(b"answer"), from)
            .await
            .expect("sent");
        let mut got = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut got))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(&got, b"answer");
        // Nothing is kept for an address with no connection.
        drop(c);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(t.send_to(Cow::Borrowed(b"late"), from).await.is_err());
        assert!(
            lock(&t.writers).is_empty(),
            "the closed connection's writer is gone"
        );
    }

    #[tokio::test]
    async fn a_client_flooding_the_listener_does_not_push_out_another_clients_message() {
        let (t, _guard, addr) = listening(LOOSE).await;
        let mut flood = TcpStream::connect(addr).await.expect("connect");
        let burst: Vec<u8> = BINDING.repeat(3 * READ_QUEUE);
        // Written while nothing takes messages: more than the queue holds.
        let writer = tokio::spawn(async move {
            let _ = flood.write_all(&burst).await;
            flood
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut other = TcpStream::connect(addr).await.expect("connect");
        other.write_all(&BINDING).await.expect("write");
        let other_addr = other.local_addr().expect("addr");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut taken = 0;
        let mut seen = false;
        while taken < 4 * READ_QUEUE {
            let (_, from) = tokio::time::timeout(Duration::from_secs(5), t.recv_from())
                .await
                .expect("in time")
                .expect("a request");
            taken += 1;
            if from == other_addr {
                seen = true;
                break;
            }
        }
        assert!(seen, "the other client's message never came");
        // After the queue's worth, and what the flooder's task adds in one turn on the runtime
        // (tokio lets a task make 128 steps before it must yield) once places are free.
        assert!(
            taken <= READ_QUEUE + 2 * 128,
            "it came after {taken} of the flood's messages"
        );
        drop(writer);
    }

    /// A connection from `ip`.
    async fn connect_from(ip: &str, addr: SocketAddr) -> TcpStream {
        let s = tokio::net::TcpSocket::new_v4().expect("socket");
        s.bind(format!("{ip}:0").parse().expect("addr"))
            .expect("bind");
        s.connect(addr).await.expect("connect")
    }

    /// Records an allocation for `c` and waits until its connection has seen it.
    async fn allocated(guard: &Guard, c: &TcpStream) {
        guard.allocated_for_tests(PROTO_TCP, c.local_addr().expect("addr"));
        tokio::time::sleep(3 * ALLOCATED_CHECK).await;
    }

    #[tokio::test]
    async fn connections_are_capped_per_client_and_in_all() {
        let bounds = TcpBounds {
            max_connections: 3,
            per_client: 2,
            ..LOOSE
        };
        let (_t, guard, addr) = listening(bounds).await;
        let mut first = connect_from("127.0.0.1", addr).await;
        let mut second = connect_from("127.0.0.1", addr).await;
        allocated(&guard, &first).await;
        allocated(&guard, &second).await;
        let mut third = connect_from("127.0.0.1", addr).await;
        assert!(
            closed_within(&mut third, Duration::from_secs(5)).await,
            "a third connection from one client is closed at once"
        );
        assert_eq!(refusals(&guard, "tcp_client_limit"), 1);
        assert!(!closed_within(&mut first, Duration::from_millis(200)).await);
        assert!(!closed_within(&mut second, Duration::from_millis(200)).await);
        // Another client takes the last place in all.
        let mut other = connect_from("127.0.0.2", addr).await;
        allocated(&guard, &other).await;
        assert!(!closed_within(&mut other, Duration::from_millis(200)).await);
        let mut again = connect_from("127.0.0.3", addr).await;
        assert!(
            closed_within(&mut again, Duration::from_secs(5)).await,
            "past the cap in all, with every place allocated"
        );
        assert_eq!(refusals(&guard, "tcp_limit"), 1);
        // A place given back is taken again.
        drop(first);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut fourth = connect_from("127.0.0.1", addr).await;
        assert!(!closed_within(&mut fourth, Duration::from_millis(200)).await);
        assert_eq!(guard.figures().tcp_connections.get(), 3, "the open ones");
        drop((second, other, fourth));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(guard.figures().tcp_connections.get(), 0);
    }

    #[tokio::test]
    async fn a_new_connection_takes_the_place_of_the_oldest_without_an_allocation() {
        let bounds = TcpBounds {
            max_unallocated: 2,
            ..LOOSE
        };
        let (_t, guard, addr) = listening(bounds).await;
        let mut oldest = TcpStream::connect(addr).await.expect("connect");
        let mut older = TcpStream::connect(addr).await.expect("connect");
        let mut newer = TcpStream::connect(addr).await.expect("connect");
        assert!(closed_within(&mut oldest, Duration::from_secs(5)).await);
        assert_eq!(refusals(&guard, "tcp_evicted"), 1);
        // An allocating client is not evicted once it holds its allocation.
        let mut allocating = TcpStream::connect(addr).await.expect("connect");
        assert!(closed_within(&mut older, Duration::from_secs(5)).await);
        allocated(&guard, &allocating).await;
        let mut a = TcpStream::connect(addr).await.expect("connect");
        let mut b = TcpStream::connect(addr).await.expect("connect");
        assert!(closed_within(&mut newer, Duration::from_secs(5)).await);
        assert_eq!(refusals(&guard, "tcp_evicted"), 3);
        assert!(!closed_within(&mut allocating, Duration::from_millis(300)).await);
        assert!(!closed_within(&mut a, Duration::from_millis(100)).await);
        assert!(!closed_within(&mut b, Duration::from_millis(100)).await);
        assert_eq!(refusals(&guard, "tcp_limit"), 0);
    }

    #[tokio::test]
    async fn a_connection_refused_by_its_client_cap_evicts_nobody_and_an_allocated_one_is_not_evicted()
     {
        let bounds = TcpBounds {
            per_client: 1,
            max_unallocated: 1,
            ..LOOSE
        };
        let (_t, guard, addr) = listening(bounds).await;
        let mut waiting = connect_from("127.0.0.1", addr).await;
        let mut refused = connect_from("127.0.0.1", addr).await;
        assert!(closed_within(&mut refused, Duration::from_secs(5)).await);
        assert_eq!(refusals(&guard, "tcp_client_limit"), 1);
        assert!(
            !closed_within(&mut waiting, Duration::from_millis(300)).await,
            "not evicted for a connection that was refused anyway"
        );
        // It allocates; before its own next look, another client comes: the place it leaves
        // is taken, and it is not closed.
        guard.allocated_for_tests(PROTO_TCP, waiting.local_addr().expect("addr"));
        let mut next = connect_from("127.0.0.2", addr).await;
        assert!(!closed_within(&mut next, Duration::from_millis(300)).await);
        assert!(!closed_within(&mut waiting, Duration::from_millis(300)).await);
        assert_eq!(refusals(&guard, "tcp_evicted"), 0);
        assert_eq!(refusals(&guard, "tcp_limit"), 0);
    }

    #[tokio::test]
    async fn a_connection_without_an_allocation_is_closed_and_frames_that_are_not_turn_close_it() {
        let bounds = TcpBounds {
            allocate_within: Duration::from_millis(300),
            ..LOOSE
        };
        let (_t, guard, addr) = listening(bounds).await;
        let mut allocated = TcpStream::connect(addr).await.expect("connect");
        guard.allocated_for_tests(PROTO_TCP, allocated.local_addr().expect("addr"));
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        assert!(closed_within(&mut idle, Duration::from_secs(5)).await);
        assert_eq!(refusals(&guard, "tcp_no_allocation"), 1);
        assert!(
            !closed_within(&mut allocated, Duration::from_secs(1)).await,
            "a connection that holds an allocation stays"
        );
        // Its allocation ends: so does the connection.
        guard.on_closed(PROTO_TCP, allocated.local_addr().expect("addr"));
        assert!(closed_within(&mut allocated, Duration::from_secs(5)).await);
        assert_eq!(refusals(&guard, "tcp_no_allocation"), 2);
        let mut rtp = TcpStream::connect(addr).await.expect("connect");
        rtp.write_all(&[0x80, 0x60, 0, 1]).await.expect("write");
        assert!(closed_within(&mut rtp, Duration::from_secs(5)).await);
        assert_eq!(refusals(&guard, "tcp_framing"), 1);
    }
}
