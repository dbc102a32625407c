//! Socket options of client connections.
//!
//! A client that stops reading freezes its connection actor: actix-web stops polling a
//! response (the WebSocket context with its timers and mailbox) whose bytes the socket does
//! not take, so neither the slow-consumer eviction nor the heartbeat check of the actor ever
//! runs again, and the connection would be held until the client reads. Only the kernel still
//! sees it: with `TCP_USER_TIMEOUT`, data unacknowledged for that long (zero-window probes
//! included, Linux 5.11 and later) aborts the connection, the response fails and the actor
//! stops.
use std::time::Duration;

use tokio::net::TcpStream;

/// Sets `TCP_USER_TIMEOUT` (`None`: the kernel's default is left). A failure leaves the
/// default: the connection is still served, it just is not cut early.
pub fn set_send_timeout(stream: &TcpStream, timeout: Option<Duration>) {
    if let Some(timeout) = timeout {
        let _ = socket2::SockRef::from(stream).set_tcp_user_timeout(Some(timeout));
    }
}
