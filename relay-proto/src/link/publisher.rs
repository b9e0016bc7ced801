//! The serving end of one relay link: what the peer that dialed subscribed to, no I/O.
//!
//! The driver tells it what happened (`handle_control` for each control message, the engine's
//! answers to [`PublisherEvent::Attach`], a track's end, the link's close) and carries out what
//! it queues: control messages to write (`poll_transmit`) and [`PublisherEvent`]s. Downstream
//! ids (`D`) are the driver's, opaque here.
//!
//! A subscription goes through:
//!
//! 1. **Attaching.** `Subscribe` makes an [`PublisherEvent::Attach`]: the driver finds the track
//!    (pulling it first when this node is a hub), registers a downstream and answers
//!    [`Publisher::attached`], [`Publisher::not_found`] or [`Publisher::no_media_yet`].
//! 2. **Waiting for media.** A track published a moment ago has no codec until its first frame:
//!    `no_media_yet` asks again after [`PublisherLimits::media_retry`], until
//!    [`PublisherLimits::media_wait`] after the `Subscribe` (within the subscriber's own
//!    timeout), then refuses it as not found.
//! 3. **Live.** `Subscribed` went out; `Nack`s and keyframe requests name its downstream. It ends
//!    with `Unsubscribe` (the downstream is released), the track's end (`TrackEnded` goes out) or
//!    the link's close (every downstream is released).
//!
//! An `Unsubscribe` that overtakes the answer cancels the subscription: no answer goes out, and a
//! downstream attached meanwhile is released at once.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::control::{ControlMsg, FailureCode, LayerSet, Nack, SubId, Subscribe, TrackInfo};

/// Bounds of one served link.
#[derive(Debug, Clone, Copy)]
pub struct PublisherLimits {
    /// Subscriptions the peer may hold at once, live or being answered (beyond: `Overloaded`).
    pub max_subs: usize,
    /// From the connection to the end of the handshake.
    pub handshake: Duration,
    /// How long a subscription to a track with no frame yet waits for one.
    pub media_wait: Duration,
    /// How often it asks the engine again meanwhile.
    pub media_retry: Duration,
}

impl Default for PublisherLimits {
    fn default() -> Self {
        PublisherLimits {
            max_subs: 4096,
            handshake: Duration::from_secs(5),
            // The subscribing node gives up after 3 s.
            media_wait: Duration::from_secs(2),
            media_retry: Duration::from_millis(20),
        }
    }
}

/// What the driver must do for the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublisherEvent<D> {
    /// Attach this subscription to the engine and answer with [`Publisher::attached`],
    /// [`Publisher::not_found`] or [`Publisher::no_media_yet`]. Comes again for the same sub
    /// after `no_media_yet`.
    Attach(Subscribe),
    /// The downstream is no longer wanted: release it in the engine.
    Release(D),
    /// The peer asks for frames of this downstream again.
    Nack {
        /// The downstream.
        down: D,
        /// What it asks for.
        nack: Nack,
    },
    /// The peer asks for a keyframe of this downstream's track.
    KeyframeRequest(D),
    /// The peer asks for a keyframe of one layer of this downstream's track.
    LayerKeyframeRequest {
        /// The downstream.
        down: D,
        /// The layer.
        rid: String,
    },
    /// The peer wants only these layers of this downstream's track from now on.
    SetLayers {
        /// The downstream.
        down: D,
        /// The layers to forward.
        layers: LayerSet,
    },
    /// Close the link (the handshake did not finish in time).
    Close {
        /// Why, for the log and the QUIC close frame.
        reason: &'static str,
    },
}

/// Counters of one link.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PublisherStats {
    /// `Subscribe`s refused with `Overloaded` (the link was at [`PublisherLimits::max_subs`]).
    pub overloaded: u64,
    /// `Subscribe`s naming a sub id in use (ignored).
    pub duplicate: u64,
    /// Messages about a sub id that is not subscribed (ignored).
    pub unknown: u64,
    /// Subscriptions that waited for their track's first frame.
    pub waited_for_media: u64,
}

#[derive(Debug)]
enum Sub<D> {
    /// An `Attach` is out; `give_up` bounds the wait for media.
    Attaching {
        req: Subscribe,
        give_up: Instant,
        cancelled: bool,
        /// A `SetLayers` came after the `Attach` went out: passed on once attached.
        layers_changed: bool,
    },
    /// The track has no frame yet: `Attach` again at `retry`.
    Waiting {
        req: Subscribe,
        retry: Instant,
        give_up: Instant,
    },
    Live {
        down: D,
        /// What it carries, so that copies of one track on the link can be counted.
        track: TrackRef,
    },
}

/// A track as a subscription names it: app, session, track name.
type TrackRef = (String, [u8; 16], String);

fn track_of(s: &Subscribe) -> TrackRef {
    (s.app.clone(), s.session_id, s.track_name.clone())
}

/// Subscriptions of one link to one track at once: two, for a make-before-break move of a
/// viewer between upstreams. More would only make this node send copies of the same media.
pub const MAX_SUBS_PER_TRACK: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Handshake { deadline: Instant },
    Open,
    Closed,
}

/// The serving end of one link; see the module doc.
#[derive(Debug)]
pub struct Publisher<D> {
    limits: PublisherLimits,
    phase: Phase,
    subs: HashMap<SubId, Sub<D>>,
    downs: HashMap<D, SubId>,
    transmits: VecDeque<ControlMsg>,
    events: VecDeque<PublisherEvent<D>>,
    stats: PublisherStats,
}

impl<D: Copy + Eq + Hash> Publisher<D> {
    /// A link accepted at `now`, its handshake not done yet.
    pub fn new(now: Instant, limits: PublisherLimits) -> Self {
        Publisher {
            limits,
            phase: Phase::Handshake {
                deadline: now + limits.handshake,
            },
            subs: HashMap::new(),
            downs: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: PublisherStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> PublisherStats {
        self.stats
    }

    /// Subscriptions held (live or being answered).
    pub fn subscriptions(&self) -> usize {
        self.subs.len()
    }

    /// The downstream of a live subscription.
    pub fn down(&self, sub: SubId) -> Option<D> {
        match self.subs.get(&sub) {
            Some(Sub::Live { down, .. }) => Some(*down),
            _ => None,
        }
    }

    /// The handshake succeeded: control messages may come.
    pub fn handshake_done(&mut self) {
        if matches!(self.phase, Phase::Handshake { .. }) {
            self.phase = Phase::Open;
        }
    }

    /// A control message from the peer.
    pub fn handle_control(&mut self, now: Instant, msg: ControlMsg) {
        if self.phase != Phase::Open {
            return;
        }
        match msg {
            ControlMsg::Subscribe(s) => self.subscribe(now, s),
            ControlMsg::Unsubscribe { sub } => match self.subs.get_mut(&sub) {
                Some(Sub::Live { down, .. }) => {
                    let down = *down;
                    self.subs.remove(&sub);
                    self.downs.remove(&down);
                    self.events.push_back(PublisherEvent::Release(down));
                }
                Some(Sub::Attaching { cancelled, .. }) => *cancelled = true,
                Some(Sub::Waiting { .. }) => {
                    // Nothing attached: forget it now.
                    self.subs.remove(&sub);
                }
                None => self.stats.unknown += 1,
            },
            ControlMsg::Nack(nack) => match self.down(nack.sub) {
                Some(down) => self.events.push_back(PublisherEvent::Nack { down, nack }),
                None => self.stats.unknown += 1,
            },
            ControlMsg::KeyframeRequest { sub } => match self.down(sub) {
                Some(down) => self.events.push_back(PublisherEvent::KeyframeRequest(down)),
                None => self.stats.unknown += 1,
            },
            ControlMsg::LayerKeyframeRequest { sub, rid } => match self.down(sub) {
                Some(down) => self
                    .events
                    .push_back(PublisherEvent::LayerKeyframeRequest { down, rid }),
                None => self.stats.unknown += 1,
            },
            ControlMsg::SetLayers(s) => match self.subs.get_mut(&s.sub) {
                Some(Sub::Live { down, .. }) => {
                    let down = *down;
                    self.events.push_back(PublisherEvent::SetLayers {
                        down,
                        layers: s.layers,
                    });
                }
                Some(Sub::Attaching {
                    req,
                    layers_changed,
                    ..
                }) => {
                    req.layers = s.layers;
                    *layers_changed = true;
                }
                // The next `Attach` carries it.
                Some(Sub::Waiting { req, .. }) => req.layers = s.layers,
                None => self.stats.unknown += 1,
            },
            // Publisher → subscriber messages: not for this end.
            ControlMsg::Subscribed { .. }
            | ControlMsg::SubscribeFailed { .. }
            | ControlMsg::TrackEnded { .. }
            | ControlMsg::Layers(_) => self.stats.unknown += 1,
        }
    }

    fn subscribe(&mut self, now: Instant, s: Subscribe) {
        if self.subs.contains_key(&s.sub) {
            self.stats.duplicate += 1;
            return;
        }
        if self.subs.len() >= self.limits.max_subs {
            self.stats.overloaded += 1;
            self.transmits.push_back(ControlMsg::SubscribeFailed {
                sub: s.sub,
                code: FailureCode::Overloaded,
                reason: "too many subscriptions on this link".into(),
            });
            return;
        }
        let same = |app: &str, session: &[u8; 16], name: &str| {
            app == s.app && *session == s.session_id && name == s.track_name
        };
        let copies = self
            .subs
            .values()
            .filter(|v| match v {
                // One unsubscribed while it attaches is on its way out.
                Sub::Attaching {
                    cancelled: true, ..
                } => false,
                Sub::Attaching { req, .. } | Sub::Waiting { req, .. } => {
                    same(&req.app, &req.session_id, &req.track_name)
                }
                Sub::Live {
                    track: (a, sid, n), ..
                } => same(a, sid, n),
            })
            .count();
        if copies >= MAX_SUBS_PER_TRACK {
            self.stats.overloaded += 1;
            self.transmits.push_back(ControlMsg::SubscribeFailed {
                sub: s.sub,
                code: FailureCode::Overloaded,
                reason: format!(
                    "this link already holds {MAX_SUBS_PER_TRACK} subscriptions to this track"
                ),
            });
            return;
        }
        self.events.push_back(PublisherEvent::Attach(s.clone()));
        self.subs.insert(
            s.sub,
            Sub::Attaching {
                req: s,
                give_up: now + self.limits.media_wait,
                cancelled: false,
                layers_changed: false,
            },
        );
    }

    /// The engine took the subscription as downstream `down`.
    pub fn attached(&mut self, sub: SubId, down: D, track: TrackInfo) {
        match self.subs.get(&sub) {
            Some(Sub::Attaching {
                cancelled: false,
                req,
                layers_changed,
                ..
            }) if self.phase == Phase::Open => {
                let changed = layers_changed.then(|| req.layers.clone());
                let track_ref = track_of(req);
                self.subs.insert(
                    sub,
                    Sub::Live {
                        down,
                        track: track_ref,
                    },
                );
                self.downs.insert(down, sub);
                self.transmits
                    .push_back(ControlMsg::Subscribed { sub, track });
                if let Some(layers) = changed {
                    self.events
                        .push_back(PublisherEvent::SetLayers { down, layers });
                }
            }
            Some(Sub::Attaching { .. }) => {
                // Unsubscribed meanwhile, or the link closed.
                self.subs.remove(&sub);
                self.events.push_back(PublisherEvent::Release(down));
            }
            _ => self.events.push_back(PublisherEvent::Release(down)),
        }
    }

    /// The track is not on this node (or not for the subscription's app).
    pub fn not_found(&mut self, sub: SubId) {
        if let Some(Sub::Attaching { cancelled, .. }) = self.subs.get(&sub) {
            let cancelled = *cancelled;
            self.subs.remove(&sub);
            if !cancelled && self.phase == Phase::Open {
                self.refuse(sub);
            }
        }
    }

    /// The track is published here but has had no frame yet, so no codec to answer with: ask
    /// again soon, or refuse once the wait is over.
    pub fn no_media_yet(&mut self, now: Instant, sub: SubId) {
        let Some(Sub::Attaching {
            req,
            give_up,
            cancelled,
            ..
        }) = self.subs.remove(&sub)
        else {
            return;
        };
        if cancelled || self.phase != Phase::Open {
            return;
        }
        if now >= give_up {
            self.refuse(sub);
            return;
        }
        self.stats.waited_for_media += 1;
        let retry = (now + self.limits.media_retry).min(give_up);
        self.subs.insert(
            sub,
            Sub::Waiting {
                req,
                retry,
                give_up,
            },
        );
    }

    fn refuse(&mut self, sub: SubId) {
        self.transmits.push_back(ControlMsg::SubscribeFailed {
            sub,
            code: FailureCode::NotFound,
            reason: "track not found on this node".into(),
        });
    }

    /// The engine ended downstream `down` (its track is gone): the peer is told.
    pub fn track_ended(&mut self, down: D) {
        let Some(sub) = self.downs.remove(&down) else {
            return;
        };
        self.subs.remove(&sub);
        if self.phase == Phase::Open {
            self.transmits.push_back(ControlMsg::TrackEnded { sub });
        }
    }

    /// The link is gone: every downstream is released, answers still to come release theirs.
    pub fn closed(&mut self) {
        self.phase = Phase::Closed;
        self.transmits.clear();
        let mut downs: Vec<D> = self.downs.drain().map(|(d, _)| d).collect();
        self.subs.retain(|_, s| matches!(s, Sub::Attaching { .. }));
        for down in downs.drain(..) {
            self.events.push_back(PublisherEvent::Release(down));
        }
    }

    /// Whether the link is closed and nothing is left to release.
    pub fn is_drained(&self) -> bool {
        self.phase == Phase::Closed && self.subs.is_empty() && self.events.is_empty()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let waits = self.subs.values().filter_map(|s| match s {
            Sub::Waiting { retry, .. } => Some(*retry),
            _ => None,
        });
        match self.phase {
            Phase::Handshake { deadline } => Some(deadline),
            Phase::Open => waits.min(),
            Phase::Closed => None,
        }
    }

    /// Time passed: the handshake deadline, and subscriptions waiting for media ask again.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Handshake { deadline } if now >= deadline => {
                self.phase = Phase::Closed;
                self.events.push_back(PublisherEvent::Close {
                    reason: "relay handshake timed out",
                });
                return;
            }
            Phase::Open => {}
            _ => return,
        }
        let due: Vec<SubId> = self
            .subs
            .iter()
            .filter(|(_, s)| matches!(s, Sub::Waiting { retry, .. } if *retry <= now))
            .map(|(sub, _)| *sub)
            .collect();
        for sub in due {
            let Some(Sub::Waiting { req, give_up, .. }) = self.subs.remove(&sub) else {
                continue;
            };
            self.events.push_back(PublisherEvent::Attach(req.clone()));
            self.subs.insert(
                sub,
                Sub::Attaching {
                    req,
                    give_up,
                    cancelled: false,
                    layers_changed: false,
                },
            );
        }
    }

    /// The next control message to write to the peer.
    pub fn poll_transmit(&mut self) -> Option<ControlMsg> {
        self.transmits.pop_front()
    }

    /// The next thing the driver must do.
    pub fn poll_event(&mut self) -> Option<PublisherEvent<D>> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{CodecParams, Layers, MediaKind, SetLayers};

    fn req(sub: SubId) -> Subscribe {
        Subscribe {
            sub,
            session_id: [7; 16],
            track_name: format!("t{sub}"),
            app: "app".into(),
            layers: LayerSet::All,
        }
    }

    fn info() -> TrackInfo {
        TrackInfo {
            kind: MediaKind::Video,
            codec: CodecParams {
                mime: "video/VP8".into(),
                clock_rate: 90_000,
                channels: None,
            },
        }
    }

    fn open(now: Instant, limits: PublisherLimits) -> Publisher<u64> {
        let mut p = Publisher::new(now, limits);
        p.handshake_done();
        p
    }

    fn drain(p: &mut Publisher<u64>) -> (Vec<ControlMsg>, Vec<PublisherEvent<u64>>) {
        let mut t = Vec::new();
        while let Some(m) = p.poll_transmit() {
            t.push(m);
        }
        let mut e = Vec::new();
        while let Some(ev) = p.poll_event() {
            e.push(ev);
        }
        (t, e)
    }

    #[test]
    fn a_subscription_is_attached_then_answered_and_its_messages_name_its_downstream() {
        let t0 = Instant::now();
        let mut p = open(t0, PublisherLimits::default());
        p.handle_control(t0, ControlMsg::Subscribe(req(1)));
        let (tx, ev) = drain(&mut p);
        assert!(tx.is_empty(), "no answer before the engine's");
        assert_eq!(ev, vec![PublisherEvent::Attach(req(1))]);
        p.attached(1, 100, info());
        let (tx, _) = drain(&mut p);
        assert_eq!(
            tx,
            vec![ControlMsg::Subscribed {
                sub: 1,
                track: info()
            }]
        );
        p.handle_control(t0, ControlMsg::KeyframeRequest { sub: 1 });
        let nack = Nack {
            sub: 1,
            frames: vec![],
        };
        p.handle_control(t0, ControlMsg::Nack(nack.clone()));
        p.handle_control(t0, ControlMsg::KeyframeRequest { sub: 9 });
        p.handle_control(
            t0,
            ControlMsg::LayerKeyframeRequest {
                sub: 1,
                rid: "q".into(),
            },
        );
        let (_, ev) = drain(&mut p);
        assert_eq!(
            ev,
            vec![
                PublisherEvent::KeyframeRequest(100),
                PublisherEvent::Nack { down: 100, nack },
                PublisherEvent::LayerKeyframeRequest {
                    down: 100,
                    rid: "q".into()
                },
            ]
        );
        assert_eq!(p.stats().unknown, 1, "sub 9 is nobody's");
        p.handle_control(t0, ControlMsg::Unsubscribe { sub: 1 });
        let (_, ev) = drain(&mut p);
        assert_eq!(ev, vec![PublisherEvent::Release(100)]);
        assert_eq!(p.subscriptions(), 0);
    }

    #[test]
    fn layer_changes_reach_the_downstream_whatever_its_phase() {
        let t0 = Instant::now();
        let mut p = open(t0, PublisherLimits::default());
        let q = || LayerSet::Only(vec!["q".into()]);
        let h = || LayerSet::Only(vec!["h".into()]);
        // A change while the engine attaches is passed on once it answered.
        p.handle_control(t0, ControlMsg::Subscribe(req(1)));
        drain(&mut p);
        p.handle_control(
            t0,
            ControlMsg::SetLayers(SetLayers {
                sub: 1,
                layers: q(),
            }),
        );
        assert_eq!(drain(&mut p), (vec![], vec![]));
        p.attached(1, 100, info());
        let (_, ev) = drain(&mut p);
        assert_eq!(
            ev,
            vec![PublisherEvent::SetLayers {
                down: 100,
                layers: q()
            }]
        );
        // Live: at once.
        p.handle_control(
            t0,
            ControlMsg::SetLayers(SetLayers {
                sub: 1,
                layers: h(),
            }),
        );
        p.handle_control(
            t0,
            ControlMsg::SetLayers(SetLayers {
                sub: 9,
                layers: h(),
            }),
        );
        let (_, ev) = drain(&mut p);
        assert_eq!(
            ev,
            vec![PublisherEvent::SetLayers {
                down: 100,
                layers: h()
            }]
        );
        assert_eq!(p.stats().unknown, 1, "sub 9 is nobody's");
        // While waiting for media, the next `Attach` carries the change.
        p.handle_control(t0, ControlMsg::Subscribe(req(2)));
        drain(&mut p);
        p.no_media_yet(t0, 2);
        p.handle_control(
            t0,
            ControlMsg::SetLayers(SetLayers {
                sub: 2,
                layers: q(),
            }),
        );
        p.handle_timeout(t0 + PublisherLimits::default().media_retry);
        let (_, ev) = drain(&mut p);
        let mut want = req(2);
        want.layers = q();
        assert_eq!(ev, vec![PublisherEvent::Attach(want)]);

        // A `Layers` from the peer is not for this end.
        let unknown = p.stats().unknown;
        p.handle_control(
            t0,
            ControlMsg::Layers(Layers {
                sub: 1,
                layers: vec![],
            }),
        );
        assert_eq!(p.stats().unknown, unknown + 1);
    }

    #[test]
    fn a_track_with_no_frame_yet_is_asked_again_until_the_wait_is_over() {
        let t0 = Instant::now();
        let limits = PublisherLimits::default();
        let mut p = open(t0, limits);
        p.handle_control(t0, ControlMsg::Subscribe(req(1)));
        drain(&mut p);
        p.no_media_yet(t0, 1);
        assert_eq!(p.poll_timeout(), Some(t0 + limits.media_retry));
        p.handle_timeout(t0 + limits.media_retry);
        let (tx, ev) = drain(&mut p);
        assert!(tx.is_empty());
        assert_eq!(ev, vec![PublisherEvent::Attach(req(1))], "asked again");
        // The first frame came: answered.
        p.attached(1, 5, info());
        assert!(matches!(
            p.poll_transmit(),
            Some(ControlMsg::Subscribed { sub: 1, .. })
        ));

        // Another never gets one: refused once the wait is over, not before.
        p.handle_control(t0, ControlMsg::Subscribe(req(2)));
        drain(&mut p);
        let mut now = t0;
        let mut asked = 0;
        for _ in 0..1000 {
            p.no_media_yet(now, 2);
            if let Some(ControlMsg::SubscribeFailed { sub, code, .. }) = p.poll_transmit() {
                assert_eq!((sub, code), (2, FailureCode::NotFound));
                break;
            }
            now = p.poll_timeout().expect("a retry is due");
            p.handle_timeout(now);
            asked += usize::from(matches!(p.poll_event(), Some(PublisherEvent::Attach(_))));
        }
        assert!(now >= t0 + limits.media_wait, "refused only after the wait");
        assert_eq!(
            asked,
            (limits.media_wait.as_millis() / limits.media_retry.as_millis()) as usize,
            "one ask per retry step"
        );
        assert_eq!(p.subscriptions(), 1, "only sub 1 is left");
    }

    #[test]
    fn an_unsubscribe_overtaking_the_answer_cancels_it_and_releases_what_attached() {
        let t0 = Instant::now();
        let mut p = open(t0, PublisherLimits::default());
        p.handle_control(t0, ControlMsg::Subscribe(req(1)));
        p.handle_control(t0, ControlMsg::Subscribe(req(2)));
        p.handle_control(t0, ControlMsg::Subscribe(req(3)));
        drain(&mut p);
        for sub in [1, 2, 3] {
            p.handle_control(t0, ControlMsg::Unsubscribe { sub });
        }
        p.attached(1, 10, info());
        p.not_found(2);
        p.no_media_yet(t0, 3);
        let (tx, ev) = drain(&mut p);
        assert!(
            tx.is_empty(),
            "no answer to a subscription given up: {tx:?}"
        );
        assert_eq!(ev, vec![PublisherEvent::Release(10)]);
        assert_eq!(p.subscriptions(), 0);
        assert_eq!(p.poll_timeout(), None);
    }

    #[test]
    fn a_full_link_refuses_with_overloaded_and_a_reused_sub_id_is_ignored() {
        let t0 = Instant::now();
        let limits = PublisherLimits {
            max_subs: 2,
            ..PublisherLimits::default()
        };
        let mut p = open(t0, limits);
        for sub in 1..=3 {
            p.handle_control(t0, ControlMsg::Subscribe(req(sub)));
        }
        p.handle_control(t0, ControlMsg::Subscribe(req(1)));
        let (tx, ev) = drain(&mut p);
        assert_eq!(ev.len(), 2, "two attached: {ev:?}");
        assert!(matches!(
            tx.as_slice(),
            [ControlMsg::SubscribeFailed {
                sub: 3,
                code: FailureCode::Overloaded,
                ..
            }]
        ));
        assert_eq!(p.stats().overloaded, 1);
        assert_eq!(p.stats().duplicate, 1);
        // A freed place is free again.
        p.not_found(2);
        p.handle_control(t0, ControlMsg::Subscribe(req(4)));
        let (_, ev) = drain(&mut p);
        assert_eq!(ev, vec![PublisherEvent::Attach(req(4))]);
    }

    #[test]
    fn a_link_holds_at_most_two_subscriptions_to_one_track() {
        let t0 = Instant::now();
        let mut p = open(t0, PublisherLimits::default());
        let same = |sub| Subscribe {
            track_name: "cam".into(),
            ..req(sub)
        };
        p.handle_control(t0, ControlMsg::Subscribe(same(1)));
        p.attached(1, 10, info());
        p.handle_control(t0, ControlMsg::Subscribe(same(2)));
        p.handle_control(t0, ControlMsg::Subscribe(same(3)));
        // Another track, or another session's track of that name, is no copy.
        p.handle_control(t0, ControlMsg::Subscribe(req(4)));
        p.handle_control(
            t0,
            ControlMsg::Subscribe(Subscribe {
                session_id: [8; 16],
                ..same(5)
            }),
        );
        let (tx, ev) = drain(&mut p);
        let attached: Vec<SubId> = ev
            .iter()
            .filter_map(|e| match e {
                PublisherEvent::Attach(s) => Some(s.sub),
                _ => None,
            })
            .collect();
        assert_eq!(attached, vec![1, 2, 4, 5], "{ev:?}");
        assert!(
            tx.iter().any(|m| matches!(
                m,
                ControlMsg::SubscribeFailed {
                    sub: 3,
                    code: FailureCode::Overloaded,
                    ..
                }
            )),
            "{tx:?}"
        );
        // One goes: a place for another.
        p.handle_control(t0, ControlMsg::Unsubscribe { sub: 1 });
        p.handle_control(t0, ControlMsg::Subscribe(same(6)));
        let (_, ev) = drain(&mut p);
        assert!(ev.contains(&PublisherEvent::Attach(same(6))), "{ev:?}");
    }

    #[test]
    fn a_track_end_tells_the_peer_and_a_closed_link_releases_everything() {
        let t0 = Instant::now();
        let mut p = open(t0, PublisherLimits::default());
        for sub in 1..=3 {
            p.handle_control(t0, ControlMsg::Subscribe(req(sub)));
        }
        p.attached(1, 10, info());
        p.attached(2, 20, info());
        drain(&mut p);
        p.track_ended(10);
        p.track_ended(10);
        let (tx, _) = drain(&mut p);
        assert_eq!(tx, vec![ControlMsg::TrackEnded { sub: 1 }], "once");
        p.closed();
        let (tx, ev) = drain(&mut p);
        assert!(tx.is_empty());
        assert_eq!(ev, vec![PublisherEvent::Release(20)]);
        assert!(!p.is_drained(), "sub 3 is still being attached");
        // Its answer comes after the close: released, never answered.
        p.attached(3, 30, info());
        let (tx, ev) = drain(&mut p);
        assert!(tx.is_empty());
        assert_eq!(ev, vec![PublisherEvent::Release(30)]);
        assert!(p.is_drained());
    }

    #[test]
    fn a_handshake_that_does_not_finish_in_time_closes_the_link() {
        let t0 = Instant::now();
        let limits = PublisherLimits::default();
        let mut p: Publisher<u64> = Publisher::new(t0, limits);
        p.handle_control(t0, ControlMsg::Subscribe(req(1)));
        assert_eq!(p.poll_event(), None, "nothing before the handshake");
        assert_eq!(p.poll_timeout(), Some(t0 + limits.handshake));
        p.handle_timeout(t0 + limits.handshake - Duration::from_millis(1));
        assert_eq!(p.poll_event(), None);
        p.handle_timeout(t0 + limits.handshake);
        assert!(matches!(p.poll_event(), Some(PublisherEvent::Close { .. })));

        let mut q: Publisher<u64> = Publisher::new(t0, limits);
        q.handshake_done();
        assert_eq!(q.poll_timeout(), None, "no deadline once welcomed");
        q.handle_timeout(t0 + limits.handshake * 2);
        assert_eq!(q.poll_event(), None);
    }
}
