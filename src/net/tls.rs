//! TLS of the client port (`--tls-cert`, `--tls-key`): `wss://` and `https://` served by the
//! node itself with rustls, no proxy in front.
//!
//! The certificate is swapped in place ([`CertStore`], rustls's `ResolvesServerCert`): every new
//! handshake takes the current one, connections already open keep theirs, so a renewed
//! certificate (cert-manager, certbot) is taken up on SIGHUP or when its files change without
//! dropping anyone. A reload that fails keeps the certificate in use.
//!
//! A client that speaks plain HTTP to the TLS port gets a plain-text 400 saying so (nginx's
//! "plain HTTP request was sent to HTTPS port") instead of TLS bytes it cannot read; it and
//! every failed or stalled handshake are counted in `topgun_tls_handshake_failures_total`.
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use actix::prelude::*;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use slog::Logger;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cluster::tls::{read_certs, read_key, PemError};
use crate::config::ClientTlsFiles;
use crate::net::events::{TlsHandshakesFailed, TlsReloadFailed, TlsReloaded};
use crate::telemetry::event::{ErrField, Event};
use crate::telemetry::mailbox::Mailbox;
use crate::telemetry::metrics::{Metrics, MetricsActor, TLS_HANDSHAKE_FAILURES};
use crate::telemetry::report::{ActorKind, ActorStats, Report, Reported, StatsDelta};
use crate::telemetry::throttle::Throttle;

/// Longest wait for a new connection's first byte, and for its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// The first byte of every TLS connection: a handshake record (RFC 8446 5.1).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

const PLAINTEXT_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Connection: close\r\n\
Content-Length: 54\r\n\
\r\n\
this port speaks TLS: connect with wss:// or https://\n";

/// Why the client TLS files could not be used: the node does not start, or a reload keeps the
/// certificate in use.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("cannot use the client TLS certificate and key: {0}")]
    Rustls(#[from] rustls::Error),
}

impl ClientTlsError {
    pub fn code(&self) -> &'static str {
        match self {
            ClientTlsError::Pem(PemError::Read { .. }) => "tls_unreadable",
            ClientTlsError::Pem(PemError::Empty { .. }) => "tls_empty",
            ClientTlsError::Rustls(_) => "tls_invalid",
        }
    }
}

/// The certificate every new handshake presents.
#[derive(Debug)]
struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    fn get(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, key: Arc<CertifiedKey>) {
        match self.current.write() {
            Ok(mut c) => *c = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// Handshakes that failed, by reason; counted where they fail (the HTTP workers) and reported
/// by the [`TlsActor`].
#[derive(Debug, Default)]
pub struct HandshakeTally {
    plaintext: AtomicU64,
    handshake: AtomicU64,
    timeout: AtomicU64,
}

impl HandshakeTally {
    pub fn handshake_failed(&self) {
        self.handshake.fetch_add(1, Ordering::Relaxed);
    }

    pub fn timed_out(&self) {
        self.timeout.fetch_add(1, Ordering::Relaxed);
    }

    /// In the order of [`TLS_HANDSHAKE_FAILURES`].
    fn read(&self) -> [u64; 3] {
        [
            self.plaintext.load(Ordering::Relaxed),
            self.handshake.load(Ordering::Relaxed),
            self.timeout.load(Ordering::Relaxed),
        ]
    }
}

/// The client port's TLS, loaded at start.
pub struct ClientTls {
    pub server_config: Arc<rustls::ServerConfig>,
    pub tally: Arc<HandshakeTally>,
    store: Arc<CertStore>,
    provider: Arc<CryptoProvider>,
    files: ClientTlsFiles,
}

impl ClientTls {
    pub fn load(files: &ClientTlsFiles) -> Result<ClientTls, ClientTlsError> {
        // The same provider as the peer links (see cluster/tls.rs for why ring).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = certified_key(files, &provider)?;
        let store = Arc::new(CertStore {
            current: RwLock::new(Arc::new(key)),
        });
        let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        Ok(ClientTls {
            server_config: Arc::new(server_config),
            tally: Arc::default(),
            store,
            provider,
            files: files.clone(),
        })
    }

    pub fn cert_path(&self) -> &Path {
        &self.files.cert
    }

    /// Reads the files again and presents them from the next handshake on.
    fn reload(&self) -> Result<(), ClientTlsError> {
        let key = certified_key(&self.files, &self.provider)?;
        self.store.set(Arc::new(key));
        Ok(())
    }
}

/// The chain and its key, checked to belong together.
fn certified_key(
    files: &ClientTlsFiles,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, ClientTlsError> {
    let chain = read_certs("certificate", &files.cert)?;
    let key = read_key(&files.key)?;
    Ok(CertifiedKey::from_der(chain, key, provider)?)
}

/// Lets a connection through to the TLS handshake when its first byte opens one. A plain-text
/// request is answered with a 400 that says why; a connection that sends nothing in time is
/// closed. Either is counted. A connection closed before its first byte (a TCP probe) is not.
pub async fn screen(mut stream: TcpStream, tally: Arc<HandshakeTally>) -> Result<TcpStream, ()> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE_RECORD => Ok(stream),
        Ok(Ok(0)) | Ok(Err(_)) => Err(()),
        Ok(Ok(_)) => {
            tally.plaintext.fetch_add(1, Ordering::Relaxed);
            answer_plaintext(&mut stream).await;
            Err(())
        }
        Err(_) => {
            tally.timed_out();
            Err(())
        }
    }
}

/// Reads what the client sent before answering and until it closes (bounded): closing a socket
/// with unread bytes resets it, and the client would never see the answer.
async fn answer_plaintext(stream: &mut TcpStream) {
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut sink)).await;
    let answered = async {
        stream.write_all(PLAINTEXT_ANSWER).await?;
        stream.shutdown().await?;
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answered).await;
}

/// Why the TLS files are read again.
#[derive(Clone, Copy, Debug)]
pub enum ReloadCause {
    Signal,
    FilesChanged,
}

impl ReloadCause {
    fn label(self) -> &'static str {
        match self {
            ReloadCause::Signal => "sighup",
            ReloadCause::FilesChanged => "files_changed",
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Reload(pub ReloadCause);

/// Reloads the client TLS files (on [`Reload`] and when their modification times change) and
/// reports reloads and failed handshakes.
pub struct TlsActor {
    tls: Arc<ClientTls>,
    log: Logger,
    metrics: Mailbox<MetricsActor>,
    stats: ActorStats,
    report_interval: Duration,
    check_interval: Option<Duration>,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    reloads_ok: u64,
    reloads_failed: u64,
    /// Failed handshakes already reported, and already logged.
    reported: [u64; 3],
    logged: [u64; 3],
    failure_log: Throttle,
}

impl TlsActor {
    pub fn new(
        tls: Arc<ClientTls>,
        log: &Logger,
        metrics: Mailbox<MetricsActor>,
        report_interval: Duration,
        check_interval: Option<Duration>,
        timed: bool,
    ) -> Self {
        let stamps = file_stamps(&tls.files);
        TlsActor {
            tls,
            log: log.new(slog::o!("actor" => "tls")),
            metrics,
            stats: ActorStats::new(ActorKind::Tls, timed),
            report_interval,
            check_interval,
            stamps,
            reloads_ok: 0,
            reloads_failed: 0,
            reported: [0; 3],
            logged: [0; 3],
            failure_log: Throttle::new(Duration::from_secs(10)),
        }
    }

    pub fn stats(&self) -> &ActorStats {
        &self.stats
    }

    fn reload(&mut self, cause: ReloadCause) {
        // Taken before reading, so a change made while reading is seen at the next check.
        self.stamps = file_stamps(&self.tls.files);
        match self.tls.reload() {
            Ok(()) => {
                self.reloads_ok += 1;
                TlsReloaded {
                    cause: cause.label(),
                    cert: &self.tls.files.cert.display().to_string(),
                }
                .emit(&self.log);
            }
            Err(e) => {
                self.reloads_failed += 1;
                TlsReloadFailed {
                    cause: cause.label(),
                    err: ErrField::new(e.code(), &e),
                }
                .emit(&self.log);
            }
        }
    }

    fn check_files(&mut self) {
        if file_stamps(&self.tls.files) != self.stamps {
            self.reload(ReloadCause::FilesChanged);
        }
    }

    fn log_failures(&mut self, now: [u64; 3]) {
        if now == self.logged {
            return;
        }
        let Some(suppressed) = self.failure_log.check(Instant::now()) else {
            return;
        };
        let [plaintext, handshake, timeout] =
            std::array::from_fn(|i| now[i].saturating_sub(self.logged[i]));
        self.logged = now;
        TlsHandshakesFailed {
            plaintext,
            handshake,
            timeout,
            suppressed,
            err: ErrField::fixed("tls", "client TLS handshakes failed"),
        }
        .emit(&self.log);
    }

    fn report(&mut self) {
        let now = self.tls.tally.read();
        let failures = std::array::from_fn(|i| now[i].saturating_sub(self.reported[i]));
        self.reported = now;
        self.log_failures(now);
        self.metrics.do_send(Reported(Box::new(TlsReport {
            stats: self.stats.take(),
            reloads_ok: std::mem::take(&mut self.reloads_ok),
            reloads_failed: std::mem::take(&mut self.reloads_failed),
            failures,
        })));
    }
}

/// Modification times of the certificate and key files (`None`: unreadable).
fn file_stamps(files: &ClientTlsFiles) -> (Option<SystemTime>, Option<SystemTime>) {
    let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (stamp(&files.cert), stamp(&files.key))
}

struct TlsReport {
    stats: StatsDelta,
    reloads_ok: u64,
    reloads_failed: u64,
    failures: [u64; 3],
}

impl Report for TlsReport {
    fn apply(self: Box<Self>, m: &mut Metrics) {
        self.stats.apply(m);
        for (result, n) in [("ok", self.reloads_ok), ("error", self.reloads_failed)] {
            if n > 0 {
                m.tls_reloads_total.with_label_values(&[result]).inc_by(n);
            }
        }
        for (reason, n) in TLS_HANDSHAKE_FAILURES.iter().zip(self.failures) {
            if n > 0 {
                m.tls_handshake_failures_total
                    .with_label_values(&[reason])
                    .inc_by(n);
            }
        }
    }
}

impl Actor for TlsActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.report_interval, |act, _| act.report());
        if let Some(every) = self.check_interval {
            ctx.run_interval(every, |act, _| {
                let t0 = act.stats.begin();
                act.check_files();
                act.stats.end(t0);
            });
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.report();
    }
}

crate::telemetry::mailbox::mailbox_handlers!(TlsActor, stats);

impl Handler<Reload> for TlsActor {
    type Result = ();

    fn handle(&mut self, msg: Reload, _: &mut Context<Self>) {
        let t0 = self.stats.begin();
        self.reload(msg.0);
        self.stats.end(t0);
    }
}
