//! Named streams across the cluster: each node gossips the streams it publishes, so WHEP on any
//! node finds the publisher of a name, and two publishers of one name resolve to one winner.
//!
//! One gossip key per published stream: `stream:{app}/{name}` =
//! `{since_ms} {session} {track},{track}…`. Only the publisher's node announces it; a name
//! announced by two live nodes (two WHIP publishers racing within a gossip round) goes to the
//! announce with the smallest `(since_ms, session)`: every node reads the same pair, so every
//! node picks the same winner, with no coordination.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::ids::SessionId;

/// The prefix of every stream key in a member's gossip state.
pub const KEY_PREFIX: &str = "stream:";
/// Streams one node announces at most; past it, new streams are not announced (and counted by
/// the caller). Each costs one small key in every gossip delta until it ends.
pub const MAX_ANNOUNCED: usize = 1024;
/// Longest app id or stream name announced, in bytes.
pub const MAX_NAME: usize = 128;
/// Tracks one stream announces at most (a WHIP publisher sends an audio and a video track; a
/// bound Calls session may carry a few more).
pub const MAX_TRACKS: usize = 8;
/// Longest track name, as the Calls API bounds it.
pub const MAX_TRACK_NAME: usize = 64;

/// One stream as its publisher's node announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAnnounce {
    /// The app the stream belongs to.
    pub app: String,
    /// The stream's name in the app.
    pub name: String,
    /// The publisher's session (its tag names the node that holds it).
    pub session: SessionId,
    /// The session's track names that make up the stream.
    pub tracks: Vec<String>,
    /// When the publisher started, in Unix milliseconds: the older publisher wins a race.
    pub since_ms: u64,
}

/// A stream's key or value this node will not announce or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AnnounceError {
    /// An app id or stream name that is empty, too long or has characters outside
    /// `[A-Za-z0-9._~-]` (what a URL path segment carries unescaped).
    #[error("app ids and stream names are 1 to {MAX_NAME} characters of A-Z a-z 0-9 . _ ~ -")]
    BadName,
    /// No tracks, too many, or a track name that is empty, too long or holds a separator.
    #[error("a stream announces 1 to {MAX_TRACKS} track names of at most {MAX_TRACK_NAME} bytes")]
    BadTracks,
    /// The value is not `{since_ms} {session} {tracks}`.
    #[error("unreadable stream announce")]
    BadValue,
}

/// Whether `s` is a usable app id or stream name.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

/// Whether `tracks` can be announced: 1 to [`MAX_TRACKS`] names of at most [`MAX_TRACK_NAME`]
/// bytes with no separator.
pub fn valid_tracks(tracks: &[String]) -> bool {
    !tracks.is_empty()
        && tracks.len() <= MAX_TRACKS
        && tracks.iter().all(|t| {
            !t.is_empty() && t.len() <= MAX_TRACK_NAME && !t.contains([',', ' ', '\n', '\r', '\t'])
        })
}

impl StreamAnnounce {
    /// The gossip key of this stream.
    pub fn key(&self) -> String {
        format!("{KEY_PREFIX}{}/{}", self.app, self.name)
    }

    /// The gossip value of this stream, as [`StreamAnnounce::decode`] reads it.
    pub fn value(&self) -> String {
        format!(
            "{} {} {}",
            self.since_ms,
            self.session,
            self.tracks.join(",")
        )
    }

    /// Checks the announce can be gossiped and read back: names and tracks within bounds.
    pub fn check(&self) -> Result<(), AnnounceError> {
        if !valid_name(&self.app) || !valid_name(&self.name) {
            return Err(AnnounceError::BadName);
        }
        if !valid_tracks(&self.tracks) {
            return Err(AnnounceError::BadTracks);
        }
        Ok(())
    }

    /// Reads a member's gossiped key and value; anything out of bounds is an error, so a member
    /// cannot make this node hold more than the bounds allow per key.
    pub fn decode(key: &str, value: &str) -> Result<StreamAnnounce, AnnounceError> {
        let (app, name) = key
            .strip_prefix(KEY_PREFIX)
            .and_then(|k| k.split_once('/'))
            .ok_or(AnnounceError::BadName)?;
        let mut parts = value.splitn(3, ' ');
        let since_ms = parts
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(AnnounceError::BadValue)?;
        let session = parts
            .next()
            .and_then(SessionId::parse)
            .ok_or(AnnounceError::BadValue)?;
        let tracks: Vec<String> = parts
            .next()
            .ok_or(AnnounceError::BadValue)?
            .split(',')
            .take(MAX_TRACKS + 1)
            .map(str::to_string)
            .collect();
        let a = StreamAnnounce {
            app: app.to_string(),
            name: name.to_string(),
            session,
            tracks,
            since_ms,
        };
        a.check()?;
        Ok(a)
    }

    /// Whether this announce wins a race against `other` for the same name: the older start,
    /// then the smaller session id. A total order, so every node picks the same winner.
    pub fn wins_over(&self, other: &StreamAnnounce) -> bool {
        (self.since_ms, self.session) < (other.since_ms, other.session)
    }
}

/// The streams this node publishes, which the gossip loop copies into this node's keys.
#[derive(Default)]
pub struct LocalStreams {
    by_key: Mutex<BTreeMap<String, String>>,
}

/// Why a stream was not announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AnnounceRefused {
    /// The announce itself is out of bounds.
    #[error(transparent)]
    Bad(#[from] AnnounceError),
    /// This node already announces [`MAX_ANNOUNCED`] streams.
    #[error("this node already announces {MAX_ANNOUNCED} streams")]
    Full,
}

impl LocalStreams {
    /// Announces (or re-announces, with new tracks) a stream this node publishes.
    pub fn announce(&self, a: &StreamAnnounce) -> Result<(), AnnounceRefused> {
        a.check()?;
        let mut map = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        let key = a.key();
        if !map.contains_key(&key) && map.len() >= MAX_ANNOUNCED {
            return Err(AnnounceRefused::Full);
        }
        map.insert(key, a.value());
        Ok(())
    }

    /// Announces exactly `announces` (those within bounds, at most [`MAX_ANNOUNCED`]): what the
    /// engine publishes now replaces what was announced before.
    pub fn replace_all(&self, announces: &[StreamAnnounce]) {
        let fresh: BTreeMap<String, String> = announces
            .iter()
            .filter(|a| a.check().is_ok())
            .take(MAX_ANNOUNCED)
            .map(|a| (a.key(), a.value()))
            .collect();
        *self.by_key.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
    }

    /// Stops announcing `app`/`name` (its publisher ended), if this node announced it.
    pub fn withdraw(&self, app: &str, name: &str) {
        let mut map = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&format!("{KEY_PREFIX}{app}/{name}"));
    }

    /// The keys and values to gossip now.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        self.by_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeTag;

    fn announce(name: &str, since_ms: u64) -> StreamAnnounce {
        StreamAnnounce {
            app: "demo".into(),
            name: name.into(),
            session: SessionId::new(NodeTag(0xab)),
            tracks: vec!["audio".into(), "video".into()],
            since_ms,
        }
    }

    #[test]
    fn an_announce_reads_back_from_its_key_and_value() {
        let a = announce("cam-1", 1_700_000_000_000);
        assert_eq!(StreamAnnounce::decode(&a.key(), &a.value()), Ok(a));
    }

    #[test]
    fn out_of_bounds_keys_and_values_are_refused() {
        let a = announce("cam", 5);
        let v = a.value();
        let s = a.session.to_string();
        for (key, value) in [
            ("stream:demo", v.as_str()),
            ("other:demo/cam", v.as_str()),
            ("stream:demo/", v.as_str()),
            ("stream:demo/a b", v.as_str()),
            ("stream:demo/cam", ""),
            ("stream:demo/cam", "x 1 a"),
            ("stream:demo/cam", "5 not-a-session audio"),
        ] {
            assert!(StreamAnnounce::decode(key, value).is_err(), "{key} {value}");
        }
        let long = "x".repeat(MAX_NAME + 1);
        assert_eq!(
            StreamAnnounce::decode(&format!("stream:demo/{long}"), &v),
            Err(AnnounceError::BadName)
        );
        let many = ["t"; MAX_TRACKS + 1].join(",");
        assert_eq!(
            StreamAnnounce::decode("stream:demo/cam", &format!("5 {s} {many}")),
            Err(AnnounceError::BadTracks)
        );
        assert_eq!(
            StreamAnnounce::decode("stream:demo/cam", &format!("5 {s} a,,b")),
            Err(AnnounceError::BadTracks)
        );
    }

    #[test]
    fn the_older_publisher_wins_and_a_tie_goes_to_the_smaller_session() {
        let old = announce("cam", 10);
        let new = announce("cam", 11);
        assert!(old.wins_over(&new));
        assert!(!new.wins_over(&old));
        let mut twin = announce("cam", 10);
        twin.session = SessionId::new(NodeTag(0xcd));
        assert_ne!(old.wins_over(&twin), twin.wins_over(&old));
        assert!(!old.wins_over(&old));
    }

    #[test]
    fn a_node_announces_a_bounded_number_of_streams() {
        let local = LocalStreams::default();
        for i in 0..MAX_ANNOUNCED {
            local
                .announce(&announce(&format!("s{i}"), 1))
                .expect("room");
        }
        assert_eq!(
            local.announce(&announce("one-more", 1)),
            Err(AnnounceRefused::Full)
        );
        // Re-announcing a known stream is not a new one.
        assert_eq!(local.announce(&announce("s0", 2)), Ok(()));
        local.withdraw("demo", "s0");
        assert_eq!(local.announce(&announce("one-more", 1)), Ok(()));
        assert_eq!(local.snapshot().len(), MAX_ANNOUNCED);
    }
}
