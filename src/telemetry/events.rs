//! Notable events of a connection's life, each defined once: `emit` writes the log line and
//! bumps the counter together, so the two cannot drift (vector's internal-events pattern).
//! `msg` is a fixed sentence; values go in keys; reasons are bounded codes.
use std::time::Instant;

use slog::{debug, info, warn};

use crate::net::conn_telemetry::ConnectionTelemetry;

pub struct ClientConnected<'a> {
    pub peer: &'a str,
    pub auth_required: bool,
}

impl ClientConnected<'_> {
    pub fn emit(self, t: &mut ConnectionTelemetry) {
        info!(t.log, "client connected"; "peer" => self.peer, "authRequired" => self.auth_required);
    }
}

pub struct ClientAuthenticated<'a> {
    pub user_id: Option<&'a str>,
}

impl ClientAuthenticated<'_> {
    pub fn emit(self, t: &mut ConnectionTelemetry) {
        info!(t.log, "client authenticated"; "userId" => self.user_id);
    }
}

/// AUTH refused, or no AUTH in time. `reason` is a bounded code, never the raw error text.
pub struct ClientAuthFailed {
    pub reason: &'static str,
}

impl ClientAuthFailed {
    pub fn emit(self, t: &mut ConnectionTelemetry) {
        t.count_auth_failure(self.reason);
        warn!(t.log, "client auth failed"; "reason" => self.reason);
    }
}

/// The node closed the connection because of the client's behaviour (timeouts, slow reads,
/// oversize or broken frames); `reason` is the close-reason label.
pub struct ClientEvicted {
    pub reason: &'static str,
    pub code: u16,
}

impl ClientEvicted {
    pub fn emit(self, t: &mut ConnectionTelemetry) {
        t.count_closed(self.reason);
        warn!(t.log, "client evicted"; "reason" => self.reason, "code" => self.code);
    }
}

pub struct ClientDisconnected {
    pub reason: &'static str,
    pub frames: u64,
}

impl ClientDisconnected {
    pub fn emit(self, t: &mut ConnectionTelemetry) {
        t.count_closed(self.reason);
        info!(t.log, "client disconnected"; "reason" => self.reason, "frames" => self.frames);
    }
}

/// A frame dropped as invalid (decode failure, text frame, …): counted always, logged at debug
/// and at most once per interval per connection.
pub struct InvalidFrame<'a> {
    pub reason: &'static str,
    pub detail: &'a dyn std::fmt::Display,
}

impl InvalidFrame<'_> {
    pub fn emit(self, t: &mut ConnectionTelemetry) {
        t.count_invalid(self.reason);
        if let Some(suppressed) = t.invalid_log.check(Instant::now()) {
            debug!(t.log, "invalid frame dropped";
                "reason" => self.reason, "detail" => %self.detail, "suppressed" => suppressed);
        }
    }
}

/// The per-connection token bucket refused a frame (ERROR 429).
pub struct ClientRateLimited {
    pub cost: u64,
}

impl ClientRateLimited {
    pub fn emit(self, t: &mut ConnectionTelemetry) {
        t.count_rate_limited();
        if let Some(suppressed) = t.rate_limit_log.check(Instant::now()) {
            warn!(t.log, "client rate-limited"; "cost" => self.cost, "suppressed" => suppressed);
        }
    }
}
