//! DataChannels over relay links: one QUIC bidirectional stream per subscribed channel
//! (`trackmesh_relay_proto::datachannel`), so each keeps its order and reliability. The
//! subscribing node opens it directly to the publisher's node (one upstream per channel and
//! node, shared by its local subscribers); the publisher's node serves it (`serve_stream`).
//! Messages wait in a bounded queue per stream; past it they are dropped and counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use trackmesh_relay_proto::datachannel::{DC_STREAM_MAGIC, DcDecoder, DcFrame};

use super::channel_table::ChannelCmd;
use super::failures::PullError;
use super::{Inner, pull};
use crate::cluster::hubs::upstream_for;
use crate::engine::{DcLinkId, RelayIn};
use crate::ids::SessionId;

/// Messages waiting to be written on one channel stream; beyond it they are dropped.
pub const CHANNEL_STREAM_QUEUE: usize = 1024;
/// How long a subscriber waits for `Accepted`.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Channel streams one peer may open on this node at once.
pub const MAX_CHANNEL_STREAMS_PER_LINK: usize = 4096;
const READ_CHUNK: usize = 16 * 1024;

/// Makes `session`'s channel `name` available in the local engine, subscribing over a direct
/// link to its node if needed. Concurrent calls for one channel share one pull
/// ([`super::channel_table`]).
pub async fn ensure_channel_upstream(
    inner: &Arc<Inner>,
    app: &str,
    session: SessionId,
    name: &str,
) -> Result<(), PullError> {
    if session.node_tag() == inner.tag {
        return Ok(());
    }
    let (reply, answer) = oneshot::channel();
    let cmd = ChannelCmd::Pull {
        app: app.to_string(),
        key: (session, name.to_string()),
        reply,
    };
    inner.channel_cmd(cmd).await;
    // No answer: the task that owns the tables is gone (the relay is stopping).
    answer.await.unwrap_or(Err(PullError::Link))
}

/// The one pull of a channel under way: answers every caller waiting on it.
pub async fn pull(inner: Arc<Inner>, app: String, session: SessionId, name: String) {
    let result = pull_once(&inner, &app, session, &name).await;
    let key = (session, name);
    inner
        .channel_cmd(ChannelCmd::PullDone { key, result })
        .await;
}

async fn pull_once(
    inner: &Arc<Inner>,
    app: &str,
    session: SessionId,
    name: &str,
) -> Result<(), PullError> {
    let n = name.to_string();
    if inner
        .engine
        .call(move |e, _| e.has_relay_channel(session, &n))
        .await
        .map_err(|_| PullError::EngineStopped)?
    {
        return Ok(());
    }
    let view = inner.view.borrow().clone();
    let route = upstream_for(&view, session, name, true).ok_or(PullError::NoRoute)?;
    let peer = route.peer().clone();
    let conn = pull::link_to(inner, &peer).await.map_err(|e| {
        tracing::debug!(peer = %peer.node_id, error = %e, "no relay link");
        PullError::Link
    })?;
    // A peer that grants no stream or no credit must not hold the pull (and its place among
    // the pending ones) for ever.
    let (mut send, mut recv) = tokio::time::timeout(ACCEPT_TIMEOUT, conn.open_bi())
        .await
        .map_err(|_| PullError::NoAnswer)?
        .map_err(|_| PullError::Link)?;
    let mut first = vec![DC_STREAM_MAGIC];
    DcFrame::Subscribe {
        session_id: session.to_bytes(),
        app: app.to_string(),
        channel: name.to_string(),
    }
    .encode(&mut first)
    .map_err(|_| PullError::Refused)?;
    tokio::time::timeout(ACCEPT_TIMEOUT, send.write_all(&first))
        .await
        .map_err(|_| PullError::NoAnswer)?
        .map_err(|_| PullError::Link)?;
    let mut dec = DcDecoder::new();
    let answer = tokio::time::timeout(ACCEPT_TIMEOUT, read_frame(&mut recv, &mut dec))
        .await
        .map_err(|_| PullError::NoAnswer)?;
    match answer {
        Some(DcFrame::Accepted) => {}
        Some(DcFrame::Refused { .. }) => return Err(PullError::Refused),
        _ => return Err(PullError::NoAnswer),
    }
    let up: DcLinkId = inner.next_up().0;
    let (tx, rx) = mpsc::channel(CHANNEL_STREAM_QUEUE);
    let (done, opened) = oneshot::channel();
    inner
        .channel_cmd(ChannelCmd::UpOpened { up, tx, done })
        .await;
    opened.await.map_err(|_| PullError::Link)?;
    let n = name.to_string();
    let added = inner
        .engine
        .call(move |e, _| e.add_relay_channel(session, &n, up))
        .await;
    if added.is_err() {
        inner.channel_cmd(ChannelCmd::UpEnded(up)).await;
        return Err(PullError::EngineStopped);
    }
    tracing::info!(%session, channel = name, via = %peer.node_id, up, "receiving remote DataChannel");
    inner.spawn(write_frames(send, rx));
    let reader = inner.clone();
    inner.spawn(async move {
        read_messages(&reader, recv, dec, Side::Up(up)).await;
        reader.channel_cmd(ChannelCmd::UpEnded(up)).await;
        let _ = reader
            .engine
            .call(move |e, _| e.end_relay_channel(up))
            .await;
    });
    Ok(())
}

/// Serves a channel stream a peer opened (its first byte was [`DC_STREAM_MAGIC`]).
pub async fn serve_stream(
    inner: Arc<Inner>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let mut dec = DcDecoder::new();
    let Ok(Some(DcFrame::Subscribe {
        session_id,
        app,
        channel,
    })) = tokio::time::timeout(ACCEPT_TIMEOUT, read_frame(&mut recv, &mut dec)).await
    else {
        return;
    };
    let session = SessionId::from_bytes(session_id);
    let down: DcLinkId = inner.next_down().0;
    let ch = channel.clone();
    // The channel's session's worker serves this stream: every call about it goes there.
    let worker = inner.engine.worker_of(session);
    let subscribed = inner
        .engine
        .call_on(worker, move |e, _| {
            e.relay_channel_subscribe(&app, session, &ch, down)
        })
        .await;
    let answer = match subscribed {
        Ok(Ok(())) => DcFrame::Accepted,
        Ok(Err(e)) => DcFrame::Refused {
            reason: e.to_string().chars().take(200).collect(),
        },
        Err(_) => DcFrame::Refused {
            reason: "engine stopped".into(),
        },
    };
    let accepted = answer == DcFrame::Accepted;
    let Ok(bytes) = answer.to_vec() else {
        return;
    };
    if send.write_all(&bytes).await.is_err() || !accepted {
        let _ = send.finish();
        if accepted {
            let _ = inner
                .engine
                .call_on(worker, move |e, _| e.relay_channel_unsubscribe(down))
                .await;
        }
        return;
    }
    let (tx, rx) = mpsc::channel(CHANNEL_STREAM_QUEUE);
    let (done, opened) = oneshot::channel();
    inner
        .channel_cmd(ChannelCmd::DownOpened { down, tx, done })
        .await;
    if opened.await.is_ok() {
        inner.spawn(write_frames(send, rx));
        read_messages(&inner, recv, dec, Side::Down(down, worker)).await;
        inner.channel_cmd(ChannelCmd::DownEnded(down)).await;
    }
    let _ = inner
        .engine
        .call_on(worker, move |e, _| e.relay_channel_unsubscribe(down))
        .await;
}

/// Queues a frame for a channel stream; a full queue drops it (counted).
pub fn send_frame(inner: &Inner, tx: Option<&mpsc::Sender<DcFrame>>, frame: DcFrame) {
    queue_frame(&inner.dc_stream_drops, tx, frame);
}

/// Queues a frame for a channel stream; a full (or gone) queue drops it and `drops` counts it.
pub fn queue_frame(drops: &AtomicU64, tx: Option<&mpsc::Sender<DcFrame>>, frame: DcFrame) {
    let sent = tx.is_some_and(|tx| tx.try_send(frame).is_ok());
    if !sent {
        drops.fetch_add(1, Ordering::Relaxed);
    }
}

async fn write_frames(mut send: quinn::SendStream, mut rx: mpsc::Receiver<DcFrame>) {
    let mut buf = Vec::new();
    while let Some(frame) = rx.recv().await {
        buf.clear();
        if frame.encode(&mut buf).is_err() {
            continue;
        }
        if send.write_all(&buf).await.is_err() {
            break;
        }
    }
    let _ = send.finish();
}

/// Reads one frame (the first of a stream).
async fn read_frame(recv: &mut quinn::RecvStream, dec: &mut DcDecoder) -> Option<DcFrame> {
    let mut buf = vec![0u8; 1];
    // Bounded: a frame is at most ~64 KiB and each read brings at least a byte.
    for _ in 0..(70 * 1024) {
        let n = recv.read(&mut buf).await.ok()??;
        let mut frames = dec.feed(buf.get(..n)?);
        if let Some(f) = frames.pop() {
            return f.ok();
        }
    }
    None
}

/// Which end of a channel stream a reader serves.
#[derive(Clone, Copy)]
enum Side {
    /// This node subscribed (upstream): messages are the publisher's, answers to claims come.
    Up(DcLinkId),
    /// A peer subscribed (downstream): messages are replies, claims come. With the engine
    /// worker that holds the channel.
    Down(DcLinkId, usize),
}

/// Hands every `Message` of the stream to the engine, and handles `canReply` claims and their
/// answers, until it ends or speaks garbage.
async fn read_messages(
    inner: &Arc<Inner>,
    mut recv: quinn::RecvStream,
    mut dec: DcDecoder,
    side: Side,
) {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = match recv.read(&mut buf).await {
            Ok(Some(n)) => n,
            _ => return,
        };
        inner.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        for frame in dec.feed(buf.get(..n).unwrap_or_default()) {
            match frame {
                Ok(DcFrame::Message { binary, data }) => {
                    let (input, worker) = match side {
                        // Channels relayed from other nodes live on the primary worker.
                        Side::Up(up) => (
                            RelayIn::ChannelMessage { up, binary, data },
                            crate::workers::PRIMARY,
                        ),
                        Side::Down(down, worker) => {
                            (RelayIn::ChannelReply { down, binary, data }, worker)
                        }
                    };
                    if !inner.engine.relay_input(worker, input) {
                        inner.dc_in_drops.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(DcFrame::Claim { seq, want }) => {
                    let Side::Down(down, worker) = side else {
                        return;
                    };
                    let answer = inner
                        .engine
                        .call_on(worker, move |e, _| e.relay_channel_claim(down, seq, want))
                        .await;
                    match answer {
                        Ok(Some(granted)) => {
                            let frame = DcFrame::ClaimAnswer { seq, granted };
                            inner.channel_cmd(ChannelCmd::ToDown { down, frame }).await;
                        }
                        Ok(None) => {}
                        Err(_) => return,
                    }
                }
                Ok(DcFrame::ClaimAnswer { seq, granted }) => {
                    let Side::Up(up) = side else { return };
                    let cmd = ChannelCmd::ClaimAnswer { up, seq, granted };
                    inner.channel_cmd(cmd).await;
                }
                Ok(DcFrame::Ended) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}

/// Claims the `canReply` grant of `session`'s channel `name` (received here over the relay)
/// from the publisher's node; see [`super::Relay::claim_channel_reply`]. Concurrent claims of
/// one channel share one claim, so an answer is never taken for another's.
pub async fn claim_reply(inner: &Arc<Inner>, session: SessionId, name: &str) -> bool {
    if session.node_tag() == inner.tag {
        return true;
    }
    let (reply, answer) = oneshot::channel();
    let key = (session, name.to_string());
    inner.channel_cmd(ChannelCmd::Claim { key, reply }).await;
    answer.await.unwrap_or(false)
}

/// The one claim of a channel under way: answers every caller waiting on it.
pub async fn claim(inner: Arc<Inner>, session: SessionId, name: String) {
    let granted = claim_once(&inner, session, &name).await;
    let key = (session, name);
    inner
        .channel_cmd(ChannelCmd::ClaimDone { key, granted })
        .await;
}

async fn claim_once(inner: &Arc<Inner>, session: SessionId, name: &str) -> bool {
    let n = name.to_string();
    let Ok(Some((up, granted))) = inner
        .engine
        .call(move |e, _| e.channel_reply_grant(session, &n))
        .await
    else {
        // Not received here: the engine answers the item `not_found_track_error`.
        return false;
    };
    if granted {
        return true;
    }
    let seq = inner.next_id.fetch_add(1, Ordering::Relaxed) as u32;
    let (tx, rx) = oneshot::channel();
    inner
        .channel_cmd(ChannelCmd::ClaimSent {
            up,
            seq,
            answer: tx,
        })
        .await;
    match tokio::time::timeout(ACCEPT_TIMEOUT, rx).await {
        Ok(Ok(true)) => {}
        Ok(_) => return false,
        Err(_) => {
            // An answer after the timeout may still have granted it: give it back.
            inner.channel_cmd(ChannelCmd::ClaimGiveUp { up, seq }).await;
            return false;
        }
    }
    inner
        .engine
        .call(move |e, _| e.set_channel_reply_grant(up, seq))
        .await
        .unwrap_or(false)
}
