//! The accepting side of relay links: handshake, then serve the peer's subscriptions.
//!
//! A quinn driver around [`Publisher`] (relay-proto's no-I/O serving end): one task per link
//! owns the machine, the link's subscription table included; attach tasks and the engine's
//! output task talk to it over bounded channels.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;
use tracing::Instrument;
use trackmesh_relay_proto::codec::FrameDecoder;
use trackmesh_relay_proto::control::{ControlMsg, SubId, Subscribe};
use trackmesh_relay_proto::datachannel::DC_STREAM_MAGIC;
use trackmesh_relay_proto::handshake::{self, HandshakeMsg, Welcome};
use trackmesh_relay_proto::link::publisher::{Publisher, PublisherEvent, PublisherLimits};

use super::downs::{Down, DownCmd};
use super::wire::{self, CONTROL_QUEUE, READ_CHUNK};
use super::{Inner, pull};
use crate::engine::RelayLayers;
use crate::ids::{DownId, NodeId, SessionId};

/// Bound on a DataChannel stream's first byte (the link's own handshake is the machine's).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Subscriptions one peer may hold on this node at once.
const MAX_SUBS_PER_LINK: usize = 4096;
/// Links other nodes may hold open to this one at once. A node dials one link to each peer it
/// pulls from (two for a moment while one replaces another), so this is room for a cluster of
/// hundreds; beyond it a new link is refused as `Overloaded`.
pub(crate) const MAX_INCOMING_LINKS: usize = 1024;

/// One of the [`MAX_INCOMING_LINKS`] places, held while its link lasts.
struct LinkSlot<'a>(&'a AtomicUsize);

impl Drop for LinkSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a peer that passed the Hello checks may have a link: not this node dialling itself
/// (a copied node id), and a place free.
fn admit<'a>(
    own_id: &str,
    peer_id: &str,
    links: &'a AtomicUsize,
    max: usize,
) -> Result<LinkSlot<'a>, handshake::RefuseReason> {
    if peer_id == own_id {
        return Err(handshake::RefuseReason::DuplicateNode);
    }
    links
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < max).then_some(n + 1)
        })
        .map(|_| LinkSlot(links))
        .map_err(|_| handshake::RefuseReason::Overloaded)
}

pub async fn accept_loop(inner: Arc<Inner>) {
    let Some(endpoint) = inner.endpoint() else {
        return;
    };
    while let Some(incoming) = endpoint.accept().await {
        let span = tracing::info_span!("relay_link", direction = "in", remote = %incoming.remote_address());
        let link_inner = inner.clone();
        inner.spawn(
            async move {
                if let Err(e) = serve_link(&link_inner, incoming).await {
                    tracing::debug!(error = %e, "relay link ended");
                }
            }
            .instrument(span),
        );
    }
}

async fn serve_link(inner: &Arc<Inner>, incoming: quinn::Incoming) -> anyhow::Result<()> {
    // TLS already required a certificate from the cluster CA; the handshake checks the rest.
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            inner.refused.fetch_add(1, Ordering::Relaxed);
            return Err(e.into());
        }
    };
    let mut link: Publisher<Served> = Publisher::new(
        Instant::now(),
        PublisherLimits {
            max_subs: MAX_SUBS_PER_LINK,
            ..PublisherLimits::default()
        },
    );
    // The machine's handshake deadline bounds the whole handshake.
    let deadline = link.poll_timeout().unwrap_or_else(Instant::now);
    let handshake = async {
        let (send, mut recv) = conn.accept_bi().await?;
        let mut dec = FrameDecoder::<HandshakeMsg>::new();
        let left = deadline.saturating_duration_since(Instant::now());
        let hello = match wire::read_one(&mut recv, &mut dec, left).await? {
            HandshakeMsg::Hello(h) => h,
            _ => anyhow::bail!("expected Hello"),
        };
        anyhow::Ok((send, recv, dec, hello))
    };
    let (mut send, recv, dec, hello) =
        match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), handshake).await {
            Ok(r) => r?,
            Err(_) => {
                link.handle_timeout(Instant::now());
                if let Some(PublisherEvent::Close { reason }) = link.poll_event() {
                    conn.close(1u32.into(), reason.as_bytes());
                }
                anyhow::bail!("the relay handshake timed out");
            }
        };
    let admitted = wire::check_hello(&inner.clusters, &hello).and_then(|()| {
        admit(
            inner.node_id.as_str(),
            &hello.node_id,
            &inner.incoming_links,
            MAX_INCOMING_LINKS,
        )
    });
    let _slot = match admitted {
        Ok(slot) => slot,
        Err(reason) => {
            return refuse(inner, &hello, send, &conn, reason).await;
        }
    };
    wire::write_one(
        &mut send,
        &HandshakeMsg::Welcome(Welcome {
            node_id: inner.node_id.to_string(),
            node_tag: inner.tag.0,
        }),
    )
    .await?;
    link.handshake_done();
    let peer = NodeId::from(hello.node_id);
    tracing::info!(%peer, "relay link accepted");
    serve_admitted(inner, conn, peer, link, send, recv, dec).await
}

/// Tells the dialer why it may not have a link, and closes the connection.
async fn refuse(
    inner: &Arc<Inner>,
    hello: &handshake::Hello,
    mut send: quinn::SendStream,
    conn: &quinn::Connection,
    reason: handshake::RefuseReason,
) -> anyhow::Result<()> {
    inner.refused.fetch_add(1, Ordering::Relaxed);
    match reason {
        // A cluster of mixed releases: worth an operator's attention, not a debug line.
        handshake::RefuseReason::UnsupportedVersion { .. } => tracing::warn!(
            peer = %hello.node_id,
            peer_version = hello.protocol_version,
            version = handshake::PROTOCOL_VERSION,
            "refused a relay link: the peer speaks another relay protocol version; run one release on every node"
        ),
        handshake::RefuseReason::DuplicateNode => tracing::warn!(
            "refused a relay link from a node under this node's own id; give each node its own --node-id"
        ),
        handshake::RefuseReason::Overloaded => tracing::warn!(
            peer = %hello.node_id,
            max = MAX_INCOMING_LINKS,
            "refused a relay link: this node holds as many links from other nodes as it may"
        ),
        _ => {}
    }
    let _ = wire::write_one(&mut send, &HandshakeMsg::Refuse { reason }).await;
    let _ = send.finish();
    conn.close(1u32.into(), b"refused");
    anyhow::bail!("refused {}: {reason}", hello.node_id)
}

/// Serves an admitted link until it ends, then releases what it was sent.
async fn serve_admitted(
    inner: &Arc<Inner>,
    conn: quinn::Connection,
    peer: NodeId,
    mut link: Publisher<Served>,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    dec: FrameDecoder<HandshakeMsg>,
) -> anyhow::Result<()> {
    inner.spawn(accept_channel_streams(inner.clone(), conn.clone()));
    let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_QUEUE);
    inner.spawn(wire::write_control(send, ctl_rx));
    let result = drive(inner, &conn, &peer, &mut link, ctl_tx, recv, dec.switch()).await;
    // The link is gone (or spoke garbage): release everything it was sent. Answers still to
    // come find the link's task gone and release their downstream themselves.
    conn.close(0u32.into(), b"bye");
    link.closed();
    while let Some(ev) = link.poll_event() {
        if let PublisherEvent::Release(served) = ev {
            release(inner, served);
        }
    }
    tracing::info!(%peer, "relay link closed");
    result
}

/// A downstream as the link's machine knows it: the engine's id, and the session whose worker
/// holds its publication (where releases and keyframe requests go).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Served {
    pub down: DownId,
    pub session: SessionId,
}

/// What an attach task found, for the link's task to give its machine.
enum Attached {
    Live {
        sub: SubId,
        down: Served,
        track: trackmesh_relay_proto::control::TrackInfo,
    },
    NotFound {
        sub: SubId,
    },
    NoMediaYet {
        sub: SubId,
    },
}

/// The link's one task: it alone owns the link's [`Publisher`], and feeds it the peer's control
/// messages, the attach tasks' answers, the engine's track ends and the time; then carries out
/// what it queued. Until the control stream ends or carries garbage.
async fn drive(
    inner: &Arc<Inner>,
    conn: &quinn::Connection,
    peer: &NodeId,
    link: &mut Publisher<Served>,
    ctl_tx: mpsc::Sender<ControlMsg>,
    mut recv: quinn::RecvStream,
    mut dec: FrameDecoder<ControlMsg>,
) -> anyhow::Result<()> {
    // Both bounded by the subscriptions a link may hold: each attach answers once, each live
    // downstream ends once.
    let (ended_tx, mut ended_rx) = mpsc::channel(MAX_SUBS_PER_LINK);
    let (done_tx, mut done_rx) = mpsc::channel(MAX_SUBS_PER_LINK);
    let to = LinkTasks {
        ctl_tx,
        ended_tx,
        done_tx,
    };
    let mut buf = vec![0u8; READ_CHUNK];
    // Messages that came with the handshake's last read.
    while let Some(msg) = dec.next() {
        link.handle_control(Instant::now(), msg.context("decoding a control message")?);
    }
    loop {
        carry_out(inner, conn, peer, link, &to);
        let wake = link.poll_timeout();
        tokio::select! {
            read = recv.read(&mut buf) => {
                let Some(n) = read.context("reading control")? else {
                    return Ok(());
                };
                let now = Instant::now();
                for msg in dec.feed(buf.get(..n).unwrap_or_default()) {
                    link.handle_control(now, msg.context("decoding a control message")?);
                }
            }
            Some(done) = done_rx.recv() => match done {
                Attached::Live { sub, down, track } => link.attached(sub, down, track),
                Attached::NotFound { sub } => link.not_found(sub),
                Attached::NoMediaYet { sub } => link.no_media_yet(Instant::now(), sub),
            },
            Some(down) = ended_rx.recv() => link.track_ended(down),
            () = sleep_until(wake), if wake.is_some() => link.handle_timeout(Instant::now()),
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// Where a link's task sends what its machine queued: control messages to the peer, and the
/// attach tasks' answers and track ends back to itself.
struct LinkTasks {
    ctl_tx: mpsc::Sender<ControlMsg>,
    ended_tx: mpsc::Sender<Served>,
    done_tx: mpsc::Sender<Attached>,
}

/// Carries out what the link's machine queued: control messages to the peer, attaches,
/// releases, `Nack`s and keyframe requests for the engine side.
fn carry_out(
    inner: &Arc<Inner>,
    conn: &quinn::Connection,
    peer: &NodeId,
    link: &mut Publisher<Served>,
    to: &LinkTasks,
) {
    let LinkTasks {
        ctl_tx,
        ended_tx,
        done_tx,
    } = to;
    // A peer's keyframe requests and layer changes are queued for the engine without a task
    // or a wait each (a peer may send thousands in one read); a full queue drops (counted).
    let tell = |session: SessionId, f: crate::runtime::Job| {
        if !inner.engine.tell_session(session, f) {
            inner.control_drops.fetch_add(1, Ordering::Relaxed);
        }
    };
    while let Some(msg) = link.poll_transmit() {
        inner.send_control(ctl_tx, msg);
    }
    while let Some(ev) = link.poll_event() {
        match ev {
            PublisherEvent::Attach(s) => inner.spawn(attach(
                inner.clone(),
                conn.clone(),
                peer.clone(),
                ended_tx.clone(),
                ctl_tx.clone(),
                done_tx.clone(),
                s,
            )),
            PublisherEvent::LayerKeyframeRequest {
                down: Served { down, session },
                rid,
            } => {
                // A rid this node cannot hold names no layer here.
                let Some(rid) = crate::engine::simulcast::parse_rid(&rid) else {
                    continue;
                };
                tell(
                    session,
                    Box::new(move |e, now| e.relay_layer_keyframe_request(down, rid, now)),
                );
            }
            PublisherEvent::SetLayers {
                down: Served { down, session },
                layers,
            } => {
                let layers = wire::layers_from_wire(&layers);
                tell(
                    session,
                    Box::new(move |e, now| e.relay_set_layers(down, layers, now)),
                );
            }
            PublisherEvent::Release(down) => release(inner, down),
            PublisherEvent::Nack { down, nack } => {
                if inner.nack_tx.try_send((down.down, nack)).is_err() {
                    inner.repair.nack_drops.fetch_add(1, Ordering::Relaxed);
                }
            }
            PublisherEvent::KeyframeRequest(Served { down, session }) => {
                // The worker holding the publication: its session's.
                tell(
                    session,
                    Box::new(move |e, now| e.relay_keyframe_request(down, now)),
                );
            }
            PublisherEvent::Close { reason } => conn.close(1u32.into(), reason.as_bytes()),
        }
    }
}

fn release(inner: &Arc<Inner>, Served { down, session }: Served) {
    // No longer sent frames; the engine forgets it on its worker.
    let inner2 = inner.clone();
    inner.spawn(async move {
        inner2.remove_down(down).await;
        let _ = inner2
            .engine
            .call_session(session, move |e, now| e.relay_unsubscribe(down, now))
            .await;
    });
}

/// Attaches one subscription to the engine and hands the answer to the link's task; an answer
/// the task is no longer there for releases its downstream.
async fn attach(
    inner: Arc<Inner>,
    conn: quinn::Connection,
    peer: NodeId,
    ended: mpsc::Sender<Served>,
    control: mpsc::Sender<ControlMsg>,
    done: mpsc::Sender<Attached>,
    s: Subscribe,
) {
    let outcome = attach_once(&inner, conn, peer, ended, control, s).await;
    if let Err(mpsc::error::SendError(Attached::Live { down, .. })) = done.send(outcome).await {
        release(&inner, down);
    }
}

async fn attach_once(
    inner: &Arc<Inner>,
    conn: quinn::Connection,
    peer: NodeId,
    ended: mpsc::Sender<Served>,
    control: mpsc::Sender<ControlMsg>,
    s: Subscribe,
) -> Attached {
    let sub = s.sub;
    let session = SessionId::from_bytes(s.session_id);
    // A track of another node: this node is a hub; pull it straight from the origin first.
    if session.node_tag() != inner.tag
        && let Err(e) = pull::ensure_upstream(inner, &s.app, session, &s.track_name, true).await
    {
        tracing::debug!(%session, error = %e, "hub could not pull the track");
        return Attached::NotFound { sub };
    }
    let down = inner.next_down();
    // Known before the engine sends its first frame.
    let inserted = inner
        .insert_down(
            down,
            Down {
                conn,
                sub,
                peer,
                ended,
                control,
                session,
                track: s.track_name.clone(),
                frames: Arc::new(AtomicU64::new(0)),
            },
        )
        .await;
    if !inserted {
        // The relay is stopping.
        return Attached::NotFound { sub };
    }
    // On the worker that holds the session (the primary for a track relayed from elsewhere).
    let (app, track) = (s.app.clone(), s.track_name.clone());
    let layers = wire::layers_from_wire(&s.layers);
    let res = inner
        .engine
        .call_session(session, move |e, now| {
            let info = e.relay_subscribe(down, &app, session, &track);
            if info.is_ok() && layers != RelayLayers::All {
                e.relay_set_layers(down, layers, now);
            }
            info
        })
        .await;
    if let Ok(Ok(info)) = res {
        return Attached::Live {
            sub,
            down: Served { down, session },
            track: wire::to_wire(&info),
        };
    }
    inner.remove_down(down).await;
    // A track published a moment ago has no codec until its first frame: the machine asks
    // again shortly rather than refusing it as not found.
    let (app, track) = (s.app, s.track_name);
    let published = matches!(res, Ok(Err(_)))
        && inner
            .engine
            .call_session(session, move |e, _| {
                e.has_publication(&app, session, &track)
            })
            .await
            .unwrap_or(false);
    if published {
        Attached::NoMediaYet { sub }
    } else {
        Attached::NotFound { sub }
    }
}

/// Further bidirectional streams the dialer opens are DataChannel subscriptions (first byte
/// [`DC_STREAM_MAGIC`]); anything else is reset. At most
/// [`super::channels::MAX_CHANNEL_STREAMS_PER_LINK`] at once.
async fn accept_channel_streams(inner: Arc<Inner>, conn: quinn::Connection) {
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    while let Ok((send, mut recv)) = conn.accept_bi().await {
        if open.load(Ordering::Relaxed) >= super::channels::MAX_CHANNEL_STREAMS_PER_LINK {
            let _ = recv.stop(1u32.into());
            continue;
        }
        let (inner2, open2) = (inner.clone(), open.clone());
        open.fetch_add(1, Ordering::Relaxed);
        inner.spawn(async move {
            let mut magic = [0u8; 1];
            let ok = tokio::time::timeout(HANDSHAKE_TIMEOUT, recv.read_exact(&mut magic))
                .await
                .is_ok_and(|r| r.is_ok());
            if ok && magic[0] == DC_STREAM_MAGIC {
                super::channels::serve_stream(inner2, send, recv).await;
            } else {
                let _ = recv.stop(1u32.into());
            }
            open2.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Closes links dead peers dialed, so what was sent to them is released at once rather than
/// after the QUIC idle timeout (the pulling task closes the links this node dialed).
pub async fn watch_members(inner: Arc<Inner>) {
    let mut view = inner.view.clone();
    while view.changed().await.is_ok() {
        let v = view.borrow_and_update().clone();
        let mut dead: Vec<NodeId> = inner
            .served_now()
            .values()
            .filter(|d| v.live_by_id(d.peer.as_str()).is_none())
            .map(|d| d.peer.clone())
            .collect();
        if dead.is_empty() {
            continue;
        }
        dead.sort();
        dead.dedup();
        // The task that owns the downstream table holds the links' connections (gone: so
        // are they).
        let _ = inner.downs.send(DownCmd::ClosePeers(dead)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_admitted_up_to_the_cap_and_never_from_this_node_itself() {
        let links = AtomicUsize::new(0);
        assert_eq!(
            admit("a", "a", &links, 2).err(),
            Some(handshake::RefuseReason::DuplicateNode),
            "this node's own id"
        );
        let first = admit("a", "b", &links, 2).expect("a place");
        let second = admit("a", "c", &links, 2).expect("a place");
        assert_eq!(
            admit("a", "d", &links, 2).err(),
            Some(handshake::RefuseReason::Overloaded),
            "full"
        );
        assert_eq!(links.load(Ordering::Relaxed), 2, "a refusal takes no place");
        drop(first);
        let third = admit("a", "d", &links, 2).expect("a place again once a link ended");
        drop((second, third));
        assert_eq!(links.load(Ordering::Relaxed), 0);
    }
}
