//! The cross-worker hop with real engines: two test worlds stand for two workers, their relay
//! outputs go through the workers' routers exactly as in their loops, and the tests look at
//! what the subscriber on the other worker receives.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::links::Router;
use super::{PRIMARY, Shared};
use crate::engine::{EngineConfig, RelayIn};
use crate::ids::SessionId;
use crate::runtime::{Job, WorkerLinks};
use crate::testing::{self, World};

const APP: &str = "app";

/// Two workers' routers and what they hand each other.
struct Hop {
    shared: Arc<Shared>,
    routers: Vec<Router>,
    inputs: Vec<mpsc::Receiver<RelayIn>>,
    jobs: Vec<mpsc::Receiver<Job>>,
    /// Keeps the command queues open (the routers hold them weakly).
    _job_senders: Vec<mpsc::Sender<Job>>,
}

impl Hop {
    fn new() -> Hop {
        let shared = Arc::new(Shared::new(2, Vec::new(), None));
        let (in_tx, inputs): (Vec<_>, Vec<_>) = (0..2).map(|_| mpsc::channel(64)).unzip();
        let (job_tx, jobs): (Vec<_>, Vec<_>) = (0..2).map(|_| mpsc::channel::<Job>(64)).unzip();
        let in_tx: Arc<[mpsc::Sender<RelayIn>]> = in_tx.into();
        let weak: Arc<[mpsc::WeakSender<Job>]> = job_tx.iter().map(|t| t.downgrade()).collect();
        let routers = (0..2)
            .map(|index| Router {
                index,
                shared: shared.clone(),
                inputs: in_tx.clone(),
                commands: weak.clone(),
            })
            .collect();
        Hop {
            shared,
            routers,
            inputs,
            jobs,
            _job_senders: job_tx,
        }
    }

    /// One turn of both loops' relay handling: A's outputs through A's router into B, B's
    /// through B's router back to A (keyframe requests arrive as calls on A).
    async fn pump(&mut self, a: &mut World, b: &mut World) {
        for (from, w) in [(0, &mut *a), (1, &mut *b)] {
            while let Some(out) = w.engine.poll_relay() {
                assert!(
                    self.routers[from].route(out).is_none(),
                    "everything here is between workers"
                );
            }
        }
        // The routers' control calls are tasks on this (current-thread) runtime.
        tokio::task::yield_now().await;
        for (to, w) in [(0, &mut *a), (1, &mut *b)] {
            while let Ok(input) = self.inputs[to].try_recv() {
                match input {
                    RelayIn::Frame { up, frame } => w.engine.relay_frame(up, frame, w.now),
                    other => panic!("unexpected input {other:?}"),
                }
            }
            while let Ok(job) = self.jobs[to].try_recv() {
                job(&mut w.engine, w.now);
            }
        }
    }
}

/// A publisher on worker 0's world; a world for worker 1 on the same clock.
fn two_workers() -> (World, World, String) {
    let mut a = World::new(Duration::from_secs(30));
    let c = a.client();
    let sid = a.session();
    let (au, v) = a.push(c, &sid);
    a.senders.push((c, au, v));
    a.run(Duration::from_millis(300));
    let mut b = World::with_config(EngineConfig {
        worker: 1,
        ..testing::config(Duration::from_secs(30))
    });
    b.now = a.now;
    (a, b, sid)
}

/// Links the publisher's video from worker 0 to worker 1 as the node does, and pulls it
/// there; the subscriber's client index, its mid and its session.
fn link_and_pull(
    hop: &Hop,
    a: &mut World,
    b: &mut World,
    pub_sid: &str,
) -> (usize, String, SessionId) {
    let sid = SessionId::parse(pub_sid).expect("id");
    let (down, up) = hop.shared.links.open(PRIMARY, 1);
    let info = a
        .engine
        .relay_subscribe(down, APP, sid, "cam")
        .expect("worker 0 serves the track");
    b.engine
        .add_relay_publication(APP, sid, "cam", up, info, b.now)
        .expect("worker 1 takes it");
    let c = b.client();
    let sub_sid = b.session();
    let sub = SessionId::parse(&sub_sid).expect("id");
    assert_eq!(sub.worker(), 1, "worker 1's sessions name it");
    let res = b.pull(c, &sub_sid, &[(pub_sid, "cam")]);
    assert!(res.tracks[0].error.is_none(), "{res:?}");
    (c, res.tracks[0].mid.clone(), sub)
}

/// Both worlds for `dur`, in steps of one media frame interval (a world sends a frame per
/// track at the start of each `run`), the hop pumped after each.
async fn run(hop: &mut Hop, a: &mut World, b: &mut World, dur: Duration) {
    const FRAME: Duration = Duration::from_millis(20);
    for _ in 0..dur.as_millis() / FRAME.as_millis() {
        a.run(FRAME);
        b.now = a.now - FRAME;
        b.run(FRAME);
        hop.pump(a, b).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_subscriber_on_another_worker_gets_frames_and_a_keyframe_through_the_hop() {
    let (mut a, mut b, pub_sid) = two_workers();
    let mut hop = Hop::new();
    let (c, mid, sub) = link_and_pull(&hop, &mut a, &mut b, &pub_sid);
    run(&mut hop, &mut a, &mut b, Duration::from_millis(1000)).await;
    assert!(
        b.clients[c].frames(&mid) > 20,
        "frames: {}",
        b.clients[c].frames(&mid)
    );
    assert!(b.clients[c].keyframes(&mid) > 0, "a keyframe at join");
    let figures = &hop.shared.links.figures;
    let handed = figures.frames[0].load(std::sync::atomic::Ordering::Relaxed);
    assert!(handed > 20, "worker 0 handed frames over: {handed}");
    assert_eq!(
        figures.drops[0].load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // The subscriber leaves: worker 1 releases the link and worker 0 its sink.
    let sid = SessionId::parse(&pub_sid).expect("id");
    b.engine.close_session(sub, b.now, "test");
    b.now += Duration::from_secs(3);
    b.engine.handle_timeout(b.now);
    hop.pump(&mut a, &mut b).await;
    assert_eq!(hop.shared.links.count(), 0, "the link is gone");
    assert_eq!(a.engine.local_subscriber_count(sid, "cam"), 0);
    assert!(!b.engine.has_publication(APP, sid, "cam"));
}

#[tokio::test(flavor = "current_thread")]
async fn nack_repairs_loss_on_both_legs_across_workers() {
    // As the one-engine test: the same run without and with loss on the publisher's uplink
    // (worker 0) and the subscriber's downlink (worker 1); NACK/RTX on each leg repairs it.
    async fn received(loss: Option<u64>) -> u64 {
        let (mut a, mut b, pub_sid) = two_workers();
        let mut hop = Hop::new();
        let (c, mid, _) = link_and_pull(&hop, &mut a, &mut b, &pub_sid);
        run(&mut hop, &mut a, &mut b, Duration::from_millis(500)).await;
        if let Some(n) = loss {
            a.loss_from.insert(0, n);
            b.loss_to.insert(c, n);
        }
        let before = b.clients[c].frames(&mid);
        run(&mut hop, &mut a, &mut b, Duration::from_millis(3000)).await;
        a.loss_from.clear();
        b.loss_to.clear();
        run(&mut hop, &mut a, &mut b, Duration::from_millis(500)).await;
        b.clients[c].frames(&mid) - before
    }
    let clean = received(None).await;
    let lossy = received(Some(7)).await;
    assert!(clean > 100, "{clean}");
    assert!(
        lossy * 100 >= clean * 90,
        "with loss {lossy} frames vs {clean} without"
    );
}

#[test]
fn new_sessions_go_to_the_least_loaded_worker_after_the_forced_ones() {
    // Forced: 1, then 7 (no such worker: least loaded instead), then least loaded.
    let shared = Shared::new(3, vec![1, 7], None);
    assert_eq!(shared.place(), 1);
    assert_eq!(shared.place(), 0, "ties go to the lowest index");
    assert_eq!(shared.place(), 2);
    assert_eq!(
        shared.loads(),
        vec![1, 1, 1],
        "each placement counts at once"
    );
    // A worker's own figure after its turn replaces the estimate.
    shared.loads[0].store(5, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(shared.place(), 1);
    assert_eq!(shared.place(), 2);
    assert_eq!(shared.loads(), vec![5, 2, 2]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_frame_the_full_queue_dropped_reaches_the_other_worker_as_a_gap_first() {
    use crate::engine::{RelayFrame, RelayOut};
    let mut hop = Hop::new();
    let (down, up) = hop.shared.links.open(0, 1);
    let frame = |n: u64| RelayOut::Frame {
        down,
        seq: n as u32,
        frame: RelayFrame {
            rtp_time: n * 3000,
            origin_seq: n,
            marker: true,
            keyframe: false,
            data: vec![0u8; 100].into(),
            rid: None,
            orientation: None,
        },
    };
    // Worker 1 is behind: its queue (64) fills, and the 65th frame is dropped.
    for n in 1..=65 {
        assert!(hop.routers[0].route(frame(n)).is_none());
    }
    let mut got = 0;
    while let Ok(input) = hop.inputs[1].try_recv() {
        assert!(matches!(input, RelayIn::Frame { up: u, .. } if u == up));
        got += 1;
    }
    assert_eq!(got, 64);
    // The next frame follows the news of the lost one; then frames flow as before.
    assert!(hop.routers[0].route(frame(66)).is_none());
    assert!(hop.routers[0].route(frame(67)).is_none());
    let next: Vec<_> = std::iter::from_fn(|| hop.inputs[1].try_recv().ok()).collect();
    assert!(
        matches!(
            next.as_slice(),
            [RelayIn::Gap { up: a }, RelayIn::Frame { up: b, .. }, RelayIn::Frame { up: c, .. }]
                if *a == up && *b == up && *c == up
        ),
        "{next:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_viewers_keyframe_request_across_workers_is_counted_once_as_sent() {
    // `trackmesh_keyframe_requests_total{direction="sent"}` is the sum over workers: one PLI
    // from a viewer on worker 1 that worker 0 passes on to the publisher is one request sent.
    let (mut a, mut b, pub_sid) = two_workers();
    let mut hop = Hop::new();
    let (c, mid, _) = link_and_pull(&hop, &mut a, &mut b, &pub_sid);
    run(&mut hop, &mut a, &mut b, Duration::from_millis(1500)).await;
    assert!(b.clients[c].frames(&mid) > 20, "the viewer receives");
    let sent = |a: &World, b: &World| {
        a.engine.stats().keyframe_requests + b.engine.stats().keyframe_requests
    };
    let (sent_before, asked_before) = (sent(&a, &b), a.clients[0].keyframe_requests());
    b.clients[c]
        .rtc()
        .writer(str0m::media::Mid::from(mid.as_str()))
        .expect("the viewer's video mid")
        .request_keyframe(None, str0m::media::KeyframeRequestKind::Pli)
        .expect("a PLI");
    // Past the engine's keyframe request interval, so the request is passed on.
    run(&mut hop, &mut a, &mut b, Duration::from_millis(2500)).await;
    let asked = a.clients[0].keyframe_requests() - asked_before;
    assert_eq!(asked, 1, "the publisher is asked once");
    assert_eq!(
        sent(&a, &b) - sent_before,
        asked,
        "counted once (worker 0: {}, worker 1: {})",
        a.engine.stats().keyframe_requests,
        b.engine.stats().keyframe_requests
    );
}

#[tokio::test]
async fn a_change_across_workers_runs_to_its_end_when_its_caller_goes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go) = tokio::sync::oneshot::channel::<()>();
    let done = Arc::new(AtomicBool::new(false));
    let finished = done.clone();
    // The caller (a request handler) is dropped half-way through the change.
    let caller = tokio::spawn(super::to_the_end(async move {
        let _ = started_tx.send(());
        let _ = go.await;
        finished.store(true, Ordering::SeqCst);
        Ok(())
    }));
    started.await.expect("the change started");
    caller.abort();
    assert!(caller.await.is_err(), "the caller was cancelled");
    let _ = go_tx.send(());
    for _ in 0..200 {
        if done.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        done.load(Ordering::SeqCst),
        "the change was cut off with its caller"
    );
}
