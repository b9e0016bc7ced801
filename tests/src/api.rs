//! A typed async client for the Calls-style HTTP API, plus a raw request helper for error cases.

use std::time::Duration;

use anyhow::Context;
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Per-request timeout: the node may block up to --connect-timeout (5 s) on some calls.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SessionDescription {
    #[serde(rename = "type")]
    pub kind: String,
    pub sdp: String,
}

impl SessionDescription {
    pub fn offer(sdp: impl Into<String>) -> Self {
        SessionDescription {
            kind: "offer".into(),
            sdp: sdp.into(),
        }
    }
    pub fn answer(sdp: impl Into<String>) -> Self {
        SessionDescription {
            kind: "answer".into(),
            sdp: sdp.into(),
        }
    }
}

/// `TrackObject` of the API (requests and responses).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TrackObject {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bidirectional_media_stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
    /// `simulcast` of a pull or `tracks/update` (`preferredRid`, `priorityOrdering`,
    /// `ridNotAvailable`), echoed with `currentRid` in `GET session`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulcast: Option<Value>,
}

impl TrackObject {
    /// A track published from this session: `{location:"local", mid, trackName}`.
    pub fn local(mid: &str, track_name: &str) -> Self {
        TrackObject {
            location: Some("local".into()),
            mid: Some(mid.into()),
            track_name: Some(track_name.into()),
            ..Default::default()
        }
    }

    /// A track pulled from another session: `{location:"remote", sessionId, trackName}`.
    pub fn remote(session_id: &str, track_name: &str) -> Self {
        TrackObject {
            location: Some("remote".into()),
            session_id: Some(session_id.into()),
            track_name: Some(track_name.into()),
            ..Default::default()
        }
    }

    /// `{mid}` as used by tracks/close.
    pub fn mid_only(mid: &str) -> Self {
        TrackObject {
            mid: Some(mid.into()),
            ..Default::default()
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct TracksRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_description: Option<SessionDescription>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracks: Option<Vec<TrackObject>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_discover: Option<bool>,
}

impl TracksRequest {
    /// A pull of remote tracks, each `(sessionId, trackName)`, without SDP.
    pub fn pull(items: &[(String, String)]) -> Self {
        TracksRequest {
            tracks: Some(
                items
                    .iter()
                    .map(|(s, t)| TrackObject::remote(s, t))
                    .collect(),
            ),
            ..Default::default()
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct CloseTracksRequest {
    pub tracks: Vec<TrackObject>,
    pub force: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_description: Option<SessionDescription>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct NewSessionResponse {
    pub session_id: String,
    #[serde(default)]
    pub session_description: Option<SessionDescription>,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub error_description: Option<String>,
}

/// Response of tracks/new, tracks/update and tracks/close.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct TracksResponse {
    #[serde(default)]
    pub requires_immediate_renegotiation: Option<bool>,
    #[serde(default)]
    pub session_description: Option<SessionDescription>,
    #[serde(default)]
    pub tracks: Vec<TrackObject>,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub error_description: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct SessionState {
    #[serde(default)]
    pub tracks: Vec<TrackObject>,
    #[serde(default)]
    pub data_channels: Option<Value>,
    #[serde(default)]
    pub error_code: Option<String>,
}

impl SessionState {
    /// The track with this mid, if listed.
    pub fn track_by_mid(&self, mid: &str) -> Option<&TrackObject> {
        self.tracks.iter().find(|t| t.mid.as_deref() == Some(mid))
    }

    /// The status of the track with this mid (`"active"`, `"inactive"`...).
    pub fn status_of(&self, mid: &str) -> Option<&str> {
        self.track_by_mid(mid).and_then(|t| t.status.as_deref())
    }
}

/// A non-2xx answer from the API.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub method: String,
    pub url: String,
    pub status: u16,
    pub body: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} -> HTTP {}: {}",
            self.method, self.url, self.status, self.body
        )
    }
}

impl std::error::Error for ApiError {}

/// Everything about a raw HTTP answer.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub text: String,
    /// The body parsed as JSON, or `Value::Null` when it is not JSON.
    pub json: Value,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    /// All values of a header, comma-joined (e.g. `vary`).
    pub fn header_all(&self, name: &str) -> String {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `errorCode` at the top level of the JSON body.
    pub fn error_code(&self) -> Option<&str> {
        self.json.get("errorCode").and_then(Value::as_str)
    }
}

/// How to send a raw body.
#[derive(Debug, Clone)]
pub enum RawBody {
    None,
    /// Serialized JSON sent with `Content-Type: application/json`.
    Json(Value),
    /// Bytes sent with the given content type (None: no Content-Type header).
    Bytes(Vec<u8>, Option<String>),
}

/// Calls API client for one app on one node.
#[derive(Clone, Debug)]
pub struct CallsClient {
    http: reqwest::Client,
    base: String,
    secret: String,
}

impl CallsClient {
    /// `base` is `http://HOST:PORT/v1/apps/<appId>`.
    pub fn new(base: &str, secret: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .no_proxy()
            .build()
            .unwrap_or_default();
        CallsClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            secret: secret.to_string(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The same client with another bearer secret.
    pub fn with_secret(&self, secret: &str) -> Self {
        CallsClient {
            http: self.http.clone(),
            base: self.base.clone(),
            secret: secret.to_string(),
        }
    }

    /// The same client against another base URL.
    pub fn with_base(&self, base: &str) -> Self {
        CallsClient {
            http: self.http.clone(),
            base: base.trim_end_matches('/').to_string(),
            secret: self.secret.clone(),
        }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}/{}", self.base, path.trim_start_matches('/'))
        }
    }

    /// A request with full control. `path` is relative to the base URL, or absolute.
    /// `auth`: Some(secret) sends `Authorization: Bearer secret`.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        headers: &[(&str, &str)],
        body: RawBody,
    ) -> anyhow::Result<RawResponse> {
        let url = self.url(path);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(secret) = auth {
            req = req.bearer_auth(secret);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req = match body {
            RawBody::None => req,
            RawBody::Json(v) => req
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&v)?),
            RawBody::Bytes(b, ct) => {
                let req = match ct {
                    Some(ct) => req.header("content-type", ct),
                    None => req,
                };
                req.body(b)
            }
        };
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp
            .text()
            .await
            .with_context(|| format!("reading body of {method} {url}"))?;
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(RawResponse {
            status,
            headers,
            text,
            json,
        })
    }

    /// Authorized request with an optional JSON body; returns (status, JSON body or Null).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let body = match body {
            Some(v) => RawBody::Json(v),
            None => RawBody::None,
        };
        let r = self
            .request(method, path, Some(&self.secret.clone()), &[], body)
            .await?;
        Ok((r.status, r.json))
    }

    async fn typed<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<T> {
        let url = self.url(path);
        let body = match body {
            Some(v) => RawBody::Json(v),
            None => RawBody::None,
        };
        let r = self
            .request(method.clone(), path, Some(&self.secret.clone()), &[], body)
            .await?;
        if !(200..300).contains(&r.status) {
            return Err(ApiError {
                method: method.to_string(),
                url,
                status: r.status,
                body: r.text,
            }
            .into());
        }
        serde_json::from_str(&r.text)
            .with_context(|| format!("decoding answer of {method} {url}: {}", r.text))
    }

    /// `POST sessions/new` without a body.
    pub async fn sessions_new(&self) -> anyhow::Result<NewSessionResponse> {
        self.typed(Method::POST, "sessions/new", None).await
    }

    /// `POST sessions/new` with an offer (older flow); the answer comes back.
    pub async fn sessions_new_with_offer(&self, sdp: &str) -> anyhow::Result<NewSessionResponse> {
        let body = serde_json::json!({ "sessionDescription": SessionDescription::offer(sdp) });
        self.typed(Method::POST, "sessions/new", Some(body)).await
    }

    /// `POST sessions/{id}/tracks/new`.
    pub async fn tracks_new(
        &self,
        session_id: &str,
        req: &TracksRequest,
    ) -> anyhow::Result<TracksResponse> {
        let body = serde_json::to_value(req)?;
        self.typed(
            Method::POST,
            &format!("sessions/{session_id}/tracks/new"),
            Some(body),
        )
        .await
    }

    /// `PUT sessions/{id}/renegotiate` with an answer.
    pub async fn renegotiate(&self, session_id: &str, answer_sdp: &str) -> anyhow::Result<Value> {
        let body =
            serde_json::json!({ "sessionDescription": SessionDescription::answer(answer_sdp) });
        self.typed(
            Method::PUT,
            &format!("sessions/{session_id}/renegotiate"),
            Some(body),
        )
        .await
    }

    /// `PUT sessions/{id}/tracks/update`.
    pub async fn tracks_update(
        &self,
        session_id: &str,
        tracks: Vec<TrackObject>,
        sdp: Option<SessionDescription>,
    ) -> anyhow::Result<TracksResponse> {
        let mut body = serde_json::json!({ "tracks": tracks });
        if let Some(sd) = sdp {
            body["sessionDescription"] = serde_json::to_value(sd)?;
        }
        self.typed(
            Method::PUT,
            &format!("sessions/{session_id}/tracks/update"),
            Some(body),
        )
        .await
    }

    /// `PUT sessions/{id}/tracks/close`.
    pub async fn tracks_close(
        &self,
        session_id: &str,
        mids: &[&str],
        force: bool,
        offer_sdp: Option<&str>,
    ) -> anyhow::Result<TracksResponse> {
        let req = CloseTracksRequest {
            tracks: mids.iter().map(|m| TrackObject::mid_only(m)).collect(),
            force,
            session_description: offer_sdp.map(SessionDescription::offer),
        };
        self.typed(
            Method::PUT,
            &format!("sessions/{session_id}/tracks/close"),
            Some(serde_json::to_value(req)?),
        )
        .await
    }

    /// `GET sessions/{id}`.
    pub async fn get_session(&self, session_id: &str) -> anyhow::Result<SessionState> {
        self.typed(Method::GET, &format!("sessions/{session_id}"), None)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn track_object_wire_names() {
        let t = TrackObject::remote("s1", "cam");
        let v = serde_json::to_value(&t).expect("serializes");
        assert_eq!(
            v,
            serde_json::json!({"location":"remote","sessionId":"s1","trackName":"cam"})
        );
        let back: TracksResponse = serde_json::from_value(serde_json::json!({
            "requiresImmediateRenegotiation": true,
            "sessionDescription": {"type": "offer", "sdp": "v=0"},
            "tracks": [{"sessionId": "s1", "trackName": "cam", "mid": "", "errorCode": "not_found_track_error"}]
        }))
        .expect("parses");
        assert_eq!(back.requires_immediate_renegotiation, Some(true));
        assert_eq!(back.tracks[0].mid.as_deref(), Some(""));
        assert_eq!(
            back.session_description.map(|s| s.kind).as_deref(),
            Some("offer")
        );
    }
}
