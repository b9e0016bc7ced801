//! What a node knows of the cluster: the members and what they gossip about themselves.

use std::net::SocketAddr;

use super::streams::StreamAnnounce;
use crate::ids::NodeTag;

/// One node as seen through gossip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its name in the cluster (`--node-id`).
    pub node_id: String,
    /// The first 8 hex characters of its session ids, so a session id names its owner.
    pub tag: NodeTag,
    /// Its region, for choosing hubs.
    pub region: String,
    /// Base URL of its HTTP API, e.g. `http://10.0.0.5:7700`.
    pub api: String,
    /// Its QUIC relay address, dialed to pull its tracks.
    pub relay: SocketAddr,
    /// Its media address as it announces it, shown in the admin view.
    pub media: String,
    /// Gossip's failure detector holds it alive.
    pub live: bool,
    /// It refuses new sessions while its own end.
    pub draining: bool,
    /// `None` while unknown: not gossiped yet, or gossiped in a form this node cannot read (an
    /// unknown load is shown as unknown, never as an idle node).
    pub load: Option<Load>,
    /// The trackmesh version it runs, to spot a mixed cluster.
    pub version: String,
}

/// The API base URL a member announces, accepted only as `http://IP:PORT` or `https://IP:PORT`
/// (a single node serving HTTPS itself announces the latter; clusters speak plain HTTP between
/// nodes): calls and the admin token go there, so a path or query (which would turn a forwarded
/// call into a request for another URL) or a host name is refused, and the member left out of
/// the view.
pub fn checked_api(announced: &str) -> Option<String> {
    let (scheme, rest) = announced.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let addr: SocketAddr = rest.parse().ok()?;
    Some(format!("{scheme}://{addr}"))
}

/// The load a node gossips about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Sessions it holds.
    pub sessions: u64,
    /// Publications it holds.
    pub tracks: u64,
    /// Relay links it has.
    pub relays: u64,
}

/// A gossiped value this node cannot read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unreadable gossiped value")]
pub struct BadValue;

impl Load {
    /// `sessions,tracks,relays`, as [`Load::decode`] reads it.
    pub fn encode(&self) -> String {
        format!("{},{},{}", self.sessions, self.tracks, self.relays)
    }

    /// Exactly three comma-separated counts; anything else is a [`BadValue`].
    pub fn decode(s: &str) -> Result<Load, BadValue> {
        // At most four parts: a fourth means too many.
        let parts: Vec<&str> = s.splitn(4, ',').collect();
        let [sessions, tracks, relays] = parts.as_slice() else {
            return Err(BadValue);
        };
        let count = |v: &str| v.parse::<u64>().map_err(|_| BadValue);
        Ok(Load {
            sessions: count(sessions)?,
            tracks: count(tracks)?,
            relays: count(relays)?,
        })
    }
}

/// The drain flag as gossiped: `true` or `false`.
pub fn decode_flag(s: &str) -> Result<bool, BadValue> {
    match s {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(BadValue),
    }
}

/// A snapshot of the cluster, replaced as a whole when gossip changes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// This node's id, to find itself among the members.
    pub self_id: String,
    /// Sorted by node id; includes this node and nodes known to be dead.
    pub members: Vec<Member>,
    /// The named streams members announce, with the id of the member announcing each.
    pub streams: Vec<(String, StreamAnnounce)>,
    /// The rooms members announce, with the id of the member announcing each.
    pub rooms: Vec<(String, crate::rooms::RoomAnnounce)>,
    /// Node ids that more than one live node, at different gossip addresses, runs under: a
    /// configuration mistake. Only the newest run of each shows in `members`, so the other
    /// takes no traffic it should and its sessions cannot be reached. Sorted.
    pub duplicate_ids: Vec<String>,
}

impl ClusterView {
    /// This node as gossip sees it.
    pub fn me(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.node_id == self.self_id)
    }

    /// The live member whose sessions carry `tag`: where a session's calls and tracks are.
    pub fn live_by_tag(&self, tag: NodeTag) -> Option<&Member> {
        self.members.iter().find(|m| m.live && m.tag == tag)
    }

    /// The live member called `id`.
    pub fn live_by_id(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.live && m.node_id == id)
    }

    /// The publisher of stream `name` in `app` and the live member that holds it. When live
    /// members announce the same name (a race within a gossip round), every node picks the same
    /// winner ([`StreamAnnounce::wins_over`]).
    pub fn stream(&self, app: &str, name: &str) -> Option<(&Member, &StreamAnnounce)> {
        self.streams
            .iter()
            .filter(|(_, s)| s.app == app && s.name == name)
            .filter_map(|(node, s)| Some((self.live_by_id(node)?, s)))
            .reduce(|best, c| if c.1.wins_over(best.1) { c } else { best })
    }
}

#[cfg(test)]
mod load_tests {
    use super::*;

    #[test]
    fn a_load_reads_back_and_anything_else_is_bad() {
        let l = Load {
            sessions: 3,
            tracks: 2,
            relays: 1,
        };
        assert_eq!(Load::decode(&l.encode()), Ok(l));
        assert_eq!(Load::decode("0,0,0"), Ok(Load::default()));
        for bad in [
            "", "1,2", "1,2,3,4", "1,x,3", "-1,2,3", "1,,3", "1,2,3,", " 1,2,3",
        ] {
            assert_eq!(Load::decode(bad), Err(BadValue), "{bad:?}");
        }
        assert_eq!(decode_flag("true"), Ok(true));
        assert_eq!(decode_flag("false"), Ok(false));
        assert_eq!(decode_flag("yes"), Err(BadValue));
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
        assert_eq!(
            checked_api("https://127.0.0.1:9").as_deref(),
            Some("https://127.0.0.1:9")
        );
        for bad in [
            "http://127.0.0.1:9/metrics?x=",
            "http://127.0.0.1:9/",
            "http://evil.example:80",
            "ftp://127.0.0.1:9",
            "https://127.0.0.1:9/x",
            "http://user@127.0.0.1:9",
            "127.0.0.1:9",
            "",
        ] {
            assert_eq!(checked_api(bad), None, "{bad}");
        }
    }
}
