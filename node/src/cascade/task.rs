//! One cascade's task: attempts (bind a socket, offer, POST, answer, watch the session), the
//! teardown after each, the backoff between them, and the pump from the socket to the engine.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use reqwest::Url;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

use super::backoff::Backoff;
use super::{
    CONNECT_TIMEOUT, Cascades, Current, Key, LOST_AFTER, POLL, Status, client, direction_name, lock,
};
use crate::engine::{OpError, OutgoingState, prepare_answer};
use crate::ids::SessionId;
use crate::media_tcp::canonical;
use crate::workers::{EngineHandle, StreamSlot};

impl Cascades {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn run(
        self: Arc<Self>,
        key: Key,
        id: u64,
        url: Url,
        token: String,
        status: Arc<Mutex<Status>>,
        stopped: oneshot::Receiver<()>,
        slot: StreamSlot,
    ) {
        // Every call about the stream and the cascade's sessions goes to the stream's worker.
        let worker = slot.worker();
        let current = Mutex::new(Current::default());
        tokio::select! {
            _ = self.attempts(&key, worker, &url, &token, &status, &current) => {
                // The stream is gone: the cascade ends by itself.
                let mut entries = lock(&self.entries);
                if entries.get(&key).is_some_and(|e| e.id == id) {
                    entries.remove(&key);
                }
            }
            _ = stopped => {}
        }
        self.teardown(worker, &current, &token).await;
        drop(slot);
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
        worker: usize,
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
            let outcome = self.attempt(key, worker, url, token, status, current).await;
            self.teardown(worker, current, token).await;
            let (error, was_live) = match outcome {
                Attempt::StreamGone => return,
                Attempt::Failed { error, was_live } => (error, was_live),
            };
            let (app, stream) = (key.0.clone(), key.1.clone());
            if !self
                .engine
                .call_on(worker, move |e, _| e.stream_exists(&app, &stream))
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
        worker: usize,
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
        let (bind, socket) = match self.bind(worker).await {
            Ok(v) => v,
            Err(e) => return failed(e),
        };
        lock(current).local = Some(bind);
        let (app, stream, direction) = key.clone();
        let offered = self
            .engine
            .call_on(worker, move |e, now| {
                e.cascade_offer(&app, &stream, direction, bind, now)
            })
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
            .call_on(worker, move |e, now| {
                e.cascade_answer(&app, &stream, sid, direction, answer, now)
            })
            .await;
        match answered {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return failed(format!("the answer: {e}")),
            Err(e) => return failed(e.to_string()),
        }
        tokio::select! {
            outcome = self.watch(key, url, sid, status) => outcome,
            error = pump(&self.engine, worker, socket, bind) => failed(error),
        }
    }

    /// Binds an outgoing session's socket next to the media socket and registers it with the
    /// engine task; returns its address as the session's host candidate.
    async fn bind(&self, worker: usize) -> Result<(SocketAddr, Arc<UdpSocket>), String> {
        let at = self
            .engine
            .call_on(worker, |e, _| e.outgoing_bind_addr())
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
            .call_on(worker, move |e, _| e.outgoing_candidate(bound))
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
            let state = match self
                .engine
                .call_session(sid, move |e, now| e.outgoing_state(sid, now))
                .await
            {
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
                OutgoingState::NoPublisher => {
                    return Attempt::Failed {
                        error: "the stream has no publisher to push".into(),
                        was_live,
                    };
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
    async fn teardown(&self, worker: usize, current: &Mutex<Current>, token: &str) {
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
                .call_on(worker, move |e, now| {
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

/// Datagrams read from an outgoing socket in one go, handed to the engine in one call.
const PUMP_BATCH: usize = 32;
/// Larger than any datagram a WebRTC peer sends over UDP.
const PUMP_BUF: usize = 2048;

/// Feeds what arrives on an outgoing session's socket to the engine, in batches; returns why
/// it stopped (the socket or the engine failed). Backpressure: it waits for the engine's command
/// queue, and the kernel drops what does not fit the socket buffer meanwhile.
async fn pump(
    engine: &EngineHandle,
    worker: usize,
    socket: Arc<UdpSocket>,
    local: SocketAddr,
) -> String {
    let mut buf = vec![0u8; PUMP_BUF];
    loop {
        let mut batch: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => batch.push((canonical(from), buf[..n].to_vec())),
            // ICMP port-unreachable from a vanished server surfaces here on Linux.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return format!("media socket {local}: {e}"),
        }
        while batch.len() < PUMP_BATCH {
            match socket.try_recv_from(&mut buf) {
                Ok((n, from)) => batch.push((canonical(from), buf[..n].to_vec())),
                Err(_) => break,
            }
        }
        let fed = engine
            .call_on(worker, move |e, _| {
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
