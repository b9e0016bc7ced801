//! Each simulcast layer relayed on its own: which layers of a relayed publication this node
//! pulls (the union of what its viewers' selectors and its own downstream nodes need), which
//! layers a downstream node gets from here, and what this node tells downstream nodes about the
//! layers it has (which exist, which flow).
//!
//! - *Upstream.* A relayed publication's subscription carries every layer until this node knows
//!   the layers (the origin's `Layers`). From then on it asks for the union of, per local
//!   viewer, the layer it receives, the one it moves to and the one its selector would choose
//!   now (so a fallback's next layer is already there), and of what each downstream node asks
//!   for. A viewer moving to another layer keeps the old one until its switch (on the new
//!   layer's keyframe): only then does the old layer leave the union. The set is recomputed on
//!   the events that change it and at housekeeping, and sent only when it changed, at most once
//!   per [`SET_LAYERS_INTERVAL`] per publication.
//! - *Downstream.* Frames of a layer a downstream did not ask for are not sent to it.
//! - *Announcements.* A layered publication tells each downstream its layers and whether each
//!   flows (from the publisher's streams, or at a hub from what the origin said), when it
//!   subscribes and when that changes, at most once per [`LAYERS_INTERVAL`] per publication.
//! - *Keyframes* of a relayed publication whose layers are known are asked for per layer
//!   (`fanout.rs` `request_layer_keyframe`, [`RelayOut::LayerKeyframeRequest`]).

use std::time::{Duration, Instant};

use str0m::media::Rid;

use super::Engine;
use super::publications::{Sink, Source, TrackKey};
use super::relay_messages::RelayOut;
use super::simulcast::MAX_LAYERS;
use crate::ids::{DownId, UpId};

/// A relayed publication's upstream layer set changes at most this often.
pub const SET_LAYERS_INTERVAL: Duration = Duration::from_millis(100);
/// A publication's layer states are announced downstream at most this often.
pub const LAYERS_INTERVAL: Duration = Duration::from_millis(250);
/// Layer announcements kept for upstreams whose publication is not registered yet (the
/// announcement can overtake it); past this the oldest are forgotten.
const MAX_EARLY_LAYERS: usize = 1024;

/// Which layers of a publication a relay subscription carries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RelayLayers {
    /// All of them (an unlayered track, or nothing known yet).
    #[default]
    All,
    /// These rids, in ASCII order, at most [`MAX_LAYERS`]. Unlayered frames always go.
    Only(Vec<Rid>),
}

impl RelayLayers {
    /// Whether a frame of layer `rid` is carried.
    pub fn carries(&self, rid: Rid) -> bool {
        match self {
            RelayLayers::All => true,
            RelayLayers::Only(rids) => rids.contains(&rid),
        }
    }
}

/// What one sink of a relayed publication needs from upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need<'a> {
    /// Every layer (a downstream that asks for all, or a viewer whose layer is not known yet).
    All,
    /// These layers.
    Layers(&'a [Rid]),
}

/// The union of what the sinks need: [`RelayLayers::All`] when one needs all; rids in ASCII
/// order, at most [`MAX_LAYERS`] (a table never holds more).
pub(crate) fn union<'a>(needs: impl IntoIterator<Item = Need<'a>>) -> RelayLayers {
    let mut rids: Vec<Rid> = Vec::with_capacity(MAX_LAYERS);
    for need in needs {
        match need {
            Need::All => return RelayLayers::All,
            Need::Layers(layers) => {
                for rid in layers {
                    if !rids.contains(rid) {
                        rids.push(*rid);
                    }
                }
            }
        }
    }
    rids.sort_by(|a, b| {
        let (a, b): (&str, &str) = (a, b);
        a.cmp(b)
    });
    if rids.len() > MAX_LAYERS {
        // More rids than a table holds: something is off, take everything rather than guess.
        return RelayLayers::All;
    }
    RelayLayers::Only(rids)
}

impl Engine {
    /// The layers the sinks of relayed publication `key` need now; `None` when it is not a
    /// relayed layered publication whose layers are known.
    fn wanted_layers(&self, key: &TrackKey, now: Instant) -> Option<RelayLayers> {
        let p = self.publications.get(key)?;
        if !matches!(p.source, Source::Relay(_)) || !p.layers.is_declared() {
            return None;
        }
        if p.subscribers.is_empty() {
            // Nothing to choose for: keep what is asked (the upstream is released soon).
            return None;
        }
        let mut per_sink: Vec<[Option<Rid>; 3]> = Vec::with_capacity(p.subscribers.len());
        let mut downs: Vec<&RelayLayers> = Vec::new();
        for sink in &p.subscribers {
            match sink {
                Sink::Session(sid, mid) => {
                    let sel = self
                        .sessions
                        .get(sid)
                        .and_then(|s| s.simulcast.get(mid))
                        .copied()
                        .unwrap_or_default();
                    per_sink.push([
                        sel.current(),
                        sel.switching_to(),
                        sel.choose(&p.layers, now),
                    ]);
                }
                Sink::Relay(down) => match self.relay_down_layers.get(down) {
                    Some(l) => downs.push(l),
                    None => return Some(RelayLayers::All),
                },
            }
        }
        let viewer_layers: Vec<Vec<Rid>> = per_sink
            .iter()
            .map(|l| l.iter().flatten().copied().collect())
            .collect();
        let needs = viewer_layers
            .iter()
            .map(|l| {
                if l.is_empty() {
                    Need::All
                } else {
                    Need::Layers(l)
                }
            })
            .chain(downs.into_iter().map(|d| match d {
                RelayLayers::All => Need::All,
                RelayLayers::Only(rids) => Need::Layers(rids),
            }));
        Some(union(needs))
    }

    /// Recomputes which layers relayed publication `key` pulls, and asks upstream when that
    /// changed (at most once per [`SET_LAYERS_INTERVAL`]; housekeeping catches up on the rest).
    pub(super) fn update_upstream_layers(&mut self, key: &TrackKey, now: Instant) {
        let Some(wanted) = self.wanted_layers(key, now) else {
            return;
        };
        let Some(p) = self.publications.get_mut(key) else {
            return;
        };
        let Source::Relay(up) = p.source else {
            return;
        };
        if p.upstream_layers == wanted {
            return;
        }
        if p.upstream_layers_sent
            .is_some_and(|t| now.saturating_duration_since(t) < SET_LAYERS_INTERVAL)
        {
            return;
        }
        // A layer no longer pulled stops arriving: its cached keyframe would be followed by
        // deltas this node never got, so it is dropped, and the layer waits for a keyframe
        // when it is pulled again.
        for l in p.layers.layers_mut() {
            if !wanted.carries(l.rid) {
                l.data.cache.clear();
                l.data.await_keyframe = true;
            }
        }
        tracing::debug!(session = %key.0, track = %key.1, layers = ?wanted, "relayed layers changed");
        p.upstream_layers = wanted.clone();
        p.upstream_layers_sent = Some(now);
        self.stats.simulcast.set_layers += 1;
        self.push_relay(RelayOut::SetLayers { up, layers: wanted });
    }

    /// Relayed publications whose upstream layer set may be due (housekeeping).
    pub(super) fn update_all_upstream_layers(&mut self, now: Instant) {
        let keys: Vec<TrackKey> = self
            .publications
            .iter()
            .filter(|(_, p)| matches!(p.source, Source::Relay(_)) && p.layers.is_declared())
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.update_upstream_layers(&key, now);
        }
    }

    /// A downstream node wants only `layers` of what `down` carries. A hub passes the change
    /// on to its own upstream.
    pub fn relay_set_layers(&mut self, down: DownId, layers: RelayLayers, now: Instant) {
        let Some(key) = self.relay_down.get(&down).cloned() else {
            return;
        };
        self.relay_down_layers.insert(down, layers);
        self.update_upstream_layers(&key, now);
    }

    /// The upstream node says which layers relayed publication `up` has and which flow there.
    pub fn relay_layers(&mut self, up: UpId, layers: Vec<(Rid, bool)>, now: Instant) {
        let Some(key) = self.relay_up.get(&up).cloned() else {
            // It may overtake the publication's registration: kept for it, bounded.
            if self.relay_layers_early.len() >= MAX_EARLY_LAYERS {
                self.relay_layers_early.clear();
            }
            self.relay_layers_early.insert(up, layers);
            return;
        };
        self.apply_relay_layers(&key, &layers, now);
    }

    /// Takes an announcement kept for `up` before its publication was registered.
    pub(super) fn take_early_layers(&mut self, up: UpId, key: &TrackKey, now: Instant) {
        if let Some(layers) = self.relay_layers_early.remove(&up) {
            self.apply_relay_layers(key, &layers, now);
        }
    }

    fn apply_relay_layers(&mut self, key: &TrackKey, layers: &[(Rid, bool)], now: Instant) {
        let Some(p) = self.publications.get_mut(key) else {
            return;
        };
        if layers.is_empty() {
            return;
        }
        p.layers.announce(layers);
        // A hub passes the origin's word on; the viewers here may now choose differently.
        self.announce_layers(key, now, true);
        self.update_upstream_layers(key, now);
    }

    /// Tells the downstream nodes of layered publication `key` its layers when they changed
    /// since last told (`force`: a new word from upstream, still rate-bounded).
    pub(super) fn announce_layers(&mut self, key: &TrackKey, now: Instant, force: bool) {
        let Some(p) = self.publications.get_mut(key) else {
            return;
        };
        if !p.layers.is_layered() || !p.subscribers.iter().any(|s| matches!(s, Sink::Relay(_))) {
            return;
        }
        let states = p.layers.states(now);
        if !force && p.announced_layers.as_ref() == Some(&states) {
            return;
        }
        if p.announced_at
            .is_some_and(|t| now.saturating_duration_since(t) < LAYERS_INTERVAL)
        {
            // Picked up by the next check after the interval (housekeeping or a frame).
            p.announced_layers = None;
            return;
        }
        p.announced_at = Some(now);
        p.announced_layers = Some(states.clone());
        let downs: Vec<DownId> = p
            .subscribers
            .iter()
            .filter_map(|s| match s {
                Sink::Relay(d) => Some(*d),
                Sink::Session(..) => None,
            })
            .collect();
        for down in downs {
            self.push_relay(RelayOut::Layers {
                down,
                layers: states.clone(),
            });
        }
    }

    /// Whether a frame of layer `rid` goes to downstream `down`.
    pub(super) fn relay_down_carries(&self, down: DownId, rid: Rid) -> bool {
        self.relay_down_layers
            .get(&down)
            .is_none_or(|l| l.carries(rid))
    }

    /// Layered publications whose layer states may need announcing (housekeeping).
    pub(super) fn announce_all_layers(&mut self, now: Instant) {
        let keys: Vec<TrackKey> = self
            .publications
            .iter()
            .filter(|(_, p)| {
                p.layers.is_layered() && p.subscribers.iter().any(|s| matches!(s, Sink::Relay(_)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.announce_layers(&key, now, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rids(s: &[&str]) -> Vec<Rid> {
        s.iter().map(|r| Rid::from(*r)).collect()
    }

    #[test]
    fn the_union_is_every_layer_a_sink_needs_in_ascii_order() {
        let q = rids(&["q"]);
        let hq = rids(&["q", "h"]);
        let f = rids(&["f"]);
        assert_eq!(
            union([Need::Layers(&q), Need::Layers(&hq)]),
            RelayLayers::Only(rids(&["h", "q"]))
        );
        assert_eq!(
            union([Need::Layers(&q), Need::Layers(&f)]),
            RelayLayers::Only(rids(&["f", "q"]))
        );
        // One sink that needs all (a downstream asking for all, a viewer with no layer known)
        // makes it all.
        assert_eq!(
            union([Need::Layers(&q), Need::All, Need::Layers(&f)]),
            RelayLayers::All
        );
        assert_eq!(union([]), RelayLayers::Only(Vec::new()));
        // More rids than layers exist: take all rather than guess.
        let many = rids(&["a", "b", "c", "d"]);
        assert_eq!(union([Need::Layers(&many)]), RelayLayers::All);
    }

    #[test]
    fn carries() {
        assert!(RelayLayers::All.carries(Rid::from("f")));
        let q = RelayLayers::Only(rids(&["q"]));
        assert!(q.carries(Rid::from("q")));
        assert!(!q.carries(Rid::from("f")));
    }
}
