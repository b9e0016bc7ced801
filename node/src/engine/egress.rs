//! Audio egress, the engine's side (no I/O): sessions marked with [`EgressLabels`] have every
//! Opus payload they publish copied, as an [`EgressPacket`], into a bounded queue that the shell
//! drains (`runtime.rs`) and hands to the NATS publisher (`crate::egress`).
//!
//! Only the packet path of a *local* publisher feeds it (`fanout.rs`, `forward_media`): a track
//! relayed in from another node arrives through `relay_frame` and never reaches it, so exactly
//! one node, the one holding the publisher's session, publishes each packet.
//!
//! Subjects are `{prefix}.{app}.{room}.{user}`. Each label becomes one NATS token: `.`, `*`, `>`,
//! whitespace, control and non-ASCII characters become `_`, and an empty label becomes `_`, so
//! a label can neither add tokens nor act as a wildcard. Two labels that differ only in such
//! characters share a subject; the exact user and client travel in the headers (control
//! characters there become `_` too, since a header line cannot carry them).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use str0m::format::Codec;

use super::Engine;
use crate::ids::SessionId;

/// Packets queued between two flushes by the shell; beyond this they are dropped and counted.
/// The shell flushes after every batch of at most 64 datagrams, so this is never reached unless
/// the shell stops flushing.
pub const MAX_EGRESS_QUEUE: usize = 1024;
/// Longest label (app, room, user, client) in bytes.
pub const MAX_LABEL_BYTES: usize = 128;

/// What names a session's audio on the bus: the subject's tokens and two headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressLabels {
    /// The app the session belongs to (the subject's first token after the prefix).
    pub app: String,
    /// The room (second token).
    pub room: String,
    /// The user (third token, and the user header).
    pub user: String,
    /// The client of that user (header only: one user may join from several clients).
    pub client: String,
}

/// One Opus payload for the bus: one RTP payload of the publisher's, unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPacket {
    /// `{prefix}.{app}.{room}.{user}`, sanitised.
    pub subject: Arc<str>,
    /// The Opus payload (no RTP header).
    pub payload: Bytes,
    /// Wall-clock time (Unix ms) at which the node received the packet: str0m's `network_time`
    /// of the frame, put on the wall clock by the anchor the shell gave [`Engine::enable_egress`].
    pub capture_ms: u64,
    /// The RTP sequence number, extended to 64 bits by str0m (`RtpPacket::seq_no`).
    pub seq: u64,
    /// The exact user label (control characters replaced).
    pub user: Arc<str>,
    /// The exact client label (control characters replaced).
    pub client: Arc<str>,
    /// The codec's name, `opus`.
    pub codec: &'static str,
}

/// What a marked session carries, prepared once at [`Engine::set_egress`].
#[derive(Debug)]
pub struct SessionEgress {
    pub(super) subject: Arc<str>,
    pub(super) user: Arc<str>,
    pub(super) client: Arc<str>,
}

impl SessionEgress {
    /// Subject and header values for `labels` under `prefix`.
    pub(super) fn new(prefix: &str, labels: &EgressLabels) -> SessionEgress {
        SessionEgress {
            subject: subject(prefix, labels).into(),
            user: header_value(&labels.user),
            client: header_value(&labels.client),
        }
    }
}

/// The engine's egress state: off until the shell enables it (`--nats`).
#[derive(Debug, Default)]
pub(super) struct Egress {
    pub(super) enabled: Option<Enabled>,
    queue: VecDeque<EgressPacket>,
}

#[derive(Debug)]
pub(super) struct Enabled {
    pub(super) prefix: String,
    /// An instant and the Unix ms it was, for turning `network_time` into wall-clock time.
    anchor: (Instant, u64),
}

/// A NATS subject token made of `label` (see the module doc).
pub fn subject_token(label: &str) -> String {
    if label.is_empty() {
        return "_".to_string();
    }
    label
        .chars()
        .map(|c| match c {
            '.' | '*' | '>' => '_',
            c if c.is_ascii_graphic() => c,
            _ => '_',
        })
        .collect()
}

/// `label` fit for a header value: control characters (CR, LF above all) become `_`.
fn header_value(label: &str) -> Arc<str> {
    label
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect::<String>()
        .into()
}

/// The subject of a session's audio.
pub fn subject(prefix: &str, labels: &EgressLabels) -> String {
    format!(
        "{prefix}.{}.{}.{}",
        subject_token(&labels.app),
        subject_token(&labels.room),
        subject_token(&labels.user)
    )
}

impl Engine {
    /// Turns egress on: `prefix` starts every subject; `anchor` is an instant and the Unix time
    /// in ms it was (the engine reads no clock). Without this, [`Engine::set_egress`] refuses.
    pub fn enable_egress(&mut self, prefix: &str, anchor: (Instant, u64)) {
        self.egress.enabled = Some(Enabled {
            prefix: prefix.to_string(),
            anchor,
        });
    }

    /// The next packet for the bus, for the shell to hand to the publisher.
    pub fn poll_egress(&mut self) -> Option<EgressPacket> {
        self.egress.queue.pop_front()
    }

    /// The shell could not hand a packet to the publisher (its queue full).
    pub fn count_egress_drop(&mut self) {
        self.stats.egress_dropped += 1;
    }

    /// A packet from a local publisher: queued for the bus when its session is marked and the
    /// packet is Opus (its payload is one Opus frame).
    pub(super) fn egress_packet(
        &mut self,
        publisher: SessionId,
        codec: Codec,
        payload: &Arc<[u8]>,
        seq: u64,
        arrival: Instant,
    ) {
        let Some(enabled) = &self.egress.enabled else {
            return;
        };
        let Some(target) = self
            .sessions
            .get(&publisher)
            .and_then(|s| s.egress.as_ref())
        else {
            return;
        };
        if codec != Codec::Opus {
            return;
        }
        if self.egress.queue.len() >= MAX_EGRESS_QUEUE {
            self.stats.egress_dropped += 1;
            return;
        }
        let (at, unix_ms) = enabled.anchor;
        let capture_ms = if arrival >= at {
            unix_ms.saturating_add(millis(arrival - at))
        } else {
            unix_ms.saturating_sub(millis(at - arrival))
        };
        self.stats.egress_queued += 1;
        self.egress.queue.push_back(EgressPacket {
            subject: target.subject.clone(),
            // Shares the packet's buffer: no copy.
            payload: Bytes::from_owner(payload.clone()),
            capture_ms,
            seq,
            user: target.user.clone(),
            client: target.client.clone(),
            codec: "opus",
        });
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_become_single_tokens_without_wildcards() {
        assert_eq!(subject_token("a.b"), "a_b");
        assert_eq!(subject_token("*"), "_");
        assert_eq!(subject_token(">x"), "_x");
        assert_eq!(subject_token("two words\t"), "two_words_");
        assert_eq!(subject_token("é"), "_");
        assert_eq!(subject_token(""), "_");
        assert_eq!(subject_token("alice@example-1"), "alice@example-1");
        let labels = EgressLabels {
            app: "app".into(),
            room: "room.1".into(),
            user: "bob *".into(),
            client: "c".into(),
        };
        assert_eq!(
            subject("trackmesh.audio", &labels),
            "trackmesh.audio.app.room_1.bob__"
        );
    }

    #[test]
    fn header_values_lose_line_breaks() {
        assert_eq!(&*header_value("a\r\nb"), "a__b");
        assert_eq!(&*header_value("Zoë 1"), "Zoë 1");
    }
}
