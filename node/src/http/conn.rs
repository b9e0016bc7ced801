//! One connection's clock: idle, header and body deadlines, enforced on the socket itself.
//!
//! A connection is *idle* from its accept or its last response until the first byte of the next
//! request (idle timeout), reads a *head* from that byte until the request head is complete
//! (header timeout: trickling bytes does not extend it), then is *busy* while the request is
//! handled (the body has its own deadline, see `service.rs`). Writing an answer may make no
//! progress for at most the body timeout either, so a client that never reads cannot hold a
//! connection. hyper's own `header_read_timeout`
//! starts when it begins waiting for a head, so it would make the idle and header limits one;
//! it stays on only as a backstop.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use super::answers;
use crate::rejects::{Port, Rejects};

/// The deadlines that keep a slow or silent client from holding a connection slot.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// No request for this long closes the connection (`--http-idle-timeout`).
    pub idle: Duration,
    /// From a request's first byte to the end of its head (`--http-header-timeout`).
    pub header: Duration,
    /// For the body, and for each write of the answer to progress (`--http-body-timeout`).
    pub body: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Head,
    Busy,
    /// Switched protocols (a WebSocket): no HTTP deadlines; the protocol keeps its own.
    Upgraded,
}

/// What the socket wrapper and the service share about one connection.
pub struct ConnState {
    pub timeouts: Timeouts,
    pub ip: IpAddr,
    pub rejects: Arc<Rejects>,
    inner: Mutex<Inner>,
}

struct Inner {
    phase: Phase,
    deadline: Option<Instant>,
    requests: u64,
    body_timed_out: bool,
    /// hyper waiting on a read while no deadline was armed: woken when one is.
    read_waker: Option<Waker>,
}

impl ConnState {
    pub fn new(timeouts: Timeouts, ip: IpAddr, rejects: Arc<Rejects>) -> Arc<ConnState> {
        Arc::new(ConnState {
            timeouts,
            ip,
            rejects,
            inner: Mutex::new(Inner {
                phase: Phase::Idle,
                deadline: Some(Instant::now() + timeouts.idle),
                requests: 0,
                body_timed_out: false,
                read_waker: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes arrived: an idle connection starts its header clock.
    fn on_bytes(&self) {
        let mut inner = self.lock();
        if inner.phase == Phase::Idle {
            inner.phase = Phase::Head;
            inner.deadline = Some(Instant::now() + self.timeouts.header);
        }
    }

    /// A request head is complete and goes to the service.
    pub fn on_request(&self) {
        let mut inner = self.lock();
        inner.phase = Phase::Busy;
        inner.deadline = None;
        inner.requests += 1;
        inner.body_timed_out = false;
    }

    /// The response has been handed to the socket: idle again.
    pub fn on_response_done(&self) {
        let mut inner = self.lock();
        if inner.phase == Phase::Upgraded {
            return;
        }
        inner.phase = Phase::Idle;
        inner.deadline = Some(Instant::now() + self.timeouts.idle);
        if let Some(w) = inner.read_waker.take() {
            w.wake();
        }
    }

    /// The answer switched protocols (101): the connection is no longer HTTP, so the idle,
    /// header and answer rewriting rules stop (the WebSocket pings its client instead).
    pub fn on_upgraded(&self) {
        let mut inner = self.lock();
        inner.phase = Phase::Upgraded;
        inner.deadline = None;
    }

    pub fn on_body_timeout(&self) {
        self.lock().body_timed_out = true;
    }

    pub fn body_timed_out(&self) -> bool {
        self.lock().body_timed_out
    }

    fn is_busy(&self) -> bool {
        matches!(self.lock().phase, Phase::Busy | Phase::Upgraded)
    }

    /// The armed deadline, if any; registers `waker` for when one gets armed.
    fn deadline(&self, waker: &Waker) -> Option<Instant> {
        let mut inner = self.lock();
        if inner.deadline.is_none() {
            inner.read_waker = Some(waker.clone());
        }
        inner.deadline
    }

    /// The deadline passed: count what it means and give hyper the error that closes it.
    fn expired(&self) -> io::Error {
        let (phase, requests) = {
            let inner = self.lock();
            (inner.phase, inner.requests)
        };
        let reason = match phase {
            Phase::Head => Some("header_timeout"),
            // Held open without ever asking anything: the idle-connection attack.
            Phase::Idle if requests == 0 => Some("idle_timeout"),
            // Keep-alive connections that go quiet after requests are normal.
            _ => None,
        };
        if let Some(reason) = reason
            && self.rejects.reject(Port::Http, reason, self.ip)
        {
            tracing::info!(client = %self.ip, reason, "HTTP connection closed at its deadline (further ones from this client are counted, not logged, for a minute)");
        }
        io::Error::new(io::ErrorKind::TimedOut, "connection deadline")
    }
}

/// The socket as hyper sees it: replays bytes already read during triage, enforces the
/// deadlines, and replaces hyper's empty-bodied error answers with JSON ones.
pub struct GuardedIo<S = TcpStream> {
    stream: S,
    replay: Vec<u8>,
    replayed: usize,
    state: Arc<ConnState>,
    sleep: Pin<Box<Sleep>>,
    armed: Option<Instant>,
    /// Our replacement for a hyper error answer, and how much of it is written.
    pending: Option<(Vec<u8>, usize)>,
    /// When the socket stopped taking our bytes, the deadline for it to take some again.
    write_stall: Option<Instant>,
    write_sleep: Pin<Box<Sleep>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> GuardedIo<S> {
    pub fn new(stream: S, replay: Vec<u8>, state: Arc<ConnState>) -> GuardedIo<S> {
        GuardedIo {
            stream,
            replay,
            replayed: 0,
            state,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
            pending: None,
            write_stall: None,
            write_sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    /// Watches a write: progress clears the stall clock, no progress for the body timeout is an
    /// error that ends the connection.
    fn watch_write<T>(
        &mut self,
        cx: &mut Context<'_>,
        res: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match res {
            Poll::Pending => {
                let deadline = match self.write_stall {
                    Some(d) => d,
                    None => {
                        let d = Instant::now() + self.state.timeouts.body;
                        self.write_sleep.as_mut().reset(d);
                        self.write_stall = Some(d);
                        d
                    }
                };
                if Instant::now() >= deadline || self.write_sleep.as_mut().poll(cx).is_ready() {
                    if self
                        .state
                        .rejects
                        .reject(Port::Http, "write_timeout", self.state.ip)
                    {
                        tracing::info!(client = %self.state.ip, "HTTP client stopped reading its answer (further ones from this client are counted, not logged, for a minute)");
                    }
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client stopped reading",
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.write_stall = None;
                ready
            }
        }
    }

    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = &self.pending {
            if *done >= bytes.len() {
                self.pending = None;
                break;
            }
            let res = Pin::new(&mut self.stream).poll_write(cx, &bytes[*done..]);
            let n = ready!(self.watch_write(cx, res))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if let Some((_, done)) = &mut self.pending {
                *done += n;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for GuardedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let deadline = this.state.deadline(cx.waker());
        // Checked before reading too: a client trickling bytes is always ready to read.
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Poll::Ready(Err(this.state.expired()));
        }
        if this.replayed < this.replay.len() {
            let n = buf.remaining().min(this.replay.len() - this.replayed);
            buf.put_slice(&this.replay[this.replayed..this.replayed + n]);
            this.replayed += n;
            this.state.on_bytes();
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.state.on_bytes();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if let Some(d) = deadline {
                    if this.armed != Some(d) {
                        this.sleep.as_mut().reset(d);
                        this.armed = Some(d);
                    }
                    if this.sleep.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Err(this.state.expired()));
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for GuardedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        // hyper answers parse errors itself only while no request is being served.
        if !this.state.is_busy()
            && let Some((ours, reason)) = answers::replace_hyper_error(buf)
        {
            if this.state.rejects.reject(Port::Http, reason, this.state.ip) {
                tracing::info!(client = %this.state.ip, reason, "HTTP request refused (further ones from this client are counted, not logged, for a minute)");
            }
            this.pending = Some((ours, 0));
            // Pretend hyper's bytes went out; ours follow on the next write, flush or shutdown.
            return match this.poll_pending(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Ready(Ok(buf.len())),
            };
        }
        let res = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.watch_write(cx, res)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        let res = Pin::new(&mut self.stream).poll_flush(cx);
        self.watch_write(cx, res)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
