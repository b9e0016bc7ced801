//! The report's pure computations: which tracks cross which inter-region link (from the
//! nodes' `/admin/relay` downstream entries), and how long media stalled (from sampled frame
//! counters).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::Serialize;

/// A track, by (sessionId, trackName).
pub type TrackRef = (String, String);

/// One downstream entry of one node: it sends `track` to node `peer`.
#[derive(Clone, Debug)]
pub struct Sent {
    pub from_node: String,
    pub peer: String,
    pub track: TrackRef,
}

/// What crossed one directed inter-region link.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct LinkCrossings {
    /// Distinct tracks sent over the link.
    pub tracks: usize,
    /// Downstream entries over the link (one per node pair per track).
    pub crossings: usize,
}

/// Tracks crossing each directed link `(from region, to region)`, and every way the
/// "each track crosses each link once, only from its own region" rule was broken.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Crossings {
    pub links: BTreeMap<String, LinkCrossings>,
    pub violations: Vec<String>,
}

/// `sent`: every node's downstream entries; `region_of`: node id → region; `origin`: track →
/// its publisher's region; `needed`: (track, region) pairs where the track has a viewer.
pub fn crossings(
    sent: &[Sent],
    region_of: &BTreeMap<String, String>,
    origin: &BTreeMap<TrackRef, String>,
    needed: &BTreeSet<(TrackRef, String)>,
) -> Crossings {
    let mut per_track: BTreeMap<(String, String, TrackRef), usize> = BTreeMap::new();
    let mut out = Crossings::default();
    for s in sent {
        let (Some(a), Some(b)) = (region_of.get(&s.from_node), region_of.get(&s.peer)) else {
            out.violations.push(format!(
                "{} sends {:?} to {}: a node outside the test bed",
                s.from_node, s.track, s.peer
            ));
            continue;
        };
        if a == b {
            continue;
        }
        *per_track
            .entry((a.clone(), b.clone(), s.track.clone()))
            .or_default() += 1;
        if origin.get(&s.track) != Some(a) {
            out.violations.push(format!(
                "{:?} crosses {a}→{b} from {} although it is published in {:?}",
                s.track,
                s.from_node,
                origin.get(&s.track)
            ));
        }
    }
    for ((a, b, track), n) in &per_track {
        let link = out.links.entry(format!("{a}->{b}")).or_default();
        link.tracks += 1;
        link.crossings += n;
        if *n > 1 {
            out.violations
                .push(format!("{track:?} crosses {a}→{b} {n} times"));
        }
    }
    for (track, region) in needed {
        let Some(o) = origin.get(track) else { continue };
        if o != region && !per_track.contains_key(&(o.clone(), region.clone(), track.clone())) {
            out.violations.push(format!(
                "{track:?} is viewed in {region} but never crosses {o}→{region}"
            ));
        }
    }
    out
}

/// Longest stretch without a new frame, per watched subscriber, since the last
/// [`Stalls::reset`]; fed with each subscriber's received-frame count now and then.
#[derive(Clone, Debug)]
pub struct Stalls {
    /// (last count, when it last changed, longest gap so far).
    subs: Vec<(u64, Instant, Duration)>,
}

impl Stalls {
    pub fn new(n: usize, now: Instant) -> Stalls {
        Stalls {
            subs: vec![(0, now, Duration::ZERO); n],
        }
    }

    /// Start a new phase: gaps are measured from `now`.
    pub fn reset(&mut self, now: Instant) {
        for s in &mut self.subs {
            s.1 = now;
            s.2 = Duration::ZERO;
        }
    }

    pub fn observe(&mut self, i: usize, count: u64, now: Instant) {
        if let Some(s) = self.subs.get_mut(i)
            && count != s.0
        {
            s.2 = s.2.max(now.saturating_duration_since(s.1));
            s.0 = count;
            s.1 = now;
        }
    }

    /// Longest gap of each subscriber up to `now` (an ongoing gap counts).
    pub fn longest(&self, now: Instant) -> Vec<Duration> {
        self.subs
            .iter()
            .map(|s| s.2.max(now.saturating_duration_since(s.1)))
            .collect()
    }

    /// How long subscriber `i` has been without a new frame at `now`.
    pub fn idle(&self, i: usize, now: Instant) -> Duration {
        self.subs
            .get(i)
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s.1))
    }

    /// Frames counted for subscriber `i` at the last observation.
    pub fn count(&self, i: usize) -> u64 {
        self.subs.get(i).map_or(0, |s| s.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> TrackRef {
        ("s".to_string(), name.to_string())
    }

    fn sent(from: &str, peer: &str, track: &str) -> Sent {
        Sent {
            from_node: from.into(),
            peer: peer.into(),
            track: t(track),
        }
    }

    fn world() -> (BTreeMap<String, String>, BTreeMap<TrackRef, String>) {
        let regions = [("r1a", "r1"), ("r1b", "r1"), ("r2a", "r2"), ("r2b", "r2")]
            .into_iter()
            .map(|(n, r)| (n.to_string(), r.to_string()))
            .collect();
        let origin = [(t("v1"), "r1".to_string())].into_iter().collect();
        (regions, origin)
    }

    #[test]
    fn hub_fan_out_crosses_once() {
        let (regions, origin) = world();
        let needed = [(t("v1"), "r2".to_string())].into_iter().collect();
        // r1a → hub r2a once, then r2a → r2b inside r2.
        let s = [sent("r1a", "r2a", "v1"), sent("r2a", "r2b", "v1")];
        let c = crossings(&s, &regions, &origin, &needed);
        assert!(c.violations.is_empty(), "{:?}", c.violations);
        assert_eq!(
            c.links.get("r1->r2"),
            Some(&LinkCrossings {
                tracks: 1,
                crossings: 1
            })
        );
        assert_eq!(c.links.len(), 1);
    }

    #[test]
    fn twice_missing_and_transit_are_violations() {
        let (regions, origin) = world();
        let needed = [(t("v1"), "r2".to_string())].into_iter().collect();
        let twice = [sent("r1a", "r2a", "v1"), sent("r1b", "r2b", "v1")];
        let c = crossings(&twice, &regions, &origin, &needed);
        assert_eq!(c.violations.len(), 1, "{:?}", c.violations);
        assert!(c.violations[0].contains("2 times"));

        let c = crossings(&[], &regions, &origin, &needed);
        assert_eq!(c.violations.len(), 1);
        assert!(c.violations[0].contains("never crosses"));

        let back = [sent("r1a", "r2a", "v1"), sent("r2a", "r1b", "v1")];
        let c = crossings(&back, &regions, &origin, &needed);
        assert!(
            c.violations.iter().any(|v| v.contains("published in")),
            "{:?}",
            c.violations
        );
    }

    #[test]
    fn stalls_measure_the_longest_gap_including_an_ongoing_one() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut s = Stalls::new(2, t0);
        s.observe(0, 1, ms(50));
        s.observe(0, 2, ms(400));
        s.observe(0, 2, ms(500));
        s.observe(0, 3, ms(550));
        s.observe(1, 5, ms(100));
        let l = s.longest(ms(1100));
        assert_eq!(
            l[0],
            Duration::from_millis(550),
            "the ongoing gap since 550"
        );
        assert_eq!(l[1], Duration::from_millis(1000));
        s.reset(ms(1100));
        s.observe(0, 4, ms(1200));
        assert_eq!(s.longest(ms(1200))[0], Duration::from_millis(100));
        assert_eq!(s.count(0), 4);
        assert_eq!(s.idle(1, ms(1300)), Duration::from_millis(200));
    }
}
