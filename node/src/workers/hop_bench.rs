//! The cross-worker hop alone, for the criterion benchmark (`benches/benches/engine.rs`, group
//! `workers/hop`): worker 0's router hands a frame of one in-process link to worker 1's input
//! queue, and worker 1's loop takes it out, exactly as in their loops.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::links::Router;
use super::{PRIMARY, Shared};
use crate::engine::{RelayFrame, RelayIn, RelayOut};
use crate::ids::{DownId, UpId};
use crate::runtime::{Job, WorkerLinks};

/// Two workers' ends of one link.
pub struct HopBench {
    router: Router,
    input: mpsc::Receiver<RelayIn>,
    down: DownId,
    _jobs: Vec<mpsc::Sender<Job>>,
}

impl Default for HopBench {
    fn default() -> Self {
        Self::new()
    }
}

impl HopBench {
    /// A node of two workers with one link from worker 0 to worker 1.
    pub fn new() -> HopBench {
        let shared = Arc::new(Shared::new(2, Vec::new(), None));
        let (tx0, _rx0) = mpsc::channel(super::INPUT_QUEUE);
        let (tx1, input) = mpsc::channel(super::INPUT_QUEUE);
        let (jobs, _): (Vec<_>, Vec<_>) = (0..2).map(|_| mpsc::channel::<Job>(1)).unzip();
        let (down, _up) = shared.links.open(PRIMARY, 1);
        let router = Router {
            index: PRIMARY,
            shared,
            inputs: vec![tx0, tx1].into(),
            commands: jobs.iter().map(|t| t.downgrade()).collect(),
        };
        HopBench {
            router,
            input,
            down,
            _jobs: jobs,
        }
    }

    /// One frame across: through worker 0's router into worker 1's queue and out of it; the
    /// upstream id it arrived on.
    pub fn cross(&mut self, frame: RelayFrame) -> Option<UpId> {
        let out = RelayOut::Frame {
            down: self.down,
            seq: 0,
            frame,
        };
        if self.router.route(out).is_some() {
            return None;
        }
        match self.input.try_recv() {
            Ok(RelayIn::Frame { up, .. }) => Some(up),
            _ => None,
        }
    }
}
