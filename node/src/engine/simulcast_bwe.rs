//! Bandwidth-driven layer moves: a subscriber session's egress bandwidth estimate (str0m BWE,
//! on when the node enables it for its sessions) is shared evenly by its simulcast pulls with
//! `priorityOrdering: "asciibetical"`; each one's [`Selector`](super::simulcast::Selector)
//! decides whether to move down or back up, and the move goes through the same
//! switch-on-keyframe path as `tracks/update`. The estimator is told what to aim for (the
//! preferred layers' bitrates), so str0m probes for room to move back up.

use std::time::Instant;

use str0m::bwe::Bitrate;
use str0m::media::{Mid, Rid};

use super::Engine;
use super::publications::TrackKey;
use super::simulcast::Ordering;
use crate::ids::SessionId;

/// Initial estimate of a session's egress bandwidth when BWE is on: str0m starts from it and
/// probes upwards towards what the session's layers need.
pub const BWE_INITIAL_BPS: u64 = 1_000_000;

impl Engine {
    /// A subscriber session's egress bandwidth estimate, bits/s.
    pub(super) fn bandwidth_estimate(&mut self, sub: SessionId, estimate: u64, now: Instant) {
        let Some(s) = self.sessions.get_mut(&sub) else {
            return;
        };
        let governed: Vec<Mid> = s
            .simulcast
            .iter()
            .filter(|(_, sel)| sel.prefs.priority_ordering == Ordering::Asciibetical)
            .map(|(mid, _)| *mid)
            .collect();
        if governed.is_empty() {
            return;
        }
        self.stats.simulcast.estimates += 1;
        // Shared evenly: a session's pulls are usually one camera, and an even share keeps each
        // pull's decision independent of the others' layers.
        let share = estimate / governed.len() as u64;
        let mut moves: Vec<(TrackKey, Rid)> = Vec::new();
        let (mut current, mut desired) = (0u64, 0u64);
        for mid in governed {
            let (Some(key), Some(sel)) = (s.remote_by_mid.get(&mid), s.simulcast.get_mut(&mid))
            else {
                continue;
            };
            let Some(p) = self.publications.get(key) else {
                continue;
            };
            let before = sel.choose(&p.layers, now);
            if let Some(to) = sel.on_estimate(share, &p.layers, now) {
                let down = before.is_some_and(|b| {
                    let (b, t): (&str, &str) = (&b, &to);
                    t > b
                });
                if down {
                    self.stats.simulcast.bwe_down += 1;
                } else {
                    self.stats.simulcast.bwe_up += 1;
                }
                tracing::debug!(session = %sub, %mid, estimate = share, from = ?before, %to,
                    "bandwidth moves a simulcast subscriber");
                moves.push((key.clone(), to));
            }
            let (c, d) = sel.bitrates(&p.layers, now);
            current = current.saturating_add(c);
            desired = desired.saturating_add(d);
        }
        // Keep sending what the current layers need and probe for the preferred ones (no effect
        // on a session without BWE).
        if desired > 0 {
            s.rtc
                .bwe()
                .set_bitrate(Bitrate::bps(current.min(desired)), Bitrate::bps(desired));
        }
        for (key, rid) in moves {
            // A relayed publication pulls the new layer now, before asking for its keyframe
            // (as `tracks/update` does): a keyframe the origin sends before it knows this node
            // wants the layer would not come here.
            self.update_upstream_layers(&key, now);
            self.request_layer_keyframe(&key, rid, now);
        }
        self.drain(sub, now);
    }
}
