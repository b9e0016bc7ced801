//! Loss repair on the relay, both ends, without I/O: the subscriber's [`Repairer`] (gap
//! detection, the `Nack` list, a bounded hold, deadlines) and the publisher's [`SentCache`]
//! (recently sent frames by number, to send again).
//!
//! Both are generic over what they hold, so they work the same whether the relay carries frames
//! (today: `frame_seq`) or, later, RTP packets (their sequence numbers).
//!
//! # The subscriber's side
//!
//! Frames (or packets) of a subscription are numbered +1 each. Fed whole frames in arrival order,
//! a [`Repairer`] returns [`RepairEvent`]s in the order the caller must act on them:
//!
//! - In order and nothing missing: `Deliver` at once. Nothing is ever held when nothing was lost.
//! - A jump in the numbering: `Nack` for the missing numbers at once, and the frames after the
//!   gap are held (bounded by [`RepairLimits`]) until the gap is filled. Filled (the frame was
//!   sent again, or was only reordered): the frame and those held behind it are delivered in
//!   order, and nobody downstream sees a gap.
//! - Still missing after [`RepairLimits::renack_after`]: one more `Nack`.
//! - Still missing at the deadline, `2 × RTT + margin` capped at [`RepairLimits::max_wait`]: a
//!   `Gap` (the caller asks for a keyframe), then what was held is delivered. A missing frame
//!   that arrives after that is dropped and counted late.
//! - A gap longer than [`RepairLimits::max_missing`], or a hold over its frame or byte bound:
//!   no repair is tried; `Gap` at once and what was held is delivered.
//!
//! The caller drives time: [`Repairer::next_timeout`] says when [`Repairer::poll`] is next due.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use crate::control::SubId;
use crate::limits::MAX_NACK_FRAMES;

/// Bounds and timing of a [`Repairer`].
#[derive(Debug, Clone)]
pub struct RepairLimits {
    /// Frames held behind a gap, per subscription; one more gives the gap up.
    pub max_held_frames: usize,
    /// Bytes held behind a gap, per subscription; more gives the gap up.
    pub max_held_bytes: usize,
    /// Bytes held by all subscriptions together; a frame that would exceed it gives its
    /// subscription's gap up.
    pub max_total_bytes: usize,
    /// Longest gap (in frames) worth repairing; a longer burst is given up at once.
    pub max_missing: usize,
    /// Cap on the time a gap is waited for, however long the round trip.
    pub max_wait: Duration,
    /// Added to `2 × RTT` for the deadline: the publisher's and our own scheduling.
    pub margin: Duration,
    /// Subscriptions tracked at once; frames of further ones pass through unrepaired.
    pub max_subscriptions: usize,
    /// The number every subscription starts at, if the sender always starts at the same one
    /// (the relay's frames: 1), so that losing a subscription's first frames is a gap too.
    /// `None`: a subscription starts at its first frame that arrives.
    pub first_seq: Option<u32>,
}

impl Default for RepairLimits {
    fn default() -> Self {
        RepairLimits {
            // 200 ms of a three-layer simulcast track is about 80 packets (one relayed frame
            // each), with room; audio 10.
            max_held_frames: 128,
            max_held_bytes: 1 << 20,
            max_total_bytes: 16 << 20,
            max_missing: MAX_NACK_FRAMES,
            max_wait: Duration::from_millis(200),
            margin: Duration::from_millis(30),
            max_subscriptions: 4096,
            first_seq: None,
        }
    }
}

impl RepairLimits {
    /// How long a gap detected now is waited for, on a link of round-trip time `rtt`.
    pub fn deadline(&self, rtt: Duration) -> Duration {
        (rtt.saturating_mul(2) + self.margin).min(self.max_wait)
    }

    /// When the one re-`Nack` goes out: half-way to the deadline, so that its answer has about
    /// one round trip to come back.
    pub fn renack_after(&self, rtt: Duration) -> Duration {
        self.deadline(rtt) / 2
    }
}

/// A whole frame that arrived, for [`Repairer::push`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrived<F> {
    /// Its subscription.
    pub sub: SubId,
    /// Its number.
    pub seq: u32,
    /// The frame.
    pub frame: F,
    /// What it costs to hold, in bytes.
    pub bytes: usize,
}

/// What the caller must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepairEvent<F> {
    /// Hand this frame on (frames come out in numbering order, each once).
    Deliver {
        /// The subscription.
        sub: SubId,
        /// The frame.
        frame: F,
    },
    /// Ask the publisher for these frame numbers again (at most [`MAX_NACK_FRAMES`], oldest
    /// first).
    Nack {
        /// The subscription.
        sub: SubId,
        /// The missing numbers.
        seqs: Vec<u32>,
    },
    /// These frames are lost for good: tell downstream (ask for a keyframe) before delivering
    /// what follows.
    Gap {
        /// The subscription.
        sub: SubId,
        /// How many frames were lost.
        lost: u32,
    },
}

/// What a [`Repairer`] has done since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RepairStats {
    /// `Nack` events (messages to send).
    pub nacks: u64,
    /// Frame numbers asked for in them (a re-`Nack` counts again).
    pub frames_nacked: u64,
    /// Missing frames that arrived in time (sent again, or only reordered).
    pub frames_repaired: u64,
    /// Missing frames given up on (each is in a `Gap`).
    pub repairs_failed: u64,
    /// Gaps given up on at once: longer than `max_missing`, or the hold full.
    pub bursts_over_hold: u64,
    /// Frames that arrived after their number was given up on (dropped).
    pub late: u64,
    /// Frames that arrived twice (dropped).
    pub duplicates: u64,
    /// Frames of subscriptions over `max_subscriptions`, passed through without repair.
    pub untracked: u64,
}

/// A missing frame number, and where its repair stands.
#[derive(Debug, Clone, Copy)]
struct Missing {
    /// Give up at.
    deadline: Instant,
    /// Send the one re-`Nack` at; `None` once sent.
    renack: Option<Instant>,
}

/// Given-up numbers remembered per subscription, to tell late frames from duplicates.
const GIVEN_UP_WINDOW: usize = 64;

#[derive(Debug)]
struct SubRepair<F> {
    /// The next number to deliver (extended to 64 bits: no wrap-around).
    next: u64,
    /// Missing numbers, all `>= next`.
    missing: BTreeMap<u64, Missing>,
    /// Frames that arrived after a missing one, and their byte counts.
    held: BTreeMap<u64, (F, usize)>,
    held_bytes: usize,
    given_up: VecDeque<u64>,
}

impl<F> SubRepair<F> {
    fn new(first: u64) -> Self {
        SubRepair {
            next: first,
            missing: BTreeMap::new(),
            held: BTreeMap::new(),
            held_bytes: 0,
            given_up: VecDeque::new(),
        }
    }

    /// `seq` as an extended number, the one closest to `next`; `None` before the first.
    fn extend(&self, seq: u32) -> Option<u64> {
        let delta = seq.wrapping_sub(self.next as u32) as i32;
        self.next.checked_add_signed(i64::from(delta))
    }

    fn note_given_up(&mut self, n: u64) {
        if self.given_up.len() >= GIVEN_UP_WINDOW {
            self.given_up.pop_front();
        }
        self.given_up.push_back(n);
    }

    /// The earliest instant something is due.
    fn next_due(&self) -> Option<Instant> {
        self.missing
            .values()
            .map(|m| m.renack.unwrap_or(m.deadline).min(m.deadline))
            .min()
    }
}

/// The subscriber's loss repair for the subscriptions of one link; see the module doc.
#[derive(Debug)]
pub struct Repairer<F> {
    limits: RepairLimits,
    subs: HashMap<SubId, SubRepair<F>>,
    /// Subscriptions with missing frames (the only ones with timers).
    pending: HashSet<SubId>,
    total_bytes: usize,
    stats: RepairStats,
}

impl<F> Default for Repairer<F> {
    fn default() -> Self {
        Self::new(RepairLimits::default())
    }
}

impl<F> Repairer<F> {
    /// An empty repairer.
    pub fn new(limits: RepairLimits) -> Self {
        Repairer {
            limits,
            subs: HashMap::new(),
            pending: HashSet::new(),
            total_bytes: 0,
            stats: RepairStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> RepairStats {
        self.stats
    }

    /// Frames held now, in all subscriptions.
    pub fn held_frames(&self) -> usize {
        self.subs.values().map(|s| s.held.len()).sum()
    }

    /// Bytes held now, in all subscriptions.
    pub fn held_bytes(&self) -> usize {
        self.total_bytes
    }

    /// Subscriptions tracked.
    pub fn subscriptions(&self) -> usize {
        self.subs.len()
    }

    /// When [`poll`](Self::poll) is next due, if anything is missing.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.pending
            .iter()
            .filter_map(|sub| self.subs.get(sub)?.next_due())
            .min()
    }

    /// Forgets a subscription (unsubscribed or ended); what it held is dropped uncounted.
    pub fn remove(&mut self, sub: SubId) {
        if let Some(s) = self.subs.remove(&sub) {
            self.total_bytes -= s.held_bytes;
        }
        self.pending.remove(&sub);
    }

    /// Keeps only the subscriptions `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(SubId) -> bool) {
        let gone: Vec<SubId> = self.subs.keys().copied().filter(|s| !keep(*s)).collect();
        for sub in gone {
            self.remove(sub);
        }
    }

    /// A whole frame arrived at `now`, on a link whose round-trip time is `rtt`. Appends what
    /// to do to `out`.
    pub fn push(
        &mut self,
        now: Instant,
        rtt: Duration,
        arrived: Arrived<F>,
        out: &mut Vec<RepairEvent<F>>,
    ) {
        let Arrived {
            sub,
            seq,
            frame,
            bytes,
        } = arrived;
        if !self.subs.contains_key(&sub) {
            if self.subs.len() >= self.limits.max_subscriptions {
                self.stats.untracked += 1;
                out.push(RepairEvent::Deliver { sub, frame });
                return;
            }
            let first = self.limits.first_seq.unwrap_or(seq);
            self.subs.insert(sub, SubRepair::new(u64::from(first)));
        }
        let Some(s) = self.subs.get_mut(&sub) else {
            return;
        };
        let n = s.extend(seq);
        let Some(n) = n.filter(|n| *n >= s.next) else {
            if n.is_some_and(|n| s.given_up.contains(&n)) {
                self.stats.late += 1;
            } else {
                self.stats.duplicates += 1;
            }
            return;
        };
        if s.held.contains_key(&n) {
            self.stats.duplicates += 1;
            return;
        }
        if n == s.next {
            if s.missing.remove(&n).is_some() {
                self.stats.frames_repaired += 1;
            }
            s.next = n + 1;
            out.push(RepairEvent::Deliver { sub, frame });
            self.release(sub, out);
            return;
        }
        // Ahead of `next`: a frame in the gap, or a new gap after what is held.
        if s.missing.remove(&n).is_some() {
            self.stats.frames_repaired += 1;
        } else {
            let from = s
                .held
                .last_key_value()
                .map_or(s.next, |(k, _)| (k + 1).max(s.next));
            // The length first: a peer's number may jump by billions.
            let too_long = usize::try_from(n - from)
                .map_or(true, |len| s.missing.len() + len > self.limits.max_missing);
            if too_long {
                self.stats.bursts_over_hold += 1;
                self.give_up_all(sub, out);
                self.deliver_after_gap(sub, n, frame, out);
                return;
            }
            // Missing numbers all lie below the last held frame, so these are new.
            let new: Vec<u64> = (from..n).filter(|k| !s.missing.contains_key(k)).collect();
            if !new.is_empty() {
                let deadline = now + self.limits.deadline(rtt);
                let renack = Some(now + self.limits.renack_after(rtt));
                for k in &new {
                    s.missing.insert(*k, Missing { deadline, renack });
                }
                self.stats.nacks += 1;
                self.stats.frames_nacked += new.len() as u64;
                out.push(RepairEvent::Nack {
                    sub,
                    seqs: new.iter().map(|k| *k as u32).collect(),
                });
                self.pending.insert(sub);
            }
        }
        let over = s.held.len() >= self.limits.max_held_frames
            || s.held_bytes + bytes > self.limits.max_held_bytes
            || self.total_bytes + bytes > self.limits.max_total_bytes;
        s.held.insert(n, (frame, bytes));
        s.held_bytes += bytes;
        self.total_bytes += bytes;
        if over {
            // The frame may fill a gap between held ones: it goes out in its place.
            self.stats.bursts_over_hold += 1;
            self.give_up_all(sub, out);
        }
    }

    /// Sends re-`Nack`s and gives up gaps whose time has come.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<RepairEvent<F>>) {
        let due: Vec<SubId> = self
            .pending
            .iter()
            .copied()
            .filter(|sub| {
                self.subs
                    .get(sub)
                    .and_then(SubRepair::next_due)
                    .is_some_and(|t| t <= now)
            })
            .collect();
        for sub in due {
            let Some(s) = self.subs.get_mut(&sub) else {
                continue;
            };
            let mut renack = Vec::new();
            for (k, m) in s.missing.iter_mut() {
                if m.deadline > now && m.renack.is_some_and(|t| t <= now) {
                    m.renack = None;
                    renack.push(*k as u32);
                }
            }
            if !renack.is_empty() {
                self.stats.nacks += 1;
                self.stats.frames_nacked += renack.len() as u64;
                out.push(RepairEvent::Nack { sub, seqs: renack });
            }
            // Give up, oldest first, every missing number past its deadline, and deliver what
            // was held behind each.
            let mut lost = 0u32;
            while let Some(s) = self.subs.get_mut(&sub) {
                let Some((&k, m)) = s.missing.first_key_value() else {
                    break;
                };
                if m.deadline > now {
                    break;
                }
                // Everything held before the first missing number was delivered already.
                s.missing.remove(&k);
                s.note_given_up(k);
                s.next = k + 1;
                lost += 1;
                self.stats.repairs_failed += 1;
                let first_held = s.held.first_key_value().map(|(h, _)| *h);
                let next_missing = s.missing.first_key_value().map(|(h, _)| *h);
                // Gap before the frames it concerns: the caller withholds them until a keyframe.
                if first_held == Some(s.next) || next_missing.is_none() {
                    out.push(RepairEvent::Gap { sub, lost });
                    lost = 0;
                    self.release(sub, out);
                }
            }
            if lost > 0 {
                out.push(RepairEvent::Gap { sub, lost });
            }
            if self.subs.get(&sub).is_none_or(|s| s.missing.is_empty()) {
                self.pending.remove(&sub);
            }
        }
    }

    /// Delivers held frames from `next` on while they follow each other.
    fn release(&mut self, sub: SubId, out: &mut Vec<RepairEvent<F>>) {
        let Some(s) = self.subs.get_mut(&sub) else {
            return;
        };
        while let Some(entry) = s.held.first_entry() {
            if *entry.key() != s.next {
                break;
            }
            let (frame, bytes) = entry.remove();
            s.held_bytes -= bytes;
            self.total_bytes -= bytes;
            s.next += 1;
            out.push(RepairEvent::Deliver { sub, frame });
        }
        if s.missing.is_empty() {
            self.pending.remove(&sub);
        }
    }

    /// Gives up every missing number of `sub` (one `Gap`) and delivers all it held, in order.
    /// The first missing number is always `next` (a held frame at `next` would have been
    /// delivered), so the `Gap` comes before every held frame.
    fn give_up_all(&mut self, sub: SubId, out: &mut Vec<RepairEvent<F>>) {
        let Some(s) = self.subs.get_mut(&sub) else {
            return;
        };
        let missing = std::mem::take(&mut s.missing);
        let held = std::mem::take(&mut s.held);
        self.total_bytes -= s.held_bytes;
        s.held_bytes = 0;
        self.pending.remove(&sub);
        if let Some((last, _)) = missing.last_key_value() {
            s.next = s.next.max(last + 1);
        }
        for k in missing.keys() {
            s.note_given_up(*k);
        }
        self.stats.repairs_failed += missing.len() as u64;
        if !missing.is_empty() {
            out.push(RepairEvent::Gap {
                sub,
                lost: u32::try_from(missing.len()).unwrap_or(u32::MAX),
            });
        }
        for (k, (frame, _)) in held {
            s.next = s.next.max(k + 1);
            out.push(RepairEvent::Deliver { sub, frame });
        }
    }

    /// After [`give_up_all`](Self::give_up_all): frame `n` (ahead of everything) goes out,
    /// after a `Gap` for the numbers between it and the last delivered one.
    fn deliver_after_gap(&mut self, sub: SubId, n: u64, frame: F, out: &mut Vec<RepairEvent<F>>) {
        let Some(s) = self.subs.get_mut(&sub) else {
            return;
        };
        if n > s.next {
            let skipped = n - s.next;
            for k in n.saturating_sub(GIVEN_UP_WINDOW as u64).max(s.next)..n {
                s.note_given_up(k);
            }
            self.stats.repairs_failed += skipped;
            out.push(RepairEvent::Gap {
                sub,
                lost: u32::try_from(skipped).unwrap_or(u32::MAX),
            });
        }
        s.next = n + 1;
        out.push(RepairEvent::Deliver { sub, frame });
    }
}

/// Limits of a [`SentCache`].
#[derive(Debug, Clone)]
pub struct SentCacheLimits {
    /// Frames kept.
    pub max_frames: usize,
    /// Bytes kept (as charged by the caller).
    pub max_bytes: usize,
    /// Frames older than this are dropped: no subscriber waits that long for one.
    pub max_age: Duration,
    /// Times one frame is handed out again ([`SentCache::resend`]): a subscriber asks at most
    /// twice (a `Nack` and one re-`Nack`), so a peer cannot make this node send a frame more
    /// often than that, whatever it asks.
    pub max_resends: u8,
}

impl Default for SentCacheLimits {
    fn default() -> Self {
        SentCacheLimits {
            // One second of a three-layer simulcast track: the relay carries one RTP packet per
            // frame, about 400 packets/s at the load generator's rates, with room.
            max_frames: 512,
            // One second at 4 Mbit/s, with room for a keyframe.
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(1),
            max_resends: 2,
        }
    }
}

/// What a [`SentCache`] has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SentCacheStats {
    /// Lookups answered.
    pub hits: u64,
    /// Lookups of numbers not (or no longer) held.
    pub misses: u64,
    /// Lookups refused: the frame was sent again `max_resends` times already.
    pub over_budget: u64,
}

/// The publisher's recently sent frames of one subscription, by number, bounded by count, bytes
/// and age. Holds whatever the caller gives it: a reference-counted frame, not a copy.
#[derive(Debug)]
pub struct SentCache<F> {
    limits: SentCacheLimits,
    /// (number, sent at, bytes, times resent, frame), oldest first.
    frames: VecDeque<(u32, Instant, usize, u8, F)>,
    bytes: usize,
    stats: SentCacheStats,
}

impl<F> Default for SentCache<F> {
    fn default() -> Self {
        Self::new(SentCacheLimits::default())
    }
}

impl<F> SentCache<F> {
    /// An empty cache.
    pub fn new(limits: SentCacheLimits) -> Self {
        SentCache {
            limits,
            frames: VecDeque::new(),
            bytes: 0,
            stats: SentCacheStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> SentCacheStats {
        self.stats
    }

    /// Frames held.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes held (as charged).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Frame `seq` was sent at `now`. Numbers are expected to increase by one; an older oldest
    /// frame is evicted to stay within the limits.
    pub fn insert(&mut self, now: Instant, seq: u32, frame: F, bytes: usize) {
        self.expire(now);
        if bytes > self.limits.max_bytes || self.limits.max_frames == 0 {
            return;
        }
        while self.frames.len() >= self.limits.max_frames
            || self.bytes + bytes > self.limits.max_bytes
        {
            self.pop();
        }
        self.frames.push_back((seq, now, bytes, 0, frame));
        self.bytes += bytes;
    }

    /// Frame `seq`, to send again, if still held at `now` and not yet sent again
    /// `max_resends` times.
    pub fn resend(&mut self, now: Instant, seq: u32) -> Option<&F> {
        self.expire(now);
        // Numbers only grow (with holes where a frame was not sent, and wrapping): ordered by
        // their distance from the oldest, so a binary search finds one, or its absence, in at
        // most 10 steps however the peer picks the numbers it asks for.
        let found = self.frames.front().and_then(|(first, ..)| {
            let (first, off) = (*first, seq.wrapping_sub(*first));
            self.frames
                .binary_search_by(|(s, ..)| s.wrapping_sub(first).cmp(&off))
                .ok()
        });
        let Some(i) = found else {
            self.stats.misses += 1;
            return None;
        };
        let max = self.limits.max_resends;
        let (.., resends, frame) = self.frames.get_mut(i)?;
        if *resends >= max {
            self.stats.over_budget += 1;
            return None;
        }
        *resends += 1;
        self.stats.hits += 1;
        Some(frame)
    }

    fn pop(&mut self) {
        if let Some((_, _, b, ..)) = self.frames.pop_front() {
            self.bytes -= b;
        }
    }

    fn expire(&mut self, now: Instant) {
        while self
            .frames
            .front()
            .is_some_and(|(_, t, ..)| now.saturating_duration_since(*t) >= self.limits.max_age)
        {
            self.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(10);
    const MS: Duration = Duration::from_millis(1);

    /// A repairer and a clock; frames are their own numbers.
    struct World {
        r: Repairer<u32>,
        t0: Instant,
        now: Instant,
        out: Vec<RepairEvent<u32>>,
    }

    impl World {
        fn new() -> Self {
            Self::with(RepairLimits::default())
        }

        fn with(limits: RepairLimits) -> Self {
            let t0 = Instant::now();
            World {
                r: Repairer::new(limits),
                t0,
                now: t0,
                out: Vec::new(),
            }
        }

        fn push(&mut self, seq: u32) -> Vec<RepairEvent<u32>> {
            let arrived = Arrived {
                sub: 1,
                seq,
                frame: seq,
                bytes: 1000,
            };
            self.r.push(self.now, RTT, arrived, &mut self.out);
            std::mem::take(&mut self.out)
        }

        fn at(&mut self, ms: u64) -> Vec<RepairEvent<u32>> {
            self.now = self.t0 + MS * ms as u32;
            self.r.poll(self.now, &mut self.out);
            std::mem::take(&mut self.out)
        }
    }

    fn d(seq: u32) -> RepairEvent<u32> {
        RepairEvent::Deliver { sub: 1, frame: seq }
    }

    fn nack(seqs: &[u32]) -> RepairEvent<u32> {
        RepairEvent::Nack {
            sub: 1,
            seqs: seqs.to_vec(),
        }
    }

    fn gap(lost: u32) -> RepairEvent<u32> {
        RepairEvent::Gap { sub: 1, lost }
    }

    #[test]
    fn in_order_frames_are_never_held() {
        let mut w = World::new();
        for seq in 1..=100 {
            assert_eq!(w.push(seq), vec![d(seq)]);
        }
        assert_eq!(w.r.next_timeout(), None);
        assert_eq!(w.r.held_frames(), 0);
        assert_eq!(w.r.stats(), RepairStats::default());
    }

    #[test]
    fn loss_repaired_in_time_is_delivered_in_order_without_a_gap() {
        let mut w = World::new();
        assert_eq!(w.push(1), vec![d(1)]);
        // 2 and 3 lost: asked for at once, 4 and 5 held.
        assert_eq!(w.push(4), vec![nack(&[2, 3])]);
        assert_eq!(w.push(5), vec![]);
        assert_eq!(w.r.held_frames(), 2);
        // Deadline 2 × 10 + 30 = 50 ms; the re-Nack at 25.
        assert_eq!(w.r.next_timeout(), Some(w.t0 + 25 * MS));
        assert_eq!(w.at(5), vec![]);
        assert_eq!(w.push(3), vec![]);
        assert_eq!(w.push(2), vec![d(2), d(3), d(4), d(5)]);
        assert_eq!(w.push(6), vec![d(6)]);
        assert_eq!(w.r.next_timeout(), None);
        assert_eq!(w.at(100), vec![]);
        let s = w.r.stats();
        assert_eq!((s.nacks, s.frames_nacked, s.frames_repaired), (1, 2, 2));
        assert_eq!((s.repairs_failed, s.late), (0, 0));
        assert_eq!(w.r.held_bytes(), 0);
    }

    #[test]
    fn a_repair_too_late_is_a_gap_then_the_held_frames_then_late_drops() {
        let mut w = World::new();
        w.push(10);
        assert_eq!(w.push(12), vec![nack(&[11])]);
        assert_eq!(w.push(13), vec![]);
        // Re-Nack once, half-way.
        assert_eq!(w.at(24), vec![]);
        assert_eq!(w.at(25), vec![nack(&[11])]);
        assert_eq!(w.r.next_timeout(), Some(w.t0 + 50 * MS));
        assert_eq!(w.at(49), vec![]);
        // The deadline: the gap first (the caller withholds until a keyframe), then the rest.
        assert_eq!(w.at(50), vec![gap(1), d(12), d(13)]);
        assert_eq!(w.r.next_timeout(), None);
        // The resend comes after all: dropped, counted late.
        assert_eq!(w.push(11), vec![]);
        assert_eq!(w.push(14), vec![d(14)]);
        let s = w.r.stats();
        assert_eq!((s.nacks, s.repairs_failed, s.late), (2, 1, 1));
        assert_eq!(s.frames_repaired, 0);
    }

    #[test]
    fn the_deadline_follows_the_round_trip_and_is_capped() {
        let l = RepairLimits::default();
        assert_eq!(l.deadline(Duration::ZERO), 30 * MS);
        assert_eq!(l.deadline(50 * MS), 130 * MS);
        assert_eq!(l.deadline(Duration::from_secs(3)), 200 * MS);
        assert_eq!(l.renack_after(50 * MS), 65 * MS);
    }

    #[test]
    fn reordering_is_repaired_by_the_late_frame_itself() {
        let mut w = World::new();
        w.push(1);
        assert_eq!(w.push(3), vec![nack(&[2])]);
        assert_eq!(w.push(2), vec![d(2), d(3)]);
        // The publisher's resend of 2 comes later: a duplicate, not a second delivery.
        assert_eq!(w.push(2), vec![]);
        let s = w.r.stats();
        assert_eq!((s.frames_repaired, s.duplicates, s.late), (1, 1, 0));
    }

    #[test]
    fn duplicates_are_dropped_held_or_delivered() {
        let mut w = World::new();
        w.push(1);
        assert_eq!(w.push(1), vec![]);
        assert_eq!(w.push(3), vec![nack(&[2])]);
        assert_eq!(w.push(3), vec![], "held already");
        assert_eq!(w.push(2), vec![d(2), d(3)]);
        assert_eq!(w.r.stats().duplicates, 2);
    }

    #[test]
    fn two_gaps_are_given_up_one_after_the_other() {
        let mut w = World::new();
        w.push(1);
        assert_eq!(w.push(3), vec![nack(&[2])]);
        w.at(20);
        assert_eq!(w.push(5), vec![nack(&[4])]);
        // 2 times out at 50 (its re-Nack went at 25); 3 follows it, 4 is still awaited.
        assert_eq!(w.at(25), vec![nack(&[2])]);
        assert_eq!(w.at(45), vec![nack(&[4])]);
        assert_eq!(w.at(50), vec![gap(1), d(3)]);
        // 4 is repaired: 4, 5 delivered.
        assert_eq!(w.push(4), vec![d(4), d(5)]);
        assert_eq!(w.r.next_timeout(), None);
    }

    #[test]
    fn a_burst_longer_than_the_hold_is_given_up_at_once() {
        let mut w = World::new();
        w.push(1);
        // 100 frames lost: more than a Nack may list. No repair: the gap and the frame.
        assert_eq!(w.push(102), vec![gap(100), d(102)]);
        assert_eq!(w.r.next_timeout(), None);
        assert_eq!(w.push(103), vec![d(103)]);
        // One lost, then more frames arrive than the hold takes.
        assert_eq!(w.push(105), vec![nack(&[104])]);
        let limit = RepairLimits::default().max_held_frames as u32;
        for seq in 106..105 + limit {
            assert_eq!(w.push(seq), vec![], "{seq}");
        }
        let out = w.push(105 + limit);
        assert_eq!(out.first(), Some(&gap(1)));
        assert_eq!(
            out.len(),
            2 + limit as usize,
            "the gap, then every frame held"
        );
        assert_eq!(out.last(), Some(&d(105 + limit)));
        assert_eq!(w.r.held_frames(), 0);
        assert_eq!(w.r.held_bytes(), 0);
        assert_eq!(w.r.stats().bursts_over_hold, 2);
        assert_eq!(w.push(104), vec![], "late");
        assert_eq!(w.r.stats().late, 1);
    }

    #[test]
    fn a_frame_filling_a_gap_when_the_hold_is_full_goes_out_in_its_place() {
        let mut w = World::with(RepairLimits {
            max_held_bytes: 2500,
            ..RepairLimits::default()
        });
        w.push(0);
        assert_eq!(w.push(3), vec![nack(&[1, 2])]);
        assert_eq!(w.push(6), vec![nack(&[4, 5])]);
        // 5 is repaired, but holding it is over the budget: give up 1, 2, 4, in order.
        assert_eq!(w.push(5), vec![gap(3), d(3), d(5), d(6)]);
        assert_eq!(w.push(7), vec![d(7)]);
        assert_eq!((w.r.held_bytes(), w.r.next_timeout()), (0, None));
    }

    #[test]
    fn a_jump_of_billions_is_one_gap_at_no_cost() {
        let mut w = World::new();
        w.push(1);
        assert_eq!(w.push(1 << 31), vec![gap((1 << 31) - 2), d(1 << 31)]);
        assert_eq!(w.push((1 << 31) + 1), vec![d((1 << 31) + 1)]);
    }

    #[test]
    fn losing_the_first_frames_is_a_gap_when_numbering_starts_at_a_known_number() {
        let mut w = World::with(RepairLimits {
            first_seq: Some(1),
            ..RepairLimits::default()
        });
        assert_eq!(w.push(3), vec![nack(&[1, 2])]);
        assert_eq!(w.push(1), vec![d(1)]);
        assert_eq!(w.at(50), vec![gap(1), d(3)]);
        // Without a known start, the first frame that arrives starts the count.
        let mut w = World::new();
        assert_eq!(w.push(3), vec![d(3)]);
    }

    #[test]
    fn the_byte_budget_bounds_the_hold() {
        let mut w = World::with(RepairLimits {
            max_held_bytes: 2500,
            ..RepairLimits::default()
        });
        w.push(1);
        assert_eq!(w.push(3), vec![nack(&[2])]);
        assert_eq!(w.push(4), vec![]);
        assert_eq!(w.push(5), vec![gap(1), d(3), d(4), d(5)]);
        assert!(w.r.held_bytes() == 0);
    }

    #[test]
    fn numbering_wraps() {
        let mut w = World::new();
        w.push(u32::MAX - 1);
        assert_eq!(w.push(1), vec![nack(&[u32::MAX, 0])]);
        assert_eq!(w.push(0), vec![]);
        assert_eq!(w.push(u32::MAX), vec![d(u32::MAX), d(0), d(1)]);
    }

    #[test]
    fn subscriptions_are_independent_and_removable() {
        let t = Instant::now();
        let mut r: Repairer<u32> = Repairer::default();
        let mut out = Vec::new();
        for (sub, seq) in [(1, 1), (1, 3), (2, 7), (2, 8)] {
            let arrived = Arrived {
                sub,
                seq,
                frame: seq,
                bytes: 10,
            };
            r.push(t, RTT, arrived, &mut out);
        }
        assert_eq!(
            out,
            vec![
                RepairEvent::Deliver { sub: 1, frame: 1 },
                RepairEvent::Nack {
                    sub: 1,
                    seqs: vec![2]
                },
                RepairEvent::Deliver { sub: 2, frame: 7 },
                RepairEvent::Deliver { sub: 2, frame: 8 },
            ]
        );
        assert_eq!(r.held_bytes(), 10);
        r.retain(|s| s == 2);
        assert_eq!((r.held_bytes(), r.subscriptions()), (0, 1));
        assert_eq!(r.next_timeout(), None);
    }

    #[test]
    fn the_sent_cache_is_bounded_by_count_bytes_and_age() {
        let t0 = Instant::now();
        let mut c = SentCache::new(SentCacheLimits {
            max_frames: 4,
            max_bytes: 1000,
            max_age: Duration::from_secs(1),
            max_resends: 2,
        });
        for seq in 1..=6 {
            c.insert(t0, seq, seq, 100);
        }
        assert_eq!(c.len(), 4);
        assert_eq!(c.resend(t0, 2), None, "evicted by count");
        assert_eq!(c.resend(t0, 3), Some(&3));
        assert_eq!(c.resend(t0, 6), Some(&6));
        c.insert(t0, 7, 7, 800);
        assert_eq!(c.bytes(), 1000, "evicted by bytes");
        assert_eq!(c.resend(t0, 5), Some(&5));
        assert_eq!(c.resend(t0, 4), None);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(c.resend(later, 7), None, "expired");
        assert!(c.is_empty());
        // Too large to keep at all.
        c.insert(later, 8, 8, 1001);
        assert!(c.is_empty());
        assert_eq!(
            c.stats(),
            SentCacheStats {
                hits: 3,
                misses: 3,
                over_budget: 0
            }
        );
        // Wrapping numbers and a hole (a frame that was not sent).
        c.insert(later, u32::MAX, 1, 1);
        c.insert(later, 1, 2, 1);
        assert_eq!(c.resend(later, 1), Some(&2));
        assert_eq!(c.resend(later, 0), None);
        // A frame goes out again at most twice, however often it is asked for.
        assert_eq!(c.resend(later, 1), Some(&2));
        assert_eq!(c.resend(later, 1), None);
        assert_eq!(c.stats().over_budget, 1);
    }

    #[test]
    fn every_held_number_is_found_across_holes_and_the_wrap() {
        let t0 = Instant::now();
        let mut c = SentCache::new(SentCacheLimits {
            max_frames: 512,
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(1),
            max_resends: 1,
        });
        // 300 numbers around the wrap, every seventh one not sent.
        let start = u32::MAX - 150;
        let sent: Vec<u32> = (0..300u32)
            .map(|i| start.wrapping_add(i))
            .filter(|n| n % 7 != 0)
            .collect();
        for n in &sent {
            c.insert(t0, *n, *n, 1);
        }
        for i in 0..320u32 {
            let n = start.wrapping_sub(10).wrapping_add(i);
            let expect = sent.contains(&n).then_some(n);
            assert_eq!(c.resend(t0, n).copied(), expect, "number {n}");
        }
        assert_eq!(c.stats().hits, sent.len() as u64);
    }

    /// Deterministic randomized check: under loss, reordering and duplicates, frames come out
    /// in increasing order, each at most once, the hold stays within its bounds, and every
    /// number is either delivered or counted in a `Gap`.
    #[test]
    fn random_loss_reorder_and_duplicates_keep_order_and_bounds() {
        let mut rng = crate::test_rng::Rng::new(0x5eed);
        let limits = RepairLimits {
            max_held_frames: 16,
            ..RepairLimits::default()
        };
        let mut w = World::with(limits);
        let mut delivered: Vec<u32> = Vec::new();
        let mut gaps: u64 = 0;
        let mut pending: Vec<u32> = Vec::new();
        let mut ms = 0u64;
        let note = |out: Vec<RepairEvent<u32>>, delivered: &mut Vec<u32>, gaps: &mut u64| {
            for e in out {
                match e {
                    RepairEvent::Deliver { frame, .. } => delivered.push(frame),
                    RepairEvent::Gap { lost, .. } => *gaps += u64::from(lost),
                    RepairEvent::Nack { seqs, .. } => assert!(seqs.len() <= MAX_NACK_FRAMES),
                }
            }
        };
        for seq in 1..=5000u32 {
            // 5 % lost, the rest delayed by up to 3 frames, 2 % sent twice.
            if rng.below(20) != 0 {
                pending.push(seq);
                if rng.below(50) == 0 {
                    pending.push(seq);
                }
            }
            while pending.len() > rng.below(4) {
                let i = rng.below(pending.len());
                let s = pending.swap_remove(i);
                let out = w.push(s);
                note(out, &mut delivered, &mut gaps);
            }
            ms += 5;
            let out = w.at(ms);
            note(out, &mut delivered, &mut gaps);
            assert!(w.r.held_frames() <= 16);
        }
        for s in std::mem::take(&mut pending) {
            let out = w.push(s);
            note(out, &mut delivered, &mut gaps);
        }
        let out = w.at(ms + 1000);
        note(out, &mut delivered, &mut gaps);
        assert!(delivered.windows(2).all(|p| p[0] < p[1]), "in order, once");
        let (first, last) = (delivered[0], *delivered.last().expect("frames delivered"));
        assert_eq!(
            delivered.len() as u64 + gaps,
            u64::from(last - first + 1),
            "every number delivered or in a gap"
        );
        let s = w.r.stats();
        assert!(s.frames_repaired > 0 && s.repairs_failed > 0, "{s:?}");
        assert_eq!(w.r.held_frames(), 0);
    }
}
