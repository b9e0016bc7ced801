//! `canReply` across the cluster: at most one subscriber per publisher channel may reply,
//! wherever it sits. The publisher's node is the authority. Its own subscribers take the grant
//! directly; another node claims it over the channel's relay stream (`DcFrame::Claim`, sent by
//! the relay layer) and holds it for all its local subscribers, of which its own check lets
//! only one reply. A node gives the grant back when its last `canReply` subscriber of the
//! channel leaves, or by ending the stream.

use super::Engine;
use super::channel_relay::DcLinkId;
use super::relay_messages::RelayOut;
use crate::ids::SessionId;

impl Engine {
    /// Publisher's node: downstream `down` claims (`want`) or gives back (`!want`) the
    /// `canReply` grant of its channel, under claim sequence `seq`. A claim is answered (granted
    /// unless a local subscriber or another node holds it); a release is not.
    pub fn relay_channel_claim(&mut self, down: DcLinkId, seq: u32, want: bool) -> Option<bool> {
        let key = self.dc_down_key.get(&down).cloned();
        let Some(key) = key else {
            return want.then_some(false);
        };
        if !want {
            if self.dc_reply_downs.get(&key) == Some(&(down, seq)) {
                self.dc_reply_downs.remove(&key);
            }
            return None;
        }
        let taken_here = self.replier(key.0, &key.1).is_some();
        let taken_by_other = self
            .dc_reply_downs
            .get(&key)
            .is_some_and(|(d, _)| *d != down);
        if taken_here || taken_by_other {
            return Some(false);
        }
        self.dc_reply_downs.insert(key, (down, seq));
        Some(true)
    }

    /// Publisher's node: whether downstream `down` holds its channel's `canReply` grant.
    pub(super) fn down_may_reply(&self, down: DcLinkId) -> bool {
        self.dc_down_key
            .get(&down)
            .and_then(|key| self.dc_reply_downs.get(key))
            .is_some_and(|(d, _)| *d == down)
    }

    /// Whether a subscriber of `publisher`'s channel `name` on this node may be given
    /// `canReply`: no other subscriber here has it, no other node holds the grant (when the
    /// publisher is here), and this node holds the grant (when the publisher is elsewhere).
    /// `except` is a subscription that may keep it (an update of the holder itself).
    pub(super) fn reply_free(
        &self,
        publisher: SessionId,
        name: &str,
        except: Option<(SessionId, u16)>,
    ) -> bool {
        let key = (publisher, name.to_string());
        let local = self
            .replier(publisher, name)
            .is_some_and(|holder| Some(holder) != except);
        if local || self.dc_reply_downs.contains_key(&key) {
            return false;
        }
        match self.dc_relay_ups.get(&key) {
            Some(up) => self.dc_up_grants.contains_key(up),
            None => true,
        }
    }

    /// Subscriber's node: the upstream of `publisher`'s channel `name`, and whether this node
    /// holds its `canReply` grant; `None` when it is not received here over the relay.
    pub fn channel_reply_grant(
        &self,
        publisher: SessionId,
        name: &str,
    ) -> Option<(DcLinkId, bool)> {
        let up = *self.dc_relay_ups.get(&(publisher, name.to_string()))?;
        Some((up, self.dc_up_grants.contains_key(&up)))
    }

    /// Subscriber's node: the publisher's node granted claim `seq` on upstream `up`. False
    /// when the upstream has ended meanwhile (the grant went with its stream).
    pub fn set_channel_reply_grant(&mut self, up: DcLinkId, seq: u32) -> bool {
        if !self.dc_up_key.contains_key(&up) {
            return false;
        }
        self.dc_up_grants.insert(up, seq);
        true
    }

    /// Subscriber's node: gives back the grant of `publisher`'s channel `name` if no local
    /// `canReply` subscriber uses it (its holder closed, was revoked, or the claim's item
    /// failed). Only the channel an operation touched is looked at, so a grant claimed for a
    /// call still in flight is not taken by another's.
    pub(super) fn release_unused_reply_grant(&mut self, publisher: SessionId, name: &str) {
        let Some(up) = self
            .dc_relay_ups
            .get(&(publisher, name.to_string()))
            .copied()
        else {
            return;
        };
        if self.replier(publisher, name).is_some() {
            return;
        }
        if let Some(seq) = self.dc_up_grants.remove(&up) {
            self.push_channel_out(RelayOut::ChannelReleaseReply { up, seq });
        }
    }
}
