//! How the API, the relay and the cascades reach the engines: closures run on one worker's
//! task, routed by session id, or on every worker for node-wide views.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::Shared;
use crate::engine::{EgressLabels, Engine, OpError, RelayIn};
use crate::ids::{NodeTag, SessionId};
use crate::runtime::{EngineStopped, Job, OutgoingSockets};

/// The worker that holds what is node-wide: relayed upstreams from other nodes, streams (WHIP,
/// WHEP), rooms' WebSocket sessions and cascades.
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

    /// Runs `f` on the primary worker (node-wide state: streams, cascades, relayed upstreams).
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
        let fault = self.shared.fault_panic == Some(worker);
        let job: Job = Box::new(move |engine, now| {
            // Fault injection for tests (`--fault-panic-worker`): a worker that dies.
            assert!(!fault, "fault injection: engine worker {worker} panics");
            // The caller may have gone (client disconnected); the result is then dropped.
            let _ = reply_tx.send(f(engine, now));
        });
        tx.send(job).await.map_err(|_| EngineStopped)?;
        reply_rx.await.map_err(|_| EngineStopped)
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

    /// The worker a new Calls session goes to: the next of `--worker-placement` while it lasts
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
}
