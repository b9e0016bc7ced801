//! Rooms, the no-I/O model: a room per app with options, owned by the node that created it
//! (`registry.rs`), announced in gossip with the participants each node holds (`announce.rs`),
//! and merged into one summary per room from every live member's announce (`summary.rs`). The
//! single use of tickets is `used.rs`. The HTTP handlers are `api/rooms.rs`, the WebSocket
//! participants `api/ws.rs` over the protocol core in `ws/`.

pub mod announce;
pub mod registry;
pub mod summary;
pub mod used;

pub use announce::RoomAnnounce;
pub use registry::{CreateError, Elsewhere, Registry};
pub use summary::RoomSummary;
pub use used::{ConsumeError, UsedTickets};

/// Longest room id, in bytes (as stream names).
pub const MAX_ROOM_ID: usize = 128;
/// Participants of one room when its creator set no limit, and the largest limit accepted.
pub const DEFAULT_MAX_PARTICIPANTS: u32 = 50;
/// The largest `max_participants` a room may ask for.
pub const MAX_PARTICIPANTS_LIMIT: u32 = 1000;

/// Whether `id` is a usable room id: what a URL path segment carries unescaped.
pub fn valid_room_id(id: &str) -> bool {
    crate::cluster::streams::valid_name(id)
}

/// A room's options, fixed when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomOptions {
    /// Participants at once, across the cluster (WebSocket joins past it get
    /// `EXCEED-MAX-CONNECTIONS`).
    pub max_participants: u32,
    /// Publishers' audio goes to the message bus (NATS egress).
    pub audio_egress: bool,
}

impl Default for RoomOptions {
    fn default() -> RoomOptions {
        RoomOptions {
            max_participants: DEFAULT_MAX_PARTICIPANTS,
            audio_egress: false,
        }
    }
}

/// One room as its owner holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    /// The app it belongs to.
    pub app: String,
    /// Its id in the app.
    pub id: String,
    /// When it was created, Unix milliseconds (the older of two racing creations wins).
    pub created_ms: u64,
    /// Its options.
    pub options: RoomOptions,
}

/// A participant's role in a room, as the WebSocket `connect` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Publishes audio and video.
    Upstream,
    /// Receives the room's tracks.
    Downstream,
    /// Both.
    Sendrecv,
}

impl Role {
    /// It publishes (counts in `up_count`).
    pub fn sends(self) -> bool {
        matches!(self, Role::Upstream | Role::Sendrecv)
    }

    /// It receives (counts in `down_count`).
    pub fn receives(self) -> bool {
        matches!(self, Role::Downstream | Role::Sendrecv)
    }
}

/// A ticket's direction: which roles it admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Upstream only.
    Up,
    /// Downstream only.
    Down,
    /// Any role.
    Both,
}

impl Direction {
    /// Whether a ticket of this direction admits `role`.
    pub fn admits(self, role: Role) -> bool {
        match self {
            Direction::Both => true,
            Direction::Up => role == Role::Upstream,
            Direction::Down => role == Role::Downstream,
        }
    }

    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
            Direction::Both => "both",
        }
    }
}

/// Unix milliseconds now.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
