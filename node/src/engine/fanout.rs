//! Packet-level fan-out: a publication's RTP packets (from a local publisher's `Rtc` in RTP
//! mode, or from a relay link) are written into every local subscriber's `Rtc` with
//! `StreamTx::write_rtp`, each with the subscriber's own sequence numbers, timestamps, payload
//! type and VP8 picture ids (`packet/`), and queued for every downstream relay subscription.
//! str0m encrypts and answers NACKs (with RTX where negotiated) per subscriber. Keyframe
//! requests flow the other way, rate-limited per publication (per layer).

use std::sync::Arc;
use std::time::Instant;

use str0m::Input;
use str0m::format::{Codec, PayloadParams};
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Pt, Rid};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, SeqNo, Vp8Descriptor};

use super::packet::cache::{Cached, PacketCache};
use super::packet::keyframe::{Start, detects_keyframes, inspect};
use super::packet::rewrite::{Packet, Rewrite, Rewriter, SourceId};
use super::packet::vp8::Vp8Rewriter;
use super::publications::{CodecInfo, PktHdr, Sink, Source, TrackKey};
use super::relay_messages::{RelayFrame, RelayOut};
use super::repair_window;
use super::session::SessionState;
use super::simulcast::{LayerFrame, Refusal, Verdict};
use super::{Engine, KEYFRAME_INTERVAL, KEYFRAME_WAIT_MAX, SUBSCRIBER_SILENT_AFTER};
use crate::ids::{DownId, SessionId, UpId};

/// One RTP packet on its way to the subscribers of a publication.
#[derive(Clone)]
pub(super) struct Pkt {
    /// The source's extended sequence number (for a relayed packet, the origin's).
    pub seq: u64,
    /// The source's RTP timestamp.
    pub time: u32,
    pub marker: bool,
    /// What it starts: a frame, a keyframe (`packet::keyframe::inspect`, once per packet).
    pub start: Start,
    pub arrival: Instant,
    pub payload: Arc<[u8]>,
    pub hdr: PktHdr,
    /// A simulcast layer's packet: its rid and the layer's epoch (see `simulcast::Admitted`).
    pub layer: Option<(Rid, u32)>,
}

impl Pkt {
    fn cached(&self) -> Cached<PktHdr> {
        Cached {
            seq: self.seq,
            time: self.time,
            marker: self.marker,
            start: self.start,
            arrival: self.arrival,
            payload: self.payload.clone(),
            header: self.hdr,
        }
    }

    fn from_cached(c: &Cached<PktHdr>, layer: Option<(Rid, u32)>) -> Pkt {
        Pkt {
            seq: c.seq,
            time: c.time,
            marker: c.marker,
            start: c.start,
            arrival: c.arrival,
            payload: c.payload.clone(),
            hdr: c.header,
            layer,
        }
    }
}

/// Packets written to one session that may wait for the end of the batch of input: the one
/// that makes this many sends them at once. str0m's send queue never gives back the room it
/// grew to (4 packets, then 8, 16, ...: 408 bytes each), so this keeps it at 8 packets, 3.3 KB
/// per session, where a busy batch or a keyframe grew it to 16 or 32. Audio packets and video
/// deltas (4 packets at 1 Mbit/s) of a batch still leave with one clock input: with 4 here,
/// 200-viewer video forwarded 10-17 % fewer packets per core (two runs, a busy machine).
pub(super) const FLUSH_AFTER_PACKETS: u8 = 8;

/// One subscriber's outgoing stream on a mid: the numbering it has sent, the VP8 picture ids,
/// and the payload type chosen for the source's (so matching is not redone per packet).
pub struct OutStream {
    rewriter: Rewriter,
    vp8: Vp8Rewriter,
    /// (source payload type, or `None` for relayed packets; the subscriber's; it has RTX).
    pt: Option<(Option<Pt>, Pt, bool)>,
    /// Its send stream's resend history was set for packets that are (`true`) or are not
    /// NACKable (`repair_window::ensure`).
    window_for: Option<bool>,
}

impl OutStream {
    fn new() -> OutStream {
        // Any 16-bit start keeps the SRTP rollover counter at 0 (`packet/rewrite.rs`).
        OutStream {
            rewriter: Rewriter::new(rand::random::<u16>() & 0x7fff),
            vp8: Vp8Rewriter::default(),
            pt: None,
            window_for: None,
        }
    }
}

pub(super) fn codec_of(params: &PayloadParams) -> CodecInfo {
    let spec = params.spec();
    CodecInfo {
        codec: spec.codec,
        clock_rate: spec.clock_rate.get(),
        channels: spec.channels,
    }
}

/// The source a subscriber's rewriter follows for a packet of publication `uid` (of its layer
/// `rid`, for a layered one). Keyed by the rid, not by the layer's place in the table: a layer
/// that appears later (f after h and q) is inserted before the others, and a key by place would
/// hand the layers after it another layer's source, so their subscribers' rewriters would drop
/// their packets as not followed (or take a switch to the new layer for no switch at all).
fn source_of(uid: u64, rid: Option<Rid>, epoch: u32) -> SourceId {
    let id = match rid {
        None => u128::from(uid) << 65,
        Some(rid) => {
            // A rid is at most 8 bytes (str0m's `Rid`): packed whole, so two rids never share
            // a key.
            let packed = rid
                .as_bytes()
                .iter()
                .take(8)
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            (u128::from(uid) << 65) | (1 << 64) | u128::from(packed)
        }
    };
    SourceId { id, epoch }
}

impl Engine {
    pub(super) fn forward_media(&mut self, publisher: SessionId, rtp: RtpPacket, now: Instant) {
        self.media_flowing(publisher, now);
        let Some(s) = self.sessions.get_mut(&publisher) else {
            return;
        };
        // The packet's mid and rid come from the stream str0m matched it to (by SSRC), not
        // from its header extensions (sent only on the first packets).
        let ssrc = rtp.header.ssrc;
        let Some((mid, rid)) = s
            .rtc
            .direct_api()
            .stream_rx(&ssrc)
            .map(|st| (st.mid(), st.rid()))
        else {
            self.stats.rtp_unknown_stream += 1;
            return;
        };
        let Some(name) = s.local_by_mid.get(&mid) else {
            return;
        };
        let Some(params) = s
            .rtc
            .codec_config()
            .find(|c| c.pt() == rtp.header.payload_type)
            .copied()
        else {
            self.stats.frames_no_codec += 1;
            return;
        };
        let key = (publisher, name.clone());
        let codec = params.spec().codec;
        let start = inspect(codec, &rtp.payload);
        if start.frame {
            self.stats.frames_in += 1;
        }
        // Only here, on the publisher's own node: relayed packets never reach this path.
        self.egress_packet(publisher, codec, &rtp.payload, *rtp.seq_no, rtp.timestamp);
        let ext = &rtp.header.ext_vals;
        let hdr = PktHdr {
            ext_time: rtp.time.numer(),
            params: Some(params),
            audio_level: ext.audio_level,
            voice_activity: ext.voice_activity,
            video_orientation: ext.video_orientation,
        };
        let Some(p) = self.publications.get_mut(&key) else {
            return;
        };
        if p.codec.is_none() && !matches!(codec, Codec::Rtx | Codec::Red) {
            p.codec = Some(codec_of(&params));
        }
        let layer = match rid {
            None => {
                // A new SSRC on an unlayered track: the publisher restarted its stream.
                let ssrc = *ssrc;
                if p.ssrc.is_some_and(|s| s != ssrc) {
                    p.epoch = p.epoch.wrapping_add(1);
                    p.cache.clear();
                }
                p.ssrc = Some(ssrc);
                None
            }
            Some(rid) => match self.admit_layer(&key, mid, &rtp, rid) {
                Some(epoch) => Some((rid, epoch)),
                None => return,
            },
        };
        let pkt = Pkt {
            seq: *rtp.seq_no,
            time: rtp.header.timestamp,
            marker: rtp.header.marker,
            start,
            arrival: rtp.timestamp,
            payload: rtp.payload,
            hdr,
            layer,
        };
        self.fan_out(&key, pkt, now);
    }

    /// Takes a layered packet into its publication's layer table; `None` (counted) when the
    /// layer is refused. Returns the layer's epoch.
    fn admit_layer(&mut self, key: &TrackKey, mid: Mid, rtp: &RtpPacket, rid: Rid) -> Option<u32> {
        let s = self.sessions.get_mut(&key.0)?;
        let p = self.publications.get_mut(key)?;
        if !p.layers.is_declared() {
            // The publisher's SDP names its layers (`a=rid`); str0m keeps them per mid.
            if let Some(str0m::media::Rids::Specific(rids)) = s.rtc.media(mid).map(|m| m.rids_rx())
            {
                let rids = rids.clone();
                if p.layers.declare(&rids) > 0 {
                    tracing::info!(session = %key.0, track = %key.1, declared = rids.len(),
                        "more simulcast layers than supported: the extra ones are dropped");
                }
            }
        }
        let ssrc = Some(*rtp.header.ssrc);
        let clock = p.codec.map_or(90_000, |c| c.clock_rate);
        match p
            .layers
            .admit(rid, rtp.time.numer(), rtp.timestamp, clock, ssrc)
        {
            Ok(a) => {
                p.layers.measure(a.index, rtp.payload.len(), rtp.timestamp);
                if a.ssrc_changed || a.time_jumped {
                    if a.ssrc_changed {
                        self.stats.simulcast.ssrc_change += 1;
                    }
                    if a.time_jumped {
                        self.stats.simulcast.time_jump += 1;
                    }
                    // The cached packets belong to the layer's previous run.
                    if let Some(l) = p.layers.at_mut(a.index) {
                        l.data.cache.clear();
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

    /// Takes a relayed layered packet into the relayed publication's layer table (the other
    /// node checked it against the publisher's SDP; here only the bound applies). `None`
    /// (counted) when refused.
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
                        l.data.cache.clear();
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

    /// A packet from an upstream relay subscription.
    pub fn relay_frame(&mut self, up: UpId, frame: RelayFrame, now: Instant) {
        // Packets from this node's other workers are not relay traffic (`workers/links.rs`).
        if !up.is_in_process() {
            self.stats.relay_frames_in += 1;
            if let Some(rid) = frame.rid {
                self.stats.simulcast.relay_in[super::stats::rid_slot(&rid)] += 1;
            }
        }
        let Some(key) = self.relay_up.get(&up).cloned() else {
            return;
        };
        let Some(codec) = self.publications.get(&key).and_then(|p| p.codec) else {
            return;
        };
        // Read here rather than trusted from the flag: the frame starts matter too.
        let start = inspect(codec.codec, &frame.data);
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
            if !start.keyframe {
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
            // The packets withheld were not lost to the viewers: their streams start the
            // source again at this keyframe, numbered on from what they were sent.
            if let Some(p) = self.publications.get_mut(&key) {
                match frame.rid {
                    Some(rid) => p.layers.restart(rid),
                    None => p.epoch = p.epoch.wrapping_add(1),
                }
            }
        }
        let layer = match frame.rid {
            None => None,
            Some(rid) => match self.admit_relayed_layer(&key, &frame, rid, now) {
                Some(epoch) => Some((rid, epoch)),
                None => return,
            },
        };
        if start.frame {
            self.stats.frames_in += 1;
        }
        let pkt = Pkt {
            seq: frame.origin_seq,
            // The low 32 bits are the RTP timestamp itself.
            time: frame.rtp_time as u32,
            marker: frame.marker,
            start,
            arrival: now,
            payload: frame.data,
            hdr: PktHdr {
                ext_time: frame.rtp_time,
                video_orientation: frame.orientation,
                ..PktHdr::default()
            },
            layer,
        };
        self.fan_out(&key, pkt, now);
        self.process_work(now);
    }

    fn fan_out(&mut self, key: &TrackKey, pkt: Pkt, now: Instant) {
        let Some(p) = self.publications.get_mut(key) else {
            return;
        };
        p.last_media = now;
        let codec = p.codec;
        let uid = p.uid;
        let (cache, source) = match pkt.layer {
            None => (&mut p.cache, source_of(uid, None, p.epoch)),
            Some((rid, epoch)) => match p.layers.layer_mut(rid) {
                Some(l) => (&mut l.data.cache, source_of(uid, Some(rid), epoch)),
                None => return,
            },
        };
        cache.insert(pkt.cached());
        cache.evict(pkt.arrival);
        // Taken rather than cloned (no allocation per packet); nothing below touches the
        // publication's subscriber list or layers, and they are put back before returning.
        let sinks = std::mem::take(&mut p.subscribers);
        let layers = std::mem::take(&mut p.layers);
        let clock = codec.map_or(90_000, |c| c.clock_rate);
        let mut want_keyframe = false;
        for sink in &sinks {
            // A layered packet goes only to the sinks whose selector takes its layer. The
            // selector decides on a frame's first packet; the rest of the frame follows the
            // subscriber's rewriter, which follows the layer it switched to. Relay sinks take
            // the layers they asked for: the other node selects for its own subscribers.
            let mut switch = pkt.layer.is_none();
            match (pkt.layer, *sink) {
                (None, _) => {}
                (Some((rid, _)), Sink::Relay(down)) => {
                    if !self.relay_down_carries(down, rid) {
                        continue;
                    }
                }
                (Some((rid, epoch)), Sink::Session(sub, mid)) => {
                    if !pkt.start.frame {
                        // Mid-frame: only to subscribers on this layer.
                        let on_layer = self
                            .sessions
                            .get(&sub)
                            .and_then(|s| s.simulcast.get(&mid))
                            .is_some_and(|sel| sel.current() == Some(rid));
                        if !on_layer {
                            continue;
                        }
                    } else {
                        let Some(s) = self.sessions.get_mut(&sub) else {
                            continue;
                        };
                        let selector = s.simulcast.entry(mid).or_default();
                        let f = LayerFrame {
                            rid,
                            epoch,
                            keyframe: pkt.start.keyframe,
                            time: pkt.hdr.ext_time,
                            arrival: pkt.arrival,
                        };
                        match selector.on_frame(&layers, f, clock) {
                            Verdict::Forward { switched, .. } => {
                                if switched {
                                    self.stats.simulcast.switches += 1;
                                }
                                switch = switched;
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
                }
            }
            match *sink {
                Sink::Session(sub, mid) => {
                    self.write_to_session(sub, mid, &pkt, source, switch, codec, now)
                }
                Sink::Relay(down) => {
                    if !down.is_in_process() {
                        self.stats.relay_frames_out += 1;
                        if let Some((rid, _)) = pkt.layer {
                            self.stats.simulcast.relay_out[super::stats::rid_slot(&rid)] += 1;
                        }
                    }
                    if pkt.start.keyframe && !self.relay_down_without_keyframe.is_empty() {
                        self.relay_down_without_keyframe.remove(&down);
                    }
                    self.push_relay_frame(down, relay_frame_of(&pkt));
                }
            }
        }
        if let Some(p) = self.publications.get_mut(key) {
            p.subscribers = sinks;
            p.layers = layers;
        }
        // A subscriber moves to this layer on its next keyframe: ask for one (folded per layer).
        if want_keyframe && let Some((rid, _)) = pkt.layer {
            self.request_layer_keyframe(key, rid, now);
        }
    }

    /// Writes one packet into a subscriber's send stream on `mid`, rewritten for it. `switch`:
    /// the subscriber moves to `source` here (it follows the first source it is given anyway).
    #[allow(clippy::too_many_arguments)]
    fn write_to_session(
        &mut self,
        sub: SessionId,
        mid: Mid,
        pkt: &Pkt,
        source: SourceId,
        switch: bool,
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
            if pkt.start.frame {
                self.stats.frames_to_silent += 1;
            }
            return;
        }
        // A subscriber that has had no keyframe cannot decode delta frames: hold them back.
        let detects = codec.is_some_and(|c| detects_keyframes(c.codec));
        let gate = s.awaiting_keyframe.get(&mid).copied();
        if let Some(since) = gate {
            let gives_up = now.saturating_duration_since(since) >= KEYFRAME_WAIT_MAX;
            if !(pkt.start.keyframe || gives_up || !detects) {
                if pkt.start.frame {
                    self.stats.frames_held_for_keyframe += 1;
                }
                return;
            }
        }
        let source_pt = pkt.hdr.params.map(|p| p.pt());
        let out = s
            .out
            .entry(mid)
            .or_insert_with(|| Box::new(OutStream::new()));
        // A cached choice stays valid while the subscriber still offers that payload type
        // (a renegotiation may remove it); checking that is cheaper than matching again.
        let remote: &[Pt] = match s.rtc.media(mid) {
            Some(m) => m.remote_pts(),
            // Not negotiated yet (the SFU offer is still waiting for the answer).
            None => return,
        };
        let chosen = match out.pt {
            Some((src, pt, rtx)) if src == source_pt && remote.contains(&pt) => Some((pt, rtx)),
            _ => {
                let config = s.rtc.codec_config();
                let found = match (&pkt.hdr.params, codec) {
                    // The same codec with the same format parameters (H.264's
                    // packetization mode and profile), else the same codec and clock.
                    (Some(params), _) => config
                        .match_params(*params)
                        .filter(|c| remote.contains(&c.pt()))
                        .or_else(|| {
                            let want = params.spec();
                            config.find(|c| {
                                let spec = c.spec();
                                remote.contains(&c.pt())
                                    && spec.codec == want.codec
                                    && spec.clock_rate == want.clock_rate
                                    && (spec.codec != Codec::H264
                                        || spec.format.packetization_mode
                                            == want.format.packetization_mode)
                            })
                        }),
                    // A relayed packet: the first payload type of the same codec and clock.
                    (None, Some(c)) => config.find(|p| {
                        let spec = p.spec();
                        remote.contains(&p.pt())
                            && spec.codec == c.codec
                            && spec.clock_rate.get() == c.clock_rate
                    }),
                    (None, None) => None,
                };
                found.map(|c| (c.pt(), c.resend().is_some()))
            }
        };
        let Some((pt, rtx)) = chosen else {
            // write_rtp would drop an unknown payload type silently: count it here (a codec
            // the subscriber did not accept; RED never gets here, as the node does not
            // negotiate it: `tests_red.rs`).
            if pkt.start.frame || !detects {
                self.stats.frames_no_codec += 1;
            }
            return;
        };
        out.pt = Some((source_pt, pt, rtx));
        if gate.is_some() {
            // The wait ends here: the packets held back are not loss, so the numbering goes on
            // from the last packet sent, with no gap for the viewer to NACK.
            out.rewriter.detach();
        }
        let clock = codec.map_or(90_000, |c| c.clock_rate);
        let packet = Packet {
            source,
            seq: pkt.seq,
            time: pkt.time,
            arrival: pkt.arrival,
        };
        // A layer's keyframe from a source the rewriter does not follow: the selector moved
        // while this subscriber was not written to (silent, above), so the two must meet here
        // or every packet of the new layer would be dropped as not followed.
        let switch = switch
            || (pkt.layer.is_some()
                && pkt.start.keyframe
                && out.rewriter.source().is_some_and(|f| f != source));
        let m = match out.rewriter.rewrite(&packet, clock, switch) {
            Rewrite::Forward(m) => m,
            Rewrite::Drop(_) => {
                self.stats.packets_not_rewritten += 1;
                return;
            }
        };
        if m.resynced {
            self.stats.packets_resynced += 1;
        }
        // Only video with RTX is repaired (Opus conceals its own loss): only its packets are
        // kept to answer NACKs.
        let nackable = rtx && codec.is_some_and(|c| !c.codec.is_audio());
        // Checked when that changes, not per packet (a map lookup on the hottest path).
        if out.window_for != Some(nackable)
            && repair_window::ensure(&mut s.rtc, &mut s.repair_window, mid, nackable)
        {
            out.window_for = Some(nackable);
        }
        let mut write = RtpWrite::new(
            pt,
            SeqNo::from(m.seq),
            m.time,
            pkt.arrival,
            pkt.payload.clone(),
        )
        .marker(pkt.marker)
        .nackable(nackable);
        let h = &pkt.hdr;
        if h.audio_level.is_some() || h.voice_activity.is_some() || h.video_orientation.is_some() {
            write = write.ext_vals(ExtensionValues {
                audio_level: h.audio_level,
                voice_activity: h.voice_activity,
                video_orientation: h.video_orientation,
                ..ExtensionValues::default()
            });
        }
        if codec.is_some_and(|c| c.codec == Codec::Vp8)
            && let Ok(d) = Vp8Descriptor::parse(&pkt.payload)
            && let Some(patch) = out.vp8.patch(source, &d, m.switched || m.resynced)
        {
            write = write.vp8_patch(patch);
        }
        let mut api = s.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            return;
        };
        tx.write_rtp(write);
        if pkt.start.frame {
            self.stats.frames_forwarded += 1;
        }
        // The wait ends with a keyframe the subscriber can decode, once it can receive it.
        if gate.is_some() && s.state.is_connected() {
            s.awaiting_keyframe.remove(&mid);
        }
        // str0m sends written packets on its next clock input. That input and the drain after
        // it cost about as much as the write: given once per session at the end of the batch
        // of input (`flush_written_media`), the packets of a frame that arrived together
        // leave after one of each rather than one per packet. But no more than
        // `FLUSH_AFTER_PACKETS` wait: str0m's send queue keeps, for the session's life, the
        // room it once needed (408 bytes a packet), and a busy batch can bring many.
        if s.media_pending == 0 {
            self.media_written.push(sub);
        }
        s.media_pending = s.media_pending.saturating_add(1);
        let flush_now = s.media_pending >= FLUSH_AFTER_PACKETS;
        let first_media = matches!(
            s.state,
            SessionState::Connected {
                media_flowed: false
            }
        );
        self.media_written_at = Some(now);
        if first_media {
            self.media_flowing(sub, now);
        }
        if flush_now {
            self.transmits_interleaved = true;
            self.flush_session(sub, now);
        }
    }

    /// Gives every session [`Engine::write_to_session`] wrote to its clock input and drains it,
    /// so the packets written leave. Called when the batch of input ends (`handle_timeout`),
    /// and by `poll_transmit` and `poll_timeout` so no driver can leave them behind.
    pub(super) fn flush_written_media(&mut self, now: Instant) {
        if self.media_written.is_empty() {
            return;
        }
        self.media_written_at = None;
        for sub in std::mem::take(&mut self.media_written) {
            self.flush_session(sub, now);
        }
    }

    /// Sends what was written to one session (nothing if it was flushed since).
    fn flush_session(&mut self, sub: SessionId, now: Instant) {
        let Some(s) = self.sessions.get_mut(&sub) else {
            return;
        };
        if s.media_pending == 0 {
            return;
        }
        s.media_pending = 0;
        if let Err(e) = s.rtc.handle_input(Input::Timeout(now)) {
            tracing::debug!(session = %sub, error = %e, "timeout after write failed");
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
    /// layered publication, the cached keyframe of the layer the subscriber starts on. Only a
    /// complete one (every packet, up to the marker bit) is served.
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
        let clock = codec.map_or(90_000, |c| c.clock_rate);
        let (packets, in_step, source, switched) = if p.layers.is_layered() {
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
            let Some(k) = l.data.cache.keyframe().filter(|k| k.complete) else {
                return;
            };
            let Some(first) = k.packets.first() else {
                return;
            };
            let layer = Some((rid, l.epoch()));
            let f = LayerFrame {
                rid,
                epoch: l.epoch(),
                keyframe: true,
                time: first.header.ext_time,
                arrival: now,
            };
            let Verdict::Forward { switched, .. } = selector.on_frame(&p.layers, f, clock) else {
                return;
            };
            let packets: Vec<Pkt> = k
                .packets
                .iter()
                .map(|c| Pkt::from_cached(c, layer))
                .collect();
            (
                packets,
                k.frames_after == 0,
                source_of(p.uid, Some(rid), l.epoch()),
                switched,
            )
        } else {
            let Some(k) = p.cache.keyframe().filter(|k| k.complete) else {
                return;
            };
            let packets: Vec<Pkt> = k
                .packets
                .iter()
                .map(|c| Pkt::from_cached(c, None))
                .collect();
            (
                packets,
                k.frames_after == 0,
                source_of(p.uid, None, p.epoch),
                true,
            )
        };
        if switched && p.layers.is_layered() {
            self.stats.simulcast.switches += 1;
        }
        self.stats.keyframes_from_cache += 1;
        // The cached keyframe is the newest frame: the live packets that follow build on it, so
        // the subscriber can take them at once. Its first packet starts the source for the
        // subscriber; the rest follow it.
        for (n, pkt) in packets.iter().enumerate() {
            self.write_to_session(sub, mid, pkt, source, n == 0, codec, now);
        }
        // Otherwise the delta frames that follow reference frames after the cached keyframe,
        // which this subscriber never got: keep holding them until the next live keyframe.
        if let Some(s) = self.sessions.get_mut(&sub)
            && !in_step
        {
            s.awaiting_keyframe.insert(mid, since);
        }
    }

    /// The cached keyframe of a publication (of a layered one, of each layer), as packets for
    /// a new downstream relay subscription: only a complete one that no frame has followed yet.
    /// The downstream has been getting the live packets since it subscribed, so a keyframe older
    /// than the last of them would be followed by deltas that do not build on it (the other
    /// node's viewers would lose the frames in between, or decode garbage); it waits for the
    /// live keyframe its request brings instead.
    pub(super) fn cached_relay_keyframes(&self, key: &TrackKey, down: DownId) -> Vec<RelayFrame> {
        let Some(p) = self.publications.get(key) else {
            return Vec::new();
        };
        let frames = |cache: &PacketCache<PktHdr>, layer: Option<(Rid, u32)>| -> Vec<RelayFrame> {
            cache
                .keyframe()
                .filter(|k| k.complete && k.frames_after == 0)
                .map(|k| {
                    k.packets
                        .iter()
                        .map(|c| relay_frame_of(&Pkt::from_cached(c, layer)))
                        .collect()
                })
                .unwrap_or_default()
        };
        if !p.layers.is_layered() {
            return frames(&p.cache, None);
        }
        p.layers
            .layers()
            .iter()
            .filter(|l| self.relay_down_carries(down, l.rid))
            .flat_map(|l| frames(&l.data.cache, Some((l.rid, l.epoch()))))
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
        let per_layer: Option<Vec<Rid>> = match p.source {
            Source::Session(_) if p.layers.is_layered() => Some(p.layers.flowing(now).collect()),
            Source::Relay(_) if p.layers.is_declared() => Some(
                p.layers
                    .layers()
                    .iter()
                    .map(|l| l.rid)
                    .filter(|r| p.upstream_layers.carries(*r))
                    .collect(),
            ),
            _ => None,
        };
        if let Some(rids) = per_layer {
            // Each layer folds (and defers) its own requests. A whole-track request deferred
            // before the layers were known is answered here: left pending, housekeeping would
            // come back every 250 ms and ask each layer again, once a second for ever.
            p.keyframe_pending = false;
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
                // A request to another worker of this node is counted there, where it becomes
                // the PLI (or the request up the relay) that is actually sent.
                if !up.is_in_process() {
                    self.stats.keyframe_requests += 1;
                }
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
                // As above: counted by the worker that sends it on.
                if !up.is_in_process() {
                    self.stats.keyframe_requests += 1;
                }
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
        match s.rtc.direct_api().stream_rx_by_mid(mid, rid) {
            Some(rx) => {
                rx.request_keyframe(KeyframeRequestKind::Pli);
                self.stats.keyframe_requests += 1;
            }
            // Nothing received yet on that mid (or layer): there is no stream to ask.
            None => {
                tracing::debug!(session = %publisher, %mid, "keyframe request not sent: no stream yet")
            }
        }
        self.drain(publisher, now);
    }
}

/// A packet as it crosses a relay link: one RTP packet per relayed frame, with the origin's
/// numbering.
fn relay_frame_of(pkt: &Pkt) -> RelayFrame {
    RelayFrame {
        // Extended, so the other node reads no jump at a wrap of the 32-bit clock.
        rtp_time: pkt.hdr.ext_time,
        origin_seq: pkt.seq,
        marker: pkt.marker,
        keyframe: pkt.start.keyframe,
        data: pkt.payload.clone(),
        rid: pkt.layer.map(|(rid, _)| rid),
        orientation: pkt.hdr.video_orientation,
    }
}
