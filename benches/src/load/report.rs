//! A scenario's result: one JSON object (`--json`) or a text table.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};

use super::procfs::{MachineFigures, NodeFigures};
use super::stats::Dist;

/// Where and when a report was made.
#[derive(Clone, Debug, Serialize, Default)]
pub struct Meta {
    pub date_utc: String,
    pub commit: String,
    pub command_line: String,
    pub node_binary: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_mb: u64,
    pub kernel: String,
}

impl Meta {
    pub fn collect() -> Meta {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let memory_mb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb / 1024);
        let commit = Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Meta {
            date_utc: utc_now(),
            commit,
            command_line: std::env::args().collect::<Vec<_>>().join(" "),
            node_binary: trackmesh_tests::node::node_binary().display().to_string(),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            memory_mb,
            kernel,
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` of now.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Figures of a set of subscribers over the current window.
#[derive(Clone, Debug, Serialize, Default)]
pub struct GroupFigures {
    pub name: String,
    pub subscribers: usize,
    /// Subscribers that received frames on every track during the window.
    pub receiving: usize,
    pub frames_received: u64,
    pub keyframes_received: u64,
    /// Frames missing in the sequence of a track between two received frames.
    pub frames_lost: u64,
    pub frames_lost_audio: u64,
    pub frames_lost_video: u64,
    pub loss_percent: f64,
    pub frames_reordered: u64,
    /// Video frames a decoder could not decode (their reference frame never came): corrupt or
    /// frozen pictures, from the test kit's decoder model.
    pub frames_broken_video: u64,
    pub frames_unstamped: u64,
    /// Frames skipped between a track's first frame and the next (cached keyframe, then live).
    pub frames_skipped_at_join: u64,
    pub latency: Option<Dist>,
    pub latency_audio: Option<Dist>,
    pub latency_video: Option<Dist>,
    /// Start of tracks/new → first frame (any track).
    pub pull_to_first_frame: Option<Dist>,
    /// Start of tracks/new → first keyframe (video tracks).
    pub pull_to_first_keyframe: Option<Dist>,
    /// Start of sessions/new → ICE + DTLS connected.
    pub session_setup: Option<Dist>,
    /// Age (now − send time) of each track's first received frame: large when the node served
    /// a cached keyframe. Not part of the latency figures.
    pub first_frame_age: Option<Dist>,
    /// Client-side errors (str0m, socket), first few.
    pub client_errors: Vec<String>,
}

/// Trouble seen in a node's log.
#[derive(Clone, Debug, Serialize, Default)]
pub struct NodeLog {
    pub name: String,
    pub trouble_lines: usize,
    pub first: Vec<String>,
    /// The node process had exited when the scenario ended.
    pub exited: bool,
}

/// What a scenario reports.
#[derive(Clone, Debug, Serialize, Default)]
pub struct Report {
    pub scenario: String,
    pub meta: Meta,
    pub params: Value,
    /// Length of the measurement window.
    pub window_s: f64,
    pub nodes: Vec<NodeFigures>,
    /// Node RSS growth per session while the sessions were set up (sum over nodes), KB.
    pub rss_per_session_kb: Option<f64>,
    /// Frames the publishers sent during the window.
    pub frames_sent: u64,
    pub groups: Vec<GroupFigures>,
    /// Sessions that failed to set up or to receive media.
    pub failures: usize,
    pub failure_samples: Vec<String>,
    /// Errors the publishing clients saw (str0m writes, socket), first few.
    pub publisher_errors: Vec<String>,
    /// CPU of the generator process itself, % of one core, during the window.
    pub generator_cpu_percent: f64,
    /// Whole-machine CPU and kernel UDP drop counters during the window.
    pub machine: MachineFigures,
    pub node_logs: Vec<NodeLog>,
    /// Scenario-specific figures.
    pub extra: Map<String, Value>,
}

fn opt(d: &Option<Dist>) -> String {
    d.as_ref().map_or_else(|| "-".into(), Dist::short)
}

fn num(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{v}"))
}

impl Report {
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    pub fn text(&self) -> String {
        let mut o = String::new();
        let m = &self.meta;
        let _ = writeln!(o, "trackmesh-load {}", self.scenario);
        let _ = writeln!(
            o,
            "  {} · commit {} · {} × {} · {} MB · kernel {}",
            m.date_utc, m.commit, m.cpus, m.cpu_model, m.memory_mb, m.kernel
        );
        let _ = writeln!(o, "  command: {}", m.command_line);
        let _ = writeln!(o, "  node binary: {}", m.node_binary);
        let _ = writeln!(o, "  params: {}", self.params);
        let _ = writeln!(
            o,
            "  window {:.1} s · frames sent {} · failures {} · generator CPU {:.1} % of a core",
            self.window_s, self.frames_sent, self.failures, self.generator_cpu_percent
        );
        let mf = &self.machine;
        let _ = writeln!(
            o,
            "  machine busy {} % of all CPUs · kernel UDP drops: rcvbuf {} sndbuf {} in-errors {}",
            num(mf.busy_percent),
            mf.udp_rcvbuf_errors,
            mf.udp_sndbuf_errors,
            mf.udp_in_errors
        );
        if let Some(r) = self.rss_per_session_kb {
            let _ = writeln!(o, "  node RSS per session: {r:.1} KB");
        }
        let _ = writeln!(o);
        // A server that is not a trackmesh node (the whip scenario) has no node table.
        if !self.nodes.is_empty() {
            let _ = writeln!(
                o,
                "{:<8}{:>12}{:>11}{:>8}{:>13}{:>13}{:>9}{:>9}{:>16}  dropped",
                "node",
                "fwd pkt/s",
                "in pkt/s",
                "CPU %",
                "CPU s/Mpkt",
                "pkt/s/core",
                "RSS MB0",
                "RSS MB1",
                "relay fr/s o/i"
            );
            for n in &self.nodes {
                let dropped: Vec<String> = n
                    .dropped
                    .iter()
                    .filter(|(_, v)| **v > 0.0)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let _ = writeln!(
                    o,
                    "{:<8}{:>12.0}{:>11.0}{:>8.1}{:>13}{:>13}{:>9.1}{:>9.1}{:>16}  {}",
                    n.name,
                    n.forwarded_pkts_per_s,
                    n.received_pkts_per_s,
                    n.cpu_percent_of_core,
                    num(n.cpu_s_per_million_pkts),
                    num(n.pkts_per_s_per_core.map(f64::round)),
                    n.rss_before_mb,
                    n.rss_after_mb,
                    format!(
                        "{:.0}/{:.0}",
                        n.relay_frames_out_per_s, n.relay_frames_in_per_s
                    ),
                    if dropped.is_empty() {
                        "0".into()
                    } else {
                        dropped.join(" ")
                    }
                );
            }
        }
        for g in &self.groups {
            let _ = writeln!(o);
            let _ = writeln!(
                o,
                "[{}] subscribers {} · receiving {} · frames {} (key {}) · lost {} ({:.4} %; audio {} video {}) · reordered {} · broken video {} · unstamped {} · skipped at join {}",
                g.name,
                g.subscribers,
                g.receiving,
                g.frames_received,
                g.keyframes_received,
                g.frames_lost,
                g.loss_percent,
                g.frames_lost_audio,
                g.frames_lost_video,
                g.frames_reordered,
                g.frames_broken_video,
                g.frames_unstamped,
                g.frames_skipped_at_join
            );
            let _ = writeln!(o, "  latency           {}", opt(&g.latency));
            let _ = writeln!(o, "  latency audio     {}", opt(&g.latency_audio));
            let _ = writeln!(o, "  latency video     {}", opt(&g.latency_video));
            let _ = writeln!(o, "  pull→first frame  {}", opt(&g.pull_to_first_frame));
            let _ = writeln!(o, "  pull→first key    {}", opt(&g.pull_to_first_keyframe));
            let _ = writeln!(o, "  session set-up    {}", opt(&g.session_setup));
            let _ = writeln!(o, "  first frame age   {}", opt(&g.first_frame_age));
            for e in g.client_errors.iter().take(5) {
                let _ = writeln!(o, "  client error: {e}");
            }
        }
        if !self.extra.is_empty() {
            let _ = writeln!(o);
            for (k, v) in &self.extra {
                let _ = writeln!(o, "{k}: {v}");
            }
        }
        for e in self.publisher_errors.iter().take(10) {
            let _ = writeln!(o, "publisher error: {e}");
        }
        for f in self.failure_samples.iter().take(10) {
            let _ = writeln!(o, "failure: {f}");
        }
        for l in &self.node_logs {
            if l.trouble_lines > 0 || l.exited {
                let _ = writeln!(
                    o,
                    "node {} log: {} error/warn/panic lines{}",
                    l.name,
                    l.trouble_lines,
                    if l.exited { " · PROCESS EXITED" } else { "" }
                );
                for line in &l.first {
                    let _ = writeln!(o, "    {line}");
                }
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_format() {
        let d = utc_now();
        assert_eq!(d.len(), 20, "{d}");
        assert!(d.starts_with("20") && d.ends_with('Z'));
    }
}
