//! The engine's side of relaying between nodes, still sans-IO: publications fed by an upstream
//! relay subscription, and downstream relay subscriptions as sinks of any publication. The
//! cluster layer owns the links and ids; the engine only sees numbers and frames.

use std::time::Instant;

use str0m::media::{MediaKind, Rid};

use super::publications::{Publication, Sink, Source, TrackInfo, TrackKey};
use super::relay_messages::{RelayOut, RelayRefusal};
use super::{Engine, MAX_RELAY_QUEUE};
use crate::ids::{DownId, SessionId, UpId};

impl Engine {
    /// Whether this node can serve `(session, track)` of `app` right now (local or relayed).
    pub fn has_publication(&self, app: &str, session: SessionId, track: &str) -> bool {
        self.publications
            .get(&(session, track.to_string()))
            .is_some_and(|p| &*p.app == app)
    }

    /// Whether publication `track` of `session` (in `app`) exists here but has had no media yet
    /// (its codec is known from its first packet; a relay or worker link needs it).
    pub fn publication_awaits_media(&self, app: &str, session: SessionId, track: &str) -> bool {
        self.publications
            .get(&(session, track.to_string()))
            .is_some_and(|p| &*p.app == app && p.codec.is_none())
    }

    /// Registers a publication fed by upstream `up`, or moves an existing relayed publication
    /// onto `up` (a re-route after a hub died): its subscribers stay attached.
    pub fn add_relay_publication(
        &mut self,
        app: &str,
        session: SessionId,
        track: &str,
        up: UpId,
        info: TrackInfo,
        now: Instant,
    ) -> Result<(), RelayRefusal> {
        let key: TrackKey = (session, track.to_string());
        match self.publications.get_mut(&key) {
            Some(p) => {
                let Source::Relay(old) = p.source else {
                    return Err(RelayRefusal::PublishedHere);
                };
                p.source = Source::Relay(up);
                p.codec = Some(info.codec);
                p.upstream_lost = false;
                p.last_keyframe_request = None;
                for l in p.layers.layers_mut() {
                    l.data.last_keyframe_request = None;
                }
                self.relay_up.remove(&old);
                self.relay_up.insert(up, key.clone());
                self.take_early_layers(up, &key, now);
                // Resume with a keyframe for everyone already watching.
                self.request_keyframe(&key, now);
            }
            None => {
                self.publications.insert(
                    key.clone(),
                    Publication::new(app, Source::Relay(up), info.kind, Some(info.codec), now),
                );
                self.relay_up.insert(up, key.clone());
                self.take_early_layers(up, &key, now);
            }
        }
        Ok(())
    }

    /// The upstream is gone for good (the origin ended the track, or no route is left).
    pub fn end_relay_publication(&mut self, up: UpId) {
        if let Some(key) = self.relay_up.get(&up).cloned() {
            tracing::info!(session = %key.0, track = %key.1, "relayed track ended");
            self.unpublish(&key);
        }
    }

    /// Another node subscribes (as `down`) to a publication held here.
    pub fn relay_subscribe(
        &mut self,
        down: DownId,
        app: &str,
        session: SessionId,
        track: &str,
    ) -> Result<TrackInfo, RelayRefusal> {
        let key: TrackKey = (session, track.to_string());
        let Some(p) = self.publications.get_mut(&key).filter(|p| &*p.app == app) else {
            return Err(RelayRefusal::NotFound);
        };
        let Some(codec) = p.codec else {
            return Err(RelayRefusal::NotFound);
        };
        p.subscribers.push(Sink::Relay(down));
        p.unused_since = None;
        // Its layers are told at the next check (housekeeping), the new downstream with the rest.
        p.announced_layers = None;
        let info = TrackInfo {
            kind: p.kind,
            codec,
        };
        self.relay_down.insert(down, key);
        self.relay_down_without_keyframe.insert(down);
        // No keyframe request here: the other node asks when its own subscriber is ready to
        // receive one. Asking now would spend the once-per-second budget on a keyframe that
        // reaches nobody and defer the useful request by up to a second.
        Ok(info)
    }

    /// A downstream node stopped pulling: the publication may become unused.
    pub fn relay_unsubscribe(&mut self, down: DownId, now: Instant) {
        self.relay_down_without_keyframe.remove(&down);
        self.relay_down_seq.remove(&down);
        self.relay_down_layers.remove(&down);
        let Some(key) = self.relay_down.remove(&down) else {
            return;
        };
        if let Some(p) = self.publications.get_mut(&key) {
            p.subscribers.retain(|s| *s != Sink::Relay(down));
            if p.subscribers.is_empty() {
                p.unused_since = Some(now);
            }
        }
        self.update_upstream_layers(&key, now);
    }

    /// A downstream node's subscriber wants a keyframe.
    pub fn relay_keyframe_request(&mut self, down: DownId, now: Instant) {
        if let Some(key) = self.relay_down.get(&down).cloned() {
            // A new downstream gets the cached keyframe at once. It is sent on request, not at
            // subscribe time: a request proves the other node's engine knows the subscription,
            // so the frame cannot arrive before it and be dropped.
            if self.relay_down_without_keyframe.remove(&down) {
                // Of a layered publication, every layer's.
                for frame in self.cached_relay_keyframes(&key, down) {
                    if frame.keyframe {
                        self.stats.keyframes_from_cache += 1;
                    }
                    self.push_relay_frame(down, frame);
                }
            }
            self.request_keyframe(&key, now);
            self.process_work(now);
        }
    }

    /// A downstream node's subscriber wants a keyframe of layer `rid`.
    pub fn relay_layer_keyframe_request(&mut self, down: DownId, rid: Rid, now: Instant) {
        let Some(key) = self.relay_down.get(&down).cloned() else {
            return;
        };
        if self.relay_down_without_keyframe.remove(&down) {
            for frame in self.cached_relay_keyframes(&key, down) {
                if frame.keyframe {
                    self.stats.keyframes_from_cache += 1;
                }
                self.push_relay_frame(down, frame);
            }
        }
        let layered = self
            .publications
            .get(&key)
            .is_some_and(|p| p.layers.knows(rid));
        if layered {
            self.request_layer_keyframe(&key, rid, now);
        } else {
            self.request_keyframe(&key, now);
        }
        self.process_work(now);
    }

    /// Frames of upstream `up` were lost on the link. Video viewers would decode garbage until
    /// the next keyframe: withhold frames until one arrives, and ask for it now.
    pub fn relay_gap(&mut self, up: UpId, now: Instant) {
        let Some(key) = self.relay_up.get(&up).cloned() else {
            return;
        };
        let Some(p) = self.publications.get_mut(&key) else {
            return;
        };
        if p.kind != MediaKind::Video {
            return; // Audio frames decode on their own.
        }
        // The cached keyframes no longer lead to what follows them.
        if p.layers.is_layered() {
            for l in p.layers.layers_mut() {
                l.data.await_keyframe = true;
                l.data.cache.clear();
            }
        } else {
            p.await_keyframe = true;
            p.cache.clear();
        }
        self.request_keyframe(&key, now);
        self.process_work(now);
    }

    /// The link of upstream `up` died and the relay is looking for a new route: its
    /// subscribers stay attached, and `GET session` shows the track `inactive` meanwhile.
    pub fn relay_upstream_lost(&mut self, up: UpId) {
        if let Some(p) = self
            .relay_up
            .get(&up)
            .and_then(|key| self.publications.get_mut(key))
        {
            p.upstream_lost = true;
        }
    }

    /// Whether an upstream still feeds a publication (the cluster layer keeps ids in step).
    pub fn relay_upstream_live(&self, up: UpId) -> bool {
        self.relay_up.contains_key(&up)
    }

    /// Numbers a frame for downstream `down`, then queues it (a full queue drops it after
    /// numbering, so the gap shows on the other node).
    pub(super) fn push_relay_frame(&mut self, down: DownId, frame: super::RelayFrame) {
        let n = self.relay_down_seq.entry(down).or_insert(0);
        *n = n.wrapping_add(1);
        let seq = *n;
        self.push_relay(RelayOut::Frame { down, seq, frame });
    }

    pub(super) fn push_relay(&mut self, out: RelayOut) {
        // Frames may be dropped under pressure; control outputs never are.
        if matches!(out, RelayOut::Frame { .. }) && self.relay_out.len() >= MAX_RELAY_QUEUE {
            self.stats.relay_dropped += 1;
            return;
        }
        self.relay_out.push_back(out);
    }

    /// Next message for the relay layer; the shell drains it after every input.
    pub fn poll_relay(&mut self) -> Option<RelayOut> {
        self.relay_out.pop_front()
    }
}
