//! The TURN crate's listeners, wrapped: every message from a client passes the [`Guard`] before
//! the TURN crate sees it, and every answer is shown to it on the way out. Refused requests are
//! answered here with their STUN error.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use medea_turn::attr::{Attribute, ErrorCode, Nonce, Realm};
use medea_turn::transport::{Error, Request, Transport};
use stun_codec::{Message, MessageClass};
use tokio::sync::watch;

use super::guard::{Guard, REALM, Verdict};

/// How long an answer may wait to be handed to a client. The TURN crate's TCP listener writes
/// each answer under one lock for all its connections and waits until it is written: a client
/// that stops reading would hold every TCP client's answers, and the listener's request loop,
/// for as long as it liked.
const SEND_WAIT: Duration = Duration::from_millis(500);
/// A client that did not take an answer within [`SEND_WAIT`] gets no more for this long: each
/// would cost the others the wait again.
const STUCK_FOR: Duration = Duration::from_secs(60);
/// Most clients remembered as stuck at once; past it the expired are forgotten, and a new one is
/// not remembered until there is room (its answers then cost [`SEND_WAIT`] each).
const MAX_STUCK: usize = 4096;

/// A listener (UDP socket or TCP server) behind the guard, which ends when `stop` turns true.
pub struct Guarded<T> {
    inner: T,
    guard: Arc<Guard>,
    stop: watch::Receiver<bool>,
    /// Clients that did not take an answer in time, and since when.
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

    /// `send` to `to`, given up after [`SEND_WAIT`] (and `to` then remembered as stuck); refused
    /// at once for a client remembered as stuck.
    async fn bounded(
        &self,
        to: SocketAddr,
        send: impl Future<Output = Result<(), Error>>,
    ) -> Result<(), Error> {
        if self.is_stuck(to) {
            return Err(Error::TransportIsDead);
        }
        match tokio::time::timeout(SEND_WAIT, send).await {
            Ok(sent) => sent,
            Err(_) => {
                self.guard.refused("answer_not_taken");
                self.mark_stuck(to);
                Err(Error::TransportIsDead)
            }
        }
    }

    fn is_stuck(&self, to: SocketAddr) -> bool {
        let Ok(mut stuck) = self.stuck.lock() else {
            return false;
        };
        match stuck.get(&to) {
            Some(since) if since.elapsed() < STUCK_FOR => true,
            Some(_) => {
                stuck.remove(&to);
                false
            }
            None => false,
        }
    }

    fn mark_stuck(&self, to: SocketAddr) {
        let Ok(mut stuck) = self.stuck.lock() else {
            return;
        };
        if stuck.len() >= MAX_STUCK {
            stuck.retain(|_, since| since.elapsed() < STUCK_FOR);
        }
        if stuck.len() < MAX_STUCK {
            stuck.insert(to, Instant::now());
        }
    }
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
