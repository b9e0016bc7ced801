//! The pulling end of relay links: every link a node dialed and every track it pulls over
//! them, no I/O.
//!
//! Peers (`P`) and upstream ids (`U`) are the driver's, opaque here; a pulled track is named by
//! the wire's own fields ([`TrackRef`]). The driver picks routes (it knows the cluster view) and
//! asks the engine whether an upstream is still wanted; this machine decides everything else:
//!
//! - **One link per peer, one dial per peer.** Pulls that need a peer with no link wait for one
//!   [`SubscriberEvent::Dial`]; when [`Subscriber::dialed`] reports it, each of them subscribes
//!   on it with its own sub id (never reused on a link).
//! - **Pending subscriptions** wait [`SubscriberLimits::subscribe_timeout`] for `Subscribed` or
//!   `SubscribeFailed`. Past it the pull fails and `Unsubscribe` goes out, so a late answer
//!   leaves nothing behind at the peer.
//! - **"Failed recently."** A peer whose dial failed or whose link died is avoided by new pulls
//!   for [`SubscriberLimits::avoid_after_failure`] (they fail at once rather than wait out a
//!   connect timeout). Re-routes ignore it: they pace themselves. The avoidance is never longer
//!   than the longest re-route pause ([`SubscriberLimits::checked`] clamps it), so a new pull to a
//!   peer that came back succeeds no later than a re-route would.
//! - **Re-route.** When a link dies its live upstreams are lost ([`SubscriberEvent::Lost`]: the
//!   engine keeps their viewers) and re-routed: [`SubscriberEvent::RerouteDue`] asks the driver
//!   for a route, first at once, then after each failed attempt at a pause from
//!   [`SubscriberLimits::reroute_pause`] doubling up to [`SubscriberLimits::reroute_pause_max`]. The driver answers with
//!   [`Subscriber::reroute_to`] (a peer), [`Subscriber::reroute_wait`] (no route now: the origin
//!   is not live) or [`Subscriber::give_up`] (the engine ended the track: its timeout bounds a
//!   partition). A change of the cluster view ([`Subscriber::view_changed`]) makes every waiting
//!   re-route due at once, so a healed partition is used as soon as gossip sees it. Past
//!   [`SubscriberLimits::reroute_window`] the upstream ends.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::control::{ControlMsg, LayerSet, LayerState, SetLayers, SubId, Subscribe, TrackInfo};

/// The pulling end's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriberLimits {
    /// How long a `Subscribe` waits for its answer.
    pub subscribe_timeout: Duration,
    /// How long new pulls keep off a peer whose link failed.
    pub avoid_after_failure: Duration,
    /// The pause after a first failed re-route attempt.
    pub reroute_pause: Duration,
    /// The longest pause between re-route attempts (the pause doubles up to it).
    pub reroute_pause_max: Duration,
    /// How long a re-route keeps trying at most (the engine's track timeout usually ends it
    /// first).
    pub reroute_window: Duration,
}

impl Default for SubscriberLimits {
    fn default() -> Self {
        SubscriberLimits {
            subscribe_timeout: Duration::from_secs(3),
            avoid_after_failure: Duration::from_secs(1),
            reroute_pause: Duration::from_millis(300),
            reroute_pause_max: Duration::from_secs(1),
            reroute_window: Duration::from_secs(600),
        }
    }
}

impl SubscriberLimits {
    /// These limits, with the avoidance no longer than the longest re-route pause and the
    /// first pause no longer than the longest.
    pub fn checked(self) -> Self {
        let reroute_pause = self.reroute_pause.min(self.reroute_pause_max);
        SubscriberLimits {
            reroute_pause,
            avoid_after_failure: self.avoid_after_failure.min(self.reroute_pause_max),
            reroute_window: self.reroute_window.max(self.reroute_pause_max),
            ..self
        }
    }
}

/// A pulled track, as the wire names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackRef {
    /// The Calls session id as 16 bytes.
    pub session_id: [u8; 16],
    /// The track name.
    pub track_name: String,
    /// The Calls app.
    pub app: String,
}

/// Why a pull (or one re-route attempt) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullFailure {
    /// The peer failed recently: not dialed.
    Avoided,
    /// The dial or handshake failed.
    Link,
    /// The peer refused the subscription.
    Refused,
    /// No answer in time, or the link died before it came.
    NoAnswer,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriberEvent<P, U> {
    /// Dial `P` and report with [`Subscriber::dialed`]. At most one at a time per peer.
    Dial(P),
    /// The upstream is live on `peer` (after a pull, or a re-route when `rerouted`).
    Subscribed {
        /// The upstream.
        up: U,
        /// Through whom.
        peer: P,
        /// What the track carries.
        track: TrackInfo,
        /// A re-route: the engine moves its publication onto the upstream.
        rerouted: bool,
    },
    /// A pull failed, or one re-route attempt did (`retrying`: another comes).
    Failed {
        /// The upstream.
        up: U,
        /// Why.
        reason: PullFailure,
        /// Whether a re-route goes on.
        retrying: bool,
    },
    /// The upstream's link died: the engine keeps its viewers while it re-routes.
    Lost(U),
    /// Find a route for this re-routing upstream: answer [`Subscriber::reroute_to`],
    /// [`Subscriber::reroute_wait`] or [`Subscriber::give_up`].
    RerouteDue(U),
    /// The upstream is over (its track ended upstream, or the re-route window passed): end the
    /// relayed publication.
    Ended(U),
    /// The origin says which layers the upstream's track has and which flow there.
    Layers {
        /// The upstream.
        up: U,
        /// Its layers, in the order the peer sent them (at most [`crate::limits::MAX_LAYERS`]).
        layers: Vec<LayerState>,
    },
}

#[derive(Debug)]
enum Phase<P> {
    /// Waiting for the link to `peer` to be dialed.
    Linking {
        peer: P,
    },
    /// `Subscribe` sent as `sub`; answer due by `deadline`.
    Subscribing {
        peer: P,
        sub: SubId,
        deadline: Instant,
    },
    Live {
        peer: P,
        sub: SubId,
    },
    /// Re-routing: next attempt at `at` (`waiting_for_view`: no route was found).
    Paused {
        at: Instant,
        waiting_for_view: bool,
    },
    /// A `RerouteDue` is out; the driver answers.
    Due,
}

#[derive(Debug)]
struct Up<P> {
    track: TrackRef,
    /// The layers the engine wants: sent with every `Subscribe` (a re-route keeps them).
    layers: LayerSet,
    phase: Phase<P>,
    /// Set while re-routing: when the link died, and the next pause.
    reroute: Option<(Instant, Duration)>,
}

#[derive(Debug)]
enum LinkState {
    Dialing,
    Open { next_sub: SubId },
}

#[derive(Debug)]
struct Link<U> {
    state: LinkState,
    /// Upstreams waiting for the dial.
    waiting: Vec<U>,
    /// Subscriptions sent or live: sub id → upstream.
    subs: HashMap<SubId, U>,
}

/// The pulling end of a node's relay links; see the module doc.
#[derive(Debug)]
pub struct Subscriber<P, U> {
    limits: SubscriberLimits,
    links: HashMap<P, Link<U>>,
    ups: HashMap<U, Up<P>>,
    avoid: HashMap<P, Instant>,
    transmits: VecDeque<(P, ControlMsg)>,
    events: VecDeque<SubscriberEvent<P, U>>,
}

impl<P: Clone + Eq + Hash, U: Copy + Eq + Hash> Subscriber<P, U> {
    /// No links, no upstreams.
    pub fn new(limits: SubscriberLimits) -> Self {
        Subscriber {
            limits: limits.checked(),
            links: HashMap::new(),
            ups: HashMap::new(),
            avoid: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The limits in force (after [`SubscriberLimits::checked`]).
    pub fn limits(&self) -> SubscriberLimits {
        self.limits
    }

    /// Upstreams held, in any phase.
    pub fn upstreams(&self) -> usize {
        self.ups.len()
    }

    /// Whether `peer` has an open link.
    pub fn is_linked(&self, peer: &P) -> bool {
        matches!(
            self.links.get(peer),
            Some(Link {
                state: LinkState::Open { .. },
                ..
            })
        )
    }

    /// The upstream a sub id of `peer`'s link names (for its media datagrams).
    pub fn upstream_of(&self, peer: &P, sub: SubId) -> Option<U> {
        let up = *self.links.get(peer)?.subs.get(&sub)?;
        matches!(
            self.ups.get(&up)?.phase,
            Phase::Live { .. } | Phase::Subscribing { .. }
        )
        .then_some(up)
    }

    /// The peer and sub id of a live upstream.
    pub fn route_of(&self, up: U) -> Option<(&P, SubId)> {
        match &self.ups.get(&up)?.phase {
            Phase::Live { peer, sub } => Some((peer, *sub)),
            _ => None,
        }
    }

    /// A new pull: subscribe `up` to `track` through `peer`. Fails at once when `peer` failed
    /// recently.
    pub fn pull(&mut self, now: Instant, up: U, peer: P, track: TrackRef) {
        if self.ups.contains_key(&up) {
            return;
        }
        self.avoid.retain(|_, until| *until > now);
        if self.avoid.contains_key(&peer) && !self.is_linked(&peer) {
            self.events.push_back(SubscriberEvent::Failed {
                up,
                reason: PullFailure::Avoided,
                retrying: false,
            });
            return;
        }
        self.ups.insert(
            up,
            Up {
                track,
                layers: LayerSet::All,
                phase: Phase::Due,
                reroute: None,
            },
        );
        self.subscribe_via(now, up, peer);
    }

    /// A link to `peer` for something else than a subscription (DataChannel streams): dials
    /// unless one is up or being dialed; [`Subscriber::dialed`] reports it. False when `peer`
    /// failed recently and has no link.
    pub fn connect(&mut self, now: Instant, peer: P) -> bool {
        if self.links.contains_key(&peer) {
            return true;
        }
        self.avoid.retain(|_, until| *until > now);
        if self.avoid.contains_key(&peer) {
            return false;
        }
        self.links.insert(
            peer.clone(),
            Link {
                state: LinkState::Dialing,
                waiting: Vec::new(),
                subs: HashMap::new(),
            },
        );
        self.events.push_back(SubscriberEvent::Dial(peer));
        true
    }

    /// A re-route attempt of `up` (after [`SubscriberEvent::RerouteDue`]) through `peer`,
    /// avoided or not.
    pub fn reroute_to(&mut self, now: Instant, up: U, peer: P) {
        if matches!(self.ups.get(&up).map(|u| &u.phase), Some(Phase::Due)) {
            self.subscribe_via(now, up, peer);
        }
    }

    /// No route for `up` now: try again after the longest pause, or as soon as the view changes.
    pub fn reroute_wait(&mut self, now: Instant, up: U) {
        if let Some(u) = self.ups.get_mut(&up)
            && matches!(u.phase, Phase::Due)
        {
            u.phase = Phase::Paused {
                at: now + self.limits.reroute_pause_max,
                waiting_for_view: true,
            };
        }
    }

    /// The cluster view changed: re-routes waiting for a route try at once.
    pub fn view_changed(&mut self, now: Instant) {
        for u in self.ups.values_mut() {
            if let Phase::Paused {
                at,
                waiting_for_view: true,
            } = &mut u.phase
            {
                *at = now;
            }
        }
    }

    /// The engine wants only `layers` of `up` from now on: told to the peer at once when
    /// subscribed (or being answered), and sent with any later `Subscribe` (a re-route).
    pub fn set_layers(&mut self, up: U, layers: LayerSet) {
        let Some(u) = self.ups.get_mut(&up) else {
            return;
        };
        if u.layers == layers {
            return;
        }
        u.layers = layers.clone();
        if let Phase::Subscribing { peer, sub, .. } | Phase::Live { peer, sub } = &u.phase {
            self.transmits.push_back((
                peer.clone(),
                ControlMsg::SetLayers(SetLayers { sub: *sub, layers }),
            ));
        }
    }

    /// The layers `up` asks for.
    pub fn layers_of(&self, up: U) -> Option<&LayerSet> {
        self.ups.get(&up).map(|u| &u.layers)
    }

    /// The engine no longer wants `up` (its track timed out, or it was released while
    /// re-routing): forget it, unsubscribing if it was subscribed.
    pub fn give_up(&mut self, up: U) {
        self.forget(up, true);
    }

    /// The engine no longer uses `up`: unsubscribe it.
    pub fn unsubscribe(&mut self, up: U) {
        self.forget(up, true);
    }

    fn forget(&mut self, up: U, tell_peer: bool) {
        let Some(u) = self.ups.remove(&up) else {
            return;
        };
        match u.phase {
            Phase::Linking { peer } => {
                if let Some(l) = self.links.get_mut(&peer) {
                    l.waiting.retain(|w| *w != up);
                }
            }
            Phase::Subscribing { peer, sub, .. } | Phase::Live { peer, sub } => {
                if let Some(l) = self.links.get_mut(&peer) {
                    l.subs.remove(&sub);
                }
                if tell_peer {
                    self.transmits
                        .push_back((peer, ControlMsg::Unsubscribe { sub }));
                }
            }
            Phase::Paused { .. } | Phase::Due => {}
        }
    }

    fn subscribe_via(&mut self, now: Instant, up: U, peer: P) {
        match self.links.get_mut(&peer) {
            Some(Link {
                state: LinkState::Open { .. },
                ..
            }) => self.send_subscribe(now, up, peer),
            Some(l) => {
                l.waiting.push(up);
                self.set_phase(up, Phase::Linking { peer });
            }
            None => {
                self.links.insert(
                    peer.clone(),
                    Link {
                        state: LinkState::Dialing,
                        waiting: vec![up],
                        subs: HashMap::new(),
                    },
                );
                self.events.push_back(SubscriberEvent::Dial(peer.clone()));
                self.set_phase(up, Phase::Linking { peer });
            }
        }
    }

    fn set_phase(&mut self, up: U, phase: Phase<P>) {
        if let Some(u) = self.ups.get_mut(&up) {
            u.phase = phase;
        }
    }

    fn send_subscribe(&mut self, now: Instant, up: U, peer: P) {
        let (Some(u), Some(link)) = (self.ups.get_mut(&up), self.links.get_mut(&peer)) else {
            return;
        };
        let LinkState::Open { next_sub } = &mut link.state else {
            return;
        };
        let sub = *next_sub;
        *next_sub = next_sub.wrapping_add(1).max(1);
        // Known before the answer, so media right after it is not dropped.
        link.subs.insert(sub, up);
        u.phase = Phase::Subscribing {
            peer: peer.clone(),
            sub,
            deadline: now + self.limits.subscribe_timeout,
        };
        let msg = ControlMsg::Subscribe(Subscribe {
            sub,
            session_id: u.track.session_id,
            track_name: u.track.track_name.clone(),
            app: u.track.app.clone(),
            layers: u.layers.clone(),
        });
        self.transmits.push_back((peer, msg));
    }

    /// The dial of `peer` ended: `ok` when the link is up. Upstreams waiting for it subscribe
    /// now, or fail (re-routes try again later).
    pub fn dialed(&mut self, now: Instant, peer: &P, ok: bool) {
        let Some(link) = self.links.get_mut(peer) else {
            return;
        };
        if !matches!(link.state, LinkState::Dialing) {
            return;
        }
        let waiting = std::mem::take(&mut link.waiting);
        if ok {
            link.state = LinkState::Open { next_sub: 1 };
            for up in waiting {
                self.send_subscribe(now, up, peer.clone());
            }
        } else {
            self.links.remove(peer);
            self.avoid
                .insert(peer.clone(), now + self.limits.avoid_after_failure);
            for up in waiting {
                self.fail(now, up, PullFailure::Link);
            }
        }
    }

    /// A pull attempt of `up` failed: a new pull is over, a re-route pauses and tries again.
    fn fail(&mut self, now: Instant, up: U, reason: PullFailure) {
        let Some(u) = self.ups.get_mut(&up) else {
            return;
        };
        match &mut u.reroute {
            Some((_, pause)) => {
                u.phase = Phase::Paused {
                    at: now + *pause,
                    waiting_for_view: false,
                };
                *pause = (*pause * 2).min(self.limits.reroute_pause_max);
                self.events.push_back(SubscriberEvent::Failed {
                    up,
                    reason,
                    retrying: true,
                });
            }
            None => {
                self.ups.remove(&up);
                self.events.push_back(SubscriberEvent::Failed {
                    up,
                    reason,
                    retrying: false,
                });
            }
        }
    }

    /// A control message from `peer`'s link.
    pub fn handle_control(&mut self, now: Instant, peer: &P, msg: ControlMsg) {
        let sub = msg.sub();
        let Some(up) = self.links.get(peer).and_then(|l| l.subs.get(&sub)).copied() else {
            return;
        };
        let Some(u) = self.ups.get_mut(&up) else {
            return;
        };
        match msg {
            ControlMsg::Subscribed { track, .. } => {
                if let Phase::Subscribing { .. } = u.phase {
                    u.phase = Phase::Live {
                        peer: peer.clone(),
                        sub,
                    };
                    let rerouted = u.reroute.take().is_some();
                    self.events.push_back(SubscriberEvent::Subscribed {
                        up,
                        peer: peer.clone(),
                        track,
                        rerouted,
                    });
                }
            }
            ControlMsg::SubscribeFailed { .. } => {
                if let Phase::Subscribing { .. } = u.phase {
                    if let Some(l) = self.links.get_mut(peer) {
                        l.subs.remove(&sub);
                    }
                    self.fail(now, up, PullFailure::Refused);
                }
            }
            ControlMsg::TrackEnded { .. } => {
                self.forget(up, false);
                self.events.push_back(SubscriberEvent::Ended(up));
            }
            ControlMsg::Layers(l) => {
                // Only from the route in use (it may overtake `Subscribed`): a late one of a
                // replaced route is stale.
                if matches!(&u.phase,
                    Phase::Live { peer: p, sub: s } | Phase::Subscribing { peer: p, sub: s, .. }
                        if p == peer && *s == sub)
                {
                    self.events.push_back(SubscriberEvent::Layers {
                        up,
                        layers: l.layers,
                    });
                }
            }
            // Subscriber → publisher messages: not for this end.
            _ => {}
        }
    }

    /// `peer`'s link died (or gossip called the peer dead): new pulls avoid it for a while,
    /// answers still to come fail, live upstreams re-route.
    pub fn link_lost(&mut self, now: Instant, peer: &P) {
        self.avoid
            .insert(peer.clone(), now + self.limits.avoid_after_failure);
        let Some(link) = self.links.remove(peer) else {
            return;
        };
        for up in link.waiting {
            self.fail(now, up, PullFailure::Link);
        }
        for (_, up) in link.subs {
            let Some(u) = self.ups.get_mut(&up) else {
                continue;
            };
            match u.phase {
                Phase::Live { .. } => {
                    // The first attempt at once: another route may be there already.
                    u.phase = Phase::Paused {
                        at: now,
                        waiting_for_view: false,
                    };
                    u.reroute = Some((now, self.limits.reroute_pause));
                    self.events.push_back(SubscriberEvent::Lost(up));
                }
                Phase::Subscribing { .. } => self.fail(now, up, PullFailure::NoAnswer),
                _ => {}
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.ups
            .values()
            .filter_map(|u| match u.phase {
                Phase::Subscribing { deadline, .. } => Some(deadline),
                Phase::Paused { at, .. } => Some(at),
                _ => None,
            })
            .min()
    }

    /// Time passed: unanswered subscriptions fail, paused re-routes become due (or end past
    /// the window).
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut late = Vec::new();
        let mut due = Vec::new();
        for (up, u) in &self.ups {
            match &u.phase {
                Phase::Subscribing {
                    peer,
                    sub,
                    deadline,
                } if *deadline <= now => late.push((*up, peer.clone(), *sub)),
                Phase::Paused { at, .. } if *at <= now => due.push(*up),
                _ => {}
            }
        }
        for (up, peer, sub) in late {
            if let Some(l) = self.links.get_mut(&peer) {
                l.subs.remove(&sub);
            }
            // A late answer finds nothing here; the peer drops what it set up.
            self.transmits
                .push_back((peer, ControlMsg::Unsubscribe { sub }));
            self.fail(now, up, PullFailure::NoAnswer);
        }
        for up in due {
            let Some(u) = self.ups.get_mut(&up) else {
                continue;
            };
            let since = u.reroute.map_or(now, |(since, _)| since);
            if now.saturating_duration_since(since) >= self.limits.reroute_window {
                self.ups.remove(&up);
                self.events.push_back(SubscriberEvent::Ended(up));
            } else {
                u.phase = Phase::Due;
                self.events.push_back(SubscriberEvent::RerouteDue(up));
            }
        }
    }

    /// The next control message to write, and the peer whose link it goes on.
    pub fn poll_transmit(&mut self) -> Option<(P, ControlMsg)> {
        self.transmits.pop_front()
    }

    /// The next thing the driver must do.
    pub fn poll_event(&mut self) -> Option<SubscriberEvent<P, U>> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{CodecParams, FailureCode, MediaKind};

    type Ev = SubscriberEvent<&'static str, u64>;
    type Machine = Subscriber<&'static str, u64>;

    fn track(n: u8) -> TrackRef {
        TrackRef {
            session_id: [n; 16],
            track_name: format!("t{n}"),
            app: "app".into(),
        }
    }

    fn info() -> TrackInfo {
        TrackInfo {
            kind: MediaKind::Audio,
            codec: CodecParams {
                mime: "audio/opus".into(),
                clock_rate: 48_000,
                channels: Some(2),
            },
        }
    }

    fn drain(m: &mut Machine) -> (Vec<(&'static str, ControlMsg)>, Vec<Ev>) {
        let mut t = Vec::new();
        while let Some(x) = m.poll_transmit() {
            t.push(x);
        }
        let mut e = Vec::new();
        while let Some(x) = m.poll_event() {
            e.push(x);
        }
        (t, e)
    }

    fn subscribed_sub(t: &[(&'static str, ControlMsg)], peer: &str) -> Vec<SubId> {
        t.iter()
            .filter(|(p, _)| *p == peer)
            .filter_map(|(_, m)| match m {
                ControlMsg::Subscribe(s) => Some(s.sub),
                _ => None,
            })
            .collect()
    }

    fn answer(sub: SubId) -> ControlMsg {
        ControlMsg::Subscribed { sub, track: info() }
    }

    /// Pulls `up` through `peer` from nothing to live; returns its sub id.
    fn live(m: &mut Machine, now: Instant, up: u64, peer: &'static str) -> SubId {
        m.pull(now, up, peer, track(up as u8));
        if !m.is_linked(&peer) {
            let (_, ev) = drain(m);
            assert_eq!(ev, vec![SubscriberEvent::Dial(peer)]);
            m.dialed(now, &peer, true);
        }
        let (t, _) = drain(m);
        let sub = subscribed_sub(&t, peer)[0];
        m.handle_control(now, &peer, answer(sub));
        let (_, ev) = drain(m);
        assert!(matches!(
            ev.as_slice(),
            [SubscriberEvent::Subscribed {
                rerouted: false,
                ..
            }]
        ));
        sub
    }

    #[test]
    fn layer_choices_go_to_the_route_in_use_and_survive_a_reroute() {
        let t0 = Instant::now();
        let mut m = Machine::new(SubscriberLimits::default());
        let q = || LayerSet::Only(vec!["q".into()]);
        // Before anything is known, a subscription carries every layer.
        m.pull(t0, 1, "a", track(1));
        drain(&mut m);
        m.dialed(t0, &"a", true);
        let (t, _) = drain(&mut m);
        assert!(
            matches!(&t[..], [("a", ControlMsg::Subscribe(s))] if s.layers == LayerSet::All),
            "{t:?}"
        );
        m.handle_control(t0, &"a", answer(1));
        drain(&mut m);
        m.set_layers(1, q());
        // The same set again sends nothing.
        m.set_layers(1, q());
        // An upstream nobody holds: nothing.
        m.set_layers(42, q());
        let (t, _) = drain(&mut m);
        assert_eq!(
            t,
            vec![(
                "a",
                ControlMsg::SetLayers(SetLayers {
                    sub: 1,
                    layers: q()
                })
            )]
        );
        assert_eq!(m.layers_of(1), Some(&q()));
        // The origin's layer states reach the driver for the live route only.
        let state = vec![LayerState {
            rid: "q".into(),
            flowing: true,
        }];
        let layers = |sub| {
            ControlMsg::Layers(crate::control::Layers {
                sub,
                layers: state.clone(),
            })
        };
        m.handle_control(t0, &"a", layers(1));
        m.handle_control(t0, &"a", layers(7));
        m.handle_control(t0, &"b", layers(1));
        let (_, ev) = drain(&mut m);
        assert_eq!(
            ev,
            vec![SubscriberEvent::Layers {
                up: 1,
                layers: state.clone()
            }]
        );
        // The link dies: the re-route subscribes elsewhere with the same layers.
        m.link_lost(t0, &"a");
        m.handle_timeout(t0);
        drain(&mut m);
        m.reroute_to(t0, 1, "b");
        drain(&mut m);
        m.dialed(t0, &"b", true);
        let (t, _) = drain(&mut m);
        assert!(
            matches!(&t[..], [("b", ControlMsg::Subscribe(s))] if s.layers == q()),
            "{t:?}"
        );
    }

    #[test]
    fn two_pulls_at_once_to_one_peer_dial_once_and_share_the_link() {
        let t0 = Instant::now();
        let mut m = Machine::new(SubscriberLimits::default());
        m.pull(t0, 1, "a", track(1));
        m.pull(t0, 2, "a", track(2));
        let (t, ev) = drain(&mut m);
        assert!(t.is_empty(), "nothing sent before the link is up");
        assert_eq!(ev, vec![SubscriberEvent::Dial("a")], "one dial");
        m.dialed(t0, &"a", true);
        // A stray second report (a duplicate connection) changes nothing.
        m.dialed(t0, &"a", true);
        let (t, _) = drain(&mut m);
        let subs = subscribed_sub(&t, "a");
        assert_eq!(subs, vec![1, 2], "one sub id each, on one link: {t:?}");
        for sub in subs {
            m.handle_control(t0, &"a", answer(sub));
        }
        let (_, ev) = drain(&mut m);
        assert_eq!(ev.len(), 2);
        assert_eq!(m.upstream_of(&"a", 2), Some(2));
        // A third pull later goes straight on the link.
        m.pull(t0, 3, "a", track(3));
        let (t, ev) = drain(&mut m);
        assert!(ev.is_empty());
        assert_eq!(subscribed_sub(&t, "a"), vec![3]);
    }

    #[test]
    fn a_hub_dying_mid_subscribe_fails_the_pull_and_new_pulls_avoid_it_for_a_while() {
        let t0 = Instant::now();
        let limits = SubscriberLimits::default();
        let mut m = Machine::new(limits);
        m.pull(t0, 1, "hub", track(1));
        m.dialed(t0, &"hub", true);
        drain(&mut m);
        m.link_lost(t0, &"hub");
        let (_, ev) = drain(&mut m);
        assert_eq!(
            ev,
            vec![SubscriberEvent::Failed {
                up: 1,
                reason: PullFailure::NoAnswer,
                retrying: false
            }]
        );
        assert_eq!(m.upstreams(), 0);
        // A late Subscribed from the dead link's sub id reaches nothing.
        m.handle_control(t0, &"hub", answer(1));
        assert_eq!(drain(&mut m).1, vec![]);
        // Within the avoidance: fails at once, no dial.
        m.pull(t0, 2, "hub", track(2));
        assert_eq!(
            drain(&mut m).1,
            vec![SubscriberEvent::Failed {
                up: 2,
                reason: PullFailure::Avoided,
                retrying: false
            }]
        );
        // Another route is fine meanwhile, and the hub again once the avoidance is over.
        m.pull(t0, 3, "origin", track(3));
        assert_eq!(drain(&mut m).1, vec![SubscriberEvent::Dial("origin")]);
        m.pull(t0 + limits.avoid_after_failure, 4, "hub", track(4));
        assert_eq!(drain(&mut m).1, vec![SubscriberEvent::Dial("hub")]);
    }

    #[test]
    fn a_link_wanted_without_a_subscription_shares_the_one_dial() {
        let t0 = Instant::now();
        let mut m = Machine::new(SubscriberLimits::default());
        assert!(m.connect(t0, "a"));
        m.pull(t0, 1, "a", track(1));
        assert!(m.connect(t0, "a"));
        assert_eq!(
            drain(&mut m).1,
            vec![SubscriberEvent::Dial("a")],
            "one dial"
        );
        m.dialed(t0, &"a", false);
        drain(&mut m);
        assert!(!m.connect(t0, "a"), "failed recently");
        assert_eq!(drain(&mut m).1, vec![]);
    }

    #[test]
    fn a_dial_failure_fails_every_pull_waiting_for_it() {
        let t0 = Instant::now();
        let mut m = Machine::new(SubscriberLimits::default());
        m.pull(t0, 1, "a", track(1));
        m.pull(t0, 2, "a", track(2));
        drain(&mut m);
        m.dialed(t0, &"a", false);
        let (t, ev) = drain(&mut m);
        assert!(t.is_empty());
        assert_eq!(ev.len(), 2);
        assert!(ev.iter().all(|e| matches!(
            e,
            SubscriberEvent::Failed {
                reason: PullFailure::Link,
                retrying: false,
                ..
            }
        )));
        assert!(!m.is_linked(&"a"));
    }

    #[test]
    fn an_unanswered_subscribe_times_out_and_is_unsubscribed() {
        let t0 = Instant::now();
        let limits = SubscriberLimits::default();
        let mut m = Machine::new(limits);
        m.pull(t0, 1, "a", track(1));
        m.dialed(t0, &"a", true);
        drain(&mut m);
        assert_eq!(m.poll_timeout(), Some(t0 + limits.subscribe_timeout));
        m.handle_timeout(t0 + limits.subscribe_timeout);
        let (t, ev) = drain(&mut m);
        assert_eq!(t, vec![("a", ControlMsg::Unsubscribe { sub: 1 })]);
        assert_eq!(
            ev,
            vec![SubscriberEvent::Failed {
                up: 1,
                reason: PullFailure::NoAnswer,
                retrying: false
            }]
        );
        // A refusal is a failure too, and the link stays.
        m.pull(t0, 2, "a", track(2));
        let (t, _) = drain(&mut m);
        let sub = subscribed_sub(&t, "a")[0];
        assert_eq!(sub, 2, "sub ids are not reused");
        m.handle_control(
            t0,
            &"a",
            ControlMsg::SubscribeFailed {
                sub,
                code: FailureCode::NotFound,
                reason: String::new(),
            },
        );
        assert!(matches!(
            drain(&mut m).1.as_slice(),
            [SubscriberEvent::Failed {
                reason: PullFailure::Refused,
                ..
            }]
        ));
        assert!(m.is_linked(&"a"));
    }

    /// Runs the machine's timers until it asks for a route (bounded).
    fn until_due(m: &mut Machine, up: u64) -> Instant {
        for _ in 0..100 {
            let now = m.poll_timeout().expect("a timer is set");
            m.handle_timeout(now);
            let (_, ev) = drain(m);
            if ev.contains(&SubscriberEvent::RerouteDue(up)) {
                return now;
            }
        }
        panic!("no re-route came");
    }

    #[test]
    fn a_partition_shorter_than_the_track_timeout_resubscribes_once_the_peer_is_back() {
        let t0 = Instant::now();
        let limits = SubscriberLimits::default();
        let mut m = Machine::new(limits);
        live(&mut m, t0, 1, "origin");
        m.link_lost(t0, &"origin");
        assert_eq!(drain(&mut m).1, vec![SubscriberEvent::Lost(1)]);
        assert_eq!(m.route_of(1), None);
        // Gossip calls the origin dead for 5 s: the driver has no route.
        let mut now = until_due(&mut m, 1);
        assert_eq!(now, t0, "the first attempt is at once");
        let healed = t0 + Duration::from_secs(5);
        while now < healed {
            m.reroute_wait(now, 1);
            now = until_due(&mut m, 1);
        }
        // One failed dial in between (the link is not back yet): it tries again.
        m.reroute_to(now, 1, "origin");
        assert_eq!(drain(&mut m).1, vec![SubscriberEvent::Dial("origin")]);
        m.dialed(now, &"origin", false);
        assert!(matches!(
            drain(&mut m).1.as_slice(),
            [SubscriberEvent::Failed { retrying: true, .. }]
        ));
        // Still inside the avoidance the dial failure set: a re-route dials anyway.
        let again = until_due(&mut m, 1);
        assert!(
            again < now + limits.avoid_after_failure,
            "the re-route comes inside the avoidance"
        );
        m.reroute_to(again, 1, "origin");
        assert_eq!(drain(&mut m).1, vec![SubscriberEvent::Dial("origin")]);
        m.dialed(again, &"origin", true);
        let (t, _) = drain(&mut m);
        let sub = subscribed_sub(&t, "origin")[0];
        m.handle_control(again, &"origin", answer(sub));
        assert_eq!(
            drain(&mut m).1,
            vec![SubscriberEvent::Subscribed {
                up: 1,
                peer: "origin",
                track: info(),
                rerouted: true
            }]
        );
        assert_eq!(m.route_of(1), Some((&"origin", sub)));
        assert_eq!(m.poll_timeout(), None, "nothing left to do");
    }

    #[test]
    fn a_view_change_makes_a_waiting_reroute_due_at_once() {
        let t0 = Instant::now();
        let mut m = Machine::new(SubscriberLimits::default());
        live(&mut m, t0, 1, "hub");
        m.link_lost(t0, &"hub");
        let now = until_due(&mut m, 1);
        m.reroute_wait(now, 1);
        let later = now + Duration::from_millis(10);
        m.view_changed(later);
        assert_eq!(m.poll_timeout(), Some(later));
        m.handle_timeout(later);
        assert_eq!(drain(&mut m).1, vec![SubscriberEvent::RerouteDue(1)]);
    }

    #[test]
    fn a_track_ending_during_a_reroute_ends_the_upstream() {
        let t0 = Instant::now();
        let mut m = Machine::new(SubscriberLimits::default());
        live(&mut m, t0, 1, "hub");
        live(&mut m, t0, 2, "hub");
        m.link_lost(t0, &"hub");
        drain(&mut m);
        let now = until_due(&mut m, 1);
        // Up 1's track ended at its origin: the new route answers TrackEnded right after
        // Subscribed... and up 2's publication was ended by the engine's track timeout.
        m.reroute_to(now, 1, "origin");
        m.dialed(now, &"origin", true);
        let (t, _) = drain(&mut m);
        let sub = subscribed_sub(&t, "origin")[0];
        m.give_up(2);
        m.handle_control(now, &"origin", answer(sub));
        m.handle_control(now, &"origin", ControlMsg::TrackEnded { sub });
        let (t, ev) = drain(&mut m);
        assert!(t.is_empty(), "nothing to unsubscribe: {t:?}");
        assert_eq!(
            ev,
            vec![
                SubscriberEvent::Subscribed {
                    up: 1,
                    peer: "origin",
                    track: info(),
                    rerouted: true
                },
                SubscriberEvent::Ended(1)
            ]
        );
        assert_eq!(m.upstreams(), 0);
        assert_eq!(m.poll_timeout(), None, "no re-route left for either");

        // Ended while a Subscribe is out: nothing more comes of it, the late answer included.
        live(&mut m, now, 3, "origin");
        m.link_lost(now, &"origin");
        drain(&mut m);
        let now = until_due(&mut m, 3);
        m.reroute_to(now, 3, "hub");
        m.dialed(now, &"hub", true);
        let (t, _) = drain(&mut m);
        let sub = subscribed_sub(&t, "hub")[0];
        m.give_up(3);
        let (t, _) = drain(&mut m);
        assert_eq!(t, vec![("hub", ControlMsg::Unsubscribe { sub })]);
        m.handle_control(now, &"hub", answer(sub));
        assert_eq!(drain(&mut m).1, vec![]);
    }

    #[test]
    fn a_reroute_ends_past_its_window() {
        let t0 = Instant::now();
        let limits = SubscriberLimits {
            reroute_window: Duration::from_secs(5),
            ..SubscriberLimits::default()
        };
        let mut m = Machine::new(limits);
        live(&mut m, t0, 1, "a");
        m.link_lost(t0, &"a");
        drain(&mut m);
        let mut now = t0;
        let mut ended = false;
        for _ in 0..100 {
            now = m.poll_timeout().expect("a timer");
            m.handle_timeout(now);
            let (_, ev) = drain(&mut m);
            if ev.contains(&SubscriberEvent::Ended(1)) {
                ended = true;
                break;
            }
            m.reroute_wait(now, 1);
        }
        assert!(ended);
        assert!(now >= t0 + limits.reroute_window);
        assert!(now < t0 + limits.reroute_window + limits.reroute_pause_max * 2);
    }

    #[test]
    fn the_avoidance_never_outlasts_the_reroute_pace() {
        for (avoid, pause, max) in [(5_000, 300, 3_000), (1_000, 300, 1_000), (10, 5_000, 1)] {
            let limits = SubscriberLimits {
                avoid_after_failure: Duration::from_millis(avoid),
                reroute_pause: Duration::from_millis(pause),
                reroute_pause_max: Duration::from_millis(max),
                ..SubscriberLimits::default()
            };
            let m = Machine::new(limits);
            let l = m.limits();
            assert!(l.avoid_after_failure <= l.reroute_pause_max, "{l:?}");
            assert!(l.reroute_pause <= l.reroute_pause_max, "{l:?}");
            assert!(l.reroute_window >= l.reroute_pause_max, "{l:?}");
        }
        // And a new pull after a failure gets through by the time a re-route would try.
        let t0 = Instant::now();
        let limits = SubscriberLimits::default();
        let mut m = Machine::new(limits);
        m.link_lost(t0, &"a");
        m.pull(t0 + limits.reroute_pause_max, 1, "a", track(1));
        assert_eq!(drain(&mut m).1, vec![SubscriberEvent::Dial("a")]);
    }

    #[test]
    fn an_unused_upstream_is_unsubscribed_and_its_sub_id_forgotten() {
        let t0 = Instant::now();
        let mut m = Machine::new(SubscriberLimits::default());
        let sub = live(&mut m, t0, 1, "a");
        m.unsubscribe(1);
        let (t, _) = drain(&mut m);
        assert_eq!(t, vec![("a", ControlMsg::Unsubscribe { sub })]);
        assert_eq!(m.upstream_of(&"a", sub), None);
        // A link lost afterwards re-routes nothing.
        m.link_lost(t0, &"a");
        assert_eq!(drain(&mut m).1, vec![]);
        assert_eq!(m.poll_timeout(), None);
    }
}
