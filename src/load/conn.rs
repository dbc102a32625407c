//! One client connection: connect (optionally retrying the connection gate's HTTP 429),
//! authenticate with a minted JWT, send [`ClientMessage`]s, and classify what comes back.
//!
//! Classification is deliberately lenient and cheap: the `type` tag is read first and only
//! the few fields a scenario measures are decoded, through small structs that ignore
//! everything else. So a server with extra fields (or another TopGun server) is measured the
//! same way, and an `OP_ACK` costs two direct serde passes rather than the buffered
//! internally-tagged path of `protocol::decode_server`.
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::protocol::{encode_client, Auth, ClientMessage, Ping};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where to connect and how to authenticate.
#[derive(Clone, Debug)]
pub struct Target {
    /// One server, or several (the nodes of a cluster): connection `n` goes to
    /// `urls[n % urls.len()]`, so any number of connections spreads evenly over them, and
    /// with one URL everything goes where it always went.
    pub urls: Vec<String>,
    /// HS256 secret; `None` assumes a server in no-auth mode.
    pub secret: Option<String>,
}

impl Target {
    /// Which of `urls` connection `n` uses.
    pub fn url_index(&self, n: usize) -> usize {
        n.checked_rem(self.urls.len()).unwrap_or(0)
    }

    /// The URL of connection `n` (empty with no URL at all: the connect then fails, counted).
    pub fn url_for(&self, n: usize) -> &str {
        self.urls.get(self.url_index(n)).map_or("", String::as_str)
    }

    /// The URL the server-side observations (`/metrics`, `--pid`) refer to.
    pub fn first_url(&self) -> &str {
        self.url_for(0)
    }

    /// The URLs for reports: comma-separated, so one URL reads exactly as before.
    pub fn label(&self) -> String {
        self.urls.join(",")
    }

    /// How many of the connections `ixs` go to each URL, in `urls` order.
    pub fn per_url(&self, ixs: impl IntoIterator<Item = usize>) -> Vec<u64> {
        let mut counts = vec![0u64; self.urls.len()];
        for ix in ixs {
            if let Some(c) = counts.get_mut(self.url_index(ix)) {
                *c += 1;
            }
        }
        counts
    }
}

/// Why a connection could not be opened. `code()` is the label in reports.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("server refused the upgrade with HTTP 429")]
    Rejected,
    #[error("server answered the upgrade with HTTP {0}")]
    Http(u16),
    #[error("connect failed: {0}")]
    Io(String),
    #[error("authentication failed")]
    AuthFailed,
    #[error("no answer in time")]
    Timeout,
    #[error("connection closed during the handshake")]
    Closed,
    #[error("cannot mint a token: {0}")]
    Token(String),
}

impl ConnectError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Rejected => "rejected_429",
            Self::Http(_) => "http_error",
            Self::Io(_) => "io_error",
            Self::AuthFailed => "auth_failed",
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::Token(_) => "token",
        }
    }
}

/// What the scenarios look at in a server frame.
#[derive(Debug)]
pub enum Incoming {
    OpAck {
        last_id: String,
    },
    Error {
        code: u32,
    },
    QueryResp,
    /// The `value` of a `QUERY_UPDATE`: the fan-out scenario reads its send timestamp.
    QueryUpdate {
        sent_us: Option<u64>,
    },
    Pong,
    AuthAck,
    AuthFail,
    /// A well-formed message the scenarios do not measure (AUTH_REQUIRED, SERVER_EVENT, ...).
    Other,
    /// A frame that is not a MessagePack map with a string `type`, or a measured message
    /// whose fields do not decode. Counted, never fatal.
    Bad,
}

/// The `t` key of a fan-out value: microseconds since [`super::epoch`] at send time.
pub const SENT_AT_KEY: &str = "t";

#[derive(Deserialize)]
struct Tag<'a> {
    #[serde(rename = "type", borrow)]
    ty: &'a str,
}

#[derive(Deserialize)]
struct Wrapped<T> {
    payload: T,
}

#[derive(Deserialize)]
struct AckLite {
    #[serde(rename = "lastId")]
    last_id: String,
}

#[derive(Deserialize)]
struct ErrorLite {
    code: u32,
}

#[derive(Deserialize)]
struct UpdateLite {
    #[serde(default)]
    value: Option<SentAt>,
}

/// A value map of which only `t` matters; other keys are skipped by serde.
#[derive(Deserialize)]
struct SentAt {
    #[serde(default)]
    t: Option<u64>,
}

/// Reads one binary frame. See the module comment for why it is not `decode_server`.
pub fn classify(frame: &[u8]) -> Incoming {
    let Ok(tag) = rmp_serde::from_slice::<Tag>(frame) else {
        return Incoming::Bad;
    };
    match tag.ty {
        "OP_ACK" => match rmp_serde::from_slice::<Wrapped<AckLite>>(frame) {
            Ok(w) => Incoming::OpAck {
                last_id: w.payload.last_id,
            },
            Err(_) => Incoming::Bad,
        },
        "ERROR" => match rmp_serde::from_slice::<Wrapped<ErrorLite>>(frame) {
            Ok(w) => Incoming::Error {
                code: w.payload.code,
            },
            Err(_) => Incoming::Bad,
        },
        "QUERY_UPDATE" => match rmp_serde::from_slice::<Wrapped<UpdateLite>>(frame) {
            Ok(w) => Incoming::QueryUpdate {
                sent_us: w.payload.value.and_then(|v| v.t),
            },
            // A value that is not a map (another writer's data): a delivery without a
            // timestamp, not a broken frame.
            Err(_) => Incoming::QueryUpdate { sent_us: None },
        },
        "QUERY_RESP" => Incoming::QueryResp,
        "PONG" => Incoming::Pong,
        "AUTH_ACK" => Incoming::AuthAck,
        "AUTH_FAIL" => Incoming::AuthFail,
        _ => Incoming::Other,
    }
}

/// Mints an HS256 token the node accepts (protocol.md 3.2: `sub` and `exp` required).
pub fn mint_token(secret: &str, sub: &str) -> Result<String, ConnectError> {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        iat: u64,
        exp: u64,
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = Claims {
        sub,
        iat: now,
        exp: now + 24 * 3600,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| ConnectError::Token(e.to_string()))
}

/// Wall-clock milliseconds, for HLC timestamps and PING (the node rejects clocks far ahead).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Small buffers: tungstenite's defaults (128 KiB read + 128 KiB write) would cost the load
/// generator over a GiB at 5,000 idle connections, and our frames are a few hundred bytes.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(16 * 1024)
}

pub fn encode(msg: &ClientMessage) -> Message {
    // encode_client fails only for `Unsupported`, which the load generator never builds.
    Message::binary(encode_client(msg).unwrap_or_default())
}

pub fn ping() -> Message {
    encode(&ClientMessage::Ping(Ping {
        timestamp: wall_ms(),
    }))
}

/// Opens connection `n` (its JWT `sub` is `load-<n>`, its URL [`Target::url_for`]) and
/// authenticates it. In no-auth mode a PING/PONG round trip stands in for `AUTH_ACK`, so
/// "open" always means the server has a live session for it. One attempt; see
/// [`open_retrying`].
pub async fn open(target: &Target, n: usize, timeout: Duration) -> Result<Ws, ConnectError> {
    match tokio::time::timeout(timeout, open_inner(target, n)).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout),
    }
}

async fn open_inner(target: &Target, n: usize) -> Result<Ws, ConnectError> {
    // Nagle off: a request/response benchmark otherwise measures the delayed-ACK timer.
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(target.url_for(n), Some(ws_config()), true)
            .await
            .map_err(|e| match e {
                WsError::Http(resp) if resp.status().as_u16() == 429 => ConnectError::Rejected,
                WsError::Http(resp) => ConnectError::Http(resp.status().as_u16()),
                other => ConnectError::Io(other.to_string()),
            })?;
    let first = match &target.secret {
        // Like the TS client: AUTH right away, without waiting for AUTH_REQUIRED.
        Some(secret) => encode(&ClientMessage::Auth(Auth {
            token: mint_token(secret, &format!("load-{n}"))?,
            protocol_version: None,
            device_token: None,
        })),
        None => ping(),
    };
    ws.send(first)
        .await
        .map_err(|e| ConnectError::Io(e.to_string()))?;
    loop {
        match next(&mut ws).await {
            None => return Err(ConnectError::Closed),
            Some(Incoming::AuthAck) if target.secret.is_some() => return Ok(ws),
            Some(Incoming::Pong) if target.secret.is_none() => return Ok(ws),
            Some(Incoming::AuthFail) => return Err(ConnectError::AuthFailed),
            Some(_) => {}
        }
    }
}

/// [`open`], retrying the node's connection-rate refusals (HTTP 429, `Retry-After: 1`) and
/// transient I/O errors until `deadline`, so a scenario of thousands of connections ramps up
/// at whatever rate the server admits.
pub async fn open_retrying(
    target: &Target,
    n: usize,
    deadline: Instant,
) -> Result<(Ws, u32), ConnectError> {
    let mut retries = 0u32;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ConnectError::Timeout);
        }
        match open(target, n, left).await {
            Ok(ws) => return Ok((ws, retries)),
            Err(ConnectError::Rejected | ConnectError::Io(_) | ConnectError::Closed) => {
                retries += 1;
                // Spread retries over the next second instead of returning in lock step.
                let jitter = Duration::from_millis(200 + (n as u64 * 37) % 800);
                if Instant::now() + jitter >= deadline {
                    return Err(ConnectError::Timeout);
                }
                tokio::time::sleep(jitter).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The next frame worth looking at, or `None` once the connection is closed or broken.
/// WebSocket pings are answered by tungstenite itself on the next write or flush.
pub async fn next(ws: &mut Ws) -> Option<Incoming> {
    loop {
        match ws.next().await? {
            Ok(Message::Binary(b)) => return Some(classify(&b)),
            // The protocol has no text frames from the server; count it like any stray frame.
            Ok(Message::Text(_)) => return Some(Incoming::Bad),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// What opening a set of connections produced.
pub struct Opened<T> {
    /// One entry per connection that opened (and passed `then`), with its index.
    pub conns: Vec<(usize, T)>,
    /// Failures by [`ConnectError::code`].
    pub failed: super::stats::Tally,
    /// 429 refusals and I/O errors that were retried.
    pub retries: u64,
    pub took: Duration,
}

/// Opens connections `0..n` with at most `concurrency` attempts in flight, retrying refusals
/// until `timeout` from now, and runs `then` on each (e.g. subscribe) before counting it open.
/// One tokio task per connection, so handshakes use every runtime thread.
pub async fn open_all<T, F, Fut>(
    target: &Target,
    n: usize,
    concurrency: usize,
    timeout: Duration,
    then: F,
) -> Opened<T>
where
    T: Send + 'static,
    F: Fn(usize, Ws) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<T, ConnectError>> + Send,
{
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let target = target.clone();
        let permits = permits.clone();
        let then = then.clone();
        tasks.push(tokio::spawn(async move {
            // The semaphore is never closed, so acquire cannot fail; treat it as a timeout.
            let Ok(_permit) = permits.acquire().await else {
                return Err(ConnectError::Timeout);
            };
            let (ws, retries) = open_retrying(&target, i, deadline).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, then(i, ws)).await {
                Ok(r) => r.map(|t| (t, retries)),
                Err(_) => Err(ConnectError::Timeout),
            }
        }));
    }
    let mut out = Opened {
        conns: Vec::with_capacity(n),
        failed: super::stats::Tally::default(),
        retries: 0,
        took: Duration::ZERO,
    };
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(Ok((t, retries))) => {
                out.retries += u64::from(retries);
                out.conns.push((i, t));
            }
            Ok(Err(e)) => out.failed.add(e.code(), 1),
            Err(_) => out.failed.add("task_panicked", 1),
        }
    }
    out.took = t0.elapsed();
    out
}

/// Raises the open-files limit: thousands of sockets exceed the usual soft limit of 1024.
pub fn raise_nofile_limit() {
    // Best effort: if it fails, connections beyond the limit fail with `io_error`, counted.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{encode as encode_server, ServerMessage};

    #[test]
    fn classifies_server_frames() {
        let ack = encode_server(&ServerMessage::op_ack_applied(Some("42")));
        assert!(matches!(classify(&ack), Incoming::OpAck { last_id } if last_id == "42"));
        let err = encode_server(&ServerMessage::error(429, "slow down"));
        assert!(matches!(classify(&err), Incoming::Error { code: 429 }));
        assert!(matches!(classify(b"\x90"), Incoming::Bad));
        assert!(matches!(classify(b""), Incoming::Bad));
        assert!(matches!(classify(&[0x81, 0xa4, b't']), Incoming::Bad));
        let up = encode_server(&ServerMessage::QueryUpdate {
            payload: crate::protocol::QueryUpdate {
                query_id: "q".into(),
                key: "k".into(),
                value: rmpv::Value::Map(vec![
                    ("seq".into(), 3.into()),
                    (SENT_AT_KEY.into(), 1234u64.into()),
                ]),
                change_type: crate::protocol::ChangeType::Update,
            },
        });
        assert!(matches!(
            classify(&up),
            Incoming::QueryUpdate {
                sent_us: Some(1234)
            }
        ));
    }

    #[test]
    fn connections_spread_evenly_over_urls() {
        let target = |n: usize| Target {
            urls: (0..n)
                .map(|i| format!("ws://127.0.0.1:{}/ws", 8000 + i))
                .collect(),
            secret: None,
        };
        let three = target(3);
        assert_eq!(three.url_for(0), "ws://127.0.0.1:8000/ws");
        assert_eq!(three.url_for(4), "ws://127.0.0.1:8001/ws");
        assert_eq!(three.url_for(200), "ws://127.0.0.1:8002/ws");
        assert_eq!(three.per_url(0..200), vec![67, 67, 66]);
        assert_eq!(three.per_url(0..2), vec![1, 1, 0]);
        let one = target(1);
        assert!((0..50).all(|n| one.url_for(n) == "ws://127.0.0.1:8000/ws"));
        assert_eq!(one.per_url(0..50), vec![50]);
        assert_eq!(one.label(), "ws://127.0.0.1:8000/ws");
        assert_eq!(
            target(2).label(),
            "ws://127.0.0.1:8000/ws,ws://127.0.0.1:8001/ws"
        );
        // No URL at all: nothing to index, no panic; the connect fails and is counted.
        assert_eq!(target(0).url_for(5), "");
        assert!(target(0).per_url(0..5).is_empty());
    }

    #[test]
    fn token_has_sub_and_exp() {
        let t = mint_token("s", "load-1").expect("mint");
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_required_spec_claims(&["sub", "exp"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(b"s"),
            &v,
        )
        .expect("decode");
        assert_eq!(data.claims["sub"], "load-1");
    }
}
