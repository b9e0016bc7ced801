//! The thread driver: one std thread per client, blocking on its UDP socket with a read timeout
//! that is the core's next timer (or a short command poll). What the integration tests use:
//! nothing of the client crosses an `.await`.

use std::cell::RefCell;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::mpsc::{self, TryRecvError, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::core::Core;
use super::{COMMAND_QUEUE, Job, RECV_BUF, SubmitError};

/// How often the thread looks at its command queue when nothing else happens.
const COMMAND_POLL: Duration = Duration::from_millis(5);
/// Commands run per loop turn.
const MAX_JOBS_PER_TURN: usize = 64;

/// The handle of a client thread. Dropping it stops the thread and waits for it.
pub(super) struct ThreadDriver {
    jobs: Option<mpsc::SyncSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl ThreadDriver {
    pub(super) fn spawn(
        name: &str,
        core: Core,
        socket: Link,
        lifetime: Duration,
    ) -> anyhow::Result<ThreadDriver> {
        let (tx, rx) = mpsc::sync_channel(COMMAND_QUEUE);
        let thread = std::thread::Builder::new()
            .name(format!("peer-{name}"))
            .spawn(move || run(core, socket, rx, lifetime))
            .context("spawning the client thread")?;
        Ok(ThreadDriver {
            jobs: Some(tx),
            thread: Some(thread),
        })
    }

    pub(super) fn submit(&self, job: Job) -> Result<(), SubmitError> {
        let jobs = self.jobs.as_ref().ok_or(SubmitError::Gone)?;
        jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => SubmitError::Full,
            TrySendError::Disconnected(_) => SubmitError::Gone,
        })
    }
}

impl Drop for ThreadDriver {
    fn drop(&mut self) {
        // A closed queue ends the loop within COMMAND_POLL; the thread's lifetime bounds the join.
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a client thread sends and receives on.
pub(super) enum Link {
    Udp(UdpSocket),
    /// Relayed through a TURN channel.
    Turn(TurnChannel),
    /// ICE-TCP: one connection to the server's passive candidate, RFC 4571 frames (a 16-bit
    /// length, then the packet). `pending` holds bytes read past the last whole frame.
    Tcp {
        stream: TcpStream,
        peer: SocketAddr,
        pending: Vec<u8>,
    },
}

/// A TURN channel (RFC 8656 §12) the caller allocated and bound to the server's media address:
/// every packet goes out as ChannelData through the TURN server, and the server's ChannelData
/// on that channel comes back as packets from the peer.
pub struct TurnChannel {
    /// The socket the allocation was made from.
    pub socket: UdpSocket,
    /// The TURN server.
    pub server: SocketAddr,
    /// The relayed address (the client's candidate as the peer sees it).
    pub relayed: SocketAddr,
    /// The bound channel number (0x4000..=0x4FFF).
    pub channel: u16,
    /// The peer the channel is bound to (the SFU's media address).
    pub peer: SocketAddr,
}

/// A frame's 16-bit length bounds what a TCP link keeps unread.
const MAX_PENDING: usize = 2 + u16::MAX as usize;

impl Link {
    fn send_to(&self, dest: SocketAddr, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Link::Udp(socket) => socket.send_to(bytes, dest).map(|_| ()),
            Link::Turn(t) => {
                if dest != t.peer {
                    return Err(std::io::Error::new(
                        ErrorKind::AddrNotAvailable,
                        format!("the TURN channel reaches only {}", t.peer),
                    ));
                }
                let len = u16::try_from(bytes.len())
                    .map_err(|_| std::io::Error::new(ErrorKind::InvalidInput, "over 64 KiB"))?;
                let mut msg = Vec::with_capacity(4 + bytes.len());
                msg.extend_from_slice(&t.channel.to_be_bytes());
                msg.extend_from_slice(&len.to_be_bytes());
                msg.extend_from_slice(bytes);
                t.socket.send_to(&msg, t.server).map(|_| ())
            }
            Link::Tcp { stream, peer, .. } => {
                if dest != *peer {
                    return Err(std::io::Error::new(
                        ErrorKind::AddrNotAvailable,
                        format!("the TCP link reaches only {peer}"),
                    ));
                }
                let len = u16::try_from(bytes.len()).map_err(|_| {
                    std::io::Error::new(ErrorKind::InvalidInput, "frame over 64 KiB")
                })?;
                let mut frame = Vec::with_capacity(2 + bytes.len());
                frame.extend_from_slice(&len.to_be_bytes());
                frame.extend_from_slice(bytes);
                let mut stream: &TcpStream = stream;
                stream.write_all(&frame)
            }
        }
    }

    /// One datagram (or frame) into `buf`, waiting at most `wait`.
    fn recv(&mut self, buf: &mut [u8], wait: Duration) -> std::io::Result<(usize, SocketAddr)> {
        match self {
            Link::Udp(socket) => {
                socket.set_read_timeout(Some(wait))?;
                socket.recv_from(buf)
            }
            Link::Turn(t) => {
                t.socket.set_read_timeout(Some(wait))?;
                let mut msg = [0u8; 2048 + 4];
                let (n, from) = t.socket.recv_from(&mut msg)?;
                let data = match msg.get(..n) {
                    Some([c0, c1, l0, l1, rest @ ..])
                        if from == t.server && u16::from_be_bytes([*c0, *c1]) == t.channel =>
                    {
                        rest.get(..usize::from(u16::from_be_bytes([*l0, *l1])))
                    }
                    _ => None,
                };
                // Anything else (a STUN answer, a short message) is not media: skip it.
                let data = data.ok_or_else(|| {
                    std::io::Error::new(ErrorKind::WouldBlock, "not ChannelData of the channel")
                })?;
                let n = data.len().min(buf.len());
                buf[..n].copy_from_slice(&data[..n]);
                Ok((n, t.peer))
            }
            Link::Tcp {
                stream,
                peer,
                pending,
            } => {
                // Bounded: each turn either returns or reads more bytes, and `pending` is capped.
                loop {
                    if let [hi, lo, rest @ ..] = pending.as_slice() {
                        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
                        if rest.len() >= len {
                            let n = len.min(buf.len());
                            buf[..n].copy_from_slice(&rest[..n]);
                            pending.drain(..2 + len);
                            return Ok((n, *peer));
                        }
                    }
                    if pending.len() >= MAX_PENDING {
                        return Err(std::io::Error::new(ErrorKind::InvalidData, "frame overrun"));
                    }
                    stream.set_read_timeout(Some(wait))?;
                    let mut chunk = [0u8; 4096];
                    let want = chunk.len().min(MAX_PENDING - pending.len());
                    match stream.read(&mut chunk[..want])? {
                        0 => {
                            return Err(std::io::Error::new(
                                ErrorKind::ConnectionAborted,
                                "the server closed the TCP link",
                            ));
                        }
                        n => pending.extend_from_slice(&chunk[..n]),
                    }
                }
            }
        }
    }
}

/// Binds a new socket on the same IP for a core that asked to move (see `Core::request_rebind`).
fn rebind(core: &mut Core, socket: &RefCell<Link>) -> anyhow::Result<()> {
    let ip = match &*socket.borrow() {
        Link::Udp(s) => s.local_addr()?.ip(),
        Link::Tcp { .. } | Link::Turn(_) => {
            anyhow::bail!("only a direct UDP client can move to a new socket")
        }
    };
    let fresh = UdpSocket::bind((ip, 0)).context("binding the new client socket")?;
    core.moved_to(fresh.local_addr()?)?;
    *socket.borrow_mut() = Link::Udp(fresh);
    Ok(())
}

fn run(mut core: Core, socket: Link, jobs: mpsc::Receiver<Job>, lifetime: Duration) {
    let deadline = Instant::now() + lifetime;
    let mut buf = vec![0u8; RECV_BUF];
    // In a cell: a job may ask for a new socket while `send` holds on to this one.
    let socket = RefCell::new(socket);
    let mut send = |dest, bytes: &[u8]| socket.borrow().send_to(dest, bytes);
    let result: anyhow::Result<()> = (|| {
        core.drain(Instant::now(), &mut send)?;
        // The deadline bounds the loop in time; this bounds it in count (at most one turn per
        // 10 µs of lifetime, far more than media and timers need).
        let max_turns = lifetime.as_micros() / 10 + 1_000;
        for _ in 0..max_turns {
            if Instant::now() >= deadline {
                return Ok(());
            }
            for _ in 0..MAX_JOBS_PER_TURN {
                match jobs.try_recv() {
                    Ok(job) => {
                        job(&mut core);
                        if core.take_rebind() {
                            rebind(&mut core, &socket)?;
                        }
                        core.drain(Instant::now(), &mut send)?;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return Ok(()),
                }
            }
            core.tick(Instant::now(), &mut send)?;
            let now = Instant::now();
            let wake = core.poll_timeout().min(now + COMMAND_POLL).min(deadline);
            let wait = wake.saturating_duration_since(now);
            if wait.is_zero() {
                continue;
            }
            let received = socket.borrow_mut().recv(&mut buf, wait);
            match received {
                Ok((n, source)) => {
                    if let Some(bytes) = buf.get(..n) {
                        core.receive(Instant::now(), source, bytes, &mut send)?;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => {
                    // e.g. ICMP port unreachable surfacing as ECONNREFUSED: keep going.
                    core.record_error(format!("recv_from: {e}"));
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        Ok(())
    })();
    core.finish(result, &mut send);
}
