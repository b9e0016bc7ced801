//! The NATS publisher: one task that takes egress packets from the engine task's queue and
//! publishes each as one message with its headers. It runs off the engine task, so a slow or
//! absent NATS costs only its own queue (drops, counted), never media.
//!
//! The async-nats client reconnects by itself, with the backoff set here, forever; its command
//! buffer is bounded ([`CLIENT_CAPACITY`]). While it is not connected, packets are dropped and
//! counted here rather than buffered: audio for a transcriber is worth little late, and a
//! buffer would only replay a burst of stale audio after the outage.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{ConnectOptions, Event, HeaderMap, Subject};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{EgressFigures, NatsConfig};
use crate::engine::EgressPacket;

/// Packets between the engine task and the publisher; beyond it the engine task drops them.
pub const EGRESS_QUEUE: usize = 4096;
/// Messages the NATS client buffers on its way to the server.
const CLIENT_CAPACITY: usize = 1024;
/// Longest wait for the client to take one message (its buffer full: the server is slow or the
/// connection is failing); then the message is dropped.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);
/// TCP and handshake timeout of one connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect backoff: 100 ms doubling per failed attempt, at most this.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Header names on every message.
pub const HEADER_CAPTURE_MS: &str = "Trackmesh-Capture-Ms";
/// The RTP sequence number (extended to 64 bits).
pub const HEADER_SEQ: &str = "Trackmesh-Seq";
/// The user label.
pub const HEADER_USER: &str = "Trackmesh-User";
/// The client label.
pub const HEADER_CLIENT: &str = "Trackmesh-Client";
/// The codec name (`opus`).
pub const HEADER_CODEC: &str = "Trackmesh-Codec";

/// The running publisher: its task and its figures.
pub struct NatsEgress {
    task: JoinHandle<()>,
    figures: Arc<EgressFigures>,
}

impl NatsEgress {
    /// Its counters, for the metrics.
    pub fn figures(&self) -> &Arc<EgressFigures> {
        &self.figures
    }

    /// Stops publishing at once; the client's connection closes as it is dropped.
    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Drop for NatsEgress {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the publisher on the current runtime; the sender is the engine task's end of the
/// queue. It connects in the background: a NATS server that is down at start is retried like a
/// lost one, and the node starts anyway.
pub fn start(cfg: &NatsConfig) -> (NatsEgress, mpsc::Sender<EgressPacket>) {
    let (tx, rx) = mpsc::channel(EGRESS_QUEUE);
    let figures = Arc::new(EgressFigures::default());
    let task = tokio::spawn(run(cfg.url.clone(), rx, figures.clone()));
    (NatsEgress { task, figures }, tx)
}

/// Before attempt `attempts` (async-nats counts from 1): 100 ms, doubling per attempt, at most
/// [`MAX_BACKOFF`].
fn backoff(attempts: usize) -> Duration {
    let shift = u32::try_from(attempts.saturating_sub(1).min(16)).unwrap_or(16);
    Duration::from_millis(100u64.saturating_mul(1u64 << shift)).min(MAX_BACKOFF)
}

async fn run(url: String, mut rx: mpsc::Receiver<EgressPacket>, figures: Arc<EgressFigures>) {
    let events = figures.clone();
    let options = ConnectOptions::new()
        .name("trackmesh audio egress")
        .retry_on_initial_connect()
        .max_reconnects(None::<usize>)
        .connection_timeout(CONNECT_TIMEOUT)
        .client_capacity(CLIENT_CAPACITY)
        .reconnect_delay_callback(backoff)
        .event_callback(move |event| {
            let figures = events.clone();
            async move {
                // One line per change of state (not per attempt), so an outage logs two lines.
                match event {
                    Event::Connected => {
                        figures.connected.store(true, Ordering::Relaxed);
                        tracing::info!("audio egress: connected to NATS");
                    }
                    Event::Disconnected => {
                        figures.connected.store(false, Ordering::Relaxed);
                        tracing::warn!("audio egress: lost NATS; dropping audio until it is back");
                    }
                    other => tracing::debug!(event = %other, "audio egress: NATS event"),
                }
            }
        });
    let client = match options.connect(url.as_str()).await {
        Ok(client) => client,
        // With retry_on_initial_connect only a bad address or option gets here.
        Err(e) => {
            tracing::error!(error = %e, "audio egress: cannot use the NATS server; audio egress is off");
            while rx.recv().await.is_some() {
                figures.dropped_disconnected.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
    };
    // A server that was never reached sends no `Disconnected` event: say so once, with the
    // first audio dropped for it.
    let mut told_never_connected = false;
    // Bounded by the queue: one message per packet the engine task handed over.
    while let Some(packet) = rx.recv().await {
        let state = client.connection_state();
        if state != State::Connected {
            if state == State::Pending && !told_never_connected {
                told_never_connected = true;
                tracing::warn!(
                    "audio egress: not connected to NATS yet; dropping audio until it is"
                );
            }
            figures.dropped_disconnected.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let (subject, headers, payload) = message(&packet);
        let sent = tokio::time::timeout(
            PUBLISH_TIMEOUT,
            client.publish_with_headers(subject, headers, payload),
        )
        .await;
        match sent {
            Ok(Ok(())) => figures.published.fetch_add(1, Ordering::Relaxed),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "audio egress: publish refused");
                figures
                    .dropped_publish_failed
                    .fetch_add(1, Ordering::Relaxed)
            }
            Err(_) => figures
                .dropped_publish_failed
                .fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// The NATS message of one packet: subject, headers, payload (shared, not copied).
fn message(p: &EgressPacket) -> (Subject, HeaderMap, bytes::Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_CAPTURE_MS, p.capture_ms.to_string());
    headers.insert(HEADER_SEQ, p.seq.to_string());
    headers.insert(HEADER_USER, &*p.user);
    headers.insert(HEADER_CLIENT, &*p.client);
    headers.insert(HEADER_CODEC, p.codec);
    (Subject::from(&*p.subject), headers, p.payload.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(6), Duration::from_millis(3200));
        assert_eq!(backoff(7), MAX_BACKOFF);
        assert_eq!(backoff(usize::MAX), MAX_BACKOFF);
    }

    #[test]
    fn a_message_carries_every_header() {
        let p = EgressPacket {
            subject: "trackmesh.audio.app.room.user".into(),
            payload: bytes::Bytes::from_static(b"\x78opus"),
            capture_ms: 1_700_000_000_123,
            seq: 65_537,
            user: "user".into(),
            client: "web-1".into(),
            codec: "opus",
        };
        let (subject, headers, payload) = message(&p);
        assert_eq!(subject.as_str(), "trackmesh.audio.app.room.user");
        assert_eq!(&payload[..], b"\x78opus");
        let get = |h: &str| headers.get(h).map(|v| v.as_str().to_string());
        assert_eq!(get(HEADER_CAPTURE_MS).as_deref(), Some("1700000000123"));
        assert_eq!(get(HEADER_SEQ).as_deref(), Some("65537"));
        assert_eq!(get(HEADER_USER).as_deref(), Some("user"));
        assert_eq!(get(HEADER_CLIENT).as_deref(), Some("web-1"));
        assert_eq!(get(HEADER_CODEC).as_deref(), Some("opus"));
    }
}
