//! The streams API on the engine: create, delete, bind a Calls session's tracks as a stream's
//! publisher, list; and attaching viewers' receiving sections to the publisher's tracks.

use std::time::{Instant, SystemTime};

use str0m::media::{MediaKind, Mid};

use crate::engine::streams::{CreateRefused, Role, valid_stream_name};
use crate::engine::{Engine, OpError, SessionState};
use crate::ids::SessionId;

/// One session of a stream, as `GET streams` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSessionView {
    /// The session (a Calls session id too).
    pub session_id: SessionId,
    /// `new`, `negotiated`, `connected` or `disconnected`; `remote` for a publisher on another
    /// node (its counts are 0 here: its own node lists them).
    pub state: &'static str,
    /// Publisher: its track names in the stream; viewer: the mids that receive.
    pub tracks: Vec<String>,
    /// Packets and bytes received from its client, as str0m last reported them.
    pub packets_in: u64,
    /// See `packets_in`.
    pub bytes_in: u64,
    /// Packets and bytes sent to its client.
    pub packets_out: u64,
    /// See `packets_out`.
    pub bytes_out: u64,
}

/// One stream as `GET streams` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamView {
    /// Its name.
    pub name: String,
    /// When it was created.
    pub created: SystemTime,
    /// Its publisher, if any.
    pub publisher: Option<StreamSessionView>,
    /// Its viewers.
    pub viewers: Vec<StreamSessionView>,
    /// The publisher's codecs seen so far (`VP8/90000`, `opus/48000/2`).
    pub codecs: Vec<String>,
}

/// What a worker answers when another worker is to take one of its streams (the bind of a
/// session held there: a stream lives on one worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandOver {
    /// It holds no such stream.
    Absent,
    /// It held the stream, with no session: removed here, to be made there as it was.
    Handed {
        /// Created with `POST streams/{id}` (or pinned by a cascade).
        explicit: bool,
        /// When it was created.
        created: SystemTime,
    },
    /// It has a publisher (local or another node's) or viewers: it stays.
    InUse,
}

impl Engine {
    /// Removes an empty stream so that another worker can take it (see [`HandOver`]).
    pub fn stream_hand_over(&mut self, app: &str, stream: &str) -> HandOver {
        let Some(s) = self.streams.get(app, stream) else {
            return HandOver::Absent;
        };
        if s.publisher.is_some() || !s.viewers.is_empty() {
            return HandOver::InUse;
        }
        let (explicit, created) = (s.explicit, s.created);
        self.streams.remove(app, stream);
        HandOver::Handed { explicit, created }
    }

    /// Makes a stream another worker handed over ([`Self::stream_hand_over`]).
    pub fn stream_take_over(&mut self, app: &str, stream: &str, handed: HandOver) {
        if let HandOver::Handed { explicit, created } = handed {
            // Full: the bind that follows says so.
            let _ = self.streams.create(app, stream, explicit, created);
        }
    }

    /// The app's streams made with `POST streams/{id}` (or pinned by a cascade) on this worker:
    /// they stay without sessions, so the app's quota counts them.
    pub fn explicit_stream_count(&self, app: &str) -> usize {
        self.streams.of_app(app).filter(|(_, s)| s.explicit).count()
    }

    /// Every viewer of the stream gets the publisher's tracks on its free sections.
    pub(in crate::engine) fn attach_viewers(&mut self, app: &str, stream: &str, now: Instant) {
        let viewers = match self.streams.get(app, stream) {
            Some(s) => s.viewers.clone(),
            None => return,
        };
        for v in viewers {
            self.attach_viewer(v, now);
        }
    }

    /// Attaches the stream's publications to a viewer's sections that carry none: each section
    /// takes the first track of its kind this viewer does not receive yet.
    pub(in crate::engine) fn attach_viewer(&mut self, viewer: SessionId, now: Instant) {
        let Some(m) = self
            .streams
            .session(viewer)
            .filter(|m| m.role == Role::Viewer)
        else {
            return;
        };
        let mids = m.mids.clone();
        let Some((publisher, tracks)) = self
            .streams
            .get(&m.app, &m.stream)
            .and_then(|s| s.publisher.clone())
        else {
            return;
        };
        let mut attached = false;
        for (mid, kind) in mids {
            let Some(s) = self.sessions.get(&viewer) else {
                return;
            };
            if s.remote_by_mid.contains_key(&mid) {
                continue;
            }
            let used: Vec<&String> = s
                .remote_by_mid
                .values()
                .filter(|k| k.0 == publisher)
                .map(|k| &k.1)
                .collect();
            let pick = tracks.iter().find(|t| {
                !used.contains(t)
                    && self
                        .publications
                        .get(&(publisher, (*t).clone()))
                        .is_some_and(|p| p.kind == kind)
            });
            if let Some(name) = pick.cloned() {
                // A section that played an earlier publisher lists the new source, as after
                // `tracks/update`.
                if let Some(e) = self
                    .sessions
                    .get_mut(&viewer)
                    .and_then(|s| s.active_entry_mut(mid))
                {
                    e.track_name = name.clone();
                    e.remote = Some((publisher, name.clone()));
                }
                self.subscribe(viewer, mid, (publisher, name), None, now);
                attached = true;
            }
        }
        if attached
            && self
                .sessions
                .get(&viewer)
                .is_some_and(|s| s.state.is_connected())
        {
            self.request_keyframes_for(viewer, now);
        }
    }

    /// `POST streams/{id}`: creates a stream that stays without sessions; `Ok(true)` when new.
    /// `room`: whether the app may hold one more explicit stream (its quota, counted by the
    /// caller over every worker); one that is explicit already is not counted again.
    pub fn stream_create(&mut self, app: &str, stream: &str, room: bool) -> Result<bool, OpError> {
        if !valid_stream_name(stream) {
            return Err(OpError::Decoding(format!(
                "a stream name is 1 to {} characters of A-Z a-z 0-9 . _ - ~",
                crate::engine::streams::MAX_STREAM_NAME_BYTES
            )));
        }
        if self.streams.get(app, stream).is_some_and(|s| s.explicit) {
            return Ok(false);
        }
        if !room {
            return Err(OpError::OverQuota(
                "this app holds its quota of streams on this node: delete one first".into(),
            ));
        }
        self.streams
            .create(app, stream, true, SystemTime::now())
            .map_err(|CreateRefused::Full| {
                OpError::Unavailable("this node holds its maximum number of streams".into())
            })
    }

    /// `DELETE streams/{id}`: removes the stream and ends its sessions.
    pub fn stream_delete(&mut self, app: &str, stream: &str, now: Instant) -> Result<(), OpError> {
        let Some(sessions) = self.streams.remove(app, stream) else {
            return Err(OpError::NotFound(format!("stream {stream} not found")));
        };
        for sid in sessions {
            self.close_session(sid, now, "stream deleted");
        }
        Ok(())
    }

    /// `PUT streams/{id}/publisher`: a Calls session's published tracks become the stream's
    /// publication set, so WHEP viewers play them. The stream is created if needed.
    pub fn stream_bind(
        &mut self,
        app: &str,
        stream: &str,
        session_id: &str,
        tracks: Vec<String>,
        now: Instant,
    ) -> Result<(), OpError> {
        let sid = self.lookup(app, session_id)?;
        if tracks.is_empty() || tracks.len() > super::MAX_TRACKS_PER_CALL {
            return Err(OpError::InvalidParams(format!(
                "name 1 to {} tracks to bind",
                super::MAX_TRACKS_PER_CALL
            )));
        }
        // Other nodes learn a stream's tracks from gossip: a bind it cannot carry would play
        // here only, and another node would take a second publisher of the name.
        if !crate::cluster::streams::valid_tracks(&tracks) {
            use crate::cluster::streams::{MAX_TRACK_NAME, MAX_TRACKS};
            return Err(OpError::Decoding(format!(
                "a stream's tracks are 1 to {MAX_TRACKS} names of at most {MAX_TRACK_NAME} bytes \
                 without spaces or commas (the other nodes learn them from gossip)"
            )));
        }
        for t in &tracks {
            if !self.publications.contains_key(&(sid, t.clone())) {
                return Err(OpError::NotFound(format!(
                    "session {session_id} publishes no track {t}"
                )));
            }
        }
        if let Some(m) = self.streams.session(sid)
            && (m.stream != stream || m.role != Role::Publisher)
        {
            return Err(OpError::Conflict(format!(
                "session {session_id} is already in stream {}",
                m.stream
            )));
        }
        if let Some(s) = self.streams.get(app, stream)
            && s.publisher.as_ref().is_some_and(|(p, _)| *p != sid)
        {
            return Err(OpError::Conflict(format!(
                "stream {stream} already has a publisher"
            )));
        }
        if !valid_stream_name(stream) {
            return Err(OpError::Decoding("invalid stream name".into()));
        }
        self.streams
            .create(app, stream, false, SystemTime::now())
            .map_err(|CreateRefused::Full| {
                OpError::Unavailable("this node holds its maximum number of streams".into())
            })?;
        self.streams.set_publisher(app, stream, sid, tracks, false);
        self.attach_viewers(app, stream, now);
        self.process_work(now);
        Ok(())
    }

    /// `GET streams`: the app's streams, by name.
    pub fn streams_list(&self, app: &str) -> Vec<StreamView> {
        let mut out: Vec<StreamView> = self
            .streams
            .of_app(app)
            .map(|(name, s)| {
                let publisher = s.publisher.as_ref().map(|(p, tracks)| {
                    self.stream_session_view(*p, tracks.clone())
                        .unwrap_or_else(|| remote_publisher_view(*p, tracks.clone()))
                });
                let codecs = s
                    .publisher
                    .as_ref()
                    .map(|(p, tracks)| {
                        tracks
                            .iter()
                            .filter_map(|t| self.publications.get(&(*p, t.clone()))?.codec)
                            .map(|c| match c.channels {
                                Some(ch) => format!("{}/{}/{ch}", c.codec, c.clock_rate),
                                None => format!("{}/{}", c.codec, c.clock_rate),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let viewers = s
                    .viewers
                    .iter()
                    .filter_map(|v| {
                        let mids = self.streams.session(*v)?.mids.clone();
                        self.stream_session_view(*v, mid_names(&mids))
                    })
                    .collect();
                StreamView {
                    name: name.to_string(),
                    created: s.created,
                    publisher,
                    viewers,
                    codecs,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn stream_session_view(
        &self,
        sid: SessionId,
        tracks: Vec<String>,
    ) -> Option<StreamSessionView> {
        let s = self.sessions.get(&sid)?;
        let ((packets_in, bytes_in), (packets_out, bytes_out)) = s.media_totals();
        Some(StreamSessionView {
            session_id: sid,
            state: match s.state {
                SessionState::New => "new",
                SessionState::Negotiated => "negotiated",
                SessionState::Connected { .. } => "connected",
                SessionState::Disconnected { .. } => "disconnected",
            },
            tracks,
            packets_in,
            bytes_in,
            packets_out,
            bytes_out,
        })
    }
}

/// A publisher held by another node (followed through gossip): its media comes over the relay,
/// and its own node has its counts.
fn remote_publisher_view(sid: SessionId, tracks: Vec<String>) -> StreamSessionView {
    StreamSessionView {
        session_id: sid,
        state: "remote",
        tracks,
        packets_in: 0,
        bytes_in: 0,
        packets_out: 0,
        bytes_out: 0,
    }
}

fn mid_names(mids: &[(Mid, MediaKind)]) -> Vec<String> {
    mids.iter().map(|(m, _)| m.to_string()).collect()
}
