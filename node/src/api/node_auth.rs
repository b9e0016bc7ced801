//! The credential a node puts on an API call it forwards to the session's owner.
//!
//! The owner runs a forwarded call as its own only when the credential checks out: an HMAC-SHA256,
//! keyed from the cluster secret, over the method, the path and query, the forwarding node's id, a
//! timestamp and the body's digest. Calls claiming to be forwarded without it are refused, so a
//! client cannot pass itself off as a member, and the timestamp window bounds a replay of a
//! captured call to 30 s either side of its time. During a secret rotation a call carries a MAC under each of the
//! current and the previous secret, and either is accepted, so nodes not yet restarted with the new
//! secret and nodes already restarted without the old one both accept it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::{digest, hmac};

/// The header that names the forwarding node.
pub const FORWARDED_BY: &str = "x-trackmesh-forwarded-by";
/// The header that carries `v1 <unix ms> <hex mac> [<hex mac under the previous secret>]`.
pub const NODE_AUTH: &str = "x-trackmesh-node-auth";

/// How far a forwarded call's timestamp may be from the owner's clock (nodes run NTP).
const WINDOW: Duration = Duration::from_secs(30);

/// Why a call claiming to be forwarded was refused; each is counted under its own reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It claims to be forwarded but carries no credential.
    Missing,
    /// The credential header does not parse.
    Malformed,
    /// Its timestamp is outside the window: a replay or a badly skewed clock.
    Stale,
    /// No MAC matches under the current or the previous secret.
    BadMac,
}

impl Refusal {
    /// The `reason` label in `trackmesh_rejected_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "forward_no_credential",
            Refusal::Malformed => "forward_malformed_credential",
            Refusal::Stale => "forward_stale_credential",
            Refusal::BadMac => "forward_bad_credential",
        }
    }
}

/// The keys for signing and checking forwarded calls, derived from the cluster secrets.
pub struct NodeAuth {
    current: hmac::Key,
    previous: Option<hmac::Key>,
}

fn key(secret: &str) -> hmac::Key {
    let k = digest::digest(
        &digest::SHA256,
        format!("trackmesh api forward v1\0{secret}").as_bytes(),
    );
    hmac::Key::new(hmac::HMAC_SHA256, k.as_ref())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn message(method: &str, path: &str, node: &str, ts: u64, body: &[u8]) -> Vec<u8> {
    let body_digest = digest::digest(&digest::SHA256, body);
    let mut m = Vec::with_capacity(method.len() + path.len() + node.len() + 64);
    for part in [method.as_bytes(), path.as_bytes(), node.as_bytes()] {
        m.extend_from_slice(&(part.len() as u32).to_be_bytes());
        m.extend_from_slice(part);
    }
    m.extend_from_slice(&ts.to_be_bytes());
    m.extend_from_slice(body_digest.as_ref());
    m
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl NodeAuth {
    /// Keys from the cluster secret and, during a rotation, the previous one.
    pub fn new(secret: &str, previous: Option<&str>) -> NodeAuth {
        NodeAuth {
            current: key(secret),
            previous: previous.map(key),
        }
    }

    /// The value of the [`NODE_AUTH`] header for a call this node forwards.
    pub fn sign(&self, method: &str, path: &str, node: &str, body: &[u8]) -> String {
        self.sign_at(method, path, node, body, now_ms())
    }

    fn sign_at(&self, method: &str, path: &str, node: &str, body: &[u8], ts: u64) -> String {
        let msg = message(method, path, node, ts, body);
        let mut out = format!("v1 {ts}");
        for k in std::iter::once(&self.current).chain(self.previous.as_ref()) {
            out.push(' ');
            out.push_str(&hex(hmac::sign(k, &msg).as_ref()));
        }
        out
    }

    /// Checks the credential of a call that says it was forwarded by `node`.
    pub fn verify(
        &self,
        method: &str,
        path: &str,
        node: &str,
        body: &[u8],
        credential: Option<&str>,
    ) -> Result<(), Refusal> {
        self.verify_at(method, path, node, body, credential, now_ms())
    }

    fn verify_at(
        &self,
        method: &str,
        path: &str,
        node: &str,
        body: &[u8],
        credential: Option<&str>,
        now: u64,
    ) -> Result<(), Refusal> {
        let (ts, macs) = parse(credential, now)?;
        let msg = message(method, path, node, ts, body);
        let ok = std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .any(|k| macs.iter().any(|mac| hmac::verify(k, &msg, mac).is_ok()));
        if ok { Ok(()) } else { Err(Refusal::BadMac) }
    }

    /// What can be checked before the body is read: the credential's form and its timestamp.
    pub fn precheck(&self, credential: Option<&str>) -> Result<(), Refusal> {
        parse(credential, now_ms()).map(|_| ())
    }
}

/// The timestamp and MACs of a credential within the time window.
fn parse(credential: Option<&str>, now: u64) -> Result<(u64, Vec<Vec<u8>>), Refusal> {
    let credential = credential.ok_or(Refusal::Missing)?;
    let mut parts = credential.split(' ');
    let (Some("v1"), Some(ts)) = (parts.next(), parts.next()) else {
        return Err(Refusal::Malformed);
    };
    let ts: u64 = ts.parse().map_err(|_| Refusal::Malformed)?;
    let macs: Vec<Vec<u8>> = parts
        .take(3)
        .map(|m| unhex(m).ok_or(Refusal::Malformed))
        .collect::<Result<_, _>>()?;
    if macs.is_empty() || macs.len() > 2 {
        return Err(Refusal::Malformed);
    }
    if now.abs_diff(ts) > WINDOW.as_millis() as u64 {
        return Err(Refusal::Stale);
    }
    Ok((ts, macs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_call_verifies_and_any_change_does_not() {
        let a = NodeAuth::new("s1", None);
        const PATH: &str = "/v1/apps/x/sessions/y/tracks/new";
        let c = a.sign_at("POST", PATH, "n1", b"{}", 1000);
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a str,
            &'a [u8],
            u64,
            Result<(), Refusal>,
        );
        let cases: [Case; 6] = [
            ("POST", PATH, "n1", b"{}", 1000, Ok(())),
            ("PUT", PATH, "n1", b"{}", 1000, Err(Refusal::BadMac)),
            (
                "POST",
                "/v1/apps/x/sessions/z/tracks/new",
                "n1",
                b"{}",
                1000,
                Err(Refusal::BadMac),
            ),
            ("POST", PATH, "n2", b"{}", 1000, Err(Refusal::BadMac)),
            ("POST", PATH, "n1", b"{ }", 1000, Err(Refusal::BadMac)),
            ("POST", PATH, "n1", b"{}", 40_000, Err(Refusal::Stale)),
        ];
        for (method, path, node, body, now, want) in cases {
            let got = a.verify_at(method, path, node, body, Some(&c), now);
            assert_eq!(got, want, "{method} {path} {node} {body:?} at {now}");
        }
    }

    #[test]
    fn other_secrets_and_garbage_are_refused() {
        let a = NodeAuth::new("s1", None);
        let b = NodeAuth::new("s2", None);
        let c = b.sign_at("GET", "/p", "n", b"", 5);
        assert_eq!(
            a.verify_at("GET", "/p", "n", b"", Some(&c), 5),
            Err(Refusal::BadMac)
        );
        for junk in [
            "",
            "v1",
            "v1 5",
            "v1 x y",
            "v2 5 00",
            "v1 5 zz",
            "v1 5 00 00 00",
        ] {
            assert!(
                a.verify_at("GET", "/p", "n", b"", Some(junk), 5).is_err(),
                "{junk}"
            );
        }
        assert_eq!(
            a.verify_at("GET", "/p", "n", b"", None, 5),
            Err(Refusal::Missing)
        );
    }

    #[test]
    fn every_step_of_a_rotation_accepts_every_other() {
        let old = NodeAuth::new("old", None);
        let rolling = NodeAuth::new("new", Some("old"));
        let new = NodeAuth::new("new", None);
        for from in [&old, &rolling, &new] {
            for to in [&old, &rolling, &new] {
                // Only old-only and new-only never meet in a one-node-at-a-time roll.
                if std::ptr::eq(from, &old) && std::ptr::eq(to, &new)
                    || std::ptr::eq(from, &new) && std::ptr::eq(to, &old)
                {
                    continue;
                }
                let c = from.sign_at("GET", "/p", "n", b"", 5);
                assert_eq!(to.verify_at("GET", "/p", "n", b"", Some(&c), 5), Ok(()));
            }
        }
        let c = old.sign_at("GET", "/p", "n", b"", 5);
        assert!(new.verify_at("GET", "/p", "n", b"", Some(&c), 5).is_err());
    }
}
