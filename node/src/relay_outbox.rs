//! What an engine worker hands the relay tasks, through their bounded queue. Media (frames,
//! keyframe requests, DataChannel messages) is dropped and counted when the queue is full: late
//! media is worthless and the node must not stall. Outputs that change state the other side
//! keeps (a subscription ended or unused, a layer set, a channel ended or released) are held
//! here until there is room, in order: dropping one would leave that state wrong for good (a
//! peer streaming a track nobody reads, a hub pulling layers nobody wants).

use std::collections::VecDeque;

use tokio::sync::mpsc::{self, error::TrySendError};

use crate::engine::RelayOut;

/// Held outputs at most; past it (the relay tasks have stopped reading) they are dropped too.
pub const MAX_HELD: usize = 4096;

/// The outputs waiting for room in the relay queue.
#[derive(Default)]
pub struct RelayOutbox {
    held: VecDeque<RelayOut>,
}

/// Whether `out` must reach the relay tasks even when their queue is full.
fn must_arrive(out: &RelayOut) -> bool {
    matches!(
        out,
        RelayOut::Ended { .. }
            | RelayOut::SetLayers { .. }
            | RelayOut::Layers { .. }
            | RelayOut::Unused { .. }
            | RelayOut::ChannelEnded { .. }
            | RelayOut::ChannelUnused { .. }
            | RelayOut::ChannelReleaseReply { .. }
    )
}

impl RelayOutbox {
    /// Sends what was held, oldest first, while there is room.
    pub fn flush(&mut self, to: &mpsc::Sender<RelayOut>) {
        while let Some(out) = self.held.pop_front() {
            match to.try_send(out) {
                Ok(()) => {}
                Err(TrySendError::Full(out)) => {
                    self.held.push_front(out);
                    return;
                }
                // The relay has stopped: nothing will read them.
                Err(TrySendError::Closed(_)) => {
                    self.held.clear();
                    return;
                }
            }
        }
    }

    /// Sends `out`, or holds it (state) or drops it (media); returns whether it was dropped.
    /// State goes behind what is held, so a peer sees it in the engine's order.
    pub fn send(&mut self, to: &mpsc::Sender<RelayOut>, out: RelayOut) -> bool {
        let out = if must_arrive(&out) && !self.held.is_empty() {
            out
        } else {
            match to.try_send(out) {
                Ok(()) => return false,
                Err(TrySendError::Full(out)) if must_arrive(&out) => out,
                Err(_) => return true,
            }
        };
        if self.held.len() >= MAX_HELD {
            return true;
        }
        self.held.push_back(out);
        false
    }

    /// Outputs held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::RelayFrame;
    use crate::ids::{DownId, UpId};

    fn frame(down: u64) -> RelayOut {
        RelayOut::Frame {
            down: DownId(down),
            seq: 1,
            frame: RelayFrame {
                rtp_time: 0,
                origin_seq: 0,
                marker: true,
                keyframe: false,
                data: Vec::new().into(),
                rid: None,
                orientation: None,
            },
        }
    }

    #[test]
    fn a_full_queue_drops_media_but_holds_ends_until_there_is_room_in_order() {
        let (tx, mut rx) = mpsc::channel(1);
        let mut outbox = RelayOutbox::default();
        assert!(!outbox.send(&tx, frame(1)), "room for one");
        assert!(outbox.send(&tx, frame(2)), "a frame is dropped when full");
        assert!(!outbox.send(&tx, RelayOut::Unused { up: UpId(7) }));
        assert!(!outbox.send(&tx, RelayOut::Ended { down: DownId(3) }));
        assert_eq!(outbox.held(), 2);
        // Room for one: the oldest held goes first, and a new end waits behind the rest.
        assert!(matches!(rx.try_recv(), Ok(RelayOut::Frame { .. })));
        outbox.flush(&tx);
        assert!(!outbox.send(&tx, RelayOut::Unused { up: UpId(8) }));
        let mut got = Vec::new();
        for _ in 0..3 {
            if let Ok(out) = rx.try_recv() {
                got.push(out);
            }
            outbox.flush(&tx);
        }
        assert!(
            matches!(
                got.as_slice(),
                [
                    RelayOut::Unused { up: UpId(7) },
                    RelayOut::Ended { down: DownId(3) },
                    RelayOut::Unused { up: UpId(8) }
                ]
            ),
            "{got:?}"
        );
        assert_eq!(outbox.held(), 0);
    }

    #[test]
    fn what_is_held_is_bounded_and_let_go_when_the_relay_stops() {
        let (tx, rx) = mpsc::channel(1);
        let mut outbox = RelayOutbox::default();
        assert!(!outbox.send(&tx, frame(1)));
        for i in 0..MAX_HELD as u64 {
            assert!(!outbox.send(&tx, RelayOut::Unused { up: UpId(i) }));
        }
        assert!(outbox.send(&tx, RelayOut::Unused { up: UpId(u64::MAX) }));
        assert_eq!(outbox.held(), MAX_HELD);
        drop(rx);
        outbox.flush(&tx);
        assert_eq!(outbox.held(), 0);
    }
}
