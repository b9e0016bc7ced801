//! The log of one in-process node: every thread of the node (its runtime's workers, its gossip
//! thread) logs into a bounded buffer of its own, so that [`crate::TestNode::log`] reads one
//! node's lines even when many nodes share the test process.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::Dispatch;
use tracing::dispatcher::DefaultGuard;

/// Most bytes kept per node; older lines are dropped first.
const MAX_LOG_BYTES: usize = 2 << 20;

/// The filter when `RUST_LOG` is unset: what process nodes started by the test kit log.
const DEFAULT_FILTER: &str = "info";

/// One node's log lines (cheap to clone: clones share the buffer).
#[derive(Clone, Default)]
pub struct NodeLog {
    text: Arc<Mutex<String>>,
}

impl NodeLog {
    /// The log so far.
    pub fn text(&self) -> String {
        self.lock().clone()
    }

    /// A subscriber that writes plain text lines into this log, filtered as the node binary
    /// filters its own.
    pub fn dispatch(&self) -> Dispatch {
        let log = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(trackmesh_node::logging::filter(DEFAULT_FILTER))
            .with_ansi(false)
            .with_writer(move || Writer(log.clone()))
            .finish();
        Dispatch::new(subscriber)
    }

    fn lock(&self) -> MutexGuard<'_, String> {
        self.text.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Appends to a [`NodeLog`], dropping its oldest lines beyond [`MAX_LOG_BYTES`].
struct Writer(NodeLog);

impl std::io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut text = self.0.lock();
        text.push_str(&String::from_utf8_lossy(buf));
        if text.len() > MAX_LOG_BYTES {
            // Cut at a line end (an ASCII byte, so a char boundary) in the older half.
            let from = text.len() - MAX_LOG_BYTES / 2;
            let cut = text.as_bytes()[from..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(text.len(), |i| from + i + 1);
            text.drain(..cut);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

thread_local! {
    /// The log this runtime thread writes to, set when the thread starts.
    static THREAD_LOG: RefCell<Option<DefaultGuard>> = const { RefCell::new(None) };
}

/// Makes `dispatch` the log of the calling runtime thread until [`leave_thread`].
pub fn enter_thread(dispatch: &Dispatch) {
    let guard = tracing::dispatcher::set_default(dispatch);
    THREAD_LOG.with(|g| *g.borrow_mut() = Some(guard));
}

/// Undoes [`enter_thread`] when the runtime thread stops.
pub fn leave_thread() {
    THREAD_LOG.with(|g| g.borrow_mut().take());
}
