//! The open-file limit. The connection cap protects the node only if it fits under that limit:
//! at 1024 (a common default soft limit) 4096 connections would run it out of descriptors.

use super::Limits;

/// Descriptors kept for everything but HTTP connections: sockets, the engine, logs.
const HEADROOM: u64 = 256;

/// Raises the soft open-file limit to the hard one (as Go's runtime does at start), then lowers
/// `max_connections` if it still does not fit, with a warning.
pub fn fit(limits: Limits) -> Limits {
    match soft_limit() {
        Some(soft) => fit_under(limits, soft),
        None => limits,
    }
}

fn fit_under(mut limits: Limits, soft: u64) -> Limits {
    let budget = soft
        .saturating_sub(HEADROOM + limits.probe_reserve as u64)
        .max(1);
    let budget = usize::try_from(budget).unwrap_or(usize::MAX);
    if limits.max_connections > budget {
        tracing::warn!(
            configured = limits.max_connections,
            open_file_limit = soft,
            using = budget,
            "--http-max-connections does not fit under the open-file limit; lowered (raise LimitNOFILE / ulimit -n)"
        );
        limits.max_connections = budget;
    }
    limits.max_connections_per_ip = limits.max_connections_per_ip.min(limits.max_connections);
    limits
}

/// The soft limit after trying to raise it; None when unlimited or unknown.
#[cfg(target_os = "linux")]
fn soft_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    let soft = lim.current?;
    match lim.maximum {
        Some(hard) if hard > soft => {
            let raised = Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => Some(hard),
                Err(e) => {
                    tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
                    Some(soft)
                }
            }
        }
        _ => Some(soft),
    }
}

#[cfg(not(target_os = "linux"))]
fn soft_limit() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Timeouts;
    use std::time::Duration;

    fn limits(max: usize, per_ip: usize) -> Limits {
        let t = Duration::from_secs(1);
        Limits {
            max_connections: max,
            max_connections_per_ip: per_ip,
            probe_reserve: 16,
            timeouts: Timeouts {
                idle: t,
                header: t,
                body: t,
            },
        }
    }

    #[test]
    fn caps_are_lowered_under_a_small_open_file_limit() {
        let l = fit_under(limits(4096, 256), 1024);
        assert_eq!(l.max_connections, 1024 - 256 - 16);
        assert_eq!(l.max_connections_per_ip, 256);
        let l = fit_under(limits(4096, 4096), 1024);
        assert_eq!(l.max_connections_per_ip, l.max_connections);
        let l = fit_under(limits(4096, 256), 65536);
        assert_eq!(l.max_connections, 4096, "fits: unchanged");
        assert_eq!(
            fit_under(limits(10, 5), 100).max_connections,
            1,
            "never zero"
        );
    }
}
