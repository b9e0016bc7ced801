//! Whether the node's long-lived parts still run: `/healthz` fails when one has stopped, so an
//! orchestrator restarts a node that would otherwise answer HTTP while media, relay or gossip is
//! dead.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::AbortHandle;

use crate::cluster::ClusterView;
use crate::cluster::relay::Relay;

/// Handles on the engine task, the relay and gossip, cheap to clone and to check.
#[derive(Clone)]
pub struct Liveness {
    engine: AbortHandle,
    relay: Relay,
    /// The gossip thread owns the sender; it is gone once that thread has ended.
    gossip: watch::Receiver<Arc<ClusterView>>,
}

impl Liveness {
    /// Watches the engine task, the relay's tasks and the gossip thread's view channel.
    pub fn new(
        engine: AbortHandle,
        relay: Relay,
        gossip: watch::Receiver<Arc<ClusterView>>,
    ) -> Liveness {
        Liveness {
            engine,
            relay,
            gossip,
        }
    }

    /// The parts that have stopped, by name (`engine`, `relay`, `gossip`); empty when all run.
    pub fn stopped(&self) -> Vec<&'static str> {
        let mut stopped = Vec::new();
        if self.engine.is_finished() {
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
