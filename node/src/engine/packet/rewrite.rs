//! One subscriber's outgoing stream: which source it follows, and the sequence numbers and RTP
//! timestamps its packets get.
//!
//! A subscriber's stream outlives what feeds it: a simulcast layer switch, a new upstream after
//! a hub failover, a publisher that restarts (new SSRC, new timestamps) all change the source,
//! while the viewer must see one stream whose numbers go on. So each packet's sequence number
//! and timestamp are mapped through offsets chosen at every switch:
//!
//! - sequence numbers continue at the last one sent + 1, then follow the source's: a packet the
//!   source lost stays a gap of the same size, so the viewer NACKs it;
//! - timestamps continue at the last one sent + the wall time elapsed since it was sent (in the
//!   clock rate, at least 1), then follow the source's: never backwards;
//! - a packet of the new source older than its switch point would map onto numbers already
//!   sent: dropped. Packets reordered within [`REORDER_WINDOW`] keep their relative order, and
//!   duplicates are dropped.
//!
//! Switches happen only at a keyframe start of the new source: the caller decides (it knows the
//! codec and the layer choice) and says "switch now". Sequence numbers are extended (64-bit)
//! and the first one is below 2^16, so str0m's SRTP starts with a rollover counter of 0 (str0m
//! 0.25's `RtpWrite` needs exactly that, see BENCHMARKS.md "str0m frame mode vs RTP mode").

use std::time::{Duration, Instant};

use crate::engine::simulcast::MAX_TIME_DRIFT;

/// Source packets behind the newest one that are still taken (reordered, or repaired by the
/// publisher's RTX). 512 packets are about 1.3 s of a 4 Mbit/s layer, more than the 625 ms a
/// repair can still use (`repair_window.rs`); the bitmap costs 64 bytes per subscriber.
pub const REORDER_WINDOW: u64 = 512;
/// A source's sequence number that moves this far (either way) is not loss or reordering but a
/// restart the caller did not report: its numbering is re-based as at a switch. Half of the
/// distance at which SRTP's rollover guess fails (2^15), so a viewer never loses its ROC.
pub const MAX_SEQ_JUMP: u64 = 1 << 14;
/// The most a timestamp advances at a switch: half the signed 32-bit range, so the viewer
/// still reads it as forward.
const MAX_TIME_STEP: u64 = 1 << 30;

/// What a subscriber's packets come from: a layer of a local publication, or a relayed upstream.
/// `epoch` changes when the same source starts over (SSRC change, time jump, new upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceId {
    /// Opaque to the rewriter; the caller's key for the source (wide enough for a publication
    /// and a rid together).
    pub id: u128,
    /// Bumped by the caller when the source restarts.
    pub epoch: u32,
}

/// One source packet, as the rewriter needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    /// The source it comes from.
    pub source: SourceId,
    /// The source's extended sequence number (str0m's `RtpPacket::seq_no`, or [`extend_seq`]).
    pub seq: u64,
    /// The source's RTP timestamp (wraps at 2^32).
    pub time: u32,
    /// When it was received.
    pub arrival: Instant,
}

/// The subscriber's header fields for a forwarded packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    /// Extended: hand to `RtpWrite::new` as a `SeqNo`.
    pub seq: u64,
    /// The RTP timestamp.
    pub time: u32,
    /// The first packet from this source (a switch, or the very first packet).
    pub switched: bool,
    /// The source's sequence number or timestamp jumped without a switch: the numbering was
    /// re-based here. The caller counts it; a VP8 rewrite restarts as at a switch.
    pub resynced: bool,
}

/// Why a packet is not forwarded to this subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// From a source the subscriber does not follow (and the caller did not switch).
    NotFollowed,
    /// From the followed source, but older than the packet it was switched on.
    BeforeSwitch,
    /// Already forwarded.
    Duplicate,
    /// Further behind the newest packet than [`REORDER_WINDOW`].
    TooLate,
}

/// What to do with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    /// Send it with these header fields.
    Forward(Mapped),
    /// Do not send it to this subscriber (the caller counts why).
    Drop(Dropped),
}

/// The newest packet sent: where the numbering goes on from at a switch.
#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u64,
    time: u32,
    arrival: Instant,
}

/// The source followed and its mapping.
#[derive(Debug, Clone)]
struct Follow {
    source: SourceId,
    /// Added (wrapping) to the source's sequence number / timestamp.
    seq_offset: u64,
    time_offset: u32,
    /// The source's sequence number the subscriber switched (or re-based) on.
    start: u64,
    /// The newest source packet forwarded: its sequence number and timestamp.
    highest: u64,
    highest_time: u32,
    seen: Seen,
}

/// One subscriber's outgoing stream mapping (per subscriber and mid).
#[derive(Debug, Clone)]
pub struct Rewriter {
    first_seq: u16,
    follow: Option<Follow>,
    sent: Option<Sent>,
}

impl Rewriter {
    /// A stream whose first packet gets sequence number `first_seq` (a random start is usual;
    /// any `u16` keeps the rollover counter at 0).
    pub fn new(first_seq: u16) -> Self {
        Rewriter {
            first_seq,
            follow: None,
            sent: None,
        }
    }

    /// The source followed, if any.
    pub fn source(&self) -> Option<SourceId> {
        self.follow.as_ref().map(|f| f.source)
    }

    /// Stops following the current source: the next packet handed to [`Self::rewrite`] starts
    /// it again (even from the same source), numbered on from the last one sent. For packets
    /// the caller held back on purpose (delta frames a viewer cannot decode while it waits for
    /// a keyframe, after a cached keyframe it was served): those are not loss, so the viewer
    /// must not see a gap to NACK.
    pub fn detach(&mut self) {
        self.follow = None;
    }

    /// Maps one packet. `switch`: the caller moves the subscriber to this packet's source now
    /// (it starts a keyframe). The first packet a rewriter sees starts its source either way; a
    /// switch to the source already followed changes nothing.
    pub fn rewrite(&mut self, p: &Packet, clock_hz: u32, switch: bool) -> Rewrite {
        let Some(f) = self.follow.as_mut() else {
            return Rewrite::Forward(self.start(p, clock_hz, false));
        };
        if f.source != p.source {
            if switch {
                return Rewrite::Forward(self.start(p, clock_hz, false));
            }
            return Rewrite::Drop(Dropped::NotFollowed);
        }
        let ahead = p.seq.abs_diff(f.highest);
        if ahead > MAX_SEQ_JUMP {
            return Rewrite::Forward(self.start(p, clock_hz, true));
        }
        if p.seq <= f.highest {
            if p.seq < f.start {
                return Rewrite::Drop(Dropped::BeforeSwitch);
            }
            if ahead >= REORDER_WINDOW {
                return Rewrite::Drop(Dropped::TooLate);
            }
            if !f.seen.mark(p.seq) {
                return Rewrite::Drop(Dropped::Duplicate);
            }
            return Rewrite::Forward(Mapped {
                seq: p.seq.wrapping_add(f.seq_offset),
                time: p.time.wrapping_add(f.time_offset),
                switched: false,
                resynced: false,
            });
        }
        // A newer packet. Its timestamp should have moved about as far as the wall clock did
        // since the newest one; much further either way is a restart of the source's clock.
        let mut resynced = false;
        if let Some(sent) = self.sent {
            let elapsed = ticks(p.arrival.saturating_duration_since(sent.arrival), clock_hz);
            let moved = i64::from(p.time.wrapping_sub(f.highest_time) as i32);
            let drift = ticks(MAX_TIME_DRIFT, clock_hz);
            if moved.abs_diff(i64::try_from(elapsed).unwrap_or(i64::MAX)) > drift {
                let time = sent.time.wrapping_add(step(elapsed));
                f.time_offset = time.wrapping_sub(p.time);
                resynced = true;
            }
        }
        f.seen.advance(f.highest, p.seq);
        f.highest = p.seq;
        f.highest_time = p.time;
        let mapped = Mapped {
            seq: p.seq.wrapping_add(f.seq_offset),
            time: p.time.wrapping_add(f.time_offset),
            switched: false,
            resynced,
        };
        self.sent = Some(Sent {
            seq: mapped.seq,
            time: mapped.time,
            arrival: p.arrival,
        });
        Rewrite::Forward(mapped)
    }

    /// Follows `p`'s source from `p` on, continuing the numbering sent so far.
    fn start(&mut self, p: &Packet, clock_hz: u32, resynced: bool) -> Mapped {
        let (seq, time) = match self.sent {
            None => (u64::from(self.first_seq), p.time),
            Some(sent) => {
                let elapsed = ticks(p.arrival.saturating_duration_since(sent.arrival), clock_hz);
                (
                    sent.seq.saturating_add(1),
                    sent.time.wrapping_add(step(elapsed)),
                )
            }
        };
        self.follow = Some(Follow {
            source: p.source,
            seq_offset: seq.wrapping_sub(p.seq),
            time_offset: time.wrapping_sub(p.time),
            start: p.seq,
            highest: p.seq,
            highest_time: p.time,
            seen: Seen::starting_at(p.seq),
        });
        self.sent = Some(Sent {
            seq,
            time,
            arrival: p.arrival,
        });
        Mapped {
            seq,
            time,
            switched: !resynced,
            resynced,
        }
    }
}

/// How far a timestamp moves at a switch after `elapsed` ticks: at least 1 (a new frame never
/// shares the previous one's time), at most [`MAX_TIME_STEP`].
fn step(elapsed: u64) -> u32 {
    u32::try_from(elapsed.clamp(1, MAX_TIME_STEP)).unwrap_or(1)
}

/// `d` in ticks of a `clock_hz` clock.
fn ticks(d: Duration, clock_hz: u32) -> u64 {
    let t = d.as_nanos().saturating_mul(u128::from(clock_hz.max(1))) / 1_000_000_000;
    u64::try_from(t).unwrap_or(u64::MAX)
}

/// Extends a 16-bit sequence number to 64 bits next to the previous extended one (`None` for
/// a source's first packet): the candidate nearest to it. For sources that carry only the
/// 16-bit value (str0m's received packets are already extended).
pub fn extend_seq(previous: Option<u64>, seq: u16) -> u64 {
    let Some(prev) = previous else {
        return u64::from(seq);
    };
    let candidate = (prev & !0xffff) | u64::from(seq);
    if candidate > prev && candidate - prev > 1 << 15 && candidate >= 1 << 16 {
        candidate - (1 << 16)
    } else if candidate < prev && prev - candidate > 1 << 15 {
        candidate.saturating_add(1 << 16)
    } else {
        candidate
    }
}

/// Which of the last [`REORDER_WINDOW`] source sequence numbers were forwarded: a ring bitmap
/// indexed by sequence number.
#[derive(Debug, Clone)]
struct Seen {
    bits: [u64; (REORDER_WINDOW / 64) as usize],
}

impl Seen {
    fn starting_at(seq: u64) -> Self {
        let mut s = Seen {
            bits: [0; (REORDER_WINDOW / 64) as usize],
        };
        s.set(seq);
        s
    }

    fn slot(seq: u64) -> (usize, u64) {
        let i = seq % REORDER_WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn set(&mut self, seq: u64) {
        let (word, bit) = Self::slot(seq);
        if let Some(w) = self.bits.get_mut(word) {
            *w |= bit;
        }
    }

    /// Marks `seq` (at most [`REORDER_WINDOW`] behind `highest`); false when already marked.
    fn mark(&mut self, seq: u64) -> bool {
        let (word, bit) = Self::slot(seq);
        match self.bits.get_mut(word) {
            Some(w) if *w & bit == 0 => {
                *w |= bit;
                true
            }
            _ => false,
        }
    }

    /// The newest is now `seq` (> `highest`): the slots it skipped become unseen (lost so far).
    fn advance(&mut self, highest: u64, seq: u64) {
        if seq - highest >= REORDER_WINDOW {
            self.bits = [0; (REORDER_WINDOW / 64) as usize];
        } else {
            for s in highest + 1..seq {
                let (word, bit) = Self::slot(s);
                if let Some(w) = self.bits.get_mut(word) {
                    *w &= !bit;
                }
            }
        }
        let (word, bit) = Self::slot(seq);
        if let Some(w) = self.bits.get_mut(word) {
            *w |= bit;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIDEO: u32 = 90_000;
    const A: SourceId = SourceId { id: 1, epoch: 0 };
    const B: SourceId = SourceId { id: 2, epoch: 0 };

    /// A source sending 30 fps, 3 packets per frame, from `seq` / `time`, starting at `at`.
    struct Source {
        id: SourceId,
        seq: u64,
        time: u32,
        at: Instant,
        in_frame: u32,
    }

    impl Source {
        fn new(id: SourceId, seq: u64, time: u32, at: Instant) -> Self {
            Source {
                id,
                seq,
                time,
                at,
                in_frame: 0,
            }
        }

        fn next(&mut self) -> Packet {
            let p = Packet {
                source: self.id,
                seq: self.seq,
                time: self.time,
                arrival: self.at,
            };
            self.seq += 1;
            self.in_frame += 1;
            if self.in_frame == 3 {
                self.in_frame = 0;
                self.time = self.time.wrapping_add(3000);
                self.at += Duration::from_micros(33_333);
            }
            p
        }
    }

    fn forward(r: &mut Rewriter, p: &Packet, switch: bool) -> Mapped {
        match r.rewrite(p, VIDEO, switch) {
            Rewrite::Forward(m) => m,
            Rewrite::Drop(d) => panic!("{p:?} dropped: {d:?}"),
        }
    }

    /// Every step: the sequence number grows by exactly one, the timestamp never goes back.
    fn assert_continuous(out: &[Mapped]) {
        for pair in out.windows(2) {
            let [a, b] = pair else { continue };
            assert_eq!(b.seq, a.seq + 1, "{a:?} -> {b:?}");
            assert!(
                (b.time.wrapping_sub(a.time) as i32) >= 0,
                "time goes back: {a:?} -> {b:?}"
            );
        }
        assert!(out.first().is_some_and(|m| m.seq < 1 << 16), "ROC is not 0");
    }

    #[test]
    fn a_layer_switch_continues_numbering_and_timestamps() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(100);
        let mut low = Source::new(A, 5_000, 1_000_000, t0);
        let mut high = Source::new(B, 60_000, 4_000_000_000, t0);
        let mut out = Vec::new();
        for _ in 0..30 {
            out.push(forward(&mut r, &low.next(), false));
            // The other layer's packets (not followed yet) are dropped.
            assert_eq!(
                r.rewrite(&high.next(), VIDEO, false),
                Rewrite::Drop(Dropped::NotFollowed)
            );
        }
        let last = *out.last().expect("sent");
        // The switch, at the other layer's keyframe start one frame later.
        high.at = low.at;
        let first_high = high.next();
        let m = forward(&mut r, &first_high, true);
        assert!(m.switched);
        assert_eq!(m.seq, last.seq + 1);
        // One frame interval (33.333 ms) after the last packet sent.
        assert_eq!(m.time.wrapping_sub(last.time), 2_999);
        out.push(m);
        for _ in 0..30 {
            out.push(forward(&mut r, &high.next(), false));
            assert_eq!(
                r.rewrite(&low.next(), VIDEO, false),
                Rewrite::Drop(Dropped::NotFollowed)
            );
        }
        assert_continuous(&out);
        assert_eq!(out.first().map(|m| m.seq), Some(100));
        assert_eq!(r.source(), Some(B));
    }

    #[test]
    fn an_upstream_change_to_an_unrelated_source_keeps_the_stream_continuous() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(65_530);
        let mut hub1 = Source::new(SourceId { id: 7, epoch: 0 }, 12, 77, t0);
        let mut out: Vec<Mapped> = (0..20)
            .map(|_| forward(&mut r, &hub1.next(), false))
            .collect();
        // Failover: the new upstream's numbering and clock have nothing in common, and its first
        // keyframe comes 400 ms after the last packet of the old one.
        let gap = Duration::from_millis(400);
        let mut hub2 = Source::new(
            SourceId { id: 8, epoch: 0 },
            40_000,
            3_000_000_000,
            hub1.at + gap,
        );
        let last = *out.last().expect("sent");
        let m = forward(&mut r, &hub2.next(), true);
        assert_eq!(m.time.wrapping_sub(last.time), 36_000, "400 ms at 90 kHz");
        out.push(m);
        out.extend((0..20).map(|_| forward(&mut r, &hub2.next(), false)));
        assert_continuous(&out);
        // The extended numbering crossed 2^16 with the source: no wrap back to 0.
        assert!(out.last().is_some_and(|m| m.seq > 1 << 16));
        // A late packet of the old upstream is not taken.
        assert_eq!(
            r.rewrite(&hub1.next(), VIDEO, false),
            Rewrite::Drop(Dropped::NotFollowed)
        );
    }

    #[test]
    fn a_publisher_restart_with_a_time_jump_goes_on_from_the_wall_clock() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(1);
        let mut before = Source::new(A, 30_000, 500_000, t0);
        let mut out: Vec<Mapped> = (0..15)
            .map(|_| forward(&mut r, &before.next(), false))
            .collect();
        let last = *out.last().expect("sent");
        // The caller saw a new SSRC: same track, next epoch; numbering and clock start over.
        let restarted = SourceId { id: A.id, epoch: 1 };
        let mut after = Source::new(restarted, 3, 0, before.at + Duration::from_secs(2));
        let m = forward(&mut r, &after.next(), true);
        assert!(m.switched);
        // The last packet sent was one frame interval before `before.at`.
        assert_eq!(
            m.time.wrapping_sub(last.time),
            180_000 + 2_999,
            "2.033 s at 90 kHz"
        );
        out.push(m);
        out.extend((0..15).map(|_| forward(&mut r, &after.next(), false)));
        assert_continuous(&out);
    }

    #[test]
    fn a_restart_the_caller_missed_is_re_based_too() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(1);
        let mut src = Source::new(A, 40_000, 900_000, t0);
        let mut out: Vec<Mapped> = (0..9)
            .map(|_| forward(&mut r, &src.next(), false))
            .collect();
        // Same source id and epoch, but the timestamp jumps by an hour (a sender's clock reset).
        src.time = src.time.wrapping_add(3600 * VIDEO);
        let m = forward(&mut r, &src.next(), false);
        assert!(m.resynced);
        out.push(m);
        out.extend((0..5).map(|_| forward(&mut r, &src.next(), false)));
        // And its sequence numbers restart far back.
        src.seq = 10;
        let m = forward(&mut r, &src.next(), false);
        assert!(m.resynced);
        out.push(m);
        out.extend((0..5).map(|_| forward(&mut r, &src.next(), false)));
        assert_continuous(&out);
    }

    #[test]
    fn real_loss_stays_a_gap_of_the_same_size() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(10);
        let mut src = Source::new(A, 200, 0, t0);
        let packets: Vec<Packet> = (0..12).map(|_| src.next()).collect();
        let mut out = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            // Packets 4, 5 and 9 are lost upstream.
            if !matches!(i, 4 | 5 | 9) {
                out.push((i, forward(&mut r, p, false)));
            }
        }
        for pair in out.windows(2) {
            let [(i, a), (j, b)] = pair else { continue };
            assert_eq!(b.seq - a.seq, (j - i) as u64);
        }
        // A switch after loss continues from the newest packet sent, not the lost ones.
        let m = forward(
            &mut r,
            &Packet {
                source: B,
                seq: 9,
                time: 5,
                arrival: src.at,
            },
            true,
        );
        assert_eq!(Some(m.seq), out.last().map(|(_, m)| m.seq + 1));
    }

    #[test]
    fn reordered_packets_keep_their_order_and_duplicates_are_dropped() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(500);
        let mut src = Source::new(A, 1_000, 0, t0);
        let p: Vec<Packet> = (0..8).map(|_| src.next()).collect();
        let mut sent = Vec::new();
        for i in [0, 1, 3, 2, 5, 4, 4, 6, 2, 7] {
            match r.rewrite(&p[i], VIDEO, false) {
                Rewrite::Forward(m) => sent.push((i, m)),
                Rewrite::Drop(d) => assert_eq!((i, d), (i, Dropped::Duplicate)),
            }
        }
        assert_eq!(sent.len(), 8, "each packet once: {sent:?}");
        for (i, m) in &sent {
            // The same position relative to the first packet: reordering is preserved.
            assert_eq!(m.seq, 500 + *i as u64);
            assert_eq!(m.time, p[*i].time);
        }
    }

    #[test]
    fn packets_older_than_the_switch_point_or_the_window_are_dropped() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(1);
        let mut a = Source::new(A, 10, 0, t0);
        for _ in 0..5 {
            forward(&mut r, &a.next(), false);
        }
        let mut b = Source::new(B, 3_000, 0, a.at);
        let b0 = b.next();
        let b1 = b.next();
        let switched = forward(&mut r, &b1, true);
        // b0 arrives late: it precedes the switch point; numbers before the switch are taken.
        assert_eq!(
            r.rewrite(&b0, VIDEO, false),
            Rewrite::Drop(Dropped::BeforeSwitch)
        );
        let mut newest = switched;
        let mut first_after = None;
        for _ in 0..600 {
            let p = b.next();
            first_after.get_or_insert(p);
            newest = forward(&mut r, &p, false);
        }
        assert!(newest.seq > switched.seq);
        // More than REORDER_WINDOW behind: too late to tell apart from a duplicate.
        let late = first_after.expect("sent");
        assert_eq!(
            r.rewrite(&late, VIDEO, false),
            Rewrite::Drop(Dropped::TooLate)
        );
    }

    #[test]
    fn a_repaired_packet_fills_its_gap_late() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(1);
        let mut src = Source::new(A, 100, 0, t0);
        let lost = {
            forward(&mut r, &src.next(), false);
            src.next()
        };
        for _ in 0..300 {
            forward(&mut r, &src.next(), false);
        }
        // 300 packets later the publisher's RTX brings it: it takes the number left for it.
        let m = forward(&mut r, &lost, false);
        assert_eq!(m.seq, 2);
        assert_eq!(
            r.rewrite(&lost, VIDEO, false),
            Rewrite::Drop(Dropped::Duplicate)
        );
    }

    #[test]
    fn source_wraparound_of_16_bit_sequence_numbers_and_32_bit_timestamps() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(40_000);
        // A source that carries only 16-bit numbers, just before both wrap.
        let (mut seq16, mut time) = (65_530u16, u32::MAX - 6_000);
        let mut ext = None;
        let mut at = t0;
        let mut out = Vec::new();
        for i in 0..30u32 {
            let seq = extend_seq(ext, seq16);
            ext = Some(seq);
            out.push(forward(
                &mut r,
                &Packet {
                    source: A,
                    seq,
                    time,
                    arrival: at,
                },
                false,
            ));
            seq16 = seq16.wrapping_add(1);
            if i % 3 == 2 {
                time = time.wrapping_add(3000);
                at += Duration::from_micros(33_333);
            }
        }
        assert_continuous(&out);
        assert!(out.iter().all(|m| !m.resynced), "a wrap is not a jump");
        // The subscriber's own numbers crossed 2^16 too, and stay extended.
        assert_eq!(out.last().map(|m| m.seq), Some(40_029));
        // A reordered packet from before the wrap still maps below the ones after it.
        let before_wrap = extend_seq(ext, 65_535);
        assert_eq!(before_wrap, 65_535);
        assert_eq!(
            r.rewrite(
                &Packet {
                    source: A,
                    seq: before_wrap,
                    time: u32::MAX - 3000,
                    arrival: at
                },
                VIDEO,
                false
            ),
            Rewrite::Drop(Dropped::Duplicate)
        );
    }

    #[test]
    fn packets_held_back_after_a_detach_leave_no_gap() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(1);
        let mut src = Source::new(A, 900, 0, t0);
        let mut out: Vec<Mapped> = (0..6)
            .map(|_| forward(&mut r, &src.next(), false))
            .collect();
        // The viewer was served a cached keyframe that live frames already followed: it skips
        // the live deltas until the next keyframe.
        r.detach();
        let skipped: Vec<Packet> = (0..9).map(|_| src.next()).collect();
        let m = forward(&mut r, &src.next(), false);
        assert!(m.switched);
        out.push(m);
        out.extend((0..6).map(|_| forward(&mut r, &src.next(), false)));
        assert_continuous(&out);
        // A held-back packet arriving late is before the new start.
        assert_eq!(
            r.rewrite(&skipped[8], VIDEO, false),
            Rewrite::Drop(Dropped::BeforeSwitch)
        );
    }

    #[test]
    fn extend_seq_follows_wraps_both_ways() {
        assert_eq!(extend_seq(None, 65_535), 65_535);
        assert_eq!(extend_seq(Some(65_535), 0), 65_536);
        assert_eq!(extend_seq(Some(65_536), 65_535), 65_535);
        assert_eq!(extend_seq(Some(3), 65_000), 65_000);
        assert_eq!(extend_seq(Some(200_000), 100), 196_708);
        assert_eq!(extend_seq(Some(u64::MAX), 0), u64::MAX);
    }

    #[test]
    fn a_switch_right_after_the_last_packet_still_moves_the_timestamp() {
        let t0 = Instant::now();
        let mut r = Rewriter::new(1);
        let a0 = forward(
            &mut r,
            &Packet {
                source: A,
                seq: 1,
                time: 50,
                arrival: t0,
            },
            false,
        );
        // Same instant, and a source whose clock is behind: one tick on, never back.
        let b0 = forward(
            &mut r,
            &Packet {
                source: B,
                seq: 9,
                time: 0,
                arrival: t0,
            },
            true,
        );
        assert_eq!((b0.seq, b0.time), (a0.seq + 1, a0.time + 1));
        // Switching to the source already followed changes nothing.
        let b1 = forward(
            &mut r,
            &Packet {
                source: B,
                seq: 10,
                time: 3000,
                arrival: t0,
            },
            true,
        );
        assert!(!b1.switched);
        assert_eq!((b1.seq, b1.time), (b0.seq + 1, b0.time + 3000));
    }
}
