//! WHIP and WHEP from a test: a str0m client publishes or plays through the endpoints, and
//! refusals are checked as RFC 9457 problems. Shared by the single-node and cluster tests.

use reqwest::Method;
use serde_json::json;

use crate::flows::{CONNECT_TIMEOUT, MEDIA_TIMEOUT};
use crate::{CallsClient, MediaKind, Peer, RawBody, RawResponse, TestNode};

/// The SDP media type WHIP and WHEP exchange.
pub const SDP: &str = "application/sdp";
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

/// `POST whip/{stream}` (or whep) with the peer's offer; checks the 201 and takes the answer.
pub async fn start(api: &CallsClient, node: &TestNode, word: &str, stream: &str) -> Endpoint {
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
