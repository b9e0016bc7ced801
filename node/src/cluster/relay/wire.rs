//! Reading and writing relay-proto frames on QUIC streams, and converting track descriptions
//! between the engine and the wire.

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::mpsc;
use trackmesh_relay_proto::codec::{self, FrameDecoder, Message};
use trackmesh_relay_proto::control::{self, CodecParams, ControlMsg};

use crate::engine::{CodecInfo, TrackInfo};

/// Control messages waiting to be written on one stream; a peer that stops reading loses its link.
pub const CONTROL_QUEUE: usize = 1024;
const READ_CHUNK: usize = 16 * 1024;

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

/// Calls `on_msg` for every control message until the stream ends or carries garbage.
pub async fn read_control(
    mut recv: quinn::RecvStream,
    mut dec: FrameDecoder<ControlMsg>,
    mut on_msg: impl FnMut(ControlMsg),
) -> anyhow::Result<()> {
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        while let Some(msg) = dec.next() {
            on_msg(msg.context("decoding a control message")?);
        }
        let Some(n) = recv.read(&mut buf).await.context("reading control")? else {
            return Ok(());
        };
        for msg in dec.feed(&buf[..n]) {
            on_msg(msg.context("decoding a control message")?);
        }
    }
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
