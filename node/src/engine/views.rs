//! Read-only views: the admin API's sessions and publications, `GET sessions/{id}`, counts.

use super::ops::{
    AppListing, AppSessionSummary, PublicationSummary, PublishedTrack, SessionSummary,
    SimulcastView, TrackStatus,
};
use super::publications::{Sink, Source};
use super::session::Location;
use super::{Engine, OpError};
use crate::ids::SessionId;

impl Engine {
    /// Live sessions on this node, for the admin API, the drain and the load gossiped to others.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Tells the engine how many sessions the node's other engine workers hold, so that
    /// `max_sessions` caps the node, not each worker (the shell updates it after every turn).
    pub fn set_sessions_elsewhere(&mut self, n: usize) {
        self.sessions_elsewhere = n;
    }

    /// Sessions of clients: all but cascades' outgoing sessions, which serve clients (a drain
    /// waits for these to end, then shutdown stops the cascades).
    pub fn client_session_count(&self) -> usize {
        self.sessions.len().saturating_sub(self.outgoing.len())
    }

    /// Live sessions of one app.
    pub fn app_session_count(&self, app: &str) -> usize {
        self.app_sessions.get(app).copied().unwrap_or(0)
    }

    /// Those of `ids` this engine does not hold (closed, or never here): the rooms use it to end
    /// a WebSocket participant whose session the engine closed under it.
    pub fn sessions_missing(&self, ids: &[SessionId]) -> Vec<SessionId> {
        ids.iter()
            .copied()
            .filter(|id| !self.sessions.contains_key(id))
            .collect()
    }

    /// Publications held here (local and relayed in), for the load gossiped to others.
    pub fn publication_count(&self) -> usize {
        self.publications.len()
    }

    /// Every session of this node with its tracks, for the admin view.
    pub fn admin_sessions(&self) -> Vec<SessionSummary> {
        let mut ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        ids.sort();
        ids.into_iter()
            .filter_map(|id| self.admin_session(id))
            .collect()
    }

    /// One session with its tracks, for the admin view; `None` when it is gone.
    pub fn admin_session(&self, id: SessionId) -> Option<SessionSummary> {
        let s = self.sessions.get(&id)?;
        let tracks = self.session_tracks(&s.app, &id.to_string()).ok()?;
        Some(SessionSummary {
            session_id: id,
            app: s.app.clone(),
            connected: s.state.is_connected(),
            tracks,
        })
    }

    /// The app's sessions on this node with the tracks each published, for the app's own
    /// listing: at most `max_sessions` sessions (lowest ids first) and `max_tracks` tracks each,
    /// newest tracks kept; anything cut sets `truncated`.
    pub fn app_listing(&self, app: &str, max_sessions: usize, max_tracks: usize) -> AppListing {
        let mut ids: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.app == app)
            .map(|(id, _)| *id)
            .collect();
        ids.sort();
        let mut out = AppListing {
            truncated: ids.len() > max_sessions,
            sessions: Vec::with_capacity(ids.len().min(max_sessions)),
        };
        for id in ids.into_iter().take(max_sessions) {
            let Some(s) = self.sessions.get(&id) else {
                continue;
            };
            let local: Vec<_> = s
                .tracks
                .iter()
                .filter(|e| e.location == Location::Local)
                .collect();
            let skip = local.len().saturating_sub(max_tracks);
            out.truncated |= skip > 0;
            let published = local
                .into_iter()
                .skip(skip)
                .map(|e| PublishedTrack {
                    track_name: e.track_name.clone(),
                    kind: s.rtc.media(e.mid).map(|m| m.kind()),
                    active: !e.closed && s.local_by_mid.contains_key(&e.mid),
                })
                .collect();
            out.sessions.push(AppSessionSummary {
                session_id: id,
                connected: s.state.is_connected(),
                published,
            });
        }
        out
    }

    /// Tracks published on this node, with their local subscribers and relay downstream ids.
    pub fn admin_publications(&self) -> Vec<PublicationSummary> {
        let mut out: Vec<PublicationSummary> = self
            .publications
            .iter()
            .filter(|(_, p)| matches!(p.source, Source::Session(_)))
            .map(|(k, p)| PublicationSummary {
                session_id: k.0,
                track_name: k.1.clone(),
                kind: p.kind,
                local_subscribers: p
                    .subscribers
                    .iter()
                    .filter(|s| matches!(s, Sink::Session(..)))
                    .count(),
                downstreams: p
                    .subscribers
                    .iter()
                    .filter_map(|s| match s {
                        Sink::Relay(d) => Some(*d),
                        Sink::Session(..) => None,
                    })
                    .collect(),
            })
            .collect();
        out.sort_by(|a, b| (a.session_id, &a.track_name).cmp(&(b.session_id, &b.track_name)));
        out
    }

    /// Local subscribers of a publication (local or relayed) held here.
    pub fn local_subscriber_count(&self, session: SessionId, track: &str) -> usize {
        self.publications
            .get(&(session, track.to_string()))
            .map(|p| {
                p.subscribers
                    .iter()
                    .filter(|s| matches!(s, Sink::Session(..)))
                    .count()
            })
            .unwrap_or(0)
    }

    /// A pulled track's simulcast state: for a pull with `simulcast` or of a layered
    /// publication, while it is active.
    fn simulcast_view(&self, s: &super::Session, e: &super::TrackEntry) -> Option<SimulcastView> {
        if e.location != Location::Remote || e.closed {
            return None;
        }
        let key = s.remote_by_mid.get(&e.mid)?;
        let selector = s.simulcast.get(&e.mid);
        let layered = self
            .publications
            .get(key)
            .is_some_and(|p| p.layers.is_layered());
        if selector.is_none() && !layered {
            return None;
        }
        Some(SimulcastView {
            prefs: selector.map(|l| l.prefs).unwrap_or_default(),
            current_rid: selector.and_then(|l| l.current()),
        })
    }

    /// `GET sessions/{id}`: every track the session has had, with its status.
    pub fn session_tracks(&self, app: &str, session_id: &str) -> Result<Vec<TrackStatus>, OpError> {
        let sid = self.lookup(app, session_id)?;
        let s = &self.sessions[&sid];
        Ok(s.tracks
            .iter()
            .map(|e| {
                let active = !e.closed
                    && match e.location {
                        Location::Local => s.local_by_mid.contains_key(&e.mid),
                        Location::Remote => s
                            .remote_by_mid
                            .get(&e.mid)
                            .and_then(|key| self.publications.get(key))
                            .is_some_and(|p| !p.upstream_lost),
                    };
                TrackStatus {
                    location: e.location,
                    mid: e.mid.to_string(),
                    track_name: e.track_name.clone(),
                    session_id: e.remote.as_ref().map(|k| k.0.to_string()),
                    active,
                    simulcast: self.simulcast_view(s, e),
                }
            })
            .collect())
    }
}
