//! Test harness: the real `topgun-node` binary as a child process, real WebSockets speaking
//! MessagePack, real HTTP scrapes parsed by a Prometheus text parser, log lines parsed as JSON.
//!
//! Messages are built here with `rmpv` by hand, never with the node's own codec, so a test
//! proves wire compatibility instead of agreeing with itself.
#![allow(dead_code)]

pub mod cluster;
pub mod firewall;
pub mod jwks;
pub mod proto;
pub mod tls;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rmpv::Value;
use tokio::net::TcpStream as TokioTcp;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const BIN: &str = env!("CARGO_BIN_EXE_topgun-node");

/// The node binary the tests start: `TOPGUN_NODE_BIN` when set (scripts/bench-heal times the
/// release build with the debug test binaries), else the one cargo built with the tests.
pub fn node_bin() -> String {
    std::env::var("TOPGUN_NODE_BIN").unwrap_or_else(|_| BIN.to_owned())
}
pub const SECRET: &str = "test-secret";

/// How a test wants its node.
#[derive(Clone)]
pub struct NodeOptions {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// `Some(secret)`: JWT mode; `None`: TOPGUN_NO_AUTH=1.
    pub jwt_secret: Option<String>,
    /// Log to stdout after the PORT line instead of to a file.
    pub log_to_stdout: bool,
    pub memory_storage: bool,
    /// A fixed client port (a restart on the port of a killed node); `None` = OS chooses.
    pub port: Option<u16>,
    /// `--host`: the address every listener of the node binds (fault tests give each node its
    /// own loopback address so iptables rules can cut between them).
    pub host: IpAddr,
    /// Append the node's stderr to `node.stderr` in its directory instead of the test's own
    /// stderr: a panic is printed there, not logged, and the chaos run searches it.
    pub stderr_to_file: bool,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            args: Vec::new(),
            env: Vec::new(),
            jwt_secret: None,
            log_to_stdout: false,
            memory_storage: true,
            port: None,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            stderr_to_file: false,
        }
    }
}

impl NodeOptions {
    pub fn jwt() -> Self {
        NodeOptions {
            jwt_secret: Some(SECRET.into()),
            ..Default::default()
        }
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args(mut self, list: &[&str]) -> Self {
        self.args.extend(list.iter().map(|s| s.to_string()));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
}

pub struct Node {
    child: Option<Child>,
    pub host: IpAddr,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub log_path: PathBuf,
    pub stdout: Option<BufReader<ChildStdout>>,
    pub options: NodeOptions,
}

/// A command for the node binary with a clean environment (no variables of the test runner's
/// shell leak into precedence tests), a temp data dir, fast reports.
pub fn command(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(node_bin());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TOPGUN_DATA_DIR", dir.join("data"))
        .env("TOPGUN_REPORT_INTERVAL_MS", "100")
        .env("TOPGUN_CLUSTER_PORT", "0")
        // Suites not about the drain stop at once, as before it existed; tests/drain.rs and
        // the cluster drain tests set their own with flags (flag beats env).
        .env("TOPGUN_DRAIN_DELAY_MS", "0")
        .env("TOPGUN_DRAIN_SPREAD_MS", "0")
        .stdin(Stdio::null());
    // Runs a whole suite under another placement than the default: TOPGUN_TEST_PLACEMENT=full.
    if let Ok(placement) = std::env::var("TOPGUN_TEST_PLACEMENT") {
        cmd.env("TOPGUN_PLACEMENT", placement);
    }
    cmd
}

impl Node {
    pub fn start() -> Node {
        Node::start_with(NodeOptions::default())
    }

    pub fn start_with(options: NodeOptions) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        Node::start_in(dir, options)
    }

    /// Starts in an existing dir (restarts on the same data).
    pub fn start_in(dir: tempfile::TempDir, options: NodeOptions) -> Node {
        let log_path = dir.path().join("node.log");
        let mut cmd = command(dir.path());
        cmd.arg("--port").arg(options.port.unwrap_or(0).to_string());
        if options.host != Ipv4Addr::LOCALHOST {
            cmd.arg("--host").arg(options.host.to_string());
        }
        if !options.log_to_stdout {
            cmd.arg("--log-dest").arg(&log_path);
        }
        match &options.jwt_secret {
            Some(s) => {
                cmd.env("JWT_SECRET", s);
            }
            None => {
                cmd.env("TOPGUN_NO_AUTH", "1");
            }
        }
        if options.memory_storage {
            cmd.env("STORAGE_BACKEND", "memory");
        }
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        cmd.args(&options.args);
        let stderr = if options.stderr_to_file {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.path().join("node.stderr"))
                .expect("node.stderr");
            Stdio::from(file)
        } else {
            Stdio::inherit()
        };
        cmd.stdout(Stdio::piped()).stderr(stderr);
        let mut child = cmd.spawn().expect("spawn topgun-node");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout piped"));
        let port = read_port(&mut stdout, "PORT").unwrap_or_else(|| {
            let _ = child.kill();
            panic!("node did not print PORT=");
        });
        let node = Node {
            child: Some(child),
            host: options.host,
            port,
            dir,
            log_path,
            stdout: Some(stdout),
            options,
        };
        node.wait_ready();
        node
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.http_addr())
    }

    /// Where its client port (HTTP and WebSocket) listens.
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok((200, _)) = http_get(self.http_addr(), "/ready") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("node not ready within 15 s");
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.http_addr(), path).expect("HTTP request")
    }

    pub fn scrape(&self) -> Scrape {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "scrape failed: {body}");
        Scrape::parse(&body)
    }

    /// Polls `/metrics` until `name{labels}` equals `want` (reports arrive on an interval).
    pub fn wait_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) -> Scrape {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.scrape();
            let got = s.value(name, labels);
            if got == Some(want) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("{name}{labels:?} = {got:?}, want {want}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every log line so far, parsed; panics on a line that is not JSON.
    pub fn logs(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// Waits for a log line whose `msg` is `msg` and that satisfies `pred`.
    pub fn wait_log(
        &self,
        msg: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.logs().into_iter().find(|l| l["msg"] == msg && pred(l)) {
                return line;
            }
            if Instant::now() > deadline {
                panic!("no log line {msg:?} within 10 s; logs:\n{:#?}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// SIGTERM and wait up to `limit` for the exit status.
    pub fn sigterm(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.signal("TERM");
        self.wait_exit(limit)
    }

    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the node and gives back its directory, for a restart on the same data.
    pub fn into_dir(mut self) -> tempfile::TempDir {
        self.kill9();
        let dir = tempfile::tempdir().expect("temp dir");
        std::mem::replace(&mut self.dir, dir)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url()).await
    }

    /// A connected client past the handshake (AUTH_ACK received in JWT mode).
    pub async fn authed_client(&self) -> Client {
        let mut c = self.client().await;
        if let Some(secret) = &self.options.jwt_secret {
            let first = c.recv().await.expect("AUTH_REQUIRED");
            assert_eq!(msg_type(&first), "AUTH_REQUIRED");
            c.send(&auth(&token(secret, "user-1", 3600))).await;
            let ack = c.recv().await.expect("AUTH_ACK");
            assert_eq!(msg_type(&ack), "AUTH_ACK", "{ack:?}");
        }
        c
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Reads stdout lines until `NAME=<n>` (and fails on anything else before it).
pub fn read_port(out: &mut impl BufRead, name: &str) -> Option<u16> {
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        line.clear();
        if out.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some(v) = line.trim_end().strip_prefix(&format!("{name}=")) {
            return v.parse().ok();
        }
    }
    None
}

/// Where an HTTP request goes: a bare port is 127.0.0.1's.
pub struct HttpTarget(SocketAddr);

impl From<u16> for HttpTarget {
    fn from(port: u16) -> Self {
        HttpTarget(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
    }
}

impl From<SocketAddr> for HttpTarget {
    fn from(addr: SocketAddr) -> Self {
        HttpTarget(addr)
    }
}

/// A minimal HTTP/1.1 GET (no client crate needed for a status and a body).
pub fn http_get(port: impl Into<HttpTarget>, path: &str) -> std::io::Result<(u16, String)> {
    http_request(port, "GET", path, &[], b"")
}

pub fn http_request(
    port: impl Into<HttpTarget>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    http_request_full(port, method, path, headers, body).map(|(s, _, b)| (s, b))
}

/// A GET that also returns the response headers (names lower-cased).
pub fn http_get_full(port: impl Into<HttpTarget>, path: &str) -> std::io::Result<HttpResponse> {
    http_request_full(port, "GET", path, &[], b"")
}

/// (status, headers with lower-cased names, body).
pub type HttpResponse = (u16, Vec<(String, String)>, String);

pub fn http_request_full(
    port: impl Into<HttpTarget>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let raw = http_exchange(port, method, path, headers, body)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let response_headers = text
        .split_once("\r\n\r\n")
        .map_or(text.as_str(), |(head, _)| head)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = match text.split_once("\r\n\r\n") {
        Some((head, rest))
            if head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked") =>
        {
            dechunk(rest)
        }
        Some((_, rest)) => rest.to_owned(),
        None => String::new(),
    };
    Ok((status, response_headers, body))
}

/// Sends one HTTP/1.1 request (`Connection: close`) and returns the raw response bytes.
pub fn http_exchange(
    port: impl Into<HttpTarget>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Vec<u8>> {
    let HttpTarget(addr) = port.into();
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    Ok(raw)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A parsed scrape.
pub struct Scrape {
    pub text: String,
    pub samples: Vec<prometheus_parse::Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let parsed = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format");
        Scrape {
            text: text.to_owned(),
            samples: parsed.samples,
        }
    }

    /// The value of a counter/gauge sample with exactly these labels (others ignored if
    /// `labels` is a subset? no: every given label must match).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .filter(|s| s.metric == name)
            .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .and_then(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => Some(*v),
                _ => None,
            })
    }

    /// 0 when absent (a family declared but without this series yet).
    pub fn value_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    /// `# TYPE` of a family.
    pub fn type_of(&self, family: &str) -> Option<String> {
        self.text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("# TYPE {family} ")))
            .map(str::to_owned)
    }

    /// (count, sum) of a summary or histogram series with these labels: its `_count` and
    /// `_sum` samples.
    pub fn count_sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<(f64, f64)> {
        Some((
            self.value(&format!("{name}_count"), labels)?,
            self.value(&format!("{name}_sum"), labels)?,
        ))
    }

    /// The quantile samples of a summary (quantile → value).
    pub fn quantiles(&self, name: &str) -> Vec<(f64, f64)> {
        self.samples
            .iter()
            .filter(|s| s.metric == name)
            .flat_map(|s| match &s.value {
                prometheus_parse::Value::Summary(v) => {
                    v.iter().map(|q| (q.quantile, q.count)).collect::<Vec<_>>()
                }
                _ => Vec::new(),
            })
            .collect()
    }
}

pub type Ws = WebSocketStream<MaybeTlsStream<TokioTcp>>;

/// A WebSocket client speaking MessagePack.
pub struct Client {
    pub ws: Ws,
    pub closed: Option<Option<CloseFrame>>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Client { ws, closed: None }
    }

    pub async fn try_connect(url: &str) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Client { ws, closed: None })
    }

    pub async fn send(&mut self, v: &Value) {
        self.send_raw(encode(v)).await;
    }

    pub async fn send_raw(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .expect("send frame");
    }

    /// Next decoded message within 5 s; `None` on close or timeout.
    pub async fn recv(&mut self) -> Option<Value> {
        self.recv_within(Duration::from_secs(5)).await
    }

    pub async fn recv_within(&mut self, limit: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match next {
                Ok(Message::Binary(b)) => {
                    return Some(
                        rmpv::decode::read_value(&mut &b[..]).expect("server frame decodes"),
                    )
                }
                Ok(Message::Close(frame)) => {
                    self.closed = Some(frame);
                    return None;
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Skips messages until one of type `t` arrives.
    pub async fn recv_type(&mut self, t: &str) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.recv_within(left).await?;
            if msg_type(&v) == t {
                return Some(v);
            }
        }
    }

    /// Reads until the server's Close frame; returns (code, reason).
    pub async fn expect_close(&mut self, limit: Duration) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.closed.is_none() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                panic!("no Close frame within {limit:?}");
            }
            if self.recv_within(left).await.is_none() && self.closed.is_none() {
                panic!("connection ended without a Close frame");
            }
        }
        match self.closed.clone().flatten() {
            Some(f) => (u16::from(f.code), f.reason.to_string()),
            None => panic!("Close frame without a code"),
        }
    }
}

// ---- MessagePack helpers --------------------------------------------------------------------

pub fn encode(v: &Value) -> Vec<u8> {
    let mut buf = Vec::new();
    rmpv::encode::write_value(&mut buf, v).expect("encode to Vec");
    buf
}

/// A map with string keys: `map(&[("type", "PING".into())])`.
pub fn map(entries: &[(&str, Value)]) -> Value {
    Value::Map(
        entries
            .iter()
            .map(|(k, v)| (Value::from(*k), v.clone()))
            .collect(),
    )
}

pub fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

pub fn msg_type(v: &Value) -> &str {
    get(v, "type").and_then(Value::as_str).unwrap_or("")
}

pub fn payload(v: &Value) -> &Value {
    get(v, "payload").expect("wrapped message has a payload")
}

pub fn auth(token: &str) -> Value {
    map(&[("type", "AUTH".into()), ("token", token.into())])
}

/// PING with a float64 timestamp, as a JS client sends it.
pub fn ping(ts: f64) -> Value {
    map(&[("type", "PING".into()), ("timestamp", Value::F64(ts))])
}

pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// An HS256 token for `sub`, expiring `ttl_secs` from now (negative: already expired).
pub fn token(secret: &str, sub: &str, ttl_secs: i64) -> String {
    let exp = (now_millis() / 1000) as i64 + ttl_secs;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign token")
}

pub fn labels<'a>(pairs: &'a [(&'a str, &'a str)]) -> HashMap<&'a str, &'a str> {
    pairs.iter().copied().collect()
}

// ---- Processes that are not a `Node` (start-up failures, fixed ports) ------------------------

/// What a node that was expected to refuse to start left behind.
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Exited {
    /// The non-empty lines of stderr.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// Runs `cmd` until it exits, at most `limit`; panics (after killing it) if it is still running
/// then. stdout and stderr go to files, so a chatty child can never block on a full pipe.
pub fn run_to_exit(cmd: &mut Command, limit: Duration) -> Exited {
    let dir = tempfile::tempdir().expect("temp dir");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let out = std::fs::File::create(&out_path).expect("stdout file");
    let err = std::fs::File::create(&err_path).expect("stderr file");
    let mut child = cmd
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn topgun-node");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "node still running after {limit:?}; stderr: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Exited {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// A node started from a hand-built command (fixed port, own flags); killed on drop.
pub struct Spawned {
    pub child: Child,
    pub stdout: BufReader<ChildStdout>,
    pub port: u16,
}

impl Spawned {
    /// Spawns `cmd` with stdout piped and reads `PORT=`; `None` if the node exited first.
    pub fn start(cmd: &mut Command) -> Option<Spawned> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn topgun-node");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout piped"));
        match read_port(&mut stdout, "PORT") {
            Some(port) => Some(Spawned {
                child,
                stdout,
                port,
            }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                None
            }
        }
    }

    /// The JSON body of `/ready` once it answers 200.
    pub fn ready(&self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok((200, body)) = http_get(self.port, "/ready") {
                return serde_json::from_str(&body).expect("/ready answers JSON");
            }
            assert!(Instant::now() < deadline, "node not ready within 15 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A port on 127.0.0.1 held busy by the test for as long as the listener lives.
pub fn busy_port() -> (std::net::TcpListener, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = l.local_addr().expect("local addr").port();
    (l, port)
}

/// A port that was free a moment ago (bound and released).
pub fn free_port() -> u16 {
    busy_port().1
}
