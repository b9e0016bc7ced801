//! Test nodes: in this process by default (a [`trackmesh_node::Node`] on a runtime and thread of
//! its own, many per test binary), or as a child process of the `trackmesh` binary where a
//! process is the point (signals, its own log and stdout, network namespaces).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rand::Rng;
use serde_json::Value;

use clap::Parser;
use trackmesh_node::Node;
use trackmesh_node::cluster::relay::RelayTestLoss;
use trackmesh_node::config::{Config, Flags};

use crate::api::CallsClient;
use crate::node_log::{self, NodeLog};
pub use trackmesh_testkit::ports::{free_udp_addr, free_udp_tcp_port};

/// How long we wait for the `trackmesh ready ...` line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound on stdout lines read before the ready line.
const MAX_LINES_BEFORE_READY: usize = 1000;

/// A node under test, started with the same command-line arguments either way. It is killed
/// (stopped at once, no drain) when this value is dropped.
pub struct TestNode {
    run: Run,
    http: SocketAddr,
    /// `https` when the node serves HTTPS (`--tls-cert`), else `http`.
    scheme: &'static str,
    media: SocketAddr,
    app_id: String,
    app_secret: String,
    /// Every `key=value` field of the ready line.
    ready: BTreeMap<String, String>,
    /// Bearer token for `/admin/*`, when the node was started with `--admin-token`.
    admin_token: Option<String>,
    /// Killed by the test.
    killed: bool,
}

/// How a [`TestNode`] runs.
enum Run {
    /// A child process of the node binary.
    Process {
        child: Child,
        stderr_path: PathBuf,
        stdout_lines: mpsc::Receiver<String>,
    },
    /// A [`trackmesh_node::Node`] in this process, on its own thread and runtime.
    InProcess(InProcess),
}

/// The thread that runs an in-process node until told to stop.
struct InProcess {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    liveness: trackmesh_node::liveness::Liveness,
    /// The node's engine task, for tests that drive it directly.
    engine: trackmesh_node::workers::EngineHandle,
    log: NodeLog,
}

impl InProcess {
    /// Stops the node at once, as a kill would (no drain, peers are not told), and waits until
    /// its runtime is gone and its ports are closed.
    fn kill(&mut self) -> anyhow::Result<()> {
        self.stop.take();
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow!("the in-process node's thread panicked")),
            None => Ok(()),
        }
    }

    fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished()) && self.liveness.stopped().is_empty()
    }
}

/// How to start one cluster node (see [`TestNode::start_cluster_node`]).
#[derive(Clone, Debug, Default)]
pub struct ClusterOpts {
    /// `--node-id` (empty: let the node generate one).
    pub node_id: String,
    /// `--region` (empty: the node's default).
    pub region: String,
    /// `--seed`, one per address.
    pub seeds: Vec<SocketAddr>,
    /// `--cluster-secret` (empty: the node's default).
    pub secret: String,
    /// `--admin-token` (empty: none, so `/admin/*` answers 404).
    pub admin_token: String,
    /// `--gossip` address; None: a free 127.0.0.1 UDP port is chosen.
    pub gossip: Option<SocketAddr>,
    /// `--relay` address; None: `127.0.0.1:0`.
    pub relay: Option<SocketAddr>,
    /// The app (id, secret); None: a random one. Nodes of one cluster should share it.
    pub app: Option<(String, String)>,
    /// More command-line arguments, appended last.
    pub extra: Vec<String>,
    /// Run inside a network namespace (see [`Place`]), as a process; None: on the host, bound to
    /// 127.0.0.1.
    pub place: Option<Place>,
    /// Run as a child process of the node binary (else in this process, unless placed).
    pub process: bool,
    /// In-process nodes only: the relay's test hook that drops outgoing media datagrams on
    /// purpose (no command-line flag sets it).
    pub relay_test_loss: Option<RelayTestLoss>,
}

/// Where a node process runs: inside network namespace `netns` (started through
/// `ip netns exec`), bound to `ip` there. A placed cluster node's gossip and relay default to the
/// node's own well-known ports on `ip` ([`PLACED_GOSSIP_PORT`], [`PLACED_RELAY_PORT`]): the
/// namespace is the node's alone, so they are free.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    pub netns: String,
    pub ip: IpAddr,
}

/// Gossip port of a placed node.
pub const PLACED_GOSSIP_PORT: u16 = 7702;
/// Relay (QUIC) port of a placed node.
pub const PLACED_RELAY_PORT: u16 = 7703;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

static NODE_BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Use `path` as the node binary for the rest of this process (a tool's `--node-bin`), over
/// env `TRACKMESH_BIN`. False when one was already set.
pub fn set_node_binary(path: PathBuf) -> bool {
    NODE_BINARY.set(path).is_ok()
}

static NODE_CPUS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Start every node process of the rest of this process on these CPUs (a `taskset -c` list,
/// as `0` or `0,2-3`): a load generator keeps its own clients off the nodes' cores. False when
/// a list was already set.
pub fn set_node_cpus(list: String) -> bool {
    NODE_CPUS.set(list).is_ok()
}

/// Where the node binary is: [`set_node_binary`], else env `TRACKMESH_BIN`, else
/// `<workspace>/target/debug/trackmesh`.
pub fn node_binary() -> PathBuf {
    if let Some(p) = NODE_BINARY.get() {
        return p.clone();
    }
    if let Some(p) = std::env::var_os("TRACKMESH_BIN") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/trackmesh")
}

/// 32 lowercase hex characters, like Calls app and session ids.
pub fn random_hex32() -> String {
    let mut rng = rand::rng();
    (0..16)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

impl TestNode {
    /// Start a node in this process on 127.0.0.1 with ephemeral ports and a random app, plus
    /// `args` (the node's command-line flags).
    pub fn start(args: &[&str]) -> anyhow::Result<TestNode> {
        let app_id = random_hex32();
        let app_secret = random_hex32();
        Self::start_with_app(&app_id, &app_secret, args)
    }

    /// [`TestNode::start`] as a child process of the node binary: for tests that signal it,
    /// read its log or stdout, or count its file descriptors.
    pub fn start_process(args: &[&str]) -> anyhow::Result<TestNode> {
        Self::start_as(&random_hex32(), &random_hex32(), args, true)
    }

    /// Start a node in this process with a given app id and secret, plus `args`.
    pub fn start_with_app(
        app_id: &str,
        app_secret: &str,
        args: &[&str],
    ) -> anyhow::Result<TestNode> {
        Self::start_as(app_id, app_secret, args, false)
    }

    fn start_as(
        app_id: &str,
        app_secret: &str,
        args: &[&str],
        process: bool,
    ) -> anyhow::Result<TestNode> {
        // A node always runs gossip and the relay; their default ports (7702, 7703) are fixed,
        // so give every test node its own unless the caller chose them.
        let has = |flag: &str| {
            args.iter()
                .any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
        };
        let (own_gossip, own_relay) = (!has("--gossip"), !has("--relay"));
        let attempts = if own_gossip { 3 } else { 1 };
        let mut last_err = None;
        for _ in 0..attempts {
            let mut full: Vec<String> = Vec::new();
            if own_gossip {
                full.extend(["--gossip".to_string(), free_udp_addr()?.to_string()]);
            }
            if own_relay {
                full.extend(["--relay".to_string(), "127.0.0.1:0".to_string()]);
            }
            full.extend(args.iter().map(|a| a.to_string()));
            let started = if process {
                Self::spawn(app_id, app_secret, &full, None, None)
            } else {
                Self::in_process(app_id, app_secret, &full, None, None)
            };
            match started {
                Ok(node) => return Ok(node),
                Err(e) if own_gossip && is_early_exit(&e) => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("no attempt to start the node")))
    }

    /// Start a cluster node on 127.0.0.1: HTTP and media on port 0, `--relay 127.0.0.1:0`, and a
    /// free UDP port for gossip (the node does not accept gossip port 0). When the gossip port was
    /// chosen here and the node fails to start, it is retried a few times with a new port. In
    /// this process unless `opts.process` or `opts.place` asks for a process.
    pub fn start_cluster_node(opts: &ClusterOpts) -> anyhow::Result<TestNode> {
        let (app_id, app_secret) = opts
            .app
            .clone()
            .unwrap_or_else(|| (random_hex32(), random_hex32()));
        let placed_gossip = opts
            .place
            .as_ref()
            .map(|p| SocketAddr::new(p.ip, PLACED_GOSSIP_PORT));
        let fixed_gossip = opts.gossip.or(placed_gossip);
        let attempts = if fixed_gossip.is_some() { 1 } else { 3 };
        let mut last_err = None;
        for _ in 0..attempts {
            let gossip = match fixed_gossip {
                Some(g) => g,
                None => free_udp_addr()?,
            };
            let relay = opts.relay.unwrap_or_else(|| match &opts.place {
                Some(p) => SocketAddr::new(p.ip, PLACED_RELAY_PORT),
                None => SocketAddr::new(LOOPBACK, 0),
            });
            let mut args: Vec<String> = vec![
                "--gossip".into(),
                gossip.to_string(),
                "--relay".into(),
                relay.to_string(),
            ];
            let mut opt = |flag: &str, v: &str| {
                if !v.is_empty() {
                    args.push(flag.into());
                    args.push(v.into());
                }
            };
            opt("--node-id", &opts.node_id);
            opt("--region", &opts.region);
            opt("--cluster-secret", &opts.secret);
            opt("--admin-token", &opts.admin_token);
            for seed in &opts.seeds {
                args.push("--seed".into());
                args.push(seed.to_string());
            }
            args.extend(opts.extra.iter().cloned());
            let token = (!opts.admin_token.is_empty()).then(|| opts.admin_token.clone());
            if opts.relay_test_loss.is_some() && (opts.process || opts.place.is_some()) {
                bail!("the relay test hook exists only in in-process nodes");
            }
            let started = if opts.process || opts.place.is_some() {
                Self::spawn(&app_id, &app_secret, &args, token, opts.place.as_ref())
            } else {
                Self::in_process(&app_id, &app_secret, &args, token, opts.relay_test_loss)
            };
            match started {
                Ok(node) => return Ok(node),
                // Only an early exit (e.g. the gossip port got taken) is worth another port.
                Err(e) if fixed_gossip.is_none() && is_early_exit(&e) => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("no attempt to start the node")))
    }

    /// Runs [`trackmesh_node::Node::start`] with the configuration these command-line `args`
    /// give the binary, on a thread and multi-thread runtime of its own so that a test's own
    /// runtime (often single-threaded) never starves it.
    fn in_process(
        app_id: &str,
        app_secret: &str,
        args: &[String],
        admin_token: Option<String>,
        relay_test_loss: Option<RelayTestLoss>,
    ) -> anyhow::Result<TestNode> {
        let app = format!("{app_id}:{app_secret}");
        // `--http` in `args` (a node restarted on the same port) replaces the ephemeral one.
        let http = if args.iter().any(|a| a == "--http") {
            Vec::new()
        } else {
            vec!["--http".to_string(), "127.0.0.1:0".to_string()]
        };
        // Likewise `--media` (a dual-stack node).
        let media = if args.iter().any(|a| a == "--media") {
            Vec::new()
        } else {
            vec!["--media".to_string(), "127.0.0.1:0".to_string()]
        };
        // Two engine workers unless the test chose: every suite runs sessions on both, as a
        // multi-core node does (the CI machine has two cores).
        let workers = if args.iter().any(|a| a == "--workers") {
            Vec::new()
        } else {
            vec!["--workers".to_string(), "2".to_string()]
        };
        let argv = ["trackmesh"]
            .into_iter()
            .map(str::to_string)
            .chain(http)
            .chain(media)
            .chain(workers)
            .chain(["--app".to_string(), app])
            .chain(args.iter().cloned());
        let flags = Flags::try_parse_from(argv).context("the node's flags")?;
        let mut cfg = Config::from_flags(flags).context("the node's configuration")?;
        cfg.relay_test_loss = relay_test_loss;
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let log = NodeLog::default();
        let dispatch = log.dispatch();
        let thread = std::thread::Builder::new()
            .name(format!("node-{}", cfg.node_id))
            .spawn(move || run_in_process(cfg, &dispatch, ready_tx, stopped))
            .context("starting the node's thread")?;
        let started = match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(started)) => started,
            Ok(Err(e)) => {
                let _ = thread.join();
                let log = log.text();
                return Err(e.context(format!("{EARLY_EXIT}; node log:\n{log}")));
            }
            Err(e) => bail!("the node did not start within {READY_TIMEOUT:?}: {e}"),
        };
        let ready: BTreeMap<String, String> = [
            ("http", started.http.to_string()),
            ("media", started.media.to_string()),
            ("gossip", started.gossip.to_string()),
            ("relay", started.relay.to_string()),
            ("node", started.node_id),
            ("tag", started.tag),
            ("region", started.region),
            ("scheme", scheme.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(TestNode {
            run: Run::InProcess(InProcess {
                stop: Some(stop),
                thread: Some(thread),
                liveness: started.liveness,
                engine: started.engine,
                log,
            }),
            http: started.http,
            scheme,
            media: started.media,
            app_id: app_id.to_string(),
            app_secret: app_secret.to_string(),
            ready,
            admin_token,
            killed: false,
        })
    }

    fn spawn(
        app_id: &str,
        app_secret: &str,
        args: &[String],
        admin_token: Option<String>,
        place: Option<&Place>,
    ) -> anyhow::Result<TestNode> {
        let bin = node_binary();
        if !bin.exists() {
            bail!(
                "node binary {} not found (build it with `cargo build -p trackmesh-node` or set TRACKMESH_BIN)",
                bin.display()
            );
        }
        let stderr_path =
            std::env::temp_dir().join(format!("trackmesh-test-{}.log", random_hex32()));
        let stderr_file = std::fs::File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;

        let app = format!("{app_id}:{app_secret}");
        let ip = place.map_or(LOOPBACK, |p| p.ip);
        let any_port = SocketAddr::new(ip, 0).to_string();
        // `ip netns exec NS` and `taskset -c CPUS` exec the node in place, so the child's pid
        // is the node's.
        let mut program: Vec<std::ffi::OsString> = Vec::new();
        if let Some(p) = place {
            program.extend(["ip", "netns", "exec", p.netns.as_str()].map(Into::into));
        }
        if let Some(cpus) = NODE_CPUS.get() {
            program.extend(["taskset", "-c", cpus.as_str()].map(Into::into));
        }
        program.push(bin.clone().into());
        let mut cmd = Command::new(&program[0]);
        cmd.args(&program[1..]);
        cmd.args(["--http", &any_port, "--media", &any_port, "--app", &app])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr_file));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;

        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("child has no stdout pipe"))?;
        let (tx, rx) = mpsc::channel::<String>();
        // Keep reading stdout for the life of the child so it never blocks on a full pipe.
        std::thread::spawn(move || {
            let reader = BufReader::new(stdout);
            for line in reader.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Receiver gone: keep draining silently.
                    continue;
                }
            }
        });

        let mut node = TestNode {
            run: Run::Process {
                child,
                stderr_path,
                stdout_lines: rx,
            },
            http: SocketAddr::new(ip, 0),
            scheme: "http",
            media: SocketAddr::new(ip, 0),
            app_id: app_id.to_string(),
            app_secret: app_secret.to_string(),
            ready: BTreeMap::new(),
            admin_token,
            killed: false,
        };
        match node.wait_ready() {
            Ok(fields) => {
                let (http, media) = addrs_of(&fields)
                    .ok_or_else(|| anyhow!("ready line without http=/media=: {fields:?}"))?;
                node.http = http;
                node.media = media;
                if fields.get("scheme").map(String::as_str) == Some("https") {
                    node.scheme = "https";
                }
                node.ready = fields;
                Ok(node)
            }
            Err(e) => {
                let log = node.log();
                Err(e.context(format!("node did not become ready; node stderr:\n{log}")))
            }
        }
    }

    fn wait_ready(&mut self) -> anyhow::Result<BTreeMap<String, String>> {
        let Run::Process {
            child,
            stdout_lines,
            ..
        } = &mut self.run
        else {
            bail!("an in-process node has no ready line to wait for");
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut seen = Vec::new();
        for _ in 0..MAX_LINES_BEFORE_READY {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "timed out after {READY_TIMEOUT:?} waiting for the ready line; stdout so far: {seen:?}"
                );
            }
            match stdout_lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(fields) = parse_ready_fields(&line)
                        && addrs_of(&fields).is_some()
                    {
                        return Ok(fields);
                    }
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!(
                        "timed out after {READY_TIMEOUT:?} waiting for the ready line; stdout so far: {seen:?}"
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.try_wait().ok().flatten();
                    bail!(
                        "node closed stdout before the ready line (exit status {status:?}); stdout: {seen:?}"
                    );
                }
            }
        }
        bail!("no ready line within {MAX_LINES_BEFORE_READY} stdout lines: {seen:?}")
    }

    /// `http://IP:PORT`, or `https://IP:PORT` when the node serves HTTPS.
    pub fn http_url(&self) -> String {
        format!("{}://{}", self.scheme, self.http)
    }

    /// `http(s)://IP:PORT/v1/apps/<appId>`
    pub fn base_url(&self) -> String {
        format!("{}/v1/apps/{}", self.http_url(), self.app_id)
    }

    /// `http(s)://IP:PORT/apps/<appId>` (the prefix without `/v1`, used by Orange Meets).
    pub fn base_url_no_v1(&self) -> String {
        format!("{}/apps/{}", self.http_url(), self.app_id)
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    pub fn media_addr(&self) -> SocketAddr {
        self.media
    }

    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    pub fn app_secret(&self) -> &str {
        &self.app_secret
    }

    /// The node process's pid. Only a process node has one of its own: panics on an in-process
    /// node (start it with [`TestNode::start_process`] or `ClusterOpts::process`).
    pub fn pid(&self) -> u32 {
        match &self.run {
            Run::Process { child, .. } => child.id(),
            Run::InProcess(_) => panic!("pid() of an in-process node: start it as a process"),
        }
    }

    /// A Calls API client for this node's app.
    pub fn client(&self) -> CallsClient {
        CallsClient::new(&self.base_url(), &self.app_secret)
    }

    /// The node's log so far: a process's stderr, or what an in-process node's threads logged
    /// (plain text, the same filter).
    pub fn log(&self) -> String {
        match &self.run {
            Run::Process { stderr_path, .. } => {
                std::fs::read_to_string(stderr_path).unwrap_or_default()
            }
            Run::InProcess(node) => node.log.text(),
        }
    }

    /// Stdout lines printed after the ready line (non-blocking); none for an in-process node.
    pub fn stdout_since_ready(&self) -> Vec<String> {
        match &self.run {
            Run::Process { stdout_lines, .. } => stdout_lines.try_iter().take(10_000).collect(),
            Run::InProcess(_) => Vec::new(),
        }
    }

    /// Is the node still running? A process: it has not exited. In process: it was not killed
    /// and its engine, relay and gossip all still run (what `/healthz` checks).
    pub fn is_running(&mut self) -> bool {
        match &mut self.run {
            Run::Process { child, .. } => matches!(child.try_wait(), Ok(None)),
            Run::InProcess(node) => node.is_running(),
        }
    }

    /// Kill the node: SIGKILL and reap a process; stop an in-process node at once (no drain,
    /// peers not told, sockets closed), which is what other nodes see of a killed process.
    /// Idempotent.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if !self.killed {
            match &mut self.run {
                Run::Process { child, .. } => {
                    child.kill().context("SIGKILL of the node")?;
                    child.wait().context("reaping the node")?;
                }
                Run::InProcess(node) => node.kill()?,
            }
            self.killed = true;
        }
        Ok(())
    }

    /// Was the node killed by the test?
    pub fn is_killed(&self) -> bool {
        self.killed
    }

    /// Does this node run as a child process (else in this process)?
    pub fn is_process(&self) -> bool {
        matches!(self.run, Run::Process { .. })
    }

    /// SIGSTOP the node process (it freezes: no gossip, no HTTP, no media). Process nodes only.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("STOP")
    }

    /// SIGCONT a node paused with [`TestNode::pause`].
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("CONT")
    }

    /// The exit code of a process node that has exited (None while it runs, or when a signal
    /// ended it). Process nodes only.
    pub fn exit_code(&mut self) -> anyhow::Result<Option<i32>> {
        let Run::Process { child, .. } = &mut self.run else {
            bail!("an exit code needs a process node (ClusterOpts::process or start_process)");
        };
        Ok(child
            .try_wait()
            .context("polling the node process")?
            .and_then(|s| s.code()))
    }

    /// Sends signal `sig` (`INT`, `TERM`, `HUP`, ...) to the node process. Process nodes only.
    pub fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let Run::Process { child, .. } = &self.run else {
            bail!("kill -{sig} needs a process node (ClusterOpts::process or start_process)");
        };
        // `unsafe` is forbidden in this workspace, so no libc::kill: use kill(1).
        let status = Command::new("kill")
            .args([format!("-{sig}"), child.id().to_string()])
            .status()
            .with_context(|| format!("running kill -{sig}"))?;
        if !status.success() {
            bail!("kill -{sig} {} failed: {status}", child.id());
        }
        Ok(())
    }

    /// A field of the ready line (`http`, `media`, `gossip`, `relay`, `node`, `tag`, `region`...).
    pub fn ready_field(&self, key: &str) -> Option<&str> {
        self.ready.get(key).map(String::as_str)
    }

    /// All `key=value` fields of the ready line.
    pub fn ready_fields(&self) -> &BTreeMap<String, String> {
        &self.ready
    }

    fn ready_addr(&self, key: &str) -> anyhow::Result<SocketAddr> {
        let v = self
            .ready_field(key)
            .ok_or_else(|| anyhow!("ready line has no {key}=: {:?}", self.ready))?;
        v.parse()
            .with_context(|| format!("ready line {key}={v} is not IP:PORT"))
    }

    /// The gossip address from the ready line.
    pub fn gossip_addr(&self) -> anyhow::Result<SocketAddr> {
        self.ready_addr("gossip")
    }

    /// The relay (QUIC) address from the ready line.
    pub fn relay_addr(&self) -> anyhow::Result<SocketAddr> {
        self.ready_addr("relay")
    }

    /// The node id from the ready line (`node=`), or "" when absent.
    pub fn node_id(&self) -> &str {
        self.ready_field("node").unwrap_or_default()
    }

    /// The node's 8-hex tag from the ready line (`tag=`), or "" when absent.
    pub fn tag(&self) -> &str {
        self.ready_field("tag").unwrap_or_default()
    }

    /// The region from the ready line (`region=`), or "" when absent.
    pub fn region(&self) -> &str {
        self.ready_field("region").unwrap_or_default()
    }

    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref()
    }

    /// The engine task of an in-process node, for what no API reaches yet (marking a session
    /// for audio egress). Calls on it work from any runtime.
    pub fn engine(&self) -> anyhow::Result<trackmesh_node::workers::EngineHandle> {
        match &self.run {
            Run::InProcess(p) => Ok(p.engine.clone()),
            Run::Process { .. } => bail!("a node process's engine is not reachable from the test"),
        }
    }

    /// `GET /metrics` as `name{labels}` → value (the Prometheus text format).
    pub async fn scrape(&self) -> anyhow::Result<BTreeMap<String, f64>> {
        let text = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()?
            .get(format!("{}/metrics", self.http_url()))
            .send()
            .await
            .context("GET /metrics")?
            .text()
            .await
            .context("reading /metrics")?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect())
    }

    /// `GET /admin/<path>` with the admin bearer token: (HTTP status, JSON body or Null).
    /// `path` is `cluster`, `/admin/cluster`, ...
    pub async fn admin_raw(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let path = path.trim_start_matches('/');
        let path = path.strip_prefix("admin/").unwrap_or(path);
        let url = format!("{}/admin/{path}", self.http_url());
        let http = reqwest::Client::builder()
            .timeout(ADMIN_TIMEOUT)
            .no_proxy()
            .build()
            .context("building an HTTP client")?;
        let mut req = http.get(&url);
        if let Some(t) = &self.admin_token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.with_context(|| format!("GET {url}"))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .with_context(|| format!("reading body of GET {url}"))?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// `GET /admin/<path>` with the admin bearer token; the JSON body of a 2xx answer.
    pub async fn admin(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.admin_raw(path).await?;
        if !(200..300).contains(&status) {
            bail!(
                "GET /admin/{path} on {} -> HTTP {status}: {body}",
                self.http
            );
        }
        Ok(body)
    }
}

/// Context of an in-process node that failed to start, worded as a process's early exit.
const EARLY_EXIT: &str = "the in-process node stopped before the ready line";

/// The node exited before its ready line (e.g. a port taken between choosing and binding it).
fn is_early_exit(e: &anyhow::Error) -> bool {
    format!("{e:#}").contains("before the ready line")
}

/// What an in-process node's thread reports once the node runs.
struct Started {
    http: SocketAddr,
    media: SocketAddr,
    gossip: SocketAddr,
    relay: SocketAddr,
    node_id: String,
    tag: String,
    region: String,
    liveness: trackmesh_node::liveness::Liveness,
    engine: trackmesh_node::workers::EngineHandle,
}

/// Most time an in-process node's runtime gets to end its tasks after a kill.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(5);

/// The body of an in-process node's thread: start the node, report, run until told to stop (or
/// until the [`TestNode`] is gone), then stop at once and drop the runtime, closing every socket.
fn run_in_process(
    cfg: Config,
    log: &tracing::Dispatch,
    ready: mpsc::SyncSender<anyhow::Result<Started>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    // This thread and every thread of the node's runtime log into the node's own log.
    let _log = tracing::dispatcher::set_default(log);
    let worker_log = log.clone();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("node-worker")
        .on_thread_start(move || node_log::enter_thread(&worker_log))
        .on_thread_stop(node_log::leave_thread)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(anyhow!(e).context("building the node's runtime")));
            return;
        }
    };
    let node = match rt.block_on(Node::start(cfg)) {
        Ok(node) => node,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let started = Started {
        http: node.http_addr(),
        media: node.media_addr(),
        gossip: node.gossip_addr(),
        relay: node.relay_addr(),
        node_id: node.node_id().to_string(),
        tag: node.tag().to_string(),
        region: node.region().to_string(),
        liveness: node.liveness().clone(),
        engine: node.engine().clone(),
    };
    if ready.send(Ok(started)).is_ok() {
        // Sent or dropped: stop either way.
        let _ = rt.block_on(stop);
    }
    {
        let _in_runtime = rt.enter();
        node.abort();
    }
    rt.shutdown_timeout(RUNTIME_SHUTDOWN);
}

/// Per-request timeout of admin calls.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Every `key=value` field of a `trackmesh ready ...` line (fields may be added over time).
pub fn parse_ready_fields(line: &str) -> Option<BTreeMap<String, String>> {
    let rest = line.trim().strip_prefix("trackmesh ready ")?;
    Some(
        rest.split_whitespace()
            .filter_map(|part| part.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn addrs_of(fields: &BTreeMap<String, String>) -> Option<(SocketAddr, SocketAddr)> {
    let http = fields.get("http")?.parse().ok()?;
    let media = fields.get("media")?.parse().ok()?;
    Some((http, media))
}

/// Parse `trackmesh ready http=IP:PORT media=IP:PORT ...` into (http, media).
pub fn parse_ready_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    addrs_of(&parse_ready_fields(line)?)
}

impl Drop for TestNode {
    fn drop(&mut self) {
        match &mut self.run {
            Run::Process {
                child, stderr_path, ..
            } => {
                if !self.killed {
                    // A paused (SIGSTOPped) child dies from SIGKILL too.
                    let _ = child.kill();
                    let _ = child.wait();
                }
                let stderr_path = stderr_path.clone();
                if std::thread::panicking() {
                    eprintln!(
                        "---- trackmesh node log ({}) ----\n{}\n---- end of node log ----",
                        stderr_path.display(),
                        tail(&self.log(), 200)
                    );
                } else {
                    let _ = std::fs::remove_file(&stderr_path);
                }
            }
            Run::InProcess(node) => {
                if let Err(e) = node.kill() {
                    eprintln!("stopping an in-process node: {e:#}");
                }
                if std::thread::panicking() {
                    eprintln!(
                        "---- trackmesh node log (in-process {}) ----\n{}\n---- end of node log ----",
                        self.http,
                        tail(&node.log.text(), 200)
                    );
                }
            }
        }
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn parses_ready_line() {
        let (h, m) = parse_ready_line("trackmesh ready http=127.0.0.1:4321 media=127.0.0.1:5000")
            .expect("valid line");
        assert_eq!(h.port(), 4321);
        assert_eq!(m.port(), 5000);
        assert!(parse_ready_line("development app id=x secret=y").is_none());
        assert!(parse_ready_line("trackmesh ready http=nonsense media=127.0.0.1:5000").is_none());
    }

    #[test]
    fn parses_cluster_ready_line() {
        let line = "trackmesh ready http=127.0.0.1:4321 media=127.0.0.1:5000 gossip=127.0.0.1:6000 \
                    relay=127.0.0.1:6001 node=a tag=0badcafe region=r1 future=x";
        let f = parse_ready_fields(line).expect("ready line");
        assert_eq!(f.get("gossip").map(String::as_str), Some("127.0.0.1:6000"));
        assert_eq!(f.get("relay").map(String::as_str), Some("127.0.0.1:6001"));
        assert_eq!(f.get("node").map(String::as_str), Some("a"));
        assert_eq!(f.get("tag").map(String::as_str), Some("0badcafe"));
        assert_eq!(f.get("region").map(String::as_str), Some("r1"));
        assert_eq!(f.get("future").map(String::as_str), Some("x"));
        let (h, m) = parse_ready_line(line).expect("addresses");
        assert_eq!((h.port(), m.port()), (4321, 5000));
    }

    #[test]
    fn each_in_process_node_has_a_log_of_its_own() {
        let with_secret =
            TestNode::start(&["--cluster-secret", "s3cret"]).expect("node with a secret");
        let without = TestNode::start(&[]).expect("node without a secret");
        let warning = "no --cluster-secret: using the development secret";
        assert!(without.log().contains(warning), "{}", without.log());
        assert!(
            !with_secret.log().contains(warning),
            "{}",
            with_secret.log()
        );
        assert!(!with_secret.is_process() && !without.is_process());

        // The gossip thread logs into it too: a junk datagram gets one refusal line.
        let gossip = with_secret.gossip_addr().expect("gossip address");
        let junk = UdpSocket::bind("127.0.0.1:0").expect("a UDP socket");
        let refused = "gossip datagram refused";
        for _ in 0..100 {
            junk.send_to(b"not sealed", gossip).expect("send junk");
            if with_secret.log().contains(refused) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(with_secret.log().contains(refused), "{}", with_secret.log());
        assert!(!without.log().contains(refused), "{}", without.log());
    }

    #[test]
    fn a_killed_in_process_node_frees_its_fixed_relay_and_gossip_ports() {
        let opts = ClusterOpts {
            relay: Some(free_udp_addr().expect("a free relay port")),
            gossip: Some(free_udp_addr().expect("a free gossip port")),
            ..ClusterOpts::default()
        };
        let mut first = TestNode::start_cluster_node(&opts).expect("first node");
        first.kill().expect("kill");
        assert!(!first.is_running());
        // `first` is still alive: its kill alone must have released the ports.
        let mut again = TestNode::start_cluster_node(&opts)
            .expect("a node restarts on the killed node's --relay and --gossip ports");
        assert!(again.is_running());
        assert_eq!(
            again.relay_addr().expect("relay address"),
            opts.relay.expect("fixed")
        );
        drop(first);
    }

    #[test]
    fn hex_ids() {
        let id = random_hex32();
        assert_eq!(id.len(), 32);
        assert!(
            id.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }
}
