//! `trackmesh`: runs one node: flags, logging, the lines scripts read, and signals around
//! [`Node`].

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use trackmesh_node::Node;
use trackmesh_node::config::{Config, Flags, LogFormat};

fn main() -> ExitCode {
    let flags = Flags::parse();
    let cfg = match Config::from_flags(flags) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("trackmesh: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_logging(cfg.log_format);
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
    match rt.block_on(run(cfg)) {
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
    let filter = trackmesh_node::logging::filter("info,str0m=warn,dimpl=warn");
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

async fn run(cfg: Config) -> anyhow::Result<()> {
    let node = Node::start(cfg.clone()).await?;
    let mut signals = Signals::new();
    if cfg.dev_app
        && let Some(app) = cfg.apps.first()
    {
        println!("development app id={} secret={}", app.id, app.secret);
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
    println!(
        "trackmesh ready http={http_addr} media={media_addr} gossip={} relay={relay_addr} node={} tag={tag} region={} turn={turn}",
        cfg.gossip, cfg.node_id, cfg.region
    );
    let candidate_addr = node.candidate_addr();
    tracing::info!(%http_addr, %media_addr, %candidate_addr, %relay_addr, gossip = %cfg.gossip, node = %cfg.node_id, node_tag = %tag, region = %cfg.region, "serving");

    // On SIGTERM (or Ctrl-C) the node drains; a second signal ends the wait at once.
    signals.next().await;
    tokio::select! {
        () = node.drain() => {}
        () = signals.next() => tracing::info!("second signal: exiting now"),
    }
    node.shutdown().await;
    Ok(())
}

/// SIGTERM and SIGINT (Ctrl-C), listened for from creation on: made before the ready line, so a
/// supervisor that signals as soon as it reads the line gets a drain, not the default kill.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind: SignalKind, name: &str| {
                signal(kind)
                    .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for {name}"))
                    .ok()
            };
            Signals {
                term: listen(SignalKind::terminate(), "SIGTERM"),
                int: listen(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// The next signal.
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                () = recv(&mut self.term) => {},
                () = recv(&mut self.int) => {},
            }
        }
        #[cfg(not(unix))]
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
        tracing::info!("shutting down");
    }
}
