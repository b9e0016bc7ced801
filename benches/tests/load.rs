//! CI correctness tests of the load generator: every scenario in a tiny form through the
//! library, against the debug node binary (env `TRACKMESH_BIN` overrides it). They assert what
//! a user sees (media arrives, no loss on loopback, latency recorded), never timings.

use std::time::Duration;

use trackmesh_benches::load::media::MediaMix;
use trackmesh_benches::load::report::Report;
use trackmesh_benches::load::scenario::{
    Common, GroupFigures, churn, fanout, hub, join_storm, relay, simulcast, soak, whip,
};
use trackmesh_tests::TestNode;

/// Warm-up before the measurement window. Through two relay hops (the hub scenario) a viewer
/// that joins in the first second can still miss a few video frames right after its first
/// keyframe; the window starts after that. (A 3 s warm-up used to hide a longer gap on one hop,
/// fixed in the engine's keyframe cache: `the_cached_keyframe_lets_a_viewer_follow_on...`.)
const WARMUP: Duration = Duration::from_secs(1);

fn small(duration_s: u64) -> Common {
    Common {
        media: MediaMix::Av,
        warmup: WARMUP,
        duration: Duration::from_secs(duration_s),
        concurrency: 8,
        ..Common::default()
    }
}

/// Every subscriber of the group received media on every track, nothing was lost, every video
/// frame would decode, and latency samples were recorded.
fn assert_group_ok(r: &Report, g: &GroupFigures) {
    assert!(g.subscribers > 0, "{}", r.text());
    assert_eq!(g.receiving, g.subscribers, "{}", r.text());
    assert!(g.frames_received > 0, "{}", r.text());
    assert_eq!(g.frames_lost, 0, "{}", r.text());
    assert_eq!(g.frames_broken_video, 0, "{}", r.text());
    assert!(g.latency.is_some_and(|d| d.n > 0), "{}", r.text());
    assert!(g.client_errors.is_empty(), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_one_publisher_five_subscribers() {
    let cfg = fanout::FanoutConfig {
        common: small(3),
        publishers: 1,
        subscribers: 5,
    };
    let r = fanout::run(&cfg).await.expect("fanout runs");
    println!("{}", r.text());
    assert_eq!(r.failures, 0, "{}", r.text());
    assert_eq!(r.groups.len(), 1);
    assert_group_ok(&r, &r.groups[0]);
    assert!(r.frames_sent > 0);
    assert!(r.nodes[0].forwarded_pkts_per_s > 0.0, "{}", r.text());
    assert!(r.groups[0].latency_video.is_some() && r.groups[0].latency_audio.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_one_publisher_three_relayed_subscribers() {
    let cfg = relay::RelayConfig {
        common: small(3),
        subscribers: 3,
        local_subscribers: 1,
        probe_joins: 1,
    };
    let r = relay::run(&cfg).await.expect("relay runs");
    println!("{}", r.text());
    assert_eq!(r.failures, 0, "{}", r.text());
    let names: Vec<&str> = r.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names.len(), 5, "{names:?}");
    // The long-lived local and relayed groups: media, no loss, latency.
    assert_group_ok(&r, &r.groups[0]);
    assert_group_ok(&r, &r.groups[1]);
    assert_eq!(r.groups[1].subscribers, 3);
    // The probes got a first frame and a first keyframe.
    for g in &r.groups[2..] {
        assert_eq!(g.subscribers, 1, "{}", r.text());
        assert!(g.pull_to_first_frame.is_some() && g.pull_to_first_keyframe.is_some());
    }
    // Frames were paired across the relay hop.
    assert!(
        r.extra["relay_added_per_frame_audio"].is_object(),
        "{}",
        r.text()
    );
    assert!(
        r.nodes.iter().all(|n| n.forwarded_pkts_per_s > 0.0),
        "{}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_publisher_in_r1_subscribers_on_both_r2_nodes() {
    let cfg = hub::HubConfig {
        common: small(3),
        subscribers: 4,
    };
    let r = hub::run(&cfg).await.expect("hub runs");
    println!("{}", r.text());
    assert_eq!(r.failures, 0, "{}", r.text());
    assert_eq!(r.groups.len(), 2);
    for g in &r.groups {
        assert_eq!(g.subscribers, 2, "{}", r.text());
        assert_group_ok(&r, g);
    }
    // For every track, exactly one of b and c (its r2 hub) pulls straight from a.
    let hubs = r.extra["r2_hub_per_track"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert_eq!(hubs.len(), 2, "{}", r.text());
    for (track, nodes) in &hubs {
        assert_eq!(
            nodes.as_array().map(Vec::len),
            Some(1),
            "{track}: {}",
            r.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_storm_thirty_sessions() {
    let mut cfg = join_storm::JoinStormConfig::default();
    cfg.common.duration = Duration::from_secs(2);
    cfg.common.concurrency = 8;
    cfg.sessions = 30;
    let r = join_storm::run(&cfg).await.expect("join storm runs");
    println!("{}", r.text());
    assert_eq!(r.failures, 0, "{}", r.text());
    assert_eq!(
        r.extra["storm"]["connected_and_receiving"],
        30,
        "{}",
        r.text()
    );
    assert!(r.extra["storm"]["wall_s_until_all_receive"].is_number());
    // The chart's timeline: sessions receiving over time, ending with all of them.
    let timeline = r.extra["storm"]["timeline"].as_array().expect("a timeline");
    assert_eq!(timeline.len(), 30, "{timeline:?}");
    assert_eq!(timeline.last().map(|p| p[1].clone()), Some(30.0.into()));
    assert!(
        timeline
            .windows(2)
            .all(|w| w[0][0].as_f64() <= w[1][0].as_f64()),
        "{timeline:?}"
    );
    let g = &r.groups[0];
    assert_eq!(g.subscribers, 30);
    assert_group_ok(&r, g);
    assert_eq!(g.session_setup.map(|d| d.n), Some(30));
    assert!(r.rss_per_session_kb.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_six_subscribers() {
    let cfg = churn::ChurnConfig {
        common: small(5),
        subscribers: 6,
        leave: churn::Leave::Mixed,
    };
    let r = churn::run(&cfg).await.expect("churn runs");
    println!("{}", r.text());
    assert_eq!(r.failures, 0, "{}", r.text());
    let joins = r.extra["churn"]["joins"].as_u64().unwrap_or(0);
    assert!(joins >= 6, "{}", r.text());
    let g = &r.groups[0];
    assert_eq!(g.frames_lost, 0, "{}", r.text());
    assert_eq!(g.frames_broken_video, 0, "{}", r.text());
    assert!(g.latency.is_some_and(|d| d.n > 0), "{}", r.text());
    assert_eq!(g.pull_to_first_frame.map(|d| d.n), Some(joins));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_six_seconds() {
    let cfg = soak::SoakConfig {
        common: small(6),
        publishers: 1,
        subscribers: 4,
        sample_every: Duration::from_secs(1),
    };
    let r = soak::run(&cfg).await.expect("soak runs");
    println!("{}", r.text());
    assert_eq!(r.failures, 0, "{}", r.text());
    assert_group_ok(&r, &r.groups[0]);
    let series = r.extra["soak"]["series"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // Enough points for the trend (slope and half means) to be reported.
    assert!(series.len() >= 4, "{}", r.text());
    let trend = &r.extra["soak"]["rss_trend_mb"];
    assert!(trend["slope_per_min"].is_f64(), "{}", r.text());
    assert!(trend["half_delta"].is_f64(), "{}", r.text());
}

/// What a WHIP/WHEP run must show whatever the server: every viewer received media on every
/// track without loss, latency was recorded, and the server-neutral figures are filled in.
fn assert_whip_ok(r: &Report, viewers: usize) {
    assert_eq!(r.failures, 0, "{}", r.text());
    assert_eq!(r.groups[0].subscribers, viewers, "{}", r.text());
    assert_group_ok(r, &r.groups[0]);
    assert!(r.groups[0].latency_video.is_some() && r.groups[0].latency_audio.is_some());
    assert!(r.publisher_errors.is_empty(), "{}", r.text());
    let x = &r.extra;
    assert_eq!(x["viewers_joined"], viewers, "{}", r.text());
    assert!(
        x["viewer_rtp_pkts_per_s"].as_f64() > Some(0.0),
        "{}",
        r.text()
    );
    assert!(
        x["forwarded_pkts_per_cpu_s"].as_f64() > Some(0.0),
        "{}",
        r.text()
    );
    assert!(x["rss_per_subscriber_kb"].is_f64(), "{}", r.text());
    assert!(x["latency_p99_ms"].is_f64(), "{}", r.text());
    // The node's own counter agrees that it forwarded.
    assert!(
        x["trackmesh_forwarded_pkts_per_s"].as_f64() > Some(0.0),
        "{}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_one_publisher_four_whep_viewers_on_a_node_it_starts() {
    let cfg = whip::WhipConfig {
        common: small(3),
        subscribers: 4,
        ..whip::WhipConfig::default()
    };
    let r = whip::run(&cfg).await.expect("whip runs");
    println!("{}", r.text());
    assert_whip_ok(&r, 4);
    assert_eq!(r.nodes.len(), 1, "{}", r.text());
}

/// The same load through URLs, a token and a pid only, as against another server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_against_a_server_given_by_url_token_and_pid() {
    let node = TestNode::start_process(&[]).expect("node");
    let base = node.base_url();
    let cfg = whip::WhipConfig {
        common: small(3),
        subscribers: 3,
        target: Some(whip::Target {
            whip_url: format!("{base}/whip/ext"),
            whep_url: format!("{base}/whep/ext"),
            token: node.app_secret().to_string(),
            server_pid: Some(node.pid()),
            metrics_url: Some(format!("{}/metrics", node.http_url())),
        }),
        ..whip::WhipConfig::default()
    };
    let r = whip::run(&cfg).await.expect("whip runs");
    println!("{}", r.text());
    assert_whip_ok(&r, 3);
    assert_eq!(r.extra["server"], "external");
    assert!(
        !r.params.to_string().contains(node.app_secret()),
        "the token stays out of the report"
    );

    // A wrong token: the publisher is refused and the run says why.
    let mut bad = cfg.clone();
    if let Some(t) = bad.target.as_mut() {
        t.token = "not-the-secret".into();
    }
    let e = whip::run(&bad).await.expect_err("refused");
    assert!(format!("{e:#}").contains("401"), "{e:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_six_subscribers_switching_layers() {
    let cfg = simulcast::SimulcastConfig {
        common: Common {
            media: MediaMix::Video,
            ..small(4)
        },
        subscribers: 6,
        switches: 2,
        switch_every: Duration::from_secs(1),
        ..simulcast::SimulcastConfig::default()
    };
    let r = simulcast::run(&cfg).await.expect("simulcast runs");
    println!("{}", r.text());
    assert_eq!(r.failures, 0, "{}", r.text());
    let g = &r.groups[0];
    assert_eq!(g.receiving, 6, "{}", r.text());
    assert!(g.frames_received > 0, "{}", r.text());
    // Layer switches land on the new layer's keyframe.
    assert_eq!(g.frames_broken_video, 0, "{}", r.text());
    assert!(g.client_errors.is_empty(), "{}", r.text());
    let asked = r.extra["switches_asked"].as_u64().expect("a count");
    assert!(asked > 0, "{}", r.text());
    assert_eq!(
        r.extra["switches_taken"].as_u64(),
        Some(asked),
        "{}",
        r.text()
    );
    assert!(
        r.extra["node_layer_switches_in_window"]
            .as_f64()
            .is_some_and(|n| n > 0.0),
        "the node switched subscribers: {}",
        r.text()
    );
    // Every subscriber receives one of the three layers (GET session's currentRid).
    let receiving = r.extra["subscribers_per_layer_receiving"]
        .as_object()
        .expect("per layer");
    assert!(
        receiving
            .keys()
            .all(|k| ["f", "h", "q"].contains(&k.as_str())),
        "{}",
        r.text()
    );
    let total: u64 = receiving.values().filter_map(|v| v.as_u64()).sum();
    assert_eq!(total, 6, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_relayed_to_viewers_of_one_layer_pulls_only_that_layer() {
    let cfg = simulcast::SimulcastConfig {
        common: Common {
            media: MediaMix::Video,
            ..small(4)
        },
        subscribers: 2,
        switches: 0,
        layers: simulcast::parse_layers("q").expect("a layer"),
        relayed: true,
        ..simulcast::SimulcastConfig::default()
    };
    let r = simulcast::run(&cfg).await.expect("simulcast runs");
    println!("{}", r.text());
    assert_eq!(r.failures, 0, "{}", r.text());
    assert_eq!(r.groups[0].receiving, 2, "{}", r.text());
    assert_eq!(r.nodes.len(), 2, "nodes a and b: {}", r.text());
    let pulled = &r.extra["relay_pulled_by_subscribers_node"];
    let frames = |rid: &str| pulled["layer_frames_per_s"][rid].as_f64();
    assert!(frames("q").is_some_and(|f| f > 0.0), "{}", r.text());
    assert_eq!(frames("h"), Some(0.0), "{}", r.text());
    assert_eq!(frames("f"), Some(0.0), "{}", r.text());
    assert!(
        pulled["kbps"].as_f64().is_some_and(|k| k > 0.0),
        "{}",
        r.text()
    );
}

/// `vs` runs a scenario against two node binaries as child processes, alternating, and its
/// summary has each side's figures (here the same binary on both sides).
#[test]
fn vs_runs_each_binary_and_compares_them() {
    let node = trackmesh_tests::node::node_binary();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackmesh-load"))
        .args(["--json", "vs", "--pairs", "1", "--a"])
        .arg(&node)
        .arg("--b")
        .arg(&node)
        .args(["--", "fanout", "--media", "audio", "--subscribers", "2"])
        .args(["--duration", "2", "--warmup", "1"])
        .output()
        .expect("trackmesh-load runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let runs = v["runs"].as_array().expect("runs");
    let sides: Vec<&str> = runs.iter().filter_map(|r| r["side"].as_str()).collect();
    assert_eq!(sides, ["A", "B"], "{v}");
    for r in runs {
        assert_eq!(r["ok"], true, "{v}");
        let fwd = r["report"]["nodes"][0]["forwarded_pkts_per_s"].as_f64();
        assert!(fwd.is_some_and(|f| f > 0.0), "{v}");
    }
    let pkts = &v["summary"]["pkt/s per core"];
    assert!(pkts["a_median"].as_f64().is_some_and(|x| x > 0.0), "{v}");
    assert!(pkts["b_median"].as_f64().is_some_and(|x| x > 0.0), "{v}");
    assert!(pkts["b_over_a_paired_median"].as_f64().is_some(), "{v}");
}

/// The `trackmesh` processes among `pid`'s children and their children.
fn node_processes_under(pid: u32) -> Vec<u32> {
    let children = |pid: u32| -> Vec<u32> {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Vec::new();
        };
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
            .flat_map(|s| {
                s.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect()
    };
    let mut found = Vec::new();
    for child in children(pid) {
        for p in std::iter::once(child).chain(children(child)) {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            if comm.trim() == "trackmesh" {
                found.push(p);
            }
        }
    }
    found
}

fn send_signal(pid: u32, signal: nix::sys::signal::Signal) -> nix::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| nix::Error::EINVAL)?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
}

/// Starts `trackmesh-load ARGS`, waits for its node, runs `check(generator pid, node pids)`,
/// sends it SIGTERM (as `kill` or `timeout` do) and checks that it exits with an error and that
/// its node is gone.
fn terminate_and_check_nodes_stop(args: &[&str], check: impl FnOnce(u32, &[u32])) {
    use std::process::{Command, Stdio};
    use std::time::Instant;
    let node = trackmesh_tests::node::node_binary();
    let mut load = Command::new(env!("CARGO_BIN_EXE_trackmesh-load"))
        .arg("--node-bin")
        .arg(&node)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("trackmesh-load starts");
    let pid = load.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    let nodes = loop {
        let nodes = node_processes_under(pid);
        if !nodes.is_empty() {
            break nodes;
        }
        if Instant::now() > deadline || load.try_wait().ok().flatten().is_some() {
            let _ = load.kill();
            panic!("no node process appeared under trackmesh-load {args:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    check(pid, &nodes);
    // Give the run a moment to be under way with its node up.
    std::thread::sleep(Duration::from_millis(500));
    send_signal(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM sent");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = load.try_wait().expect("waiting for trackmesh-load") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = load.kill();
            panic!("trackmesh-load {args:?} still running 30 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut e) = load.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
    // Exited: it has reaped its node, so the node's /proc entry is gone (a node left running
    // would have been adopted by init and still be there).
    let left: Vec<u32> = nodes
        .iter()
        .copied()
        .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        .collect();
    for &p in &left {
        let _ = send_signal(p, nix::sys::signal::Signal::SIGKILL);
    }
    assert!(left.is_empty(), "nodes {left:?} left running; {stderr}");
}

/// A small audio fan-out that runs for a minute unless it is stopped.
const MINUTE_OF_AUDIO: [&str; 7] = [
    "fanout",
    "--media",
    "audio",
    "--subscribers",
    "2",
    "--duration",
    "60",
];

#[test]
fn a_terminated_generator_stops_the_nodes_it_started() {
    terminate_and_check_nodes_stop(&MINUTE_OF_AUDIO, |_, _| {});
}

#[test]
fn a_terminated_comparison_stops_its_run_and_the_runs_nodes() {
    let node = trackmesh_tests::node::node_binary();
    let node = node.to_str().expect("a UTF-8 path");
    let mut args = vec!["vs", "--pairs", "2", "--a", node, "--b", node, "--"];
    args.extend(MINUTE_OF_AUDIO);
    terminate_and_check_nodes_stop(&args, |_, _| {});
}

/// The `Cpus_allowed_list` of a process (`0`, `1-3`).
fn cpus_allowed(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("its status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim()
        .to_string()
}

#[test]
fn node_cpus_start_the_nodes_on_those_cpus_and_keep_the_generator_off_them() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(cpus >= 2, "this test needs 2 CPUs, the CI machine has them");
    let mut args = vec!["--node-cpus", "0"];
    args.extend(MINUTE_OF_AUDIO);
    terminate_and_check_nodes_stop(&args, |generator, nodes| {
        for &n in nodes {
            assert_eq!(cpus_allowed(n), "0", "node {n}");
        }
        let own = cpus_allowed(generator);
        assert!(!own.starts_with('0'), "the generator is on {own}");
    });
    // A list that leaves the generator nothing is refused before anything starts.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackmesh-load"))
        .args(["--node-cpus", &format!("0-{}", cpus - 1), "fanout"])
        .output()
        .expect("trackmesh-load runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no CPU for the generator"), "{stderr}");
}
