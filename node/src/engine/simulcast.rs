//! Simulcast layer selection, free of I/O and of str0m's frame API so the packet path can reuse
//! it as is: a publication's [`LayerTable`] says which layers (rids) exist and which are flowing,
//! each subscriber's [`Selector`] picks ONE layer for it, switches only on a keyframe of the
//! target layer (or of its own layer when that starts over), and keeps the subscriber's
//! timestamps continuous across switches ([`Rebase`]).
//!
//! Inputs are plain values (a rid, a media time in clock ticks, an arrival instant, an SSRC when
//! known); outputs are verdicts the caller acts on (forward with this time, skip, ask for a
//! keyframe of this layer). The packet path (`fanout.rs`) calls it once per frame start (a
//! frame's first packet) and subscriber; the subscriber's `packet::rewrite::Rewriter` maps the
//! packets' numbers and timestamps (the verdict's rebased time is not used there).

use std::time::{Duration, Instant};

use str0m::media::Rid;

// A subscriber with no layer flowing waits at most this long for its target's keyframe, then
// takes delta frames anyway, as for unlayered tracks.
use super::KEYFRAME_WAIT_MAX;

/// Most layers of one publication; more than this (Chromium sends 3) are dropped and counted.
pub const MAX_LAYERS: usize = 3;
/// A layer without frames for this long counts as stopped (str0m's own pause threshold is the
/// same 1.5 s; this catches a layer that stops while str0m has not said so yet).
pub const LAYER_IDLE_AFTER: Duration = Duration::from_millis(1500);
/// A layer's media time that moves this much further from what its arrival times say is a
/// jump (an encoder restart, a bad sender): the layer starts over at its next keyframe.
pub const MAX_TIME_DRIFT: Duration = Duration::from_secs(5);

/// A layer's bitrate is measured over this window, in [`RATE_BUCKETS`] buckets.
pub const RATE_WINDOW: Duration = Duration::from_secs(2);
/// Buckets of a layer's rate window (the window slides by one bucket).
pub const RATE_BUCKETS: usize = 8;
/// With bandwidth estimation, a better layer is taken only when the estimate exceeds its
/// bitrate by this many percent (the down move happens below 100 %: the gap is the hysteresis).
pub const UP_MARGIN_PERCENT: u64 = 125;
/// With bandwidth estimation, a better layer is taken only after the estimate has had room for
/// it this long, and this long after the last move down (no flapping on a noisy estimate).
pub const UP_HOLD: Duration = Duration::from_secs(5);

/// `priorityOrdering` and `ridNotAvailable` of a Calls pull: both default to `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ordering {
    /// No automatic move between layers.
    #[default]
    None,
    /// Rids ranked by their ASCII order: `f` < `h` < `q`, the first one the best.
    Asciibetical,
}

/// A subscriber's simulcast request (`simulcast` of a pull or `tracks/update`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prefs {
    /// The layer wanted; without one the best (asciibetically first) available layer.
    pub preferred_rid: Option<Rid>,
    /// `priorityOrdering`: with `asciibetical` and bandwidth estimation on the subscriber's
    /// session, the node moves it down to a layer its estimate can carry and back up when the
    /// estimate recovers ([`Governor`]); with `none` the layer follows only the preference.
    pub priority_ordering: Ordering,
    /// `ridNotAvailable`: with `asciibetical`, a stopped preferred layer is replaced by the next
    /// one in ASCII order (then the nearest before it); with `none` the subscriber waits for it.
    pub rid_not_available: Ordering,
}

/// Why a layered frame was not taken into a publication's layer table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its rid is not among the rids the publisher's SDP declared.
    UnknownRid,
    /// A layer past [`MAX_LAYERS`].
    TooManyLayers,
}

/// What [`LayerTable::admit`] learnt about an accepted frame's layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// The layer's index in the table.
    pub index: usize,
    /// The layer's epoch: it grows when the layer starts over (SSRC change, time jump), and
    /// subscribers on it then wait for its next keyframe and re-base their timestamps.
    pub epoch: u32,
    /// The layer started over with this frame because its SSRC changed.
    pub ssrc_changed: bool,
    /// The layer started over with this frame because its media time jumped.
    pub time_jumped: bool,
}

/// One layer of a publication, with the caller's per-layer data (`T`: the packet path keeps the
/// layer's cached keyframe and keyframe-request timing there).
#[derive(Debug, Clone)]
pub struct Layer<T> {
    /// Its rid.
    pub rid: Rid,
    /// Last accepted frame: arrival and media time (clock ticks).
    last: Option<(Instant, u64)>,
    ssrc: Option<u32>,
    epoch: u32,
    /// str0m reported the stream paused (and not resumed since).
    paused: bool,
    /// Of a relayed publication: whether the layer flows at the origin, as its node last said
    /// (`None`: not said, judged by the frames arriving here). A node pulls only the layers its
    /// viewers use, so one it does not pull is idle here yet may be chosen.
    origin_flowing: Option<bool>,
    /// The layer's bitrate as it arrives here.
    rate: RateMeter,
    /// The caller's data for this layer.
    pub data: T,
}

/// The layers of one publication, in ASCII order of their rids.
#[derive(Debug, Clone)]
pub struct LayerTable<T> {
    /// Rids the publisher declared (`a=rid` in its SDP), at most [`MAX_LAYERS`]; `None` when it
    /// declared none specifically, then the first [`MAX_LAYERS`] rids seen are taken.
    declared: Option<Vec<Rid>>,
    /// Declared rids past [`MAX_LAYERS`]: their frames are refused as too many layers.
    excess: Vec<Rid>,
    layers: Vec<Layer<T>>,
    /// The epoch a new layer starts at: past every epoch a removed layer had, and never lowered,
    /// so a layer that goes away and comes back (its publisher or the origin declared it anew)
    /// is a new source to its viewers' rewriters, not the old one's numbering going on.
    epoch_floor: u32,
}

impl<T: Default> Default for LayerTable<T> {
    fn default() -> Self {
        LayerTable {
            declared: None,
            excess: Vec::new(),
            layers: Vec::new(),
            epoch_floor: 0,
        }
    }
}

fn ascii_cmp(a: &Rid, b: &Rid) -> std::cmp::Ordering {
    let (a, b): (&str, &str) = (a, b);
    a.cmp(b)
}

impl<T: Default> LayerTable<T> {
    /// Sets the rids the publisher declared; only the first [`MAX_LAYERS`] are kept, the rest
    /// are refused as [`Refusal::TooManyLayers`]. Returns how many were dropped.
    pub fn declare(&mut self, rids: &[Rid]) -> usize {
        let kept: Vec<Rid> = rids.iter().take(MAX_LAYERS).copied().collect();
        for l in self.layers.iter().filter(|l| !kept.contains(&l.rid)) {
            self.epoch_floor = self.epoch_floor.max(l.epoch.saturating_add(1));
        }
        self.layers.retain(|l| kept.contains(&l.rid));
        self.declared = Some(kept);
        self.excess = rids.iter().skip(MAX_LAYERS).copied().collect();
        rids.len().saturating_sub(MAX_LAYERS)
    }

    /// Whether the publisher declared its rids (the table was set up from its SDP).
    pub fn is_declared(&self) -> bool {
        self.declared.is_some()
    }

    /// Whether the publication is layered at all (declared rids, or layered frames seen).
    pub fn is_layered(&self) -> bool {
        self.declared.as_ref().is_some_and(|d| !d.is_empty()) || !self.layers.is_empty()
    }

    /// Whether `rid` is (or may become) one of this publication's layers.
    pub fn knows(&self, rid: Rid) -> bool {
        match &self.declared {
            Some(d) => d.contains(&rid),
            None => self.layers.iter().any(|l| l.rid == rid),
        }
    }

    /// A layered frame arrived: its rid, media time (clock ticks), arrival, clock rate and, when
    /// known, its SSRC. Refused frames must be dropped (and counted) by the caller.
    pub fn admit(
        &mut self,
        rid: Rid,
        time: u64,
        arrival: Instant,
        clock_hz: u32,
        ssrc: Option<u32>,
    ) -> Result<Admitted, Refusal> {
        let index = match self.layers.iter().position(|l| l.rid == rid) {
            Some(i) => i,
            None => {
                match &self.declared {
                    Some(d) if d.contains(&rid) => {}
                    Some(d) if d.is_empty() && self.layers.len() < MAX_LAYERS => {}
                    Some(d) if d.is_empty() => return Err(Refusal::TooManyLayers),
                    Some(_) if self.excess.contains(&rid) => {
                        return Err(Refusal::TooManyLayers);
                    }
                    Some(_) => return Err(Refusal::UnknownRid),
                    None if self.layers.len() < MAX_LAYERS => {}
                    None => return Err(Refusal::TooManyLayers),
                }
                self.insert_layer(rid, ssrc)
            }
        };
        let Some(layer) = self.layers.get_mut(index) else {
            return Err(Refusal::UnknownRid);
        };
        let ssrc_changed = matches!((layer.ssrc, ssrc), (Some(a), Some(b)) if a != b);
        if ssrc.is_some() {
            layer.ssrc = ssrc;
        }
        let time_jumped = layer
            .last
            .is_some_and(|(at, t)| time_jumps(at, t, arrival, time, clock_hz));
        if ssrc_changed || time_jumped {
            layer.epoch = layer.epoch.wrapping_add(1);
        }
        layer.last = Some((arrival, time));
        layer.paused = false;
        Ok(Admitted {
            index,
            epoch: layer.epoch,
            ssrc_changed,
            time_jumped,
        })
    }

    /// Starts a layer over as if its SSRC had changed (its epoch grows): subscribers on it
    /// start it again at its next keyframe, numbered on from what they were sent. For a relayed
    /// layer whose packets were withheld after a gap until that keyframe.
    pub fn restart(&mut self, rid: Rid) {
        if let Some(l) = self.layers.iter_mut().find(|l| l.rid == rid) {
            l.epoch = l.epoch.wrapping_add(1);
        }
    }

    /// Counts an admitted frame's payload bytes into its layer's bitrate (at `index`, as
    /// [`Admitted::index`] gave it).
    pub fn measure(&mut self, index: usize, bytes: usize, arrival: Instant) {
        if let Some(l) = self.layers.get_mut(index) {
            l.rate.add(bytes, arrival);
        }
    }

    /// A layer's measured bitrate (bits/s over [`RATE_WINDOW`]); `None` until it has been
    /// measured for a whole window.
    pub fn bitrate(&self, rid: Rid, now: Instant) -> Option<u64> {
        self.layers
            .iter()
            .find(|l| l.rid == rid)
            .and_then(|l| l.rate.bitrate(now))
    }

    /// A new layer, in ASCII order of rids, starting at the epoch floor; its index.
    fn insert_layer(&mut self, rid: Rid, ssrc: Option<u32>) -> usize {
        let at = self
            .layers
            .iter()
            .position(|l| ascii_cmp(&l.rid, &rid).is_gt())
            .unwrap_or(self.layers.len());
        self.layers.insert(
            at,
            Layer {
                rid,
                last: None,
                ssrc,
                epoch: self.epoch_floor,
                paused: false,
                origin_flowing: None,
                rate: RateMeter::default(),
                data: T::default(),
            },
        );
        at
    }

    /// Of a relayed publication: the layers the origin's node says the track has, and which
    /// flow there (at most [`MAX_LAYERS`] are kept, in ASCII order). They become the declared
    /// layers; whether one flows is then the origin's word, not the arrivals here.
    pub fn announce(&mut self, layers: &[(Rid, bool)]) {
        let mut rids: Vec<Rid> = layers.iter().map(|(r, _)| *r).collect();
        rids.sort_by(ascii_cmp);
        rids.dedup();
        self.declare(&rids);
        for (rid, flowing) in layers.iter().take(MAX_LAYERS) {
            let at = match self.layers.iter().position(|l| l.rid == *rid) {
                Some(at) => at,
                None => self.insert_layer(*rid, None),
            };
            if let Some(l) = self.layers.get_mut(at) {
                l.origin_flowing = Some(*flowing);
            }
        }
    }

    /// Each layer and whether it is flowing now, in ASCII order: what this node tells the
    /// nodes that pull the publication from it.
    pub fn states(&self, now: Instant) -> Vec<(Rid, bool)> {
        self.layers
            .iter()
            .map(|l| (l.rid, layer_flowing(l, now)))
            .collect()
    }

    /// str0m reported a layer's stream paused or resumed.
    pub fn set_paused(&mut self, rid: Rid, paused: bool) {
        if let Some(l) = self.layers.iter_mut().find(|l| l.rid == rid) {
            l.paused = paused;
        }
    }

    /// Whether a layer is flowing: frames within [`LAYER_IDLE_AFTER`] and not paused.
    pub fn available(&self, rid: Rid, now: Instant) -> bool {
        self.layers
            .iter()
            .find(|l| l.rid == rid)
            .is_some_and(|l| layer_flowing(l, now))
    }

    /// The flowing layers' rids, in ASCII order.
    pub fn flowing(&self, now: Instant) -> impl Iterator<Item = Rid> + '_ {
        self.layers
            .iter()
            .filter(move |l| layer_flowing(l, now))
            .map(|l| l.rid)
    }

    /// The layer of `rid`.
    pub fn layer(&self, rid: Rid) -> Option<&Layer<T>> {
        self.layers.iter().find(|l| l.rid == rid)
    }

    /// The layer of `rid`, to update the caller's data.
    pub fn layer_mut(&mut self, rid: Rid) -> Option<&mut Layer<T>> {
        self.layers.iter_mut().find(|l| l.rid == rid)
    }

    /// The layer at `index` (as [`Admitted::index`] gave it).
    pub fn at_mut(&mut self, index: usize) -> Option<&mut Layer<T>> {
        self.layers.get_mut(index)
    }

    /// Every layer, in ASCII order of the rids.
    pub fn layers(&self) -> &[Layer<T>] {
        &self.layers
    }

    /// Every layer, to update the caller's data.
    pub fn layers_mut(&mut self) -> &mut [Layer<T>] {
        &mut self.layers
    }

    /// [`LayerTable::choose`], then no better than `cap` (a bandwidth cap, see [`Governor`]):
    /// the first flowing layer at or after the cap in ASCII order, when the choice is better.
    pub fn choose_capped(&self, prefs: &Prefs, cap: Option<Rid>, now: Instant) -> Option<Rid> {
        let choice = self.choose(prefs, now)?;
        let Some(cap) = cap.filter(|c| ascii_cmp(c, &choice).is_gt()) else {
            return Some(choice);
        };
        // The cap's layer (or one after it) when flowing; else the lowest flowing one after the
        // choice, so a stopped cap layer does not lift the cap.
        self.flowing(now)
            .find(|r| !ascii_cmp(r, &cap).is_lt())
            .or_else(|| {
                self.flowing(now)
                    .filter(|r| !ascii_cmp(r, &choice).is_lt())
                    .last()
            })
            .or(Some(choice))
    }

    /// The layer a subscriber with `prefs` should receive now, if any.
    pub fn choose(&self, prefs: &Prefs, now: Instant) -> Option<Rid> {
        let Some(preferred) = prefs.preferred_rid else {
            return self.flowing(now).next();
        };
        if self.available(preferred, now) {
            return Some(preferred);
        }
        match prefs.rid_not_available {
            // Wait for the preferred layer.
            Ordering::None => Some(preferred),
            Ordering::Asciibetical => {
                let flowing: Vec<Rid> = self.flowing(now).collect();
                flowing
                    .iter()
                    .find(|r| ascii_cmp(r, &preferred).is_gt())
                    .or_else(|| {
                        flowing
                            .iter()
                            .rev()
                            .find(|r| ascii_cmp(r, &preferred).is_lt())
                    })
                    .copied()
                    .or(Some(preferred))
            }
        }
    }
}

impl<T> Layer<T> {
    /// The layer's epoch (see [`Admitted::epoch`]).
    pub fn epoch(&self) -> u32 {
        self.epoch
    }
}

fn layer_flowing<T>(l: &Layer<T>, now: Instant) -> bool {
    !l.paused
        && match l.origin_flowing {
            Some(flowing) => flowing,
            None => l
                .last
                .is_some_and(|(at, _)| now.saturating_duration_since(at) < LAYER_IDLE_AFTER),
        }
}

/// Whether a media time moved further than [`MAX_TIME_DRIFT`] from what the arrival times say.
fn time_jumps(prev_at: Instant, prev: u64, at: Instant, time: u64, clock_hz: u32) -> bool {
    let clock = u128::from(clock_hz.max(1));
    let elapsed = ticks(at.saturating_duration_since(prev_at), clock);
    let tolerance = ticks(MAX_TIME_DRIFT, clock);
    let moved = i128::from(time) - i128::from(prev);
    (moved - elapsed as i128).unsigned_abs() > tolerance
}

fn ticks(d: Duration, clock: u128) -> u128 {
    d.as_micros().saturating_mul(clock) / 1_000_000
}

/// Bytes of one layer over the last [`RATE_WINDOW`], in fixed buckets (bounded memory, no
/// allocation per frame).
#[derive(Debug, Clone, Default)]
struct RateMeter {
    /// The first frame's arrival: buckets are counted from it.
    origin: Option<Instant>,
    /// The newest bucket written (counted from `origin`).
    head: u64,
    /// A ring: the bucket being filled and the [`RATE_BUCKETS`] complete ones before it.
    bytes: [u64; RATE_BUCKETS + 1],
    /// The last whole window's rate that was not zero: what a layer that no longer reaches
    /// this node (an edge stopped pulling it) is still worth. Read as zero, it would fit any
    /// estimate, and a viewer moved down would be moved back up to it at once, over and over.
    last_nonzero: Option<u64>,
}

impl RateMeter {
    fn bucket_of(origin: Instant, at: Instant) -> u64 {
        let bucket = (RATE_WINDOW / RATE_BUCKETS as u32).as_micros().max(1);
        u64::try_from(at.saturating_duration_since(origin).as_micros() / bucket).unwrap_or(u64::MAX)
    }

    fn add(&mut self, bytes: usize, at: Instant) {
        let origin = *self.origin.get_or_insert(at);
        let n = Self::bucket_of(origin, at);
        let ring = self.bytes.len() as u64;
        if n > self.head {
            if let Some(rate) = self.window_rate(origin, at).filter(|r| *r > 0) {
                self.last_nonzero = Some(rate);
            }
            // Buckets skipped since the last frame held nothing.
            for k in (self.head + 1..=n).rev().take(self.bytes.len()) {
                if let Some(b) = self.bytes.get_mut((k % ring) as usize) {
                    *b = 0;
                }
            }
            self.head = n;
        }
        // A frame stamped before the newest bucket (should not happen) counts into it.
        if let Some(b) = self.bytes.get_mut((self.head % ring) as usize) {
            *b = b.saturating_add(bytes as u64);
        }
    }

    /// Bits per second over the [`RATE_BUCKETS`] complete buckets before `now`'s; `None`
    /// until the layer has been measured that long. A window with nothing in it gives the last
    /// rate that was not zero.
    fn bitrate(&self, now: Instant) -> Option<u64> {
        let origin = self.origin?;
        match self.window_rate(origin, now)? {
            0 => Some(self.last_nonzero.unwrap_or(0)),
            rate => Some(rate),
        }
    }

    fn window_rate(&self, origin: Instant, now: Instant) -> Option<u64> {
        let n = Self::bucket_of(origin, now);
        let first = n.checked_sub(RATE_BUCKETS as u64)?;
        let ring = self.bytes.len() as u64;
        let bytes: u64 = (first..n)
            // Buckets after the newest written one held nothing; ones older than the ring were
            // overwritten.
            .filter(|k| *k <= self.head && self.head - k < ring)
            .filter_map(|k| self.bytes.get((k % ring) as usize))
            .sum();
        let micros = u64::try_from(RATE_WINDOW.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        Some(bytes.saturating_mul(8).saturating_mul(1_000_000) / micros)
    }
}

/// One subscriber's bandwidth-driven layer cap (`priorityOrdering: "asciibetical"` with a
/// bandwidth estimate): given the estimate for its track and the measured bitrate of each
/// layer, says when to move down (at once, to the best layer that fits) and back up (to the
/// best layer that fits with [`UP_MARGIN_PERCENT`] to spare, after [`UP_HOLD`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Governor {
    /// The best layer the estimate allows, when it is worse than the preferred one.
    cap: Option<Rid>,
    /// Since when the estimate has had room for a better layer than the current one.
    room_since: Option<Instant>,
    /// The last move down.
    last_down: Option<Instant>,
}

impl Governor {
    /// The cap in force.
    pub fn cap(&self) -> Option<Rid> {
        self.cap
    }

    /// A new estimate (bits/s) for a subscriber receiving `current`; `candidates` are the
    /// layers it may receive, best first, the first being the one its preferences choose, each
    /// with its measured bitrate when known. Returns the layer to move to when that changes.
    pub fn decide(
        &mut self,
        estimate: u64,
        current: Rid,
        candidates: &[(Rid, Option<u64>)],
        now: Instant,
    ) -> Option<Rid> {
        let at = candidates.iter().position(|(r, _)| *r == current)?;
        let (worse, better) = (candidates.get(at + 1..)?, candidates.get(..at)?);
        let current_rate = candidates.get(at).and_then(|(_, rate)| *rate);
        if current_rate.is_some_and(|rate| estimate < rate) {
            self.room_since = None;
            // The best worse layer that fits; the worst one when none does.
            let to = worse
                .iter()
                .find(|(_, rate)| rate.is_some_and(|r| r <= estimate))
                .or(worse.last())
                .map(|(r, _)| *r)?;
            self.cap = Some(to);
            self.last_down = Some(now);
            return Some(to);
        }
        let fits = |rate: u64| rate.saturating_mul(UP_MARGIN_PERCENT) / 100 <= estimate;
        let Some(to) = better
            .iter()
            .find(|(_, rate)| rate.is_some_and(fits))
            .map(|(r, _)| *r)
        else {
            self.room_since = None;
            return None;
        };
        let since = *self.room_since.get_or_insert(now);
        let held = |t: Instant| now.saturating_duration_since(t) >= UP_HOLD;
        if !held(since) || self.last_down.is_some_and(|t| !held(t)) {
            return None;
        }
        self.room_since = None;
        // Back at the preferred layer: no cap.
        self.cap = candidates
            .first()
            .filter(|(best, _)| *best != to)
            .map(|_| to);
        Some(to)
    }
}

/// A subscriber's media times: each layer has its own RTP time base, so the subscriber's time
/// is the source time plus an offset chosen at every switch (or restart of its layer), such that
/// it goes on from the last time sent by the wallclock time elapsed. Never goes backwards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rebase {
    /// Added (wrapping) to the source time.
    offset: u64,
    /// The last time handed out and when its frame arrived.
    last: Option<(u64, Instant)>,
}

impl Rebase {
    /// The subscriber's time for a frame of source time `time` that arrived at `arrival`;
    /// `resync` at the first frame after a switch or a restart of the layer.
    pub fn map(&mut self, time: u64, arrival: Instant, clock_hz: u32, resync: bool) -> u64 {
        let out = match self.last {
            None => {
                self.offset = 0;
                time
            }
            Some((last, last_at)) if resync => {
                let elapsed = ticks(
                    arrival.saturating_duration_since(last_at),
                    u128::from(clock_hz.max(1)),
                );
                let step = u64::try_from(elapsed).unwrap_or(u64::MAX).max(1);
                let out = last.saturating_add(step);
                self.offset = out.wrapping_sub(time);
                out
            }
            // Within a layer the source times are in order; a frame older than the last one
            // sent (should not happen after the table's jump check) is held at the last time.
            Some((last, _)) => time.wrapping_add(self.offset).max(last),
        };
        self.last = Some((out, arrival));
        out
    }
}

/// What a subscriber does with one frame of a layered publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it, with this media time.
    Forward {
        /// The subscriber's media time for the frame.
        time: u64,
        /// This frame starts a layer for the subscriber (a switch, or its first frame).
        switched: bool,
    },
    /// Not this subscriber's layer (or not yet: it keeps its old layer until the switch).
    Skip,
    /// The subscriber's target layer, but a delta frame: ask that layer for a keyframe.
    WantKeyframe,
}

/// One frame of a layer, as a [`Selector`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerFrame {
    /// The layer's rid.
    pub rid: Rid,
    /// The layer's epoch when the frame was admitted ([`Admitted::epoch`]).
    pub epoch: u32,
    /// A keyframe: a subscriber can start on the layer here.
    pub keyframe: bool,
    /// The frame's source media time, in clock ticks.
    pub time: u64,
    /// When it arrived.
    pub arrival: Instant,
}

/// One subscriber's layer choice: its preferences, the layer it receives and the one it moves
/// to on that layer's next keyframe.
#[derive(Debug, Clone, Copy, Default)]
pub struct Selector {
    /// What the subscriber asked for.
    pub prefs: Prefs,
    /// The layer being forwarded and its epoch.
    current: Option<(Rid, u32)>,
    /// The layer it should receive, as last chosen.
    target: Option<Rid>,
    /// Since when it has had no flowing layer and waited for the target's keyframe.
    starved_since: Option<Instant>,
    rebase: Rebase,
    /// The bandwidth-driven cap on its layer.
    governor: Governor,
}

impl Selector {
    /// A selector for `prefs`, receiving nothing yet.
    pub fn new(prefs: Prefs) -> Selector {
        Selector {
            prefs,
            ..Selector::default()
        }
    }

    /// The layer being forwarded to the subscriber.
    pub fn current(&self) -> Option<Rid> {
        self.current.map(|(r, _)| r)
    }

    /// The layer the subscriber is moving to, when it differs from the current one.
    pub fn switching_to(&self) -> Option<Rid> {
        self.target.filter(|t| Some(*t) != self.current())
    }

    /// New preferences (`tracks/update`); the switch happens on the target's next keyframe.
    /// Returns the layer to ask a keyframe of, if the subscriber now has to move.
    pub fn set_prefs<T: Default>(
        &mut self,
        prefs: Prefs,
        table: &LayerTable<T>,
        now: Instant,
    ) -> Option<Rid> {
        self.prefs = prefs;
        if prefs.priority_ordering == Ordering::None {
            self.governor = Governor::default();
        }
        self.target = self.choose(table, now);
        self.switching_to()
    }

    /// The layer this subscriber should receive now: its preferences, then the bandwidth cap.
    pub fn choose<T: Default>(&self, table: &LayerTable<T>, now: Instant) -> Option<Rid> {
        table.choose_capped(&self.prefs, self.governor.cap, now)
    }

    /// The bandwidth cap in force, if any.
    pub fn bandwidth_cap(&self) -> Option<Rid> {
        self.governor.cap
    }

    /// A bandwidth estimate (bits/s) for this subscriber's track. With `priorityOrdering:
    /// "asciibetical"`, returns the layer to ask a keyframe of when the subscriber now has to
    /// move (the switch itself happens on that keyframe, as for `tracks/update`).
    pub fn on_estimate<T: Default>(
        &mut self,
        estimate: u64,
        table: &LayerTable<T>,
        now: Instant,
    ) -> Option<Rid> {
        if self.prefs.priority_ordering != Ordering::Asciibetical {
            return None;
        }
        let preferred = table.choose(&self.prefs, now)?;
        let current = self.choose(table, now)?;
        let candidates: Vec<(Rid, Option<u64>)> = table
            .flowing(now)
            .filter(|r| !ascii_cmp(r, &preferred).is_lt())
            .map(|r| (r, table.bitrate(r, now)))
            .collect();
        self.governor.decide(estimate, current, &candidates, now)?;
        self.target = self.choose(table, now);
        self.switching_to()
    }

    /// (bits/s of the layer it should receive now, bits/s its preferred layer needs with the
    /// up margin), as far as measured: what its session's estimator is told to aim for.
    pub fn bitrates<T: Default>(&self, table: &LayerTable<T>, now: Instant) -> (u64, u64) {
        let rate = |r: Option<Rid>| r.and_then(|r| table.bitrate(r, now)).unwrap_or(0);
        let current = rate(self.choose(table, now));
        let desired = rate(table.choose(&self.prefs, now)).saturating_mul(UP_MARGIN_PERCENT) / 100;
        (current, desired)
    }

    /// A frame of one of the publication's layers; `clock_hz` is the codec clock.
    pub fn on_frame<T: Default>(
        &mut self,
        table: &LayerTable<T>,
        f: LayerFrame,
        clock_hz: u32,
    ) -> Verdict {
        self.target = self.choose(table, f.arrival);
        let on_current = self.current == Some((f.rid, f.epoch));
        if self.target != Some(f.rid) && self.current.is_some_and(|(rid, _)| rid == f.rid) {
            if on_current {
                // The current layer; while another one is the target, it keeps flowing until
                // the target's keyframe arrives.
                let time = self.rebase.map(f.time, f.arrival, clock_hz, false);
                return Verdict::Forward {
                    time,
                    switched: false,
                };
            }
            // The current layer started over (a relay gap, an SSRC change, a time jump) while
            // the subscriber moves to another one: its new run goes on from its keyframe, as a
            // switch, rather than leaving the subscriber with nothing until the target's
            // keyframe (which may be long in coming). Its delta frames until then ask for that
            // keyframe.
            if !f.keyframe {
                return Verdict::WantKeyframe;
            }
            self.current = Some((f.rid, f.epoch));
            let time = self.rebase.map(f.time, f.arrival, clock_hz, true);
            return Verdict::Forward {
                time,
                switched: true,
            };
        }
        if self.target == Some(f.rid) && !on_current {
            // With no layer flowing to it the subscriber starves (its layer stopped, or started
            // over and has not sent its keyframe yet); past the wait it takes the delta frames
            // (while the old layer flows, that one is better than broken frames).
            let starved = self.current.is_none_or(|(rid, epoch)| {
                !table.available(rid, f.arrival)
                    || table.layer(rid).is_some_and(|l| l.epoch() != epoch)
            });
            let since = match (starved, self.starved_since) {
                (false, _) => None,
                (true, None) => Some(f.arrival),
                (true, Some(t)) => Some(t),
            };
            self.starved_since = since;
            let gives_up =
                since.is_some_and(|t| f.arrival.saturating_duration_since(t) >= KEYFRAME_WAIT_MAX);
            if !f.keyframe && !gives_up {
                return Verdict::WantKeyframe;
            }
            self.starved_since = None;
            self.current = Some((f.rid, f.epoch));
            let time = self.rebase.map(f.time, f.arrival, clock_hz, true);
            return Verdict::Forward {
                time,
                switched: true,
            };
        }
        // The current layer, which is also the target.
        if on_current {
            let time = self.rebase.map(f.time, f.arrival, clock_hz, false);
            return Verdict::Forward {
                time,
                switched: false,
            };
        }
        Verdict::Skip
    }
}

/// Parses a rid as the API gives it (RFC 8851 `rid-id`, which str0m holds up to 8 characters):
/// `None` for anything else, which the API refuses rather than silently truncating.
pub fn parse_rid(s: &str) -> Option<Rid> {
    let ok = !s.is_empty()
        && s.len() <= 8
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| Rid::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOCK: u32 = 90_000;

    fn rid(s: &str) -> Rid {
        Rid::from(s)
    }

    /// A table with `f`, `h`, `q` declared, each having sent one frame at `at`.
    fn table(at: Instant) -> LayerTable<()> {
        let mut t = LayerTable::default();
        t.declare(&[rid("q"), rid("h"), rid("f")]);
        for (i, r) in ["q", "h", "f"].into_iter().enumerate() {
            t.admit(rid(r), 1000 * i as u64, at, CLOCK, Some(i as u32))
                .expect("declared");
        }
        t
    }

    fn frame(r: &str, keyframe: bool, time: u64, arrival: Instant) -> LayerFrame {
        LayerFrame {
            rid: rid(r),
            epoch: 0,
            keyframe,
            time,
            arrival,
        }
    }

    #[test]
    fn layers_are_kept_in_ascii_order_and_bounded() {
        let now = Instant::now();
        let mut t: LayerTable<()> = LayerTable::default();
        assert_eq!(t.declare(&[rid("q"), rid("h"), rid("f"), rid("z")]), 1);
        for r in ["q", "f", "h"] {
            t.admit(rid(r), 0, now, CLOCK, None).expect("declared");
        }
        let order: Vec<String> = t.layers().iter().map(|l| l.rid.to_string()).collect();
        assert_eq!(order, ["f", "h", "q"]);
        assert_eq!(
            t.admit(rid("z"), 0, now, CLOCK, None),
            Err(Refusal::TooManyLayers)
        );
        assert_eq!(
            t.admit(rid("y"), 0, now, CLOCK, None),
            Err(Refusal::UnknownRid)
        );
        // Undeclared rids: the first three seen are the layers.
        let mut t: LayerTable<()> = LayerTable::default();
        for r in ["a", "b", "c"] {
            t.admit(rid(r), 0, now, CLOCK, None).expect("room");
        }
        assert_eq!(
            t.admit(rid("d"), 0, now, CLOCK, None),
            Err(Refusal::TooManyLayers)
        );
    }

    #[test]
    fn an_ssrc_change_or_a_time_jump_starts_the_layer_over() {
        let now = Instant::now();
        let mut t = table(now);
        let later = now + Duration::from_millis(33);
        let a = t
            .admit(rid("f"), 2000 + 2970, later, CLOCK, Some(2))
            .expect("f");
        assert_eq!((a.epoch, a.ssrc_changed, a.time_jumped), (0, false, false));
        let a = t.admit(rid("f"), 8000, later, CLOCK, Some(99)).expect("f");
        assert!(a.ssrc_changed && !a.time_jumped);
        assert_eq!(a.epoch, 1);
        let a = t
            .admit(rid("f"), 8000 + 60 * 90_000, later, CLOCK, Some(99))
            .expect("f");
        assert!(a.time_jumped && !a.ssrc_changed);
        assert_eq!(a.epoch, 2);
        // Backwards is a jump too.
        let a = t.admit(rid("f"), 0, later, CLOCK, Some(99)).expect("f");
        assert!(a.time_jumped);
    }

    #[test]
    fn a_layer_removed_and_made_again_never_reuses_an_epoch() {
        let now = Instant::now();
        let mut t = table(now);
        // f starts over twice (epoch 2), then goes away with h, and comes back.
        t.restart(rid("f"));
        t.restart(rid("f"));
        t.declare(&[rid("q")]);
        assert!(t.layer(rid("f")).is_none());
        t.declare(&[rid("q"), rid("h"), rid("f")]);
        let f = t.admit(rid("f"), 0, now, CLOCK, Some(7)).expect("f");
        assert_eq!(f.epoch, 3, "past the removed f's epochs");
        // Announced by an origin, as a relayed layer is: the same.
        t.announce(&[(rid("q"), true)]);
        t.announce(&[(rid("q"), true), (rid("h"), true)]);
        assert_eq!(t.layer(rid("h")).map(|l| l.epoch()), Some(4));
        // A layer that stayed keeps its epoch.
        assert_eq!(t.layer(rid("q")).map(|l| l.epoch()), Some(0));
    }

    #[test]
    fn the_choice_follows_preference_and_fallback_policy() {
        let now = Instant::now();
        let t = table(now);
        let any = Prefs::default();
        assert_eq!(t.choose(&any, now), Some(rid("f")), "the best layer");
        let h = Prefs {
            preferred_rid: Some(rid("h")),
            ..Prefs::default()
        };
        assert_eq!(t.choose(&h, now), Some(rid("h")));

        // Only q flows on: h waits with `none`, falls back to q with `asciibetical`.
        let mut t = t;
        let later = now + LAYER_IDLE_AFTER;
        t.admit(rid("q"), 1000 + 135_000, later, CLOCK, Some(0))
            .expect("q");
        assert_eq!(t.choose(&h, later), Some(rid("h")), "waits");
        let h_fallback = Prefs {
            rid_not_available: Ordering::Asciibetical,
            ..h
        };
        assert_eq!(t.choose(&h_fallback, later), Some(rid("q")));
        // From the last layer the fallback goes to the nearest before it.
        t.set_paused(rid("q"), true);
        t.admit(rid("f"), 2000 + 135_000, later, CLOCK, Some(2))
            .expect("f");
        let q_fallback = Prefs {
            preferred_rid: Some(rid("q")),
            ..h_fallback
        };
        assert_eq!(t.choose(&q_fallback, later), Some(rid("f")));
        assert_eq!(t.choose(&any, later), Some(rid("f")));
        // Only f flows: a cap of h (or q) finds no flowing layer from it on, f stays.
        assert_eq!(t.choose_capped(&any, Some(rid("h")), later), Some(rid("f")));

        // A bandwidth cap applies after the preferences: the cap's layer, or, when it stopped,
        // the lowest flowing layer; never better than the preferences.
        let mut t = table(now);
        assert_eq!(t.choose_capped(&any, Some(rid("h")), now), Some(rid("h")));
        t.set_paused(rid("q"), true);
        assert_eq!(t.choose_capped(&any, Some(rid("q")), now), Some(rid("h")));
        let prefer_q = Prefs {
            preferred_rid: Some(rid("q")),
            ..Prefs::default()
        };
        t.set_paused(rid("q"), false);
        assert_eq!(
            t.choose_capped(&prefer_q, Some(rid("h")), now),
            Some(rid("q"))
        );
    }

    #[test]
    fn a_switch_waits_for_the_target_keyframe_and_times_stay_continuous() {
        let start = Instant::now();
        let t = table(start);
        let mut sel = Selector::new(Prefs {
            preferred_rid: Some(rid("h")),
            ..Prefs::default()
        });
        // Delta first: nothing, and a keyframe is wanted.
        assert_eq!(
            sel.on_frame(&t, frame("h", false, 1000, start), CLOCK),
            Verdict::WantKeyframe
        );
        assert_eq!(
            sel.on_frame(&t, frame("f", true, 2000, start), CLOCK),
            Verdict::Skip
        );
        let mut out = Vec::new();
        let mut at = start;
        // Each layer has its own time base, far apart.
        let base = |r: &str| match r {
            "f" => 10_000_000u64,
            "h" => 50_000_000,
            _ => 90_000_000,
        };
        for n in 0..30u64 {
            at += Duration::from_millis(33);
            if n == 10 {
                assert_eq!(sel.set_prefs(Prefs::default(), &t, at), Some(rid("f")));
            }
            for r in ["f", "h", "q"] {
                let keyframe = n == 0 || (r == "f" && n == 15);
                match sel.on_frame(&t, frame(r, keyframe, base(r) + n * 2970, at), CLOCK) {
                    Verdict::Forward { time, .. } => out.push((r, time, at)),
                    Verdict::Skip | Verdict::WantKeyframe => {}
                }
            }
        }
        // h until f's keyframe at round 15 (not at the request in round 10), then f.
        let layers: Vec<&str> = out.iter().map(|(r, _, _)| *r).collect();
        assert_eq!(&layers[..15], &["h"; 15]);
        assert_eq!(layers.len(), 30, "one frame per round");
        assert!(layers[15..].iter().all(|r| *r == "f"));
        assert_eq!(sel.current(), Some(rid("f")));
        for pair in out.windows(2) {
            let ((_, t0, a0), (_, t1, a1)) = (pair[0], pair[1]);
            assert!(t1 >= t0, "monotonic");
            let ticks = (a1 - a0).as_micros() as u64 * 90 / 1000;
            assert!(
                t1 - t0 <= ticks + 30,
                "no jump: {} ticks for {ticks}",
                t1 - t0
            );
        }
    }

    #[test]
    fn a_restarted_layer_is_resumed_on_its_keyframe_without_a_jump() {
        let start = Instant::now();
        let t = table(start);
        let mut sel = Selector::new(Prefs::default());
        let Verdict::Forward { time: t0, .. } =
            sel.on_frame(&t, frame("f", true, 5_000, start), CLOCK)
        else {
            panic!("starts on f's keyframe");
        };
        let at = start + Duration::from_millis(100);
        let restarted = LayerFrame {
            epoch: 1,
            ..frame("f", false, 77, at)
        };
        assert_eq!(sel.on_frame(&t, restarted, CLOCK), Verdict::WantKeyframe);
        let restarted = LayerFrame {
            keyframe: true,
            ..restarted
        };
        let Verdict::Forward { time, switched } = sel.on_frame(&t, restarted, CLOCK) else {
            panic!("resumes on the keyframe");
        };
        assert!(switched);
        assert_eq!(time, t0 + 9_000, "100 ms on");
    }

    #[test]
    fn a_current_layer_that_starts_over_during_a_switch_goes_on_from_its_keyframe() {
        let start = Instant::now();
        let mut t = table(start);
        let mut sel = Selector::new(Prefs {
            preferred_rid: Some(rid("q")),
            ..Prefs::default()
        });
        let Verdict::Forward { time: t0, .. } =
            sel.on_frame(&t, frame("q", true, 9_000, start), CLOCK)
        else {
            panic!("starts on q's keyframe");
        };
        assert_eq!(sel.set_prefs(Prefs::default(), &t, start), Some(rid("f")));
        // q starts over before f's keyframe: its deltas ask for its keyframe, f's deltas for
        // f's, and nothing is forwarded.
        t.restart(rid("q"));
        let at = start + Duration::from_millis(100);
        let q = |keyframe, time, arrival| LayerFrame {
            epoch: 1,
            ..frame("q", keyframe, time, arrival)
        };
        assert_eq!(
            sel.on_frame(&t, q(false, 77, at), CLOCK),
            Verdict::WantKeyframe
        );
        assert_eq!(
            sel.on_frame(&t, frame("f", false, 5_000, at), CLOCK),
            Verdict::WantKeyframe
        );
        // q's keyframe: q goes on, as a switch, its time 200 ms after the last one sent.
        let at = start + Duration::from_millis(200);
        assert_eq!(
            sel.on_frame(&t, q(true, 3_000, at), CLOCK),
            Verdict::Forward {
                time: t0 + 18_000,
                switched: true
            }
        );
        assert_eq!(sel.current(), Some(rid("q")));
        assert_eq!(sel.switching_to(), Some(rid("f")), "still moving to f");
        assert!(matches!(
            sel.on_frame(&t, q(false, 6_000, at), CLOCK),
            Verdict::Forward {
                switched: false,
                ..
            }
        ));
        // Then f's keyframe.
        assert!(matches!(
            sel.on_frame(&t, frame("f", true, 8_000, at), CLOCK),
            Verdict::Forward { switched: true, .. }
        ));
        assert_eq!(sel.current(), Some(rid("f")));
        assert_eq!(sel.on_frame(&t, q(false, 9_000, at), CLOCK), Verdict::Skip);
    }

    #[test]
    fn a_subscriber_whose_layer_started_over_takes_the_target_deltas_after_the_wait() {
        let start = Instant::now();
        let mut t = table(start);
        let mut sel = Selector::new(Prefs {
            preferred_rid: Some(rid("q")),
            ..Prefs::default()
        });
        assert!(matches!(
            sel.on_frame(&t, frame("q", true, 0, start), CLOCK),
            Verdict::Forward { .. }
        ));
        sel.set_prefs(Prefs::default(), &t, start);
        let a = t.admit(rid("q"), 0, start, CLOCK, Some(1000)).expect("q");
        assert!(a.ssrc_changed);
        // Neither q's nor f's keyframe ever comes: f's deltas flow after the wait, as for a
        // subscriber with no layer flowing.
        let mut first = None;
        for n in 1..200u64 {
            let at = start + Duration::from_millis(33 * n);
            for r in ["f", "h", "q"] {
                t.admit(rid(r), n * 2970, at, CLOCK, None)
                    .expect("declared");
            }
            let q = LayerFrame {
                epoch: a.epoch,
                ..frame("q", false, n * 2970, at)
            };
            assert_ne!(sel.on_frame(&t, q, CLOCK), Verdict::Skip, "q is waited for");
            if let Verdict::Forward { .. } =
                sel.on_frame(&t, frame("f", false, n * 2970, at), CLOCK)
            {
                first = Some(at);
                break;
            }
        }
        let waited = first.expect("f's deltas flow in the end") - start;
        assert!(waited >= KEYFRAME_WAIT_MAX, "{waited:?}");
        assert_eq!(sel.current(), Some(rid("f")));
    }

    #[test]
    fn a_starving_subscriber_takes_deltas_after_the_keyframe_wait() {
        let start = Instant::now();
        let mut t: LayerTable<()> = LayerTable::default();
        let mut sel = Selector::new(Prefs::default());
        let mut verdicts = Vec::new();
        for n in 0..100u64 {
            let at = start + Duration::from_millis(33 * n);
            let a = t.admit(rid("f"), n * 2970, at, CLOCK, None).expect("room");
            let f = LayerFrame {
                epoch: a.epoch,
                ..frame("f", false, n * 2970, at)
            };
            verdicts.push(sel.on_frame(&t, f, CLOCK));
        }
        let first = verdicts
            .iter()
            .position(|v| matches!(v, Verdict::Forward { .. }))
            .expect("forwards in the end");
        assert!(
            verdicts[..first]
                .iter()
                .all(|v| *v == Verdict::WantKeyframe)
        );
        let waited = Duration::from_millis(33 * first as u64);
        assert!(
            waited >= KEYFRAME_WAIT_MAX && waited < KEYFRAME_WAIT_MAX + Duration::from_millis(40)
        );
    }

    /// `rid`'s layer at `kbps`, one 33 ms frame at a time, for `secs` from `start`.
    fn feed_rate(t: &mut LayerTable<()>, r: &str, kbps: u64, start: Instant, secs: u64) {
        let bytes = (kbps * 1000 / 8 * 33 / 1000) as usize;
        for n in 0..secs * 1000 / 33 {
            let at = start + Duration::from_millis(33 * n);
            let a = t
                .admit(rid(r), n * 2970, at, CLOCK, None)
                .expect("declared");
            t.measure(a.index, bytes, at);
        }
    }

    #[test]
    fn a_layer_bitrate_is_measured_over_the_window() {
        let start = Instant::now();
        let mut t: LayerTable<()> = LayerTable::default();
        t.declare(&[rid("f"), rid("h")]);
        feed_rate(&mut t, "f", 1000, start, 1);
        assert_eq!(
            t.bitrate(rid("f"), start + Duration::from_millis(990)),
            None,
            "not a whole window yet"
        );
        feed_rate(&mut t, "f", 1000, start, 3);
        let at = start + Duration::from_secs(3);
        let kbps = t.bitrate(rid("f"), at).expect("measured") / 1000;
        assert!((950..=1050).contains(&kbps), "{kbps} kbit/s");
        assert_eq!(t.bitrate(rid("h"), at), None, "h never sent");
        // A layer that stops decays within a window, then keeps its last rate (an edge that
        // stopped pulling it must not read it as free).
        let kbps = t.bitrate(rid("f"), at + RATE_WINDOW / 2).expect("measured") / 1000;
        assert!((400..=600).contains(&kbps), "{kbps} kbit/s");
        // (The window measured at f's last frame, which still held the first second's frames
        // fed twice above: 1,500.)
        let kbps = t.bitrate(rid("f"), at + RATE_WINDOW * 2).expect("measured") / 1000;
        assert!((950..=1550).contains(&kbps), "{kbps} kbit/s");
    }

    #[test]
    fn the_governor_moves_down_at_once_and_up_after_the_hold_with_a_margin() {
        let start = Instant::now();
        let layers = [
            (rid("f"), Some(1_500_000)),
            (rid("h"), Some(600_000)),
            (rid("q"), Some(150_000)),
        ];
        let mut g = Governor::default();
        // Room for f: nothing moves.
        assert_eq!(g.decide(2_000_000, rid("f"), &layers, start), None);
        // Below f: straight to the best layer that fits, h.
        assert_eq!(
            g.decide(1_000_000, rid("f"), &layers, start),
            Some(rid("h"))
        );
        assert_eq!(g.cap(), Some(rid("h")));
        // Below even q: the lowest layer.
        let at = start + Duration::from_millis(100);
        assert_eq!(g.decide(100_000, rid("h"), &layers, at), Some(rid("q")));
        assert_eq!(
            g.decide(100_000, rid("q"), &layers, at),
            None,
            "nothing lower"
        );
        // Back over f's bitrate, but not by the margin: stays (hysteresis), up to h only.
        let mut at = at;
        let mut moves = Vec::new();
        for _ in 0..200 {
            at += Duration::from_millis(100);
            let current = g.cap().unwrap_or(rid("f"));
            if let Some(to) = g.decide(1_600_000, current, &layers, at) {
                moves.push((to, at - start));
            }
        }
        assert_eq!(moves.len(), 1, "{moves:?}");
        let (to, when) = moves[0];
        assert_eq!(to, rid("h"), "f needs 1.875 Mbit/s with the margin");
        assert!(when >= UP_HOLD, "held off: {when:?}");
        // With the margin for f: back to the preferred layer, and no cap left.
        let from = at;
        let mut up = None;
        for _ in 0..100 {
            at += Duration::from_millis(100);
            if let Some(to) = g.decide(2_000_000, rid("h"), &layers, at) {
                up = Some((to, at - from));
                break;
            }
        }
        let (to, after) = up.expect("moves up");
        assert_eq!(to, rid("f"));
        assert!(after >= UP_HOLD, "held off again: {after:?}");
        assert_eq!(g.cap(), None);
    }

    #[test]
    fn an_estimate_around_a_layer_bitrate_does_not_flap() {
        let start = Instant::now();
        let layers = [(rid("f"), Some(1_000_000)), (rid("h"), Some(400_000))];
        let mut g = Governor::default();
        let mut current = rid("f");
        let mut moves = 0;
        // The estimate swings ±15 % around f's bitrate every 200 ms for a minute.
        for n in 0..300u64 {
            let estimate = if n % 2 == 0 { 1_150_000 } else { 850_000 };
            let at = start + Duration::from_millis(200 * n);
            if let Some(to) = g.decide(estimate, current, &layers, at) {
                current = to;
                moves += 1;
            }
        }
        assert_eq!(moves, 1, "one move down, never back up while it swings");
        assert_eq!(current, rid("h"));
    }

    #[test]
    fn unmeasured_layers_move_nothing_up_and_are_the_last_resort_down() {
        let start = Instant::now();
        let mut g = Governor::default();
        let layers = [(rid("f"), None), (rid("h"), Some(500_000))];
        assert_eq!(
            g.decide(100, rid("f"), &layers, start),
            None,
            "f unmeasured"
        );
        let layers = [
            (rid("f"), Some(2_000_000)),
            (rid("h"), None),
            (rid("q"), None),
        ];
        assert_eq!(g.decide(100, rid("f"), &layers, start), Some(rid("q")));
        assert_eq!(
            g.decide(10_000_000, rid("q"), &layers, start + UP_HOLD * 2),
            None
        );
        assert_eq!(
            g.decide(10_000_000, rid("q"), &layers, start + UP_HOLD * 3),
            Some(rid("f")),
            "held off from the first estimate with room"
        );
    }

    #[test]
    fn a_bandwidth_move_switches_on_the_target_keyframe_only_with_asciibetical() {
        let start = Instant::now();
        let mut t: LayerTable<()> = LayerTable::default();
        t.declare(&[rid("f"), rid("h"), rid("q")]);
        let mut at = start;
        let sizes = [("f", 4000usize), ("h", 1500), ("q", 400)];
        for n in 0..100u64 {
            at = start + Duration::from_millis(33 * n);
            for (r, bytes) in sizes {
                let a = t
                    .admit(rid(r), n * 2970, at, CLOCK, None)
                    .expect("declared");
                t.measure(a.index, bytes, at);
            }
        }
        let f_rate = t.bitrate(rid("f"), at).expect("measured");
        let h_rate = t.bitrate(rid("h"), at).expect("measured");
        let prefs = Prefs {
            preferred_rid: Some(rid("f")),
            priority_ordering: Ordering::Asciibetical,
            rid_not_available: Ordering::None,
        };
        let mut none = Selector::new(Prefs {
            priority_ordering: Ordering::None,
            ..prefs
        });
        assert_eq!(
            none.on_estimate(h_rate, &t, at),
            None,
            "priorityOrdering none"
        );
        let mut sel = Selector::new(prefs);
        assert_eq!(
            sel.on_frame(&t, frame("f", true, 0, at), CLOCK),
            Verdict::Forward {
                time: 0,
                switched: true
            }
        );
        assert_eq!(sel.on_estimate(f_rate * 2, &t, at), None);
        assert_eq!(sel.on_estimate(f_rate - 1, &t, at), Some(rid("h")));
        assert_eq!(
            sel.bitrates(&t, at),
            (h_rate, f_rate * UP_MARGIN_PERCENT / 100)
        );
        // f flows on until h's keyframe.
        assert!(matches!(
            sel.on_frame(&t, frame("f", false, 2970, at), CLOCK),
            Verdict::Forward { .. }
        ));
        assert_eq!(
            sel.on_frame(&t, frame("h", false, 2970, at), CLOCK),
            Verdict::WantKeyframe
        );
        assert!(matches!(
            sel.on_frame(&t, frame("h", true, 5940, at), CLOCK),
            Verdict::Forward { switched: true, .. }
        ));
        assert_eq!(sel.current(), Some(rid("h")));
        // tracks/update to priorityOrdering none lifts the cap: back to f on its keyframe.
        assert_eq!(
            sel.set_prefs(
                Prefs {
                    priority_ordering: Ordering::None,
                    ..prefs
                },
                &t,
                at
            ),
            Some(rid("f"))
        );
        assert_eq!(sel.bandwidth_cap(), None);
    }

    #[test]
    fn rids_from_the_api_are_checked() {
        assert_eq!(parse_rid("h"), Some(rid("h")));
        assert_eq!(parse_rid("hi-res_1"), Some(rid("hi-res_1")));
        assert_eq!(parse_rid(""), None);
        assert_eq!(parse_rid("toolongrid"), None);
        assert_eq!(parse_rid("a b"), None);
    }
}
