//! Publications (a track of a session, or relayed from another node) and where their media
//! goes: publishing, unpublishing, subscribing and unsubscribing.

use std::time::Instant;

use str0m::media::{MediaKind, Mid};

use super::packet::cache::{Bounds, PacketCache};
use super::relay_messages::RelayOut;
use super::session::{Location, TrackEntry};
use super::simulcast::{LayerTable, Prefs, Selector};
use super::{Engine, TrackError};
use crate::ids::{DownId, SessionId, UpId};

/// A publication: `(publisher session, track name)`.
pub type TrackKey = (SessionId, String);

/// Where a publication's media comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A mid of the publishing session (the key's session, on this node).
    Session(Mid),
    /// An upstream relay subscription (the publisher is on another node).
    Relay(UpId),
}

/// Where a publication's media goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sink {
    /// A sending mid of a local session.
    Session(SessionId, Mid),
    /// A downstream relay subscription (another node pulls it from here).
    Relay(DownId),
}

/// The codec of a publication, enough for another node to pick its payload type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodecInfo {
    /// The codec (VP8, Opus, ...).
    pub codec: str0m::format::Codec,
    /// RTP clock rate in Hz, the unit of [`RelayFrame::rtp_time`](super::RelayFrame::rtp_time).
    pub clock_rate: u32,
    /// Audio channels, when the codec states them.
    pub channels: Option<u8>,
}

/// What another node needs to know to carry a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackInfo {
    /// Audio or video.
    pub kind: MediaKind,
    /// Its codec.
    pub codec: CodecInfo,
}

pub(crate) struct Publication {
    pub app: std::sync::Arc<str>,
    pub source: Source,
    pub kind: MediaKind,
    pub codec: Option<CodecInfo>,
    pub subscribers: Vec<Sink>,
    /// Since when the publication has had no subscriber (relayed ones are released then).
    pub unused_since: Option<Instant>,
    pub last_media: Instant,
    pub last_keyframe_request: Option<Instant>,
    pub keyframe_pending: bool,
    /// Unique per publication: with the layer, what a subscriber's rewriter follows.
    pub uid: u64,
    /// Of an unlayered publication: its source's epoch, bumped when the publisher's SSRC
    /// changes (a restart), and the SSRC last seen.
    pub epoch: u32,
    pub ssrc: Option<u32>,
    /// Recent packets and the newest keyframe's (the edge keyframe cache: a joining
    /// subscriber gets it at once; it can decode what follows only if no frame started after).
    pub cache: PacketCache<PktHdr>,
    /// Relayed frames were lost: later frames are withheld until a keyframe, so viewers freeze
    /// rather than decode garbage.
    pub await_keyframe: bool,
    /// A relayed publication whose link died, while the relay looks for a new route: it stays
    /// (viewers keep their m-sections) but shows `inactive`.
    pub upstream_lost: bool,
    /// Simulcast layers (empty for an unlayered publication), each with its own keyframe cache
    /// and keyframe-request timing; the fields above then serve unlayered frames only.
    pub layers: LayerTable<LayerCache>,
    /// Of a relayed layered publication: the layers its upstream subscription asks for, and
    /// when that last changed (`relay_layers.rs`).
    pub upstream_layers: super::RelayLayers,
    pub upstream_layers_sent: Option<Instant>,
    /// The layer states last told to downstream nodes (`None`: tell them at the next check),
    /// and when.
    pub announced_layers: Option<Vec<(str0m::media::Rid, bool)>>,
    pub announced_at: Option<Instant>,
}

/// What the packet path keeps per simulcast layer: the same as a publication keeps for its
/// unlayered packets.
pub(crate) struct LayerCache {
    /// The layer's recent packets and newest keyframe (the edge keyframe cache, per layer).
    pub cache: PacketCache<PktHdr>,
    pub last_keyframe_request: Option<Instant>,
    pub keyframe_pending: bool,
    /// Relayed frames were lost: this layer's frames are withheld until its next keyframe.
    pub await_keyframe: bool,
}

impl Default for LayerCache {
    fn default() -> Self {
        LayerCache {
            cache: PacketCache::new(Bounds::default()),
            last_keyframe_request: None,
            keyframe_pending: false,
            await_keyframe: false,
        }
    }
}

/// What a cached packet keeps besides what [`PacketCache`] stores: the publisher's payload
/// parameters (none for a relayed packet) and the header extension values copied to
/// subscribers.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PktHdr {
    /// The RTP timestamp extended to 64 bits (str0m's, or the origin's for a relayed packet),
    /// so a wrap of the 32-bit clock is not read as a jump.
    pub ext_time: u64,
    pub params: Option<str0m::format::PayloadParams>,
    pub audio_level: Option<i8>,
    pub voice_activity: Option<bool>,
    /// The video orientation (RFC 7742 CVO): without it a phone's portrait video plays sideways.
    pub video_orientation: Option<str0m::rtp::VideoOrientation>,
}

/// Numbers publications for [`Publication::uid`].
static NEXT_UID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Publication {
    pub fn new(
        app: &str,
        source: Source,
        kind: MediaKind,
        codec: Option<CodecInfo>,
        now: Instant,
    ) -> Publication {
        Publication {
            app: app.into(),
            source,
            kind,
            codec,
            subscribers: Vec::new(),
            unused_since: Some(now),
            last_media: now,
            last_keyframe_request: None,
            keyframe_pending: false,
            uid: NEXT_UID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            epoch: 0,
            ssrc: None,
            cache: PacketCache::new(Bounds::default()),
            await_keyframe: false,
            upstream_lost: false,
            layers: LayerTable::default(),
            upstream_layers: super::RelayLayers::All,
            upstream_layers_sent: None,
            announced_layers: None,
            announced_at: None,
        }
    }
}

impl Engine {
    /// Registers `mid` of session `sid` as the publication `name`.
    pub(super) fn publish(
        &mut self,
        sid: SessionId,
        mid: Mid,
        name: &str,
        now: Instant,
    ) -> Result<(), TrackError> {
        let s = self
            .sessions
            .get_mut(&sid)
            .ok_or_else(|| TrackError::Internal("session vanished".into()))?;
        let app = s.app.clone();
        let Some(media) = s.rtc.media(mid) else {
            return Err(TrackError::InvalidParams(format!(
                "mid {mid} is not in the session description"
            )));
        };
        let kind = media.kind();
        // A simulcast publisher's SDP names its layers (`a=simulcast:send` and `a=rid`).
        let rids = match media.rids_rx() {
            str0m::media::Rids::Specific(rids) if kind == MediaKind::Video => rids.clone(),
            _ => Vec::new(),
        };
        if !media.direction().is_receiving() {
            return Err(TrackError::InvalidParams(format!(
                "mid {mid} does not send media to the SFU"
            )));
        }
        if s.active_track_named(name).is_some() {
            return Err(TrackError::AlreadyPublished(format!(
                "track {name} is already published"
            )));
        }
        if s.local_by_mid.contains_key(&mid) || s.remote_by_mid.contains_key(&mid) {
            return Err(TrackError::InvalidParams(format!(
                "mid {mid} already carries a track"
            )));
        }
        let entry = TrackEntry {
            location: Location::Local,
            mid,
            track_name: name.to_string(),
            remote: None,
            closed: false,
        };
        if !s.push_track(entry) {
            return Err(TrackError::InvalidParams(
                "too many tracks in this session".to_string(),
            ));
        }
        s.local_by_mid.insert(mid, name.to_string());
        let mut publication = Publication::new(&app, Source::Session(mid), kind, None, now);
        if !rids.is_empty() && publication.layers.declare(&rids) > 0 {
            tracing::info!(session = %sid, track = name, declared = rids.len(),
                "more simulcast layers than supported: the extra ones are dropped");
        }
        self.publications
            .insert((sid, name.to_string()), publication);
        tracing::info!(session = %sid, track = name, %mid, ?kind, "track published");
        Ok(())
    }

    /// Session `sid` receives publication `key` on `mid`; `simulcast` when the pull asked for
    /// a layer (a layered publication's subscriber gets the best layer otherwise).
    pub(super) fn subscribe(
        &mut self,
        sid: SessionId,
        mid: Mid,
        key: TrackKey,
        simulcast: Option<Prefs>,
        now: Instant,
    ) {
        let Some(s) = self.sessions.get_mut(&sid) else {
            return;
        };
        match simulcast {
            Some(prefs) => {
                s.simulcast.insert(mid, Selector::new(prefs));
            }
            None => {
                s.simulcast.remove(&mid);
            }
        }
        if s.active_entry_mut(mid).is_none() {
            s.push_track(TrackEntry {
                location: Location::Remote,
                mid,
                track_name: key.1.clone(),
                remote: Some(key.clone()),
                closed: false,
            });
        }
        s.remote_by_mid.insert(mid, key.clone());
        if let Some(p) = self.publications.get_mut(&key) {
            p.subscribers.push(Sink::Session(sid, mid));
            p.unused_since = None;
        }
        self.await_keyframe(sid, mid, &key, now);
        self.update_upstream_layers(&key, now);
        tracing::info!(session = %sid, %mid, publisher = %key.0, track = %key.1, "track pulled");
    }

    pub(super) fn unsubscribe(&mut self, sid: SessionId, mid: Mid, now: Instant) {
        let Some(key) = self.sessions.get_mut(&sid).and_then(|s| {
            s.simulcast.remove(&mid);
            s.remote_by_mid.remove(&mid)
        }) else {
            return;
        };
        if let Some(p) = self.publications.get_mut(&key) {
            p.subscribers.retain(|k| *k != Sink::Session(sid, mid));
            if p.subscribers.is_empty() {
                p.unused_since = Some(now);
            }
        }
        self.update_upstream_layers(&key, now);
    }

    /// Ends a publication: subscribers stop receiving it and it can no longer be pulled.
    pub(super) fn unpublish(&mut self, key: &TrackKey) {
        let Some(p) = self.publications.remove(key) else {
            return;
        };
        match p.source {
            Source::Session(mid) => {
                if let Some(s) = self.sessions.get_mut(&key.0) {
                    s.local_by_mid.remove(&mid);
                }
            }
            Source::Relay(up) => {
                self.relay_up.remove(&up);
                self.push_relay(RelayOut::Unused { up });
            }
        }
        for sink in p.subscribers {
            match sink {
                Sink::Session(sub, mid) => {
                    if let Some(s) = self.sessions.get_mut(&sub) {
                        s.remote_by_mid.remove(&mid);
                        // Its layer selector would keep a share of the session's bandwidth
                        // estimate (`simulcast_bwe`) for a track that is gone.
                        s.simulcast.remove(&mid);
                        s.awaiting_keyframe.remove(&mid);
                    }
                }
                Sink::Relay(down) => {
                    self.relay_down.remove(&down);
                    self.relay_down_without_keyframe.remove(&down);
                    self.relay_down_seq.remove(&down);
                    self.relay_down_layers.remove(&down);
                    self.push_relay(RelayOut::Ended { down });
                }
            }
        }
    }
}
