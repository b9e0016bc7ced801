//! A `nats-server` process for the audio egress tests: Debian's package, installed by
//! `tests/all.sh` when missing. Started on a free 127.0.0.1 port, killed when dropped, and
//! restartable on the same port (the node's client must find it again).

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The server binary (Debian's `nats-server` package).
pub const NATS_SERVER_BIN: &str = "nats-server";
/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

/// A running `nats-server`; killed when dropped.
pub struct NatsServer {
    addr: SocketAddr,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts one on a free 127.0.0.1 port and waits until it accepts connections.
    pub fn start() -> anyhow::Result<NatsServer> {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .context("finding a free TCP port")?
            .port();
        let mut server = NatsServer {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            child: None,
        };
        server.restart()?;
        Ok(server)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// Kills the server (clients see the connection drop) and waits for it to exit.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("killing nats-server")?;
            child.wait().context("waiting for nats-server")?;
        }
        Ok(())
    }

    /// Starts the server again on the same port (stopping it first if it runs).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        let port = self.addr.port().to_string();
        let child = Command::new(NATS_SERVER_BIN)
            .args(["-a", "127.0.0.1", "-p", &port])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {NATS_SERVER_BIN} (Debian package nats-server; tests/all.sh installs it)"
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        // Bounded by START_TIMEOUT.
        loop {
            if TcpStream::connect_timeout(&self.addr, POLL).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().context("nats-server status")?
            {
                bail!("nats-server exited at start ({status}); port {port} taken?");
            }
            if Instant::now() >= deadline {
                bail!(
                    "nats-server did not accept connections on {} within {START_TIMEOUT:?}",
                    self.addr
                );
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
