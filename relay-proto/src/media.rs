//! Media over QUIC datagrams: relayed units cut into fragments, and put back together.
//!
//! The relay forwards RTP packets (media format version 3): each relayed unit, called a
//! "frame" below for its numbering and fragmentation, carries exactly one RTP packet's payload
//! with its origin sequence number and marker bit (see the packet prefix below). An RTP packet
//! nearly always fits one datagram; one that does not (a path MTU below the publisher's
//! packet size) travels as several fragments, each one datagram:
//!
//! ```text
//!  0        1                  1+v      5+v      7+v      9+v     10+v           (18+v)
//! +--------+------------------+--------+--------+--------+-------+--------------+--------
//! | 0x20   | sub (varint, v)  |frame_seq|frag_idx|frag_cnt| flags | rtp_time     | chunk...
//! |        | 1, 2, 4 or 8 B   | u32 BE | u16 BE | u16 BE |  u8   | u64 BE, only |
//! |        |                  |        |        |        |       | if frag_idx=0|
//! +--------+------------------+--------+--------+--------+-------+--------------+--------
//! ```
//!
//! Why each field is there:
//!
//! - **type byte** (`0x20`): high nibble = media format version (2), low nibble = datagram type
//!   (0 = frame fragment). Lets later versions add datagram types (probes, FEC) or change the
//!   layout; a receiver drops what it does not know.
//! - **sub**: which subscription, the id the subscriber chose in `Subscribe`. A QUIC variable-length
//!   integer (RFC 9000 §16): one byte for ids below 64, which is what a node gets by reusing the
//!   lowest free id; values above `u32::MAX` are malformed.
//! - **frame_seq**: per-subscription frame counter, +1 per frame. Tells fragments of different
//!   frames apart, and a gap in it tells the subscriber a frame was lost: it asks for it again
//!   with a `Nack` ([`crate::repair`]), and for a keyframe if that fails. A frame sent again
//!   keeps its number and its fragment boundaries, so the same layout serves both.
//! - **frag_index / frag_count**: where the chunk goes and when the frame is whole. On every
//!   fragment, because any of them may arrive first. u16: up to 65,535 fragments.
//! - **flags**: bit 0 = the packet starts a keyframe, also on every fragment so that a receiver knows what it holds
//!   before fragment 0 arrives. Other bits are reserved: sent as 0, ignored on receipt.
//! - **rtp_time**: the frame's media time in the codec clock (extended to 64 bits, so no
//!   wrap-around). Only on fragment 0: it is per frame, and 8 bytes per fragment add up.
//!
//! - **the packet prefix** (format version 3, protocol version 5): a frame's payload, as
//!   reassembled, begins with the packet's simulcast rid: one length byte (0: the track has no
//!   layers) and that many bytes of `[A-Za-z0-9_-]`, at most [`MAX_RID_LEN`]; then the origin's
//!   extended RTP sequence number (u64 BE) and a flags byte (bit 0: the RTP marker bit; bit 1:
//!   the packet carried a video orientation (RFC 7742's CVO rotation), in bits 2–3 as that
//!   extension's two rotation bits; other bits reserved, sent as 0 and ignored, so a node that
//!   does not know bits 1–3 still reads the packet); the RTP payload follows ([`packet_payload`], [`split_packet`]). Each layer
//!   of a simulcast track travels as its own packets, so the receiving node selects layers for
//!   its own subscribers; the origin numbering lets it rewrite sequence numbers per viewer
//!   with the origin's real loss left visible. (Format version 2 carried the rid and a whole
//!   depacketized frame.)
//!
//! The header is 10 bytes + the varint (11 for a small `sub`), 8 more on fragment 0. Fragments
//! of one frame carry equal-sized chunks except the last (and the first, 8 bytes shorter), but a
//! receiver does not rely on that.
//!
//! QUIC datagrams are unreliable and unordered but never duplicated by the network (QUIC drops
//! repeated packet numbers); the [`Reassembler`] still copes with duplicates from a faulty
//! sender. It is bounded in every dimension (see [`ReassemblerLimits`]) and counts what it drops
//! ([`ReassemblerStats`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::control::SubId;

/// Media format version, the high nibble of the type byte (2: payloads carry the rid; 3: each
/// relayed "frame" is one RTP packet, its payload prefixed with the rid, the origin's sequence
/// number and the marker bit).
pub const MEDIA_VERSION: u8 = 3;
/// Type byte of a frame fragment (version 3, type 0).
pub const TYPE_FRAGMENT: u8 = MEDIA_VERSION << 4;
/// Flag bit: the frame is a keyframe.
const FLAG_KEYFRAME: u8 = 0x01;
/// Bytes of the fragment header without the `sub` varint and without `rtp_time`.
const FIXED_HEADER_LEN: usize = 1 + 4 + 2 + 2 + 1;
/// Bytes of `rtp_time` on fragment 0.
const RTP_TIME_LEN: usize = 8;

/// One depacketized media frame of a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The subscription (subscriber-chosen id).
    pub sub: SubId,
    /// Per-subscription frame counter.
    pub frame_seq: u32,
    /// Media time in the codec clock.
    pub rtp_time: u64,
    /// Whether the frame is a keyframe.
    pub keyframe: bool,
    /// The encoded frame.
    pub payload: Vec<u8>,
}

/// Longest simulcast rid a frame carries (Chromium's are one letter; RFC 8851 allows more).
pub const MAX_RID_LEN: usize = 16;

/// Bytes of the packet prefix after the rid: the origin's extended sequence number (u64 BE) and
/// a flags byte (bit 0: the RTP marker bit).
const PACKET_META_LEN: usize = 8 + 1;
/// Packet-prefix flag bit: the RTP marker bit (the packet ends a frame).
const META_MARKER: u8 = 0x01;
/// Packet-prefix flag bit: bits 2–3 hold the packet's video orientation.
const META_ORIENTATION: u8 = 0x02;
/// Where the orientation's two rotation bits sit in the flags byte.
const ORIENTATION_SHIFT: u8 = 2;

/// What a relayed RTP packet carries besides its payload (format version 3): its simulcast
/// layer, the origin's extended sequence number and the RTP marker bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketMeta<'a> {
    /// The simulcast rid; `None`: the track has no layers.
    pub rid: Option<&'a str>,
    /// The sequence number the origin node received the packet with, extended to 64 bits, so
    /// the receiving node keeps the origin's numbering (and sees the origin's loss as loss).
    pub origin_seq: u64,
    /// The RTP marker bit.
    pub marker: bool,
    /// The rotation bits (0–3, as in the CVO header extension) of a video packet that carried
    /// them; the receiving node writes them on to its viewers.
    pub orientation: Option<u8>,
}

/// A packet's payload as sent: the packet prefix (see the module doc), then `data`. `None`
/// when the rid is longer than [`MAX_RID_LEN`] or has other characters than `[A-Za-z0-9_-]`.
pub fn packet_payload(meta: PacketMeta<'_>, data: &[u8]) -> Option<Vec<u8>> {
    let rid = meta.rid.unwrap_or("");
    if !valid_rid(rid.as_bytes()) {
        return None;
    }
    let mut out = Vec::with_capacity(1 + rid.len() + PACKET_META_LEN + data.len());
    out.push(u8::try_from(rid.len()).ok()?);
    out.extend_from_slice(rid.as_bytes());
    out.extend_from_slice(&meta.origin_seq.to_be_bytes());
    let mut flags = if meta.marker { META_MARKER } else { 0 };
    if let Some(o) = meta.orientation {
        flags |= META_ORIENTATION | ((o & 0x03) << ORIENTATION_SHIFT);
    }
    out.push(flags);
    out.extend_from_slice(data);
    Some(out)
}

/// Splits a reassembled payload into the packet's prefix and its RTP payload. Unknown flag bits
/// are ignored.
pub fn split_packet(payload: &[u8]) -> Result<(PacketMeta<'_>, &[u8]), MediaError> {
    let (&len, rest) = payload.split_first().ok_or(MediaError::Truncated)?;
    let len = usize::from(len);
    if len > MAX_RID_LEN {
        return Err(MediaError::BadRid);
    }
    let (rid, rest) = rest.split_at_checked(len).ok_or(MediaError::Truncated)?;
    if !valid_rid(rid) {
        return Err(MediaError::BadRid);
    }
    let rid = std::str::from_utf8(rid).map_err(|_| MediaError::BadRid)?;
    let (seq, rest) = rest.split_first_chunk::<8>().ok_or(MediaError::Truncated)?;
    let (&flags, data) = rest.split_first().ok_or(MediaError::Truncated)?;
    let meta = PacketMeta {
        rid: (!rid.is_empty()).then_some(rid),
        origin_seq: u64::from_be_bytes(*seq),
        marker: flags & META_MARKER != 0,
        orientation: (flags & META_ORIENTATION != 0).then_some((flags >> ORIENTATION_SHIFT) & 0x03),
    };
    Ok((meta, data))
}

/// Whether `rid` may name a simulcast layer on the wire: 1 to [`MAX_RID_LEN`] bytes of
/// `[A-Za-z0-9_-]` (control messages naming layers check it; a frame's empty rid means none).
pub fn is_valid_rid(rid: &str) -> bool {
    !rid.is_empty() && valid_rid(rid.as_bytes())
}

fn valid_rid(rid: &[u8]) -> bool {
    rid.len() <= MAX_RID_LEN
        && rid
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

/// Why a datagram is not a valid fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// The datagram ends inside the header.
    #[error("datagram too short for its header")]
    Truncated,
    /// Unknown version or datagram type.
    #[error("unknown datagram type byte {0:#04x}")]
    UnknownType(u8),
    /// `sub` is above `u32::MAX`.
    #[error("subscription id out of range")]
    SubOutOfRange,
    /// A frame's rid prefix is too long or has characters a rid may not have.
    #[error("malformed rid prefix")]
    BadRid,
    /// `frag_count` is 0 or `frag_index >= frag_count`.
    #[error("fragment index {index} of {count}")]
    BadIndex {
        /// frag_index.
        index: u16,
        /// frag_count.
        count: u16,
    },
}

/// The header of one fragment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentHeader {
    /// The subscription.
    pub sub: SubId,
    /// The frame's sequence number.
    pub frame_seq: u32,
    /// This fragment's position, `0..frag_count`.
    pub frag_index: u16,
    /// Fragments in the frame, at least 1.
    pub frag_count: u16,
    /// The frame is a keyframe.
    pub keyframe: bool,
    /// The frame's media time; `Some` exactly when `frag_index == 0`.
    pub rtp_time: Option<u64>,
}

fn varint_len(v: u64) -> usize {
    match v {
        0..0x40 => 1,
        0x40..0x4000 => 2,
        0x4000..0x4000_0000 => 4,
        _ => 8,
    }
}

fn put_varint(out: &mut Vec<u8>, v: u64) {
    match varint_len(v) {
        1 => out.push(v as u8),
        2 => out.extend_from_slice(&(v as u16 | 0x4000).to_be_bytes()),
        4 => out.extend_from_slice(&(v as u32 | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

/// A cursor over a datagram that never reads past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], MediaError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or(MediaError::Truncated)?;
        self.0 = rest;
        Ok(*head)
    }

    fn varint(&mut self) -> Result<u64, MediaError> {
        let [first] = self.take::<1>()?;
        let extra = (1usize << (first >> 6)) - 1;
        let mut v = u64::from(first & 0x3f);
        for _ in 0..extra {
            let [b] = self.take::<1>()?;
            v = (v << 8) | u64::from(b);
        }
        Ok(v)
    }
}

impl FragmentHeader {
    /// Encoded length of this header.
    pub fn encoded_len(&self) -> usize {
        FIXED_HEADER_LEN
            + varint_len(u64::from(self.sub))
            + if self.rtp_time.is_some() {
                RTP_TIME_LEN
            } else {
                0
            }
    }

    /// Appends the header to `out`. `rtp_time` is written if it is `Some` (the caller keeps it
    /// `Some` exactly on fragment 0).
    pub fn write(&self, out: &mut Vec<u8>) {
        out.push(TYPE_FRAGMENT);
        put_varint(out, u64::from(self.sub));
        out.extend_from_slice(&self.frame_seq.to_be_bytes());
        out.extend_from_slice(&self.frag_index.to_be_bytes());
        out.extend_from_slice(&self.frag_count.to_be_bytes());
        out.push(if self.keyframe { FLAG_KEYFRAME } else { 0 });
        if let Some(t) = self.rtp_time {
            out.extend_from_slice(&t.to_be_bytes());
        }
    }

    /// Splits a datagram into its header and its chunk.
    pub fn parse(datagram: &[u8]) -> Result<(FragmentHeader, &[u8]), MediaError> {
        let mut r = Reader(datagram);
        let [kind] = r.take::<1>()?;
        if kind != TYPE_FRAGMENT {
            return Err(MediaError::UnknownType(kind));
        }
        let sub = u32::try_from(r.varint()?).map_err(|_| MediaError::SubOutOfRange)?;
        let frame_seq = u32::from_be_bytes(r.take()?);
        let frag_index = u16::from_be_bytes(r.take()?);
        let frag_count = u16::from_be_bytes(r.take()?);
        let [flags] = r.take::<1>()?;
        if frag_index >= frag_count {
            return Err(MediaError::BadIndex {
                index: frag_index,
                count: frag_count,
            });
        }
        let rtp_time = if frag_index == 0 {
            Some(u64::from_be_bytes(r.take()?))
        } else {
            None
        };
        let header = FragmentHeader {
            sub,
            frame_seq,
            frag_index,
            frag_count,
            keyframe: flags & FLAG_KEYFRAME != 0,
            rtp_time,
        };
        Ok((header, r.0))
    }
}

/// Why a frame cannot be fragmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FragmentError {
    /// `max_datagram` leaves no room for a chunk after the header.
    #[error("max datagram size {max_datagram} is below the minimum of {min}")]
    DatagramTooSmall {
        /// The size asked for.
        max_datagram: usize,
        /// The smallest that works for this frame.
        min: usize,
    },
    /// The frame needs more than 65,535 fragments at this datagram size.
    #[error("frame of {len} bytes needs more than 65535 fragments")]
    FrameTooLarge {
        /// Payload length.
        len: usize,
    },
}

/// Cuts frames into datagrams.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fragmenter;

impl Fragmenter {
    /// The datagrams of `frame`, each at most `max_datagram` bytes (use quinn's
    /// `Connection::max_datagram_size()`).
    pub fn fragments(frame: &Frame, max_datagram: usize) -> Result<Fragments<'_>, FragmentError> {
        let header = FIXED_HEADER_LEN + varint_len(u64::from(frame.sub));
        let min = header + RTP_TIME_LEN + 1;
        if max_datagram < min {
            return Err(FragmentError::DatagramTooSmall { max_datagram, min });
        }
        let first_cap = max_datagram - header - RTP_TIME_LEN;
        let rest_cap = max_datagram - header;
        let len = frame.payload.len();
        let count = if len <= first_cap {
            1
        } else {
            1 + (len - first_cap).div_ceil(rest_cap)
        };
        let count = u16::try_from(count).map_err(|_| FragmentError::FrameTooLarge { len })?;
        Ok(Fragments {
            frame,
            first_cap,
            rest_cap,
            count,
            index: 0,
            offset: 0,
        })
    }
}

/// The fragments of one frame, in order; see [`Fragmenter::fragments`].
#[derive(Debug, Clone)]
pub struct Fragments<'a> {
    frame: &'a Frame,
    first_cap: usize,
    rest_cap: usize,
    count: u16,
    index: u16,
    offset: usize,
}

impl Fragments<'_> {
    /// How many fragments the frame has in all.
    pub fn fragment_count(&self) -> u16 {
        self.count
    }

    /// Writes the next fragment into `out` (cleared first), reusing its allocation. Returns
    /// false when all fragments have been written.
    pub fn next_into(&mut self, out: &mut Vec<u8>) -> bool {
        if self.index >= self.count {
            return false;
        }
        out.clear();
        let cap = if self.index == 0 {
            self.first_cap
        } else {
            self.rest_cap
        };
        let end = (self.offset + cap).min(self.frame.payload.len());
        let header = FragmentHeader {
            sub: self.frame.sub,
            frame_seq: self.frame.frame_seq,
            frag_index: self.index,
            frag_count: self.count,
            keyframe: self.frame.keyframe,
            rtp_time: (self.index == 0).then_some(self.frame.rtp_time),
        };
        out.reserve(header.encoded_len() + end - self.offset);
        header.write(out);
        out.extend_from_slice(&self.frame.payload[self.offset..end]);
        self.offset = end;
        self.index += 1;
        true
    }
}

impl Iterator for Fragments<'_> {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.next_into(&mut out).then_some(out)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = usize::from(self.count - self.index);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Fragments<'_> {}

/// Limits of a [`Reassembler`].
///
/// `max_buffered_bytes` covers incomplete frames (payload and bookkeeping). Per-subscription
/// state outside frames (a few hundred bytes: the last 64 finished frame numbers) is bounded by
/// `max_subscriptions`.
#[derive(Debug, Clone)]
pub struct ReassemblerLimits {
    /// Largest frame payload accepted; a frame growing past it is dropped.
    pub max_frame_bytes: usize,
    /// Largest `frag_count` accepted (bounds the per-frame bookkeeping).
    pub max_fragments: u16,
    /// Incomplete frames kept per subscription; a newer frame evicts the oldest.
    pub max_frames_in_flight: usize,
    /// Bytes held by all incomplete frames (payload plus bookkeeping); over it, the oldest
    /// incomplete frame of any subscription is evicted.
    pub max_buffered_bytes: usize,
    /// An incomplete frame older than this is dropped.
    pub frame_timeout: Duration,
    /// Subscriptions tracked at once; datagrams of further ones are dropped until idle ones are
    /// forgotten or removed.
    pub max_subscriptions: usize,
    /// A subscription with nothing in flight and no datagram for this long is forgotten.
    pub subscription_idle: Duration,
}

impl Default for ReassemblerLimits {
    fn default() -> Self {
        ReassemblerLimits {
            max_frame_bytes: 1 << 20,
            max_fragments: 2048,
            // One RTP packet per relayed frame: at ~400 packets/s a repair wait of up to 200 ms
            // spans ~80 of them, of which only the few cut into fragments can be incomplete.
            max_frames_in_flight: 32,
            max_buffered_bytes: 4 << 20,
            frame_timeout: Duration::from_millis(500),
            max_subscriptions: 4096,
            subscription_idle: Duration::from_secs(30),
        }
    }
}

/// What a [`Reassembler`] has done, since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReassemblerStats {
    /// Frames put back together and returned.
    pub frames_completed: u64,
    /// Incomplete frames dropped after `frame_timeout`.
    pub frames_timed_out: u64,
    /// Incomplete frames evicted by newer frames of their subscription
    /// (`max_frames_in_flight`), or arriving older than all frames in flight when it is full.
    pub frames_evicted: u64,
    /// Incomplete frames evicted to stay under `max_buffered_bytes`.
    pub frames_evicted_memory: u64,
    /// Frames dropped because their fragments disagree (count, keyframe flag) or exceed
    /// `max_frame_bytes` / `max_fragments`.
    pub frames_invalid: u64,
    /// Fragments received twice while their frame was in progress.
    pub fragments_duplicate: u64,
    /// Fragments of frames already completed or dropped.
    pub fragments_late: u64,
    /// Datagrams that are not valid fragments.
    pub datagrams_malformed: u64,
    /// Datagrams dropped because `max_subscriptions` were tracked.
    pub datagrams_over_sub_limit: u64,
}

impl ReassemblerStats {
    /// All frames dropped incomplete, for whatever reason.
    pub fn frames_dropped(&self) -> u64 {
        self.frames_timed_out
            + self.frames_evicted
            + self.frames_evicted_memory
            + self.frames_invalid
    }
}

/// Bookkeeping bytes charged per incomplete frame, besides its slots and payload.
const FRAME_OVERHEAD: usize = 128;
/// Bookkeeping bytes charged per fragment slot.
const SLOT_COST: usize = std::mem::size_of::<Option<Vec<u8>>>();
/// Frame numbers remembered per subscription as done (completed or dropped), so that late
/// fragments do not start a new frame.
const DONE_WINDOW: usize = 64;

#[derive(Debug)]
struct Partial {
    seq: u32,
    serial: u64,
    created: Instant,
    frag_count: u16,
    keyframe: bool,
    rtp_time: Option<u64>,
    chunks: Vec<Option<Vec<u8>>>,
    received: u16,
    payload_bytes: usize,
    cost: usize,
}

#[derive(Debug)]
struct SubState {
    in_flight: Vec<Partial>,
    done: VecDeque<u32>,
    last_seen: Instant,
}

impl SubState {
    fn mark_done(&mut self, seq: u32) {
        if self.done.len() >= DONE_WINDOW {
            self.done.pop_front();
        }
        self.done.push_back(seq);
    }
}

/// `a` is before `b` in wrapping sequence order.
fn seq_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

#[derive(Clone, Copy)]
enum Drop {
    TimedOut,
    Evicted,
    Memory,
    Invalid,
}

/// Puts fragments back into frames; one per relay connection (subscription ids are per
/// connection).
///
/// Memory is bounded by [`ReassemblerLimits`]: incomplete frames per subscription, bytes held in
/// all, frame size, fragments per frame and subscriptions tracked. Incomplete frames are
/// dropped after a timeout: call [`poll_expired`](Self::poll_expired) from a timer
/// ([`next_expiry`](Self::next_expiry) says when), or rely on [`push`](Self::push), which
/// expires first. Dropped frames are counted, never returned; a subscriber sees them as gaps in
/// `frame_seq`.
#[derive(Debug)]
pub struct Reassembler {
    limits: ReassemblerLimits,
    subs: HashMap<SubId, SubState>,
    /// Incomplete frames in creation order: serial -> (sub, frame_seq).
    order: BTreeMap<u64, (SubId, u32)>,
    next_serial: u64,
    buffered: usize,
    stats: ReassemblerStats,
}

impl Default for Reassembler {
    fn default() -> Self {
        Self::new(ReassemblerLimits::default())
    }
}

impl Reassembler {
    /// An empty reassembler with these limits.
    pub fn new(limits: ReassemblerLimits) -> Self {
        Reassembler {
            limits,
            subs: HashMap::new(),
            order: BTreeMap::new(),
            next_serial: 0,
            buffered: 0,
            stats: ReassemblerStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> ReassemblerStats {
        self.stats
    }

    /// Bytes charged to incomplete frames (at most `max_buffered_bytes` between calls).
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    /// Incomplete frames held.
    pub fn frames_in_flight(&self) -> usize {
        self.order.len()
    }

    /// When the oldest incomplete frame times out, if there is one.
    pub fn next_expiry(&self) -> Option<Instant> {
        let (_, (sub, seq)) = self.order.first_key_value()?;
        let partial = self
            .subs
            .get(sub)?
            .in_flight
            .iter()
            .find(|p| p.seq == *seq)?;
        Some(partial.created + self.limits.frame_timeout)
    }

    /// The fragment indexes still missing of frame `seq` of `sub`, if it is in progress and at
    /// most `max` are missing; `None` otherwise (nothing of it arrived, it is done, or so much
    /// is missing that asking for the whole frame is shorter).
    pub fn missing_fragments(&self, sub: SubId, seq: u32, max: usize) -> Option<Vec<u16>> {
        let p = self
            .subs
            .get(&sub)?
            .in_flight
            .iter()
            .find(|p| p.seq == seq)?;
        if usize::from(p.frag_count - p.received) > max {
            return None;
        }
        Some(
            p.chunks
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_none())
                .filter_map(|(i, _)| u16::try_from(i).ok())
                .collect(),
        )
    }

    /// Forgets a subscription (after `Unsubscribe` or `TrackEnded`), dropping its incomplete
    /// frames without counting them.
    pub fn remove_subscription(&mut self, sub: SubId) {
        if let Some(state) = self.subs.remove(&sub) {
            for p in state.in_flight {
                self.order.remove(&p.serial);
                self.buffered -= p.cost;
            }
        }
    }

    /// Drops incomplete frames that have timed out and forgets idle subscriptions. Returns how
    /// many frames were dropped.
    pub fn poll_expired(&mut self, now: Instant) -> usize {
        let dropped = self.expire(now);
        let idle = self.limits.subscription_idle;
        self.subs.retain(|_, s| {
            !s.in_flight.is_empty() || now.saturating_duration_since(s.last_seen) < idle
        });
        dropped
    }

    fn expire(&mut self, now: Instant) -> usize {
        let mut dropped = 0;
        while let Some((_, &(sub, seq))) = self.order.first_key_value() {
            let expired = self
                .subs
                .get(&sub)
                .and_then(|s| s.in_flight.iter().find(|p| p.seq == seq))
                .is_none_or(|p| {
                    now.saturating_duration_since(p.created) >= self.limits.frame_timeout
                });
            if !expired {
                break;
            }
            self.drop_partial(sub, seq, Drop::TimedOut);
            dropped += 1;
        }
        dropped
    }

    /// Removes an incomplete frame, remembers it as done and counts why.
    fn drop_partial(&mut self, sub: SubId, seq: u32, why: Drop) {
        let Some(state) = self.subs.get_mut(&sub) else {
            // Not reachable while `order` and `subs` agree; keep them consistent anyway.
            self.order.retain(|_, k| *k != (sub, seq));
            return;
        };
        let Some(pos) = state.in_flight.iter().position(|p| p.seq == seq) else {
            self.order.retain(|_, k| *k != (sub, seq));
            return;
        };
        let p = state.in_flight.swap_remove(pos);
        state.mark_done(seq);
        self.order.remove(&p.serial);
        self.buffered -= p.cost;
        let counter = match why {
            Drop::TimedOut => &mut self.stats.frames_timed_out,
            Drop::Evicted => &mut self.stats.frames_evicted,
            Drop::Memory => &mut self.stats.frames_evicted_memory,
            Drop::Invalid => &mut self.stats.frames_invalid,
        };
        *counter += 1;
    }

    /// Evicts the oldest incomplete frames, `keep` last, until the budget holds.
    fn shed(&mut self, keep: (SubId, u32)) {
        while self.buffered > self.limits.max_buffered_bytes {
            let victim = self
                .order
                .values()
                .find(|k| **k != keep)
                .copied()
                .unwrap_or(keep);
            self.drop_partial(victim.0, victim.1, Drop::Memory);
            if victim == keep {
                break;
            }
        }
    }

    /// Takes one datagram. Returns the frame it completes, if any.
    pub fn push(&mut self, datagram: &[u8], now: Instant) -> Option<Frame> {
        self.expire(now);
        let Ok((h, chunk)) = FragmentHeader::parse(datagram) else {
            self.stats.datagrams_malformed += 1;
            return None;
        };
        let key = (h.sub, h.frame_seq);

        if !self.subs.contains_key(&h.sub) {
            if self.subs.len() >= self.limits.max_subscriptions {
                let idle = self.limits.subscription_idle;
                self.subs.retain(|_, s| {
                    !s.in_flight.is_empty() || now.saturating_duration_since(s.last_seen) < idle
                });
            }
            if self.subs.len() >= self.limits.max_subscriptions {
                self.stats.datagrams_over_sub_limit += 1;
                return None;
            }
            self.subs.insert(
                h.sub,
                SubState {
                    in_flight: Vec::new(),
                    done: VecDeque::new(),
                    last_seen: now,
                },
            );
        }
        let state = self.subs.get_mut(&h.sub)?;
        state.last_seen = now;
        if state.done.contains(&h.frame_seq) {
            self.stats.fragments_late += 1;
            return None;
        }

        if !state.in_flight.iter().any(|p| p.seq == h.frame_seq) {
            // A new frame.
            if h.frag_count > self.limits.max_fragments || chunk.len() > self.limits.max_frame_bytes
            {
                state.mark_done(h.frame_seq);
                self.stats.frames_invalid += 1;
                return None;
            }
            if state.in_flight.len() >= self.limits.max_frames_in_flight {
                let oldest = state
                    .in_flight
                    .iter()
                    .map(|p| p.seq)
                    .reduce(|a, b| if seq_before(b, a) { b } else { a });
                match oldest {
                    Some(oldest) if seq_before(h.frame_seq, oldest) => {
                        state.mark_done(h.frame_seq);
                        self.stats.frames_evicted += 1;
                        return None;
                    }
                    Some(oldest) => self.drop_partial(h.sub, oldest, Drop::Evicted),
                    None => {}
                }
            }
            let cost = FRAME_OVERHEAD + usize::from(h.frag_count) * SLOT_COST;
            let serial = self.next_serial;
            self.next_serial += 1;
            let state = self.subs.get_mut(&h.sub)?;
            state.in_flight.push(Partial {
                seq: h.frame_seq,
                serial,
                created: now,
                frag_count: h.frag_count,
                keyframe: h.keyframe,
                rtp_time: None,
                chunks: vec![None; usize::from(h.frag_count)],
                received: 0,
                payload_bytes: 0,
                cost,
            });
            self.order.insert(serial, key);
            self.buffered += cost;
        }

        let state = self.subs.get_mut(&h.sub)?;
        let pos = state.in_flight.iter().position(|p| p.seq == h.frame_seq)?;
        let p = &mut state.in_flight[pos];
        if p.frag_count != h.frag_count
            || p.keyframe != h.keyframe
            || p.payload_bytes + chunk.len() > self.limits.max_frame_bytes
        {
            self.drop_partial(h.sub, h.frame_seq, Drop::Invalid);
            return None;
        }
        let Some(slot) = p.chunks.get_mut(usize::from(h.frag_index)) else {
            // Unreachable: parse checks frag_index < frag_count.
            return None;
        };
        if slot.is_some() {
            self.stats.fragments_duplicate += 1;
            return None;
        }
        *slot = Some(chunk.to_vec());
        p.received += 1;
        p.payload_bytes += chunk.len();
        p.cost += chunk.len();
        self.buffered += chunk.len();
        if h.rtp_time.is_some() {
            p.rtp_time = h.rtp_time;
        }

        if p.received < p.frag_count {
            self.shed(key);
            return None;
        }
        // Whole: every slot is filled, and fragment 0 brought rtp_time.
        let p = state.in_flight.swap_remove(pos);
        state.mark_done(h.frame_seq);
        self.order.remove(&p.serial);
        self.buffered -= p.cost;
        self.stats.frames_completed += 1;
        let mut payload = Vec::with_capacity(p.payload_bytes);
        for chunk in p.chunks.into_iter().flatten() {
            payload.extend_from_slice(&chunk);
        }
        Some(Frame {
            sub: h.sub,
            frame_seq: h.frame_seq,
            rtp_time: p.rtp_time.unwrap_or_default(),
            keyframe: p.keyframe,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frames_layer_travels_before_its_data() {
        let meta = |rid| PacketMeta {
            rid,
            origin_seq: 70_000,
            marker: true,
            orientation: None,
        };
        let p = packet_payload(meta(Some("h")), b"pkt").expect("a valid rid");
        assert_eq!(split_packet(&p), Ok((meta(Some("h")), &b"pkt"[..])));
        let p = packet_payload(meta(None), b"pkt").expect("no rid");
        assert_eq!(split_packet(&p), Ok((meta(None), &b"pkt"[..])));
        let unmarked = PacketMeta {
            marker: false,
            ..meta(None)
        };
        let p = packet_payload(unmarked, b"").expect("no rid");
        assert_eq!(split_packet(&p), Ok((unmarked, &b""[..])));
        assert_eq!(packet_payload(meta(Some("a b")), b""), None);
        assert_eq!(packet_payload(meta(Some(&"x".repeat(17))), b""), None);
        assert_eq!(split_packet(b""), Err(MediaError::Truncated));
        assert_eq!(split_packet(b"\x05ab"), Err(MediaError::Truncated));
        // The rid but no sequence number, or no flags byte.
        assert_eq!(split_packet(b"\x01h\0\0\0"), Err(MediaError::Truncated));
        assert_eq!(
            split_packet(b"\x00\0\0\0\0\0\0\0\0"),
            Err(MediaError::Truncated)
        );
        assert_eq!(split_packet(b"\x02a\xff"), Err(MediaError::BadRid));
        assert_eq!(split_packet(b"\x20"), Err(MediaError::BadRid));
    }

    #[test]
    fn a_packets_video_orientation_travels_in_the_flags_and_old_flags_still_read() {
        for o in 0..4 {
            let meta = PacketMeta {
                rid: Some("f"),
                origin_seq: 9,
                marker: o % 2 == 0,
                orientation: Some(o),
            };
            let p = packet_payload(meta, b"v").expect("valid");
            assert_eq!(split_packet(&p), Ok((meta, &b"v"[..])));
        }
        // As a node before the orientation bits sends it: marker only, no orientation.
        let (meta, data) = split_packet(b"\x00\0\0\0\0\0\0\0\x07\x01pkt").expect("reads");
        assert_eq!(
            (meta.origin_seq, meta.marker, meta.orientation),
            (7, true, None)
        );
        assert_eq!(data, b"pkt");
        // Reserved bits are still ignored.
        let (meta, _) = split_packet(b"\x00\0\0\0\0\0\0\0\x07\xf0").expect("reads");
        assert_eq!((meta.marker, meta.orientation), (false, None));
    }

    fn frame(sub: SubId, seq: u32, len: usize) -> Frame {
        Frame {
            sub,
            frame_seq: seq,
            rtp_time: 90_000 * u64::from(seq) + (1 << 33),
            keyframe: seq.is_multiple_of(3),
            payload: (0..len).map(|i| (i * 7 + seq as usize) as u8).collect(),
        }
    }

    fn frags(f: &Frame, mtu: usize) -> Vec<Vec<u8>> {
        Fragmenter::fragments(f, mtu).expect("fragment").collect()
    }

    #[test]
    fn header_wire_bytes() {
        let f = Frame {
            sub: 5,
            frame_seq: 0x01020304,
            rtp_time: 0x1122334455667788,
            keyframe: true,
            payload: vec![0xaa, 0xbb],
        };
        let d = frags(&f, 1200);
        assert_eq!(
            d,
            vec![vec![
                0x30, 5, 1, 2, 3, 4, 0, 0, 0, 1, 1, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88,
                0xaa, 0xbb
            ]]
        );
        // Second fragment of a two-fragment frame: no rtp_time.
        let f = Frame {
            keyframe: false,
            payload: vec![0; 30],
            ..f
        };
        let d = frags(&f, 40);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].len(), 40);
        assert_eq!(&d[1][..11], &[0x30, 5, 1, 2, 3, 4, 0, 1, 0, 2, 0]);
        assert_eq!(d[1].len(), 11 + 30 - (40 - 19));
    }

    #[test]
    fn varint_boundaries() {
        for (sub, len) in [
            (0u32, 1usize),
            (63, 1),
            (64, 2),
            (16383, 2),
            (16384, 4),
            (0x3fff_ffff, 4),
            (0x4000_0000, 8),
            (u32::MAX, 8),
        ] {
            let h = FragmentHeader {
                sub,
                frame_seq: 1,
                frag_index: 1,
                frag_count: 2,
                keyframe: false,
                rtp_time: None,
            };
            let mut out = Vec::new();
            h.write(&mut out);
            assert_eq!(out.len(), 10 + len, "sub {sub}");
            assert_eq!(h.encoded_len(), out.len());
            out.push(0x99);
            let (back, chunk) = FragmentHeader::parse(&out).expect("parse");
            assert_eq!(back, h);
            assert_eq!(chunk, &[0x99]);
        }
        // An 8-byte varint above u32::MAX.
        let mut d = vec![0x30];
        d.extend_from_slice(&(0xc000_0001_0000_0000u64).to_be_bytes());
        d.extend_from_slice(&[0; 9]);
        assert_eq!(FragmentHeader::parse(&d), Err(MediaError::SubOutOfRange));
    }

    #[test]
    fn parse_rejects_bad_headers() {
        assert_eq!(FragmentHeader::parse(&[]), Err(MediaError::Truncated));
        // A version-1 (rid-less payloads) or version-2 (whole frames) datagram is not misread.
        assert_eq!(
            FragmentHeader::parse(&[0x10, 0]),
            Err(MediaError::UnknownType(0x10))
        );
        assert_eq!(
            FragmentHeader::parse(&[0x20, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0]),
            Err(MediaError::UnknownType(0x20))
        );
        assert_eq!(
            FragmentHeader::parse(&[0x30, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(MediaError::BadIndex { index: 0, count: 0 })
        );
        assert_eq!(
            FragmentHeader::parse(&[0x30, 1, 0, 0, 0, 0, 0, 2, 0, 2, 0]),
            Err(MediaError::BadIndex { index: 2, count: 2 })
        );
        // Fragment 0 without its rtp_time.
        assert_eq!(
            FragmentHeader::parse(&[0x30, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 2]),
            Err(MediaError::Truncated)
        );
        let good = frags(&frame(1, 1, 10), 100).remove(0);
        for cut in 0..19 {
            assert_eq!(
                FragmentHeader::parse(&good[..cut]),
                Err(MediaError::Truncated)
            );
        }
    }

    #[test]
    fn fragment_sizes() {
        // sub < 64: header 11, first fragment 19.
        let mtu = 100;
        for (len, count) in [(0, 1), (1, 1), (81, 1), (82, 2), (81 + 89, 2), (81 + 90, 3)] {
            let f = frame(1, 0, len);
            let it = Fragmenter::fragments(&f, mtu).expect("fragment");
            assert_eq!(usize::from(it.fragment_count()), count, "len {len}");
            assert_eq!(it.len(), count);
            let d: Vec<_> = it.collect();
            assert_eq!(d.len(), count);
            assert!(d.iter().all(|x| x.len() <= mtu));
            if count > 1 {
                assert_eq!(d[0].len(), mtu);
            }
        }
        assert_eq!(
            Fragmenter::fragments(&frame(1, 0, 5), 19).map(|f| f.count()),
            Err(FragmentError::DatagramTooSmall {
                max_datagram: 19,
                min: 20
            })
        );
        assert!(Fragmenter::fragments(&frame(1, 0, 5), 20).is_ok());
        let big = frame(1, 0, 600_000);
        assert_eq!(
            Fragmenter::fragments(&big, 20).map(|f| f.count()),
            Err(FragmentError::FrameTooLarge { len: 600_000 })
        );
    }

    #[test]
    fn next_into_reuses_the_buffer() {
        let f = frame(2, 9, 5000);
        let mut it = Fragmenter::fragments(&f, 1200).expect("fragment");
        let mut buf = Vec::new();
        let mut r = Reassembler::default();
        let now = Instant::now();
        let mut out = None;
        while it.next_into(&mut buf) {
            assert!(buf.len() <= 1200);
            out = r.push(&buf, now).or(out);
        }
        assert_eq!(out, Some(f));
    }

    #[test]
    fn reassembles_in_order_and_reversed() {
        let now = Instant::now();
        let mut r = Reassembler::default();
        let f = frame(3, 1, 100_000);
        let d = frags(&f, 1200);
        assert!(d.len() > 80);
        let mut got = Vec::new();
        for x in d.iter().rev() {
            got.extend(r.push(x, now));
        }
        assert_eq!(got, vec![f.clone()]);
        assert_eq!(r.buffered_bytes(), 0);
        assert_eq!(r.frames_in_flight(), 0);
        // The same datagrams again are late, not a second frame.
        for x in &d {
            assert_eq!(r.push(x, now), None);
        }
        let s = r.stats();
        assert_eq!(s.frames_completed, 1);
        assert_eq!(s.fragments_late as usize, d.len());
        assert_eq!(s.frames_dropped(), 0);
    }

    #[test]
    fn missing_fragments_of_a_frame_in_progress() {
        let now = Instant::now();
        let mut r = Reassembler::default();
        let d = frags(&frame(1, 4, 5000), 1200);
        assert_eq!(d.len(), 5);
        assert_eq!(r.missing_fragments(1, 4, 64), None, "nothing arrived");
        r.push(&d[1], now);
        r.push(&d[3], now);
        assert_eq!(r.missing_fragments(1, 4, 64), Some(vec![0, 2, 4]));
        assert_eq!(
            r.missing_fragments(1, 4, 2),
            None,
            "the whole frame is shorter"
        );
        assert_eq!(r.missing_fragments(2, 4, 64), None);
        r.push(&d[0], now);
        r.push(&d[2], now);
        assert!(r.push(&d[4], now).is_some());
        assert_eq!(r.missing_fragments(1, 4, 64), None, "done");
    }

    #[test]
    fn duplicates_within_a_frame_are_counted() {
        let now = Instant::now();
        let mut r = Reassembler::default();
        let f = frame(1, 4, 3000);
        let d = frags(&f, 1200);
        assert_eq!(r.push(&d[0], now), None);
        assert_eq!(r.push(&d[0], now), None);
        assert_eq!(r.push(&d[1], now), None);
        assert_eq!(r.push(&d[2], now), Some(f));
        assert_eq!(r.stats().fragments_duplicate, 1);
    }

    #[test]
    fn incomplete_frames_time_out() {
        let t0 = Instant::now();
        let mut r = Reassembler::default();
        let d = frags(&frame(1, 1, 3000), 1200);
        r.push(&d[0], t0);
        assert_eq!(r.frames_in_flight(), 1);
        assert_eq!(
            r.next_expiry(),
            Some(t0 + ReassemblerLimits::default().frame_timeout)
        );
        assert_eq!(r.poll_expired(t0 + Duration::from_millis(499)), 0);
        assert_eq!(r.poll_expired(t0 + Duration::from_millis(500)), 1);
        assert_eq!(r.frames_in_flight(), 0);
        assert_eq!(r.buffered_bytes(), 0);
        assert_eq!(r.next_expiry(), None);
        // Its remaining fragments are late, they do not start it again.
        assert_eq!(r.push(&d[1], t0 + Duration::from_secs(1)), None);
        assert_eq!(r.push(&d[2], t0 + Duration::from_secs(1)), None);
        let s = r.stats();
        assert_eq!((s.frames_timed_out, s.fragments_late), (1, 2));
        // Push expires too.
        let d = frags(&frame(1, 2, 3000), 1200);
        r.push(&d[0], t0 + Duration::from_secs(2));
        let other = frags(&frame(2, 1, 10), 1200);
        r.push(&other[0], t0 + Duration::from_secs(3));
        assert_eq!(r.stats().frames_timed_out, 2);
    }

    #[test]
    fn in_flight_cap_evicts_the_oldest() {
        let now = Instant::now();
        let mut r = Reassembler::new(ReassemblerLimits {
            max_frames_in_flight: 8,
            ..ReassemblerLimits::default()
        });
        let firsts: Vec<_> = (10..20)
            .map(|seq| frags(&frame(1, seq, 3000), 1200).remove(0))
            .collect();
        for d in &firsts {
            r.push(d, now);
        }
        assert_eq!(r.frames_in_flight(), 8);
        assert_eq!(r.stats().frames_evicted, 2);
        // Frame 10 was evicted: its other fragments are late.
        let rest = frags(&frame(1, 10, 3000), 1200);
        assert_eq!(r.push(&rest[1], now), None);
        assert_eq!(r.stats().fragments_late, 1);
        // A frame older than all in flight is dropped at once.
        let old = frags(&frame(1, 5, 3000), 1200);
        assert_eq!(r.push(&old[0], now), None);
        assert_eq!(r.stats().frames_evicted, 3);
        assert_eq!(r.frames_in_flight(), 8);
        // Frame 19 still completes.
        let f = frame(1, 19, 3000);
        let d = frags(&f, 1200);
        assert_eq!(r.push(&d[1], now), None);
        assert_eq!(r.push(&d[2], now), Some(f));
    }

    #[test]
    fn memory_budget_evicts_across_subscriptions() {
        let now = Instant::now();
        let limits = ReassemblerLimits {
            max_buffered_bytes: 64 * 1024,
            ..ReassemblerLimits::default()
        };
        let mut r = Reassembler::new(limits);
        // 20 KB frames missing their last fragment, on 5 subscriptions.
        for sub in 0..5 {
            let d = frags(&frame(sub, 1, 20_000), 1200);
            for x in &d[..d.len() - 1] {
                assert_eq!(r.push(x, now), None);
                assert!(r.buffered_bytes() <= 64 * 1024);
            }
        }
        let s = r.stats();
        assert!(s.frames_evicted_memory >= 2, "{s:?}");
        assert_eq!(
            s.frames_evicted_memory as usize + r.frames_in_flight(),
            5,
            "{s:?}"
        );
        // The newest survived and completes.
        let f = frame(4, 1, 20_000);
        let d = frags(&f, 1200);
        assert_eq!(r.push(&d[d.len() - 1], now), Some(f));
    }

    #[test]
    fn oversized_and_inconsistent_frames_are_invalid() {
        let now = Instant::now();
        let limits = ReassemblerLimits {
            max_frame_bytes: 10_000,
            max_fragments: 16,
            ..ReassemblerLimits::default()
        };
        let mut r = Reassembler::new(limits);
        let d = frags(&frame(1, 1, 12_000), 1200);
        let mut got = None;
        for x in &d {
            got = got.or(r.push(x, now));
        }
        assert_eq!(got, None);
        // Too many fragments: refused at the first one.
        let d = frags(&frame(1, 2, 2000), 100);
        assert!(d.len() > 16);
        for x in &d {
            assert_eq!(r.push(x, now), None);
        }
        // frag_count changes within a frame.
        let a = frags(&frame(1, 3, 3000), 1200);
        let b = frags(&frame(1, 3, 5000), 1200);
        assert_eq!(r.push(&a[0], now), None);
        assert_eq!(r.push(&b[1], now), None);
        let s = r.stats();
        assert_eq!(s.frames_invalid, 3, "{s:?}");
        assert_eq!(s.frames_completed, 0);
        assert_eq!(r.buffered_bytes(), 0);
    }

    #[test]
    fn subscription_limit_and_idle_forgetting() {
        let t0 = Instant::now();
        let limits = ReassemblerLimits {
            max_subscriptions: 2,
            ..ReassemblerLimits::default()
        };
        let mut r = Reassembler::new(limits);
        for sub in 0..2 {
            assert!(r.push(&frags(&frame(sub, 1, 10), 1200)[0], t0).is_some());
        }
        assert_eq!(r.push(&frags(&frame(2, 1, 10), 1200)[0], t0), None);
        assert_eq!(r.stats().datagrams_over_sub_limit, 1);
        // After the idle time the old ones are forgotten and a new one fits.
        let later = t0 + Duration::from_secs(31);
        assert!(r.push(&frags(&frame(2, 1, 10), 1200)[0], later).is_some());
        r.remove_subscription(2);
        assert_eq!(r.poll_expired(later), 0);
    }

    #[test]
    fn remove_subscription_releases_memory() {
        let now = Instant::now();
        let mut r = Reassembler::default();
        r.push(&frags(&frame(7, 1, 5000), 1200)[0], now);
        assert!(r.buffered_bytes() > 0);
        r.remove_subscription(7);
        assert_eq!(r.buffered_bytes(), 0);
        assert_eq!(r.frames_in_flight(), 0);
        assert_eq!(r.stats().frames_dropped(), 0);
    }

    #[test]
    fn sequence_wraps() {
        let now = Instant::now();
        let mut r = Reassembler::default();
        for seq in [u32::MAX - 1, u32::MAX, 0, 1] {
            let f = frame(1, seq, 2500);
            let d = frags(&f, 1200);
            let mut got = None;
            for x in &d {
                got = got.or(r.push(x, now));
            }
            assert_eq!(got, Some(f));
        }
        assert!(seq_before(u32::MAX, 0));
        assert!(!seq_before(0, u32::MAX));
    }

    /// Deterministic randomized check: arbitrary datagrams never panic the reassembler, and its
    /// accounting stays within the budget.
    #[test]
    fn random_datagrams_never_panic() {
        let mut rng = crate::test_rng::Rng::new(0xfeed);
        let limits = ReassemblerLimits {
            max_buffered_bytes: 256 * 1024,
            max_subscriptions: 16,
            ..ReassemblerLimits::default()
        };
        let mut r = Reassembler::new(limits);
        let t0 = Instant::now();
        for i in 0..20_000u64 {
            let len = rng.below(64);
            let mut d: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            // Mostly plausible headers with small fields, so that frames get built.
            if rng.below(4) != 0 && d.len() >= 12 {
                d[0] = 0x30;
                d[1] = rng.below(20) as u8;
                d[2..5].fill(0);
                d[5] = rng.below(12) as u8;
                d[6] = 0;
                d[8] = 0;
                d[9] = 1 + rng.below(4) as u8;
                d[7] = rng.below(usize::from(d[9])) as u8;
            }
            let now = t0 + Duration::from_millis(i / 4);
            let _ = r.push(&d, now);
            assert!(r.buffered_bytes() <= 256 * 1024);
            if i % 1000 == 0 {
                r.poll_expired(now);
            }
        }
        let s = r.stats();
        assert!(s.frames_completed > 0 && s.datagrams_malformed > 0, "{s:?}");
    }
}
