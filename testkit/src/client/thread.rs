//! The thread driver: one std thread per client, blocking on its UDP socket with a read timeout
//! that is the core's next timer (or a short command poll). What the integration tests use:
//! nothing of the client crosses an `.await`.

use std::cell::RefCell;
use std::io::ErrorKind;
use std::net::UdpSocket;
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
        socket: UdpSocket,
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

/// Binds a new socket on the same IP for a core that asked to move (see `Core::request_rebind`).
fn rebind(core: &mut Core, socket: &RefCell<UdpSocket>) -> anyhow::Result<()> {
    let ip = socket.borrow().local_addr()?.ip();
    let fresh = UdpSocket::bind((ip, 0)).context("binding the new client socket")?;
    core.moved_to(fresh.local_addr()?)?;
    *socket.borrow_mut() = fresh;
    Ok(())
}

fn run(mut core: Core, socket: UdpSocket, jobs: mpsc::Receiver<Job>, lifetime: Duration) {
    let deadline = Instant::now() + lifetime;
    let mut buf = vec![0u8; RECV_BUF];
    // In a cell: a job may ask for a new socket while `send` holds on to this one.
    let socket = RefCell::new(socket);
    let mut send = |dest, bytes: &[u8]| socket.borrow().send_to(bytes, dest).map(|_| ());
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
            let received = {
                let socket = socket.borrow();
                socket.set_read_timeout(Some(wait))?;
                socket.recv_from(&mut buf)
            };
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
