//! Streams across the cluster, on the engine's side: which streams this node publishes (for
//! gossip to announce), and following a publisher another node holds, so WHEP on any node plays
//! a stream published on any other. The API's follower task (`api/stream_follow.rs`) reads the
//! cluster view and calls these; the media comes over the relay as for any remote pull.

use std::time::{Instant, UNIX_EPOCH};

use crate::cluster::streams::StreamAnnounce;
use crate::engine::Engine;
use crate::ids::SessionId;

/// What the follower needs to know of one stream of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowedStream {
    /// The app.
    pub app: String,
    /// The stream's name.
    pub name: String,
    /// Its publisher now, local or on another node.
    pub publisher: Option<SessionId>,
    /// The publisher is a session of this node.
    pub publisher_is_local: bool,
    /// It has viewers on this node.
    pub has_viewers: bool,
}

impl Engine {
    fn is_local(&self, sid: SessionId) -> bool {
        sid.node_tag() == self.cfg.node_tag
    }

    /// The streams this node's sessions publish, as gossip announces them. A stream whose name
    /// or tracks are beyond the gossip bounds is not announced (it plays on this node only).
    pub fn stream_announces(&self) -> Vec<StreamAnnounce> {
        self.streams
            .all()
            .filter_map(|(app, name, s)| {
                let (session, tracks) = s.publisher.clone()?;
                if !self.is_local(session) || !self.sessions.contains_key(&session) {
                    return None;
                }
                let since_ms = s
                    .publisher_since
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                let a = StreamAnnounce {
                    app: app.to_string(),
                    name: name.to_string(),
                    session,
                    tracks,
                    since_ms,
                };
                a.check().is_ok().then_some(a)
            })
            .collect()
    }

    /// Every stream of this node, with what the follower decides on.
    pub fn streams_to_follow(&self) -> Vec<FollowedStream> {
        self.streams
            .all()
            .map(|(app, name, s)| {
                let publisher = s.publisher.as_ref().map(|(p, _)| *p);
                FollowedStream {
                    app: app.to_string(),
                    name: name.to_string(),
                    publisher,
                    publisher_is_local: publisher.is_some_and(|p| self.is_local(p)),
                    has_viewers: !s.viewers.is_empty(),
                }
            })
            .collect()
    }

    /// Makes the stream follow `winner`, the publisher the cluster agrees on (`None`: no node
    /// publishes it now). A local publisher that lost a race to an older one on another node
    /// is ended, with the reason in the log; viewers move to the winner, and get its media once
    /// its publications are here (the caller pulls them over the relay first). With
    /// `create`, a stream this node does not hold yet is created (a WHEP viewer's first request
    /// for a stream published elsewhere). Without `replace_local`, a local publisher stays (the
    /// follower, which compares start times, is the one that ends a loser).
    pub fn stream_follow(
        &mut self,
        app: &str,
        name: &str,
        winner: Option<(SessionId, Vec<String>)>,
        create: bool,
        replace_local: bool,
        now: Instant,
    ) {
        if let Some((w, _)) = &winner
            && self.is_local(*w)
        {
            // This node's own publisher: local state is the truth, nothing to follow.
            return;
        }
        if self.streams.get(app, name).is_none() {
            if !create || winner.is_none() {
                return;
            }
            if self
                .streams
                .create(app, name, false, std::time::SystemTime::now())
                .is_err()
            {
                return;
            }
        }
        let current = self
            .streams
            .get(app, name)
            .and_then(|s| s.publisher.clone());
        match (&current, &winner) {
            (Some((c, _)), Some((w, _))) if c == w => {
                // Publications may have arrived since the last round.
                self.attach_viewers(app, name, now);
                return;
            }
            (None, None) => return,
            _ => {}
        }
        if let Some((c, _)) = &current {
            if self.is_local(*c) {
                if winner.is_none() || !replace_local {
                    return;
                }
                tracing::info!(%app, stream = %name, session = %c, "another node's older publisher won this stream: ending ours");
                self.close_session(
                    *c,
                    now,
                    "another publisher of this stream, on another node, started first",
                );
            } else {
                self.detach_viewers_from(app, name, *c, now);
            }
        }
        if self.streams.get(app, name).is_none() {
            // Closing the loser removed an auto-created stream with no viewers.
            if !create {
                return;
            }
            let _ = self
                .streams
                .create(app, name, false, std::time::SystemTime::now());
        }
        let ended = winner.is_none();
        self.streams.set_remote_publisher(app, name, winner);
        self.attach_viewers(app, name, now);
        if ended {
            // An auto-created stream whose publisher ended, with no viewer here: nothing keeps it.
            self.streams.drop_if_unused(app, name);
        }
    }

    /// Viewers of the stream stop receiving `publisher`'s tracks (their sections stay, to take
    /// the next publisher's).
    fn detach_viewers_from(&mut self, app: &str, name: &str, publisher: SessionId, now: Instant) {
        let viewers = match self.streams.get(app, name) {
            Some(s) => s.viewers.clone(),
            None => return,
        };
        for v in viewers {
            let mids: Vec<_> = self
                .sessions
                .get(&v)
                .map(|s| {
                    s.remote_by_mid
                        .iter()
                        .filter(|(_, k)| k.0 == publisher)
                        .map(|(m, _)| *m)
                        .collect()
                })
                .unwrap_or_default();
            for mid in mids {
                self.unsubscribe(v, mid, now);
            }
        }
    }
}
