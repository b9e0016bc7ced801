//! `trackmesh-load vs`: one scenario run against two node binaries in alternating runs, in the
//! same minutes, as BENCHMARKS.md compares before and after.
//!
//! On this shared machine one binary's packets per core swing by ±15 % from run to run; a single
//! pair says little. Pairs alternate their order (A B, B A, A B, …) so a drift of the machine's
//! load over the minutes falls on both sides, and the summary gives each side's median and
//! range and the median of the per-pair ratios. The runs themselves are child processes of
//! this binary (`--json`); this module only plans them and reads their reports.

use serde_json::Value;

/// Which binary a run used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// The order of runs for `pairs` pairs: A B, then B A, and so on.
pub fn plan(pairs: usize) -> Vec<(usize, Side)> {
    (0..pairs)
        .flat_map(|p| {
            let order = if p % 2 == 0 {
                [Side::A, Side::B]
            } else {
                [Side::B, Side::A]
            };
            order.map(|s| (p, s))
        })
        .collect()
}

/// The figures of one run that are compared, read from its `--json` report. A figure the
/// report does not have (a scenario without latency) is `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// Forwarded packets per second per core of node CPU, summed over the nodes' packets and
    /// CPU (one node in `fanout`; all nodes in `relay` and `hub`).
    pub pkts_per_core: Option<f64>,
    /// Node RSS growth per session.
    pub rss_per_session_kb: Option<f64>,
    /// p99 one-way latency of the first subscriber group.
    pub latency_p99_ms: Option<f64>,
    /// `relay`: p99 of the latency the relay hop adds to a frame, audio and video.
    pub relay_added_p99_audio_ms: Option<f64>,
    pub relay_added_p99_video_ms: Option<f64>,
    /// Frames lost or decoded broken, over all groups, and failed sessions: a run with any is
    /// flagged, as its CPU figure may not be comparable.
    pub lost_or_broken: u64,
    pub failures: u64,
}

/// Reads a run's figures from its `--json` report.
pub fn figures(report: &Value) -> Figures {
    let mut pkts = 0.0;
    let mut cpu = 0.0;
    for node in report["nodes"].as_array().into_iter().flatten() {
        pkts += node["forwarded_pkts_per_s"].as_f64().unwrap_or(0.0);
        cpu += node["cpu_percent_of_core"].as_f64().unwrap_or(0.0);
    }
    let groups = report["groups"].as_array();
    let count = |key: &str| -> u64 {
        groups
            .into_iter()
            .flatten()
            .map(|g| g[key].as_u64().unwrap_or(0))
            .sum()
    };
    Figures {
        pkts_per_core: (cpu > 0.0).then(|| pkts / (cpu / 100.0)),
        rss_per_session_kb: report["rss_per_session_kb"].as_f64(),
        latency_p99_ms: groups
            .and_then(|g| g.first())
            .and_then(|g| g["latency"]["p99_ms"].as_f64()),
        relay_added_p99_audio_ms: report["extra"]["relay_added_per_frame_audio"]["p99_ms"].as_f64(),
        relay_added_p99_video_ms: report["extra"]["relay_added_per_frame_video"]["p99_ms"].as_f64(),
        lost_or_broken: count("frames_lost") + count("frames_broken_video"),
        failures: report["failures"].as_u64().unwrap_or(0),
    }
}

/// The median of `xs` (the mean of the middle two for an even count); `None` when empty.
pub fn median(xs: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// One figure over all runs: each side's median and range, and the median of B/A per pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub a_median: Option<f64>,
    pub a_range: Option<(f64, f64)>,
    pub b_median: Option<f64>,
    pub b_range: Option<(f64, f64)>,
    /// Median over the pairs where both runs have the figure.
    pub paired_ratio: Option<f64>,
}

/// Summarises one figure, `get`, over `runs` (pair, side, figures).
pub fn summarise(
    runs: &[(usize, Side, Figures)],
    get: impl Fn(&Figures) -> Option<f64>,
) -> Summary {
    let side = |s: Side| -> Vec<f64> {
        runs.iter()
            .filter(|r| r.1 == s)
            .filter_map(|r| get(&r.2))
            .collect()
    };
    let range = |v: &[f64]| -> Option<(f64, f64)> {
        let lo = v.iter().copied().reduce(f64::min)?;
        let hi = v.iter().copied().reduce(f64::max)?;
        Some((lo, hi))
    };
    let (a, b) = (side(Side::A), side(Side::B));
    let pairs = runs.iter().map(|r| r.0).max().map_or(0, |p| p + 1);
    let ratios: Vec<f64> = (0..pairs)
        .filter_map(|p| {
            let of = |s: Side| {
                runs.iter()
                    .find(|r| r.0 == p && r.1 == s)
                    .and_then(|r| get(&r.2))
            };
            let (x, y) = (of(Side::A)?, of(Side::B)?);
            (x != 0.0).then(|| y / x)
        })
        .collect();
    Summary {
        a_median: median(&a),
        a_range: range(&a),
        b_median: median(&b),
        b_range: range(&b),
        paired_ratio: median(&ratios),
    }
}

/// A compared figure: its name, its unit and how it is read.
type Figure = (&'static str, &'static str, fn(&Figures) -> Option<f64>);

/// The figures compared, in the order printed.
const FIGURES: [Figure; 5] = [
    ("pkt/s per core", "", |f| f.pkts_per_core),
    ("RSS per session", " KB", |f| f.rss_per_session_kb),
    ("latency p99", " ms", |f| f.latency_p99_ms),
    ("relay hop p99 audio", " ms", |f| f.relay_added_p99_audio_ms),
    ("relay hop p99 video", " ms", |f| f.relay_added_p99_video_ms),
];

fn show(x: Option<f64>, unit: &str) -> String {
    match x {
        Some(x) if x >= 1000.0 => format!("{x:.0}{unit}"),
        Some(x) => format!("{x:.2}{unit}"),
        None => "-".to_string(),
    }
}

/// One run, as printed when it ends.
pub fn run_line(pair: usize, side: Side, f: &Figures, ok: bool) -> String {
    if !ok {
        return format!("pair {} {side:?}: failed", pair + 1);
    }
    let mut line = format!("pair {} {side:?}:", pair + 1);
    // Only what this scenario reports.
    for (name, unit, get) in FIGURES {
        if let Some(x) = get(f) {
            line.push_str(&format!("  {name} {}", show(Some(x), unit)));
        }
    }
    if f.lost_or_broken > 0 || f.failures > 0 {
        line.push_str(&format!(
            "  (lost or broken frames {}, failed sessions {})",
            f.lost_or_broken, f.failures
        ));
    }
    line
}

/// The comparison, as text.
pub fn summary_text(
    runs: &[(usize, Side, Figures)],
    a: &std::path::Path,
    b: &std::path::Path,
) -> String {
    let mut out = format!("\nA = {}\nB = {}\n", a.display(), b.display());
    let range = |r: Option<(f64, f64)>, unit: &str| match r {
        Some((lo, hi)) => format!("{}–{}", show(Some(lo), ""), show(Some(hi), unit)),
        None => "-".to_string(),
    };
    for (name, unit, get) in FIGURES {
        if !runs.iter().any(|r| get(&r.2).is_some()) {
            continue;
        }
        let s = summarise(runs, get);
        out.push_str(&format!(
            "{name:<20} A median {} ({})  B median {} ({})  B/A per pair, median {}\n",
            show(s.a_median, unit),
            range(s.a_range, unit),
            show(s.b_median, unit),
            range(s.b_range, unit),
            s.paired_ratio
                .map_or("-".to_string(), |r| format!("{r:.3}")),
        ));
    }
    out
}

/// The comparison, as JSON.
pub fn summary_json(runs: &[(usize, Side, Figures)]) -> Value {
    let mut o = serde_json::Map::new();
    for (name, _, get) in FIGURES {
        let s = summarise(runs, get);
        o.insert(
            name.to_string(),
            serde_json::json!({
                "a_median": s.a_median,
                "a_range": s.a_range,
                "b_median": s.b_median,
                "b_range": s.b_range,
                "b_over_a_paired_median": s.paired_ratio,
            }),
        );
    }
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pairs_alternate_their_order() {
        assert_eq!(
            plan(3),
            vec![
                (0, Side::A),
                (0, Side::B),
                (1, Side::B),
                (1, Side::A),
                (2, Side::A),
                (2, Side::B)
            ]
        );
        assert!(plan(0).is_empty());
    }

    #[test]
    fn figures_sum_the_nodes_and_the_groups() {
        let report = json!({
            "nodes": [
                {"forwarded_pkts_per_s": 10000.0, "cpu_percent_of_core": 10.0},
                {"forwarded_pkts_per_s": 5000.0, "cpu_percent_of_core": 5.0},
            ],
            "rss_per_session_kb": 95.5,
            "failures": 1,
            "groups": [
                {"frames_lost": 2, "frames_broken_video": 1, "latency": {"p99_ms": 4.5}},
                {"frames_lost": 3, "frames_broken_video": 0, "latency": null},
            ],
        });
        let f = figures(&report);
        assert_eq!(f.pkts_per_core, Some(100_000.0));
        assert_eq!(f.rss_per_session_kb, Some(95.5));
        assert_eq!(f.latency_p99_ms, Some(4.5));
        assert_eq!(f.lost_or_broken, 6);
        assert_eq!(f.relay_added_p99_audio_ms, None);
        let relay = json!({"extra": {
            "relay_added_per_frame_audio": {"p99_ms": 0.66},
            "relay_added_per_frame_video": {"p99_ms": 0.72},
        }});
        assert_eq!(figures(&relay).relay_added_p99_audio_ms, Some(0.66));
        assert_eq!(figures(&relay).relay_added_p99_video_ms, Some(0.72));
        assert_eq!(f.failures, 1);
    }

    #[test]
    fn a_report_without_a_figure_has_none_rather_than_zero() {
        let f =
            figures(&json!({"nodes": [{"forwarded_pkts_per_s": 0.0, "cpu_percent_of_core": 0.0}]}));
        assert_eq!(f, Figures::default());
        assert_eq!(figures(&json!("not a report")), Figures::default());
    }

    #[test]
    fn the_summary_takes_medians_per_side_and_of_the_paired_ratios() {
        let run = |p, s, x: Option<f64>| {
            (
                p,
                s,
                Figures {
                    pkts_per_core: x,
                    ..Figures::default()
                },
            )
        };
        let runs = vec![
            run(0, Side::A, Some(100.0)),
            run(0, Side::B, Some(120.0)),
            run(1, Side::B, Some(90.0)),
            run(1, Side::A, Some(80.0)),
            run(2, Side::A, Some(110.0)),
            run(2, Side::B, None),
        ];
        let s = summarise(&runs, |f| f.pkts_per_core);
        assert_eq!(s.a_median, Some(100.0));
        assert_eq!(s.a_range, Some((80.0, 110.0)));
        assert_eq!(s.b_median, Some(105.0));
        assert_eq!(s.b_range, Some((90.0, 120.0)));
        // Pairs 0 and 1 only: 1.2 and 1.125.
        let r = s.paired_ratio.unwrap_or_default();
        assert!((r - 1.1625).abs() < 1e-9, "{r}");
    }

    #[test]
    fn a_failed_run_and_a_lossy_run_are_marked() {
        assert_eq!(
            run_line(0, Side::B, &Figures::default(), false),
            "pair 1 B: failed"
        );
        let lossy = Figures {
            pkts_per_core: Some(143_400.4),
            rss_per_session_kb: Some(94.04),
            lost_or_broken: 2,
            ..Figures::default()
        };
        assert_eq!(
            run_line(1, Side::A, &lossy, true),
            "pair 2 A:  pkt/s per core 143400  RSS per session 94.04 KB  \
             (lost or broken frames 2, failed sessions 0)"
        );
    }

    #[test]
    fn the_summary_lists_only_the_figures_the_scenario_reports() {
        let f = Figures {
            pkts_per_core: Some(100.0),
            ..Figures::default()
        };
        let runs = vec![(0, Side::A, f.clone()), (0, Side::B, f)];
        let text = summary_text(&runs, "a".as_ref(), "b".as_ref());
        assert!(text.contains("pkt/s per core"), "{text}");
        assert!(!text.contains("relay hop"), "{text}");
        assert!(text.contains("B/A per pair, median 1.000"), "{text}");
    }

    #[test]
    fn the_median_ignores_what_is_not_a_number() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }
}
