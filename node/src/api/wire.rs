//! The JSON shapes of the Calls API (field by field as in the spec). Requests ignore unknown
//! fields; responses leave out absent optional fields.

use serde::{Deserialize, Serialize};

use crate::engine::simulcast::{Ordering, Prefs, parse_rid};
use crate::engine::{
    DataChannelResult, DataChannelStatus, Location, SdpKind, SessionDesc, SimulcastView,
    TrackResult, TrackStatus,
};

/// `sessionDescription.type`: which side of the offer/answer exchange the SDP is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SdpType {
    /// `"offer"`: the other side must answer.
    Offer,
    /// `"answer"`: completes an exchange.
    Answer,
}

/// `sessionDescription`: an SDP and its role, in requests and responses alike.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SessionDescription {
    /// `type`: offer or answer.
    #[serde(rename = "type")]
    pub kind: SdpType,
    /// `sdp`: the SDP text.
    pub sdp: String,
}

impl From<SessionDesc> for SessionDescription {
    fn from(d: SessionDesc) -> Self {
        let kind = match d.kind {
            SdpKind::Offer => SdpType::Offer,
            SdpKind::Answer => SdpType::Answer,
        };
        SessionDescription { kind, sdp: d.sdp }
    }
}

/// A track object's `location`: whether the client publishes or pulls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireLocation {
    /// `"local"`: the client publishes it.
    Local,
    /// `"remote"`: the client pulls another session's track.
    Remote,
}

/// A track object's `kind`, needed when the SFU writes the offer for a publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireKind {
    /// `"audio"`.
    Audio,
    /// `"video"`.
    Video,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
/// One item of `tracks` in `tracks/new`, `tracks/update` and `tracks/close` requests.
pub struct TrackObject {
    /// `location`: publish (`local`) or pull (`remote`).
    pub location: Option<WireLocation>,
    /// `mid`: the client's transceiver (or `#trackName` to pull into a bidirectional one).
    pub mid: Option<String>,
    /// `sessionId`: for a pull, the publishing session.
    pub session_id: Option<String>,
    /// `trackName`: the track's name (for a pull: the publication's).
    pub track_name: Option<String>,
    /// `bidirectionalMediaStream`: publish on a sendrecv transceiver that can also carry a pull.
    pub bidirectional_media_stream: Option<bool>,
    /// `kind`: audio or video, for a publication whose offer the SFU writes.
    pub kind: Option<WireKind>,
    /// `simulcast`: for a pull or `tracks/update`, which layer to receive.
    pub simulcast: Option<SimulcastObject>,
}

/// `priorityOrdering` / `ridNotAvailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireOrdering {
    /// `"none"` (the default).
    None,
    /// `"asciibetical"`: rids ranked by ASCII order, the first the best.
    Asciibetical,
}

/// A track object's `simulcast` in requests.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimulcastObject {
    /// `preferredRid`: the layer to receive; without it, the best available one.
    pub preferred_rid: Option<String>,
    /// `priorityOrdering`: accepted and echoed (bandwidth-driven moves are not made yet).
    pub priority_ordering: Option<WireOrdering>,
    /// `ridNotAvailable`: `asciibetical` falls back to the next layer when the preferred one
    /// stops; `none` waits for it.
    pub rid_not_available: Option<WireOrdering>,
}

fn ordering(o: Option<WireOrdering>) -> Ordering {
    match o {
        Some(WireOrdering::Asciibetical) => Ordering::Asciibetical,
        Some(WireOrdering::None) | None => Ordering::None,
    }
}

impl SimulcastObject {
    /// The engine's form; an error names what is wrong with `preferredRid`.
    pub fn to_prefs(&self) -> Result<Prefs, String> {
        let preferred_rid = match self.preferred_rid.as_deref() {
            None => None,
            Some(r) => Some(parse_rid(r).ok_or_else(|| {
                "simulcast.preferredRid must be 1 to 8 letters, digits, '-' or '_'".to_string()
            })?),
        };
        Ok(Prefs {
            preferred_rid,
            priority_ordering: ordering(self.priority_ordering),
            rid_not_available: ordering(self.rid_not_available),
        })
    }
}

/// A pulled track's `simulcast` in responses: the request echoed and, in `GET sessions/{id}`,
/// `currentRid`, the layer it receives now.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimulcastOut {
    /// `preferredRid`, as asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preferred_rid: Option<String>,
    /// `priorityOrdering`.
    pub priority_ordering: &'static str,
    /// `ridNotAvailable`.
    pub rid_not_available: &'static str,
    /// `currentRid`: the layer being received (absent before the first frame).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_rid: Option<String>,
}

fn ordering_str(o: Ordering) -> &'static str {
    match o {
        Ordering::None => "none",
        Ordering::Asciibetical => "asciibetical",
    }
}

impl From<SimulcastView> for SimulcastOut {
    fn from(v: SimulcastView) -> Self {
        SimulcastOut {
            preferred_rid: v.prefs.preferred_rid.map(|r| r.to_string()),
            priority_ordering: ordering_str(v.prefs.priority_ordering),
            rid_not_available: ordering_str(v.prefs.rid_not_available),
            current_rid: v.current_rid.map(|r| r.to_string()),
        }
    }
}

/// `sessions/new`: `null`/absent body is the plain form; an object must carry an offer.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSessionRequest {
    /// `sessionDescription`: the client's offer.
    pub session_description: SessionDescription,
}

/// The `sessions/new` response body.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NewSessionResponse {
    /// `sessionId`: the new session, to put in every later URL.
    pub session_id: String,
    /// `sessionDescription`: the SFU's answer, when the request carried an offer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_description: Option<SessionDescription>,
}

/// The `tracks/new` request body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TracksRequest {
    /// `sessionDescription`: the client's offer, when it publishes or renegotiates.
    pub session_description: Option<SessionDescription>,
    /// `tracks`: what to publish or pull.
    pub tracks: Option<Vec<TrackObject>>,
    /// `autoDiscover`: publish every sending section of the offer that names no track.
    pub auto_discover: Option<bool>,
}

/// One item of `tracks` in a response: a track's outcome or, in `GET sessions/{id}`, its status.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackOut {
    /// `location`: `local` or `remote` (only in `GET sessions/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<&'static str>,
    /// `sessionId`: for a pull, the publishing session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// `trackName`: the track's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub track_name: Option<String>,
    /// `mid`: the transceiver that carries the track.
    pub mid: String,
    /// `status`: `active` or `inactive` (only in `GET sessions/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    /// `simulcast`: a pull's simulcast request echoed, with `currentRid` in `GET sessions/{id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub simulcast: Option<SimulcastOut>,
    /// `errorCode`: why this one track failed, while the call itself succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'static str>,
    /// `errorDescription`: the failure in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
}

fn location_str(l: Location) -> &'static str {
    match l {
        Location::Local => "local",
        Location::Remote => "remote",
    }
}

impl From<TrackResult> for TrackOut {
    fn from(r: TrackResult) -> Self {
        let (error_code, error_description) = match r.error {
            Some(e) => (
                Some(super::error::track_error_code(&e)),
                Some(e.to_string()),
            ),
            None => (None, None),
        };
        TrackOut {
            location: None,
            session_id: r.session_id,
            track_name: r.track_name,
            mid: r.mid,
            status: None,
            simulcast: r.simulcast.map(|v| SimulcastOut {
                // The layer is only reported by `GET sessions/{id}`.
                current_rid: None,
                ..v.into()
            }),
            error_code,
            error_description,
        }
    }
}

impl From<TrackStatus> for TrackOut {
    fn from(t: TrackStatus) -> Self {
        TrackOut {
            location: Some(location_str(t.location)),
            session_id: t.session_id,
            track_name: Some(t.track_name),
            mid: t.mid,
            status: Some(if t.active { "active" } else { "inactive" }),
            simulcast: t.simulcast.map(Into::into),
            error_code: None,
            error_description: None,
        }
    }
}

/// The response body of `tracks/new`, `tracks/update` and `tracks/close`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TracksResponse {
    /// `requiresImmediateRenegotiation`: answer the SFU's offer with `renegotiate` now.
    pub requires_immediate_renegotiation: bool,
    /// `sessionDescription`: the SFU's answer or offer; absent when nothing changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_description: Option<SessionDescription>,
    /// `tracks`: one outcome per requested track.
    pub tracks: Vec<TrackOut>,
}

/// The `renegotiate` request body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenegotiateRequest {
    /// `sessionDescription`: the client's answer to the SFU's last offer.
    pub session_description: SessionDescription,
}

/// The `tracks/update` request body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateRequest {
    /// `tracks`: receiving mids and the publications to point them at.
    pub tracks: Vec<TrackObject>,
}

/// The `tracks/close` request body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloseRequest {
    /// `tracks`: the mids to close.
    pub tracks: Vec<TrackObject>,
    /// `sessionDescription`: the client's offer for the close, answered unless `force`.
    pub session_description: Option<SessionDescription>,
    /// `force`: close without an offer/answer exchange.
    pub force: Option<bool>,
}

/// The `GET sessions/{id}` response body.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionStateResponse {
    /// `tracks`: every track the session has had, with its status.
    pub tracks: Vec<TrackOut>,
    /// `dataChannels`: every DataChannel the session has made, with its status.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub data_channels: Vec<DataChannelOut>,
}

/// One DataChannel object of a `datachannels/*` request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataChannelObject {
    /// `location`: publish (`local`) or subscribe (`remote`).
    pub location: Option<WireLocation>,
    /// `sessionId`: for `remote`, the publishing session.
    pub session_id: Option<String>,
    /// `dataChannelName`: the channel's name.
    pub data_channel_name: Option<String>,
    /// `ordered`: in-order delivery (default true).
    pub ordered: Option<bool>,
    /// `maxRetransmits`: partial reliability by retransmits.
    pub max_retransmits: Option<u16>,
    /// `maxPacketLifeTime`: partial reliability by lifetime (ms).
    pub max_packet_life_time: Option<u16>,
    /// `waitForAck`: remote only; the subscriber's first message opens the channel.
    pub wait_for_ack: Option<bool>,
    /// `canReply`: remote only; this subscriber may send to the publisher.
    pub can_reply: Option<bool>,
    /// `id`: the channel's id in this session (update, close).
    pub id: Option<u16>,
}

/// The `datachannels/new`, `/update` and `/close` request body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataChannelsRequest {
    /// `dataChannels`: the items.
    pub data_channels: Vec<DataChannelObject>,
}

/// The `datachannels/establish` request body.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EstablishRequest {
    /// `dataChannel`: must be `{location: "remote", dataChannelName: "server-events"}`.
    pub data_channel: Option<DataChannelObject>,
    /// `sessionDescription`: not accepted (Calls answers it with `decoding_error` in practice).
    pub session_description: Option<SessionDescription>,
}

/// One DataChannel in a response.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataChannelOut {
    /// `location`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<&'static str>,
    /// `sessionId`: for `remote`, the publisher.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// `dataChannelName`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_channel_name: Option<String>,
    /// `id`: for `createDataChannel(name, {negotiated: true, id})`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u16>,
    /// `status` (only in `GET sessions/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<&'static str>,
    /// `errorCode`: why this item failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'static str>,
    /// `errorDescription`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
}

impl From<DataChannelResult> for DataChannelOut {
    fn from(r: DataChannelResult) -> Self {
        let (error_code, error_description) = match r.error {
            Some(e) => (
                Some(super::error::track_error_code(&e)),
                Some(e.to_string()),
            ),
            None => (None, None),
        };
        DataChannelOut {
            location: r.location.map(location_str),
            session_id: r.session_id,
            data_channel_name: r.name,
            id: r.id,
            status: None,
            error_code,
            error_description,
        }
    }
}

impl From<DataChannelStatus> for DataChannelOut {
    fn from(c: DataChannelStatus) -> Self {
        DataChannelOut {
            location: Some(location_str(c.location)),
            session_id: c.session_id,
            data_channel_name: Some(c.name),
            id: Some(c.id),
            status: Some(c.status),
            error_code: None,
            error_description: None,
        }
    }
}

/// The `datachannels/new`, `/update` and `/close` response body.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataChannelsResponse {
    /// `dataChannels`: one outcome per item, in request order.
    pub data_channels: Vec<DataChannelOut>,
}

/// The `datachannels/establish` response body.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EstablishResponse {
    /// `requiresImmediateRenegotiation`: answer the SFU's offer with `renegotiate`.
    pub requires_immediate_renegotiation: bool,
    /// `dataChannel`: `{dataChannelName: "server-events", id: 0}`.
    pub data_channel: DataChannelOut,
    /// `sessionDescription`: the SFU's offer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_description: Option<SessionDescription>,
}

/// `GET /v1/apps/{app}/sessions`, an extension to Calls: the app's live sessions in the cluster,
/// with what each publishes. Also what one node answers another that gathers the listing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppSessions {
    /// `sessions`: in session id order.
    pub sessions: Vec<AppSession>,
    /// `truncated`: sessions or tracks were left out to keep the answer within its bounds.
    pub truncated: bool,
    /// `unansweredNodes`: live nodes that did not answer in time, whose sessions are missing
    /// (absent when every node answered).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unanswered_nodes: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One live session in [`AppSessions`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppSession {
    /// `sessionId`: the id to pull its tracks by.
    pub session_id: String,
    /// `connected`: its PeerConnection is up right now.
    pub connected: bool,
    /// `tracks`: what it published, closed tracks listed as inactive.
    pub tracks: Vec<AppTrack>,
}

/// One published track in [`AppSession`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppTrack {
    /// `trackName`: the name to pull it by.
    pub track_name: String,
    /// `kind`: `audio` or `video`; absent once its transceiver is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `status`: `active` or `inactive`, as in `GET sessions/{id}`.
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulcast_is_read_with_defaults_and_echoed_with_the_current_rid() {
        let t: TrackObject = serde_json::from_str(
            r#"{"location":"remote","sessionId":"s","trackName":"cam","simulcast":{"preferredRid":"h"}}"#,
        )
        .expect("a track object");
        let prefs = t.simulcast.expect("simulcast").to_prefs().expect("valid");
        assert_eq!(
            prefs.preferred_rid.map(|r| r.to_string()).as_deref(),
            Some("h")
        );
        assert_eq!(prefs.priority_ordering, Ordering::None);
        assert_eq!(prefs.rid_not_available, Ordering::None);

        let out: TrackOut = TrackStatus {
            location: Location::Remote,
            mid: "1".into(),
            track_name: "cam".into(),
            session_id: Some("s".into()),
            active: true,
            simulcast: Some(SimulcastView {
                prefs: Prefs {
                    rid_not_available: Ordering::Asciibetical,
                    ..prefs
                },
                current_rid: Some(str0m::media::Rid::from("q")),
            }),
        }
        .into();
        assert_eq!(
            serde_json::to_value(&out).expect("json")["simulcast"],
            serde_json::json!({
                "preferredRid": "h",
                "priorityOrdering": "none",
                "ridNotAvailable": "asciibetical",
                "currentRid": "q",
            })
        );
    }

    #[test]
    fn bad_simulcast_fields_are_refused() {
        let bad_rid: TrackObject =
            serde_json::from_str(r#"{"simulcast":{"preferredRid":"not a rid"}}"#).expect("parses");
        assert!(bad_rid.simulcast.expect("simulcast").to_prefs().is_err());
        assert!(
            serde_json::from_str::<TrackObject>(r#"{"simulcast":{"ridNotAvailable":"sometimes"}}"#)
                .is_err(),
            "an unknown policy is a decoding error"
        );
    }
}
