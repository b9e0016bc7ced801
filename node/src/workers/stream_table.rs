//! Which engine worker holds each named stream. A stream lives wholly on one worker (its
//! registry entry, WHIP publisher, WHEP viewers, cascade sessions), so the engine's stream
//! operations stay single-worker; this node-wide table only says where each stream's operations
//! go. No I/O: [`EngineHandle`](super::EngineHandle) fills and prunes it.
//!
//! An entry is made when a stream is first used and outlives the stream on its worker (an
//! auto-created stream goes with its last session, deep in the engine). Such stale entries are
//! pruned on the stream's own worker, under the table's lock, and only when no operation that
//! looked the entry up is still in flight (`pending`): the worker's queue is FIFO and an
//! operation's slot is held until its answer came back, so "no pending operation and no stream
//! on its worker" is settled, and pruning never lets one stream be created on two workers.

use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::engine::streams::MAX_STREAMS;

type Key = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    worker: usize,
    /// Operations that looked this entry up and have not finished.
    pending: usize,
}

/// The table is full ([`MAX_STREAMS`] entries, node-wide).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// Why a stream could not move to another worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveRefused {
    /// Another operation on the stream is in flight.
    Busy,
    /// The table no longer places the stream on the worker it was moved from.
    Moved,
    /// The stream holds sessions on its worker.
    InUse,
}

/// `(app, stream)` → worker, at most [`MAX_STREAMS`] entries.
#[derive(Default)]
pub struct StreamTable {
    map: Mutex<HashMap<Key, Entry>>,
}

fn key(app: &str, stream: &str) -> Key {
    (app.to_string(), stream.to_string())
}

impl StreamTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stream's worker, counting one more operation in flight; a stream with no entry is
    /// placed on `place()` first. `Full` when that would pass [`MAX_STREAMS`] entries.
    pub fn acquire(
        &self,
        app: &str,
        stream: &str,
        place: impl FnOnce() -> usize,
    ) -> Result<usize, Full> {
        let mut map = self.lock();
        let len = map.len();
        match map.entry(key(app, stream)) {
            MapEntry::Occupied(mut o) => {
                o.get_mut().pending += 1;
                Ok(o.get().worker)
            }
            MapEntry::Vacant(v) => {
                if len >= MAX_STREAMS {
                    return Err(Full);
                }
                let worker = place();
                v.insert(Entry { worker, pending: 1 });
                Ok(worker)
            }
        }
    }

    /// The stream's worker when it has an entry, counting one more operation in flight.
    pub fn find(&self, app: &str, stream: &str) -> Option<usize> {
        let mut map = self.lock();
        let e = map.get_mut(&key(app, stream))?;
        e.pending += 1;
        Some(e.worker)
    }

    /// An operation from [`Self::acquire`] or [`Self::find`] finished.
    pub fn release(&self, app: &str, stream: &str) {
        if let Some(e) = self.lock().get_mut(&key(app, stream)) {
            e.pending = e.pending.saturating_sub(1);
        }
    }

    /// Drops the entries of `worker` with no operation in flight whose stream `exists` no
    /// longer; run on that worker (see the module's comment). Returns how many went.
    pub fn prune(&self, worker: usize, exists: impl Fn(&str, &str) -> bool) -> usize {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|(a, s), e| e.worker != worker || e.pending > 0 || exists(a, s));
        before - map.len()
    }

    /// Points the stream at `to`, when it is on `from` and the caller's operation is the only
    /// one in flight; `hand_over` (run under the table's lock, on `from`) then decides: `None`
    /// leaves the stream where it is (`InUse`).
    pub fn repoint<T>(
        &self,
        app: &str,
        stream: &str,
        from: usize,
        to: usize,
        hand_over: impl FnOnce() -> Option<T>,
    ) -> Result<T, MoveRefused> {
        let mut map = self.lock();
        let e = map
            .get_mut(&key(app, stream))
            .filter(|e| e.worker == from)
            .ok_or(MoveRefused::Moved)?;
        if e.pending > 1 {
            return Err(MoveRefused::Busy);
        }
        let handed = hand_over().ok_or(MoveRefused::InUse)?;
        e.worker = to;
        Ok(handed)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// One operation's hold on a stream's entry: the stream's worker, and while it lives the entry
/// is not pruned nor moved by another operation.
pub struct StreamSlot {
    shared: Arc<super::Shared>,
    app: String,
    stream: String,
    worker: usize,
}

impl StreamSlot {
    pub(super) fn new(shared: Arc<super::Shared>, app: &str, stream: &str, worker: usize) -> Self {
        StreamSlot {
            shared,
            app: app.to_string(),
            stream: stream.to_string(),
            worker,
        }
    }

    /// The worker that holds the stream.
    pub fn worker(&self) -> usize {
        self.worker
    }

    pub(super) fn app(&self) -> &str {
        &self.app
    }

    pub(super) fn stream(&self) -> &str {
        &self.stream
    }

    pub(super) fn set_worker(&mut self, worker: usize) {
        self.worker = worker;
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.shared.streams.release(&self.app, &self.stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_keeps_its_worker_until_pruned_and_pruning_spares_live_ones() {
        let t = StreamTable::default();
        assert_eq!(t.acquire("a", "s", || 1), Ok(1));
        assert_eq!(t.acquire("a", "s", || 0), Ok(1), "placed once");
        assert_eq!(t.find("a", "s"), Some(1));
        assert_eq!(t.find("a", "other"), None);
        assert_eq!(t.prune(1, |_, _| false), 0, "operations in flight");
        for _ in 0..3 {
            t.release("a", "s");
        }
        assert_eq!(t.prune(0, |_, _| false), 0, "another worker's entries stay");
        assert_eq!(t.prune(1, |_, _| true), 0, "the stream exists");
        assert_eq!(t.prune(1, |_, _| false), 1, "gone on its worker: pruned");
        assert_eq!(t.acquire("a", "s", || 0), Ok(0), "placed anew");
    }

    #[test]
    fn the_table_is_bounded() {
        let t = StreamTable::default();
        for i in 0..MAX_STREAMS {
            assert_eq!(t.acquire("a", &i.to_string(), || 0), Ok(0));
        }
        assert_eq!(t.acquire("a", "one-more", || 0), Err(Full));
        assert_eq!(
            t.acquire("a", "0", || 1),
            Ok(0),
            "existing ones still answer"
        );
        for i in 0..MAX_STREAMS {
            t.release("a", &i.to_string());
        }
        t.release("a", "0");
        assert_eq!(t.prune(0, |_, s| s != "7"), 1);
        assert_eq!(t.acquire("a", "one-more", || 1), Ok(1), "room again");
    }

    #[test]
    fn a_stream_moves_only_when_nothing_else_is_in_flight() {
        let t = StreamTable::default();
        assert_eq!(t.acquire("a", "s", || 0), Ok(0));
        assert_eq!(t.find("a", "s"), Some(0));
        assert_eq!(
            t.repoint("a", "s", 0, 1, || Some(())),
            Err(MoveRefused::Busy)
        );
        t.release("a", "s");
        assert_eq!(
            t.repoint("a", "s", 1, 0, || Some(())),
            Err(MoveRefused::Moved)
        );
        assert_eq!(
            t.repoint("a", "s", 0, 1, || None::<()>),
            Err(MoveRefused::InUse),
            "kept"
        );
        assert_eq!(t.find("a", "s"), Some(0));
        t.release("a", "s");
        assert_eq!(t.repoint("a", "s", 0, 1, || Some(7)), Ok(7));
        assert_eq!(t.find("a", "s"), Some(1));
    }
}
