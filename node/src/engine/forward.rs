//! Frame-level fan-out: a publisher's depacketized frames are written into every subscriber's
//! `Rtc`, which packetizes, encrypts and handles NACK/RTX per subscriber. Keyframe requests flow
//! the other way, rate-limited per publication.

use std::time::Instant;

use str0m::media::{KeyframeRequestKind, MediaData, MediaKind, Mid};

use super::{Engine, KEYFRAME_INTERVAL, TrackKey};
use crate::ids::SessionId;

impl Engine {
    pub(super) fn forward_media(&mut self, publisher: SessionId, data: MediaData, now: Instant) {
        self.stats.frames_in += 1;
        let Some(name) = self
            .sessions
            .get(&publisher)
            .and_then(|s| s.local_by_mid.get(&data.mid))
        else {
            return;
        };
        let key = (publisher, name.clone());
        let Some(p) = self.publications.get_mut(&key) else {
            return;
        };
        p.last_media = now;
        // Simulcast layers are not selected yet: forward only unlayered media.
        if data.rid.is_some() {
            return;
        }
        let subscribers = p.subscribers.clone();
        for (sub, mid) in subscribers {
            let Some(s) = self.sessions.get_mut(&sub) else {
                continue;
            };
            let Some(writer) = s.rtc.writer(mid) else {
                // Not negotiated yet (the SFU offer is still waiting for the answer).
                continue;
            };
            let Some(pt) = writer.match_params(data.params) else {
                self.stats.frames_no_codec += 1;
                continue;
            };
            match writer.write(pt, data.network_time, data.time, data.data.clone()) {
                Ok(()) => self.stats.frames_forwarded += 1,
                Err(e) => tracing::debug!(session = %sub, error = %e, "write failed"),
            }
            self.drain(sub, now);
        }
    }

    /// A subscriber's receiver asked for a keyframe (PLI/FIR): pass it to the publisher.
    pub(super) fn subscriber_wants_keyframe(&mut self, sub: SessionId, mid: Mid, now: Instant) {
        let key = self
            .sessions
            .get(&sub)
            .and_then(|s| s.remote_by_mid.get(&mid))
            .cloned();
        if let Some(key) = key {
            self.request_keyframe(&key, now);
        }
    }

    /// Asks the publishers of everything a session receives for a keyframe, so a subscriber that
    /// just connected or renegotiated sees video at once.
    pub(super) fn request_keyframes_for(&mut self, sub: SessionId, now: Instant) {
        let keys: Vec<TrackKey> = match self.sessions.get(&sub) {
            Some(s) => s.remote_by_mid.values().cloned().collect(),
            None => return,
        };
        for key in keys {
            self.request_keyframe(&key, now);
        }
    }

    /// Requests a keyframe from a publisher, at most once per [`KEYFRAME_INTERVAL`]; a request
    /// inside the interval is deferred to its end, not lost.
    pub(super) fn request_keyframe(&mut self, key: &TrackKey, now: Instant) {
        let Some(p) = self.publications.get_mut(key) else {
            return;
        };
        if p.kind != MediaKind::Video {
            p.keyframe_pending = false;
            return;
        }
        if p.last_keyframe_request
            .is_some_and(|t| now.saturating_duration_since(t) < KEYFRAME_INTERVAL)
        {
            p.keyframe_pending = true;
            return;
        }
        p.keyframe_pending = false;
        p.last_keyframe_request = Some(now);
        let mid = p.mid;
        let Some(s) = self.sessions.get_mut(&key.0) else {
            return;
        };
        let Some(mut writer) = s.rtc.writer(mid) else {
            return;
        };
        match writer.request_keyframe(None, KeyframeRequestKind::Pli) {
            Ok(()) => self.stats.keyframe_requests += 1,
            // Nothing received yet on that mid: there is no stream to ask.
            Err(e) => tracing::debug!(session = %key.0, error = %e, "keyframe request not sent"),
        }
        self.drain(key.0, now);
    }
}
