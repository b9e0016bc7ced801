//! `trackmeshctl`: the command-line client of a trackmesh node's admin API (`/admin/*`,
//! `/healthz`, `/readyz`). See `trackmeshctl --help`.

pub mod cli;
pub mod client;
pub mod commands;
pub mod error;
pub mod model;
pub mod render;

use std::io::Write;

use clap::Parser;

use crate::cli::Cli;
use crate::client::Client;
use crate::error::exit;

/// Parse the command line, run the command, print, and return the exit code.
pub fn main_with_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors to stderr with 2.
            let _ = e.print();
            return e.exit_code();
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trackmeshctl: cannot start the async runtime: {e}");
            return exit::NEGATIVE;
        }
    };
    let result = runtime.block_on(async {
        let client = Client::new(&cli.node_url, cli.token.clone(), cli.timeout)?;
        commands::run(&client, &cli.command, cli.json).await
    });
    match result {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            // A closed pipe (`| head`) is not an error worth reporting.
            let _ = stdout.write_all(out.stdout.as_bytes());
            let _ = stdout.flush();
            if !out.stderr.is_empty() {
                eprintln!("trackmeshctl: {}", out.stderr);
            }
            out.code
        }
        Err(e) => {
            eprintln!("trackmeshctl: {e}");
            e.exit_code()
        }
    }
}
