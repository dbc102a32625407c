//! Guards the process contract of configuration: a setting given twice resolves flag > env >
//! file > default (a swapped `or` chain silently runs the node with the wrong port, id or log
//! level); the spellings other TopGun tooling uses (`STORAGE_BACKEND=null`,
//! `TOPGUN_NO_AUTH=true|yes|1`) are accepted; a bad flag, a bad value, an unknown or
//! unreadable config file, a busy port or an unusable data dir stop the node with exactly one
//! line on stderr naming the problem and a non-zero exit, before it prints `PORT=`; and a node
//! restarted on its fixed port right after `kill -9` binds at once.
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// A node command with no auth, memory storage and its log in `dir/node.log`.
fn base(dir: &Path) -> Command {
    let mut cmd = command(dir);
    cmd.env("TOPGUN_NO_AUTH", "1")
        .env("STORAGE_BACKEND", "memory")
        .arg("--log-dest")
        .arg(dir.join("node.log"));
    cmd
}

fn write_file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test file");
    path
}

fn start(cmd: &mut Command) -> Spawned {
    Spawned::start(cmd).expect("node starts and prints PORT=")
}

fn node_id_of(cmd: &mut Command) -> String {
    let node = start(cmd);
    node.ready()["nodeId"]
        .as_str()
        .expect("/ready carries nodeId")
        .to_owned()
}

#[test]
fn node_id_precedence_flag_env_file_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "c.toml", "node_id = \"from-file\"\n");

    let id = node_id_of(
        base(dir.path())
            .env("NODE_ID", "from-env")
            .args(["--port", "0", "--node-id", "from-flag", "--config"])
            .arg(&file),
    );
    assert_eq!(id, "from-flag");

    let id = node_id_of(
        base(dir.path())
            .env("NODE_ID", "from-env")
            .args(["--port", "0", "--config"])
            .arg(&file),
    );
    assert_eq!(id, "from-env");

    let id = node_id_of(
        base(dir.path())
            .args(["--port", "0", "--config"])
            .arg(&file),
    );
    assert_eq!(id, "from-file");

    let id = node_id_of(base(dir.path()).args(["--port", "0"]));
    assert!(
        id.starts_with("node-") && id.len() > "node-".len(),
        "generated default id, got {id:?}"
    );
}

/// The losers of each comparison are ports this test holds busy: had the node picked one of
/// them it could not have started.
#[test]
fn port_precedence_flag_env_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_env_l, env_busy) = busy_port();
    let (_file_l, file_busy) = busy_port();
    let file = write_file(dir.path(), "c.toml", &format!("port = {file_busy}\n"));

    let want = free_port();
    let node = start(
        base(dir.path())
            .env("PORT", env_busy.to_string())
            .args(["--port", &want.to_string(), "--config"])
            .arg(&file),
    );
    assert_eq!(node.port, want, "flag beats env and file");
    drop(node);

    let want = free_port();
    let file2 = write_file(dir.path(), "c2.toml", &format!("port = {file_busy}\n"));
    let node = start(
        base(dir.path())
            .env("PORT", want.to_string())
            .arg("--config")
            .arg(&file2),
    );
    assert_eq!(node.port, want, "env beats file");
    drop(node);

    let want = free_port();
    let file3 = write_file(dir.path(), "c3.toml", &format!("port = {want}\n"));
    let node = start(base(dir.path()).arg("--config").arg(&file3));
    assert_eq!(node.port, want, "file beats the default 8080");
}

/// `--config` (flag) beats `TOPGUN_CONFIG` (env).
#[test]
fn config_flag_beats_config_env() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_file(dir.path(), "a.toml", "node_id = \"from-flag-file\"\n");
    let b = write_file(dir.path(), "b.toml", "node_id = \"from-env-file\"\n");
    let id = node_id_of(
        base(dir.path())
            .env("TOPGUN_CONFIG", &b)
            .args(["--port", "0", "--config"])
            .arg(&a),
    );
    assert_eq!(id, "from-flag-file");
    let id = node_id_of(
        base(dir.path())
            .env("TOPGUN_CONFIG", &b)
            .args(["--port", "0"]),
    );
    assert_eq!(id, "from-env-file");
}

/// The drain delay and spread as the node resolved them (its `node starting` line) for one
/// command; the harness's own `TOPGUN_DRAIN_*` are removed first.
fn drain_of(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> (u64, u64) {
    let log = dir.join("node.log");
    let _ = std::fs::remove_file(&log);
    let mut cmd = base(dir);
    cmd.env_remove("TOPGUN_DRAIN_DELAY_MS")
        .env_remove("TOPGUN_DRAIN_SPREAD_MS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(["--port", "0"]).args(args);
    let node = start(&mut cmd);
    node.ready();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let line: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["msg"] == "node starting")
        .unwrap_or_else(|| panic!("no 'node starting' line; log:\n{text}"));
    let ms = |k: &str| {
        line[k]
            .as_u64()
            .unwrap_or_else(|| panic!("no {k} in {line}"))
    };
    (ms("drainDelayMs"), ms("drainSpreadMs"))
}

#[test]
fn drain_precedence_flag_env_file_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        "c.toml",
        "drain_delay_ms = 3000\ndrain_spread_ms = 4000\n",
    );
    let cfg = file.to_str().unwrap();
    assert_eq!(drain_of(dir.path(), &[], &[]), (5000, 10_000), "defaults");
    assert_eq!(
        drain_of(dir.path(), &[], &["--config", cfg]),
        (3000, 4000),
        "file beats default"
    );
    let env = [
        ("TOPGUN_DRAIN_DELAY_MS", "2000"),
        ("TOPGUN_DRAIN_SPREAD_MS", "0"),
    ];
    assert_eq!(
        drain_of(dir.path(), &env, &["--config", cfg]),
        (2000, 0),
        "env beats file"
    );
    let flags = [
        "--config",
        cfg,
        "--drain-delay-ms",
        "0",
        "--drain-spread-ms",
        "1",
    ];
    assert_eq!(drain_of(dir.path(), &env, &flags), (0, 1), "flag beats env");
}

/// Runs a node at the given log level settings, makes it log one debug line (an invalid frame)
/// and then one warning (an oversize frame evicts the client), waits for the warning, and
/// returns the levels of all lines written.
async fn levels_logged(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Vec<u64> {
    let log = dir.join("node.log");
    let _ = std::fs::remove_file(&log);
    let mut cmd = base(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(["--port", "0", "--max-frame-bytes", "1000"])
        .args(args);
    let node = start(&mut cmd);
    node.ready();
    let mut c = Client::connect(&format!("ws://127.0.0.1:{}/ws", node.port)).await;
    c.send_raw(vec![0x93, 1, 2, 3]).await; // an array: dropped, logged at debug
    c.send_raw(vec![0u8; 2000]).await; // over the limit: close 1009, logged at warn
    let (code, _) = c.expect_close(Duration::from_secs(5)).await;
    assert_eq!(code, 1009);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("log line is JSON"))
            .collect();
        if lines.iter().any(|l| l["msg"] == "client evicted") {
            return lines.iter().map(|l| l["level"].as_u64().unwrap()).collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no 'client evicted' line; log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn log_level_precedence_flag_env_file_default() {
    let dir = tempfile::tempdir().unwrap();
    let debug_file = write_file(dir.path(), "c.toml", "log_level = \"debug\"\n");
    let cfg = debug_file.to_str().unwrap();

    // Default info: info lines, no debug lines.
    let levels = levels_logged(dir.path(), &[], &[]).await;
    assert!(levels.contains(&30), "{levels:?}");
    assert!(!levels.iter().any(|l| *l < 30), "{levels:?}");

    // File debug beats the default.
    let levels = levels_logged(dir.path(), &[], &["--config", cfg]).await;
    assert!(levels.contains(&20), "{levels:?}");

    // Env warn beats file debug: nothing under warn.
    let levels = levels_logged(dir.path(), &[("LOG_LEVEL", "warn")], &["--config", cfg]).await;
    assert!(levels.contains(&40), "{levels:?}");
    assert!(!levels.iter().any(|l| *l < 40), "{levels:?}");

    // Flag debug beats env warn.
    let levels = levels_logged(
        dir.path(),
        &[("LOG_LEVEL", "warn")],
        &["--config", cfg, "--log-level", "debug"],
    )
    .await;
    assert!(levels.contains(&20), "{levels:?}");
}

#[test]
fn storage_backend_null_is_memory() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(
        base(dir.path())
            .env("STORAGE_BACKEND", "null")
            .args(["--port", "0"]),
    );
    node.ready();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("JSON"))
            .find(|l| l["msg"] == "node starting")
        {
            assert_eq!(line["storage"], "memory", "{line}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no start line");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Nothing durable was created: no node id file in the data dir.
    assert!(!dir.path().join("data").join("node_id").exists());
}

/// `TOPGUN_NO_AUTH` beats `JWT_SECRET` when it is on, in every spelling: a PING is answered
/// without any AUTH (in JWT mode it would be dropped) and no AUTH_REQUIRED comes first.
#[tokio::test]
async fn no_auth_accepts_true_yes_1() {
    for spelling in ["true", "yes", "1", "TRUE"] {
        let dir = tempfile::tempdir().unwrap();
        let node = start(
            base(dir.path())
                .env("TOPGUN_NO_AUTH", spelling)
                .env("JWT_SECRET", SECRET)
                .args(["--port", "0"]),
        );
        node.ready();
        let mut c = Client::connect(&format!("ws://127.0.0.1:{}/ws", node.port)).await;
        c.send(&ping(1.0)).await;
        let first = c.recv().await.expect("a reply");
        assert_eq!(
            msg_type(&first),
            "PONG",
            "TOPGUN_NO_AUTH={spelling}: {first:?}"
        );
    }
    for spelling in ["0", "false", "no"] {
        let dir = tempfile::tempdir().unwrap();
        let node = start(
            base(dir.path())
                .env("TOPGUN_NO_AUTH", spelling)
                .env("JWT_SECRET", SECRET)
                .args(["--port", "0", "--host", "127.0.0.1"]),
        );
        node.ready();
        let mut c = Client::connect(&format!("ws://127.0.0.1:{}/ws", node.port)).await;
        let first = c.recv().await.expect("a first message");
        assert_eq!(
            msg_type(&first),
            "AUTH_REQUIRED",
            "TOPGUN_NO_AUTH={spelling}"
        );
    }
}

/// Asserts the node refused to start: non-zero exit, no `PORT=`, exactly one stderr line that
/// contains every one of `names` (`[code]`: the error's stable code, printed before its message).
fn assert_refused(cmd: &mut Command, names: &[&str]) {
    let out = run_to_exit(cmd, Duration::from_secs(10));
    assert!(
        !out.status.success(),
        "exit {:?}, stderr {}",
        out.status,
        out.stderr
    );
    assert!(
        !out.stdout.lines().any(|l| l.starts_with("PORT=")),
        "printed PORT= before failing: {}",
        out.stdout
    );
    let lines = out.stderr_lines();
    assert_eq!(lines.len(), 1, "want one stderr line, got {lines:#?}");
    for name in names {
        assert!(
            lines[0].to_lowercase().contains(&name.to_lowercase()),
            "stderr line {:?} does not name {name:?}",
            lines[0]
        );
    }
}

#[test]
fn bad_flags_and_values_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_refused(
        base(d).args(["--port", "0", "--bogus-flag"]),
        &["[config_flag]", "--bogus-flag"],
    );
    assert_refused(base(d).args(["--port", "eighty"]), &["eighty", "port"]);
    assert_refused(base(d).args(["--port", "70000"]), &["70000", "port"]);
    assert_refused(base(d).env("PORT", "abc"), &["abc"]);
    assert_refused(
        base(d).env("LOG_LEVEL", "loud").args(["--port", "0"]),
        &["loud"],
    );
    assert_refused(
        base(d)
            .env("STORAGE_BACKEND", "postgres")
            .args(["--port", "0"]),
        &["postgres"],
    );
    assert_refused(
        base(d).env("TOPGUN_NO_AUTH", "maybe").args(["--port", "0"]),
        &["maybe"],
    );
    assert_refused(
        base(d).args(["--port", "0", "--node-id", "a:b"]),
        &["node_id"],
    );
    assert_refused(
        base(d).args(["--port", "0", "--connection-rate", "0"]),
        &["connection_rate"],
    );
    assert_refused(
        base(d)
            .env("TOPGUN_DRAIN_DELAY_MS", "soon")
            .args(["--port", "0"]),
        &["soon", "drain-delay-ms"],
    );
    assert_refused(
        base(d).args(["--port", "0", "--drain-spread-ms=-5"]),
        &["-5", "drain-spread-ms"],
    );
}

#[test]
fn bad_config_files_fail_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let unknown = write_file(d, "unknown.toml", "prot = 8080\n");
    assert_refused(
        base(d).args(["--port", "0", "--config"]).arg(&unknown),
        &["prot", "unknown.toml"],
    );
    let bad_value = write_file(d, "bad_value.toml", "port = \"x\"\n");
    assert_refused(
        base(d).args(["--port", "0", "--config"]).arg(&bad_value),
        &["bad_value.toml"],
    );
    let bad_level = write_file(d, "bad_level.toml", "log_level = \"loud\"\n");
    assert_refused(
        base(d).args(["--port", "0", "--config"]).arg(&bad_level),
        &["loud", "bad_level.toml"],
    );
    let syntax = write_file(d, "syntax.toml", "port = = 1\n[[[\n");
    assert_refused(
        base(d).args(["--port", "0", "--config"]).arg(&syntax),
        &["[config_unparsable]", "syntax.toml"],
    );
    assert_refused(
        base(d)
            .args(["--port", "0", "--config"])
            .arg(d.join("missing.toml")),
        &["[config_unreadable]", "missing.toml"],
    );
    // A directory is not a readable file either.
    assert_refused(
        base(d).args(["--port", "0", "--config"]).arg(d),
        &[d.to_str().unwrap()],
    );
}

#[test]
fn cluster_tls_needs_its_three_files_and_pem_in_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let junk = write_file(d, "junk.pem", "not a certificate\n");
    let junk = junk.to_str().unwrap();
    // Without the CA nothing could verify a peer: refused, naming what is missing.
    assert_refused(
        base(d).args(["--cluster-tls-cert", junk, "--cluster-tls-key", junk]),
        &["[config_invalid]", "cluster_tls_ca"],
    );
    assert_refused(
        base(d).args(["--cluster-tls-ca", junk]),
        &["cluster_tls_cert"],
    );
    assert_refused(
        base(d)
            .env("TOPGUN_CLUSTER_TLS_CERT", junk)
            .args(["--cluster-tls-ca", junk]),
        &["cluster_tls_key"],
    );
    // All three, but no PEM in them: the file is named.
    assert_refused(
        base(d).args([
            "--cluster-tls-cert",
            junk,
            "--cluster-tls-key",
            junk,
            "--cluster-tls-ca",
            junk,
        ]),
        &["[cluster_tls_empty]", "cluster TLS", "junk.pem"],
    );
}

#[test]
fn busy_port_fails_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (_l, busy) = busy_port();
    assert_refused(
        base(dir.path()).args(["--port", &busy.to_string()]),
        &["[bind]", &busy.to_string()],
    );
    let (_m, busy_metrics) = busy_port();
    assert_refused(
        base(dir.path()).args(["--port", "0", "--metrics-port", &busy_metrics.to_string()]),
        &[&busy_metrics.to_string()],
    );
    // The UDP cluster port too, before any actor starts.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let busy_cluster = udp.local_addr().unwrap().port();
    assert_refused(
        base(dir.path()).args(["--port", "0", "--cluster-port", &busy_cluster.to_string()]),
        &[&busy_cluster.to_string()],
    );
}

/// A data dir that is a regular file cannot hold the redb database nor the node id.
#[test]
fn unusable_data_dir_fails_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "not-a-dir", "x");
    let path = file.to_str().unwrap();
    assert_refused(
        base(dir.path())
            .env("STORAGE_BACKEND", "redb")
            .env("TOPGUN_DATA_DIR", &file)
            .args(["--port", "0"]),
        &[path],
    );
    // Also when the node id is given, so nothing needs to be written for it.
    assert_refused(
        base(dir.path())
            .env("STORAGE_BACKEND", "redb")
            .env("TOPGUN_DATA_DIR", &file)
            .args(["--port", "0", "--node-id", "n1"]),
        &[path],
    );
    // A data dir below a regular file cannot be created.
    let below = file.join("data");
    assert_refused(
        base(dir.path())
            .env("STORAGE_BACKEND", "redb")
            .env("TOPGUN_DATA_DIR", &below)
            .args(["--port", "0"]),
        &[below.to_str().unwrap()],
    );
}

#[test]
fn unopenable_log_destination_fails_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("no-such-dir").join("node.log");
    let mut cmd = command(dir.path());
    cmd.env("TOPGUN_NO_AUTH", "1")
        .env("STORAGE_BACKEND", "memory")
        .args(["--port", "0", "--log-dest"])
        .arg(&bad);
    assert_refused(&mut cmd, &["[log_dest]", bad.to_str().unwrap()]);
}

/// A restart on the same fixed port right after `kill -9`, while a client was connected (its
/// socket lingers in the kernel), binds at once.
#[tokio::test]
async fn restart_on_same_port_after_kill9_binds() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = start(base(dir.path()).args(["--port", "0"]));
    first.ready();
    let port = first.port;
    let mut c = Client::connect(&format!("ws://127.0.0.1:{port}/ws")).await;
    c.send(&ping(1.0)).await;
    assert_eq!(msg_type(&c.recv().await.expect("PONG")), "PONG");
    first.kill9();

    let second = Spawned::start(base(dir.path()).args(["--port", &port.to_string()]))
        .expect("restart on the same port binds at once");
    assert_eq!(second.port, port);
    second.ready();
    let mut c = Client::connect(&format!("ws://127.0.0.1:{port}/ws")).await;
    c.send(&ping(2.0)).await;
    assert_eq!(msg_type(&c.recv().await.expect("PONG")), "PONG");
}

/// `check-config`: the value and source of every setting, by precedence.
fn checked_line<'a>(out: &'a str, key: &str) -> (&'a str, &'a str) {
    let line = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(key))
        .unwrap_or_else(|| panic!("no line for {key} in\n{out}"));
    let (value, source) = line
        .split_once('=')
        .and_then(|(_, rest)| rest.split_once('#'))
        .unwrap_or_else(|| panic!("line {line:?}"));
    (value.trim(), source.trim())
}

#[test]
fn check_config_prints_every_setting_with_its_source_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let file = write_file(
        d,
        "node.toml",
        "port = 9100\nshards = 3\nlog_level = \"debug\"\nworkers = 5\n",
    );
    let out = run_to_exit(
        command(d)
            .arg("check-config")
            .arg("--config")
            .arg(&file)
            .args(["--shards", "4"])
            .env("TOPGUN_WORKERS", "6")
            .env("JWT_SECRET", "a-secret-that-must-not-show")
            .env("TOPGUN_CLUSTER_SECRET", "another-secret-never-shown"),
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "{}", out.stderr);
    // flag > env > file > default.
    assert_eq!(checked_line(&out.stdout, "shards"), ("4", "flag"));
    assert_eq!(
        checked_line(&out.stdout, "workers"),
        ("6", "env TOPGUN_WORKERS")
    );
    assert_eq!(checked_line(&out.stdout, "port"), ("9100", "file"));
    assert_eq!(checked_line(&out.stdout, "log_level"), ("debug", "file"));
    assert_eq!(
        checked_line(&out.stdout, "report_interval_ms"),
        ("100", "env TOPGUN_REPORT_INTERVAL_MS")
    );
    assert_eq!(checked_line(&out.stdout, "max_maps"), ("10000", "default"));
    assert_eq!(
        checked_line(&out.stdout, "jwt_secret"),
        ("(set)", "env JWT_SECRET")
    );
    assert_eq!(
        checked_line(&out.stdout, "cluster_secret"),
        ("(set)", "env TOPGUN_CLUSTER_SECRET")
    );
    assert!(
        !out.stdout.contains("must-not-show") && !out.stdout.contains("never-shown"),
        "a secret was printed:\n{}",
        out.stdout
    );
    // Nothing was started: no port line, no data dir.
    assert!(!out.stdout.contains("PORT="), "{}", out.stdout);
    assert!(!d.join("data").exists(), "check-config opened storage");

    // An invalid setting: exit 2 and the one line a start would print.
    let bad = run_to_exit(
        command(d).args(["check-config", "--shards", "0"]),
        Duration::from_secs(10),
    );
    assert_eq!(bad.status.code(), Some(2), "{}", bad.stderr);
    assert_eq!(bad.stderr_lines().len(), 1, "{}", bad.stderr);
    assert!(bad.stderr.contains("shards"), "{}", bad.stderr);
}

#[test]
fn healthcheck_exits_0_for_a_live_node_and_1_otherwise() {
    let node = Node::start_with(NodeOptions::default().args(&["--metrics-port", "0"]));
    let dir = tempfile::tempdir().unwrap();
    let check = |args: &[&str], env: &[(&str, String)]| {
        let mut cmd = command(dir.path());
        cmd.arg("healthcheck").args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_to_exit(&mut cmd, Duration::from_secs(10))
    };
    let url = format!("http://127.0.0.1:{}/health", node.port);
    let ok = check(&[&url], &[]);
    assert_eq!(ok.status.code(), Some(0), "{}", ok.stderr);
    // Without a URL: PORT, as the node itself reads it.
    let ok = check(&[], &[("PORT", node.port.to_string())]);
    assert_eq!(ok.status.code(), Some(0), "{}", ok.stderr);

    let (_listener, free) = busy_port();
    drop(_listener);
    let down = check(&[&format!("http://127.0.0.1:{free}/health")], &[]);
    assert_eq!(down.status.code(), Some(1));
    assert!(down.stderr.contains("[unhealthy]"), "{}", down.stderr);
    // A path that is not 200 is unhealthy too.
    let not_found = check(&[&format!("http://127.0.0.1:{}/nope", node.port)], &[]);
    assert_eq!(not_found.status.code(), Some(1), "{}", not_found.stderr);
}
