//! Timers that are not str0m's: garbage collection of silent publications, release of unused
//! relayed ones, expiry of sessions, deferred keyframe requests, tombstones.

use std::time::Instant;

use super::publications::{Source, TrackKey};
use super::{Engine, MAX_TOMBSTONES, RELAY_UNUSED_GRACE, TOMBSTONE_TTL};

impl Engine {
    pub(super) fn housekeeping(&mut self, now: Instant) {
        // Publications without media for too long are garbage-collected, as Calls does.
        let stale: Vec<TrackKey> = self
            .publications
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.last_media) >= self.cfg.track_timeout)
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            tracing::info!(session = %key.0, track = %key.1, "no media: track garbage-collected");
            self.unpublish(&key);
        }

        let unused: Vec<TrackKey> = self
            .publications
            .iter()
            .filter(|(_, p)| matches!(p.source, Source::Relay(_)))
            .filter(|(_, p)| {
                p.unused_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= RELAY_UNUSED_GRACE)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in unused {
            tracing::info!(session = %key.0, track = %key.1, "relayed track unused: released");
            self.unpublish(&key);
        }

        let mut doomed = Vec::new();
        for (sid, s) in &self.sessions {
            let reason = if !s.rtc.is_alive() {
                Some("peer connection closed")
            } else if let Some(lost) = s.transport_lost {
                (now.saturating_duration_since(lost) >= self.cfg.reconnect_grace)
                    .then_some("no new transport within the reconnect grace period")
            } else if !s.state.ever_connected()
                && now.saturating_duration_since(s.created) >= self.cfg.unconnected_expiry
            {
                Some("never connected")
            } else if s.state.ever_connected()
                && s.last_recv
                    .is_some_and(|t| now.saturating_duration_since(t) >= self.cfg.reconnect_grace)
            {
                Some("no packets within the reconnect grace period")
            } else {
                None
            };
            if let Some(reason) = reason {
                doomed.push((*sid, reason));
            }
        }
        for (sid, reason) in doomed {
            self.close_session(sid, now, reason);
        }

        let pending: Vec<TrackKey> = self
            .publications
            .iter()
            .filter(|(_, p)| p.keyframe_pending)
            .map(|(k, _)| k.clone())
            .collect();
        for key in pending {
            self.request_keyframe(&key, now);
        }
        let layers_pending: Vec<TrackKey> = self
            .publications
            .iter()
            .filter(|(_, p)| p.layers.layers().iter().any(|l| l.data.keyframe_pending))
            .map(|(k, _)| k.clone())
            .collect();
        for key in layers_pending {
            self.pending_layer_keyframes(&key, now);
        }

        // A track or layer that stopped sending frees its repair window here: only a new
        // packet would evict it otherwise (the newest keyframe stays, for joining viewers).
        for p in self.publications.values_mut() {
            p.cache.evict(now);
            for l in p.layers.layers_mut() {
                l.data.cache.evict(now);
            }
        }

        self.update_all_upstream_layers(now);
        self.announce_all_layers(now);

        if self.tombstones.len() > MAX_TOMBSTONES / 2 {
            self.tombstones
                .retain(|_, t| now.saturating_duration_since(t.at) < TOMBSTONE_TTL);
        }
    }
}
