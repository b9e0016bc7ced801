//! `trackmeshctl` against real clusters of `trackmesh` node processes on 127.0.0.1: every
//! subcommand in table and `--json` form, tokens, exit codes, an unreachable node, drain and
//! undrain, and `locate` of a track published with the Rust test client and pulled elsewhere.
//!
//! The binary: env `TRACKMESHCTL_BIN`, else the one cargo built for this test. The node binary:
//! env `TRACKMESH_BIN`, else `<workspace>/target/debug/trackmesh` (build it first:
//! `cargo build --workspace --bins`). The tests run one at a time (a shared lock), so their
//! clusters do not compete for the two cores.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::Value;
use tokio::sync::{Mutex, MutexGuard};
use trackmesh_tests::node::random_hex32;
use trackmesh_tests::{Cluster, Publisher, Subscriber, poll_until};

static SERIAL: Mutex<()> = Mutex::const_new(());

async fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().await
}

const STEP: Duration = Duration::from_millis(100);
/// Bound for state that spreads by gossip or relays (the contract gives no number).
const SETTLE: Duration = Duration::from_secs(10);

fn ctl_binary() -> PathBuf {
    match std::env::var_os("TRACKMESHCTL_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_trackmeshctl")),
    }
}

/// One run of `trackmeshctl`.
#[derive(Debug)]
struct Run {
    args: Vec<String>,
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{:?}: stdout is not JSON ({e}): {self:#?}", self.args))
    }

    fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "exit code of trackmeshctl {:?}: {self:#?}",
            self.args
        );
        self
    }

    /// The table's lines, split into cells at runs of two or more spaces.
    fn lines(&self) -> Vec<Vec<String>> {
        self.stdout.lines().map(cells).collect()
    }

    fn header(&self) -> Vec<String> {
        self.lines().into_iter().next().unwrap_or_default()
    }

    /// Rows whose first cell is `first`.
    fn rows_starting(&self, first: &str) -> Vec<Vec<String>> {
        self.lines()
            .into_iter()
            .skip(1)
            .filter(|r| r.first().map(String::as_str) == Some(first))
            .collect()
    }

    /// The value of a `key  value` line.
    fn value_of(&self, key: &str) -> Option<String> {
        self.stdout.lines().find_map(|l| {
            let rest = l.strip_prefix(key)?;
            rest.starts_with("  ").then(|| rest.trim().to_string())
        })
    }
}

fn cells(line: &str) -> Vec<String> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

/// Run `trackmeshctl --node URL [--token T] ARGS...` with no TRACKMESH_* variables inherited,
/// plus `env`.
async fn ctl_env(url: &str, token: Option<&str>, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut full: Vec<String> = Vec::new();
    if !url.is_empty() {
        full.extend(["--node".to_string(), url.to_string()]);
    }
    if let Some(t) = token {
        full.extend(["--token".to_string(), t.to_string()]);
    }
    full.extend(args.iter().map(|a| a.to_string()));
    let mut cmd = tokio::process::Command::new(ctl_binary());
    cmd.args(&full)
        .env_remove("TRACKMESH_NODE")
        .env_remove("TRACKMESH_ADMIN_TOKEN")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("trackmeshctl {full:?} did not finish within 30 s"))
        .unwrap_or_else(|e| panic!("running {}: {e}", ctl_binary().display()));
    Run {
        args: full,
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `trackmeshctl --node <node's URL> --token <cluster's admin token> ARGS...`
async fn ctl(cluster: &Cluster, name: &str, args: &[&str]) -> Run {
    let url = cluster.node(name).http_url();
    ctl_env(&url, Some(cluster.admin_token()), &[], args).await
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is a string in {v}"))
}

fn u64_field(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is a count in {v}"))
}

fn bool_field(v: &Value, key: &str) -> bool {
    v[key]
        .as_bool()
        .unwrap_or_else(|| panic!("{key} is a bool in {v}"))
}

fn array<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("{key} is an array in {v}"))
}

fn strings(v: &Value, key: &str) -> BTreeSet<String> {
    array(v, key)
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("{key} holds strings: {v}"))
                .to_string()
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A 127.0.0.1 TCP port nothing listens on.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a TCP port");
    let port = l.local_addr().expect("local addr").port();
    drop(l);
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_node_timeouts_and_usage() {
    let _serial = serial().await;
    let url = format!("http://127.0.0.1:{}", closed_port());
    for args in [
        &["members"][..],
        &["status"],
        &["status", "b"],
        &["sessions"],
        &["sessions", "--node", "b"],
        &["session", "0badcafe00000000000000000000000a"],
        &["tracks"],
        &["locate", "0badcafe00000000000000000000000a/cam"],
        &["drain", "b"],
        &["undrain", "b"],
        &["--json", "members"],
    ] {
        let r = ctl_env(&url, Some("t"), &[], args).await;
        r.expect_code(3);
        assert!(
            r.stderr
                .starts_with(&format!("trackmeshctl: cannot reach {url}: ")),
            "{r:#?}"
        );
        assert!(r.stdout.is_empty(), "{r:#?}");
    }
    // health has its own codes: 2 when the node cannot be reached.
    let r = ctl_env(&url, None, &[], &["health"]).await;
    r.expect_code(2);
    assert!(r.stderr.contains(&format!("cannot reach {url}")), "{r:#?}");

    // A node that accepts the connection but never answers: --timeout bounds the wait.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_url = format!("http://{}", silent.local_addr().expect("addr"));
    let started = std::time::Instant::now();
    let r = ctl_env(
        &silent_url,
        Some("t"),
        &[],
        &["--timeout", "0.5", "members"],
    )
    .await;
    r.expect_code(3);
    assert!(r.stderr.contains("no answer within 0.5s"), "{r:#?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{r:#?}");
    drop(silent);

    // Usage errors exit 2, help exits 0.
    for args in [
        &["bogus"][..],
        &[],
        &["session"],
        &["locate", "no-slash"],
        &["--timeout", "x", "members"],
        &["--node", "https://127.0.0.1:1", "members"],
    ] {
        let r = ctl_env("", None, &[], args).await;
        r.expect_code(2);
        assert!(!r.stderr.is_empty(), "{r:#?}");
    }
    let r = ctl_env("", None, &[], &["--help"]).await;
    r.expect_code(0);
    for cmd in [
        "members",
        "status",
        "sessions",
        "session",
        "tracks",
        "locate",
        "drain",
        "undrain",
        "health",
        "--token",
        "TRACKMESH_ADMIN_TOKEN",
        "TRACKMESH_NODE",
        "--json",
        "--timeout",
    ] {
        assert!(
            r.stdout.contains(cmd),
            "--help mentions {cmd}: {}",
            r.stdout
        );
    }
    for cmd in [
        "members", "status", "sessions", "session", "tracks", "locate", "drain", "undrain",
        "health",
    ] {
        let r = ctl_env("", None, &[], &[cmd, "--help"]).await;
        r.expect_code(0);
        assert!(
            r.stdout.contains("Example") && r.stdout.contains("trackmeshctl"),
            "{cmd} --help has an example: {}",
            r.stdout
        );
    }
}

/// A publisher on a (eu) and subscribers of its tracks on b (eu) and c (us).
struct Scene {
    cluster: Cluster,
    publisher: Publisher,
    sub_b: Subscriber,
    sub_c: Subscriber,
}

async fn scene() -> anyhow::Result<Scene> {
    let cluster = Cluster::start(&[("a", "eu"), ("b", "eu"), ("c", "us")]).await?;
    let publisher = Publisher::start_av(&cluster.client("a"), "cam")
        .await
        .context("publisher on a")?;
    let refs = publisher.remote_refs();
    let sub_b = Subscriber::start_retrying(&cluster.client("b"), "sub-b", &refs)
        .await
        .context("subscriber on b")?;
    let sub_c = Subscriber::start_retrying(&cluster.client("c"), "sub-c", &refs)
        .await
        .context("subscriber on c")?;
    // Both subscribing nodes pull both tracks before the views are checked.
    for name in ["b", "c"] {
        let node = cluster.node(name);
        poll_until(
            &format!("{name} to pull both tracks"),
            SETTLE,
            STEP,
            async || {
                let relay = node.relay_view().await?;
                for (s, t) in &refs {
                    ensure!(
                        !relay.upstream_of(s, t).is_empty(),
                        "no upstream of {t}: {relay:?}"
                    );
                }
                Ok(())
            },
        )
        .await?;
    }
    Ok(Scene {
        cluster,
        publisher,
        sub_b,
        sub_c,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_a_cluster_in_tables_and_json() {
    let _serial = serial().await;
    let s = scene()
        .await
        .expect("a 3-node cluster with a publisher and two subscribers");
    let c = &s.cluster;
    let pub_id = s.publisher.session_id.clone();
    let (audio, video) = ("cam-audio", "cam-video");

    // ---- members (deviations from the contract are collected in `faults` and reported together
    // at the end)
    let r = ctl(c, "a", &["members"]).await;
    r.expect_code(0);
    assert_eq!(
        r.header(),
        [
            "NODE", "TAG", "REGION", "STATE", "SESSIONS", "TRACKS", "RELAYS", "VERSION", "API"
        ],
        "{r:#?}"
    );
    for (name, shown, region) in [("a", "a*", "eu"), ("b", "b", "eu"), ("c", "c", "us")] {
        let rows = r.rows_starting(shown);
        assert_eq!(rows.len(), 1, "one row for {name}: {r:#?}");
        let row = &rows[0];
        assert_eq!(row[1], c.node(name).tag(), "{r:#?}");
        assert_eq!(row[2], region, "{r:#?}");
        assert_eq!(row[3], "live", "{r:#?}");
        assert_eq!(row[8], c.node(name).http_url(), "{r:#?}");
    }
    let j = ctl(c, "a", &["members", "--json"]).await;
    let v = j.expect_code(0).json();
    assert_eq!(str_field(&v, "self"), "a");
    let members = array(&v, "members");
    assert_eq!(members.len(), 3, "{v}");
    for m in members {
        let id = str_field(m, "nodeId");
        let node = c.node(id);
        assert_eq!(str_field(m, "tag"), node.tag(), "{m}");
        assert_eq!(str_field(m, "region"), node.region(), "{m}");
        assert_eq!(str_field(m, "api"), node.http_url(), "{m}");
        assert_eq!(
            str_field(m, "relay"),
            node.relay_addr().expect("relay").to_string(),
            "{m}"
        );
        assert!(bool_field(m, "live"), "{m}");
        assert!(!bool_field(m, "draining"), "{m}");
        for k in ["sessions", "tracks", "relays"] {
            u64_field(m, k);
        }
        assert!(!str_field(m, "version").is_empty(), "{m}");
    }

    // The gossiped load reaches the members view: one session on each node, a's two tracks.
    let mut faults: Vec<String> = Vec::new();
    let load = poll_until("the gossiped load in members", SETTLE, STEP, async || {
        let r = ctl(c, "a", &["members"]).await;
        ensure!(r.code == 0, "{r:#?}");
        let sessions: Vec<String> = ["a*", "b", "c"]
            .iter()
            .map(|n| {
                r.rows_starting(n)
                    .first()
                    .map(|row| row[4].clone())
                    .unwrap_or_default()
            })
            .collect();
        let a_tracks = r.rows_starting("a*").first().map(|row| row[5].clone());
        ensure!(
            sessions == ["1", "1", "1"] && a_tracks.as_deref() == Some("2"),
            "{r:#?}"
        );
        Ok(r)
    })
    .await;
    match load {
        Ok((r, _)) => eprintln!("$ trackmeshctl members\n{}", r.stdout),
        Err(e) => faults.push(format!(
            "GET /admin/cluster: members' sessions/tracks should follow the nodes' load: {e:#}"
        )),
    }

    // ---- status (the node asked) and status NODE (asked through it)
    let r = ctl(c, "a", &["status"]).await;
    r.expect_code(0);
    assert_eq!(r.value_of("node").as_deref(), Some("a"), "{r:#?}");
    assert_eq!(r.value_of("region").as_deref(), Some("eu"), "{r:#?}");
    assert_eq!(r.value_of("draining").as_deref(), Some("no"), "{r:#?}");
    assert_eq!(
        r.value_of("published tracks").as_deref(),
        Some("2"),
        "{r:#?}"
    );
    let v = ctl(c, "a", &["status", "--json"])
        .await
        .expect_code(0)
        .json();
    let a = c.node("a");
    assert_eq!(str_field(&v, "nodeId"), "a");
    assert_eq!(str_field(&v, "tag"), a.tag());
    assert_eq!(str_field(&v, "region"), "eu");
    assert!(!str_field(&v, "version").is_empty());
    u64_field(&v, "uptimeSecs");
    assert!(!bool_field(&v, "draining"));
    assert_eq!(u64_field(&v, "sessions"), 1, "the publisher's session: {v}");
    assert_eq!(u64_field(&v, "publishedTracks"), 2, "{v}");
    assert_eq!(u64_field(&v, "subscribedTracks"), 0, "{v}");
    let a_links = a.relay_view().await.expect("a's /admin/relay").links.len();
    if u64_field(&v, "relayLinks") != a_links as u64 || a_links < 2 {
        faults.push(format!(
            "GET /admin/status on a: relayLinks should count a's relay links (/admin/relay lists \
             {a_links}, inbound from b and c), got {v}"
        ));
    }
    assert_eq!(str_field(&v, "api"), a.http_url());
    assert_eq!(str_field(&v, "media"), a.media_addr().to_string());
    assert_eq!(
        str_field(&v, "relay"),
        a.relay_addr().expect("relay").to_string()
    );
    assert_eq!(
        str_field(&v, "gossip"),
        a.gossip_addr().expect("gossip").to_string()
    );

    let r = ctl(c, "a", &["status", "c"]).await;
    r.expect_code(0);
    assert_eq!(r.value_of("node").as_deref(), Some("c"), "{r:#?}");
    assert_eq!(r.value_of("region").as_deref(), Some("us"), "{r:#?}");
    assert_eq!(
        r.value_of("subscribed tracks").as_deref(),
        Some("2"),
        "{r:#?}"
    );
    let v = ctl(c, "a", &["status", "b", "--json"])
        .await
        .expect_code(0)
        .json();
    assert_eq!(str_field(&v, "nodeId"), "b");
    assert_eq!(str_field(&v, "tag"), c.node("b").tag());
    assert_eq!(u64_field(&v, "sessions"), 1, "{v}");
    assert_eq!(u64_field(&v, "publishedTracks"), 0, "{v}");
    assert_eq!(u64_field(&v, "subscribedTracks"), 2, "{v}");
    assert_eq!(str_field(&v, "api"), c.node("b").http_url());

    let r = ctl(c, "a", &["status", "no-such-node"]).await;
    r.expect_code(1);
    assert!(
        r.stderr.contains("404") && r.stderr.contains("not_found"),
        "{r:#?}"
    );

    // ---- sessions (every node) and sessions --node NODE
    let r = ctl(c, "b", &["sessions"]).await;
    r.expect_code(0);
    assert_eq!(
        r.header(),
        [
            "NODE",
            "SESSION",
            "APP",
            "CONNECTED",
            "PUSHED",
            "PULLED",
            "ACTIVE"
        ],
        "{r:#?}"
    );
    let expect_rows = [
        ("a", &pub_id, ["yes", "2", "0", "2"]),
        ("b", &s.sub_b.session_id, ["yes", "0", "2", "2"]),
        ("c", &s.sub_c.session_id, ["yes", "0", "2", "2"]),
    ];
    for (node, id, rest) in &expect_rows {
        let rows = r.rows_starting(node);
        assert_eq!(rows.len(), 1, "one session on {node}: {r:#?}");
        assert_eq!(&rows[0][1], *id, "{r:#?}");
        assert_eq!(rows[0][2], c.app_id(), "{r:#?}");
        assert_eq!(rows[0][3..], rest[..], "{r:#?}");
    }
    let v = ctl(c, "b", &["sessions", "--json"])
        .await
        .expect_code(0)
        .json();
    let sessions = array(&v, "sessions");
    assert_eq!(sessions.len(), 3, "{v}");
    for (node, id, _) in &expect_rows {
        let found: Vec<&Value> = sessions
            .iter()
            .filter(|x| x["sessionId"] == id.as_str())
            .collect();
        assert_eq!(found.len(), 1, "{id} listed once: {v}");
        let x = found[0];
        assert_eq!(str_field(x, "node"), *node, "{x}");
        assert_eq!(str_field(x, "app"), c.app_id(), "{x}");
        assert!(bool_field(x, "connected"), "{x}");
        let tracks = array(x, "tracks");
        assert_eq!(tracks.len(), 2, "{x}");
        let names: BTreeSet<String> = tracks
            .iter()
            .map(|t| str_field(t, "trackName").to_string())
            .collect();
        assert_eq!(names, set(&[audio, video]), "{x}");
        for t in tracks {
            assert_eq!(str_field(t, "status"), "active", "{x}");
            assert!(!str_field(t, "mid").is_empty(), "{x}");
            if *node == "a" {
                assert_eq!(str_field(t, "location"), "local", "{x}");
            } else {
                assert_eq!(str_field(t, "location"), "remote", "{x}");
                assert_eq!(str_field(t, "sessionId"), pub_id, "{x}");
            }
        }
    }
    let r = ctl(c, "a", &["sessions", "--node", "c"]).await;
    r.expect_code(0);
    assert_eq!(r.rows_starting("c").len(), 1, "{r:#?}");
    assert!(
        r.rows_starting("a").is_empty() && r.rows_starting("b").is_empty(),
        "{r:#?}"
    );
    let v = ctl(c, "a", &["sessions", "--node", "c", "--json"])
        .await
        .expect_code(0)
        .json();
    let sessions = array(&v, "sessions");
    assert_eq!(sessions.len(), 1, "{v}");
    assert_eq!(str_field(&sessions[0], "sessionId"), s.sub_c.session_id);
    assert_eq!(str_field(&sessions[0], "node"), "c");

    // ---- session ID (asked on a node that does not own it)
    let r = ctl(c, "a", &["session", &s.sub_b.session_id]).await;
    r.expect_code(0);
    assert_eq!(
        r.value_of("session"),
        Some(s.sub_b.session_id.clone()),
        "{r:#?}"
    );
    assert_eq!(r.value_of("node").as_deref(), Some("b"), "{r:#?}");
    assert_eq!(r.value_of("connected").as_deref(), Some("yes"), "{r:#?}");
    let header = r
        .lines()
        .into_iter()
        .find(|l| l.first().map(String::as_str) == Some("MID"))
        .unwrap_or_else(|| panic!("a track table: {r:#?}"));
    assert_eq!(
        header,
        ["MID", "LOCATION", "TRACK", "FROM SESSION", "STATUS"]
    );
    for name in [audio, video] {
        let row = r
            .lines()
            .into_iter()
            .find(|l| l.get(2).map(String::as_str) == Some(name))
            .unwrap_or_else(|| panic!("a row for {name}: {r:#?}"));
        assert_eq!(row[1..], ["remote", name, &pub_id, "active"], "{r:#?}");
    }
    let v = ctl(c, "c", &["session", &pub_id, "--json"])
        .await
        .expect_code(0)
        .json();
    assert_eq!(str_field(&v, "sessionId"), pub_id);
    assert_eq!(str_field(&v, "node"), "a");
    assert!(bool_field(&v, "connected"));
    assert_eq!(array(&v, "tracks").len(), 2, "{v}");
    // A session id with a's tag that a does not hold; and a malformed id.
    let missing = format!("{}{}", c.node("a").tag(), &random_hex32()[8..]);
    for id in [missing.as_str(), "not-a-session"] {
        let r = ctl(c, "b", &["session", id]).await;
        r.expect_code(1);
        assert!(r.stdout.is_empty(), "{r:#?}");
        if !r.stderr.contains("HTTP 404: not_found") {
            faults.push(format!(
                "GET /admin/sessions/{id} on b (a session of a that does not exist, or a bad \
                 id): expected 404 not_found, trackmeshctl printed: {}",
                r.stderr.trim()
            ));
        }
    }

    // ---- tracks (publications, with where they are relayed)
    let v = poll_until(
        "the tracks view to show the relays to b and c",
        SETTLE,
        STEP,
        async || {
            let j = ctl(c, "b", &["tracks", "--json"]).await;
            ensure!(j.code == 0, "{j:#?}");
            let v = j.json();
            for t in array(&v, "tracks") {
                ensure!(strings(t, "relayedTo") == set(&["b", "c"]), "{v}");
            }
            Ok(v)
        },
    )
    .await
    .expect("relayedTo")
    .0;
    let tracks = array(&v, "tracks");
    assert_eq!(tracks.len(), 2, "the publisher's two tracks: {v}");
    for (name, kind) in [(audio, "audio"), (video, "video")] {
        let t = tracks
            .iter()
            .find(|t| t["trackName"] == name)
            .unwrap_or_else(|| panic!("{name} listed: {v}"));
        assert_eq!(str_field(t, "node"), "a", "{t}");
        assert_eq!(str_field(t, "sessionId"), pub_id, "{t}");
        assert_eq!(str_field(t, "kind"), kind, "{t}");
        assert_eq!(
            u64_field(t, "subscribers"),
            0,
            "no subscriber on a itself: {t}"
        );
    }
    let r = ctl(c, "c", &["tracks"]).await;
    r.expect_code(0);
    eprintln!("$ trackmeshctl tracks\n{}", r.stdout);
    assert_eq!(
        r.header(),
        [
            "NODE",
            "SESSION",
            "TRACK",
            "KIND",
            "SUBSCRIBERS",
            "RELAYED TO"
        ],
        "{r:#?}"
    );
    let rows = r.rows_starting("a");
    assert_eq!(rows.len(), 2, "{r:#?}");
    assert_eq!(
        rows[0],
        ["a", pub_id.as_str(), audio, "audio", "0", "b,c"],
        "{r:#?}"
    );
    assert_eq!(
        rows[1],
        ["a", pub_id.as_str(), video, "video", "0", "b,c"],
        "{r:#?}"
    );

    // ---- locate: owner a; b (same region) and c (us, its region's only node, so its hub)
    // pull it from a.
    let target = format!("{pub_id}/{video}");
    let v = ctl(c, "b", &["locate", &target, "--json"])
        .await
        .expect_code(0)
        .json();
    assert_eq!(str_field(&v, "sessionId"), pub_id);
    assert_eq!(str_field(&v, "trackName"), video);
    assert_eq!(str_field(&v, "owner"), "a", "{v}");
    assert_eq!(strings(&v, "subscribingNodes"), set(&["b", "c"]), "{v}");
    let hubs: BTreeSet<(String, String)> = array(&v, "hubs")
        .iter()
        .map(|h| {
            (
                str_field(h, "region").to_string(),
                str_field(h, "node").to_string(),
            )
        })
        .collect();
    let r = ctl(c, "a", &["locate", &target]).await;
    r.expect_code(0);
    assert_eq!(r.value_of("track"), Some(target.clone()), "{r:#?}");
    assert_eq!(r.value_of("owner").as_deref(), Some("a"), "{r:#?}");
    let subscribing = r.value_of("subscribing nodes").unwrap_or_default();
    assert_eq!(
        subscribing.split(',').collect::<BTreeSet<_>>(),
        ["b", "c"].into_iter().collect(),
        "{r:#?}"
    );
    // A track of a session whose node is not in the cluster: no owner, exit 1.
    let r = ctl(c, "a", &["locate", "0badcafe00000000000000000000000a/x"]).await;
    r.expect_code(1);
    assert_eq!(r.value_of("owner").as_deref(), Some("-"), "{r:#?}");
    // Hubs are where the track enters another region: the nodes outside the owner's region that
    // pull it straight from the owner. b shares a's region (a direct pull, no hub); c is us's hub.
    let want: BTreeSet<(String, String)> = [("us", "c")]
        .into_iter()
        .map(|(r, n)| (r.to_string(), n.to_string()))
        .collect();
    if hubs != want {
        faults.push(format!(
            "GET /admin/locate/{target}: hubs should be the nodes of other regions pulling it \
             from the owner ({want:?}), got {v}"
        ));
    }
    assert!(
        faults.is_empty(),
        "the node deviates from the contract:\n{}",
        faults.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_environment() {
    let _serial = serial().await;
    let c = Cluster::start(&[("a", "eu"), ("b", "eu")])
        .await
        .expect("cluster");
    let url = c.node("a").http_url();
    let sid = format!("{}{}", c.node("a").tag(), &random_hex32()[8..]);
    let locate = format!("{sid}/cam");
    let commands: [&[&str]; 10] = [
        &["members"],
        &["status"],
        &["status", "b"],
        &["sessions"],
        &["sessions", "--node", "b"],
        &["session", &sid],
        &["tracks"],
        &["locate", &locate],
        &["drain", "b"],
        &["undrain", "b"],
    ];
    for token in [Some("wrong-token"), None] {
        for args in commands {
            let r = ctl_env(&url, token, &[], args).await;
            r.expect_code(4);
            assert!(r.stderr.starts_with("trackmeshctl: unauthorized"), "{r:#?}");
            assert!(
                r.stderr.contains("--token") && r.stderr.contains("TRACKMESH_ADMIN_TOKEN"),
                "a hint about the token: {r:#?}"
            );
            assert!(r.stdout.is_empty(), "{r:#?}");
        }
    }
    // The wrong token did not drain b.
    let v = ctl(&c, "a", &["status", "b", "--json"])
        .await
        .expect_code(0)
        .json();
    assert!(!bool_field(&v, "draining"), "{v}");

    // TRACKMESH_NODE and TRACKMESH_ADMIN_TOKEN instead of the options.
    let r = ctl_env(
        "",
        None,
        &[
            ("TRACKMESH_NODE", &c.node("b").http_url()),
            ("TRACKMESH_ADMIN_TOKEN", c.admin_token()),
        ],
        &["status", "--json"],
    )
    .await;
    assert_eq!(str_field(&r.expect_code(0).json(), "nodeId"), "b");
    // The option wins over the environment.
    let r = ctl_env(
        &url,
        None,
        &[
            ("TRACKMESH_NODE", "http://127.0.0.1:1"),
            ("TRACKMESH_ADMIN_TOKEN", c.admin_token()),
        ],
        &["status", "--json"],
    )
    .await;
    assert_eq!(str_field(&r.expect_code(0).json(), "nodeId"), "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_health_and_undrain() {
    let _serial = serial().await;
    let c = Cluster::start(&[("a", "eu"), ("b", "eu")])
        .await
        .expect("cluster");
    let b_url = c.node("b").http_url();
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("http client");
    let readyz = async |url: &str| -> anyhow::Result<(u16, Value)> {
        let r = http.get(format!("{url}/readyz")).send().await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    };

    // Ready to start with.
    for name in ["a", "b"] {
        let r = ctl_env(&c.node(name).http_url(), None, &[], &["health"]).await;
        r.expect_code(0);
        assert_eq!(r.value_of("ready").as_deref(), Some("yes"), "{r:#?}");
        assert_eq!(r.value_of("readyz").as_deref(), Some("200"), "{r:#?}");
    }
    let v = ctl_env(&b_url, None, &[], &["health", "--json"])
        .await
        .expect_code(0)
        .json();
    assert_eq!(v["ready"], true, "{v}");
    assert_eq!(v["readyz"]["status"], 200, "{v}");
    assert_eq!(v["readyz"]["body"]["ready"], true, "{v}");
    assert_eq!(v["healthz"]["status"], 200, "{v}");
    assert_eq!(v["healthz"]["body"]["status"], "ok", "{v}");

    // drain b, asked on a.
    let r = ctl(&c, "a", &["drain", "b"]).await;
    r.expect_code(0);
    assert!(r.stdout.starts_with("node b is draining"), "{r:#?}");
    let v = ctl(&c, "a", &["drain", "b", "--json"])
        .await
        .expect_code(0)
        .json();
    assert_eq!(str_field(&v, "nodeId"), "b");
    assert!(bool_field(&v, "draining"), "{v}");

    let r = ctl_env(&b_url, None, &[], &["health"]).await;
    r.expect_code(1);
    assert_eq!(r.value_of("ready").as_deref(), Some("no"), "{r:#?}");
    assert_eq!(
        r.value_of("readyz").as_deref(),
        Some("503 temporarily_unavailable_error: draining"),
        "{r:#?}"
    );
    assert!(r.stderr.contains("not ready"), "{r:#?}");
    let v = ctl_env(&b_url, None, &[], &["health", "--json"])
        .await
        .expect_code(1)
        .json();
    assert_eq!(v["ready"], false, "{v}");
    assert_eq!(v["readyz"]["status"], 503, "{v}");
    assert_eq!(
        v["readyz"]["body"]["errorCode"], "temporarily_unavailable_error",
        "{v}"
    );
    assert_eq!(v["healthz"]["status"], 200, "still serving: {v}");
    let (status, body) = readyz(&b_url).await.expect("GET /readyz of b");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["errorCode"], "temporarily_unavailable_error", "{body}");
    assert_eq!(body["errorDescription"], "draining", "{body}");
    // a is not affected.
    ctl_env(&c.node("a").http_url(), None, &[], &["health"])
        .await
        .expect_code(0);

    // A draining node refuses new sessions.
    let (status, body) = c
        .client("b")
        .raw(reqwest::Method::POST, "sessions/new", None)
        .await
        .expect("sessions/new on b");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["errorCode"], "temporarily_unavailable_error", "{body}");

    // status and members show it.
    let r = ctl(&c, "b", &["status"]).await;
    assert_eq!(
        r.expect_code(0).value_of("draining").as_deref(),
        Some("yes"),
        "{r:#?}"
    );
    poll_until("a's members to show b draining", SETTLE, STEP, async || {
        let r = ctl(&c, "a", &["members"]).await;
        let rows = r.rows_starting("b");
        if rows.len() == 1 && rows[0].get(3).map(String::as_str) == Some("draining") {
            Ok(())
        } else {
            bail!("{r:#?}")
        }
    })
    .await
    .expect("b draining in members");
    let v = ctl(&c, "a", &["members", "--json"])
        .await
        .expect_code(0)
        .json();
    let b = array(&v, "members")
        .iter()
        .find(|m| m["nodeId"] == "b")
        .cloned()
        .unwrap_or_default();
    assert!(bool_field(&b, "draining") && bool_field(&b, "live"), "{v}");

    // undrain b: ready again.
    let r = ctl(&c, "a", &["undrain", "b"]).await;
    r.expect_code(0);
    assert!(r.stdout.starts_with("node b is not draining"), "{r:#?}");
    let v = ctl(&c, "b", &["undrain", "b", "--json"])
        .await
        .expect_code(0)
        .json();
    assert_eq!(str_field(&v, "nodeId"), "b");
    assert!(!bool_field(&v, "draining"), "{v}");
    ctl_env(&b_url, None, &[], &["health"]).await.expect_code(0);
    let (status, body) = readyz(&b_url).await.expect("GET /readyz of b");
    assert_eq!((status, body), (200, serde_json::json!({"ready": true})));
    let (status, body) = c
        .client("b")
        .raw(reqwest::Method::POST, "sessions/new", None)
        .await
        .expect("sessions/new on b");
    assert_eq!(status, 201, "{body}");

    // Draining a node that does not exist is a negative answer.
    let r = ctl(&c, "a", &["drain", "no-such-node"]).await;
    r.expect_code(1);
    assert!(r.stderr.contains("not_found"), "{r:#?}");
}

/// A stub "node" that answers every request with `status` and `body`, for `answers` requests.
fn stub_node(status: &'static str, body: Vec<u8>, answers: usize) -> String {
    use std::io::{Read, Write};
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    std::thread::spawn(move || {
        for _ in 0..answers {
            let Ok((mut s, _)) = l.accept() else { return };
            let mut head = [0u8; 4096];
            let _ = s.read(&mut head);
            let _ = s.write_all(
                format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            let _ = s.write_all(&body);
        }
    });
    url
}

/// What a rogue or broken node answers cannot take over the operator's terminal or memory:
/// control characters in its error are not printed, and an endless answer is refused.
#[tokio::test]
async fn a_nodes_answer_is_printed_safely_and_read_bounded() {
    let _serial = serial().await;
    let escape = serde_json::json!({
        "errorCode": "bad\u{1b}]0;owned\u{7}",
        "errorDescription": format!("\u{1b}[2J{}", "x".repeat(5000)),
    });
    let url = stub_node(
        "500 Internal Server Error",
        escape.to_string().into_bytes(),
        1,
    );
    let r = ctl_env(&url, Some("t"), &[], &["members"]).await;
    assert!(r.code != 0, "{r:#?}");
    assert!(
        !r.stderr.contains('\u{1b}') && !r.stderr.contains('\u{7}'),
        "{r:#?}"
    );
    assert!(r.stderr.len() < 2000, "{} bytes of error", r.stderr.len());

    let huge = format!("{{\"members\":\"{}\"}}", "y".repeat(20 << 20)).into_bytes();
    let url = stub_node("200 OK", huge, 1);
    let r = ctl_env(&url, Some("t"), &[], &["members"]).await;
    assert!(r.code != 0, "{r:#?}");
    assert!(r.stderr.contains("an answer over 16 MiB"), "{}", r.stderr);
}
