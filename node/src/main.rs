//! `trackmesh`: runs one node: flags, logging, the lines scripts read, and signals around
//! [`Node`].

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use trackmesh_node::config::{App, Config, Flags, LogFormat};
use trackmesh_node::{Node, dev_app};

fn main() -> ExitCode {
    let flags = Flags::parse();
    let mut cfg = match Config::from_flags(flags) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("trackmesh: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(cfg.log_format);
    let kept = if cfg.dev_app {
        match keep_dev_app(&mut cfg) {
            Ok(kept) => Some(kept),
            Err(e) => {
                eprintln!("trackmesh: {e:#}");
                return ExitCode::from(2);
            }
        }
    } else {
        if cfg.new_dev_app {
            tracing::warn!("--new-dev-app does nothing when apps are given with --app");
        }
        None
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trackmesh: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json_logs = cfg.log_format == LogFormat::Json;
    match rt.block_on(run(cfg, kept)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: a JSON log line for log pipelines, else the same plain line as a config
            // error (both went to stderr, so text logs showed every fatal error twice).
            if json_logs {
                tracing::error!("{e:#}");
            } else {
                eprintln!("trackmesh: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = trackmesh_node::logging::filter("info,str0m=warn,dimpl=warn,async_nats=warn");
    // Colours only for a person at a terminal, never in a file, a pipe or journald.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Puts the development app kept in the state directory (made there if there is none yet, or
/// with `--new-dev-app`) in place of the one generated for this run.
fn keep_dev_app(cfg: &mut Config) -> anyhow::Result<dev_app::Kept> {
    let dir = cfg.state_dir.clone().or_else(dev_app::default_state_dir);
    let generated = cfg.apps.first().cloned();
    let (app, kept) = dev_app::load_or_create(dir.as_deref(), cfg.new_dev_app, || {
        generated.unwrap_or_else(|| App {
            id: trackmesh_node::ids::random_hex(16),
            secret: trackmesh_node::ids::random_hex(32),
        })
    })?;
    cfg.apps = vec![app];
    Ok(kept)
}

async fn run(cfg: Config, kept: Option<dev_app::Kept>) -> anyhow::Result<()> {
    // Before the node starts, so a signal during start-up is not the default (instant) exit.
    let mut signals = Signals::listen();
    let node = Node::start(cfg.clone()).await?;
    if let Some(kept) = kept
        && let Some(app) = cfg.apps.first()
    {
        // One line, `key=value` fields first: scripts read id= and secret= from it.
        let how = match &kept {
            dev_app::Kept::Reused(path) => format!(
                "kept in {} (reused; --new-dev-app makes a new one)",
                path.display()
            ),
            dev_app::Kept::Created(path) => format!(
                "kept in {} (new; restarts reuse it, --new-dev-app makes a new one)",
                path.display()
            ),
            dev_app::Kept::NotKept(why) => {
                tracing::warn!("the development app is for this run only: {why}");
                "for this run only (see the log)".to_string()
            }
        };
        println!("development app id={} secret={} {how}", app.id, app.secret);
    }
    let (http_addr, media_addr, relay_addr, tag) = (
        node.http_addr(),
        node.media_addr(),
        node.relay_addr(),
        node.tag(),
    );
    // `turn=off` without a TURN key: say so where operators and tests look first.
    let turn = node
        .turn_addr()
        .map_or_else(|| "off".to_string(), |a| a.to_string());
    // `http=` stays the address (scripts read it); `scheme=` says whether it speaks TLS.
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    println!(
        "trackmesh ready http={http_addr} media={media_addr} gossip={} relay={relay_addr} node={} tag={tag} region={} turn={turn} scheme={scheme}",
        cfg.gossip, cfg.node_id, cfg.region
    );
    let candidate_addr = node.candidate_addr();
    tracing::info!(%http_addr, %media_addr, %candidate_addr, %relay_addr, gossip = %cfg.gossip, node = %cfg.node_id, node_tag = %tag, region = %cfg.region, "serving");

    #[cfg(unix)]
    if let Some(certs) = node.tls_certs() {
        tokio::spawn(reload_tls_on_sighup(certs));
    }

    // The first signal drains; a second one, during the drain or the shutdown after it, exits
    // at once (see `Signal::exit_code`).
    let mut failed = node.worker_failed();
    let failure = async { failed.wait_for(|w| w.is_some()).await.ok().and_then(|w| *w) };
    let first = tokio::select! {
        signal = signals.next() => signal,
        // A worker that panicked took its sessions' media with it: exit non-zero so the
        // supervisor restarts the node (a `--workers 1` node would otherwise answer HTTP with
        // no media behind it; `/healthz` says so meanwhile).
        Some(worker) = failure => {
            node.abort();
            anyhow::bail!("engine worker {worker} panicked: exiting");
        }
    };
    if first == Signal::Interrupt {
        // Ctrl-C: a person at a terminal, likely to start a node again right away. Free the
        // HTTP port now; the media, gossip and relay sockets stay bound while the sessions left
        // drain (they carry those sessions' media and the gossiped drain state). A supervisor's
        // SIGTERM keeps the listener: a draining node still answers its sessions' API calls,
        // calls forwarded by other nodes, and health probes.
        node.stop_accepting();
        tracing::info!("HTTP listener closed; press Ctrl-C again to exit at once");
    }
    let stop = async {
        node.drain().await;
        node.shutdown().await;
    };
    tokio::select! {
        () = stop => Ok(()),
        second = signals.next() => {
            tracing::info!("second signal: exiting now");
            std::process::exit(second.exit_code());
        }
    }
}

/// The signals that stop the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// SIGINT: Ctrl-C at a terminal.
    Interrupt,
    /// SIGTERM: a supervisor (systemd, Kubernetes, docker) or `kill`.
    Terminate,
}

impl Signal {
    /// The exit status after a second signal: 128 + the signal's number, as a shell reports a
    /// process that signal ended (130 for SIGINT, 143 for SIGTERM). A drain that ends by itself
    /// exits 0.
    fn exit_code(self) -> i32 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }
}

/// The stop signals, listened for from start-up on, so one that arrives between two waits is
/// not lost.
struct Signals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn listen() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for {name}");
                    None
                }
            };
            Signals {
                interrupt: listen(SignalKind::interrupt(), "SIGINT"),
                terminate: listen(SignalKind::terminate(), "SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// The next stop signal.
    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        let signal = {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                // A stream that cannot be listened on (or has ended) never fires.
                let received = match s {
                    Some(s) => s.recv().await.is_some(),
                    None => false,
                };
                if !received {
                    std::future::pending::<()>().await;
                }
            }
            tokio::select! {
                () = recv(&mut self.interrupt) => Signal::Interrupt,
                () = recv(&mut self.terminate) => Signal::Terminate,
            }
        };
        #[cfg(not(unix))]
        let signal = {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::warn!(error = %e, "cannot listen for ctrl-c");
                std::future::pending::<()>().await;
            }
            Signal::Interrupt
        };
        tracing::info!(?signal, "shutting down");
        signal
    }
}

/// SIGHUP reads the HTTPS certificate and key again; new connections get the new certificate.
/// A file that does not load leaves the one in use, with one log line.
#[cfg(unix)]
async fn reload_tls_on_sighup(certs: std::sync::Arc<trackmesh_node::http::tls::TlsCerts>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: the HTTPS certificate will not be reloaded");
            return;
        }
    };
    while hup.recv().await.is_some() {
        match certs.reload() {
            Ok(()) => tracing::info!("SIGHUP: HTTPS certificate reloaded"),
            Err(e) => tracing::warn!(
                "SIGHUP: HTTPS certificate not reloaded, the one in use stays: {e:#}"
            ),
        }
    }
}
