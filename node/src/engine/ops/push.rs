//! Publishing with `tracks/new`: with the client's offer (listed or discovered mids), or with an
//! offer the SFU writes.

use std::collections::HashSet;
use std::time::Instant;

use str0m::media::{Direction, Mid};

use super::{LocalTrack, SdpKind, SessionDesc, TrackResult, TracksNewResult, answer_desc};
use crate::engine::publications::{Publication, Source};
use crate::engine::sdp::candidates_in_every_section;
use crate::engine::session::{Location, TrackEntry};
use crate::engine::transport::OfferTransport;
use crate::engine::{ClientOffer, Engine, OpError, TrackError};
use crate::ids::{SessionId, random_hex};

impl Engine {
    /// Push with the client's offer: accept it, publish the listed (or discovered) mids.
    pub(in crate::engine) fn push_with_offer(
        &mut self,
        sid: SessionId,
        offer: ClientOffer,
        tracks: Vec<LocalTrack>,
        auto_discover: bool,
        now: Instant,
    ) -> Result<TracksNewResult, OpError> {
        let transport = OfferTransport::of(&offer);
        let ClientOffer {
            sections: offered,
            parsed,
            ..
        } = offer;
        let offer = parsed?;
        let answer = self.accept_client_offer(sid, offer, transport, now)?;
        if let Some(s) = self.sessions.get_mut(&sid) {
            s.state = s.state.on_negotiated();
        }

        let mut results = Vec::new();
        for t in tracks {
            let Some(mid_str) = t.mid.filter(|m| !m.is_empty()) else {
                results.push(TrackResult {
                    location: Some(Location::Local),
                    track_name: t.track_name,
                    error: Some(TrackError::InvalidParams(
                        "mid is required when pushing with an offer".into(),
                    )),
                    ..TrackResult::default()
                });
                continue;
            };
            let Some(name) = t.track_name.filter(|n| !n.is_empty()) else {
                results.push(TrackResult {
                    location: Some(Location::Local),
                    mid: mid_str,
                    error: Some(TrackError::InvalidParams("trackName is required".into())),
                    ..TrackResult::default()
                });
                continue;
            };
            let mid = Mid::from(mid_str.as_str());
            let outcome = self.publish(sid, mid, &name, now);
            results.push(TrackResult {
                location: Some(Location::Local),
                track_name: Some(name),
                mid: if outcome.is_ok() {
                    mid_str
                } else {
                    String::new()
                },
                error: outcome.err(),
                ..TrackResult::default()
            });
        }
        if auto_discover {
            // Every m-section the client sends on that carries no track yet gets a name.
            let sending = offered
                .into_iter()
                .filter(|m| m.client_sends && !m.rejected && !m.mid.is_empty());
            for m in sending {
                let mid = Mid::from(m.mid.as_str());
                let known = self.sessions.get(&sid).is_some_and(|s| {
                    s.local_by_mid.contains_key(&mid)
                        || s.remote_by_mid.contains_key(&mid)
                        || s.tracks.iter().any(|t| t.mid == mid && !t.closed)
                });
                if known {
                    continue;
                }
                let name = random_hex(16);
                let outcome = self.publish(sid, mid, &name, now);
                results.push(TrackResult {
                    location: Some(Location::Local),
                    track_name: Some(name),
                    mid: if outcome.is_ok() {
                        mid.to_string()
                    } else {
                        String::new()
                    },
                    error: outcome.err(),
                    ..TrackResult::default()
                });
            }
        }
        Ok(TracksNewResult {
            requires_immediate_renegotiation: false,
            description: Some(answer_desc(answer)),
            tracks: results,
        })
    }

    /// Push without an offer: the SFU adds transceivers and offers them (Calls requires `kind`;
    /// `bidirectionalMediaStream` makes them sendrecv so they can also carry a pulled track).
    pub(in crate::engine) fn push_sfu_offer(
        &mut self,
        sid: SessionId,
        tracks: Vec<LocalTrack>,
        now: Instant,
    ) -> Result<TracksNewResult, OpError> {
        if tracks.is_empty() {
            return Err(OpError::InvalidParams(
                "no tracks and no sessionDescription".into(),
            ));
        }
        let s = self
            .sessions
            .get_mut(&sid)
            .ok_or_else(|| OpError::Internal("session vanished".into()))?;
        let app = s.app.clone();
        let mut results = Vec::new();
        // Names published here already, and those this call takes: a name is one publication
        // (a second would replace the first, dropping its subscribers).
        let mut taken: HashSet<String> = s
            .tracks
            .iter()
            .filter(|t| t.location == Location::Local && !t.closed)
            .map(|t| t.track_name.clone())
            .collect();
        let mut sdp = s.rtc.sdp_api();
        if s.renewed {
            // The client's answer comes from its new transport, with new credentials.
            sdp.ice_restart(true);
        }
        let mut added = Vec::new();
        for t in tracks {
            let name = t.track_name.filter(|n| !n.is_empty());
            match (name, t.kind) {
                (Some(name), Some(_)) if taken.contains(&name) => results.push(TrackResult {
                    location: Some(Location::Local),
                    error: Some(TrackError::AlreadyPublished(format!(
                        "track {name} is already published"
                    ))),
                    track_name: Some(name),
                    ..TrackResult::default()
                }),
                (Some(name), Some(kind)) => {
                    taken.insert(name.clone());
                    let dir = if t.bidirectional {
                        Direction::SendRecv
                    } else {
                        Direction::RecvOnly
                    };
                    let mid = sdp.add_media(kind, dir, None, None, None);
                    added.push((mid, name.clone(), kind));
                    results.push(TrackResult {
                        location: Some(Location::Local),
                        track_name: Some(name),
                        mid: mid.to_string(),
                        ..TrackResult::default()
                    });
                }
                (name, _) => results.push(TrackResult {
                    location: Some(Location::Local),
                    track_name: name,
                    error: Some(TrackError::InvalidParams(
                        "trackName and kind are required when the SFU writes the offer".into(),
                    )),
                    ..TrackResult::default()
                }),
            }
        }
        let Some((offer, pending)) = sdp.apply() else {
            return Ok(TracksNewResult {
                requires_immediate_renegotiation: false,
                description: None,
                tracks: results,
            });
        };
        s.pending = Some(pending);
        s.state = s.state.on_negotiated();
        let offer = s.offered(candidates_in_every_section(&offer.to_sdp_string()));
        for (mid, name, kind) in added {
            s.push_track(TrackEntry {
                location: Location::Local,
                mid,
                track_name: name.clone(),
                remote: None,
                closed: false,
            });
            s.local_by_mid.insert(mid, name.clone());
            self.publications.insert(
                (sid, name),
                Publication::new(&app, Source::Session(mid), kind, None, now),
            );
        }
        Ok(TracksNewResult {
            requires_immediate_renegotiation: true,
            description: Some(SessionDesc {
                kind: SdpKind::Offer,
                sdp: offer,
            }),
            tracks: results,
        })
    }
}
