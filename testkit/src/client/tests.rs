//! Two clients connected directly on 127.0.0.1, one per driver, so both drivers and the core
//! are exercised end to end without a node; and two in-memory cores on a simulated clock, as
//! the node's engine world drives them.

use super::*;
use crate::media::AUDIO_FRAME_BYTES;

const T: Duration = Duration::from_secs(10);

fn cfg(name: &str) -> ClientConfig {
    let mut c = ClientConfig::new(name, Duration::from_secs(120));
    c.video = VideoShape::LIGHT;
    c.raw_samples = 1000;
    c
}

/// `a` offers audio + video SendOnly, `b` answers, both connect; returns a's mids.
async fn connect(a: &Client, b: &Client) -> Vec<String> {
    let (mids, offer) = a
        .create_send_offer(&[MediaKind::Audio, MediaKind::Video])
        .await
        .expect("offer");
    assert_eq!(mids.len(), 2);
    let answer = b.accept_offer(&offer).await.expect("answer");
    a.accept_answer(&answer).await.expect("accept answer");
    a.wait_connected(T).await.expect("a connects");
    b.wait_connected(T).await.expect("b connects");
    mids
}

/// Media flows from `a` to `b`: frames on both mids, a keyframe on video, stamps read back as
/// latency samples, frames stop when `a` stops.
async fn media_flows(a: Client, b: Client) {
    let mids = connect(&a, &b).await;
    let (am, vm) = (mids[0].clone(), mids[1].clone());
    // Negotiated receiving mids are counted before their first frame.
    let before = b.stats();
    assert!(before.rx.contains_key(&am) && before.rx.contains_key(&vm));
    assert!(!before.all_receiving());

    a.start_sending(&mids).await.expect("start sending");
    let s = b
        .wait_until("audio and video frames", T, |s| {
            s.rx_frames(&am) >= 10 && s.rx_frames(&vm) >= 5 && s.rx_keyframes(&vm) >= 1
        })
        .await
        .expect("media flows peer to peer");
    assert!(s.all_receiving() && s.all_keyframed());
    assert!(s.rx_bytes(&vm) > s.rx_bytes(&am));
    // Audio frames arrive with the size sent.
    assert_eq!(s.rx_bytes(&am) / s.rx_frames(&am), AUDIO_FRAME_BYTES as u64);
    // Every frame was stamped; all but each track's first one are latency samples.
    let (a_rx, v_rx) = (&s.rx[&am], &s.rx[&vm]);
    assert_eq!(a_rx.stamped, a_rx.frames);
    assert_eq!(a_rx.window.latency.count(), a_rx.frames - 1);
    assert_eq!(v_rx.window.unstamped, 0);
    assert!(!s.raw.is_empty());
    assert!(a.stats().tx_frames(&am) >= s.rx_frames(&am));

    a.stop_all_sending().await.expect("stop");
    // No sleeps: once b has every frame a sent, a has sent nothing more since it stopped.
    let sent = a.stats();
    let (sent_a, sent_v) = (sent.tx_frames(&am), sent.tx_frames(&vm));
    b.wait_until("every frame sent before the stop", T, |s| {
        s.rx_frames(&am) == sent_a && s.rx_frames(&vm) == sent_v
    })
    .await
    .expect("the frames in flight arrive");
    let after = a.stats();
    assert_eq!(
        (after.tx_frames(&am), after.tx_frames(&vm)),
        (sent_a, sent_v),
        "nothing is sent after the stop"
    );
    assert!(a.stats().errors.is_empty(), "{:?}", a.stats().errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_driven_clients_exchange_media() {
    let a = Client::spawn_thread(cfg("a")).expect("a");
    let b = Client::spawn_thread(cfg("b")).expect("b");
    media_flows(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_driven_clients_exchange_media() {
    let a = Client::spawn_task(cfg("a")).await.expect("a");
    let b = Client::spawn_task(cfg("b")).await.expect("b");
    media_flows(a, b).await;
}

/// The drivers interoperate, and a dropped client's driver stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_to_task_and_drop_stops_the_driver() {
    let a = Client::spawn_thread(cfg("a")).expect("a");
    let b = Client::spawn_task(cfg("b")).await.expect("b");
    let mids = connect(&a, &b).await;
    a.start_sending(&mids).await.expect("start sending");
    let vm = mids[1].clone();
    b.wait_until("a keyframe", T, |s| s.rx_keyframes(&vm) >= 1)
        .await
        .expect("video arrives");
    let b_stats = b.stats.clone();
    drop(b);
    let mut stopped = false;
    // Bounded by the generous wait of every other step (10 s), not a timing claim.
    for _ in 0..1000 {
        if lock(&b_stats).stopped {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stopped, "the task of a dropped client keeps running");
    drop(a);
}

/// Commands fail cleanly: no second offer while one is pending, no answer without an offer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdp_misuse_is_an_error() {
    let a = Client::spawn_thread(cfg("a")).expect("a");
    let err = a
        .accept_answer("v=0\r\n")
        .await
        .expect_err("garbage answer");
    assert!(
        format!("{err:#}").contains("parsing the SFU answer"),
        "{err:#}"
    );
    a.create_send_offer(&[MediaKind::Audio])
        .await
        .expect("offer");
    let err = a
        .create_send_offer(&[MediaKind::Audio])
        .await
        .expect_err("second offer");
    assert!(err.to_string().contains("already pending"), "{err}");
    a.drop_pending_offer().await.expect("drop");
    a.create_send_offer(&[MediaKind::Video])
        .await
        .expect("offer again after dropping");
    let err = a.start_sending(&["99"]).await.expect_err("unknown mid");
    assert!(err.to_string().contains("no media with mid 99"), "{err}");
}

/// Two in-memory cores on one simulated clock, as the node's engine world drives them: no
/// socket, no thread, no lock. They connect, media flows with a keyframe first, and a keyframe
/// request reaches the sender's counters.
#[test]
fn in_memory_cores_exchange_media_on_a_simulated_clock() {
    use str0m::media::KeyframeRequestKind;

    let (a_addr, b_addr): (SocketAddr, SocketAddr) = (
        "127.0.0.1:40001".parse().expect("addr"),
        "127.0.0.1:40002".parse().expect("addr"),
    );
    let mut now = Instant::now();
    let mut a = Core::in_memory(a_addr, now).expect("a");
    let mut b = Core::in_memory(b_addr, now).expect("b");
    let (mids, offer) = a
        .create_send_offer(&[MediaKind::Audio, MediaKind::Video])
        .expect("offer");
    let answer = b
        .accept_offer(SdpOffer::from_sdp_string(&offer).expect("offer sdp"))
        .expect("answer");
    a.accept_answer(SdpAnswer::from_sdp_string(&answer).expect("answer sdp"))
        .expect("accept answer");
    let m = super::mids(&mids);
    a.start_sending(&m, now).expect("start sending");

    // What each core sends waits here for the other one, like datagrams in flight.
    let (mut to_a, mut to_b) = (Vec::<Vec<u8>>::new(), Vec::<Vec<u8>>::new());
    let mut step = |a: &mut Core<ClientStats>, b: &mut Core<ClientStats>, now: Instant| {
        let mut send_b = |_: SocketAddr, d: &[u8]| -> std::io::Result<()> {
            to_b.push(d.to_vec());
            Ok(())
        };
        a.tick(now, &mut send_b).expect("a ticks");
        for d in std::mem::take(&mut to_a) {
            a.receive(now, b_addr, &d, &mut send_b).expect("a receives");
        }
        let mut send_a = |_: SocketAddr, d: &[u8]| -> std::io::Result<()> {
            to_a.push(d.to_vec());
            Ok(())
        };
        b.tick(now, &mut send_a).expect("b ticks");
        for d in std::mem::take(&mut to_b) {
            b.receive(now, a_addr, &d, &mut send_a).expect("b receives");
        }
    };
    // 3 s of simulated time in 1 ms steps.
    for _ in 0..3000 {
        now += Duration::from_millis(1);
        step(&mut a, &mut b, now);
    }
    let s = b.stats();
    assert!(s.connected && a.stats().connected);
    assert!(s.rx_frames(&mids[0]) > 100, "{}", s.summary());
    assert!(s.rx_frames(&mids[1]) > 50, "{}", s.summary());
    assert_eq!(s.rx_first_is_keyframe(&mids[1]), Some(true));
    assert_eq!(s.rx_first_is_keyframe(&mids[0]), Some(false), "audio");
    // A lossless path: every video frame decodes.
    assert_eq!(s.rx_broken(&mids[1]), 0, "{}", s.summary());
    assert!(a.stats().tx_frames(&mids[1]) >= s.rx_frames(&mids[1]));
    assert!(s.errors.is_empty() && a.stats().errors.is_empty());

    let asked = a.stats().total_keyframe_requests();
    let keyframes = s.rx_keyframes(&mids[1]);
    b.rtc()
        .writer(m[1])
        .expect("b's video mid")
        .request_keyframe(None, KeyframeRequestKind::Pli)
        .expect("a PLI");
    // Ahead of the sender's next periodic keyframe (every 2 s from the start).
    for _ in 0..200 {
        now += Duration::from_millis(1);
        step(&mut a, &mut b, now);
    }
    assert!(a.stats().total_keyframe_requests() > asked);
    assert_eq!(
        a.stats().keyframe_requests.get(&mids[1]).copied(),
        Some(a.stats().total_keyframe_requests())
    );
    assert!(
        b.stats().rx_keyframes(&mids[1]) > keyframes,
        "{}",
        b.stats().summary()
    );
}

/// Against an ICE-lite answerer that takes the DTLS client role (`a=setup:active`, as Live777
/// answers WHIP and WHEP), the client must start the connectivity checks itself: nothing else
/// gives its `Rtc` a clock input. Only the client's ticks drive time here.
#[test]
fn checks_start_against_an_ice_lite_answer_with_setup_active() {
    use str0m::net::{Protocol, Receive};
    use str0m::{Candidate, Input, Output, RtcConfig};

    let (a_addr, b_addr): (SocketAddr, SocketAddr) = (
        "127.0.0.1:40011".parse().expect("addr"),
        "127.0.0.1:40012".parse().expect("addr"),
    );
    let mut now = Instant::now();
    let mut a = Core::in_memory(a_addr, now).expect("a");
    // As the socket drivers do when they start: str0m hands out its first timeout, which,
    // with nothing to do yet, is far away.
    a.drain(now, &mut |_: SocketAddr, _: &[u8]| -> std::io::Result<()> {
        Ok(())
    })
    .expect("first drain");
    let mut b = RtcConfig::new().set_ice_lite(true).build(now);
    b.add_local_candidate(Candidate::host(b_addr, "udp").expect("candidate"))
        .expect("b's candidate");
    let (_, offer) = a.create_send_offer(&[MediaKind::Audio]).expect("offer");
    let answer = b
        .sdp_api()
        .accept_offer(SdpOffer::from_sdp_string(&offer).expect("offer sdp"))
        .expect("answer")
        .to_sdp_string();
    let answer = answer.replace("a=setup:passive", "a=setup:active");
    assert!(answer.contains("a=setup:active") && answer.contains("a=ice-lite"));
    a.accept_answer(SdpAnswer::from_sdp_string(&answer).expect("answer sdp"))
        .expect("accept answer");

    let mut to_b = Vec::<Vec<u8>>::new();
    for _ in 0..500 {
        now += Duration::from_millis(1);
        let mut send_b = |_: SocketAddr, d: &[u8]| -> std::io::Result<()> {
            to_b.push(d.to_vec());
            Ok(())
        };
        a.tick(now, &mut send_b).expect("a ticks");
        for d in std::mem::take(&mut to_b) {
            let contents = d.as_slice().try_into().expect("datagram");
            let input = Input::Receive(
                now,
                Receive {
                    proto: Protocol::Udp,
                    source: a_addr,
                    destination: b_addr,
                    contents,
                },
            );
            b.handle_input(input).expect("b receives");
        }
        // b's answers to the checks go back to a.
        let mut back = Vec::new();
        for _ in 0..100 {
            match b.poll_output().expect("b polls") {
                Output::Transmit(t) => back.push(t.contents.to_vec()),
                Output::Timeout(_) => break,
                Output::Event(_) => {}
            }
        }
        let mut send_b = |_: SocketAddr, d: &[u8]| -> std::io::Result<()> {
            to_b.push(d.to_vec());
            Ok(())
        };
        for d in back {
            a.receive(now, b_addr, &d, &mut send_b).expect("a receives");
        }
        if a.stats().ice_state == "Completed" || a.stats().ice_state == "Connected" {
            break;
        }
    }
    let state = a.stats().ice_state.clone();
    assert!(
        state == "Completed" || state == "Connected",
        "ICE state {state:?}; {}",
        a.stats().summary()
    );
}
