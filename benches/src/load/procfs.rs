//! What the generator reads about a node process: CPU time and RSS from `/proc`, counters from
//! its `/metrics` endpoint.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use serde::Serialize;

/// Per-request timeout of a `/metrics` scrape.
const METRICS_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the lines of a `/metrics` answer that are parsed.
const MAX_METRIC_LINES: usize = 10_000;

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`, default 100).
pub fn clk_tck() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .filter(|t| *t > 0)
            .unwrap_or(100)
    })
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("malformed /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15 (1-based).
    let utime: u64 = f.get(11).ok_or_else(|| anyhow!("no utime"))?.parse()?;
    let stime: u64 = f.get(12).ok_or_else(|| anyhow!("no stime"))?.parse()?;
    Ok(utime + stime)
}

/// Resident set size of a process, in KB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?;
    line.split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("malformed VmRSS line {line:?}"))?
        .parse()
        .context("VmRSS value")
}

/// Prometheus text: `name{labels} value` → value, keyed by `name{labels}` as written.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .take(MAX_METRIC_LINES)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.trim().rsplit_once(' ')?;
            Some((k.trim().to_string(), v.parse::<f64>().ok()?))
        })
        .collect()
}

/// One look at a node.
#[derive(Clone, Debug)]
pub struct NodeSample {
    pub at: Instant,
    pub cpu_ticks: u64,
    pub rss_kb: u64,
    pub metrics: BTreeMap<String, f64>,
}

impl NodeSample {
    pub fn metric(&self, key: &str) -> f64 {
        self.metrics.get(key).copied().unwrap_or(0.0)
    }
    pub fn rtp_out(&self) -> f64 {
        self.metric("trackmesh_rtp_packets_total{direction=\"out\"}")
    }
    pub fn rtp_in(&self) -> f64 {
        self.metric("trackmesh_rtp_packets_total{direction=\"in\"}")
    }
    pub fn frames_forwarded(&self) -> f64 {
        self.metric("trackmesh_frames_forwarded_total")
    }
    /// `trackmesh_packets_dropped_total` per reason.
    pub fn dropped(&self) -> BTreeMap<String, f64> {
        self.labelled("trackmesh_packets_dropped_total{reason=\"")
    }
    /// `trackmesh_sessions` per state.
    pub fn sessions(&self) -> BTreeMap<String, f64> {
        self.labelled("trackmesh_sessions{state=\"")
    }
    fn labelled(&self, prefix: &str) -> BTreeMap<String, f64> {
        self.metrics
            .iter()
            .filter_map(|(k, v)| {
                let label = k.strip_prefix(prefix)?.strip_suffix("\"}")?;
                Some((label.to_string(), *v))
            })
            .collect()
    }
}

/// Reads CPU, RSS and metrics of one node process (or of any server process: then without
/// metrics).
#[derive(Clone, Debug)]
pub struct NodeProbe {
    pub name: String,
    pub pid: u32,
    metrics_url: Option<String>,
    http: reqwest::Client,
}

impl NodeProbe {
    pub fn new(name: &str, node: &trackmesh_tests::TestNode) -> anyhow::Result<NodeProbe> {
        NodeProbe::for_pid(
            name,
            node.pid(),
            Some(format!("{}/metrics", node.http_url())),
        )
    }

    /// A probe of process `pid`; `metrics_url` is a trackmesh `/metrics` to scrape, if any.
    pub fn for_pid(name: &str, pid: u32, metrics_url: Option<String>) -> anyhow::Result<NodeProbe> {
        let http = reqwest::Client::builder()
            .timeout(METRICS_TIMEOUT)
            .no_proxy()
            .build()
            .context("building the metrics HTTP client")?;
        Ok(NodeProbe {
            name: name.to_string(),
            pid,
            metrics_url,
            http,
        })
    }

    pub fn has_metrics(&self) -> bool {
        self.metrics_url.is_some()
    }

    /// The scraped counters; empty without a metrics URL.
    pub async fn metrics(&self) -> anyhow::Result<BTreeMap<String, f64>> {
        let Some(url) = &self.metrics_url else {
            return Ok(BTreeMap::new());
        };
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let text = resp.text().await.context("reading /metrics")?;
        Ok(parse_metrics(&text))
    }

    pub async fn sample(&self) -> anyhow::Result<NodeSample> {
        let metrics = self.metrics().await?;
        Ok(NodeSample {
            at: Instant::now(),
            cpu_ticks: cpu_ticks(self.pid)?,
            rss_kb: rss_kb(self.pid)?,
            metrics,
        })
    }
}

const RELAY_OUT: &str = "trackmesh_relay_frames_total{direction=\"out\"}";
const RELAY_IN: &str = "trackmesh_relay_frames_total{direction=\"in\"}";

/// What one node did between two samples.
#[derive(Clone, Debug, Serialize, Default)]
pub struct NodeFigures {
    pub name: String,
    pub window_s: f64,
    /// RTP+RTCP datagrams sent per second (Δ rtp out / window).
    pub forwarded_pkts_per_s: f64,
    pub received_pkts_per_s: f64,
    pub frames_forwarded_per_s: f64,
    /// Frames sent to / received from other nodes over the relay, per second.
    pub relay_frames_out_per_s: f64,
    pub relay_frames_in_per_s: f64,
    /// Node CPU (user + system) as a percentage of one core.
    pub cpu_percent_of_core: f64,
    /// Δ CPU seconds / Δ rtp out × 1e6.
    pub cpu_s_per_million_pkts: Option<f64>,
    /// Δ rtp out / Δ CPU seconds.
    pub pkts_per_s_per_core: Option<f64>,
    pub rss_before_mb: f64,
    pub rss_after_mb: f64,
    /// Dropped packets per reason during the window.
    pub dropped: BTreeMap<String, f64>,
    /// `trackmesh_sessions` per state at the end of the window.
    pub sessions: BTreeMap<String, f64>,
}

impl NodeFigures {
    pub fn between(name: &str, a: &NodeSample, b: &NodeSample) -> NodeFigures {
        let window = b.at.saturating_duration_since(a.at).as_secs_f64().max(1e-6);
        let cpu_s = b.cpu_ticks.saturating_sub(a.cpu_ticks) as f64 / clk_tck() as f64;
        let out = (b.rtp_out() - a.rtp_out()).max(0.0);
        let da = a.dropped();
        let dropped = b
            .dropped()
            .into_iter()
            .map(|(k, v)| {
                let before = da.get(&k).copied().unwrap_or(0.0);
                (k, (v - before).max(0.0))
            })
            .collect();
        NodeFigures {
            name: name.to_string(),
            window_s: round2(window),
            forwarded_pkts_per_s: round2(out / window),
            received_pkts_per_s: round2((b.rtp_in() - a.rtp_in()).max(0.0) / window),
            frames_forwarded_per_s: round2(
                (b.frames_forwarded() - a.frames_forwarded()).max(0.0) / window,
            ),
            relay_frames_out_per_s: round2(
                (b.metric(RELAY_OUT) - a.metric(RELAY_OUT)).max(0.0) / window,
            ),
            relay_frames_in_per_s: round2(
                (b.metric(RELAY_IN) - a.metric(RELAY_IN)).max(0.0) / window,
            ),
            cpu_percent_of_core: round2(100.0 * cpu_s / window),
            cpu_s_per_million_pkts: (out > 0.0).then(|| round4(cpu_s / out * 1e6)),
            pkts_per_s_per_core: (cpu_s > 0.0).then(|| round2(out / cpu_s)),
            rss_before_mb: round2(a.rss_kb as f64 / 1024.0),
            rss_after_mb: round2(b.rss_kb as f64 / 1024.0),
            dropped,
            sessions: b.sessions(),
        }
    }
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// Lines of a node log that look like trouble (panics, errors, warnings), at most `max`.
pub fn log_trouble(log: &str, max: usize) -> (usize, Vec<String>) {
    let mut count = 0;
    let mut first = Vec::new();
    for line in log.lines() {
        let l = line.to_ascii_lowercase();
        if l.contains("panicked") || l.contains(" error ") || l.contains(" warn ") {
            count += 1;
            if first.len() < max {
                first.push(line.chars().take(300).collect());
            }
        }
    }
    (count, first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let m = parse_metrics(
            "# HELP x\n# TYPE x counter\ntrackmesh_rtp_packets_total{direction=\"out\"} 42\n\
             trackmesh_packets_dropped_total{reason=\"send_buffer\"} 3\n\
             trackmesh_sessions{state=\"connected\"} 7\nbroken line\n",
        );
        let s = NodeSample {
            at: Instant::now(),
            cpu_ticks: 0,
            rss_kb: 0,
            metrics: m,
        };
        assert_eq!(s.rtp_out(), 42.0);
        assert_eq!(s.dropped().get("send_buffer"), Some(&3.0));
        assert_eq!(s.sessions().get("connected"), Some(&7.0));
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(rss_kb(pid).expect("rss") > 0);
        cpu_ticks(pid).expect("cpu");
        assert!(clk_tck() > 0);
    }
}

/// Machine-wide counters: CPU jiffies and the kernel's UDP counters.
#[derive(Clone, Debug, Default)]
pub struct MachineSample {
    /// (total, idle + iowait) jiffies of all CPUs.
    pub cpu: Option<(u64, u64)>,
    /// `Udp:` fields of `/proc/net/snmp` (InErrors, RcvbufErrors, SndbufErrors...).
    pub udp: BTreeMap<String, u64>,
}

impl MachineSample {
    pub fn now() -> MachineSample {
        let cpu = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            let v: Vec<u64> = s
                .lines()
                .next()?
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
            Some((v.iter().sum(), idle))
        });
        let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
        let udp_lines: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
        let udp = match udp_lines.as_slice() {
            [names, values, ..] => names
                .split_whitespace()
                .skip(1)
                .zip(values.split_whitespace().skip(1))
                .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
                .collect(),
            _ => BTreeMap::new(),
        };
        MachineSample { cpu, udp }
    }
}

/// What the whole machine did during a window.
#[derive(Clone, Debug, Serialize, Default)]
pub struct MachineFigures {
    /// Busy share of all CPUs (100 = every core busy).
    pub busy_percent: Option<f64>,
    /// Kernel UDP counters during the window (datagrams dropped on full receive or send
    /// buffers, on any socket of the machine: node or clients).
    pub udp_rcvbuf_errors: u64,
    pub udp_sndbuf_errors: u64,
    pub udp_in_errors: u64,
}

impl MachineFigures {
    pub fn between(a: &MachineSample, b: &MachineSample) -> MachineFigures {
        let busy = match (a.cpu, b.cpu) {
            (Some((t0, i0)), Some((t1, i1))) if t1 > t0 => Some(round2(
                100.0 * (1.0 - i1.saturating_sub(i0) as f64 / (t1 - t0) as f64),
            )),
            _ => None,
        };
        let d = |k: &str| {
            b.udp
                .get(k)
                .copied()
                .unwrap_or(0)
                .saturating_sub(a.udp.get(k).copied().unwrap_or(0))
        };
        MachineFigures {
            busy_percent: busy,
            udp_rcvbuf_errors: d("RcvbufErrors"),
            udp_sndbuf_errors: d("SndbufErrors"),
            udp_in_errors: d("InErrors"),
        }
    }
}
