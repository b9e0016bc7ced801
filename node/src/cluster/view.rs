//! What a node knows of the cluster: the members and what they gossip about themselves.

use std::net::SocketAddr;

use crate::ids::NodeTag;

/// One node as seen through gossip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node_id: String,
    pub tag: NodeTag,
    pub region: String,
    /// Base URL of its HTTP API, e.g. `http://10.0.0.5:7700`.
    pub api: String,
    pub relay: SocketAddr,
    pub media: String,
    pub live: bool,
    pub draining: bool,
    pub load: Load,
    pub version: String,
}

/// The API base URL a member announces, accepted only as `http://IP:PORT`: calls and the admin
/// token go there, so a path or query (which would turn a forwarded call into a request for
/// another URL) or a host name is refused, and the member left out of the view.
pub fn checked_api(announced: &str) -> Option<String> {
    let addr: SocketAddr = announced.strip_prefix("http://")?.parse().ok()?;
    Some(format!("http://{addr}"))
}

/// The load a node gossips about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    pub sessions: u64,
    pub tracks: u64,
    pub relays: u64,
}

impl Load {
    pub fn encode(&self) -> String {
        format!("{},{},{}", self.sessions, self.tracks, self.relays)
    }

    pub fn decode(s: &str) -> Load {
        let mut it = s.split(',').map(|v| v.parse::<u64>().unwrap_or(0));
        Load {
            sessions: it.next().unwrap_or(0),
            tracks: it.next().unwrap_or(0),
            relays: it.next().unwrap_or(0),
        }
    }
}

/// A snapshot of the cluster, replaced as a whole when gossip changes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    pub self_id: String,
    /// Sorted by node id; includes this node and nodes known to be dead.
    pub members: Vec<Member>,
}

impl ClusterView {
    pub fn me(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.node_id == self.self_id)
    }

    pub fn live_by_tag(&self, tag: NodeTag) -> Option<&Member> {
        self.members.iter().find(|m| m.live && m.tag == tag)
    }

    pub fn live_by_id(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.live && m.node_id == id)
    }
}

#[cfg(test)]
mod api_tests {
    use super::checked_api;

    #[test]
    fn only_a_bare_http_address_is_an_api() {
        assert_eq!(
            checked_api("http://10.0.0.5:7700").as_deref(),
            Some("http://10.0.0.5:7700")
        );
        assert_eq!(
            checked_api("http://[::1]:7700").as_deref(),
            Some("http://[::1]:7700")
        );
        for bad in [
            "http://127.0.0.1:9/metrics?x=",
            "http://127.0.0.1:9/",
            "https://127.0.0.1:9",
            "http://evil.example:80",
            "http://user@127.0.0.1:9",
            "127.0.0.1:9",
            "",
        ] {
            assert_eq!(checked_api(bad), None, "{bad}");
        }
    }
}
