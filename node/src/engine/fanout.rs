//! Frame-level fan-out: a publication's frames (from a local publisher's depacketizer or from a
//! relay link) are written into every local subscriber's `Rtc`, which packetizes, encrypts and
//! handles NACK/RTX per subscriber, and queued for every downstream relay subscription.
//! Keyframe requests flow the other way, rate-limited per publication.

use std::sync::Arc;
use std::time::Instant;

use str0m::Input;
use str0m::format::{Codec, PayloadParams};
use str0m::media::Frequency;
use str0m::media::{KeyframeRequestKind, MediaData, MediaKind, MediaTime, Mid, Rid};

use super::publications::{CachedKeyframe, CodecInfo, Sink, Source, TrackKey};
use super::relay_messages::{RelayFrame, RelayOut};
use super::repair_window;
use super::session::SessionState;
use super::simulcast::{LayerFrame, Refusal, Verdict};
use super::{
    Engine, KEYFRAME_INTERVAL, KEYFRAME_WAIT_MAX, MAX_CACHED_KEYFRAME, SUBSCRIBER_SILENT_AFTER,
};
use crate::ids::{DownId, SessionId, UpId};

/// One frame on its way to the subscribers of a publication.
#[derive(Clone)]
pub(super) struct Frame {
    pub time: MediaTime,
    pub network_time: Instant,
    pub keyframe: bool,
    /// The sequence number the origin received it with (its last packet's, extended).
    pub seq: u64,
    pub data: Arc<[u8]>,
    /// The publisher's payload parameters, when the frame comes from a local session.
    pub params: Option<PayloadParams>,
    /// A simulcast layer's frame: its rid and the layer's epoch (see `simulcast::Admitted`).
    pub layer: Option<(Rid, u32)>,
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
        // Only here, on the publisher's own node: relayed frames never reach this path.
        self.egress_frame(publisher, &data);
        if let Some(p) = self.publications.get_mut(&key)
            && p.codec.is_none()
        {
            p.codec = Some(codec_of(&data.params));
        }
        let layer = match data.rid {
            None => None,
            Some(rid) => match self.admit_layer(&key, &data, rid) {
                Some(epoch) => Some((rid, epoch)),
                None => return,
            },
        };
        let frame = Frame {
            keyframe: data.is_keyframe(),
            seq: **data.seq_range.end(),
            time: data.time,
            network_time: data.network_time,
            data: data.data,
            params: Some(data.params),
            layer,
        };
        self.fan_out(&key, frame, now);
    }

    /// Takes a layered frame into its publication's layer table; `None` (counted) when the
    /// layer is refused. Returns the layer's epoch.
    fn admit_layer(&mut self, key: &TrackKey, data: &MediaData, rid: Rid) -> Option<u32> {
        let s = self.sessions.get_mut(&key.0)?;
        let p = self.publications.get_mut(key)?;
        if !p.layers.is_declared() {
            // The publisher's SDP names its layers (`a=rid`); str0m keeps them per mid.
            if let Some(str0m::media::Rids::Specific(rids)) =
                s.rtc.media(data.mid).map(|m| m.rids_rx())
            {
                let rids = rids.clone();
                if p.layers.declare(&rids) > 0 {
                    tracing::info!(session = %key.0, track = %key.1, declared = rids.len(),
                        "more simulcast layers than supported: the extra ones are dropped");
                }
            }
        }
        let ssrc = s
            .rtc
            .direct_api()
            .stream_rx_by_mid(data.mid, Some(rid))
            .map(|st| *st.ssrc());
        let clock = data.params.spec().clock_rate.get();
        match p
            .layers
            .admit(rid, data.time.numer(), data.network_time, clock, ssrc)
        {
            Ok(a) => {
                p.layers
                    .measure(a.index, data.data.len(), data.network_time);
                if a.ssrc_changed || a.time_jumped {
                    if a.ssrc_changed {
                        self.stats.simulcast.ssrc_change += 1;
                    }
                    if a.time_jumped {
                        self.stats.simulcast.time_jump += 1;
                    }
                    // The cached keyframe belongs to the layer's previous run.
                    if let Some(l) = p.layers.at_mut(a.index) {
                        l.data.keyframe = None;
                    }
                    tracing::debug!(session = %key.0, track = %key.1, %rid,
                        ssrc_changed = a.ssrc_changed, "simulcast layer starts over");
                }
                Some(a.epoch)
            }
            Err(Refusal::UnknownRid) => {
                self.stats.simulcast.unknown_rid += 1;
                None
            }
            Err(Refusal::TooManyLayers) => {
                self.stats.simulcast.too_many_layers += 1;
                None
            }
        }
    }

    /// Takes a relayed layered frame into the relayed publication's layer table (the other node
    /// checked it against the publisher's SDP; here only the bound applies). `None` (counted)
    /// when refused.
    fn admit_relayed_layer(
        &mut self,
        key: &TrackKey,
        frame: &RelayFrame,
        rid: Rid,
        now: Instant,
    ) -> Option<u32> {
        let p = self.publications.get_mut(key)?;
        let clock = p.codec.map_or(90_000, |c| c.clock_rate);
        match p.layers.admit(rid, frame.rtp_time, now, clock, None) {
            Ok(a) => {
                p.layers.measure(a.index, frame.data.len(), now);
                if a.time_jumped {
                    self.stats.simulcast.time_jump += 1;
                    if let Some(l) = p.layers.at_mut(a.index) {
                        l.data.keyframe = None;
                    }
                }
                Some(a.epoch)
            }
            Err(Refusal::UnknownRid) => {
                self.stats.simulcast.unknown_rid += 1;
                None
            }
            Err(Refusal::TooManyLayers) => {
                self.stats.simulcast.too_many_layers += 1;
                None
            }
        }
    }

    /// str0m reported a publisher's stream paused or resumed: a paused simulcast layer is no
    /// longer chosen (subscribers with `ridNotAvailable: asciibetical` fall back).
    pub(super) fn stream_paused(
        &mut self,
        publisher: SessionId,
        mid: Mid,
        rid: Option<Rid>,
        paused: bool,
    ) {
        let (Some(rid), Some(name)) = (
            rid,
            self.sessions
                .get(&publisher)
                .and_then(|s| s.local_by_mid.get(&mid)),
        ) else {
            return;
        };
        let key = (publisher, name.clone());
        if let Some(p) = self.publications.get_mut(&key) {
            tracing::debug!(session = %publisher, track = %key.1, %rid, paused, "simulcast layer paused");
            p.layers.set_paused(rid, paused);
        }
    }

    /// A frame from an upstream relay subscription.
    pub fn relay_frame(&mut self, up: UpId, frame: RelayFrame, now: Instant) {
        // Frames from this node's other workers are not relay traffic (`workers/links.rs`).
        if !up.is_in_process() {
            self.stats.relay_frames_in += 1;
            if let Some(rid) = frame.rid {
                self.stats.simulcast.relay_in[super::stats::rid_slot(&rid)] += 1;
            }
        }
        let Some(key) = self.relay_up.get(&up).cloned() else {
            return;
        };
        // After a gap on the link, each layer (or the unlayered track) waits for its keyframe.
        let waiting = self
            .publications
            .get_mut(&key)
            .and_then(|p| match frame.rid {
                Some(rid) => p.layers.layer_mut(rid).map(|l| &mut l.data.await_keyframe),
                None => Some(&mut p.await_keyframe),
            })
            .filter(|w| **w);
        if let Some(w) = waiting {
            if !frame.keyframe {
                self.stats.relay_gap_withheld += 1;
                // A layer pulled again after a pause waits for its keyframe: make sure one
                // was asked for (folded to one a second per layer), or its viewers would wait
                // for the publisher's next one.
                let wanted = frame.rid.filter(|rid| {
                    self.publications
                        .get(&key)
                        .is_some_and(|p| p.layers.is_declared() && p.upstream_layers.carries(*rid))
                });
                if let Some(rid) = wanted {
                    self.request_layer_keyframe(&key, rid, now);
                    self.process_work(now);
                }
                return;
            }
            *w = false;
        }
        let Some(clock) = self
            .publications
            .get(&key)
            .and_then(|p| p.codec)
            .and_then(|c| Frequency::new(c.clock_rate))
        else {
            return;
        };
        let layer = match frame.rid {
            None => None,
            Some(rid) => match self.admit_relayed_layer(&key, &frame, rid, now) {
                Some(epoch) => Some((rid, epoch)),
                None => return,
            },
        };
        let frame = Frame {
            time: MediaTime::new(frame.rtp_time, clock),
            network_time: now,
            keyframe: frame.keyframe,
            seq: frame.origin_seq,
            data: frame.data,
            params: None,
            layer,
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
        let cacheable = frame.keyframe && frame.data.len() <= MAX_CACHED_KEYFRAME;
        let cached = cacheable.then(|| CachedKeyframe {
            time: frame.time,
            seq: frame.seq,
            data: frame.data.clone(),
            params: frame.params,
        });
        let (slot, since) = match frame.layer {
            None => (&mut p.last_keyframe, &mut p.frames_since_keyframe),
            Some((rid, _)) => match p.layers.layer_mut(rid) {
                Some(l) => (&mut l.data.keyframe, &mut l.data.frames_since_keyframe),
                None => return,
            },
        };
        if cached.is_some() {
            *slot = cached;
            *since = 0;
        } else {
            *since = since.saturating_add(1);
        }
        // Taken rather than cloned (no allocation per frame); nothing below touches the
        // publication's subscriber list or layers, and they are put back before returning.
        let sinks = std::mem::take(&mut p.subscribers);
        let layers = std::mem::take(&mut p.layers);
        let clock = codec.map_or(90_000, |c| c.clock_rate);
        let mut want_keyframe = false;
        for sink in &sinks {
            // A layered frame goes only to the sinks whose selector takes it, at their time.
            // Relay sinks take the layers they asked for: the other node selects for its own
            // subscribers.
            let layered;
            let frame = match (frame.layer, *sink) {
                (None, _) => &frame,
                (Some((rid, _)), Sink::Relay(down)) => {
                    if !self.relay_down_carries(down, rid) {
                        continue;
                    }
                    &frame
                }
                (Some((rid, epoch)), Sink::Session(sub, mid)) => {
                    let Some(s) = self.sessions.get_mut(&sub) else {
                        continue;
                    };
                    let selector = s.simulcast.entry(mid).or_default();
                    let f = LayerFrame {
                        rid,
                        epoch,
                        keyframe: frame.keyframe,
                        time: frame.time.numer(),
                        arrival: frame.network_time,
                    };
                    let verdict = selector.on_frame(&layers, f, clock);
                    match verdict {
                        Verdict::Forward { time, switched } => {
                            if switched {
                                self.stats.simulcast.switches += 1;
                            }
                            layered = Frame {
                                time: MediaTime::new(time, frame.time.frequency()),
                                ..frame.clone()
                            };
                            &layered
                        }
                        Verdict::Skip => continue,
                        Verdict::WantKeyframe => {
                            // Its layer is new to it or started over (SSRC change, time
                            // jump): delta frames are held until the layer's keyframe.
                            self.stats.frames_held_for_keyframe += 1;
                            want_keyframe = true;
                            continue;
                        }
                    }
                }
            };
            match *sink {
                Sink::Session(sub, mid) => self.write_to_session(sub, mid, frame, codec, now),
                Sink::Relay(down) => {
                    if !down.is_in_process() {
                        self.stats.relay_frames_out += 1;
                        if let Some((rid, _)) = frame.layer {
                            self.stats.simulcast.relay_out[super::stats::rid_slot(&rid)] += 1;
                        }
                    }
                    if frame.keyframe && !self.relay_down_without_keyframe.is_empty() {
                        self.relay_down_without_keyframe.remove(&down);
                    }
                    let out = RelayFrame {
                        rtp_time: frame.time.numer(),
                        origin_seq: frame.seq,
                        marker: true,
                        keyframe: frame.keyframe,
                        data: frame.data.clone(),
                        rid: frame.layer.map(|(rid, _)| rid),
                    };
                    self.push_relay_frame(down, out);
                }
            }
        }
        if let Some(p) = self.publications.get_mut(key) {
            p.subscribers = sinks;
            p.layers = layers;
        }
        // A subscriber moves to this layer on its next keyframe: ask for one (folded per layer).
        if want_keyframe && let Some((rid, _)) = frame.layer {
            self.request_layer_keyframe(key, rid, now);
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
        repair_window::ensure(&mut s.rtc, &mut s.repair_window, mid);
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

    /// A subscriber's receiver asked for a keyframe (PLI/FIR): pass it to the publisher (for a
    /// layered publication, to the layer the subscriber receives or moves to).
    pub(super) fn subscriber_wants_keyframe(&mut self, sub: SessionId, mid: Mid, now: Instant) {
        let Some((key, layer)) = self.sessions.get(&sub).and_then(|s| {
            let key = s.remote_by_mid.get(&mid)?.clone();
            let sel = s.simulcast.get(&mid);
            Some((key, sel.and_then(|l| l.switching_to().or(l.current()))))
        }) else {
            return;
        };
        self.request_subscriber_keyframe(&key, layer, sub, mid, now);
    }

    /// A keyframe for one subscriber of `key`: of `layer` when known; for a layered
    /// publication otherwise, of the layer its selector would choose now.
    pub(super) fn request_subscriber_keyframe(
        &mut self,
        key: &TrackKey,
        layer: Option<Rid>,
        sub: SessionId,
        mid: Mid,
        now: Instant,
    ) {
        let layered = self
            .publications
            .get(key)
            .is_some_and(|p| p.layers.is_layered());
        if !layered {
            self.request_keyframe(key, now);
            return;
        }
        let layer = layer.or_else(|| {
            let selector = self
                .sessions
                .get(&sub)
                .and_then(|s| s.simulcast.get(&mid))
                .copied()
                .unwrap_or_default();
            selector.choose(&self.publications.get(key)?.layers, now)
        });
        match layer {
            Some(rid) => self.request_layer_keyframe(key, rid, now),
            None => self.request_keyframe(key, now),
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
            self.request_subscriber_keyframe(&key, None, sub, mid, now);
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
    /// keyframe cache: a joining viewer sees a picture without waiting for the publisher). For a
    /// layered publication, the cached keyframe of the layer the subscriber starts on.
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
        let codec = p.codec;
        let (cached, in_step, layer) = if p.layers.is_layered() {
            let Some(s) = self.sessions.get_mut(&sub) else {
                return;
            };
            let selector = s.simulcast.entry(mid).or_default();
            let Some(rid) = selector.choose(&p.layers, now) else {
                return;
            };
            let Some(l) = p.layers.layer(rid) else {
                return;
            };
            let Some(cached) = l.data.keyframe.clone() else {
                return;
            };
            let f = LayerFrame {
                rid,
                epoch: l.epoch(),
                keyframe: true,
                time: cached.time.numer(),
                arrival: now,
            };
            let clock = codec.map_or(90_000, |c| c.clock_rate);
            let Verdict::Forward { time, switched } = selector.on_frame(&p.layers, f, clock) else {
                return;
            };
            if switched {
                self.stats.simulcast.switches += 1;
            }
            let cached = CachedKeyframe {
                time: MediaTime::new(time, cached.time.frequency()),
                ..cached
            };
            (
                cached,
                l.data.frames_since_keyframe == 0,
                Some((rid, l.epoch())),
            )
        } else {
            let Some(cached) = p.last_keyframe.clone() else {
                return;
            };
            (cached, p.frames_since_keyframe == 0, None)
        };
        // The cached keyframe is the newest frame: the live delta frames that follow build on
        // it, so the subscriber can take them at once.
        let frame = Frame {
            time: cached.time,
            network_time: now,
            keyframe: true,
            seq: cached.seq,
            data: cached.data,
            params: cached.params,
            layer,
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

    /// The cached keyframe of a publication (of a layered one, of each layer), as frames for a
    /// new downstream relay subscription: only one that no delta frame has followed yet. The
    /// downstream has been getting the live frames since it subscribed, so a keyframe older
    /// than the last of them would be followed by deltas that do not build on it (the other
    /// node's viewers would lose the frames in between, or decode garbage); it waits for the
    /// live keyframe its request brings instead.
    pub(super) fn cached_relay_keyframes(&self, key: &TrackKey, down: DownId) -> Vec<RelayFrame> {
        let Some(p) = self.publications.get(key) else {
            return Vec::new();
        };
        let frame = |cached: &CachedKeyframe, rid| RelayFrame {
            rtp_time: cached.time.numer(),
            origin_seq: cached.seq,
            marker: true,
            keyframe: true,
            data: cached.data.clone(),
            rid,
        };
        if !p.layers.is_layered() {
            return p
                .last_keyframe
                .iter()
                .filter(|_| p.frames_since_keyframe == 0)
                .map(|c| frame(c, None))
                .collect();
        }
        p.layers
            .layers()
            .iter()
            .filter(|l| l.data.frames_since_keyframe == 0 && self.relay_down_carries(down, l.rid))
            .filter_map(|l| l.data.keyframe.as_ref().map(|c| frame(c, Some(l.rid))))
            .collect()
    }

    /// Requests a keyframe from a publisher (or from the upstream node of a relayed one), at most
    /// once per [`KEYFRAME_INTERVAL`]; a request inside the interval is deferred to its end, not
    /// lost. For a layered publication: of every flowing layer (each folded on its own).
    pub(super) fn request_keyframe(&mut self, key: &TrackKey, now: Instant) {
        let Some(p) = self.publications.get_mut(key) else {
            return;
        };
        if p.kind != MediaKind::Video {
            p.keyframe_pending = false;
            return;
        }
        // The publisher is asked for each flowing layer; a relayed publication whose layers are
        // known asks its upstream node for each layer it pulls (else for all at once).
        if p.layers.is_layered() && matches!(p.source, Source::Session(_)) {
            let rids: Vec<Rid> = p.layers.flowing(now).collect();
            for rid in rids {
                self.request_layer_keyframe(key, rid, now);
            }
            return;
        }
        if p.layers.is_declared() && matches!(p.source, Source::Relay(_)) {
            let rids: Vec<Rid> = p
                .layers
                .layers()
                .iter()
                .map(|l| l.rid)
                .filter(|r| p.upstream_layers.carries(*r))
                .collect();
            for rid in rids {
                self.request_layer_keyframe(key, rid, now);
            }
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
        self.send_pli(key.0, mid, None, now);
    }

    /// Requests a keyframe of one simulcast layer from its publisher, at most once per
    /// [`KEYFRAME_INTERVAL`] per layer; one inside the interval is deferred to its end.
    pub(super) fn request_layer_keyframe(&mut self, key: &TrackKey, rid: Rid, now: Instant) {
        let Some(p) = self.publications.get_mut(key) else {
            return;
        };
        if p.kind != MediaKind::Video {
            return;
        }
        let source = p.source;
        if matches!(source, Source::Relay(_)) && !p.layers.is_declared() {
            // The upstream's layers are not known yet: it is asked for all, folded per
            // publication.
            self.request_keyframe(key, now);
            return;
        }
        let Some(l) = p.layers.layer_mut(rid) else {
            return;
        };
        let c = &mut l.data;
        if c.last_keyframe_request
            .is_some_and(|t| now.saturating_duration_since(t) < KEYFRAME_INTERVAL)
        {
            c.keyframe_pending = true;
            return;
        }
        c.keyframe_pending = false;
        c.last_keyframe_request = Some(now);
        match source {
            Source::Session(mid) => self.send_pli(key.0, mid, Some(rid), now),
            Source::Relay(up) => {
                self.stats.keyframe_requests += 1;
                self.push_relay(RelayOut::LayerKeyframeRequest { up, rid });
            }
        }
    }

    /// Deferred keyframe requests whose interval has passed, for every layer of a publication.
    pub(super) fn pending_layer_keyframes(&mut self, key: &TrackKey, now: Instant) {
        let Some(p) = self.publications.get(key) else {
            return;
        };
        let rids: Vec<Rid> = p
            .layers
            .layers()
            .iter()
            .filter(|l| l.data.keyframe_pending)
            .map(|l| l.rid)
            .collect();
        for rid in rids {
            self.request_layer_keyframe(key, rid, now);
        }
    }

    fn send_pli(&mut self, publisher: SessionId, mid: Mid, rid: Option<Rid>, now: Instant) {
        let Some(s) = self.sessions.get_mut(&publisher) else {
            return;
        };
        let Some(mut writer) = s.rtc.writer(mid) else {
            return;
        };
        match writer.request_keyframe(rid, KeyframeRequestKind::Pli) {
            Ok(()) => self.stats.keyframe_requests += 1,
            // Nothing received yet on that mid: there is no stream to ask.
            Err(e) => {
                tracing::debug!(session = %publisher, error = %e, "keyframe request not sent")
            }
        }
        self.drain(publisher, now);
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
