//! SDP offers through the engine (in memory, no sockets): an arbitrary offer given to
//! `sessions/new`, to `tracks/new` (push with listed mids, autoDiscover, or a plain
//! renegotiation of an established session) must never panic the engine; what it publishes
//! must be pullable by another session without a panic either.
//!
//! Input: one mode byte, then the SDP (as lossy UTF-8: the API only sees JSON strings). As in
//! the API, an SDP over the node's bounds is refused before it is parsed, and the parse is the
//! API's (`ClientOffer::parse`).
#![no_main]

#[path = "../common.rs"]
mod common;

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use trackmesh_node::engine::{ClientOffer, LocalTrack, RemoteTrack, TracksNew, sdp_limits};

use common::{APP, OFFER, settle, with_engine};
use trackmesh_node::engine::Engine;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, sdp)) = data.split_first() else {
        return;
    };
    let sdp = String::from_utf8_lossy(sdp);
    with_engine(|e, now| offer(e, now, mode, &sdp));
});

fn offer(e: &mut Engine, now: Instant, mode: u8, sdp: &str) {
    if sdp_limits::check(sdp).is_err() {
        return;
    }
    if mode.is_multiple_of(4) {
        let _ = e.create_session(APP, Some(ClientOffer::parse(sdp)), now);
        settle(e, now + Duration::from_secs(1));
        return;
    }
    let Ok((sid, _)) = e.create_session(APP, None, now) else {
        return;
    };
    let sid = sid.to_string();
    // The mids the offer names, each pushed as a track (as a client lists them).
    let mids: Vec<String> = sdp
        .lines()
        .filter_map(|l| l.strip_prefix("a=mid:"))
        .map(|m| m.trim().to_string())
        .take(trackmesh_node::engine::MAX_TRACKS_PER_CALL)
        .collect();
    let req = match mode % 4 {
        1 => TracksNew::Local {
            offer: Some(ClientOffer::parse(sdp)),
            tracks: mids
                .iter()
                .enumerate()
                .map(|(i, m)| LocalTrack {
                    mid: Some(m.clone()),
                    track_name: Some(format!("t{i}")),
                    ..Default::default()
                })
                .collect(),
            auto_discover: false,
        },
        2 => TracksNew::Local {
            offer: Some(ClientOffer::parse(sdp)),
            tracks: Vec::new(),
            auto_discover: true,
        },
        _ => {
            // Renegotiation: an established push first, then the arbitrary offer.
            let first = TracksNew::Local {
                offer: Some(ClientOffer::parse(OFFER)),
                tracks: Vec::new(),
                auto_discover: true,
            };
            if e.tracks_new(APP, &sid, first, now).is_err() {
                return;
            }
            TracksNew::OfferOnly {
                offer: ClientOffer::parse(sdp),
            }
        }
    };
    let published = match e.tracks_new(APP, &sid, req, now) {
        Ok(res) => res
            .tracks
            .into_iter()
            .filter(|t| t.error.is_none())
            .filter_map(|t| t.track_name)
            .collect::<Vec<_>>(),
        Err(_) => Vec::new(),
    };
    settle(e, now + Duration::from_millis(300));
    if !published.is_empty()
        && let Ok((sub, _)) = e.create_session(APP, None, now)
    {
        let pull = TracksNew::Remote {
            tracks: published
                .into_iter()
                .map(|name| RemoteTrack {
                    session_id: Some(sid.clone()),
                    track_name: Some(name),
                    mid: None,
                    simulcast: None,
                })
                .collect(),
        };
        let _ = e.tracks_new(APP, &sub.to_string(), pull, now);
    }
    settle(e, now + Duration::from_secs(1));
}
