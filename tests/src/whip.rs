//! A WHIP publisher and a WHEP viewer (RFC 9725, WHEP draft) with the test client, against any
//! server: `POST` the offer to a full URL with a bearer token, take the `201` answer and its
//! `Location`, connect, and (publishing) start the synthetic sources. The WHIP/WHEP tests check
//! each step's response; the load generator runs the whole flow against trackmesh or another
//! server.

use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::{Method, Url};
use str0m::media::MediaKind;
use trackmesh_testkit::Client;

use crate::api::{CallsClient, RawBody, RawResponse};

pub const SDP: &str = "application/sdp";

/// Publish (WHIP) or play (WHEP).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Publish,
    Play,
}

/// A started WHIP or WHEP session.
#[derive(Clone, Debug)]
pub struct Session {
    /// The session URL (`Location`), made absolute against the endpoint URL.
    pub location: String,
    pub etag: Option<String>,
    /// Our mids, one per kind asked for, in order.
    pub mids: Vec<String>,
}

/// The client's offer: one SendOnly (publish) or RecvOnly (play) m-line per kind.
/// Returns (mids, offer SDP).
pub async fn offer(
    client: &Client,
    mode: Mode,
    kinds: &[MediaKind],
) -> anyhow::Result<(Vec<String>, String)> {
    match mode {
        Mode::Publish => client.create_send_offer(kinds).await,
        Mode::Play => client.create_recv_offer(kinds).await,
    }
}

/// `POST url` with the offer as `application/sdp` and `Authorization: Bearer token`; any
/// status comes back.
pub async fn post_offer(
    http: &CallsClient,
    url: &str,
    token: &str,
    sdp: &str,
) -> anyhow::Result<RawResponse> {
    let body = RawBody::Bytes(sdp.as_bytes().to_vec(), Some(SDP.to_string()));
    http.request(Method::POST, url, Some(token), &[], body)
        .await
}

/// The session URL of a `201`: its `Location` resolved against the endpoint `url` (servers
/// answer with a path or a full URL).
pub fn location(url: &str, resp: &RawResponse) -> anyhow::Result<String> {
    let loc = resp
        .header("location")
        .context("the 201 has no Location header")?;
    let base = Url::parse(url).with_context(|| format!("endpoint URL {url:?}"))?;
    Ok(base
        .join(&loc)
        .with_context(|| format!("Location {loc:?}"))?
        .to_string())
}

/// After a `201`: accept the answer, wait for ICE + DTLS and, publishing, start the sources.
pub async fn complete(
    client: &Client,
    mode: Mode,
    mids: &[String],
    resp: &RawResponse,
    connect_timeout: Duration,
) -> anyhow::Result<()> {
    client.accept_answer(&resp.text).await?;
    client.wait_connected(connect_timeout).await?;
    if mode == Mode::Publish {
        client.start_sending(mids).await?;
    }
    Ok(())
}

/// The whole flow: offer, `POST` (fails unless `201`), answer, connect, sources.
pub async fn start(
    http: &CallsClient,
    client: &Client,
    url: &str,
    token: &str,
    mode: Mode,
    kinds: &[MediaKind],
    connect_timeout: Duration,
) -> anyhow::Result<Session> {
    let (mids, sdp) = offer(client, mode, kinds).await?;
    let resp = post_offer(http, url, token, &sdp).await?;
    if resp.status != 201 {
        bail!(
            "POST {url}: status {} (want 201): {}",
            resp.status,
            resp.text.chars().take(300).collect::<String>()
        );
    }
    let location = location(url, &resp)?;
    complete(client, mode, &mids, &resp, connect_timeout)
        .await
        .with_context(|| {
            // What the server offered to connect to, to tell an unreachable candidate apart.
            let candidates: Vec<&str> = resp
                .text
                .lines()
                .filter(|l| l.starts_with("a=candidate") || l.starts_with("a=ice-lite"))
                .take(8)
                .collect();
            format!("{mode:?} session {location}; answer candidates: {candidates:?}")
        })?;
    Ok(Session {
        location,
        etag: resp.header("etag"),
        mids,
    })
}

/// `DELETE` the session URL; returns the status.
pub async fn delete(http: &CallsClient, session: &Session, token: &str) -> anyhow::Result<u16> {
    let r = http
        .request(
            Method::DELETE,
            &session.location,
            Some(token),
            &[],
            RawBody::None,
        )
        .await?;
    Ok(r.status)
}
