//! A per-track (per simulcast layer) cache of recent packets, shared by the track's subscribers:
//! each payload is an `Arc` that every subscriber's send stream also holds, so the bytes exist
//! once per track, not once per subscriber.
//!
//! Two uses:
//! - **repair**: a packet looked up by its source sequence number (a relay NACK from a
//!   downstream node; a subscriber's NACK, if str0m ever lets the application answer them). A
//!   repair helps only while the receiver still waits, so the cache holds a repair window of
//!   packets ([`Bounds`]) and evicts the oldest beyond it;
//! - **the edge keyframe cache**: the packets of the newest keyframe, from its first packet to
//!   the end of that frame, so a joining viewer starts at once. They are kept apart from the
//!   window (a publisher may send a keyframe only every few seconds, or only when asked), as
//!   references to the same payloads, bounded like today's cached keyframe (1 MiB).
//!
//! Nothing grows without bound: past any bound the oldest packets go, and a keyframe too large
//! for its bound is not cached.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::keyframe::Start;
use crate::engine::MAX_CACHED_KEYFRAME;
use crate::engine::repair_window;

/// Most packets of one keyframe kept (a 1 MiB keyframe in 1,200-byte packets is about 900).
pub const MAX_KEYFRAME_PACKETS: usize = 1024;

/// How much of a track's recent packets the repair window holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Most packets.
    pub packets: usize,
    /// Most payload bytes.
    pub bytes: usize,
    /// Packets that arrived longer ago than this before the newest one are evicted.
    pub age: Duration,
}

impl Default for Bounds {
    /// The window a repair can use before any round trip is measured (625 ms, the same rule
    /// as each subscriber's str0m history: `repair_window.rs`). A caller that knows its
    /// subscribers' round trips would size it to the largest `repair_window::window_for` (at
    /// most 1.5 s). 625 ms of a 2.5 Mbit/s layer is about 200 KB in about 170 packets; the count
    /// and byte bounds leave room for 10 Mbit/s (about 800 KB in 650 packets) and stop a sender
    /// of tiny or huge packets from holding more.
    fn default() -> Self {
        Bounds {
            packets: 1024,
            bytes: 1 << 20,
            age: repair_window::window_for(None),
        }
    }
}

/// One cached packet: what the forwarding path needs to send it again to any subscriber.
#[derive(Debug, Clone)]
pub struct Cached<H> {
    /// The source's extended sequence number.
    pub seq: u64,
    /// The source's RTP timestamp.
    pub time: u32,
    /// The RTP marker bit: the last packet of a frame.
    pub marker: bool,
    /// What the packet starts ([`super::keyframe::inspect`]).
    pub start: Start,
    /// When it was received.
    pub arrival: Instant,
    /// The RTP payload, shared with every send stream that was handed it.
    pub payload: Arc<[u8]>,
    /// The caller's other header fields (payload type, header extension values to copy).
    pub header: H,
}

/// What [`PacketCache::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// Now in the window (and in the keyframe, if it belongs to it).
    Added,
    /// Already cached.
    Duplicate,
    /// Not newer than a packet already evicted: a repair of it would come too late anyway.
    TooOld,
}

/// The packets of the newest keyframe.
#[derive(Debug)]
pub struct Keyframe<'a, H> {
    /// In sequence order, from the keyframe's first packet.
    pub packets: &'a [Cached<H>],
    /// All of its packets are here: no gap, and the last one ends the frame (marker bit).
    pub complete: bool,
    /// Frames that started after it: if any, the live packets that follow build on frames a
    /// viewer served this keyframe never got (it waits for the next keyframe instead).
    pub frames_after: u32,
}

#[derive(Debug)]
struct KeyframeSlot<H> {
    time: u32,
    first: u64,
    packets: Vec<Cached<H>>,
    bytes: usize,
    frames_after: u32,
}

/// The cache of one track or simulcast layer.
#[derive(Debug)]
pub struct PacketCache<H> {
    bounds: Bounds,
    /// In sequence number order.
    window: VecDeque<Cached<H>>,
    bytes: usize,
    keyframe: Option<KeyframeSlot<H>>,
    /// The newest sequence number evicted so far: anything up to it is refused.
    evicted_through: Option<u64>,
    /// Packets evicted by a bound before their age (the window was too small for the rate).
    pub evicted_early: u64,
}

impl<H: Clone> PacketCache<H> {
    /// An empty cache within `bounds`.
    pub fn new(bounds: Bounds) -> Self {
        PacketCache {
            bounds,
            window: VecDeque::new(),
            bytes: 0,
            keyframe: None,
            evicted_through: None,
            evicted_early: 0,
        }
    }

    /// Packets in the repair window.
    pub fn len(&self) -> usize {
        self.window.len()
    }

    /// No packet in the repair window.
    pub fn is_empty(&self) -> bool {
        self.window.is_empty()
    }

    /// Payload bytes in the repair window.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The packet with source sequence number `seq`, while in the window.
    pub fn get(&self, seq: u64) -> Option<&Cached<H>> {
        let i = self.window.binary_search_by_key(&seq, |c| c.seq).ok()?;
        self.window.get(i)
    }

    /// The newest keyframe's packets (kept past the window's age).
    pub fn keyframe(&self) -> Option<Keyframe<'_, H>> {
        let slot = self.keyframe.as_ref()?;
        let contiguous = slot
            .packets
            .windows(2)
            .all(|w| matches!(w, [a, b] if b.seq == a.seq + 1));
        let starts = slot.packets.first().is_some_and(|c| c.seq == slot.first);
        let ends = slot.packets.last().is_some_and(|c| c.marker);
        Some(Keyframe {
            packets: &slot.packets,
            complete: contiguous && starts && ends,
            frames_after: slot.frames_after,
        })
    }

    /// Forgets everything (the source started over: its numbers mean something else now).
    pub fn clear(&mut self) {
        self.window.clear();
        self.bytes = 0;
        self.keyframe = None;
        self.evicted_through = None;
    }

    /// Adds a received packet, then evicts what the bounds no longer allow.
    pub fn insert(&mut self, packet: Cached<H>) -> Inserted {
        if self.evicted_through.is_some_and(|e| packet.seq <= e) {
            return Inserted::TooOld;
        }
        let at = match self.window.back() {
            Some(last) if packet.seq > last.seq => self.window.len(),
            _ => match self.window.binary_search_by_key(&packet.seq, |c| c.seq) {
                Ok(_) => return Inserted::Duplicate,
                Err(i) => i,
            },
        };
        self.keep_for_keyframe(&packet, at);
        self.bytes += packet.payload.len();
        let arrival = packet.arrival;
        self.window.insert(at, packet);
        self.evict(arrival);
        Inserted::Added
    }

    /// Evicts packets older than the age bound at `now`, and the oldest past the count and
    /// byte bounds. Housekeeping calls it too: a track that stops sending frees its window.
    pub fn evict(&mut self, now: Instant) {
        while let Some(oldest) = self.window.front() {
            let expired = now.saturating_duration_since(oldest.arrival) > self.bounds.age;
            let over = self.window.len() > self.bounds.packets || self.bytes > self.bounds.bytes;
            if !expired && !over {
                break;
            }
            if !expired {
                self.evicted_early += 1;
            }
            if let Some(c) = self.window.pop_front() {
                self.bytes -= c.payload.len();
                self.evicted_through = Some(c.seq);
            }
        }
    }

    /// Updates the keyframe slot with a packet about to go into the window at index `at`.
    fn keep_for_keyframe(&mut self, packet: &Cached<H>, at: usize) {
        let newer_keyframe = packet.start.keyframe
            && self
                .keyframe
                .as_ref()
                .is_none_or(|k| packet.seq > k.first && packet.time != k.time);
        if newer_keyframe {
            let mut slot = KeyframeSlot {
                time: packet.time,
                first: packet.seq,
                packets: vec![packet.clone()],
                bytes: packet.payload.len(),
                frames_after: 0,
            };
            // Packets of this frame that arrived before its first one (reordered) are taken
            // from the window; the ones after the frame count as frames after it.
            for c in self.window.range(at..) {
                if c.time == slot.time {
                    slot.packets.push(c.clone());
                    slot.bytes += c.payload.len();
                } else if c.start.frame {
                    slot.frames_after += 1;
                }
            }
            self.keyframe = fits(&slot).then_some(slot);
            return;
        }
        let Some(slot) = self.keyframe.as_mut() else {
            return;
        };
        if packet.seq < slot.first {
            return;
        }
        if packet.time != slot.time {
            if packet.start.frame {
                slot.frames_after = slot.frames_after.saturating_add(1);
            }
            return;
        }
        let i = slot.packets.partition_point(|c| c.seq < packet.seq);
        slot.packets.insert(i, packet.clone());
        slot.bytes += packet.payload.len();
        if !fits(slot) {
            // Too large to cache, as a frame-mode keyframe over 1 MiB is not cached.
            self.keyframe = None;
        }
    }
}

fn fits<H>(slot: &KeyframeSlot<H>) -> bool {
    slot.packets.len() <= MAX_KEYFRAME_PACKETS && slot.bytes <= MAX_CACHED_KEYFRAME
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: Start = Start {
        frame: true,
        keyframe: true,
    };
    const DELTA: Start = Start {
        frame: true,
        keyframe: false,
    };
    const MIDDLE: Start = Start {
        frame: false,
        keyframe: false,
    };

    fn packet(seq: u64, time: u32, start: Start, marker: bool, at: Instant) -> Cached<()> {
        Cached {
            seq,
            time,
            marker,
            start,
            arrival: at,
            payload: Arc::from(vec![seq as u8; 1000]),
            header: (),
        }
    }

    /// A frame of `n` packets from `seq`: the first one `start`, the last one marked.
    fn frame(seq: u64, time: u32, n: u64, start: Start, at: Instant) -> Vec<Cached<()>> {
        (0..n)
            .map(|i| {
                let s = if i == 0 { start } else { MIDDLE };
                packet(seq + i, time, s, i + 1 == n, at)
            })
            .collect()
    }

    #[test]
    fn packets_are_found_by_sequence_number_and_share_their_payload() {
        let t0 = Instant::now();
        let mut c = PacketCache::new(Bounds::default());
        let p = packet(70_000, 0, KEY, true, t0);
        let payload = p.payload.clone();
        assert_eq!(c.insert(p), Inserted::Added);
        let got = c.get(70_000).expect("cached");
        assert!(Arc::ptr_eq(&got.payload, &payload), "no copy");
        assert!(c.get(69_999).is_none());
        assert_eq!(
            c.insert(packet(70_000, 0, KEY, true, t0)),
            Inserted::Duplicate
        );
    }

    #[test]
    fn reordered_packets_go_in_sequence_order_and_evicted_ones_stay_out() {
        let t0 = Instant::now();
        let mut c = PacketCache::new(Bounds {
            packets: 6,
            ..Bounds::default()
        });
        for seq in [10, 11, 13, 12, 15, 14, 9] {
            assert_eq!(c.insert(packet(seq, 0, DELTA, false, t0)), Inserted::Added);
        }
        // 9 came last but is the oldest: it is the one the count bound evicted.
        let kept: Vec<u64> = (8..=16).filter_map(|s| c.get(s).map(|p| p.seq)).collect();
        assert_eq!(kept, vec![10, 11, 12, 13, 14, 15]);
        assert_eq!(c.insert(packet(9, 0, DELTA, false, t0)), Inserted::TooOld);
        assert_eq!(c.insert(packet(8, 0, DELTA, false, t0)), Inserted::TooOld);
    }

    #[test]
    fn the_window_is_bounded_by_age_count_and_bytes() {
        let t0 = Instant::now();
        let bounds = Bounds {
            packets: 50,
            bytes: 30_000,
            age: Duration::from_millis(625),
        };
        // Age: one packet every 10 ms for 2 s keeps only the last 625 ms.
        let mut c = PacketCache::new(Bounds {
            packets: 1000,
            bytes: 1 << 20,
            ..bounds
        });
        for i in 0..200u64 {
            c.insert(packet(
                i,
                0,
                DELTA,
                false,
                t0 + Duration::from_millis(10 * i),
            ));
        }
        assert_eq!(c.len(), 63);
        assert!(c.get(136).is_none() && c.get(137).is_some());
        assert_eq!(c.evicted_early, 0);
        // A timer with nothing arriving empties it.
        c.evict(t0 + Duration::from_secs(5));
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
        // Count.
        let mut c = PacketCache::new(Bounds {
            bytes: 1 << 20,
            ..bounds
        });
        for i in 0..200u64 {
            c.insert(packet(i, 0, DELTA, false, t0));
        }
        assert_eq!(c.len(), 50);
        assert_eq!(c.evicted_early, 150);
        // Bytes: 1,000-byte packets under a 30,000-byte bound.
        let mut c = PacketCache::new(Bounds {
            packets: 1000,
            ..bounds
        });
        for i in 0..200u64 {
            c.insert(packet(i, 0, DELTA, false, t0));
        }
        assert_eq!((c.len(), c.bytes()), (30, 30_000));
    }

    #[test]
    fn the_newest_keyframe_is_kept_past_the_window() {
        let t0 = Instant::now();
        let mut c = PacketCache::new(Bounds::default());
        let later = t0 + Duration::from_secs(3);
        for p in frame(100, 9000, 3, KEY, t0) {
            c.insert(p);
        }
        for p in frame(103, 12_000, 2, DELTA, t0) {
            c.insert(p);
        }
        // Three seconds on: the window has moved past the keyframe, the slot has not.
        for p in frame(105, 282_000, 2, DELTA, later) {
            c.insert(p);
        }
        assert!(c.get(100).is_none());
        let k = c.keyframe().expect("kept");
        let seqs: Vec<u64> = k.packets.iter().map(|p| p.seq).collect();
        assert_eq!(seqs, vec![100, 101, 102]);
        assert!(k.complete);
        assert_eq!(k.frames_after, 2);
        // A new keyframe replaces it; one with the same timestamp (an SPS packet, then the IDR
        // slice, both "keyframe starts" of one H.264 frame) does not.
        let new_key = frame(107, 285_000, 2, KEY, later);
        for p in new_key {
            c.insert(p);
        }
        c.insert(packet(109, 285_000, KEY, true, later));
        let k = c.keyframe().expect("kept");
        let seqs: Vec<u64> = k.packets.iter().map(|p| p.seq).collect();
        assert_eq!(seqs, vec![107, 108, 109]);
        assert_eq!(k.frames_after, 0);
    }

    #[test]
    fn a_keyframe_with_a_gap_or_its_first_packet_late_is_incomplete_until_repaired() {
        let t0 = Instant::now();
        let mut c = PacketCache::new(Bounds::default());
        let [p0, p1, p2, p3] =
            <[Cached<()>; 4]>::try_from(frame(500, 1, 4, KEY, t0)).expect("four packets");
        // The first packet arrives after two others: they are picked up from the window.
        c.insert(p1);
        c.insert(p3.clone());
        assert!(c.keyframe().is_none());
        c.insert(p0);
        let k = c.keyframe().expect("started");
        assert_eq!(k.packets.len(), 3);
        assert!(!k.complete, "501..503 without 502");
        // The repair of the missing packet completes it.
        c.insert(p2);
        let k = c.keyframe().expect("kept");
        assert!(k.complete);
        assert_eq!(k.packets.len(), 4);
        assert_eq!(c.insert(p3), Inserted::Duplicate);
    }

    #[test]
    fn a_keyframe_over_its_bound_is_not_cached() {
        let t0 = Instant::now();
        let mut c = PacketCache::new(Bounds::default());
        let n = (MAX_KEYFRAME_PACKETS + 1) as u64;
        for p in frame(1, 7, n, KEY, t0) {
            c.insert(p);
        }
        assert!(c.keyframe().is_none());
        // The window stayed within its own bounds meanwhile.
        assert!(c.len() <= Bounds::default().packets);
        assert!(c.bytes() <= Bounds::default().bytes);
    }
}
