//! `PUT tracks/update`: points existing receiving mids at other publications.

use std::time::Instant;

use str0m::media::Mid;

use str0m::media::Rid;

use super::{MAX_TRACKS_PER_CALL, SimulcastView, TrackResult, UpdateTrack};
use crate::engine::TrackKey;
use crate::engine::session::Location;
use crate::engine::simulcast::Prefs;
use crate::engine::{Engine, OpError, TrackError};
use crate::ids::SessionId;

/// A `tracks/update` call holds between 1 and [`MAX_TRACKS_PER_CALL`] items. The API checks it
/// too, before it resolves the items' remote tracks.
pub fn check_update_count(n: usize) -> Result<(), OpError> {
    if n == 0 || n > MAX_TRACKS_PER_CALL {
        return Err(OpError::InvalidParams(format!(
            "between 1 and {MAX_TRACKS_PER_CALL} tracks per request, got {n}"
        )));
    }
    Ok(())
}

impl Engine {
    /// `PUT tracks/update`: points existing receiving mids at other publications.
    pub fn tracks_update(
        &mut self,
        app: &str,
        session_id: &str,
        tracks: Vec<UpdateTrack>,
        now: Instant,
    ) -> Result<Vec<TrackResult>, OpError> {
        let sid = self.lookup(app, session_id)?;
        check_update_count(tracks.len())?;
        let mut results = Vec::new();
        for t in tracks {
            let mut r = TrackResult {
                session_id: t.session_id.clone(),
                track_name: t.track_name.clone(),
                mid: t.mid.clone().unwrap_or_default(),
                ..TrackResult::default()
            };
            let mid = t.mid.as_deref().map(Mid::from);
            let current = mid.and_then(|m| {
                self.sessions[&sid]
                    .tracks
                    .iter()
                    .find(|e| e.mid == m && !e.closed && e.location == Location::Remote)
                    .map(|e| e.mid)
            });
            let Some(mid) = current else {
                r.error = Some(TrackError::Update(
                    "mid is not a pulled track of this session".into(),
                ));
                r.mid = String::new();
                results.push(r);
                continue;
            };
            let key = match (
                t.session_id.as_deref().and_then(SessionId::parse),
                t.track_name,
            ) {
                (Some(p), Some(name)) => (p, name),
                _ => {
                    r.error = Some(TrackError::NotFound);
                    r.mid = String::new();
                    results.push(r);
                    continue;
                }
            };
            r.simulcast = t.simulcast.map(|prefs| SimulcastView {
                prefs,
                current_rid: None,
            });
            // Same publication with `simulcast`: only the layer choice changes; the switch
            // happens on the new layer's keyframe, the old one flowing until then.
            let same = self.sessions[&sid].remote_by_mid.get(&mid) == Some(&key);
            if let (true, Some(prefs)) = (same, t.simulcast) {
                match self.update_layer(sid, mid, &key, prefs, now) {
                    Ok(current_rid) => {
                        r.simulcast = Some(SimulcastView { prefs, current_rid });
                    }
                    Err(e) => {
                        r.error = Some(e);
                        r.mid = String::new();
                    }
                }
                results.push(r);
                continue;
            }
            let want_kind = self.sessions[&sid].rtc.media(mid).map(|m| m.kind());
            match self.publications.get(&key).filter(|p| *p.app == *app) {
                Some(p) if Some(p.kind) == want_kind => {}
                Some(_) => {
                    r.error = Some(TrackError::Update(
                        "the publication's kind differs from the transceiver's".into(),
                    ));
                    r.mid = String::new();
                    results.push(r);
                    continue;
                }
                None => {
                    r.error = Some(TrackError::NotFound);
                    r.mid = String::new();
                    results.push(r);
                    continue;
                }
            }
            self.unsubscribe(sid, mid, now);
            if let Some(e) = self
                .sessions
                .get_mut(&sid)
                .and_then(|s| s.active_entry_mut(mid))
            {
                e.track_name = key.1.clone();
                e.remote = Some(key.clone());
            }
            self.subscribe(sid, mid, key.clone(), t.simulcast, now);
            self.serve_cached_keyframe(sid, mid, &key, now);
            // Of a layered publication, only the layer this mid starts on.
            self.request_subscriber_keyframe(&key, None, sid, mid, now);
            results.push(r);
        }
        self.process_work(now);
        Ok(results)
    }

    /// A new simulcast choice for a mid that receives `key`: `update_track_error` when the
    /// publication has no layers. Returns the layer the subscriber receives until the switch.
    fn update_layer(
        &mut self,
        sid: SessionId,
        mid: Mid,
        key: &TrackKey,
        prefs: Prefs,
        now: Instant,
    ) -> Result<Option<Rid>, TrackError> {
        let p = self.publications.get(key).ok_or(TrackError::NotFound)?;
        if !p.layers.is_layered() {
            return Err(TrackError::Update(
                "the track is not simulcast: it has no layers to choose from".into(),
            ));
        }
        if let Some(rid) = prefs.preferred_rid
            && !p.layers.knows(rid)
        {
            return Err(TrackError::Update(format!(
                "the track has no simulcast layer with rid {rid}"
            )));
        }
        let s = self
            .sessions
            .get_mut(&sid)
            .ok_or_else(|| TrackError::Internal("session vanished".into()))?;
        let selector = s.simulcast.entry(mid).or_default();
        let target = selector.set_prefs(prefs, &p.layers, now);
        let current = selector.current();
        // A relayed publication pulls the new layer now (and the old one until the switch),
        // before asking for its keyframe.
        self.update_upstream_layers(key, now);
        if let Some(rid) = target {
            self.request_layer_keyframe(key, rid, now);
        }
        Ok(current)
    }
}
