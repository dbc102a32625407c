//! Where the JWT verification keys come from and how they are kept current: a file
//! (`--jwt-keys-file`, read again when its modification time changes and on SIGHUP) or an
//! identity provider's JWKS URL (`--jwks-url`, fetched at start, then every
//! `--jwks-refresh-interval-ms`, on SIGHUP, and when a token names a `kid` the set lacks, at
//! most once per `--jwks-min-refresh-interval-ms` so a flood of made-up `kid`s cannot hammer
//! the IdP). Parsing is `net::keyset`'s; verifying `net::auth`'s.
//!
//! The [`KeysActor`] replaces the set in the [`KeyStore`] whole when a reload brings other
//! bytes than the set in use was parsed from. A reload that fails (unreadable file, IdP down,
//! HTTP error, garbage, no usable key, a body over 1 MiB) keeps the keys in use, is logged with
//! `err` and counted in `topgun_jwks_refresh_failures_total`.
//!
//! HTTP is `ureq` (blocking, so each fetch runs on a blocking thread; a fetch is rare), over
//! rustls with the ring provider the rest of the node uses. HTTPS verifies the IdP's
//! certificate against the system's roots (`ca-certificates`), or only `--jwks-ca` when given.
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use sha2::{Digest, Sha256};
use slog::Logger;
use tokio::sync::oneshot;

use super::keyset::{KeySet, KeySetError, KeyStore, MAX_KEYS_BYTES};
use crate::config::{shown_url, KeySource};
use crate::net::events::{JwtKeySkipped, JwtKeysReloadFailed, JwtKeysReloaded};
use crate::telemetry::event::{ErrField, Event, Shown};
use crate::telemetry::mailbox::Mailbox;
use crate::telemetry::metrics::{Metrics, MetricsActor};
use crate::telemetry::report::{ActorStats, Report, Reported, StatsDelta};

/// Longest a fetch of the JWKS URL may take, from connecting to the last byte of the body.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Redirects followed (an IdP may move its key set; more than a few is a loop).
const MAX_REDIRECTS: u32 = 3;

/// Skipped keys logged one line each when a set is loaded; the rest only counted.
const SKIPPED_LINES: usize = 10;

/// `kid`s named in a log line.
const KIDS_LOGGED: usize = 20;

/// Why the keys could not be loaded: at start the node exits 2 with this line; later the keys
/// in use stay.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot read JWT keys file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot fetch JWKS {url}: {message}")]
    Fetch {
        url: String,
        code: &'static str,
        message: String,
    },
    #[error("JWKS {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{origin}: {source}")]
    KeySet { origin: String, source: KeySetError },
    #[error("cannot use the JWKS CA: {0}")]
    Ca(String),
}

impl KeysError {
    pub fn code(&self) -> &'static str {
        match self {
            KeysError::Read { .. } => "jwt_keys_unreadable",
            KeysError::Fetch { code, .. } => code,
            KeysError::Status { .. } => "jwks_http_status",
            KeysError::KeySet { source, .. } => source.code(),
            KeysError::Ca(_) => "jwks_ca_invalid",
        }
    }
}

/// Where the keys are read from.
enum Origin {
    File(PathBuf),
    Url {
        url: String,
        /// The URL without credentials or query, for logs and errors.
        shown: String,
        agent: ureq::Agent,
    },
}

/// A key source ready to read: the file's path, or the URL with its HTTP client (the TLS roots
/// loaded once, at start).
pub struct KeysSource {
    origin: Origin,
}

impl KeysSource {
    pub fn new(source: &KeySource) -> Result<KeysSource, KeysError> {
        let origin = match source {
            KeySource::File { path, .. } => Origin::File(path.clone()),
            KeySource::Url(jwks) => Origin::Url {
                shown: shown_url(&jwks.url),
                agent: agent(&jwks.url, jwks.ca.as_deref())?,
                url: jwks.url.clone(),
            },
        };
        Ok(KeysSource { origin })
    }

    pub fn is_url(&self) -> bool {
        matches!(self.origin, Origin::Url { .. })
    }

    /// The file's path or the URL (without credentials or query), for logs.
    pub fn describe(&self) -> String {
        match &self.origin {
            Origin::File(path) => path.display().to_string(),
            Origin::Url { shown, .. } => shown.clone(),
        }
    }

    /// The file's modification time (`None`: a URL, or the file is unreadable).
    fn stamp(&self) -> Option<SystemTime> {
        match &self.origin {
            Origin::File(path) => std::fs::metadata(path).and_then(|m| m.modified()).ok(),
            Origin::Url { .. } => None,
        }
    }

    /// Reads the document, at most [`MAX_KEYS_BYTES`]. Blocking: file I/O or a whole HTTP
    /// exchange (bounded by [`FETCH_TIMEOUT`]).
    pub fn read(&self) -> Result<Vec<u8>, KeysError> {
        match &self.origin {
            Origin::File(path) => read_file(path),
            Origin::Url { url, shown, agent } => fetch(agent, url, shown),
        }
    }

    /// Reads and parses; blocking as [`KeysSource::read`].
    pub fn load(&self) -> Result<KeySet, KeysError> {
        let bytes = self.read()?;
        self.parse(&bytes)
    }

    fn parse(&self, bytes: &[u8]) -> Result<KeySet, KeysError> {
        KeySet::parse(bytes).map_err(|source| KeysError::KeySet {
            origin: match &self.origin {
                Origin::File(path) => format!("JWT keys file {}", path.display()),
                Origin::Url { shown, .. } => format!("JWKS {shown}"),
            },
            source,
        })
    }

    /// Reads, and parses only when the bytes differ from those `digest` was taken of.
    fn reload(&self, digest: [u8; 32]) -> Result<Option<KeySet>, KeysError> {
        let bytes = self.read()?;
        if <[u8; 32]>::from(Sha256::digest(&bytes)) == digest {
            return Ok(None);
        }
        self.parse(&bytes).map(Some)
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, KeysError> {
    let read = |path: &Path| -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        std::fs::File::open(path)?
            .take(MAX_KEYS_BYTES as u64 + 1)
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    let bytes = read(path).map_err(|source| KeysError::Read {
        path: path.to_owned(),
        source,
    })?;
    if bytes.len() > MAX_KEYS_BYTES {
        return Err(KeysError::KeySet {
            origin: format!("JWT keys file {}", path.display()),
            source: KeySetError::TooLarge,
        });
    }
    Ok(bytes)
}

/// The HTTP client of the JWKS URL: rustls with ring, the system's roots or only `ca`.
fn agent(url: &str, ca: Option<&Path>) -> Result<ureq::Agent, KeysError> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
    let https = url
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
    let roots: Vec<Certificate<'static>> = match ca {
        Some(path) => crate::cluster::tls::read_certs("JWKS CA", path)
            .map_err(|e| KeysError::Ca(e.to_string()))?
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect(),
        None => {
            // Over plain http:// there is no certificate to check, unless a redirect leads to
            // https://: the roots serve then, and their absence is not an error.
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() && https {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none installed".to_owned(), |e| e.to_string());
                return Err(KeysError::Ca(format!(
                    "no system root certificates to check {} with ({why}): install \
                     ca-certificates or set --jwks-ca",
                    shown_url(url)
                )));
            }
            found
                .certs
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()).to_owned())
                .collect()
        }
    };
    // The same provider as the client port and the peer links (see cluster/tls.rs for why ring).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .unversioned_rustls_crypto_provider(provider)
        .build();
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(FETCH_TIMEOUT))
        // A key set fetched over https:// is never followed to http://.
        .https_only(https)
        .max_redirects(MAX_REDIRECTS)
        .user_agent(concat!("topgun-node/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls)
        .build();
    Ok(config.into())
}

fn fetch(agent: &ureq::Agent, url: &str, shown: &str) -> Result<Vec<u8>, KeysError> {
    let failed = |e: ureq::Error| match e {
        ureq::Error::StatusCode(status) => KeysError::Status {
            url: shown.to_owned(),
            status,
        },
        e => KeysError::Fetch {
            url: shown.to_owned(),
            code: fetch_error_code(&e),
            message: e.to_string(),
        },
    };
    let mut response = agent
        .get(url)
        .header("Accept", "application/jwk-set+json, application/json")
        .call()
        .map_err(failed)?;
    response
        .body_mut()
        .with_config()
        .limit(MAX_KEYS_BYTES as u64)
        .read_to_vec()
        .map_err(failed)
}

fn fetch_error_code(e: &ureq::Error) -> &'static str {
    match e {
        ureq::Error::Timeout(_) => "jwks_timeout",
        ureq::Error::BodyExceedsLimit(_) => "jwks_too_large",
        ureq::Error::Tls(_) | ureq::Error::Pem(_) | ureq::Error::Rustls(_) => "jwks_tls",
        ureq::Error::Io(io)
            if io
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()) =>
        {
            "jwks_tls"
        }
        ureq::Error::BadUri(_) | ureq::Error::Http(_) => "jwks_bad_url",
        ureq::Error::TooManyRedirects | ureq::Error::RedirectFailed => "jwks_redirect",
        ureq::Error::Protocol(_) => "jwks_protocol",
        _ => "jwks_unreachable",
    }
}

/// Why the keys are read again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadCause {
    /// `--jwks-refresh-interval-ms`.
    Interval,
    /// The keys file's modification time changed.
    FileChanged,
    Signal,
    /// A token named a `kid` the set does not have.
    UnknownKid,
}

impl ReloadCause {
    fn label(self) -> &'static str {
        match self {
            ReloadCause::Interval => "interval",
            ReloadCause::FileChanged => "file_changed",
            ReloadCause::Signal => "sighup",
            ReloadCause::UnknownKid => "unknown_kid",
        }
    }
}

/// Read the keys again now (SIGHUP).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reload(pub ReloadCause);

/// A token named a `kid` the set lacks: fetch the set again, unless one was fetched less than
/// `--jwks-min-refresh-interval-ms` ago, and answer when that fetch is over (a fetch already
/// under way serves). `None`: no fetch now (too soon, or the keys come from a file); the token
/// is refused as it is.
#[derive(Message)]
#[rtype(result = "Option<oneshot::Receiver<()>>")]
pub struct KidUnknown;

/// Timing of the reloads, from the configuration.
pub struct ReloadTimes {
    /// A file's check for a change, or a URL's refresh; `None`: only SIGHUP (and unknown `kid`s).
    pub every: Option<Duration>,
    /// Shortest time between the start of a fetch and one caused by an unknown `kid`.
    pub min_refresh: Duration,
    pub report: Duration,
}

/// Keeps the key set in the [`KeyStore`] current; see the module header.
pub struct KeysActor {
    source: Arc<KeysSource>,
    store: Arc<KeyStore>,
    log: Logger,
    metrics: Mailbox<MetricsActor>,
    stats: ActorStats,
    times: ReloadTimes,
    /// Modification time of the keys file when it was last read.
    stamp: Option<SystemTime>,
    in_flight: bool,
    /// A reload asked for while one was under way (SIGHUP, a changed file): run after it, as
    /// the one under way may have read the file before it changed.
    again: Option<ReloadCause>,
    /// Tokens with an unknown `kid` waiting for the fetch under way.
    waiters: Vec<oneshot::Sender<()>>,
    /// When the last read started (at start: the load that came before this actor).
    last_started: Instant,
    failures: u64,
}

impl KeysActor {
    pub fn new(
        source: Arc<KeysSource>,
        store: Arc<KeyStore>,
        log: &Logger,
        metrics: Mailbox<MetricsActor>,
        stats: ActorStats,
        times: ReloadTimes,
    ) -> Self {
        let stamp = source.stamp();
        KeysActor {
            source,
            store,
            log: log.new(slog::o!("actor" => "keys")),
            metrics,
            stats,
            times,
            stamp,
            in_flight: false,
            again: None,
            waiters: Vec::new(),
            last_started: Instant::now(),
            failures: 0,
        }
    }

    fn reload(&mut self, cause: ReloadCause, ctx: &mut Context<Self>) {
        if self.in_flight {
            if cause != ReloadCause::UnknownKid {
                self.again = Some(cause);
            }
            return;
        }
        self.in_flight = true;
        self.last_started = Instant::now();
        // Taken before reading, so a change made while reading is seen at the next check.
        self.stamp = self.source.stamp();
        let source = self.source.clone();
        let digest = *self.store.get().digest();
        let task = actix_rt::task::spawn_blocking(move || source.reload(digest));
        ctx.spawn(task.into_actor(self).map(move |joined, act, ctx| {
            let result = joined.unwrap_or_else(|e| {
                Err(KeysError::Fetch {
                    url: act.source.describe(),
                    code: "jwks_unreachable",
                    message: format!("the reading thread failed: {e}"),
                })
            });
            act.finished(cause, result, ctx);
        }));
    }

    fn finished(
        &mut self,
        cause: ReloadCause,
        result: Result<Option<KeySet>, KeysError>,
        ctx: &mut Context<Self>,
    ) {
        let t0 = self.stats.begin();
        self.in_flight = false;
        let source = self.source.describe();
        match result {
            Ok(None) => {}
            Ok(Some(set)) => {
                let set = Arc::new(set);
                let before = self.store.replace(set.clone());
                let (added, removed) = set.changes_since(&before);
                JwtKeysReloaded {
                    cause: cause.label(),
                    source: Shown(&source),
                    keys: set.len(),
                    added,
                    removed,
                    skipped: set.skipped().len(),
                    kids: kids_line(&set),
                }
                .emit(&self.log);
                log_skipped(&set, &self.log);
            }
            Err(e) => {
                self.failures += 1;
                JwtKeysReloadFailed {
                    cause: cause.label(),
                    source: Shown(&source),
                    err: ErrField::new(e.code(), &e),
                }
                .emit(&self.log);
            }
        }
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(());
        }
        self.stats.end(t0);
        if let Some(again) = self.again.take() {
            self.reload(again, ctx);
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.source.is_url() {
            self.reload(ReloadCause::Interval, ctx);
        } else if self.source.stamp() != self.stamp {
            self.reload(ReloadCause::FileChanged, ctx);
        }
    }

    fn report(&mut self) {
        self.metrics.do_send(Reported(Box::new(KeysReport {
            stats: self.stats.take(),
            failures: std::mem::take(&mut self.failures),
            keys: self.store.get().len(),
        })));
    }
}

/// The `kid`s of a set for a log line: the first [`KIDS_LOGGED`], comma-separated.
pub fn kids_line(set: &KeySet) -> String {
    let total = set.kids().count();
    let mut line = set.kids().take(KIDS_LOGGED).collect::<Vec<_>>().join(",");
    if total > KIDS_LOGGED {
        line.push_str(&format!(",… {} more", total - KIDS_LOGGED));
    }
    line
}

/// One line per skipped key (the first [`SKIPPED_LINES`]).
pub fn log_skipped(set: &KeySet, log: &Logger) {
    for skipped in set.skipped().iter().take(SKIPPED_LINES) {
        JwtKeySkipped {
            kid: skipped.kid.clone().unwrap_or_default(),
            reason: skipped.reason,
        }
        .emit(log);
    }
}

struct KeysReport {
    stats: StatsDelta,
    failures: u64,
    keys: usize,
}

impl Report for KeysReport {
    fn apply(self: Box<Self>, m: &mut Metrics) {
        self.stats.apply(m);
        if self.failures > 0 {
            m.jwks_refresh_failures_total.inc_by(self.failures);
        }
        m.jwt_keys.set(i64::try_from(self.keys).unwrap_or(i64::MAX));
    }
}

impl Actor for KeysActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.report();
        ctx.run_interval(self.times.report, |act, _| act.report());
        if let Some(every) = self.times.every {
            ctx.run_interval(every, |act, ctx| {
                let t0 = act.stats.begin();
                act.tick(ctx);
                act.stats.end(t0);
            });
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.report();
    }
}

crate::telemetry::mailbox::mailbox_handlers!(KeysActor, stats);

impl Handler<Reload> for KeysActor {
    type Result = ();

    fn handle(&mut self, msg: Reload, ctx: &mut Context<Self>) {
        let t0 = self.stats.begin();
        self.reload(msg.0, ctx);
        self.stats.end(t0);
    }
}

impl Handler<KidUnknown> for KeysActor {
    type Result = Option<oneshot::Receiver<()>>;

    fn handle(&mut self, _: KidUnknown, ctx: &mut Context<Self>) -> Self::Result {
        if !self.source.is_url() {
            return None;
        }
        if !self.in_flight {
            if self.last_started.elapsed() < self.times.min_refresh {
                return None;
            }
            let t0 = self.stats.begin();
            self.reload(ReloadCause::UnknownKid, ctx);
            self.stats.end(t0);
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push(tx);
        Some(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keys_file_over_the_cap_or_missing_is_an_error_with_its_code() {
        let dir = tempfile::tempdir().expect("dir");
        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; MAX_KEYS_BYTES + 10]).expect("write");
        let err = read_file(&big).expect_err("too large");
        assert_eq!(err.code(), "jwks_too_large");
        let err = read_file(&dir.path().join("missing.json")).expect_err("missing");
        assert_eq!(err.code(), "jwt_keys_unreadable");
        assert!(err.to_string().contains("missing.json"), "{err}");
    }
}
