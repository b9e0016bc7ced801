//! TURN credentials in the TURN REST API scheme: the username is `{expiry_unix}:{keyId}:{nonce}`
//! and the password is base64(HMAC-SHA1(key secret, username)). Any node holding the key checks a
//! credential from the username alone, with no lookup and no shared state; only revocations are
//! state (a bounded set, kept until each credential expires). No I/O: time comes in as seconds.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use aws_lc_rs::hmac;
use base64::Engine as _;

/// Longest credential lifetime, as Calls (48 hours).
pub const MAX_TTL_SECS: u64 = 48 * 3600;
/// Revoked credentials remembered at once; past it a revocation is refused (never an old one
/// forgotten, which would make a revoked credential valid again).
pub const MAX_REVOKED: usize = 100_000;
/// Longest username accepted from a TURN client, in bytes (ours are about 60).
const MAX_USERNAME_BYTES: usize = 128;

/// One TURN key: the `{keyId}` in the API path and the secret that signs its credentials (and is
/// the bearer token of its endpoints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnKey {
    /// The key id clients put in `/v1/turn/keys/{keyId}/...`.
    pub id: String,
    /// The bearer secret, also the HMAC key of the credentials.
    pub secret: String,
}

impl std::str::FromStr for TurnKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, secret) = crate::config::parse_id_secret(s, "TURN key")?;
        Ok(TurnKey { id, secret })
    }
}

/// A credential handed to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// `{expiry_unix}:{keyId}:{nonce}`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub password: String,
}

/// Why a TURN client's username is refused: the `reason` label of the refusal counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not `{expiry}:{keyId}:…`, or too long.
    Malformed,
    /// The key id is not configured on this node.
    UnknownKey,
    /// Past its expiry.
    Expired,
    /// Revoked through the API.
    Revoked,
}

impl Refusal {
    /// The fixed label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Malformed => "bad_username",
            Refusal::UnknownKey => "unknown_key",
            Refusal::Expired => "expired",
            Refusal::Revoked => "revoked",
        }
    }
}

/// The configured keys and the revoked set; shared by the API and the TURN server.
pub struct TurnAuth {
    /// The first configured key: the one the node signs credentials with on its own behalf
    /// (WHIP/WHEP `Link` headers).
    first: Option<String>,
    keys: HashMap<String, hmac::Key>,
    secrets: HashMap<String, String>,
    revoked: Mutex<Revoked>,
}

/// Revoked usernames with their expiry; expired ones are dropped as time passes.
#[derive(Default)]
struct Revoked {
    names: HashSet<String>,
    by_expiry: BTreeSet<(u64, String)>,
}

impl Revoked {
    fn prune(&mut self, now: u64) {
        while let Some((expiry, _)) = self.by_expiry.first()
            && *expiry <= now
        {
            if let Some((_, name)) = self.by_expiry.pop_first() {
                self.names.remove(&name);
            }
        }
    }
}

/// A revocation the set has no room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevokedFull;

impl TurnAuth {
    /// The auth for `keys` (none: TURN is off).
    pub fn new(keys: &[TurnKey]) -> TurnAuth {
        TurnAuth {
            first: keys.first().map(|k| k.id.clone()),
            keys: keys
                .iter()
                .map(|k| {
                    (
                        k.id.clone(),
                        hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, k.secret.as_bytes()),
                    )
                })
                .collect(),
            secrets: keys
                .iter()
                .map(|k| (k.id.clone(), k.secret.clone()))
                .collect(),
            revoked: Mutex::new(Revoked::default()),
        }
    }

    /// True when at least one key is configured.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The id of the first configured key (`--turn-key` order), if any.
    pub fn first_key(&self) -> Option<&str> {
        self.first.as_deref()
    }

    /// The bearer secret of `key_id`, if configured.
    pub fn secret(&self, key_id: &str) -> Option<&str> {
        self.secrets.get(key_id).map(String::as_str)
    }

    /// A new credential of `key_id` valid for `ttl_secs` from `now` (unix seconds); `None` for an
    /// unknown key.
    pub fn issue(&self, key_id: &str, ttl_secs: u64, now: u64) -> Option<Credential> {
        let key = self.keys.get(key_id)?;
        let username = format!(
            "{}:{key_id}:{}",
            now.saturating_add(ttl_secs),
            crate::ids::random_hex(8)
        );
        let password = sign(key, &username);
        Some(Credential { username, password })
    }

    /// The password of a client's `username` at `now`, if the credential is valid: well formed,
    /// of a configured key, not expired, not revoked.
    pub fn password(&self, username: &str, now: u64) -> Result<String, Refusal> {
        let (expiry, key_id) = parse(username)?;
        let key = self.keys.get(key_id).ok_or(Refusal::UnknownKey)?;
        if expiry <= now {
            return Err(Refusal::Expired);
        }
        if self.lock().names.contains(username) {
            return Err(Refusal::Revoked);
        }
        Ok(sign(key, username))
    }

    /// Revokes `username` (of key `key_id`) until it expires. A malformed username, or one of
    /// another key, is `Err(Some(refusal))`; a full set `Err(None)`.
    pub fn revoke(&self, key_id: &str, username: &str, now: u64) -> Result<(), Option<Refusal>> {
        let (expiry, of_key) = parse(username).map_err(Some)?;
        if of_key != key_id {
            return Err(Some(Refusal::UnknownKey));
        }
        if expiry <= now {
            // Refused by its expiry already; nothing to remember.
            return Ok(());
        }
        let mut revoked = self.lock();
        revoked.prune(now);
        if revoked.names.contains(username) {
            return Ok(());
        }
        if revoked.names.len() >= MAX_REVOKED {
            return Err(None);
        }
        revoked.names.insert(username.to_string());
        revoked.by_expiry.insert((expiry, username.to_string()));
        Ok(())
    }

    /// Revoked credentials not yet expired (tests and views).
    pub fn revoked_count(&self, now: u64) -> usize {
        let mut revoked = self.lock();
        revoked.prune(now);
        revoked.names.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Revoked> {
        self.revoked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn sign(key: &hmac::Key, username: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(hmac::sign(key, username.as_bytes()))
}

/// `{expiry}:{keyId}[:…]` → (expiry, keyId).
fn parse(username: &str) -> Result<(u64, &str), Refusal> {
    if username.len() > MAX_USERNAME_BYTES {
        return Err(Refusal::Malformed);
    }
    let mut parts = username.splitn(3, ':');
    let expiry = parts
        .next()
        .and_then(|e| e.parse::<u64>().ok())
        .ok_or(Refusal::Malformed)?;
    let key_id = parts
        .next()
        .filter(|k| !k.is_empty())
        .ok_or(Refusal::Malformed)?;
    Ok((expiry, key_id))
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> TurnAuth {
        TurnAuth::new(&["k1:secret-one".parse().expect("key")])
    }

    #[test]
    fn the_first_key_is_the_first_configured() {
        let keys: Vec<TurnKey> = ["zeta:s1", "alpha:s2"]
            .iter()
            .map(|k| k.parse().expect("key"))
            .collect();
        assert_eq!(TurnAuth::new(&keys).first_key(), Some("zeta"));
        assert_eq!(TurnAuth::new(&[]).first_key(), None);
    }

    #[test]
    fn a_credential_checks_out_until_it_expires() {
        let a = auth();
        let c = a.issue("k1", 60, 1_000).expect("known key");
        assert!(c.username.starts_with("1060:k1:"), "{}", c.username);
        assert_eq!(a.password(&c.username, 1_059), Ok(c.password.clone()));
        assert_eq!(a.password(&c.username, 1_060), Err(Refusal::Expired));
        assert!(a.issue("nope", 60, 1_000).is_none());
    }

    #[test]
    fn the_password_is_the_turn_rest_api_hmac() {
        // The scheme coturn's use-auth-secret checks: base64(HMAC-SHA1(secret, username)); from
        // `printf %s 1700000000:k1 | openssl dgst -sha1 -hmac secret-one -binary | base64`.
        let a = auth();
        assert_eq!(
            a.password("1700000000:k1", 1).as_deref(),
            Ok("M/ritzEUPZJo8HzPyym8KaYRmP4=")
        );
    }

    #[test]
    fn another_key_or_a_malformed_name_is_refused() {
        let a = auth();
        assert_eq!(a.password("9999999999:k2:x", 1), Err(Refusal::UnknownKey));
        assert_eq!(a.password("soon:k1", 1), Err(Refusal::Malformed));
        assert_eq!(a.password("9999999999", 1), Err(Refusal::Malformed));
        assert_eq!(a.password(&"9".repeat(200), 1), Err(Refusal::Malformed));
    }

    #[test]
    fn a_revoked_credential_is_refused_and_forgotten_once_expired() {
        let a = auth();
        let c = a.issue("k1", 60, 1_000).expect("known key");
        let other = a.issue("k1", 60, 1_000).expect("known key");
        assert_eq!(
            a.revoke("k2", &c.username, 1_000),
            Err(Some(Refusal::UnknownKey))
        );
        assert_eq!(a.revoke("k1", &c.username, 1_000), Ok(()));
        assert_eq!(a.password(&c.username, 1_001), Err(Refusal::Revoked));
        assert!(a.password(&other.username, 1_001).is_ok(), "only that one");
        assert_eq!(a.revoked_count(1_001), 1);
        assert_eq!(a.revoked_count(1_060), 0, "dropped when it expires");
    }

    #[test]
    fn the_revoked_set_is_bounded() {
        let a = auth();
        for i in 0..MAX_REVOKED {
            assert_eq!(a.revoke("k1", &format!("2000:k1:{i}"), 1_000), Ok(()));
        }
        assert_eq!(a.revoke("k1", "2000:k1:one-more", 1_000), Err(None));
        // Once the first ones expire there is room again.
        assert_eq!(a.revoke("k1", "3000:k1:later", 2_000), Ok(()));
    }
}
