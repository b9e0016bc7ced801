//! The node's engine workers: N engines, each on its own OS thread with a current-thread tokio
//! runtime (`runtime::run`) and its own media socket (`--media` for the first, `--worker-ports`
//! and up for the others).
//! Sessions are spread over them; [`EngineHandle`] routes every call by the session id's worker
//! byte, and a named stream's operations to the worker that holds it (`stream_table.rs`);
//! publications cross between workers over in-process relay links (`links.rs`).

mod handle;
#[cfg(any(test, feature = "test-world"))]
mod hop_bench;
mod links;
mod stream_table;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

pub use handle::{EngineHandle, PRIMARY};
#[cfg(any(test, feature = "test-world"))]
pub use hop_bench::HopBench;
pub use links::is_local;
pub use stream_table::{MoveRefused, StreamSlot};

use crate::engine::{EgressPacket, Engine, RelayIn, RelayOut};
use crate::ids::{NodeTag, SessionId};
use crate::media_tcp::{TcpFrame, TcpSender};
use crate::runtime::{self, COMMAND_QUEUE, EngineStopped, Job, OutgoingSockets};

/// Relay inputs (frames from other nodes or other workers) waiting for one worker; beyond it
/// they are dropped and counted.
pub const INPUT_QUEUE: usize = 8192;

/// Most workers a node runs: the worker index is one byte of the session id.
pub const MAX_WORKERS: usize = 64;

/// What the workers share: their loads (for placement), the placement override, the
/// in-process links, the streams' workers.
pub struct Shared {
    loads: Box<[AtomicUsize]>,
    placement: Vec<u8>,
    placed: AtomicUsize,
    fault_panic: Option<usize>,
    /// Sequence numbers of `canReply` claims over in-process links.
    claims: std::sync::atomic::AtomicU32,
    /// The in-process links between workers.
    pub links: links::Links,
    /// Which worker holds each named stream.
    pub streams: stream_table::StreamTable,
}

impl Shared {
    fn new(workers: usize, placement: Vec<u8>, fault_panic: Option<usize>) -> Shared {
        Shared {
            loads: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            placement,
            placed: AtomicUsize::new(0),
            fault_panic,
            claims: std::sync::atomic::AtomicU32::new(1),
            links: links::Links::new(workers),
            streams: stream_table::StreamTable::default(),
        }
    }

    fn place(&self) -> usize {
        let n = self.loads.len();
        let k = self.placed.fetch_add(1, Ordering::Relaxed);
        let forced = self
            .placement
            .get(k)
            .map(|w| usize::from(*w))
            .filter(|w| *w < n);
        let w = forced.unwrap_or_else(|| {
            (0..n)
                .min_by_key(|i| (self.loads[*i].load(Ordering::Relaxed), *i))
                .unwrap_or(PRIMARY)
        });
        // Counted now: the worker's own figure arrives after its turn, and the next session
        // placed meanwhile must see this one.
        if let Some(l) = self.loads.get(w) {
            l.fetch_add(1, Ordering::Relaxed);
        }
        w
    }

    fn next_claim(&self) -> u32 {
        self.claims.fetch_add(1, Ordering::Relaxed)
    }

    fn loads(&self) -> Vec<usize> {
        self.loads
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .collect()
    }
}

/// One worker to start: its engine and its media transports.
pub struct WorkerSpec {
    /// The engine (its `EngineConfig::worker` is its index).
    pub engine: Engine,
    /// Its media socket, not yet registered with a runtime (its thread's runtime does that).
    pub socket: std::net::UdpSocket,
    /// With ICE-TCP: its listener's writers and received frames.
    pub tcp: Option<(TcpSender, mpsc::Receiver<TcpFrame>)>,
}

/// Settings of the worker set.
pub struct WorkersConfig {
    /// The node's tag (routing: ids of other nodes go to the primary worker).
    pub tag: NodeTag,
    /// The first placements (new Calls and room sessions, new streams) go to these workers, in
    /// order (tests force placement).
    pub placement: Vec<u8>,
    /// Fault injection for tests: this worker panics when a new session is placed on it (not at
    /// node-wide sweeps, which run from the start and would race the test's first look).
    pub fault_panic: Option<usize>,
}

/// The running workers.
pub struct Workers {
    handle: EngineHandle,
    tasks: Vec<AbortHandle>,
    threads: Vec<std::thread::JoinHandle<()>>,
    failed: watch::Receiver<Option<usize>>,
}

impl Workers {
    /// Starts one thread per spec. Every worker sends relay outputs for other nodes to
    /// `to_relay`; the returned sender is the primary's relay input, for the cluster relay
    /// (relayed upstreams live on the primary).
    pub async fn start(
        specs: Vec<WorkerSpec>,
        cfg: WorkersConfig,
        to_relay: mpsc::Sender<RelayOut>,
        egress: Option<mpsc::Sender<EgressPacket>>,
    ) -> anyhow::Result<(Workers, mpsc::Sender<RelayIn>)> {
        let n = specs.len();
        anyhow::ensure!(
            (1..=MAX_WORKERS).contains(&n),
            "between 1 and {MAX_WORKERS} engine workers, not {n}"
        );
        let shared = Arc::new(Shared::new(n, cfg.placement, cfg.fault_panic));
        let (job_txs, job_rxs): (Vec<_>, Vec<_>) =
            (0..n).map(|_| mpsc::channel::<Job>(COMMAND_QUEUE)).unzip();
        let (in_txs, in_rxs): (Vec<_>, Vec<_>) = (0..n)
            .map(|_| mpsc::channel::<RelayIn>(INPUT_QUEUE))
            .unzip();
        let inputs: Arc<[mpsc::Sender<RelayIn>]> = in_txs.into();
        let commands: Arc<[mpsc::WeakSender<Job>]> =
            job_txs.iter().map(|t| t.downgrade()).collect();
        let outgoing = Arc::new(OutgoingSockets::default());
        let (failed_tx, failed) = watch::channel(None);
        let failed_tx = Arc::new(failed_tx);
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        let mut tasks = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for (index, ((spec, rx), from_relay)) in
            specs.into_iter().zip(job_rxs).zip(in_rxs).enumerate()
        {
            let router = links::Router {
                index,
                shared: shared.clone(),
                inputs: inputs.clone(),
                commands: commands.clone(),
            };
            let pipes = runtime::RelayPipes {
                from_relay,
                to_relay: to_relay.clone(),
            };
            let (ready_tx, ready_rx) = oneshot::channel();
            let (egress, outgoing, failed_tx, dispatch) = (
                egress.clone(),
                outgoing.clone(),
                failed_tx.clone(),
                dispatch.clone(),
            );
            let thread = std::thread::Builder::new()
                .name(format!("engine-{index}"))
                .spawn(move || {
                    let _log = tracing::dispatcher::set_default(&dispatch);
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready_tx.send(Err(anyhow::Error::from(e)));
                            return;
                        }
                    };
                    let ended = rt.block_on(async move {
                        let socket = match tokio::net::UdpSocket::from_std(spec.socket) {
                            Ok(s) => s,
                            Err(e) => {
                                let _ = ready_tx.send(Err(anyhow::Error::from(e)));
                                return None;
                            }
                        };
                        let media = runtime::MediaIo {
                            socket,
                            tcp: spec.tcp,
                        };
                        let task = tokio::spawn(runtime::run(
                            spec.engine,
                            media,
                            rx,
                            pipes,
                            egress,
                            outgoing,
                            router,
                        ));
                        let _ = ready_tx.send(Ok(task.abort_handle()));
                        Some(task.await)
                    });
                    if let Some(Err(e)) = ended
                        && e.is_panic()
                    {
                        tracing::error!(
                            worker = index,
                            "engine worker panicked: the node is unhealthy and exits"
                        );
                        failed_tx.send_replace(Some(index));
                    }
                })
                .with_context(|| format!("starting engine worker {index}"))?;
            threads.push(thread);
            let task = ready_rx
                .await
                .map_err(|_| anyhow::anyhow!("engine worker {index} ended while starting"))?
                .with_context(|| format!("starting engine worker {index}"))?;
            tasks.push(task);
        }
        let primary_in = inputs
            .first()
            .cloned()
            .context("no engine worker to take relay input")?;
        let handle = EngineHandle::new(job_txs.into(), inputs, cfg.tag, outgoing, shared);
        Ok((
            Workers {
                handle,
                tasks,
                threads,
                failed,
            },
            primary_in,
        ))
    }

    /// How the API, the relay and the cascades reach the engines.
    pub fn handle(&self) -> &EngineHandle {
        &self.handle
    }

    /// Each worker's task, for liveness (finished: that worker has stopped).
    pub fn abort_handles(&self) -> Vec<AbortHandle> {
        self.tasks.clone()
    }

    /// Resolves when a worker has panicked (its index): the binary exits non-zero then.
    pub fn failed(&self) -> watch::Receiver<Option<usize>> {
        self.failed.clone()
    }

    /// Stops every worker without waiting (their sockets close as their threads end).
    pub fn abort(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Stops every worker and waits until their threads (and sockets) are gone.
    pub async fn shutdown(&mut self) {
        self.abort();
        let threads = std::mem::take(&mut self.threads);
        let joined =
            tokio::task::spawn_blocking(move || threads.into_iter().all(|t| t.join().is_ok()))
                .await;
        if !joined.unwrap_or(false) {
            tracing::warn!("an engine worker thread ended in a panic");
        }
    }
}

/// Runs a change that spans two workers to its end, even when its caller goes (a client that
/// hangs up mid-request drops the handler's future). Cancelled half-way, a link would be left
/// with the publisher feeding it and nothing reading or ever closing it.
pub(crate) async fn to_the_end<R: Send + 'static>(
    change: impl std::future::Future<Output = Result<R, EngineStopped>> + Send + 'static,
) -> Result<R, EngineStopped> {
    // Dropping a JoinHandle detaches its task, never aborts it.
    tokio::spawn(change).await.unwrap_or(Err(EngineStopped))
}

/// How often, and how many times, a link to a track with no media yet asks again (3 s).
const MEDIA_WAIT_STEP: std::time::Duration = std::time::Duration::from_millis(20);
const MEDIA_WAIT_TRIES: u32 = 150;

impl EngineHandle {
    /// Makes `(session, track)` of `app`, held by another worker of this node, available on
    /// worker `to` as a relayed publication fed by an in-process link (see `links.rs`). The
    /// holder is the session's worker, or the primary for a track of another node (relayed
    /// here). Leaves it alone when it is already on `to`, or not found (the engine then answers
    /// `not_found_track_error` as for any unknown track).
    pub async fn link_track(
        &self,
        app: &str,
        session: SessionId,
        track: &str,
        to: usize,
    ) -> Result<(), EngineStopped> {
        if self.worker_of(session) == to {
            return Ok(());
        }
        let (me, app, track) = (self.clone(), app.to_string(), track.to_string());
        to_the_end(async move { me.link_track_now(&app, session, &track, to).await }).await
    }

    async fn link_track_now(
        &self,
        app: &str,
        session: SessionId,
        track: &str,
        to: usize,
    ) -> Result<(), EngineStopped> {
        let from = self.worker_of(session);
        if from == to || to >= self.worker_count() {
            return Ok(());
        }
        // A track published a moment ago has no codec until its first frame: a pull right
        // after the publisher connects waits for it (bounded), as a pull on the same worker
        // would simply attach and wait. Waited for before the node-wide setup lock is taken, so
        // a publisher that sends nothing delays only the pulls of its own tracks.
        for _ in 0..MEDIA_WAIT_TRIES {
            let (a, t) = (app.to_string(), track.to_string());
            if !self
                .call_on(from, move |e, _| {
                    e.publication_awaits_media(&a, session, &t)
                })
                .await?
            {
                break;
            }
            tokio::time::sleep(MEDIA_WAIT_STEP).await;
        }
        let shared = self.shared().clone();
        let _serial = shared.links.setup.lock().await;
        let (a, t) = (app.to_string(), track.to_string());
        if self
            .call_on(to, move |e, _| e.has_publication(&a, session, &t))
            .await?
        {
            return Ok(());
        }
        let (down, up) = shared.links.open(from, to);
        let (a, t) = (app.to_string(), track.to_string());
        let info = self
            .call_on(from, move |e, _| e.relay_subscribe(down, &a, session, &t))
            .await;
        let Ok(Ok(info)) = info else {
            shared.links.close_up(up);
            return info.map(|_| ());
        };
        let (a, t) = (app.to_string(), track.to_string());
        let added = self
            .call_on(to, move |e, now: Instant| {
                e.add_relay_publication(&a, session, &t, up, info, now)
            })
            .await;
        if !matches!(added, Ok(Ok(()))) {
            shared.links.close_up(up);
            let _ = self
                .call_on(from, move |e, now| e.relay_unsubscribe(down, now))
                .await;
        }
        added.map(|_| ())
    }

    /// Makes DataChannel `name` of `session` (held by another worker of this node, or relayed
    /// from another node onto the primary) available on worker `to` through an in-process
    /// channel link. Leaves it alone when it is already there or not found (the engine then
    /// answers the item `not_found_track_error`).
    pub async fn link_channel(
        &self,
        app: &str,
        session: SessionId,
        name: &str,
        to: usize,
    ) -> Result<(), EngineStopped> {
        if self.worker_of(session) == to {
            return Ok(());
        }
        let (me, app, name) = (self.clone(), app.to_string(), name.to_string());
        to_the_end(async move { me.link_channel_now(&app, session, &name, to).await }).await
    }

    async fn link_channel_now(
        &self,
        app: &str,
        session: SessionId,
        name: &str,
        to: usize,
    ) -> Result<(), EngineStopped> {
        let from = self.worker_of(session);
        if from == to || to >= self.worker_count() {
            return Ok(());
        }
        let shared = self.shared().clone();
        let _serial = shared.links.setup.lock().await;
        let n = name.to_string();
        if self
            .call_on(to, move |e, _| e.has_relay_channel(session, &n))
            .await?
        {
            return Ok(());
        }
        let (down, up) = shared.links.open_channel(from, to);
        let (a, n) = (app.to_string(), name.to_string());
        let subscribed = self
            .call_on(from, move |e, _| {
                e.relay_channel_subscribe(&a, session, &n, down)
            })
            .await;
        if !matches!(subscribed, Ok(Ok(()))) {
            shared.links.close_channel_up(up);
            return subscribed.map(|_| ());
        }
        let n = name.to_string();
        self.call_on(to, move |e, _| e.add_relay_channel(session, &n, up))
            .await
    }

    /// Claims the `canReply` grant of DataChannel `name` of `session` for worker `to`, which
    /// receives it over an in-process link: the publishing worker decides, as the publisher's
    /// node does across the relay. True when `to` holds the grant (or the channel is its own).
    pub async fn claim_channel_reply(&self, session: SessionId, name: &str, to: usize) -> bool {
        if self.worker_of(session) == to {
            return true;
        }
        let n = name.to_string();
        let Ok(Some((up, granted))) = self
            .call_on(to, move |e, _| e.channel_reply_grant(session, &n))
            .await
        else {
            return false;
        };
        if granted {
            return true;
        }
        let Some((from, down)) = self.shared().links.channel_source(up) else {
            return false;
        };
        let seq = self.shared().next_claim();
        let claimed = self
            .call_on(from, move |e, _| e.relay_channel_claim(down, seq, true))
            .await;
        if !matches!(claimed, Ok(Some(true))) {
            return false;
        }
        self.call_on(to, move |e, _| e.set_channel_reply_grant(up, seq))
            .await
            .unwrap_or(false)
    }

    /// The in-process links open now, and the hop's figures.
    pub fn links(&self) -> &links::Links {
        &self.shared().links
    }
}
