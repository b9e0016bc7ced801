//! The engine's typed errors. The API layer (`crate::api::error`) maps them to Calls error codes
//! and HTTP statuses; the engine knows nothing of either. The texts are what clients read.

/// Why a Calls operation failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    /// No such session (or another app's).
    #[error("{0}")]
    NotFound(String),
    /// The session existed and was closed.
    #[error("{0}")]
    Gone(String),
    /// The request's SDP could not be read.
    #[error("{0}")]
    Decoding(String),
    /// The request breaks a rule of the API (counts, required fields).
    #[error("{0}")]
    InvalidParams(String),
    /// The SDP was read but cannot be applied now.
    #[error("{0}")]
    InvalidSdp(String),
    /// The node is full.
    #[error("{0}")]
    Unavailable(String),
    /// The app holds its quota of something (its explicit streams).
    #[error("{0}")]
    OverQuota(String),
    /// The named thing already exists or is taken (a stream's publisher).
    #[error("{0}")]
    Conflict(String),
    /// The SDP was read, but nothing in it can be used (no codec in common).
    #[error("{0}")]
    Unprocessable(String),
    /// The client's view of the session (its `If-Match` ETag) is not the current one.
    #[error("{0}")]
    PreconditionFailed(String),
    /// A bug or an impossible state; the request may be retried.
    #[error("{0}")]
    Internal(String),
}

/// The text Calls gives when a pulled track does not exist (clients match on it).
pub(crate) const NOT_FOUND_TRACK: &str = "Track not found on remote peer. Make sure the publisher peer is connected and sending packets for this track";

/// Why one track of a request failed while the request itself succeeded (Calls reports these
/// per item).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackError {
    /// The item breaks a rule of the API (missing fields, unknown or busy mid).
    #[error("{0}")]
    InvalidParams(String),
    /// The session already publishes a track of that name.
    #[error("{0}")]
    AlreadyPublished(String),
    /// The publication to pull or switch to does not exist (here or on any node).
    #[error("{NOT_FOUND_TRACK}")]
    NotFound,
    /// `tracks/update` cannot point this mid at that publication.
    #[error("{0}")]
    Update(String),
    /// `tracks/close` found no open track with this mid.
    #[error("{0}")]
    Close(String),
    /// A bug or an impossible state.
    #[error("{0}")]
    Internal(String),
}
