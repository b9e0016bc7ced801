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
//!
//! A stream whose packets are never written `nackable` (audio, video without RTX) keeps no
//! history and no resend accounting: str0m would otherwise record every packet it sends for a
//! second (the resend ratio cap), about 1.5 KB per audio subscriber for nothing.

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

/// What the send stream on `mid` should keep now, given what it keeps (`current`: `None` when
/// not set yet, `Some(None)` when set to keep nothing) and whether the packets written to it are
/// `nackable`. `None`: leave it as it is. A stream that becomes NACKable (a renegotiation added
/// RTX) gets a window; one that stops keeps its window (harmless, and resizing empties it).
pub fn wanted(current: Option<Option<Duration>>, nackable: bool) -> Option<Option<Duration>> {
    match (current, nackable) {
        (None, false) => Some(None),
        (None | Some(None), true) => Some(Some(window_for(None))),
        (Some(_), _) => None,
    }
}

/// Gives the send stream on `mid` what it keeps, once it exists (the m-line is negotiated): a
/// first window if its packets are `nackable`, else nothing. `windows` holds each mid's setting
/// (`None`: no history). True once the stream has its setting.
pub fn ensure(
    rtc: &mut Rtc,
    windows: &mut HashMap<Mid, Option<Duration>>,
    mid: Mid,
    nackable: bool,
) -> bool {
    let Some(setting) = wanted(windows.get(&mid).copied(), nackable) else {
        return true;
    };
    if apply(rtc, mid, setting) {
        windows.insert(mid, setting);
        return true;
    }
    false
}

/// Fits the window of the send stream on `mid` to a newly measured round trip (a stream that
/// keeps no history stays so).
pub fn fit_to_rtt(
    rtc: &mut Rtc,
    windows: &mut HashMap<Mid, Option<Duration>>,
    mid: Mid,
    rtt: Option<Duration>,
) {
    let Some(Some(current)) = windows.get(&mid).copied() else {
        return;
    };
    let wanted = window_for(rtt);
    if worth_resizing(current, wanted) && apply(rtc, mid, Some(wanted)) {
        windows.insert(mid, Some(wanted));
    }
}

/// Sets the history of the send stream on `mid` to `window`, capped at [`MAX_PACKETS`], or to
/// nothing (`None`: no packets, no resend ratio cap and so no record of sent bytes). False when
/// the stream does not exist yet.
fn apply(rtc: &mut Rtc, mid: Mid, window: Option<Duration>) -> bool {
    let mut api = rtc.direct_api();
    let Some(tx) = api.stream_tx_by_mid(mid, None) else {
        return false;
    };
    match window {
        Some(window) => tx.set_rtx_cache(MAX_PACKETS, window, RTX_RATIO_CAP),
        // str0m caches only `nackable` packets, so one slot is never used. Without a cap
        // str0m stops recording sent bytes (it only purges that record to check the cap);
        // only `reset_stream_tx`, which the engine never calls, would restart it.
        None => tx.set_rtx_cache(1, Duration::ZERO, None),
    }
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
    fn a_stream_never_nacked_keeps_no_history_until_it_is() {
        let window = Some(window_for(None));
        assert_eq!(wanted(None, false), Some(None), "audio: nothing kept");
        assert_eq!(wanted(Some(None), false), None, "set once");
        assert_eq!(
            wanted(None, true),
            Some(window),
            "video with RTX: the first window"
        );
        assert_eq!(
            wanted(Some(None), true),
            Some(window),
            "RTX negotiated later"
        );
        assert_eq!(
            wanted(Some(Some(MS(850))), true),
            None,
            "fitted windows stay"
        );
        assert_eq!(wanted(Some(Some(MS(850))), false), None);
    }

    #[test]
    fn small_changes_in_the_round_trip_do_not_empty_the_history() {
        assert!(!worth_resizing(MS(625), MS(625)));
        assert!(!worth_resizing(MS(625), MS(700)));
        assert!(worth_resizing(MS(625), MS(850)));
        assert!(worth_resizing(MS(1350), MS(625)));
    }
}
