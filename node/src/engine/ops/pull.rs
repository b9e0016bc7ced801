//! Pulling with `tracks/new`: one new sendonly transceiver per found publication (or an existing
//! bidirectional one), offered by the SFU.

use std::time::Instant;

use str0m::media::{Direction, MediaKind, Mid};

use super::{RemoteTrack, SdpKind, SessionDesc, SimulcastView, TrackResult, TracksNewResult};
use crate::engine::publications::TrackKey;
use crate::engine::sdp::candidates_in_every_section;
use crate::engine::simulcast::Prefs;
use crate::engine::{Engine, OpError, TrackError};
use crate::ids::SessionId;

impl Engine {
    /// Pull: one new sendonly transceiver per found publication, offered by the SFU.
    pub(in crate::engine) fn pull(
        &mut self,
        sid: SessionId,
        tracks: Vec<RemoteTrack>,
        now: Instant,
    ) -> Result<TracksNewResult, OpError> {
        let app = self.sessions[&sid].app.clone();
        let mut results = Vec::new();
        // (result index, publication, kind) of the items that need a new transceiver.
        let mut wanted: Vec<(usize, TrackKey, MediaKind, Option<Prefs>)> = Vec::new();
        let mut into_existing: Vec<(usize, TrackKey, Mid, Option<Prefs>)> = Vec::new();
        for t in tracks {
            let mut r = TrackResult {
                location: None,
                session_id: t.session_id.clone(),
                track_name: t.track_name.clone(),
                simulcast: t.simulcast.map(|prefs| SimulcastView {
                    prefs,
                    current_rid: None,
                }),
                ..TrackResult::default()
            };
            let (Some(pub_session), Some(name)) =
                (t.session_id.as_deref(), t.track_name.as_deref())
            else {
                r.error = Some(TrackError::InvalidParams(
                    "sessionId and trackName are required to pull".into(),
                ));
                results.push(r);
                continue;
            };
            let Some((key, kind)) = self.find_publication(&app, pub_session, name) else {
                r.error = Some(TrackError::NotFound);
                results.push(r);
                continue;
            };
            if let Some(local) = t.mid.as_deref().and_then(|m| m.strip_prefix('#')) {
                let s = &self.sessions[&sid];
                match s.active_track_named(local).map(|e| e.mid) {
                    // Of the publication's kind, and carrying no pulled track yet (nor one an
                    // earlier item of this call puts there).
                    Some(mid)
                        if s.rtc.media(mid).is_some_and(|m| {
                            m.direction() == Direction::SendRecv && m.kind() == kind
                        }) && !s.remote_by_mid.contains_key(&mid)
                            && !into_existing.iter().any(|(_, _, m, _)| *m == mid) =>
                    {
                        into_existing.push((results.len(), key, mid, t.simulcast));
                    }
                    _ => {
                        r.error = Some(TrackError::InvalidParams(format!(
                            "#{local} is not a bidirectional local track of this session"
                        )));
                    }
                }
                results.push(r);
                continue;
            }
            wanted.push((results.len(), key, kind, t.simulcast));
            results.push(r);
        }

        let s = self
            .sessions
            .get_mut(&sid)
            .ok_or_else(|| OpError::Internal("session vanished".into()))?;
        let mut offer = None;
        if !wanted.is_empty() {
            let mut sdp = s.rtc.sdp_api();
            if s.renewed {
                // The client's answer comes from its new transport, with new credentials.
                sdp.ice_restart(true);
            }
            let mut mids = Vec::new();
            for (_, key, kind, _) in &wanted {
                // msid: the publisher's session as stream id, the track name as track id.
                mids.push(sdp.add_media(
                    *kind,
                    Direction::SendOnly,
                    Some(key.0.to_string()),
                    Some(key.1.clone()),
                    None,
                ));
            }
            if let Some((o, pending)) = sdp.apply() {
                s.pending = Some(pending);
                s.state = s.state.on_negotiated();
                offer = Some(SessionDesc {
                    kind: SdpKind::Offer,
                    sdp: s.offered(candidates_in_every_section(&o.to_sdp_string())),
                });
            }
            for ((i, key, _, prefs), mid) in wanted.into_iter().zip(mids) {
                results[i].mid = mid.to_string();
                self.subscribe(sid, mid, key, prefs, now);
            }
        }
        for (i, key, mid, prefs) in into_existing {
            results[i].mid = mid.to_string();
            self.subscribe(sid, mid, key, prefs, now);
            // The transceiver is already negotiated: media can start now.
            self.request_keyframes_for(sid, now);
        }
        Ok(TracksNewResult {
            requires_immediate_renegotiation: offer.is_some(),
            description: offer,
            tracks: results,
        })
    }
}
