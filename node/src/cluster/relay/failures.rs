//! Why pulls of remote tracks fail: a typed reason, counted per reason for the metrics and logged
//! at most once per reason per [`LOG_EVERY`] (a client asking again and again for a track no
//! node has must not flood the log).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One log line per reason per this long.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a remote track could not be made available in this node's engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PullError {
    /// The engine task has stopped.
    #[error("the media engine has stopped")]
    EngineStopped,
    /// Gossip knows no live node for the session's tag.
    #[error("no live node holds this session")]
    NoRoute,
    /// The link to the chosen node could not be dialed or handshaken (or failed recently).
    #[error("no relay link to the node")]
    Link,
    /// The node answered that it does not have the track.
    #[error("the node does not have the track")]
    Refused,
    /// The node did not answer the subscription in time (or the link closed meanwhile).
    #[error("no answer to the subscription")]
    NoAnswer,
    /// The engine would not take the relayed track (it is published here).
    #[error("the track is published on this node")]
    PublishedHere,
}

impl PullError {
    /// Every reason, in the order of `RelayFigures::pull_failures`.
    pub const ALL: [PullError; 6] = [
        PullError::EngineStopped,
        PullError::NoRoute,
        PullError::Link,
        PullError::Refused,
        PullError::NoAnswer,
        PullError::PublishedHere,
    ];

    /// The `reason` label: fixed, short, never input text.
    pub fn reason(self) -> &'static str {
        match self {
            PullError::EngineStopped => "engine_stopped",
            PullError::NoRoute => "no_route",
            PullError::Link => "link",
            PullError::Refused => "refused",
            PullError::NoAnswer => "no_answer",
            PullError::PublishedHere => "published_here",
        }
    }

    fn index(self) -> usize {
        PullError::ALL.iter().position(|e| *e == self).unwrap_or(0)
    }
}

/// Failed pulls per reason, and when each reason was last logged.
#[derive(Default)]
pub(crate) struct Failures {
    counts: [AtomicU64; PullError::ALL.len()],
    logged: Mutex<[Option<Instant>; PullError::ALL.len()]>,
}

impl Failures {
    /// Counts a failed pull, and logs it unless its reason was logged recently. Session ids and
    /// track names come from clients: they stay out of the line.
    pub fn note(&self, e: PullError) {
        let i = e.index();
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged[i].is_none_or(|t| now.saturating_duration_since(t) >= LOG_EVERY) {
            logged[i] = Some(now);
            drop(logged);
            tracing::info!(reason = e.reason(), error = %e, "pulling a remote track failed");
        }
    }

    /// `(reason, count)` for every reason.
    pub fn counts(&self) -> [(&'static str, u64); PullError::ALL.len()] {
        PullError::ALL.map(|e| (e.reason(), self.counts[e.index()].load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_is_counted_under_its_own_label() {
        let f = Failures::default();
        f.note(PullError::NoRoute);
        f.note(PullError::NoRoute);
        f.note(PullError::Refused);
        let counts = f.counts();
        let get = |r: &str| counts.iter().find(|(n, _)| *n == r).map(|(_, c)| *c);
        assert_eq!(get("no_route"), Some(2));
        assert_eq!(get("refused"), Some(1));
        assert_eq!(get("link"), Some(0));
        let mut labels: Vec<&str> = counts.iter().map(|(n, _)| *n).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), PullError::ALL.len(), "labels are distinct");
    }
}
