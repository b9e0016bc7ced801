//! Named streams (WHIP/WHEP): a stream is a named set of publications in an app, with at most
//! one publisher session and any number of viewer sessions. A registry only: it holds names and
//! session ids, never media. The sessions are ordinary sessions (the media path is the Calls
//! one); the engine's stream operations (`ops/streams.rs`, `ops/whip.rs`) keep it in step.
//!
//! Its shape is what another node will need to play a stream published here: name → publisher
//! session (whose id names its node) and track names, small enough to gossip.

use std::collections::HashMap;
use std::time::SystemTime;

use str0m::media::{MediaKind, Mid};

use crate::ids::{SessionId, SessionMap, random_hex};

/// Longest stream name, in bytes.
pub const MAX_STREAM_NAME_BYTES: usize = 128;
/// Most streams one node holds (all apps): past it, creating one is refused.
pub const MAX_STREAMS: usize = 10_000;

/// A stream name is 1 to [`MAX_STREAM_NAME_BYTES`] of `A-Z a-z 0-9 . _ - ~` (URL-safe as is).
pub fn valid_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_STREAM_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'~'))
}

/// Which side of a stream a session is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Publishes the stream (WHIP, or a Calls session bound to it).
    Publisher,
    /// Plays it (WHEP).
    Viewer,
}

/// What the registry knows of one session in a stream.
#[derive(Debug, Clone)]
pub struct StreamSession {
    /// The app the stream belongs to.
    pub app: String,
    /// The stream's name.
    pub stream: String,
    /// Publisher or viewer.
    pub role: Role,
    /// Created by WHIP/WHEP (its session URL works); false for a bound Calls session.
    pub via_http: bool,
    /// The WHIP/WHEP ETag of its ICE session; changes on an ICE restart.
    pub etag: String,
    /// For a viewer: its receiving sections, by kind, that publications are attached to.
    pub mids: Vec<(Mid, MediaKind)>,
    /// The client's ICE ufrag in use: a PATCH with another one is an ICE restart.
    pub remote_ufrag: Option<String>,
    /// Remote candidates trickled so far (str0m keeps every distinct one: bounded here).
    pub trickled: usize,
}

/// One stream.
#[derive(Debug, Clone)]
pub struct Stream {
    /// When it was created (wall clock, for the streams list).
    pub created: SystemTime,
    /// Created with `POST streams/{id}`: it stays when its sessions go. An auto-created stream
    /// is removed once it has neither publisher nor viewers.
    pub explicit: bool,
    /// The publishing session and the names of the tracks it publishes into the stream.
    pub publisher: Option<(SessionId, Vec<String>)>,
    /// The viewing sessions, in arrival order.
    pub viewers: Vec<SessionId>,
    /// When the current publisher took the stream: of two publishers racing for one name in the
    /// cluster, the older wins.
    pub publisher_since: Option<SystemTime>,
}

/// Why a stream could not be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateRefused {
    /// The node holds [`MAX_STREAMS`].
    Full,
}

/// Every stream of this node, and which stream each of their sessions is in.
#[derive(Default)]
pub struct Streams {
    streams: HashMap<(String, String), Stream>,
    sessions: SessionMap<StreamSession>,
}

impl Streams {
    /// The stream `name` of `app`.
    pub fn get(&self, app: &str, name: &str) -> Option<&Stream> {
        self.streams.get(&(app.to_string(), name.to_string()))
    }

    fn get_mut(&mut self, app: &str, name: &str) -> Option<&mut Stream> {
        self.streams.get_mut(&(app.to_string(), name.to_string()))
    }

    /// Creates the stream if it does not exist; `Ok(true)` when it was created now. An explicit
    /// creation marks an existing auto-created stream explicit.
    pub fn create(
        &mut self,
        app: &str,
        name: &str,
        explicit: bool,
        now: SystemTime,
    ) -> Result<bool, CreateRefused> {
        if let Some(s) = self.get_mut(app, name) {
            s.explicit |= explicit;
            return Ok(false);
        }
        if self.streams.len() >= MAX_STREAMS {
            return Err(CreateRefused::Full);
        }
        self.streams.insert(
            (app.to_string(), name.to_string()),
            Stream {
                created: now,
                explicit,
                publisher: None,
                viewers: Vec::new(),
                publisher_since: None,
            },
        );
        Ok(true)
    }

    /// Removes a stream; returns its sessions (publisher first), which the caller ends.
    pub fn remove(&mut self, app: &str, name: &str) -> Option<Vec<SessionId>> {
        let s = self.streams.remove(&(app.to_string(), name.to_string()))?;
        let mut ids: Vec<SessionId> = s.publisher.map(|(p, _)| p).into_iter().collect();
        ids.extend(s.viewers);
        for id in &ids {
            self.sessions.remove(id);
        }
        Some(ids)
    }

    /// Sets the stream's publisher (the stream must exist and have none, or have this one).
    pub fn set_publisher(
        &mut self,
        app: &str,
        name: &str,
        session: SessionId,
        tracks: Vec<String>,
        via_http: bool,
    ) -> bool {
        let Some(s) = self.get_mut(app, name) else {
            return false;
        };
        if s.publisher.as_ref().is_some_and(|(p, _)| *p != session) {
            return false;
        }
        if s.publisher.is_none() {
            s.publisher_since = Some(SystemTime::now());
        }
        s.publisher = Some((session, tracks));
        self.sessions.insert(
            session,
            StreamSession {
                app: app.to_string(),
                stream: name.to_string(),
                role: Role::Publisher,
                via_http,
                etag: random_hex(8),
                mids: Vec::new(),
                remote_ufrag: None,
                trickled: 0,
            },
        );
        true
    }

    /// Sets (or clears) a publisher held by another node, which the cluster's gossip named: no
    /// session of this node stands for it. The stream must exist; returns the publisher it had.
    pub fn set_remote_publisher(
        &mut self,
        app: &str,
        name: &str,
        publisher: Option<(SessionId, Vec<String>)>,
    ) -> Option<(SessionId, Vec<String>)> {
        let s = self.get_mut(app, name)?;
        s.publisher_since = publisher.as_ref().map(|_| SystemTime::now());
        std::mem::replace(&mut s.publisher, publisher)
    }

    /// Adds a viewer with its receiving sections (the stream must exist).
    pub fn add_viewer(
        &mut self,
        app: &str,
        name: &str,
        session: SessionId,
        mids: Vec<(Mid, MediaKind)>,
        via_http: bool,
    ) -> bool {
        let Some(s) = self.get_mut(app, name) else {
            return false;
        };
        s.viewers.push(session);
        self.sessions.insert(
            session,
            StreamSession {
                app: app.to_string(),
                stream: name.to_string(),
                role: Role::Viewer,
                via_http,
                etag: random_hex(8),
                mids,
                remote_ufrag: None,
                trickled: 0,
            },
        );
        true
    }

    /// The stream membership of a session.
    pub fn session(&self, id: SessionId) -> Option<&StreamSession> {
        self.sessions.get(&id)
    }

    /// Records the client's ICE ufrag of a session.
    pub fn set_remote_ufrag(&mut self, id: SessionId, ufrag: Option<String>) {
        if let Some(s) = self.sessions.get_mut(&id) {
            s.remote_ufrag = ufrag;
        }
    }

    /// Counts `n` more trickled candidates; false (and nothing counted) past `max` in all.
    pub fn add_trickled(&mut self, id: SessionId, n: usize, max: usize) -> bool {
        match self.sessions.get_mut(&id) {
            Some(s) if s.trickled + n <= max => {
                s.trickled += n;
                true
            }
            _ => false,
        }
    }

    /// A new ETag for a session (after an ICE restart); returns it.
    pub fn renew_etag(&mut self, id: SessionId) -> Option<String> {
        let s = self.sessions.get_mut(&id)?;
        s.etag = random_hex(8);
        Some(s.etag.clone())
    }

    /// A session ended: it leaves its stream, and an auto-created stream left empty goes. A
    /// publisher on another node does not keep it: its own node holds the stream, and a viewer
    /// that comes later follows it again.
    /// Returns the membership it had.
    pub fn session_closed(&mut self, id: SessionId) -> Option<StreamSession> {
        let m = self.sessions.remove(&id)?;
        let key = (m.app.clone(), m.stream.clone());
        let sessions = &self.sessions;
        let empty = match self.streams.get_mut(&key) {
            Some(s) => {
                if s.publisher.as_ref().is_some_and(|(p, _)| *p == id) {
                    s.publisher = None;
                    s.publisher_since = None;
                }
                s.viewers.retain(|v| *v != id);
                let published_here = s
                    .publisher
                    .as_ref()
                    .is_some_and(|(p, _)| sessions.contains_key(p));
                !s.explicit && !published_here && s.viewers.is_empty()
            }
            None => false,
        };
        if empty {
            self.streams.remove(&key);
        }
        Some(m)
    }

    /// Removes an auto-created stream that has neither publisher nor viewers (one whose first
    /// request failed after creating it).
    pub fn drop_if_unused(&mut self, app: &str, name: &str) {
        let key = (app.to_string(), name.to_string());
        if self
            .streams
            .get(&key)
            .is_some_and(|s| !s.explicit && s.publisher.is_none() && s.viewers.is_empty())
        {
            self.streams.remove(&key);
        }
    }

    /// The streams of one app, by name.
    pub fn of_app<'a>(&'a self, app: &'a str) -> impl Iterator<Item = (&'a str, &'a Stream)> {
        self.streams
            .iter()
            .filter(move |((a, _), _)| a == app)
            .map(|((_, n), s)| (n.as_str(), s))
    }

    /// Every stream of every app, as `(app, name, stream)`.
    pub fn all(&self) -> impl Iterator<Item = (&str, &str, &Stream)> {
        self.streams
            .iter()
            .map(|((a, n), s)| (a.as_str(), n.as_str(), s))
    }

    /// Streams held, all apps.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// No streams at all.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeTag;

    #[test]
    fn names_are_bounded_and_url_safe() {
        assert!(valid_stream_name("cam-1.main_~x"));
        for bad in ["", "a/b", "a b", "é", "a?b", "%2e"] {
            assert!(!valid_stream_name(bad), "{bad:?}");
        }
        assert!(valid_stream_name(&"x".repeat(MAX_STREAM_NAME_BYTES)));
        assert!(!valid_stream_name(&"x".repeat(MAX_STREAM_NAME_BYTES + 1)));
    }

    #[test]
    fn one_publisher_and_auto_streams_go_when_empty() {
        let mut s = Streams::default();
        let now = SystemTime::now();
        let (p, q, v) = (
            SessionId::new(NodeTag(1)),
            SessionId::new(NodeTag(1)),
            SessionId::new(NodeTag(1)),
        );
        assert_eq!(s.create("app", "x", false, now), Ok(true));
        assert!(s.set_publisher("app", "x", p, vec!["video".into()], true));
        assert!(
            !s.set_publisher("app", "x", q, vec![], true),
            "one publisher"
        );
        assert!(s.add_viewer("app", "x", v, vec![], true));
        assert!(s.get("other", "x").is_none(), "streams are per app");
        assert_eq!(s.session_closed(p).map(|m| m.role), Some(Role::Publisher));
        assert!(s.get("app", "x").is_some(), "a viewer keeps it");
        assert!(
            s.set_publisher("app", "x", q, vec![], true),
            "a new one may come"
        );
        s.session_closed(q);
        s.session_closed(v);
        assert!(s.get("app", "x").is_none(), "auto-created and empty: gone");

        assert_eq!(s.create("app", "y", true, now), Ok(true));
        assert!(s.add_viewer("app", "y", v, vec![], true));
        s.session_closed(v);
        assert!(s.get("app", "y").is_some(), "explicit streams stay");
        assert_eq!(s.remove("app", "y"), Some(vec![]));
    }

    #[test]
    fn an_auto_stream_following_another_nodes_publisher_goes_with_its_last_viewer() {
        let mut s = Streams::default();
        let now = SystemTime::now();
        let (remote, v) = (SessionId::new(NodeTag(2)), SessionId::new(NodeTag(1)));
        assert!(s.create("app", "cam", false, now).is_ok());
        s.set_remote_publisher("app", "cam", Some((remote, vec!["video".into()])));
        assert!(s.add_viewer("app", "cam", v, Vec::new(), true));
        s.session_closed(v);
        assert!(
            s.get("app", "cam").is_none(),
            "nothing keeps it on this node"
        );
        // An explicit one stays.
        assert!(s.create("app", "kept", true, now).is_ok());
        s.set_remote_publisher("app", "kept", Some((remote, vec!["video".into()])));
        assert!(s.add_viewer("app", "kept", v, Vec::new(), true));
        s.session_closed(v);
        assert!(s.get("app", "kept").is_some());
    }

    #[test]
    fn the_number_of_streams_is_bounded() {
        let mut s = Streams::default();
        let now = SystemTime::now();
        for i in 0..MAX_STREAMS {
            assert_eq!(s.create("a", &i.to_string(), true, now), Ok(true));
        }
        assert_eq!(
            s.create("a", "one-more", true, now),
            Err(CreateRefused::Full)
        );
        assert_eq!(s.create("a", "0", true, now), Ok(false), "existing is fine");
    }
}
