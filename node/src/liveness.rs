//! Whether the node's long-lived parts still run: `/healthz` fails when one has stopped, so an
//! orchestrator restarts a node that would otherwise answer HTTP while media, relay or gossip is
//! dead.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::cluster::ClusterView;
use crate::cluster::relay::RelayHealth;

/// Handles on the engine workers' tasks, the relay's tasks and gossip, cheap to clone and to
/// check. It holds no socket: one kept after the node stopped does not keep a port bound.
#[derive(Clone)]
pub struct Liveness {
    /// One per engine worker: any that has ended (a panic) stops the node's media for its
    /// sessions, so the node is not alive.
    engine: Vec<AbortHandle>,
    relay: RelayHealth,
    /// The gossip thread owns the sender; it is gone once that thread has ended.
    gossip: watch::Receiver<Arc<ClusterView>>,
}

impl Liveness {
    /// Watches the engine workers' tasks, the relay's tasks and the gossip thread's view channel.
    pub fn new(
        engine: Vec<AbortHandle>,
        relay: RelayHealth,
        gossip: watch::Receiver<Arc<ClusterView>>,
    ) -> Liveness {
        Liveness {
            engine,
            relay,
            gossip,
        }
    }

    /// The parts that have stopped, by name (`engine`, `relay`, `gossip`); empty when all run.
    /// Each part is named only when it stopped itself: the relay's tasks that end because the
    /// engine or gossip did do not make the relay count as stopped.
    pub fn stopped(&self) -> Vec<&'static str> {
        let mut stopped = Vec::new();
        if self.engine.iter().any(|t| t.is_finished()) {
            stopped.push("engine");
        }
        if self.relay.stopped_task().is_some() {
            stopped.push("relay");
        }
        if self.gossip.has_changed().is_err() {
            stopped.push("gossip");
        }
        stopped
    }
}
