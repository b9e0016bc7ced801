//! Size limits of the protocol, and the checks that enforce them on both sides of the wire.
//!
//! Every variable-length field has a maximum. Encoders refuse to send an over-long field
//! ([`LimitError`]); decoders check the length of a string *before* copying it out of the
//! received frame, so a hostile length costs nothing beyond the frame itself, which is bounded
//! by [`MAX_FRAME_BODY`].

use std::fmt;

use serde::Deserializer;
use serde::de::{Error, Visitor};

/// Largest body of one control or handshake frame, in bytes (the u32 length prefix excluded).
pub const MAX_FRAME_BODY: usize = 64 * 1024;
/// Longest node id, in bytes.
pub const MAX_NODE_ID: usize = 64;
/// Longest Calls app id in a `Subscribe`.
pub const MAX_APP_ID: usize = 64;
/// Longest track name, in bytes (UTF-8).
pub const MAX_TRACK_NAME: usize = 256;
/// Longest codec MIME type (`video/VP8`, `audio/opus`), in bytes.
pub const MAX_MIME: usize = 64;
/// Most frames one `Nack` asks for (a loss burst longer than this is not worth repairing:
/// the subscriber asks for a keyframe instead).
pub const MAX_NACK_FRAMES: usize = 64;
/// Most fragment indexes listed for one frame of a `Nack`; more missing: ask for the whole frame.
pub const MAX_NACK_FRAGMENTS: usize = 64;
/// Most simulcast layers a `SetLayers` or `Layers` message names (Chromium sends 3).
pub const MAX_LAYERS: usize = 3;
/// Longest human-readable reason in an error message, in bytes.
pub const MAX_REASON: usize = 256;

/// A field is longer than the protocol allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}` is {len} bytes, the limit is {max}")]
pub struct LimitError {
    /// Name of the field.
    pub field: &'static str,
    /// Its length in bytes.
    pub len: usize,
    /// The limit in bytes.
    pub max: usize,
}

/// Checks `value.len() <= max`.
pub(crate) fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), LimitError> {
    if value.len() > max {
        Err(LimitError {
            field,
            len: value.len(),
            max,
        })
    } else {
        Ok(())
    }
}

/// Checks `count <= max` for a list field.
pub(crate) fn check_count(field: &'static str, count: usize, max: usize) -> Result<(), LimitError> {
    if count > max {
        Err(LimitError {
            field,
            len: count,
            max,
        })
    } else {
        Ok(())
    }
}

/// Serde `deserialize_with` helper: a `String` of at most `MAX` bytes.
///
/// Asks the deserializer for a `str` so that a borrowing decoder (bincode's
/// `borrow_decode_from_slice`) hands out a slice of the frame; the length is checked before the
/// `String` is allocated.
pub(crate) fn bounded_string<'de, D, const MAX: usize>(d: D) -> Result<String, D::Error>
where
    D: Deserializer<'de>,
{
    struct Bounded<const MAX: usize>;

    impl<const MAX: usize> Visitor<'_> for Bounded<MAX> {
        type Value = String;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a string of at most {MAX} bytes")
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<String, E> {
            if v.len() > MAX {
                Err(E::invalid_length(v.len(), &self))
            } else {
                Ok(v.to_owned())
            }
        }

        fn visit_string<E: Error>(self, v: String) -> Result<String, E> {
            if v.len() > MAX {
                Err(E::invalid_length(v.len(), &self))
            } else {
                Ok(v)
            }
        }
    }

    d.deserialize_str(Bounded::<MAX>)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_len_boundaries() {
        assert!(check_len("x", "abcd", 4).is_ok());
        let err = check_len("x", "abcde", 4).expect_err("over the limit");
        assert_eq!((err.field, err.len, err.max), ("x", 5, 4));
        // The limit is in bytes, not characters.
        assert!(check_len("x", "éé", 3).is_err());
    }
}
