//! Length-prefixed frames for QUIC streams. The only module that knows about bincode.
//!
//! A frame is a 4-byte big-endian body length followed by the body, the message encoded with
//! bincode 2 `config::standard()` (little-endian, variable-length integers) under a
//! [`MAX_FRAME_BODY`] limit:
//!
//! ```text
//! +----------------+------------------------------+
//! | len: u32 (BE)  | body: len bytes (bincode 2)  |   len <= 65536
//! +----------------+------------------------------+
//! ```
//!
//! To replace bincode (it is unmaintained), change [`encode`] and [`decode_body`]; nothing else in
//! the crate depends on the body encoding.

use std::fmt;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::limits::{LimitError, MAX_FRAME_BODY};

/// Length of the frame header (the big-endian u32 body length).
pub const FRAME_HEADER_LEN: usize = 4;

/// A message that travels in frames: the handshake messages and the control messages.
pub trait Message: Serialize + DeserializeOwned {
    /// Whether bytes after the message inside its frame are allowed and ignored. True for the
    /// handshake, whose layout is frozen across protocol versions and may only grow at the end;
    /// false for control messages, whose layout is fixed by the negotiated version.
    const TRAILING_BYTES_ALLOWED: bool;

    /// Checks the size limits of every field.
    fn validate(&self) -> Result<(), LimitError>;
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A field is over its limit.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The encoded body is over [`MAX_FRAME_BODY`].
    #[error("encoded body is {len} bytes, the limit is {MAX_FRAME_BODY}")]
    TooLarge {
        /// Encoded body length.
        len: usize,
    },
    /// The serializer failed (a type the encoding cannot express).
    #[error("cannot encode: {0}")]
    Serialize(String),
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix is over [`MAX_FRAME_BODY`]. Fatal: the stream cannot be resynchronised.
    #[error("frame length {len} is over the limit of {MAX_FRAME_BODY}")]
    FrameTooLarge {
        /// The announced body length.
        len: u32,
    },
    /// The body is not a valid message (bad variant, truncated, invalid UTF-8, over-long
    /// string...). The frame has been consumed; the stream itself is still in sync.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The body holds a valid message followed by bytes that this message type does not allow.
    #[error("{extra} unexpected bytes after the message")]
    TrailingBytes {
        /// How many bytes were left over.
        extra: usize,
    },
    /// A decoded field is over its limit.
    #[error(transparent)]
    Limit(#[from] LimitError),
}

impl DecodeError {
    /// True when the stream cannot go on after this error (the decoder discards all further
    /// input). Other errors concern one frame only; the peer is still misbehaving, and closing
    /// the connection is usually the right answer either way.
    pub fn is_fatal(&self) -> bool {
        matches!(self, DecodeError::FrameTooLarge { .. })
    }
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_BODY>()
}

/// Appends one frame holding `msg` to `out`. On error `out` is left as it was.
pub fn encode<M: Message>(msg: &M, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    msg.validate()?;
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    if let Err(e) = bincode::serde::encode_into_std_write(msg, out, config()) {
        out.truncate(start);
        return Err(EncodeError::Serialize(e.to_string()));
    }
    let len = out.len() - start - FRAME_HEADER_LEN;
    if len > MAX_FRAME_BODY {
        out.truncate(start);
        return Err(EncodeError::TooLarge { len });
    }
    // `len <= MAX_FRAME_BODY` fits in a u32.
    out[start..start + FRAME_HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// One frame holding `msg`, as a new vector.
pub fn encode_to_vec<M: Message>(msg: &M) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode(msg, &mut out)?;
    Ok(out)
}

/// Decodes a frame body (without its length prefix).
pub fn decode_body<M: Message>(body: &[u8]) -> Result<M, DecodeError> {
    if body.len() > MAX_FRAME_BODY {
        return Err(DecodeError::FrameTooLarge {
            len: u32::try_from(body.len()).unwrap_or(u32::MAX),
        });
    }
    let (msg, used): (M, usize) = bincode::serde::borrow_decode_from_slice(body, config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used < body.len() && !M::TRAILING_BYTES_ALLOWED {
        return Err(DecodeError::TrailingBytes {
            extra: body.len() - used,
        });
    }
    msg.validate()?;
    Ok(msg)
}

enum State {
    /// Reading the 4-byte length prefix.
    Header,
    /// Reading a body of this many bytes.
    Body(usize),
    /// The stream is broken; the error is reported once by `next`.
    Failed(Option<DecodeError>),
}

/// Streaming decoder for frames read from a QUIC stream.
///
/// It holds at most one frame (length prefix plus at most [`MAX_FRAME_BODY`] body bytes):
/// [`push`](Self::push) takes only the bytes that the current frame still needs and returns how
/// many it took; [`next`](Self::next) then yields the frame. [`feed`](Self::feed) runs that loop
/// over a whole buffer. A length prefix over the limit is an error as soon as its four bytes are
/// in, before any body byte is buffered.
///
/// The handshake and the control messages share a stream; once the handshake message is out of
/// the decoder, [`switch`](Self::switch) turns it into a decoder for control messages.
pub struct FrameDecoder<M> {
    buf: Vec<u8>,
    state: State,
    _msg: PhantomData<fn() -> M>,
}

impl<M> fmt::Debug for FrameDecoder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("buffered", &self.buf.len())
            .field("failed", &matches!(self.state, State::Failed(_)))
            .finish()
    }
}

impl<M: Message> Default for FrameDecoder<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Message> FrameDecoder<M> {
    /// A decoder at the start of a frame.
    pub fn new() -> Self {
        FrameDecoder {
            buf: Vec::new(),
            state: State::Header,
            _msg: PhantomData,
        }
    }

    /// Bytes the current frame still needs; 0 when a frame or an error waits for `next`.
    fn needed(&self) -> usize {
        match self.state {
            State::Header => FRAME_HEADER_LEN - self.buf.len(),
            State::Body(len) => FRAME_HEADER_LEN + len - self.buf.len(),
            State::Failed(_) => 0,
        }
    }

    /// Takes bytes from the start of `data`, as many as the current frame still needs, and
    /// returns how many it took. It takes nothing while a decoded frame waits for
    /// [`next`](Self::next); after a fatal error it takes (and drops) everything.
    pub fn push(&mut self, data: &[u8]) -> usize {
        if matches!(self.state, State::Failed(_)) {
            return data.len();
        }
        let mut used = 0;
        loop {
            let need = self.needed();
            if need == 0 || used == data.len() {
                return used;
            }
            let take = need.min(data.len() - used);
            self.buf.extend_from_slice(&data[used..used + take]);
            used += take;
            if matches!(self.state, State::Header) && self.buf.len() == FRAME_HEADER_LEN {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
                if len as usize > MAX_FRAME_BODY {
                    self.buf = Vec::new();
                    self.state = State::Failed(Some(DecodeError::FrameTooLarge { len }));
                    return used;
                }
                self.state = State::Body(len as usize);
            }
        }
    }

    /// The next decoded frame, if a whole one has been pushed. After a fatal error, yields that
    /// error once and then `None` forever.
    ///
    /// Deliberately not `Iterator::next`: `None` means "push more bytes", not "finished".
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<M, DecodeError>> {
        match &mut self.state {
            State::Failed(err) => err.take().map(Err),
            State::Header => None,
            State::Body(len) => {
                if self.buf.len() < FRAME_HEADER_LEN + *len {
                    return None;
                }
                let result = decode_body(&self.buf[FRAME_HEADER_LEN..]);
                self.buf.clear();
                self.state = State::Header;
                Some(result)
            }
        }
    }

    /// Pushes all of `data`, yielding every frame it completes. Bytes of a frame that `data`
    /// leaves unfinished stay in the decoder for the next call.
    pub fn feed<'a>(&'a mut self, data: &'a [u8]) -> Feed<'a, M> {
        Feed {
            decoder: self,
            rest: data,
        }
    }

    /// Bytes held for the frame in progress (at most 4 + [`MAX_FRAME_BODY`]).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether a fatal error has been seen (all further input is dropped).
    pub fn is_failed(&self) -> bool {
        matches!(self.state, State::Failed(_))
    }

    /// The same decoder, for another message type, keeping a frame in progress (after the
    /// handshake message, switch to control messages).
    pub fn switch<N: Message>(self) -> FrameDecoder<N> {
        FrameDecoder {
            buf: self.buf,
            state: self.state,
            _msg: PhantomData,
        }
    }
}

/// Iterator returned by [`FrameDecoder::feed`].
pub struct Feed<'a, M> {
    decoder: &'a mut FrameDecoder<M>,
    rest: &'a [u8],
}

impl<M: Message> Iterator for Feed<'_, M> {
    type Item = Result<M, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.decoder.next() {
                return Some(item);
            }
            if self.rest.is_empty() {
                return None;
            }
            let used = self.decoder.push(self.rest);
            self.rest = &self.rest[used..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::ControlMsg;
    use crate::handshake::HandshakeMsg;

    fn kf(sub: u32) -> ControlMsg {
        ControlMsg::KeyframeRequest { sub }
    }

    #[test]
    fn frame_layout_is_be_length_then_bincode() {
        let frame = encode_to_vec(&kf(5)).expect("encode");
        // KeyframeRequest is variant 5; sub 5 is one varint byte.
        assert_eq!(frame, [0, 0, 0, 2, 5, 5]);
        let frame = encode_to_vec(&kf(300)).expect("encode");
        // 300 does not fit one varint byte: marker 251, then u16 little-endian.
        assert_eq!(frame, [0, 0, 0, 4, 5, 251, 0x2c, 0x01]);
    }

    #[test]
    fn encode_appends_and_decodes_back() {
        let mut out = vec![0xaa];
        encode(&kf(1), &mut out).expect("encode");
        encode(&kf(2), &mut out).expect("encode");
        assert_eq!(out[0], 0xaa, "encode appends");
        let mut dec = FrameDecoder::<ControlMsg>::new();
        let got: Vec<_> = dec.feed(&out[1..]).collect();
        assert_eq!(got, vec![Ok(kf(1)), Ok(kf(2))]);
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn push_takes_only_the_current_frame() {
        let mut data = encode_to_vec(&kf(1)).expect("encode");
        encode(&kf(2), &mut data).expect("encode");
        let mut dec = FrameDecoder::<ControlMsg>::new();
        let first = dec.push(&data);
        assert_eq!(first, 6);
        // A decoded frame waits: nothing more is taken.
        assert_eq!(dec.push(&data[first..]), 0);
        assert_eq!(dec.next(), Some(Ok(kf(1))));
        assert_eq!(dec.next(), None);
        assert_eq!(dec.push(&data[first..]), 6);
        assert_eq!(dec.next(), Some(Ok(kf(2))));
        assert_eq!(dec.next(), None);
    }

    #[test]
    fn oversized_length_fails_before_any_body() {
        let mut dec = FrameDecoder::<ControlMsg>::new();
        let len = (MAX_FRAME_BODY as u32 + 1).to_be_bytes();
        assert_eq!(dec.push(&len[..3]), 3);
        assert_eq!(dec.next(), None);
        assert_eq!(dec.push(&len[3..]), 1);
        assert_eq!(dec.buffered(), 0);
        let err = dec.next().expect("an error").expect_err("too large");
        assert_eq!(
            err,
            DecodeError::FrameTooLarge {
                len: MAX_FRAME_BODY as u32 + 1
            }
        );
        assert!(err.is_fatal());
        assert!(dec.is_failed());
        assert_eq!(dec.next(), None);
        // Everything afterwards is dropped, not buffered.
        assert_eq!(dec.push(&[0u8; 100_000]), 100_000);
        assert_eq!(dec.buffered(), 0);
        assert_eq!(dec.next(), None);
    }

    #[test]
    fn max_length_frame_is_buffered_then_rejected_as_malformed() {
        let mut data = (MAX_FRAME_BODY as u32).to_be_bytes().to_vec();
        data.extend(std::iter::repeat_n(0xff, MAX_FRAME_BODY));
        let mut dec = FrameDecoder::<ControlMsg>::new();
        assert_eq!(dec.push(&data), data.len());
        assert_eq!(dec.buffered(), data.len());
        let err = dec.next().expect("a frame").expect_err("garbage");
        assert!(matches!(err, DecodeError::Malformed(_)), "{err:?}");
        assert!(!err.is_fatal());
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn empty_and_unknown_variant_and_trailing_bytes() {
        assert!(matches!(
            decode_body::<ControlMsg>(&[]),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode_body::<ControlMsg>(&[200]),
            Err(DecodeError::Malformed(_))
        ));
        assert_eq!(
            decode_body::<ControlMsg>(&[5, 5, 0]),
            Err(DecodeError::TrailingBytes { extra: 1 })
        );
        // The handshake allows trailing bytes (fields appended by later versions).
        let mut body = encode_to_vec(&HandshakeMsg::Refuse {
            reason: crate::handshake::RefuseReason::WrongCluster,
        })
        .expect("encode")
        .split_off(FRAME_HEADER_LEN);
        body.extend_from_slice(b"future fields");
        assert!(decode_body::<HandshakeMsg>(&body).is_ok());
    }

    #[test]
    fn over_long_string_is_an_error_on_both_sides() {
        use crate::control::Subscribe;
        let sub = Subscribe {
            sub: 1,
            session_id: [0; 16],
            track_name: "x".repeat(crate::limits::MAX_TRACK_NAME + 1),
            app: "app".into(),
            layers: crate::control::LayerSet::All,
        };
        let msg = ControlMsg::Subscribe(sub);
        assert!(matches!(
            encode_to_vec(&msg),
            Err(EncodeError::Limit(LimitError {
                field: "track_name",
                ..
            }))
        ));
        // Hand-made body: variant 0, sub 1, 16 zero bytes, string of 257 'x'.
        let mut body = vec![0u8, 1];
        body.extend_from_slice(&[0; 16]);
        body.extend_from_slice(&[251, 0x01, 0x01]); // 257 as varint
        body.extend(std::iter::repeat_n(b'x', 257));
        let err = decode_body::<ControlMsg>(&body).expect_err("too long");
        assert!(matches!(err, DecodeError::Malformed(_)), "{err:?}");
        // A string length far beyond the frame is an error, not an allocation.
        let mut body = vec![0u8, 1];
        body.extend_from_slice(&[0; 16]);
        body.push(253); // u64 length follows
        body.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_body::<ControlMsg>(&body).is_err());
    }

    #[test]
    fn switch_keeps_the_frame_in_progress() {
        let mut data = Vec::new();
        encode(
            &HandshakeMsg::Refuse {
                reason: crate::handshake::RefuseReason::Overloaded,
            },
            &mut data,
        )
        .expect("encode");
        let hs_len = data.len();
        encode(&kf(9), &mut data).expect("encode");
        let mut dec = FrameDecoder::<HandshakeMsg>::new();
        let used = dec.push(&data);
        assert_eq!(used, hs_len);
        assert!(matches!(dec.next(), Some(Ok(HandshakeMsg::Refuse { .. }))));
        // Part of the next frame arrives before the switch.
        assert_eq!(dec.push(&data[used..used + 3]), 3);
        let mut dec = dec.switch::<ControlMsg>();
        let got: Vec<_> = dec.feed(&data[used + 3..]).collect();
        assert_eq!(got, vec![Ok(kf(9))]);
    }

    /// Deterministic randomized check: arbitrary bytes never panic the decoder, and it never
    /// holds more than one maximal frame.
    #[test]
    fn random_bytes_never_panic() {
        let mut rng = crate::test_rng::Rng::new(0x5eed_c0de);
        for _ in 0..3000 {
            let len = rng.below(300);
            let mut data: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
            // Often start with a plausible small length so bodies get parsed.
            if rng.below(2) == 0 && data.len() >= 4 {
                let body = (data.len() - 4) as u32;
                data[..4].copy_from_slice(&body.to_be_bytes());
            }
            let mut control = FrameDecoder::<ControlMsg>::new();
            let mut handshake = FrameDecoder::<HandshakeMsg>::new();
            let mut rest = &data[..];
            while !rest.is_empty() {
                let step = 1 + rng.below(rest.len());
                let (chunk, tail) = rest.split_at(step);
                for item in control.feed(chunk) {
                    let _ = item;
                }
                for item in handshake.feed(chunk) {
                    let _ = item;
                }
                assert!(control.buffered() <= FRAME_HEADER_LEN + MAX_FRAME_BODY);
                rest = tail;
            }
            let _ = decode_body::<ControlMsg>(&data);
            let _ = decode_body::<HandshakeMsg>(&data);
        }
    }
}
