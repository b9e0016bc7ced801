//! One room as the cluster sees it: the owner's announce (the older of two racing creations, then
//! the smaller node id, so every node picks the same) with the counts and publishers of every
//! live member's announce added up.

use std::collections::BTreeMap;

use super::{RoomAnnounce, RoomOptions};
use crate::ids::SessionId;

/// A room across the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSummary {
    /// The app.
    pub app: String,
    /// The room's id.
    pub id: String,
    /// The node that owns it.
    pub owner: String,
    /// When it was created (Unix ms).
    pub created_ms: u64,
    /// Its options.
    pub options: RoomOptions,
    /// Publishing participants on every node.
    pub up: u32,
    /// Receiving participants on every node.
    pub down: u32,
    /// Participants on every node.
    pub total: u32,
    /// Publishing sessions on every node.
    pub publishers: Vec<SessionId>,
}

impl RoomSummary {
    /// It has a live publisher.
    pub fn onair(&self) -> bool {
        self.up > 0
    }
}

/// Merges announces `(node id, announce)` of live members into one summary per room with an
/// owner; rooms without one (deleted, or their owner gone) are left out.
pub fn merge<'a>(
    announces: impl IntoIterator<Item = (&'a str, &'a RoomAnnounce)>,
) -> Vec<RoomSummary> {
    let mut by_room: BTreeMap<(&str, &str), Vec<(&str, &RoomAnnounce)>> = BTreeMap::new();
    for (node, a) in announces {
        by_room
            .entry((a.app.as_str(), a.id.as_str()))
            .or_default()
            .push((node, a));
    }
    let mut out = Vec::new();
    for ((app, id), list) in by_room {
        let Some((owner, first)) = list
            .iter()
            .filter(|(_, a)| a.owner)
            .min_by_key(|(node, a)| (a.created_ms, *node))
        else {
            continue;
        };
        let mut s = RoomSummary {
            app: app.to_string(),
            id: id.to_string(),
            owner: owner.to_string(),
            created_ms: first.created_ms,
            options: first.options,
            up: 0,
            down: 0,
            total: 0,
            publishers: Vec::new(),
        };
        for (_, a) in &list {
            s.up = s.up.saturating_add(a.up);
            s.down = s.down.saturating_add(a.down);
            s.total = s.total.saturating_add(a.total);
            s.publishers.extend(a.publishers.iter().copied());
        }
        out.push(s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeTag;

    fn a(id: &str, owner: bool, created_ms: u64, up: u32, down: u32) -> RoomAnnounce {
        RoomAnnounce {
            app: "demo".into(),
            id: id.into(),
            created_ms,
            owner,
            options: RoomOptions::default(),
            up,
            down,
            total: up + down,
            publishers: (0..up).map(|_| SessionId::new(NodeTag(1))).collect(),
        }
    }

    #[test]
    fn counts_add_up_and_the_older_owner_wins() {
        let (r1a, r1b, r1c) = (
            a("r1", true, 5, 1, 0),
            a("r1", false, 5, 0, 2),
            a("r1", true, 3, 1, 1),
        );
        let orphan = a("gone", false, 1, 1, 1);
        let got = merge([("a", &r1a), ("b", &r1b), ("c", &r1c), ("b", &orphan)]);
        assert_eq!(got.len(), 1, "a room without an owner is not listed");
        let s = &got[0];
        assert_eq!((s.owner.as_str(), s.created_ms), ("c", 3));
        assert_eq!((s.up, s.down, s.total, s.publishers.len()), (2, 3, 5, 2));
        assert!(s.onair());
    }
}
