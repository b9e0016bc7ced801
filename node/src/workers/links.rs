//! In-process relay links between the node's engine workers. A publication on worker A with
//! subscribers on worker B is registered on B as a relayed publication (`Source::Relay(up)`)
//! and gets a relay sink on A (`Sink::Relay(down)`), exactly as for another node: each frame
//! crosses once per worker (its data is an `Arc`, not copied), B fans it out to its own
//! subscribers and keeps its own keyframe cache, and B's keyframe requests go back to A. Only
//! the carrier differs: a bounded queue into B's loop instead of a QUIC datagram.
//! DataChannels cross the same way (the engine's channel relay: messages A→B, `canReply`
//! replies B→A, claims of the reply grant as calls on A).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::engine::{DcLinkId, Engine, RelayIn, RelayOut};
use crate::ids::{DownId, UpId};
use crate::runtime::{Job, WorkerLinks};

/// Relay ids of in-process links have this bit set, so an engine output tells by its id where
/// it goes.
const LOCAL_BIT: u64 = crate::ids::IN_PROCESS_BIT;

/// Whether a relay id belongs to an in-process link.
pub fn is_local(id: u64) -> bool {
    id & LOCAL_BIT != 0
}

/// The links between workers, in both directions.
#[derive(Default)]
struct Table {
    /// A sink on the publishing worker → the subscribing worker and its upstream id.
    downs: HashMap<DownId, (usize, UpId)>,
    /// An upstream on the subscribing worker → the publishing worker and its sink id.
    ups: HashMap<UpId, (usize, DownId)>,
    /// The same for DataChannel links.
    dc_downs: HashMap<DcLinkId, (usize, DcLinkId)>,
    dc_ups: HashMap<DcLinkId, (usize, DcLinkId)>,
    /// Sinks whose last frame a full queue dropped: the next thing across is a gap.
    gaps: std::collections::HashSet<DownId>,
}

/// Per-worker figures of the hop, for `/metrics` (`worker` label).
pub struct HopFigures {
    /// Frames this worker handed to another worker.
    pub frames: Box<[AtomicU64]>,
    /// Frames this worker dropped because the other worker's queue was full.
    pub drops: Box<[AtomicU64]>,
}

/// Every in-process link of one node.
pub struct Links {
    next: AtomicU64,
    table: Mutex<Table>,
    /// Serializes link set-ups so two pulls of one track on one worker make one link.
    pub(super) setup: tokio::sync::Mutex<()>,
    /// Frames and drops of the hop, by sending worker.
    pub figures: HopFigures,
}

impl Links {
    pub(super) fn new(workers: usize) -> Links {
        let zeros = || (0..workers).map(|_| AtomicU64::new(0)).collect();
        Links {
            next: AtomicU64::new(1),
            table: Mutex::default(),
            setup: tokio::sync::Mutex::new(()),
            figures: HopFigures {
                frames: zeros(),
                drops: zeros(),
            },
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh pair of ids for a link from worker `from` to worker `to`, registered at once so
    /// that no frame sent after the publishing worker accepts the sink is lost.
    pub(super) fn open(&self, from: usize, to: usize) -> (DownId, UpId) {
        let n = self.next.fetch_add(2, Ordering::Relaxed);
        let (down, up) = (DownId(LOCAL_BIT | n), UpId(LOCAL_BIT | (n + 1)));
        let mut t = self.lock();
        t.downs.insert(down, (to, up));
        t.ups.insert(up, (from, down));
        (down, up)
    }

    /// A fresh pair of ids for a DataChannel link from worker `from` to worker `to`.
    pub(super) fn open_channel(&self, from: usize, to: usize) -> (DcLinkId, DcLinkId) {
        let n = self.next.fetch_add(2, Ordering::Relaxed);
        let (down, up) = (LOCAL_BIT | n, LOCAL_BIT | (n + 1));
        let mut t = self.lock();
        t.dc_downs.insert(down, (to, up));
        t.dc_ups.insert(up, (from, down));
        (down, up)
    }

    fn close_channel_down(&self, down: DcLinkId) -> Option<(usize, DcLinkId)> {
        let mut t = self.lock();
        let (to, up) = t.dc_downs.remove(&down)?;
        t.dc_ups.remove(&up);
        Some((to, up))
    }

    pub(super) fn close_channel_up(&self, up: DcLinkId) -> Option<(usize, DcLinkId)> {
        let mut t = self.lock();
        let (from, down) = t.dc_ups.remove(&up)?;
        t.dc_downs.remove(&down);
        Some((from, down))
    }

    /// The publishing worker and its sink id of DataChannel upstream `up`.
    pub(super) fn channel_source(&self, up: DcLinkId) -> Option<(usize, DcLinkId)> {
        self.lock().dc_ups.get(&up).copied()
    }

    /// Forgets a link (by either end); the other end's worker and id.
    fn close_down(&self, down: DownId) -> Option<(usize, UpId)> {
        let mut t = self.lock();
        let (to, up) = t.downs.remove(&down)?;
        t.ups.remove(&up);
        t.gaps.remove(&down);
        Some((to, up))
    }

    pub(super) fn close_up(&self, up: UpId) -> Option<(usize, DownId)> {
        let mut t = self.lock();
        let (from, down) = t.ups.remove(&up)?;
        t.downs.remove(&down);
        t.gaps.remove(&down);
        Some((from, down))
    }

    /// How many links are open (for tests and the admin view).
    pub fn count(&self) -> usize {
        self.lock().downs.len()
    }
}

/// One worker's side of the links: what its loop does with relay outputs of in-process links.
pub(super) struct Router {
    pub(super) index: usize,
    pub(super) shared: std::sync::Arc<super::Shared>,
    /// Every worker's relay input queue (bounded): frames go straight into the other loop.
    pub(super) inputs: std::sync::Arc<[mpsc::Sender<RelayIn>]>,
    /// Every worker's command queue, weakly: a worker's loop must not keep itself alive.
    pub(super) commands: std::sync::Arc<[mpsc::WeakSender<Job>]>,
}

impl Router {
    /// Runs `job` on worker `worker` without waiting for it (a task on this worker's runtime
    /// waits for room in that worker's command queue): link control is rare and must not be
    /// lost, but must never stall this loop.
    fn control(&self, worker: usize, job: impl FnOnce(&mut Engine, Instant) + Send + 'static) {
        let Some(tx) = self.commands.get(worker).and_then(|w| w.upgrade()) else {
            return;
        };
        tokio::spawn(async move {
            let _ = tx.send(Box::new(job)).await;
        });
    }

    /// Hands `input` to worker `worker`'s loop; a full queue drops it (counted). True if sent.
    fn input(&self, worker: usize, input: RelayIn) -> bool {
        let sent = self
            .inputs
            .get(worker)
            .is_some_and(|tx| tx.try_send(input).is_ok());
        let counter = if sent {
            &self.shared.links.figures.frames
        } else {
            &self.shared.links.figures.drops
        };
        Self::count(counter, self.index);
        sent
    }

    fn count(counter: &[AtomicU64], index: usize) {
        if let Some(c) = counter.get(index) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl WorkerLinks for Router {
    fn route(&self, out: RelayOut) -> Option<RelayOut> {
        let links = &self.shared.links;
        match out {
            RelayOut::Frame { down, frame, .. } if is_local(down.0) => {
                // A full queue: the other worker is behind. Drop, never wait; but the frames
                // after a dropped one cannot be decoded, so the other worker hears of the gap
                // first (it withholds video until a keyframe and asks for one).
                let (target, gap) = {
                    let t = links.lock();
                    (t.downs.get(&down).copied(), t.gaps.contains(&down))
                };
                let Some((to, up)) = target else {
                    Self::count(&links.figures.drops, self.index);
                    return None;
                };
                if gap {
                    if !self.input(to, RelayIn::Gap { up }) {
                        return None;
                    }
                    links.lock().gaps.remove(&down);
                }
                if !self.input(to, RelayIn::Frame { up, frame }) {
                    links.lock().gaps.insert(down);
                }
                None
            }
            RelayOut::Ended { down } if is_local(down.0) => {
                if let Some((to, up)) = links.close_down(down) {
                    self.control(to, move |e, _| e.end_relay_publication(up));
                }
                None
            }
            RelayOut::KeyframeRequest { up } if is_local(up.0) => {
                let source = links.lock().ups.get(&up).copied();
                if let Some((from, down)) = source {
                    self.control(from, move |e, now| e.relay_keyframe_request(down, now));
                }
                None
            }
            RelayOut::LayerKeyframeRequest { up, rid } if is_local(up.0) => {
                let source = links.lock().ups.get(&up).copied();
                if let Some((from, down)) = source {
                    self.control(from, move |e, now| {
                        e.relay_layer_keyframe_request(down, rid, now)
                    });
                }
                None
            }
            RelayOut::SetLayers { up, layers } if is_local(up.0) => {
                let source = links.lock().ups.get(&up).copied();
                if let Some((from, down)) = source {
                    self.control(from, move |e, now| e.relay_set_layers(down, layers, now));
                }
                None
            }
            RelayOut::Layers { down, layers } if is_local(down.0) => {
                let target = links.lock().downs.get(&down).copied();
                if let Some((to, up)) = target {
                    self.control(to, move |e, now| e.relay_layers(up, layers, now));
                }
                None
            }
            RelayOut::Unused { up } if is_local(up.0) => {
                if let Some((from, down)) = links.close_up(up) {
                    self.control(from, move |e, now| e.relay_unsubscribe(down, now));
                }
                None
            }
            RelayOut::ChannelMessage { down, binary, data } if is_local(down) => {
                let target = links.lock().dc_downs.get(&down).copied();
                if let Some((to, up)) = target {
                    let data = data.to_vec();
                    self.input(to, RelayIn::ChannelMessage { up, binary, data });
                }
                None
            }
            RelayOut::ChannelEnded { down } if is_local(down) => {
                if let Some((to, up)) = links.close_channel_down(down) {
                    self.control(to, move |e, _| e.end_relay_channel(up));
                }
                None
            }
            RelayOut::ChannelUnused { up } if is_local(up) => {
                if let Some((from, down)) = links.close_channel_up(up) {
                    self.control(from, move |e, _| e.relay_channel_unsubscribe(down));
                }
                None
            }
            RelayOut::ChannelReleaseReply { up, seq } if is_local(up) => {
                if let Some((from, down)) = links.channel_source(up) {
                    self.control(from, move |e, _| {
                        e.relay_channel_claim(down, seq, false);
                    });
                }
                None
            }
            RelayOut::ChannelReply { up, binary, data } if is_local(up) => {
                if let Some((from, down)) = links.channel_source(up) {
                    let data = data.to_vec();
                    self.input(from, RelayIn::ChannelReply { down, binary, data });
                }
                None
            }
            other => Some(other),
        }
    }

    fn turn_done(&self, engine: &mut Engine) {
        let mine = engine.session_count();
        if let Some(load) = self.shared.loads.get(self.index) {
            load.store(mine, Ordering::Relaxed);
        }
        // The node's cap counts every worker's sessions (as of their last turns).
        let all: usize = self
            .shared
            .loads
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .sum();
        engine.set_sessions_elsewhere(all.saturating_sub(mine));
    }
}
