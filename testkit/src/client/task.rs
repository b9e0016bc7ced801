//! The tokio driver: one task per client, `select!`ing over its UDP socket, the core's next
//! timer and the command queue. Scales to hundreds of clients in one process (load generator).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::core::{Core, lock};
use super::counters::ClientStats;
use super::{COMMAND_QUEUE, Job, RECV_BUF, SubmitError};

/// Datagrams read in one wake-up before the task yields to the timer and commands.
const MAX_DATAGRAMS_PER_WAKE: usize = 64;
/// How long a dropped client's task may take to disconnect cleanly before it is aborted.
const DISCONNECT_GRACE: Duration = Duration::from_millis(200);

/// The handle of a client task. Dropping it stops the task.
pub(super) struct TaskDriver {
    jobs: Option<mpsc::Sender<Job>>,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<Mutex<ClientStats>>,
}

impl TaskDriver {
    /// Spawn on the current tokio runtime.
    pub(super) fn spawn(core: Core, socket: UdpSocket, lifetime: Duration) -> TaskDriver {
        let stats = core.stats();
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let task = tokio::spawn(run(core, socket, rx, lifetime));
        TaskDriver {
            jobs: Some(tx),
            task,
            stats,
        }
    }

    pub(super) fn submit(&self, job: Job) -> Result<(), SubmitError> {
        let jobs = self.jobs.as_ref().ok_or(SubmitError::Gone)?;
        jobs.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SubmitError::Full,
            mpsc::error::TrySendError::Closed(_) => SubmitError::Gone,
        })
    }
}

impl Drop for TaskDriver {
    fn drop(&mut self) {
        // Closing the queue ends the task at its next turn; the abort is for a task that is
        // not being polled any more (runtime shutting down).
        self.jobs.take();
        if self.task.is_finished() {
            return;
        }
        let handle = self.task.abort_handle();
        let stats = self.stats.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tokio::time::sleep(DISCONNECT_GRACE).await;
                if !lock(&stats).stopped {
                    handle.abort();
                }
            });
        } else {
            handle.abort();
        }
    }
}

/// The client task: runs until the handle is dropped, `lifetime` passes, or the `Rtc` fails.
async fn run(mut core: Core, socket: UdpSocket, mut jobs: mpsc::Receiver<Job>, lifetime: Duration) {
    let deadline = Instant::now() + lifetime;
    let mut buf = vec![0u8; RECV_BUF];
    let mut send = |dest, bytes: &[u8]| socket.try_send_to(bytes, dest).map(|_| ());
    let sleep = tokio::time::sleep_until(deadline.into());
    tokio::pin!(sleep);
    let result: anyhow::Result<()> = async {
        core.drain(Instant::now(), &mut send)?;
        // The deadline bounds the loop in time; this bounds it in count (at most one turn per
        // 10 µs of lifetime, far more than media and timers need).
        let max_turns = lifetime.as_micros() / 10 + 1_000;
        for _ in 0..max_turns {
            if Instant::now() >= deadline {
                return Ok(());
            }
            core.tick(Instant::now(), &mut send)?;
            sleep
                .as_mut()
                .reset(core.poll_timeout().min(deadline).into());
            tokio::select! {
                job = jobs.recv() => match job {
                    Some(job) => {
                        job(&mut core);
                        if core.take_rebind() {
                            // The load generator never moves; only the thread driver rebinds.
                            core.record_error("rebind is only supported by the thread driver");
                        }
                        core.drain(Instant::now(), &mut send)?;
                    }
                    None => return Ok(()),
                },
                r = socket.recv_from(&mut buf) => {
                    match r {
                        Ok((n, source)) => {
                            if let Some(bytes) = buf.get(..n) {
                                core.receive(Instant::now(), source, bytes, &mut send)?;
                            }
                        }
                        // e.g. ICMP port unreachable surfacing as ECONNREFUSED: keep going.
                        Err(e) => core.record_error(format!("recv_from: {e}")),
                    }
                    // More datagrams that are already queued, without another wake-up.
                    for _ in 0..MAX_DATAGRAMS_PER_WAKE {
                        let Ok((n, source)) = socket.try_recv_from(&mut buf) else {
                            break;
                        };
                        if let Some(bytes) = buf.get(..n) {
                            core.receive(Instant::now(), source, bytes, &mut send)?;
                        }
                    }
                }
                _ = &mut sleep => {}
            }
        }
        Ok(())
    }
    .await;
    core.finish(result, &mut send);
}
