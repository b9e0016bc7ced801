//! Inputs refused at the node's edges (gossip, relay, media, HTTP).
//!
//! Each refusal is counted in `trackmesh_rejected_total{port,reason}` and may be logged, but at
//! most once per source per minute and ten lines a minute per port, so a flood costs the sender
//! its packets and the operator a handful of log lines. Reasons are fixed strings chosen by the
//! code, never text from the input, so the number of series stays bounded and no log line echoes
//! what an attacker sent.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, Opts};

/// The port an input came in on: the `port` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Port {
    /// The cluster's gossip UDP port.
    Gossip,
    /// The QUIC relay port between nodes.
    Relay,
    /// The WebRTC media UDP port.
    Media,
    /// The HTTP API port.
    Http,
}

impl Port {
    /// The `port` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Port::Gossip => "gossip",
            Port::Relay => "relay",
            Port::Media => "media",
            Port::Http => "http",
        }
    }
}

/// One log line per source per this long.
const PER_SOURCE: Duration = Duration::from_secs(60);
/// Lines per port per window, whatever the number of sources (spoofed sources are free); a
/// budget per port, so a flood on one port does not silence another.
const LINES_PER_WINDOW: u32 = 10;
/// Sources remembered at once; past this the oldest are forgotten (which can only cost a line).
const MAX_SOURCES: usize = 4096;

/// The refusal counter and its log-line limiters, shared by every edge of the node.
pub struct Rejects {
    counter: IntCounterVec,
    log: [Mutex<LogLimiter>; 4],
}

struct LogLimiter {
    last: HashMap<IpAddr, Instant>,
    window_start: Option<Instant>,
    lines_in_window: u32,
}

impl LogLimiter {
    fn allow(&mut self, source: IpAddr, now: Instant) -> bool {
        if self
            .window_start
            .is_none_or(|s| now.saturating_duration_since(s) >= PER_SOURCE)
        {
            self.window_start = Some(now);
            self.lines_in_window = 0;
        }
        if self.lines_in_window >= LINES_PER_WINDOW {
            return false;
        }
        if let Some(t) = self.last.get(&source)
            && now.saturating_duration_since(*t) < PER_SOURCE
        {
            return false;
        }
        if self.last.len() >= MAX_SOURCES {
            self.last
                .retain(|_, t| now.saturating_duration_since(*t) < PER_SOURCE);
            if self.last.len() >= MAX_SOURCES {
                self.last.clear();
            }
        }
        self.last.insert(source, now);
        self.lines_in_window += 1;
        true
    }
}

impl Rejects {
    /// The counter, unregistered: the caller registers [`Rejects::counter`] with its registry.
    pub fn new() -> prometheus::Result<Rejects> {
        let counter = IntCounterVec::new(
            Opts::new(
                "trackmesh_rejected_total",
                "Inputs refused at the node's edges, by port and reason.",
            ),
            &["port", "reason"],
        )?;
        Ok(Rejects {
            counter,
            log: std::array::from_fn(|_| {
                Mutex::new(LogLimiter {
                    last: HashMap::new(),
                    window_start: None,
                    lines_in_window: 0,
                })
            }),
        })
    }

    /// The counter, for registering with the node's metrics registry.
    pub fn counter(&self) -> &IntCounterVec {
        &self.counter
    }

    /// Counts a refusal and says whether it may be logged now. Callers log only when this is true,
    /// and never with the input's content or any secret:
    ///
    /// ```ignore
    /// if rejects.reject(Port::Gossip, "bad_seal", from.ip()) {
    ///     tracing::warn!(%from, "gossip datagram failed authentication (further ones from this source are counted, not logged, for a minute)");
    /// }
    /// ```
    pub fn reject(&self, port: Port, reason: &'static str, source: IpAddr) -> bool {
        self.count(port, reason);
        let mut log = self.log[port as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        log.allow(source, Instant::now())
    }

    /// Counts a refusal that is never logged.
    pub fn count(&self, port: Port, reason: &'static str) {
        if let Ok(c) = self
            .counter
            .get_metric_with_label_values(&[port.as_str(), reason])
        {
            c.inc();
        }
    }

    /// The count for one port and reason (tests and views).
    pub fn get(&self, port: Port, reason: &'static str) -> u64 {
        self.counter
            .get_metric_with_label_values(&[port.as_str(), reason])
            .map(|c| c.get())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_source_per_minute_and_few_in_all() {
        let r = Rejects::new().expect("metric");
        let a: IpAddr = [127, 0, 0, 1].into();
        let mut lines = 0;
        for _ in 0..10_000 {
            lines += usize::from(r.reject(Port::Gossip, "bad_seal", a));
        }
        assert_eq!(lines, 1);
        assert_eq!(r.get(Port::Gossip, "bad_seal"), 10_000);
        // Many sources: still only a few lines.
        let mut lines = 0;
        for i in 0..10_000u32 {
            lines += usize::from(r.reject(Port::Media, "junk", IpAddr::from(i.to_be_bytes())));
        }
        assert!(lines <= LINES_PER_WINDOW as usize, "{lines}");
        // A flood on one port leaves another port its own budget.
        assert!(r.reject(Port::Http, "bad_request", [192, 0, 2, 1].into()));
    }

    #[test]
    fn a_source_is_heard_again_after_a_minute() {
        let mut l = LogLimiter {
            last: HashMap::new(),
            window_start: None,
            lines_in_window: 0,
        };
        let a: IpAddr = [10, 0, 0, 1].into();
        let t = Instant::now();
        assert!(l.allow(a, t));
        assert!(!l.allow(a, t + Duration::from_secs(59)));
        assert!(l.allow(a, t + Duration::from_secs(61)));
    }
}
