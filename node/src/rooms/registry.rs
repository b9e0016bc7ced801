//! The rooms this node created and owns. Any node answers any room call: the others learn of a
//! room from its owner's gossip (`announce.rs`), and calls that change a room go to its owner.

use std::collections::BTreeMap;

use super::{Room, RoomOptions, valid_room_id};

/// Rooms one node owns at most (each is one gossip key in every delta while it lives).
pub const MAX_OWNED: usize = 1024;

/// Why a room was not created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CreateError {
    /// An id outside `[A-Za-z0-9._~-]{1,128}`.
    #[error("a room id is 1 to 128 characters of A-Z a-z 0-9 . _ ~ -")]
    BadId,
    /// The app already has a room of that id (here or on another node).
    #[error("room {0} already exists")]
    Exists(String),
    /// The app holds its quota of rooms in the cluster.
    #[error("this app holds its quota of {0} rooms")]
    Quota(usize),
    /// This node owns [`MAX_OWNED`] rooms.
    #[error("this node holds {MAX_OWNED} rooms; create it on another node")]
    Full,
}

/// What other nodes hold, as gossip tells it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Elsewhere {
    /// Another node has a room of this id for the app.
    pub exists: bool,
    /// Rooms the app has on other nodes.
    pub app_rooms: usize,
}

/// The rooms this node owns, by (app, id).
#[derive(Debug, Default)]
pub struct Registry {
    rooms: BTreeMap<(String, String), Room>,
}

impl Registry {
    /// Creates a room. `elsewhere` is what gossip says of other nodes (so a race within a gossip
    /// round can pass; the older creation then wins, see `summary.rs`).
    pub fn create(
        &mut self,
        app: &str,
        id: &str,
        options: RoomOptions,
        quota: usize,
        elsewhere: Elsewhere,
        now_ms: u64,
    ) -> Result<Room, CreateError> {
        if !valid_room_id(id) {
            return Err(CreateError::BadId);
        }
        let key = (app.to_string(), id.to_string());
        if elsewhere.exists || self.rooms.contains_key(&key) {
            return Err(CreateError::Exists(id.to_string()));
        }
        let mine = self.rooms.keys().filter(|(a, _)| a == app).count();
        if mine + elsewhere.app_rooms >= quota {
            return Err(CreateError::Quota(quota));
        }
        if self.rooms.len() >= MAX_OWNED {
            return Err(CreateError::Full);
        }
        let room = Room {
            app: app.to_string(),
            id: id.to_string(),
            created_ms: now_ms,
            options,
        };
        self.rooms.insert(key, room.clone());
        Ok(room)
    }

    /// Deletes a room this node owns; whether it was here.
    pub fn delete(&mut self, app: &str, id: &str) -> bool {
        self.rooms
            .remove(&(app.to_string(), id.to_string()))
            .is_some()
    }

    /// A room this node owns.
    pub fn get(&self, app: &str, id: &str) -> Option<&Room> {
        self.rooms.get(&(app.to_string(), id.to_string()))
    }

    /// Every room this node owns.
    pub fn all(&self) -> impl Iterator<Item = &Room> {
        self.rooms.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_the_quota_counts_other_nodes() {
        let mut r = Registry::default();
        let o = RoomOptions::default();
        assert!(
            r.create(
                "a",
                "r1",
                o,
                2,
                Elsewhere {
                    exists: false,
                    app_rooms: 0
                },
                1
            )
            .is_ok()
        );
        assert_eq!(
            r.create(
                "a",
                "r1",
                o,
                2,
                Elsewhere {
                    exists: false,
                    app_rooms: 0
                },
                1
            ),
            Err(CreateError::Exists("r1".into()))
        );
        assert_eq!(
            r.create(
                "a",
                "r2",
                o,
                2,
                Elsewhere {
                    exists: true,
                    app_rooms: 0
                },
                1
            ),
            Err(CreateError::Exists("r2".into()))
        );
        assert_eq!(
            r.create(
                "a",
                "r2",
                o,
                2,
                Elsewhere {
                    exists: false,
                    app_rooms: 1
                },
                1
            ),
            Err(CreateError::Quota(2))
        );
        assert!(
            r.create(
                "b",
                "r1",
                o,
                2,
                Elsewhere {
                    exists: false,
                    app_rooms: 0
                },
                1
            )
            .is_ok(),
            "another app"
        );
        assert_eq!(
            r.create(
                "a",
                "no/slash",
                o,
                2,
                Elsewhere {
                    exists: false,
                    app_rooms: 0
                },
                1
            ),
            Err(CreateError::BadId)
        );
        assert!(r.delete("a", "r1"));
        assert!(!r.delete("a", "r1"));
        assert!(
            r.create(
                "a",
                "r2",
                o,
                2,
                Elsewhere {
                    exists: false,
                    app_rooms: 1
                },
                1
            )
            .is_ok()
        );
    }
}
