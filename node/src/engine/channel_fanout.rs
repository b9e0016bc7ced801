//! DataChannel messages: a publisher's message to every subscriber of that channel, a
//! `canReply` subscriber's message back to the publisher, the `waitForAck` gate. Every drop is
//! counted, by reason, never queued.

use std::time::Instant;

use str0m::channel::ChannelData;

use super::Engine;
use super::datachannels::{MAX_BUFFERED_BYTES, MAX_MESSAGE_BYTES};
use super::session::Location;
use crate::ids::SessionId;

/// DataChannel counters, read by the metrics.
#[derive(Debug, Default, Clone)]
pub struct ChannelStats {
    /// Messages received from clients on their channels.
    pub messages_in: u64,
    /// Messages written to clients' channels.
    pub messages_out: u64,
    /// Messages larger than [`MAX_MESSAGE_BYTES`].
    pub dropped_too_big: u64,
    /// Messages not written because the channel's send buffer held [`MAX_BUFFERED_BYTES`].
    pub dropped_buffer_full: u64,
    /// Messages str0m refused because the session's SCTP send buffer (all its channels,
    /// [`super::datachannels::SESSION_SCTP_BUFFER`]) was full.
    pub dropped_session_buffer_full: u64,
    /// Messages for a channel not open (yet or any more).
    pub dropped_not_open: u64,
    /// Messages to a `waitForAck` subscriber before its first message.
    pub dropped_unacked: u64,
    /// Messages from a subscriber that may not reply.
    pub dropped_no_reply: u64,
    /// Messages handed to the relay for other nodes.
    pub relay_out: u64,
    /// Messages received from other nodes.
    pub relay_in: u64,
    /// Messages for other nodes dropped because the relay queue was full.
    pub dropped_relay_queue: u64,
}

impl Engine {
    /// One message from session `sid`'s client.
    pub(super) fn channel_message(&mut self, sid: SessionId, msg: ChannelData) {
        self.stats.channels.messages_in += 1;
        if msg.data.len() > MAX_MESSAGE_BYTES {
            self.stats.channels.dropped_too_big += 1;
            return;
        }
        let Some(e) = self
            .sessions
            .get_mut(&sid)
            .and_then(|s| s.channels.by_chan_mut(msg.id))
        else {
            // server-events, or a channel the SFU does not know: nothing to forward to.
            return;
        };
        if e.closed {
            return;
        }
        match e.location {
            Location::Local => {
                let name = e.name.clone();
                self.publish_message(sid, &name, msg.binary, &msg.data);
            }
            Location::Remote => {
                if e.awaiting_ack {
                    // The subscriber's first message opens the gate and is not forwarded.
                    e.awaiting_ack = false;
                    return;
                }
                let (can_reply, publisher, name) = (e.can_reply, e.publisher, e.name.clone());
                let target = publisher.filter(|_| can_reply).and_then(|p| {
                    let id = self.sessions.get(&p)?.channels.local_named(&name)?.id;
                    Some((p, id))
                });
                let up = publisher
                    .filter(|_| can_reply && target.is_none())
                    .and_then(|p| self.dc_relay_ups.get(&(p, name.clone())).copied());
                match (target, up) {
                    (Some((p, id)), _) => {
                        self.write_channel(p, id, msg.binary, &msg.data);
                        self.channel_written(p);
                    }
                    (None, Some(up)) => self.push_channel_out(super::RelayOut::ChannelReply {
                        up,
                        binary: msg.binary,
                        data: msg.data.into(),
                    }),
                    (None, None) => self.stats.channels.dropped_no_reply += 1,
                }
            }
        }
    }

    /// A message on publisher `publisher`'s channel `name` to every local subscriber.
    pub(super) fn publish_message(
        &mut self,
        publisher: SessionId,
        name: &str,
        binary: bool,
        data: &[u8],
    ) {
        let key = (publisher, name.to_string());
        if let Some(downs) = self.dc_relay_downs.get(&key).cloned() {
            let data: std::sync::Arc<[u8]> = data.into();
            for down in downs {
                self.push_channel_out(super::RelayOut::ChannelMessage {
                    down,
                    binary,
                    data: data.clone(),
                });
            }
        }
        let Some(subs) = self.dc_subscribers.get(&key) else {
            return;
        };
        for (sub, id) in subs.clone() {
            self.write_channel(sub, id, binary, data);
            self.channel_written(sub);
        }
    }

    /// Session `sid` had a message written: it is drained once the current batch of input is
    /// handled ([`Engine::drain_written_channels`]), so messages that arrived together leave
    /// together, several to an SCTP packet, instead of one packet (and one DTLS record and one
    /// datagram) per message — which made a subscriber's path slower than its publisher's.
    pub(super) fn channel_written(&mut self, sid: SessionId) {
        // A set: a message to N subscribers marks N sessions, so a list's lookups cost N².
        self.dc_written.insert(sid);
    }

    /// Drains the sessions [`Engine::channel_written`] marked. Returns whether there were any.
    pub(super) fn drain_written_channels(&mut self, now: Instant) -> bool {
        if self.dc_written.is_empty() {
            return false;
        }
        for sid in std::mem::take(&mut self.dc_written) {
            self.drain(sid, now);
        }
        true
    }

    /// Writes one message into session `sid`'s channel `id`, or counts why not.
    pub(super) fn write_channel(&mut self, sid: SessionId, id: u16, binary: bool, data: &[u8]) {
        let st = &mut self.stats.channels;
        let Some(s) = self.sessions.get_mut(&sid) else {
            st.dropped_not_open += 1;
            return;
        };
        let Some(e) = s.channels.by_id_mut(id) else {
            st.dropped_not_open += 1;
            return;
        };
        if e.awaiting_ack {
            st.dropped_unacked += 1;
            return;
        }
        let chan = e.chan;
        let Some(mut ch) = s.rtc.channel(chan) else {
            st.dropped_not_open += 1;
            return;
        };
        if ch.buffered_amount() + data.len() > MAX_BUFFERED_BYTES {
            st.dropped_buffer_full += 1;
            return;
        }
        match ch.write(binary, data) {
            Ok(true) => st.messages_out += 1,
            Ok(false) => st.dropped_session_buffer_full += 1,
            Err(err) => {
                tracing::debug!(session = %sid, error = %err, "DataChannel write failed");
                st.dropped_not_open += 1;
            }
        }
    }
}
