//! Why a node could not start (or run), with a stable code for the exit line.
use std::net::SocketAddr;
use std::path::PathBuf;

/// A reason the node could not start (or run). `main` prints it as one line.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("data dir {path} is not usable: {message}")]
    DataDir { path: PathBuf, message: String },
    #[error("cannot open log destination {dest}: {source}")]
    LogDest {
        dest: String,
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::OpenError),
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("cluster TLS: {0}")]
    ClusterTls(#[from] crate::cluster::tls::TlsError),
    #[error("client TLS: {0}")]
    ClientTls(#[from] crate::net::tls::ClientTlsError),
    #[error("JWT keys: {0}")]
    JwtKeys(#[from] crate::net::jwks::KeysError),
}

impl StartError {
    /// Stable, printed with the exit line: what went wrong, for a script or an alert to match.
    pub fn code(&self) -> &'static str {
        match self {
            StartError::Config(_) => "config",
            StartError::Bind { .. } => "bind",
            StartError::DataDir { .. } => "data_dir",
            StartError::LogDest { .. } => "log_dest",
            StartError::Storage(e) => e.code(),
            StartError::Metrics(_) => "metrics_registry",
            StartError::Runtime(_) => "runtime",
            StartError::ClusterTls(e) => e.code(),
            StartError::ClientTls(e) => e.code(),
            StartError::JwtKeys(e) => e.code(),
        }
    }

    /// The process's exit status: 2 when files or a URL the operator named cannot be used
    /// (like a bad setting, which never gets this far), 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::ClusterTls(_) | StartError::ClientTls(_) | StartError::JwtKeys(_) => 2,
            _ => 1,
        }
    }
}
