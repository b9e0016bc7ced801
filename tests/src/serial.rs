//! One cluster-sized test at a time in the whole test binary. Cluster, gossip-security and
//! network-lab tests each start several nodes whose membership timers need the CPU; two at once
//! on a 2-core machine only slow each other into flakes. Lighter tests keep running beside them.

use tokio::sync::{Mutex, MutexGuard};

static CLUSTERS: Mutex<()> = Mutex::const_new(());

/// The slot, from an async test.
pub async fn cluster_slot() -> MutexGuard<'static, ()> {
    CLUSTERS.lock().await
}

/// The slot, from a synchronous test (not from inside a runtime).
pub fn cluster_slot_blocking() -> MutexGuard<'static, ()> {
    CLUSTERS.blocking_lock()
}
