//! Reading and writing relay-proto frames on QUIC streams, and converting track descriptions
//! between the engine and the wire.

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use trackmesh_relay_proto::codec::{self, FrameDecoder, Message};
use trackmesh_relay_proto::control::{self, CodecParams, ControlMsg};
use trackmesh_relay_proto::handshake::{self, HandshakeMsg, Hello, RefuseReason};

use str0m::media::Rid;

use crate::engine::simulcast::parse_rid;
use crate::engine::{CodecInfo, RelayLayers, TrackInfo};

/// Control messages waiting to be written on one stream; a peer that stops reading loses its link.
pub const CONTROL_QUEUE: usize = 1024;
pub const READ_CHUNK: usize = 16 * 1024;

/// Reads one message, bounded in time.
pub async fn read_one<M: Message>(
    recv: &mut quinn::RecvStream,
    dec: &mut FrameDecoder<M>,
    timeout: Duration,
) -> anyhow::Result<M> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        if let Some(msg) = dec.next() {
            return msg.context("decoding a relay frame");
        }
        let n = tokio::time::timeout_at(deadline, recv.read(&mut buf))
            .await
            .context("timed out reading from the peer")??;
        let Some(n) = n else {
            bail!("the peer closed the stream");
        };
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let took = dec.push(rest);
            rest = &rest[took..];
            if let Some(msg) = dec.next() {
                if !rest.is_empty() {
                    bail!("unexpected data after the handshake message");
                }
                return msg.context("decoding a relay frame");
            }
            if took == 0 {
                bail!("relay frame decoder stalled");
            }
        }
    }
}

/// The acceptor's check of a `Hello`: any cluster identity this node holds will do (during a
/// rotation, the dialer may hold only one); the version must be one this node speaks.
pub fn check_hello(clusters: &[[u8; 32]], hello: &Hello) -> Result<(), RefuseReason> {
    clusters
        .iter()
        .map(|c| handshake::check_hello(hello, c, handshake::SUPPORTED_VERSIONS))
        .reduce(|a, b| if a.is_ok() { a } else { b })
        .unwrap_or(Err(RefuseReason::WrongCluster))
}

/// The dialer's reading of the answer to its `Hello` from `peer`: a `Welcome` from that node,
/// or an error that says what went wrong (a version mismatch names both versions).
pub fn check_answer(peer: &str, answer: HandshakeMsg) -> anyhow::Result<()> {
    match answer {
        HandshakeMsg::Welcome(w) if w.node_id == peer => Ok(()),
        HandshakeMsg::Welcome(w) => bail!("expected {peer} but {} answered", w.node_id),
        HandshakeMsg::Refuse {
            reason: reason @ RefuseReason::UnsupportedVersion { .. },
        } => bail!(
            "{peer} refused the link: {reason}, and this node speaks relay protocol {}: run one release on every node",
            handshake::PROTOCOL_VERSION
        ),
        HandshakeMsg::Refuse { reason } => bail!("{peer} refused the link: {reason}"),
        HandshakeMsg::Hello(_) => bail!("unexpected Hello from {peer}"),
    }
}

pub async fn write_one<M: Message>(send: &mut quinn::SendStream, msg: &M) -> anyhow::Result<()> {
    let bytes = codec::encode_to_vec(msg).context("encoding a relay frame")?;
    send.write_all(&bytes)
        .await
        .context("writing to the peer")?;
    Ok(())
}

/// Writes queued control messages until the queue closes or the stream fails.
pub async fn write_control(mut send: quinn::SendStream, mut rx: mpsc::Receiver<ControlMsg>) {
    while let Some(msg) = rx.recv().await {
        if let Err(e) = write_one(&mut send, &msg).await {
            tracing::debug!(error = %e, "relay control stream closed");
            return;
        }
    }
    let _ = send.finish();
}

pub fn to_wire(info: &TrackInfo) -> control::TrackInfo {
    control::TrackInfo {
        kind: match info.kind {
            str0m::media::MediaKind::Audio => control::MediaKind::Audio,
            str0m::media::MediaKind::Video => control::MediaKind::Video,
        },
        codec: CodecParams {
            mime: info.codec.codec.to_string(),
            clock_rate: info.codec.clock_rate,
            channels: info.codec.channels,
        },
    }
}

/// The layers a subscription asks for, as the wire says them.
pub fn layers_to_wire(layers: &RelayLayers) -> control::LayerSet {
    match layers {
        RelayLayers::All => control::LayerSet::All,
        RelayLayers::Only(rids) => {
            control::LayerSet::Only(rids.iter().map(|r| r.to_string()).collect())
        }
    }
}

/// The layers a peer asks for. A rid this node cannot hold as one (str0m's rids are at most 8
/// characters) names no layer here and is left out.
pub fn layers_from_wire(layers: &control::LayerSet) -> RelayLayers {
    match layers {
        control::LayerSet::All => RelayLayers::All,
        control::LayerSet::Only(rids) => {
            RelayLayers::Only(rids.iter().filter_map(|r| parse_rid(r)).collect())
        }
    }
}

/// A publication's layer states for a `Layers` message.
pub fn states_to_wire(layers: &[(Rid, bool)]) -> Vec<control::LayerState> {
    layers
        .iter()
        .map(|(rid, flowing)| control::LayerState {
            rid: rid.to_string(),
            flowing: *flowing,
        })
        .collect()
}

/// A `Layers` message's states; rids this node cannot hold are left out.
pub fn states_from_wire(layers: &[control::LayerState]) -> Vec<(Rid, bool)> {
    layers
        .iter()
        .filter_map(|l| Some((parse_rid(&l.rid)?, l.flowing)))
        .collect()
}

pub fn from_wire(info: &control::TrackInfo) -> TrackInfo {
    TrackInfo {
        kind: match info.kind {
            control::MediaKind::Audio => str0m::media::MediaKind::Audio,
            control::MediaKind::Video => str0m::media::MediaKind::Video,
        },
        codec: CodecInfo {
            codec: str0m::format::Codec::from(info.codec.mime.as_str()),
            clock_rate: info.codec.clock_rate,
            channels: info.codec.channels,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trackmesh_relay_proto::handshake::{PROTOCOL_VERSION, Welcome, cluster_identity};

    fn hello(version: u16, secret: &str) -> Hello {
        Hello {
            protocol_version: version,
            cluster: cluster_identity(secret),
            node_id: "old-node".into(),
            node_tag: 7,
        }
    }

    #[test]
    fn a_peer_of_another_protocol_version_is_refused_with_the_supported_range() {
        let clusters = [cluster_identity("new"), cluster_identity("old")];
        assert_eq!(
            check_hello(&clusters, &hello(PROTOCOL_VERSION, "old")),
            Ok(())
        );
        // A node of protocol 2 (no Nack; control messages numbered otherwise) or 3 (every
        // simulcast layer on one subscription, no `SetLayers`) or 4 (whole frames on the relay,
        // not RTP packets), whatever secret.
        for (version, secret) in [(2, "new"), (3, "new"), (4, "old"), (4, "foreign")] {
            assert_eq!(
                check_hello(&clusters, &hello(version, secret)),
                Err(RefuseReason::UnsupportedVersion { min: 5, max: 5 }),
                "{version} {secret}"
            );
        }
        assert_eq!(
            check_hello(&clusters, &hello(PROTOCOL_VERSION, "foreign")),
            Err(RefuseReason::WrongCluster)
        );
        assert_eq!(
            check_hello(&[], &hello(PROTOCOL_VERSION, "new")),
            Err(RefuseReason::WrongCluster)
        );
    }

    #[test]
    fn the_dialer_says_which_versions_disagree() {
        let refused = check_answer(
            "b",
            HandshakeMsg::Refuse {
                reason: RefuseReason::UnsupportedVersion { min: 2, max: 2 },
            },
        )
        .expect_err("refused");
        assert_eq!(
            refused.to_string(),
            format!(
                "b refused the link: unsupported protocol version (supported: 2..=2), and this node speaks relay protocol {PROTOCOL_VERSION}: run one release on every node"
            )
        );
        let wrong = check_answer(
            "b",
            HandshakeMsg::Refuse {
                reason: RefuseReason::WrongCluster,
            },
        )
        .expect_err("refused");
        assert_eq!(wrong.to_string(), "b refused the link: wrong cluster");
        let welcome = |id: &str| {
            HandshakeMsg::Welcome(Welcome {
                node_id: id.into(),
                node_tag: 1,
            })
        };
        assert!(check_answer("b", welcome("b")).is_ok());
        assert!(check_answer("b", welcome("c")).is_err());
    }
}
