//! What a client did and saw: per-track receive and send counters, loss, latency and broken
//! video (a decoder model, [`super::decoder`]) from the frames' stamps, and a measurement window
//! the load generator resets.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::time::Instant;

use str0m::media::{MediaKind, MediaTime};

use super::decoder::DecoderModel;
use crate::media::{micros_since_origin, read_stamp};
use crate::stats::Histogram;

/// Errors kept per client.
const MAX_ERRORS: usize = 32;
/// A received send time further than this from the receive time is not a latency sample.
const MAX_PLAUSIBLE_LATENCY_US: u64 = 60_000_000;
/// Keyframes remembered per video track (about 30 s of periodic ones at the test client's 2 s).
const RECENT_KEYFRAMES: usize = 16;

/// Counters of one received track that a measurement window resets.
#[derive(Clone, Debug, Default)]
pub struct RxWindow {
    pub frames: u64,
    pub keyframes: u64,
    pub bytes: u64,
    /// Frames missing between two received ones (sequence gaps).
    pub lost: u64,
    /// Frames that arrived with a sequence number at or below the highest seen.
    pub reordered: u64,
    /// Frames whose payload carried no plausible stamp.
    pub unstamped: u64,
    /// Frames between the first received frame and the next one (a cached keyframe served to a
    /// joining viewer, then live frames): skipped by design, not lost.
    pub skipped_at_join: u64,
    /// Video frames a decoder could not decode: a delta whose reference never came
    /// ([`super::decoder`]). A real decoder shows corruption or freezes on these.
    pub broken: u64,
    /// One-way latency, µs.
    pub latency: Histogram,
}

/// One received frame, by its stamped sequence number and arrival.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameMark {
    pub seq: u64,
    pub at: Instant,
}

/// What a client saw on one received track (mid), since it was negotiated.
#[derive(Clone, Debug)]
pub struct TrackRx {
    pub kind: MediaKind,
    pub frames: u64,
    pub keyframes: u64,
    pub bytes: u64,
    /// When str0m handed over the first frame / keyframe.
    pub first_frame_at: Option<Instant>,
    pub first_keyframe_at: Option<Instant>,
    /// The first frame was a keyframe (what a joining viewer needs to decode at once).
    pub first_frame_keyframe: bool,
    pub highest_seq: Option<u64>,
    /// Frames with a plausible stamp.
    pub stamped: u64,
    /// How old the first received frame was (µs from its send time), e.g. a cached keyframe.
    pub first_frame_age_us: Option<u64>,
    pub window: RxWindow,
    /// Size of the last frame (tells simulcast layers apart when they differ in size).
    pub last_len: u64,
    /// RTP media time of the last frame (clock ticks, as str0m extends it).
    pub last_time: Option<u64>,
    /// Frames whose media time was below the previous frame's.
    pub time_backwards: u64,
    /// Largest step between two consecutive frames' media times.
    pub max_time_step: u64,
    /// Largest difference (µs) between two consecutive frames' media time step and the time
    /// between their arrivals: media time that runs with the wallclock keeps it small.
    pub max_time_drift_us: u64,
    /// Frames that carried a transport-wide sequence number (the TWCC header extension).
    pub twcc_frames: u64,
    /// The video orientation (CVO header extension) of the last frame that carried one.
    pub last_orientation: Option<str0m::rtp::VideoOrientation>,
    /// Frames whose first RTP sequence number did not follow the previous frame's last (as
    /// str0m extends them): a gap, or numbering that jumped or went back (e.g. at a switch).
    pub rtp_seq_gaps: u64,
    /// The last RTP sequence number of the last frame.
    pub last_rtp_seq: Option<u64>,
    /// Video frames a decoder could not decode, since the track was negotiated (see
    /// [`RxWindow::broken`]).
    pub broken: u64,
    /// The newest broken video frame.
    pub last_broken: Option<FrameMark>,
    /// The first keyframe after [`TrackRx::last_broken`]: from there the picture is clean.
    pub healed_by: Option<FrameMark>,
    /// The last few stamped keyframes, oldest first ([`RECENT_KEYFRAMES`]).
    pub recent_keyframes: VecDeque<FrameMark>,
    decoder: DecoderModel,
    last_arrival: Option<Instant>,
}

impl TrackRx {
    fn new(kind: MediaKind) -> TrackRx {
        TrackRx {
            kind,
            frames: 0,
            keyframes: 0,
            bytes: 0,
            first_frame_at: None,
            first_keyframe_at: None,
            first_frame_keyframe: false,
            highest_seq: None,
            stamped: 0,
            first_frame_age_us: None,
            window: RxWindow::default(),
            last_len: 0,
            last_time: None,
            time_backwards: 0,
            max_time_step: 0,
            max_time_drift_us: 0,
            twcc_frames: 0,
            last_orientation: None,
            rtp_seq_gaps: 0,
            last_rtp_seq: None,
            broken: 0,
            last_broken: None,
            healed_by: None,
            recent_keyframes: VecDeque::new(),
            decoder: DecoderModel::default(),
            last_arrival: None,
        }
    }

    /// The first remembered keyframe with a sequence number at or above `seq`.
    pub fn keyframe_from(&self, seq: u64) -> Option<FrameMark> {
        self.recent_keyframes.iter().find(|k| k.seq >= seq).copied()
    }

    /// Run a stamped video frame through the decoder model and count it if it is broken.
    fn decode(&mut self, seq: u64, keyframe: bool, now: Instant) {
        let mark = FrameMark { seq, at: now };
        if keyframe {
            if self.recent_keyframes.len() >= RECENT_KEYFRAMES {
                self.recent_keyframes.pop_front();
            }
            self.recent_keyframes.push_back(mark);
        }
        if self.decoder.decode(seq, keyframe) {
            if keyframe && self.last_broken.is_some() && self.healed_by.is_none() {
                self.healed_by = Some(mark);
            }
        } else {
            self.broken += 1;
            self.window.broken += 1;
            self.last_broken = Some(mark);
            self.healed_by = None;
        }
    }
}

/// What a client sent on one track.
#[derive(Clone, Debug, Default)]
pub struct TrackTx {
    pub frames: u64,
    pub keyframes: u64,
    pub bytes: u64,
    pub window_frames: u64,
    pub window_keyframes: u64,
    pub window_bytes: u64,
}

/// The entry of `key`, created by `new` if missing. Unlike `HashMap::entry`, no key is
/// allocated when it is present: counting a frame allocates nothing.
fn slot<'a, T>(map: &'a mut HashMap<String, T>, key: &str, new: impl FnOnce() -> T) -> &'a mut T {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), new());
    }
    map.get_mut(key).expect("inserted above")
}

/// RTP, not RTCP (RFC 7983: first byte 128..=191; RFC 5761: RTCP packet types 192..=223 in the
/// second byte). The header is not encrypted by SRTP, so this holds before decryption.
pub fn is_rtp(b: &[u8]) -> bool {
    b.len() >= 12
        && matches!(b, [first, second, ..] if (128..=191).contains(first) && !(192..=223).contains(second))
}

/// One received frame, kept raw (see [`super::ClientConfig::raw_samples`]) to pair the same
/// frame across clients.
#[derive(Clone, Copy, Debug)]
pub struct RawSample {
    pub video: bool,
    pub seq: u64,
    pub latency_us: u64,
}

/// Everything a client records; read through [`super::Client::stats`].
#[derive(Clone, Debug)]
pub struct ClientStats {
    pub created_at: Instant,
    /// str0m emitted `Event::Connected` (ICE + DTLS done).
    pub connected: bool,
    pub connected_at: Option<Instant>,
    /// Last ICE connection state, as Debug text.
    pub ice_state: String,
    /// Received media per mid; a mid appears when negotiated as receiving.
    pub rx: HashMap<String, TrackRx>,
    /// Sent media (frames str0m accepted) per mid.
    pub tx: HashMap<String, TrackTx>,
    /// Keyframe requests (PLI/FIR) received from the remote, per mid.
    pub keyframe_requests: HashMap<String, u64>,
    /// The same for simulcast layers, per rid.
    pub layer_keyframe_requests: HashMap<String, u64>,
    /// Datagrams the socket did not take.
    pub send_errors: u64,
    /// Errors from str0m or the socket, first few; a fatal one stops the driver.
    pub errors: Vec<String>,
    pub raw: Vec<RawSample>,
    /// RTP datagrams received (told apart from RTCP, STUN and DTLS by their first two bytes,
    /// before decryption), so a load run counts packets the same way for any server.
    pub rtp_packets_in: u64,
    /// The same since the last [`ClientStats::reset_window`].
    pub window_rtp_packets_in: u64,
    /// The driver stopped.
    pub stopped: bool,
}

impl ClientStats {
    pub(super) fn new(now: Instant) -> ClientStats {
        ClientStats {
            created_at: now,
            connected: false,
            connected_at: None,
            ice_state: String::new(),
            rx: HashMap::new(),
            tx: HashMap::new(),
            keyframe_requests: HashMap::new(),
            layer_keyframe_requests: HashMap::new(),
            send_errors: 0,
            errors: Vec::new(),
            raw: Vec::new(),
            rtp_packets_in: 0,
            window_rtp_packets_in: 0,
            stopped: false,
        }
    }

    /// Count a received datagram if it is RTP.
    pub(super) fn on_datagram(&mut self, bytes: &[u8]) {
        if is_rtp(bytes) {
            self.rtp_packets_in += 1;
            self.window_rtp_packets_in += 1;
        }
    }

    pub(super) fn error(&mut self, e: impl std::fmt::Display) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(e.to_string());
        }
    }

    pub(super) fn expect_rx(&mut self, mid: &str, kind: MediaKind) {
        slot(&mut self.rx, mid, || TrackRx::new(kind));
    }

    pub(super) fn on_keyframe_request(&mut self, mid: &str, rid: Option<&str>) {
        *slot(&mut self.keyframe_requests, mid, || 0) += 1;
        if let Some(rid) = rid {
            *slot(&mut self.layer_keyframe_requests, rid, || 0) += 1;
        }
    }

    /// Account a received frame's transport-wide sequence number, if any (after
    /// [`Self::on_frame`]).
    pub(super) fn on_frame_twcc(&mut self, mid: &str, carried: bool) {
        if let Some(t) = self.rx.get_mut(mid)
            && carried
        {
            t.twcc_frames += 1;
        }
    }

    /// Account a received frame's video orientation, if it carried one (after
    /// [`Self::on_frame`]).
    pub(super) fn on_frame_orientation(
        &mut self,
        mid: &str,
        o: Option<str0m::rtp::VideoOrientation>,
    ) {
        if let Some(t) = self.rx.get_mut(mid)
            && o.is_some()
        {
            t.last_orientation = o;
        }
    }

    /// Account a received frame's size and media time (after [`Self::on_frame`]).
    /// A frame's RTP sequence numbers, first and last (str0m's extended `seq_range`).
    pub(super) fn on_frame_seq(&mut self, mid: &str, first: u64, last: u64) {
        let Some(t) = self.rx.get_mut(mid) else {
            return;
        };
        if t.last_rtp_seq
            .is_some_and(|prev| prev.wrapping_add(1) != first)
        {
            t.rtp_seq_gaps += 1;
        }
        t.last_rtp_seq = Some(last);
    }

    pub(super) fn on_frame_time(&mut self, mid: &str, len: usize, time: MediaTime, now: Instant) {
        let Some(t) = self.rx.get_mut(mid) else {
            return;
        };
        t.last_len = len as u64;
        let time_us = |ticks: u64| {
            let hz = u128::from(time.frequency().get().max(1));
            u64::try_from(u128::from(ticks) * 1_000_000 / hz).unwrap_or(u64::MAX)
        };
        if let (Some(last), Some(last_at)) = (t.last_time, t.last_arrival) {
            match time.numer().checked_sub(last) {
                Some(step) => {
                    t.max_time_step = t.max_time_step.max(step);
                    let arrived_us = now.saturating_duration_since(last_at).as_micros();
                    let arrived_us = u64::try_from(arrived_us).unwrap_or(u64::MAX);
                    let drift = time_us(step).abs_diff(arrived_us);
                    t.max_time_drift_us = t.max_time_drift_us.max(drift);
                }
                None => t.time_backwards += 1,
            }
        }
        t.last_time = Some(time.numer());
        t.last_arrival = Some(now);
    }

    /// Account one received frame: counters, then loss and latency from its stamp.
    pub(super) fn on_frame(
        &mut self,
        mid: &str,
        video: bool,
        keyframe: bool,
        data: &[u8],
        now: Instant,
        raw_samples: usize,
    ) {
        let now_us = micros_since_origin(now);
        let raw_room = self.raw.len() < raw_samples;
        let kind = if video {
            MediaKind::Video
        } else {
            MediaKind::Audio
        };
        let t = slot(&mut self.rx, mid, || TrackRx::new(kind));
        if t.first_frame_at.is_none() {
            t.first_frame_at = Some(now);
            t.first_frame_keyframe = keyframe;
        }
        t.frames += 1;
        t.bytes += data.len() as u64;
        t.window.frames += 1;
        t.window.bytes += data.len() as u64;
        if keyframe {
            t.first_keyframe_at.get_or_insert(now);
            t.keyframes += 1;
            t.window.keyframes += 1;
        }
        let (sent_us, seq) = match read_stamp(data) {
            Some((s, q)) if now_us.abs_diff(s) < MAX_PLAUSIBLE_LATENCY_US => (s, q),
            _ => {
                t.window.unstamped += 1;
                return;
            }
        };
        let latency = now_us.saturating_sub(sent_us);
        t.stamped += 1;
        if video {
            t.decode(seq, keyframe, now);
        }
        match t.highest_seq {
            // The first frame of a track may be an old keyframe the node kept for joining
            // viewers (edge keyframe cache): it is not a forwarding latency sample, and the
            // frames between it and the live ones are skipped by design, not lost.
            None => {
                t.highest_seq = Some(seq);
                t.first_frame_age_us = Some(latency);
            }
            Some(h) if seq > h => {
                if t.stamped == 2 {
                    t.window.skipped_at_join += seq - h - 1;
                } else {
                    t.window.lost += seq - h - 1;
                }
                t.highest_seq = Some(seq);
                t.window.latency.record(latency);
            }
            Some(_) => {
                t.window.reordered += 1;
                if t.stamped > 2 {
                    t.window.latency.record(latency);
                }
            }
        }
        if raw_room {
            self.raw.push(RawSample {
                video,
                seq,
                latency_us: latency,
            });
        }
    }

    pub(super) fn on_sent(&mut self, mid: &str, keyframe: bool, len: u64) {
        let t = slot(&mut self.tx, mid, TrackTx::default);
        t.frames += 1;
        t.bytes += len;
        t.window_frames += 1;
        t.window_bytes += len;
        if keyframe {
            t.keyframes += 1;
            t.window_keyframes += 1;
        }
    }

    /// Start a measurement window: reset every windowed counter and the raw samples. Totals,
    /// first-frame times and sequence positions are kept.
    pub fn reset_window(&mut self) {
        for t in self.rx.values_mut() {
            t.window = RxWindow::default();
        }
        for t in self.tx.values_mut() {
            t.window_frames = 0;
            t.window_keyframes = 0;
            t.window_bytes = 0;
        }
        self.raw.clear();
        self.window_rtp_packets_in = 0;
    }

    pub fn rx_bytes(&self, mid: &str) -> u64 {
        self.rx.get(mid).map_or(0, |c| c.bytes)
    }
    pub fn rx_frames(&self, mid: &str) -> u64 {
        self.rx.get(mid).map_or(0, |c| c.frames)
    }
    pub fn rx_keyframes(&self, mid: &str) -> u64 {
        self.rx.get(mid).map_or(0, |c| c.keyframes)
    }
    /// Video frames received on `mid` that a decoder could not decode.
    pub fn rx_broken(&self, mid: &str) -> u64 {
        self.rx.get(mid).map_or(0, |c| c.broken)
    }
    /// The video orientation of the last frame on `mid` that carried one.
    pub fn rx_orientation(&self, mid: &str) -> Option<str0m::rtp::VideoOrientation> {
        self.rx.get(mid)?.last_orientation
    }
    /// Whether the first frame received on `mid` was a keyframe; `None` before a frame.
    pub fn rx_first_is_keyframe(&self, mid: &str) -> Option<bool> {
        let t = self.rx.get(mid)?;
        t.first_frame_at.map(|_| t.first_frame_keyframe)
    }
    /// Keyframe requests received from the remote, on every mid.
    pub fn total_keyframe_requests(&self) -> u64 {
        self.keyframe_requests.values().sum()
    }
    pub fn tx_frames(&self, mid: &str) -> u64 {
        self.tx.get(mid).map_or(0, |c| c.frames)
    }
    pub fn tx_bytes(&self, mid: &str) -> u64 {
        self.tx.get(mid).map_or(0, |c| c.bytes)
    }
    pub fn total_rx_bytes(&self) -> u64 {
        self.rx.values().map(|c| c.bytes).sum()
    }

    /// Every received track has a first frame.
    pub fn all_receiving(&self) -> bool {
        !self.rx.is_empty() && self.rx.values().all(|t| t.first_frame_at.is_some())
    }

    /// Every received video track has a keyframe (true when there is no video track).
    pub fn all_keyframed(&self) -> bool {
        self.rx
            .values()
            .filter(|t| t.kind == MediaKind::Video)
            .all(|t| t.first_keyframe_at.is_some())
    }

    pub fn tx_window_frames(&self) -> u64 {
        self.tx.values().map(|t| t.window_frames).sum()
    }

    /// A few lines for a failure message: connection, frames per mid, errors.
    pub fn summary(&self) -> String {
        let mut o = format!(
            "connected: {}, ice: {}, stopped: {}",
            self.connected, self.ice_state, self.stopped
        );
        let mut rx: Vec<_> = self.rx.iter().collect();
        rx.sort_by_key(|(m, _)| *m);
        for (mid, t) in rx {
            let _ = write!(
                o,
                "\n  rx {mid} ({}): {} frames, {} keyframes, {} bytes",
                t.kind, t.frames, t.keyframes, t.bytes
            );
            if t.broken > 0 {
                let _ = write!(
                    o,
                    ", {} broken (last {:?}, healed by {:?})",
                    t.broken,
                    t.last_broken.map(|m| m.seq),
                    t.healed_by.map(|m| m.seq)
                );
            }
        }
        let mut tx: Vec<_> = self.tx.iter().collect();
        tx.sort_by_key(|(m, _)| *m);
        for (mid, t) in tx {
            let _ = write!(
                o,
                "\n  tx {mid}: {} frames, {} keyframes, {} bytes",
                t.frames, t.keyframes, t.bytes
            );
        }
        if !self.keyframe_requests.is_empty() {
            let _ = write!(o, "\n  keyframe requests: {:?}", self.keyframe_requests);
        }
        if self.send_errors > 0 {
            let _ = write!(o, "\n  send errors: {}", self.send_errors);
        }
        if !self.errors.is_empty() {
            let _ = write!(o, "\n  errors: {:?}", self.errors);
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{audio_frame, clock_origin, vp8_frame};
    use std::time::Duration;

    /// A joining viewer's first frame (a cached keyframe) is neither latency nor loss; the gap
    /// after it is "skipped at join"; later gaps are loss; old frames are reordered.
    #[test]
    fn loss_latency_and_join_skip_from_stamps() {
        clock_origin();
        let now = Instant::now() + Duration::from_secs(5);
        let mut s = ClientStats::new(now);
        let sent = micros_since_origin(now) - 1_000;
        let frame = |seq, key| vp8_frame(seq, key, 500, sent);
        s.on_frame("1", true, true, &frame(10, true), now, 10);
        s.on_frame("1", true, false, &frame(40, false), now, 10);
        s.on_frame("1", true, false, &frame(41, false), now, 10);
        s.on_frame("1", true, false, &frame(44, false), now, 10);
        s.on_frame("1", true, false, &frame(43, false), now, 10);
        s.on_frame("0", false, false, &[0u8; 4], now, 10);
        let t = &s.rx["1"];
        assert_eq!((t.frames, t.keyframes, t.stamped), (5, 1, 5));
        assert_eq!(s.rx_first_is_keyframe("1"), Some(true));
        assert_eq!(s.rx_first_is_keyframe("0"), Some(false));
        assert_eq!(s.rx_first_is_keyframe("9"), None);
        assert_eq!(t.first_frame_age_us, Some(1_000));
        let w = &t.window;
        assert_eq!((w.skipped_at_join, w.lost, w.reordered), (29, 2, 1));
        assert_eq!(w.latency.count(), 4);
        assert_eq!(s.rx["0"].window.unstamped, 1);
        assert_eq!(s.raw.len(), 5);
        assert!(s.all_receiving());

        s.reset_window();
        assert_eq!(s.rx["1"].window.frames, 0);
        assert_eq!(s.rx_frames("1"), 5);
        assert!(s.raw.is_empty());

        s.on_sent("2", false, audio_frame(0, sent).len() as u64);
        assert_eq!((s.tx_frames("2"), s.tx_window_frames()), (1, 1));
        s.expect_rx("3", MediaKind::Video);
        assert!(!s.all_receiving() && !s.all_keyframed());
        assert_eq!(
            s.rx_first_is_keyframe("3"),
            None,
            "negotiated, no frame yet"
        );

        s.on_keyframe_request("1", None);
        s.on_keyframe_request("1", None);
        s.on_keyframe_request("2", None);
        assert_eq!(s.keyframe_requests["1"], 2);
        assert_eq!(s.total_keyframe_requests(), 3);
    }

    /// Feed video frames `(seq, keyframe)` of mid "v" to fresh counters.
    fn video(frames: &[(u64, bool)]) -> ClientStats {
        clock_origin();
        let now = Instant::now() + Duration::from_secs(5);
        let mut s = ClientStats::new(now);
        let sent = micros_since_origin(now) - 1_000;
        for &(seq, key) in frames {
            s.on_frame("v", true, key, &vp8_frame(seq, key, 500, sent), now, 0);
        }
        s
    }

    /// A clean stream from a keyframe decodes whole, also after a join skip (a cached keyframe
    /// followed by the live frames after the next keyframe).
    #[test]
    fn a_clean_stream_has_no_broken_frame() {
        let mut frames = vec![(0, true)];
        frames.extend((1..200).map(|q| (q, q % 60 == 0)));
        let s = video(&frames);
        let t = &s.rx["v"];
        assert_eq!((t.frames, t.broken, t.window.broken), (200, 0, 0));
        assert_eq!((t.last_broken, t.healed_by), (None, None));
        let keys: Vec<u64> = t.recent_keyframes.iter().map(|k| k.seq).collect();
        assert_eq!(keys, [0, 60, 120, 180]);
        assert_eq!(t.keyframe_from(61).map(|k| k.seq), Some(120));
        assert_eq!(t.keyframe_from(181), None);

        let s = video(&[(5, true), (60, true), (61, false), (62, false)]);
        assert_eq!(
            (s.rx_broken("v"), s.rx["v"].window.skipped_at_join),
            (0, 54)
        );
        assert_eq!(s.rx_broken("nothing"), 0);
    }

    /// A lost frame breaks every delta after it until a keyframe, which heals the picture;
    /// the counters keep the last broken frame and the keyframe after it.
    #[test]
    fn a_gap_breaks_deltas_until_a_keyframe() {
        let s = video(&[
            (0, true),
            (1, false),
            (3, false),
            (4, false),
            (5, false),
            (6, true),
            (7, false),
        ]);
        let t = &s.rx["v"];
        assert_eq!((t.broken, t.window.broken, t.window.lost), (3, 3, 1));
        assert_eq!(t.last_broken.map(|m| m.seq), Some(5));
        assert_eq!(t.healed_by.map(|m| m.seq), Some(6));
        assert!(s.summary().contains("3 broken"), "{}", s.summary());

        // Not healed yet: broken again after the keyframe, or no keyframe so far.
        let s = video(&[(0, true), (2, false), (3, true), (5, false)]);
        let t = &s.rx["v"];
        assert_eq!(
            (t.broken, t.last_broken.map(|m| m.seq), t.healed_by),
            (2, Some(5), None)
        );
        // A first frame that is a delta has nothing to decode from.
        let mut s = video(&[(7, false), (8, false), (9, true)]);
        assert_eq!(s.rx_broken("v"), 2);
        s.reset_window();
        assert_eq!((s.rx_broken("v"), s.rx["v"].window.broken), (2, 0));
        // Audio is not decoded by the model.
        s.on_frame("a", false, false, &audio_frame(0, 0), Instant::now(), 0);
        s.on_frame("a", false, false, &audio_frame(5, 0), Instant::now(), 0);
        assert_eq!(s.rx_broken("a"), 0);
    }

    /// RTP datagrams are counted; RTCP, STUN, DTLS and runts are not; a window restarts them.
    #[test]
    fn counts_rtp_datagrams_only() {
        let mut s = ClientStats::new(Instant::now());
        let rtp = [0x80, 96, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xaa];
        let rtp_marker = [0x80, 96 | 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        let rtcp_rr = [0x81, 201, 0, 7, 0, 0, 0, 1, 0, 0, 0, 0];
        let stun = [0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0];
        let dtls = [22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        for d in [&rtp[..], &rtp_marker, &rtcp_rr, &stun, &dtls, &rtp[..4]] {
            s.on_datagram(d);
        }
        assert_eq!((s.rtp_packets_in, s.window_rtp_packets_in), (2, 2));
        s.reset_window();
        s.on_datagram(&rtp);
        assert_eq!((s.rtp_packets_in, s.window_rtp_packets_in), (3, 1));
    }
}
