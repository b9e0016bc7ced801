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
    shutdown_signal().await;
    tokio::select! {
        () = node.drain() => {}
        () = shutdown_signal() => tracing::info!("second signal: exiting now"),
    }
    node.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
