//! Configuration: one struct of resolved settings built from flags, environment variables and a
//! TOML file, with the precedence flag > env > file > built-in default.
//!
//! Every setting is declared once in [`Overrides`], which is both the clap parser (flags with
//! `env` fallbacks, all `Option` so an absent flag stays distinguishable) and the serde shape of
//! the TOML file (`deny_unknown_fields`, so a typo in the file is an error, not a silent
//! default). [`Config::resolve`] picks the first present value per setting, then `validate`
//! checks the whole before anything binds. `config/topgun.toml` mirrors [`Config::default`].
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use serde::{Deserialize, Deserializer};

/// A configuration problem, reported as one line before the node starts anything.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Flag(String),
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("invalid value for {setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
}

impl ConfigError {
    /// Stable, for scripts that read the exit line and for log queries.
    pub fn code(&self) -> &'static str {
        match self {
            ConfigError::Flag(_) => "config_flag",
            ConfigError::ReadFile { .. } => "config_unreadable",
            ConfigError::ParseFile { .. } => "config_unparsable",
            ConfigError::Invalid { .. } => "config_invalid",
        }
    }

    fn invalid(setting: &'static str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            setting,
            message: message.into(),
        }
    }
}

/// Where the node keeps its maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageBackend {
    /// Embedded, durable, the default: an operator needs no database server.
    Redb,
    /// In-process only; for tests and caches. `null` is accepted because other TopGun tooling
    /// spells it that way.
    Memory,
}

impl FromStr for StorageBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "redb" => Ok(StorageBackend::Redb),
            "memory" | "null" | "mem" => Ok(StorageBackend::Memory),
            other => Err(format!(
                "unknown storage backend {other:?} (expected redb or memory)"
            )),
        }
    }
}

impl fmt::Display for StorageBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageBackend::Redb => "redb",
            StorageBackend::Memory => "memory",
        })
    }
}

/// When a write is acknowledged in a cluster: once the owner has it durably, or once the
/// owner and every backup have it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum WriteAck {
    Owner,
    OwnerAndBackup,
}

impl FromStr for WriteAck {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "owner" => Ok(WriteAck::Owner),
            "owner+backup" | "owner-backup" | "backup" => Ok(WriteAck::OwnerAndBackup),
            other => Err(format!(
                "unknown write ack {other:?} (expected owner or owner+backup)"
            )),
        }
    }
}

impl TryFrom<String> for WriteAck {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for WriteAck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WriteAck::Owner => "owner",
            WriteAck::OwnerAndBackup => "owner+backup",
        })
    }
}

/// Which partitions a cluster node keeps: only those it owns or backs up (the default:
/// capacity grows with the nodes, reads are gathered from the holders), or every one (each
/// node a full copy, reads answered locally: the behaviour of builds before issue 14).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum Placement {
    Full,
    Partitioned,
}

impl FromStr for Placement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(Placement::Full),
            "partitioned" => Ok(Placement::Partitioned),
            other => Err(format!(
                "unknown placement {other:?} (expected full or partitioned)"
            )),
        }
    }
}

impl TryFrom<String> for Placement {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Placement::Full => "full",
            Placement::Partitioned => "partitioned",
        })
    }
}

/// Pino's level names; the numbers are Pino's too (see `telemetry::logging`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Trace = 10,
    Debug = 20,
    Info = 30,
    Warn = 40,
    Error = 50,
    Fatal = 60,
    /// Pino's `silent`: nothing is written.
    Silent = 100,
}

impl LogLevel {
    pub fn pino_number(self) -> u8 {
        self as u8
    }

    pub fn from_pino_number(n: u8) -> Option<Self> {
        [
            LogLevel::Trace,
            LogLevel::Debug,
            LogLevel::Info,
            LogLevel::Warn,
            LogLevel::Error,
            LogLevel::Fatal,
            LogLevel::Silent,
        ]
        .into_iter()
        .find(|l| l.pino_number() == n)
    }
}

impl FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "trace" => Ok(LogLevel::Trace),
            "debug" => Ok(LogLevel::Debug),
            "info" => Ok(LogLevel::Info),
            "warn" | "warning" => Ok(LogLevel::Warn),
            "error" => Ok(LogLevel::Error),
            "fatal" | "critical" => Ok(LogLevel::Fatal),
            "silent" | "off" => Ok(LogLevel::Silent),
            other => Err(format!(
                "unknown log level {other:?} (expected trace, debug, info, warn, error, fatal or silent)"
            )),
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::Fatal => "fatal",
            LogLevel::Silent => "silent",
        })
    }
}

/// Where log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogDest {
    Stdout,
    Stderr,
    File(PathBuf),
}

impl FromStr for LogDest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" => Err("empty log destination".into()),
            "stdout" | "-" => Ok(LogDest::Stdout),
            "stderr" => Ok(LogDest::Stderr),
            path => Ok(LogDest::File(PathBuf::from(path))),
        }
    }
}

impl fmt::Display for LogDest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogDest::Stdout => f.write_str("stdout"),
            LogDest::Stderr => f.write_str("stderr"),
            LogDest::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Deserializes a TOML string through the type's `FromStr`, so the file accepts exactly the
/// spellings the flag and the environment accept.
fn via_from_str<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    let s = Option::<String>::deserialize(d)?;
    s.map(|s| s.parse().map_err(serde::de::Error::custom))
        .transpose()
}

/// `max_memory` in the file: `"2Gi"` like the flag, or a plain number of bytes.
fn memory_limit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MemoryLimit>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Bytes(u64),
        Text(String),
    }
    match Option::<Given>::deserialize(d)? {
        None => Ok(None),
        Some(Given::Bytes(0)) => Ok(Some(MemoryLimit::Off)),
        Some(Given::Bytes(n)) => Ok(Some(MemoryLimit::Bytes(n))),
        Some(Given::Text(t)) => t.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// Booleans from the environment come in many spellings (`TOPGUN_NO_AUTH=1`, `=true`, `=yes`).
fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        other => Err(format!(
            "{other:?} is not a boolean (use 1/true/yes or 0/false/no)"
        )),
    }
}

fn parse_seed_list(s: &str) -> Result<SeedList, String> {
    Ok(SeedList(
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect(),
    ))
}

/// `host:port,host:port`; kept as text because host names are resolved when joining.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SeedList(pub Vec<String>);

/// Every setting as an optional override. Flags and env through clap, the file through serde.
#[derive(Debug, Default, Parser, Deserialize)]
#[command(
    name = "topgun-node",
    version,
    about = "A cluster node of the TopGun real-time, local-first data grid",
    after_help = "Commands (first argument):\n  check-config [FLAGS]  resolve flags > environment > file > defaults, validate, print every \
setting with its source (secrets masked); exit 0, or 2 with the error\n  healthcheck [URL]     GET /health of the node on this machine; exit 0 when it answers 200, else 1"
)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// TOML config file (see config/topgun.toml for every key and its default)
    #[arg(long, env = "TOPGUN_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Client port (WebSocket, HTTP); 0 lets the OS choose and prints PORT=<n> [default: 8080]
    #[arg(long, env = "PORT")]
    pub port: Option<u16>,
    /// Bind address [default: 0.0.0.0, or 127.0.0.1 when authentication is off]
    #[arg(long, env = "TOPGUN_BIND_ADDR")]
    pub host: Option<String>,
    /// This node's id (no ':'); generated once and kept in the data dir when unset
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,
    /// Node-to-node port; 0 lets the OS choose and prints CLUSTER_PORT=<n> [default: 9080]
    #[arg(long, env = "TOPGUN_CLUSTER_PORT")]
    pub cluster_port: Option<u16>,
    /// Comma-separated host:port of peers to join
    #[arg(long, env = "TOPGUN_PEERS", value_parser = parse_seed_list)]
    pub seed_nodes: Option<SeedList>,
    /// Address peers use to reach this node [default: the bind address, or the host name]
    #[arg(long, env = "TOPGUN_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,
    /// Membership probe period, ms: a dead peer is declared down about 4 periods later [default: 1000]
    #[arg(long, env = "TOPGUN_CLUSTER_PROBE_MS")]
    pub cluster_probe_ms: Option<u64>,
    /// Backups per partition besides its owner (capped at members - 1) [default: 1]
    #[arg(long, env = "TOPGUN_BACKUP_COUNT")]
    pub backup_count: Option<u8>,
    /// When a cluster write is acknowledged: owner, or owner+backup [default: owner+backup]
    #[arg(long, env = "TOPGUN_WRITE_ACK")]
    pub write_ack: Option<WriteAck>,
    /// Partitions a node keeps: partitioned (those it owns or backs up) or full (every one) [default: partitioned]
    #[arg(long, env = "TOPGUN_PLACEMENT")]
    pub placement: Option<Placement>,
    /// How long a replicated write waits for a backup, ms (an owner gets twice that) [default: 5000]
    #[arg(long, env = "TOPGUN_CLUSTER_TIMEOUT_MS")]
    pub cluster_timeout_ms: Option<u64>,
    /// How long /ready waits for the seeds before the node serves alone, ms [default: 10000]
    #[arg(long, env = "TOPGUN_CLUSTER_JOIN_TIMEOUT_MS")]
    pub cluster_join_timeout_ms: Option<u64>,
    /// How often the owner of partitions compares them with their backups and repairs what
    /// differs, ms; 0 = never [default: 30000]
    #[arg(long, env = "TOPGUN_ANTI_ENTROPY_INTERVAL_MS")]
    pub anti_entropy_interval_ms: Option<u64>,
    /// Bytes a peer link may hold unsent (the peer not reading) before it is cut off and the
    /// peer caught up later [default: 67108864]
    #[arg(long, env = "TOPGUN_CLUSTER_LINK_BUFFER_BYTES")]
    pub cluster_link_buffer_bytes: Option<usize>,
    /// Shared secret of the cluster: peers prove it in their handshake and MAC every membership
    /// datagram with it (at least 16 characters)
    #[arg(long, env = "TOPGUN_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// The secret before a rotation: still accepted, and proved too, while the new one is rolled out
    #[arg(long, env = "TOPGUN_CLUSTER_SECRET_PREVIOUS", hide_env_values = true)]
    pub cluster_secret_previous: Option<String>,
    /// File holding the cluster secret (first line) and optionally the previous one (second line)
    #[arg(long, env = "TOPGUN_CLUSTER_SECRET_FILE", value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// PEM certificate chain this node presents on its peer links (mutual TLS; with
    /// --cluster-tls-key and --cluster-tls-ca)
    #[arg(long, env = "TOPGUN_CLUSTER_TLS_CERT", value_name = "FILE")]
    pub cluster_tls_cert: Option<PathBuf>,
    /// PEM private key of --cluster-tls-cert
    #[arg(long, env = "TOPGUN_CLUSTER_TLS_KEY", value_name = "FILE")]
    pub cluster_tls_key: Option<PathBuf>,
    /// PEM certificate of the cluster's CA: a peer link is accepted only with a certificate it signed
    #[arg(long, env = "TOPGUN_CLUSTER_TLS_CA", value_name = "FILE")]
    pub cluster_tls_ca: Option<PathBuf>,
    /// Let the cluster port listen beyond loopback without a cluster secret: anyone who reaches
    /// it can join the cluster and read every map
    #[arg(long, env = "TOPGUN_CLUSTER_INSECURE", value_parser = parse_bool, num_args = 0..=1, default_missing_value = "true")]
    pub cluster_insecure: Option<bool>,
    /// Serve /metrics on this port instead of the client port
    #[arg(long, env = "TOPGUN_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// PEM certificate chain of the client port: clients connect with wss:// and https://
    /// (with --tls-key)
    #[arg(long, env = "TOPGUN_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, env = "TOPGUN_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// How often the client TLS files are checked for a change and reloaded (0: only on SIGHUP)
    /// [default: 10000]
    #[arg(long, env = "TOPGUN_TLS_RELOAD_INTERVAL_MS")]
    pub tls_reload_interval_ms: Option<u64>,

    /// redb (durable, default) or memory (alias: null)
    #[arg(long, env = "STORAGE_BACKEND")]
    #[serde(default, deserialize_with = "via_from_str")]
    pub storage_backend: Option<StorageBackend>,
    /// Data directory for the redb backend and the node id [default: ./data]
    #[arg(long, env = "TOPGUN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// HMAC secret for HS256 tokens, or an RSA public key (PEM) for RS256
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Development mode: every connection is authenticated from its first frame
    #[arg(long, env = "TOPGUN_NO_AUTH", value_parser = parse_bool, num_args = 0..=1, default_missing_value = "true")]
    pub no_auth: Option<bool>,
    /// Required `iss` claim, when set
    #[arg(long, env = "TOPGUN_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, when set
    #[arg(long, env = "TOPGUN_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// JWT verification keys by `kid` instead of JWT_SECRET: a JWKS document ({"keys": [...]})
    /// or one PEM public key, read again when it changes and on SIGHUP
    #[arg(long, env = "TOPGUN_JWT_KEYS_FILE", value_name = "FILE")]
    pub jwt_keys_file: Option<PathBuf>,
    /// How often --jwt-keys-file is checked for a change, ms (0: only on SIGHUP) [default: 10000]
    #[arg(long, env = "TOPGUN_JWT_KEYS_RELOAD_INTERVAL_MS")]
    pub jwt_keys_reload_interval_ms: Option<u64>,
    /// The identity provider's JWKS (http:// or https://) instead of JWT_SECRET: fetched at
    /// start, refreshed on an interval, on SIGHUP and when a token names an unknown `kid`
    #[arg(long, env = "TOPGUN_JWKS_URL", value_name = "URL")]
    pub jwks_url: Option<String>,
    /// How often --jwks-url is fetched again, ms (0: only on an unknown `kid` and SIGHUP)
    /// [default: 300000]
    #[arg(long, env = "TOPGUN_JWKS_REFRESH_INTERVAL_MS")]
    pub jwks_refresh_interval_ms: Option<u64>,
    /// Shortest time between a fetch of --jwks-url and one caused by a token with an unknown
    /// `kid`, ms [default: 10000]
    #[arg(long, env = "TOPGUN_JWKS_MIN_REFRESH_INTERVAL_MS")]
    pub jwks_min_refresh_interval_ms: Option<u64>,
    /// PEM certificate(s) of the CA that --jwks-url's certificate must chain to, instead of
    /// the system's root certificates
    #[arg(long, env = "TOPGUN_JWKS_CA", value_name = "FILE")]
    pub jwks_ca: Option<PathBuf>,

    /// trace, debug, info, warn, error, fatal, silent [default: info]
    #[arg(long, env = "LOG_LEVEL")]
    #[serde(default, deserialize_with = "via_from_str")]
    pub log_level: Option<LogLevel>,
    /// stdout, stderr or a file path [default: stdout]
    #[arg(long, env = "TOPGUN_LOG_DEST")]
    #[serde(default, deserialize_with = "via_from_str")]
    pub log_dest: Option<LogDest>,
    /// Log lines buffered for the writer thread before new ones are dropped and counted [default: 8192]
    #[arg(long, env = "TOPGUN_LOG_BUFFER")]
    pub log_buffer: Option<usize>,

    /// How often actors report their telemetry to the metrics actor, ms [default: 1000]
    #[arg(long, env = "TOPGUN_REPORT_INTERVAL_MS")]
    pub report_interval_ms: Option<u64>,
    /// Per-actor handle times and mailbox waits (counts, depths, dead letters: always) [default: true]
    #[arg(long, env = "TOPGUN_ACTOR_TELEMETRY", value_parser = parse_bool, num_args = 0..=1, default_missing_value = "true")]
    pub actor_telemetry: Option<bool>,
    /// Distinct `map` label values before further maps fold into "__other__" [default: 1000]
    #[arg(long, env = "TOPGUN_MAP_LABEL_CAP")]
    pub map_label_cap: Option<usize>,
    /// Sliding window of the subscribers-per-event quantiles, seconds [default: 600]
    #[arg(long, env = "TOPGUN_SUMMARY_WINDOW_SECS")]
    pub summary_window_secs: Option<u64>,

    /// Time a new connection has to authenticate, ms [default: 10000]
    #[arg(long, env = "TOPGUN_AUTH_TIMEOUT_MS")]
    pub auth_timeout_ms: Option<u64>,
    /// An authenticated connection with no PING for this long is closed, ms [default: 60000]
    #[arg(long, env = "TOPGUN_HEARTBEAT_TIMEOUT_MS")]
    pub heartbeat_timeout_ms: Option<u64>,
    /// How often heartbeats are checked, ms [default: 10000]
    #[arg(long, env = "TOPGUN_HEARTBEAT_CHECK_MS")]
    pub heartbeat_check_ms: Option<u64>,
    /// A client whose socket takes no bytes for this long (it stopped reading) is cut
    /// (TCP_USER_TIMEOUT); 0 leaves it to the kernel, which never cuts a closed window, ms
    /// [default: 30000]
    #[arg(long, env = "TOPGUN_CLIENT_SEND_TIMEOUT_MS")]
    pub client_send_timeout_ms: Option<u64>,
    /// Largest inbound WebSocket message, bytes [default: 2097152]
    #[arg(long, env = "TOPGUN_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Per-connection token bucket refill, frames (ops) per second [default: 20000]
    #[arg(long, env = "TOPGUN_CLIENT_RATE")]
    pub client_rate: Option<u32>,
    /// Per-connection token bucket capacity [default: 40000]
    #[arg(long, env = "TOPGUN_CLIENT_BURST")]
    pub client_burst: Option<u32>,
    /// Messages queued for one client before live broadcasts to it are dropped [default: 256]
    #[arg(long, env = "TOPGUN_OUTBOUND_QUEUE")]
    pub outbound_queue: Option<usize>,
    /// New connections admitted per second [default: 100]
    #[arg(long, env = "TOPGUN_CONNECTION_RATE")]
    pub connection_rate: Option<u32>,
    /// Connections allowed to be in their handshake at once [default: 1000]
    #[arg(long, env = "TOPGUN_MAX_PENDING_CONNECTIONS")]
    pub max_pending_connections: Option<u32>,
    /// Seconds a graceful shutdown may take, drain included, before remaining work is
    /// abandoned [default: 25]
    #[arg(long, env = "TOPGUN_SHUTDOWN_TIMEOUT_SECS")]
    pub shutdown_timeout_secs: Option<u64>,
    /// After SIGTERM, how long the node keeps serving its clients with /ready at 503 before it
    /// starts closing them, so a load balancer stops sending it clients first, ms (0: none)
    /// [default: 5000]
    #[arg(long, env = "TOPGUN_DRAIN_DELAY_MS")]
    pub drain_delay_ms: Option<u64>,
    /// Then the window over which its clients are closed (1001) in small even groups, so their
    /// reconnects do not hit the other nodes at once, ms (0: all at once) [default: 10000]
    #[arg(long, env = "TOPGUN_DRAIN_SPREAD_MS")]
    pub drain_spread_ms: Option<u64>,
    /// HTTP worker threads [default: number of cores]
    #[arg(long, env = "TOPGUN_WORKERS")]
    pub workers: Option<usize>,

    /// Shard actors, each on its own thread, splitting the 271 partitions [default: number of cores]
    #[arg(long, env = "TOPGUN_SHARDS")]
    pub shards: Option<usize>,
    /// Change events the event queue holds across all stripes [default: 10000]
    #[arg(long, env = "TOPGUN_EVENT_QUEUE_CAPACITY")]
    pub event_queue_capacity: Option<usize>,
    /// Stripes of the event queue (a key always maps to the same one) [default: 4]
    #[arg(long, env = "TOPGUN_EVENT_QUEUE_STRIPES")]
    pub event_queue_stripes: Option<usize>,
    /// A write stamped further ahead of the node's clock is rejected, ms [default: 60000]
    #[arg(long, env = "TOPGUN_MAX_DRIFT_MS")]
    pub max_drift_ms: Option<u64>,
    /// Tombstones older than this are garbage-collected, seconds [default: 604800 (7 days)]
    #[arg(long, env = "TOPGUN_TOMBSTONE_MAX_AGE_SECS")]
    pub tombstone_max_age_secs: Option<u64>,
    /// How often expired entries and old tombstones are swept, ms [default: 1000]
    #[arg(long, env = "TOPGUN_SWEEP_INTERVAL_MS")]
    pub sweep_interval_ms: Option<u64>,
    /// Most rows of one query snapshot (more sets hasMore) [default: 10000]
    #[arg(long, env = "TOPGUN_QUERY_MAX_RESULTS")]
    pub query_max_results: Option<usize>,
    /// Live queries one connection may hold at once; more are refused [default: 10000]
    #[arg(long, env = "TOPGUN_MAX_LIVE_QUERIES_PER_CONNECTION")]
    pub max_live_queries_per_connection: Option<usize>,
    /// Topics one connection may subscribe to at once; more are refused [default: 1000]
    #[arg(long, env = "TOPGUN_MAX_TOPICS_PER_CONNECTION")]
    pub max_topics_per_connection: Option<usize>,
    /// Maps this node holds before writes naming a new one are refused [default: 10000]
    #[arg(long, env = "TOPGUN_MAX_MAPS")]
    pub max_maps: Option<usize>,
    /// Resident memory above which writes that add data are refused: bytes, with an optional
    /// suffix K/M/G/T (powers of 1000) or Ki/Mi/Gi/Ti (powers of 1024), or 0 for no budget
    /// [default: 80% of the cgroup's memory limit, else of the machine's memory]
    #[arg(long, env = "TOPGUN_MAX_MEMORY")]
    #[serde(default, deserialize_with = "memory_limit")]
    pub max_memory: Option<MemoryLimit>,
    /// Write batches accepted and not yet applied, node-wide, before connections wait [default: 1000]
    #[arg(long, env = "TOPGUN_BACKPRESSURE_LIMIT")]
    pub backpressure_limit: Option<usize>,
    /// Every Nth batch of a connection waits for its in-flight writes [default: 100]
    #[arg(long, env = "TOPGUN_BACKPRESSURE_SYNC_EVERY")]
    pub backpressure_sync_every: Option<u64>,
    /// Most records committed in one storage transaction [default: 10000]
    #[arg(long, env = "TOPGUN_STORAGE_GROUP_MAX_RECORDS")]
    pub storage_group_max_records: Option<usize>,
    /// Longest a write waits for its group to commit, ms [default: 2]
    #[arg(long, env = "TOPGUN_STORAGE_GROUP_MAX_DELAY_MS")]
    pub storage_group_max_delay_ms: Option<u64>,
    /// A connection waiting for capacity longer than this gets an error for its batch, ms [default: 5000]
    #[arg(long, env = "TOPGUN_BACKPRESSURE_TIMEOUT_MS")]
    pub backpressure_timeout_ms: Option<u64>,

    /// Bearer token for /debug/actors and /debug/log-level; unset: those answer 404
    #[arg(long, env = "TOPGUN_DEBUG_TOKEN", hide_env_values = true)]
    pub debug_token: Option<String>,
}

/// The resolved settings. `Default` is the documented defaults (config/topgun.toml).
#[derive(Clone, Debug)]
pub struct Config {
    pub port: u16,
    pub host: IpAddr,
    pub node_id: Option<String>,
    pub cluster_port: u16,
    pub seed_nodes: Vec<String>,
    pub advertise_host: Option<String>,
    /// SWIM probe period of the membership (foca); the other timings derive from it.
    pub cluster_probe: Duration,
    pub backup_count: u8,
    pub write_ack: WriteAck,
    pub placement: Placement,
    /// Longest wait for a peer's answer to a forwarded or replicated write.
    pub cluster_timeout: Duration,
    /// Longest wait for the seeds (and the first data pull) before serving alone.
    pub cluster_join_timeout: Duration,
    /// `None`: peers are not authenticated, and the cluster port listens on loopback only
    /// unless `cluster_insecure` ([`Config::cluster_host`]).
    pub cluster_secret: Option<ClusterSecret>,
    pub cluster_insecure: bool,
    /// `None`: peer links are plain TCP.
    pub cluster_tls: Option<TlsFiles>,
    /// `None`: the client port speaks plain HTTP and WebSocket.
    pub client_tls: Option<ClientTlsFiles>,
    /// `None`: the client TLS files are reloaded on SIGHUP only.
    pub tls_reload_interval: Option<Duration>,
    /// Unsent bytes one peer link may hold before it is cut off.
    pub cluster_link_buffer: usize,
    /// `None`: no anti-entropy rounds.
    pub anti_entropy_interval: Option<Duration>,
    pub metrics_port: Option<u16>,
    pub storage_backend: StorageBackend,
    pub data_dir: PathBuf,
    pub auth: AuthMode,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub log_level: LogLevel,
    pub log_dest: LogDest,
    pub log_buffer: usize,
    pub report_interval: Duration,
    pub actor_telemetry: bool,
    pub map_label_cap: usize,
    pub summary_window: Duration,
    pub auth_timeout: Duration,
    pub heartbeat_timeout: Duration,
    pub heartbeat_check: Duration,
    /// `None`: the kernel's default (a client that stopped reading is never cut by TCP).
    pub client_send_timeout: Option<Duration>,
    pub max_frame_bytes: usize,
    pub client_rate: u32,
    pub client_burst: u32,
    pub outbound_queue: usize,
    pub connection_rate: u32,
    pub max_pending_connections: u32,
    /// The watchdog's bound on a whole shutdown, drain included.
    pub shutdown_timeout: Duration,
    /// SIGTERM to the first client closed: the balancer's time to see `/ready` at 503.
    pub drain_delay: Duration,
    /// The window the clients are closed over (zero: all at once).
    pub drain_spread: Duration,
    pub workers: usize,
    pub shards: usize,
    pub event_queue_capacity: usize,
    pub event_queue_stripes: usize,
    pub max_drift_ms: u64,
    pub tombstone_max_age: Duration,
    pub sweep_interval: Duration,
    pub query_max_results: usize,
    pub max_live_queries_per_connection: usize,
    pub max_topics_per_connection: usize,
    pub max_maps: usize,
    pub max_memory: MemoryLimit,
    pub backpressure_limit: usize,
    pub backpressure_sync_every: u64,
    pub backpressure_timeout: Duration,
    pub storage_group_max_records: usize,
    pub storage_group_max_delay: Duration,
    /// `None`: the `/debug/*` endpoints do not exist (404).
    pub debug_token: Option<DebugToken>,
}

/// `--max-memory`: the node-wide memory budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryLimit {
    /// A share of the cgroup's or the machine's memory, found at start.
    Auto,
    /// `0`: no budget.
    Off,
    Bytes(u64),
}

impl fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryLimit::Auto => f.write_str("auto"),
            MemoryLimit::Off => f.write_str("0"),
            MemoryLimit::Bytes(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for MemoryLimit {
    type Err = String;

    /// `2147483648`, `2Gi`, `2GiB`, `1.5G`, `512M`, `0`, `auto`.
    fn from_str(text: &str) -> Result<MemoryLimit, String> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("auto") {
            return Ok(MemoryLimit::Auto);
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let scale: u64 = match unit.trim().trim_end_matches(['B', 'b']) {
            "" => 1,
            "K" | "k" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            "T" => 1_000_000_000_000,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "Ti" => 1 << 40,
            other => {
                return Err(format!(
                    "{text:?}: unknown unit {other:?} (bytes, or K/M/G/T, Ki/Mi/Gi/Ti)"
                ))
            }
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?}: expected a number of bytes, e.g. 2Gi"))?;
        let bytes = value * scale as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(format!("{text:?}: out of range"));
        }
        Ok(match bytes as u64 {
            0 => MemoryLimit::Off,
            n => MemoryLimit::Bytes(n),
        })
    }
}

/// The cluster secret and, during a rotation, the one before it. Its `Debug` never prints them.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret {
    pub current: String,
    pub previous: Option<String>,
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.previous {
            Some(_) => f.write_str("ClusterSecret(***, previous ***)"),
            None => f.write_str("ClusterSecret(***)"),
        }
    }
}

/// Backups per partition a node accepts (`--backup-count`); each one costs a synchronous
/// replication per write. Here, not in the partition table that honours it, because
/// `validate()` refuses more and config sits below the cluster.
pub const MAX_BACKUPS: usize = 6;

/// The shortest cluster secret accepted: an HMAC key shorter than this can be guessed offline
/// from one recorded handshake.
pub const MIN_CLUSTER_SECRET_LEN: usize = 16;

impl ClusterSecret {
    /// From the flags, or the file (first line current, second line previous); not both.
    fn resolve(
        secret: Option<String>,
        previous: Option<String>,
        file: Option<PathBuf>,
    ) -> Result<Option<ClusterSecret>, ConfigError> {
        let (current, previous) = match (secret, file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::invalid(
                    "cluster_secret",
                    "set the cluster secret or the cluster secret file, not both",
                ))
            }
            (Some(s), None) => (s, previous),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| ConfigError::ReadFile { path, source })?;
                let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
                let current = lines.next().unwrap_or_default().to_owned();
                (current, lines.next().map(str::to_owned).or(previous))
            }
            (None, None) if previous.is_some() => {
                return Err(ConfigError::invalid(
                    "cluster_secret_previous",
                    "a previous cluster secret needs a current one",
                ))
            }
            (None, None) => return Ok(None),
        };
        for (setting, s) in [
            ("cluster_secret", Some(&current)),
            ("cluster_secret_previous", previous.as_ref()),
        ] {
            if let Some(s) = s {
                if s.chars().count() < MIN_CLUSTER_SECRET_LEN {
                    return Err(ConfigError::invalid(
                        setting,
                        format!("at least {MIN_CLUSTER_SECRET_LEN} characters are needed"),
                    ));
                }
            }
        }
        Ok(Some(ClusterSecret { current, previous }))
    }
}

/// The three files of the peer links' mutual TLS (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// The cluster's TLS files: all three, or none (links in plain TCP). Without the CA nothing
/// could verify a peer, and without its own certificate a node could not be verified.
fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
) -> Result<Option<TlsFiles>, ConfigError> {
    match (cert, key, ca) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles { cert, key, ca })),
        (cert, key, _) => {
            let missing = if cert.is_none() {
                "cluster_tls_cert"
            } else if key.is_none() {
                "cluster_tls_key"
            } else {
                "cluster_tls_ca"
            };
            Err(ConfigError::invalid(
                missing,
                "cluster TLS needs a certificate, its key and the cluster CA together \
                 (--cluster-tls-cert, --cluster-tls-key, --cluster-tls-ca)",
            ))
        }
    }
}

/// The client port's certificate and key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Client TLS needs both files, or neither.
fn client_tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<ClientTlsFiles>, ConfigError> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(ClientTlsFiles { cert, key })),
        (cert, _) => Err(ConfigError::invalid(
            if cert.is_none() {
                "tls_cert"
            } else {
                "tls_key"
            },
            "client TLS needs a certificate and its key together (--tls-cert, --tls-key)",
        )),
    }
}

/// The bearer token of the `/debug/*` endpoints. Its `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct DebugToken(String);

impl DebugToken {
    /// Compares in time independent of where the first difference is.
    pub fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), presented.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for DebugToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DebugToken(***)")
    }
}

/// How clients prove who they are.
#[derive(Clone, PartialEq, Eq)]
pub enum AuthMode {
    /// HS256 with this secret, or RS256 when it is a PEM public key.
    Jwt { secret: String },
    /// Keys by `kid`, from a file or an identity provider's JWKS, kept current while the node
    /// runs.
    Keys(KeySource),
    /// Development: every connection is authenticated from its first frame.
    Off {
        /// True when the operator asked for it (`TOPGUN_NO_AUTH`), false when the node fell
        /// back to it because no secret was configured (then it only listens on loopback).
        explicit: bool,
    },
}

impl fmt::Debug for AuthMode {
    /// Never prints the secret: the effective config is logged at start.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthMode::Jwt { secret } if secret.starts_with("-----BEGIN") => {
                f.write_str("jwt-rs256")
            }
            AuthMode::Jwt { .. } => f.write_str("jwt-hs256"),
            AuthMode::Keys(KeySource::File { .. }) => f.write_str("jwt-keys-file"),
            AuthMode::Keys(KeySource::Url(_)) => f.write_str("jwks-url"),
            AuthMode::Off { explicit: true } => f.write_str("off"),
            AuthMode::Off { explicit: false } => f.write_str("off (no JWT_SECRET)"),
        }
    }
}

/// Where the verification keys of [`AuthMode::Keys`] come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    File {
        path: PathBuf,
        /// How often the file is checked for a change; `None`: SIGHUP only.
        reload_interval: Option<Duration>,
    },
    Url(JwksUrl),
}

/// `--jwks-url` and how it is refreshed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwksUrl {
    pub url: String,
    /// `None`: the IdP's certificate is checked against the system's roots.
    pub ca: Option<PathBuf>,
    /// `None`: fetched again only on SIGHUP and for unknown `kid`s.
    pub refresh_interval: Option<Duration>,
    /// Shortest time between the start of a fetch and one an unknown `kid` causes.
    pub min_refresh_interval: Duration,
}

/// `JWT_SECRET`, `--jwt-keys-file` or `--jwks-url` (one of them), unless `no_auth`.
fn auth_mode(
    no_auth: bool,
    secret: Option<String>,
    keys_file: Option<PathBuf>,
    jwks_url: Option<String>,
    intervals: (Option<u64>, Option<u64>, Option<u64>),
    jwks_ca: Option<PathBuf>,
) -> Result<AuthMode, ConfigError> {
    let sources = [secret.is_some(), keys_file.is_some(), jwks_url.is_some()];
    if sources.iter().filter(|&&set| set).count() > 1 {
        return Err(ConfigError::invalid(
            if keys_file.is_some() {
                "jwt_keys_file"
            } else {
                "jwks_url"
            },
            "set one of JWT_SECRET, --jwt-keys-file and --jwks-url",
        ));
    }
    if jwks_ca.is_some() && jwks_url.is_none() {
        return Err(ConfigError::invalid(
            "jwks_ca",
            "a JWKS CA needs --jwks-url (it checks that server's certificate)",
        ));
    }
    let (file_every, url_every, min_refresh) = intervals;
    let every = |set: Option<u64>, default: u64| match set.unwrap_or(default) {
        0 => None,
        n => Some(Duration::from_millis(n)),
    };
    Ok(match (no_auth, secret, keys_file, jwks_url) {
        (true, ..) => AuthMode::Off { explicit: true },
        // Literal "\n" sequences in a PEM passed through an env var become newlines, as the
        // reference does, so a one-line env value works.
        (false, Some(secret), _, _) => AuthMode::Jwt {
            secret: if secret.starts_with("-----BEGIN") {
                secret.replace("\\n", "\n")
            } else {
                secret
            },
        },
        (false, None, Some(path), _) => AuthMode::Keys(KeySource::File {
            path,
            reload_interval: every(file_every, DEFAULT_JWT_KEYS_RELOAD_MS),
        }),
        (false, None, None, Some(url)) => {
            let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
            let has_host = url
                .split_once("://")
                .is_some_and(|(_, rest)| !rest.is_empty() && !rest.starts_with('/'));
            if !matches!(scheme.as_deref(), Some("http" | "https")) || !has_host {
                return Err(ConfigError::invalid(
                    "jwks_url",
                    format!("{:?} is not an http:// or https:// URL", shown_url(&url)),
                ));
            }
            if jwks_ca.is_some() && scheme.as_deref() == Some("http") {
                return Err(ConfigError::invalid(
                    "jwks_ca",
                    "the JWKS URL is plain http://: there is no certificate for a CA to check",
                ));
            }
            let min_refresh_interval =
                Duration::from_millis(min_refresh.unwrap_or(DEFAULT_JWKS_MIN_REFRESH_MS));
            if min_refresh_interval.is_zero() {
                return Err(ConfigError::invalid(
                    "jwks_min_refresh_interval_ms",
                    "must be greater than 0 (it bounds the fetches tokens with made-up kids cause)",
                ));
            }
            AuthMode::Keys(KeySource::Url(JwksUrl {
                url,
                ca: jwks_ca,
                refresh_interval: every(url_every, DEFAULT_JWKS_REFRESH_MS),
                min_refresh_interval,
            }))
        }
        (false, None, None, None) => AuthMode::Off { explicit: false },
    })
}

/// `scheme://host[:port]/path`, without credentials, and `?…` for a query: what logs and
/// errors show of `--jwks-url`.
pub fn shown_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (before_query, query) = match rest.find(['?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (authority, path) = match before_query.find('/') {
        Some(i) => before_query.split_at(i),
        None => (before_query, ""),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let query = if query.is_empty() { "" } else { "?…" };
    if scheme.is_empty() {
        format!("{host}{path}{query}")
    } else {
        format!("{scheme}://{host}{path}{query}")
    }
}

/// `--jwt-keys-reload-interval-ms`: a stat() every 10 s costs nothing.
const DEFAULT_JWT_KEYS_RELOAD_MS: u64 = 10_000;
/// `--jwks-refresh-interval-ms`: IdPs publish a new key well before they sign with it
/// (hours to days), and an unknown `kid` fetches at once anyway.
const DEFAULT_JWKS_REFRESH_MS: u64 = 300_000;
/// `--jwks-min-refresh-interval-ms`.
const DEFAULT_JWKS_MIN_REFRESH_MS: u64 = 10_000;

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 8080,
            host: IpAddr::from([0, 0, 0, 0]),
            node_id: None,
            cluster_port: 9080,
            seed_nodes: Vec::new(),
            advertise_host: None,
            cluster_probe: Duration::from_millis(1000),
            backup_count: 1,
            write_ack: WriteAck::OwnerAndBackup,
            placement: Placement::Partitioned,
            cluster_timeout: Duration::from_millis(5000),
            cluster_join_timeout: Duration::from_millis(10_000),
            metrics_port: None,
            storage_backend: StorageBackend::Redb,
            data_dir: PathBuf::from("./data"),
            auth: AuthMode::Off { explicit: false },
            jwt_issuer: None,
            jwt_audience: None,
            log_level: LogLevel::Info,
            log_dest: LogDest::Stdout,
            log_buffer: 8192,
            report_interval: Duration::from_millis(1000),
            actor_telemetry: true,
            map_label_cap: 1000,
            summary_window: Duration::from_secs(600),
            auth_timeout: Duration::from_millis(10_000),
            heartbeat_timeout: Duration::from_millis(60_000),
            heartbeat_check: Duration::from_millis(10_000),
            client_send_timeout: Some(Duration::from_millis(30_000)),
            max_frame_bytes: 2 * 1024 * 1024,
            client_rate: 20_000,
            client_burst: 40_000,
            outbound_queue: 256,
            connection_rate: 100,
            max_pending_connections: 1000,
            // Fits the drain (5 + 10 s), the close grace, the handover and leaving (8 s,
            // node/shutdown.rs), and Kubernetes' default grace period of 30 s with 5 s to spare.
            shutdown_timeout: Duration::from_secs(25),
            // Kubernetes takes a terminating pod out of its Services' endpoints at once, and
            // kube-proxy and ingress controllers apply that within a second or two. A balancer
            // that finds out by probing /ready needs its interval x failures instead (HAProxy's
            // defaults, 2 s x 3): set it to that.
            drain_delay: Duration::from_millis(5000),
            // A node's clients reconnect to the others at clients / spread per second: 1,000
            // over 10 s is 100/s in all, 50/s on each of two nodes, half their default
            // connection rate (100/s).
            drain_spread: Duration::from_millis(10_000),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            shards: std::thread::available_parallelism().map_or(2, |n| n.get()),
            event_queue_capacity: 10_000,
            event_queue_stripes: 4,
            max_drift_ms: 60_000,
            tombstone_max_age: Duration::from_secs(7 * 24 * 3600),
            sweep_interval: Duration::from_millis(1000),
            query_max_results: 10_000,
            max_live_queries_per_connection: 10_000,
            max_topics_per_connection: 1_000,
            max_maps: 10_000,
            max_memory: MemoryLimit::Auto,
            backpressure_limit: 1000,
            backpressure_sync_every: 100,
            backpressure_timeout: Duration::from_millis(5000),
            storage_group_max_records: 10_000,
            storage_group_max_delay: Duration::from_millis(2),
            debug_token: None,
            cluster_secret: None,
            cluster_insecure: false,
            cluster_tls: None,
            client_tls: None,
            tls_reload_interval: Some(Duration::from_millis(10_000)),
            cluster_link_buffer: 64 << 20,
            anti_entropy_interval: Some(Duration::from_secs(30)),
        }
    }
}

impl Config {
    /// Parses the command line (and environment), reads the file it names, and resolves.
    pub fn load() -> Result<Config, ConfigError> {
        Self::load_from(std::env::args_os())
    }

    pub fn load_from<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = match Overrides::try_parse_from(args) {
            Ok(cli) => cli,
            Err(e) => return Err(clap_error(e)),
        };
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => Overrides::default(),
        };
        Config::resolve(cli, file)
    }

    /// flag/env (already merged by clap) > file > default, then validation.
    pub fn resolve(cli: Overrides, file: Overrides) -> Result<Config, ConfigError> {
        let d = Config::default();
        macro_rules! pick {
            ($field:ident, $default:expr) => {
                cli.$field.or(file.$field).unwrap_or($default)
            };
        }
        let ms = Duration::from_millis;

        let secret = cli.jwt_secret.or(file.jwt_secret).filter(|s| !s.is_empty());
        let no_auth = cli.no_auth.or(file.no_auth).unwrap_or(false);
        let auth = auth_mode(
            no_auth,
            secret,
            cli.jwt_keys_file.or(file.jwt_keys_file),
            cli.jwks_url.or(file.jwks_url).filter(|s| !s.is_empty()),
            (
                cli.jwt_keys_reload_interval_ms
                    .or(file.jwt_keys_reload_interval_ms),
                cli.jwks_refresh_interval_ms
                    .or(file.jwks_refresh_interval_ms),
                cli.jwks_min_refresh_interval_ms
                    .or(file.jwks_min_refresh_interval_ms),
            ),
            cli.jwks_ca.or(file.jwks_ca),
        )?;
        let host_text = cli.host.or(file.host);
        let host = match &host_text {
            Some(h) if h == "localhost" => IpAddr::from([127, 0, 0, 1]),
            Some(h) => h
                .parse()
                .map_err(|_| ConfigError::invalid("host", format!("{h:?} is not an IP address")))?,
            None if matches!(auth, AuthMode::Off { .. }) => IpAddr::from([127, 0, 0, 1]),
            None => d.host,
        };

        let config = Config {
            port: pick!(port, d.port),
            host,
            node_id: cli.node_id.or(file.node_id),
            cluster_port: pick!(cluster_port, d.cluster_port),
            seed_nodes: cli.seed_nodes.or(file.seed_nodes).unwrap_or_default().0,
            advertise_host: cli.advertise_host.or(file.advertise_host),
            cluster_probe: cli
                .cluster_probe_ms
                .or(file.cluster_probe_ms)
                .map_or(d.cluster_probe, ms),
            backup_count: pick!(backup_count, d.backup_count),
            write_ack: pick!(write_ack, d.write_ack),
            placement: pick!(placement, d.placement),
            cluster_timeout: cli
                .cluster_timeout_ms
                .or(file.cluster_timeout_ms)
                .map_or(d.cluster_timeout, ms),
            cluster_join_timeout: cli
                .cluster_join_timeout_ms
                .or(file.cluster_join_timeout_ms)
                .map_or(d.cluster_join_timeout, ms),
            cluster_secret: ClusterSecret::resolve(
                cli.cluster_secret
                    .or(file.cluster_secret)
                    .filter(|s| !s.is_empty()),
                cli.cluster_secret_previous
                    .or(file.cluster_secret_previous)
                    .filter(|s| !s.is_empty()),
                cli.cluster_secret_file.or(file.cluster_secret_file),
            )?,
            cluster_insecure: pick!(cluster_insecure, d.cluster_insecure),
            cluster_tls: tls_files(
                cli.cluster_tls_cert.or(file.cluster_tls_cert),
                cli.cluster_tls_key.or(file.cluster_tls_key),
                cli.cluster_tls_ca.or(file.cluster_tls_ca),
            )?,
            client_tls: client_tls_files(
                cli.tls_cert.or(file.tls_cert),
                cli.tls_key.or(file.tls_key),
            )?,
            tls_reload_interval: match cli.tls_reload_interval_ms.or(file.tls_reload_interval_ms) {
                Some(0) => None,
                Some(n) => Some(ms(n)),
                None => d.tls_reload_interval,
            },
            cluster_link_buffer: pick!(cluster_link_buffer_bytes, d.cluster_link_buffer),
            anti_entropy_interval: match cli
                .anti_entropy_interval_ms
                .or(file.anti_entropy_interval_ms)
            {
                Some(0) => None,
                Some(n) => Some(ms(n)),
                None => d.anti_entropy_interval,
            },
            metrics_port: cli.metrics_port.or(file.metrics_port),
            storage_backend: pick!(storage_backend, d.storage_backend),
            data_dir: pick!(data_dir, d.data_dir),
            auth,
            jwt_issuer: cli.jwt_issuer.or(file.jwt_issuer),
            jwt_audience: cli.jwt_audience.or(file.jwt_audience),
            log_level: pick!(log_level, d.log_level),
            log_dest: pick!(log_dest, d.log_dest),
            log_buffer: pick!(log_buffer, d.log_buffer),
            report_interval: cli
                .report_interval_ms
                .or(file.report_interval_ms)
                .map_or(d.report_interval, ms),
            actor_telemetry: pick!(actor_telemetry, d.actor_telemetry),
            map_label_cap: pick!(map_label_cap, d.map_label_cap),
            summary_window: cli
                .summary_window_secs
                .or(file.summary_window_secs)
                .map_or(d.summary_window, Duration::from_secs),
            auth_timeout: cli
                .auth_timeout_ms
                .or(file.auth_timeout_ms)
                .map_or(d.auth_timeout, ms),
            heartbeat_timeout: cli
                .heartbeat_timeout_ms
                .or(file.heartbeat_timeout_ms)
                .map_or(d.heartbeat_timeout, ms),
            heartbeat_check: cli
                .heartbeat_check_ms
                .or(file.heartbeat_check_ms)
                .map_or(d.heartbeat_check, ms),
            client_send_timeout: match cli.client_send_timeout_ms.or(file.client_send_timeout_ms) {
                Some(0) => None,
                Some(n) => Some(ms(n)),
                None => d.client_send_timeout,
            },
            max_frame_bytes: pick!(max_frame_bytes, d.max_frame_bytes),
            client_rate: pick!(client_rate, d.client_rate),
            client_burst: pick!(client_burst, d.client_burst),
            outbound_queue: pick!(outbound_queue, d.outbound_queue),
            connection_rate: pick!(connection_rate, d.connection_rate),
            max_pending_connections: pick!(max_pending_connections, d.max_pending_connections),
            shutdown_timeout: cli
                .shutdown_timeout_secs
                .or(file.shutdown_timeout_secs)
                .map_or(d.shutdown_timeout, Duration::from_secs),
            drain_delay: cli
                .drain_delay_ms
                .or(file.drain_delay_ms)
                .map_or(d.drain_delay, ms),
            drain_spread: cli
                .drain_spread_ms
                .or(file.drain_spread_ms)
                .map_or(d.drain_spread, ms),
            workers: pick!(workers, d.workers),
            shards: pick!(shards, d.shards),
            event_queue_capacity: pick!(event_queue_capacity, d.event_queue_capacity),
            event_queue_stripes: pick!(event_queue_stripes, d.event_queue_stripes),
            max_drift_ms: pick!(max_drift_ms, d.max_drift_ms),
            tombstone_max_age: cli
                .tombstone_max_age_secs
                .or(file.tombstone_max_age_secs)
                .map_or(d.tombstone_max_age, Duration::from_secs),
            sweep_interval: cli
                .sweep_interval_ms
                .or(file.sweep_interval_ms)
                .map_or(d.sweep_interval, ms),
            query_max_results: pick!(query_max_results, d.query_max_results),
            max_live_queries_per_connection: pick!(
                max_live_queries_per_connection,
                d.max_live_queries_per_connection
            ),
            max_topics_per_connection: pick!(
                max_topics_per_connection,
                d.max_topics_per_connection
            ),
            max_maps: pick!(max_maps, d.max_maps),
            max_memory: pick!(max_memory, d.max_memory),
            backpressure_limit: pick!(backpressure_limit, d.backpressure_limit),
            backpressure_sync_every: pick!(backpressure_sync_every, d.backpressure_sync_every),
            backpressure_timeout: cli
                .backpressure_timeout_ms
                .or(file.backpressure_timeout_ms)
                .map_or(d.backpressure_timeout, ms),
            storage_group_max_records: pick!(
                storage_group_max_records,
                d.storage_group_max_records
            ),
            storage_group_max_delay: cli
                .storage_group_max_delay_ms
                .or(file.storage_group_max_delay_ms)
                .map_or(d.storage_group_max_delay, ms),
            // An empty token would make "Bearer " a password: treat it as unset.
            debug_token: cli
                .debug_token
                .or(file.debug_token)
                .filter(|t| !t.is_empty())
                .map(DebugToken),
        };
        config.validate()?;
        Ok(config)
    }

    /// Where the cluster port listens: the bind address, but loopback when peers are not
    /// authenticated (no cluster secret) and the operator did not ask for it on purpose, as
    /// for clients without JWT_SECRET.
    pub fn cluster_host(&self) -> IpAddr {
        if self.cluster_secret.is_some() || self.cluster_insecure || self.host.is_loopback() {
            self.host
        } else {
            IpAddr::from([127, 0, 0, 1])
        }
    }

    /// Settings that parse but cannot work. Runs before anything binds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(id) = &self.node_id {
            validate_node_id(id).map_err(|m| ConfigError::invalid("node_id", m))?;
        }
        if let AuthMode::Off { explicit: false } = self.auth {
            if !self.host.is_loopback() {
                return Err(ConfigError::invalid(
                    "host",
                    format!(
                        "refusing to serve unauthenticated clients on {}: set JWT_SECRET, or TOPGUN_NO_AUTH=1 to allow it",
                        self.host
                    ),
                ));
            }
        }
        if usize::from(self.backup_count) > MAX_BACKUPS {
            return Err(ConfigError::invalid(
                "backup_count",
                format!(
                    "{} backups per partition; at most {} are supported",
                    self.backup_count, MAX_BACKUPS
                ),
            ));
        }
        let positive: [(&'static str, u64); 27] = [
            (
                "storage_group_max_records",
                self.storage_group_max_records as u64,
            ),
            ("shards", self.shards as u64),
            ("event_queue_capacity", self.event_queue_capacity as u64),
            ("event_queue_stripes", self.event_queue_stripes as u64),
            ("sweep_interval_ms", self.sweep_interval.as_millis() as u64),
            ("query_max_results", self.query_max_results as u64),
            (
                "max_live_queries_per_connection",
                self.max_live_queries_per_connection as u64,
            ),
            (
                "max_topics_per_connection",
                self.max_topics_per_connection as u64,
            ),
            ("max_maps", self.max_maps as u64),
            ("backpressure_limit", self.backpressure_limit as u64),
            ("backpressure_sync_every", self.backpressure_sync_every),
            (
                "backpressure_timeout_ms",
                self.backpressure_timeout.as_millis() as u64,
            ),
            ("log_buffer", self.log_buffer as u64),
            (
                "report_interval_ms",
                self.report_interval.as_millis() as u64,
            ),
            ("summary_window_secs", self.summary_window.as_secs()),
            ("auth_timeout_ms", self.auth_timeout.as_millis() as u64),
            (
                "heartbeat_timeout_ms",
                self.heartbeat_timeout.as_millis() as u64,
            ),
            (
                "heartbeat_check_ms",
                self.heartbeat_check.as_millis() as u64,
            ),
            ("cluster_probe_ms", self.cluster_probe.as_millis() as u64),
            (
                "cluster_timeout_ms",
                self.cluster_timeout.as_millis() as u64,
            ),
            ("max_frame_bytes", self.max_frame_bytes as u64),
            ("cluster_link_buffer_bytes", self.cluster_link_buffer as u64),
            ("client_rate", u64::from(self.client_rate)),
            ("client_burst", u64::from(self.client_burst)),
            ("outbound_queue", self.outbound_queue as u64),
            ("connection_rate", u64::from(self.connection_rate)),
            ("workers", self.workers as u64),
        ];
        for (setting, value) in positive {
            if value == 0 {
                return Err(ConfigError::invalid(setting, "must be greater than 0"));
            }
        }
        if self.shards > 271 {
            return Err(ConfigError::invalid(
                "shards",
                "at most 271 (one partition each)",
            ));
        }
        if self.event_queue_stripes > self.event_queue_capacity {
            return Err(ConfigError::invalid(
                "event_queue_stripes",
                "must not exceed event_queue_capacity (each stripe needs room)",
            ));
        }
        if self.max_pending_connections == 0 {
            return Err(ConfigError::invalid(
                "max_pending_connections",
                "must be greater than 0",
            ));
        }
        if self.map_label_cap == 0 {
            return Err(ConfigError::invalid(
                "map_label_cap",
                "must be greater than 0",
            ));
        }
        if self.metrics_port.is_some() && self.metrics_port == Some(self.port) && self.port != 0 {
            return Err(ConfigError::invalid(
                "metrics_port",
                "must differ from port (leave it unset to serve /metrics on the client port)",
            ));
        }
        Ok(())
    }

    /// Settings for in-process tests: OS-chosen ports, memory storage, short intervals.
    pub fn for_test() -> Config {
        Config {
            port: 0,
            host: IpAddr::from([127, 0, 0, 1]),
            cluster_port: 0,
            storage_backend: StorageBackend::Memory,
            auth: AuthMode::Off { explicit: true },
            report_interval: Duration::from_millis(50),
            ..Config::default()
        }
    }
}

/// Node ids end up inside HLC timestamps, whose string form uses ':' as separator.
pub fn validate_node_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err("must be 1 to 128 bytes".into());
    }
    if id.contains(':') || id.chars().any(char::is_control) {
        return Err(format!("{id:?} must not contain ':' or control characters"));
    }
    Ok(())
}

/// Where the value of a setting came from (`topgun-node check-config`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    /// The environment variable's name.
    Env(String),
    File,
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => f.write_str("flag"),
            Source::Env(name) => write!(f, "env {name}"),
            Source::File => f.write_str("file"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// A configuration resolved as the node would, with the source of every setting by its file
/// key (the flag's name with `_`).
pub struct Checked {
    pub config: Config,
    pub file: Option<PathBuf>,
    pub sources: std::collections::BTreeMap<String, Source>,
    /// The cluster secret file, which `Config` keeps only as the secrets it read.
    pub cluster_secret_file: Option<PathBuf>,
}

impl Config {
    /// [`Config::load_from`] that also says where each setting came from.
    pub fn check_from<I, T>(args: I) -> Result<Checked, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::parser::ValueSource;
        use clap::{CommandFactory, FromArgMatches};
        let matches = Overrides::command()
            .try_get_matches_from(args)
            .map_err(clap_error)?;
        let cli = Overrides::from_arg_matches(&matches).map_err(clap_error)?;
        let (file, file_keys) = match &cli.config {
            Some(path) => {
                let file = read_file(path)?;
                // Parsed once more for its keys alone; it parsed above, so it parses here.
                let keys: Vec<String> = std::fs::read_to_string(path)
                    .ok()
                    .and_then(|text| text.parse::<toml::Table>().ok())
                    .map(|t| t.keys().cloned().collect())
                    .unwrap_or_default();
                (file, keys)
            }
            None => (Overrides::default(), Vec::new()),
        };
        let mut sources = std::collections::BTreeMap::new();
        for arg in Overrides::command().get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            let source = match matches.value_source(id) {
                Some(ValueSource::CommandLine) => Source::Flag,
                Some(ValueSource::EnvVariable) => Source::Env(
                    arg.get_env()
                        .map(|e| e.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ),
                _ if file_keys.iter().any(|k| k == id) => Source::File,
                _ => Source::Default,
            };
            sources.insert(id.to_owned(), source);
        }
        let cluster_secret_file = cli
            .cluster_secret_file
            .clone()
            .or(file.cluster_secret_file.clone());
        let path = cli.config.clone();
        Ok(Checked {
            config: Config::resolve(cli, file)?,
            file: path,
            sources,
            cluster_secret_file,
        })
    }

    /// Every setting by its file key, as the node uses it, in the unit of its key (`_ms`
    /// in milliseconds); secrets show only whether they are set.
    pub fn effective(&self) -> Vec<(&'static str, String)> {
        fn opt<T: fmt::Display>(v: &Option<T>) -> String {
            v.as_ref().map_or_else(|| "unset".to_owned(), T::to_string)
        }
        fn set<T>(v: &Option<T>) -> String {
            if v.is_some() { "(set)" } else { "unset" }.to_owned()
        }
        fn ms(d: Duration) -> String {
            d.as_millis().to_string()
        }
        fn ms_or_zero(d: Option<Duration>) -> String {
            d.map_or_else(|| "0".to_owned(), ms)
        }
        let path = |p: &Option<PathBuf>| opt(&p.as_ref().map(|p| p.display().to_string()));
        let (jwt_secret, no_auth) = match &self.auth {
            AuthMode::Jwt { .. } => ("(set)".to_owned(), "false".to_owned()),
            AuthMode::Keys(_) => ("unset".to_owned(), "false".to_owned()),
            AuthMode::Off { explicit } => ("unset".to_owned(), explicit.to_string()),
        };
        let unset = || "unset".to_owned();
        let (keys_file, keys_reload) = match &self.auth {
            AuthMode::Keys(KeySource::File {
                path: p,
                reload_interval,
            }) => (p.display().to_string(), ms_or_zero(*reload_interval)),
            _ => (unset(), unset()),
        };
        let (jwks_url, jwks_refresh, jwks_min_refresh, jwks_ca) = match &self.auth {
            AuthMode::Keys(KeySource::Url(u)) => (
                u.url.clone(),
                ms_or_zero(u.refresh_interval),
                ms(u.min_refresh_interval),
                path(&u.ca),
            ),
            _ => (unset(), unset(), unset(), unset()),
        };
        let cluster_tls = self.cluster_tls.as_ref();
        let client_tls = self.client_tls.as_ref();
        vec![
            ("port", self.port.to_string()),
            ("host", self.host.to_string()),
            ("node_id", opt(&self.node_id)),
            ("cluster_port", self.cluster_port.to_string()),
            ("seed_nodes", self.seed_nodes.join(",")),
            ("advertise_host", opt(&self.advertise_host)),
            ("cluster_probe_ms", ms(self.cluster_probe)),
            ("backup_count", self.backup_count.to_string()),
            ("write_ack", self.write_ack.to_string()),
            ("placement", self.placement.to_string()),
            ("cluster_timeout_ms", ms(self.cluster_timeout)),
            ("cluster_join_timeout_ms", ms(self.cluster_join_timeout)),
            (
                "anti_entropy_interval_ms",
                ms_or_zero(self.anti_entropy_interval),
            ),
            (
                "cluster_link_buffer_bytes",
                self.cluster_link_buffer.to_string(),
            ),
            ("cluster_secret", set(&self.cluster_secret)),
            (
                "cluster_secret_previous",
                set(&self
                    .cluster_secret
                    .as_ref()
                    .and_then(|s| s.previous.as_ref())),
            ),
            (
                "cluster_tls_cert",
                path(&cluster_tls.map(|t| t.cert.clone())),
            ),
            ("cluster_tls_key", path(&cluster_tls.map(|t| t.key.clone()))),
            ("cluster_tls_ca", path(&cluster_tls.map(|t| t.ca.clone()))),
            ("cluster_insecure", self.cluster_insecure.to_string()),
            ("metrics_port", opt(&self.metrics_port)),
            ("tls_cert", path(&client_tls.map(|t| t.cert.clone()))),
            ("tls_key", path(&client_tls.map(|t| t.key.clone()))),
            (
                "tls_reload_interval_ms",
                ms_or_zero(self.tls_reload_interval),
            ),
            ("storage_backend", self.storage_backend.to_string()),
            ("data_dir", self.data_dir.display().to_string()),
            ("jwt_secret", jwt_secret),
            ("no_auth", no_auth),
            ("jwt_keys_file", keys_file),
            ("jwt_keys_reload_interval_ms", keys_reload),
            ("jwks_url", jwks_url),
            ("jwks_refresh_interval_ms", jwks_refresh),
            ("jwks_min_refresh_interval_ms", jwks_min_refresh),
            ("jwks_ca", jwks_ca),
            ("jwt_issuer", opt(&self.jwt_issuer)),
            ("jwt_audience", opt(&self.jwt_audience)),
            ("log_level", self.log_level.to_string()),
            ("log_dest", self.log_dest.to_string()),
            ("log_buffer", self.log_buffer.to_string()),
            ("report_interval_ms", ms(self.report_interval)),
            ("actor_telemetry", self.actor_telemetry.to_string()),
            ("map_label_cap", self.map_label_cap.to_string()),
            (
                "summary_window_secs",
                self.summary_window.as_secs().to_string(),
            ),
            ("auth_timeout_ms", ms(self.auth_timeout)),
            ("heartbeat_timeout_ms", ms(self.heartbeat_timeout)),
            ("heartbeat_check_ms", ms(self.heartbeat_check)),
            (
                "client_send_timeout_ms",
                ms_or_zero(self.client_send_timeout),
            ),
            ("max_frame_bytes", self.max_frame_bytes.to_string()),
            ("client_rate", self.client_rate.to_string()),
            ("client_burst", self.client_burst.to_string()),
            ("outbound_queue", self.outbound_queue.to_string()),
            ("connection_rate", self.connection_rate.to_string()),
            (
                "max_pending_connections",
                self.max_pending_connections.to_string(),
            ),
            (
                "shutdown_timeout_secs",
                self.shutdown_timeout.as_secs().to_string(),
            ),
            ("drain_delay_ms", ms(self.drain_delay)),
            ("drain_spread_ms", ms(self.drain_spread)),
            ("workers", self.workers.to_string()),
            ("shards", self.shards.to_string()),
            (
                "event_queue_capacity",
                self.event_queue_capacity.to_string(),
            ),
            ("event_queue_stripes", self.event_queue_stripes.to_string()),
            ("max_drift_ms", self.max_drift_ms.to_string()),
            (
                "tombstone_max_age_secs",
                self.tombstone_max_age.as_secs().to_string(),
            ),
            ("sweep_interval_ms", ms(self.sweep_interval)),
            ("query_max_results", self.query_max_results.to_string()),
            (
                "max_live_queries_per_connection",
                self.max_live_queries_per_connection.to_string(),
            ),
            (
                "max_topics_per_connection",
                self.max_topics_per_connection.to_string(),
            ),
            ("max_maps", self.max_maps.to_string()),
            ("max_memory", self.max_memory.to_string()),
            ("backpressure_limit", self.backpressure_limit.to_string()),
            (
                "backpressure_sync_every",
                self.backpressure_sync_every.to_string(),
            ),
            ("backpressure_timeout_ms", ms(self.backpressure_timeout)),
            (
                "storage_group_max_records",
                self.storage_group_max_records.to_string(),
            ),
            (
                "storage_group_max_delay_ms",
                ms(self.storage_group_max_delay),
            ),
            ("debug_token", set(&self.debug_token)),
        ]
    }
}

fn read_file(path: &PathBuf) -> Result<Overrides, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.clone(),
        source,
    })?;
    parse_file(path, &text)
}

/// The settings in the text of a config file; `path` only names the file in the error. Apart
/// from `read_file` so the parser can be fuzzed without a filesystem (`fuzz/`).
pub fn parse_file(path: &std::path::Path, text: &str) -> Result<Overrides, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::ParseFile {
        path: path.to_path_buf(),
        // toml's message spans several lines (with a source excerpt); the operator gets one.
        message: e.message().to_string(),
    })
}

/// clap renders usage and tips over several lines; the node promises one line per problem.
fn clap_error(e: clap::Error) -> ConfigError {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        // Not an error: let clap print help/version and exit 0 as users expect.
        e.exit();
    }
    let rendered = e.render().to_string();
    let line = rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid command line")
        .trim()
        .trim_start_matches("error: ")
        .to_string();
    ConfigError::Flag(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_config_shows_every_setting() {
        use clap::CommandFactory;
        let shown: Vec<&str> = Config::default()
            .effective()
            .iter()
            .map(|(k, _)| *k)
            .collect();
        for arg in Overrides::command().get_arguments() {
            let id = arg.get_id().as_str();
            // Shown by check-config from the command line itself (they hold no setting).
            if matches!(id, "help" | "version" | "config" | "cluster_secret_file") {
                continue;
            }
            assert!(
                shown.contains(&id),
                "{id} is missing from Config::effective"
            );
        }
    }

    fn file(text: &str) -> Overrides {
        toml::from_str(text).expect("test TOML is valid")
    }

    fn cli(args: &[&str]) -> Overrides {
        let mut all = vec!["topgun-node"];
        all.extend_from_slice(args);
        Overrides::try_parse_from(all).expect("test flags are valid")
    }

    #[test]
    fn flag_beats_file_beats_default() {
        let c = Config::resolve(cli(&["--port", "1"]), file("port = 2\nworkers = 3")).unwrap();
        assert_eq!(c.port, 1);
        assert_eq!(c.workers, 3);
        assert_eq!(c.cluster_port, 9080);
    }

    #[test]
    fn unknown_file_key_is_an_error() {
        assert!(toml::from_str::<Overrides>("prot = 1").is_err());
    }

    #[test]
    fn storage_aliases() {
        assert_eq!("null".parse(), Ok(StorageBackend::Memory));
        assert_eq!("MEMORY".parse(), Ok(StorageBackend::Memory));
        assert_eq!("redb".parse(), Ok(StorageBackend::Redb));
        assert!("postgres".parse::<StorageBackend>().is_err());
    }

    #[test]
    fn booleans_accept_other_tooling_spellings() {
        for yes in ["1", "true", "TRUE", "yes", "on"] {
            assert_eq!(parse_bool(yes), Ok(true));
        }
        for no in ["0", "false", "no", "off"] {
            assert_eq!(parse_bool(no), Ok(false));
        }
        assert!(parse_bool("maybe").is_err());
    }

    #[test]
    fn no_secret_means_loopback_only() {
        let c = Config::resolve(cli(&[]), Overrides::default()).unwrap();
        assert_eq!(c.auth, AuthMode::Off { explicit: false });
        assert!(c.host.is_loopback());
        let err = Config::resolve(cli(&["--host", "0.0.0.0"]), Overrides::default());
        assert!(err.is_err());
        let c = Config::resolve(cli(&["--jwt-secret", "s"]), Overrides::default()).unwrap();
        assert_eq!(c.host, IpAddr::from([0, 0, 0, 0]));
    }

    #[test]
    fn without_a_cluster_secret_the_cluster_port_stays_on_loopback() {
        let open = ["--jwt-secret", "s"];
        let c = Config::resolve(cli(&open), Overrides::default()).unwrap();
        assert_eq!(c.host, IpAddr::from([0, 0, 0, 0]));
        assert_eq!(c.cluster_host(), IpAddr::from([127, 0, 0, 1]));
        let c = Config::resolve(
            cli(&[&open[..], &["--cluster-insecure"]].concat()),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.cluster_host(), IpAddr::from([0, 0, 0, 0]));
        let secret = ["--cluster-secret", "sixteen chars at least"];
        let c = Config::resolve(
            cli(&[&open[..], &secret[..]].concat()),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.cluster_host(), IpAddr::from([0, 0, 0, 0]));
        let c = Config::resolve(cli(&["--host", "127.0.0.3"]), Overrides::default()).unwrap();
        assert_eq!(c.cluster_host(), IpAddr::from([127, 0, 0, 3]));
    }

    #[test]
    fn cluster_secrets_come_from_flags_or_a_file_and_are_never_printed() {
        let c = Config::resolve(
            cli(&[
                "--cluster-secret",
                "the new secret of the grid",
                "--cluster-secret-previous",
                "the old secret of the grid",
            ]),
            Overrides::default(),
        )
        .unwrap();
        let secret = c.cluster_secret.clone().expect("set");
        assert_eq!(secret.current, "the new secret of the grid");
        assert_eq!(
            secret.previous.as_deref(),
            Some("the old secret of the grid")
        );
        assert!(!format!("{c:?}").contains("secret of the grid"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(
            &path,
            "the new secret of the grid\n\nthe old secret of the grid\n",
        )
        .unwrap();
        let from_file = Config::resolve(
            cli(&["--cluster-secret-file", path.to_str().unwrap()]),
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(from_file.cluster_secret, c.cluster_secret);

        for bad in [
            &["--cluster-secret", "short"][..],
            &["--cluster-secret-previous", "the old secret of the grid"][..],
            &[
                "--cluster-secret",
                "the new secret of the grid",
                "--cluster-secret-file",
                path.to_str().unwrap(),
            ][..],
            &["--cluster-secret-file", "/nonexistent/secret"][..],
        ] {
            assert!(
                Config::resolve(cli(bad), Overrides::default()).is_err(),
                "{bad:?}"
            );
        }
        // An empty secret is no secret, like an empty JWT_SECRET.
        let c = Config::resolve(cli(&["--cluster-secret", ""]), Overrides::default()).unwrap();
        assert!(c.cluster_secret.is_none());
    }

    #[test]
    fn debug_token_is_optional_compared_whole_and_never_printed() {
        let c = Config::resolve(cli(&[]), file("debug_token = \"\"")).unwrap();
        assert!(c.debug_token.is_none());
        let c = Config::resolve(cli(&["--debug-token", "s3cret"]), Overrides::default()).unwrap();
        let token = c.debug_token.expect("token set");
        assert!(token.matches("s3cret"));
        assert!(!token.matches("s3cre"));
        assert!(!token.matches("s3cret "));
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn urls_are_shown_without_credentials_or_query() {
        assert_eq!(
            shown_url("https://user:pw@idp.example:8443/realms/a/certs?key=1"),
            "https://idp.example:8443/realms/a/certs?…"
        );
        assert_eq!(
            shown_url("http://127.0.0.1:9/jwks"),
            "http://127.0.0.1:9/jwks"
        );
        assert_eq!(shown_url("https://idp.example"), "https://idp.example");
        assert_eq!(shown_url("idp@x/y#frag"), "x/y?…");
    }

    #[test]
    fn keys_come_from_one_source_with_its_intervals() {
        let c =
            Config::resolve(cli(&["--jwt-keys-file", "/k.json"]), Overrides::default()).unwrap();
        assert_eq!(
            c.auth,
            AuthMode::Keys(KeySource::File {
                path: "/k.json".into(),
                reload_interval: Some(Duration::from_millis(10_000)),
            })
        );
        assert_eq!(format!("{:?}", c.auth), "jwt-keys-file");
        // Keys are authentication: the node may serve beyond loopback.
        assert_eq!(c.host, IpAddr::from([0, 0, 0, 0]));
        let c = Config::resolve(
            cli(&["--jwks-url", "https://idp.example/certs"]),
            file("jwks_refresh_interval_ms = 0\njwks_ca = \"/ca.pem\""),
        )
        .unwrap();
        assert_eq!(
            c.auth,
            AuthMode::Keys(KeySource::Url(JwksUrl {
                url: "https://idp.example/certs".into(),
                ca: Some("/ca.pem".into()),
                refresh_interval: None,
                min_refresh_interval: Duration::from_millis(10_000),
            }))
        );
        for bad in [
            &["--jwt-secret", "s", "--jwks-url", "https://idp/certs"][..],
            &["--jwt-keys-file", "/k", "--jwks-url", "https://idp/certs"][..],
            &["--jwt-secret", "s", "--jwt-keys-file", "/k"][..],
            &["--jwks-url", "ftp://idp/certs"][..],
            &["--jwks-url", "https://"][..],
            &["--jwks-url", "idp.example/certs"][..],
            &["--jwks-ca", "/ca.pem"][..],
            &["--jwks-url", "http://idp/certs", "--jwks-ca", "/ca.pem"][..],
            &[
                "--jwks-url",
                "https://idp/certs",
                "--jwks-min-refresh-interval-ms",
                "0",
            ][..],
        ] {
            assert!(
                Config::resolve(cli(bad), Overrides::default()).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn node_id_with_colon_is_rejected() {
        assert!(Config::resolve(cli(&["--node-id", "a:b"]), Overrides::default()).is_err());
    }

    #[test]
    fn seeds_are_split_and_trimmed() {
        let c =
            Config::resolve(cli(&["--seed-nodes", " a:1, b:2 ,,"]), Overrides::default()).unwrap();
        assert_eq!(c.seed_nodes, vec!["a:1", "b:2"]);
    }

    #[test]
    fn the_documented_default_file_parses_to_the_defaults() {
        let text = include_str!("../config/topgun.toml");
        let uncommented: String = text
            .lines()
            .filter_map(|l| l.strip_prefix("# ").filter(|l| l.contains(" = ")))
            .map(|l| format!("{l}\n"))
            .collect();
        let parsed: Overrides = toml::from_str(&uncommented).expect("defaults file parses");
        let c = Config::resolve(Overrides::default(), parsed).unwrap();
        let d = Config::default();
        assert_eq!(c.port, d.port);
        assert_eq!(c.report_interval, d.report_interval);
        assert_eq!(c.max_frame_bytes, d.max_frame_bytes);
        assert_eq!(c.connection_rate, d.connection_rate);
        assert_eq!(c.outbound_queue, d.outbound_queue);
        assert_eq!(c.max_maps, d.max_maps);
        assert_eq!(c.max_memory, d.max_memory);
        assert_eq!(c.shutdown_timeout, d.shutdown_timeout);
        assert_eq!(c.drain_delay, d.drain_delay);
        assert_eq!(c.drain_spread, d.drain_spread);
    }

    #[test]
    fn drain_settings_resolve_flag_file_default() {
        let d = Config::default();
        let c = Config::resolve(cli(&[]), Overrides::default()).unwrap();
        assert_eq!(
            (c.drain_delay, c.drain_spread),
            (d.drain_delay, d.drain_spread)
        );
        let from_file = "drain_delay_ms = 1500\ndrain_spread_ms = 0";
        let c = Config::resolve(cli(&[]), file(from_file)).unwrap();
        assert_eq!(c.drain_delay, Duration::from_millis(1500));
        assert_eq!(c.drain_spread, Duration::ZERO);
        let c = Config::resolve(
            cli(&["--drain-delay-ms", "0", "--drain-spread-ms", "30000"]),
            file(from_file),
        )
        .unwrap();
        assert_eq!(c.drain_delay, Duration::ZERO);
        assert_eq!(c.drain_spread, Duration::from_secs(30));
        assert!(toml::from_str::<Overrides>("drain_delay_ms = -1").is_err());
        assert!(toml::from_str::<Overrides>("drain_spread_ms = \"soon\"").is_err());
    }

    #[test]
    fn memory_limits_parse_with_units() {
        let parse = |t: &str| t.parse::<MemoryLimit>();
        assert_eq!(parse("2147483648"), Ok(MemoryLimit::Bytes(2_147_483_648)));
        assert_eq!(parse("2Gi"), Ok(MemoryLimit::Bytes(2 << 30)));
        assert_eq!(parse("2GiB"), Ok(MemoryLimit::Bytes(2 << 30)));
        assert_eq!(parse("1.5G"), Ok(MemoryLimit::Bytes(1_500_000_000)));
        assert_eq!(parse(" 512 M "), Ok(MemoryLimit::Bytes(512_000_000)));
        assert_eq!(parse("0"), Ok(MemoryLimit::Off));
        assert_eq!(parse("AUTO"), Ok(MemoryLimit::Auto));
        for bad in ["", "G", "12Q", "-1", "1e400", "99999999999Ti", "1..2M"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let c = Config::resolve(cli(&["--max-memory", "64Mi"]), Overrides::default()).unwrap();
        assert_eq!(c.max_memory, MemoryLimit::Bytes(64 << 20));
        let from_file = file("max_memory = 1000000");
        let c = Config::resolve(Overrides::default(), from_file).unwrap();
        assert_eq!(c.max_memory, MemoryLimit::Bytes(1_000_000));
        assert!(toml::from_str::<Overrides>("max_memory = \"lots\"").is_err());
    }
}
