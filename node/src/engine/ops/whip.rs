//! WHIP publish and WHEP play: a new session per request, answered at once. A WHIP session
//! publishes every section the client sends on (named after the kind, like `autoDiscover`); a
//! WHEP session's receiving sections get the stream's publications, now or when a publisher
//! comes. Both are ordinary sessions: Calls can pull a WHIP session's tracks.

use std::time::{Instant, SystemTime};

use str0m::media::{MediaKind, Mid};

use super::{MAX_TRACKS_PER_CALL, SessionDesc, answer_desc};
use crate::engine::streams::{CreateRefused, valid_stream_name};
use crate::engine::{ClientOffer, Engine, OpError};
use crate::ids::SessionId;

/// How a stream request may treat a stream that does not exist yet, and its viewer cap.
#[derive(Debug, Clone, Copy)]
pub struct StreamPolicy {
    /// Create the stream when it does not exist (otherwise: not found).
    pub auto_create: bool,
    /// Most viewers one stream may have on this node.
    pub max_viewers: usize,
}

/// A WHIP or WHEP session just created.
#[derive(Debug, Clone)]
pub struct StreamSessionCreated {
    /// The session (its URL is built from it).
    pub session_id: SessionId,
    /// The SFU's answer, with its candidates in every section.
    pub answer: SessionDesc,
    /// The ETag of its ICE session.
    pub etag: String,
    /// WHIP: the track names published; WHEP: the mids that receive.
    pub tracks: Vec<String>,
}

impl Engine {
    /// Checks the stream name and finds or creates the stream.
    fn open_stream(&mut self, app: &str, stream: &str, auto_create: bool) -> Result<(), OpError> {
        if !valid_stream_name(stream) {
            return Err(OpError::Decoding(format!(
                "a stream name is 1 to {} characters of A-Z a-z 0-9 . _ - ~",
                crate::engine::streams::MAX_STREAM_NAME_BYTES
            )));
        }
        if self.streams.get(app, stream).is_some() {
            return Ok(());
        }
        if !auto_create {
            return Err(OpError::NotFound(format!(
                "stream {stream} does not exist (auto-create is off)"
            )));
        }
        match self.streams.create(app, stream, false, SystemTime::now()) {
            Ok(_) => Ok(()),
            Err(CreateRefused::Full) => Err(OpError::Unavailable(
                "this node holds its maximum number of streams".into(),
            )),
        }
    }

    /// WHIP `POST`: a new session publishing every section the offer sends on, as the
    /// stream's publisher.
    pub fn whip_publish(
        &mut self,
        app: &str,
        stream: &str,
        offer: ClientOffer,
        policy: StreamPolicy,
        now: Instant,
    ) -> Result<StreamSessionCreated, OpError> {
        let ClientOffer {
            sections,
            parsed,
            ice_ufrag,
            ..
        } = offer;
        let parsed = parsed?;
        let sending: Vec<String> = sections
            .iter()
            .filter(|m| m.client_sends && !m.rejected && !m.mid.is_empty())
            .map(|m| m.mid.clone())
            .collect();
        if sending.is_empty() {
            return Err(OpError::Decoding(
                "the offer sends no audio or video to publish".into(),
            ));
        }
        if sending.len() > MAX_TRACKS_PER_CALL {
            return Err(OpError::Decoding(format!(
                "at most {MAX_TRACKS_PER_CALL} sections per stream"
            )));
        }
        if let Some(s) = self.streams.get(app, stream)
            && s.publisher.is_some()
        {
            return Err(OpError::Conflict(format!(
                "stream {stream} already has a publisher"
            )));
        }
        self.open_stream(app, stream, policy.auto_create)?;
        self.in_new_session(
            app,
            stream,
            ice_ufrag,
            "WHIP offer refused",
            now,
            |e, sid| e.whip_accept(sid, app, stream, parsed, sending, now),
        )
    }

    /// Runs `accept` on a new session of the stream's app: a refused offer closes the session
    /// (with `refused` as the reason) and drops an auto-created stream it left empty.
    fn in_new_session(
        &mut self,
        app: &str,
        stream: &str,
        ice_ufrag: Option<String>,
        refused: &str,
        now: Instant,
        accept: impl FnOnce(&mut Engine, SessionId) -> Result<StreamSessionCreated, OpError>,
    ) -> Result<StreamSessionCreated, OpError> {
        let result = self.create_session(app, None, now).and_then(|(sid, _)| {
            let r = accept(self, sid);
            if r.is_err() {
                self.close_session(sid, now, refused);
            }
            self.streams.set_remote_ufrag(sid, ice_ufrag);
            self.drain(sid, now);
            r
        });
        if result.is_err() {
            self.streams.drop_if_unused(app, stream);
        }
        self.process_work(now);
        result
    }

    fn whip_accept(
        &mut self,
        sid: SessionId,
        app: &str,
        stream: &str,
        offer: str0m::change::SdpOffer,
        sending: Vec<String>,
        now: Instant,
    ) -> Result<StreamSessionCreated, OpError> {
        let s = self
            .sessions
            .get_mut(&sid)
            .ok_or_else(|| OpError::Internal("session vanished".into()))?;
        let answer = s.accept_offer(offer)?;
        s.state = s.state.on_negotiated();
        let mut names = Vec::new();
        for mid_str in sending {
            let mid = Mid::from(mid_str.as_str());
            let Some(kind) = self.sessions[&sid]
                .rtc
                .media(mid)
                .filter(|m| m.direction().is_receiving() && !m.remote_pts().is_empty())
                .map(|m| m.kind())
            else {
                continue;
            };
            let name = track_name_for(kind, &names);
            if self.publish(sid, mid, &name, now).is_ok() {
                names.push(name);
            }
        }
        if names.is_empty() {
            return Err(OpError::Unprocessable(
                "no offered section has a codec in common with the SFU (Opus, VP8, VP9, H264, AV1)"
                    .into(),
            ));
        }
        if !self
            .streams
            .set_publisher(app, stream, sid, names.clone(), true)
        {
            return Err(OpError::Conflict(format!(
                "stream {stream} already has a publisher"
            )));
        }
        self.attach_viewers(app, stream, now);
        let etag = self.etag_of(sid)?;
        Ok(StreamSessionCreated {
            session_id: sid,
            answer: answer_desc(answer),
            etag,
            tracks: names,
        })
    }

    /// WHEP `POST`: a new session whose receiving sections play the stream.
    pub fn whep_play(
        &mut self,
        app: &str,
        stream: &str,
        offer: ClientOffer,
        policy: StreamPolicy,
        now: Instant,
    ) -> Result<StreamSessionCreated, OpError> {
        let ClientOffer {
            sections,
            parsed,
            ice_ufrag,
            ..
        } = offer;
        let parsed = parsed?;
        let live: Vec<_> = sections.iter().filter(|m| !m.rejected).collect();
        let offered: Vec<Mid> = live.iter().map(|m| Mid::from(m.mid.as_str())).collect();
        if live.is_empty() {
            return Err(OpError::Decoding(
                "the offer has no audio or video section to play into".into(),
            ));
        }
        if live.len() > MAX_TRACKS_PER_CALL {
            return Err(OpError::Decoding(format!(
                "at most {MAX_TRACKS_PER_CALL} sections per viewer"
            )));
        }
        if let Some(m) = live.iter().find(|m| m.client_sends) {
            return Err(OpError::Decoding(format!(
                "WHEP plays a stream: section {} must be recvonly, not send",
                m.mid
            )));
        }
        if let Some(s) = self.streams.get(app, stream)
            && s.viewers.len() >= policy.max_viewers
        {
            return Err(OpError::Unavailable(format!(
                "stream {stream} has its maximum of {} viewers on this node",
                policy.max_viewers
            )));
        }
        self.open_stream(app, stream, policy.auto_create)?;
        self.in_new_session(
            app,
            stream,
            ice_ufrag,
            "WHEP offer refused",
            now,
            |e, sid| e.whep_accept(sid, app, stream, parsed, offered, now),
        )
    }

    fn whep_accept(
        &mut self,
        sid: SessionId,
        app: &str,
        stream: &str,
        offer: str0m::change::SdpOffer,
        offered: Vec<Mid>,
        now: Instant,
    ) -> Result<StreamSessionCreated, OpError> {
        let s = self
            .sessions
            .get_mut(&sid)
            .ok_or_else(|| OpError::Internal("session vanished".into()))?;
        let answer = s.accept_offer(offer)?;
        s.state = s.state.on_negotiated();
        let mids: Vec<(Mid, MediaKind)> = offered
            .into_iter()
            .filter_map(|mid| {
                let m = s.rtc.media(mid)?;
                (m.direction().is_sending() && !m.remote_pts().is_empty())
                    .then_some((mid, m.kind()))
            })
            .collect();
        if mids.is_empty() {
            return Err(OpError::Unprocessable(
                "no offered section has a codec in common with the SFU (Opus, VP8, VP9, H264, AV1)"
                    .into(),
            ));
        }
        let names = mids.iter().map(|(m, _)| m.to_string()).collect();
        if !self.streams.add_viewer(app, stream, sid, mids, true) {
            return Err(OpError::Internal("stream vanished".into()));
        }
        self.attach_viewer(sid, now);
        let etag = self.etag_of(sid)?;
        Ok(StreamSessionCreated {
            session_id: sid,
            answer: answer_desc(answer),
            etag,
            tracks: names,
        })
    }

    fn etag_of(&self, sid: SessionId) -> Result<String, OpError> {
        self.streams
            .session(sid)
            .map(|m| m.etag.clone())
            .ok_or_else(|| OpError::Internal("stream session vanished".into()))
    }
}

/// `audio`, `video`, then `audio-2`, `video-2`, ... for further sections of a kind.
pub(super) fn track_name_for(kind: MediaKind, taken: &[String]) -> String {
    let base = match kind {
        MediaKind::Audio => "audio",
        MediaKind::Video => "video",
    };
    if !taken.iter().any(|t| t == base) {
        return base.to_string();
    }
    (2..)
        .map(|i| format!("{base}-{i}"))
        .find(|n| !taken.contains(n))
        .unwrap_or_else(|| base.to_string())
}
