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

use serde_json::json;

use crate::api::{CallsClient, RawBody, RawResponse};
use crate::flows::{CONNECT_TIMEOUT, MEDIA_TIMEOUT};
use crate::{Peer, TestNode};

/// The SDP media type WHIP and WHEP exchange.
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

// ---- assertions of the trackmesh WHIP/WHEP tests ----

/// The media type of trickle-ICE PATCH bodies.
pub const SDPFRAG: &str = "application/trickle-ice-sdpfrag";

/// A node for WHIP/WHEP tests (in this process).
pub fn start_node(args: &[&str]) -> TestNode {
    TestNode::start(args).expect("starting the trackmesh node")
}

/// A request with the app secret as bearer; panics only on a transport failure.
pub async fn send(
    api: &CallsClient,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    content_type: Option<&str>,
) -> RawResponse {
    let body = RawBody::Bytes(body.as_bytes().to_vec(), content_type.map(str::to_string));
    api.request(method.clone(), path, Some(api.secret()), headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
}

/// The answer is an RFC 9457 problem with this status.
#[track_caller]
pub fn assert_problem(r: &RawResponse, status: u16) {
    assert_eq!(r.status, status, "status; body: {}", r.text);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/problem+json"),
        "{}",
        r.text
    );
    assert_eq!(r.json["status"], json!(status), "{}", r.text);
    for field in ["type", "title", "detail"] {
        assert!(r.json[field].is_string(), "{field} in {}", r.text);
    }
}

/// A WHIP publisher or WHEP viewer: its peer, session URL (absolute path), ETag and mids.
pub struct Endpoint {
    /// The client.
    pub peer: Peer,
    /// The session URL, absolute.
    pub location: String,
    /// The ETag of the 201.
    pub etag: String,
    /// The client's mids (sending for WHIP, receiving for WHEP).
    pub mids: Vec<String>,
    /// The `Link` header values of the 201, in order.
    pub links: Vec<String>,
}

impl Endpoint {
    /// The session id: the last segment of the session URL.
    pub fn session_id(&self) -> &str {
        self.location.rsplit('/').next().unwrap_or_default()
    }
}

/// `POST whip/{stream}` (or whep) on a trackmesh node with the app secret, asserting the 201
/// (headers, candidates), then answer, connect and, for WHIP, send.
pub async fn start_endpoint(
    api: &CallsClient,
    node: &TestNode,
    word: &str,
    stream: &str,
) -> Endpoint {
    let peer = Peer::new(&format!("{word}-{stream}")).expect("peer");
    let kinds = [MediaKind::Audio, MediaKind::Video];
    let (mids, offer) = if word == "whip" {
        peer.create_send_offer(&kinds).await
    } else {
        peer.create_recv_offer(&kinds).await
    }
    .expect("offer");
    let r = send(
        api,
        Method::POST,
        &format!("{word}/{stream}"),
        &[],
        &offer,
        Some(SDP),
    )
    .await;
    assert_eq!(r.status, 201, "{word} {stream}: {}", r.text);
    assert_eq!(r.header("content-type").as_deref(), Some(SDP));
    let location = r.header("location").expect("Location");
    assert!(
        location.starts_with(&format!("/v1/apps/{}/{word}/{stream}/", node.app_id())),
        "{location}"
    );
    let etag = r.header("etag").expect("ETag");
    let links = r
        .headers
        .get_all("link")
        .iter()
        .map(|v| v.to_str().expect("a Link header in ASCII").to_string())
        .collect();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert!(
        r.text.contains("a=candidate:"),
        "the answer holds the candidates"
    );
    peer.accept_answer(&r.text).await.expect("answer");
    peer.wait_connected(CONNECT_TIMEOUT)
        .await
        .expect("connects");
    if word == "whip" {
        peer.start_sending(&mids).await.expect("sending");
    }
    Endpoint {
        peer,
        location: format!("{}{location}", node.http_url()),
        etag,
        mids,
        links,
    }
}

/// Waits until the peer decoded frames on every mid (video with a keyframe).
pub async fn wait_media(peer: &Peer, mids: &[String]) {
    let mids = mids.to_vec();
    peer.wait_until("media on every mid", MEDIA_TIMEOUT, move |s| {
        mids.iter().all(|m| s.rx_frames(m) >= 10)
    })
    .await
    .expect("media arrives");
}
