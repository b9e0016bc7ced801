//! A room in gossip. Each node announces one key per room it owns or has participants in:
//! `room:{app}/{id}` = `{created_ms} {owner} {max} {egress} {up} {down} {total} {publishers}`,
//! where `owner` and `egress` are `0`/`1`, and `publishers` is `-` or a comma-separated list of
//! this node's sessions that publish in the room (at most [`MAX_PUBLISHERS`]). Every node sums the
//! counts and joins the publishers of all live members (`summary.rs`).

use super::{MAX_PARTICIPANTS_LIMIT, RoomOptions, valid_room_id};
use crate::ids::{NodeTag, SessionId};

/// The prefix of every room key in a member's gossip state.
pub const KEY_PREFIX: &str = "room:";
/// Rooms one node announces at most (owned ones first).
pub const MAX_ANNOUNCED: usize = 1024;
/// Publishing sessions one node lists per room; more still count in `up`.
pub const MAX_PUBLISHERS: usize = 32;

/// One node's view of one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomAnnounce {
    /// The app.
    pub app: String,
    /// The room's id.
    pub id: String,
    /// When the room was created (Unix ms).
    pub created_ms: u64,
    /// This node owns (created) the room.
    pub owner: bool,
    /// The room's options.
    pub options: RoomOptions,
    /// Participants here that publish.
    pub up: u32,
    /// Participants here that receive.
    pub down: u32,
    /// Participants here (a sendrecv one counts in `up`, `down` and once here).
    pub total: u32,
    /// This node's publishing sessions in the room.
    pub publishers: Vec<SessionId>,
}

/// A room key or value that cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unreadable room announce")]
pub struct BadRoom;

impl RoomAnnounce {
    /// Its gossip key.
    pub fn key(&self) -> String {
        format!("{KEY_PREFIX}{}/{}", self.app, self.id)
    }

    /// Its gossip value, as [`RoomAnnounce::decode`] reads it.
    pub fn value(&self) -> String {
        let pubs = if self.publishers.is_empty() {
            "-".to_string()
        } else {
            self.publishers
                .iter()
                .take(MAX_PUBLISHERS)
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            "{} {} {} {} {} {} {} {pubs}",
            self.created_ms,
            u8::from(self.owner),
            self.options.max_participants,
            u8::from(self.options.audio_egress),
            self.up,
            self.down,
            self.total
        )
    }

    /// Reads a member's key and value; the publishers must be sessions of `tag` (a member cannot
    /// claim another node's sessions).
    pub fn decode(key: &str, value: &str, tag: NodeTag) -> Result<RoomAnnounce, BadRoom> {
        let (app, id) = key
            .strip_prefix(KEY_PREFIX)
            .and_then(|k| k.split_once('/'))
            .ok_or(BadRoom)?;
        if !valid_room_id(app) || !valid_room_id(id) {
            return Err(BadRoom);
        }
        let parts: Vec<&str> = value.splitn(9, ' ').collect();
        let [created, owner, max, egress, up, down, total, pubs] = parts.as_slice() else {
            return Err(BadRoom);
        };
        let num = |v: &str| v.parse::<u64>().map_err(|_| BadRoom);
        let count = |v: &str| v.parse::<u32>().map_err(|_| BadRoom);
        let flag = |v: &str| match v {
            "0" => Ok(false),
            "1" => Ok(true),
            _ => Err(BadRoom),
        };
        let max_participants = count(max)?;
        if max_participants == 0 || max_participants > MAX_PARTICIPANTS_LIMIT {
            return Err(BadRoom);
        }
        let publishers = if *pubs == "-" {
            Vec::new()
        } else {
            let list: Vec<&str> = pubs.split(',').take(MAX_PUBLISHERS + 1).collect();
            if list.len() > MAX_PUBLISHERS {
                return Err(BadRoom);
            }
            list.into_iter()
                .map(|s| {
                    SessionId::parse(s)
                        .filter(|s| s.node_tag() == tag)
                        .ok_or(BadRoom)
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        Ok(RoomAnnounce {
            app: app.to_string(),
            id: id.to_string(),
            created_ms: num(created)?,
            owner: flag(owner)?,
            options: RoomOptions {
                max_participants,
                audio_egress: flag(egress)?,
            },
            up: count(up)?,
            down: count(down)?,
            total: count(total)?,
            publishers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announce(tag: NodeTag) -> RoomAnnounce {
        RoomAnnounce {
            app: "demo".into(),
            id: "room-1".into(),
            created_ms: 1_700_000_000_000,
            owner: true,
            options: RoomOptions {
                max_participants: 10,
                audio_egress: true,
            },
            up: 1,
            down: 2,
            total: 3,
            publishers: vec![SessionId::new(tag)],
        }
    }

    #[test]
    fn an_announce_reads_back_and_bad_ones_are_refused() {
        let tag = NodeTag(0xab);
        let a = announce(tag);
        assert_eq!(
            RoomAnnounce::decode(&a.key(), &a.value(), tag),
            Ok(a.clone())
        );
        let none = RoomAnnounce {
            publishers: Vec::new(),
            ..a.clone()
        };
        assert_eq!(
            RoomAnnounce::decode(&none.key(), &none.value(), tag),
            Ok(none)
        );
        // Another node's session is not this member's to announce.
        assert_eq!(
            RoomAnnounce::decode(&a.key(), &a.value(), NodeTag(0xcd)),
            Err(BadRoom)
        );
        for (k, v) in [
            ("room:demo", "1 1 10 0 0 0 0 -"),
            ("room:demo/a b", "1 1 10 0 0 0 0 -"),
            ("room:demo/r", "1 1 10 0 0 0 -"),
            ("room:demo/r", "1 2 10 0 0 0 0 -"),
            ("room:demo/r", "1 1 0 0 0 0 0 -"),
            ("room:demo/r", "1 1 10 0 x 0 0 -"),
            ("room:demo/r", "1 1 10 0 0 0 0 nope"),
        ] {
            assert_eq!(RoomAnnounce::decode(k, v, tag), Err(BadRoom), "{k} {v}");
        }
    }
}

/// The rooms this node announces, which the gossip loop copies into its keys.
#[derive(Default)]
pub struct LocalRooms {
    by_key: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
}

impl LocalRooms {
    /// Announces exactly `announces` (at most [`MAX_ANNOUNCED`], in the order given).
    pub fn replace_all(&self, announces: &[RoomAnnounce]) {
        let fresh = announces
            .iter()
            .take(MAX_ANNOUNCED)
            .map(|a| (a.key(), a.value()))
            .collect();
        *self.by_key.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
    }

    /// The keys and values to gossip now.
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, String> {
        self.by_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
