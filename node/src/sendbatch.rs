//! Sends the engine's queued datagrams in batches: one `sendmmsg(2)` system call per batch on
//! Linux instead of one `sendto` per datagram (a fan-out sends the same frame to many
//! subscribers at once, so batches fill up exactly when it matters).
//!
//! A run of datagrams to one destination (the packets of one video frame to one subscriber,
//! which the engine queues together) leaves in one send with UDP segmentation offload
//! (`UDP_SEGMENT`): the kernel builds, routes and queues one buffer instead of one per
//! datagram, and splits it into the same datagrams (in the NIC where it can). Where the kernel
//! or the device refuses it, the node falls back to plain batches for good.
//!
//! Never waits: when the socket buffer is full the rest of the batch is dropped and counted, so
//! one slow path can never stall the engine.

use std::net::SocketAddr;

use str0m::net::{Protocol, Transmit};
use tokio::net::UdpSocket;

use crate::engine::Engine;
use crate::media_tcp::TcpSender;

/// Where datagrams other than plain UDP ones go, and how UDP ones are sent.
pub struct Out {
    /// The socket is IPv6 (dual-stack): IPv4 destinations are written IPv4-mapped.
    pub v4_mapped: bool,
    /// ICE-TCP connections, by peer address, when ICE-TCP is on.
    pub tcp: Option<TcpSender>,
    /// Runs to one destination are sent with segmentation offload (off once the kernel
    /// refused it).
    pub offload: bool,
}

impl Out {
    /// UDP sends with segmentation offload where the platform has it.
    pub fn new(v4_mapped: bool, tcp: Option<TcpSender>) -> Out {
        Out {
            v4_mapped,
            tcp,
            offload: cfg!(target_os = "linux"),
        }
    }

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

/// Datagrams per offloaded send at most (the kernel's `UDP_MAX_SEGMENTS` is 64 or more).
pub const MAX_SEGMENTS: usize = 64;
/// Bytes per offloaded send at most: it must fit one IP datagram's length field.
const MAX_RUN_BYTES: usize = 60_000;

/// The end of the run that starts at `start`: datagrams to the same destination, all as long
/// as the first except the last, which may be shorter. One offloaded send carries such a run
/// (the kernel cuts it into segments of the first one's length); a run of one is sent plainly.
pub fn run_end(batch: &[Transmit], start: usize, max_segments: usize) -> usize {
    let Some(first) = batch.get(start) else {
        return start;
    };
    let size = first.contents.len();
    let mut end = start + 1;
    let mut bytes = size;
    // A run ends after a shorter datagram: only the last segment may be short.
    let mut short = false;
    while end < batch.len() && end - start < max_segments && !short && size > 0 {
        let t = &batch[end];
        let len = t.contents.len();
        if t.destination != first.destination || len > size || len == 0 {
            break;
        }
        if bytes + len > MAX_RUN_BYTES {
            break;
        }
        short = len < size;
        bytes += len;
        end += 1;
    }
    end
}

/// Sends every datagram the engine has queued: UDP ones in batches, ICE-TCP ones to their
/// connection's write queue.
pub fn flush(engine: &mut Engine, socket: &UdpSocket, out: &mut Out, batch: &mut Vec<Transmit>) {
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
        let dropped = send(socket, out, batch);
        for _ in 0..dropped {
            engine.count_send_drop();
        }
    }
}

/// Sends `batch`: runs to one destination offloaded, the rest in `sendmmsg` calls. Returns how
/// many datagrams were dropped because the socket buffer was full.
#[cfg(target_os = "linux")]
fn send(socket: &UdpSocket, out: &mut Out, batch: &[Transmit]) -> usize {
    let mut dropped = 0;
    let mut plain: Vec<&Transmit> = Vec::with_capacity(batch.len());
    let mut start = 0;
    // Each turn moves `start` forward by at least one, so this ends within batch.len() turns.
    while start < batch.len() {
        let end = if out.offload {
            run_end(batch, start, MAX_SEGMENTS)
        } else {
            start + 1
        };
        let run = &batch[start..end];
        match run {
            [] => break,
            [one] => plain.push(one),
            [first, ..] => {
                // A viewer's packets keep their order: what is queued for the same
                // destination goes first (a receiver takes a keyframe's packets out of order
                // badly, and a run jumping ahead of them is exactly that).
                if plain.iter().any(|t| t.destination == first.destination) {
                    dropped += send_plain(socket, &plain);
                    plain.clear();
                }
                match send_run(socket, run) {
                    Ok(()) => {}
                    Err(nix::errno::Errno::EAGAIN) => dropped += run.len(),
                    // The device or kernel cannot offload (no checksum offload, a tunnel, an
                    // old kernel): send this run and everything after plainly.
                    Err(e) if offload_refused(e) => {
                        tracing::info!(error = %e, "UDP segmentation offload refused; sending datagrams one by one");
                        out.offload = false;
                        plain.extend(run);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, destination = %first.destination, "send failed")
                    }
                }
            }
        }
        start = end;
    }
    dropped + send_plain(socket, &plain)
}

/// Errors with which the kernel says it cannot segment this socket's sends.
#[cfg(target_os = "linux")]
fn offload_refused(e: nix::errno::Errno) -> bool {
    use nix::errno::Errno;
    matches!(
        e,
        Errno::EIO | Errno::EINVAL | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP
    )
}

/// One send of `run` (see [`run_end`]) with segmentation offload. The datagrams are handed
/// over as they are, one I/O vector each: the kernel joins them, nothing is copied here.
#[cfg(target_os = "linux")]
fn send_run(socket: &UdpSocket, run: &[Transmit]) -> nix::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg};
    use std::io::IoSlice;
    use std::os::fd::AsRawFd;

    let Some(first) = run.first() else {
        return Ok(());
    };
    let Ok(segment) = u16::try_from(first.contents.len()) else {
        return Err(nix::errno::Errno::EINVAL);
    };
    let iov: Vec<IoSlice<'_>> = run.iter().map(|t| IoSlice::new(&t.contents)).collect();
    let to = SockaddrStorage::from(first.destination);
    let cmsg = [ControlMessage::UdpGsoSegments(&segment)];
    sendmsg(
        socket.as_raw_fd(),
        &iov,
        &cmsg,
        MsgFlags::MSG_DONTWAIT,
        Some(&to),
    )
    .map(|_| ())
}

/// Sends `batch` in `sendmmsg` calls; returns how many datagrams were dropped because the
/// socket buffer was full.
#[cfg(target_os = "linux")]
fn send_plain(socket: &UdpSocket, batch: &[&Transmit]) -> usize {
    use rustix::io::Errno;
    use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny};
    use std::io::IoSlice;

    if batch.is_empty() {
        return 0;
    }
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
fn send(socket: &UdpSocket, _out: &mut Out, batch: &[Transmit]) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn t(to: u16, len: usize) -> Transmit {
        Transmit {
            proto: Protocol::Udp,
            source: SocketAddr::from(([127, 0, 0, 1], 1)),
            destination: SocketAddr::from(([127, 0, 0, 1], to)),
            contents: vec![0u8; len].into(),
        }
    }

    fn runs(batch: &[Transmit], max: usize) -> Vec<usize> {
        let mut ends = Vec::new();
        let mut start = 0;
        while start < batch.len() {
            start = run_end(batch, start, max);
            ends.push(start);
        }
        ends
    }

    #[test]
    fn a_frames_packets_to_one_subscriber_make_one_run() {
        // Full packets, then a short last one; then the next subscriber.
        let b = [
            t(1, 1100),
            t(1, 1100),
            t(1, 1100),
            t(1, 700),
            t(2, 1100),
            t(2, 900),
        ];
        assert_eq!(runs(&b, MAX_SEGMENTS), vec![4, 6]);
    }

    #[test]
    fn a_run_ends_at_a_longer_datagram_after_a_short_one_and_at_the_segment_cap() {
        // Only the last segment may be shorter, and none may be longer than the first.
        let b = [t(1, 900), t(1, 1100), t(1, 1100), t(1, 800), t(1, 1100)];
        assert_eq!(runs(&b, MAX_SEGMENTS), vec![1, 4, 5]);
        let b: Vec<Transmit> = (0..5).map(|_| t(1, 100)).collect();
        assert_eq!(runs(&b, 2), vec![2, 4, 5]);
    }

    #[test]
    fn a_run_never_exceeds_one_ip_datagram() {
        let b: Vec<Transmit> = (0..60).map(|_| t(1, 1200)).collect();
        let ends = runs(&b, MAX_SEGMENTS);
        assert_eq!(ends.first(), Some(&(MAX_RUN_BYTES / 1200)));
        assert_eq!(ends.last(), Some(&60));
    }

    #[test]
    fn single_datagrams_and_empty_ones_are_runs_of_one() {
        let b = [t(1, 100), t(2, 100), t(2, 0), t(3, 0), t(3, 10)];
        assert_eq!(runs(&b, MAX_SEGMENTS), vec![1, 2, 3, 4, 5]);
        assert_eq!(run_end(&b, 9, MAX_SEGMENTS), 9);
    }

    /// What a receiver sees: an offloaded run arrives as the same datagrams, each receiver
    /// gets its datagrams in the order they were queued, and a batch mixing runs and singles
    /// loses nothing.
    #[tokio::test]
    async fn a_receiver_gets_every_datagram_of_a_mixed_batch_as_sent() {
        let sender = UdpSocket::bind("127.0.0.1:0").await.expect("bind sender");
        // Plain sockets: tokio's `try_recv` reports nothing until its reactor saw readiness.
        let a = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a");
        let b = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind b");
        for s in [&a, &b] {
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .expect("timeout");
        }
        let to = |s: &std::net::UdpSocket, len: usize, fill: u8| Transmit {
            proto: Protocol::Udp,
            source: sender.local_addr().expect("addr"),
            destination: s.local_addr().expect("addr"),
            contents: vec![fill; len].into(),
        };
        // A single for `a` queued before a run for `a`, runs and singles mixed.
        let batch = vec![
            to(&a, 60, 0),
            to(&b, 200, 7),
            to(&a, 1000, 1),
            to(&a, 1000, 2),
            to(&a, 400, 3),
            to(&b, 300, 4),
            to(&a, 50, 5),
        ];
        let mut out = Out::new(false, None);
        assert_eq!(send(&sender, &mut out, &batch), 0);
        let mut buf = [0u8; 4096];
        // `count` datagrams (or fewer, after 5 s without one), then whether one more is queued.
        let mut got = |s: &std::net::UdpSocket, count: usize| {
            let mut seen = Vec::new();
            for _ in 0..count {
                match s.recv(&mut buf) {
                    Ok(n) => seen.push((n, buf[0])),
                    Err(_) => break,
                }
            }
            s.set_nonblocking(true).expect("nonblocking");
            (seen, s.recv(&mut buf).is_ok())
        };
        assert_eq!(
            got(&a, 5),
            (
                vec![(60, 0), (1000, 1), (1000, 2), (400, 3), (50, 5)],
                false
            )
        );
        assert_eq!(got(&b, 2), (vec![(200, 7), (300, 4)], false));
    }
}
