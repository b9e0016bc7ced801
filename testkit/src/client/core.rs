//! The client without I/O: a str0m `Rtc` (full ICE), the offer/answer state, the synthetic
//! sources of the sending mids, and the counters. Datagrams and time come in as arguments;
//! datagrams go out through the caller's `send` function. After every mutation of the `Rtc`
//! the caller drains `poll_output` until `Output::Timeout` ([`Core::drain`]), as str0m requires.
//!
//! Three drivers run it: a std thread and a tokio task (real sockets, wall clock, counters shared
//! with the [`super::Client`] handle behind a mutex), and the node's in-memory engine world
//! (`trackmesh_node::testing`: datagrams in memory, a simulated clock, counters owned by the core
//! so its one thread takes no lock).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, MediaTime, Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use super::counters::ClientStats;
use crate::media::{Source, VideoShape};

/// Bound on outputs drained after one mutation.
const MAX_OUTPUTS_PER_DRAIN: usize = 10_000;
/// DataChannel messages a core keeps until taken; older ones are dropped (a test reads them often).
pub const MAX_CHANNEL_MESSAGES: usize = 100_000;

/// Where a datagram goes out: the driver's socket.
pub type SendFn<'a> = dyn FnMut(SocketAddr, &[u8]) -> std::io::Result<()> + 'a;

/// Lock the counters; a poisoned lock only means a panic elsewhere, the counters stay usable.
pub(super) fn lock(stats: &Mutex<ClientStats>) -> MutexGuard<'_, ClientStats> {
    stats.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counters shared between a driver's core and the [`super::Client`] handle that reads them.
pub type SharedStats = Arc<Mutex<ClientStats>>;

/// Where a core keeps its counters: [`SharedStats`] for the thread and task drivers, whose
/// handle reads them while the driver runs; a plain [`ClientStats`] for a driver that reads
/// them on its own thread (the in-memory world), so counting a frame takes no lock.
pub trait StatsCell {
    /// Run `f` on the counters.
    fn update<R>(&mut self, f: impl FnOnce(&mut ClientStats) -> R) -> R;
}

impl StatsCell for SharedStats {
    fn update<R>(&mut self, f: impl FnOnce(&mut ClientStats) -> R) -> R {
        f(&mut lock(self))
    }
}

impl StatsCell for ClientStats {
    fn update<R>(&mut self, f: impl FnOnce(&mut ClientStats) -> R) -> R {
        f(self)
    }
}

/// A synthetic source on one sending mid, with its payload type once known.
struct Sending {
    mid: Mid,
    pt: Option<Pt>,
    source: Source,
    /// A simulcast layer's rid and video shape (its own bitrate), else the core's video.
    layer: Option<(Rid, VideoShape)>,
}

/// The state a driver owns; jobs from the client handle get `&mut Core`.
pub struct Core<S: StatsCell = SharedStats> {
    rtc: Rtc,
    local: SocketAddr,
    /// UDP, or TCP for an ICE-TCP client (an active TCP candidate, RFC 6544).
    proto: Protocol,
    stats: S,
    sending: Vec<Sending>,
    pending: Option<SdpPendingOffer>,
    next_timeout: Instant,
    /// Give the `Rtc` a clock input on the next drain (see [`Core::accept_answer`]).
    kick: bool,
    video: VideoShape,
    raw_samples: usize,
    /// A job asked the driver to move to a new socket (a client changing network).
    rebind: bool,
    /// DataChannel messages received, oldest first, at most [`MAX_CHANNEL_MESSAGES`].
    channel_rx: std::collections::VecDeque<(str0m::channel::ChannelId, Vec<u8>, Instant)>,
}

impl Core {
    /// A core whose host candidate is `local` (the driver's socket address), with counters
    /// shared with the client handle.
    pub fn new(
        local: SocketAddr,
        now: Instant,
        video: VideoShape,
        raw_samples: usize,
    ) -> anyhow::Result<Core> {
        let stats = Arc::new(Mutex::new(ClientStats::new(now)));
        Core::with_stats(local, Protocol::Udp, now, video, raw_samples, stats)
    }

    /// A core for a client behind TURN: its only candidate is the relayed address, reached
    /// through the socket at `local`.
    pub fn new_relayed(
        relayed: SocketAddr,
        local: SocketAddr,
        now: Instant,
        video: VideoShape,
        raw_samples: usize,
    ) -> anyhow::Result<Core> {
        let stats = Arc::new(Mutex::new(ClientStats::new(now)));
        let mut core = Core::with_stats(local, Protocol::Udp, now, video, raw_samples, stats)?;
        let host = Candidate::host(local, "udp").context("host candidate")?;
        core.rtc.direct_api().invalidate_candidate(&host);
        let relay = Candidate::relayed(relayed, local, "udp").context("relayed candidate")?;
        core.rtc
            .add_local_candidate(relay)
            .ok_or_else(|| anyhow!("str0m rejected the relayed candidate {relayed}"))?;
        Ok(core)
    }

    /// A core for an ICE-TCP client whose connection's local address is `local`: its only
    /// candidate is an active TCP one, so it pairs only with the server's passive TCP candidate.
    pub fn new_tcp(
        local: SocketAddr,
        now: Instant,
        video: VideoShape,
        raw_samples: usize,
    ) -> anyhow::Result<Core> {
        let stats = Arc::new(Mutex::new(ClientStats::new(now)));
        Core::with_stats(local, Protocol::Tcp, now, video, raw_samples, stats)
    }

    /// The counters, shared with the client handle.
    pub fn stats(&self) -> SharedStats {
        self.stats.clone()
    }
}

impl Core<ClientStats> {
    /// A core for a driver without sockets or threads (the in-memory engine world): it owns its
    /// counters, and its time is whatever the driver passes.
    pub fn in_memory(local: SocketAddr, now: Instant) -> anyhow::Result<Core<ClientStats>> {
        Core::with_stats(
            local,
            Protocol::Udp,
            now,
            VideoShape::default(),
            0,
            ClientStats::new(now),
        )
    }

    /// The counters.
    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }
}

impl<S: StatsCell> Core<S> {
    fn with_stats(
        local: SocketAddr,
        proto: Protocol,
        now: Instant,
        video: VideoShape,
        raw_samples: usize,
        stats: S,
    ) -> anyhow::Result<Core<S>> {
        let mut rtc = RtcConfig::new().build(now);
        let candidate = match proto {
            Protocol::Tcp => Candidate::builder()
                .tcp()
                .host(local)
                .tcptype(TcpType::Active)
                .build(),
            _ => Candidate::host(local, "udp"),
        }
        .context("host candidate")?;
        rtc.add_local_candidate(candidate)
            .ok_or_else(|| anyhow!("str0m rejected the host candidate {local}"))?;
        Ok(Core {
            rtc,
            local,
            proto,
            stats,
            sending: Vec::new(),
            pending: None,
            next_timeout: now,
            kick: false,
            video,
            raw_samples,
            rebind: false,
            channel_rx: std::collections::VecDeque::new(),
        })
    }

    /// The DataChannel messages received since the last call, oldest first, with the channel
    /// each came on.
    pub fn take_channel_messages(&mut self) -> Vec<(str0m::channel::ChannelId, Vec<u8>)> {
        self.channel_rx
            .drain(..)
            .map(|(id, d, _)| (id, d))
            .collect()
    }

    /// The same, with when each message arrived (for latency figures).
    pub fn take_channel_messages_timed(
        &mut self,
    ) -> Vec<(str0m::channel::ChannelId, Vec<u8>, Instant)> {
        self.channel_rx.drain(..).collect()
    }

    pub fn rtc(&mut self) -> &mut Rtc {
        &mut self.rtc
    }

    /// The address of its socket (and host candidate).
    pub fn local(&self) -> SocketAddr {
        self.local
    }

    /// Asks the driver to bind a new socket after this job, as a client that changed network
    /// (only the thread driver does; the task driver records an error).
    pub fn request_rebind(&mut self) {
        self.rebind = true;
    }

    /// Whether a rebind was asked for (cleared).
    pub(super) fn take_rebind(&mut self) -> bool {
        std::mem::take(&mut self.rebind)
    }

    /// The driver's socket is now `local`: the old host candidate is gone, the new one is offered
    /// in the next offer (an ICE restart is what makes the remote use it).
    pub(super) fn moved_to(&mut self, local: SocketAddr) -> anyhow::Result<()> {
        let old = Candidate::host(self.local, "udp").context("old host candidate")?;
        self.rtc.direct_api().invalidate_candidate(&old);
        let new = Candidate::host(local, "udp").context("new host candidate")?;
        self.rtc
            .add_local_candidate(new)
            .ok_or_else(|| anyhow!("str0m rejected the host candidate {local}"))?;
        self.local = local;
        Ok(())
    }

    /// Keep `e` among the counters' first errors.
    pub(super) fn record_error(&mut self, e: impl std::fmt::Display) {
        self.stats.update(|s| s.error(e));
    }

    /// When the core next needs the driver: the `Rtc`'s timeout or the next media frame
    /// (frames wait for the connection, so a past due time does not spin before it).
    pub fn poll_timeout(&self) -> Instant {
        let media = if self.rtc.is_connected() {
            self.sending.iter().map(|s| s.source.next_due()).min()
        } else {
            None
        };
        media.map_or(self.next_timeout, |m| m.min(self.next_timeout))
    }

    /// Drain `poll_output` until `Output::Timeout`. An error is fatal for the `Rtc`.
    /// A client bound to loopback sends only to loopback.
    pub fn drain(&mut self, now: Instant, send: &mut SendFn<'_>) -> anyhow::Result<()> {
        let loopback_only = self.local.ip().is_loopback();
        if std::mem::take(&mut self.kick) {
            self.rtc.handle_input(Input::Timeout(now))?;
        }
        for _ in 0..MAX_OUTPUTS_PER_DRAIN {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => {
                    self.next_timeout = t;
                    return Ok(());
                }
                Output::Transmit(t) => {
                    if loopback_only && !t.destination.ip().is_loopback() {
                        self.record_error(format!("refusing to send to {}", t.destination));
                        continue;
                    }
                    if let Err(e) = send(t.destination, &t.contents) {
                        self.stats.update(|s| {
                            s.send_errors += 1;
                            s.error(format!("send_to {}: {e}", t.destination));
                        });
                    }
                }
                Output::Event(ev) => self.on_event(ev, now),
            }
        }
        bail!("poll_output did not reach Output::Timeout within {MAX_OUTPUTS_PER_DRAIN} outputs")
    }

    fn on_event(&mut self, ev: Event, now: Instant) {
        match ev {
            Event::Connected => self.stats.update(|s| {
                s.connected = true;
                s.connected_at.get_or_insert(now);
            }),
            Event::IceConnectionStateChange(st) => {
                self.stats.update(|s| s.ice_state = format!("{st:?}"))
            }
            // A receiving mid is counted from its negotiation, so "every track receives" cannot
            // hold before each one got a frame.
            Event::MediaAdded(m) if m.direction.is_receiving() => {
                self.stats.update(|s| s.expect_rx(&m.mid, m.kind));
            }
            Event::MediaData(d) => {
                let video = !d.params.spec().codec.is_audio();
                let keyframe = video && d.is_keyframe();
                let raw_samples = self.raw_samples;
                self.stats.update(|s| {
                    s.on_frame(&d.mid, video, keyframe, &d.data, now, raw_samples);
                    s.on_frame_time(&d.mid, d.data.len(), d.time, now);
                    s.on_frame_seq(&d.mid, **d.seq_range.start(), **d.seq_range.end());
                    s.on_frame_twcc(&d.mid, d.ext_vals.transport_cc.is_some());
                    s.on_frame_orientation(&d.mid, d.ext_vals.video_orientation);
                });
            }
            Event::ChannelData(d) => {
                if self.channel_rx.len() >= MAX_CHANNEL_MESSAGES {
                    self.channel_rx.pop_front();
                }
                self.channel_rx.push_back((d.id, d.data, now));
            }
            Event::KeyframeRequest(r) => {
                self.stats
                    .update(|s| s.on_keyframe_request(&r.mid, r.rid.as_deref()));
                // A request for a layer goes to that layer's source only.
                let wanted = |s: &&mut Sending| {
                    s.mid == r.mid && (r.rid.is_none() || s.layer.map(|(rid, _)| rid) == r.rid)
                };
                for s in self.sending.iter_mut().filter(wanted) {
                    s.source.request_keyframe();
                }
            }
            _ => {}
        }
    }

    /// A datagram from `source` arrived at `now`. Datagrams str0m cannot classify are dropped.
    pub fn receive(
        &mut self,
        now: Instant,
        source: SocketAddr,
        bytes: &[u8],
        send: &mut SendFn<'_>,
    ) -> anyhow::Result<()> {
        self.stats.update(|s| s.on_datagram(bytes));
        let Ok(contents) = bytes.try_into() else {
            return Ok(());
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: self.proto,
                source,
                destination: self.local,
                contents,
            },
        );
        if self.rtc.accepts(&input) {
            self.rtc.handle_input(input)?;
            self.drain(now, send)?;
        }
        Ok(())
    }

    /// Time passed: the `Rtc`'s timers when due, then every media frame that is due.
    pub fn tick(&mut self, now: Instant, send: &mut SendFn<'_>) -> anyhow::Result<()> {
        if self.kick || self.next_timeout <= now {
            self.handle_timeout(now, send)?;
        }
        self.send_due_media(now, send)
    }

    /// Bring the `Rtc`'s clock to `now` whether or not a timer is due (str0m packetizes a
    /// written frame on its next clock input), then drain.
    pub fn handle_timeout(&mut self, now: Instant, send: &mut SendFn<'_>) -> anyhow::Result<()> {
        self.kick = false;
        self.rtc.handle_input(Input::Timeout(now))?;
        self.drain(now, send)
    }

    /// The payload type of `codec` negotiated on `mid`.
    pub fn payload_type(&mut self, mid: Mid, codec: Codec) -> anyhow::Result<Pt> {
        self.rtc
            .writer(mid)
            .ok_or_else(|| anyhow!("no writer for mid {mid}"))?
            .payload_params()
            .find(|p| p.spec().codec == codec)
            .map(|p| p.pt())
            .ok_or_else(|| anyhow!("no {codec:?} negotiated on mid {mid}"))
    }

    /// Write one frame on `mid` and count it as sent; it goes out on the next clock input.
    /// `keyframe` is only counted.
    pub fn write_frame(
        &mut self,
        mid: Mid,
        pt: Pt,
        now: Instant,
        rtp_time: MediaTime,
        data: Vec<u8>,
        keyframe: bool,
    ) -> anyhow::Result<()> {
        let len = data.len() as u64;
        self.rtc
            .writer(mid)
            .ok_or_else(|| anyhow!("no writer for mid {mid}"))?
            .write(pt, now, rtp_time, data)
            .with_context(|| format!("write on mid {mid}"))?;
        self.stats.update(|s| s.on_sent(&mid, keyframe, len));
        Ok(())
    }

    /// Write one frame of simulcast layer `rid` on `mid` and count it as sent.
    fn write_layer_frame(
        &mut self,
        mid: Mid,
        rid: Rid,
        pt: Pt,
        now: Instant,
        frame: crate::media::Frame,
    ) -> anyhow::Result<()> {
        let len = frame.data.len() as u64;
        self.rtc
            .writer(mid)
            .ok_or_else(|| anyhow!("no writer for mid {mid}"))?
            .rid(rid)
            .write(pt, now, frame.rtp_time, frame.data)
            .with_context(|| format!("write on mid {mid} rid {rid}"))?;
        self.stats.update(|s| s.on_sent(&mid, frame.keyframe, len));
        Ok(())
    }

    /// Write every due frame; each write is followed by a drain.
    fn send_due_media(&mut self, now: Instant, send: &mut SendFn<'_>) -> anyhow::Result<()> {
        if self.sending.is_empty() || !self.rtc.is_connected() {
            return Ok(());
        }
        for i in 0..self.sending.len() {
            let Some(s) = self.sending.get_mut(i) else {
                break;
            };
            let video = s.layer.map_or(self.video, |(_, v)| v);
            let Some(frame) = s.source.next_frame(now, &video) else {
                continue;
            };
            let (mid, cached_pt, rid) = (s.mid, s.pt, s.layer.map(|(rid, _)| rid));
            let codec = match s.source.kind() {
                MediaKind::Audio => Codec::Opus,
                MediaKind::Video => Codec::Vp8,
            };
            let pt = match cached_pt.map_or_else(|| self.payload_type(mid, codec), Ok) {
                Ok(pt) => pt,
                Err(e) => {
                    self.record_error(e);
                    self.frame_not_sent(i);
                    continue;
                }
            };
            if let Some(s) = self.sending.get_mut(i) {
                s.pt = Some(pt);
            }
            let written = match rid {
                None => self.write_frame(mid, pt, now, frame.rtp_time, frame.data, frame.keyframe),
                Some(rid) => self.write_layer_frame(mid, rid, pt, now, frame),
            };
            if let Err(e) = written {
                self.record_error(format!("{e:#}"));
                self.frame_not_sent(i);
            }
            self.drain(now, send)?;
        }
        Ok(())
    }

    /// Sending `i`'s last frame never left: its next video frame is a keyframe, as the delta
    /// would reference a frame no receiver got (and their decoder model would count it broken).
    fn frame_not_sent(&mut self, i: usize) {
        if let Some(s) = self.sending.get_mut(i) {
            s.source.request_keyframe();
        }
    }

    /// The driver's loop ended with `result`: disconnect, flush, and mark the client stopped.
    pub fn finish(&mut self, result: anyhow::Result<()>, send: &mut SendFn<'_>) {
        self.rtc.disconnect();
        let _ = self.drain(Instant::now(), send);
        self.stats.update(|s| {
            if let Err(e) = result {
                s.error(format!("client stopped: {e:#}"));
            }
            s.stopped = true;
        });
    }

    // ---- SDP ----------------------------------------------------------------------------------

    /// add_media(kind, SendOnly) for each kind, apply() → offer. Returns (mids, offer SDP).
    pub fn create_send_offer(
        &mut self,
        kinds: &[MediaKind],
    ) -> anyhow::Result<(Vec<String>, String)> {
        self.create_offer(kinds, Direction::SendOnly)
    }

    /// add_media(kind, RecvOnly) for each kind, apply() → offer (a WHEP viewer's, or a pull
    /// with the client's offer). Returns (mids, offer SDP).
    pub fn create_recv_offer(
        &mut self,
        kinds: &[MediaKind],
    ) -> anyhow::Result<(Vec<String>, String)> {
        self.create_offer(kinds, Direction::RecvOnly)
    }

    fn create_offer(
        &mut self,
        kinds: &[MediaKind],
        direction: Direction,
    ) -> anyhow::Result<(Vec<String>, String)> {
        if self.pending.is_some() {
            bail!("an offer is already pending");
        }
        let mut api = self.rtc.sdp_api();
        let mids: Vec<Mid> = kinds
            .iter()
            .map(|k| api.add_media(*k, direction, None, None, None))
            .collect();
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| anyhow!("apply() produced no offer"))?;
        self.pending = Some(pending);
        Ok((
            mids.iter().map(|m| m.to_string()).collect(),
            offer.to_sdp_string(),
        ))
    }

    /// add_media(Video, SendOnly) with these simulcast send layers (`a=simulcast`, `a=rid`, as
    /// Chromium offers them), apply() → offer. Returns (mid, offer SDP).
    pub fn create_simulcast_offer(&mut self, rids: &[&str]) -> anyhow::Result<(String, String)> {
        if self.pending.is_some() {
            bail!("an offer is already pending");
        }
        let mut simulcast = Simulcast::new();
        for rid in rids {
            simulcast.add_send_layer(SimulcastLayer::new(rid));
        }
        let mut api = self.rtc.sdp_api();
        let mid = api.add_media(
            MediaKind::Video,
            Direction::SendOnly,
            None,
            None,
            Some(simulcast),
        );
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| anyhow!("apply() produced no offer"))?;
        self.pending = Some(pending);
        Ok((mid.to_string(), offer.to_sdp_string()))
    }

    /// An offer adding a DataChannel `label` (opened in-band, DCEP), as the older Calls flow
    /// offers its `server-events` channel to `sessions/new`. Returns (the channel, offer SDP).
    pub fn create_channel_offer(
        &mut self,
        label: &str,
    ) -> anyhow::Result<(str0m::channel::ChannelId, String)> {
        if self.pending.is_some() {
            bail!("an offer is already pending");
        }
        let mut api = self.rtc.sdp_api();
        let chan = api.add_channel(label.to_string());
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| anyhow!("apply() produced no offer"))?;
        self.pending = Some(pending);
        Ok((chan, offer.to_sdp_string()))
    }

    /// An offer with new ICE credentials (an ICE restart), every transceiver as it is.
    pub fn ice_restart_offer(&mut self) -> anyhow::Result<String> {
        if self.pending.is_some() {
            bail!("an offer is already pending");
        }
        let mut api = self.rtc.sdp_api();
        api.ice_restart(true);
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| anyhow!("an ICE restart produced no offer"))?;
        self.pending = Some(pending);
        Ok(offer.to_sdp_string())
    }

    /// Accept the answer to our pending offer.
    pub fn accept_answer(&mut self, answer: SdpAnswer) -> anyhow::Result<()> {
        let pending = self
            .pending
            .take()
            .ok_or_else(|| anyhow!("no pending offer"))?;
        self.rtc.sdp_api().accept_answer(pending, answer)?;
        // str0m's ICE agent sets no timer of its own before its first clock input. An answer
        // that makes us the DTLS server (`a=setup:active`, as Live777 answers) starts no other
        // timer, so without this input the connectivity checks would never start.
        self.kick = true;
        Ok(())
    }

    /// Forget a pending offer (e.g. after the remote rejected it).
    pub fn drop_pending_offer(&mut self) {
        self.pending = None;
    }

    /// Accept a remote offer; returns our answer SDP.
    pub fn accept_offer(&mut self, offer: SdpOffer) -> anyhow::Result<String> {
        let answer = self.rtc.sdp_api().accept_offer(offer)?;
        self.kick = true;
        Ok(answer.to_sdp_string())
    }

    /// stop_media (stop = true) or set_direction(Inactive) for these mids, apply() → offer.
    /// Their sources stop.
    pub fn close_offer(&mut self, mids: &[Mid], stop: bool) -> anyhow::Result<String> {
        if self.pending.is_some() {
            bail!("an offer is already pending");
        }
        self.stop_sending(mids);
        let mut api = self.rtc.sdp_api();
        for m in mids {
            if stop {
                api.stop_media(*m);
            } else {
                api.set_direction(*m, Direction::Inactive);
            }
        }
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| anyhow!("no SDP change for mids {mids:?}"))?;
        self.pending = Some(pending);
        Ok(offer.to_sdp_string())
    }

    // ---- media --------------------------------------------------------------------------------

    /// Start a synthetic source on these (sending) mids; frames go out once connected.
    pub fn start_sending(&mut self, mids: &[Mid], now: Instant) -> anyhow::Result<()> {
        for mid in mids {
            let kind = self
                .rtc
                .media(*mid)
                .ok_or_else(|| anyhow!("no media with mid {mid}"))?
                .kind();
            self.sending.retain(|s| s.mid != *mid);
            self.sending.push(Sending {
                mid: *mid,
                pt: None,
                source: Source::new(kind, now),
                layer: None,
            });
        }
        Ok(())
    }

    /// Start one synthetic video source per simulcast layer of `mid`: (rid, kbps) each, with
    /// the core's frame rate and keyframe period.
    pub fn start_sending_layers(
        &mut self,
        mid: Mid,
        layers: &[(&str, u32)],
        now: Instant,
    ) -> anyhow::Result<()> {
        if self.rtc.media(mid).is_none() {
            bail!("no media with mid {mid}");
        }
        self.sending.retain(|s| s.mid != mid);
        for (rid, kbps) in layers {
            let shape = VideoShape::new(self.video.fps, *kbps, self.video.keyframe_interval())?;
            self.sending.push(Sending {
                mid,
                pt: None,
                source: Source::new(MediaKind::Video, now),
                layer: Some((Rid::from(*rid), shape)),
            });
        }
        Ok(())
    }

    /// Stop the sources on these mids (the transport stays up).
    pub fn stop_sending(&mut self, mids: &[Mid]) {
        self.sending.retain(|s| !mids.contains(&s.mid));
    }

    /// Stop every source.
    pub fn stop_all_sending(&mut self) {
        self.sending.clear();
    }

    /// Period of the video sources' keyframes (they also send one at the start and whenever
    /// the remote asks).
    pub fn set_keyframe_interval(&mut self, interval: Duration) {
        self.video.keyframe_interval_s = interval.as_secs_f64();
    }
}
