//! Where a node pulls a remote track from. Same region as the publisher: straight from the
//! origin. Another region: through the region's hub for that track, chosen by consistent hashing
//! over the region's live, non-draining nodes, so every node of the region picks the same hub
//! and the track crosses to the region once.

use consistent_hash::{DefaultHash, Node, StaticHashRing};

use super::view::{ClusterView, Member};
use crate::ids::SessionId;

/// Virtual nodes per member: enough to spread tracks evenly over a handful of hubs.
const VNODES: usize = 64;

/// The node to pull a remote track from, and why it is that one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// Pull from the origin node itself.
    Direct(Member),
    /// Pull from this region's hub, which pulls from the origin.
    ViaHub {
        /// The region's hub for this track, which this node dials.
        hub: Member,
        /// The node the track is published on.
        origin: Member,
    },
}

impl Upstream {
    /// The node to dial: the origin, or the hub in front of it.
    pub fn peer(&self) -> &Member {
        match self {
            Upstream::Direct(m) => m,
            Upstream::ViaHub { hub, .. } => hub,
        }
    }
}

/// The hub of `region` for a track, or None when the region has no eligible node.
pub fn hub_for<'a>(
    view: &'a ClusterView,
    region: &str,
    session: SessionId,
    track: &str,
) -> Option<&'a Member> {
    let nodes = view
        .members
        .iter()
        .filter(|m| m.live && !m.draining && m.region == region)
        .map(|m| Node::new(m.node_id.clone()).quantity(VNODES));
    let ring = StaticHashRing::new(DefaultHash, nodes);
    let key = format!("{session}/{track}");
    let id = ring.calc_candidates(&key).next()?.key.clone();
    view.members.iter().find(|m| m.node_id == id)
}

/// How this node should pull `(session, track)`. `direct_only` is set when the pull is itself
/// for another node (this node is serving as a hub): then it never goes through a further hub,
/// so routes cannot loop while views disagree.
pub fn upstream_for(
    view: &ClusterView,
    session: SessionId,
    track: &str,
    direct_only: bool,
) -> Option<Upstream> {
    let me = view.me()?;
    let origin = view.live_by_tag(session.node_tag())?.clone();
    if origin.node_id == me.node_id {
        return None;
    }
    if direct_only || origin.region == me.region {
        return Some(Upstream::Direct(origin));
    }
    match hub_for(view, &me.region, session, track) {
        Some(hub) if hub.node_id != me.node_id => Some(Upstream::ViaHub {
            hub: hub.clone(),
            origin,
        }),
        // This node is the region's hub (or the region has no eligible hub): go direct.
        _ => Some(Upstream::Direct(origin)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::view::Load;
    use crate::ids::NodeTag;

    fn member(id: &str, tag: u32, region: &str) -> Member {
        Member {
            node_id: id.into(),
            tag: NodeTag(tag),
            region: region.into(),
            api: format!("http://{id}"),
            relay: "127.0.0.1:1".parse().expect("addr"),
            media: String::new(),
            live: true,
            draining: false,
            load: Some(Load::default()),
            version: String::new(),
        }
    }

    fn view(me: &str, members: Vec<Member>) -> ClusterView {
        ClusterView {
            self_id: me.into(),
            members,
            streams: Vec::new(),
            rooms: Vec::new(),
        }
    }

    fn cluster() -> Vec<Member> {
        vec![
            member("a", 1, "eu"),
            member("b", 2, "us"),
            member("c", 3, "us"),
            member("d", 4, "us"),
        ]
    }

    #[test]
    fn same_region_pulls_direct() {
        let mut m = cluster();
        m.push(member("e", 5, "eu"));
        let v = view("e", m);
        let s = SessionId::new(NodeTag(1));
        assert_eq!(
            upstream_for(&v, s, "cam", false).map(|u| u.peer().node_id.clone()),
            Some("a".into())
        );
    }

    #[test]
    fn every_node_of_a_region_agrees_on_the_hub() {
        for i in 0..50 {
            let s = SessionId::new(NodeTag(1));
            let track = format!("t{i}");
            let hubs: Vec<String> = ["b", "c", "d"]
                .iter()
                .map(|me| {
                    let v = view(me, cluster());
                    match upstream_for(&v, s, &track, false) {
                        Some(Upstream::ViaHub { hub, .. }) => hub.node_id,
                        Some(Upstream::Direct(o)) => {
                            assert_eq!(o.node_id, "a");
                            me.to_string()
                        }
                        None => panic!("no route"),
                    }
                })
                .collect();
            assert!(hubs.iter().all(|h| *h == hubs[0]), "{hubs:?}");
        }
    }

    #[test]
    fn a_dead_or_draining_hub_is_replaced_and_tracks_spread() {
        let s = SessionId::new(NodeTag(1));
        let mut counts = std::collections::HashMap::new();
        for i in 0..300 {
            let v = view("b", cluster());
            let hub = hub_for(&v, "us", s, &format!("t{i}")).map(|m| m.node_id.clone());
            *counts.entry(hub.clone()).or_insert(0) += 1;
            let Some(hub) = hub else { panic!("no hub") };
            let mut members = cluster();
            for m in &mut members {
                if m.node_id == hub {
                    if i % 2 == 0 {
                        m.live = false
                    } else {
                        m.draining = true
                    }
                }
            }
            let v2 = view("b", members);
            let again = hub_for(&v2, "us", s, &format!("t{i}")).map(|m| m.node_id.clone());
            assert!(
                again.is_some() && again != Some(hub),
                "re-routed away from the lost hub"
            );
        }
        assert_eq!(
            counts.len(),
            3,
            "all three us nodes are hubs for some tracks: {counts:?}"
        );
    }

    #[test]
    fn hubs_pull_direct_and_dead_origins_have_no_route() {
        let v = view("b", cluster());
        let s = SessionId::new(NodeTag(1));
        assert!(matches!(
            upstream_for(&v, s, "x", true),
            Some(Upstream::Direct(_))
        ));
        let mut members = cluster();
        members[0].live = false;
        assert_eq!(upstream_for(&view("b", members), s, "x", false), None);
        assert_eq!(
            upstream_for(&v, SessionId::new(NodeTag(99)), "x", false),
            None,
            "unknown tag"
        );
    }
}
