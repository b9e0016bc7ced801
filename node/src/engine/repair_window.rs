//! How long a subscriber's send stream keeps the packets it sent, to answer NACKs with them.
//!
//! str0m answers a subscriber's NACKs from a resend history per send stream (it has no way to
//! serve them from a cache shared by a track's subscribers). By default that history holds
//! 3 s of packets (capped by `RtcConfig::set_send_buffer_video`); at 1 Mbit/s that is the cap,
//! 256 packets, about 360 KB per video subscriber, most of its memory. A resend helps only while
//! the receiver still waits for the packet: its NACK arrives about one round trip after the
//! packet left, and it asks again once per round trip (at least [`RETRY_FLOOR`] apart). So the
//! history is sized from the subscriber's measured round-trip time: [`ATTEMPTS`] retry
//! intervals plus [`SLACK`], within [`MIN_WINDOW`]..=[`MAX_WINDOW`].

use std::collections::HashMap;
use std::time::Duration;

use str0m::Rtc;
use str0m::media::Mid;

/// Packets of resend history kept per outgoing video stream at most, whatever the window.
pub const MAX_PACKETS: usize = 256;
/// Retry intervals a lost packet gets: str0m's receivers NACK a packet up to 5 times
/// (Chromium's up to 10), and a repair sent for an early NACK may itself be lost.
const ATTEMPTS: u32 = 5;
/// A receiver repeats a NACK one round trip (+5 ms) later, but every 100 ms until it has
/// measured the round trip, which a receive-only viewer may never do (Chromium and str0m both
/// work this way): the window never assumes faster repeats than that.
const RETRY_FLOOR: Duration = Duration::from_millis(105);
/// Added to the round trips: the receiver notices a gap only when a later packet arrives, and
/// NACKs are paced (Chromium sends them at most every few ms).
const SLACK: Duration = Duration::from_millis(100);
/// Never shorter: jitter and a late first NACK.
const MIN_WINDOW: Duration = Duration::from_millis(500);
/// Never longer: a packet this old is late for any jitter buffer a viewer runs.
const MAX_WINDOW: Duration = Duration::from_millis(1500);
/// A new measurement resizes the history only when the window changes by more than this
/// fraction: resizing empties it (str0m starts a new cache), so it must stay rare.
const RESIZE_FRACTION: f64 = 0.25;
/// str0m's default: queued resends are cleared when they exceed 15 % of what is sent.
const RTX_RATIO_CAP: Option<f32> = Some(0.15);

/// The history a stream with round-trip time `rtt` (`None`: not measured yet) needs.
pub fn window_for(rtt: Option<Duration>) -> Duration {
    let retry = rtt.map_or(RETRY_FLOOR, |rtt| rtt.max(RETRY_FLOOR));
    (retry.saturating_mul(ATTEMPTS).saturating_add(SLACK)).clamp(MIN_WINDOW, MAX_WINDOW)
}

/// Whether a stream whose history is `current` should be resized to `wanted`.
pub fn worth_resizing(current: Duration, wanted: Duration) -> bool {
    let (a, b) = (current.as_secs_f64(), wanted.as_secs_f64());
    (a - b).abs() > a * RESIZE_FRACTION
}

/// Gives the send stream on `mid` its first window, once it exists (the m-line is negotiated);
/// `windows` holds each mid's window. True once the stream has one.
pub fn ensure(rtc: &mut Rtc, windows: &mut HashMap<Mid, Duration>, mid: Mid) -> bool {
    if windows.contains_key(&mid) {
        return true;
    }
    let window = window_for(None);
    if apply(rtc, mid, window) {
        windows.insert(mid, window);
        return true;
    }
    false
}

/// Fits the window of the send stream on `mid` to a newly measured round trip.
pub fn fit_to_rtt(
    rtc: &mut Rtc,
    windows: &mut HashMap<Mid, Duration>,
    mid: Mid,
    rtt: Option<Duration>,
) {
    let Some(current) = windows.get(&mid).copied() else {
        return;
    };
    let wanted = window_for(rtt);
    if worth_resizing(current, wanted) && apply(rtc, mid, wanted) {
        windows.insert(mid, wanted);
    }
}

/// Sets the history of the send stream on `mid` to `window`, capped at [`MAX_PACKETS`]. False when
/// the stream does not exist yet.
fn apply(rtc: &mut Rtc, mid: Mid, window: Duration) -> bool {
    let mut api = rtc.direct_api();
    let Some(tx) = api.stream_tx_by_mid(mid, None) else {
        return false;
    };
    tx.set_rtx_cache(MAX_PACKETS, window, RTX_RATIO_CAP);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_near_viewer_keeps_a_short_history_and_a_far_one_a_longer_one() {
        assert_eq!(window_for(None), MS(625));
        assert_eq!(window_for(Some(MS(20))), MS(625));
        assert_eq!(window_for(Some(MS(150))), MS(850));
        assert_eq!(window_for(Some(MS(250))), MS(1350));
        assert_eq!(window_for(Some(Duration::from_secs(5))), MS(1500));
        assert_eq!(window_for(Some(Duration::MAX)), MS(1500));
    }

    #[test]
    fn small_changes_in_the_round_trip_do_not_empty_the_history() {
        assert!(!worth_resizing(MS(625), MS(625)));
        assert!(!worth_resizing(MS(625), MS(700)));
        assert!(worth_resizing(MS(625), MS(850)));
        assert!(worth_resizing(MS(1350), MS(625)));
    }
}
