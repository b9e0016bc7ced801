//! Cascades: this node as a WHEP client of another server (`sourceUrl`: the stream's publisher
//! comes from there) or as its WHIP client (`targetUrl`: the stream is pushed there).
//!
//! One task per cascade drives attempts: the engine writes the outgoing session's offer
//! (`Engine::cascade_offer`), [`client`] POSTs it, the engine applies the answer, and the task
//! watches the session. When the session does not connect, loses the other server, or the
//! request fails, the session is closed, the other server's session URL DELETEd, and the next
//! attempt waits for [`backoff`]. It runs until the cascade is stopped (`DELETE …/cascade`, or
//! the node's shutdown) or its stream is deleted. Here: the registry and what the API reads;
//! `task.rs`: the task.

pub mod backoff;
pub mod client;
mod task;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Url;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::engine::CascadeDirection;
use crate::ids::SessionId;
use crate::workers::{EngineHandle, StreamSlot};

/// Most cascades one app may run on a node.
pub const MAX_CASCADES_PER_APP: usize = 16;
/// Most cascades a node runs.
pub const MAX_CASCADES: usize = 64;
/// An outgoing session that has not connected this long after the answer is given up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// An outgoing session that lost the other server (ICE disconnected, or silent: see
/// `engine::OUTGOING_SILENT_AFTER`) for this long more is given up (and redone).
pub const LOST_AFTER: Duration = Duration::from_secs(3);
/// Every state a cascade shows.
const STATES: [&str; 3] = ["connecting", "live", "backoff"];
/// How often the task looks at its session.
const POLL: Duration = Duration::from_millis(250);

/// Why a cascade could not be started.
#[derive(Debug, PartialEq, Eq)]
pub enum StartRefused {
    /// The stream already has a cascade in this direction.
    Exists,
    /// [`MAX_CASCADES_PER_APP`] or [`MAX_CASCADES`] reached.
    Full,
}

/// A cascade as `GET streams` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CascadeView {
    /// `source` or `target`.
    pub direction: &'static str,
    /// The other server's WHEP (source) or WHIP (target) URL.
    pub url: String,
    /// `connecting`, `live` or `backoff`.
    pub state: &'static str,
    /// The outgoing session of the current attempt.
    pub session_id: Option<String>,
    /// Attempts made so far.
    pub attempts: u64,
    /// Why the last attempt ended.
    pub last_error: Option<String>,
    /// In backoff: when the next attempt starts (Unix milliseconds).
    pub next_attempt_at: Option<u64>,
}

#[derive(Debug, Clone)]
struct Status {
    state: &'static str,
    session: Option<SessionId>,
    attempts: u64,
    last_error: Option<String>,
    next_attempt: Option<SystemTime>,
}

/// The outgoing session of the attempt under way, kept where a stop can find it.
#[derive(Default)]
struct Current {
    session: Option<SessionId>,
    /// Its socket's address (registered with the engine task for sending).
    local: Option<SocketAddr>,
    location: Option<Url>,
}

struct Entry {
    id: u64,
    url: Url,
    status: Arc<Mutex<Status>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

type Key = (String, String, CascadeDirection);

/// Every cascade of the node.
pub struct Cascades {
    engine: EngineHandle,
    http: reqwest::Client,
    entries: Mutex<HashMap<Key, Entry>>,
    next_id: Mutex<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not stop every cascade: the data is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why a cascade of `key` cannot start: one runs in that direction, or the caps are reached.
fn refusal<V>(entries: &HashMap<Key, V>, key: &Key) -> Option<StartRefused> {
    if entries.contains_key(key) {
        return Some(StartRefused::Exists);
    }
    let app = &key.0;
    if entries.len() >= MAX_CASCADES
        || entries.keys().filter(|k| &k.0 == app).count() >= MAX_CASCADES_PER_APP
    {
        return Some(StartRefused::Full);
    }
    None
}

fn direction_name(d: CascadeDirection) -> &'static str {
    match d {
        CascadeDirection::Source => "source",
        CascadeDirection::Target => "target",
    }
}

impl Cascades {
    /// No cascades yet; they will drive `engine`.
    pub fn new(engine: EngineHandle) -> Cascades {
        Cascades {
            engine,
            http: client::http_client(),
            entries: Mutex::new(HashMap::new()),
            next_id: Mutex::new(0),
        }
    }

    /// Starts a cascade of `stream` (which the caller checked exists), on the stream's worker:
    /// the cascade holds `slot` while it runs, so the stream stays on that worker.
    pub fn start(
        self: &Arc<Self>,
        app: &str,
        stream: &str,
        direction: CascadeDirection,
        url: Url,
        token: String,
        slot: StreamSlot,
    ) -> Result<(), StartRefused> {
        let key: Key = (app.to_string(), stream.to_string(), direction);
        let mut entries = lock(&self.entries);
        if let Some(refused) = refusal(&entries, &key) {
            return Err(refused);
        }
        let id = {
            let mut n = lock(&self.next_id);
            *n += 1;
            *n
        };
        let status = Arc::new(Mutex::new(Status {
            state: "connecting",
            session: None,
            attempts: 0,
            last_error: None,
            next_attempt: None,
        }));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(Arc::clone(self).run(
            key.clone(),
            id,
            url.clone(),
            token,
            Arc::clone(&status),
            stopped,
            slot,
        ));
        tracing::info!(app, stream, direction = direction_name(direction), %url, "cascade started");
        entries.insert(
            key,
            Entry {
                id,
                url,
                status,
                stop: Some(stop),
                task: Some(task),
            },
        );
        Ok(())
    }

    /// Stops the stream's cascades (one direction, or both); waits until each has closed its
    /// session and DELETEd the other server's. Returns how many were stopped.
    pub async fn stop(
        &self,
        app: &str,
        stream: &str,
        direction: Option<CascadeDirection>,
    ) -> usize {
        let stopped: Vec<Entry> = {
            let mut entries = lock(&self.entries);
            let keys: Vec<Key> = entries
                .keys()
                .filter(|k| k.0 == app && k.1 == stream && direction.is_none_or(|d| d == k.2))
                .cloned()
                .collect();
            keys.iter().filter_map(|k| entries.remove(k)).collect()
        };
        let n = stopped.len();
        end(stopped).await;
        n
    }

    /// Stops every cascade (the node shuts down), DELETEing the other servers' sessions.
    pub async fn stop_all(&self) {
        let all: Vec<Entry> = lock(&self.entries).drain().map(|(_, e)| e).collect();
        end(all).await;
    }

    /// Why [`Self::start`] would refuse this cascade now, if it would: checked before the
    /// stream is pinned for it, so a refused request leaves the stream as it was.
    pub fn refusal(
        &self,
        app: &str,
        stream: &str,
        direction: CascadeDirection,
    ) -> Option<StartRefused> {
        let key: Key = (app.to_string(), stream.to_string(), direction);
        refusal(&lock(&self.entries), &key)
    }

    /// The app's cascades, by stream name.
    pub fn list(&self, app: &str) -> HashMap<String, Vec<CascadeView>> {
        let entries = lock(&self.entries);
        let mut out: HashMap<String, Vec<CascadeView>> = HashMap::new();
        for ((a, stream, direction), e) in entries.iter() {
            if a != app {
                continue;
            }
            let s = lock(&e.status).clone();
            out.entry(stream.clone()).or_default().push(CascadeView {
                direction: direction_name(*direction),
                url: e.url.to_string(),
                state: s.state,
                session_id: s.session.map(|s| s.to_string()),
                attempts: s.attempts,
                last_error: s.last_error,
                next_attempt_at: s.next_attempt.and_then(|t| {
                    t.duration_since(UNIX_EPOCH)
                        .ok()
                        .map(|d| d.as_millis() as u64)
                }),
            });
        }
        for v in out.values_mut() {
            v.sort_by_key(|c| c.direction);
        }
        out
    }

    /// How many cascades are in each (direction, state), every pair listed (zeros too).
    pub fn counts(&self) -> Vec<(&'static str, &'static str, usize)> {
        let mut out: Vec<(&'static str, &'static str, usize)> = Vec::new();
        for d in [CascadeDirection::Source, CascadeDirection::Target] {
            for state in STATES {
                out.push((direction_name(d), state, 0));
            }
        }
        for ((_, _, d), e) in lock(&self.entries).iter() {
            let state = lock(&e.status).state;
            if let Some(c) = out
                .iter_mut()
                .find(|c| c.0 == direction_name(*d) && c.1 == state)
            {
                c.2 += 1;
            }
        }
        out
    }
}

/// Tells every task to stop, then waits for their teardowns, which run at once and are bounded
/// by the HTTP timeout.
async fn end(entries: Vec<Entry>) {
    let deadline = tokio::time::Instant::now() + client::HTTP_TIMEOUT * 2;
    let mut tasks = Vec::new();
    for mut e in entries {
        if let Some(stop) = e.stop.take() {
            let _ = stop.send(());
        }
        tasks.extend(e.task.take());
    }
    for task in tasks {
        let _ = tokio::time::timeout_at(deadline, task).await;
    }
}
