//! The DataChannel relay tables: the writer queue of each channel stream (those this node
//! subscribed on and those peers subscribed on), the `canReply` claims waiting for an answer,
//! and the channel pulls and claims under way. The task that sends frames (`outputs.rs`) owns
//! them, as it sends the engine's channel messages onto the streams; everything else changes
//! them over one bounded command queue ([`CHANNEL_QUEUE`]) whose senders wait for room (the
//! commands are per stream or claim, not per message, so none is dropped). No lock guards them.
//!
//! Concurrent pulls of one channel share one pull, and concurrent claims of one channel's
//! reply grant share one claim: the task runs the first and answers every caller with its
//! outcome (as the pulling task shares one upstream per track). This replaced a per-channel
//! lock map.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::AtomicU64;

use tokio::sync::{mpsc, oneshot};
use trackmesh_relay_proto::datachannel::DcFrame;

use super::channels::queue_frame;
use super::failures::PullError;
use crate::engine::DcLinkId;
use crate::ids::SessionId;

/// Commands waiting for the task that owns the tables.
pub const CHANNEL_QUEUE: usize = 1024;
/// Distinct channels with a pull (or a claim) under way at once; a pull beyond it fails
/// (`NoAnswer`), a claim beyond it is not granted.
pub const MAX_PENDING: usize = 1024;

/// A channel: its session and name.
pub(crate) type ChannelKey = (SessionId, String);

/// A change to the tables, or a question for the task that owns them.
pub(crate) enum ChannelCmd {
    /// Makes the channel available here: joins its pull under way, or starts one.
    Pull {
        app: String,
        key: ChannelKey,
        reply: oneshot::Sender<Result<(), PullError>>,
    },
    /// A pull ended: every caller waiting on it is answered.
    PullDone {
        key: ChannelKey,
        result: Result<(), PullError>,
    },
    /// Claims the channel's reply grant: joins its claim under way, or starts one.
    Claim {
        key: ChannelKey,
        reply: oneshot::Sender<bool>,
    },
    /// A claim ended: every caller waiting on it is answered.
    ClaimDone { key: ChannelKey, granted: bool },
    /// A stream this node subscribed on is open: its writer queue. `done` once in the table.
    UpOpened {
        up: DcLinkId,
        tx: mpsc::Sender<DcFrame>,
        done: oneshot::Sender<()>,
    },
    /// That stream ended: its writer is dropped, a claim waiting on it is answered "no".
    UpEnded(DcLinkId),
    /// A stream a peer subscribed on is open: its writer queue. `done` once in the table.
    DownOpened {
        down: DcLinkId,
        tx: mpsc::Sender<DcFrame>,
        done: oneshot::Sender<()>,
    },
    /// That stream ended.
    DownEnded(DcLinkId),
    /// Sends `Claim{seq, want: true}` on upstream `up`, and hands its answer to `answer`.
    ClaimSent {
        up: DcLinkId,
        seq: u32,
        answer: oneshot::Sender<bool>,
    },
    /// The publisher's node answered claim `seq` of upstream `up`.
    ClaimAnswer {
        up: DcLinkId,
        seq: u32,
        granted: bool,
    },
    /// Claim `seq` of `up` had no answer in time: forgotten, and given back in case a late
    /// answer granted it.
    ClaimGiveUp { up: DcLinkId, seq: u32 },
    /// A frame for the peer on downstream `down` (a claim's answer).
    ToDown { down: DcLinkId, frame: DcFrame },
}

/// A pull or claim the owning task must start (in a task of its own: it waits on the network
/// and the engine).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Start {
    Pull {
        app: String,
        session: SessionId,
        name: String,
    },
    Claim {
        session: SessionId,
        name: String,
    },
}

/// The tables, owned by one task.
#[derive(Default)]
pub(crate) struct ChannelTable {
    /// Streams this node subscribed on: upstream id → the stream's writer queue.
    ups: HashMap<DcLinkId, mpsc::Sender<DcFrame>>,
    /// Streams peers subscribed on: downstream id → the stream's writer queue.
    downs: HashMap<DcLinkId, mpsc::Sender<DcFrame>>,
    /// Claims waiting for the publisher's node: upstream → (claim sequence, the waiting
    /// claim). At most one per upstream (one claim per channel at a time).
    claims: HashMap<DcLinkId, (u32, oneshot::Sender<bool>)>,
    /// Pulls under way, with every caller waiting on each.
    pulls: HashMap<ChannelKey, Vec<oneshot::Sender<Result<(), PullError>>>>,
    /// Claims under way, with every caller waiting on each.
    claiming: HashMap<ChannelKey, Vec<oneshot::Sender<bool>>>,
}

impl ChannelTable {
    /// The writer queue of upstream `up`.
    pub fn up(&self, up: DcLinkId) -> Option<&mpsc::Sender<DcFrame>> {
        self.ups.get(&up)
    }

    /// The writer queue of downstream `down`.
    pub fn down(&self, down: DcLinkId) -> Option<&mpsc::Sender<DcFrame>> {
        self.downs.get(&down)
    }

    /// Forgets upstream `up`'s writer: dropping the queue finishes the stream.
    pub fn remove_up(&mut self, up: DcLinkId) -> Option<mpsc::Sender<DcFrame>> {
        self.ups.remove(&up)
    }

    /// Forgets downstream `down`'s writer.
    pub fn remove_down(&mut self, down: DcLinkId) -> Option<mpsc::Sender<DcFrame>> {
        self.downs.remove(&down)
    }

    /// Applies one command; never waits. A pull or claim to run comes back as [`Start`].
    /// Frames not queued on a full (or gone) stream are counted in `drops`.
    pub fn handle(&mut self, cmd: ChannelCmd, drops: &AtomicU64) -> Option<Start> {
        match cmd {
            ChannelCmd::Pull { app, key, reply } => {
                let pending = self.pulls.len();
                match self.pulls.entry(key) {
                    Entry::Occupied(mut e) => e.get_mut().push(reply),
                    Entry::Vacant(_) if pending >= MAX_PENDING => {
                        let _ = reply.send(Err(PullError::NoAnswer));
                    }
                    Entry::Vacant(e) => {
                        let (session, name) = e.key().clone();
                        e.insert(vec![reply]);
                        return Some(Start::Pull { app, session, name });
                    }
                }
            }
            ChannelCmd::PullDone { key, result } => {
                for reply in self.pulls.remove(&key).unwrap_or_default() {
                    let _ = reply.send(result);
                }
            }
            ChannelCmd::Claim { key, reply } => {
                let pending = self.claiming.len();
                match self.claiming.entry(key) {
                    Entry::Occupied(mut e) => e.get_mut().push(reply),
                    Entry::Vacant(_) if pending >= MAX_PENDING => {
                        let _ = reply.send(false);
                    }
                    Entry::Vacant(e) => {
                        let (session, name) = e.key().clone();
                        e.insert(vec![reply]);
                        return Some(Start::Claim { session, name });
                    }
                }
            }
            ChannelCmd::ClaimDone { key, granted } => {
                for reply in self.claiming.remove(&key).unwrap_or_default() {
                    let _ = reply.send(granted);
                }
            }
            ChannelCmd::UpOpened { up, tx, done } => {
                self.ups.insert(up, tx);
                let _ = done.send(());
            }
            ChannelCmd::UpEnded(up) => {
                self.ups.remove(&up);
                // A claim still waiting is answered "no" by dropping its sender.
                self.claims.remove(&up);
            }
            ChannelCmd::DownOpened { down, tx, done } => {
                self.downs.insert(down, tx);
                let _ = done.send(());
            }
            ChannelCmd::DownEnded(down) => {
                self.downs.remove(&down);
            }
            ChannelCmd::ClaimSent { up, seq, answer } => {
                self.claims.insert(up, (seq, answer));
                let frame = DcFrame::Claim { seq, want: true };
                queue_frame(drops, self.ups.get(&up), frame);
            }
            ChannelCmd::ClaimAnswer { up, seq, granted } => {
                if self.claims.get(&up).is_some_and(|(s, _)| *s == seq)
                    && let Some((_, tx)) = self.claims.remove(&up)
                {
                    let _ = tx.send(granted);
                }
            }
            ChannelCmd::ClaimGiveUp { up, seq } => {
                if self.claims.get(&up).is_some_and(|(s, _)| *s == seq) {
                    self.claims.remove(&up);
                }
                let frame = DcFrame::Claim { seq, want: false };
                queue_frame(drops, self.ups.get(&up), frame);
            }
            ChannelCmd::ToDown { down, frame } => {
                queue_frame(drops, self.downs.get(&down), frame);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    fn key(name: &str) -> ChannelKey {
        (SessionId::from_bytes([7; 16]), name.to_string())
    }

    fn pull(t: &mut ChannelTable, name: &str) -> (Option<Start>, oneshot::Receiver<PullResult>) {
        let (reply, answer) = oneshot::channel();
        let cmd = ChannelCmd::Pull {
            app: "app".into(),
            key: key(name),
            reply,
        };
        (t.handle(cmd, &AtomicU64::new(0)), answer)
    }

    type PullResult = Result<(), PullError>;

    #[test]
    fn concurrent_pulls_of_a_channel_share_one_and_all_get_its_outcome() {
        let mut t = ChannelTable::default();
        let (first, mut a) = pull(&mut t, "chat");
        let (second, mut b) = pull(&mut t, "chat");
        let (other, _c) = pull(&mut t, "game");
        assert_eq!(
            first,
            Some(Start::Pull {
                app: "app".into(),
                session: key("chat").0,
                name: "chat".into()
            })
        );
        assert_eq!(second, None, "the second pull of a channel joins the first");
        assert!(
            matches!(other, Some(Start::Pull { name, .. }) if name == "game"),
            "another channel pulls on its own"
        );
        assert!(
            a.try_recv().is_err(),
            "nobody answered before the pull ended"
        );
        let done = ChannelCmd::PullDone {
            key: key("chat"),
            result: Err(PullError::Refused),
        };
        assert_eq!(t.handle(done, &AtomicU64::new(0)), None);
        assert_eq!(a.try_recv(), Ok(Err(PullError::Refused)));
        assert_eq!(b.try_recv(), Ok(Err(PullError::Refused)));
        let (again, _d) = pull(&mut t, "chat");
        assert!(again.is_some(), "a pull after the last ended starts anew");
    }

    #[test]
    fn pulls_beyond_the_bound_fail_at_once() {
        let mut t = ChannelTable::default();
        let mut waiting = Vec::new();
        for i in 0..MAX_PENDING {
            let (start, answer) = pull(&mut t, &format!("c{i}"));
            assert!(start.is_some());
            waiting.push(answer);
        }
        let (start, mut answer) = pull(&mut t, "one too many");
        assert_eq!(start, None);
        assert_eq!(answer.try_recv(), Ok(Err(PullError::NoAnswer)));
        let (start, _joined) = pull(&mut t, "c0");
        assert_eq!(start, None, "joining a pull under way is still allowed");
    }

    #[test]
    fn a_claim_is_answered_by_its_own_answer_only_and_no_when_its_stream_ends() {
        let drops = AtomicU64::new(0);
        let mut t = ChannelTable::default();
        let (tx, mut written) = mpsc::channel(8);
        let (done, _) = oneshot::channel();
        t.handle(ChannelCmd::UpOpened { up: 5, tx, done }, &drops);

        let (answer, mut granted) = oneshot::channel();
        t.handle(
            ChannelCmd::ClaimSent {
                up: 5,
                seq: 9,
                answer,
            },
            &drops,
        );
        assert_eq!(
            written.try_recv().ok(),
            Some(DcFrame::Claim { seq: 9, want: true })
        );
        let stale = ChannelCmd::ClaimAnswer {
            up: 5,
            seq: 8,
            granted: true,
        };
        t.handle(stale, &drops);
        assert!(
            granted.try_recv().is_err(),
            "another claim's answer is not this one's"
        );
        let own = ChannelCmd::ClaimAnswer {
            up: 5,
            seq: 9,
            granted: true,
        };
        t.handle(own, &drops);
        assert_eq!(granted.try_recv(), Ok(true));

        let (answer, mut granted) = oneshot::channel();
        t.handle(
            ChannelCmd::ClaimSent {
                up: 5,
                seq: 10,
                answer,
            },
            &drops,
        );
        t.handle(ChannelCmd::UpEnded(5), &drops);
        assert!(
            granted.try_recv().is_err(),
            "a claim of an ended stream is answered no (its sender dropped)"
        );
        assert_eq!(drops.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_claim_given_up_is_given_back_and_a_frame_for_a_gone_stream_is_counted() {
        let drops = AtomicU64::new(0);
        let mut t = ChannelTable::default();
        let (tx, mut written) = mpsc::channel(8);
        let (done, _) = oneshot::channel();
        t.handle(ChannelCmd::UpOpened { up: 5, tx, done }, &drops);
        let (answer, mut granted) = oneshot::channel();
        t.handle(
            ChannelCmd::ClaimSent {
                up: 5,
                seq: 3,
                answer,
            },
            &drops,
        );
        t.handle(ChannelCmd::ClaimGiveUp { up: 5, seq: 3 }, &drops);
        assert!(granted.try_recv().is_err(), "forgotten");
        assert_eq!(
            written.try_recv().ok(),
            Some(DcFrame::Claim { seq: 3, want: true })
        );
        assert_eq!(
            written.try_recv().ok(),
            Some(DcFrame::Claim {
                seq: 3,
                want: false
            }),
            "a late grant is given back"
        );
        let frame = DcFrame::ClaimAnswer {
            seq: 1,
            granted: true,
        };
        t.handle(ChannelCmd::ToDown { down: 77, frame }, &drops);
        assert_eq!(drops.load(Ordering::Relaxed), 1, "no stream 77: counted");
    }
}
