//! The JSON shapes of a trackmesh node's admin API (`/admin/*`): the node serializes these types,
//! `trackmeshctl` and the tests deserialize them, so the compiler keeps the three in step.
//!
//! Reading is lenient: every type takes `#[serde(default)]`, so a missing field becomes its
//! default and an older or newer node still decodes. Counts a node may not know are `Option`s and
//! are written as `null` when unknown.
//!
//! Field order is the order on the wire. Most views were first built as `serde_json` maps, which
//! write keys sorted, so their fields are declared in the alphabetical order of their JSON names;
//! the relay view was always a struct and keeps its own order. Keep new fields in that order.

use serde::{Deserialize, Serialize};

/// `GET /admin/cluster`: the members this node knows of, through gossip.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default)]
pub struct ClusterView {
    /// Node ids that more than one live node runs under (a configuration mistake: only the
    /// newest run of each is listed and used). Absent when there are none.
    #[serde(rename = "duplicateNodeIds", skip_serializing_if = "Vec::is_empty")]
    pub duplicate_node_ids: Vec<String>,
    pub members: Vec<Member>,
    /// The node id of the node answering.
    #[serde(rename = "self")]
    pub self_id: String,
}

/// One member of [`ClusterView`].
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Member {
    /// Base URL of its HTTP API.
    pub api: String,
    pub draining: bool,
    pub live: bool,
    pub node_id: String,
    pub region: String,
    /// Its relay (QUIC) address.
    pub relay: String,
    /// The load it gossips; `None` while unknown (never gossiped, or unreadable).
    pub relays: Option<u64>,
    pub sessions: Option<u64>,
    /// The node tag that prefixes its session ids, in hex.
    pub tag: String,
    pub tracks: Option<u64>,
    pub version: String,
}

impl ClusterView {
    /// The member with this node id, live or not.
    pub fn member(&self, node_id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.node_id == node_id)
    }

    /// Listed and live.
    pub fn is_live(&self, node_id: &str) -> bool {
        self.member(node_id).is_some_and(|m| m.live)
    }

    /// Ids of the live members.
    pub fn live_ids(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.live)
            .map(|m| m.node_id.clone())
            .collect()
    }
}

/// `GET /admin/status[/{nodeId}]`: one node's identity, addresses and load.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Status {
    pub api: String,
    pub draining: bool,
    pub gossip: String,
    pub media: String,
    pub node_id: String,
    pub published_tracks: Option<u64>,
    pub region: String,
    pub relay: String,
    pub relay_links: Option<u64>,
    pub sessions: Option<u64>,
    pub subscribed_tracks: Option<u64>,
    pub tag: String,
    pub uptime_secs: Option<u64>,
    pub version: String,
}

/// `GET /admin/sessions[?node=]`: the sessions of one node or of every live node.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default)]
pub struct Sessions {
    pub sessions: Vec<SessionInfo>,
    /// Live nodes that did not answer in time: their sessions are missing from `sessions`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unanswered: Vec<String>,
}

/// One session (`GET /admin/sessions/{id}` and the items of [`Sessions`]).
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct SessionInfo {
    pub app: String,
    pub connected: bool,
    /// The node holding it.
    pub node: String,
    pub session_id: String,
    pub tracks: Vec<SessionTrack>,
}

/// One track of a [`SessionInfo`], pushed (`local`) or pulled (`remote`).
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct SessionTrack {
    pub location: String,
    pub mid: String,
    /// For a pulled track: the session it comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// `active` or `inactive`.
    pub status: String,
    pub track_name: String,
}

/// `GET /admin/tracks[?node=]`: the published tracks of one node or of every live node.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default)]
pub struct Tracks {
    pub tracks: Vec<Publication>,
    /// Live nodes that did not answer in time: their tracks are missing from `tracks`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unanswered: Vec<String>,
}

/// One published track.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Publication {
    /// `audio` or `video`.
    pub kind: String,
    pub node: String,
    /// The nodes it is relayed to.
    pub relayed_to: Vec<String>,
    pub session_id: String,
    /// Local subscribers on its node.
    pub subscribers: Option<u64>,
    pub track_name: String,
}

/// `GET /admin/locate/{sessionId}/{trackName}`: where a track lives in the cluster.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Located {
    pub hubs: Vec<Hub>,
    /// The live node owning the session; `null` when there is none.
    pub owner: Option<String>,
    pub session_id: String,
    /// Nodes that pull the track or have local subscribers of it.
    pub subscribing_nodes: Vec<String>,
    pub track_name: String,
}

/// A node where a track enters another region (it pulls straight from the owner).
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default)]
pub struct Hub {
    pub node: String,
    pub region: String,
}

/// `POST /admin/drain/{nodeId}` and `POST /admin/undrain/{nodeId}`: the state now.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Drained {
    pub draining: Option<bool>,
    pub node_id: String,
}

/// `GET /admin/relay`: this node's relay links and the tracks it pulls and serves.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default)]
pub struct RelayView {
    pub links: Vec<RelayLink>,
    pub upstream: Vec<Upstream>,
    pub downstream: Vec<Downstream>,
}

/// A relay connection: `out` when this node dialed it, `in` when a peer pulls from this node.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default)]
pub struct RelayLink {
    pub peer: String,
    pub direction: String,
}

/// A track this node pulls from another node.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Upstream {
    pub session_id: String,
    pub track_name: String,
    /// The node it comes from: the origin, or this region's hub.
    pub via: String,
    pub frames: u64,
}

/// A track this node sends to another node.
#[derive(Serialize, Deserialize, Debug, Default, Clone, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Downstream {
    pub session_id: String,
    pub track_name: String,
    /// The node it goes to.
    pub peer: String,
    pub frames: u64,
}

impl RelayView {
    /// Upstream entries for (sessionId, trackName).
    pub fn upstream_of(&self, session_id: &str, track_name: &str) -> Vec<&Upstream> {
        self.upstream
            .iter()
            .filter(|u| u.session_id == session_id && u.track_name == track_name)
            .collect()
    }

    /// Downstream entries for (sessionId, trackName).
    pub fn downstream_of(&self, session_id: &str, track_name: &str) -> Vec<&Downstream> {
        self.downstream
            .iter()
            .filter(|d| d.session_id == session_id && d.track_name == track_name)
            .collect()
    }

    /// Downstream entries to this peer node.
    pub fn downstream_to(&self, peer: &str) -> Vec<&Downstream> {
        self.downstream.iter().filter(|d| d.peer == peer).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_counts_are_null_and_missing_fields_default() {
        let m = Member {
            node_id: "a".into(),
            ..Member::default()
        };
        let v = serde_json::to_value(&m).expect("serialize");
        assert_eq!(v["sessions"], serde_json::Value::Null);
        let back: Member = serde_json::from_str(r#"{"nodeId":"a"}"#).expect("lenient");
        assert_eq!(back, m);
    }

    #[test]
    fn a_remote_track_names_its_session_and_a_local_one_does_not() {
        let mut t = SessionTrack {
            location: "local".into(),
            mid: "0".into(),
            session_id: None,
            status: "active".into(),
            track_name: "a".into(),
        };
        assert_eq!(
            serde_json::to_string(&t).expect("serialize"),
            r#"{"location":"local","mid":"0","status":"active","trackName":"a"}"#
        );
        t.session_id = Some("s".into());
        let s = serde_json::to_string(&t).expect("serialize");
        assert!(s.contains(r#""sessionId":"s""#), "{s}");
    }
}
