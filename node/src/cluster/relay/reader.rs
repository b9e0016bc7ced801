//! The reader of a link this node dialed: its control stream goes to the pulling task
//! ([`super::pull::run`]); its datagrams are put back together, repaired ([`Repairer`]) and
//! handed to the engine, by the reader's own copy of the link's sub id → upstream table.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, anyhow};
use tokio::sync::mpsc;
use trackmesh_relay_proto::codec::FrameDecoder;
use trackmesh_relay_proto::control::{ControlMsg, Nack, NackFrame, SubId};
use trackmesh_relay_proto::handshake::HandshakeMsg;
use trackmesh_relay_proto::limits::MAX_NACK_FRAGMENTS;
use trackmesh_relay_proto::media::{Frame, Reassembler, ReassemblerLimits, split_packet};
use trackmesh_relay_proto::repair::{Arrived, RepairEvent, RepairLimits, RepairStats, Repairer};

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

async fn read_datagrams(
    inner: Arc<Inner>,
    conn: quinn::Connection,
    control: mpsc::Sender<ControlMsg>,
    mut updates: mpsc::Receiver<SubUpdate>,
) {
    let mut reasm = Reassembler::new(ReassemblerLimits::default());
    // The serving node numbers each subscription's frames from 1: losing the first is a gap.
    let mut repair: Repairer<Frame> = Repairer::new(RepairLimits {
        first_seq: Some(1),
        ..RepairLimits::default()
    });
    // This link's sub id → upstream table, as the pulling task last told.
    let mut subs: HashMap<SubId, (UpId, Arc<AtomicU64>)> = HashMap::new();
    let mut counted = RepairStats::default();
    let mut events = Vec::new();
    let mut dropped_here: HashSet<UpId> = HashSet::new();
    let apply = |u: SubUpdate,
                 subs: &mut HashMap<SubId, (UpId, Arc<AtomicU64>)>,
                 repair: &mut Repairer<Frame>| match u {
        SubUpdate::Add(sub, up, frames) => {
            subs.insert(sub, (up, frames));
        }
        SubUpdate::Remove(sub) => {
            subs.remove(&sub);
            repair.remove(sub);
        }
    };
    loop {
        let wake = repair.next_timeout();
        let datagram = tokio::select! {
            // The table before the media: a sub is added before the peer is asked for it.
            biased;
            u = updates.recv() => match u {
                Some(u) => {
                    apply(u, &mut subs, &mut repair);
                    None
                }
                None => return,
            },
            d = conn.read_datagram() => match d {
                Ok(d) => Some(d),
                Err(_) => return,
            },
            () = sleep_until(wake), if wake.is_some() => None,
        };
        let now = Instant::now();
        if let Some(d) = datagram {
            while let Ok(u) = updates.try_recv() {
                apply(u, &mut subs, &mut repair);
            }
            inner.bytes_in.fetch_add(d.len() as u64, Ordering::Relaxed);
            if let Some(frame) = reasm.push(&d, now)
                && subs.contains_key(&frame.sub)
            {
                let arrived = Arrived {
                    sub: frame.sub,
                    seq: frame.frame_seq,
                    bytes: frame.payload.len(),
                    frame,
                };
                repair.push(now, conn.rtt(), arrived, &mut events);
            }
        }
        repair.poll(now, &mut events);
        counted = note_repair(&inner, counted, repair.stats());
        for event in events.drain(..) {
            match event {
                RepairEvent::Deliver { frame, .. } => {
                    if let Some((up, frames)) = subs.get(&frame.sub) {
                        deliver(&inner, *up, frames, frame, &mut dropped_here);
                    }
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
                    inner.send_control(&control, ControlMsg::Nack(Nack { sub, frames }));
                }
                RepairEvent::Gap { sub, lost } => {
                    inner.frames_lost.fetch_add(lost.into(), Ordering::Relaxed);
                    let Some((up, _)) = subs.get(&sub) else {
                        continue;
                    };
                    // Viewers must see the gap, not decode past it: the engine withholds video
                    // until a keyframe and asks for one. The signal is worth more than a frame:
                    // it waits for room rather than being dropped.
                    if inner.relay_in.send(RelayIn::Gap { up: *up }).await.is_err() {
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
