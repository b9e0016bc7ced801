//! Room tickets: HS256 JWTs signed with the app secret that admit one WebSocket participant to
//! one room, in one direction, at most once. Single use is the issuing node's (it keeps a used
//! set); the ticket names that node (`iss`) and carries a random id (`jti`).

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::{MAX_NAME_LEN, MAX_TOKEN_LEN, MintError, TokenError};

/// A ticket's lifetime when none is asked for.
pub const DEFAULT_TICKET_TTL: Duration = Duration::from_secs(60);
/// The longest a ticket may live.
pub const MAX_TICKET_TTL: Duration = Duration::from_secs(3600);
/// Clock skew allowed between the issuing and the redeeming node.
pub const TICKET_SKEW: Duration = Duration::from_secs(5);
/// The `kind` claim of every ticket, so a stream token is never taken for one (nor the reverse:
/// a ticket has no `stream` or `mode`).
pub const TICKET_KIND: &str = "room-ticket";

/// What a ticket says.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TicketClaims {
    /// Always [`TICKET_KIND`].
    pub kind: String,
    /// The app.
    pub app: String,
    /// The room.
    pub room: String,
    /// When the room was created (Unix ms), so a ticket does not admit to a room deleted and
    /// made again under the same id. Absent in tickets of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_created: Option<u64>,
    /// `up`, `down` or `both`.
    pub dir: String,
    /// The user it was issued for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The node that issued it and keeps its single use.
    pub iss: String,
    /// Its random id.
    pub jti: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
}

/// Longest ticket id: the issuing node keeps every redeemed one until it expires.
pub const MAX_TICKET_ID_LEN: usize = 64;

/// The first claim of `claims` out of bounds, by name: names (app, room, user, issuer) of 1 to
/// [`MAX_NAME_LEN`] bytes without control characters, an id of 1 to [`MAX_TICKET_ID_LEN`]
/// letters, digits, `-` or `_`. Anyone with the app secret can sign a ticket, so the node holds
/// those it takes to the same bounds as those it makes.
fn claim_out_of_bounds(claims: &TicketClaims) -> Option<&'static str> {
    for (what, v) in [
        ("app id", claims.app.as_str()),
        ("room id", claims.room.as_str()),
        ("user id", claims.user.as_deref().unwrap_or("-")),
        ("issuer", claims.iss.as_str()),
    ] {
        if v.is_empty() || v.len() > MAX_NAME_LEN || v.chars().any(char::is_control) {
            return Some(what);
        }
    }
    let id = claims.jti.as_bytes();
    if id.is_empty()
        || id.len() > MAX_TICKET_ID_LEN
        || !id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    {
        return Some("ticket id");
    }
    None
}

/// Signs a ticket. `claims.exp` must be within [`MAX_TICKET_TTL`] of `claims.iat`.
pub fn mint_ticket(secret: &[u8], claims: &TicketClaims) -> Result<String, MintError> {
    if secret.is_empty() {
        return Err(MintError::EmptySecret);
    }
    if claims.exp <= claims.iat || claims.exp - claims.iat > MAX_TICKET_TTL.as_secs() {
        return Err(MintError::Ttl);
    }
    if let Some(what) = claim_out_of_bounds(claims) {
        return Err(MintError::BadName(what));
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| MintError::Sign(e.to_string()))
}

/// Checks a ticket's signature, kind, app and time at `now` (Unix seconds), allowing
/// [`TICKET_SKEW`]. Room, direction and single use are the caller's.
pub fn verify_ticket(
    secret: &[u8],
    app: Option<&str>,
    token: &str,
    now: u64,
) -> Result<TicketClaims, TokenError> {
    let claims: TicketClaims = crate::decode_hs256(secret, token, "not a room ticket")?;
    if claims.kind != TICKET_KIND {
        return Err(TokenError::Malformed("not a room ticket"));
    }
    if app.is_some_and(|a| a != claims.app) {
        return Err(TokenError::WrongApp);
    }
    if claim_out_of_bounds(&claims).is_some() {
        return Err(TokenError::Malformed("a claim is out of bounds"));
    }
    if claims.exp <= claims.iat || claims.exp - claims.iat > MAX_TICKET_TTL.as_secs() {
        return Err(TokenError::Malformed("its lifetime is out of bounds"));
    }
    let skew = TICKET_SKEW.as_secs();
    if now > claims.exp.saturating_add(skew) {
        return Err(TokenError::Expired);
    }
    if claims.iat > now.saturating_add(skew) {
        return Err(TokenError::NotYetValid);
    }
    Ok(claims)
}

/// The app a ticket claims, read without checking anything: only to find which app's secret to
/// verify it with.
pub fn ticket_app_unverified(token: &str) -> Option<String> {
    use base64::Engine as _;
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    #[derive(Deserialize)]
    struct AppOnly {
        app: String,
    }
    serde_json::from_slice::<AppOnly>(&bytes)
        .ok()
        .map(|a| a.app)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(iat: u64, ttl: u64) -> TicketClaims {
        TicketClaims {
            kind: TICKET_KIND.into(),
            app: "app1".into(),
            room: "r1".into(),
            room_created: Some(1),
            dir: "up".into(),
            user: Some("u1".into()),
            iss: "node-a".into(),
            jti: "abc".into(),
            iat,
            exp: iat + ttl,
        }
    }

    #[test]
    fn a_ticket_verifies_and_expires() {
        let c = claims(1000, 60);
        let t = mint_ticket(b"s", &c).expect("mint");
        assert_eq!(ticket_app_unverified(&t).as_deref(), Some("app1"));
        assert_eq!(verify_ticket(b"s", Some("app1"), &t, 1010), Ok(c));
        assert_eq!(
            verify_ticket(b"s", Some("app1"), &t, 1100),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify_ticket(b"x", Some("app1"), &t, 1010),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify_ticket(b"s", Some("app2"), &t, 1010),
            Err(TokenError::WrongApp)
        );
        assert_eq!(mint_ticket(b"s", &claims(1000, 3601)), Err(MintError::Ttl));
    }

    #[test]
    fn a_ticket_whose_claims_are_out_of_bounds_is_neither_made_nor_taken() {
        let long_id = TicketClaims {
            jti: "a".repeat(2800),
            ..claims(1000, 60)
        };
        assert_eq!(
            mint_ticket(b"s", &long_id),
            Err(MintError::BadName("ticket id"))
        );
        // Signed by whoever holds the secret, not by this crate's minting.
        let forged = |c: &TicketClaims| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                c,
                &EncodingKey::from_secret(b"s"),
            )
            .expect("sign")
        };
        let odd_id = TicketClaims {
            jti: "a b".into(),
            ..claims(1000, 60)
        };
        let long_issuer = TicketClaims {
            iss: "n".repeat(MAX_NAME_LEN + 1),
            ..claims(1000, 60)
        };
        for c in [&long_id, &odd_id, &long_issuer] {
            assert!(matches!(
                verify_ticket(b"s", Some("app1"), &forged(c), 1010),
                Err(TokenError::Malformed(_))
            ));
        }
        let fine = TicketClaims {
            jti: "0123456789abcdef0123456789abcdef".into(),
            ..claims(1000, 60)
        };
        assert!(verify_ticket(b"s", Some("app1"), &forged(&fine), 1010).is_ok());
    }

    #[test]
    fn a_stream_token_is_not_a_ticket() {
        let m = crate::mint(
            b"s",
            "app1",
            "*",
            crate::Mode::Both,
            DEFAULT_TICKET_TTL,
            1000,
        )
        .expect("mint");
        assert!(matches!(
            verify_ticket(b"s", Some("app1"), &m.token, 1010),
            Err(TokenError::Malformed(_))
        ));
        let t = mint_ticket(b"s", &claims(1000, 60)).expect("mint");
        assert!(crate::verify(b"s", "app1", &t, 1010).is_err());
    }
}
