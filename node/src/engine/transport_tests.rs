//! Sessions across transport changes (`transport.rs`), in the in-memory world: an ICE restart
//! mid-call, a client that moves address, and a new DTLS transport from the same client.

use std::time::Duration;

use str0m::change::{SdpOffer, SdpPendingOffer};
use str0m::media::{MediaKind, Mid};

use super::*;
use crate::testing::{APP, World};

/// A publisher (`mic` + `cam`) and a subscriber pulling both, media flowing. Returns the world,
/// the publisher's client and session, the subscriber's client and session, and the pulled mids.
fn call() -> (World, usize, String, usize, String, Vec<String>) {
    let mut w = World::new(Duration::from_secs(30));
    let p = w.client();
    let p_sid = w.session();
    let (a, v) = w.push(p, &p_sid);
    w.senders.push((p, a, v));
    let s = w.client();
    let s_sid = w.session();
    let res = w.pull(s, &s_sid, &[(&p_sid, "mic"), (&p_sid, "cam")]);
    let mids: Vec<String> = res.tracks.iter().map(|t| t.mid.clone()).collect();
    w.run(Duration::from_millis(1000));
    assert!(w.clients[s].frames(&mids[1]) > 10, "media flows before");
    (w, p, p_sid, s, s_sid, mids)
}

/// Client `c`'s offer with new ICE credentials (nothing else changes).
fn restart_offer(w: &mut World, c: usize) -> (SdpOffer, SdpPendingOffer) {
    let mut api = w.clients[c].rtc().sdp_api();
    api.ice_restart(true);
    api.apply().expect("an ICE restart makes an offer")
}

fn session_ufrag(w: &World, sid: &str) -> String {
    let id = crate::ids::SessionId::parse(sid).expect("session id");
    w.engine.sessions[&id].ufrag.clone()
}

/// Frames each of `mids` receives on client `c` while the world runs for `dur`.
fn frames_during(w: &mut World, c: usize, mids: &[String], dur: Duration) -> Vec<u64> {
    let before: Vec<u64> = mids.iter().map(|m| w.clients[c].frames(m)).collect();
    w.run(dur);
    mids.iter()
        .zip(before)
        .map(|(m, b)| w.clients[c].frames(m) - b)
        .collect()
}

#[test]
fn an_ice_restart_mid_call_keeps_media_flowing_with_the_same_tracks() {
    let (mut w, p, p_sid, s, s_sid, mids) = call();
    let tracks_before = (w.statuses(&p_sid), w.statuses(&s_sid));
    for (c, sid) in [(s, s_sid.clone()), (p, p_sid.clone())] {
        let old = session_ufrag(&w, &sid);
        let (offer, pending) = restart_offer(&mut w, c);
        let answer = w.offer_only(c, &sid, offer, pending);
        let new = session_ufrag(&w, &sid);
        assert_ne!(old, new, "the node takes new ICE credentials");
        assert!(
            answer.contains(&format!("a=ice-ufrag:{new}")),
            "the answer carries them: {answer}"
        );
        let got = frames_during(&mut w, s, &mids, Duration::from_millis(1500));
        assert!(
            got.iter().all(|n| *n > 20),
            "frames per pulled track after restarting session {sid}: {got:?}"
        );
    }
    assert_eq!(
        (w.statuses(&p_sid), w.statuses(&s_sid)),
        tracks_before,
        "the same tracks, all still active"
    );
    assert!(
        w.clients[s].stats().errors.is_empty(),
        "{:?}",
        w.clients[s].stats().errors
    );
}

#[test]
fn a_client_whose_address_changes_recovers_through_ice_restart_with_its_pulls() {
    let (mut w, _p, _p_sid, s, s_sid, mids) = call();
    w.move_client(s, 45_000);
    let (offer, pending) = restart_offer(&mut w, s);
    w.offer_only(s, &s_sid, offer, pending);
    // What the node sent the old address is lost; the restart brings the pulls to the new one.
    let got = frames_during(&mut w, s, &mids, Duration::from_millis(2000));
    assert!(
        got.iter().all(|n| *n > 20),
        "frames per pulled track: {got:?}"
    );
    assert!(
        w.statuses(&s_sid).iter().all(|(_, _, active)| *active),
        "{:?}",
        w.statuses(&s_sid)
    );
}

#[test]
fn a_new_dtls_transport_after_closing_every_track_keeps_the_session() {
    // partytracks' bulk close then Chromium's new transport: the client stops every
    // transceiver, then offers new ones with a new ICE agent and DTLS certificate.
    let (mut w, p, p_sid, s, s_sid, pulled) = call();
    let pushed = w.push_tracks(
        s,
        &s_sid,
        &[(MediaKind::Audio, "s-mic"), (MediaKind::Video, "s-cam")],
    );
    let mut all: Vec<Mid> = pulled.iter().map(|m| Mid::from(m.as_str())).collect();
    all.extend(pushed.iter().copied());
    let (offer, pending) = {
        let mut api = w.clients[s].rtc().sdp_api();
        for m in &all {
            api.stop_media(*m);
        }
        api.apply().expect("a close offer")
    };
    let names: Vec<String> = all.iter().map(|m| m.to_string()).collect();
    let closed = w
        .engine
        .tracks_close(
            APP,
            &s_sid,
            names.clone(),
            false,
            Some(ClientOffer::parse_closing(
                &offer.to_sdp_string(),
                &names,
                crate::engine::Twcc::Everywhere,
            )),
            w.now,
        )
        .expect("bulk close");
    assert!(closed.tracks.iter().all(|t| t.error.is_none()));
    let answer = closed.description.expect("an answer");
    w.accept_answer(s, pending, &answer.sdp);
    w.run(Duration::from_millis(100));

    w.renew_client(s);
    // Pushes and pulls on the same session id work at once: no 410.
    let pushed = w.push_tracks(
        s,
        &s_sid,
        &[(MediaKind::Audio, "s-mic2"), (MediaKind::Video, "s-cam2")],
    );
    w.senders.push((s, pushed[0], pushed[1]));
    let res = w.pull(s, &s_sid, &[(&p_sid, "mic"), (&p_sid, "cam")]);
    assert!(
        res.tracks.iter().all(|t| t.error.is_none()),
        "{:?}",
        res.tracks
    );
    let pulled: Vec<String> = res.tracks.iter().map(|t| t.mid.clone()).collect();
    let viewer = w.client();
    let v_sid = w.session();
    let res = w.pull(viewer, &v_sid, &[(&s_sid, "s-mic2"), (&s_sid, "s-cam2")]);
    let viewed: Vec<String> = res.tracks.iter().map(|t| t.mid.clone()).collect();
    w.run(Duration::from_millis(1500));

    assert!(w.clients[s].connected(), "the new transport connects");
    let got: Vec<u64> = pulled.iter().map(|m| w.clients[s].frames(m)).collect();
    assert!(
        got.iter().all(|n| *n > 20),
        "pulled after the new transport: {got:?}"
    );
    let got: Vec<u64> = viewed.iter().map(|m| w.clients[viewer].frames(m)).collect();
    assert!(
        got.iter().all(|n| *n > 20),
        "pushed after the new transport: {got:?}"
    );
    let active: Vec<String> = w
        .statuses(&s_sid)
        .into_iter()
        .filter(|(_, _, active)| *active)
        .map(|(name, _, _)| name)
        .collect();
    assert_eq!(active, ["s-mic2", "s-cam2", "mic", "cam"]);
    let _ = p;
}

#[test]
fn a_new_dtls_transport_ends_the_tracks_it_does_not_carry() {
    let (mut w, _p, _p_sid, s, s_sid, _pulled) = call();
    w.push_tracks(s, &s_sid, &[(MediaKind::Audio, "old")]);
    w.run(Duration::from_millis(200));
    w.renew_client(s);
    w.push_tracks(s, &s_sid, &[(MediaKind::Audio, "new")]);
    let statuses = w.statuses(&s_sid);
    let active: Vec<&str> = statuses
        .iter()
        .filter(|(_, _, active)| *active)
        .map(|(name, _, _)| name.as_str())
        .collect();
    assert_eq!(active, ["new"], "{statuses:?}");
    let viewer = w.client();
    let v_sid = w.session();
    let res = w
        .engine
        .tracks_new(
            APP,
            &v_sid,
            TracksNew::Remote {
                tracks: vec![RemoteTrack {
                    session_id: Some(s_sid.clone()),
                    track_name: Some("old".into()),
                    mid: None,
                    simulcast: None,
                }],
            },
            w.now,
        )
        .expect("pull");
    assert_eq!(res.tracks[0].error, Some(TrackError::NotFound));
    let _ = viewer;
}

#[test]
fn an_offer_with_a_new_transport_does_not_wait_for_the_lost_connection() {
    let (mut w, _p, _p_sid, s, s_sid, _mids) = call();
    // The client goes silent (its network is gone) until the node sees it disconnected.
    w.loss_from.insert(s, 1);
    w.loss_to.insert(s, 1);
    let mut waited = 0;
    while !w
        .engine
        .must_wait_for_connection(APP, &s_sid, None)
        .expect("live")
    {
        assert!(waited < 60, "the node never saw the client disconnected");
        w.run(Duration::from_millis(500));
        waited += 1;
    }
    let (offer, pending) = restart_offer(&mut w, s);
    let parsed = ClientOffer::parse(&offer.to_sdp_string());
    assert!(
        !w.engine
            .must_wait_for_connection(
                APP,
                &s_sid,
                Some((parsed.ice_ufrag.clone(), parsed.fingerprint.clone()))
            )
            .expect("live"),
        "an ICE restart is how it reconnects: no wait (which would end in 410)"
    );
    w.loss_from.clear();
    w.loss_to.clear();
    w.offer_only(s, &s_sid, offer, pending);
    w.run(Duration::from_millis(1000));
    assert!(
        !w.engine
            .must_wait_for_connection(APP, &s_sid, None)
            .expect("live")
    );
}

#[test]
fn chromiums_new_transport_is_told_by_new_credentials_on_sections_all_new() {
    // Chromium keeps its certificate (same fingerprint) but, once every transceiver of the
    // BUNDLE is stopped, its next offer has new ICE credentials and only new sections.
    let (w, _p, _p_sid, _s, s_sid, mids) = call();
    let id = crate::ids::SessionId::parse(&s_sid).expect("session id");
    let session = &w.engine.sessions[&id];
    let offer = |ufrag: &str, live: &[&str]| transport::OfferTransport {
        ice_ufrag: Some(ufrag.into()),
        fingerprint: session.remote_fingerprint.clone(),
        live_mids: live.iter().map(|m| Mid::from(*m)).collect(),
        text: None,
        data_section: false,
    };
    let old_ufrag = session.remote_ufrag.clone().expect("negotiated");
    assert!(
        w.engine
            .is_new_transport(id, &offer("fresh", &["n1", "n2"]))
    );
    assert!(
        !w.engine
            .is_new_transport(id, &offer("fresh", &[&mids[0], "n1"])),
        "a section carried over: an ICE restart on the same transport"
    );
    assert!(
        !w.engine.is_new_transport(id, &offer(&old_ufrag, &["n1"])),
        "same credentials: a plain renegotiation"
    );
}

/// Client `c` closes its PeerConnection's transport (DTLS close_notify), as Chromium does once
/// every section of its BUNDLE is stopped.
fn close_transport(w: &mut World, c: usize) {
    w.clients[c].rtc().close().expect("close");
    w.pump_client(c);
    w.step([c], Duration::from_millis(10));
}

#[test]
fn a_client_that_closes_its_transport_after_closing_every_track_keeps_its_session() {
    let (mut w, _p, p_sid, s, s_sid, pulled) = call();
    w.engine
        .tracks_close(APP, &s_sid, pulled.clone(), true, None, w.now)
        .expect("close");
    close_transport(&mut w, s);
    w.run(Duration::from_millis(500));
    assert!(
        w.engine.session_tracks(APP, &s_sid).is_ok(),
        "the session waits for the client's next transport"
    );
    w.renew_client(s);
    let res = w.pull(s, &s_sid, &[(&p_sid, "mic"), (&p_sid, "cam")]);
    let mids: Vec<String> = res.tracks.iter().map(|t| t.mid.clone()).collect();
    w.run(Duration::from_millis(1500));
    let got: Vec<u64> = mids.iter().map(|m| w.clients[s].frames(m)).collect();
    assert!(
        got.iter().all(|n| *n > 20),
        "pulled on the new transport: {got:?}"
    );
}

#[test]
fn a_client_that_closes_its_transport_with_tracks_active_has_hung_up() {
    let (mut w, _p, _p_sid, s, s_sid, _pulled) = call();
    close_transport(&mut w, s);
    w.run(Duration::from_millis(500));
    assert!(
        matches!(w.engine.session_tracks(APP, &s_sid), Err(OpError::Gone(_))),
        "410 once the client hung up"
    );
}

#[test]
fn a_session_whose_client_brings_no_new_transport_ends_after_the_reconnect_grace() {
    let (mut w, _p, _p_sid, s, s_sid, pulled) = call();
    w.engine
        .tracks_close(APP, &s_sid, pulled, true, None, w.now)
        .expect("close");
    close_transport(&mut w, s);
    let grace = w.engine.config().reconnect_grace;
    w.step([], grace / 2);
    assert!(
        w.engine.session_tracks(APP, &s_sid).is_ok(),
        "within the grace"
    );
    w.step([], grace);
    w.step([], Duration::from_secs(1));
    assert!(matches!(
        w.engine.session_tracks(APP, &s_sid),
        Err(OpError::Gone(_))
    ));
}

#[test]
fn a_new_transport_that_keeps_pulled_video_waits_for_a_keyframe_on_it() {
    let (mut w, _p, _p_sid, s, s_sid, mids) = call();
    let id = crate::ids::SessionId::parse(&s_sid).expect("session id");
    let (mic, cam) = (Mid::from(mids[0].as_str()), Mid::from(mids[1].as_str()));
    assert!(w.engine.sessions[&id].awaiting_keyframe.is_empty());
    // The same sections over a new DTLS certificate (the fingerprint of another client's).
    let other = w.client();
    let new_fp = w.clients[other]
        .rtc()
        .direct_api()
        .local_dtls_fingerprint()
        .to_string();
    let old_fp = w.clients[s]
        .rtc()
        .direct_api()
        .local_dtls_fingerprint()
        .to_string();
    let (offer, _pending) = restart_offer(&mut w, s);
    let text = offer.to_sdp_string().replace(&old_fp, &new_fp);
    assert_ne!(
        text,
        offer.to_sdp_string(),
        "the fingerprint is in the offer"
    );
    w.engine
        .tracks_new(
            APP,
            &s_sid,
            TracksNew::OfferOnly {
                offer: text.as_str().into(),
            },
            w.now,
        )
        .expect("the new transport's offer is answered");
    let statuses = w.statuses(&s_sid);
    assert!(
        statuses.iter().all(|(_, _, active)| *active),
        "{statuses:?}"
    );
    // Its decoder starts over: the edge keyframe cache serves it once it connects, and no
    // delta frame reaches it before a keyframe.
    let waits = &w.engine.sessions[&id].awaiting_keyframe;
    assert!(waits.contains_key(&cam), "{waits:?}");
    assert!(
        !waits.contains_key(&mic),
        "audio needs no keyframe: {waits:?}"
    );
}
