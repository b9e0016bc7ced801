//! Limits on creating sessions: a rate per client IP (checked before the bearer, so guessing
//! secrets is slow too), a rate per app, and a quota of live sessions per app, so one app or one
//! address cannot take the node's `--max-sessions` from everyone else.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::error::ApiError;
use crate::http::ClientKey;

/// Client addresses remembered at once; past this, addresses idle long enough to have a full
/// budget again are forgotten (which changes nobody's answer).
const MAX_TRACKED_IPS: usize = 50_000;

pub struct SessionLimits {
    per_ip: DefaultKeyedRateLimiter<ClientKey>,
    per_app: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    ip_rate: u32,
    app_rate: u32,
    started: std::time::Instant,
    /// The second (since `started`) of the last sweep of the per-address map.
    last_prune: AtomicU64,
    /// Live sessions one app may hold on this node.
    pub per_app_quota: usize,
}

fn quota(per_second: u32) -> Quota {
    // The burst equals one second's worth: a client may create its sessions at once, then waits.
    let n = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(n).allow_burst(n)
}

impl SessionLimits {
    pub fn new(ip_rate: u32, app_rate: u32, per_app_quota: usize) -> SessionLimits {
        SessionLimits {
            per_ip: DefaultKeyedRateLimiter::dashmap(quota(ip_rate)),
            per_app: DefaultKeyedRateLimiter::dashmap(quota(app_rate)),
            clock: DefaultClock::default(),
            ip_rate,
            app_rate,
            started: std::time::Instant::now(),
            last_prune: AtomicU64::new(u64::MAX),
            per_app_quota,
        }
    }

    fn too_many(&self, what: String, wait: Duration) -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", what)
            .retry_after(wait.as_secs_f64().ceil() as u64)
    }

    /// Before the bearer is checked: the address's budget. A client is counted as the connection
    /// caps count it ([`ClientKey`]): an IPv4 address (also when it arrives IPv4-mapped on a
    /// dual-stack listener), or an IPv6 /64 (one host is handed a whole /64).
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), ApiError> {
        let key = ClientKey::of(ip);
        if self.per_ip.len() >= MAX_TRACKED_IPS {
            // At most once a second: the sweep walks the whole map.
            let now = self.started.elapsed().as_secs();
            if self.last_prune.swap(now, Ordering::Relaxed) != now {
                self.per_ip.retain_recent();
            }
        }
        self.per_ip.check_key(&key).map_err(|not_until| {
            self.too_many(
                format!(
                    "more than {} new sessions per second from this address",
                    self.ip_rate
                ),
                not_until.wait_time_from(self.clock.now()),
            )
        })
    }

    /// After the bearer is checked (so only configured apps are keys): the app's budget.
    pub fn check_app(&self, app: &str) -> Result<(), ApiError> {
        self.per_app
            .check_key(&app.to_string())
            .map_err(|not_until| {
                self.too_many(
                    format!(
                        "more than {} new sessions per second for this app",
                        self.app_rate
                    ),
                    not_until.wait_time_from(self.clock.now()),
                )
            })
    }

    /// The refusal when an app holds its quota of sessions.
    pub fn over_quota(&self) -> ApiError {
        self.too_many(
            format!(
                "this app holds its quota of {} sessions on this node",
                self.per_app_quota
            ),
            Duration::from_secs(5),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_burst_then_waits() {
        let l = SessionLimits::new(3, 100, 10);
        let a: IpAddr = [127, 0, 0, 1].into();
        for _ in 0..3 {
            assert!(l.check_ip(a).is_ok());
        }
        let refused = l.check_ip(a).expect_err("refused");
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.retry_after, Some(1));
        let res = axum::response::IntoResponse::into_response(refused);
        assert_eq!(
            res.headers()
                .get(axum::http::header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        assert!(l.check_ip([127, 0, 0, 2].into()).is_ok(), "another address");
        // One IPv6 /64 is one client.
        let v6 = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
        for i in 0..3 {
            assert!(l.check_ip(v6(i)).is_ok());
        }
        assert!(l.check_ip(v6(99)).is_err(), "the same /64");
        assert!(
            l.check_ip(IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]))
                .is_ok()
        );
    }

    #[test]
    fn ipv4_clients_of_a_dual_stack_listener_have_their_own_budgets() {
        let l = SessionLimits::new(2, 1000, 10);
        let mapped =
            |last: u8| IpAddr::from(std::net::Ipv4Addr::new(192, 0, 2, last).to_ipv6_mapped());
        assert!(l.check_ip(mapped(1)).is_ok() && l.check_ip(mapped(1)).is_ok());
        assert!(
            l.check_ip(mapped(1)).is_err(),
            "one address's budget is spent"
        );
        assert!(
            l.check_ip(mapped(2)).is_ok(),
            "another IPv4 client is not refused"
        );
        assert!(
            l.check_ip(IpAddr::from([192, 0, 2, 1])).is_err(),
            "mapped or not, the same client"
        );
    }

    #[test]
    fn apps_have_their_own_budgets() {
        let l = SessionLimits::new(100, 2, 10);
        assert!(l.check_app("a").is_ok() && l.check_app("a").is_ok());
        assert!(l.check_app("a").is_err());
        assert!(l.check_app("b").is_ok());
    }
}
