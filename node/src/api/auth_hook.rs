//! The permission hook (`--auth-hook URL`): before a room ticket is issued and when a WebSocket
//! joins, the node POSTs `{app, room, user, direction}` and takes 200 as allow, 401/403 as deny.
//! Anything else (down, slow past `--auth-hook-timeout`, another status) is deny: it fails
//! closed, counted in `trackmesh_auth_hook_total{result}`. Verdicts are cached briefly
//! ([`CACHE_TTL`], at most [`CACHE_MAX`] entries); failures are not cached.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, Opts};
use serde::Serialize;

/// How long an allow or a deny is reused.
pub const CACHE_TTL: Duration = Duration::from_secs(5);
/// Verdicts cached at most; past it the cache is emptied (misses only cost a hook call).
pub const CACHE_MAX: usize = 10_000;
/// At most one warning about a failing hook this often (each failure is counted all the same).
const WARN_EVERY: Duration = Duration::from_secs(10);
/// The most of a failure's cause a warning quotes.
const MAX_CAUSE: usize = 200;

/// What the hook is asked.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct HookQuery {
    /// The app.
    pub app: String,
    /// The room.
    pub room: String,
    /// The user, when known.
    pub user: Option<String>,
    /// `up`, `down` or `both` for a ticket; the role's direction for a join.
    pub direction: String,
}

/// The hook's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 200.
    Allow,
    /// 401 or 403.
    Deny,
    /// No answer in time, or no usable one: deny.
    Failed,
}

impl Verdict {
    /// Whether it lets the call through.
    pub fn allows(self) -> bool {
        self == Verdict::Allow
    }
}

/// The hook client, or none.
pub struct AuthHook {
    url: Option<reqwest::Url>,
    timeout: Duration,
    http: reqwest::Client,
    cache: Mutex<HashMap<HookQuery, (bool, Instant)>>,
    counter: Option<IntCounterVec>,
    /// When a failure was last logged, and failures since.
    warned: Mutex<(Option<Instant>, u64)>,
}

impl AuthHook {
    /// A hook at `url` (none: every query is allowed without a call).
    pub fn new(url: Option<&str>, timeout: Duration) -> AuthHook {
        let counter = IntCounterVec::new(
            Opts::new(
                "trackmesh_auth_hook_total",
                "Permission hook answers by result (allow, deny, timeout, error, cached)",
            ),
            &["result"],
        )
        .ok();
        AuthHook {
            url: url.and_then(|u| reqwest::Url::parse(u).ok()),
            timeout,
            http: reqwest::Client::builder()
                .no_proxy()
                // Only the hook's own answer counts: a redirect (say, to a login page that
                // answers 200) is not one.
                .redirect(reqwest::redirect::Policy::none())
                .timeout(timeout)
                .build()
                .unwrap_or_default(),
            cache: Mutex::new(HashMap::new()),
            counter,
            warned: Mutex::new((None, 0)),
        }
    }

    /// Its counter, for `/metrics`.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        self.counter
            .iter()
            .map(|c| Box::new(c.clone()) as Box<dyn prometheus::core::Collector>)
            .collect()
    }

    fn count(&self, result: &str) {
        if let Some(c) = &self.counter {
            c.with_label_values(&[result]).inc();
        }
    }

    /// Whether a hook is configured.
    pub fn enabled(&self) -> bool {
        self.url.is_some()
    }

    /// Asks the hook (or its cache) about `q`.
    pub async fn check(&self, q: &HookQuery) -> Verdict {
        let Some(url) = &self.url else {
            return Verdict::Allow;
        };
        let now = Instant::now();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((allow, until)) = cache.get(q)
                && *until > now
            {
                self.count("cached");
                return if *allow {
                    Verdict::Allow
                } else {
                    Verdict::Deny
                };
            }
        }
        let sent = tokio::time::timeout(self.timeout, self.http.post(url.clone()).json(q).send());
        let (verdict, label, cause) = match sent.await {
            Err(_) => (Verdict::Failed, "timeout", String::new()),
            Ok(Err(e)) if e.is_timeout() => (Verdict::Failed, "timeout", String::new()),
            Ok(Err(e)) => (Verdict::Failed, "error", error_chain(&e)),
            Ok(Ok(res)) => match res.status().as_u16() {
                200 => (Verdict::Allow, "allow", String::new()),
                401 | 403 => (Verdict::Deny, "deny", String::new()),
                other => (Verdict::Failed, "error", format!("answered {other}")),
            },
        };
        self.count(label);
        if verdict != Verdict::Failed {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= CACHE_MAX {
                cache.retain(|_, (_, until)| *until > now);
                if cache.len() >= CACHE_MAX {
                    cache.clear();
                }
            }
            cache.insert(q.clone(), (verdict.allows(), now + CACHE_TTL));
        }
        if verdict == Verdict::Failed {
            self.warn_failed(label, &cause, now);
        }
        verdict
    }

    /// Logs a failure, at most once per [`WARN_EVERY`] (with how many there were since).
    fn warn_failed(&self, label: &str, cause: &str, now: Instant) {
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        warned.1 += 1;
        if warned
            .0
            .is_some_and(|at| now.saturating_duration_since(at) < WARN_EVERY)
        {
            return;
        }
        let failures = std::mem::take(&mut warned.1);
        warned.0 = Some(now);
        drop(warned);
        let cause: String = cause.chars().take(MAX_CAUSE).collect();
        tracing::warn!(
            result = label,
            %cause,
            failures,
            "the permission hook did not answer in time or usably: denied (fail closed)"
        );
    }
}

/// An error with its causes, as one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    // Bounded: a cause chain is a few links long.
    for _ in 0..8 {
        let Some(s) = source else { break };
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The user claim a trusted fronting proxy sets: `X-User-Claim: {"userid", "clientid"}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct UserClaim {
    /// The user id.
    pub userid: String,
    /// The client id, if the proxy names one.
    #[serde(default)]
    pub clientid: Option<String>,
}

/// The header's name.
pub const USER_CLAIM: &str = "x-user-claim";

/// Reads the claim header when `trusted` (`--trust-user-claim`); ignored otherwise. An
/// unreadable or oversized claim is none.
pub fn user_claim(headers: &axum::http::HeaderMap, trusted: bool) -> Option<UserClaim> {
    if !trusted {
        return None;
    }
    let v = headers.get(USER_CLAIM)?.as_bytes();
    if v.len() > 1024 {
        return None;
    }
    serde_json::from_slice::<UserClaim>(v)
        .ok()
        .filter(|c| !c.userid.is_empty() && c.userid.len() <= 256)
}
