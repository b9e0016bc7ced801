//! DataChannels as Calls defines them: per-session channel ids, the channels a session publishes
//! (`local`) or subscribes to (`remote`), and the bounds on them. No I/O: the engine writes into
//! str0m channels (`channel_fanout.rs`) and the ops (`ops/datachannels.rs`) change this state.

use std::collections::HashMap;

use str0m::channel::ChannelId;

use super::session::Location;
use crate::ids::SessionId;

/// The reserved channel `datachannels/establish` opens; its id is always 0.
pub const SERVER_EVENTS: &str = "server-events";
/// Largest message forwarded, in bytes; larger ones are dropped and counted. 64 KiB is what
/// browsers promise to send in one message (`maxMessageSize` in their SDP is at least that).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Most bytes waiting in one channel's SCTP send buffer; a message that would exceed it is
/// dropped and counted (a slow subscriber must not hold memory for everyone).
pub const MAX_BUFFERED_BYTES: usize = 1024 * 1024;
/// str0m's SCTP send buffer per session, across all its channels (str0m's default is 128 KiB,
/// which made every channel drop well before [`MAX_BUFFERED_BYTES`]). Twice the per-channel
/// bound, so one full channel leaves room for the session's others. It is a cap, not an
/// allocation: only written, unacknowledged data takes memory.
pub const SESSION_SCTP_BUFFER: usize = 2 * MAX_BUFFERED_BYTES;
/// Most channels (active and closed) one session may create; then `datachannels/new` refuses.
/// Ids are never reused within a session (str0m refuses a second channel on a stream id), so
/// this also bounds the ids: 1..=MAX_CHANNELS_PER_SESSION.
pub const MAX_CHANNELS_PER_SESSION: usize = 256;
/// Longest channel name accepted, in bytes.
pub const MAX_CHANNEL_NAME_BYTES: usize = 256;

/// One channel of a session.
#[derive(Debug, Clone)]
pub struct ChannelEntry {
    /// The SCTP stream id, as the client passes it to `createDataChannel({negotiated, id})`.
    pub id: u16,
    /// str0m's handle for it.
    pub chan: ChannelId,
    /// The channel's name (for a subscription: the publisher's channel name).
    pub name: String,
    /// Published by this session or subscribed to.
    pub location: Location,
    /// For a subscription: the publishing session.
    pub publisher: Option<SessionId>,
    /// A subscriber that may send messages back to the publisher.
    pub can_reply: bool,
    /// `waitForAck`: nothing is forwarded to this subscriber until its first message, which
    /// is swallowed.
    pub awaiting_ack: bool,
    /// str0m reported the channel open.
    pub open: bool,
    /// Closed by the client.
    pub closed: bool,
}

/// Why a channel could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocError {
    /// The session has made [`MAX_CHANNELS_PER_SESSION`] channels.
    TooMany,
}

/// A session's channels and its id allocator.
#[derive(Debug, Default)]
pub struct SessionChannels {
    /// `datachannels/establish` was called: the SCTP association is (being) set up.
    pub established: bool,
    /// The `server-events` channel, once established.
    pub server_events: Option<ChannelId>,
    /// Every channel made, in order (closed ones stay listed as inactive).
    pub list: Vec<ChannelEntry>,
    by_chan: HashMap<ChannelId, usize>,
}

impl SessionChannels {
    /// The next free id: ids start at 1 (0 is `server-events`) and are never reused.
    pub fn next_id(&self) -> Result<u16, AllocError> {
        if self.list.len() >= MAX_CHANNELS_PER_SESSION {
            return Err(AllocError::TooMany);
        }
        u16::try_from(self.list.len() + 1).map_err(|_| AllocError::TooMany)
    }

    /// Records a channel made with the id [`SessionChannels::next_id`] gave.
    pub fn push(&mut self, entry: ChannelEntry) {
        self.by_chan.insert(entry.chan, self.list.len());
        self.list.push(entry);
    }

    /// The entry str0m knows as `chan`.
    pub fn by_chan_mut(&mut self, chan: ChannelId) -> Option<&mut ChannelEntry> {
        let i = *self.by_chan.get(&chan)?;
        self.list.get_mut(i)
    }

    /// The open (not closed) entry with this id.
    pub fn by_id_mut(&mut self, id: u16) -> Option<&mut ChannelEntry> {
        self.list.iter_mut().find(|e| e.id == id && !e.closed)
    }

    /// The active channel this session publishes under `name`.
    pub fn local_named(&self, name: &str) -> Option<&ChannelEntry> {
        self.list
            .iter()
            .find(|e| e.location == Location::Local && !e.closed && e.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u16, n: usize) -> ChannelEntry {
        // ChannelIds are only made by str0m; take them from a throwaway Rtc.
        let mut rtc = str0m::Rtc::new(std::time::Instant::now());
        let mut chan = None;
        for _ in 0..=n {
            chan = Some(rtc.direct_api().create_data_channel(Default::default()));
        }
        ChannelEntry {
            id,
            chan: chan.expect("a channel id"),
            name: format!("c{id}"),
            location: Location::Local,
            publisher: None,
            can_reply: false,
            awaiting_ack: false,
            open: false,
            closed: false,
        }
    }

    #[test]
    fn ids_start_at_one_are_never_reused_and_are_bounded() {
        let mut c = SessionChannels::default();
        assert_eq!(c.next_id(), Ok(1), "0 is server-events");
        let e = entry(1, 0);
        c.push(e);
        assert_eq!(c.next_id(), Ok(2));
        c.by_id_mut(1).expect("open").closed = true;
        assert!(c.by_id_mut(1).is_none(), "a closed id is not found");
        assert_eq!(c.next_id(), Ok(2), "a closed id is not handed out again");
        assert!(c.local_named("c1").is_none());
    }

    #[test]
    fn a_session_cannot_make_more_than_the_bound() {
        let mut c = SessionChannels::default();
        let template = entry(0, 0);
        for _ in 0..MAX_CHANNELS_PER_SESSION {
            let id = c.next_id().expect("under the bound");
            let mut e = template.clone();
            e.id = id;
            c.list.push(e);
        }
        assert_eq!(c.next_id(), Err(AllocError::TooMany));
        assert_eq!(
            c.list.last().map(|e| e.id),
            Some(MAX_CHANNELS_PER_SESSION as u16)
        );
    }
}
