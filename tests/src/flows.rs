//! Multi-step scenarios shared by the integration tests: a sending publisher, a receiving
//! subscriber, and bounded polling of the API.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use str0m::media::MediaKind;

use crate::api::{CallsClient, SessionState, TracksResponse};
use crate::peer::{Peer, PushedTrack};

/// How long a peer may take to connect to the node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long media may take to show up on a subscriber.
pub const MEDIA_TIMEOUT: Duration = Duration::from_secs(15);
/// [`Subscriber::start_retrying`]: how long a `not_found_track_error` is retried ...
pub const NOT_FOUND_RETRY: Duration = Duration::from_secs(5);
/// ... and how often.
pub const NOT_FOUND_STEP: Duration = Duration::from_millis(200);

/// A publisher session: one peer pushing audio + video, sending synthetic media.
pub struct Publisher {
    pub peer: Peer,
    pub session_id: String,
    pub tracks: Vec<PushedTrack>,
}

impl Publisher {
    /// `sessions/new`, push the tracks, wait for the connection, start sending, and wait until
    /// a few frames per track went out.
    pub async fn start(
        api: &CallsClient,
        name: &str,
        tracks: &[(&str, MediaKind)],
    ) -> anyhow::Result<Publisher> {
        Self::start_on(api, Peer::new(name)?, tracks).await
    }

    /// [`Publisher::start`] with a given peer (e.g. the load generator's task-driven one).
    pub async fn start_on<S: AsRef<str>>(
        api: &CallsClient,
        peer: Peer,
        tracks: &[(S, MediaKind)],
    ) -> anyhow::Result<Publisher> {
        let who = format!("publisher {}", peer.name());
        let session_id = api
            .sessions_new()
            .await
            .with_context(|| format!("{who}: sessions/new"))?
            .session_id;
        let pushed = peer
            .push(api, &session_id, tracks)
            .await
            .with_context(|| format!("{who}: push"))?;
        peer.wait_connected(CONNECT_TIMEOUT).await?;
        let mids: Vec<&str> = pushed.iter().map(|t| t.mid.as_str()).collect();
        peer.start_sending(&mids).await?;
        let check: Vec<String> = pushed.iter().map(|t| t.mid.clone()).collect();
        peer.wait_until("first frames sent", MEDIA_TIMEOUT, move |s| {
            check.iter().all(|m| s.tx_frames(m) >= 5)
        })
        .await?;
        Ok(Publisher {
            peer,
            session_id,
            tracks: pushed,
        })
    }

    /// Audio + video with track names `<prefix>-audio` and `<prefix>-video`.
    pub async fn start_av(api: &CallsClient, prefix: &str) -> anyhow::Result<Publisher> {
        let a = format!("{prefix}-audio");
        let v = format!("{prefix}-video");
        Self::start(
            api,
            prefix,
            &[(&a, MediaKind::Audio), (&v, MediaKind::Video)],
        )
        .await
    }

    pub fn track(&self, kind: MediaKind) -> anyhow::Result<&PushedTrack> {
        self.tracks
            .iter()
            .find(|t| t.kind == kind)
            .ok_or_else(|| anyhow!("publisher has no {kind} track"))
    }

    /// (sessionId, trackName) of every track, for pulling.
    pub fn remote_refs(&self) -> Vec<(String, String)> {
        self.tracks
            .iter()
            .map(|t| (self.session_id.clone(), t.track_name.clone()))
            .collect()
    }
}

/// A subscriber session: one peer pulling tracks.
pub struct Subscriber {
    pub peer: Peer,
    pub session_id: String,
    /// The tracks/new answer of the pull.
    pub pull: TracksResponse,
}

impl Subscriber {
    /// A new peer and a new session for it.
    async fn new_session(api: &CallsClient, name: &str) -> anyhow::Result<(Peer, String)> {
        let peer = Peer::new(name)?;
        let session_id = api
            .sessions_new()
            .await
            .context("subscriber sessions/new")?
            .session_id;
        Ok((peer, session_id))
    }

    /// `sessions/new`, pull the tracks, answer the SFU's offer, wait for the connection.
    pub async fn start(
        api: &CallsClient,
        name: &str,
        remote: &[(String, String)],
    ) -> anyhow::Result<Subscriber> {
        let (peer, session_id) = Self::new_session(api, name).await?;
        Self::pull_on(api, peer, session_id, remote).await
    }

    /// [`Subscriber::start`] with a given peer (e.g. an IPv6 or ICE-TCP one).
    pub async fn start_on(
        api: &CallsClient,
        peer: Peer,
        remote: &[(String, String)],
    ) -> anyhow::Result<Subscriber> {
        let session_id = api
            .sessions_new()
            .await
            .context("subscriber sessions/new")?
            .session_id;
        Self::pull_on(api, peer, session_id, remote).await
    }

    async fn pull_on(
        api: &CallsClient,
        peer: Peer,
        session_id: String,
        remote: &[(String, String)],
    ) -> anyhow::Result<Subscriber> {
        let refs: Vec<(&str, &str)> = remote
            .iter()
            .map(|(s, t)| (s.as_str(), t.as_str()))
            .collect();
        let pull = peer
            .pull(api, &session_id, &refs)
            .await
            .context("subscriber pull")?;
        peer.wait_connected(CONNECT_TIMEOUT).await?;
        Ok(Subscriber {
            peer,
            session_id,
            pull,
        })
    }

    /// Like [`Subscriber::start`], but items answered with `not_found_track_error` are pulled
    /// again every [`NOT_FOUND_STEP`] for up to [`NOT_FOUND_RETRY`] (in a cluster the origin
    /// may not know a track until its publisher sent the first frames). Found items are
    /// negotiated as they come. Other errors are not retried. After the bound, the
    /// `not_found_track_error` items stay in `pull`, so [`Subscriber::mid_of`] reports them.
    /// Fails when no item could be pulled at all.
    pub async fn start_retrying(
        api: &CallsClient,
        name: &str,
        remote: &[(String, String)],
    ) -> anyhow::Result<Subscriber> {
        let (peer, session_id) = Self::new_session(api, name).await?;
        Self::pull_retrying(api, peer, session_id, remote).await
    }

    /// The pull part of [`Subscriber::start_retrying`] for an existing session and peer; `api`
    /// may point at any node of a cluster (not necessarily the session's owner).
    pub async fn pull_retrying(
        api: &CallsClient,
        peer: Peer,
        session_id: String,
        remote: &[(String, String)],
    ) -> anyhow::Result<Subscriber> {
        let merged = peer
            .pull_retrying(api, &session_id, remote, NOT_FOUND_RETRY, NOT_FOUND_STEP)
            .await
            .context("subscriber pull")?;
        if !merged.tracks.iter().any(|t| t.error_code.is_none()) {
            bail!("no track could be pulled: {merged:?}");
        }
        peer.wait_connected(CONNECT_TIMEOUT).await?;
        Ok(Subscriber {
            peer,
            session_id,
            pull: merged,
        })
    }

    /// The mid the SFU assigned for (sessionId, trackName), if the item succeeded.
    pub fn mid_of(&self, session_id: &str, track_name: &str) -> anyhow::Result<String> {
        let item = self
            .pull
            .tracks
            .iter()
            .find(|t| {
                t.session_id.as_deref() == Some(session_id)
                    && t.track_name.as_deref() == Some(track_name)
            })
            .ok_or_else(|| {
                anyhow!(
                    "pull response has no item for {session_id}/{track_name}: {:?}",
                    self.pull
                )
            })?;
        if let Some(code) = &item.error_code {
            bail!(
                "pull item {track_name} failed: {code}: {:?}",
                item.error_description
            );
        }
        match item.mid.as_deref() {
            Some(m) if !m.is_empty() => Ok(m.to_string()),
            _ => bail!("pull item {track_name} has no mid: {item:?}"),
        }
    }
}

/// Poll `GET sessions/{id}` every 100 ms until `pred` holds; returns the last state.
pub async fn wait_session(
    api: &CallsClient,
    session_id: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&SessionState) -> bool,
) -> anyhow::Result<SessionState> {
    let deadline = Instant::now() + timeout;
    let step = Duration::from_millis(100);
    let max_polls = timeout.as_millis() / step.as_millis() + 2;
    let mut last = None;
    for _ in 0..max_polls {
        let st = api.get_session(session_id).await?;
        if pred(&st) {
            return Ok(st);
        }
        last = Some(st);
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(step).await;
    }
    bail!(
        "timed out after {timeout:?} waiting for session {session_id}: {what}; last state: {last:?}"
    )
}

/// Wait `settle`, then check that `bytes()` does not grow over `window`. Returns (before, after).
pub async fn bytes_stop_growing(
    settle: Duration,
    window: Duration,
    bytes: impl Fn() -> u64,
) -> (u64, u64) {
    tokio::time::sleep(settle).await;
    let before = bytes();
    tokio::time::sleep(window).await;
    (before, bytes())
}
