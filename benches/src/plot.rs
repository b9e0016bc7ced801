//! Charts of `trackmesh-load` JSON reports (`benches/run.sh plot`): packets/s per core and p99
//! latency against subscribers (fan-out, one line per media), and sessions receiving over time
//! (join storm). SVG only: no bitmap backend and no font library; the viewer draws the text.
//!
//! Reading ([`Results::add`]) and drawing ([`line_chart`]) do no I/O; the binary reads the files.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use plotters::prelude::*;
use serde_json::Value;

/// Most reports read from one directory.
pub const MAX_REPORTS: usize = 1000;
/// Largest report file read.
pub const MAX_REPORT_BYTES: u64 = 16 << 20;

/// One fan-out run: its media and subscriber count, and what it measured.
#[derive(Debug, Clone, PartialEq)]
pub struct FanoutRun {
    pub media: String,
    pub subscribers: f64,
    pub pkts_per_s_per_core: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One join storm: its size and `(seconds since the start, sessions receiving)`.
#[derive(Debug, Clone, PartialEq)]
pub struct StormRun {
    pub sessions: u64,
    pub timeline: Vec<(f64, f64)>,
}

/// The reports a chart can use; others (relay, hub, churn, soak) are skipped.
#[derive(Debug, Default)]
pub struct Results {
    pub fanout: Vec<FanoutRun>,
    pub storms: Vec<StormRun>,
}

/// A named line of points.
pub type Series = (String, Vec<(f64, f64)>);

impl Results {
    /// Takes one report (the JSON `trackmesh-load --json` prints). Ok(false): not one a chart
    /// uses; an error: a fan-out or join-storm report without the fields it must have.
    pub fn add(&mut self, report: &Value) -> anyhow::Result<bool> {
        match report["scenario"].as_str() {
            Some("fanout") => {
                let params = &report["params"];
                let media = params["common"]["media"]
                    .as_str()
                    .context("fanout report without params.common.media")?
                    .to_string();
                let subscribers = params["subscribers"]
                    .as_f64()
                    .context("fanout report without params.subscribers")?;
                self.fanout.push(FanoutRun {
                    media,
                    subscribers,
                    pkts_per_s_per_core: report["nodes"][0]["pkts_per_s_per_core"].as_f64(),
                    p99_ms: report["groups"][0]["latency"]["p99_ms"].as_f64(),
                });
                Ok(true)
            }
            Some("join-storm") => {
                let storm = &report["extra"]["storm"];
                let points = storm["timeline"]
                    .as_array()
                    .context("join-storm report without extra.storm.timeline (made before the timeline was recorded?)")?;
                let timeline = points
                    .iter()
                    .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?)))
                    .collect();
                self.storms.push(StormRun {
                    sessions: storm["sessions"].as_u64().unwrap_or(0),
                    timeline,
                });
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// One line per media: `metric` against subscribers, the mean where runs repeat a point.
    pub fn fanout_series(&self, metric: impl Fn(&FanoutRun) -> Option<f64>) -> Vec<Series> {
        let mut by_media: BTreeMap<&str, BTreeMap<u64, Vec<f64>>> = BTreeMap::new();
        for run in &self.fanout {
            if let Some(y) = metric(run).filter(|y| y.is_finite()) {
                by_media
                    .entry(run.media.as_str())
                    .or_default()
                    .entry(run.subscribers as u64)
                    .or_default()
                    .push(y);
            }
        }
        by_media
            .into_iter()
            .map(|(media, points)| {
                let line = points
                    .into_iter()
                    .map(|(x, ys)| (x as f64, ys.iter().sum::<f64>() / ys.len() as f64))
                    .collect();
                (media.to_string(), line)
            })
            .collect()
    }

    /// One line per storm size (the last run of each size).
    pub fn storm_series(&self) -> Vec<Series> {
        let mut by_size: BTreeMap<u64, &StormRun> = BTreeMap::new();
        for s in &self.storms {
            by_size.insert(s.sessions, s);
        }
        by_size
            .into_values()
            .map(|s| {
                let mut line = vec![(0.0, 0.0)];
                line.extend(s.timeline.iter().copied());
                (format!("{} sessions", s.sessions), line)
            })
            .collect()
    }
}

/// Lines with more points than this are drawn without a mark on each.
const MAX_MARKED_POINTS: usize = 30;

/// An axis label: whole numbers without decimals, small values with one.
fn tick(v: &f64) -> String {
    if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// An SVG line chart (with points) of `series`, axes from 0 to a little above the largest value.
pub fn line_chart(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
) -> anyhow::Result<String> {
    let points = || series.iter().flat_map(|(_, p)| p.iter());
    if points().next().is_none() {
        bail!("{title}: no data to draw");
    }
    let x_max = points().map(|p| p.0).fold(0.0, f64::max) * 1.05;
    let y_max = points().map(|p| p.1).fold(0.0, f64::max) * 1.1;
    let (x_max, y_max) = (x_max.max(1e-9), y_max.max(1e-9));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
        let draw = |e: DrawingAreaErrorKind<std::io::Error>| anyhow::anyhow!("{title}: {e}");
        root.fill(&WHITE).map_err(draw)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(80)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(draw)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&tick)
            .y_label_formatter(&tick)
            .draw()
            .map_err(draw)?;
        for (i, (name, line)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(line.iter().copied(), color.stroke_width(2)))
                .map_err(draw)?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            // Marks on measured points; a dense line (a timeline) is clearer without them.
            if line.len() <= MAX_MARKED_POINTS {
                chart
                    .draw_series(line.iter().map(|p| Circle::new(*p, 3, color.filled())))
                    .map_err(draw)?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(draw)?;
        root.present().map_err(draw)?;
    }
    Ok(svg)
}

/// Every chart of `results`: `(file name, SVG)`. An error when a chart has no data, so a plot
/// step cannot pass on an empty or wrong directory.
pub fn charts(results: &Results) -> anyhow::Result<Vec<(&'static str, String)>> {
    if results.fanout.is_empty() {
        bail!("no fan-out reports (run benches/run.sh load, or trackmesh-load fanout --json)");
    }
    if results.storms.is_empty() {
        bail!(
            "no join-storm reports (run benches/run.sh load, or trackmesh-load join-storm --json)"
        );
    }
    Ok(vec![
        (
            "fanout-pkts-per-core.svg",
            line_chart(
                "Fan-out: packets forwarded per second per core of node CPU",
                "subscribers",
                "packets/s per core",
                &results.fanout_series(|r| r.pkts_per_s_per_core),
            )?,
        ),
        (
            "fanout-p99-latency.svg",
            line_chart(
                "Fan-out: p99 one-way latency, publisher to subscriber",
                "subscribers",
                "p99 latency (ms)",
                &results.fanout_series(|r| r.p99_ms),
            )?,
        ),
        (
            "join-storm.svg",
            line_chart(
                "Join storm: sessions receiving media since the storm began",
                "seconds",
                "sessions receiving",
                &results.storm_series(),
            )?,
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fanout(media: &str, subs: u64, pps: f64, p99: f64) -> Value {
        json!({
            "scenario": "fanout",
            "params": {"common": {"media": media}, "subscribers": subs, "publishers": 1},
            "nodes": [{"pkts_per_s_per_core": pps}],
            "groups": [{"latency": {"p99_ms": p99}}],
        })
    }

    fn storm(sessions: u64) -> Value {
        json!({
            "scenario": "join-storm",
            "extra": {"storm": {"sessions": sessions, "timeline": [[0.5, 1.0], [1.5, 2.0]]}},
        })
    }

    #[test]
    fn series_per_media_with_repeated_runs_averaged() {
        let mut r = Results::default();
        for v in [
            fanout("video", 50, 100.0, 2.0),
            fanout("video", 50, 300.0, 4.0),
            fanout("video", 200, 500.0, 6.0),
            fanout("audio", 50, 50.0, 1.0),
            storm(500),
        ] {
            assert!(r.add(&v).expect("a usable report"));
        }
        assert!(!r.add(&json!({"scenario": "relay"})).expect("skipped"));
        let pps = r.fanout_series(|f| f.pkts_per_s_per_core);
        assert_eq!(
            pps,
            vec![
                ("audio".to_string(), vec![(50.0, 50.0)]),
                ("video".to_string(), vec![(50.0, 200.0), (200.0, 500.0)]),
            ]
        );
        assert_eq!(
            r.storm_series(),
            vec![(
                "500 sessions".to_string(),
                vec![(0.0, 0.0), (0.5, 1.0), (1.5, 2.0)]
            )]
        );
        let all = charts(&r).expect("charts");
        assert_eq!(all.len(), 3);
        for (name, svg) in &all {
            assert!(svg.starts_with("<svg"), "{name}");
            assert!(svg.contains("</svg>"), "{name}");
        }
        let (_, pps_svg) = &all[0];
        assert!(
            pps_svg.contains("video") && pps_svg.contains("audio"),
            "legend"
        );
        assert!(pps_svg.contains("subscribers"), "axis label");
        // One circle per point: 3 points in all.
        assert_eq!(pps_svg.matches("<circle").count(), 3, "{pps_svg}");
    }

    #[test]
    fn a_report_without_its_fields_or_no_reports_is_an_error() {
        let mut r = Results::default();
        assert!(r.add(&json!({"scenario": "fanout", "params": {}})).is_err());
        assert!(
            r.add(&json!({"scenario": "join-storm", "extra": {}}))
                .is_err()
        );
        assert!(charts(&r).is_err(), "nothing to draw");
        r.add(&fanout("video", 50, 1.0, 1.0)).expect("fanout");
        assert!(charts(&r).is_err(), "no storm yet");
    }
}
