//! One module per subcommand. Each turns the node's answer into an [`Output`]: the text for
//! stdout (a table, or the pretty JSON with `--json`) and the exit code.

mod drain;
mod health;
mod locate;
mod members;
mod sessions;
mod status;
mod ticket;
mod token;
mod tracks;

use serde_json::Value;

use crate::cli::Command;
use crate::client::Client;
use crate::error::{CtlError, exit};

/// What a command prints on stdout, and how the process exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    /// Printed on stderr (e.g. why the answer is negative).
    pub stderr: String,
    pub code: i32,
}

impl Output {
    pub fn ok(stdout: String) -> Output {
        Output {
            stdout,
            stderr: String::new(),
            code: exit::OK,
        }
    }

    /// The command ran; the answer is "no" (exit 1) with a reason for stderr.
    pub fn negative(stdout: String, reason: String) -> Output {
        Output {
            stdout,
            stderr: reason,
            code: exit::NEGATIVE,
        }
    }
}

/// A cluster-wide list: complete (exit 0), or missing what the `unanswered` nodes hold (exit 1,
/// naming them on stderr), so a script never takes a partial list for the whole.
pub fn partial(stdout: String, unanswered: &[String], what: &str) -> Output {
    if unanswered.is_empty() {
        return Output::ok(stdout);
    }
    Output::negative(
        stdout,
        format!(
            "no answer from {}: their {what} are missing",
            unanswered.join(", ")
        ),
    )
}

/// The API's JSON, pretty, with a final newline.
pub fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

/// Run `command` against the node behind `client`.
pub async fn run(client: &Client, command: &Command, json: bool) -> Result<Output, CtlError> {
    match command {
        Command::Members => members::run(client, json).await,
        Command::Status { node } => status::run(client, node.as_deref(), json).await,
        Command::Sessions { on } => sessions::list(client, on.as_deref(), json).await,
        Command::Session { id } => sessions::one(client, id, json).await,
        Command::Tracks => tracks::run(client, json).await,
        Command::Locate { track } => locate::run(client, track, json).await,
        Command::Drain { node } => drain::run(client, node, true, json).await,
        Command::Undrain { node } => drain::run(client, node, false, json).await,
        Command::Token(args) => token::run(client, args, json).await,
        Command::Ticket(args) => ticket::run(client, args, json).await,
        Command::Health => health::run(client, json).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_missing_a_node_says_which_and_exits_negative() {
        let whole = partial("table\n".into(), &[], "sessions");
        assert_eq!(whole, Output::ok("table\n".into()));
        let missing = partial("table\n".into(), &["b".into(), "c".into()], "tracks");
        assert_eq!(missing.stdout, "table\n");
        assert_eq!(missing.code, exit::NEGATIVE);
        assert_eq!(
            missing.stderr,
            "no answer from b, c: their tracks are missing"
        );
    }
}
