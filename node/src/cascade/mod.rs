//! Cascades: this node as a WHEP client of another server (`sourceUrl`: the stream's publisher
//! comes from there) or as its WHIP client (`targetUrl`: the stream is pushed there).
//!
//! One task per cascade drives attempts: the engine writes the outgoing session's offer
//! (`Engine::cascade_offer`), [`client`] POSTs it, the engine applies the answer, and the task
//! watches the session. When the session does not connect, loses the other server, or the
//! request fails, the session is closed, the other server's session URL DELETEd, and the next
//! attempt waits for [`backoff`]. It runs until the cascade is stopped (`DELETE …/cascade`) or its
//! stream is deleted.

pub mod backoff;
pub mod client;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Url;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::engine::{CascadeDirection, OpError, OutgoingState, prepare_answer};
use crate::ids::SessionId;
use crate::runtime::EngineHandle;
use backoff::Backoff;

/// Most cascades one app may run on a node.
pub const MAX_CASCADES_PER_APP: usize = 16;
/// Most cascades a node runs.
pub const MAX_CASCADES: usize = 64;
/// An outgoing session that has not connected this long after the answer is given up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// An outgoing session that lost the other server for this long is given up (and redone).
pub const LOST_AFTER: Duration = Duration::from_secs(5);
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

    /// Starts a cascade of `stream` (which the caller checked exists).
    pub fn start(
        self: &Arc<Self>,
        app: &str,
        stream: &str,
        direction: CascadeDirection,
        url: Url,
        token: String,
    ) -> Result<(), StartRefused> {
        let key: Key = (app.to_string(), stream.to_string(), direction);
        let mut entries = lock(&self.entries);
        if entries.contains_key(&key) {
            return Err(StartRefused::Exists);
        }
        if entries.len() >= MAX_CASCADES
            || entries.keys().filter(|k| k.0 == app).count() >= MAX_CASCADES_PER_APP
        {
            return Err(StartRefused::Full);
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

    async fn run(
        self: Arc<Self>,
        key: Key,
        id: u64,
        url: Url,
        token: String,
        status: Arc<Mutex<Status>>,
        stopped: oneshot::Receiver<()>,
    ) {
        let current = Mutex::new(Current::default());
        tokio::select! {
            _ = self.attempts(&key, &url, &token, &status, &current) => {
                // The stream is gone: the cascade ends by itself.
                let mut entries = lock(&self.entries);
                if entries.get(&key).is_some_and(|e| e.id == id) {
                    entries.remove(&key);
                }
            }
            _ = stopped => {}
        }
        self.teardown(&current, &token).await;
        tracing::info!(
            app = key.0,
            stream = key.1,
            direction = direction_name(key.2),
            "cascade ended"
        );
    }

    /// Attempts until the stream is gone (the caller's select ends it on a stop).
    async fn attempts(
        &self,
        key: &Key,
        url: &Url,
        token: &str,
        status: &Mutex<Status>,
        current: &Mutex<Current>,
    ) {
        let mut backoff = Backoff::default();
        loop {
            {
                let mut s = lock(status);
                s.state = "connecting";
                s.attempts += 1;
                s.session = None;
                s.next_attempt = None;
            }
            let outcome = self.attempt(key, url, token, status, current).await;
            self.teardown(current, token).await;
            let (error, was_live) = match outcome {
                Attempt::StreamGone => return,
                Attempt::Failed { error, was_live } => (error, was_live),
            };
            let (app, stream) = (key.0.clone(), key.1.clone());
            if !self
                .engine
                .call(move |e, _| e.stream_exists(&app, &stream))
                .await
                .unwrap_or(false)
            {
                return;
            }
            if was_live {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            tracing::info!(app = key.0, stream = key.1, %url, %error, ?delay, "cascade attempt ended");
            {
                let mut s = lock(status);
                s.state = "backoff";
                s.last_error = Some(error);
                s.next_attempt = Some(SystemTime::now() + delay);
            }
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(
        &self,
        key: &Key,
        url: &Url,
        token: &str,
        status: &Mutex<Status>,
        current: &Mutex<Current>,
    ) -> Attempt {
        let failed = |error: String| Attempt::Failed {
            error,
            was_live: false,
        };
        // A socket of its own: the other server tells its sessions apart by our address.
        let (bind, socket) = match self.bind().await {
            Ok(v) => v,
            Err(e) => return failed(e),
        };
        lock(current).local = Some(bind);
        let (app, stream, direction) = key.clone();
        let offered = self
            .engine
            .call(move |e, now| e.cascade_offer(&app, &stream, direction, bind, now))
            .await;
        let (sid, offer) = match offered {
            Ok(Ok(v)) => v,
            Ok(Err(OpError::NotFound(_))) => return Attempt::StreamGone,
            Ok(Err(e)) => return failed(e.to_string()),
            Err(e) => return failed(e.to_string()),
        };
        lock(current).session = Some(sid);
        lock(status).session = Some(sid);
        let posted = match client::post_offer(&self.http, url, token, offer).await {
            Ok(p) => p,
            Err(e) => return failed(e),
        };
        lock(current).location = posted.location;
        // Parsed off the engine task, as every SDP is.
        let text = posted.answer;
        let answer = match tokio::task::spawn_blocking(move || prepare_answer(&text)).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => return failed(format!("the answer: {e}")),
            Err(e) => return failed(format!("reading the answer: {e}")),
        };
        let (app, stream, direction) = key.clone();
        let answered = self
            .engine
            .call(move |e, now| e.cascade_answer(&app, &stream, sid, direction, answer, now))
            .await;
        match answered {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return failed(format!("the answer: {e}")),
            Err(e) => return failed(e.to_string()),
        }
        tokio::select! {
            outcome = self.watch(key, url, sid, status) => outcome,
            error = pump(&self.engine, socket, bind) => failed(error),
        }
    }

    /// Binds an outgoing session's socket next to the media socket and registers it with the
    /// engine task; returns its address as the session's host candidate.
    async fn bind(&self) -> Result<(SocketAddr, Arc<UdpSocket>), String> {
        let at = self
            .engine
            .call(|e, _| e.outgoing_bind_addr())
            .await
            .map_err(|e| e.to_string())?;
        let socket = UdpSocket::bind(at)
            .await
            .map_err(|e| format!("binding a media socket on {at}: {e}"))?;
        let bound = socket
            .local_addr()
            .map_err(|e| format!("the media socket's address: {e}"))?;
        let local = self
            .engine
            .call(move |e, _| e.outgoing_candidate(bound))
            .await
            .map_err(|e| e.to_string())?;
        let socket = Arc::new(socket);
        self.engine
            .outgoing_sockets()
            .insert(local, Arc::clone(&socket));
        Ok((local, socket))
    }

    /// Watches the session until it fails to connect, loses the other server, or ends.
    async fn watch(&self, key: &Key, url: &Url, sid: SessionId, status: &Mutex<Status>) -> Attempt {
        let failed = |error: String| Attempt::Failed {
            error,
            was_live: false,
        };
        let answered_at = Instant::now();
        let mut lost_since: Option<Instant> = None;
        let mut was_live = false;
        // Runs as long as the session is up; each turn is one short engine call.
        loop {
            tokio::time::sleep(POLL).await;
            let state = match self.engine.call(move |e, _| e.outgoing_state(sid)).await {
                Ok(s) => s,
                Err(e) => return failed(e.to_string()),
            };
            match state {
                OutgoingState::Live => {
                    lost_since = None;
                    if !was_live {
                        was_live = true;
                        let mut s = lock(status);
                        s.state = "live";
                        tracing::info!(app = key.0, stream = key.1, %url, "cascade live");
                    }
                }
                OutgoingState::Connecting => {
                    if answered_at.elapsed() > CONNECT_TIMEOUT {
                        return failed(format!(
                            "no connection to the other server's media within {}s",
                            CONNECT_TIMEOUT.as_secs()
                        ));
                    }
                }
                OutgoingState::Disconnected => {
                    let since = *lost_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > LOST_AFTER {
                        return Attempt::Failed {
                            error: "lost the other server's media".into(),
                            was_live,
                        };
                    }
                }
                OutgoingState::Gone => {
                    return Attempt::Failed {
                        error: "the session ended".into(),
                        was_live,
                    };
                }
            }
        }
    }

    /// Closes the attempt's session and socket, and DELETEs the other server's session, if any.
    async fn teardown(&self, current: &Mutex<Current>, token: &str) {
        let Current {
            session,
            local,
            location,
        } = std::mem::take(&mut *lock(current));
        if let Some(local) = local {
            self.engine.outgoing_sockets().remove(local);
        }
        if session.is_some() || local.is_some() {
            let _ = self
                .engine
                .call(move |e, now| {
                    if let Some(sid) = session {
                        e.close_session(sid, now, "cascade attempt ended");
                    }
                    // A stop while the offer was being made: the session is known by its socket.
                    if let Some(local) = local {
                        e.close_outgoing(local, now, "cascade attempt ended");
                    }
                })
                .await;
        }
        if let Some(location) = location {
            client::delete_session(&self.http, &location, token).await;
        }
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

/// Datagrams read from an outgoing socket in one go, handed to the engine in one call.
const PUMP_BATCH: usize = 32;
/// Larger than any datagram a WebRTC peer sends over UDP.
const PUMP_BUF: usize = 2048;

/// Feeds what arrives on an outgoing session's socket to the engine, in batches; returns why
/// it stopped (the socket or the engine failed). Backpressure: it waits for the engine's command
/// queue, and the kernel drops what does not fit the socket buffer meanwhile.
async fn pump(engine: &EngineHandle, socket: Arc<UdpSocket>, local: SocketAddr) -> String {
    let mut buf = vec![0u8; PUMP_BUF];
    loop {
        let mut batch: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => batch.push((from, buf[..n].to_vec())),
            // ICMP port-unreachable from a vanished server surfaces here on Linux.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return format!("media socket {local}: {e}"),
        }
        while batch.len() < PUMP_BATCH {
            match socket.try_recv_from(&mut buf) {
                Ok((n, from)) => batch.push((from, buf[..n].to_vec())),
                Err(_) => break,
            }
        }
        let fed = engine
            .call(move |e, _| {
                for (from, data) in batch {
                    e.handle_outgoing_datagram(Instant::now(), local, from, &data);
                }
            })
            .await;
        if let Err(e) = fed {
            return e.to_string();
        }
    }
}

enum Attempt {
    StreamGone,
    Failed { error: String, was_live: bool },
}
