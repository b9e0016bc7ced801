//! Streams across the cluster, on the API's side: a task that announces this node's streams in
//! gossip and makes this node's streams follow the publisher the cluster agrees on, and the
//! lookups WHIP/WHEP make before they answer. The decisions are the engine's
//! (`engine/ops/stream_cluster.rs`) and gossip's (`cluster/streams.rs`: one winner per name); this
//! is the shell that pulls the winner's tracks over the relay first.

use std::sync::Arc;
use std::time::Duration;

use super::ApiState;
use super::problem::Problem;
use crate::cluster::streams::StreamAnnounce;
use crate::ids::SessionId;

/// How often streams are announced and followed: a new publisher reaches viewers on other nodes
/// within about this plus a gossip round.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// Every this many rounds (5 s), the stream table drops streams gone from their worker.
const PRUNE_EVERY_ROUNDS: u32 = 10;

/// The publisher of `app`/`stream` that the cluster agrees on, when it is on another live node:
/// that node's id and the announce.
fn remote_announce(st: &ApiState, app: &str, stream: &str) -> Option<(String, StreamAnnounce)> {
    let view = st.cluster.view.borrow().clone();
    let (member, a) = view.stream(app, stream)?;
    (member.node_id != st.cluster.self_id).then(|| (member.node_id.clone(), a.clone()))
}

/// [`remote_announce`] as the node's id and the publisher's session and tracks.
pub fn remote_publisher(
    st: &ApiState,
    app: &str,
    stream: &str,
) -> Option<(String, (SessionId, Vec<String>))> {
    remote_announce(st, app, stream).map(|(node, a)| (node, (a.session, a.tracks)))
}

/// Pulls the winner's tracks here (over the relay), then has the engine follow it
/// ([`crate::engine::Engine::stream_follow`] says what `create` and `replace_local` do).
pub async fn follow(
    st: &ApiState,
    app: &str,
    stream: &str,
    winner: Option<(SessionId, Vec<String>)>,
    create: bool,
    replace_local: bool,
) -> Result<(), Problem> {
    // The stream's worker: placed now when this may create it, else where it is (none: no
    // stream to follow).
    let slot = if create {
        st.engine.stream_slot(app, stream).await?
    } else {
        match st.engine.find_stream(app, stream) {
            Some(s) => s,
            None => return Ok(()),
        }
    };
    if let Some((session, tracks)) = &winner {
        // Relayed onto the primary, then linked to the stream's worker.
        super::cluster::resolve_remote(
            st,
            app,
            slot.worker(),
            tracks.iter().map(|t| (*session, t.clone())),
        )
        .await;
    }
    let (a, s) = (app.to_string(), stream.to_string());
    st.engine
        .call_on(slot.worker(), move |e, now| {
            e.stream_follow(&a, &s, winner, create, replace_local, now)
        })
        .await?;
    Ok(())
}

/// Every [`FOLLOW_EVERY`]: this node's published streams go into gossip, and each stream here
/// follows the cluster's publisher of its name (a viewer that came first starts playing when a
/// publisher starts on any node; a publisher that lost a race is ended; viewers move to the
/// winner). Ends when the engine stops.
pub async fn run(st: Arc<ApiState>) {
    let mut tick = tokio::time::interval(FOLLOW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds: u32 = 0;
    loop {
        tick.tick().await;
        rounds = rounds.wrapping_add(1);
        // Streams that ended on their worker leave the node's stream table now and then.
        if rounds.is_multiple_of(PRUNE_EVERY_ROUNDS) && st.engine.prune_streams().await.is_err() {
            return;
        }
        // Each stream lives on one worker: every worker's, together.
        let Ok(per_worker) = st
            .engine
            .call_all(|e, _| (e.stream_announces(), e.streams_to_follow()))
            .await
        else {
            return;
        };
        let (mut announces, mut streams) = (Vec::new(), Vec::new());
        for (a, f) in per_worker {
            announces.extend(a);
            streams.extend(f);
        }
        st.ops.local.streams.replace_all(&announces);
        for f in streams {
            // Our own announce may not be in the view yet: a local publisher is compared with
            // the remote one here, so an older local publisher is never ended for a newer one.
            let winner = remote_announce(&st, &f.app, &f.name)
                .filter(|(_, remote)| {
                    !announces.iter().any(|ours| {
                        ours.app == f.app && ours.name == f.name && ours.wins_over(remote)
                    })
                })
                .map(|(_, a)| (a.session, a.tracks));
            let follow_it = match (&winner, f.publisher) {
                // Another node's publisher, already followed: keep its tracks here while viewers
                // watch (a relayed track that ended is pulled again).
                (Some((w, _)), Some(current)) if current == *w => f.has_viewers,
                // A new one: take it if viewers here want it, and end a local publisher that
                // lost the race even when nobody watches here.
                (Some(_), _) => f.has_viewers || f.publisher_is_local,
                // No publisher elsewhere: drop a remote one that went away.
                (None, Some(_)) => !f.publisher_is_local,
                (None, None) => false,
            };
            if follow_it
                && follow(&st, &f.app, &f.name, winner, false, true)
                    .await
                    .is_err()
            {
                return;
            }
        }
    }
}
