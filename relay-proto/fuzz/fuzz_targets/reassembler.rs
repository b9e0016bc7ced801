//! Media datagrams: an arbitrary sequence of datagrams (each prefixed here by a length byte and a
//! clock-advance byte) must never panic the Reassembler nor push it over its memory budget, and
//! every frame it returns must fit the limits.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use trackmesh_relay_proto::media::{
    FragmentHeader, MAX_RID_LEN, Reassembler, ReassemblerLimits, split_packet,
};

const BUDGET: usize = 128 * 1024;
const MAX_FRAME: usize = 32 * 1024;

fuzz_target!(|data: &[u8]| {
    let limits = ReassemblerLimits {
        max_buffered_bytes: BUDGET,
        max_frame_bytes: MAX_FRAME,
        max_fragments: 64,
        max_frames_in_flight: 4,
        max_subscriptions: 8,
        frame_timeout: Duration::from_millis(50),
        subscription_idle: Duration::from_millis(500),
    };
    let mut r = Reassembler::new(limits);
    let mut now = Instant::now();
    let mut rest = data;
    while let [len, advance, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (datagram, tail) = tail.split_at(len);
        rest = tail;
        now += Duration::from_millis(u64::from(*advance % 16));
        let _ = FragmentHeader::parse(datagram);
        if let Some(frame) = r.push(datagram, now) {
            assert!(frame.payload.len() <= MAX_FRAME);
            if let Ok((meta, data)) = split_packet(&frame.payload) {
                assert!(meta.rid.is_none_or(|r| r.len() <= MAX_RID_LEN));
                assert!(data.len() < frame.payload.len());
            }
        }
        assert!(r.buffered_bytes() <= BUDGET);
        if *advance == 0xff {
            r.poll_expired(now);
        }
    }
});
