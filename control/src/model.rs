//! Typed views of the admin API's answers, for the tables. Lenient: missing fields take their
//! defaults (counts are `None` and shown as `-`), so an older or newer node still renders.
//! `--json` prints the raw answer instead.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::CtlError;

/// `GET /admin/cluster`
#[derive(Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default)]
pub struct ClusterView {
    #[serde(rename = "self")]
    pub self_id: String,
    pub members: Vec<Member>,
}

#[derive(Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Member {
    pub node_id: String,
    pub tag: String,
    pub region: String,
    pub api: String,
    pub relay: String,
    pub live: bool,
    pub draining: bool,
    pub sessions: Option<u64>,
    pub tracks: Option<u64>,
    pub relays: Option<u64>,
    pub version: String,
}

/// `GET /admin/status[/{nodeId}]`
#[derive(Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Status {
    pub node_id: String,
    pub tag: String,
    pub region: String,
    pub version: String,
    pub uptime_secs: Option<u64>,
    pub draining: bool,
    pub sessions: Option<u64>,
    pub published_tracks: Option<u64>,
    pub subscribed_tracks: Option<u64>,
    pub relay_links: Option<u64>,
    pub api: String,
    pub media: String,
    pub relay: String,
    pub gossip: String,
}

/// `GET /admin/sessions`
#[derive(Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default)]
pub struct Sessions {
    pub sessions: Vec<SessionInfo>,
}

/// One session (`GET /admin/sessions/{id}` and the items of `GET /admin/sessions`).
#[derive(Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct SessionInfo {
    pub node: String,
    pub session_id: String,
    pub app: String,
    pub connected: bool,
    pub tracks: Vec<SessionTrack>,
}

#[derive(Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct SessionTrack {
    pub location: String,
    pub mid: String,
    pub track_name: String,
    pub session_id: Option<String>,
    pub status: String,
}

/// `GET /admin/tracks`
#[derive(Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default)]
pub struct Tracks {
    pub tracks: Vec<Publication>,
}

#[derive(Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Publication {
    pub node: String,
    pub session_id: String,
    pub track_name: String,
    pub kind: String,
    pub subscribers: Option<u64>,
    pub relayed_to: Vec<String>,
}

/// `GET /admin/locate/{sessionId}/{trackName}`
#[derive(Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Located {
    pub session_id: String,
    pub track_name: String,
    pub owner: Option<String>,
    pub hubs: Vec<Hub>,
    pub subscribing_nodes: Vec<String>,
}

#[derive(Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default)]
pub struct Hub {
    pub region: String,
    pub node: String,
}

/// `POST /admin/drain/{nodeId}` and `/admin/undrain/{nodeId}`
#[derive(Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Drained {
    pub node_id: String,
    pub draining: Option<bool>,
}

/// Decode an answer; a wrong shape is a [`CtlError::BadAnswer`] naming the path.
pub fn decode<T: DeserializeOwned>(path: &str, v: &Value) -> Result<T, CtlError> {
    T::deserialize(v).map_err(|e| CtlError::BadAnswer {
        path: path.to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_the_contract_shapes() {
        let v = json!({"self": "a", "members": [{"nodeId": "a", "tag": "0badcafe", "region": "eu",
            "api": "http://127.0.0.1:7700", "relay": "127.0.0.1:7703", "live": true,
            "draining": false, "sessions": 2, "tracks": 3, "relays": 1, "version": "0.1.0"}]});
        let c: ClusterView = decode("/admin/cluster", &v).expect("cluster");
        assert_eq!(c.self_id, "a");
        assert_eq!(c.members[0].tracks, Some(3));

        let v = json!({"sessions": [{"node": "a", "sessionId": "s", "app": "x", "connected": true,
            "tracks": [{"location": "remote", "mid": "0", "trackName": "t", "sessionId": "p",
            "status": "active"}]}]});
        let s: Sessions = decode("/admin/sessions", &v).expect("sessions");
        assert_eq!(s.sessions[0].tracks[0].session_id.as_deref(), Some("p"));

        let v = json!({"sessionId": "s", "trackName": "t", "owner": null, "hubs": [],
            "subscribingNodes": []});
        let l: Located = decode("/admin/locate", &v).expect("locate");
        assert_eq!(l.owner, None);
    }

    #[test]
    fn missing_fields_default_and_wrong_types_fail() {
        let m: Member = decode("/admin/cluster", &json!({"nodeId": "a"})).expect("lenient");
        assert_eq!(m.sessions, None);
        assert!(!m.live);
        let e = decode::<Status>("/admin/status", &json!({"sessions": "many"}))
            .expect_err("a string is not a count");
        assert!(e.to_string().contains("/admin/status"), "{e}");
        assert_eq!(e.exit_code(), 1);
    }
}
