//! The cluster: membership by gossip, routing of remote tracks (origin from the session id,
//! regional hubs by consistent hashing), the QUIC relay between nodes, and forwarding of API calls
//! to the node that owns a session.

pub mod gossip_seal;
pub mod gossip_transport;
pub mod hubs;
pub mod membership;
pub mod relay;
pub mod streams;
pub mod view;

#[cfg(test)]
mod gossip_fuzz;

pub use view::{ClusterView, Load, Member};

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Publishes this node's load into gossip once a second.
pub async fn report_load(
    engine: crate::workers::EngineHandle,
    relay: relay::Relay,
    local: Arc<membership::LocalState>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Ok(per_worker) = engine
            .call_all(|e, _| (e.session_count(), e.publication_count()))
            .await
        else {
            return;
        };
        // A track linked to other workers counts once per worker holding it, as a track
        // relayed from another node counts here too.
        let (sessions, tracks) = per_worker
            .into_iter()
            .fold((0, 0), |(s, t), (ws, wt)| (s + ws, t + wt));
        let (_, relays) = relay.counts();
        local.sessions.store(sessions as u64, Ordering::Relaxed);
        local.tracks.store(tracks as u64, Ordering::Relaxed);
        local.relays.store(relays as u64, Ordering::Relaxed);
    }
}
