//! The client side's notable events: a connection's life, its refusals, the gate's. Declared
//! once here (see `telemetry::event`). A connection's events also bump its own counters of
//! `topgun_*` families through [`ConnectionTelemetry`], so each has an `emit_on` that does both.
use std::time::Instant;

use crate::events;
use crate::net::conn_telemetry::ConnectionTelemetry;
use crate::telemetry::event::{ErrField, Event, Shown};

events! {
    Info ClientConnected<'a> = "client_connected", "client connected" {
        peer: &'a str => "peer",
        auth_required: bool => "authRequired",
    }
    Info ClientAuthenticated<'a> = "client_authenticated", "client authenticated" {
        user_id: Option<&'a str> => "userId",
    }
    /// AUTH refused, or no AUTH in time. `reason` is a bounded code, never the raw error text.
    Warning ClientAuthFailed = "client_auth_failed", "client auth failed" {
        reason: &'static str => "reason",
        err: ErrField => "err",
    }
    /// The node closed the connection because of the client's behaviour (timeouts, slow
    /// reads, oversize or broken frames); `reason` is the close-reason label.
    Warning ClientEvicted = "client_evicted", "client evicted" {
        reason: &'static str => "reason",
        code: u16 => "code",
        err: ErrField => "err",
    }
    Info ClientDisconnected = "client_disconnected", "client disconnected" {
        reason: &'static str => "reason",
        frames: u64 => "frames",
    }
    /// Counted always, its line at debug and at most once per interval per connection.
    Debug InvalidFrame = "invalid_frame", "invalid frame dropped" {
        reason: &'static str => "reason",
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }
    /// The per-connection token bucket refused a frame (ERROR 429).
    Warning ClientRateLimited = "client_rate_limited", "client rate-limited" {
        cost: u64 => "cost",
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }
    /// A write batch waited for a pending-batch slot longer than its timeout (ERROR 429).
    Warning BackpressureTimeout = "backpressure_timeout", "backpressure timeout" {
        ops: usize => "ops",
        timeout_ms: u64 => "timeoutMs",
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }
    /// A request over one of the per-client limits (`telemetry::metrics::LIMITS`).
    Warning LimitExceeded = "limit_exceeded", "limit exceeded" {
        limit: &'static str => "limit",
        max: usize => "max",
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }
    /// The gate refused a new connection (rate or pending-handshake limit).
    Warning ConnectionRateLimited = "connection_rate_limited", "connection rate-limited" {
        reason: &'static str => "reason",
        pending: usize => "pending",
        limit_per_second: usize => "limitPerSecond",
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }
    /// Shutdown: `connections` told to close with 1001, in `groups` groups `groupEveryMs`
    /// apart over `spreadMs` (0: at once, e.g. after a second signal).
    Info ClosingClients = "closing_clients", "closing client connections" {
        connections: usize => "connections",
        spread_ms: u64 => "spreadMs",
        groups: u32 => "groups",
        group_every_ms: u64 => "groupEveryMs",
    }
    /// A new connection while the node drains: HTTP 503, the client should try another node.
    /// At most one line per 10 s with the `suppressed` count; the event's series counts each.
    Info ConnectionRefusedDraining = "connection_refused_draining",
        "connection refused: the node is draining" {
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }
    /// The client TLS certificate was read again (SIGHUP or changed files); new handshakes
    /// present it, open connections keep theirs.
    Info TlsReloaded<'a> = "tls_reloaded", "client TLS certificate reloaded" {
        cause: &'static str => "cause",
        cert: &'a str => "cert",
    }
    /// The files could not be used; the certificate in use stays.
    Error TlsReloadFailed = "tls_reload_failed", "client TLS reload failed; the certificate in use stays" {
        cause: &'static str => "cause",
        err: ErrField => "err",
    }
    /// The JWT keys were read again (SIGHUP, a changed keys file, the refresh interval, a
    /// token with an unknown `kid`) and differ from the set in use, which they replace.
    Info JwtKeysReloaded<'a> = "jwt_keys_reloaded", "JWT keys reloaded" {
        cause: &'static str => "cause",
        source: Shown<'a> => "source",
        keys: usize => "keys",
        added: usize => "added",
        removed: usize => "removed",
        skipped: usize => "skipped",
        kids: String => "kids",
    }
    /// The keys could not be read, fetched or used; the set in use stays.
    Warning JwtKeysReloadFailed<'a> = "jwt_keys_reload_failed",
        "JWT keys reload failed; the keys in use stay" {
        cause: &'static str => "cause",
        source: Shown<'a> => "source",
        err: ErrField => "err",
    }
    /// A key of the set that cannot verify tokens (an unknown `kty`, an encryption key, an RSA
    /// modulus under 2048 bits...), logged when the set is loaded; `reason` says which.
    Warning JwtKeySkipped = "jwt_key_skipped", "JWT key skipped" {
        kid: String => "kid",
        reason: &'static str => "reason",
    }
    /// Client TLS handshakes that failed since the last such line, by reason (at most one
    /// line per 10 s).
    Warning TlsHandshakesFailed = "tls_handshakes_failed", "client TLS handshakes failed" {
        plaintext: u64 => "plaintext",
        handshake: u64 => "handshake",
        timeout: u64 => "timeout",
        suppressed: u64 => "suppressed",
        err: ErrField => "err",
    }
}

impl ClientConnected<'_> {
    pub fn emit_on(self, t: &mut ConnectionTelemetry) {
        self.emit(&t.log);
    }
}

impl ClientAuthenticated<'_> {
    pub fn emit_on(self, t: &mut ConnectionTelemetry) {
        self.emit(&t.log);
    }
}

impl ClientAuthFailed {
    pub fn new(reason: &'static str) -> Self {
        ClientAuthFailed {
            reason,
            err: ErrField::fixed(
                reason,
                "the client's AUTH was refused or did not come in time",
            ),
        }
    }

    pub fn emit_on(self, t: &mut ConnectionTelemetry) {
        t.count_auth_failure(self.reason);
        self.emit(&t.log);
    }
}

impl ClientEvicted {
    pub fn new(reason: &'static str, code: u16) -> Self {
        ClientEvicted {
            reason,
            code,
            err: ErrField::new(reason, format_args!("closed with {code}")),
        }
    }

    pub fn emit_on(self, t: &mut ConnectionTelemetry) {
        t.count_closed(self.reason);
        self.emit(&t.log);
    }
}

impl ClientDisconnected {
    pub fn emit_on(self, t: &mut ConnectionTelemetry) {
        t.count_closed(self.reason);
        self.emit(&t.log);
    }
}

/// Counts an [`InvalidFrame`]; its line (and the text of `detail`) only when it is written.
pub fn invalid_frame(
    t: &mut ConnectionTelemetry,
    reason: &'static str,
    detail: &dyn std::fmt::Display,
) {
    t.count_invalid(reason);
    let suppressed = t.invalid_log.check(Instant::now());
    let err = match suppressed {
        Some(_) => ErrField::new(reason, detail),
        None => ErrField::default(),
    };
    InvalidFrame {
        reason,
        suppressed: suppressed.unwrap_or(0),
        err,
    }
    .emit_if(&t.log, suppressed.is_some());
}

impl ClientRateLimited {
    pub fn emit_on(self, t: &mut ConnectionTelemetry) {
        t.count_rate_limited();
        let suppressed = t.rate_limit_log.check(Instant::now());
        ClientRateLimited {
            suppressed: suppressed.unwrap_or(0),
            err: ErrField::fixed("rate_limited", "the connection's token bucket is empty"),
            ..self
        }
        .emit_if(&t.log, suppressed.is_some());
    }
}
