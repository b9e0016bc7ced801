//! How the API, the relay and the cascades reach the engines: closures run on one worker's
//! task, routed by session id, or on every worker for node-wide views.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::Shared;
use super::stream_table::{Full, MoveRefused, StreamSlot};
use crate::engine::{EgressLabels, Engine, HandOver, OpError, RelayIn};
use crate::ids::{NodeTag, SessionId};
use crate::runtime::{EngineStopped, Job, OutgoingSockets};

/// The worker that holds relayed upstreams from other nodes (and answers for ids that name no
/// worker of this node).
pub const PRIMARY: usize = 0;

/// How the API and the relay reach the engines: closures run on a worker's task, one at a time
/// per worker.
#[derive(Clone)]
pub struct EngineHandle {
    workers: Arc<[mpsc::Sender<Job>]>,
    /// Each worker's relay input queue (bounded).
    inputs: Arc<[mpsc::Sender<RelayIn>]>,
    tag: NodeTag,
    outgoing: Arc<OutgoingSockets>,
    shared: Arc<Shared>,
}

impl EngineHandle {
    pub(super) fn new(
        workers: Arc<[mpsc::Sender<Job>]>,
        inputs: Arc<[mpsc::Sender<RelayIn>]>,
        tag: NodeTag,
        outgoing: Arc<OutgoingSockets>,
        shared: Arc<Shared>,
    ) -> EngineHandle {
        EngineHandle {
            workers,
            inputs,
            tag,
            outgoing,
            shared,
        }
    }

    /// This node's tag.
    pub fn tag(&self) -> NodeTag {
        self.tag
    }

    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The sockets of cascades' outgoing sessions.
    pub fn outgoing_sockets(&self) -> &Arc<OutgoingSockets> {
        &self.outgoing
    }

    /// Hands `input` to worker `worker`'s loop without waiting; false when its queue is full
    /// (the caller counts the drop) or there is no such worker.
    pub fn relay_input(&self, worker: usize, input: RelayIn) -> bool {
        self.inputs
            .get(worker)
            .is_some_and(|tx| tx.try_send(input).is_ok())
    }

    /// How many engine workers the node runs.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// The worker that holds `session`: the one its id names when the id is this node's and
    /// names a worker it has, else the primary (which holds relayed tracks of other nodes, and
    /// answers "not found" for ids that are no session).
    pub fn worker_of(&self, session: SessionId) -> usize {
        let w = usize::from(session.worker());
        if session.node_tag() == self.tag && w < self.workers.len() {
            w
        } else {
            PRIMARY
        }
    }

    /// The worker that holds the session with this id text; the primary when it is no session
    /// id (the engine there answers not found).
    pub fn worker_of_str(&self, session: &str) -> usize {
        SessionId::parse(session).map_or(PRIMARY, |s| self.worker_of(s))
    }

    /// Runs `f` on the primary worker (relayed upstreams from other nodes).
    pub async fn call<R, F>(&self, f: F) -> Result<R, EngineStopped>
    where
        R: Send + 'static,
        F: FnOnce(&mut Engine, Instant) -> R + Send + 'static,
    {
        self.call_on(PRIMARY, f).await
    }

    /// Runs `f` on the worker that holds `session` (see [`Self::worker_of`]).
    pub async fn call_session<R, F>(&self, session: SessionId, f: F) -> Result<R, EngineStopped>
    where
        R: Send + 'static,
        F: FnOnce(&mut Engine, Instant) -> R + Send + 'static,
    {
        self.call_on(self.worker_of(session), f).await
    }

    /// Queues `f` to run on the worker that holds `session`, without waiting for it or its
    /// answer; false (the caller counts the drop) when that worker's queue is full. For what a
    /// peer may send many of: it costs a place in a bounded queue, never a task.
    pub fn tell_session<F>(&self, session: SessionId, f: F) -> bool
    where
        F: FnOnce(&mut Engine, Instant) + Send + 'static,
    {
        self.tell_on(self.worker_of(session), f)
    }

    /// [`Self::tell_session`] on the primary worker (relayed upstreams from other nodes).
    pub fn tell<F>(&self, f: F) -> bool
    where
        F: FnOnce(&mut Engine, Instant) + Send + 'static,
    {
        self.tell_on(PRIMARY, f)
    }

    fn tell_on<F>(&self, worker: usize, f: F) -> bool
    where
        F: FnOnce(&mut Engine, Instant) + Send + 'static,
    {
        let job: Job = Box::new(f);
        self.workers
            .get(worker)
            .or_else(|| self.workers.first())
            .is_some_and(|tx| tx.try_send(job).is_ok())
    }

    /// Runs `f` on worker `worker` (the primary when there is no such worker).
    pub async fn call_on<R, F>(&self, worker: usize, f: F) -> Result<R, EngineStopped>
    where
        R: Send + 'static,
        F: FnOnce(&mut Engine, Instant) -> R + Send + 'static,
    {
        let tx = self
            .workers
            .get(worker)
            .or_else(|| self.workers.first())
            .ok_or(EngineStopped)?;
        let (reply_tx, reply_rx) = oneshot::channel();
        let job: Job = Box::new(move |engine, now| {
            // The caller may have gone (client disconnected); the result is then dropped.
            let _ = reply_tx.send(f(engine, now));
        });
        tx.send(job).await.map_err(|_| EngineStopped)?;
        reply_rx.await.map_err(|_| EngineStopped)
    }

    /// Runs `f`, which creates a session, on `worker` (from [`Self::place`]).
    pub async fn call_placed<R, F>(&self, worker: usize, f: F) -> Result<R, EngineStopped>
    where
        R: Send + 'static,
        F: FnOnce(&mut Engine, Instant) -> R + Send + 'static,
    {
        let fault = self.shared.fault_panic == Some(worker);
        self.call_on(worker, move |e, now| {
            // Fault injection for tests (`--fault-panic-worker`): a worker that dies.
            assert!(!fault, "fault injection: engine worker {worker} panics");
            f(e, now)
        })
        .await
    }

    /// Runs `f` on every worker, one after another; the answers in worker order.
    pub async fn call_all<R, F>(&self, f: F) -> Result<Vec<R>, EngineStopped>
    where
        R: Send + 'static,
        F: FnOnce(&mut Engine, Instant) -> R + Send + Clone + 'static,
    {
        let mut out = Vec::with_capacity(self.workers.len());
        for w in 0..self.workers.len() {
            out.push(self.call_on(w, f.clone()).await?);
        }
        Ok(out)
    }

    /// The app's sessions on every worker, as its quota (`--max-sessions-per-app`) counts them.
    pub async fn app_sessions(&self, app: &str) -> Result<usize, EngineStopped> {
        let a = app.to_string();
        let counts = self.call_all(move |e, _| e.app_session_count(&a)).await?;
        Ok(counts.into_iter().sum())
    }

    /// The worker a new Calls or room session (or a new stream) goes to: the next of
    /// `--worker-placement` while it lasts
    /// (tests force placement with it), else the one holding the fewest sessions (ties: the
    /// lowest index).
    pub fn place(&self) -> usize {
        self.shared.place()
    }

    /// Sessions each worker held after its last turn.
    pub fn loads(&self) -> Vec<usize> {
        self.shared.loads()
    }

    /// Marks `session` (held by this node) so that every Opus payload it publishes goes to the
    /// audio egress under `labels`, or (`None`) stops that. Refused when the node has no
    /// `--nats` (`Unavailable`) or does not hold the session.
    pub async fn set_egress(
        &self,
        session: SessionId,
        labels: Option<EgressLabels>,
    ) -> Result<Result<(), OpError>, EngineStopped> {
        self.call_session(session, move |e, _| e.set_egress(session, labels))
            .await
    }

    /// The worker of stream `app`/`stream`, held until the slot is dropped; a stream no worker
    /// has yet goes to the least-loaded one (or the next of `--worker-placement`). When the
    /// node-wide table is full, stale entries are pruned first; still full: `Unavailable`.
    pub async fn stream_slot(&self, app: &str, stream: &str) -> Result<StreamSlot, OpError> {
        let shared = self.shared.clone();
        self.stream_slot_with(app, stream, move || shared.place())
            .await
    }

    /// [`Self::stream_slot`], a stream no worker has yet going to `worker` (a bind: the bound
    /// session's worker).
    pub async fn stream_slot_on(
        &self,
        app: &str,
        stream: &str,
        worker: usize,
    ) -> Result<StreamSlot, OpError> {
        self.stream_slot_with(app, stream, move || worker).await
    }

    async fn stream_slot_with(
        &self,
        app: &str,
        stream: &str,
        place: impl Fn() -> usize,
    ) -> Result<StreamSlot, OpError> {
        let full = || OpError::Unavailable("this node holds its maximum number of streams".into());
        let worker = match self.shared.streams.acquire(app, stream, &place) {
            Ok(w) => w,
            Err(Full) => {
                self.prune_streams().await.map_err(|_| full())?;
                self.shared
                    .streams
                    .acquire(app, stream, &place)
                    .map_err(|Full| full())?
            }
        };
        Ok(StreamSlot::new(self.shared.clone(), app, stream, worker))
    }

    /// The worker of an existing stream, held until the slot is dropped; `None` when no worker
    /// holds it (nor may: streams are made through [`Self::stream_slot`]).
    pub fn find_stream(&self, app: &str, stream: &str) -> Option<StreamSlot> {
        let worker = self.shared.streams.find(app, stream)?;
        Some(StreamSlot::new(self.shared.clone(), app, stream, worker))
    }

    /// Drops the stream table's entries whose stream is gone from its worker, on each worker
    /// in turn (see `stream_table.rs` for why this is safe). Returns how many went.
    pub async fn prune_streams(&self) -> Result<usize, EngineStopped> {
        let mut pruned = 0;
        for w in 0..self.workers.len() {
            let shared = self.shared.clone();
            pruned += self
                .call_on(w, move |e, _| {
                    shared.streams.prune(w, |a, s| e.stream_exists(a, s))
                })
                .await?;
        }
        Ok(pruned)
    }

    /// Moves the slot's stream to worker `to`, when it holds no session there and no other
    /// operation on it is in flight (the bind of a session held by `to`).
    pub async fn move_stream(
        &self,
        slot: &mut StreamSlot,
        to: usize,
    ) -> Result<Result<(), MoveRefused>, EngineStopped> {
        let from = slot.worker();
        if from == to {
            return Ok(Ok(()));
        }
        let me = self.clone();
        let (app, stream) = (slot.app().to_string(), slot.stream().to_string());
        // Handed over by one worker and taken over by the other, or neither: to its end.
        let moved = super::to_the_end(async move {
            let shared = me.shared.clone();
            let (a, s) = (app.clone(), stream.clone());
            let handed = me
                .call_on(from, move |e, _| {
                    shared
                        .streams
                        .repoint(&a, &s, from, to, || match e.stream_hand_over(&a, &s) {
                            HandOver::InUse => None,
                            h => Some(h),
                        })
                })
                .await?;
            let handed = match handed {
                Ok(h) => h,
                Err(r) => return Ok(Err(r)),
            };
            me.call_on(to, move |e, _| e.stream_take_over(&app, &stream, handed))
                .await?;
            Ok(Ok(()))
        })
        .await?;
        if moved.is_ok() {
            slot.set_worker(to);
        }
        Ok(moved)
    }

    /// Entries in the node-wide stream table.
    pub fn stream_entries(&self) -> usize {
        self.shared.streams.len()
    }
}
