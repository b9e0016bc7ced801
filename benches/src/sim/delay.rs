//! The delay process's core, without I/O: which region an address is in, the one-way delay of
//! a region pair, and a bounded line of held packets released in order of their due time.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

/// Most regions a matrix may have.
pub const MAX_REGIONS: usize = 16;
/// Longest one-way delay accepted.
pub const MAX_DELAY: Duration = Duration::from_secs(2);

/// One-way delays between regions, `delay[from][to]`; the diagonal is unused (a region's own
/// traffic never crosses the router).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matrix {
    ms: Vec<Vec<u32>>,
}

impl Matrix {
    /// Parse `a,b,c;d,e,f;…`: one row per region, `;` between rows, milliseconds.
    pub fn parse(s: &str) -> anyhow::Result<Matrix> {
        let mut ms = Vec::new();
        for (i, row) in s.split(';').enumerate().take(MAX_REGIONS + 1) {
            let cells = row
                .split(',')
                .take(MAX_REGIONS + 1)
                .map(|c| {
                    c.trim()
                        .parse::<u32>()
                        .with_context(|| format!("row {}: {c:?} is not a number of ms", i + 1))
                })
                .collect::<anyhow::Result<Vec<u32>>>()?;
            ms.push(cells);
        }
        let n = ms.len();
        ensure!(
            (1..=MAX_REGIONS).contains(&n),
            "a matrix has 1..={MAX_REGIONS} rows, not {n}"
        );
        for (i, row) in ms.iter().enumerate() {
            if row.len() != n {
                bail!(
                    "row {} has {} cells; the matrix is {n}x{n}",
                    i + 1,
                    row.len()
                );
            }
            for &d in row {
                ensure!(
                    u128::from(d) <= MAX_DELAY.as_millis(),
                    "delay {d} ms is over {MAX_DELAY:?}"
                );
            }
        }
        Ok(Matrix { ms })
    }

    pub fn regions(&self) -> usize {
        self.ms.len()
    }

    /// Delay from region `from` to region `to` (0-based); zero for unknown regions.
    pub fn delay(&self, from: usize, to: usize) -> Duration {
        let ms = self
            .ms
            .get(from)
            .and_then(|r| r.get(to))
            .copied()
            .unwrap_or(0);
        Duration::from_millis(u64::from(ms))
    }
}

/// The address plan the test bed uses: region `i` (0-based) is `10.<base>.<i+1>.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub base: u8,
}

impl Plan {
    /// The region (0-based) of `ip`, if it is in one of the plan's region LANs.
    pub fn region_of(&self, ip: Ipv4Addr) -> Option<usize> {
        let [a, b, c, _] = ip.octets();
        (a == 10 && b == self.base && c >= 1).then(|| usize::from(c) - 1)
    }

    /// The delay of an IPv4 packet (its header's addresses); zero when it is not between two
    /// regions of the plan, or not IPv4.
    pub fn packet_delay(&self, m: &Matrix, packet: &[u8]) -> Duration {
        match ipv4_addrs(packet) {
            Some((src, dst)) => match (self.region_of(src), self.region_of(dst)) {
                (Some(s), Some(d)) if s != d => m.delay(s, d),
                _ => Duration::ZERO,
            },
            None => Duration::ZERO,
        }
    }
}

/// Source and destination of an IPv4 header, or None if `p` is not one.
pub fn ipv4_addrs(p: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let version = p.first()? >> 4;
    if version != 4 {
        return None;
    }
    let src: [u8; 4] = p.get(12..16)?.try_into().ok()?;
    let dst: [u8; 4] = p.get(16..20)?.try_into().ok()?;
    Some((Ipv4Addr::from(src), Ipv4Addr::from(dst)))
}

struct Held<T> {
    due: Instant,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Held<T> {
    fn eq(&self, o: &Self) -> bool {
        self.due == o.due && self.seq == o.seq
    }
}
impl<T> Eq for Held<T> {}
impl<T> PartialOrd for Held<T> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<T> Ord for Held<T> {
    // Reversed: BinaryHeap is a max-heap and the earliest due (then the first in) comes first.
    fn cmp(&self, o: &Self) -> Ordering {
        o.due.cmp(&self.due).then(o.seq.cmp(&self.seq))
    }
}

/// Packets held until their due time. Bounded: past `capacity` a packet is refused (the caller
/// drops it) and counted. Packets of one pair share one delay, so each pair's order is kept.
pub struct DelayLine<T> {
    heap: BinaryHeap<Held<T>>,
    capacity: usize,
    seq: u64,
    pub dropped: u64,
}

impl<T> DelayLine<T> {
    pub fn new(capacity: usize) -> DelayLine<T> {
        DelayLine {
            heap: BinaryHeap::new(),
            capacity: capacity.max(1),
            seq: 0,
            dropped: 0,
        }
    }

    /// Hold `item` until `now + delay`; gives it back (counted as dropped) when the line is full.
    pub fn push(&mut self, now: Instant, delay: Duration, item: T) -> Result<(), T> {
        if self.heap.len() >= self.capacity {
            self.dropped += 1;
            return Err(item);
        }
        self.seq += 1;
        self.heap.push(Held {
            due: now + delay,
            seq: self.seq,
            item,
        });
        Ok(())
    }

    /// The next item due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        if self.heap.peek()?.due <= now {
            self.heap.pop().map(|h| h.item)
        } else {
            None
        }
    }

    /// When the next item is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|h| h.due)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p
    }

    #[test]
    fn matrix_parses_and_rejects() {
        let m = Matrix::parse("0,20,80;20,0,60;80,60,0").expect("parses");
        assert_eq!(m.regions(), 3);
        assert_eq!(m.delay(0, 2), Duration::from_millis(80));
        assert_eq!(m.delay(2, 1), Duration::from_millis(60));
        assert_eq!(m.delay(7, 1), Duration::ZERO);
        assert!(Matrix::parse("0,20;20").is_err(), "ragged");
        assert!(Matrix::parse("0,x;1,0").is_err(), "not a number");
        assert!(Matrix::parse("0,5000;1,0").is_err(), "too long");
    }

    #[test]
    fn packets_between_regions_get_their_pair_delay() {
        let m = Matrix::parse("0,20,80;25,0,60;80,60,0").expect("parses");
        let plan = Plan { base: 90 };
        let d = |s, t| plan.packet_delay(&m, &header(s, t));
        assert_eq!(d([10, 90, 1, 1], [10, 90, 2, 1]), Duration::from_millis(20));
        assert_eq!(d([10, 90, 2, 1], [10, 90, 1, 7]), Duration::from_millis(25));
        assert_eq!(
            d([10, 90, 3, 1], [10, 90, 3, 2]),
            Duration::ZERO,
            "same region"
        );
        assert_eq!(
            d([10, 91, 1, 2], [10, 90, 2, 1]),
            Duration::ZERO,
            "not a region LAN"
        );
        assert_eq!(plan.packet_delay(&m, &[0x60; 40]), Duration::ZERO, "IPv6");
        assert_eq!(plan.packet_delay(&m, &[0x45; 10]), Duration::ZERO, "short");
    }

    #[test]
    fn line_releases_in_due_order_and_is_bounded() {
        let t0 = Instant::now();
        let mut line = DelayLine::new(3);
        line.push(t0, Duration::from_millis(80), "slow")
            .expect("room");
        line.push(t0, Duration::from_millis(20), "fast1")
            .expect("room");
        line.push(t0, Duration::from_millis(20), "fast2")
            .expect("room");
        assert_eq!(line.push(t0, Duration::ZERO, "over"), Err("over"));
        assert_eq!(line.dropped, 1);
        assert_eq!(line.next_due(), Some(t0 + Duration::from_millis(20)));
        assert_eq!(line.pop_due(t0 + Duration::from_millis(19)), None);
        let at = t0 + Duration::from_millis(20);
        assert_eq!(line.pop_due(at), Some("fast1"));
        assert_eq!(line.pop_due(at), Some("fast2"));
        assert_eq!(line.pop_due(at), None);
        assert_eq!(line.pop_due(t0 + Duration::from_millis(80)), Some("slow"));
        assert!(line.is_empty());
    }
}
