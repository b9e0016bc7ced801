//! What runs for each request before and after the API router: the request-target limit, the
//! probe-only rule of reserve connections, the body deadline, the client address for handlers,
//! and the signal that the response is done (which restarts the idle clock).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::ConnSlot;
use super::answers;
use super::conn::ConnState;
use crate::rejects::Port;

/// Paths a reserve connection may ask for: probes and scrapes.
pub const PROBE_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

pub async fn handle(
    router: Router,
    state: Arc<ConnState>,
    peer: SocketAddr,
    slot: Option<ConnSlot>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    state.on_request();
    let res = respond(router, &state, peer, slot, req).await;
    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        state.on_upgraded();
    }
    Ok(res.map(|inner| {
        Body::new(DoneBody {
            inner,
            state: state.clone(),
        })
    }))
}

async fn respond(
    router: Router,
    state: &Arc<ConnState>,
    peer: SocketAddr,
    slot: Option<ConnSlot>,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    // A reserve connection (no slot) may only ask for the probe paths.
    let probe_only = slot.is_none();
    let problem = crate::api::is_problem_path(req.uri().path());
    let target_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > answers::MAX_URI_BYTES {
        if state.rejects.reject(Port::Http, "uri_too_long", state.ip) {
            tracing::info!(client = %state.ip, "HTTP request target too long (further refusals from this client are counted, not logged, for a minute)");
        }
        return answers::error_on(
            problem,
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            &format!(
                "request target longer than {} bytes",
                answers::MAX_URI_BYTES
            ),
        );
    }
    if probe_only && !PROBE_PATHS.contains(&req.uri().path()) {
        return answers::too_many_connections(problem);
    }
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(ConnectInfo(peer));
    if let Some(slot) = slot {
        parts.extensions.insert(slot);
    }
    let body = Body::new(DeadlineBody {
        inner: body,
        deadline: Instant::now() + state.timeouts.body,
        sleep: None,
        state: state.clone(),
    });
    let mut router = router;
    let res =
        match tower_service::Service::call(&mut router, Request::from_parts(parts, body)).await {
            Ok(res) => res,
            Err(never) => match never {},
        };
    if state.body_timed_out() {
        if state.rejects.reject(Port::Http, "body_timeout", state.ip) {
            tracing::info!(client = %state.ip, "HTTP request body not received in time (further ones from this client are counted, not logged, for a minute)");
        }
        // Whatever the handler made of the broken body, the client sees why.
        return answers::error_on(
            problem,
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            &format!(
                "request body not received within {}s",
                state.timeouts.body.as_secs_f64()
            ),
        );
    }
    res
}

/// The request body, which fails once the body deadline has passed (a total for the whole body:
/// trickling bytes does not extend it).
struct DeadlineBody {
    inner: hyper::body::Incoming,
    deadline: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
    state: Arc<ConnState>,
}

#[derive(Debug, thiserror::Error)]
#[error("request body not received in time")]
struct BodyTimeout;

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if Instant::now() >= this.deadline {
            this.state.on_body_timeout();
            return Poll::Ready(Some(Err(BodyTimeout.into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let deadline = this.deadline;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.as_mut().poll(cx).is_ready() {
                    this.state.on_body_timeout();
                    return Poll::Ready(Some(Err(BodyTimeout.into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response body; hyper drops it once it has been written, which makes the connection idle.
struct DoneBody {
    inner: Body,
    state: Arc<ConnState>,
}

impl Drop for DoneBody {
    fn drop(&mut self) {
        self.state.on_response_done();
    }
}

impl http_body::Body for DoneBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
