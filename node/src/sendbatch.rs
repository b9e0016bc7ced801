//! Sends the engine's queued datagrams in batches: one `sendmmsg(2)` system call per batch on
//! Linux instead of one `sendto` per datagram (a fan-out sends the same frame to many
//! subscribers at once, so batches fill up exactly when it matters).
//!
//! Never waits: when the socket buffer is full the rest of the batch is dropped and counted, so
//! one slow path can never stall the engine.

use std::net::SocketAddr;

use str0m::net::{Protocol, Transmit};
use tokio::net::UdpSocket;

use crate::engine::Engine;
use crate::media_tcp::TcpSender;

/// Where datagrams other than plain UDP ones go.
pub struct Out {
    /// The socket is IPv6 (dual-stack): IPv4 destinations are written IPv4-mapped.
    pub v4_mapped: bool,
    /// ICE-TCP connections, by peer address, when ICE-TCP is on.
    pub tcp: Option<TcpSender>,
}

impl Out {
    fn udp_destination(&self, to: SocketAddr) -> SocketAddr {
        match to {
            SocketAddr::V4(v4) if self.v4_mapped => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            other => other,
        }
    }
}

/// Datagrams per system call (the kernel caps a call at 1024; beyond a few dozen the gain is
/// gone while the batch's bookkeeping grows).
pub const SEND_BATCH: usize = 64;

/// Sends every datagram the engine has queued: UDP ones in batches, ICE-TCP ones to their
/// connection's write queue.
pub fn flush(engine: &mut Engine, socket: &UdpSocket, out: &Out, batch: &mut Vec<Transmit>) {
    // Bounded by the engine's own queue limit; each turn sends or drops a whole batch.
    loop {
        batch.clear();
        while batch.len() < SEND_BATCH {
            match engine.poll_transmit() {
                Some(t) if t.proto == Protocol::Tcp => {
                    let sent = out
                        .tcp
                        .as_ref()
                        .is_some_and(|tcp| tcp.send(t.destination, &t.contents));
                    if !sent {
                        engine.count_send_drop();
                    }
                }
                Some(mut t) => {
                    t.destination = out.udp_destination(t.destination);
                    batch.push(t);
                }
                None => break,
            }
        }
        if batch.is_empty() {
            return;
        }
        let dropped = send(socket, batch);
        for _ in 0..dropped {
            engine.count_send_drop();
        }
    }
}

/// Sends `batch`; returns how many datagrams were dropped because the socket buffer was full.
#[cfg(target_os = "linux")]
fn send(socket: &UdpSocket, batch: &[Transmit]) -> usize {
    use rustix::io::Errno;
    use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
    use std::io::IoSlice;

    let addrs: Vec<SocketAddrAny> = batch.iter().map(|t| t.destination.into()).collect();
    let iovs: Vec<[IoSlice<'_>; 1]> = batch.iter().map(|t| [IoSlice::new(&t.contents)]).collect();
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = batch
        .iter()
        .map(|_| SendAncillaryBuffer::default())
        .collect();
    let mut msgs: Vec<MMsgHdr<'_>> = addrs
        .iter()
        .zip(&iovs)
        .zip(controls.iter_mut())
        .map(|((addr, iov), control)| MMsgHdr::new_with_addr(addr, iov, control))
        .collect();
    let mut next = 0;
    // Each turn sends at least one datagram or skips one, so this ends within batch.len() turns.
    while next < msgs.len() {
        match rustix::net::sendmmsg(socket, &mut msgs[next..], SendFlags::DONTWAIT) {
            Ok(0) => return msgs.len() - next,
            Ok(n) => next += n,
            Err(e) if e == Errno::AGAIN || e == Errno::WOULDBLOCK => return msgs.len() - next,
            // Only the first unsent datagram failed (e.g. an unreachable destination); skip it.
            Err(e) => {
                tracing::debug!(error = %e, destination = %batch[next].destination, "send failed");
                next += 1;
            }
        }
    }
    0
}

#[cfg(not(target_os = "linux"))]
fn send(socket: &UdpSocket, batch: &[Transmit]) -> usize {
    let mut dropped = 0;
    for t in batch {
        match socket.try_send_to(&t.contents, t.destination) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => dropped += 1,
            Err(e) => tracing::debug!(error = %e, destination = %t.destination, "send failed"),
        }
    }
    dropped
}
