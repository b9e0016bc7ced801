//! Every task the relay runs, its own and quinn's (endpoint and connection drivers), in one set
//! the relay owns: stopping the relay ends them all, so no link keeps forwarding and no task
//! keeps the relay socket bound after the node has stopped.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::task::{AbortHandle, JoinSet};

/// The relay's tasks; closed once the relay stops, after which nothing new runs.
pub(crate) struct Tasks {
    /// `None` once closed.
    set: Mutex<Option<JoinSet<()>>>,
}

impl Default for Tasks {
    fn default() -> Tasks {
        Tasks {
            set: Mutex::new(Some(JoinSet::new())),
        }
    }
}

impl Tasks {
    fn set(&self) -> MutexGuard<'_, Option<JoinSet<()>>> {
        self.set.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `fut` as a relay task. Ended tasks are pruned here, so the set holds only live ones
    /// (plus those ended since the last spawn) on a long-lived node. After [`Tasks::close`] the
    /// future never runs.
    pub fn spawn<F>(&self, fut: F) -> Option<AbortHandle>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut set = self.set();
        match set.as_mut() {
            Some(set) => {
                while set.try_join_next().is_some() {}
                Some(set.spawn(fut))
            }
            None => {
                drop(set);
                // quinn spawns with its endpoint locked, and dropping a driver takes that lock:
                // a task drops the future (never polling it) rather than this call.
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move { drop(fut) });
                }
                None
            }
        }
    }

    /// Refuses new tasks and aborts every running one, without waiting for them to end.
    /// Returns the aborted set, to await when the caller can wait.
    pub fn close(&self) -> Option<JoinSet<()>> {
        let mut set = self.set().take()?;
        set.abort_all();
        Some(set)
    }

    /// Awaits the tasks of a closed set (bounded: an aborted task ends at its next await).
    pub async fn join(mut set: JoinSet<()>, bound: Duration) {
        let ended =
            tokio::time::timeout(bound, async { while set.join_next().await.is_some() {} }).await;
        if ended.is_err() {
            tracing::warn!(
                left = set.len(),
                "relay tasks still running after being aborted"
            );
        }
    }
}

/// quinn's tokio runtime, except that the tasks quinn spawns (the endpoint's and each
/// connection's driver, which hold the socket) are relay tasks.
#[derive(Debug)]
pub(crate) struct TrackedRuntime {
    tasks: Arc<Tasks>,
}

impl TrackedRuntime {
    pub fn new(tasks: Arc<Tasks>) -> TrackedRuntime {
        TrackedRuntime { tasks }
    }
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks").finish_non_exhaustive()
    }
}

impl quinn::Runtime for TrackedRuntime {
    fn new_timer(&self, i: Instant) -> Pin<Box<dyn quinn::AsyncTimer>> {
        quinn::TokioRuntime.new_timer(i)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.tasks.spawn(future);
    }

    fn wrap_udp_socket(
        &self,
        t: std::net::UdpSocket,
    ) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        quinn::TokioRuntime.wrap_udp_socket(t)
    }

    fn now(&self) -> Instant {
        quinn::TokioRuntime.now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closing_ends_every_task_and_refuses_new_ones() {
        let tasks = Tasks::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        for _ in 0..3 {
            let tx = tx.clone();
            tasks.spawn(async move {
                // Holds its sender until it is aborted.
                std::future::pending::<()>().await;
                drop(tx);
            });
        }
        drop(tx);
        let set = tasks.close().expect("open before");
        Tasks::join(set, Duration::from_secs(10)).await;
        assert!(rx.recv().await.is_none(), "every task was dropped");
        assert!(tasks.close().is_none(), "closed once");

        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        assert!(
            tasks
                .spawn(async move {
                    let _ = tx.send(()).await;
                })
                .is_none()
        );
        assert!(
            rx.recv().await.is_none(),
            "a task spawned after close never runs"
        );
    }

    #[tokio::test]
    async fn ended_tasks_are_pruned() {
        let tasks = Tasks::default();
        for _ in 0..100 {
            let task = tasks.spawn(async {}).expect("open");
            // Bounded: a finished task is seen within a few yields.
            for _ in 0..1000 {
                if task.is_finished() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        let set = tasks.close().expect("open");
        assert!(set.len() <= 1, "only the last may be left: {}", set.len());
    }
}
