//! The node's log filter, shared by the binary and by tests that run nodes in-process, so both
//! log the same lines.

use tracing_subscriber::EnvFilter;

/// `RUST_LOG` when set, else `default`; chitchat's per-datagram UDP warnings are dropped either
/// way: the sealed gossip transport feeds chitchat only opened datagrams and counts failures
/// itself (rate-limited).
pub fn filter(default: &str) -> EnvFilter {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    match "chitchat::transport::udp=error".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}
