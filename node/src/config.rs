//! Command line, environment and TOML configuration.
//!
//! Precedence: command-line flag > `TRACKMESH_<FLAG>` environment variable > `--config` TOML file >
//! built-in default. One struct, [`Flags`], declares every setting once: clap reads it from the
//! command line and the environment, serde from the file (keys are the long flag names), and
//! [`Config::from_flags`] layers the two and applies the defaults.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use serde::Deserialize;

/// One app: the `{appId}` in API paths and the bearer secret that authorizes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    /// The app id clients put in `/v1/apps/{appId}/...`.
    pub id: String,
    /// The bearer secret that authorizes calls for this app.
    pub secret: String,
}

impl std::str::FromStr for App {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, secret) = parse_id_secret(s, "app")?;
        Ok(App { id, secret })
    }
}

/// `ID:SECRET`, as `--app` and `--turn-key` take them: both non-empty, the id of letters, digits,
/// `-` and `_` (it goes into URL paths). `what` names the thing in errors.
pub fn parse_id_secret(s: &str, what: &str) -> Result<(String, String), String> {
    let (id, secret) = s
        .split_once(':')
        // Not echoed: the value may be a secret given without its id.
        .ok_or_else(|| "expected ID:SECRET (the value has no ':')".to_string())?;
    if id.is_empty() || secret.is_empty() {
        return Err(format!("{what} id and secret must both be non-empty"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "{what} id {id:?} may only contain letters, digits, '-' and '_'"
        ));
    }
    Ok((id.into(), secret.into()))
}

/// The first id that occurs twice.
fn first_repeated<'a>(ids: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut seen = std::collections::HashSet::new();
    ids.into_iter().find(|id| !seen.insert(*id))
}

/// A duration written as `30s`, `500ms`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?}"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "unknown duration unit in {s:?} (use ms, s, m or h)"
            ));
        }
    };
    // Far beyond any timeout the node has, and far from what `Instant + Duration` overflows on.
    if secs > MAX_DURATION.as_secs_f64() {
        return Err(format!("duration {s:?} is over the limit of 7 days (168h)"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// The longest duration any setting takes.
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Every setting, as given on the command line, in the environment or in the `--config` file.
/// Unset is `None` (or empty), so that each layer only fills what the one above left unset. Unknown
/// keys in the file are an error, so a typo in a config file is not silently ignored.
#[derive(Debug, Parser, Default, Deserialize)]
#[command(
    name = "trackmesh",
    version,
    about = "trackmesh node: a Cloudflare-Calls-compatible WebRTC SFU"
)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Flags {
    /// TOML file with any of the settings below (keys as the long flag names, e.g. `media = "0.0.0.0:7701"`).
    #[arg(long, env = "TRACKMESH_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// HTTP listen address for the API, the demo page and health checks [default: 127.0.0.1:7700].
    #[arg(long, env = "TRACKMESH_HTTP")]
    pub http: Option<SocketAddr>,
    /// UDP bind address for WebRTC media [default: 127.0.0.1:7701].
    #[arg(long, env = "TRACKMESH_MEDIA")]
    pub media: Option<SocketAddr>,
    /// IP announced in ICE candidates, when clients reach the node through NAT [default: the --media IP].
    #[arg(long, env = "TRACKMESH_PUBLIC_IP")]
    pub public_ip: Option<IpAddr>,
    /// IPv6 announced in ICE candidates besides --public-ip, when --media binds `[::]` (one
    /// dual-stack socket serves both families) [default: none, IPv4 candidates only].
    #[arg(long, env = "TRACKMESH_PUBLIC_IP6")]
    pub public_ip6: Option<std::net::Ipv6Addr>,
    /// Also accept media over TCP on the media port (ICE-TCP, RFC 6544 passive candidate with
    /// RFC 4571 framing), for clients whose UDP is blocked [default: false].
    #[arg(long, env = "TRACKMESH_MEDIA_TCP")]
    pub media_tcp: Option<bool>,
    /// Bandwidth estimation on every session (str0m BWE with its pacer and padding): simulcast
    /// subscribers with `priorityOrdering: "asciibetical"` then move between layers with their
    /// estimate [default: false].
    #[arg(long, env = "TRACKMESH_BWE")]
    pub bwe: Option<bool>,
    /// An app and its bearer secret as ID:SECRET; repeatable, or comma-separated (so SECRET has no
    /// ','). None: a development app is generated.
    #[arg(
        long = "app",
        env = "TRACKMESH_APP",
        value_delimiter = ',',
        hide_env_values = true
    )]
    #[serde(rename = "app", deserialize_with = "file::apps")]
    pub apps: Vec<App>,
    /// Where the node keeps its state: the development app it generates without --app
    /// [default: $XDG_DATA_HOME/trackmesh, else ~/.local/share/trackmesh].
    #[arg(long, env = "TRACKMESH_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Replace the kept development app with a new one (open clients then need the new secret).
    #[arg(long)]
    #[serde(skip)]
    pub new_dev_app: bool,
    /// A published track that receives no media for this long is garbage-collected [default: 30s].
    #[arg(long, env = "TRACKMESH_TRACK_TIMEOUT", value_parser = parse_duration)]
    #[serde(deserialize_with = "file::track_timeout")]
    pub track_timeout: Option<Duration>,
    /// How long an API call waits for the session's PeerConnection to connect [default: 5s].
    #[arg(long, env = "TRACKMESH_CONNECT_TIMEOUT", value_parser = parse_duration)]
    #[serde(deserialize_with = "file::connect_timeout")]
    pub connect_timeout: Option<Duration>,
    /// How long a session that lost connectivity stays usable before it is closed [default: 30s].
    #[arg(long, env = "TRACKMESH_RECONNECT_GRACE", value_parser = parse_duration)]
    #[serde(deserialize_with = "file::reconnect_grace")]
    pub reconnect_grace: Option<Duration>,
    /// A session that never connects is closed after this long [default: 120s].
    #[arg(long, env = "TRACKMESH_UNCONNECTED_EXPIRY", value_parser = parse_duration)]
    #[serde(deserialize_with = "file::unconnected_expiry")]
    pub unconnected_expiry: Option<Duration>,
    /// API calls per second allowed on one session [default: 50].
    #[arg(long, env = "TRACKMESH_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// Largest accepted request body in bytes [default: 1048576].
    #[arg(long, env = "TRACKMESH_MAX_BODY")]
    pub max_body: Option<usize>,
    /// Most sessions this node holds at once [default: 10000].
    #[arg(long, env = "TRACKMESH_MAX_SESSIONS")]
    pub max_sessions: Option<usize>,
    /// Engine workers, each a thread with its own media port: the first binds --media, the
    /// others --worker-ports and up (an ephemeral port each when --media has port 0)
    /// [default: the cores this process may use, at most 64].
    #[arg(long, env = "TRACKMESH_WORKERS")]
    pub workers: Option<usize>,
    /// The media port of the second engine worker; the third gets the next, and so on (on the
    /// --media IP; also TCP with --media-tcp) [default: 40000].
    #[arg(long, env = "TRACKMESH_WORKER_PORTS")]
    pub worker_ports: Option<u16>,
    /// Testing only: the first new sessions (Calls, rooms) and streams go to these workers, in
    /// order.
    #[arg(long, hide = true, value_delimiter = ',')]
    #[serde(skip)]
    pub worker_placement: Vec<u8>,
    /// Testing only: this engine worker panics when a new session is placed on it (the node must
    /// then fail `/healthz` and exit non-zero).
    #[arg(long, hide = true)]
    #[serde(skip)]
    pub fault_panic_worker: Option<usize>,
    /// Live sessions one app may hold on this node [default: --max-sessions with one app, half of
    /// it with more, so one app cannot take the node from the others].
    #[arg(long, env = "TRACKMESH_MAX_SESSIONS_PER_APP")]
    pub max_sessions_per_app: Option<usize>,
    /// New sessions per second allowed from one client IP address [default: 50].
    #[arg(long, env = "TRACKMESH_SESSION_RATE_IP")]
    pub session_rate_ip: Option<u32>,
    /// New sessions per second allowed for one app [default: 200].
    #[arg(long, env = "TRACKMESH_SESSION_RATE_APP")]
    pub session_rate_app: Option<u32>,
    /// WHIP creates the stream it publishes to when it does not exist [default: true].
    #[arg(long, env = "TRACKMESH_WHIP_AUTO_CREATE")]
    pub whip_auto_create: Option<bool>,
    /// WHEP creates the stream it plays when it does not exist, so a viewer may come before the
    /// publisher and its media starts when the publisher does [default: true].
    #[arg(long, env = "TRACKMESH_WHEP_AUTO_CREATE")]
    pub whep_auto_create: Option<bool>,
    /// Most WHEP viewers of one stream on this node [default: 500].
    #[arg(long, env = "TRACKMESH_WHEP_MAX_VIEWERS")]
    pub whep_max_viewers: Option<usize>,
    /// Rooms one app may have in the cluster [default: 100].
    #[arg(long, env = "TRACKMESH_MAX_ROOMS_PER_APP")]
    pub max_rooms_per_app: Option<usize>,
    /// How often the WebSocket signalling pings a participant [default: 5s].
    #[arg(long, env = "TRACKMESH_WS_PING_INTERVAL", value_parser = parse_duration)]
    #[serde(deserialize_with = "file::ws_ping_interval")]
    pub ws_ping_interval: Option<Duration>,
    /// How long a ping waits for its pong before the socket closes with PONG-TIMEOUT-ERROR
    /// [default: 10s].
    #[arg(long, env = "TRACKMESH_WS_PONG_TIMEOUT", value_parser = parse_duration)]
    #[serde(deserialize_with = "file::ws_pong_timeout")]
    pub ws_pong_timeout: Option<Duration>,
    /// How long a new WebSocket has to send `connect` before it closes with
    /// CONNECT-WAIT-TIMEOUT [default: 10s].
    #[arg(long, env = "TRACKMESH_WS_CONNECT_TIMEOUT", value_parser = parse_duration)]
    #[serde(deserialize_with = "file::ws_connect_timeout")]
    pub ws_connect_timeout: Option<Duration>,
    /// How long an offer (or update) waits for its answer before the socket closes with
    /// ANSWER-TIMEOUT-ERROR [default: 10s].
    #[arg(long, env = "TRACKMESH_WS_ANSWER_TIMEOUT", value_parser = parse_duration)]
    #[serde(deserialize_with = "file::ws_answer_timeout")]
    pub ws_answer_timeout: Option<Duration>,
    /// The permission hook: POSTed {app, room, user, direction} before a room ticket is issued
    /// or a WebSocket joins; 200 allows, 401/403 deny, anything else denies too.
    #[arg(long, env = "TRACKMESH_AUTH_HOOK")]
    pub auth_hook: Option<String>,
    /// How long the permission hook may take before the answer is deny [default: 2s].
    #[arg(long, env = "TRACKMESH_AUTH_HOOK_TIMEOUT", value_parser = parse_duration)]
    #[serde(deserialize_with = "file::auth_hook_timeout")]
    pub auth_hook_timeout: Option<Duration>,
    /// Take the user id from an `X-User-Claim: {"userid", "clientid"}` header set by a fronting
    /// auth proxy [default: false: the header is ignored].
    #[arg(long, env = "TRACKMESH_TRUST_USER_CLAIM", num_args = 0..=1, default_missing_value = "true")]
    pub trust_user_claim: Option<bool>,
    /// A TURN key and its secret as ID:SECRET; repeatable, or comma-separated (so SECRET has no
    /// ','). With none, no TURN server runs.
    #[arg(
        long = "turn-key",
        env = "TRACKMESH_TURN_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    #[serde(rename = "turn-key", deserialize_with = "file::turn_keys")]
    pub turn_keys: Vec<crate::turn::TurnKey>,
    /// TURN port, UDP and TCP, on the --media IP [default: 3478].
    #[arg(long, env = "TRACKMESH_TURN_PORT")]
    pub turn_port: Option<u16>,
    /// IP put in TURN URLs and relayed addresses [default: --public-ip, else the --media IP].
    #[arg(long, env = "TRACKMESH_TURN_PUBLIC_IP")]
    pub turn_public_ip: Option<IpAddr>,
    /// TURN allocations this node holds at once [default: 1000].
    #[arg(long, env = "TRACKMESH_TURN_MAX_ALLOCATIONS")]
    pub turn_max_allocations: Option<usize>,
    /// TURN allocations one credential may hold at once [default: 10].
    #[arg(long, env = "TRACKMESH_TURN_ALLOCATIONS_PER_CREDENTIAL")]
    pub turn_allocations_per_credential: Option<usize>,
    /// What a client may send through one TURN allocation, in kbit/s [default: 5000].
    #[arg(long, env = "TRACKMESH_TURN_BANDWIDTH")]
    pub turn_bandwidth: Option<u32>,
    /// NATS server URL (nats://HOST:PORT, tls://...): with it, the audio of sessions marked for
    /// egress is published there (README, audio egress to NATS). Without it, no NATS client runs.
    #[arg(long, env = "TRACKMESH_NATS", hide_env_values = true)]
    pub nats: Option<String>,
    /// First tokens of every egress subject, `{prefix}.{app}.{room}.{user}`
    /// [default: trackmesh.audio].
    #[arg(long, env = "TRACKMESH_NATS_SUBJECT_PREFIX")]
    pub nats_subject_prefix: Option<String>,
    /// Log format: text or json [default: text]. Filter with RUST_LOG.
    // Declared here for the order of the file's keys in error messages; listed last in --help.
    #[arg(long, env = "TRACKMESH_LOG_FORMAT", display_order = LAST_IN_HELP)]
    pub log_format: Option<LogFormat>,
    /// This node's id in the cluster [default: generated].
    #[arg(long, env = "TRACKMESH_NODE_ID")]
    pub node_id: Option<String>,
    /// The region this node serves; tracks cross between regions through per-region hubs
    /// [default: local].
    #[arg(long, env = "TRACKMESH_REGION")]
    pub region: Option<String>,
    /// UDP address for cluster gossip, also announced to the other nodes [default: 127.0.0.1:7702].
    #[arg(long, env = "TRACKMESH_GOSSIP")]
    pub gossip: Option<SocketAddr>,
    /// Gossip address (HOST:PORT) of a node to join the cluster through; repeatable.
    #[arg(long = "seed", env = "TRACKMESH_SEED", value_delimiter = ',')]
    #[serde(rename = "seed")]
    pub seeds: Vec<String>,
    /// UDP address of the QUIC relay between nodes [default: 127.0.0.1:7703].
    #[arg(long, env = "TRACKMESH_RELAY")]
    pub relay: Option<SocketAddr>,
    /// Secret shared by the nodes of one cluster; nodes without it are refused.
    #[arg(long, env = "TRACKMESH_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// The cluster secret being rotated away from: accepted from peers alongside --cluster-secret
    /// while the new one is rolled out node by node (see README, rotating the cluster secret).
    #[arg(
        long,
        env = "TRACKMESH_CLUSTER_SECRET_PREVIOUS",
        hide_env_values = true
    )]
    pub cluster_secret_previous: Option<String>,
    /// Bearer token for /admin/*; without one the admin API is off.
    #[arg(long, env = "TRACKMESH_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// After SIGTERM the node drains: it exits when its sessions have ended, or after this long
    /// [default: 60s].
    #[arg(long, env = "TRACKMESH_DRAIN_TIMEOUT", value_parser = parse_duration)]
    #[serde(deserialize_with = "file::drain_timeout")]
    pub drain_timeout: Option<Duration>,
    /// PEM certificate chain: with --tls-key, the HTTP port serves HTTPS (reloaded on SIGHUP).
    #[arg(long, env = "TRACKMESH_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TRACKMESH_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Most open HTTP connections; beyond it clients get a 503 at once [default: 4096].
    #[arg(long, env = "TRACKMESH_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: Option<usize>,
    /// Most open HTTP connections from one IPv4 address or IPv6 /64 [default: 256].
    #[arg(long, env = "TRACKMESH_HTTP_MAX_CONNECTIONS_PER_IP")]
    pub http_max_connections_per_ip: Option<usize>,
    /// Connections kept beyond the caps for /healthz, /readyz and /metrics only; 0: none
    /// [default: 16].
    #[arg(long, env = "TRACKMESH_HTTP_PROBE_RESERVE")]
    pub http_probe_reserve: Option<usize>,
    /// Time from a request's first byte to the end of its headers [default: 10s].
    #[arg(long, env = "TRACKMESH_HTTP_HEADER_TIMEOUT", value_parser = parse_duration)]
    #[serde(deserialize_with = "file::http_header_timeout")]
    pub http_header_timeout: Option<Duration>,
    /// A connection with no request for this long is closed [default: 60s].
    #[arg(long, env = "TRACKMESH_HTTP_IDLE_TIMEOUT", value_parser = parse_duration)]
    #[serde(deserialize_with = "file::http_idle_timeout")]
    pub http_idle_timeout: Option<Duration>,
    /// Time from the end of a request's headers to the end of its body; also the longest an
    /// answer waits for the client to read [default: 30s].
    #[arg(long, env = "TRACKMESH_HTTP_BODY_TIMEOUT", value_parser = parse_duration)]
    #[serde(deserialize_with = "file::http_body_timeout")]
    pub http_body_timeout: Option<Duration>,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Where `log-format` goes in `--help`: after the other flags, as before it moved up in
/// [`Flags`], and before clap's own `--help` and `--version` (999).
const LAST_IN_HELP: usize = 998;

/// Reading values from the file as on the command line, with the errors the file has always
/// given: `config <key>: <why>`, without TOML's location (see [`read_file`]).
mod file {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    /// What starts every error of ours; `read_file` shows those messages alone.
    pub(super) const PREFIX: &str = "config ";

    /// The file's `app` list: `"ID:SECRET"` strings.
    pub(super) fn apps<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<super::App>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|a| {
                a.parse()
                    .map_err(|e| D::Error::custom(format!("{PREFIX}app: {e}")))
            })
            .collect()
    }

    fn duration<'de, D: Deserializer<'de>>(d: D, key: &str) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s)
            .map(Some)
            .map_err(|e| D::Error::custom(format!("{PREFIX}{key}: {e}")))
    }

    /// One reader per duration key, so that its error names the key.
    macro_rules! durations {
        ($($field:ident => $key:literal,)*) => {$(
            pub(super) fn $field<'de, D: Deserializer<'de>>(
                d: D,
            ) -> Result<Option<Duration>, D::Error> {
                duration(d, $key)
            }
        )*};
    }

    /// The file's `turn-key` list: `"ID:SECRET"` strings.
    pub(super) fn turn_keys<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<crate::turn::TurnKey>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|a| {
                a.parse()
                    .map_err(|e| D::Error::custom(format!("{PREFIX}turn-key: {e}")))
            })
            .collect()
    }

    durations! {
        track_timeout => "track-timeout",
        connect_timeout => "connect-timeout",
        reconnect_grace => "reconnect-grace",
        unconnected_expiry => "unconnected-expiry",
        drain_timeout => "drain-timeout",
        http_header_timeout => "http-header-timeout",
        http_idle_timeout => "http-idle-timeout",
        http_body_timeout => "http-body-timeout",
        ws_ping_interval => "ws-ping-interval",
        ws_pong_timeout => "ws-pong-timeout",
        ws_connect_timeout => "ws-connect-timeout",
        ws_answer_timeout => "ws-answer-timeout",
        auth_hook_timeout => "auth-hook-timeout",
    }
}

/// Fully resolved node configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the HTTP API listens (`--http`).
    pub http: SocketAddr,
    /// Where the UDP media socket binds (`--media`).
    pub media: SocketAddr,
    /// The address clients and other nodes reach when a bind is a wildcard (`--public-ip`).
    pub public_ip: Option<IpAddr>,
    /// The IPv6 address announced besides `public_ip` on a dual-stack media socket
    /// (`--public-ip6`).
    pub public_ip6: Option<std::net::Ipv6Addr>,
    /// Media over TCP on the media port's TCP twin (`--media-tcp`).
    pub media_tcp: bool,
    /// Bandwidth estimation on every session (`--bwe`).
    pub bwe: bool,
    /// The apps whose bearer secrets open the Calls API (`--app`).
    pub apps: Vec<App>,
    /// True when no app was configured and one was generated for development (the binary
    /// then replaces it with the one kept in the state directory, see [`crate::dev_app`]).
    pub dev_app: bool,
    /// Where the development app is kept (`--state-dir`); None: the default, see
    /// [`crate::dev_app::default_state_dir`].
    pub state_dir: Option<PathBuf>,
    /// Make a new development app even if one is kept (`--new-dev-app`).
    pub new_dev_app: bool,
    /// A publication without media for this long is garbage-collected.
    pub track_timeout: Duration,
    /// How long an API call waits for the session's PeerConnection to connect.
    pub connect_timeout: Duration,
    /// How long a disconnected session is kept for the client to come back.
    pub reconnect_grace: Duration,
    /// How long a session that never connected is kept.
    pub unconnected_expiry: Duration,
    /// API calls per second allowed to one session.
    pub rate_limit: u32,
    /// Largest request body read, in bytes.
    pub max_body: usize,
    /// Sessions this node holds at most; past it new ones get 503.
    pub max_sessions: usize,
    /// Engine workers (threads), each with its own media port.
    pub workers: usize,
    /// The media port of the second worker; the next ones count up from it.
    pub worker_ports: u16,
    /// Testing only: where the first new sessions and streams go.
    pub worker_placement: Vec<u8>,
    /// Testing only: the engine worker that panics when a new session is placed on it.
    pub fault_panic_worker: Option<usize>,
    /// Sessions one app may hold on this node; past it new ones get 429.
    pub max_sessions_per_app: usize,
    /// New sessions per second from one client address (IPv6 by /64).
    pub session_rate_ip: u32,
    /// New sessions per second for one app.
    pub session_rate_app: u32,
    /// WHIP creates a missing stream (`--whip-auto-create`).
    pub whip_auto_create: bool,
    /// WHEP creates a missing stream (`--whep-auto-create`).
    pub whep_auto_create: bool,
    /// WHEP viewers per stream on this node (`--whep-max-viewers`).
    pub whep_max_viewers: usize,
    /// Rooms per app in the cluster (`--max-rooms-per-app`).
    pub max_rooms_per_app: usize,
    /// WebSocket ping interval (`--ws-ping-interval`).
    pub ws_ping_interval: Duration,
    /// WebSocket pong timeout (`--ws-pong-timeout`).
    pub ws_pong_timeout: Duration,
    /// From a WebSocket's upgrade to its `connect` (`--ws-connect-timeout`).
    pub ws_connect_timeout: Duration,
    /// From a WebSocket offer to its answer (`--ws-answer-timeout`).
    pub ws_answer_timeout: Duration,
    /// The permission hook's URL (`--auth-hook`).
    pub auth_hook: Option<String>,
    /// The permission hook's timeout (`--auth-hook-timeout`).
    pub auth_hook_timeout: Duration,
    /// Honour `X-User-Claim` (`--trust-user-claim`).
    pub trust_user_claim: bool,
    /// Text for people, JSON for log pipelines.
    pub log_format: LogFormat,
    /// This node's name in the cluster (`--node-id`).
    pub node_id: String,
    /// The region hubs are chosen per (`--region`).
    pub region: String,
    /// Where gossip binds (`--gossip`).
    pub gossip: SocketAddr,
    /// Gossip addresses of nodes to join through (`--seed`).
    pub seeds: Vec<String>,
    /// Where the QUIC relay binds (`--relay`).
    pub relay: SocketAddr,
    /// Tests only (no flag): drop outgoing relay media datagrams on purpose. The in-process
    /// test node sets it; see [`crate::cluster::relay::RelayTestLoss`].
    pub relay_test_loss: Option<crate::cluster::relay::RelayTestLoss>,
    /// The secret gossip, the relay and forwarded calls are authenticated with.
    pub cluster_secret: String,
    /// True when no secret was given and the development default is in use.
    pub dev_secret: bool,
    /// The previous cluster secret during a rotation; peers holding it are still accepted.
    pub cluster_secret_previous: Option<String>,
    /// Bearer token of `/admin/*`; without it the admin API answers 404.
    pub admin_token: Option<String>,
    /// How long a drain waits for sessions to end before the node exits.
    pub drain_timeout: Duration,
    /// The HTTP server's connection caps and timeouts.
    pub http_limits: crate::http::Limits,
    /// TURN keys (`--turn-key`); none: no TURN server.
    pub turn_keys: Vec<crate::turn::TurnKey>,
    /// The TURN port, UDP and TCP (`--turn-port`).
    pub turn_port: u16,
    /// The IP in TURN URLs (`--turn-public-ip`); `None`: the candidate IP.
    pub turn_public_ip: Option<IpAddr>,
    /// TURN allocations at once on this node.
    pub turn_max_allocations: usize,
    /// TURN allocations one credential may hold.
    pub turn_allocations_per_credential: usize,
    /// kbit/s a client may send through one allocation.
    pub turn_bandwidth_kbps: u32,
    /// HTTPS: the certificate chain and key files (`--tls-cert`, `--tls-key`).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Audio egress to NATS (`--nats`, `--nats-subject-prefix`); `None`: off.
    pub nats: Option<crate::egress::NatsConfig>,
}

/// The cluster secret used when none is configured: fine on one machine, never in production.
pub const DEV_CLUSTER_SECRET: &str = "trackmesh-dev-cluster";

impl Config {
    /// Resolves flags, environment and the TOML file (in that order of precedence) into a
    /// checked configuration; the error names the flag or key at fault.
    pub fn from_flags(flags: Flags) -> anyhow::Result<Config> {
        let file = match &flags.config {
            Some(path) => read_file(path, &flags)?,
            None => Flags::default(),
        };
        let dur = |flag: Option<Duration>, file: Option<Duration>, default: u64| {
            flag.or(file).unwrap_or(Duration::from_secs(default))
        };
        let mut apps = if flags.apps.is_empty() {
            file.apps
        } else {
            flags.apps
        };
        let dev_app = apps.is_empty();
        if dev_app {
            apps.push(App {
                id: crate::ids::random_hex(16),
                secret: crate::ids::random_hex(32),
            });
        }
        let max_sessions = flags.max_sessions.or(file.max_sessions).unwrap_or(10_000);
        let app_count = apps.len();
        let cfg = Config {
            http: flags
                .http
                .or(file.http)
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7700))),
            media: flags
                .media
                .or(file.media)
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7701))),
            public_ip: flags.public_ip.or(file.public_ip),
            public_ip6: flags.public_ip6.or(file.public_ip6),
            media_tcp: flags.media_tcp.or(file.media_tcp).unwrap_or(false),
            bwe: flags.bwe.or(file.bwe).unwrap_or(false),
            apps,
            dev_app,
            state_dir: flags.state_dir.or(file.state_dir),
            new_dev_app: flags.new_dev_app,
            track_timeout: dur(flags.track_timeout, file.track_timeout, 30),
            connect_timeout: dur(flags.connect_timeout, file.connect_timeout, 5),
            reconnect_grace: dur(flags.reconnect_grace, file.reconnect_grace, 30),
            unconnected_expiry: dur(flags.unconnected_expiry, file.unconnected_expiry, 120),
            rate_limit: flags.rate_limit.or(file.rate_limit).unwrap_or(50),
            max_body: flags.max_body.or(file.max_body).unwrap_or(1 << 20),
            max_sessions,
            workers: flags.workers.or(file.workers).unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map_or(1, |n| n.get())
                    .min(crate::workers::MAX_WORKERS)
            }),
            worker_ports: flags.worker_ports.or(file.worker_ports).unwrap_or(40_000),
            worker_placement: flags.worker_placement,
            fault_panic_worker: flags.fault_panic_worker,
            max_sessions_per_app: flags
                .max_sessions_per_app
                .or(file.max_sessions_per_app)
                .unwrap_or(if app_count > 1 {
                    max_sessions.div_ceil(2)
                } else {
                    max_sessions
                }),
            session_rate_ip: flags.session_rate_ip.or(file.session_rate_ip).unwrap_or(50),
            session_rate_app: flags
                .session_rate_app
                .or(file.session_rate_app)
                .unwrap_or(200),
            whip_auto_create: flags
                .whip_auto_create
                .or(file.whip_auto_create)
                .unwrap_or(true),
            whep_auto_create: flags
                .whep_auto_create
                .or(file.whep_auto_create)
                .unwrap_or(true),
            whep_max_viewers: flags
                .whep_max_viewers
                .or(file.whep_max_viewers)
                .unwrap_or(500),
            max_rooms_per_app: flags
                .max_rooms_per_app
                .or(file.max_rooms_per_app)
                .unwrap_or(100),
            ws_ping_interval: dur(flags.ws_ping_interval, file.ws_ping_interval, 5),
            ws_pong_timeout: dur(flags.ws_pong_timeout, file.ws_pong_timeout, 10),
            ws_connect_timeout: dur(flags.ws_connect_timeout, file.ws_connect_timeout, 10),
            ws_answer_timeout: dur(flags.ws_answer_timeout, file.ws_answer_timeout, 10),
            auth_hook: flags.auth_hook.or(file.auth_hook).filter(|u| !u.is_empty()),
            auth_hook_timeout: dur(flags.auth_hook_timeout, file.auth_hook_timeout, 2),
            trust_user_claim: flags
                .trust_user_claim
                .or(file.trust_user_claim)
                .unwrap_or(false),
            log_format: flags.log_format.or(file.log_format).unwrap_or_default(),
            node_id: flags
                .node_id
                .or(file.node_id)
                .unwrap_or_else(|| crate::ids::random_hex(8)),
            region: flags
                .region
                .or(file.region)
                .unwrap_or_else(|| "local".into()),
            gossip: flags
                .gossip
                .or(file.gossip)
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7702))),
            seeds: if flags.seeds.is_empty() {
                file.seeds
            } else {
                flags.seeds
            },
            relay: flags
                .relay
                .or(file.relay)
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7703))),
            relay_test_loss: None,
            dev_secret: flags
                .cluster_secret
                .as_deref()
                .or(file.cluster_secret.as_deref())
                .is_none_or(|s| s == DEV_CLUSTER_SECRET),
            cluster_secret: flags
                .cluster_secret
                .or(file.cluster_secret)
                .unwrap_or_else(|| DEV_CLUSTER_SECRET.into()),
            cluster_secret_previous: flags
                .cluster_secret_previous
                .or(file.cluster_secret_previous)
                .filter(|s| !s.is_empty()),
            admin_token: flags
                .admin_token
                .or(file.admin_token)
                .filter(|t| !t.is_empty()),
            drain_timeout: dur(flags.drain_timeout, file.drain_timeout, 60),
            tls: match (
                flags.tls_cert.or(file.tls_cert),
                flags.tls_key.or(file.tls_key),
            ) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => bail!("tls-cert and tls-key go together: give both or neither"),
            },
            http_limits: crate::http::Limits {
                max_connections: flags
                    .http_max_connections
                    .or(file.http_max_connections)
                    .unwrap_or(4096),
                max_connections_per_ip: flags
                    .http_max_connections_per_ip
                    .or(file.http_max_connections_per_ip)
                    .unwrap_or(256),
                probe_reserve: flags
                    .http_probe_reserve
                    .or(file.http_probe_reserve)
                    .unwrap_or(16),
                timeouts: crate::http::Timeouts {
                    header: dur(flags.http_header_timeout, file.http_header_timeout, 10),
                    idle: dur(flags.http_idle_timeout, file.http_idle_timeout, 60),
                    body: dur(flags.http_body_timeout, file.http_body_timeout, 30),
                },
            },
            turn_keys: if flags.turn_keys.is_empty() {
                file.turn_keys
            } else {
                flags.turn_keys
            },
            turn_port: flags.turn_port.or(file.turn_port).unwrap_or(3478),
            turn_public_ip: flags.turn_public_ip.or(file.turn_public_ip),
            turn_max_allocations: flags
                .turn_max_allocations
                .or(file.turn_max_allocations)
                .unwrap_or(1000),
            turn_allocations_per_credential: flags
                .turn_allocations_per_credential
                .or(file.turn_allocations_per_credential)
                .unwrap_or(10),
            turn_bandwidth_kbps: flags
                .turn_bandwidth
                .or(file.turn_bandwidth)
                .unwrap_or(crate::turn::DEFAULT_KBPS),
            nats: match flags.nats.or(file.nats) {
                Some(url) => Some(crate::egress::NatsConfig::new(
                    url,
                    flags
                        .nats_subject_prefix
                        .or(file.nats_subject_prefix)
                        .unwrap_or_else(|| crate::egress::DEFAULT_PREFIX.to_string()),
                )?),
                None => None,
            },
        };
        if !(1..=crate::workers::MAX_WORKERS).contains(&cfg.workers) {
            bail!(
                "workers must be 1 to {} (the worker index is one byte of a session id, and more threads than cores buy nothing)",
                crate::workers::MAX_WORKERS
            );
        }
        // A map keeps one secret per id: the other would stop working without a word.
        if let Some(id) = first_repeated(cfg.apps.iter().map(|a| a.id.as_str())) {
            bail!("app id {id} is given twice (values are split at ',': does a secret hold one?)");
        }
        if let Some(id) = first_repeated(cfg.turn_keys.iter().map(|k| k.id.as_str())) {
            bail!(
                "turn-key id {id} is given twice (values are split at ',': does a secret hold one?)"
            );
        }
        if !crate::ids::is_valid_node_id(&cfg.node_id) {
            bail!("node-id may only contain letters, digits, '-', '_', '.' and ':' (at most 64)");
        }
        if cfg.gossip.port() == 0 {
            bail!("gossip needs a fixed port: it is announced to the other nodes");
        }
        if cfg.gossip.ip().is_unspecified() {
            bail!(
                "--gossip {} is a wildcard address, which is announced to the other nodes as it \
                 is: give the address they reach this node at",
                cfg.gossip
            );
        }
        // Every key of the cluster (gossip seal, relay CA, node-to-node calls) is derived from
        // the secret: an empty one is as public as the development one.
        if cfg.cluster_secret.is_empty() {
            bail!("cluster-secret is empty: give a secret (say, openssl rand -hex 32)");
        }
        // The development secret is in the source: with it, sealed gossip and the relay's
        // certificates keep nobody out.
        let dev_previous = cfg.cluster_secret_previous.as_deref() == Some(DEV_CLUSTER_SECRET);
        for (what, addr) in [("--gossip", cfg.gossip), ("--relay", cfg.relay)] {
            if (cfg.dev_secret || dev_previous) && !addr.ip().is_loopback() {
                bail!(
                    "{what} {addr} is reachable from other machines: give the cluster a \
                     --cluster-secret of its own (the development secret is public)"
                );
            }
        }
        // Nodes call each other's API (forwarded calls, admin views) over plain HTTP: a TLS
        // node seeding others, or one others can seed from (its gossip reachable), would be a
        // member no other node can call.
        if cfg.tls.is_some() && (!cfg.seeds.is_empty() || !cfg.gossip.ip().is_loopback()) {
            bail!(
                "--tls-cert serves HTTPS on one node; the nodes of a cluster call each other's API \
                 over plain HTTP: put a TLS-terminating proxy in front of a cluster (deploy/README.md)"
            );
        }
        if cfg.rate_limit == 0 {
            bail!("rate-limit must be at least 1");
        }
        if cfg.max_sessions == 0 {
            bail!("max-sessions must be at least 1");
        }
        if cfg.max_sessions_per_app == 0 {
            bail!("max-sessions-per-app must be at least 1");
        }
        if cfg.whep_max_viewers == 0 {
            bail!("whep-max-viewers must be at least 1");
        }
        if cfg.max_rooms_per_app == 0 {
            bail!("max-rooms-per-app must be at least 1");
        }
        for (name, d) in [
            ("track-timeout", cfg.track_timeout),
            ("connect-timeout", cfg.connect_timeout),
            ("reconnect-grace", cfg.reconnect_grace),
            ("unconnected-expiry", cfg.unconnected_expiry),
            ("auth-hook-timeout", cfg.auth_hook_timeout),
            ("http-header-timeout", cfg.http_limits.timeouts.header),
            ("http-idle-timeout", cfg.http_limits.timeouts.idle),
            ("http-body-timeout", cfg.http_limits.timeouts.body),
            ("ws-ping-interval", cfg.ws_ping_interval),
            ("ws-pong-timeout", cfg.ws_pong_timeout),
            ("ws-connect-timeout", cfg.ws_connect_timeout),
            ("ws-answer-timeout", cfg.ws_answer_timeout),
        ] {
            // Zero would end every track, session, hook call, request or socket at once.
            if d.is_zero() {
                bail!("{name} must be above zero");
            }
        }
        if let Some(url) = &cfg.auth_hook {
            match reqwest::Url::parse(url) {
                Ok(u) if u.scheme() == "http" => {}
                // The node's HTTP client is built without TLS: every call would fail, and every
                // ticket and join would be denied with no sign of why.
                Ok(u) if u.scheme() == "https" => bail!(
                    "auth-hook: https is not supported (the node's HTTP client has no TLS); run \
                     the hook beside the node, or behind a local TLS proxy, and give its http:// URL"
                ),
                _ => bail!("auth-hook must be an http:// URL"),
            }
        }
        // The TURN crate relays over IPv4 only: on IPv6 it would start, be handed out in
        // every answer's links, and fail every standard Allocate (508).
        if !cfg.turn_keys.is_empty() {
            let bind_v6 = match cfg.media.ip() {
                IpAddr::V6(ip) if ip.is_unspecified() => cfg.public_ip.is_none_or(|p| p.is_ipv6()),
                ip => ip.is_ipv6(),
            };
            let relayed = cfg
                .turn_public_ip
                .or(cfg.public_ip)
                .unwrap_or(cfg.media.ip());
            if bind_v6 || relayed.is_ipv6() {
                bail!(
                    "TURN (--turn-key) relays over IPv4 only: give --media an IPv4 address (or \
                     [::] with an IPv4 --public-ip), and an IPv4 --turn-public-ip"
                );
            }
        }
        if cfg.session_rate_ip == 0 || cfg.session_rate_app == 0 {
            bail!("session-rate-ip and session-rate-app must be at least 1");
        }
        if cfg.turn_max_allocations == 0
            || cfg.turn_allocations_per_credential == 0
            || cfg.turn_bandwidth_kbps == 0
        {
            bail!(
                "turn-max-allocations, turn-allocations-per-credential and turn-bandwidth must be at least 1"
            );
        }
        let http = &cfg.http_limits;
        if http.max_connections == 0 || http.max_connections_per_ip == 0 {
            bail!("http-max-connections and http-max-connections-per-ip must be at least 1");
        }
        Ok(cfg)
    }

    /// The addresses put into ICE host candidates, the primary one (gossip, TURN, cascades)
    /// first: `--public-ip` (else the bound IP), then `--public-ip6`. A wildcard bind needs a
    /// public IP; `--public-ip6` needs an IPv6 media socket (`--media [::]:PORT` is dual-stack).
    pub fn candidate_addrs(&self, bound_media: SocketAddr) -> anyhow::Result<Vec<SocketAddr>> {
        let port = bound_media.port();
        let mut addrs = Vec::new();
        match self.public_ip {
            Some(ip) => addrs.push(SocketAddr::new(ip, port)),
            None if !bound_media.ip().is_unspecified() => addrs.push(bound_media),
            None => {}
        }
        if let Some(ip6) = self.public_ip6 {
            if !bound_media.is_ipv6() {
                bail!(
                    "--public-ip6 {ip6} needs an IPv6 media socket: bind --media [::]:{port} (dual stack)"
                );
            }
            let addr = SocketAddr::new(IpAddr::V6(ip6), port);
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        if addrs.is_empty() || addrs.iter().any(|a| a.ip().is_unspecified()) {
            bail!(
                "--media {bound_media} is a wildcard address: give --public-ip (and --public-ip6) with the addresses clients reach"
            );
        }
        Ok(addrs)
    }
}

fn read_file(path: &Path, over: &Flags) -> anyhow::Result<Flags> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let err = match toml::from_str(&text) {
        Ok(flags) => return Ok(flags),
        Err(err) => err,
    };
    // Values the command line or the environment sets are not read from the file, so a bad one
    // they override does not stop the node (as it never has): read the file again without them.
    // Any other error is reported as the first read found it, with its place in the file.
    if let Ok(mut table) = toml::from_str::<toml::Table>(&text) {
        let overridden = [
            ("app", !over.apps.is_empty()),
            ("track-timeout", over.track_timeout.is_some()),
            ("connect-timeout", over.connect_timeout.is_some()),
            ("reconnect-grace", over.reconnect_grace.is_some()),
            ("unconnected-expiry", over.unconnected_expiry.is_some()),
            ("drain-timeout", over.drain_timeout.is_some()),
            ("http-header-timeout", over.http_header_timeout.is_some()),
            ("http-idle-timeout", over.http_idle_timeout.is_some()),
            ("http-body-timeout", over.http_body_timeout.is_some()),
            ("ws-ping-interval", over.ws_ping_interval.is_some()),
            ("ws-pong-timeout", over.ws_pong_timeout.is_some()),
            ("ws-connect-timeout", over.ws_connect_timeout.is_some()),
            ("ws-answer-timeout", over.ws_answer_timeout.is_some()),
            ("auth-hook-timeout", over.auth_hook_timeout.is_some()),
        ];
        let mut removed = false;
        for (key, set) in overridden {
            removed |= set && table.remove(key).is_some();
        }
        if removed && let Ok(flags) = toml::Value::Table(table).try_into() {
            return Ok(flags);
        }
    }
    // A bad value reads as it always has: `config track-timeout: invalid duration "x"`.
    if err.message().starts_with(file::PREFIX) {
        Err(anyhow::anyhow!("{}", err.message()))
    } else {
        Err(anyhow::Error::new(err).context(format!("parsing config file {}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn the_public_development_secret_only_on_loopback_gossip() {
        let flags = |gossip: &str, secret: Option<&str>| Flags {
            gossip: gossip.parse().ok(),
            cluster_secret: secret.map(str::to_string),
            ..Flags::default()
        };
        assert!(Config::from_flags(flags("127.0.0.1:7702", None)).is_ok());
        let err = Config::from_flags(flags("10.0.0.5:7702", None)).expect_err("refused");
        assert!(err.to_string().contains("--cluster-secret"), "{err}");
        assert!(Config::from_flags(flags("10.0.0.5:7702", Some("s3cret"))).is_ok());
        // Given explicitly it is just as public, and an empty secret no better.
        for secret in [DEV_CLUSTER_SECRET, ""] {
            let err =
                Config::from_flags(flags("10.0.0.5:7702", Some(secret))).expect_err("refused");
            assert!(err.to_string().contains("cluster-secret"), "{err}");
        }
        let err = Config::from_flags(flags("127.0.0.1:7702", Some(""))).expect_err("refused");
        assert!(err.to_string().contains("empty"), "{err}");
        // The relay's certificates come from the secret too.
        let open_relay = Flags {
            relay: "0.0.0.0:7703".parse().ok(),
            ..flags("127.0.0.1:7702", None)
        };
        let err = Config::from_flags(open_relay).expect_err("refused");
        assert!(err.to_string().contains("--relay"), "{err}");
        let closed_relay = Flags {
            relay: "0.0.0.0:7703".parse().ok(),
            ..flags("127.0.0.1:7702", Some("s3cret"))
        };
        assert!(Config::from_flags(closed_relay).is_ok());
        // A wildcard is announced as it is, which no other node can reach.
        let err = Config::from_flags(flags("0.0.0.0:7702", Some("s3cret"))).expect_err("refused");
        assert!(err.to_string().contains("wildcard"), "{err}");
    }

    #[test]
    fn turn_needs_an_ipv4_media_address() {
        let with = |media: &str, public: Option<&str>| Flags {
            media: media.parse().ok(),
            public_ip: public.and_then(|p| p.parse().ok()),
            turn_keys: vec!["k:secret".parse().expect("key")],
            ..Flags::default()
        };
        for (media, public) in [
            ("[::1]:7701", None),
            ("[::]:7701", None),
            ("[::]:7701", Some("2001:db8::1")),
            ("0.0.0.0:7701", Some("2001:db8::1")),
        ] {
            let err = Config::from_flags(with(media, public)).expect_err(media);
            assert!(err.to_string().contains("IPv4 only"), "{err}");
        }
        assert!(Config::from_flags(with("127.0.0.1:7701", None)).is_ok());
        assert!(Config::from_flags(with("[::]:7701", Some("192.0.2.1"))).is_ok());
        // Without TURN, IPv6 media is fine.
        let no_turn = Flags {
            turn_keys: Vec::new(),
            ..with("[::1]:7701", None)
        };
        assert!(Config::from_flags(no_turn).is_ok());
    }

    #[test]
    fn timeouts_are_above_zero_and_at_most_a_week() {
        let err = parse_duration("10000000000000000000").expect_err("refused");
        assert!(err.contains("7 days"), "{err}");
        assert_eq!(parse_duration("168h"), Ok(MAX_DURATION));
        assert!(parse_duration("169h").is_err());
        // Default flags with one duration set to zero.
        let zero = |set: fn(&mut Flags)| {
            let mut f = Flags::default();
            set(&mut f);
            f
        };
        let cases: [(&str, Flags); 6] = [
            (
                "track-timeout",
                zero(|f| f.track_timeout = Some(Duration::ZERO)),
            ),
            (
                "connect-timeout",
                zero(|f| f.connect_timeout = Some(Duration::ZERO)),
            ),
            (
                "reconnect-grace",
                zero(|f| f.reconnect_grace = Some(Duration::ZERO)),
            ),
            (
                "unconnected-expiry",
                zero(|f| f.unconnected_expiry = Some(Duration::ZERO)),
            ),
            (
                "auth-hook-timeout",
                zero(|f| f.auth_hook_timeout = Some(Duration::ZERO)),
            ),
            (
                "ws-pong-timeout",
                zero(|f| f.ws_pong_timeout = Some(Duration::ZERO)),
            ),
        ];
        for (name, flags) in cases {
            let err = Config::from_flags(flags).expect_err(name);
            assert!(err.to_string().contains(name), "{err}");
        }
        assert!(Config::from_flags(Flags::default()).is_ok());
    }

    #[test]
    fn apps() {
        assert_eq!(
            "a:b".parse::<App>(),
            Ok(App {
                id: "a".into(),
                secret: "b".into()
            })
        );
        assert_eq!(
            "a:b:c".parse::<App>().map(|a| a.secret),
            Ok("b:c".to_string()),
            "the secret may contain colons"
        );
        assert!("nocolon".parse::<App>().is_err());
        assert!(":x".parse::<App>().is_err());
        assert!("a/b:x".parse::<App>().is_err());
    }

    #[test]
    fn flags_beat_file_and_defaults_apply() {
        let dir = std::env::temp_dir().join(format!("tm-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("node.toml");
        std::fs::write(
            &path,
            "http = \"127.0.0.1:9000\"\nmedia = \"127.0.0.1:9001\"\napp = [\"f:s\"]\ntrack-timeout = \"2s\"\n",
        )
        .expect("write config");
        let flags = Flags {
            config: Some(path.clone()),
            http: Some("127.0.0.1:9100".parse().expect("addr")),
            ..Flags::default()
        };
        let cfg = Config::from_flags(flags).expect("config");
        assert_eq!(cfg.http.port(), 9100, "flag wins over file");
        assert_eq!(cfg.media.port(), 9001, "file wins over default");
        assert_eq!(
            cfg.apps,
            vec![App {
                id: "f".into(),
                secret: "s".into()
            }]
        );
        assert!(!cfg.dev_app);
        assert_eq!(cfg.track_timeout, Duration::from_secs(2));
        assert_eq!(cfg.connect_timeout, Duration::from_secs(5));

        std::fs::write(&path, "htp = \"x\"\n").expect("write config");
        let err = Config::from_flags(Flags {
            config: Some(path),
            ..Flags::default()
        });
        assert!(err.is_err(), "unknown keys in the file are rejected");
    }

    #[test]
    fn a_bad_file_value_a_flag_overrides_is_not_read() {
        let dir = std::env::temp_dir().join(format!("tm-cfg-over-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("node.toml");
        std::fs::write(&path, "track-timeout = \"5 sec\"\napp = [\"nocolon\"]\n").expect("write");
        let flags = || Flags {
            config: Some(path.clone()),
            ..Flags::default()
        };
        let err = Config::from_flags(flags()).expect_err("a bad value with no flag");
        assert!(err.to_string().starts_with("config "), "{err}");
        let cfg = Config::from_flags(Flags {
            track_timeout: Some(Duration::from_secs(5)),
            apps: vec![App {
                id: "a".into(),
                secret: "b".into(),
            }],
            ..flags()
        })
        .expect("the flags override both bad values");
        assert_eq!(cfg.track_timeout, Duration::from_secs(5));
        assert_eq!(cfg.apps[0].id, "a");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn help_and_errors_never_show_a_secret() {
        use clap::CommandFactory;
        let secrets = [
            "TRACKMESH_APP",
            "TRACKMESH_TURN_KEY",
            "TRACKMESH_NATS",
            "TRACKMESH_CLUSTER_SECRET",
            "TRACKMESH_CLUSTER_SECRET_PREVIOUS",
            "TRACKMESH_ADMIN_TOKEN",
        ];
        let cmd = Flags::command();
        let mut seen = 0;
        for arg in cmd.get_arguments() {
            let Some(env) = arg.get_env().and_then(|e| e.to_str()) else {
                continue;
            };
            if secrets.contains(&env) {
                seen += 1;
                // Else `--help` prints `[env: NAME=<its value>]` when it is set.
                assert!(
                    arg.is_hide_env_values_set(),
                    "{env} shows its value in --help"
                );
            }
        }
        assert_eq!(seen, secrets.len());
        let err = parse_id_secret("a-secret-without-its-id", "app").expect_err("no colon");
        assert!(!err.contains("a-secret-without-its-id"), "{err}");
    }

    #[test]
    fn an_id_given_twice_is_refused_rather_than_one_secret_dropped() {
        let err = |flags: Flags| {
            Config::from_flags(flags)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let apps = |v: &[&str]| v.iter().map(|a| a.parse().expect("app")).collect();
        let keys = |v: &[&str]| v.iter().map(|a| a.parse().expect("key")).collect();
        // What a comma in a secret can make of `--app a:x,a:y`: two apps of one id.
        let e = err(Flags {
            apps: apps(&["a:s3cret-1", "b:s3cret-2", "a:s3cret-3"]),
            ..Flags::default()
        });
        assert!(e.contains("app id a is given twice"), "{e}");
        assert!(!e.contains("s3cret"), "no secret shown: {e}");
        let e = err(Flags {
            turn_keys: keys(&["k:one", "k:two"]),
            ..Flags::default()
        });
        assert!(e.contains("turn-key id k is given twice"), "{e}");
        assert!(
            Config::from_flags(Flags {
                apps: apps(&["a:one", "b:one"]),
                turn_keys: keys(&["a:one"]),
                ..Flags::default()
            })
            .is_ok()
        );
    }

    #[test]
    fn an_https_auth_hook_is_refused_with_the_reason() {
        let flags = |url: &str| Flags {
            auth_hook: Some(url.to_string()),
            ..Flags::default()
        };
        assert!(Config::from_flags(flags("http://127.0.0.1:9/hook")).is_ok());
        let err = Config::from_flags(flags("https://hooks.example/check"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("https is not supported"), "{err}");
        assert!(Config::from_flags(flags("ftp://x/y")).is_err());
    }

    #[test]
    fn http_limits_from_defaults_file_and_flags() {
        let cfg = Config::from_flags(Flags::default()).expect("config");
        let l = cfg.http_limits;
        assert_eq!(
            (l.max_connections, l.max_connections_per_ip, l.probe_reserve),
            (4096, 256, 16)
        );
        assert_eq!(l.timeouts.header, Duration::from_secs(10));
        assert_eq!(l.timeouts.idle, Duration::from_secs(60));
        assert_eq!(l.timeouts.body, Duration::from_secs(30));

        let dir = std::env::temp_dir().join(format!("tm-cfg-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("node.toml");
        std::fs::write(
            &path,
            "http-max-connections = 100\nhttp-max-connections-per-ip = 10\nhttp-probe-reserve = 0\n\
             http-header-timeout = \"2s\"\nhttp-idle-timeout = \"5s\"\nhttp-body-timeout = \"7s\"\n",
        )
        .expect("write config");
        let cfg = Config::from_flags(Flags {
            config: Some(path.clone()),
            http_max_connections_per_ip: Some(20),
            ..Flags::default()
        })
        .expect("config");
        let l = cfg.http_limits;
        assert_eq!(
            (l.max_connections, l.max_connections_per_ip, l.probe_reserve),
            (100, 20, 0)
        );
        assert_eq!(l.timeouts.header, Duration::from_secs(2));
        assert_eq!(l.timeouts.idle, Duration::from_secs(5));
        assert_eq!(l.timeouts.body, Duration::from_secs(7));

        let zero = Config::from_flags(Flags {
            http_header_timeout: Some(Duration::ZERO),
            ..Flags::default()
        });
        assert!(zero.is_err(), "a zero timeout would close every connection");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The TOML keys as they were when the file had a struct of its own; every one still reads.
    const FILE_KEYS: [&str; 57] = [
        "http",
        "media",
        "workers",
        "worker-ports",
        "public-ip",
        "app",
        "track-timeout",
        "connect-timeout",
        "reconnect-grace",
        "unconnected-expiry",
        "rate-limit",
        "max-body",
        "max-sessions",
        "max-sessions-per-app",
        "session-rate-ip",
        "session-rate-app",
        "whip-auto-create",
        "whep-auto-create",
        "whep-max-viewers",
        "max-rooms-per-app",
        "ws-ping-interval",
        "ws-pong-timeout",
        "ws-connect-timeout",
        "ws-answer-timeout",
        "auth-hook",
        "auth-hook-timeout",
        "trust-user-claim",
        "turn-key",
        "turn-port",
        "turn-public-ip",
        "turn-max-allocations",
        "turn-allocations-per-credential",
        "turn-bandwidth",
        "nats",
        "nats-subject-prefix",
        "log-format",
        "node-id",
        "region",
        "gossip",
        "seed",
        "relay",
        "cluster-secret",
        "cluster-secret-previous",
        "admin-token",
        "drain-timeout",
        "http-max-connections",
        "http-max-connections-per-ip",
        "http-probe-reserve",
        "http-header-timeout",
        "http-idle-timeout",
        "http-body-timeout",
        "state-dir",
        "tls-cert",
        "tls-key",
        "public-ip6",
        "media-tcp",
        "bwe",
    ];

    /// Keys the main file of `every_file_key_is_read` cannot set with the others (HTTPS is
    /// refused with seeds); a file of their own reads them.
    const ONE_NODE_KEYS: [&str; 2] = ["tls-cert", "tls-key"];

    #[test]
    fn candidates_per_family_and_the_wildcard_needs_a_public_ip() {
        let cfg = |args: &[&str]| {
            let argv = ["trackmesh"].iter().chain(args.iter()).copied();
            Config::from_flags(Flags::try_parse_from(argv).expect("flags")).expect("config")
        };
        let addr = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let dual = addr("[::]:7701");
        let both = cfg(&["--public-ip", "192.0.2.1", "--public-ip6", "2001:db8::1"]);
        assert_eq!(
            both.candidate_addrs(dual).expect("both families"),
            [addr("192.0.2.1:7701"), addr("[2001:db8::1]:7701")],
            "the primary (--public-ip) first"
        );
        let only6 = cfg(&["--public-ip6", "2001:db8::1"]);
        assert_eq!(
            only6.candidate_addrs(dual).expect("IPv6 only"),
            [addr("[2001:db8::1]:7701")]
        );
        let err = only6
            .candidate_addrs(addr("0.0.0.0:7701"))
            .expect_err("an IPv4 socket cannot serve IPv6");
        assert!(
            err.to_string().contains("needs an IPv6 media socket"),
            "{err}"
        );
        let none = cfg(&[]);
        assert!(
            none.candidate_addrs(dual).is_err(),
            "a wildcard needs a public IP"
        );
        // As before: a specific bind announces itself, --public-ip replaces it.
        assert_eq!(
            none.candidate_addrs(addr("127.0.0.1:5")).expect("bound"),
            [addr("127.0.0.1:5")]
        );
        assert_eq!(
            cfg(&["--public-ip", "192.0.2.1"])
                .candidate_addrs(addr("10.0.0.1:5"))
                .expect("NAT"),
            [addr("192.0.2.1:5")]
        );
    }

    #[test]
    fn file_keys_are_the_long_flag_names_but_config() {
        use clap::CommandFactory;
        let cmd = Flags::command();
        cmd.clone().debug_assert();
        let mut flags: Vec<&str> = cmd
            .get_arguments()
            .filter_map(|a| a.get_long())
            // `--new-dev-app` is an action of one start, not a setting; the hidden worker
            // flags are test hooks, never file settings.
            .filter(|l| {
                !matches!(
                    *l,
                    "config"
                        | "help"
                        | "version"
                        | "new-dev-app"
                        | "worker-placement"
                        | "fault-panic-worker"
                )
            })
            .collect();
        flags.sort_unstable();
        let mut keys = FILE_KEYS.to_vec();
        keys.sort_unstable();
        assert_eq!(flags, keys);
    }

    #[test]
    fn nats_egress_is_off_by_default_and_its_prefix_is_checked() {
        let cfg = Config::from_flags(Flags::default()).expect("defaults");
        assert!(cfg.nats.is_none(), "no NATS client without --nats");
        let with = |prefix: Option<&str>| {
            Config::from_flags(Flags {
                nats: Some("nats://127.0.0.1:4222".into()),
                nats_subject_prefix: prefix.map(str::to_string),
                ..Flags::default()
            })
        };
        let cfg = with(None).expect("--nats alone");
        assert_eq!(
            cfg.nats.map(|n| n.prefix),
            Some(crate::egress::DEFAULT_PREFIX.to_string())
        );
        let err = with(Some("a.>")).expect_err("a wildcard prefix");
        assert!(
            format!("{err:#}").contains("nats-subject-prefix"),
            "the error names the flag: {err:#}"
        );
    }

    #[test]
    fn https_needs_cert_and_key_and_serves_one_node() {
        let flags = |cert: Option<&str>, key: Option<&str>, seed: bool| Flags {
            tls_cert: cert.map(PathBuf::from),
            tls_key: key.map(PathBuf::from),
            seeds: if seed {
                vec!["127.0.0.1:9".into()]
            } else {
                Vec::new()
            },
            ..Flags::default()
        };
        assert!(Config::from_flags(flags(Some("c"), Some("k"), false)).is_ok());
        for (cert, key) in [(Some("c"), None), (None, Some("k"))] {
            let err = Config::from_flags(flags(cert, key, false)).expect_err("half a pair");
            assert!(err.to_string().contains("go together"), "{err}");
        }
        let err = Config::from_flags(flags(Some("c"), Some("k"), true)).expect_err("a cluster");
        assert!(err.to_string().contains("TLS-terminating proxy"), "{err}");
        // Nor may other nodes join it.
        let reachable = Flags {
            gossip: "10.0.0.5:7702".parse().ok(),
            cluster_secret: Some("s3cret".into()),
            ..flags(Some("c"), Some("k"), false)
        };
        let err = Config::from_flags(reachable).expect_err("joinable");
        assert!(err.to_string().contains("TLS-terminating proxy"), "{err}");
    }

    #[test]
    fn every_file_key_is_read() {
        let dir = std::env::temp_dir().join(format!("tm-cfg-all-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("node.toml");
        let text = r#"
            http = "127.0.0.1:9100"
            media = "127.0.0.1:9101"
            workers = 3
            worker-ports = 9150
            public-ip = "127.0.0.9"
            app = ["a:1", "b:2"]
            track-timeout = "1s"
            connect-timeout = "2s"
            reconnect-grace = "3s"
            unconnected-expiry = "4s"
            rate-limit = 5
            max-body = 6
            max-sessions = 7
            max-sessions-per-app = 8
            session-rate-ip = 9
            session-rate-app = 10
            whip-auto-create = false
            whep-auto-create = false
            whep-max-viewers = 17
            max-rooms-per-app = 21
            ws-ping-interval = "22s"
            ws-pong-timeout = "23s"
            ws-connect-timeout = "25s"
            ws-answer-timeout = "26s"
            auth-hook = "http://127.0.0.1:9/hook"
            auth-hook-timeout = "24s"
            trust-user-claim = true
            turn-key = ["k1:s1", "k2:s2"]
            turn-port = 3479
            turn-public-ip = "127.0.0.10"
            turn-max-allocations = 17
            turn-allocations-per-credential = 18
            turn-bandwidth = 19
            nats = "nats://127.0.0.1:4222"
            nats-subject-prefix = "rec.audio"
            log-format = "json"
            node-id = "n1"
            region = "r1"
            gossip = "127.0.0.1:9102"
            seed = ["127.0.0.1:9200", "127.0.0.1:9201"]
            relay = "127.0.0.1:9103"
            cluster-secret = "s"
            cluster-secret-previous = "p"
            admin-token = "t"
            drain-timeout = "500ms"
            http-max-connections = 11
            http-max-connections-per-ip = 12
            http-probe-reserve = 13
            http-header-timeout = "14s"
            http-idle-timeout = "15s"
            http-body-timeout = "16s"
            state-dir = "/var/lib/trackmesh-test"
            public-ip6 = "::9"
            media-tcp = true
            bwe = true
        "#;
        let keys: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once(" = ").map(|(k, _)| k.trim()))
            .collect();
        let main_keys: Vec<&str> = FILE_KEYS
            .into_iter()
            .filter(|k| !ONE_NODE_KEYS.contains(k))
            .collect();
        assert_eq!(keys, main_keys, "the file below sets every key");
        std::fs::write(&path, text).expect("write config");
        let cfg = Config::from_flags(Flags {
            config: Some(path.clone()),
            ..Flags::default()
        })
        .expect("config");
        let s = Duration::from_secs;
        assert_eq!((cfg.http.port(), cfg.media.port()), (9100, 9101));
        assert_eq!(cfg.public_ip, "127.0.0.9".parse().ok());
        assert_eq!(cfg.public_ip6, "::9".parse().ok());
        assert!(cfg.media_tcp);
        assert!(cfg.bwe);
        assert_eq!(cfg.apps.len(), 2);
        assert!(!cfg.dev_app);
        assert_eq!(
            (
                cfg.track_timeout,
                cfg.connect_timeout,
                cfg.reconnect_grace,
                cfg.unconnected_expiry
            ),
            (s(1), s(2), s(3), s(4))
        );
        assert_eq!((cfg.rate_limit, cfg.max_body, cfg.max_sessions), (5, 6, 7));
        assert_eq!((cfg.workers, cfg.worker_ports), (3, 9150));
        assert_eq!(
            (
                cfg.max_sessions_per_app,
                cfg.session_rate_ip,
                cfg.session_rate_app
            ),
            (8, 9, 10)
        );
        assert_eq!(
            (
                cfg.whip_auto_create,
                cfg.whep_auto_create,
                cfg.whep_max_viewers
            ),
            (false, false, 17)
        );
        assert_eq!(
            cfg.turn_keys
                .iter()
                .map(|k| k.id.as_str())
                .collect::<Vec<_>>(),
            ["k1", "k2"]
        );
        assert_eq!(
            (cfg.turn_port, cfg.turn_public_ip),
            (3479, "127.0.0.10".parse().ok())
        );
        assert_eq!(
            (
                cfg.turn_max_allocations,
                cfg.turn_allocations_per_credential,
                cfg.turn_bandwidth_kbps
            ),
            (17, 18, 19)
        );
        let nats = cfg.nats.as_ref().expect("nats from the file");
        assert_eq!(
            (nats.url.as_str(), nats.prefix.as_str()),
            ("nats://127.0.0.1:4222", "rec.audio")
        );
        assert_eq!(cfg.log_format, LogFormat::Json);
        assert_eq!((cfg.node_id.as_str(), cfg.region.as_str()), ("n1", "r1"));
        assert_eq!((cfg.gossip.port(), cfg.relay.port()), (9102, 9103));
        assert_eq!(cfg.seeds, ["127.0.0.1:9200", "127.0.0.1:9201"]);
        assert_eq!(cfg.cluster_secret, "s");
        assert!(!cfg.dev_secret);
        assert_eq!(cfg.cluster_secret_previous.as_deref(), Some("p"));
        assert_eq!(cfg.admin_token.as_deref(), Some("t"));
        assert_eq!(cfg.drain_timeout, Duration::from_millis(500));
        assert_eq!(
            (
                cfg.max_rooms_per_app,
                cfg.ws_ping_interval,
                cfg.ws_pong_timeout,
                cfg.ws_connect_timeout,
                cfg.ws_answer_timeout,
                cfg.auth_hook.as_deref(),
                cfg.auth_hook_timeout,
                cfg.trust_user_claim
            ),
            (
                21,
                s(22),
                s(23),
                s(25),
                s(26),
                Some("http://127.0.0.1:9/hook"),
                s(24),
                true
            )
        );
        let l = cfg.http_limits;
        assert_eq!(
            (l.max_connections, l.max_connections_per_ip, l.probe_reserve),
            (11, 12, 13)
        );
        assert_eq!(
            (l.timeouts.header, l.timeouts.idle, l.timeouts.body),
            (s(14), s(15), s(16))
        );
        assert_eq!(
            cfg.state_dir.as_deref(),
            Some(Path::new("/var/lib/trackmesh-test"))
        );
        std::fs::write(&path, "tls-cert = \"c.pem\"\ntls-key = \"k.pem\"\n").expect("write");
        let cfg = Config::from_flags(Flags {
            config: Some(path.clone()),
            ..Flags::default()
        })
        .expect("config");
        assert_eq!(
            cfg.tls,
            Some((PathBuf::from("c.pem"), PathBuf::from("k.pem")))
        );

        // Bad values read as they always have, without TOML's location; other errors keep it.
        for (bad, says) in [
            (
                "track-timeout = \"3 weeks\"\n",
                "config track-timeout: unknown duration unit in \"3 weeks\" (use ms, s, m or h)",
            ),
            (
                "http-idle-timeout = \"-1s\"\n",
                "config http-idle-timeout: invalid duration \"-1s\"",
            ),
            (
                "app = [\"nocolon\"]\n",
                "config app: expected ID:SECRET (the value has no ':')",
            ),
            (
                "turn-key = [\"a:b\", \"bad id:x\"]\n",
                "config turn-key: TURN key id \"bad id\" may only contain letters, digits, '-' and '_'",
            ),
            (
                "turn-bandwidth = 0\n",
                "turn-max-allocations, turn-allocations-per-credential and turn-bandwidth must be at least 1",
            ),
        ] {
            std::fs::write(&path, bad).expect("write config");
            let err = Config::from_flags(Flags {
                config: Some(path.clone()),
                ..Flags::default()
            })
            .expect_err(bad);
            assert_eq!(format!("{err:#}"), says, "{bad:?}");
        }
        std::fs::write(&path, "config = \"x.toml\"\n").expect("write config");
        let err = Config::from_flags(Flags {
            config: Some(path.clone()),
            ..Flags::default()
        })
        .expect_err("config is no file key");
        let err = format!("{err:#}");
        assert!(err.starts_with("parsing config file"), "{err}");
        assert!(err.contains("unknown field `config`"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn dev_app_when_none_given() {
        let cfg = Config::from_flags(Flags::default()).expect("config");
        assert!(cfg.dev_app);
        assert_eq!(cfg.apps.len(), 1);
        assert_eq!(cfg.apps[0].id.len(), 32);
    }
}
