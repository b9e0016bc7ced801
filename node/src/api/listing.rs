//! `GET /v1/apps/{app}/sessions`, an extension to Calls: the app's live sessions in the whole
//! cluster, with the tracks each published, so a client (the demo page's track picker, `/meet`)
//! can find what to pull without being handed ids. Authenticated with the app's bearer.
//!
//! The node asked gathers the other live nodes' parts with the cluster-wide view machinery of
//! the admin API (`ops::gather`), asking as a member on the client's behalf: the other node
//! checks the client's bearer and this node's credential, and answers with its own sessions only.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::ApiState;
use super::error::ApiError;
use super::node_auth::FORWARDED_BY;
use super::ops::{AskAs, Gathered, Listing, gather};
use super::wire::{AppSession, AppSessions, AppTrack};
use crate::engine::AppListing;

/// Most sessions one answer lists (the default, and the most `?limit=` may ask for).
pub const MAX_LISTED_SESSIONS: usize = 200;
/// Most published tracks listed per session (its newest ones).
pub const MAX_LISTED_TRACKS: usize = 64;

impl Listing for AppSessions {
    type Item = AppSession;
    fn items(self) -> (Vec<AppSession>, bool) {
        (self.sessions, self.truncated)
    }
}

/// `?limit=N`: 1 to [`MAX_LISTED_SESSIONS`]; absent means the most.
fn limit(query: Option<&str>) -> Result<usize, ApiError> {
    let Some(v) = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("limit="))
    else {
        return Ok(MAX_LISTED_SESSIONS);
    };
    match v.parse::<usize>() {
        Ok(n) if (1..=MAX_LISTED_SESSIONS).contains(&n) => Ok(n),
        _ => Err(ApiError::invalid_params(format!(
            "limit must be a number from 1 to {MAX_LISTED_SESSIONS}"
        ))),
    }
}

async fn local(st: &ApiState, app: String) -> Result<AppSessions, ApiError> {
    let per_worker = st
        .engine
        .call_all(move |e, _| e.app_listing(&app, MAX_LISTED_SESSIONS, MAX_LISTED_TRACKS))
        .await?;
    // The workers' listings in one, sorted and bounded as one engine's would be.
    let mut listing = crate::engine::AppListing::default();
    for l in per_worker {
        listing.truncated |= l.truncated;
        listing.sessions.extend(l.sessions);
    }
    listing.sessions.sort_by_key(|s| s.session_id);
    if listing.sessions.len() > MAX_LISTED_SESSIONS {
        listing.sessions.truncate(MAX_LISTED_SESSIONS);
        listing.truncated = true;
    }
    Ok(to_wire(listing))
}

fn to_wire(l: AppListing) -> AppSessions {
    AppSessions {
        truncated: l.truncated,
        unanswered_nodes: 0,
        sessions: l
            .sessions
            .into_iter()
            .map(|s| AppSession {
                session_id: s.session_id.to_string(),
                connected: s.connected,
                tracks: s
                    .published
                    .into_iter()
                    .map(|t| AppTrack {
                        track_name: t.track_name,
                        kind: t.kind.map(|k| {
                            if k == str0m::media::MediaKind::Audio {
                                "audio"
                            } else {
                                "video"
                            }
                            .to_string()
                        }),
                        status: if t.active { "active" } else { "inactive" }.to_string(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Sorts the gathered sessions by id and keeps the first `limit`.
fn cut(g: Gathered<AppSession>, limit: usize) -> AppSessions {
    let mut sessions = g.items;
    sessions.sort_by(|a, b| a.session_id.cmp(&b.session_id));
    let truncated = g.truncated || sessions.len() > limit;
    sessions.truncate(limit);
    AppSessions {
        sessions,
        truncated,
        unanswered_nodes: g.unanswered.len(),
    }
}

pub async fn app_sessions(
    State(st): State<Arc<ApiState>>,
    Path(app): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    if req.headers().contains_key(FORWARDED_BY) {
        // Another node gathering the listing: only this node's part, never asked on.
        super::cluster::check_forwarded(&st, req).await?;
        return Ok(Json(local(&st, app).await?).into_response());
    }
    st.apps.authorize(&app, req.headers())?;
    // One budget per app, in the per-session limiter: a page polling the listing costs every
    // node a request per poll.
    st.rate.check(&format!("apps/{app}/sessions"))?;
    let limit = limit(req.uri().query())?;
    let mine = local(&st, app.clone()).await?;
    let who = AskAs::Member {
        authorization: req.headers().get(header::AUTHORIZATION),
    };
    let path = format!("/v1/apps/{app}/sessions");
    let gathered = gather::<AppSessions>(&st, None, &path, mine.sessions, &who).await?;
    let mut out = cut(gathered, limit);
    out.truncated |= mine.truncated;
    Ok(Json(out).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_bounded_and_defaults_to_the_most() {
        assert_eq!(limit(None).ok(), Some(MAX_LISTED_SESSIONS));
        assert_eq!(limit(Some("node=a")).ok(), Some(MAX_LISTED_SESSIONS));
        assert_eq!(limit(Some("limit=3")).ok(), Some(3));
        assert_eq!(limit(Some("node=a&limit=1")).ok(), Some(1));
        for bad in ["limit=0", "limit=-1", "limit=x", "limit=", "limit=201"] {
            assert!(limit(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn gathered_sessions_are_sorted_and_cut_at_the_limit() {
        let s = |id: &str| AppSession {
            session_id: id.into(),
            connected: true,
            tracks: Vec::new(),
        };
        let g = Gathered {
            items: vec![s("c"), s("a"), s("b")],
            truncated: false,
            unanswered: Vec::new(),
        };
        let out = cut(g, 2);
        let ids: Vec<&str> = out.sessions.iter().map(|s| s.session_id.as_str()).collect();
        assert_eq!((ids, out.truncated), (vec!["a", "b"], true));
        let whole = cut(
            Gathered {
                items: vec![s("a")],
                truncated: false,
                unanswered: Vec::new(),
            },
            2,
        );
        assert!(!whole.truncated);
        let cut_elsewhere = cut(
            Gathered {
                items: vec![s("a")],
                truncated: true,
                unanswered: vec!["b".into()],
            },
            2,
        );
        assert!(cut_elsewhere.truncated, "another node's cut shows");
        assert_eq!(cut_elsewhere.unanswered_nodes, 1, "a silent node shows");
        assert_eq!(whole.unanswered_nodes, 0);
    }
}
