//! The TURN listeners (UDP, and TCP in `tcp.rs`), wrapped: every message from a client passes
//! the [`Guard`] before the TURN crate sees it, and every answer is shown to it on the way out.
//! Refused requests are answered here with their STUN error. Neither listener waits on a
//! client that does not read: UDP drops, and each TCP connection has its own bounded queue.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use medea_turn::attr::{Attribute, ErrorCode, Nonce, Realm};
use medea_turn::transport::{Error, Request, Transport};
use stun_codec::{Message, MessageClass};
use tokio::sync::watch;

use super::guard::{Guard, REALM, Verdict};

/// A listener (UDP socket or TCP server) behind the guard, which ends when `stop` turns true.
pub struct Guarded<T> {
    inner: T,
    guard: Arc<Guard>,
    stop: watch::Receiver<bool>,
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
        let _ = self.inner.send_msg_to(answer, src).await;
    }
}

impl<T> Guarded<T> {
    /// `inner` behind `guard`, until `stop` says true.
    pub fn new(inner: T, guard: Arc<Guard>, stop: watch::Receiver<bool>) -> Guarded<T> {
        Guarded { inner, guard, stop }
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
        self.inner.send_to(data, target).await
    }

    async fn send_msg_to(&self, msg: Message<Attribute>, dst: SocketAddr) -> Result<(), Error> {
        self.guard.on_answer(self.inner.proto(), dst, &msg);
        self.inner.send_msg_to(msg, dst).await
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
