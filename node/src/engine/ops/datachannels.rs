//! `datachannels/establish`, `/new`, `/update`, `/close`: the Calls DataChannel operations.
//! Channels are pre-negotiated (`negotiated: true` in the browser) with ids the SFU allocates per
//! session, so no DCEP runs and no renegotiation is needed after `establish`.

use std::time::Instant;

use str0m::channel::{ChannelConfig, Reliability};

use super::{SdpKind, SessionDesc};
use crate::engine::datachannels::{
    AllocError, ChannelEntry, MAX_CHANNEL_NAME_BYTES, MAX_CHANNELS_PER_SESSION, SERVER_EVENTS,
};
use crate::engine::sdp::candidates_in_every_section;
use crate::engine::session::Location;
use crate::engine::{Engine, OpError, TrackError};
use crate::ids::SessionId;

/// One item of `datachannels/new` or `/update`.
#[derive(Debug, Clone, Default)]
pub struct DataChannelItem {
    /// Publish (`local`) or subscribe (`remote`).
    pub location: Option<Location>,
    /// For `remote`: the publishing session.
    pub session_id: Option<String>,
    /// The channel's name (for `remote`: the publisher's channel).
    pub name: Option<String>,
    /// Ordered delivery (default true).
    pub ordered: Option<bool>,
    /// Partial reliability by retransmit count (exclusive with `max_packet_life_time`).
    pub max_retransmits: Option<u16>,
    /// Partial reliability by lifetime in ms (exclusive with `max_retransmits`).
    pub max_packet_life_time: Option<u16>,
    /// `remote` only: swallow the subscriber's first message and forward nothing before it.
    pub wait_for_ack: bool,
    /// `remote` only: this subscriber may send to the publisher.
    pub can_reply: bool,
    /// For `update` and `close`: the channel's id in this session.
    pub id: Option<u16>,
}

/// The outcome of one channel item, as Calls reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataChannelResult {
    /// Echoed location.
    pub location: Option<Location>,
    /// Echoed publishing session (remote).
    pub session_id: Option<String>,
    /// Echoed name.
    pub name: Option<String>,
    /// The id to pass to `createDataChannel({negotiated: true, id})`.
    pub id: Option<u16>,
    /// Why this item failed.
    pub error: Option<TrackError>,
}

/// What `establish` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Established {
    /// The SFU's offer adding the SCTP section, to be answered with `renegotiate`; none when
    /// the session already had one.
    pub offer: Option<SessionDesc>,
}

/// One channel as `GET session` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataChannelStatus {
    /// Published or subscribed.
    pub location: Location,
    /// For a subscription: the publisher.
    pub session_id: Option<String>,
    /// Its name.
    pub name: String,
    /// Its id in this session.
    pub id: u16,
    /// `active`, `inactive` (closed) or `initializing` (SCTP stream not open yet).
    pub status: &'static str,
}

impl Engine {
    /// `datachannels/establish`: adds the SCTP section with the `server-events` channel (id 0)
    /// and offers it; the client answers with `renegotiate`.
    pub fn datachannels_establish(
        &mut self,
        app: &str,
        session_id: &str,
        now: Instant,
    ) -> Result<Established, OpError> {
        let sid = self.lookup(app, session_id)?;
        let s = self
            .sessions
            .get_mut(&sid)
            .ok_or_else(|| OpError::Internal("session vanished".into()))?;
        if s.channels.established {
            return Err(OpError::InvalidParams(
                "datachannels/establish was already called on this session".into(),
            ));
        }
        if s.pending.is_some() {
            return Err(OpError::InvalidSdp(
                "the previous SFU offer has not been answered: call renegotiate first".into(),
            ));
        }
        let mut sdp = s.rtc.sdp_api();
        let chan = sdp.add_channel_with_config(ChannelConfig {
            label: SERVER_EVENTS.into(),
            negotiated: Some(0),
            ..ChannelConfig::default()
        });
        let Some((offer, pending)) = sdp.apply() else {
            return Err(OpError::Internal(
                "str0m made no offer for the channel".into(),
            ));
        };
        s.pending = Some(pending);
        s.state = s.state.on_negotiated();
        s.channels.established = true;
        s.channels.server_events = Some(chan);
        let offer = s.offered(candidates_in_every_section(&offer.to_sdp_string()));
        self.drain(sid, now);
        Ok(Established {
            offer: Some(SessionDesc {
                kind: SdpKind::Offer,
                sdp: offer,
            }),
        })
    }

    /// `datachannels/new`: publishes or subscribes, one result per item in request order.
    pub fn datachannels_new(
        &mut self,
        app: &str,
        session_id: &str,
        items: Vec<DataChannelItem>,
        now: Instant,
    ) -> Result<Vec<DataChannelResult>, OpError> {
        let sid = self.lookup(app, session_id)?;
        if !self.sessions[&sid].channels.established {
            return Err(OpError::InvalidParams(
                "call datachannels/establish before datachannels/new".into(),
            ));
        }
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let mut r = DataChannelResult {
                location: item.location,
                session_id: item.session_id.clone(),
                name: item.name.clone(),
                ..DataChannelResult::default()
            };
            match self.new_channel(app, sid, &item) {
                Ok(id) => r.id = Some(id),
                Err(e) => {
                    r.error = Some(e);
                    // A relay stream opened for this item alone is not kept.
                    if let (Some(Location::Remote), Some(p), Some(name)) = (
                        item.location,
                        item.session_id.as_deref().and_then(SessionId::parse),
                        item.name.as_deref(),
                    ) {
                        self.channel_subscriber_left(p, name);
                    }
                }
            }
            // A grant claimed for an item that then failed is given back.
            if let (true, Some(p), Some(name)) = (
                item.can_reply,
                item.session_id.as_deref().and_then(SessionId::parse),
                item.name.as_deref(),
            ) {
                self.release_unused_reply_grant(p, name);
            }
            out.push(r);
        }
        self.drain(sid, now);
        Ok(out)
    }

    fn new_channel(
        &mut self,
        app: &str,
        sid: SessionId,
        item: &DataChannelItem,
    ) -> Result<u16, TrackError> {
        let name = item
            .name
            .as_deref()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| TrackError::InvalidParams("dataChannelName is required".into()))?;
        if name.len() > MAX_CHANNEL_NAME_BYTES || name == SERVER_EVENTS {
            return Err(TrackError::InvalidParams(format!(
                "dataChannelName must be at most {MAX_CHANNEL_NAME_BYTES} bytes and not {SERVER_EVENTS}"
            )));
        }
        let reliability = match (item.max_retransmits, item.max_packet_life_time) {
            (Some(_), Some(_)) => {
                return Err(TrackError::InvalidParams(
                    "maxRetransmits and maxPacketLifeTime are exclusive".into(),
                ));
            }
            (Some(retransmits), None) => Reliability::MaxRetransmits { retransmits },
            (None, Some(lifetime)) => Reliability::MaxPacketLifetime { lifetime },
            (None, None) => Reliability::Reliable,
        };
        let (location, publisher) = match item.location {
            Some(Location::Local) => {
                if item.wait_for_ack || item.can_reply {
                    return Err(TrackError::InvalidParams(
                        "waitForAck and canReply apply to remote channels only".into(),
                    ));
                }
                if self.sessions[&sid].channels.local_named(name).is_some() {
                    return Err(TrackError::AlreadyPublished(format!(
                        "this session already publishes a channel named {name}"
                    )));
                }
                (Location::Local, None)
            }
            Some(Location::Remote) => {
                // Here, or on another node and already received over the relay (whose
                // publisher checked the app).
                let publisher = item
                    .session_id
                    .as_deref()
                    .and_then(SessionId::parse)
                    .filter(|p| {
                        self.has_relay_channel(*p, name)
                            || self.lookup(app, &p.to_string()).is_ok()
                                && self
                                    .sessions
                                    .get(p)
                                    .is_some_and(|s| s.channels.local_named(name).is_some())
                    })
                    .ok_or(TrackError::NotFound)?;
                if item.can_reply && !self.reply_free(publisher, name, None) {
                    return Err(TrackError::InvalidParams(format!(
                        "another subscriber of {name} may already reply"
                    )));
                }
                (Location::Remote, Some(publisher))
            }
            None => {
                return Err(TrackError::InvalidParams(
                    "location must be \"local\" or \"remote\"".into(),
                ));
            }
        };
        let s = self
            .sessions
            .get_mut(&sid)
            .ok_or_else(|| TrackError::Internal("session vanished".into()))?;
        let id = s.channels.next_id().map_err(|AllocError::TooMany| {
            TrackError::InvalidParams(format!(
                "at most {MAX_CHANNELS_PER_SESSION} DataChannels per session"
            ))
        })?;
        let chan = s.rtc.direct_api().create_data_channel(ChannelConfig {
            label: name.to_string(),
            ordered: item.ordered.unwrap_or(true),
            reliability,
            negotiated: Some(id),
            protocol: String::new(),
        });
        s.channels.push(ChannelEntry {
            id,
            chan,
            name: name.to_string(),
            location,
            publisher,
            can_reply: item.can_reply,
            awaiting_ack: item.wait_for_ack,
            open: false,
            closed: false,
        });
        if let Some(p) = publisher {
            self.dc_subscribers
                .entry((p, name.to_string()))
                .or_default()
                .push((sid, id));
        }
        Ok(id)
    }

    /// The subscriber of `(publisher, name)` on this node that may reply, if any.
    pub(in crate::engine) fn replier(
        &self,
        publisher: SessionId,
        name: &str,
    ) -> Option<(SessionId, u16)> {
        let subs = self.dc_subscribers.get(&(publisher, name.to_string()))?;
        subs.iter().copied().find(|(s, id)| {
            self.sessions
                .get(s)
                .and_then(|s| s.channels.list.iter().find(|e| e.id == *id && !e.closed))
                .is_some_and(|e| e.can_reply)
        })
    }

    /// `datachannels/update`: grants or revokes `canReply` on subscriptions, by id.
    pub fn datachannels_update(
        &mut self,
        app: &str,
        session_id: &str,
        items: Vec<DataChannelItem>,
    ) -> Result<Vec<DataChannelResult>, OpError> {
        let sid = self.lookup(app, session_id)?;
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let mut r = DataChannelResult {
                location: item.location,
                session_id: item.session_id.clone(),
                name: item.name.clone(),
                id: item.id,
                error: None,
            };
            let found = item.id.and_then(|id| {
                let e = self.sessions[&sid]
                    .channels
                    .list
                    .iter()
                    .find(|e| e.id == id && !e.closed && e.location == Location::Remote)?;
                Some((id, e.publisher?, e.name.clone()))
            });
            match found {
                None => {
                    r.error = Some(TrackError::Update(
                        "no open remote DataChannel with this id".into(),
                    ))
                }
                Some((id, publisher, name)) => {
                    if item.can_reply && !self.reply_free(publisher, &name, Some((sid, id))) {
                        r.error = Some(TrackError::Update(format!(
                            "another subscriber of {name} may already reply"
                        )));
                    } else if let Some(e) = self
                        .sessions
                        .get_mut(&sid)
                        .and_then(|s| s.channels.by_id_mut(id))
                    {
                        e.can_reply = item.can_reply;
                    }
                    self.release_unused_reply_grant(publisher, &name);
                }
            }
            out.push(r);
        }
        Ok(out)
    }

    /// The publisher and channel name of session `session_id`'s open subscription `id`, for
    /// the API to claim `canReply` from the publisher's node before an update.
    pub fn channel_subscription(
        &self,
        app: &str,
        session_id: &str,
        id: u16,
    ) -> Option<(SessionId, String)> {
        let sid = self.lookup(app, session_id).ok()?;
        let e = self
            .sessions
            .get(&sid)?
            .channels
            .list
            .iter()
            .find(|e| e.id == id && !e.closed && e.location == Location::Remote)?;
        Some((e.publisher?, e.name.clone()))
    }

    /// `datachannels/close`: closes by id; an id with no open channel is `close_track_error`.
    pub fn datachannels_close(
        &mut self,
        app: &str,
        session_id: &str,
        ids: Vec<u16>,
        now: Instant,
    ) -> Result<Vec<DataChannelResult>, OpError> {
        let sid = self.lookup(app, session_id)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let mut r = DataChannelResult {
                id: Some(id),
                ..DataChannelResult::default()
            };
            let s = self
                .sessions
                .get_mut(&sid)
                .ok_or_else(|| OpError::Internal("session vanished".into()))?;
            match s.channels.by_id_mut(id) {
                Some(e) => {
                    e.closed = true;
                    let chan = e.chan;
                    r.location = Some(e.location);
                    r.name = Some(e.name.clone());
                    r.session_id = e.publisher.map(|p| p.to_string());
                    let key = (e.publisher.unwrap_or(sid), e.name.clone());
                    let local = e.location == Location::Local;
                    s.rtc.direct_api().close_data_channel(chan);
                    self.channel_entry_closed(sid, id, key, local);
                }
                None => {
                    r.error = Some(TrackError::Close("no open DataChannel with this id".into()))
                }
            }
            out.push(r);
        }
        self.drain(sid, now);
        Ok(out)
    }

    /// What a closed channel entry of `sid` (stream `id`, channel `key`) leaves behind goes:
    /// a published channel's subscribers and relay subscriptions, or a subscription's place
    /// among its publisher's subscribers and its reply grant. Closed by `datachannels/close`
    /// or by the client itself.
    fn channel_entry_closed(
        &mut self,
        sid: SessionId,
        id: u16,
        key: (SessionId, String),
        local: bool,
    ) {
        if local {
            // Its subscribers get nothing more; a new channel of that name starts afresh.
            self.end_channel_subscriptions(key.0, &key.1);
            self.channel_unpublished(key.0, &key.1);
        } else {
            if let Some(subs) = self.dc_subscribers.get_mut(&key) {
                subs.retain(|sub| *sub != (sid, id));
            }
            self.channel_subscriber_left(key.0, &key.1);
            self.release_unused_reply_grant(key.0, &key.1);
        }
    }

    /// `publisher`'s channel `name` ended (closed, its session gone, or its relay stream ended):
    /// the subscriptions to it here end too, and their clients see their channels close. Else a
    /// subscriber would keep its `canReply` and write into a later channel of that name, beside
    /// a new replier, and be fed by it without having asked.
    pub(in crate::engine) fn end_channel_subscriptions(
        &mut self,
        publisher: SessionId,
        name: &str,
    ) {
        let subs = self
            .dc_subscribers
            .remove(&(publisher, name.to_string()))
            .unwrap_or_default();
        for (sub, id) in subs {
            let Some(s) = self.sessions.get_mut(&sub) else {
                continue;
            };
            let Some(e) = s.channels.by_id_mut(id) else {
                continue;
            };
            e.closed = true;
            let chan = e.chan;
            s.rtc.direct_api().close_data_channel(chan);
            self.channel_written(sub);
        }
    }

    /// The client closed channel `chan` of `sid` itself (str0m's `ChannelClose`, for an entry
    /// that was open): it is cleaned up as `datachannels/close` would.
    pub(in crate::engine) fn channel_closed_by_client(
        &mut self,
        sid: SessionId,
        chan: str0m::channel::ChannelId,
    ) {
        let Some(e) = self
            .sessions
            .get_mut(&sid)
            .and_then(|s| s.channels.by_chan_mut(chan))
        else {
            return;
        };
        let key = (e.publisher.unwrap_or(sid), e.name.clone());
        let (id, local) = (e.id, e.location == Location::Local);
        self.channel_entry_closed(sid, id, key, local);
    }

    /// The session's channels as `GET session` lists them.
    pub fn session_datachannels(
        &self,
        app: &str,
        session_id: &str,
    ) -> Result<Vec<DataChannelStatus>, OpError> {
        let sid = self.lookup(app, session_id)?;
        let s = &self.sessions[&sid];
        Ok(s.channels
            .list
            .iter()
            .map(|e| DataChannelStatus {
                location: e.location,
                session_id: e.publisher.map(|p| p.to_string()),
                name: e.name.clone(),
                id: e.id,
                status: match (e.closed, e.open) {
                    (true, _) => "inactive",
                    (false, true) => "active",
                    (false, false) => "initializing",
                },
            })
            .collect())
    }
}
