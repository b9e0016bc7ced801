//! The chitchat transport that seals every gossip datagram ([`super::gossip_seal`]).
//!
//! chitchat 0.13 does not export its envelope encoding, so this transport lets chitchat's own
//! `UdpSocket` do the encoding over a private loopback pair: a message chitchat sends is written
//! by an inner chitchat socket to a bridge socket, read back as bytes, sealed and sent from the
//! gossip socket; a datagram that opens is written by the bridge to the inner socket, followed by
//! a marker message, and chitchat's decoder reads it back. When the marker comes back alone, the
//! sealed message did not decode and is counted. Gossip is a few datagrams a second, so the extra
//! hop costs nothing that matters; every refusal is counted in `trackmesh_rejected_total`, and
//! chitchat's own per-datagram warning can only be reached by authenticated members (or by a
//! local process writing straight to the inner port, which is counted as `unsealed` and whose
//! chitchat warning the node's log filter drops).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use chitchat::{ChitchatEnvelope, ChitchatMessage, ProtocolVersion};

use super::gossip_seal::{MAX_DATAGRAM, Seal, SealKey};
use crate::rejects::{Port, Rejects};

/// The cluster id in the marker message; never a real cluster's.
const MARKER: &str = "\0trackmesh-decode-marker";
/// How long to wait for the loopback hop (it is immediate unless the host is out of buffers).
const HOP: Duration = Duration::from_secs(1);

pub struct SealedTransport {
    pub secret: String,
    pub previous: Option<String>,
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
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let inner = UdpSocket::open(loopback)
            .await
            .context("binding the gossip codec socket")?;
        let bridge = tokio::net::UdpSocket::bind(loopback)
            .await
            .context("binding the gossip bridge socket")?;
        let inner_addr = inner.local_addr()?;
        let bridge_addr = bridge.local_addr().context("gossip bridge address")?;
        let mut socket = SealedSocket {
            seal,
            rejects: self.rejects.clone(),
            outer,
            inner,
            inner_addr,
            bridge,
            bridge_addr,
            marker: Vec::new(),
            buf: vec![0u8; MAX_DATAGRAM + 1].into_boxed_slice(),
            sealed: Vec::new(),
            pending: None,
        };
        let marker = ChitchatEnvelope {
            version: ProtocolVersion::V0,
            message: ChitchatMessage::Syn {
                cluster_id: MARKER.to_string(),
                digest: Default::default(),
            },
        };
        socket.marker = socket
            .encode(marker)
            .await
            .context("encoding the gossip decode marker")?;
        Ok(socket)
    }
}

/// A datagram handed to chitchat's decoder, waiting for it to come back.
struct Pending {
    from: SocketAddr,
    len: usize,
    decoded: Option<ChitchatEnvelope>,
}

struct SealedSocket {
    seal: Seal,
    rejects: Arc<Rejects>,
    /// The gossip socket other nodes reach.
    outer: tokio::net::UdpSocket,
    /// chitchat's own socket, used as its encoder and decoder.
    inner: UdpSocket,
    inner_addr: SocketAddr,
    bridge: tokio::net::UdpSocket,
    bridge_addr: SocketAddr,
    marker: Vec<u8>,
    buf: Box<[u8]>,
    sealed: Vec<Vec<u8>>,
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
                let out = self.inner.recv().await?;
                if out.from_addr != self.bridge_addr {
                    // Written straight to the inner port, around the seal.
                    self.refuse("unsealed", out.from_addr, true);
                    continue;
                }
                let is_marker = matches!(
                    &out.envelope.message,
                    ChitchatMessage::Syn { cluster_id, .. } if cluster_id == MARKER
                );
                if !is_marker {
                    // The last message before the marker is the one it follows.
                    p.decoded = Some(out.envelope);
                    continue;
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
            if self.bridge.try_send_to(plain, self.inner_addr).is_err()
                || self
                    .bridge
                    .try_send_to(&self.marker, self.inner_addr)
                    .is_err()
            {
                continue;
            }
            self.pending = Some(Pending {
                from,
                len: n,
                decoded: None,
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

    /// Polls a future once: its output if it is ready, None if it is pending (then dropped).
    async fn futures_poll_once<F: std::future::Future + Unpin>(mut f: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| match std::pin::Pin::new(&mut f).poll(cx) {
            std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
            std::task::Poll::Pending => std::task::Poll::Ready(None),
        })
        .await
    }
}
