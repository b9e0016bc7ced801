//! The accepting side of relay links: handshake, then serve the peer's subscriptions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::Instrument;
use trackmesh_relay_proto::codec::FrameDecoder;
use trackmesh_relay_proto::control::{ControlMsg, FailureCode, SubId, Subscribe};
use trackmesh_relay_proto::datachannel::DC_STREAM_MAGIC;
use trackmesh_relay_proto::handshake::{self, HandshakeMsg, Welcome};

use super::wire::{self, CONTROL_QUEUE};
use super::{Down, Inner, pull};
use crate::ids::{DownId, NodeId, SessionId};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Subscriptions one peer may hold on this node at once.
const MAX_SUBS_PER_LINK: usize = 4096;

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
    let (mut send, mut recv) = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.accept_bi()).await??;
    let mut dec = FrameDecoder::<HandshakeMsg>::new();
    let hello = match wire::read_one(&mut recv, &mut dec, HANDSHAKE_TIMEOUT).await? {
        HandshakeMsg::Hello(h) => h,
        _ => anyhow::bail!("expected Hello"),
    };
    if let Err(reason) = wire::check_hello(&inner.clusters, &hello) {
        inner.refused.fetch_add(1, Ordering::Relaxed);
        if let handshake::RefuseReason::UnsupportedVersion { .. } = reason {
            // A cluster of mixed releases: worth an operator's attention, not a debug line.
            tracing::warn!(
                peer = %hello.node_id,
                peer_version = hello.protocol_version,
                version = handshake::PROTOCOL_VERSION,
                "refused a relay link: the peer speaks another relay protocol version; run one release on every node"
            );
        }
        let _ = wire::write_one(&mut send, &HandshakeMsg::Refuse { reason }).await;
        let _ = send.finish();
        conn.close(1u32.into(), b"refused");
        anyhow::bail!("refused {}: {reason}", hello.node_id);
    }
    wire::write_one(
        &mut send,
        &HandshakeMsg::Welcome(Welcome {
            node_id: inner.node_id.to_string(),
            node_tag: inner.tag.0,
        }),
    )
    .await?;
    let peer = NodeId::from(hello.node_id);
    tracing::info!(%peer, "relay link accepted");

    inner.spawn(accept_channel_streams(inner.clone(), conn.clone()));
    let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_QUEUE);
    inner.spawn(wire::write_control(send, ctl_rx));
    // This link's subscriptions: the peer's sub id → our downstream id.
    let subs: Arc<Mutex<HashMap<SubId, DownId>>> = Arc::default();
    let handler = {
        let inner = inner.clone();
        let subs = subs.clone();
        let conn = conn.clone();
        let peer = peer.clone();
        move |msg: ControlMsg| match msg {
            ControlMsg::Subscribe(s) => {
                let full = subs
                    .lock()
                    .map(|m| m.len() >= MAX_SUBS_PER_LINK)
                    .unwrap_or(true);
                if full {
                    inner.send_control(
                        &ctl_tx,
                        ControlMsg::SubscribeFailed {
                            sub: s.sub,
                            code: FailureCode::Overloaded,
                            reason: "too many subscriptions on this link".into(),
                        },
                    );
                    return;
                }
                inner.spawn(subscribe(
                    inner.clone(),
                    conn.clone(),
                    peer.clone(),
                    ctl_tx.clone(),
                    subs.clone(),
                    s,
                ));
            }
            ControlMsg::Unsubscribe { sub } => {
                let down = subs.lock().ok().and_then(|mut m| m.remove(&sub));
                if let Some(down) = down {
                    release(&inner, down);
                }
            }
            ControlMsg::Nack(nack) => {
                let down = subs.lock().ok().and_then(|m| m.get(&nack.sub).copied());
                if let Some(down) = down
                    && inner.nack_tx.try_send((down, nack)).is_err()
                {
                    inner.repair.nack_drops.fetch_add(1, Ordering::Relaxed);
                }
            }
            ControlMsg::KeyframeRequest { sub } => {
                let down = subs.lock().ok().and_then(|m| m.get(&sub).copied());
                // The worker holding the publication: its session's.
                let session = down.and_then(|d| inner.state().downs.get(&d).map(|d| d.session));
                if let (Some(down), Some(session)) = (down, session) {
                    let engine = inner.engine.clone();
                    inner.spawn(async move {
                        let _ = engine
                            .call_session(session, move |e, now| {
                                e.relay_keyframe_request(down, now)
                            })
                            .await;
                    });
                }
            }
            _ => {}
        }
    };
    let result = wire::read_control(recv, dec.switch(), handler).await;
    // The link is gone (or spoke garbage): release everything it was sent.
    conn.close(0u32.into(), b"bye");
    let downs: Vec<DownId> = subs
        .lock()
        .map(|mut m| m.drain().map(|(_, d)| d).collect())
        .unwrap_or_default();
    for down in downs {
        release(inner, down);
    }
    tracing::info!(%peer, "relay link closed");
    result
}

fn release(inner: &Arc<Inner>, down: DownId) {
    let Some(gone) = inner.state().downs.remove(&down) else {
        return;
    };
    let engine = inner.engine.clone();
    inner.spawn(async move {
        let _ = engine
            .call_session(gone.session, move |e, now| e.relay_unsubscribe(down, now))
            .await;
    });
}

async fn subscribe(
    inner: Arc<Inner>,
    conn: quinn::Connection,
    peer: NodeId,
    control: mpsc::Sender<ControlMsg>,
    subs: Arc<Mutex<HashMap<SubId, DownId>>>,
    s: Subscribe,
) {
    let sub = s.sub;
    let session = SessionId::from_bytes(s.session_id);
    let outcome = serve_subscription(&inner, conn, peer, control.clone(), &subs, session, s).await;
    let reply = match outcome {
        Ok(track) => ControlMsg::Subscribed { sub, track },
        Err(code) => ControlMsg::SubscribeFailed {
            sub,
            code,
            reason: "track not found on this node".into(),
        },
    };
    let _ = control.send(reply).await;
}

/// How often, and how many times, a subscription to a track with no frame yet asks again
/// (2 s: the subscribing node gives up after 3).
const MEDIA_WAIT_STEP: std::time::Duration = std::time::Duration::from_millis(20);
const MEDIA_WAIT_TRIES: u32 = 100;

async fn serve_subscription(
    inner: &Arc<Inner>,
    conn: quinn::Connection,
    peer: NodeId,
    control: mpsc::Sender<ControlMsg>,
    subs: &Arc<Mutex<HashMap<SubId, DownId>>>,
    session: SessionId,
    s: Subscribe,
) -> Result<trackmesh_relay_proto::control::TrackInfo, FailureCode> {
    // A track of another node: this node is a hub; pull it straight from the origin first.
    if session.node_tag() != inner.tag
        && let Err(e) = pull::ensure_upstream(inner, &s.app, session, &s.track_name, true).await
    {
        tracing::debug!(%session, error = %e, "hub could not pull the track");
        return Err(FailureCode::NotFound);
    }
    let down = inner.next_down();
    inner.state().downs.insert(
        down,
        Down {
            conn,
            sub: s.sub,
            peer,
            control,
            session,
            track: s.track_name.clone(),
            frames: Arc::new(AtomicU64::new(0)),
        },
    );
    // On the worker that holds the session (the primary for a track relayed from elsewhere).
    // A track published a moment ago has no codec until its first frame: a subscription that
    // comes before it waits for it (bounded, within the subscriber's own timeout) rather than
    // being refused as not found.
    let mut tries = 0;
    let res = loop {
        let (app, track) = (s.app.clone(), s.track_name.clone());
        let res = inner
            .engine
            .call_session(session, move |e, _| {
                e.relay_subscribe(down, &app, session, &track)
            })
            .await;
        let (app, track) = (s.app.clone(), s.track_name.clone());
        let waiting = matches!(res, Ok(Err(_)))
            && tries < MEDIA_WAIT_TRIES
            && inner
                .engine
                .call_session(session, move |e, _| {
                    e.has_publication(&app, session, &track)
                })
                .await
                .unwrap_or(false);
        if !waiting {
            break res;
        }
        tries += 1;
        tokio::time::sleep(MEDIA_WAIT_STEP).await;
    };
    match res {
        Ok(Ok(info)) => {
            if let Ok(mut m) = subs.lock() {
                m.insert(s.sub, down);
            }
            Ok(wire::to_wire(&info))
        }
        _ => {
            inner.state().downs.remove(&down);
            Err(FailureCode::NotFound)
        }
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
