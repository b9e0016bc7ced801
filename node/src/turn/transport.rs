//! The TURN crate's listeners, wrapped: every message from a client passes the [`Guard`] before
//! the TURN crate sees it, and every answer is shown to it on the way out. Refused requests are
//! answered here with their STUN error.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use medea_turn::attr::{Attribute, ErrorCode, Nonce, Realm};
use medea_turn::transport::{Error, Request, Transport};
use stun_codec::{Message, MessageClass};
use tokio::sync::watch;
// Tokio's clock, so the paused-time test can move it.
use tokio::time::Instant;

use super::guard::{Guard, REALM, Verdict};

/// How long a message (an answer, or relayed media) may wait to be handed to a client. The
/// TURN crate's TCP listener writes each message under one lock for all its connections and
/// waits until it is written: a client that stops reading would hold every TCP client's
/// messages, and the listener's request loop, for as long as it liked.
const SEND_WAIT: Duration = Duration::from_millis(500);
/// A client that did not take a message within [`SEND_WAIT`] is tried again at most this often,
/// each time for [`PROBE_WAIT`] only; what comes for it in between is dropped, as a full UDP
/// buffer drops it. A client back from a short outage is served again within a second.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a try to a client that was not reading may take (a reading client takes a message
/// at once).
const PROBE_WAIT: Duration = Duration::from_millis(10);
/// Most clients remembered as not reading at once; past it, those not tried for a minute are
/// forgotten, and a new one is not remembered until there is room (its messages then cost
/// [`SEND_WAIT`] each).
const MAX_STUCK: usize = 4096;

/// A listener (UDP socket or TCP server) behind the guard, which ends when `stop` turns true.
pub struct Guarded<T> {
    inner: T,
    guard: Arc<Guard>,
    stop: watch::Receiver<bool>,
    /// Clients that did not take a message in time, and when each was last tried.
    stuck: Mutex<HashMap<SocketAddr, Instant>>,
}

impl<T: Transport + Send + Sync> Guarded<T> {
    /// Answers a refused request with `code`; a challenge also carries the realm and `nonce`.
    async fn answer_error(&self, req: &Request, src: SocketAddr, code: u16, nonce: Option<String>) {
        let Request::Message(m) = req else { return };
        let Ok(code) = ErrorCode::new(code, reason(code).to_string()) else {
            return;
        };
        let mut answer = Message::new(MessageClass::ErrorResponse, m.method(), m.transaction_id());
        answer.add_attribute(code);
        if let Some(nonce) = nonce {
            if let Ok(realm) = Realm::new(REALM.to_string()) {
                answer.add_attribute(realm);
            }
            if let Ok(nonce) = Nonce::new(nonce) {
                answer.add_attribute(nonce);
            }
        }
        // A lost answer is the client's retransmission to repeat.
        let _ = self.bounded(src, self.inner.send_msg_to(answer, src)).await;
    }

    /// `send` to `to`, given up after [`SEND_WAIT`] (`to` is then remembered as not reading),
    /// or after [`PROBE_WAIT`] for a client remembered so, which is tried at most once per
    /// [`PROBE_EVERY`]. A message given up is dropped and counted, and reported sent: an error
    /// would end the allocation's relaying for good (the TURN crate stops on it), and a lost
    /// answer is the client's to ask for again.
    async fn bounded(
        &self,
        to: SocketAddr,
        send: impl Future<Output = Result<(), Error>>,
    ) -> Result<(), Error> {
        let wait = match self.try_stuck(to) {
            Try::Normal => SEND_WAIT,
            Try::Probe => PROBE_WAIT,
            Try::Skip => {
                self.guard.refused("not_reading");
                return Ok(());
            }
        };
        match tokio::time::timeout(wait, send).await {
            Ok(sent) => {
                if wait == PROBE_WAIT {
                    self.lock_stuck().remove(&to);
                }
                sent
            }
            Err(_) => {
                self.guard.refused("not_reading");
                if wait == SEND_WAIT {
                    self.mark_stuck(to);
                }
                Ok(())
            }
        }
    }

    fn lock_stuck(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Instant>> {
        self.stuck.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How a message to `to` is tried; a probe is taken here (its time noted).
    fn try_stuck(&self, to: SocketAddr) -> Try {
        let mut stuck = self.lock_stuck();
        let Some(last) = stuck.get_mut(&to) else {
            return Try::Normal;
        };
        if last.elapsed() < PROBE_EVERY {
            return Try::Skip;
        }
        *last = Instant::now();
        Try::Probe
    }

    fn mark_stuck(&self, to: SocketAddr) {
        let mut stuck = self.lock_stuck();
        if stuck.len() >= MAX_STUCK {
            stuck.retain(|_, last| last.elapsed() < Duration::from_secs(60));
        }
        if stuck.len() < MAX_STUCK {
            stuck.insert(to, Instant::now());
        }
    }
}

/// How [`Guarded::bounded`] tries a message.
enum Try {
    /// A client not known to stop reading: [`SEND_WAIT`].
    Normal,
    /// A client that was not reading, due for a try: [`PROBE_WAIT`].
    Probe,
    /// A client that was not reading, tried less than [`PROBE_EVERY`] ago: dropped.
    Skip,
}

impl<T> Guarded<T> {
    /// `inner` behind `guard`, until `stop` says true.
    pub fn new(inner: T, guard: Arc<Guard>, stop: watch::Receiver<bool>) -> Guarded<T> {
        Guarded {
            inner,
            guard,
            stop,
            stuck: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl<T: Transport + Send + Sync> Transport for Guarded<T> {
    async fn recv_from(&self) -> Result<(Request, SocketAddr), Error> {
        let proto = self.inner.proto();
        let mut stop = self.stop.clone();
        loop {
            let (req, src) = tokio::select! {
                r = self.inner.recv_from() => r?,
                () = super::until_stopped(&mut stop) => return Err(Error::TransportIsDead),
            };
            let verdict = match &req {
                Request::ChannelData(_) => self.guard.on_channel_data(proto, src),
                Request::Message(m) => self.guard.on_message(proto, src, m),
            };
            match verdict {
                Verdict::Pass => return Ok((req, src)),
                Verdict::Drop => {}
                Verdict::Refuse(code) => self.answer_error(&req, src, code, None).await,
                Verdict::Challenge(nonce) => self.answer_error(&req, src, 401, Some(nonce)).await,
            }
        }
    }

    async fn send_to(&self, data: Cow<'_, [u8]>, target: SocketAddr) -> Result<(), Error> {
        self.guard.on_raw_answer(&data);
        self.bounded(target, self.inner.send_to(data, target)).await
    }

    async fn send_msg_to(&self, msg: Message<Attribute>, dst: SocketAddr) -> Result<(), Error> {
        self.guard.on_answer(self.inner.proto(), dst, &msg);
        self.bounded(dst, self.inner.send_msg_to(msg, dst)).await
    }

    fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }

    fn proto(&self) -> u8 {
        self.inner.proto()
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        401 => "Unauthorized",
        403 => "Forbidden",
        486 => "Allocation Quota Reached",
        _ => "Refused",
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::turn::{Limits, TurnAuth};

    /// A listener whose sends wait until `open` says true.
    struct Blocking {
        open: watch::Receiver<bool>,
        sent: AtomicUsize,
    }

    #[async_trait]
    impl Transport for Blocking {
        async fn recv_from(&self) -> Result<(Request, SocketAddr), Error> {
            std::future::pending().await
        }

        async fn send_to(&self, _data: Cow<'_, [u8]>, _to: SocketAddr) -> Result<(), Error> {
            let mut open = self.open.clone();
            let _ = open.wait_for(|o| *o).await;
            self.sent.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }

        fn local_addr(&self) -> SocketAddr {
            SocketAddr::from(([127, 0, 0, 1], 3478))
        }

        fn proto(&self) -> u8 {
            6
        }
    }

    fn guard() -> Arc<Guard> {
        let auth = Arc::new(TurnAuth::new(&["k:secret".parse().expect("key")]));
        let limits = Limits {
            peers: vec![SocketAddr::from(([127, 0, 0, 1], 7701))],
            max_allocations: 10,
            per_credential: 10,
            bytes_per_sec: NonZeroU32::new(2500).expect("non-zero"),
            unauthenticated_per_sec: NonZeroU32::new(1000).expect("non-zero"),
        };
        Arc::new(Guard::new(limits, auth).expect("metrics"))
    }

    fn not_reading(g: &Guard) -> u64 {
        g.figures()
            .refused
            .get_metric_with_label_values(&["not_reading"])
            .map_or(0, |c| c.get())
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_not_reading_costs_one_wait_then_is_tried_once_a_second_until_it_reads() {
        let (open_tx, open) = watch::channel(false);
        let (_stop_tx, stop) = watch::channel(false);
        let g = guard();
        let t = Guarded::new(
            Blocking {
                open,
                sent: AtomicUsize::new(0),
            },
            g.clone(),
            stop,
        );
        let client = SocketAddr::from(([192, 0, 2, 1], 50000));
        let start = tokio::time::Instant::now();
        // Reported sent (an error would end the allocation's relaying), dropped, counted.
        assert!(t.send_to(Cow::Borrowed(b"media"), client).await.is_ok());
        assert_eq!(start.elapsed(), SEND_WAIT, "one wait");
        assert_eq!(not_reading(&g), 1);
        let start = tokio::time::Instant::now();
        for _ in 0..10 {
            assert!(t.send_to(Cow::Borrowed(b"media"), client).await.is_ok());
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "dropped without waiting");
        assert_eq!(not_reading(&g), 11);
        // A second later one try of PROBE_WAIT, which fails while it still does not read.
        tokio::time::sleep(PROBE_EVERY).await;
        let start = tokio::time::Instant::now();
        assert!(t.send_to(Cow::Borrowed(b"media"), client).await.is_ok());
        assert_eq!(start.elapsed(), PROBE_WAIT);
        assert_eq!(t.inner.sent.load(Ordering::Relaxed), 0);
        // It reads again: the next try goes through, and it is served as any client after.
        open_tx.send_replace(true);
        tokio::time::sleep(PROBE_EVERY).await;
        assert!(t.send_to(Cow::Borrowed(b"media"), client).await.is_ok());
        assert!(t.send_to(Cow::Borrowed(b"media"), client).await.is_ok());
        assert_eq!(t.inner.sent.load(Ordering::Relaxed), 2, "served again");
        assert_eq!(not_reading(&g), 12);
    }
}
