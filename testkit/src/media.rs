//! Synthetic media, the one place fake frames are built: Opus-sized audio frames and
//! VP8-looking video frames, each stamped with its send time and a per-track frame sequence
//! number right after the codec header bytes, and [`Source`], which says when the next frame of
//! a track is due and whether it is a keyframe.
//!
//! Layout of every frame (big-endian):
//! - bytes `0..10`: codec header (Opus TOC byte; VP8 frame tag, and for a keyframe the start code
//!   at bytes 3..6 and the frame size), as the SFU and str0m inspect them;
//! - bytes `10..18`: send time, microseconds since [`clock_origin`];
//! - bytes `18..26`: frame sequence number of the track, starting at 0.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use str0m::media::{Frequency, MediaKind, MediaTime};

/// Where the send time goes: after the longest codec header inspected (a VP8 keyframe's frame
/// tag, start code and size take 10 bytes), so keyframe detection is unaffected.
pub const TIMESTAMP_OFFSET: usize = 10;
/// Where the per-track frame sequence number goes.
pub const SEQ_OFFSET: usize = TIMESTAMP_OFFSET + 8;
/// The shortest frame that carries both fields.
pub const MIN_FRAME_BYTES: usize = SEQ_OFFSET + 8;

/// Audio: one ~100-byte "Opus" frame every 20 ms (50 frames/s).
pub const AUDIO_FRAME_BYTES: usize = 100;
pub const AUDIO_INTERVAL: Duration = Duration::from_millis(20);
/// RTP clock ticks per audio frame (20 ms at 48 kHz).
pub const AUDIO_TICKS: u64 = 960;
/// RTP clock rate of video.
pub const VIDEO_CLOCK: u64 = 90_000;
/// The VP8 keyframe start code, at bytes 3..6 of a keyframe (RFC 6386, 9.1).
pub const VP8_START_CODE: [u8; 3] = [0x9d, 0x01, 0x2a];
/// A keyframe is this many times the size of a delta frame.
pub const KEYFRAME_FACTOR: usize = 5;
/// Bounds on the video settings (checked by [`VideoShape::new`]).
pub const MAX_FPS: u32 = 120;
pub const MAX_VIDEO_KBPS: u32 = 50_000;
/// Largest frame generated (a keyframe at the highest bitrate and lowest fps is capped here).
pub const MAX_FRAME_BYTES: usize = 512 * 1024;

/// Which tracks a publisher sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaMix {
    Audio,
    Video,
    Av,
}

impl MediaMix {
    pub fn has_audio(self) -> bool {
        matches!(self, MediaMix::Audio | MediaMix::Av)
    }
    pub fn has_video(self) -> bool {
        matches!(self, MediaMix::Video | MediaMix::Av)
    }
}

impl std::str::FromStr for MediaMix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "audio" => Ok(MediaMix::Audio),
            "video" => Ok(MediaMix::Video),
            "av" => Ok(MediaMix::Av),
            other => Err(format!("unknown media {other:?} (audio, video or av)")),
        }
    }
}

/// Frame rate, bitrate and keyframe period of the synthetic video.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct VideoShape {
    pub fps: u32,
    pub kbps: u32,
    /// Seconds between periodic keyframes (more are sent on keyframe requests).
    pub keyframe_interval_s: f64,
}

impl Default for VideoShape {
    fn default() -> Self {
        VideoShape {
            fps: 30,
            kbps: 1000,
            keyframe_interval_s: 2.0,
        }
    }
}

impl VideoShape {
    /// The test client's video: about the bitrate of a small webcam, so that many peers fit
    /// on a shared test machine.
    pub const LIGHT: VideoShape = VideoShape {
        fps: 30,
        kbps: 400,
        keyframe_interval_s: 2.0,
    };

    pub fn new(fps: u32, kbps: u32, keyframe_interval: Duration) -> anyhow::Result<VideoShape> {
        if !(1..=MAX_FPS).contains(&fps) {
            anyhow::bail!("--fps must be in 1..={MAX_FPS}");
        }
        if !(10..=MAX_VIDEO_KBPS).contains(&kbps) {
            anyhow::bail!("--video-kbps must be in 10..={MAX_VIDEO_KBPS}");
        }
        let ki = keyframe_interval.as_secs_f64();
        if !(0.1..=60.0).contains(&ki) {
            anyhow::bail!("--keyframe-interval must be between 0.1 s and 60 s");
        }
        Ok(VideoShape {
            fps,
            kbps,
            keyframe_interval_s: ki,
        })
    }

    pub fn frame_interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.fps.max(1)))
    }

    pub fn keyframe_interval(&self) -> Duration {
        Duration::from_secs_f64(self.keyframe_interval_s.max(0.1))
    }

    /// The most frames a [`Source`] sends from one periodic keyframe to the next: the first
    /// frame at least [`Self::keyframe_interval`] after a keyframe is one (61 for 30 fps and
    /// 2 s, as the frame interval rounds down to whole nanoseconds). A late sender drops frames
    /// rather than catching up, so it sends fewer, never more.
    pub fn frames_per_keyframe_interval(&self) -> u64 {
        let frame = self.frame_interval().as_nanos().max(1);
        u64::try_from(self.keyframe_interval().as_nanos().div_ceil(frame)).unwrap_or(u64::MAX)
    }

    /// RTP ticks (90 kHz) per frame.
    pub fn ticks_per_frame(&self) -> u64 {
        VIDEO_CLOCK / u64::from(self.fps.max(1))
    }

    /// Mean size of a delta frame: `(K-1)` delta frames and one keyframe of
    /// [`KEYFRAME_FACTOR`] deltas per keyframe period of `K` frames carry the bitrate.
    pub fn delta_bytes(&self) -> usize {
        let per_frame = f64::from(self.kbps) * 1000.0 / 8.0 / f64::from(self.fps.max(1));
        let k = (f64::from(self.fps) * self.keyframe_interval_s).max(1.0);
        let delta = per_frame * k / (k - 1.0 + KEYFRAME_FACTOR as f64);
        (delta as usize).clamp(MIN_FRAME_BYTES + 16, MAX_FRAME_BYTES / KEYFRAME_FACTOR)
    }

    /// Size of video frame `seq`: deltas vary by ±10 % around [`VideoShape::delta_bytes`].
    pub fn frame_bytes(&self, seq: u64, keyframe: bool) -> usize {
        let delta = self.delta_bytes();
        if keyframe {
            delta * KEYFRAME_FACTOR
        } else {
            let pct = 90 + (seq.wrapping_mul(37) % 21) as usize;
            (delta * pct / 100).max(MIN_FRAME_BYTES + 16)
        }
    }
}

static CLOCK_ORIGIN: OnceLock<Instant> = OnceLock::new();

/// The process-wide origin of the send times stamped into frames: sender and receiver of a
/// latency measurement must be in the same process.
pub fn clock_origin() -> Instant {
    *CLOCK_ORIGIN.get_or_init(Instant::now)
}

/// Microseconds from [`clock_origin`] to `t` (0 when `t` is earlier).
pub fn micros_since_origin(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(clock_origin()).as_micros()).unwrap_or(u64::MAX)
}

/// Fill `buf` with cheap deterministic bytes derived from `seed`.
fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    for chunk in buf.chunks_mut(8) {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let bytes = x.to_le_bytes();
        let n = chunk.len();
        chunk.copy_from_slice(&bytes[..n]);
    }
}

/// Write the send time and sequence number (the frame must be at least [`MIN_FRAME_BYTES`]).
pub fn stamp(frame: &mut [u8], send_us: u64, seq: u64) {
    if let Some(s) = frame.get_mut(TIMESTAMP_OFFSET..SEQ_OFFSET) {
        s.copy_from_slice(&send_us.to_be_bytes());
    }
    if let Some(s) = frame.get_mut(SEQ_OFFSET..MIN_FRAME_BYTES) {
        s.copy_from_slice(&seq.to_be_bytes());
    }
}

/// (send time µs, frame sequence number) of a stamped frame, if it is long enough.
pub fn read_stamp(frame: &[u8]) -> Option<(u64, u64)> {
    let t: [u8; 8] = frame.get(TIMESTAMP_OFFSET..SEQ_OFFSET)?.try_into().ok()?;
    let s: [u8; 8] = frame.get(SEQ_OFFSET..MIN_FRAME_BYTES)?.try_into().ok()?;
    Some((u64::from_be_bytes(t), u64::from_be_bytes(s)))
}

/// An Opus-sized audio frame: TOC byte of CELT FB 20 ms mono, one frame.
pub fn audio_frame(seq: u64, send_us: u64) -> Vec<u8> {
    let mut f = vec![0u8; AUDIO_FRAME_BYTES];
    fill(&mut f, seq);
    f[0] = 0x78;
    stamp(&mut f, send_us, seq);
    f
}

/// A VP8-looking frame of `len` bytes: frame tag bit 0 is 0 for a keyframe (then start code and
/// a 640x360 size follow), 1 for a delta frame; show_frame set.
pub fn vp8_frame(seq: u64, keyframe: bool, len: usize, send_us: u64) -> Vec<u8> {
    let len = len.clamp(MIN_FRAME_BYTES, MAX_FRAME_BYTES);
    let mut f = vec![0u8; len];
    fill(&mut f, seq);
    f[0] = if keyframe { 0x10 } else { 0x11 };
    if keyframe {
        // start code, width 640, height 360 (little-endian 14-bit fields, no scaling).
        f[3..6].copy_from_slice(&VP8_START_CODE);
        f[6..10].copy_from_slice(&[0x80, 0x02, 0x68, 0x01]);
    }
    stamp(&mut f, send_us, seq);
    f
}

/// One frame of a [`Source`], ready for str0m's `Writer::write`.
#[derive(Clone, Debug)]
pub struct Frame {
    pub data: Vec<u8>,
    pub keyframe: bool,
    /// Sequence number of the frame in its track (also stamped into `data`).
    pub seq: u64,
    pub rtp_time: MediaTime,
}

/// The synthetic media source of one sending track: frame timing, keyframe decisions and the
/// frames themselves. Time comes in from the caller.
#[derive(Clone, Debug)]
pub struct Source {
    kind: MediaKind,
    seq: u64,
    next_due: Instant,
    last_keyframe: Option<Instant>,
    force_keyframe: bool,
}

impl Source {
    /// A source whose first frame is due at `now` (a keyframe, for video).
    pub fn new(kind: MediaKind, now: Instant) -> Source {
        Source {
            kind,
            seq: 0,
            next_due: now,
            last_keyframe: None,
            force_keyframe: true,
        }
    }

    pub fn kind(&self) -> MediaKind {
        self.kind
    }

    /// When the next frame is due.
    pub fn next_due(&self) -> Instant {
        self.next_due
    }

    /// Make the next video frame a keyframe (the remote asked: PLI/FIR).
    pub fn request_keyframe(&mut self) {
        self.force_keyframe = true;
    }

    /// The frame due at `now`, stamped with `now` as its send time; None before it is due.
    /// After a stall the lost time is dropped rather than caught up with a burst.
    pub fn next_frame(&mut self, now: Instant, video: &VideoShape) -> Option<Frame> {
        if self.next_due > now {
            return None;
        }
        let seq = self.seq;
        let send_us = micros_since_origin(now);
        let (interval, keyframe, data, rtp_time) = match self.kind {
            MediaKind::Audio => (
                AUDIO_INTERVAL,
                false,
                audio_frame(seq, send_us),
                MediaTime::new(seq * AUDIO_TICKS, Frequency::FORTY_EIGHT_KHZ),
            ),
            // Each delta frame references only the frame before it (the receivers' decoder
            // model relies on it, `client::decoder`): one chain per track, restarted by every
            // keyframe, with no frame skipped (`seq` counts every frame made).
            MediaKind::Video => {
                let keyframe = self.force_keyframe
                    || self
                        .last_keyframe
                        .is_none_or(|t| now.duration_since(t) >= video.keyframe_interval());
                (
                    video.frame_interval(),
                    keyframe,
                    vp8_frame(seq, keyframe, video.frame_bytes(seq, keyframe), send_us),
                    MediaTime::new(seq * video.ticks_per_frame(), Frequency::NINETY_KHZ),
                )
            }
        };
        let next = self.next_due + interval;
        self.next_due = if next <= now { now + interval } else { next };
        self.seq += 1;
        if keyframe {
            self.last_keyframe = Some(now);
            self.force_keyframe = false;
        }
        Some(Frame {
            data,
            keyframe,
            seq,
            rtp_time,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_keep_headers() {
        let key = vp8_frame(7, true, 5000, 123_456);
        assert_eq!(key[0] & 1, 0);
        assert_eq!(&key[3..6], &[0x9d, 0x01, 0x2a]);
        assert_eq!(read_stamp(&key), Some((123_456, 7)));
        let delta = vp8_frame(8, false, 1000, 5);
        assert_eq!(delta[0] & 1, 1);
        assert_eq!(read_stamp(&delta), Some((5, 8)));
        let a = audio_frame(3, 99);
        assert_eq!((a[0], a.len()), (0x78, AUDIO_FRAME_BYTES));
        assert_eq!(read_stamp(&a), Some((99, 3)));
        assert_eq!(read_stamp(&[0u8; 20]), None);
    }

    #[test]
    fn video_sizes_follow_the_bitrate() {
        let v = VideoShape::default();
        let k = (v.fps as f64 * v.keyframe_interval_s) as u64;
        let bytes: usize = (0..k).map(|i| v.frame_bytes(i, i == 0)).sum();
        let kbps = bytes as f64 * 8.0 / v.keyframe_interval_s / 1000.0;
        assert!((900.0..1100.0).contains(&kbps), "{kbps}");
        assert_eq!(v.frame_bytes(0, true), v.delta_bytes() * KEYFRAME_FACTOR);
        assert!(VideoShape::new(0, 1000, Duration::from_secs(2)).is_err());
    }

    /// Video: a keyframe first, then deltas until the keyframe period or a request; every
    /// frame carries its send time and sequence number; nothing before it is due.
    #[test]
    fn source_paces_frames_and_keyframes() {
        let t0 = Instant::now();
        let shape = VideoShape::LIGHT;
        let mut v = Source::new(MediaKind::Video, t0);
        let first = v.next_frame(t0, &shape).expect("due at once");
        assert!(first.keyframe);
        assert_eq!(&first.data[3..6], &VP8_START_CODE);
        assert!(v.next_frame(t0, &shape).is_none(), "not due yet");
        let t1 = t0 + shape.frame_interval();
        let second = v.next_frame(t1, &shape).expect("due");
        assert!(!second.keyframe);
        assert_eq!(second.data[0] & 1, 1);
        assert_eq!(read_stamp(&second.data), Some((micros_since_origin(t1), 1)));
        v.request_keyframe();
        let t2 = t1 + shape.frame_interval();
        assert!(v.next_frame(t2, &shape).expect("due").keyframe);
        let late = t2 + shape.keyframe_interval();
        assert!(v.next_frame(late, &shape).expect("due").keyframe);

        // On time, periodic keyframes are `frames_per_keyframe_interval` frames apart.
        let n = shape.frames_per_keyframe_interval();
        assert_eq!(n, 61, "30 fps, 2 s");
        let mut v = Source::new(MediaKind::Video, t0);
        let keys: Vec<u64> = (0..200)
            .filter_map(|i| {
                let at = t0 + shape.frame_interval() * i;
                v.next_frame(at, &shape)
                    .filter(|f| f.keyframe)
                    .map(|f| f.seq)
            })
            .collect();
        assert_eq!(keys, [0, n, 2 * n, 3 * n]);

        let mut a = Source::new(MediaKind::Audio, t0);
        let f = a.next_frame(t0, &shape).expect("due");
        assert_eq!(
            (f.keyframe, f.data.len(), f.data[0]),
            (false, AUDIO_FRAME_BYTES, 0x78)
        );
        assert_eq!(a.next_due(), t0 + AUDIO_INTERVAL);
    }
}
