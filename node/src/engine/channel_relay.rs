//! DataChannels across nodes, the engine's side: channels of this node's publishers sent to
//! relay downstreams, channels of other nodes' publishers received from relay upstreams. The
//! relay layer (`crate::cluster::relay::channels`) carries each on its own QUIC stream; ids are
//! the relay's.

use super::Engine;
use super::relay_messages::RelayOut;
use super::{MAX_RELAY_QUEUE, OpError};
use crate::ids::SessionId;

/// A relay DataChannel subscription id, allocated by the relay layer.
pub type DcLinkId = u64;

impl Engine {
    /// Another node subscribes to `publisher`'s channel `name` as `down`: refused unless the
    /// session is this app's, here, and publishes that channel.
    pub fn relay_channel_subscribe(
        &mut self,
        app: &str,
        publisher: SessionId,
        name: &str,
        down: DcLinkId,
    ) -> Result<(), OpError> {
        let found = self
            .sessions
            .get(&publisher)
            .filter(|s| s.app == app)
            .is_some_and(|s| s.channels.local_named(name).is_some());
        if !found {
            return Err(OpError::NotFound(format!("no DataChannel {name} here")));
        }
        self.dc_relay_downs
            .entry((publisher, name.to_string()))
            .or_default()
            .push(down);
        self.dc_down_key.insert(down, (publisher, name.to_string()));
        Ok(())
    }

    /// A downstream channel subscription ended (its stream or link is gone).
    pub fn relay_channel_unsubscribe(&mut self, down: DcLinkId) {
        if let Some(key) = self.dc_down_key.get(&down)
            && self
                .dc_reply_downs
                .get(key)
                .is_some_and(|(d, _)| *d == down)
        {
            self.dc_reply_downs.remove(key);
        }
        if let Some(key) = self.dc_down_key.remove(&down)
            && let Some(v) = self.dc_relay_downs.get_mut(&key)
        {
            v.retain(|d| *d != down);
            if v.is_empty() {
                self.dc_relay_downs.remove(&key);
            }
        }
    }

    /// This node now receives `publisher`'s channel `name` over the relay as `up`.
    pub fn add_relay_channel(&mut self, publisher: SessionId, name: &str, up: DcLinkId) {
        self.dc_relay_ups.insert((publisher, name.to_string()), up);
        self.dc_up_key.insert(up, (publisher, name.to_string()));
    }

    /// Whether `publisher`'s channel `name` is already received over the relay.
    pub fn has_relay_channel(&self, publisher: SessionId, name: &str) -> bool {
        self.dc_relay_ups
            .contains_key(&(publisher, name.to_string()))
    }

    /// The upstream `up` ended: its local subscribers get nothing more, and their channels
    /// close.
    pub fn end_relay_channel(&mut self, up: DcLinkId) {
        self.dc_up_grants.remove(&up);
        if let Some(key) = self.dc_up_key.remove(&up) {
            self.dc_relay_ups.remove(&key);
            self.end_channel_subscriptions(key.0, &key.1);
        }
    }

    /// A message of upstream `up`: to every local subscriber of that channel. The sessions
    /// written to are drained by the next [`Engine::handle_timeout`] (the shell calls it after
    /// every batch of input), so a batch of messages shares SCTP packets.
    pub fn relay_channel_message(&mut self, up: DcLinkId, binary: bool, data: &[u8]) {
        self.stats.channels.relay_in += 1;
        let Some((publisher, name)) = self.dc_up_key.get(&up).cloned() else {
            return;
        };
        self.publish_message(publisher, &name, binary, data);
    }

    /// A reply that came back on downstream `down` (a `canReply` subscriber on another node):
    /// to the publisher.
    pub fn relay_channel_reply(&mut self, down: DcLinkId, binary: bool, data: &[u8]) {
        self.stats.channels.relay_in += 1;
        let Some((publisher, name)) = self.dc_down_key.get(&down).cloned() else {
            return;
        };
        // Only the node holding the grant may reply (see `channel_reply.rs`).
        if !self.down_may_reply(down) {
            self.stats.channels.dropped_no_reply += 1;
            return;
        }
        let Some(id) = self
            .sessions
            .get(&publisher)
            .and_then(|s| s.channels.local_named(&name))
            .map(|e| e.id)
        else {
            self.stats.channels.dropped_not_open += 1;
            return;
        };
        self.write_channel(publisher, id, binary, data);
        self.channel_written(publisher);
    }

    /// Queues a relay output of a DataChannel, or counts it dropped past the queue's bound.
    pub(super) fn push_channel_out(&mut self, out: RelayOut) {
        if self.relay_out.len() < MAX_RELAY_QUEUE {
            self.stats.channels.relay_out += 1;
            self.relay_out.push_back(out);
        } else {
            self.stats.channels.dropped_relay_queue += 1;
        }
    }
}

impl Engine {
    /// `publisher`'s channel `name` is gone (closed, or its session): its downstreams end.
    pub(super) fn channel_unpublished(&mut self, publisher: SessionId, name: &str) {
        let key = (publisher, name.to_string());
        self.dc_reply_downs.remove(&key);
        for down in self.dc_relay_downs.remove(&key).unwrap_or_default() {
            self.dc_down_key.remove(&down);
            self.push_channel_out(RelayOut::ChannelEnded { down });
        }
    }

    /// A local subscriber of `publisher`'s channel `name` left: a relayed channel nobody here
    /// subscribes to any more is released.
    pub(super) fn channel_subscriber_left(&mut self, publisher: SessionId, name: &str) {
        let key = (publisher, name.to_string());
        if self.dc_subscribers.get(&key).is_some_and(|v| !v.is_empty()) {
            return;
        }
        self.dc_subscribers.remove(&key);
        if let Some(up) = self.dc_relay_ups.remove(&key) {
            self.dc_up_key.remove(&up);
            // Ending the stream gives the grant back.
            self.dc_up_grants.remove(&up);
            self.push_channel_out(RelayOut::ChannelUnused { up });
        }
    }
}
