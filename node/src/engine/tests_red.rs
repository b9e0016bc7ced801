//! RED audio (RFC 2198, `audio/red` over Opus) in the in-memory world. The engine's str0m
//! leaves RED off (its default codec set), so it answers a RED offer with Opus alone and offers
//! subscribers Opus alone: a browser offering RED then sends and receives plain Opus. RED
//! passthrough would need the publisher's RED payload type recognised on the way in and mapped
//! to each subscriber's on the way out; until then these tests hold that audio flows.

use std::time::Duration;

use str0m::format::Codec;
use str0m::media::Mid;
use str0m::{Candidate, RtcConfig};

use crate::testing::World;

/// A client whose str0m offers and accepts RED with Opus (`red/48000/2`), as Chromium does.
fn red_client(w: &mut World) -> usize {
    let c = w.client();
    let mut config = RtcConfig::new();
    config.codec_config().enable_opus(true, true);
    let mut rtc = config.build(w.now);
    let host = Candidate::host(w.clients[c].addr, "udp").expect("host candidate");
    rtc.add_local_candidate(host).expect("candidate taken");
    *w.clients[c].rtc() = rtc;
    c
}

/// The RED payload type negotiated with Opus on client `c`'s `mid`, if any.
fn red_pt(w: &mut World, c: usize, mid: Mid) -> Option<u8> {
    w.payload_type(c, mid, Codec::Opus).red().map(|pt| *pt)
}

#[test]
fn a_red_offering_publisher_and_subscriber_get_plain_opus_and_the_audio_arrives() {
    let mut w = World::new(Duration::from_secs(30));
    let publisher = red_client(&mut w);
    let pub_sid = w.session();
    let (a, v) = w.push(publisher, &pub_sid);
    assert!(
        w.offers.last().is_some_and(|o| o.contains("red/48000/2")),
        "the publisher offers RED"
    );
    assert_eq!(
        red_pt(&mut w, publisher, a),
        None,
        "the engine answers with Opus alone"
    );
    w.senders.push((publisher, a, v));
    w.run(Duration::from_millis(300));

    let sub = red_client(&mut w);
    let sub_sid = w.session();
    let res = w.pull(sub, &sub_sid, &[(&pub_sid, "mic")]);
    assert!(res.tracks[0].error.is_none(), "{res:?}");
    let mid = res.tracks[0].mid.clone();
    w.run(Duration::from_millis(1000));
    assert_eq!(
        red_pt(&mut w, sub, Mid::from(mid.as_str())),
        None,
        "the engine offers the subscriber Opus alone"
    );
    // 20 ms frames over a second, less the set-up.
    let frames = w.clients[sub].frames(&mid);
    assert!(
        frames > 30,
        "the subscriber hears the publisher: {frames} frames"
    );
    assert_eq!(
        w.engine.stats().frames_no_codec,
        0,
        "no packet came on a payload type the engine cannot forward"
    );
}
