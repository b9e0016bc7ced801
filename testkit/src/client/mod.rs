//! One WebRTC client (str0m, full ICE, one UDP socket) for tests and load: the no-I/O
//! [`Core`] holds the `Rtc`, the offer/answer state, the synthetic sources and the counters;
//! a driver owns the core and its socket, either a std thread ([`Client::spawn_thread`], what
//! the integration tests use) or a tokio task ([`Client::spawn_task`], hundreds per process
//! for the load generator). The async [`Client`] handle is the same for both: it sends jobs to
//! the driver and reads the counters. A third driver has no socket: the node's in-memory
//! engine world runs `Core::in_memory` cores on its simulated clock.

mod core;
mod counters;
pub mod decoder;
mod task;
mod thread;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::{MediaKind, Mid};
use tokio::sync::oneshot;

use self::core::lock;
pub use self::core::{Core, SendFn, SharedStats, StatsCell};
pub use self::counters::{ClientStats, FrameMark, RawSample, RxWindow, TrackRx, TrackTx};
use self::task::TaskDriver;
use self::thread::ThreadDriver;
pub use self::thread::TurnChannel;
use crate::media::{VideoShape, clock_origin};

/// Commands waiting for a driver.
const COMMAND_QUEUE: usize = 16;
/// How long a command waits for the driver to run it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// UDP receive buffer; the largest datagram str0m or the node sends is well below this.
const RECV_BUF: usize = 2048;
/// Polling step of [`Client::wait_until`].
const WAIT_STEP: Duration = Duration::from_millis(10);

/// A command for the driver: runs on its thread or task, the only place the `Rtc` lives.
type Job = Box<dyn FnOnce(&mut Core) + Send>;

/// Why a job did not reach the driver.
#[derive(Debug)]
enum SubmitError {
    Full,
    Gone,
}

/// How a client is set up.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub name: String,
    /// The driver stops after this long, whatever happens.
    pub lifetime: Duration,
    pub video: VideoShape,
    /// Keep up to this many raw received-frame samples (for per-frame pairing across clients).
    pub raw_samples: usize,
    /// The socket's address and host candidate. On loopback, datagrams go only to loopback.
    pub ip: IpAddr,
    /// ICE-TCP only: connect to this passive TCP candidate of the server (its media port's
    /// TCP twin) and offer nothing else (thread driver only).
    pub tcp: Option<SocketAddr>,
}

impl ClientConfig {
    /// On 127.0.0.1, the default video, no raw samples.
    pub fn new(name: impl Into<String>, lifetime: Duration) -> ClientConfig {
        ClientConfig {
            name: name.into(),
            lifetime,
            video: VideoShape::default(),
            raw_samples: 0,
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            tcp: None,
        }
    }
}

enum Driver {
    Thread(ThreadDriver),
    Task(TaskDriver),
}

/// The handle of a client. Dropping it stops the driver.
pub struct Client {
    name: String,
    stats: Arc<Mutex<ClientStats>>,
    local: SocketAddr,
    driver: Driver,
}

fn mids<S: AsRef<str>>(mids: &[S]) -> Vec<Mid> {
    mids.iter().map(|m| Mid::from(m.as_ref())).collect()
}

impl Client {
    /// A client driven by its own std thread, with a UDP socket on `cfg.ip`.
    pub fn spawn_thread(cfg: ClientConfig) -> anyhow::Result<Client> {
        // Fix the stamps' time origin before anything is sent.
        clock_origin();
        let (core, socket) = match cfg.tcp {
            Some(server) => {
                let stream = std::net::TcpStream::connect_timeout(&server, COMMAND_TIMEOUT)
                    .with_context(|| format!("connecting to the ICE-TCP candidate {server}"))?;
                stream.set_nodelay(true)?;
                let local = stream.local_addr()?;
                let core = Core::new_tcp(local, Instant::now(), cfg.video, cfg.raw_samples)?;
                let link = thread::Link::Tcp {
                    stream,
                    peer: server,
                    pending: Vec::new(),
                };
                (core, link)
            }
            None => {
                let socket = std::net::UdpSocket::bind(SocketAddr::new(cfg.ip, 0))
                    .with_context(|| format!("binding the client UDP socket on {}", cfg.ip))?;
                let local = socket.local_addr()?;
                let core = Core::new(local, Instant::now(), cfg.video, cfg.raw_samples)?;
                (core, thread::Link::Udp(socket))
            }
        };
        let local = core.local();
        let stats = core.stats();
        let driver = ThreadDriver::spawn(&cfg.name, core, socket, cfg.lifetime)?;
        Ok(Client {
            name: cfg.name,
            stats,
            local,
            driver: Driver::Thread(driver),
        })
    }

    /// A client on its own std thread whose every packet goes through a TURN channel the
    /// caller allocated and bound to the server's media address (`iceTransportPolicy: relay`).
    pub fn spawn_thread_relayed(cfg: ClientConfig, turn: TurnChannel) -> anyhow::Result<Client> {
        clock_origin();
        let local = turn.socket.local_addr()?;
        let core = Core::new_relayed(
            turn.relayed,
            local,
            Instant::now(),
            cfg.video,
            cfg.raw_samples,
        )?;
        let stats = core.stats();
        let driver = ThreadDriver::spawn(&cfg.name, core, thread::Link::Turn(turn), cfg.lifetime)?;
        Ok(Client {
            name: cfg.name,
            stats,
            local,
            driver: Driver::Thread(driver),
        })
    }

    /// A client driven by a task on the current tokio runtime, with a UDP socket on `cfg.ip`.
    pub async fn spawn_task(cfg: ClientConfig) -> anyhow::Result<Client> {
        if cfg.tcp.is_some() {
            bail!("ICE-TCP clients run on the thread driver only");
        }
        clock_origin();
        let socket = tokio::net::UdpSocket::bind(SocketAddr::new(cfg.ip, 0))
            .await
            .with_context(|| format!("binding the client UDP socket on {}", cfg.ip))?;
        let local = socket.local_addr()?;
        let core = Core::new(local, Instant::now(), cfg.video, cfg.raw_samples)?;
        let stats = core.stats();
        let driver = TaskDriver::spawn(core, socket, cfg.lifetime);
        Ok(Client {
            name: cfg.name,
            stats,
            local,
            driver: Driver::Task(driver),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address its socket was first bound to (see [`Client::rebind`] for a move).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Moves the client to a new UDP socket on the same IP (a network change; thread driver
    /// only) and returns its new address. The remote learns it from an ICE restart
    /// ([`Client::ice_restart_offer`]).
    pub async fn rebind(&self) -> anyhow::Result<SocketAddr> {
        self.run(|c| {
            c.request_rebind();
            Ok(())
        })
        .await?;
        self.run(|c| Ok(c.local())).await
    }

    /// An offer with new ICE credentials; answer it with [`Client::accept_answer`].
    pub async fn ice_restart_offer(&self) -> anyhow::Result<String> {
        self.run(|c| c.ice_restart_offer()).await
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ClientStats {
        lock(&self.stats).clone()
    }

    /// Read the counters under the lock without cloning them.
    pub fn with_stats<R>(&self, f: impl FnOnce(&ClientStats) -> R) -> R {
        f(&lock(&self.stats))
    }

    /// Start a measurement window (see [`ClientStats::reset_window`]).
    pub fn reset_window(&self) {
        lock(&self.stats).reset_window();
    }

    /// Run `f` on the driver (the only place the `Rtc` lives) and wait, bounded, for its result.
    pub async fn run<R, F>(&self, f: F) -> anyhow::Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Core) -> anyhow::Result<R> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |c: &mut Core| {
            let _ = tx.send(f(c));
        });
        let gone = || {
            anyhow!(
                "client {}: driver is gone: {:?}",
                self.name,
                self.with_stats(|s| s.errors.clone())
            )
        };
        let submitted = match &self.driver {
            Driver::Thread(d) => d.submit(job),
            Driver::Task(d) => d.submit(job),
        };
        match submitted {
            Ok(()) => {}
            Err(SubmitError::Full) => bail!("client {}: command queue full", self.name),
            Err(SubmitError::Gone) => return Err(gone()),
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(gone()),
            Err(_) => bail!(
                "client {}: command timed out after {COMMAND_TIMEOUT:?}",
                self.name
            ),
        }
    }

    /// Poll the counters every 10 ms until `pred` holds (returns a snapshot), `timeout`
    /// passes or the driver stops.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&ClientStats) -> bool,
    ) -> anyhow::Result<ClientStats> {
        let deadline = Instant::now() + timeout;
        let max_polls = timeout.as_millis() / WAIT_STEP.as_millis() + 2;
        for _ in 0..max_polls {
            if self.with_stats(&pred) {
                return Ok(self.stats());
            }
            if Instant::now() >= deadline || self.with_stats(|s| s.stopped) {
                break;
            }
            tokio::time::sleep(WAIT_STEP).await;
        }
        let s = self.stats();
        if pred(&s) {
            return Ok(s);
        }
        bail!(
            "client {}: timed out after {timeout:?} waiting for {what}; {}",
            self.name,
            s.summary()
        )
    }

    /// Wait for ICE + DTLS.
    pub async fn wait_connected(&self, timeout: Duration) -> anyhow::Result<ClientStats> {
        self.wait_until("the connection", timeout, |s| s.connected)
            .await
    }

    // ---- SDP ----------------------------------------------------------------------------------

    /// add_media(kind, SendOnly) for each kind, apply() → offer. Returns (mids, offer SDP).
    pub async fn create_send_offer(
        &self,
        kinds: &[MediaKind],
    ) -> anyhow::Result<(Vec<String>, String)> {
        let kinds = kinds.to_vec();
        self.run(move |c| c.create_send_offer(&kinds)).await
    }

    /// add_media(kind, RecvOnly) for each kind, apply() → offer. Returns (mids, offer SDP).
    pub async fn create_recv_offer(
        &self,
        kinds: &[MediaKind],
    ) -> anyhow::Result<(Vec<String>, String)> {
        let kinds = kinds.to_vec();
        self.run(move |c| c.create_recv_offer(&kinds)).await
    }

    /// Accept the answer to our pending offer.
    pub async fn accept_answer(&self, sdp: &str) -> anyhow::Result<()> {
        let answer = SdpAnswer::from_sdp_string(sdp).context("parsing the SFU answer")?;
        self.run(move |c| c.accept_answer(answer)).await
    }

    /// Forget a pending offer (e.g. after the remote rejected it).
    pub async fn drop_pending_offer(&self) -> anyhow::Result<()> {
        self.run(|c| {
            c.drop_pending_offer();
            Ok(())
        })
        .await
    }

    /// Accept a remote offer; returns our answer SDP.
    pub async fn accept_offer(&self, sdp: &str) -> anyhow::Result<String> {
        let offer = SdpOffer::from_sdp_string(sdp).context("parsing the SFU offer")?;
        self.run(move |c| c.accept_offer(offer)).await
    }

    /// stop_media (stop = true) or set_direction(Inactive) for these mids, apply() → offer.
    pub async fn close_offer<S: AsRef<str>>(
        &self,
        mids_: &[S],
        stop: bool,
    ) -> anyhow::Result<String> {
        let m = mids(mids_);
        self.run(move |c| c.close_offer(&m, stop)).await
    }

    // ---- media --------------------------------------------------------------------------------

    /// Start the synthetic source on these (sending) mids; frames go out once connected.
    pub async fn start_sending<S: AsRef<str>>(&self, mids_: &[S]) -> anyhow::Result<()> {
        let m = mids(mids_);
        self.run(move |c| c.start_sending(&m, Instant::now())).await
    }

    /// Stop the synthetic source on these mids (the transport stays up).
    pub async fn stop_sending<S: AsRef<str>>(&self, mids_: &[S]) -> anyhow::Result<()> {
        let m = mids(mids_);
        self.run(move |c| {
            c.stop_sending(&m);
            Ok(())
        })
        .await
    }

    /// Stop every synthetic source.
    pub async fn stop_all_sending(&self) -> anyhow::Result<()> {
        self.run(|c| {
            c.stop_all_sending();
            Ok(())
        })
        .await
    }

    /// Period of the video sources' keyframes (default 2 s). Keyframes are also sent at the
    /// start and whenever the remote asks (PLI/FIR).
    pub async fn set_keyframe_interval(&self, interval: Duration) -> anyhow::Result<()> {
        self.run(move |c| {
            c.set_keyframe_interval(interval);
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests;
