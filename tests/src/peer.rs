//! The WebRTC test client: a [`trackmesh_testkit::Client`] (str0m, full ICE, one UDP socket on
//! 127.0.0.1 or on [`PEER_IP_ENV`]) plus the Calls API flows that drive it: push, pull, close.
//! The integration tests run it on a std thread ([`Peer::new`]); the load generator runs it as
//! a tokio task ([`Peer::start`]).

use std::net::{IpAddr, Ipv4Addr};
use std::ops::Deref;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use str0m::media::MediaKind;
pub use trackmesh_testkit::client::{ClientStats as PeerStats, TrackRx, TrackTx};
use trackmesh_testkit::media::VideoShape;
pub use trackmesh_testkit::media::{TIMESTAMP_OFFSET, clock_origin, micros_since_origin};
pub use trackmesh_testkit::{Client, ClientConfig};

use crate::api::{CallsClient, SessionDescription, TrackObject, TracksRequest, TracksResponse};

/// A test peer never outlives this, whatever the test does.
const MAX_PEER_LIFETIME: Duration = Duration::from_secs(600);

/// Env: the IP every peer of this process binds to and offers as its host candidate, instead of
/// 127.0.0.1. Set by tests that re-run themselves inside a network namespace (`tests/src/netns.rs`),
/// where the nodes are reached on a veth address.
pub const PEER_IP_ENV: &str = "TRACKMESH_TEST_PEER_IP";

/// The IP peers bind to: [`PEER_IP_ENV`] or 127.0.0.1.
pub fn peer_ip() -> anyhow::Result<IpAddr> {
    match std::env::var(PEER_IP_ENV) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{PEER_IP_ENV}={v:?} is not an IP address")),
        Err(_) => Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    }
}

/// A pushed (published) track.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushedTrack {
    pub track_name: String,
    pub mid: String,
    pub kind: MediaKind,
}

/// The test client. Everything of [`Client`] (SDP steps, media, counters, waits) is reached
/// through `Deref`; dropping the peer stops its driver.
pub struct Peer {
    client: Client,
}

impl Deref for Peer {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Peer {
    /// A peer on its own thread, with one UDP socket on 127.0.0.1 (or [`PEER_IP_ENV`]) as its
    /// host candidate, sending light video ([`VideoShape::LIGHT`]).
    pub fn new(name: &str) -> anyhow::Result<Peer> {
        let mut cfg = ClientConfig::new(name, MAX_PEER_LIFETIME);
        cfg.video = VideoShape::LIGHT;
        cfg.ip = peer_ip()?;
        Ok(Peer {
            client: Client::spawn_thread(cfg)?,
        })
    }

    /// A peer around a client set up by the caller (e.g. on IPv6, or over ICE-TCP).
    pub fn from_client(client: Client) -> Peer {
        Peer { client }
    }

    /// A peer as a task on the current tokio runtime (hundreds per process).
    pub async fn start(cfg: ClientConfig) -> anyhow::Result<Peer> {
        Ok(Peer {
            client: Client::spawn_task(cfg).await?,
        })
    }

    /// Publish: offer with one SendOnly m-line per track, `POST tracks/new` with
    /// `{location:"local", mid, trackName}` items, accept the answer. Does not start sending.
    pub async fn push<S: AsRef<str>>(
        &self,
        api: &CallsClient,
        session_id: &str,
        tracks: &[(S, MediaKind)],
    ) -> anyhow::Result<Vec<PushedTrack>> {
        let kinds: Vec<MediaKind> = tracks.iter().map(|(_, k)| *k).collect();
        let (mids, offer) = self.create_send_offer(&kinds).await?;
        let items: Vec<TrackObject> = tracks
            .iter()
            .zip(&mids)
            .map(|((name, _), mid)| TrackObject::local(mid, name.as_ref()))
            .collect();
        let req = TracksRequest {
            session_description: Some(SessionDescription::offer(offer)),
            tracks: Some(items),
            auto_discover: None,
        };
        let answer = async {
            let resp = api.tracks_new(session_id, &req).await?;
            if let Some(code) = &resp.error_code {
                bail!("push rejected: {code}: {:?}", resp.error_description);
            }
            let sd = resp
                .session_description
                .ok_or_else(|| anyhow!("push answer carries no sessionDescription"))?;
            if sd.kind != "answer" {
                bail!("push: expected an answer, got {:?}", sd.kind);
            }
            Ok(sd.sdp)
        }
        .await;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                self.drop_pending_offer().await?;
                return Err(e);
            }
        };
        self.accept_answer(&answer).await?;
        Ok(tracks
            .iter()
            .zip(mids)
            .map(|((name, kind), mid)| PushedTrack {
                track_name: name.as_ref().to_string(),
                mid,
                kind: *kind,
            })
            .collect())
    }

    /// Subscribe: `POST tracks/new` with remote tracks (no SDP); if the SFU sends an offer,
    /// answer it and `PUT renegotiate`. Returns the tracks/new response (mids per item).
    pub async fn pull(
        &self,
        api: &CallsClient,
        session_id: &str,
        remote: &[(&str, &str)],
    ) -> anyhow::Result<TracksResponse> {
        let items = remote
            .iter()
            .map(|(sid, name)| TrackObject::remote(sid, name))
            .collect();
        self.pull_items(api, session_id, items).await
    }

    /// [`Peer::pull`] with the request's items as given (say with `simulcast`).
    pub async fn pull_items(
        &self,
        api: &CallsClient,
        session_id: &str,
        items: Vec<TrackObject>,
    ) -> anyhow::Result<TracksResponse> {
        let req = TracksRequest {
            session_description: None,
            tracks: Some(items),
            auto_discover: None,
        };
        let resp = api.tracks_new(session_id, &req).await?;
        self.answer_pull(api, session_id, &resp).await?;
        Ok(resp)
    }

    /// If a pull's response carries the SFU's offer, answer it with `PUT renegotiate`.
    async fn answer_pull(
        &self,
        api: &CallsClient,
        session_id: &str,
        resp: &TracksResponse,
    ) -> anyhow::Result<()> {
        if let Some(sd) = &resp.session_description {
            if sd.kind != "offer" {
                bail!("pull: expected an SFU offer, got {:?}", sd.kind);
            }
            let answer = self.accept_offer(&sd.sdp).await?;
            api.renegotiate(session_id, &answer)
                .await
                .with_context(|| format!("{}: renegotiate", self.name()))?;
        } else if resp.requires_immediate_renegotiation == Some(true) {
            bail!("pull: requiresImmediateRenegotiation without a sessionDescription");
        }
        Ok(())
    }

    /// Pull `remote`, pulling the items answered `not_found_track_error` again every `step`
    /// for up to `retry` (in a cluster a node may learn a track a little after its publisher
    /// started). Found items are negotiated as they come. Other errors are not retried. Returns
    /// the items of every attempt merged; after the bound the `not_found_track_error` items
    /// stay in it.
    pub async fn pull_retrying(
        &self,
        api: &CallsClient,
        session_id: &str,
        remote: &[(String, String)],
        retry: Duration,
        step: Duration,
    ) -> anyhow::Result<TracksResponse> {
        let deadline = Instant::now() + retry;
        let max_attempts = retry.as_millis() / step.as_millis().max(1) + 2;
        let mut pending: Vec<(String, String)> = remote.to_vec();
        let mut merged = TracksResponse::default();
        for attempt in 1..=max_attempts {
            let req = TracksRequest::pull(&pending);
            let resp = api
                .tracks_new(session_id, &req)
                .await
                .with_context(|| format!("{}: pull (attempt {attempt})", self.name()))?;
            if let Some(code) = &resp.error_code {
                bail!("pull rejected: {code}: {:?}", resp.error_description);
            }
            self.answer_pull(api, session_id, &resp).await?;
            if resp.session_description.is_some() {
                merged.session_description = resp.session_description.clone();
            }
            if merged.requires_immediate_renegotiation != Some(true) {
                merged.requires_immediate_renegotiation = resp.requires_immediate_renegotiation;
            }
            let retry_allowed = Instant::now() < deadline && attempt < max_attempts;
            let mut again = Vec::new();
            for item in resp.tracks {
                let not_found = item.error_code.as_deref() == Some("not_found_track_error");
                if not_found && retry_allowed {
                    again.push((
                        item.session_id.clone().unwrap_or_default(),
                        item.track_name.clone().unwrap_or_default(),
                    ));
                } else {
                    merged.tracks.push(item);
                }
            }
            if again.is_empty() {
                break;
            }
            if attempt == 1 {
                tracing::info!(
                    "{}: not_found_track_error for {again:?}, retrying",
                    self.name()
                );
            }
            pending = again;
            tokio::time::sleep(step).await;
        }
        Ok(merged)
    }

    /// `PUT tracks/close` with force = true (no SDP); the sources on these mids stop.
    pub async fn close_force<S: AsRef<str>>(
        &self,
        api: &CallsClient,
        session_id: &str,
        mids: &[S],
    ) -> anyhow::Result<TracksResponse> {
        self.stop_sending(mids).await?;
        let refs: Vec<&str> = mids.iter().map(AsRef::as_ref).collect();
        api.tracks_close(session_id, &refs, true, None).await
    }

    /// `PUT tracks/close` with force = false: stop (or deactivate) the transceivers locally,
    /// send the new offer, accept the SFU's answer.
    pub async fn close_negotiated(
        &self,
        api: &CallsClient,
        session_id: &str,
        mids: &[&str],
        stop: bool,
    ) -> anyhow::Result<TracksResponse> {
        let offer = self.close_offer(mids, stop).await?;
        let resp = match api
            .tracks_close(session_id, mids, false, Some(&offer))
            .await
        {
            Ok(r) => r,
            Err(e) => {
                self.drop_pending_offer().await?;
                return Err(e);
            }
        };
        let sd = resp
            .session_description
            .clone()
            .ok_or_else(|| anyhow!("negotiated close: no answer in the response"))?;
        if sd.kind != "answer" {
            bail!("negotiated close: expected an answer, got {:?}", sd.kind);
        }
        self.accept_answer(&sd.sdp).await?;
        Ok(resp)
    }
}
