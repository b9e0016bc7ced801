//! The chitchat transport that seals every gossip datagram ([`super::gossip_seal`]).
//!
//! chitchat 0.13 does not export its envelope encoding, so this transport lets chitchat's own
//! `UdpSocket` do the encoding over a private loopback pair: a message chitchat sends is written
//! by an inner chitchat socket to a bridge socket, read back as bytes, sealed and sent from the
//! gossip socket; a datagram that opens is written by the bridge to the inner socket between a
//! start and an end marker message numbered for it, and chitchat's decoder reads it back. When the
//! markers come back with nothing between them, the sealed message did not decode and is counted.
//! Gossip is a few datagrams a second, so the extra hop costs nothing that matters; every refusal
//! is counted in `trackmesh_rejected_total`, and chitchat's own per-datagram warning can only be
//! reached by authenticated members (or by a local process writing straight to the inner port,
//! which is counted as `unsealed` and whose chitchat warning the node's log filter drops).
//!
//! A local process flooding the inner port can fill its receive buffer, so that the datagram or
//! its markers are dropped, and chitchat's decoder keeps reading (it skips what does not decode)
//! without ever giving anything back. So a datagram waits for its markers `HOP` at most; then
//! it is dropped and counted (`decode_timeout`) and the transport reads gossip again. Such a
//! flood costs gossip messages, as a flood of the network would; it cannot stop gossip. Markers
//! are numbered so that the leftovers of a datagram given up are never taken for the next one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use chitchat::{ChitchatEnvelope, ChitchatMessage, ProtocolVersion};

use super::gossip_seal::{MAX_DATAGRAM, Seal, SealKey};
use crate::rejects::{Port, Rejects};

/// The start of the cluster id in the marker messages; never a real cluster's. It is followed by
/// [`START`] or [`END`] and the datagram's number in 16 hex digits.
const MARKER: &str = "\0trackmesh-decode-marker:";
const START: u8 = b'<';
const END: u8 = b'>';
/// How long to wait for the loopback hop (it is immediate unless the host is out of buffers or a
/// local process floods the inner port).
const HOP: Duration = Duration::from_secs(1);

/// The transport chitchat is given instead of plain UDP: it seals and opens every datagram.
pub struct SealedTransport {
    /// The cluster secret the seal keys come from (never logged).
    pub secret: String,
    /// During a rotation, the secret being rotated away from: datagrams under it still open.
    pub previous: Option<String>,
    /// Where refused datagrams are counted.
    pub rejects: Arc<Rejects>,
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        Ok(Box::new(self.open_socket(listen_addr).await?))
    }
}

impl SealedTransport {
    async fn open_socket(&self, listen_addr: SocketAddr) -> anyhow::Result<SealedSocket> {
        let seal = Seal::new(
            SealKey::derive(&self.secret)?,
            self.previous.as_deref().map(SealKey::derive).transpose()?,
            rand::random(),
        );
        let outer = tokio::net::UdpSocket::bind(listen_addr)
            .await
            .with_context(|| format!("binding {listen_addr}/UDP for gossip"))?;
        let own_addr = outer.local_addr().context("gossip socket address")?;
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let inner = UdpSocket::open(loopback)
            .await
            .context("binding the gossip codec socket")?;
        let bridge = tokio::net::UdpSocket::bind(loopback)
            .await
            .context("binding the gossip bridge socket")?;
        let inner_addr = inner.local_addr()?;
        // Connected: the kernel drops what anyone but the inner socket sends to the bridge, so a
        // local flood of the bridge port cannot crowd out the encoding hop.
        bridge
            .connect(inner_addr)
            .await
            .context("connecting the gossip bridge socket")?;
        let bridge_addr = bridge.local_addr().context("gossip bridge address")?;
        let mut socket = SealedSocket {
            seal,
            rejects: self.rejects.clone(),
            outer,
            own_addr,
            inner,
            inner_addr,
            bridge,
            bridge_addr,
            markers: Markers {
                template: Vec::new(),
                at: 0,
            },
            buf: vec![0u8; MAX_DATAGRAM + 1].into_boxed_slice(),
            sealed: Vec::new(),
            next_seq: 0,
            pending: None,
        };
        // Encoded once through chitchat; each marker is this template with its kind and number
        // written over the placeholder (same length, so the encoding stays valid).
        let placeholder = marker_id(START, 0);
        let marker = ChitchatEnvelope {
            version: ProtocolVersion::V0,
            message: ChitchatMessage::Syn {
                cluster_id: placeholder.clone(),
                digest: Default::default(),
            },
        };
        socket.markers.template = socket
            .encode(marker)
            .await
            .context("encoding the gossip decode marker")?;
        socket.markers.at = socket
            .markers
            .template
            .windows(placeholder.len())
            .position(|w| w == placeholder.as_bytes())
            .context("the gossip decode marker's cluster id is not in its encoding")?
            + MARKER.len();
        Ok(socket)
    }
}

/// A datagram handed to chitchat's decoder, waiting for it to come back.
struct Pending {
    from: SocketAddr,
    len: usize,
    /// The number its markers carry.
    seq: u64,
    /// Its start marker came back: what follows, up to its end marker, is this datagram.
    started: bool,
    decoded: Option<ChitchatEnvelope>,
    /// When it is given up (`decode_timeout`).
    deadline: tokio::time::Instant,
}

/// chitchat's encoding of a marker message, and where in it the kind and number are.
struct Markers {
    template: Vec<u8>,
    at: usize,
}

impl Markers {
    /// Writes marker `kind` of datagram `seq` from `bridge` to `to`, without waiting; false if
    /// it could not be sent.
    fn send(&mut self, bridge: &tokio::net::UdpSocket, to: SocketAddr, kind: u8, seq: u64) -> bool {
        let id = marker_id(kind, seq);
        let tail = &id.as_bytes()[MARKER.len()..];
        match self.template.get_mut(self.at..self.at + tail.len()) {
            Some(slot) => slot.copy_from_slice(tail),
            None => return false,
        }
        bridge.try_send_to(&self.template, to).is_ok()
    }
}

/// The cluster id of a marker of `kind` for datagram `seq`.
fn marker_id(kind: u8, seq: u64) -> String {
    format!("{MARKER}{}{seq:016x}", char::from(kind))
}

/// The kind and number of a marker, or None for any other message.
fn parse_marker(envelope: &ChitchatEnvelope) -> Option<(u8, u64)> {
    let ChitchatMessage::Syn { cluster_id, .. } = &envelope.message else {
        return None;
    };
    let rest = cluster_id.strip_prefix(MARKER)?;
    let (&kind, hex) = rest.as_bytes().split_first()?;
    let hex = std::str::from_utf8(hex).ok()?;
    if hex.len() != 16 {
        return None;
    }
    Some((kind, u64::from_str_radix(hex, 16).ok()?))
}

struct SealedSocket {
    seal: Seal,
    rejects: Arc<Rejects>,
    /// The gossip socket other nodes reach.
    outer: tokio::net::UdpSocket,
    /// Its address, which is also the one chitchat announces.
    own_addr: SocketAddr,
    /// chitchat's own socket, used as its encoder and decoder.
    inner: UdpSocket,
    inner_addr: SocketAddr,
    bridge: tokio::net::UdpSocket,
    bridge_addr: SocketAddr,
    markers: Markers,
    buf: Box<[u8]>,
    sealed: Vec<Vec<u8>>,
    /// The number of the next datagram handed to the decoder.
    next_seq: u64,
    /// Survives a cancelled `recv` (chitchat selects on it), so no decoded message is lost.
    pending: Option<Pending>,
}

impl SealedSocket {
    /// chitchat's encoding of `envelope`, through the loopback pair.
    async fn encode(&mut self, envelope: ChitchatEnvelope) -> anyhow::Result<Vec<u8>> {
        // Anything left over (a hop that timed out earlier) must not be taken for this message.
        // Bounded: a local process flooding this port can delay gossip, never hang it.
        for _ in 0..1024 {
            if self.bridge.try_recv_from(&mut self.buf).is_err() {
                break;
            }
        }
        self.inner.send(self.bridge_addr, envelope).await?;
        let deadline = tokio::time::Instant::now() + HOP;
        loop {
            let (n, from) = tokio::time::timeout_at(deadline, self.bridge.recv_from(&mut self.buf))
                .await
                .context("gossip encoding hop timed out")?
                .context("gossip bridge receive")?;
            // Only what chitchat's socket wrote; anything else on this loopback port is ignored.
            if from == self.inner_addr {
                return Ok(self.buf[..n].to_vec());
            }
        }
    }

    fn refuse(&self, reason: &'static str, from: SocketAddr, loggable: bool) {
        if !loggable {
            self.rejects.count(Port::Gossip, reason);
        } else if self.rejects.reject(Port::Gossip, reason, from.ip()) {
            tracing::warn!(%from, reason, "gossip datagram refused (more from this source are counted, not logged, for a minute)");
        }
    }
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.outer.local_addr().context("gossip socket address")
    }

    /// Never fails for one message (chitchat stops gossiping on a send error): a message that
    /// cannot be encoded, sealed or sent is dropped, as the network might have.
    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        if to == self.own_addr {
            // chitchat also gossips with dead members, and after a restart one of them is this
            // node's previous generation, at this address: it would only come back `reflected`.
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        let plain = match self.encode(envelope).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "gossip message dropped");
                return Ok(SendOutcome { num_bytes_sent: 0 });
            }
        };
        let mut sealed = std::mem::take(&mut self.sealed);
        if self.seal.seal(&plain, &mut sealed).is_err() {
            // Our own message: counted, never logged per message.
            self.rejects.count(Port::Gossip, "too_large");
        }
        let mut num_bytes_sent = 0;
        for d in &sealed {
            match self.outer.send_to(d, to).await {
                Ok(n) => num_bytes_sent += n,
                Err(e) => tracing::debug!(error = %e, %to, "gossip send failed"),
            }
        }
        self.sealed = sealed;
        Ok(SendOutcome { num_bytes_sent })
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            if let Some(p) = self.pending.as_mut() {
                // chitchat's recv is cancellation-safe, and so is this wait: the deadline is kept
                // in `pending`, not restarted by a new call.
                let out = match tokio::time::timeout_at(p.deadline, self.inner.recv()).await {
                    Ok(out) => out?,
                    Err(_) => {
                        // Lost on the loopback hop (a local flood of the inner port): give it up
                        // and read gossip again.
                        if let Some(p) = self.pending.take() {
                            self.refuse("decode_timeout", p.from, true);
                        }
                        continue;
                    }
                };
                if out.from_addr != self.bridge_addr {
                    // Written straight to the inner port, around the seal.
                    self.refuse("unsealed", out.from_addr, true);
                    continue;
                }
                match parse_marker(&out.envelope) {
                    None => {
                        // The last message between the markers is the datagram.
                        if p.started {
                            p.decoded = Some(out.envelope);
                        }
                        continue;
                    }
                    Some((START, seq)) if seq == p.seq => {
                        p.started = true;
                        p.decoded = None;
                        continue;
                    }
                    Some((END, seq)) if seq == p.seq && p.started => {}
                    Some(_) => {
                        // A marker of a datagram given up earlier: what came with it is not
                        // this datagram.
                        p.started = false;
                        p.decoded = None;
                        continue;
                    }
                }
                let Some(p) = self.pending.take() else {
                    continue;
                };
                match p.decoded {
                    Some(envelope) => {
                        return Ok(RecvOutcome {
                            from_addr: p.from,
                            envelope,
                            num_bytes_received: p.len,
                        });
                    }
                    None => {
                        self.refuse("undecodable", p.from, true);
                        continue;
                    }
                }
            }
            let (n, from) = match self.outer.recv_from(&mut self.buf).await {
                Ok(r) => r,
                Err(e) if transient(&e) => continue,
                Err(e) => return Err(e).context("gossip socket receive"),
            };
            if n > MAX_DATAGRAM {
                self.refuse("malformed", from, true);
                continue;
            }
            let plain = match self.seal.open(&mut self.buf[..n]) {
                Ok(p) => p,
                Err(r) => {
                    if let Some(reason) = r.reason() {
                        self.refuse(reason, from, r.loggable());
                    }
                    continue;
                }
            };
            // Synchronous sends: nothing here can be cancelled half-way. A full loopback buffer
            // drops the message, as a full network would.
            let seq = self.next_seq;
            self.next_seq = seq.wrapping_add(1);
            let (bridge, to) = (&self.bridge, self.inner_addr);
            if !self.markers.send(bridge, to, START, seq)
                || bridge.try_send_to(plain, to).is_err()
                || !self.markers.send(bridge, to, END, seq)
            {
                continue;
            }
            self.pending = Some(Pending {
                from,
                len: n,
                seq,
                started: false,
                decoded: None,
                deadline: tokio::time::Instant::now() + HOP,
            });
        }
    }
}

fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::OutOfMemory
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::Interrupted
            | std::io::ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::gossip_seal::{Seal, SealKey};

    fn transport(secret: &str, rejects: &Arc<Rejects>) -> SealedTransport {
        SealedTransport {
            secret: secret.to_string(),
            previous: None,
            rejects: rejects.clone(),
        }
    }

    fn syn(cluster_id: &str) -> ChitchatEnvelope {
        ChitchatEnvelope {
            version: ProtocolVersion::V0,
            message: ChitchatMessage::Syn {
                cluster_id: cluster_id.to_string(),
                digest: Default::default(),
            },
        }
    }

    async fn recv(s: &mut Box<dyn Socket>) -> RecvOutcome {
        tokio::time::timeout(Duration::from_secs(10), s.recv())
            .await
            .expect("a message within 10 s")
            .expect("recv")
    }

    #[tokio::test]
    async fn chitchat_messages_cross_sealed_and_failures_are_counted() {
        let rejects = Arc::new(Rejects::new().expect("metric"));
        let lo: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let mut a = transport("s3cret", &rejects).open(lo).await.expect("a");
        let mut b = transport("s3cret", &rejects).open(lo).await.expect("b");
        let (a_addr, b_addr) = (a.local_addr().expect("a"), b.local_addr().expect("b"));

        // Junk, a plain chitchat message and a sealed message that is not chitchat, then a real
        // one: only the real one comes out, from its sender's address.
        let raw = tokio::net::UdpSocket::bind(lo).await.expect("raw");
        raw.send_to(b"junk", b_addr).await.expect("send");
        let mut plain = Vec::new();
        let mut enc = UdpSocket::open(lo).await.expect("encoder");
        let sink = tokio::net::UdpSocket::bind(lo).await.expect("sink");
        enc.send(sink.local_addr().expect("sink"), syn("trackmesh"))
            .await
            .expect("encode");
        let mut buf = vec![0u8; 2048];
        let (n, _) = sink.recv_from(&mut buf).await.expect("encoded");
        plain.extend_from_slice(&buf[..n]);
        raw.send_to(&plain, b_addr).await.expect("send");
        let mut insider = Seal::new(SealKey::derive("s3cret").expect("key"), None, 7);
        let mut sealed = Vec::new();
        insider.seal(b"not chitchat", &mut sealed).expect("fits");
        raw.send_to(&sealed[0], b_addr).await.expect("send");
        a.send(b_addr, syn("hello")).await.expect("send");

        let got = recv(&mut b).await;
        assert_eq!(got.from_addr, a_addr);
        assert_eq!(got.envelope, syn("hello"));
        assert_eq!(rejects.get(Port::Gossip, "malformed"), 2);
        assert_eq!(rejects.get(Port::Gossip, "undecodable"), 1);

        // And back, which is how chitchat answers a Syn.
        b.send(a_addr, syn("answer")).await.expect("send");
        assert_eq!(recv(&mut a).await.envelope, syn("answer"));
    }

    #[tokio::test]
    async fn a_cancelled_recv_loses_no_message() {
        let rejects = Arc::new(Rejects::new().expect("metric"));
        let lo: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let mut a = transport("s3cret", &rejects).open(lo).await.expect("a");
        let mut b = transport("s3cret", &rejects)
            .open_socket(lo)
            .await
            .expect("b");
        let b_addr = b.local_addr().expect("b");
        for i in 0..20 {
            a.send(b_addr, syn(&format!("m{i}"))).await.expect("send");
        }
        // chitchat selects on recv, so it may be dropped while a message is inside chitchat's
        // decoder. Drop it right there several times (keeping what a finished one returned);
        // nothing may be lost, repeated or reordered.
        let mut got = Vec::new();
        let mut cancelled_inside = 0;
        for _ in 0..2000 {
            if cancelled_inside >= 5 || got.len() >= 20 {
                break;
            }
            {
                let fut = b.recv();
                tokio::pin!(fut);
                match futures_poll_once(fut.as_mut()).await {
                    Some(Ok(r)) => got.push(r.envelope),
                    Some(Err(e)) => panic!("recv: {e:#}"),
                    None => {}
                }
            }
            if b.pending.is_some() {
                cancelled_inside += 1;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            cancelled_inside > 0,
            "no recv was dropped with a message inside"
        );
        while got.len() < 20 {
            match tokio::time::timeout(Duration::from_secs(10), b.recv()).await {
                Ok(Ok(r)) => got.push(r.envelope),
                _ => break,
            }
        }
        let want: Vec<ChitchatEnvelope> = (0..20).map(|i| syn(&format!("m{i}"))).collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn gossip_to_its_own_address_is_not_sent() {
        // chitchat gossips with a restarted node's previous generation, at the node's own
        // address; sent, it would come back and be refused as reflected.
        let rejects = Arc::new(Rejects::new().expect("metric"));
        let lo: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let mut a = transport("s3cret", &rejects).open(lo).await.expect("a");
        let a_addr = a.local_addr().expect("a");
        let sent = a.send(a_addr, syn("to myself")).await.expect("send");
        assert_eq!(sent.num_bytes_sent, 0);
        // What does reach it is its next peer's message, and nothing was refused.
        let mut b = transport("s3cret", &rejects).open(lo).await.expect("b");
        b.send(a_addr, syn("from b")).await.expect("send");
        assert_eq!(recv(&mut a).await.envelope, syn("from b"));
        assert_eq!(rejects.get(Port::Gossip, "reflected"), 0);
    }

    /// The kernel's count of datagrams dropped by the IPv4 UDP socket bound to `addr` (a full
    /// receive buffer), from /proc/net/udp.
    fn udp_drops(addr: SocketAddr) -> u64 {
        let SocketAddr::V4(v4) = addr else {
            panic!("{addr} is not IPv4");
        };
        let local = format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(v4.ip().octets()),
            v4.port()
        );
        let table = std::fs::read_to_string("/proc/net/udp").expect("reading /proc/net/udp");
        let line = table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(local.as_str()))
            .unwrap_or_else(|| panic!("{addr} ({local}) is not in /proc/net/udp"));
        line.split_whitespace()
            .last()
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("no drop count in {line:?}"))
    }

    #[tokio::test]
    async fn a_flooded_decoder_port_costs_a_message_not_gossip() {
        let rejects = Arc::new(Rejects::new().expect("metric"));
        let lo: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let mut a = transport("s3cret", &rejects).open(lo).await.expect("a");
        let mut b = transport("s3cret", &rejects)
            .open_socket(lo)
            .await
            .expect("b");
        let (a_addr, b_addr) = (a.local_addr().expect("a"), b.local_addr().expect("b"));

        // A local process floods B's private decoding port until its receive buffer is full, so
        // what B hands its decoder next is lost on the hop. Large datagrams fill it until the
        // kernel drops one, then empty ones (the smallest there are) until it drops one of those
        // too: then nothing more fits.
        let flood = tokio::net::UdpSocket::bind(lo).await.expect("flood");
        let mut sent = 0;
        for size in [32 * 1024, 0] {
            let junk = vec![0xa5u8; size];
            let drops = udp_drops(b.inner_addr);
            while udp_drops(b.inner_addr) == drops && sent < 8192 {
                flood.send_to(&junk, b.inner_addr).await.expect("flood");
                sent += 1;
            }
            assert!(
                udp_drops(b.inner_addr) > drops,
                "{sent} datagrams did not fill the decoding port's buffer"
            );
        }

        // The first message after the flood is lost inside B; B gives it up, counts it and reads
        // the next one. Before the fix, recv waited for the first one forever.
        a.send(b_addr, syn("lost")).await.expect("send");
        a.send(b_addr, syn("after the flood")).await.expect("send");
        let s: &mut dyn Socket = &mut b;
        let got = tokio::time::timeout(Duration::from_secs(10), s.recv())
            .await
            .expect("B hears gossip again within 10 s")
            .expect("recv");
        assert_eq!(got.envelope, syn("after the flood"));
        assert_eq!(got.from_addr, a_addr);
        assert_eq!(rejects.get(Port::Gossip, "decode_timeout"), 1);

        // And both ways still work.
        b.send(a_addr, syn("answer")).await.expect("send");
        assert_eq!(recv(&mut a).await.envelope, syn("answer"));
    }

    #[tokio::test]
    async fn leftovers_of_a_given_up_datagram_are_not_taken_for_the_next() {
        let rejects = Arc::new(Rejects::new().expect("metric"));
        let lo: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let mut a = transport("s3cret", &rejects).open(lo).await.expect("a");
        let mut b = transport("s3cret", &rejects)
            .open_socket(lo)
            .await
            .expect("b");
        let (a_addr, b_addr) = (a.local_addr().expect("a"), b.local_addr().expect("b"));
        // What a datagram given up earlier leaves in the decoder's queue once the flood that
        // delayed it is over: its markers around a message, and a lone end marker.
        let mut ghost = Vec::new();
        let mut enc = UdpSocket::open(lo).await.expect("encoder");
        let sink = tokio::net::UdpSocket::bind(lo).await.expect("sink");
        enc.send(sink.local_addr().expect("sink"), syn("ghost"))
            .await
            .expect("encode");
        let mut buf = vec![0u8; 2048];
        let (n, _) = sink.recv_from(&mut buf).await.expect("encoded");
        ghost.extend_from_slice(&buf[..n]);
        let old = b.next_seq.wrapping_sub(1);
        let to = b.inner_addr;
        assert!(b.markers.send(&b.bridge, to, START, old));
        b.bridge.try_send_to(&ghost, to).expect("ghost");
        assert!(b.markers.send(&b.bridge, to, END, old));
        b.bridge.try_send_to(&ghost, to).expect("ghost");
        assert!(b.markers.send(&b.bridge, to, END, old.wrapping_sub(1)));

        a.send(b_addr, syn("real")).await.expect("send");
        let s: &mut dyn Socket = &mut b;
        let got = tokio::time::timeout(Duration::from_secs(10), s.recv())
            .await
            .expect("a message within 10 s")
            .expect("recv");
        assert_eq!(got.envelope, syn("real"));
        assert_eq!(got.from_addr, a_addr);
        assert_eq!(rejects.get(Port::Gossip, "undecodable"), 0);
    }

    /// Polls a future once: its output if it is ready, None if it is pending (then dropped).
    async fn futures_poll_once<F: std::future::Future + Unpin>(mut f: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| match std::pin::Pin::new(&mut f).poll(cx) {
            std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await
    }
}
