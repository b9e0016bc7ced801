//! DataChannel subscriptions: one reliable, ordered QUIC bidirectional stream per subscribed
//! channel, so each channel keeps its order and reliability across nodes (media datagrams would
//! lose and reorder messages).
//!
//! The subscribing node opens the stream on its link and sends [`DcFrame::Subscribe`]; the
//! publishing node answers [`DcFrame::Accepted`] or [`DcFrame::Refused`] (then finishes the
//! stream). After `Accepted` the publisher sends each message on the channel as
//! [`DcFrame::Message`]; the subscriber sends messages back (a `canReply` subscriber's replies)
//! the same way. [`DcFrame::Ended`] from the publisher: the channel is gone. Either side
//! finishing or resetting the stream ends the subscription.
//!
//! Frames do not use bincode: a message is up to [`MAX_DC_MESSAGE`] bytes, more than a control
//! frame may carry, and the layout is trivial. Each frame is a 4-byte big-endian body length,
//! then the body: one tag byte and the tag's fields. Every length is checked before anything is
//! copied; a decoder holds at most one frame.
//!
//! | tag | frame | fields |
//! |---|---|---|
//! | 1 | `Subscribe` | session id (16 bytes), app (u8 length + bytes), channel name (u16 length + bytes) |
//! | 2 | `Accepted` | — |
//! | 3 | `Refused` | reason (u16 length + UTF-8) |
//! | 4 | `Message` | binary flag (1 byte: 0 or 1), data (the rest) |
//! | 5 | `Ended` | — |
//! | 6 | `Claim` | sequence (u32), want (1 byte: 0 release, 1 claim) |
//! | 7 | `ClaimAnswer` | sequence (u32), granted (1 byte: 0 or 1) |
//!
//! `canReply` is granted by the publisher's node, for the whole cluster: a subscribing node
//! that wants one of its subscribers to reply sends `Claim{seq, want: true}` and gets
//! `ClaimAnswer{seq, granted}`; at most one node (or a local subscriber of the publisher's node)
//! holds the grant. `Claim{seq, want: false}` gives grant `seq` back; a stale release (another
//! `seq`) is ignored. The stream ending gives it back too. Replies from a node without the grant
//! are dropped by the publisher's node.
//!
//! The first byte a subscriber sends on such a stream is [`DC_STREAM_MAGIC`], so the publisher
//! tells these streams from anything else a peer might open.

use crate::limits::{MAX_APP_ID, MAX_REASON, MAX_TRACK_NAME};

/// Opens every DataChannel stream (before its first frame).
pub const DC_STREAM_MAGIC: u8 = 0xdc;
/// Largest DataChannel message carried (what the node forwards at most).
pub const MAX_DC_MESSAGE: usize = 64 * 1024;
/// Largest frame body: a message and its two header bytes.
pub const MAX_DC_BODY: usize = MAX_DC_MESSAGE + 2;
/// The length prefix.
pub const DC_HEADER_LEN: usize = 4;

const TAG_SUBSCRIBE: u8 = 1;
const TAG_ACCEPTED: u8 = 2;
const TAG_REFUSED: u8 = 3;
const TAG_MESSAGE: u8 = 4;
const TAG_ENDED: u8 = 5;
const TAG_CLAIM: u8 = 6;
const TAG_CLAIM_ANSWER: u8 = 7;

/// One frame on a DataChannel stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DcFrame {
    /// Subscriber → publisher, first frame: forward channel `channel` of `session_id`.
    Subscribe {
        /// The publishing Calls session, as 16 bytes.
        session_id: [u8; 16],
        /// The Calls app (a node serves only the same app), at most [`MAX_APP_ID`] bytes.
        app: String,
        /// The channel's name, at most [`MAX_TRACK_NAME`] bytes.
        channel: String,
    },
    /// Publisher → subscriber: messages follow.
    Accepted,
    /// Publisher → subscriber: no such channel (or not for this app); the stream ends.
    Refused {
        /// Why, at most [`MAX_REASON`] bytes.
        reason: String,
    },
    /// Either way: one DataChannel message.
    Message {
        /// Binary (true) or text.
        binary: bool,
        /// The message, at most [`MAX_DC_MESSAGE`] bytes.
        data: Vec<u8>,
    },
    /// Publisher → subscriber: the channel was closed; the stream ends.
    Ended,
    /// Subscriber → publisher: claim (`want`) or give back (`!want`) the channel's `canReply`
    /// grant for a subscriber on this node.
    Claim {
        /// Chosen by the subscriber's node; the answer and the release carry it.
        seq: u32,
        /// Claim (true) or release (false).
        want: bool,
    },
    /// Publisher → subscriber: the answer to `Claim{seq, want: true}`.
    ClaimAnswer {
        /// The claim's sequence.
        seq: u32,
        /// The subscriber's node now holds the grant.
        granted: bool,
    },
}

/// Why bytes were not a frame. Any error ends the stream: the reader cannot resynchronize.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DcError {
    /// The length prefix is over [`MAX_DC_BODY`] (or zero).
    #[error("DataChannel frame of {0} bytes is out of bounds")]
    BadLength(usize),
    /// An unknown tag byte.
    #[error("unknown DataChannel frame tag {0}")]
    UnknownTag(u8),
    /// A field is longer than its bound, runs past the body, or leaves bytes after it.
    #[error("malformed DataChannel frame: {0}")]
    Malformed(&'static str),
    /// A string is not UTF-8.
    #[error("DataChannel frame field is not UTF-8")]
    NotUtf8,
    /// Encoding: a field over its bound.
    #[error("DataChannel frame field over its bound: {0}")]
    TooLong(&'static str),
}

impl DcFrame {
    /// Appends the frame (length prefix and body) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), DcError> {
        let mut body = Vec::new();
        match self {
            DcFrame::Subscribe {
                session_id,
                app,
                channel,
            } => {
                if app.len() > MAX_APP_ID {
                    return Err(DcError::TooLong("app"));
                }
                if channel.len() > MAX_TRACK_NAME {
                    return Err(DcError::TooLong("channel"));
                }
                body.push(TAG_SUBSCRIBE);
                body.extend_from_slice(session_id);
                body.push(app.len() as u8);
                body.extend_from_slice(app.as_bytes());
                body.extend_from_slice(&(channel.len() as u16).to_be_bytes());
                body.extend_from_slice(channel.as_bytes());
            }
            DcFrame::Accepted => body.push(TAG_ACCEPTED),
            DcFrame::Refused { reason } => {
                if reason.len() > MAX_REASON {
                    return Err(DcError::TooLong("reason"));
                }
                body.push(TAG_REFUSED);
                body.extend_from_slice(&(reason.len() as u16).to_be_bytes());
                body.extend_from_slice(reason.as_bytes());
            }
            DcFrame::Message { binary, data } => {
                if data.len() > MAX_DC_MESSAGE {
                    return Err(DcError::TooLong("data"));
                }
                body.reserve(2 + data.len());
                body.push(TAG_MESSAGE);
                body.push(u8::from(*binary));
                body.extend_from_slice(data);
            }
            DcFrame::Ended => body.push(TAG_ENDED),
            DcFrame::Claim { seq, want } => {
                body.push(TAG_CLAIM);
                body.extend_from_slice(&seq.to_be_bytes());
                body.push(u8::from(*want));
            }
            DcFrame::ClaimAnswer { seq, granted } => {
                body.push(TAG_CLAIM_ANSWER);
                body.extend_from_slice(&seq.to_be_bytes());
                body.push(u8::from(*granted));
            }
        }
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        Ok(())
    }

    /// The frame as bytes.
    pub fn to_vec(&self) -> Result<Vec<u8>, DcError> {
        let mut v = Vec::new();
        self.encode(&mut v)?;
        Ok(v)
    }

    /// Decodes one frame body (without its length prefix).
    pub fn decode_body(body: &[u8]) -> Result<DcFrame, DcError> {
        let (&tag, rest) = body.split_first().ok_or(DcError::BadLength(0))?;
        let mut r = Reader(rest);
        let frame = match tag {
            TAG_SUBSCRIBE => {
                let sid = r.take(16, "session id")?;
                let mut session_id = [0u8; 16];
                session_id.copy_from_slice(sid);
                let app_len = usize::from(r.take(1, "app length")?[0]);
                if app_len > MAX_APP_ID {
                    return Err(DcError::Malformed("app over its bound"));
                }
                let app = utf8(r.take(app_len, "app")?)?;
                let ch_len = r.u16("channel length")?;
                if ch_len > MAX_TRACK_NAME {
                    return Err(DcError::Malformed("channel over its bound"));
                }
                let channel = utf8(r.take(ch_len, "channel")?)?;
                DcFrame::Subscribe {
                    session_id,
                    app,
                    channel,
                }
            }
            TAG_ACCEPTED => DcFrame::Accepted,
            TAG_REFUSED => {
                let len = r.u16("reason length")?;
                if len > MAX_REASON {
                    return Err(DcError::Malformed("reason over its bound"));
                }
                DcFrame::Refused {
                    reason: utf8(r.take(len, "reason")?)?,
                }
            }
            TAG_MESSAGE => {
                let binary = match r.take(1, "binary flag")?[0] {
                    0 => false,
                    1 => true,
                    _ => return Err(DcError::Malformed("binary flag is not 0 or 1")),
                };
                let data = r.0.to_vec();
                if data.len() > MAX_DC_MESSAGE {
                    return Err(DcError::Malformed("message over its bound"));
                }
                r.0 = &[];
                DcFrame::Message { binary, data }
            }
            TAG_ENDED => DcFrame::Ended,
            TAG_CLAIM => DcFrame::Claim {
                seq: r.u32("claim sequence")?,
                want: r.flag("claim want")?,
            },
            TAG_CLAIM_ANSWER => DcFrame::ClaimAnswer {
                seq: r.u32("claim sequence")?,
                granted: r.flag("claim granted")?,
            },
            other => return Err(DcError::UnknownTag(other)),
        };
        if !r.0.is_empty() {
            return Err(DcError::Malformed("bytes after the frame"));
        }
        Ok(frame)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DcError> {
        if self.0.len() < n {
            return Err(DcError::Malformed(what));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DcError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn flag(&mut self, what: &'static str) -> Result<bool, DcError> {
        match self.take(1, what)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DcError::Malformed(what)),
        }
    }

    fn u16(&mut self, what: &'static str) -> Result<usize, DcError> {
        let b = self.take(2, what)?;
        Ok(usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
}

fn utf8(b: &[u8]) -> Result<String, DcError> {
    String::from_utf8(b.to_vec()).map_err(|_| DcError::NotUtf8)
}

/// Reassembles frames from stream reads of any size; holds at most one frame
/// ([`DC_HEADER_LEN`] + [`MAX_DC_BODY`] bytes). After an error it stays failed.
#[derive(Debug, Default)]
pub struct DcDecoder {
    buf: Vec<u8>,
    failed: bool,
}

impl DcDecoder {
    /// An empty decoder.
    pub fn new() -> DcDecoder {
        DcDecoder::default()
    }

    /// Feeds bytes; returns the frames completed, in order. An error is the last item.
    pub fn feed(&mut self, mut data: &[u8]) -> Vec<Result<DcFrame, DcError>> {
        let mut out = Vec::new();
        while !self.failed && !data.is_empty() {
            // Take only what the current frame needs, so the buffer never holds two frames.
            let need = self.needed();
            let n = need.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == DC_HEADER_LEN {
                let len = self.body_len();
                if len == 0 || len > MAX_DC_BODY {
                    self.failed = true;
                    out.push(Err(DcError::BadLength(len)));
                    break;
                }
            }
            if self.buf.len() > DC_HEADER_LEN && self.buf.len() == DC_HEADER_LEN + self.body_len() {
                let frame = DcFrame::decode_body(&self.buf[DC_HEADER_LEN..]);
                self.buf.clear();
                if frame.is_err() {
                    self.failed = true;
                }
                out.push(frame);
            }
        }
        out
    }

    /// Bytes held (at most one frame).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// A previous error ended the stream.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    fn body_len(&self) -> usize {
        let b = &self.buf[..DC_HEADER_LEN];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
    }

    fn needed(&self) -> usize {
        if self.buf.len() < DC_HEADER_LEN {
            DC_HEADER_LEN - self.buf.len()
        } else {
            DC_HEADER_LEN + self.body_len() - self.buf.len()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<DcFrame> {
        vec![
            DcFrame::Subscribe {
                session_id: [7; 16],
                app: "app".into(),
                channel: "chat".into(),
            },
            DcFrame::Accepted,
            DcFrame::Refused {
                reason: "no such channel".into(),
            },
            DcFrame::Message {
                binary: true,
                data: vec![1, 2, 3],
            },
            DcFrame::Message {
                binary: false,
                data: vec![b'x'; MAX_DC_MESSAGE],
            },
            DcFrame::Message {
                binary: false,
                data: Vec::new(),
            },
            DcFrame::Ended,
            DcFrame::Claim { seq: 7, want: true },
            DcFrame::Claim {
                seq: u32::MAX,
                want: false,
            },
            DcFrame::ClaimAnswer {
                seq: 7,
                granted: false,
            },
        ]
    }

    #[test]
    fn every_frame_round_trips_in_pieces_of_any_size_and_in_order() {
        let frames = all();
        let mut bytes = Vec::new();
        for f in &frames {
            f.encode(&mut bytes).expect("encodes");
        }
        for step in [1, 2, 3, 7, 4096, bytes.len()] {
            let mut d = DcDecoder::new();
            let mut got = Vec::new();
            for piece in bytes.chunks(step) {
                for f in d.feed(piece) {
                    got.push(f.expect("decodes"));
                }
                assert!(d.buffered() <= DC_HEADER_LEN + MAX_DC_BODY);
            }
            assert_eq!(got, frames, "pieces of {step}");
        }
    }

    #[test]
    fn oversized_fields_are_refused_both_ways() {
        let big = DcFrame::Message {
            binary: true,
            data: vec![0; MAX_DC_MESSAGE + 1],
        };
        assert_eq!(big.to_vec(), Err(DcError::TooLong("data")));
        let long_name = DcFrame::Subscribe {
            session_id: [0; 16],
            app: "a".into(),
            channel: "n".repeat(MAX_TRACK_NAME + 1),
        };
        assert!(long_name.to_vec().is_err());
        // A length prefix past the bound fails before any body is buffered.
        let mut d = DcDecoder::new();
        let res = d.feed(&((MAX_DC_BODY + 1) as u32).to_be_bytes());
        assert_eq!(res, vec![Err(DcError::BadLength(MAX_DC_BODY + 1))]);
        assert!(d.is_failed());
        assert!(
            d.feed(&[0, 0, 0, 1, TAG_ACCEPTED]).is_empty(),
            "stays failed"
        );
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        for body in [
            &[][..],
            &[TAG_SUBSCRIBE, 1, 2],
            &[TAG_REFUSED, 0xff, 0xff],
            &[TAG_MESSAGE, 2],
            &[TAG_ACCEPTED, 0],
            &[TAG_CLAIM, 0, 0, 0, 1],
            &[TAG_CLAIM, 0, 0, 0, 1, 2],
            &[TAG_CLAIM_ANSWER, 0, 0, 0, 1, 1, 0],
            &[99],
        ] {
            assert!(DcFrame::decode_body(body).is_err(), "{body:?}");
        }
    }
}
