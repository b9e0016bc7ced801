//! Audio egress, the shell: the NATS publisher (`nats.rs`) that takes the engine's egress
//! packets (`crate::engine::EgressPacket`, queued by `engine/egress.rs`, handed over by
//! `runtime.rs`) and publishes them, and its configuration and figures.
//!
//! NATS never holds up media: the engine task hands packets over with `try_send` (a full queue
//! drops, counted), and the publisher drops what arrives while NATS is unreachable (counted)
//! rather than queue it.

mod nats;

use std::sync::atomic::{AtomicBool, AtomicU64};

use anyhow::bail;

pub use nats::{EGRESS_QUEUE, NatsEgress, start};

/// The default first tokens of every subject (`--nats-subject-prefix`).
pub const DEFAULT_PREFIX: &str = "trackmesh.audio";
/// Longest `--nats` URL and `--nats-subject-prefix`, in bytes.
const MAX_URL_BYTES: usize = 2048;
const MAX_PREFIX_BYTES: usize = 128;

/// Where audio egress goes (`--nats`, `--nats-subject-prefix`), checked.
#[derive(Clone)]
pub struct NatsConfig {
    /// The server's URL, as given (it may carry credentials: never logged whole).
    pub url: String,
    /// The subject prefix: one or more tokens, no wildcard.
    pub prefix: String,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &"<hidden>")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl NatsConfig {
    /// Checks the URL (as the NATS client reads it) and the prefix (non-empty tokens of ASCII
    /// letters, digits and punctuation other than `*` and `>`, separated by `.`).
    pub fn new(url: String, prefix: String) -> anyhow::Result<NatsConfig> {
        if url.len() > MAX_URL_BYTES {
            bail!("nats: the URL is longer than {MAX_URL_BYTES} bytes");
        }
        if let Err(e) = url.parse::<async_nats::ServerAddr>() {
            bail!("nats: not a NATS server URL: {e}");
        }
        if prefix.len() > MAX_PREFIX_BYTES {
            bail!("nats-subject-prefix is longer than {MAX_PREFIX_BYTES} bytes");
        }
        let valid_token = |t: &str| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_graphic() && c != '*' && c != '>' && c != '.')
        };
        if !prefix.split('.').all(valid_token) {
            bail!(
                "nats-subject-prefix {prefix:?}: expected tokens separated by '.', each of ASCII letters, digits or punctuation other than '*' and '>'"
            );
        }
        Ok(NatsConfig { url, prefix })
    }
}

/// The publisher's counters, read by the metrics at each scrape.
#[derive(Debug, Default)]
pub struct EgressFigures {
    /// Messages handed to the NATS client while connected.
    pub published: AtomicU64,
    /// Messages dropped because the client was not connected.
    pub dropped_disconnected: AtomicU64,
    /// Messages the client refused or did not take in time (its buffer full).
    pub dropped_publish_failed: AtomicU64,
    /// Whether the client is connected now.
    pub connected: AtomicBool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_tokens_without_wildcards() {
        let ok = |p: &str| NatsConfig::new("nats://127.0.0.1:4222".into(), p.into()).is_ok();
        assert!(ok("trackmesh.audio"));
        assert!(ok("a"));
        for bad in ["", ".a", "a.", "a..b", "a.*", "a.>", "a b", "é"] {
            assert!(!ok(bad), "{bad:?} must be refused");
        }
    }

    #[test]
    fn a_url_the_client_cannot_read_is_refused() {
        assert!(NatsConfig::new("nats://127.0.0.1:4222".into(), DEFAULT_PREFIX.into()).is_ok());
        assert!(NatsConfig::new("http://[::1".into(), DEFAULT_PREFIX.into()).is_err());
    }
}
