//! Carries the engine's relay output onto links: frames of downstream subscriptions as
//! datagrams (kept a second to answer `Nack`s), their ends to the serving links' tasks, and
//! keyframe requests and unused upstreams to the pulling task; DataChannel output onto its
//! streams. The task alone owns the tables it reads for that, the downstream table
//! ([`super::downs`]) and the DataChannel tables ([`super::channel_table`]); others change them
//! over bounded command queues.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;
use trackmesh_relay_proto::control::{ControlMsg, Layers, Nack};
use trackmesh_relay_proto::datachannel::DcFrame;
use trackmesh_relay_proto::media::{Fragmenter, Frame, PacketMeta, packet_payload};
use trackmesh_relay_proto::repair::SentCache;

use super::channel_table::{ChannelCmd, ChannelTable, Start};
use super::downs::{DOWN_BATCH, Down, DownCmd, Downs};
use super::pull::Cmd;
use super::{Inner, MAX_SUBS_SEEN};
use crate::engine::{RelayFrame, RelayOut};
use crate::ids::DownId;

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
    d: &Down,
    seq: u32,
    frame: &RelayFrame,
    max: usize,
    which: Send<'_>,
    buf: &mut Vec<u8>,
    hook: &mut TestLossHook,
) -> bool {
    // Rids come from str0m (at most 8 letters, digits or '_'): always valid here.
    let meta = PacketMeta {
        rid: frame.rid.as_deref(),
        origin_seq: frame.origin_seq,
        marker: frame.marker,
        orientation: frame.orientation.map(|o| o as u8),
    };
    let Some(payload) = packet_payload(meta, &frame.data) else {
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
    downs: &Downs,
    caches: &mut HashMap<DownId, SentCache<Sent>>,
    down: DownId,
    nack: &Nack,
    buf: &mut Vec<u8>,
    hook: &mut TestLossHook,
) {
    let Some(d) = downs.get(&down) else {
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
            d,
            f.frame_seq,
            &sent.frame,
            sent.max_datagram,
            Send::Again(only),
            buf,
            hook,
        );
    }
}

/// Table changes, channel commands and repairs handled in a row before a media output waiting
/// behind them is sent.
const OTHERS_BEFORE_MEDIA: u32 = 32;

/// A change to the downstream table; a downstream removed (its link released it, or died)
/// takes the frames kept to repair it along, at once rather than when the cache map is full.
fn apply_down_cmd(downs: &mut Downs, caches: &mut HashMap<DownId, SentCache<Sent>>, cmd: DownCmd) {
    if let DownCmd::Remove(down) = &cmd {
        caches.remove(down);
    }
    downs.handle(cmd);
}

/// Carries the engine's relay output onto the links, and answers `Nack`s of downstream
/// subscriptions from the frames it sent them. Owns the downstream table, changed by `cmds`,
/// and the DataChannel tables, changed by `channel_cmds`.
pub async fn engine_outputs(
    inner: Arc<Inner>,
    mut rx: mpsc::Receiver<RelayOut>,
    mut nacks: mpsc::Receiver<(DownId, Nack)>,
    mut cmds: mpsc::Receiver<DownCmd>,
    mut downs: Downs,
    mut channel_cmds: mpsc::Receiver<ChannelCmd>,
) {
    let mut channels = ChannelTable::default();
    let mut caches: HashMap<DownId, SentCache<Sent>> = HashMap::new();
    let mut buf = Vec::with_capacity(1500);
    let mut hook = TestLossHook {
        cfg: inner.test_loss,
        sent: 0,
    };
    let mut others_in_row = 0u32;
    loop {
        downs.publish();
        // Table changes, channel commands and repairs come first, but a flood of them (a peer
        // streaming claim answers or Nacks) must not hold every peer's media back for good.
        let waiting = if others_in_row >= OTHERS_BEFORE_MEDIA {
            others_in_row = 0;
            rx.try_recv().ok()
        } else {
            None
        };
        let out = if let Some(out) = waiting {
            out
        } else {
            tokio::select! {
                // A change to the table first: a downstream is inserted before the engine is asked
                // to send it frames, so its first frame always finds it.
                biased;
                Some(cmd) = cmds.recv() => {
                    apply_down_cmd(&mut downs, &mut caches, cmd);
                    for _ in 1..DOWN_BATCH {
                        let Ok(cmd) = cmds.try_recv() else { break };
                        apply_down_cmd(&mut downs, &mut caches, cmd);
                    }
                    others_in_row += 1;
                    continue;
                }
                Some(cmd) = channel_cmds.recv() => {
                    match channels.handle(cmd, &inner.dc_stream_drops) {
                        Some(Start::Pull { app, session, name }) => {
                            inner.spawn(super::channels::pull(inner.clone(), app, session, name));
                        }
                        Some(Start::Claim { session, name }) => {
                            inner.spawn(super::channels::claim(inner.clone(), session, name));
                        }
                        None => {}
                    }
                    others_in_row += 1;
                    continue;
                }
                // A repair is more urgent than the next frame: its subscriber holds frames for it.
                Some((down, nack)) = nacks.recv() => {
                    resend(&inner, &downs, &mut caches, down, &nack, &mut buf, &mut hook);
                    others_in_row += 1;
                    continue;
                }
                out = rx.recv() => match out {
                    Some(out) => {
                        others_in_row = 0;
                        out
                    }
                    None => return,
                },
            }
        };
        match out {
            RelayOut::Frame { down, seq, frame } => {
                let Some(d) = downs.get(&down) else {
                    continue;
                };
                let Some(max) = d.conn.max_datagram_size() else {
                    continue;
                };
                if !send_frame(
                    &inner,
                    d,
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
                    caches.retain(|k, _| downs.contains(k));
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
                if let Some(d) = downs.remove(&down)
                    && let Err(mpsc::error::TrySendError::Full(_)) =
                        d.ended.try_send(super::serve::Served {
                            down,
                            session: d.session,
                        })
                {
                    inner.control_drops.fetch_add(1, Ordering::Relaxed);
                }
            }
            RelayOut::KeyframeRequest { up } => to_pulls(&inner, Cmd::KeyframeRequest(up)),
            RelayOut::LayerKeyframeRequest { up, rid } => {
                to_pulls(&inner, Cmd::LayerKeyframeRequest(up, rid.to_string()))
            }
            RelayOut::SetLayers { up, layers } => {
                // Never dropped (the origin would keep sending what nobody watches, or not
                // send what someone waits for): on a full queue a task of its own waits.
                let cmd = Cmd::SetLayers(up, super::wire::layers_to_wire(&layers));
                if let Err(mpsc::error::TrySendError::Full(cmd)) = inner.pulls.try_send(cmd) {
                    let pulls = inner.pulls.clone();
                    inner.spawn(async move {
                        let _ = pulls.send(cmd).await;
                    });
                }
            }
            RelayOut::Layers { down, layers } => {
                let Some(d) = downs.get(&down) else {
                    continue;
                };
                let msg = ControlMsg::Layers(Layers {
                    sub: d.sub,
                    layers: super::wire::states_to_wire(&layers),
                });
                inner.send_control(&d.control, msg);
            }
            RelayOut::Unused { up } => {
                // Never dropped (the upstream would stay subscribed): on a full queue a task of
                // its own waits for room.
                if let Err(mpsc::error::TrySendError::Full(cmd)) =
                    inner.pulls.try_send(Cmd::Unused(up))
                {
                    let pulls = inner.pulls.clone();
                    inner.spawn(async move {
                        let _ = pulls.send(cmd).await;
                    });
                }
            }
            RelayOut::ChannelMessage { down, binary, data } => {
                let tx = channels.down(down);
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
                let tx = channels.remove_down(down);
                // The writer sends Ended, then finishes the stream once its queue is dropped.
                super::channels::send_frame(&inner, tx.as_ref(), DcFrame::Ended);
            }
            RelayOut::ChannelUnused { up } => {
                // Dropping the queue finishes the stream; the publisher's node then unsubscribes.
                channels.remove_up(up);
            }
            RelayOut::ChannelReleaseReply { up, seq } => {
                let tx = channels.up(up);
                super::channels::send_frame(&inner, tx, DcFrame::Claim { seq, want: false });
            }
            RelayOut::ChannelReply { up, binary, data } => {
                let tx = channels.up(up);
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

/// Queues a keyframe request for the pulling task from a task that must not wait (the
/// engine's output): a full queue drops it and counts the drop (a later request asks again).
fn to_pulls(inner: &Inner, cmd: Cmd) {
    if let Err(mpsc::error::TrySendError::Full(_)) = inner.pulls.try_send(cmd) {
        inner.control_drops.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_downstream_takes_its_repair_cache_along() {
        let (view, _) = tokio::sync::watch::channel(Default::default());
        let mut downs = Downs::new(view);
        let mut caches: HashMap<DownId, SentCache<Sent>> = HashMap::new();
        for d in [1, 2] {
            caches.entry(DownId(d)).or_default();
        }
        apply_down_cmd(&mut downs, &mut caches, DownCmd::Remove(DownId(1)));
        assert!(!caches.contains_key(&DownId(1)), "its frames are let go");
        assert!(caches.contains_key(&DownId(2)), "another's stay");
    }
}
