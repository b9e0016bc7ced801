//! The dialing side of relay links: a quinn driver around relay-proto's [`Subscriber`].
//!
//! One task ([`run`]) owns the machine and the handles of every link this node dialed: the
//! link and upstream tables, pending subscriptions, avoidance and re-routes live in the machine,
//! nowhere else. Pulls, dial tasks, link readers and the engine's output task talk to it over
//! one bounded command queue ([`Cmd`]); answers go back on oneshots. Each dialed link has a
//! reader task for its control stream and datagrams, whose inbound machine keeps its own copy
//! of the link's sub id → upstream table, kept in step by the owning task over a bounded queue
//! (`reader.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;
use trackmesh_relay_proto::codec::FrameDecoder;
use trackmesh_relay_proto::control::{ControlMsg, LayerSet};
use trackmesh_relay_proto::handshake::{self, HandshakeMsg, Hello};
use trackmesh_relay_proto::link::subscriber::{
    PullFailure, Subscriber, SubscriberEvent, SubscriberLimits, TrackRef,
};

use super::reader::{SubUpdate, run_link, sleep_until};
use super::wire::{self, CONTROL_QUEUE};
use super::{Inner, PullError};
use crate::cluster::hubs::upstream_for;
use crate::cluster::view::{ClusterView, Member};
use crate::engine::TrackInfo;
use crate::ids::{NodeId, SessionId, UpId};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Commands waiting for the pulling task; the engine's output task drops and counts beyond it,
/// everyone else waits for room.
pub const PULL_QUEUE: usize = 1024;
/// Changes of one link's sub id → upstream table waiting for its reader. Two per subscription;
/// a reader that far behind has its link closed (its upstreams re-route).
const SUB_UPDATES: usize = 8192;
/// A pull's caller waits at most this for the pulling task's answer (a dial, then a subscribe).
const PULL_ANSWER_TIMEOUT: Duration = Duration::from_secs(6);

/// What the pulling task is asked to do or told happened.
pub(crate) enum Cmd {
    /// Subscribe to a track (or share the upstream of it there is), answering with the upstream.
    /// `fresh`: a new upstream even if there is one (moving off a draining hub).
    Pull {
        app: String,
        session: SessionId,
        track: String,
        direct_only: bool,
        fresh: bool,
        reply: oneshot::Sender<Result<(UpId, TrackInfo), PullError>>,
    },
    /// A link to this peer, for DataChannel streams.
    Link {
        peer: Member,
        reply: oneshot::Sender<anyhow::Result<quinn::Connection>>,
    },
    /// A dial task ended.
    Dialed {
        peer: NodeId,
        link: anyhow::Result<DialedLink>,
    },
    /// A control message from a dialed link.
    Control { link: u64, msg: ControlMsg },
    /// A dialed link's reader ended: the link is gone.
    LinkEnded { link: u64 },
    /// The answer to a re-route's question: where to now.
    Route { up: UpId, answer: RouteAnswer },
    /// The engine no longer uses the upstream.
    Unused(UpId),
    /// The engine asks the upstream's peer for a keyframe.
    KeyframeRequest(UpId),
    /// The engine asks the upstream's peer for a keyframe of one layer.
    LayerKeyframeRequest(UpId, String),
    /// The engine's viewers need only these layers of the upstream's track.
    SetLayers(UpId, LayerSet),
    /// A move off a draining hub ended: `new` took over (`ok`), or did not, or none was made.
    Moved {
        old: UpId,
        new: Option<UpId>,
        ok: bool,
    },
}

/// Where a re-routing upstream goes now.
pub(crate) enum RouteAnswer {
    Via(Member),
    /// No route now (the origin is not live): wait for the view to change.
    Wait,
    /// The engine no longer wants it.
    GiveUp,
}

/// A link dialed and handshaken, not yet read.
pub(crate) struct DialedLink {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    dec: FrameDecoder<HandshakeMsg>,
}

/// What the admin view and the figures show of the pulling side, published by its task.
#[derive(Default)]
pub(crate) struct PullView {
    pub links: Vec<NodeId>,
    pub ups: Vec<UpView>,
}

/// An established upstream, for the admin view.
pub(crate) struct UpView {
    pub session: SessionId,
    pub track: String,
    pub via: NodeId,
    pub frames: Arc<AtomicU64>,
}

struct LinkHandle {
    id: u64,
    conn: quinn::Connection,
    control: mpsc::Sender<ControlMsg>,
    subs: mpsc::Sender<SubUpdate>,
}

impl LinkHandle {
    /// Tells the reader; one too far behind loses its link.
    fn update(&self, u: SubUpdate) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.subs.try_send(u) {
            tracing::warn!("relay link reader too far behind: closing the link");
            self.conn.close(0u32.into(), b"reader behind");
        }
    }
}

/// What the task keeps of an upstream besides the machine's state.
struct Meta {
    app: String,
    session: SessionId,
    track: String,
    frames: Arc<AtomicU64>,
    /// Known once subscribed.
    info: Option<TrackInfo>,
    /// A second upstream of a track being moved off a draining hub (not shared).
    fresh: bool,
}

type PullReply = oneshot::Sender<Result<(UpId, TrackInfo), PullError>>;

struct Driver {
    inner: Arc<Inner>,
    cmds: mpsc::Sender<Cmd>,
    machine: Subscriber<NodeId, UpId>,
    links: HashMap<NodeId, LinkHandle>,
    link_peers: HashMap<u64, NodeId>,
    next_link: u64,
    /// Where to dial each peer (from the view, as last chosen).
    members: HashMap<NodeId, Member>,
    meta: HashMap<UpId, Meta>,
    /// The one shared upstream of each track.
    by_track: HashMap<(SessionId, String), UpId>,
    waiters: HashMap<UpId, Vec<PullReply>>,
    link_waiters: HashMap<NodeId, Vec<oneshot::Sender<anyhow::Result<quinn::Connection>>>>,
    moving: HashSet<UpId>,
    published: watch::Sender<Arc<PullView>>,
    dirty: bool,
}

/// The pulling task: owns the [`Subscriber`] machine until the command queue closes.
pub(crate) async fn run(
    inner: Arc<Inner>,
    cmds: mpsc::Sender<Cmd>,
    mut rx: mpsc::Receiver<Cmd>,
    published: watch::Sender<Arc<PullView>>,
) {
    let mut view = inner.view.clone();
    let mut d = Driver {
        inner,
        cmds,
        machine: Subscriber::new(SubscriberLimits::default()),
        links: HashMap::new(),
        link_peers: HashMap::new(),
        next_link: 1,
        members: HashMap::new(),
        meta: HashMap::new(),
        by_track: HashMap::new(),
        waiters: HashMap::new(),
        link_waiters: HashMap::new(),
        moving: HashSet::new(),
        published,
        dirty: false,
    };
    let mut view_open = true;
    loop {
        d.carry_out();
        if std::mem::take(&mut d.dirty) {
            d.publish();
        }
        let wake = d.machine.poll_timeout();
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(cmd) => d.handle(Instant::now(), cmd),
                None => return,
            },
            changed = view.changed(), if view_open => match changed {
                Ok(()) => {
                    let v = view.borrow_and_update().clone();
                    d.view_changed(Instant::now(), &v);
                }
                Err(_) => view_open = false,
            },
            () = sleep_until(wake), if wake.is_some() => d.machine.handle_timeout(Instant::now()),
        }
    }
}

fn pull_error(reason: PullFailure) -> PullError {
    match reason {
        PullFailure::Avoided | PullFailure::Link => PullError::Link,
        PullFailure::Refused => PullError::Refused,
        PullFailure::NoAnswer => PullError::NoAnswer,
    }
}

impl Driver {
    fn handle(&mut self, now: Instant, cmd: Cmd) {
        match cmd {
            Cmd::Pull {
                app,
                session,
                track,
                direct_only,
                fresh,
                reply,
            } => self.pull(now, app, session, track, direct_only, fresh, reply),
            Cmd::Link { peer, reply } => {
                let id = NodeId::from(peer.node_id.as_str());
                if let Some(l) = self.links.get(&id) {
                    let _ = reply.send(Ok(l.conn.clone()));
                    return;
                }
                self.members.insert(id.clone(), peer);
                if self.machine.connect(now, id.clone()) {
                    self.link_waiters.entry(id).or_default().push(reply);
                } else {
                    let _ = reply.send(Err(anyhow!("{id} failed recently")));
                }
            }
            Cmd::Dialed { peer, link } => self.dialed(now, peer, link),
            Cmd::Control { link, msg } => {
                let Some(peer) = self.link_peers.get(&link).cloned() else {
                    return;
                };
                let sub = msg.sub();
                let done = matches!(
                    msg,
                    ControlMsg::SubscribeFailed { .. } | ControlMsg::TrackEnded { .. }
                );
                self.machine.handle_control(now, &peer, msg);
                if done && let Some(l) = self.links.get(&peer) {
                    l.update(SubUpdate::Remove(sub));
                }
            }
            Cmd::LinkEnded { link } => {
                let Some(peer) = self.link_peers.remove(&link) else {
                    return;
                };
                if self.links.get(&peer).is_some_and(|l| l.id == link)
                    && let Some(l) = self.links.remove(&peer)
                {
                    l.conn.close(0u32.into(), b"bye");
                }
                tracing::info!(%peer, "relay link lost");
                self.machine.link_lost(now, &peer);
                self.dirty = true;
            }
            Cmd::Route { up, answer } => match answer {
                RouteAnswer::Via(member) => {
                    let id = NodeId::from(member.node_id.as_str());
                    self.members.insert(id.clone(), member);
                    self.machine.reroute_to(now, up, id);
                }
                RouteAnswer::Wait => self.machine.reroute_wait(now, up),
                RouteAnswer::GiveUp => {
                    self.machine.give_up(up);
                    self.forget(up);
                }
            },
            Cmd::Unused(up) => {
                self.machine.unsubscribe(up);
                self.forget(up);
            }
            Cmd::KeyframeRequest(up) => {
                if let Some((peer, sub)) = self.machine.route_of(up)
                    && let Some(l) = self.links.get(peer)
                {
                    self.inner
                        .send_control(&l.control, ControlMsg::KeyframeRequest { sub });
                }
            }
            Cmd::LayerKeyframeRequest(up, rid) => {
                if let Some((peer, sub)) = self.machine.route_of(up)
                    && let Some(l) = self.links.get(peer)
                {
                    self.inner
                        .send_control(&l.control, ControlMsg::LayerKeyframeRequest { sub, rid });
                }
            }
            Cmd::SetLayers(up, layers) => self.machine.set_layers(up, layers),
            Cmd::Moved { old, new, ok } => {
                self.moving.remove(&old);
                match (new, ok) {
                    (Some(new), true) => {
                        if let Some(m) = self.meta.get_mut(&new) {
                            m.fresh = false;
                            let key = (m.session, m.track.clone());
                            self.by_track.insert(key, new);
                        }
                        self.machine.unsubscribe(old);
                        self.forget(old);
                    }
                    (Some(new), false) => {
                        self.machine.unsubscribe(new);
                        self.forget(new);
                    }
                    (None, _) => {}
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn pull(
        &mut self,
        now: Instant,
        app: String,
        session: SessionId,
        track: String,
        direct_only: bool,
        fresh: bool,
        reply: PullReply,
    ) {
        let key = (session, track.clone());
        if !fresh && let Some(up) = self.by_track.get(&key).copied() {
            // One upstream per track: share it, now if it is live, else once it is.
            match self.meta.get(&up).and_then(|m| m.info) {
                Some(info) if self.machine.route_of(up).is_some() => {
                    let _ = reply.send(Ok((up, info)));
                }
                _ => self.waiters.entry(up).or_default().push(reply),
            }
            return;
        }
        let view = self.inner.view.borrow().clone();
        let Some(route) = upstream_for(&view, session, &track, direct_only) else {
            let _ = reply.send(Err(PullError::NoRoute));
            return;
        };
        let member = route.peer().clone();
        let peer = NodeId::from(member.node_id.as_str());
        self.members.insert(peer.clone(), member);
        let up = self.inner.next_up();
        let wire_track = TrackRef {
            session_id: session.to_bytes(),
            track_name: track.clone(),
            app: app.clone(),
        };
        self.meta.insert(
            up,
            Meta {
                app,
                session,
                track,
                frames: Arc::new(AtomicU64::new(0)),
                info: None,
                fresh,
            },
        );
        if !fresh {
            self.by_track.insert(key, up);
        }
        self.waiters.entry(up).or_default().push(reply);
        self.machine.pull(now, up, peer, wire_track);
    }

    /// Forgets what the task kept of an upstream the machine no longer holds; callers still
    /// waiting for it are told no answer came.
    fn forget(&mut self, up: UpId) {
        if let Some(m) = self.meta.remove(&up) {
            let key = (m.session, m.track);
            if self.by_track.get(&key) == Some(&up) {
                self.by_track.remove(&key);
            }
        }
        for w in self.waiters.remove(&up).unwrap_or_default() {
            let _ = w.send(Err(PullError::NoAnswer));
        }
        self.dirty = true;
    }

    fn dialed(&mut self, now: Instant, peer: NodeId, link: anyhow::Result<DialedLink>) {
        let link = match link {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "no relay link");
                self.machine.dialed(now, &peer, false);
                for w in self.link_waiters.remove(&peer).unwrap_or_default() {
                    let _ = w.send(Err(anyhow!("no relay link to {peer}: {e:#}")));
                }
                return;
            }
        };
        self.machine.dialed(now, &peer, true);
        if self.links.contains_key(&peer) || !self.machine.is_linked(&peer) {
            // Not the dial the machine waits for: keep the link there is.
            link.conn.close(0u32.into(), b"duplicate");
            return;
        }
        let id = self.next_link;
        self.next_link += 1;
        let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_QUEUE);
        let (subs_tx, subs_rx) = mpsc::channel(SUB_UPDATES);
        self.inner.spawn(wire::write_control(link.send, ctl_rx));
        tracing::info!(%peer, "relay link dialed");
        let span = tracing::info_span!("relay_link", direction = "out", %peer);
        self.inner.spawn(
            run_link(
                self.inner.clone(),
                self.cmds.clone(),
                id,
                link.conn.clone(),
                ctl_tx.clone(),
                link.recv,
                link.dec,
                subs_rx,
            )
            .instrument(span),
        );
        for w in self.link_waiters.remove(&peer).unwrap_or_default() {
            let _ = w.send(Ok(link.conn.clone()));
        }
        self.link_peers.insert(id, peer.clone());
        self.links.insert(
            peer,
            LinkHandle {
                id,
                conn: link.conn,
                control: ctl_tx,
                subs: subs_tx,
            },
        );
        self.dirty = true;
    }

    /// Carries out what the machine queued.
    fn carry_out(&mut self) {
        while let Some((peer, msg)) = self.machine.poll_transmit() {
            let Some(l) = self.links.get(&peer) else {
                continue;
            };
            match &msg {
                ControlMsg::Subscribe(s) => {
                    // The reader knows the sub before the peer can answer it.
                    if let Some(up) = self.machine.upstream_of(&peer, s.sub)
                        && let Some(m) = self.meta.get(&up)
                    {
                        l.update(SubUpdate::Add(s.sub, up, m.frames.clone()));
                    }
                }
                ControlMsg::Unsubscribe { sub } => l.update(SubUpdate::Remove(*sub)),
                _ => {}
            }
            self.inner.send_control(&l.control, msg);
        }
        while let Some(ev) = self.machine.poll_event() {
            self.event(ev);
        }
    }

    fn event(&mut self, ev: SubscriberEvent<NodeId, UpId>) {
        match ev {
            SubscriberEvent::Dial(peer) => {
                let Some(member) = self.members.get(&peer).cloned() else {
                    self.machine.dialed(Instant::now(), &peer, false);
                    return;
                };
                let (inner, cmds) = (self.inner.clone(), self.cmds.clone());
                self.inner.spawn(async move {
                    let link = dial(&inner, &member).await;
                    let _ = cmds.send(Cmd::Dialed { peer, link }).await;
                });
            }
            SubscriberEvent::Subscribed {
                up,
                peer,
                track,
                rerouted,
            } => {
                let info = wire::from_wire(&track);
                let Some(m) = self.meta.get_mut(&up) else {
                    return;
                };
                m.info = Some(info);
                tracing::info!(session = %m.session, track = m.track, via = %peer, up = up.0, "pulling remote track");
                let (app, session, track) = (m.app.clone(), m.session, m.track.clone());
                // The admin view lists the upstream before the pull that made it returns.
                self.dirty = false;
                self.publish();
                for w in self.waiters.remove(&up).unwrap_or_default() {
                    let _ = w.send(Ok((up, info)));
                }
                if rerouted {
                    // The engine moves the publication (and its viewers) onto the new route.
                    let (inner, cmds) = (self.inner.clone(), self.cmds.clone());
                    self.inner.spawn(async move {
                        let (a, t) = (app, track.clone());
                        let moved = inner
                            .engine
                            .call(move |e, now| {
                                e.add_relay_publication(&a, session, &t, up, info, now)
                            })
                            .await;
                        match moved {
                            Ok(Ok(())) => {
                                tracing::info!(%session, track, "relayed track re-routed")
                            }
                            failed => {
                                inner.failures.note(match failed {
                                    Ok(Err(_)) => PullError::PublishedHere,
                                    _ => PullError::EngineStopped,
                                });
                                let _ = cmds.send(Cmd::Unused(up)).await;
                            }
                        }
                    });
                }
            }
            SubscriberEvent::Failed {
                up,
                reason,
                retrying,
            } => {
                let e = pull_error(reason);
                if retrying {
                    self.inner.failures.note(e);
                    tracing::debug!(error = %e, "re-route attempt failed");
                } else {
                    for w in self.waiters.remove(&up).unwrap_or_default() {
                        let _ = w.send(Err(e));
                    }
                    self.forget(up);
                }
            }
            SubscriberEvent::Lost(up) => {
                self.dirty = true;
                let engine = self.inner.engine.clone();
                self.inner.spawn(async move {
                    let _ = engine.call(move |e, _| e.relay_upstream_lost(up)).await;
                });
            }
            SubscriberEvent::RerouteDue(up) => {
                let Some(m) = self.meta.get(&up) else {
                    self.machine.give_up(up);
                    return;
                };
                let (session, track) = (m.session, m.track.clone());
                let (inner, cmds) = (self.inner.clone(), self.cmds.clone());
                self.inner.spawn(async move {
                    let answer = reroute_answer(&inner, up, session, &track).await;
                    let _ = cmds.send(Cmd::Route { up, answer }).await;
                });
            }
            SubscriberEvent::Layers { up, layers } => {
                let layers = wire::states_from_wire(&layers);
                // Queued without a task or a wait (a peer may send many at once); a full
                // queue drops it, counted.
                if !self
                    .inner
                    .engine
                    .tell(move |e, now| e.relay_layers(up, layers, now))
                {
                    self.inner.control_drops.fetch_add(1, Ordering::Relaxed);
                }
            }
            SubscriberEvent::Ended(up) => {
                if let Some(m) = self.meta.get(&up) {
                    tracing::info!(session = %m.session, track = m.track, "relayed track ended upstream");
                }
                self.forget(up);
                let engine = self.inner.engine.clone();
                self.inner.spawn(async move {
                    let _ = engine.call(move |e, _| e.end_relay_publication(up)).await;
                });
            }
        }
    }

    /// Closes links to peers gossip calls dead (their upstreams re-route at once rather than
    /// after QUIC's idle timeout), wakes re-routes waiting for a route, and moves upstreams off
    /// draining hubs.
    fn view_changed(&mut self, now: Instant, v: &ClusterView) {
        for (peer, l) in &self.links {
            if v.live_by_id(peer.as_str()).is_none() {
                tracing::info!(%peer, "peer is dead: closing its relay link");
                l.conn.close(0u32.into(), b"peer dead");
            }
        }
        self.machine.view_changed(now);
        self.move_off_draining(v);
    }

    /// Upstreams pulled through a hub that now drains move to the hub the view gives now, the
    /// new one subscribed before the old one is let go (make before break), so viewers see no
    /// gap: a draining hub waits for its downstreams to leave before it stops
    /// ([`crate::Node::drain`]). Pulls straight from an origin stay: nothing else holds the
    /// track.
    fn move_off_draining(&mut self, v: &ClusterView) {
        let leaving: Vec<(UpId, NodeId)> = self
            .meta
            .iter()
            .filter(|(id, m)| !m.fresh && !self.moving.contains(*id))
            .filter_map(|(id, m)| {
                let (peer, _) = self.machine.route_of(*id)?;
                let draining = v
                    .members
                    .iter()
                    .any(|x| x.node_id == peer.as_str() && x.live && x.draining);
                let elsewhere = v
                    .live_by_tag(m.session.node_tag())
                    .is_some_and(|origin| origin.node_id != peer.as_str());
                (draining && elsewhere).then(|| (*id, peer.clone()))
            })
            .collect();
        for (up, from) in leaving {
            let Some(m) = self.meta.get(&up) else {
                continue;
            };
            self.moving.insert(up);
            let (app, session, track) = (m.app.clone(), m.session, m.track.clone());
            let (inner, cmds) = (self.inner.clone(), self.cmds.clone());
            self.inner.spawn(async move {
                let new = move_up(&inner, &cmds, up, &from, app, session, track).await;
                let _ = cmds
                    .send(Cmd::Moved {
                        old: up,
                        new: new.map(|(n, _)| n),
                        ok: new.is_some_and(|(_, ok)| ok),
                    })
                    .await;
            });
        }
    }

    fn publish(&mut self) {
        let links = self.links.keys().cloned().collect();
        let ups = self
            .meta
            .iter()
            .filter_map(|(up, m)| {
                let (via, _) = self.machine.route_of(*up)?;
                Some(UpView {
                    session: m.session,
                    track: m.track.clone(),
                    via: via.clone(),
                    frames: m.frames.clone(),
                })
            })
            .collect();
        self.published
            .send_replace(Arc::new(PullView { links, ups }));
    }
}

/// Whether a re-routing upstream is still wanted, and where it goes now.
async fn reroute_answer(inner: &Inner, up: UpId, session: SessionId, track: &str) -> RouteAnswer {
    // Still wanted? The engine ends a relayed track after the track timeout without media.
    match inner
        .engine
        .call(move |e, _| e.relay_upstream_live(up))
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(%session, track, "relayed track ended while no route was found");
            return RouteAnswer::GiveUp;
        }
        Err(e) => {
            inner.failures.note(PullError::EngineStopped);
            tracing::debug!(error = %e, "re-route abandoned");
            return RouteAnswer::GiveUp;
        }
    }
    let view = inner.view.borrow().clone();
    // Partitioned or down: wait for gossip to see the origin again.
    match upstream_for(&view, session, track, false) {
        Some(route) => RouteAnswer::Via(route.peer().clone()),
        None => RouteAnswer::Wait,
    }
}

/// Moves one upstream off its draining hub (see [`Driver::move_off_draining`]): the new
/// upstream and whether the engine took it, or `None` when no move was made.
async fn move_up(
    inner: &Arc<Inner>,
    cmds: &mpsc::Sender<Cmd>,
    up: UpId,
    from: &NodeId,
    app: String,
    session: SessionId,
    track: String,
) -> Option<(UpId, bool)> {
    let view = inner.view.borrow().clone();
    match upstream_for(&view, session, &track, false) {
        Some(route) if route.peer().node_id != from.as_str() => {}
        // Nowhere else to go: the old hub serves until it stops, then the link's loss re-routes.
        _ => return None,
    }
    let live = inner
        .engine
        .call(move |e, _| e.relay_upstream_live(up))
        .await;
    if !matches!(live, Ok(true)) {
        return None;
    }
    let started = Instant::now();
    let (new_up, info) = match request_pull(cmds, &app, session, &track, false, true).await {
        Ok(r) => r,
        Err(e) => {
            inner.failures.note(e);
            tracing::debug!(error = %e, "moving off a draining hub failed; staying");
            return None;
        }
    };
    let (a, t) = (app, track.clone());
    // The engine takes frames from the new upstream from here on; the old one's are ignored.
    let moved = inner
        .engine
        .call(move |e, now| {
            // Only if the publication still takes this upstream (not ended or re-routed meanwhile).
            if !e.relay_upstream_live(up) {
                return false;
            }
            e.add_relay_publication(&a, session, &t, new_up, info, now)
                .is_ok()
        })
        .await;
    let ok = matches!(moved, Ok(true));
    if ok {
        tracing::info!(%session, track, %from, elapsed_ms = started.elapsed().as_millis() as u64, "relayed track moved off a draining hub");
    }
    Some((new_up, ok))
}

/// Asks the pulling task for an upstream of the track, bounded in time.
async fn request_pull(
    cmds: &mpsc::Sender<Cmd>,
    app: &str,
    session: SessionId,
    track: &str,
    direct_only: bool,
    fresh: bool,
) -> Result<(UpId, TrackInfo), PullError> {
    let (reply, rx) = oneshot::channel();
    cmds.send(Cmd::Pull {
        app: app.to_string(),
        session,
        track: track.to_string(),
        direct_only,
        fresh,
        reply,
    })
    .await
    .map_err(|_| PullError::EngineStopped)?;
    match tokio::time::timeout(PULL_ANSWER_TIMEOUT, rx).await {
        Ok(Ok(answer)) => answer,
        _ => Err(PullError::NoAnswer),
    }
}

/// Makes `(session, track)` of `app` available in the local engine, pulling it through the
/// pulling task if needed.
pub async fn ensure_upstream(
    inner: &Arc<Inner>,
    app: &str,
    session: SessionId,
    track: &str,
    direct_only: bool,
) -> Result<(), PullError> {
    if session.node_tag() == inner.tag {
        return Ok(());
    }
    let result = ensure(inner, app, session, track, direct_only).await;
    if let Err(e) = result {
        inner.failures.note(e);
    }
    result
}

async fn ensure(
    inner: &Arc<Inner>,
    app: &str,
    session: SessionId,
    track: &str,
    direct_only: bool,
) -> Result<(), PullError> {
    let (a, t) = (app.to_string(), track.to_string());
    if inner
        .engine
        .call(move |e, _| e.has_publication(&a, session, &t))
        .await
        .map_err(|_| PullError::EngineStopped)?
    {
        return Ok(());
    }
    // Concurrent pulls of one track share its one upstream (the task keeps one per track).
    let (up, info) = request_pull(&inner.pulls, app, session, track, direct_only, false).await?;
    let (a, t) = (app.to_string(), track.to_string());
    let added = inner
        .engine
        .call(move |e, now| e.add_relay_publication(&a, session, &t, up, info, now))
        .await;
    match added {
        Ok(Ok(())) => Ok(()),
        failed => {
            if inner.pulls.send(Cmd::Unused(up)).await.is_err() {
                tracing::debug!("the pulling task has stopped");
            }
            Err(match failed {
                Ok(Err(_)) => PullError::PublishedHere,
                _ => PullError::EngineStopped,
            })
        }
    }
}

/// The link to `peer` (for DataChannel streams), dialed and handshaken if there is none.
pub(super) async fn link_to(
    inner: &Arc<Inner>,
    peer: &Member,
) -> anyhow::Result<quinn::Connection> {
    let (reply, rx) = oneshot::channel();
    inner
        .pulls
        .send(Cmd::Link {
            peer: peer.clone(),
            reply,
        })
        .await
        .map_err(|_| anyhow!("the relay has stopped"))?;
    tokio::time::timeout(PULL_ANSWER_TIMEOUT, rx)
        .await
        .context("no relay link in time")?
        .context("the relay has stopped")?
}

async fn dial(inner: &Arc<Inner>, peer: &Member) -> anyhow::Result<DialedLink> {
    let connecting = inner
        .endpoint()
        .context("the relay has stopped")?
        .connect_with(inner.client.clone(), peer.relay, &inner.server_name)
        .context("starting a relay connection")?;
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .with_context(|| format!("connecting to {} timed out", peer.node_id))??;
    let (mut send, mut recv) = tokio::time::timeout(CONNECT_TIMEOUT, conn.open_bi())
        .await
        .with_context(|| format!("opening the relay stream to {} timed out", peer.node_id))??;
    // Show the identity of the secret the peer's certificate is under: the peer holds that one
    // (during a rotation it may not hold our current one).
    let secret = super::tls::peer_secret(&inner.ca_names, &conn).unwrap_or(0);
    let cluster = inner
        .clusters
        .get(secret)
        .or(inner.clusters.first())
        .copied()
        .context("no cluster identity")?;
    let hello = HandshakeMsg::Hello(Hello {
        protocol_version: handshake::PROTOCOL_VERSION,
        cluster,
        node_id: inner.node_id.to_string(),
        node_tag: inner.tag.0,
    });
    tokio::time::timeout(CONNECT_TIMEOUT, wire::write_one(&mut send, &hello))
        .await
        .with_context(|| format!("greeting {} timed out", peer.node_id))??;
    let mut dec = FrameDecoder::<HandshakeMsg>::new();
    let answer = wire::read_one(&mut recv, &mut dec, CONNECT_TIMEOUT).await?;
    if let Err(e) = wire::check_answer(&peer.node_id, answer) {
        tracing::warn!(peer = %peer.node_id, error = %e, "relay handshake failed");
        return Err(e);
    }
    Ok(DialedLink {
        conn,
        send,
        recv,
        dec,
    })
}
