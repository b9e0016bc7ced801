//! Rooms and tickets at the API: `POST/GET/DELETE /v1/apps/{app}/rooms[/{id}]` and
//! `POST …/rooms/{id}/tickets`, and the node-to-node call that consumes a ticket at its issuer.
//! The model is `rooms/`; this node's WebSocket participants are kept here ([`Participants`]) so
//! the counts, the limit and a room's deletion reach them. Any node answers any room call: reads
//! come from gossip (`summary.rs`), a DELETE goes to the room's owner.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::ApiState;
use super::auth_hook::{AuthHook, HookQuery, user_claim};
use super::error::ApiError;
use super::guard::{decode, is_blank, read_body};
use super::node_auth::{FORWARDED_BY, NODE_AUTH};
use crate::ids::SessionId;
use crate::rooms::{
    ConsumeError, CreateError, Direction, MAX_PARTICIPANTS_LIMIT, Registry, Role, Room,
    RoomAnnounce, RoomOptions, RoomSummary, UsedTickets, summary, unix_ms,
};
use crate::ws::CloseReason;

/// Largest room or ticket request body.
const MAX_REQUEST: usize = 4096;
/// How often rooms are announced in gossip and participants of deleted rooms ended.
pub const ROOMS_EVERY: Duration = Duration::from_millis(500);
/// A participant whose room is not in the cluster view yet (it joined on a node the owner's
/// gossip had not reached) is kept this long before it counts as deleted.
const ORPHAN_GRACE: Duration = Duration::from_secs(5);

/// A WebSocket participant on this node.
pub struct Participant {
    /// The app.
    pub app: String,
    /// The room.
    pub room: String,
    /// Its role.
    pub role: Role,
    /// The ticket's user.
    pub user: Option<String>,
    /// The Calls session underneath, once made.
    pub session: Option<SessionId>,
    /// It publishes (its first answer is in).
    pub publishing: bool,
    /// The room as the participant joined it (creation time and options), announced while the
    /// owner's gossip has not arrived.
    pub created_ms: u64,
    /// The room's options.
    pub options: RoomOptions,
    /// When it joined.
    pub since: Instant,
    /// Tells its connection to close.
    pub close: watch::Sender<Option<CloseReason>>,
}

/// This node's WebSocket participants, by app and client id: a client id names a participant
/// within its app, so apps cannot take each other's ids.
#[derive(Default)]
pub struct Participants {
    by_client: HashMap<(String, String), Participant>,
}

impl Participants {
    /// Participants here in `app`/`room`, with their client ids.
    pub fn in_room(&self, app: &str, room: &str) -> impl Iterator<Item = (&String, &Participant)> {
        self.by_client
            .iter()
            .filter(move |(_, p)| p.app == app && p.room == room)
            .map(|((_, client), p)| (client, p))
    }

    /// Whether a client of this id is here in `app`.
    pub fn has(&self, app: &str, client: &str) -> bool {
        self.by_client
            .contains_key(&(app.to_string(), client.to_string()))
    }

    /// Adds one, under its app.
    pub fn insert(&mut self, client: String, p: Participant) {
        self.by_client.insert((p.app.clone(), client), p);
    }

    /// Removes one.
    pub fn remove(&mut self, app: &str, client: &str) -> Option<Participant> {
        self.by_client
            .remove(&(app.to_string(), client.to_string()))
    }

    /// One, to update.
    pub fn get_mut(&mut self, app: &str, client: &str) -> Option<&mut Participant> {
        self.by_client
            .get_mut(&(app.to_string(), client.to_string()))
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    /// Whether none.
    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }
}

/// The rooms' state of one node.
pub struct RoomsState {
    /// Rooms this node owns.
    pub registry: Mutex<Registry>,
    /// Tickets this node issued and saw redeemed.
    pub used: Mutex<UsedTickets>,
    /// WebSocket participants here.
    pub participants: Mutex<Participants>,
    /// The permission hook.
    pub hook: AuthHook,
    /// Rooms per app (`--max-rooms-per-app`).
    pub quota: usize,
    /// The WebSocket timers.
    pub timers: crate::ws::Timers,
    /// `--trust-user-claim`.
    pub trust_user_claim: bool,
    /// The node serves HTTPS itself: tickets name `wss://`.
    pub tls: bool,
    /// WebSocket participants' ends by reason (`trackmesh_ws_closed_total`).
    closed: Option<prometheus::IntCounterVec>,
}

impl RoomsState {
    /// The rooms' state for `cfg`.
    pub fn new(cfg: &crate::config::Config) -> RoomsState {
        RoomsState {
            registry: Mutex::default(),
            used: Mutex::new(UsedTickets::new(cfg.apps.len())),
            participants: Mutex::default(),
            hook: AuthHook::new(cfg.auth_hook.as_deref(), cfg.auth_hook_timeout),
            quota: cfg.max_rooms_per_app,
            timers: crate::ws::Timers {
                ping_interval: cfg.ws_ping_interval,
                pong_timeout: cfg.ws_pong_timeout,
                connect_wait: cfg.ws_connect_timeout,
                answer_wait: cfg.ws_answer_timeout,
            },
            trust_user_claim: cfg.trust_user_claim,
            tls: cfg.tls.is_some(),
            closed: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "trackmesh_ws_closed_total",
                    "WebSocket signalling connections ended, by close reason (normal: the client \
                     disconnected; gone: the socket dropped)",
                ),
                &["reason"],
            )
            .ok(),
        }
    }

    /// The counters for `/metrics`: the hook's and the WebSocket closes.
    pub fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        let mut out = self.hook.collectors();
        if let Some(c) = &self.closed {
            out.push(Box::new(c.clone()));
        }
        out
    }

    /// Counts a WebSocket connection's end (`reason` is one of a fixed set).
    pub fn count_closed(&self, reason: &'static str) {
        if let Some(c) = &self.closed {
            c.with_label_values(&[reason]).inc();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What this node announces now: its own rooms first, then rooms it has participants in.
pub fn local_announces(st: &ApiState) -> Vec<RoomAnnounce> {
    let registry = lock(&st.rooms.registry);
    let parts = lock(&st.rooms.participants);
    let mut out: Vec<RoomAnnounce> = Vec::new();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    // Each room's publishers with the time they joined, listed oldest first below.
    let mut publishing: HashMap<usize, Vec<(std::time::Instant, SessionId)>> = HashMap::new();
    for r in registry.all() {
        index.insert((r.app.clone(), r.id.clone()), out.len());
        out.push(RoomAnnounce {
            app: r.app.clone(),
            id: r.id.clone(),
            created_ms: r.created_ms,
            owner: true,
            options: r.options,
            up: 0,
            down: 0,
            total: 0,
            publishers: Vec::new(),
        });
    }
    for p in parts.by_client.values() {
        let key = (p.app.clone(), p.room.clone());
        let i = *index.entry(key).or_insert_with(|| {
            out.push(RoomAnnounce {
                app: p.app.clone(),
                id: p.room.clone(),
                created_ms: p.created_ms,
                owner: false,
                options: p.options,
                up: 0,
                down: 0,
                total: 0,
                publishers: Vec::new(),
            });
            out.len() - 1
        });
        let Some(a) = out.get_mut(i) else { continue };
        a.total += 1;
        if p.role.sends() && p.publishing {
            a.up += 1;
            if let Some(s) = p.session {
                publishing.entry(i).or_default().push((p.since, s));
            }
        }
        if p.role.receives() {
            a.down += 1;
        }
    }
    for (i, joined) in publishing {
        if let Some(a) = out.get_mut(i) {
            a.publishers = listed_publishers(joined);
        }
    }
    out
}

/// The publishers a node lists for a room: the [`MAX_PUBLISHERS`](crate::rooms::announce::MAX_PUBLISHERS)
/// that joined first. A later one never pushes a listed one off (its multistream viewers would
/// take it for gone and stop receiving it); one leaving makes room for the next.
fn listed_publishers(mut joined: Vec<(std::time::Instant, SessionId)>) -> Vec<SessionId> {
    joined.sort_unstable();
    joined
        .into_iter()
        .take(crate::rooms::announce::MAX_PUBLISHERS)
        .map(|(_, s)| s)
        .collect()
}

/// Every room of the cluster: this node's fresh announces with the other live members' gossip.
pub fn summaries(st: &ApiState) -> Vec<RoomSummary> {
    summaries_where(st, |_| true)
}

/// The rooms whose announces pass `keep`, merged (a filter before the merge, so one room's
/// lookup, which every participant makes each tick, does not merge every room).
fn summaries_where(st: &ApiState, keep: impl Fn(&RoomAnnounce) -> bool) -> Vec<RoomSummary> {
    let mine = local_announces(st);
    let view = st.cluster.view.borrow().clone();
    let me = st.cluster.self_id.as_str();
    let others = view
        .rooms
        .iter()
        .filter(|(node, a)| node != me && keep(a) && view.live_by_id(node).is_some())
        .map(|(node, a)| (node.as_str(), a));
    summary::merge(
        mine.iter()
            .filter(|a| keep(a))
            .map(|a| (me, a))
            .chain(others),
    )
}

/// One room of the cluster.
pub fn find(st: &ApiState, app: &str, id: &str) -> Option<RoomSummary> {
    summaries_where(st, |a| a.app == app && a.id == id)
        .into_iter()
        .next()
}

/// Tells every participant here of `app`/`room` to close.
pub fn end_room(st: &ApiState, app: &str, room: &str, reason: CloseReason) {
    let parts = lock(&st.rooms.participants);
    for (_, p) in parts.in_room(app, room) {
        let _ = p.close.send(Some(reason));
    }
}

/// Every [`ROOMS_EVERY`]: this node's rooms go into gossip, and participants here whose room has
/// gone from the cluster (deleted, or its owner died) are ended. Ends when the API state goes.
pub async fn run(st: Arc<ApiState>) {
    let mut tick = tokio::time::interval(ROOMS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        st.ops.local.rooms.replace_all(&local_announces(&st));
        let live: std::collections::HashSet<(String, String)> =
            summaries(&st).into_iter().map(|s| (s.app, s.id)).collect();
        let mut by_worker: ByWorker = HashMap::new();
        {
            let parts = lock(&st.rooms.participants);
            for p in parts.by_client.values() {
                let exists = live.contains(&(p.app.clone(), p.room.clone()));
                if !exists && p.since.elapsed() >= ORPHAN_GRACE {
                    let _ = p.close.send(Some(CloseReason::RoomClosed));
                }
                if let Some(sid) = p.session {
                    by_worker
                        .entry(st.engine.worker_of(sid))
                        .or_default()
                        .push((sid, p.close.clone()));
                }
            }
        }
        end_participants_without_session(&st, by_worker).await;
    }
}

/// Participants' sessions with their close signals, by the engine worker that holds them.
type ByWorker = HashMap<usize, Vec<(SessionId, watch::Sender<Option<CloseReason>>)>>;

/// Participants whose Calls session the engine closed under them (its transport lost past the
/// reconnect grace, the client's DTLS closed) would stay in their room, announced as publishers
/// nobody can pull: they are told to close, which takes them out of the room.
async fn end_participants_without_session(st: &ApiState, by_worker: ByWorker) {
    for (worker, parts) in by_worker {
        let ids: Vec<SessionId> = parts.iter().map(|(sid, _)| *sid).collect();
        // Bounded: a busy worker holds up the next tick's announcements by one period at most.
        let asked = st
            .engine
            .call_on(worker, move |e, _| e.sessions_missing(&ids));
        let Ok(Ok(missing)) = tokio::time::timeout(ROOMS_EVERY, asked).await else {
            continue;
        };
        let missing: std::collections::HashSet<SessionId> = missing.into_iter().collect();
        for (sid, close) in &parts {
            if missing.contains(sid) {
                let _ = close.send(Some(CloseReason::SessionEnded));
            }
        }
    }
}

/// A room as the API shows it.
#[derive(Debug, Serialize)]
pub struct RoomView {
    id: String,
    up_count: u32,
    down_count: u32,
    created_at: String,
    onair: bool,
    max_participants: u32,
    audio_egress: bool,
}

impl From<&RoomSummary> for RoomView {
    fn from(s: &RoomSummary) -> RoomView {
        RoomView {
            id: s.id.clone(),
            up_count: s.up,
            down_count: s.down,
            created_at: rfc3339_ms(s.created_ms),
            onair: s.onair(),
            max_participants: s.options.max_participants,
            audio_egress: s.options.audio_egress,
        }
    }
}

impl From<&Room> for RoomView {
    fn from(r: &Room) -> RoomView {
        RoomView {
            id: r.id.clone(),
            up_count: 0,
            down_count: 0,
            created_at: rfc3339_ms(r.created_ms),
            onair: false,
            max_participants: r.options.max_participants,
            audio_egress: r.options.audio_egress,
        }
    }
}

fn rfc3339_ms(ms: u64) -> String {
    trackmesh_tokens::rfc3339(ms / 1000)
}

/// `POST …/rooms`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRoom {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    max_participants: Option<u32>,
    #[serde(default)]
    audio_egress: Option<bool>,
}

/// `POST /v1/apps/{app}/rooms`: 201 with the room.
pub async fn create(
    State(st): State<Arc<ApiState>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    st.apps.authorize(&app, &headers)?;
    let bytes = read_body(body, MAX_REQUEST).await?;
    let req: CreateRoom = if is_blank(&bytes) {
        CreateRoom::default()
    } else {
        decode(&bytes)?
    };
    let max = req
        .max_participants
        .unwrap_or(crate::rooms::DEFAULT_MAX_PARTICIPANTS);
    if max == 0 || max > MAX_PARTICIPANTS_LIMIT {
        return Err(ApiError::invalid_params(format!(
            "max_participants is 1 to {MAX_PARTICIPANTS_LIMIT}"
        )));
    }
    let options = RoomOptions {
        max_participants: max,
        audio_egress: req.audio_egress.unwrap_or(false),
    };
    let id = req.id.unwrap_or_else(|| crate::ids::random_hex(8));
    let all = summaries(&st);
    let me = st.cluster.self_id.as_str();
    let elsewhere = crate::rooms::Elsewhere {
        exists: all
            .iter()
            .any(|s| s.app == app && s.id == id && s.owner != me),
        app_rooms: all.iter().filter(|s| s.app == app && s.owner != me).count(),
    };
    let created =
        lock(&st.rooms.registry).create(&app, &id, options, st.rooms.quota, elsewhere, unix_ms());
    match created {
        Ok(room) => {
            st.ops.local.rooms.replace_all(&local_announces(&st));
            Ok((StatusCode::CREATED, Json(RoomView::from(&room))).into_response())
        }
        Err(e @ CreateError::BadId) => Err(ApiError::invalid_params(e.to_string())),
        Err(e @ CreateError::Exists(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            e.to_string(),
        )),
        Err(e @ CreateError::Quota(_)) => {
            st.ops
                .rejects
                .count(crate::rejects::Port::Http, "app_room_quota");
            Err(
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", e.to_string())
                    .retry_after(5),
            )
        }
        Err(e @ CreateError::Full) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable_error",
            e.to_string(),
        )),
    }
}

/// `?state=all|onair`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    state: Option<String>,
}

/// `GET /v1/apps/{app}/rooms[?state=all|onair]`: `{rooms: [...]}`.
pub async fn list(
    State(st): State<Arc<ApiState>>,
    Path(app): Path<String>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    st.apps.authorize(&app, &headers)?;
    let onair = match q.state.as_deref() {
        None | Some("all") => false,
        Some("onair") => true,
        Some(_) => return Err(ApiError::invalid_params("state is all or onair")),
    };
    let rooms: Vec<RoomView> = summaries(&st)
        .iter()
        .filter(|s| s.app == app && (!onair || s.onair()))
        .map(RoomView::from)
        .collect();
    Ok(Json(serde_json::json!({ "rooms": rooms })).into_response())
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("room {id} not found"),
    )
}

/// `GET /v1/apps/{app}/rooms/{id}`.
pub async fn get(
    State(st): State<Arc<ApiState>>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    st.apps.authorize(&app, &headers)?;
    let s = find(&st, &app, &id).ok_or_else(|| not_found(&id))?;
    Ok(Json(RoomView::from(&s)).into_response())
}

/// `DELETE /v1/apps/{app}/rooms/{id}`: the owner deletes it and ends its participants here;
/// other nodes end theirs when its announce leaves gossip. Another node's room is forwarded to
/// it.
pub async fn delete(
    State(st): State<Arc<ApiState>>,
    Path((app, id)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let forwarded = req.headers().contains_key(FORWARDED_BY);
    let req = if forwarded {
        super::cluster::check_forwarded(&st, req).await?
    } else {
        st.apps.authorize(&app, req.headers())?;
        req
    };
    if lock(&st.rooms.registry).delete(&app, &id) {
        st.ops.local.rooms.replace_all(&local_announces(&st));
        end_room(&st, &app, &id, CloseReason::RoomClosed);
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if forwarded {
        return Err(not_found(&id));
    }
    let s = find(&st, &app, &id).ok_or_else(|| not_found(&id))?;
    let owner = st.cluster.view.borrow().live_by_id(&s.owner).cloned();
    let owner = owner.ok_or_else(|| not_found(&id))?;
    super::cluster::forward_to(&st, &owner, req).await
}

/// `POST …/tickets`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TicketRequest {
    direction: Direction,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    ttl: Option<u64>,
}

/// A ticket.
#[derive(Debug, Serialize)]
struct TicketResponse {
    access_token: String,
    url: String,
    direction: Direction,
    expires_at: String,
}

/// `POST /v1/apps/{app}/rooms/{id}/tickets`: 201 `{access_token, url, direction, expires_at}`.
pub async fn ticket(
    State(st): State<Arc<ApiState>>,
    Path((app, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    st.apps.authorize(&app, &headers)?;
    let bytes = read_body(body, MAX_REQUEST).await?;
    if is_blank(&bytes) {
        return Err(ApiError::decoding(
            "the body must be JSON {direction, user?, ttl?}",
        ));
    }
    let req: TicketRequest = decode(&bytes)?;
    let ttl = req
        .ttl
        .unwrap_or(trackmesh_tokens::DEFAULT_TICKET_TTL.as_secs());
    if ttl == 0 || ttl > trackmesh_tokens::MAX_TICKET_TTL.as_secs() {
        return Err(ApiError::invalid_params(format!(
            "ttl is 1 to {} seconds",
            trackmesh_tokens::MAX_TICKET_TTL.as_secs()
        )));
    }
    let room = find(&st, &app, &id).ok_or_else(|| not_found(&id))?;
    let user = user_claim(&headers, st.rooms.trust_user_claim)
        .map(|c| c.userid)
        .or(req.user);
    // A publisher's audio goes to the bus labelled with its user: one too long for a label
    // would have to publish without egress, which such a room must not allow.
    let max = crate::engine::MAX_LABEL_BYTES;
    if room.options.audio_egress
        && req.direction.admits(crate::rooms::Role::Upstream)
        && user.as_ref().is_some_and(|u| u.len() > max)
    {
        return Err(ApiError::invalid_params(format!(
            "user is longer than {max} bytes: this room's audio goes to the message bus labelled \
             with it"
        )));
    }
    let query = HookQuery {
        app: app.clone(),
        room: id.clone(),
        user: user.clone(),
        direction: req.direction.as_str().to_string(),
    };
    if !st.rooms.hook.check(&query).await.allows() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the permission hook did not allow this ticket (denied, or it did not answer in time)",
        ));
    }
    let now = trackmesh_tokens::unix_now();
    let claims = trackmesh_tokens::TicketClaims {
        kind: trackmesh_tokens::TICKET_KIND.to_string(),
        app: app.clone(),
        room: id.clone(),
        room_created: Some(room.created_ms),
        dir: req.direction.as_str().to_string(),
        user,
        iss: st.cluster.self_id.clone(),
        jti: crate::ids::random_hex(16),
        iat: now,
        exp: now + ttl,
    };
    let secret = st.apps.secret(&app).unwrap_or_default();
    let token = trackmesh_tokens::mint_ticket(secret.as_bytes(), &claims)
        .map_err(|e| ApiError::invalid_params(e.to_string()))?;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.len() <= 255 && !h.contains(['/', ' ', '?', '#']))
        .map(str::to_string)
        .unwrap_or_else(|| st.http_addr.to_string());
    let scheme = if st.rooms.tls { "wss" } else { "ws" };
    Ok((
        StatusCode::CREATED,
        Json(TicketResponse {
            access_token: token,
            url: format!("{scheme}://{host}/v1/ws"),
            direction: req.direction,
            expires_at: trackmesh_tokens::rfc3339(claims.exp),
        }),
    )
        .into_response())
}

/// Why a ticket was not redeemed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedeemError {
    /// Used before.
    Used,
    /// The issuer's used set holds the app's share: not consumed, retry later.
    Full,
    /// The issuer did not answer: single use cannot be checked, so it is refused.
    IssuerUnreachable,
}

/// Consumes a verified ticket: here when this node issued it, else at its issuer over a signed
/// node-to-node call.
pub async fn consume(
    st: &ApiState,
    claims: &trackmesh_tokens::TicketClaims,
    token: &str,
) -> Result<(), RedeemError> {
    if claims.iss == st.cluster.self_id {
        return consume_issued_here(st, claims).map_err(|e| match e {
            ConsumeError::Used => RedeemError::Used,
            ConsumeError::Full => RedeemError::Full,
        });
    }
    let issuer = st.cluster.view.borrow().live_by_id(&claims.iss).cloned();
    let Some(issuer) = issuer else {
        return Err(RedeemError::IssuerUnreachable);
    };
    let path = format!(
        "/v1/apps/{}/rooms/{}/tickets/consume",
        claims.app, claims.room
    );
    let body = token.as_bytes().to_vec();
    let credential = st
        .cluster
        .node_auth
        .sign("POST", &path, &st.cluster.self_id, &body);
    let res = st
        .http
        .post(format!("{}{path}", issuer.api))
        .header(FORWARDED_BY, st.cluster.self_id.as_str())
        .header(NODE_AUTH, credential)
        .timeout(Duration::from_secs(3))
        .body(body)
        .send()
        .await;
    match res.map(|r| r.status()) {
        Ok(s) if s == StatusCode::OK => Ok(()),
        Ok(s) if s == StatusCode::CONFLICT => Err(RedeemError::Used),
        Ok(s) if s == StatusCode::TOO_MANY_REQUESTS => Err(RedeemError::Full),
        _ => Err(RedeemError::IssuerUnreachable),
    }
}

/// Marks a ticket this node issued used, remembered until it could no longer be redeemed.
fn consume_issued_here(
    st: &ApiState,
    claims: &trackmesh_tokens::TicketClaims,
) -> Result<(), ConsumeError> {
    let keep_until = claims
        .exp
        .saturating_add(trackmesh_tokens::TICKET_SKEW.as_secs());
    lock(&st.rooms.used).consume(
        &claims.app,
        &claims.jti,
        keep_until,
        trackmesh_tokens::unix_now(),
    )
}

/// `POST /v1/apps/{app}/rooms/{id}/tickets/consume`, between nodes only: the body is the ticket;
/// 200 when it was not used before, 409 when it was, 429 when the app's share of the used set
/// is full, 401 without a valid node credential.
pub async fn consume_here(
    State(st): State<Arc<ApiState>>,
    Path((app, _id)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let unauthorized = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a node-to-node call needs a valid node credential",
        )
    };
    let (parts, body) = req.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    st.cluster
        .node_auth
        .precheck(header(NODE_AUTH))
        .map_err(|_| unauthorized())?;
    let bytes = read_body(body, trackmesh_tokens::MAX_TOKEN_LEN).await?;
    let path = parts.uri.path().to_string();
    st.cluster
        .node_auth
        .verify(
            "POST",
            &path,
            header(FORWARDED_BY).unwrap_or(""),
            &bytes,
            header(NODE_AUTH),
        )
        .map_err(|r| {
            st.ops.rejects.count(crate::rejects::Port::Http, r.reason());
            unauthorized()
        })?;
    let token = std::str::from_utf8(&bytes).map_err(|_| ApiError::decoding("not a ticket"))?;
    let secret = st.apps.secret(&app).unwrap_or_default();
    let claims = trackmesh_tokens::verify_ticket(
        secret.as_bytes(),
        Some(&app),
        token,
        trackmesh_tokens::unix_now(),
    )
    .map_err(|e| ApiError::invalid_params(e.to_string()))?;
    if claims.iss != st.cluster.self_id {
        return Err(ApiError::invalid_params(
            "this node did not issue the ticket",
        ));
    }
    consume_issued_here(&st, &claims).map_err(|e| match e {
        ConsumeError::Used => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
        ConsumeError::Full => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", e.to_string())
        }
    })?;
    Ok(Json(serde_json::json!({ "consumed": true })).into_response())
}

/// Participants of `app`/`room` this node counts in its own announce.
pub fn local_count(st: &ApiState, app: &str, room: &str) -> u32 {
    lock(&st.rooms.participants).in_room(app, room).count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rooms::announce::MAX_PUBLISHERS;

    #[test]
    fn a_publisher_joining_a_full_list_does_not_push_a_listed_one_off() {
        let tag = crate::ids::NodeTag::random();
        let t0 = std::time::Instant::now();
        let mut joined: Vec<(std::time::Instant, SessionId)> = (0..MAX_PUBLISHERS as u64)
            .map(|i| {
                (
                    t0 + std::time::Duration::from_millis(i),
                    SessionId::new(tag),
                )
            })
            .collect();
        let listed = listed_publishers(joined.clone());
        assert_eq!(listed.len(), MAX_PUBLISHERS);
        // A newer one, in whatever order the participants are kept.
        let late = SessionId::new(tag);
        joined.insert(0, (t0 + std::time::Duration::from_secs(60), late));
        let after = listed_publishers(joined.clone());
        assert_eq!(after, listed, "the same publishers, in the same order");
        // The first one leaves: the late one takes its place.
        joined.retain(|(_, s)| *s != listed[0]);
        let after = listed_publishers(joined);
        assert!(after.contains(&late));
        assert!(!after.contains(&listed[0]));
    }
}
