//! Engine and runtime errors mapped onto the Calls error model ([`ApiError`]): the only place
//! that knows which Calls code and status each engine error becomes.

use axum::http::StatusCode;

pub use crate::calls_error::ApiError;
use crate::engine::{OpError, TrackError};
use crate::runtime::EngineStopped;

impl From<OpError> for ApiError {
    fn from(e: OpError) -> ApiError {
        match e {
            OpError::NotFound(d) => ApiError::new(StatusCode::NOT_FOUND, "not_found", d),
            OpError::Gone(d) => ApiError::new(StatusCode::GONE, "session_error", d),
            OpError::Decoding(d) => ApiError::decoding(d),
            OpError::InvalidParams(d) => ApiError::invalid_params(d),
            OpError::InvalidSdp(d) => ApiError::invalid_sdp(d),
            OpError::Unavailable(d) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable_error",
                d,
            ),
            OpError::OverQuota(d) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", d)
            }
            OpError::Conflict(d) => ApiError::new(StatusCode::CONFLICT, "conflict", d),
            OpError::Unprocessable(d) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", d)
            }
            OpError::PreconditionFailed(d) => {
                ApiError::new(StatusCode::PRECONDITION_FAILED, "precondition_failed", d)
            }
            OpError::Internal(d) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", d)
            }
        }
    }
}

/// The Calls code of a per-track error (the item's `errorCode`; its text is the description).
pub fn track_error_code(e: &TrackError) -> &'static str {
    match e {
        TrackError::InvalidParams(_) => "invalid_params",
        TrackError::AlreadyPublished(_) => "repeated_local_track_error",
        TrackError::NotFound => "not_found_track_error",
        TrackError::Update(_) => "update_track_error",
        TrackError::Close(_) => "close_track_error",
        TrackError::Internal(_) => "internal_error",
    }
}

impl From<EngineStopped> for ApiError {
    fn from(e: EngineStopped) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable_error",
            e.to_string(),
        )
    }
}
