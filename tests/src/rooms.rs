//! Rooms, tickets and the WebSocket signalling from a client's side: create rooms and tickets
//! over HTTP, and [`WsParticipant`], a str0m peer ([`Peer`]) behind a WebSocket client that
//! answers the server's offers and updates and its pings, as a browser page would.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, anyhow, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::{CallsClient, Peer};

/// Longest wait for one WebSocket message in these helpers.
pub const WS_WAIT: Duration = Duration::from_secs(10);

/// Creates a room; returns its JSON.
pub async fn create_room(api: &CallsClient, body: Value) -> anyhow::Result<Value> {
    let (status, v) = api.raw(Method::POST, "rooms", Some(body)).await?;
    ensure!(status == 201, "POST rooms: {status} {v}");
    Ok(v)
}

/// Issues a ticket for `room`; returns `(access_token, url)`.
pub async fn ticket(
    api: &CallsClient,
    room: &str,
    direction: &str,
) -> anyhow::Result<(String, String)> {
    let (status, v) = api
        .raw(
            Method::POST,
            &format!("rooms/{room}/tickets"),
            Some(json!({ "direction": direction })),
        )
        .await?;
    ensure!(status == 201, "POST tickets: {status} {v}");
    let token = v["access_token"].as_str().context("access_token")?;
    let url = v["url"].as_str().context("url")?;
    Ok((token.to_string(), url.to_string()))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw WebSocket client for the protocol's error cases.
pub struct RawWs {
    ws: Ws,
}

impl RawWs {
    /// Connects to `url` (`ws://…/v1/ws`).
    pub async fn connect(url: &str) -> anyhow::Result<RawWs> {
        let (ws, _) = tokio::time::timeout(WS_WAIT, tokio_tungstenite::connect_async(url))
            .await
            .context("connecting the WebSocket timed out")??;
        Ok(RawWs { ws })
    }

    /// Sends a text message.
    pub async fn send_text(&mut self, text: &str) -> anyhow::Result<()> {
        self.ws.send(Message::Text(text.into())).await?;
        Ok(())
    }

    /// Sends a JSON message.
    pub async fn send(&mut self, v: &Value) -> anyhow::Result<()> {
        self.send_text(&v.to_string()).await
    }

    /// The next JSON message (control frames skipped), or the close frame as an error.
    pub async fn recv(&mut self) -> anyhow::Result<Value> {
        for _ in 0..1000 {
            let msg = tokio::time::timeout(WS_WAIT, self.ws.next())
                .await
                .context("no WebSocket message in time")?
                .ok_or_else(|| anyhow!("the WebSocket ended"))??;
            match msg {
                Message::Text(t) => return Ok(serde_json::from_str(t.as_str())?),
                Message::Close(f) => bail!("closed: {f:?}"),
                _ => continue,
            }
        }
        bail!("only control frames")
    }

    /// Reads until the server closes; returns its close code and reason. `within` bounds the
    /// wait; text messages meanwhile are skipped (pings are not answered).
    pub async fn closed(&mut self, within: Duration) -> anyhow::Result<(u16, String)> {
        let deadline = tokio::time::Instant::now() + within;
        for _ in 0..10_000 {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .context("the server did not close in time")?;
            match msg {
                Some(Ok(Message::Close(Some(f)))) => {
                    return Ok((u16::from(f.code), f.reason.to_string()));
                }
                Some(Ok(Message::Close(None))) | None => bail!("closed without a reason"),
                Some(Err(e)) => bail!("the WebSocket failed: {e}"),
                Some(Ok(_)) => continue,
            }
        }
        bail!("too many messages before the close")
    }
}

/// The mids of an SDP's sections.
pub fn mids_of(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a=mid:"))
        .map(str::to_string)
        .collect()
}

/// A participant: a str0m peer driven over the WebSocket by a task that answers `offer` and
/// `update` (a publisher starts sending on its offered sections) and `ping`.
pub struct WsParticipant {
    /// The WebRTC peer.
    pub peer: Arc<Peer>,
    /// The client id the server gave.
    pub client_id: String,
    /// The Calls session underneath.
    pub session_id: String,
    /// The server's first offer.
    pub offer_sdp: String,
    /// `update` offers answered so far.
    pub updates: Arc<AtomicUsize>,
    /// Mids of the receiving sections the server offered.
    pub recv_mids: Arc<Mutex<Vec<String>>>,
    /// The server's close frame, once closed.
    pub closed: Arc<Mutex<Option<(u16, String)>>>,
    /// Answer pings (turned off to test the pong timeout).
    pub answer_pings: Arc<AtomicBool>,
    out: tokio::sync::mpsc::Sender<Value>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WsParticipant {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsParticipant {
    /// Connects with `token` as `role` and completes the first offer/answer.
    pub async fn join(
        url: &str,
        token: &str,
        role: &str,
        multistream: bool,
        name: &str,
    ) -> anyhow::Result<WsParticipant> {
        let mut raw = RawWs::connect(url).await?;
        raw.send(&json!({
            "type": "connect", "token": token, "role": role, "multistream": multistream,
        }))
        .await?;
        let offer = raw.recv().await?;
        ensure!(offer["type"] == "offer", "expected an offer, got {offer}");
        let sdp = offer["sdp"].as_str().context("offer sdp")?.to_string();
        let peer = Arc::new(Peer::new(name)?);
        let answer = peer.accept_offer(&sdp).await?;
        raw.send(&json!({ "type": "answer", "sdp": answer }))
            .await?;
        if role != "downstream" {
            let mids = mids_of(&sdp);
            peer.start_sending(&mids).await?;
        }
        let client_id = offer["client_id"].as_str().unwrap_or_default().to_string();
        let session_id = offer["session_id"].as_str().unwrap_or_default().to_string();
        let updates = Arc::new(AtomicUsize::new(0));
        let recv_mids = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(Mutex::new(None));
        let answer_pings = Arc::new(AtomicBool::new(true));
        let (out, mut out_rx) = tokio::sync::mpsc::channel::<Value>(16);
        let task = {
            let (peer, updates, recv_mids, closed, answer_pings) = (
                peer.clone(),
                updates.clone(),
                recv_mids.clone(),
                closed.clone(),
                answer_pings.clone(),
            );
            let mut ws = raw.ws;
            tokio::spawn(async move {
                loop {
                    let msg = tokio::select! {
                        m = ws.next() => m,
                        v = out_rx.recv() => {
                            let Some(v) = v else { return };
                            if ws.send(Message::Text(v.to_string().into())).await.is_err() {
                                return;
                            }
                            continue;
                        }
                    };
                    let Some(Ok(msg)) = msg else { return };
                    let text = match msg {
                        Message::Text(t) => t,
                        Message::Close(f) => {
                            let f = f.map(|f| (u16::from(f.code), f.reason.to_string()));
                            *closed.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(f.unwrap_or((u16::from(CloseCode::Status), String::new())));
                            return;
                        }
                        _ => continue,
                    };
                    let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
                        return;
                    };
                    let reply = match v["type"].as_str() {
                        Some("ping") if answer_pings.load(Ordering::Relaxed) => {
                            json!({ "type": "pong" })
                        }
                        Some("update") => {
                            let sdp = v["sdp"].as_str().unwrap_or_default();
                            let Ok(answer) = peer.accept_offer(sdp).await else {
                                return;
                            };
                            let mut mids = recv_mids.lock().unwrap_or_else(|p| p.into_inner());
                            for m in mids_of(sdp) {
                                if !mids.contains(&m) {
                                    mids.push(m);
                                }
                            }
                            drop(mids);
                            updates.fetch_add(1, Ordering::Relaxed);
                            json!({ "type": "update", "sdp": answer })
                        }
                        _ => continue,
                    };
                    if ws
                        .send(Message::Text(reply.to_string().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            })
        };
        Ok(WsParticipant {
            peer,
            client_id,
            session_id,
            offer_sdp: sdp,
            updates,
            recv_mids,
            closed,
            answer_pings,
            out,
            task,
        })
    }

    /// Sends a message on the socket.
    pub async fn send(&self, v: Value) -> anyhow::Result<()> {
        self.out
            .send(v)
            .await
            .map_err(|_| anyhow!("the socket task ended"))
    }

    /// The server's close, waited for up to `within`.
    pub async fn wait_closed(&self, within: Duration) -> anyhow::Result<(u16, String)> {
        let steps = within.as_millis() / 50 + 1;
        for _ in 0..steps {
            if let Some(c) = self
                .closed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
            {
                return Ok(c);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("not closed within {within:?}")
    }

    /// Waits until `n` updates were answered.
    pub async fn wait_updates(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        let steps = within.as_millis() / 50 + 1;
        for _ in 0..steps {
            if self.updates.load(Ordering::Relaxed) >= n {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "{} updates within {within:?}, wanted {n}",
            self.updates.load(Ordering::Relaxed)
        )
    }

    /// Waits until media arrives on at least `n` of the offered receiving sections (10 frames
    /// each).
    pub async fn wait_media_on(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        let mids = self.recv_mids.clone();
        self.peer
            .wait_until("media on the room's tracks", within, move |s| {
                let mids = mids.lock().unwrap_or_else(|p| p.into_inner());
                mids.iter().filter(|m| s.rx_frames(m) >= 10).count() >= n
            })
            .await
            .map(|_| ())
    }
}
