//! The dialing side of relay links: pull tracks from other nodes, keep one link per peer, pump
//! the engine's relay output onto links, and re-route or end upstreams when a link dies.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;
use trackmesh_relay_proto::codec::FrameDecoder;
use trackmesh_relay_proto::control::{ControlMsg, Nack, NackFrame, Subscribe};
use trackmesh_relay_proto::datachannel::DcFrame;
use trackmesh_relay_proto::handshake::{self, HandshakeMsg, Hello};
use trackmesh_relay_proto::limits::MAX_NACK_FRAGMENTS;
use trackmesh_relay_proto::media::{
    Fragmenter, Frame, Reassembler, ReassemblerLimits, layered_payload, split_layer,
};
use trackmesh_relay_proto::repair::{
    Arrived, RepairEvent, RepairLimits, RepairStats, Repairer, SentCache,
};

use super::wire::{self, CONTROL_QUEUE};
use super::{Inner, Link, PullError, Up};
use crate::cluster::hubs::upstream_for;
use crate::cluster::view::{ClusterView, Member};
use crate::engine::{RelayFrame, RelayIn, RelayOut, TrackInfo};
use crate::ids::{DownId, NodeId, SessionId, UpId};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(3);
/// A peer whose link failed is not dialed again for this long by new pulls (gossip may still
/// call it live). Shorter than a re-route's pace, so a peer that comes back is reached at once.
const AVOID_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Pause between re-route attempts after a link died: the first, then at most the second.
const REROUTE_PAUSE: Duration = Duration::from_millis(300);
const REROUTE_PAUSE_MAX: Duration = Duration::from_secs(1);
/// Re-route attempts are bounded by this, as well as by the engine: it ends a relayed track
/// that had no media for the track timeout (30 s by default), which ends the re-route.
const REROUTE_LIMIT: Duration = Duration::from_secs(600);

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
    let lock = {
        let mut m = inner.inflight.lock().unwrap_or_else(|p| p.into_inner());
        m.entry((session, track.to_string())).or_default().clone()
    };
    let _guard = lock.lock().await;
    let result = ensure_locked(inner, app, session, track, direct_only).await;
    // Forget the per-track lock once nobody waits on it.
    {
        let mut m = inner.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if Arc::strong_count(&lock) <= 2 {
            m.remove(&(session, track.to_string()));
        }
    }
    if let Err(e) = result {
        inner.failures.note(e);
    }
    result
}

async fn ensure_locked(
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
    let (up, info) = subscribe_somewhere(inner, app, session, track, direct_only, true).await?;
    let (a, t) = (app.to_string(), track.to_string());
    let added = inner
        .engine
        .call(move |e, now| e.add_relay_publication(&a, session, &t, up, info, now))
        .await;
    match added {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => {
            drop_up(inner, up);
            Err(PullError::PublishedHere)
        }
        Err(_) => {
            drop_up(inner, up);
            Err(PullError::EngineStopped)
        }
    }
}

/// Picks a route and subscribes on it; returns the new upstream id.
async fn subscribe_somewhere(
    inner: &Arc<Inner>,
    app: &str,
    session: SessionId,
    track: &str,
    direct_only: bool,
    heed_avoid: bool,
) -> Result<(UpId, TrackInfo), PullError> {
    let view = inner.view.borrow().clone();
    let route = upstream_for(&view, session, track, direct_only).ok_or(PullError::NoRoute)?;
    let peer = route.peer().clone();
    let link = dial_once(inner, &peer, heed_avoid).await.map_err(|e| {
        tracing::debug!(peer = %peer.node_id, error = %e, "no relay link");
        PullError::Link
    })?;
    let sub = link.next_sub.fetch_add(1, Ordering::Relaxed);
    let up = inner.next_up();
    let (tx, rx) = oneshot::channel();
    lock(&link.pending).insert(sub, tx);
    // Known before the reply, so the first frames after it are not dropped.
    lock(&link.subs).insert(sub, up);
    let msg = ControlMsg::Subscribe(Subscribe {
        sub,
        session_id: session.to_bytes(),
        track_name: track.to_string(),
        app: app.to_string(),
    });
    let reply = match link.control.send(msg).await {
        Ok(()) => tokio::time::timeout(SUBSCRIBE_TIMEOUT, rx)
            .await
            .ok()
            .and_then(Result::ok),
        Err(_) => None,
    };
    let info = match reply {
        Some(Ok(info)) => info,
        failed => {
            lock(&link.subs).remove(&sub);
            lock(&link.pending).remove(&sub);
            return Err(match failed {
                Some(Err(_)) => PullError::Refused,
                _ => PullError::NoAnswer,
            });
        }
    };
    inner.state().ups.insert(
        up,
        Up {
            link: link.clone(),
            sub,
            app: app.to_string(),
            session,
            track: track.to_string(),
            frames: Arc::new(AtomicU64::new(0)),
        },
    );
    tracing::info!(%session, track, via = %peer.node_id, up = up.0, "pulling remote track");
    Ok((up, info))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The link to `peer`, dialed and handshaken if there is none.
pub(super) async fn link_to(inner: &Arc<Inner>, peer: &Member) -> anyhow::Result<Arc<Link>> {
    dial_once(inner, peer, true).await
}

/// The live link to `peer`, if there is one.
fn existing_link(inner: &Arc<Inner>, peer: &Member) -> Option<Arc<Link>> {
    inner
        .state()
        .links
        .get(peer.node_id.as_str())
        .filter(|l| l.conn.close_reason().is_none())
        .cloned()
}

/// The link to `peer`; concurrent callers wait for one dial rather than each dialing. With
/// `heed_avoid`, a peer whose link failed within [`AVOID_AFTER_FAILURE`] is not dialed (new
/// pulls fail fast); a re-route paces itself and dials anyway.
async fn dial_once(
    inner: &Arc<Inner>,
    peer: &Member,
    heed_avoid: bool,
) -> anyhow::Result<Arc<Link>> {
    if let Some(l) = existing_link(inner, peer) {
        return Ok(l);
    }
    let gate = {
        let mut m = lock(&inner.dialing);
        m.entry(NodeId::from(peer.node_id.as_str()))
            .or_default()
            .clone()
    };
    let result = {
        let _guard = gate.lock().await;
        dial_locked(inner, peer, heed_avoid).await
    };
    {
        let mut m = lock(&inner.dialing);
        if Arc::strong_count(&gate) <= 2 {
            m.remove(peer.node_id.as_str());
        }
    }
    result
}

async fn dial_locked(
    inner: &Arc<Inner>,
    peer: &Member,
    heed_avoid: bool,
) -> anyhow::Result<Arc<Link>> {
    // A dial that held the lock before us may have made the link.
    if let Some(l) = existing_link(inner, peer) {
        return Ok(l);
    }
    if heed_avoid
        && inner
            .state()
            .avoid
            .get(peer.node_id.as_str())
            .is_some_and(|t| *t > Instant::now())
    {
        bail!("{} failed recently", peer.node_id);
    }
    let result = dial(inner, peer).await;
    if result.is_err() {
        inner.state().avoid.insert(
            NodeId::from(peer.node_id.as_str()),
            Instant::now() + AVOID_AFTER_FAILURE,
        );
    }
    let link = result?;
    // Another task may have dialed meanwhile: keep the first, close ours.
    let mut st = inner.state();
    if let Some(existing) = st.links.get(peer.node_id.as_str())
        && existing.conn.close_reason().is_none()
    {
        link.conn.close(0u32.into(), b"duplicate");
        return Ok(existing.clone());
    }
    st.links
        .insert(NodeId::from(peer.node_id.as_str()), link.clone());
    Ok(link)
}

async fn dial(inner: &Arc<Inner>, peer: &Member) -> anyhow::Result<Arc<Link>> {
    let connecting = inner
        .endpoint()
        .context("the relay has stopped")?
        .connect_with(inner.client.clone(), peer.relay, &inner.server_name)
        .context("starting a relay connection")?;
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .with_context(|| format!("connecting to {} timed out", peer.node_id))??;
    let (mut send, mut recv) = conn.open_bi().await?;
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
    wire::write_one(&mut send, &hello).await?;
    let mut dec = FrameDecoder::<HandshakeMsg>::new();
    let answer = wire::read_one(&mut recv, &mut dec, CONNECT_TIMEOUT).await?;
    if let Err(e) = wire::check_answer(&peer.node_id, answer) {
        tracing::warn!(peer = %peer.node_id, error = %e, "relay handshake failed");
        return Err(e);
    }
    let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_QUEUE);
    inner.spawn(wire::write_control(send, ctl_rx));
    let link = Arc::new(Link {
        peer: NodeId::from(peer.node_id.as_str()),
        conn: conn.clone(),
        control: ctl_tx,
        next_sub: AtomicU32::new(1),
        pending: Mutex::new(HashMap::new()),
        subs: Mutex::new(HashMap::new()),
    });
    tracing::info!(peer = %peer.node_id, "relay link dialed");
    let span = tracing::info_span!("relay_link", direction = "out", peer = %peer.node_id);
    inner.spawn(run_link(inner.clone(), link.clone(), recv, dec).instrument(span));
    Ok(link)
}

/// Reads the control stream and the datagrams of a dialed link until it dies, then re-routes.
async fn run_link(
    inner: Arc<Inner>,
    link: Arc<Link>,
    recv: quinn::RecvStream,
    dec: FrameDecoder<HandshakeMsg>,
) {
    let control = {
        let link = link.clone();
        let inner = inner.clone();
        wire::read_control(recv, dec.switch(), move |msg| match msg {
            ControlMsg::Subscribed { sub, track } => {
                if let Some(tx) = lock(&link.pending).remove(&sub) {
                    let _ = tx.send(Ok(wire::from_wire(&track)));
                }
            }
            ControlMsg::SubscribeFailed { sub, reason, .. } => {
                if let Some(tx) = lock(&link.pending).remove(&sub) {
                    let _ = tx.send(Err(reason));
                }
            }
            ControlMsg::TrackEnded { sub } => {
                if let Some(up) = lock(&link.subs).remove(&sub) {
                    end_up(&inner, up);
                }
            }
            _ => {}
        })
    };
    let datagrams = read_datagrams(inner.clone(), link.clone());
    tokio::select! {
        r = control => if let Err(e) = r { tracing::debug!(error = %e, "relay control ended") },
        _ = datagrams => {}
    }
    link.conn.close(0u32.into(), b"bye");
    link_lost(&inner, &link);
}

async fn read_datagrams(inner: Arc<Inner>, link: Arc<Link>) {
    let mut reasm = Reassembler::new(ReassemblerLimits::default());
    // The serving node numbers each subscription's frames from 1: losing the first is a gap.
    let mut repair: Repairer<Frame> = Repairer::new(RepairLimits {
        first_seq: Some(1),
        ..RepairLimits::default()
    });
    let mut counted = RepairStats::default();
    let mut events = Vec::new();
    let mut dropped_here: std::collections::HashSet<UpId> = std::collections::HashSet::new();
    let mut frames_seen: u64 = 0;
    loop {
        let wake = repair.next_timeout();
        let datagram = tokio::select! {
            d = link.conn.read_datagram() => match d {
                Ok(d) => Some(d),
                Err(_) => return,
            },
            () = sleep_until(wake), if wake.is_some() => None,
        };
        let now = Instant::now();
        if let Some(d) = datagram {
            inner.bytes_in.fetch_add(d.len() as u64, Ordering::Relaxed);
            if let Some(frame) = reasm.push(&d, now)
                && lock(&link.subs).contains_key(&frame.sub)
            {
                let arrived = Arrived {
                    sub: frame.sub,
                    seq: frame.frame_seq,
                    bytes: frame.payload.len(),
                    frame,
                };
                repair.push(now, link.conn.rtt(), arrived, &mut events);
                frames_seen += 1;
                // Subscription ids are never reused on a link: forget those that ended, now
                // and then.
                if frames_seen.is_multiple_of(1024) {
                    let live = lock(&link.subs);
                    repair.retain(|sub| live.contains_key(&sub));
                }
            }
        }
        repair.poll(now, &mut events);
        counted = note_repair(&inner, counted, repair.stats());
        for event in events.drain(..) {
            match event {
                RepairEvent::Deliver { frame, .. } => {
                    deliver(&inner, &link, frame, &mut dropped_here);
                }
                RepairEvent::Nack { sub, seqs } => {
                    let frames = seqs
                        .into_iter()
                        .map(|frame_seq| NackFrame {
                            frame_seq,
                            // The fragments still missing of a frame in progress, else all.
                            fragments: reasm
                                .missing_fragments(sub, frame_seq, MAX_NACK_FRAGMENTS)
                                .unwrap_or_default(),
                        })
                        .collect();
                    inner.send_control(&link.control, ControlMsg::Nack(Nack { sub, frames }));
                }
                RepairEvent::Gap { sub, lost } => {
                    inner.frames_lost.fetch_add(lost.into(), Ordering::Relaxed);
                    let Some(up) = lock(&link.subs).get(&sub).copied() else {
                        continue;
                    };
                    // Viewers must see the gap, not decode past it: the engine withholds video
                    // until a keyframe and asks for one. The signal is worth more than a frame:
                    // it waits for room rather than being dropped.
                    if inner.relay_in.send(RelayIn::Gap { up }).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Waits until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// Adds what a link's repairer did since `before` to the relay's counters.
fn note_repair(inner: &Inner, before: RepairStats, now: RepairStats) -> RepairStats {
    let r = &inner.repair;
    for (counter, was, is) in [
        (&r.nacks_sent, before.nacks, now.nacks),
        (
            &r.frames_repaired,
            before.frames_repaired,
            now.frames_repaired,
        ),
        (&r.repairs_failed, before.repairs_failed, now.repairs_failed),
        (&r.late, before.late, now.late),
    ] {
        if is > was {
            counter.fetch_add(is - was, Ordering::Relaxed);
        }
    }
    now
}

/// Hands a relayed frame, in order and repaired where it could be, to the engine.
fn deliver(
    inner: &Inner,
    link: &Link,
    frame: Frame,
    dropped_here: &mut std::collections::HashSet<UpId>,
) {
    let Some(up) = lock(&link.subs).get(&frame.sub).copied() else {
        return;
    };
    if let Some(u) = inner.state().ups.get(&up) {
        u.frames.fetch_add(1, Ordering::Relaxed);
    }
    // The payload starts with the frame's simulcast rid; a malformed one drops the frame.
    let Ok((rid, data)) = split_layer(&frame.payload) else {
        inner.malformed_frames.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let frame = RelayFrame {
        rtp_time: frame.rtp_time,
        keyframe: frame.keyframe,
        data: data.into(),
        rid: rid.map(str0m::media::Rid::from),
    };
    // A frame dropped here (below) is a gap too: tell the engine before the next one.
    if dropped_here.contains(&up) {
        if inner.relay_in.try_send(RelayIn::Gap { up }).is_err() {
            inner.engine_queue_drops.fetch_add(1, Ordering::Relaxed);
            return;
        }
        dropped_here.remove(&up);
    }
    // A full queue means the engine is overloaded: this frame is dropped (and counted), the
    // link lives. A closed queue means the engine stopped; the link ends with the node.
    if inner
        .relay_in
        .try_send(RelayIn::Frame { up, frame })
        .is_err()
    {
        inner.engine_queue_drops.fetch_add(1, Ordering::Relaxed);
        if dropped_here.len() < MAX_SUBS_SEEN {
            dropped_here.insert(up);
        }
    }
}

/// A dialed link died: re-route each of its upstreams, or end it when no route is left.
fn link_lost(inner: &Arc<Inner>, link: &Arc<Link>) {
    {
        let mut st = inner.state();
        if st
            .links
            .get(&link.peer)
            .is_some_and(|l| Arc::ptr_eq(l, link))
        {
            st.links.remove(&link.peer);
        }
        st.avoid
            .insert(link.peer.clone(), Instant::now() + AVOID_AFTER_FAILURE);
    }
    let ups: Vec<UpId> = lock(&link.subs).drain().map(|(_, up)| up).collect();
    tracing::info!(peer = %link.peer, upstreams = ups.len(), "relay link lost");
    for up in ups {
        inner.spawn(reroute(inner.clone(), up));
    }
}

/// Finds a new route for upstream `up` after its link died, for as long as the engine still
/// wants the track: through a partition shorter than the track timeout the viewers' m-sections
/// stay, and media (from a keyframe) resumes as soon as the origin or another route answers.
async fn reroute(inner: Arc<Inner>, up: UpId) {
    let Some(old) = inner.state().ups.remove(&up) else {
        return;
    };
    let _ = inner
        .engine
        .call(move |e, _| e.relay_upstream_lost(up))
        .await;
    let started = Instant::now();
    let mut pause = REROUTE_PAUSE;
    let mut view = inner.view.clone();
    while started.elapsed() < REROUTE_LIMIT {
        // Still wanted? The engine ends a relayed track after the track timeout without media.
        match inner
            .engine
            .call(move |e, _| e.relay_upstream_live(up))
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(session = %old.session, track = %old.track, "relayed track ended while no route was found");
                return;
            }
            Err(e) => {
                inner.failures.note(PullError::EngineStopped);
                tracing::debug!(error = %e, "re-route abandoned");
                return;
            }
        }
        let origin_live = view
            .borrow_and_update()
            .live_by_tag(old.session.node_tag())
            .is_some();
        if !origin_live {
            // Partitioned or down: wait for gossip to see it again (or re-check the engine).
            let _ = tokio::time::timeout(REROUTE_PAUSE_MAX, view.changed()).await;
            continue;
        }
        match subscribe_somewhere(&inner, &old.app, old.session, &old.track, false, false).await {
            Ok((new_up, info)) => {
                let (app, track, session) = (old.app.clone(), old.track.clone(), old.session);
                let moved = inner
                    .engine
                    .call(move |e, now| {
                        e.add_relay_publication(&app, session, &track, new_up, info, now)
                    })
                    .await;
                match moved {
                    Ok(Ok(())) => {
                        tracing::info!(session = %old.session, track = %old.track, elapsed_ms = started.elapsed().as_millis() as u64, "relayed track re-routed")
                    }
                    Ok(Err(_)) => {
                        inner.failures.note(PullError::PublishedHere);
                        drop_up(&inner, new_up);
                    }
                    Err(_) => {
                        inner.failures.note(PullError::EngineStopped);
                        drop_up(&inner, new_up);
                    }
                }
                return;
            }
            Err(e) => {
                inner.failures.note(e);
                tracing::debug!(error = %e, "re-route attempt failed");
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(REROUTE_PAUSE_MAX);
    }
    tracing::info!(session = %old.session, track = %old.track, "no route found in time: relayed track ended");
    let _ = inner
        .engine
        .call(move |e, _| e.end_relay_publication(up))
        .await;
}

fn end_up(inner: &Arc<Inner>, up: UpId) {
    inner.state().ups.remove(&up);
    let engine = inner.engine.clone();
    inner.spawn(async move {
        let _ = engine.call(move |e, _| e.end_relay_publication(up)).await;
    });
}

/// Stops an upstream the engine no longer wants.
fn drop_up(inner: &Arc<Inner>, up: UpId) {
    let Some(u) = inner.state().ups.remove(&up) else {
        return;
    };
    lock(&u.link.subs).remove(&u.sub);
    inner.send_control(&u.link.control, ControlMsg::Unsubscribe { sub: u.sub });
}

/// What a node keeps of a frame it sent to another node, to send it again on a `Nack`: the
/// frame (its data shared with the engine, not copied) and the datagram size it was cut for
/// (a resent fragment must have the same boundaries).
#[derive(Clone)]
struct Sent {
    frame: RelayFrame,
    max_datagram: usize,
}

/// The test hook ([`super::RelayTestLoss`]): which outgoing media datagrams to drop.
struct TestLossHook {
    cfg: Option<super::RelayTestLoss>,
    sent: u64,
}

impl TestLossHook {
    fn drops(&mut self, resend: bool) -> bool {
        let Some(cfg) = self.cfg else {
            return false;
        };
        if resend && cfg.drop_resends {
            return true;
        }
        self.sent += 1;
        cfg.every > 0 && self.sent.is_multiple_of(cfg.every)
    }
}

/// Which fragments of a frame to send.
#[derive(Clone, Copy)]
enum Send<'a> {
    /// All of them, the first time.
    First,
    /// Again, answering a `Nack`: these indexes, or all when `None`.
    Again(Option<&'a [u16]>),
}

/// Cuts frame `seq` for downstream `d` into datagrams of at most `max` bytes and sends them.
/// False if it could not be cut.
#[allow(clippy::too_many_arguments)]
fn send_frame(
    inner: &Inner,
    d: &super::Down,
    seq: u32,
    frame: &RelayFrame,
    max: usize,
    which: Send<'_>,
    buf: &mut Vec<u8>,
    hook: &mut TestLossHook,
) -> bool {
    // Rids come from str0m (at most 8 letters, digits or '_'): always valid here.
    let Some(payload) = layered_payload(frame.rid.as_deref(), &frame.data) else {
        inner.send_drops.fetch_add(1, Ordering::Relaxed);
        return false;
    };
    let f = Frame {
        sub: d.sub,
        frame_seq: seq,
        rtp_time: frame.rtp_time,
        keyframe: frame.keyframe,
        payload,
    };
    let Ok(mut frags) = Fragmenter::fragments(&f, max) else {
        inner.send_drops.fetch_add(1, Ordering::Relaxed);
        return false;
    };
    let mut index: u16 = 0;
    while frags.next_into(buf) {
        let this = index;
        index = index.wrapping_add(1);
        if let Send::Again(Some(only)) = which
            && !only.contains(&this)
        {
            continue;
        }
        inner
            .bytes_out
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        if hook.drops(matches!(which, Send::Again(_))) {
            inner.repair.test_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        // quinn drops the oldest queued datagrams when its buffer is full.
        if d.conn.send_datagram(Bytes::copy_from_slice(buf)).is_err() {
            inner.send_drops.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
    true
}

/// Answers a `Nack` of downstream `down` from its cache of sent frames; frames no longer held
/// are ignored (counted): the subscriber gives them up and asks for a keyframe.
fn resend(
    inner: &Inner,
    caches: &mut HashMap<DownId, SentCache<Sent>>,
    down: DownId,
    nack: &Nack,
    buf: &mut Vec<u8>,
    hook: &mut TestLossHook,
) {
    let Some(d) = inner.state().downs.get(&down).cloned() else {
        return;
    };
    let now = Instant::now();
    for f in &nack.frames {
        let sent = caches
            .get_mut(&down)
            .and_then(|c| c.resend(now, f.frame_seq).cloned());
        let Some(sent) = sent else {
            inner.repair.nack_misses.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        inner.repair.frames_resent.fetch_add(1, Ordering::Relaxed);
        let only = (!f.fragments.is_empty()).then_some(f.fragments.as_slice());
        send_frame(
            inner,
            &d,
            f.frame_seq,
            &sent.frame,
            sent.max_datagram,
            Send::Again(only),
            buf,
            hook,
        );
    }
}

/// Carries the engine's relay output onto the links, and answers `Nack`s of downstream
/// subscriptions from the frames it sent them.
pub async fn engine_outputs(
    inner: Arc<Inner>,
    mut rx: mpsc::Receiver<RelayOut>,
    mut nacks: mpsc::Receiver<(DownId, Nack)>,
) {
    let mut caches: HashMap<DownId, SentCache<Sent>> = HashMap::new();
    let mut buf = Vec::with_capacity(1500);
    let mut hook = TestLossHook {
        cfg: inner.test_loss,
        sent: 0,
    };
    loop {
        let out = tokio::select! {
            // A repair is more urgent than the next frame: its subscriber holds frames for it.
            biased;
            Some((down, nack)) = nacks.recv() => {
                resend(&inner, &mut caches, down, &nack, &mut buf, &mut hook);
                continue;
            }
            out = rx.recv() => match out {
                Some(out) => out,
                None => return,
            },
        };
        match out {
            RelayOut::Frame { down, seq, frame } => {
                let Some(d) = inner.state().downs.get(&down).cloned() else {
                    continue;
                };
                let Some(max) = d.conn.max_datagram_size() else {
                    continue;
                };
                if !send_frame(
                    &inner,
                    &d,
                    seq,
                    &frame,
                    max,
                    Send::First,
                    &mut buf,
                    &mut hook,
                ) {
                    continue;
                }
                d.frames.fetch_add(1, Ordering::Relaxed);
                if caches.len() >= MAX_SUBS_SEEN && !caches.contains_key(&down) {
                    // Downstreams released without an `Ended` (their link died): forget them.
                    let st = inner.state();
                    caches.retain(|k, _| st.downs.contains_key(k));
                }
                let bytes = frame.data.len();
                caches.entry(down).or_default().insert(
                    Instant::now(),
                    seq,
                    Sent {
                        frame,
                        max_datagram: max,
                    },
                    bytes,
                );
            }
            RelayOut::Ended { down } => {
                caches.remove(&down);
                // A closed queue: the link is gone, and its end with it.
                if let Some(d) = inner.state().downs.remove(&down)
                    && let Err(mpsc::error::TrySendError::Full(_)) =
                        d.ended.try_send(super::serve::Served {
                            down,
                            session: d.session,
                        })
                {
                    inner.control_drops.fetch_add(1, Ordering::Relaxed);
                }
            }
            RelayOut::KeyframeRequest { up } => {
                if let Some(u) = inner.state().ups.get(&up) {
                    inner.send_control(&u.link.control, ControlMsg::KeyframeRequest { sub: u.sub });
                }
            }
            RelayOut::Unused { up } => drop_up(&inner, up),
            RelayOut::ChannelMessage { down, binary, data } => {
                let tx = inner.state().dc_downs.get(&down).cloned();
                super::channels::send_frame(
                    &inner,
                    tx,
                    DcFrame::Message {
                        binary,
                        data: data.to_vec(),
                    },
                );
            }
            RelayOut::ChannelEnded { down } => {
                let tx = inner.state().dc_downs.remove(&down);
                // The writer sends Ended, then finishes the stream once its queue is dropped.
                super::channels::send_frame(&inner, tx, DcFrame::Ended);
            }
            RelayOut::ChannelUnused { up } => {
                // Dropping the queue finishes the stream; the publisher's node then unsubscribes.
                inner.state().dc_ups.remove(&up);
            }
            RelayOut::ChannelReleaseReply { up, seq } => {
                let tx = inner.state().dc_ups.get(&up).cloned();
                super::channels::send_frame(&inner, tx, DcFrame::Claim { seq, want: false });
            }
            RelayOut::ChannelReply { up, binary, data } => {
                let tx = inner.state().dc_ups.get(&up).cloned();
                super::channels::send_frame(
                    &inner,
                    tx,
                    DcFrame::Message {
                        binary,
                        data: data.to_vec(),
                    },
                );
            }
        }
    }
}

/// Closes links to and from peers that gossip says are dead, so upstreams re-route and
/// downstreams are released at once rather than after the QUIC idle timeout.
pub async fn watch_members(inner: Arc<Inner>) {
    let mut view = inner.view.clone();
    while view.changed().await.is_ok() {
        let v = view.borrow_and_update().clone();
        let dead: Vec<Arc<Link>> = inner
            .state()
            .links
            .values()
            .filter(|l| v.live_by_id(l.peer.as_str()).is_none())
            .cloned()
            .collect();
        for l in dead {
            tracing::info!(peer = %l.peer, "peer is dead: closing its relay link");
            l.conn.close(0u32.into(), b"peer dead");
        }
        // Links the dead peer dialed: closing them releases what was sent to it.
        let inbound: Vec<quinn::Connection> = inner
            .state()
            .downs
            .values()
            .filter(|d| v.live_by_id(d.peer.as_str()).is_none())
            .map(|d| d.conn.clone())
            .collect();
        for conn in inbound {
            conn.close(0u32.into(), b"peer dead");
        }
        move_off_draining(&inner, &v);
    }
}

/// Upstreams pulled through a hub that now drains move to the hub the view gives now, the new
/// one subscribed before the old one is let go (make before break), so viewers see no gap: a
/// draining hub waits for its downstreams to leave before it stops ([`crate::Node::drain`]).
/// Pulls straight from an origin stay: nothing else holds the track.
fn move_off_draining(inner: &Arc<Inner>, v: &ClusterView) {
    let mut st = inner.state();
    let st = &mut *st;
    let leaving: Vec<UpId> = st
        .ups
        .iter()
        .filter(|(id, u)| {
            !st.moving.contains(*id)
                && v.members
                    .iter()
                    .any(|m| m.node_id == u.link.peer.as_str() && m.live && m.draining)
                && v.live_by_tag(u.session.node_tag())
                    .is_some_and(|origin| origin.node_id != u.link.peer.as_str())
        })
        .map(|(id, _)| *id)
        .collect();
    for up in leaving {
        st.moving.insert(up);
        let inner2 = inner.clone();
        inner.spawn(async move {
            move_up(&inner2, up).await;
            inner2.state().moving.remove(&up);
        });
    }
}

/// Moves one upstream off its draining hub (see [`move_off_draining`]).
async fn move_up(inner: &Arc<Inner>, up: UpId) {
    let Some(old) = inner.state().ups.get(&up).cloned() else {
        return;
    };
    let view = inner.view.borrow().clone();
    match upstream_for(&view, old.session, &old.track, false) {
        Some(route) if route.peer().node_id != old.link.peer.as_str() => {}
        // Nowhere else to go: the old hub serves until it stops, then the link's loss re-routes.
        _ => return,
    }
    match inner
        .engine
        .call(move |e, _| e.relay_upstream_live(up))
        .await
    {
        Ok(true) => {}
        _ => return,
    }
    let started = Instant::now();
    let (new_up, info) =
        match subscribe_somewhere(inner, &old.app, old.session, &old.track, false, true).await {
            Ok(r) => r,
            Err(e) => {
                inner.failures.note(e);
                tracing::debug!(error = %e, "moving off a draining hub failed; staying");
                return;
            }
        };
    let (app, track, session) = (old.app.clone(), old.track.clone(), old.session);
    // The engine takes frames from the new upstream from here on; the old one's are ignored.
    let moved = inner
        .engine
        .call(move |e, now| {
            // Only if the publication still takes this upstream (not ended or re-routed meanwhile).
            if !e.relay_upstream_live(up) {
                return false;
            }
            e.add_relay_publication(&app, session, &track, new_up, info, now)
                .is_ok()
        })
        .await;
    if matches!(moved, Ok(true)) {
        drop_up(inner, up);
        tracing::info!(session = %old.session, track = %old.track, from = %old.link.peer, elapsed_ms = started.elapsed().as_millis() as u64, "relayed track moved off a draining hub");
    } else {
        drop_up(inner, new_up);
    }
}

/// Bound on the upstreams one link's reader remembers a dropped frame of, and on the
/// downstreams whose sent frames are cached before released ones are forgotten.
const MAX_SUBS_SEEN: usize = 4096;
