//! The downstream table: tracks this node sends over links other nodes dialed. The task that
//! sends frames (`outputs.rs`) owns it and reads it for each frame without a lock. `serve.rs`
//! changes it over one bounded command queue ([`DOWN_QUEUE`]); every command waits for room,
//! none is dropped (they are per subscription, not per frame). The admin view, figures and
//! gossiped counts read the snapshot the task publishes on a `watch` after each change.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::sync::{mpsc, oneshot, watch};
use trackmesh_relay_proto::control::{ControlMsg, SubId};

use super::serve::Served;
use crate::ids::{DownId, NodeId, SessionId};

/// Changes to the downstream table waiting for the task that owns it. Senders wait for room:
/// an insert is answered once it is in the table, a remove is never lost.
pub const DOWN_QUEUE: usize = 1024;

/// Commands one pass of the owning task takes before it publishes the snapshot, so a burst of
/// changes costs one snapshot and frames are not held behind a long burst.
pub const DOWN_BATCH: usize = 256;

/// A downstream: a track this node sends over a link another node dialed.
pub(crate) struct Down {
    pub conn: quinn::Connection,
    pub sub: SubId,
    pub peer: NodeId,
    /// The serving link's task, told when the engine ends this downstream (it sends
    /// `TrackEnded`).
    pub ended: mpsc::Sender<Served>,
    /// The serving link's control queue, for the layer announcements the engine makes.
    pub control: mpsc::Sender<ControlMsg>,
    pub session: SessionId,
    pub track: String,
    pub frames: Arc<AtomicU64>,
}

/// What the snapshot shows of a downstream (no connection: a snapshot must not keep a link
/// open).
pub(crate) struct DownView {
    pub peer: NodeId,
    pub session: SessionId,
    pub track: String,
    pub frames: Arc<AtomicU64>,
}

/// The published snapshot of the table.
pub(crate) type DownsView = Arc<HashMap<DownId, DownView>>;

/// A change to the table.
pub(crate) enum DownCmd {
    /// Known before the engine sends the downstream's first frame: `done` is answered once it
    /// is in the table and the snapshot shows it.
    Insert {
        down: DownId,
        d: Down,
        done: oneshot::Sender<()>,
    },
    /// No longer sent frames (released by its link, or its attach failed).
    Remove(DownId),
    /// Closes the links of these peers (gossip says they are dead), so what was sent to them
    /// is released at once rather than after the QUIC idle timeout.
    ClosePeers(Vec<NodeId>),
}

/// The table, owned by one task.
pub(crate) struct Downs {
    table: HashMap<DownId, Down>,
    view: watch::Sender<DownsView>,
    /// Changed since the last snapshot.
    dirty: bool,
    /// Inserts to answer once the snapshot shows them.
    acks: Vec<oneshot::Sender<()>>,
}

impl Downs {
    pub fn new(view: watch::Sender<DownsView>) -> Downs {
        Downs {
            table: HashMap::new(),
            view,
            dirty: false,
            acks: Vec::new(),
        }
    }

    pub fn get(&self, down: &DownId) -> Option<&Down> {
        self.table.get(down)
    }

    pub fn contains(&self, down: &DownId) -> bool {
        self.table.contains_key(down)
    }

    pub fn remove(&mut self, down: &DownId) -> Option<Down> {
        let d = self.table.remove(down);
        self.dirty |= d.is_some();
        d
    }

    /// Applies one command; the snapshot follows at [`Downs::publish`].
    pub fn handle(&mut self, cmd: DownCmd) {
        match cmd {
            DownCmd::Insert { down, d, done } => {
                self.table.insert(down, d);
                self.dirty = true;
                self.acks.push(done);
            }
            DownCmd::Remove(down) => {
                self.remove(&down);
            }
            DownCmd::ClosePeers(peers) => {
                for d in self.table.values().filter(|d| peers.contains(&d.peer)) {
                    d.conn.close(0u32.into(), b"peer dead");
                }
            }
        }
    }

    /// Publishes the snapshot if the table changed, then answers the inserts it shows.
    pub fn publish(&mut self) {
        if self.dirty {
            let view = self
                .table
                .iter()
                .map(|(id, d)| {
                    let v = DownView {
                        peer: d.peer.clone(),
                        session: d.session,
                        track: d.track.clone(),
                        frames: d.frames.clone(),
                    };
                    (*id, v)
                })
                .collect();
            self.view.send_replace(Arc::new(view));
            self.dirty = false;
        }
        for done in self.acks.drain(..) {
            // The inserting task may have given up (the relay stopping): nothing to tell.
            let _ = done.send(());
        }
    }
}
