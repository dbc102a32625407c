//! `topgun-load`: a load generator speaking the TopGun client protocol over real WebSockets
//! (issue 6). Scenario logic lives in `topgun_node::load`; this file is the command line and
//! the output: a table for people, one JSON object on stdout with `--json`.
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use topgun_node::load::{
    self, conn, fanout, fire, idle, parse_duration, query, storm, teardown, Common,
};

#[derive(Parser, Debug)]
#[command(
    name = "topgun-load",
    version,
    about = "Load generator for TopGun servers (client protocol over WebSockets)"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Debug)]
struct Global {
    /// WebSocket URL of the server. Repeat it or give a comma-separated list to spread the
    /// connections over several servers (a cluster): connection i uses URL i mod count.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8080/ws"
    )]
    url: Vec<String>,
    /// HS256 secret to mint JWTs with (sub = "load-<n>"); without it the server is assumed
    /// to run without auth.
    #[arg(
        long,
        global = true,
        env = "TOPGUN_LOAD_SECRET",
        hide_env_values = true
    )]
    secret: Option<String>,
    /// Connections (for fanout: see --subscribers).
    #[arg(long, global = true, default_value_t = 10)]
    connections: usize,
    /// Length of the measured phase (e.g. 10s, 500ms, 1m).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// At most this many ops (writes) in the whole run.
    #[arg(long, global = true, default_value_t = 100_000_000)]
    ops: u64,
    /// Excluded from the figures at the start of the measured phase.
    #[arg(long, global = true, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Connection attempts in flight at once while connecting.
    #[arg(long, global = true, default_value_t = 64)]
    connect_concurrency: usize,
    /// The connect phase must finish within this (HTTP 429 refusals are retried until then).
    #[arg(long, global = true, default_value = "60s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// /metrics URL to scrape [default: derived from the first --url].
    #[arg(long, global = true)]
    metrics_url: Option<String>,
    /// Scrape /metrics this often during the measured phase and report the scrape time.
    #[arg(long, global = true, value_parser = parse_duration)]
    scrape_every: Option<Duration>,
    /// The server's pid (same machine; with several --url, the first one's): its CPU time
    /// during the measured phase, and for `idle` its VmRSS from /proc/<pid>/status.
    #[arg(long, global = true)]
    pid: Option<u32>,
    /// Runtime worker threads [default: one per core].
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Each connection sends an op (or a batch) and waits for its OP_ACK before the next.
    FireAndWait(Writes),
    /// Pipelined writes with a bounded window of unacknowledged frames per connection.
    FireAndForget {
        #[command(flatten)]
        writes: Writes,
        /// Unacknowledged frames allowed per connection.
        #[arg(long, default_value_t = 16)]
        window: usize,
    },
    /// One writer, M live-query subscribers; write→QUERY_UPDATE latency.
    Fanout {
        /// Subscriber connections.
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        /// Writes per second.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// Map name prefix (a timestamp is appended per run).
        #[arg(long, default_value = "fanout")]
        map: String,
        /// Distinct keys the writer cycles over (the size of the result set).
        #[arg(long, default_value_t = 100)]
        keys: u64,
    },
    /// Sorted, limited QUERY_SUB round trips on a filled map; QUERY_SUB→QUERY_RESP latency.
    Query {
        /// The map to query (fill it first, e.g. fire-and-wait --map).
        #[arg(long, default_value = "bench")]
        map: String,
        /// Field to sort by, descending (fire-and-wait writes the op id as `n`).
        #[arg(long, default_value = "n")]
        sort: String,
        #[arg(long, default_value_t = 10)]
        limit: u32,
    },
    /// K connections at once: accepted, rejected (HTTP 429), time.
    ConnectStorm,
    /// N idle authenticated connections sending PING every 5 s; RSS per connection (--pid).
    Idle,
    /// One connection opens many live queries and leaves; a canary's write-ack latency before
    /// and after (half of --duration each).
    Teardown {
        /// Live queries the leaving connection holds (the node's per-connection limit must
        /// allow them: --max-live-queries-per-connection).
        #[arg(long, default_value_t = 100_000)]
        queries: usize,
        /// The canary writes once every this many ms.
        #[arg(long, default_value_t = 20)]
        every_ms: u64,
    },
}

#[derive(Args, Debug)]
struct Writes {
    /// Ops per frame: 1 sends CLIENT_OP, more sends OP_BATCH.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Map written to.
    #[arg(long, default_value = "bench")]
    map: String,
    /// Distinct keys written across all connections.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Padding bytes added to every value (a string field `p`), to fill a node with data.
    #[arg(long, default_value_t = 0)]
    value_bytes: usize,
}

fn fire_opts(common: Common, w: &Writes, window: usize) -> fire::FireOpts {
    fire::FireOpts {
        common,
        batch: w.batch.max(1),
        window: window.max(1),
        map: w.map.clone(),
        keys: w.keys,
        value_bytes: w.value_bytes,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let g = &cli.global;
    if g.url.is_empty() || g.url.iter().any(|u| !u.starts_with("ws://")) {
        eprintln!("topgun-load: error: --url must be ws://host:port/path (no TLS)");
        return ExitCode::from(2);
    }
    let common = Common {
        target: conn::Target {
            urls: g.url.clone(),
            secret: g.secret.clone().filter(|s| !s.is_empty()),
        },
        connections: g.connections,
        duration: g.duration,
        max_ops: g.ops,
        warmup: g.warmup,
        connect_concurrency: g.connect_concurrency,
        connect_timeout: g.connect_timeout,
        metrics_url: g.metrics_url.clone(),
        scrape_every: g.scrape_every,
        server_pid: g.pid,
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = g.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("topgun-load: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    load::epoch();
    let report = rt.block_on(async {
        match &cli.scenario {
            Scenario::FireAndWait(w) => fire::run(fire_opts(common, w, 1)).await,
            Scenario::FireAndForget { writes, window } => {
                fire::run(fire_opts(common, writes, *window)).await
            }
            Scenario::Fanout {
                subscribers,
                rate,
                map,
                keys,
            } => {
                fanout::run(fanout::FanoutOpts {
                    common,
                    subscribers: *subscribers,
                    rate: *rate,
                    map: map.clone(),
                    keys: *keys,
                })
                .await
            }
            Scenario::Query { map, sort, limit } => {
                query::run(query::QueryOpts {
                    common,
                    map: map.clone(),
                    sort: sort.clone(),
                    limit: *limit,
                })
                .await
            }
            Scenario::ConnectStorm => storm::run(common).await,
            Scenario::Idle => idle::run(common).await,
            Scenario::Teardown { queries, every_ms } => {
                teardown::run(teardown::TeardownOpts {
                    common,
                    queries: *queries,
                    every: Duration::from_millis(*every_ms),
                })
                .await
            }
        }
    });
    // Connection tasks still closing are not waited for.
    rt.shutdown_timeout(Duration::from_secs(1));
    if g.json {
        println!("{report}");
    } else {
        print_table(&report);
    }
    // Nothing connected at all is a failed run (wrong URL, server down, bad secret).
    let connected = report
        .get("connected")
        .or_else(|| report.get("accepted"))
        .and_then(Value::as_u64);
    if connected == Some(0) || report.get("error").is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Two columns, nested objects flattened to `a.b`.
fn print_table(v: &Value) {
    let mut rows = Vec::new();
    flatten("", v, &mut rows);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("{k:<width$}  {v}");
    }
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Object(_) => out.push((prefix.to_owned(), "-".into())),
        Value::Null => out.push((prefix.to_owned(), "-".into())),
        Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        other => out.push((prefix.to_owned(), other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(args: &[&str]) -> Vec<String> {
        let mut argv = vec!["topgun-load"];
        argv.extend_from_slice(args);
        argv.push("fire-and-wait");
        Cli::try_parse_from(argv).expect("parses").global.url
    }

    #[test]
    fn url_repeated_or_comma_separated() {
        assert_eq!(urls(&[]), vec!["ws://127.0.0.1:8080/ws"]);
        assert_eq!(urls(&["--url", "ws://a:1/ws"]), vec!["ws://a:1/ws"]);
        let three = vec!["ws://a:1/ws", "ws://b:2/ws", "ws://c:3/ws"];
        assert_eq!(
            urls(&[
                "--url",
                "ws://a:1/ws",
                "--url",
                "ws://b:2/ws",
                "--url",
                "ws://c:3/ws"
            ]),
            three
        );
        assert_eq!(
            urls(&["--url", "ws://a:1/ws,ws://b:2/ws,ws://c:3/ws"]),
            three
        );
        assert_eq!(
            urls(&["--url", "ws://a:1/ws,ws://b:2/ws", "--url", "ws://c:3/ws"]),
            three
        );
    }
}
