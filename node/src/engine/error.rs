//! The engine's typed errors. The API layer (`crate::api::error`) maps them to Calls error codes
//! and HTTP statuses; the engine knows nothing of either.

/// An error of a Calls operation, mapped to the Calls error model by the API layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpError {
    /// 404 `not_found`
    NotFound(String),
    /// 410 `session_error`
    Gone(String),
    /// 400 `decoding_error`
    Decoding(String),
    /// 406 `invalid_params`
    InvalidParams(String),
    /// 406 `invalid_session_description`
    InvalidSdp(String),
    /// 503 `temporarily_unavailable_error`
    Unavailable(String),
    /// 500 `internal_error`
    Internal(String),
}
