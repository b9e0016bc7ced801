//! The media coming in on one dialed link, without I/O: its datagrams are put back together
//! ([`Reassembler`]), repaired ([`Repairer`]: gap detection, `Nack`, the bounded hold and its
//! deadlines) and handed on in order, with a [`InboundEvent::Gap`] where repair failed.
//!
//! It owns the link's sub id → upstream table (the driver tells it each change before the
//! `Subscribe` goes out, so media never finds a sub unknown), reassembly expiry and the `Nack`
//! window. Media of a sub it does not know is dropped. Like the other link machines it takes
//! inputs with the instant they happened at and queues what to do: `Nack`s for the link's
//! control stream (`poll_transmit`), frames and gaps for the engine (`poll_event`), and when it
//! next needs the time (`poll_timeout`, `handle_timeout`).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::control::{ControlMsg, Nack, NackFrame, SubId};
use crate::limits::MAX_NACK_FRAGMENTS;
use crate::media::{Frame, Reassembler, ReassemblerLimits, ReassemblerStats};
use crate::repair::{Arrived, RepairEvent, RepairLimits, RepairStats, Repairer};

/// Bounds of an [`Inbound`].
#[derive(Debug, Clone)]
pub struct InboundLimits {
    /// Putting frames back together.
    pub reassembly: ReassemblerLimits,
    /// Repairing lost frames.
    pub repair: RepairLimits,
    /// Subs known at once; adding one more is refused. Twice the subscriptions a serving node
    /// accepts per link (4096, then `Overloaded`), for those being subscribed or refused.
    pub max_subs: usize,
}

impl Default for InboundLimits {
    fn default() -> Self {
        InboundLimits {
            reassembly: ReassemblerLimits::default(),
            repair: RepairLimits {
                // The serving node numbers each subscription's frames from 1: losing the first
                // is a gap too.
                first_seq: Some(1),
                ..RepairLimits::default()
            },
            max_subs: 8192,
        }
    }
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundEvent<U> {
    /// A whole frame of upstream `up`, in numbering order: hand it on.
    Deliver {
        /// The upstream the frame's sub belongs to.
        up: U,
        /// The frame.
        frame: Frame,
    },
    /// `lost` frames of upstream `up` are lost for good: tell downstream (which asks for a
    /// keyframe) before the frames that follow.
    Gap {
        /// The upstream.
        up: U,
        /// How many frames.
        lost: u32,
    },
}

/// What an [`Inbound`] has done since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboundStats {
    /// Repair: `Nack`s, frames repaired, repairs failed, late frames.
    pub repair: RepairStats,
    /// Reassembly: frames completed and dropped incomplete, and why.
    pub reassembly: ReassemblerStats,
    /// Frames given up on, of known subs or not (the sum of every gap).
    pub frames_lost: u64,
    /// Frames of subs not known (removed, or never added): dropped.
    pub unknown_sub: u64,
}

/// The inbound media of one link; see the module doc. `U` is the driver's upstream handle.
#[derive(Debug)]
pub struct Inbound<U> {
    reasm: Reassembler,
    repair: Repairer<Frame>,
    subs: HashMap<SubId, U>,
    max_subs: usize,
    events: VecDeque<InboundEvent<U>>,
    transmits: VecDeque<ControlMsg>,
    /// The repairer's output, reused between calls.
    scratch: Vec<RepairEvent<Frame>>,
    frames_lost: u64,
    unknown_sub: u64,
}

impl<U: Clone> Inbound<U> {
    /// A link with no subs yet.
    pub fn new(limits: InboundLimits) -> Self {
        Inbound {
            reasm: Reassembler::new(limits.reassembly),
            repair: Repairer::new(limits.repair),
            subs: HashMap::new(),
            max_subs: limits.max_subs,
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            scratch: Vec::new(),
            frames_lost: 0,
            unknown_sub: 0,
        }
    }

    /// Counters.
    pub fn stats(&self) -> InboundStats {
        InboundStats {
            repair: self.repair.stats(),
            reassembly: self.reasm.stats(),
            frames_lost: self.frames_lost,
            unknown_sub: self.unknown_sub,
        }
    }

    /// Subs known now.
    pub fn subs(&self) -> usize {
        self.subs.len()
    }

    /// Media of `sub` is upstream `up`'s from now on. False (nothing changed) when `max_subs`
    /// are known and `sub` is not one of them.
    pub fn add_sub(&mut self, sub: SubId, up: U) -> bool {
        if self.subs.len() >= self.max_subs && !self.subs.contains_key(&sub) {
            return false;
        }
        self.subs.insert(sub, up);
        true
    }

    /// Forgets `sub` (unsubscribed, ended or moved): what it held and its frames in progress
    /// are dropped uncounted, and later media of it is dropped.
    pub fn remove_sub(&mut self, sub: SubId) {
        self.subs.remove(&sub);
        self.repair.remove(sub);
        self.reasm.remove_subscription(sub);
    }

    /// A datagram arrived at `now`, on a link whose round-trip time is `rtt`.
    pub fn handle_datagram(&mut self, now: Instant, rtt: Duration, datagram: &[u8]) {
        let Some(frame) = self.reasm.push(datagram, now) else {
            return;
        };
        if !self.subs.contains_key(&frame.sub) {
            self.unknown_sub += 1;
            return;
        }
        let arrived = Arrived {
            sub: frame.sub,
            seq: frame.frame_seq,
            bytes: frame.payload.len(),
            frame,
        };
        self.repair.push(now, rtt, arrived, &mut self.scratch);
        self.repair.poll(now, &mut self.scratch);
        self.drain();
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due: a re-`Nack`, a gap's
    /// deadline, or an incomplete frame's expiry.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.repair.next_timeout(), self.reasm.next_expiry()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The time is `now`: re-`Nack`s go out, gaps past their deadline are given up, incomplete
    /// frames past theirs are dropped.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.repair.poll(now, &mut self.scratch);
        self.drain();
        self.reasm.poll_expired(now);
    }

    /// The next control message for the link (a `Nack`).
    pub fn poll_transmit(&mut self) -> Option<ControlMsg> {
        self.transmits.pop_front()
    }

    /// The next thing the driver must do.
    pub fn poll_event(&mut self) -> Option<InboundEvent<U>> {
        self.events.pop_front()
    }

    /// Turns the repairer's output into events and `Nack`s, in order.
    fn drain(&mut self) {
        for event in self.scratch.drain(..) {
            match event {
                RepairEvent::Deliver { sub, frame } => {
                    if let Some(up) = self.subs.get(&sub) {
                        let up = up.clone();
                        self.events.push_back(InboundEvent::Deliver { up, frame });
                    }
                }
                RepairEvent::Nack { sub, seqs } => {
                    let frames = seqs
                        .into_iter()
                        .map(|frame_seq| NackFrame {
                            frame_seq,
                            // The fragments still missing of a frame in progress, else all.
                            fragments: self
                                .reasm
                                .missing_fragments(sub, frame_seq, MAX_NACK_FRAGMENTS)
                                .unwrap_or_default(),
                        })
                        .collect();
                    self.transmits
                        .push_back(ControlMsg::Nack(Nack { sub, frames }));
                }
                RepairEvent::Gap { sub, lost } => {
                    self.frames_lost += u64::from(lost);
                    if let Some(up) = self.subs.get(&sub) {
                        let up = up.clone();
                        self.events.push_back(InboundEvent::Gap { up, lost });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(20);
    /// Small datagrams, so a frame of 100 bytes is several fragments.
    const MAX_DATAGRAM: usize = 40;

    fn frame(sub: SubId, seq: u32, len: usize) -> Frame {
        Frame {
            sub,
            frame_seq: seq,
            rtp_time: u64::from(seq) * 3000,
            keyframe: seq == 1,
            payload: vec![seq as u8; len],
        }
    }

    fn datagrams(f: &Frame) -> Vec<Vec<u8>> {
        crate::media::Fragmenter::fragments(f, MAX_DATAGRAM)
            .map(|f| f.collect())
            .unwrap_or_default()
    }

    fn send(link: &mut Inbound<&'static str>, now: Instant, f: &Frame) {
        for d in datagrams(f) {
            link.handle_datagram(now, RTT, &d);
        }
    }

    fn events(link: &mut Inbound<&'static str>) -> Vec<InboundEvent<&'static str>> {
        std::iter::from_fn(|| link.poll_event()).collect()
    }

    fn delivered(events: &[InboundEvent<&'static str>]) -> Vec<u32> {
        events
            .iter()
            .filter_map(|e| match e {
                InboundEvent::Deliver { frame, .. } => Some(frame.frame_seq),
                InboundEvent::Gap { .. } => None,
            })
            .collect()
    }

    fn nacks(link: &mut Inbound<&'static str>) -> Vec<Nack> {
        std::iter::from_fn(|| link.poll_transmit())
            .filter_map(|m| match m {
                ControlMsg::Nack(n) => Some(n),
                _ => None,
            })
            .collect()
    }

    fn link() -> Inbound<&'static str> {
        let mut link = Inbound::new(InboundLimits::default());
        assert!(link.add_sub(1, "up-a"));
        link
    }

    #[test]
    fn frames_in_order_go_out_at_once_and_nothing_waits() {
        let t0 = Instant::now();
        let mut link = link();
        for seq in 1..=3 {
            send(&mut link, t0, &frame(1, seq, 100));
        }
        let ev = events(&mut link);
        assert_eq!(delivered(&ev), vec![1, 2, 3]);
        assert!(
            ev.iter()
                .all(|e| matches!(e, InboundEvent::Deliver { up: "up-a", .. }))
        );
        assert!(nacks(&mut link).is_empty());
        assert_eq!(
            link.poll_timeout(),
            None,
            "nothing missing, nothing in progress"
        );
    }

    #[test]
    fn a_lost_frame_is_nacked_and_its_resend_fills_the_gap_without_a_gap_event() {
        let t0 = Instant::now();
        let mut link = link();
        send(&mut link, t0, &frame(1, 1, 100));
        send(&mut link, t0, &frame(1, 3, 100));
        assert_eq!(delivered(&events(&mut link)), vec![1], "3 waits for 2");
        let n = nacks(&mut link);
        assert_eq!(n.len(), 1);
        assert_eq!((n[0].sub, n[0].frames.len()), (1, 1));
        assert_eq!(n[0].frames[0].frame_seq, 2);
        assert!(
            n[0].frames[0].fragments.is_empty(),
            "nothing of 2 came: all of it"
        );
        // The resend comes back within the deadline.
        send(&mut link, t0 + RTT, &frame(1, 2, 100));
        let ev = events(&mut link);
        assert_eq!(delivered(&ev), vec![2, 3]);
        assert!(!ev.iter().any(|e| matches!(e, InboundEvent::Gap { .. })));
        assert_eq!(link.stats().repair.frames_repaired, 1);
        assert_eq!(link.stats().frames_lost, 0);
    }

    #[test]
    fn a_reordered_frame_is_delivered_in_order() {
        let t0 = Instant::now();
        let mut link = link();
        for seq in [1, 3, 2, 4] {
            send(&mut link, t0, &frame(1, seq, 10));
        }
        assert_eq!(delivered(&events(&mut link)), vec![1, 2, 3, 4]);
        assert_eq!(link.stats().frames_lost, 0);
    }

    #[test]
    fn a_nack_names_only_the_missing_fragments_of_a_frame_half_arrived() {
        let t0 = Instant::now();
        let mut link = link();
        send(&mut link, t0, &frame(1, 1, 10));
        let two = datagrams(&frame(1, 2, 100));
        assert!(two.len() >= 3, "several fragments");
        for (i, d) in two.iter().enumerate() {
            if i != 1 {
                link.handle_datagram(t0, RTT, d);
            }
        }
        send(&mut link, t0, &frame(1, 3, 10));
        let n = nacks(&mut link);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].frames[0].frame_seq, 2);
        assert_eq!(n[0].frames[0].fragments, vec![1]);
        link.handle_datagram(t0 + RTT, RTT, &two[1]);
        assert_eq!(delivered(&events(&mut link)), vec![1, 2, 3]);
    }

    #[test]
    fn a_gap_not_filled_by_its_deadline_is_given_up_then_what_was_held_goes_out() {
        let t0 = Instant::now();
        let mut link = link();
        send(&mut link, t0, &frame(1, 1, 10));
        send(&mut link, t0, &frame(1, 3, 10));
        let _ = (events(&mut link), nacks(&mut link));
        // The re-Nack at half the deadline.
        let renack = link.poll_timeout().expect("a timer for the gap");
        link.handle_timeout(renack);
        let n = nacks(&mut link);
        assert_eq!(n.len(), 1, "one re-Nack");
        assert_eq!(n[0].frames[0].frame_seq, 2);
        assert!(events(&mut link).is_empty(), "still waiting");
        // The deadline.
        let deadline = link.poll_timeout().expect("the deadline");
        assert!(deadline > renack);
        link.handle_timeout(deadline);
        let ev = events(&mut link);
        assert_eq!(
            ev,
            vec![
                InboundEvent::Gap {
                    up: "up-a",
                    lost: 1
                },
                InboundEvent::Deliver {
                    up: "up-a",
                    frame: frame(1, 3, 10)
                },
            ],
            "the gap before the frames it concerns"
        );
        assert_eq!(link.stats().frames_lost, 1);
        // Too late now: dropped and counted.
        send(&mut link, deadline + RTT, &frame(1, 2, 10));
        assert!(events(&mut link).is_empty());
        assert_eq!(link.stats().repair.late, 1);
        assert_eq!(link.poll_timeout(), None);
    }

    #[test]
    fn an_incomplete_frame_expires_on_the_timer_and_is_then_asked_for_whole() {
        let t0 = Instant::now();
        let limits = InboundLimits::default();
        let frame_timeout = limits.reassembly.frame_timeout;
        let mut link = Inbound::new(limits);
        assert!(link.add_sub(1, "up-a"));
        send(&mut link, t0, &frame(1, 1, 10));
        let two = datagrams(&frame(1, 2, 100));
        link.handle_datagram(t0, RTT, &two[0]);
        assert_eq!(link.poll_timeout(), Some(t0 + frame_timeout));
        link.handle_timeout(t0 + frame_timeout);
        assert_eq!(link.stats().reassembly.frames_timed_out, 1);
        assert_eq!(link.poll_timeout(), None, "nothing in progress any more");
        // The next frame shows the gap; nothing of 2 is in progress, so all of it is asked for.
        let t1 = t0 + frame_timeout;
        send(&mut link, t1, &frame(1, 3, 10));
        let n = nacks(&mut link);
        assert_eq!(n[0].frames[0].frame_seq, 2);
        assert!(n[0].frames[0].fragments.is_empty());
    }

    #[test]
    fn losing_a_subs_first_frame_is_a_gap_too() {
        let t0 = Instant::now();
        let mut link = link();
        send(&mut link, t0, &frame(1, 2, 10));
        let n = nacks(&mut link);
        assert_eq!(n[0].frames[0].frame_seq, 1);
        let deadline = (0..4)
            .filter_map(|_| {
                let t = link.poll_timeout()?;
                link.handle_timeout(t);
                Some(t)
            })
            .last()
            .expect("timers ran");
        assert!(deadline > t0);
        let ev = events(&mut link);
        assert!(matches!(
            ev.first(),
            Some(InboundEvent::Gap { lost: 1, .. })
        ));
        assert_eq!(delivered(&ev), vec![2]);
    }

    #[test]
    fn media_of_an_unknown_or_removed_sub_is_dropped_and_its_state_forgotten() {
        let t0 = Instant::now();
        let mut link = link();
        send(&mut link, t0, &frame(9, 1, 10));
        assert!(events(&mut link).is_empty());
        assert_eq!(link.stats().unknown_sub, 1);
        // A gap waiting, and a frame half-arrived, when the sub is removed.
        send(&mut link, t0, &frame(1, 1, 10));
        send(&mut link, t0, &frame(1, 3, 10));
        link.handle_datagram(t0, RTT, &datagrams(&frame(1, 4, 100))[0]);
        let _ = (events(&mut link), nacks(&mut link));
        assert!(link.poll_timeout().is_some());
        link.remove_sub(1);
        assert_eq!(link.poll_timeout(), None, "no timer left for a removed sub");
        assert_eq!(link.subs(), 0);
        link.handle_timeout(t0 + Duration::from_secs(1));
        assert!(events(&mut link).is_empty(), "no gap for a removed sub");
        assert!(nacks(&mut link).is_empty());
    }

    #[test]
    fn subs_beyond_the_bound_are_refused() {
        let mut link = Inbound::new(InboundLimits {
            max_subs: 2,
            ..InboundLimits::default()
        });
        assert!(link.add_sub(1, "a"));
        assert!(link.add_sub(2, "b"));
        assert!(!link.add_sub(3, "c"));
        assert!(
            link.add_sub(2, "b again"),
            "a known sub may change upstream"
        );
        link.remove_sub(1);
        assert!(link.add_sub(3, "c"));
    }
}
