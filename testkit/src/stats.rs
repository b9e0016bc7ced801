//! Distributions: a small log-linear histogram of microseconds (bounded memory, mergeable,
//! about 1.6 % resolution) and summaries (p50/p90/p99/max/mean in milliseconds).

use serde::Serialize;

/// Sub-buckets per power of two (resolution 1/64).
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Values are clamped to this many µs (about 18 minutes).
const MAX_VALUE_US: u64 = 1 << 30;

/// A histogram of non-negative microsecond values. Buckets grow on demand up to the bucket of
/// [`MAX_VALUE_US`] (a few KB at most).
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    n: u64,
    sum: u128,
    max: u64,
    min: Option<u64>,
}

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = e - SUB_BITS;
    let mantissa = (v >> shift) & (SUB - 1);
    ((u64::from(e - SUB_BITS + 1) << SUB_BITS) + mantissa) as usize
}

/// The middle of a bucket's value range.
fn bucket_mid(b: usize) -> f64 {
    let b = b as u64;
    if b < SUB {
        return b as f64;
    }
    let e = (b >> SUB_BITS) + u64::from(SUB_BITS) - 1;
    let mantissa = b & (SUB - 1);
    let shift = e - u64::from(SUB_BITS);
    let low = (SUB | mantissa) << shift;
    let width = 1u64 << shift;
    low as f64 + (width as f64 - 1.0) / 2.0
}

impl Histogram {
    pub fn record(&mut self, us: u64) {
        let v = us.min(MAX_VALUE_US);
        let b = bucket_of(v);
        if self.counts.len() <= b {
            self.counts.resize(b + 1, 0);
        }
        self.counts[b] += 1;
        self.n += 1;
        self.sum += u128::from(v);
        self.max = self.max.max(v);
        self.min = Some(self.min.map_or(v, |m| m.min(v)));
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    pub fn merge(&mut self, other: &Histogram) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += *b;
        }
        self.n += other.n;
        self.sum += other.sum;
        self.max = self.max.max(other.max);
        self.min = match (self.min, other.min) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// Nearest-rank percentile in µs (`p` in 0..=1), within the bucket resolution; the exact
    /// maximum for p = 1.
    pub fn percentile_us(&self, p: f64) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((p * self.n as f64).ceil() as u64).clamp(1, self.n);
        if rank == self.n {
            return Some(self.max as f64);
        }
        let mut seen = 0u64;
        for (b, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let mid = bucket_mid(b);
                let lo = self.min.unwrap_or(0) as f64;
                return Some(mid.clamp(lo, self.max as f64));
            }
        }
        Some(self.max as f64)
    }

    /// Summary in milliseconds.
    pub fn dist(&self) -> Option<Dist> {
        if self.n == 0 {
            return None;
        }
        let ms = |p: f64| self.percentile_us(p).unwrap_or(f64::NAN) / 1000.0;
        Some(Dist {
            n: self.n,
            p50_ms: round3(ms(0.5)),
            p90_ms: round3(ms(0.9)),
            p99_ms: round3(ms(0.99)),
            max_ms: round3(self.max as f64 / 1000.0),
            mean_ms: round3(self.sum as f64 / self.n as f64 / 1000.0),
        })
    }
}

/// Summary of a distribution, in milliseconds.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Dist {
    pub n: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// Round to µs resolution in ms.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Dist {
    /// Exact summary of values in milliseconds (NaNs are ignored); None when empty.
    pub fn of_ms(values: &[f64]) -> Option<Dist> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        Some(Dist {
            n: v.len() as u64,
            p50_ms: round3(pct(&v, 0.5)),
            p90_ms: round3(pct(&v, 0.9)),
            p99_ms: round3(pct(&v, 0.99)),
            max_ms: round3(v[v.len() - 1]),
            mean_ms: round3(mean),
        })
    }

    /// One line: `p50 / p99 / max (n)`.
    pub fn short(&self) -> String {
        format!(
            "p50 {:.2}  p99 {:.2}  max {:.2} ms  (n={})",
            self.p50_ms, self.p99_ms, self.max_ms, self.n
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..200_000u64).step_by(7) {
            let b = bucket_of(v);
            assert!(b >= last);
            last = b;
            let mid = bucket_mid(b);
            assert!(
                (mid - v as f64).abs() <= (v as f64 / 64.0).max(0.5),
                "{v} {mid}"
            );
        }
    }

    #[test]
    fn percentiles() {
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 10);
        }
        let d = h.dist().expect("non-empty");
        assert_eq!(d.n, 1000);
        assert!((d.p50_ms - 5.0).abs() < 0.1, "{d:?}");
        assert!((d.p99_ms - 9.9).abs() < 0.2, "{d:?}");
        assert_eq!(d.max_ms, 10.0);
        let mut m = Histogram::default();
        m.merge(&h);
        m.merge(&h);
        assert_eq!(m.count(), 2000);
        assert!(Histogram::default().dist().is_none());
        let e = Dist::of_ms(&[3.0, 1.0, 2.0]).expect("values");
        assert_eq!((e.p50_ms, e.max_ms, e.n), (2.0, 3.0, 3));
    }
}
