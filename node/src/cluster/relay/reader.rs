//! The reader of a link this node dialed: its control stream goes to the pulling task
//! ([`super::pull::run`]); its datagrams go to the link's [`Inbound`] machine (relay-proto: the
//! link's sub id → upstream table, reassembly and its expiry, the `Nack` window), whose frames
//! and gaps it hands to the engine.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, anyhow};
use tokio::sync::mpsc;
use trackmesh_relay_proto::codec::FrameDecoder;
use trackmesh_relay_proto::control::{ControlMsg, SubId};
use trackmesh_relay_proto::handshake::HandshakeMsg;
use trackmesh_relay_proto::link::inbound::{Inbound, InboundEvent, InboundLimits, InboundStats};
use trackmesh_relay_proto::media::{Frame, split_packet};

use super::pull::Cmd;
use super::wire::READ_CHUNK;
use super::{Inner, MAX_SUBS_SEEN};
use crate::engine::{RelayFrame, RelayIn};
use crate::ids::UpId;

/// A change of a link's sub id → upstream table, for its reader.
pub(super) enum SubUpdate {
    Add(SubId, UpId, Arc<AtomicU64>),
    Remove(SubId),
}

/// Reads the control stream and the datagrams of a dialed link until it dies, then tells the
/// pulling task (which re-routes its upstreams).
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_link(
    inner: Arc<Inner>,
    cmds: mpsc::Sender<Cmd>,
    id: u64,
    conn: quinn::Connection,
    control: mpsc::Sender<ControlMsg>,
    recv: quinn::RecvStream,
    dec: FrameDecoder<HandshakeMsg>,
    subs: mpsc::Receiver<SubUpdate>,
) {
    let reading = read_control(&cmds, id, recv, dec.switch());
    let datagrams = read_datagrams(inner, conn.clone(), control, subs);
    tokio::select! {
        r = reading => if let Err(e) = r { tracing::debug!(error = %e, "relay control ended") },
        _ = datagrams => {}
    }
    conn.close(0u32.into(), b"bye");
    let _ = cmds.send(Cmd::LinkEnded { link: id }).await;
}

/// Hands every control message of link `id` to the pulling task, until the stream ends or
/// carries garbage.
async fn read_control(
    cmds: &mpsc::Sender<Cmd>,
    id: u64,
    mut recv: quinn::RecvStream,
    mut dec: FrameDecoder<ControlMsg>,
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut msgs = Vec::new();
    loop {
        while let Some(msg) = dec.next() {
            msgs.push(msg.context("decoding a control message")?);
        }
        for msg in msgs.drain(..) {
            cmds.send(Cmd::Control { link: id, msg })
                .await
                .map_err(|_| anyhow!("the relay has stopped"))?;
        }
        let Some(n) = recv.read(&mut buf).await.context("reading control")? else {
            return Ok(());
        };
        for msg in dec.feed(buf.get(..n).unwrap_or_default()) {
            msgs.push(msg.context("decoding a control message")?);
        }
    }
}

/// The upstream a sub's media belongs to, and its frame counter (the admin view's).
type Up = (UpId, Arc<AtomicU64>);

/// Drives the link's [`Inbound`] machine: datagrams and the time in, `Nack`s onto the control
/// stream, frames and gaps to the engine.
async fn read_datagrams(
    inner: Arc<Inner>,
    conn: quinn::Connection,
    control: mpsc::Sender<ControlMsg>,
    mut updates: mpsc::Receiver<SubUpdate>,
) {
    let mut link: Inbound<Up> = Inbound::new(InboundLimits::default());
    let mut counted = InboundStats::default();
    let mut dropped_here: HashSet<UpId> = HashSet::new();
    let apply = |u: SubUpdate, link: &mut Inbound<Up>| match u {
        SubUpdate::Add(sub, up, frames) => {
            if !link.add_sub(sub, (up, frames)) {
                tracing::debug!(sub, "too many subscriptions on a relay link: media dropped");
            }
        }
        SubUpdate::Remove(sub) => link.remove_sub(sub),
    };
    loop {
        let wake = link.poll_timeout();
        tokio::select! {
            // The table before the media: a sub is added before the peer is asked for it.
            biased;
            u = updates.recv() => match u {
                Some(u) => apply(u, &mut link),
                None => return,
            },
            d = conn.read_datagram() => match d {
                Ok(d) => {
                    while let Ok(u) = updates.try_recv() {
                        apply(u, &mut link);
                    }
                    inner.bytes_in.fetch_add(d.len() as u64, Ordering::Relaxed);
                    link.handle_datagram(Instant::now(), conn.rtt(), &d);
                }
                Err(_) => return,
            },
            () = sleep_until(wake), if wake.is_some() => link.handle_timeout(Instant::now()),
        }
        counted = note_repair(&inner, counted, link.stats());
        while let Some(msg) = link.poll_transmit() {
            inner.send_control(&control, msg);
        }
        while let Some(event) = link.poll_event() {
            match event {
                InboundEvent::Deliver {
                    up: (up, frames),
                    frame,
                } => deliver(&inner, up, &frames, frame, &mut dropped_here),
                InboundEvent::Gap { up: (up, _), .. } => {
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
pub(super) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// Adds what a link's inbound machine did since `before` to the relay's counters.
fn note_repair(inner: &Inner, before: InboundStats, now: InboundStats) -> InboundStats {
    let r = &inner.repair;
    let (before_lost, now_lost) = (before.frames_lost, now.frames_lost);
    let (before, now_r) = (before.repair, now.repair);
    for (counter, was, is) in [
        (&inner.frames_lost, before_lost, now_lost),
        (&r.nacks_sent, before.nacks, now_r.nacks),
        (
            &r.frames_repaired,
            before.frames_repaired,
            now_r.frames_repaired,
        ),
        (
            &r.repairs_failed,
            before.repairs_failed,
            now_r.repairs_failed,
        ),
        (&r.late, before.late, now_r.late),
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
    up: UpId,
    frames: &AtomicU64,
    frame: Frame,
    dropped_here: &mut HashSet<UpId>,
) {
    frames.fetch_add(1, Ordering::Relaxed);
    // The payload starts with the packet's rid, origin sequence number and marker bit; a
    // malformed prefix drops it.
    let Ok((meta, data)) = split_packet(&frame.payload) else {
        inner.malformed_frames.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let frame = RelayFrame {
        rtp_time: frame.rtp_time,
        origin_seq: meta.origin_seq,
        marker: meta.marker,
        keyframe: frame.keyframe,
        data: data.into(),
        rid: meta.rid.map(str0m::media::Rid::from),
        orientation: meta.orientation.map(str0m::rtp::VideoOrientation::from),
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
