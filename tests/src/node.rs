//! Spawning the `trackmesh` node binary as a child process for black-box tests.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rand::Rng;

use crate::api::CallsClient;

/// How long we wait for the `trackmesh ready ...` line.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound on stdout lines read before the ready line.
const MAX_LINES_BEFORE_READY: usize = 1000;

/// A node process under test. The child is killed when this value is dropped.
pub struct TestNode {
    child: Child,
    http: SocketAddr,
    media: SocketAddr,
    app_id: String,
    app_secret: String,
    stderr_path: PathBuf,
    stdout_lines: mpsc::Receiver<String>,
}

/// Where the node binary is: env `TRACKMESH_BIN`, else `<workspace>/target/debug/trackmesh`.
pub fn node_binary() -> PathBuf {
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
    /// Start a node on 127.0.0.1 with ephemeral ports and a random app, plus `args`.
    pub fn start(args: &[&str]) -> anyhow::Result<TestNode> {
        let app_id = random_hex32();
        let app_secret = random_hex32();
        Self::start_with_app(&app_id, &app_secret, args)
    }

    /// Start a node with a given app id and secret, plus `args`.
    pub fn start_with_app(
        app_id: &str,
        app_secret: &str,
        args: &[&str],
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
        let mut cmd = Command::new(&bin);
        cmd.args([
            "--http",
            "127.0.0.1:0",
            "--media",
            "127.0.0.1:0",
            "--app",
            &app,
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr_file));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;

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
            child,
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            media: SocketAddr::from(([127, 0, 0, 1], 0)),
            app_id: app_id.to_string(),
            app_secret: app_secret.to_string(),
            stderr_path,
            stdout_lines: rx,
        };
        match node.wait_ready() {
            Ok((http, media)) => {
                node.http = http;
                node.media = media;
                Ok(node)
            }
            Err(e) => {
                let log = node.log();
                Err(e.context(format!("node did not become ready; node stderr:\n{log}")))
            }
        }
    }

    fn wait_ready(&mut self) -> anyhow::Result<(SocketAddr, SocketAddr)> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut seen = Vec::new();
        for _ in 0..MAX_LINES_BEFORE_READY {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "timed out after {READY_TIMEOUT:?} waiting for the ready line; stdout so far: {seen:?}"
                );
            }
            match self.stdout_lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addrs) = parse_ready_line(&line) {
                        return Ok(addrs);
                    }
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!(
                        "timed out after {READY_TIMEOUT:?} waiting for the ready line; stdout so far: {seen:?}"
                    );
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.try_wait().ok().flatten();
                    bail!(
                        "node closed stdout before the ready line (exit status {status:?}); stdout: {seen:?}"
                    );
                }
            }
        }
        bail!("no ready line within {MAX_LINES_BEFORE_READY} stdout lines: {seen:?}")
    }

    /// `http://IP:PORT`
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// `http://IP:PORT/v1/apps/<appId>`
    pub fn base_url(&self) -> String {
        format!("http://{}/v1/apps/{}", self.http, self.app_id)
    }

    /// `http://IP:PORT/apps/<appId>` (the prefix without `/v1`, used by Orange Meets).
    pub fn base_url_no_v1(&self) -> String {
        format!("http://{}/apps/{}", self.http, self.app_id)
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A Calls API client for this node's app.
    pub fn client(&self) -> CallsClient {
        CallsClient::new(&self.base_url(), &self.app_secret)
    }

    /// The node's stderr so far (its log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Stdout lines printed after the ready line (non-blocking).
    pub fn stdout_since_ready(&self) -> Vec<String> {
        self.stdout_lines.try_iter().take(10_000).collect()
    }

    /// Is the child process still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Parse `trackmesh ready http=IP:PORT media=IP:PORT`.
pub fn parse_ready_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.trim().strip_prefix("trackmesh ready ")?;
    let mut http = None;
    let mut media = None;
    for part in rest.split_whitespace() {
        if let Some(v) = part.strip_prefix("http=") {
            http = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("media=") {
            media = v.parse().ok();
        }
    }
    Some((http?, media?))
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- trackmesh node log ({}) ----\n{}\n---- end of node log ----",
                self.stderr_path.display(),
                tail(&self.log(), 200)
            );
        } else {
            let _ = std::fs::remove_file(&self.stderr_path);
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
    fn hex_ids() {
        let id = random_hex32();
        assert_eq!(id.len(), 32);
        assert!(
            id.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }
}
