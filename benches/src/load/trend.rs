//! Is a sampled series (node RSS over a soak) flat? A least-squares slope over the whole run
//! and over its second half, and the mean of the first half against the mean of the second.
//! One endpoint against another (the older soak figure) moves with a single noisy sample; a
//! slope and half means do not.

use serde::Serialize;

use super::procfs::round2;

/// The trend of `(t seconds, value)` points; values are in the series' unit (MB for RSS).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Trend {
    pub points: usize,
    /// Least-squares slope over every point, per minute.
    pub slope_per_min: f64,
    /// Least-squares slope over the second half of the points, per minute (the first half may
    /// still be filling buffers and pools).
    pub slope_second_half_per_min: f64,
    pub first_half_mean: f64,
    pub second_half_mean: f64,
    /// `second_half_mean - first_half_mean`.
    pub half_delta: f64,
    pub min: f64,
    pub max: f64,
}

impl Trend {
    /// `None` with fewer than 4 points (no halves to compare).
    pub fn of(points: &[(f64, f64)]) -> Option<Trend> {
        if points.len() < 4 {
            return None;
        }
        let half = points.len() / 2;
        let (first, second) = points.split_at(half);
        let mean = |p: &[(f64, f64)]| p.iter().map(|(_, v)| v).sum::<f64>() / p.len() as f64;
        let (m1, m2) = (mean(first), mean(second));
        let values = points.iter().map(|(_, v)| *v);
        Some(Trend {
            points: points.len(),
            slope_per_min: round2(slope(points) * 60.0),
            slope_second_half_per_min: round2(slope(second) * 60.0),
            first_half_mean: round2(m1),
            second_half_mean: round2(m2),
            half_delta: round2(m2 - m1),
            min: round2(values.clone().fold(f64::INFINITY, f64::min)),
            max: round2(values.fold(f64::NEG_INFINITY, f64::max)),
        })
    }
}

/// Least-squares slope of value over time (per second); 0 when all times are equal.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mt = points.iter().map(|(t, _)| t).sum::<f64>() / n;
    let mv = points.iter().map(|(_, v)| v).sum::<f64>() / n;
    let (mut cov, mut var) = (0.0, 0.0);
    for (t, v) in points {
        cov += (t - mt) * (v - mv);
        var += (t - mt) * (t - mt);
    }
    if var == 0.0 { 0.0 } else { cov / var }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_series() {
        let pts: Vec<(f64, f64)> = (0..10).map(|i| (i as f64 * 5.0, 50.0)).collect();
        let t = Trend::of(&pts).expect("enough points");
        assert_eq!(t.slope_per_min, 0.0);
        assert_eq!(t.slope_second_half_per_min, 0.0);
        assert_eq!(t.half_delta, 0.0);
        assert_eq!((t.min, t.max), (50.0, 50.0));
    }

    #[test]
    fn linear_growth() {
        // 1 MB every 10 s: 6 MB per minute, halves 25 s apart on average -> 2.5 MB.
        let pts: Vec<(f64, f64)> = (0..6).map(|i| (i as f64 * 10.0, i as f64)).collect();
        let t = Trend::of(&pts).expect("enough points");
        assert_eq!(t.slope_per_min, 6.0);
        assert_eq!(t.slope_second_half_per_min, 6.0);
        assert_eq!((t.first_half_mean, t.second_half_mean), (1.0, 4.0));
        assert_eq!(t.half_delta, 3.0);
    }

    #[test]
    fn warm_up_then_flat() {
        // Rises over the first half, then flat: the second half's slope is 0.
        let v = [10.0, 20.0, 30.0, 40.0, 40.0, 40.0, 40.0, 40.0];
        let pts: Vec<(f64, f64)> = v.iter().enumerate().map(|(i, v)| (i as f64, *v)).collect();
        let t = Trend::of(&pts).expect("enough points");
        assert_eq!(t.slope_second_half_per_min, 0.0);
        assert!(t.slope_per_min > 0.0);
        assert!(Trend::of(&pts[..3]).is_none());
    }
}
