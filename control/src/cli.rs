//! Command-line arguments (clap).

use std::time::Duration;

use clap::{Parser, Subcommand};

const ABOUT: &str = "Inspect and operate a trackmesh cluster through a node's admin API";

const LONG_ABOUT: &str = "\
Inspect and operate a trackmesh cluster through a node's admin API.

Any node of the cluster answers for all of them: views of other nodes are fetched from them.
Admin calls send `Authorization: Bearer <token>` (the node's --admin-token).";

const AFTER_HELP: &str = "\
Options go before the subcommand; --token, --json and --timeout may also follow it.

Exit codes:
  0  ok
  1  the command ran but the answer is negative (not found, not ready, an API error)
  2  usage error (health: the node cannot be reached)
  3  cannot reach the node
  4  unauthorized: wrong or missing admin token (token --node: app secret)

Examples:
  trackmeshctl --node http://10.0.0.5:7700 --token $TOKEN members
  TRACKMESH_ADMIN_TOKEN=$TOKEN trackmeshctl tracks --json
  trackmeshctl health && echo ready";

/// `trackmeshctl [OPTIONS] <COMMAND>`
#[derive(Parser, Debug)]
#[command(
    name = "trackmeshctl",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP,
)]
pub struct Cli {
    /// Base URL of the node to ask (its --http address)
    #[arg(
        long = "node",
        env = "TRACKMESH_NODE",
        value_name = "URL",
        default_value = "http://127.0.0.1:7700",
        hide_env_values = true,
        value_parser = parse_node_url
    )]
    pub node_url: String,

    /// Admin token of the node (its --admin-token)
    #[arg(
        long,
        env = "TRACKMESH_ADMIN_TOKEN",
        value_name = "T",
        global = true,
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// Print the API's JSON answer (pretty) instead of a table
    #[arg(long, global = true)]
    pub json: bool,

    /// Seconds to wait for each HTTP request
    #[arg(
        long,
        value_name = "SECS",
        default_value = "5",
        global = true,
        value_parser = parse_timeout
    )]
    pub timeout: Duration,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// List the cluster's members as the node sees them (GET /admin/cluster)
    #[command(after_help = "Example:\n  trackmeshctl --node http://127.0.0.1:7700 members")]
    Members,

    /// Show one node's state: load, draining, addresses (GET /admin/status[/NODE])
    #[command(
        after_help = "Examples:\n  trackmeshctl status        # the node given by --node\n  \
                            trackmeshctl status b      # node b, asked through --node"
    )]
    Status {
        /// Node id (default: the node given by --node)
        #[arg(value_name = "NODE")]
        node: Option<String>,
    },

    /// List sessions on all live nodes, or on one (GET /admin/sessions)
    #[command(after_help = "Examples:\n  trackmeshctl sessions\n  \
                            trackmeshctl sessions --node b   # only the sessions held by node b")]
    Sessions {
        /// Only the sessions held by this node id (note: a node id, not a URL)
        #[arg(long = "node", value_name = "NODE")]
        on: Option<String>,
    },

    /// Show one session and its tracks, asked on its owner (GET /admin/sessions/ID)
    #[command(
        after_help = "Example:\n  trackmeshctl session 0badcafe5d1c4c1e9b8a7f6e5d4c3b2a\n\nExits 1 when there is no such session."
    )]
    Session {
        /// Session id
        #[arg(value_name = "ID")]
        id: String,
    },

    /// List published tracks with their subscribers and relays (GET /admin/tracks)
    #[command(after_help = "Example:\n  trackmeshctl tracks")]
    Tracks,

    /// Find a track's owner, hubs and subscribing nodes (GET /admin/locate/SESSION/TRACK)
    #[command(
        after_help = "Example:\n  trackmeshctl locate 0badcafe5d1c4c1e9b8a7f6e5d4c3b2a/camera\n\nExits 1 when no node owns the track."
    )]
    Locate {
        /// The track, as SESSION_ID/TRACK_NAME (the track name may contain '/')
        #[arg(value_name = "SESSION_ID/TRACK_NAME", value_parser = parse_track_ref)]
        track: TrackRef,
    },

    /// Stop a node taking new sessions; existing ones keep working (POST /admin/drain/NODE)
    #[command(
        after_help = "Example:\n  trackmeshctl drain b\n\nThe node's /readyz then answers 503, so a load balancer stops sending it clients."
    )]
    Drain {
        /// Node id
        #[arg(value_name = "NODE")]
        node: String,
    },

    /// Let a drained node take new sessions again (POST /admin/undrain/NODE)
    #[command(after_help = "Example:\n  trackmeshctl undrain b")]
    Undrain {
        /// Node id
        #[arg(value_name = "NODE")]
        node: String,
    },

    /// Mint a stream token for WHIP/WHEP, offline (or by a node with --node after `token`)
    #[command(after_help = TOKEN_HELP)]
    Token(TokenArgs),

    /// Issue a room ticket for the WebSocket signalling (the node issues it: POST
    /// /v1/apps/ID/rooms/ROOM/tickets)
    #[command(after_help = TICKET_HELP)]
    Ticket(TicketArgs),

    /// Check the node's /healthz and /readyz (no token needed)
    #[command(
        after_help = "Exit codes: 0 ready, 1 not ready (e.g. draining), 2 the node cannot be reached.\n\n\
                      Example:\n  trackmeshctl --node http://127.0.0.1:7710 health"
    )]
    Health,
}

const TOKEN_HELP: &str = "\
Prints the token (a JWT signed with the app secret) on stdout; --json prints {token, expiresAt}.
It is minted here, with no node: apps are configured alike on every node, so the token works on
every node of the cluster. With --node URL after `token`, the node mints it instead
(POST /v1/apps/ID/tokens); the admin token is not used either way.

Examples:
  trackmeshctl token --app demo --secret $APP_SECRET --stream cam --mode publish --ttl 1h
  TRACKMESH_APP_SECRET=$APP_SECRET trackmeshctl token --app demo --stream '*' --mode subscribe
  trackmeshctl token --app demo --secret $APP_SECRET --stream cam --mode both \\
      --node http://127.0.0.1:7700";

const TICKET_HELP: &str = "\
Prints the ticket's access_token on stdout; --json prints {access_token, url, direction,
expires_at}. The node named by --node (before the subcommand) issues it and keeps its single use;
it works on any node of the cluster, once, until it expires (60s by default, at most 1h).

Example:
  trackmeshctl --node http://127.0.0.1:7700 ticket --app demo --secret $APP_SECRET \\
      --room lobby --direction up --user alice";

/// `ticket`: which room, which way, for whom.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct TicketArgs {
    /// App id
    #[arg(long, value_name = "ID")]
    pub app: String,

    /// The app's secret (the ticket call's bearer)
    #[arg(
        long,
        env = "TRACKMESH_APP_SECRET",
        value_name = "S",
        hide_env_values = true
    )]
    pub secret: String,

    /// Room id
    #[arg(long, value_name = "ROOM")]
    pub room: String,

    /// up (publish), down (receive) or both
    #[arg(long, value_name = "up|down|both", value_parser = ["up", "down", "both"])]
    pub direction: String,

    /// The user the ticket is for
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,

    /// Lifetime in seconds (1 to 3600)
    #[arg(long, value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ttl: u64,
}

/// `token`: what the stream token grants, and where it is minted.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct TokenArgs {
    /// App id
    #[arg(long, value_name = "ID")]
    pub app: String,

    /// The app's secret, which signs the token
    #[arg(
        long,
        env = "TRACKMESH_APP_SECRET",
        value_name = "S",
        hide_env_values = true
    )]
    pub secret: String,

    /// Stream name, or '*' for every stream of the app
    #[arg(long, value_name = "NAME")]
    pub stream: String,

    /// What the bearer may do with the stream
    #[arg(long, value_name = "publish|subscribe|both", value_parser = parse_mode)]
    pub mode: trackmesh_tokens::Mode,

    /// Lifetime: seconds, or a number with s, m, h or d (at most 24h)
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,

    /// Ask this node to mint it (POST /v1/apps/ID/tokens) instead of minting it here
    #[arg(long = "node", value_name = "URL", value_parser = parse_node_url)]
    pub node: Option<String>,
}

fn parse_mode(s: &str) -> Result<trackmesh_tokens::Mode, String> {
    s.parse()
}

/// `90`, `90s`, `15m`, `1h`, `1d`: 1 second to [`trackmesh_tokens::MAX_TTL`].
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let per_unit: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "expected a duration like 90, 90s, 15m, 1h or 1d, got {s:?}"
            ));
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("expected a duration like 90, 90s, 15m, 1h or 1d, got {s:?}"))?;
    let max = trackmesh_tokens::MAX_TTL;
    let ttl = Duration::from_secs(n.saturating_mul(per_unit));
    if ttl.is_zero() || ttl > max {
        return Err(format!(
            "the ttl must be 1s to {}h, got {s}",
            max.as_secs() / 3600
        ));
    }
    Ok(ttl)
}

/// A track named on the command line: `SESSION_ID/TRACK_NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackRef {
    pub session_id: String,
    pub track_name: String,
}

/// `SESSION_ID/TRACK_NAME`, split at the first `/` (session ids have none; track names may).
pub fn parse_track_ref(s: &str) -> Result<TrackRef, String> {
    match s.split_once('/') {
        Some((session, track)) if !session.is_empty() && !track.is_empty() => Ok(TrackRef {
            session_id: session.to_string(),
            track_name: track.to_string(),
        }),
        _ => Err(format!("expected SESSION_ID/TRACK_NAME, got {s:?}")),
    }
}

/// Seconds, fractions allowed, more than 0 and at most a day.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected a number of seconds, got {s:?}"))?;
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!(
            "the timeout must be in (0, 86400] seconds, got {s}"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `http://HOST:PORT[/prefix]`; a bare `HOST:PORT` gets `http://`. Trailing `/` removed.
pub fn parse_node_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("the node URL is empty".into());
    }
    let with_scheme = if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    let url = reqwest::Url::parse(&with_scheme).map_err(|e| format!("bad node URL {s:?}: {e}"))?;
    if url.scheme() != "http" {
        return Err(format!(
            "bad node URL {s:?}: only http:// is supported (put TLS in front of the admin API)"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("bad node URL {s:?}: no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("bad node URL {s:?}: no query or fragment allowed"));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("trackmeshctl").chain(args.iter().copied()))
    }

    fn ok(args: &[&str]) -> Cli {
        match parse(args) {
            Ok(c) => c,
            Err(e) => panic!("{args:?} should parse: {e}"),
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults() {
        // The env of the test process could set these; only check when it does not.
        let cli = ok(&["members"]);
        if std::env::var_os("TRACKMESH_NODE").is_none() {
            assert_eq!(cli.node_url, "http://127.0.0.1:7700");
        }
        if std::env::var_os("TRACKMESH_ADMIN_TOKEN").is_none() {
            assert_eq!(cli.token, None);
        }
        assert!(!cli.json);
        assert_eq!(cli.timeout, Duration::from_secs(5));
        assert_eq!(cli.command, Command::Members);
    }

    #[test]
    fn global_options_before_and_after_the_subcommand() {
        let cli = ok(&[
            "--node",
            "http://10.1.2.3:7710/",
            "--token",
            "t0",
            "tracks",
            "--json",
            "--timeout",
            "1.5",
        ]);
        assert_eq!(cli.node_url, "http://10.1.2.3:7710");
        assert_eq!(cli.token.as_deref(), Some("t0"));
        assert!(cli.json);
        assert_eq!(cli.timeout, Duration::from_millis(1500));
        assert_eq!(cli.command, Command::Tracks);

        let cli = ok(&["status", "b", "--token", "t1"]);
        assert_eq!(cli.token.as_deref(), Some("t1"));
        assert_eq!(
            cli.command,
            Command::Status {
                node: Some("b".into())
            }
        );
    }

    #[test]
    fn sessions_node_filter_is_not_the_node_url() {
        let cli = ok(&["--node", "127.0.0.1:9000", "sessions", "--node", "b"]);
        assert_eq!(cli.node_url, "http://127.0.0.1:9000");
        assert_eq!(
            cli.command,
            Command::Sessions {
                on: Some("b".into())
            }
        );
        assert_eq!(
            ok(&["sessions"]).command,
            Command::Sessions { on: None },
            "no filter by default"
        );
    }

    #[test]
    fn subcommand_arguments() {
        assert_eq!(ok(&["status"]).command, Command::Status { node: None });
        assert_eq!(
            ok(&["session", "abc"]).command,
            Command::Session { id: "abc".into() }
        );
        assert_eq!(
            ok(&["drain", "b"]).command,
            Command::Drain { node: "b".into() }
        );
        assert_eq!(
            ok(&["undrain", "b"]).command,
            Command::Undrain { node: "b".into() }
        );
        assert_eq!(ok(&["health"]).command, Command::Health);
        assert_eq!(
            ok(&["locate", "s1/cam/hd"]).command,
            Command::Locate {
                track: TrackRef {
                    session_id: "s1".into(),
                    track_name: "cam/hd".into()
                }
            }
        );
    }

    #[test]
    fn token_arguments() {
        let cli = ok(&[
            "token",
            "--app",
            "a1",
            "--secret",
            "s",
            "--stream",
            "*",
            "--mode",
            "subscribe",
        ]);
        let Command::Token(t) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(t.app, "a1");
        assert_eq!(t.stream, "*");
        assert_eq!(t.mode, trackmesh_tokens::Mode::Subscribe);
        assert_eq!(t.ttl, trackmesh_tokens::DEFAULT_TTL, "an hour by default");
        assert_eq!(t.node, None, "minted here by default");
        let cli = ok(&[
            "token",
            "--app",
            "a1",
            "--secret",
            "s",
            "--stream",
            "cam",
            "--mode",
            "both",
            "--ttl",
            "90",
            "--node",
            "127.0.0.1:7710",
        ]);
        let Command::Token(t) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(t.ttl, Duration::from_secs(90));
        assert_eq!(t.node.as_deref(), Some("http://127.0.0.1:7710"));
    }

    #[test]
    fn ttls() {
        for (s, secs) in [
            ("1", 1),
            ("90s", 90),
            ("15m", 900),
            ("1h", 3600),
            ("24h", 86_400),
            ("1d", 86_400),
        ] {
            assert_eq!(parse_ttl(s), Ok(Duration::from_secs(secs)), "{s}");
        }
        for s in [
            "",
            "0",
            "0h",
            "86401",
            "2d",
            "1.5h",
            "h",
            "-1",
            "1 h",
            "99999999999999999999d",
        ] {
            assert!(parse_ttl(s).is_err(), "{s}");
        }
    }

    #[test]
    fn usage_errors() {
        for args in [
            &[][..],
            &["bogus"],
            &["session"],
            &["drain"],
            &["locate", "no-slash"],
            &["locate", "/track"],
            &["locate", "session/"],
            &["--timeout", "0", "members"],
            &["--timeout", "soon", "members"],
            &["--node", "https://example.org", "members"],
            &["--node", "", "members"],
            &["members", "extra"],
            // --node URL is an option of trackmeshctl, not of the subcommands.
            &["members", "--node", "http://127.0.0.1:1"],
            &["token", "--app", "a", "--secret", "s", "--stream", "x"],
            &["token", "--app", "a", "--secret", "s", "--mode", "both"],
            &[
                "token", "--app", "a", "--secret", "s", "--stream", "x", "--mode", "admin",
            ],
            &[
                "token", "--app", "a", "--secret", "s", "--stream", "x", "--mode", "both", "--ttl",
                "25h",
            ],
            &[
                "token", "--app", "a", "--secret", "s", "--stream", "x", "--mode", "both", "--ttl",
                "0",
            ],
            &[
                "token", "--app", "a", "--secret", "s", "--stream", "x", "--mode", "both", "--ttl",
                "1w",
            ],
            &[
                "token",
                "--app",
                "a",
                "--secret",
                "s",
                "--stream",
                "x",
                "--mode",
                "both",
                "--node",
                "https://n",
            ],
        ] {
            let err = match parse(args) {
                Ok(c) => panic!("{args:?} should not parse: {c:?}"),
                Err(e) => e,
            };
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
    }

    #[test]
    fn help_exits_0_and_names_every_command() {
        let err = parse(&["--help"]).expect_err("--help stops parsing");
        assert_eq!(err.exit_code(), 0);
        let help = err.to_string();
        for cmd in [
            "members", "status", "sessions", "session", "tracks", "locate", "drain", "undrain",
            "token", "health",
        ] {
            assert!(help.contains(cmd), "help lists {cmd}: {help}");
        }
        let err = parse(&["locate", "--help"]).expect_err("--help");
        assert!(err.to_string().contains("Example:"), "{err}");
    }

    #[test]
    fn node_urls() {
        assert_eq!(
            parse_node_url("127.0.0.1:7700").as_deref(),
            Ok("http://127.0.0.1:7700")
        );
        assert_eq!(
            parse_node_url("http://node-a:7700/").as_deref(),
            Ok("http://node-a:7700")
        );
        assert_eq!(
            parse_node_url("http://lb/trackmesh/").as_deref(),
            Ok("http://lb/trackmesh")
        );
        assert!(parse_node_url("http://a:7700/?x=1").is_err());
        assert!(parse_node_url("ftp://a").is_err());
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_timeout("0.25"), Ok(Duration::from_millis(250)));
        assert!(parse_timeout("-1").is_err());
        assert!(parse_timeout("NaN").is_err());
        assert!(parse_timeout("inf").is_err());
    }
}
