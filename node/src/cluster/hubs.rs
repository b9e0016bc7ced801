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
            duplicate_ids: Vec::new(),
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

    /// Tracks per hub when `tracks` tracks of region eu are pulled into a us region of `hubs`
    /// nodes. Session ids are fixed (a simple generator), so the figure is reproducible.
    fn spread(sessions: usize, hubs: usize) -> Vec<usize> {
        let mut members = vec![member("a", 1, "eu")];
        for h in 0..hubs {
            members.push(member(&format!("us-{h}"), 10 + h as u32, "us"));
        }
        let v = view("us-0", members);
        let mut counts = vec![0usize; hubs];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..sessions {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&1u32.to_be_bytes());
            for chunk in b[4..].chunks_mut(4) {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                chunk.copy_from_slice(&(x >> 32).to_be_bytes()[4..]);
            }
            let s = SessionId::from_bytes(b);
            for track in ["audio", "video"] {
                let Some(hub) = hub_for(&v, "us", s, track) else {
                    panic!("no hub")
                };
                let i: usize = hub.node_id["us-".len()..].parse().expect("a us node");
                counts[i] += 1;
            }
        }
        counts
    }

    /// 1,000 tracks (500 publishers of audio and video) from one region pulled into a region of
    /// 3 nodes: each hub carries a fair share. The figure is in BENCHMARKS.md ("Hub balance").
    #[test]
    fn a_thousand_tracks_spread_fairly_over_three_hubs() {
        let counts = spread(500, 3);
        assert_eq!(counts.iter().sum::<usize>(), 1000);
        let max = *counts.iter().max().expect("3 hubs");
        let ratio = max as f64 / (1000.0 / 3.0);
        println!("tracks per hub {counts:?}, max/mean {ratio:.2}");
        assert!(ratio <= 1.15, "max/mean {ratio:.2}: {counts:?}");
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
