//! Frame-level fan-out: a publication's frames (from a local publisher's depacketizer or from a
//! relay link) are written into every local subscriber's `Rtc`, which packetizes, encrypts and
//! handles NACK/RTX per subscriber, and queued for every downstream relay subscription.
//! Keyframe requests flow the other way, rate-limited per publication.

use std::sync::Arc;
use std::time::Instant;

use str0m::Input;
use str0m::format::{Codec, PayloadParams};
use str0m::media::Frequency;
use str0m::media::{KeyframeRequestKind, MediaData, MediaKind, MediaTime, Mid};

use super::publications::{CachedKeyframe, CodecInfo, Sink, Source, TrackKey};
use super::relay_messages::{RelayFrame, RelayOut};
use super::session::SessionState;
use super::{
    Engine, KEYFRAME_INTERVAL, KEYFRAME_WAIT_MAX, MAX_CACHED_KEYFRAME, SUBSCRIBER_SILENT_AFTER,
};
use crate::ids::{SessionId, UpId};

/// One frame on its way to the subscribers of a publication.
pub(super) struct Frame {
    pub time: MediaTime,
    pub network_time: Instant,
    pub keyframe: bool,
    pub data: Arc<[u8]>,
    /// The publisher's payload parameters, when the frame comes from a local session.
    pub params: Option<PayloadParams>,
}

pub(super) fn codec_of(params: &PayloadParams) -> CodecInfo {
    let spec = params.spec();
    CodecInfo {
        codec: spec.codec,
        clock_rate: spec.clock_rate.get(),
        channels: spec.channels,
    }
}

impl Engine {
    pub(super) fn forward_media(&mut self, publisher: SessionId, data: MediaData, now: Instant) {
        self.stats.frames_in += 1;
        self.media_flowing(publisher, now);
        let Some(name) = self
            .sessions
            .get(&publisher)
            .and_then(|s| s.local_by_mid.get(&data.mid))
        else {
            return;
        };
        let key = (publisher, name.clone());
        // Simulcast layers are not selected yet: forward only unlayered media.
        if data.rid.is_some() {
            return;
        }
        // Only here, on the publisher's own node: relayed frames never reach this path.
        self.egress_frame(publisher, &data);
        if let Some(p) = self.publications.get_mut(&key)
            && p.codec.is_none()
        {
            p.codec = Some(codec_of(&data.params));
        }
        let frame = Frame {
            keyframe: data.is_keyframe(),
            time: data.time,
            network_time: data.network_time,
            data: data.data,
            params: Some(data.params),
        };
        self.fan_out(&key, frame, now);
    }

    /// A frame from an upstream relay subscription.
    pub fn relay_frame(&mut self, up: UpId, frame: RelayFrame, now: Instant) {
        self.stats.relay_frames_in += 1;
        let Some(key) = self.relay_up.get(&up).cloned() else {
            return;
        };
        if let Some(p) = self.publications.get_mut(&key)
            && p.await_keyframe
        {
            if !frame.keyframe {
                self.stats.relay_gap_withheld += 1;
                return;
            }
            p.await_keyframe = false;
        }
        let Some(clock) = self
            .publications
            .get(&key)
            .and_then(|p| p.codec)
            .and_then(|c| Frequency::new(c.clock_rate))
        else {
            return;
        };
        let frame = Frame {
            time: MediaTime::new(frame.rtp_time, clock),
            network_time: now,
            keyframe: frame.keyframe,
            data: frame.data,
            params: None,
        };
        self.fan_out(&key, frame, now);
        self.process_work(now);
    }

    fn fan_out(&mut self, key: &TrackKey, frame: Frame, now: Instant) {
        let Some(p) = self.publications.get_mut(key) else {
            return;
        };
        p.last_media = now;
        let codec = p.codec;
        if frame.keyframe && frame.data.len() <= MAX_CACHED_KEYFRAME {
            p.last_keyframe = Some(CachedKeyframe {
                time: frame.time,
                data: frame.data.clone(),
                params: frame.params,
            });
            p.frames_since_keyframe = 0;
        } else {
            p.frames_since_keyframe = p.frames_since_keyframe.saturating_add(1);
        }
        // Taken rather than cloned (no allocation per frame); nothing below touches the
        // publication's subscriber list, and it is put back before returning.
        let sinks = std::mem::take(&mut p.subscribers);
        for sink in &sinks {
            match *sink {
                Sink::Session(sub, mid) => self.write_to_session(sub, mid, &frame, codec, now),
                Sink::Relay(down) => {
                    self.stats.relay_frames_out += 1;
                    if frame.keyframe && !self.relay_down_without_keyframe.is_empty() {
                        self.relay_down_without_keyframe.remove(&down);
                    }
                    let out = RelayFrame {
                        rtp_time: frame.time.numer(),
                        keyframe: frame.keyframe,
                        data: frame.data.clone(),
                    };
                    self.push_relay(RelayOut::Frame { down, frame: out });
                }
            }
        }
        if let Some(p) = self.publications.get_mut(key) {
            p.subscribers = sinks;
        }
    }

    fn write_to_session(
        &mut self,
        sub: SessionId,
        mid: Mid,
        frame: &Frame,
        codec: Option<CodecInfo>,
        now: Instant,
    ) {
        let Some(s) = self.sessions.get_mut(&sub) else {
            return;
        };
        // A live client is heard from every few seconds (RTCP, ICE consent checks). One that has
        // been silent this long is gone or cut off: stop spending CPU and bandwidth on it until
        // it is heard from again; the reconnect grace still closes it if it never is.
        if s.last_recv
            .is_some_and(|t| now.saturating_duration_since(t) >= SUBSCRIBER_SILENT_AFTER)
        {
            self.stats.frames_to_silent += 1;
            return;
        }
        // A subscriber that has had no keyframe cannot decode delta frames: hold them back.
        let gated = !s.awaiting_keyframe.is_empty()
            && s.awaiting_keyframe.get(&mid).is_some_and(|since| {
                let gives_up = now.saturating_duration_since(*since) >= KEYFRAME_WAIT_MAX;
                !(frame.keyframe || gives_up || !signals_keyframes(codec))
            });
        if gated {
            self.stats.frames_held_for_keyframe += 1;
            return;
        }
        let source_pt = frame.params.map(|p| p.pt());
        let cached = s
            .send_pt
            .get(&mid)
            .filter(|(src, _)| *src == source_pt)
            .map(|(_, pt)| *pt);
        let Some(writer) = s.rtc.writer(mid) else {
            // Not negotiated yet (the SFU offer is still waiting for the answer).
            return;
        };
        // A cached choice stays valid while the subscriber still offers that payload type
        // (a renegotiation may remove it); checking that is cheaper than matching again.
        let pt = match cached {
            Some(pt) if writer.payload_params().any(|p| p.pt() == pt) => Some(pt),
            _ => match (&frame.params, codec) {
                (Some(params), _) => writer.match_params(*params),
                // A relayed frame: the first payload type of the same codec and clock.
                (None, Some(c)) => writer
                    .payload_params()
                    .find(|p| {
                        let spec = p.spec();
                        spec.codec == c.codec && spec.clock_rate.get() == c.clock_rate
                    })
                    .map(|p| p.pt()),
                (None, None) => None,
            },
        };
        let Some(pt) = pt else {
            self.stats.frames_no_codec += 1;
            return;
        };
        let written = writer.write(pt, frame.network_time, frame.time, frame.data.clone());
        if cached != Some(pt) {
            s.send_pt.insert(mid, (source_pt, pt));
        }
        match written {
            Ok(()) => {
                self.stats.frames_forwarded += 1;
                // The wait ends with a frame the subscriber can decode, once it can receive it.
                if s.state.is_connected() && !s.awaiting_keyframe.is_empty() {
                    s.awaiting_keyframe.remove(&mid);
                }
                // str0m packetizes written frames on its next clock input: give it one now, so
                // the packets leave in this drain, while this session's state is in cache.
                if let Err(e) = s.rtc.handle_input(Input::Timeout(now)) {
                    tracing::debug!(session = %sub, error = %e, "timeout after write failed");
                }
                if matches!(
                    s.state,
                    SessionState::Connected {
                        media_flowed: false
                    }
                ) {
                    self.media_flowing(sub, now);
                }
            }
            Err(e) => tracing::debug!(session = %sub, error = %e, "write failed"),
        }
        self.drain(sub, now);
    }

    /// A subscriber's receiver asked for a keyframe (PLI/FIR): pass it to the publisher.
    pub(super) fn subscriber_wants_keyframe(&mut self, sub: SessionId, mid: Mid, now: Instant) {
        let key = self
            .sessions
            .get(&sub)
            .and_then(|s| s.remote_by_mid.get(&mid))
            .cloned();
        if let Some(key) = key {
            self.request_keyframe(&key, now);
        }
    }

    /// Asks the publishers of everything a session receives for a keyframe, so a subscriber that
    /// just connected or renegotiated sees video at once. Mids still waiting for their first
    /// keyframe get the cached one right away; the request brings the live picture after it.
    pub(super) fn request_keyframes_for(&mut self, sub: SessionId, now: Instant) {
        let tracks: Vec<(Mid, TrackKey)> = match self.sessions.get(&sub) {
            Some(s) => s
                .remote_by_mid
                .iter()
                .map(|(mid, key)| (*mid, key.clone()))
                .collect(),
            None => return,
        };
        for (mid, key) in tracks {
            self.serve_cached_keyframe(sub, mid, &key, now);
            self.request_keyframe(&key, now);
        }
    }

    /// A video mid starts receiving a publication (a pull, or `tracks/update` switching it): its
    /// delta frames are held back until a keyframe reaches it.
    pub(super) fn await_keyframe(
        &mut self,
        sub: SessionId,
        mid: Mid,
        key: &TrackKey,
        now: Instant,
    ) {
        let video = self
            .publications
            .get(key)
            .is_some_and(|p| p.kind == MediaKind::Video);
        if let Some(s) = self.sessions.get_mut(&sub)
            && video
        {
            s.awaiting_keyframe.insert(mid, now);
        }
    }

    /// Writes the publication's cached keyframe into a mid that is waiting for one (the edge
    /// keyframe cache: a joining viewer sees a picture without waiting for the publisher).
    pub(super) fn serve_cached_keyframe(
        &mut self,
        sub: SessionId,
        mid: Mid,
        key: &TrackKey,
        now: Instant,
    ) {
        let Some(since) = self
            .sessions
            .get(&sub)
            .and_then(|s| s.awaiting_keyframe.get(&mid).copied())
        else {
            return;
        };
        let Some(p) = self.publications.get(key) else {
            return;
        };
        let (Some(cached), codec) = (p.last_keyframe.clone(), p.codec) else {
            return;
        };
        // The cached keyframe is the newest frame: the live delta frames that follow build on
        // it, so the subscriber can take them at once.
        let in_step = p.frames_since_keyframe == 0;
        let frame = Frame {
            time: cached.time,
            network_time: now,
            keyframe: true,
            data: cached.data,
            params: cached.params,
        };
        self.stats.keyframes_from_cache += 1;
        self.write_to_session(sub, mid, &frame, codec, now);
        // Otherwise the delta frames that follow reference frames after the cached keyframe,
        // which this subscriber never got: keep holding them until the next live keyframe.
        if let Some(s) = self.sessions.get_mut(&sub)
            && !in_step
        {
            s.awaiting_keyframe.insert(mid, since);
        }
    }

    /// The cached keyframe of a publication, as a frame for a new downstream relay subscription.
    pub(super) fn cached_relay_keyframe(&self, key: &TrackKey) -> Option<RelayFrame> {
        let cached = self.publications.get(key)?.last_keyframe.as_ref()?;
        Some(RelayFrame {
            rtp_time: cached.time.numer(),
            keyframe: true,
            data: cached.data.clone(),
        })
    }

    /// Requests a keyframe from a publisher (or from the upstream node of a relayed one), at most
    /// once per [`KEYFRAME_INTERVAL`]; a request inside the interval is deferred to its end, not
    /// lost.
    pub(super) fn request_keyframe(&mut self, key: &TrackKey, now: Instant) {
        let Some(p) = self.publications.get_mut(key) else {
            return;
        };
        if p.kind != MediaKind::Video {
            p.keyframe_pending = false;
            return;
        }
        if p.last_keyframe_request
            .is_some_and(|t| now.saturating_duration_since(t) < KEYFRAME_INTERVAL)
        {
            p.keyframe_pending = true;
            return;
        }
        p.keyframe_pending = false;
        p.last_keyframe_request = Some(now);
        let mid = match p.source {
            Source::Session(mid) => mid,
            Source::Relay(up) => {
                self.stats.keyframe_requests += 1;
                self.push_relay(RelayOut::KeyframeRequest { up });
                return;
            }
        };
        let Some(s) = self.sessions.get_mut(&key.0) else {
            return;
        };
        let Some(mut writer) = s.rtc.writer(mid) else {
            return;
        };
        match writer.request_keyframe(None, KeyframeRequestKind::Pli) {
            Ok(()) => self.stats.keyframe_requests += 1,
            // Nothing received yet on that mid: there is no stream to ask.
            Err(e) => tracing::debug!(session = %key.0, error = %e, "keyframe request not sent"),
        }
        self.drain(key.0, now);
    }
}

/// Codecs whose frames str0m marks as keyframes; for others, frames are never held back.
fn signals_keyframes(codec: Option<CodecInfo>) -> bool {
    codec.is_some_and(|c| {
        matches!(
            c.codec,
            Codec::Vp8 | Codec::Vp9 | Codec::H264 | Codec::H265 | Codec::Av1
        )
    })
}
