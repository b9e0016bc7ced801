//! Loss repair: an arbitrary sequence of frame arrivals (subscription, number, clock advance,
//! round-trip time) must never panic the Repairer, never make it hold more than its bounds, and
//! every subscription's frames must come out in increasing order, each once. The publisher's
//! SentCache, fed and asked for arbitrary numbers, must stay within its bounds.
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use trackmesh_relay_proto::repair::{
    Arrived, RepairEvent, RepairLimits, Repairer, SentCache, SentCacheLimits,
};

const HELD: usize = 8;
const HELD_BYTES: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let limits = RepairLimits {
        max_held_frames: HELD,
        max_held_bytes: HELD_BYTES,
        max_total_bytes: 3 * HELD_BYTES,
        max_subscriptions: 4,
        ..RepairLimits::default()
    };
    let mut r: Repairer<u64> = Repairer::new(limits);
    let mut cache: SentCache<u32> = SentCache::new(SentCacheLimits {
        max_frames: 16,
        max_bytes: 8192,
        ..SentCacheLimits::default()
    });
    let mut now = Instant::now();
    let mut out = Vec::new();
    // Per subscription, the last number delivered (extended by the order of delivery).
    let mut last: HashMap<u32, u32> = HashMap::new();
    let mut seqs: HashMap<u32, u32> = HashMap::new();
    for chunk in data.chunks_exact(4) {
        let [sub, step, advance, size] = [chunk[0], chunk[1], chunk[2], chunk[3]];
        let sub = u32::from(sub % 4);
        now += Duration::from_millis(u64::from(advance % 64));
        let rtt = Duration::from_millis(u64::from(advance));
        // Mostly small forward steps, sometimes back, sometimes far.
        let seq = seqs.entry(sub).or_insert(u32::from(step));
        *seq = match step >> 6 {
            0 | 1 => seq.wrapping_add(u32::from(step & 3)),
            2 => seq.wrapping_sub(u32::from(step & 7)),
            _ => seq.wrapping_add(u32::from(step) << 8),
        };
        let bytes = usize::from(size) * 16;
        let arrived = Arrived {
            sub,
            seq: *seq,
            frame: u64::from(*seq),
            bytes,
        };
        r.push(now, rtt, arrived, &mut out);
        r.poll(now, &mut out);
        assert!(r.held_frames() <= 4 * HELD);
        assert!(r.held_bytes() <= 3 * HELD_BYTES);
        for e in out.drain(..) {
            match e {
                RepairEvent::Deliver { sub, frame } => {
                    let frame = frame as u32;
                    if let Some(prev) = last.insert(sub, frame) {
                        assert!(
                            (frame.wrapping_sub(prev) as i32) > 0,
                            "sub {sub}: {frame} after {prev}"
                        );
                    }
                }
                RepairEvent::Nack { seqs, .. } => assert!(!seqs.is_empty() && seqs.len() <= 64),
                RepairEvent::Gap { lost, .. } => assert!(lost > 0),
            }
        }
        cache.insert(now, *seq, *seq, bytes);
        let _ = cache.resend(now, seq.wrapping_sub(u32::from(size % 32)));
        assert!(cache.len() <= 16 && cache.bytes() <= 8192);
    }
});
