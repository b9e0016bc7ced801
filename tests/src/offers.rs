//! Synthetic client offers, for the SDP bounds tests and the engine benchmarks.

use std::time::Instant;

use str0m::Rtc;
use str0m::media::{Direction, MediaKind};

/// A str0m client's offer of `sections` send-only video m-sections, each with `ssrc_lines` more
/// `a=ssrc` lines (as clients with many streams write them). Empty if str0m makes no offer.
pub fn video_offer(sections: usize, ssrc_lines: usize) -> String {
    let mut rtc = Rtc::builder().build(Instant::now());
    let mut api = rtc.sdp_api();
    for _ in 0..sections {
        api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    }
    let Some((offer, _)) = api.apply() else {
        return String::new();
    };
    let mut out = String::new();
    let mut ssrc = 10_000u32;
    for line in offer
        .to_sdp_string()
        .split("\r\n")
        .filter(|l| !l.is_empty())
    {
        out.push_str(line);
        out.push_str("\r\n");
        if line.starts_with("a=mid:") {
            for _ in 0..ssrc_lines {
                ssrc += 1;
                out.push_str(&format!("a=ssrc:{ssrc} cname:0123456789abcdef\r\n"));
            }
        }
    }
    out
}

/// The [`video_offer`] with the most m-sections (at most 513) that `fits`: (m-sections, SDP).
pub fn largest_video_offer(ssrc_lines: usize, fits: impl Fn(&str) -> bool) -> (usize, String) {
    let mut best = (1, video_offer(1, ssrc_lines));
    for n in 2..=513 {
        let sdp = video_offer(n, ssrc_lines);
        if !fits(&sdp) {
            break;
        }
        best = (n, sdp);
    }
    best
}
