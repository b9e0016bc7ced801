//! Scoped stream tokens: a JWT (HS256) signed with an app's secret that lets its bearer publish
//! and/or play one stream of that app (or every stream, `*`) until it expires.
//!
//! The node checks them (WHIP/WHEP bearers) and mints them (`POST /v1/apps/{app}/tokens`);
//! `trackmeshctl token` mints them offline with the same code. Apps are configured identically
//! on every node, so a token minted anywhere verifies on every node with no lookup and no shared
//! state.
//!
//! [`mint`] and [`verify`] do no I/O and read no clock: callers pass `now` in Unix seconds
//! ([`unix_now`] reads it for the shells).
//!
//! Bounds: a token is at most [`MAX_TOKEN_LEN`] bytes (longer is refused before any decoding),
//! app ids and stream names at most [`MAX_NAME_LEN`] bytes, lifetimes at most [`MAX_TTL`].
//! Clocks of the minting and the checking host may differ by up to [`CLOCK_SKEW`].

mod ticket;
pub use ticket::{
    DEFAULT_TICKET_TTL, MAX_TICKET_TTL, TICKET_KIND, TICKET_SKEW, TicketClaims, mint_ticket,
    ticket_app_unverified, verify_ticket,
};

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Longest bearer token accepted, in bytes. Ours are well under 1 KiB; the bound keeps a client
/// from making the node base64-decode and parse megabytes (the HTTP head limit is 16 KiB).
pub const MAX_TOKEN_LEN: usize = 4096;
/// Longest app id or stream name a token can carry, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Lifetime of a token when the caller names none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Longest lifetime a token may have: tokens cannot be revoked short of rotating the app
/// secret, so they stay short-lived.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// How far the clocks of the host that minted a token and the node that checks it may differ:
/// a token is still accepted this long after `exp`, and may carry an `iat` this far ahead.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// The stream name that grants every stream of the app.
pub const ANY_STREAM: &str = "*";

/// What a token lets its bearer do with its stream.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// WHIP: send the stream.
    Publish,
    /// WHEP: play the stream.
    Subscribe,
    /// Both.
    Both,
}

impl Mode {
    /// The name on the wire and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Publish => "publish",
            Mode::Subscribe => "subscribe",
            Mode::Both => "both",
        }
    }

    /// Whether a token of this mode grants `wanted` (`Both` is granted only by `Both`).
    pub fn grants(self, wanted: Mode) -> bool {
        self == Mode::Both || self == wanted
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "publish" => Ok(Mode::Publish),
            "subscribe" => Ok(Mode::Subscribe),
            "both" => Ok(Mode::Both),
            _ => Err("the mode must be publish, subscribe or both".to_string()),
        }
    }
}

/// The claims of a stream token: the JWT's payload.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The app id the token is for.
    pub app: String,
    /// A stream name, or [`ANY_STREAM`].
    pub stream: String,
    pub mode: Mode,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
}

impl Claims {
    /// Whether the token names this stream (or every stream).
    pub fn covers_stream(&self, stream: &str) -> bool {
        self.stream == ANY_STREAM || self.stream == stream
    }

    /// [`TokenError::WrongStream`] or [`TokenError::WrongMode`] (403s) unless the token grants
    /// `wanted` on `stream`.
    pub fn check_scope(&self, stream: &str, wanted: Mode) -> Result<(), TokenError> {
        if !self.covers_stream(stream) {
            return Err(TokenError::WrongStream);
        }
        if !self.mode.grants(wanted) {
            return Err(TokenError::WrongMode {
                granted: self.mode,
                wanted,
            });
        }
        Ok(())
    }
}

/// A freshly minted token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    /// The compact JWT, for `Authorization: Bearer`.
    pub token: String,
    pub claims: Claims,
}

/// Why a token could not be minted (the caller's input; never a secret in the text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    #[error("the ttl must be between 1 and {} seconds", MAX_TTL.as_secs())]
    Ttl,
    #[error("the app secret is empty")]
    EmptySecret,
    #[error("the {0} must be 1 to {MAX_NAME_LEN} bytes with no control characters")]
    BadName(&'static str),
    #[error("signing the token failed: {0}")]
    Sign(String),
}

/// Why a bearer was refused: [`TokenError::status`] is 401 for a bearer that proves nothing
/// and 403 for a valid token that does not grant what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token")]
    Missing,
    #[error("the bearer token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error("the bearer token is neither the app secret nor a stream token ({0})")]
    Malformed(&'static str),
    #[error("the token's signature does not verify under this app's secret")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token's issue time is in the future")]
    NotYetValid,
    #[error("the token is for another app")]
    WrongApp,
    #[error("the token is not valid for this stream")]
    WrongStream,
    #[error("the token allows {granted}, not {wanted}")]
    WrongMode { granted: Mode, wanted: Mode },
}

impl TokenError {
    /// 403 for a valid token of the wrong scope, 401 for everything else.
    pub fn status(&self) -> u16 {
        if self.is_forbidden() { 403 } else { 401 }
    }

    /// Whether the token was valid but is not for this stream or mode.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, TokenError::WrongStream | TokenError::WrongMode { .. })
    }
}

fn check_name(what: &'static str, name: &str) -> Result<(), MintError> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(MintError::BadName(what));
    }
    Ok(())
}

/// Mints a token for `app` granting `mode` on `stream` (a name or [`ANY_STREAM`]) for `ttl`
/// (whole seconds, 1 s to [`MAX_TTL`]) from `now` (Unix seconds).
pub fn mint(
    secret: &[u8],
    app: &str,
    stream: &str,
    mode: Mode,
    ttl: Duration,
    now: u64,
) -> Result<Minted, MintError> {
    if ttl < Duration::from_secs(1) || ttl > MAX_TTL {
        return Err(MintError::Ttl);
    }
    if secret.is_empty() {
        return Err(MintError::EmptySecret);
    }
    check_name("app id", app)?;
    check_name("stream name", stream)?;
    let claims = Claims {
        app: app.to_string(),
        stream: stream.to_string(),
        mode,
        iat: now,
        exp: now.saturating_add(ttl.as_secs()),
    };
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| MintError::Sign(e.to_string()))?;
    Ok(Minted { token, claims })
}

/// Checks that `token` is a stream token of `app`, signed with `secret` and live at `now`
/// (Unix seconds), and returns its claims. Only HS256 is accepted (`alg: none` and every other
/// algorithm are refused). The scope is checked separately ([`Claims::check_scope`]).
pub fn verify(secret: &[u8], app: &str, token: &str, now: u64) -> Result<Claims, TokenError> {
    let claims: Claims = decode_hs256(secret, token, "not a stream token")?;
    if claims.app != app {
        return Err(TokenError::WrongApp);
    }
    if claims.exp <= claims.iat || claims.exp - claims.iat > MAX_TTL.as_secs() {
        return Err(TokenError::Malformed("its lifetime is out of bounds"));
    }
    let skew = CLOCK_SKEW.as_secs();
    if now > claims.exp.saturating_add(skew) {
        return Err(TokenError::Expired);
    }
    if claims.iat > now.saturating_add(skew) {
        return Err(TokenError::NotYetValid);
    }
    Ok(claims)
}

/// Decodes an HS256 JWT signed with `secret` into `C`, before any check of its claims; `what`
/// names the error when the JSON is not a `C`. Time is left to the caller's `now`, not the
/// library's clock; `alg: none` and every other algorithm are refused.
pub(crate) fn decode_hs256<C: serde::de::DeserializeOwned>(
    secret: &[u8],
    token: &str,
    what: &'static str,
) -> Result<C, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong);
    }
    // HMAC under an empty key is a key anyone has.
    if secret.is_empty() {
        return Err(TokenError::BadSignature);
    }
    let mut validation = Validation::new(Algorithm::HS256);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<C>(token, &DecodingKey::from_secret(secret), &validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => TokenError::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                TokenError::Malformed("only HS256 is accepted")
            }
            ErrorKind::Json(_) => TokenError::Malformed(what),
            _ => TokenError::Malformed("not a JWT"),
        })
}

/// The system clock in Unix seconds (0 if it is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix seconds as an RFC 3339 UTC timestamp, e.g. `2026-12-01T19:00:00Z`.
pub fn rfc3339(unix_secs: u64) -> String {
    // Days to civil date (H. Hinnant's algorithm), valid far beyond any token's expiry.
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests;
