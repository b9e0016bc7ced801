//! The handshake: the first frame each way on a relay connection.
//!
//! The dialing node sends [`Hello`]; the accepting node checks it with [`check_hello`] (plus its
//! own checks: not itself, not a node id it already has a connection from, not draining) and
//! answers [`Welcome`] or `Refuse`. After a `Refuse` the acceptor closes the connection. Both
//! messages travel in frames ([`crate::codec`]) as a [`HandshakeMsg`].
//!
//! The handshake's layout is frozen for every protocol version so that any two versions can
//! always tell each other what they speak: later versions may only append fields at the end of a
//! handshake message, and decoders ignore bytes after the fields they know (the only frames where
//! trailing bytes are allowed). A `Refuse` that a peer cannot decode (a reason added later) is
//! still a refusal.

use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

use crate::codec::Message;
use crate::limits::{LimitError, MAX_NODE_ID, check_len};

/// The relay protocol version this crate speaks. 2: media frames carry their simulcast rid
/// (media format version 2). 3: the subscriber repairs lost frames with `Nack`, and the unused
/// `Stats`, `Ping`/`Pong`, failure codes and `fmtp` are gone (control variants renumbered); the
/// media datagram layout is unchanged. 4: each simulcast layer is relayed on its own: `Subscribe`
/// names the layers it wants, `SetLayers` changes them, the publisher announces the track's
/// layers and which flow (`Layers`), keyframes are asked per layer (`LayerKeyframeRequest`); the
/// media datagram layout is unchanged. 5: the relay carries RTP packets, one per relayed frame
/// (media format version 3: the payload prefix adds the origin's extended sequence number and
/// the marker bit; the keyframe flag means "starts a keyframe"); frame numbering, `Nack` repair
/// and fragmentation now work per packet. A node of another version is refused with the
/// supported range.
pub const PROTOCOL_VERSION: u16 = 5;

/// The versions this crate can speak, for [`check_hello`].
pub const SUPPORTED_VERSIONS: RangeInclusive<u16> = PROTOCOL_VERSION..=PROTOCOL_VERSION;

/// ALPN protocol id for relay connections (QUIC requires one; it is not versioned, the
/// handshake carries the version).
pub const ALPN: &[u8] = b"trackmesh-relay";

/// Context string hashed with the cluster secret into the cluster identity.
const IDENTITY_CONTEXT: &[u8] = b"trackmesh relay cluster identity v1";

/// The cluster identity sent in [`Hello::cluster`]: HMAC-SHA-256 of a fixed context string
/// keyed by the cluster secret.
///
/// It lets a node refuse a peer configured for another cluster (a different secret) without
/// revealing the secret. It is not an authenticator on its own: whoever learns it can present
/// it. Peers authenticate each other by QUIC/TLS with the cluster's certificates; the identity
/// travels inside that TLS session.
pub fn cluster_identity(secret: &str) -> [u8; 32] {
    use hmac::{KeyInit, Mac};
    // HMAC accepts keys of any length, so this cannot fail; the fallback keeps it panic-free.
    match hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(IDENTITY_CONTEXT);
            mac.finalize().into_bytes().into()
        }
        Err(_) => [0u8; 32],
    }
}

/// Whether `id` is a valid node id: 1 to [`MAX_NODE_ID`] bytes of ASCII letters, digits, `-`,
/// `_`, `.` and `:` (printable in logs and metrics labels as is).
pub fn is_valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NODE_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// A handshake frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandshakeMsg {
    /// Dialer → acceptor, first frame on the connection.
    Hello(Hello),
    /// Acceptor → dialer: accepted.
    Welcome(Welcome),
    /// Acceptor → dialer: refused; the acceptor closes the connection.
    Refuse {
        /// Why.
        reason: RefuseReason,
    },
}

/// Dialer → acceptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the dialer will speak on this connection.
    pub protocol_version: u16,
    /// [`cluster_identity`] of the dialer's cluster secret.
    pub cluster: [u8; 32],
    /// The dialer's node id (see [`is_valid_node_id`]).
    #[serde(deserialize_with = "crate::limits::bounded_string::<_, MAX_NODE_ID>")]
    pub node_id: String,
    /// The dialer's node tag (the prefix of the session ids it owns).
    pub node_tag: u32,
}

/// Acceptor → dialer: the connection is accepted at the Hello's version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The acceptor's node id, so the dialer can check it reached the node it meant.
    #[serde(deserialize_with = "crate::limits::bounded_string::<_, MAX_NODE_ID>")]
    pub node_id: String,
    /// The acceptor's node tag.
    pub node_tag: u32,
}

/// Why a Hello was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
pub enum RefuseReason {
    /// The acceptor speaks only versions `min..=max`; the dialer may retry with one of them.
    #[error("unsupported protocol version (supported: {min}..={max})")]
    UnsupportedVersion {
        /// Lowest supported version.
        min: u16,
        /// Highest supported version.
        max: u16,
    },
    /// The cluster identity differs: the two nodes have different cluster secrets.
    #[error("wrong cluster")]
    WrongCluster,
    /// The node id is empty, too long or has characters outside the allowed set.
    #[error("invalid node id")]
    InvalidNodeId,
    /// The dialer has the acceptor's own node id: the dialer itself, or another node configured
    /// with the same id.
    #[error("duplicate node")]
    DuplicateNode,
    /// The acceptor is draining or at its connection limit.
    #[error("overloaded or draining")]
    Overloaded,
}

/// Checks a Hello against the acceptor's cluster identity and supported versions.
///
/// The version is checked first, so that a dialer of another version learns what to retry with
/// even if other fields changed meaning. The cluster identity is compared in constant time.
pub fn check_hello(
    hello: &Hello,
    expected_cluster: &[u8; 32],
    supported_versions: RangeInclusive<u16>,
) -> Result<(), RefuseReason> {
    if !supported_versions.contains(&hello.protocol_version) {
        return Err(RefuseReason::UnsupportedVersion {
            min: *supported_versions.start(),
            max: *supported_versions.end(),
        });
    }
    let diff = hello
        .cluster
        .iter()
        .zip(expected_cluster)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if diff != 0 {
        return Err(RefuseReason::WrongCluster);
    }
    if !is_valid_node_id(&hello.node_id) {
        return Err(RefuseReason::InvalidNodeId);
    }
    Ok(())
}

impl Message for HandshakeMsg {
    const TRAILING_BYTES_ALLOWED: bool = true;

    fn validate(&self) -> Result<(), LimitError> {
        match self {
            HandshakeMsg::Hello(h) => check_len("node_id", &h.node_id, MAX_NODE_ID),
            HandshakeMsg::Welcome(w) => check_len("node_id", &w.node_id, MAX_NODE_ID),
            HandshakeMsg::Refuse { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{FrameDecoder, decode_body, encode_to_vec};

    fn hello() -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            cluster: cluster_identity("s3cret"),
            node_id: "node-a.eu:1".into(),
            node_tag: 0xabcd0123,
        }
    }

    #[test]
    fn cluster_identity_is_keyed_and_stable() {
        let a = cluster_identity("s3cret");
        assert_eq!(a, cluster_identity("s3cret"));
        assert_ne!(a, cluster_identity("s3cret "));
        assert_ne!(a, cluster_identity(""));
        // Pinned so that every build of the node derives the same identity.
        let hex: String = a.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "fb0cb21a09749976498e3987ccc4a1156216aefe3445011055a9be530da8b08f"
        );
    }

    #[test]
    fn good_hello_passes() {
        assert_eq!(
            check_hello(&hello(), &cluster_identity("s3cret"), SUPPORTED_VERSIONS),
            Ok(())
        );
    }

    #[test]
    fn hello_refusals() {
        let cluster = cluster_identity("s3cret");
        let mut h = hello();
        h.protocol_version = 2;
        assert_eq!(
            check_hello(&h, &cluster, 1..=1),
            Err(RefuseReason::UnsupportedVersion { min: 1, max: 1 })
        );
        assert_eq!(check_hello(&h, &cluster, 1..=3), Ok(()));

        // A node of protocol 1 (relayed frames without their simulcast rid), 2 (no Nack,
        // control messages numbered differently) or 3 (every layer on one subscription, no
        // `SetLayers`/`Layers`) or 4 (whole frames on the relay, not RTP packets) is refused,
        // and told what this one speaks.
        for old in [1, 2, 3, 4] {
            let mut h = hello();
            h.protocol_version = old;
            let refused = check_hello(&h, &cluster, SUPPORTED_VERSIONS);
            assert_eq!(
                refused,
                Err(RefuseReason::UnsupportedVersion { min: 5, max: 5 })
            );
            assert_eq!(
                refused.map_err(|e| e.to_string()),
                Err("unsupported protocol version (supported: 5..=5)".to_string())
            );
        }
        // And a newer one too: versions are not assumed compatible upwards.
        let mut h = hello();
        h.protocol_version = 6;
        assert!(check_hello(&h, &cluster, SUPPORTED_VERSIONS).is_err());

        let mut h = hello();
        h.cluster[31] ^= 1;
        assert_eq!(
            check_hello(&h, &cluster, SUPPORTED_VERSIONS),
            Err(RefuseReason::WrongCluster)
        );

        for bad in ["", "a b", "nöde", "x\n", &"n".repeat(MAX_NODE_ID + 1)] {
            let mut h = hello();
            h.node_id = bad.to_string();
            assert_eq!(
                check_hello(&h, &cluster, SUPPORTED_VERSIONS),
                Err(RefuseReason::InvalidNodeId),
                "{bad:?}"
            );
        }
        let mut h = hello();
        h.node_id = "n".repeat(MAX_NODE_ID);
        assert_eq!(check_hello(&h, &cluster, SUPPORTED_VERSIONS), Ok(()));
    }

    #[test]
    fn handshake_round_trips() {
        let msgs = [
            HandshakeMsg::Hello(hello()),
            HandshakeMsg::Welcome(Welcome {
                node_id: "node-b".into(),
                node_tag: 7,
            }),
            HandshakeMsg::Refuse {
                reason: RefuseReason::UnsupportedVersion { min: 1, max: 4 },
            },
            HandshakeMsg::Refuse {
                reason: RefuseReason::DuplicateNode,
            },
        ];
        for msg in msgs {
            let frame = encode_to_vec(&msg).expect("encode");
            let mut dec = FrameDecoder::<HandshakeMsg>::new();
            let got: Vec<_> = dec.feed(&frame).collect();
            assert_eq!(got, vec![Ok(msg)]);
        }
    }

    #[test]
    fn hello_wire_bytes() {
        let h = Hello {
            protocol_version: 1,
            cluster: [0x11; 32],
            node_id: "n1".into(),
            node_tag: 5,
        };
        let frame = encode_to_vec(&HandshakeMsg::Hello(h)).expect("encode");
        let mut want = vec![0, 0, 0, 38, 0, 1];
        want.extend_from_slice(&[0x11; 32]);
        want.extend_from_slice(&[2, b'n', b'1', 5]);
        assert_eq!(frame, want);
    }

    #[test]
    fn a_later_version_hello_with_appended_fields_decodes() {
        let mut frame = encode_to_vec(&HandshakeMsg::Hello(hello())).expect("encode");
        let mut body = frame.split_off(4);
        body.extend_from_slice(&[9, 9, 9]);
        assert_eq!(
            decode_body::<HandshakeMsg>(&body),
            Ok(HandshakeMsg::Hello(hello()))
        );
    }

    #[test]
    fn over_long_node_id_is_rejected_on_decode() {
        // Hello, version 1, cluster, node id of 65 bytes.
        let mut body = vec![0u8, 1];
        body.extend_from_slice(&[0; 32]);
        body.push(65);
        body.extend(std::iter::repeat_n(b'n', 65));
        body.push(0);
        assert!(decode_body::<HandshakeMsg>(&body).is_err());
    }
}
