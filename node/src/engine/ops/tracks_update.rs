//! `PUT tracks/update`: points existing receiving mids at other publications.

use std::time::Instant;

use str0m::media::Mid;

use super::{MAX_TRACKS_PER_CALL, TrackResult, UpdateTrack};
use crate::engine::session::Location;
use crate::engine::{Engine, OpError, TrackError};
use crate::ids::SessionId;

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
        if tracks.is_empty() || tracks.len() > MAX_TRACKS_PER_CALL {
            return Err(OpError::InvalidParams(format!(
                "between 1 and {MAX_TRACKS_PER_CALL} tracks per request, got {}",
                tracks.len()
            )));
        }
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
            self.subscribe(sid, mid, key.clone(), now);
            self.serve_cached_keyframe(sid, mid, &key, now);
            self.request_keyframe(&key, now);
            results.push(r);
        }
        self.process_work(now);
        Ok(results)
    }
}
