//! Typed views of the admin API's answers, for the tables: the node's own types
//! (`trackmesh-admin-api`). Lenient: missing fields take their defaults (counts are `None` and
//! shown as `-`), so an older or newer node still renders. `--json` prints the raw answer instead.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::CtlError;

pub use trackmesh_admin_api::{
    ClusterView, Drained, Hub, Located, Member, Publication, SessionInfo, SessionTrack, Sessions,
    Status, Tracks,
};

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
